"""Reading the data stage's outputs: catalog, rows and random access (its contract).

Layout of the data stage's directory (`<workdir>/data`, the `data_dir` below):
  catalog.json, catalog.npz   the catalog (see tfds_builder.save_catalog)
  dataset.json                {"tfds_dir": relative path of the TFDS version dir, ...}
  tfds/gensar_amazon/<category>/<version>/   the TFDS dataset (array_record), which
                              also holds its own copy of catalog.json / catalog.npz
Every function also accepts the TFDS version directory itself as `data_dir`.
"""

from __future__ import annotations

import functools
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from gensar_jax.data import schema
from gensar_jax.errors import PipelineError

POINTER = "dataset.json"
CATALOG_JSON = "catalog.json"
CATALOG_NPZ = "catalog.npz"


def tfds_dir(data_dir) -> pathlib.Path:
  """The TFDS version directory of a data stage directory (or of itself)."""
  data_dir = pathlib.Path(data_dir)
  if (data_dir / "dataset_info.json").exists():
    return data_dir
  pointer = data_dir / POINTER
  if pointer.exists():
    return data_dir / json.loads(pointer.read_text())["tfds_dir"]
  found = sorted(data_dir.glob("tfds/*/*/*/dataset_info.json"))
  if len(found) == 1:
    return found[0].parent
  raise PipelineError(f"no processed dataset in {data_dir}; run the data stage first")


def _catalog_dir(data_dir) -> pathlib.Path:
  data_dir = pathlib.Path(data_dir)
  if (data_dir / CATALOG_JSON).exists():
    return data_dir
  return tfds_dir(data_dir)


@functools.lru_cache(maxsize=8)
def _load_catalog(path: str) -> tuple[schema.Catalog, np.ndarray]:
  folder = pathlib.Path(path)
  try:
    blob = json.loads((folder / CATALOG_JSON).read_text())
    arrays = np.load(folder / CATALOG_NPZ)
  except FileNotFoundError as e:
    raise PipelineError(f"catalog missing in {folder}: {e}") from None
  offsets, flat = arrays["rec_train_offsets"], arrays["rec_train_items"]
  catalog = schema.Catalog(
      item_ids=np.asarray(blob["item_ids"], dtype=str),
      titles=blob["titles"],
      descriptions=blob["descriptions"],
      queries=blob["queries"],
      item_queries=blob["item_queries"],
      interaction_counts=arrays["interaction_counts"].astype(np.int64),
      rec_train_sequences=[flat[offsets[u]:offsets[u + 1]] for u in range(len(offsets) - 1)],
  )
  return catalog, np.asarray(blob["user_ids"], dtype=str)


def load_catalog(data_dir) -> schema.Catalog:
  """The catalog (items, queries, counts, training rec sequences) of a processed dataset."""
  return _load_catalog(str(_catalog_dir(data_dir).resolve()))[0]


def load_user_ids(data_dir) -> np.ndarray:
  """[U] raw reviewerIDs by user index."""
  return _load_catalog(str(_catalog_dir(data_dir).resolve()))[1]


@functools.lru_cache(maxsize=8)
def _builder(path: str):
  return tfds.builder_from_directory(path)


def builder(data_dir):
  """The read-only TFDS builder of the processed dataset."""
  return _builder(str(tfds_dir(data_dir).resolve()))


def data_source(data_dir, task: str, split: str):
  """Random-access TFDS data source of one task's split (rows as dicts of numpy)."""
  name = schema.split_name(task, split)
  b = builder(data_dir)
  if name not in b.info.splits:
    raise PipelineError(f"split {name} missing in {tfds_dir(data_dir)}")
  return b.as_data_source(split=name)


def _dtype(field: str):
  """The schema dtype of a row field (schema.py: int64 time, int32 otherwise)."""
  return np.int64 if field == "time" else np.int32


def load_rows(data_dir, task: str, split: str, chunk: int = 8192) -> dict[str, np.ndarray]:
  """Every row of one task's split stacked: {field: [R, ...]} (negatives [R, 99] or [R, 0]).

  Read through the TFDS data source; dtypes as in schema.py.
  """
  source = data_source(data_dir, task, split)
  n = len(source)
  h = builder(data_dir).info.features["history_item"].shape[0]
  out: dict[str, list[np.ndarray]] = {k: [] for k in schema.ROW_FIELDS}
  for lo in range(0, n, chunk):
    records = source.__getitems__(range(lo, min(lo + chunk, n)))
    for k in schema.ROW_FIELDS:
      out[k].append(np.stack([np.asarray(r[k]) for r in records]))
  if n == 0:
    empty = {"user": (0,), "time": (0,), "item": (0,), "query": (0,),
             "history_kind": (0, h), "history_item": (0, h), "history_query": (0, h),
             "negatives": (0, 0)}
    return {k: np.zeros(s, _dtype(k)) for k, s in empty.items()}
  return {k: np.concatenate(v).astype(_dtype(k)) for k, v in out.items()}
