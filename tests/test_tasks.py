"""The task mixture as proportions, and task prompts as `Prompt`s with droppable history."""

import ml_collections
import numpy as np
import pytest

from gensar_jax import prompts
from gensar_jax import tasks
from gensar_jax import tokens
from gensar_jax.data import schema
from gensar_jax.identifiers import table as id_table

N_ITEMS = 12


def _builder(shares, behaviour_tokens=True, prompt_style="instruction", popularity_power=0.0,
             min_passes=0.0, **run):
  catalog = schema.Catalog(
      item_ids=np.array([f"I{i}" for i in range(N_ITEMS)]),
      titles=[f"item {i} gel pen" for i in range(N_ITEMS)],
      descriptions=["" if i % 4 == 0 else "a long description " * 5 for i in range(N_ITEMS)],
      queries=["blue pens", "office chair"], item_queries=[[0]] * N_ITEMS,
      interaction_counts=np.ones(N_ITEMS, np.int64), rec_train_sequences=[])
  codes = np.stack([np.arange(N_ITEMS) // 4, np.arange(N_ITEMS) % 4], 1).astype(np.int32)
  ids = id_table.Identifiers(
      item_ids=catalog.item_ids,
      semantic=id_table.IdentifierTable(codes, ("M1", "S1"), 4),
      collaborative=id_table.IdentifierTable(codes, ("M1", "R1"), 4))
  cfg = ml_collections.ConfigDict(dict(
      behaviour_tokens=behaviour_tokens, num_phrasings=3, max_query_tokens=64,
      max_text_tokens=256, shares=shares, prompt_style=prompt_style,
      nrip_popularity_power=popularity_power, min_passes=min_passes))
  return tasks.TaskBuilder(catalog, ids, cfg, pseudo_queries=[["q"]] * N_ITEMS, **run)


def _rows(n, search):
  h = 10
  kind = np.tile([schema.KIND_REC, schema.KIND_SEARCH] * (h // 2), (n, 1)).astype(np.int32)
  return {"item": np.arange(n) % N_ITEMS, "query": np.zeros(n, np.int32) if search else -np.ones(n),
          "history_kind": kind, "history_item": np.tile(np.arange(h) % N_ITEMS, (n, 1)),
          "history_query": np.where(kind == schema.KIND_SEARCH, 1, -1)}


def test_shares_scale_with_the_number_of_recommendation_rows():
  shares = dict(nrip=1.0, nsip=0.5, nsqp=0.1, adhoc=0.25, desc2id=0.05, id2desc=0.0)
  b = _builder(shares)
  for n_rec in (40, 400):
    train = {"recommendation": _rows(n_rec, False), "search": _rows(n_rec // 2 + 3, True)}
    counts = b.epoch_counts(train)
    assert counts["nrip"] == n_rec
    assert counts["nsip"] == min(round(0.5 * n_rec), n_rec // 2 + 3)
    assert counts["nsqp"] == round(0.1 * n_rec)
    assert counts["adhoc"] == min(round(0.25 * n_rec), N_ITEMS)  # capped at the items
    assert counts["desc2id"] == min(round(0.05 * n_rec), N_ITEMS)  # capped at the items
    assert counts["id2desc"] == 0
    examples = b.epoch_examples(train, seed=0, epoch=1)
    got = {t: sum(e.task == t for e in examples) for t in tasks.TASK_NAMES}
    assert got == counts


def test_bad_shares_are_rejected():
  with pytest.raises(ValueError, match="unknown task"):
    tasks.check_shares({"nrip": 1.0, "bogus": 1.0})
  with pytest.raises(ValueError, match=">= 0"):
    tasks.check_shares({"nrip": -1.0})


def test_training_and_eval_prompts_have_the_same_shape_and_droppable_history():
  b = _builder(dict(nrip=1.0, nsip=1.0))
  rows = _rows(3, True)
  train = {"recommendation": _rows(3, False), "search": rows}
  examples = b.epoch_examples(train, seed=0, epoch=0)
  for e in examples:
    assert isinstance(e.source, prompts.Prompt)
    behaviour = tokens.REC_ITEM if e.task == "nrip" else tokens.SEARCH_ITEM
    assert e.source.text.endswith(behaviour) and e.source.drop == "oldest"
    # A search session is one entry (query then item), so truncation drops it whole.
    assert len(e.source.entries) == 10
  row = {k: v[0] for k, v in rows.items()}
  p = b.eval_source("search", row)
  assert p.tail.endswith(f"{b.query(0)}. Please predict the item the user will click. "
                         f"{tokens.SEARCH_ITEM}")
  assert p.entries[1] == f"{b.query(1)}; {b.search_item(1)}"
  assert p.keeping(0).endswith(tokens.SEARCH_ITEM) and b.query(0) in p.keeping(0)


def test_compact_prompts_keep_history_query_and_behaviour_token_and_drop_the_words():
  shares = dict(nrip=1.0, nsip=1.0, nsqp=1.0, adhoc=1.0, desc2id=1.0, id2desc=1.0)
  full, compact = _builder(shares), _builder(shares, prompt_style="compact")
  train = {"recommendation": _rows(6, False), "search": _rows(6, True)}
  for a, b in zip(full.epoch_examples(train, seed=3, epoch=0),
                  compact.epoch_examples(train, seed=3, epoch=0)):
    assert (a.task, a.target) == (b.task, b.target)  # Same rows, same responses.
    assert len(b.source.text) < len(a.source.text)
    if a.task in ("nrip", "nsip", "nsqp"):
      assert b.source.entries == a.source.entries and b.source.drop == "oldest"
      assert b.source.text.endswith(a.source.text[-5:])  # The same behaviour token.
  row = {k: v[0] for k, v in _rows(1, True).items()}
  hist = compact.row_history(row["history_kind"], row["history_item"], row["history_query"])
  assert compact.eval_source("search", row).text == (
      "; ".join(hist) + f"; {compact.query(0)} {tokens.SEARCH_ITEM}")
  assert compact.eval_source("recommendation", row).text == "; ".join(hist) + f" {tokens.REC_ITEM}"
  with pytest.raises(ValueError, match="prompt_style"):
    _builder(shares, prompt_style="terse")
  with pytest.raises(ValueError, match="behaviour tokens"):
    _builder(shares, behaviour_tokens=False, prompt_style="compact")


def test_warm_start_examples_are_every_recommendation_row_as_identifiers_only():
  b = _builder(dict(nrip=1.0))
  rec = _rows(5, False)
  examples = b.warm_start_examples({"recommendation": rec, "search": _rows(2, True)})
  assert len(examples) == 5 and {e.task for e in examples} == {tasks.WARM_START_TASK}
  for r, e in enumerate(examples):
    assert e.target == b.rec_item(rec["item"][r])
    kinds, items = rec["history_kind"][r], rec["history_item"][r]
    assert e.source.entries == tuple(
        b.rec_item(i) if k == schema.KIND_REC else b.search_item(i) for k, i in zip(kinds, items))
    assert e.source.text.endswith(tokens.REC_ITEM)
    assert "gel pen" not in e.source.text and b.query(1) not in e.source.text  # No words.


def test_popularity_power_flattens_the_targets_of_the_recommendation_rows():
  rec = _rows(400, False)
  rec["item"] = np.where(np.arange(400) < 300, 0, 1 + np.arange(400) % 3)  # item 0: 75%.
  train = {"recommendation": rec, "search": _rows(4, True)}

  def share_of_item_0(power):
    b = _builder(dict(nrip=1.0), popularity_power=power)
    targets = [e.target for e in b.epoch_examples(train, seed=1, epoch=0)]
    assert len(targets) == 400
    return np.mean([t == b.rec_item(0) for t in targets])

  assert share_of_item_0(0.0) == 0.75  # Every row once (the paper's way).
  assert 0.16 < share_of_item_0(1.0) < 0.34  # 4 target items, equally often: ~0.25.
  assert 0.4 < share_of_item_0(0.5) < 0.7  # sqrt(300) / (sqrt(300) + 3 sqrt(33.3)) = 0.5.


def test_min_passes_raises_the_small_tasks_until_the_runs_whole_epochs_cover_them():
  counts = dict(nrip=100, nsip=10, nsqp=1, adhoc=0, desc2id=5, id2desc=5)
  avail = dict(nrip=100, nsip=90, nsqp=90, adhoc=40, desc2id=12, id2desc=12)
  run = 1000  # examples in the run
  out = tasks.counts_for_passes(counts, avail, 1.0, run_examples=run)
  whole_epochs = run // sum(out.values())
  assert out["nrip"] == 100 and out["adhoc"] == 0  # NRIP as its share, an off task stays off
  for t in ("nsip", "nsqp", "desc2id", "id2desc"):
    assert out[t] * whole_epochs >= avail[t]  # every row once in the whole epochs
    assert out[t] >= counts[t] and out[t] <= avail[t]
  assert out["nsip"] == 13 and whole_epochs == 7  # ceil(90 / 7): 1000 / 136 examples an epoch
  # Epochs fixed instead (train.steps = 0): ceil(rows / whole epochs), no fixed point.
  assert tasks.counts_for_passes(counts, avail, 2.0, run_epochs=3.5)["nsqp"] == 60
  # Too short a run: every task at all its rows, which is what the train stage warns about.
  assert tasks.counts_for_passes(counts, avail, 1.0, run_examples=50) == dict(
      nrip=100, nsip=90, nsqp=90, adhoc=0, desc2id=12, id2desc=12)
  with pytest.raises(ValueError, match="run's size"):
    tasks.counts_for_passes(counts, avail, 1.0)


def test_min_passes_shows_every_row_of_every_task_over_the_whole_epochs():
  # 12 search rows, one per item: a row is known by its target.
  train = {"recommendation": _rows(60, False), "search": _rows(N_ITEMS, True)}
  shares = dict(nrip=1.0, nsip=0.02, nsqp=0.02, adhoc=0.02, desc2id=0.02, id2desc=0.02)
  b = _builder(shares, min_passes=1.0, run_examples=300)
  counts = b.epoch_counts(train)
  whole = 300 // sum(counts.values())
  assert whole >= 3 and 1 < counts["nsip"] < N_ITEMS  # raised, yet under all rows an epoch
  seen = {t: [] for t in tasks.TASK_NAMES}
  for epoch in range(whole):
    examples = b.epoch_examples(train, seed=3, epoch=epoch)
    assert {t: sum(e.task == t for e in examples) for t in tasks.TASK_NAMES} == counts
    for e in examples:
      seen[e.task].append(e.target)
  assert {b.search_item(i) for i in range(N_ITEMS)} == set(seen["nsip"])
  assert {b.search_item(i) for i in range(N_ITEMS)} == set(seen["adhoc"])
  assert len(set(seen["id2desc"])) == len({b._texts[i] for i in b._items_with_text})
  # Without the option the same shares sample 1 row an epoch.
  assert _builder(shares).epoch_counts(train)["nsip"] == 1


def test_pick_cycle_takes_consecutive_slices_of_one_order():
  picks = [tasks._pick_cycle(5, 1, e, 10, 4) for e in range(3)]
  assert all(len(p) == 4 and len(set(p)) == 4 for p in picks)
  assert set(np.concatenate(picks[:2])) | set(picks[2]) == set(range(10))
  assert len(set(picks[0]) & set(picks[1])) == 0  # the first 8 of the order, no repeats
  assert np.array_equal(picks[1], tasks._pick_cycle(5, 1, 1, 10, 4))  # the same every call
  assert not np.array_equal(picks[0], tasks._pick_cycle(5, 2, 0, 10, 4))  # per task
