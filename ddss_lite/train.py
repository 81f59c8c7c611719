"""Training with optax: one jitted step, a Python loop with a progress bar, EMA weights,
periodic atomic checkpoints with resume, and a load-or-train cache keyed by the config.

Determinism: the minibatch and noise of step ``i`` come from ``fold_in(key, i)``, so a
run resumed from a checkpoint at step ``i`` continues exactly as an uninterrupted one.

Data parallel: with ``mesh=`` (:func:`ddss_lite.parallel.mesh`) the step is traced under the mesh
(:func:`ddss_lite.parallel.use_mesh`), the state is replicated, and a loss that lays out its batch
with :func:`ddss_lite.parallel.constrain_batch` (a no-op without a mesh) is split over the devices
by rows; its value is the global batch's loss and XLA reduces the gradient. The mesh is not part
of a run's configuration: results agree with one device's to float tolerance, so checkpoints
are shared between device counts.
"""
from __future__ import annotations

import logging
import pathlib
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ddss_lite import parallel, progress, store
from ddss_lite.validate import check_K, check_key

log = logging.getLogger(__name__)


class TrainState(NamedTuple):
    step: jax.Array          # int32 scalar: optimisation steps done
    params: dict
    ema_params: dict
    opt_state: optax.OptState
    losses: jax.Array        # (steps,) loss of every step; entries >= step are 0


def init_state(params, optimizer: optax.GradientTransformation, steps: int) -> TrainState:
    return TrainState(jnp.zeros((), jnp.int32), params, params, optimizer.init(params), jnp.zeros((steps,), jnp.float32))


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation, ema_decay: float, *, mesh=None):
    """A jitted step: ``loss_fn(params, key) -> scalar``; EMA ``ema <- d ema + (1 - d) params``.
    With ``mesh`` its outputs are replicated over the mesh; call it inside
    ``parallel.use_mesh(mesh)`` so that the loss's batch is split over the devices."""

    def step(state: TrainState, key):
        loss, grads = jax.value_and_grad(loss_fn)(state.params, key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree_util.tree_map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params)
        return TrainState(state.step + 1, params, ema, opt_state, state.losses.at[state.step].set(loss))

    return jax.jit(step) if mesh is None else jax.jit(step, out_shardings=parallel.replicated(mesh))


def run_config(loss_fn: Callable, params, *, key, steps: int, optimizer: optax.GradientTransformation,
               ema_decay: float, config: dict | None = None) -> dict:
    """Everything that determines the result of :func:`fit`: the caller's ``config``, ``steps``, the
    EMA decay, the key, a digest of the initial ``params``, and probes (:mod:`ddss_lite.store`) of
    ``loss_fn`` (its value at ``params`` for a fixed key: the data, the model and the loss) and of
    ``optimizer`` (its first updates: learning rate, schedule, decay, clipping)."""
    probe_key = jax.random.PRNGKey(11235)
    probe = jax.jit(loss_fn)        # forward only: a fraction of the training step's compile
    return dict(config or {}, steps=int(steps), ema_decay=float(ema_decay),
                key=np.asarray(jax.random.key_data(key)).tolist(),
                init_sha256=store.array_digest(params),
                loss_probe=store.fingerprint_fn(probe, params, probe_key),
                optimizer_probe=store.fingerprint_optimizer(optimizer, params))


def fit(loss_fn: Callable, params, *, key, steps: int, optimizer: optax.GradientTransformation,
        ema_decay: float = 0.999, ckpt_path=None, ckpt_every: int = 1000, config: dict | None = None,
        desc: str = "train", stop_after: int | None = None, mesh=None) -> TrainState:
    """Minimise ``loss_fn(params, key_i)`` for ``steps`` steps with ``key_i = fold_in(key, i)``.

    With ``ckpt_path`` the state is written atomically every ``ckpt_every`` steps and at the
    end. A checkpoint there is resumed (with a warning saying so) only if it was written for the
    same run: :func:`run_config` of these arguments, which includes ``config`` and probes of the
    loss and the optimiser; otherwise it is ignored with a warning and training starts afresh.
    ``stop_after`` ends the loop early (after that many steps in total) as an interruption
    would; used by tests. ``mesh``: train data parallel over its devices (module docstring); in a
    multi-process run every process calls ``fit`` with the same arguments (the initial params and
    a resumed step are checked), and ``ckpt_path`` should be on a filesystem all of them see.
    The returned state then holds replicated global arrays (:func:`ddss_lite.parallel.to_host`).
    """
    check_K(steps, name="steps")
    check_K(ckpt_every, name="ckpt_every")
    check_key(key)
    if not 0.0 <= ema_decay <= 1.0:
        raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
    if ckpt_path is not None:
        config = run_config(loss_fn, params, key=key, steps=steps, optimizer=optimizer, ema_decay=ema_decay,
                            config=config)
    return fit_with_config(loss_fn, params, key=key, steps=steps, optimizer=optimizer, ema_decay=ema_decay,
                ckpt_path=ckpt_path, ckpt_every=ckpt_every, config=config, desc=desc, stop_after=stop_after,
                mesh=mesh)


def fit_with_config(loss_fn, params, *, key, steps, optimizer, ema_decay, ckpt_path, ckpt_every, config, desc, stop_after,
         mesh=None):
    """:func:`fit` with ``config`` already the complete run config (:func:`run_config`), for a caller
    that has computed it once to key its checkpoint file by it (probing the loss and the optimiser
    again would compile the loss a second time)."""
    if mesh is not None:
        parallel.check_mesh(mesh)
        parallel.check_same_on_all_processes((key, params), name="key and params")
    state = init_state(params, optimizer, steps)
    if ckpt_path is not None and pathlib.Path(ckpt_path).exists():
        try:
            state = store.load_state(ckpt_path, state, config=config)
            if int(state.step) < steps:
                log.warning("%s: resumed from checkpoint %s at step %d of %d", desc, ckpt_path, int(state.step), steps)
        except store.CorruptFile as e:
            log.warning("%s: ignoring checkpoint (training afresh): %s", desc, e)
            state = init_state(params, optimizer, steps)
    step_fn = make_step(loss_fn, optimizer, ema_decay, mesh=mesh)
    start = checked = int(state.step)
    if mesh is not None:
        parallel.check_same_on_all_processes(np.int64(start), name="the step resumed from the checkpoint")
        state = parallel.replicate(state, mesh)    # as the step returns it: one compile, not two
    end = steps if stop_after is None else min(steps, stop_after)
    with progress.bar(total=steps, initial=start, desc=desc) as bar:
        for i in range(start, end):
            with parallel.use_mesh(mesh):
                state = step_fn(state, jax.random.fold_in(key, i))
            save = ckpt_path is not None and ((i + 1) % ckpt_every == 0 or i + 1 == end)
            if (i + 1) % 100 == 0 or i + 1 == end or save:
                losses = parallel.to_host(state.losses)
                bar.update(i + 1 - bar.n)
                bar.set_postfix(loss=f"{float(losses[i]):.4f}", refresh=False)
                recent = losses[checked:i + 1]   # every loss since the last check
                if not np.all(np.isfinite(recent)):
                    raise FloatingPointError(f"{desc}: loss is not finite at step {checked + int(np.argmin(np.isfinite(recent)))}")
                checked = i + 1
            if save:  # never writes a state whose losses were not all checked finite
                store.save_state(ckpt_path, state, config=config)
    return state


def load_or_train(name: str, config: dict, init_params: Callable[[], dict], loss_fn: Callable, *,
                  cache_dir, optimizer: optax.GradientTransformation, ema_decay: float = 0.999,
                  ckpt_every: int = 1000, key, mesh=None) -> TrainState:
    """Train under ``cache_dir/{name}-{hash(config)}.ckpt``, or load it when complete and valid.

    The file doubles as the checkpoint: an interrupted run resumes from it; a corrupt
    or stale file is reported and retrained, never loaded. ``config`` must contain
    everything that determines the result (including ``steps``). ``mesh``: as in :func:`fit`.
    """
    if "steps" not in config:
        raise ValueError("config must contain 'steps' (the number of optimisation steps)")
    steps = int(config["steps"])
    params = init_params()
    full = run_config(loss_fn, params, key=key, steps=steps, optimizer=optimizer, ema_decay=ema_decay, config=config)
    path = pathlib.Path(cache_dir) / f"{name}-{store.config_hash(full)}.ckpt"
    return fit_with_config(loss_fn, params, key=key, steps=steps, optimizer=optimizer, ema_decay=ema_decay,
                ckpt_path=path, ckpt_every=ckpt_every, config=full, desc=name, stop_after=None, mesh=mesh)

