"""The eval stage: restore the trained model and score the test split (docs/design.md §6–7).

Restores the best Orbax checkpoint of `<workdir>/train` (with the tokenizer,
identifier tables and config saved beside it), refuses to go on when those differ from
the workdir's identifiers stage, ranks every test row of both tasks against its 100
stored candidates ("sampled"; exactly by likelihood or by beam search, `eval.rank`)
and against the whole catalog ("full"), and scores the baselines on the same rows and
candidates. With `eval.compare` the 100 candidates are ranked both ways and the
agreement of beam search's top 10 with the exact top 10 is reported.

Writes `metrics.json` and `ranks.npz` (their layout, writer and readers:
`outputs.py`). "tests" compares GenSAR with the best baseline of each task and mode (by
NDCG@10) by a paired t-test on the same rows; "tests_by_baseline" with every baseline.
The baselines are those of `baselines.REGISTRY`: popularity, SASRec (softmax, at
GenSAR's window, and BCE), item co-occurrence (the training sequences only) and
identifier-prefix overlap (the identifiers stage's collaborative table) for
recommendation, BM25 and dense retrieval for search.
"""

from __future__ import annotations

import pathlib
import time

from absl import logging
import numpy as np

from gensar_jax import context
from gensar_jax import errors
from gensar_jax import metrics as metrics_lib
from gensar_jax import ranking
from gensar_jax import sharding
from gensar_jax import trained_model
from gensar_jax.data import dataset
from gensar_jax.data import schema
from gensar_jax.decoding import beam_search
from gensar_jax.evaluation import baselines
from gensar_jax.evaluation import outputs
from gensar_jax.identifiers import table as id_table

INPUTS = ("data", "identifiers", "train", "embed")
CONFIG_KEYS = ("eval", "embed.text_encoder_dir", "embed.max_text_len")  # The dense baseline encodes.
# Read but not fingerprinted: the mesh axis name, the dense baseline's encoding batch, and
# GenSAR's recommendation window (fixed by the data input's fingerprint).
ALSO_READS = ("mesh.data_axis", "embed.batch_size", "data.max_rec_his_len")


def external_files(config, workdir) -> list[pathlib.Path]:
  """The text encoder folder of the dense baseline, when one is given."""
  del workdir
  return [pathlib.Path(config.embed.text_encoder_dir)] if config.embed.text_encoder_dir else []


def validate(config) -> None:
  """Checks the eval section."""
  v = config.eval
  if v.beam_size < 1 or v.batch_size < 1:
    raise errors.PipelineError("config.eval.beam_size and batch_size must be >= 1")
  if v.score not in beam_search.SCORES:
    raise errors.PipelineError(
        f"config.eval.score must be one of {beam_search.SCORES}, got {v.score!r}")
  if v.rank not in ranking.RANKS:
    raise errors.PipelineError(
        f"config.eval.rank must be one of {ranking.RANKS}, got {v.rank!r}")
  if v.max_examples < 0:
    raise errors.PipelineError("config.eval.max_examples must be >= 0")


def check_same_identifiers(bundle_ids: id_table.Identifiers, workdir_ids: id_table.Identifiers,
                           where: str) -> None:
  """Raises PipelineError when a checkpoint's identifier tables differ from the workdir's."""
  same = (
      np.array_equal(np.asarray(bundle_ids.item_ids, str), np.asarray(workdir_ids.item_ids, str))
      and all(
          np.array_equal(getattr(bundle_ids, k).codes, getattr(workdir_ids, k).codes)
          and getattr(bundle_ids, k).level_names == getattr(workdir_ids, k).level_names
          for k in id_table.KINDS))
  if not same:
    raise errors.PipelineError(
        f"the checkpoint in {where} was trained with other identifier tables than this "
        "workdir's identifiers stage; rerun the train stage (or evaluate in the workdir "
        "that trained it)")


def limit_rows(rows: dict[str, np.ndarray], max_examples: int) -> dict[str, np.ndarray]:
  """The first `max_examples` rows (all when 0)."""
  return {k: v[:max_examples] for k, v in rows.items()} if max_examples else rows


def run(config, ctx: context.StageContext) -> dict:
  """Scores GenSAR and the baselines on the test split; writes metrics.json."""
  start = time.time()
  data_dir = ctx.input_dir("data")
  train_dir = ctx.input_dir("train")
  trained = trained_model.TrainedModel.load(train_dir, data_dir, "best")
  bundle, catalog = trained.bundle, trained.catalog
  check_same_identifiers(bundle.identifiers, id_table.load(ctx.input_dir("identifiers")),
                         str(train_dir))
  v = config.eval
  ranker = trained.ranker(trained_model.Decoding.from_config(v),
                          mesh=sharding.make_mesh(config.mesh.data_axis))
  modes = ranking.MODES if v.full_catalog else ("sampled",)
  metrics: dict = {"checkpoint_step": bundle.step}
  ranks: dict[str, np.ndarray] = {}
  test_rows = {}
  for task in schema.TASKS:
    rows = limit_rows(dataset.load_rows(data_dir, task, "test"), int(v.max_examples))
    test_rows[task] = rows
    t0 = time.time()
    with metrics_lib.scoring(f"GenSAR (checkpoint step {bundle.step} of {train_dir}) on "
                             f"the test {task} rows"):
      got = ranker.row_ranks(bundle.params, task, rows, modes, v.rank,
                             exact_catalog=bool(v.exact_catalog), compare=bool(v.compare),
                             progress=f"eval {task}")
    metrics[task] = {m: metrics_lib.metrics_from_ranks(r) for m, r in got.items()
                     if m != "agreement"}
    if "agreement" in got:
      metrics[task]["agreement"] = got["agreement"]
    ranks.update({f"gensar/{task}/{m}": r for m, r in got.items() if m != "agreement"})
    logging.info("eval %s (%.0f s): %s", task, time.time() - t0, metrics[task])
  t0 = time.time()
  baseline_ranks = baselines.evaluate_all(config, ctx, catalog, test_rows, modes)
  baseline_s = time.time() - t0
  metrics["baselines"] = {
      name: {task: {m: metrics_lib.metrics_from_ranks(r) for m, r in per_mode.items()}
             for task, per_mode in per_task.items()}
      for name, per_task in baseline_ranks.items()}
  ranks.update({f"{name}/{task}/{m}": r for name, per_task in baseline_ranks.items()
                for task, per_mode in per_task.items() for m, r in per_mode.items()})
  metrics["tests"] = paired_tests(ranks, metrics["baselines"], modes)
  metrics["tests_by_baseline"] = paired_tests_by_baseline(ranks, metrics["baselines"], modes)
  metrics["settings"] = {"checkpoint_step": bundle.step, "beam_size": int(v.beam_size),
                         "score": v.score, "rank": v.rank,
                         "exact_catalog": bool(v.exact_catalog)}
  path = outputs.save(ctx.dir, metrics, ranks)
  print(summary_text(metrics, path), flush=True)
  return {
      "metrics": metrics,
      "examples": {t: int(len(r["item"])) for t, r in test_rows.items()},
      "checkpoint_step": bundle.step,
      "baselines_s": round(baseline_s, 2),
      "eval_s": round(time.time() - start, 2),
  }


def summary_text(metrics: dict, path) -> str:
  """NDCG@10 ± standard error of every method, per task and protocol, and the file."""
  s = metrics["settings"]
  lines = [f"eval (checkpoint step {s['checkpoint_step']}, score={s['score']}, "
           f"rank={s['rank']}, beam {s['beam_size']}): NDCG@10 ± s.e."]
  for task in schema.TASKS:
    methods = {"GenSAR": metrics[task]}
    methods.update({k: v[task] for k, v in metrics["baselines"].items() if task in v})
    for mode in ranking.MODES:
      cells = [f"{name} {m[mode]['ndcg@10']:.4f} ± {m[mode]['ndcg@10_se']:.4f}"
               for name, m in methods.items() if mode in m]
      if cells:
        lines.append(f"  {task}, {metrics_lib.PROTOCOL_WORDS[mode]}: " + ", ".join(cells))
  lines.append(f"  written to {path}")
  return "\n".join(lines)


def paired_tests(ranks: dict[str, np.ndarray], baseline_metrics: dict,
                 modes) -> dict[str, dict]:
  """GenSAR vs the best baseline (by NDCG@10) of each task and mode: paired t-test."""
  out: dict[str, dict] = {}
  for task in schema.TASKS:
    for mode in modes:
      scored = [(m[task][mode]["ndcg@10"], name) for name, m in baseline_metrics.items()
                if mode in m.get(task, {})]
      if not scored or f"gensar/{task}/{mode}" not in ranks:
        continue
      best = max(scored)[1]
      test = metrics_lib.paired_test(ranks[f"gensar/{task}/{mode}"],
                                     ranks[f"{best}/{task}/{mode}"], "ndcg@10")
      out.setdefault(task, {})[mode] = {"versus": best, **test}
  return out


def paired_tests_by_baseline(ranks: dict[str, np.ndarray], baseline_metrics: dict,
                             modes) -> dict[str, dict]:
  """GenSAR vs every baseline of each task and mode: {task: {mode: {baseline: test}}}."""
  out: dict[str, dict] = {}
  for task in schema.TASKS:
    for mode in modes:
      if f"gensar/{task}/{mode}" not in ranks:
        continue
      for name, m in baseline_metrics.items():
        if mode in m.get(task, {}):
          out.setdefault(task, {}).setdefault(mode, {})[name] = metrics_lib.paired_test(
              ranks[f"gensar/{task}/{mode}"], ranks[f"{name}/{task}/{mode}"], "ndcg@10")
  return out
