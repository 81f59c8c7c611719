"""The forward process, prediction conversions and denoiser adapters.

Forward (variance preserving): ``z_t = alpha_t x + sigma_t eps`` with
``(alpha_t, sigma_t) = alpha_sigma(lambda_t)``. A network may predict ``eps``,
``x`` or ``v = alpha eps - sigma x`` (Salimans & Ho 2022, eq. 8); every
sampler in ddss_lite consumes one contract only:

    denoise(z, logsnr) -> x_hat

where ``logsnr`` is a scalar or has shape ``z.shape[:1]``.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ddss_lite.schedules import alpha_sigma
from ddss_lite.validate import check_choice

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


def bcast(a, z):
    """Broadcast a scalar or per-example array ``a`` (shape (B,)) against ``z`` of shape (B, ...),
    in ``z``'s dtype (the one helper every module uses for per-example coefficients)."""
    z = jnp.asarray(z)
    a = jnp.asarray(a, z.dtype)
    return a.reshape(a.shape + (1,) * (z.ndim - a.ndim)) if a.ndim else a


def q_sample(*, x, eps, logsnr):
    """Sample the forward marginal ``q(z_t | x)``: ``z_t = alpha_t x + sigma_t eps``."""
    alpha, sigma = alpha_sigma(logsnr)
    return bcast(alpha, x) * x + bcast(sigma, x) * eps


# The conversions take keyword arguments only: two arrays of the same shape and type must never be
# swappable by position (``x_from_eps(z=z, eps=eps_hat, logsnr=lam)``).


def eps_from_x(*, z, x, logsnr):
    """``eps = (z - alpha x) / sigma``."""
    alpha, sigma = alpha_sigma(logsnr)
    return (z - bcast(alpha, z) * x) / bcast(sigma, z)


def x_from_eps(*, z, eps, logsnr):
    """``x = (z - sigma eps) / alpha``."""
    alpha, sigma = alpha_sigma(logsnr)
    return (z - bcast(sigma, z) * eps) / bcast(alpha, z)


def v_from_x_eps(*, x, eps, logsnr):
    """``v = alpha eps - sigma x``."""
    alpha, sigma = alpha_sigma(logsnr)
    return bcast(alpha, x) * eps - bcast(sigma, x) * x


def x_from_v(*, z, v, logsnr):
    """``x = alpha z - sigma v`` (since alpha^2 + sigma^2 = 1)."""
    alpha, sigma = alpha_sigma(logsnr)
    return bcast(alpha, z) * z - bcast(sigma, z) * v


def eps_from_v(*, z, v, logsnr):
    """``eps = sigma z + alpha v``."""
    alpha, sigma = alpha_sigma(logsnr)
    return bcast(sigma, z) * z + bcast(alpha, z) * v


PREDICTIONS = ("eps", "x", "v")
_TO_X_HAT = {
    "eps": lambda z, out, logsnr: x_from_eps(z=z, eps=out, logsnr=logsnr),
    "x": lambda z, out, logsnr: out,
    "v": lambda z, out, logsnr: x_from_v(z=z, v=out, logsnr=logsnr),
}


def to_x_hat(prediction: str):
    """Resolve ``prediction`` (one of :data:`PREDICTIONS`) once into ``(z, net_output, logsnr) -> x_hat``."""
    check_choice(prediction, PREDICTIONS, name="prediction")
    return _TO_X_HAT[prediction]


def make_denoiser(apply_fn, params, *, prediction: str = "eps", clip: float | None = None) -> Denoiser:
    """Adapt a network ``apply_fn(params, z, logsnr)`` predicting eps/x/v into ``denoise(z, logsnr) -> x_hat``.

    ``logsnr`` may be a scalar; it is broadcast to the batch. ``clip`` clips ``x_hat`` to ``[-clip, clip]``.
    """
    convert = to_x_hat(prediction)
    if clip is not None and not float(clip) > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip!r}")

    def denoise(z, logsnr):
        logsnr_b = jnp.broadcast_to(jnp.asarray(logsnr, z.dtype), z.shape[:1])
        x_hat = convert(z, apply_fn(params, z, logsnr_b), logsnr_b)
        return x_hat if clip is None else jnp.clip(x_hat, -clip, clip)

    return denoise


WEIGHTINGS = ("eps", "v", "snr_trunc", "x")
_WEIGHTS = {
    "eps": lambda snr: snr,
    "v": lambda snr: 1.0 + snr,
    "snr_trunc": lambda snr: jnp.maximum(snr, 1.0),
    "x": lambda snr: jnp.ones_like(snr),
}


def weight_fn(weighting: str):
    """Resolve ``weighting`` once into ``logsnr -> w``, the per-example weight on ``||x - x_hat||^2``.

    ``"eps"``: ``SNR`` (the eps-MSE of Ho et al. 2020); ``"v"``: ``1 + SNR`` (the v-MSE,
    since ``x - x_hat = sigma (v - v_hat)``); ``"snr_trunc"``: ``max(SNR, 1)`` (truncated SNR,
    Salimans & Ho 2022, eq. 9); ``"x"``: 1.
    """
    check_choice(weighting, WEIGHTINGS, name="weighting")
    w = _WEIGHTS[weighting]
    return lambda logsnr: w(jnp.exp(logsnr))


def loss_weight(logsnr, weighting: str):
    """``weight_fn(weighting)(logsnr)``."""
    return weight_fn(weighting)(logsnr)


def make_denoising_loss(apply_fn, *, logsnr_fn, prediction: str = "eps", weighting: str = "eps"):
    """``loss(params, x, key)``: the Monte-Carlo denoising loss ``E_{t, eps} w(lambda_t) ||x - x_hat(z_t)||^2 / dim``.

    ``t ~ U[0, 1]`` per example and ``lambda_t = logsnr_fn(t)``. ``prediction`` and ``weighting``
    are resolved here, once. With ``weighting="eps"`` the loss equals the eps-prediction MSE
    ``||eps - eps_hat||^2`` used to train DDPM.
    """
    convert, weight = to_x_hat(prediction), weight_fn(weighting)

    def loss(params, x, key):
        k_t, k_eps = jax.random.split(key)
        t = jax.random.uniform(k_t, x.shape[:1])
        logsnr = logsnr_fn(t)
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        z = q_sample(x=x, eps=eps, logsnr=logsnr)
        x_hat = convert(z, apply_fn(params, z, logsnr), logsnr)
        per_ex = jnp.mean(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=1)
        return jnp.mean(weight(logsnr) * per_ex)

    return loss


def denoising_loss(apply_fn, params, x, key, *, logsnr_fn, prediction: str = "eps", weighting: str = "eps"):
    """One evaluation of :func:`make_denoising_loss` (build the loss once when calling it repeatedly)."""
    return make_denoising_loss(apply_fn, logsnr_fn=logsnr_fn, prediction=prediction, weighting=weighting)(
        params, x, key)
