"""Log-SNR noise schedules and time grids.

Everything in ddss_lite is parameterised by the log signal-to-noise ratio
``logsnr = lambda = log(alpha^2 / sigma^2)`` of a variance-preserving process,

    alpha^2 = sigmoid(lambda),    sigma^2 = sigmoid(-lambda),

so ``alpha^2 + sigma^2 = 1``. Time ``t`` runs from 0 (data, high log-SNR) to
1 (noise, low log-SNR); a schedule is a strictly decreasing map t -> lambda.

A sampling *grid* is an array ``logsnrs`` of K + 1 strictly increasing values,
``logsnrs[0] = lambda(t = 1)`` (noisiest) to ``logsnrs[K] = lambda(t = 0)`` (cleanest):
step i (i = 0..K-1) maps the state at ``logsnrs[i]`` to the state at ``logsnrs[i+1]``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import store
from ddss_lite.validate import check_K, check_increasing

LOGSNR_MIN = -20.0
LOGSNR_MAX = 20.0


def alpha_sigma(logsnr):
    """``(alpha, sigma)`` of a VP process: ``alpha^2 = sigmoid(lambda)``, ``sigma^2 = sigmoid(-lambda)``."""
    logsnr = jnp.asarray(logsnr)
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def snr(logsnr):
    """``SNR = alpha^2 / sigma^2 = exp(lambda)``."""
    return jnp.exp(logsnr)


def logsnr_cosine(t, *, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX):
    """Cosine schedule (Nichol & Dhariwal 2021) in log-SNR form, clipped to [min, max].

    ``lambda(t) = -2 log tan(a t + b)`` with ``b = arctan(exp(-lambda_max / 2))`` and
    ``a = arctan(exp(-lambda_min / 2)) - b``, so lambda(0) = lambda_max, lambda(1) = lambda_min.
    """
    if not logsnr_min < logsnr_max:
        raise ValueError(f"logsnr_min must be < logsnr_max, got {logsnr_min} >= {logsnr_max}")
    b = np.arctan(np.exp(-0.5 * logsnr_max))
    a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
    if isinstance(t, (np.ndarray, np.generic, float, int)):  # host input: float64, exact endpoints
        t64 = np.asarray(t, np.float64)
        if not np.all((t64 >= 0.0) & (t64 <= 1.0)):           # NaN fails too
            bad = t64[~((t64 >= 0.0) & (t64 <= 1.0))]
            raise ValueError(f"t must be in [0, 1] (0 = data, 1 = noise), got {bad.ravel()[:5].tolist()}")
        return -2.0 * np.log(np.tan(a * t64 + b))
    return -2.0 * jnp.log(jnp.tan(a * jnp.asarray(t, jnp.float32) + b))


def t_from_logsnr_cosine(logsnr, *, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX):
    """Inverse of :func:`logsnr_cosine`."""
    b = np.arctan(np.exp(-0.5 * logsnr_max))
    a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
    return (jnp.arctan(jnp.exp(-0.5 * jnp.asarray(logsnr))) - b) / a


def ddpm_logsnr(T: int = 1000, *, beta_1: float = 1e-4, beta_T: float = 0.02):
    """Log-SNR of the discrete linear-beta DDPM schedule (Ho et al. 2020), steps t = 1..T.

    ``bar_alpha_t = prod_{s<=t} (1 - beta_s)``, ``lambda_t = log(bar_alpha_t / (1 - bar_alpha_t))``.
    Returns a float64 NumPy array of shape (T,), strictly decreasing in t.
    """
    check_K(T, name="T")
    if not 0.0 < beta_1 <= beta_T < 1.0:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
    betas = np.linspace(beta_1, beta_T, T, dtype=np.float64)
    log_bar_alpha = np.cumsum(np.log1p(-betas))
    # log(1 - bar_alpha) = log(-expm1(log bar_alpha)), stable for bar_alpha near 1.
    return log_bar_alpha - np.log(-np.expm1(log_bar_alpha))


def even_times(K: int):
    """K + 1 evenly spaced times ``t_K = 1 > ... > t_0 = 0`` (returned in that order)."""
    check_K(K)
    return np.linspace(1.0, 0.0, K + 1)


def quadratic_times(K: int):
    """K + 1 times ``t_i = (i / K)^2`` (quadratic stride, as in DDIM), ordered from 1 to 0."""
    check_K(K)
    return np.linspace(1.0, 0.0, K + 1) ** 2


_GRIDS = {"even": even_times, "quadratic": quadratic_times}


def grid(K: int, *, kind: str = "even", schedule=logsnr_cosine):
    """A sampling grid: K + 1 strictly increasing log-SNRs from ``schedule(1)`` to ``schedule(0)``.

    ``kind`` is one of ``"even"`` (even stride in t) or ``"quadratic"``.
    """
    if kind not in _GRIDS:
        raise ValueError(f"kind must be one of {sorted(_GRIDS)}, got {kind!r}")
    logsnrs = np.asarray(np.asarray(schedule(_GRIDS[kind](K)), np.float64).astype(np.float32))
    check_increasing(logsnrs, name="logsnrs")    # on the host, in float32: also inside a jit trace
    return jnp.asarray(logsnrs)


# --------------------------------------------------------------------------- schedule objects
#
# A schedule object says what a *model* was trained on: the map between its own time variable and
# the log-SNR, the interval of log-SNRs it saw (``logsnr_range``), and what its network receives as
# time input (``net_time``). Continuous schedules take ``t`` in [0, 1] (0 = data); a discrete one
# (DDPM's betas table) has integer timesteps ``n = 0 .. T-1`` and the continuous time
# ``t = (n + 1) / T`` of DPM-Solver's discrete wrapper (Lu et al. 2022, appendix), so both kinds share
# the grids of :mod:`ddss_lite.grids`.


def _check_unit_time(t64, *, lo: float = 0.0, name: str = "t"):
    ok = (t64 >= lo) & (t64 <= 1.0)
    if not np.all(ok):                                            # NaN fails too
        raise ValueError(f"{name} must be in [{lo:g}, 1] (1 = noise), got {np.asarray(t64)[~ok].ravel()[:5].tolist()}")


def _check_logsnr_in(lam64, lo: float, hi: float, *, name: str = "logsnr"):
    tol = 1e-9 * max(1.0, abs(lo), abs(hi))          # float64 rounding of the range's ends
    ok = (lam64 >= lo - tol) & (lam64 <= hi + tol)
    if not np.all(ok):
        raise ValueError(f"{name} must lie in the schedule's logsnr_range [{lo:.6g}, {hi:.6g}], got "
                         f"{np.asarray(lam64)[~ok].ravel()[:5].tolist()}")


def _is_host(x) -> bool:
    return isinstance(x, (np.ndarray, np.generic, float, int, list, tuple))


class Cosine:
    """The cosine schedule of :func:`logsnr_cosine` clipped to ``[logsnr_min, logsnr_max]`` (the book's
    models: -20 to 20), ``t`` in [0, 1]; the network's time input is the log-SNR itself by default."""

    kind = "continuous"

    def __init__(self, logsnr_min: float = LOGSNR_MIN, logsnr_max: float = LOGSNR_MAX):
        for name, v in (("logsnr_min", logsnr_min), ("logsnr_max", logsnr_max)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not np.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not logsnr_min < logsnr_max:
            raise ValueError(f"logsnr_min must be < logsnr_max, got {logsnr_min} >= {logsnr_max}")
        self.logsnr_min, self.logsnr_max = float(logsnr_min), float(logsnr_max)

    @property
    def logsnr_range(self) -> tuple[float, float]:
        return (self.logsnr_min, self.logsnr_max)

    @property
    def t_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def logsnr(self, t):
        """``lambda(t) = -2 log tan(a t + b)`` (:func:`logsnr_cosine`)."""
        return logsnr_cosine(t, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)

    def t_from_logsnr(self, logsnr):
        """The inverse of :meth:`logsnr`."""
        return t_from_logsnr_cosine(logsnr, logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)

    def describe(self) -> dict:
        return dict(kind="cosine", logsnr_min=self.logsnr_min, logsnr_max=self.logsnr_max)

    def __repr__(self):
        return f"Cosine(logsnr_min={self.logsnr_min:g}, logsnr_max={self.logsnr_max:g})"


class LinearVP:
    """The linear VP SDE of Song et al. 2021 (score SDE): ``beta(t) = beta_min + t (beta_max - beta_min)``,

        log alpha_t = -(beta_max - beta_min) t^2 / 4 - beta_min t / 2,    lambda = 2 log alpha - log(1 - alpha^2),

    on ``t`` in ``[t_min, 1]`` (``t_min = 1e-3``, the SDE's usual ``eps``), so ``logsnr_range`` is
    ``[lambda(1), lambda(t_min)]`` (about -10.05 and 9.12 for the defaults 0.1, 20 and 1e-3)."""

    kind = "continuous"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, *, t_min: float = 1e-3):
        for name, v in (("beta_min", beta_min), ("beta_max", beta_max), ("t_min", t_min)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not np.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not 0.0 <= beta_min <= beta_max or beta_max <= 0.0:
            raise ValueError(f"need 0 <= beta_min <= beta_max and beta_max > 0, got beta_min={beta_min}, "
                             f"beta_max={beta_max}")
        if not 0.0 < t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {t_min}")
        self.beta_min, self.beta_max, self.t_min = float(beta_min), float(beta_max), float(t_min)

    def _log_alpha(self, t, xp):
        return -0.25 * (self.beta_max - self.beta_min) * t ** 2 - 0.5 * self.beta_min * t

    def logsnr(self, t):
        """``lambda(t) = 2 log alpha_t - log(1 - alpha_t^2)`` with ``log(1 - alpha^2) = log(-expm1(2 log alpha))``."""
        if _is_host(t):
            t64 = np.asarray(t, np.float64)
            _check_unit_time(t64, lo=self.t_min)
            la2 = 2.0 * self._log_alpha(t64, np)
            return la2 - np.log(-np.expm1(la2))
        la2 = 2.0 * self._log_alpha(jnp.asarray(t, jnp.float32), jnp)
        return la2 - jnp.log(-jnp.expm1(la2))

    def t_from_logsnr(self, logsnr):
        """The inverse of :meth:`logsnr`: solve ``a t^2 + b t = c`` with ``a = (beta_max - beta_min) / 4``,
        ``b = beta_min / 2``, ``c = -log alpha = softplus(-lambda) / 2``."""
        xp = np if _is_host(logsnr) else jnp
        lam = xp.asarray(logsnr, np.float64 if xp is np else jnp.float32)
        c = 0.5 * (xp.logaddexp(0.0, -lam))
        a, b = 0.25 * (self.beta_max - self.beta_min), 0.5 * self.beta_min
        if a == 0.0:
            return c / b
        return 2.0 * c / (b + xp.sqrt(b * b + 4.0 * a * c))       # the root without cancellation

    @property
    def logsnr_range(self) -> tuple[float, float]:
        return (float(self.logsnr(1.0)), float(self.logsnr(self.t_min)))

    @property
    def t_range(self) -> tuple[float, float]:
        return (self.t_min, 1.0)

    def describe(self) -> dict:
        return dict(kind="linear_vp", beta_min=self.beta_min, beta_max=self.beta_max, t_min=self.t_min)

    def __repr__(self):
        return f"LinearVP(beta_min={self.beta_min:g}, beta_max={self.beta_max:g}, t_min={self.t_min:g})"


def linear_betas(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> np.ndarray:
    """DDPM's linear betas (Ho et al. 2020): ``beta_n = linspace(beta_1, beta_T, T)[n]``, float64, shape (T,)."""
    T = check_K(T, name="T", low=2)
    if not 0.0 < beta_1 <= beta_T < 1.0:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
    return np.linspace(beta_1, beta_T, T, dtype=np.float64)


def scaled_linear_betas(T: int = 1000, beta_1: float = 0.00085, beta_T: float = 0.012) -> np.ndarray:
    """Linear in ``sqrt(beta)`` (the ``scaled_linear`` of diffusers' schedulers): ``linspace(sqrt b_1, sqrt b_T, T)^2``."""
    T = check_K(T, name="T", low=2)
    if not 0.0 < beta_1 <= beta_T < 1.0:
        raise ValueError(f"need 0 < beta_1 <= beta_T < 1, got beta_1={beta_1}, beta_T={beta_T}")
    return np.linspace(np.sqrt(beta_1), np.sqrt(beta_T), T, dtype=np.float64) ** 2


def cosine_betas(T: int = 1000, *, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """The cosine betas of improved DDPM (Nichol & Dhariwal 2021, eq. 17): ``bar_alpha(n) = f(n) / f(0)``,
    ``f(n) = cos^2((n / T + s) / (1 + s) pi / 2)``, ``beta_n = min(1 - bar_alpha(n + 1) / bar_alpha(n), max_beta)``
    for ``n = 0 .. T-1`` (diffusers' ``squaredcos_cap_v2``)."""
    T = check_K(T, name="T", low=2)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"s must be a finite number > 0, got {s!r}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta!r}")
    f = np.cos((np.arange(T + 1, dtype=np.float64) / T + s) / (1.0 + s) * np.pi / 2.0) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


class DiscreteVP:
    """A discrete-time VP schedule from a betas table (DDPM): ``bar_alpha_n = prod_{m <= n} (1 - beta_m)``,
    ``lambda_n = log(bar_alpha_n / (1 - bar_alpha_n))`` at the integer timesteps ``n = 0 .. T-1`` the network
    was trained on (``n = 0`` the cleanest), so ``logsnr_range = [lambda_{T-1}, lambda_0]`` (-10.1 to 9.2 for
    DDPM's linear betas 1e-4 .. 0.02, T = 1000).

    Between timesteps the network is evaluated at the fractional timestep that interpolates the table
    linearly in log-SNR (the continuous time is ``t = (n + 1) / T``, as in DPM-Solver's discrete wrapper);
    with ``rounding=True`` (:meth:`timestep`) at the nearest integer timestep instead. At an integer timestep both give that
    timestep exactly, so a grid of the model's own timesteps (:mod:`ddss_lite.grids`) evaluates the
    network exactly where it was trained.
    """

    kind = "discrete"

    def __init__(self, betas):
        b = np.asarray(betas, np.float64)
        if b.ndim != 1 or b.shape[0] < 2:
            raise ValueError(f"betas must be a 1-D array of length T >= 2, got shape {b.shape}")
        ok = np.isfinite(b) & (b > 0.0) & (b < 1.0)
        if not np.all(ok):
            raise ValueError(f"betas must lie in (0, 1), got {b[~ok][:5].tolist()} at timesteps "
                             f"{np.flatnonzero(~ok)[:5].tolist()}")
        self.betas = b
        self.log_alpha_bar = np.cumsum(np.log1p(-b))                      # log bar_alpha_n, n = 0 .. T-1
        self.logsnr_table = self.log_alpha_bar - np.log(-np.expm1(self.log_alpha_bar))
        if not np.all(np.diff(self.logsnr_table) < 0):
            raise ValueError("betas: the schedule's log-SNR must be strictly decreasing in the timestep "
                             "(bar_alpha strictly decreasing), which fails here in float64")
        self.T = int(b.shape[0])

    @classmethod
    def linear(cls, T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02) -> "DiscreteVP":
        """DDPM's schedule: :func:`linear_betas`."""
        return cls(linear_betas(T, beta_1, beta_T))

    @classmethod
    def cosine(cls, T: int = 1000, **kwargs) -> "DiscreteVP":
        """Improved DDPM's schedule: :func:`cosine_betas`."""
        return cls(cosine_betas(T, **kwargs))

    @property
    def alphas_cumprod(self) -> np.ndarray:
        """``bar_alpha_n``, n = 0 .. T-1 (diffusers' name)."""
        return np.exp(self.log_alpha_bar)

    @property
    def logsnr_range(self) -> tuple[float, float]:
        return (float(self.logsnr_table[-1]), float(self.logsnr_table[0]))

    @property
    def t_range(self) -> tuple[float, float]:
        return (1.0 / self.T, 1.0)

    def logsnr_at(self, timesteps) -> np.ndarray:
        """``lambda_n`` at integer timesteps ``n`` in ``0 .. T-1`` (float64)."""
        n = np.asarray(timesteps)
        if n.dtype.kind not in "iu":
            if not np.all(np.isfinite(n)) or not np.all(n == np.round(n)):
                raise ValueError(f"timesteps must be integers in [0, {self.T - 1}], got {n.ravel()[:5].tolist()}")
            n = n.astype(np.int64)
        if n.size and not (n.min() >= 0 and n.max() <= self.T - 1):
            raise ValueError(f"timesteps must be integers in [0, {self.T - 1}], got {n.ravel()[:5].tolist()}")
        return self.logsnr_table[n]

    def timestep(self, logsnr, *, rounding: bool = False):
        """The network's timestep for ``logsnr``: ``n`` interpolated linearly in log-SNR between the table's
        integers (fractional in general; exactly ``n`` at the table's own ``lambda_n``, also in float32,
        since the knots are the table's values in the working dtype), or the nearest integer timestep with
        ``rounding``. DPM-Solver's wrapper interpolates ``log alpha`` instead; between two neighbouring
        timesteps of DDPM's table the two differ by at most 0.1 of a step (near n = 0). Host arrays (float64) are
        checked to lie in ``logsnr_range``; under a trace values outside it are clipped to its ends."""
        if _is_host(logsnr):
            lam = np.asarray(logsnr, np.float64)
            lo, hi = self.logsnr_range
            _check_logsnr_in(lam, lo, hi)
            n = np.interp(lam, self.logsnr_table[::-1], np.arange(self.T - 1, -1, -1, dtype=np.float64))
            return np.round(n) if rounding else n
        lam = jnp.asarray(logsnr)
        dtype = lam.dtype if jnp.issubdtype(lam.dtype, jnp.floating) else jnp.float32
        knots = jnp.asarray(np.asarray(self.logsnr_table[::-1]).astype(dtype))
        n = jnp.interp(lam.astype(dtype), knots, jnp.arange(self.T - 1, -1, -1, dtype=dtype))
        return jnp.round(n) if rounding else n

    def t_from_logsnr(self, logsnr):
        """Continuous time ``t = (n + 1) / T`` of the (fractional) timestep ``n`` of ``logsnr``."""
        return (self.timestep(logsnr) + 1.0) / self.T

    def logsnr(self, t):
        """The log-SNR at continuous time ``t`` in ``[1/T, 1]``: the table interpolated linearly in the
        timestep ``n = t T - 1`` (the inverse of :meth:`t_from_logsnr`)."""
        if _is_host(t):
            t64 = np.asarray(t, np.float64)
            _check_unit_time(t64, lo=1.0 / self.T)
            return np.interp(t64 * self.T - 1.0, np.arange(self.T, dtype=np.float64), self.logsnr_table)
        t = jnp.asarray(t, jnp.float32)
        return jnp.interp(t * self.T - 1.0, jnp.arange(self.T, dtype=jnp.float32),
                          jnp.asarray(self.logsnr_table, jnp.float32))

    def describe(self) -> dict:
        return dict(kind="discrete_vp", T=self.T, betas_sha256=store.array_digest(self.betas))

    def __repr__(self):
        return f"DiscreteVP(T={self.T}, beta_0={self.betas[0]:.4g}, beta_{self.T - 1}={self.betas[-1]:.4g})"


SCHEDULE_KINDS = ("continuous", "discrete")


def check_schedule(schedule, *, name: str = "schedule"):
    """``schedule`` must be a schedule object (:class:`Cosine`, :class:`LinearVP`, :class:`DiscreteVP`, or
    one with their ``kind``, ``logsnr``, ``t_from_logsnr``, ``logsnr_range`` and ``t_range``)."""
    missing = [a for a in ("kind", "logsnr", "t_from_logsnr", "logsnr_range", "t_range") if not hasattr(schedule, a)]
    if missing or getattr(schedule, "kind", None) not in SCHEDULE_KINDS:
        raise TypeError(f"{name} must be a schedule object (schedules.Cosine(), schedules.LinearVP(), "
                        f"schedules.DiscreteVP(betas)); got {type(schedule).__name__}"
                        + (f" without {missing}" if missing else f" of kind {getattr(schedule, 'kind', None)!r}"))
    lo, hi = schedule.logsnr_range
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"{name}.logsnr_range must be two finite numbers lo < hi, got {(lo, hi)}")
    return schedule
