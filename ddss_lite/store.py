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
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


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
        return serialization.from_bytes(template, payload)
    except Exception as e:
        raise CorruptFile(f"{path}: does not fit the expected structure ({e})") from e
