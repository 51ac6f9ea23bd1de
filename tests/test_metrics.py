"""Exact-value tests of the ranking metrics."""

import numpy as np

from gensar_jax.evaluation import metrics


def test_ranks_from_lists_counts_short_lists_as_misses():
  ranked = np.array([[5, 3, 9], [3, -1, -1], [7, 8, -1]])
  ranks = metrics.ranks_from_lists(ranked, np.array([3, 3, 1]))
  np.testing.assert_array_equal(ranks, [2, 1, np.inf])


def test_metrics_match_hand_computed_values():
  m = metrics.metrics_from_ranks(np.array([1, 2, 6, np.inf]))
  assert m["hr@1"] == 0.25 and m["hr@5"] == 0.5 and m["hr@10"] == 0.75
  np.testing.assert_allclose(m["ndcg@5"], (1 + 1 / np.log2(3)) / 4)
  np.testing.assert_allclose(m["ndcg@10"], (1 + 1 / np.log2(3) + 1 / np.log2(7)) / 4)
  assert m["count"] == 4


def test_ranks_from_scores_breaks_ties_fairly():
  scores = np.array([[0.5, 0.9, 0.1], [0.9, 0.5, 0.1]])
  np.testing.assert_array_equal(metrics.ranks_from_scores(scores), [2, 1])
  constant = np.zeros((20000, 100))
  ranks = metrics.ranks_from_scores(constant)
  assert ranks.min() == 1 and ranks.max() == 100
  # A constant scorer is as good as random: NDCG@10 = sum_{r<=10} 1/log2(r+1) / 100.
  expected = sum(1 / np.log2(r + 1) for r in range(1, 11)) / 100
  np.testing.assert_allclose(metrics.metrics_from_ranks(ranks)["ndcg@10"], expected, atol=3e-3)


def test_ranks_of_targets_count_higher_scores_and_break_ties_at_random():
  scores = np.array([[0.1, 0.9, 0.5, 0.3], [1.0, 1.0, 1.0, 1.0]])
  np.testing.assert_array_equal(metrics.ranks_of_targets(scores, np.array([2, 0]), seed=0)[:1], [2.0])
  tied = [metrics.ranks_of_targets(scores[1:], np.array([0]), seed=s)[0] for s in range(50)]
  assert set(tied) == {1.0, 2.0, 3.0, 4.0}
