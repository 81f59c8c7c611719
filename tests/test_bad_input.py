"""Bad input that used to pass silently or fail deep inside JAX/NumPy: each case raises our own
``ValueError``/``TypeError`` whose message names the parameter (the reliability issue's examples,
by kind: wrong but accepted, deep errors, results files)."""
import jax
import numpy as np
import pytest

import optax

from ddss_lite import data, distill, elbo, evaluation, metrics, nets, psld, samplers, schedules, splitting, train
from ddss_lite.features import batched
from ddss_lite.profiles import get_profile

KEY = jax.random.PRNGKey(0)
FEATS = np.random.RandomState(0).normal(size=(8, 3))


def _teacher():
    """A tiny book-style model (an MLP v-network on 2-D points), for the distillation entry points."""
    from ddss_lite import nets, pretrained

    net = nets.make_denoiser_net("mlp", hidden=8, depth=1)
    params = net.init(KEY, np.zeros((1, 2)), np.zeros((1,)))["params"]
    return pretrained.Pretrained("tiny", net, params, np.zeros(1), {}, "v", (2,))


def _ddim(**kw):
    return samplers.ddim(lambda z, lam: 0.5 * z, KEY, (4, 2), logsnrs=schedules.grid(3), **kw)


CASES = {
    # wrong but accepted
    "eta as a string": (lambda: _ddim(eta="0.5"), ValueError, "eta must be a real scalar"),
    "eta as a bool": (lambda: _ddim(eta=True), ValueError, "eta must be a real scalar"),
    "an unknown sampler option in nfe": (lambda: samplers.nfe("ddim", 5, bogus=1), ValueError,
                                         r"ddim: unknown option\(s\) \['bogus'\]; its options are \['eta'\]"),
    "an unknown sampler option in steps": (lambda: samplers.steps("heun", 18, first=False), ValueError,
                                           r"heun: unknown option\(s\) \['first'\]"),
    "options for a family": (lambda: samplers.nfe("ggdm", 5, eta=0.0), ValueError, "ggdm: a family takes no options"),
    "with_fid as a string": (lambda: evaluation.Evaluator(None, FEATS, with_fid="no"), ValueError,
                             "with_fid must be True or False"),
    "complex features (Evaluator)": (lambda: evaluation.Evaluator(None, FEATS + 1j), ValueError,
                                     "ref_feats must hold real numbers"),
    "complex features (kid)": (lambda: metrics.kid(FEATS + 1j, FEATS), ValueError,
                               "feats_gen must hold real numbers"),
    "a negative PSLD time": (lambda: psld.covariance(psld.PSLD(), -1.0), ValueError, r"t must be a time in \[0, 1\]"),
    "a PSLD time above 1": (lambda: psld.mean_coefficients(psld.PSLD(), np.array([0.5, 1.5])), ValueError,
                            r"t must be a time in \[0, 1\].*1.5"),
    "an overflowing lam in a PSLD conjugate splitting sampler": (
        lambda: splitting.get("cse")(lambda z, t: 0.1 * z, KEY, (4, 3), process=psld.PSLD(), num_steps=5, lam=500.0),
        ValueError, r"'cse': the options \{'lam': 500.0\} overflow its step coefficients"),
    # deep errors: a key that is not a PRNG key, at every entry point that takes one
    "key=0 in data.toy2d": (lambda: data.toy2d("checkerboard", 0, 4), ValueError, "key must be a PRNG key"),
    "key=0 in train.fit": (lambda: train.fit(lambda p, k: p["w"] ** 2, {"w": 1.0}, key=0, steps=1,
                                             optimizer=optax.sgd(0.1)), ValueError, "key must be a PRNG key"),
    "key=0 in elbo.elbo_terms": (lambda: elbo.elbo_terms(lambda z, lam: z, np.zeros((2, 3)), 0,
                                                         elbo.logsnr_grid(8)), ValueError, "key must be a PRNG key"),
    "key=0 in distill.distill_round": (
        lambda: distill.distill_round(_teacher(), None, 2, data=np.zeros((8, 2)), steps=1, batch=2, lr=1e-3, key=0,
                                      checkpoint=False),
        ValueError, "key must be a PRNG key"),
    "key=0 in progressive_distillation": (lambda: distill.progressive_distillation(
        _teacher(), 2, data=np.zeros((8, 2)), steps_per_round=1, batch=2, lr=1e-3, key=0, checkpoint=False),
        ValueError, "key must be a PRNG key"),
    "equal log-SNRs in the distillation target": (
        lambda: distill.x_target_from_landing(z_t=np.ones((2, 1), np.float32), z_s=np.ones((2, 1), np.float32),
                                              logsnr_t=1.0, logsnr_s=1.0),
        ValueError, "logsnr_s must be > logsnr_t"),
    "features of no examples": (lambda: batched(lambda x: x, np.zeros((0, 3))), ValueError,
                                "x must hold at least one example"),
    "a feature map that is not a function": (lambda: batched(None, np.zeros((2, 3))), TypeError,
                                             "phi must be a feature map"),
    "a network of width 0": (lambda: nets.make_denoiser_net("mlp", hidden=0), ValueError, "hidden"),
    "a network of negative depth": (lambda: nets.make_denoiser_net("mlp", hidden=8, depth=-1), ValueError, "depth"),
    "Evaluator(seed=-1)": (lambda: evaluation.Evaluator(None, FEATS, seed=-1), ValueError, "seed must be an integer"),
    "a list as profile name": (lambda: get_profile(["smoke"]), ValueError, "profile must be one of"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named(case):
    call, error, match = CASES[case]
    with pytest.raises(error, match=match):
        call()


def test_the_checks_keep_what_is_valid():
    """The same calls with valid input still work: an integer eta, a real feature array, t at the ends."""
    assert _ddim(eta=0).shape == (4, 2) and _ddim(eta=np.float32(0.5)).shape == (4, 2)
    assert samplers.nfe("heun", 10, first_euler=False) == 19 and samplers.steps("heun", 18) == 10
    assert samplers.get("ddim").options == ("eta",)
    assert np.isfinite(metrics.kid(FEATS.astype(np.float32), FEATS))
    sxx, _, _ = psld.covariance(psld.PSLD(), np.array([0.0, 1.0]))
    assert np.all(sxx > 0)


def test_a_traced_grid_is_checked_when_the_compiled_call_runs():
    """Under jit the grid is a tracer: a decreasing one is refused when the compiled sampler runs (it
    sampled garbage before), naming the grid; an increasing one samples as before."""
    run = jax.jit(lambda g: samplers.ddim(lambda z, lam: 0.5 * z, KEY, (4, 2), logsnrs=g))
    g = schedules.grid(4)
    np.testing.assert_allclose(run(g), samplers.ddim(lambda z, lam: 0.5 * z, KEY, (4, 2), logsnrs=g), rtol=1e-6)
    with pytest.raises(Exception, match="logsnrs .* must be strictly increasing"):
        jax.block_until_ready(run(g[::-1]))
