"""Log-SNR noise schedules and time grids.

Everything in ddss_lite is parameterised by the log signal-to-noise ratio
``logsnr = lambda = log(alpha^2 / sigma^2)`` of a variance-preserving process,

    alpha^2 = sigmoid(lambda),    sigma^2 = sigmoid(-lambda),

so ``alpha^2 + sigma^2 = 1``. Time ``t`` runs from 0 (data, high log-SNR) to
1 (noise, low log-SNR); a schedule is a strictly decreasing map t -> lambda.

A sampling *grid* is an array ``logsnrs`` of K + 1 strictly increasing values,
``logsnrs[0] = lambda(t = 1)`` (noisiest) to ``logsnrs[K] = lambda(t = 0)`` (cleanest):
step i (i = 0..K-1) maps the state at ``logsnrs[i]`` to the state at ``logsnrs[i+1]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite.validate import check_K, check_increasing

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


def alpha_sigma(logsnr):
    """``(alpha, sigma)`` of a VP process: ``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``."""
    logsnr = jnp.asarray(logsnr)
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def snr(logsnr):
    """``SNR = alpha^2 / sigma^2 = exp(lambda)``."""
    return jnp.exp(logsnr)


def logsnr_cosine(t, *, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX):
    """Cosine schedule (Nichol & Dhariwal 2021) in log-SNR form, clipped to [min, max].

    ``lambda(t) = -2 log tan(a t + b)`` with ``b = arctan(exp(-lambda_max / 2))`` and
    ``a = arctan(exp(-lambda_min / 2)) - b``, so lambda(0) = lambda_max, lambda(1) = lambda_min.
    """
    if not logsnr_min < logsnr_max:
        raise ValueError(f"logsnr_min must be < logsnr_max, got {logsnr_min} >= {logsnr_max}")
    b = np.arctan(np.exp(-0.5 * logsnr_max))
    a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
    if isinstance(t, (np.ndarray, np.generic, float, int)):  # host input: float64, exact endpoints
        t64 = np.asarray(t, np.float64)
        if not np.all((t64 >= 0.0) & (t64 <= 1.0)):           # NaN fails too
            bad = t64[~((t64 >= 0.0) & (t64 <= 1.0))]
            raise ValueError(f"t must be in [0, 1] (0 = data, 1 = noise), got {bad.ravel()[:5].tolist()}")
        return -2.0 * np.log(np.tan(a * t64 + b))
    return -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t, jnp.float32) + b))


def t_from_logsnr_cosine(logsnr, *, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX):
    """Inverse of :func:`logsnr_cosine`."""
    b = np.arctan(np.exp(-0.5 * logsnr_max))
    a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
    return (jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr))) - b) / a


def ddpm_logsnr(T: int = 1000, *, beta_1: float = 1e-4, beta_T: float = 0.02):
    """Log-SNR of the discrete linear-beta DDPM schedule (Ho et al. 2020), steps t = 1..T.

    ``bar_alpha_t = prod_{s<=t} (1 - beta_s)``, ``lambda_t = log(bar_alpha_t / (1 - bar_alpha_t))``.
    Returns a float64 NumPy array of shape (T,), strictly decreasing in t.
    """
    check_K(T, name="T")
    if not 0.0 < beta_1 <= beta_T < 1.0:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
    betas = np.linspace(beta_1, beta_T, T, dtype=np.float64)
    log_bar_alpha = np.cumsum(np.log1p(-betas))
    # log(1 - bar_alpha) = log(-expm1(log bar_alpha)), stable for bar_alpha near 1.
    return log_bar_alpha - np.log(-np.expm1(log_bar_alpha))


def even_times(K: int):
    """K + 1 evenly spaced times ``t_K = 1 > ... > t_0 = 0`` (returned in that order)."""
    check_K(K)
    return np.linspace(1.0, 0.0, K + 1)


def quadratic_times(K: int):
    """K + 1 times ``t_i = (i / K)^2`` (quadratic stride, as in DDIM), ordered from 1 to 0."""
    check_K(K)
    return np.linspace(1.0, 0.0, K + 1) ** 2


_GRIDS = {"even": even_times, "quadratic": quadratic_times}


def grid(K: int, *, kind: str = "even", schedule=logsnr_cosine):
    """A sampling grid: K + 1 strictly increasing log-SNRs from ``schedule(1)`` to ``schedule(0)``.

    ``kind`` is one of ``"even"`` (even stride in t) or ``"quadratic"``.
    """
    if kind not in _GRIDS:
        raise ValueError(f"kind must be one of {sorted(_GRIDS)}, got {kind!r}")
    logsnrs = np.asarray(np.asarray(schedule(_GRIDS[kind](K)), np.float64).astype(np.float32))
    check_increasing(logsnrs, name="logsnrs")    # on the host, in float32: also inside a jit trace
    return jnp.asarray(logsnrs)
