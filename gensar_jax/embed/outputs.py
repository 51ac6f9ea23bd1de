"""The embed stage's outputs: file names, save, load (what other stages read of it).

In the stage directory, rows in catalog item order:
  semantic.npy       float32 [N, d_s]  text encoder over title + description
  collaborative.npy  float32 [N, d_c]  SASRec's item table (padding row dropped)
  item_ids.npy       str [N]           the catalog's item ids, to check alignment
  sasrec_config.json, sasrec_params.msgpack  the trained SASRec (`load_sasrec`)
"""

from __future__ import annotations

import pathlib

import numpy as np

from gensar_jax.embed import sasrec
from gensar_jax.errors import PipelineError

SEMANTIC = "semantic.npy"
COLLABORATIVE = "collaborative.npy"
ITEM_IDS = "item_ids.npy"
FILE_OF_KIND = {"semantic": SEMANTIC, "collaborative": COLLABORATIVE}  # identifier kind -> file


def save(out_dir: str | pathlib.Path, semantic_NxD: np.ndarray, collaborative_NxD: np.ndarray,
         item_ids: np.ndarray, model: sasrec.SasrecModel) -> None:
  """Writes both embedding matrices (float32), the item ids and the SASRec model."""
  out_dir = pathlib.Path(out_dir)
  np.save(out_dir / SEMANTIC, semantic_NxD.astype(np.float32))
  np.save(out_dir / COLLABORATIVE, collaborative_NxD.astype(np.float32))
  np.save(out_dir / ITEM_IDS, np.asarray(item_ids).astype(str))
  sasrec.save(model, out_dir)


def load_embeddings(embed_dir: str | pathlib.Path, item_ids: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Reads (semantic [N, d_s], collaborative [N, d_c]) written by `save`.

  Args:
    embed_dir: the embed stage's output directory.
    item_ids: when given, the catalog's item ids; a mismatch raises PipelineError.
  """
  embed_dir = pathlib.Path(embed_dir)
  if item_ids is not None:
    stored = np.load(embed_dir / ITEM_IDS)
    if len(stored) != len(item_ids) or not np.array_equal(stored, np.asarray(item_ids).astype(str)):
      raise PipelineError(
          f"{embed_dir / ITEM_IDS} does not match the catalog's items; re-run the embed stage")
  return np.load(embed_dir / SEMANTIC), np.load(embed_dir / COLLABORATIVE)


def load_sasrec(embed_dir: str | pathlib.Path) -> sasrec.SasrecModel:
  """The trained SASRec written by `save`."""
  return sasrec.load(embed_dir)
