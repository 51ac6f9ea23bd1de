"""Start from a local Hugging Face T5 checkpoint folder, with no torch (docs/design.md §5).

A folder holds `config.json` and `model.safetensors` (or shards listed in
`model.safetensors.index.json`). Tensors are stored torch-style: `Linear` weights as
(out, in), so every dense kernel is transposed; embeddings and relative position
biases are `[rows, cols]` as ours. Both layouts are read:
  * v1.0 (t5-small): ReLU feed-forward `wi`/`wo`, input/output embeddings tied
    (`shared.weight`; the logits scale by d_model**-0.5);
  * v1.1 (and flan-t5): gated-GELU feed-forward `wi_0`/`wi_1`/`wo`, a separate
    `lm_head.weight`.
Only the first block of each stack carries `relative_attention_bias` (shared by all
layers, as in ours). The vocabulary can then be extended for the behaviour and code
tokens: old rows are kept exactly, new rows are drawn (seeded) from a normal with the
old rows' per-dimension mean and the old matrix's standard deviation.
"""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Any, Mapping

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy

from gensar_jax.model import t5

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_FEED_FORWARDS = {"relu": "relu", "gated-gelu": "gated-gelu"}
# Names under which a checkpoint may store the (tied) input embedding, in order.
_EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def config_from_hf(d: Mapping[str, Any], **overrides) -> t5.T5Config:
  """The T5Config of a parsed Hugging Face T5 `config.json`.

  Args:
    d: the parsed `config.json`.
    **overrides: T5Config fields that are not architecture (e.g. `dtype`,
      `dropout_rate`) to set instead of the file's.

  Raises:
    ValueError: an unsupported `feed_forward_proj`, or an override of an
      architecture field.
  """
  proj = d.get("feed_forward_proj", "relu")
  if proj not in _FEED_FORWARDS:
    raise ValueError(f"unsupported feed_forward_proj {proj!r}; known: {sorted(_FEED_FORWARDS)}")
  num_layers = int(d["num_layers"])
  kwargs = dict(
      vocab_size=int(d["vocab_size"]),
      d_model=int(d["d_model"]),
      d_ff=int(d["d_ff"]),
      num_encoder_layers=num_layers,
      num_decoder_layers=int(d.get("num_decoder_layers") or num_layers),
      num_heads=int(d["num_heads"]),
      d_kv=int(d["d_kv"]),
      relative_attention_num_buckets=int(d.get("relative_attention_num_buckets", 32)),
      relative_attention_max_distance=int(d.get("relative_attention_max_distance", 128)),
      dropout_rate=float(d.get("dropout_rate", 0.1)),
      layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-6)),
      pad_id=int(d.get("pad_token_id", 0)),
      eos_id=int(d.get("eos_token_id", 1)),
      decoder_start_id=int(d.get("decoder_start_token_id", 0)),
      tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
      feed_forward=_FEED_FORWARDS[proj],
  )
  architecture = set(kwargs) - {"dropout_rate"}
  clash = sorted(architecture & set(overrides))
  if clash:
    raise ValueError(f"cannot override architecture fields {clash} of a checkpoint")
  return t5.T5Config(**{**kwargs, **overrides})


def _read_file(path: pathlib.Path) -> dict[str, np.ndarray]:
  """Tensors of one safetensors file; bfloat16 ones (which safetensors.numpy lacks) too."""
  try:
    return safetensors.numpy.load_file(str(path))
  except KeyError as e:
    if str(e) != "'BF16'":
      raise
  # Format: u64 little-endian header length, a JSON header, then the raw data.
  raw = path.read_bytes()
  (header_len,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8:8 + header_len])
  data = memoryview(raw)[8 + header_len:]
  dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64}
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in dtypes:
      raise ValueError(f"tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
  return out


def read_tensors(folder: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor of a checkpoint folder (one `model.safetensors` or indexed shards)."""
  folder = pathlib.Path(folder)
  if (folder / WEIGHTS_FILE).exists():
    return _read_file(folder / WEIGHTS_FILE)
  if (folder / INDEX_FILE).exists():
    shards = sorted(set(json.loads((folder / INDEX_FILE).read_text())["weight_map"].values()))
    out = {}
    for shard in shards:
      out.update(_read_file(folder / shard))
    return out
  raise FileNotFoundError(f"{folder} has neither {WEIGHTS_FILE} nor {INDEX_FILE}")


def params_from_hf(tensors: Mapping[str, np.ndarray], config: t5.T5Config) -> dict:
  """Converts Hugging Face T5 tensors into `t5.T5` parameters.

  Args:
    tensors: name -> array as stored in `model.safetensors` (Linear weights (out, in)).
    config: the architecture (from `config_from_hf`).

  Returns:
    `{"params": ...}` (float32) for `t5.T5(config).apply`.

  Raises:
    KeyError: naming the first tensor the checkpoint lacks.
    ValueError: a tensor's shape does not fit `config`, or the checkpoint holds
      tensors this layout has no place for (another architecture).
  """
  used: set[str] = set()

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
      raise KeyError(f"tensor {name!r} missing from the checkpoint")
    used.add(name)
    x = np.asarray(tensors[name], dtype=np.float32)
    if x.shape != shape:
      raise ValueError(f"tensor {name!r} has shape {x.shape}, expected {shape}")
    return x

  c = config
  inner = c.num_heads * c.d_kv

  def attention(prefix: str) -> dict:
    return {
        "query": {"kernel": get(prefix + ".q.weight", (inner, c.d_model)).T},
        "key": {"kernel": get(prefix + ".k.weight", (inner, c.d_model)).T},
        "value": {"kernel": get(prefix + ".v.weight", (inner, c.d_model)).T},
        "out": {"kernel": get(prefix + ".o.weight", (c.d_model, inner)).T},
    }

  def mlp(prefix: str) -> dict:
    names = ("wi",) if c.feed_forward == "relu" else ("wi_0", "wi_1")
    out = {n: {"kernel": get(f"{prefix}.{n}.weight", (c.d_ff, c.d_model)).T} for n in names}
    out["wo"] = {"kernel": get(prefix + ".wo.weight", (c.d_model, c.d_ff)).T}
    return out

  def norm(name: str) -> dict:
    return {"scale": get(name, (c.d_model,))}

  def relpos(stack: str) -> dict:
    name = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    return {"embedding": get(name, (c.relative_attention_num_buckets, c.num_heads))}

  encoder: dict[str, Any] = {"relpos_bias": relpos("encoder"),
                             "final_norm": norm("encoder.final_layer_norm.weight")}
  for i in range(c.num_encoder_layers):
    pre = f"encoder.block.{i}.layer"
    encoder[f"layer_{i}"] = {
        "pre_attention_norm": norm(f"{pre}.0.layer_norm.weight"),
        "attention": attention(f"{pre}.0.SelfAttention"),
        "pre_mlp_norm": norm(f"{pre}.1.layer_norm.weight"),
        "mlp": mlp(f"{pre}.1.DenseReluDense"),
    }
  decoder: dict[str, Any] = {"relpos_bias": relpos("decoder"),
                             "final_norm": norm("decoder.final_layer_norm.weight")}
  for i in range(c.num_decoder_layers):
    pre = f"decoder.block.{i}.layer"
    decoder[f"layer_{i}"] = {
        "pre_self_attention_norm": norm(f"{pre}.0.layer_norm.weight"),
        "self_attention": attention(f"{pre}.0.SelfAttention"),
        "pre_cross_attention_norm": norm(f"{pre}.1.layer_norm.weight"),
        "cross_attention": attention(f"{pre}.1.EncDecAttention"),
        "pre_mlp_norm": norm(f"{pre}.2.layer_norm.weight"),
        "mlp": mlp(f"{pre}.2.DenseReluDense"),
    }
  embedding_names = _EMBEDDING_NAMES + (("lm_head.weight",) if c.tie_word_embeddings else ())
  present = [n for n in embedding_names if n in tensors]
  if not present:
    raise KeyError(f"none of the embedding tensors {list(embedding_names)} is in the checkpoint")
  p: dict[str, Any] = {
      "shared": {"embedding": get(present[0], (c.vocab_size, c.d_model))},
      "encoder": encoder,
      "decoder": decoder,
  }
  if not c.tie_word_embeddings:
    p["lm_head"] = get("lm_head.weight", (c.vocab_size, c.d_model))
  # Copies of the tied embedding under its other names are expected; nothing else.
  unplaced = sorted(set(tensors) - used - set(embedding_names))
  if unplaced:
    raise ValueError(f"{len(unplaced)} checkpoint tensors fit no parameter, e.g. {unplaced[:3]}")
  return {"params": _to_jax(p)}


def _to_jax(tree):
  if isinstance(tree, dict):
    return {k: _to_jax(v) for k, v in tree.items()}
  return jnp.asarray(np.ascontiguousarray(tree, dtype=np.float32))


def _extend_rows(table_VxD: np.ndarray, new_rows: int, rng: np.random.Generator) -> np.ndarray:
  """`table_VxD` followed by `new_rows` rows ~ normal(per-dimension mean, overall std)."""
  table_VxD = np.asarray(table_VxD, np.float32)
  mean_D = table_VxD.mean(axis=0)
  std = float(table_VxD.std())
  extra = mean_D + std * rng.standard_normal((new_rows, table_VxD.shape[1]))
  return np.concatenate([table_VxD, extra.astype(np.float32)], axis=0)


def extend_vocab(config: t5.T5Config, params: dict, vocab_size: int,
                 seed: int = 0) -> tuple[t5.T5Config, dict]:
  """Grows the vocabulary to `vocab_size` rows (never shrinks).

  The input embedding (and the untied `lm_head`) keep their rows exactly; each new row
  is drawn from a normal with the old rows' per-dimension mean and the old matrix's
  standard deviation, from `numpy.random.default_rng(seed)`.

  Args:
    config: the model's config.
    params: `{"params": ...}` for `config`.
    vocab_size: rows wanted (e.g. the tokenizer's length with the added tokens);
      nothing changes when the model already has at least that many.
    seed: seed of the new rows.

  Returns:
    (config with the new `vocab_size`, params with the extended tables).
  """
  new_rows = int(vocab_size) - config.vocab_size
  if new_rows <= 0:
    return config, params
  rng = np.random.default_rng(seed)
  p = dict(params["params"])
  p["shared"] = {"embedding": jnp.asarray(_extend_rows(p["shared"]["embedding"], new_rows, rng))}
  if not config.tie_word_embeddings:
    p["lm_head"] = jnp.asarray(_extend_rows(p["lm_head"], new_rows, rng))
  new_config = t5.T5Config(**{**config.to_dict(), "vocab_size": int(vocab_size)})
  return new_config, {**params, "params": p}


def load(folder: str | pathlib.Path, vocab_size: int | None = None, *, seed: int = 0,
         **overrides) -> tuple[t5.T5Config, dict]:
  """A T5Config and parameters from a local Hugging Face T5 checkpoint folder.

  Args:
    folder: holds `config.json` and `model.safetensors` (or an index and shards).
    vocab_size: extend the vocabulary to this many rows (see `extend_vocab`);
      None keeps the checkpoint's.
    seed: seed of the new embedding rows.
    **overrides: non-architecture T5Config fields (`dtype`, `dropout_rate`).

  Returns:
    (config, `{"params": ...}`).
  """
  folder = pathlib.Path(folder)
  config_path = folder / CONFIG_FILE
  if not config_path.exists():
    raise FileNotFoundError(f"{config_path} does not exist")
  config = config_from_hf(json.loads(config_path.read_text()), **overrides)
  params = params_from_hf(read_tensors(folder), config)
  if vocab_size is not None:
    config, params = extend_vocab(config, params, vocab_size, seed)
  return config, params
