"""Inference on edge cases (issue 16): blank lines, strict types, truncation notes,
per-request errors in batch calls and plain-text messages.

The model is a tiny randomly initialised T5 over a 12-item catalog, built in memory
once per module (no pipeline run): these tests check the request handling around the
decoder, not the quality of its answers.
"""

import json

import jax
import ml_collections
import numpy as np
import pytest

from gensar_jax import tasks
from gensar_jax.data import schema
from gensar_jax.identifiers import table as id_table
from gensar_jax.inference import api
from gensar_jax.inference import stage
from gensar_jax.model import t5 as t5_lib
from gensar_jax.model import tokenizer as tok_lib
from gensar_jax import trained_model
from gensar_jax.train import outputs as train_outputs

N_ITEMS = 12
BEAM = 3
MAX_WORDS = 4  # tasks.max_query_tokens (words)
MAX_SOURCE = 64  # tasks.max_source_len (tokens)
ITEMS = [f"I{i:04d}" for i in range(N_ITEMS)]


@pytest.fixture(scope="module")
def model() -> api.GenSAR:
  catalog = schema.Catalog(
      item_ids=np.array(ITEMS), titles=[f"gel pen {i}" for i in range(N_ITEMS)],
      descriptions=["blue ink office pen"] * N_ITEMS, queries=["blue pens", "office chair"],
      item_queries=[[0]] * N_ITEMS, interaction_counts=np.ones(N_ITEMS, np.int64),
      rec_train_sequences=[])
  codes = np.stack([np.arange(N_ITEMS) // 4, np.arange(N_ITEMS) % 4], 1).astype(np.int32)
  ids = id_table.Identifiers(catalog.item_ids, id_table.IdentifierTable(codes, ("M1", "S1"), 4),
                             id_table.IdentifierTable(codes, ("M1", "R1"), 4))
  config = ml_collections.ConfigDict(dict(
      data=dict(max_rec_his_len=2, max_src_his_len=2),
      tasks=dict(behaviour_tokens=True, num_phrasings=1, max_query_tokens=MAX_WORDS,
                 max_text_tokens=16, shares=dict(nrip=1.0), max_source_len=MAX_SOURCE),
      eval=dict(beam_size=BEAM, batch_size=4, score="full")))
  texts = tasks.TaskBuilder(catalog, ids, config.tasks).tokenizer_texts()
  tok = tok_lib.add_gensar_tokens(tok_lib.train_backend(texts, 400), ["M1", "S1", "R1"], 4)
  t5_config = t5_lib.T5Config(vocab_size=tok.vocab_size, d_model=16, d_ff=32,
                              num_encoder_layers=1, num_decoder_layers=1, num_heads=2, d_kv=8)
  params = t5_lib.init_params(t5_config, jax.random.key(0))
  bundle = train_outputs.DecodingBundle(params, t5_config, tok, ids, config, 0)
  return api.GenSAR(trained_model.TrainedModel(
      bundle, catalog, tasks.TaskBuilder(catalog, ids, config.tasks), t5_lib.T5(t5_config)))


def _line(**req) -> str:
  return json.dumps(req)


def _items(answer: dict) -> list[str]:
  return [h["item_id"] for h in answer["items"]]


# ------------------------------------------------------------------ JSONL lines
def test_blank_lines_are_skipped_and_later_lines_keep_their_numbers(model, tmp_path):
  path = tmp_path / "requests.jsonl"
  text = "\n".join([
      _line(id="a", task="recommend", history=[["rec", ITEMS[0]]]),  # 1
      "",  # 2
      "   \t ",  # 3
      _line(id="b", task="recommend", history=[["rec", "NOPE"]]),  # 4
      "\r",  # 5 (a CRLF blank line)
      # 6: U+2028 inside a JSON string is not a line break
      json.dumps({"id": "c", "task": "search", "query": "gel\u2028pen"}, ensure_ascii=False),
      "{not json",  # 7
  ]) + "\n\n"
  path.write_text("\ufeff" + text, encoding="utf-8")  # with a byte-order mark
  lines = stage.read_request_lines(path)
  assert len(lines) == 8 and lines[2] == "   \t " and lines[4] == ""
  answers = stage.answer_requests(model, lines, 2, progress=False)
  assert [a["line"] for a in answers] == [1, 4, 6, 7]
  assert [a["id"] for a in answers] == ["a", "b", "c", None]
  assert len(answers[0]["items"]) == 2 and answers[0]["notes"] == []
  assert answers[1]["error"] == "line 4: history entry 1: unknown item id 'NOPE'"
  assert answers[1]["field"] == "history"
  assert len(answers[2]["items"]) == 2
  assert answers[3]["error"].startswith("line 7: malformed JSON at column 2")


# ------------------------------------------------------------------ strict types
@pytest.mark.parametrize("k", [True, False, 2.5, 2.0, "2", 0, BEAM + 1, [2]])
def test_k_must_be_an_integer_within_the_beam(model, k):
  ok = _line(id="ok", task="recommend", k=2)
  bad = _line(id="bad", task="recommend", k=k)
  answers = stage.answer_requests(model, [ok, bad], 2, progress=False)
  assert len(answers[0]["items"]) == 2
  err = answers[1]
  assert err["id"] == "bad" and err["line"] == 2 and err["field"] == "k" and "items" not in err
  assert err["error"] == (f"line 2: k must be an integer from 1 to the beam size {BEAM}, "
                          f"got {json.dumps(k)}")
  assert "\n" not in err["error"]


def test_a_missing_k_takes_the_default_lowered_to_the_beam_with_a_note(model):
  answers = stage.answer_requests(model, [_line(task="recommend")], 10, progress=False)
  assert len(answers[0]["items"]) == BEAM
  assert answers[0]["notes"] == [f"k lowered to the beam size {BEAM} (config.infer.k is 10)"]


@pytest.mark.parametrize("req, field, message", [
    ({"task": ["search"]}, "task", 'task must be one of "recommend", "search", got ["search"]'),
    ({"task": "rank"}, "task", 'task must be one of "recommend", "search", got "rank"'),
    ({}, "task", 'task must be one of "recommend", "search", got none'),
    ({"task": "recommend", "id": {"x": 1}}, "id",
     'id must be a string or an integer, got {"x": 1}'),
    ({"task": "recommend", "id": True}, "id", "id must be a string or an integer, got true"),
    ({"task": "recommend", "history": "I0000"}, "history",
     'history must be a list of events, got "I0000"'),
    ({"task": "recommend", "history": [["rec", 7]]}, "history",
     "history entry 1: an item id must be text, got 7"),
    ({"task": "recommend", "history": [["rec", ITEMS[0]], ["search", "", ITEMS[1]]]}, "history",
     "history entry 2: the query must be non-empty text, got ''"),
    ({"task": "recommend", "history": [["click", ITEMS[0]]]}, "history",
     "history entry 1 must be ['rec', item_id] or ['search', query, item_id], "
     "got ['click', 'I0000']"),
    ({"task": "search"}, "query", "a search request needs a non-empty 'query' (text), got none"),
    ({"task": "search", "query": 5}, "query",
     "a search request needs a non-empty 'query' (text), got 5"),
    ({"task": "recommend", "query": "pen"}, "query",
     'query is only for search requests (task "search")'),
    ({"task": "recommend", "candidates": ITEMS[0]}, "candidates",
     'candidates must be a non-empty list of item ids, got "I0000"'),
    ({"task": "recommend", "candidates": []}, "candidates",
     "candidates must be a non-empty list of item ids, got []"),
    ({"task": "recommend", "candidates": [ITEMS[0], "NOPE"]}, "candidates",
     "candidates entry 2: unknown item id 'NOPE'"),
    ({"task": "recommend", "querry": "pen"}, "querry",
     'unknown field "querry" (a request has: id, task, history, query, k, candidates)'),
    (["recommend"], "json", 'a request must be a JSON object, got ["recommend"]'),
])
def test_every_field_is_type_checked_with_a_one_line_message(model, req, field, message):
  answers = stage.answer_requests(model, ["", json.dumps(req)], 2, progress=False)
  assert answers == [{"id": None, "line": 2, "error": f"line 2: {message}", "field": field}]


def test_repeated_fields_and_deep_nesting_are_errors_not_crashes(model):
  lines = ['{"task": "recommend", "k": 1, "k": 3}', "[" * 100_000 + "]" * 100_000]
  answers = stage.answer_requests(model, lines, 2, progress=False)
  assert answers[0]["error"] == 'line 1: field "k" appears twice'
  assert answers[1]["error"].startswith("line 2: malformed JSON")


# ------------------------------------------------------------------ truncation notes
def test_a_long_query_or_history_or_prompt_is_named_in_the_notes(model):
  item = ITEMS[1]
  window = [["rec", ITEMS[i]] for i in range(5)] + [["search", "gel pen", item]] * 3
  lines = [
      _line(id="plain", task="search", query="gel pen", history=[["rec", item]]),
      _line(id="words", task="search", query="blue gel pen for the office", history=[]),
      _line(id="huge", task="search", query="x" * 10_000_000, history=[["rec", item]]),
      _line(id="window", task="recommend", history=window),
      _line(id="entry", task="recommend",
            history=[["search", "a" * 500, item], ["rec", item]]),
  ]
  answers = {a["id"]: a for a in stage.answer_requests(model, lines, 2, progress=False)}
  assert answers["plain"]["notes"] == []
  assert answers["words"]["notes"] == [f"query truncated to its first {MAX_WORDS} of 6 words"]
  chars = api.QUERY_CHARS_PER_TOKEN * MAX_SOURCE
  assert answers["huge"]["notes"] == [
      f"query truncated to its first {chars:,} of 10,000,000 characters",
      f"prompt truncated to the encoder's {MAX_SOURCE} tokens: dropped all 1 history entries "
      f"and cut its start (the model reads its last {MAX_SOURCE - 1} tokens)"]
  assert answers["window"]["notes"] == [
      "history truncated to the model's window: kept the last 2 of 5 recommendation events "
      "and the last 2 of 3 searches"]
  assert answers["entry"]["notes"] == [
      f"prompt truncated to the encoder's {MAX_SOURCE} tokens: dropped the oldest 1 of 2 "
      "history entries"]
  for a in answers.values():
    assert len(a["items"]) == 2
  # The Python API carries the same notes.
  got = model.search([[]], ["blue gel pen for the office"], k=2)[0]
  assert got.ok and got.notes == answers["words"]["notes"] and len(got.hits) == 2


def test_notes_leave_the_answer_equal_to_the_ranker_on_the_cut_prompt(model):
  history = [["rec", ITEMS[i]] for i in range(5)]
  got = model.recommend([history], k=BEAM)[0]
  events = [("rec", i) for i in (3, 4)]  # the window keeps the last 2
  prompt = model.builder.prompt("recommendation", model.builder.history_entries(events))
  items, scores = model.ranker.rank_prompts(model.bundle.params, "recommendation", [prompt],
                                            None, ("full",))["full"]
  assert [h.item_id for h in got.hits] == [ITEMS[i] for i in items[0] if i >= 0]
  np.testing.assert_allclose([h.score for h in got.hits], scores[0][:len(got.hits)])


# ------------------------------------------------------------------ per-request errors
def test_one_bad_request_does_not_fail_the_batch(model):
  good = [["rec", ITEMS[2]], ["search", "gel pen", ITEMS[3]]]
  bad = [["rec", ITEMS[2]], ["rec", "NOPE"]]
  alone = model.recommend([good], k=2)[0]
  answers = model.recommend([good, bad, good], k=2)
  assert alone.ok and len(alone.hits) == 2
  for a in (answers[0], answers[2]):
    assert a.ok and a.notes == alone.notes
    assert [h.item_id for h in a.hits] == [h.item_id for h in alone.hits]
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in alone.hits],
                               rtol=1e-5)
  assert answers[1] == api.Answer(hits=[], notes=[],
                                  error="history entry 2: unknown item id 'NOPE'")
  assert not answers[1].ok
  # Search: an empty query, a bad candidate list, and a good request with candidates.
  cands = [ITEMS[0], ITEMS[5]]
  answers = model.search([good, good, good], ["", "pen", "pen"], k=2,
                         candidates=[None, [ITEMS[0], 3], cands])
  assert answers[0].error == "query must be non-empty text, got ''"
  assert answers[1].error == "candidates entry 2: an item id must be text, got 3"
  assert answers[2].ok and {h.item_id for h in answers[2].hits} <= set(cands)
  assert model.recommend([bad], k=2)[0].error and model.recommend([], k=2) == []


def test_problems_of_the_whole_call_still_raise(model):
  with pytest.raises(api.RequestError, match="k must be an integer, got True"):
    model.recommend([[]], k=True)
  with pytest.raises(api.RequestError, match=f"between 1 and the beam size {BEAM}, got 4"):
    model.recommend([[]], k=np.int64(4))
  with pytest.raises(api.RequestError, match="2 queries for 1 histories"):
    model.search([[]], ["a", "b"], k=1)
  with pytest.raises(api.RequestError, match="queries must be a list"):
    model.search([[]], "pen", k=1)


# ------------------------------------------------------------------ plain-text messages
def test_messages_show_plain_strings_not_numpy_reprs(model):
  s = np.str_
  answers = model.recommend(
      [[("rec", s("NOPE"))], [("rec", s(ITEMS[0]), s("extra"))], [("rec", np.int64(3))]], k=1,
      candidates=None)
  assert [a.error for a in answers] == [
      "history entry 1: unknown item id 'NOPE'",
      "history entry 1 must be ['rec', item_id] or ['search', query, item_id], "
      "got ('rec', 'I0000', 'extra')",
      "history entry 1: an item id must be text, got 3"]
  with pytest.raises(api.RequestError) as e:
    model.item_index(s("NOPE"))
  assert str(e.value) == "unknown item id 'NOPE'"
  # numpy ids that exist are accepted.
  ok = model.recommend([[("rec", model.catalog.item_ids[0])]], k=1,
                       candidates=[model.catalog.item_ids[:4]])[0]
  assert ok.ok and ok.hits[0].item_id in ITEMS[:4] and type(ok.hits[0].item_id) is str
  for a in answers:
    assert "np." not in a.error and "str_" not in a.error
  assert api.show([s("a")] * 20) == "['a', 'a', 'a', 'a', 'a', 'a', 'a', 'a', ...]"
