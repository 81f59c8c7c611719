"""Progressive distillation (ddss_lite.distill).

The target: for data on one point every DDIM step is exact, so the solved target is the teacher's
``x_hat`` itself; for Gaussian data (closed-form denoiser) and for an arbitrary nonlinear teacher,
one DDIM step with the target lands on the point two teacher DDIM steps reach, checked against
independent computations (float64 closed form; the library's own ``samplers.ddim``). Rounds: a
tiny round twice with one seed gives identical weights; a subprocess killed with SIGKILL in the
middle of a round and rerun ends on the same weights, bit for bit, as an uninterrupted run; on
Gaussian data, where the ideal student is representable, one round makes the N-step student match
the teacher's 2N-step sampler far better than the teacher's own N steps. Bad input fails clearly.
"""
import os
import pathlib
import re
import signal
import subprocess
import sys
import textwrap
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddss_lite import distill, nets, samplers, schedules, store, train
from ddss_lite.pretrained import Pretrained
from ddss_lite.schedules import alpha_sigma

from conftest import GaussianData

G = GaussianData()                      # N(0.3, 0.5^2) per dimension
POINT = jnp.array([0.7, -1.2, 0.0])
KEY = jax.random.PRNGKey(0)
REPO = pathlib.Path(__file__).resolve().parents[1]


def nonlinear_teacher(z, logsnr):
    """A smooth nonlinear stand-in for a network (per example; ``logsnr`` scalar or (B,))."""
    alpha, sigma = alpha_sigma(logsnr)
    a = jnp.reshape(alpha, jnp.shape(alpha) + (1,) * (z.ndim - jnp.ndim(alpha)))
    s = jnp.reshape(sigma, a.shape)
    return jnp.tanh(1.3 * a * z + 0.2 * s) + 0.1 * jnp.sin(z[..., ::-1])


def point_teacher(z, logsnr):
    return jnp.broadcast_to(POINT, z.shape)


def point64(z, logsnr):
    return jnp.broadcast_to(jnp.asarray(POINT, jnp.float64), z.shape)


def gauss_teacher(z, logsnr):
    """The closed-form Gaussian denoiser with per-example log-SNRs of shape (B,)."""
    return G.denoise(z, logsnr[:, None])


def _steps(N):
    """All (logsnr_t, logsnr_mid, logsnr_s) of a round with an N-step student, as host floats."""
    g = distill.round_grid(N)
    return [tuple(float(a[j]) for a in g) for j in range(N)]


ROWS = 1024      # examples per call: every step of a grid at once, one compiled shape for every N


def _all_steps(N):
    """Every step of a round at once: ``ROWS // N`` examples per step, per-example (ROWS,) log-SNRs."""
    return [jnp.repeat(a, ROWS // N) for a in distill.round_grid(N)]


_target = jax.jit(distill.distillation_target, static_argnums=0)    # compiled once per teacher and dtype


# ----------------------------------------------------------------------------- grids


@pytest.mark.parametrize("N", [1, 2, 3, 4, 7, 64, 256, 512, 4096])
def test_teacher_grid_contains_the_student_grid_exactly(N):
    g, student, teacher = distill.round_grid(N), schedules.grid(N), schedules.grid(2 * N)
    np.testing.assert_array_equal(g.logsnr_t, student[:-1])
    np.testing.assert_array_equal(g.logsnr_s, student[1:])
    np.testing.assert_array_equal(g.logsnr_s, teacher[2::2])
    np.testing.assert_array_equal(g.logsnr_mid, teacher[1::2])
    assert np.all(g.logsnr_t < g.logsnr_mid) and np.all(g.logsnr_mid < g.logsnr_s)
    # t on the cosine schedule: t = (i+1)/N, t' = t - 1/(2N), t'' = t - 1/N (float64 reference)
    j = np.arange(N)
    t = (N - j) / N
    np.testing.assert_allclose(g.logsnr_t, schedules.logsnr_cosine(t), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(g.logsnr_mid, schedules.logsnr_cosine(t - 0.5 / N), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(g.logsnr_s, schedules.logsnr_cosine(t - 1.0 / N), rtol=1e-6, atol=1e-5)


# ----------------------------------------------------------------------------- the target


def _condition(lt, ls):
    """``(alpha'' + sigma'') / (alpha'' - (sigma''/sigma_t) alpha_t)``: how much the solve amplifies a rounding
    error of ``z''`` or ``z_t`` (both terms of the numerator are of that size times the denominator)."""
    a_s, s_s = np.sqrt(1 / (1 + np.exp(-ls))), np.sqrt(1 / (1 + np.exp(ls)))
    return (a_s + s_s) / (-a_s * np.expm1(0.5 * (lt - ls)))


def test_target_is_the_teachers_x_hat_when_its_steps_are_exact():
    """Data on one point: every DDIM step is exact, so z'' = alpha'' m + sigma'' e and the target is m,
    to float64 rounding, and in float32 to rounding times the solve's condition number (every step of
    three grids, as per-example log-SNRs in one call)."""
    eps32 = np.finfo(np.float32).eps
    for N in (1, 4, 512):
        lt, lm, ls = _all_steps(N)
        z = jax.random.normal(KEY, (lt.shape[0], 3))
        x_target, z_s = _target(point_teacher, z, logsnr_t=lt, logsnr_mid=lm, logsnr_s=ls)
        tol = 8 * eps32 * _condition(np.asarray(lt), np.asarray(ls)) * float(jnp.max(jnp.abs(z)))
        assert np.all(np.abs(np.asarray(x_target) - np.asarray(POINT)) <= tol[:, None])
        # and the landing point is the forward process's own point with the same noise
        (alpha_t, sigma_t), (alpha_s, sigma_s) = [[a[:, None] for a in alpha_sigma(l)] for l in (lt, ls)]
        e = (z - alpha_t * POINT) / sigma_t
        np.testing.assert_allclose(z_s, alpha_s * POINT + sigma_s * e, rtol=1e-5, atol=1e-5)
        with jax.enable_x64(True):
            z64 = jnp.asarray(z, jnp.float64)
            l64 = [jnp.asarray(a, jnp.float64) for a in (lt, lm, ls)]
            x64, _ = _target(point64, z64, logsnr_t=l64[0], logsnr_mid=l64[1], logsnr_s=l64[2])
            assert x64.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(x64), np.broadcast_to(np.asarray(POINT, np.float64), z.shape),
                                       rtol=0, atol=1e-11)


def _ddim64(x_hat, z, lt, ls):
    """One DDIM step in float64 NumPy: ``alpha_s x_hat + sigma_s (z - alpha_t x_hat) / sigma_t``."""
    a_t, s_t = np.sqrt(1 / (1 + np.exp(-lt))), np.sqrt(1 / (1 + np.exp(lt)))
    a_s, s_s = np.sqrt(1 / (1 + np.exp(-ls))), np.sqrt(1 / (1 + np.exp(ls)))
    return a_s * x_hat + s_s * (z - a_t * x_hat) / s_t


def test_gaussian_teacher_one_step_with_the_target_lands_on_two_teacher_steps():
    """Closed-form Gaussian denoiser: z'' by two DDIM steps in float64 NumPy; one DDIM step from z_t with
    the float32 target lands there to float tolerance, at every step of several grids."""
    for N in (1, 2, 8, 256):
        lt, lm, ls = _all_steps(N)
        z32 = jax.random.normal(KEY, (lt.shape[0], 2))
        z = np.asarray(z32, np.float64)
        lt64, lm64, ls64 = [np.asarray(a, np.float64)[:, None] for a in (lt, lm, ls)]
        den64 = lambda z, l: G.m + G.gain64(l) * (z - np.sqrt(1 / (1 + np.exp(-l))) * G.m)
        z_mid = _ddim64(den64(z, lt64), z, lt64, lm64)
        z_s = _ddim64(den64(z_mid, lm64), z_mid, lm64, ls64)
        x_target, z_s32 = _target(gauss_teacher, z32, logsnr_t=lt, logsnr_mid=lm, logsnr_s=ls)
        np.testing.assert_allclose(z_s32, z_s, rtol=1e-5, atol=2e-6)
        landed = _ddim64(np.asarray(x_target, np.float64), z, lt64, ls64)
        np.testing.assert_allclose(landed, z_s, rtol=1e-5, atol=2e-6)


def test_nonlinear_teacher_one_ddim_step_with_the_target_lands_on_two_teacher_steps():
    """Against the library's DDIM sampler: ``samplers.ddim`` on the grid (t, t', t'') from z_t gives z'';
    one step with x_hat = target and the samplers' coefficients (``ddim_coefficients``) lands there."""
    shape = (128, 4)
    z_t = 1.5 * jax.random.normal(KEY, shape)
    for N in (1, 16, 512):
        steps = _steps(N)
        for lt, lm, ls in (steps[0], steps[-1]) if N != 16 else (steps[8],):
            x_target, z_s = _target(nonlinear_teacher, z_t, logsnr_t=lt, logsnr_mid=lm,
                                                        logsnr_s=ls)
            teacher_two = samplers.ddim(nonlinear_teacher, KEY, shape, logsnrs=jnp.array([lt, lm, ls]), z_init=z_t)
            mu, nu, _ = samplers.ddim_coefficients(logsnr_t=jnp.float32(lt), logsnr_s=jnp.float32(ls))
            np.testing.assert_allclose(z_s, teacher_two, rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(mu * x_target + nu * z_t, teacher_two, rtol=1e-5, atol=3e-6)


def test_last_step_target_is_the_teachers_x_hat_at_the_midpoint():
    z_t = jax.random.normal(KEY, (32, 4))
    for N in (1, 8):
        lt, lm, ls = _steps(N)[-1]
        x_target, _ = _target(nonlinear_teacher, z_t, logsnr_t=lt, logsnr_mid=lm, logsnr_s=ls,
                                                  last=True)
        z_mid = samplers.ddim(nonlinear_teacher, KEY, z_t.shape, logsnrs=jnp.array([lt, lm]), z_init=z_t)
        np.testing.assert_allclose(x_target, nonlinear_teacher(z_mid, lm), rtol=1e-6, atol=1e-6)
        # per example: only the rows marked last take the teacher's x_hat
        last = jnp.arange(32) % 2 == 0
        mixed, _ = _target(nonlinear_teacher, z_t, logsnr_t=lt, logsnr_mid=lm, logsnr_s=ls,
                                               last=last)
        solved, _ = _target(nonlinear_teacher, z_t, logsnr_t=lt, logsnr_mid=lm, logsnr_s=ls)
        np.testing.assert_allclose(mixed, jnp.where(last[:, None], x_target, solved), rtol=1e-6, atol=1e-6)


def test_target_in_float32_matches_float64_at_the_extreme_steps():
    """No division by a small sigma: at the noisiest step (logsnr -20, alpha = e^-10) and the cleanest
    (logsnr'' = 20, sigma'' = e^-10) of a 512-step student, the float32 target agrees with float64."""
    z = jax.random.normal(KEY, (64, 4))
    steps = _steps(512)
    for lt, lm, ls in (steps[0], steps[-1]):
        x32, _ = _target(nonlinear_teacher, z, logsnr_t=lt, logsnr_mid=lm, logsnr_s=ls)
        with jax.enable_x64(True):
            x64, _ = _target(nonlinear_teacher, jnp.asarray(z, jnp.float64), logsnr_t=lt,
                                                 logsnr_mid=lm, logsnr_s=ls)
            x64 = np.asarray(x64)
        assert np.all(np.isfinite(np.asarray(x32)))
        tol = 8 * np.finfo(np.float32).eps * _condition(lt, ls) * float(jnp.max(jnp.abs(z)))
        np.testing.assert_allclose(x32, x64, rtol=0, atol=tol)


# ----------------------------------------------------------------------------- rounds


class TinyNet(nn.Module):
    """A two-layer network on ``(z, logsnr / 20)``: small programs, so rounds compile quickly."""

    @nn.compact
    def __call__(self, z, logsnr):
        h = jnp.tanh(nn.Dense(16)(jnp.concatenate([z, logsnr[:, None] / 20.0], axis=1)))
        return nn.Dense(z.shape[-1])(h)


def _tiny_teacher(name="tiny", prediction="v", params=None):
    module = TinyNet()
    if params is None:
        params = module.init(jax.random.PRNGKey(3), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    return Pretrained(name, module, params, np.zeros(1), {}, prediction, (2,))


DATA = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (200, 2)) * 0.5 + 0.3, np.float32)
ROUND = dict(data=DATA, steps=12, batch=16, lr=1e-3)


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def test_round_is_deterministic():
    teacher = _tiny_teacher()
    a = distill.distill_round(teacher, None, 4, key=jax.random.PRNGKey(1), checkpoint=False, **ROUND)
    b = distill.distill_round(teacher, None, 4, key=jax.random.PRNGKey(1), checkpoint=False, **ROUND)
    for x, y in zip(_leaves(a.student.params), _leaves(b.student.params)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.student.losses, b.student.losses)
    assert any(not np.array_equal(x, y) for x, y in zip(_leaves(a.student.params), _leaves(teacher.params)))
    assert (a.cost.steps, a.cost.teacher_evals, a.cost.student_evals) == (12, 2 * 12 * 16, 12 * 16)
    assert a.cost.steps_timed == 12 and a.cost.wall_s > 0 and not a.cost.from_cache
    assert a.student.prediction == "v" and a.student.name == "tiny-distilled-4"
    assert a.student.module is teacher.module and a.student.data_shape == (2,)


def test_round_checkpoint_is_keyed_by_what_determines_it_and_loaded_when_complete(tmp_path, monkeypatch):
    teacher = _tiny_teacher()
    kw = dict(ROUND, key=jax.random.PRNGKey(1), cache_dir=tmp_path)
    first = distill.distill_round(teacher, None, 4, **kw)
    (ckpt,) = tmp_path.glob("distill-tiny-N4-*.ckpt")
    assert ckpt.with_name(ckpt.name + ".cost.json").exists()
    calls = []
    monkeypatch.setattr(train, "make_step", lambda *a, **k: (lambda s, key: calls.append(1) or s))
    again = distill.distill_round(teacher, None, 4, **kw)
    assert calls == [], "a complete round must be loaded, not trained"
    for x, y in zip(_leaves(first.student.params), _leaves(again.student.params)):
        np.testing.assert_array_equal(x, y)
    assert again.cost.from_cache and again.cost.wall_s == first.cost.wall_s
    # a damaged cost record: a warning naming it, the weights still load, the round's time is unknown
    cost_file = ckpt.with_name(ckpt.name + ".cost.json")
    for damaged in ('{"wall_s": 1.0, "steps', '{"wall_s": 1.0}', '{"wall_s": -3, "steps_timed": 12}', "[]",
                    '{"wall_s": 1.0, "steps_timed": "12"}', "\udcff"):
        cost_file.write_text(damaged, errors="surrogateescape")
        with pytest.warns(UserWarning, match="cost.json: unusable cost record"):
            bad = distill.distill_round(teacher, None, 4, **kw)
        assert calls == [] and bad.cost.from_cache and bad.cost.wall_s is None and bad.cost.steps_timed == 0
        np.testing.assert_array_equal(_leaves(bad.student.params)[0], _leaves(first.student.params)[0])
    # another teacher (its params digest) is another round: it misses the cache and trains (the fake step counts)
    other = _tiny_teacher(params=jax.tree_util.tree_map(lambda a: a * 1.01, teacher.params))
    distill.distill_round(other, None, 4, **kw)
    assert len(calls) == ROUND["steps"] and len(list(tmp_path.glob("distill-tiny-N4-*.ckpt"))) == 2
    # every other input that changes the result changes the config the checkpoint is keyed by (the key itself
    # enters through train.run_config, tested in test_train)
    base = dict(N=4, steps=12, batch=16, lr=1e-3, weighting="snr_trunc", prediction="v", data=DATA)
    cfg = lambda t=teacher, **v: distill.round_config(t, t.params, **dict(base, **v))
    variants = [cfg(), cfg(other), cfg(N=2), cfg(steps=13), cfg(lr=2e-3), cfg(batch=8), cfg(weighting="v"),
                cfg(data=DATA[:100]), cfg(prediction="x")]
    assert len({store.config_hash(c) for c in variants}) == len(variants)
    assert {k: v for k, v in first.student.config.items() if k != "key"} == cfg()
    assert first.student.config["key"] == [0, 1] and cfg()["teacher_sha256"] == store.array_digest(teacher.params)


def test_weighting_ablation_changes_the_loss():
    teacher = _tiny_teacher()
    loss = {w: jax.jit(distill.make_distillation_loss(teacher.denoiser(), nets.apply_fn(teacher.module), N=4, data=DATA,
                                              batch=64, weighting=w)) for w in ("snr_trunc", "v")}
    params = jax.tree_util.tree_map(lambda a: a + 0.05, teacher.params)
    vals = {w: float(f(params, KEY)) for w, f in loss.items()}
    assert vals["v"] > vals["snr_trunc"] > 0     # 1 + SNR > max(SNR, 1) on every example


KILL_SCRIPT = textwrap.dedent("""
    import sys, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_distill import _tiny_teacher, DATA
    from ddss_lite import distill
    cache, out = sys.argv[1], sys.argv[2]
    res = distill.progressive_distillation(_tiny_teacher(), 4, 1, data=DATA, steps_per_round=[10, 150], batch=16,
                                           lr=1e-3, key=jax.random.PRNGKey(7), cache_dir=cache, ckpt_every=1)
    np.savez(out, *[np.asarray(x) for x in jax.tree_util.tree_leaves(res.final.params)],
             losses=res.final.losses)
    print("costs", [(c.N, c.steps_timed, c.from_cache) for c in res.costs])
    print("total wall_s known:", res.total("wall_s") is not None)
""")


def _run_script(tmp_path, cache, out, *, kill_when=None):
    script = tmp_path / "run_distill.py"
    script.write_text(KILL_SCRIPT.format(tests=str(pathlib.Path(__file__).parent)))
    # the three runs compile the same programs: share them through JAX's persistent cache (time only)
    env = dict(os.environ, DDSS_PROGRESS="off", JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    proc = subprocess.Popen([sys.executable, str(script), str(cache), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_when is not None:
        deadline = time.monotonic() + 120
        while not kill_when() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    return proc.returncode, stdout, stderr


def test_sigkill_mid_round_then_rerun_ends_on_the_same_weights(tmp_path):
    rc, out, err = _run_script(tmp_path, tmp_path / "a", tmp_path / "a.npz")
    assert rc == 0, err[-3000:]
    assert "total wall_s known: True" in out
    # kill -9 once the second round (N = 1) has written a checkpoint, i.e. in the middle of it
    cache = tmp_path / "b"
    mid_round = lambda: any(cache.glob("distill-*-N1-*.ckpt"))
    rc, _, _ = _run_script(tmp_path, cache, tmp_path / "b.npz", kill_when=mid_round)
    assert rc == -signal.SIGKILL and not (tmp_path / "b.npz").exists()
    rc, out, err = _run_script(tmp_path, cache, tmp_path / "b.npz")
    assert rc == 0, err[-3000:]
    m = re.search(r"resumed from checkpoint .* at step (\d+) of 150", err)
    assert m and 0 < int(m.group(1)) < 150, err[-3000:]
    assert f"costs [(2, 10, True), (1, {150 - int(m.group(1))}, False)]" in out   # round 1 loaded, round 2 resumed
    assert "total wall_s known: False" in out   # the killed run's seconds of round 2 were never recorded
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert sorted(a.files) == sorted(b.files)
    for f in a.files:
        np.testing.assert_array_equal(a[f], b[f])


# ----------------------------------------------------------------------------- it works


class GaussianPlus(nn.Module):
    """x-prediction: the closed-form Gaussian denoiser plus a correction affine in z whose coefficients
    are linear in RBF features of log-SNR (zero-initialised), so the ideal student is representable."""

    centres: int = 24

    @nn.compact
    def __call__(self, z, logsnr):
        c = jnp.linspace(-20.0, 20.0, self.centres)
        phi = jnp.exp(-0.5 * jnp.square((logsnr[:, None] - c) / 1.5))                 # (B, C)
        feats = jnp.concatenate([phi, (phi[:, :, None] * z[:, None, :]).reshape(z.shape[0], -1)], axis=1)
        return G.denoise(z, logsnr[:, None]) + nn.Dense(z.shape[-1], kernel_init=nn.initializers.zeros)(feats)


def test_one_round_makes_the_n_step_student_match_the_2n_step_teacher():
    module = GaussianPlus()
    params = module.init(KEY, jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    teacher = Pretrained("gauss", module, params, np.zeros(1), {}, "x", (2,))
    data = lambda k, n: G.m + G.s * jax.random.normal(k, (n, 2))
    N = 4
    student, cost = distill.distill_round(teacher, None, N, data=data, steps=400, batch=256, lr=3e-2,
                                          key=jax.random.PRNGKey(1), checkpoint=False)
    shape = (2000, 2)
    ref = samplers.ddim(teacher.denoiser(), KEY, shape, logsnrs=schedules.grid(2 * N))
    err_teacher = float(jnp.sqrt(jnp.mean(jnp.square(samplers.ddim(teacher.denoiser(), KEY, shape,
                                                                    logsnrs=schedules.grid(N)) - ref))))
    err_student = float(jnp.sqrt(jnp.mean(jnp.square(samplers.ddim(student.denoiser(), KEY, shape,
                                                                    logsnrs=schedules.grid(N)) - ref))))
    assert err_student < 0.1 * err_teacher, (err_student, err_teacher)
    assert cost.steps == 400


# ----------------------------------------------------------------------------- bad input


def test_bad_input_is_refused_clearly():
    teacher = _tiny_teacher()
    kw = dict(data=DATA, steps_per_round=2, batch=4, lr=1e-3, key=KEY, checkpoint=False)
    with pytest.raises(ValueError, match="N_start / N_end must be a power of two"):
        distill.progressive_distillation(teacher, 12, 1, **kw)
    with pytest.raises(ValueError, match="N_end must be <= N_start"):
        distill.progressive_distillation(teacher, 4, 8, **kw)
    with pytest.raises(ValueError, match="N_start"):
        distill.progressive_distillation(teacher, 0, 1, **kw)
    with pytest.raises(ValueError, match="prediction.*eps"):
        distill.progressive_distillation(_tiny_teacher(prediction="eps"), 4, 1, **kw)
    with pytest.raises(ValueError, match="weighting"):
        distill.progressive_distillation(teacher, 4, 1, **dict(kw, weighting="snr-trunc"))
    with pytest.raises(ValueError, match="lr"):
        distill.progressive_distillation(teacher, 4, 1, **dict(kw, lr=0.0))
    with pytest.raises(ValueError, match="steps_per_round"):
        distill.progressive_distillation(teacher, 4, 1, **dict(kw, steps_per_round=[2, 2, 2]))
    with pytest.raises(ValueError, match="N must be"):
        distill.distill_round(teacher, None, 0, data=DATA, steps=2, batch=4, lr=1e-3, key=KEY, checkpoint=False)
    # converted explicitly, an eps teacher distils into a v student
    res = distill.progressive_distillation(_tiny_teacher(prediction="eps"), 2, 1, student_prediction="v", **kw)
    assert res.final.prediction == "v"


def test_nan_loss_names_the_round_and_step():
    good = _tiny_teacher()
    bad = _tiny_teacher(params=jax.tree_util.tree_map(lambda a: a * jnp.nan, good.params))
    with pytest.raises(FloatingPointError, match=r"round 1 of 2\): loss is not finite at step 0"):
        distill.progressive_distillation(bad, 4, 1, data=DATA, steps_per_round=3, batch=4, lr=1e-3, key=KEY,
                                         checkpoint=False)
