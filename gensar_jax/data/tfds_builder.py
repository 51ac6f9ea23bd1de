"""The TFDS builder of a processed Amazon category (array_record, no TensorFlow).

One BuilderConfig per category; the raw McAuley folder is the `manual_dir`. Six
splits `{task}_{split}` (schema.split_name) hold exactly the row fields of
`schema.py`, written in processing order (`disable_shuffling=True`).

The catalog travels with the dataset: `download_and_prepare` writes `catalog.json`
(item ids, titles, descriptions, queries, item_queries, user ids) and `catalog.npz`
(interaction counts, training recommendation sequences) into the dataset's version
directory beside `metadata.json` (which holds the processing summary), so
`tfds.builder_from_directory(path)` plus `dataset.load_catalog(path)` is enough.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from gensar_jax.data import process as process_lib
from gensar_jax.data import schema

CATALOG_JSON = "catalog.json"
CATALOG_NPZ = "catalog.npz"

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
  """One category and the processing parameters (defaults = the paper's protocol)."""

  category: str = "Electronics"
  max_rec_his_len: int = 5
  max_src_his_len: int = 5
  min_targets: int = 3
  num_negatives: int = 99
  query_min_word_count: int = 5
  bm25_top_k: int = 200
  seed: int = 42

  def params(self) -> process_lib.Params:
    return process_lib.Params(
        category=self.category, max_rec_his_len=self.max_rec_his_len,
        max_src_his_len=self.max_src_his_len, min_targets=self.min_targets,
        num_negatives=self.num_negatives, query_min_word_count=self.query_min_word_count,
        bm25_top_k=self.bm25_top_k, seed=self.seed)


def config_for(params: process_lib.Params) -> GensarAmazonConfig:
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
                            description=f"Amazon {params.category} ({fields})", **fields)


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


class GensarAmazon(tfds.core.GeneratorBasedBuilder):
  """GenSAR rows (recommendation and search targets) of one Amazon review category."""

  # 1.0.0: first release (DESIGN §1 protocol). Bump whenever processing changes.
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Interleaved 5+5 histories, leave-one-out, 99 negatives."}
  BUILDER_CONFIGS = [GensarAmazonConfig(name=c, category=c) for c in CATEGORIES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put one category's McAuley Amazon review files in the manual_dir:
    reviews_NAME_5.json[.gz]  (5-core reviews, https://cseweb.ucsd.edu/~jmcauley/datasets/amazon/links.html
                               or the 2018 release https://nijianmo.github.io/amazon/)
    meta_NAME.json[.gz]       (item metadata of the same release)
  and optionally Ai et al.'s released search data (query_text.txt, train.qrels,
  test.qrels); without them queries are built from the category paths.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    h = cfg.max_rec_his_len + cfg.max_src_his_len
    scalar = lambda dt: tfds.features.Scalar(dtype=dt)  # noqa: E731
    vector = lambda n: tfds.features.Tensor(shape=(n,), dtype=np.int32)  # noqa: E731
    return self.dataset_info_from_configs(
        description="GenSAR joint search and recommendation rows (DESIGN §1).",
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

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    processed = process_lib.process(dl_manager.manual_dir, self.builder_config.params())
    metadata = self.info.metadata
    metadata.processed = processed
    metadata["summary"] = processed.summary
    return {name: self._generate_examples(rows) for name, rows in processed.rows.items()}

  def _generate_examples(self, rows: dict[str, np.ndarray]):
    n = len(rows["user"])
    fields = [(k, rows[k]) for k in schema.ROW_FIELDS]
    for i in range(n):
      yield i, {k: v[i] for k, v in fields}
