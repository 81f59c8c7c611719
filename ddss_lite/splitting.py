"""Samplers for PSLD (:mod:`ddss_lite.psld`): Euler, Euler-Maruyama, SSCS, and splitting integrators.

Pandey, Rudolph & Mandt 2024 (arXiv 2310.07894, "Efficient Integrators for Diffusion Generative
Models") and Pandey et al. 2024 (arXiv 2402.07211) describe splitting integrators for PSLD in words
and tables; no public code contains them. **The update orders below, the evaluation times and what
the knobs ``lam`` and ``lambda_s`` act on are our derivation from those descriptions**, checked on
Gaussian data where PSLD's score is closed form (``tests/test_splitting.py``). The baselines
(Euler-Maruyama, SSCS, the final "denoise" step, the grids) follow the public PSLD code
(github mandt-lab/PSLD, ``main/samplers/sde.py`` and ``models/wrapper.py``).

**Time and grids.** Sampling runs from ``t_0 = 1`` down to ``t_K = eps`` (``process.eps``, 1e-3):
``grid="uniform"``: ``t_i = 1 - (1 - eps) i/K``; ``"quadratic"`` (the default): ``t_i = eps + (1 - eps)(1 - i/K)^2``
(denser near the data). Step ``n`` goes from ``t_n`` to ``t_{n+1} = t_n - h_n``; ``t_{n+1/2}`` is its
midpoint. With ``denoise=True`` (the default, as in PSLD's evaluation) one more Euler step of the
sampler's drift goes from ``eps`` to 0 with the score at ``eps``, costing one network evaluation.

**The dynamics**, per pixel with ``z = (x, m)`` and ``s = -L_t^{-T} eps_theta(z, t)``, in reverse time
(``d tau = -dt``; ``F, D, Sigma_inf`` from :class:`~ddss_lite.psld.PSLD`):

    PF-ODE       dx/dtau = (beta/2)(Gamma x - M^-1 m + Gamma s_x),   dm/dtau = (beta/2)(x + nu m + M nu s_m)
    reverse SDE  dz/dtau = -beta F z + beta D s + sqrt(beta) G dw,   G G^T = D

**One engine.** Every sampler is a fixed *program* of sub-updates per step. Sub-update ``k`` may call
the network (``"fresh"``: ``eps_hat = eps_theta(z, t_eval)`` at the current state), reuse the step's
latest ``eps_hat`` (``"reuse"``), or use none; it then writes the rows ``"x"``, ``"m"`` or ``"xm"`` of

    z <- P_k z + Q_k eps_hat + R_k xi_k,          xi_k ~ N(0, I) drawn per step and sub-update,

with per-step 2x2 matrices acting on each pixel's ``(x, m)`` (resp. ``(eps_x, eps_m)``, ``(xi_x, xi_m)``).
All coefficients are computed on the host in float64 and cast to the working dtype. An *Euler
sub-update* of a sub-flow ``dz/dt = beta F_sub z + c beta D_sub L^{-T} eps`` over ``[t_a -> t_b]``
(``h = t_a - t_b``, coefficient at the time ``t_e`` of the ``eps_hat`` it uses) has
``P = I - h beta F_sub``, ``Q = -h c beta D_sub L_{t_e}^{-T}`` (``c = 1/2`` for the PF-ODE, 1 for the SDE);
the position sub-flow has ``F_x = [[F_xx, F_xm], [0, 0]]``, ``D_x = diag(Gamma, 0)``, the momentum
sub-flow ``F_m = [[0, 0], [F_mx, F_mm]]``, ``D_m = diag(0, M nu)``.

**Evaluation times (ours).** A step's first network call is at ``t_n``; a later *fresh* call of a
naive scheme is at ``t_{n+1/2}`` (its state lies between the grid times). Measured on Gaussian data:
evaluating at the step's end ``t_{n+1}`` puts the uniform grid's last call at ``t = eps``, where the
momentum score's coefficient (rate ~200 per unit time) makes the explicit sub-update unstable: NSE's
relative error at K = 10 is 12 with the call at ``t_{n+1}``, 0.34 at ``t_{n+1/2}``.

**Conjugate sub-updates** (``cse``, ``cvv``, ``conjugate_euler``; Pandey et al. 2024, section 3,
"conjugate integrators"). For a sub-flow with matrices ``(F_sub, D_sub)`` and a constant 2x2 ``B``,
the transform ``z_hat = A_t z``, ``A_t = expm(t (B - beta F_sub))``, turns it into
``dz_hat/dt = A B A^-1 z_hat + Phi'(t) eps`` with ``Phi'(t) = (beta/2) A_t D_sub L_t^{-T}``; one Euler step
in ``z_hat`` from ``t_a`` to ``t_b`` with the ``eps``-integral done exactly, mapped back, is

    P = expm(h K) (I - h B),     Q = -int_{t_b}^{t_a} (beta/2) expm((u - t_b) K) D_sub L_u^{-T} du,     K = B - beta F_sub

(the integral by Gauss-Legendre quadrature in ``w = sqrt(u)``, which removes the ``u^{-1/2}`` of
``L_u^{-T}`` near 0). ``B = 0`` integrates the sub-flow's linear part and the ``eps``-coefficient exactly
(an exponential integrator); ``B = beta F_sub`` gives back the Euler sub-update up to the exact
``eps``-integral. ``B = lam I`` or ``lam [[1, 1], [1, 1]]`` (the paper's lambda-DDIM-I / -II choices).

The samplers (``nfe`` per step; ``+1`` for ``denoise``):

* ``euler`` (1): Euler on the PF-ODE, ``z <- z + h v(z, t_n)``. First order.
* ``conjugate_euler`` (1): the conjugate integrator on the whole PF-ODE (``F_sub = F``, ``D_sub = D``):
  lambda-DDIM for PSLD. First order.
* ``em`` (1): Euler-Maruyama on the reverse SDE (PSLD's ``em_sde``).
* ``sscs`` (1): PSLD's ``sscs_sde``: the exact OU flow of the linear part
  ``dz/dtau = -beta (F + D Sigma_inf^-1) z + sqrt(beta) G dw`` over h/2 (Gaussian, stationary
  ``Sigma_inf``; mean and covariance in closed form, critically damped), an Euler step of the
  score part ``dz/dtau = beta D (s + Sigma_inf^-1 z)`` over h with the network at ``t_n`` (as in the
  public code), the OU flow over h/2 again.
* ``nse`` (2), naive symplectic Euler: ``x`` Euler over h with ``eps(x_n, m_n, t_n)``, then ``m`` Euler over
  h at the new ``x`` with a fresh ``eps(x_{n+1}, m_n, t_{n+1/2})``.
* ``rse`` (1), reduced symplectic Euler: the same updates, both with ``eps(x_n, m_n, t_n)`` (the momentum
  update keeps the new ``x`` in its linear part).
* ``nvv`` (3), naive velocity Verlet: ``m`` over h/2 with ``eps(x_n, m_n, t_n)``; ``x`` over h with
  ``eps(x_n, m_{n+1/2}, t_{n+1/2})``; ``m`` over h/2 with ``eps(x_{n+1}, m_{n+1/2}, t_{n+1/2})``.
* ``rvv`` (1), reduced velocity Verlet: the same three updates, all with ``eps(x_n, m_n, t_n)``.
* ``cse`` / ``cvv`` (1; naive: 2 / 3 with ``reduced=False``): conjugate splitting, SE / VV whose
  *position* sub-updates are conjugate sub-updates (the transform "along the position coordinates";
  ``conjugate_momentum=True`` also conjugates the momentum sub-updates), ``B = lam I`` (``B="I"``) or
  ``lam [[1, 1], [1, 1]]`` (``B="ones"``, the default). ``lam = 0`` integrates the position sub-flow
  exactly.
* ``oba`` (2) / ``roba`` (1), naive / reduced OBA (stochastic). With the noise-scale knob
  ``lambda_s`` on the position noise, the reverse-time SDE family with the same marginals
  ``dx = [(beta/2)(Gamma x - M^-1 m) + (1 + lambda_s^2)/2 beta Gamma s_x] dtau + lambda_s sqrt(beta Gamma) dw``
  (``lambda_s = 1``: the reverse SDE; 0: the PF-ODE in x) is split as
  O: exact OU ``dx = -lambda_s^2 (beta/2) Gamma x dtau + lambda_s sqrt(beta Gamma) dw``,
  ``dm = -(beta/2) nu m dtau + sqrt(beta M nu) dw`` (stationary ``Sigma_inf``);
  B: ``m <- m + h [(beta/2) x + beta M nu (s_m + m/M)]``;
  A: ``x <- x + h [-(beta/2) M^-1 m + (1 + lambda_s^2)/2 beta Gamma (s_x + x)]``,
  in the order O, B, A. Naive: the network at the states before B (``t_n``) and before A
  (``t_{n+1/2}``); reduced: once, before B. Weak first order.

**Order.** Every sampler here is first order (strong for the deterministic ones, weak for the
stochastic ones): each sub-update is an Euler or exponential-Euler step with the network output frozen
over (part of) a step, and PSLD's PF-ODE is not separable (the position update depends on x through
``Gamma (x + s_x)``, the momentum update on m through ``nu m + M nu s_m``), so the velocity-Verlet
composition does not gain the second order it has for separable Hamiltonians. ``Sampler.order``
records it; ``tests/test_splitting.py`` measures it.

Randomness as in :mod:`ddss_lite.chain`: ``key_prior, key_steps = split(key)``; the prior
``z_0 ~ N(0, Sigma_inf)`` from ``key_prior`` (rows via ``fold_in``); sub-update ``k`` of step ``n``
draws ``xi`` from ``fold_in(fold_in(key_steps, n), k)``.

**The call.** ``get(name)(model, key, shape, *, nfe=None, num_steps=None, grid="quadratic",
denoise=True, remat=True, return_trajectory=False, z_init=None, dtype=None, **options)``, the call
shape of :mod:`ddss_lite.samplers` as far as PSLD allows. ``model`` is a trained
:class:`ddss_lite.psld.PSLDModel` (the process and ``eps_theta`` come from it; ``process=`` may be
passed only as that same object); ``shape`` is the *data* shape ``(B, *model.data_shape)`` (C channels,
not the state's 2C) or just the batch size ``B``. Exactly one of ``nfe=`` (a budget of network
evaluations: the most steps whose evaluations, the final denoising step included, fit within it,
:func:`steps_for_nfe`) and ``num_steps=`` (K) is given. Returns the x-part (B, ..., C) of the final
state, and with ``return_trajectory`` also the states ``(K + 1 [+ 1], B, ..., 2C)`` at ``t_0 .. t_K``
(and at 0 after the denoise step). The former call ``sampler(eps_fn, key, shape, *, process=,
num_steps=, ...)`` with a bare ``eps_fn(z, t)`` on states (B, ..., 2C), an explicit ``process`` and
a tuple data shape still works (kept for one release); ``nfe=`` works there too.

``grid`` defaults to ``"quadratic"`` everywhere (direct calls, :func:`model_samples`, chapter 7 and
:func:`time_grid`); ``"uniform"`` is there when asked for by name. ``nfe(name, num_steps, **options)``
counts network calls exactly; ``steps_for_nfe(name, nfe)`` (= ``Sampler.steps``, the one place that
converts a budget into steps) is the most steps within a budget. Options (``lam``, ``B``,
``reduced``, ``conjugate_momentum``, ``lambda_s``) and ``nfe``/``num_steps``/``grid`` must be Python
values: the coefficients are computed on the host when the sampler is traced (under ``jax.jit`` mark
them static; a new value re-traces).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import chain, psld
from ddss_lite.psld import PSLD
from ddss_lite.validate import check_choice, check_K

__all__ = [
    "GRIDS",
    "time_grid",
    "expm2",
    "conjugate_coefficients",
    "Sub",
    "DEFAULT_GRID",
    "Sampler",
    "SAMPLERS",
    "get",
    "get_sampler",
    "sample",
    "nfe",
    "steps_for_nfe",
    "model_samples",
]

GRIDS = ("uniform", "quadratic")
DEFAULT_GRID = "quadratic"
"""The one default grid of every PSLD sampler call, :func:`model_samples` and :func:`time_grid`."""


def time_grid(process: PSLD, num_steps: int, kind: str = DEFAULT_GRID) -> np.ndarray:
    """The (K+1,) float64 times ``1 = t_0 > ... > t_K = eps`` on grid ``kind`` (``"quadratic"``, the
    default, or ``"uniform"``; module docstring)."""
    K = check_K(num_steps, name="num_steps")
    check_choice(kind, GRIDS, name="grid")
    i = np.arange(K + 1, dtype=np.float64) / K
    eps = process.eps
    ts = 1.0 - (1.0 - eps) * i if kind == "uniform" else eps + (1.0 - eps) * (1.0 - i) ** 2
    ts[0], ts[-1] = 1.0, eps
    return ts


# --------------------------------------------------------------------------- 2x2 algebra (host, float64)


def expm2(K2, u) -> np.ndarray:
    """``expm(u K2)`` for one real 2x2 ``K2`` and an array ``u``: shape ``u.shape + (2, 2)``.

    ``K2 = tau I + N0`` with ``tau = tr(K2)/2`` and traceless ``N0``, ``N0^2 = q^2 I``,
    ``q^2 = tau^2 - det K2``: ``expm(u K2) = e^{u tau} (cosh(u q) I + u sinhc(u q) N0)``, real for
    ``q^2 < 0`` too (``q`` imaginary) and exactly ``e^{u tau}(I + u N0)`` for ``q = 0``.
    """
    K2 = np.asarray(K2, np.float64)
    u = np.asarray(u, np.float64)
    tau = 0.5 * np.trace(K2)
    N0 = K2 - tau * np.eye(2)
    q = np.sqrt(complex(tau * tau - np.linalg.det(K2)))
    x = u * q
    cosh = np.cosh(x).real
    with np.errstate(invalid="ignore", divide="ignore"):
        sinhc = np.where(x == 0, 1.0, (np.sinh(x) / np.where(x == 0, 1.0, x)).real)
    return np.exp(u * tau)[..., None, None] * (cosh[..., None, None] * np.eye(2) + (u * sinhc)[..., None, None] * N0)


def _LiT(process: PSLD, t) -> np.ndarray:
    """``L_t^{-T}`` as (..., 2, 2) float64."""
    a11, a12, a22 = psld.inv_cholesky_T(process, np.asarray(t, np.float64))
    zero = np.zeros_like(a11)
    return np.stack([np.stack([a11, a12], -1), np.stack([zero, a22], -1)], -2)


def _subflows(process: PSLD) -> dict:
    """``{"xm": (F, D), "x": (F_x, D_x), "m": (F_m, D_m)}`` (per unit beta)."""
    F, D = process.F, process.D
    return {"xm": (F, D),
            "x": (np.array([[F[0, 0], F[0, 1]], [0.0, 0.0]]), np.diag([D[0, 0], 0.0])),
            "m": (np.array([[0.0, 0.0], [F[1, 0], F[1, 1]]]), np.diag([0.0, D[1, 1]]))}


_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
_GL_PANELS = 4


def conjugate_coefficients(process: PSLD, B, t_a, t_b, *, rows: str = "xm"):
    """``(P, Q)`` of the conjugate sub-update of sub-flow ``rows`` from ``t_a`` down to ``t_b``
    (arrays (K,) -> (K, 2, 2)); formulas in the module docstring. The eps-integral uses composite
    Gauss-Legendre (4 panels x 16 nodes) in ``w = sqrt(u)``."""
    B = np.asarray(B, np.float64)
    F_sub, D_sub = _subflows(process)[rows]
    t_a, t_b = np.asarray(t_a, np.float64), np.asarray(t_b, np.float64)
    if np.any(t_b <= 0) or np.any(t_a <= t_b):
        raise ValueError("conjugate sub-updates need 0 < t_b < t_a")
    K2 = B - process.beta * F_sub
    h = t_a - t_b
    P = expm2(K2, h) @ (np.eye(2) - h[..., None, None] * B)
    wa, wb = np.sqrt(t_a), np.sqrt(t_b)
    edges = wb[..., None] + (wa - wb)[..., None] * np.linspace(0.0, 1.0, _GL_PANELS + 1)
    lo, hi = edges[..., :-1, None], edges[..., 1:, None]
    w = 0.5 * (lo + hi) + 0.5 * (hi - lo) * _GL_NODES                 # (K, panels, nodes)
    weight = 0.5 * (hi - lo) * _GL_WEIGHTS * 2.0 * w                  # du = 2 w dw
    u = w * w
    integrand = 0.5 * process.beta * expm2(K2, u - t_b[..., None, None]) @ D_sub @ _LiT(process, u)
    Q = -np.sum(integrand * weight[..., None, None], axis=(-4, -3))
    return P, Q


def _euler_coefficients(process: PSLD, rows, h, t_e, *, score_scale: float):
    """``(P, Q)`` of an Euler sub-update of sub-flow ``rows`` over ``h`` with the score at ``t_e``."""
    F_sub, D_sub = _subflows(process)[rows]
    h = np.asarray(h, np.float64)[..., None, None]
    P = np.eye(2) - h * process.beta * F_sub
    Q = -h * score_scale * process.beta * (D_sub @ _LiT(process, t_e))
    return P, Q


def _crit_expm_cov(process: PSLD, N, b):
    """For ``F' = N - (kappa/2) I`` with nilpotent ``N``: ``expm(F' b)`` and
    ``int_0^b expm(F' u) D expm(F' u)^T du`` (the OU covariance from a point), (K, 2, 2), float64."""
    b = np.asarray(b, np.float64)
    kappa, D = process.kappa, process.D
    E = np.exp(-0.5 * kappa * b)[..., None, None] * (np.eye(2) + b[..., None, None] * N)
    g0, g1, g2 = psld.g_functions(kappa * b)
    ND = N @ D + D @ N.T
    NDN = N @ D @ N.T
    cov = (D * (b * g0)[..., None, None] + ND * (b**2 * g1)[..., None, None] + NDN * (b**3 * g2)[..., None, None])
    return E, cov


def _chol2(S) -> np.ndarray:
    """Lower Cholesky factors of (..., 2, 2) symmetric positive semi-definite matrices (0 where degenerate)."""
    l11 = np.sqrt(np.maximum(S[..., 0, 0], 0.0))
    l21 = np.where(l11 > 0, S[..., 1, 0] / np.where(l11 > 0, l11, 1.0), 0.0)
    l22 = np.sqrt(np.maximum(S[..., 1, 1] - l21**2, 0.0))
    zero = np.zeros_like(l11)
    return np.stack([np.stack([l11, zero], -1), np.stack([l21, l22], -1)], -2)


# --------------------------------------------------------------------------- programs


@dataclasses.dataclass(frozen=True)
class Sub:
    """One sub-update: the rows it writes, its ``eps_hat`` (``"fresh"``, ``"reuse"`` or ``None``), noise."""

    rows: str
    eps: str | None
    noise: bool = False


@dataclasses.dataclass(frozen=True)
class _Plan:
    program: tuple
    P: np.ndarray        # (K, n_sub, 2, 2)
    Q: np.ndarray
    R: np.ndarray
    t_eval: np.ndarray   # (K, n_sub): the time passed to the network by each fresh sub-update


def _stack_subs(K, program, parts):
    """``parts[k] = (P_k, Q_k, R_k, t_k)`` (each (K, 2, 2) / (K,) or None) -> a :class:`_Plan`."""
    zeros = np.zeros((K, 2, 2))
    P = np.stack([zeros + (np.eye(2) if p[0] is None else p[0]) for p in parts], 1)
    Q = np.stack([zeros if p[1] is None else zeros + p[1] for p in parts], 1)
    R = np.stack([zeros if p[2] is None else zeros + p[2] for p in parts], 1)
    T = np.stack([np.zeros(K) if p[3] is None else np.zeros(K) + p[3] for p in parts], 1)
    return _Plan(tuple(program), P, Q, R, T)


def _check_plan(plan: _Plan, name: str, options: dict, dtype) -> None:
    """The step coefficients must be finite in the working dtype: options that overflow them (a large
    ``|lam|``) are named here, not later as a non-finite ``eps_hat`` blamed on the network."""
    limit = np.finfo(np.dtype(dtype) if dtype is not None else chain.default_dtype()).max
    with np.errstate(invalid="ignore"):
        ok = all(np.all(np.isfinite(a) & (np.abs(a) <= limit)) for a in (plan.P, plan.Q, plan.R))
    if not ok:
        raise ValueError(f"sampler {name!r}: the options {options} overflow its step coefficients on this grid "
                         "(beyond the working dtype's range); use a smaller |lam|")


def _host_number(value, name: str) -> float:
    """A Python/NumPy number (the coefficients are computed on the host when the sampler is traced)."""
    if isinstance(value, bool) or not chain.is_concrete(value) or np.ndim(value) != 0:
        raise ValueError(f"{name} must be a Python number (a static option: under jax.jit mark it static), "
                         f"got {value!r}")
    return float(value)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _B_matrix(B: str, lam) -> np.ndarray:
    check_choice(B, ("I", "ones"), name="B")
    lam = _host_number(lam, "lam")
    if not math.isfinite(lam):
        raise ValueError(f"lam must be finite, got {lam}")
    return lam * (np.eye(2) if B == "I" else np.ones((2, 2)))


def _plan_euler(process, ts, **_):
    t, s = ts[:-1], ts[1:]
    P, Q = _euler_coefficients(process, "xm", t - s, t, score_scale=0.5)
    return _stack_subs(len(t), [Sub("xm", "fresh")], [(P, Q, None, t)])


def _plan_conjugate_euler(process, ts, *, lam=0.0, B="ones", **_):
    t, s = ts[:-1], ts[1:]
    P, Q = conjugate_coefficients(process, _B_matrix(B, lam), t, s, rows="xm")
    return _stack_subs(len(t), [Sub("xm", "fresh")], [(P, Q, None, t)])


def _plan_em(process, ts, **_):
    t, s = ts[:-1], ts[1:]
    h = t - s
    P, Q = _euler_coefficients(process, "xm", h, t, score_scale=1.0)
    R = np.sqrt(h * process.beta)[:, None, None] * np.diag(np.sqrt(np.diag(process.D)))
    return _stack_subs(len(t), [Sub("xm", "fresh", noise=True)], [(P, Q, R, t)])


def _plan_sscs(process, ts, **_):
    t, s = ts[:-1], ts[1:]
    h = t - s
    # OU part dz/dtau = beta F' z + sqrt(beta) G dw, F' = -(F + D Sigma_inf^-1): F with the momentum
    # coupling flipped, critically damped too (N' = F' + kappa/2 I nilpotent).
    F_ou = -(process.F + process.D @ np.linalg.inv(process.Sigma_inf))
    N_ou = F_ou + 0.5 * process.kappa * np.eye(2)
    E, cov = _crit_expm_cov(process, N_ou, 0.5 * h * process.beta)
    R = _chol2(cov)
    P_s = np.eye(2) + (h * process.beta)[:, None, None] * (process.D @ np.linalg.inv(process.Sigma_inf))
    Q_s = -(h * process.beta)[:, None, None] * (process.D @ _LiT(process, t))
    program = [Sub("xm", None, noise=True), Sub("xm", "fresh"), Sub("xm", None, noise=True)]
    return _stack_subs(len(t), program, [(E, None, R, None), (P_s, Q_s, None, t), (E, None, R, None)])


def _plan_split(process, ts, *, order: str, reduced: bool, conj_x=None, conj_m=None):
    """SE (``order="se"``: x over h, then m over h) or VV (``"vv"``: m h/2, x h, m h/2). ``conj_x`` /
    ``conj_m``: a 2x2 B for conjugate position / momentum sub-updates, or None for Euler."""
    t, s = ts[:-1], ts[1:]
    mid = 0.5 * (t + s)
    segs = [("x", t, s)] if order == "se" else [("m", t, mid), ("x", t, s), ("m", mid, s)]
    if order == "se":
        segs.append(("m", t, s))
    program, parts = [], []
    for k, (rows, a, b) in enumerate(segs):
        fresh = k == 0 or not reduced
        t_e = t if k == 0 else (mid if fresh else t)
        B = conj_x if rows == "x" else conj_m
        if B is None:
            P, Q = _euler_coefficients(process, rows, a - b, t_e, score_scale=0.5)
        else:
            P, Q = conjugate_coefficients(process, B, a, b, rows=rows)
        program.append(Sub(rows, "fresh" if fresh else "reuse"))
        parts.append((P, Q, None, t_e))
    return _stack_subs(len(t), program, parts)


def _plan_conj_split(process, ts, *, order, lam=0.0, B="ones", reduced=True, conjugate_momentum=False, **_):
    Bm = _B_matrix(B, lam)
    reduced = _check_bool(reduced, "reduced")
    conjugate_momentum = _check_bool(conjugate_momentum, "conjugate_momentum")
    return _plan_split(process, ts, order=order, reduced=reduced, conj_x=Bm, conj_m=Bm if conjugate_momentum else None)


def _check_lambda_s(lambda_s):
    lambda_s = _host_number(lambda_s, "lambda_s")
    if not math.isfinite(lambda_s) or lambda_s < 0:
        raise ValueError(f"lambda_s (position noise scale) must be a finite number >= 0, got {lambda_s}")
    return lambda_s


def _plan_oba(process, ts, *, reduced: bool, lambda_s=1.0, **_):
    lambda_s = _check_lambda_s(lambda_s)
    p = process
    t, s = ts[:-1], ts[1:]
    h = t - s
    mid = 0.5 * (t + s)
    bh = p.beta * h
    zero = np.zeros_like(h)
    one = np.ones_like(h)
    # O: exact OU of dx = -l^2 (beta/2) Gamma x dtau + l sqrt(beta Gamma) dw, dm = -(beta/2) nu m dtau + sqrt(beta M nu) dw.
    P_o = np.stack([np.stack([np.exp(-0.5 * lambda_s**2 * p.Gamma * bh), zero], -1),
                    np.stack([zero, np.exp(-0.5 * p.nu * bh)], -1)], -2)
    R_o = np.stack([np.stack([np.sqrt(-np.expm1(-lambda_s**2 * p.Gamma * bh)), zero], -1),
                    np.stack([zero, np.sqrt(-p.M * np.expm1(-p.nu * bh))], -1)], -2)
    # B: m <- m + h[(beta/2) x + beta M nu (s_m + m/M)],  s_m = -a22 eps_m.
    t_a = mid if not reduced else t
    LiT_b, LiT_a = _LiT(p, t), _LiT(p, t_a)
    P_b = np.stack([np.stack([one, zero], -1), np.stack([0.5 * bh, 1 + p.nu * bh], -1)], -2)
    Q_b = -(bh * p.M * p.nu)[:, None, None] * np.array([[0.0, 0.0], [0.0, 1.0]]) * LiT_b
    # A: x <- x + h[-(beta/2) M^-1 m + c beta Gamma (s_x + x)],  c = (1 + l^2)/2,  s_x = -(a11 eps_x + a12 eps_m).
    c = 0.5 * (1.0 + lambda_s**2)
    P_a = np.stack([np.stack([1 + c * p.Gamma * bh, -0.5 * bh / p.M], -1), np.stack([zero, one], -1)], -2)
    Q_a = -(c * p.Gamma * bh)[:, None, None] * np.array([[1.0, 1.0], [0.0, 0.0]]) * LiT_a
    program = [Sub("xm", None, noise=True), Sub("m", "fresh"), Sub("x", "reuse" if reduced else "fresh")]
    return _stack_subs(len(t), program, [(P_o, None, R_o, None), (P_b, Q_b, None, t), (P_a, Q_a, None, t_a)])


# --------------------------------------------------------------------------- the chain


def _apply(Mat, a, b):
    """Per-pixel 2x2 ``Mat`` (2, 2) applied to the pair ``(a, b)``."""
    return Mat[0, 0] * a + Mat[0, 1] * b, Mat[1, 0] * a + Mat[1, 1] * b


def _call_eps(eps_fn, z, t):
    eps_hat = eps_fn(z, t)
    if jnp.shape(eps_hat) != z.shape:
        raise ValueError(f"eps_fn(z, t) must return eps_hat of the PSLD state's shape {z.shape} (2C channels: "
                         f"x and m), got {jnp.shape(eps_hat)}; a PSLD network has 2C channels in and out")
    return jnp.asarray(eps_hat, z.dtype)


def _run_sub(sub, z, eps_hat, P, Q, R, key_k):
    x, m = psld.split(z)
    nx, nm = _apply(P, x, m)
    if sub.eps is not None:
        ex, em = psld.split(eps_hat)
        qx, qm = _apply(Q, ex, em)
        nx, nm = nx + qx, nm + qm
    if sub.noise:
        xi_x, xi_m = psld.split(chain.normal_rows(key_k, z.shape, z.dtype))
        rx, rm = _apply(R, xi_x, xi_m)
        nx, nm = nx + rx, nm + rm
    if sub.rows == "x":
        nm = m
    elif sub.rows == "m":
        nx = x
    return psld.stack(nx, nm)


def _chain(eps_fn, z0, key_steps, plan: _Plan, *, remat, return_trajectory):
    dtype = z0.dtype
    per_step = (jnp.asarray(plan.P, dtype), jnp.asarray(plan.Q, dtype), jnp.asarray(plan.R, dtype),
                jnp.asarray(plan.t_eval, dtype))

    def step(z, p, key_i):
        P, Q, R, T = p
        eps_hat = None
        ok = jnp.array(True)
        for k, sub in enumerate(plan.program):
            if sub.eps == "fresh":
                eps_hat = _call_eps(eps_fn, z, T[k])
                ok = ok & chain.all_finite(eps_hat)
            elif sub.eps == "reuse" and eps_hat is None:
                raise ValueError("a sub-update reuses eps_hat before any network call in its step")
            z = _run_sub(sub, z, eps_hat, P[k], Q[k], R[k], jax.random.fold_in(key_i, k))
        return z, (z if return_trajectory else None, ok)

    z, (ys, ok) = chain.scan_chain(step, z0, per_step, key=key_steps, remat=remat)
    chain.raise_if_nonfinite(ok, what="eps_fn's eps_hat")
    return z, (chain.with_start(z0, ys) if return_trajectory else None)


def _denoise(eps_fn, z, process: PSLD, *, stochastic: bool):
    """One Euler step of the drift (PF-ODE, or the reverse SDE's for stochastic samplers, no noise)
    from ``eps`` to 0 with the score at ``eps`` (PSLD's ``denoising_fn``)."""
    t = process.eps
    P, Q = _euler_coefficients(process, "xm", t, t, score_scale=1.0 if stochastic else 0.5)
    eps_hat = _call_eps(eps_fn, z, jnp.asarray(t, z.dtype))
    chain.raise_if_nonfinite(chain.all_finite(eps_hat)[None], what="eps_fn's eps_hat (denoise step)")
    sub = Sub("xm", "fresh")
    return _run_sub(sub, z, eps_hat, jnp.asarray(P, z.dtype), jnp.asarray(Q, z.dtype), None, None)


def _setup(key, shape, process, z_init, dtype):
    """``(z_0, key_steps)`` through :func:`ddss_lite.chain.setup` on the state shape (B, ..., 2C); the
    prior draw's momentum half is scaled by ``sqrt(M)`` (so ``z_0`` equals :func:`psld.prior_sample`)."""
    if not isinstance(process, PSLD):
        raise ValueError(f"process must be a psld.PSLD, got {type(process).__name__}")
    shape = chain.check_sample_shape(shape)
    if len(shape) < 2:
        raise ValueError(f"shape must be the data shape (B, ..., C) with a channel axis, got {shape}")
    state_shape = shape[:-1] + (2 * shape[-1],)
    if z_init is not None and tuple(np.shape(z_init)) != state_shape:
        raise ValueError(f"z_init must be a PSLD state of shape {state_shape} (x and m stacked on the last axis "
                         f"for data shape {shape}), got {tuple(np.shape(z_init))}")
    z0, key_steps, _ = chain.setup(key, state_shape, z_init, dtype)
    if z_init is None:
        x, m = psld.split(z0)
        z0 = psld.stack(x, math.sqrt(process.M) * m)
    return z0, key_steps


def _is_batch_size(shape) -> bool:
    return isinstance(shape, (int, np.integer)) and not isinstance(shape, bool)


def _resolve_target(model, shape, process):
    """``(eps_fn, process, shape)`` for a call on a :class:`~ddss_lite.psld.PSLDModel` (shape a batch
    size or ``(B, *model.data_shape)``) or on a bare ``eps_fn(z, t)`` (with ``process=`` and a tuple
    data shape)."""
    if isinstance(model, psld.PSLDModel):
        if process is not None and process is not model.process:
            raise ValueError("process: a psld.PSLDModel brings its own process (model.process); leave process= "
                             f"out or pass that same object, got a different {type(process).__name__}")
        data_shape = tuple(model.data_shape)
        if _is_batch_size(shape):
            shape = (check_K(shape, name="shape (a batch size)"), *data_shape)
        shape = chain.check_sample_shape(shape)
        if shape[1:] != data_shape:
            raise ValueError(f"shape must be a batch size or the data shape (B, *model.data_shape) = "
                             f"(B, {', '.join(map(str, data_shape))}) (C channels, not the state's 2C), got {shape}")
        return model.eps_fn(), model.process, shape
    if not callable(model):
        raise ValueError(f"model must be a psld.PSLDModel or an eps_fn(z, t) callable on PSLD states, "
                         f"got {type(model).__name__}")
    if _is_batch_size(shape):
        raise ValueError(f"shape: a batch size ({shape}) needs a psld.PSLDModel, which knows its data_shape; "
                         "with a bare eps_fn give the data shape (B, ..., C)")
    if process is None:
        raise ValueError("process= (a psld.PSLD) is required with a bare eps_fn; a psld.PSLDModel brings its own")
    return model, process, shape


# --------------------------------------------------------------------------- registry


_CALL_KEYWORDS = ("nfe", "num_steps", "process", "grid", "denoise", "remat", "return_trajectory", "z_init", "dtype")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A PSLD sampler: ``sampler(model, key, shape, *, nfe= or num_steps=, grid="quadratic", **options)``
    (module docstring, "The call"), with its plan builder, network calls per step, whether it injects
    noise, a note, its options and its order of convergence (all are first order: Euler-type
    sub-updates of a non-separable system; measured in ``tests/test_splitting.py``).

    ``model``: a :class:`ddss_lite.psld.PSLDModel` (then ``shape`` may be a batch size and
    ``process=`` is the model's own), or, the former call kept for one release, a bare
    ``eps_fn(z, t)`` on states (B, ..., 2C) with ``process=`` and a tuple ``shape`` (B, ..., C).
    ``nfe=``: the most steps whose network evaluations, the final denoising step included (when
    ``denoise``), fit within the budget (:meth:`steps`); ``num_steps=``: K itself; exactly one of
    the two. ``sampler.nfe(K, **options)`` counts evaluations, ``sampler.steps(nfe, **options)``
    inverts it."""

    name: str
    plan: Callable
    nfe_per_step: Callable
    stochastic: bool
    note: str
    options: tuple = ()
    order: int = 1       # convergence order in the step size: strong (deterministic) or weak (stochastic)

    def _check_options(self, options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"sampler {self.name!r}: unknown option(s) {unknown}; its options are "
                             f"{sorted(self.options)}, besides the keywords {list(_CALL_KEYWORDS)} of every "
                             "PSLD sampler")

    def __call__(self, model, key, shape, *, nfe: int | None = None, num_steps: int | None = None,
                 process: PSLD | None = None, grid: str = DEFAULT_GRID, denoise: bool = True, remat: bool = True,
                 return_trajectory: bool = False, z_init=None, dtype=None, **options):
        self._check_options(options)
        check_choice(grid, GRIDS, name="grid")
        eps_fn, process, shape = _resolve_target(model, shape, process)
        if (nfe is None) == (num_steps is None):
            raise ValueError(f"give exactly one of nfe= (a budget of network evaluations, the final denoising "
                             f"step included) or num_steps= (K), got {'both' if nfe is not None else 'neither'}")
        K = (self.steps(nfe, denoise=denoise, **options) if num_steps is None
             else check_K(num_steps, name="num_steps"))
        z0, key_steps = _setup(key, shape, process, z_init, dtype)
        plan = self.plan(process, time_grid(process, K, grid), **options)
        _check_plan(plan, self.name, options, dtype)
        z, traj = _chain(eps_fn, z0, key_steps, plan, remat=remat, return_trajectory=return_trajectory)
        if denoise:
            z = _denoise(eps_fn, z, process, stochastic=self.stochastic)
            if return_trajectory:
                traj = jnp.concatenate([traj, z[None]], axis=0)
        x = psld.split(z)[0]
        return (x, traj) if return_trajectory else x

    def nfe(self, num_steps: int, *, denoise: bool = True, **options) -> int:
        """Network evaluations with ``num_steps`` steps (``denoise=True`` counts the final step's one)."""
        self._check_options(options)
        return check_K(num_steps, name="num_steps") * self.nfe_per_step(**options) + int(bool(denoise))

    def steps(self, nfe: int, *, denoise: bool = True, **options) -> int:
        """The most steps K with ``self.nfe(K, denoise=denoise, **options) <= nfe`` (the final denoising
        step's evaluation included); raises if even K = 1 does not fit."""
        nfe = check_K(nfe, name="nfe")
        smallest = self.nfe(1, denoise=denoise, **options)
        if nfe < smallest:
            raise ValueError(f"nfe={nfe} is too small for {self.name!r}: one step costs {smallest} network "
                             f"evaluations (the final denoising step included: denoise={bool(denoise)}) with "
                             f"options {options or '{}'}; give nfe >= {smallest}")
        per = self.nfe(2, denoise=denoise, **options) - smallest
        return 1 + (nfe - smallest) // per


def _per_step(n):
    return lambda **_: n


_CONJ_OPTS = ("lam", "B", "reduced", "conjugate_momentum")

SAMPLERS = {
    "euler": Sampler("euler", _plan_euler, _per_step(1), False, "Euler on the PF-ODE"),
    "conjugate_euler": Sampler("conjugate_euler", _plan_conjugate_euler, _per_step(1), False,
                               "conjugate integrator (lambda-DDIM) on the PF-ODE", ("lam", "B")),
    "em": Sampler("em", _plan_em, _per_step(1), True, "Euler-Maruyama on the reverse SDE (PSLD em_sde)"),
    "sscs": Sampler("sscs", _plan_sscs, _per_step(1), True, "symmetric splitting CLD sampler (PSLD sscs_sde)"),
    "nse": Sampler("nse", lambda p, ts, **o: _plan_split(p, ts, order="se", reduced=False), _per_step(2), False,
                   "naive symplectic Euler"),
    "rse": Sampler("rse", lambda p, ts, **o: _plan_split(p, ts, order="se", reduced=True), _per_step(1), False,
                   "reduced symplectic Euler"),
    "nvv": Sampler("nvv", lambda p, ts, **o: _plan_split(p, ts, order="vv", reduced=False), _per_step(3), False,
                   "naive velocity Verlet"),
    "rvv": Sampler("rvv", lambda p, ts, **o: _plan_split(p, ts, order="vv", reduced=True), _per_step(1), False,
                   "reduced velocity Verlet"),
    "cse": Sampler("cse", lambda p, ts, **o: _plan_conj_split(p, ts, order="se", **o),
                   lambda reduced=True, **_: 1 if reduced else 2, False, "conjugate symplectic Euler", _CONJ_OPTS),
    "cvv": Sampler("cvv", lambda p, ts, **o: _plan_conj_split(p, ts, order="vv", **o),
                   lambda reduced=True, **_: 1 if reduced else 3, False, "conjugate velocity Verlet", _CONJ_OPTS),
    "oba": Sampler("oba", lambda p, ts, **o: _plan_oba(p, ts, reduced=False, **o), _per_step(2), True,
                   "naive OBA splitting", ("lambda_s",)),
    "roba": Sampler("roba", lambda p, ts, **o: _plan_oba(p, ts, reduced=True, **o), _per_step(1), True,
                    "reduced OBA splitting", ("lambda_s",)),
}
DETERMINISTIC = tuple(n for n, s in SAMPLERS.items() if not s.stochastic)
STOCHASTIC = tuple(n for n, s in SAMPLERS.items() if s.stochastic)


def get(name: str) -> Sampler:
    """The PSLD sampler called ``name`` (see ``SAMPLERS``): ``get(name)(model, key, shape, nfe=...)``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown PSLD sampler {name!r}: name must be one of {sorted(SAMPLERS)}")
    return SAMPLERS[name]


get_sampler = get
"""The former name of :func:`get` (kept for one release)."""


def sample(name: str, model, key, shape, **kwargs):
    """``get(name)(model, key, shape, **kwargs)``."""
    return get(name)(model, key, shape, **kwargs)


def nfe(name: str, num_steps: int, **options) -> int:
    """Network evaluations of sampler ``name`` with ``num_steps`` steps (``denoise=True`` counts one more)."""
    return get(name).nfe(num_steps, **options)


def steps_for_nfe(name: str, budget: int, **options) -> int:
    """The most steps K with ``nfe(name, K, **options) <= budget`` (:meth:`Sampler.steps`, what ``nfe=``
    means in a sampler call); raises if even K = 1 does not fit."""
    return get(name).steps(budget, **options)


def model_samples(model, name: str, budget: int, *, n: int, seed: int = 0, grid: str = DEFAULT_GRID,
                  **options) -> np.ndarray:
    """``n`` samples (the x-part) of the trained PSLD ``model`` (:class:`ddss_lite.psld.PSLDModel`),
    ``get(name)(model, noise_key(seed), n, nfe=budget, grid=grid, **options)``: sampler ``name`` at the
    most steps within ``budget`` network evaluations (:func:`steps_for_nfe`, the final denoising step
    included), from the book's evaluation noise (:func:`ddss_lite.evaluation.noise_key`), cached by the
    model's config and parameters, the sampler, its options, grid, ``n`` and ``seed`` (a later chapter
    loads them instead of sampling)."""
    from ddss_lite import evaluation, store

    K = steps_for_nfe(name, budget, **options)
    n = check_K(n, name="n")
    shape = (n, *model.data_shape)
    cfg = dict(model=model.config, params=store.array_digest(model.params), sampler=name, K=K, grid=grid,
               options=options, shape=list(shape), seed=seed, samples_format=evaluation.SAMPLES_FORMAT)
    draw = lambda: np.asarray(get(name)(model, evaluation.noise_key(seed), n, nfe=budget, grid=grid, **options))
    return evaluation.cached_samples(f"{model.name}-{name}", cfg, draw)
