"""Exact ranking of candidate identifiers by teacher-forced log-likelihood (docs/design.md §9).

Beam search approximates the ranking of a candidate set: a candidate whose prefix falls
out of the beam is never scored. Exact ranking scores every candidate's whole
identifier under the model, with no pruning:

  score(item) = log p(behaviour token) + sum_l log p(code_l | prefix)     ("full")

normalised over the whole vocabulary (the authors' way), or over the tokens the
candidates' trie allows at each level ("allowed"; biased by the trie's shape, see
`gensar_jax.decoding.beam_search`). Both equal the score beam search gives the same
identifier, so a beam at least as wide as the candidate set returns exactly this
ranking (a test checks it).

One encoder pass per example; the shared prefix (start token, behaviour token) runs
once per example; then all C candidates are decoded in parallel as C "beams" against
the one copy of the cross-attention keys/values, one level per step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from gensar_jax import sharding
from gensar_jax.decoding import beam_search


def candidate_scores(decoder, cross, src_mask_BxS, codes_BxCxL, valid_BxC, token_ids_LxK,
                     *, first_token, start_token, score="full", next_TxMxK=None):
  """Log-likelihood of every candidate identifier (traceable; jit the caller).

  Args:
    decoder: the model (`beam_search.Decoder`).
    cross, src_mask_BxS: from `decoder.encode`.
    codes_BxCxL: each candidate's codes (`[1, C, L]` is shared by every example).
    valid_BxC: False for padding candidates (their score is -inf).
    token_ids_LxK: token id of each level's codes.
    first_token, start_token: as in `beam_search.search`.
    score: "full" or "allowed".
    next_TxMxK: the candidates' trie (`[B, M, K]` or `[1, M, K]`); "allowed" only.

  Returns:
    scores_BxC (float32).
  """
  if score not in beam_search.SCORES:
    raise ValueError(f"score must be one of {beam_search.SCORES}, got {score!r}")
  if score == "allowed" and next_TxMxK is None:
    raise ValueError("'allowed' scoring needs the candidates' trie table")
  batch = src_mask_BxS.shape[0]
  num_levels, k = token_ids_LxK.shape
  c = codes_BxCxL.shape[1]
  codes_BxCxL = jnp.broadcast_to(codes_BxCxL, (batch, c, num_levels)).astype(jnp.int32)
  codes_BxCxL = jnp.clip(codes_BxCxL, 0, k - 1)
  offset = 1 if first_token is None else 2
  hidden, cache, base_B = beam_search.prefix(
      decoder, cross, src_mask_BxS, num_levels, first_token=first_token,
      start_token=start_token, score=score)
  total_BxC = jnp.broadcast_to(base_B[:, None], (batch, c))
  cache = beam_search.widen(cache, c)
  node_BxC = jnp.zeros((batch, c), jnp.int32)
  for level in range(num_levels):
    if level > 0:
      token_BxC = token_ids_LxK[level - 1][codes_BxCxL[:, :, level - 1]]
      hidden, cache = decoder.decode_step(token_BxC, offset + level - 1, cache, cross,
                                          src_mask_BxS)
    code_BxC = codes_BxCxL[:, :, level]
    if score == "allowed":
      child_BxCxK = beam_search.children(next_TxMxK, node_BxC)
      # At level 0 hidden is one copy per example, and every candidate sits at the root.
      allowed = (child_BxCxK[:, :1] if level == 0 else child_BxCxK) >= 0
      node_BxC = jnp.maximum(jnp.take_along_axis(child_BxCxK, code_BxC[..., None], -1)[..., 0], 0)
    else:
      allowed = jnp.ones(hidden.shape[:2] + (k,), bool)
    logp = beam_search.level_logprobs(decoder, hidden, token_ids_LxK[level], allowed, score)
    logp_BxCxK = jnp.broadcast_to(logp, (batch, c, k))
    total_BxC = total_BxC + jnp.take_along_axis(logp_BxCxK, code_BxC[..., None], -1)[..., 0]
  return jnp.where(valid_BxC, total_BxC, -jnp.inf)


def make_score_fn(make_decoder, spec: beam_search.SearchSpec, mesh=None, data_axis="data"):
  """A jitted `fn(params, src_BxS, codes_BxCxL, valid_BxC, table) -> scores_BxC`.

  `spec.beam_size` is unused. `table` is the candidates' trie (read by "allowed"
  scoring only; pass any `[1, 1, K]` array for "full"). With a mesh, the batch is
  sharded over `data_axis`; a `[1, C, L]` codes array is replicated.
  """

  def fn(params, src_BxS, codes_BxCxL, valid_BxC, table):
    decoder = make_decoder(params)
    cross, src_mask_BxS = decoder.encode(src_BxS)
    ids_LxK = jnp.asarray(np.asarray(spec.token_ids_LxK, np.int32))
    return candidate_scores(
        decoder, cross, src_mask_BxS, codes_BxCxL, valid_BxC, ids_LxK,
        first_token=spec.first_token, start_token=spec.start_token, score=spec.score,
        next_TxMxK=table)

  if mesh is None:
    return jax.jit(fn)
  batch = sharding.split_leading(mesh, data_axis)
  replicated = sharding.replicated(mesh)

  @functools.lru_cache(maxsize=None)
  def compiled(shared_codes: bool, shared_valid: bool, shared_table: bool):
    pick = lambda shared: replicated if shared else batch  # pylint: disable=unnecessary-lambda-assignment
    return jax.jit(fn, in_shardings=(replicated, batch, pick(shared_codes), pick(shared_valid),
                                     pick(shared_table)),
                   out_shardings=batch)

  def sharded(params, src_BxS, codes_BxCxL, valid_BxC, table):
    b = src_BxS.shape[0]
    shared = tuple(x.shape[0] == 1 and b != 1 for x in (codes_BxCxL, valid_BxC, table))
    return compiled(*shared)(params, src_BxS, codes_BxCxL, valid_BxC, table)

  return sharded
