"""Input checks shared by the library: each raises ``ValueError`` naming the
parameter and its valid range, so bad input fails at the edge, not deep in the math.
The bottom of the library: it imports no other ``ddss_lite`` module."""
from __future__ import annotations

import numpy as np


def check_K(K, *, name: str = "K", low: int = 1, high: int | None = None) -> int:
    """``K`` must be an integer with ``low <= K`` (and ``K <= high`` when given)."""
    if isinstance(K, bool) or not isinstance(K, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {low}, got {K!r}")
    if K < low or (high is not None and K > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {rng}, got {K}")
    return int(K)


def check_finite(x, *, name: str):
    """Raise if ``x`` (an array or a pytree of arrays) holds NaN or Inf. Host-side check."""
    import jax

    for leaf in jax.tree_util.tree_leaves(x):
        a = np.asarray(leaf)
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite, but holds NaN or Inf")
    return x


def check_increasing(x, *, name: str):
    """``x`` must be a 1-D array of at least 2 finite, strictly increasing values."""
    a = np.asarray(x)
    if a.ndim != 1 or a.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D array of length >= 2, got shape {a.shape}")
    check_finite(a, name=name)
    if not np.all(np.diff(a) > 0):
        raise ValueError(f"{name} must be strictly increasing (monotone), got {a.tolist()}")
    return x


def check_choice(value, choices, *, name: str):
    """``value`` must be one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_shape(x, shape, *, name: str):
    """``x.shape`` must equal ``shape``; ``None`` in ``shape`` matches any size."""
    got = tuple(np.shape(x))
    if len(got) != len(shape) or any(s is not None and s != g for s, g in zip(shape, got)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"{name} must have shape {want}, got {got}")
    return x


def is_concrete(x) -> bool:
    """True when no leaf of ``x`` is a tracer: value checks run only on concrete inputs."""
    import jax

    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def check_key(key, *, name: str = "key"):
    """``key`` must be a JAX PRNG key: a typed key array of shape () or a raw ``uint32`` array
    of shape (2,) (``jax.random.PRNGKey``)."""
    import jax

    dtype = getattr(key, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if key.shape != ():
            raise ValueError(f"{name} must be a single PRNG key, got a key array of shape {key.shape}")
        return key
    if dtype is None or np.dtype(dtype) != np.uint32 or tuple(np.shape(key)) != (2,):
        got = f"{type(key).__name__} of dtype {dtype} and shape {np.shape(key)}" if dtype is not None else repr(key)
        raise ValueError(f"{name} must be a PRNG key (jax.random.PRNGKey(seed) or jax.random.key(seed)), got {got}")
    return key


def check_sample_shape(shape) -> tuple:
    """``shape`` must be a non-empty tuple of positive integers, batch axis first."""
    try:
        shape = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a tuple (B, ...) of positive integers, got {shape!r}") from None
    if not shape:
        raise ValueError("shape must be a tuple (B, ...) of positive integers with a batch axis, got ()")
    for d in shape:
        check_K(d, name="shape entries")
    return shape
