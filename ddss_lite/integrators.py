"""Conjugate integrators for the probability-flow ODE of a VP diffusion (Pandey, Rudolph & Mandt 2024).

For any denoiser ``denoise(z, logsnr) -> x_hat`` and any grid ``logsnrs`` (the conventions of
:mod:`ddss_lite.samplers`: strictly increasing, step ``i`` maps ``z_i`` at ``logsnrs[i]`` to
``z_{i+1}`` at ``logsnrs[i+1]``).

Time. The paper's ``lambda`` multiplies the ODE's time, so a lambda means something only together
with a time variable. Ours is the time ``u`` of the *model's own schedule* (``schedule.t_from_logsnr``
of :mod:`ddss_lite.schedules`; the samplers receive ``model.schedule`` from the one sampler call),
``u = 1`` the noisiest end and smaller ``u`` cleaner, whatever grid is passed: every grid point
``logsnrs[i]`` has the time ``t_i = u(logsnrs[i])``. A lambda tuned on one model therefore means the
same thing on another model of the same schedule, and on the paper's linear VP schedule
(:class:`~ddss_lite.schedules.LinearVP`) it is the paper's lambda. Without a schedule (a bare
denoiser) the time is the book's: the cosine schedule with ends -20 and 20 (:data:`BOOK_SCHEDULE`,
:func:`cosine_time`), where ``alpha_u = cos(a u + b)``, ``sigma_u = sin(a u + b)`` and
``rho_u = sigma_u / alpha_u = tan(a u + b) = exp(-logsnr / 2)``. On a discrete schedule
(:class:`~ddss_lite.schedules.DiscreteVP`) ``u = (n + 1) / T`` of the fractional timestep ``n``, the
time of DPM-Solver's discrete wrapper. To keep the two lambdas apart, the paper's lambda is ``lam``
here and the log-SNR is ``logsnr``.

The conjugate ODE. With ``eps_hat = (z - alpha x_hat) / sigma``, the probability-flow ODE is
``d(z / alpha) = eps_hat d rho`` (DDIM is Euler in these variables, exact where eps_hat is constant).
The conjugate transform with ``B_u = lam I`` (the paper's ``A_t = exp(int_0^t B_s - F_s ds)``, where
``exp(-int F) = 1 / alpha`` for a VP drift) is

    z_hat_u = A_u z_u,    A_u = exp(lam u) / alpha_u,
    d z_hat / du = lam z_hat + eps_hat d Phi / du,    Phi_u = int_0^u exp(lam v) d rho_v       (1)

(:func:`phi`; for ``lam = 0``, ``Phi_u = rho_u - rho_0`` in closed form, otherwise it has none).

lambda-DDIM (:func:`lambda_ddim`, the paper's lambda-DDIM; its authors' code does the same): one
step from ``t = t_i`` to ``s = t_{i+1} < t`` is Euler on the linear term of (1) and the ``Phi``
integral exact,

    z_hat_s = (1 - lam (t - s)) z_hat_t + (Phi_s - Phi_t) eps_hat_t.                           (2)

At ``lam = 0`` this is ``z_s / alpha_s = z_t / alpha_t + (rho_s - rho_t) eps_hat_t``, i.e.
``z_s = alpha_s x_hat + sigma_s eps_hat``: DDIM. For ``lam != 0`` (2) is *not* the exact solution of
(1) with eps_hat frozen (that solution is DDIM for every lam: the factor ``exp(lam u)`` cancels);
lam acts only through the Euler step of ``lam z_hat``. That step's error, mapped back to z, is about
``lam (t - s)(alpha_s / alpha_t) z_t``, and ``1 / alpha_t = e^10 ~ 2.2e4`` at logsnr -20: on the
even cosine grid from -20 the first step multiplies lam by ``(1 / K) alpha_1 e^10`` (~340 at K = 10).
So the useful lam are small there: on Gaussian data (``tests/test_integrators.py``) the relative
error of the final sample is -0.144 at K = 10 for DDIM and moves by about -300 lam (0.15 at
lam = -1e-3, -1.04 at lam = 3e-3); at K = 20, lam = -1e-3 gives 0.006 against DDIM's -0.074. The
paper's linear VP schedule starts near logsnr -10 (``1 / alpha ~ 150``), where lam of order 1 fit.

The polynomial conjugate integrator of order ``r`` (:func:`conjugate_poly`, ``r`` = the polynomial
degree, 0..3) replaces the two frozen values of (2) by the Lagrange polynomials (in u) through the
last ``q + 1`` points ``t_i, t_{i-1}, ..., t_{i-q}``, ``q = min(r, i)`` (lower orders for the first
steps), and integrates them exactly:

    z_hat_s = z_hat_t - lam sum_j V_ij z_hat_{i-j} - sum_j W_ij eps_hat_{i-j},
    V_ij = int_s^t l_j(u) du,    W_ij = int_s^t l_j(u) dPhi_u = int_s^t l_j(u) e^{lam u} rho'(u) du.    (3)

``r = 0`` is (2). At ``lam = 0`` it is an Adams-Bashforth exponential integrator in the eps
parameterisation (DEIS's tAB, Zhang & Chen 2023, in cosine time); the ``lam z_hat`` term is
extrapolated with the same polynomial (``V``), so the local error is ``O(h^{r+2})`` for every lam
(with Euler on that term, as in (2), the method would be first order). Order of convergence: r + 1
from starting values accurate to ``O(h^{r+1})``; with the lower-order start (the first step is
lambda-DDIM, local error ``O(h^2)``, which later steps do not damp) the global order is
``min(r + 1, 2)`` on quasi-uniform grids, although degrees 2 and 3 keep smaller errors (on Gaussian
data, default grid, lam = 0, K = 10: relative error 0.144, 0.038, 0.0098, 0.0025 for r = 0..3).
Expanding ``z_hat`` and ``eps_hat`` turns (3)
into the GGDM vocabulary of DESIGN.md section 4, a banded linear map of the last ``r + 1`` states
and predictions:

    z_{i+1} = sum_{j=0..q} nu_ij z_{i-j} + mu_ij x_hat_{i-j}                                  (4)

with ``g_k = (alpha_s / alpha_k) e^{lam (t_k - s)}``, ``w_ij = alpha_s e^{-lam s} W_ij``:
``nu_ij = [j = 0] g_i - lam V_ij g_{i-j} - w_ij / sigma_{i-j}``, ``mu_ij = w_ij alpha_{i-j} / sigma_{i-j}``
(:func:`conjugate_coefficients`; :func:`ggdm_params` writes them as GGDM parameters). Only
``x_hat`` and ``z`` enter the chain, so nothing is divided by a small ``sigma`` at run time.

Numerics. The tables are computed once per (grid, lam, r) on the host in float64 and cast to the
working dtype. ``w_ij`` is integrated in ``y = log rho = -logsnr / 2``, where ``d rho = e^y dy`` and
``u(y) = (arctan(e^y) - b) / a`` are smooth (in u, ``rho'`` peaks within ``e^-10`` of ``u = 1``),
with Gauss-Legendre on pieces of length at most 1 in y (and ``1 / (|lam| max du/dy)`` for large
``|lam|``, so ``lam u`` changes by at most 1 a piece; ``max du/dy = 1 / (2a)`` on the cosine schedule,
measured on a fine grid on the others), 16 nodes each, with exponents combined
(``log alpha_s + y + lam (u - s)``): on the cosine schedule they agree with
``scipy.integrate.quad`` in u to ~1e-15 relative, 4e-13 on the step from u = 1, where quad's own
input ``rho(u)`` is ``a e^10`` times worse conditioned than in log-SNR (``tests/test_integrators.py``). ``V`` is a
polynomial integral (Gauss-Legendre, exact). At ``lam = 0`` the ``r = 0`` step uses DDIM's closed
form. Under ``jit`` with a traced grid (or lam) the same host function runs through
``jax.pure_callback``. Tables are cached per (grid, lam, r, schedule).

Both samplers have the signature of :mod:`ddss_lite.samplers` (``remat``, ``return_trajectory``,
``z_init``, ``dtype``) plus ``schedule`` (the time above; the sampler call passes the model's), draw ``z_0`` like every sampler there, check every ``x_hat`` for NaN/Inf,
and cost one network evaluation per step (NFE = K). They are registered in
:data:`ddss_lite.samplers.SAMPLERS` (``samplers.get("lambda_ddim")``, ``samplers.get("conjugate_poly")``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import chain, grids, schedules
from ddss_lite.models import check_model
from ddss_lite.schedules import LOGSNR_MAX, LOGSNR_MIN
from ddss_lite.validate import check_finite, check_increasing, check_K

__all__ = [
    "cosine_time",
    "schedule_time",
    "BOOK_SCHEDULE",
    "phi",
    "conjugate_weights",
    "conjugate_coefficients",
    "ggdm_params",
    "lambda_ddim",
    "conjugate_poly",
    "nfe",
    "LamSweep",
    "tune_lam",
    "ORDERS",
]

ORDERS = (0, 1, 2, 3)   # the polynomial degrees r of conjugate_poly (0: lambda-DDIM)

# The cosine schedule's constants (schedules.logsnr_cosine): logsnr(u) = -2 log tan(a u + b).
_B = float(np.arctan(np.exp(-0.5 * LOGSNR_MAX)))
_A = float(np.arctan(np.exp(-0.5 * LOGSNR_MIN))) - _B

BOOK_SCHEDULE = schedules.Cosine(LOGSNR_MIN, LOGSNR_MAX)
"""The time of the conjugate integrators when no schedule is given: the book's cosine schedule."""

_GL_NODES = 16
_GL_X, _GL_W = np.polynomial.legendre.leggauss(_GL_NODES)
_GL4_X, _GL4_W = np.polynomial.legendre.leggauss(4)     # exact for V (degree <= 3)


# --------------------------------------------------------------------------- checks


def _check_lam(lam):
    """``lam`` must be a finite real scalar (checked when concrete); returns it (a float if concrete)."""
    if not chain.is_concrete(lam):
        return lam
    a = np.asarray(lam)
    if a.ndim != 0 or a.dtype.kind not in "biuf" or a.dtype == bool:
        raise ValueError(f"lam must be a finite real scalar, got {lam!r}")
    check_finite(a.astype(np.float64), name="lam")
    return float(a)


def _check_r(r) -> int:
    return check_K(r, name="r (the polynomial degree; order r + 1)", low=min(ORDERS), high=max(ORDERS))


# --------------------------------------------------------------------------- host math (float64)


def cosine_time(logsnr):
    """The cosine-schedule time ``u(logsnr) = (arctan(exp(-logsnr / 2)) - b) / a`` in float64 NumPy
    (:func:`ddss_lite.schedules.t_from_logsnr_cosine`): 1 at logsnr -20, 0 at logsnr 20."""
    logsnr = np.asarray(logsnr, np.float64)
    return (np.arctan(np.exp(-0.5 * logsnr)) - _B) / _A


@dataclasses.dataclass(frozen=True)
class ScheduleTime:
    """The conjugate integrators' time ``u(logsnr)`` of one schedule on the host (float64), with
    ``dudy_max``, a bound on ``du/dy`` for ``y = -logsnr / 2`` (it sizes the quadrature's pieces),
    ``logsnr_max``, where ``u`` is smallest (``Phi`` starts there), and ``breaks``, the sorted ``y`` where
    ``u`` has a kink (a discrete schedule's timesteps; the quadrature puts a piece edge at each). Equal
    and hashed by ``key``, the schedule's description, so the coefficient caches hold one entry per
    schedule, not per object."""

    key: str
    u: Callable = dataclasses.field(compare=False, hash=False)
    dudy_max: float = dataclasses.field(compare=False, hash=False)
    logsnr_max: float = dataclasses.field(compare=False, hash=False)
    breaks: np.ndarray = dataclasses.field(compare=False, hash=False, default_factory=lambda: np.zeros(0))


def schedule_time(schedule=None) -> ScheduleTime:
    """The :class:`ScheduleTime` of ``schedule`` (default :data:`BOOK_SCHEDULE`). On a
    :class:`~ddss_lite.schedules.Cosine` schedule ``u`` is the closed form of :func:`cosine_time` (with
    that schedule's ends) and ``du/dy <= 1 / (2a)``; on any other, ``schedule.t_from_logsnr`` in float64
    with the log-SNR clipped to ``schedule.logsnr_range`` (grids rounded to float32 may pass an end by
    half an ulp), and ``du/dy`` measured on 4097 points of the range, with 25 % to spare."""
    schedule = BOOK_SCHEDULE if schedule is None else schedules.check_schedule(schedule)
    return _schedule_time(json.dumps(schedule.describe(), sort_keys=True), schedule)


_TIMES: dict = {}   # schedule description -> ScheduleTime (built once per schedule; read-only after)


def _schedule_time(key: str, schedule) -> ScheduleTime:
    if key in _TIMES:
        return _TIMES[key]
    lo, hi = (float(v) for v in schedule.logsnr_range)
    if isinstance(schedule, schedules.Cosine):
        b = float(np.arctan(np.exp(-0.5 * hi)))
        a = float(np.arctan(np.exp(-0.5 * lo))) - b
        u = lambda logsnr: (np.arctan(np.exp(-0.5 * np.asarray(logsnr, np.float64))) - b) / a
        dudy_max = 1.0 / (2.0 * a)
    else:
        u = lambda logsnr: np.asarray(schedule.t_from_logsnr(np.clip(np.asarray(logsnr, np.float64), lo, hi)),
                                      np.float64)
        y = np.linspace(-0.5 * hi, -0.5 * lo, 4097)
        dudy_max = 1.25 * float(np.max(np.abs(np.diff(u(-2.0 * y)) / np.diff(y))))
    table = getattr(schedule, "logsnr_table", None) if schedule.kind == "discrete" else None
    breaks = np.zeros(0) if table is None else np.sort(-0.5 * np.asarray(table, np.float64))
    _TIMES[key] = ScheduleTime(key, u, dudy_max, hi, breaks)
    return _TIMES[key]


def _log_alpha(logsnr):
    """``log alpha = log sigmoid(logsnr) / 2``, float64, no overflow."""
    return -0.5 * np.logaddexp(0.0, -np.asarray(logsnr, np.float64))


def _lagrange(u, nodes):
    """Lagrange basis through ``nodes`` at points ``u``: shape ``(len(nodes),) + u.shape``."""
    u = np.asarray(u, np.float64)
    out = []
    for j, tj in enumerate(nodes):
        lj = np.ones_like(u)
        for k, tk in enumerate(nodes):
            if k != j:
                lj = lj * (u - tk) / (tj - tk)
        out.append(lj)
    return np.stack(out)


def _rho_integral(y_lo, y_hi, f, log_scale=0.0, lam=0.0, time: ScheduleTime | None = None):
    """``int_{y_lo}^{y_hi} f(u(y)) exp(log_scale + y) dy`` for ``f: u -> (n, *u.shape)``, i.e. the
    integral of ``f(u) e^{log_scale} d rho`` between ``rho = e^y_lo`` and ``e^y_hi`` (signed), ``u`` the
    time of ``time`` (default the book's).

    Gauss-Legendre, ``_GL_NODES`` nodes on each of ``ceil(|y_hi - y_lo| / L)`` equal pieces, with
    ``L = min(1, 1 / (|lam| max du/dy))`` (``lam u`` then changes by at most 1 per piece), the pieces
    split again at the time's kinks (``time.breaks``).
    """
    time = schedule_time() if time is None else time
    if y_hi == y_lo:
        return np.zeros(len(f(np.zeros(1))))
    length = min(1.0, 1.0 / (abs(lam) * time.dudy_max)) if lam else 1.0
    n = max(1, int(np.ceil(abs(y_hi - y_lo) / length)))
    edges = np.linspace(y_lo, y_hi, n + 1)
    inside = time.breaks[(time.breaks > min(y_lo, y_hi)) & (time.breaks < max(y_lo, y_hi))]
    if inside.size:
        edges = np.sort(np.concatenate([edges, inside]))
        edges = edges if y_hi > y_lo else edges[::-1]
    half = 0.5 * np.diff(edges)[:, None]                               # (n, 1)
    y = 0.5 * (edges[:-1] + edges[1:])[:, None] + half * _GL_X[None]   # (n, nodes)
    u = time.u(-2.0 * y)
    vals = f(u) * np.exp(log_scale + y)[None]                          # (m, n, nodes)
    return np.sum(vals * (half * _GL_W[None])[None], axis=(1, 2))


def phi(logsnrs, *, lam=0.0, schedule=None):
    """``Phi(t_i) = int_{u_0}^{t_i} exp(lam u) d rho_u`` at every grid point (float64 NumPy, shape (K+1,)).

    ``t_i`` is the time of ``logsnrs[i]`` on ``schedule`` (default the book's cosine one, module notes);
    ``u_0`` is the time of the schedule's highest log-SNR (20 on the book's: ``rho = e^-10``). Closed form
    ``rho(t_i) - rho(u_0)`` at ``lam = 0``, quadrature in ``y = log rho`` otherwise (see the module notes).
    """
    lam = _check_lam(lam)
    time = schedule_time(schedule)
    logsnrs = np.asarray(logsnrs, np.float64)
    y = -0.5 * logsnrs
    y0 = -0.5 * time.logsnr_max
    if lam == 0.0:
        return np.exp(y) - np.exp(y0)
    f = lambda u: np.exp(lam * u)[None]
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.array([_rho_integral(y0, yi, f, lam=lam, time=time)[0] for yi in y])
    _check_overflow(lam, out)
    return out


@functools.lru_cache(maxsize=64)
def _weights_cached(grid_bytes: bytes, lam: float, r: int, time: ScheduleTime):
    with np.errstate(over="ignore", invalid="ignore"):
        return _weights(np.frombuffer(grid_bytes, np.float64), lam, r, time)


def _weights(logsnrs, lam: float, r: int, time: ScheduleTime):
    K = logsnrs.shape[0] - 1
    t = time.u(logsnrs)
    log_alpha = _log_alpha(logsnrs)
    W = np.zeros((K, r + 1))      # w_ij = alpha_s e^{-lam s} W_ij = alpha_s int_s^t l_j(u) e^{lam (u - s)} d rho
    V = np.zeros((K, r + 1))      # V_ij = int_s^t l_j(u) du
    q = np.minimum(np.arange(K), r)
    for i in range(K):
        nodes = t[i - np.arange(q[i] + 1)]
        s, ti = t[i + 1], t[i]
        basis = lambda u, nodes=nodes, s=s: _lagrange(u, nodes) * np.exp(lam * (u - s))[None]
        W[i, :q[i] + 1] = _rho_integral(-0.5 * logsnrs[i + 1], -0.5 * logsnrs[i], basis,
                                        log_scale=log_alpha[i + 1], lam=lam, time=time)
        half = 0.5 * (ti - s)
        V[i, :q[i] + 1] = _lagrange(0.5 * (ti + s) + half * _GL4_X, nodes) @ _GL4_W * half
    for a in (t, W, V, q):
        a.setflags(write=False)
    return t, W, V, q


def conjugate_weights(logsnrs, *, lam=0.0, r: int = 0, schedule=None) -> dict:
    """The quadrature tables of (3) on ``logsnrs`` (float64 NumPy, read-only, cached per grid, lam, r and
    schedule; ``schedule`` gives the time, default the book's cosine one).

    Returns ``{"t": (K+1,) times on the schedule, "w": (K, r+1), "V": (K, r+1), "q": (K,) degrees}`` with
    ``w[i, j] = alpha_{i+1} int_{t_{i+1}}^{t_i} l_j(u) exp(lam (u - t_{i+1})) d rho_u`` and
    ``V[i, j] = int_{t_{i+1}}^{t_i} l_j(u) du``, ``l_j`` the Lagrange basis through
    ``t_i, ..., t_{i-q_i}``, ``q_i = min(r, i)`` (entries ``j > q_i`` are 0).
    """
    lam, r = _check_lam(lam), _check_r(r)
    logsnrs = check_increasing(np.asarray(logsnrs, np.float64), name="logsnrs")
    t, W, V, q = _weights_cached(logsnrs.tobytes(), float(lam), r, schedule_time(schedule))
    _check_overflow(lam, W)
    return {"t": t, "w": W, "V": V, "q": q}


def _check_overflow(lam, *arrays):
    if not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError(f"lam = {lam} overflows the conjugate coefficients on this grid (exp(lam u) / alpha_u "
                         "out of float64 range); use a smaller |lam|")


def _coefficients64(logsnrs, lam: float, r: int, time: ScheduleTime):
    """``(mu, nu)`` of (4), each (K, r+1), float64 NumPy, read-only (cached per grid, lam, r, time)."""
    return _coefficients_cached(np.asarray(logsnrs, np.float64).tobytes(), float(lam), r, time)


@functools.lru_cache(maxsize=64)
def _coefficients_cached(grid_bytes: bytes, lam: float, r: int, time: ScheduleTime):
    logsnrs = np.frombuffer(grid_bytes, np.float64)
    K = logsnrs.shape[0] - 1
    t, W, V, q = _weights_cached(grid_bytes, lam, r, time)
    log_alpha, log_sigma = _log_alpha(logsnrs), _log_alpha(-logsnrs)
    alpha, sigma = np.exp(log_alpha), np.exp(log_sigma)
    mu, nu = np.zeros((K, r + 1)), np.zeros((K, r + 1))
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(K):
            for j in range(q[i] + 1):
                k = i - j
                g = np.exp(log_alpha[i + 1] - log_alpha[k] + lam * (t[k] - t[i + 1]))
                nu[i, j] = (g if j == 0 else 0.0) - lam * V[i, j] * g - W[i, j] / sigma[k]
                mu[i, j] = W[i, j] * alpha[k] / sigma[k]
            if q[i] == 0 and lam == 0.0:
                # DDIM's closed form (samplers.ddim_coefficients, eta = 0): no cancellation.
                d = logsnrs[i] - logsnrs[i + 1]
                nu[i, 0] = np.exp(log_sigma[i + 1] - log_sigma[i])
                mu[i, 0] = alpha[i + 1] * -np.expm1(d) / (1.0 + np.exp(0.5 * d))
    mu.setflags(write=False)
    nu.setflags(write=False)
    return mu, nu


def conjugate_coefficients(logsnrs, *, lam=0.0, r: int = 0, schedule=None):
    """``(mu, nu)``, each (K, r+1) float64 NumPy: step i is ``z_{i+1} = sum_j nu[i, j] z_{i-j} +
    mu[i, j] x_hat_{i-j}`` (4), in the time of ``schedule`` (default the book's cosine one). ``r = 0``:
    lambda-DDIM, ``z_{i+1} = mu[i, 0] x_hat_i + nu[i, 0] z_i`` (at ``lam = 0`` DDIM's ``mu, nu`` on any
    schedule). Raises ValueError if lam overflows them on this grid."""
    lam, r = _check_lam(lam), _check_r(r)
    logsnrs = check_increasing(np.asarray(logsnrs, np.float64), name="logsnrs")
    mu, nu = _coefficients64(logsnrs, lam, r, schedule_time(schedule))
    _check_overflow(lam, mu, nu)
    return mu, nu


def ggdm_params(logsnrs, *, lam=0.0, r: int = 0, schedule=None) -> dict:
    """The polynomial conjugate integrator as GGDM parameters (``samplers.GGDM``, no noise, in the
    default float dtype): ``mu[i, i-j] = mu_ij``, ``nu[i, i-j] = nu_ij`` (a lower-triangular band),
    ``c = 0``; ``GGDM.sample(ggdm_params(g, lam=lam, r=r), ..., logsnrs=g)`` is ``conjugate_poly`` (on the
    same ``schedule``)."""
    mu, nu = conjugate_coefficients(logsnrs, lam=lam, r=r, schedule=schedule)
    K = mu.shape[0]
    full_mu, full_nu = np.zeros((K, K)), np.zeros((K, K))
    for i in range(K):
        for j in range(min(r, i) + 1):
            full_mu[i, i - j], full_nu[i, i - j] = mu[i, j], nu[i, j]
    dtype = chain.default_dtype()
    return {"mu": jnp.asarray(full_mu, dtype), "nu": jnp.asarray(full_nu, dtype), "c": jnp.zeros((K,), dtype)}


# --------------------------------------------------------------------------- samplers


def _tables(logsnrs, lam, r: int, dtype, time: ScheduleTime):
    """``(mu, nu)`` in ``dtype``: on the host directly for a concrete grid and lam, else through
    ``jax.pure_callback`` (the same float64 host computation, run when the compiled chain runs)."""
    K = logsnrs.shape[0] - 1
    if chain.is_concrete((logsnrs, lam)):
        mu, nu = _coefficients64(check_increasing(np.asarray(logsnrs, np.float64), name="logsnrs"), lam, r, time)
        _check_overflow(lam, mu, nu)
        return jnp.asarray(mu, dtype), jnp.asarray(nu, dtype)

    # Values cross the callback boundary as raw 32-bit words, bitcast on either side: JAX canonicalises
    # a callback's float64 operands and results to float32 in the thread that runs it, where the
    # thread-local ``jax.enable_x64`` context is off (measured: the grid arrived rounded to float32).
    wide = jnp.dtype(dtype).itemsize == 8
    fdtype = np.float64 if wide else np.float32

    def to_words(x):
        return jax.lax.bitcast_convert_type(jnp.asarray(x, fdtype), jnp.uint32)

    def from_words(w):
        return np.ascontiguousarray(np.asarray(w, np.uint32)).view(fdtype).reshape(np.shape(w)[:-1] if wide else
                                                                                   np.shape(w))

    def host(g_words, *lam_words):
        lam64 = float(from_words(lam_words[0])) if lam_words else lam    # a concrete lam stays a host float
        if not np.isfinite(lam64):   # named here: NaN tables would be blamed on the denoiser downstream
            raise ValueError(f"lam must be finite, got {lam64} (traced under jit)")
        mu, nu = _coefficients64(from_words(g_words).astype(np.float64), lam64, r, time)
        _check_overflow(lam64, mu, nu)
        return tuple(np.ascontiguousarray(a, fdtype).view(np.uint32).reshape(K, r + 1, -1) for a in (mu, nu))

    out = (jax.ShapeDtypeStruct((K, r + 1, 2 if wide else 1), jnp.uint32),) * 2
    operands = (to_words(logsnrs),) + (() if chain.is_concrete(lam) else (to_words(lam),))
    raw = jax.pure_callback(host, out, *operands, vmap_method="sequential")
    if wide:
        return tuple(jax.lax.bitcast_convert_type(a, dtype) for a in raw)
    return tuple(jax.lax.bitcast_convert_type(a[..., 0], jnp.float32).astype(dtype) for a in raw)


def _setup(key, shape, z_init, dtype, logsnrs, lam, r, schedule):
    lam, r = _check_lam(lam), _check_r(r)
    time = schedule_time(schedule)
    z0, key_steps, dtype = chain.setup(key, shape, z_init, dtype)
    logsnrs = chain.check_logsnrs(logsnrs, dtype)
    mu, nu = _tables(logsnrs, lam, r, dtype, time)
    return z0, key_steps, dtype, logsnrs, mu, nu


def lambda_ddim(denoise, key, shape, *, logsnrs, lam=0.0, remat: bool = True, return_trajectory: bool = False,
                z_init=None, dtype=None, schedule=None):
    """lambda-DDIM (Pandey et al. 2024, conjugate integrator with ``B_t = lam I``): per step (2),
    ``z_hat_s = (1 - lam (t - s)) z_hat_t + (Phi_s - Phi_t) eps_hat_t`` with ``z_hat = e^{lam u} z / alpha``,
    u the time of ``schedule`` (the model's in the sampler call; default the book's cosine time, module
    notes), run as ``z_{i+1} = mu_i x_hat_i + nu_i z_i``.

    ``lam = 0`` (the default) is DDIM (:func:`ddss_lite.samplers.ddim`). First order in K for every lam.
    ``lam`` must be finite. NFE = K.
    """
    z0, key_steps, dtype, logsnrs, mu, nu = _setup(key, shape, z_init, dtype, logsnrs, lam, 0, schedule)
    return chain.markov_chain(denoise, z0, key_steps, logsnrs=logsnrs, mu=mu[:, 0], nu=nu[:, 0],
                              c=jnp.zeros_like(mu[:, 0]), stochastic=False, remat=remat,
                              return_trajectory=return_trajectory)


def conjugate_poly(denoise, key, shape, *, logsnrs, lam=0.0, r: int = 2, remat: bool = True,
                   return_trajectory: bool = False, z_init=None, dtype=None, schedule=None):
    """Polynomial (multistep) conjugate integrator of order ``r``, the polynomial degree (default 2).

    Per step (3): eps_hat and z_hat over the step are the Lagrange polynomials (in the time u of
    ``schedule``, as in :func:`lambda_ddim`)
    through the last ``min(r, i) + 1`` evaluations, integrated exactly against ``dPhi`` and ``du``
    (weights precomputed per grid in float64); run as the banded linear map (4) of the last
    ``r + 1`` states and predictions, carried through the scan. ``r = 0`` is :func:`lambda_ddim`;
    ``lam = 0`` an exponential Adams-Bashforth integrator in eps (DEIS-style). Local error
    ``O(h^{r+2})``: order ``r + 1`` from accurate starting values, ``min(r + 1, 2)`` with the lower-order
    first steps used here (module notes). ``r`` in {0, 1, 2, 3}, ``lam`` finite. NFE = K.
    """
    r = _check_r(r)
    if r == 0:
        return lambda_ddim(denoise, key, shape, logsnrs=logsnrs, lam=lam, remat=remat,
                           return_trajectory=return_trajectory, z_init=z_init, dtype=dtype, schedule=schedule)
    z0, key_steps, dtype, logsnrs, mu, nu = _setup(key, shape, z_init, dtype, logsnrs, lam, r, schedule)

    def step(carry, p, key_i):
        z_hist, x_hist, z = carry                   # z_hist[j-1] = z_{i-j}, x_hist[j-1] = x_hat_{i-j}
        logsnr_i, mu_i, nu_i = p
        x_hat = chain.call_denoiser(denoise, z, logsnr_i)
        z_next = nu_i[0] * z + mu_i[0] * x_hat
        for j in range(1, r + 1):                   # elementwise (no matmul: no reduced-precision dot)
            z_next = z_next + nu_i[j] * z_hist[j - 1] + mu_i[j] * x_hist[j - 1]
        z_hist = jnp.concatenate([z[None], z_hist[:-1]], axis=0)
        x_hist = jnp.concatenate([x_hat[None], x_hist[:-1]], axis=0)
        return (z_hist, x_hist, z_next), z_next, x_hat

    hist0 = jnp.zeros((r,) + z0.shape, z0.dtype)
    return chain.run_steps(step, z0, (logsnrs[:-1], mu, nu), key_steps, carry=(hist0, hist0, z0), remat=remat,
                           return_trajectory=return_trajectory)


def nfe(K: int, **_) -> int:
    """Network evaluations of either sampler with K steps: K."""
    return check_K(K)


# --------------------------------------------------------------------------- choosing lam


@dataclasses.dataclass(frozen=True)
class LamSweep:
    """The result of :func:`tune_lam`: every ``lam`` tried with its score, the chosen one, and the
    up-front cost: ``n`` samples at ``nfe`` evaluations for each of the ``lams``."""

    nfe: int
    n: int
    lams: tuple
    scores: dict          # lam -> score(x) as returned
    best: float

    @property
    def cost_nfe(self) -> int:
        """Network evaluations (of one sample each) the sweep spent: ``n * nfe * len(lams)``."""
        return self.n * self.nfe * len(self.lams)


def tune_lam(model, nfe: int, lams, *, score: Callable, key, n: int, select: Callable | None = None,
             r: int = 0, grid: str | None = None, on_samples: Callable | None = None) -> LamSweep:
    """Choose ``lam`` for the conjugate integrator of degree ``r`` (0: lambda-DDIM) on ``model`` at
    ``nfe`` network evaluations: run it at every value of ``lams`` from the same noise (``key``, ``n``
    samples, one compiled program with ``lam`` traced) on the model's grid (``grid``, default the
    model's for these samplers), score each set with ``score(x)``, and take the ``lam`` whose
    ``select(score)`` is lowest (default: the score itself, which must then be a number). Ties go to
    the first in ``lams``. ``on_samples(lam, x)``, if given, sees every set. The sweep's cost,
    ``n * nfe * len(lams)`` evaluations (:attr:`LamSweep.cost_nfe`), is what the chosen ``lam``
    costs up front; score on features or data the final evaluation does not use (the book uses the
    optimisation classifier and its own noise)."""
    model = check_model(model)
    r = _check_r(r)
    nfe, n = check_K(nfe, name="nfe"), check_K(n, name="n")
    if not callable(score):
        raise TypeError(f"score must be a function x -> number or dict, got {type(score).__name__}")
    lams = tuple(_check_lam(lam) for lam in np.atleast_1d(np.asarray(lams, dtype=object)).tolist())
    if not lams:
        raise ValueError("lams must hold at least one value")
    select = (lambda v: v) if select is None else select
    g = grids.for_model(model, nfe, grid=grid, data_end=False)
    shape = (n, *model.data_shape)
    fn = conjugate_poly if r else lambda *a, r, **k: lambda_ddim(*a, **k)
    run = jax.jit(lambda lam: fn(model.denoise, key, shape, logsnrs=g, lam=lam, r=r, schedule=model.schedule))
    scores = {}
    for lam in lams:
        x = np.asarray(run(jnp.float32(lam)))
        if on_samples is not None:
            on_samples(lam, x)
        scores[lam] = score(x)
    values = {lam: float(select(v)) for lam, v in scores.items()}
    bad = [lam for lam, v in values.items() if not np.isfinite(v)]
    if bad:
        raise ValueError(f"score: not finite at lam = {bad} (select(score(x)) must be a finite number)")
    best = min(lams, key=lambda lam: values[lam])
    return LamSweep(nfe, n, lams, scores, best)
