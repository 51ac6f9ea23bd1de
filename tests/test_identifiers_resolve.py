"""Exact-value tests of collision rates and the deterministic collision resolution."""

import numpy as np
import pytest

from gensar_jax.identifiers import resolve


def test_collision_rate_counts_identifiers_not_items():
  codes = np.array([[1, 2], [1, 2], [3, 4], [1, 2], [3, 5]])
  assert resolve.collision_rate(codes) == pytest.approx(1 - 3 / 5)
  assert resolve.collision_rate(np.zeros((0, 2), np.int32)) == 0.0
  assert resolve.collision_rate(np.arange(6).reshape(3, 2)) == 0.0


def test_hand_made_collisions_move_the_farther_items_to_the_nearest_free_last_code():
  # K = 4 last codes on a line; items 0, 1, 3 share (5, 0), item 2 holds (5, 1).
  codebook = np.array([[0.0], [1.0], [2.0], [3.0]])
  codes = np.array([[5, 0], [5, 0], [5, 1], [5, 0], [6, 0]])
  residual = np.array([[0.3], [0.1], [1.0], [0.9], [0.0]])
  out, moved = resolve.resolve(codes, residual, codebook)
  # Item 1 is closest to code 0 and stays; item 0 (distance 0.3) moves first, to the
  # nearest code free under prefix (5,): 1 is taken by item 2, so 2 (|0.3-2| < |0.3-3|).
  # Item 3 (0.9) then takes 3, the only free one. Item 4 has another prefix: untouched.
  np.testing.assert_array_equal(out, [[5, 2], [5, 0], [5, 1], [5, 3], [6, 0]])
  assert moved == 2
  assert out.dtype == np.int32
  np.testing.assert_array_equal(codes[:, 0], [5, 5, 5, 5, 6])  # input not modified


def test_ties_in_distance_keep_the_lowest_item_index():
  codebook = np.array([[0.0], [1.0], [-1.0]])
  codes = np.array([[0], [0]])
  out, _ = resolve.resolve(codes, np.array([[0.5], [0.5]]), codebook)
  # Equal distances: item 0 stays; item 1 takes the nearest free code (1 at 0.5, vs 2 at 1.5).
  np.testing.assert_array_equal(out, [[0], [1]])


def test_random_tables_end_unique_changing_only_colliding_last_codes():
  rng = np.random.default_rng(0)
  n, k, d = 600, 64, 3
  codes = np.stack([rng.integers(0, 4, n), rng.integers(0, 4, n), rng.integers(0, k, n)], 1)
  residual = rng.standard_normal((n, d))
  codebook = rng.standard_normal((k, d))
  before = resolve.collision_rate(codes)
  assert before > 0.2
  out, moved = resolve.resolve(codes, residual, codebook)
  assert resolve.collision_rate(out) == 0.0
  assert len(np.unique(out, axis=0)) == n
  np.testing.assert_array_equal(out[:, :2], codes[:, :2])
  changed = np.nonzero(out[:, 2] != codes[:, 2])[0]
  assert len(changed) == moved == n - len(np.unique(codes, axis=0))
  # Only items that shared their identifier moved; the unique ones kept theirs.
  _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
  assert np.all(counts[inverse.reshape(-1)][changed] > 1)
  # Deterministic, and the same under a permutation of the items (distances are distinct).
  again, _ = resolve.resolve(codes, residual, codebook)
  np.testing.assert_array_equal(again, out)
  perm = rng.permutation(n)
  permuted, _ = resolve.resolve(codes[perm], residual[perm], codebook)
  np.testing.assert_array_equal(permuted, out[perm])


def test_a_prefix_with_more_items_than_codes_cannot_be_resolved():
  codes = np.zeros((4, 2), np.int32)
  with pytest.raises(resolve.PrefixFullError, match="K=3"):
    resolve.resolve(codes, np.zeros((4, 1)), np.arange(3.0)[:, None])
  # Exactly K items under one prefix fit.
  out, moved = resolve.resolve(codes[:3], np.zeros((3, 1)), np.arange(3.0)[:, None])
  np.testing.assert_array_equal(np.sort(out[:, 1]), [0, 1, 2])
  assert moved == 2


def test_largest_prefix_group_predicts_whether_resolution_can_succeed():
  codebook = np.eye(3)  # K = 3
  codes = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 2], [2, 0, 0]])
  assert resolve.largest_prefix_group(codes) == 3  # prefix (1, 0) holds three items
  out, _ = resolve.resolve(codes, np.zeros((4, 3)), codebook)
  assert resolve.collision_rate(out) == 0.0
  crowded = np.vstack([codes, [[1, 0, 1]]])  # four items under (1, 0) with K = 3
  assert resolve.largest_prefix_group(crowded) == 4
  with pytest.raises(resolve.PrefixFullError):
    resolve.resolve(crowded, np.zeros((5, 3)), codebook)
  assert resolve.largest_prefix_group(np.zeros((0, 2), np.int32)) == 0
