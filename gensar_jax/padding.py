"""Padding token sequences to bucket lengths, so jitted functions compile once per bucket.

Training batches (`gensar_jax.trainer.batches`), the generative ranker and doc2query's
generation pad sources and targets to the smallest bucket that holds them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SOURCE_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TARGET_BUCKETS = (8, 16, 32, 64, 128, 256)
# Training batches' lengths: finer where examples crowd. Office's cpu-preset mixture has
# half its prompts at 140-170 tokens and 98% of its targets at 6 tokens: sources padded
# to every 8 tokens from 128 to 192 (16 from 64) and targets to 6 cut the step's FLOPs
# by 6% against buckets of 16/8 (issue 23), for more compiled shapes (each a few seconds
# on a CPU). Decoding keeps SOURCE_BUCKETS and TARGET_BUCKETS.
TRAIN_SOURCE_BUCKETS = (16, 32, 48, 64, 80, 96, 112, 128, 136, 144, 152, 160, 168, 176,
                        184, 192, 256, 384, 512, 768, 1024)
TRAIN_TARGET_BUCKETS = (6,) + TARGET_BUCKETS


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
