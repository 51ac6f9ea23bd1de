"""Evaluation negatives (docs/design.md §1.3): popularity-sampled for recommendation, BM25
hits topped up at random for search; 99 distinct, never the positive."""

import numpy as np
import pytest

from gensar_jax.data import negatives
from gensar_jax.pipeline import PipelineError


def _check_distinct_and_not_positive(neg, positives, num):
  assert neg.shape == (len(positives), num) and neg.dtype == np.int32
  assert (neg >= 0).all()
  assert all(len(set(row)) == num for row in neg.tolist())
  assert not (neg == positives[:, None]).any()


def test_popularity_negatives_avoid_history_and_follow_counts():
  rng = np.random.default_rng(0)
  n, num_users = 4000, 300
  counts = np.where(np.arange(n) < n // 2, 1, 10).astype(np.int64)
  counts[:100] = 0  # Never interacted with in training counts: never sampled.
  user_items = [np.unique(rng.integers(100, n, size=40)) for _ in range(num_users)]
  users = np.repeat(np.arange(num_users), 2).astype(np.int32)
  positives = np.asarray([user_items[u][-1] for u in users], np.int32)
  neg = negatives.popularity(users, positives, user_items, counts, 99,
                             np.random.default_rng(1))
  _check_distinct_and_not_positive(neg, positives, 99)
  for row, u in zip(neg, users):
    assert not np.isin(row, user_items[u]).any()
  assert (neg >= 100).all()
  freq = np.bincount(neg.ravel(), minlength=n)
  ratio = freq[n // 2:].mean() / freq[100:n // 2].mean()
  assert 8.0 < ratio < 11.0, ratio  # Weights 10:1 (sampling without replacement: ~9.7).
  again = negatives.popularity(users, positives, user_items, counts, 99,
                               np.random.default_rng(1))
  other = negatives.popularity(users, positives, user_items, counts, 99,
                               np.random.default_rng(2))
  np.testing.assert_array_equal(neg, again)
  assert not np.array_equal(neg, other)


def test_popularity_negatives_when_exactly_enough_items_remain():
  # 102 items; the user has items 0 and 1, the positive is 1: exactly items 2..101 are
  # allowed, one of which (weight 0) only the exact fallback can reach.
  counts = np.ones(102, np.int64)
  counts[50] = 0
  counts[60] = 10**9  # Rejection sampling nearly always draws this one.
  users, positives = np.zeros(1, np.int32), np.ones(1, np.int32)
  neg = negatives.popularity(users, positives, [np.array([0, 1])], counts, 99,
                             np.random.default_rng(0))
  _check_distinct_and_not_positive(neg, positives, 99)
  assert set(neg[0].tolist()) <= set(range(2, 102))
  assert 60 in neg[0]
  with pytest.raises(PipelineError, match="too small"):
    negatives.popularity(users, positives, [np.arange(5)], counts, 99,
                         np.random.default_rng(0))


def test_bm25_hits_rank_matching_items_and_skip_empty_text():
  texts = ["red widget deluxe", "blue widget", "red red red lamp", "", "green table",
           "widget widget widget red"]
  hits = negatives.bm25_hits(texts, ["red widget", "lamp", "nothing here", ""], 5)
  assert hits.tolist() == [[5, 0, 2, 1, -1], [2, -1, -1, -1, -1], [-1] * 5, [-1] * 5]
  assert negatives.tokenize(["The Red widgets, for tables!"]) == [["red", "widget", "table"]]


def test_search_negatives_start_with_bm25_hits_without_the_positive():
  num_items = 500
  hits = np.full((3, 120), -1, np.int32)
  hits[0, :120] = np.arange(120) * 3  # 120 hits: the first 99 that are not positive.
  hits[1, :10] = np.arange(400, 410)  # 10 hits: topped up at random to 99.
  queries_r = np.asarray([0, 0, 1, 1, 2], np.int32)
  positives = np.asarray([6, 499, 405, 3, 7], np.int32)
  neg = negatives.search(queries_r, positives, hits, num_items, 99, np.random.default_rng(0))
  _check_distinct_and_not_positive(neg, positives, 99)
  assert neg[0].tolist() == [h for h in (np.arange(120) * 3).tolist() if h != 6][:99]
  assert neg[1].tolist() == (np.arange(99) * 3).tolist()
  assert neg[2, :9].tolist() == [400, 401, 402, 403, 404, 406, 407, 408, 409]
  assert neg[3, :10].tolist() == list(range(400, 410))
  for row in (2, 3):
    assert len(set(neg[row, 10:].tolist()) & set(range(400, 410))) == 0
  assert neg[4].min() >= 0 and 7 not in neg[4]  # No hits at all: all random.
  again = negatives.search(queries_r, positives, hits, num_items, 99,
                           np.random.default_rng(0))
  np.testing.assert_array_equal(neg, again)
  # The top-up is uniform over the catalog (minus the positive).
  many = negatives.search(np.full(400, 2, np.int32), np.zeros(400, np.int32), hits,
                          num_items, 99, np.random.default_rng(3))
  freq = np.bincount(many.ravel(), minlength=num_items)
  assert freq[0] == 0
  assert freq[1:].min() > 40 and freq[1:].max() < 120  # Mean 79.4.
