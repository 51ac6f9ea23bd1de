"""SASRec (Kang & McAuley 2018) in Flax: training, scoring and its item table.

Causal self-attention over the last `max_len` recommended items (left-padded, learned
positions), post-block LayerNorm, and the item embedding table shared with the output
layer: the score of item j after a prefix is <h_t, E[j]>. Item index i is stored as
token i + 1; token 0 is padding. The item table without the padding row is the
collaborative embedding v_c [N, hidden].

Loss: `softmax` (default) is cross-entropy over the whole catalog at every position
that has a target; `bce` is the original paper's binary cross-entropy with one uniformly
sampled negative per target. Only target positions are scored (`target_positions`):
most positions of left-padded windows are padding, and skipping them cuts most of the
output layer's work without changing the loss. A step's batch is processed as
microbatches whose gradients are summed (`loss_and_grads`), which keeps XLA's scratch
memory small; the step's loss is still the mean over all of its targets. Training reads
only the sequences it is handed (`training_arrays`), so what the model saw can be
checked directly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Mapping, Sequence

from absl import logging
import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from gensar_jax import metrics
from gensar_jax import progress as progress_lib
from gensar_jax.data import schema

PAD = 0  # Token of an empty position; item i is token i + 1.
LOSSES = ("softmax", "bce")
# Most sequences per microbatch. A train step accumulates the gradients of microbatches
# of this size: XLA:CPU maps a fresh scratch buffer for every step, and at 128 rows it
# was 130 MB, page-faulted anew each step (as much system time as compute); at 32 rows
# it is about 30 MB and stays in the allocator's heap.
MICRO_ROWS = 32


@dataclasses.dataclass(frozen=True)
class SasrecConfig:
  """Architecture and training settings (mirrors `config.embed.sasrec`)."""

  num_items: int
  max_len: int = 50
  hidden: int = 64
  num_layers: int = 2
  num_heads: int = 1
  dropout: float = 0.2
  learning_rate: float = 1e-3
  batch_size: int = 128
  epochs: int = 60
  loss: str = "softmax"

  @classmethod
  def from_config(cls, section: Mapping[str, Any], num_items: int) -> "SasrecConfig":
    """Builds one from `config.embed.sasrec` (unknown keys are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"num_items"}
    return cls(num_items=num_items, **{k: section[k] for k in names if k in section})


class _Block(nn.Module):
  """Self-attention + point-wise feed-forward, as in the SASRec paper."""

  hidden: int
  num_heads: int
  dropout: float

  @nn.compact
  def __call__(self, x_BxLxD, attn_mask_Bx1xLxL, keep_BxLx1, deterministic: bool):
    q_BxLxD = nn.LayerNorm(epsilon=1e-8, name="attention_ln")(x_BxLxD)
    a_BxLxD = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dropout_rate=self.dropout, name="attention"
    )(q_BxLxD, x_BxLxD, mask=attn_mask_Bx1xLxL, deterministic=deterministic)
    x_BxLxD = q_BxLxD + nn.Dropout(self.dropout)(a_BxLxD, deterministic=deterministic)
    y_BxLxD = nn.LayerNorm(epsilon=1e-8, name="ffn_ln")(x_BxLxD)
    f_BxLxD = nn.Dropout(self.dropout)(nn.relu(nn.Dense(self.hidden, name="ffn_in")(y_BxLxD)),
                                       deterministic=deterministic)
    f_BxLxD = nn.Dropout(self.dropout)(nn.Dense(self.hidden, name="ffn_out")(f_BxLxD),
                                       deterministic=deterministic)
    return (y_BxLxD + f_BxLxD) * keep_BxLx1


class SASRec(nn.Module):
  """Maps token sequences [B, L] (0 = padding, left-padded) to states [B, L, hidden]."""

  config: SasrecConfig

  def setup(self):
    c = self.config
    init = nn.initializers.normal(stddev=0.02)
    self.item_embed = nn.Embed(c.num_items + 1, c.hidden, embedding_init=init)
    self.pos_embed = nn.Embed(c.max_len, c.hidden, embedding_init=init)
    self.blocks = [_Block(c.hidden, c.num_heads, c.dropout) for _ in range(c.num_layers)]
    self.final_ln = nn.LayerNorm(epsilon=1e-8)
    self.embed_dropout = nn.Dropout(c.dropout)

  def __call__(self, seq_BxL: jax.Array, deterministic: bool = True) -> jax.Array:
    c = self.config
    keep_BxL = seq_BxL != PAD
    x_BxLxD = self.item_embed(seq_BxL) * np.sqrt(c.hidden)
    x_BxLxD = x_BxLxD + self.pos_embed(jnp.arange(seq_BxL.shape[1]))[None]
    x_BxLxD = self.embed_dropout(x_BxLxD, deterministic=deterministic)
    keep_BxLx1 = keep_BxL[..., None].astype(x_BxLxD.dtype)
    x_BxLxD = x_BxLxD * keep_BxLx1
    mask_Bx1xLxL = nn.combine_masks(nn.make_causal_mask(seq_BxL), nn.make_attention_mask(keep_BxL, keep_BxL))
    for block in self.blocks:
      x_BxLxD = block(x_BxLxD, mask_Bx1xLxL, keep_BxLx1, deterministic)
    return self.final_ln(x_BxLxD)

  def item_table(self) -> jax.Array:
    """Embeddings of items 0..N-1 (padding row dropped) [N, hidden]."""
    return self.item_embed.embedding[1:]


@dataclasses.dataclass
class SasrecModel:
  """A trained SASRec: its config and parameters."""

  config: SasrecConfig
  params: Any

  def item_table(self) -> np.ndarray:
    """The collaborative embedding v_c, float32 [N, hidden], item index order."""
    return np.asarray(
        SASRec(self.config).apply(self.params, method=SASRec.item_table), np.float32)


@functools.partial(jax.jit, static_argnames=("config",))
def init_params(config: SasrecConfig, rng: jax.Array) -> Any:
  """Freshly initialised SASRec parameters (jitted: eager Flax init is slow on CPU)."""
  return SASRec(config).init(rng, jnp.zeros((1, config.max_len), jnp.int32))


def training_arrays(sequences: Sequence[np.ndarray], max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Next-item training examples from item sequences; nothing else enters training.

  Each sequence of T items gives T - 1 (prefix, next item) targets, cut into windows
  of at most `max_len` consecutive targets, newest window first.

  Args:
    sequences: per user, item indices in time order.
    max_len: window length.

  Returns:
    inputs_ExL, targets_ExL: int32 tokens (item + 1), left-padded with 0; targets[t]
    is the item that follows inputs[t].
  """
  inputs, targets = [], []
  for seq in sequences:
    tokens = np.asarray(seq, np.int64) + 1
    for end in range(len(tokens), 1, -max_len):
      window = tokens[max(0, end - max_len - 1):end]
      row_in, row_tgt = np.zeros(max_len, np.int32), np.zeros(max_len, np.int32)
      row_in[max_len - len(window) + 1:] = window[:-1]
      row_tgt[max_len - len(window) + 1:] = window[1:]
      inputs.append(row_in)
      targets.append(row_tgt)
  if not inputs:
    return np.zeros((0, max_len), np.int32), np.zeros((0, max_len), np.int32)
  return np.stack(inputs), np.stack(targets)


def target_positions(targets_BxL: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
  """The positions of a batch that carry a target, padded to `capacity` slots.

  Most positions of left-padded windows are padding; scoring only the others against
  the catalog saves most of the output layer's work. One capacity for the whole run
  keeps the train step at one compiled shape.

  Args:
    targets_BxL: target tokens, PAD where there is none.
    capacity: slots returned; at least the number of targets.

  Returns:
    pos_C: int32 flat indices into [B * L] (0 for filler slots).
    tgt_C: int32 target tokens at those positions (PAD for filler slots).

  Raises:
    ValueError: more targets than `capacity`.
  """
  flat = np.asarray(targets_BxL).reshape(-1)
  pos = np.flatnonzero(flat != PAD)
  if len(pos) > capacity:
    raise ValueError(f"{len(pos)} targets do not fit in {capacity} slots")
  pos_C = np.zeros(capacity, np.int32)
  tgt_C = np.full(capacity, PAD, np.int32)
  pos_C[:len(pos)] = pos
  tgt_C[:len(pos)] = flat[pos]
  return pos_C, tgt_C


def microbatches(batch_size: int, micro_rows: int = MICRO_ROWS) -> tuple[int, int]:
  """(microbatches, rows each) that hold `batch_size` sequences in steps of <= `micro_rows`."""
  count = max(1, -(-batch_size // micro_rows))
  return count, -(-batch_size // count)


def _epoch_orders(num: int, batch_size: int, epochs: int, seed: int):
  """Per epoch, example indices [steps, microbatches, rows]; -1 marks filler rows.

  Each step takes the next `batch_size` examples of a fresh shuffle; a step's rows are
  split into `microbatches(batch_size)`, filler rows going last.
  """
  shuffle = np.random.default_rng(seed)
  steps = -(-num // batch_size)
  count, rows = microbatches(batch_size)
  for _ in range(epochs):
    order_SxB = np.concatenate([shuffle.permutation(num), np.full(steps * batch_size - num, -1)])
    order_SxB = order_SxB.reshape(steps, batch_size)
    fill = np.full((steps, count * rows - batch_size), -1)
    yield np.concatenate([order_SxB, fill], axis=1).reshape(steps, count, rows)


def _slot_capacity(targets_E: np.ndarray, batch_size: int, epochs: int, seed: int,
                   multiple: int = 32) -> int:
  """The most targets any microbatch of the run will hold, rounded up to `multiple`."""
  counts = np.append(targets_E, 0)  # Index -1 (filler row) counts 0.
  most = max((int(counts[order].sum(-1).max())
              for order in _epoch_orders(len(targets_E), batch_size, epochs, seed)), default=0)
  return max(1, -(-most // multiple)) * multiple


def _nll_sum(params, rng, inputs_BxL, pos_C, tgt_C, *, config: SasrecConfig):
  """(Summed next-item loss, number of targets) over the target slots of a batch."""
  model = SASRec(config)
  drop_rng, neg_rng = jax.random.split(rng)
  h_BxLxD = model.apply(params, inputs_BxL, deterministic=False, rngs={"dropout": drop_rng})
  h_CxD = h_BxLxD.reshape(-1, h_BxLxD.shape[-1])[pos_C]
  table_NxD = model.apply(params, method=SASRec.item_table)
  valid_C = (tgt_C != PAD).astype(jnp.float32)
  item_C = jnp.maximum(tgt_C - 1, 0)
  if config.loss == "softmax":
    nll_C = optax.softmax_cross_entropy_with_integer_labels(h_CxD @ table_NxD.T, item_C)
  else:
    # One negative per target, uniform over the other items.
    shift_C = jax.random.randint(neg_rng, item_C.shape, 1, config.num_items)
    neg_C = (item_C + shift_C) % config.num_items
    pos_logit_C = jnp.einsum("cd,cd->c", h_CxD, table_NxD[item_C])
    neg_logit_C = jnp.einsum("cd,cd->c", h_CxD, table_NxD[neg_C])
    nll_C = -jax.nn.log_sigmoid(pos_logit_C) - jax.nn.log_sigmoid(-neg_logit_C)
  return (nll_C * valid_C).sum(), valid_C.sum()


def loss_and_grads(params, rng, inputs_MxBxL, pos_MxC, tgt_MxC, *, config: SasrecConfig):
  """Mean loss over every target of a step's microbatches, and its gradients.

  The microbatches' summed losses and gradients are accumulated and divided by the
  step's target count once, so the result is the full batch's mean loss (each
  microbatch draws its own dropout masks).
  """

  def one(carry, xs):
    grads_acc, nll_acc, count_acc = carry
    m, inputs_BxL, pos_C, tgt_C = xs
    (nll, count), grads = jax.value_and_grad(_nll_sum, has_aux=True)(
        params, jax.random.fold_in(rng, m), inputs_BxL, pos_C, tgt_C, config=config)
    return (jax.tree.map(jnp.add, grads_acc, grads), nll_acc + nll, count_acc + count), None

  init = (jax.tree.map(jnp.zeros_like, params), jnp.zeros(()), jnp.zeros(()))
  xs = (jnp.arange(inputs_MxBxL.shape[0]), inputs_MxBxL, pos_MxC, tgt_MxC)
  (grads, nll, count), _ = jax.lax.scan(one, init, xs)
  count = jnp.maximum(count, 1.0)
  return nll / count, jax.tree.map(lambda g: g / count, grads)


@functools.partial(jax.jit, static_argnames=("config", "tx"))
def _train_step(params, opt_state, rng, inputs_MxBxL, pos_MxC, tgt_MxC, *, config, tx):
  """One Adam step; returns (params, opt_state, next rng, loss)."""
  rng, step_rng = jax.random.split(rng)
  loss, grads = loss_and_grads(params, step_rng, inputs_MxBxL, pos_MxC, tgt_MxC, config=config)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, rng, loss


def train(sequences: Sequence[np.ndarray], config: SasrecConfig, seed: int = 0,
          progress: bool = True) -> tuple[SasrecModel, dict]:
  """Trains SASRec on the given item sequences (and on nothing else).

  Args:
    sequences: per user, training item indices in time order.
    config: model and training settings.
    seed: RNG seed (init, shuffling, dropout, negatives).
    progress: show a progress bar.

  Returns:
    The trained model and a summary (examples, steps, final loss, seconds).
  """
  if config.loss not in LOSSES:
    raise ValueError(f"sasrec loss must be one of {LOSSES}, got {config.loss!r}")
  inputs_ExL, targets_ExL = training_arrays(sequences, config.max_len)
  num = len(inputs_ExL)
  if num == 0:
    raise ValueError("no training sequence has two or more items")
  rng = jax.random.PRNGKey(seed)
  rng, init_rng = jax.random.split(rng)
  params = init_params(config, init_rng)
  tx = optax.adam(config.learning_rate, b2=0.98)
  opt_state = tx.init(params)
  bs = config.batch_size
  capacity = _slot_capacity((targets_ExL != PAD).sum(1), bs, config.epochs, seed)
  start, losses = time.time(), []
  bar = progress_lib.bar(_epoch_orders(num, bs, config.epochs, seed), total=config.epochs,
                         desc="sasrec", show=progress)
  for epoch, order_SxMxR in enumerate(bar):
    step_losses = []
    for idx_MxR in order_SxMxR:
      # Filler rows (-1) are all padding: they carry no target and no loss.
      real_MxRx1 = (idx_MxR >= 0)[..., None]
      inputs_MxRxL = np.where(real_MxRx1, inputs_ExL[idx_MxR], PAD)
      slots = [target_positions(t, capacity) for t in np.where(real_MxRx1, targets_ExL[idx_MxR], PAD)]
      pos_MxC, tgt_MxC = (np.stack(x) for x in zip(*slots))
      params, opt_state, rng, loss = _train_step(params, opt_state, rng, inputs_MxRxL, pos_MxC,
                                                 tgt_MxC, config=config, tx=tx)
      step_losses.append(loss)  # Read once per epoch: no host sync between steps.
    losses.append(float(jnp.mean(jnp.stack(step_losses))))
    bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if epoch % 10 == 0 or epoch == config.epochs - 1:
      logging.info("sasrec epoch %d: loss %.4f", epoch, losses[-1])
  summary = {
      "examples": int(num), "targets": int((targets_ExL != PAD).sum()),
      "steps": int(-(-num // bs) * config.epochs), "microbatches": list(microbatches(bs)),
      "target_slots": int(capacity), "loss": config.loss,
      "first_epoch_loss": losses[0], "final_loss": losses[-1],
      "train_s": round(time.time() - start, 2),
  }
  return SasrecModel(config, params), summary


def encode_histories(histories: Sequence[np.ndarray], max_len: int) -> np.ndarray:
  """The last `max_len` items of each history as left-padded tokens [B, max_len]."""
  out_BxL = np.zeros((len(histories), max_len), np.int32)
  for b, h in enumerate(histories):
    h = np.asarray(h, np.int64)[-max_len:]
    if len(h):
      out_BxL[b, max_len - len(h):] = h + 1
  return out_BxL


@functools.partial(jax.jit, static_argnames=("config",))
def _score_all(params, seq_BxL, *, config):
  model = SASRec(config)
  h_BxD = model.apply(params, seq_BxL)[:, -1]
  return h_BxD @ model.apply(params, method=SASRec.item_table).T


def score_all(model: SasrecModel, histories: Sequence[np.ndarray], batch_size: int = 256) -> np.ndarray:
  """Scores of every catalog item after each history, float32 [B, N]."""
  seq_BxL = encode_histories(histories, model.config.max_len)
  out = []
  for start in range(0, len(seq_BxL), batch_size):
    chunk = seq_BxL[start:start + batch_size]
    padded = np.zeros((batch_size, chunk.shape[1]), np.int32)
    padded[:len(chunk)] = chunk
    out.append(np.asarray(_score_all(model.params, padded, config=model.config))[:len(chunk)])
  return np.concatenate(out) if out else np.zeros((0, model.config.num_items), np.float32)


def score_candidates(model: SasrecModel, histories: Sequence[np.ndarray],
                     candidates_BxC: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Scores of given candidate items after each history, float32 [B, C]."""
  candidates_BxC = np.asarray(candidates_BxC)
  out = np.zeros(candidates_BxC.shape, np.float32)
  for start in range(0, len(candidates_BxC), batch_size):
    part = slice(start, start + batch_size)
    out[part] = np.take_along_axis(score_all(model, histories[part], batch_size),
                                   candidates_BxC[part], axis=1)
  return out


def _field(rows: Any, name: str) -> np.ndarray:
  """One field of a batch of rows: a dict of stacked arrays or a sequence of dicts."""
  if isinstance(rows, Mapping):
    return np.asarray(rows[name])
  return np.stack([np.asarray(r[name]) for r in rows])


def row_histories(catalog: schema.Catalog, rows: Any, earlier_rows: Any = None
                  ) -> tuple[list[np.ndarray], int]:
  """Each row's recommendation items before its target, oldest first.

  The full sequence is the user's `rec_train_sequences` entry, followed by the user's
  target in `earlier_rows` (pass the validation rows when scoring test rows). It is
  used when its tail agrees with the row's own KIND_REC history entries; otherwise
  (or when the user has no such sequence) the row's KIND_REC entries are used.

  Returns:
    (histories, number of rows that fell back to their own short history).
  """
  users, kinds, items = (_field(rows, k) for k in ("user", "history_kind", "history_item"))
  extra: dict[int, int] = {}
  if earlier_rows is not None:
    extra = dict(zip(_field(earlier_rows, "user").tolist(), _field(earlier_rows, "item").tolist()))
  out, fallbacks = [], 0
  for u, k_H, i_H in zip(users.tolist(), kinds, items):
    short = np.asarray(i_H[k_H == schema.KIND_REC], np.int64)
    full = np.asarray(catalog.rec_train_sequences[u], np.int64) if u < len(catalog.rec_train_sequences) else None
    if full is not None and u in extra:
      full = np.append(full, extra[u])
    if full is not None and len(full) >= len(short) and np.array_equal(full[len(full) - len(short):], short):
      out.append(full)
    else:
      out.append(short)
      fallbacks += 1
  return out, fallbacks


def evaluate(model: SasrecModel, catalog: schema.Catalog, rows: Any, earlier_rows: Any = None,
             seed: int = 0) -> dict[str, Any]:
  """SASRec's metrics on recommendation rows: 100-candidate lists and full catalog.

  Args:
    model: a trained SASRec.
    catalog: the data stage's catalog.
    rows: validation or test recommendation rows (with `negatives`).
    earlier_rows: rows whose targets precede these (validation rows for test rows).
    seed: tie-breaking seed.

  Returns:
    {"sampled": metrics, "full": metrics, "history_fallbacks": int}; the full ranking
    is over all N items, history items included (as a generative ranker would).
  """
  histories, fallbacks = row_histories(catalog, rows, earlier_rows)
  target_B = _field(rows, "item").astype(np.int64)
  candidates_BxC = np.concatenate([target_B[:, None], _field(rows, "negatives").astype(np.int64)], axis=1)
  scores_BxN = score_all(model, histories)
  with metrics.scoring("SASRec (the embed stage's) on its evaluation rows"):
    sampled = metrics.ranks_from_scores(
        np.take_along_axis(scores_BxN, candidates_BxC, axis=1), 0, seed)
    full = metrics.ranks_of_targets(scores_BxN, target_B, seed)
  return {
      "sampled": metrics.metrics_from_ranks(sampled),
      "full": metrics.metrics_from_ranks(full),
      "history_fallbacks": int(fallbacks),
  }


PARAMS_FILE = "sasrec_params.msgpack"
CONFIG_FILE = "sasrec_config.json"


def save(model: SasrecModel, folder: str | pathlib.Path) -> None:
  """Writes the config (JSON) and parameters (msgpack) into `folder`."""
  folder = pathlib.Path(folder)
  (folder / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(model.config), indent=2) + "\n")
  (folder / PARAMS_FILE).write_bytes(flax.serialization.to_bytes(model.params))


def load(folder: str | pathlib.Path) -> SasrecModel:
  """Reads a model written by `save` (e.g. the embed stage's output directory)."""
  folder = pathlib.Path(folder)
  config = SasrecConfig(**json.loads((folder / CONFIG_FILE).read_text()))
  template = init_params(config, jax.random.PRNGKey(0))
  params = flax.serialization.from_bytes(template, (folder / PARAMS_FILE).read_bytes())
  return SasrecModel(config, params)
