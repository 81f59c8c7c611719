"""Data without the internet: 2-D toy distributions generated in code, scikit-learn's
bundled 8x8 digits, and a loader for CIFAR-10 that reads it from disk (and downloads it
only when asked: ``download=True``).

* :func:`toy2d` -- ``(n, 2)`` samples, a pure function of a key. Every toy distribution
  is scaled so that each coordinate has mean 0 and variance 1 (exactly, in law).
* :func:`load_digits_split` -- the 1797 digits as ``(N, 8, 8, 1)`` float32 in
  ``[-1, 1]`` on the 17 levels ``v/8 - 1`` (``v = 0..16``), with a fixed stratified split.
* :func:`load_cifar10` -- the "CIFAR-10 python version" archive as NHWC float32 in ``[-1, 1]``;
  :func:`download_cifar10` fetches it (MD5-checked, extracted atomically) into the cache.
* :func:`sample_batch`, :func:`batches` -- minibatches, keys as arguments.
* :func:`get_dataset` -- one name resolved once into one of the above.
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.client
import math
import os
import pathlib
import pickle
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import __version__, paths, progress
from ddss_lite.validate import check_choice, check_K, check_key

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
    check_key(key)
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
CIFAR10_FILES = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
CIFAR10_SHAPE = (32, 32, 3)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
# The "CIFAR-10 python version" and its MD5 as published on https://www.cs.toronto.edu/~kriz/cifar.html
CIFAR10_PAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_CACHE_SUBDIR = "cifar10"  # download=True without a root: paths.cache_dir() / "cifar10"
DOWNLOAD_TIMEOUT_S = 60.0  # bounds each blocking network operation (connect, one read), not the whole transfer
_DOWNLOAD_CHUNK = 1 << 20


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not on disk (and no download was asked for)."""


class DownloadError(OSError):
    """A download failed, came back truncated, did not match its published MD5, or was not the
    expected archive. Nothing of it is left on disk."""


class CIFAR10BatchError(ValueError, pickle.UnpicklingError):
    """A CIFAR-10 batch file could not be unpickled: truncated, garbage, or referring to code
    that the loader refuses to run. The message names the file."""


def _cifar10_root(root) -> tuple[pathlib.Path, str]:
    """The directory to look in and how it was chosen: ``root``, else ``$DDSS_CIFAR10_DIR``,
    else the download cache ``paths.cache_dir() / "cifar10"``."""
    if root is not None:
        return pathlib.Path(root).expanduser(), "root"
    env = os.environ.get(CIFAR10_ENV)
    if env:
        return pathlib.Path(env).expanduser(), CIFAR10_ENV
    return paths.cache_dir() / CIFAR10_CACHE_SUBDIR, "cache"


def _cifar10_candidates(root: pathlib.Path) -> list[pathlib.Path]:
    return [root] if root.name == CIFAR10_SUBDIR else [root / CIFAR10_SUBDIR, root]


def _cifar10_destination(root: pathlib.Path) -> pathlib.Path:
    """Where a download of ``root`` (the directory or its parent) puts ``cifar-10-batches-py``."""
    return root if root.name == CIFAR10_SUBDIR else root / CIFAR10_SUBDIR


def _cifar10_complete(d: pathlib.Path) -> bool:
    return all((d / f).is_file() for f in CIFAR10_FILES)


def _cifar10_missing(where: str, dest: pathlib.Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"CIFAR-10 not found: {where}. Pass download=True to fetch the 'CIFAR-10 python version' "
        f"(cifar-10-python.tar.gz, 163 MB, {CIFAR10_URL}, MD5-checked) into {dest}. Or get it "
        f"yourself from {CIFAR10_PAGE}, extract it so that <dir>/{CIFAR10_SUBDIR}/data_batch_1 "
        f"exists, and pass root=<dir> or set the environment variable {CIFAR10_ENV}=<dir>.")


def cifar10_dir(root=None) -> pathlib.Path:
    """The ``cifar-10-batches-py`` directory: ``root`` names it or its parent; when ``None``,
    the environment variable ``DDSS_CIFAR10_DIR`` does, and when that is unset too, the
    download cache ``paths.cache_dir() / "cifar10"`` (where ``load_cifar10(download=True)``
    puts it). Never downloads; raises :class:`DatasetNotFoundError` saying where it looked."""
    base, how = _cifar10_root(root)
    tried = _cifar10_candidates(base)
    for d in tried:
        if _cifar10_complete(d):
            return d
    missing = [str(tried[0] / f) for f in CIFAR10_FILES if not (tried[0] / f).is_file()]
    why = (f"no root was given and {CIFAR10_ENV} is not set, so it used the download cache; "
           if how == "cache" else "")
    raise _cifar10_missing(f"{why}looked in {' and '.join(str(d) for d in tried)}; "
                           f"missing {', '.join(missing)}", _cifar10_destination(base))


def _fetch(url: str, path: pathlib.Path, *, md5: str, timeout: float) -> None:
    """Stream ``url`` into ``path``, checking the length against ``Content-Length`` and the
    bytes against ``md5``; raises :class:`DownloadError` (the caller deletes ``path``)."""
    name = url.rsplit("/", 1)[-1] or url
    request = urllib.request.Request(url, headers={"User-Agent": f"ddss_lite/{__version__} (urllib)"})
    digest = hashlib.md5(usedforsecurity=False)
    n, total = 0, None
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(path, "wb") as f:
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.strip().isdigit() else None
            with progress.bar(total=total, desc=f"download {name} (bytes)") as b:
                while chunk := response.read(_DOWNLOAD_CHUNK):
                    f.write(chunk)
                    digest.update(chunk)
                    n += len(chunk)
                    b.update(len(chunk))
    except http.client.IncompleteRead as e:
        raise DownloadError(f"download of {name} from {url} truncated: received "
                            f"{n + len(e.partial)} bytes, expected {total}; nothing was kept") from e
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, SSL, disk
        raise DownloadError(f"download of {name} from {url} failed after {n} bytes: {e}; "
                            f"nothing was kept") from e
    if total is not None and n != total:
        raise DownloadError(f"download of {name} from {url} truncated: received {n} bytes, "
                            f"expected {total} (Content-Length); nothing was kept")
    actual = digest.hexdigest()
    if actual != md5.lower():
        raise DownloadError(f"{name} from {url} ({n} bytes) has MD5 {actual}, expected {md5}: "
                            f"the download is corrupt or not the published archive; nothing was kept")


def _extract_cifar10(archive: pathlib.Path, into: pathlib.Path, *, url: str) -> pathlib.Path:
    """Copy the regular files directly under ``cifar-10-batches-py/`` in the tar.gz ``archive``
    to ``into/cifar-10-batches-py`` (no links, no other paths: nothing lands outside ``into``)
    and check that the six batch files are there. Returns that directory."""
    out = into / CIFAR10_SUBDIR
    out.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                parts = pathlib.PurePosixPath(m.name).parts
                if not (m.isfile() and len(parts) == 2 and parts[0] == CIFAR10_SUBDIR
                        and parts[1] not in ("", ".", "..")):
                    continue
                with tar.extractfile(m) as src, open(out / parts[1], "wb") as dst:
                    shutil.copyfileobj(src, dst, _DOWNLOAD_CHUNK)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise DownloadError(f"{url}: the archive is not a complete tar.gz ({type(e).__name__}: {e}); "
                            f"nothing was kept") from e
    missing = [f for f in CIFAR10_FILES if not (out / f).is_file()]
    if missing:
        raise DownloadError(f"{url}: the archive has no {', '.join(f'{CIFAR10_SUBDIR}/{f}' for f in missing)}; "
                            f"nothing was kept")
    return out


def download_cifar10(root=None, *, url: str = CIFAR10_URL, md5: str = CIFAR10_MD5,
                     timeout: float = DOWNLOAD_TIMEOUT_S) -> pathlib.Path:
    """Make sure the ``cifar-10-batches-py`` directory exists under ``root`` (resolved as in
    :func:`cifar10_dir`; by default the download cache) and return it. When it is absent,
    fetch ``url`` (the official archive) over HTTP(S) with urllib, check its ``md5``, and
    extract it atomically: everything is written into a hidden temporary directory beside
    the destination, the six batch files are checked, and one rename puts the directory in
    place, so a failed or killed run never leaves a half-written data set (a killed one may
    leave that hidden ``.cifar-10-batches-py.*.tmp`` directory). A failure raises
    :class:`DownloadError` and removes the partial download. ``timeout`` bounds each network
    operation, in seconds."""
    base, _ = _cifar10_root(root)
    for d in _cifar10_candidates(base):
        if _cifar10_complete(d):
            return d
    dest = _cifar10_destination(base)
    parent = dest.parent
    if dest.exists():
        missing = [f for f in CIFAR10_FILES if not (dest / f).is_file()]
        raise FileExistsError(f"{dest} exists but is incomplete (missing {', '.join(missing)}); "
                              f"move it away or delete it, then download again")
    parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent, prefix=f".{CIFAR10_SUBDIR}.", suffix=".tmp") as tmp:
        tmp = pathlib.Path(tmp)
        archive = tmp / (url.rsplit("/", 1)[-1] + ".part")
        _fetch(url, archive, md5=md5, timeout=timeout)
        extracted = _extract_cifar10(archive, tmp / "extract", url=url)
        archive.unlink()
        try:
            os.rename(extracted, dest)
        except OSError:
            if not _cifar10_complete(dest):  # not a concurrent run that finished first
                raise
    return dest


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
    Rows of ``b"data"`` are 3072 bytes: the R, G, B planes, each 32x32 row-major (CHW).
    A file that is not such a batch raises ``ValueError`` naming it (:class:`CIFAR10BatchError`,
    also a ``pickle.UnpicklingError``, when it cannot be unpickled at all)."""
    with open(path, "rb") as f:
        try:
            batch = _BatchUnpickler(f, encoding="bytes").load()  # the data set's official format
        except Exception as e:  # truncated or garbage bytes raise any of a dozen types
            raise CIFAR10BatchError(
                f"{path}: not a readable CIFAR-10 batch ({type(e).__name__}: {e}); the file is "
                f"truncated or corrupt: delete the {CIFAR10_SUBDIR} directory and extract or "
                f"download it again") from e
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise ValueError(f"{path}: expected a dict with keys b'data' and b'labels', "
                         f"got {type(batch).__name__}")
    try:
        data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: b'data' and b'labels' must be arrays ({e})") from e
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


def load_cifar10(root=None, *, download: bool = False, url: str = CIFAR10_URL,
                 md5: str = CIFAR10_MD5) -> Split:
    """CIFAR-10 from the "python version" (see :func:`cifar10_dir` for where it looks): train =
    ``data_batch_1..5``, test = ``test_batch``, as NHWC float32 ``x = u/127.5 - 1`` (``u`` the
    uint8 value) with int32 labels. Downloads only with ``download=True`` (see
    :func:`download_cifar10`; ``url`` and ``md5`` override the official archive's)."""
    d = download_cifar10(root, url=url, md5=md5) if download else cifar10_dir(root)
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

IMAGE_DATASETS = ("digits", "cifar10")
DATASET_NAMES = (*TOY2D_NAMES, *IMAGE_DATASETS)


def image_split(name: str) -> Split:
    """The image data set ``name`` (one of :data:`IMAGE_DATASETS`) as a :class:`Split`: the digits
    (offline, bundled), or CIFAR-10 (:func:`load_cifar10` with ``download=True``: fetched once into
    the cache when it is not on disk)."""
    check_choice(name, IMAGE_DATASETS, name="dataset")
    return load_digits_split() if name == "digits" else load_cifar10(download=True)


def image_shape(name: str) -> tuple[int, int, int]:
    """The ``(height, width, channels)`` of one image of the data set ``name`` (one of
    :data:`IMAGE_DATASETS`), known without loading it: ``(8, 8, 1)`` or ``(32, 32, 3)``."""
    check_choice(name, IMAGE_DATASETS, name="dataset")
    return DIGITS_SHAPE if name == "digits" else CIFAR10_SHAPE


def levels(name: str) -> np.ndarray:
    """The pixel values an image data set takes, ascending (for the discretised decoder of
    :mod:`ddss_lite.elbo`): the digits' 17 levels ``v/8 - 1``, CIFAR-10's 256 levels ``u/127.5 - 1``."""
    check_choice(name, IMAGE_DATASETS, name="dataset")
    if name == "digits":
        return np.asarray(from_levels(np.arange(DIGITS_LEVELS)), np.float64)
    return np.arange(256, dtype=np.float64) / 127.5 - 1.0


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
