"""The report's PNG plots (matplotlib, Agg backend): trade-off, collisions, training curves."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


def tradeoff(entries: Sequence[Mapping], path: pathlib.Path, protocol: str = "sampled",
             metric: str = "ndcg@10") -> bool:
  """Search against recommendation `metric` per method (the paper's Fig. 1a).

  Methods scored on both tasks are points; single-task baselines are dashed lines
  (vertical for recommendation, horizontal for search). Returns False when nothing
  could be drawn.
  """
  fig, ax = plt.subplots(figsize=(6.4, 5.2))
  drawn = False
  colours = {"gensar": "tab:red", "ablation": "tab:blue", "baseline": "tab:gray"}
  ablations = 0
  for e in entries:
    rec = e.get("recommendation", {}).get(protocol, {}).get(metric)
    srch = e.get("search", {}).get(protocol, {}).get(metric)
    if rec is not None and srch is not None:
      ax.scatter([rec], [srch], s=60 if e["kind"] == "gensar" else 30,
                 color=colours.get(e["kind"], "k"), zorder=3)
      if e["kind"] == "ablation":  # Often close to GenSAR: labels stacked below, leader lines.
        ablations += 1
        ax.annotate(e["method"], (rec, srch), textcoords="offset points",
                    xytext=(-5, -10 * ablations), ha="right", fontsize=8,
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="0.5"))
      else:
        ax.annotate(e["method"], (rec, srch), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
      drawn = True
    elif rec is not None:
      ax.axvline(rec, ls="--", color="tab:green", lw=1)
      ax.annotate(e["method"], (rec, 0.02), xycoords=("data", "axes fraction"), rotation=90,
                  fontsize=8, color="tab:green")
      drawn = True
    elif srch is not None:
      ax.axhline(srch, ls="--", color="tab:purple", lw=1)
      # Labelled at the right end: points of methods with both tasks sit near x = 0.
      ax.annotate(e["method"], (0.9, srch), xycoords=("axes fraction", "data"), fontsize=8,
                  color="tab:purple", va="bottom", ha="right")
      drawn = True
  ax.set_xlabel(f"recommendation {metric.upper()} ({protocol})")
  ax.set_ylabel(f"search {metric.upper()} ({protocol})")
  ax.set_title("Search vs recommendation")
  ax.grid(alpha=0.3)
  ax.set_xlim(left=0)
  ax.set_ylim(bottom=0)
  fig.tight_layout()
  if drawn:
    fig.savefig(path, dpi=120)
  plt.close(fig)
  return drawn


def collisions(rates: Mapping[str, Mapping[str, float]], path: pathlib.Path) -> bool:
  """Collision rate before resolution per identifier kind, per run (the paper's Fig. 5).

  Args:
    rates: {run name: {kind: rate}}.
  """
  if not rates:
    return False
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  labels, values = [], []
  for run, per_kind in rates.items():
    for kind, rate in per_kind.items():
      labels.append(f"{run}\n{kind}")
      values.append(100.0 * rate)
  bars = ax.bar(range(len(values)), values, color="tab:orange")
  ax.bar_label(bars, labels=[f"{v:.2f}%" for v in values], fontsize=8)
  ax.set_xticks(range(len(values)), labels, fontsize=8)
  ax.set_ylabel("collision rate before resolution (%)")
  ax.set_title("Identifier collisions")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


def training(history: Sequence[Mapping], path: pathlib.Path) -> bool:
  """Training loss and validation score (mean NDCG@5 over tasks) against the step."""
  train = [(r["step"], r["loss"]) for r in history if r.get("kind") == "train" and "loss" in r]
  val = [(r["step"], r["score"]) for r in history
         if r.get("kind") == "validation" and "score" in r]
  if not train:
    return False
  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  ax.plot(*zip(*train), color="tab:blue", label="training loss")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (token NLL)", color="tab:blue")
  ax.set_yscale("log")
  if val:
    ax2 = ax.twinx()
    ax2.plot(*zip(*val), "o-", color="tab:red", label="validation NDCG@5")
    ax2.set_ylabel("validation mean NDCG@5", color="tab:red")
  ax.set_title("Training")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
