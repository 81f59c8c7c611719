"""One DDSS search step (sample K steps -> features -> linear KID -> gradient -> Adam) at
K = 5, 10, 20, with and without rematerialisation: wall time and memory, printed as ratios taken
in one run, beside the network's forwards per second.

The step is the one chapter 3 runs in the chosen profile: the profile's image shape
(:func:`ddss_lite.data.image_shape`: 8x8x1 digits in the smoke and cpu profiles, 32x32x3 CIFAR-10
in the accelerator profile), its denoising network (MLP or U-Net, ``digits_*`` sizes), the
book's optimisation classifier (``pretrained.CLASSIFIERS["opt"]``) for features, and its search
batch. Weights are random (timing does not depend on them) and no data is loaded, so the
accelerator profile's numbers can be taken on a GPU without CIFAR-10 on disk.

Memory is the temporary buffers XLA allocates for the compiled step
(``compiled.memory_analysis().temp_size_in_bytes``): the activations the gradient keeps, which is
what remat changes (the weights are the same with and without). On a GPU the device's own peak
(``memory_stats()["peak_bytes_in_use"]``) is recorded as well; it only grows within a process, so
it is read after each configuration and recorded as it stands then.

The numbers also go to ``<results dir>/ddss_step_<profile>.json``
(:func:`ddss_lite.paths.results_dir`) with the device named.

    python benchmarks/ddss_step.py                          # cpu profile: batch 256, 5 repeats
    python benchmarks/ddss_step.py --quick                  # batch 64, 2 repeats
    python benchmarks/ddss_step.py --profile accelerator    # on a GPU: the CIFAR-10 U-Net, batch 1024
    python benchmarks/ddss_step.py --profile accelerator --trace-only   # shapes only, in seconds
"""
from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddss_lite import data, ddss, diffusion, nets, paths, pretrained, samplers, schedules, store
from ddss_lite.profiles import get_profile


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def device_peak_mib():
    """The default device's peak memory in use so far (MiB), or None where the backend does not
    report it (the CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 64, 2 repeats")
    ap.add_argument("--profile", default="cpu", help="whose shapes, network and search batch (default cpu)")
    ap.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="sampling steps (default 5 10 20)")
    ap.add_argument("--batch", type=int, default=None, help="default: the profile's search batch (64 with --quick)")
    ap.add_argument("--hidden", type=int, default=None, help="network width or base channels (default: the profile's)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per step (default 5, 2 with --quick)")
    ap.add_argument("--output", default=None, help="JSON file (default: <results dir>/ddss_step_<profile>.json)")
    ap.add_argument("--trace-only", action="store_true",
                    help="trace every step with jax.eval_shape (shapes only: nothing compiled, timed or written)")
    args = ap.parse_args(argv)
    P = get_profile(args.profile)
    for name, low in (("batch", 2), ("hidden", 1), ("repeats", 1)):   # KID needs two samples
        if getattr(args, name) is not None and getattr(args, name) < low:
            ap.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if min(args.ks) < 1:
        ap.error(f"--ks must all be >= 1, got {args.ks}")
    batch = args.batch or (64 if args.quick else P.search_batch)
    repeats = args.repeats or (2 if args.quick else 5)
    hidden = args.hidden or P.digits_hidden
    image = data.image_shape(P.dataset)
    shape = (batch, *image)
    key = jax.random.PRNGKey(0)
    net = nets.make_denoiser_net(P.digits_net, hidden=hidden, depth=P.digits_depth)

    def init(f, *a):
        """Random weights (one compile of the initialiser), or zeros of their shapes when only tracing."""
        if args.trace_only:
            return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(f, *a))
        return jax.jit(f)(*a)

    params = init(net.init, key, jnp.zeros((1, *image)), jnp.zeros((1,)))["params"]
    denoise = diffusion.make_denoiser(nets.apply_fn(net), params, prediction="v")
    clf = pretrained.CLASSIFIERS["opt"][0]()
    cparams = init(clf.init, key, jnp.zeros((1, *image)))["params"]
    phi = lambda x: clf.apply({"params": cparams}, x, features=True)
    real = jax.random.normal(key, (512, jax.eval_shape(phi, jnp.zeros((1, *image))).shape[-1]))
    opt = optax.adam(1e-3)

    def make_step(K, remat):
        loss = ddss.make_loss(samplers.GGDM, denoise, phi, real, shape, logsnrs=schedules.grid(K), remat=remat)

        @jax.jit
        def step(p, s, k):
            g = jax.grad(loss)(p, k)
            u, s = opt.update(g, s, p)
            return optax.apply_updates(p, u), s

        p0 = samplers.GGDM.init_from_ddim(K)
        return step, p0, opt.init(p0)

    sizes = dict(profile=args.profile, net=P.digits_net, hidden=hidden, image=list(image), batch=batch,
                 repeats=repeats, family="ggdm", features=type(clf).__name__)
    if args.trace_only:      # a check before spending GPU time: every configuration traces
        traced = []
        for K in args.ks:
            for remat in (True, False):
                step, p0, s0 = make_step(K, remat)
                p1, _ = jax.eval_shape(step, p0, s0, key)
                assert jax.tree_util.tree_map(lambda a: a.shape, p1) == jax.tree_util.tree_map(jnp.shape, p0)
                traced.append((K, remat))
        print(f"traced {len(traced)} steps ({args.profile} profile, {'x'.join(map(str, image))}, batch {batch})")
        return dict(sizes=sizes, traced=traced)

    z = jax.random.normal(key, shape)
    fwd = median_time(jax.jit(lambda z: denoise(z, 0.0)), z, repeats=repeats * 4)
    dev = jax.devices()[0]
    print(f"{dev.platform} ({dev.device_kind}), {args.profile} profile: {P.digits_net} (width {hidden}) on "
          f"{'x'.join(map(str, image))} images, batch {batch}")
    print(f"network forward {fwd * 1e3:.2f} ms: {1 / fwd:.1f} forwards/s, {batch / fwd:.0f} images/s")
    print(f"{'K':>3} {'remat':>6} {'step ms':>9} {'temp MiB':>9} {'step/(K fwd)':>13}")
    rows = {}
    for K in args.ks:
        for remat in (True, False):
            step, p0, s0 = make_step(K, remat)
            m = step.lower(p0, s0, key).compile().memory_analysis()
            temp = m.temp_size_in_bytes / 2**20
            t = median_time(step, p0, s0, key, repeats=repeats)
            rows[K, remat] = dict(K=K, remat=remat, step_ms=t * 1e3, temp_mib=temp,
                                  step_per_K_forwards=t / (K * fwd), device_peak_mib_so_far=device_peak_mib())
            print(f"{K:>3} {str(remat):>6} {t * 1e3:>9.1f} {temp:>9.1f} {t / (K * fwd):>13.2f}")
    print("\nratios (same run):")
    ratios = {}
    for K in args.ks:
        r, n = rows[K, True], rows[K, False]
        ratios[K] = dict(time=r["step_ms"] / n["step_ms"], temp=r["temp_mib"] / n["temp_mib"])
        print(f"  K={K:>2}: remat/no-remat time {ratios[K]['time']:.2f}, memory {ratios[K]['temp']:.2f}")
    lo, hi = min(args.ks), max(args.ks)
    if hi > lo:
        for remat in (True, False):
            print(f"  K={hi} / K={lo} ({'remat' if remat else 'no remat'}): "
                  f"memory {rows[hi, remat]['temp_mib'] / rows[lo, remat]['temp_mib']:.2f}, "
                  f"time {rows[hi, remat]['step_ms'] / rows[lo, remat]['step_ms']:.2f}")
    record = dict(
        device=dict(platform=dev.platform, device_kind=dev.device_kind, device_count=jax.device_count(),
                    processor=platform.processor() or platform.machine(), jax=jax.__version__),
        sizes=sizes,
        forward_ms=fwd * 1e3, forwards_per_s=1 / fwd, images_per_s=batch / fwd,
        rows=list(rows.values()), remat_over_no_remat={str(K): v for K, v in ratios.items()},
        when=time.strftime("%Y-%m-%dT%H:%M:%S"))
    out = args.output or str(paths.results_dir() / f"ddss_step_{args.profile}.json")
    store.atomic_write_json(out, record)
    print(f"\nwritten to {out}")
    return record


if __name__ == "__main__":
    main()
