"""The doc2query stage's output: `pseudo_queries.json`, its writer and its reader.

`pseudo_queries.json` = {"item_ids": [N], "queries": [N lists of str]}, in catalog item
order (items without text get an empty list). Absent when the stage was switched off.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import numpy as np

from gensar_jax import atomic
from gensar_jax.errors import PipelineError

QUERIES_FILE = "pseudo_queries.json"


def save_pseudo_queries(d2q_dir, item_ids: Sequence, queries: list[list[str]]) -> None:
  """Writes every item's pseudo-queries, aligned with `item_ids`."""
  atomic.write_json_atomic(pathlib.Path(d2q_dir) / QUERIES_FILE, {
      "item_ids": [str(i) for i in item_ids], "queries": queries})


def load_pseudo_queries(d2q_dir, item_ids: np.ndarray) -> list[list[str]] | None:
  """Per item its pseudo-queries, aligned with `item_ids` (None when the stage was off).

  Raises:
    PipelineError: the stored items differ from `item_ids`.
  """
  path = pathlib.Path(d2q_dir) / QUERIES_FILE
  if not path.exists():
    return None
  blob = json.loads(path.read_text())
  if blob["item_ids"] != [str(i) for i in item_ids]:
    raise PipelineError(f"{path} lists other items than the catalog; rerun doc2query")
  return blob["queries"]
