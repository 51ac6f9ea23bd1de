"""Evaluation negatives: 99 distinct items per validation/test target (docs/design.md §1.3).

Recommendation: items drawn in proportion to their interaction counts, never the
positive and never any item the user interacted with. Search: the BM25 (bm25s) top hits
of the target's query over item text (title + description), positive removed, topped
up with uniformly drawn items (never the positive) to `num` distinct items. BM25 runs
once per distinct query. Everything is drawn from a seeded numpy generator.
"""

from __future__ import annotations

from typing import Callable

import bm25s
import numpy as np

from gensar_jax.data import queries as queries_lib
from gensar_jax.errors import PipelineError

_ROUNDS = 30
_MAX_POOL = 50_000_000  # Largest interaction total drawn from by index (else by CDF).


def _first_distinct_valid(cand_RxC: np.ndarray, bad_RxC: np.ndarray, num: int) -> np.ndarray:
  """Per row, the first `num` distinct candidates that are >= 0 and not `bad`.

  `bad` must depend only on the row and the candidate's value. Two sorts of
  (value, position) keys: the first occurrence of each valid value, then positions.

  Returns:
    [R, num] int32, -1 where a row has fewer.
  """
  r, c = cand_RxC.shape
  if c == 0:
    return np.full((r, num), -1, np.int32)
  big = np.iinfo(np.int64).max
  valid = (cand_RxC >= 0) & ~bad_RxC
  key = np.where(valid, cand_RxC.astype(np.int64) * c + np.arange(c), big)
  key.sort(axis=1)
  first = np.ones(key.shape, bool)
  first[:, 1:] = (key[:, 1:] // c) != (key[:, :-1] // c)
  pos = np.where(first & (key != big), key % c, c)
  pos.sort(axis=1)
  pos = pos[:, :num]
  out = np.take_along_axis(cand_RxC, np.minimum(pos, c - 1), axis=1)
  out = np.where(pos < c, out, -1).astype(np.int32)
  if out.shape[1] < num:
    out = np.concatenate([out, np.full((r, num - out.shape[1]), -1, np.int32)], axis=1)
  return out


def _fill(start_RxK: np.ndarray, draw: Callable[[int, int], np.ndarray],
          is_bad: Callable[[np.ndarray, np.ndarray], np.ndarray], num: int,
          chunk: int = 65_536) -> np.ndarray:
  """Completes each row to `num` distinct valid items with drawn candidates.

  Args:
    start_RxK: initial candidates in priority order (-1 = none).
    draw: (rows, cols) -> candidate item matrix.
    is_bad: (row indices [r], candidates [r, c]) -> bool mask of forbidden items.
    num: items per row.
  """
  out = np.full((len(start_RxK), num), -1, np.int32)
  for lo in range(0, len(start_RxK), chunk):
    rows = np.arange(lo, min(lo + chunk, len(start_RxK)))
    cur = _first_distinct_valid(start_RxK[rows], is_bad(rows, start_RxK[rows]), num)
    for _ in range(_ROUNDS):
      need = (cur < 0).any(1)
      if not need.any():
        break
      r = rows[need]
      width = 2 * num
      cand = np.concatenate([cur[need], draw(len(r), width)], axis=1)
      cur[need] = _first_distinct_valid(cand, is_bad(r, cand), num)
    out[rows] = cur
  return out


def _user_item_keys(user_items: list[np.ndarray], num_items: int) -> np.ndarray:
  keys = [u * np.int64(num_items) + np.asarray(items, np.int64)
          for u, items in enumerate(user_items) if len(items)]
  return np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)


def popularity(users: np.ndarray, positives: np.ndarray, user_items: list[np.ndarray],
               counts: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
  """Recommendation negatives.

  Args:
    users / positives: [R] user and target item of each row.
    user_items: per user, every item the user interacted with.
    counts: [N] int interaction counts (the sampling weights).
    num: negatives per row.
    rng: seeded generator.

  Returns:
    [R, num] int32.
  """
  n = len(counts)
  keys = _user_item_keys(user_items, n)
  total = int(np.sum(counts))
  if total <= 0:
    raise PipelineError("no interactions to sample recommendation negatives from")
  if total <= _MAX_POOL:
    # Every interaction once: a uniform index into it draws items in proportion.
    pool = np.repeat(np.arange(n, dtype=np.int32), np.asarray(counts, np.int64))

    def draw(r, c):
      return pool[rng.integers(0, total, size=(r, c))]
  else:
    cdf = np.cumsum(np.asarray(counts, np.float64))
    cdf /= cdf[-1]

    def draw(r, c):
      return np.minimum(np.searchsorted(cdf, rng.random((r, c)), side="right"), n - 1)

  def is_bad(rows, cand):
    k = users[rows].astype(np.int64)[:, None] * n + np.maximum(cand, 0)
    pos = np.minimum(np.searchsorted(keys, k), max(len(keys) - 1, 0))
    in_user = keys[pos] == k if len(keys) else np.zeros(k.shape, bool)
    return in_user | (cand == positives[rows][:, None])

  out = _fill(np.full((len(users), 0), -1, np.int32), draw, is_bad, num)
  _fallback_exact(out, lambda i: np.union1d(user_items[users[i]], [positives[i]]),
                  counts, rng)
  return out


def _fallback_exact(out: np.ndarray, excluded: Callable[[int], np.ndarray],
                    weights: np.ndarray, rng: np.random.Generator) -> None:
  """Fills rows that rejection sampling left short by exact weighted draws."""
  for i in np.flatnonzero((out < 0).any(1)):
    have = out[i][out[i] >= 0]
    allowed = np.setdiff1d(np.arange(len(weights)), np.union1d(excluded(i), have))
    w = weights[allowed].astype(np.float64)
    need = out.shape[1] - len(have)
    if len(allowed) < need:
      raise PipelineError(
          f"only {len(have) + len(allowed)} items can be negatives of a target, "
          f"{out.shape[1]} are needed: the category is too small for the protocol")
    p = w / w.sum() if w.sum() > 0 else None
    if p is not None and (p > 0).sum() < need:
      p = None
    out[i] = np.concatenate([have, rng.choice(allowed, need, replace=False, p=p)])


def tokenize(texts: list[str]) -> list[list[str]]:
  """Lowercase words, stopwords removed, Krovetz-stemmed (BM25 documents and queries)."""
  out = []
  for t in texts:
    words = queries_lib._NON_ALPHA.sub(" ", t).lower().split()  # pylint: disable=protected-access
    out.append([queries_lib.stem(w) for w in words if w not in queries_lib.STOPWORDS])
  return out


def bm25_hits(item_texts: list[str], queries: list[str], top_k: int) -> np.ndarray:
  """[Q, top_k] item indices of each query's BM25 hits with positive score (-1 after).

  Items whose text is empty are not indexed.
  """
  has_text = np.flatnonzero([bool(t.strip()) for t in item_texts])
  hits = np.full((len(queries), top_k), -1, np.int32)
  if len(has_text) == 0 or not queries:
    return hits
  docs = tokenize([item_texts[i] for i in has_text])
  retriever = bm25s.BM25()
  retriever.index(docs, show_progress=False)
  k = min(top_k, len(has_text))
  qtok = [q if q else ["\u0000"] for q in tokenize(queries)]
  docs_QxK, scores_QxK = retriever.retrieve(qtok, k=k, show_progress=False, n_threads=1)
  hits[:, :k] = np.where(scores_QxK > 0, has_text[docs_QxK], -1)
  return hits


def search(queries_R: np.ndarray, positives: np.ndarray, hits_QxK: np.ndarray,
           num_items: int, num: int, rng: np.random.Generator) -> np.ndarray:
  """Search negatives: BM25 hits of the row's query without the positive, topped up.

  Args:
    queries_R: [R] query index of each row.
    positives: [R] target item of each row.
    hits_QxK: from `bm25_hits`.
    num_items: catalog size (uniform top-up range).
    num: negatives per row.
    rng: seeded generator.
  """
  start = hits_QxK[queries_R]

  def draw(r, c):
    return rng.integers(0, num_items, size=(r, c))

  def is_bad(rows, cand):
    return cand == positives[rows][:, None]

  out = _fill(start, draw, is_bad, num)
  _fallback_exact(out, lambda i: np.asarray([positives[i]]), np.ones(num_items), rng)
  return out
