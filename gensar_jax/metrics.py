"""Ranking metrics: HR@k and NDCG@k from ranked lists or from candidate scores.

With one relevant item per example, HR@k = 1[rank <= k] and NDCG@k =
1[rank <= k] / log2(rank + 1) (1-based rank). A ranked list with fewer than k distinct
results counts a missing target as a miss below rank k.

Every metric is a mean over rows and comes with its standard error over rows
(`<metric>_se`: sample standard deviation / sqrt(rows)). Two methods scored on the
same rows are compared with a paired t-test on the per-row gains (`paired_test`), as
the paper does (p < 0.05).

Scores must be finite or -inf (an impossible candidate): NaN and +inf are refused with
`errors.NonFiniteScores` (`check_scores`), since `others > NaN` is always false and would
rank a NaN model's target first. Callers add which model and split in `scoring(...)`.

On the ground floor: GenSAR's ranker, SASRec, the baselines and the report all use it.
"""

from __future__ import annotations

import contextlib

import numpy as np

from gensar_jax import errors

KS = (1, 5, 10)  # HR cut-offs reported.
NDCG_KS = (5, 10)  # NDCG cut-offs reported.
METRIC_KEYS = tuple(f"hr@{k}" for k in KS) + tuple(f"ndcg@{k}" for k in NDCG_KS)
# The two ranking protocols (their keys in metrics.json) and the words for them.
PROTOCOLS = ("sampled", "full")
PROTOCOL_WORDS = {"sampled": "100 candidates", "full": "whole catalog"}


def check_scores(scores: np.ndarray) -> None:
  """Raises NonFiniteScores when any score is NaN or +inf (-inf marks an impossible one)."""
  scores = np.asarray(scores)
  bad = np.isnan(scores) | np.isposinf(scores)
  if bad.any():
    raise errors.NonFiniteScores(
        f"{int(bad.sum())} of {scores.size} scores are NaN or +inf (a diverged or damaged "
        "model); refusing to rank them")


@contextlib.contextmanager
def scoring(what: str):
  """Prefixes a NonFiniteScores raised inside with `what` (the model and the split)."""
  try:
    yield
  except errors.NonFiniteScores as e:
    raise errors.NonFiniteScores(f"{what}: {e}") from None


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

  Raises NonFiniteScores on NaN or +inf scores.

  Args:
    scores_BxC: a score per candidate, higher is better.
    positive: column of the relevant candidate.
    seed: seed of the tie-breaking draw (fixed, so results are reproducible).
  """
  scores_BxC = np.asarray(scores_BxC, dtype=np.float64)
  check_scores(scores_BxC)
  pos_B = scores_BxC[:, positive]
  others = np.delete(scores_BxC, positive, axis=1)
  greater_B = (others > pos_B[:, None]).sum(axis=1)
  ties_B = (others == pos_B[:, None]).sum(axis=1)
  u_B = np.random.default_rng(seed).random(len(pos_B))
  return (greater_B + np.floor(u_B * (ties_B + 1)) + 1).astype(np.float64)


def gains(rank_B: np.ndarray, key: str) -> np.ndarray:
  """Per-row value of one metric ("hr@k" or "ndcg@k") from 1-based ranks."""
  rank_B = np.asarray(rank_B, dtype=np.float64)
  name, k = key.split("@")
  hit_B = rank_B <= int(k)
  if name == "hr":
    return hit_B.astype(np.float64)
  if name == "ndcg":
    return np.where(hit_B, 1.0 / np.log2(np.minimum(rank_B, 1e9) + 1.0), 0.0)
  raise ValueError(f"unknown metric {key!r}")


def metrics_from_ranks(rank_B: np.ndarray) -> dict[str, float]:
  """HR@{1,5,10} and NDCG@{5,10} averaged over examples, their standard errors
  (`<key>_se`, 0 for fewer than two rows), plus `count`."""
  rank_B = np.asarray(rank_B, dtype=np.float64)
  n = len(rank_B)
  out: dict[str, float] = {}
  for key in METRIC_KEYS:
    g = gains(rank_B, key)
    out[key] = float(np.mean(g)) if n else 0.0
    out[f"{key}_se"] = float(np.std(g, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
  out["count"] = int(n)
  return out


def paired_test(rank_a_B: np.ndarray, rank_b_B: np.ndarray, key: str = "ndcg@10") -> dict:
  """Paired t-test of one metric between two methods ranked on the same rows.

  Returns:
    {"metric", "mean_diff" (a - b), "se_diff", "t", "p" (two-sided), "count"}.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top

  a, b = gains(rank_a_B, key), gains(rank_b_B, key)
  if a.shape != b.shape:
    raise ValueError(f"paired test needs the same rows: {a.shape} vs {b.shape}")
  d = a - b
  n = len(d)
  se = float(np.std(d, ddof=1) / np.sqrt(n)) if n > 1 else 0.0
  if n > 1 and se > 0:
    res = stats.ttest_rel(a, b)
    t, p = float(res.statistic), float(res.pvalue)
  else:
    t, p = 0.0, 1.0
  return {"metric": key, "mean_diff": float(d.mean()) if n else 0.0, "se_diff": se,
          "t": t, "p": p, "count": int(n)}


def ranks_of_targets(scores_BxN: np.ndarray, target_B: np.ndarray, seed: int = 0) -> np.ndarray:
  """1-based rank of each row's target column among all N columns (random tie-breaking).

  Raises NonFiniteScores on NaN or +inf scores.

  Args:
    scores_BxN: a score per item, higher is better.
    target_B: the relevant column of each row.
    seed: seed of the tie-breaking draw.
  """
  scores_BxN = np.asarray(scores_BxN, dtype=np.float64)
  check_scores(scores_BxN)
  target_B = np.asarray(target_B, dtype=np.int64)
  pos_B = scores_BxN[np.arange(len(target_B)), target_B]
  greater_B = (scores_BxN > pos_B[:, None]).sum(axis=1)
  ties_B = (scores_BxN == pos_B[:, None]).sum(axis=1) - 1
  u_B = np.random.default_rng(seed).random(len(pos_B))
  return (greater_B + np.floor(u_B * (ties_B + 1)) + 1).astype(np.float64)
