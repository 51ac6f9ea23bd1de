"""How a recipe's ranking grows with training compute, across study runs of one recipe.

Study runs that differ only in `train.steps` (same batch, so steps measure compute) give
one test NDCG@10 per task each, on the same test rows as their baselines. `fit` draws the
line NDCG@10 = a + b · log2(steps) through them (b: the gain per doubling of compute) and
`crossing_steps` says where that line would reach a baseline. A projection, not a
measurement: it assumes the gain per doubling holds beyond the largest run.

  python -m gensar_jax.experiments trend --png=trend.png RUN_500.json RUN_2000.json ...
"""

from __future__ import annotations

import math
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np


def fit(steps: Sequence[float], values: Sequence[float]) -> tuple[float, float, float]:
  """Least-squares `value = a + b * log2(steps)`; returns (a, b, standard error of b).

  The standard error is NaN with fewer than three distinct step counts.
  """
  x = np.log2(np.asarray(steps, np.float64))
  y = np.asarray(values, np.float64)
  if len(np.unique(x)) < 2:
    raise ValueError("a trend needs runs with at least two different step counts")
  design = np.stack([np.ones_like(x), x], axis=1)
  (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
  dof = len(x) - 2
  if dof < 1 or len(np.unique(x)) < 3:
    return float(a), float(b), float("nan")
  resid = y - design @ np.array([a, b])
  sigma2 = float(resid @ resid) / dof
  se_b = math.sqrt(sigma2 / float(np.sum((x - x.mean()) ** 2)))
  return float(a), float(b), se_b


def crossing_steps(a: float, b: float, target: float) -> float | None:
  """Steps at which `a + b * log2(steps)` reaches `target`; None when it never does."""
  if b <= 0:
    return None
  doublings = (target - a) / b
  return math.inf if doublings > 1000 else float(2.0 ** doublings)


def points(records: Sequence[Mapping], task: str) -> list[dict]:
  """One point per record: steps, test NDCG@10 ± s.e. (100 candidates, exact ranking),
  the best validation NDCG@10, and the best baseline's test NDCG@10 on the same rows."""
  out = []
  for r in records:
    test = r.get("test", {}).get(task, {}).get("sampled")
    if test is None:
      raise ValueError(f"record {r.get('name')!r} has no test figures for {task}")
    base = {name: per_task[task]["sampled"]["ndcg@10"]
            for name, per_task in r.get("baselines", {}).items()
            if task in per_task and "sampled" in per_task[task] and name != "popularity"}
    best = max(base, key=base.get) if base else None
    out.append({
        "name": r["name"], "steps": int(r["train"]["steps"]),
        "test": test["ndcg@10"], "test_se": test["ndcg@10_se"],
        "validation": r.get("best_validation", {}).get(task, {}).get("ndcg@10"),
        "baseline": best, "baseline_ndcg@10": base.get(best),
    })
  return out


def summary(records: Sequence[Mapping], tasks: Sequence[str]) -> dict:
  """{task: {"points", "a", "b", "b_se", "target", "target_name", "steps_to_target"}}."""
  out = {}
  for task in tasks:
    pts = points(records, task)
    a, b, b_se = fit([p["steps"] for p in pts], [p["test"] for p in pts])
    targets = [(p["baseline_ndcg@10"], p["baseline"]) for p in pts if p["baseline"]]
    target, name = max(targets) if targets else (None, None)
    out[task] = {"points": pts, "a": a, "b": b, "b_se": b_se, "target": target,
                 "target_name": name,
                 "steps_to_target": None if target is None else crossing_steps(a, b, target)}
  return out


def text(trend: Mapping) -> str:
  """Lines a person reads: the points, the gain per doubling and the projection."""
  lines = []
  for task, t in trend.items():
    lines.append(f"{task}:")
    for p in t["points"]:
      val = "–" if p["validation"] is None else f"{p['validation']:.4f}"
      lines.append(f"  {p['name']}: {p['steps']} steps, test NDCG@10 {p['test']:.4f} ± "
                   f"{p['test_se']:.4f} (validation {val})")
    se = "" if math.isnan(t["b_se"]) else f" ± {t['b_se']:.4f}"
    lines.append(f"  fit: {t['a']:.4f} + {t['b']:.4f}{se} per doubling of steps")
    if t["target"] is not None:
      largest = max(p["steps"] for p in t["points"])
      cross = t["steps_to_target"]
      where = ("never (the fitted gain per doubling is not positive)" if cross is None
               else f"~{cross:,.0f} steps ({cross / largest:.1f}x the largest run, "
                    f"{math.log2(max(cross, 1) / largest):+.1f} doublings)")
      lines.append(f"  {t['target_name']} ({t['target']:.4f}) reached by the fitted line: {where}")
  return "\n".join(lines)


def plot(trend: Mapping, path: pathlib.Path) -> None:
  """Test NDCG@10 (±1 s.e.) against steps (log scale), the fit extended to the best
  baseline, per task."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(trend), figsize=(5.2 * len(trend), 3.8))
  for ax, (task, t) in zip(np.atleast_1d(axes), trend.items()):
    steps = np.array([p["steps"] for p in t["points"]], np.float64)
    ax.errorbar(steps, [p["test"] for p in t["points"]], yerr=[p["test_se"] for p in t["points"]],
                fmt="o", color="tab:red", capsize=3, label="GenSAR (test, first rows)")
    val = [(p["steps"], p["validation"]) for p in t["points"] if p["validation"] is not None]
    if val:
      ax.plot(*zip(*val), "x", color="tab:orange", label="GenSAR (validation)")
    hi = steps.max() * 2
    if t["steps_to_target"] is not None:
      hi = max(hi, min(t["steps_to_target"] * 1.5, steps.max() * 2 ** 8))
    xs = np.geomspace(steps.min(), hi, 50)
    ax.plot(xs, t["a"] + t["b"] * np.log2(xs), "--", color="tab:red", alpha=0.6,
            label=f"fit: {t['b']:+.3f} per doubling")
    if t["target"] is not None:
      ax.axhline(t["target"], color="0.4", lw=1, label=f"{t['target_name']} (test)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("optimizer steps")
    ax.set_ylabel("NDCG@10, 100 candidates")
    ax.set_title(task)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
