"""The data stage's processing parameters and their defaults (the paper's protocol).

The one place these defaults are written: `configs/amazon.py` fills its `data` section
from `processing_defaults()`, and the TFDS builder's registered configs
(`tfds_builder.GensarAmazon.BUILDER_CONFIGS`) use them. Kept free of heavy imports so
config files can read it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Params:
  """Processing parameters (the `data` config section, plus the seed)."""

  category: str  # NAME in reviews_NAME_5.json[.gz] and meta_NAME.json[.gz].
  max_rec_his_len: int = 5  # Recommendation events kept in a target's history.
  max_src_his_len: int = 5  # Search sessions kept in a target's history.
  min_targets: int = 3  # A user is kept for a task with at least this many targets.
  num_negatives: int = 99  # Negatives per validation/test target (candidates = 1 + this).
  query_min_word_count: int = 5  # Built queries keep words seen at least this often in reviews.
  bm25_top_k: int = 200  # BM25 hits retrieved per search target before removing the positive.
  seed: int = 42  # The pipeline's top-level `seed`.


# The fields that come from the config's `data` section besides the category, in order.
PROCESSING_FIELDS = tuple(f.name for f in dataclasses.fields(Params)
                          if f.name not in ("category", "seed"))


def processing_defaults() -> dict[str, Any]:
  """{field: default} of `PROCESSING_FIELDS`, in order."""
  return {f.name: f.default for f in dataclasses.fields(Params) if f.name in PROCESSING_FIELDS}
