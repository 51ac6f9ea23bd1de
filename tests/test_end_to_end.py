"""Every stage on a tiny generated world, in one process, on 8 simulated devices."""

import json

import numpy as np
import pytest

from gensar_jax import pipeline
from gensar_jax import metrics as metrics_lib
from gensar_jax.inference import api
from gensar_jax.inference import stage as infer_stage
from tests.conftest import load_config

STAGES = "data,embed,identifiers,doc2query,train,eval,report,infer"


def tiny_config(**overrides):
  """The demo config shrunk to a world of 80 users and 60 items and tiny models."""
  c = load_config("demo")
  c.stages = STAGES
  c.data.demo_users, c.data.demo_items, c.data.num_negatives = 80, 60, 19
  c.embed.sasrec.update(epochs=2, hidden=16, batch_size=32)
  c.identifiers.update(codebook_size=8, hidden_dims=(32,), latent_dim=16, epochs=30,
                       warmup_epochs=2, batch_size=32, eval_every_epochs=5)
  tiny = dict(d_model=32, d_ff=64, num_encoder_layers=1, num_decoder_layers=1, num_heads=2,
              d_kv=16)
  c.doc2query.update(vocab_size=200, max_text_len=32, generate_batch_size=16)
  c.doc2query.model.update(tiny)
  c.doc2query.train.update(batch_size=16, epochs=1, log_every_steps=5)
  c.tokenizer.vocab_size = 300
  c.model.update(tiny)
  c.tasks.shares.update(nsip=1.0, nsqp=0.2, adhoc=0.2, desc2id=0.2, id2desc=0.2)
  c.tasks.max_source_len = 128
  c.train.update(batch_size=16, epochs=1, steps=0, eval_rows=16, log_every_steps=5,
                 checkpoint_every_steps=20)
  c.eval.update(beam_size=5, batch_size=8, max_examples=16)
  c.infer.example_requests = 3
  with c.unlocked():
    for key, value in overrides.items():
      set_field(c, key, value)
  return c


def set_field(config, key: str, value) -> None:
  """Sets a dotted field, e.g. `set_field(c, "eval.beam_size", 5)`."""
  *path, last = key.split(".")
  for part in path:
    config = config[part]
  config[last] = value


@pytest.fixture
def finished(tiny_run):
  return tiny_run


def test_every_stage_finishes_with_its_outputs(finished):
  workdir, summaries = finished
  assert list(summaries) == STAGES.split(",")
  for stage in STAGES.split(","):
    assert (workdir / stage / "summary.json").exists(), stage
  assert summaries["data"]["items"] == 60
  assert summaries["identifiers"]["collision_after"] == {"semantic": 0.0, "collaborative": 0.0}
  d2q = summaries["doc2query"]
  assert d2q["items_with_pseudo_query"] + d2q["items_without_text"] <= 60
  assert d2q["items_with_pseudo_query"] > 0
  assert summaries["train"]["steps"] >= 1
  assert summaries["train"]["pseudo_queries"] is True


def test_metrics_json_has_the_documented_shape(finished):
  workdir, _ = finished
  metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
  for task in ("recommendation", "search"):
    for mode in ("sampled", "full"):
      m = metrics[task][mode]
      assert set(metrics_lib.METRIC_KEYS) <= set(m) and m["count"] == 16
      assert all(0.0 <= m[k] <= 1.0 for k in metrics_lib.METRIC_KEYS)
      assert m["hr@1"] <= m["hr@5"] <= m["hr@10"]
  assert set(metrics["baselines"]) == {"sasrec", "sasrec_last5", "sasrec_bce", "bm25", "dense",
                                       "popularity", "cooccurrence", "cooccurrence_last3",
                                       "id_prefix"}
  assert set(metrics["baselines"]["bm25"]) == {"search"}
  for name in ("sasrec_bce", "cooccurrence", "cooccurrence_last3", "id_prefix"):
    per_task = metrics["baselines"][name]
    assert set(per_task) == {"recommendation"} and set(per_task["recommendation"]) == {
        "sampled", "full"}
    assert per_task["recommendation"]["full"]["count"] == 16
    for mode in ("sampled", "full"):
      test = metrics["tests_by_baseline"]["recommendation"][mode][name]
      np.testing.assert_allclose(
          test["mean_diff"], metrics["recommendation"][mode]["ndcg@10"]
          - per_task["recommendation"][mode]["ndcg@10"], atol=1e-12)
  assert metrics["settings"] == {"checkpoint_step": metrics["checkpoint_step"], "beam_size": 5,
                                 "score": "full", "rank": "exact", "exact_catalog": False}
  ranks = np.load(workdir / "eval" / "ranks.npz")
  for task in ("recommendation", "search"):
    t = metrics[task]
    # The headline 100-candidate metrics are the exact ranking's; beam's sit beside them.
    assert t["sampled"] == t["sampled_exact"] and "sampled_beam" in t
    assert set(t["agreement"]) == {"top10_equal", "top1_equal", "same_rank", "top_k"}
    assert t["agreement"]["top_k"] == 5  # the beam (5) is narrower than 10
    assert all(0.0 <= t["agreement"][k] <= 1.0 for k in ("top10_equal", "top1_equal", "same_rank"))
    for mode in ("sampled", "full", "sampled_beam"):
      r = ranks[f"gensar/{task}/{mode}"]
      assert metrics_lib.metrics_from_ranks(r) == t[mode]
      # A standard error is 0 exactly when every row has the same NDCG@10 (ranks past 10
      # all score 0): the tiny model may miss every positive of the whole catalog.
      varies = len(set(np.minimum(np.asarray(r, np.float64), 11).tolist())) > 1
      assert (t[mode]["ndcg@10_se"] > 0) == varies
    # Exact ranks are finite (every candidate is ranked); beam may miss some.
    assert np.all(np.isfinite(ranks[f"gensar/{task}/sampled_exact"]))
    assert ranks[f"gensar/{task}/sampled_exact"].max() <= 20
    test = metrics["tests"][task]["sampled"]
    scores = {b: m[task]["sampled"]["ndcg@10"] for b, m in metrics["baselines"].items()
              if task in m}
    best = test["versus"]  # the best baseline (ties, e.g. both SASRec windows, are allowed)
    assert scores[best] == max(scores.values())
    assert 0.0 <= test["p"] <= 1.0 and test["count"] == 16
    np.testing.assert_allclose(
        test["mean_diff"],
        t["sampled"]["ndcg@10"] - metrics["baselines"][best][task]["sampled"]["ndcg@10"],
        atol=1e-12)
  report = json.loads((workdir / "report" / "results.json").read_text())["methods"]
  assert report[0]["method"] == "GenSAR"
  assert report[0]["search"] == metrics["search"]


def test_a_rerun_skips_every_cached_stage(finished):
  workdir, summaries = finished
  again = pipeline.run(tiny_config(stages="data,embed,identifiers,doc2query,train,eval"), workdir)
  for stage, s in again.items():
    assert s["wall_s"] == summaries[stage]["wall_s"], stage  # read back, not recomputed


def test_inference_answers_equal_the_evaluation_ranking(finished):
  workdir, _ = finished
  model = api.GenSAR.load(workdir)
  from gensar_jax.data import dataset  # pylint: disable=g-import-not-at-top

  rows = dataset.load_rows(workdir / "data", "search", "test")
  lines = infer_stage.example_requests(model, workdir / "data", 3)
  reqs = [json.loads(l) for l in lines]
  assert [r["task"] for r in reqs] == ["recommend", "search", "search"]
  answers = infer_stage.answer_requests(model, lines, 5, progress=False)
  # The eval path on the same test rows: the prompt and the full-catalog decoding.
  for j, req in enumerate(reqs[1:]):
    row = {k: v[j:j + 1] for k, v in rows.items()}
    items, scores = model.ranker.rank_prompts(
        model.bundle.params, "search", model.builder.eval_sources("search", row), None,
        ("full",))["full"]
    want = [str(model.catalog.item_ids[i]) for i in items[0][:3] if i >= 0]
    got = answers[j + 1]["items"]
    assert [h["item_id"] for h in got] == want
    np.testing.assert_allclose([h["score"] for h in got], scores[0][:len(want)], atol=1e-4)
  for a in answers:
    for h in a["items"]:
      assert h["item_id"] in set(model.catalog.item_ids.tolist())


def test_bad_requests_get_error_lines_and_the_rest_are_answered(finished):
  workdir, _ = finished
  model = api.GenSAR.load(workdir)
  item = str(model.catalog.item_ids[0])
  long_history = [["rec", item]] * 9 + [["search", "gel pen", item]] * 7
  lines = [
      json.dumps({"id": "ok", "task": "recommend", "history": [["rec", item]]}),
      json.dumps({"id": "unknown", "task": "recommend", "history": [["rec", "NOPE"]]}),
      json.dumps({"id": "noquery", "task": "search", "history": []}),
      "{not json",
      json.dumps({"id": "long", "task": "search", "query": "pen", "history": long_history}),
      json.dumps({"id": "cands", "task": "search", "query": "pen", "history": [],
                  "candidates": [item, str(model.catalog.item_ids[1])], "k": 2}),
  ]
  answers = infer_stage.answer_requests(model, lines, 5, progress=False)
  assert [a.get("id") for a in answers] == ["ok", "unknown", "noquery", None, "long", "cands"]
  assert "items" in answers[0] and len(answers[0]["items"]) == 5
  assert "unknown item id 'NOPE'" in answers[1]["error"]
  assert "query" in answers[2]["error"]
  assert "malformed JSON" in answers[3]["error"] and answers[3]["line"] == 4
  assert len(answers[4]["items"]) == 5 and "truncated" in answers[4]["notes"][0]
  assert {h["item_id"] for h in answers[5]["items"]} <= {item, str(model.catalog.item_ids[1])}


def test_a_checkpoint_with_other_tokenizer_or_identifiers_is_refused(finished, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top

  from gensar_jax.identifiers import table as id_table  # pylint: disable=g-import-not-at-top
  from gensar_jax.model import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  from gensar_jax.train import outputs as train_outputs  # pylint: disable=g-import-not-at-top

  workdir, _ = finished
  train = tmp_path / "train"
  shutil.copytree(workdir / "train", train)
  train_outputs.load_for_decoding(train)  # The untouched copy restores.
  ids = id_table.load(train)
  codes = ids.semantic.codes.copy()
  codes[[0, 1]] = codes[[1, 0]]  # Two items swap identifiers.
  id_table.save(train, id_table.Identifiers(
      ids.item_ids, id_table.IdentifierTable(codes, ids.semantic.level_names,
                                             ids.semantic.codebook_size), ids.collaborative))
  with pytest.raises(pipeline.PipelineError, match="identifier tables .* differ"):
    train_outputs.load_for_decoding(train)
  shutil.copy(workdir / "train" / id_table.FILENAME, train / id_table.FILENAME)
  tok = tok_lib.Tokenizer.load(train / "tokenizer")
  other = tok_lib.add_gensar_tokens(tok_lib.train_backend(["other words entirely"] * 20, 60),
                                    list(tok.level_offsets), tok.codebook_size)
  other.save(train / "tokenizer")
  with pytest.raises(pipeline.PipelineError, match="tokenizer .* differs"):
    train_outputs.load_for_decoding(train)


def test_eval_refuses_a_model_trained_on_other_identifiers(finished, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top

  workdir, _ = finished
  copy = tmp_path / "w"
  shutil.copytree(workdir, copy)
  from gensar_jax.identifiers import table as id_table  # pylint: disable=g-import-not-at-top

  ids = id_table.load(copy / "identifiers")
  codes = ids.collaborative.codes.copy()
  codes[[2, 3]] = codes[[3, 2]]
  id_table.save(copy / "identifiers", id_table.Identifiers(
      ids.item_ids, ids.semantic, id_table.IdentifierTable(
          codes, ids.collaborative.level_names, ids.collaborative.codebook_size)))
  # As if the stage itself had written them (else its manifest would rerun it).
  from gensar_jax import file_digests, manifest  # pylint: disable=g-import-not-at-top
  manifest.write(copy / "identifiers", file_digests.DigestCache(None))
  with pytest.raises(pipeline.PipelineError, match="other identifier tables"):
    pipeline.run(tiny_config(stages="eval", **{"eval.max_examples": 4}), copy)


def test_same_config_and_seed_give_bit_identical_results(finished, tmp_path):
  workdir, _ = finished
  again = tmp_path / "again"
  pipeline.run(tiny_config(stages="data,embed,identifiers,doc2query,train,eval"), again)
  for name in ("semantic.npy", "collaborative.npy"):
    np.testing.assert_array_equal(np.load(again / "embed" / name), np.load(workdir / "embed" / name))
  with np.load(workdir / "identifiers" / "identifiers.npz") as a, \
       np.load(again / "identifiers" / "identifiers.npz") as b:
    for key in a.files:
      np.testing.assert_array_equal(a[key], b[key])
  assert ((again / "doc2query" / "pseudo_queries.json").read_text()
          == (workdir / "doc2query" / "pseudo_queries.json").read_text())
  history = lambda d: [json.loads(l) for l in (d / "train" / "metrics.jsonl").read_text().splitlines()]
  # Wall-clock figures (rates, minutes, compile seconds) differ run to run; everything else
  # is bit-identical.
  strip = lambda rows: [{k: v for k, v in r.items()
                         if "per_s" not in k and k not in ("minutes", "compile_s")} for r in rows]
  assert strip(history(again)) == strip(history(workdir))
  first = json.loads((workdir / "eval" / "metrics.json").read_text())
  second = json.loads((again / "eval" / "metrics.json").read_text())
  assert first == second


def test_results_md_header_states_the_settings_of_metrics_json(finished):
  workdir, _ = finished
  metrics = json.loads((workdir / "eval" / "metrics.json").read_text())
  text = (workdir / "report" / "results.md").read_text()
  head = text.split("Metrics are means")[0]
  s = metrics["settings"]
  assert f"checkpoint step {s['checkpoint_step']}; beam {s['beam_size']}; scoring `{s['score']}`" in head
  assert f"ranking of the 100 candidates `{s['rank']}`" in head
  counts = {t: metrics[t]["sampled"]["count"] for t in ("recommendation", "search")}
  assert (f"test rows per task: recommendation {counts['recommendation']}, "
          f"search {counts['search']}") in head
  assert "seed 42" in head and "commit " in head
  links = [l.split("](")[1].split(")")[0] for l in head.splitlines() if l.startswith("- [")]
  assert links and all((workdir / "report" / name).exists() for name in links)


def test_the_python_api_example_prints_answers(finished):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests.conftest import REPO  # pylint: disable=g-import-not-at-top

  workdir, _ = finished
  proc = subprocess.run([sys.executable, str(REPO / "examples" / "ask_a_trained_model.py"),
                         str(workdir)], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0] == "recommendation after 2 events:"
  assert sum(1 for l in lines if l.startswith("  ") and not l.startswith("  note")) == 10


def test_warm_start_trains_first_and_hands_its_parameters_to_the_mixture(tiny_run, tmp_path):
  workdir, summaries = tiny_run
  # The mixture stops after its first step (max_steps; its schedule is the full run's).
  config = tiny_config(**{"train.warm_start_steps": 30, "train.warm_start_learning_rate": 3e-3,
                          "train.eval_rows": 0, "train.max_steps": 1})
  config.stages = "data,embed,identifiers,doc2query,train"
  config.reuse_from = str(workdir)
  got = pipeline.run(config, tmp_path)["train"]
  warm = got["warm_start"]
  assert warm["steps"] == 30 and warm["loss_end"] < 0.7 * warm["loss_start"]  # It learns.
  assert (tmp_path / "train" / "warm_start" / "metrics.jsonl").exists()

  def first_loss(run_dir):
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in records if r["kind"] == "train" and r["step"] == 1)

  # The mixture starts from the warm start's parameters: the recommendation half of its
  # first batch is already predictable, so its first loss is below the cold start's.
  assert first_loss(tmp_path / "train") < first_loss(workdir / "train") - 0.5
  assert got["total_steps"] == summaries["train"]["total_steps"]  # Its own schedule.
  # Every NRIP row is in every epoch: its passes are the run's epochs.
  epochs = got["steps"] * 16 / sum(got["epoch_examples"].values())
  assert got["task_passes"]["nrip"] == pytest.approx(epochs, abs=1e-3)


def test_infer_decodes_with_the_command_lines_beam_like_eval(finished, tmp_path):
  workdir, _ = finished
  config = tiny_config(stages="data,embed,identifiers,doc2query,train,infer",
                       **{"eval.beam_size": 3})
  config.reuse_from = str(workdir)  # The finished stages are linked, not recomputed.
  summary = pipeline.run(config, tmp_path)["infer"]
  answers = [json.loads(x) for x in
             (tmp_path / "infer" / "example_answers.jsonl").read_text().splitlines()]
  assert len(answers) == 3 and summary
  for a in answers:  # infer.k (10) lowered to the live beam (3), not the trained run's (5).
    assert len(a["items"]) == 3, a
