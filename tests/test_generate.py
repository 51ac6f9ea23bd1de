"""Free-text generation (doc2query): top-k/top-p filtering, sampling and beam search."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gensar_jax.decoding import generate
from tests import beam_fakes as fakes

VOCAB = 7
EOS, PAD, START = 1, 0, 0


def _run(method, *, num, max_len, keys=(3, 8), rng=None, **kw):
  dec = fakes.FakeDecoder(VOCAB)

  @jax.jit
  def fn(src, rng):
    cross, mask = dec.encode(src)
    return generate.generate(dec, cross, mask, method=method, num=num, max_len=max_len,
                             start_token=START, eos_id=EOS, pad_id=PAD, rng=rng, **kw)

  src = jnp.asarray([[k, 5] for k in keys], jnp.int32)
  toks, scores = fn(src, jax.random.key(0) if rng is None else rng)
  return np.asarray(toks), np.asarray(scores)


def _logp(key, fed):
  """Log-probabilities of the next token; padding is never generated."""
  logits = fakes.fake_logits(key, fed, VOCAB)
  logits[PAD] = -np.inf
  return logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())


def _score(key, seq):
  """Summed log-probability of a generated sequence up to and including eos."""
  fed, total = [START], 0.0
  for tok in seq:
    total += _logp(key, fed)[tok]
    fed.append(int(tok))
    if tok == EOS:
      break
  return total


def _reference_beam(key, beam, max_len):
  """Plain-loop beam search with the same rules (finished beams carry their score)."""
  beams = [((), 0.0)]
  for _ in range(max_len):
    grown = []
    for seq, s in beams:
      if seq and seq[-1] in (EOS, PAD):  # finished: only padding follows, at no cost
        grown.append((seq + (PAD,), s))
        continue
      lp = _logp(key, [START] + list(seq))
      grown.extend((seq + (v,), s + lp[v]) for v in range(VOCAB) if v != PAD)
    beams = sorted(grown, key=lambda p: -p[1])[:beam]
  return beams


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = lambda x: np.isfinite(np.asarray(x))[0].tolist()
  assert kept(generate.filter_logits(logits, 2, 1.0)) == [True, True, False, False]
  assert kept(generate.filter_logits(logits, 0, 0.7)) == [True, True, False, False]
  assert kept(generate.filter_logits(logits, 0, 0.81)) == [True, True, True, False]
  assert kept(generate.filter_logits(logits, 0, 0.5)) == [True, False, False, False]
  assert kept(generate.filter_logits(logits, 0, 1.0)) == [True] * 4
  assert kept(generate.filter_logits(logits, 3, 0.7)) == [True, True, False, False]


def _reference_filter(row, top_k, top_p):
  """Sort-based top-k then nucleus on one row of logits (numpy)."""
  row = row.copy()
  if 0 < top_k < len(row):
    row[row < np.sort(row)[::-1][top_k - 1]] = -np.inf
  if top_p < 1.0:
    s = np.sort(row)[::-1]
    probs = np.exp(s - s[0]) / np.exp(s - s[0]).sum()
    before = np.cumsum(probs) - probs
    row[row < s[before < top_p].min()] = -np.inf
  return row


@pytest.mark.parametrize("top_k", [1, 3, 10, 64, 65, 0])
@pytest.mark.parametrize("top_p", [1.0, 0.9, 0.5, 0.05])
def test_filter_logits_matches_a_sorting_reference_with_ties(top_k, top_p):
  rng = np.random.default_rng(top_k)
  # Few distinct values, so ties straddle the k-th place and the nucleus edge; -inf
  # entries (masked tokens) and a row with fewer finite logits than k.
  logits = rng.integers(0, 6, size=(6, 300)).astype(np.float32) * 0.7
  logits[:, :5] = -np.inf
  logits[1, 2:] = -np.inf
  logits[1, 2:7] = [1.0, 1.0, 2.0, 0.5, 1.0]
  logits[2] = rng.normal(size=300)
  got = np.asarray(jax.jit(generate.filter_logits, static_argnums=(1, 2))(
      jnp.asarray(logits), top_k, top_p))
  for row, want in zip(got, logits):
    np.testing.assert_array_equal(row, _reference_filter(want, top_k, top_p))


@pytest.mark.parametrize("beam,max_len", [(3, 4), (5, 3)])
def test_beam_matches_a_plain_loop_reference(beam, max_len):
  toks, scores = _run("beam", num=beam, max_len=max_len)
  for b, key in enumerate((3, 8)):
    ref = _reference_beam(key, beam, max_len)
    assert [tuple(int(t) for t in row) for row in toks[b]] == [seq for seq, _ in ref]
    np.testing.assert_allclose(scores[b], [s for _, s in ref], rtol=1e-5, atol=1e-5)
    assert len({tuple(r) for r in toks[b].tolist()}) == beam  # distinct results


def test_sequences_end_at_eos_and_are_padded_after_it():
  for method in ("beam", "sample"):
    toks, scores = _run(method, num=6, max_len=6)
    for b, key in enumerate((3, 8)):
      for row, s in zip(toks[b], scores[b]):
        if EOS in row.tolist():
          end = row.tolist().index(EOS)
          assert (row[end + 1:] == PAD).all()
        np.testing.assert_allclose(s, _score(key, row.tolist()), rtol=1e-5, atol=1e-5)


def test_top_k_one_sampling_is_greedy_decoding():
  toks, _ = _run("sample", num=4, max_len=5, top_k=1)
  for b, key in enumerate((3, 8)):
    fed, greedy = [START], []
    for _ in range(5):
      done = bool(greedy) and greedy[-1] in (EOS, PAD)
      tok = PAD if done else int(np.argmax(_logp(key, fed)))
      greedy.append(tok)
      fed.append(tok)
    for row in toks[b]:
      assert row.tolist() == greedy


def test_sampling_is_deterministic_per_key_and_follows_the_distribution():
  a, _ = _run("sample", num=8, max_len=3, rng=jax.random.key(11))
  b, _ = _run("sample", num=8, max_len=3, rng=jax.random.key(11))
  c, _ = _run("sample", num=8, max_len=3, rng=jax.random.key(12))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  toks, _ = _run("sample", num=4000, max_len=1, keys=(3,), rng=jax.random.key(1))
  freq = np.bincount(toks[0, :, 0], minlength=VOCAB) / 4000
  np.testing.assert_allclose(freq, np.exp(_logp(3, [START])), atol=0.03)
  # With a nucleus, tokens outside it never appear.
  toks, _ = _run("sample", num=2000, max_len=1, keys=(3,), rng=jax.random.key(2), top_p=0.5)
  p = np.exp(_logp(3, [START]))
  order = np.argsort(-p)
  nucleus = set(order[: int(np.searchsorted(np.cumsum(p[order]), 0.5)) + 1].tolist())
  assert set(toks[0, :, 0].tolist()) <= nucleus


def test_unknown_method_and_missing_rng_are_errors():
  dec = fakes.FakeDecoder(VOCAB)
  cross, mask = dec.encode(jnp.asarray([[1, 2]]))
  call = functools.partial(generate.generate, dec, cross, mask, num=2, max_len=2,
                           start_token=START, eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match="method"):
    call(method="greedy")
  with pytest.raises(ValueError, match="rng"):
    call(method="sample")
