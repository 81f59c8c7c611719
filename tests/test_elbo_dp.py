"""Per-step ELBO terms (ddss_lite.elbo) and the optimal-schedule dynamic program (ddss_lite.dp)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddss_lite import dp, elbo
from ddss_lite.schedules import alpha_sigma


def random_costs(rng, T, *, low=0.0):
    return rng.uniform(low, 1.0, (T + 1, T + 1))


def elbo_structured_costs(rng, T, *, mse_order="decreasing"):
    """C[i, j] = 1/2 (SNR(j) - SNR(i)) mse[i] on a random increasing log-SNR grid (mse decreasing in
    the index, i.e. in log-SNR, as for the exact denoiser; ``"increasing"`` reverses it)."""
    lam = np.sort(rng.uniform(-8.0, 8.0, T + 1))
    mse = np.sort(rng.uniform(0.01, 5.0, T + 1))[::-1].copy()
    if mse_order == "increasing":
        mse = mse[::-1].copy()
    return elbo.cost_matrix(lam, mse), lam, mse


# --------------------------------------------------------------------------- the DP


@pytest.mark.parametrize("seed", range(5))
def test_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    T = 12
    for C in (random_costs(rng, T), random_costs(rng, T, low=-1.0), elbo_structured_costs(rng, T)[0]):
        res = dp.optimal_paths(C, 4)
        assert res.costs.shape == (4,) and len(res.paths) == 4
        for K in range(1, 5):
            cost, path = dp.brute_force_path(C, K)
            np.testing.assert_allclose(res.costs[K - 1], cost, rtol=1e-12, atol=1e-12)   # float64 DP
            np.testing.assert_array_equal(res.paths[K - 1], path)
            assert len(res.paths[K - 1]) == K + 1
            assert res.costs[K - 1] == pytest.approx(dp.path_cost(C, res.paths[K - 1]), rel=1e-12)


def test_dp_forbidden_steps_match_brute_force():
    rng = np.random.default_rng(7)
    T = 10
    C = random_costs(rng, T)
    C[rng.uniform(size=C.shape) < 0.4] = np.inf   # forbid 40 % of the steps
    res = dp.optimal_paths(C, T)
    for K in range(1, T + 1):
        cost, path = dp.brute_force_path(C, K)
        assert res.costs[K - 1] == (pytest.approx(cost, rel=1e-6) if np.isfinite(cost) else np.inf)
        if path is None:
            assert res.paths[K - 1] is None
        else:
            np.testing.assert_array_equal(res.paths[K - 1], path)
    # Only the one-step path allowed: K >= 2 has no finite path.
    C2 = np.full((T + 1, T + 1), np.inf)
    C2[0, T] = 3.0
    res2 = dp.optimal_paths(C2, 3)
    assert res2.costs[0] == 3.0 and res2.costs[1:].tolist() == [np.inf, np.inf]
    assert res2.paths[1] is None and res2.paths[0].tolist() == [0, T]


@pytest.mark.parametrize("seed", range(3))
def test_dp_with_end_cost_matches_brute_force(seed):
    rng = np.random.default_rng(50 + seed)
    T = 11
    C = random_costs(rng, T)
    end = rng.uniform(0.0, 2.0, T + 1)
    end[rng.uniform(size=T + 1) < 0.3] = np.inf
    end[8] = 0.5                                   # at least one finite end
    res = dp.optimal_paths(C, T, end_cost=end)
    for K in range(1, T + 1):
        cost, path = dp.brute_force_path(C, K, end_cost=end)
        if path is None:
            assert res.paths[K - 1] is None and res.costs[K - 1] == np.inf
            continue
        assert res.costs[K - 1] == pytest.approx(cost, rel=1e-12)
        np.testing.assert_array_equal(res.paths[K - 1], path)
        assert res.costs[K - 1] == pytest.approx(dp.path_cost(C, path, end_cost=end), rel=1e-12)
    # an end cost that is 0 at index T and +inf elsewhere is the default problem
    pinned = np.full(T + 1, np.inf)
    pinned[T] = 0.0
    a, b = dp.optimal_paths(C, 5, end_cost=pinned), dp.optimal_paths(C, 5)
    np.testing.assert_array_equal(a.costs, b.costs)
    assert all(np.array_equal(p, q) for p, q in zip(a.paths, b.paths))


@pytest.mark.parametrize("seed", range(3))
def test_dp_never_worse_than_hand_made_paths(seed):
    rng = np.random.default_rng(100 + seed)
    T = 40
    for C in (random_costs(rng, T), elbo_structured_costs(rng, T)[0]):
        res = dp.optimal_paths(C, T)
        for K in range(1, T + 1):
            assert res.costs[K - 1] <= dp.path_cost(C, dp.even_path(T, K)) * (1 + 1e-6)
            assert res.costs[K - 1] <= dp.path_cost(C, dp.quadratic_path(T, K)) * (1 + 1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_dp_cost_monotone_in_K_follows_from_mse_order(seed):
    # L(i,j) - [L(i,u) + L(u,j)] = 1/2 (SNR(j) - SNR(u)) (mse[i] - mse[u]) for i < u < j: with mse
    # non-increasing in log-SNR (cleaner -> better, as for the exact denoiser) splitting a step never
    # costs more, so the best K-step cost is non-increasing in K and K = T is best; with mse
    # increasing it is the reverse, so the monotonicity is not a property of any DP.
    rng = np.random.default_rng(200 + seed)
    T = 30
    C, lam, mse = elbo_structured_costs(rng, T)
    i, u, j = 3, 11, 20
    lhs = C[i, j] - (C[i, u] + C[u, j])
    rhs = 0.5 * (math.exp(lam[j]) - math.exp(lam[u])) * (mse[i] - mse[u])
    assert lhs == pytest.approx(rhs, rel=1e-9)
    costs = dp.optimal_paths(C, T).costs
    assert np.all(np.diff(costs) <= 1e-9 * costs[:-1])
    assert costs[-1] == pytest.approx(dp.path_cost(C, np.arange(T + 1)), rel=1e-12)

    C_inc, _, _ = elbo_structured_costs(rng, T, mse_order="increasing")
    costs_inc = dp.optimal_paths(C_inc, T).costs
    assert np.all(np.diff(costs_inc) >= -1e-9 * costs_inc[1:])
    assert costs_inc[-1] > costs_inc[0]


def test_hand_made_paths_are_valid():
    for T in range(1, 31):
        for K in range(1, T + 1):
            for p in (dp.even_path(T, K), dp.quadratic_path(T, K)):
                assert p.shape == (K + 1,) and p[0] == 0 and p[-1] == T and np.all(np.diff(p) >= 1)
    np.testing.assert_array_equal(dp.even_path(10, 5), [0, 2, 4, 6, 8, 10])
    np.testing.assert_array_equal(dp.quadratic_path(100, 5), 100 - np.array([100, 64, 36, 16, 4, 0]))  # dense at T
    np.testing.assert_array_equal(dp.quadratic_path(10, 10), np.arange(11))   # collisions resolved
    lam = elbo.logsnr_grid(10)
    assert np.all(np.diff(lam) > 0) and lam[0] == elbo.LOGSNR_NOISY and lam[-1] == elbo.LOGSNR_CLEAN
    g = dp.path_to_grid([0, 3, 10], lam)
    np.testing.assert_array_equal(g, [lam[0], lam[3], lam[10]])


# --------------------------------------------------------------------------- diffusion terms


def gaussian_denoiser(m, s2, calls):
    """Exact x_hat for x ~ N(m, diag(s2)); each execution appends the batch shape to ``calls``."""
    m, s2 = jnp.asarray(m, jnp.float32), jnp.asarray(s2, jnp.float32)

    def denoise(z, logsnr):
        jax.debug.callback(lambda shape: calls.append(tuple(shape)), jnp.asarray(z.shape))
        a, s = alpha_sigma(logsnr)
        return m + a * s2 * (z - a * m) / (a**2 * s2 + s**2)

    return denoise


def gaussian_mse(lam, s2):
    """Posterior variance times dim: sum_d s2 sigma^2 / (alpha^2 s2 + sigma^2) = sum_d s2 / (SNR s2 + 1)."""
    return np.sum(s2[None] / (np.exp(lam)[:, None] * s2[None] + 1.0), axis=1)


def test_mse_per_t_matches_gaussian_closed_form_with_one_pass_per_t():
    m = np.array([0.5, -1.0, 0.0, 2.0])
    s2 = np.array([0.3, 1.0, 2.5, 0.05])
    B, T = 4000, 24
    x = m + np.sqrt(s2) * np.asarray(jax.random.normal(jax.random.PRNGKey(0), (B, 4)))
    lam = elbo.logsnr_grid(T)
    calls = []
    denoise = gaussian_denoiser(m, s2, calls)
    mse, se = elbo.mse_per_t(denoise, jnp.asarray(x, jnp.float32), jax.random.PRNGKey(1), lam)
    assert calls == [(B, 4)] * (T + 1)          # exactly one network pass per grid point
    z = (mse - gaussian_mse(lam, s2)) / se
    assert np.all(np.abs(z) < 4.5), z
    assert 0.3 < np.mean(z**2) < 2.5, z        # the standard errors are of the right size
    # The noise of an example does not depend on the batch it is in.
    full = elbo.sq_err_per_t(denoise, jnp.asarray(x, jnp.float32), jax.random.PRNGKey(1), lam)
    sub = elbo.sq_err_per_t(denoise, jnp.asarray(x[:50], jnp.float32), jax.random.PRNGKey(1), lam)
    np.testing.assert_allclose(np.asarray(sub), np.asarray(full)[:, :50], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(full).mean(axis=1), mse, rtol=1e-6)


def test_all_steps_approach_continuous_time_gaussian():
    # Continuous time: 1/2 int e^lam mse(lam) dlam = D/2 [log(1 + s2 SNR)] from the noisy to the clean
    # end. The all-steps sum evaluates mse at each step's noisier end, where it is larger: above
    # the limit, error O(1/T); nested grids (T, 2T) shrink it monotonically.
    s2 = np.array([0.3, 1.0, 2.5])
    gaps = []
    for T in (200, 400, 800, 1600):
        lam = elbo.logsnr_grid(T)
        C = elbo.cost_matrix(lam, gaussian_mse(lam, s2))
        limit = 0.5 * np.sum(np.log1p(s2 * np.exp(lam[-1])) - np.log1p(s2 * np.exp(lam[0])))
        gaps.append(dp.path_cost(C, np.arange(T + 1)) / limit - 1)
    gaps = np.array(gaps)
    assert np.all(gaps > 0) and gaps[-1] < 0.05
    np.testing.assert_allclose(gaps[:-1] / gaps[1:], 2.0, rtol=0.15)   # first order in 1/T


def test_exact_denoiser_on_discrete_uniform_data_bounds_log_likelihood():
    # Pixels iid uniform on the 17 digit levels: -log p(x) = log2(17) bits/dim exactly, and the
    # exact denoiser (the posterior mean over levels) with the exact decoder makes the bound
    # tight as T -> oo. Every estimate must stay above it (within MC error) and close in on it.
    lv = jnp.asarray(elbo.DIGIT_LEVELS, jnp.float32)

    def denoise(z, logsnr):
        a, s = alpha_sigma(logsnr)
        return jax.nn.softmax(-0.5 * jnp.square((z[..., None] - a * lv) / s), axis=-1) @ lv

    x = lv[jax.random.randint(jax.random.PRNGKey(0), (1000, 4), 0, 17)]
    T = 400
    terms = elbo.elbo_terms(denoise, x, jax.random.PRNGKey(1), elbo.logsnr_grid(T, logsnr_max=11.0))
    # Grids are nested: every 4th point of the T = 400 grid is the T = 100 grid.
    np.testing.assert_allclose(terms.logsnrs[::4], elbo.logsnr_grid(100, logsnr_max=11.0), rtol=1e-5)
    exact = math.log2(17)
    bpd = {}
    for stride in (4, 1):
        path = np.arange(0, T + 1, stride)
        bpd[stride] = terms.nelbo_bpd(path)
        assert bpd[stride] > exact - 3 * terms.nelbo_bpd_se(path)
    assert bpd[1] < bpd[4] and bpd[1] - exact < 0.5
    # the DP's K-step optima, in bits/dim, are the numbers nelbo_bpd gives their paths
    res = dp.optimal_paths(terms.cost_matrix(), 16)
    for K in (1, 4, 16):
        assert terms.to_bpd(res.costs[K - 1]) == pytest.approx(terms.nelbo_bpd(res.paths[K - 1]), rel=1e-9)
    assert terms.to_bpd(res.costs[15]) <= terms.nelbo_bpd(dp.even_path(T, 16))
    np.testing.assert_allclose(terms.best_paths(16).costs, terms.to_bpd(res.costs), rtol=1e-12)
    # Letting each path choose where to stop and decode can only lower the bound, and the
    # bound it reports is the one nelbo_bpd gives that path (decoding from z_{j_K}).
    free = terms.best_paths(16, choose_end=True)
    assert np.all(free.costs <= terms.to_bpd(res.costs) + 1e-12)
    for K in (1, 4, 16):
        assert free.costs[K - 1] == pytest.approx(terms.nelbo_bpd(free.paths[K - 1]), rel=1e-9)
    assert terms.to_bpd(res.costs[15]) > bpd[1] - 3 * terms.nelbo_bpd_se(np.arange(T + 1))


def test_nelbo_bpd_is_sum_of_terms():
    lam = elbo.logsnr_grid(20)
    mse = np.linspace(3.0, 0.01, 21)
    path = [0, 2, 7, 20]
    C = elbo.cost_matrix(lam, mse)
    got = elbo.nelbo_bpd(path, logsnrs=lam, mse=mse, prior=0.2, recon=0.3, dim=64)
    assert got == pytest.approx((C[0, 2] + C[2, 7] + C[7, 20] + 0.5) / (64 * math.log(2)), rel=1e-12)
    # C[i, j] = 1/2 (SNR(j) - SNR(i)) mse[i], written out
    assert C[2, 7] == pytest.approx(0.5 * (math.exp(lam[7]) - math.exp(lam[2])) * mse[2], rel=1e-12)
    recon_t = np.linspace(9.0, 0.3, 21)       # a decoder term per grid point: used at j_K
    got = elbo.nelbo_bpd([0, 7, 15], logsnrs=lam, mse=mse, prior=0.2, recon=recon_t, dim=64)
    assert got == pytest.approx((C[0, 7] + C[7, 15] + 0.2 + recon_t[15]) / (64 * math.log(2)), rel=1e-12)
    with pytest.raises(ValueError, match="path"):   # a scalar recon belongs to j_K = T only
        elbo.nelbo_bpd([0, 7, 15], logsnrs=lam, mse=mse, prior=0.2, recon=0.3, dim=64)
    assert np.all(np.isinf(C[np.tril_indices(21)]))


def test_elbo_terms_helpers_agree_with_the_bound():
    """Per-example bounds average to the bound; concatenating two batches is one batch; the
    all-steps bound for every end equals nelbo_bpd of that path."""
    rng = np.random.default_rng(3)
    T, B = 12, 30
    lam = elbo.logsnr_grid(T)
    mk = lambda: elbo.ELBOTerms(logsnrs=lam, sq_err=rng.uniform(0, 2, (T + 1, B)), prior_b=rng.uniform(0, 1e-3, B),
                                recon_tb=np.sort(rng.uniform(0, 5, (T + 1, B)), axis=0)[::-1], dim=8)
    a, b = mk(), mk()
    both = elbo.ELBOTerms.concatenate([a, b])
    path = [0, 3, 9, 12]
    assert both.sq_err.shape == (T + 1, 2 * B)
    assert both.nelbo_bpd(path) == pytest.approx(0.5 * (a.nelbo_bpd(path) + b.nelbo_bpd(path)), rel=1e-12)
    assert both.per_example_bpd(path).mean() == pytest.approx(both.nelbo_bpd(path), rel=1e-12)
    ends = both.all_steps_bpd_by_end()
    for e in (1, 5, T):
        assert ends[e] == pytest.approx(both.nelbo_bpd(np.arange(e + 1)), rel=1e-12)
    assert np.isinf(ends[0])
    with pytest.raises(ValueError, match="same logsnrs"):
        elbo.ELBOTerms.concatenate([a, elbo.ELBOTerms(logsnrs=elbo.logsnr_grid(T, logsnr_max=8.0), sq_err=a.sq_err,
                                                      prior_b=a.prior_b, recon_tb=a.recon_tb, dim=8)])


def test_prior_kl_closed_form():
    x = np.array([[0.0, 1.0, -0.5], [2.0, 0.0, 0.3]])
    for lam in (-20.0, -2.0, 0.0, 3.0):
        a2, s2 = 1 / (1 + math.exp(-lam)), 1 / (1 + math.exp(lam))
        want = np.mean(np.sum(0.5 * (s2 + a2 * x**2 - 1 - math.log(s2)), axis=1))
        assert elbo.prior_kl(x, lam) == pytest.approx(want, rel=1e-9, abs=1e-15)
    assert 0 < elbo.prior_kl(x, -20.0) < 1e-8


# --------------------------------------------------------------------------- decoder


def test_decoder_is_normalised_and_recon_vanishes():
    z0 = jnp.linspace(-3.0, 3.0, 101)
    for lam0 in (-5.0, 2.0, 9.0, 20.0):
        p = np.exp(np.asarray(elbo.decoder_logprobs(z0, lam0), np.float64))
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    levels = np.asarray(elbo.DIGIT_LEVELS)
    x = levels[np.random.default_rng(0).integers(0, 17, (50, 64))]
    lams = np.array([0.0, 4.0, 6.0, 8.0, 9.0, 10.0, 12.0])
    r = [elbo.recon_nll(x, lam0) for lam0 in lams]
    np.testing.assert_allclose(elbo.recon_nll(x, lams), r, rtol=1e-12)   # vectorised = scalar
    assert np.all(np.diff(r) < 0) and r[0] > 10.0
    assert r[-1] < 1e-12
    assert elbo.recon_nll(x, elbo.LOGSNR_CLEAN) / (64 * math.log(2)) < 1e-6   # the default endpoint
    # far below the bins' resolution the decoder knows nothing: -log p -> log(#levels)
    assert elbo.recon_nll_per_level(-30.0) == pytest.approx(np.full(17, math.log(17)), rel=1e-3)


@pytest.mark.parametrize("lam0", [6.0, 8.0])
def test_recon_quadrature_matches_monte_carlo(lam0):
    levels = np.asarray(elbo.DIGIT_LEVELS)
    rng = np.random.default_rng(1)
    a, s = math.sqrt(1 / (1 + math.exp(-lam0))), math.sqrt(1 / (1 + math.exp(lam0)))
    for j in (0, 8, 16):
        z0 = a * levels[j] + s * rng.standard_normal(200_000)
        u = (z0[:, None] / a - levels[None]) / (s / a)
        logits = -0.5 * u**2
        nll = np.log(np.sum(np.exp(logits - logits[:, [j]]), axis=1))   # -log softmax_j, float64
        want, se = nll.mean(), nll.std() / math.sqrt(nll.size)
        got = elbo.recon_nll_per_level(lam0)[j]
        assert abs(got - want) < 4 * se + 1e-12, (j, got, want, se)


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    C = random_costs(rng, 6)
    for K_max in (0, 7, 2.0, True):
        with pytest.raises(ValueError, match="K_max"):
            dp.optimal_paths(C, K_max)
    with pytest.raises(ValueError, match="square"):
        dp.optimal_paths(C[:, :5], 2)
    with pytest.raises(ValueError, match="square"):
        dp.optimal_paths(C[0], 1)
    with pytest.raises(ValueError, match="square"):
        dp.optimal_paths(np.zeros((1, 1)), 1)
    bad = C.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dp.optimal_paths(bad, 2)
    bad = C.copy()
    bad[1, 3] = -np.inf
    with pytest.raises(ValueError, match="-inf"):
        dp.optimal_paths(bad, 2)
    with pytest.raises(ValueError, match="K must be an integer in \\[1, 6\\]"):
        dp.brute_force_path(C, 7)
    with pytest.raises(ValueError, match="K"):
        dp.even_path(5, 6)
    with pytest.raises(ValueError, match="K"):
        dp.quadratic_path(5, 0)
    with pytest.raises(ValueError, match="path"):
        dp.path_cost(C, [0, 3, 3, 6])
    with pytest.raises(ValueError, match="path"):
        dp.path_cost(C, [1, 6])
    lam = elbo.logsnr_grid(6)
    for fn in (lambda g: elbo.cost_matrix(g, np.ones(7)), lambda g: elbo.step_weights(g),
               lambda g: elbo.nelbo_bpd([0, 6], logsnrs=g, mse=np.ones(7), prior=0, recon=0, dim=1),
               lambda g: dp.path_to_grid([0, 6], g)):
        with pytest.raises(ValueError, match="logsnrs must be strictly increasing"):
            fn(lam[::-1])                     # no function of the library accepts a decreasing grid
    with pytest.raises(ValueError, match="mse"):
        elbo.cost_matrix(lam, np.ones(6))
    with pytest.raises(ValueError, match="mse"):
        elbo.cost_matrix(lam, -np.ones(7))
    with pytest.raises(ValueError, match="logsnr_max must be > logsnr_min"):
        elbo.logsnr_grid(6, logsnr_max=-25.0)
    with pytest.raises(ValueError, match="levels"):
        elbo.recon_nll(np.full((2, 3), 0.06), 9.0)
    with pytest.raises(ValueError, match="path"):
        elbo.nelbo_bpd([0, 2, 5], logsnrs=lam, mse=np.ones(7), prior=0.0, recon=0.0, dim=3)
    with pytest.raises(ValueError, match="end_cost"):
        dp.optimal_paths(C, 2, end_cost=np.ones(6))
    with pytest.raises(ValueError, match="end_cost"):
        dp.optimal_paths(C, 2, end_cost=np.r_[0.0, np.full(6, np.inf)])
    with pytest.raises(ValueError, match="logsnrs"):
        elbo.mse_per_t(lambda z, l: z, jnp.zeros((4, 2)), jax.random.PRNGKey(0), [1.0])
