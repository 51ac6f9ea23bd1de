"""Interleaved histories, target filters and leave-one-out splits (docs/design.md §1.3).

Every review is a recommendation event; a review whose query is >= 0 is also a search
event. Events are totally ordered per user by (time, review order, kind): reviews by
time, reviews at equal times in file order (the tie-break), and within one review its
recommendation event, then its search event. A review's two events therefore stay
together, and no target ever sees an event of a review that comes after its own review
in that order, same-time reviews included (so a training target never sees the user's
validation or test targets, even when all of the user's reviews share one timestamp).

For a target event the history is the last `max_rec` recommendation events and the
last `max_src` search events strictly before it in that order, merged by that order
(oldest first, padding last). A search target never sees the recommendation event of
its own review (the leakage rule). A target is kept when its history holds at least
one event of each kind; a user is kept for a task with at least `min_targets` kept
targets; per user and task the last kept target is test, the second last validation,
the rest train.

All of it is vectorised: one lexsort of the events, cumulative counts per kind and
index arithmetic into the per-kind position lists.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from gensar_jax.data import schema

_BIG = np.iinfo(np.int64).max


@dataclasses.dataclass
class Events:
  """Interleaved events sorted by (user, time, review, kind).

  Attributes:
    user, item, query, kind, time, review: [M] arrays (query -1 for rec events,
      review = index of the source review).
  """

  user: np.ndarray
  item: np.ndarray
  query: np.ndarray
  kind: np.ndarray
  time: np.ndarray
  review: np.ndarray


def interleave(user: np.ndarray, item: np.ndarray, time: np.ndarray,
               review_query: np.ndarray) -> Events:
  """Builds the sorted event list from reviews in file order.

  Args:
    user, item, time: [n] per review (indices and unixReviewTime).
    review_query: [n] query index of the review's search event, -1 for none.
  """
  n = len(user)
  review = np.arange(n, dtype=np.int64)
  has_q = review_query >= 0
  src = review[has_q]
  e_review = np.concatenate([review, src])
  e_kind = np.concatenate([np.full(n, schema.KIND_REC, np.int32),
                           np.full(len(src), schema.KIND_SEARCH, np.int32)])
  e_query = np.concatenate([np.full(n, -1, np.int32), review_query[has_q].astype(np.int32)])
  order = np.lexsort((e_kind, e_review, time[e_review], user[e_review]))
  r = e_review[order]
  return Events(user=user[r].astype(np.int32), item=item[r].astype(np.int32),
                query=e_query[order], kind=e_kind[order], time=time[r].astype(np.int64),
                review=r)


def _group_start(user: np.ndarray) -> np.ndarray:
  """[M] index of the first element of each element's run of equal users."""
  m = len(user)
  if m == 0:
    return np.zeros(0, np.int64)
  first = np.ones(m, bool)
  first[1:] = user[1:] != user[:-1]
  return np.maximum.accumulate(np.where(first, np.arange(m), 0))


def _last_before(pos_of_kind: np.ndarray, count_before: np.ndarray, user_first: np.ndarray,
                 width: int) -> np.ndarray:
  """[T, width] event positions of the last `width` events of one kind before targets.

  Args:
    pos_of_kind: [K] sorted event positions of that kind.
    count_before: [T] number of events of that kind before each target (global).
    user_first: [T] global index (into pos_of_kind) of the user's first such event.
    width: how many to take.

  Returns:
    positions, -1 where the user has fewer.
  """
  idx = count_before[:, None] - width + np.arange(width)[None, :]
  valid = idx >= user_first[:, None]
  safe = np.clip(idx, 0, max(len(pos_of_kind) - 1, 0))
  out = pos_of_kind[safe] if len(pos_of_kind) else np.zeros_like(safe)
  return np.where(valid, out, -1)


@dataclasses.dataclass
class TaskTargets:
  """Kept targets of one task, in event order, with their split.

  Attributes:
    event: [T] event position of each target.
    history: [T, H] event positions of the history (oldest first, -1 padding).
    split: [T] 0 train, 1 validation, 2 test.
    counts: skip counts {"targets", "target_without_history", "user_below_min_targets"
      (every user with fewer than `min_targets` kept targets, none included),
      "targets_of_dropped_users", "users" (users kept)}.
  """

  event: np.ndarray
  history: np.ndarray
  split: np.ndarray
  counts: dict[str, int]


def task_targets(ev: Events, kind: int, max_rec: int, max_src: int,
                 min_targets: int) -> TaskTargets:
  """Histories, filters and leave-one-out for the targets of one kind."""
  is_rec = ev.kind == schema.KIND_REC
  is_src = ev.kind == schema.KIND_SEARCH
  rec_pos = np.flatnonzero(is_rec)
  src_pos = np.flatnonzero(is_src)
  rec_before = np.concatenate([[0], np.cumsum(is_rec)])[:-1]  # [M] rec events before
  src_before = np.concatenate([[0], np.cumsum(is_src)])[:-1]
  start = _group_start(ev.user)
  tgt = np.flatnonzero(ev.kind == kind)
  s = start[tgt]
  search_target = kind == schema.KIND_SEARCH
  # One extra rec candidate for search targets: their own review's rec event is dropped.
  rec_width = max_rec + (1 if search_target else 0)
  rec_c = _last_before(rec_pos, rec_before[tgt], rec_before[s], rec_width)
  if search_target:
    own = (rec_c >= 0) & (ev.review[np.maximum(rec_c, 0)] == ev.review[tgt][:, None])
    rec_c = np.where(own, -1, rec_c)
    # Keep only the last max_rec of the remaining ones.
    later = np.cumsum((rec_c >= 0)[:, ::-1], axis=1)[:, ::-1]
    rec_c = np.where(later <= max_rec, rec_c, -1)
  src_c = _last_before(src_pos, src_before[tgt], src_before[s], max_src)
  n_rec = (rec_c >= 0).sum(1)
  n_src = (src_c >= 0).sum(1)
  hist = np.concatenate([rec_c, src_c], axis=1).astype(np.int64)
  hist = np.sort(np.where(hist >= 0, hist, _BIG), axis=1)[:, : max_rec + max_src]
  hist = np.where(hist == _BIG, -1, hist)

  keep = (n_rec > 0) & (n_src > 0)
  counts = {"targets": int(len(tgt)), "target_without_history": int((~keep).sum())}
  tgt, hist = tgt[keep], hist[keep]
  users = ev.user[tgt]
  uniq, first, per_user = np.unique(users, return_index=True, return_counts=True)
  n_user = np.repeat(per_user, per_user)  # targets are grouped by user
  rank_from_end = np.repeat(first + per_user, per_user) - np.arange(len(tgt)) - 1
  ok = n_user >= min_targets
  kept_users = int((per_user >= min_targets).sum())
  counts["user_below_min_targets"] = len(np.unique(ev.user)) - kept_users
  counts["targets_of_dropped_users"] = int((~ok).sum())
  counts["users"] = kept_users
  split = np.where(rank_from_end == 0, 2, np.where(rank_from_end == 1, 1, 0))
  return TaskTargets(event=tgt[ok], history=hist[ok], split=split[ok].astype(np.int8),
                     counts=counts)


def rows_of(ev: Events, tt: TaskTargets, split: int, search: bool) -> dict[str, np.ndarray]:
  """The schema row fields (without negatives) of one task's split."""
  sel = tt.split == split
  e = tt.event[sel]
  h = tt.history[sel]
  valid = h >= 0
  hs = np.maximum(h, 0)
  return {
      "user": ev.user[e].astype(np.int32),
      "time": ev.time[e].astype(np.int64),
      "item": ev.item[e].astype(np.int32),
      "query": (ev.query[e] if search else np.full(len(e), -1)).astype(np.int32),
      "history_kind": np.where(valid, ev.kind[hs], schema.KIND_PAD).astype(np.int32),
      "history_item": np.where(valid, ev.item[hs], -1).astype(np.int32),
      "history_query": np.where(valid, ev.query[hs], -1).astype(np.int32),
  }


def rec_train_sequences(ev: Events, rec: TaskTargets, num_users: int) -> list[np.ndarray]:
  """Per user, the recommendation items usable for training, in time order.

  Everything before the user's validation recommendation target; every rec event of
  users without recommendation targets.
  """
  limit = np.full(num_users, _BIG, np.int64)
  val = rec.event[rec.split == 1]
  limit[ev.user[val]] = val
  rec_pos = np.flatnonzero(ev.kind == schema.KIND_REC)
  keep = rec_pos[rec_pos < limit[ev.user[rec_pos]]]
  users = ev.user[keep]
  bounds = np.searchsorted(users, np.arange(num_users + 1))
  items = ev.item[keep].astype(np.int32)
  return [items[bounds[u]:bounds[u + 1]] for u in range(num_users)]
