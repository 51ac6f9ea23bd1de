"""Exact-value tests of the trie transition tables."""

import numpy as np
import pytest

from gensar_jax.decoding import trie


def test_small_trie_has_the_hand_built_table():
  codes = np.array([[0, 1], [0, 2], [2, 0]])
  table = trie.build(codes, np.array([7, 8, 9]), codebook_size=3)
  # Node 0 = root; prefixes (0,) and (2,) are nodes 1 and 2; the last level holds items.
  np.testing.assert_array_equal(table, [[1, -1, 2], [-1, 7, 8], [9, -1, -1]])


def test_paths_are_exactly_the_identifiers():
  rng = np.random.default_rng(0)
  for _ in range(20):
    n, levels, k = rng.integers(1, 60), rng.integers(1, 5), rng.integers(2, 6)
    codes = rng.integers(0, k, size=(n, levels))
    codes = np.unique(codes, axis=0)
    items = rng.permutation(1000)[: len(codes)]
    table = trie.build(codes, items, codebook_size=k)
    got = dict(trie.enumerate_items(table, levels))
    want = {tuple(c.tolist()): int(i) for c, i in zip(codes, items)}
    assert got == want
    assert table.shape[0] <= trie.max_nodes(levels, len(codes))


def test_catalog_and_batched_shapes_and_padding():
  codes = np.array([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]])
  cat = trie.build_catalog(codes, 2)
  assert cat.shape == (1, 1 + 2 + 4, 2)
  cands = np.array([[0, 2, 2, -1], [3, 1, 0, 2]])  # repeats and -1 are dropped
  batched = trie.build_batched(codes, cands, 2)
  assert batched.shape == (2, trie.max_nodes(3, 4), 2)
  assert sorted(i for _, i in trie.enumerate_items(batched[0], 3)) == [0, 2]
  assert sorted(i for _, i in trie.enumerate_items(batched[1], 3)) == [0, 1, 2, 3]
  assert np.all(batched[0, 5:] == -1)  # unused rows padded with -1


def test_colliding_identifiers_are_rejected():
  with pytest.raises(ValueError, match="share the identifier"):
    trie.build(np.array([[1, 2], [1, 2]]), np.array([4, 5]), codebook_size=3)
  with pytest.raises(ValueError, match="codes must lie"):
    trie.build(np.array([[1, 3]]), codebook_size=3)


def test_level_tokens_offsets():
  tok = trie.level_tokens({"M1": 10, "R1": 20}, ["M1", "R1"], 3, first_token=2)
  np.testing.assert_array_equal(tok.token_ids_LxK, [[10, 11, 12], [20, 21, 22]])
  assert tok.first_token == 2
  with pytest.raises(ValueError, match="S1"):
    trie.level_tokens({"M1": 10}, ["M1", "S1"], 3)
