"""KID and FID: analytic properties, gradients, input checks, the feature cache, and parity
with tensorflow-gan (run in its own environment through tests/tf_reference.py)."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from conftest import poly3_cross as _poly3_cross

from ddss_lite import metrics

HERE = pathlib.Path(__file__).resolve().parent


def _gaussian(rng, n, d, *, mean=0.0, scale=1.0):
    return (mean + scale * rng.standard_normal((n, d))).astype(np.float64)


# --------------------------------------------------------------------------- KID


def test_kid_near_zero_for_same_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(0)
    real = _gaussian(rng, 800, 16)
    same = _gaussian(rng, 800, 16)
    shifted = _gaussian(rng, 800, 16, mean=0.5)
    m_same, s_same = metrics.kid_blocks(same, real, num_blocks=8)
    m_shift, s_shift = metrics.kid_blocks(shifted, real, num_blocks=8)
    assert abs(m_same) < 3 * s_same, (m_same, s_same)
    assert m_shift > 10 * s_shift, (m_shift, s_shift)
    assert abs(float(metrics.kid(same, real))) < 0.1 * float(metrics.kid(shifted, real))


@pytest.mark.parametrize("kernel", ["cubic", "linear"])
def test_kid_is_unbiased_against_the_population_mmd(kernel):
    # Population MMD^2 of two Gaussians in closed form; many tiny draws (n=4, m=6), where the
    # biased V-statistic is far off, must average to it within 4 standard errors.
    rng = np.random.default_rng(1)
    d, n, m, R = 3, 4, 6, 4000
    mu_g, mu_r = np.array([0.5, -0.2, 0.3]), np.zeros(d)
    A = rng.standard_normal((d, d)) / np.sqrt(d)
    cov_g, cov_r = np.diag([1.5, 0.5, 1.0]), A @ A.T + 0.5 * np.eye(d)
    if kernel == "cubic":
        exact = (_poly3_cross(mu_g, cov_g, mu_g, cov_g) + _poly3_cross(mu_r, cov_r, mu_r, cov_r)
                 - 2 * _poly3_cross(mu_g, cov_g, mu_r, cov_r))
    else:
        exact = np.sum((mu_g - mu_r) ** 2)
    g = mu_g + rng.standard_normal((R, n, d)) @ np.linalg.cholesky(cov_g).T
    r = mu_r + rng.standard_normal((R, m, d)) @ np.linalg.cholesky(cov_r).T
    with jax.enable_x64(True):
        ests = np.asarray(jax.vmap(lambda a, b: metrics.kid(a, b, kernel=kernel))(g, r))
    se = ests.std(ddof=1) / np.sqrt(R)
    assert abs(ests.mean() - exact) < 4 * se, (ests.mean(), exact, se)
    # The test has power: the V-statistic (diagonal terms kept) is many standard errors off.
    k = metrics.kernel_fn(kernel)
    v_stat = np.mean([k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean() for a, b in zip(g, r)])
    assert abs(v_stat - exact) > 10 * se, (v_stat, exact, se)


def test_linear_kid_closed_form_and_loss_plus_real_term():
    # Unbiased linear MMD^2: sum_{i!=j} g_i.g_j = n^2 ||mu_g||^2 - sum_i ||g_i||^2, hence
    # KID_lin = ||mu_g - mu_r||^2 - tr(C_g)/n - tr(C_r)/m with C the (rows-1) covariances.
    rng = np.random.default_rng(2)
    g, r = _gaussian(rng, 37, 5, mean=0.4, scale=1.3), _gaussian(rng, 23, 5)
    n, m = len(g), len(r)
    closed = (np.sum((g.mean(0) - r.mean(0)) ** 2) - np.trace(np.cov(g, rowvar=False)) / n
              - np.trace(np.cov(r, rowvar=False)) / m)
    k_rr = r @ r.T
    real_real = (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
    with jax.enable_x64(True):
        kid_lin = float(metrics.kid(g, r, kernel="linear"))
        loss = float(metrics.kid_linear_loss(g, r))
    np.testing.assert_allclose(kid_lin, closed, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(loss + real_real, kid_lin, rtol=1e-12, atol=1e-12)
    # float32 (the default dtype) agrees to float32 round-off
    np.testing.assert_allclose(float(metrics.kid_linear_loss(g, r)) + real_real, closed, rtol=1e-5, atol=1e-5)


def test_kid_blocks_layout_and_single_block():
    # 10 generated rows in 3 blocks -> sizes 3, 3, 4 (smaller blocks first); 9 real -> 3, 3, 3.
    rng = np.random.default_rng(3)
    g, r = _gaussian(rng, 10, 4, mean=0.2), _gaussian(rng, 9, 4)
    with jax.enable_x64(True):
        per_block = [float(metrics.kid(g[a:b], r[c:e])) for (a, b), (c, e) in
                     zip([(0, 3), (3, 6), (6, 10)], [(0, 3), (3, 6), (6, 9)])]
        whole = float(metrics.kid(g, r))
    mean, std = metrics.kid_blocks(g, r, num_blocks=3)
    np.testing.assert_allclose(mean, np.mean(per_block), rtol=1e-12)
    np.testing.assert_allclose(std, np.std(per_block, ddof=1) / np.sqrt(3), rtol=1e-12)
    mean1, std1 = metrics.kid_blocks(g, r, num_blocks=1)
    np.testing.assert_allclose(mean1, whole, rtol=1e-12)
    assert np.isnan(std1)
    # tf-gan's rule: ceil(max(n, m) / max_block_size) blocks
    assert metrics.kid_blocks(g, r, max_block_size=4) == metrics.kid_blocks(g, r, num_blocks=3)


@pytest.mark.parametrize("fn", [lambda g, r: metrics.kid(g, r, kernel="cubic"),
                                lambda g, r: metrics.kid(g, r, kernel="linear"),
                                metrics.kid_linear_loss], ids=["kid_cubic", "kid_linear", "kid_linear_loss"])
def test_gradients_match_finite_differences(fn):
    rng = np.random.default_rng(4)
    g, r = _gaussian(rng, 6, 3, mean=0.3), _gaussian(rng, 5, 3)
    with jax.enable_x64(True):
        g, r = jnp.asarray(g), jnp.asarray(r)
        grad = jax.jit(jax.grad(fn))(g, r)  # jit: no host sync inside
        for seed in range(3):
            v = jnp.asarray(np.random.default_rng(10 + seed).standard_normal(g.shape))
            h = 1e-5
            fd = (fn(g + h * v, r) - fn(g - h * v, r)) / (2 * h)
            np.testing.assert_allclose(float(jnp.sum(grad * v)), float(fd), rtol=1e-7, atol=1e-10)


def test_linear_loss_has_the_gradient_of_linear_kid():
    rng = np.random.default_rng(5)
    g, r = _gaussian(rng, 9, 4), _gaussian(rng, 12, 4, mean=-0.5)
    with jax.enable_x64(True):
        a = jax.grad(lambda x: metrics.kid(x, r, kernel="linear"))(jnp.asarray(g))
        b = jax.grad(lambda x: metrics.kid_linear_loss(x, r))(jnp.asarray(g))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- FID


def test_gaussian_stats_and_fid_of_identical_stats():
    rng = np.random.default_rng(6)
    x = _gaussian(rng, 50, 6) @ rng.standard_normal((6, 6))
    mu, cov = metrics.gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-12)
    assert abs(metrics.fid_from_stats(mu, cov, mu, cov)) < 1e-9 * np.trace(cov)


def test_fid_closed_form_for_diagonal_and_commuting_gaussians():
    # Diagonal covariances: FID = ||mu1 - mu2||^2 + sum_i (sqrt(v1_i) - sqrt(v2_i))^2, and it is
    # invariant under a common rotation Q (then cov1, cov2 commute but are not diagonal).
    rng = np.random.default_rng(7)
    d = 8
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    v1, v2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    np.testing.assert_allclose(metrics.fid_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)), closed, rtol=1e-12)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    rotated = metrics.fid_from_stats(Q @ mu1, Q @ np.diag(v1) @ Q.T, Q @ mu2, Q @ np.diag(v2) @ Q.T)
    np.testing.assert_allclose(rotated, closed, rtol=1e-10)


def test_fid_matches_scipy_sqrtm_and_is_robust_when_rank_deficient():
    rng = np.random.default_rng(8)
    a, b = _gaussian(rng, 200, 10), _gaussian(rng, 150, 10, mean=0.2) @ rng.standard_normal((10, 10))
    (mu1, c1), (mu2, c2) = metrics.gaussian_stats(a), metrics.gaussian_stats(b)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2) - 2 * np.real(np.trace(scipy.linalg.sqrtm(c1 @ c2)))
    np.testing.assert_allclose(metrics.fid(a, b), ref, rtol=1e-9)
    # Fewer rows than features: singular covariances (tiny negative eigenvalues from round-off).
    a, b = _gaussian(rng, 7, 20), _gaussian(rng, 9, 20, mean=0.1)
    f_ab, f_ba = metrics.fid(a, b), metrics.fid(b, a)
    assert np.isfinite(f_ab) and f_ab > 0
    np.testing.assert_allclose(f_ab, f_ba, rtol=1e-9)
    assert abs(metrics.fid(a, a)) < 1e-9 * np.trace(np.cov(a, rowvar=False))


# --------------------------------------------------------------------------- input checks

_OK = np.zeros((5, 3)) + np.arange(3)


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.kid(np.zeros(5), _OK), "feats_gen must be a 2-D array"),
    (lambda: metrics.kid(_OK, np.zeros((5, 3, 1))), "feats_real must be a 2-D array"),
    (lambda: metrics.kid(_OK, np.zeros((5, 4))), "same feature width, got 3 and 4"),
    (lambda: metrics.kid(_OK[:1], _OK), "at least 2 rows"),
    (lambda: metrics.kid(_OK, np.where(_OK > 1, np.nan, _OK)), "feats_real must be finite"),
    (lambda: metrics.kid_linear_loss(np.full((4, 3), np.inf), _OK), "feats_gen must be finite"),
    (lambda: metrics.kid(_OK, _OK, kernel="rbf"), r"kernel must be one of \['cubic', 'linear'\], got 'rbf'"),
    (lambda: metrics.kid_blocks(_OK, _OK, kernel="quadratic"), r"\['cubic', 'linear'\]"),
    (lambda: metrics.kid_blocks(_OK, _OK, num_blocks=0), "num_blocks must be an integer >= 1"),
    (lambda: metrics.kid_blocks(_OK, _OK, num_blocks=3), "fewer than 2 rows"),
    (lambda: metrics.kid_blocks(_OK, _OK, max_block_size=1), "fewer than 2 rows"),
    (lambda: metrics.kid_blocks(_OK, _OK, num_blocks=1, max_block_size=5), "not both"),
    (lambda: metrics.kid_blocks(_OK, _OK, max_block_size=0), "max_block_size must be an integer >= 1"),
    (lambda: metrics.gaussian_stats(_OK[:1]), "at least 2 rows"),
    (lambda: metrics.fid(_OK, np.zeros((5, 2))), "same feature width"),
    (lambda: metrics.fid_from_stats(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2)), "same dimension"),
    (lambda: metrics.fid_from_stats(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), r"cov1 must have shape \(3, 3\)"),
    (lambda: metrics.fid_from_stats(np.zeros(3), np.eye(3), np.zeros(3), np.eye(3) * np.nan), "cov2 must be finite"),
])
def test_bad_inputs_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- cache


def test_cached_arrays_computes_once_per_config(tmp_path):
    calls = []

    def compute(seed):
        def fn():
            calls.append(seed)
            x = np.random.default_rng(seed).standard_normal((20, 3))
            mu, cov = metrics.gaussian_stats(x)
            return {"features": x, "mu": mu, "cov": cov}
        return fn

    first = metrics.cached_arrays({"seed": 0, "n": 20}, compute(0), cache_dir=tmp_path)
    again = metrics.cached_arrays({"n": 20, "seed": 0}, compute(0), cache_dir=tmp_path)  # key order irrelevant
    other = metrics.cached_arrays({"seed": 1, "n": 20}, compute(1), cache_dir=tmp_path)
    assert calls == [0, 1]
    assert set(again) == {"features", "mu", "cov"}
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["features"], other["features"])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and all(f.startswith("features-") and f.endswith(".npz") for f in files)
    # a damaged entry is recomputed (with a warning), not read
    (tmp_path / files[0]).write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unusable cache entry"):
        for seed in (0, 1):
            metrics.cached_arrays({"seed": seed, "n": 20}, compute(seed), cache_dir=tmp_path)
    assert len(calls) == 3
    with pytest.raises(ValueError, match="non-empty dict"):
        metrics.cached_arrays({"seed": 2}, lambda: {}, cache_dir=tmp_path)


# --------------------------------------------------------------------------- tensorflow-gan parity

# (name, n_gen, n_real, width, mean shift, feature kind, tf-gan max_block_size values).
# Block counts and sizes (tf-gan's rule, ceil(max(n_gen, n_real) / max_block_size) blocks):
# "b" @ 7 -> 43 blocks, real blocks of 3 and 4 rows, gen of 6 and 7; "c" @ 1024 -> 3 blocks of
# 333/334 gen and 833/834 real rows; "d" has fewer rows than features (singular covariances).
PARITY_CASES = [
    ("a", 200, 200, 8, 0.0, "normal", [1024, 50]),
    ("b", 300, 170, 16, 0.3, "normal", [1024, 100, 50, 7]),
    ("c", 1000, 2500, 32, 0.1, "normal", [1024, 300]),
    ("d", 40, 57, 64, 0.5, "normal", [1024, 9]),
    ("e", 513, 700, 128, 0.2, "relu", [1024, 128]),
]
# float64 inputs to tf-gan: same semantics, so only round-off differs (measured <= 3e-13 relative,
# also for FID with singular covariances, where tf-gan's SVD leaves singular values < 1e-10 unrooted
# and we zero eigenvalues below the numerical-rank cutoff).
RTOL64 = 1e-10
# float32 inputs: tf-gan computes KID in float32 (we in float64), so its sums of n^2 kernel values
# of size ~K carry ~1e-7 K relative round-off; FID is float64 inside tf-gan, cast to float32.
RTOL32, KERNEL_ATOL32 = 1e-4, 1e-6  # measured: <= 7e-6 relative, 1.5e-6 absolute


def _parity_features(rng, n, d, shift, kind):
    x = rng.standard_normal((n, d)) + shift
    return (np.maximum(x, 0.0) * 2.0 if kind == "relu" else x).astype(np.float32)


def _tf_python() -> str:
    path = os.environ.get("DDSS_TF_PYTHON")
    if not path:
        if os.environ.get("CI") == "true":
            pytest.fail("DDSS_TF_PYTHON is unset under CI=true; `make test` creates the tensorflow-gan "
                        "environment (.venv-tf) and passes its python, so its absence is a defect")
        pytest.skip("DDSS_TF_PYTHON is unset: no tensorflow-gan environment to compare against "
                    "(`make tfenv` creates .venv-tf; `make test` passes it)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"DDSS_TF_PYTHON={path!r} is not an executable python")
    return path


@pytest.fixture(scope="module")
def tf_parity(tmp_path_factory):
    tf_python = _tf_python()
    rng = np.random.default_rng(2024)
    arrays, feats = {}, {}
    for name, n_gen, n_real, d, shift, kind, sizes in PARITY_CASES:
        gen, real = _parity_features(rng, n_gen, d, shift, kind), _parity_features(rng, n_real, d, 0.0, kind)
        feats[name] = (gen, real, sizes)
        arrays.update({f"{name}__gen": gen, f"{name}__real": real, f"{name}__max_block_sizes": np.array(sizes)})
    tmp = tmp_path_factory.mktemp("tf_parity")
    np.savez(tmp / "activations.npz", **arrays)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([tf_python, str(HERE / "tf_reference.py"), str(tmp / "activations.npz"),
                           str(tmp / "results.json")], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, f"tests/tf_reference.py failed:\n{proc.stderr[-4000:]}"
    ref = json.loads((tmp / "results.json").read_text())
    assert ref["versions"]["tensorflow_gan"] == "2.1.0", ref["versions"]
    return feats, ref["cases"]


def _kernel_scale(gen, real):
    """Mean cubic kernel value between the sets: the size of the terms KID sums."""
    g, r = gen.astype(np.float64), real.astype(np.float64)
    return float(np.mean((g @ r.T / g.shape[1] + 1.0) ** 3))


@pytest.mark.tf
@pytest.mark.parametrize("case", [c[0] for c in PARITY_CASES])
def test_kid_blocks_matches_tensorflow_gan(tf_parity, case):
    feats, ref = tf_parity
    gen, real, sizes = feats[case]
    atol32 = KERNEL_ATOL32 * _kernel_scale(gen, real)
    for b in sizes:
        ours = metrics.kid_blocks(gen, real, max_block_size=b)
        for dtype, rtol, atol in (("float64", RTOL64, 0.0), ("float32", RTOL32, atol32)):
            theirs = ref[case]["kid"][dtype][str(b)]
            assert np.isnan(ours[1]) == np.isnan(theirs[1]), (case, b, dtype, ours, theirs)
            np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, equal_nan=True,
                                       err_msg=f"case {case}, max_block_size {b}, tf-gan {dtype}")


@pytest.mark.tf
@pytest.mark.parametrize("case", [c[0] for c in PARITY_CASES])
def test_fid_matches_tensorflow_gan(tf_parity, case):
    feats, ref = tf_parity
    gen, real, _ = feats[case]
    ours = metrics.fid(gen, real)
    np.testing.assert_allclose(ours, ref[case]["fid"]["float64"], rtol=RTOL64, err_msg=f"case {case}, float64")
    np.testing.assert_allclose(ours, ref[case]["fid"]["float32"], rtol=RTOL32, err_msg=f"case {case}, float32")


def test_kid_parity_tolerance_is_not_vacuous():
    # The float32 tolerance must separate the estimator from its nearest wrong variants:
    # the V-statistic and a different block split both move KID by far more than it allows.
    rng = np.random.default_rng(9)
    gen, real = _parity_features(rng, 300, 16, 0.3, "normal"), _parity_features(rng, 170, 16, 0.0, "normal")
    m3, _ = metrics.kid_blocks(gen, real, num_blocks=3)
    tol = RTOL32 * abs(m3) + KERNEL_ATOL32 * _kernel_scale(gen, real)
    g, r = gen.astype(np.float64), real.astype(np.float64)
    k = metrics.cubic_kernel
    v_stat = np.mean([k(a, a).mean() + k(b, b).mean() - 2 * k(a, b).mean()
                      for a, b in zip(np.array_split(g, 3), np.array_split(r, 3))])
    # np.array_split puts the larger blocks first (real: 57, 57, 56 rows; tf-gan: 56, 57, 57)
    larger_first = np.mean([metrics.kid_blocks(a, b, num_blocks=1)[0]
                            for a, b in zip(np.array_split(g, 3), np.array_split(r, 3))])
    assert abs(v_stat - m3) > 100 * tol and abs(larger_first - m3) > 3 * tol, (m3, v_stat, larger_first, tol)


def test_fid_from_stats_rejects_matrices_that_are_not_covariances():
    rng = np.random.default_rng(11)
    a = rng.standard_normal((50, 4))
    mu, cov = metrics.gaussian_stats(a)
    with pytest.raises(ValueError, match="cov1 must be symmetric"):
        metrics.fid_from_stats(mu, cov + np.triu(np.ones((4, 4)), 1), mu, cov)
    with pytest.raises(ValueError, match="cov2 must be positive semi-definite"):
        metrics.fid_from_stats(mu, cov, mu, cov - 2 * np.eye(4) * np.linalg.eigvalsh(cov).max())
    # a singular covariance (fewer rows than features) is a covariance: accepted
    mu3, cov3 = metrics.gaussian_stats(a[:3])
    assert np.isfinite(metrics.fid_from_stats(mu3, cov3, mu, cov))
