"""Data parallelism over one mesh of all processes' devices (ddss_lite.parallel).

What is checked, against independent single-device runs (mesh=None, one device, no sharding):

* on 1, 2 and 4 simulated host devices in one process: every sampler (fixed, integrators and
  the learnable families) draws the same samples; 3 DDSS search steps, 3 teacher-training steps
  and 3 distillation steps end on the same parameters, with a batch of 10 (padded to 12 on 4
  devices) and of 8; the padded DDSS and distillation losses equal the 10-row losses and differ
  from the 12-row ones, so the padding is computed but cannot leak; the batch really is split
  (each device holds a quarter of the rows); per-process rows that padding cannot fix raise;
* on 2 processes of 2 devices each (``jax.distributed`` on 127.0.0.1 with gloo collectives):
  3 DDSS search steps and 3 distillation steps end on the parameters of a single-process run on
  one device (computed here, in the test process); per-process rows assemble into the global
  batch in process order; a second ``initialize`` with the same settings is a no-op and with
  different ones a ``ValueError``.

The subprocesses get ``XLA_FLAGS=--xla_force_host_platform_device_count=N``; every run is bounded
in time and its processes are killed on failure. The smoke models are tiny random networks.
"""
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ddss_lite import parallel

HERE = pathlib.Path(__file__).resolve()
ROOT = HERE.parents[1]
BATCH = 10          # does not divide 4: padded to 12
SHAPE = (4, 4, 1)   # one example
K = 2
STEPS = 3
RTOL, ATOL = 2e-4, 2e-5
KEY_SEARCH = np.asarray([0, 5], np.uint32)     # jax.random.PRNGKey(5), without touching a device


# --------------------------------------------------------------------------- the smoke problem
# Built lazily: a worker must start jax.distributed before anything touches a device.


def smoke_problem():
    """Tiny random networks: a v-predicting MLP denoiser (the DDSS model and the distillation
    teacher), an MLP classifier's penultimate features, real features and training data."""
    import jax
    import jax.numpy as jnp

    from ddss_lite import diffusion, nets
    from ddss_lite.pretrained import Pretrained

    net = nets.MLPDenoiser(hidden=16, depth=0, emb_dim=8)
    clf = nets.MLPClassifier(widths=(8,))

    rng = np.random.RandomState(3)

    def random_params(module, *args):
        """Random weights of ``module``'s shapes (``eval_shape``: nothing is compiled), scaled by fan-in."""
        shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))["params"]
        return jax.tree_util.tree_map(
            lambda a: (rng.normal(size=a.shape) / np.sqrt(a.shape[0] if len(a.shape) > 1 else 4)).astype(np.float32),
            shapes)

    params = random_params(net, jnp.zeros((1, *SHAPE)), jnp.zeros((1,)))
    cparams = random_params(clf, jnp.zeros((1, *SHAPE)))
    return dict(
        net=net, params=params,
        denoise=diffusion.make_denoiser(nets.apply_fn(net), params, prediction="v"),
        phi=lambda x: clf.apply({"params": cparams}, x, features=True),
        real=rng.normal(size=(24, 8)).astype(np.float32),
        data=rng.normal(size=(32, *SHAPE)).astype(np.float32),
        teacher=Pretrained("smoke", net, params, np.zeros(1), {}, "v", SHAPE),
    )


def run_search(prob, batch, mesh, family="ggdm", real=None):
    import optax

    from ddss_lite import ddss

    real = prob["real"] if real is None else real
    res = ddss.search(family, prob["denoise"], prob["phi"], real, K=K, shape=(batch, *SHAPE),
                      key=KEY_SEARCH, optimizer=optax.adam(3e-2), steps=STEPS, mesh=mesh)
    return parallel.to_host(res.params), np.asarray(res.loss)


def run_distill(prob, batch, mesh):
    import jax

    from ddss_lite import distill

    rnd = distill.distill_round(prob["teacher"], None, 2, data=prob["data"], steps=STEPS, batch=batch, lr=1e-2,
                                key=jax.random.PRNGKey(6), checkpoint=False, mesh=mesh)
    return parallel.to_host(rnd.student.params), np.asarray(rnd.student.losses)


def run_teacher_training(prob, batch, mesh):
    import jax
    import jax.numpy as jnp
    import optax

    from ddss_lite import diffusion, nets, schedules, train

    denoising = diffusion.make_denoising_loss(nets.apply_fn(prob["net"]), logsnr_fn=schedules.logsnr_cosine,
                                              prediction="v", weighting="v")
    data = prob["data"]

    def loss_fn(p, k):
        x = jnp.asarray(data)[jax.random.randint(jax.random.fold_in(k, 1), (batch,), 0, data.shape[0])]
        return denoising(p, parallel.constrain_batch(x), jax.random.fold_in(k, 2))

    state = train.fit(loss_fn, prob["params"], key=jax.random.PRNGKey(7), steps=STEPS, optimizer=optax.adam(1e-2),
                      ema_decay=0.5, mesh=mesh)
    return parallel.to_host(state.ema_params), parallel.to_host(state.losses)


def assert_trees_close(a, b, what):
    import jax

    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb), what
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL, err_msg=what)


def assert_moved(before, after, what):
    import jax

    moved = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                for x, y in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after)))
    assert moved > 50 * ATOL, f"{what}: the steps barely moved the parameters ({moved:.2e}): the test would be vacuous"


# --------------------------------------------------------------------------- workers (subprocesses)


def devices_worker():
    """One process, 4 devices: meshes of 2 and 4 devices against one device without a mesh."""
    import jax
    import jax.numpy as jnp

    from ddss_lite import ddss, samplers, schedules

    assert jax.device_count() == 4, jax.devices()
    t0 = time.perf_counter()
    prob = smoke_problem()
    meshes = {n: parallel.mesh(jax.devices()[:n]) for n in (2, 4)}
    key, g = jax.random.PRNGKey(8), schedules.grid(K)

    # sampling: every fixed sampler (integrators included) and both learnable families, stacked
    # along a last axis so that one compiled program per mesh draws from all of them
    fns = {name: (lambda k, s, f=s.sample: f(prob["denoise"], k, s, logsnrs=g)) for name, s in samplers.SAMPLERS.items()}
    for name, fam in samplers.FAMILIES.items():
        p = fam.init_from_ddpm(K) if name == "ggdm" else fam.init_from_ddim(K, eta=0.5)
        fns[name] = lambda k, s, fam=fam, p=p: fam.sample(p, prob["denoise"], k, s, logsnrs=g)
    assert {"ddpm", "ddim", "dpm_solver_pp_2m", "heun", "lambda_ddim", "conjugate_poly", "rddim", "ggdm"} <= set(fns)
    every = lambda k, s: jnp.stack([f(k, s) for f in fns.values()], axis=-1)
    one = np.asarray(jax.jit(every, static_argnums=1)(key, (BATCH, *SHAPE)))
    assert np.all(np.isfinite(one)) and np.all(np.std(one, axis=0) > 0.01)
    for n, m in meshes.items():
        many = parallel.sample(every, key, (BATCH, *SHAPE), mesh=m)
        assert many.shape == (BATCH, *SHAPE, len(fns))
        for i, name in enumerate(fns):
            np.testing.assert_allclose(parallel.to_host(many)[..., i], one[..., i], rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} on {n} devices")
    # the finiteness check still names the first bad step when its flags are per row (under a mesh)
    bad = lambda z, logsnr: z * jnp.where(logsnr > -1.0, jnp.nan, 0.5)
    with pytest.raises(Exception) as err:
        parallel.sample(lambda k, s: samplers.ddim(bad, k, s, logsnrs=g), key, (BATCH, *SHAPE), mesh=meshes[4])
    from ddss_lite import chain

    assert "at step 1 of 2" in (chain.nonfinite_message(err.value) or ""), err.value
    print("sampling OK", sorted(fns), f"{time.perf_counter() - t0:.0f} s wall, {time.process_time():.0f} s cpu so far", flush=True)

    # 3 steps of DDSS, teacher training and distillation, batch 10: one device, 2 and 4 devices
    runs = {"ddss": lambda m: run_search(prob, BATCH, m),
            "teacher training": lambda m: run_teacher_training(prob, BATCH, m),
            "distillation": lambda m: run_distill(prob, BATCH, m)}
    starts = {"ddss": samplers.GGDM.init_from_ddim(K), "teacher training": prob["params"],
              "distillation": prob["params"]}
    for what, run in runs.items():
        t0 = time.perf_counter()
        ref_params, ref_loss = run(None)
        assert_moved(starts[what], ref_params, what)
        for n, m in meshes.items():
            params, loss = run(m)
            assert_trees_close(params, ref_params, f"{what}, {n} devices")
            np.testing.assert_allclose(loss, ref_loss, rtol=RTOL, atol=ATOL, err_msg=f"{what} loss, {n} devices")
        # the padding cannot leak: on 4 devices the 10-row batch is computed as 12 rows, yet the first
        # loss (the same parameters on every device count) is the 10-row loss
        np.testing.assert_allclose(loss[0], ref_loss[0], rtol=1e-5, err_msg=f"{what}: padded loss")
        if what == "ddss":      # ... and not the 12-row loss (rows 10 and 11 are the padding's samples)
            twelve = jax.jit(ddss.make_loss(samplers.GGDM, prob["denoise"], prob["phi"], prob["real"], (12, *SHAPE),
                                            logsnrs=g))(starts["ddss"], jax.random.fold_in(KEY_SEARCH, 0))
            assert abs(float(twelve) - ref_loss[0]) > 20 * 1e-5 * abs(ref_loss[0]), (float(twelve), ref_loss[0])
        print(what, "OK", ref_loss, loss - ref_loss, f"{time.perf_counter() - t0:.0f} s wall, {time.process_time():.0f} s cpu so far", flush=True)

    # what padding cannot fix: per-process rows that do not divide the process's devices; a 2-D mesh
    with pytest.raises(ValueError, match="multiple of 4"):
        parallel.global_batch(np.zeros((10, 3)), meshes[4])
    rows = parallel.global_batch(np.arange(12.0).reshape(12, 1), meshes[4])
    assert {s.data.shape[0] for s in rows.addressable_shards} == {3}     # split, 3 rows per device
    with pytest.raises(ValueError, match="one axis named 'batch'"):
        parallel.check_mesh(jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 2), ("batch", "model")))
    print("DEVICES-OK")


def process_worker(process_id: int, port: int, out: str):
    """One of 2 processes with 2 devices each."""
    info = parallel.initialize(f"127.0.0.1:{port}", 2, process_id, cpu_collectives="gloo",
                               initialization_timeout=60)
    import jax

    assert info["process_count"] == 2 and jax.device_count() == 4 and jax.local_device_count() == 2
    assert parallel.initialize(f"127.0.0.1:{port}", 2, process_id)["process_index"] == process_id  # same: no-op
    with pytest.raises(ValueError, match="already initialised with different settings"):
        parallel.initialize(f"127.0.0.1:{port + 1}", 2, process_id)
    with pytest.raises(ValueError, match="different settings"):
        parallel.initialize(num_processes=3)

    m = parallel.mesh()
    assert [d.process_index for d in m.devices] == [0, 0, 1, 1]
    # per-process rows -> one global batch, process 0's rows first
    rows = np.arange(6.0).reshape(3, 2) + 100 * process_id
    with pytest.raises(ValueError, match="multiple of 2"):
        parallel.global_batch(rows, m)
    g = parallel.global_batch(rows[:2], m)
    np.testing.assert_array_equal(parallel.to_host(g), np.concatenate([rows[:2] - 100 * process_id,
                                                                        rows[:2] - 100 * process_id + 100]))
    with pytest.raises(ValueError, match="same on every process"):
        parallel.check_same_on_all_processes(np.asarray([process_id]), name="seed")

    prob = smoke_problem()
    # per-host data: each process holds half of the real features; together, the reference's
    real = parallel.global_batch(np.split(prob["real"], 2)[process_id], m)
    assert not real.is_fully_addressable and real.shape == prob["real"].shape
    search_params, search_loss = run_search(prob, BATCH, m, real=real)
    distill_params, distill_loss = run_distill(prob, BATCH, m)
    import jax.tree_util as tu

    np.savez(out, *tu.tree_leaves(search_params), search_loss, *tu.tree_leaves(distill_params), distill_loss)
    print(f"PROCESS-{process_id}-OK", flush=True)


# --------------------------------------------------------------------------- tests


def _env(devices: int):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(HERE.parent), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("JAX_NUM_CPU_DEVICES", None)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Workers:
    """The two processes of the multi-process test, started in the background so that they run while
    the one-process test runs; killed (if still running) when the module's tests are done."""

    def __init__(self, tmp: pathlib.Path):
        self.tmp, self.port, self.procs, self.logs = tmp, _free_port(), [], []
        for pid in range(2):
            self.logs.append(open(tmp / f"p{pid}.log", "w"))
            self.procs.append(subprocess.Popen(
                [sys.executable, str(HERE), "process", str(pid), str(self.port), str(tmp / f"p{pid}.npz")],
                env=_env(2), stdout=self.logs[-1], stderr=subprocess.STDOUT, cwd=ROOT))
        self.deadline = time.monotonic() + 600

    def log(self, pid: int) -> str:
        return (self.tmp / f"p{pid}.log").read_text()

    def wait(self):
        try:
            for p in self.procs:
                p.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("the 2-process run ran out of time:\n" + "\n".join(
                self.log(i)[-3000:] for i in range(2))) from None

    def kill(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    w = Workers(tmp_path_factory.mktemp("processes"))
    yield w
    w.kill()


def test_one_process_1_2_4_devices_equal_one_device(workers):
    out = subprocess.run([sys.executable, str(HERE), "devices"], env=_env(4), capture_output=True, text=True,
                         timeout=600, cwd=ROOT)     # subprocess.run kills it when the time is up
    assert out.returncode == 0 and "DEVICES-OK" in out.stdout, (out.stdout[-2000:], out.stderr[-4000:])


def test_two_processes_equal_single_process_one_device(workers):
    import jax

    prob = smoke_problem()          # the reference: this process, one device, no mesh
    ref = [*jax.tree_util.tree_leaves(run_search(prob, BATCH, None)),
           *jax.tree_util.tree_leaves(run_distill(prob, BATCH, None))]
    workers.wait()
    for pid, p in enumerate(workers.procs):
        text = workers.log(pid)
        assert p.returncode == 0 and f"PROCESS-{pid}-OK" in text, text[-4000:]
        got = np.load(workers.tmp / f"p{pid}.npz")
        got = [got[f"arr_{i}"] for i in range(len(got.files))]
        assert len(got) == len(ref)
        for a, b in zip(got, ref):
            np.testing.assert_allclose(a, np.asarray(b), rtol=RTOL, atol=ATOL, err_msg=f"process {pid}")


def test_mesh_of_this_process_devices_equals_no_mesh():
    """The mesh code path on this process's own devices (one, unless XLA_FLAGS says otherwise)."""
    import jax

    from ddss_lite import ddss, samplers, schedules

    prob, key, g = smoke_problem(), jax.random.PRNGKey(9), schedules.grid(K)
    m = parallel.mesh()
    fn = lambda k, s: samplers.ddpm(prob["denoise"], k, s, logsnrs=g)
    np.testing.assert_allclose(parallel.to_host(parallel.sample(fn, key, (BATCH, *SHAPE), mesh=m)),
                               np.asarray(jax.jit(fn, static_argnums=1)(key, (BATCH, *SHAPE))), rtol=RTOL, atol=ATOL)
    loss = ddss.make_loss(samplers.RDDIM, prob["denoise"], prob["phi"], prob["real"], (BATCH, *SHAPE), logsnrs=g)
    p0 = samplers.RDDIM.init_from_ddim(K)
    plain = jax.jit(loss)(p0, key)
    with parallel.use_mesh(m):
        meshed = jax.jit(loss)(p0, key)
    np.testing.assert_allclose(float(meshed), float(plain), rtol=1e-5)


def test_mesh_checks_and_hooks_without_a_mesh():
    import jax
    import jax.numpy as jnp

    x = jnp.ones((3, 2))
    assert parallel.constrain_batch(x) is x                     # no mesh: untouched
    assert parallel.batch_devices() == 1 and parallel.padded_batch(10) == 10
    m = parallel.mesh()
    assert m.axis_names == ("batch",) and m.devices.size == jax.device_count()
    assert parallel.padded_batch(10, m) == int(np.ceil(10 / jax.device_count())) * jax.device_count()
    with parallel.use_mesh(m):
        assert parallel.batch_devices() == jax.device_count()
    np.testing.assert_array_equal(parallel.pad_rows(jnp.arange(3.0)[:, None], 5)[:, 0], [0, 1, 2, 2, 2])
    with pytest.raises(ValueError, match="rows must be >="):
        parallel.pad_rows(x, 2)
    with pytest.raises(ValueError, match="one axis named 'batch'"):
        parallel.check_mesh(jax.sharding.Mesh(np.asarray(jax.devices()), ("data",)))
    with pytest.raises(ValueError, match="jax.sharding.Mesh"):
        parallel.check_mesh("batch")
    with pytest.raises(ValueError, match="non-empty"):
        parallel.mesh([])
    with pytest.raises(ValueError, match="positive multiple"):
        parallel.global_batch(np.zeros((0, 3)), m)
    np.testing.assert_array_equal(parallel.to_host(parallel.global_batch(np.ones((2, 3)), m)), np.ones((2, 3)))


def test_initialize_twice_with_other_settings_raises(monkeypatch):
    """The settings check without starting a runtime here (the 2-process test starts real ones)."""
    started = dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=0, local_device_ids=None,
                   cpu_collectives="gloo")
    monkeypatch.setattr(parallel, "_settings", started)
    called = []
    monkeypatch.setattr(parallel.jax.distributed, "initialize", lambda *a, **k: called.append(a))
    assert parallel.initialize("10.0.0.1:1234", 2, 0)["process_count"] >= 1       # same: no-op
    assert parallel.initialize()["process_index"] == 0                             # nothing asked: no-op
    with pytest.raises(ValueError, match="process_id: started with 0, now asked for 1"):
        parallel.initialize("10.0.0.1:1234", 2, 1)
    with pytest.raises(ValueError, match="cpu_collectives: started with 'gloo', now asked for 'mpi'"):
        parallel.initialize(cpu_collectives="mpi")
    with pytest.raises(ValueError, match="cpu_collectives must be one of"):
        parallel.initialize(cpu_collectives="nccl")
    assert not called
    monkeypatch.setattr(parallel, "_settings", None)
    parallel.jax.devices()                                                       # the backend is up
    with pytest.raises(ValueError, match="before anything touches a device"):     # this process has devices up
        parallel.initialize("127.0.0.1:1", 2, 0)
    assert not called


if __name__ == "__main__":
    if sys.argv[1] == "devices":
        devices_worker()
    else:
        process_worker(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
