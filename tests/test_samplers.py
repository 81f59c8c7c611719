"""Analytic properties of the samplers (ddss_lite.samplers).

Data on one point (x_hat = m): every sampler lands on m. Gaussian data N(m, s^2):
the denoiser and the probability-flow map are closed-form, so each solver's error
and order of convergence in K are measured against the exact map. Learnable
families initialised from DDIM/DDPM reproduce them; bad input raises ValueError.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddss_lite import chain, samplers, schedules
from ddss_lite.schedules import alpha_sigma

from conftest import GaussianData, counting_denoiser

G = GaussianData()       # data N(0.3, 0.5^2) per dimension: closed-form denoiser and flow map
M, S = G.m, G.s
KEY = jax.random.PRNGKey(0)
FIXED = sorted(samplers.SAMPLERS)


# ----------------------------------------------------------------------------- helpers
# Compilation dominates the run time on a CPU, so each (sampler, K, shape) program is
# jitted once and shared between tests (``run``), with module-level denoisers.


def gaussian_denoiser(z, logsnr):
    return G.denoise(z, logsnr)


def nonlinear_denoiser(z, logsnr):
    """A smooth, non-trivial stand-in for a network (per-example, no batch coupling)."""
    alpha, sigma = alpha_sigma(logsnr)
    return jnp.tanh(1.3 * alpha * z + 0.2 * sigma) + 0.1 * jnp.sin(z[..., ::-1])


POINT = jnp.array([0.7, -1.2, 0.0])


def point_denoiser(z, logsnr):
    """Data on the single point ``POINT``: ``x_hat = POINT`` everywhere."""
    return jnp.broadcast_to(POINT, z.shape)


DENOISERS = {"gaussian": gaussian_denoiser, "nonlinear": nonlinear_denoiser, "point": point_denoiser}


def grid64(K):
    """The default grid in the current default float dtype (float64 under ``enable_x64``)."""
    return jnp.asarray(schedules.grid(K), chain.default_dtype())


@functools.lru_cache(maxsize=None)
def run(name, K, shape, denoiser, x64=False, **options):
    """A jitted ``key -> (z_K, trajectory)`` for fixed sampler ``name`` (cached per configuration)."""
    sampler = samplers.get_sampler(name)
    go = jax.jit(lambda key, logsnrs: sampler(DENOISERS[denoiser], key, shape, logsnrs=logsnrs,
                                              return_trajectory=True, **options))

    def call(key):
        with jax.enable_x64(x64):
            return go(key, grid64(K))

    return call


def signed_flow_error(name, K, **options):
    """``<z_K - Phi(z_0), Phi(z_0) - alpha_K m> / ||Phi(z_0) - alpha_K m||^2`` for the same z_0 (float64,
    cosine even grid): the solver's map and the exact flow ``Phi`` are both affine in z_0 with (to 1e-5)
    the same offset ``alpha_K m``, so this is ``c_solver / c_exact - 1`` for their slopes, whatever the draw."""
    with jax.enable_x64(True):
        z, traj = run(name, K, (256, 2), "gaussian", x64=True, **options)(KEY)
        logsnrs = grid64(K)
        z_exact = G.flow(traj[0], logsnr_t=logsnrs[0], logsnr_s=logsnrs[-1])
        ref = z_exact - alpha_sigma(logsnrs[-1])[0] * M
        return float(jnp.vdot(z - z_exact, ref) / jnp.vdot(ref, ref))


def relative_flow_error(name, K, **options):
    """``|c_solver / c_exact - 1|`` (see :func:`signed_flow_error`)."""
    return abs(signed_flow_error(name, K, **options))


def orders(errors):
    """Observed orders ``log2(e_K / e_2K)`` for errors at K, 2K, 4K, ..."""
    e = np.asarray(errors)
    return np.log2(e[:-1] / e[1:])


# ----------------------------------------------------------------------------- single-point data


@pytest.mark.parametrize("K", [1, 5])
def test_single_point_data_lands_on_the_point(K):
    """x_hat = m everywhere: z_K = alpha_K m + (sigma_K / sigma_0)(z_0 - alpha_0 m) for DDIM-type maps.

    DDIM, DPM-Solver++ (D = m at every step) and Heun (eps_hat_s = eps_hat_t) all reduce to it;
    at logsnr 20 the residual |z_K - m| is bounded by (1 - alpha_K)|m| + (sigma_K/sigma_0)|z_0|.
    DDPM adds posterior noise of std <= sigma_K at the last step.
    """
    logsnrs = schedules.grid(K)
    out = jax.jit(lambda g: {name: samplers.get_sampler(name)(point_denoiser, KEY, (64, 3), logsnrs=g,
                                                                return_trajectory=True)
                             for name in FIXED})(logsnrs)
    alpha_0, sigma_0 = alpha_sigma(logsnrs[0])
    alpha_K, sigma_K = alpha_sigma(logsnrs[-1])
    for name, (z, traj) in out.items():
        bound = (1 - alpha_K) * jnp.abs(POINT) + sigma_K / sigma_0 * jnp.abs(traj[0]) + 1e-6
        if name == "ddpm":
            bound = bound + 6 * sigma_K
        else:
            expected = alpha_K * POINT + sigma_K / sigma_0 * (traj[0] - alpha_0 * POINT)
            np.testing.assert_allclose(z, expected, atol=1e-6, err_msg=name)
        assert jnp.all(jnp.abs(z - POINT) <= bound), name
        assert float(jnp.max(jnp.abs(z - POINT))) < 1e-3, name


# ----------------------------------------------------------------------------- Gaussian data: orders


def ddim_gain_closed_form(K):
    """DDIM's map on Gaussian data is affine in z_0 with slope ``prod_i (mu_i g_i + nu_i)``, written here
    independently of the library (float64): ``mu_i = alpha_{i+1} - alpha_i sigma_{i+1} / sigma_i`` on x_hat,
    ``nu_i = sigma_{i+1} / sigma_i`` on z, and ``x_hat = m + g_i (z - alpha_i m)``."""
    lam = np.asarray(grid64(K), np.float64)
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    mu = alpha[1:] - alpha[:-1] * sigma[1:] / sigma[:-1]
    nu = sigma[1:] / sigma[:-1]
    return float(np.prod(mu * G.gain64(lam[:-1]) + nu))


def test_ddim_on_gaussian_equals_the_closed_form_product_of_gains_and_is_first_order():
    """The sampler's slope equals the closed-form product of per-step gains (to float64 round-off), and its
    error against the exact flow's gain falls at order ~1 in K."""
    Ks = (5, 10, 20, 40)
    errors = []
    for K in Ks:
        lam = np.asarray(grid64(K), np.float64)
        closed = ddim_gain_closed_form(K) / G.flow_gain(lam[0], lam[-1]) - 1.0
        np.testing.assert_allclose(signed_flow_error("ddim", K), closed, rtol=1e-6, atol=1e-9)
        errors.append(abs(closed))
    p = orders(errors)
    assert np.all((p > 0.85) & (p < 1.1)), (errors, p)


def test_dpm_solver_pp_2m_second_order_update_converges_at_order_two():
    """With the second-order update on every step after the first (``lower_order_final=False``) the
    observed order is ~2 for K = 20 -> 40 -> 80 (pre-asymptotic below: the first step from -20 is long)."""
    errors = [relative_flow_error("dpm_solver_pp_2m", K, lower_order_final=False) for K in (20, 40, 80)]
    p = orders(errors)
    assert np.all(p > 1.7), (errors, p)


def test_dpm_solver_pp_2m_default_final_step_beats_second_order_and_ddim():
    """The default first-order last step (see the docstring's analysis): more accurate than the
    second-order last step and than DDIM at every K; its signed error goes from negative (the last step's
    error dominates) to positive (the interior's), so the magnitude falls monotonically on each side of
    that crossing and only there is not monotone."""
    Ks = (5, 10, 15, 20, 30, 40, 80)
    signed = np.array([signed_flow_error("dpm_solver_pp_2m", K) for K in Ks])
    second = np.array([relative_flow_error("dpm_solver_pp_2m", K, lower_order_final=False) for K in Ks])
    ddim_err = np.array([relative_flow_error("ddim", K) for K in Ks])
    assert np.all(np.abs(signed) < second) and np.all(np.abs(signed) < ddim_err), (signed, second, ddim_err)
    neg, pos = signed < 0, signed > 0
    cross = int(np.argmax(pos))                       # first K with a positive error
    assert neg[:cross].all() and pos[cross:].all(), signed          # one sign change
    assert np.all(np.diff(np.abs(signed[:cross])) < 0), signed      # falls before the crossing
    peak = cross + int(np.argmax(signed[cross:]))
    assert np.all(np.diff(signed[peak:]) < 0), signed               # and after the positive peak
    assert Ks[peak] <= 40, (Ks, signed)


def test_heun_is_second_order_and_beats_ddim_at_equal_nfe():
    """Heun (first and last steps Euler): observed order ~2.1 for K = 5 -> 10 -> 20, and more
    accurate than DDIM with more NFE (Heun K = 5, 10: NFE 8, 18 vs DDIM K = 10, 20)."""
    errors = [relative_flow_error("heun", K) for K in (5, 10, 20)]
    p = orders(errors)
    assert np.all(p > 1.8), (errors, p)
    assert samplers.nfe("heun", 5) < 10 and samplers.nfe("heun", 10) < 20
    assert errors[0] < relative_flow_error("ddim", 10)          # 0.111 vs 0.144
    assert errors[1] < relative_flow_error("ddim", 20) / 2      # 0.027 vs 0.074


def test_heun_first_step_trapezoid_is_the_documented_failure():
    """Why ``first_euler=True`` is the default: EDM's Heun correction on the first step
    (sigma_ve from e^10 down a thousand-fold) gives a relative error > 10 at K = 5."""
    bad = relative_flow_error("heun", 5, first_euler=False)
    assert bad > 10 and relative_flow_error("heun", 5) < 0.2, bad


def ddpm_marginal_std(K, m=M, s=S):
    """Exact std of DDPM's output on Gaussian data: z_{i+1} = A_i z_i + b_i + c_i xi, with z_0 ~ N(0, 1)."""
    logsnrs = np.asarray(schedules.grid(K), np.float64)
    alpha, sigma = (np.asarray(v, np.float64) for v in alpha_sigma(logsnrs[:-1]))
    mu, nu, c = (np.asarray(v, np.float64)
                 for v in samplers.ddim_coefficients(logsnr_t=logsnrs[:-1], logsnr_s=logsnrs[1:], eta=1.0))
    gain = G.gain64(logsnrs[:-1])                                 # x_hat = m + gain (z - alpha m)
    var = 1.0
    for i in range(K):
        var = (mu[i] * gain[i] + nu[i]) ** 2 * var + c[i] ** 2
    return np.sqrt(var)


def test_ddpm_marginal_approaches_data_distribution():
    """DDPM's output std (computed exactly for linear-Gaussian steps) -> s at first order
    in K (so Richardson extrapolation from K = 200, 400 removes most of the gap), and Monte-Carlo
    samples match it (mean m, std within 4 standard errors)."""
    exact = [ddpm_marginal_std(K) for K in (50, 100, 200, 400)]
    gaps = S - np.asarray(exact)
    assert np.all(gaps > 0) and np.all((orders(gaps) > 0.8) & (orders(gaps) < 1.2)), gaps
    n = 10000 * 2
    for K, std in ((50, exact[0]), (200, exact[2])):
        z, _ = run("ddpm", K, (10000, 2), "gaussian")(KEY)
        assert abs(float(z.mean()) - M) < 4 * S / np.sqrt(n)
        assert abs(float(z.std()) - std) < 4 * S / np.sqrt(2 * n), (K, float(z.std()), std)
    assert abs((2 * exact[-1] - exact[-2]) - S) < 0.1 * gaps[-1], (exact, S)


# ----------------------------------------------------------------------------- reference formulas


def test_ddim_and_ddpm_match_design_formulas():
    """DDIM(0): z_s = alpha_s x_hat + sigma_s eps_hat; DDPM: the posterior of DESIGN.md section 4,
    written out here independently (alpha_{t|s}, sigma_{t|s}^2) with the same noise (float64:
    the textbook form ``sigma_t^2 - alpha_{t|s}^2 sigma_s^2`` cancels badly in float32)."""
    K, shape = 6, (8, 3)

    @jax.jit
    def reference(logsnrs):
        key_prior, key_steps = chain.split_key(KEY)
        z_ddim = z_ddpm = chain.normal_rows(key_prior, shape)
        for i in range(K):
            (a_t, s_t), (a_s, s_s) = alpha_sigma(logsnrs[i]), alpha_sigma(logsnrs[i + 1])
            x = nonlinear_denoiser(z_ddim, logsnrs[i])
            z_ddim = a_s * x + s_s * (z_ddim - a_t * x) / s_t
            x = nonlinear_denoiser(z_ddpm, logsnrs[i])
            a_ts = a_t / a_s
            s2_ts = s_t**2 - a_ts**2 * s_s**2
            mean = a_ts * s_s**2 / s_t**2 * z_ddpm + a_s * s2_ts / s_t**2 * x
            std = jnp.sqrt(s2_ts * s_s**2 / s_t**2)
            z_ddpm = mean + std * chain.normal_rows(jax.random.fold_in(key_steps, i), shape)
        return z_ddim, z_ddpm

    with jax.enable_x64(True):
        z_ddim, z_ddpm = reference(grid64(K))
        np.testing.assert_allclose(run("ddim", K, shape, "nonlinear", x64=True)(KEY)[0], z_ddim, atol=1e-9)
        np.testing.assert_allclose(run("ddpm", K, shape, "nonlinear", x64=True)(KEY)[0], z_ddpm, atol=1e-9)


def test_ddim_eta_is_stochastic_between_0_and_1():
    """eta in (0, 1) draws noise (differs from eta = 0), and another key gives another draw."""
    z0 = run("ddim", 6, (8, 3), "nonlinear")(KEY)[0]
    half = run("ddim", 6, (8, 3), "nonlinear", eta=0.5)
    assert float(jnp.max(jnp.abs(z0 - half(KEY)[0]))) > 1e-3
    assert float(jnp.max(jnp.abs(half(jax.random.PRNGKey(1))[0] - half(KEY)[0]))) > 1e-3


# ----------------------------------------------------------------------------- families start at the baseline


def test_dpm_solver_pp_2m_single_steps_match_the_papers_formula():
    """Three steps of DPM-Solver++(2M) (second order after the first, last step included) against the
    paper's Algorithm 2 written independently in float64 NumPy with ``lambda = log(alpha / sigma)``:
    ``x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (e^{-h_i} - 1) D_i``,
    ``D_i = (1 + 1/(2 r_i)) x0_i - 1/(2 r_i) x0_{i-1}``, ``r_i = h_{i-1} / h_i``."""
    logsnrs = np.array([-3.0, -1.0, 0.5, 4.0])
    with jax.enable_x64(True):
        z_lib, traj = samplers.dpm_solver_pp_2m(nonlinear_denoiser, KEY, (6, 3), logsnrs=jnp.asarray(logsnrs),
                                                lower_order_final=False, return_trajectory=True)
        z = np.asarray(traj[0])
        lam = 0.5 * logsnrs
        alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnrs))), np.sqrt(1 / (1 + np.exp(logsnrs)))
        x_prev = None
        for i in range(3):
            x0 = np.asarray(nonlinear_denoiser(jnp.asarray(z), logsnrs[i]))
            h = lam[i + 1] - lam[i]
            D = x0 if i == 0 else (1 + 1 / (2 * r)) * x0 - 1 / (2 * r) * x_prev
            z = sigma[i + 1] / sigma[i] * z - alpha[i + 1] * (np.exp(-h) - 1) * D
            r, x_prev = h / (lam[i + 2] - lam[i + 1]) if i < 2 else None, x0
        np.testing.assert_allclose(np.asarray(z_lib), z, rtol=1e-12, atol=1e-12)


def test_heun_steps_match_edm_algorithm_1():
    """Heun with no Euler steps against EDM's Algorithm 1 in VE variables, written independently in
    float64: ``x = z / alpha``, ``s = sigma / alpha``, ``d = (x - D(x)) / s``; Euler ``x' = x + (s' - s) d``;
    correction ``x_next = x + (s' - s)(d + d') / 2``, ``d' = (x' - D(x')) / s'``; back to VP by ``z = alpha x``."""
    logsnrs = np.array([-2.0, 0.0, 1.5, 3.0])
    with jax.enable_x64(True):
        z_lib, traj = samplers.heun(nonlinear_denoiser, KEY, (6, 3), logsnrs=jnp.asarray(logsnrs), first_euler=False,
                                    last_euler=False, return_trajectory=True)
        alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnrs))), np.sqrt(1 / (1 + np.exp(logsnrs)))
        s_ve = sigma / alpha
        D = lambda x, i: np.asarray(nonlinear_denoiser(jnp.asarray(alpha[i] * x), logsnrs[i]))
        x = np.asarray(traj[0]) / alpha[0]
        for i in range(3):
            d = (x - D(x, i)) / s_ve[i]
            x_e = x + (s_ve[i + 1] - s_ve[i]) * d
            d_e = (x_e - D(x_e, i + 1)) / s_ve[i + 1]
            x = x + (s_ve[i + 1] - s_ve[i]) * 0.5 * (d + d_e)
        np.testing.assert_allclose(np.asarray(z_lib), alpha[-1] * x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("family,baseline,learn", [("rddim", "ddim", False), ("rddim", "ddpm", False),
                                                   ("ggdm", "ddim", True), ("ggdm", "ddpm", False)])
def test_family_init_reproduces_baseline(family, baseline, learn):
    K, shape = 6, (8, 3)
    fam = samplers.get_family(family)
    kw = {"learn_logsnrs": True} if learn else {}
    params = (fam.init_from_ddim if baseline == "ddim" else fam.init_from_ddpm)(K, **kw)
    assert fam.num_steps(params) == K
    g = schedules.grid(K)
    z, traj = jax.jit(lambda p, k: fam.sample(p, nonlinear_denoiser, k, shape, logsnrs=g,
                                              return_trajectory=True))(params, KEY)
    ref, ref_traj = run(baseline, K, shape, "nonlinear")(KEY)
    np.testing.assert_allclose(z, ref, atol=2e-5)
    np.testing.assert_allclose(traj, ref_traj, atol=2e-5)
    assert traj.shape == (K + 1,) + shape


def test_family_custom_grid_and_ggdm_history_matters():
    """A custom grid is honoured, an off-diagonal GGDM coefficient enters as derived, and the
    upper triangle (the future) is ignored."""
    logsnrs = schedules.grid(4, kind="quadratic")
    params = samplers.GGDM.init_from_ddim(4, logsnrs=logsnrs)
    ggdm = jax.jit(lambda p: samplers.GGDM.sample(p, nonlinear_denoiser, KEY, (8, 2), logsnrs=logsnrs,
                                                  return_trajectory=True))
    ref = samplers.ddim(nonlinear_denoiser, KEY, (8, 2), logsnrs=logsnrs)
    np.testing.assert_allclose(ggdm(params)[0], ref, atol=2e-5)
    params["mu"] = params["mu"].at[3, 0].set(0.1)     # mu: x_hat(z_0) enters the last step
    params["nu"] = params["nu"].at[0, 3].set(5.0)     # upper triangle: must be ignored
    z, traj = ggdm(params)
    np.testing.assert_allclose(z - ref, 0.1 * nonlinear_denoiser(traj[0], logsnrs[0]), atol=2e-5)


def test_learned_logsnrs_are_monotone_for_any_logits():
    grid = schedules.grid(6)
    params = samplers.GGDM.init_from_ddim(6, learn_logsnrs=True)
    np.testing.assert_allclose(samplers.GGDM.logsnrs(params, grid), grid, atol=1e-5)
    params["logsnr_logits"] = jax.random.normal(KEY, (6,)) * 3
    lam = samplers.GGDM.logsnrs(params, grid)
    assert lam.shape == (7,) and jnp.all(jnp.diff(lam) > 0)
    assert float(lam[0]) == float(grid[0]) and float(lam[-1]) == float(grid[-1])


# ----------------------------------------------------------------------------- randomness


def test_noise_does_not_depend_on_batch_size():
    """The first 10 samples of a batch of 100 equal a batch of 10 (GGDM; DDPM: test_chain's sharding test)."""
    params, g = samplers.GGDM.init_from_ddpm(5), schedules.grid(5)
    ggdm = jax.jit(lambda p, shape: samplers.GGDM.sample(p, nonlinear_denoiser, KEY, shape, logsnrs=g),
                   static_argnums=1)
    np.testing.assert_allclose(ggdm(params, (100, 3))[:10], ggdm(params, (10, 3)), atol=1e-6)


# ----------------------------------------------------------------------------- NFE


@pytest.mark.parametrize("K", [1, 3])
def test_nfe_counts_actual_network_calls(K):
    """``nfe(name, K)`` equals the number of denoiser calls actually executed (counted at run time)."""
    calls = {}

    def counting(name):
        return counting_denoiser(calls, name, nonlinear_denoiser)

    @jax.jit
    def all_samplers(logsnrs, fam_params):
        out = [samplers.get_sampler(n)(counting(n), KEY, (4, 2), logsnrs=logsnrs) for n in FIXED]
        return out + [samplers.get_family(n).sample(fam_params[n], counting(n), KEY, (4, 2), logsnrs=logsnrs)
                      for n in samplers.FAMILIES]

    fam_params = {n: f.init_from_ddim(K) for n, f in samplers.FAMILIES.items()}
    jax.block_until_ready(all_samplers(schedules.grid(K), fam_params))
    jax.effects_barrier()
    assert calls == {n: samplers.nfe(n, K) for n in FIXED + sorted(samplers.FAMILIES)}
    assert samplers.nfe("heun", 10) == 18 and samplers.nfe("heun", 10, last_euler=False) == 19


# ----------------------------------------------------------------------------- bad input


def test_bad_input_raises_value_error():
    den, g = nonlinear_denoiser, schedules.grid(4)
    with pytest.raises(ValueError, match="K"):
        samplers.GGDM.init_from_ddim(0)
    with pytest.raises(ValueError, match="K"):
        samplers.RDDIM.init_from_ddpm(-3)
    with pytest.raises(ValueError, match="logsnrs.*length"):
        samplers.ddim(den, KEY, (4, 2), logsnrs=jnp.array([1.0]))
    with pytest.raises(ValueError, match="logsnrs.*monotone"):
        samplers.ddim(den, KEY, (4, 2), logsnrs=g[::-1])
    with pytest.raises(ValueError, match="logsnrs.*monotone"):
        samplers.RDDIM.init_from_ddim(4, logsnrs=g.at[2].set(g[1]))
    with pytest.raises(ValueError, match="logsnrs.*shape"):
        samplers.GGDM.init_from_ddim(5, logsnrs=g)
    with pytest.raises(ValueError, match="eta"):
        samplers.ddim(den, KEY, (4, 2), logsnrs=g, eta=1.5)
    with pytest.raises(ValueError, match="eta"):
        samplers.ddim(den, KEY, (4, 2), logsnrs=g, eta=float("nan"))
    params = samplers.GGDM.init_from_ddim(4)
    with pytest.raises(ValueError, match="GGDM params.*finite"):
        samplers.GGDM.sample({**params, "nu": params["nu"].at[1, 0].set(jnp.nan)}, den, KEY, (4, 2), logsnrs=g)
    with pytest.raises(ValueError, match=r"params\['mu'\].*shape"):
        samplers.GGDM.sample({**params, "mu": params["mu"][:3]}, den, KEY, (4, 2), logsnrs=g)
    with pytest.raises(ValueError, match="keys"):
        samplers.GGDM.sample({k: v for k, v in params.items() if k != "c"}, den, KEY, (4, 2), logsnrs=g)
    with pytest.raises(ValueError, match="logsnrs.*K \\+ 1 = 5"):
        samplers.GGDM.sample(params, den, KEY, (4, 2), logsnrs=schedules.grid(6))
    with pytest.raises(ValueError, match="logsnrs is required"):
        samplers.GGDM.sample(params, den, KEY, (4, 2), logsnrs=None)
    rparams = samplers.RDDIM.init_from_ddim(4)
    with pytest.raises(ValueError, match="RDDIM params.*finite"):
        samplers.RDDIM.sample({**rparams, "c": rparams["c"].at[0].set(jnp.nan)}, den, KEY, (4, 2), logsnrs=g)
    with pytest.raises(ValueError, match="z_init"):
        samplers.ddim(den, KEY, (4, 2), logsnrs=g, z_init=jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match="x_hat of shape"):
        samplers.ddim(lambda z, logsnr: z[:, :1], KEY, (4, 2), logsnrs=g)
    with pytest.raises(ValueError, match="shape"):
        samplers.ddim(den, KEY, (0, 2), logsnrs=g)
    with pytest.raises(ValueError, match="ddim.*heun"):
        samplers.get_sampler("plms")
    with pytest.raises(ValueError, match="ggdm.*rddim"):
        samplers.get_family("ddss")


@pytest.mark.parametrize("name", FIXED)
def test_bad_inputs_a_new_user_tries(name):
    """Each gets our own ValueError naming the parameter, not an error from deep inside JAX, and no NaN."""
    sampler, g = samplers.get_sampler(name), schedules.grid(4)
    with pytest.raises(ValueError, match="z_init must hold floating-point"):
        sampler(nonlinear_denoiser, KEY, (4, 2), logsnrs=g, z_init=np.zeros((4, 2), np.int32))
    with pytest.raises(ValueError, match="z_init must be finite"):
        sampler(nonlinear_denoiser, KEY, (4, 2), logsnrs=g, z_init=jnp.full((4, 2), jnp.nan))
    with pytest.raises(ValueError, match="dtype must be a floating dtype"):
        sampler(nonlinear_denoiser, KEY, (4, 2), logsnrs=g, dtype=jnp.int32)
    for bad_key in (0, jax.random.split(KEY, 3), np.zeros(2, np.float32)):
        with pytest.raises(ValueError, match="key must be a PRNG key|key must be a single PRNG key"):
            sampler(nonlinear_denoiser, bad_key, (4, 2), logsnrs=g)
    # distinct in float64, tied in float32: rejected after the cast (DPM-Solver++ would divide by 0)
    tied = np.array([-20.0, 0.0, 1.0, 1.0 + 1e-9, 20.0])
    with pytest.raises(ValueError, match=r"logsnrs \(as float32\) must be strictly increasing"):
        sampler(nonlinear_denoiser, KEY, (4, 2), logsnrs=tied)
    # a denoiser that returns NaN at high log-SNR: the first bad step is named
    nan_late = lambda z, logsnr: jnp.where(logsnr > 10.0, jnp.nan, 1.0) * jnp.tanh(z)
    with pytest.raises(ValueError, match="x_hat is not finite.*at step"):
        sampler(nan_late, KEY, (4, 2), logsnrs=jnp.array([-5.0, 0.0, 5.0, 12.0, 20.0]))


def test_nonfinite_x_hat_under_jit_names_the_step():
    nan_late = lambda z, logsnr: jnp.where(logsnr > 10.0, jnp.nan, 1.0) * jnp.tanh(z)
    f = jax.jit(lambda k: samplers.ddim(nan_late, k, (4, 2), logsnrs=jnp.array([-5.0, 0.0, 12.0, 20.0])))
    with pytest.raises(Exception, match="x_hat is not finite.*at step 2 of 3"):
        jax.block_until_ready(f(KEY))


def test_heun_refuses_a_correction_where_sigma_is_zero():
    g = jnp.array([-5.0, 0.0, 5.0, 200.0, 210.0])      # sigma = 0 in float32 from log-SNR ~104 on
    with pytest.raises(ValueError, match="Heun step 2 ends at log-SNR 200.*sigma = 0"):
        samplers.heun(nonlinear_denoiser, KEY, (4, 2), logsnrs=g)
    z = samplers.heun(nonlinear_denoiser, KEY, (4, 2), logsnrs=g[:4])     # the last (Euler) step may end there
    assert np.all(np.isfinite(z))


def test_heun_budget_below_one_step_is_a_clear_error():
    assert samplers.heun_steps_for_budget(1) == 1
    with pytest.raises(ValueError, match="nfe must be >= 2"):
        samplers.heun_steps_for_budget(1, first_euler=False, last_euler=False)
