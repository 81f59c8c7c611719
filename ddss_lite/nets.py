"""Small Flax networks conditioned on log-SNR, and the classifiers used as feature maps.

Every denoising network has the call ``net.apply({"params": p}, z, logsnr) -> prediction``
with ``z`` of shape (B, ...) and ``logsnr`` of shape (B,); :func:`apply_fn` wraps that into
the ``apply_fn(params, z, logsnr)`` form that :func:`ddss_lite.diffusion.make_denoiser` takes.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddss_lite.validate import check_choice, check_K


def logsnr_embedding(logsnr, dim: int, *, max_period: float = 1e4):
    """Sinusoidal embedding of ``logsnr`` (scaled to t-like units, lambda / 40 + 0.5 in [0, 1])."""
    u = (jnp.asarray(logsnr, jnp.float32) / 40.0 + 0.5) * 1000.0
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    ang = u[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


class MLPDenoiser(nn.Module):
    """Residual MLP on the flattened input, with the log-SNR embedding added in every block."""

    hidden: int = 256
    depth: int = 3
    emb_dim: int = 64

    @nn.compact
    def __call__(self, z, logsnr):
        shape = z.shape
        h = z.reshape(shape[0], -1)
        emb = nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(logsnr_embedding(logsnr, self.emb_dim))))
        h = nn.Dense(self.hidden)(h)
        for _ in range(self.depth):
            r = nn.silu(nn.LayerNorm()(h + emb))
            h = h + nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(r)))
        out = nn.Dense(math.prod(shape[1:]), kernel_init=nn.initializers.zeros)(nn.silu(nn.LayerNorm()(h)))
        return out.reshape(shape)


class _ResBlock(nn.Module):
    channels: int

    @nn.compact
    def __call__(self, h, emb):
        r = nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(num_groups=8)(h)))
        r = r + nn.Dense(self.channels)(emb)[:, None, None, :]
        r = nn.Conv(self.channels, (3, 3))(nn.silu(nn.GroupNorm(num_groups=8)(r)))
        if h.shape[-1] != self.channels:
            h = nn.Conv(self.channels, (1, 1))(h)
        return h + r


class UNetDenoiser(nn.Module):
    """A two-level U-Net for small images (e.g. 8x8 digits): channels ``(c, 2c)``, NHWC input."""

    channels: int = 32
    emb_dim: int = 128

    @nn.compact
    def __call__(self, z, logsnr):
        c = self.channels
        emb = nn.Dense(self.emb_dim)(nn.silu(nn.Dense(self.emb_dim)(logsnr_embedding(logsnr, self.emb_dim))))
        h0 = nn.Conv(c, (3, 3))(z)
        h1 = _ResBlock(c)(h0, emb)
        h2 = _ResBlock(2 * c)(nn.avg_pool(h1, (2, 2), (2, 2)), emb)
        h2 = _ResBlock(2 * c)(h2, emb)
        up = jax.image.resize(h2, h1.shape[:3] + (h2.shape[-1],), "nearest")
        h = _ResBlock(c)(jnp.concatenate([up, h1], axis=-1), emb)
        return nn.Conv(z.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(nn.silu(nn.GroupNorm(8)(h)))


DENOISERS = ("mlp", "unet")


def make_denoiser_net(kind: str, *, hidden: int, depth: int = 3) -> nn.Module:
    """The denoising network called ``kind`` (``"mlp"`` or ``"unet"``; ``hidden`` is width or base channels)."""
    check_choice(kind, DENOISERS, name="net")
    check_K(hidden, name="hidden (width or base channels)")
    check_K(depth, name="depth (hidden layers)", low=0)
    return MLPDenoiser(hidden=hidden, depth=depth) if kind == "mlp" else UNetDenoiser(channels=hidden)


def apply_fn(module: nn.Module):
    """``(params, z, logsnr) -> module.apply({"params": params}, z, logsnr)``."""
    return lambda params, z, logsnr: module.apply({"params": params}, z, logsnr)


class MLPClassifier(nn.Module):
    """Classifier on flattened images; ``features`` returns the penultimate activations."""

    widths: Sequence[int] = (256, 128)
    n_classes: int = 10

    @nn.compact
    def __call__(self, x, *, features: bool = False):
        h = x.reshape(x.shape[0], -1)
        for w in self.widths:
            h = nn.relu(nn.Dense(w)(h))
        return h if features else nn.Dense(self.n_classes)(h)


class CNNClassifier(nn.Module):
    """Small convolutional classifier for NHWC images; ``features`` returns the penultimate activations."""

    channels: Sequence[int] = (16, 32)
    feature_dim: int = 64
    n_classes: int = 10

    @nn.compact
    def __call__(self, x, *, features: bool = False):
        h = x
        for c in self.channels:
            h = nn.relu(nn.Conv(c, (3, 3))(h))
            h = nn.max_pool(h, (2, 2), (2, 2))
        h = nn.relu(nn.Dense(self.feature_dim)(h.reshape(h.shape[0], -1)))
        return h if features else nn.Dense(self.n_classes)(h)
