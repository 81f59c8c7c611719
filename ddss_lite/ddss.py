"""Differentiable Diffusion Sampler Search (DDSS; Watson et al. 2022, section 3).

Optimise the parameters ``theta`` of a learnable sampler family (GGDM, RDDIM) for a fixed,
pre-trained denoiser by gradient descent on sample quality:

    theta* = argmin_theta  KID_phi( sample_theta(denoise, xi), x_real )

* the samples are a differentiable function of ``theta`` given the noise ``xi`` (the
  reparameterisation trick): the whole K-step chain is unrolled and backpropagated through;
* each step's network call is rematerialised (``jax.checkpoint``), so memory stays O(1) in
  network activations per step instead of O(K);
* the sampler's grid ``logsnrs`` is fixed and kept out of the optimised pytree;
* the loss is KID with the linear kernel ``k(a, b) = phi(a) . phi(b)`` on a classifier's
  penultimate features ``phi`` (the paper's best choice); the real-real term is constant and
  dropped (:func:`ddss_lite.metrics.kid_linear_loss`). ``kernel="cubic"`` uses the full
  unbiased cubic-kernel KID instead (an ablation).

Fresh noise is drawn at every optimisation step (``fold_in(key, step)``); the search starts
from the family's DDIM initialisation, so step 0 *is* DDIM.

Data parallel (``search(..., mesh=parallel.mesh())``, :mod:`ddss_lite.parallel`): the step is
traced under the mesh, so the samples, their features and the KID sums are split over the
devices by batch rows, the parameters are replicated, and XLA reduces the gradient. The loss is
the KID of the *global* batch, not a mean of per-device KIDs (see :func:`make_loss` for how its
cross terms between devices are formed); a batch that does not divide the device count is
padded with extra samples that are dropped before the features enter the loss.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from ddss_lite import chain, metrics, parallel, progress, samplers, store
from ddss_lite.models import as_denoiser
from ddss_lite.validate import check_choice, check_finite, check_K

log = logging.getLogger(__name__)

KERNELS = ("linear", "cubic")
FORMAT = 2  # bump when the sampler families or the search change meaning: invalidates search checkpoints


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The optimised parameters, the grid they run on, and the optimisation history.

    ``loss[i]`` is the training loss at step i; ``eval_steps``/``eval_values`` hold the
    ``eval_fn`` value (e.g. held-out KID on fixed noise) every ``eval_every`` steps, step 0
    being the initialisation. ``sample(denoise, key, shape)`` runs the found sampler.
    """

    family: str
    params: dict
    logsnrs: np.ndarray
    loss: np.ndarray
    eval_steps: np.ndarray
    eval_values: np.ndarray

    def sampler(self) -> samplers.BoundFamily:
        """The found sampler, bound to its params and grid: ``result.sampler()(model, key, shape)``."""
        return samplers.get_family(self.family).bind(self.params, self.logsnrs)

    def sample(self, denoise, key, shape: tuple, **kwargs):
        """``self.sampler()(denoise, key, shape, ...)``: ``denoise`` a :class:`ddss_lite.Model` or a bare
        ``denoise(z, logsnr)``."""
        return self.sampler()(denoise, key, shape, **kwargs)


LOSSES = {"linear": metrics.kid_linear_loss, "cubic": lambda f, r: metrics.kid(f, r, kernel="cubic")}


def make_loss(family, denoise: Callable, phi: Callable, real_feats, shape: tuple, *, logsnrs, kernel: str = "linear",
              remat: bool = True) -> Callable:
    """``loss(params, key, real_feats=real_feats) -> scalar``: KID (``kernel``) between ``phi`` of fresh
    samples and ``real_feats`` (given here, or as the third argument, e.g. to pass them to a jitted
    step as an argument rather than a constant: JAX requires that for a global array spread over
    several processes).

    Traced under a device mesh (:func:`ddss_lite.parallel.use_mesh`; :func:`search` does this with
    ``mesh=``), the ``B = shape[0]`` samples are split over the devices by rows: the sampler's
    initial state is laid out row-wise (``chain.setup``) and XLA partitions the chain, the
    features and the loss from there. The loss is still the KID of the global batch. For the
    linear kernel, :func:`ddss_lite.metrics.kid_linear_loss` forms it from two sums over the
    generated rows, ``s = sum_i g_i`` (a ``d``-vector) and ``q = sum_i ||g_i||^2``; each device sums
    its own rows and XLA all-reduces the partial sums, and then

        L = (||s||^2 - q) / (B (B - 1)) - 2 s . sum_j r_j / (B M)

    so the cross terms ``g_i . g_j`` between rows held by *different* devices are in ``||s||^2``
    exactly as on one device. (A mean of per-device KIDs would drop those terms and is not what is
    computed.) ``real_feats`` are replicated, or a global array split over the mesh
    (:func:`ddss_lite.parallel.global_batch`), whose sum is all-reduced the same way. The cubic
    kernel's Gram matrices are formed from all-gathered features. When ``B`` does not divide the
    device count, ``parallel.padded_batch(B)`` samples are drawn (row ``n``'s noise depends only on
    ``n``, so the first ``B`` are the unpadded batch) and only the first ``B`` feature rows enter the
    loss: the padding cannot leak into it or its gradient.
    """
    check_choice(kernel, KERNELS, name="kernel")
    kid_fn = LOSSES[kernel]            # resolved once, here
    real = real_feats if isinstance(real_feats, jax.Array) else jnp.asarray(real_feats)
    logsnrs = jnp.asarray(logsnrs)
    batch = shape[0]

    def loss(params, key, real_feats=real):
        rows = parallel.padded_batch(batch)     # == batch without a mesh (trace time)
        x = family.sample(params, denoise, key, (rows, *shape[1:]), logsnrs=logsnrs, remat=remat)
        feats = phi(x)
        if rows != batch:
            feats = feats[:batch]               # drop the padding before the loss
        # under a mesh the real rows are split too: each device sums its share (no-op without one)
        return kid_fn(feats, parallel.constrain_batch(real_feats))

    return loss


def _nonfinite_leaves(tree) -> list[str]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [jax.tree_util.keystr(p) for p, v in flat if not np.all(np.isfinite(np.asarray(v)))]


def probe_fingerprints(denoise: Callable, phi: Callable, optimizer, init_params, *, shape: tuple, logsnrs) -> dict:
    """What the search's result depends on beyond its arguments' values, as digests of probes
    (:mod:`ddss_lite.store`): the denoiser at three log-SNRs of the grid on fixed noise, the feature
    map on the same inputs, and the optimiser's first updates from ``init_params``."""
    z = chain.normal_rows(jax.random.PRNGKey(20220127), (4, *shape[1:]), jnp.float32)
    lam = np.asarray(logsnrs, np.float64)
    probe_lams = [float(lam[0]), float(lam[len(lam) // 2]), float(lam[-1])]
    return {"denoiser": store.fingerprint_fn(lambda: [denoise(z, jnp.float32(l)) for l in probe_lams]),
            "features": store.fingerprint_fn(phi, z),
            "optimizer": store.fingerprint_optimizer(optimizer, init_params)}


def search(family, denoise: Callable, phi: Callable, real_feats, *, K: int, shape: tuple, key,
           optimizer: optax.GradientTransformation, steps: int, logsnrs=None, kernel: str = "linear",
           learn_logsnrs: bool = False, init_params: dict | None = None, remat: bool = True,
           eval_fn: Callable | None = None, eval_every: int = 25, ckpt_path=None, cache_dir=None, ckpt_every: int = 50,
           config: dict | None = None, desc: str = "ddss", stop_after: int | None = None, mesh=None) -> SearchResult:
    """Run DDSS: ``steps`` Adam (or any optax) steps on the KID of ``shape``-sized sample batches.

    Args:
      family: :class:`ddss_lite.samplers.GGDM` or :class:`~ddss_lite.samplers.RDDIM` (or a name).
      denoise: the pre-trained model: a :class:`ddss_lite.Model` (then ``logsnrs`` defaults to its
        default grid, a continuous one with ``learn_logsnrs``, and a given grid must lie in its
        ``logsnr_range``) or a bare ``denoise(z, logsnr) -> x_hat``.
      phi: feature map ``x -> (N, d)`` the loss is computed in (the *optimisation* features).
      real_feats: ``(M, d)`` features of real data (with ``mesh``, possibly a global array split over
        it, from :func:`ddss_lite.parallel.global_batch` of each process's rows).
      K: sampler steps; the search starts from ``family.init_from_ddim(K, logsnrs=logsnrs)`` unless
        ``init_params``.
      logsnrs: the fixed (K+1,) grid (default ``schedules.grid(K)``); with ``learn_logsnrs`` only
        its two ends are kept and the interior is learned. It is not among the optimised
        parameters, so no optimiser (weight decay included) can move it.
      shape: the batch of samples per optimisation step, e.g. ``(256, 8, 8, 1)``.
      eval_fn: ``params -> float`` evaluated every ``eval_every`` steps and at the end.
      ckpt_path: where the search state is written atomically every ``ckpt_every`` steps. A
        checkpoint is resumed only if it was written for the same configuration: the arguments
        above, the key, digests of ``real_feats`` and of the start, probes of the denoiser, the
        feature map and the optimiser (:func:`probe_fingerprints`), and the caller's ``config``.
        Anything else is ignored with a warning and the search starts afresh.
      cache_dir: instead of ``ckpt_path``, checkpoint under ``cache_dir/ddss-{family}-K{K}-{hash}.ckpt``
        with the hash of the full configuration above (a finished search is then loaded, not rerun).
      stop_after: stop after this many steps in total, as an interruption would (tests).
      mesh: a ``("batch",)`` device mesh (:func:`ddss_lite.parallel.mesh`, possibly over several
        processes): each step's samples, features and loss are split over its devices by batch
        rows (:func:`make_loss`), parameters and optimiser state replicated, the gradient reduced by
        XLA. The result equals the single-device one to float tolerance, and checkpoints are
        shared between device counts (the mesh is not part of the configuration). In a
        multi-process run every process calls ``search`` with the same arguments (checked for
        ``key``, ``init_params`` and a resumed step); ``ckpt_path`` should then be on a filesystem
        every process sees (each writes the same file atomically).

    Raises ``FloatingPointError`` naming the step if the loss or a gradient is NaN/Inf.
    """
    family = samplers.get_family(family) if isinstance(family, str) else family
    K = check_K(K)
    steps = check_K(steps, name="steps")
    check_K(eval_every, name="eval_every")
    check_K(ckpt_every, name="ckpt_every")
    chain.check_key(key)
    shape = chain.check_sample_shape(shape)
    if learn_logsnrs and family is not samplers.GGDM:
        raise ValueError(f"learn_logsnrs=True needs the GGDM family (learned timesteps), got {family.name!r}")
    check_choice(kernel, KERNELS, name="kernel")
    real_host = parallel.to_host(real_feats)    # a global array (parallel.global_batch) gathered, for checks
    check_finite(real_host, name="real_feats")
    denoise, model = as_denoiser(denoise, name="denoise")
    if model is not None:
        logsnrs = samplers.resolve_grid(model, K, logsnrs=logsnrs, data_end=not learn_logsnrs)
    logsnrs = samplers.family_grid(K, logsnrs)
    if init_params is None:
        init_params = family.init_from_ddim(K, logsnrs=logsnrs, **({"learn_logsnrs": True} if learn_logsnrs else {}))
    elif family.num_steps(init_params) != K:
        raise ValueError(f"init_params has {family.num_steps(init_params)} steps, but K = {K}")
    check_finite(init_params, name="init_params")
    if mesh is not None:
        parallel.check_mesh(mesh)
        parallel.check_same_on_all_processes((key, init_params), name="key and init_params")

    loss_fn = make_loss(family, denoise, phi, real_feats, shape, logsnrs=logsnrs, kernel=kernel, remat=remat)
    n_evals = steps // eval_every + 2
    state = {"step": jnp.zeros((), jnp.int32), "params": init_params, "opt_state": optimizer.init(init_params),
             "loss": jnp.zeros((steps,), jnp.float32), "eval_steps": -jnp.ones((n_evals,), jnp.int32),
             "eval_values": jnp.full((n_evals,), jnp.nan, jnp.float32)}
    config = dict(config or {}, K=K, steps=steps, kernel=kernel, learn_logsnrs=learn_logsnrs, family=family.name,
                  shape=list(shape), eval_every=eval_every, format=FORMAT, remat=remat,
                  key=np.asarray(jax.random.key_data(key)).tolist(),
                  logsnrs=np.asarray(logsnrs, np.float64).tolist(),
                  real_feats_sha256=store.array_digest(np.asarray(real_host, np.float32)),
                  init_sha256=hashlib.sha256(serialization.to_bytes(init_params)).hexdigest(),
                  probes=probe_fingerprints(denoise, phi, optimizer, init_params, shape=shape, logsnrs=logsnrs))
    if eval_fn is not None:     # the monitor's values are part of the result: another monitor, another file
        config["probes"]["eval_fn"] = store.fingerprint_fn(eval_fn, init_params)
    if cache_dir is not None:
        if ckpt_path is not None:
            raise ValueError("give ckpt_path or cache_dir, not both")
        ckpt_path = pathlib.Path(cache_dir) / f"ddss-{family.name}-K{K}-{store.config_hash(config)}.ckpt"
    if ckpt_path is not None and pathlib.Path(ckpt_path).exists():
        try:
            state = jax.tree_util.tree_map(jnp.asarray, store.load_state(ckpt_path, state, config=config))
            if int(state["step"]) < steps:
                log.warning("%s: resumed from checkpoint %s at step %d of %d", desc, ckpt_path, int(state["step"]),
                            steps)
        except store.CorruptFile as e:
            log.warning("%s: ignoring search checkpoint (starting afresh): %s", desc, e)

    real_arg = real_feats if isinstance(real_feats, jax.Array) else jnp.asarray(real_feats)

    def update(params, opt_state, key, real):
        loss, grads = jax.value_and_grad(loss_fn)(params, key, real)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    # With a mesh: everything but the batch replicated, so every process holds the whole result.
    update = jax.jit(update) if mesh is None else jax.jit(update, out_shardings=parallel.replicated(mesh))

    def local(tree):
        """Host-local copies of (replicated) global arrays, for eval_fn and the result."""
        return tree if mesh is None else jax.tree_util.tree_map(jnp.asarray, parallel.to_host(tree))

    def record_eval(state, step):
        if eval_fn is None:
            return state
        j = int(np.sum(np.asarray(state["eval_steps"]) >= 0))
        if j and int(state["eval_steps"][j - 1]) == step:
            return state
        value = eval_fn(local(state["params"]))
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"eval_fn must return a number, got {type(value).__name__} at step {step}") from None
        if not np.isfinite(value):
            raise FloatingPointError(f"{desc}: eval_fn returned {value} at step {step} (the parameters are finite: "
                                     "the monitor itself)")
        return dict(state, eval_steps=state["eval_steps"].at[j].set(step),
                    eval_values=state["eval_values"].at[j].set(value))

    start = int(state["step"])
    if mesh is not None:
        parallel.check_same_on_all_processes(np.int64(start), name="the step resumed from the checkpoint")
        # laid out as the step returns them, so that the first step's inputs do not cost a second compile
        state = dict(state, **parallel.replicate({k: state[k] for k in ("params", "opt_state")}, mesh))
    end = steps if stop_after is None else min(steps, stop_after)
    if start == 0:
        state = record_eval(state, 0)
    with progress.bar(total=steps, initial=start, desc=desc) as bar:
        for i in range(start, end):
            try:
                with parallel.use_mesh(mesh):
                    params, opt_state, loss, grads = update(state["params"], state["opt_state"],
                                                            jax.random.fold_in(key, i), real_arg)
                loss = float(loss)
            except Exception as e:          # the sampler's finiteness check, raised from the compiled step
                msg = chain.nonfinite_message(e)
                if msg is None:
                    raise
                raise FloatingPointError(f"{desc}: at search step {i}, {msg}") from None
            if not np.isfinite(loss):
                raise FloatingPointError(f"{desc}: the loss is {loss} at step {i}")
            bad = _nonfinite_leaves(grads)
            if bad:
                raise FloatingPointError(f"{desc}: gradient of {', '.join(bad)} is not finite at step {i}")
            bad = _nonfinite_leaves(params)
            if bad:     # finite loss and gradients: the optimiser's update itself (e.g. a NaN learning rate)
                raise FloatingPointError(f"{desc}: the optimizer's update made {', '.join(bad)} non-finite at step "
                                         f"{i} (the loss and its gradient were finite: check the optimizer, e.g. "
                                         "its learning rate)")
            state = dict(state, step=jnp.asarray(i + 1, jnp.int32), params=params, opt_state=opt_state,
                         loss=state["loss"].at[i].set(loss))
            if (i + 1) % eval_every == 0 or i + 1 == steps:
                state = record_eval(state, i + 1)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}", refresh=False)
            if ckpt_path is not None and ((i + 1) % ckpt_every == 0 or i + 1 == end):
                store.save_state(ckpt_path, state, config=config)
    keep = np.asarray(state["eval_steps"]) >= 0
    return SearchResult(family.name, local(state["params"]), np.asarray(logsnrs), np.asarray(state["loss"]),
                        np.asarray(state["eval_steps"])[keep], np.asarray(state["eval_values"])[keep])
