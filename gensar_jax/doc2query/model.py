"""Doc2query (docs/design.md §4): a T5 that writes search queries for an item's text.

Training pairs come from the training split's search rows only: each distinct
(item, query) of `search_train` with item text becomes (item text -> query text).
Validation and test targets never contribute, even when the same pair also occurs
there. Generation writes `num_queries` pseudo-queries per item with text, by top-k /
top-p sampling or beam search (`gensar_jax.decoding.generate`), jitted and batched.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

from gensar_jax import padding
from gensar_jax import progress as progress_lib
from gensar_jax.data import schema
from gensar_jax.decoding import beam_search
from gensar_jax.decoding import generate as generate_lib


def training_pairs(catalog: schema.Catalog, search_train_rows: Mapping[str, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Distinct (item, query) index pairs of the training search rows whose item has text.

  Args:
    catalog: the data stage's catalog.
    search_train_rows: the `search_train` rows (nothing else is read).

  Returns:
    (items [P], queries [P]) int64, sorted by (item, query).
  """
  pairs = np.stack([np.asarray(search_train_rows["item"], np.int64),
                    np.asarray(search_train_rows["query"], np.int64)], axis=1)
  pairs = pairs[pairs[:, 1] >= 0]
  pairs = np.unique(pairs, axis=0) if len(pairs) else np.zeros((0, 2), np.int64)
  has_text = np.array([bool(catalog.item_text(int(i)).strip()) for i in pairs[:, 0]], bool)
  pairs = pairs[has_text] if len(pairs) else pairs
  return pairs[:, 0], pairs[:, 1]


@functools.lru_cache(maxsize=8)
def make_generate_fn(model, *, method: str, num: int, max_len: int, top_k: int, top_p: float,
                     temperature: float):
  """A jitted `fn(params, src_BxS, rng) -> (tokens [B, num, max_len], scores [B, num])`.

  Cached on its arguments (a `T5` compares by its config), so generating again with the
  same model size and settings reuses the compiled function; parameters are arguments.
  """

  @jax.jit
  def fn(params, src_BxS, rng):
    decoder = beam_search.T5Decoder(model, params)
    cross, mask = decoder.encode(src_BxS)
    c = model.config
    return generate_lib.generate(
        decoder, cross, mask, method=method, num=num, max_len=max_len,
        start_token=c.decoder_start_id, eos_id=c.eos_id, pad_id=c.pad_id, rng=rng,
        top_k=top_k, top_p=top_p, temperature=temperature)

  return fn


def generate_queries(model, params, tokenizer, texts: Sequence[str], *, cfg, seed: int,
                     progress: bool = True) -> list[list[str]]:
  """Pseudo-queries for each text (an empty list for an empty text).

  Args:
    model: the doc2query `T5`.
    params: its variables.
    tokenizer: its `gensar_jax.model.tokenizer.Tokenizer`.
    texts: item texts.
    cfg: `config.doc2query` (num_queries, method, top_k, top_p, temperature,
      beam_size, max_text_len, max_query_len, generate_batch_size).
    seed: the sampling seed; batch b uses `fold_in(key(seed), b)`, so results do not
      depend on anything but the seed, the texts and the batch size. Every batch is
      padded to the same length (the bucket of the longest text): one compile.

  Returns:
    Per text up to `num_queries` distinct non-empty query strings, best (beam) or
    drawn (sample) first.
  """
  num_queries = int(cfg.num_queries)
  width = max(int(cfg.beam_size), num_queries) if cfg.method == "beam" else num_queries
  fn = make_generate_fn(model, method=cfg.method, num=width, max_len=int(cfg.max_query_len),
                        top_k=int(cfg.top_k), top_p=float(cfg.top_p),
                        temperature=float(cfg.temperature))
  todo = [i for i, t in enumerate(texts) if t.strip()]
  out: list[list[str]] = [[] for _ in texts]
  b = int(cfg.generate_batch_size)
  src = tokenizer.encode_batch([texts[i] for i in todo], int(cfg.max_text_len))
  # One batch shape for every batch, so one compile (padding is masked out).
  length = padding.bucket_length(max((len(x) for x in src), default=1),
                                 padding.SOURCE_BUCKETS)
  key = jax.random.key(int(seed))
  for n, lo in enumerate(progress_lib.bar(range(0, len(todo), b), desc="doc2query generate",
                                          show=progress, leave=False)):
    idx = list(range(lo, min(lo + b, len(todo))))
    rows = idx + [idx[-1]] * (b - len(idx))
    src_BxS = padding.pad_stack([np.asarray(src[r], np.int32) for r in rows], length)
    toks, _ = fn(params, jnp.asarray(src_BxS), jax.random.fold_in(key, n))
    toks = np.asarray(toks)
    for j, r in enumerate(idx):
      seen: list[str] = []
      for seq in toks[j]:
        q = tokenizer.decode(seq)
        if q and q not in seen:
          seen.append(q)
      out[todo[r]] = seen[:num_queries]
  return out


def word_overlap_fraction(pseudo: Sequence[Sequence[str]], real: Sequence[Sequence[str]],
                          ignore: frozenset[str] = frozenset()) -> float | None:
  """Fraction of items with real queries whose pseudo-queries share a word with them.

  Args:
    pseudo: per item, its generated queries.
    real: per item, its real query strings.
    ignore: words that do not count as shared.
  """
  shared = total = 0
  for p, r in zip(pseudo, real):
    if not r:
      continue
    total += 1
    real_words = {w for q in r for w in q.split()} - ignore
    shared += any(w in real_words for q in p for w in q.split())
  return shared / total if total else None


def common_words(queries: Sequence[str], max_frac: float) -> frozenset[str]:
  """Words occurring in more than `max_frac` of the distinct query strings."""
  distinct = set(queries)
  counts = collections.Counter(w for q in distinct for w in set(q.split()))
  return frozenset(w for w, n in counts.items() if n > max_frac * len(distinct))


def match_stats(pseudo: Sequence[Sequence[str]], real: Sequence[Sequence[str]],
                common: frozenset[str]) -> dict[str, float | None]:
  """How well pseudo-queries match the real ones, over items with real queries.

  Returns:
    word_overlap: a pseudo-query shares a word with a real query.
    rare_word_overlap: the same, not counting the `common` words (on Amazon every
      category-path query holds "office" or "product", so plain overlap is near 1 for
      any query of the catalog).
    exact_match: a pseudo-query equals one of the item's real queries.
  """
  exact = [bool(set(p) & set(r)) for p, r in zip(pseudo, real) if r]
  return {
      "word_overlap": word_overlap_fraction(pseudo, real),
      "rare_word_overlap": word_overlap_fraction(pseudo, real, common),
      "exact_match": float(np.mean(exact)) if exact else None,
  }
