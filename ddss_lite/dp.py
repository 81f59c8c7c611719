"""Least-cost K-step schedules on a grid, for every K at once, by dynamic programming.

Watson, Ho, Norouzi & Chan (2021), "Learning to efficiently sample from diffusion
probabilistic models" (the dynamic program over ELBO step costs): given a cost ``C[s, t]``
for a step from grid index t (noisier) to s (cleaner), s < t, the cost of a path
``0 = j_0 < j_1 < ... < j_K = T`` is ``sum_i C[j_{i-1}, j_i]``. With

    D_0[s] = start_cost[s],      D_k[t] = min_{s < t} D_{k-1}[s] + C[s, t],

``D_k[t]`` is the least cost of reaching t in exactly k steps; one pass over k = 1..K_max
(each a vectorised min over the T + 1 previous points, O(T^2)) gives the optimal K-step path
for every K <= K_max through back-pointers, in O(K_max T^2) total. The default start cost
(0 at index 0, +inf elsewhere) pins ``j_0 = 0``, the paper's problem; a finite start cost at
other indices lets the path also choose where it ends up clean (e.g. the decoder's cost of
stopping at each grid point, :meth:`ddss_lite.elbo.ELBOTerms.best_paths`).

Which entries of C count: only the strictly upper triangle (``s < t``). There, entries must be
finite or ``+inf`` (a forbidden step); NaN (anywhere) and ``-inf`` are rejected. The diagonal
and lower triangle are ignored (treated as ``+inf``), so the ``+inf`` there from
:func:`ddss_lite.elbo.cost_matrix` is fine.

Index convention (as in :mod:`ddss_lite.elbo`): index 0 is the cleanest grid point, T the
noisiest; :func:`path_to_grid` turns a path into the increasing log-SNR grid the samplers take.
"""
from __future__ import annotations

import itertools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ddss_lite.validate import check_increasing, check_K


class OptimalPaths(NamedTuple):
    """``costs[K-1]`` (float64, shape (K_max,)) is the least cost of a K-step path and
    ``paths[K-1]`` (int array of length K + 1, ending at T) that path; ``+inf`` and ``None`` when
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
        raise ValueError(f"{name}[s, t] for s < t must be finite or +inf (a forbidden step), got -inf")
    a[~upper] = np.inf
    return a


def check_start_cost(start_cost, T: int, *, name: str = "start_cost") -> np.ndarray:
    """``None`` (start at index 0) or a (T+1,) array, finite or +inf, with a finite entry before T."""
    if start_cost is None:
        s = np.full(T + 1, np.inf)
        s[0] = 0.0
        return s
    s = np.array(start_cost, dtype=np.float64)
    if s.shape != (T + 1,):
        raise ValueError(f"{name} must have shape (T+1,) = ({T + 1},), got {s.shape}")
    if np.any(np.isnan(s)) or np.any(np.isneginf(s)):
        raise ValueError(f"{name} must be finite or +inf (a forbidden start), got NaN or -inf")
    if not np.any(np.isfinite(s[:-1])):
        raise ValueError(f"{name} must be finite at some index in [0, T-1]")
    return s


def check_path(path, *, T: int, any_start: bool = False, name: str = "path") -> np.ndarray:
    """``path`` must be integer indices ``j_0 < j_1 < ... < j_K = T`` (K >= 1), with ``j_0 = 0``
    unless ``any_start``."""
    p = np.asarray(path)
    integral = p.dtype.kind in "iu" or (p.dtype.kind == "f" and np.all(p == np.round(p)))
    if p.ndim != 1 or p.shape[0] < 2 or not integral:
        raise ValueError(f"{name} must be a 1-D integer array of length >= 2, got {p!r}")
    p = p.astype(np.int64)
    start_ok = p[0] >= 0 if any_start else p[0] == 0
    if not start_ok or p[-1] != T or not np.all(np.diff(p) > 0):
        first = "from some index >= 0" if any_start else "from 0"
        raise ValueError(f"{name} must increase strictly {first} to T={T}, got {p.tolist()}")
    return p


def path_cost(C, path, *, start_cost=None) -> float:
    """``start_cost[j_0] + sum_i C[j_{i-1}, j_i]`` in float64 (``j_0 = 0`` and no start cost by default)."""
    a = check_cost_matrix(C)
    T = a.shape[0] - 1
    p = check_path(path, T=T, any_start=start_cost is not None)
    s = check_start_cost(start_cost, T)
    return float(s[p[0]] + np.sum(a[p[:-1], p[1:]]))


def optimal_paths(C, K_max: int, *, start_cost=None) -> OptimalPaths:
    """The least-cost K-step path to index T and its cost, for every K = 1..K_max, in one
    dynamic-programming pass (Watson et al. 2021; module docstring).

    ``C``: (T+1, T+1) step costs, ``C[s, t]`` for the step t -> s, s < t. ``K_max`` in [1, T].
    ``start_cost``: optional (T+1,) cost of a path starting at each index (default: paths start
    at 0, at no cost); it is included in the returned costs.
    The DP runs in JAX (``lax.scan`` over k, each step a min over all previous indices, in
    float32 unless x64 is enabled); the reported cost of each chosen path is then re-summed
    from ``C`` in float64.
    """
    a = check_cost_matrix(C)
    T = a.shape[0] - 1
    K_max = check_K(K_max, name="K_max", high=T)
    start = check_start_cost(start_cost, T)
    last, back = _dp_forward(jnp.asarray(start), jnp.asarray(a), K_max)
    dp_costs, back = np.asarray(last, np.float64), np.asarray(back)

    # Back-track all K at once: the path for K uses back[k-1] at its k-th step, k = K..1.
    Ks = np.arange(1, K_max + 1)
    P = np.zeros((K_max, K_max + 1), np.int64)
    P[Ks - 1, Ks] = T
    cur = np.full(K_max, T, np.int64)
    for k in range(K_max, 0, -1):
        on = Ks >= k
        cur[on] = back[k - 1][cur[on]]
        P[on, k - 1] = cur[on]
    costs, paths = np.full(K_max, np.inf), []
    for K in Ks:
        if not np.isfinite(dp_costs[K - 1]):
            paths.append(None)
            continue
        p = P[K - 1, : K + 1].copy()
        paths.append(p)
        costs[K - 1] = float(start[p[0]] + np.sum(a[p[:-1], p[1:]]))
    return OptimalPaths(costs, paths)


@partial(jax.jit, static_argnums=2)
def _dp_forward(start, C, K_max: int):
    """``(D_k[T] for k = 1..K_max, back-pointers (K_max, T + 1))``.

    Laid out as (t, s) so both reductions run over contiguous memory; the back-pointer is the
    smallest s attaining the min (an integer min: XLA's CPU argmin is several times slower)."""
    n = C.shape[0]
    CT = C.T                                      # CT[t, s] = C[s, t]
    s_idx = jnp.arange(n, dtype=jnp.int32)

    def step(D, _):
        total = D[None, :] + CT                   # [t, s]: k-1 steps to s, then s -> t
        D_next = jnp.min(total, axis=1)
        arg = jnp.min(jnp.where(total <= D_next[:, None], s_idx[None, :], n), axis=1)
        return D_next, (D_next[n - 1], arg)

    _, (last, back) = lax.scan(step, start.astype(C.dtype), None, length=K_max)
    return last, back


def brute_force_path(C, K: int, *, start_cost=None):
    """``(cost, path)`` of the least-cost K-step path by enumerating every choice of the K
    indices before T (for tests; exponential in K). Ties go to the first in lexicographic
    order; ``(inf, None)`` if no path has finite cost."""
    a = check_cost_matrix(C)
    T = a.shape[0] - 1
    K = check_K(K, name="K", high=T)
    start = check_start_cost(start_cost, T)
    best, best_path = np.inf, None
    for head in itertools.combinations(range(T), K):
        p = np.asarray((*head, T), np.int64)
        c = float(start[p[0]] + np.sum(a[p[:-1], p[1:]]))
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
    """K steps with quadratic stride ``j_i ~ T (i / K)^2``, dense at the clean end (index 0), as
    DDIM's quadratic time grid; colliding indices near 0 are pushed apart so the path is strictly
    increasing for every 1 <= K <= T."""
    T = check_K(T, name="T")
    K = check_K(K, name="K", high=T)
    return _strictly_increasing(T * (np.arange(K + 1) / K) ** 2, T)


def path_to_grid(path, logsnrs) -> np.ndarray:
    """The sampler grid of a path: ``logsnrs[path]`` reversed, i.e. K + 1 strictly increasing
    log-SNRs from the noisiest to the cleanest (the convention of :mod:`ddss_lite.schedules`).
    The path may start at any index (a path chosen with a start cost)."""
    lam = np.asarray(logsnrs, np.float64)
    if lam.ndim != 1:
        raise ValueError(f"logsnrs must be a 1-D array, got shape {lam.shape}")
    p = check_path(path, T=lam.shape[0] - 1, any_start=True)
    return check_increasing(lam[p][::-1].copy(), name="logsnrs[path] reversed")
