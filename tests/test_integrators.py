"""Conjugate integrators (ddss_lite.integrators): lambda-DDIM and the polynomial conjugate integrator.

* ``Phi`` and the step weights against ``scipy.integrate.quad`` in the cosine time u;
* lambda-DDIM against formula (2) written out independently, and at ``lam = 0`` against DDIM;
* the compiled chain against an independent float64 recurrence in the conjugate variable ``z_hat``
  (and against its GGDM form), NFE counted by actual calls;
* orders of convergence on Gaussian data (closed-form denoiser and flow map, ``conftest.GaussianData``);
* bad input raises ValueError naming the parameter.

Compilation dominates on a CPU, so compiled samplers are cached (``run``) and the grid and lam are
traced arguments (one program per sampler, K and dtype). Orders are measured on the coefficient
tables the sampler runs (``integrators.conjugate_coefficients``) with a float64 NumPy recurrence, which
needs no compilation and reaches K = 640; ``test_chain_matches_the_zhat_recurrence`` ties the
compiled chain (which runs those tables) to formula (3) written in ``z_hat``.
"""
import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from ddss_lite import integrators, samplers, schedules
from ddss_lite.schedules import alpha_sigma

from conftest import GaussianData, counting_denoiser

G = GaussianData()
KEY = jax.random.PRNGKey(0)
A, B = integrators._A, integrators._B          # cosine schedule: rho(u) = tan(A u + B) = exp(-logsnr / 2)


def nonlinear_denoiser(z, logsnr):
    """A smooth, non-trivial stand-in for a network (per-example, no batch coupling)."""
    alpha, sigma = alpha_sigma(logsnr)
    return jnp.tanh(1.3 * alpha * z + 0.2 * sigma) + 0.1 * jnp.sin(z[..., ::-1])


def gaussian_denoiser(z, logsnr):
    return G.denoise(z, logsnr)


DENOISERS = {"nonlinear": nonlinear_denoiser, "gaussian": gaussian_denoiser}


def sub_grid(K, lo=-5.0, hi=5.0):
    """K steps even in cosine time between log-SNR ``lo`` and ``hi`` (float64 NumPy)."""
    u = np.linspace(integrators.cosine_time(lo), integrators.cosine_time(hi), K + 1)
    return np.asarray(schedules.logsnr_cosine(u), np.float64)


def full_grid(K):
    """The default even cosine grid from -20 to 20, in float64."""
    return np.asarray(schedules.logsnr_cosine(schedules.even_times(K)), np.float64)


def alpha64(logsnr):
    return np.sqrt(1.0 / (1.0 + np.exp(-np.asarray(logsnr, np.float64))))


def sigma64(logsnr):
    return np.sqrt(1.0 / (1.0 + np.exp(np.asarray(logsnr, np.float64))))


def drho(u):
    """``d rho / du = A sec^2(A u + B)``."""
    return A / np.cos(A * u + B) ** 2


def quad(f, lo, hi):
    """``int_lo^hi f`` to ~1e-13, with break points towards u = 1 where ``drho`` peaks (width ~e^-10)."""
    pts = [hi - (hi - lo) * 10.0**-k for k in range(1, 9)] if hi > 0.9 else None
    return integrate.quad(f, lo, hi, epsabs=0.0, epsrel=1e-13, limit=500, points=pts)[0]


@functools.lru_cache(maxsize=None)
def run(name, K, shape, denoiser, x64, **options):
    """A jitted ``(key, logsnrs, lam) -> (z_K, trajectory)`` (cached per configuration)."""
    fn = {"lambda_ddim": integrators.lambda_ddim, "conjugate_poly": integrators.conjugate_poly,
          "ddim": lambda *a, lam, **k: samplers.ddim(*a, **k)}[name]
    go = jax.jit(lambda key, logsnrs, lam: fn(DENOISERS[denoiser], key, shape, logsnrs=logsnrs, lam=lam,
                                              return_trajectory=True, **options))

    def call(logsnrs, lam=0.0, key=KEY):
        with jax.enable_x64(x64):
            g = jnp.asarray(logsnrs, jnp.float64 if x64 else jnp.float32)
            return go(key, g, lam)

    return call


# ----------------------------------------------------------------------------- Phi and the weights


@pytest.mark.parametrize("lam", [0.0, 0.5, -2.0, 5.0])
def test_phi_matches_quadrature(lam):
    """``Phi(t_i) = int_0^{t_i} e^{lam u} d rho_u`` on the default grid (rho from e^-10 to e^10) to 1e-10
    relative (measured: ~2e-16, and ~2e-12 at t = 1, where quad's own input ``rho(t)`` is conditioned
    ``A e^10`` times worse than in log-SNR). At lam = 0 it is the closed form ``rho_t - rho_0``."""
    g = full_grid(10)
    t = integrators.cosine_time(g)
    ours = integrators.phi(g, lam=lam)
    ref = np.array([quad(lambda u: np.exp(lam * u) * drho(u), 0.0, ti) for ti in t])
    np.testing.assert_allclose(ours[:-1], ref[:-1], rtol=1e-10)
    assert ours[-1] == ref[-1] == 0.0                  # t_K = 0: logsnr 20 is the cosine schedule's u = 0
    if lam == 0.0:
        np.testing.assert_allclose(ours, np.exp(-g / 2) - np.exp(-10.0), rtol=1e-15)


@pytest.mark.parametrize("lam,r", [(0.0, 3), (0.7, 3), (-1.5, 2)])
def test_weights_integrate_polynomials_exactly(lam, r):
    """The tables of (3) reproduce ``int p dPhi`` and ``int p du`` for every polynomial p of degree
    <= q_i (Lagrange interpolation is exact there): ``sum_j w_ij p(t_{i-j}) = alpha_s int_s^t p(u)
    e^{lam (u - s)} d rho`` against quad, to 1e-10, on every step of the default grid (K = 8)."""
    g = full_grid(8)
    tab = integrators.conjugate_weights(g, lam=lam, r=r)
    t, w, V, q = tab["t"], tab["w"], tab["V"], tab["q"]
    assert list(q) == [min(i, r) for i in range(8)]
    for i in range(8):
        s, ti = t[i + 1], t[i]
        nodes = t[i - np.arange(q[i] + 1)]
        for k in range(q[i] + 1):
            ref = alpha64(g[i + 1]) * quad(lambda u: u**k * np.exp(lam * (u - s)) * drho(u), s, ti)
            np.testing.assert_allclose(w[i, : q[i] + 1] @ nodes**k, ref, rtol=1e-10, err_msg=f"step {i}, u^{k}")
            np.testing.assert_allclose(V[i, : q[i] + 1] @ nodes**k, (ti ** (k + 1) - s ** (k + 1)) / (k + 1),
                                       rtol=1e-12, atol=1e-15)
        assert np.all(w[i, q[i] + 1:] == 0) and np.all(V[i, q[i] + 1:] == 0)


# ----------------------------------------------------------------------------- lambda-DDIM


@pytest.mark.parametrize("lam", [0.7, -1.3])
def test_lambda_ddim_is_formula_2(lam):
    """Each step is ``z_hat_s = (1 - lam (t - s)) z_hat_t + (Phi_s - Phi_t) eps_hat_t`` with
    ``z_hat = e^{lam u} z / alpha_u`` and Phi from quad, written out here step by step in float64
    (the sampler's trajectory supplies z_t; its next state must follow)."""
    g = sub_grid(10)
    z, traj = run("lambda_ddim", 10, (8, 3), "nonlinear", True)(g, lam)
    t = integrators.cosine_time(g)
    with jax.enable_x64(True):
        for i in range(10):
            zt = np.asarray(traj[i])
            x = np.asarray(nonlinear_denoiser(jnp.asarray(zt), g[i]))
            eps = (zt - alpha64(g[i]) * x) / sigma64(g[i])
            dphi = -quad(lambda u: np.exp(lam * u) * drho(u), t[i + 1], t[i])
            zhat = (1 - lam * (t[i] - t[i + 1])) * np.exp(lam * t[i]) * zt / alpha64(g[i]) + dphi * eps
            np.testing.assert_allclose(traj[i + 1], alpha64(g[i + 1]) * np.exp(-lam * t[i + 1]) * zhat,
                                       rtol=1e-10, atol=1e-12, err_msg=f"step {i}")
    np.testing.assert_array_equal(z, traj[-1])


@pytest.mark.parametrize("x64", [False, True])
def test_lambda_ddim_at_lam_0_is_ddim(x64):
    """lam = 0: identical samples (and trajectories) to samplers.ddim on a nonlinear denoiser, with the
    grid traced through jit (the coefficients then come through pure_callback) and concrete."""
    tol = 1e-12 if x64 else 2e-6
    g = full_grid(10)
    z, traj = run("lambda_ddim", 10, (8, 3), "nonlinear", x64)(g, 0.0)
    z_ddim, traj_ddim = run("ddim", 10, (8, 3), "nonlinear", x64)(g)
    np.testing.assert_allclose(z, z_ddim, atol=tol)
    np.testing.assert_allclose(traj, traj_ddim, atol=tol)
    if x64:
        return
    concrete = integrators.lambda_ddim(nonlinear_denoiser, KEY, (8, 3), logsnrs=schedules.grid(10))
    np.testing.assert_allclose(concrete, run("ddim", 10, (8, 3), "nonlinear", False)(full_grid(10))[0], atol=2e-6)
    mu, nu = integrators.conjugate_coefficients(full_grid(10))
    mu_d, nu_d, _ = (np.asarray(v) for v in samplers.ddim_coefficients(logsnr_t=jnp.asarray(full_grid(10)[:-1]),
                                                                        logsnr_s=jnp.asarray(full_grid(10)[1:])))
    np.testing.assert_allclose(mu[:, 0], mu_d, rtol=1e-6)
    np.testing.assert_allclose(nu[:, 0], nu_d, rtol=1e-6)


# ----------------------------------------------------------------------------- the polynomial chain


def zhat_recurrence(denoise, z0, logsnrs, lam, r):
    """Formula (3) in the conjugate variable, float64, from the weight tables (not from mu, nu):
    ``z_hat_s = z_hat_t - lam sum_j V_ij z_hat_{i-j} - sum_j W_ij eps_hat_{i-j}``, ``W = w e^{lam s} / alpha_s``."""
    tab = integrators.conjugate_weights(logsnrs, lam=lam, r=r)
    t, w, V, q = tab["t"], tab["w"], tab["V"], tab["q"]
    a, s = alpha64(logsnrs), sigma64(logsnrs)
    z, zh, eps = [np.asarray(z0, np.float64)], [], []
    for i in range(len(logsnrs) - 1):
        zh.append(np.exp(lam * t[i]) * z[i] / a[i])
        x = np.asarray(denoise(jnp.asarray(z[i]), logsnrs[i]))
        eps.append((z[i] - a[i] * x) / s[i])
        W = w[i] * np.exp(lam * t[i + 1]) / a[i + 1]
        nxt = zh[i] - sum(lam * V[i, j] * zh[i - j] + W[j] * eps[i - j] for j in range(q[i] + 1))
        z.append(a[i + 1] * np.exp(-lam * t[i + 1]) * nxt)
    return np.stack(z)


@pytest.mark.parametrize("r", [1, 2, 3])
def test_chain_matches_the_zhat_recurrence(r):
    """The compiled chain (the banded map (4) on mu, nu, history carried through the scan) equals the
    z_hat form (3) to 1e-10, for lam = 0 and 0.7, on a sub-range grid; and, as GGDM parameters
    (``ggdm_params``), samplers.GGDM runs the same chain."""
    g = sub_grid(10)
    with jax.enable_x64(True):
        for lam in (0.0, 0.7):
            z, traj = run("conjugate_poly", 10, (16, 2), "gaussian", True, r=r)(g, lam)
            ref = zhat_recurrence(gaussian_denoiser, traj[0], g, lam, r)
            np.testing.assert_allclose(traj, ref, rtol=1e-10, atol=1e-12, err_msg=f"lam {lam}")
        if r == 3:
            params = integrators.ggdm_params(g, lam=0.7, r=r)
            z_ggdm = jax.jit(lambda p, gg: samplers.GGDM.sample(p, gaussian_denoiser, KEY, (16, 2), logsnrs=gg))(
                params, jnp.asarray(g))
            np.testing.assert_allclose(z_ggdm, z, rtol=1e-10, atol=1e-12)


def test_polynomial_integrator_beats_ddim_on_the_default_grid():
    """On Gaussian data, even cosine grid -20..20, lam = 0, K = 10: the error falls with the degree r
    (measured relative errors 0.144, 0.038, 0.0098, 0.0025 for r = 0..3; DPM-Solver++(2M) 0.040 and
    Heun 0.027 with 18 NFE, measured the same way)."""
    g = full_grid(10)
    errors = []
    with jax.enable_x64(True):
        for r in range(4):
            z, traj = run("conjugate_poly", 10, (16, 2), "gaussian", True, r=r)(g, 0.0)
            exact = G.flow(traj[0], logsnr_t=g[0], logsnr_s=g[-1])
            errors.append(float(jnp.linalg.norm(z - exact) / jnp.linalg.norm(exact - alpha64(g[-1]) * G.m)))
    assert np.all(np.diff(errors) < 0) and errors[0] > 0.1 and errors[3] < 0.004, errors


def test_gradient_wrt_network_weights_with_and_without_remat():
    """The chain differentiates w.r.t. the denoiser's weights (as distillation needs), remat or not
    alike, and matches a central finite difference (float64). The grid is traced, so the tables come
    through pure_callback, which has no derivative and needs none."""
    with jax.enable_x64(True):
        w = 0.5 * jax.random.normal(KEY, (3, 3), jnp.float64)
        d = jax.random.normal(jax.random.PRNGKey(1), (3, 3), jnp.float64)

        def loss(w, g, remat):
            den = lambda z, logsnr: jnp.tanh(z @ w + 0.1 * logsnr)
            return jnp.mean(integrators.conjugate_poly(den, KEY, (16, 3), logsnrs=g, r=2, remat=remat) ** 2)

        vg = jax.jit(jax.value_and_grad(loss), static_argnums=2)
        g = jnp.asarray(full_grid(5))
        (_, grad_remat), (_, grad_plain) = vg(w, g, True), vg(w, g, False)
        np.testing.assert_allclose(grad_remat, grad_plain, rtol=1e-12)
        h = 1e-5
        fd = (vg(w + h * d, g, True)[0] - vg(w - h * d, g, True)[0]) / (2 * h)
        np.testing.assert_allclose(jnp.vdot(grad_remat, d), fd, rtol=1e-6)


# ----------------------------------------------------------------------------- orders on Gaussian data


def gaussian_error(logsnrs, lam, r, *, exact_start=False):
    """Signed relative error of the integrator's map on Gaussian data from the one-sigma point
    ``z_0 = alpha_0 m + sqrt(v_0)``: ``(z_K - z*_K) / (z*_K - alpha_K m)``, z* the closed-form flow.
    Float64 recurrence (4) on the sampler's own tables. ``exact_start``: the first r states are the
    exact ones (a multistep method's starting values), the rest from the integrator."""
    mu, nu = integrators.conjugate_coefficients(logsnrs, lam=lam, r=r)
    a = alpha64(logsnrs)
    exact = a * G.m + np.sqrt(G.variance64(logsnrs))        # the flow of the one-sigma point
    z, x = [exact[0]], []
    for i in range(len(logsnrs) - 1):
        x.append(G.m + G.gain64(logsnrs[i]) * (z[i] - a[i] * G.m))
        nxt = sum(nu[i, j] * z[i - j] + mu[i, j] * x[i - j] for j in range(min(r, i) + 1))
        z.append(exact[i + 1] if exact_start and i < r else nxt)
    return (z[-1] - exact[-1]) / (exact[-1] - a[-1] * G.m)


def slopes(errors):
    """Observed orders ``log2(e_K / e_2K)`` for errors at K, 2K, 4K, ..."""
    e = np.abs(np.asarray(errors))
    return np.log2(e[:-1] / e[1:])


def test_lambda_ddim_is_first_order():
    """lambda-DDIM converges at order 1 for several lam (slopes within 0.3 of 1 at K = 80, 160, 320).

    Measured on log-SNR -5..5 (even in cosine time): the full -20..20 grid is pre-asymptotic for
    lam != 0 up to thousands of steps, because the Euler step of ``lam z_hat`` errs by
    ``lam h (alpha_s / alpha_t) z_t`` and ``1 / alpha = e^10`` at logsnr -20 (module notes); there the
    error is 1.3 (lam = 1e-3) and 7e2 (lam = 1) at K = 5, against DDIM's 0.27.
    """
    for lam in (-0.5, 0.0, 0.5, 2.0):
        p = slopes([gaussian_error(sub_grid(K), lam, 0) for K in (80, 160, 320)])
        assert np.all(np.abs(p - 1) < 0.3), (lam, p)
    assert abs(gaussian_error(full_grid(5), 1e-3, 0)) > 1 > 0.3 > abs(gaussian_error(full_grid(5), 0.0, 0))


@pytest.mark.parametrize("r", [1, 2, 3])
def test_polynomial_integrator_of_degree_r_has_order_r_plus_1(r):
    """Order r + 1 for lam in {-1, 0, 1}: slopes within 0.3 of r + 1 at K = 160, 320, 640 (80..320 for
    r = 1; log-SNR -5..5, as above), from exact starting values for the first r states.

    A k-step method has its order only from starting values that accurate; the sampler starts with
    the lower orders (Euler first, whose O(h^2) local error is not damped later), which caps the
    global order at min(r + 1, 2): :func:`test_lower_order_start_caps_the_order_at_2`.
    """
    Ks = (80, 160, 320) if r == 1 else (160, 320, 640)
    for lam in (-1.0, 0.0, 1.0):
        p = slopes([gaussian_error(sub_grid(K), lam, r, exact_start=True) for K in Ks])
        assert np.all(np.abs(p - (r + 1)) < 0.3), (lam, p)


def test_lower_order_start_caps_the_order_at_2():
    """As the sampler runs it (lower orders for the first steps, no exact start), degrees 2 and 3
    converge at order 2 (slopes within 0.3 of 2 at K = 160, 320, 640; measured 2.0-2.09 and 1.85-2.02),
    still with smaller errors than degree 1 at lam = 0."""
    for r in (2, 3):
        for lam in (-1.0, 0.0, 1.0):
            p = slopes([gaussian_error(sub_grid(K), lam, r) for K in (160, 320, 640)])
            assert np.all(np.abs(p - 2) < 0.3), (r, lam, p)
    e = [abs(gaussian_error(sub_grid(40), 0.0, r)) for r in (1, 2, 3)]
    assert e[0] > e[1] > e[2], e


# ----------------------------------------------------------------------------- NFE, registry, bad input


@pytest.mark.parametrize("K", [1, 5])
def test_nfe_counts_actual_network_calls(K):
    """``nfe(K)`` equals the denoiser calls executed (counted at run time under jit), for both samplers,
    with and without remat."""
    calls = {}

    def counting(name):
        return counting_denoiser(calls, name, nonlinear_denoiser)

    @jax.jit
    def both(logsnrs):
        return (integrators.lambda_ddim(counting("lambda_ddim"), KEY, (4, 2), logsnrs=logsnrs, lam=0.3),
                integrators.conjugate_poly(counting("conjugate_poly"), KEY, (4, 2), logsnrs=logsnrs, r=3,
                                           remat=False))

    jax.block_until_ready(both(schedules.grid(K)))
    jax.effects_barrier()
    assert calls == {name: samplers.SAMPLERS[name].nfe(K) for name in ("lambda_ddim", "conjugate_poly")}
    assert integrators.nfe(K) == K


def test_registry_and_import_order():
    """The integrators are registered in samplers.SAMPLERS (samplers imports this module; this module
    imports no samplers, so the two import in either order)."""
    for name in ("lambda_ddim", "conjugate_poly"):
        entry = samplers.SAMPLERS[name]
        assert isinstance(entry, samplers.Sampler) and entry.name == name and entry.nfe(7) == 7
        assert entry.sample is getattr(integrators, name) and entry.takes_schedule
    for first, second in (("integrators", "samplers"), ("samplers", "integrators")):
        code = (f"from ddss_lite import {first}, {second}; from ddss_lite import integrators, samplers; "
                "print(samplers.get('lambda_ddim').sample is integrators.lambda_ddim)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "True" in out.stdout, out.stderr


def test_bad_input_raises_value_error():
    g = schedules.grid(4)
    den = nonlinear_denoiser
    for lam in (float("nan"), float("inf"), "0.5", [0.1, 0.2], True):
        with pytest.raises(ValueError, match="lam"):
            integrators.lambda_ddim(den, KEY, (4, 2), logsnrs=g, lam=lam)
        with pytest.raises(ValueError, match="lam"):
            integrators.conjugate_poly(den, KEY, (4, 2), logsnrs=g, lam=lam)
    with pytest.raises(ValueError, match="lam.*overflows"):
        integrators.conjugate_poly(den, KEY, (4, 2), logsnrs=g, lam=1e4)
    with pytest.raises(ValueError, match="lam.*overflows"):
        integrators.phi(g, lam=1e4)
    for r in (4, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="r "):
            integrators.conjugate_poly(den, KEY, (4, 2), logsnrs=g, r=r)
        with pytest.raises(ValueError, match="r "):
            integrators.conjugate_coefficients(g, r=r)
    with pytest.raises(ValueError, match="logsnrs.*length"):
        integrators.conjugate_poly(den, KEY, (4, 2), logsnrs=jnp.array([1.0]))
    with pytest.raises(ValueError, match="logsnrs.*monotone"):
        integrators.lambda_ddim(den, KEY, (4, 2), logsnrs=g[::-1])
    with pytest.raises(ValueError, match="logsnrs.*monotone"):
        integrators.conjugate_weights(g[::-1])
    with pytest.raises(ValueError, match="lam"):
        integrators.phi(g, lam=float("nan"))
    with pytest.raises(ValueError, match="K"):
        integrators.nfe(0)
    with pytest.raises(ValueError, match="x_hat of shape"):
        integrators.conjugate_poly(lambda z, logsnr: z[:, :1], KEY, (4, 2), logsnrs=g)
    with pytest.raises(ValueError, match="z_init"):
        integrators.lambda_ddim(den, KEY, (4, 2), logsnrs=g, z_init=jnp.zeros((4, 3)))


def test_nonfinite_prediction_is_reported_with_its_step():
    """A NaN from the denoiser raises ValueError naming the first bad step (concrete and under jit)."""
    g = schedules.grid(4)
    bad = lambda z, logsnr: jnp.where(logsnr > 1, jnp.nan, 0.5 * z)     # logsnrs: -20, -1.8, 0, 1.8, 20
    with pytest.raises(ValueError, match="not finite.*step 3"):
        integrators.conjugate_poly(bad, KEY, (4, 2), logsnrs=g, r=2)
    with pytest.raises(Exception, match="not finite.*step 3"):
        jax.block_until_ready(jax.jit(lambda gg: integrators.lambda_ddim(bad, KEY, (4, 2), logsnrs=gg))(g))


# ----------------------------------------------------------------------------- the model's own time


def rho_linear_vp(u, sched):
    """``rho = sigma / alpha = sqrt(1 - alpha^2) / alpha`` of the linear VP SDE at time u, from its
    ``log alpha`` written here (not from the library)."""
    log_alpha = -0.25 * (sched.beta_max - sched.beta_min) * u ** 2 - 0.5 * sched.beta_min * u
    return np.sqrt(-np.expm1(2.0 * log_alpha)) / np.exp(log_alpha)


@pytest.mark.parametrize("lam", [0.0, 1.5, -3.0])
def test_phi_on_the_linear_vp_schedule_is_integrated_in_its_own_time(lam):
    """On ``schedules.LinearVP()`` (the paper's schedule) the integrators' time is that schedule's t:
    ``Phi(t_i) = int_{t_min}^{t_i} e^{lam u} d rho_u``, checked against integration by parts in u,
    ``[e^{lam u} rho]_{t_min}^{t_i} - lam int rho e^{lam u} du`` with quad (no derivative of rho
    taken), to 1e-9 relative; the tables' times are ``schedule.t_from_logsnr`` of the grid."""
    sched = schedules.LinearVP()
    lo, hi = sched.logsnr_range
    g = np.linspace(lo, hi, 9)
    t = integrators.conjugate_weights(g, lam=lam, r=1, schedule=sched)["t"]
    np.testing.assert_allclose(t, sched.t_from_logsnr(g), rtol=1e-14)
    t0 = sched.t_min
    ref = np.array([np.exp(lam * ti) * rho_linear_vp(ti, sched) - np.exp(lam * t0) * rho_linear_vp(t0, sched)
                    - lam * quad(lambda u: rho_linear_vp(u, sched) * np.exp(lam * u), t0, ti) for ti in t])
    np.testing.assert_allclose(integrators.phi(g, lam=lam, schedule=sched), ref, rtol=1e-9, atol=1e-12)


def test_weights_on_a_discrete_schedule_integrate_polynomials_exactly():
    """On DDPM's discrete schedule (time ``(n + 1) / T``, piecewise linear in log-SNR between the
    table's timesteps): ``sum_j w_ij p(t_{i-j}) = alpha_s int_s^t p(u) e^{lam (u - s)} d rho`` against
    quad in log-SNR, ``d rho = -rho / 2 d logsnr``, with the library's time map (the integrand, not the
    map, is what is checked), to 1e-10: the quadrature splits its pieces at the map's kinks, one at
    every integer timestep (without the split the tables are off by up to 4e-5)."""
    sched = schedules.DiscreteVP.linear()
    lo, hi = sched.logsnr_range
    g = np.linspace(lo, hi, 7)
    lam, r = 2.0, 2
    tab = integrators.conjugate_weights(g, lam=lam, r=r, schedule=sched)
    t, w = tab["t"], tab["w"]
    u = lambda l: float(sched.t_from_logsnr(np.clip(l, lo, hi)))
    knots = np.sort(sched.logsnr_table)
    for i in range(6):
        nodes = t[i - np.arange(min(i, r) + 1)]
        pts = knots[(knots > g[i]) & (knots < g[i + 1])]
        for k in range(min(i, r) + 1):
            f = lambda l: u(l) ** k * np.exp(lam * (u(l) - t[i + 1])) * 0.5 * np.exp(-0.5 * l)
            ref = alpha64(g[i + 1]) * sum(integrate.quad(f, a, b, epsabs=0, epsrel=1e-12)[0]
                                          for a, b in zip(np.r_[g[i], pts], np.r_[pts, g[i + 1]]))
            np.testing.assert_allclose(w[i, :len(nodes)] @ nodes ** k, ref, rtol=1e-10, err_msg=f"step {i}, u^{k}")


def test_the_sampler_call_runs_in_the_models_time():
    """``samplers.get(name)(model, ...)`` passes ``model.schedule``: on a model of the linear VP schedule
    the samples equal the bare sampler with ``schedule=LinearVP()`` and differ from the book's time at
    lam != 0; on a model of the book's schedule they equal the bare call without a schedule, bit for
    bit (the book's lambda-DDIM is unchanged). A schedule other than the model's is refused."""
    from ddss_lite import models

    sched = schedules.LinearVP()
    lin = models.from_denoiser(nonlinear_denoiser, schedule=sched, data_shape=(2,))
    book = models.from_denoiser(nonlinear_denoiser, schedule=schedules.Cosine(), data_shape=(2,))
    for name, opts in (("lambda_ddim", {}), ("conjugate_poly", {"r": 2})):
        s = samplers.get(name)
        fn = getattr(integrators, name)
        grid = samplers.resolve_grid(lin, 6)
        x = s(lin, KEY, 4, nfe=6, lam=0.8, **opts)
        np.testing.assert_array_equal(x, fn(nonlinear_denoiser, KEY, (4, 2), logsnrs=grid, lam=0.8,
                                            schedule=sched, **opts))
        assert not np.allclose(x, fn(nonlinear_denoiser, KEY, (4, 2), logsnrs=grid, lam=0.8, **opts))
        grid = samplers.resolve_grid(book, 6)
        np.testing.assert_array_equal(s(book, KEY, 4, nfe=6, lam=0.8, **opts),
                                      fn(nonlinear_denoiser, KEY, (4, 2), logsnrs=grid, lam=0.8, **opts))
        with pytest.raises(ValueError, match="schedule"):
            s(lin, KEY, 4, nfe=6, lam=0.8, schedule=schedules.Cosine(), **opts)
    with pytest.raises(TypeError, match="schedule"):
        integrators.conjugate_coefficients(schedules.grid(4), schedule="cosine")


def test_tune_lam_picks_the_argmin_of_the_score_over_direct_runs():
    """``tune_lam`` on Gaussian data: every lam's samples equal a direct lambda-DDIM call on the same
    noise (one program with lam traced), the chosen lam minimises the score (here the variance error
    against the data's), and the cost is n * nfe * len(lams); bad input is refused by name."""
    from ddss_lite import models

    model = models.from_denoiser(gaussian_denoiser, schedule=schedules.Cosine(), data_shape=(3,))
    lams, key, n, nfe = (-3e-3, -1e-3, 0.0, 1e-3), jax.random.PRNGKey(3), 256, 8
    err = lambda x: abs(float(np.var(x)) - G.s ** 2)
    seen = {}
    sweep = integrators.tune_lam(model, nfe, lams, score=err, key=key, n=n, on_samples=seen.__setitem__)
    g = samplers.resolve_grid(model, nfe, data_end=False)
    for lam in lams:
        direct = np.asarray(integrators.lambda_ddim(gaussian_denoiser, key, (n, 3), logsnrs=g, lam=lam))
        np.testing.assert_allclose(seen[lam], direct, rtol=1e-5, atol=1e-6)
        assert sweep.scores[lam] == err(seen[lam])
    assert sweep.best == min(lams, key=lambda lam: err(seen[lam])) and sweep.cost_nfe == n * nfe * len(lams)
    poly = integrators.tune_lam(model, nfe, (0.0,), score=err, key=key, n=n, r=2)
    assert poly.best == 0.0
    with pytest.raises(ValueError, match="lam"):
        integrators.tune_lam(model, nfe, (0.0, float("nan")), score=err, key=key, n=n)
    with pytest.raises(ValueError, match="score: not finite"):
        integrators.tune_lam(model, nfe, (0.0,), score=lambda x: float("nan"), key=key, n=n)
    with pytest.raises(TypeError, match="score must be a function"):
        integrators.tune_lam(model, nfe, (0.0,), score=None, key=key, n=n)
    with pytest.raises(TypeError, match="ddss_lite.Model"):
        integrators.tune_lam(gaussian_denoiser, nfe, (0.0,), score=err, key=key, n=n)
    with pytest.raises(ValueError, match="at least one"):
        integrators.tune_lam(model, nfe, (), score=err, key=key, n=n)


def test_a_traced_bad_lam_is_named_not_blamed_on_the_denoiser():
    """Under jit lam is a tracer: a NaN or overflowing lam is caught on the host where the tables are
    made, and the error names lam (it used to surface as a non-finite x_hat, blamed on the denoiser)."""
    g = schedules.grid(4)
    run = jax.jit(lambda lam: integrators.lambda_ddim(nonlinear_denoiser, KEY, (4, 2), logsnrs=g, lam=lam))
    with pytest.raises(Exception, match="lam must be finite, got nan"):
        jax.block_until_ready(run(jnp.float32(np.nan)))
    with pytest.raises(Exception, match="lam = .* overflows"):
        jax.block_until_ready(run(jnp.float32(1e4)))
    assert np.all(np.isfinite(np.asarray(run(jnp.float32(0.0)))))
