"""The train stage: the GenSAR task mixture on a Flax T5, sharded, resumable (docs/design.md §4–5).

Reads the data stage (catalog, training rows, validation rows), the identifiers stage
and, when `config.doc2query.enabled` and that stage has run, the doc2query stage's
pseudo-queries. Builds (or, on resume, reloads) the tokenizer, writes everything
decoding needs next to the checkpoints (`outputs.write_decoding_files`), and trains
with `loop.train`. Validation decodes the last `train.eval_rows` validation rows of
each task against their stored candidates with the ranker eval and inference use
(`gensar_jax.ranking.GenerativeRanker`, ranking by `eval.rank` and `eval.score`, which
the stage declares in `CONFIG_KEYS`); the best checkpoint is the best mean NDCG@5 over
the tasks. `curve.json` / `curve.png` hold the validation curve against wall-clock
minutes (the experiment harness: `train.max_minutes` gives runs an equal budget).
"""

from __future__ import annotations

import pathlib
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from gensar_jax import context
from gensar_jax import errors
from gensar_jax import metrics as metrics_lib
from gensar_jax import ranking
from gensar_jax import seeds
from gensar_jax import sharding
from gensar_jax import tasks as tasks_lib
from gensar_jax.data import dataset
from gensar_jax.data import schema
from gensar_jax.doc2query import outputs as d2q_outputs
from gensar_jax.identifiers import table as id_table
from gensar_jax.model import code_init
from gensar_jax.model import t5 as t5_lib
from gensar_jax.model import tokenizer as tok_lib
from gensar_jax.train import outputs as train_outputs
from gensar_jax.train import curve
from gensar_jax.trainer import logging_utils
from gensar_jax.trainer import loop


INPUTS = ("data", "identifiers", "doc2query")
OPTIONAL_INPUTS = ("doc2query",)
# The eval settings that choose the best checkpoint (validation ranks like eval).
CONFIG_KEYS = ("model", "tokenizer", "tasks", "train", "mesh", "eval.score", "eval.rank")
# Read but not fingerprinted: validation's decoding batch; whether ad-hoc search is on
# (fixed by the doc2query input's fingerprint); the beam width (see config_fingerprint).
ALSO_READS = ("eval.batch_size", "doc2query.enabled", "eval.beam_size")
# Not fingerprinted: who builds the epochs and when the step compiles (the same batches
# and programs either way, tested).
RUNTIME_FIELDS = ("train.epoch_workers", "train.precompile")


def config_fingerprint(config) -> dict:
  """Config values that enter the fingerprint only in some settings: the beam width
  changes checkpoint selection only when validation ranks by beam search (with the
  default exact ranking, evaluating with another beam reuses the trained model)."""
  return {"eval.beam_size": config.eval.beam_size} if config.eval.rank == "beam" else {}


def external_files(config, workdir) -> list[pathlib.Path]:
  """The tokenizer and checkpoint folders it starts from, when given."""
  del workdir
  return [pathlib.Path(p) for p in (config.tokenizer.pretrained_dir,
                                    config.model.init_checkpoint_dir) if p]


def validate(config) -> None:
  """Checks the train, tasks and model sections; one clear message per problem."""
  t = config.train
  checks = [
      (t.batch_size >= 1 and t.grad_accum_steps >= 1, "train.batch_size and grad_accum_steps must be >= 1"),
      (t.batch_size % t.grad_accum_steps == 0,
       f"train.batch_size ({t.batch_size}) must be a multiple of grad_accum_steps ({t.grad_accum_steps})"),
      (t.epochs > 0, "train.epochs must be > 0 (fractions end partway through an epoch)"),
      (t.learning_rate > 0, "train.learning_rate must be positive"),
      (0 <= t.warmup_frac < 1, "train.warmup_frac must lie in [0, 1)"),
      (t.eval_every_epochs >= 1 and t.log_every_steps >= 1 and t.checkpoint_every_steps >= 1,
       "train.eval_every_epochs, log_every_steps and checkpoint_every_steps must be >= 1"),
      (config.model.d_model >= 1 and config.model.num_heads >= 1, "model sizes must be positive"),
      (config.tasks.max_source_len >= 8 and config.tasks.max_target_len >= 4,
       "tasks.max_source_len must be >= 8 and max_target_len >= 4"),
      (config.eval.beam_size >= 1, "eval.beam_size must be >= 1"),
      (config.model.code_init in code_init.CODE_INITS,
       f"model.code_init must be one of {code_init.CODE_INITS}"),
  ]
  for ok, message in checks:
    if not ok:
      raise errors.PipelineError(f"config: {message}")
  if config.data.demo:
    ranking.check_beam(int(config.eval.beam_size), int(config.data.demo_items))
  try:
    shares = tasks_lib.check_shares(dict(config.tasks.shares))
  except ValueError as e:
    raise errors.PipelineError(f"config.tasks: {e}") from None
  if all(c == 0 for c in shares.values()):
    raise errors.PipelineError("config.tasks.shares switches every task off")


def load_pseudo_queries(config, ctx: context.StageContext, item_ids: np.ndarray):
  """Per item its doc2query pseudo-queries, or None (ad-hoc search off or not run).

  `doc2query.enabled` is read, not fingerprinted: the doc2query stage's fingerprint (an
  input of this one) holds it, and that stage writes no pseudo-queries when it is off.
  """
  if not config.doc2query.enabled or not ctx.has_input("doc2query"):
    return None
  return d2q_outputs.load_pseudo_queries(ctx.input_dir("doc2query"), item_ids)


def level_names(identifiers: id_table.Identifiers) -> list[str]:
  """Every identifier level name of both kinds, each once, in order."""
  names: list[str] = []
  for t in (identifiers.semantic, identifiers.collaborative):
    names.extend(n for n in t.level_names if n not in names)
  return names


def make_tokenizer(config, ctx, builder: tasks_lib.TaskBuilder,
                   identifiers: id_table.Identifiers) -> tok_lib.Tokenizer:
  """The run's tokenizer: reloaded from the stage directory on resume, else built."""
  folder = ctx.dir / train_outputs.TOKENIZER
  if (folder / tok_lib.TOKENIZER_FILE).exists():
    return tok_lib.Tokenizer.load(folder)
  tok = tok_lib.build(config.tokenizer, builder.tokenizer_texts(), level_names(identifiers),
                      identifiers.semantic.codebook_size)
  return tok


def make_model(config, vocab_size: int):
  """(T5 module, initial variables): from scratch, or from a local HF T5 checkpoint."""
  if config.model.init_checkpoint_dir:
    from gensar_jax.model import hf_import  # pylint: disable=g-import-not-at-top

    try:
      t5_config, params = hf_import.load(
          config.model.init_checkpoint_dir, vocab_size=vocab_size,
          seed=seeds.model_init(config), dtype=config.model.dtype,
          dropout_rate=float(config.model.dropout_rate))
    except (OSError, KeyError, ValueError) as e:
      raise errors.PipelineError(
          f"config.model.init_checkpoint_dir={config.model.init_checkpoint_dir}: {e}") from None
    logging.info("train: starting from %s (its dimensions replace config.model's)",
                 config.model.init_checkpoint_dir)
  else:
    t5_config = t5_lib.T5Config.from_config(config.model, vocab_size)
    params = t5_lib.init_params(t5_config, jax.random.key(seeds.model_init(config)))
  return t5_lib.T5(t5_config), params


def init_code_embeddings(config, params, tokenizer: tok_lib.Tokenizer, ids_dir):
  """`config.model.code_init == "codebook"`: code-token rows from the quantizer's codebooks."""
  if config.model.code_init == "random":
    return params
  codebooks = code_init.quantizer_codebooks(id_table.load_quantizer_params(ids_dir))
  emb = params["params"]["shared"]["embedding"]
  new = code_init.apply(np.asarray(emb), codebooks, tokenizer.level_offsets,
                        seeds.model_init(config))
  params = jax.tree.map(lambda x: x, params)  # a new tree; the leaves are shared
  params["params"]["shared"]["embedding"] = jax.numpy.asarray(new)
  return params


def task_passes(builder: tasks_lib.TaskBuilder, train_rows, examples: int) -> dict[str, float]:
  """Per task, how many times the run's `examples` cover the rows (or items) it draws from:
  the examples spread over the tasks as in an epoch, divided by what the task can draw
  from (below 1: some rows were never seen; without `tasks.min_passes` rows are sampled
  afresh every epoch, so even at 1 some may be missed)."""
  counts = builder.epoch_counts(train_rows)
  available = builder.available(train_rows)
  epochs = examples / max(sum(counts.values()), 1)
  return {t: round(counts[t] * epochs / available[t], 3) if available[t] else 0.0
          for t in counts}


def warn_short_passes(config, builder: tasks_lib.TaskBuilder, train_rows) -> None:
  """Logs the passes each task's rows get in the run; warns for the tasks under
  `tasks.min_passes` (the run is too short for them: `steps x batch` below the rows)."""
  total = tasks_lib.run_size(config.train)["run_examples"] or int(round(
      float(config.train.epochs) * sum(builder.epoch_counts(train_rows).values())))
  passes = task_passes(builder, train_rows, total)
  logging.info("train: passes over each task's rows in the run %s", passes)
  short = {t: p for t, p in passes.items() if 0 < p < builder.min_passes}
  if short:
    logging.warning("train: tasks.min_passes=%s is not met by %s: the run's %d examples are "
                    "too few", builder.min_passes, short, total)


WARM_START_DIR = "warm_start"  # The warm start's checkpoints and log, inside the stage's folder.


def warm_start_section(train_section) -> ml_collections.ConfigDict:
  """The trainer section of the warm start: `train`'s settings with its own steps, budget
  and learning rate (no early stop)."""
  s = ml_collections.ConfigDict(train_section.to_dict())
  s.steps = int(train_section.warm_start_steps)
  s.max_minutes = float(train_section.warm_start_minutes)
  s.learning_rate = float(train_section.warm_start_learning_rate)
  s.max_steps = 0
  return s


def run_warm_start(config, ctx, *, builder, tokenizer, model, params, train_rows, mesh):
  """`train.warm_start_steps` of identifier-only next-item prediction (resumable, in
  `<stage>/warm_start/`); returns (its TrainResult summary, the parameters it ends with)."""
  src, tgt = tasks_lib.encode_examples(tokenizer, builder.warm_start_examples(train_rows),
                                       config.tasks.max_source_len, config.tasks.max_target_len)
  logging.info("train: warm start, %d steps on %d identifier-only rows (%.1f source tokens "
               "on average)", config.train.warm_start_steps, len(src),
               float(np.mean([len(s) for s in src])))
  result = loop.train(warm_start_section(config.train), ctx.dir / WARM_START_DIR, model=model,
                      init_params=params, make_epoch=lambda epoch: (src, tgt),
                      seed=seeds.train(config), mesh=mesh,
                      shard_params=bool(config.mesh.shard_params), name="train.warm_start",
                      precompile=bool(config.train.precompile))
  return result.summary(), result.params


def run(config, ctx: context.StageContext) -> dict:
  """Trains the model; returns the summary (steps, losses, best validation, speed)."""
  start = time.time()
  data_dir = ctx.input_dir("data")
  ids_dir = ctx.input_dir("identifiers")
  catalog = dataset.load_catalog(data_dir)
  ranking.check_beam(int(config.eval.beam_size), catalog.num_items)
  identifiers = id_table.load(ids_dir)
  pseudo = load_pseudo_queries(config, ctx, catalog.item_ids)
  builder = tasks_lib.TaskBuilder(catalog, identifiers, config.tasks, pseudo_queries=pseudo,
                                  **tasks_lib.run_size(config.train))
  train_rows = {t: dataset.load_rows(data_dir, t, "train") for t in schema.TASKS}
  tokenizer = make_tokenizer(config, ctx, builder, identifiers)
  model, params = make_model(config, tokenizer.vocab_size)
  params = init_code_embeddings(config, params, tokenizer, ids_dir)
  if jax.process_index() == 0:
    record = ctx.config_record() if ctx.config_record else config.to_json(indent=2)
    train_outputs.write_decoding_files(ctx.dir, record, model.config, tokenizer, ids_dir)
  logging.info("train: vocabulary %d, %d parameters, epoch mixture %s", tokenizer.vocab_size,
               sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
               builder.epoch_counts(train_rows))
  warn_short_passes(config, builder, train_rows)

  tasks_cfg = config.tasks
  make_epoch = tasks_lib.EpochEncoder(builder, tokenizer, train_rows, seeds.train(config),
                                      tasks_cfg.max_source_len, tasks_cfg.max_target_len)

  mesh = sharding.make_mesh(config.mesh.data_axis)
  warm = None
  if int(config.train.warm_start_steps) > 0:
    warm, params = run_warm_start(config, ctx, builder=builder, tokenizer=tokenizer, model=model,
                                  params=params, train_rows=train_rows, mesh=mesh)
  ranker = ranking.GenerativeRanker(
      model, tokenizer, builder, beam_size=config.eval.beam_size,
      batch_size=config.eval.batch_size, max_source_len=tasks_cfg.max_source_len,
      score=config.eval.score, mesh=mesh)
  val_rows = {}
  for task in schema.TASKS:
    rows = dataset.load_rows(data_dir, task, "validation")
    keep = int(config.train.eval_rows)
    val_rows[task] = {k: v[-keep:] for k, v in rows.items()} if keep > 0 else rows

  def validate_fn(params, step: int) -> dict:
    out, ndcg = {}, []
    for task, rows in val_rows.items():
      if not len(rows["item"]):
        continue
      with metrics_lib.scoring(f"GenSAR at training step {step} on the validation "
                               f"{task} rows"):
        m = ranker.evaluate(params, task, rows, modes=("sampled",), rank=config.eval.rank,
                            progress=f"validate {task}")["sampled"]
      for key in ("ndcg@5", "ndcg@10", "hr@10"):
        out[f"{task}/{key}"], out[f"{task}/{key}_se"] = m[key], m[f"{key}_se"]
      ndcg.append(m["ndcg@5"])
    out["score"] = float(np.mean(ndcg)) if ndcg else 0.0
    logging.info("validation at step %d: %s", step, {k: round(v, 4) for k, v in out.items()})
    return out

  result = loop.train(config.train, ctx.dir, model=model, init_params=params,
                      make_epoch=make_epoch, seed=seeds.train(config), mesh=mesh,
                      shard_params=bool(config.mesh.shard_params),
                      validate=validate_fn if config.train.eval_rows != 0 else None,
                      epoch_workers=int(config.train.epoch_workers),
                      precompile=bool(config.train.precompile))
  summary = result.summary()
  if jax.process_index() == 0:
    curve.write(ctx.dir, logging_utils.read_history(ctx.dir), summary)
  summary.update({
      "vocab_size": tokenizer.vocab_size,
      "parameters": int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))),
      "epoch_examples": builder.epoch_counts(train_rows),
      "task_passes": task_passes(builder, train_rows,
                                 summary["steps"] * int(config.train.batch_size)),
      "pseudo_queries": pseudo is not None,
      "warm_start": warm,
      "devices": int(mesh.devices.size),
      "train_s": round(time.time() - start, 2),
  })
  return summary
