"""Bring your own model: ``ddss_lite.Model``, discrete-time schedules, grids, and the one sampler call.

The model under test is the one a DDPM user has: a network that predicts eps at the integer
timesteps 0..999 of DDPM's linear betas 1e-4..0.02. Here the "network" is the closed-form eps of
Gaussian data N(0.3, 0.5^2) on that schedule, written from the betas table with NumPy's cumprod in
this file (not from the library), so every sampler, family, DDSS, the ELBO grid and a distillation
round are checked against independent computations: the exact probability-flow map, the DDIM
paper's update written out on the bar-alpha table, and the closed-form posterior.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import ddss_lite
from ddss_lite import chain, ddss, distill, elbo, grids, models, nets, pretrained, samplers, schedules

from conftest import GaussianData

G = GaussianData()
T = 1000
BETAS = np.linspace(1e-4, 0.02, T)                 # DDPM's table, written here
ABAR = np.cumprod(1.0 - BETAS)                     # bar_alpha_n, n = 0..T-1
LAM = np.log(ABAR / (1.0 - ABAR))                  # its log-SNR, decreasing in n
KEY = jax.random.PRNGKey(0)
SCHED = schedules.DiscreteVP.linear()


def eps_net(params, z, n):
    """The exact eps of N(m, s^2) data at (fractional) timestep n: log-SNR linear in n between the table's."""
    lam = jnp.interp(n, jnp.arange(T, dtype=z.dtype), jnp.asarray(LAM, z.dtype))[:, None]
    a, s = jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))
    var = a ** 2 * params["s"] ** 2 + s ** 2
    x_hat = params["m"] + a * params["s"] ** 2 * (z - a * params["m"]) / var
    return (z - a * x_hat) / s


PARAMS = {"m": G.m, "s": G.s}
MODEL = models.from_network(eps_net, PARAMS, prediction="eps", schedule=SCHED, data_shape=(3,), name="gauss-ddpm")


def exact_flow(z, lam_t, lam_s):
    """The exact PF map in float64 (``lam_s = inf``: to the data)."""
    a_t2 = 1.0 / (1.0 + np.exp(-lam_t))
    v_t = a_t2 * G.s ** 2 + 1.0 - a_t2
    if np.isinf(lam_s):
        return G.m + G.s * (z - np.sqrt(a_t2) * G.m) / np.sqrt(v_t)
    a_s2 = 1.0 / (1.0 + np.exp(-lam_s))
    v_s = a_s2 * G.s ** 2 + 1.0 - a_s2
    return np.sqrt(a_s2) * G.m + np.sqrt(v_s / v_t) * (z - np.sqrt(a_t2) * G.m)


# ----------------------------------------------------------------------------- schedules


def test_discrete_schedule_is_ddpms_table():
    np.testing.assert_allclose(SCHED.alphas_cumprod, ABAR, rtol=1e-12)
    np.testing.assert_allclose(SCHED.logsnr_table, LAM, rtol=1e-10, atol=1e-10)
    assert SCHED.logsnr_range == pytest.approx((LAM[-1], LAM[0]), rel=1e-12)
    # improved DDPM's cosine: bar_alpha_n = f(n + 1) / f(0) (away from the capped last step)
    f = lambda n: np.cos((n / 50 + 0.008) / 1.008 * np.pi / 2) ** 2
    n = np.array([0, 24, 48])
    np.testing.assert_allclose(schedules.DiscreteVP.cosine(50).alphas_cumprod[n], f(n + 1) / f(0), rtol=1e-10)


def test_timesteps_exact_at_integers_in_float32_and_float64():
    n = np.arange(T)
    table = SCHED.logsnr_table
    assert np.array_equal(SCHED.timestep(table), n)                               # host, float64
    np.testing.assert_allclose(SCHED.timestep(LAM), n, atol=1e-9)
    traced = jax.jit(lambda l: SCHED.timestep(l))(jnp.asarray(table, jnp.float32))  # under a trace
    assert np.array_equal(np.asarray(traced), n)
    mid = 0.5 * (LAM[10] + LAM[11])
    assert SCHED.timestep(np.array([mid]))[0] == pytest.approx(10.5)
    assert SCHED.timestep(np.array([LAM[10] * 0.3 + LAM[11] * 0.7]), rounding=True)[0] == 11
    t = np.array([0.0015, 0.3, 1.0])
    np.testing.assert_allclose(SCHED.t_from_logsnr(SCHED.logsnr(t)), t, rtol=1e-12)
    vp = schedules.LinearVP()
    np.testing.assert_allclose(vp.t_from_logsnr(vp.logsnr(np.array([0.01, 0.5, 1.0]))), [0.01, 0.5, 1.0],
                               rtol=1e-10)
    lo, hi = vp.logsnr_range
    assert lo < -9.9 and 8 < hi < 10


@pytest.mark.parametrize("make, match", [
    (lambda: schedules.DiscreteVP([0.1, 1.0]), "betas must lie in \\(0, 1\\)"),
    (lambda: schedules.DiscreteVP([0.1, 0.0, 0.2]), "betas must lie in \\(0, 1\\)"),
    (lambda: schedules.DiscreteVP([0.1, np.nan]), "betas must lie in \\(0, 1\\)"),
    (lambda: schedules.DiscreteVP(np.full((2, 3), 0.1)), "betas must be a 1-D array"),
    (lambda: schedules.Cosine(5.0, -5.0), "logsnr_min must be < logsnr_max"),
    (lambda: schedules.LinearVP(20.0, 0.1), "beta_min <= beta_max"),
    (lambda: schedules.linear_betas(10, 0.1, 1.5), "beta_T < 1"),
    (lambda: SCHED.logsnr_at([0, T]), "timesteps must be integers in \\[0, 999\\]"),
    (lambda: SCHED.timestep(np.array([12.0])), "logsnr_range"),
])
def test_schedule_bad_input(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- the model type


def test_from_network_bad_input():
    with pytest.raises(ValueError, match="prediction must be one of"):
        models.from_network(eps_net, PARAMS, prediction="epsilon", schedule=SCHED, data_shape=(3,))
    with pytest.raises(TypeError, match="schedule must be a schedule object"):
        models.from_network(eps_net, PARAMS, prediction="eps", schedule=LAM, data_shape=(3,))
    with pytest.raises(ValueError, match="time_input='timestep' needs a discrete schedule"):
        models.from_network(eps_net, PARAMS, prediction="eps", schedule=schedules.Cosine(), data_shape=(3,),
                            time_input="timestep")
    with pytest.raises(ValueError, match="data_shape must be"):
        models.from_network(eps_net, PARAMS, prediction="eps", schedule=SCHED, data_shape=(0,))
    bad = models.from_network(lambda p, z, n: z[:, :2], None, prediction="eps", schedule=SCHED, data_shape=(3,))
    with pytest.raises(ValueError, match="apply: the network must return an array of the input's shape"):
        samplers.get("ddim")(bad, KEY, 4, nfe=2)


def test_package_root_and_the_books_models_are_models():
    assert ddss_lite.Model is models.Model
    module = nets.make_denoiser_net("mlp", hidden=8, depth=1)
    params = jax.jit(module.init)(KEY, jnp.zeros((1, 3)), jnp.zeros((1,)))["params"]
    book = pretrained.Pretrained("tiny", module, params, np.zeros(1), {}, "v", (3,))
    assert isinstance(book, ddss_lite.Model) and book.logsnr_range == (-20.0, 20.0)
    assert book.denoise is book.denoiser()
    # the new call on the book's model gives the old call's samples, bit for bit
    new = samplers.get("ddim")(book, KEY, 5, nfe=4)
    old = samplers.ddim(book.denoiser(), KEY, (5, 3), logsnrs=schedules.grid(4))
    assert np.array_equal(np.asarray(new), np.asarray(old))


@pytest.mark.parametrize("prediction", ["x", "v", "score", "sigma_denoiser"])
def test_every_prediction_gives_the_same_denoiser(prediction):
    """The same Gaussian posterior mean written as each parameterisation's network output."""
    def x_of(z, lam):
        a = jnp.sqrt(jax.nn.sigmoid(lam))[:, None]
        return G.m + a * G.s ** 2 * (z - a * G.m) / (a ** 2 * G.s ** 2 + 1 - a ** 2)

    def net(params, z_in, t):
        lam = (jnp.interp(t, jnp.arange(T, dtype=z_in.dtype), jnp.asarray(LAM, z_in.dtype))
               if prediction != "sigma_denoiser" else -2.0 * jnp.log(t))
        a, s = jnp.sqrt(jax.nn.sigmoid(lam))[:, None], jnp.sqrt(jax.nn.sigmoid(-lam))[:, None]
        z = z_in * a if prediction == "sigma_denoiser" else z_in
        x = x_of(z, lam)
        eps = (z - a * x) / s
        return {"x": x, "v": a * eps - s * x, "score": -eps / s, "sigma_denoiser": x}[prediction]

    other = models.from_network(net, None, prediction=prediction, schedule=SCHED, data_shape=(3,))
    z = jax.random.normal(KEY, (6, 3))
    lam = jnp.asarray(LAM[[5, 100, 400, 700, 900, 999]], jnp.float32)
    np.testing.assert_allclose(other.denoise(z, lam), MODEL.denoise(z, lam), rtol=2e-4, atol=2e-5)


# ----------------------------------------------------------------------------- grids


def _models():
    return {"discrete": MODEL,
            "cosine": models.from_denoiser(G.denoise, schedule=schedules.Cosine(), data_shape=(3,)),
            "linear_vp": models.from_denoiser(G.denoise, schedule=schedules.LinearVP(), data_shape=(3,))}


@pytest.mark.parametrize("kind", ["discrete", "cosine", "linear_vp"])
@pytest.mark.parametrize("name", sorted(grids.CONTINUOUS))
def test_continuous_grids_span_the_models_range(kind, name):
    model = _models()[kind]
    for K in (1, 5, 50):
        g = np.asarray(grids.get(name)(K, model), np.float64)
        assert g.shape == (K + 1,) and np.all(np.diff(g) > 0) and g.dtype == np.float64
        lo, hi = model.logsnr_range
        assert g[0] == pytest.approx(lo, abs=1e-5) and g[-1] == pytest.approx(hi, abs=1e-5)
        grids.check_in_range(g, model)


def test_time_uniform_on_the_book_schedule_is_schedules_grid():
    book = _models()["cosine"]
    for K in (1, 2, 5, 10, 64):
        assert np.array_equal(np.asarray(grids.get("time_uniform")(K, book)), np.asarray(schedules.grid(K)))
        assert np.array_equal(np.asarray(grids.get("time_quadratic")(K, book)),
                              np.asarray(schedules.grid(K, kind="quadratic")))


def test_karras_is_edms_sigma_schedule():
    lo, hi = MODEL.logsnr_range
    smax, smin, rho, K = np.exp(-lo / 2), np.exp(-hi / 2), 7.0, 12
    sig = (smax ** (1 / rho) + np.arange(K + 1) / K * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    np.testing.assert_allclose(grids.get("karras")(K, MODEL), -2 * np.log(sig), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, K, expected", [
    ("ddim_uniform", 10, list(range(0, 1000, 100))),                      # the DDIM repository's skip
    ("ddim_uniform", 50, list(range(0, 1000, 20))),
    ("leading", 7, [i * (1000 // 7) for i in range(7)]),                  # diffusers' spacings
    ("trailing", 10, [round(1000 - i * 100.0) - 1 for i in range(10)]),
    ("linspace", 10, [round(i * 999 / 9) for i in range(10)]),
    ("ddim_quadratic", 10, [int(v) for v in (np.linspace(0, np.sqrt(800), 10) ** 2)]),
])
def test_discrete_spacings(name, K, expected):
    assert sorted(grids.timesteps_of(name, K, T).tolist()) == sorted(expected)
    g = np.asarray(grids.get(name)(K, MODEL), np.float64)
    assert g[-1] == np.inf and g.shape == (K + 1,)
    np.testing.assert_allclose(g[:-1], LAM[sorted(expected, reverse=True)], rtol=1e-6)


def test_grid_errors():
    with pytest.raises(ValueError, match="DDIM's uniform skip .* has 8 timesteps, not 7"):
        grids.get("ddim_uniform")(7, MODEL)
    with pytest.raises(ValueError, match="needs a model on a discrete schedule"):
        grids.get("leading")(5, _models()["cosine"])
    with pytest.raises(ValueError, match="unknown grid 'uniform'"):
        grids.get("uniform")
    with pytest.raises(ValueError, match=r"leaves the model's logsnr_range \[-10.1177, 9.21024\]"):
        samplers.get("ddim")(MODEL, KEY, 4, logsnrs=schedules.grid(5))
    x = samplers.get("ddim")(MODEL, KEY, 4, logsnrs=schedules.grid(5), allow_outside_range=True)
    assert np.all(np.isfinite(np.asarray(x)))
    with pytest.raises(ValueError, match="cannot take a step to the data"):
        samplers.get("dpm_solver_pp_2m")(MODEL, KEY, 4, nfe=5, grid="leading", lower_order_final=False)
    # without a grid name it runs on the continuous default instead, which ends at the range's top
    assert samplers.resolve_grid(MODEL, 5, data_end=False)[-1] == pytest.approx(LAM[0], rel=1e-6)
    with pytest.raises(ValueError, match="a bare denoise.* needs an explicit logsnrs"):
        samplers.get("ddim")(MODEL.denoise, KEY, (4, 3), nfe=5)
    with pytest.raises(ValueError, match=r"shape must be \(B, \*model.data_shape\)"):
        samplers.get("ddim")(MODEL, KEY, (4, 2), nfe=5)


# ----------------------------------------------------------------------------- samplers on DDPM's model


def _ddim_paper(z, timesteps, eta, noise):
    """DDIM's update (Song et al. 2021, eq. 12) written on the bar-alpha table, float64: the network's eps
    at timestep t, ``x0 = (z - sqrt(1 - a_t) eps) / sqrt(a_t)``, to the previous timestep (bar alpha 1 after 0)."""
    seq = list(timesteps)
    z = np.asarray(z, np.float64)
    for i, t in enumerate(seq):
        a_t = ABAR[t]
        a_p = ABAR[seq[i + 1]] if i + 1 < len(seq) else 1.0
        eps = np.asarray(eps_net({"m": G.m, "s": G.s}, jnp.asarray(z), jnp.full(z.shape[:1], float(t))))
        x0 = (z - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
        c = eta * np.sqrt((1 - a_p) / (1 - a_t) * (1 - a_t / a_p))
        z = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p - c ** 2) * eps + c * noise[i]
    return z


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_on_the_uniform_skip_is_the_ddim_papers_update(eta):
    K, shape = 10, (64, 3)
    z0 = np.asarray(jax.random.normal(jax.random.PRNGKey(3), shape))
    _, key_steps = chain.split_key(KEY)          # the chain's documented noise: step i from fold_in(key_steps, i)
    noise = [np.asarray(chain.normal_rows(jax.random.fold_in(key_steps, i), shape)) for i in range(K)]
    ours = samplers.get("ddim")(MODEL, KEY, shape, nfe=K, grid="ddim_uniform", eta=eta, z_init=jnp.asarray(z0))
    ref = _ddim_paper(z0, range(900, -1, -100), eta, noise)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=2e-5)
    if eta == 0.0:          # and DDIM itself lands where the exact flow does, up to its discretisation error
        exact = exact_flow(z0, LAM[900], np.inf)
        assert 0.05 < np.sqrt(np.mean((ref - exact) ** 2)) / np.std(exact) < 0.5


def test_ddpm_final_moments_match_the_closed_form_chain():
    """DDPM on 20 of the model's timesteps: mean and variance of the samples against the exact linear-
    Gaussian recursion of the posterior steps q(z_s | z_t, x_hat(z_t)), written on the table."""
    K, B = 20, 4000
    seq = grids.timesteps_of("leading", K, T)
    x = np.asarray(samplers.get("ddpm")(MODEL, KEY, (B, 3), nfe=K), np.float64)
    mean, var = 0.0, 1.0
    for i, t in enumerate(seq):
        a_t, a_s = ABAR[t], (ABAR[seq[i + 1]] if i + 1 < K else 1.0)
        s_t2 = 1 - a_t
        g = np.sqrt(a_t) * G.s ** 2 / (a_t * G.s ** 2 + s_t2)            # x_hat = m + g (z - sqrt(a_t) m)
        at_s = np.sqrt(a_t / a_s)
        s_ts2 = s_t2 - at_s ** 2 * (1 - a_s)
        cz, cx = at_s * (1 - a_s) / s_t2, np.sqrt(a_s) * s_ts2 / s_t2       # posterior mean coefficients
        A, b = cz + cx * g, cx * (G.m - g * np.sqrt(a_t) * G.m)
        mean, var = A * mean + b, A ** 2 * var + s_ts2 * (1 - a_s) / s_t2
    se_mean, se_var = np.sqrt(var / (3 * B)), var * np.sqrt(2 / (3 * B))
    assert abs(x.mean() - mean) < 4 * se_mean
    assert abs(x.var() - var) < 4 * se_var


@pytest.mark.parametrize("name, order, grid", [
    ("ddim", 1, "logsnr"), ("dpm_solver_pp_2m", 2, "logsnr"), ("heun", 2, "karras"),
    ("conjugate_poly", 2, "logsnr"),
])
def test_solvers_converge_at_their_order_to_the_exact_flow(name, order, grid):
    """On grids of the model's range (float64): error against the exact PF map, halved K, log2 ratio
    within 0.35 of the order (conjugate_poly at degree 2: at least 2, its low-order start caps it there)."""
    with jax.enable_x64(True):
        z0 = jax.random.normal(jax.random.PRNGKey(1), (32, 3), jnp.float64)
        errs = []
        for K in (40, 80):
            g = grids.get(grid)(K, MODEL).astype(jnp.float64)
            x = samplers.get(name)(MODEL, KEY, z0.shape, logsnrs=g, z_init=z0)
            exact = exact_flow(np.asarray(z0), float(g[0]), float(g[-1]))
            errs.append(np.sqrt(np.mean((np.asarray(x) - exact) ** 2)) / np.std(exact))
    rate = np.log2(errs[0] / errs[1])
    assert errs[1] < 0.05
    assert (rate > order - 0.35) if name == "conjugate_poly" else (abs(rate - order) < 0.35), (errs, rate)


def test_nfe_and_steps_in_one_place():
    assert samplers.steps("heun", 18) == 10 and samplers.nfe("heun", 10) == 18
    assert samplers.get("ddim").steps(7) == 7 and samplers.steps("ggdm", 5) == 5
    with pytest.raises(ValueError, match="cannot spend exactly 9 network evaluations"):
        samplers.get("heun")(MODEL, KEY, 4, nfe=9)
    with pytest.raises(ValueError, match="unknown sampler 'dpm'"):
        samplers.get("dpm")
    calls = {}

    def counted(z, lam):
        jax.debug.callback(lambda: calls.__setitem__("n", calls.get("n", 0) + 1))
        return MODEL.denoise(z, lam)

    model = models.from_denoiser(counted, schedule=SCHED, data_shape=(3,))
    samplers.get("heun")(model, KEY, 4, nfe=18, remat=False)
    assert calls["n"] == 18


def test_families_bound_to_ddim_params_reproduce_ddim_on_the_models_grid():
    g = grids.get("ddim_uniform")(10, MODEL)
    ddim = samplers.get("ddim")(MODEL, KEY, 16, logsnrs=g)
    for family in (samplers.RDDIM, samplers.GGDM):
        bound = family.bind(family.init_from_ddim(10, logsnrs=g), g)
        np.testing.assert_allclose(bound(MODEL, KEY, 16), ddim, rtol=1e-6, atol=1e-6)
        assert bound.nfe() == 10
    with pytest.raises(ValueError, match="learned timesteps .* must be finite"):
        samplers.GGDM.init_from_ddim(10, logsnrs=g, learn_logsnrs=True)


# ----------------------------------------------------------------------------- methods on DDPM's model


def test_ddss_search_takes_a_model():
    phi = lambda x: jnp.concatenate([x, x ** 2], axis=1)
    real = phi(G.m + G.s * jax.random.normal(jax.random.PRNGKey(5), (256, 3)))
    res = ddss.search(samplers.RDDIM, MODEL, phi, real, K=4, shape=(64, 3), key=KEY,
                      optimizer=optax.adam(1e-3), steps=3, eval_every=3)
    assert np.array_equal(np.asarray(res.logsnrs), np.asarray(grids.get("leading")(4, MODEL)))
    assert np.all(np.isfinite(res.loss)) and res.sampler()(MODEL, KEY, 8).shape == (8, 3)
    with pytest.raises(ValueError, match="leaves the model's logsnr_range"):
        ddss.search(samplers.RDDIM, MODEL, phi, real, K=4, shape=(64, 3), key=KEY, optimizer=optax.adam(1e-3),
                    steps=1, logsnrs=schedules.grid(4))


def test_elbo_on_the_models_own_timesteps_matches_the_closed_form():
    """The ELBO grid of a discrete model is its 1000 timesteps; the denoising error at each equals the
    posterior variance ``s^2 sigma^2 / (alpha^2 s^2 + sigma^2)`` per dim (within 4 standard errors)."""
    lam = elbo.model_grid(MODEL)
    np.testing.assert_allclose(lam, LAM[::-1], rtol=1e-10)
    x = G.m + G.s * jax.random.normal(jax.random.PRNGKey(7), (512, 3))
    sq = np.asarray(elbo.sq_err_per_t(MODEL.denoise, x, KEY, lam[::111]), np.float64) / 3    # per dim
    a2 = 1 / (1 + np.exp(-lam[::111]))
    exact = G.s ** 2 * (1 - a2) / (a2 * G.s ** 2 + 1 - a2)
    se = sq.std(axis=1) / np.sqrt(sq.shape[1])
    assert np.all(np.abs(sq.mean(axis=1) - exact) < 4 * se + 1e-7)


def test_a_distillation_round_on_a_discrete_x_model(tmp_path):
    """A student of a discrete-time x-predicting network: grids even in the model's time (fractional
    timesteps, nested exactly), the student the same network with new params, cached by its config."""
    def x_net(params, z, n):
        lam = jnp.interp(n, jnp.arange(T, dtype=z.dtype), jnp.asarray(LAM, z.dtype))[:, None]
        a, s2 = jnp.sqrt(jax.nn.sigmoid(lam)), jax.nn.sigmoid(-lam)
        return params["m"] + a * params["s"] ** 2 * (z - a * params["m"]) / (a ** 2 * params["s"] ** 2 + s2)

    teacher = models.from_network(x_net, {"m": jnp.float32(G.m), "s": jnp.float32(G.s)}, prediction="x",
                                  schedule=SCHED, data_shape=(3,), name="gauss-x")
    data = np.asarray(G.m + G.s * jax.random.normal(jax.random.PRNGKey(9), (512, 3)))
    grid = distill.round_grid(2, teacher)
    assert np.all(np.asarray(grid.logsnr_t) >= LAM[-1] - 1e-4) and np.all(np.asarray(grid.logsnr_s) <= LAM[0] + 1e-4)
    kw = dict(data=data, steps=30, batch=128, lr=3e-3, key=KEY, cache_dir=tmp_path)
    student, cost = distill.distill_round(teacher, None, 2, **kw)
    assert isinstance(student, models.NetworkModel) and student.schedule is SCHED and student.prediction == "x"
    assert cost.teacher_evals == 2 * 30 * 128 and not cost.from_cache
    again, cost2 = distill.distill_round(teacher, None, 2, **kw)
    assert cost2.from_cache and np.array_equal(np.asarray(again.params["s"]), np.asarray(student.params["s"]))
    # the student's 2 steps land closer to the teacher's 4 steps from the same noise than the teacher's 2 do
    z0 = jax.random.normal(jax.random.PRNGKey(11), (256, 3))
    run = lambda m, N: samplers.get("ddim")(m, KEY, 256, logsnrs=distill.student_grid(N, teacher), z_init=z0)
    target = run(teacher, 4)
    assert float(jnp.mean((run(student, 2) - target) ** 2)) < float(jnp.mean((run(teacher, 2) - target) ** 2))
    # called like every model, the student samples on the grid it was trained on (the teacher's default is
    # its own timesteps, "leading")
    assert student.default_grid == "time_uniform" and teacher.default_grid == "leading"
    np.testing.assert_array_equal(samplers.get("ddim")(student, KEY, 256, nfe=2, z_init=z0), run(student, 2))
    with pytest.raises(ValueError, match="prediction \\(the teacher's"):
        distill.distill_round(models.from_network(x_net, PARAMS, prediction="score", schedule=SCHED,
                                                  data_shape=(3,)), None, 2, **kw)
    with pytest.raises(TypeError, match="exposes none"):
        distill.distill_round(models.from_denoiser(MODEL.denoise, schedule=SCHED, data_shape=(3,)), None, 2, **kw)


def test_the_librarys_gaussian_network_is_this_files():
    params = {"mean": np.full((3,), G.m), "std": np.full((3,), G.s)}
    lib = models.from_network(models.gaussian_network(SCHED), params, prediction="eps", schedule=SCHED,
                              data_shape=(3,))
    z = jax.random.normal(KEY, (5, 3))
    lam = jnp.asarray(LAM[[3, 50, 500, 800, 999]], jnp.float32)
    np.testing.assert_allclose(lib.denoise(z, lam), MODEL.denoise(z, lam), rtol=1e-5, atol=1e-6)
    z64 = np.asarray(z, np.float64)
    np.testing.assert_allclose(models.gaussian_flow(params, z64, logsnr_t=LAM[900], logsnr_s=np.inf),
                               exact_flow(z64, LAM[900], np.inf), rtol=1e-12)
    np.testing.assert_allclose(models.gaussian_flow(params, z64, logsnr_t=LAM[900], logsnr_s=LAM[10]),
                               exact_flow(z64, LAM[900], LAM[10]), rtol=1e-12)


def test_the_evaluation_helper_samples_on_the_models_own_grid(tmp_path, monkeypatch):
    """``evaluation.sampler_samples`` on DDPM's model draws on the model's default grid (its own
    timesteps, inside its range; the book's cosine grid from -20 would leave it), at ``nfe=``, equal to
    the sampler call from the book's evaluation noise, and loads them from the cache the second time."""
    from ddss_lite import evaluation
    from ddss_lite.profiles import get_profile

    monkeypatch.setenv("DDSS_BUILD_DIR", str(tmp_path))
    P = get_profile("smoke")
    x = evaluation.sampler_samples(MODEL, "ddim", profile=P, nfe=10)
    direct = samplers.get("ddim")(MODEL, evaluation.noise_key(0), P.n_eval, nfe=10)
    np.testing.assert_array_equal(x, np.asarray(direct))
    cached = list((tmp_path / "cache").glob("samples-gauss-ddpm-ddim-*.npz"))
    assert len(cached) == 1
    np.testing.assert_array_equal(evaluation.sampler_samples(MODEL, "ddim", 10, profile=P), x)  # K = 10 steps
    assert len(list((tmp_path / "cache").glob("samples-*.npz"))) == 1
    with pytest.raises(ValueError, match="leaves the model's logsnr_range"):
        evaluation.sampler_samples(MODEL, "ddim", 10, profile=P, logsnrs=schedules.grid(10))
    with pytest.raises(ValueError, match="not both"):
        evaluation.sampler_samples(MODEL, "ddim", 10, profile=P, nfe=10)
    with pytest.raises(ValueError, match="no params"):
        evaluation.sampler_samples(models.from_denoiser(MODEL.denoise, schedule=SCHED, data_shape=(3,)), "ddim",
                                   profile=P, nfe=4)


def test_a_searched_families_draws_have_one_cache_key(tmp_path, monkeypatch):
    """``evaluation.family_samples``: RDDIM bound to DDIM's params draws what DDIM draws (same noise, the
    model's grid), and params read back from JSON (lists) hit the entry the arrays wrote (one cache key
    for a searched sampler, whichever chapter draws it)."""
    import json

    from ddss_lite import evaluation
    from ddss_lite.profiles import get_profile

    monkeypatch.setenv("DDSS_BUILD_DIR", str(tmp_path))
    P = get_profile("smoke")
    g = samplers.resolve_grid(MODEL, 6, data_end=True)
    params = samplers.RDDIM.init_from_ddim(6, logsnrs=g)
    x = evaluation.family_samples(MODEL, "rddim", params, profile=P)
    ddim = evaluation.sampler_samples(MODEL, "ddim", 6, profile=P)
    np.testing.assert_allclose(x, ddim, rtol=1e-5, atol=1e-5)
    from_json = json.loads(json.dumps({k: np.asarray(v).tolist() for k, v in params.items()}))
    again = evaluation.family_samples(MODEL, "rddim", from_json, profile=P, logsnrs=g)
    np.testing.assert_array_equal(again, x)
    assert len(list((tmp_path / "cache").glob("samples-ddss-rddim-*.npz"))) == 1
    with pytest.raises(ValueError, match="unknown family"):
        evaluation.family_samples(MODEL, "ddim", params, profile=P)
