"""The validation curve of a training run, as JSON and PNG (the recipe-study harness).

`write` turns the run's `metrics.jsonl` into `curve.json` (every validation point with
its step, epoch, wall-clock minutes and per-task NDCG@5/10 with standard errors; the
training loss per logging step; the run's summary) and `curve.png` (validation NDCG@10
per task against minutes, the loss beside it), so recipe variants trained with the same
`train.max_minutes` can be compared at equal compute.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence

from gensar_jax import task_kinds

CURVE_JSON = "curve.json"
CURVE_PNG = "curve.png"
TASKS = task_kinds.TASKS  # The one copy (re-exported for readers of this module).


def points(history: Sequence[Mapping]) -> dict:
  """{"validation": [...], "train": [{step, loss, examples_per_s}]} from log records."""
  val = [{k: v for k, v in r.items() if k != "kind"} for r in history
         if r.get("kind") == "validation"]
  train = [{"step": r["step"], "loss": r["loss"], "examples_per_s": r.get("examples_per_s")}
           for r in history if r.get("kind") == "train" and "loss" in r]
  return {"validation": val, "train": train}


def write(directory: pathlib.Path, history: Sequence[Mapping], summary: Mapping) -> None:
  """Writes `curve.json` and (when there is a validation point) `curve.png`."""
  directory = pathlib.Path(directory)
  data = {**points(history), "summary": dict(summary)}
  (directory / CURVE_JSON).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
  if data["validation"]:
    plot(data, directory / CURVE_PNG)


def plot(data: Mapping, path: pathlib.Path) -> None:
  """Validation NDCG@10 (±1 s.e.) per task against minutes; training loss beside it."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.8))
  val = data["validation"]
  for task, color in zip(TASKS, ("tab:red", "tab:blue")):
    pts = [(r.get("minutes", float("nan")), r[f"{task}/ndcg@10"], r.get(f"{task}/ndcg@10_se", 0))
           for r in val if f"{task}/ndcg@10" in r]
    if pts:
      x, y, e = zip(*pts)
      ax.errorbar(x, y, yerr=e, fmt="o-", color=color, capsize=3, label=task)
  ax.set_xlabel("wall-clock minutes")
  ax.set_ylabel("validation NDCG@10 (100 candidates)")
  ax.legend()
  ax.grid(alpha=0.3)
  if data["train"]:
    ax_loss.plot([r["step"] for r in data["train"]], [r["loss"] for r in data["train"]])
    ax_loss.set_yscale("log")
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("training loss (token NLL)")
  ax_loss.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
