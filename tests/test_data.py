"""ddss_lite.data: toy generators, the digits split, the CIFAR-10 loader (on tiny fake files
written here in the official on-disk format), minibatching and dispatch."""
import hashlib
import http.server
import io
import os
import pickle
import shutil
import socket
import tarfile
import threading
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import write_cifar_batch
from ddss_lite import data

KEY = jax.random.PRNGKey(0)


# --------------------------------------------------------------------------- toys

@pytest.mark.parametrize("name", data.TOY2D_NAMES)
def test_toy_shape_dtype_determinism(name):
    x = data.toy2d(name, KEY, 7)
    assert x.shape == (7, 2) and x.dtype == jnp.float32
    np.testing.assert_array_equal(x, data.toy2d(name, KEY, 7))
    assert not np.allclose(x, data.toy2d(name, jax.random.PRNGKey(1), 7))
    jitted = jax.jit(data.toy2d, static_argnums=(0, 2))
    np.testing.assert_allclose(jitted(name, KEY, 7), x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", data.TOY2D_NAMES)
def test_toy_unit_moments(name):
    # Each generator is standardised with exact moments: mean 0, variance 1 per coordinate.
    # n = 40000: standard errors ~0.005 (mean) and ~0.01 (variance); tolerances are > 5 sigma.
    x = np.asarray(data.toy2d(name, KEY, 40_000), np.float64)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=0.03)
    np.testing.assert_allclose(x.var(0), 1.0, atol=0.06)


def test_checkerboard_support():
    x = np.asarray(data.toy2d("checkerboard", KEY, 8000))
    w = np.sqrt(3) / 2
    assert np.all(np.abs(x) <= np.sqrt(3) + 1e-6)
    cell = np.floor((x + np.sqrt(3)) / w).astype(int).clip(0, 3)
    assert np.all((cell[:, 0] + cell[:, 1]) % 2 == 0)  # only the filled cells
    counts = np.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)
    filled = counts[[i * 4 + j for i in range(4) for j in range(4) if (i + j) % 2 == 0]]
    assert filled.size == 8 and np.all(np.abs(filled - 1000) < 150)  # 1000 +- 4.5 sigma


def test_eight_gaussians_modes():
    c = np.asarray(data.eight_gaussians_centres())
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), data.EIGHT_GAUSSIANS_RADIUS, rtol=1e-6)
    s, r = data.EIGHT_GAUSSIANS_STD, data.EIGHT_GAUSSIANS_RADIUS
    np.testing.assert_allclose(r**2 / 2 + s**2, 1.0)  # unit variance per coordinate
    x = np.asarray(data.toy2d("eight_gaussians", KEY, 8000))
    d = np.linalg.norm(x[:, None] - c[None], axis=-1)
    nearest = d.argmin(1)
    assert np.all(np.abs(np.bincount(nearest, minlength=8) - 1000) < 150)
    # squared distance to the own centre / 2 estimates s^2 (modes are > 6 s apart)
    np.testing.assert_allclose(np.mean(d.min(1) ** 2) / 2, s**2, rtol=0.08)


def test_swiss_roll_and_moons_match_sklearn_geometry():
    # sklearn's own generators, standardised with our closed-form moments, are unit too.
    from sklearn.datasets import make_moons, make_swiss_roll

    roll, _ = make_swiss_roll(40_000, noise=data.SWISS_ROLL_NOISE, random_state=0)
    m, v = data._swiss_roll_moments()
    z = (roll[:, [0, 2]] - m) / np.sqrt(v)
    np.testing.assert_allclose(z.mean(0), 0, atol=0.03)
    np.testing.assert_allclose(z.var(0), 1, atol=0.06)
    moons, _ = make_moons(40_000, noise=data.TWO_MOONS_NOISE, random_state=0)
    m, v = data._two_moons_moments()
    z = (moons - m) / np.sqrt(v)
    np.testing.assert_allclose(z.mean(0), 0, atol=0.03)
    np.testing.assert_allclose(z.var(0), 1, atol=0.06)


def test_toy_bad_arguments():
    with pytest.raises(ValueError, match="checkerboard"):
        data.toy2d("moons", KEY, 5)
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be"):
            data.toy2d("checkerboard", KEY, n)


# --------------------------------------------------------------------------- digits

def test_digits_split_sizes_and_values():
    s = data.load_digits_split()
    assert s.x_train.shape == (1438, 8, 8, 1) and s.x_test.shape == (359, 8, 8, 1)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32
    assert s.y_train.shape == (1438,) and s.y_test.shape == (359,)
    assert s.image_shape == (8, 8, 1)
    for x in (s.x_train, s.x_test):
        v = 8 * (x.astype(np.float64) + 1)
        np.testing.assert_array_equal(v, np.round(v))  # exactly on the 17 levels
        assert v.min() == 0 and v.max() == 16
    assert not s.x_train.flags.writeable  # the cached split cannot be mutated


def test_digits_split_fixed_disjoint_stratified():
    from sklearn.datasets import load_digits

    d = load_digits()
    tr, te = data.stratified_split_indices(d.target, seed=0, test_fraction=0.2)
    assert np.intersect1d(tr, te).size == 0
    np.testing.assert_array_equal(np.union1d(tr, te), np.arange(1797))
    np.testing.assert_array_equal(np.bincount(d.target[te]), np.round(0.2 * np.bincount(d.target)))
    tr2, te2 = data.stratified_split_indices(d.target, seed=0, test_fraction=0.2)
    np.testing.assert_array_equal(te, te2)
    assert not np.array_equal(te, data.stratified_split_indices(d.target, seed=1)[1])
    # the loader returns exactly these images and labels
    s = data.load_digits_split()
    np.testing.assert_array_equal(s.x_test[..., 0], d.images[te] / 8 - 1)
    np.testing.assert_array_equal(s.y_test, d.target[te])
    np.testing.assert_array_equal(s.y_train, d.target[tr])
    data.load_digits_split.cache_clear()
    np.testing.assert_array_equal(data.load_digits_split().x_train, s.x_train)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 0.001])
def test_digits_bad_fraction(frac):
    with pytest.raises(ValueError, match="test_fraction"):
        data.stratified_split_indices(np.repeat(np.arange(3), 50), test_fraction=frac)


def test_levels_round_trip():
    v = jnp.arange(17)
    x = data.from_levels(v)
    np.testing.assert_array_equal(x, np.arange(17) / 8 - 1)
    assert x[0] == -1 and x[-1] == 1
    np.testing.assert_array_equal(data.to_levels(x), v)
    # quantisation: nearest level, clipped to 0..16
    noisy = x + 0.06 * jnp.sign(jnp.sin(jnp.arange(17.0) + 0.5))
    np.testing.assert_array_equal(data.to_levels(noisy), v)
    np.testing.assert_array_equal(data.to_levels(jnp.array([-3.0, 2.5])), [0, 16])
    assert data.to_levels(x).dtype == jnp.int32


def test_flatten_unflatten():
    x = data.load_digits_split().x_test
    f = data.flatten(x)
    assert f.shape == (359, 64)
    np.testing.assert_array_equal(f[3].reshape(8, 8), x[3, :, :, 0])  # row-major pixels
    np.testing.assert_array_equal(data.unflatten(f), x)


# --------------------------------------------------------------------------- CIFAR-10

def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def fake_cifar(tmp_path):
    """Tiny CIFAR-10 python version: 2 images in each of the 6 batch files."""
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    imgs = {}
    for i, name in enumerate((*data.CIFAR10_TRAIN_FILES, data.CIFAR10_TEST_FILE)):
        img = _images(2, i)
        if i == 0:  # one image with known pixels: R at (1, 2), G at (3, 4)
            img[0] = 0
            img[0, 1, 2, 0] = 255
            img[0, 3, 4, 1] = 255
        write_cifar_batch(d / name, img, [i % 10, (i + 1) % 10])
        imgs[name] = img
    return tmp_path, imgs


def test_cifar_layout_and_scaling(fake_cifar):
    root, imgs = fake_cifar
    s = data.load_cifar10(root)
    assert s.x_train.shape == (10, 32, 32, 3) and s.x_test.shape == (2, 32, 32, 3)
    assert s.x_train.dtype == np.float32 and s.y_train.dtype == np.int32
    # channel placement: byte c*1024 + h*32 + w of a row is pixel (h, w) of channel c
    with open(root / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][0]
    assert row[0 * 1024 + 1 * 32 + 2] == 255 and row[1 * 1024 + 3 * 32 + 4] == 255
    x0 = s.x_train[0]
    assert x0[1, 2, 0] == 1 and x0[1, 2, 1] == -1 and x0[1, 2, 2] == -1
    assert x0[3, 4, 1] == 1 and x0[3, 4, 0] == -1
    assert np.sum(x0 == 1) == 2 and np.sum(x0 == -1) == 32 * 32 * 3 - 2
    want = np.concatenate([imgs[f] for f in data.CIFAR10_TRAIN_FILES]) / 127.5 - 1
    np.testing.assert_allclose(s.x_train, want, atol=1e-6)
    np.testing.assert_allclose(s.x_test, imgs["test_batch"] / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(s.y_train, [0, 1, 1, 2, 2, 3, 3, 4, 4, 5])
    np.testing.assert_array_equal(s.y_test, [5, 6])
    assert s.x_train.min() >= -1 and s.x_train.max() <= 1
    assert s.image_shape == data.image_shape("cifar10")


def test_image_shape_known_without_loading():
    assert data.image_shape("digits") == data.load_digits_split().image_shape
    with pytest.raises(ValueError, match=r"dataset must be one of \[.cifar10., .digits.\], got .mnist."):
        data.image_shape("mnist")


def test_cifar_root_forms(fake_cifar, monkeypatch):
    root, _ = fake_cifar
    ref = data.load_cifar10(root).x_test
    np.testing.assert_array_equal(data.load_cifar10(root / "cifar-10-batches-py").x_test, ref)
    monkeypatch.setenv(data.CIFAR10_ENV, str(root))
    np.testing.assert_array_equal(data.load_cifar10().x_test, ref)


def test_cifar_missing(tmp_path, monkeypatch):
    where = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        data.load_cifar10(where)
    assert isinstance(e.value, data.DatasetNotFoundError)
    msg = str(e.value)
    assert str(where) in msg and "download=True" in msg and data.CIFAR10_ENV in msg
    assert data.CIFAR10_URL in msg
    monkeypatch.delenv(data.CIFAR10_ENV, raising=False)
    monkeypatch.setenv("DDSS_BUILD_DIR", str(tmp_path / "build"))
    with pytest.raises(data.DatasetNotFoundError, match=data.CIFAR10_ENV) as e:
        data.load_cifar10()  # no root, no variable: the download cache, which is empty
    assert str(tmp_path / "build" / "cache" / data.CIFAR10_CACHE_SUBDIR) in str(e.value)


def test_cifar_missing_one_file(fake_cifar):
    root, _ = fake_cifar
    (root / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(data.DatasetNotFoundError, match="data_batch_4"):
        data.load_cifar10(root)


@pytest.mark.parametrize("corrupt", ["short_rows", "dtype", "labels", "not_a_dict"])
def test_cifar_corrupt(fake_cifar, corrupt):
    root, _ = fake_cifar
    path = root / "cifar-10-batches-py" / "data_batch_2"
    rows = np.zeros((2, 3072), np.uint8)
    obj = {b"labels": [0, 1], b"data": rows}
    if corrupt == "short_rows":
        obj[b"data"] = rows[:, :3071]
    elif corrupt == "dtype":
        obj[b"data"] = rows.astype(np.float32)
    elif corrupt == "labels":
        obj[b"labels"] = [0, 1, 2]
    else:
        obj = [rows]
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    with pytest.raises(ValueError, match="data_batch_2"):
        data.load_cifar10(root)


def test_cifar_legacy_pickle(fake_cifar):
    # The archive was written by Python 2 with numpy.core (renamed numpy._core in numpy 2).
    root, _ = fake_cifar
    img = _images(1, 99)
    rows = img.transpose(0, 3, 1, 2).reshape(1, 3072)
    blob = pickle.dumps({b"labels": [7], b"data": rows}, protocol=2)
    blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    assert b"numpy.core.multiarray" in blob
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(blob)
    s = data.load_cifar10(root)
    np.testing.assert_allclose(s.x_test, img / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(s.y_test, [7])


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled arbitrary code",))


def test_cifar_refuses_arbitrary_pickles(fake_cifar):
    root, _ = fake_cifar
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"labels": [0], b"data": _Evil()}, f)
    with pytest.raises(pickle.UnpicklingError, match="refusing") as e:
        data.load_cifar10(root)
    assert isinstance(e.value, ValueError) and "test_batch" in str(e.value)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "trailing_half_array"])
def test_cifar_unreadable_batch_names_file(fake_cifar, damage):
    # Every way a batch file can fail to unpickle is a ValueError that names the file.
    root, _ = fake_cifar
    path = root / "cifar-10-batches-py" / "data_batch_3"
    blob = path.read_bytes()
    damaged = {"truncated": blob[: len(blob) // 2], "empty": b"",
               "garbage": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
               "trailing_half_array": blob[:-40]}[damage]
    path.write_bytes(damaged)
    with pytest.raises(ValueError, match="data_batch_3") as e:
        data.load_cifar10(root)
    assert isinstance(e.value, data.CIFAR10BatchError) and "corrupt" in str(e.value)


# --------------------------------------------------------------------------- CIFAR-10 download
# A tiny archive in the official layout, served over HTTP by a server on 127.0.0.1 only.

N_PER_BATCH = 3


def _archive(*, files=data.CIFAR10_FILES, extra=()):
    """``(tar.gz bytes, {file: (uint8 NHWC images, labels)})`` in the layout of
    cifar-10-python.tar.gz: cifar-10-batches-py/<file>, each a protocol-2 pickled dict."""
    buf, content = io.BytesIO(), {}
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        dir_info = tarfile.TarInfo(data.CIFAR10_SUBDIR)
        dir_info.type = tarfile.DIRTYPE
        tar.addfile(dir_info)

        def add(name, blob):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))

        for i, name in enumerate(files):
            img = _images(N_PER_BATCH, 100 + i)
            labels = [(i + j) % 10 for j in range(N_PER_BATCH)]
            rows = img.transpose(0, 3, 1, 2).reshape(N_PER_BATCH, 3072)
            add(f"{data.CIFAR10_SUBDIR}/{name}",
                pickle.dumps({b"batch_label": name.encode(), b"labels": labels, b"data": rows}, protocol=2))
            content[name] = (img, labels)
        add(f"{data.CIFAR10_SUBDIR}/readme.html", b"<html></html>")
        for member in extra:
            tar.addfile(member[0], io.BytesIO(member[1]) if member[1] is not None else None)
    return buf.getvalue(), content


def _md5(blob):
    return hashlib.md5(blob).hexdigest()


@pytest.fixture
def http_server(monkeypatch):
    """A server on 127.0.0.1 (free port) serving ``files[name] = (body, content_length)``
    (``content_length=None``: the body's length); ``requests`` lists the paths asked for.
    Proxies are bypassed, and a connection to any other address fails the test."""
    files, requests = {}, []

    class Handler(http.server.BaseHTTPRequestHandler):  # HTTP/1.0: one request per connection
        def do_GET(self):
            requests.append(self.path)
            name = self.path.lstrip("/")
            if name not in files:
                self.send_error(404)
                return
            body, length = files[name]
            self.send_response(200)
            self.send_header("Content-Type", "application/gzip")
            self.send_header("Content-Length", str(len(body) if length is None else length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    connect = socket.create_connection

    def local_only(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"test tried to reach {address}"
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", local_only)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield types.SimpleNamespace(files=files, requests=requests, url=lambda name: f"{base}/{name}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _serve(server, blob, *, name="cifar-10-python.tar.gz", length=None):
    server.files[name] = (blob, length)
    return server.url(name)


def _tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_cifar_download_round_trip(http_server, tmp_path, monkeypatch):
    blob, content = _archive()
    url = _serve(http_server, blob)
    monkeypatch.delenv(data.CIFAR10_ENV, raising=False)
    monkeypatch.setenv("DDSS_BUILD_DIR", str(tmp_path / "build"))
    s = data.load_cifar10(download=True, url=url, md5=_md5(blob))  # no root: the cache
    cache = tmp_path / "build" / "cache" / data.CIFAR10_CACHE_SUBDIR
    # only the extracted directory is left: no archive, no .part, no temporary directory
    assert _tree(cache) == sorted([data.CIFAR10_SUBDIR, *(f"{data.CIFAR10_SUBDIR}/{f}"
                                   for f in (*data.CIFAR10_FILES, "readme.html"))])
    assert s.x_train.shape == (5 * N_PER_BATCH, 32, 32, 3) and s.x_test.shape == (N_PER_BATCH, 32, 32, 3)
    want = np.concatenate([content[f][0] for f in data.CIFAR10_TRAIN_FILES])
    np.testing.assert_array_equal(s.x_train, want.astype(np.float32) / 127.5 - 1)  # NHWC, pixel for pixel
    np.testing.assert_array_equal(s.x_test, content["test_batch"][0].astype(np.float32) / 127.5 - 1)
    np.testing.assert_array_equal(s.y_train, np.concatenate([content[f][1] for f in data.CIFAR10_TRAIN_FILES]))
    np.testing.assert_array_equal(s.y_test, content["test_batch"][1])
    assert len(http_server.requests) == 1
    # present now: no second download, with or without download=True
    again = data.load_cifar10(download=True, url=url, md5=_md5(blob))
    np.testing.assert_array_equal(again.x_train, s.x_train)
    np.testing.assert_array_equal(data.load_cifar10().x_test, s.x_test)
    assert data.cifar10_dir() == cache / data.CIFAR10_SUBDIR
    assert len(http_server.requests) == 1


@pytest.mark.parametrize("form", ["parent", "subdir", "env"])
def test_cifar_download_into_root(http_server, tmp_path, monkeypatch, form):
    blob, content = _archive()
    url = _serve(http_server, blob)
    root = tmp_path / "new" / "data"  # created on demand
    if form == "env":
        monkeypatch.setenv(data.CIFAR10_ENV, str(root))
        d = data.download_cifar10(url=url, md5=_md5(blob), timeout=10)
    else:
        d = data.download_cifar10(root / data.CIFAR10_SUBDIR if form == "subdir" else root,
                                  url=url, md5=_md5(blob), timeout=10)
    assert d == root / data.CIFAR10_SUBDIR and os.listdir(root) == [data.CIFAR10_SUBDIR]
    np.testing.assert_array_equal(data.load_cifar10(root).y_test, content["test_batch"][1])
    assert len(http_server.requests) == 1


def _assert_failed_cleanly(root, server, n_requests=1):
    assert not root.exists() or _tree(root) == []  # no archive, no .part, no temporary directory
    assert len(server.requests) == n_requests
    with pytest.raises(data.DatasetNotFoundError):
        data.cifar10_dir(root)


def test_cifar_download_bad_md5(http_server, tmp_path):
    blob, _ = _archive()
    url = _serve(http_server, blob)
    root = tmp_path / "cifar"
    with pytest.raises(data.DownloadError) as e:
        data.download_cifar10(root, url=url, md5="0" * 32, timeout=10)
    msg = str(e.value)
    assert "cifar-10-python.tar.gz" in msg and "0" * 32 in msg and _md5(blob) in msg
    _assert_failed_cleanly(root, http_server)


def test_cifar_download_truncated_transfer(http_server, tmp_path):
    # The server promises the whole archive (Content-Length) and closes after half of it.
    blob, _ = _archive()
    url = _serve(http_server, blob[: len(blob) // 2], length=len(blob))
    root = tmp_path / "cifar"
    with pytest.raises(data.DownloadError, match="truncated") as e:
        data.download_cifar10(root, url=url, md5=_md5(blob), timeout=10)
    assert f"received {len(blob) // 2} bytes, expected {len(blob)}" in str(e.value)
    assert "cifar-10-python.tar.gz" in str(e.value)
    _assert_failed_cleanly(root, http_server)


def _truncated():
    # A complete transfer of a truncated archive whose MD5 matches (a wrong md5= override):
    # extraction fails, and nothing is left.
    blob, _ = _archive()
    return blob[: len(blob) * 2 // 3]


@pytest.mark.parametrize("make_blob, match", [
    (_truncated, "not a complete tar.gz"),
    (lambda: _archive(files=data.CIFAR10_TRAIN_FILES)[0], "test_batch"),   # an archive without a batch
], ids=["truncated archive", "archive without test_batch"])
def test_cifar_download_bad_archive_with_matching_md5(http_server, tmp_path, make_blob, match):
    blob = make_blob()
    url = _serve(http_server, blob)
    root = tmp_path / "cifar"
    with pytest.raises(data.DownloadError, match=match):
        data.download_cifar10(root, url=url, md5=_md5(blob), timeout=10)
    _assert_failed_cleanly(root, http_server)


def test_cifar_download_http_error(http_server, tmp_path):
    root = tmp_path / "cifar"
    with pytest.raises(data.DownloadError, match="404"):
        data.download_cifar10(root, url=http_server.url("missing.tar.gz"), md5="0" * 32, timeout=10)
    _assert_failed_cleanly(root, http_server)


def test_cifar_download_interrupted(http_server, tmp_path, monkeypatch):
    # Interrupted during extraction (Ctrl-C): the temporary directory goes, nothing half-written stays.
    blob, _ = _archive()
    url = _serve(http_server, blob)
    root = tmp_path / "cifar"
    copy = shutil.copyfileobj
    calls = []

    def copy_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return copy(*args, **kwargs)

    monkeypatch.setattr(shutil, "copyfileobj", copy_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        data.download_cifar10(root, url=url, md5=_md5(blob), timeout=10)
    _assert_failed_cleanly(root, http_server)


def test_cifar_download_extracts_only_the_batch_directory(http_server, tmp_path):
    # Members outside cifar-10-batches-py/, or not regular files, are never written.
    link = tarfile.TarInfo(f"{data.CIFAR10_SUBDIR}/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    escape = tarfile.TarInfo(f"{data.CIFAR10_SUBDIR}/../escape")
    escape.size = 4
    absolute = tarfile.TarInfo(str(tmp_path / "absolute"))
    absolute.size = 4
    blob, _ = _archive(extra=[(link, None), (escape, b"evil"), (absolute, b"evil")])
    url = _serve(http_server, blob)
    root = tmp_path / "cifar"
    d = data.download_cifar10(root, url=url, md5=_md5(blob), timeout=10)
    assert sorted(os.listdir(d)) == sorted([*data.CIFAR10_FILES, "readme.html"])
    assert os.listdir(root) == [data.CIFAR10_SUBDIR]
    assert not (tmp_path / "absolute").exists() and not (tmp_path / "escape").exists()


def test_cifar_download_refuses_incomplete_directory(http_server, tmp_path):
    blob, _ = _archive()
    url = _serve(http_server, blob)
    (tmp_path / data.CIFAR10_SUBDIR).mkdir()
    (tmp_path / data.CIFAR10_SUBDIR / "data_batch_1").write_bytes(b"mine")
    with pytest.raises(FileExistsError, match="incomplete"):
        data.download_cifar10(tmp_path, url=url, md5=_md5(blob), timeout=10)
    assert http_server.requests == []  # refused before downloading
    assert os.listdir(tmp_path / data.CIFAR10_SUBDIR) == ["data_batch_1"]  # the user's files untouched


def test_cifar_download_concurrent_run_finished_first(http_server, tmp_path, monkeypatch):
    # Another process completes the directory while this one extracts: the rename loses the
    # race, the complete directory stands, and this run's temporary files are removed.
    blob, _ = _archive()
    url = _serve(http_server, blob)
    root = tmp_path / "cifar"
    extract = data._extract_cifar10

    def extract_while_other_finishes(archive, into, **kwargs):
        out = extract(archive, into, **kwargs)
        shutil.copytree(out, root / data.CIFAR10_SUBDIR)
        (root / data.CIFAR10_SUBDIR / "winner").write_text("the other run")
        return out

    monkeypatch.setattr(data, "_extract_cifar10", extract_while_other_finishes)
    d = data.download_cifar10(root, url=url, md5=_md5(blob), timeout=10)
    assert (d / "winner").is_file() and os.listdir(root) == [data.CIFAR10_SUBDIR]


# --------------------------------------------------------------------------- minibatches

def test_sample_batch():
    x = jnp.arange(20.0).reshape(10, 2)
    y = jnp.arange(10)
    bx, by = data.sample_batch((x, y), KEY, 32)
    assert bx.shape == (32, 2) and by.shape == (32,)
    np.testing.assert_array_equal(bx[:, 0], 2 * by)  # rows stay paired
    np.testing.assert_array_equal(data.sample_batch(x, KEY, 32), bx)  # same key, same rows
    jitted = jax.jit(data.sample_batch, static_argnums=2)
    np.testing.assert_array_equal(jitted(x, KEY, 32), bx)
    with pytest.raises(ValueError, match="leading"):
        data.sample_batch((x, y[:5]), KEY, 2)
    with pytest.raises(ValueError, match="batch_size"):
        data.sample_batch(x, KEY, 0)


def test_batches_epochs():
    x = np.arange(10)
    y = -np.arange(10)
    it = data.batches((x, y), KEY, 3)
    epoch0 = [next(it) for _ in range(3)]
    epoch1 = [next(it) for _ in range(3)]
    for bx, by in epoch0 + epoch1:
        assert bx.shape == (3,)
        np.testing.assert_array_equal(by, -bx)
    seen0 = np.concatenate([b[0] for b in epoch0])
    assert np.unique(seen0).size == 9  # without replacement within an epoch, remainder dropped
    seen1 = np.concatenate([b[0] for b in epoch1])
    assert not np.array_equal(seen0, seen1)  # a fresh permutation per epoch
    again = data.batches((x, y), KEY, 3)
    np.testing.assert_array_equal(next(again)[0], epoch0[0][0])
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(x, KEY, 11)


# --------------------------------------------------------------------------- dispatch

def test_get_dataset(fake_cifar):
    np.testing.assert_array_equal(data.get_dataset("swiss_roll", key=KEY, n=5),
                                  data.toy2d("swiss_roll", KEY, 5))
    assert data.get_dataset("digits") is data.load_digits_split()
    root, _ = fake_cifar
    assert data.get_dataset("cifar10", root=root).x_test.shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="cifar10") as e:
        data.get_dataset("mnist")
    assert all(n in str(e.value) for n in data.DATASET_NAMES)
    with pytest.raises(ValueError, match="key= and n="):
        data.get_dataset("checkerboard", n=5)
