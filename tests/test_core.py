"""Schedules, the forward process, conversions, profiles and input checks."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddss_lite import diffusion, schedules
from ddss_lite.profiles import PROFILES, get_profile


def test_cosine_schedule_endpoints_monotone_and_inverse():
    t = np.linspace(0, 1, 1001)
    lam = np.asarray(schedules.logsnr_cosine(t))
    assert np.all(np.diff(lam) < 0)
    assert lam[0] == pytest.approx(schedules.LOGSNR_MAX, abs=1e-6)
    assert lam[-1] == pytest.approx(schedules.LOGSNR_MIN, abs=1e-6)
    # On device (float32) tan() near pi/2 costs ~1e-3 in log-SNR at the noisy end.
    assert float(schedules.logsnr_cosine(jnp.ones(()))) == pytest.approx(schedules.LOGSNR_MIN, abs=2e-3)
    np.testing.assert_allclose(schedules.t_from_logsnr_cosine(lam), t, atol=1e-5)
    # The unclipped cosine schedule has alpha_t = cos(pi t / 2) up to the clipping offsets.
    a, _ = schedules.alpha_sigma(schedules.logsnr_cosine(0.5, logsnr_min=-60, logsnr_max=60))
    assert float(a) == pytest.approx(np.cos(np.pi / 4), abs=1e-5)


def test_alpha_sigma_variance_preserving():
    lam = jnp.linspace(-20, 20, 101)
    a, s = schedules.alpha_sigma(lam)
    np.testing.assert_allclose(a**2 + s**2, 1.0, atol=1e-6)
    np.testing.assert_allclose(jnp.log(a**2 / s**2)[20:80], lam[20:80], atol=1e-4)


def test_ddpm_schedule_matches_a_high_precision_product():
    """Against an independent reference: ``bar_alpha_t = prod_{s<=t} (1 - beta_s)`` and
    ``lambda_t = ln(bar_alpha_t / (1 - bar_alpha_t))`` in 40-digit decimal arithmetic."""
    from decimal import Decimal, getcontext

    getcontext().prec = 40
    T = 1000
    lam = schedules.ddpm_logsnr(T)
    assert np.all(np.diff(lam) < 0) and lam.shape == (T,)
    b1, bT = Decimal("1e-4"), Decimal("0.02")
    abar = Decimal(1)
    for t in range(1, T + 1):
        abar *= 1 - (b1 + (bT - b1) * (t - 1) / (T - 1))
        if t in (1, 2, 10, 500, 999, 1000):
            ref = float((abar / (1 - abar)).ln())
            assert lam[t - 1] == pytest.approx(ref, rel=1e-12, abs=1e-12), t


@pytest.mark.parametrize("kind", ["even", "quadratic"])
def test_grids_increasing_with_right_endpoints(kind):
    g = schedules.grid(7, kind=kind)
    assert g.shape == (8,)
    assert np.all(np.diff(g) > 0)
    assert float(g[0]) == pytest.approx(schedules.LOGSNR_MIN, abs=1e-2)
    assert float(g[-1]) == pytest.approx(schedules.LOGSNR_MAX, abs=1e-2)


def test_forward_marginals():
    key = jax.random.PRNGKey(0)
    x = jnp.full((200_000, 1), -0.4)
    for lam in (-3.0, 0.0, 2.5):
        eps = jax.random.normal(jax.random.fold_in(key, int(lam * 10) + 100), x.shape)
        z = diffusion.q_sample(x=x, eps=eps, logsnr=lam)
        a, s = schedules.alpha_sigma(lam)
        assert float(z.mean()) == pytest.approx(float(-0.4 * a), abs=5 * float(s) / np.sqrt(x.shape[0]))
        assert float(z.std()) == pytest.approx(float(s), rel=0.01)


def test_conversions_round_trip():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(k1, (16, 8, 8, 1))
    eps = jax.random.normal(k2, x.shape)
    lam = jax.random.uniform(k3, (16,), minval=-8, maxval=8)
    z = diffusion.q_sample(x=x, eps=eps, logsnr=lam)
    v = diffusion.v_from_x_eps(x=x, eps=eps, logsnr=lam)
    np.testing.assert_allclose(diffusion.x_from_eps(z=z, eps=eps, logsnr=lam), x, atol=2e-3)
    np.testing.assert_allclose(diffusion.eps_from_x(z=z, x=x, logsnr=lam), eps, atol=2e-3)
    np.testing.assert_allclose(diffusion.x_from_v(z=z, v=v, logsnr=lam), x, atol=1e-5)
    np.testing.assert_allclose(diffusion.eps_from_v(z=z, v=v, logsnr=lam), eps, atol=1e-5)
    with pytest.raises(TypeError):
        diffusion.x_from_eps(z, eps, lam)          # two same-typed arrays are never positional


def test_denoiser_adapters_agree():
    """An eps-, x- and v-network that are exact for a point mass all give x_hat = m."""
    m = 0.3
    eps_of = lambda z, lam: diffusion.eps_from_x(z=z, x=m, logsnr=lam)
    for pred, out in {"eps": eps_of, "x": lambda z, lam: jnp.full_like(z, m),
                      "v": lambda z, lam: diffusion.v_from_x_eps(x=jnp.full_like(z, m), eps=eps_of(z, lam),
                                                                 logsnr=lam)}.items():
        den = diffusion.make_denoiser(lambda p, z, lam: out(z, lam), None, prediction=pred)
        z = jax.random.normal(jax.random.PRNGKey(2), (5, 3))
        np.testing.assert_allclose(den(z, 1.0), m, atol=1e-5)


def test_eps_weighting_equals_eps_mse():
    """w = SNR on ||x - x_hat||^2 is exactly the eps-prediction MSE."""
    k = jax.random.split(jax.random.PRNGKey(3), 3)
    z, eps, eps_hat = (jax.random.normal(ki, (4, 6)) for ki in k)
    lam = jnp.array([-2.0, 0.0, 1.0, 3.0])
    x, x_hat = diffusion.x_from_eps(z=z, eps=eps, logsnr=lam), diffusion.x_from_eps(z=z, eps=eps_hat, logsnr=lam)
    lhs = diffusion.loss_weight(lam, "eps") * jnp.mean((x - x_hat) ** 2, 1)
    np.testing.assert_allclose(lhs, jnp.mean((eps - eps_hat) ** 2, 1), rtol=1e-4)


def test_profiles_and_bad_inputs():
    assert set(PROFILES) == {"smoke", "cpu", "accelerator"}
    assert get_profile("cpu").name == "cpu"
    with pytest.raises(ValueError, match="smoke.*cpu.*accelerator"):
        get_profile("gpu")
    with pytest.raises(ValueError, match="K must be an integer >= 1"):
        schedules.grid(0)
    with pytest.raises(ValueError, match="kind must be one of"):
        schedules.grid(5, kind="cubic")
    with pytest.raises(ValueError, match="prediction must be one of"):
        diffusion.to_x_hat("score")
    with pytest.raises(ValueError, match="weighting must be one of"):
        diffusion.loss_weight(0.0, "snr2")


def test_more_bad_inputs_name_the_parameter():
    from ddss_lite import features, samplers

    with pytest.raises(ValueError, match="logsnr_min must be < logsnr_max"):
        schedules.logsnr_cosine(0.5, logsnr_min=5.0, logsnr_max=5.0)
    for bad_t in (1.5, -0.1, np.array([0.2, np.nan])):
        with pytest.raises(ValueError, match=r"t must be in \[0, 1\]"):
            schedules.logsnr_cosine(bad_t)
    with pytest.raises(ValueError, match="clip must be > 0"):
        diffusion.make_denoiser(lambda p, z, l: z, None, clip=0.0)
    with pytest.raises(ValueError, match="beta_1"):
        schedules.ddpm_logsnr(10, beta_T=1.5)
    with pytest.raises(ValueError, match="bandwidth must be > 0"):
        features.rff(jax.random.PRNGKey(0), bandwidth=0.0)
    with pytest.raises(ValueError, match="batch_size must be"):
        features.batched(lambda x: x, np.zeros((4, 2)), batch_size=0)
    with pytest.raises(ValueError, match="eta"):
        samplers.ddim_coefficients(logsnr_t=jnp.array([0.0]), logsnr_s=jnp.array([1.0]), eta=2.0)
    with pytest.raises(ValueError, match="logsnr_s must be > logsnr_t"):
        samplers.ddim_coefficients(logsnr_t=jnp.array([1.0]), logsnr_s=jnp.array([0.0]))


@pytest.mark.parametrize("kind,hidden", [("mlp", 32), ("unet", 16)])
def test_denoising_networks_shapes_and_zero_init(kind, hidden):
    """Both networks map (B, 8, 8, 1) and per-example log-SNRs to the same shape; the zero-initialised
    output layer makes a fresh v-network's x_hat equal alpha * z (v_hat = 0)."""
    from ddss_lite import nets

    net = nets.make_denoiser_net(kind, hidden=hidden, depth=1)
    z = jax.random.normal(jax.random.PRNGKey(0), (3, 8, 8, 1))
    lam = jnp.array([-5.0, 0.0, 5.0])
    params = net.init(jax.random.PRNGKey(1), z, lam)["params"]
    out = nets.apply_fn(net)(params, z, lam)
    assert out.shape == z.shape
    den = diffusion.make_denoiser(nets.apply_fn(net), params, prediction="v")
    a, _ = schedules.alpha_sigma(lam)
    np.testing.assert_allclose(den(z, lam), a[:, None, None, None] * z, atol=1e-6)
    with pytest.raises(ValueError, match="net must be one of"):
        nets.make_denoiser_net("transformer", hidden=8)


def test_glue_html_table_escapes_cells_and_keeps_the_column_order(monkeypatch):
    import myst_nb

    from ddss_lite import report

    glued = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=True: glued.update({name: value}))
    report.glue_html_table("t", [{"b": "<x>", "a": 1.5}], ["a", "b"], caption="a & b")
    html = glued["t"].data
    assert html.index("<th>a</th>") < html.index("<th>b</th>")
    assert "&lt;x&gt;" in html and "<td>1.5</td>" in html and "<caption>a &amp; b</caption>" in html


def test_records_name_what_they_are_about_and_are_found_by_those_fields(tmp_path, monkeypatch):
    """report.records turns a table keyed by (sampler, nfe) into rows that name their table, data set,
    model, sampler, grid and NFE; they survive the results JSON, select/one find them by those fields
    (no key string parsed back), and a table that cannot name all of them is refused."""
    from ddss_lite import report

    monkeypatch.setenv("DDSS_BUILD_DIR", str(tmp_path))
    q = {("DDIM", 5): {"kid": 0.1, "kid_se": 0.01}, ("DDIM", 10): {"kid": 0.05, "kid_se": 0.01},
         ("Heun", 10): {"kid": 0.04, "kid_se": 0.02}}
    about = dict(dataset="digits", model="digits", grid="time_uniform")
    rows = report.records(q, table="quality", **about)
    rows += report.records({("DDIM", 10, 0.5): 3}, table="sweep", keys=("sampler", "nfe", "lam"), **about)
    report.write_results("08_head_to_head", {"records": rows})
    back = report.read_results("08_head_to_head")["records"]
    assert back == rows and all(set(report.RECORD_KEYS) <= set(r) for r in back)
    assert report.one(back, table="quality", sampler="Heun", nfe=10)["kid"] == 0.04
    assert [r["nfe"] for r in report.select(back, table="quality", sampler="DDIM")] == [5, 10]
    assert report.one(back, table="sweep", lam=0.5)["value"] == 3
    with pytest.raises(KeyError, match="no record.*'nfe': \\['10', '5'\\]"):
        report.one(back, table="quality", nfe=20)
    with pytest.raises(KeyError, match="2 records match"):
        report.one(back, table="quality", sampler="DDIM")
    with pytest.raises(ValueError, match="no \\['grid'\\]"):
        report.records(q, table="quality", dataset="digits", model="digits")
    with pytest.raises(ValueError, match="nfe must be an int"):
        report.records({("DDIM", "5"): 1.0}, table="quality", **about)
    with pytest.raises(ValueError, match="2 parts"):
        report.records(q, table="quality", keys=("sampler", "nfe", "lam"), **about)
    with pytest.raises(ValueError, match="hold \\['model'\\]"):
        report.records({("DDIM", 5): {"model": "x"}}, table="quality", **about)


def test_results_files_have_the_chapters_names_and_hold_json(tmp_path, monkeypatch):
    """write_results takes only the book's chapter names (the _toc.yml list: nothing written outside the
    results folder), writes NaN and infinities as null, refuses what JSON cannot hold; read_results names
    a corrupt file and the chapter to run again."""
    import json

    from ddss_lite import report, store

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "book"))
    import execute

    assert tuple(pathlib.Path(c).stem for c in execute.chapters()) == report.CHAPTERS
    monkeypatch.setenv("DDSS_BUILD_DIR", str(tmp_path))
    for bad in ("../escape", "", "results", "99_other", None, 3):
        with pytest.raises(ValueError, match="chapter must be one of the book's chapters"):
            report.write_results(bad, {})
        with pytest.raises(ValueError, match="chapter must be one of"):
            report.read_results(bad)
    assert not any(tmp_path.rglob("*.json"))
    report.write_results("02_baselines", {"kid": float("nan"), "x": [np.float32(np.inf), 1.5, np.int64(3)],
                                          "a": np.array([1.0, np.nan]), "n": {np.int64(1): -np.inf}})
    text = (tmp_path / "results" / "02_baselines.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert report.read_results("02_baselines") == {"kid": None, "x": [None, 1.5, 3], "a": [1.0, None],
                                                   "n": {"1": None}}
    with pytest.raises(TypeError, match="results must be a dict"):
        report.write_results("02_baselines", [1, 2])
    with pytest.raises(TypeError, match="dict keys must be strings or numbers"):
        report.write_results("02_baselines", {("a", 1): 2})
    (tmp_path / "results" / "03_ddss.json").write_text('{"profile": "cpu", "tab')
    with pytest.raises(store.CorruptFile, match="03_ddss.json is not a readable results file.*--only 03_ddss"):
        report.read_results("03_ddss")
    with pytest.raises(ValueError, match="Out of range float"):
        store.atomic_write_json(tmp_path / "x.json", {"v": float("nan")})
    assert json.loads((tmp_path / "results" / "02_baselines.json").read_text())["kid"] is None
