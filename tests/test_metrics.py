"""Exact-value tests of the ranking metrics."""

import numpy as np

from gensar_jax import metrics


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


def test_standard_errors_are_sample_std_over_sqrt_rows():
  ranks = np.array([1, 2, 6, np.inf, 3, 12])
  m = metrics.metrics_from_ranks(ranks)
  for key in metrics.METRIC_KEYS:
    g = metrics.gains(ranks, key)
    np.testing.assert_allclose(m[key], g.mean())
    np.testing.assert_allclose(m[f"{key}_se"], g.std(ddof=1) / np.sqrt(len(g)))
  assert metrics.metrics_from_ranks(np.array([3.0]))["ndcg@10_se"] == 0.0


def test_paired_test_detects_a_consistent_difference_and_not_noise():
  rng = np.random.default_rng(0)
  base = rng.integers(1, 30, size=2000).astype(float)
  better = np.maximum(base - 3, 1)  # every row ranked 3 places higher (or first)
  res = metrics.paired_test(better, base)
  assert res["mean_diff"] > 0 and res["p"] < 1e-6 and res["count"] == 2000
  shuffled = rng.permutation(base)  # same distribution, no real difference
  assert metrics.paired_test(shuffled, base)["p"] > 0.01
  same = metrics.paired_test(base, base)
  assert same["mean_diff"] == 0.0 and same["p"] == 1.0
