"""Memory and time of one gradient step through the GGDM sampling chain, with and without remat.

A scalar loss of the samples is differentiated w.r.t. the GGDM parameters (mu, nu, s and
learned log-SNR logits) through the whole K-step chain (DDSS, Watson et al. 2022, section 4)
for a small random MLP denoiser. Peak temporary memory is XLA's compile-time figure
(``jax.jit(f).lower(...).compile().memory_analysis().temp_size_in_bytes``); time is the
median wall time of a few runs after compilation. Prints a table and the ratios
(remat / no-remat memory and time per K, and memory growth K_max / K_min). Nothing is asserted.

    python benchmarks/chain_remat.py            # dim 64, width 512, depth 3, batch 256, K = 5, 10, 20
    python benchmarks/chain_remat.py --quick    # width 256, batch 64: well under a minute on 2 CPU cores
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from common import mlp_denoiser, mlp_params  # benchmarks/common.py
from ddss_lite import samplers, schedules


def loss(params, denoise, key, shape, remat):
    """A scalar of the samples (stands in for the KID of DDSS): mean of z^2 plus a linear term."""
    z = samplers.GGDM.sample(params, denoise, key, shape, logsnrs=schedules.grid(samplers.GGDM.num_steps(params)),
                             remat=remat)
    return jnp.mean(z**2) + jnp.mean(z)


def measure(K, remat, *, denoise, shape, repeats, key):
    params = samplers.GGDM.init_from_ddim(K, learn_logsnrs=True)
    fn = jax.jit(jax.value_and_grad(lambda p: loss(p, denoise, key, shape, remat)))
    compiled = fn.lower(params).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(params))                 # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params))
        times.append(time.perf_counter() - t0)
    return temp, float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller MLP and batch, fewer repeats")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--width", type=int, default=None, help="default 512 (256 with --quick)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="default 256 (64 with --quick)")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (3 with --quick)")
    args = parser.parse_args(argv)
    width = args.width or (256 if args.quick else 512)
    batch = args.batch or (64 if args.quick else 256)
    repeats = args.repeats or (3 if args.quick else 5)

    key = jax.random.PRNGKey(0)
    denoise = mlp_denoiser(mlp_params(key, dim=args.dim, width=width, depth=args.depth))
    shape = (batch, args.dim)
    print(f"GGDM gradient step | MLP dim {args.dim}, width {width}, depth {args.depth} | batch {batch} | "
          f"{jax.devices()[0].platform} x{jax.device_count()} | jax {jax.__version__}")
    state = batch * args.dim * 4
    print(f"one state |z| = {state / 2**20:.3f} MiB\n")
    print(f"{'K':>4} {'remat':>6} {'temp MiB':>10} {'time ms':>9}")
    res = {}
    for K in args.ks:
        for remat in (False, True):
            temp, t = measure(K, remat, denoise=denoise, shape=shape, repeats=repeats, key=key)
            res[K, remat] = (temp, t)
            print(f"{K:>4} {str(remat):>6} {temp / 2**20:>10.2f} {1e3 * t:>9.1f}", flush=True)

    print("\nratios remat / no-remat")
    print(f"{'K':>4} {'memory':>8} {'time':>8}")
    for K in args.ks:
        (m1, t1), (m0, t0) = res[K, True], res[K, False]
        print(f"{K:>4} {m1 / m0:>8.2f} {t1 / t0:>8.2f}")
    k_lo, k_hi = min(args.ks), max(args.ks)
    print(f"\nmemory growth K={k_hi} / K={k_lo} (K ratio {k_hi / k_lo:.0f})")
    for remat in (False, True):
        print(f"  remat={str(remat):<5}  {res[k_hi, remat][0] / res[k_lo, remat][0]:.2f}")
    print("\nWithout remat every step stores the network's activations (O(K * activations)); with remat\n"
          "they are recomputed in the backward pass and what grows with K is one state and one\n"
          "prediction per step (O(K |z|)), at the price of one extra network forward pass per step.")


if __name__ == "__main__":
    main()
