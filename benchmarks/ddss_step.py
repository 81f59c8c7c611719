"""One DDSS search step (sample K steps -> features -> linear KID -> gradient -> Adam) at
K = 5, 10, 20, with and without rematerialisation: wall time and XLA's temporary memory,
printed as ratios taken in one run. Uses the cpu profile's network shapes with random weights
(timing does not depend on the weights).

    python benchmarks/ddss_step.py            # batch 256, 5 timed repeats
    python benchmarks/ddss_step.py --quick    # batch 64, 2 repeats
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddss_lite import ddss, diffusion, nets, samplers, schedules
from ddss_lite.profiles import get_profile


def median_time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile + warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--profile", default="cpu")
    args = ap.parse_args(argv)
    P = get_profile(args.profile)
    batch, repeats = (64, 2) if args.quick else (P.search_batch, 5)
    shape = (batch, 8, 8, 1)
    key = jax.random.PRNGKey(0)
    net = nets.make_denoiser_net(P.digits_net, hidden=P.digits_hidden, depth=P.digits_depth)
    params = net.init(key, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))["params"]
    denoise = diffusion.make_denoiser(nets.apply_fn(net), params, prediction="v")
    clf = nets.MLPClassifier()
    cparams = clf.init(key, jnp.zeros((1, 8, 8, 1)))["params"]
    phi = lambda x: clf.apply({"params": cparams}, x, features=True)
    real = jax.random.normal(key, (512, 128))
    opt = optax.adam(1e-3)

    z = jax.random.normal(key, shape)
    fwd = median_time(jax.jit(lambda z: denoise(z, 0.0)), z, repeats=repeats * 4)
    print(f"device {jax.devices()[0].platform}, batch {batch}, network forward {fwd * 1e3:.2f} ms")
    print(f"{'K':>3} {'remat':>6} {'step ms':>9} {'temp MiB':>9} {'step/(K fwd)':>13}")
    rows = {}
    for K in (5, 10, 20):
        p0 = samplers.GGDM.init_from_ddim(K)
        for remat in (True, False):
            loss = ddss.make_loss(samplers.GGDM, denoise, phi, real, shape, logsnrs=schedules.grid(K), remat=remat)

            @jax.jit
            def step(p, s, k):
                g = jax.grad(loss)(p, k)
                u, s = opt.update(g, s, p)
                return optax.apply_updates(p, u), s

            s0 = opt.init(p0)
            mem = step.lower(p0, s0, key).compile().memory_analysis().temp_size_in_bytes / 2**20
            t = median_time(step, p0, s0, key, repeats=repeats)
            rows[K, remat] = (t, mem)
            print(f"{K:>3} {str(remat):>6} {t * 1e3:>9.1f} {mem:>9.1f} {t / (K * fwd):>13.2f}")
    print("\nratios (same run):")
    for K in (5, 10, 20):
        (tr, mr), (tn, mn) = rows[K, True], rows[K, False]
        print(f"  K={K:>2}: remat/no-remat time {tr / tn:.2f}, memory {mr / mn:.2f}")
    for remat in (True, False):
        print(f"  memory K=20 / K=5 ({'remat' if remat else 'no remat'}): {rows[20, remat][1] / rows[5, remat][1]:.2f}")
        print(f"  time   K=20 / K=5 ({'remat' if remat else 'no remat'}): {rows[20, remat][0] / rows[5, remat][0]:.2f}")


if __name__ == "__main__":
    main()
