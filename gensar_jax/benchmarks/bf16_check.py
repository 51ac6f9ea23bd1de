"""bf16 against float32 compute on CPU: the demo trained twice, losses and rankings compared.

  python -m gensar_jax.benchmarks.bf16_check --workdir=DIR [--steps=200] [--json=PATH]

Runs the demo's upstream stages once (`DIR/base`: data, embed, identifiers, doc2query),
then trains and evaluates the demo model twice on them (`--config.reuse_from`), the same
seed and schedule (`train.steps`, default 200, loss logged every 10 steps), with
`model.dtype` float32 (`DIR/float32`) and bfloat16 (`DIR/bfloat16`); eval ranks the 100
candidates of all 600 test rows per task exactly (full scoring), no whole-catalog pass.
Parameters, optimizer state and the loss are float32 in both (model/t5.py, trainer/step.py).

Reports, and writes as JSON (`DIR/bf16_check.json` unless `--json`):
  * the logged training losses side by side, with the largest absolute and relative
    difference and whether every logged loss is within `--loss_rtol` (default 2%);
  * validation NDCG@10 per task (the last 500 validation rows, at the final step) with
    each run's standard error: agree when the difference is within their combined
    standard error (sqrt(se_a^2 + se_b^2));
  * test NDCG@10 per task and the paired t-test of the two runs on the same rows
    (agree when p >= 0.05).
The stages are skipped when already done, so a second call only recompares.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
import time

from absl import app
from absl import flags

from gensar_jax import atomic
from gensar_jax import metrics as metrics_lib
from gensar_jax import task_kinds
from gensar_jax.evaluation import outputs as eval_outputs
from gensar_jax.trainer import logging_utils

def define_flags() -> None:
  """The command's flags (defined only when run as a command: other modules that the
  test suite imports in the same process define --workdir, --steps and --json too)."""
  flags.DEFINE_string("workdir", None, "Folder of the three runs.", required=True)
  flags.DEFINE_integer("steps", 200, "Optimizer steps of each training (batch 64).")
  flags.DEFINE_float("loss_rtol", 0.02, "Tolerance on each logged loss, relative.")
  flags.DEFINE_string("json", "", "Where the comparison goes (default DIR/bf16_check.json).")
  flags.DEFINE_string("config", "configs/demo.py", "Config file of the runs.")
  flags.DEFINE_multi_string("override", [], "Extra --config.x=y for every run (tests).")


REPO = pathlib.Path(__file__).resolve().parents[2]
DTYPES = ("float32", "bfloat16")
TASKS = task_kinds.TASKS  # The one copy (re-exported for readers of this module).
UPSTREAM = "data,embed,identifiers,doc2query"


def _gensar(workdir: pathlib.Path, config: str, extra: list[str]) -> float:
  """Runs `python -m gensar_jax.main`; returns its wall seconds (raises on failure)."""
  start = time.time()
  subprocess.run([sys.executable, "-m", "gensar_jax.main", f"--config={config}",
                  f"--workdir={workdir}", *extra], cwd=REPO, check=True)
  return round(time.time() - start, 1)


def losses(run: pathlib.Path) -> dict[int, float]:
  """Logged training loss by step (means over each logging window)."""
  return {r["step"]: r["loss"] for r in logging_utils.read_history(run / "train")
          if r["kind"] == "train"}


def last_validation(run: pathlib.Path) -> dict:
  records = [r for r in logging_utils.read_history(run / "train") if r["kind"] == "validation"]
  return records[-1] if records else {}


def compare(root: pathlib.Path, loss_rtol: float) -> dict:
  """The comparison of `root/float32` and `root/bfloat16` (see the module docstring)."""
  a, b = root / DTYPES[0], root / DTYPES[1]
  la, lb = losses(a), losses(b)
  steps = sorted(set(la) & set(lb))
  rows = [{"step": s, "float32": la[s], "bfloat16": lb[s], "diff": lb[s] - la[s],
           "rel": abs(lb[s] - la[s]) / abs(la[s])} for s in steps]
  out = {"loss": {
      "steps": rows,
      "max_abs_diff": max((r["diff"] for r in rows), key=abs, default=None),
      "max_rel_diff": max((r["rel"] for r in rows), default=None),
      "rtol": loss_rtol,
      "within_rtol": bool(rows) and all(r["rel"] <= loss_rtol for r in rows),
  }}
  va, vb = last_validation(a), last_validation(b)
  ma, mb = eval_outputs.run_metrics(a), eval_outputs.run_metrics(b)
  ranks_a, ranks_b = (eval_outputs.read_ranks(run / eval_outputs.STAGE) for run in (a, b))
  for task in TASKS:
    key = f"{task}/ndcg@10"
    val = None
    if key in va and key in vb:
      se = math.hypot(va[key + "_se"], vb[key + "_se"])
      val = {"float32": va[key], "float32_se": va[key + "_se"], "bfloat16": vb[key],
             "bfloat16_se": vb[key + "_se"], "diff": vb[key] - va[key], "combined_se": se,
             "within_se": abs(vb[key] - va[key]) <= se, "step": va.get("step")}
    test = metrics_lib.paired_test(ranks_b[f"gensar/{task}/sampled"],
                                   ranks_a[f"gensar/{task}/sampled"], "ndcg@10")
    ta, tb = ma[task]["sampled"], mb[task]["sampled"]
    out[task] = {"validation_ndcg@10": val, "test_ndcg@10": {
        "float32": ta["ndcg@10"], "float32_se": ta["ndcg@10_se"], "bfloat16": tb["ndcg@10"],
        "bfloat16_se": tb["ndcg@10_se"], "paired_diff": test["mean_diff"],
        "paired_se": test["se_diff"], "p": test["p"], "rows": test["count"],
        "agree": test["p"] >= 0.05}}
  return out


def main(argv):
  del argv
  root = pathlib.Path(flags.FLAGS.workdir).resolve()
  extra = list(flags.FLAGS.override)
  seconds = {"base": _gensar(root / "base", flags.FLAGS.config,
                             [f"--config.stages={UPSTREAM}", *extra])}
  for dtype in DTYPES:
    seconds[dtype] = _gensar(root / dtype, flags.FLAGS.config, [
        f"--config.reuse_from={root / 'base'}", f"--config.stages={UPSTREAM},train,eval",
        f"--config.model.dtype={dtype}", f"--config.train.steps={flags.FLAGS.steps}",
        "--config.train.log_every_steps=10", "--config.eval.full_catalog=False",
        "--config.eval.compare=False", *extra])
  result = compare(root, flags.FLAGS.loss_rtol)
  for dtype in DTYPES:
    summary = json.loads((root / dtype / "train" / "summary.json").read_text())
    result.setdefault("train", {})[dtype] = {
        k: summary.get(k) for k in ("steps", "minutes", "examples_per_s", "loss_end")}
  result.update(seconds=seconds, steps=flags.FLAGS.steps, config=flags.FLAGS.config, overrides=extra)
  path = pathlib.Path(flags.FLAGS.json) if flags.FLAGS.json else root / "bf16_check.json"
  atomic.write_json_atomic(path, result)
  loss = result["loss"]
  print(f"losses over {len(loss['steps'])} logged windows: largest difference "
        f"{loss['max_abs_diff']:+.4f} ({loss['max_rel_diff']:.2%}); within "
        f"{loss['rtol']:.0%}: {loss['within_rtol']}")
  for task in TASKS:
    v, t = result[task]["validation_ndcg@10"], result[task]["test_ndcg@10"]
    if v:
      print(f"{task} validation NDCG@10: float32 {v['float32']:.4f} ± {v['float32_se']:.4f}, "
            f"bfloat16 {v['bfloat16']:.4f} ± {v['bfloat16_se']:.4f}; within one combined "
            f"s.e.: {v['within_se']}")
    print(f"{task} test NDCG@10: float32 {t['float32']:.4f} ± {t['float32_se']:.4f}, bfloat16 "
          f"{t['bfloat16']:.4f} ± {t['bfloat16_se']:.4f}; paired {t['paired_diff']:+.4f} ± "
          f"{t['paired_se']:.4f}, p = {t['p']:.2g}")
  print(f"wrote {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
