"""Data parallelism over one device mesh that spans every process: JAX's own distributed runtime.

One axis is split across devices: the batch of samples (or of training examples). Everything
else (sampler parameters, network weights, optimiser state, real features) is replicated, and
XLA (GSPMD) partitions the computation and inserts the collectives, the gradient's all-reduce
included. Nothing here is a process pool: on a TPU pod slice or on several GPU hosts every
process runs the same program after :func:`initialize` (``jax.distributed.initialize``).

* :func:`initialize` starts the distributed runtime once; calling it again with the same
  settings is a no-op and with different settings a ``ValueError``.
* :func:`mesh` is the 1-D ``("batch",)`` mesh over all devices of all processes, each process's
  devices contiguous, so process ``p`` holds a contiguous block of global rows.
* :func:`use_mesh` makes a mesh the context in which steps are traced (``jax.set_mesh``);
  :func:`constrain_batch` and :func:`padded_batch` are the hooks the library's losses and
  samplers call: both are no-ops without a mesh. JAX keys its compiled functions by the context
  mesh, so one function traced with and without a mesh gets two compiled versions.
* :func:`global_batch` lays out per-process rows as one global array
  (``jax.make_array_from_process_local_data``); :func:`to_host` gathers any array to every host.
* :func:`sample` draws from any sampler with the batch sharded over the mesh.

Why results do not depend on the device or process count: every sampler draws row ``n``'s
noise from ``fold_in(key, n)`` (:func:`ddss_lite.chain.normal_rows`), the training losses draw
their randomness at the global batch's shape (``jax.random`` values do not depend on how an
array is laid out), every loss is computed on the global batch (sums over rows become XLA
all-reduces; no per-device loss is averaged), and a batch that does not divide the device
count is padded with rows that are dropped before any loss or output sees them.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddss_lite.validate import check_choice, check_K, check_key, check_sample_shape

__all__ = [
    "AXIS",
    "initialize",
    "settings",
    "mesh",
    "check_mesh",
    "use_mesh",
    "batch_devices",
    "padded_batch",
    "pad_rows",
    "constrain_batch",
    "batch_sharding",
    "replicated",
    "replicate",
    "global_batch",
    "to_host",
    "check_same_on_all_processes",
    "sample",
]

AXIS = "batch"
CPU_COLLECTIVES = ("gloo", "mpi")

_settings: dict | None = None       # what initialize() started the runtime with


# --------------------------------------------------------------------------- the runtime


def _global_state():
    from jax._src import distributed     # jax.distributed.initialize's own record of its settings

    return distributed.global_state


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):    # a JAX without the probe: let jax.distributed say it
        return False


def settings() -> dict | None:
    """The settings the distributed runtime was started with (``None`` when it was not):
    ``coordinator_address``, ``num_processes``, ``process_id``, ``local_device_ids``, ``cpu_collectives``."""
    if _settings is not None:
        return dict(_settings)
    gs = _global_state()
    if getattr(gs, "client", None) is None:
        return None
    return dict(coordinator_address=gs.coordinator_address, num_processes=gs.num_processes,
                process_id=gs.process_id, local_device_ids=None, cpu_collectives=None)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, local_device_ids=None, cpu_collectives: str | None = None,
               **kwargs) -> dict:
    """Start JAX's distributed runtime (``jax.distributed.initialize``) once per process.

    Run it first, before anything touches a device (``jax.devices()``, an array, a computation),
    on every process with the same ``coordinator_address`` (``"host:port"`` of process 0) and
    ``num_processes`` and that process's ``process_id``. On Cloud TPU, SLURM, Open MPI and
    Kubernetes (JobSet) every argument may be left ``None``: JAX detects them. ``cpu_collectives``
    (``"gloo"`` or ``"mpi"``) sets ``jax_cpu_collectives_implementation`` for processes whose
    devices are CPUs (a test or a laptop); ``kwargs`` go to ``jax.distributed.initialize`` as is
    (e.g. ``initialization_timeout``).

    A second call with the same settings (or with every argument left ``None``) returns at once;
    one whose settings differ from the first call's raises ``ValueError`` naming both, instead of
    restarting or silently keeping a runtime the caller did not ask for. Returns
    ``{"process_index", "process_count", "local_devices", "devices"}``.
    """
    global _settings
    if cpu_collectives is not None:
        check_choice(cpu_collectives, CPU_COLLECTIVES, name="cpu_collectives")
    if num_processes is not None:
        check_K(num_processes, name="num_processes")
    if process_id is not None:
        check_K(process_id, name="process_id", low=0,
                high=None if num_processes is None else num_processes - 1)
    asked = dict(coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id,
                 local_device_ids=None if local_device_ids is None else [int(i) for i in np.ravel(local_device_ids)],
                 cpu_collectives=cpu_collectives)
    current = settings()
    if current is not None:
        differ = {k: (current[k], v) for k, v in asked.items()
                  if v is not None and current[k] is not None and current[k] != v}
        if differ:
            lines = ", ".join(f"{k}: started with {a!r}, now asked for {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"jax.distributed is already initialised with different settings ({lines}); "
                             "it can be started once per process: restart the process to change them")
        return _summary()
    if _backend_started():
        raise ValueError("parallel.initialize must run before anything touches a device (jax.devices(), an "
                         "array, a computation): call it first, right after the imports")
    if cpu_collectives is not None:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address, num_processes, process_id, local_device_ids=local_device_ids,
                               **kwargs)
    gs = _global_state()
    _settings = dict(asked, coordinator_address=gs.coordinator_address, num_processes=gs.num_processes,
                     process_id=gs.process_id)
    return _summary()


def _summary() -> dict:
    return dict(process_index=jax.process_index(), process_count=jax.process_count(),
                local_devices=jax.local_devices(), devices=jax.devices())


# --------------------------------------------------------------------------- the mesh


def mesh(devices=None) -> Mesh:
    """The 1-D ``("batch",)`` mesh over ``devices`` (default ``jax.devices()``: every device of every
    process), ordered by (process, device id) so that each process's devices are contiguous and
    process ``p``'s rows of a global batch form one block (:func:`global_batch`)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must be a non-empty sequence of jax devices")
    if len({d.id for d in devices}) != len(devices):
        raise ValueError(f"devices must not repeat a device, got ids {[d.id for d in devices]}")
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.asarray(devices), (AXIS,))


_mesh = mesh    # for functions whose ``mesh`` argument hides this one


def check_mesh(m) -> Mesh:
    """``m`` must be a 1-D :class:`jax.sharding.Mesh` with the one axis ``"batch"`` (see :func:`mesh`)
    holding, in a multi-process run, the same number of devices of every process, each process's
    devices contiguous. Raises ``ValueError`` otherwise; returns ``m``."""
    if not isinstance(m, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (parallel.mesh()), got {type(m).__name__}")
    if tuple(m.axis_names) != (AXIS,):
        raise ValueError(f"mesh must have exactly one axis named {AXIS!r} (parallel.mesh()): the batch is the "
                         f"only axis split across devices; got axes {tuple(m.axis_names)} of shape "
                         f"{tuple(m.devices.shape)}")
    procs = [d.process_index for d in m.devices.ravel()]
    if jax.process_count() > 1:
        counts = {p: procs.count(p) for p in range(jax.process_count())}
        if len(set(counts.values())) != 1 or 0 in counts.values():
            raise ValueError(f"mesh must hold the same number of devices of every process (devices per process: "
                             f"{counts}): every process runs the same program on its share of the batch")
        if any(a > b for a, b in zip(procs, procs[1:])):
            raise ValueError("mesh must list each process's devices contiguously (parallel.mesh() does), so that "
                             "each process's rows are one block of the global batch")
    return m


def use_mesh(m):
    """A context in which steps are traced with ``m`` (``jax.set_mesh``): inside it the hooks
    :func:`constrain_batch` and :func:`padded_batch` shard the batch over ``m``. ``None``: no mesh
    (a null context). Use it outside ``jax.jit`` (JAX's rule); a function traced inside the context
    is compiled for the mesh and cached apart from its traces without one."""
    if m is None:
        return contextlib.nullcontext()
    return jax.set_mesh(check_mesh(m))


def batch_devices(m=None) -> int:
    """How many devices the batch is split over: ``m``'s size, else that of the context mesh's
    ``"batch"`` axis (:func:`use_mesh`), else 1."""
    if m is not None:
        return int(check_mesh(m).devices.size)
    am = jax.sharding.get_abstract_mesh()
    if am.empty or AXIS not in am.axis_names:
        return 1
    return int(dict(am.shape)[AXIS])


def padded_batch(batch: int, m=None) -> int:
    """``batch`` rounded up to a multiple of :func:`batch_devices`: the rows a step computes so that
    every device holds the same number; the rows beyond ``batch`` are dropped before any loss."""
    batch = check_K(batch, name="batch")
    n = batch_devices(m)
    return int(math.ceil(batch / n)) * n


def pad_rows(x, rows: int):
    """``x`` (batch axis first) padded to ``rows`` rows by repeating its last row (finite values the
    network can digest; they are dropped before any loss)."""
    x = jnp.asarray(x)
    extra = rows - x.shape[0]
    if extra < 0:
        raise ValueError(f"rows must be >= the batch ({x.shape[0]}), got {rows}")
    if extra == 0:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], extra, axis=0)], axis=0)


def batch_sharding(m) -> NamedSharding:
    """Rows split over ``m``'s ``"batch"`` axis, every other axis whole."""
    return NamedSharding(check_mesh(m), PartitionSpec(AXIS))


def replicated(m) -> NamedSharding:
    """Every device of ``m`` holds the whole array."""
    return NamedSharding(check_mesh(m), PartitionSpec())


def constrain_batch(x, m=None):
    """Lay out ``x`` (an array or a pytree of arrays, batch axis first) with its rows split over the
    ``"batch"`` axis of ``m`` or, when ``m`` is ``None``, of the context mesh (:func:`use_mesh`);
    without either, ``x`` unchanged. Inside ``jit`` this is ``with_sharding_constraint``: a hint from
    which XLA partitions everything computed from ``x`` row-wise. Values never change."""
    if m is not None:
        spec = batch_sharding(m)
    elif batch_devices() > 1:
        spec = PartitionSpec(AXIS)
    else:
        return x
    return jax.tree_util.tree_map(lambda a: jax.lax.with_sharding_constraint(a, spec), x)


def replicate(tree, m):
    """Put every leaf of ``tree`` on every device of ``m`` (replicated). In a multi-process run each
    process must pass the same values (:func:`check_same_on_all_processes`)."""
    return jax.device_put(tree, replicated(m))


# --------------------------------------------------------------------------- per-process data


def global_batch(local_rows, m=None) -> jax.Array:
    """One global array, rows split over ``m`` (default :func:`mesh`), from each process's rows.

    Process ``p`` passes its ``(b, ...)`` rows; the global array has ``P b`` rows, process ``p``'s
    being rows ``p b .. (p + 1) b - 1`` (``jax.make_array_from_process_local_data``). ``b`` must
    be the same on every process and a multiple of the process's device count in ``m``: padding
    cannot fix either, since padded rows would land inside the global batch, between two
    processes' blocks, where no later slice can drop them. Pad or trim the per-process rows instead.
    """
    m = check_mesh(mesh() if m is None else m)
    x = np.asarray(local_rows) if not isinstance(local_rows, jax.Array) else local_rows
    if x.ndim < 1:
        raise ValueError(f"local_rows must have a batch axis, got shape {x.shape}")
    me = jax.process_index()
    mine = sum(d.process_index == me for d in m.devices.ravel())
    b = int(x.shape[0])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        rows = np.asarray(multihost_utils.process_allgather(np.asarray([b], np.int64))).ravel()
        if len(set(rows.tolist())) != 1:
            raise ValueError(f"local_rows must have the same number of rows on every process, got "
                             f"{rows.tolist()} (process 0, 1, ...): padding inside the global batch cannot "
                             "be dropped later; give each process the same number of rows")
    if b == 0 or b % mine:
        raise ValueError(f"local_rows has {b} rows on process {me}, which holds {mine} devices of the mesh: the "
                         f"per-process rows must be a positive multiple of {mine} (padding would put padded rows "
                         "between two processes' blocks of the global batch); pad or trim them per process")
    return jax.make_array_from_process_local_data(batch_sharding(m), x)


def to_host(tree):
    """Every leaf of ``tree`` as a NumPy array holding the *global* value, on every process
    (``multihost_utils.process_allgather`` for arrays spread over several processes)."""

    def one(a):
        if not isinstance(a, jax.Array) or a.is_fully_addressable:
            return np.asarray(a)
        if a.is_fully_replicated:
            return np.asarray(a.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree_util.tree_map(one, tree)


def check_same_on_all_processes(tree, *, name: str):
    """In a multi-process run, ``ValueError`` unless every process passed the same ``tree`` (keys,
    initial parameters): each process runs the same program, and a local value that differs
    between processes would be silently taken from one of them. A no-op in one process."""
    if jax.process_count() == 1:
        return tree
    from jax.experimental import multihost_utils

    leaves = [np.asarray(jax.random.key_data(a)) if jax.dtypes.issubdtype(getattr(a, "dtype", np.float32),
                                                                        jax.dtypes.prng_key) else np.asarray(a)
              for a in jax.tree_util.tree_leaves(tree)]
    digest = np.frombuffer(hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in leaves)).digest()[:8],
                           np.uint32)
    all_digests = np.asarray(multihost_utils.process_allgather(digest))
    if not np.all(all_digests == all_digests[:1]):
        raise ValueError(f"{name} must be the same on every process (every process runs the same program on "
                         "its share of the batch); pass the same value, e.g. the same seed, on all of them")
    return tree


# --------------------------------------------------------------------------- sampling


def sample(sample_fn: Callable, key, shape, *, mesh=None, devices=None) -> jax.Array:
    """``sample_fn(key, shape)`` with the batch split over ``mesh`` (default :func:`mesh` of
    ``devices``, default every device of every process).

    ``sample_fn(key, shape) -> (B, ...)`` must treat rows independently (every sampler here with a
    per-example denoiser: row ``n``'s noise comes from ``fold_in(key, n)``). The batch is padded to
    a multiple of the device count; the chain is traced under the mesh (:func:`use_mesh`), so the
    samplers' initial state is split over the batch axis (``chain.setup``), and the output is laid
    out row-wise. Returns a global array of ``B`` rows (the padding dropped), equal to
    ``sample_fn(key, shape)`` on one device to float tolerance; :func:`to_host` gathers it.
    """
    shape = check_sample_shape(shape)
    if mesh is not None and devices is not None:
        raise ValueError("give mesh or devices, not both")
    m = check_mesh(_mesh(devices) if mesh is None else mesh)
    check_key(key)
    check_same_on_all_processes(key, name="key")
    batch = shape[0]
    padded = padded_batch(batch, m)
    with use_mesh(m):
        out = _sample_program(sample_fn, (padded,) + shape[1:], m)(key)
    # a failed check inside the chain (chain.raise_if_nonfinite's callback) runs asynchronously on
    # a sharded program: wait for it here, so that its error is raised by this call
    jax.effects_barrier()
    return out if padded == batch else out[:batch]


@functools.lru_cache(maxsize=16)
def _sample_program(sample_fn: Callable, shape: tuple, m: Mesh):
    """The jitted draw of :func:`sample`, kept per (sampler, padded shape, mesh): repeated draws reuse it."""
    out_sharding = batch_sharding(m)

    def run(key):
        out = sample_fn(key, shape)
        if not hasattr(out, "shape") or out.shape[:1] != shape[:1]:
            raise ValueError("sample_fn must return one array with the batch axis first, "
                             f"got {jax.tree_util.tree_map(jnp.shape, out)}")
        return jax.lax.with_sharding_constraint(out, out_sharding)

    return jax.jit(run, out_shardings=out_sharding)
