"""Constrained beam search against a deterministic fake decoder (exact expected values)."""

import jax
import numpy as np
import pytest

from gensar_jax.decoding import beam_search
from gensar_jax.decoding import trie
from tests import beam_fakes as fakes


def _run(table, keys, tok, *, beam, score="allowed", mesh=None, decoder=None):
  vocab = fakes.vocab_size(tok.num_levels, tok.codebook_size)
  decoder = decoder or fakes.FakeDecoder(vocab)
  spec = beam_search.SearchSpec.create(tok, start_token=fakes.START, beam_size=beam, score=score)
  fn = beam_search.make_search_fn(lambda p: decoder, spec, mesh=mesh)
  src = np.stack([np.asarray(keys), np.ones(len(keys))], 1).astype(np.int32)
  ((items, scores),) = fn({}, src, table)
  return np.asarray(items), np.asarray(scores)


def _random_codes(rng, n, levels, k):
  codes = np.unique(rng.integers(0, k, size=(3 * n, levels)), axis=0)
  return codes[rng.permutation(len(codes))[:n]]


@pytest.mark.parametrize("score", ["allowed", "full"])
@pytest.mark.parametrize("first_token,levels,k,beam", [
    (fakes.BEHAVIOUR[2], 3, 5, 12), (None, 3, 5, 12), (fakes.BEHAVIOUR[0], 4, 8, 30)])
@pytest.mark.device
def test_beams_equal_exhaustive_top_when_nothing_is_pruned(score, first_token, levels, k, beam):
  rng = np.random.default_rng(1)
  tok = fakes.level_tokens(levels, k, first_token)
  codes = _random_codes(rng, 3 * beam, levels, k)
  cands = np.stack([rng.permutation(3 * beam)[:beam] for _ in range(4)])  # beam candidates
  tables = trie.build_batched(codes, cands, k)
  keys = [3, 8, 11, 20]
  items, scores = _run(tables, keys, tok, beam=beam, score=score)
  for b, key in enumerate(keys):
    want = fakes.exhaustive(key, tables[b], tok, score)
    np.testing.assert_array_equal(items[b, : len(want)], [i for i, _ in want])
    np.testing.assert_allclose(scores[b, : len(want)], [s for _, s in want], atol=2e-4)


@pytest.mark.parametrize("score", ["allowed", "full"])
def test_pruned_search_matches_reference_beam_and_stays_valid(score):
  rng = np.random.default_rng(2)
  levels, k, beam = 4, 4, 6
  tok = fakes.level_tokens(levels, k)
  codes = _random_codes(rng, 120, levels, k)
  cands = np.stack([rng.permutation(len(codes))[:50] for _ in range(3)])
  tables = trie.build_batched(codes, cands, k)
  keys = [1, 5, 9]
  items, scores = _run(tables, keys, tok, beam=beam, score=score)
  for b, key in enumerate(keys):
    want = fakes.reference_beam(key, tables[b], tok, score, beam)
    np.testing.assert_array_equal(items[b], [i for i, _ in want])
    np.testing.assert_allclose(scores[b], [s for _, s in want], atol=2e-4)
    assert set(items[b]) <= set(cands[b])  # every result is one of its own candidates
    best = fakes.exhaustive(key, tables[b], tok, score)[0]
    assert scores[b, 0] <= best[1] + 1e-4  # nothing scores above the true optimum


def test_property_every_result_is_a_valid_identifier_of_its_set():
  rng = np.random.default_rng(3)
  for trial in range(6):
    levels, k = int(rng.integers(1, 4)), int(rng.integers(2, 6))
    beam = int(rng.integers(1, 9))
    tok = fakes.level_tokens(levels, k, fakes.BEHAVIOUR[trial % 2])
    codes = _random_codes(rng, 30, levels, k)
    n = len(codes)
    cands = np.stack([rng.permutation(n) for _ in range(3)])
    cands = np.where(np.arange(n) < rng.integers(1, n + 1, size=(3, 1)), cands, -1)
    tables = trie.build_batched(codes, cands, k)
    items, scores = _run(tables, [2, 4, 6], tok, beam=beam, score=("allowed", "full")[trial % 2])
    for b in range(3):
      valid = set(cands[b][cands[b] >= 0].tolist())
      got = items[b][items[b] >= 0]
      assert set(got.tolist()) <= valid
      assert len(got) == len(set(got.tolist())) == min(beam, len(valid))
      assert np.all(np.diff(scores[b][items[b] >= 0]) <= 1e-6)  # best first
      assert np.all(np.isneginf(scores[b][items[b] < 0]))


@pytest.mark.device
def test_per_example_sets_do_not_leak():
  levels, k = 2, 3
  tok = fakes.level_tokens(levels, k)
  codes = np.array([[a, b] for a in range(3) for b in range(3)])  # 9 items
  cands = np.array([[0, 1, -1], [4, -1, -1], [6, 7, 8]])
  items, _ = _run(trie.build_batched(codes, cands, k), [1, 1, 1], tok, beam=5)
  assert set(items[0]) == {0, 1, -1} and set(items[1]) == {4, -1} and set(items[2]) == {6, 7, 8, -1}


def test_per_example_sets_do_not_leak_on_the_mesh():
  # Eight examples with the same fake logits (same key) but disjoint candidate sets,
  # sharded over 8 devices: each gets exactly what it gets when decoded alone.
  rng = np.random.default_rng(7)
  levels, k, beam = 3, 6, 10
  tok = fakes.level_tokens(levels, k)
  codes = _random_codes(rng, 8 * 25, levels, k)
  cands = rng.permutation(len(codes)).reshape(8, 25)
  cands[3, 5:] = -1  # one example with fewer candidates than the beam
  tables = trie.build_batched(codes, cands, k)
  mesh = jax.make_mesh((8,), ("data",))
  items, scores = _run(tables, [4] * 8, tok, beam=beam, mesh=mesh)
  for b in range(8):
    alone_items, alone_scores = _run(tables[b:b + 1], [4], tok, beam=beam)
    np.testing.assert_array_equal(items[b], alone_items[0])
    np.testing.assert_allclose(scores[b], alone_scores[0], atol=1e-5)
    got = items[b][items[b] >= 0]
    assert set(got.tolist()) <= set(cands[b].tolist())
    assert len(got) == (5 if b == 3 else beam)


def test_beam_wider_than_the_candidates_returns_each_once():
  rng = np.random.default_rng(4)
  levels, k = 4, 8
  tok = fakes.level_tokens(levels, k)
  codes = _random_codes(rng, 50, levels, k)
  cands = np.array([[3, 17, 29, 41, 3]])  # a repeated candidate counts once
  items, scores = _run(trie.build_batched(codes, cands, k), [7], tok, beam=30)
  assert sorted(items[0, :4].tolist()) == [3, 17, 29, 41]
  assert np.all(items[0, 4:] == -1) and np.all(np.isneginf(scores[0, 4:]))
  assert np.all(np.isfinite(scores[0, :4]))


def test_allowed_and_full_scores_have_the_documented_values():
  # One level of K = 3 codes, candidates {0, 2}, behaviour token forced first.
  tok = fakes.level_tokens(1, 3, fakes.BEHAVIOUR[0])
  table = trie.build_batched(np.array([[0], [1], [2]]), np.array([[0, 2]]), 3)
  vocab = fakes.vocab_size(1, 3)
  key = 5
  first = fakes.fake_logits(key, [fakes.START], vocab)
  logits = fakes.fake_logits(key, [fakes.START, fakes.BEHAVIOUR[0]], vocab)
  ids = tok.token_ids_LxK[0]
  lse = lambda x: np.log(np.exp(x).sum())
  # "allowed": log-softmax over the two allowed tokens; the forced token scores 0.
  allowed = {c: logits[ids[c]] - lse(logits[ids[[0, 2]]]) for c in (0, 2)}
  # "full": log-softmax over the vocabulary, plus the forced token's log-probability.
  full = {c: logits[ids[c]] - lse(logits) + first[fakes.BEHAVIOUR[0]] - lse(first) for c in (0, 2)}
  for score, want in (("allowed", allowed), ("full", full)):
    items, scores = _run(table, [key], tok, beam=2, score=score)
    order = sorted(want, key=lambda c: -want[c])
    np.testing.assert_array_equal(items[0], order)
    np.testing.assert_allclose(scores[0], [want[c] for c in order], atol=1e-4)
  np.testing.assert_allclose(np.exp(list(allowed.values())).sum(), 1.0)


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_chunked_vocabulary_normaliser_equals_logsumexp(chunk, monkeypatch):
  monkeypatch.setattr(beam_search, "WHOLE_LOGITS_MAX", 0)  # Always chunk.
  # A vocabulary that is not a multiple of the chunk, logits large enough that a sum of
  # plain exponentials overflows float32: the running maximum must keep it finite.
  vocab = 61
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(2, 3, vocab)).astype(np.float32) * 40.0 + 60.0
  got = jax.jit(lambda h: beam_search.vocab_logsumexp(fakes.FakeDecoder(vocab), h, chunk))(hidden)
  m = hidden.astype(np.float64).max(-1, keepdims=True)
  want = (m + np.log(np.exp(hidden - m).sum(-1, keepdims=True)))[..., 0]
  assert np.all(np.isfinite(np.asarray(got)))
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)


def test_full_scores_do_not_depend_on_the_normaliser_chunk(monkeypatch):
  tok = fakes.level_tokens(3, 5, fakes.BEHAVIOUR[0])
  codes = _random_codes(np.random.default_rng(3), 30, 3, 5)
  table = trie.build_batched(codes, np.arange(30)[None].repeat(2, 0), 5)
  want_items, want_scores = _run(table, [4, 9], tok, beam=12, score="full")
  monkeypatch.setattr(beam_search, "VOCAB_CHUNK", 3)  # Default arguments read it at call time.
  monkeypatch.setattr(beam_search, "WHOLE_LOGITS_MAX", 0)
  items, scores = _run(table, [4, 9], tok, beam=12, score="full")
  np.testing.assert_array_equal(items, want_items)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-6)


def test_shared_beams_run_one_copy_until_the_trie_branches():
  tok = fakes.level_tokens(3, 4, fakes.BEHAVIOUR[1])
  codes = _random_codes(np.random.default_rng(5), 20, 3, 4)
  decoder = fakes.FakeDecoder(fakes.vocab_size(3, 4))
  _run(trie.build_catalog(codes, 4), [1, 2], tok, beam=7, decoder=decoder)
  # Start and behaviour tokens at one copy per example, then one traced loop step at W.
  assert decoder.calls == [(2, 1), (2, 1), (2, 7)]


def test_catalog_table_is_shared_and_sharded_batch_matches():
  rng = np.random.default_rng(6)
  levels, k, beam = 3, 6, 5
  tok = fakes.level_tokens(levels, k)
  codes = _random_codes(rng, 60, levels, k)
  keys = list(range(1, 9))
  catalog = trie.build_catalog(codes, k)
  items, scores = _run(catalog, keys, tok, beam=beam)
  stacked = trie.build_batched(codes, np.tile(np.arange(len(codes)), (8, 1)), k)
  items2, scores2 = _run(stacked, keys, tok, beam=beam)
  np.testing.assert_array_equal(items, items2)
  np.testing.assert_allclose(scores, scores2, atol=1e-5)
  mesh = jax.make_mesh((8,), ("data",))
  for table in (catalog, stacked):
    items3, scores3 = _run(table, keys, tok, beam=beam, mesh=mesh)
    np.testing.assert_array_equal(items, items3)
    np.testing.assert_allclose(scores, scores3, atol=1e-5)


@pytest.mark.device
def test_real_t5_beam_as_wide_as_the_candidates_equals_exact_scores_on_the_mesh():
  # A random tiny T5 (not the fake): its decoder cache, shared cross keys/values and both
  # jitted paths, sharded over every device (8 simulated here; the accelerator's there).
  from gensar_jax.decoding import exact  # pylint: disable=g-import-not-at-top
  from gensar_jax.model import t5  # pylint: disable=g-import-not-at-top

  levels, k, n_cand = 3, 4, 6
  tok = fakes.level_tokens(levels, k)
  cfg = t5.T5Config(vocab_size=fakes.vocab_size(levels, k), d_model=32, d_ff=64,
                    num_encoder_layers=1, num_decoder_layers=2, num_heads=2, d_kv=16,
                    dropout_rate=0.0)
  model, params = t5.T5(cfg), t5.init_params(cfg, jax.random.key(0))
  n_dev = jax.device_count()
  batch = n_dev * max(1, 8 // n_dev)
  rng = np.random.default_rng(8)
  codes = _random_codes(rng, 30, levels, k)
  cands = np.stack([rng.permutation(len(codes))[:n_cand] for _ in range(batch)])
  tables = trie.build_batched(codes, cands, k)
  src = rng.integers(2, cfg.vocab_size, (batch, 7)).astype(np.int32)
  src[:, -1] = 1
  mesh = jax.make_mesh((n_dev,), ("data",))
  spec = beam_search.SearchSpec.create(tok, start_token=0, beam_size=n_cand, score="full")
  decoder = lambda p: beam_search.T5Decoder(model, p)  # pylint: disable=unnecessary-lambda-assignment
  ((items, beam_scores),) = beam_search.make_search_fn(decoder, spec, mesh=mesh)(
      params, src, tables)
  scores = np.asarray(exact.make_score_fn(decoder, spec, mesh=mesh)(
      params, src, codes[cands].astype(np.int32), np.ones(cands.shape, bool), tables))
  assert np.all(np.isfinite(scores))
  order = np.take_along_axis(cands, np.argsort(-scores, axis=1, kind="stable"), 1)
  np.testing.assert_array_equal(np.asarray(items), order)
  np.testing.assert_allclose(np.asarray(beam_scores), -np.sort(-scores, axis=1), atol=2e-4)


def _exact(tables, codes, cands, keys, tok, score, shared_codes=False):
  from gensar_jax.decoding import exact  # pylint: disable=g-import-not-at-top

  vocab = fakes.vocab_size(tok.num_levels, tok.codebook_size)
  spec = beam_search.SearchSpec.create(tok, start_token=fakes.START, beam_size=1, score=score)
  fn = exact.make_score_fn(lambda p: fakes.FakeDecoder(vocab), spec)
  src = np.stack([np.asarray(keys), np.ones(len(keys))], 1).astype(np.int32)
  cand_codes = codes[np.maximum(cands, 0)].astype(np.int32)
  return np.asarray(fn({}, src, cand_codes, cands >= 0, tables))


@pytest.mark.device
@pytest.mark.parametrize("score", ["allowed", "full"])
@pytest.mark.parametrize("first_token", [fakes.BEHAVIOUR[1], None])
def test_exact_scores_equal_the_brute_force_path_scores(score, first_token):
  rng = np.random.default_rng(3)
  levels, k = 4, 6
  tok = fakes.level_tokens(levels, k, first_token)
  codes = _random_codes(rng, 80, levels, k)
  cands = np.stack([rng.permutation(len(codes))[:20] for _ in range(3)])
  cands[1, -3:] = -1  # padding candidates
  tables = trie.build_batched(codes, cands, k)
  keys = [2, 7, 13]
  got = _exact(tables, codes, cands, keys, tok, score)
  for b, key in enumerate(keys):
    for c, item in enumerate(cands[b]):
      if item < 0:
        assert got[b, c] == -np.inf
        continue
      want = fakes.path_score(key, codes[item], tok, tables[b], score)
      np.testing.assert_allclose(got[b, c], want, atol=2e-4)


@pytest.mark.device
@pytest.mark.parametrize("score", ["allowed", "full"])
def test_beam_as_wide_as_the_candidates_returns_the_exact_ranking(score):
  rng = np.random.default_rng(4)
  levels, k, n_cand = 4, 5, 24
  tok = fakes.level_tokens(levels, k)
  codes = _random_codes(rng, 100, levels, k)
  cands = np.stack([rng.permutation(len(codes))[:n_cand] for _ in range(4)])
  tables = trie.build_batched(codes, cands, k)
  keys = [1, 4, 6, 9]
  scores = _exact(tables, codes, cands, keys, tok, score)
  items, beam_scores = _run(tables, keys, tok, beam=n_cand, score=score)
  exact_order = np.take_along_axis(cands, np.argsort(-scores, axis=1, kind="stable"), 1)
  np.testing.assert_array_equal(items, exact_order)
  np.testing.assert_allclose(beam_scores, -np.sort(-scores, axis=1), atol=2e-4)
  # A narrower beam is an approximation: it returns fewer items, never better scores.
  narrow, narrow_scores = _run(tables, keys, tok, beam=6, score=score)
  assert narrow.shape == (4, 6)
  assert np.all(narrow_scores[:, 0] <= beam_scores[:, 0] + 1e-4)


def test_exact_scores_of_a_shared_candidate_list_match_per_example_lists():
  rng = np.random.default_rng(5)
  levels, k = 3, 7
  tok = fakes.level_tokens(levels, k)
  codes = _random_codes(rng, 40, levels, k)
  items = np.arange(40)
  keys = [3, 5]
  per_example = _exact(np.full((1, 1, k), -1, np.int32), codes, np.stack([items, items]),
                       keys, tok, "full")
  from gensar_jax.decoding import exact  # pylint: disable=g-import-not-at-top

  vocab = fakes.vocab_size(levels, k)
  spec = beam_search.SearchSpec.create(tok, start_token=fakes.START, beam_size=1, score="full")
  fn = exact.make_score_fn(lambda p: fakes.FakeDecoder(vocab), spec)
  src = np.stack([np.asarray(keys), np.ones(2)], 1).astype(np.int32)
  shared = np.asarray(fn({}, src, codes[None].astype(np.int32), np.ones((1, 40), bool),
                         np.full((1, 1, k), -1, np.int32)))
  np.testing.assert_allclose(shared, per_example, atol=1e-5)
