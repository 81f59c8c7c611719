"""The ELBO of a pre-trained denoiser, one term per step, for any sub-path of a time grid.

Watson, Ho, Norouzi & Chan (2021), "Learning to efficiently sample from diffusion
probabilistic models": with the reverse step ``p(z_s | z_t) = q(z_s | z_t, x_hat(z_t))``
the negative ELBO of a K-step schedule ``0 = j_0 < j_1 < ... < j_K = T`` on a grid of
log-SNRs ``logsnrs[0] < logsnrs[1] < ... < logsnrs[T]`` (strictly increasing as everywhere in
the library: index 0 the noisiest, T the cleanest; the schedule is walked from noise to data) is

    -ELBO = KL(q(z_{j_0}|x) || N(0, I))                   prior          (:func:`prior_kl`)
            + sum_k L(j_k, j_{k+1})                       diffusion      (:func:`cost_matrix`)
            + E_q[-log p(x | z_{j_K})]                    reconstruction (:func:`recon_nll`)

with the KL of two Gaussians of equal covariance (the posterior variance of q(z_s|z_t, .)
does not depend on x):

    L(i, j) = E KL(q(z_j|z_i, x) || q(z_j|z_i, x_hat(z_i)))          (step from i to the cleaner j)
            = 1/2 (SNR(j) - SNR(i)) E ||x - x_hat(z_i)||^2           (sum over dims)

(the discrete-time diffusion loss of VDM, Kingma et al. 2021). The network is evaluated at the
step's noisier end i, so the expectation ``mse[i]`` depends on i only, and one network pass per
grid point on a data batch (:func:`mse_per_t`) gives every ``L(i, j)``; :mod:`ddss_lite.dp` then
finds the cheapest K-step path for every K.

**The clean end of the grid.** ``logsnrs[T]`` (``lambda_max``) is a free choice, and it matters:
the last step of a path costs ``1/2 (SNR(T) - SNR(j_{K-1})) mse[j_{K-1}]``, and a real network's
error at high SNR is ``mse ~ ||v - v_hat||^2 / SNR``, so that step costs about
``1/2 (SNR(T) / SNR(j_{K-1})) ||v - v_hat||^2``: a large ``SNR(T)`` forces a few-step path to spend
its steps near the clean end, and ``lambda_max = 20`` makes short paths explode unless the model
is perfect. It cannot be small either: the decoder below must resolve the data's bins from
the final state, whose noise in data units is ``s_0 = sigma / alpha = exp(-lambda_max / 2)``. A
neighbouring level at distance ``h`` (the bin width) is confused with probability about
``Phi(-h / (2 s_0))``. The default :data:`LOGSNR_CLEAN` = 9 gives ``s_0 = e^{-4.5} = 0.0111``,
i.e. ``h / s_0 = 11.2`` for the digits' ``h = 1/8``, and a reconstruction term below 1e-7
bits/dim (6e-8 on the digits; :func:`recon_nll` computes it exactly): negligible, while
``SNR = e^9 = 8.1e3`` is 74 times smaller than at VDM's ``lambda = 13.3`` and 6e4 times
smaller than at 20. (VDM's 13.3 suits 8-bit images, ``h = 2/255``: ``h / s_0 = 6.1`` there;
the same ratio here would be ``lambda = 7.7``, where the term is already 0.01 bits/dim.)
The best end for a given network can also be chosen by the data: :func:`elbo_terms` computes
the decoder term at every grid point, and :meth:`ELBOTerms.best_paths` with ``choose_end=True``
lets the dynamic program pick, per K, where to stop and decode (a real network that is poor at
high SNR then stops below ``lambda_max``; VDM reaches the same end by learning its endpoints).

**The decoder.** Pixels take the finitely many values ``levels`` (digits: ``v/8 - 1``,
``v = 0..16``). ``p(x | z_0)`` (``z_0`` the final state, at log-SNR ``lambda_0``) factorises over
dims and is the exact posterior over the levels of one pixel under a uniform prior on the levels
and the forward likelihood ``q(z_0 | x) = N(alpha_0 x, sigma_0^2)``:

    p(x = l_k | z_0) = N(z_0; alpha_0 l_k, sigma_0^2) / sum_m N(z_0; alpha_0 l_m, sigma_0^2)
                     = softmax_k( -(z_0 / alpha_0 - l_k)^2 / (2 s_0^2) ),   s_0 = sigma_0 / alpha_0

(the discretised decoder of VDM, Kingma et al. 2021; here normalised over exactly the data's
levels, so the probabilities of the finite set sum to one with nothing lost at the edges). It
needs no network pass. Its expected NLL for a pixel at level ``l_j``, with
``z_0 / alpha_0 = l_j + s_0 eps`` and ``d_k = (l_j - l_k) / s_0``, is

    r_j = E_eps[-log p(l_j | z_0)] = E_eps[ logsumexp_k(-d_k^2 / 2 - d_k eps) ],

a 1-D integral, computed here by the trapezoidal rule (exponentially accurate for this smooth,
Gaussian-weighted integrand), so the reconstruction term carries no Monte-Carlo noise.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ddss_lite.data import DIGITS_LEVELS, from_levels
from ddss_lite.diffusion import q_sample
from ddss_lite.dp import OptimalPaths, check_path, optimal_paths
from ddss_lite.grids import check_in_range
from ddss_lite.models import as_denoiser, check_model
from ddss_lite.schedules import LOGSNR_MIN, alpha_sigma, logsnr_cosine
from ddss_lite.validate import check_finite, check_increasing, check_K, check_key, check_shape

LOGSNR_CLEAN = 9.0
"""Default log-SNR of the clean end (index T) of the grid (see the module docstring)."""

LOGSNR_NOISY = LOGSNR_MIN
"""Default log-SNR of the noisy end (index 0): the pre-trained models' lower clip (-20), where
the prior term is ~1e-9 nats/dim."""

DIGIT_LEVELS = np.asarray(from_levels(np.arange(DIGITS_LEVELS)), np.float64)
"""The 17 pixel values ``x = v/8 - 1`` of the digits (bin width ``h = 1/8``)."""

_QUAD_EPS = np.linspace(-13.0, 13.0, 26 * 32 + 1)  # trapezoidal nodes for E_{eps ~ N(0,1)}


# --------------------------------------------------------------------------- the grid


def logsnr_grid(T: int, *, logsnr_min: float = LOGSNR_NOISY, logsnr_max: float = LOGSNR_CLEAN):
    """The T + 1 log-SNRs ``logsnrs[j] = lambda(1 - j / T)``, j = 0..T, of the cosine schedule
    clipped to ``[logsnr_min, logsnr_max]`` (:func:`ddss_lite.schedules.logsnr_cosine`): strictly
    increasing, ``logsnrs[0] = logsnr_min`` (noisiest), ``logsnrs[T] = logsnr_max`` (cleanest).
    A float64 NumPy array."""
    T = check_K(T, name="T")
    if not logsnr_max > logsnr_min:
        raise ValueError(f"logsnr_max must be > logsnr_min, got logsnr_max={logsnr_max}, logsnr_min={logsnr_min}")
    t = np.clip(1.0 - np.arange(T + 1) / T, 0.0, 1.0)
    lam = np.asarray(logsnr_cosine(t, logsnr_min=logsnr_min, logsnr_max=logsnr_max), np.float64)
    lam[0], lam[-1] = logsnr_min, logsnr_max
    return check_logsnrs(lam)


def check_logsnrs(logsnrs, *, name: str = "logsnrs"):
    """``logsnrs`` must be a finite 1-D array of length T + 1 >= 2, strictly increasing (index 0
    the noisiest, as everywhere in the library). Returns it as a float64 NumPy array."""
    return check_increasing(np.asarray(logsnrs, np.float64), name=name)


# --------------------------------------------------------------------------- diffusion terms


def sq_err_per_t(denoise, x, key, logsnrs):
    """Per-example squared errors ``||x_b - x_hat(z_{t_j, b})||^2`` (summed over dims), shape (T+1, B).

    ``z_{t_j} = alpha_j x + sigma_j eps`` with ``eps`` for grid point j and example b drawn from
    ``fold_in(fold_in(key, j), b)`` (fresh per t, independent of the batch size). Exactly one call
    of ``denoise`` per grid point, on the whole batch (``lax.map`` over j: memory of one pass).
    """
    lam = jnp.asarray(check_logsnrs(logsnrs), jnp.float32)
    x = jnp.asarray(x)
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (B, ...) with B >= 1, got {x.shape}")
    try:
        hash(denoise)
    except TypeError:   # an unhashable callable: compile for this call only
        return jax.jit(partial(_sq_err, denoise))(x, key, lam)
    return _sq_err_jit(denoise, x, key, lam)


def _sq_err(denoise, x, key, lam):
    def one(args):
        j, lam_j = args
        k_j = jax.random.fold_in(key, j)
        eps = jax.vmap(lambda b: jax.random.normal(jax.random.fold_in(k_j, b), x.shape[1:], x.dtype))(
            jnp.arange(x.shape[0]))
        x_hat = denoise(q_sample(x=x, eps=eps, logsnr=lam_j.astype(x.dtype)), lam_j.astype(x.dtype))
        return jnp.sum(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=1)

    return lax.map(one, (jnp.arange(lam.shape[0]), lam))


_sq_err_jit = jax.jit(_sq_err, static_argnums=0)   # cached per denoiser (hashed by identity)


def mse_per_t(denoise, x, key, logsnrs):
    """Monte-Carlo ``mse[j] = E ||x - x_hat(z_{t_j})||^2`` (sum over dims, mean over the batch)
    and its standard error ``std_b / sqrt(B)``, both float64 NumPy arrays of shape (T+1,).

    One network pass per grid point (see :func:`sq_err_per_t`). ``mse[T]`` is a diagnostic: no
    step of a path starts at the clean end, so the ELBO never uses it.
    """
    err = np.asarray(sq_err_per_t(denoise, x, key, logsnrs), np.float64)
    B = err.shape[1]
    se = err.std(axis=1, ddof=1) / math.sqrt(B) if B > 1 else np.full(err.shape[0], np.inf)
    return err.mean(axis=1), se


def _check_mse(mse, T1: int, *, name: str = "mse"):
    m = np.asarray(mse, np.float64)
    check_shape(m, (T1,), name=name)
    check_finite(m, name=name)
    if np.any(m < 0):
        raise ValueError(f"{name} must be >= 0 (a mean squared error), got min {m.min()}")
    return m


def step_weights(logsnrs):
    """``W[i, j] = 1/2 (SNR(j) - SNR(i))`` for i < j, else +inf; float64, stable via ``expm1``."""
    lam = check_logsnrs(logsnrs)
    i, j = np.meshgrid(lam, lam, indexing="ij")
    upper = np.triu(np.ones(i.shape, bool), k=1)
    with np.errstate(over="ignore", invalid="ignore"):
        w = 0.5 * np.exp(j) * -np.expm1(i - j)
    return np.where(upper, w, np.inf)


def cost_matrix(logsnrs, mse):
    """The (T+1, T+1) matrix of step costs (nats) ``C[i, j] = L(i, j) = 1/2 (SNR(j) - SNR(i)) mse[i]``
    for ``i < j`` (a step from the noisier i to the cleaner j) and ``+inf`` elsewhere.

    Watson et al. 2021 (per-step ELBO terms), in VDM's SNR form. Float64 NumPy.
    """
    lam = check_logsnrs(logsnrs)
    m = _check_mse(mse, lam.shape[0])
    w = step_weights(lam)
    finite = np.isfinite(w)
    return np.where(finite, np.where(finite, w, 0.0) * m[:, None], np.inf)


# --------------------------------------------------------------------------- prior and decoder


def _per_example_dims(x):
    x = np.asarray(x, np.float64)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"x must have shape (B, ...) with B >= 1 and at least one dim, got {x.shape}")
    check_finite(x, name="x")
    return x.reshape(x.shape[0], -1)


def prior_kl(x, logsnr_min: float):
    """``KL(q(z | x) || N(0, I))`` at the noisy end ``logsnr_min``, in nats, summed over dims,
    averaged over the batch ``x``.

    ``q(z|x) = N(alpha x, sigma^2 I)``: per dim ``1/2 (sigma^2 + alpha^2 x^2 - 1 - log sigma^2)
    = 1/2 (alpha^2 (x^2 - 1) + softplus(lambda))`` (using ``sigma^2 - 1 = -alpha^2`` and
    ``-log sigma^2 = log(1 + e^lambda)``).
    """
    return float(np.mean(_prior_kl_per_example(x, logsnr_min)))


def _prior_kl_per_example(x, logsnr_min: float):
    xf = _per_example_dims(x)
    lam = float(logsnr_min)
    a2 = 1.0 / (1.0 + math.exp(-lam)) if lam > -700 else 0.0
    sp = max(lam, 0.0) + math.log1p(math.exp(-abs(lam)))
    return np.sum(0.5 * (a2 * (xf**2 - 1.0) + sp), axis=1)


def _check_levels(levels):
    lv = np.asarray(levels, np.float64)
    if lv.ndim != 1 or lv.shape[0] < 2:
        raise ValueError(f"levels must be a 1-D array of >= 2 values, got shape {lv.shape}")
    check_finite(lv, name="levels")
    if not np.all(np.diff(lv) > 0):
        raise ValueError("levels must be strictly increasing")
    return lv


def decoder_logprobs(z0, logsnr_0: float, *, levels=DIGIT_LEVELS):
    """``log p(x = levels[k] | z_0)``, shape ``z0.shape + (L,)``: a log-softmax over the levels of
    ``-(z_0 / alpha_0 - levels[k])^2 / (2 s_0^2)``, ``s_0 = sigma_0 / alpha_0`` (module docstring)."""
    lv = jnp.asarray(_check_levels(levels), jnp.float32)
    z0 = jnp.asarray(z0, jnp.float32)
    alpha, sigma = alpha_sigma(jnp.float32(logsnr_0))
    u = (z0 / alpha)[..., None] - lv
    return jax.nn.log_softmax(-0.5 * jnp.square(u / (sigma / alpha)), axis=-1)


def recon_nll_per_level(logsnr_0, *, levels=DIGIT_LEVELS):
    """``r_j = E_{z_0 ~ q(z_0 | x = levels[j])}[-log p(levels[j] | z_0)]`` in nats: shape (L,)
    for a scalar ``logsnr_0``, (n, L) for n of them.

    ``r_j = E_eps logsumexp_k(-d_k^2/2 - d_k eps)``, ``d_k = (l_j - l_k) / s_0``, by the
    trapezoidal rule on [-13, 13], step 1/32, in float64. Where ``r_j`` matters the integrand is
    analytic in a strip of half-width ``pi / d`` around the real line (``d <= 26``: beyond, the
    knee at ``eps = -d/2`` lies outside the range and ``r_j < 1e-30``), so the rule's relative
    error is about ``exp(-2 pi^2 / (d h)) < 1e-20``; the range truncation costs < 1e-30.
    """
    lv = _check_levels(levels)
    lam = np.asarray(logsnr_0, np.float64)
    if lam.ndim > 1:
        raise ValueError(f"logsnr_0 must be a scalar or 1-D, got shape {lam.shape}")
    check_finite(lam, name="logsnr_0")
    s0 = np.exp(-0.5 * np.atleast_1d(lam))                          # (n,)
    e = _QUAD_EPS
    w = np.exp(-0.5 * e**2) / math.sqrt(2 * math.pi) * (e[1] - e[0])
    w[[0, -1]] *= 0.5
    r = np.empty((s0.shape[0], lv.shape[0]))
    chunk = max(1, 2**22 // (lv.shape[0] * e.shape[0]))            # bound memory to ~32 MB
    for i in range(0, s0.shape[0], chunk):
        for j in range(lv.shape[0]):
            d = (lv[j] - lv)[None, :, None] / s0[i:i + chunk, None, None]   # (n, k, 1)
            a = -0.5 * d**2 - d * e                                   # (n, k, nodes)
            m = a.max(axis=1)                                         # >= 0: the k = j term is 0
            f = m + np.log(np.sum(np.exp(a - m[:, None]), axis=1))   # logsumexp_k, (n, nodes)
            r[i:i + chunk, j] = f @ w
    return r[0] if lam.ndim == 0 else r


def level_index(x, *, levels=DIGIT_LEVELS, tol: float = 1e-4):
    """Index of the level each entry of ``x`` sits on; raises if an entry is further than
    ``tol`` times the smallest level spacing from every level."""
    lv = _check_levels(levels)
    xa = np.asarray(x, np.float64)
    idx = np.clip(np.searchsorted(lv, xa), 1, lv.shape[0] - 1)
    idx = np.where(np.abs(xa - lv[idx - 1]) <= np.abs(xa - lv[idx]), idx - 1, idx)
    if np.any(np.abs(xa - lv[idx]) > tol * np.min(np.diff(lv))):
        raise ValueError("x must lie on levels (discrete data, e.g. digits x = v/8 - 1); "
                         f"max distance {np.max(np.abs(xa - lv[idx])):.3g}")
    return idx


def recon_nll(x, logsnr_0, *, levels=DIGIT_LEVELS):
    """Reconstruction term ``E_q[-log p(x | z_0)]`` in nats, summed over dims, averaged over the
    batch ``x`` (whose entries must lie on ``levels``): a float for a scalar ``logsnr_0``, an
    array for a 1-D one. Exact up to the quadrature of :func:`recon_nll_per_level`; decreases
    to 0 as ``logsnr_0`` grows."""
    r = np.mean(_recon_nll_per_example(x, logsnr_0, levels=levels), axis=-1)
    return float(r) if r.ndim == 0 else r


def _recon_nll_per_example(x, logsnr_0, *, levels=DIGIT_LEVELS):
    """(B,) for a scalar ``logsnr_0``, (n, B) for n of them: level counts times ``r``."""
    lv = _check_levels(levels)
    idx = level_index(_per_example_dims(x), levels=lv)
    counts = np.stack([np.sum(idx == k, axis=1) for k in range(lv.shape[0])], axis=1)  # (B, L)
    return recon_nll_per_level(logsnr_0, levels=lv) @ counts.T.astype(np.float64)


# --------------------------------------------------------------------------- the bound


def nats_to_bpd(nats, dim: int):
    """Nats per example to bits per dim: ``nats / (dim ln 2)``."""
    dim = check_K(dim, name="dim")
    return np.asarray(nats, np.float64) / (dim * math.log(2.0))


def nelbo_bpd(path, *, logsnrs, mse, prior: float, recon, dim: int) -> float:
    """Negative ELBO in bits/dim of the schedule ``path`` (indices ``0 = j_0 < ... < j_K = T``):
    ``(sum_k L(j_k, j_{k+1}) + prior + recon) / (dim ln 2)``.

    ``recon`` is either the scalar decoder term at ``logsnrs[T]`` (then ``j_K`` must be T) or a
    (T+1,) array of the decoder term at every grid point (:func:`recon_nll` of ``logsnrs``),
    used at ``j_K``: a path may then stop at any grid point, decoding from ``z_{j_K}``.
    """
    lam = check_logsnrs(logsnrs)
    T = lam.shape[0] - 1
    m = _check_mse(mse, T + 1)
    r = np.asarray(recon, np.float64)
    if r.ndim == 0:
        p = check_path(path, T=T)
    else:
        check_shape(r, (T + 1,), name="recon")
        p = check_path(path, T=T, any_end=True)
        r = r[p[-1]]
    check_finite(r, name="recon")
    diffusion = float(np.sum(step_weights(lam)[p[:-1], p[1:]] * m[p[:-1]]))
    return float(nats_to_bpd(diffusion + float(prior) + float(r), dim))


@dataclasses.dataclass(frozen=True)
class ELBOTerms:
    """Everything the bound needs, estimated once for a model and a data batch.

    Per example b of the batch: ``sq_err[j, b]`` (T+1, B), the squared errors of
    :func:`sq_err_per_t`; ``prior_b`` (B,), the prior KL at ``logsnrs[0]``; ``recon_tb[j, b]``
    (T+1, B), the decoder's expected NLL were the sampler to stop and decode at grid point j
    (nats; row T is the bound's, the others serve :meth:`best_paths` with ``choose_end``).
    ``dim``: dims per example. ``mse``, ``prior``, ``recon``, ``recon_t`` are batch means.
    """

    logsnrs: np.ndarray
    sq_err: np.ndarray
    prior_b: np.ndarray
    recon_tb: np.ndarray
    dim: int

    @property
    def T(self) -> int:
        return self.logsnrs.shape[0] - 1

    @property
    def mse(self) -> np.ndarray:
        return self.sq_err.mean(axis=1)

    @property
    def mse_se(self) -> np.ndarray:
        return self.sq_err.std(axis=1, ddof=1) / math.sqrt(self.sq_err.shape[1])

    @property
    def prior(self) -> float:
        return float(np.mean(self.prior_b))

    @property
    def recon_t(self) -> np.ndarray:
        return self.recon_tb.mean(axis=1)

    @property
    def recon(self) -> float:
        return float(self.recon_t[-1])

    @classmethod
    def concatenate(cls, parts) -> "ELBOTerms":
        """The terms of the union of the batches of ``parts`` (same grid and dim), e.g. two halves."""
        parts = list(parts)
        if not parts or any(not np.array_equal(p.logsnrs, parts[0].logsnrs) or p.dim != parts[0].dim for p in parts):
            raise ValueError("parts must be a non-empty sequence of ELBOTerms on the same logsnrs and dim")
        return cls(logsnrs=parts[0].logsnrs, sq_err=np.concatenate([p.sq_err for p in parts], axis=1),
                   prior_b=np.concatenate([p.prior_b for p in parts]),
                   recon_tb=np.concatenate([p.recon_tb for p in parts], axis=1), dim=parts[0].dim)

    def cost_matrix(self) -> np.ndarray:
        return cost_matrix(self.logsnrs, self.mse)

    def per_example_bpd(self, path) -> np.ndarray:
        """The bound of ``path`` for each example b of the batch, in bits/dim (B,):
        ``sum_k w_k sq_err[j_k, b] + prior_b + recon_tb[j_K, b]``, ``w_k = 1/2 (SNR(j_{k+1}) - SNR(j_k))``.
        Its mean is :meth:`nelbo_bpd`; paired differences of two paths on the same batch take their
        standard error from these."""
        p = check_path(path, T=self.T, any_end=True)
        w = step_weights(self.logsnrs)[p[:-1], p[1:]]
        return nats_to_bpd(w @ self.sq_err[p[:-1]] + self.prior_b + self.recon_tb[p[-1]], self.dim)

    def nelbo_bpd(self, path) -> float:
        """:func:`nelbo_bpd` of ``path``; a path ending at ``j_K < T`` decodes from ``z_{j_K}``."""
        return nelbo_bpd(path, logsnrs=self.logsnrs, mse=self.mse, prior=self.prior,
                         recon=self.recon_t, dim=self.dim)

    def nelbo_bpd_se(self, path) -> float:
        """Standard error of :meth:`nelbo_bpd` as an estimate of the expected bound over the data
        distribution: the bound is the batch mean of :meth:`per_example_bpd`, so ``std_b / sqrt(B)``
        counts the noise of eps and of x, with the correlation of the grid points through the
        shared batch."""
        per_ex = self.per_example_bpd(path)
        return float(per_ex.std(ddof=1) / math.sqrt(per_ex.shape[0]))

    def all_steps_bpd_by_end(self) -> np.ndarray:
        """(T+1,): the bound of the path through every grid point from 0 to ``e``, decoding at ``e``,
        for each end ``e`` (entry 0, a path of no step, is +inf)."""
        steps = step_weights(self.logsnrs)[np.arange(self.T), np.arange(1, self.T + 1)] * self.mse[:-1]
        head = np.concatenate([[np.inf], np.cumsum(steps)])            # steps 0 -> e
        return nats_to_bpd(head + self.recon_t + self.prior, self.dim)

    def to_bpd(self, diffusion_nats) -> np.ndarray:
        """Bits/dim of paths ending at T whose diffusion cost is ``diffusion_nats``."""
        return nats_to_bpd(np.asarray(diffusion_nats, np.float64) + self.prior + self.recon, self.dim)

    def best_paths(self, K_max: int, *, choose_end: bool = False) -> OptimalPaths:
        """The bound-minimising K-step schedule for every K = 1..K_max (:func:`ddss_lite.dp.optimal_paths`
        on :meth:`cost_matrix`); ``costs`` are the whole bound in bits/dim.

        ``choose_end=False``: paths end at index T (the paper's problem). ``choose_end=True``:
        the DP's end cost is the decoder term at each grid point, so each path also chooses the
        log-SNR at which it stops and decodes -- an imperfect network is often worse than the
        decoder at high SNR, and stopping earlier gives a tighter bound (the choice VDM makes by
        learning its schedule's endpoint). Either way the paths are chosen on this batch: report
        their bound on held-out data.
        """
        end = self.recon_t if choose_end else None
        res = optimal_paths(self.cost_matrix(), K_max, end_cost=end)
        extra = self.prior + (0.0 if choose_end else self.recon)
        return OptimalPaths(nats_to_bpd(res.costs + extra, self.dim), res.paths)


def model_grid(model, T: int | None = None) -> np.ndarray:
    """The grid the ELBO of ``model`` (a :class:`ddss_lite.Model`) is estimated on, as float64: on a
    discrete schedule its own T timesteps (``lambda_{T-1} < ... < lambda_0``, every step a network
    step of DDPM's bound, the last point the decoder's), on a continuous one ``T`` steps even in the
    schedule's time across ``model.logsnr_range`` (T required)."""
    check_model(model)
    if model.schedule.kind == "discrete":
        if T is not None and T != model.schedule.T:
            raise ValueError(f"T: a discrete model's grid is its own {model.schedule.T} timesteps, got T={T}")
        return check_logsnrs(model.schedule.logsnr_table[::-1].copy())
    if T is None:
        raise ValueError("T (grid steps) is required for a model on a continuous schedule")
    T = check_K(T, name="T")
    t_lo, t_hi = model.schedule.t_range
    lam = np.asarray(model.schedule.logsnr(t_lo + (t_hi - t_lo) * np.linspace(1.0, 0.0, T + 1)), np.float64)
    lam[0], lam[-1] = model.logsnr_range
    return check_logsnrs(lam)


def _denoiser_and_grid(denoise, logsnrs):
    fn, model = as_denoiser(denoise, name="denoise")
    if logsnrs is None:
        if model is None:
            raise ValueError("logsnrs is required with a bare denoise function (a Model has its own grid)")
        return fn, model_grid(model)
    if model is not None:
        check_in_range(logsnrs, model)
    return fn, logsnrs


def elbo_terms(denoise, x, key, logsnrs=None, *, levels=DIGIT_LEVELS) -> ELBOTerms:
    """Estimate every term of the bound: T + 1 network passes on the batch ``x`` (entries on
    ``levels``), the closed-form prior at ``logsnrs[0]``, the exact decoder term at every grid
    point (no network pass). ``denoise`` is a :class:`ddss_lite.Model` or a bare ``denoise(z, logsnr)``;
    for a model ``logsnrs`` defaults to :func:`model_grid` (and a given grid must lie in its range)."""
    check_key(key)
    denoise, logsnrs = _denoiser_and_grid(denoise, logsnrs)
    lam = check_logsnrs(logsnrs)
    xf = _per_example_dims(x)
    if xf.shape[0] < 2:
        raise ValueError(f"x must hold at least 2 examples for a standard error, got {xf.shape[0]}")
    recon_tb = _recon_nll_per_example(x, lam, levels=levels)
    err = np.asarray(sq_err_per_t(denoise, x, key, lam), np.float64)
    return ELBOTerms(logsnrs=lam, sq_err=err, prior_b=_prior_kl_per_example(x, lam[0]),
                     recon_tb=recon_tb, dim=xf.shape[1])


def estimate_nelbo_bpd(denoise, x, key, logsnrs=None, *, path=None, levels=DIGIT_LEVELS) -> float:
    """Negative ELBO in bits/dim of ``path`` (default: every grid step, ``0, 1, ..., T``) for the
    model ``denoise`` on the batch ``x``: :func:`elbo_terms` then :func:`nelbo_bpd`."""
    terms = elbo_terms(denoise, x, key, logsnrs, levels=levels)
    return terms.nelbo_bpd(np.arange(terms.T + 1) if path is None else path)
