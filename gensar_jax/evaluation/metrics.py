"""Ranking metrics: HR@k and NDCG@k from ranked lists or from candidate scores.

With one relevant item per example, HR@k = 1[rank <= k] and NDCG@k =
1[rank <= k] / log2(rank + 1) (1-based rank). A ranked list with fewer than k distinct
results counts a missing target as a miss below rank k.
"""

from __future__ import annotations

import numpy as np

KS = (1, 5, 10)  # HR cut-offs reported.
NDCG_KS = (5, 10)  # NDCG cut-offs reported.
METRIC_KEYS = tuple(f"hr@{k}" for k in KS) + tuple(f"ndcg@{k}" for k in NDCG_KS)


def ranks_from_lists(ranked_BxR: np.ndarray, target_B: np.ndarray) -> np.ndarray:
  """1-based rank of each target in its ranked list (np.inf when absent).

  Args:
    ranked_BxR: item indices, best first; -1 marks an empty slot.
    target_B: the relevant item of each example.
  """
  ranked_BxR = np.asarray(ranked_BxR)
  hit_BxR = (ranked_BxR == np.asarray(target_B)[:, None]) & (ranked_BxR >= 0)
  first = np.argmax(hit_BxR, axis=1).astype(np.float64) + 1.0
  return np.where(hit_BxR.any(axis=1), first, np.inf)


def ranks_from_scores(scores_BxC: np.ndarray, positive: int = 0, seed: int = 0) -> np.ndarray:
  """1-based rank of candidate `positive` by score, ties broken uniformly at random.

  Args:
    scores_BxC: a score per candidate, higher is better.
    positive: column of the relevant candidate.
    seed: seed of the tie-breaking draw (fixed, so results are reproducible).
  """
  scores_BxC = np.asarray(scores_BxC, dtype=np.float64)
  pos_B = scores_BxC[:, positive]
  others = np.delete(scores_BxC, positive, axis=1)
  greater_B = (others > pos_B[:, None]).sum(axis=1)
  ties_B = (others == pos_B[:, None]).sum(axis=1)
  u_B = np.random.default_rng(seed).random(len(pos_B))
  return (greater_B + np.floor(u_B * (ties_B + 1)) + 1).astype(np.float64)


def metrics_from_ranks(rank_B: np.ndarray) -> dict[str, float]:
  """HR@{1,5,10} and NDCG@{5,10} averaged over examples, plus `count`."""
  rank_B = np.asarray(rank_B, dtype=np.float64)
  out: dict[str, float] = {}
  for k in KS:
    out[f"hr@{k}"] = float(np.mean(rank_B <= k)) if len(rank_B) else 0.0
  for k in NDCG_KS:
    gain = np.where(rank_B <= k, 1.0 / np.log2(np.minimum(rank_B, 1e9) + 1.0), 0.0)
    out[f"ndcg@{k}"] = float(np.mean(gain)) if len(rank_B) else 0.0
  out["count"] = int(len(rank_B))
  return out


def ranks_of_targets(scores_BxN: np.ndarray, target_B: np.ndarray, seed: int = 0) -> np.ndarray:
  """1-based rank of each row's target column among all N columns (random tie-breaking).

  Args:
    scores_BxN: a score per item, higher is better.
    target_B: the relevant column of each row.
    seed: seed of the tie-breaking draw.
  """
  scores_BxN = np.asarray(scores_BxN, dtype=np.float64)
  target_B = np.asarray(target_B, dtype=np.int64)
  pos_B = scores_BxN[np.arange(len(target_B)), target_B]
  greater_B = (scores_BxN > pos_B[:, None]).sum(axis=1)
  ties_B = (scores_BxN == pos_B[:, None]).sum(axis=1) - 1
  u_B = np.random.default_rng(seed).random(len(pos_B))
  return (greater_B + np.floor(u_B * (ties_B + 1)) + 1).astype(np.float64)
