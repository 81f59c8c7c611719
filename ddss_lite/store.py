"""Atomic, checksummed files: nothing half-written is ever read back.

Every write goes to a temporary file in the destination's directory and is then
renamed over the destination (``os.replace`` is atomic on POSIX), so a run killed
mid-write leaves either the old file or the new one.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile

from flax import serialization


def atomic_write_bytes(path, data: bytes) -> None:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj) -> None:
    """``obj`` as JSON (keys sorted, NumPy values allowed), written atomically; NaN and infinities are
    refused (``ValueError``): JSON has no such numbers."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
                              + "\n").encode())


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def canonical_json(config: dict) -> str:
    """The config as JSON with sorted keys (NumPy scalars and arrays allowed): the form that is hashed and compared."""
    return json.dumps(config, sort_keys=True, default=_json_default)


def config_hash(config: dict) -> str:
    """A short, stable hash of a JSON-serialisable config (keys sorted)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


class CorruptFile(ValueError):
    """A checkpoint or cache entry that fails its checksum, cannot be parsed, or belongs to another config."""


def save_state(path, state, *, config: dict) -> None:
    """Write a pytree ``state`` with flax serialization (msgpack, no pickle), its config and a SHA-256."""
    payload = serialization.to_bytes(state)
    record = {"config": canonical_json(config),
              "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload}
    atomic_write_bytes(path, serialization.msgpack_serialize(record))


def load_state(path, template, *, config: dict):
    """Read what :func:`save_state` wrote into the structure of ``template``.

    Raises :class:`CorruptFile` if the file cannot be parsed, its checksum fails, or it
    was written for a different ``config`` (a stale entry).
    """
    try:
        record = serialization.msgpack_restore(pathlib.Path(path).read_bytes())
        payload, digest, saved = record["payload"], record["sha256"], record["config"]
    except Exception as e:  # msgpack raises several types on garbage
        raise CorruptFile(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptFile(f"{path}: checksum mismatch")
    if saved != canonical_json(config):
        raise CorruptFile(f"{path}: written for another config (stale)")
    try:
        restored = serialization.from_bytes(template, payload)
    except Exception as e:
        raise CorruptFile(f"{path}: does not fit the expected structure ({e})") from e
    _check_like(restored, template, path)
    return restored


def _check_like(restored, template, path) -> None:
    """Every leaf of ``restored`` must have its template leaf's shape and dtype."""
    import jax
    import numpy as np

    got = jax.tree_util.tree_flatten_with_path(restored)[0]
    want = jax.tree_util.tree_leaves(template)
    for (where, a), b in zip(got, want):
        sa, sb = np.shape(a), np.shape(b)
        da, db = np.asarray(a).dtype, np.asarray(b).dtype
        if sa != sb or da != db:
            raise CorruptFile(f"{path}: leaf {jax.tree_util.keystr(where)} is {da}{list(sa)}, "
                              f"expected {db}{list(sb)} (written by a run of another size)")


# --------------------------------------------------------------------------- fingerprints
# What determines a result must be in the key of its checkpoint. A function (a denoiser, a
# feature map, a loss) or an optax optimiser cannot be hashed by identity across processes, so
# it is *probed*: evaluated on fixed inputs, and the outputs are hashed. Two functions with the
# same fingerprint agree on the probe; another model, feature network or learning rate differs.


def array_digest(tree) -> str:
    """SHA-256 of the values, shapes and dtypes of every leaf of ``tree`` (a pytree of arrays)."""
    import jax
    import numpy as np

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def fingerprint_fn(fn, *probe_args) -> str:
    """:func:`array_digest` of ``fn(*probe_args)``: a fixed probe's outputs identify the function."""
    return array_digest(fn(*probe_args))


def fingerprint_optimizer(optimizer, params, *, steps: int = 3) -> str:
    """Probe an optax ``optimizer``: from ``init(params)``, ``steps`` updates with fixed pseudo-gradients
    (``0.1 (j + 1)`` in every entry, then ``-0.05 ...``); the digest of the updates captures the
    learning rate, its schedule, weight decay, momentum and clipping."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def probe(params):
        state = optimizer.init(params)
        outs = []
        for j in range(steps):
            g = jax.tree_util.tree_map(lambda p, j=j: jnp.full(jnp.shape(p), (0.1 if j % 2 == 0 else -0.05) * (j + 1),
                                                                jnp.result_type(p)), params)
            upd, state = optimizer.update(g, state, params)
            outs.append(upd)
        return outs

    return array_digest(probe(params))
