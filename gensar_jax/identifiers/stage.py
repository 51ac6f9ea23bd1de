"""The identifiers stage: train the residual quantizer and write unique identifiers.

Reads `<workdir>/embed/{semantic,collaborative,item_ids}.npy` (`embed/outputs.py`); writes
`identifiers.npz` (see `table.py`), `params.npz` (the kept quantizer parameters) and a
summary with the collision rates before and after resolution, the distinct codes used
at each level (before and after resolution), the best epoch, losses, timings and the
collision curve.
"""

from __future__ import annotations

import pathlib
import time

from absl import logging
import jax
import numpy as np

from gensar_jax import context
from gensar_jax import errors
from gensar_jax import seeds
from gensar_jax import task_kinds
from gensar_jax.embed import outputs as embed_outputs
from gensar_jax.identifiers import build
from gensar_jax.identifiers import quantizer
from gensar_jax.identifiers import resolve
from gensar_jax.identifiers import table
from gensar_jax.identifiers import train as train_lib


INPUTS = ("data", "embed")
CONFIG_KEYS = ("identifiers",)


def validate(config) -> None:
  """Checks the `identifiers` section; raises `PipelineError` with one clear message."""
  q = config.identifiers
  try:
    quantizer.make_plan(q.variant, int(q.num_shared_levels), int(q.num_specific_levels))
  except ValueError as e:
    raise errors.PipelineError(f"config.identifiers: {e}") from None
  checks = [
      (int(q.codebook_size) >= 2, "codebook_size must be at least 2"),
      (int(q.latent_dim) >= 2 and int(q.latent_dim) % 2 == 0, "latent_dim must be even, >= 2"),
      (all(int(h) > 0 for h in q.hidden_dims), "hidden_dims must be positive"),
      (int(q.batch_size) >= 1, "batch_size must be positive"),
      (int(q.epochs) >= 0 and int(q.warmup_epochs) >= 0, "epochs and warmup must be >= 0"),
      (int(q.eval_every_epochs) >= 1, "eval_every_epochs must be >= 1"),
      (float(q.learning_rate) > 0, "learning_rate must be positive"),
      (int(q.sinkhorn_iters) >= 1, "sinkhorn_iters must be >= 1"),
  ]
  for ok, message in checks:
    if not ok:
      raise errors.PipelineError(f"config.identifiers: {message}")


def load_embeddings(embed_dir: pathlib.Path, kinds: tuple[str, ...]):
  """Reads the embed stage's arrays; returns ({kind: [N, d] float32}, item_ids [N])."""
  paths = ({k: embed_dir / embed_outputs.FILE_OF_KIND[k] for k in kinds}
           | {"ids": embed_dir / embed_outputs.ITEM_IDS})
  missing = [str(p) for p in paths.values() if not p.exists()]
  if missing:
    raise errors.PipelineError(f"identifiers: embed outputs missing: {missing}")
  item_ids = np.load(paths["ids"], allow_pickle=False)
  inputs = {}
  for k in kinds:
    x = np.load(paths[k], allow_pickle=False)
    if x.ndim != 2 or len(x) != len(item_ids):
      raise errors.PipelineError(
          f"identifiers: {paths[k]} has shape {x.shape}, expected [{len(item_ids)}, d]"
      )
    if not np.isfinite(x).all():
      raise errors.PipelineError(f"identifiers: {paths[k]} holds NaN or infinite values")
    inputs[k] = x.astype(np.float32)
  if len(item_ids) < 2:
    raise errors.PipelineError(f"identifiers: need at least 2 items, got {len(item_ids)}")
  return inputs, item_ids


def run(config, ctx: context.StageContext) -> dict:
  """Trains the quantizer, resolves collisions, writes identifiers and parameters."""
  validate(config)
  q = config.identifiers
  plan = quantizer.make_plan(q.variant, int(q.num_shared_levels), int(q.num_specific_levels))
  kinds = tuple(k for k in quantizer.KINDS
                if (k == "semantic" and plan.uses_semantic)
                or (k == "collaborative" and plan.uses_collaborative))
  inputs, item_ids = load_embeddings(ctx.input_dir("embed"), kinds)
  model = train_lib.build_model(q, {k: v.shape[1] for k, v in inputs.items()})
  logging.info("identifiers: %s variant on %d items, levels %s", q.variant, len(item_ids),
               plan.all_levels)

  result = train_lib.train(q, model, inputs, seed=seeds.identifiers(config))
  t0 = time.perf_counter()
  try:
    ids, stats = build.build_identifiers(model, result.params, inputs, item_ids)
  except resolve.PrefixFullError as e:
    raise errors.PipelineError(f"identifiers: {e}") from None
  build_s = time.perf_counter() - t0
  table.save(ctx.dir, ids)
  build.save_params(ctx.dir, result.params)

  final = result.curve[-1]
  summary = {
      "variant": q.variant,
      "num_items": int(len(item_ids)),
      "input_dims": {k: int(v.shape[1]) for k, v in inputs.items()},
      "level_names": {k: list(ids.for_task(t).level_names)
                      for k, t in task_kinds.TASK_OF_KIND.items()},
      "codebook_size": int(q.codebook_size),
      "num_params": int(sum(np.size(x) for x in jax.tree.leaves(result.params))),
      "collision_before": stats["collision_before"],
      "collision_after": stats["collision_after"],
      "moved_by_resolution": stats["moved"],
      "code_usage_before": stats["code_usage_before"],
      "code_usage_after": stats["code_usage_after"],
      "best_epoch": result.best_epoch,
      "best_collision_at_eval": result.best_collision,
      "final_losses": {m: final.get(m) for m in train_lib.METRICS},
      "batch_size": result.batch_size,
      "steps_per_epoch": result.steps_per_epoch,
      "steps": result.steps,
      "steps_per_s": round(result.steps_per_s, 3),
      "init_s": round(result.init_s, 2),
      "compile_s": round(result.compile_s, 2),
      "train_s": round(result.train_s, 2),
      "eval_s": round(result.eval_s, 2),
      "build_s": round(build_s, 2),
      "curve": result.curve,
  }
  logging.info("identifiers: collisions before %s, after %s, best epoch %d",
               summary["collision_before"], summary["collision_after"], result.best_epoch)
  return summary
