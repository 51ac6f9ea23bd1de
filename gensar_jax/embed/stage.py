"""The embed stage: semantic (text encoder) and collaborative (SASRec) item embeddings.

Outputs in the stage directory (file names, save and load: `outputs.py`):
`semantic.npy`, `collaborative.npy`, `item_ids.npy` and the trained SASRec.
Items with neither title nor description get the embedding of the empty string (the
encoder's [CLS] [SEP] input); items with a title only are encoded from the title.
SASRec trains on `catalog.rec_train_sequences` only; it is scored as a baseline by the
eval stage (the one place its test metrics are computed). With
`embed.sasrec.bce_baseline` a second SASRec, the same settings and seed but the binary
cross-entropy loss (how GenSAR's paper and most generative-recommendation papers train
it), is trained after the first on the same sequences and saved beside it for the eval
stage's `sasrec_bce` baseline; `collaborative.npy` stays the first one's item table.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from gensar_jax import context
from gensar_jax import errors
from gensar_jax.data import schema
from gensar_jax.embed import outputs
from gensar_jax.embed import sasrec
from gensar_jax.embed import text_encoder

INPUTS = ("data",)
CONFIG_KEYS = ("embed",)


def external_files(config, workdir: pathlib.Path) -> list[pathlib.Path]:
  """The text encoder folder, when one is given (the bundled one is pinned by version)."""
  del workdir
  return [pathlib.Path(config.embed.text_encoder_dir)] if config.embed.text_encoder_dir else []


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks the embed section before any stage runs."""
  e = config.embed
  if e.text_encoder_dir:
    if not pathlib.Path(e.text_encoder_dir).is_dir():
      raise errors.PipelineError(
          f"config.embed.text_encoder_dir {e.text_encoder_dir!r} is not a folder")
  else:
    text_encoder.default_encoder_dir()
  if e.max_text_len < 2 or e.batch_size < 1:
    raise errors.PipelineError("config.embed.max_text_len must be >= 2 and batch_size >= 1")
  s = e.sasrec
  if s.loss not in sasrec.LOSSES:
    raise errors.PipelineError(f"config.embed.sasrec.loss must be one of {sasrec.LOSSES}, got {s.loss!r}")
  if s.hidden % s.num_heads:
    raise errors.PipelineError("config.embed.sasrec.hidden must be divisible by num_heads")


def semantic_embeddings(config: ml_collections.ConfigDict, catalog: schema.Catalog
                        ) -> tuple[np.ndarray, dict[str, Any]]:
  """Encodes every item's title + description; returns [N, d_s] and a summary."""
  e = config.embed
  start = time.time()
  encoder = text_encoder.load(e.text_encoder_dir, e.max_text_len)
  load_s = time.time() - start
  texts = [catalog.item_text(i) for i in range(catalog.num_items)]
  start = time.time()
  vectors = text_encoder.encode(encoder, texts, e.batch_size, progress=True)
  encode_s = time.time() - start
  has_title = np.array([bool(t) for t in catalog.titles])
  has_desc = np.array([bool(d) for d in catalog.descriptions])
  summary = {
      "encoder_dir": str(encoder.folder),
      "pooling": encoder.pooling,
      "normalized": encoder.normalize,
      "max_len": encoder.max_len,
      "dim": encoder.dim,
      "items_without_text": int((~has_title & ~has_desc).sum()),
      "items_title_only": int((has_title & ~has_desc).sum()),
      "without_text_gets": "embedding of the empty string",
      "load_s": round(load_s, 2),
      "encode_s": round(encode_s, 2),
      "items_per_s": round(catalog.num_items / max(encode_s, 1e-9), 1),
  }
  return vectors, summary


def compute(config: ml_collections.ConfigDict, catalog: schema.Catalog,
            out_dir: pathlib.Path) -> dict[str, Any]:
  """Writes both embedding matrices and the SASRec model; returns the stage summary.

  SASRec is not scored here: its test metrics are computed in one place, the eval
  stage's baselines (`gensar_jax.evaluation.baselines`), on GenSAR's rows.

  Args:
    config: the pipeline config (its `embed` section and `seed` are read).
    catalog: the data stage's catalog.
    out_dir: where the outputs go.
  """
  out_dir = pathlib.Path(out_dir)
  semantic_NxD, sem_summary = semantic_embeddings(config, catalog)
  logging.info("embed: %d items encoded in %.1f s", catalog.num_items, sem_summary["encode_s"])
  sas_config = sasrec.SasrecConfig.from_config(config.embed.sasrec.to_dict(), catalog.num_items)
  model, sas_summary = sasrec.train(catalog.rec_train_sequences, sas_config, seed=config.seed)
  collaborative_NxD = model.item_table()
  bce_model, bce_summary = None, None
  if config.embed.sasrec.bce_baseline and sas_config.loss == "bce":
    bce_model, bce_summary = model, {"same_as": "sasrec"}  # The main model already is one.
  elif config.embed.sasrec.bce_baseline:
    # Trained after the main model, from its own PRNGKey(seed): the main model's training
    # and item table are exactly those of a run without this baseline.
    bce_model, bce_summary = sasrec.train(
        catalog.rec_train_sequences, dataclasses.replace(sas_config, loss="bce"),
        seed=config.seed)
  outputs.save(out_dir, semantic_NxD, collaborative_NxD, catalog.item_ids, model, bce_model)
  summary = {
      "num_items": int(catalog.num_items),
      "semantic_shape": list(semantic_NxD.shape),
      "collaborative_shape": list(collaborative_NxD.shape),
      "semantic": sem_summary,
      "sasrec": sas_summary,
  }
  if bce_summary is not None:
    summary["sasrec_bce"] = bce_summary
  return summary


def run(config: ml_collections.ConfigDict, ctx: context.StageContext) -> dict[str, Any]:
  """Stage entry point: reads the data stage, writes the embeddings into `ctx.dir`."""
  from gensar_jax.data import dataset  # pylint: disable=g-import-not-at-top

  catalog = dataset.load_catalog(ctx.input_dir("data"))
  return compute(config, catalog, ctx.dir)

