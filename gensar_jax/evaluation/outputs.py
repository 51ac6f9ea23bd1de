"""The eval stage's outputs: `metrics.json` and `ranks.npz`, their writer and readers.

`metrics.json`:
  {"recommendation": {"sampled": {hr@1, ..., ndcg@10, <metric>_se..., count},
                      "full": {...}, "sampled_beam": {...}, "sampled_exact": {...},
                      "agreement": {top10_equal, top1_equal, same_rank}},
   "search": {...},
   "baselines": {name: {task: {"sampled": ..., "full": ...}}},  (names: BASELINE_TITLES)
   "tests": {task: {mode: {"versus", "metric", "mean_diff", "se_diff", "t", "p", "count"}}},
   "tests_by_baseline": {task: {mode: {baseline: {"metric", "mean_diff", ...}}}},
   "settings": {checkpoint_step, beam_size, score, rank, exact_catalog},
   "checkpoint_step": N}
`ranks.npz`: every method's per-row target ranks, `<method>/<task>/<mode>`, from which
any table or test can be recomputed.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from gensar_jax import atomic

STAGE = "eval"  # The stage's directory under a workdir (readers of other runs' results).
METRICS_FILE = "metrics.json"
RANKS_FILE = "ranks.npz"

# Every baseline's key in metrics.json and ranks.npz, with its display name, in report
# order ("{window}" becomes data.max_rec_his_len); `evaluation.baselines.REGISTRY` scores
# one entry per key.
BASELINE_TITLES: dict[str, str] = {
    "popularity": "Popularity",
    "cooccurrence": "Co-occurrence (last item → next)",
    "cooccurrence_last3": "Co-occurrence (last 3 items)",
    "id_prefix": "Identifier prefix (last 3 items)",
    "sasrec": "SASRec",
    "sasrec_last{window}": "SASRec (last {window} items)",
    "sasrec_bce": "SASRec (BCE, one negative)",
    "bm25": "BM25",
    "dense": "Dense (text encoder)",
}


def baseline_title(key: str) -> str:
  """Display name of a baseline key ("sasrec_last5" -> "SASRec (last 5 items)"; an unknown
  key is its own name)."""
  for name, title in BASELINE_TITLES.items():
    head, templated, tail = name.partition("{window}")
    if key == name:
      return title
    middle = key[len(head):len(key) - len(tail)]
    if (templated and key.startswith(head) and key.endswith(tail)
        and len(key) > len(head) + len(tail) and middle.isdigit()):
      return title.format(window=middle)
  return key


def save(eval_dir, metrics: dict, ranks: dict[str, np.ndarray]) -> pathlib.Path:
  """Writes `metrics.json` and `ranks.npz`; returns the path of `metrics.json`."""
  eval_dir = pathlib.Path(eval_dir)
  atomic.write_json_atomic(eval_dir / METRICS_FILE, metrics)
  np.savez_compressed(eval_dir / RANKS_FILE, **ranks)
  return eval_dir / METRICS_FILE


def read_metrics(eval_dir) -> dict | None:
  """The `metrics.json` in an eval stage directory, or None when there is none."""
  path = pathlib.Path(eval_dir) / METRICS_FILE
  return json.loads(path.read_text()) if path.exists() else None


def run_metrics(workdir) -> dict | None:
  """A run's `metrics.json` (`<workdir>/eval/`), or None when it has not been evaluated."""
  return read_metrics(pathlib.Path(workdir) / STAGE)


def read_ranks(eval_dir) -> dict[str, np.ndarray]:
  """Every method's per-row ranks from `ranks.npz`, by `<method>/<task>/<mode>`."""
  with np.load(pathlib.Path(eval_dir) / RANKS_FILE, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}
