"""Search queries: built from category paths (Ai et al. 2017) or read from their files.

Construction (docs/design.md §1.2), per category path with at least two levels:
  join the level names with spaces, keep only [a-zA-Z ], lowercase, split on
  whitespace, drop STOPWORDS, Krovetz-stem, keep only words seen at least
  `min_word_count` times in the reviews (when the reviews carry text), then remove
  duplicate words keeping the last occurrence.

STOPWORDS below is our own short list of English function words (articles,
prepositions, conjunctions, pronouns, auxiliaries). Category names rarely contain
more than "and", "for", "with", "of", "the", "in", "by"; the list is deliberately
conservative so that content words such as "office" or "supplies" survive.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from typing import Iterable

import numpy as np

STOPWORDS = frozenset("""
a about above after again against all am an and any are as at be because been
before being below between both but by can could did do does doing down during
each few for from further had has have having he her here hers herself him himself
his how i if in into is it its itself just me more most my myself no nor not now of
off on once only or other our ours ourselves out over own same she should so some
such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom
why will with would you your yours yourself yourselves
""".split())

_NON_ALPHA = re.compile(r"[^a-zA-Z ]")

_STEM_CACHE: dict[str, str] = {}


@functools.cache
def _stemmer():
  """The Krovetz stemmer, imported on first use: the data stage alone stems, and the later
  stages that import this module for its fingerprint then need no compiled stemmer."""
  import krovetzstemmer  # pylint: disable=g-import-not-at-top

  return krovetzstemmer.Stemmer()


def stem(word: str) -> str:
  """Krovetz stem of a lowercase word (memoised)."""
  s = _STEM_CACHE.get(word)
  if s is None:
    s = _STEM_CACHE[word] = _stemmer().stem(word)
  return s


def stem_counts(word_counts: Counter) -> Counter:
  """Aggregates raw word counts by Krovetz stem."""
  out: Counter = Counter()
  for word, n in word_counts.items():
    out[stem(word)] += n
  return out


def path_words(path: Iterable[str]) -> list[str]:
  """Steps 2–3 for one category path: normalised, stopword-free, stemmed words."""
  text = _NON_ALPHA.sub("", " ".join(path)).lower()
  return [stem(w) for w in text.split() if w not in STOPWORDS]


def build_query(path: list[str], stem_count: Counter | None = None,
                min_word_count: int = 5) -> str:
  """The query of one category path ("" when it has fewer than two levels or no words).

  Args:
    path: category names from the root, e.g. ["Electronics", "GPS & Navigation"].
    stem_count: occurrences of each stem in the reviews; None when the reviews
      carry no text (step 4 is skipped then).
    min_word_count: step 4's threshold.
  """
  if len(path) < 2:
    return ""
  words = path_words(path)
  if stem_count is not None:
    words = [w for w in words if stem_count[w] >= min_word_count]
  last = {w: k for k, w in enumerate(words)}
  return " ".join(w for k, w in enumerate(words) if last[w] == k)


def build_item_queries(category_paths: list[list[list[str]]], stem_count: Counter | None,
                       min_word_count: int) -> tuple[list[str], list[list[int]]]:
  """Queries of every item from its category paths.

  Returns:
    (queries sorted alphabetically, per item the sorted distinct query indices).
  """
  per_item = [sorted({q for p in paths if (q := build_query(p, stem_count, min_word_count))})
              for paths in category_paths]
  queries = sorted({q for qs in per_item for q in qs})
  index = {q: k for k, q in enumerate(queries)}
  return queries, [[index[q] for q in qs] for qs in per_item]


def assign_queries(review_items: np.ndarray, item_queries: list[list[int]],
                   rng: np.random.Generator) -> np.ndarray:
  """One query per review, drawn uniformly from its item's queries (-1 when none).

  Args:
    review_items: [n] item index of each review.
    item_queries: per item, its query indices.
    rng: the seeded generator.

  Returns:
    [n] int32 query index of each review's search event, -1 for none.
  """
  lengths = np.asarray([len(q) for q in item_queries], np.int64)
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  flat = np.asarray([q for qs in item_queries for q in qs], np.int32)
  n_q = lengths[review_items]
  pick = np.floor(rng.random(len(review_items)) * np.maximum(n_q, 1)).astype(np.int64)
  out = np.full(len(review_items), -1, np.int32)
  has = n_q > 0
  out[has] = flat[offsets[review_items[has]] + pick[has]]
  return out


def released_queries(query_text: list[str], qrel_users: np.ndarray, qrel_queries: np.ndarray,
                     qrel_items: np.ndarray, review_users: np.ndarray,
                     review_items: np.ndarray, rng: np.random.Generator
                     ) -> tuple[list[str], np.ndarray, dict[str, int]]:
  """Joins Ai et al.'s qrels with the reviews: one query per (user, item) pair.

  The qrels (train and test merged) are shuffled with `rng`; the first query of each
  (user, item) pair is kept and given to every review of that pair.

  Args:
    query_text: released query strings by released index.
    qrel_users / qrel_queries / qrel_items: the merged qrels lines.
    review_users / review_items: [n] raw ids of the reviews.
    rng: the seeded generator.

  Returns:
    (queries: distinct used query strings sorted, review_query: [n] int32 index into
    them or -1, counts: {"qrels_pairs", "qrels_unmatched_pairs", "qrels_bad_query"}).
  """
  bad = (qrel_queries < 0) | (qrel_queries >= len(query_text))
  counts = {"qrels_bad_query": int(bad.sum())}
  qu, qq, qi = qrel_users[~bad], qrel_queries[~bad], qrel_items[~bad]
  order = rng.permutation(len(qu))
  pair = np.char.add(np.char.add(qu[order].astype(str), "\t"), qi[order].astype(str))
  pair_key, first = np.unique(pair, return_index=True)
  pair_text = np.asarray([str(t).strip() for t in query_text], dtype=object)[qq[order][first]]
  review_pair = np.char.add(np.char.add(review_users.astype(str), "\t"),
                            review_items.astype(str))
  if len(pair_key):
    pos = np.minimum(np.searchsorted(pair_key, review_pair), len(pair_key) - 1)
    hit = pair_key[pos] == review_pair
  else:
    pos, hit = np.zeros(len(review_pair), np.int64), np.zeros(len(review_pair), bool)
  used = np.zeros(len(pair_key), bool)
  used[pos[hit]] = True
  queries = sorted({t for t in pair_text[used] if t})
  index = {q: k for k, q in enumerate(queries)}
  pair_query = np.asarray([index.get(t, -1) for t in pair_text], np.int32)
  review_query = np.full(len(review_pair), -1, np.int32)
  review_query[hit] = pair_query[pos[hit]]
  counts["qrels_pairs"] = int(len(pair_key))
  counts["qrels_unmatched_pairs"] = int((~used).sum())
  return queries, review_query, counts
