"""Epochs built ahead of training: in a background thread, or in worker processes.

Building an epoch (sampling its examples, writing and tokenising their prompts) is host
work of seconds, mostly Python on one core: ~7 s an Office epoch on 2 shared Xeon cores,
~3 s on the H200's host. A background thread hides it on CPU, where an epoch of steps
takes minutes. On an accelerator it does not: 41 steps of `preset=gpu1_small` take 0.7 s
of an H200 (17 ms a step), so the device waited for the next epoch ~4x as long as it
computed. Worker processes (`workers` > 0) build that many epochs at once, each on its
own core, without the main process's interpreter lock.

Either way each epoch comes from the same pure function of its number, so the batches,
and every loss, are those of an epoch built in line.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import pickle
import signal
from collections.abc import Callable
from typing import Any

import numpy as np

# make_epoch(epoch) -> (source ids per example, target ids per example), eos included.
EpochFn = Callable[[int], tuple[list[np.ndarray], list[np.ndarray]]]

# This worker process's `make_epoch` (set once by `_start_worker`; unused in the trainer).
_worker_make_epoch: EpochFn | None = None


def _start_worker(make_epoch_pickle: bytes) -> None:
  """Worker initialiser: CPU-only JAX (a worker never touches the accelerator), SIGINT
  left to the trainer (which stops and checkpoints), then the pickled `make_epoch`."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  import jax  # pylint: disable=g-import-not-at-top  # Configured before anything uses it.
  jax.config.update("jax_platforms", "cpu")
  global _worker_make_epoch
  _worker_make_epoch = pickle.loads(make_epoch_pickle)


def pack(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """Token id arrays -> (their concatenation, their lengths): one buffer to send."""
  lengths = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))
  flat = np.concatenate(arrays) if arrays else np.zeros((0,), np.int32)
  return flat, lengths


def unpack(flat: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
  """The inverse of `pack` (views into `flat`)."""
  return np.split(flat, np.cumsum(lengths)[:-1]) if len(lengths) else []


def _build_in_worker(epoch: int):
  src, tgt = _worker_make_epoch(epoch)
  return pack(src), pack(tgt)


class EpochPrefetch:
  """Epochs e+1, ..., e+max(workers, 1) built while epoch e trains.

  A context manager: leaving it stops the builds (a thread's build in flight finishes
  first).

  Args:
    make_epoch: an epoch's tokenised examples from its number (deterministic in it);
      picklable when `workers` > 0.
    wrap: (epoch, (src, tgt)) -> what `get` returns (the trainer's `EpochBatches`).
    first: epoch 0's, already wrapped (the schedule's length comes from it).
    num_epochs: epochs of the run (none is built past the last).
    workers: 0: one background thread; N > 0: N worker processes (spawned: a fresh
      interpreter each, CPU-only JAX), N epochs ahead.
  """

  def __init__(self, make_epoch: EpochFn, wrap: Callable[[int, Any], Any], first: Any,
               num_epochs: int, workers: int = 0):
    if workers < 0:
      raise ValueError(f"workers must be >= 0, got {workers}")
    self.make_epoch, self.wrap, self.first = make_epoch, wrap, first
    self.num_epochs, self.workers = num_epochs, workers
    if workers:
      try:
        payload = pickle.dumps(make_epoch)
      except Exception as e:  # pylint: disable=broad-except  # Any pickling failure.
        raise ValueError(f"epoch workers need a picklable make_epoch ({type(e).__name__}: "
                         f"{e}); use workers=0") from None
      self.pool = concurrent.futures.ProcessPoolExecutor(
          workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_start_worker, initargs=(payload,))
    else:
      self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="epoch")
    self.ahead: dict[int, concurrent.futures.Future] = {}

  def _build_here(self, epoch: int) -> Any:
    return self.wrap(epoch, self.make_epoch(epoch))

  def get(self, epoch: int) -> Any:
    """Epoch `epoch`'s batches (from its build in flight when there is one); tops up the
    builds of the epochs after it."""
    future = self.ahead.pop(epoch, None)
    for stale in [e for e in self.ahead if e < epoch]:  # Not met in order; kept tidy.
      self.ahead.pop(stale).cancel()
    if future is not None:
      got = future.result()  # Re-raises the build's exception.
      batches = self.wrap(epoch, tuple(unpack(*p) for p in got)) if self.workers else got
    else:
      batches = self.first if epoch == 0 else self._build_here(epoch)
    for e in range(epoch + 1, min(epoch + 1 + max(self.workers, 1), self.num_epochs)):
      if e not in self.ahead:
        self.ahead[e] = (self.pool.submit(_build_in_worker, e) if self.workers
                         else self.pool.submit(self._build_here, e))
    return batches

  def __enter__(self) -> "EpochPrefetch":
    return self

  def __exit__(self, *exc) -> None:
    self.pool.shutdown(wait=not self.workers, cancel_futures=True)
