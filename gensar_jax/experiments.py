"""The recipe study's record: one small JSON per run, and the README's Experiments table.

A study run is an ordinary pipeline run with a wall-clock budget
(`--config.train.max_minutes`) that reuses the unchanged stages of a base run
(`--config.reuse_from`). When it has finished (train at least; eval if run):

  python -m gensar_jax.experiments record --workdir=RUN --name=NAME \
      --note="what it shows" --out=experiments/office/NAME.json -- <the command>
  python -m gensar_jax.experiments table experiments/office/*.json

Repeating a run over seeds (each seed a workdir of its own, `--config.seed=N`):

  python -m gensar_jax.experiments seeds RUN_seed1 RUN_seed2 RUN_seed3

prints every test metric of GenSAR and the baselines as mean ± std over the seeds.

Scoring one checkpoint several ways (without touching the run's stages, whose best
checkpoint was chosen under the run's own `eval` settings):

  python -m gensar_jax.experiments rescore RUN --score=allowed [--rows=N]

ranks the test rows' 100 candidates by beam search and exactly, and the whole catalog
by beam search, under that scoring, and prints NDCG@10 ± s.e. per task.

Choosing between two recipes (validation rows only, never test rows):

  python -m gensar_jax.experiments compare RUN_A RUN_B

ranks the validation rows each run's training selected on (the last `train.eval_rows`
per task) with both runs' best checkpoints and prints the paired difference of NDCG@10
(± its standard error, paired t-test): far tighter than comparing two means with their
own standard errors, since both runs see the same rows.

How much of a run's ranking is the items' popularity (validation rows only):

  python -m gensar_jax.experiments popularity RUN

scores the validation rows' 100 candidates with the best checkpoint and prints, per
task, the mean rank correlation between the model's scores and the candidates'
training popularity, how popular the positive is among its candidates, and the
NDCG@10 of the scores with the popularity prior partly taken out (a diagnostic, never
a reported result).

How a recipe's test ranking grows with its training steps (runs that differ only in
`train.steps`), and where the log-linear trend would reach the best baseline:

  python -m gensar_jax.experiments trend [--png=trend.png] RECORD.json ...

`record` keeps the run's command and note, its training figures (steps, minutes, examples/s, fraction of wall time in the step loop), its
validation curve (`train/curve.json`) and, if evaluated, its test NDCG@10 per task with
standard errors and the paired test against the best baseline. `table` prints one
Markdown row per record, in the order given.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Sequence

from absl import app
from absl import flags
import numpy as np

from gensar_jax import compute_trend
from gensar_jax import console_logs
from gensar_jax import metrics as metrics_lib
from gensar_jax import task_kinds
from gensar_jax.data import schema
from gensar_jax.decoding import beam_search
from gensar_jax.evaluation import outputs as eval_outputs
from gensar_jax.train import curve as curve_lib


TASKS = task_kinds.TASKS  # The one copy (re-exported for readers of this module).


def _read(path: pathlib.Path) -> dict | None:
  return json.loads(path.read_text()) if path.exists() else None


def record(workdir: str | pathlib.Path, name: str, command: str, note: str = "") -> dict:
  """The study record of one finished run."""
  workdir = pathlib.Path(workdir)
  train = _read(workdir / "train" / "summary.json")
  if train is None:
    raise FileNotFoundError(f"{workdir} has no finished train stage")
  curve = _read(workdir / "train" / curve_lib.CURVE_JSON) or {}
  val = curve.get("validation", [])
  out = {
      "name": name, "command": command, "note": note,
      "train": {k: train.get(k) for k in (
          "steps", "total_steps", "minutes", "budget_hit", "examples_per_s", "loss_end",
          "best_step", "epoch_examples", "parameters", "train_s", "step_fraction", "compile_s")},
      "validation": [{k: v for k, v in p.items() if "/" in k or k in ("step", "minutes", "epoch")}
                     for p in val],
  }
  best = train.get("best_validation") or {}
  out["best_validation"] = {t: {"ndcg@10": best.get(f"{t}/ndcg@10"),
                                "ndcg@10_se": best.get(f"{t}/ndcg@10_se")} for t in TASKS}
  metrics = eval_outputs.run_metrics(workdir)
  if metrics is not None:
    test = {}
    for t in TASKS:
      test[t] = {mode: {k: metrics[t][mode][k] for k in ("ndcg@10", "ndcg@10_se", "hr@10")}
                 for mode in ("sampled", "full", "sampled_beam") if mode in metrics[t]}
      if "agreement" in metrics[t]:
        test[t]["agreement"] = metrics[t]["agreement"]
    out["test"] = test
    out["tests"] = metrics.get("tests", {})
    out["baselines"] = {b: {t: {m: {k: v[k] for k in ("ndcg@10", "ndcg@10_se")}
                                for m, v in per_mode.items()}
                            for t, per_mode in per_task.items()}
                        for b, per_task in metrics.get("baselines", {}).items()}
    out["settings"] = metrics.get("settings", {})
  return out


def _cell(m: dict | None) -> str:
  if not m or m.get("ndcg@10") is None:
    return "–"
  se = m.get("ndcg@10_se")
  return f"{m['ndcg@10']:.4f} ± {se:.4f}" if se is not None else f"{m['ndcg@10']:.4f}"


def table(records: Sequence[dict]) -> str:
  """Markdown rows: run, minutes, steps, validation and test NDCG@10 per task, note."""
  lines = ["| run | train min | steps | ex/s | val rec | val search | test rec | test search | note |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in records:
    t = r["train"]
    test = r.get("test", {})
    cells = [
        f"`{r['name']}`", f"{t.get('minutes') or 0:.1f}", str(t.get("steps")),
        f"{t.get('examples_per_s') or 0:.0f}",
        _cell(r["best_validation"]["recommendation"]), _cell(r["best_validation"]["search"]),
        _cell(test.get("recommendation", {}).get("sampled")),
        _cell(test.get("search", {}).get("sampled")), r.get("note", ""),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def seed_summary(metrics_list: Sequence[dict]) -> dict:
  """{method: {task: {mode: {metric: (mean, std over runs)}}}} of eval metrics.json files."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  def methods(m):
    out = {"gensar": {t: {mode: m[t][mode] for mode in metrics_lib.PROTOCOLS if mode in m[t]}
                      for t in TASKS if t in m}}
    out.update(m.get("baselines", {}))
    return out

  per_run = [methods(m) for m in metrics_list]
  out: dict = {}
  for method, per_task in per_run[0].items():
    for task, per_mode in per_task.items():
      for mode, first in per_mode.items():
        for key in first:
          if key.endswith("_se") or key == "count":
            continue
          vals = np.array([r[method][task][mode][key] for r in per_run], np.float64)
          out.setdefault(method, {}).setdefault(task, {}).setdefault(mode, {})[key] = (
              float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
  return out


def seeds_markdown(summary: dict, runs: int) -> str:
  """NDCG@10 and HR@10, mean ± std over `runs` seeds, one row per method, task, mode."""
  lines = [f"NDCG@10 and HR@10, mean ± std over {runs} seeds", "",
           "| method | task | protocol | NDCG@10 | HR@10 |", "|---|---|---|---|---|"]
  for method, per_task in summary.items():
    for task, per_mode in per_task.items():
      for mode, m in per_mode.items():
        cells = [f"{m[k][0]:.4f} ± {m[k][1]:.4f}" for k in ("ndcg@10", "hr@10")]
        lines.append(f"| {method} | {task} | {mode} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _ranker(workdir: pathlib.Path, score: str | None = None):
  """(the best checkpoint's bundle, its GenerativeRanker) of a run, with the run's own
  decoding settings (`score` replacing its scoring when given)."""
  # pylint: disable=g-import-not-at-top
  import dataclasses
  from gensar_jax import trained_model
  # pylint: enable=g-import-not-at-top

  trained = trained_model.TrainedModel.load(workdir / "train", workdir / "data", "best")
  decoding = trained.saved_decoding
  if score:
    decoding = dataclasses.replace(decoding, score=score)
  return trained.bundle, trained.ranker(decoding)


def rescore(workdir: str | pathlib.Path, score: str, rows: int = 0) -> dict:
  """GenSAR's test metrics of a run's best checkpoint under another scoring.

  Returns:
    {task: {"sampled_beam", "sampled_exact", "full": metrics, "agreement": {...}}}.
  """
  # pylint: disable=g-import-not-at-top
  from gensar_jax.data import dataset
  from gensar_jax import ranking
  # pylint: enable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  bundle, ranker = _ranker(workdir, score)
  out = {}
  for task in TASKS:
    test = dataset.load_rows(workdir / "data", task, "test")
    if rows:
      test = {k: v[:rows] for k, v in test.items()}
    got = ranker.row_ranks(bundle.params, task, test, ranking.MODES, "exact", compare=True)
    out[task] = {m: metrics_lib.metrics_from_ranks(r) for m, r in got.items()
                 if m in ("sampled_beam", "sampled_exact", "full")}
    out[task]["agreement"] = got["agreement"]
  return out


def validation_ranks(workdir: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Per-row ranks (100 candidates, exact) of a run's best checkpoint on the validation
  rows its training selected on (the last `train.eval_rows` per task)."""
  workdir = pathlib.Path(workdir)
  bundle, ranker = _ranker(workdir)
  return {task: ranker.row_ranks(bundle.params, task, _validation_rows(workdir, bundle, task),
                                 ("sampled",), "exact")["sampled"]
          for task in TASKS}


def _validation_rows(workdir: pathlib.Path, bundle, task: str) -> dict[str, np.ndarray]:
  """The validation rows a run's training selected on: the last `train.eval_rows`."""
  # pylint: disable=g-import-not-at-top
  from gensar_jax.data import dataset
  # pylint: enable=g-import-not-at-top

  rows = dataset.load_rows(workdir / "data", task, "validation")
  keep = int(bundle.config.train.eval_rows)
  return {k: v[-keep:] for k, v in rows.items()} if keep > 0 else rows


def compare(workdir_a: str | pathlib.Path, workdir_b: str | pathlib.Path) -> dict:
  """Run A against run B on the same validation rows: paired t-test of NDCG@10 per task.

  Validation rows only: recipes are chosen here, never on test rows.
  """

  a, b = validation_ranks(workdir_a), validation_ranks(workdir_b)
  out = {}
  for task in TASKS:
    out[task] = metrics_lib.paired_test(a[task], b[task], "ndcg@10")
    out[task]["a"] = float(metrics_lib.gains(a[task], "ndcg@10").mean())
    out[task]["b"] = float(metrics_lib.gains(b[task], "ndcg@10").mean())
  return out


POPULARITY_BETAS = (0.0, 0.5, 1.0, 1.5)  # Weights of log(1 + popularity) taken out.


def _row_ranks(x_RxC: np.ndarray) -> np.ndarray:
  return np.argsort(np.argsort(x_RxC, axis=1, kind="stable"), axis=1).astype(np.float64)


def popularity_alignment(scores_RxC: np.ndarray, popularity_RxC: np.ndarray,
                         betas: Sequence[float] = POPULARITY_BETAS) -> dict:
  """How far a ranking of candidate lists follows the candidates' popularity.

  Args:
    scores_RxC: a model's score of each row's candidates (column 0: the positive).
    popularity_RxC: each candidate's training count.
    betas: weights of log(1 + popularity) subtracted from the scores.

  Returns:
    {"spearman": mean over rows of the rank correlation between score and popularity,
     "positive_popularity_percentile": mean share of a row's negatives less popular
     than its positive, "ndcg@10": {beta: NDCG@10 of score - beta * log(1 + pop)}}.
  """

  log_pop = np.log1p(np.asarray(popularity_RxC, np.float64))
  scores = np.asarray(scores_RxC, np.float64)
  a, b = _row_ranks(scores), _row_ranks(log_pop)
  a -= a.mean(1, keepdims=True)
  b -= b.mean(1, keepdims=True)
  denom = np.sqrt((a * a).sum(1) * (b * b).sum(1))
  rho = np.where(denom > 0, (a * b).sum(1) / np.where(denom > 0, denom, 1.0), 0.0)
  ndcg = {}
  for beta in betas:
    ranks = metrics_lib.ranks_from_scores(scores - beta * log_pop, 0, 0)
    ndcg[float(beta)] = float(metrics_lib.gains(ranks, "ndcg@10").mean())
  return {"spearman": float(rho.mean()),
          "positive_popularity_percentile": float((log_pop[:, 1:] < log_pop[:, :1]).mean()),
          "ndcg@10": ndcg}


def popularity(workdir: str | pathlib.Path) -> dict:
  """`popularity_alignment` of a run's best checkpoint on its validation rows, per task
  (popularity: how often an item is a recommendation training target)."""
  # pylint: disable=g-import-not-at-top
  from gensar_jax import ranking
  from gensar_jax.data import dataset
  # pylint: enable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  bundle, ranker = _ranker(workdir)
  counts = schema.target_counts(dataset.load_rows(workdir / "data", "recommendation", "train"),
                                len(bundle.identifiers.item_ids))
  out = {}
  for task in TASKS:
    rows = _validation_rows(workdir, bundle, task)
    cands = ranking.candidates_of(rows)
    scores = ranker.score_candidates(bundle.params, task, ranker.builder.eval_sources(task, rows),
                                     cands)
    out[task] = popularity_alignment(scores, counts[np.maximum(cands, 0)])
  return out


PRIOR_BETAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0)  # Prior weights tried.


def choose_prior_weight(scores_RxC: np.ndarray, log_prior_RxC: np.ndarray,
                        betas: Sequence[float] = PRIOR_BETAS) -> tuple[float, dict]:
  """The weight `a` of `score - a * log prior` with the best NDCG@10 on these rows (the
  smallest of ties), and every weight's NDCG@10. Column 0 holds each row's positive."""

  got = {float(b): float(metrics_lib.gains(metrics_lib.ranks_from_scores(
      scores_RxC - b * log_prior_RxC, 0, 0), "ndcg@10").mean()) for b in betas}
  best = max(got.values())
  return min(b for b, v in got.items() if v == best), got


def prior_corrected(workdir: str | pathlib.Path, rows: int = 0) -> dict:
  """GenSAR's test NDCG@10 with the item prior divided out (PMI-style), per task.

  Each candidate's exact log-likelihood minus `a * log(1 + training count)`, `a` chosen
  on the run's validation rows (the ones training selected on), then applied unchanged
  to the first `rows` test rows (0: all). A variant reported beside full scoring, never
  replacing it; paired against it on the same test rows.
  """
  # pylint: disable=g-import-not-at-top
  from gensar_jax import ranking
  from gensar_jax.data import dataset
  # pylint: enable=g-import-not-at-top

  workdir = pathlib.Path(workdir)
  bundle, ranker = _ranker(workdir)
  log_count_N = np.log1p(schema.target_counts(
      dataset.load_rows(workdir / "data", "recommendation", "train"),
      len(bundle.identifiers.item_ids)))

  def scored(task, task_rows):
    cands = ranking.candidates_of(task_rows)
    scores = ranker.score_candidates(bundle.params, task,
                                     ranker.builder.eval_sources(task, task_rows), cands)
    return scores, log_count_N[np.maximum(cands, 0)]

  out = {}
  for task in TASKS:
    beta, by_beta = choose_prior_weight(*scored(task, _validation_rows(workdir, bundle, task)))
    test = dataset.load_rows(workdir / "data", task, "test")
    test = {k: v[:rows] for k, v in test.items()} if rows else test
    scores, log_prior = scored(task, test)
    plain = metrics_lib.ranks_from_scores(scores, 0, ranking.TIE_SEED)
    corrected = metrics_lib.ranks_from_scores(scores - beta * log_prior, 0, ranking.TIE_SEED)
    out[task] = {"weight": beta, "validation_ndcg@10_by_weight": by_beta,
                 "full": metrics_lib.metrics_from_ranks(plain),
                 "prior_corrected": metrics_lib.metrics_from_ranks(corrected),
                 "paired": metrics_lib.paired_test(corrected, plain, "ndcg@10")}
  return out


FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "record: the run's workdir.")
flags.DEFINE_string("name", None, "record: the run's name.")
flags.DEFINE_string("note", "", "record: one sentence on what the run shows.")
flags.DEFINE_string("out", None, "record: where the JSON goes.")
flags.DEFINE_enum("score", "full", beam_search.SCORES, "rescore: the scoring.")
flags.DEFINE_integer("rows", 0, "rescore: the first N test rows per task (0 = all).")
flags.DEFINE_string("png", None, "trend: where the plot goes (none when unset).")


def main(argv: Sequence[str]) -> None:
  console_logs.quiet()  # `compare` and `rescore` restore checkpoints: Orbax's INFO lines off.
  commands = ("record", "table", "seeds", "rescore", "compare", "popularity", "trend",
              "prior")
  if len(argv) < 2 or argv[1] not in commands:
    raise app.UsageError(f"usage: python -m gensar_jax.experiments {'|'.join(commands)} ...")
  if argv[1] == "trend":
    if len(argv) < 4:
      raise app.UsageError("trend takes two or more records: RECORD.json RECORD.json ...")
    trend = compute_trend.summary([json.loads(pathlib.Path(p).read_text()) for p in argv[2:]],
                                  TASKS)
    print(compute_trend.text(trend))
    if FLAGS.png:
      compute_trend.plot(trend, pathlib.Path(FLAGS.png))
    return
  if argv[1] == "popularity":
    if len(argv) != 3:
      raise app.UsageError("popularity takes one workdir: RUN")
    for task, t in popularity(argv[2]).items():
      cells = ", ".join(f"{b:g}: {v:.4f}" for b, v in t["ndcg@10"].items())
      print(f"{task}: Spearman(score, popularity) {t['spearman']:.3f}; positive more popular "
            f"than {t['positive_popularity_percentile']:.1%} of its negatives; validation "
            f"NDCG@10 of score - beta * log(1 + popularity), by beta: {cells}")
    return
  if argv[1] == "prior":
    if len(argv) != 3:
      raise app.UsageError("prior takes one workdir: RUN (--rows: test rows, 0 = all)")
    got = prior_corrected(argv[2], FLAGS.rows)
    for task, t in got.items():
      f, c, d = t["full"], t["prior_corrected"], t["paired"]
      print(f"{task}: weight {t['weight']:g} (chosen on validation: " + ", ".join(
          f"{b:g}: {v:.4f}" for b, v in t["validation_ndcg@10_by_weight"].items())
            + f"); test NDCG@10 full {f['ndcg@10']:.4f} ± {f['ndcg@10_se']:.4f}, prior-"
            f"corrected {c['ndcg@10']:.4f} ± {c['ndcg@10_se']:.4f}; paired "
            f"{d['mean_diff']:+.4f} ± {d['se_diff']:.4f}, p = {d['p']:.2g} ({d['count']} rows)")
    if FLAGS.out:
      pathlib.Path(FLAGS.out).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    return
  if argv[1] == "compare":
    if len(argv) != 4:
      raise app.UsageError("compare takes two workdirs: RUN_A RUN_B")
    got = compare(argv[2], argv[3])
    for task, t in got.items():
      print(f"{task}: validation NDCG@10 A {t['a']:.4f} vs B {t['b']:.4f}, A - B "
            f"{t['mean_diff']:+.4f} ± {t['se_diff']:.4f} (paired, {t['count']} rows), "
            f"p = {t['p']:.3g}")
    return
  if argv[1] == "rescore":
    got = rescore(argv[2], FLAGS.score, FLAGS.rows)
    print(f"score={FLAGS.score}: NDCG@10 ± s.e.")
    for task, per_mode in got.items():
      cells = [f"{m} {v['ndcg@10']:.4f} ± {v['ndcg@10_se']:.4f}" for m, v in per_mode.items()
               if m != "agreement"]
      print(f"  {task}: " + ", ".join(cells) + f"; agreement {per_mode['agreement']}")
    return
  if argv[1] == "seeds":
    found = [eval_outputs.run_metrics(w) for w in argv[2:]]
    missing = [w for w, m in zip(argv[2:], found) if m is None]
    if missing:
      raise app.UsageError(f"no eval metrics in {missing}")
    print(seeds_markdown(seed_summary(found), len(found)))
    return
  if argv[1] == "record":
    command = " ".join(argv[2:]).lstrip("- ").strip()
    rec = record(FLAGS.workdir, FLAGS.name, command, FLAGS.note)
    text = json.dumps(rec, indent=1, sort_keys=True) + "\n"
    if FLAGS.out:
      pathlib.Path(FLAGS.out).parent.mkdir(parents=True, exist_ok=True)
      pathlib.Path(FLAGS.out).write_text(text)
    else:
      sys.stdout.write(text)
  else:
    print(table([json.loads(pathlib.Path(p).read_text()) for p in argv[2:]]))


if __name__ == "__main__":
  app.run(main)
