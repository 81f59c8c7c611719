"""The unrolled sampling chain: one ``lax.scan``, rematerialised, reparameterised.

Every sampler in :mod:`ddss_lite.samplers` is a *step* run K times by
:func:`scan_chain`. Step ``i`` (``i = 0 .. K-1``) maps the state at
``logsnrs[i]`` to the state at ``logsnrs[i+1]`` (the grid is strictly
increasing: ``logsnrs[0]`` is the noisiest point, ``logsnrs[K]`` the cleanest).

Randomness (DESIGN.md section 3), by reparameterisation so the chain is
differentiable in the sampler's parameters:

* ``key_prior, key_steps = jax.random.split(key)`` (:func:`split_key`);
* the initial state is ``z_0 ~ N(0, I)`` (VP prior) drawn from ``key_prior``;
* step ``i`` draws its noise ``xi_i ~ N(0, I)`` from ``fold_in(key_steps, i)``;
* within a draw, row ``n`` of the batch uses ``fold_in(., n)`` (:func:`normal_rows`),
  so sample ``n`` does not depend on the batch size or on the number of devices.

Rematerialisation (Watson et al. 2022, DDSS, section 4: "rematerialize the
UNet forward pass at each iteration of the sampling chain"): with
``remat=True`` the step body is wrapped in ``jax.checkpoint``, so reverse mode
stores only each step's inputs (the carry) and recomputes the network's
activations, trading one extra forward pass per step for O(K) stored
activations. A step whose carry is large but enters linearly (GGDM's history)
should instead checkpoint only the network call and run ``scan_chain`` with
``remat=False``: checkpointing the body would store the whole carry at every step.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddss_lite.validate import check_K

__all__ = [
    "default_dtype",
    "check_sample_shape",
    "split_key",
    "normal_rows",
    "prior_sample",
    "scan_chain",
    "sample_sharded",
]


def default_dtype():
    """float64 when ``jax_enable_x64`` is on, else float32."""
    return jnp.zeros(()).dtype


def check_sample_shape(shape) -> tuple:
    """``shape`` must be a non-empty tuple of positive integers, batch axis first."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple (B, ...) of positive integers, got {shape!r}") from None
    if not shape:
        raise ValueError("shape must be a tuple (B, ...) of positive integers with a batch axis, got ()")
    for d in shape:
        check_K(d, name="shape entries")
    return shape


def split_key(key):
    """``(key_prior, key_steps) = jax.random.split(key)``: the prior's key and the steps' key."""
    key_prior, key_steps = jax.random.split(key)
    return key_prior, key_steps


def normal_rows(key, shape, dtype=None):
    """Standard normal noise of ``shape = (B, ...)`` whose row ``n`` is drawn from ``fold_in(key, n)``.

    The first ``b`` rows of a draw with batch ``B >= b`` equal a draw with batch ``b``.
    """
    dtype = default_dtype() if dtype is None else dtype
    rows = jnp.arange(shape[0], dtype=jnp.uint32)
    return jax.vmap(lambda n: jax.random.normal(jax.random.fold_in(key, n), tuple(shape[1:]), dtype))(rows)


def prior_sample(key, shape, dtype=None):
    """The initial state ``z_0 ~ N(0, I)`` of a chain run with ``key`` (the VP prior at logsnr_min)."""
    return normal_rows(split_key(key)[0], shape, dtype)


def scan_chain(step: Callable, carry, per_step, *, key, remat: bool = True, unroll: int = 1):
    """Run ``K`` steps ``carry, y_i = step(carry, per_step[i], fold_in(key, i))`` in one ``lax.scan``.

    ``per_step`` is a pytree whose leaves have leading axis K (the per-step
    coefficients and log-SNRs); ``key`` is the *steps'* key (``split_key(key)[1]``).
    With ``remat=True`` the body is ``jax.checkpoint``-ed (DDSS, Watson et al. 2022,
    section 4). Returns ``(carry_K, ys)`` with ``ys`` stacked along a new leading axis
    (``None`` outputs stack to ``None``).
    """
    leaves = jax.tree_util.tree_leaves(per_step)
    if not leaves:
        raise ValueError("per_step must hold at least one array with a leading axis of length K")
    K = leaves[0].shape[0]
    check_K(K, name="K (leading axis of per_step)")
    if any(leaf.shape[:1] != (K,) for leaf in leaves):
        raise ValueError(f"every leaf of per_step must have leading axis K = {K}, "
                         f"got shapes {[leaf.shape for leaf in leaves]}")

    def body(carry, xs):
        i, p = xs
        return step(carry, p, jax.random.fold_in(key, i))

    if remat:
        # prevent_cse=False is the documented choice inside scan (the loop already prevents CSE).
        body = jax.checkpoint(body, prevent_cse=False)
    return jax.lax.scan(body, carry, (jnp.arange(K, dtype=jnp.uint32), per_step), unroll=unroll)


def sample_sharded(sample_fn: Callable, key, shape, *, devices=None):
    """Draw ``sample_fn(key, shape)`` with the batch axis sharded over ``devices`` (default: all).

    ``sample_fn(key, shape) -> array of shape (B, ...)`` must treat rows
    independently (true for every sampler here with a per-example denoiser:
    noise is drawn per row, see :func:`normal_rows`). The batch is padded up to a
    multiple of the device count and the padding dropped, so the result equals
    ``sample_fn(key, shape)`` on one device to float tolerance. The computation is
    jitted with its output laid out by ``NamedSharding(Mesh(devices, ("batch",)),
    PartitionSpec("batch"))`` and XLA partitions the chain along the batch.
    """
    shape = check_sample_shape(shape)
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must be a non-empty sequence of jax devices")
    n = len(devices)
    batch = shape[0]
    padded = int(math.ceil(batch / n)) * n
    mesh = Mesh(np.asarray(devices), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))

    def run(key):
        out = sample_fn(key, (padded,) + shape[1:])
        if not hasattr(out, "shape") or out.shape[:1] != (padded,):
            raise ValueError("sample_fn must return one array with the batch axis first, "
                             f"got {jax.tree_util.tree_map(jnp.shape, out)}")
        return jax.lax.with_sharding_constraint(out, sharding)

    out = jax.jit(run, out_shardings=sharding)(key)
    return out if padded == batch else out[:batch]
