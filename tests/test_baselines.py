"""The zero-training baselines on planted cases with hand-computed scores and ranks,
and the registry the eval stage and the report read."""

import numpy as np
import pytest

from gensar_jax.data import schema
from gensar_jax.evaluation import baselines
from gensar_jax.evaluation import outputs as eval_outputs
from gensar_jax.report import tables


def _catalog(num_items, sequences):
  return schema.Catalog(
      item_ids=np.array([f"I{i}" for i in range(num_items)]), titles=[""] * num_items,
      descriptions=[""] * num_items, queries=[], item_queries=[[] for _ in range(num_items)],
      interaction_counts=np.zeros(num_items, np.int64),
      rec_train_sequences=[np.asarray(s, np.int32) for s in sequences])


def _rows(users, histories, targets, negatives=None, width=5):
  """Recommendation rows whose recommendation history is `histories` (oldest first)."""
  kinds = np.zeros((len(users), width), np.int32)
  items = np.zeros((len(users), width), np.int32)
  for r, h in enumerate(histories):
    h = list(h)[-width:]
    kinds[r, :len(h)], items[r, :len(h)] = schema.KIND_REC, h
  rows = {"user": np.asarray(users), "history_kind": kinds, "history_item": items,
          "item": np.asarray(targets)}
  if negatives is not None:
    rows["negatives"] = np.asarray(negatives)
  return rows


def test_transition_counts_count_each_direct_successor():
  got = baselines.transition_counts([[0, 1, 2], [0, 1], [3, 0, 2], [4], []], 5).toarray()
  want = np.zeros((5, 5))
  want[0, 1], want[1, 2], want[0, 2], want[3, 0] = 2, 1, 1, 1
  np.testing.assert_array_equal(got, want)


def test_cooccurrence_ranks_the_most_frequent_successor_first_and_never_counts_held_out():
  # Training: after item 0 come 1 (three times) and 2 (once). Counted, the validation and
  # test targets would add 0 -> 3 and 3 -> 4 three times each, 2 -> 3 and 5 -> 0 once.
  train = [[0, 1], [0, 1, 5], [5, 0, 1], [2, 0, 2], [2, 0], [4, 0], [5]]
  catalog = _catalog(6, train)
  valid = _rows([3, 4, 5, 6], [[2, 0, 2], [2, 0], [4, 0], [5]], [3, 3, 3, 0])
  test = _rows([3, 4, 5, 6], [[2, 0, 2, 3], [2, 0, 3], [4, 0, 3], [5, 0]], [4, 4, 4, 3],
               negatives=[[1, 2, 5]] * 4)
  scores = baselines.cooccurrence_scorer(catalog, valid)(test)
  # Popularity (training counts) 6, 3, 3, 0, 1, 3 -> tie-break 0.1 * count / 7.
  tie = 0.1 * np.array([6, 3, 3, 0, 1, 3]) / 7
  # A test history ends with the validation target: 3 (nothing followed 3 in training)
  # or, for user 6, 0.
  for r in range(3):
    np.testing.assert_allclose(scores[r], tie)
  np.testing.assert_allclose(scores[3], tie + [0, 3, 1, 0, 0, 0])
  assert np.argmax(scores[3]) == 1  # The most frequent successor of 0.
  # Target 4 ranks by popularity alone (behind 0, 1, 2, 5); 3 has no score at all.
  ranks = baselines.score_rows(baselines.cooccurrence_scorer(catalog, valid), test,
                               ("sampled", "full"), seed=0)
  np.testing.assert_array_equal(ranks["full"], [5, 5, 5, 6])
  np.testing.assert_array_equal(ranks["sampled"], [4, 4, 4, 4])
  # Validation rows (no earlier rows) end with their last training item (2 and 5).
  val_scores = baselines.cooccurrence_scorer(catalog, None)(valid)
  np.testing.assert_allclose(val_scores[0], tie + [2, 0, 0, 0, 0, 0])
  np.testing.assert_allclose(val_scores[3], tie + [1, 0, 0, 0, 0, 0])


def test_cooccurrence_over_the_last_three_items_weights_them_by_recency():
  catalog = _catalog(4, [[0, 1], [1, 2], [2, 3], [1, 3]])
  rows = _rows([0], [[0, 1]], [3])
  scores = baselines.cooccurrence_scorer(catalog, None, baselines.RECENCY)(rows)
  tie = 0.1 * np.array([1, 3, 2, 2]) / 4
  # Newest item 1 (weight 1): 2 once, 3 once; item 0 (weight 0.5): 1 once.
  np.testing.assert_allclose(scores[0], tie + [0, 0.5, 1, 1])


def test_id_prefix_scores_are_recency_weighted_shared_prefix_lengths():
  codes = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 1, 1]], np.int32)
  np.testing.assert_array_equal(baselines.prefix_lengths(codes, np.array([0, 3])),
                                [[3, 2, 1, 0, 1], [0, 0, 0, 3, 0]])
  catalog = _catalog(5, [[3, 2], [2, 4], [1]])
  # The test row's history is user 0's training items, then its validation target 0.
  valid = _rows([0], [[3, 2]], [0])
  test = _rows([0], [[3, 2, 0]], [2], negatives=[[1, 4]])
  scorer = baselines.id_prefix_scorer(catalog, codes, valid)
  # Shared prefixes with 0 (weight 1), 2 (0.5), 3 (0.25), then popularity 0.1 c / 3.
  want = (np.array([3, 2, 1, 0, 1]) + 0.5 * np.array([1, 1, 3, 0, 2])
          + 0.25 * np.array([0, 0, 0, 3, 0]) + 0.1 * np.array([0, 1, 2, 1, 1]) / 3)
  np.testing.assert_allclose(scorer(test)[0], want)
  np.testing.assert_allclose(want[:3], [3.5, 2.5 + 0.1 / 3, 2.5 + 0.2 / 3])
  # Items 1 and 2 tie on prefixes; the more popular 2 ranks second, after item 0.
  ranks = baselines.score_rows(scorer, test, ("sampled", "full"), seed=0)
  assert ranks["full"].tolist() == [2] and ranks["sampled"].tolist() == [1]


def test_a_row_without_history_gets_popularity_alone():
  catalog = _catalog(3, [[0, 1], [1, 2], [1]])
  rows = _rows([5], [[]], [2])  # A user with no training sequence and no history.
  codes = np.array([[0, 0], [0, 1], [1, 0]])
  for scorer in (baselines.cooccurrence_scorer(catalog, None),
                 baselines.id_prefix_scorer(catalog, codes, None)):
    np.testing.assert_allclose(scorer(rows)[0], 0.1 * np.array([1, 3, 1]) / 4)


def test_the_registry_names_every_baseline_once_and_the_report_reads_its_titles():
  names = [b.name for b in baselines.REGISTRY]
  assert len(names) == len(set(names))
  # One scorer per key of the eval stage's contract, in its order (the report's order).
  assert names == list(eval_outputs.BASELINE_TITLES)
  assert {"popularity", "sasrec", "sasrec_last{window}", "sasrec_bce", "cooccurrence",
          "id_prefix", "bm25", "dense"} <= set(names)
  for b in baselines.REGISTRY:
    assert set(b.tasks) <= set(schema.TASKS) and b.tasks
  assert tables.baseline_name("sasrec_last5") == "SASRec (last 5 items)"
  assert tables.baseline_name("sasrec") == "SASRec"
  assert tables.baseline_name("id_prefix") == "Identifier prefix (last 3 items)"
  assert tables.baseline_name("sasrec_lastx") == "sasrec_lastx"
  assert tables.baseline_name("something_else") == "something_else"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_baseline_with_non_finite_scores_is_named(bad):
  from gensar_jax import errors  # pylint: disable=g-import-not-at-top

  rows = _rows([0], [[0]], [1], negatives=[[0]])
  with pytest.raises(errors.NonFiniteScores, match="baseline id_prefix"):
    baselines.score_rows(lambda r: np.full((1, 2), bad), rows, ("sampled",), 0, "id_prefix")


def test_the_report_lists_gensar_against_every_baseline():
  test = {"metric": "ndcg@10", "mean_diff": -0.08, "se_diff": 0.005, "t": -16.0, "p": 1e-50,
          "count": 10}
  md = tables.to_markdown([], tests_by_baseline={
      "recommendation": {"sampled": {"id_prefix": test, "sasrec_last5": test}}})
  assert "| recommendation | sampled | Identifier prefix (last 3 items) | -0.0800 ± 0.0050 | 1e-50 |" in md
  assert "SASRec (last 5 items)" in md
