"""Samplers for any denoiser ``denoise(z, logsnr) -> x_hat``, counted in network evaluations (NFE).

Grid and indexing (shared by every sampler). ``logsnrs`` has shape (K+1,) and is
strictly increasing: ``logsnrs[0]`` is the noisiest point (t = 1, default -20),
``logsnrs[K]`` the cleanest (t = 0, default +20); :func:`ddss_lite.schedules.grid`
gives the default. Step ``i = 0 .. K-1`` maps the state ``z_i`` at
``lambda_t = logsnrs[i]`` to ``z_{i+1}`` at ``lambda_s = logsnrs[i+1]`` (s is the
cleaner time, as in DESIGN.md section 4). The chain starts at ``z_0 ~ N(0, I)``.

Output. Every sampler returns the final state ``z_K`` at ``logsnrs[K]`` (at
logsnr 20 it equals the last ``x_hat`` up to ``sigma = e^-10 ~ 4.5e-5`` times
the last ``eps_hat``); with ``return_trajectory=True`` it returns
``(z_K, trajectory)`` where ``trajectory[i] = z_i`` has shape (K+1, *shape).

Randomness (see :mod:`ddss_lite.chain`): ``key_prior, key_steps = split(key)``;
``z_0`` from ``key_prior``; step i's noise from ``fold_in(key_steps, i)``; row n
of each draw from ``fold_in(., n)``. Samples do not depend on batch size.

Fixed samplers share one signature,
``sample(denoise, key, shape, *, logsnrs, remat=True, return_trajectory=False, z_init=None, dtype=None, ...)``;
learnable families (:class:`RDDIM`, :class:`GGDM`) are namespaces of pure functions
``init_from_ddim(K, *, logsnrs=None)``, ``init_from_ddpm(K, *, logsnrs=None)`` and
``sample(params, denoise, key, shape, *, logsnrs, remat=True, return_trajectory=False, z_init=None)``.

One vocabulary for every step rule (DESIGN.md section 4): ``mu`` multiplies the prediction
``x_hat``, ``nu`` a state ``z``, ``c`` the fresh noise ``xi``. A family's parameter pytree holds
only what may be optimised; the grid is always the ``logsnrs`` argument.

Checks: ``key`` must be a PRNG key, ``z_init`` finite floating point, ``logsnrs`` strictly
increasing after the cast to the working dtype; every ``x_hat`` the denoiser returns is checked
to be finite, and a NaN or Inf raises ``ValueError`` naming the first bad step (under ``jit`` the
error comes through ``jax.debug.callback``).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import chain, grids, integrators
from ddss_lite.models import as_denoiser
from ddss_lite.schedules import alpha_sigma, grid
from ddss_lite.validate import check_finite, check_K, check_shape

__all__ = [
    "ddim_coefficients",
    "ddpm",
    "ddim",
    "dpm_solver_pp_2m",
    "heun",
    "heun_nfe",
    "heun_steps_for_budget",
    "RDDIM",
    "GGDM",
    "Sampler",
    "BoundFamily",
    "SAMPLERS",
    "FAMILIES",
    "get",
    "get_sampler",
    "steps",
    "steps_for_nfe",
    "get_family",
    "nfe",
]


# --------------------------------------------------------------------------- checks


def _check_eta(eta):
    if chain.is_concrete(eta):
        e = np.asarray(eta)
        if isinstance(eta, bool) or e.dtype.kind not in "iuf" or e.ndim != 0:
            raise ValueError(f"eta must be a real scalar in [0, 1], got {eta!r}")
        check_finite(eta, name="eta")
        if not 0.0 <= float(e) <= 1.0:
            raise ValueError(f"eta must be a scalar in [0, 1], got {eta!r}")
    return eta


# --------------------------------------------------------------------------- DDPM / DDIM(eta)


def ddim_coefficients(*, logsnr_t, logsnr_s, eta=0.0):
    """Coefficients ``(mu, nu, c)`` of the DDIM(eta) step ``z_s = mu x_hat + nu z_t + c xi``.

    With ``r = exp(lambda_t - lambda_s) = alpha_{t|s}^2 sigma_s^2 / sigma_t^2`` (so the
    posterior variance of DESIGN.md section 4 is ``sigma_{t|s}^2 sigma_s^2 / sigma_t^2
    = (1 - r) sigma_s^2``):

        c^2 = eta^2 (1 - r) sigma_s^2,
        nu  = sqrt(sigma_s^2 - c^2) / sigma_t = (sigma_s / sigma_t) sqrt(1 - eta^2 (1 - r)),
        mu  = alpha_s - nu alpha_t = alpha_s (1 - r)(1 + eta^2 r) / (1 + sqrt(r (1 - eta^2 (1 - r)))),

    i.e. ``z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi`` with
    ``eps_hat = (z_t - alpha_t x_hat) / sigma_t`` (Song et al. 2021, DDIM, eq. 12).
    ``eta = 0``: ``mu = alpha_s - alpha_t sigma_s / sigma_t``, ``nu = sigma_s / sigma_t``, ``c = 0``.
    ``eta = 1``: ``mu = alpha_s sigma_{t|s}^2 / sigma_t^2``, ``nu = alpha_{t|s} sigma_s^2 / sigma_t^2``,
    ``c^2 = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``: the posterior ``q(z_s | z_t, x = x_hat)``, i.e.
    DDPM ancestral sampling (Ho et al. 2020, eq. 6-7). The second form of ``mu`` avoids cancellation.
    """
    logsnr_t, logsnr_s = jnp.asarray(logsnr_t), jnp.asarray(logsnr_s)
    _check_eta(eta)
    if chain.is_concrete((logsnr_t, logsnr_s)) and not np.all(np.asarray(logsnr_s) > np.asarray(logsnr_t)):
        raise ValueError("logsnr_s must be > logsnr_t (a step goes from noisier t to cleaner s)")
    eta = jnp.asarray(eta, logsnr_t.dtype)
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    r = jnp.exp(logsnr_t - logsnr_s)
    one_minus_r = -jnp.expm1(logsnr_t - logsnr_s)     # both forms: r and 1 - r can each be tiny
    keep = 1.0 - eta**2 * one_minus_r               # (sigma_s^2 - c^2) / sigma_s^2
    nu = sigma_s / sigma_t * jnp.sqrt(keep)
    mu = alpha_s * one_minus_r * (1.0 + eta**2 * r) / (1.0 + jnp.sqrt(r * keep))
    c = eta * jnp.sqrt(one_minus_r) * sigma_s
    return mu, nu, c


def ddim(denoise, key, shape, *, logsnrs, eta=0.0, remat: bool = True, return_trajectory: bool = False,
         z_init=None, dtype=None):
    """DDIM(eta) sampler: ``z_s = alpha_s x_hat + sqrt(sigma_s^2 - c^2) eps_hat + c xi`` per step.

    ``c = eta * sqrt(sigma_{t|s}^2 sigma_s^2 / sigma_t^2)`` (see :func:`ddim_coefficients`);
    ``eta = 0`` is deterministic DDIM, ``eta = 1`` is DDPM ancestral sampling.
    Song et al. 2021 (DDIM), eq. 12 and 16. NFE = K. The grid may end at the data (``+inf``, a
    discrete grid of :mod:`ddss_lite.grids`): the last step then returns ``x_hat`` (``mu = 1, nu = c = 0``).
    """
    z0, key_steps, dtype = chain.setup(key, shape, z_init, dtype)
    logsnrs = chain.check_logsnrs(logsnrs, dtype, data_end=True)
    _check_eta(eta)
    mu, nu, c = ddim_coefficients(logsnr_t=logsnrs[:-1], logsnr_s=logsnrs[1:], eta=eta)
    stochastic = not (chain.is_concrete(eta) and float(eta) == 0.0)
    return chain.markov_chain(denoise, z0, key_steps, logsnrs=logsnrs, mu=mu, nu=nu, c=c, stochastic=stochastic,
                              remat=remat, return_trajectory=return_trajectory)


def ddpm(denoise, key, shape, *, logsnrs, remat: bool = True, return_trajectory: bool = False,
         z_init=None, dtype=None):
    """DDPM ancestral sampling: ``z_s ~ q(z_s | z_t, x = x_hat(z_t))`` on the grid ``logsnrs``.

    Posterior mean ``alpha_{t|s} sigma_s^2/sigma_t^2 z_t + alpha_s sigma_{t|s}^2/sigma_t^2 x_hat``,
    variance ``sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (Ho et al. 2020, eq. 6-7; Kingma et al.
    2021, VDM eq. 9). Identical to :func:`ddim` with ``eta = 1``. NFE = K.
    """
    return ddim(denoise, key, shape, logsnrs=logsnrs, eta=1.0, remat=remat,
                return_trajectory=return_trajectory, z_init=z_init, dtype=dtype)


# --------------------------------------------------------------------------- modern baselines


def dpm_solver_pp_2m(denoise, key, shape, *, logsnrs, lower_order_final: bool = True, remat: bool = True,
                     return_trajectory: bool = False, z_init=None, dtype=None):
    """DPM-Solver++(2M): multistep second-order solver of the probability-flow ODE in data prediction.

    In half-log-SNR ``l = lambda / 2 = log(alpha / sigma)``, ``h_i = l_{i+1} - l_i``:

        D_i = x_hat_i                                         (i = 0: first order, = DDIM)
        D_i = (1 + 1/(2 r_i)) x_hat_i - 1/(2 r_i) x_hat_{i-1},  r_i = h_{i-1} / h_i   (i >= 1)
        z_{i+1} = (sigma_{i+1} / sigma_i) z_i - alpha_{i+1} expm1(-h_i) D_i

    Lu et al. 2022 (DPM-Solver++), Algorithm 2. ``lower_order_final=True`` (the default) makes
    the last step first order (``D = x_hat``) at every K; ``False`` keeps it second order. This is
    our rule, chosen on measured errors (the authors' code lowers the final order below 10 steps,
    another library below 15): on a grid ending at a high log-SNR the last step is by far the
    longest in ``l`` (on the even cosine grid to ``lambda = 20`` it spans ``l`` from about
    ``log(2K/pi)`` to 10), so ``1/(2 r)`` is large and the linear extrapolation of ``x_hat`` in
    ``l`` overshoots where ``x_hat`` has all but stopped changing. On Gaussian data (closed-form
    denoiser, ``tests/test_samplers.py``) the relative error of the second-order last step is
    0.70 / 0.25 / 0.069 at K = 10 / 20 / 40, of the first-order one 0.040 / 0.0033 / 0.0051: the
    latter is two error terms of opposite sign (the last step's, negative, and the interior's,
    positive) that cancel near K = 18, so its magnitude is not monotone between K = 15 and 30,
    and it stays below DDIM's at every K. NFE = K. A grid ending at the data (``+inf``) needs
    ``lower_order_final`` (its last step, of infinite length in ``l``, is then DDIM's, returning ``x_hat``).
    """
    z0, key_steps, dtype = chain.setup(key, shape, z_init, dtype)
    logsnrs = chain.check_logsnrs(logsnrs, dtype, data_end=lower_order_final)
    logsnr_t, logsnr_s = logsnrs[:-1], logsnrs[1:]
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    _, sigma_t = alpha_sigma(logsnr_t)
    h = 0.5 * (logsnr_s - logsnr_t)
    a = sigma_s / sigma_t
    b = -alpha_s * jnp.expm1(-h)
    w = jnp.concatenate([jnp.zeros((1,), dtype), 0.5 * h[1:] / h[:-1]])   # 1 / (2 r_i); 0 at the first step
    if lower_order_final:
        w = w.at[-1].set(0.0)

    def step(carry, p, key_i):
        x_prev, z = carry
        logsnr_i, a_i, b_i, w_i = p
        x_hat = chain.call_denoiser(denoise, z, logsnr_i)
        z_next = a_i * z + b_i * ((1.0 + w_i) * x_hat - w_i * x_prev)
        return (x_hat, z_next), z_next, x_hat

    return chain.run_steps(step, z0, (logsnr_t, a, b, w), key_steps, carry=(jnp.zeros_like(z0), z0), remat=remat,
                           return_trajectory=return_trajectory)


def _heun_flags(K, first_euler, last_euler):
    """Per-step True where the Heun correction is applied (False: an Euler step)."""
    flags = np.ones(K, bool)
    if first_euler:
        flags[0] = False
    if last_euler:
        flags[-1] = False
    return flags


def heun(denoise, key, shape, *, logsnrs, first_euler: bool = True, last_euler: bool = True,
         remat: bool = True, return_trajectory: bool = False, z_init=None, dtype=None):
    """Heun's second-order method on the probability-flow ODE in VE sigma-space (EDM).

    With ``x = z / alpha`` and ``sigma_ve = sigma / alpha = exp(-lambda / 2)`` the ODE is
    ``dx/dsigma_ve = (x - x_hat(z, lambda)) / sigma_ve = eps_hat``. One step t -> s:

        x_e = x_t + (sigma_s - sigma_t) eps_hat(z_t)                     (Euler; in VP form DDIM)
        x_s = x_t + (sigma_s - sigma_t) (eps_hat(z_t) + eps_hat(alpha_s x_e)) / 2   (Heun)

    evaluated in the VP form ``z_s = z_e - sigma_s expm1(h) (eps_hat_s - eps_hat_t) / 2``,
    ``h = (lambda_s - lambda_t)/2``, which has no cancellation. Karras et al. 2022 (EDM),
    Algorithm 1. As there, the last step is Euler (``last_euler``): eps_hat at the cleanest
    point (sigma ~ 4.5e-5) is ill-conditioned. Unlike there, the *first* step is also Euler
    by default (``first_euler``): from logsnr -20, sigma_ve = e^10 ~ 2.2e4 and the first
    step shrinks it a thousand-fold, where the trapezoid rule amplifies
    ``x_hat_t - x_hat_s`` by ``sigma_t / sigma_s`` (on Gaussian data, K = 5: relative error
    ~80 instead of ~0.1; EDM starts at sigma_max = 80). A Heun correction needs
    ``eps_hat = (z - alpha x_hat) / sigma`` at both ends of its step, so it is refused where
    ``sigma`` rounds to 0 in the working dtype (``logsnrs`` above about 103 in float32).
    NFE = number of steps + number of Heun steps (:func:`heun_nfe`).
    """
    z0, key_steps, dtype = chain.setup(key, shape, z_init, dtype)
    logsnrs = chain.check_logsnrs(logsnrs, dtype, data_end=last_euler)
    K = logsnrs.shape[0] - 1
    logsnr_t, logsnr_s = logsnrs[:-1], logsnrs[1:]
    mu, nu, _ = ddim_coefficients(logsnr_t=logsnr_t, logsnr_s=logsnr_s, eta=0.0)
    alpha_t, sigma_t = alpha_sigma(logsnr_t)
    alpha_s, sigma_s = alpha_sigma(logsnr_s)
    flags = _heun_flags(K, first_euler, last_euler)
    # 0 on the Euler steps (on a last step to the data it would be 0 * inf)
    corr = jnp.where(jnp.asarray(flags), -0.5 * sigma_s * jnp.expm1(0.5 * (logsnr_s - logsnr_t)), 0.0)
    if chain.is_concrete(logsnrs):
        with np.errstate(over="ignore"):
            sig = np.sqrt(1.0 / (1.0 + np.exp(np.asarray(logsnrs).astype(np.dtype(dtype)))))  # sigma, in dtype
        bad = np.flatnonzero(flags & ((sig[:-1] == 0) | (sig[1:] == 0)))
        if bad.size:
            raise ValueError(f"logsnrs: Heun step {int(bad[0])} ends at log-SNR {float(logsnrs[bad[0] + 1]):.4g}, "
                             f"where sigma = 0 in {jnp.dtype(dtype).name}; use last_euler=True or a grid "
                             "whose Heun steps keep sigma > 0")
    flags = jnp.asarray(flags)

    def step(z, p, key_i):
        lt, ls, mu_i, nu_i, at, st, as_, ss, c_i, heun_i = p
        x_hat = chain.call_denoiser(denoise, z, lt)
        z_e = mu_i * x_hat + nu_i * z

        def correct(z_e):
            eps_t = (z - at * x_hat) / st
            eps_s = (z_e - as_ * chain.call_denoiser(denoise, z_e, ls)) / ss
            return z_e + c_i * (eps_s - eps_t)

        z_next = jax.lax.cond(heun_i, correct, lambda z_e: z_e, z_e)
        return z_next, z_next, x_hat

    per_step = (logsnr_t, logsnr_s, mu, nu, alpha_t, sigma_t, alpha_s, sigma_s, corr, flags)
    return chain.run_steps(step, z0, per_step, key_steps, remat=remat, return_trajectory=return_trajectory)


def heun_nfe(K: int, *, first_euler: bool = True, last_euler: bool = True) -> int:
    """NFE of :func:`heun` with K steps: one per step plus one per Heun (non-Euler) step."""
    check_K(K)
    return K + int(_heun_flags(K, first_euler, last_euler).sum())


def heun_steps_for_budget(nfe: int, **options) -> int:
    """The most Heun steps K with ``heun_nfe(K, **options) <= nfe`` (equal-NFE comparisons)."""
    nfe = check_K(nfe, name="nfe")
    fits = [k for k in range(1, nfe + 1) if heun_nfe(k, **options) <= nfe]
    if not fits:
        raise ValueError(f"nfe must be >= {heun_nfe(1, **options)} for Heun with {options or 'the defaults'} "
                         f"(one step costs that much), got {nfe}")
    return max(fits)


# --------------------------------------------------------------------------- learnable families
#
# A family's parameters hold only what an optimiser may change. The grid the network is
# evaluated on, ``logsnrs`` ((K+1,), strictly increasing), is a separate argument of ``sample``,
# as for the fixed samplers: its values (or, with learned timesteps, its two ends) stay fixed
# whatever the optimiser does (weight decay included), because they are not in the pytree.


def family_grid(K, logsnrs):
    """A family's (K+1,) grid: ``logsnrs`` checked (default ``schedules.grid(K)``)."""
    K = check_K(K)
    logsnrs = grid(K) if logsnrs is None else logsnrs
    logsnrs = chain.check_logsnrs(logsnrs, data_end=True)
    check_shape(logsnrs, (K + 1,), name="logsnrs")
    return logsnrs


def _check_learnable_ends(logsnrs):
    """Learned timesteps interpolate between the grid's ends: both must be finite."""
    if chain.is_concrete(logsnrs) and not np.all(np.isfinite(np.asarray(logsnrs)[[0, -1]])):
        raise ValueError("logsnrs: learned timesteps (learn_logsnrs / logsnr_logits) lie between the grid's two "
                         "ends, which must be finite; this grid ends at the data (+inf): use a continuous grid "
                         "of ddss_lite.grids")


def _check_keys(params, keys, family: str):
    """``params`` must be a dict with exactly ``keys``."""
    if not isinstance(params, dict) or set(params) != set(keys):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{family} params must be a dict with keys {sorted(keys)}, got {got}")


def _check_params(params, shapes: dict, family: str):
    """``params`` must be a dict with exactly the keys of ``shapes`` (values: shapes) and finite values."""
    _check_keys(params, tuple(shapes), family)
    for name, shape in shapes.items():
        check_shape(params[name], shape, name=f"{family} params[{name!r}]")
    if chain.is_concrete(params):
        check_finite(params, name=f"{family} params")


def _num_steps(params) -> int:
    c = params.get("c") if isinstance(params, dict) else None
    return int(jnp.shape(c)[0]) if c is not None and jnp.ndim(c) == 1 else 0


def _family_setup(params, logsnrs, shapes, family, key, shape, z_init, dtype):
    """Checks shared by the families; returns ``(K, z_0, key_steps, dtype, logsnrs)``."""
    K = check_K(_num_steps(params), name=f"K ({family} params['c'] length)")
    _check_params(params, shapes(K), family)
    z0, key_steps, dtype = chain.setup(key, shape, z_init, dtype)
    logsnrs = chain.check_logsnrs(logsnrs, dtype, data_end=True)
    check_shape(logsnrs, (K + 1,), name=f"logsnrs (K + 1 = {K + 1} points for {family} params of K = {K} steps)")
    return K, z0, key_steps, dtype, logsnrs


class RDDIM:
    """Relaxed DDIM: per step ``z_s = mu_t x_hat(z_t) + nu_t z_t + c_t xi`` with free ``mu, nu, c``.

    Watson et al. 2022 (DDSS), eq. 10-11 (their ``sigma_t`` is our ``c``). Params:
    ``{"mu": (K,), "nu": (K,), "c": (K,)}``: ``mu`` multiplies ``x_hat``, ``nu`` the state ``z``,
    ``c`` the fresh noise (DESIGN.md section 4). The grid is the ``logsnrs`` argument. NFE = K.
    """

    name = "rddim"

    @staticmethod
    def init_from_ddim(K: int, *, logsnrs=None, eta=0.0) -> dict:
        """Params reproducing :func:`ddim` (``eta``) on ``logsnrs`` (default ``schedules.grid(K)``)."""
        logsnrs = family_grid(K, logsnrs)
        _check_eta(eta)
        mu, nu, c = ddim_coefficients(logsnr_t=logsnrs[:-1], logsnr_s=logsnrs[1:], eta=eta)
        return {"mu": mu, "nu": nu, "c": c}

    @staticmethod
    def init_from_ddpm(K: int, *, logsnrs=None) -> dict:
        """Params reproducing :func:`ddpm` on ``logsnrs`` (default ``schedules.grid(K)``)."""
        return RDDIM.init_from_ddim(K, logsnrs=logsnrs, eta=1.0)

    @staticmethod
    def num_steps(params) -> int:
        """K, the number of steps of ``params`` (the length of ``params["c"]``; 0 if absent)."""
        return _num_steps(params)

    @staticmethod
    def logsnrs(params, logsnrs):
        """The grid the network is evaluated on: ``logsnrs`` itself (RDDIM learns no timesteps)."""
        return logsnrs

    @staticmethod
    def sample(params, denoise, key, shape, *, logsnrs, remat: bool = True, return_trajectory: bool = False,
               z_init=None, dtype=None):
        """Run ``z_{i+1} = mu_i x_hat(z_i, lambda_i) + nu_i z_i + c_i xi_i``, i = 0..K-1, on ``logsnrs``."""
        _check_keys(params, ("mu", "nu", "c"), "RDDIM")
        K, z0, key_steps, dtype, logsnrs = _family_setup(
            params, logsnrs, lambda K: {"mu": (K,), "nu": (K,), "c": (K,)}, "RDDIM", key, shape, z_init, dtype)
        p = {k: jnp.asarray(params[k], dtype) for k in ("mu", "nu", "c")}
        return chain.markov_chain(denoise, z0, key_steps, logsnrs=logsnrs, mu=p["mu"], nu=p["nu"], c=p["c"],
                                  stochastic=True, remat=remat, return_trajectory=return_trajectory)

    @staticmethod
    def nfe(K: int) -> int:
        return check_K(K)

    @classmethod
    def bind(cls, params, logsnrs=None) -> "BoundFamily":
        """These params as a sampler called like every other (:class:`BoundFamily`), on ``logsnrs`` if given."""
        return BoundFamily(cls, params, logsnrs)


class GGDM:
    """Generalized Gaussian Diffusion Models: a non-Markovian sampler family over the whole history.

    Step ``i = 0 .. K-1`` (states ``z_j`` at ``lambda_j``, ``x_j = x_hat(z_j, lambda_j)``):

        z_{i+1} = sum_{j<=i} mu_ij x_j + sum_{j<=i} nu_ij z_j + c_i xi_i

    Watson et al. 2022 (DDSS), section 4 (GGDM), in the vocabulary of DESIGN.md section 4:
    ``mu`` multiplies predictions, ``nu`` states, ``c`` the fresh noise. DDIM is the diagonal
    case. ``mu`` and ``nu`` are (K, K) and only their lower triangle (``j <= i``) is used. Params
    are ``{"mu", "nu", "c": (K,)}``, evaluated on the fixed grid ``logsnrs``; with learned
    timesteps also ``"logsnr_logits": (K,)``: ``lambda_j = lo + (hi - lo) sum_{k<j} softmax(u)_k``
    between the fixed ends ``lo, hi = logsnrs[0], logsnrs[K]`` (the grid's interior is then
    ignored), strictly increasing for any real ``u``. The history is carried through the scan as
    the fixed-size (K, *shape) array of pending sums ``acc[k] = sum_{j<i} mu_kj x_j + nu_kj z_j``;
    with ``remat`` the network call is checkpointed, so reverse mode stores O(K |z|) (each state
    and prediction once) and no network activations. NFE = K.
    """

    name = "ggdm"

    @staticmethod
    def init_from_ddim(K: int, *, logsnrs=None, eta=0.0, learn_logsnrs: bool = False) -> dict:
        """Params reproducing :func:`ddim` (``eta``) on ``logsnrs`` (default ``schedules.grid(K)``).

        Diagonal only: ``mu_ii``, ``nu_ii``, ``c_i`` are DDIM's coefficients of ``x_hat``, of the
        state and of the noise (:func:`ddim_coefficients`). With ``learn_logsnrs`` the grid's
        interior is stored as ``logsnr_logits = log(diff(logsnrs) / (hi - lo))`` (reproduced to
        float rounding); sample with the same ``logsnrs`` (its ends are used).
        """
        logsnrs = family_grid(K, logsnrs)
        _check_eta(eta)
        mu, nu, c = ddim_coefficients(logsnr_t=logsnrs[:-1], logsnr_s=logsnrs[1:], eta=eta)
        params = {"mu": jnp.diag(mu), "nu": jnp.diag(nu), "c": c}
        if learn_logsnrs:
            _check_learnable_ends(logsnrs)
            params["logsnr_logits"] = jnp.log(jnp.diff(logsnrs) / (logsnrs[-1] - logsnrs[0]))
        return params

    @staticmethod
    def init_from_ddpm(K: int, *, logsnrs=None, learn_logsnrs: bool = False) -> dict:
        """Params reproducing :func:`ddpm` on ``logsnrs`` (default ``schedules.grid(K)``)."""
        return GGDM.init_from_ddim(K, logsnrs=logsnrs, eta=1.0, learn_logsnrs=learn_logsnrs)

    @staticmethod
    def num_steps(params) -> int:
        """K, the number of steps of ``params`` (the length of ``params["c"]``; 0 if absent)."""
        return _num_steps(params)

    @staticmethod
    def logsnrs(params, logsnrs):
        """The (K+1,) grid the network is evaluated on: ``logsnrs``, or with learned timesteps the
        cumulative softmax of ``params["logsnr_logits"]`` between ``logsnrs[0]`` and ``logsnrs[-1]``."""
        if "logsnr_logits" not in params:
            return logsnrs
        lo, hi = logsnrs[0], logsnrs[-1]
        frac = jnp.cumsum(jax.nn.softmax(params["logsnr_logits"]))[:-1]
        return jnp.concatenate([lo[None], lo + (hi - lo) * frac.astype(logsnrs.dtype), hi[None]])

    @staticmethod
    def sample(params, denoise, key, shape, *, logsnrs, remat: bool = True, return_trajectory: bool = False,
               z_init=None, dtype=None):
        """Run the GGDM chain on ``logsnrs``; returns ``z_K`` (and the (K+1, *shape) trajectory of states)."""
        learned = isinstance(params, dict) and "logsnr_logits" in params
        _check_keys(params, ("mu", "nu", "c") + (("logsnr_logits",) if learned else ()), "GGDM")

        def shapes(K):
            return {"mu": (K, K), "nu": (K, K), "c": (K,), **({"logsnr_logits": (K,)} if learned else {})}

        K, z0, key_steps, dtype, logsnrs = _family_setup(params, logsnrs, shapes, "GGDM", key, shape, z_init, dtype)
        if learned:
            _check_learnable_ends(logsnrs)
        lam = GGDM.logsnrs(params, logsnrs)
        tril = jnp.tril(jnp.ones((K, K), dtype))
        mu = jnp.asarray(params["mu"], dtype) * tril
        nu = jnp.asarray(params["nu"], dtype) * tril
        c = jnp.asarray(params["c"], dtype)

        # The history enters linearly, so it is carried as the pending sums
        #   acc[k] = sum_{j < i} mu_kj x_j + nu_kj z_j    (k = 0 .. K-1; a fixed (K, *shape) array)
        # and step i adds column i: acc += mu[:, i] x_i + nu[:, i] z_i, then z_{i+1} = acc[i] + c_i xi_i.
        # Reverse mode then needs only z_i, x_i per step (d nu_ki = <g_acc[k], z_i>), O(K |z|) in all,
        # whereas carrying the states themselves and checkpointing the whole step stores the
        # (K+1)-state buffer at every step, O(K^2 |z|). Hence remat checkpoints the network call here
        # (Watson et al. 2022: "replace model_fn with jax.remat(model_fn) in your sampling loop").
        call = lambda z, logsnr: chain.call_denoiser(denoise, z, logsnr)
        net = jax.checkpoint(call, prevent_cse=False) if remat else call
        col = lambda a: a.reshape(a.shape + (1,) * z0.ndim)

        def step(carry, p, key_i):
            acc, z = carry
            i, logsnr_i, mu_col, nu_col, c_i = p
            x_hat = net(z, logsnr_i)
            acc = acc + col(mu_col) * x_hat + col(nu_col) * z
            z_next = acc[i] + c_i * chain.normal_rows(key_i, z0.shape, dtype)
            return (acc, z_next), z_next, x_hat

        per_step = (jnp.arange(K), lam[:-1], mu.T, nu.T, c)
        acc0 = jnp.zeros((K,) + z0.shape, dtype)
        return chain.run_steps(step, z0, per_step, key_steps, carry=(acc0, z0), remat=False,
                               return_trajectory=return_trajectory)

    @staticmethod
    def nfe(K: int) -> int:
        return check_K(K)

    @classmethod
    def bind(cls, params, logsnrs=None) -> "BoundFamily":
        """These params as a sampler called like every other (:class:`BoundFamily`), on ``logsnrs`` if given."""
        return BoundFamily(cls, params, logsnrs)


# --------------------------------------------------------------------------- registry


def _nfe_options(nfe_fn, options: dict) -> dict:
    """The entries of ``options`` that ``nfe_fn`` takes (e.g. Heun's ``first_euler``/``last_euler``)."""
    params = inspect.signature(nfe_fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return {}
    return {k: v for k, v in options.items() if k in params}


def steps_for_nfe(nfe_fn, nfe, *, name: str, **options) -> int:
    """The number of steps K with ``nfe_fn(K, **options) == nfe`` exactly (the one place NFE becomes steps);
    ``ValueError`` naming the nearest budgets that are possible when none fits."""
    nfe = check_K(nfe, name="nfe")
    opts = _nfe_options(nfe_fn, options)
    for K in range(1, nfe + 1):
        n = nfe_fn(K, **opts)
        if n == nfe:
            return K
        if n > nfe:
            break
    possible = sorted({nfe_fn(K, **opts) for K in range(1, nfe + 2)})
    below = [n for n in possible if n < nfe]
    above = [n for n in possible if n > nfe]
    raise ValueError(f"nfe: {name} cannot spend exactly {nfe} network evaluations"
                     f"{' with ' + str(opts) if opts else ''}; the nearest possible are "
                     f"{below[-1] if below else None} and {above[0] if above else None}")


resolve_grid = grids.for_model
"""The grid a sampler of K steps runs on for a model (:func:`ddss_lite.grids.for_model`)."""


def _prepare(target, key, shape, *, K_from_nfe, nfe, logsnrs, grid, allow_outside_range, data_end, who: str):
    """``(denoise, shape, logsnrs, model)`` for a call on a :class:`~ddss_lite.models.Model` or a bare
    denoiser (``model`` is then ``None``)."""
    denoise, model = as_denoiser(target, name="model")
    if model is None:
        if grid is not None or (logsnrs is None):
            raise ValueError(f"{who}: a bare denoise(z, logsnr) function needs an explicit logsnrs= grid (grid "
                             "names and nfe= need a ddss_lite.Model, which knows its schedule)")
        return denoise, shape, logsnrs, None
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (check_K(shape, name="shape (a batch size)"), *model.data_shape)
    shape = chain.check_sample_shape(shape)
    if tuple(shape[1:]) != tuple(model.data_shape):
        raise ValueError(f"shape must be (B, *model.data_shape) = (B, {', '.join(map(str, model.data_shape))}), "
                         f"got {shape}")
    if logsnrs is None:
        if nfe is None:
            raise ValueError(f"{who}: give nfe= (network evaluations) or logsnrs= (a grid)")
        K = K_from_nfe(nfe)
    else:
        K = int(np.shape(logsnrs)[0]) - 1
    logsnrs = resolve_grid(model, K, logsnrs=logsnrs, grid=grid, allow_outside_range=allow_outside_range,
                           data_end=data_end)
    return denoise, shape, logsnrs, model


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler: ``sampler(model, key, shape, *, nfe= or logsnrs=, grid=None, **options)``.

    ``model`` is a :class:`ddss_lite.Model` (then ``shape`` may be a batch size, ``nfe=`` picks the
    steps and ``grid=`` a grid name of :mod:`ddss_lite.grids`, default ``model.default_grid``, and a
    given grid must lie in ``model.logsnr_range`` unless ``allow_outside_range=True``), or a bare
    ``denoise(z, logsnr)`` with an explicit ``logsnrs=``. ``sampler.nfe(K, **options)`` counts network
    evaluations, ``sampler.steps(nfe, **options)`` inverts it. A sampler with ``takes_schedule`` (the
    conjugate integrators, whose ``lam`` multiplies the schedule's time) receives ``schedule=model.schedule``."""

    name: str
    sample: Callable
    nfe: Callable
    citation: str
    data_end: Callable = lambda options: True     # options -> may the grid end at the data (+inf)?
    takes_schedule: bool = False

    @property
    def options(self) -> tuple:
        """The option names this sampler takes besides the call's own (its sample function's keywords)."""
        common = {"denoise", "key", "shape", "logsnrs", "remat", "return_trajectory", "z_init", "dtype"}
        params = inspect.signature(self.sample).parameters.values()
        return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in common)

    def check_options(self, options: dict) -> dict:
        """``options`` must name options of this sampler (:attr:`options`); returns them."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"{self.name}: unknown option(s) {unknown}; its options are {list(self.options)}")
        return options

    def steps(self, nfe: int, **options) -> int:
        """K with ``self.nfe(K, **options) == nfe`` (:func:`steps_for_nfe`)."""
        return steps_for_nfe(self.nfe, nfe, name=self.name, **self.check_options(options))

    def __call__(self, model, key, shape, *, logsnrs=None, nfe: int | None = None, grid: str | None = None,
                 allow_outside_range: bool = False, **kwargs):
        options = {k: v for k, v in kwargs.items() if k in self.options}
        denoise, shape, logsnrs, model = _prepare(
            model, key, shape, K_from_nfe=lambda n: self.steps(n, **options), nfe=nfe, logsnrs=logsnrs, grid=grid,
            allow_outside_range=allow_outside_range, data_end=self.data_end(kwargs), who=self.name)
        if nfe is not None:
            K = int(np.shape(logsnrs)[0]) - 1
            used = self.nfe(K, **_nfe_options(self.nfe, kwargs))
            if used != nfe:
                raise ValueError(f"nfe={nfe} but the grid's {K} steps cost {used} evaluations with {self.name}")
        if self.takes_schedule and model is not None:
            if kwargs.get("schedule") not in (None, model.schedule):
                raise ValueError(f"schedule: {self.name} called on a model runs in the model's schedule "
                                 f"{model.schedule!r}; got schedule={kwargs['schedule']!r}")
            kwargs["schedule"] = model.schedule
        return self.sample(denoise, key, shape, logsnrs=logsnrs, **kwargs)


@dataclasses.dataclass(frozen=True)
class BoundFamily:
    """A learnable family bound to its parameters (``RDDIM.bind(params)``): called like every
    :class:`Sampler`, ``bound(model, key, shape, *, logsnrs=None, grid=None, ...)``, with the K of its
    params; ``logsnrs`` defaults to the grid it was bound with, else the model's default grid."""

    family: type
    params: dict
    logsnrs: object = None

    @property
    def name(self) -> str:
        return self.family.name

    @property
    def K(self) -> int:
        return self.family.num_steps(self.params)

    def nfe(self, K: int | None = None, **_) -> int:
        return self.family.nfe(self.K if K is None else K)

    def __call__(self, model, key, shape, *, logsnrs=None, nfe: int | None = None, grid: str | None = None,
                 allow_outside_range: bool = False, **kwargs):
        if nfe is not None and nfe != self.nfe():
            raise ValueError(f"nfe: these {self.name} params take K = {self.K} steps ({self.nfe()} evaluations), "
                             f"got nfe={nfe}")
        if logsnrs is None and grid is None:
            logsnrs = self.logsnrs
        denoise, shape, logsnrs, _ = _prepare(
            model, key, shape, K_from_nfe=lambda n: self.K, nfe=self.nfe(), logsnrs=logsnrs, grid=grid,
            allow_outside_range=allow_outside_range, data_end="logsnr_logits" not in self.params, who=self.name)
        return self.family.sample(self.params, denoise, key, shape, logsnrs=logsnrs, **kwargs)


def _nfe_one_per_step(K: int, **_) -> int:
    return check_K(K)


SAMPLERS = {
    "ddpm": Sampler("ddpm", ddpm, _nfe_one_per_step, "Ho et al. 2020, eq. 6-7"),
    "ddim": Sampler("ddim", ddim, _nfe_one_per_step, "Song et al. 2021, eq. 12"),
    "dpm_solver_pp_2m": Sampler("dpm_solver_pp_2m", dpm_solver_pp_2m, _nfe_one_per_step,
                                "Lu et al. 2022, Algorithm 2", lambda o: o.get("lower_order_final", True)),
    "heun": Sampler("heun", heun, heun_nfe, "Karras et al. 2022, Algorithm 1", lambda o: o.get("last_euler", True)),
    "lambda_ddim": Sampler("lambda_ddim", integrators.lambda_ddim, _nfe_one_per_step,
                           "Pandey et al. 2024, conjugate integrator with B_t = lambda I (lambda-DDIM)",
                           lambda o: False, takes_schedule=True),
    "conjugate_poly": Sampler("conjugate_poly", integrators.conjugate_poly, _nfe_one_per_step,
                              "Pandey et al. 2024 (B_t = lambda I) with polynomial eps, as DEIS (Zhang & Chen 2023)",
                              lambda o: False, takes_schedule=True),
}

FAMILIES = {"rddim": RDDIM, "ggdm": GGDM}


def get(name: str) -> Sampler:
    """The sampler called ``name`` (see ``SAMPLERS``): ``get(name)(model, key, shape, nfe=...)``.
    Learnable families are bound to their parameters instead: ``get_family(name).bind(params)``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: name must be one of {sorted(SAMPLERS)} "
                         f"(learnable families {sorted(FAMILIES)} via get_family)")
    return SAMPLERS[name]


get_sampler = get
"""The former name of :func:`get` (kept for one release)."""


def get_family(name: str):
    """The learnable family called ``name`` (see ``FAMILIES``)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}: name must be one of {sorted(FAMILIES)} "
                         f"(fixed samplers {sorted(SAMPLERS)} via get_sampler)")
    return FAMILIES[name]


def nfe(name: str, K: int, **options) -> int:
    """Network evaluations of sampler or family ``name`` with K steps (e.g. ``nfe("heun", 10) == 18``)."""
    if name in FAMILIES:
        if options:
            raise ValueError(f"{name}: a family takes no options here, got {sorted(options)}")
        return FAMILIES[name].nfe(K)
    sampler = get(name)
    return sampler.nfe(K, **sampler.check_options(options))


def steps(name: str, nfe: int, **options) -> int:
    """The steps K of sampler or family ``name`` that spend exactly ``nfe`` evaluations (``steps("heun", 18) == 10``)."""
    if name in FAMILIES:
        return steps_for_nfe(FAMILIES[name].nfe, nfe, name=name)
    return get(name).steps(nfe, **options)
