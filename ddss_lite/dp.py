"""Least-cost K-step schedules on a grid, for every K at once, by dynamic programming.

Watson, Ho, Norouzi & Chan (2021), "Learning to efficiently sample from diffusion
probabilistic models" (the dynamic program over ELBO step costs).

Orientation (one for the whole library): grids are strictly increasing in log-SNR, so index 0
is the noisiest point and index T the cleanest. A K-step schedule is a path of indices
``0 = j_0 < j_1 < ... < j_K = T`` that a sampler walks from noise to data; ``C[i, j]`` is the
cost of a step from index i (noisier) to j (cleaner), used only for ``i < j``. The cost of a
path is ``sum_k C[j_k, j_{k+1}] + end_cost[j_K]``. With

    D_0[j] = (0 if j = 0 else +inf),      D_k[j] = min_{i < j} D_{k-1}[i] + C[i, j],

``D_k[j]`` is the least cost of reaching j in exactly k steps, and the best K-step schedule
ends at ``argmin_j D_K[j] + end_cost[j]``. One pass over k = 1..K_max (each a vectorised min
over the T + 1 previous points, O(T^2)) gives the optimal path for every K <= K_max through
back-pointers, in O(K_max T^2) total, in float64 on the host. The default end cost (0 at T,
+inf elsewhere) pins ``j_K = T``, the paper's problem; a finite end cost at other indices lets
the schedule also choose where it stops (e.g. the decoder's cost of stopping at each grid point,
:meth:`ddss_lite.elbo.ELBOTerms.best_paths`).

Which entries of C count: only the strictly upper triangle (``i < j``). There, entries must be
finite or ``+inf`` (a forbidden step); NaN (anywhere) and ``-inf`` are rejected. The diagonal and
lower triangle are ignored (treated as ``+inf``). :func:`path_to_grid` turns a path into the grid
the samplers take.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from ddss_lite.validate import check_increasing, check_K


class OptimalPaths(NamedTuple):
    """``costs[K-1]`` (float64, shape (K_max,)) is the least cost of a K-step path and
    ``paths[K-1]`` (int array of length K + 1, starting at 0) that path; ``+inf`` and ``None`` when
    forbidden steps (+inf costs) leave no finite K-step path."""

    costs: np.ndarray
    paths: list


def check_cost_matrix(C, *, name: str = "C") -> np.ndarray:
    """Validate a cost matrix (see the module docstring) and return a float64 copy whose diagonal
    and lower triangle are +inf."""
    a = np.array(C, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 2:
        raise ValueError(f"{name} must be a square (T+1, T+1) matrix with T >= 1, got shape {a.shape}")
    if np.any(np.isnan(a)):
        raise ValueError(f"{name} must not contain NaN")
    upper = np.triu(np.ones(a.shape, bool), k=1)
    if np.any(np.isneginf(a[upper])):
        raise ValueError(f"{name}[i, j] for i < j must be finite or +inf (a forbidden step), got -inf")
    a[~upper] = np.inf
    return a


def check_end_cost(end_cost, T: int, *, name: str = "end_cost") -> np.ndarray:
    """``None`` (end at index T) or a (T+1,) array, finite or +inf, with a finite entry after index 0."""
    if end_cost is None:
        e = np.full(T + 1, np.inf)
        e[T] = 0.0
        return e
    e = np.array(end_cost, dtype=np.float64)
    if e.shape != (T + 1,):
        raise ValueError(f"{name} must have shape (T+1,) = ({T + 1},), got {e.shape}")
    if np.any(np.isnan(e)) or np.any(np.isneginf(e)):
        raise ValueError(f"{name} must be finite or +inf (a forbidden end), got NaN or -inf")
    if not np.any(np.isfinite(e[1:])):
        raise ValueError(f"{name} must be finite at some index in [1, T]")
    return e


def check_path(path, *, T: int, any_end: bool = False, name: str = "path") -> np.ndarray:
    """``path`` must be integer indices ``0 = j_0 < j_1 < ... < j_K`` (K >= 1) with ``j_K = T``
    (any ``j_K <= T`` when ``any_end``)."""
    p = np.asarray(path)
    integral = p.dtype.kind in "iu" or (p.dtype.kind == "f" and np.all(p == np.round(p)))
    if p.ndim != 1 or p.shape[0] < 2 or not integral:
        raise ValueError(f"{name} must be a 1-D integer array of length >= 2, got {p!r}")
    p = p.astype(np.int64)
    end_ok = p[-1] <= T if any_end else p[-1] == T
    if p[0] != 0 or not end_ok or not np.all(np.diff(p) > 0):
        last = f"to some index <= T={T}" if any_end else f"to T={T}"
        raise ValueError(f"{name} must increase strictly from 0 {last}, got {p.tolist()}")
    return p


def path_cost(C, path, *, end_cost=None) -> float:
    """``sum_k C[j_k, j_{k+1}] + end_cost[j_K]`` in float64 (``j_K = T`` and no end cost by default)."""
    a = check_cost_matrix(C)
    T = a.shape[0] - 1
    p = check_path(path, T=T, any_end=end_cost is not None)
    e = check_end_cost(end_cost, T)
    return float(np.sum(a[p[:-1], p[1:]]) + e[p[-1]])


def optimal_paths(C, K_max: int, *, end_cost=None) -> OptimalPaths:
    """The least-cost K-step path from index 0 and its cost, for every K = 1..K_max, in one
    dynamic-programming pass in float64 (Watson et al. 2021; module docstring).

    ``C``: (T+1, T+1) step costs, ``C[i, j]`` for the step i -> j, i < j. ``K_max`` in [1, T].
    ``end_cost``: optional (T+1,) cost of a path ending at each index (default: paths end at T, at
    no cost); it is included in the returned costs. Ties go to the smallest index.
    """
    a = check_cost_matrix(C)
    T = a.shape[0] - 1
    K_max = check_K(K_max, name="K_max", high=T)
    end = check_end_cost(end_cost, T)
    cols = np.arange(T + 1)
    D = np.full(T + 1, np.inf)
    D[0] = 0.0
    back = np.empty((K_max, T + 1), np.int64)
    ends = np.empty(K_max, np.int64)
    finals = np.empty(K_max)
    with np.errstate(invalid="ignore"):       # inf + (-finite) stays inf; no NaN can arise
        for k in range(K_max):
            total = D[:, None] + a             # [i, j]: k steps to i, then i -> j
            back[k] = np.argmin(total, axis=0)  # the first (smallest) i attaining the min
            D = total[back[k], cols]
            f = D + end
            ends[k] = int(np.argmin(f))
            finals[k] = f[ends[k]]
    costs, paths = np.full(K_max, np.inf), []
    for K in range(1, K_max + 1):
        if not np.isfinite(finals[K - 1]):
            paths.append(None)
            continue
        p = np.empty(K + 1, np.int64)
        p[K] = ends[K - 1]
        for k in range(K, 0, -1):
            p[k - 1] = back[k - 1][p[k]]
        paths.append(p)
        costs[K - 1] = float(np.sum(a[p[:-1], p[1:]]) + end[p[-1]])
    return OptimalPaths(costs, paths)


def brute_force_path(C, K: int, *, end_cost=None):
    """``(cost, path)`` of the least-cost K-step path by enumerating every choice of the K
    indices after 0 (for tests; exponential in K). Ties go to the first in lexicographic order;
    ``(inf, None)`` if no path has finite cost."""
    a = check_cost_matrix(C)
    T = a.shape[0] - 1
    K = check_K(K, name="K", high=T)
    end = check_end_cost(end_cost, T)
    best, best_path = np.inf, None
    for tail in itertools.combinations(range(1, T + 1), K):
        p = np.asarray((0, *tail), np.int64)
        c = float(np.sum(a[p[:-1], p[1:]]) + end[p[-1]])
        if c < best:
            best, best_path = c, p
    return best, best_path


def _strictly_increasing(r, T: int) -> np.ndarray:
    """Nearest strictly increasing integer path from 0 to T to the nondecreasing reals ``r``
    (len K + 1, ``r[0] = 0``, ``r[K] = T``): round half up, push collisions forward, then pull
    back from T so that ``j_i <= T - (K - i)``."""
    j = np.floor(np.asarray(r, np.float64) + 0.5).astype(np.int64)
    K = j.shape[0] - 1
    j[0], j[K] = 0, T
    for i in range(1, K + 1):
        j[i] = max(j[i], j[i - 1] + 1)
    j[K] = T
    for i in range(K - 1, -1, -1):
        j[i] = min(j[i], j[i + 1] - 1)
    return j


def even_path(T: int, K: int) -> np.ndarray:
    """K steps of (nearly) even stride in index: ``j_i = floor(i T / K + 1/2)``. Strictly
    increasing for every 1 <= K <= T."""
    T = check_K(T, name="T")
    K = check_K(K, name="K", high=T)
    return _strictly_increasing(np.arange(K + 1) * (T / K), T)


def quadratic_path(T: int, K: int) -> np.ndarray:
    """K steps with quadratic stride, dense at the clean end (index T), as DDIM's quadratic time
    grid: ``j_i ~ T - T ((K - i) / K)^2``; colliding indices near T are pushed apart so the path
    is strictly increasing for every 1 <= K <= T."""
    T = check_K(T, name="T")
    K = check_K(K, name="K", high=T)
    mirrored = _strictly_increasing(T * (np.arange(K + 1) / K) ** 2, T)   # dense at index 0
    return (T - mirrored[::-1]).astype(np.int64)


def path_to_grid(path, logsnrs) -> np.ndarray:
    """The sampler grid of a path: ``logsnrs[path]``, K + 1 strictly increasing log-SNRs from the
    noisiest to the cleanest. The path may end before the grid's last index (a path chosen with
    an end cost)."""
    lam = check_increasing(np.asarray(logsnrs, np.float64), name="logsnrs")
    p = check_path(path, T=lam.shape[0] - 1, any_end=True)
    return lam[p].copy()
