"""Trie transition tables for constrained decoding, built once on the host (numpy).

An identifier is `L` codes, one per level, each in `[0, K)`. A trie over a set of
identifiers numbers every proper prefix (a node; the empty prefix is node 0) and stores
a dense `next_MxK` table: `next_MxK[node, c]` is the node reached by appending code `c`,
or -1 when no identifier continues that way. At the last level the entry is the item
index of the identifier that ends there instead of a node, so a finished beam's "node"
is its item. The table is level-aware: a node at depth `l` only ever indexes level
`l`'s K codes, whose token ids are `level_offsets[level_name] + c` (`LevelTokens`).

Two kinds of constraint set: the whole catalog (one table, shaped `[1, M, K]`, shared by
every example) and one candidate list per example (the 100-candidate protocol), padded
to a common node count and stacked as `[B, M, K]`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class LevelTokens:
  """Which token ids each decoding step may produce.

  Attributes:
    token_ids_LxK: token id of code `c` at level `l`.
    first_token: the forced first token (a behaviour token), or None.
  """

  token_ids_LxK: np.ndarray
  first_token: int | None

  @property
  def num_levels(self) -> int:
    return self.token_ids_LxK.shape[0]

  @property
  def codebook_size(self) -> int:
    return self.token_ids_LxK.shape[1]


def level_tokens(
    level_offsets: Mapping[str, int],
    level_names: Sequence[str],
    codebook_size: int,
    first_token: int | None = None,
) -> LevelTokens:
  """Token ids of every level's codes (code c of level n is `level_offsets[n] + c`).

  Args:
    level_offsets: the tokenizer's first token id of each level's codes.
    level_names: the identifier's level names in order, e.g. ("M1", "M2", "R1", "R2").
    codebook_size: K.
    first_token: token id of the forced behaviour token, or None.
  """
  missing = [n for n in level_names if n not in level_offsets]
  if missing:
    raise ValueError(f"the tokenizer has no tokens for identifier levels {missing}")
  ids = np.stack([level_offsets[n] + np.arange(codebook_size) for n in level_names])
  return LevelTokens(ids.astype(np.int32), None if first_token is None else int(first_token))


def max_nodes(num_levels: int, num_identifiers: int) -> int:
  """An upper bound on the node count of a trie over `num_identifiers` identifiers."""
  return 1 + max(num_levels - 1, 0) * num_identifiers


def build(
    codes_NxL: np.ndarray,
    items_N: np.ndarray | None = None,
    codebook_size: int | None = None,
    num_nodes: int | None = None,
) -> np.ndarray:
  """Builds the `[M, K]` transition table of one set of identifiers.

  Args:
    codes_NxL: each identifier's codes.
    items_N: the item index each identifier stands for (default: 0..N-1). Repeated
      items are kept once.
    codebook_size: K (default: the largest code + 1).
    num_nodes: pad the table with -1 rows to this many nodes (a fixed shape lets one
      compiled search serve every batch); must be at least the node count.

  Returns:
    `next_MxK` int32: the child node of each (node, code), the item index at the last
    level, -1 where not allowed.

  Raises:
    ValueError: two different items share an identifier, or codes are out of range.
  """
  codes_NxL = np.asarray(codes_NxL, dtype=np.int64)
  if codes_NxL.ndim != 2 or codes_NxL.shape[1] < 1:
    raise ValueError(f"codes must be [N, L] with L >= 1, got shape {codes_NxL.shape}")
  n, num_levels = codes_NxL.shape
  items_N = np.arange(n) if items_N is None else np.asarray(items_N, dtype=np.int64)
  if items_N.shape != (n,):
    raise ValueError(f"{len(items_N)} items for {n} identifiers")
  if n:
    items_N, first = np.unique(items_N, return_index=True)
    codes_NxL = codes_NxL[first]
    n = len(items_N)
  k = int(codes_NxL.max()) + 1 if codebook_size is None and n else int(codebook_size or 1)
  if n and (codes_NxL.min() < 0 or codes_NxL.max() >= k):
    raise ValueError(f"codes must lie in [0, {k}), got [{codes_NxL.min()}, {codes_NxL.max()}]")
  if n and np.any(items_N < 0):
    raise ValueError("item indices must be non-negative")

  # node_of[l][i]: node id of identifier i's prefix of length l (depth l < L).
  node_of = [np.zeros(n, dtype=np.int64)]
  count = 1
  for depth in range(1, num_levels):
    _, inverse = np.unique(codes_NxL[:, :depth], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    node_of.append(count + inverse)
    count += int(inverse.max()) + 1 if n else 0
  if num_nodes is not None and num_nodes < count:
    raise ValueError(f"the trie has {count} nodes, more than num_nodes={num_nodes}")
  table = np.full((num_nodes or count, k), -1, dtype=np.int32)
  for depth in range(num_levels):
    child = node_of[depth + 1] if depth + 1 < num_levels else items_N
    table[node_of[depth], codes_NxL[:, depth]] = child
  if n:
    leaves = table[node_of[-1], codes_NxL[:, -1]]
    if np.any(leaves != items_N):
      clash = int(np.flatnonzero(leaves != items_N)[0])
      raise ValueError(
          f"items {int(items_N[clash])} and {int(leaves[clash])} share the identifier "
          f"{codes_NxL[clash].tolist()}; identifiers must be unique"
      )
  return table


def build_catalog(codes_NxL: np.ndarray, codebook_size: int) -> np.ndarray:
  """The whole catalog's table, shaped `[1, M, K]` (shared by every example)."""
  return build(codes_NxL, None, codebook_size)[None]


def build_batched(
    codes_NxL: np.ndarray,
    candidates_BxC: np.ndarray,
    codebook_size: int,
    num_nodes: int | None = None,
) -> np.ndarray:
  """One table per example over its candidate items, stacked as `[B, M, K]`.

  Args:
    codes_NxL: the catalog's identifiers (item index order).
    candidates_BxC: each example's candidate item indices; -1 entries are ignored and
      repeats kept once.
    codebook_size: K.
    num_nodes: M (default: `max_nodes(L, C)`, enough for any C candidates).
  """
  codes_NxL = np.asarray(codes_NxL)
  candidates_BxC = np.asarray(candidates_BxC, dtype=np.int64)
  num_nodes = num_nodes or max_nodes(codes_NxL.shape[1], candidates_BxC.shape[1])
  tables = []
  for cands in candidates_BxC:
    cands = cands[cands >= 0]
    tables.append(build(codes_NxL[cands], cands, codebook_size, num_nodes))
  return np.stack(tables) if tables else np.full((0, num_nodes, codebook_size), -1, np.int32)


def enumerate_items(table_MxK: np.ndarray, num_levels: int) -> list[tuple[tuple[int, ...], int]]:
  """Every (codes, item) path of a table, in code order (for tests and debugging)."""
  out = []

  def walk(node: int, depth: int, prefix: tuple[int, ...]) -> None:
    for code in np.flatnonzero(table_MxK[node] >= 0):
      child = int(table_MxK[node, code])
      if depth + 1 == num_levels:
        out.append((prefix + (int(code),), child))
      else:
        walk(child, depth + 1, prefix + (int(code),))

  walk(0, 0, ())
  return out
