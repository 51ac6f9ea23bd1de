"""The data stage: raw McAuley folder -> TFDS dataset + catalog under `<workdir>/data`.

With `config.data.demo` the synthetic demo world is generated into the raw folder
first. The TFDS builder (tfds_builder.GensarAmazon) does the processing; this stage
picks the folders, copies the catalog beside the TFDS data, and returns the summary.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import time

from absl import logging
import tensorflow_datasets as tfds

from gensar_jax import atomic
from gensar_jax import context
from gensar_jax.data import dataset
from gensar_jax.data import params as params_lib
from gensar_jax.data import raw
from gensar_jax.data import tfds_builder
from gensar_jax.errors import PipelineError

# Outputs change with the TFDS builder's version (bumped whenever processing changes).
VERSION = str(tfds_builder.GensarAmazon.VERSION)
INPUTS = ()
CONFIG_KEYS = ("data",)


def raw_dir(config, workdir: pathlib.Path) -> pathlib.Path:
  """The raw folder: `config.data.raw_dir`, or `<workdir>/raw` when that is empty."""
  return pathlib.Path(config.data.raw_dir) if config.data.raw_dir else workdir / "raw"


def params_of(config) -> params_lib.Params:
  """Processing parameters from the `data` section and the seed."""
  d = config.data
  return params_lib.Params(category=d.category, seed=config.seed,
                           **{f: d[f] for f in params_lib.PROCESSING_FIELDS})


def external_files(config, workdir: pathlib.Path) -> list[pathlib.Path]:
  """The raw files this stage reads (none for the generated demo world: its config is)."""
  if config.data.demo:
    return []
  files = raw.find_files(config.data.raw_dir, config.data.category)
  return [p for p in (files.reviews, files.meta, files.query_text, files.train_qrels,
                      files.test_qrels) if p is not None]


def validate(config) -> None:
  """Checks the raw folder (unless the demo world will be generated)."""
  d = config.data
  if d.max_rec_his_len < 1 or d.max_src_his_len < 1:
    raise PipelineError("config.data.max_rec_his_len and max_src_his_len must be >= 1")
  if d.min_targets < 3:
    raise PipelineError("config.data.min_targets must be >= 3 (train, validation, test)")
  if d.num_negatives < 0 or d.bm25_top_k < 1:
    raise PipelineError("config.data.num_negatives must be >= 0 and bm25_top_k >= 1")
  if d.demo:
    return
  if not d.raw_dir:
    raise PipelineError("config.data.raw_dir is empty: point it at the folder with "
                        f"reviews_{d.category}_5.json[.gz] and meta_{d.category}.json[.gz]")
  raw.find_files(d.raw_dir, d.category)


def run(config, ctx: context.StageContext) -> dict:
  """Generates the demo world if asked, builds the TFDS dataset, writes the catalog."""
  start = time.time()
  folder = raw_dir(config, ctx.workdir)
  demo_counts = None
  if config.data.demo:
    from gensar_jax.data import demo_world  # pylint: disable=g-import-not-at-top
    folder.mkdir(parents=True, exist_ok=True)
    demo_counts = demo_world.generate(
        folder, category=config.data.category, num_users=config.data.demo_users,
        num_items=config.data.demo_items, seed=config.seed)
  raw.find_files(folder, config.data.category)

  tfds_root = ctx.dir / "tfds"
  if tfds_root.exists():
    shutil.rmtree(tfds_root)
  builder = tfds_builder.GensarAmazon(
      config=tfds_builder.config_for(params_of(config)), data_dir=str(tfds_root),
      file_format="array_record")
  t_prepare = time.time()
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
  t_prepare = time.time() - t_prepare
  version_dir = pathlib.Path(builder.data_dir)
  for name in (tfds_builder.CATALOG_JSON, tfds_builder.CATALOG_NPZ):
    shutil.copyfile(version_dir / name, ctx.dir / name)
  atomic.write_json_atomic(ctx.dir / dataset.POINTER, {
      "tfds_dir": str(version_dir.relative_to(ctx.dir)),
      "builder": builder.name, "config": builder.builder_config.name,
      "version": str(builder.version), "raw_dir": str(folder.resolve()),
  })
  summary = json.loads((version_dir / "metadata.json").read_text())["summary"]
  timings = summary["timings"]
  timings["tfds_write"] = round(t_prepare - sum(timings.values()), 2)
  timings["total"] = round(time.time() - start, 2)
  summary["tfds_dir"] = str(version_dir)
  summary["tfds_version"] = str(builder.version)
  if demo_counts is not None:
    summary["demo"] = dict(demo_counts)
  logging.info("data: %d users, %d items, %d queries, rows %s", summary["users"],
               summary["items"], summary["queries"], summary["rows"])
  return summary
