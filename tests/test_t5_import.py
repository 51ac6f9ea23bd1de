"""Import of a Hugging Face T5 checkpoint folder: tensor placement, vocabulary
extension, and the imported model's forward pass against a numpy T5 on the HF weights."""

import json
import math
import struct

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

from gensar_jax.model import hf_import
from gensar_jax.model import t5

V, D, FF, H, DK, NB, MD = 29, 8, 12, 2, 3, 6, 10


def _hf_config(version: str, **extra) -> dict:
  d = dict(
      architectures=["T5ForConditionalGeneration"], model_type="t5", vocab_size=V,
      d_model=D, d_ff=FF, d_kv=DK, num_heads=H, num_layers=2, num_decoder_layers=1,
      relative_attention_num_buckets=NB, relative_attention_max_distance=MD,
      dropout_rate=0.1, layer_norm_epsilon=1e-6, pad_token_id=0, eos_token_id=1,
      decoder_start_token_id=0, is_encoder_decoder=True,
      feed_forward_proj="relu" if version == "1.0" else "gated-gelu",
      tie_word_embeddings=version == "1.0",
  )
  return {**d, **extra}


def _hf_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random tensors named and shaped exactly as a HF T5 `model.safetensors`."""
  rng = np.random.default_rng(seed)
  inner = cfg["num_heads"] * cfg["d_kv"]
  d, ff = cfg["d_model"], cfg["d_ff"]
  gated = cfg["feed_forward_proj"].startswith("gated")
  t = {"shared.weight": (cfg["vocab_size"], d)}

  def attn(prefix):
    t.update({f"{prefix}.q.weight": (inner, d), f"{prefix}.k.weight": (inner, d),
              f"{prefix}.v.weight": (inner, d), f"{prefix}.o.weight": (d, inner)})

  def ffn(prefix):
    names = ("wi_0", "wi_1") if gated else ("wi",)
    t.update({f"{prefix}.{n}.weight": (ff, d) for n in names})
    t[f"{prefix}.wo.weight"] = (d, ff)

  rel = (cfg["relative_attention_num_buckets"], cfg["num_heads"])
  for i in range(cfg["num_layers"]):
    b = f"encoder.block.{i}.layer"
    attn(f"{b}.0.SelfAttention")
    t[f"{b}.0.layer_norm.weight"] = (d,)
    ffn(f"{b}.1.DenseReluDense")
    t[f"{b}.1.layer_norm.weight"] = (d,)
  t["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = rel
  t["encoder.final_layer_norm.weight"] = (d,)
  for i in range(cfg["num_decoder_layers"]):
    b = f"decoder.block.{i}.layer"
    attn(f"{b}.0.SelfAttention")
    t[f"{b}.0.layer_norm.weight"] = (d,)
    attn(f"{b}.1.EncDecAttention")
    t[f"{b}.1.layer_norm.weight"] = (d,)
    ffn(f"{b}.2.DenseReluDense")
    t[f"{b}.2.layer_norm.weight"] = (d,)
  t["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = rel
  t["decoder.final_layer_norm.weight"] = (d,)
  if not cfg["tie_word_embeddings"]:
    t["lm_head.weight"] = (cfg["vocab_size"], d)
  out = {}
  for name, shape in t.items():
    if name.endswith("layer_norm.weight"):
      out[name] = 1.0 + 0.2 * rng.standard_normal(shape)
    elif name.endswith("relative_attention_bias.weight"):
      out[name] = rng.standard_normal(shape)
    elif name in ("shared.weight", "lm_head.weight"):
      out[name] = 2.0 * rng.standard_normal(shape)
    else:
      out[name] = rng.standard_normal(shape) / math.sqrt(shape[1])
  return {k: v.astype(np.float32) for k, v in out.items()}


def _write(folder, cfg, tensors):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "config.json").write_text(json.dumps(cfg))
  safetensors.numpy.save_file(tensors, str(folder / "model.safetensors"))
  return folder


# --------------------------------------------------------------- numpy T5 on HF names
def bucket_reference(rel, bidirectional, nb, md):
  """T5's relative position bucket, one python int at a time (float64 log)."""
  out = 0
  if bidirectional:
    nb //= 2
    out += nb if rel > 0 else 0
    n = abs(rel)
  else:
    n = max(-rel, 0)
  exact = nb // 2
  if n < exact:
    return out + n
  return out + min(exact + int(math.log(n / exact) / math.log(md / exact) * (nb - exact)), nb - 1)


def _position_bias(table, q_len, k_len, bidirectional):
  rel = np.arange(k_len)[None, :] - np.arange(q_len)[:, None]
  b = np.vectorize(lambda r: bucket_reference(int(r), bidirectional, NB, MD))(rel)
  return np.transpose(table[b], (2, 0, 1))[None]  # [1, H, Q, K]


def _hf_numpy_logits(w, cfg, src, tgt_in):
  """Float64 numpy T5 forward straight from the HF tensors (x @ W.T for Linear)."""
  w = {k: v.astype(np.float64) for k, v in w.items()}
  lin = lambda x, name: x @ w[name].T
  rms = lambda x, name: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * w[name]

  def attn(prefix, xq, xkv, bias):
    split = lambda x: x.reshape(x.shape[0], x.shape[1], H, DK)
    q, k, v = (split(lin(xq, f"{prefix}.q.weight")), split(lin(xkv, f"{prefix}.k.weight")),
               split(lin(xkv, f"{prefix}.v.weight")))
    s = np.einsum("bqhd,bkhd->bhqk", q, k) + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", p, v).reshape(xq.shape[0], xq.shape[1], H * DK)
    return lin(o, f"{prefix}.o.weight")

  def ffn(prefix, x):
    if cfg["feed_forward_proj"] == "relu":
      h = np.maximum(lin(x, f"{prefix}.wi.weight"), 0.0)
    else:
      a = lin(x, f"{prefix}.wi_0.weight")
      gelu_new = 0.5 * a * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (a + 0.044715 * a**3)))
      h = gelu_new * lin(x, f"{prefix}.wi_1.weight")
    return lin(h, f"{prefix}.wo.weight")

  pad = np.where(src != 0, 0.0, -1e9)[:, None, None, :]
  x = w["shared.weight"][src]
  bias = _position_bias(
      w["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
      src.shape[1], src.shape[1], True) + pad
  for i in range(cfg["num_layers"]):
    b = f"encoder.block.{i}.layer"
    x = x + attn(f"{b}.0.SelfAttention", *(2 * [rms(x, f"{b}.0.layer_norm.weight")]), bias)
    x = x + ffn(f"{b}.1.DenseReluDense", rms(x, f"{b}.1.layer_norm.weight"))
  enc = rms(x, "encoder.final_layer_norm.weight")
  t = tgt_in.shape[1]
  causal = np.where(np.arange(t)[None, :] <= np.arange(t)[:, None], 0.0, -1e9)
  bias = _position_bias(
      w["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"], t, t,
      False) + causal
  x = w["shared.weight"][tgt_in]
  for i in range(cfg["num_decoder_layers"]):
    b = f"decoder.block.{i}.layer"
    x = x + attn(f"{b}.0.SelfAttention", *(2 * [rms(x, f"{b}.0.layer_norm.weight")]), bias)
    x = x + attn(f"{b}.1.EncDecAttention", rms(x, f"{b}.1.layer_norm.weight"), enc, pad)
    x = x + ffn(f"{b}.2.DenseReluDense", rms(x, f"{b}.2.layer_norm.weight"))
  x = rms(x, "decoder.final_layer_norm.weight")
  if cfg["tie_word_embeddings"]:
    return (x * cfg["d_model"]**-0.5) @ w["shared.weight"].T
  return x @ w["lm_head.weight"].T


# ----------------------------------------------------------------------------- tests
def _expected_placement(cfg):
  """(HF name, path in our params, transposed?) for every tensor of the checkpoint."""
  rows = [("shared.weight", ("shared", "embedding"), False),
          ("encoder.final_layer_norm.weight", ("encoder", "final_norm", "scale"), False),
          ("decoder.final_layer_norm.weight", ("decoder", "final_norm", "scale"), False),
          ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           ("encoder", "relpos_bias", "embedding"), False),
          ("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
           ("decoder", "relpos_bias", "embedding"), False)]
  if not cfg["tie_word_embeddings"]:
    rows.append(("lm_head.weight", ("lm_head",), False))
  mlp = ["wi"] if cfg["feed_forward_proj"] == "relu" else ["wi_0", "wi_1"]
  qkvo = dict(q="query", k="key", v="value", o="out")
  for i in range(cfg["num_layers"]):
    b, ours = f"encoder.block.{i}.layer", ("encoder", f"layer_{i}")
    rows += [(f"{b}.0.SelfAttention.{n}.weight", ours + ("attention", m, "kernel"), True)
             for n, m in qkvo.items()]
    rows += [(f"{b}.0.layer_norm.weight", ours + ("pre_attention_norm", "scale"), False),
             (f"{b}.1.layer_norm.weight", ours + ("pre_mlp_norm", "scale"), False)]
    rows += [(f"{b}.1.DenseReluDense.{n}.weight", ours + ("mlp", n, "kernel"), True)
             for n in mlp + ["wo"]]
  for i in range(cfg["num_decoder_layers"]):
    b, ours = f"decoder.block.{i}.layer", ("decoder", f"layer_{i}")
    rows += [(f"{b}.0.SelfAttention.{n}.weight", ours + ("self_attention", m, "kernel"), True)
             for n, m in qkvo.items()]
    rows += [(f"{b}.1.EncDecAttention.{n}.weight", ours + ("cross_attention", m, "kernel"),
              True) for n, m in qkvo.items()]
    rows += [(f"{b}.0.layer_norm.weight", ours + ("pre_self_attention_norm", "scale"), False),
             (f"{b}.1.layer_norm.weight", ours + ("pre_cross_attention_norm", "scale"), False),
             (f"{b}.2.layer_norm.weight", ours + ("pre_mlp_norm", "scale"), False)]
    rows += [(f"{b}.2.DenseReluDense.{n}.weight", ours + ("mlp", n, "kernel"), True)
             for n in mlp + ["wo"]]
  return rows


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_every_tensor_lands_where_it_should(tmp_path, version):
  cfg = _hf_config(version)
  tensors = _hf_tensors(cfg)
  config, params = hf_import.load(_write(tmp_path / "ckpt", cfg, tensors))
  assert (config.vocab_size, config.d_model, config.d_ff, config.num_heads, config.d_kv) == \
      (V, D, FF, H, DK)
  assert (config.num_encoder_layers, config.num_decoder_layers) == (2, 1)
  assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == \
      (NB, MD)
  assert config.feed_forward == ("relu" if version == "1.0" else "gated-gelu")
  assert config.tie_word_embeddings == (version == "1.0")
  placement = _expected_placement(cfg)
  assert sorted(n for n, _, _ in placement) == sorted(tensors)  # every tensor is covered
  p = params["params"]
  for name, path, transposed in placement:
    got = p
    for key in path:
      got = got[key]
    want = tensors[name].T if transposed else tensors[name]
    np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
  # Nothing else in the tree: the leaf count equals the tensor count.
  assert len(jax.tree_util.tree_leaves(params)) == len(tensors)
  # The imported tree has exactly the structure and shapes the model initialises.
  fresh = t5.init_params(config, jax.random.PRNGKey(0))
  shape = lambda tree: jax.tree.map(lambda x: (x.shape, str(x.dtype)), tree)
  assert shape(params) == shape(fresh)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_forward_equals_numpy_t5_on_the_hf_weights(tmp_path, version):
  cfg = _hf_config(version)
  tensors = _hf_tensors(cfg, seed=1)
  config, params = hf_import.load(_write(tmp_path / "ckpt", cfg, tensors))
  rng = np.random.default_rng(2)
  src = rng.integers(2, V, (2, 7))
  src[1, 4:] = 0  # padding
  tgt_in = rng.integers(2, V, (2, 4))
  tgt_in[:, 0] = 0  # decoder start
  got = np.asarray(t5.T5(config).apply(params, src, tgt_in))
  want = _hf_numpy_logits(tensors, cfg, src, tgt_in)
  assert got.shape == (2, 4, V)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_vocabulary_extension_keeps_old_rows_and_adds_new_ones(tmp_path, version):
  cfg = _hf_config(version)
  tensors = _hf_tensors(cfg, seed=3)
  folder = _write(tmp_path / "ckpt", cfg, tensors)
  config, params = hf_import.load(folder, vocab_size=V + 500, seed=7)
  assert config.vocab_size == V + 500
  tables = [("shared.weight", params["params"]["shared"]["embedding"])]
  if version == "1.1":
    tables.append(("lm_head.weight", params["params"]["lm_head"]))
  else:
    assert "lm_head" not in params["params"]
  for name, table in tables:
    table = np.asarray(table)
    old = tensors[name]
    assert table.shape == (V + 500, D)
    np.testing.assert_array_equal(table[:V], old)
    new = table[V:]
    # Drawn around the old rows' per-dimension mean with the old matrix's std.
    assert abs(new.std() - old.std()) < 0.1 * old.std()
    np.testing.assert_allclose(new.mean(0), old.mean(0), atol=4 * old.std() / math.sqrt(500))
    assert len(np.unique(new.round(5), axis=0)) == 500  # distinct rows
  # Everything else is untouched, and the model runs at the new size.
  _, base = hf_import.load(folder)
  np.testing.assert_array_equal(params["params"]["encoder"]["layer_1"]["mlp"]["wo"]["kernel"],
                                base["params"]["encoder"]["layer_1"]["mlp"]["wo"]["kernel"])
  logits = t5.T5(config).apply(params, np.array([[V + 3, 5, 1]]), np.array([[0, V + 499]]))
  assert logits.shape == (1, 2, V + 500) and np.all(np.isfinite(logits))
  # Old-token logits are unchanged by the new rows (new rows only add columns).
  old_logits = t5.T5(hf_import.config_from_hf(cfg)).apply(base, np.array([[7, 5, 1]]),
                                                          np.array([[0, 4]]))
  new_logits = t5.T5(config).apply(params, np.array([[7, 5, 1]]), np.array([[0, 4]]))
  np.testing.assert_allclose(new_logits[..., :V], old_logits, atol=1e-5)
  # Seeded: the same seed gives the same rows, another seed other rows.
  _, again = hf_import.load(folder, vocab_size=V + 500, seed=7)
  _, other = hf_import.load(folder, vocab_size=V + 500, seed=8)
  emb = lambda p: np.asarray(p["params"]["shared"]["embedding"])
  np.testing.assert_array_equal(emb(again), emb(params))
  assert not np.array_equal(emb(other)[V:], emb(params)[V:])
  np.testing.assert_array_equal(emb(other)[:V], emb(params)[:V])
  # A size at or below the checkpoint's changes nothing.
  same_cfg, same = hf_import.load(folder, vocab_size=V - 3)
  assert same_cfg.vocab_size == V
  np.testing.assert_array_equal(emb(same), tensors["shared.weight"])


def test_embedding_stored_under_embed_tokens_and_bfloat16_and_shards(tmp_path):
  cfg = _hf_config("1.0")
  tensors = _hf_tensors(cfg, seed=4)
  # Some exports keep the tied embedding only as `encoder.embed_tokens.weight`.
  renamed = dict(tensors)
  renamed["encoder.embed_tokens.weight"] = renamed.pop("shared.weight")
  _, p1 = hf_import.load(_write(tmp_path / "a", cfg, renamed))
  np.testing.assert_array_equal(p1["params"]["shared"]["embedding"], tensors["shared.weight"])

  # bfloat16 tensors (which safetensors.numpy cannot read) go through the raw reader.
  folder = tmp_path / "bf16"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(cfg))
  header, blobs, offset = {}, [], 0
  for name, x in tensors.items():
    blob = x.astype(ml_dtypes.bfloat16).tobytes()
    header[name] = {"dtype": "BF16", "shape": list(x.shape), "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  head = json.dumps(header).encode()
  (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
  _, p2 = hf_import.load(folder)
  want = tensors["decoder.block.0.layer.1.EncDecAttention.k.weight"].astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(p2["params"]["decoder"]["layer_0"]["cross_attention"]["key"]["kernel"],
                                want.astype(np.float32).T)

  # Sharded checkpoints: an index naming two files.
  folder = tmp_path / "sharded"
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(cfg))
  names = sorted(tensors)
  halves = {"model-00001-of-00002.safetensors": names[::2],
            "model-00002-of-00002.safetensors": names[1::2]}
  for file, part in halves.items():
    safetensors.numpy.save_file({n: tensors[n] for n in part}, str(folder / file))
  index = {"weight_map": {n: f for f, part in halves.items() for n in part}}
  (folder / "model.safetensors.index.json").write_text(json.dumps(index))
  _, p3 = hf_import.load(folder)
  _, p0 = hf_import.load(_write(tmp_path / "plain", cfg, tensors))
  jax.tree.map(np.testing.assert_array_equal, p3, p0)


def test_bad_checkpoints_are_refused(tmp_path):
  cfg = _hf_config("1.1")
  tensors = _hf_tensors(cfg)
  missing = {k: v for k, v in tensors.items() if k != "decoder.block.0.layer.1.EncDecAttention.o.weight"}
  with pytest.raises(KeyError, match="EncDecAttention.o.weight"):
    hf_import.load(_write(tmp_path / "missing", cfg, missing))
  with pytest.raises(KeyError, match="lm_head"):  # v1.1 needs its own output embedding
    hf_import.load(_write(tmp_path / "nohead", cfg,
                          {k: v for k, v in tensors.items() if k != "lm_head.weight"}))
  wrong = dict(tensors, **{"encoder.block.1.layer.1.DenseReluDense.wo.weight": np.zeros((FF, D), np.float32)})
  with pytest.raises(ValueError, match="shape"):
    hf_import.load(_write(tmp_path / "wrong", cfg, wrong))
  # A v1.1 folder whose config says v1.0 (relu, tied) leaves tensors with no place.
  with pytest.raises(ValueError, match="fit no parameter"):
    hf_import.load(_write(tmp_path / "mislabelled", _hf_config("1.1", feed_forward_proj="relu"),
                          {**tensors, **{k.replace("wi_0", "wi"): v for k, v in tensors.items()
                                         if "wi_0" in k}}))
  with pytest.raises(ValueError, match="feed_forward_proj"):
    hf_import.config_from_hf(_hf_config("1.1", feed_forward_proj="gated-silu"))
  with pytest.raises(ValueError, match="architecture"):
    hf_import.config_from_hf(cfg, d_model=16)
  c = hf_import.config_from_hf(cfg, dtype="bfloat16", dropout_rate=0.0)
  assert (c.dtype, c.dropout_rate) == ("bfloat16", 0.0)
  with pytest.raises(FileNotFoundError):
    hf_import.load(tmp_path / "nowhere")


def test_train_stage_starts_from_the_checkpoint_and_extends_it(tmp_path):
  from gensar_jax import pipeline  # pylint: disable=g-import-not-at-top
  from gensar_jax.train import stage as train_stage  # pylint: disable=g-import-not-at-top
  from tests.test_end_to_end import tiny_config  # pylint: disable=g-import-not-at-top

  cfg = _hf_config("v1.0")
  tensors = _hf_tensors(cfg, seed=3)
  _write(tmp_path / "hf", cfg, tensors)
  config = tiny_config(**{"model.init_checkpoint_dir": str(tmp_path / "hf"),
                          "model.dropout_rate": 0.0})
  vocab = cfg["vocab_size"] + 40
  model, params = train_stage.make_model(config, vocab)
  assert model.config.d_model == cfg["d_model"] and model.config.vocab_size == vocab
  assert model.config.dropout_rate == 0.0
  emb = np.asarray(params["params"]["shared"]["embedding"])
  np.testing.assert_array_equal(emb[:cfg["vocab_size"]], tensors["shared.weight"])
  config = tiny_config(**{"model.init_checkpoint_dir": str(tmp_path / "missing")})
  with pytest.raises(pipeline.PipelineError, match="init_checkpoint_dir"):
    train_stage.make_model(config, vocab)
