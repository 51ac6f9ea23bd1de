"""SASRec: training examples, the loss, learning planted structure, evaluation, and the
embed stage (both matrices, item order, summary, and no held-out interactions in training).
"""

import dataclasses
import functools
import json
import math

import jax
import numpy as np
import pytest

from gensar_jax import metrics
from gensar_jax import pipeline
from gensar_jax.data import dataset
from gensar_jax.data import schema
from gensar_jax.embed import outputs as embed_outputs
from gensar_jax.embed import sasrec
from tests import test_embed_encoder
from tests.conftest import load_config


def _demo_config():
  """configs/demo.py's config."""
  return load_config("demo")

# ------------------------------------------------------------------ training arrays


def test_training_arrays_cut_windows_of_next_item_pairs():
  inputs, targets = sasrec.training_arrays([np.array([0, 1, 2, 3, 4]), np.array([7]), np.array([])], 3)
  # Tokens are item + 1; the newest window comes first; a 1-item sequence gives nothing.
  np.testing.assert_array_equal(inputs, [[2, 3, 4], [0, 0, 1]])
  np.testing.assert_array_equal(targets, [[3, 4, 5], [0, 0, 2]])
  assert inputs.dtype == targets.dtype == np.int32
  empty_in, empty_tgt = sasrec.training_arrays([np.array([3])], 4)
  assert empty_in.shape == empty_tgt.shape == (0, 4)


def test_training_arrays_hold_each_next_item_pair_of_the_sequences_once():
  rng = np.random.default_rng(0)
  seqs = [rng.integers(0, 50, size=rng.integers(0, 40)) for _ in range(30)]
  inputs, targets = sasrec.training_arrays(seqs, 8)
  got = sorted((int(i), int(t)) for i, t in zip(inputs.ravel(), targets.ravel()) if t)
  want = sorted((int(a) + 1, int(b) + 1) for s in seqs for a, b in zip(s[:-1], s[1:]))
  assert got == want
  # Within a row the target at t is the input at t + 1 (same sequence, one step on).
  both = (targets[:, :-1] != 0) & (inputs[:, 1:] != 0)
  np.testing.assert_array_equal(targets[:, :-1][both], inputs[:, 1:][both])


def test_target_positions_pick_the_real_targets_and_fill_the_capacity():
  targets = np.array([[0, 0, 5, 6], [0, 0, 0, 9]])
  pos, tgt = sasrec.target_positions(targets, capacity=4)
  np.testing.assert_array_equal(pos, [2, 3, 7, 0])
  np.testing.assert_array_equal(tgt, [5, 6, 9, 0])
  with pytest.raises(ValueError, match="3 targets"):
    sasrec.target_positions(targets, capacity=2)


def test_loss_over_target_slots_equals_the_loss_over_every_position():
  config = sasrec.SasrecConfig(num_items=30, max_len=6, hidden=8, num_layers=1, dropout=0.0)
  rng = np.random.default_rng(1)
  inputs, targets = sasrec.training_arrays([rng.integers(0, 30, size=n) for n in (3, 7, 5, 2)], 6)
  assert inputs.shape == (4, 6)
  params = sasrec.init_params(config, jax.random.PRNGKey(0))
  model = sasrec.SASRec(config)
  h, table = jax.jit(lambda p: (model.apply(p, inputs),
                                 model.apply(p, method=sasrec.SASRec.item_table)))(params)
  h, table = np.asarray(h, np.float64), np.asarray(table, np.float64)
  mask = targets > 0
  item = np.maximum(targets - 1, 0)
  logits = h @ table.T
  top = logits.max(-1, keepdims=True)
  own = np.take_along_axis(logits, item[..., None], -1)[..., 0]
  nll = np.log(np.exp(logits - top).sum(-1)) + top[..., 0] - own

  def slots(t_MxBxL):
    return tuple(np.stack(x) for x in zip(*[sasrec.target_positions(t, 32) for t in t_MxBxL]))

  got = {}
  for loss in sasrec.LOSSES:
    fn = jax.jit(functools.partial(sasrec.loss_and_grads, config=dataclasses.replace(config, loss=loss)))
    got[loss] = fn(params, jax.random.PRNGKey(3), inputs[None], *slots(targets[None]))
  # Two microbatches of 2 rows give the mean loss and gradients of one of 4 rows.
  fn = jax.jit(functools.partial(sasrec.loss_and_grads, config=config))
  split = fn(params, jax.random.PRNGKey(3), inputs.reshape(2, 2, 6), *slots(targets.reshape(2, 2, 6)))
  assert float(split[0]) == pytest.approx(float(got["softmax"][0]), rel=1e-6)
  for a, b in zip(jax.tree.leaves(split[1]), jax.tree.leaves(got["softmax"][1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
  assert float(got["softmax"][0]) == pytest.approx(nll[mask].mean(), rel=1e-5)
  # bce: one sampled negative per target, so above the loss with every negative ignored.
  pos_part = np.mean(np.log1p(np.exp(-np.einsum("bld,bld->bl", h, table[item])[mask])))
  assert pos_part < float(got["bce"][0]) < pos_part + 2.0


def test_epochs_visit_every_example_once_in_microbatches():
  assert sasrec.microbatches(128) == (4, 32) and sasrec.microbatches(100) == (4, 25)
  assert sasrec.microbatches(70) == (3, 24) and sasrec.microbatches(8) == (1, 8)
  epoch_orders = sasrec._epoch_orders  # pylint: disable=protected-access
  orders = list(epoch_orders(num=150, batch_size=70, epochs=2, seed=0))
  assert [o.shape for o in orders] == [(3, 3, 24)] * 2
  for order in orders:
    real = order[order >= 0]
    assert sorted(real.tolist()) == list(range(150))
    # Step s holds examples s*70 .. s*70+69 of the epoch's shuffle.
    assert [int((o >= 0).sum()) for o in order] == [70, 70, 10]
  assert not np.array_equal(orders[0], orders[1])


# ---------------------------------------------------------- planted sequential data


def _planted(num_items=200, num_users=400, follow=0.85, seed=0):
  """Users walk a fixed item permutation (next = perm[current]) with probability `follow`.

  The last item of each walk is held out as the test target; training sees the rest.
  Returns (catalog, test rows, full walks).
  """
  rng = np.random.default_rng(seed)
  perm = rng.permutation(num_items)
  walks = []
  for _ in range(num_users):
    walk = [int(rng.integers(num_items))]
    for _ in range(int(rng.integers(6, 13)) - 1):
      walk.append(int(perm[walk[-1]]) if rng.random() < follow else int(rng.integers(num_items)))
    walks.append(np.array(walk))
  catalog = schema.Catalog(
      item_ids=np.array([f"i{i}" for i in range(num_items)]), titles=[""] * num_items,
      descriptions=[""] * num_items, queries=[], item_queries=[[] for _ in range(num_items)],
      interaction_counts=np.ones(num_items, np.int64),
      rec_train_sequences=[w[:-1].astype(np.int32) for w in walks])
  hist = np.full((num_users, 5), -1)
  for u, w in enumerate(walks):
    hist[u, 5 - min(5, len(w) - 1):] = w[:-1][-5:]
  # Rows store history oldest first with padding last.
  kinds = np.where(hist >= 0, schema.KIND_REC, schema.KIND_PAD)
  order = np.argsort(hist < 0, axis=1, kind="stable")
  negatives = np.stack([rng.choice(np.delete(np.arange(num_items), w[-1]), 99, replace=False)
                        for w in walks])
  rows = {"user": np.arange(num_users), "item": np.array([w[-1] for w in walks]),
          "history_kind": np.take_along_axis(kinds, order, 1),
          "history_item": np.take_along_axis(hist, order, 1), "negatives": negatives}
  return catalog, rows, walks


@pytest.fixture(scope="module")
def planted():
  catalog, rows, walks = _planted()
  config = sasrec.SasrecConfig(num_items=catalog.num_items, max_len=12, hidden=32, num_layers=1,
                               dropout=0.1, learning_rate=5e-3, batch_size=64, epochs=10)
  model, summary = sasrec.train(catalog.rec_train_sequences, config, seed=0, progress=False)
  return dict(catalog=catalog, rows=rows, walks=walks, model=model, summary=summary)


def test_sasrec_learns_planted_sequential_structure(planted):
  result = sasrec.evaluate(planted["model"], planted["catalog"], planted["rows"])
  assert result["history_fallbacks"] == 0
  assert result["sampled"]["count"] == result["full"]["count"] == 400
  # Random: 0.10 of 100 candidates, 0.05 of 200 items. Following perm wins 0.85 of the time.
  assert result["sampled"]["hr@10"] > 0.6
  assert result["full"]["hr@10"] > 0.5
  assert result["full"]["ndcg@10"] > 0.3
  assert planted["summary"]["final_loss"] < planted["summary"]["first_epoch_loss"] - 1.0
  assert planted["summary"]["targets"] == sum(len(w) - 2 for w in planted["walks"])


def test_evaluation_ranks_the_target_against_its_candidates_and_the_catalog(planted):
  model, catalog, rows = planted["model"], planted["catalog"], planted["rows"]
  histories, _ = sasrec.row_histories(catalog, rows)
  scores = sasrec.score_all(model, histories)
  assert scores.shape == (400, catalog.num_items)
  target = rows["item"]
  own = scores[np.arange(400), target]
  full_rank = (scores > own[:, None]).sum(1) + 1  # Float scores: no ties.
  cand = np.concatenate([target[:, None], rows["negatives"]], 1)
  sampled_rank = (np.take_along_axis(scores, cand, 1) > own[:, None]).sum(1) + 1
  result = sasrec.evaluate(model, catalog, rows)
  assert result["full"] == metrics.metrics_from_ranks(full_rank)
  assert result["sampled"] == metrics.metrics_from_ranks(sampled_rank)
  assert all(result["sampled"][k] >= result["full"][k] for k in metrics.METRIC_KEYS)
  np.testing.assert_allclose(
      sasrec.score_candidates(model, histories, cand), np.take_along_axis(scores, cand, 1), rtol=1e-6)
  # The history is the whole training sequence, not the row's 5 stored items.
  assert [len(h) for h in histories] == [len(s) for s in catalog.rec_train_sequences]


def test_saved_model_loads_with_the_same_scores(planted, tmp_path):
  sasrec.save(planted["model"], tmp_path)
  back = sasrec.load(tmp_path)
  assert back.config == planted["model"].config
  histories = [w[:-1] for w in planted["walks"][:20]]
  np.testing.assert_array_equal(sasrec.score_all(back, histories),
                                sasrec.score_all(planted["model"], histories))
  np.testing.assert_array_equal(back.item_table(), planted["model"].item_table())
  assert back.item_table().shape == (200, 32)


# ------------------------------------------------------------------ the embed stage


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """The data and embed stages on the demo world, with a tiny text encoder and SASRec.

  Records what each SASRec (the main one, then the BCE baseline) was trained on.
  """
  root = tmp_path_factory.mktemp("embed_stage")
  folder = test_embed_encoder._write_folder(  # pylint: disable=protected-access
      root / "encoder", modules=[("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2")],
      pooling_config={"pooling_mode": "cls"})
  config = _demo_config()
  config.data.raw_dir = str(root / "raw")
  config.embed.text_encoder_dir = str(folder)
  config.embed.sasrec.update(hidden=16, num_layers=1, epochs=2, batch_size=256)
  config.stages = "data,embed"
  seen = []
  real_train = sasrec.train

  def spy(sequences, config, *args, **kwargs):
    seen.append(([np.array(s) for s in sequences], config))
    return real_train(sequences, config, *args, **kwargs)

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sasrec, "train", spy)
    summaries = pipeline.run(config, root / "work")
  return dict(config=config, work=root / "work", summaries=summaries, seen=seen)


def test_embed_stage_writes_both_matrices_in_catalog_order(demo_run):
  out = demo_run["work"] / "embed"
  catalog = dataset.load_catalog(demo_run["work"] / "data")
  n = catalog.num_items
  semantic, collaborative = embed_outputs.load_embeddings(out, catalog.item_ids)
  assert semantic.shape == (n, 16) and collaborative.shape == (n, 16)
  assert semantic.dtype == collaborative.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(semantic, axis=1), 1.0, atol=1e-5)  # Normalize module.
  np.testing.assert_array_equal(np.load(out / embed_outputs.ITEM_IDS), catalog.item_ids)
  # Row i is item i: the semantic row equals encoding that item's text on its own.
  from gensar_jax.embed import text_encoder  # pylint: disable=g-import-not-at-top
  enc = text_encoder.load(demo_run["config"].embed.text_encoder_dir, 256)
  some = [0, n // 2, n - 1]
  np.testing.assert_allclose(text_encoder.encode(enc, [catalog.item_text(i) for i in some]),
                             semantic[some], atol=1e-5)
  np.testing.assert_array_equal(sasrec.load(out).item_table(), collaborative)
  with pytest.raises(pipeline.PipelineError, match="does not match"):
    embed_outputs.load_embeddings(out, catalog.item_ids[::-1])


def test_embed_stage_summary_records_shapes_and_timings_and_no_test_metrics(demo_run):
  summary = json.loads((demo_run["work"] / "embed" / pipeline.SUMMARY).read_text())
  assert summary == demo_run["summaries"]["embed"]
  n = summary["num_items"]
  assert summary["semantic_shape"] == [n, 16] and summary["collaborative_shape"] == [n, 16]
  sem, sas = summary["semantic"], summary["sasrec"]
  assert (sem["pooling"], sem["normalized"], sem["dim"]) == ("cls", True, 16)
  assert sem["encode_s"] > 0 and sem["items_per_s"] > 0 and summary["wall_s"] > 0
  assert sas["train_s"] > 0
  # SASRec's test metrics have one home, the eval stage's baselines.
  assert not {"sampled", "full", "eval_s"} & set(sas)
  # A second run with the same config is served from the cache.
  again = pipeline.run(demo_run["config"], demo_run["work"])
  assert again["embed"] == summary


def test_sasrec_never_trains_on_validation_or_test_interactions(demo_run):
  catalog = dataset.load_catalog(demo_run["work"] / "data")
  (seen, main), (seen_bce, bce) = demo_run["seen"]
  assert (main.loss, bce.loss) == ("softmax", "bce")
  assert dataclasses.replace(bce, loss="softmax") == main  # Otherwise the same settings.
  for sequences in (seen, seen_bce):
    assert len(sequences) == len(catalog.rec_train_sequences)
    for a, b in zip(sequences, catalog.rec_train_sequences):
      np.testing.assert_array_equal(a, b)
  data_dir = demo_run["work"] / "data"
  val = dataset.load_rows(data_dir, "recommendation", "validation")
  test = dataset.load_rows(data_dir, "recommendation", "test")
  val_item = dict(zip(val["user"].tolist(), val["item"].tolist()))
  checked = 0
  for split, rows in (("validation", val), ("test", test)):
    for u, kinds, items in zip(rows["user"].tolist(), rows["history_kind"], rows["history_item"]):
      before = items[kinds == schema.KIND_REC].tolist()  # Rec events just before the target.
      if not before or (split == "test" and u not in val_item):
        continue
      # What training saw, plus (for a test target) the validation target before it.
      visible = seen[u].tolist() + ([val_item[u]] if split == "test" else [])
      # The sequence ends exactly where the target's history ends: neither the target
      # nor anything after it was trained on.
      assert visible[-len(before):] == before, (split, u)
      checked += 1
  assert checked > 0.9 * (len(val["user"]) + len(test["user"]))
  # Every training target comes from these sequences only.
  inputs, targets = sasrec.training_arrays(seen, demo_run["config"].embed.sasrec.max_len)
  assert int((targets > 0).sum()) == sum(max(len(s) - 1, 0) for s in seen)
  assert math.isfinite(demo_run["summaries"]["embed"]["sasrec"]["final_loss"])


def test_the_bce_baseline_is_saved_beside_and_leaves_the_collaborative_table_alone(
    demo_run, tmp_path):
  from gensar_jax.embed import stage as embed_stage  # pylint: disable=g-import-not-at-top

  out = demo_run["work"] / "embed"
  assert embed_outputs.has_sasrec(out, "softmax") and embed_outputs.has_sasrec(out, "bce")
  main, bce = embed_outputs.load_sasrec(out), embed_outputs.load_sasrec(out, "bce")
  assert (main.config.loss, bce.config.loss) == ("softmax", "bce")
  assert not np.array_equal(main.item_table(), bce.item_table())
  assert demo_run["summaries"]["embed"]["sasrec_bce"]["loss"] == "bce"
  # Without the baseline the stage writes a bit-identical collaborative table and no BCE model.
  config = demo_run["config"].copy_and_resolve_references()
  config.embed.sasrec.bce_baseline = False
  catalog = dataset.load_catalog(demo_run["work"] / "data")
  summary = embed_stage.compute(config, catalog, tmp_path)
  np.testing.assert_array_equal(np.load(tmp_path / embed_outputs.COLLABORATIVE),
                                np.load(out / embed_outputs.COLLABORATIVE))
  assert not embed_outputs.has_sasrec(tmp_path, "bce") and "sasrec_bce" not in summary
