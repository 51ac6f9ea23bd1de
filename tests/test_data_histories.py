"""Interleaved histories, the leakage rule, filters and leave-one-out (docs/design.md §1.3).

Small hand-made review logs with every expected event position written out.
"""

import numpy as np

from gensar_jax.data import histories
from gensar_jax.data import schema

R, S, P = schema.KIND_REC, schema.KIND_SEARCH, schema.KIND_PAD


def _events(user, item, time, query):
  return histories.interleave(np.asarray(user, np.int64), np.asarray(item, np.int64),
                              np.asarray(time, np.int64), np.asarray(query, np.int32))


# User 0: six reviews, two of them at the same time (t=20), listed out of time order.
# Items 0..5, query of item i = 10 + i. Expected event order (per review, rec first):
#   0:R0 1:S0 | 2:R1 3:S1 | 4:R2 5:S2 | 6:R3 7:S3 | 8:R4 9:S4 | 10:R5 11:S5
TIE_LOG = dict(user=[0, 0, 0, 0, 0, 0], item=[3, 0, 1, 2, 4, 5],
               time=[30, 10, 20, 20, 40, 50], query=[13, 10, 11, 12, 14, 15])


def test_events_are_sorted_by_time_then_review_then_kind():
  ev = _events(**TIE_LOG)
  assert ev.kind.tolist() == [R, S] * 6
  assert ev.item.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
  assert ev.query.tolist() == [-1, 10, -1, 11, -1, 12, -1, 13, -1, 14, -1, 15]
  assert ev.time.tolist() == [10, 10, 20, 20, 20, 20, 30, 30, 40, 40, 50, 50]
  # Every event points back at its review (file position); a review's events are adjacent.
  assert ev.review.tolist() == [1, 1, 2, 2, 3, 3, 0, 0, 4, 4, 5, 5]


def test_reviews_without_query_are_rec_events_only():
  ev = _events(user=[1, 0, 0], item=[7, 8, 9], time=[5, 6, 5], query=[-1, 3, -1])
  assert ev.user.tolist() == [0, 0, 0, 1]
  assert ev.kind.tolist() == [R, R, S, R]
  assert ev.item.tolist() == [9, 8, 8, 7]


def test_search_target_never_sees_its_own_rec_event():
  ev = _events(**TIE_LOG)
  tt = histories.task_targets(ev, S, max_rec=5, max_src=5, min_targets=3)
  # S0 has no rec event but its own: dropped. S1 sees R0 and S0 but not R1 (its own)
  # nor R2 (a later review at the same time); S2 sees R1 and S1 but not R2.
  expected = {3: [0, 1], 5: [0, 1, 2, 3], 7: [0, 1, 2, 3, 4, 5],
              9: [0, 1, 2, 3, 4, 5, 6, 7], 11: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
  assert tt.event.tolist() == list(expected)
  for e, h in zip(tt.event.tolist(), tt.history.tolist()):
    assert h == expected[e] + [-1] * (10 - len(expected[e]))
    own = ev.review[e]
    assert not any(ev.review[p] == own and ev.kind[p] == R for p in h if p >= 0)
  assert tt.counts == {"targets": 6, "target_without_history": 1,
                       "user_below_min_targets": 0, "targets_of_dropped_users": 0,
                       "users": 1}
  assert tt.split.tolist() == [0, 0, 0, 1, 2]


def test_rec_targets_need_an_earlier_event_of_each_kind():
  ev = _events(**TIE_LOG)
  tt = histories.task_targets(ev, R, max_rec=5, max_src=5, min_targets=3)
  # R0: nothing before. R1: R0, S0. R2: R0, S0, R1, S1 (the earlier review at its time).
  expected = {2: [0, 1], 4: [0, 1, 2, 3], 6: [0, 1, 2, 3, 4, 5], 8: [0, 1, 2, 3, 4, 5, 6, 7],
              10: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
  assert tt.event.tolist() == list(expected)
  assert [h[:len(expected[e])] for e, h in zip(tt.event.tolist(), tt.history.tolist())] == [
      expected[e] for e in expected]
  assert tt.counts["target_without_history"] == 1
  assert tt.split.tolist() == [0, 0, 0, 1, 2]


def test_windows_keep_the_last_rec_events_and_search_sessions():
  ev = _events(**TIE_LOG)
  tt = histories.task_targets(ev, S, max_rec=2, max_src=2, min_targets=3)
  hist = dict(zip(tt.event.tolist(), tt.history.tolist()))
  assert hist[11] == [6, 7, 8, 9]  # R3 S3 R4 S4: R5 (own) skipped, two of each kind.
  assert hist[5] == [0, 1, 2, 3]  # R0 R1 (R2 own), S0 S1.
  tt = histories.task_targets(ev, R, max_rec=2, max_src=1, min_targets=3)
  hist = dict(zip(tt.event.tolist(), tt.history.tolist()))
  assert hist[10] == [6, 8, 9]  # R3 R4 and S4.


def test_default_window_is_five_plus_five_merged_by_time():
  n = 8
  ev = _events(user=[0] * n, item=list(range(n)), time=list(range(n)),
               query=[20 + i for i in range(n)])
  for kind in (R, S):
    tt = histories.task_targets(ev, kind, max_rec=5, max_src=5, min_targets=3)
    rows = histories.rows_of(ev, tt, 2, search=kind == S)
    assert rows["item"].tolist() == [7]
    assert rows["history_kind"].tolist() == [[R, S] * 5]
    assert rows["history_item"].tolist() == [[2, 2, 3, 3, 4, 4, 5, 5, 6, 6]]
    assert rows["history_query"].tolist() == [[-1, 22, -1, 23, -1, 24, -1, 25, -1, 26]]
    assert rows["query"].tolist() == [27 if kind == S else -1]
    assert rows["time"].tolist() == [7] and rows["user"].tolist() == [0]


def test_users_with_fewer_than_min_targets_are_dropped_and_counted():
  # User 0: 3 reviews -> 2 kept targets per task. User 1: a single review.
  # User 2: 4 reviews -> 3 kept targets per task.
  ev = _events(user=[0, 0, 0, 1, 2, 2, 2, 2], item=[0, 1, 2, 0, 3, 4, 5, 6],
               time=[1, 2, 3, 1, 1, 2, 3, 4], query=[0, 1, 2, 0, 3, 4, 5, 6])
  for kind in (R, S):
    tt = histories.task_targets(ev, kind, max_rec=5, max_src=5, min_targets=3)
    assert tt.counts == {"targets": 8, "target_without_history": 3,
                         "user_below_min_targets": 2, "targets_of_dropped_users": 2,
                         "users": 1}
    assert set(ev.user[tt.event].tolist()) == {2}
    assert ev.item[tt.event].tolist() == [4, 5, 6] and tt.split.tolist() == [0, 1, 2]
    tt4 = histories.task_targets(ev, kind, max_rec=5, max_src=5, min_targets=4)
    assert len(tt4.event) == 0 and tt4.counts["user_below_min_targets"] == 3


def test_leave_one_out_per_user_and_padding():
  ev = _events(user=[0] * 5 + [1] * 4, item=[0, 1, 2, 3, 4, 5, 6, 7, 8],
               time=[1, 2, 3, 4, 5, 1, 2, 3, 4], query=[-1] * 9)
  ev.query[:] = -1
  # Without search events nothing has a search history: no targets at all.
  assert len(histories.task_targets(ev, R, 5, 5, 3).event) == 0
  ev = _events(user=[0] * 5 + [1] * 4, item=[0, 1, 2, 3, 4, 5, 6, 7, 8],
               time=[1, 2, 3, 4, 5, 1, 2, 3, 4], query=[0] * 9)
  tt = histories.task_targets(ev, R, 5, 5, 3)
  per_split = [histories.rows_of(ev, tt, k, search=False) for k in range(3)]
  assert per_split[0]["item"].tolist() == [1, 2, 6]
  assert per_split[1]["item"].tolist() == [3, 7]
  assert per_split[2]["item"].tolist() == [4, 8]
  assert per_split[2]["user"].tolist() == [0, 1]
  first = per_split[0]
  assert first["history_kind"][0].tolist() == [R, S] + [P] * 8
  assert first["history_item"][0].tolist() == [0, 0] + [-1] * 8
  assert first["history_query"][0].tolist() == [-1, 0] + [-1] * 8
  for rows in per_split:
    assert {k: v.dtype for k, v in rows.items()} == {
        "user": np.int32, "time": np.int64, "item": np.int32, "query": np.int32,
        "history_kind": np.int32, "history_item": np.int32, "history_query": np.int32}


def test_rec_train_sequences_stop_before_the_validation_target():
  ev = _events(user=[0] * 5 + [1, 2, 2], item=[0, 1, 2, 3, 4, 5, 6, 7],
               time=[1, 2, 3, 4, 5, 1, 1, 2], query=[0] * 8)
  tt = histories.task_targets(ev, R, 5, 5, 3)
  seqs = histories.rec_train_sequences(ev, tt, 3)
  assert [s.tolist() for s in seqs] == [[0, 1, 2], [5], [6, 7]]


def test_same_time_reviews_never_leak_validation_or_test_targets_into_training():
  # One user, eight reviews all at the same second, every review also a search
  # session; a second user with distinct times as a control.
  n = 8
  user = [0] * n + [1] * n
  item = list(range(n)) + list(range(n, 2 * n))
  time = [100] * n + list(range(n))
  query = list(range(2 * n))
  ev = _events(user=user, item=item, time=time, query=query)
  for kind in (R, S):
    tt = histories.task_targets(ev, kind, max_rec=n, max_src=n, min_targets=3)
    held_out = set(tt.event[tt.split > 0].tolist())
    held_out_reviews = {int(ev.review[e]) for e in held_out}
    for e, h in zip(tt.event[tt.split == 0], tt.history[tt.split == 0]):
      seen = {int(ev.review[p]) for p in h if p >= 0}
      # No event of a held-out target's review (of either kind) is in a training history.
      assert not seen & held_out_reviews, (kind, int(e), sorted(seen & held_out_reviews))
      # Every history event comes from a review strictly before the target's review.
      assert all(ev.review[p] < ev.review[e] for p in h if p >= 0 and ev.user[p] == 0)
    # The held-out targets are the user's last reviews in file order.
    user0 = [int(ev.review[e]) for e in held_out if ev.user[e] == 0]
    assert sorted(user0) == [n - 2, n - 1]
