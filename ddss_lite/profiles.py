"""Run profiles: every size a chapter uses lives here, in one place.

``smoke`` runs a chapter in seconds (the tests execute every chapter this way),
``cpu`` is the default (minutes on a laptop-class CPU; the results must show the
effects a chapter claims), ``accelerator`` is for GPU/TPU (bigger models, more
samples, more steps).
"""
from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    # 2-D toy denoiser (MLP on the point itself).
    toy_hidden: int
    toy_depth: int
    toy_steps: int
    toy_batch: int
    # The image data set of the profile ("digits": scikit-learn's 8x8 digits; "cifar10") and its
    # denoiser: "mlp" on the flattened image or "unet" (the digits_* sizes apply to either data set).
    dataset: str
    digits_net: str
    digits_hidden: int          # MLP width, or the U-Net's base channels
    digits_depth: int           # MLP hidden layers (ignored by the U-Net)
    digits_steps: int
    digits_batch: int
    # Feature classifiers for KID/FID on digits.
    classifier_steps: int
    # Evaluation.
    n_eval: int                 # generated samples per KID/FID estimate (every sampler on the same noise)
    ref_steps: int              # the many-step reference sampler
    ks: tuple                   # K values in the few-step tables
    # Sampler search (DDSS).
    search_ks: tuple = (5, 10, 20)
    search_steps: int = 100     # optimisation steps per search
    search_batch: int = 256     # samples per optimisation step
    search_lr: float = 3e-3
    n_monitor: int = 1000       # samples of the search's held-out monitor (fixed noise)
    # ELBO-optimal schedules (dynamic programming).
    dp_T: int = 1000            # grid points of the cost matrix (T network passes per batch)
    dp_K_max: int = 64          # largest schedule the DP returns
    learning_rate: float = 1e-3
    # The head-to-head chapter: every sampler at these numbers of network evaluations.
    h2h_nfes: tuple = (1, 2, 4, 5, 8, 10, 20, 50)
    # Progressive distillation: N_start halved to 1, steps per round, batch and learning rate.
    distill_N_start: int = 256
    distill_steps_per_round: int = 250   # cpu: 8 rounds of 250 (the book's time budget; chapter 5)
    distill_batch: int = 128
    distill_toy_batch: int = 256
    distill_lr: float = 2e-4
    # PSLD (chapter 7): every sampler at these NFE, on psld_n samples per estimate (fewer than
    # n_eval: twelve samplers at four budgets, within the chapter's share of the book's time).
    psld_nfes: tuple = (10, 20, 50, 100)
    psld_n: int = 1000
    psld_toy_steps: int = 2000  # the 2-D PSLD model (it only draws a figure): a quarter of toy_steps

    @property
    def n_devices(self) -> int:
        return jax.device_count()


PROFILES = {
    "smoke": Profile(
        name="smoke", dataset="digits", toy_hidden=64, toy_depth=2, toy_steps=60, toy_batch=128,
        digits_net="mlp", digits_hidden=128, digits_depth=2, digits_steps=60, digits_batch=64,
        classifier_steps=40, n_eval=64, ref_steps=20, ks=(2, 5),
        search_ks=(2,), search_steps=4, search_batch=16, dp_T=40, dp_K_max=8, n_monitor=64,
        distill_N_start=4, distill_steps_per_round=4, distill_batch=16, distill_toy_batch=16, distill_lr=1e-3,
        h2h_nfes=(1, 2), psld_nfes=(4, 8), psld_n=64, psld_toy_steps=15,
    ),
    "cpu": Profile(
        name="cpu", dataset="digits", toy_hidden=256, toy_depth=3, toy_steps=8000, toy_batch=512,
        digits_net="mlp", digits_hidden=512, digits_depth=3, digits_steps=8000, digits_batch=128,
        classifier_steps=1500, n_eval=5000, ref_steps=1000, ks=(5, 10, 20, 50),
    ),
    "accelerator": Profile(
        name="accelerator", dataset="cifar10", toy_hidden=512, toy_depth=4, toy_steps=30000, toy_batch=2048,
        digits_net="unet", digits_hidden=64, digits_depth=0, digits_steps=40000, digits_batch=256,
        classifier_steps=4000, n_eval=10000, ref_steps=1000, ks=(5, 10, 20, 50), learning_rate=3e-4,
        search_steps=1000, search_batch=1024, dp_K_max=256,
        distill_N_start=1024, distill_steps_per_round=2000, distill_batch=256, distill_toy_batch=1024, distill_lr=1e-4,
        psld_n=10000, psld_toy_steps=7500,
    ),
}


def describe(profile: Profile) -> str:
    """The line a chapter prints first: the profile and the devices JAX runs it on. JAX picks the
    backend itself (``jax.default_backend()``: a GPU or TPU when the machine has one, else the
    CPU); the accelerator profile on a CPU gets a second line saying so."""
    devices = jax.devices()
    kinds = ", ".join(sorted({d.device_kind for d in devices}))
    line = f"profile {profile.name}: {len(devices)} {jax.default_backend()} device(s) ({kinds})"
    if profile.name == "accelerator" and jax.default_backend() == "cpu":
        line += (f"\nno GPU or TPU found: the accelerator profile is sized for one (a {profile.digits_net} "
                 f"trained {profile.digits_steps} steps at batch {profile.digits_batch} on {profile.dataset}) "
                 "and will run on the CPU. In Colab, choose a GPU or TPU under Runtime > Change runtime "
                 "type, or set profile = 'cpu'.")
    return line


def get_profile(name: str) -> Profile:
    """The :class:`Profile` called ``name``; raises ``ValueError`` listing the valid names."""
    if not isinstance(name, str) or name not in PROFILES:
        raise ValueError(f"profile must be one of {list(PROFILES)}, got {name!r}")
    return PROFILES[name]
