"""The recommendation baselines on a workdir's test rows, without a trained GenSAR.

Scores every recommendation baseline of `gensar_jax.evaluation.baselines.REGISTRY`
(popularity, co-occurrence, identifier prefix, SASRec softmax / at GenSAR's window / BCE)
with the eval stage's own scorers, seed and rows, on the 100 stored candidates and the
whole catalog, and writes their metrics (± standard error over rows), a paired t-test on
NDCG@10 for every pair, and two diagnostics to a JSON file. Reads the workdir's data,
embed and identifiers stages; writes nothing there.

  python -m launch.baselines_only \
      --config=configs/amazon.py:category=Office_Products,preset=cpu \
      --workdir=/work/runs/bce_scratch --out=launch/study/office/zero_training_baselines.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

from gensar_jax import metrics as metrics_lib
from gensar_jax import ranking
from gensar_jax import config_files
from gensar_jax.data import dataset
from gensar_jax.embed import sasrec
from gensar_jax.evaluation import baselines
from gensar_jax.identifiers import table as id_table

TASK = "recommendation"


def _git_commit() -> str:
  """HEAD's commit, with "+dirty" when the working tree differs from it."""
  def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout
  head = git("rev-parse", "--short", "HEAD").strip()
  return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def _host() -> str:
  """The CPU model and core count (from /proc/cpuinfo where there is one)."""
  model = platform.processor() or platform.machine()
  info = pathlib.Path("/proc/cpuinfo")
  if info.exists():
    names = [l.split(":", 1)[1].strip() for l in info.read_text().splitlines()
             if l.startswith("model name")]
    model = names[0] if names else model
  return f"{model}, {os.cpu_count()} cores"


def diagnostics(b: baselines.Inputs, rows) -> dict:
  """How often the positive / a negative shares the last history item's first
  collaborative code, and how often the target is in the history at all."""
  histories, fallbacks = sasrec.row_histories(b.catalog, rows, b.earlier_rows)
  last_R = baselines.recent_items(histories, 1)[:, 0]
  has_R = last_R >= 0
  codes_NxL = id_table.load(b.identifiers_dir).for_task(TASK).codes
  cands_RxC = ranking.candidates_of(rows)[has_R]
  same_RxC = codes_NxL[cands_RxC, 0] == codes_NxL[last_R[has_R], 0][:, None]
  repeat = [int(t) in set(h.tolist()) for h, t in zip(histories, rows["item"])]
  return {
      "rows_with_history": int(has_R.sum()),
      "history_fallbacks": int(fallbacks),
      "positive_shares_first_code_with_last_item": float(same_RxC[:, 0].mean()),
      "negative_shares_first_code_with_last_item": float(same_RxC[:, 1:].mean()),
      "target_in_history": float(np.mean(repeat)),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="config spec, as gensar's --config")
  parser.add_argument("--workdir", required=True, help="a workdir with data, embed, identifiers")
  parser.add_argument("--out", required=True, help="JSON file to write")
  parser.add_argument("--max_rows", type=int, default=0, help="first N test rows (0 = all)")
  args = parser.parse_args(argv)
  config = config_files.load(args.config)
  work = pathlib.Path(args.workdir)
  catalog = dataset.load_catalog(work / "data")
  b = baselines.Inputs(config, catalog, work / "data", work / "embed", work / "identifiers")
  rows = dataset.load_rows(work / "data", TASK, "test")
  if args.max_rows:
    rows = {k: v[:args.max_rows] for k, v in rows.items()}
  modes = ("sampled", "full")
  entries = [e for e in baselines.REGISTRY if TASK in e.tasks]
  ranks, seconds = {}, {}
  for entry in entries:
    t0 = time.time()
    got = baselines.evaluate(b, [entry], {TASK: rows}, modes, int(config.seed))
    for name, per_task in got.items():
      ranks[name] = per_task[TASK]
      seconds[name] = round(time.time() - t0, 1)
      print(f"{name}: " + ", ".join(
          f"{m} {metrics_lib.metrics_from_ranks(r)['ndcg@10']:.4f}" for m, r in ranks[name].items()),
            flush=True)
  results = {name: {m: metrics_lib.metrics_from_ranks(r) for m, r in per_mode.items()}
             for name, per_mode in ranks.items()}
  tests = {m: {f"{a} - {c}": metrics_lib.paired_test(ranks[a][m], ranks[c][m], "ndcg@10")
               for a, c in itertools.combinations(ranks, 2)} for m in modes}
  done = {s: (work / s / ".done").read_text().strip() for s in ("data", "embed", "identifiers")
          if (work / s / ".done").exists()}
  out = {
      "what": "recommendation baselines without any trained GenSAR, test split; the eval "
              "stage's scorers (gensar_jax/evaluation/baselines.py), seed and tie-breaking",
      "date": datetime.datetime.now().isoformat(timespec="minutes"),
      "command": "python -m launch.baselines_only " + " ".join(
          sys.argv[1:] if argv is None else argv),
      "code": _git_commit(),
      "host": _host(),
      "workdir": str(work), "stage_fingerprints": done, "rows": int(len(rows["item"])),
      "ndcg@10": {name: {m: f"{r[m]['ndcg@10']:.4f} ± {r[m]['ndcg@10_se']:.4f}" for m in modes}
                  for name, r in results.items()},
      "metrics": results,
      "paired_tests_ndcg@10": tests,
      "diagnostics": diagnostics(b, rows),
      "seconds": seconds,
  }
  path = pathlib.Path(args.out)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(out, indent=2) + "\n")
  print(f"written to {path}")


if __name__ == "__main__":
  main()
