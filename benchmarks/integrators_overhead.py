"""Sampler overhead of the conjugate integrators: wall time of a K-step sample / K network forwards alone.

For a small random MLP denoiser, each sampler draws a batch in K steps (one network evaluation per
step); K forwards of the same shapes are also timed alone (a ``lax.scan`` of the network over the
grid's log-SNRs, outputs summed). The ratio is the sampler's cost in units of its network calls:
1.00 means the integrator's own arithmetic (coefficients, history, checks) is free. DDIM is the
reference. Each sampler is timed with the grid closed over (its coefficient tables are constants of
the compiled program) and, for the conjugate integrators, with the grid passed as an argument (the
tables then come through ``jax.pure_callback`` from a host cache at every call). Also printed: the
one-time host cost of the float64 coefficient tables per grid. Time is the median over interleaved
rounds (each function once per round, each sample a loop of calls) after compilation, all in one
run. Nothing is asserted.

    python benchmarks/integrators_overhead.py            # dim 64, width 512, depth 3, batch 256, K = 10, 20, 40
    python benchmarks/integrators_overhead.py --quick    # width 256, batch 64, K = 10, 20: about 40 s on 2 CPU cores
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import mlp_denoiser, mlp_params  # benchmarks/common.py
from ddss_lite import integrators, samplers, schedules


def interleaved_times(fns: dict, *, repeats: int, min_seconds: float) -> dict:
    """Median seconds per call of each zero-argument ``fns[name]``, timed in ``repeats`` interleaved
    rounds (every function once per round, so that drifts in machine load hit all alike), each sample
    a loop of enough calls to last about ``min_seconds``."""
    inner = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn())                            # compile + warm up
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        inner[name] = max(1, int(np.ceil(min_seconds / max(time.perf_counter() - t0, 1e-6))))
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                out = fn()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - t0) / inner[name])
    return {name: float(np.median(v)) for name, v in samples.items()}


def host_table_ms(logsnrs, *, lam, r, repeats):
    """Median host time (ms) of the float64 coefficient tables of one grid, caches cleared each time."""
    times = []
    for _ in range(repeats):
        integrators._weights_cached.cache_clear()
        integrators._coefficients_cached.cache_clear()
        t0 = time.perf_counter()
        integrators.conjugate_coefficients(logsnrs, lam=lam, r=r)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller MLP and batch, fewer K and repeats")
    parser.add_argument("--ks", type=int, nargs="+", default=None, help="default 10 20 40 (10 20 with --quick)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--width", type=int, default=None, help="default 512 (256 with --quick)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="default 256 (64 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved rounds, default 9 (5 with --quick)")
    parser.add_argument("--lam", type=float, default=0.0, help="lambda of the conjugate integrators (default 0)")
    args = parser.parse_args(argv)
    ks = args.ks or ([10, 20] if args.quick else [10, 20, 40])
    width = args.width or (256 if args.quick else 512)
    batch = args.batch or (64 if args.quick else 256)
    repeats = args.repeats or (5 if args.quick else 9)
    min_seconds = 0.02 if args.quick else 0.1

    key = jax.random.PRNGKey(0)
    denoise = mlp_denoiser(mlp_params(key, dim=args.dim, width=width, depth=args.depth))
    shape = (batch, args.dim)
    z = jax.random.normal(key, shape)
    print(f"sampler overhead | MLP dim {args.dim}, width {width}, depth {args.depth} | batch {batch} | "
          f"lam {args.lam} | {jax.devices()[0].platform} x{jax.device_count()} | jax {jax.__version__}\n")

    def forwards_alone(logsnrs):
        # K forwards of the same input in sequence, summed (one add per step keeps values bounded and
        # every forward live); the network never sees its own output, so nothing grows or degenerates.
        def run(z):
            body = lambda acc, logsnr: (acc + denoise(z, logsnr), None)
            return jax.lax.scan(body, jnp.zeros_like(z), logsnrs[:-1])[0]
        return jax.jit(run)

    samplers_ = {
        "ddim": lambda g: samplers.ddim(denoise, key, shape, logsnrs=g),
        "lambda_ddim": lambda g: integrators.lambda_ddim(denoise, key, shape, logsnrs=g, lam=args.lam),
        **{f"conjugate_poly r={r}": (lambda g, r=r: integrators.conjugate_poly(denoise, key, shape, logsnrs=g,
                                                                                lam=args.lam, r=r))
           for r in (1, 2, 3)},
    }
    rows = {}
    print(f"{'K':>4} {'sampler':<20} {'grid':<8} {'ms':>9} {'/ K fwd':>8}")
    for K in ks:
        g = schedules.grid(K)
        fwd_fn = forwards_alone(g)
        fns = {("K forwards alone", ""): lambda: fwd_fn(z)}
        for name, run in samplers_.items():
            closed = jax.jit(lambda run=run, g=g: run(g))
            fns[name, "closed"] = closed
            if name != "ddim":
                argument = jax.jit(run)
                fns[name, "argument"] = lambda argument=argument, g=g: argument(g)
        times = interleaved_times(fns, repeats=repeats, min_seconds=min_seconds)
        fwd = times["K forwards alone", ""]
        for (name, where), t in times.items():
            rows[K, name, where] = t / fwd
            print(f"{K:>4} {name:<20} {where:<8} {1e3 * t:>9.2f} {t / fwd:>8.2f}", flush=True)

    print("\nratios: sample time / (K network forwards alone), same run")
    names = list(samplers_)
    print(f"{'K':>4} " + " ".join(f"{n:>20}" for n in names))
    for K in ks:
        print(f"{K:>4} " + " ".join(f"{rows[K, n, 'closed']:>20.2f}" for n in names))
    print("grid as an argument (tables through pure_callback):")
    for K in ks:
        print(f"{K:>4} " + " ".join(f"{rows.get((K, n, 'argument'), float('nan')):>20.2f}" for n in names))

    print("\none-time host cost of the float64 coefficient tables (ms per grid, caches cleared)")
    print(f"{'K':>4} " + " ".join(f"{'r=' + str(r):>9}" for r in range(4)))
    for K in sorted(set(ks) | {100, 1000}):
        g = np.asarray(schedules.grid(K), np.float64)
        print(f"{K:>4} " + " ".join(f"{host_table_ms(g, lam=args.lam, r=r, repeats=3):>9.2f}" for r in range(4)))
    print("\nA ratio near 1 means the integrator's arithmetic is negligible next to the network; the\n"
          "polynomial integrator carries r past states and predictions and adds 2 r multiply-adds per step.")


if __name__ == "__main__":
    main()
