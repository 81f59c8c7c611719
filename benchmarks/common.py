"""Shared pieces of the benchmark scripts: a random plain-jnp MLP denoiser of a given size."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def mlp_params(key, *, dim, width, depth):
    """Random weights of a ``depth``-hidden-layer MLP on ``[z, logsnr features]``."""
    sizes = [dim + 3] + [width] * depth + [dim]
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b)) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]


def mlp_denoiser(weights):
    """``denoise(z, logsnr) -> x_hat``: a plain-jnp MLP, log-SNR fed as (lambda/20, sin, cos)."""
    def denoise(z, logsnr):
        lam = jnp.broadcast_to(jnp.asarray(logsnr, z.dtype), z.shape[:1])[:, None] / 20.0
        h = jnp.concatenate([z, lam, jnp.sin(3 * lam), jnp.cos(3 * lam)], axis=1)
        for w, b in weights[:-1]:
            h = jax.nn.gelu(h @ w + b)
        w, b = weights[-1]
        return h @ w + b
    return denoise
