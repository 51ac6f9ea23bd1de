"""Identifier tables: the item codes the identifiers stage writes and later stages read.

`DIR/identifiers/identifiers.npz` holds, in the data stage's item order:
  item_ids:                 [N] str, the item ids (asins), a check on the order
  semantic_codes:           [N, L] int32, codes of I_{m+s}
  collaborative_codes:      [N, L] int32, codes of I_{m+c}
  semantic_levels:          [L] str, level names, e.g. ["M1", "M2", "S1", "S2"]
  collaborative_levels:     [L] str, e.g. ["M1", "M2", "R1", "R2"]
  codebook_size:            scalar int, K
The single-embedding variants have no shared levels and use one table for both kinds.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from gensar_jax import task_kinds

FILENAME = "identifiers.npz"
PARAMS_FILENAME = "params.npz"  # The trained quantizer's parameters (`build.save_params`).
KINDS = task_kinds.KINDS  # ("semantic", "collaborative")


@dataclasses.dataclass(frozen=True)
class IdentifierTable:
  """One kind of identifier for every item."""

  codes: np.ndarray  # [N, L] int32, code per item and level
  level_names: tuple[str, ...]  # [L] token level names
  codebook_size: int  # K

  @property
  def num_levels(self) -> int:
    return len(self.level_names)


@dataclasses.dataclass(frozen=True)
class Identifiers:
  """Both identifier kinds, aligned with `item_ids`."""

  item_ids: np.ndarray  # [N] str
  semantic: IdentifierTable
  collaborative: IdentifierTable

  def for_task(self, task: str) -> IdentifierTable:
    """The table used for a task: semantic for search, collaborative for recommendation."""
    if task not in task_kinds.KIND_OF_TASK:
      raise ValueError(f"unknown task {task!r}")
    return getattr(self, task_kinds.KIND_OF_TASK[task])


def save(path: str | os.PathLike, ids: Identifiers) -> None:
  """Writes `ids` to `path` (a directory or an .npz file) atomically."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path / FILENAME
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(
      tmp,
      item_ids=np.asarray(ids.item_ids, dtype=str),
      semantic_codes=np.asarray(ids.semantic.codes, dtype=np.int32),
      collaborative_codes=np.asarray(ids.collaborative.codes, dtype=np.int32),
      semantic_levels=np.asarray(ids.semantic.level_names, dtype=str),
      collaborative_levels=np.asarray(ids.collaborative.level_names, dtype=str),
      codebook_size=np.int64(ids.semantic.codebook_size),
  )
  os.replace(tmp, path)


def load(path: str | os.PathLike) -> Identifiers:
  """Reads what `save` wrote (a directory or an .npz file)."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path / FILENAME
  with np.load(path, allow_pickle=False) as f:
    k = int(f["codebook_size"])
    return Identifiers(
        item_ids=f["item_ids"],
        semantic=IdentifierTable(f["semantic_codes"], tuple(f["semantic_levels"].tolist()), k),
        collaborative=IdentifierTable(
            f["collaborative_codes"], tuple(f["collaborative_levels"].tolist()), k
        ),
    )


def load_quantizer_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The trained quantizer's parameters as `build.save_params` wrote them, flat
  ("encoder_semantic/dense_0/kernel": array); `path` is the stage folder or the file."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path / PARAMS_FILENAME
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}
