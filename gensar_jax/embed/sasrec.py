"""SASRec (Kang & McAuley 2018) in Flax: training, scoring and its item table.

Causal self-attention over the last `max_len` recommended items (left-padded, learned
positions), post-block LayerNorm, and the item embedding table shared with the output
layer: the score of item j after a prefix is <h_t, E[j]>. Item index i is stored as
token i + 1; token 0 is padding. The item table without the padding row is the
collaborative embedding v_c [N, hidden].

Loss: `softmax` (default) is cross-entropy over the whole catalog at every position;
`bce` is the original paper's binary cross-entropy with one uniformly sampled negative
per position. Training reads only the sequences it is handed (`training_arrays`), so
what the model saw can be checked directly.
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
import tqdm

from gensar_jax.data import schema
from gensar_jax.evaluation import metrics

PAD = 0  # Token of an empty position; item i is token i + 1.
LOSSES = ("softmax", "bce")


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


def _loss(params, rng, inputs_BxL, targets_BxL, *, config: SasrecConfig):
  model = SASRec(config)
  drop_rng, neg_rng = jax.random.split(rng)
  h_BxLxD = model.apply(params, inputs_BxL, deterministic=False, rngs={"dropout": drop_rng})
  table_NxD = model.apply(params, method=SASRec.item_table)
  valid_BxL = (targets_BxL != PAD).astype(jnp.float32)
  tgt_BxL = jnp.maximum(targets_BxL - 1, 0)
  if config.loss == "softmax":
    logits_BxLxN = jnp.einsum("bld,nd->bln", h_BxLxD, table_NxD)
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxN, tgt_BxL)
  else:
    # One negative per position, uniform over the other items.
    shift_BxL = jax.random.randint(neg_rng, tgt_BxL.shape, 1, config.num_items)
    neg_BxL = (tgt_BxL + shift_BxL) % config.num_items
    pos_BxL = jnp.einsum("bld,bld->bl", h_BxLxD, table_NxD[tgt_BxL])
    negs_BxL = jnp.einsum("bld,bld->bl", h_BxLxD, table_NxD[neg_BxL])
    nll_BxL = -jax.nn.log_sigmoid(pos_BxL) - jax.nn.log_sigmoid(-negs_BxL)
  return (nll_BxL * valid_BxL).sum() / jnp.maximum(valid_BxL.sum(), 1.0)


@functools.partial(jax.jit, static_argnames=("config", "tx"))
def _train_step(params, opt_state, rng, inputs_BxL, targets_BxL, *, config, tx):
  loss, grads = jax.value_and_grad(_loss)(params, rng, inputs_BxL, targets_BxL, config=config)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


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
  params = SASRec(config).init(init_rng, jnp.zeros((1, config.max_len), jnp.int32))
  tx = optax.adam(config.learning_rate, b2=0.98)
  opt_state = tx.init(params)
  shuffle = np.random.default_rng(seed)
  bs = config.batch_size
  steps_per_epoch = -(-num // bs)
  start, losses = time.time(), []
  bar = tqdm.trange(config.epochs, desc="sasrec", disable=not progress)
  for epoch in bar:
    order = shuffle.permutation(num)
    order = np.concatenate([order, np.full(steps_per_epoch * bs - num, -1)])
    epoch_loss = 0.0
    for step in range(steps_per_epoch):
      idx = order[step * bs:(step + 1) * bs]
      # Filler rows (-1) are all padding: they carry no target and no loss.
      batch_in = np.where(idx[:, None] >= 0, inputs_ExL[idx], PAD)
      batch_tgt = np.where(idx[:, None] >= 0, targets_ExL[idx], PAD)
      rng, step_rng = jax.random.split(rng)
      params, opt_state, loss = _train_step(params, opt_state, step_rng, batch_in, batch_tgt,
                                            config=config, tx=tx)
      epoch_loss += float(loss)
    losses.append(epoch_loss / steps_per_epoch)
    bar.set_postfix(loss=f"{losses[-1]:.4f}")
    if epoch % 10 == 0 or epoch == config.epochs - 1:
      logging.info("sasrec epoch %d: loss %.4f", epoch, losses[-1])
  summary = {
      "examples": int(num), "targets": int((targets_ExL != PAD).sum()),
      "steps": int(steps_per_epoch * config.epochs), "loss": config.loss,
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


def full_ranks(scores_BxN: np.ndarray, target_B: np.ndarray, seed: int = 0) -> np.ndarray:
  """1-based rank of each target among all items (random tie-breaking)."""
  scores_BxN = np.array(scores_BxN, copy=True)
  b = np.arange(len(target_B))
  first = scores_BxN[:, 0].copy()
  scores_BxN[:, 0] = scores_BxN[b, target_B]
  scores_BxN[b, target_B] = first
  return metrics.ranks_from_scores(scores_BxN, positive=0, seed=seed)


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
  sampled = metrics.ranks_from_scores(np.take_along_axis(scores_BxN, candidates_BxC, axis=1), 0, seed)
  return {
      "sampled": metrics.metrics_from_ranks(sampled),
      "full": metrics.metrics_from_ranks(full_ranks(scores_BxN, target_B, seed)),
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
  template = SASRec(config).init(jax.random.PRNGKey(0), jnp.zeros((1, config.max_len), jnp.int32))
  params = flax.serialization.from_bytes(template, (folder / PARAMS_FILE).read_bytes())
  return SasrecModel(config, params)
