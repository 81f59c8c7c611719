"""Sample quality with standard errors, and paired comparisons of two samplers.

Every number the book reports on samples comes from here: features -> statistics -> number,
with a standard error that counts both sources of noise, the generated samples and the finite
reference set.

**KID** is the complete unbiased U-statistic over all pairs (Binkowski et al. 2018, eq. 3; the
cubic kernel ``k(a, b) = (a . b / d + 1)^3`` of :func:`ddss_lite.metrics.cubic_kernel`):

    KID = 1/(n(n-1)) sum_{i != i'} k(g_i, g_i') + 1/(m(m-1)) sum_{j != j'} k(r_j, r_j')
          - 2/(n m) sum_{i, j} k(g_i, r_j),

not tensorflow-gan's estimator of tiny blocks (:func:`ddss_lite.metrics.kid_blocks`, kept for
parity), which throws away most pairs. **FID** is the Frechet distance of Gaussians fitted to the
features (:func:`ddss_lite.metrics.fid`).

**Standard errors** count both sets' noise. For KID it is the delete-one **jackknife** over both
sets, ``Var = (n-1)/n sum_i (KID_{-i} - mean)^2 + (m-1)/m sum_j (KID_{-j} - mean)^2`` (the KID with
generated row i, or reference row j, left out), exact and deterministic, in O(n^2) from the Gram
matrices' row sums (:func:`kid_jackknife_variance`). It is never negative and, by the Efron-Stein
inequality, never too small on average; it is exact to first order when the two distributions
differ and conservative when they (nearly) coincide, where the U-statistic is degenerate. Measured
with 1500 generated and 360 reference rows (``tests/test_evaluation.py``): 1.14 times the true
standard deviation at a clear difference, 1.33 at a small one, 1.7 for two samples of one
distribution. We chose it over two alternatives we measured: the bootstrap (resampling rows with
replacement), 1.6-1.8 times too large, and the unbiased estimate of the U-statistic's exact variance,
right on average but so noisy near the floor that it sometimes returned a tenth of the true value,
which would turn ties into false verdicts. **FID** has no such formula; its standard error is the
spread of ``n_boot`` bootstrap replicates that resample the generated and the reference rows
(independently of each other) and refit the means and covariances. The bootstrap's random numbers
come from a fixed seed, so a standard error is reproducible; the estimates themselves (on all
rows) do not depend on the order of the rows.

**Paired comparisons** (DESIGN.md section 7): two samplers run from the same initial noise
(common random numbers: row n of both from the same noise), and :func:`compare` estimates the
difference a - b with the standard error *of the difference*, from a bootstrap that resamples the
shared noise indices and the reference set jointly: rows ``(a_n, b_n)`` are one draw each, so the
KID difference is a U-statistic over those pairs with the kernel ``k(a_n, a_n') - k(b_n, b_n')``
(and cross kernel ``k(a_n, r) - k(b_n, r)``), whose jackknife leaves out one pair ``(a_n, b_n)`` or
one reference row at a time; the FID
difference's replicates resample one set of noise indices for both samplers. The
reference-reference term cancels exactly and much of the rest is common to both, so the
difference is far better determined than either value. :func:`verdict` turns a difference and its
standard error into "better", "worse" or "tied" at two standard errors.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib

import numpy as np

from ddss_lite import metrics
from ddss_lite.features import batched
from ddss_lite.validate import check_K

N_BOOT = 200          # bootstrap replicates per FID standard error (relative precision ~ 1/sqrt(2 N_BOOT) = 5 %)
VERDICT_Z = 2.0       # a difference counts when it exceeds this many standard errors
_CHUNK = 50           # bootstrap replicates per matrix product (bounds memory)
_SETS_KEPT = 4        # generated sets whose Gram matrices an Evaluator keeps at most ...
_SETS_BYTES = 1 << 30  # ... and at most this many bytes of them (5000 rows: 200 MB a set, 10000: 800 MB)


# --------------------------------------------------------------------------- checks and features


def _feats(f, *, name: str) -> np.ndarray:
    if np.asarray(f).dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {np.asarray(f).dtype}")
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D (rows >= 2, features >= 1) array, got shape {f.shape}")
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{name} must be finite, but holds NaN or Inf (are the samples finite?)")
    return f


def _gram(a, b):
    """The cubic-kernel Gram matrix ``(a b^T / d + 1)^3`` (:func:`ddss_lite.metrics.cubic_kernel`), in
    place and cubed by multiplication (a float power is several times slower on 25M entries)."""
    G = a @ b.T
    G /= a.shape[1]
    G += 1.0
    K = G * G
    K *= G
    return K


def _multiplicities(rng, n: int, reps: int) -> np.ndarray:
    """(reps, n) bootstrap multiplicities: n draws with replacement from n rows, per replicate."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=reps).astype(np.float64)


def kid_jackknife_variance(K_gg, K_gr, K_rr=None) -> float:
    """Delete-one jackknife variance of the KID U-statistic over both sets (module docstring), from its
    Gram matrices (the diagonal of ``K_gg``/``K_rr`` is ignored). With ``K_rr=None``: of
    ``U_gg - 2 V_gr`` alone (a paired difference, whose reference-reference term cancels; ``K_gg``,
    ``K_gr`` are then the differences of the two samplers' Gram matrices). Leaving generated row i
    out gives ``U_gg = (S - 2 r_i) / ((n-1)(n-2))`` and ``V_gr = (P - row_i) / ((n-1) m)`` with
    ``r_i``, ``row_i`` the row sums, ``S``, ``P`` the totals; likewise for a reference row."""
    n, m = K_gr.shape
    if n < 3 or m < 3:
        raise ValueError(f"a KID standard error needs at least 3 rows in each set, got {n} and {m}")
    r = K_gg.sum(axis=1) - np.diag(K_gg)
    S = r.sum()
    row, col, P = K_gr.sum(axis=1), K_gr.sum(axis=0), K_gr.sum()
    U_gg, V_gr = S / (n * (n - 1)), P / (n * m)
    U_rr, U_rr_j = 0.0, np.zeros(m)
    if K_rr is not None:
        rr = K_rr.sum(axis=1) - np.diag(K_rr)
        S_r = rr.sum()
        U_rr, U_rr_j = S_r / (m * (m - 1)), (S_r - 2 * rr) / ((m - 1) * (m - 2))
    kid_i = (S - 2 * r) / ((n - 1) * (n - 2)) + U_rr - 2 * (P - row) / ((n - 1) * m)
    kid_j = U_gg + U_rr_j - 2 * (P - col) / (n * (m - 1))
    return float((n - 1) / n * np.sum((kid_i - kid_i.mean()) ** 2)
                 + (m - 1) / m * np.sum((kid_j - kid_j.mean()) ** 2))


def _u_pairs(K, w):
    """``(w^T K w - sum_i w_i K_ii) / (n (n-1))`` for each row of ``w`` (the U-statistic's pair mean)."""
    n = K.shape[0]
    quad = np.einsum("bi,bi->b", w @ K, w)
    return (quad - w @ np.diag(K)) / (n * (n - 1))


# --------------------------------------------------------------------------- KID and FID on features


def kid_u(feats_gen, feats_real) -> float:
    """The complete unbiased KID U-statistic (module docstring), float64 on the host. Equal to
    :func:`ddss_lite.metrics.kid` with the cubic kernel, computed in float64."""
    g, r = _feats(feats_gen, name="feats_gen"), _feats(feats_real, name="feats_real")
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"feats_gen and feats_real must have the same feature width, got {g.shape[1]} and {r.shape[1]}")
    one = np.ones((1, g.shape[0])), np.ones((1, r.shape[0]))
    return float(_u_pairs(_gram(g, g), one[0])[0] + _u_pairs(_gram(r, r), one[1])[0] - 2 * _gram(g, r).mean())


def _boot_stats(f, W):
    """Means (B, d) and (n - 1)-normalised covariances (B, d, d) of the rows of ``f`` repeated
    ``W[b]`` times, for every replicate b: moments about the full-sample mean (no cancellation),
    ``cov_b = (sum_i w_i c_i c_i^T - n (mu_b - mu)(mu_b - mu)^T) / (n - 1)`` with ``c = f - mu``."""
    n, d = f.shape
    mu = f.mean(axis=0)
    c = f - mu
    # the weighted sums in float32 (4x faster; the centred products are O(1), so the replicate
    # covariances carry errors near 1e-7, far below the bootstrap's own spread), the rest in float64
    c32, W32 = c.astype(np.float32), W.astype(np.float32)
    outer = (c32[:, :, None] * c32[:, None, :]).reshape(n, d * d)
    dm = (W32 @ c32).astype(np.float64) / n                  # mu_b - mu
    covs = np.concatenate([(W32[s:s + _CHUNK] @ outer).astype(np.float64).reshape(-1, d, d)
                           for s in range(0, W.shape[0], _CHUNK)])
    covs -= n * dm[:, :, None] * dm[:, None, :]
    return mu + dm, covs / (n - 1)


def _sqrt_psd_batch(c):
    """Symmetric PSD square roots of a stack of matrices (:func:`ddss_lite.metrics.sqrtm_psd`, batched)."""
    w, v = np.linalg.eigh(0.5 * (c + np.swapaxes(c, -1, -2)))
    w = np.where(w > c.shape[-1] * np.finfo(w.dtype).eps * np.abs(w).max(axis=-1, keepdims=True), w, 0.0)
    return (v * np.sqrt(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def _fid_batch(mu1, cov1, mu2, cov2, *, s1=None):
    """:func:`ddss_lite.metrics.fid_from_stats` for stacks of Gaussians (B, d) / (B, d, d), the same
    formula: ``||mu1 - mu2||^2 + tr cov1 + tr cov2 - 2 tr (S cov2 S)^{1/2}``, ``S = cov1^{1/2}``
    (pass ``s1`` when it is known: FID is symmetric, so the reference goes first and its square
    roots are computed once)."""
    s1 = _sqrt_psd_batch(cov1) if s1 is None else s1
    m = s1 @ cov2 @ s1
    e = np.linalg.eigvalsh(0.5 * (m + np.swapaxes(m, -1, -2)))
    e = np.where(e > m.shape[-1] * np.finfo(e.dtype).eps * np.abs(e).max(axis=-1, keepdims=True), e, 0.0)
    return (np.sum((mu1 - mu2) ** 2, axis=-1) + np.trace(cov1, axis1=-2, axis2=-1) + np.trace(cov2, axis1=-2, axis2=-1)
            - 2.0 * np.sqrt(e).sum(axis=-1))


# --------------------------------------------------------------------------- the evaluator


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Quality and paired comparisons of samples in the features ``phi`` against reference features.

    ``ref_feats`` (M, d) are the reference set's features in ``phi`` (e.g. the held-out classifier's
    features of the test digits). KID standard errors are the jackknife's
    (:func:`kid_jackknife_variance`); ``n_boot`` bootstrap replicates (seeded by ``seed``) give FID's.
    ``with_fid=False`` skips FID (e.g. on random Fourier features of 2-D data, where a Gaussian fit
    means little and its bootstrap costs O(n d^2) per replicate); the FID entries are then NaN. Build once per (feature map, reference set) and reuse: the reference Gram
    matrix is computed once.
    """

    phi: object
    ref_feats: np.ndarray
    n_boot: int = N_BOOT
    seed: int = 0
    with_fid: bool = True

    def __post_init__(self):
        if not isinstance(self.with_fid, (bool, np.bool_)):
            raise ValueError(f"with_fid must be True or False, got {self.with_fid!r}")
        check_K(self.seed, name="seed", low=0)
        r = _feats(self.ref_feats, name="ref_feats")
        check_K(self.n_boot, name="n_boot", low=2)
        object.__setattr__(self, "ref_feats", r)
        object.__setattr__(self, "_K_rr", _gram(r, r))
        # The reference's bootstrap draws are the same for every call (own random stream): their
        # multiplicities, fitted Gaussians and covariance square roots are computed once.
        V = _multiplicities(np.random.default_rng([self.seed, 1]), r.shape[0], self.n_boot)
        object.__setattr__(self, "_V", V)
        if self.with_fid:
            mu_b, cov_b = _boot_stats(r, V)
            object.__setattr__(self, "_ref_boot", (mu_b, cov_b, _sqrt_psd_batch(cov_b)))

    def _per_set(self, f) -> dict:
        """Gram matrices with itself and with the reference, and the bootstrap fits for FID, of one
        generated set, kept for the last few sets (a table compares each row with another one, so
        every set is used several times)."""
        key = hashlib.sha256(np.ascontiguousarray(f).tobytes()).hexdigest()
        cache = self.__dict__.setdefault("_sets", collections.OrderedDict())
        if key not in cache:
            entry = {"K_gg": _gram(f, f), "K_gr": _gram(f, self.ref_feats)}
            if self.with_fid:
                entry["boot"] = self._fid_boot(f, self._W(f.shape[0]))
            cache[key] = entry
            while len(cache) > 1 and (len(cache) > _SETS_KEPT or _nbytes(list(cache.values())) > _SETS_BYTES):
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    def _W(self, n):
        """The generated rows' bootstrap multiplicities (shared by the two sets of a comparison)."""
        return _multiplicities(np.random.default_rng([self.seed, 0]), n, self.n_boot)

    def _fid_boot(self, f, W):
        mu_r, cov_r, s_r = self._ref_boot
        return _fid_batch(mu_r, cov_r, *_boot_stats(f, W), s1=s_r)

    # ------------------------------------------------------------------ features
    def features(self, x) -> np.ndarray:
        """``phi(x)`` in batches, float64, checked finite (a NaN sample fails here, naming it)."""
        x = np.asarray(x)
        if x.ndim < 2 or x.shape[0] < 2:
            raise ValueError(f"x must hold at least 2 samples (rows), got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"x (the samples) must be finite, but {int(np.sum(~np.isfinite(x)))} entries are NaN or Inf")
        return _feats(batched(self.phi, x), name="phi(x)")

    def _check_gen(self, f, name):
        f = _feats(f, name=name)
        if f.shape[1] != self.ref_feats.shape[1]:
            raise ValueError(f"{name} must have the reference's feature width {self.ref_feats.shape[1]}, got {f.shape[1]}")
        return f

    # ------------------------------------------------------------------ one sampler
    def quality_feats(self, f) -> dict:
        """``{"kid", "kid_se", "fid", "fid_se", "n", "m"}`` of generated features ``f`` (module docstring)."""
        g = self._check_gen(f, "feats")
        r, K_rr = self.ref_feats, self._K_rr
        n, m = g.shape[0], r.shape[0]
        sets = self._per_set(g)
        K_gg, K_gr = sets["K_gg"], sets["K_gr"]
        ones_n, ones_m = np.ones((1, n)), np.ones((1, m))
        kid = float(_u_pairs(K_gg, ones_n)[0] + _u_pairs(K_rr, ones_m)[0] - 2 * K_gr.mean())
        var = kid_jackknife_variance(K_gg, K_gr, K_rr)
        fid, fid_se = float("nan"), float("nan")
        if self.with_fid:
            fid = metrics.fid(g, r)
            fid_se = float(sets["boot"].std(ddof=1))
        return {"kid": kid, "kid_se": float(np.sqrt(var)), "fid": float(fid), "fid_se": fid_se,
                "n": int(n), "m": int(m)}

    def quality(self, x) -> dict:
        """:meth:`quality_feats` of ``phi(x)``."""
        return self.quality_feats(self.features(x))

    # ------------------------------------------------------------------ two samplers, paired
    def compare_feats(self, f_a, f_b) -> dict:
        """Paired comparison of generated features ``f_a`` and ``f_b`` whose row n came from the same
        initial noise: the values of both, the differences ``a - b`` and their standard errors
        (module docstring: jackknife for KID, bootstrap for FID, over the shared noise indices and the
        reference rows), and the verdict on KID."""
        a, b = self._check_gen(f_a, "feats_a"), self._check_gen(f_b, "feats_b")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a paired comparison needs the same number of rows (one per noise draw), "
                             f"got {a.shape[0]} and {b.shape[0]}")
        r, K_rr = self.ref_feats, self._K_rr
        n, m = a.shape[0], r.shape[0]
        sa, sb = self._per_set(a), self._per_set(b)
        D = sa["K_gg"] - sb["K_gg"]                   # only differences enter: the rr term cancels
        E = sa["K_gr"] - sb["K_gr"]
        ones_n = np.ones((1, n))
        kid_diff = float(_u_pairs(D, ones_n)[0] - 2 * E.mean())
        kid_ref = float(_u_pairs(K_rr, np.ones((1, m)))[0])
        kid_b_val = float(_u_pairs(sb["K_gg"], ones_n)[0] - 2 * sb["K_gr"].mean() + kid_ref)
        var = kid_jackknife_variance(D, E)
        fid_a = fid_b = fid_diff_se = float("nan")
        if self.with_fid:
            fid_a, fid_b = metrics.fid(a, r), metrics.fid(b, r)
            fid_diff_se = float(np.std(sa["boot"] - sb["boot"], ddof=1))
        out = {"kid_a": kid_b_val + kid_diff, "kid_b": kid_b_val, "kid_diff": kid_diff,
               "kid_diff_se": float(np.sqrt(var)), "fid_a": float(fid_a), "fid_b": float(fid_b),
               "fid_diff": float(fid_a - fid_b), "fid_diff_se": fid_diff_se, "n": int(n), "m": int(m)}
        out["verdict"] = verdict(out["kid_diff"], out["kid_diff_se"])
        return out

    def compare(self, x_a, x_b) -> dict:
        """:meth:`compare_feats` of ``phi(x_a)`` and ``phi(x_b)``."""
        return self.compare_feats(self.features(x_a), self.features(x_b))


# Part of every cached draw's key (:func:`samples`, :func:`ddss_lite.splitting.model_samples`): bump
# it when a sampler's update or defaults change meaning, so that no draw of the old code is loaded.
SAMPLES_FORMAT = 1


def _nbytes(x) -> int:
    """Bytes held by the arrays in nested dicts, lists and tuples."""
    if isinstance(x, dict):
        return sum(_nbytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_nbytes(v) for v in x)
    return int(getattr(x, "nbytes", 0))


# --------------------------------------------------------------------------- one-call forms


def sample_quality(x, phi, ref_feats, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """``{"kid", "kid_se", "fid", "fid_se", "n", "m"}`` of samples ``x`` against ``ref_feats`` in ``phi``
    (:meth:`Evaluator.quality`; build an :class:`Evaluator` to reuse the reference's Gram matrix)."""
    return Evaluator(phi, ref_feats, n_boot=n_boot, seed=seed).quality(x)


def compare(x_a, x_b, phi, ref_feats, *, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Paired comparison of samples ``x_a`` and ``x_b`` drawn from the same noise (row n of both from
    the same initial noise): ``kid_a``, ``kid_b``, ``kid_diff`` (= a - b), ``kid_diff_se``, ``fid_a``,
    ``fid_b``, ``fid_diff``, ``fid_diff_se``, ``verdict`` (:meth:`Evaluator.compare`)."""
    return Evaluator(phi, ref_feats, n_boot=n_boot, seed=seed).compare(x_a, x_b)


def verdict(diff: float, se: float, *, z: float = VERDICT_Z) -> str:
    """For a difference ``a - b`` of a lower-is-better metric: ``"better"`` (a is better) when
    ``diff < -z se``, ``"worse"`` when ``diff > z se``, else ``"tied"``."""
    if not np.isfinite(diff) or not np.isfinite(se) or se < 0:
        raise ValueError(f"diff and se must be finite with se >= 0, got diff={diff}, se={se}")
    if diff < -z * se:
        return "better"
    if diff > z * se:
        return "worse"
    return "tied"


def cached_samples(tag: str, config: dict, draw) -> np.ndarray:
    """Samples computed once per ``config`` and kept in the cache (``paths.cache_dir()``): ``draw()``
    runs only when no valid entry exists (:func:`ddss_lite.metrics.cached_arrays`, atomic, checked
    against its config). For expensive draws shared by chapters, e.g. 1000-step DDPM samples; the
    config must name everything they depend on (model, sampler, grid, key, number)."""
    from ddss_lite import paths

    return metrics.cached_arrays(dict(config, tag=tag), lambda: {"x": np.asarray(draw())},
                                 cache_dir=paths.cache_dir(), name=f"samples-{tag}")["x"]


def noise_key(seed: int = 0):
    """The key of the evaluation noise every table of the book shares: each sampler in every chapter
    starts row n from the same initial noise, so all comparisons are paired (common random numbers)."""
    import jax

    return jax.random.fold_in(jax.random.PRNGKey(seed), 3)


def _model_config(model) -> dict:
    """What cached samples of ``model`` are keyed by besides its parameters: the training config of the
    book's models (``model.config``), else the model's description and network
    (:meth:`ddss_lite.models.Model.describe`, ``network_id``)."""
    config = getattr(model, "config", None)
    return config if config is not None else dict(model.describe(), network=model.network_id())


def samples(model, label: str, draw, *, profile, seed: int = 0, **config) -> np.ndarray:
    """``profile.n_eval`` samples of the pre-trained ``model``, ``draw(denoise, key, shape)``, from the
    book's evaluation noise (:func:`noise_key`), cached: a chapter that draws the same ``label`` and
    ``config`` (everything the draw depends on besides the model: sampler, options, grid, searched
    parameters) loads them instead of sampling again, so the head-to-head chapter re-runs nothing.
    The cache key holds the model's config and a digest of its parameters."""
    from ddss_lite import store

    if getattr(model, "params", None) is None:
        raise ValueError(f"model: samples of {model.name!r} cannot be cached, it exposes no params (a bare "
                         "denoiser, models.from_denoiser); call the sampler directly")
    shape = (profile.n_eval, *model.data_shape)
    cfg = dict(config, model=_model_config(model), params=store.array_digest(model.params), shape=list(shape),
               seed=seed, samples_format=SAMPLES_FORMAT)
    return cached_samples(label, cfg, lambda: draw(model.denoiser(), noise_key(seed), shape))


def sampler_samples(model, name: str, K: int | None = None, *, profile, seed: int = 0, nfe: int | None = None,
                    grid: str | None = None, logsnrs=None, **options) -> np.ndarray:
    """:func:`samples` of the registered sampler ``name`` (``samplers.get(name)``, called on ``model``) at
    ``nfe=`` network evaluations (``samplers.get(name).steps(nfe)`` steps), or at K steps (positional,
    as the chapters call it), on ``logsnrs`` if given, else on the grid ``grid`` of
    :mod:`ddss_lite.grids` made for ``model`` (default ``model.default_grid``: the even grid
    ``schedules.grid(K)`` on the book's models), with the sampler's ``options``. The grid lies in
    ``model.logsnr_range`` (:func:`ddss_lite.samplers.resolve_grid`). Cached by the model, sampler, K,
    the grid's values and the options."""
    from ddss_lite import samplers

    sampler = samplers.get(name)
    if (K is None) == (nfe is None):
        raise ValueError(f"sampler_samples: give K (steps) or nfe= (network evaluations), not "
                         f"{'both' if K is not None else 'neither'}")
    K = sampler.steps(nfe, **options) if K is None else check_K(K, name="K (steps)")
    g = samplers.resolve_grid(model, K, logsnrs=logsnrs, grid=grid, data_end=sampler.data_end(options))
    g = np.asarray(g, np.float64)
    draw = lambda den, key, shape: sampler(model, key, shape, logsnrs=g.astype(np.float32), **options)
    return samples(model, f"{model.name}-{name}", draw, profile=profile, seed=seed, sampler=name, K=K,
                   logsnrs=g.tolist(), options=options)


def family_samples(model, family: str, params: dict, *, profile, seed: int = 0, logsnrs=None) -> np.ndarray:
    """:func:`samples` of the learnable ``family`` (``"rddim"``, ``"ggdm"``) bound to ``params`` (e.g. a
    DDSS search's result, or its ``params`` read back from a results file) on ``logsnrs`` (default: the
    model's default grid with the params' K), called on ``model``. The one cache key of a searched
    sampler's draws, shared by every chapter that draws it: the family, K, a digest of the params (as
    float32) and the grid's values."""
    from ddss_lite import samplers, store

    fam = samplers.get_family(family)
    if not isinstance(params, dict):
        raise TypeError(f"params must be a dict of the {family} family's arrays, got {type(params).__name__}")
    params = {k: np.asarray(v, np.float32) for k, v in params.items()}
    K = fam.num_steps(params)
    g = samplers.resolve_grid(model, K, logsnrs=logsnrs, data_end="logsnr_logits" not in params)
    bound = fam.bind(params, np.asarray(g, np.float32))
    return samples(model, f"ddss-{family}", lambda den, key, shape: bound(model, key, shape), profile=profile,
                   seed=seed, K=K, searched=store.array_digest(params), logsnrs=np.asarray(g, np.float64).tolist())


def many_step_samples(model, profile, *, seed: int = 0, sampler: str = "ddpm") -> np.ndarray:
    """``profile.n_eval`` samples of ``model`` with ``sampler`` on the ``profile.ref_steps``-step grid,
    from :func:`noise_key` (``seed``): the book's many-step reference row, drawn once and cached."""
    return sampler_samples(model, sampler, profile.ref_steps, profile=profile, seed=seed)


def real_floor(x_real, evaluator: Evaluator) -> dict:
    """:meth:`Evaluator.quality` of real data (e.g. the training digits against the test digits): the
    floor an evaluation can resolve, in the same units as every sampler's row."""
    return evaluator.quality(x_real)
