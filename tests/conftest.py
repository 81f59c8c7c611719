"""Shared test fixtures: a fresh build directory per run, and Gaussian data with its closed forms.

For data ``x ~ N(m, s^2)`` per dimension every quantity a sampler needs is closed form, so
solvers can be checked against exact answers (DESIGN.md section 7):

* the denoiser ``x_hat(z, lambda) = m + g(lambda) (z - alpha m)``, ``g = alpha s^2 / v``,
  ``v(lambda) = alpha^2 s^2 + sigma^2`` (the variance of ``z_lambda``);
* the probability-flow map from ``lambda_t`` to ``lambda_s``:
  ``z_s = alpha_s m + sqrt(v_s / v_t) (z_t - alpha_t m)`` (it maps N(alpha_t m, v_t) onto
  N(alpha_s m, v_s) monotonically, which is what the ODE's flow does in one dimension).

Import with ``from conftest import GaussianData`` (pytest puts ``tests/`` on ``sys.path``).
"""
import dataclasses
import os
import pickle

import jax.numpy as jnp
import numpy as np
import pytest

from ddss_lite.schedules import alpha_sigma


# The files whose tests take longest (measured with --durations: the multi-device and
# multi-process runs, the U-Net paths, the PSLD models, distillation with a kill -9).
SLOW_FILES = ("test_parallel.py", "test_unet_paths.py", "test_psld.py", "test_distill.py")


def pytest_collection_modifyitems(config, items):
    """Run the slowest files first, each file's tests in their own order: with several workers
    (``make test`` runs ``pytest -n 2``) the short tests then fill in at the end, instead of one long
    test running alone while the other worker is idle."""
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session", autouse=True)
def build_dir(tmp_path_factory):
    """Every test run writes models, results and figures into its own fresh build directory."""
    path = tmp_path_factory.mktemp("build")
    old = os.environ.get("DDSS_BUILD_DIR")
    os.environ["DDSS_BUILD_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DDSS_BUILD_DIR", None)
    else:
        os.environ["DDSS_BUILD_DIR"] = old


@dataclasses.dataclass(frozen=True)
class GaussianData:
    """Data ``N(m, s^2)`` in every dimension and its closed forms (module docstring)."""

    m: float = 0.3
    s: float = 0.5

    def variance(self, logsnr):
        alpha, sigma = alpha_sigma(logsnr)
        return alpha**2 * self.s**2 + sigma**2

    def gain(self, logsnr):
        """``g`` with ``x_hat = m + g (z - alpha m)``."""
        alpha, _ = alpha_sigma(logsnr)
        return alpha * self.s**2 / self.variance(logsnr)

    def denoise(self, z, logsnr):
        alpha, _ = alpha_sigma(logsnr)
        return self.m + self.gain(logsnr) * (z - alpha * self.m)

    def flow(self, z_t, *, logsnr_t, logsnr_s):
        """The exact probability-flow map from ``logsnr_t`` to ``logsnr_s``."""
        alpha_t, _ = alpha_sigma(logsnr_t)
        alpha_s, _ = alpha_sigma(logsnr_s)
        return alpha_s * self.m + jnp.sqrt(self.variance(logsnr_s) / self.variance(logsnr_t)) * (z_t - alpha_t * self.m)

    def variance64(self, logsnr):
        """:meth:`variance` in float64 NumPy (``alpha^2 = 1 / (1 + e^-lambda)``)."""
        a2 = 1.0 / (1.0 + np.exp(-np.asarray(logsnr, np.float64)))
        return a2 * self.s**2 + (1.0 - a2)

    def gain64(self, logsnr):
        """:meth:`gain` in float64 NumPy."""
        a = np.sqrt(1.0 / (1.0 + np.exp(-np.asarray(logsnr, np.float64))))
        return a * self.s**2 / self.variance64(logsnr)

    def flow_gain(self, logsnr_t, logsnr_s) -> float:
        """``d z_s / d z_t`` of the exact flow, float64 on the host."""
        return float(np.sqrt(self.variance64(logsnr_s) / self.variance64(logsnr_t)))


@pytest.fixture
def gaussian():
    """The default Gaussian data, ``N(0.3, 0.5^2)``."""
    return GaussianData()


def poly3_cross(mu_a, cov_a, mu_b, cov_b):
    """E[(x . y / d + 1)^3] for independent x ~ N(mu_a, cov_a), y ~ N(mu_b, cov_b), from moments:
    E[x.y] = mu_a.mu_b, E[(x.y)^2] = tr(M_a M_b) with M = cov + mu mu^T, and
    E[(x.y)^3] = sum_ijk T_a,ijk T_b,ijk with T_ijk = E[x_i x_j x_k]
               = mu_i mu_j mu_k + mu_i cov_jk + mu_j cov_ik + mu_k cov_ij (Gaussian third moment)."""
    d = mu_a.shape[0]

    def third(mu, cov):
        return (np.einsum("i,j,k->ijk", mu, mu, mu) + np.einsum("i,jk->ijk", mu, cov)
                + np.einsum("j,ik->ijk", mu, cov) + np.einsum("k,ij->ijk", mu, cov))

    e1 = mu_a @ mu_b
    e2 = np.trace((cov_a + np.outer(mu_a, mu_a)) @ (cov_b + np.outer(mu_b, mu_b)))
    e3 = np.sum(third(mu_a, cov_a) * third(mu_b, cov_b))
    return 1 + 3 * e1 / d + 3 * e2 / d**2 + e3 / d**3


def cubic_mmd2_gaussians(mu_a, cov_a, mu_b, cov_b):
    """Population MMD^2 of N(mu_a, cov_a) and N(mu_b, cov_b) under the cubic kernel (closed form)."""
    return (poly3_cross(mu_a, cov_a, mu_a, cov_a) + poly3_cross(mu_b, cov_b, mu_b, cov_b)
            - 2 * poly3_cross(mu_a, cov_a, mu_b, cov_b))


def counting_denoiser(calls: dict, name: str, denoise):
    """``denoise`` that adds 1 to ``calls[name]`` each time it is *executed* (also under ``jit``, through
    ``jax.debug.callback``): the ground truth a sampler's NFE count is checked against."""
    import jax

    def counted(z, logsnr):
        jax.debug.callback(lambda: calls.__setitem__(name, calls.get(name, 0) + 1))
        return denoise(z, logsnr)

    return counted


def write_cifar_batch(path, img, labels):
    """One batch file of the "CIFAR-10 python version": ``img`` (n, 32, 32, 3) uint8 stored as
    channel-major rows of 3072 bytes, as in the archive."""
    rows = img.transpose(0, 3, 1, 2).reshape(len(img), 3072)
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"labels": list(labels), b"data": rows}, f)
