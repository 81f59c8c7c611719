"""Input checks shared by the library: each raises ``ValueError`` naming the
parameter and its valid range, so bad input fails at the edge, not deep in the math."""
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
