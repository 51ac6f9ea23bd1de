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


def _builder(shares, behaviour_tokens=True):
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
      max_text_tokens=256, shares=shares))
  return tasks.TaskBuilder(catalog, ids, cfg, pseudo_queries=[["q"]] * N_ITEMS)


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
