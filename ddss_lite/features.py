"""Feature maps for KID/FID: classifier penultimate activations on digits, random
Fourier features on 2-D data. Two independent maps of each kind: one that the sampler
search optimises against, one held out for evaluation only."""
from __future__ import annotations

import dataclasses
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite.validate import check_K


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """``phi(x) -> (N, d)`` features, with a name and (for classifiers) the test accuracy."""

    name: str
    phi: Callable[[jax.Array], jax.Array]
    dim: int
    test_accuracy: float | None = None

    def __call__(self, x):
        return self.phi(x)


def rff(key, *, in_dim: int = 2, n_features: int = 256, bandwidth: float = 0.5, name: str = "rff") -> FeatureMap:
    """Random Fourier features (Rahimi & Recht 2007) of a Gaussian kernel of width ``bandwidth``:

    ``phi(x) = sqrt(2 / D) cos(W x + b)``, ``W ~ N(0, 1 / bandwidth^2)``, ``b ~ U[0, 2 pi)``,
    so ``phi(x) . phi(y) ~= exp(-||x - y||^2 / (2 bandwidth^2))``.
    """
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    check_K(n_features, name="n_features")
    k_w, k_b = jax.random.split(key)
    W = jax.random.normal(k_w, (in_dim, n_features)) / bandwidth
    b = jax.random.uniform(k_b, (n_features,), maxval=2 * np.pi)
    phi = lambda x: jnp.sqrt(2.0 / n_features) * jnp.cos(x.reshape(x.shape[0], -1) @ W + b)
    return FeatureMap(name, phi, n_features)


def classifier_features(module: nn.Module, params, *, input_shape: tuple, name: str, scale: float = 1.0,
                        test_accuracy: float | None = None) -> FeatureMap:
    """The penultimate activations ``module.apply(params, x, features=True) / scale`` as a feature map.

    A constant ``scale`` (e.g. the features' RMS on training data) puts ``a . b / d`` near 1, so
    cubic-kernel KID values are of order one; it changes no comparison between samplers.
    """
    phi = lambda x: module.apply({"params": params}, x, features=True) / scale
    dim = int(jax.eval_shape(phi, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)).shape[-1])
    return FeatureMap(name, phi, dim, test_accuracy)


def batched(phi: Callable, x, *, batch_size: int = 1024):
    """Apply ``phi`` to ``x`` in batches (bounded memory); returns a NumPy array."""
    check_K(batch_size, name="batch_size")
    if not callable(phi):
        raise TypeError(f"phi must be a feature map x -> (n, d) features, got {type(phi).__name__}")
    if np.ndim(x) < 1 or len(x) == 0:
        raise ValueError(f"x must hold at least one example (rows first), got shape {np.shape(x)}")
    return np.concatenate([np.asarray(phi(x[i:i + batch_size])) for i in range(0, len(x), batch_size)])


def toy_feature_maps(*, seed: int = 0) -> dict[str, FeatureMap]:
    """``{"opt", "eval"}`` random-Fourier-feature maps for 2-D data, from independent keys
    and different bandwidths (0.5 and 0.3), so the evaluation kernel is not the optimised one."""
    key = jax.random.PRNGKey(seed)
    return {"opt": rff(jax.random.fold_in(key, 1), bandwidth=0.5, name="opt-rff"),
            "eval": rff(jax.random.fold_in(key, 2), bandwidth=0.3, name="eval-rff")}
