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


def _bcast(a, z):
    """Broadcast a scalar or per-example array ``a`` against ``z`` of shape (B, ...)."""
    z = jnp.asarray(z)
    a = jnp.asarray(a, z.dtype)
    return a.reshape(a.shape + (1,) * (z.ndim - a.ndim)) if a.ndim else a


def q_sample(x, eps, logsnr):
    """Sample the forward marginal ``q(z_t | x)``: ``z_t = alpha_t x + sigma_t eps``."""
    alpha, sigma = alpha_sigma(logsnr)
    return _bcast(alpha, x) * x + _bcast(sigma, x) * eps


def eps_from_x(z, x_hat, logsnr):
    """``eps = (z - alpha x) / sigma``."""
    alpha, sigma = alpha_sigma(logsnr)
    return (z - _bcast(alpha, z) * x_hat) / _bcast(sigma, z)


def x_from_eps(z, eps_hat, logsnr):
    """``x = (z - sigma eps) / alpha``."""
    alpha, sigma = alpha_sigma(logsnr)
    return (z - _bcast(sigma, z) * eps_hat) / _bcast(alpha, z)


def v_from_x_eps(x, eps, logsnr):
    """``v = alpha eps - sigma x``."""
    alpha, sigma = alpha_sigma(logsnr)
    return _bcast(alpha, x) * eps - _bcast(sigma, x) * x


def x_from_v(z, v_hat, logsnr):
    """``x = alpha z - sigma v`` (since alpha^2 + sigma^2 = 1)."""
    alpha, sigma = alpha_sigma(logsnr)
    return _bcast(alpha, z) * z - _bcast(sigma, z) * v_hat


def eps_from_v(z, v_hat, logsnr):
    """``eps = sigma z + alpha v``."""
    alpha, sigma = alpha_sigma(logsnr)
    return _bcast(sigma, z) * z + _bcast(alpha, z) * v_hat


PREDICTIONS = ("eps", "x", "v")


def to_x_hat(prediction: str):
    """The map ``(z, net_output, logsnr) -> x_hat`` for a network predicting ``prediction``."""
    check_choice(prediction, PREDICTIONS, name="prediction")
    return {"eps": x_from_eps, "x": lambda z, x, logsnr: x, "v": x_from_v}[prediction]


def make_denoiser(apply_fn, params, *, prediction: str = "eps", clip: float | None = None) -> Denoiser:
    """Adapt a network ``apply_fn(params, z, logsnr)`` predicting eps/x/v into ``denoise(z, logsnr) -> x_hat``.

    ``logsnr`` may be a scalar; it is broadcast to the batch. ``clip`` clips ``x_hat`` to ``[-clip, clip]``.
    """
    convert = to_x_hat(prediction)

    def denoise(z, logsnr):
        logsnr_b = jnp.broadcast_to(jnp.asarray(logsnr, z.dtype), z.shape[:1])
        x_hat = convert(z, apply_fn(params, z, logsnr_b), logsnr_b)
        return x_hat if clip is None else jnp.clip(x_hat, -clip, clip)

    return denoise


WEIGHTINGS = ("eps", "v", "snr_trunc", "x")


def loss_weight(logsnr, weighting: str):
    """Per-example weight on ``||x - x_hat||^2`` for the denoising loss.

    ``"eps"``: ``SNR`` (the eps-MSE of Ho et al. 2020); ``"v"``: ``1 + SNR`` (the v-MSE,
    since ``x - x_hat = sigma (v - v_hat)``); ``"snr_trunc"``: ``max(SNR, 1)`` (truncated SNR,
    Salimans & Ho 2022, eq. 9); ``"x"``: 1.
    """
    check_choice(weighting, WEIGHTINGS, name="weighting")
    snr = jnp.exp(logsnr)
    return {"eps": snr, "v": 1.0 + snr, "snr_trunc": jnp.maximum(snr, 1.0), "x": jnp.ones_like(snr)}[weighting]


def denoising_loss(apply_fn, params, x, key, *, logsnr_fn, prediction: str = "eps", weighting: str = "eps"):
    """Monte-Carlo denoising loss ``E_{t, eps} w(lambda_t) ||x - x_hat(z_t)||^2 / dim``.

    ``t ~ U[0, 1]`` per example and ``lambda_t = logsnr_fn(t)``. With ``weighting="eps"`` this
    equals the eps-prediction MSE ``||eps - eps_hat||^2`` used to train DDPM.
    """
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, x.shape[:1])
    logsnr = logsnr_fn(t)
    eps = jax.random.normal(k_eps, x.shape, x.dtype)
    z = q_sample(x, eps, logsnr)
    x_hat = to_x_hat(prediction)(z, apply_fn(params, z, logsnr), logsnr)
    per_ex = jnp.mean(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=1)
    return jnp.mean(loss_weight(logsnr, weighting) * per_ex)
