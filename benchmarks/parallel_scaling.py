"""Data-parallel scaling: one DDSS search step and sampling throughput on 1, 2 and 4 devices.

Each configuration runs in its own process (the device count is fixed when JAX starts):
1, 2 and 4 simulated host devices in one process (``XLA_FLAGS=--xla_force_host_platform_device_count=N``),
2 processes of 2 devices each started through ``jax.distributed`` on 127.0.0.1 (gloo collectives),
and, when the machine has one, every GPU/TPU of the default backend. Every configuration runs the
same global batch: a DDSS step (GGDM, K steps, linear-kernel KID, Adam) with the batch split over
``parallel.mesh()``, and a DDIM draw of the same batch through ``parallel.sample``. Reported: the
median wall time of a step and samples per second, their ratios to the 1-device run, and the
largest difference of the step's loss, the updated parameters and the samples from the 1-device
run (the code must scale without changing results). The networks have the profile's sizes and random
weights (timing does not depend on the weights), the images the shape of the profile's data set.

On a CPU the simulated devices share the same cores, so the ratios show the cost of partitioning,
not a speed-up. The numbers go to ``<build dir>/results/parallel_scaling.json``
(:func:`ddss_lite.paths.results_dir`) with the machine, the load average and the sizes.

    python benchmarks/parallel_scaling.py                   # cpu profile sizes, batch 128, 5 repeats
    python benchmarks/parallel_scaling.py --quick           # smoke sizes, batch 16, 2 repeats
    python benchmarks/parallel_scaling.py --configs 1 2 4   # leave out the 2-process and GPU runs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time

import numpy as np

CONFIGS = ("1", "2", "4", "2x2", "gpu")   # devices in one process; 2 processes x 2 devices; accelerator


def _median_time(fn, repeats: int) -> float:
    import jax

    jax.block_until_ready(fn())           # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(args) -> dict:
    """In the child: build the problem, time the DDSS step and the draw on ``parallel.mesh()``."""
    import jax
    import jax.numpy as jnp
    import optax

    from ddss_lite import data, ddss, diffusion, nets, parallel, samplers, schedules
    from ddss_lite.profiles import get_profile

    P = get_profile(args.profile)
    image = data.image_shape(P.dataset)
    shape = (args.batch, *image)
    net = nets.make_denoiser_net(P.digits_net, hidden=P.digits_hidden, depth=P.digits_depth)
    clf = nets.MLPClassifier()
    init = jax.jit(lambda k: (net.init(k, jnp.zeros((1, *image)), jnp.zeros((1,)))["params"],
                              clf.init(k, jnp.zeros((1, *image)))["params"]))
    params, cparams = parallel.to_host(init(jax.random.PRNGKey(0)))
    # the zero-initialised output layer would make every sample the same: random weights there too
    params = jax.tree_util.tree_map(lambda a: a if np.any(a) else 0.05 * np.random.RandomState(1).normal(
        size=a.shape).astype(a.dtype), params)
    denoise = diffusion.make_denoiser(nets.apply_fn(net), params, prediction="v")
    phi = lambda x: clf.apply({"params": cparams}, x, features=True)
    real = np.random.RandomState(2).normal(size=(512, 128)).astype(np.float32)
    g = schedules.grid(args.K)
    mesh = parallel.mesh()
    key = jax.random.PRNGKey(3)

    loss = ddss.make_loss(samplers.GGDM, denoise, phi, real, shape, logsnrs=g)
    opt = optax.adam(1e-3)
    p0 = samplers.GGDM.init_from_ddim(args.K)
    s0 = opt.init(p0)

    def update(p, s, k):
        value, grads = jax.value_and_grad(loss)(p, k)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    step = jax.jit(update, out_shardings=parallel.replicated(mesh))
    p0, s0 = parallel.replicate((p0, s0), mesh)
    with parallel.use_mesh(mesh):
        step_s = _median_time(lambda: step(p0, s0, key), args.repeats)
        p1, _, value = step(p0, s0, key)
    draw = lambda k, s: samplers.ddim(denoise, k, s, logsnrs=g)
    sample_s = _median_time(lambda: parallel.sample(draw, key, shape, mesh=mesh), args.repeats)
    x = parallel.to_host(parallel.sample(draw, key, shape, mesh=mesh))
    dev = jax.devices()[0]
    return dict(devices=jax.device_count(), processes=jax.process_count(), platform=dev.platform,
                device_kind=dev.device_kind, step_s=step_s, samples_per_s=args.batch / sample_s,
                loss=float(parallel.to_host(value)), params=jax.tree_util.tree_map(
                    lambda a: np.asarray(a).tolist(), parallel.to_host(p1)), samples=x.tolist())


def child(args):
    if args.processes > 1:
        from ddss_lite import parallel

        parallel.initialize(f"127.0.0.1:{args.port}", args.processes, args.process_id, cpu_collectives="gloo",
                            initialization_timeout=120)
    out = measure(args)
    if args.process_id == 0:
        with open(args.out, "w") as f:
            json.dump(out, f)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(config: str, args, tmp: str) -> dict | None:
    """Start the processes of one configuration; returns the measurement of process 0 (None: skipped)."""
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if config == "gpu":
        env.pop("JAX_PLATFORMS", None)
        probe = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"], env=env,
                               capture_output=True, text=True, timeout=300)
        if probe.stdout.strip() not in ("gpu", "cuda", "rocm", "tpu"):
            print(f"  no GPU or TPU here (default backend: {probe.stdout.strip() or probe.stderr[-200:]}): skipped")
            return None
        procs, per = 1, None
    else:
        procs, per = (2, 2) if config == "2x2" else (1, int(config))
        env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={per}")
    out = os.path.join(tmp, f"{config}.json")
    port = _free_port()
    cmd = lambda pid: [sys.executable, os.path.abspath(__file__), "--child", "--out", out, "--profile", args.profile,
                       "--batch", str(args.batch), "--K", str(args.K), "--repeats", str(args.repeats),
                       "--processes", str(procs), "--process-id", str(pid), "--port", str(port)]
    running = [subprocess.Popen(cmd(pid), env=env) for pid in range(procs)]
    try:
        for p in running:
            if p.wait(timeout=args.timeout) != 0:
                raise RuntimeError(f"configuration {config}: a process exited with {p.returncode}")
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
    with open(out) as f:
        return json.load(f)


def _max_diff(a, b) -> float:
    import jax

    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke sizes: batch 16, K 4, 2 repeats")
    ap.add_argument("--profile", default=None, help="network sizes (default: cpu; smoke with --quick)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--K", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    ap.add_argument("--output", default=None, help="JSON file (default: <results dir>/parallel_scaling.json)")
    # the child's arguments
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--process-id", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.profile = args.profile or ("smoke" if args.quick else "cpu")
    args.batch = args.batch or (16 if args.quick else 128)
    args.K = args.K or (4 if args.quick else 10)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if args.child:
        return child(args)

    import tempfile

    from ddss_lite import data, paths
    from ddss_lite.profiles import get_profile

    configs = sorted(set(args.configs), key=CONFIGS.index)
    if "1" not in configs:
        configs.insert(0, "1")             # the reference every ratio and difference is taken against
    load_before = os.getloadavg()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in configs:
            print(f"configuration {config} ...", flush=True)
            r = run_config(config, args, tmp)
            if r is not None:
                rows[config] = r
    ref = rows["1"]
    table = {}
    print(f"\nbatch {args.batch}, K = {args.K}, {args.profile} profile's network; median of {args.repeats}")
    print(f"{'config':>6} {'devices':>8} {'step ms':>9} {'step/1-dev':>11} {'samples/s':>10} {'vs 1-dev':>9} "
          f"{'max |loss diff|':>16} {'max |param diff|':>17} {'max |sample diff|':>18}")
    for config, r in rows.items():
        t = dict(devices=r["devices"], processes=r["processes"], platform=r["platform"], device_kind=r["device_kind"],
                 step_s=r["step_s"], samples_per_s=r["samples_per_s"],
                 step_time_ratio=r["step_s"] / ref["step_s"],
                 throughput_ratio=r["samples_per_s"] / ref["samples_per_s"],
                 loss_diff=abs(r["loss"] - ref["loss"]), param_diff=_max_diff(r["params"], ref["params"]),
                 sample_diff=_max_diff(r["samples"], ref["samples"]), loss=r["loss"])
        table[config] = t
        print(f"{config:>6} {t['devices']:>8} {t['step_s'] * 1e3:>9.1f} {t['step_time_ratio']:>11.2f} "
              f"{t['samples_per_s']:>10.1f} {t['throughput_ratio']:>9.2f} {t['loss_diff']:>16.2e} "
              f"{t['param_diff']:>17.2e} {t['sample_diff']:>18.2e}")
    record = dict(
        machine=dict(node=platform.node(), processor=platform.processor() or platform.machine(),
                     cpu_count=os.cpu_count(), python=platform.python_version(),
                     jax=__import__("jax").__version__, load_average_before=load_before,
                     load_average_after=os.getloadavg()),
        sizes=dict(profile=args.profile, batch=args.batch, K=args.K, repeats=args.repeats,
                   image=list(data.image_shape(get_profile(args.profile).dataset)),
                   family="ggdm", sampler="ddim"),
        configs=table, when=time.strftime("%Y-%m-%dT%H:%M:%S"))
    out = args.output or str(paths.results_dir() / "parallel_scaling.json")
    from ddss_lite import store

    store.atomic_write_json(out, record)
    print(f"\nwritten to {out}")
    return record


if __name__ == "__main__":
    main()
