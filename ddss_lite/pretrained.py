"""The pre-trained models every chapter uses, loaded from the cache or trained on first use.

* :func:`toy_model`: an MLP denoiser for a 2-D toy distribution (fresh data every step).
* :func:`digits_model`: a denoiser for scikit-learn's 8x8 digits (MLP or U-Net per profile).
* :func:`digit_classifiers`: two independently trained classifiers whose penultimate
  activations are the KID/FID features: ``"opt"`` (optimised against) and ``"eval"`` (held out).

All networks are conditioned on log-SNR and trained on the cosine schedule with
``t ~ U[0, 1]``; they predict ``v`` (Salimans & Ho 2022), which keeps ``x_hat`` stable at
every noise level, and are trained with the v-MSE (weight ``1 + SNR`` on ``||x - x_hat||^2``).
Sizes come from the :class:`~ddss_lite.profiles.Profile`; the cache key is the full config.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddss_lite import data, diffusion, nets, paths, schedules
from ddss_lite.features import FeatureMap, classifier_features
from ddss_lite.models import Model
from ddss_lite.profiles import Profile
from ddss_lite.train import load_or_train

FORMAT = 1  # bump to invalidate every cache entry when training code changes meaning


BOOK_SCHEDULE = schedules.Cosine()
"""The schedule every network of the book is trained on: cosine, log-SNR clipped to [-20, 20]."""


@dataclasses.dataclass(frozen=True)
class Pretrained(Model):
    """A network the book trained: a :class:`ddss_lite.Model` on :data:`BOOK_SCHEDULE`, called on the
    log-SNR itself, with its EMA params, loss curve and the config it was trained with."""

    name: str
    module: nn.Module
    params: dict
    losses: np.ndarray
    config: dict
    prediction: str = "v"
    data_shape: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "_denoisers", {})

    def denoiser(self, *, clip: float | None = None) -> diffusion.Denoiser:
        """``denoise(z, logsnr) -> x_hat`` for the samplers. The same function object is returned on
        every call (per ``clip``), so functions compiled for it (keyed by identity) are reused."""
        if clip not in self._denoisers:
            self._denoisers[clip] = diffusion.make_denoiser(nets.apply_fn(self.module), self.params,
                                                            prediction=self.prediction, clip=clip)
        return self._denoisers[clip]

    @property
    def schedule(self):
        return BOOK_SCHEDULE

    def net_apply(self, params, z, logsnr):
        logsnr_b = jnp.broadcast_to(jnp.asarray(logsnr, z.dtype), z.shape[:1])
        return nets.apply_fn(self.module)(params, z, logsnr_b)

    def with_params(self, params, *, name: str | None = None, **changes) -> "Pretrained":
        return dataclasses.replace(self, params=params, name=self.name if name is None else name, **changes)

    def network_id(self) -> str:
        return repr(self.module)


def adam(profile: Profile, steps: int):
    """The optimiser every denoiser of the book is trained with: Adam with warm-up and cosine decay of
    ``profile.learning_rate`` over ``steps``, gradients clipped to global norm 1."""
    sched = optax.warmup_cosine_decay_schedule(0.0, profile.learning_rate, min(500, steps // 10 + 1), steps,
                                               end_value=profile.learning_rate * 0.05)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adam(sched))


def _train_denoiser(name, module, config, sample_x, x_shape, profile, key):
    denoising = diffusion.make_denoising_loss(nets.apply_fn(module), logsnr_fn=schedules.logsnr_cosine,
                                              prediction="v", weighting="v")
    loss_fn = lambda p, k: denoising(p, sample_x(jax.random.fold_in(k, 1)), jax.random.fold_in(k, 2))
    k_init, k_train = jax.random.split(key)
    # jitted: one compile instead of one per operation (the same weights, bit for bit, as op by op)
    init = lambda: jax.jit(module.init)(k_init, jnp.zeros((1, *x_shape)), jnp.zeros((1,)))["params"]
    steps = config["steps"]
    state = load_or_train(name, config, init, loss_fn, cache_dir=paths.cache_dir(),
                          optimizer=adam(profile, steps), ema_decay=0.999 if steps >= 2000 else 0.9,
                          ckpt_every=max(100, steps // 10), key=k_train)
    return Pretrained(name, module, state.ema_params, np.asarray(state.losses), config, "v", x_shape)


def toy_model(profile: Profile, *, dataset: str = "checkerboard", seed: int = 0) -> Pretrained:
    """MLP denoiser for the 2-D ``dataset`` (fresh samples from the generator at every step)."""
    config = dict(format=FORMAT, kind="toy", dataset=dataset, net="mlp", hidden=profile.toy_hidden,
                  depth=profile.toy_depth, steps=profile.toy_steps, batch=profile.toy_batch,
                  lr=profile.learning_rate, seed=seed)
    module = nets.make_denoiser_net("mlp", hidden=profile.toy_hidden, depth=profile.toy_depth)
    sample_x = lambda k: data.toy2d(dataset, k, profile.toy_batch)
    return _train_denoiser(f"toy-{dataset}", module, config, sample_x, (2,), profile, jax.random.PRNGKey(seed))


def image_model(profile: Profile, *, seed: int = 0) -> Pretrained:
    """Denoiser for the profile's image data set (``profile.dataset``: 8x8 digits in the smoke and cpu
    profiles, CIFAR-10 in the accelerator profile) in [-1, 1], trained on its fixed training split
    with the profile's ``digits_*`` sizes."""
    split = data.image_split(profile.dataset)
    x_train = jnp.asarray(split.x_train)
    config = dict(format=FORMAT, kind=profile.dataset, net=profile.digits_net, hidden=profile.digits_hidden,
                  depth=profile.digits_depth, steps=profile.digits_steps, batch=profile.digits_batch,
                  lr=profile.learning_rate, seed=seed, n_train=int(x_train.shape[0]))
    module = nets.make_denoiser_net(profile.digits_net, hidden=profile.digits_hidden, depth=profile.digits_depth)
    sample_x = lambda k: x_train[jax.random.randint(k, (profile.digits_batch,), 0, x_train.shape[0])]
    return _train_denoiser(profile.dataset, module, config, sample_x, tuple(x_train.shape[1:]), profile,
                           jax.random.PRNGKey(seed))


def digits_model(profile: Profile, *, seed: int = 0) -> Pretrained:
    """The digits denoiser with the profile's sizes (:func:`image_model` on the digits, whatever
    ``profile.dataset`` says)."""
    return image_model(dataclasses.replace(profile, dataset="digits"), seed=seed)


CLASSIFIERS = {
    # role: (module, seed). Different architectures and seeds: independent feature maps.
    "opt": (partial(nets.MLPClassifier, widths=(256, 128)), 1),
    "eval": (partial(nets.CNNClassifier, channels=(16, 32), feature_dim=64), 2),
}


def accuracy(module, params, x, y) -> float:
    logits = module.apply({"params": params}, jnp.asarray(x))
    return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(y)))


def image_classifiers(profile: Profile) -> dict[str, FeatureMap]:
    """``{"opt": FeatureMap, "eval": FeatureMap}``: penultimate features of two independently
    trained classifiers (an MLP and a CNN, different seeds) of the profile's image data set
    (``profile.dataset``), with their test accuracies: the book's Inception-free features.

    Training adds light Gaussian pixel noise (std 0.1) so features stay meaningful on samples
    that are slightly off the data manifold. Features are divided by their RMS on the training
    images (a fixed constant per network). The cache key holds a probe of the training loss, so
    another data set trains other classifiers.
    """
    split = data.image_split(profile.dataset)
    x, y = jnp.asarray(split.x_train), jnp.asarray(split.y_train)
    out = {}
    for role, (make, seed) in CLASSIFIERS.items():
        module = make()
        config = dict(format=FORMAT, kind="classifier", role=role, module=repr(module),
                      steps=profile.classifier_steps, batch=128, seed=seed, n_train=int(x.shape[0]))

        def loss_fn(p, k, module=module):
            idx = jax.random.randint(jax.random.fold_in(k, 0), (128,), 0, x.shape[0])
            xb = x[idx] + 0.1 * jax.random.normal(jax.random.fold_in(k, 1), x[idx].shape)
            logits = module.apply({"params": p}, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()

        key = jax.random.PRNGKey(seed)
        init = lambda module=module, key=key: jax.jit(module.init)(key, x[:1])["params"]
        state = load_or_train(f"classifier-{role}", config, init, loss_fn, cache_dir=paths.cache_dir(),
                              optimizer=optax.adam(1e-3), ema_decay=0.0,
                              ckpt_every=max(100, profile.classifier_steps), key=jax.random.fold_in(key, 1))
        acc = accuracy(module, state.params, split.x_test, split.y_test)
        raw = module.apply({"params": state.params}, x, features=True)
        scale = float(jnp.sqrt(jnp.mean(jnp.square(raw)))) + 1e-8   # RMS feature on training digits
        out[role] = classifier_features(module, state.params, input_shape=tuple(x.shape[1:]), scale=scale,
                                        name=f"{role}-{type(module).__name__}", test_accuracy=acc)
    return out


def digit_classifiers(profile: Profile) -> dict[str, FeatureMap]:
    """:func:`image_classifiers` of the digits, whatever ``profile.dataset`` says."""
    return image_classifiers(dataclasses.replace(profile, dataset="digits"))


def distilled_students(profile: Profile, *, kind: str = "digits", seed: int = 0):
    """Progressive distillation (:func:`ddss_lite.distill.progressive_distillation`) of the ``kind``
    teacher (an image data set, ``"digits"`` or ``"cifar10"``, or a toy dataset name such as
    ``"checkerboard"``) from
    ``profile.distill_N_start`` steps down to 1, with the profile's steps per round, batch and
    learning rate; every round is cached (a second call loads them). Returns the ``Distillation``
    (teacher, students by N, per-round costs)."""
    from ddss_lite import distill

    if kind in data.IMAGE_DATASETS:
        prof = dataclasses.replace(profile, dataset=kind)
        teacher, x, batch = image_model(prof, seed=seed), data.image_split(kind).x_train, profile.distill_batch
    else:
        teacher = toy_model(profile, dataset=kind, seed=seed)
        x, batch = (lambda k, n: data.toy2d(kind, k, n)), profile.distill_toy_batch
    return distill.progressive_distillation(teacher, profile.distill_N_start, 1, data=x,
                                            steps_per_round=profile.distill_steps_per_round, batch=batch,
                                            lr=profile.distill_lr, key=jax.random.PRNGKey(seed),
                                            cache_dir=paths.cache_dir())
