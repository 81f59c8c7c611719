"""Progressive distillation (Salimans & Ho, ICLR 2022): halve a deterministic sampler's steps, round by round.

A *teacher* sampled with DDIM on the 2N-step grid is distilled into a *student* that takes N
steps on the N-step grid ``schedules.grid(N)`` (even in t on the cosine schedule, so the teacher's
grid ``schedules.grid(2N)`` holds every student point and one midpoint between each pair). One
update (the paper's Algorithm 2), for a student step ``t -> t''`` with midpoint ``t'``
(``t = (i+1)/N``, ``t' = t - 1/(2N)``, ``t'' = t - 1/N``):

    x ~ data,  eps ~ N(0, I),  z_t = alpha_t x + sigma_t eps
    z'  = DDIM_teacher(z_t; t -> t'),   z'' = DDIM_teacher(z'; t' -> t'')
    x~  = (z'' - (sigma''/sigma_t) z_t) / (alpha'' - (sigma''/sigma_t) alpha_t)    (the solved target)
    loss = w(lambda_t) ||x~ - x_hat_student(z_t)||^2,   w = max(SNR, 1) ("snr_trunc", eq. 9)

``x~`` is the prediction with which *one* student DDIM step from ``z_t`` lands exactly on ``z''``;
on the last student step (``t = 1/N``, ``t'' = 0``) it is replaced by the teacher's own
``x_hat(z', lambda')`` (the released code does the same; at ``t'' = 0`` the two agree to
``sigma'' ~ e^-10``). The ratio ``sigma''/sigma_t = exp((softplus(lambda_t) - softplus(lambda''))/2)``
and the denominator ``alpha'' (1 - exp((lambda_t - lambda'')/2)) = -alpha'' expm1((lambda_t - lambda'')/2)``
are formed in log-SNR, so nothing is divided by a small sigma and the difference is not cancelled.

Each round initialises the student from the teacher's weights, resets Adam and decays its
learning rate linearly to zero, and writes its own atomic checkpoint keyed by everything that
determines it (the teacher's params digest, N, steps, lr, batch, weighting, data, key; see
:func:`round_config`), so a killed run resumes at the round and step it reached and ends on the
same weights. The student of the last round becomes the next round's teacher.

Data parallel: ``distill_round(..., mesh=parallel.mesh())`` (and ``progressive_distillation``)
splits each step's batch over the mesh's devices by rows and computes the loss of the global
batch; XLA reduces the gradient (:func:`make_distillation_loss`, :mod:`ddss_lite.parallel`).

Result: students (:class:`ddss_lite.Model`, the teacher's network with new params) that plug into the
samplers: sample an N-step student with ``samplers.ddim(student.denoiser(), key, shape,
logsnrs=schedules.grid(N))`` (NFE = N).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddss_lite import diffusion, grids, parallel, paths, schedules, store, train
from ddss_lite.models import Model, check_model
from ddss_lite.pretrained import Pretrained
from ddss_lite.schedules import alpha_sigma
from ddss_lite.validate import check_choice, check_K, check_key, is_concrete

FORMAT = 1          # bump to invalidate every distillation checkpoint when the update changes meaning
GRAD_CLIP = 1.0     # global-norm clipping, as in the released CIFAR-10 distillation config


# --------------------------------------------------------------------------- the target


def ddim_step(denoise, z_t, *, logsnr_t, logsnr_s):
    """One deterministic DDIM step ``z_s = alpha_s x_hat + sigma_s eps_hat`` (Song et al. 2021, eq. 12);
    returns ``(z_s, x_hat)``. Written as ``z_s = mu x_hat + nu z_t`` with the coefficients of
    :func:`ddss_lite.samplers.ddim_coefficients` (``eta = 0``), the samplers' own step."""
    from ddss_lite.samplers import ddim_coefficients

    x_hat = denoise(z_t, logsnr_t)
    mu, nu, _ = ddim_coefficients(logsnr_t=logsnr_t, logsnr_s=logsnr_s, eta=0.0)
    return diffusion.bcast(mu, z_t) * x_hat + diffusion.bcast(nu, z_t) * z_t, x_hat


def x_target_from_landing(*, z_t, z_s, logsnr_t, logsnr_s):
    """The ``x`` for which one DDIM step from ``z_t`` (at ``logsnr_t``) lands on ``z_s`` (at ``logsnr_s``).

    Solving ``z_s = alpha_s x + sigma_s (z_t - alpha_t x) / sigma_t`` for ``x`` (Salimans & Ho 2022,
    Algorithm 2):

        x = (z_s - r z_t) / (alpha_s - r alpha_t),   r = sigma_s / sigma_t = exp((softplus(l_t) - softplus(l_s)) / 2)

    with ``log sigma = -softplus(l) / 2`` and the denominator in its cancellation-free form
    ``alpha_s - r alpha_t = alpha_s (1 - exp((l_t - l_s) / 2)) = -alpha_s expm1((l_t - l_s) / 2)``.
    Needs ``logsnr_s > logsnr_t`` (checked on concrete values: at equal log-SNRs every ``x`` lands
    on ``z_s`` and the target is undefined).
    """
    logsnr_t = jnp.asarray(logsnr_t, z_t.dtype)
    logsnr_s = jnp.asarray(logsnr_s, z_t.dtype)
    if is_concrete((logsnr_t, logsnr_s)) and not np.all(np.asarray(logsnr_s) > np.asarray(logsnr_t)):
        raise ValueError(f"logsnr_s must be > logsnr_t (a step towards the data), got logsnr_t={np.asarray(logsnr_t)}, "
                         f"logsnr_s={np.asarray(logsnr_s)}")
    r = jnp.exp(0.5 * (jax.nn.softplus(logsnr_t) - jax.nn.softplus(logsnr_s)))
    alpha_s, _ = alpha_sigma(logsnr_s)
    denom = -alpha_s * jnp.expm1(0.5 * (logsnr_t - logsnr_s))
    return (z_s - diffusion.bcast(r, z_t) * z_t) / diffusion.bcast(denom, z_t)


def distillation_target(teacher, z_t, *, logsnr_t, logsnr_mid, logsnr_s, last=False):
    """The x-space target of one student DDIM step ``t -> t''`` that lands where two teacher DDIM steps
    ``t -> t' -> t''`` land (Salimans & Ho 2022, Algorithm 2).

    ``teacher`` is a denoiser ``(z, logsnr) -> x_hat``; ``logsnr_t < logsnr_mid < logsnr_s`` are scalars
    or per-example arrays of shape ``z_t.shape[:1]``. ``last`` (a bool, or per-example bools) marks the
    student's last step (``t = 1/N``, ``t'' = 0``), where the target is the teacher's own ``x_hat`` at
    the midpoint instead of the solved one. Returns ``(x_target, z_s)``: the target and the point
    ``z''`` the two teacher steps land on. No gradient flows through either.
    """
    z_mid, _ = ddim_step(teacher, z_t, logsnr_t=logsnr_t, logsnr_s=logsnr_mid)
    z_s, x_hat_mid = ddim_step(teacher, z_mid, logsnr_t=logsnr_mid, logsnr_s=logsnr_s)
    x_solved = x_target_from_landing(z_t=z_t, z_s=z_s, logsnr_t=logsnr_t, logsnr_s=logsnr_s)
    x_target = jnp.where(diffusion.bcast(jnp.asarray(last), z_t), x_hat_mid, x_solved)
    return jax.lax.stop_gradient(x_target), jax.lax.stop_gradient(z_s)


# --------------------------------------------------------------------------- grids


class RoundGrid(NamedTuple):
    """Per student step ``j = 0 .. N-1`` (sampler order, noisiest first): the student's start
    ``logsnr_t = grid(N)[j]``, the teacher's midpoint ``logsnr_mid = grid(2N)[2j + 1]`` and the
    student's end ``logsnr_s = grid(N)[j + 1] = grid(2N)[2j + 2]``; all (N,) float32."""

    logsnr_t: jax.Array
    logsnr_mid: jax.Array
    logsnr_s: jax.Array


def student_grid(N: int, model=None):
    """The (N+1,) grid an N-step student is trained and sampled on: even in its teacher's schedule time,
    ``grids.time_uniform(N, model)`` (for the book's models ``schedules.grid(N)``, the same bit for bit);
    without a model, ``schedules.grid(N)``."""
    N = check_K(N, name="N")
    return schedules.grid(N) if model is None else grids.time_uniform(N, check_model(model, name="teacher"))


def round_grid(N: int, model=None) -> RoundGrid:
    """The student's N-step grid and the teacher's 2N-step grid (:func:`student_grid` on ``model``'s
    schedule), checked to nest exactly (``grid(2N)[::2] == grid(N)`` bit for bit), so the student is
    trained on the very log-SNRs it is sampled with."""
    N = check_K(N, name="N")
    with jax.ensure_compile_time_eval():     # concrete host values even when called under a trace
        student, teacher = np.asarray(student_grid(N, model)), np.asarray(student_grid(2 * N, model))
    if not np.array_equal(teacher[::2], student):
        worst = float(np.max(np.abs(teacher[::2] - student)))
        raise ValueError(f"N: the teacher's grid(2N = {2 * N}) does not contain the student's grid(N = {N}) "
                         f"exactly (largest difference {worst:.3g} in log-SNR)")
    return RoundGrid(jnp.asarray(student[:-1]), jnp.asarray(teacher[1::2]), jnp.asarray(student[1:]))


# --------------------------------------------------------------------------- the loss


def _data_sampler(data, batch: int):
    """``key -> (batch, ...)`` examples: rows of an array drawn with replacement, or a callable ``(key, n) -> x``."""
    if callable(data):
        return lambda k: jnp.asarray(data(k, batch))
    x = jnp.asarray(data)
    if x.ndim < 2 or x.shape[0] < 1:
        raise ValueError(f"data must be a callable (key, n) -> x or an array (examples, ...), got shape {x.shape}")
    return lambda k: x[jax.random.randint(k, (batch,), 0, x.shape[0])]


def _data_id(data) -> str:
    """What the cache key records about ``data``: a digest of an array; a callable is identified by the
    loss probe of :func:`ddss_lite.train.run_config` (its batch at a fixed key)."""
    return "callable" if callable(data) else store.array_digest(jnp.asarray(data))


def make_distillation_loss(teacher, student_apply, *, N: int, data, batch: int, prediction: str = "v",
                           weighting: str = "snr_trunc", grid: RoundGrid | None = None):
    """``loss(student_params, key)``: the Monte-Carlo distillation loss of a round with an N-step student.

    ``teacher`` is a denoiser ``(z, logsnr) -> x_hat`` (its params closed over); ``student_apply(params,
    z, logsnr)`` the student network, whose output is read as ``prediction`` (``"v"`` or ``"x"``).
    Per example: ``j ~ U{0..N-1}`` (student step), ``x`` from ``data``, ``eps ~ N(0, I)``, ``z_t`` at
    ``grid(N)[j]``, the target of :func:`distillation_target` (``last = j == N - 1``), and
    ``w(lambda_t) mean((x_target - x_hat)^2)`` with ``w = diffusion.weight_fn(weighting)``. ``grid``:
    the round's :class:`RoundGrid` (default ``round_grid(N)``, the book's cosine grid).

    Traced under a device mesh (:func:`ddss_lite.parallel.use_mesh`; ``distill_round(mesh=)`` does
    this), the examples are split over the devices by rows after the randomness is drawn at the
    global batch's shape (``x``, ``j`` and ``eps`` do not depend on the device count); the teacher's
    two steps, the student and the per-example losses run on each device's rows, and the mean
    over the ``batch`` examples is a global reduction. When ``batch`` does not divide the device
    count the rows are padded (copies of the last example) to ``parallel.padded_batch(batch)``
    and the padded rows' losses are dropped before the mean, so they cannot leak into it.
    """
    N = check_K(N, name="N")
    batch = check_K(batch, name="batch")
    weight = diffusion.weight_fn(weighting)
    to_x = diffusion.to_x_hat(prediction)
    grid = round_grid(N) if grid is None else grid
    sample_x = _data_sampler(data, batch)

    def loss(params, key):
        k_x, k_j, k_eps = jax.random.split(key, 3)
        x = sample_x(k_x)
        j = jax.random.randint(k_j, (batch,), 0, N)
        eps = jax.random.normal(k_eps, x.shape, x.dtype)
        rows = parallel.padded_batch(batch)          # == batch without a mesh (trace time)
        if rows != batch:
            x, j, eps = (parallel.pad_rows(a, rows) for a in (x, j, eps))
        x, j, eps = parallel.constrain_batch((x, j, eps))
        logsnr_t, logsnr_mid, logsnr_s = grid.logsnr_t[j], grid.logsnr_mid[j], grid.logsnr_s[j]
        z_t = diffusion.q_sample(x=x, eps=eps, logsnr=logsnr_t)
        x_target, _ = distillation_target(teacher, z_t, logsnr_t=logsnr_t, logsnr_mid=logsnr_mid,
                                          logsnr_s=logsnr_s, last=j == N - 1)
        x_hat = to_x(z_t, student_apply(params, z_t, logsnr_t), logsnr_t)
        per_ex = jnp.mean(jnp.square(x_target - x_hat).reshape(rows, -1), axis=1)
        weighted = weight(logsnr_t) * per_ex
        if rows != batch:
            weighted = weighted[:batch]              # drop the padding before the mean
        return jnp.mean(weighted)

    return loss


def make_optimizer(lr: float, steps: int) -> optax.GradientTransformation:
    """Adam, learning rate ``lr`` decayed linearly to 0 over the round's ``steps``, global-norm clip 1
    (the released distillation configs: no warm-up, no weight decay)."""
    return optax.chain(optax.clip_by_global_norm(GRAD_CLIP), optax.adam(optax.linear_schedule(lr, 0.0, steps)))


# --------------------------------------------------------------------------- one round


@dataclasses.dataclass(frozen=True)
class RoundCost:
    """What one round cost. Network evaluations are counted per example: the teacher runs 2 forward
    passes per example per step, the student 1 forward and 1 backward. ``wall_s`` is the wall time of
    the ``steps_timed`` steps run by the process that did them (compilation and checkpoint writes
    included); a round loaded complete from the cache reports the time recorded when it was trained
    (``from_cache``), or ``None`` if that record is missing."""

    N: int                   # the student's steps (the teacher's: 2N)
    steps: int               # student gradient steps
    batch: int
    teacher_evals: int       # teacher forward passes, per example: 2 * steps * batch
    student_evals: int       # student forward+backward passes, per example: steps * batch
    wall_s: float | None
    steps_timed: int
    from_cache: bool = False


class Round(NamedTuple):
    student: Model
    cost: RoundCost


def _check_teacher(teacher):
    check_model(teacher, name="teacher")
    if teacher.params is None:
        raise TypeError(f"teacher: distillation trains a copy of the teacher's network, but {teacher.name!r} "
                        "exposes none (make the model with ddss_lite.models.from_network(apply, params, ...))")
    return teacher


def _check_prediction(teacher, student_prediction):
    _check_teacher(teacher)
    check_choice(teacher.prediction, diffusion.PREDICTIONS, name="prediction (the teacher's; distillation reads "
                 "the network's output as eps, x or v)")
    pred = teacher.prediction if student_prediction is None else student_prediction
    if pred == "eps":
        raise ValueError(
            "prediction: an eps-parameterised student cannot be distilled (x_hat = (z - sigma eps_hat) / alpha "
            "is undefined as alpha -> 0, and the few-step student starts at alpha = e^-10; Salimans & Ho 2022, "
            "sec. 4). Convert it: pass student_prediction='v' (or 'x'); the student then starts from the "
            "teacher's weights with its output read as v, and its first round relearns the low-SNR end")
    return check_choice(pred, ("v", "x"), name="student_prediction")


def _check_lr(lr) -> float:
    if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    return float(lr)


def _is_book_schedule(model) -> bool:
    return model.schedule.describe() == schedules.Cosine().describe()


def round_config(teacher, student_init, N: int, *, steps: int, batch: int, lr: float,
                 weighting: str, prediction: str, data) -> dict:
    """Everything that determines a round's result except the key (which :func:`ddss_lite.train.run_config`
    adds with the probes of the loss and the optimiser): the teacher (name, parameterisation, params
    digest), the student's initial params digest, architecture and parameterisation, N, steps, batch, lr,
    weighting, the data and the grid's definition."""
    return dict(format=FORMAT, kind="distill", teacher=teacher.name, teacher_prediction=teacher.prediction,
                teacher_sha256=store.array_digest(teacher.params), student_init_sha256=store.array_digest(student_init),
                module=teacher.network_id(), prediction=prediction, N=int(N), steps=int(steps), batch=int(batch),
                lr=float(lr), weighting=weighting, grad_clip=GRAD_CLIP, data=_data_id(data),
                grid=("schedules.grid(N), cosine, even in t" if _is_book_schedule(teacher) else
                      f"grids.time_uniform(N) on {json.dumps(teacher.schedule.describe(), sort_keys=True)}"))


def _steps_done(path: pathlib.Path, params, optimizer, steps: int, config: dict) -> int:
    """The step a valid checkpoint at ``path`` holds (0 when there is none or it would be ignored)."""
    if not path.exists():
        return 0
    try:
        return int(store.load_state(path, train.init_state(params, optimizer, steps), config=config).step)
    except store.CorruptFile:
        return 0


def _root_name(model) -> str:
    """The original model's name: ``digits`` for ``digits`` and for its students ``digits-distilled-N``."""
    return model.name.split("-distilled-")[0]


_NO_COST = {"wall_s": None, "steps_timed": 0}     # a round whose time was never recorded


def _read_cost(path: pathlib.Path) -> dict:
    """The cost record beside a round's checkpoint: ``{"wall_s": float >= 0, "steps_timed": int >= 0}``;
    missing: the time is unknown (:data:`_NO_COST`); unreadable or malformed: a warning naming the file,
    and unknown too (the weights are fine; only the seconds that trained them are lost)."""
    if not path.exists():
        return _NO_COST
    try:
        record = json.loads(path.read_text())
        wall, timed = record["wall_s"], record["steps_timed"]
        if not (isinstance(timed, int) and timed >= 0 and (wall is None or (isinstance(wall, (int, float))
                                                                            and np.isfinite(wall) and wall >= 0))):
            raise ValueError(f"wall_s={wall!r}, steps_timed={timed!r}")
        return record
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        warnings.warn(f"{path}: unusable cost record ({type(e).__name__}: {e}); the round's weights load, its "
                      "training time is reported as unknown", stacklevel=3)
        return _NO_COST


def _cost_path(ckpt: pathlib.Path) -> pathlib.Path:
    return ckpt.with_name(ckpt.name + ".cost.json")


def distill_round(teacher, student_init: dict | None, N: int, *, data, steps: int, batch: int,
                  lr: float, key, weighting: str = "snr_trunc", student_prediction: str | None = None,
                  cache_dir=None, checkpoint: bool = True, ckpt_every: int | None = None,
                  desc: str | None = None, mesh=None) -> Round:
    """Distil ``teacher`` (DDIM on ``grid(2N)``) into an N-step student (DDIM on ``grid(N)``).

    ``teacher``: any :class:`ddss_lite.Model` that exposes its network (``params``, ``net_apply``,
    ``prediction`` eps, x or v: the book's models, :func:`ddss_lite.models.from_network`); the grids are
    even in its schedule's time (:func:`student_grid`), and the student is the same network with the
    distilled params (``teacher.with_params``), sampled like every model, ``samplers.get("ddim")(student,
    key, shape, nfe=N)``, on the grid it was trained on (its default grid: ``student_grid(N, teacher)``).

    ``student_init``: the student's initial params (``None``: the teacher's, as in the paper).
    ``data``: an array of training examples (rows drawn with replacement) or a callable ``(key, n) -> x``.
    ``steps`` Adam steps of ``batch`` examples, learning rate ``lr`` decayed linearly to 0, no EMA.
    ``weighting`` is resolved by :func:`ddss_lite.diffusion.weight_fn` (``"snr_trunc"``: ``max(SNR, 1)``;
    ``"v"``: ``1 + SNR``, the ablation). With ``checkpoint`` the round is written atomically every
    ``ckpt_every`` steps (default ``steps // 10``) to ``cache_dir`` (default ``paths.cache_dir()``) as
    ``distill-{teacher}-N{N}-{hash}.ckpt``; a complete file is loaded without training, a partial one
    resumed. Step ``i`` uses ``fold_in(key, i)``. Returns the student and the round's :class:`RoundCost`.
    ``mesh``: data parallel over its devices (:func:`ddss_lite.train.fit`); the result equals one
    device's to float tolerance and the checkpoint's key does not depend on it.
    """
    N = check_K(N, name="N")
    steps = check_K(steps, name="steps")
    batch = check_K(batch, name="batch")
    lr = _check_lr(lr)
    check_key(key)
    prediction = _check_prediction(teacher, student_prediction)
    student_init = teacher.params if student_init is None else student_init
    loss_fn = make_distillation_loss(teacher.denoise, teacher.net_apply, N=N, data=data, batch=batch,
                                     prediction=prediction, weighting=weighting, grid=round_grid(N, teacher))
    optimizer = make_optimizer(lr, steps)
    config = round_config(teacher, student_init, N, steps=steps, batch=batch, lr=lr, weighting=weighting,
                          prediction=prediction, data=data)
    desc = desc or f"distill {teacher.name} N={N}"
    every = check_K(ckpt_every, name="ckpt_every") if ckpt_every is not None else max(1, steps // 10)
    kw = dict(key=key, steps=steps, optimizer=optimizer, ema_decay=0.0, ckpt_every=every, desc=desc, mesh=mesh)
    path = None
    if checkpoint:
        full = train.run_config(loss_fn, student_init, key=key, steps=steps, optimizer=optimizer, ema_decay=0.0,
                                config=config)
        root = pathlib.Path(cache_dir) if cache_dir is not None else paths.cache_dir()
        path = root / f"distill-{_root_name(teacher)}-N{N}-{store.config_hash(full)}.ckpt"
        start = _steps_done(path, student_init, optimizer, steps, full)
        t0 = time.perf_counter()
        # ``full`` is already complete: it is not probed again (that would compile the loss a second
        # time inside the timed region)
        state = train.fit_with_config(loss_fn, student_init, ckpt_path=path, config=full, stop_after=None, **kw)
    else:
        start, t0 = 0, time.perf_counter()
        state = train.fit(loss_fn, student_init, **kw)
    jax.block_until_ready(state.params)
    wall, timed = time.perf_counter() - t0, steps - start
    if mesh is not None:     # replicated global arrays -> host-local copies, usable anywhere
        state = state._replace(params=jax.tree_util.tree_map(jnp.asarray, parallel.to_host(state.params)))
    if timed:
        record = {"wall_s": wall, "steps_timed": timed, "resumed_at": start}
        if path is not None:
            store.atomic_write_json(_cost_path(path), record)
    else:   # loaded complete: the record written by the run that trained it, if it got that far
        record = _read_cost(_cost_path(path)) if path is not None else _NO_COST
    cost = RoundCost(N=N, steps=steps, batch=batch, teacher_evals=2 * steps * batch, student_evals=steps * batch,
                     wall_s=record["wall_s"], steps_timed=int(record["steps_timed"]), from_cache=not timed)
    name = f"{_root_name(teacher)}-distilled-{N}"
    if isinstance(teacher, Pretrained):
        student = Pretrained(name=name, module=teacher.module, params=state.params,
                             losses=parallel.to_host(state.losses),
                             config=dict(config, key=np.asarray(jax.random.key_data(key)).tolist()),
                             prediction=prediction, data_shape=teacher.data_shape)
    else:
        # sampled by default on the grid it was trained on (the book's models: their default grid already)
        student = teacher.with_params(state.params, name=name, prediction=prediction, default_grid="time_uniform")
    return Round(student, cost)


# --------------------------------------------------------------------------- the rounds


@dataclasses.dataclass(frozen=True)
class Distillation:
    """The result of :func:`progressive_distillation`: ``teacher`` (the original model, sampled with
    ``N_start`` steps), ``students[N]`` for every N reached (N_start/2, ..., N_end) and each round's
    :class:`RoundCost`, in order."""

    teacher: Model
    students: dict
    costs: tuple

    def grid(self, N: int):
        """The (N+1,) grid the N-step student (or the teacher, at ``N_start``) is sampled on."""
        return student_grid(N, self.teacher)

    @property
    def final(self) -> Model:
        """The student with the fewest steps (the teacher itself when no round ran)."""
        return self.students[min(self.students)] if self.students else self.teacher

    def total(self, field: str):
        """The sum of a :class:`RoundCost` field over the rounds (``None`` if a round lacks it). For
        ``wall_s`` also ``None`` when a round's time covers only part of it (``steps_timed < steps``:
        the round was resumed, and the interrupted run's seconds were never recorded)."""
        values = [getattr(c, field) for c in self.costs]
        partial = field == "wall_s" and any(c.steps_timed < c.steps for c in self.costs)
        return None if partial or any(v is None for v in values) else sum(values)


def halving_schedule(N_start: int, N_end: int = 1) -> list[int]:
    """The students' step counts ``[N_start/2, N_start/4, ..., N_end]``; ``N_start / N_end`` must be a power of two."""
    N_start = check_K(N_start, name="N_start")
    N_end = check_K(N_end, name="N_end")
    if N_end > N_start:
        raise ValueError(f"N_end must be <= N_start (distillation halves the steps), got N_end={N_end} > "
                         f"N_start={N_start}")
    ratio, rem = divmod(N_start, N_end)
    if rem or ratio & (ratio - 1):
        raise ValueError(f"N_start / N_end must be a power of two (each round halves N), got N_start={N_start}, "
                         f"N_end={N_end}")
    return [N_start >> k for k in range(1, ratio.bit_length())]


def progressive_distillation(model, N_start: int, N_end: int = 1, *, data, steps_per_round,
                             batch: int, lr: float, key, weighting: str = "snr_trunc",
                             student_prediction: str | None = None, cache_dir=None, checkpoint: bool = True,
                             ckpt_every: int | None = None, mesh=None) -> Distillation:
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2): ``model`` with DDIM on ``grid(N_start)``
    is distilled into students of ``N_start/2, ..., N_end`` steps, each round's student initialised from
    (and then replacing) its teacher.

    ``steps_per_round``: one int for every round, or one per round (a sequence, in round order).
    Round ``N`` uses the key ``fold_in(key, N)``; the rest is :func:`distill_round`. Completed rounds
    are loaded from their checkpoints, so an interrupted run resumes at the round and step it reached
    and ends on the same weights. A non-finite loss raises ``FloatingPointError`` naming the round and step.
    ``mesh``: every round data parallel over its devices (:func:`distill_round`).
    """
    Ns = halving_schedule(N_start, N_end)
    if isinstance(steps_per_round, (int, np.integer)) and not isinstance(steps_per_round, bool):
        steps = [steps_per_round] * len(Ns)
    else:
        steps = list(steps_per_round)
        if len(steps) != len(Ns):
            raise ValueError(f"steps_per_round must be an int or have one entry per round ({len(Ns)} rounds, "
                             f"N = {Ns}), got {len(steps)} entries")
    for r, s in enumerate(steps):
        check_K(s, name=f"steps_per_round (round {r + 1})")
    prediction = _check_prediction(model, student_prediction)
    check_key(key)
    check_K(batch, name="batch")
    _check_lr(lr)
    diffusion.weight_fn(weighting)   # fail before any work on a bad option string
    teacher, students, costs = model, {}, []
    for r, (N, s) in enumerate(zip(Ns, steps)):
        student, cost = distill_round(teacher, None, N, data=data, steps=s, batch=batch, lr=lr,
                                      key=jax.random.fold_in(key, N), weighting=weighting,
                                      student_prediction=prediction, cache_dir=cache_dir, checkpoint=checkpoint,
                                      ckpt_every=ckpt_every, mesh=mesh,
                                      desc=f"distill {model.name} N={N} (round {r + 1} of {len(Ns)})")
        students[N], teacher = student, student
        costs.append(cost)
    return Distillation(model, students, tuple(costs))
