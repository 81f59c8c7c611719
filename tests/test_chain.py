"""The sampling chain (ddss_lite.chain): noise layout, rematerialisation, gradients, sharding."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddss_lite import chain, samplers, schedules
from ddss_lite.schedules import alpha_sigma

KEY = jax.random.PRNGKey(3)


def mlp_denoiser(weights):
    """A tiny per-example MLP ``x_hat = z + W2 tanh(W1 [z, logsnr/20] + b1)`` closed over ``weights``."""
    w1, b1, w2 = weights

    def denoise(z, logsnr):
        lam = jnp.broadcast_to(jnp.asarray(logsnr, z.dtype) / 20.0, z.shape[:1])[:, None]
        alpha, _ = alpha_sigma(logsnr)
        h = jnp.tanh(jnp.concatenate([z, lam], axis=1) @ w1 + b1)
        return alpha * z + h @ w2
    return denoise


def mlp_weights(key, dim=3, width=16, dtype=jnp.float32):
    k1, k2, k3 = jax.random.split(key, 3)
    return (jax.random.normal(k1, (dim + 1, width), dtype) / np.sqrt(dim + 1),
            0.1 * jax.random.normal(k2, (width,), dtype),
            jax.random.normal(k3, (width, dim), dtype) / np.sqrt(width))


def perturbed_ggdm(K, key, dtype):
    """GGDM params with learned time, moved off the DDIM point (dense lower triangles, noisy logits)."""
    params = samplers.GGDM.init_from_ddim(K, learn_logsnrs=True)
    ks = jax.random.split(key, 4)
    tril = jnp.tril(jnp.ones((K, K)))
    params = dict(params,
                  mu=params["mu"] + 0.02 * tril * jax.random.normal(ks[0], (K, K)),
                  nu=params["nu"] + 0.02 * tril * jax.random.normal(ks[1], (K, K)),
                  c=params["c"] + 0.05 * jax.random.normal(ks[2], (K,)),
                  logsnr_logits=params["logsnr_logits"] + 0.1 * jax.random.normal(ks[3], (K,)))
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)


def sample_loss(params, denoise, key, shape, *, remat):
    """A smooth scalar of the samples (stands in for KID): mean of sin(z) + z^2 / 2."""
    z = samplers.GGDM.sample(params, denoise, key, shape, logsnrs=schedules.grid(samplers.GGDM.num_steps(params)),
                             remat=remat)
    return jnp.mean(jnp.sin(z) + 0.5 * z**2)


# ----------------------------------------------------------------------------- noise layout


def test_normal_rows_prefix_and_independence():
    normal_rows = jax.jit(chain.normal_rows, static_argnums=(1, 2))
    big = normal_rows(KEY, (50, 4))
    np.testing.assert_array_equal(big[:7], normal_rows(KEY, (7, 4)))
    np.testing.assert_array_equal(big[3], jax.random.normal(jax.random.fold_in(KEY, 3), (4,)))
    assert float(jnp.min(jnp.abs(big[0] - big[1]))) > 0
    assert jax.eval_shape(lambda k: chain.normal_rows(k, (2, 3), jnp.float16), KEY).dtype == jnp.float16


def test_trajectory_starts_at_the_prior_and_ends_at_the_sample():
    K, shape = 4, (6, 3)
    denoise = mlp_denoiser(mlp_weights(KEY))
    z, traj = jax.jit(lambda g: samplers.ddpm(denoise, KEY, shape, logsnrs=g, return_trajectory=True))(
        schedules.grid(K))
    assert traj.shape == (K + 1,) + shape
    np.testing.assert_array_equal(traj[0], chain.prior_sample(KEY, shape))
    np.testing.assert_array_equal(traj[-1], z)


def test_scan_chain_checks_per_step_axes():
    step = lambda carry, p, key: (carry, None)
    with pytest.raises(ValueError, match="leading axis"):
        chain.scan_chain(step, 0.0, (jnp.zeros(3), jnp.zeros(4)), key=KEY)
    with pytest.raises(ValueError, match="K"):
        chain.scan_chain(step, 0.0, jnp.zeros(0), key=KEY)


# ----------------------------------------------------------------------------- gradients


def test_remat_gradients_equal_plain_gradients_ggdm_k10_and_use_less_memory():
    """Same gradients with and without remat; remat's compiled gradient keeps fewer temporaries
    (XLA's compile-time figure: memory, not time)."""
    K, shape = 10, (32, 3)
    denoise = mlp_denoiser(mlp_weights(KEY, width=128))
    params = perturbed_ggdm(K, jax.random.PRNGKey(1), jnp.float32)
    grads, temp = {}, {}
    for remat in (True, False):
        compiled = jax.jit(jax.grad(lambda p: sample_loss(p, denoise, KEY, shape, remat=remat))).lower(
            params).compile()
        grads[remat], temp[remat] = compiled(params), compiled.memory_analysis().temp_size_in_bytes
    for name in params:
        np.testing.assert_allclose(grads[True][name], grads[False][name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert float(jnp.max(jnp.abs(grads[True]["logsnr_logits"]))) > 0     # learned time gets a gradient
    assert float(jnp.max(jnp.abs(jnp.triu(grads[True]["mu"], 1)))) == 0  # the future gets none
    assert set(grads[True]) == {"mu", "nu", "c", "logsnr_logits"}       # the grid's ends are not parameters
    assert temp[True] < 0.5 * temp[False], temp


@pytest.mark.parametrize("name", ["heun", "dpm_solver_pp_2m"])
def test_remat_gradients_fixed_samplers_wrt_network(name):
    """Fixed samplers differentiate w.r.t. the denoiser's weights (e.g. for distillation) with and
    without remat alike (Heun's Euler/Heun switch is a lax.cond inside the checkpoint)."""
    logsnrs = schedules.grid(5)

    def loss(weights, remat):
        z = samplers.get_sampler(name)(mlp_denoiser(weights), KEY, (16, 3), logsnrs=logsnrs, remat=remat)
        return jnp.mean(z**2)

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    weights = mlp_weights(KEY)
    for a, b in zip(grad(weights, True), grad(weights, False)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_gradient_matches_central_finite_differences_float64():
    """d loss / d params along random directions vs (f(p + h d) - f(p - h d)) / 2h, in float64."""
    with jax.enable_x64(True):
        K, shape = 4, (16, 3)
        denoise = mlp_denoiser(mlp_weights(KEY, dtype=jnp.float64))
        params = perturbed_ggdm(K, jax.random.PRNGKey(2), jnp.float64)
        f = jax.jit(lambda p: sample_loss(p, denoise, KEY, shape, remat=True))
        g = jax.grad(f)(params)
        leaves, treedef = jax.tree_util.tree_flatten(params)
        for seed in range(3):
            ks = jax.random.split(jax.random.PRNGKey(10 + seed), len(leaves))
            d = jax.tree_util.tree_unflatten(treedef, [jax.random.normal(k, l.shape, jnp.float64)
                                                       for k, l in zip(ks, leaves)])
            h = 1e-5
            plus = jax.tree_util.tree_map(lambda p, v: p + h * v, params, d)
            minus = jax.tree_util.tree_map(lambda p, v: p - h * v, params, d)
            fd = (f(plus) - f(minus)) / (2 * h)
            ad = sum(jnp.vdot(a, b) for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(d)))
            np.testing.assert_allclose(float(ad), float(fd), rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- sharding


SHARDED_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from ddss_lite import chain, samplers, schedules
    assert jax.device_count() == 4, jax.devices()
    w = jax.random.normal(jax.random.PRNGKey(0), (3, 3)) / 2
    denoise = lambda z, logsnr: jnp.tanh(z @ w) * jax.nn.sigmoid(logsnr)
    key, g = jax.random.PRNGKey(5), schedules.grid(6)
    params = samplers.GGDM.init_from_ddpm(6)
    fns = {"ddpm": lambda k, s: samplers.ddpm(denoise, k, s, logsnrs=g),
           "ggdm": lambda k, s: samplers.GGDM.sample(params, denoise, k, s, logsnrs=g)}
    for name, B in (("ddpm", 64), ("ggdm", 10)):   # 10 rows on 4 devices: padded to 12
        fn = fns[name]
        if True:
            one = jax.jit(fn, static_argnums=1, device=jax.devices()[0])(key, (B, 3))
            many = chain.sample_sharded(fn, key, (B, 3))
            assert many.shape == (B, 3)
            np.testing.assert_allclose(np.asarray(many), np.asarray(one), atol=1e-6, err_msg=f"{name} {B}")
            if B == 64:
                assert len(many.sharding.device_set) == 4, many.sharding
                shard_rows = {s.data.shape[0] for s in many.addressable_shards}
                assert shard_rows == {16}, shard_rows
    print("SHARDED-OK")
""")


def test_sharded_sampling_equals_single_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and "SHARDED-OK" in out.stdout, out.stderr[-3000:]


def test_traced_initial_state_samples_like_a_concrete_one():
    """z_init may be a tracer (e.g. the chain inside jit or grad with respect to its start)."""
    den = mlp_denoiser(mlp_weights(jax.random.PRNGKey(4)))
    key, shape, g = jax.random.PRNGKey(5), (6, 3), schedules.grid(4)
    z0 = jax.random.normal(jax.random.PRNGKey(6), shape)
    eager = samplers.ddim(den, key, shape, logsnrs=g, z_init=z0)
    jitted = jax.jit(lambda z: samplers.ddim(den, key, shape, logsnrs=g, z_init=z))(z0)
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=1e-5, atol=1e-6)
    grad = jax.grad(lambda z: jnp.sum(samplers.ddim(den, key, shape, logsnrs=g, z_init=z)))(z0)
    assert grad.shape == shape and np.all(np.isfinite(np.asarray(grad)))
