"""Phase Space Langevin Diffusion (PSLD; Pandey & Mandt 2023, arXiv 2303.01748): the process.

The data ``x`` is augmented with a momentum ``m`` of the same shape, and the pair diffuses per
pixel (each of the d scalar entries of ``x`` with its own momentum entry) under the linear SDE
(forward time ``t`` in [0, 1], constant ``beta``; PSLD eq. 5-6):

    dx = (beta/2) (M^-1 m - Gamma x) dt + sqrt(beta Gamma)   dw_x
    dm = (beta/2) (-x - nu m)        dt + sqrt(beta M nu)    dw_m

i.e. ``dz = beta F z dt + sqrt(beta) G dw`` with, per pixel,

    F = 1/2 [[-Gamma, M^-1], [-1, -nu]],     D = G G^T = diag(Gamma, M nu).

``N(0, Sigma_inf)``, ``Sigma_inf = diag(1, M)``, is stationary for *any* constants:
``F Sigma_inf + Sigma_inf F^T + D = 0``. The closed forms below need *critical damping*,
``M^-1 = (Gamma - nu)^2 / 4`` (as in PSLD and its public code, where M is derived from Gamma and
nu): then F has the double eigenvalue ``-kappa/2``, ``kappa = (Gamma + nu)/2``, and with
``b = beta t``

    expm(F b) = e^{-kappa b / 2} (I + b N),    N = F + (kappa/2) I = [[(nu-Gamma)/4, 1/(2M)], [-1/2, (Gamma-nu)/4]],

``N^2 = 0``. Layout: a data batch ``x`` has shape (B, ..., C); a PSLD state ``z`` stacks
``(x, m)`` along the last axis, shape (B, ..., 2C) (:func:`stack`, :func:`split`).

**Perturbation kernel (HSM: m_0 marginalised, m_0 ~ N(0, gamma M)).** Given ``x_0``, ``z_t`` is
Gaussian with mean ``expm(F b) (x_0, 0)`` and per-pixel covariance

    Sigma_t = expm(F b) diag(0, gamma M) expm(F b)^T + Q(b),   Q(b) = int_0^b expm(F u) D expm(F u)^T du,

plus ``jitter`` (1e-9) on the diagonal. Since ``expm(F u) = e^{-kappa u/2}(I + u N)``,

    Q(b) = D b g_0(kappa b) + (N D + D N^T) b^2 g_1(kappa b) + N D N^T b^3 g_2(kappa b),
    g_k(y) = int_0^1 v^k e^{-y v} dv,

(and the xm entry simplifies exactly to ``(nu - Gamma) b^2 e^{-kappa b} / 4``). Each ``g_k`` is
evaluated without cancellation (power series for ``y <= 2``, the closed-form recursion
``g_0 = -expm1(-y)/y``, ``g_k = (k g_{k-1} - e^{-y})/y`` above), so every term is accurate in
float32 too; the equivalent textbook form ``Sigma_inf + expm(Fb)(Sigma_0 - Sigma_inf)expm(Fb)^T``
loses ``Gamma b`` against 1 near ``t = 0`` (e.g. 8e-7 against 1 at ``t = 1e-5``). Host inputs
(Python floats, NumPy arrays) are computed in float64 NumPy, traced/JAX inputs in their dtype.

**Noising and score.** ``z_t = mu_t + L_t eps`` with the per-pixel Cholesky factor
``L = [[l11, 0], [l21, l22]]`` of ``Sigma_t`` and ``eps ~ N(0, I_{2d})``. The network predicts
``eps`` over both channels (PSLD's HSM loss ``||eps_theta(z_t, t) - eps||^2``, averaged), and the
score is ``s = -L^{-T} eps``, ``L^{-T} = [[1/l11, -l21/(l11 l22)], [0, 1/l22]]``.

**Reverse dynamics** (integrated from ``t = 1`` down to ``eps``; PSLD eq. 7 and its
probability-flow ODE):

    PF-ODE:       dz/dt = beta F z - (beta/2) D s
    reverse SDE:  dz = [beta F z - beta D s] dt + sqrt(beta) G dw_bar     (dt < 0)

with the prior ``z_1 ~ N(0, Sigma_inf)`` (x ~ N(0, I), m ~ N(0, M I)).

**Networks.** A PSLD denoiser is ``eps_theta(z, t)`` with 2C channels in and out; the library's
networks (:func:`ddss_lite.nets.make_denoiser_net`) take a log-SNR-like conditioning value and
embed ``lambda/40 + 0.5``, so PSLD feeds them :func:`net_input` ``(t) = 40 (0.5 - t)``, which
maps ``t`` in [0, 1] onto ``1 - t`` in [0, 1] (clean data at 1, as for VP log-SNR 20).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import data, nets, paths
from ddss_lite.diffusion import bcast
from ddss_lite.profiles import Profile
from ddss_lite.train import load_or_train

__all__ = [
    "PSLD",
    "stack",
    "split",
    "net_input",
    "g_functions",
    "expm_F",
    "mean_coefficients",
    "covariance",
    "cholesky",
    "inv_cholesky_T",
    "perturb",
    "score_from_eps",
    "eps_from_score",
    "pf_ode_drift",
    "reverse_sde_drift",
    "prior_sample",
    "make_loss",
    "make_eps_fn",
    "PSLDModel",
    "toy_model",
    "image_model",
    "digits_model",
]

FORMAT = 1  # bump to invalidate every cached PSLD model when training code changes meaning


# --------------------------------------------------------------------------- the process


@dataclasses.dataclass(frozen=True)
class PSLD:
    """PSLD's constants (defaults: the paper's CIFAR-10 config, ``cifar10_psld.yaml``).

    ``beta`` (constant noise scale), ``Gamma`` (position friction), ``M`` (mass), ``nu``
    (momentum friction), ``gamma`` (initial momentum variance ``gamma M``: m_0 ~ N(0, 0.01)),
    ``jitter`` (added to the covariance diagonal), ``eps`` (sampling ends at ``t = eps``, then an
    optional denoising step to 0), ``train_eps`` (training draws ``t ~ U(train_eps, 1)``).
    Critical damping ``M = 4 / (nu - Gamma)^2`` is required (see the module docstring); use
    :meth:`critically_damped` to derive M. Names: ``gamma`` is the public code's ``kappa`` (its
    ``gamma`` is our ``Gamma``); our :attr:`kappa` is the decay rate ``(Gamma + nu)/2``.
    """

    beta: float = 8.0
    Gamma: float = 0.01
    M: float = 0.25
    nu: float = 4.01
    gamma: float = 0.04
    jitter: float = 1e-9
    eps: float = 1e-3
    train_eps: float = 1e-5

    def __post_init__(self):
        for name in ("beta", "Gamma", "M", "nu"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(v) or v <= 0:
                raise ValueError(f"PSLD {name} must be a finite number > 0, got {v!r}")
        for name in ("gamma", "jitter"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"PSLD {name} must be a finite number >= 0, got {v!r}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"PSLD eps (sampling end time) must be in (0, 1), got {self.eps!r}")
        if not 0.0 < self.train_eps < 1.0:
            raise ValueError(f"PSLD train_eps must be in (0, 1), got {self.train_eps!r}")
        m_inv = (self.Gamma - self.nu) ** 2 / 4
        if not math.isclose(1.0 / self.M, m_inv, rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(
                f"PSLD needs critical damping, M^-1 = (Gamma - nu)^2 / 4: with Gamma={self.Gamma}, "
                f"nu={self.nu} that is M = {1 / m_inv if m_inv > 0 else float('inf')!r}, got M={self.M} "
                "(use PSLD.critically_damped(Gamma=..., nu=...))")
        if self.gamma == 0 and self.jitter == 0:
            raise ValueError("PSLD gamma = 0 and jitter = 0 make the kernel covariance singular at t = 0")

    @classmethod
    def critically_damped(cls, *, Gamma: float, nu: float, **kwargs) -> "PSLD":
        """The process with ``M = 4 / (nu - Gamma)^2`` (PSLD's public code derives M this way)."""
        if nu == Gamma:
            raise ValueError("critical damping needs nu != Gamma (M = 4 / (nu - Gamma)^2)")
        return cls(Gamma=Gamma, nu=nu, M=4.0 / (nu - Gamma) ** 2, **kwargs)

    # -- matrices (per pixel, per unit b = beta t), float64 NumPy
    @property
    def kappa(self) -> float:
        """``(Gamma + nu) / 2``: ``expm(F b)`` decays like ``e^{-kappa b / 2}``, ``Sigma_t - Sigma_inf`` like ``e^{-kappa b}``."""
        return 0.5 * (self.Gamma + self.nu)

    @property
    def F(self) -> np.ndarray:
        return 0.5 * np.array([[-self.Gamma, 1.0 / self.M], [-1.0, -self.nu]])

    @property
    def N(self) -> np.ndarray:
        """``F + (kappa/2) I``, nilpotent under critical damping."""
        return self.F + 0.5 * self.kappa * np.eye(2)

    @property
    def D(self) -> np.ndarray:
        """``G G^T = diag(Gamma, M nu)`` per unit beta."""
        return np.diag([self.Gamma, self.M * self.nu])

    @property
    def Sigma_inf(self) -> np.ndarray:
        return np.diag([1.0, self.M])

    @property
    def Sigma_0(self) -> np.ndarray:
        """Covariance of ``(x_0, m_0)`` given ``x_0`` (HSM): ``diag(0, gamma M)``."""
        return np.diag([0.0, self.gamma * self.M])


# --------------------------------------------------------------------------- layout


def stack(x, m):
    """``(x, m)`` of shape (B, ..., C) each -> the state ``z`` of shape (B, ..., 2C)."""
    return jnp.concatenate([x, m], axis=-1)


def split(z):
    """The state ``z`` (B, ..., 2C) -> ``(x, m)``, each (B, ..., C)."""
    c = z.shape[-1]
    if c % 2:
        raise ValueError(f"a PSLD state has an even number 2C of channels on its last axis, got shape {z.shape}")
    return z[..., : c // 2], z[..., c // 2:]


def net_input(t):
    """The networks' conditioning value for time ``t``: ``40 (0.5 - t)``, so that their embedding
    of ``lambda/40 + 0.5`` sees ``1 - t`` in [0, 1] (see the module docstring)."""
    return 40.0 * (0.5 - t)


# --------------------------------------------------------------------------- closed forms


def _xp(*args):
    """NumPy (float64) for host inputs, jax.numpy for JAX arrays and tracers."""
    return jnp if any(isinstance(a, jax.Array) or isinstance(a, jax.core.Tracer) for a in args) else np


def _asarray(t, xp):
    return np.asarray(t, np.float64) if xp is np else jnp.asarray(t, jnp.result_type(float, t))


def _time(t, xp):
    """``t`` as :func:`_asarray`, host values checked to be times in [0, 1] (the closed forms hold only
    there: a negative ``t`` gives a negative variance); traced values are not checked."""
    t = _asarray(t, xp)
    if xp is np:
        ok = (t >= 0.0) & (t <= 1.0)                      # NaN fails too
        if not np.all(ok):
            raise ValueError(f"t must be a time in [0, 1] (0 = data, 1 = the prior), got {t[~ok].ravel()[:5].tolist()}")
    return t


_SERIES_TERMS = 30   # for y <= 2: the first omitted term is below 2^30 / 30! < 1e-23
_SERIES_MAX = 2.0
_SERIES_J = np.arange(_SERIES_TERMS)
# c[j, k] = (-1)^j / (j! (k + j + 1)): g_k(y) = sum_j c[j, k] y^j
_SERIES_C = np.array([[(-1.0) ** j / (math.factorial(j) * (k + j + 1)) for k in range(3)] for j in range(_SERIES_TERMS)])


def g_functions(y):
    """``(g_0, g_1, g_2)(y) = int_0^1 v^k e^{-y v} dv`` for ``y >= 0``, without cancellation.

    For ``y <= 2`` the series ``g_k(y) = sum_j (-y)^j / (j! (k + j + 1))`` (alternating, terms at
    most 2, so about one digit lost); above it ``g_0 = -expm1(-y)/y`` and the recursion
    ``g_k = (k g_{k-1} - e^{-y})/y``, whose error grows by at most ``k/y < 1`` per step.
    """
    xp = _xp(y)
    y = _asarray(y, xp)
    small = y <= _SERIES_MAX
    ys = xp.where(small, y, 0.0)
    yl = xp.where(small, 1.0, y)
    series = (ys[..., None] ** xp.asarray(_SERIES_J, y.dtype)) @ xp.asarray(_SERIES_C, y.dtype)   # (..., 3)
    e = xp.exp(-yl)
    g0 = -xp.expm1(-yl) / yl
    g1 = (g0 - e) / yl
    g2 = (2.0 * g1 - e) / yl
    return tuple(xp.where(small, series[..., k], g) for k, g in enumerate((g0, g1, g2)))


def expm_F(process: PSLD, b):
    """``expm(F b) = e^{-kappa b/2} (I + b N)`` as ``(e_xx, e_xm, e_mx, e_mm)`` (broadcast over ``b``)."""
    xp = _xp(b)
    b = _asarray(b, xp)
    N = process.N
    s = xp.exp(-0.5 * process.kappa * b)
    return s * (1 + b * N[0, 0]), s * b * N[0, 1], s * b * N[1, 0], s * (1 + b * N[1, 1])


def mean_coefficients(process: PSLD, t):
    """``(a_x, a_m)`` with ``E[x_t | x_0] = a_x x_0``, ``E[m_t | x_0] = a_m x_0`` (m_0 has mean 0):
    the first column of ``expm(F beta t)``: ``e^{-kappa b/2} (1 + (nu - Gamma) b/4, -b/2)``."""
    e_xx, _, e_mx, _ = expm_F(process, process.beta * _time(t, _xp(t)))
    return e_xx, e_mx


def covariance(process: PSLD, t):
    """``(Sigma_xx, Sigma_xm, Sigma_mm)`` of the perturbation kernel at ``t`` (module docstring), jitter included."""
    xp = _xp(t)
    p = process
    b = p.beta * _time(t, xp)
    y = p.kappa * b
    g0, g1, g2 = g_functions(y)
    e = xp.exp(-y)
    N, D = p.N, p.D
    ND = N @ D + D @ N.T
    NDN = N @ D @ N.T
    q_xx = D[0, 0] * b * g0 + ND[0, 0] * b**2 * g1 + NDN[0, 0] * b**3 * g2
    q_mm = D[1, 1] * b * g0 + ND[1, 1] * b**2 * g1 + NDN[1, 1] * b**3 * g2
    q_xm = 0.25 * (p.nu - p.Gamma) * b**2 * e
    # expm(Fb) diag(0, gamma M) expm(Fb)^T: the second column (e_xm, e_mm) times gamma M.
    _, e_xm, _, e_mm = expm_F(p, b)
    v0 = p.gamma * p.M
    return (q_xx + v0 * e_xm**2 + p.jitter, q_xm + v0 * e_xm * e_mm, q_mm + v0 * e_mm**2 + p.jitter)


def cholesky(process: PSLD, t):
    """``(l11, l21, l22)`` of ``Sigma_t = L L^T``, ``L = [[l11, 0], [l21, l22]]``."""
    xp = _xp(t)
    s_xx, s_xm, s_mm = covariance(process, t)
    l11 = xp.sqrt(s_xx)
    l21 = s_xm / l11
    l22 = xp.sqrt(s_mm - l21**2)
    return l11, l21, l22


def inv_cholesky_T(process: PSLD, t):
    """``(a11, a12, a22)`` of ``L^{-T} = [[a11, a12], [0, a22]] = [[1/l11, -l21/(l11 l22)], [0, 1/l22]]``."""
    l11, l21, l22 = cholesky(process, t)
    return 1.0 / l11, -l21 / (l11 * l22), 1.0 / l22


def perturb(process: PSLD, x0, eps, t):
    """``z_t = mu_t(x_0) + L_t eps``: ``x0`` (B, ..., C), ``eps`` (B, ..., 2C), ``t`` scalar or (B,)."""
    x0 = jnp.asarray(x0)
    if eps.shape != x0.shape[:-1] + (2 * x0.shape[-1],):
        raise ValueError(f"eps must have the state shape {x0.shape[:-1] + (2 * x0.shape[-1],)} for x0 of "
                         f"shape {x0.shape}, got {eps.shape}")
    t = jnp.asarray(t, x0.dtype)
    a_x, a_m = mean_coefficients(process, t)
    l11, l21, l22 = cholesky(process, t)
    e_x, e_m = split(eps)
    x = bcast(a_x, x0) * x0 + bcast(l11, x0) * e_x
    m = bcast(a_m, x0) * x0 + bcast(l21, x0) * e_x + bcast(l22, x0) * e_m
    return stack(x, m)


def score_from_eps(process: PSLD, eps, t):
    """``s = -L_t^{-T} eps`` (``eps`` of the state shape (B, ..., 2C), ``t`` scalar or (B,))."""
    a11, a12, a22 = inv_cholesky_T(process, jnp.asarray(t, eps.dtype))
    e_x, e_m = split(eps)
    return stack(-(bcast(a11, e_x) * e_x + bcast(a12, e_x) * e_m), -bcast(a22, e_m) * e_m)


def eps_from_score(process: PSLD, score, t):
    """``eps = -L_t^T s`` (inverse of :func:`score_from_eps`)."""
    l11, l21, l22 = cholesky(process, jnp.asarray(t, score.dtype))
    s_x, s_m = split(score)
    return stack(-(bcast(l11, s_x) * s_x + bcast(l21, s_x) * s_m), -bcast(l22, s_m) * s_m)


def _F_times(process: PSLD, z):
    x, m = split(z)
    p = process
    return stack(0.5 * (-p.Gamma * x + m / p.M), 0.5 * (-x - p.nu * m))


def _D_times(process: PSLD, z):
    x, m = split(z)
    return stack(process.Gamma * x, process.M * process.nu * m)


def pf_ode_drift(process: PSLD, z, score):
    """``dz/dt = beta F z - (beta/2) D s`` (forward-time velocity of the probability-flow ODE)."""
    return process.beta * (_F_times(process, z) - 0.5 * _D_times(process, score))


def reverse_sde_drift(process: PSLD, z, score):
    """Drift of the reverse SDE in forward time, ``beta F z - beta D s`` (its noise: ``sqrt(beta) G dw``)."""
    return process.beta * (_F_times(process, z) - _D_times(process, score))


def prior_sample(process: PSLD, key, data_shape, dtype=None):
    """``z ~ N(0, Sigma_inf)`` of the state shape (B, ..., 2C) for ``data_shape`` (B, ..., C); row
    ``n`` from ``fold_in(key, n)`` (:func:`ddss_lite.chain.normal_rows`)."""
    from ddss_lite import chain

    data_shape = tuple(data_shape)
    xi = chain.normal_rows(key, data_shape[:-1] + (2 * data_shape[-1],), dtype)
    x, m = split(xi)
    return stack(x, math.sqrt(process.M) * m)


# --------------------------------------------------------------------------- training


def make_loss(apply_fn, process: PSLD):
    """``loss(params, x0, key)``: PSLD's HSM eps-loss ``mean ||eps_theta(z_t, t) - eps||^2`` over all
    2C channels, ``t ~ U(train_eps, 1)`` per example, ``m_0`` marginalised into the kernel
    (PSLD ``losses.py``, ``mode: hsm``). ``apply_fn(params, z, c)`` is a network conditioned on
    ``c = net_input(t)``."""

    def loss(params, x0, key):
        k_t, k_eps = jax.random.split(key)
        t = jax.random.uniform(k_t, x0.shape[:1], x0.dtype, minval=process.train_eps, maxval=1.0)
        eps = jax.random.normal(k_eps, x0.shape[:-1] + (2 * x0.shape[-1],), x0.dtype)
        z = perturb(process, x0, eps, t)
        return jnp.mean(jnp.square(apply_fn(params, z, net_input(t)) - eps))

    # jitted: one dispatch when evaluated eagerly (the training cache's probes of the loss)
    return jax.jit(loss)


def make_eps_fn(apply_fn, params, *, channels: int | None = None) -> Callable:
    """``eps_fn(z, t) -> eps_hat`` for a network ``apply_fn(params, z, net_input(t))``; ``t`` may be a
    scalar (broadcast to the batch). With ``channels`` (the data's C) a state whose last axis is not
    2C is refused with a clear error."""

    def eps_fn(z, t):
        if channels is not None and z.shape[-1] != 2 * channels:
            raise ValueError(f"this PSLD denoiser takes states with 2C = {2 * channels} channels on the last "
                             f"axis (data with C = {channels}), got shape {z.shape}")
        t_b = jnp.broadcast_to(jnp.asarray(t, z.dtype), z.shape[:1])
        return apply_fn(params, z, net_input(t_b))

    return eps_fn


@dataclasses.dataclass(frozen=True)
class PSLDModel:
    """A trained PSLD eps-network: EMA params, loss curve, config, the process and the data shape (C last)."""

    name: str
    module: nn.Module
    params: dict
    losses: np.ndarray
    config: dict
    process: PSLD
    data_shape: tuple

    def eps_fn(self) -> Callable:
        """``eps_theta(z, t)`` on states of shape (B, *data_shape[:-1], 2C)."""
        return make_eps_fn(nets.apply_fn(self.module), self.params, channels=self.data_shape[-1])

    def state_shape(self, batch: int) -> tuple:
        return (batch,) + tuple(self.data_shape[:-1]) + (2 * self.data_shape[-1],)


def _train(name, module, config, sample_x, x_shape, profile, process, key) -> PSLDModel:
    from ddss_lite.pretrained import adam   # the VP models' optimiser (warmup-cosine Adam, clipping)

    loss = make_loss(nets.apply_fn(module), process)
    loss_fn = lambda p, k: loss(p, sample_x(jax.random.fold_in(k, 1)), jax.random.fold_in(k, 2))
    k_init, k_train = jax.random.split(key)
    state_shape = tuple(x_shape[:-1]) + (2 * x_shape[-1],)
    init = lambda: jax.jit(module.init)(k_init, jnp.zeros((1, *state_shape)), jnp.zeros((1,)))["params"]
    steps = config["steps"]
    state = load_or_train(name, config, init, loss_fn, cache_dir=paths.cache_dir(),
                          optimizer=adam(profile, steps), ema_decay=0.999 if steps >= 2000 else 0.9,
                          ckpt_every=max(100, steps // 10), key=k_train)
    return PSLDModel(name, module, state.ema_params, np.asarray(state.losses), config, process, tuple(x_shape))


def _config(kind, profile, process, *, hidden, depth, steps, batch, seed, **extra):
    return dict(format=FORMAT, kind=kind, process=dataclasses.asdict(process), hidden=hidden, depth=depth,
                steps=steps, batch=batch, lr=profile.learning_rate, seed=seed, **extra)


def toy_model(profile: Profile, *, dataset: str = "checkerboard", process: PSLD | None = None, seed: int = 0,
              steps: int | None = None) -> PSLDModel:
    """PSLD eps-MLP for the 2-D ``dataset`` (C = 2: the two coordinates; the state is (B, 4)), with the
    profile's toy sizes (``steps`` overrides ``profile.toy_steps``); cached by its full config."""
    process = PSLD() if process is None else process
    steps = profile.toy_steps if steps is None else steps
    config = _config("psld-toy", profile, process, hidden=profile.toy_hidden, depth=profile.toy_depth,
                     steps=steps, batch=profile.toy_batch, seed=seed, dataset=dataset, net="mlp")
    module = nets.make_denoiser_net("mlp", hidden=profile.toy_hidden, depth=profile.toy_depth)
    sample_x = lambda k: data.toy2d(dataset, k, profile.toy_batch)
    return _train(f"psld-toy-{dataset}", module, config, sample_x, (2,), profile, process, jax.random.PRNGKey(seed))


def image_model(profile: Profile, *, process: PSLD | None = None, seed: int = 0,
                steps: int | None = None) -> PSLDModel:
    """PSLD eps-network (the profile's MLP or U-Net) for the profile's image data set
    (``profile.dataset``: 8x8 digits, states (B, 8, 8, 2); CIFAR-10 in the accelerator profile,
    (B, 32, 32, 6)) in [-1, 1], trained on its fixed training split; ``steps`` overrides
    ``profile.digits_steps``."""
    process = PSLD() if process is None else process
    steps = profile.digits_steps if steps is None else steps
    x_train = jnp.asarray(data.image_split(profile.dataset).x_train)
    kind = f"psld-{profile.dataset}"
    config = _config(kind, profile, process, hidden=profile.digits_hidden, depth=profile.digits_depth,
                     steps=steps, batch=profile.digits_batch, seed=seed, net=profile.digits_net,
                     n_train=int(x_train.shape[0]))
    module = nets.make_denoiser_net(profile.digits_net, hidden=profile.digits_hidden, depth=profile.digits_depth)
    sample_x = lambda k: x_train[jax.random.randint(k, (profile.digits_batch,), 0, x_train.shape[0])]
    return _train(kind, module, config, sample_x, tuple(x_train.shape[1:]), profile, process,
                  jax.random.PRNGKey(seed))


def digits_model(profile: Profile, *, process: PSLD | None = None, seed: int = 0,
                 steps: int | None = None) -> PSLDModel:
    """:func:`image_model` of the 8x8 digits, whatever ``profile.dataset`` says."""
    return image_model(dataclasses.replace(profile, dataset="digits"), process=process, seed=seed, steps=steps)
