"""Training loop: resume after interruption, atomic checkpoints, the load-or-train cache."""
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddss_lite import nets, store, train


def _problem():
    module = nets.MLPDenoiser(hidden=16, depth=1)
    apply = nets.apply_fn(module)
    target = jnp.linspace(-1, 1, 8).reshape(4, 2)

    def loss_fn(p, k):
        z = jax.random.normal(k, target.shape)
        return jnp.mean((apply(p, z, jnp.zeros(4)) - target) ** 2)

    init = lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    return loss_fn, init


def _same(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    loss_fn, init = _problem()
    kw = dict(key=jax.random.PRNGKey(1), steps=60, optimizer=optax.adam(1e-2), ckpt_every=20, config={"c": 1})
    full = train.fit(loss_fn, init(), **kw)
    path = tmp_path / "run.ckpt"
    partial = train.fit(loss_fn, init(), ckpt_path=path, stop_after=33, **kw)   # "killed" after step 33
    assert int(partial.step) == 33
    full_cfg = train.run_config(loss_fn, init(), key=kw["key"], steps=60, optimizer=kw["optimizer"], ema_decay=0.999,
                                config={"c": 1})
    saved = store.load_state(path, train.init_state(init(), kw["optimizer"], 60), config=full_cfg)
    assert int(saved.step) == 33                                               # last write at the stop
    resumed = train.fit(loss_fn, init(), ckpt_path=path, **kw)
    assert int(resumed.step) == 60
    _same(resumed.params, full.params)
    _same(resumed.ema_params, full.ema_params)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    assert float(full.losses[-1]) < float(full.losses[0])


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "f.bin"
    store.atomic_write_bytes(path, b"old")

    with pytest.raises(TypeError):
        store.atomic_write_bytes(path, object())  # write() fails mid-way
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_cache_loads_complete_entry_without_training(tmp_path, monkeypatch):
    loss_fn, init = _problem()
    cfg = {"steps": 30, "name": "x"}
    kw = dict(cache_dir=tmp_path, optimizer=optax.adam(1e-2), key=jax.random.PRNGKey(2), ckpt_every=10)
    first = train.load_or_train("m", cfg, init, loss_fn, **kw)
    calls = []

    def counting_make_step(*a, **k):
        return lambda s, key: calls.append(1) or s

    monkeypatch.setattr(train, "make_step", counting_make_step)
    again = train.load_or_train("m", cfg, init, loss_fn, **kw)
    _same(again.params, first.params)
    assert calls == [], "a complete cache entry must not run a single optimisation step"
    assert int(again.step) == 30
    # another key is another result: it must not reuse the entry (it trains, here with the fake step)
    train.load_or_train("m", cfg, init, loss_fn, **dict(kw, key=jax.random.PRNGKey(3)))
    assert len(calls) == 30


def test_corrupt_or_stale_cache_entry_is_retrained_not_loaded(tmp_path, caplog):
    loss_fn, init = _problem()
    cfg = {"steps": 20}
    kw = dict(cache_dir=tmp_path, optimizer=optax.adam(1e-2), key=jax.random.PRNGKey(3), ckpt_every=10)
    good = train.load_or_train("m", cfg, init, loss_fn, **kw)
    (path,) = tmp_path.glob("m-*.ckpt")
    cfg = train.run_config(loss_fn, init(), key=kw["key"], steps=20, optimizer=kw["optimizer"], ema_decay=0.999,
                           config=cfg)
    # 1. flip bytes in the middle of the payload: the checksum catches it
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(store.CorruptFile):
        store.load_state(path, train.init_state(init(), kw["optimizer"], 20), config=cfg)
    with caplog.at_level(logging.WARNING):
        again = train.load_or_train("m", cfg, init, loss_fn, **kw)
    assert "ignoring checkpoint" in caplog.text
    _same(again.params, good.params)  # retrained from scratch, deterministically
    # 2. a truncated file
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(store.CorruptFile):
        store.load_state(path, train.init_state(init(), kw["optimizer"], 20), config=cfg)
    # 3. a stale entry: written for another config under this name
    store.save_state(path, good, config=dict(cfg, other=True))
    with pytest.raises(store.CorruptFile, match="stale"):
        store.load_state(path, train.init_state(init(), kw["optimizer"], 20), config=cfg)
    _same(train.load_or_train("m", cfg, init, loss_fn, **kw).params, good.params)


def test_config_hash_is_order_independent_and_sensitive():
    assert store.config_hash({"a": 1, "b": 2}) == store.config_hash({"b": 2, "a": 1})
    assert store.config_hash({"a": 1}) != store.config_hash({"a": 2})


def test_nonfinite_loss_stops_with_clear_error():
    _, init = _problem()
    with pytest.raises(FloatingPointError, match="not finite at step"):
        train.fit(lambda p, k: jnp.nan * jnp.sum(p["Dense_0"]["kernel"]), init(), key=jax.random.PRNGKey(0),
                  steps=100, optimizer=optax.sgd(0.1))


def test_fit_does_not_resume_a_checkpoint_of_another_run(tmp_path, caplog):
    """The checkpoint's key covers the loss (probed), the optimiser (probed), the steps and the key: a
    finished run's file is not returned for another learning rate or loss; resuming is announced."""
    loss_fn, init = _problem()
    path = tmp_path / "run.ckpt"
    kw = dict(key=jax.random.PRNGKey(1), steps=30, ckpt_every=10)
    first = train.fit(loss_fn, init(), optimizer=optax.adam(1e-2), ckpt_path=path, **kw)
    with caplog.at_level(logging.WARNING):
        other_lr = train.fit(loss_fn, init(), optimizer=optax.adam(3e-2), ckpt_path=path, **kw)
        other_loss = train.fit(lambda p, k: 2.0 * loss_fn(p, k), init(), optimizer=optax.adam(1e-2),
                               ckpt_path=path, **kw)
    assert caplog.text.count("ignoring checkpoint") == 2
    fresh = train.fit(loss_fn, init(), optimizer=optax.adam(3e-2), **kw)
    _same(other_lr.params, fresh.params)
    assert float(jnp.abs(other_lr.losses - first.losses).max()) > 0
    assert int(other_loss.step) == 30
    # an interrupted run of the same configuration is resumed, with a warning that says so
    path2 = tmp_path / "again.ckpt"
    train.fit(loss_fn, init(), optimizer=optax.adam(1e-2), ckpt_path=path2, stop_after=12, **kw)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        resumed = train.fit(loss_fn, init(), optimizer=optax.adam(1e-2), ckpt_path=path2, **kw)
    assert "resumed from checkpoint" in caplog.text and "at step 12 of 30" in caplog.text
    _same(resumed.params, first.params)
