"""Jitted trie-constrained beam search over fixed-length identifiers (docs/design.md §6, §9).

Identifiers have a fixed length L, so step l always draws level l's K code tokens and
the search is an unrolled prefix phase plus a `lax.fori_loop` over the remaining levels:

1. The encoder runs once per example and each decoder layer's cross-attention keys and
   values are computed once per example (`cross_kv`); all W beams of an example attend
   to that one copy.
2. Until the trie branches every beam of an example is the same sequence, so the first
   decoder steps (the start token, then the forced behaviour token) run one copy per
   example (W = 1). Level 0's top-W codes then open W beams and that small cache is
   copied W times.
3. Each later step feeds the W beams' last codes, scores only level l's K tokens
   (`project(hidden, token_ids=...)`), masks them with the trie and keeps the top W of
   the W*K (beam, code) pairs; only the self-attention cache is reordered (a gather
   along W).

Scores (`score`):
  "allowed": log-softmax over the tokens the trie allows at each step (the forced
    behaviour token then scores 0). Needs only K logits a step.
  "full": log-softmax over the whole vocabulary, then masked (the authors' way); the
    forced behaviour token adds its log-probability (the same for every beam of an
    example). Needs V logits a step; their normaliser is accumulated chunk by chunk
    (`vocab_logsumexp`) and the K level tokens' logits are taken separately.
Neither adds an end-of-sequence step: an identifier ends after its L codes.

The model is reached through a small `Decoder` protocol (`T5Decoder` adapts
`gensar_jax.model.t5.T5`), so tests can drive the search with a deterministic fake.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from gensar_jax import sharding

SCORES = ("allowed", "full")
_NEG = -1e30  # Stand-in for -inf inside a softmax (keeps fully masked rows NaN-free).
VOCAB_CHUNK = 4096  # Vocabulary rows per step of the "full" scoring's normaliser.
WHOLE_LOGITS_MAX = 2**22  # Below this many logits the normaliser takes them in one piece
                          # (small batches: gathering the chunks' rows would cost more).


class Decoder(Protocol):
  """What the beam search needs from a model (parameters already bound)."""

  def encode(self, src_BxS: jax.Array) -> tuple[Any, jax.Array]:
    """Returns (cross-attention K/V computed once per example, source mask [B, S])."""

  def init_cache(self, batch: int, beams: int, max_len: int) -> Any:
    """A zero self-attention cache; every leaf shaped [layers, B, W, T, ...]."""

  def decode_step(self, token_BxW, position, cache, cross, src_mask_BxS):
    """One decoder token per beam -> (hidden [B, W, D], new cache)."""

  def project(self, hidden, token_ids=None) -> jax.Array:
    """Logits over the vocabulary, or over `token_ids` only."""


@dataclasses.dataclass(frozen=True)
class T5Decoder:
  """Binds `gensar_jax.model.t5.T5` and its parameters to the `Decoder` protocol."""

  model: Any
  params: Any

  def encode(self, src_BxS):
    enc_BxSxD = self.model.apply(self.params, src_BxS, method=self.model.encode)
    cross = self.model.apply(self.params, enc_BxSxD, method=self.model.cross_kv)
    return cross, src_BxS != self.model.config.pad_id

  def init_cache(self, batch, beams, max_len):
    return self.model.apply(self.params, batch, beams, max_len, method=self.model.init_cache)

  def decode_step(self, token_BxW, position, cache, cross, src_mask_BxS):
    return self.model.apply(
        self.params, token_BxW, position, cache, cross, src_mask_BxS,
        method=self.model.decode_step,
    )

  def project(self, hidden, token_ids=None):
    return self.model.apply(self.params, hidden, token_ids, method=self.model.project)


def children(next_TxMxK: jax.Array, node_BxW: jax.Array) -> jax.Array:
  """Trie rows of each beam's node: [B, W, K] (a [1, M, K] table is shared)."""
  if next_TxMxK.shape[0] == 1:
    return next_TxMxK[0][node_BxW]
  return jnp.take_along_axis(next_TxMxK, node_BxW[:, :, None], axis=1)


def vocab_logsumexp(decoder, hidden_xD, chunk: int | None = None):
  """`log sum_v exp(logit_v)` over the whole vocabulary, `[...]` float32.

  The normaliser of "full" scoring, computed `chunk` vocabulary rows at a time with a
  running maximum and sum (an online logsumexp), so the `[..., V]` logits are never
  held at once. The same value as `logsumexp(project(hidden), -1)` up to float
  rounding, and faster on CPU at t5-small size (the chunk's logits stay in cache
  between the matmul and the exponentials). `chunk` defaults to `VOCAB_CHUNK`; with at
  most `WHOLE_LOGITS_MAX` logits in all they are taken in one piece.
  """
  chunk = chunk or VOCAB_CHUNK
  spec = jax.ShapeDtypeStruct(hidden_xD.shape, hidden_xD.dtype)
  vocab = jax.eval_shape(lambda h: decoder.project(h), spec).shape[-1]
  rows = int(np.prod(hidden_xD.shape[:-1]))
  if vocab <= chunk or rows * vocab <= WHOLE_LOGITS_MAX:
    return jax.nn.logsumexp(decoder.project(hidden_xD).astype(jnp.float32), axis=-1)

  def body(carry, start):
    max_x, sum_x = carry
    ids_C = start + jnp.arange(chunk)
    logits_xC = decoder.project(hidden_xD, token_ids=jnp.minimum(ids_C, vocab - 1))
    logits_xC = jnp.where(ids_C < vocab, logits_xC.astype(jnp.float32), -jnp.inf)
    new_max = jnp.maximum(max_x, jnp.max(logits_xC, axis=-1))
    sum_x = sum_x * jnp.exp(max_x - new_max) + jnp.sum(
        jnp.exp(logits_xC - new_max[..., None]), axis=-1)
    return (new_max, sum_x), None

  lead = hidden_xD.shape[:-1]
  init = (jnp.full(lead, -jnp.inf, jnp.float32), jnp.zeros(lead, jnp.float32))
  starts = jnp.arange(0, vocab, chunk)
  (max_x, sum_x), _ = jax.lax.scan(body, init, starts)
  return max_x + jnp.log(sum_x)


def level_logprobs(decoder, hidden_BxWxD, ids_K, allowed_BxWxK, score):
  """Log-probabilities of level tokens `ids_K`; -inf where not allowed."""
  logits_BxWxK = decoder.project(hidden_BxWxD, token_ids=ids_K).astype(jnp.float32)
  if score == "allowed":
    logp = jax.nn.log_softmax(jnp.where(allowed_BxWxK, logits_BxWxK, _NEG), axis=-1)
  else:
    logp = logits_BxWxK - vocab_logsumexp(decoder, hidden_BxWxD)[..., None]
  return jnp.where(allowed_BxWxK, logp, -jnp.inf)


def _reorder(cache, beam_BxW):
  """Gathers every cache leaf [layers, B, W, ...] along W by `beam_BxW`."""

  def gather(x):
    idx = beam_BxW.reshape((1,) + beam_BxW.shape + (1,) * (x.ndim - 3))
    return jnp.take_along_axis(x, idx, axis=2)

  return jax.tree.map(gather, cache)


def widen(cache, beams):
  """Copies a one-beam cache [layers, B, 1, ...] to `beams` beams."""
  return jax.tree.map(lambda x: jnp.repeat(x, beams, axis=2), cache)


def prefix(decoder, cross, src_mask_BxS, num_levels: int, *, first_token: int | None,
           start_token: int, score: str):
  """The shared start of every identifier, one copy per example.

  Feeds the start token, then the forced behaviour token (if any).

  Returns:
    hidden_Bx1xD: the decoder output that predicts level 0.
    cache: a one-beam self-attention cache with room for every level's input.
    base_B: the behaviour token's log-probability under "full" scoring (else 0).
  """
  batch = src_mask_BxS.shape[0]
  offset = 1 if first_token is None else 2
  cache = decoder.init_cache(batch, 1, offset + num_levels - 1)
  hidden, cache = decoder.decode_step(
      jnp.full((batch, 1), start_token, jnp.int32), 0, cache, cross, src_mask_BxS)
  base_B = jnp.zeros((batch,), jnp.float32)
  if first_token is not None:
    if score == "full":
      logit_Bx1 = decoder.project(hidden, token_ids=jnp.asarray([first_token]))[..., 0]
      base_B = (logit_Bx1.astype(jnp.float32) - vocab_logsumexp(decoder, hidden))[:, 0]
    hidden, cache = decoder.decode_step(
        jnp.full((batch, 1), first_token, jnp.int32), 1, cache, cross, src_mask_BxS)
  return hidden, cache, base_B


class BeamState(NamedTuple):
  """The W partial identifiers of every example between two levels of the search."""

  cache: Any  # the decoder's self-attention cache, one copy per beam
  token_BxW: jax.Array  # the token each beam feeds the decoder next
  node_BxW: jax.Array  # its node in the trie
  scores_BxW: jax.Array  # its log-probability so far (-inf: dead)
  alive_BxW: jax.Array  # whether it is a valid prefix


def search(
    decoder: Decoder,
    cross: Any,
    src_mask_BxS: jax.Array,
    next_TxMxK: jax.Array,
    token_ids_LxK: jax.Array,
    *,
    first_token: int | None,
    start_token: int,
    beam_size: int,
    score: str = "allowed",
) -> tuple[jax.Array, jax.Array]:
  """Trie-constrained beam search from encoded sources (traceable; jit the caller).

  Args:
    decoder: the model (see `Decoder`).
    cross: the encoder's cross-attention K/V, from `decoder.encode`.
    src_mask_BxS: source padding mask, from `decoder.encode`.
    next_TxMxK: trie table, `[1, M, K]` shared or `[B, M, K]` per example
      (`gensar_jax.decoding.trie`).
    token_ids_LxK: token id of each level's codes.
    first_token: forced behaviour token id, or None.
    start_token: the decoder start token id.
    beam_size: W.
    score: "allowed" or "full" (module docstring).

  Returns:
    items_BxW: distinct item indices, best first; -1 where fewer than W are valid.
    scores_BxW: their log-probabilities; -inf where the item is -1.
  """
  if score not in SCORES:
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")
  batch = src_mask_BxS.shape[0]
  num_levels, k = token_ids_LxK.shape
  w = beam_size
  offset = 1 if first_token is None else 2  # Decoder position of level 1's input.
  hidden, cache, base_B = prefix(decoder, cross, src_mask_BxS, num_levels,
                                 first_token=first_token, start_token=start_token, score=score)

  # Level 0 from the single copy opens the W beams.
  child_Bx1xK = children(next_TxMxK, jnp.zeros((batch, 1), jnp.int32))
  logp_Bx1xK = level_logprobs(decoder, hidden, token_ids_LxK[0], child_Bx1xK >= 0, score)
  cand_BxK = base_B[:, None] + logp_Bx1xK[:, 0]
  if k < w:
    cand_BxK = jnp.pad(cand_BxK, ((0, 0), (0, w - k)), constant_values=-jnp.inf)
  scores_BxW, code_BxW = jax.lax.top_k(cand_BxK, w)
  code_BxW = jnp.minimum(code_BxW, k - 1)
  alive_BxW = scores_BxW > -jnp.inf
  node_BxW = jnp.where(alive_BxW, jnp.take_along_axis(child_Bx1xK[:, 0], code_BxW, 1), 0)
  token_BxW = token_ids_LxK[0][code_BxW]
  cache = widen(cache, w)

  def step(level, beams: BeamState) -> BeamState:
    hidden_BxWxD, cache = decoder.decode_step(
        beams.token_BxW, offset + level - 1, beams.cache, cross, src_mask_BxS)
    child_BxWxK = children(next_TxMxK, beams.node_BxW)
    allowed_BxWxK = (child_BxWxK >= 0) & beams.alive_BxW[:, :, None]
    ids_K = token_ids_LxK[level]
    logp_BxWxK = level_logprobs(decoder, hidden_BxWxD, ids_K, allowed_BxWxK, score)
    cand_BxWK = (beams.scores_BxW[:, :, None] + logp_BxWxK).reshape(batch, w * k)
    scores_BxW, flat_BxW = jax.lax.top_k(cand_BxWK, w)
    alive_BxW = scores_BxW > -jnp.inf
    child_BxW = jnp.take_along_axis(child_BxWxK.reshape(batch, w * k), flat_BxW, 1)
    return BeamState(cache=_reorder(cache, flat_BxW // k), token_BxW=ids_K[flat_BxW % k],
                     node_BxW=jnp.where(alive_BxW, child_BxW, 0), scores_BxW=scores_BxW,
                     alive_BxW=alive_BxW)

  beams = BeamState(cache, token_BxW, node_BxW, scores_BxW, alive_BxW)
  beams = jax.lax.fori_loop(1, num_levels, step, beams)
  items_BxW = jnp.where(beams.alive_BxW, beams.node_BxW, -1)
  return items_BxW, jnp.where(beams.alive_BxW, beams.scores_BxW, -jnp.inf)



@dataclasses.dataclass(frozen=True)
class SearchSpec:
  """The static settings of one compiled search."""

  token_ids_LxK: tuple[tuple[int, ...], ...]
  first_token: int | None
  start_token: int
  beam_size: int
  score: str = "allowed"

  @classmethod
  def create(cls, level_tokens, *, start_token, beam_size, score="allowed"):
    """From a `trie.LevelTokens`."""
    ids = tuple(tuple(int(t) for t in row) for row in np.asarray(level_tokens.token_ids_LxK))
    return cls(ids, level_tokens.first_token, int(start_token), int(beam_size), score)


def _search_tables(decoder, src_BxS, tables, spec: SearchSpec):
  cross, src_mask_BxS = decoder.encode(src_BxS)
  ids_LxK = jnp.asarray(np.asarray(spec.token_ids_LxK, np.int32))
  return tuple(
      search(
          decoder, cross, src_mask_BxS, table, ids_LxK,
          first_token=spec.first_token, start_token=spec.start_token,
          beam_size=spec.beam_size, score=spec.score,
      )
      for table in tables
  )


def make_search_fn(make_decoder, spec: SearchSpec, num_tables: int = 1, mesh=None, data_axis="data"):
  """A jitted `fn(params, src_BxS, *tables) -> ((items_BxW, scores_BxW), ...)`.

  The encoder runs once per batch; each table (`[1, M, K]` shared or `[B, M, K]` per
  example) gets its own search. With a mesh, the batch (sources, per-example tables
  and results) is sharded over `data_axis` and parameters are replicated; B must then
  be a multiple of the axis size.

  Args:
    make_decoder: `params -> Decoder`, e.g. `lambda p: T5Decoder(model, p)`.
    spec: the static search settings.
    num_tables: how many tables each call passes.
    mesh: optional `jax.sharding.Mesh`.
    data_axis: the mesh axis the batch is sharded over.
  """

  def fn(params, src_BxS, *tables):
    if len(tables) != num_tables:
      raise ValueError(f"expected {num_tables} tables, got {len(tables)}")
    return _search_tables(make_decoder(params), src_BxS, tables, spec)

  if mesh is None:
    return jax.jit(fn)
  batch = sharding.split_leading(mesh, data_axis)
  replicated = sharding.replicated(mesh)

  @functools.lru_cache(maxsize=None)
  def compiled(shared: tuple[bool, ...]):
    table_shardings = tuple(replicated if s else batch for s in shared)
    return jax.jit(
        fn,
        in_shardings=(replicated, batch) + table_shardings,
        out_shardings=tuple((batch, batch) for _ in range(num_tables)),
    )

  def sharded(params, src_BxS, *tables):
    shared = tuple(t.shape[0] == 1 and src_BxS.shape[0] != 1 for t in tables)
    return compiled(shared)(params, src_BxS, *tables)

  return sharded
