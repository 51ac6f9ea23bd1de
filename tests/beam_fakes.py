"""A deterministic fake decoder for the beam-search tests, and numpy references.

The fake's next-token logits are a fixed function of (example, every token fed so far,
position), computed identically in jax (`FakeDecoder`) and numpy (`fake_logits`), so
exhaustive enumeration and a plain-loop beam search give exact expected results.
Token layout: 0 pad/start, 1 eos, 2..4 behaviour tokens, then L levels of K codes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from gensar_jax.decoding import trie

START = 0
BEHAVIOUR = (2, 3, 4)
FIRST_CODE = 5
_MOD = 10007


def vocab_size(num_levels: int, k: int) -> int:
  return FIRST_CODE + num_levels * k


def level_tokens(num_levels: int, k: int, first_token: int | None = BEHAVIOUR[0]):
  offsets = {f"L{l}": FIRST_CODE + l * k for l in range(num_levels)}
  return trie.level_tokens(offsets, list(offsets), k, first_token)


def _mult(t: int) -> int:
  return pow(37, t, _MOD)


def fake_logits(key: int, tokens: list[int], vocab: int) -> np.ndarray:
  """Logits after feeding `tokens` (positions 0..len-1) for an example with `key`."""
  h = sum((tok + 1) * _mult(t) for t, tok in enumerate(tokens)) % _MOD
  v = np.arange(vocab, dtype=np.float64)
  pos = len(tokens) - 1
  return 2.5 * np.sin(0.7 * v + 0.013 * h + 0.91 * key + 0.3 * pos)


@dataclasses.dataclass
class FakeDecoder:
  """Implements the `beam_search.Decoder` protocol with `fake_logits`.

  The "hidden state" is the logit vector itself, so `project` is a gather. `calls`
  records the shape of every `decode_step` token array seen while tracing.
  """

  vocab: int
  calls: list = dataclasses.field(default_factory=list)

  def encode(self, src_BxS):
    key_B = src_BxS[:, 0].astype(jnp.float32)
    return {"key": key_B}, src_BxS != 0

  def init_cache(self, batch, beams, max_len):
    zeros = jnp.zeros((1, batch, beams, max_len, 1, 1), jnp.float32)
    return {"k": zeros, "v": zeros}

  def decode_step(self, token_BxW, position, cache, cross, src_mask_BxS):
    self.calls.append(tuple(token_BxW.shape))
    b, w = token_BxW.shape
    tok = token_BxW.astype(jnp.float32).reshape(1, b, w, 1, 1, 1)
    k = jax.lax.dynamic_update_slice_in_dim(cache["k"], tok, position, axis=3)
    t = k.shape[3]
    toks_BxWxT = k[0, :, :, :, 0, 0].astype(jnp.int32)
    mult_T = jnp.asarray([_mult(i) for i in range(t)], jnp.int32)
    terms = jnp.where(jnp.arange(t) <= position, (toks_BxWxT + 1) * mult_T, 0)
    h_BxW = (terms.sum(-1) % _MOD).astype(jnp.float32)
    v = jnp.arange(self.vocab, dtype=jnp.float32)
    key = cross["key"][:, None, None]
    hidden = 2.5 * jnp.sin(
        0.7 * v + 0.013 * h_BxW[..., None] + 0.91 * key + 0.3 * jnp.float32(position))
    return hidden, {"k": k, "v": cache["v"]}

  def project(self, hidden, token_ids=None):
    return hidden if token_ids is None else jnp.take(hidden, token_ids, axis=-1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
  m = x.max()
  return x - m - np.log(np.exp(x - m).sum())


def path_score(key, codes, tok, table_MxK, score) -> float:
  """Exact score of one identifier under the fake (float64)."""
  ids = tok.token_ids_LxK
  vocab = int(ids.max()) + 1
  fed = [START]
  total = 0.0
  if tok.first_token is not None:
    if score == "full":
      total += _log_softmax(fake_logits(key, fed, vocab))[tok.first_token]
    fed.append(tok.first_token)
  node = 0
  for level, code in enumerate(codes):
    logits = fake_logits(key, fed, vocab)
    allowed = np.flatnonzero(table_MxK[node] >= 0)
    if score == "full":
      total += _log_softmax(logits)[ids[level, code]]
    else:
      lp = _log_softmax(logits[ids[level, allowed]])
      total += lp[list(allowed).index(code)]
    node = int(table_MxK[node, code])
    fed.append(int(ids[level, code]))
  return total


def exhaustive(key, table_MxK, tok, score):
  """Every valid (item, score), best first."""
  paths = trie.enumerate_items(table_MxK, tok.num_levels)
  scored = [(item, path_score(key, codes, tok, table_MxK, score)) for codes, item in paths]
  return sorted(scored, key=lambda p: -p[1])


def reference_beam(key, table_MxK, tok, score, beam):
  """A plain-loop beam search over the same fake: [(item, score)], best first."""
  beams = [((), 0.0)]
  for level in range(tok.num_levels):
    grown = []
    for codes, _ in beams:
      node = 0
      for c in codes:
        node = int(table_MxK[node, c])
      for c in np.flatnonzero(table_MxK[node] >= 0):
        full = codes + (int(c),)
        grown.append((full, path_score(key, full, tok, table_MxK, score)))
    beams = sorted(grown, key=lambda p: -p[1])[:beam]
  out = []
  for codes, s in beams:
    node = 0
    for c in codes:
      node = int(table_MxK[node, c])
    out.append((node, s))
  return out

