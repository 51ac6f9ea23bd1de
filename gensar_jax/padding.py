"""Padding token sequences to bucket lengths, so jitted functions compile once per bucket.

Training batches (`gensar_jax.trainer.batches`), the generative ranker and doc2query's
generation pad sources and targets to the smallest bucket that holds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

SOURCE_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TARGET_BUCKETS = (8, 16, 32, 64, 128, 256)


class TrainBuckets(NamedTuple):
  """The lengths training batches' sources and targets are padded to."""

  source: tuple[int, ...]
  target: tuple[int, ...]


# On a CPU backend, finer where examples crowd. Office's cpu-preset mixture has half its
# prompts at 140-170 tokens and 98% of its targets at 6 tokens: sources padded to every 8
# tokens from 128 to 192 (16 from 64) and targets to 6 cut the step's FLOPs by 6% against
# ACCELERATOR_TRAIN_BUCKETS (issue 23), for about twice the compiled shapes, each a few
# seconds to compile on a CPU.
CPU_TRAIN_BUCKETS = TrainBuckets(
    source=(16, 32, 48, 64, 80, 96, 112, 128, 136, 144, 152, 160, 168, 176, 184, 192, 256,
            384, 512, 768, 1024),
    target=(6,) + TARGET_BUCKETS)
# On accelerators, where a shape compiles in 20-30 s and the step is not bound by its
# FLOPs (the H200 run of the README's Accelerators section used these): 144/160/176
# where prompts crowd, 10% of source tokens padding instead of 20% with SOURCE_BUCKETS.
ACCELERATOR_TRAIN_BUCKETS = TrainBuckets(
    source=(16, 32, 48, 64, 96, 128, 144, 160, 176, 192, 256, 384, 512, 768, 1024),
    target=TARGET_BUCKETS)


def train_buckets(backend: str) -> TrainBuckets:
  """Training's buckets on a JAX backend ("cpu", "gpu", "tpu", ...)."""
  return CPU_TRAIN_BUCKETS if backend == "cpu" else ACCELERATOR_TRAIN_BUCKETS


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  """Smallest bucket >= n (n itself when above every bucket)."""
  for b in buckets:
    if n <= b:
      return b
  return int(n)


def pad_stack(seqs: Sequence[np.ndarray], length: int) -> np.ndarray:
  """`[len(seqs), length]` int32, zero-padded on the right."""
  out = np.zeros((len(seqs), length), np.int32)
  for i, s in enumerate(seqs):
    out[i, : len(s)] = s[:length]
  return out
