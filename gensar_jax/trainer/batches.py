"""Tokenised examples -> padded, length-grouped batches with a resumable grain iterator.

Each epoch's examples are tokenised once, then planned into global batches:
a seeded permutation, cut into chunks of `GROUP_BATCHES` batches, each chunk sorted by
(target bucket, source length) and cut into batches, then the batch order shuffled.
Similar lengths share a batch (little padding) while batch composition still varies
between epochs. A batch is padded to the smallest bucket length holding its longest
source/target (`padded_lengths`, with the backend's `padding.train_buckets`: finer on a
CPU), so the jitted step compiles once per (source, target) bucket pair.

The plan is a pure function of (seed, epoch, lengths, buckets), the same on every process
(the buckets follow the backend: a run resumed on another backend continues with that
backend's batches);
each process materialises only its rows of every global batch. A grain
`MapDataset` over the plan gives an iterator whose `get_state()` (the next batch
index) is saved with the checkpoint: a resumed run rebuilds the epoch's plan and
continues with the same next batch.
"""

from __future__ import annotations

import grain
import numpy as np

from gensar_jax.padding import bucket_length
from gensar_jax.padding import pad_stack
from gensar_jax.padding import TrainBuckets

GROUP_BATCHES = 32  # Batches per length-sorted chunk.


def plan_batches(
    src_len: np.ndarray, tgt_len: np.ndarray, global_batch: int, seed: int, epoch: int,
    buckets: TrainBuckets,
) -> np.ndarray:
  """Example indices of every global batch of one epoch, `[num_batches, global_batch]`,
  sorted within chunks by (target bucket, source length).

  The remainder (fewer than `global_batch` examples) is left out of this epoch.
  """
  n = len(src_len)
  rng = np.random.default_rng([int(seed), int(epoch), 104729])
  perm = rng.permutation(n)
  num_batches = n // global_batch
  perm = perm[: num_batches * global_batch]
  tb = np.array([bucket_length(int(t), buckets.target) for t in tgt_len])
  chunk = GROUP_BATCHES * global_batch
  batches = []
  for start in range(0, len(perm), chunk):
    idx = perm[start:start + chunk]
    idx = idx[np.lexsort((src_len[idx], tb[idx]))]
    batches.extend(idx.reshape(-1, global_batch))
  if not batches:
    return np.zeros((0, global_batch), np.int64)
  plan = np.stack(batches)
  return plan[rng.permutation(len(plan))]


def padded_lengths(src_len: np.ndarray, tgt_len: np.ndarray,
                   buckets: TrainBuckets) -> tuple[int, int]:
  """(source, target) lengths a global batch with these example lengths is padded to."""
  return (bucket_length(int(np.max(src_len)), buckets.source),
          bucket_length(int(np.max(tgt_len)), buckets.target))


class EpochBatches:
  """One epoch of batches for this process, as a grain `MapDataset`.

  Args:
    src, tgt: token ids per example.
    global_batch: examples per optimizer step over all processes.
    grad_accum_steps: micro-batches per step; batches come out as [A, B_local/A, L].
    seed, epoch: the plan's randomness.
    buckets: the padded lengths (`padding.train_buckets` of the backend).
    process_index, process_count: which rows of each global batch this process holds.
  """

  def __init__(self, src, tgt, global_batch: int, grad_accum_steps: int, seed: int, epoch: int,
               buckets: TrainBuckets, process_index: int = 0, process_count: int = 1):
    if global_batch % (grad_accum_steps * process_count):
      raise ValueError(
          f"batch_size {global_batch} is not divisible by grad_accum_steps x processes "
          f"({grad_accum_steps} x {process_count})"
      )
    self.src, self.tgt = src, tgt
    self.src_len = np.array([len(s) for s in src])
    self.tgt_len = np.array([len(t) for t in tgt])
    self.buckets = buckets
    self.plan = plan_batches(self.src_len, self.tgt_len, global_batch, seed, epoch, buckets)
    self.accum = grad_accum_steps
    local = global_batch // process_count
    self.rows = slice(process_index * local, (process_index + 1) * local)
    self.dataset = grain.MapDataset.source(list(self.plan)).map(self._collate)

  def __len__(self) -> int:
    return len(self.plan)

  def shapes(self, start: int = 0) -> list[tuple[int, int]]:
    """The padded (source, target) lengths of batches `start`, `start + 1`, ..., each
    once, in the order the batches first meet them."""
    out = {}
    for idx_G in self.plan[start:]:
      out.setdefault(padded_lengths(self.src_len[idx_G], self.tgt_len[idx_G], self.buckets), None)
    return list(out)

  def _collate(self, idx_G: np.ndarray) -> dict[str, np.ndarray]:
    # Padded lengths come from the whole global batch, so every process agrees.
    s_len, t_len = padded_lengths(self.src_len[idx_G], self.tgt_len[idx_G], self.buckets)
    mine = idx_G[self.rows]
    src = pad_stack([self.src[i] for i in mine], s_len)
    tgt = pad_stack([self.tgt[i] for i in mine], t_len)
    a = self.accum
    return {
        "src": src.reshape(a, -1, s_len),
        "tgt": tgt.reshape(a, -1, t_len),
    }

  def iterator(self, state: dict | None = None):
    """A grain iterator over the batches, positioned by a saved `get_state()`."""
    it = iter(self.dataset)
    if state is not None:
      it.set_state(state)
    return it
