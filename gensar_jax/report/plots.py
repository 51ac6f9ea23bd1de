"""The report's PNG plots (matplotlib, Agg backend): trade-off, collisions, training curves."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from gensar_jax.data import schema  # pylint: disable=g-import-not-at-top,wrong-import-position


def tradeoff_figure(entries: Sequence[Mapping], protocol: str = "sampled",
                    metric: str = "ndcg@10"):
  """The trade-off figure, or None when nothing can be drawn (see `tradeoff`)."""
  fig, ax = plt.subplots(figsize=(7.6, 5.2))
  drawn = False
  colours = {"gensar": "tab:red", "ablation": "tab:blue"}
  styles = iter([("tab:green", "--"), ("tab:olive", ":"), ("tab:cyan", "-."),
                 ("tab:purple", "--"), ("tab:brown", ":"), ("tab:pink", "-."),
                 ("tab:gray", "--"), ("k", ":"), ("tab:orange", "-.")] * 3)
  markers = iter("osD^vP*Xh" * 4)
  for e in entries:
    task_m = {t: e.get(t, {}).get(protocol, {}) for t in schema.TASKS}
    rec, srch = task_m["recommendation"].get(metric), task_m["search"].get(metric)
    rec_se = task_m["recommendation"].get(f"{metric}_se", 0.0)
    srch_se = task_m["search"].get(f"{metric}_se", 0.0)
    if rec is not None and srch is not None:
      ax.errorbar([rec], [srch], xerr=[rec_se], yerr=[srch_se], fmt=next(markers),
                  ms=8 if e["kind"] == "gensar" else 6, capsize=3,
                  color=colours.get(e["kind"], "k"), zorder=3, label=e["method"])
      drawn = True
    elif rec is not None or srch is not None:
      colour, ls = next(styles)
      value, se = (rec, rec_se) if rec is not None else (srch, srch_se)
      line, band = (ax.axvline, ax.axvspan) if rec is not None else (ax.axhline, ax.axhspan)
      line(value, ls=ls, color=colour, lw=1.2,
           label=f"{e['method']} ({'recommendation' if rec is not None else 'search'} only)")
      band(value - se, value + se, color=colour, alpha=0.12, lw=0)
      drawn = True
  if not drawn:
    plt.close(fig)
    return None
  name = "100 candidates" if protocol == "sampled" else "whole catalog"
  ax.set_xlabel(f"recommendation {metric.upper()} ({name})")
  ax.set_ylabel(f"search {metric.upper()} ({name})")
  ax.set_title("Search vs recommendation (± standard error)")
  ax.grid(alpha=0.3)
  ax.set_xlim(left=0)
  ax.set_ylim(bottom=0)
  # Every label in one legend beside the axes: no two labels can overprint.
  ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
  fig.tight_layout()
  return fig


def tradeoff(entries: Sequence[Mapping], path: pathlib.Path, protocol: str = "sampled",
             metric: str = "ndcg@10") -> bool:
  """Search against recommendation `metric` per method (the paper's Fig. 1a).

  Methods scored on both tasks are points with ± standard-error bars; single-task
  baselines are lines (vertical for recommendation, horizontal for search) with a ± s.e.
  band. Every label is in a legend beside the axes. Returns False when nothing could be
  drawn.
  """
  fig = tradeoff_figure(entries, protocol, metric)
  if fig is None:
    return False
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True


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


def training_figure(history: Sequence[Mapping]):
  """The training figure, or None without training records (see `training`)."""
  train = [(r["step"], r["loss"]) for r in history if r.get("kind") == "train" and "loss" in r]
  if not train:
    return None
  val = [r for r in history if r.get("kind") == "validation"]
  fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10.0, 4.0))
  ax.plot(*zip(*train), color="tab:blue", label="training loss")
  ax.set_xlabel("step")
  ax.set_ylabel("training loss (cross-entropy per target token)")
  ax.ticklabel_format(axis="y", style="plain", useOffset=False)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title("Training loss")
  tasks = sorted({k.split("/")[0] for r in val for k in r if k.endswith("/ndcg@10")})
  for task, colour in zip(tasks, ("tab:red", "tab:purple", "tab:green")):
    pts = [(r["step"], r[f"{task}/ndcg@10"], r.get(f"{task}/ndcg@10_se", 0.0)) for r in val
           if f"{task}/ndcg@10" in r]
    steps, ys, ses = zip(*pts)
    ax2.errorbar(steps, ys, yerr=ses, fmt="o-", capsize=3, color=colour,
                 label=f"{task} NDCG@10 (± s.e.)")
  if len(val) < 3:
    ax2.text(0.5, 0.5, f"validated {len(val)} time{'s' if len(val) != 1 else ''}: "
             "too few points for a curve", transform=ax2.transAxes, ha="center",
             va="center", fontsize=9, color="0.3")
  ax2.set_xlabel("step")
  ax2.set_ylabel("validation NDCG@10 (100 candidates)")
  ax2.set_ylim(bottom=0)
  ax2.grid(alpha=0.3)
  if tasks:
    ax2.legend(fontsize=8)
  ax2.set_title("Validation")
  fig.tight_layout()
  return fig


def training(history: Sequence[Mapping], path: pathlib.Path) -> bool:
  """Training loss (linear axis) and validation NDCG@10 per task (points ± s.e., a
  legend) against the step; with fewer than three validations the panel says so."""
  fig = training_figure(history)
  if fig is None:
    return False
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return True
