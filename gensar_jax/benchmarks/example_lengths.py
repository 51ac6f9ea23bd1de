"""The (source, target) token lengths of one epoch of training examples, for `train_step`.

  python -m gensar_jax.benchmarks.example_lengths --workdir=RUN --out=lengths.json
      [--prompt_style=instruction|compact] [--warm_start] [--seed=42]

Reads a finished run's data, identifiers, doc2query and tokenizer (`RUN/train/tokenizer`),
builds epoch 0 of the cpu preset's mixture (`--prompt_style`) or the warm start's
identifier-only rows (`--warm_start`) exactly as the train stage does, tokenises them, and
writes the length distribution that `python -m gensar_jax.benchmarks.train_step
--lengths=lengths.json` times. It also prints the mean source length, so two recipes'
per-example cost can be compared before training them (the study's equal-wall-clock arms).
"""

from __future__ import annotations

import collections
import json
import pathlib

from absl import app
from absl import flags
import numpy as np

from gensar_jax import config_files
from gensar_jax import tasks as tasks_lib
from gensar_jax.data import dataset
from gensar_jax.data import schema
from gensar_jax.doc2query import outputs as d2q_outputs
from gensar_jax.identifiers import table as id_table
from gensar_jax.model import tokenizer as tok_lib

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run (data ... train stages).")
_OUT = flags.DEFINE_string("out", None, "Where to write the length distribution (JSON).")
_STYLE = flags.DEFINE_enum("prompt_style", tasks_lib.DEFAULT_PROMPT_STYLE,
                           list(tasks_lib.PROMPT_STYLES), "tasks.prompt_style")
_WARM = flags.DEFINE_bool("warm_start", False, "The warm start's rows instead of the mixture.")
_SEED = flags.DEFINE_integer("seed", 42, "The training seed (the mixture's sampling).")

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def lengths(workdir: pathlib.Path, prompt_style: str, warm_start: bool,
            seed: int) -> tuple[np.ndarray, np.ndarray, int]:
  """(source lengths [N], target lengths [N], vocabulary size) of one epoch, eos included."""
  config = config_files.load(f"{CONFIGS / 'amazon.py'}:preset=cpu")
  config.tasks.prompt_style = prompt_style
  catalog = dataset.load_catalog(workdir / "data")
  identifiers = id_table.load(workdir / "identifiers")
  pseudo = None
  if (workdir / "doc2query").exists():
    pseudo = d2q_outputs.load_pseudo_queries(workdir / "doc2query", catalog.item_ids)
  builder = tasks_lib.TaskBuilder(catalog, identifiers, config.tasks, pseudo_queries=pseudo,
                                  **tasks_lib.run_size(config.train))
  rows = {t: dataset.load_rows(workdir / "data", t, "train") for t in schema.TASKS}
  examples = (builder.warm_start_examples(rows) if warm_start
              else builder.epoch_examples(rows, seed, 0))
  tokenizer = tok_lib.Tokenizer.load(workdir / "train" / "tokenizer")
  src, tgt = tasks_lib.encode_examples(tokenizer, examples, config.tasks.max_source_len,
                                       config.tasks.max_target_len)
  return (np.array([len(s) for s in src]), np.array([len(t) for t in tgt]),
          tokenizer.vocab_size)


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  src, tgt, vocab = lengths(workdir, _STYLE.value, _WARM.value, _SEED.value)
  pairs = collections.Counter(zip(src.tolist(), tgt.tolist()))
  what = "the warm start's rows" if _WARM.value else f"epoch 0 of the mixture (seed {_SEED.value})"
  record = {
      "source": f"{workdir.name}, preset=cpu, prompt_style={_STYLE.value}, {what}, "
                "tokenised as the train stage does",
      "vocab_size": int(vocab),
      "examples": int(len(src)),
      "pairs": [[s, t, n] for (s, t), n in sorted(pairs.items())],
  }
  pathlib.Path(_OUT.value).write_text(json.dumps(record) + "\n")
  print(f"{len(src)} examples: source {src.mean():.1f} tokens on average, target "
        f"{tgt.mean():.1f}; written to {_OUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
