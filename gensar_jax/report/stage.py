"""The report stage: results tables (Markdown + JSON) and plots (docs/design.md §7).

Reads the eval stage's `metrics.json` (`evaluation/outputs.py`) of this run and of any
ablation runs under `<workdir>/ablations/<name>/`, the identifiers stage's collision
rates (its summary) and, when the train stage has run here, its `metrics.jsonl`. Writes
`results.md`, `results.json` and, with `config.report.plots`, `tradeoff.png` (search vs
recommendation NDCG@10), `collisions.png` and `training.png`. Never cached: it
reflects whatever has finished.
"""

from __future__ import annotations

import pathlib

from gensar_jax import atomic
from gensar_jax import context
from gensar_jax import errors
from gensar_jax import seeds
from gensar_jax.data import schema
from gensar_jax.report import plots
from gensar_jax.report import tables
from gensar_jax.train import outputs as train_outputs
from gensar_jax.trainer import logging_utils

RESULTS_MD = "results.md"
RESULTS_JSON = "results.json"
IDENTIFIERS = "identifiers"  # The stage whose summary holds the collision rates.

INPUTS = ("data", "identifiers", "eval", "train")
OPTIONAL_INPUTS = ("train",)  # Its metrics.jsonl, for training.png.
CONFIG_KEYS = ("report",)
ALSO_READS = ("data.category",)  # The title (fixed by the data input's fingerprint).


def collision_rates(workdir: pathlib.Path) -> dict[str, dict[str, float]]:
  """{run: {kind: collision rate before resolution}} for this run and its ablations."""
  runs = {"GenSAR": pathlib.Path(workdir)}
  ablations = pathlib.Path(workdir) / "ablations"
  if ablations.is_dir():
    runs.update({p.name: p for p in sorted(ablations.iterdir()) if p.is_dir()})
  out = {}
  for name, run_dir in runs.items():
    if (run_dir / IDENTIFIERS / context.SUMMARY).exists():
      summary = context.read_summary(run_dir, IDENTIFIERS)
      before = summary.get("collision_before", {})
      variant = summary.get("variant", "joint")
      if variant in ("semantic", "collaborative"):
        before = {variant: before.get(variant, next(iter(before.values()), 0.0))}
      out[name] = {k: float(v) for k, v in before.items()}
  return out


PLOT_LINES = {  # Each plot the stage draws, and what it shows.
    "tradeoff.png": "search against recommendation NDCG@10 (± s.e.) of every method",
    "collisions.png": "identifier collision rates before resolution, per run and kind",
    "training.png": "training loss and validation NDCG against steps",
}


def _commit() -> str:
  """The code's git commit (short), or "unknown" outside a git checkout."""
  import subprocess  # pylint: disable=g-import-not-at-top

  try:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, timeout=10, cwd=pathlib.Path(__file__).parent)
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def settings_lines(config, ctx: context.StageContext, main: dict,
                   plots_drawn: dict[str, str]) -> list[str]:
  """The header of results.md: what produced the numbers, and the plots beside it."""
  s = main.get("settings", {})
  rows = {t: main[t]["sampled"]["count"] for t in schema.TASKS
          if "sampled" in main.get(t, {})}
  train_seed = None
  if ctx.has_input("train") and (ctx.input_dir("train") / train_outputs.CONFIG).exists():
    train_seed = seeds.train(train_outputs.load_config(ctx.input_dir("train")))
  lines = [
      f"- preset `{config.get('preset', '?')}`, seed {config.get('seed', '?')}"
      + (f", training seed {train_seed}" if train_seed is not None else "")
      + f", commit {_commit()}",
      f"- checkpoint step {s.get('checkpoint_step', '?')}; beam {s.get('beam_size', '?')}; "
      f"scoring `{s.get('score', '?')}` (`full`: log-softmax over the whole vocabulary; "
      "`allowed`: over the tokens the trie allows); ranking of the 100 candidates "
      f"`{s.get('rank', '?')}` (`exact`: every candidate's likelihood; `beam`: what the "
      "constrained beam search returns)",
      "- test rows per task: " + ", ".join(f"{t} {n}" for t, n in rows.items()),
      "- protocols: *100 candidates* (the positive and 99 stored negatives) and *whole "
      "catalog* (every item); HR@k and NDCG@k from the positive's 1-based rank",
  ]
  for name, what in plots_drawn.items():
    lines.append(f"- [{name}]({name}): {what}")
  return lines + [""]


def run(config, ctx: context.StageContext) -> dict:
  """Writes the tables and plots; returns what was written."""
  entries = tables.collect(ctx.workdir)
  if not entries:
    raise errors.PipelineError(f"nothing to report: no eval/metrics.json in {ctx.workdir}")
  title = f"GenSAR results: {config.data.category}"
  main = tables.read_metrics(ctx.workdir) or {}
  agreement = {t: main[t]["agreement"] for t in schema.TASKS
               if "agreement" in main.get(t, {})}
  drawn = []
  if config.report.plots:
    rates = collision_rates(ctx.workdir)
    history = (logging_utils.read_history(ctx.input_dir("train")) if ctx.has_input("train")
               else [])
    for name, ok in (("tradeoff.png", plots.tradeoff(entries, ctx.dir / "tradeoff.png")),
                     ("collisions.png", plots.collisions(rates, ctx.dir / "collisions.png")),
                     ("training.png", plots.training(history, ctx.dir / "training.png"))):
      if ok:
        drawn.append(name)
  markdown = tables.to_markdown(
      entries, title, main.get("tests"), agreement, main.get("tests_by_baseline"),
      header=settings_lines(config, ctx, main, {n: PLOT_LINES[n] for n in drawn}),
      ablations=tables.ablation_tests(ctx.workdir))
  atomic.write_text_atomic(ctx.dir / RESULTS_MD, markdown + "\n")
  atomic.write_json_atomic(ctx.dir / RESULTS_JSON, {"methods": entries})
  written = [RESULTS_MD, RESULTS_JSON] + drawn
  # The numbers were printed by eval; the console gets where the tables and plots are.
  print(f"report: {ctx.dir / RESULTS_MD} ({len(entries)} methods; GenSAR paired against "
        f"every baseline)" + (f", plots: {', '.join(drawn)}" if drawn else ""), flush=True)
  return {"methods": [e["method"] for e in entries], "files": written}
