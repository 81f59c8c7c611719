"""Wall time of one progressive-distillation step against one teacher training step, same network and batch.

Both are ``train.make_step`` steps (Adam, one jitted call): the teacher's is the v-MSE denoising loss
the pre-trained models are trained with (:mod:`ddss_lite.pretrained`); the distillation step adds two
teacher forward passes (the two DDIM steps of the target, Salimans & Ho 2022, Algorithm 2) to the
student's forward and backward pass (:func:`ddss_lite.distill.make_distillation_loss`). The two are
timed in alternation in one run (so a busy machine slows both alike), after compilation; printed:
medians, compile times and the ratio distillation / training. Nothing is asserted.

    python benchmarks/distill_step.py            # the cpu profile's digits MLP (width 512, depth 3), batch 128,
                                                 # and its toy MLP (width 256, depth 3), batch 512
    python benchmarks/distill_step.py --quick    # width 128, batch 64, fewer repeats: well under a minute
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from ddss_lite import data, diffusion, distill, nets, schedules, train
from ddss_lite.pretrained import Pretrained
from ddss_lite.profiles import get_profile


def steps_for(name, *, hidden, depth, batch, N):
    """``(train_step, distill_step, state)`` for the digits or toy denoiser at random init."""
    if name == "digits":
        x = jnp.asarray(data.load_digits_split().x_train)
        sample = lambda k, n: x[jax.random.randint(k, (n,), 0, x.shape[0])]
    else:
        sample = lambda k, n: data.toy2d("checkerboard", k, n)
    x0 = sample(jax.random.PRNGKey(0), 1)
    module = nets.make_denoiser_net("mlp", hidden=hidden, depth=depth)
    params = module.init(jax.random.PRNGKey(0), x0, jnp.zeros((1,)))["params"]
    teacher = Pretrained(name, module, params, np.zeros(1), {}, "v", tuple(x0.shape[1:]))
    apply = nets.apply_fn(module)
    denoising = diffusion.make_denoising_loss(apply, logsnr_fn=schedules.logsnr_cosine, prediction="v", weighting="v")
    train_loss = lambda p, k: denoising(p, sample(jax.random.fold_in(k, 1), batch), jax.random.fold_in(k, 2))
    distill_loss = distill.make_distillation_loss(teacher.denoiser(), apply, N=N, data=sample, batch=batch)
    opt = distill.make_optimizer(1e-4, 1000)
    state = train.init_state(params, opt, 1)
    return train.make_step(train_loss, opt, 0.0), train.make_step(distill_loss, opt, 0.0), state


def measure(name, *, hidden, depth, batch, N, repeats):
    train_step, distill_step, state = steps_for(name, hidden=hidden, depth=depth, batch=batch, N=N)
    key = jax.random.PRNGKey(1)
    compile_s = {}
    for label, fn in (("train", train_step), ("distill", distill_step)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(state, key))
        compile_s[label] = time.perf_counter() - t0
    times = {"train": [], "distill": []}
    for i in range(repeats):                     # alternate, so load changes hit both alike
        for label, fn in (("train", train_step), ("distill", distill_step)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(state, jax.random.fold_in(key, i)).params)
            times[label].append(time.perf_counter() - t0)
    t, d = np.asarray(times["train"]), np.asarray(times["distill"])
    return dict(train_ms=1e3 * np.median(t), distill_ms=1e3 * np.median(d), ratio=np.median(d) / np.median(t),
                pair_ratio=float(np.median(d / t)), compile_train_s=compile_s["train"],
                compile_distill_s=compile_s["distill"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="width 128, batch 64, fewer repeats")
    parser.add_argument("--N", type=int, default=64, help="the student's steps (the grid only; no effect on cost)")
    parser.add_argument("--repeats", type=int, default=None, help="default 50 (15 with --quick)")
    args = parser.parse_args(argv)
    P = get_profile("cpu")
    repeats = args.repeats or (15 if args.quick else 50)
    if args.quick:
        cases = [("digits", 128, P.digits_depth, 64), ("toy", 128, P.toy_depth, 64)]
    else:
        cases = [("digits", P.digits_hidden, P.digits_depth, P.digits_batch),
                 ("toy", P.toy_hidden, P.toy_depth, P.toy_batch)]
    print(f"distillation step vs training step | {jax.devices()[0].platform} x{jax.device_count()} | "
          f"jax {jax.__version__} | {repeats} alternating repeats, medians\n")
    print(f"{'model':>7} {'width':>6} {'depth':>6} {'batch':>6} {'train ms':>9} {'distill ms':>11} {'ratio':>6} "
          f"{'pairwise':>9} {'compile s (train/distill)':>26}")
    for name, hidden, depth, batch in cases:
        r = measure(name, hidden=hidden, depth=depth, batch=batch, N=args.N, repeats=repeats)
        print(f"{name:>7} {hidden:>6} {depth:>6} {batch:>6} {r['train_ms']:>9.2f} {r['distill_ms']:>11.2f} "
              f"{r['ratio']:>6.2f} {r['pair_ratio']:>9.2f} "
              f"{r['compile_train_s']:>14.1f} / {r['compile_distill_s']:.1f}",
              flush=True)
    print("\nratio = median distillation step / median training step (pairwise: median of the per-repeat ratios).\n"
          "A distillation step runs the teacher forward twice and the student forward and backward once; a\n"
          "training step runs the network forward and backward once, so the ratio is about (2 f + f + b) / (f + b)\n"
          "with f, b a forward and a backward pass: 1.67 if b = 2 f.")


if __name__ == "__main__":
    main()
