"""The TFDS builder of a processed Amazon category (array_record, no TensorFlow).

One BuilderConfig per category; the raw McAuley folder is the `manual_dir`. Six
splits `{task}_{split}` (schema.split_name) hold exactly the row fields of
`schema.py`, written in processing order (`disable_shuffling=True`).

The catalog travels with the dataset: `download_and_prepare` writes `catalog.json`
(item ids, titles, descriptions, queries, item_queries, user ids) and `catalog.npz`
(interaction counts, training recommendation sequences) into the dataset's version
directory beside `metadata.json` (which holds the processing summary), so
`tfds.builder_from_directory(path)` plus `dataset.load_catalog(path)` is enough.

Writing: TFDS's own writer encodes, serializes and shuffles one example at a time
(~55 µs an example on this machine, minutes at Electronics size). The builder
overrides `_generate_splits` to serialize a whole split at once with numpy
(`serialize_rows`: the same tf.train.Example protos TFDS would write, int64 varints
built vectorised) and to write them with array_record's writer, one record per
chunk as TFDS does but uncompressed (`WRITER_OPTIONS`). `FAST_WRITE = False`
selects TFDS's own path (the tests compare the two). TFDS cannot write a split
without examples, so an empty split is a `PipelineError`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

from array_record.python import array_record_module
import numpy as np
import tensorflow_datasets as tfds

from gensar_jax.data import params as params_lib
from gensar_jax.data import process as process_lib
from gensar_jax.data import schema
from gensar_jax.data.dataset import CATALOG_JSON  # The catalog's files (the reader's names).
from gensar_jax.data.dataset import CATALOG_NPZ
from gensar_jax.errors import PipelineError

# One record per chunk (random access, as TFDS writes them), uncompressed: a row is
# ~0.4-1.3 kB of varints that per-record compression shrinks by only ~5%, while it
# costs ~7x the write time and ~10x the random-read time.
WRITER_OPTIONS = "group_size:1,uncompressed"

# Known McAuley 2014 5-core categories (any other NAME works through `config_for`).
CATEGORIES = (
    "Electronics", "Office_Products", "Cell_Phones_and_Accessories", "Beauty",
    "Sports_and_Outdoors", "Toys_and_Games", "Home_and_Kitchen", "Clothing_Shoes_and_Jewelry",
    "Grocery_and_Gourmet_Food", "Health_and_Personal_Care", "Movies_and_TV", "CDs_and_Vinyl",
    "Kindle_Store", "Books", "Digital_Music", "Tools_and_Home_Improvement", "Video_Games",
    "Automotive", "Pet_Supplies", "Baby", "Musical_Instruments", "Patio_Lawn_and_Garden",
    "Apps_for_Android", "Amazon_Instant_Video", "Demo",
)


@dataclasses.dataclass(eq=False)
class GensarAmazonConfig(tfds.core.BuilderConfig):
  """One category and its processing parameters (`params.Params`; the registered configs
  use its defaults, the paper's protocol)."""

  data_params: params_lib.Params | None = None

  def params(self) -> params_lib.Params:
    return self.data_params


def config_for(params: params_lib.Params) -> GensarAmazonConfig:
  """The BuilderConfig of `params`.

  The registered config of a known category when `params` are its defaults; otherwise
  a custom config named `<category>_<hash of params>` (TFDS refuses a custom config
  that reuses a registered name, and distinct names keep differently processed
  datasets apart under one data_dir).
  """
  fields = dataclasses.asdict(params)
  for registered in GensarAmazon.BUILDER_CONFIGS:
    if registered.name == params.category and registered.params() == params:
      return registered
  digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]
  return GensarAmazonConfig(name=f"{params.category}_{digest}",
                            description=f"Amazon {params.category} ({fields})",
                            data_params=params)


class CatalogMetadata(tfds.core.MetadataDict):
  """metadata.json (the summary) plus the catalog files, saved with the dataset info."""

  processed: process_lib.Processed | None = None

  def save_metadata(self, data_dir):
    super().save_metadata(data_dir)
    if self.processed is not None:
      save_catalog(pathlib.Path(data_dir), self.processed.catalog, self.processed.user_ids)


def save_catalog(out_dir: pathlib.Path, catalog: schema.Catalog, user_ids: np.ndarray) -> None:
  """Writes catalog.json and catalog.npz into `out_dir`."""
  out_dir = pathlib.Path(out_dir)
  blob = {
      "item_ids": [str(a) for a in catalog.item_ids],
      "titles": list(catalog.titles),
      "descriptions": list(catalog.descriptions),
      "queries": list(catalog.queries),
      "item_queries": [list(map(int, q)) for q in catalog.item_queries],
      "user_ids": [str(u) for u in user_ids],
  }
  (out_dir / CATALOG_JSON).write_text(json.dumps(blob))
  seqs = catalog.rec_train_sequences
  offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
  flat = np.concatenate(seqs).astype(np.int32) if seqs else np.zeros(0, np.int32)
  with open(out_dir / CATALOG_NPZ, "wb") as f:
    np.savez(f, interaction_counts=catalog.interaction_counts,
             rec_train_offsets=offsets, rec_train_items=flat)


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Protobuf varints of int64 values: (bytes [..., W] uint8, lengths [...] int64).

  W (<= 10) is the longest varint present; negative values take 10 bytes.
  """
  u = np.asarray(values, np.int64).view(np.uint64)
  length = np.ones(u.shape, np.int64)
  for k in range(1, 10):
    big = u >= np.uint64(1 << (7 * k))
    if not big.any():
      break
    length += big
  width = int(length.max()) if length.size else 1
  out = np.empty(u.shape + (width,), np.uint8)
  for k in range(width):
    group = ((u >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
    out[..., k] = group | ((length > k + 1).astype(np.uint8) << 7)
  return out, length


class _Rows:
  """Byte strings of R rows built from segments of per-row length (vectorised)."""

  def __init__(self, num_rows: int):
    self.num_rows = num_rows
    self.mats: list[np.ndarray] = []
    self.masks: list[np.ndarray] = []
    self.length = np.zeros(num_rows, np.int64)

  def add(self, mat_RxW: np.ndarray, len_R: np.ndarray) -> None:
    mask = np.arange(mat_RxW.shape[1]) < np.asarray(len_R)[:, None]
    self.mats.append(np.broadcast_to(mat_RxW, mask.shape))
    self.masks.append(mask)
    self.length += len_R

  def const(self, data: bytes) -> None:
    self.add(np.frombuffer(data, np.uint8)[None, :],
             np.full(self.num_rows, len(data), np.int64))

  def varint(self, value_R: np.ndarray) -> None:
    self.add(*_varints(value_R))

  def bytes(self) -> tuple[bytes, np.ndarray]:
    """(all rows concatenated, [R + 1] offsets)."""
    flat = np.concatenate(self.mats, axis=1)[np.concatenate(self.masks, axis=1)]
    return flat.tobytes(), np.concatenate([[0], np.cumsum(self.length)])


def _vlen(n: np.ndarray) -> np.ndarray:
  return _varints(n)[1]


def serialize_rows(rows: dict[str, np.ndarray]) -> list[bytes]:
  """tf.train.Example bytes of rows {field: [R] or [R, L] ints} (schema.ROW_FIELDS order).

  Each field becomes a feature with an int64_list (packed), as TFDS encodes integer
  Tensor features; a field of width 0 has an empty int64_list.
  """
  n = len(rows[schema.ROW_FIELDS[0]])
  if n == 0:
    return []
  fields = []
  for key in schema.ROW_FIELDS:
    values = np.asarray(rows[key], np.int64).reshape(n, -1)
    vb, vl = _varints(values)  # [R, L, 10], [R, L]
    packed = vl.sum(1)
    list_len = np.where(packed > 0, 1 + _vlen(packed) + packed, 0)
    feature_len = 1 + _vlen(list_len) + list_len
    entry_len = 2 + len(key) + 1 + _vlen(feature_len) + feature_len
    fields.append((key, vb, vl, packed, list_len, feature_len, entry_len))
  features_len = sum(1 + _vlen(f[6]) + f[6] for f in fields)
  out = _Rows(n)
  out.const(b"\x0a")  # Example.features
  out.varint(features_len)
  for key, vb, vl, packed, list_len, feature_len, entry_len in fields:
    out.const(b"\x0a")  # Features.feature map entry
    out.varint(entry_len)
    out.const(b"\x0a" + bytes([len(key)]) + key.encode() + b"\x12")  # key, then value
    out.varint(feature_len)
    out.const(b"\x1a")  # Feature.int64_list
    out.varint(list_len)
    if vb.shape[1]:
      out.const(b"\x0a")  # Int64List.value, packed
      out.varint(packed)
      mask = np.arange(vb.shape[-1]) < vl[..., None]
      out.mats.append(vb.reshape(n, -1))
      out.masks.append(mask.reshape(n, -1))
      out.length += packed
  blob, offsets = out.bytes()
  offsets = offsets.tolist()
  return [blob[offsets[k]:offsets[k + 1]] for k in range(n)]


def write_split(rows: dict[str, np.ndarray], template, chunk: int = 32_768,
                shard_bytes: int = 1 << 30) -> tuple[list[int], int]:
  """Writes one split's rows as array_record shards named by `template`.

  Shards hold about `shard_bytes` each (sized from the first 1,024 rows).

  Returns:
    (examples per shard, total bytes), as TFDS's SplitInfo wants them.
  """
  n = len(rows[schema.ROW_FIELDS[0]])
  sample = serialize_rows({k: v[:1024] for k, v in rows.items()})
  per_row = sum(map(len, sample)) / max(len(sample), 1)
  num_shards = max(1, int(np.ceil(n * per_row / shard_bytes)))
  bounds = np.linspace(0, n, num_shards + 1).astype(np.int64).tolist()
  total = 0
  for s in range(num_shards):
    path = template.sharded_filepath(shard_index=s, num_shards=num_shards)
    writer = array_record_module.ArrayRecordWriter(str(path), WRITER_OPTIONS)
    for lo in range(bounds[s], bounds[s + 1], chunk):
      hi = min(lo + chunk, bounds[s + 1])
      for record in serialize_rows({k: v[lo:hi] for k, v in rows.items()}):
        writer.write(record)
        total += len(record)
    writer.close()
  return [hi - lo for lo, hi in zip(bounds[:-1], bounds[1:])], total


class GensarAmazon(tfds.core.GeneratorBasedBuilder):
  """GenSAR rows (recommendation and search targets) of one Amazon review category."""

  # 1.0.0: first release (docs/design.md §1 protocol). Bump whenever processing changes.
  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {
      "1.0.0": "Interleaved 5+5 histories, leave-one-out, 99 negatives.",
      "1.1.0": "Repeated (user, item) reviews dropped (earliest kept); linear HTML "
               "stripping (script/style content dropped); invalid UTF-8 / NUL bytes "
               "repaired and counted; users without rows counted; vectorised, "
               "uncompressed split writer; recommendation negatives drawn by index "
               "into the interaction list.",
      "1.2.0": "Events ordered by (time, review, kind): at equal times a review's "
               "recommendation and search events stay together and no target sees an "
               "event of a later review (was: every recommendation event before every "
               "search event at equal times, which leaked held-out targets).",
  }
  FAST_WRITE = True  # Write splits with `write_split` (False: TFDS's example writer).
  BUILDER_CONFIGS = [GensarAmazonConfig(name=c, data_params=params_lib.Params(category=c))
                     for c in CATEGORIES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put one category's McAuley Amazon review files in the manual_dir:
    reviews_NAME_5.json[.gz]  (5-core reviews, https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html
                               or the 2018 release https://nijianmo.github.io/amazon/)
    meta_NAME.json[.gz]       (item metadata of the same release)
  and optionally Ai et al.'s released search data (query_text.txt, train.qrels,
  test.qrels); without them queries are built from the category paths.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config.params()
    h = cfg.max_rec_his_len + cfg.max_src_his_len
    scalar = lambda dt: tfds.features.Scalar(dtype=dt)  # noqa: E731
    vector = lambda n: tfds.features.Tensor(shape=(n,), dtype=np.int32)  # noqa: E731
    return self.dataset_info_from_configs(
        description="GenSAR joint search and recommendation rows (docs/design.md §1).",
        features=tfds.features.FeaturesDict({
            "user": scalar(np.int32),
            "time": scalar(np.int64),
            "item": scalar(np.int32),
            "query": scalar(np.int32),
            "history_kind": vector(h),
            "history_item": vector(h),
            "history_query": vector(h),
            "negatives": vector(None),
        }),
        metadata=CatalogMetadata(),
        disable_shuffling=True,
        homepage="https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html",
    )

  def _process(self, dl_manager) -> process_lib.Processed:
    processed = process_lib.process(dl_manager.manual_dir, self.builder_config.params())
    empty = [name for name, rows in processed.rows.items() if len(rows["user"]) == 0]
    if empty:
      raise PipelineError(
          f"no rows for split(s) {empty} of {dl_manager.manual_dir}: too few users with "
          f"{self.builder_config.params().min_targets}+ targets (see skipped: "
          f"{processed.summary['skipped']})")
    metadata = self.info.metadata
    metadata.processed = processed
    metadata["summary"] = processed.summary
    return processed

  def _generate_splits(self, dl_manager, download_config):
    """Processes the raw folder and writes every split with `write_split`."""
    if not self.FAST_WRITE:
      return super()._generate_splits(dl_manager, download_config)
    processed = self._process(dl_manager)
    infos = []
    for name, rows in processed.rows.items():
      template = self._get_filename_template(split_name=name)
      shard_lengths, num_bytes = write_split(rows, template)
      infos.append(tfds.core.SplitInfo(name=name, shard_lengths=shard_lengths,
                                       num_bytes=num_bytes, filename_template=template))
    return infos

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    processed = self._process(dl_manager)
    return {name: self._generate_examples(rows) for name, rows in processed.rows.items()}

  def _generate_examples(self, rows: dict[str, np.ndarray]):
    n = len(rows["user"])
    fields = [(k, rows[k]) for k in schema.ROW_FIELDS]
    for i in range(n):
      yield i, {k: v[i] for k, v in fields}
