"""Tests of the Flax T5: exact buckets, a numpy reference forward, masking, decoding API."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gensar_jax import sharding
from gensar_jax.model import t5
from tests import test_t5_import

TINY = dict(vocab_size=37, d_model=12, d_ff=20, num_encoder_layers=2, num_decoder_layers=2,
            num_heads=2, d_kv=5, relative_attention_num_buckets=8,
            relative_attention_max_distance=20)


def _model(**overrides):
  cfg = t5.T5Config(**{**TINY, **overrides})
  params = t5.init_params(cfg, jax.random.PRNGKey(0))
  return t5.T5(cfg), params


def _batch(rng, b=2, s=9, t=5, vocab=37):
  src = rng.integers(3, vocab, (b, s))
  src[0, 6:] = 0  # padding
  src[1, 4:] = 0
  tgt = rng.integers(3, vocab, (b, t))
  tgt[:, 0] = 0  # decoder start
  return jnp.asarray(src, jnp.int32), jnp.asarray(tgt, jnp.int32)


# ----------------------------------------------------------------------------- buckets
def test_bucket_values_bidirectional():
  rel = jnp.array([0, -3, 3, -8, -12, -100, -1000, 1000, 20])
  got = t5.relative_position_bucket(rel, True, 32, 128)
  # 16 buckets per direction, 8 exact; larger: 8 + floor(log(n/8)/log(16)*8).
  np.testing.assert_array_equal(got, [0, 3, 19, 8, 9, 15, 15, 31, 26])


def test_bucket_values_causal():
  rel = jnp.array([5, 0, -5, -15, -16, -20, -100, -127, -500])
  got = t5.relative_position_bucket(rel, False, 32, 128)
  # Future keys -> 0; 16 exact; larger: 16 + floor(log(n/16)/log(8)*16).
  np.testing.assert_array_equal(got, [0, 0, 5, 15, 16, 17, 30, 31, 31])


def test_bucket_matches_formula_everywhere():
  ref = test_t5_import.bucket_reference  # T5's formula, one python int at a time
  rels = np.arange(-300, 301)
  for bidi in (True, False):
    got = np.asarray(t5.relative_position_bucket(jnp.asarray(rels), bidi, 32, 128))
    want = np.array([ref(int(r), bidi, 32, 128) for r in rels])
    # float32 vs float64 log may only differ exactly at bucket boundaries.
    assert np.mean(got == want) > 0.99 and np.abs(got - want).max() <= 1


# ------------------------------------------------------------------ numpy reference
def _np_rms(x, scale, eps=1e-6):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _np_bucket(rel, bidirectional, nb, md):
  return np.asarray(t5.relative_position_bucket(jnp.asarray(rel), bidirectional, nb, md))


def _np_attn(p, xq, xkv, bias, h, dk):
  q = (xq @ p["query"]["kernel"]).reshape(xq.shape[0], xq.shape[1], h, dk)
  k = (xkv @ p["key"]["kernel"]).reshape(xkv.shape[0], xkv.shape[1], h, dk)
  v = (xkv @ p["value"]["kernel"]).reshape(xkv.shape[0], xkv.shape[1], h, dk)
  s = np.einsum("bqhd,bkhd->bhqk", q, k) + bias
  s = s - s.max(-1, keepdims=True)
  w = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(xq.shape[0], xq.shape[1], h * dk)
  return o @ p["out"]["kernel"]


def _np_mlp(p, x, kind):
  if kind == "relu":
    hid = np.maximum(x @ p["wi"]["kernel"], 0)
  else:
    a = x @ p["wi_0"]["kernel"]
    gelu = 0.5 * a * (1 + np.tanh(np.sqrt(2 / np.pi) * (a + 0.044715 * a**3)))
    hid = gelu * (x @ p["wi_1"]["kernel"])
  return hid @ p["wo"]["kernel"]


def _np_t5(params, cfg, src, tgt):
  """Direct float64 numpy implementation of T5's math, for comparison."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
  h, dk, nb, md = cfg.num_heads, cfg.d_kv, cfg.relative_attention_num_buckets, \
      cfg.relative_attention_max_distance
  src, tgt = np.asarray(src), np.asarray(tgt)
  emb = p["shared"]["embedding"]
  neg = np.where(src != 0, 0.0, -1e9)[:, None, None, :]
  s = src.shape[1]
  rel = np.arange(s)[None, :] - np.arange(s)[:, None]
  enc_bias = np.transpose(p["encoder"]["relpos_bias"]["embedding"][_np_bucket(rel, True, nb, md)],
                          (2, 0, 1))[None] + neg
  x = emb[src]
  for i in range(cfg.num_encoder_layers):
    lp = p["encoder"][f"layer_{i}"]
    y = _np_rms(x, lp["pre_attention_norm"]["scale"])
    x = x + _np_attn(lp["attention"], y, y, enc_bias, h, dk)
    x = x + _np_mlp(lp["mlp"], _np_rms(x, lp["pre_mlp_norm"]["scale"]), cfg.feed_forward)
  enc = _np_rms(x, p["encoder"]["final_norm"]["scale"])
  t = tgt.shape[1]
  rel = np.arange(t)[None, :] - np.arange(t)[:, None]
  dec_bias = np.transpose(p["decoder"]["relpos_bias"]["embedding"][_np_bucket(rel, False, nb, md)],
                          (2, 0, 1))[None] + np.where(rel <= 0, 0.0, -1e9)
  x = emb[tgt]
  for i in range(cfg.num_decoder_layers):
    lp = p["decoder"][f"layer_{i}"]
    y = _np_rms(x, lp["pre_self_attention_norm"]["scale"])
    x = x + _np_attn(lp["self_attention"], y, y, dec_bias, h, dk)
    y = _np_rms(x, lp["pre_cross_attention_norm"]["scale"])
    x = x + _np_attn(lp["cross_attention"], y, enc, neg, h, dk)
    x = x + _np_mlp(lp["mlp"], _np_rms(x, lp["pre_mlp_norm"]["scale"]), cfg.feed_forward)
  x = _np_rms(x, p["decoder"]["final_norm"]["scale"])
  if cfg.tie_word_embeddings:
    return (x * cfg.d_model**-0.5) @ emb.T
  return x @ p["lm_head"].T


@pytest.mark.parametrize("overrides", [
    dict(num_encoder_layers=1, num_decoder_layers=1, num_heads=1),
    dict(),
    dict(feed_forward="gated-gelu", tie_word_embeddings=False),
])
@pytest.mark.device
def test_forward_matches_numpy_reference(overrides):
  model, params = _model(**overrides)
  src, tgt = _batch(np.random.default_rng(0))
  got = model.apply(params, src, tgt)
  assert got.shape == (2, 5, 37) and got.dtype == jnp.float32
  want = _np_t5(params, model.config, src, tgt)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_param_layout():
  _, params = _model(feed_forward="gated-gelu", tie_word_embeddings=False)
  p = params["params"]
  assert p["shared"]["embedding"].shape == (37, 12)
  assert p["lm_head"].shape == (37, 12)
  assert p["encoder"]["relpos_bias"]["embedding"].shape == (8, 2)
  assert p["encoder"]["layer_1"]["attention"]["query"]["kernel"].shape == (12, 10)
  assert p["decoder"]["layer_0"]["mlp"]["wi_1"]["kernel"].shape == (12, 20)
  assert p["decoder"]["layer_0"]["mlp"]["wo"]["kernel"].shape == (20, 12)
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


# ------------------------------------------------------------------------- masking
def test_causal_future_tokens_do_not_change_past_logits():
  model, params = _model()
  src, tgt = _batch(np.random.default_rng(1))
  base = model.apply(params, src, tgt)
  changed = tgt.at[:, 3:].set(jnp.array([7, 8]))
  other = model.apply(params, src, changed)
  np.testing.assert_allclose(other[:, :3], base[:, :3], atol=1e-6)
  assert np.abs(other[:, 3:] - base[:, 3:]).max() > 1e-3


@pytest.mark.device
def test_padding_invariance():
  model, params = _model()
  src, tgt = _batch(np.random.default_rng(2))
  base = model.apply(params, src, tgt)
  longer = jnp.pad(src, ((0, 0), (0, 7)))  # more source padding
  np.testing.assert_allclose(model.apply(params, longer, tgt), base, atol=1e-5)
  # A row alone equals the same row in a batch with differently padded rows.
  alone = model.apply(params, src[1:, :4], tgt[1:])
  np.testing.assert_allclose(alone, base[1:], atol=1e-5)
  # Sanity: changing a real (non-pad) source token does change the logits.
  poked = src.at[0, 2].set(5 if int(src[0, 2]) != 5 else 6)
  assert np.abs(model.apply(params, poked, tgt)[0] - base[0]).max() > 1e-4


# ------------------------------------------------------------------- decoding API
@pytest.mark.parametrize("overrides", [dict(), dict(tie_word_embeddings=False,
                                                    feed_forward="gated-gelu")])
@pytest.mark.device
def test_decode_step_matches_teacher_forcing(overrides):
  model, params = _model(**overrides)
  rng = np.random.default_rng(3)
  b, w, t = 2, 3, 5
  src, _ = _batch(rng, b=b)
  tgt_BxWxT = rng.integers(3, 37, (b, w, t))
  tgt_BxWxT[..., 0] = 0
  tgt_BxWxT = jnp.asarray(tgt_BxWxT, jnp.int32)
  # Reference: every beam as its own teacher-forced row (source repeated per beam).
  want = model.apply(params, jnp.repeat(src, w, 0), tgt_BxWxT.reshape(b * w, t))
  want = want.reshape(b, w, t, -1)

  enc = model.apply(params, src, method=model.encode)
  cross = model.apply(params, enc, method=model.cross_kv)
  assert cross.k.shape == (2, b, 2, src.shape[1], 5)  # [L, B, H, S, Dk], not tiled by W
  cache = model.apply(params, b, w, t + 2, method=model.init_cache)
  assert cache.k.shape == (2, b, w, t + 2, 2, 5)

  step = jax.jit(lambda tok, pos, cache: model.apply(
      params, tok, pos, cache, cross, src != 0, method=model.decode_step))
  got = []
  for pos in range(t):
    hidden, cache = step(tgt_BxWxT[:, :, pos], jnp.int32(pos), cache)
    assert hidden.shape == (b, w, 12)
    got.append(model.apply(params, hidden, method=model.project))
  got = jnp.stack(got, 2)
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)
  # The cache holds exactly the positions written so far.
  assert np.abs(cache.k[:, :, :, t:]).max() == 0
  assert np.abs(cache.k[:, :, :, :t]).min(axis=(-1, -2)).max() > 0


def test_project_subset_equals_gather():
  model, params = _model(tie_word_embeddings=False)
  hidden = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 12))
  full = model.apply(params, hidden, method=model.project)
  assert full.shape == (2, 3, 37)
  ids = jnp.array([4, 0, 36, 4])
  np.testing.assert_allclose(model.apply(params, hidden, ids, method=model.project),
                             full[..., ids], atol=1e-6)
  per_example = jnp.array([[[1, 2, 3]], [[30, 31, 5]]])  # [B, 1, A]
  got = model.apply(params, hidden, per_example, method=model.project)
  want = jnp.take_along_axis(full, jnp.broadcast_to(per_example, (2, 3, 3)), axis=-1)
  np.testing.assert_allclose(got, want, atol=1e-6)


# -------------------------------------------------------------------- dropout, dtype
def test_dropout_only_when_not_deterministic():
  model, params = _model(dropout_rate=0.3)
  src, tgt = _batch(np.random.default_rng(4))
  base = model.apply(params, src, tgt)
  np.testing.assert_array_equal(model.apply(params, src, tgt, deterministic=True), base)
  train = jax.jit(lambda rng: model.apply(params, src, tgt, deterministic=False,
                                          rngs={"dropout": rng}))
  a, b = train(jax.random.PRNGKey(1)), train(jax.random.PRNGKey(2))
  assert np.abs(a - base).max() > 1e-3 and np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_mask_is_bernoulli_and_independent(rate):
  shape = (8, 64, 256)
  n = math.prod(shape)
  seed = lambda i: jax.random.bits(jax.random.PRNGKey(i), (2,), jnp.uint32)
  a = np.asarray(t5.keep_mask(seed(0), shape, rate))
  b = np.asarray(t5.keep_mask(seed(1), shape, rate))
  assert a.shape == shape and a.dtype == bool
  tol = 5 * math.sqrt(rate * (1 - rate) / n)
  drop_a, drop_b = ~a, ~b
  assert abs(drop_a.mean() - rate) < tol and abs(drop_b.mean() - rate) < tol
  # Independent of the neighbour along every axis, and of another seed's mask.
  pair_tol = 5 * math.sqrt(rate**2 / n)
  for axis in range(3):
    both = drop_a.take(range(1, shape[axis]), axis) & drop_a.take(range(shape[axis] - 1), axis)
    assert abs(both.mean() - rate**2) < pair_tol, axis
  assert abs((drop_a & drop_b).mean() - rate**2) < pair_tol
  # Deterministic in the seed.
  np.testing.assert_array_equal(t5.keep_mask(seed(0), shape, rate), a)


def test_dropout_values_and_sharding_invariance():
  x = jnp.arange(1.0, 1.0 + 8 * 40).reshape(8, 40)
  drop = t5.Dropout(0.25)
  rngs = {"dropout": jax.random.PRNGKey(3)}
  y = np.asarray(drop.apply({}, x, deterministic=False, rngs=rngs))
  kept = y != 0
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
  assert 0.6 < kept.mean() < 0.9
  np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)
  # The whole model's dropout gives the same logits whether the batch is sharded over
  # the 8 simulated devices or not (masks come from global element indices).
  model, params = _model(dropout_rate=0.3)
  src, tgt = _batch(np.random.default_rng(6), b=8)
  run = lambda s, t: model.apply(params, s, t, deterministic=False,
                                 rngs={"dropout": jax.random.PRNGKey(4)})
  want = jax.jit(run)(src, tgt)
  mesh = jax.make_mesh((8,), ("data",))
  batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  got = jax.jit(run, in_shardings=(batch, batch))(src, tgt)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert np.abs(np.asarray(want) - np.asarray(model.apply(params, src, tgt))).max() > 1e-3


def test_keep_mask_offset_gives_a_slice_of_the_larger_mask():
  seed = jax.random.bits(jax.random.PRNGKey(5), (2,), jnp.uint32)
  whole = np.asarray(t5.keep_mask(seed, (8, 3, 7), 0.3))
  for r in (0, 2, 5):
    part = t5.keep_mask(seed, (3, 3, 7), 0.3, offset=jnp.uint32(r * 21))
    np.testing.assert_array_equal(part, whole[r:r + 3])
  assert not np.array_equal(t5.keep_mask(seed, (3, 3, 7), 0.3), whole[2:5])


def test_dropout_on_each_device_rows_inside_shard_map_is_the_whole_batch_dropout():
  # The train step runs the model on each device's rows (`T5Config.batch_axis`): every
  # dropout mask must be that device's slice of the whole batch's, or the devices would
  # share masks and the run would change with the number of devices.
  model, params = _model(dropout_rate=0.3)
  src, tgt = _batch(np.random.default_rng(7), b=8)
  rngs = {"dropout": jax.random.PRNGKey(4)}
  want = model.apply(params, src, tgt, deterministic=False, rngs=rngs)
  mesh = sharding.make_mesh("data")  # The train step's mesh: all 8 simulated devices.
  P = jax.sharding.PartitionSpec
  for axis, same in (("data", True), (None, False)):
    local = model.clone(config=dataclasses.replace(model.config, batch_axis=axis))
    run = jax.shard_map(
        lambda p, s, t: local.apply(p, s, t, deterministic=False, rngs=rngs),
        mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P("data"))
    rows = jax.sharding.NamedSharding(mesh, P("data"))
    got = np.asarray(jax.jit(run, in_shardings=(None, rows, rows))(params, src, tgt))
    assert np.allclose(got, np.asarray(want), atol=1e-5) == same, axis
  assert "batch_axis" not in model.config.to_dict()  # Runtime only, never saved.


@pytest.mark.device
def test_bfloat16_compute_close_to_float32():
  model, params = _model()
  bf16 = t5.T5(t5.T5Config(**{**TINY, "dtype": "bfloat16"}))
  src, tgt = _batch(np.random.default_rng(5))
  want = model.apply(params, src, tgt)
  got = bf16.apply(params, src, tgt)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, atol=0.1)


def test_config_from_pipeline_section_and_round_trip():
  m = ml_collections.ConfigDict(dict(
      init_checkpoint_dir="", d_model=64, d_ff=128, num_encoder_layers=2,
      num_decoder_layers=3, num_heads=4, d_kv=16, relative_attention_num_buckets=32,
      relative_attention_max_distance=128, dropout_rate=0.2, dtype="bfloat16"))
  cfg = t5.T5Config.from_config(m, 1000)
  assert (cfg.vocab_size, cfg.num_decoder_layers, cfg.dropout_rate, cfg.dtype) == \
      (1000, 3, 0.2, "bfloat16")
  assert cfg.feed_forward == "relu" and cfg.tie_word_embeddings
  assert t5.T5Config.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError):
    t5.T5Config(**{**TINY, "feed_forward": "swish"})



def _rel_err(a, b):
  return float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))


def _plain_mlp(x, wi, wo, keep, rate):
  """The relu feed-forward with dropout, left to autodiff."""
  return jnp.where(keep, jax.nn.relu(x @ wi) / (1 - rate), 0) @ wo


def _plain_softmax_dropout(logits, keep, rate):
  """Attention weights with dropout, left to autodiff."""
  return jnp.where(keep, jax.nn.softmax(logits, axis=-1) / (1 - rate), 0)


def test_relu_dropout_mlp_gradient_is_autodiffs():
  """The hand-written backward (mask read back from the kept activation) equals autodiff
  of the same expression, for every input, at a rate where many units drop."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  wi = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
  wo = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
  keep = jnp.asarray(rng.random((3, 5, 16)) > 0.3)
  g = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  plain = lambda x, wi, wo: _plain_mlp(x, wi, wo, keep, 0.3)
  ours = lambda x, wi, wo: t5.relu_dropout_mlp(x, wi, wo, keep, 0.3)
  np.testing.assert_allclose(ours(x, wi, wo), plain(x, wi, wo), rtol=1e-6)
  for a, b in zip(jax.vjp(ours, x, wi, wo)[1](g), jax.vjp(plain, x, wi, wo)[1](g)):
    assert a.shape == b.shape and _rel_err(a, b) < 1e-5
  # Some units are relu-zero, some dropped, some both: all three masks are exercised.
  h = x @ wi
  assert bool(jnp.any((h <= 0) & keep)) and bool(jnp.any((h > 0) & ~keep))


def test_softmax_dropout_gradient_is_autodiffs():
  """Attention weights with dropout: values and logits gradient equal autodiff's, with
  masked keys (softmax exactly 0) and dropped weights in the same rows."""
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 3, 4, 6)) * 3, jnp.float32)
  logits = logits.at[..., 4:].add(-1e9)  # two masked keys per row
  keep = jnp.asarray(rng.random((2, 3, 4, 6)) > 0.25)
  g = jnp.asarray(rng.normal(size=(2, 3, 4, 6)), jnp.float32)
  plain = lambda l: _plain_softmax_dropout(l, keep, 0.25)
  ours = lambda l: t5.softmax_dropout(l, keep, 0.25)
  np.testing.assert_array_equal(ours(logits), plain(logits))
  a, = jax.vjp(ours, logits)[1](g)
  b, = jax.vjp(plain, logits)[1](g)
  assert _rel_err(a, b) < 1e-5
  assert float(jnp.max(jnp.abs(a[..., 4:]))) == 0.0


def test_add_shared_bias_gradient_sums_over_the_batch():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(5, 2, 3, 3)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(1, 2, 3, 3)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(5, 2, 3, 3)), jnp.float32)
  np.testing.assert_array_equal(t5.add_shared_bias(x, bias), x + bias)
  gx, gb = jax.vjp(t5.add_shared_bias, x, bias)[1](g)
  np.testing.assert_array_equal(gx, g)
  np.testing.assert_allclose(gb, g.sum(0, keepdims=True), rtol=1e-5, atol=1e-6)


def test_training_gradient_equals_plain_autodiff(monkeypatch):
  """The whole model with dropout on: loss and every parameter's gradient equal those of
  the same model with the three hand-written backward passes replaced by autodiff."""
  from gensar_jax.trainer import step as step_lib  # pylint: disable=import-outside-toplevel
  cfg = t5.T5Config(vocab_size=300, d_model=32, d_ff=64, num_encoder_layers=2,
                    num_decoder_layers=2, num_heads=4, d_kv=8, dropout_rate=0.1)
  model = t5.T5(cfg)
  params = t5.init_params(cfg, jax.random.key(0))
  rng = np.random.default_rng(0)
  src = jnp.asarray(rng.integers(2, 300, (8, 20)), jnp.int32).at[:, 15:].set(0)
  tgt = jnp.asarray(rng.integers(2, 300, (8, 6)), jnp.int32)
  loss = lambda p: step_lib.nll_sum(model, p, src, tgt, rng=jax.random.key(3))[0]
  l1, g1 = jax.value_and_grad(loss)(params)
  monkeypatch.setattr(t5, "relu_dropout_mlp", _plain_mlp)
  monkeypatch.setattr(t5, "softmax_dropout", _plain_softmax_dropout)
  monkeypatch.setattr(t5, "add_shared_bias", lambda x, b: x + b)
  l2, g2 = jax.value_and_grad(loss)(params)
  assert float(l1) == float(l2)
  errs = jax.tree.leaves(jax.tree.map(_rel_err, g1, g2))
  assert max(errs) < 1e-5


def test_dense_is_flax_dense_with_a_two_dimensional_product():
  """`_Dense` (every projection of the model) has nn.Dense's parameter tree and
  initialisation, and its values and gradients on a `[B, S, D]` input equal nn.Dense's
  up to float rounding; `matmul_rows` keeps the leading axes."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(3, 7, 16)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(3, 7, 24)), jnp.float32)
  ours = t5._Dense(24, 0.3, jnp.float32)  # pylint: disable=protected-access
  flax_dense = nn.Dense(24, use_bias=False, kernel_init=nn.initializers.normal(0.3))
  p_ours, p_flax = ours.init(jax.random.key(5), x), flax_dense.init(jax.random.key(5), x)
  assert jax.tree.structure(p_ours) == jax.tree.structure(p_flax)
  np.testing.assert_array_equal(p_ours["params"]["kernel"], p_flax["params"]["kernel"])
  y_ours, vjp_ours = jax.vjp(lambda p, x: ours.apply(p, x), p_ours, x)
  y_flax, vjp_flax = jax.vjp(lambda p, x: flax_dense.apply(p, x), p_flax, x)
  assert y_ours.shape == (3, 7, 24)
  np.testing.assert_allclose(y_ours, y_flax, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(vjp_ours(g)), jax.tree.leaves(vjp_flax(g))):
    assert a.shape == b.shape and _rel_err(a, b) < 1e-5
  assert t5.matmul_rows(x, jnp.ones((16, 2))).shape == (3, 7, 2)
