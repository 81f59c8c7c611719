"""ddss_lite.data: toy generators, the digits split, the CIFAR-10 loader (on tiny fake files
written here in the official on-disk format), minibatching and dispatch."""
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


def _write_batch(path, img, labels):
    rows = img.transpose(0, 3, 1, 2).reshape(len(img), 3072)  # CHW row-major, as the archive
    with open(path, "wb") as f:
        pickle.dump({b"batch_label": b"fake", b"labels": list(labels), b"data": rows}, f)


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
        _write_batch(d / name, img, [i % 10, (i + 1) % 10])
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
    assert str(where) in msg and "cannot download" in msg and data.CIFAR10_ENV in msg
    monkeypatch.delenv(data.CIFAR10_ENV, raising=False)
    with pytest.raises(data.DatasetNotFoundError, match=data.CIFAR10_ENV):
        data.load_cifar10()


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
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        data.load_cifar10(root)


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
