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

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import parallel
from ddss_lite.validate import (check_finite, check_increasing, check_K, check_key, check_sample_shape,  # noqa: F401
                                check_shape, is_concrete)

__all__ = [
    "default_dtype",
    "is_concrete",
    "check_key",
    "check_sample_shape",
    "check_logsnrs",
    "setup",
    "call_denoiser",
    "all_finite",
    "raise_if_nonfinite",
    "finish",
    "with_start",
    "split_key",
    "normal_rows",
    "prior_sample",
    "scan_chain",
    "run_steps",
    "markov_chain",
    "sample_sharded",
]


def default_dtype():
    """float64 when ``jax_enable_x64`` is on, else float32."""
    return jnp.zeros(()).dtype


def check_logsnrs(logsnrs, dtype=None, *, name: str = "logsnrs", data_end: bool = False):
    """A sampling grid: ``logsnrs`` cast to ``dtype`` (default :func:`default_dtype`), which must be
    1-D of length K + 1 >= 2, finite and strictly increasing (noisiest first) *after* the cast, so
    that two points distinct in float64 but equal in float32 are rejected, not divided by. With
    ``data_end`` the last point may be ``+inf``, the data itself (``alpha = 1``, ``sigma = 0``: the
    last step returns ``x_hat``; :data:`ddss_lite.grids.DATA_END`), for the samplers whose last step
    is well defined there. Value checks run at once when the grid is concrete; a traced grid (under
    ``jit``) is checked when the compiled call runs (``jax.debug.callback``: the error surfaces from
    that call). The shape is always checked."""
    if logsnrs is None:
        raise ValueError(f"{name} is required: a strictly increasing (K+1,) grid, e.g. schedules.grid(K)")
    dtype = default_dtype() if dtype is None else dtype
    check = functools.partial(_check_grid_values, name=name, dtype_name=np.dtype(dtype).name, data_end=data_end)
    if is_concrete(logsnrs):
        check(np.asarray(np.asarray(logsnrs, np.float64).astype(np.dtype(dtype))))
    out = jnp.asarray(logsnrs, dtype)
    if out.ndim != 1 or out.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of length K+1 >= 2, got shape {out.shape}")
    if not is_concrete(logsnrs):
        jax.debug.callback(lambda g: check(np.asarray(g)), out)
    return out


def _check_grid_values(cast, *, name: str, dtype_name: str, data_end: bool):
    """The value checks of :func:`check_logsnrs` on a host grid already cast to the working dtype."""
    if cast.ndim == 1 and cast.shape[0] >= 2 and cast[-1] == np.inf:
        if not data_end:
            raise ValueError(f"{name} ends at +inf (the data); this sampler cannot take a step to the data "
                             "with these options: end the grid at a finite log-SNR (a continuous grid of "
                             "ddss_lite.grids), or see the sampler's docstring")
        head = cast[:-1]
        check_finite(head, name=f"{name} (before its data end)")
        if head.shape[0] > 1:
            check_increasing(head, name=f"{name} (as {dtype_name}, before its data end)")
    else:
        check_increasing(cast, name=f"{name} (as {dtype_name})")


def setup(key, shape, z_init=None, dtype=None):
    """Validate a sampler's ``key``, ``shape``, ``z_init`` and ``dtype``; return ``(z_0, key_steps, dtype)``.

    ``z_0`` is ``z_init`` when given (cast to ``dtype`` if given, else kept in its own floating
    dtype), else ``normal_rows(key_prior, shape)`` (see :func:`split_key`). Traced under a device
    mesh (:func:`ddss_lite.parallel.use_mesh`), ``z_0``'s rows are split over the mesh's batch axis
    (:func:`ddss_lite.parallel.constrain_batch`), from which XLA partitions the whole chain.
    """
    check_key(key)
    shape = check_sample_shape(shape)
    if dtype is not None and not jnp.issubdtype(jnp.dtype(dtype), jnp.floating):
        raise ValueError(f"dtype must be a floating dtype (e.g. jnp.float32), got {jnp.dtype(dtype).name}")
    key_prior, key_steps = split_key(key)
    if z_init is None:
        dtype = default_dtype() if dtype is None else jnp.dtype(dtype)
        return parallel.constrain_batch(normal_rows(key_prior, shape, dtype)), key_steps, dtype
    check_shape(z_init, shape, name="z_init")
    z_dtype = jnp.dtype(z_init.dtype if hasattr(z_init, "dtype") else np.asarray(z_init).dtype)
    if dtype is None and not jnp.issubdtype(z_dtype, jnp.floating):
        raise ValueError(f"z_init must hold floating-point values, got dtype {z_dtype.name} "
                         "(cast it, e.g. z_init.astype(jnp.float32), or pass dtype=)")
    z0 = jnp.asarray(z_init, z_dtype if dtype is None else dtype)
    if is_concrete(z0):
        check_finite(z0, name="z_init")
    return parallel.constrain_batch(z0), key_steps, z0.dtype


def call_denoiser(denoise, z, logsnr):
    """``denoise(z, logsnr)``, checked to return ``x_hat`` of the shape of ``z``, cast to ``z``'s dtype."""
    x_hat = denoise(z, logsnr)
    if jnp.shape(x_hat) != z.shape:
        raise ValueError(f"denoise(z, logsnr) must return x_hat of shape {z.shape}, got {jnp.shape(x_hat)}")
    return jnp.asarray(x_hat, z.dtype)


def all_finite(x):
    """A step's flag for :func:`raise_if_nonfinite`: every entry of ``x`` is finite. A scalar bool;
    traced under a device mesh that splits the batch (:func:`ddss_lite.parallel.use_mesh`), one
    flag per row (shape ``(B,)``), so that no device waits for the others inside the chain's loop:
    :func:`raise_if_nonfinite` reduces the rows once, after it."""
    if jnp.ndim(x) >= 1 and parallel.batch_devices() > 1:
        return jnp.all(jnp.isfinite(x).reshape(x.shape[0], -1), axis=1)
    return jnp.all(jnp.isfinite(x))


def _raise_first_bad(ok, what):
    ok = np.asarray(ok)
    if not ok.all():
        raise ValueError(f"{what} is not finite (NaN or Inf) at step {int(np.argmin(ok))} of {ok.shape[0]}")


def raise_if_nonfinite(ok, *, what: str = "the denoiser's x_hat"):
    """Raise ``ValueError`` naming the first step ``i`` with ``ok[i]`` False (``ok``: (K,) flags).

    Concrete flags are checked at once; traced ones (under ``jit``/``grad``) through
    ``jax.debug.callback``, whose error surfaces from the compiled call with this message. Flags of
    shape ``(K, B, ...)`` (per row, :func:`all_finite` under a mesh) are first reduced to ``(K,)``."""
    if jnp.ndim(ok) > 1:
        ok = jnp.all(jnp.reshape(ok, (jnp.shape(ok)[0], -1)), axis=1)
    if is_concrete(ok):
        _raise_first_bad(ok, what)
    else:
        jax.debug.callback(functools.partial(_raise_first_bad, what=what), ok)


def nonfinite_message(error: BaseException) -> str | None:
    """The message of :func:`raise_if_nonfinite` inside ``error`` (e.g. the runtime error a compiled
    call raises when the check fired under ``jit``), or ``None`` if it is not such an error."""
    for line in reversed(str(error).splitlines()):
        if "is not finite (NaN or Inf) at step" in line:
            return line.split("ValueError: ", 1)[-1].strip()
    return None


def finish(z, trajectory, return_trajectory: bool):
    """``(z, trajectory)`` when ``return_trajectory`` else ``z``."""
    return (z, trajectory) if return_trajectory else z


def with_start(z0, ys):
    """Trajectory ``(K+1, *shape)``: the initial state followed by the K stacked step outputs."""
    return jnp.concatenate([z0[None], ys], axis=0)


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
    """Draw ``sample_fn(key, shape)`` with the batch axis sharded over ``devices`` (default: every
    device of every process): :func:`ddss_lite.parallel.sample` on ``parallel.mesh(devices)``.

    ``sample_fn(key, shape) -> array of shape (B, ...)`` must treat rows
    independently (true for every sampler here with a per-example denoiser:
    noise is drawn per row, see :func:`normal_rows`). The batch is padded up to a
    multiple of the device count and the padding dropped, so the result equals
    ``sample_fn(key, shape)`` on one device to float tolerance. The computation is
    jitted with its output laid out by ``NamedSharding(Mesh(devices, ("batch",)),
    PartitionSpec("batch"))`` and XLA partitions the chain along the batch.
    """
    return parallel.sample(sample_fn, key, shape, devices=devices)


def run_steps(step, z0, per_step, key_steps, *, carry=None, remat, return_trajectory):
    """Scan ``step(carry, p, key_i) -> (carry, z_next, x_hat)`` over the steps; check every x_hat is
    finite (naming the first bad step); return ``z_K`` (and the trajectory). The carry is ``z`` itself
    or a tuple whose *last* element is ``z``."""
    carry0 = z0 if carry is None else carry

    def body(c, p, key_i):
        c, z_next, x_hat = step(c, p, key_i)
        return c, (z_next if return_trajectory else None, all_finite(x_hat))

    c, (ys, ok) = scan_chain(body, carry0, per_step, key=key_steps, remat=remat)
    raise_if_nonfinite(ok)
    z = c if carry is None else c[-1]
    return finish(z, with_start(z0, ys) if return_trajectory else None, return_trajectory)


def markov_chain(denoise, z0, key_steps, *, logsnrs, mu, nu, c, stochastic, remat, return_trajectory):
    """The one-step-memory chain ``z_{i+1} = mu_i x_hat(z_i, lambda_i) + nu_i z_i + c_i xi_i``
    (DESIGN.md section 4; ``mu``, ``nu``, ``c`` of shape (K,)), run by :func:`run_steps`; ``stochastic``
    draws ``xi_i`` (else ``c`` is ignored)."""

    def step(z, p, key_i):
        logsnr_t, mu_i, nu_i, c_i = p
        x_hat = call_denoiser(denoise, z, logsnr_t)
        z_next = mu_i * x_hat + nu_i * z
        if stochastic:
            z_next = z_next + c_i * normal_rows(key_i, z.shape, z.dtype)
        return z_next, z_next, x_hat

    return run_steps(step, z0, (logsnrs[:-1], mu, nu, c), key_steps, remat=remat, return_trajectory=return_trajectory)
