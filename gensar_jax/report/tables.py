"""The results tables: GenSAR, baselines and ablations per task, as JSON and Markdown.

`collect` gathers every method's metrics from the eval stage's `metrics.json` of a run
and of its ablation runs (`<workdir>/ablations/<name>/eval/metrics.json`, the layout
`configs/ablation.py` suggests); `to_markdown` renders one table per task and protocol.
Numbers are copied, never recomputed, so the report always equals `metrics.json`.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping

from gensar_jax import metrics as metrics_lib
from gensar_jax.data import schema
from gensar_jax.evaluation import outputs as eval_outputs

PROTOCOLS = metrics_lib.PROTOCOLS
_PROTOCOL_TITLES = {"sampled": "100 candidates (positive + 99 stored negatives)",
                    "full": "whole catalog"}


def baseline_name(key: str) -> str:
  """Display name of a baseline key, from the eval stage's `BASELINE_TITLES`
  ("sasrec_last5" -> "SASRec (last 5 items)"; an unknown key is its own name)."""
  return eval_outputs.baseline_title(key)


def read_metrics(workdir: pathlib.Path) -> dict | None:
  """A run's eval `metrics.json`, or None when it has not been evaluated."""
  return eval_outputs.run_metrics(workdir)


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
      entries.append({"method": baseline_name(name), "kind": "baseline", **per_task})
  ablations = workdir / "ablations"
  if ablations.is_dir():
    for sub in sorted(p for p in ablations.iterdir() if p.is_dir()):
      m = read_metrics(sub)
      if m is not None:
        entries.append(_gensar_entry(m, f"GenSAR {sub.name}", "ablation"))
  return entries


# What one training seed alone moves (README *Experiments*: three seeds of the 500-step
# Office control, same data and identifiers): an ablation's difference within it is not
# evidence either way.
SEED_SPREAD = ("validation NDCG@10 s.d. over training seeds: recommendation 0.006, search "
               "0.017 (one seed moved search by 0.030)")


def ablation_tests(workdir: pathlib.Path, key: str = "ndcg@10") -> dict[str, dict]:
  """Each ablation run against the full model on the same test rows: {ablation: {task:
  {protocol: paired t-test of `key`}}} (ablation − full), from both runs' `ranks.npz`."""
  workdir = pathlib.Path(workdir)
  ablations = workdir / "ablations"
  main_dir = workdir / eval_outputs.STAGE
  if not ablations.is_dir() or not (main_dir / eval_outputs.RANKS_FILE).exists():
    return {}
  full = eval_outputs.read_ranks(main_dir)
  out: dict[str, dict] = {}
  for sub in sorted(p for p in ablations.iterdir() if p.is_dir()):
    eval_dir = sub / eval_outputs.STAGE
    if not (eval_dir / eval_outputs.RANKS_FILE).exists():
      continue
    mine = eval_outputs.read_ranks(eval_dir)
    for task in schema.TASKS:
      for protocol in PROTOCOLS:
        name = f"gensar/{task}/{protocol}"
        if name in mine and name in full and len(mine[name]) == len(full[name]):
          out.setdefault(sub.name, {}).setdefault(task, {})[protocol] = (
              metrics_lib.paired_test(mine[name], full[name], key))
  return out


def _paired_table(title: str, columns: tuple[str, ...], rows, note: str = "") -> list[str]:
  """A Markdown section of paired t-tests: `rows` are (leading cells, paired_test dict)."""
  lines = [f"## {title}", ""] + ([note, ""] if note else [])
  lines += ["| " + " | ".join(columns) + " | p |", "|---" * (len(columns) + 1) + "|"]
  for cells, t in rows:
    lines.append("| " + " | ".join(cells) + f" | {t['mean_diff']:+.4f} ± {t['se_diff']:.4f} | "
                 f"{t['p']:.2g} |")
  return lines + [""]


def _fmt(value) -> str:
  return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def cell(m: Mapping, key: str) -> str:
  """`value ± standard error` (4 decimals), or the value alone when it has no error."""
  se = m.get(f"{key}_se")
  return _fmt(m.get(key)) + (f" ± {se:.4f}" if isinstance(se, (int, float)) else "")


def to_markdown(entries: list[dict], title: str = "Results", tests: Mapping | None = None,
                agreement: Mapping | None = None,
                tests_by_baseline: Mapping | None = None,
                header: list[str] | None = None,
                ablations: Mapping | None = None) -> str:
  """One Markdown table per task and protocol: HR@1/5/10, NDCG@5/10 (± standard error
  over rows), examples; then GenSAR's paired tests (against the best baseline, and
  against every baseline when given) and beam/exact agreement if given. `header`: lines
  after the title (the settings that produced the numbers, the plots)."""
  lines = [f"# {title}", ""] + list(header or []) + [
      "Metrics are means over test rows ± their standard error.", ""]
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
                     + " | ".join(cell(m, k) for k in metrics_lib.METRIC_KEYS)
                     + f" | {m.get('count', '–')} |")
      lines.append("")
  if tests:
    lines += _paired_table(
        "GenSAR vs the best baseline (paired t-test on NDCG@10, same rows)",
        ("task", "protocol", "baseline", "GenSAR − baseline"),
        [((task, mode, baseline_name(t["versus"])), t)
         for task, per_mode in tests.items() for mode, t in per_mode.items()])
  if tests_by_baseline:
    lines += _paired_table(
        "GenSAR vs every baseline (paired t-test on NDCG@10, same rows)",
        ("task", "protocol", "baseline", "GenSAR − baseline"),
        [((task, mode, baseline_name(key)), t)
         for task, per_mode in tests_by_baseline.items()
         for mode, per_baseline in per_mode.items() for key, t in per_baseline.items()])
  if ablations:
    lines += _paired_table(
        "Ablations vs the full model (paired t-test on NDCG@10, same test rows)",
        ("ablation", "task", "protocol", "ablation − full"),
        [((name, task, _PROTOCOL_TITLES[mode].split(" (")[0]), t)
         for name, per_task in ablations.items() for task, per_mode in per_task.items()
         for mode, t in per_mode.items()],
        note=f"Read against the seed spread: {SEED_SPREAD}.")
  if agreement:
    lines += ["## Beam search vs exact ranking (100 candidates)", "",
              "Share of test rows where the beam's top 10 equals the exact ranking's top 10, "
              "where both put the same item first, and where the target gets the same rank "
              "(beam search ranks only what stays in its beam, so a target outside it "
              "counts as a different rank).", "",
              "| task | beam top 10 = exact top 10 | same top 1 | same target rank |",
              "|---|---|---|---|"]
    for task, a in agreement.items():
      lines.append(f"| {task} | {a['top10_equal']:.3f} | {a['top1_equal']:.3f} | "
                   f"{a['same_rank']:.3f} |")
    lines.append("")
  return "\n".join(lines)
