"""The results tables: GenSAR, baselines and ablations per task, as JSON and Markdown.

`collect` gathers every method's metrics from the eval stage's `metrics.json` of a run
and of its ablation runs (`<workdir>/ablations/<name>/eval/metrics.json`, the layout
`configs/ablation.py` suggests); `to_markdown` renders one table per task and protocol.
Numbers are copied, never recomputed, so the report always equals `metrics.json`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping

from gensar_jax.data import schema
from gensar_jax.evaluation import metrics as metrics_lib

PROTOCOLS = ("sampled", "full")
_PROTOCOL_TITLES = {"sampled": "100 candidates (positive + 99 stored negatives)",
                    "full": "full-catalog ranking"}
_BASELINE_NAMES = {"sasrec": "SASRec", "bm25": "BM25", "dense": "Dense (text encoder)",
                   "popularity": "Popularity"}


def read_metrics(workdir: pathlib.Path) -> dict | None:
  """A run's eval `metrics.json`, or None when it has not been evaluated."""
  path = pathlib.Path(workdir) / "eval" / "metrics.json"
  return json.loads(path.read_text()) if path.exists() else None


def _gensar_entry(metrics: Mapping, method: str, kind: str) -> dict:
  return {"method": method, "kind": kind,
          **{task: metrics[task] for task in schema.TASKS if task in metrics}}


def collect(workdir: pathlib.Path) -> list[dict]:
  """Every method with its metrics: GenSAR, then baselines, then ablations.

  Returns:
    Entries {"method", "kind" ("gensar" | "baseline" | "ablation"), task: {protocol:
    metrics}} for the tasks the method covers.
  """
  workdir = pathlib.Path(workdir)
  main = read_metrics(workdir)
  entries = []
  if main is not None:
    entries.append(_gensar_entry(main, "GenSAR", "gensar"))
    for name, per_task in main.get("baselines", {}).items():
      entries.append({"method": _BASELINE_NAMES.get(name, name), "kind": "baseline", **per_task})
  ablations = workdir / "ablations"
  if ablations.is_dir():
    for sub in sorted(p for p in ablations.iterdir() if p.is_dir()):
      m = read_metrics(sub)
      if m is not None:
        entries.append(_gensar_entry(m, f"GenSAR {sub.name}", "ablation"))
  return entries


def _fmt(value) -> str:
  return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def to_markdown(entries: list[dict], title: str = "Results") -> str:
  """One Markdown table per task and protocol: HR@1/5/10, NDCG@5/10, examples."""
  lines = [f"# {title}", ""]
  for task in schema.TASKS:
    for protocol in PROTOCOLS:
      rows = [e for e in entries if protocol in e.get(task, {})]
      if not rows:
        continue
      lines += [f"## {task.capitalize()}: {_PROTOCOL_TITLES[protocol]}", "",
                "| method | " + " | ".join(k.upper() for k in metrics_lib.METRIC_KEYS)
                + " | examples |",
                "|---" * (len(metrics_lib.METRIC_KEYS) + 2) + "|"]
      for e in rows:
        m = e[task][protocol]
        lines.append(f"| {e['method']} | "
                     + " | ".join(_fmt(m.get(k)) for k in metrics_lib.METRIC_KEYS)
                     + f" | {m.get('count', '–')} |")
      lines.append("")
  return "\n".join(lines)
