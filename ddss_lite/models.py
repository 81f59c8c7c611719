"""The model type: what every sampler and method needs to know about a pre-trained diffusion model.

A :class:`Model` bundles

* ``denoise(z, logsnr) -> x_hat``, the one contract of the samplers (:mod:`ddss_lite.diffusion`);
* ``schedule``, the noise schedule it was trained on (:mod:`ddss_lite.schedules`: ``Cosine``,
  ``LinearVP``, ``DiscreteVP``), hence ``logsnr_range``, the log-SNRs the network has seen, which
  every grid of :mod:`ddss_lite.grids` stays inside;
* ``data_shape``, the shape of one example;
* for methods that train a copy of the network (progressive distillation): ``params``,
  ``prediction`` (the output parameterisation) and ``net_apply(params, z, logsnr)``, the raw network
  output at a log-SNR, and ``with_params`` for a student of the same network.

:func:`from_network` makes one from any network ``apply(params, z, t_net)`` called on its *own* time
input: the integer (or interpolated) timestep of a discrete DDPM schedule, the continuous time, the
log-SNR, or the VE noise level. The book's own models (:class:`ddss_lite.pretrained.Pretrained`)
are models too (cosine schedule, log-SNR input, ``v`` prediction).

Predictions (what the network outputs), with ``alpha, sigma`` of the VP process at ``logsnr``:

    "eps":   eps_hat,                x_hat = (z - sigma eps_hat) / alpha
    "x":     x_hat itself
    "v":     v_hat = alpha eps - sigma x,   x_hat = alpha z - sigma v_hat
    "score": s_hat = grad log p(z) = -eps_hat / sigma,   x_hat = (z + sigma^2 s_hat) / alpha
    "sigma_denoiser": a k-diffusion / EDM denoiser D(x_ve, sigma_ve) -> x_hat, called on the VE state
             ``x_ve = z / alpha`` and ``sigma_ve = sigma / alpha = exp(-logsnr / 2)``.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import diffusion, schedules
from ddss_lite.schedules import alpha_sigma
from ddss_lite.validate import check_choice

PREDICTIONS = ("eps", "x", "v", "score", "sigma_denoiser")
TIME_INPUTS = ("timestep", "t", "logsnr", "sigma")


class Model:
    """A pre-trained diffusion model (see the module docstring). Subclasses provide ``name``,
    ``schedule``, ``data_shape`` and :meth:`denoiser`; those that can be distilled also ``params``,
    ``prediction``, :meth:`net_apply` and :meth:`with_params`."""

    # set by every subclass (no class-level defaults: dataclass subclasses declare them as fields)
    name: str
    schedule: Any
    data_shape: tuple
    prediction: str | None
    params: Any

    def denoiser(self, *, clip: float | None = None) -> diffusion.Denoiser:
        raise NotImplementedError

    @property
    def denoise(self) -> diffusion.Denoiser:
        """``denoise(z, logsnr) -> x_hat``; the same function object on every access (compiled code keyed
        by it is reused)."""
        return self.denoiser()

    @property
    def logsnr_range(self) -> tuple[float, float]:
        """``(lo, hi)``: the log-SNRs the network was trained on (its schedule's range)."""
        return tuple(self.schedule.logsnr_range)

    @property
    def default_grid(self) -> str:
        """The grid name (:mod:`ddss_lite.grids`) used when a sampler is given ``nfe=`` but no grid:
        ``"time_uniform"`` on a continuous schedule (the book's even grid), ``"leading"`` on a discrete
        one (the model's own timesteps ``0, T/K, ..., (K-1) T/K``: DDIM's uniform skip when K divides T)."""
        return "leading" if self.schedule.kind == "discrete" else "time_uniform"

    def net_apply(self, params, z, logsnr):
        """The network's raw output (in ``prediction``) for ``params`` at ``logsnr`` (shape (B,))."""
        raise NotImplementedError(f"{type(self).__name__} does not expose its network (net_apply)")

    def with_params(self, params, *, name: str | None = None) -> "Model":
        """The same network with other ``params`` (a distilled student)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be copied with new params")

    def network_id(self) -> str:
        """A stable description of the network's architecture for cache keys (not its weights)."""
        return type(self).__name__

    def describe(self) -> dict:
        """What results about this model are keyed by: name, schedule, data shape, prediction."""
        return dict(name=self.name, schedule=self.schedule.describe(), data_shape=list(self.data_shape),
                    prediction=self.prediction)


def check_model(model, *, name: str = "model") -> Model:
    """``model`` must be a :class:`Model`."""
    if not isinstance(model, Model):
        raise TypeError(f"{name} must be a ddss_lite.Model (wrap a network with ddss_lite.models.from_network), "
                        f"got {type(model).__name__}")
    return model


def as_denoiser(target, *, name: str = "model"):
    """``(denoise, model)`` from a :class:`Model` (``model`` set) or a bare ``denoise(z, logsnr)`` (``None``)."""
    if isinstance(target, Model):
        return target.denoise, target
    if not callable(target):
        raise TypeError(f"{name} must be a ddss_lite.Model or a function denoise(z, logsnr) -> x_hat, "
                        f"got {type(target).__name__}")
    return target, None


def _x_hat(prediction: str):
    if prediction in diffusion.PREDICTIONS:
        return diffusion.to_x_hat(prediction)

    def from_score(z, s, logsnr):                       # x = (z + sigma^2 s) / alpha
        alpha, sigma = alpha_sigma(logsnr)
        return (z + diffusion.bcast(sigma ** 2, z) * s) / diffusion.bcast(alpha, z)

    return {"score": from_score, "sigma_denoiser": lambda z, out, logsnr: out}[prediction]


class NetworkModel(Model):
    """A :class:`Model` around a network ``apply(params, z_in, t_net) -> output`` (:func:`from_network`)."""

    def __init__(self, apply: Callable, params, *, prediction: str, schedule, data_shape, time_input: str,
                 time_scale: float, rounding: bool, name: str, clip: float | None = None,
                 default_grid: str | None = None):
        self.apply, self.params, self.prediction = apply, params, prediction
        self._default_grid = default_grid
        self.schedule, self.data_shape, self.name = schedule, tuple(data_shape), name
        self.time_input, self.time_scale, self.rounding, self.clip = time_input, float(time_scale), rounding, clip
        self._convert = _x_hat(prediction)
        self._denoisers: dict = {}

    @property
    def default_grid(self) -> str:
        """:attr:`Model.default_grid`, or the grid this model was made for (a distilled student: the
        grid its round trained it on, ``"time_uniform"``)."""
        return self._default_grid or super().default_grid

    # -- the network's own time input
    def net_time(self, logsnr):
        """What the network receives as time for ``logsnr`` (a traced (B,) array)."""
        logsnr = jnp.asarray(logsnr)
        if self.time_input == "timestep":
            t = self.schedule.timestep(logsnr, rounding=self.rounding)
        elif self.time_input == "t":
            t = self.schedule.t_from_logsnr(logsnr)
        elif self.time_input == "logsnr":
            t = logsnr
        else:                                             # "sigma": the VE noise level sigma / alpha
            t = jnp.exp(-0.5 * logsnr)
        return t * self.time_scale if self.time_scale != 1.0 else t

    def _call(self, params, z, logsnr_b):
        z_in = z
        if self.prediction == "sigma_denoiser":
            alpha, _ = alpha_sigma(logsnr_b)
            z_in = z / diffusion.bcast(alpha, z)
        out = self.apply(params, z_in, self.net_time(logsnr_b))
        if getattr(out, "shape", None) != z.shape:
            raise ValueError(f"apply: the network must return an array of the input's shape {tuple(z.shape)}, "
                             f"got {getattr(out, 'shape', type(out).__name__)}")
        return out

    def net_apply(self, params, z, logsnr):
        logsnr_b = jnp.broadcast_to(jnp.asarray(logsnr, z.dtype), z.shape[:1])
        return self._call(params, z, logsnr_b)

    def denoiser(self, *, clip: float | None = None) -> diffusion.Denoiser:
        clip = self.clip if clip is None else clip
        if clip is not None and not float(clip) > 0:
            raise ValueError(f"clip must be > 0 or None, got {clip!r}")
        if clip not in self._denoisers:
            def denoise(z, logsnr, _clip=clip):
                logsnr_b = jnp.broadcast_to(jnp.asarray(logsnr, z.dtype), z.shape[:1])
                x_hat = self._convert(z, self._call(self.params, z, logsnr_b), logsnr_b)
                return x_hat if _clip is None else jnp.clip(x_hat, -_clip, _clip)
            self._denoisers[clip] = denoise
        return self._denoisers[clip]

    def with_params(self, params, *, name: str | None = None, prediction: str | None = None,
                    default_grid: str | None = None) -> "NetworkModel":
        """The same network with ``params`` (its output read as ``prediction``, default the same; sampled by
        default on ``default_grid``, a name of :mod:`ddss_lite.grids`, default the same)."""
        if prediction is not None:
            check_choice(prediction, PREDICTIONS, name="prediction")
        if default_grid is not None and not isinstance(default_grid, str):   # a name; grids.get checks it
            raise TypeError(f"default_grid must be a grid name of ddss_lite.grids, got {default_grid!r}")
        return NetworkModel(self.apply, params, prediction=self.prediction if prediction is None else prediction,
                            schedule=self.schedule,
                            data_shape=self.data_shape, time_input=self.time_input, time_scale=self.time_scale,
                            rounding=self.rounding, name=self.name if name is None else name, clip=self.clip,
                            default_grid=self._default_grid if default_grid is None else default_grid)

    def network_id(self) -> str:
        fn = self.apply
        return (f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
                f"|time={self.time_input}*{self.time_scale:g}|rounding={self.rounding}")

    def describe(self) -> dict:
        return dict(super().describe(), time_input=self.time_input, time_scale=self.time_scale,
                    rounding=self.rounding)

    def __repr__(self):
        return (f"NetworkModel(name={self.name!r}, prediction={self.prediction!r}, schedule={self.schedule!r}, "
                f"data_shape={self.data_shape}, time_input={self.time_input!r})")


def from_network(apply: Callable, params, *, prediction: str, schedule, data_shape, time_input: str | None = None,
                 time_scale: float = 1.0, rounding: bool = False, name: str = "network",
                 clip: float | None = None) -> NetworkModel:
    """A :class:`Model` from a network ``apply(params, z, t_net) -> output`` on its own time input.

    Args:
      apply: the network, called with a batch ``z`` of shape ``(B, *data_shape)`` and ``t_net`` of shape
        (B,); must return an array of ``z``'s shape in the ``prediction`` parameterisation.
      prediction: one of ``"eps"``, ``"x"``, ``"v"``, ``"score"``, ``"sigma_denoiser"`` (module docstring).
      schedule: the schedule the network was trained on: ``schedules.DiscreteVP(betas)`` (e.g.
        ``DiscreteVP.linear()``, DDPM's), ``schedules.Cosine(...)`` or ``schedules.LinearVP(...)``.
      data_shape: one example's shape, e.g. ``(32, 32, 3)``.
      time_input: what ``t_net`` is: ``"timestep"`` (discrete schedules; the default there: the timestep
        whose ``log alpha`` interpolates the table, or the nearest one with ``rounding=True``), ``"t"``
        (the schedule's continuous time; the default for continuous schedules), ``"logsnr"``, or
        ``"sigma"`` (``exp(-logsnr / 2)``; the default, and the only choice, for ``"sigma_denoiser"``).
      time_scale: ``t_net`` is multiplied by this (e.g. 999 for networks trained on ``999 t``).
      clip: clip ``x_hat`` to ``[-clip, clip]`` (DDPM/DDIM's ``clip_sample`` uses 1).
    """
    if not callable(apply):
        raise TypeError(f"apply must be a function apply(params, z, t_net), got {type(apply).__name__}")
    check_choice(prediction, PREDICTIONS, name="prediction")
    schedules.check_schedule(schedule)
    try:
        data_shape = tuple(int(d) for d in data_shape)
    except TypeError:
        raise ValueError(f"data_shape must be a tuple of positive integers, got {data_shape!r}") from None
    if not data_shape or any(d < 1 for d in data_shape):
        raise ValueError(f"data_shape must be a non-empty tuple of positive integers, got {data_shape}")
    if time_input is None:
        time_input = ("sigma" if prediction == "sigma_denoiser" else
                      "timestep" if schedule.kind == "discrete" else "t")
    check_choice(time_input, TIME_INPUTS, name="time_input")
    if time_input == "timestep" and schedule.kind != "discrete":
        raise ValueError(f"time_input='timestep' needs a discrete schedule (schedules.DiscreteVP), got {schedule!r}")
    if prediction == "sigma_denoiser" and time_input != "sigma":
        raise ValueError(f"prediction='sigma_denoiser' takes time_input='sigma' (its input is sigma_ve), "
                         f"got {time_input!r}")
    if isinstance(time_scale, bool) or not isinstance(time_scale, (int, float, np.floating)) or \
            not (np.isfinite(time_scale) and time_scale > 0):
        raise ValueError(f"time_scale must be a finite number > 0, got {time_scale!r}")
    if not isinstance(rounding, bool):
        raise ValueError(f"rounding must be True or False, got {rounding!r}")
    if rounding and time_input != "timestep":
        raise ValueError("rounding=True rounds timesteps: it needs time_input='timestep'")
    if clip is not None and (isinstance(clip, bool) or not float(clip) > 0):
        raise ValueError(f"clip must be > 0 or None, got {clip!r}")
    return NetworkModel(apply, params, prediction=prediction, schedule=schedule, data_shape=data_shape,
                        time_input=time_input, time_scale=time_scale, rounding=rounding, name=str(name), clip=clip)


def from_denoiser(denoise: Callable, *, schedule, data_shape, name: str = "denoiser") -> "DenoiserModel":
    """A :class:`Model` from a ready ``denoise(z, logsnr) -> x_hat`` (no network to distil): gives the
    samplers and grids the schedule's ``logsnr_range``."""
    if not callable(denoise):
        raise TypeError(f"denoise must be a function denoise(z, logsnr) -> x_hat, got {type(denoise).__name__}")
    schedules.check_schedule(schedule)
    return DenoiserModel(denoise, schedule, tuple(int(d) for d in data_shape), str(name))


class DenoiserModel(Model):
    """A :class:`Model` around a bare denoiser (:func:`from_denoiser`)."""

    def __init__(self, denoise, schedule, data_shape, name):
        self._fn, self.schedule, self.data_shape, self.name = denoise, schedule, data_shape, name
        self.prediction, self.params = None, None

    def denoiser(self, *, clip: float | None = None):
        if clip is not None:
            raise ValueError("clip: a DenoiserModel returns its denoiser as given (clip it yourself)")
        return self._fn


# --------------------------------------------------------------------------- a closed-form network


def gaussian_network(schedule, *, prediction: str = "eps"):
    """A network in closed form, for trying a pipeline before bringing a real one: the exact output for
    data ``x ~ N(mean, diag(std^2))`` on ``schedule``, ``apply(params, z, t_net)`` with
    ``params = {"mean": (*data_shape), "std": (*data_shape)}`` and ``t_net`` the timestep of a discrete
    schedule (log-SNR linear in it between the table's integers) or the continuous time otherwise.

    The posterior mean is ``x_hat = mean + g (z - alpha mean)``, ``g = alpha std^2 / (alpha^2 std^2 + sigma^2)``;
    the output is ``x_hat`` (``"x"``) or ``eps_hat = (z - alpha x_hat) / sigma`` (``"eps"``).
    Use with :func:`from_network` (same ``schedule`` and ``prediction``); :func:`gaussian_flow` is the
    exact probability-flow map to compare samplers with."""
    check_choice(prediction, ("eps", "x"), name="prediction")
    schedules.check_schedule(schedule)
    if schedule.kind == "discrete":
        table = np.asarray(schedule.logsnr_table)
        to_logsnr = lambda t, dtype: jnp.interp(t, jnp.arange(table.shape[0], dtype=dtype), jnp.asarray(table, dtype))
    else:
        to_logsnr = lambda t, dtype: jnp.asarray(schedule.logsnr(t), dtype)

    def apply(params, z, t_net):
        lam = diffusion.bcast(to_logsnr(jnp.asarray(t_net, z.dtype), z.dtype), z)
        alpha, sigma = jnp.sqrt(jax.nn.sigmoid(lam)), jnp.sqrt(jax.nn.sigmoid(-lam))
        mean, var = jnp.asarray(params["mean"], z.dtype), jnp.square(jnp.asarray(params["std"], z.dtype))
        x_hat = mean + alpha * var * (z - alpha * mean) / (alpha ** 2 * var + sigma ** 2)
        return x_hat if prediction == "x" else (z - alpha * x_hat) / sigma

    return apply


def gaussian_flow(params, z, *, logsnr_t, logsnr_s):
    """The exact probability-flow map of :func:`gaussian_network`'s data from ``logsnr_t`` to ``logsnr_s``
    (``+inf``: to the data): ``z_s = alpha_s mean + sqrt(v_s / v_t) (z_t - alpha_t mean)``,
    ``v = alpha^2 std^2 + sigma^2``; float64 on the host."""
    mean, var = np.asarray(params["mean"], np.float64), np.square(np.asarray(params["std"], np.float64))

    def a2_v(lam):
        a2 = 1.0 if np.isinf(lam) and lam > 0 else 1.0 / (1.0 + np.exp(-float(lam)))
        return a2, a2 * var + (1.0 - a2)

    (at2, vt), (as2, vs) = a2_v(logsnr_t), a2_v(logsnr_s)
    return np.sqrt(as2) * mean + np.sqrt(vs / vt) * (np.asarray(z, np.float64) - np.sqrt(at2) * mean)
