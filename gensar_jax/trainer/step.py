"""The optimizer and the jitted train step (docs/design.md §5).

AdamW with linear warmup then cosine decay to zero, global-norm gradient clipping,
and gradient accumulation as a `lax.scan` over micro-batches inside ONE `jax.jit`.
The loss is the token-level NLL of the response, averaged over every non-padding
target token of the whole optimizer step (so accumulating A micro-batches gives the
same gradient as one batch A times larger).

With replicated parameters on a mesh of several devices, the micro-batches' gradients
are summed on each device inside `jax.shard_map` and all-reduced once per step; left to
the partitioner, the all-reduce ran inside the scan, once per micro-batch (on a 2-core
CPU host split into two devices, ~10% of the step waiting at four rendezvous). Dropout
masks are those of the whole batch either way (`T5Config.batch_axis`).

Batches are dicts of int32 arrays `src` [A, B, S] and `tgt` [A, B, T] (A micro-batches
of B examples; 0 = padding; `tgt` ends with eos). The decoder input is `tgt` shifted
right behind `decoder_start_id`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec as P


@flax.struct.dataclass
class TrainState:
  """Everything a train step updates."""

  step: jax.Array  # int32 scalar, optimizer steps taken
  params: Any  # the model's {"params": ...} pytree
  opt_state: Any  # optax state


def make_schedule(learning_rate: float, warmup_frac: float, total_steps: int) -> optax.Schedule:
  """Linear warmup over `warmup_frac` of the steps, then cosine decay to 0."""
  total_steps = max(int(total_steps), 1)
  warmup = int(round(warmup_frac * total_steps))
  if warmup <= 0:
    return optax.cosine_decay_schedule(learning_rate, total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1), end_value=0.0,
  )


def make_optimizer(train_config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (decay on matrices only, not layer-norm scales) after gradient clipping.

  Args:
    train_config: `config.train` (learning_rate, warmup_frac, weight_decay, grad_clip).
    total_steps: optimizer steps of the whole run (the schedule's length).
  """
  schedule = make_schedule(train_config.learning_rate, train_config.warmup_frac, total_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  tx = optax.chain(
      optax.clip_by_global_norm(train_config.grad_clip),
      optax.adamw(schedule, weight_decay=train_config.weight_decay, mask=decay_mask),
  )
  return tx, schedule


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def shift_right(tgt_BxT: jax.Array, start_id: int) -> jax.Array:
  """Decoder inputs for teacher forcing: `start_id` then `tgt` without its last token."""
  start = jnp.full((tgt_BxT.shape[0], 1), start_id, tgt_BxT.dtype)
  return jnp.concatenate([start, tgt_BxT[:, :-1]], axis=1)


def nll_sum(model, params, src_BxS, tgt_BxT, *, rng=None,
            label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Summed target-token NLL and the number of target tokens (padding excluded).

  Args:
    model: a `T5` module.
    params: its variables.
    src_BxS, tgt_BxT: token ids, 0 = padding.
    rng: dropout key; None runs deterministically.
    label_smoothing: weight moved from the target token to a uniform distribution over
      the vocabulary (0 = plain NLL); the sum is then the smoothed cross-entropy.
  """
  cfg = model.config
  tgt_in = shift_right(tgt_BxT, cfg.decoder_start_id)
  kwargs = {} if rng is None else {"rngs": {"dropout": rng}}
  logits_BxTxV = model.apply(params, src_BxS, tgt_in, deterministic=rng is None, **kwargs)
  mask_BxT = (tgt_BxT != cfg.pad_id).astype(jnp.float32)
  if label_smoothing > 0:
    labels_BxTxV = optax.smooth_labels(
        jax.nn.one_hot(tgt_BxT, logits_BxTxV.shape[-1]), label_smoothing)
    nll_BxT = optax.softmax_cross_entropy(logits_BxTxV.astype(jnp.float32), labels_BxTxV)
  else:
    nll_BxT = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV.astype(jnp.float32), tgt_BxT
    )
  return jnp.sum(nll_BxT * mask_BxT), jnp.sum(mask_BxT)


def micro_batch_sums(model, params, src_AxBxS, tgt_AxBxT, step_rng, *, dropout: bool,
                     label_smoothing: float) -> tuple[Any, jax.Array, jax.Array]:
  """Gradient, NLL and target tokens summed over the micro-batches (a `lax.scan`).

  Micro-batch `i` draws its dropout from `fold_in(step_rng, i)`.
  """

  def loss_fn(p, src, tgt, r):
    return nll_sum(model, p, src, tgt, rng=r if dropout else None,
                   label_smoothing=label_smoothing)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def micro(carry, xs):
    g_acc, loss_acc, tok_acc = carry
    i, src, tgt = xs
    (loss, ntok), g = grad_fn(params, src, tgt, jax.random.fold_in(step_rng, i))
    g_acc = jax.tree.map(jnp.add, g_acc, g)
    return (g_acc, loss_acc + loss, tok_acc + ntok), None

  zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
  num_micro = src_AxBxS.shape[0]
  (g_sum, loss_sum, ntok), _ = jax.lax.scan(
      micro, (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32)),
      (jnp.arange(num_micro), src_AxBxS, tgt_AxBxT),
  )
  return g_sum, loss_sum, ntok


def per_device_sums(model, mesh: Mesh, **kwargs) -> Callable:
  """`micro_batch_sums` with each device summing its rows, then one all-reduce.

  `(params, src, tgt, step_rng) -> sums`, the batch split on the mesh's first axis,
  parameters and key replicated. The model runs on each device's rows with
  `batch_axis` set, so its dropout masks are the whole batch's.
  """
  axis = mesh.axis_names[0]
  local_model = model.clone(config=dataclasses.replace(model.config, batch_axis=axis))

  def local(params, src_AxBxS, tgt_AxBxT, step_rng):
    sums = micro_batch_sums(local_model, params, src_AxBxS, tgt_AxBxT, step_rng, **kwargs)
    return jax.lax.psum(sums, axis)

  # check_vma=False: the hand-written gradients of `t5` (custom VJPs) give each device
  # its own gradient of the replicated weights, which the replication check rejects;
  # the psum above is what makes them one.
  return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, axis), P(None, axis), P()),
                       out_specs=P(), check_vma=False)


def make_train_step(
    model, tx: optax.GradientTransformation, schedule: optax.Schedule, *, dropout: bool = True,
    label_smoothing: float = 0.0, mesh: Mesh | None = None,
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
  """The un-jitted step `(state, batch, rng) -> (state, metrics)`; see `jit_train_step`.

  Its "loss" is the (label-smoothed, when `label_smoothing` > 0) cross-entropy per token.
  `mesh`: given (with more than one device) when the parameters are replicated on it;
  each device then sums its micro-batches' gradients before the one all-reduce
  (`per_device_sums`). Without it (one device, or parameters split by FSDP) the
  partitioner places the reductions.
  """
  kwargs = dict(dropout=dropout, label_smoothing=label_smoothing)
  if mesh is not None and mesh.devices.size > 1:
    sums = per_device_sums(model, mesh, **kwargs)
  else:
    sums = lambda *args: micro_batch_sums(model, *args, **kwargs)

  def step_fn(state: TrainState, batch: dict, rng: jax.Array):
    step_rng = jax.random.fold_in(rng, state.step)
    g_sum, loss_sum, ntok = sums(state.params, batch["src"], batch["tgt"], step_rng)
    denom = jnp.maximum(ntok, 1.0)
    grads = jax.tree.map(lambda g: g / denom, g_sum)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss": loss_sum / denom,
        "grad_norm": optax.tree.norm(grads),
        "learning_rate": schedule(state.step),
        "target_tokens": ntok,
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step_fn


def jit_train_step(step_fn, state_shardings, batch_shardings, replicated):
  """ONE `jax.jit` of the step: state keeps its layout, the batch stays on `data`."""
  return jax.jit(
      step_fn,
      in_shardings=(state_shardings, batch_shardings, replicated),
      out_shardings=(state_shardings, replicated),
      donate_argnums=(0,),
  )
