"""The allowed range of every numeric config field, checked before any work starts.

`check(config)` raises `config_files.ConfigError` (one line, exit 2) for the first field
outside its range. Every int or float field of every bundled config must have a rule
here: `tests/test_config_ranges.py` walks them all and plants an out-of-range value in
each. A rule is looked up by the field's full dotted name, then by its last part (fields
of the same name mean the same thing in every section).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import ml_collections


class Rule(NamedTuple):
  """lo <= x (lo < x when `open_lo`), x <= hi (x < hi when `open_hi`); None: unbounded."""

  lo: float | None
  hi: float | None = None
  open_lo: bool = False
  open_hi: bool = False
  meaning: str = ""

  def allows(self, x: float) -> bool:
    if not math.isfinite(x):
      return False
    if self.lo is not None and (x <= self.lo if self.open_lo else x < self.lo):
      return False
    if self.hi is not None and (x >= self.hi if self.open_hi else x > self.hi):
      return False
    return True

  def text(self) -> str:
    if self.lo is not None and self.hi is not None:
      left, right = "(" if self.open_lo else "[", ")" if self.open_hi else "]"
      return f"in {left}{self.lo:g}, {self.hi:g}{right}"
    if self.lo is not None:
      return f"{'>' if self.open_lo else '>='} {self.lo:g}"
    return f"{'<' if self.open_hi else '<='} {self.hi:g}"


COUNT = Rule(1, meaning="a count")  # >= 1.
NONNEG = Rule(0)  # >= 0.
ZERO_OFF = Rule(0, meaning="0 = off / from another field")  # >= 0 where 0 has a meaning.
POSITIVE = Rule(0, open_lo=True)  # > 0 (rates, scales).
FRACTION = Rule(0, 1, open_hi=True)  # [0, 1): dropout, warmup, smoothing.
PROBABILITY = Rule(0, 1, open_lo=True)  # (0, 1].

# By last name part (the same meaning in every section).
BY_NAME: dict[str, Rule] = {
    # Sizes and counts.
    "batch_size": COUNT, "grad_accum_steps": COUNT, "log_every_steps": COUNT,
    "checkpoint_every_steps": COUNT, "max_to_keep": COUNT, "eval_every_epochs": COUNT,
    "epoch_workers": ZERO_OFF,
    "d_model": COUNT, "d_ff": COUNT, "d_kv": COUNT, "num_heads": COUNT,
    "num_encoder_layers": COUNT, "num_decoder_layers": COUNT, "num_layers": COUNT,
    "hidden": COUNT, "max_len": COUNT, "vocab_size": COUNT, "beam_size": COUNT,
    "max_text_len": COUNT, "max_query_len": COUNT, "num_queries": COUNT, "top_k": COUNT,
    "codebook_size": Rule(2, meaning="at least two codes"), "latent_dim": COUNT,
    "num_shared_levels": COUNT, "num_specific_levels": NONNEG, "kmeans_iters": COUNT,
    "sinkhorn_iters": COUNT, "num_phrasings": COUNT, "max_query_tokens": COUNT,
    "max_text_tokens": COUNT, "max_source_len": COUNT, "max_target_len": COUNT,
    "relative_attention_num_buckets": COUNT, "relative_attention_max_distance": COUNT,
    "generate_batch_size": COUNT, "k": COUNT, "demo_users": COUNT, "demo_items": COUNT,
    "max_rec_his_len": COUNT, "max_src_his_len": COUNT, "min_targets": COUNT,
    "num_negatives": COUNT, "query_min_word_count": COUNT, "bm25_top_k": COUNT,
    # Counts where 0 means "off" or "from another field".
    "steps": ZERO_OFF, "max_steps": ZERO_OFF, "max_minutes": ZERO_OFF,
    "eval_rows": ZERO_OFF, "max_examples": ZERO_OFF, "example_requests": ZERO_OFF,
    "cpu_devices": ZERO_OFF,
    "warmup_epochs": NONNEG, "seed": NONNEG,
    # Rates, scales, fractions.
    "learning_rate": POSITIVE, "weight_decay": NONNEG, "grad_clip": POSITIVE,
    "epochs": POSITIVE, "commitment": NONNEG, "sinkhorn_epsilon": POSITIVE,
    "temperature": POSITIVE, "top_p": PROBABILITY, "dropout_rate": FRACTION,
    "dropout": FRACTION, "warmup_frac": FRACTION, "label_smoothing": FRACTION,
}
# By full dotted name, where a field differs from its namesakes.
BY_FIELD: dict[str, Rule] = {
    "train.warm_start_steps": ZERO_OFF, "train.warm_start_minutes": NONNEG,
    "train.warm_start_learning_rate": POSITIVE, "tasks.nrip_popularity_power": NONNEG,
    "tasks.min_passes": NONNEG,
    "tasks.shares.nrip": NONNEG, "tasks.shares.nsip": NONNEG, "tasks.shares.nsqp": NONNEG,
    "tasks.shares.adhoc": NONNEG, "tasks.shares.desc2id": NONNEG,
    "tasks.shares.id2desc": NONNEG,
    "identifiers.epochs": COUNT, "embed.sasrec.epochs": COUNT,
}


def rule_for(name: str) -> Rule | None:
  """The rule of a dotted field name, or None when there is none."""
  return BY_FIELD.get(name) or BY_NAME.get(name.rsplit(".", 1)[-1])


def numeric_fields(config: ml_collections.ConfigDict, prefix: str = ""):
  """(dotted name, value) of every int or float field (bools excluded)."""
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      yield from numeric_fields(value, name + ".")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield name, value


def check(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first numeric field outside its range (or without one)."""
  from gensar_jax.config_files import ConfigError  # pylint: disable=g-import-not-at-top

  for name, value in numeric_fields(config):
    rule = rule_for(name)
    if rule is None:
      raise ConfigError(f"config.{name} has no checked range; add one to "
                        "gensar_jax/config_ranges.py")
    if not rule.allows(float(value)):
      meaning = f" ({rule.meaning})" if rule.meaning else ""
      raise ConfigError(f"config.{name} = {value!r} is out of range: it must be "
                        f"{rule.text()}{meaning}")
