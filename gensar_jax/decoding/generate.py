"""Free-text generation with a decoder cache: top-k / top-p sampling and beam search.

Used by doc2query (item text -> pseudo-queries). Both run inside one `lax.fori_loop`
over at most `max_len` decoder steps, reusing the `Decoder` protocol of
`beam_search.py`: the encoder and the cross-attention keys/values run once per
example, and the W samples (or beams) of an example share them.

  sample: W independent samples per example; each step keeps the `top_k` most likely
          tokens, then the smallest set whose probability reaches `top_p`, and draws
          from the renormalised distribution at `temperature`.
  beam:   W beams ranked by summed log-probability; a beam that produced eos only
          extends with padding at no cost, so finished and running hypotheses compete
          on equal terms and the W results are distinct.
Sequences stop at eos (which is kept) and are padded with `pad_id` after it; the pad
token itself is never generated (the distribution is renormalised without it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

METHODS = ("sample", "beam")


_FAST_TOP_K = 64  # Up to this k, top-k (and top-p within it) avoid sorting the vocabulary.


def _distinct_top(logits_xV: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k largest distinct values, descending, and how many logits equal each.

  k passes of max-and-remove, O(k V) without a sort (sorting the vocabulary at every
  decoder step dominates generation on CPU). Past the distinct values there are, the
  values are -inf.

  Returns:
    values_xK, counts_xK.
  """
  def take(rest_xV, _):
    top_x1 = jnp.max(rest_xV, axis=-1, keepdims=True)
    hit_xV = rest_xV == top_x1
    count_x = jnp.sum(hit_xV, axis=-1).astype(jnp.float32)
    return jnp.where(hit_xV, -jnp.inf, rest_xV), (top_x1[..., 0], count_x)

  _, (values_Kx, counts_Kx) = jax.lax.scan(take, logits_xV, None, length=k)
  return jnp.moveaxis(values_Kx, 0, -1), jnp.moveaxis(counts_Kx, 0, -1)


def _filter_small_k(logits_xV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """`filter_logits` for 0 < top_k <= _FAST_TOP_K, from the k largest distinct values."""
  values_xK, counts_xK = _distinct_top(logits_xV, top_k)
  finite_xK = jnp.isfinite(values_xK)
  seen_xK = jnp.cumsum(counts_xK, axis=-1)
  # The k-th largest logit (ties counted); all logits equal to it stay.
  reach_xK = (seen_xK - counts_xK < top_k) & finite_xK
  cutoff_x1 = jnp.min(jnp.where(reach_xK, values_xK, jnp.inf), axis=-1, keepdims=True)
  if top_p < 1.0:
    # Nucleus over the renormalised top-k set: keep a value while the probability of
    # strictly better tokens is below top_p.
    w_xK = jnp.where(reach_xK, counts_xK * jnp.exp(values_xK - values_xK[..., :1]), 0.0)
    probs_xK = w_xK / jnp.sum(w_xK, axis=-1, keepdims=True)
    before_xK = jnp.cumsum(probs_xK, axis=-1) - probs_xK
    keep_xK = reach_xK & (before_xK < top_p)
    cutoff_x1 = jnp.min(jnp.where(keep_xK, values_xK, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits_xV < cutoff_x1, -jnp.inf, logits_xV)


def filter_logits(logits_xV: jax.Array, top_k: int, top_p: float) -> jax.Array:
  """Sets every logit outside the top-k / nucleus (top-p) set to -inf.

  Args:
    logits_xV: logits over the vocabulary (any leading axes).
    top_k: keep this many most likely tokens (0 = no limit); tokens tied with the k-th
      are kept too.
    top_p: then keep the smallest most-likely set with total probability >= top_p
      (1.0 = no limit), the probability renormalised over what top-k kept. The most
      likely token is always kept, and tokens tied with the last kept one too.
  """
  v = logits_xV.shape[-1]
  if 0 < top_k < v and top_k <= _FAST_TOP_K:
    return _filter_small_k(logits_xV, top_k, top_p)
  if 0 < top_k < v:
    kth = jax.lax.top_k(logits_xV, top_k)[0][..., -1:]
    logits_xV = jnp.where(logits_xV < kth, -jnp.inf, logits_xV)
  if top_p < 1.0:
    sorted_xV = jnp.sort(logits_xV, axis=-1)[..., ::-1]
    probs_xV = jax.nn.softmax(sorted_xV, axis=-1)
    before_xV = jnp.cumsum(probs_xV, axis=-1) - probs_xV  # mass of strictly better tokens
    keep_xV = before_xV < top_p
    cutoff = jnp.min(jnp.where(keep_xV, sorted_xV, jnp.inf), axis=-1, keepdims=True)
    logits_xV = jnp.where(logits_xV < cutoff, -jnp.inf, logits_xV)
  return logits_xV


def generate(decoder, cross, src_mask_BxS: jax.Array, *, method: str, num: int,
             max_len: int, start_token: int, eos_id: int, pad_id: int,
             rng: jax.Array | None = None, top_k: int = 0, top_p: float = 1.0,
             temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """Generates `num` sequences per example (traceable; jit the caller).

  Args:
    decoder: a `beam_search.Decoder`.
    cross, src_mask_BxS: from `decoder.encode`.
    method: "sample" or "beam".
    num: W, samples or beams per example.
    max_len: the most tokens generated (eos included).
    start_token, eos_id, pad_id: the decoder start, end and padding ids.
    rng: the sampling key (method "sample").
    top_k, top_p, temperature: sampling settings (method "sample").

  Returns:
    tokens_BxWxT: generated ids (T = max_len), eos then `pad_id` after a sequence ends.
    scores_BxW: summed log-probabilities; beams come best first.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if method == "sample" and rng is None:
    raise ValueError("sampling needs an rng")
  batch, w = src_mask_BxS.shape[0], num
  cache = decoder.init_cache(batch, w, max_len)
  tokens_BxWxT = jnp.full((batch, w, max_len), pad_id, jnp.int32)
  token_BxW = jnp.full((batch, w), start_token, jnp.int32)
  done_BxW = jnp.zeros((batch, w), bool)
  # Beams start as one live copy; the others must not duplicate it.
  scores_BxW = jnp.zeros((batch, w), jnp.float32)
  if method == "beam":
    scores_BxW = scores_BxW.at[:, 1:].set(-jnp.inf)

  def step(t, carry):
    cache, token_BxW, tokens_BxWxT, done_BxW, scores_BxW = carry
    hidden_BxWxD, cache = decoder.decode_step(token_BxW, t, cache, cross, src_mask_BxS)
    logits_BxWxV = decoder.project(hidden_BxWxD).astype(jnp.float32)
    v = logits_BxWxV.shape[-1]
    logits_BxWxV = logits_BxWxV.at[..., pad_id].set(-jnp.inf)  # padding is never generated
    if method == "sample":
      logits_BxWxV = filter_logits(logits_BxWxV / temperature, top_k, top_p)
      logp_BxWxV = jax.nn.log_softmax(logits_BxWxV, axis=-1)
      nxt_BxW = jax.random.categorical(jax.random.fold_in(rng, t), logits_BxWxV, axis=-1)
      nxt_BxW = jnp.where(done_BxW, pad_id, nxt_BxW).astype(jnp.int32)
      gained = jnp.take_along_axis(logp_BxWxV, nxt_BxW[..., None], axis=-1)[..., 0]
      scores_BxW = scores_BxW + jnp.where(done_BxW, 0.0, gained)
      beam_BxW = jnp.broadcast_to(jnp.arange(w), (batch, w))
    else:
      logp_BxWxV = jax.nn.log_softmax(logits_BxWxV, axis=-1)
      finished_row = jnp.full((v,), -jnp.inf).at[pad_id].set(0.0)
      logp_BxWxV = jnp.where(done_BxW[..., None], finished_row, logp_BxWxV)
      cand_BxWV = (scores_BxW[..., None] + logp_BxWxV).reshape(batch, w * v)
      scores_BxW, flat_BxW = jax.lax.top_k(cand_BxWV, w)
      beam_BxW, nxt_BxW = flat_BxW // v, (flat_BxW % v).astype(jnp.int32)
      tokens_BxWxT = jnp.take_along_axis(tokens_BxWxT, beam_BxW[..., None], axis=1)
      done_BxW = jnp.take_along_axis(done_BxW, beam_BxW, axis=1)
      cache = jax.tree.map(
          lambda x: jnp.take_along_axis(
              x, beam_BxW.reshape((1, batch, w) + (1,) * (x.ndim - 3)), axis=2), cache)
    tokens_BxWxT = tokens_BxWxT.at[:, :, t].set(nxt_BxW)
    done_BxW = done_BxW | (nxt_BxW == eos_id)
    return cache, nxt_BxW, tokens_BxWxT, done_BxW, scores_BxW

  carry = (cache, token_BxW, tokens_BxWxT, done_BxW, scores_BxW)
  _, _, tokens_BxWxT, _, scores_BxW = jax.lax.fori_loop(0, max_len, step, carry)
  return tokens_BxWxT, scores_BxW
