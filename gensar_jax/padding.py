"""Padding token sequences to bucket lengths, so jitted functions compile once per bucket.

Training batches (`gensar_jax.trainer.batches`), the generative ranker and doc2query's
generation pad sources and targets to the smallest bucket that holds them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SOURCE_BUCKETS = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
TARGET_BUCKETS = (8, 16, 32, 64, 128, 256)
# Training batches' source lengths: finer where prompts crowd (Office's cpu-preset mixture
# has half its prompts at 140-170 tokens): 10% of source tokens are padding instead of
# 20%, for three more compiled shapes (decoding keeps SOURCE_BUCKETS).
TRAIN_SOURCE_BUCKETS = (16, 32, 48, 64, 96, 128, 144, 160, 176, 192, 256, 384, 512, 768,
                        1024)


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
