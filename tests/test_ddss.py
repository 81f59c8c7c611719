"""DDSS search: it improves its objective from the DDIM start, is reproducible, resumes, and fails loudly."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import GaussianData

from ddss_lite import ddss, metrics, samplers, schedules, store

G = GaussianData(m=0.8, s=0.3)  # the exact denoiser is closed form
M, S = G.m, G.s
gaussian_denoiser = G.denoise


phi = lambda x: jnp.concatenate([x, x**2], axis=-1)  # features: first and second moments
REAL = phi(M + S * jax.random.normal(jax.random.PRNGKey(9), (4096, 2)))


@jax.jit
def held_out_loss(params):
    x = samplers.GGDM.sample(params, gaussian_denoiser, jax.random.PRNGKey(5), (2048, 2), logsnrs=schedules.grid(3))
    return metrics.kid_linear_loss(phi(x), REAL)


def run(**kw):
    args = dict(K=3, shape=(128, 2), key=jax.random.PRNGKey(0), optimizer=optax.adam(3e-2), steps=40,
                eval_fn=held_out_loss, eval_every=10)
    args.update(kw)
    return ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, **args)


def test_search_improves_on_ddim_start_and_is_reproducible():
    res = run()
    # Step 0 is DDIM, which at K=3 is far off for Gaussian data; the search must improve held-out loss.
    assert res.eval_steps[0] == 0 and res.eval_steps[-1] == 40
    assert res.eval_values[-1] < 0.5 * res.eval_values[0], res.eval_values
    again = run()
    for a, b in zip(jax.tree_util.tree_leaves(res.params), jax.tree_util.tree_leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_search_resumes_where_it_stopped(tmp_path):
    full = run(eval_fn=None)
    path = tmp_path / "search.ckpt"
    run(eval_fn=None, ckpt_path=path, ckpt_every=7, stop_after=17)
    resumed = run(eval_fn=None, ckpt_path=path, ckpt_every=7)
    np.testing.assert_array_equal(resumed.loss, full.loss)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params), jax.tree_util.tree_leaves(full.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_learned_timesteps_stay_monotone_and_rddim_runs():
    res = run(learn_logsnrs=True, steps=10, eval_fn=None)
    g = np.asarray(samplers.GGDM.logsnrs(res.params, res.logsnrs))
    assert np.all(np.diff(g) > 0)
    res = ddss.search(samplers.RDDIM, gaussian_denoiser, phi, REAL, K=3, shape=(64, 2), key=jax.random.PRNGKey(0),
                      optimizer=optax.adam(1e-2), steps=5, kernel="cubic")
    assert np.all(np.isfinite(res.loss))


def test_nonfinite_loss_names_the_step():
    bad = lambda z, logsnr: jnp.where(logsnr > 0, jnp.nan, 0.0) * z
    with pytest.raises(FloatingPointError, match="step 0"):
        ddss.search(samplers.GGDM, bad, phi, REAL, K=3, shape=(8, 2), key=jax.random.PRNGKey(0),
                    optimizer=optax.adam(1e-2), steps=3)


def test_a_nan_from_the_optimizer_or_the_monitor_is_named_as_theirs():
    """A NaN learning rate: the loss and gradient are finite, the update is not; the search stops at
    step 0 naming the optimizer (not the denoiser, as the next step's sampler check would). A monitor
    that returns NaN, or no number, is named as the monitor."""
    kw = dict(K=3, shape=(8, 2), key=jax.random.PRNGKey(0), steps=3)
    with pytest.raises(FloatingPointError, match="optimizer's update made .*mu.* non-finite at step 0"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, optimizer=optax.adam(float("nan")), **kw)
    with pytest.raises(FloatingPointError, match="eval_fn returned nan at step 0"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, optimizer=optax.adam(1e-2),
                    eval_fn=lambda p: float("nan"), **kw)
    with pytest.raises(TypeError, match="eval_fn must return a number"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, optimizer=optax.adam(1e-2),
                    eval_fn=lambda p: {"kid": 1.0}, **kw)


def test_bad_inputs():
    kw = dict(shape=(8, 2), key=jax.random.PRNGKey(0), optimizer=optax.adam(1e-2), steps=3)
    with pytest.raises(ValueError, match="K must be"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, K=0, **kw)
    with pytest.raises(ValueError, match="kernel must be one of"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, K=2, kernel="rbf", **kw)
    with pytest.raises(ValueError, match="real_feats must be finite"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL.at[0, 0].set(jnp.nan), K=2, **kw)
    with pytest.raises(ValueError, match="learn_logsnrs=True needs the GGDM family"):
        ddss.search(samplers.RDDIM, gaussian_denoiser, phi, REAL, K=2, learn_logsnrs=True, **kw)
    with pytest.raises(ValueError, match="ckpt_every must be"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, K=2, ckpt_every=0, **kw)
    with pytest.raises(ValueError, match="unknown family"):
        ddss.search("ddim", gaussian_denoiser, phi, REAL, K=2, **kw)
    with pytest.raises(ValueError, match="key must be a PRNG key"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, K=2, **dict(kw, key=3))
    with pytest.raises(ValueError, match="logsnrs.*monotone"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, K=2, logsnrs=schedules.grid(2)[::-1], **kw)
    nan_init = samplers.GGDM.init_from_ddim(2)
    nan_init["mu"] = nan_init["mu"].at[0, 0].set(jnp.nan)
    with pytest.raises(ValueError, match="init_params must be finite"):
        ddss.search(samplers.GGDM, gaussian_denoiser, phi, REAL, K=2, init_params=nan_init, **kw)


def test_family_parameters_carry_the_same_numbers_under_the_same_names():
    """One vocabulary: for both families, mu multiplies x_hat, nu the state, c the noise; DDIM's
    coefficients land under the same names (GGDM on the diagonal), and no fixed value is a parameter."""
    K, g = 5, schedules.grid(5)
    mu, nu, c = samplers.ddim_coefficients(logsnr_t=g[:-1], logsnr_s=g[1:], eta=0.5)
    r = samplers.RDDIM.init_from_ddim(K, eta=0.5)
    q = samplers.GGDM.init_from_ddim(K, eta=0.5)
    assert set(r) == {"mu", "nu", "c"} and set(q) == {"mu", "nu", "c"}
    for name, ref in (("mu", mu), ("nu", nu), ("c", c)):
        np.testing.assert_array_equal(r[name], ref)
    np.testing.assert_array_equal(jnp.diag(q["mu"]), mu)
    np.testing.assert_array_equal(jnp.diag(q["nu"]), nu)
    np.testing.assert_array_equal(q["c"], c)
    assert float(jnp.abs(q["mu"] - jnp.diag(mu)).max()) == 0 and float(jnp.abs(q["nu"] - jnp.diag(nu)).max()) == 0
    # roles, checked by effect: raising mu (on x_hat) with a denoiser that returns 0 changes nothing
    zero = lambda z, logsnr: jnp.zeros_like(z)
    key = jax.random.PRNGKey(1)
    base = samplers.RDDIM.sample(r, zero, key, (3, 2), logsnrs=g)
    np.testing.assert_array_equal(samplers.RDDIM.sample({**r, "mu": r["mu"] + 1.0}, zero, key, (3, 2), logsnrs=g), base)
    np.testing.assert_array_equal(samplers.GGDM.sample({**q, "mu": q["mu"] + 1.0}, zero, key, (3, 2), logsnrs=g),
                                  samplers.GGDM.sample(q, zero, key, (3, 2), logsnrs=g))


def test_adamw_leaves_the_grids_fixed_ends_unchanged():
    """With weight decay every parameter moves; the grid (and, with learned timesteps, its two ends)
    is not a parameter, so it cannot drift."""
    grid = schedules.grid(3)
    for learn in (False, True):
        init = samplers.GGDM.init_from_ddim(3, learn_logsnrs=learn)
        res = run(optimizer=optax.adamw(3e-2, weight_decay=0.5), steps=5, eval_fn=None, learn_logsnrs=learn)
        np.testing.assert_array_equal(res.logsnrs, grid)
        lam = np.asarray(samplers.GGDM.logsnrs(res.params, res.logsnrs))
        assert lam[0] == float(grid[0]) and lam[-1] == float(grid[-1])
        moved = {k: float(jnp.max(jnp.abs(res.params[k] - init[k]))) for k in init}
        assert all(v > 0 for v in moved.values()), moved


def test_a_checkpoint_is_not_resumed_for_another_denoiser_optimiser_or_size(tmp_path, caplog):
    """The checkpoint's key covers what determines the result: another denoiser, learning rate or
    number of steps starts afresh (with a warning) instead of returning the finished parameters."""
    import logging

    path = tmp_path / "s.ckpt"
    first = run(eval_fn=None, steps=6, ckpt_path=path)
    assert path.exists()
    other_denoiser = lambda z, logsnr: GaussianData(m=0.5, s=0.3).denoise(z, logsnr)
    with caplog.at_level(logging.WARNING):
        res = ddss.search(samplers.GGDM, other_denoiser, phi, REAL, K=3, shape=(128, 2), key=jax.random.PRNGKey(0),
                          optimizer=optax.adam(3e-2), steps=6, ckpt_path=path)
    assert "ignoring search checkpoint" in caplog.text
    fresh = ddss.search(samplers.GGDM, other_denoiser, phi, REAL, K=3, shape=(128, 2), key=jax.random.PRNGKey(0),
                        optimizer=optax.adam(3e-2), steps=6)
    np.testing.assert_array_equal(np.asarray(res.params["mu"]), np.asarray(fresh.params["mu"]))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        run(eval_fn=None, steps=6, ckpt_path=path, optimizer=optax.adam(1e-2))
        run(eval_fn=None, steps=10, ckpt_path=path)
    assert caplog.text.count("ignoring search checkpoint") == 2
    # the same run again resumes from the finished checkpoint and returns it
    again = run(eval_fn=None, steps=10, ckpt_path=path)
    np.testing.assert_array_equal(np.asarray(again.loss), np.asarray(run(eval_fn=None, steps=10).loss))
    assert first.loss.shape == (6,)


def test_store_refuses_a_restored_leaf_of_another_shape(tmp_path):
    path = tmp_path / "x.ckpt"
    store.save_state(path, {"loss": np.zeros(5, np.float32)}, config={"a": 1})
    with pytest.raises(store.CorruptFile, match="loss.*float32\\[5\\].*expected float32\\[10\\]"):
        store.load_state(path, {"loss": np.zeros(10, np.float32)}, config={"a": 1})
    with pytest.raises(store.CorruptFile, match="int32"):
        store.load_state(path, {"loss": np.zeros(5, np.int32)}, config={"a": 1})
