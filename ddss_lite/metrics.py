"""Distances between feature sets: KID (unbiased MMD^2) and FID.

A metric is features -> statistics -> number, each step a pure function:

- KID works on the feature sets themselves. :func:`kid` is pure ``jnp`` and
  differentiable (DDSS backpropagates through it); :func:`kid_blocks` is the
  host-side, float64 evaluation estimator with a standard error, matching
  tensorflow-gan's ``kernel_classifier_distance_and_std_from_activations``.
  :func:`kid_linear_loss` is the DDSS training loss (linear kernel, O(N d)).
- FID summarises each set by :func:`gaussian_stats` ``(mu, cov)`` and compares
  two summaries with :func:`fid_from_stats` (float64, host).
- :func:`cached_arrays` stores reference features (or statistics) on disk,
  keyed by a hash of the config that produced them.

Feature arrays have shape ``(rows, d)``: one row per sample, ``d`` the feature width.
Generated features come first in every signature, real (reference) features second.
"""
from __future__ import annotations

import io
import math
import pathlib
import types
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite.validate import check_choice, check_finite, check_K, is_concrete


# --------------------------------------------------------------------------- kernels

def cubic_kernel(a, b):
    """Polynomial kernel ``k(a, b) = (a . b / d + 1)^3``, ``d`` the feature width
    (Binkowski et al. 2018, sec. 3; tensorflow-gan's KID kernel). Returns the Gram matrix."""
    return (a @ b.T / a.shape[-1] + 1.0) ** 3


def linear_kernel(a, b):
    """Linear kernel ``k(a, b) = a . b`` (the DDSS loss, Watson et al. 2022, sec. 4). Gram matrix."""
    return a @ b.T


KERNELS = types.MappingProxyType({"cubic": cubic_kernel, "linear": linear_kernel})


def kernel_fn(kernel: str) -> Callable:
    """Resolve a kernel name (one of :data:`KERNELS`) into its Gram-matrix function."""
    check_choice(kernel, KERNELS, name="kernel")
    return KERNELS[kernel]


# --------------------------------------------------------------------------- checks

def _check_features(x, *, name: str, min_rows: int = 2):
    """``x`` must be a 2-D (rows, d) array with ``rows >= min_rows`` and, when its
    values are known (not under ``jit``/``grad`` tracing), finite."""
    shape = np.shape(x)
    if len(shape) != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, feature width), got shape {shape}")
    dtype = getattr(x, "dtype", None) or np.asarray(x).dtype
    if np.dtype(dtype).kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers (features), got dtype {dtype}")
    if shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows (samples), got {shape[0]}")
    if shape[1] < 1:
        raise ValueError(f"{name} must have feature width >= 1, got shape {shape}")
    if is_concrete(x):
        check_finite(x, name=name)
    return x


def _check_pair(feats_gen, feats_real):
    _check_features(feats_gen, name="feats_gen")
    _check_features(feats_real, name="feats_real")
    d_gen, d_real = np.shape(feats_gen)[1], np.shape(feats_real)[1]
    if d_gen != d_real:
        raise ValueError(f"feats_gen and feats_real must have the same feature width, got {d_gen} and {d_real}")


def _as_float_jnp(x):
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


# --------------------------------------------------------------------------- KID

def _mmd2_unbiased(g, r, k):
    """Unbiased MMD^2 of rows ``g`` (n of them) and ``r`` (m) under Gram function ``k``.
    Uses only operators and array methods, so it runs on NumPy and jnp arrays alike."""
    n, m = g.shape[0], r.shape[0]
    k_gg, k_rr, k_gr = k(g, g), k(r, r), k(g, r)
    return ((k_gg.sum() - k_gg.trace()) / (n * (n - 1))
            + (k_rr.sum() - k_rr.trace()) / (m * (m - 1))
            - 2.0 * k_gr.mean())


def kid(feats_gen, feats_real, *, kernel: str = "cubic"):
    """Kernel Inception Distance: the unbiased MMD^2 estimate on all samples (Binkowski et al. 2018, eq. 3).

    With ``g_1..g_n`` generated and ``r_1..r_m`` real features,

        KID = 1/(n(n-1)) sum_{i!=j} k(g_i, g_j) + 1/(m(m-1)) sum_{i!=j} k(r_i, r_j)
              - 2/(n m) sum_{i,j} k(g_i, r_j).

    ``kernel`` is ``"cubic"`` (``(a.b/d + 1)^3``) or ``"linear"`` (``a.b``). Pure ``jnp``:
    usable under ``jax.grad`` and ``jax.jit``; computed in the inputs' dtype. It can be
    negative (it is unbiased, not clipped). Cost O((n + m)^2 d).
    """
    k = kernel_fn(kernel)
    _check_pair(feats_gen, feats_real)
    return _mmd2_unbiased(_as_float_jnp(feats_gen), _as_float_jnp(feats_real), k)


def kid_linear_loss(feats_gen, feats_real):
    """The DDSS loss: linear-kernel KID without its constant real-real term (Watson et al. 2022, sec. 4).

        L = 1/(N(N-1)) sum_{i!=j} phi(x'_i) . phi(x'_j) - 2/(N M) sum_{i,j} phi(x'_i) . phi(x_j)

    with ``x'`` the N generated and ``x`` the M real samples. The dropped term
    ``1/(M(M-1)) sum_{i!=j} phi(x_i) . phi(x_j)`` does not depend on the sampler, so
    ``kid(g, r, kernel="linear") = kid_linear_loss(g, r) + that term`` and both have the
    same gradient. Computed in O((N + M) d) from sums, with no Gram matrix:
    ``sum_{i!=j} g_i . g_j = ||sum_i g_i||^2 - sum_i ||g_i||^2``. Pure ``jnp``.
    """
    _check_pair(feats_gen, feats_real)
    g, r = _as_float_jnp(feats_gen), _as_float_jnp(feats_real)
    n, m = g.shape[0], r.shape[0]
    s_g = g.sum(axis=0)
    gen_gen = (s_g @ s_g - jnp.sum(g * g)) / (n * (n - 1))
    gen_real = s_g @ r.sum(axis=0) / (n * m)
    return gen_gen - 2.0 * gen_real


def linear_kid_real_term(feats_real) -> float:
    """The real-real term of the linear-kernel KID, ``1/(M(M-1)) sum_{j != j'} r_j . r_j'``, which
    :func:`kid_linear_loss` drops: ``kid(g, r, kernel="linear") = kid_linear_loss(g, r) + this``.
    Host float64, from sums (no Gram matrix)."""
    _check_features(feats_real, name="feats_real")
    r = np.asarray(feats_real, np.float64)
    s = r.sum(axis=0)
    m = r.shape[0]
    return float((s @ s - np.sum(r * r)) / (m * (m - 1)))


def _block_bounds(rows: int, num_blocks: int) -> np.ndarray:
    """Row boundaries of ``num_blocks`` contiguous blocks covering ``rows`` rows in order:
    the first ``num_blocks - rows % num_blocks`` blocks have ``rows // num_blocks`` rows,
    the rest one more (tensorflow-gan's layout)."""
    base, extra = divmod(rows, num_blocks)
    sizes = [base] * (num_blocks - extra) + [base + 1] * extra
    return np.concatenate([[0], np.cumsum(sizes)])


def kid_blocks(feats_gen, feats_real, *, kernel: str = "cubic", num_blocks: int | None = None,
               max_block_size: int | None = None) -> tuple[float, float]:
    """Block estimate of KID and its standard error, as tensorflow-gan's
    ``kernel_classifier_distance_and_std_from_activations`` (block estimator of Zaremba et al. 2013).

    Both sets are cut, in row order, into the same number ``B`` of contiguous blocks; within
    a set the block sizes differ by at most one (the smaller blocks first), so real and
    generated blocks can differ in size. Block b gives the unbiased MMD^2 ``e_b`` of its
    generated rows against its real rows (the formula of :func:`kid`), and

        mean = 1/B sum_b e_b,    std_err = sqrt( sum_b (e_b - mean)^2 / (B - 1) / B ),

    ``std_err`` is NaN when ``B = 1``. ``B`` is ``num_blocks`` when given, else
    ``ceil(max(n, m) / max_block_size)`` with ``max_block_size`` 1024 by default (tf-gan's
    rule); give at most one of the two. Every block must hold at least 2 rows of each set.
    Rows should be in random order. Host-side, float64; returns Python floats.
    """
    k = kernel_fn(kernel)
    _check_pair(feats_gen, feats_real)
    g = np.asarray(feats_gen, dtype=np.float64)
    r = np.asarray(feats_real, dtype=np.float64)
    n, m = g.shape[0], r.shape[0]
    if num_blocks is not None and max_block_size is not None:
        raise ValueError("give num_blocks or max_block_size, not both")
    if num_blocks is None:
        max_block_size = check_K(1024 if max_block_size is None else max_block_size, name="max_block_size")
        num_blocks = math.ceil(max(n, m) / max_block_size)
    num_blocks = check_K(num_blocks, name="num_blocks")
    if num_blocks > min(n, m) // 2:
        origin = "" if max_block_size is None else f" (from max_block_size={max_block_size})"
        raise ValueError(f"num_blocks={num_blocks}{origin} leaves blocks with fewer than 2 rows: feats_gen has {n} rows "
                         f"and feats_real {m}, so at most {min(n, m) // 2} blocks are possible")
    bg, br = _block_bounds(n, num_blocks), _block_bounds(m, num_blocks)
    ests = np.array([_mmd2_unbiased(g[bg[b]:bg[b + 1]], r[br[b]:br[b + 1]], k) for b in range(num_blocks)])
    mean = ests.mean()
    if num_blocks == 1:
        return float(mean), float("nan")
    var = np.sum((ests - mean) ** 2) / (num_blocks - 1)
    return float(mean), float(np.sqrt(var / num_blocks))


# --------------------------------------------------------------------------- FID

def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, cov)`` of features, float64: the mean and the unbiased (``rows - 1``) covariance,
    as tensorflow-gan, pytorch-fid and clean-fid use for FID."""
    _check_features(feats, name="feats")
    x = np.asarray(feats, dtype=np.float64)
    mu = x.mean(axis=0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _clip_roundoff(w):
    """Eigenvalues of a symmetric PSD matrix with those below its round-off level,
    ``d * eps * max|w|`` (the numerical-rank cutoff of ``np.linalg.matrix_rank``), set to 0."""
    tol = w.shape[0] * np.finfo(w.dtype).eps * np.max(np.abs(w), initial=0.0)
    return np.where(w > tol, w, 0.0)


def sqrtm_psd(cov) -> np.ndarray:
    """Symmetric PSD square root ``S`` with ``S S = cov``, float64, by eigendecomposition of the
    symmetrised matrix; eigenvalues below round-off (including small negative ones) are set to 0."""
    c = np.asarray(cov, dtype=np.float64)
    w, v = np.linalg.eigh(0.5 * (c + c.T))
    return (v * np.sqrt(_clip_roundoff(w))) @ v.T


def _check_stats(mu, cov, *, name: str):
    mu, cov = np.asarray(mu, dtype=np.float64), np.asarray(cov, dtype=np.float64)
    if mu.ndim != 1:
        raise ValueError(f"mu{name} must be a 1-D mean vector, got shape {mu.shape}")
    if cov.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"cov{name} must have shape {(mu.shape[0], mu.shape[0])} to match mu{name}, got {cov.shape}")
    check_finite(mu, name=f"mu{name}")
    check_finite(cov, name=f"cov{name}")
    scale = max(float(np.max(np.abs(cov), initial=0.0)), np.finfo(np.float64).tiny)
    tol = 1e-8 * scale
    if np.max(np.abs(cov - cov.T), initial=0.0) > tol:
        raise ValueError(f"cov{name} must be symmetric (a covariance matrix), but |cov - cov^T| reaches "
                         f"{np.max(np.abs(cov - cov.T)):.3g}")
    w_min = float(np.linalg.eigvalsh(0.5 * (cov + cov.T)).min(initial=0.0))
    if w_min < -cov.shape[0] * 1e-10 * scale:
        raise ValueError(f"cov{name} must be positive semi-definite (a covariance matrix), "
                         f"but its smallest eigenvalue is {w_min:.3g}")
    return mu, cov


def fid_from_stats(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance of two Gaussians (Heusel et al. 2017, eq. 6; Dowson & Landau 1982):

        FID = ||mu1 - mu2||^2 + tr(cov1) + tr(cov2) - 2 tr((cov1 cov2)^{1/2}).

    ``tr((cov1 cov2)^{1/2}) = tr((S cov2 S)^{1/2})`` with ``S = cov1^{1/2}``: the same
    eigenvalues, but of a symmetric PSD matrix, so it is the sum of the square roots of its
    eigenvalues and never complex. Eigenvalues below round-off (``d * eps * max``, including
    small negative ones) count as 0: ``sqrt`` would turn 1e-16 noise into 1e-8 per direction,
    which matters when covariances are singular (fewer rows than features). Float64 on the host; returns a Python float
    (not clipped at 0, so round-off can leave it slightly negative for identical inputs).
    """
    mu1, cov1 = _check_stats(mu1, cov1, name="1")
    mu2, cov2 = _check_stats(mu2, cov2, name="2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"the two Gaussians must have the same dimension, got {mu1.shape[0]} and {mu2.shape[0]}")
    s1 = sqrtm_psd(cov1)
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(_clip_roundoff(np.linalg.eigvalsh(0.5 * (m + m.T)))).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def fid(feats_a, feats_b) -> float:
    """FID of two feature sets: :func:`fid_from_stats` of their :func:`gaussian_stats`."""
    _check_features(feats_a, name="feats_a")
    _check_features(feats_b, name="feats_b")
    if np.shape(feats_a)[1] != np.shape(feats_b)[1]:
        raise ValueError(f"feats_a and feats_b must have the same feature width, "
                         f"got {np.shape(feats_a)[1]} and {np.shape(feats_b)[1]}")
    return fid_from_stats(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# --------------------------------------------------------------------------- cache

def cached_arrays(config: dict, compute: Callable[[], dict], *, cache_dir, name: str = "features") -> dict:
    """Arrays (e.g. reference features, or their ``mu``/``cov``) computed once per ``config``.

    Looks for ``cache_dir/<name>-<hash of config>.npz``; if absent or unreadable (a warning
    says so), calls ``compute()`` -> ``{key: array}``, writes the arrays atomically (temporary
    file in the same directory, then ``os.replace``) and returns them. The config's JSON is
    stored beside the arrays and checked on load. Returns ``{key: np.ndarray}``.
    """

    from ddss_lite.store import atomic_write_bytes, canonical_json, config_hash

    config_json = canonical_json(config)
    path = pathlib.Path(cache_dir) / f"{name}-{config_hash(config)}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as f:
                if str(f["__config__"]) != config_json:
                    raise ValueError("written for another config")
                return {key: f[key] for key in f.files if key != "__config__"}
        except Exception as e:  # zipfile / numpy raise several types on a damaged file
            warnings.warn(f"{path}: unusable cache entry ({type(e).__name__}: {e}); recomputing", stacklevel=2)
    arrays = {key: np.asarray(value) for key, value in dict(compute()).items()}
    if not arrays or any(not isinstance(key, str) or key.startswith("__") for key in arrays):
        raise ValueError(f"compute() must return a non-empty dict with string keys not starting with '__', "
                         f"got keys {list(arrays)}")
    buf = io.BytesIO()
    np.savez(buf, __config__=np.array(config_json), **arrays)
    atomic_write_bytes(path, buf.getvalue())
    return arrays
