"""Training of the residual quantizer (docs/design.md §3): k-means init, jitted epochs, best-by-collision.

Whole epochs run inside one jitted `lax.scan` over device-resident data: each epoch
draws a permutation of the items on device (`fold_in(shuffle_key, epoch)`), scans the
optimizer step over its full batches and takes one more step on the short rest, so
every item is seen exactly once per epoch (the rest's step is compiled separately,
its shape being static too). Python only regains
control every `eval_every_epochs` epochs, to measure the collision rates and keep the
parameters with the lowest mean collision rate over the identifier kinds (ties go to
the later evaluation), preferring parameters whose collisions `resolve` can remove (no
prefix holding more than K items) over any that it cannot.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gensar_jax.identifiers import kmeans as kmeans_lib
from gensar_jax.identifiers import quantizer
from gensar_jax.identifiers import resolve

Params = Any
# Per-epoch metrics stacked by the epoch runner, in this order.
METRICS = ("loss", "recon", "rq", "grad_norm")


def build_model(cfg, dims: Mapping[str, int]) -> quantizer.RQVAE:
  """The quantizer module described by `config.identifiers`.

  Args:
    cfg: the `identifiers` config section.
    dims: input width per embedding kind the variant reads.
  """
  plan = quantizer.make_plan(cfg.variant, cfg.num_shared_levels, cfg.num_specific_levels)
  return quantizer.RQVAE(
      plan=plan,
      dims=dict(dims),
      hidden_dims=tuple(int(h) for h in cfg.hidden_dims),
      latent_dim=int(cfg.latent_dim),
      codebook_size=int(cfg.codebook_size),
      commitment=float(cfg.commitment),
      sinkhorn_epsilon=float(cfg.sinkhorn_epsilon),
      sinkhorn_iters=int(cfg.sinkhorn_iters),
  )


def init_params(
    model: quantizer.RQVAE, batch: Mapping[str, jax.Array], key: jax.Array, kmeans_iters: int
) -> Params:
  """Xavier-normal MLP weights, then every codebook set by k-means on its level's residuals.

  The levels are visited in residual order: each level's codebook is fitted on the
  residuals the already-initialised levels before it leave of `batch`.
  """
  mlp_key, km_key = jax.random.split(key)
  abstract = jax.eval_shape(lambda k, x: model.init(k, x, train=False), mlp_key, batch)
  params = dict(jax.jit(quantizer.init_from_one_draw)(abstract["params"], mlp_key))
  r0 = jax.jit(lambda p, x: model.apply({"params": p}, x, method=quantizer.RQVAE.encode))(
      params, batch)
  names = model.plan.all_levels
  nearest = jax.jit(functools.partial(quantizer.quantize_level, commitment=model.commitment))

  def level_fn(name, r, balanced):
    del balanced
    centres = kmeans_lib.kmeans(
        r, model.codebook_size, jax.random.fold_in(km_key, names.index(name)), kmeans_iters
    )
    params[f"codebook_{name}"] = centres
    return nearest(r, centres)

  quantizer.residual_walk(model.plan, r0, level_fn, balanced=False)
  return params


def make_schedule(cfg, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup to the peak rate over `warmup_epochs`, then linear decay to zero."""
  total = max(1, steps_per_epoch * int(cfg.epochs))
  warmup = min(total - 1, steps_per_epoch * int(cfg.warmup_epochs))
  peak = float(cfg.learning_rate)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(warmup, 1)),
       optax.linear_schedule(peak, 0.0, max(total - warmup, 1))],
      [warmup],
  )


def make_optimizer(cfg, steps_per_epoch: int) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW on the warmup/decay schedule."""
  return optax.chain(
      optax.clip_by_global_norm(float(cfg.grad_clip)),
      optax.adamw(make_schedule(cfg, steps_per_epoch), weight_decay=float(cfg.weight_decay)),
  )


def make_train_step(model: quantizer.RQVAE, tx: optax.GradientTransformation) -> Callable:
  """One optimizer step: (params, opt_state), batch -> new state, metrics [4]."""

  def loss_fn(params, batch):
    loss, aux = model.apply({"params": params}, batch, train=True)
    return loss, (aux["recon"], aux["rq"])

  def train_step(state, batch):
    params, opt_state = state
    (loss, (recon, rq)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return (params, opt_state), jnp.stack([loss, recon, rq, optax.tree.norm(grads)])

  return train_step


def num_epoch_steps(num_items: int, batch_size: int) -> int:
  """Optimizer steps per epoch: `ceil(num_items / batch_size)` (the last batch may be short)."""
  return -(-num_items // batch_size)


def epoch_batches(perm_N: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """Cuts one epoch's permutation into full batches and the short rest.

  Returns:
    (idx_SxB, idx_R): S = N // batch_size full batches, then the R = N mod batch_size
    remaining items (R may be 0).
  """
  full = perm_N.shape[0] // batch_size
  return perm_N[: full * batch_size].reshape(full, batch_size), perm_N[full * batch_size:]


def make_epoch_runner(
    model: quantizer.RQVAE, tx: optax.GradientTransformation, batch_size: int
) -> Callable:
  """A jitted function running whole epochs on device.

  Every epoch visits each item exactly once: a scan of the optimizer step over the
  full batches of a fresh permutation, then one step on the short last batch when N
  is not a multiple of `batch_size` (as a data loader that keeps its last batch).

  Returns:
    run(state, data, shuffle_key, epochs_E) -> (state, metrics_Ex4): `data` maps kind
    to the full [N, d] array; `epochs_E` are the epoch numbers to run (their count
    fixes the compiled program); the metrics are each epoch's means over its steps.
    `state` is donated.
  """
  train_step = make_train_step(model, tx)

  def run(state, data, shuffle_key, epochs_E):
    n = next(iter(data.values())).shape[0]

    def step_body(state, idx_B):
      return train_step(state, {k: jnp.take(v, idx_B, axis=0) for k, v in data.items()})

    def epoch_body(state, epoch):
      perm_N = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
      idx_SxB, idx_R = epoch_batches(perm_N, batch_size)
      metrics_Sx4 = jnp.zeros((0, len(METRICS)), jnp.float32)
      if idx_SxB.shape[0]:
        state, metrics_Sx4 = jax.lax.scan(step_body, state, idx_SxB)
      if idx_R.shape[0]:
        state, metrics_4 = step_body(state, idx_R)
        metrics_Sx4 = jnp.concatenate([metrics_Sx4, metrics_4[None]])
      return state, jnp.mean(metrics_Sx4, axis=0)

    return jax.lax.scan(epoch_body, state, epochs_E)

  return jax.jit(run, donate_argnums=(0,))


def make_assigner(model: quantizer.RQVAE, chunk: int = 4096) -> Callable:
  """A jitted function: (params, data) -> (codes {level: [N]}, last residuals {kind: [N, d]}).

  Plain nearest-code assignment (no Sinkhorn), in chunks of `chunk` items.
  """
  plan = model.plan
  kinds = [k for k in quantizer.KINDS if plan.kind_levels(k)]

  def assign_chunk(params, inputs):
    walk = model.apply(
        {"params": params}, inputs, method=lambda m, x: m.quantize(m.encode(x), balanced=False)
    )
    codes = {n: walk["levels"][n].codes for n in plan.all_levels}
    last = {k: walk["levels"][plan.kind_levels(k)[-1]].residual_in for k in kinds}
    return codes, last

  @jax.jit
  def assign(params, data):
    n = next(iter(data.values())).shape[0]
    pieces = -(-n // chunk)
    pad = pieces * chunk - n
    chunks = {
        k: jnp.pad(v, ((0, pad), (0, 0))).reshape(pieces, chunk, v.shape[-1])
        for k, v in data.items()
    }
    out = jax.lax.map(lambda x: assign_chunk(params, x), chunks)
    return jax.tree.map(lambda a: a.reshape(pieces * chunk, *a.shape[2:])[:n], out)

  return assign


def kind_codes(plan: quantizer.LevelPlan, level_codes: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Identifier codes [N, L] int32 per kind from per-level codes."""
  return {
      k: np.stack([np.asarray(level_codes[n]) for n in plan.kind_levels(k)], axis=1).astype(np.int32)
      for k in quantizer.KINDS
  }


def _rank(entry: Mapping[str, Any]) -> tuple[bool, float]:
  """Model-selection key (higher is better): resolvable first, then fewer collisions."""
  return bool(entry["resolvable"]), -float(entry["collision_mean"])


def collision_rates(plan: quantizer.LevelPlan, level_codes: Mapping[str, Any]) -> dict[str, float]:
  """Collision rate of each identifier kind and their mean (the model-selection score)."""
  rates = {k: resolve.collision_rate(c) for k, c in kind_codes(plan, level_codes).items()}
  rates["mean"] = float(np.mean([rates[k] for k in quantizer.KINDS]))
  return rates


def resolvable(plan: quantizer.LevelPlan, level_codes: Mapping[str, Any], k: int) -> bool:
  """Whether `resolve` can make every kind's identifiers unique (no prefix over K items)."""
  return all(resolve.largest_prefix_group(c) <= k
             for c in kind_codes(plan, level_codes).values())


@dataclasses.dataclass
class TrainResult:
  """What `train` returns: the kept parameters and the record of the run."""

  params: Params  # best parameters (host numpy), by lowest mean collision rate
  best_epoch: int
  best_collision: dict[str, float]
  # One entry per evaluation: collision rates, distinct codes per level (`usage_M1`...)
  # and the last epoch's mean losses. Epoch 0 (k-means codebooks on the untrained
  # encoders) is recorded for reference but never kept: only trained parameters compete.
  curve: list[dict[str, float]]
  batch_size: int
  steps_per_epoch: int
  steps: int
  init_s: float  # MLP init and k-means codebooks, compiles included
  compile_s: float
  train_s: float
  eval_s: float

  @property
  def steps_per_s(self) -> float:
    return self.steps / self.train_s if self.train_s > 0 else float("nan")


def train(
    cfg, model: quantizer.RQVAE, inputs: Mapping[str, np.ndarray], seed: int
) -> TrainResult:
  """Trains the quantizer on all items.

  Args:
    cfg: the `identifiers` config section (batch_size, epochs, schedule, ...).
    model: from `build_model`.
    inputs: {kind: [N, d] float32} for the kinds `model` reads.
    seed: PRNG seed (init, k-means, shuffling).

  Returns:
    A `TrainResult`.
  """
  data = {k: jnp.asarray(inputs[k], jnp.float32) for k in model.kinds()}
  n = next(iter(data.values())).shape[0]
  batch_size = min(int(cfg.batch_size), n)
  steps_per_epoch = num_epoch_steps(n, batch_size)
  epochs = int(cfg.epochs)
  eval_every = max(1, int(cfg.eval_every_epochs))
  init_key, shuffle_key = jax.random.split(jax.random.key(seed))

  t0 = time.perf_counter()
  first_idx = jax.random.permutation(jax.random.fold_in(shuffle_key, 0), n)[:batch_size]
  params = init_params(
      model, {k: v[first_idx] for k, v in data.items()}, init_key, int(cfg.kmeans_iters)
  )
  init_s = time.perf_counter() - t0
  tx = make_optimizer(cfg, steps_per_epoch)
  state = (params, tx.init(params))
  runner = make_epoch_runner(model, tx, batch_size)
  assign = make_assigner(model)

  compile_s = train_s = eval_s = 0.0
  compiled: dict[int, Any] = {}

  def evaluate(params, epoch, metrics):
    nonlocal eval_s
    t0 = time.perf_counter()
    level_codes, _ = jax.device_get(assign(params, data))
    eval_s += time.perf_counter() - t0
    rates = collision_rates(model.plan, level_codes)
    entry = {"epoch": epoch, **{f"collision_{k}": v for k, v in rates.items()},
             "resolvable": resolvable(model.plan, level_codes, model.codebook_size)}
    entry.update({f"usage_{name}": int(len(np.unique(c))) for name, c in level_codes.items()})
    entry.update({m: float(v) for m, v in zip(METRICS, metrics)} if metrics is not None else {})
    return entry

  curve = [evaluate(state[0], 0, None)]
  best_params, best_epoch, best = jax.device_get(state[0]), 0, None
  epoch = 0
  while epoch < epochs:
    span = min(eval_every, epochs - epoch)
    epochs_E = jnp.arange(epoch, epoch + span)
    if span not in compiled:
      t0 = time.perf_counter()
      compiled[span] = runner.lower(state, data, shuffle_key, epochs_E).compile()
      compile_s += time.perf_counter() - t0
    t0 = time.perf_counter()
    state, metrics_Ex4 = compiled[span](state, data, shuffle_key, epochs_E)
    metrics_Ex4 = np.asarray(jax.device_get(metrics_Ex4))
    train_s += time.perf_counter() - t0
    epoch += span
    entry = evaluate(state[0], epoch, metrics_Ex4[-1])
    curve.append(entry)
    if best is None or _rank(entry) >= _rank(best):
      best, best_epoch = entry, epoch
      best_params = jax.device_get(state[0])
    logging.info(
        "identifiers: epoch %d/%d loss %.5f (recon %.5f, rq %.5f) collisions sem %.4f "
        "col %.4f, %.1f steps/s", epoch, epochs, entry["loss"], entry["recon"], entry["rq"],
        entry["collision_semantic"], entry["collision_collaborative"],
        steps_per_epoch * epoch / max(train_s, 1e-9),
    )
  best_rates = {k: curve[[c["epoch"] for c in curve].index(best_epoch)][f"collision_{k}"]
                for k in (*quantizer.KINDS, "mean")}
  return TrainResult(
      params=best_params,
      best_epoch=best_epoch,
      best_collision=best_rates,
      curve=curve,
      batch_size=batch_size,
      steps_per_epoch=steps_per_epoch,
      steps=steps_per_epoch * epochs,
      init_s=init_s,
      compile_s=compile_s,
      train_s=train_s,
      eval_s=eval_s,
  )
