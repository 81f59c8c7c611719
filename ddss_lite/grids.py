"""Sampling grids for a model, by name, orthogonal to the samplers: ``grids.get(name)(K, model)``.

A grid is the (K+1,) strictly increasing array of log-SNRs ``logsnrs`` every sampler takes (step i
maps ``logsnrs[i]`` to ``logsnrs[i+1]``; :mod:`ddss_lite.samplers`), made *for a model*: it lies
inside ``model.logsnr_range``, the log-SNRs the network was trained on, so a network is never asked
about a noise level it has not seen. Continuous grids (any schedule):

* ``"logsnr"``: uniform in log-SNR from ``lo`` to ``hi`` (DPM-Solver++ and UniPC's default);
* ``"time_uniform"``: uniform in the schedule's time ``t`` (the book's ``schedules.grid(K)`` on the
  cosine schedule, bit for bit);
* ``"time_quadratic"``: ``t`` quadratic in the step index (DDIM's ``quad`` in continuous time);
* ``"karras"``: the EDM schedule (Karras et al. 2022, eq. 5), uniform in ``sigma^(1/rho)`` with
  ``sigma = exp(-logsnr / 2)`` (the VE noise level), ``rho = 7``.

Discrete grids (schedules with integer timesteps, ``schedules.DiscreteVP``) evaluate the network at
K of its own timesteps and end at the data, log-SNR ``+inf`` (``bar_alpha = 1``, the last step
returns ``x_hat``; diffusers' ``set_alpha_to_one``, the DDIM repository's ``t = -1``):

* ``"ddim_uniform"``: the DDIM repository's ``range(0, T, T // K)`` (refused when that is not K points);
* ``"ddim_quadratic"``: the DDIM repository's ``quad`` skip, ``(linspace(0, sqrt(0.8 T), K)^2)`` as integers;
* ``"leading"``, ``"trailing"``, ``"linspace"``: diffusers' ``timestep_spacing`` (``steps_offset`` for
  ``leading``). Diffusers' DDIM step goes from ``t`` to ``t - T // K``, which is the next point of these
  grids for ``leading`` and ``trailing`` but not for ``linspace``.

A grid given by hand is checked with :func:`check_in_range` by every sampler that receives a model;
``allow_outside_range=True`` there is the explicit opt-out.
"""
from __future__ import annotations

from typing import Callable

import jax.numpy as jnp
import numpy as np

from ddss_lite.models import check_model
from ddss_lite.validate import check_K, is_concrete

DATA_END = float("inf")
"""The last point of a discrete grid: log-SNR ``+inf`` (the data), reached by a step that returns ``x_hat``."""


def _finish(lam64, name: str) -> jnp.ndarray:
    """Cast to float32 and check strictly increasing there (points distinct in float64 may merge)."""
    lam32 = np.asarray(np.asarray(lam64, np.float64).astype(np.float32))
    finite = lam32[np.isfinite(lam32)]
    if finite.size != lam32.size - int(lam32[-1] == np.inf) or not np.all(np.diff(lam32[: finite.size]) > 0):
        raise ValueError(f"grid {name!r}: the points are not strictly increasing in float32 "
                         f"(too many steps for this range?): {lam32.tolist()}")
    return jnp.asarray(lam32)


def _steps(K) -> int:
    return check_K(K, name="K (steps)")


def _model_of(model, name: str):
    return check_model(model, name=f"model (grid {name!r})")


def _times(model, s):
    """The schedule's time at the fractions ``s`` (1 = noisiest end of its t_range, 0 = cleanest)."""
    t_lo, t_hi = model.schedule.t_range
    return t_lo + (t_hi - t_lo) * s


def logsnr_uniform(K: int, model) -> jnp.ndarray:
    """K + 1 log-SNRs evenly spaced from ``lo`` to ``hi`` of ``model.logsnr_range``."""
    K, model = _steps(K), _model_of(model, "logsnr")
    lo, hi = model.logsnr_range
    lam = np.linspace(lo, hi, K + 1)
    lam[0], lam[-1] = lo, hi
    return _finish(lam, "logsnr")


def time_uniform(K: int, model) -> jnp.ndarray:
    """K + 1 points evenly spaced in the schedule's time, from its noisiest to its cleanest end."""
    K, model = _steps(K), _model_of(model, "time_uniform")
    s = np.linspace(1.0, 0.0, K + 1)
    return _finish(model.schedule.logsnr(_times(model, s) if model.schedule.t_range != (0.0, 1.0) else s),
                   "time_uniform")


def time_quadratic(K: int, model) -> jnp.ndarray:
    """K + 1 points with ``t - t_min`` quadratic in the step index (denser at the clean end)."""
    K, model = _steps(K), _model_of(model, "time_quadratic")
    s = np.linspace(1.0, 0.0, K + 1) ** 2
    return _finish(model.schedule.logsnr(_times(model, s) if model.schedule.t_range != (0.0, 1.0) else s),
                   "time_quadratic")


def karras(K: int, model, *, rho: float = 7.0) -> jnp.ndarray:
    """The EDM schedule: ``sigma_i = (sigma_max^(1/rho) + i/K (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``,
    ``sigma = exp(-logsnr / 2)`` between the range's ends, ``logsnr_i = -2 log sigma_i``."""
    K, model = _steps(K), _model_of(model, "karras")
    if isinstance(rho, bool) or not isinstance(rho, (int, float, np.floating)) or not (np.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a finite number > 0, got {rho!r}")
    lo, hi = model.logsnr_range
    # in log space: sigma^(1/rho) = exp(-logsnr / (2 rho))
    a, b = np.exp(-lo / (2.0 * rho)), np.exp(-hi / (2.0 * rho))
    lam = -2.0 * rho * np.log(a + np.linspace(0.0, 1.0, K + 1) * (b - a))
    lam[0], lam[-1] = lo, hi
    return _finish(lam, "karras")


# --------------------------------------------------------------------------- discrete timesteps


def _discrete(model, name: str):
    model = _model_of(model, name)
    if model.schedule.kind != "discrete":
        raise ValueError(f"grid {name!r} is made of integer timesteps: it needs a model on a discrete schedule "
                         f"(schedules.DiscreteVP), got {model.schedule!r}; continuous grids: "
                         f"{sorted(CONTINUOUS)}")
    return model


def from_timesteps(timesteps, model, *, name: str = "timesteps") -> jnp.ndarray:
    """The grid that evaluates the network at ``timesteps`` (distinct integers in ``0 .. T-1``, any order;
    walked from the noisiest) and ends at the data (:data:`DATA_END`)."""
    model = _discrete(model, name)
    n = np.asarray(timesteps)
    if n.ndim != 1 or n.size < 1:
        raise ValueError(f"timesteps must be a 1-D array of at least one timestep, got shape {n.shape}")
    if len(np.unique(n)) != n.size:
        raise ValueError(f"timesteps must be distinct, got {np.sort(n).tolist()}")
    lam = model.schedule.logsnr_at(np.sort(n)[::-1])          # noisiest (largest n) first
    return _finish(np.concatenate([lam, [DATA_END]]), name)


def timesteps_of(name: str, K: int, T: int, *, steps_offset: int = 0) -> np.ndarray:
    """The K integer timesteps (descending) of the discrete spacing ``name`` for a T-step schedule."""
    K, T = _steps(K), check_K(T, name="T", low=2)
    if K > T:
        raise ValueError(f"K (steps) must be <= T = {T} for a grid of the model's own timesteps, got {K}")
    if name == "ddim_uniform":
        n = np.arange(0, T, T // K)
        if n.size != K:
            raise ValueError(f"K: DDIM's uniform skip range(0, {T}, {T} // {K}) has {n.size} timesteps, not {K} "
                             f"(it has K points only when K divides T, or nearly); use 'leading' (the same "
                             f"stride, exactly K points)")
    elif name == "ddim_quadratic":
        n = (np.linspace(0.0, np.sqrt(T * 0.8), K) ** 2).astype(np.int64)
    elif name == "leading":
        n = np.arange(K) * (T // K) + check_K(steps_offset, name="steps_offset", low=0)
    elif name == "trailing":
        n = np.round(np.arange(T, 0, -T / K)).astype(np.int64) - 1
    elif name == "linspace":
        n = np.round(np.linspace(0, T - 1, K)).astype(np.int64)
    else:
        raise ValueError(f"name must be one of {sorted(DISCRETE)}, got {name!r}")
    if n.max() > T - 1 or len(np.unique(n)) != K:
        raise ValueError(f"K: the {name!r} spacing with K = {K} on T = {T} gives timesteps {np.sort(n).tolist()}, "
                         f"not {K} distinct timesteps in [0, {T - 1}]")
    return np.sort(n)[::-1]


def _discrete_grid(name: str) -> Callable:
    def make(K: int, model, **options):
        model = _discrete(model, name)
        return from_timesteps(timesteps_of(name, K, model.schedule.T, **options), model, name=name)

    make.__name__ = name
    make.__doc__ = f"K of the model's timesteps by the {name!r} spacing (:func:`timesteps_of`), then the data."
    return make


CONTINUOUS = {"logsnr": logsnr_uniform, "time_uniform": time_uniform, "time_quadratic": time_quadratic,
              "karras": karras}
DISCRETE = {n: _discrete_grid(n) for n in ("ddim_uniform", "ddim_quadratic", "leading", "trailing", "linspace")}
GRIDS = {**CONTINUOUS, **DISCRETE}


def get(name: str) -> Callable:
    """The grid called ``name``: a function ``(K, model, **options) -> logsnrs`` of shape (K+1,)."""
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}: name must be one of {sorted(GRIDS)}")
    return GRIDS[name]


def check_in_range(logsnrs, model, *, name: str = "logsnrs"):
    """Every point of ``logsnrs`` must lie in ``model.logsnr_range`` (to float32 rounding), except a last
    point at the data (:data:`DATA_END`). Raises ``ValueError`` naming the range; returns ``logsnrs``.
    Runs only on concrete grids (under a trace the values are unknown)."""
    if not is_concrete(logsnrs):
        return logsnrs
    lam = np.asarray(logsnrs, np.float64)
    lo, hi = model.logsnr_range
    tol = lambda v: 1e-6 * max(1.0, abs(v))         # float32 rounding of the range's ends
    inner = lam[:-1] if lam.size and lam[-1] == np.inf else lam
    bad = inner[~((inner >= lo - tol(lo)) & (inner <= hi + tol(hi)))]
    if bad.size:
        raise ValueError(f"{name}: the grid leaves the model's logsnr_range [{lo:.6g}, {hi:.6g}] (the log-SNRs "
                         f"{model.name!r} was trained on) at {bad[:5].tolist()}; make it with ddss_lite.grids "
                         f"(grids.get(name)(K, model)), or pass allow_outside_range=True if you mean it")
    return logsnrs


def for_model(model, K: int, *, logsnrs=None, grid: str | None = None, allow_outside_range: bool = False,
                 data_end: bool = True, **grid_options):
    """The grid a sampler of K steps runs on for ``model``: ``logsnrs`` (checked to lie in the model's
    range unless ``allow_outside_range``), else ``get(grid or model.default_grid)(K, model)``.
    A discrete model's default grid ends at the data; ``data_end=False`` (samplers that cannot step
    there) uses the continuous ``"time_uniform"`` grid on its schedule instead."""
    if logsnrs is not None:
        if grid is not None:
            raise ValueError("give logsnrs or grid, not both")
        return logsnrs if allow_outside_range else check_in_range(logsnrs, model)
    name = grid if grid is not None else model.default_grid
    if grid is None and not data_end and name in DISCRETE:
        name = "time_uniform"
    return get(name)(K, model, **grid_options)
