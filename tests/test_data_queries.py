"""Query construction (docs/design.md §1.2): Ai et al.'s method and their released files."""

from collections import Counter

import numpy as np
import pytest

from gensar_jax.data import queries

# The three released Electronics queries quoted in docs/design.md §1.2.
RELEASED_EXAMPLES = [
    (["Electronics", "GPS & Navigation", "Vehicle GPS", "Trucking GPS"],
     "electronics navigation vehicle trucking gps"),
    (["Electronics", "Accessories & Supplies", "Office Electronics Accessories",
      "Projection Screens"], "supplies office electronics accessory projection screen"),
    (["Cell Phones & Accessories", "Cell Phones", "Unlocked Cell Phones"],
     "accessory unlock cell phone"),
]


@pytest.mark.parametrize("path,expected", RELEASED_EXAMPLES)
def test_reproduces_released_electronics_queries(path, expected):
  assert queries.build_query(path) == expected


def test_steps_of_the_construction():
  # Step 1: a path of one level gives no query.
  assert queries.build_query(["Electronics"]) == ""
  assert queries.build_query([]) == ""
  # Step 2-3: only letters and spaces, lowercase, stopwords dropped ("for", "a"), stems.
  assert queries.build_query(["Electronics", "Cases for Tablets"]) == "electronics case tablet"
  assert queries.build_query(["Toys & Games", "3-D Puzzles"]) == "toy games d puzzle"
  assert queries.build_query(["A b", "Cell Phones"]) == "b cell phone"
  # Step 5: a repeated word keeps its last position.
  assert (queries.build_query(["Office Products", "Office & School Supplies", "Paper"])
          == "product office school supplies paper")


def test_words_rarer_than_the_threshold_in_reviews_are_dropped():
  path = ["Electronics", "GPS & Navigation", "Vehicle GPS", "Trucking GPS"]
  counts = Counter({"electronics": 5, "navigation": 4, "vehicle": 9, "trucking": 5,
                    "gps": 100})
  assert queries.build_query(path, counts) == "electronics vehicle trucking gps"
  assert queries.build_query(path, counts, min_word_count=6) == "vehicle gps"
  assert queries.build_query(path, Counter()) == ""


def test_review_word_counts_are_aggregated_by_stem():
  assert queries.stem_counts(Counter({"phones": 3, "phone": 2, "unlocked": 1})) == Counter(
      {"phone": 5, "unlock": 1})


def test_item_queries_are_sorted_and_shared():
  paths = [[["A b", "Cell Phones"]],
           [["Zed", "Trucks"], ["Zed"]],
           [["Only"]],
           [["A b", "Cell Phones"], ["Zed", "Trucks"], ["A", "B", "Cell Phones"]]]
  qs, per_item = queries.build_item_queries(paths, None, 5)
  assert qs == ["b cell phone", "zed truck"]
  assert per_item == [[0], [1], [], [0, 1]]


def test_assign_queries_draws_uniformly_among_the_item_queries():
  item_queries = [[0, 1, 2], [], [3]]
  items = np.repeat([0, 1, 2], 6000)
  a = queries.assign_queries(items, item_queries, np.random.default_rng(7))
  b = queries.assign_queries(items, item_queries, np.random.default_rng(7))
  c = queries.assign_queries(items, item_queries, np.random.default_rng(8))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  assert a.dtype == np.int32
  np.testing.assert_array_equal(a[items == 1], -1)
  np.testing.assert_array_equal(a[items == 2], 3)
  share = np.bincount(a[items == 0], minlength=3) / 6000
  np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.03)


def _released(seed, qrels, reviews, text=("alpha query", "beta query", "", "gamma")):
  users, qs, items = (np.asarray([r[k] for r in qrels]) for k in range(3))
  ru, ri = (np.asarray([r[k] for r in reviews]) for k in range(2))
  return queries.released_queries(list(text), users, qs.astype(np.int64), items, ru, ri,
                                  np.random.default_rng(seed))


def test_released_files_one_query_per_user_item_pair():
  qrels = [("u1", 0, "A"), ("u1", 1, "A"),  # Two queries for (u1, A): one is kept.
           ("u1", 3, "B"),
           ("u2", 1, "A"),
           ("u3", 0, "C"),  # No review of (u3, C): an unmatched pair.
           ("u2", 9, "B"),  # Query index outside query_text.
           ("u2", 2, "C")]  # An empty query line: the pair has no query.
  reviews = [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B"), ("u2", "C"), ("u1", "A")]
  chosen = set()
  for seed in range(40):
    qs, review_query, counts = _released(seed, qrels, reviews)
    assert counts == {"qrels_bad_query": 1, "qrels_pairs": 5, "qrels_unmatched_pairs": 1}
    text = [qs[k] if k >= 0 else None for k in review_query]
    assert text[1] == "gamma" and text[2] == "beta query"
    assert text[3] is None and text[4] is None  # No usable qrels for (u2, B), (u2, C).
    assert text[0] == text[5] in ("alpha query", "beta query")  # One query per pair.
    assert qs == sorted(set(t for t in text if t))
    chosen.add(text[0])
    again = _released(seed, qrels, reviews)
    assert again[0] == qs and np.array_equal(again[1], review_query)
  assert chosen == {"alpha query", "beta query"}  # The shuffle, not the file order, decides.
