"""Data without the internet: 2-D toy distributions generated in code, scikit-learn's
bundled 8x8 digits, and a loader for CIFAR-10 that the user places on disk.

* :func:`toy2d` -- ``(n, 2)`` samples, a pure function of a key. Every toy distribution
  is scaled so that each coordinate has mean 0 and variance 1 (exactly, in law).
* :func:`load_digits_split` -- the 1797 digits as ``(N, 8, 8, 1)`` float32 in
  ``[-1, 1]`` on the 17 levels ``v/8 - 1`` (``v = 0..16``), with a fixed stratified split.
* :func:`load_cifar10` -- the "CIFAR-10 python version" archive as NHWC float32 in ``[-1, 1]``.
* :func:`sample_batch`, :func:`batches` -- minibatches, keys as arguments.
* :func:`get_dataset` -- one name resolved once into one of the above.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import pathlib
import pickle
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite.validate import check_choice, check_K

# --------------------------------------------------------------------------- 2-D toys

SQRT3 = math.sqrt(3.0)
EIGHT_GAUSSIANS_RATIO = 1 / 8  # component std / ring radius, as in FFJORD (0.5 / 4)
EIGHT_GAUSSIANS_RADIUS = math.sqrt(1.0 / (0.5 + EIGHT_GAUSSIANS_RATIO**2))  # ~1.393
EIGHT_GAUSSIANS_STD = EIGHT_GAUSSIANS_RATIO * EIGHT_GAUSSIANS_RADIUS  # ~0.174
SWISS_ROLL_T = (1.5 * math.pi, 4.5 * math.pi)  # angle range, as sklearn.datasets.make_swiss_roll
SWISS_ROLL_NOISE = 0.5  # isotropic noise std in raw (unscaled) units
TWO_MOONS_NOISE = 0.1  # isotropic noise std in raw (unscaled) units


def eight_gaussians_centres() -> jnp.ndarray:
    """``(8, 2)`` mode centres ``R (cos 2 pi k/8, sin 2 pi k/8)``, ``R = EIGHT_GAUSSIANS_RADIUS``."""
    angle = 2 * jnp.pi * jnp.arange(8) / 8
    return EIGHT_GAUSSIANS_RADIUS * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)


def _checkerboard(key, n):
    """4x4 board on ``[-sqrt3, sqrt3]^2`` (cell width ``sqrt3/2``); cell ``(i, j)`` (column,
    row, counted from the lower left) is filled iff ``i + j`` is even. Both marginals are
    uniform on ``[-sqrt3, sqrt3]``: mean 0, variance 1."""
    k_col, k_row, k_u = jax.random.split(key, 3)
    i = jax.random.randint(k_col, (n,), 0, 4)
    j = 2 * jax.random.randint(k_row, (n,), 0, 2) + i % 2
    u = jax.random.uniform(k_u, (n, 2))
    cell = jnp.stack([i, j], axis=-1).astype(jnp.float32)
    return (cell + u) * (SQRT3 / 2) - SQRT3


def _eight_gaussians(key, n):
    """Equal mixture of ``N(c_k, s^2 I)`` on the 8 centres; per coordinate
    ``var = R^2/2 + s^2 = 1`` with ``s = R/8``."""
    k_mode, k_eps = jax.random.split(key)
    mode = jax.random.randint(k_mode, (n,), 0, 8)
    eps = jax.random.normal(k_eps, (n, 2))
    return eight_gaussians_centres()[mode] + EIGHT_GAUSSIANS_STD * eps


def _swiss_roll_moments():
    """Exact mean and variance of ``(t cos t, t sin t) + N(0, noise^2 I)``, ``t ~ U[a, b]``."""
    a, b = SWISS_ROLL_T

    def mean(F):  # E f(t) = (F(b) - F(a)) / (b - a) with F' = f
        return (F(b) - F(a)) / (b - a)

    c2 = lambda t: (t * t * math.sin(2 * t) / 2 + t * math.cos(2 * t) / 2 - math.sin(2 * t) / 4) / 2
    m = (mean(lambda t: t * math.sin(t) + math.cos(t)),  # t cos t
         mean(lambda t: -t * math.cos(t) + math.sin(t)))  # t sin t
    sq = (mean(lambda t: t**3 / 6 + c2(t)),  # t^2 cos^2 t
          mean(lambda t: t**3 / 6 - c2(t)))  # t^2 sin^2 t
    var = tuple(s - mu**2 + SWISS_ROLL_NOISE**2 for s, mu in zip(sq, m))
    return m, var


def _swiss_roll(key, n):
    """``(t cos t, t sin t) + noise``, ``t ~ U[1.5 pi, 4.5 pi]`` (sklearn's roll seen from
    its axis), standardised per coordinate with the exact moments."""
    k_t, k_eps = jax.random.split(key)
    t = jax.random.uniform(k_t, (n,), minval=SWISS_ROLL_T[0], maxval=SWISS_ROLL_T[1])
    raw = t[:, None] * jnp.stack([jnp.cos(t), jnp.sin(t)], -1)
    raw = raw + SWISS_ROLL_NOISE * jax.random.normal(k_eps, (n, 2))
    m, var = _swiss_roll_moments()
    return (raw - jnp.asarray(m)) / jnp.sqrt(jnp.asarray(var))


def _two_moons_moments():
    """Exact moments of sklearn's moons (upper ``(cos th, sin th)``, lower
    ``(1 - cos th, 1/2 - sin th)``, ``th ~ U[0, pi]``, each w.p. 1/2) plus noise."""
    e_sin = 2 / math.pi  # E sin th; E cos th = 0, E cos^2 = E sin^2 = 1/2
    m = (0.5, 0.25)  # midpoints of (0, 1) and (2/pi, 1/2 - 2/pi)
    var_x = 0.5 + 0.25  # within-moon 1/2, between-moon (1/2)^2
    var_y = (0.5 - e_sin**2) + (e_sin - 0.25) ** 2
    return m, (var_x + TWO_MOONS_NOISE**2, var_y + TWO_MOONS_NOISE**2)


def _two_moons(key, n):
    """sklearn's two interleaved half circles plus noise, standardised per coordinate."""
    k_moon, k_th, k_eps = jax.random.split(key, 3)
    lower = jax.random.bernoulli(k_moon, 0.5, (n,))[:, None]
    th = jax.random.uniform(k_th, (n,), maxval=jnp.pi)
    upper_pt = jnp.stack([jnp.cos(th), jnp.sin(th)], -1)
    raw = jnp.where(lower, jnp.array([1.0, 0.5]) - upper_pt, upper_pt)
    raw = raw + TWO_MOONS_NOISE * jax.random.normal(k_eps, (n, 2))
    m, var = _two_moons_moments()
    return (raw - jnp.asarray(m)) / jnp.sqrt(jnp.asarray(var))


_TOY2D: dict[str, Callable] = {
    "checkerboard": _checkerboard,
    "eight_gaussians": _eight_gaussians,
    "swiss_roll": _swiss_roll,
    "two_moons": _two_moons,
}
TOY2D_NAMES = tuple(_TOY2D)


def toy2d(name: str, key, n: int) -> jnp.ndarray:
    """``n`` i.i.d. samples ``(n, 2)`` float32 of the 2-D toy distribution ``name``
    (one of :data:`TOY2D_NAMES`); each coordinate has mean 0 and variance 1.
    Jit with ``name`` and ``n`` static."""
    check_choice(name, _TOY2D, name="toy dataset name")
    n = check_K(n, name="n")
    return _TOY2D[name](key, n).astype(jnp.float32)


# --------------------------------------------------------------------------- image splits


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """A fixed train/test split of labelled images: ``x_*`` NHWC float32 in ``[-1, 1]``,
    ``y_*`` int32 class labels. Arrays are read-only."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _read_only(*arrays):
    for a in arrays:
        a.flags.writeable = False
    return arrays


# --------------------------------------------------------------------------- digits

DIGITS_LEVELS = 17  # pixel values v = 0..16
DIGITS_SHAPE = (8, 8, 1)


def from_levels(v):
    """Digit pixel levels ``v in {0..16}`` to ``x = v/8 - 1 in [-1, 1]`` (float32, exact)."""
    return jnp.asarray(v, jnp.float32) / 8 - 1


def to_levels(x):
    """Inverse of :func:`from_levels`: ``v = round(8 (x + 1))`` clipped to ``0..16`` (int32);
    quantises samples onto the data's grid."""
    v = jnp.round(8 * (jnp.asarray(x, jnp.float32) + 1))
    return jnp.clip(v, 0, DIGITS_LEVELS - 1).astype(jnp.int32)


def flatten(x):
    """``(N, *shape)`` to ``(N, prod(shape))``."""
    return x.reshape(x.shape[0], -1)


def unflatten(x, shape=DIGITS_SHAPE):
    """``(N, prod(shape))`` to ``(N, *shape)``."""
    return x.reshape(x.shape[0], *shape)


def stratified_split_indices(y, *, seed: int = 0, test_fraction: float = 0.2):
    """``(idx_train, idx_test)``, sorted, disjoint, covering ``range(len(y))``: from each
    class ``c`` (of size ``n_c``) a ``numpy.random.default_rng(seed)`` permutation puts
    ``round(test_fraction n_c)`` indices in the test set."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    seed = check_K(seed, name="seed", low=0)
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_test = int(round(test_fraction * idx.size))
        if not 0 < n_test < idx.size:
            raise ValueError(f"test_fraction={test_fraction} leaves class {c} (size {idx.size}) "
                             f"with an empty train or test part")
        test.append(rng.permutation(idx)[:n_test])
    idx_test = np.sort(np.concatenate(test))
    idx_train = np.setdiff1d(np.arange(y.size), idx_test)
    return idx_train, idx_test


@functools.lru_cache(maxsize=8)
def load_digits_split(*, seed: int = 0, test_fraction: float = 0.2) -> Split:
    """scikit-learn's bundled 8x8 digits (1797 images, offline) as a :class:`Split` with
    ``x = v/8 - 1`` of shape ``(N, 8, 8, 1)``; the split is
    :func:`stratified_split_indices` (seed 0, 20 %: 1438 train, 359 test). Cached."""
    from sklearn.datasets import load_digits

    d = load_digits()
    v = d.images.astype(np.int64)
    if not (np.array_equal(v, d.images) and v.min() >= 0 and v.max() < DIGITS_LEVELS):
        raise ValueError("sklearn digits are not integers in 0..16; the level encoding would be wrong")
    x = np.asarray(from_levels(v[..., None]))
    y = d.target.astype(np.int32)
    idx_train, idx_test = stratified_split_indices(y, seed=seed, test_fraction=test_fraction)
    return Split(*_read_only(x[idx_train], y[idx_train], x[idx_test], y[idx_test]))


# --------------------------------------------------------------------------- CIFAR-10

CIFAR10_ENV = "DDSS_CIFAR10_DIR"
CIFAR10_SUBDIR = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_SHAPE = (32, 32, 3)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")


class DatasetNotFoundError(FileNotFoundError):
    """A data set that the book cannot download is not on disk."""


def _cifar10_missing(where: str) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"CIFAR-10 not found: {where}. The book cannot download data. Get the "
        f"'CIFAR-10 python version' (cifar-10-python.tar.gz, "
        f"https://www.cs.toronto.edu/~kriz/cifar.html), extract it so that "
        f"<dir>/{CIFAR10_SUBDIR}/data_batch_1 exists, and pass root=<dir> "
        f"or set the environment variable {CIFAR10_ENV}=<dir>.")


def cifar10_dir(root=None) -> pathlib.Path:
    """The ``cifar-10-batches-py`` directory: ``root`` (or, when ``None``, the environment
    variable ``DDSS_CIFAR10_DIR``) names it or its parent. Raises
    :class:`DatasetNotFoundError` saying where it looked."""
    if root is None:
        root = os.environ.get(CIFAR10_ENV)
        if not root:
            raise _cifar10_missing(f"no root was given and {CIFAR10_ENV} is not set")
    root = pathlib.Path(root).expanduser()
    tried = [root] if root.name == CIFAR10_SUBDIR else [root / CIFAR10_SUBDIR, root]
    for d in tried:
        if all((d / f).is_file() for f in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)):
            return d
    missing = [str(tried[0] / f) for f in (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
               if not (tried[0] / f).is_file()]
    raise _cifar10_missing(f"looked in {' and '.join(str(d) for d in tried)}; "
                           f"missing {', '.join(missing)}")


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles a CIFAR batch (a dict of bytes, lists and numpy arrays) and nothing else."""
    _ALLOWED = {("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # bytes in protocol-2 pickles written by Python 3

    def find_class(self, module, name):
        short = "multiarray" if module in ("numpy.core.multiarray", "numpy._core.multiarray") else module
        if (short, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}; refusing to load it")
        if short == "multiarray":  # numpy 2 renamed numpy.core to numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        return super().find_class(module, name)


def _read_cifar_batch(path: pathlib.Path):
    """One pickled batch -> ``(x (N, 32, 32, 3) float32 in [-1, 1], y (N,) int32)``.
    Rows of ``b"data"`` are 3072 bytes: the R, G, B planes, each 32x32 row-major (CHW)."""
    with open(path, "rb") as f:
        batch = _BatchUnpickler(f, encoding="bytes").load()  # the data set's official format
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: expected a dict with keys b'data' and b'labels'")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    n_bytes = int(np.prod(CIFAR10_SHAPE))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != n_bytes:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (N, {n_bytes}), "
                         f"got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu" \
            or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(CIFAR10_CLASSES):
        raise ValueError(f"{path}: b'labels' must be {data.shape[0]} integers in 0..9, "
                         f"got {labels.dtype} {labels.shape}")
    h, w, c = CIFAR10_SHAPE
    x = data.reshape(-1, c, h, w).transpose(0, 2, 3, 1)
    return x.astype(np.float32) / 127.5 - 1, labels.astype(np.int32)


def load_cifar10(root=None) -> Split:
    """CIFAR-10 from the "python version" on disk (see :func:`cifar10_dir`): train =
    ``data_batch_1..5``, test = ``test_batch``, as NHWC float32 ``x = u/127.5 - 1``
    (``u`` the uint8 value) with int32 labels. Never downloads."""
    d = cifar10_dir(root)
    train = [_read_cifar_batch(d / f) for f in CIFAR10_TRAIN_FILES]
    x_test, y_test = _read_cifar_batch(d / CIFAR10_TEST_FILE)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return Split(*_read_only(x_train, y_train, x_test, y_test))


# --------------------------------------------------------------------------- minibatches


def _leading_dim(data) -> int:
    sizes = {np.shape(a)[0] for a in jax.tree_util.tree_leaves(data)}
    if len(sizes) != 1:
        raise ValueError(f"all arrays must share their leading dimension, got sizes {sorted(sizes)}")
    return sizes.pop()


def sample_batch(data, key, batch_size: int):
    """``batch_size`` rows drawn uniformly WITH replacement from ``data`` (an array or a
    pytree of arrays sharing the leading dimension, e.g. ``(x, y)``). Jittable."""
    batch_size = check_K(batch_size, name="batch_size")
    idx = jax.random.randint(key, (batch_size,), 0, _leading_dim(data))
    return jax.tree_util.tree_map(lambda a: jnp.asarray(a)[idx], data)


def batches(data, key, batch_size: int) -> Iterator:
    """Endless minibatches of ``data`` (array or pytree, as :func:`sample_batch`) without
    replacement within an epoch: epoch ``e`` walks ``permutation(fold_in(key, e))`` in
    slices of ``batch_size`` and drops the remainder."""
    batch_size = check_K(batch_size, name="batch_size")
    n = _leading_dim(data)
    if batch_size > n:
        raise ValueError(f"batch_size must be <= the number of rows ({n}), got {batch_size}")
    leaves = jax.tree_util.tree_map(jnp.asarray, data)

    def gen():
        epoch = 0
        while True:
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
            for start in range(0, n - batch_size + 1, batch_size):
                idx = perm[start:start + batch_size]
                yield jax.tree_util.tree_map(lambda a: a[idx], leaves)
            epoch += 1

    return gen()


# --------------------------------------------------------------------------- dispatch

DATASET_NAMES = (*TOY2D_NAMES, "digits", "cifar10")


def get_dataset(name: str, **kwargs):
    """Resolve ``name`` (one of :data:`DATASET_NAMES`) once:
    a toy name -> ``toy2d(name, key, n)`` (pass ``key=``, ``n=``), an ``(n, 2)`` array;
    ``"digits"`` -> ``load_digits_split(**kwargs)``; ``"cifar10"`` -> ``load_cifar10(**kwargs)``;
    both a :class:`Split`."""
    check_choice(name, DATASET_NAMES, name="dataset name")
    if name in _TOY2D:
        if set(kwargs) != {"key", "n"}:
            raise ValueError(f"toy dataset {name!r} takes exactly key= and n=, got {sorted(kwargs)}")
        return toy2d(name, kwargs["key"], kwargs["n"])
    if name == "digits":
        return load_digits_split(**kwargs)
    return load_cifar10(**kwargs)
