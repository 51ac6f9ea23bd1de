"""The data stage's contract: tasks, splits, row fields and the catalog.

Rows (one per target; TFDS splits named `{task}_{split}`), each field a numpy array:
  user:           int32 scalar, user index
  time:           int64 scalar, the target's unixReviewTime
  item:           int32 scalar, target item index
  query:          int32 scalar, target query index (-1 for recommendation)
  history_kind:   int32 [H], KIND_REC / KIND_SEARCH / KIND_PAD, oldest first, padding last
  history_item:   int32 [H], item index of each history entry (-1 for padding)
  history_query:  int32 [H], query index of each search entry (-1 otherwise)
  negatives:      int32 [num_negatives] for validation/test rows; empty for train rows
H = max_rec_his_len + max_src_his_len. Indices refer to the catalog below.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gensar_jax import task_kinds

TASKS = task_kinds.TASKS  # The one copy (re-exported for readers of this module).
SPLITS = ("train", "validation", "test")

KIND_PAD = 0  # No history entry.
KIND_REC = 1  # A recommendation event: <R_I> item.
KIND_SEARCH = 2  # A search session: <S_Q> query then <S_I> item.

ROW_FIELDS = (
    "user", "time", "item", "query",
    "history_kind", "history_item", "history_query", "negatives",
)


def split_name(task: str, split: str) -> str:
  """TFDS split name of one task and split, e.g. `search_validation`."""
  if task not in TASKS or split not in SPLITS:
    raise ValueError(f"unknown task/split {task!r}/{split!r}")
  return f"{task}_{split}"


@dataclasses.dataclass(frozen=True)
class Catalog:
  """Items and queries, by index, as the data stage stored them.

  Attributes:
    item_ids: [N] str, the raw item ids (asins); item index order.
    titles: [N] str ("" when absent).
    descriptions: [N] str ("" when absent; HTML stripped).
    queries: [Q] str, query text by query index.
    item_queries: [N] list of int query indices of each item's queries.
    interaction_counts: [N] int64, reviews per item in the processed data.
    rec_train_sequences: [U] list of int32 arrays: each user's recommendation items in
      time order that may be used for training (everything before the user's validation
      recommendation target; all events of users without recommendation targets).
  """

  item_ids: np.ndarray
  titles: list[str]
  descriptions: list[str]
  queries: list[str]
  item_queries: list[list[int]]
  interaction_counts: np.ndarray
  rec_train_sequences: list[np.ndarray]

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  def item_text(self, i: int) -> str:
    """Title and description of item `i`, joined by a space ("" when both are absent)."""
    return " ".join(t for t in (self.titles[i], self.descriptions[i]) if t)

  def train_counts(self) -> np.ndarray:
    """int64 [N]: each item's count in the training recommendation sequences (the
    baselines' "popularity"; no validation or test event is counted)."""
    seqs = [s for s in self.rec_train_sequences if len(s)]
    flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    return np.bincount(flat, minlength=self.num_items).astype(np.int64)


def target_counts(rows, num_items: int) -> np.ndarray:
  """int64 [N]: each item's count among the targets (`item`) of some rows, e.g. the NRIP
  training rows (the target distribution GenSAR is trained on)."""
  return np.bincount(np.asarray(rows["item"], np.int64), minlength=num_items).astype(np.int64)
