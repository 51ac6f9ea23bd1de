"""The embed stage's outputs: file names, save, load (what other stages read of it).

In the stage directory, rows in catalog item order:
  semantic.npy       float32 [N, d_s]  text encoder over title + description
  collaborative.npy  float32 [N, d_c]  SASRec's item table (padding row dropped)
  item_ids.npy       str [N]           the catalog's item ids, to check alignment
  sasrec_config.json, sasrec_params.msgpack  the trained SASRec (`load_sasrec`)
  sasrec_bce/        with `embed.sasrec.bce_baseline`: a second SASRec trained with the
                     binary cross-entropy loss, for evaluation only (`load_sasrec(dir,
                     "bce")`); nothing else reads it
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
# Which trained SASRec -> its folder under the stage directory ("softmax": the one whose
# item table is `collaborative.npy`; "bce": the evaluation-only BCE baseline).
SASREC_FOLDERS = {"softmax": ".", "bce": "sasrec_bce"}


def save(out_dir: str | pathlib.Path, semantic_NxD: np.ndarray, collaborative_NxD: np.ndarray,
         item_ids: np.ndarray, model: sasrec.SasrecModel,
         bce_model: sasrec.SasrecModel | None = None) -> None:
  """Writes both embedding matrices (float32), the item ids and the SASRec model(s).

  Args:
    model: the SASRec whose item table is `collaborative_NxD`.
    bce_model: when given, the evaluation-only BCE SASRec (into `sasrec_bce/`).
  """
  out_dir = pathlib.Path(out_dir)
  np.save(out_dir / SEMANTIC, semantic_NxD.astype(np.float32))
  np.save(out_dir / COLLABORATIVE, collaborative_NxD.astype(np.float32))
  np.save(out_dir / ITEM_IDS, np.asarray(item_ids).astype(str))
  sasrec.save(model, out_dir)
  if bce_model is not None:
    folder = out_dir / SASREC_FOLDERS["bce"]
    folder.mkdir(exist_ok=True)
    sasrec.save(bce_model, folder)


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


def has_sasrec(embed_dir: str | pathlib.Path, which: str = "softmax") -> bool:
  """Whether the embed stage wrote that SASRec ("softmax" or "bce", `SASREC_FOLDERS`)."""
  return (pathlib.Path(embed_dir) / SASREC_FOLDERS[which] / sasrec.PARAMS_FILE).exists()


def load_sasrec(embed_dir: str | pathlib.Path, which: str = "softmax") -> sasrec.SasrecModel:
  """A trained SASRec written by `save`: "softmax" (the main one) or "bce"."""
  return sasrec.load(pathlib.Path(embed_dir) / SASREC_FOLDERS[which])
