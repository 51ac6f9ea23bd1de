"""The report stage: results tables (Markdown + JSON) and plots (DESIGN §7).

Reads the eval stage's `metrics.json` of this run and of any ablation runs under
`<workdir>/ablations/<name>/`, the identifiers stage's collision rates and the train
stage's `metrics.jsonl`. Writes `results.md`, `results.json` and, with
`config.report.plots`, `tradeoff.png` (search vs recommendation NDCG@10),
`collisions.png` and `training.png`. Never cached: it reflects whatever has finished.
"""

from __future__ import annotations

import json
import pathlib

from gensar_jax import pipeline
from gensar_jax.report import plots
from gensar_jax.report import tables
from gensar_jax.train import logging_utils

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"


def collision_rates(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
  """{run: {kind: collision rate before resolution}} for this run and its ablations."""
  runs = {"GenSAR": pathlib.Path(workdir)}
  ablations = pathlib.Path(workdir) / "ablations"
  if ablations.is_dir():
    runs.update({p.name: p for p in sorted(ablations.iterdir()) if p.is_dir()})
  out = {}
  for name, run_dir in runs.items():
    path = run_dir / "identifiers" / pipeline.SUMMARY
    if path.exists():
      summary = json.loads(path.read_text())
      before = summary.get("collision_before", {})
      variant = summary.get("variant", "joint")
      if variant in ("semantic", "collaborative"):
        before = {variant: before.get(variant, next(iter(before.values()), 0.0))}
      out[name] = {k: float(v) for k, v in before.items()}
  return out


def run(config, ctx: pipeline.StageContext) -> dict:
  """Writes the tables and plots; returns what was written."""
  entries = tables.collect(ctx.workdir)
  if not entries:
    raise pipeline.PipelineError(f"nothing to report: no eval/metrics.json in {ctx.workdir}")
  title = f"GenSAR results: {config.data.category} (preset {config.preset})"
  main = tables.read_metrics(ctx.workdir) or {}
  agreement = {t: main[t]["agreement"] for t in ("recommendation", "search")
               if "agreement" in main.get(t, {})}
  markdown = tables.to_markdown(entries, title, main.get("tests"), agreement)
  pipeline.write_text_atomic(ctx.dir / RESULTS_MD, markdown + "\n")
  pipeline.write_json_atomic(ctx.dir / RESULTS_JSON, {"methods": entries})
  written = [RESULTS_MD, RESULTS_JSON]
  if config.report.plots:
    rates = collision_rates(ctx.workdir)
    history = logging_utils.read_history(ctx.workdir / "train")
    for name, ok in (("tradeoff.png", plots.tradeoff(entries, ctx.dir / "tradeoff.png")),
                     ("collisions.png", plots.collisions(rates, ctx.dir / "collisions.png")),
                     ("training.png", plots.training(history, ctx.dir / "training.png"))):
      if ok:
        written.append(name)
  print(markdown, flush=True)
  return {"methods": [e["method"] for e in entries], "files": written}
