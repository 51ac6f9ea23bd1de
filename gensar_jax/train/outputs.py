"""The train stage's outputs and how later stages read them (its contract).

Layout of the train stage directory (`<workdir>/train`), besides the trainer's
checkpoints (`gensar_jax.trainer.checkpoint`: `ckpt/`, `best/`):
  tokenizer/            the tokenizer files (`Tokenizer.save`)
  identifiers.npz       copy of the identifier tables the model was trained with
  config.json           the full pipeline config
  model_config.json     `T5Config.to_dict()`
  decoding.json         fingerprints of the tokenizer and identifier tables trained with;
                        restoring checks the files beside the checkpoint against them
  warm_start/           the warm start's checkpoints and log (`train.warm_start_steps`)
  metrics.jsonl, tb/    the training log (`gensar_jax.trainer.logging_utils`)
  curve.json, curve.png the validation curve (`gensar_jax.train.curve`)
`load_for_decoding` restores a trained model with everything decoding needs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil
from typing import Any

import jax
import ml_collections
import numpy as np

from gensar_jax import atomic
from gensar_jax import errors
from gensar_jax import task_kinds
from gensar_jax.identifiers import table as id_table
from gensar_jax.model import t5 as t5_lib
from gensar_jax.trainer import checkpoint as ckpt_lib

TOKENIZER = "tokenizer"
CONFIG = "config.json"
MODEL_CONFIG = "model_config.json"
DECODING = "decoding.json"


def write_decoding_files(
    train_dir: pathlib.Path, config_json: str, t5_config: t5_lib.T5Config,
    tokenizer, identifiers_path: pathlib.Path,
) -> None:
  """Writes what decoding needs besides the parameters (tokenizer, identifiers, configs).

  Args:
    config_json: the whole pipeline config as JSON (`ConfigDict.to_json(indent=2)`).
  """
  train_dir = pathlib.Path(train_dir)
  tokenizer.save(train_dir / TOKENIZER)
  src = pathlib.Path(identifiers_path)
  if src.suffix != ".npz":
    src = src / id_table.FILENAME
  shutil.copyfile(src, train_dir / id_table.FILENAME)
  atomic.write_text_atomic(train_dir / CONFIG, config_json + "\n")
  atomic.write_json_atomic(train_dir / MODEL_CONFIG, t5_config.to_dict())
  atomic.write_json_atomic(train_dir / DECODING, {
      "tokenizer": tokenizer.fingerprint(),
      "identifiers": identifiers_fingerprint(id_table.load(train_dir / id_table.FILENAME))})


def identifiers_fingerprint(ids: id_table.Identifiers) -> str:
  """A hash of both identifier tables and the item order."""
  h = hashlib.sha256()
  h.update("\n".join(str(i) for i in ids.item_ids).encode())
  for kind in id_table.KINDS:
    t = ids.for_task(task_kinds.TASK_OF_KIND[kind])
    h.update(np.ascontiguousarray(t.codes, np.int64).tobytes())
    h.update(("|".join(t.level_names) + f"|{t.codebook_size}").encode())
  return h.hexdigest()[:16]


def check_decoding_files(train_dir: pathlib.Path, tokenizer, identifiers: id_table.Identifiers,
                         t5_config: t5_lib.T5Config) -> None:
  """Raises PipelineError when the files beside a checkpoint are not the ones it was
  trained with (tokenizer, identifier tables) or do not fit the model."""
  recorded = json.loads((pathlib.Path(train_dir) / DECODING).read_text())
  if recorded["tokenizer"] != tokenizer.fingerprint():
    raise errors.PipelineError(
        f"the tokenizer in {train_dir / TOKENIZER} differs from the one the checkpoint was "
        "trained with; restore the original files or retrain")
  if recorded["identifiers"] != identifiers_fingerprint(identifiers):
    raise errors.PipelineError(
        f"the identifier tables in {train_dir / id_table.FILENAME} differ from the ones the "
        "checkpoint was trained with; restore the original files or retrain")
  if tokenizer.vocab_size > t5_config.vocab_size:
    raise errors.PipelineError(
        f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
        f"{t5_config.vocab_size} embeddings")


def load_config(train_dir) -> ml_collections.ConfigDict:
  """The whole pipeline config the run was trained with (`config.json`)."""
  return ml_collections.ConfigDict(json.loads((pathlib.Path(train_dir) / CONFIG).read_text()))


@dataclasses.dataclass(frozen=True)
class DecodingBundle:
  """Everything needed to decode with a trained model."""

  params: Any  # {"params": ...} on the default device
  t5_config: t5_lib.T5Config
  tokenizer: Any  # gensar_jax.model.tokenizer.Tokenizer
  identifiers: id_table.Identifiers
  config: ml_collections.ConfigDict  # the pipeline config of the training run
  step: int  # the optimizer step of the restored parameters


def load_for_decoding(train_dir, which: str = "best") -> DecodingBundle:
  """Restores a trained model and its tokenizer, identifiers and config.

  Args:
    train_dir: the train stage directory (`<workdir>/train`).
    which: "best" (best validation; falls back to the latest when no validation ran)
      or "latest" (the newest periodic checkpoint).

  Returns:
    A DecodingBundle; parameters are placed on the default device.
  """
  from gensar_jax.model import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top

  train_dir = pathlib.Path(train_dir)
  if not (train_dir / MODEL_CONFIG).exists():
    raise errors.PipelineError(f"{train_dir} holds no trained model ({MODEL_CONFIG} missing)")
  t5_config = t5_lib.T5Config.from_dict(json.loads((train_dir / MODEL_CONFIG).read_text()))
  config = load_config(train_dir)
  tokenizer = tok_lib.Tokenizer.load(train_dir / TOKENIZER)
  identifiers = id_table.load(train_dir / id_table.FILENAME)
  check_decoding_files(train_dir, tokenizer, identifiers, t5_config)

  advice = (f"retrain (delete {train_dir} and run the train stage again), or restore "
            "the checkpoint from a copy")
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  shapes = jax.eval_shape(lambda: t5_lib.init_params(t5_config, jax.random.key(0)))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)
  params, step, _ = ckpt_lib.restore_params(train_dir, which, abstract, advice)
  return DecodingBundle(params, t5_config, tokenizer, identifiers, config, step)
