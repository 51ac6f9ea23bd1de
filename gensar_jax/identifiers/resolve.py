"""Collision rates and the deterministic collision resolution of identifiers.

Resolution rule (changes only the LAST code of an identifier):
  1. Items are grouped by their full identifier. In each group of two or more, the
     item whose last-level residual is closest to its assigned last code stays (ties:
     lowest item index); the others must move.
  2. Groups are handled in lexicographic order of their identifier, movers within a
     group by (distance to their own code, item index). Each mover takes the free last
     code nearest to its last-level residual (ties: lowest code), where "free" means no
     item with the same prefix (all codes but the last) uses it, counting earlier moves.
  3. If a prefix already uses all K last codes there is nowhere to go: `resolve` raises
     `PrefixFullError` (more than K items under one prefix; enlarge K or add a level).
"""

from __future__ import annotations

import numpy as np


class PrefixFullError(ValueError):
  """More items share an identifier prefix than the last level has codes."""


def collision_rate(codes_NxL: np.ndarray) -> float:
  """`1 - #unique identifiers / #items`."""
  codes_NxL = np.asarray(codes_NxL)
  if len(codes_NxL) == 0:
    return 0.0
  return float(1.0 - len(np.unique(codes_NxL, axis=0)) / len(codes_NxL))


def largest_prefix_group(codes_NxL: np.ndarray) -> int:
  """Most items sharing one prefix (all codes but the last); resolution needs it <= K."""
  codes_NxL = np.asarray(codes_NxL)
  if len(codes_NxL) == 0:
    return 0
  _, counts = np.unique(codes_NxL[:, :-1], axis=0, return_counts=True)
  return int(counts.max())


def resolve(
    codes_NxL: np.ndarray, residual_NxD: np.ndarray, codebook_KxD: np.ndarray
) -> tuple[np.ndarray, int]:
  """Makes every identifier unique by changing last codes (rule in the module doc).

  Args:
    codes_NxL: identifiers, one row per item.
    residual_NxD: each item's residual at the input of the last level.
    codebook_KxD: the last level's codebook (K codes).

  Returns:
    (resolved codes_NxL int32, number of items whose last code changed).

  Raises:
    PrefixFullError: when a prefix holds more than K items.
  """
  codes_NxL = np.array(codes_NxL, dtype=np.int32, copy=True)
  n, num_levels = codes_NxL.shape
  k = codebook_KxD.shape[0]
  if n == 0:
    return codes_NxL, 0
  ids_U, inverse_N, counts_U = np.unique(
      codes_NxL, axis=0, return_inverse=True, return_counts=True
  )
  inverse_N = inverse_N.reshape(-1)
  colliding_N = counts_U[inverse_N] > 1
  if not colliding_N.any():
    return codes_NxL, 0

  residual = np.asarray(residual_NxD, np.float64)
  codebook = np.asarray(codebook_KxD, np.float64)
  own_d_N = np.sum((residual - codebook[codes_NxL[:, -1]]) ** 2, axis=-1)

  prefix_of = lambda row: tuple(int(c) for c in row[:-1])
  used: dict[tuple[int, ...], set[int]] = {}
  for row in ids_U:  # Last codes in use under each prefix (unique ids suffice).
    used.setdefault(prefix_of(row), set()).add(int(row[-1]))

  # Unique ids come sorted lexicographically, so group order is the identifier order.
  colliding_items = np.nonzero(colliding_N)[0]
  order = np.lexsort((colliding_items, own_d_N[colliding_items], inverse_N[colliding_items]))
  members = colliding_items[order]
  groups = inverse_N[members]
  starts = np.r_[True, groups[1:] != groups[:-1]]
  movers = members[~starts]  # The first of each group (closest, then lowest index) stays.

  for item in movers:
    prefix = prefix_of(codes_NxL[item])
    taken = used[prefix]
    if len(taken) >= k:
      raise PrefixFullError(
          f"identifier prefix {prefix} holds more than K={k} items, so its last level "
          "cannot make them unique; use a larger codebook_size or more levels"
      )
    d_K = np.sum((codebook - residual[item]) ** 2, axis=-1)
    for code in np.argsort(d_K, kind="stable"):
      if int(code) not in taken:
        break
    codes_NxL[item, num_levels - 1] = int(code)
    taken.add(int(code))
  return codes_NxL, int(len(movers))
