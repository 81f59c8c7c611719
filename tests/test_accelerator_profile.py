"""The accelerator profile's data path on the CPU: the chapters ask for the profile's data set
(``data.image_split(P.dataset)``, ``pretrained.image_model``, ``pretrained.image_classifiers``,
``psld.image_model``, ``data.levels``), so with ``dataset="cifar10"`` every model, classifier and
decoder must take 32x32x3 images. Checked on a small archive in the official layout, with the
training replaced by a trace: each training loss is traced on its real batches with
``jax.eval_shape`` (shapes checked, nothing compiled) and the models get zero weights. The U-Net's
training and sampling themselves run in test_unet_paths.py; the digits keep their cache keys."""
import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import write_cifar_batch
from ddss_lite import data, pretrained, psld
from ddss_lite.profiles import describe, get_profile


@pytest.fixture
def traced_training(monkeypatch):
    """``load_or_train`` in pretrained and psld replaced: the loss is traced once, the state has zero
    weights; returns the (name, config) of every call."""
    calls = []

    def trace(name, config, init, loss_fn, **kwargs):
        params = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(init))
        loss = jax.eval_shape(loss_fn, params, jax.random.PRNGKey(0))
        assert loss.shape == () and loss.dtype == jnp.float32, (name, loss)
        calls.append((name, config))
        return types.SimpleNamespace(params=params, ema_params=params, losses=np.zeros(config["steps"]))

    monkeypatch.setattr(pretrained, "load_or_train", trace)
    monkeypatch.setattr(psld, "load_or_train", trace)
    return calls


@pytest.fixture(scope="module")
def cifar_profile(tmp_path_factory):
    """A tiny accelerator-shaped profile and a 60-image CIFAR-10 archive it reads (10 per batch
    file, class-dependent colours) through ``DDSS_CIFAR10_DIR``."""
    root = tmp_path_factory.mktemp("cifar")
    d = root / data.CIFAR10_SUBDIR
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in data.CIFAR10_FILES:
        y = np.arange(10)
        colour = np.stack([y * 25, 255 - y * 25, (y * 77) % 256], -1)[:, None, None, :]
        img = np.clip(colour + rng.normal(0, 30, (10, 32, 32, 3)), 0, 255).astype(np.uint8)
        write_cifar_batch(d / name, img, y.tolist())
    mp = pytest.MonkeyPatch()
    mp.setenv(data.CIFAR10_ENV, str(root))
    yield dataclasses.replace(get_profile("accelerator"), digits_hidden=8)
    mp.undo()


def test_the_profiles_image_data_set_reaches_every_model(cifar_profile, traced_training):
    P = cifar_profile
    split = data.image_split(P.dataset)
    assert split.image_shape == data.image_shape("cifar10") == (32, 32, 3) and len(split.x_train) == 50
    model = pretrained.image_model(P)
    assert model.config["kind"] == "cifar10" and model.config["net"] == "unet" and model.config["n_train"] == 50
    x_hat = jax.eval_shape(model.denoiser(), jnp.zeros((2, 32, 32, 3)), jnp.zeros(2))
    assert x_hat.shape == (2, 32, 32, 3)
    clf = pretrained.image_classifiers(P)                 # features of the 60 images, with zero weights
    assert clf["eval"](jnp.asarray(split.x_test[:3])).shape == (3, 64)
    pm = psld.image_model(P)
    assert pm.data_shape == (32, 32, 3) and pm.state_shape(2) == (2, 32, 32, 6)
    assert jax.eval_shape(pm.eps_fn(), jnp.zeros((2, 32, 32, 6)), jnp.full(2, 0.5)).shape == (2, 32, 32, 6)
    assert [name for name, _ in traced_training] == ["cifar10", "classifier-opt", "classifier-eval",
                                                     "psld-cifar10"]
    assert len(data.levels(P.dataset)) == 256


def test_the_digits_keep_their_cache_keys(traced_training):
    """``digits_model`` is ``image_model`` of the digits, under the names and configs it had before."""
    P = get_profile("cpu")
    assert P.dataset == "digits"
    for fn in (pretrained.digits_model, pretrained.image_model, psld.digits_model, psld.image_model):
        fn(P)
    (a, ca), (b, cb), (c, cc), (d, cd) = traced_training
    assert a == b == ca["kind"] == "digits" and ca == cb
    assert c == d == cc["kind"] == "psld-digits" and cc == cd


def test_describe_names_the_backend_and_warns_when_the_accelerator_profile_finds_none():
    line = describe(get_profile("cpu"))
    assert line.startswith(f"profile cpu: {jax.device_count()} {jax.default_backend()} device(s)")
    assert "\n" not in line
    acc = describe(get_profile("accelerator"))
    if jax.default_backend() == "cpu":
        assert "no GPU or TPU found" in acc and "Runtime > Change runtime type" in acc
    else:
        assert "\n" not in acc
