"""Compiling the train step for an epoch's batch shapes before the loop meets them.

Every (source, target) bucket pair is its own XLA program. Met for the first time in the
loop, a shape stops training while JAX traces, lowers and compiles the step for it:
~20 programs of ~7 s each in the first minutes of a cpu-preset run (most of a core, with
the other idle), 20-30 s each on an accelerator. `Precompiler` compiles the shapes an
epoch will meet, in the order it meets them, in one background thread while the steps
run, and hands the loop each compiled program when its shape comes up: the loop then
waits only for a program that is not ready yet. The programs are those `jax.jit` would
compile (the same lowering of the same function), so the steps' numbers do not change.

Opt-in (`train.precompile`): on the 2-core host it halved the loop's waiting, but the
background compiles took the cores the steps use and the steps in 10 minutes did not
change (README, Benchmarks). It is meant for hosts whose cores are free while an
accelerator steps.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

Shape = tuple[int, int]  # (padded source length, padded target length)


class Precompiler:
  """Compiles a jitted train step for batch shapes ahead of use, in a daemon thread.

  Args:
    step_fn: the jitted step `(state, batch, rng) -> (state, metrics)`.
    state, rng: arrays of the step's first and third arguments (only their shapes,
      dtypes and shardings are read).
    batch_sharding: the `NamedSharding` of the batch arrays `[A, B / A, L]`.
    micro_batches, micro_batch_rows: A and B / A (global rows per micro-batch).
  """

  def __init__(self, step_fn, state: Any, rng: jax.Array, batch_sharding,
               micro_batches: int, micro_batch_rows: int):
    abstract = lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    self._step_fn = step_fn
    self._state = jax.tree.map(abstract, state)
    self._rng = abstract(rng)
    self._sharding = batch_sharding
    self._lead = (micro_batches, micro_batch_rows)
    self._lock = threading.Lock()
    self._closed = False
    self._slots: dict[Shape, _Slot] = {}
    self._queue: queue.Queue[Shape | None] = queue.Queue()
    self._thread = threading.Thread(target=self._work, name="precompile", daemon=True)
    self._thread.start()

  def submit(self, shapes: Iterable[Shape]) -> None:
    """Queues the shapes not yet queued, in the given order (the order of first use)."""
    with self._lock:
      for shape in shapes:
        shape = (int(shape[0]), int(shape[1]))
        if shape not in self._slots:
          self._slots[shape] = _Slot()
          self._queue.put(shape)

  def get(self, shape: Shape) -> tuple[Any, float]:
    """(The compiled step for `shape` or None when it was never submitted, seconds
    spent waiting for the background thread's compilation of it).

    A program still queued is compiled here, in the caller's thread (so the two cores
    compile two programs while the loop waits); one being compiled is waited for. A
    failed compilation raises here, as it would have in the step.
    """
    with self._lock:
      slot = self._slots.get((int(shape[0]), int(shape[1])))
      if slot is None:
        return None, 0.0
      mine = slot.state == "queued"
      if mine:
        slot.state = "compiling"
    waited_s = 0.0
    if mine:
      slot.finish(self._compile, shape)
    elif not slot.done.is_set():
      t0 = time.perf_counter()
      slot.done.wait()
      waited_s = time.perf_counter() - t0
    if slot.error is not None:
      raise slot.error
    return slot.compiled, waited_s

  def close(self) -> None:
    """Stops the thread after the program it is compiling (queued ones are dropped)."""
    with self._lock:
      self._closed = True
    self._queue.put(None)

  def __enter__(self) -> "Precompiler":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def _compile(self, shape: Shape):
    batch = {k: jax.ShapeDtypeStruct(self._lead + (n,), np.int32, sharding=self._sharding)
             for k, n in zip(("src", "tgt"), shape)}
    return self._step_fn.lower(self._state, batch, self._rng).compile()

  def _work(self) -> None:
    while (shape := self._queue.get()) is not None:
      with self._lock:
        if self._closed:
          return
        slot = self._slots[shape]
        if slot.state != "queued":  # The loop needed it first and compiled it itself.
          continue
        slot.state = "compiling"
      slot.finish(self._compile, shape)


class _Slot:
  """One shape's program: queued, compiling, then done (with a program or an error)."""

  def __init__(self):
    self.state = "queued"
    self.compiled = None
    self.error: BaseException | None = None
    self.done = threading.Event()

  def finish(self, compile_fn, shape: Shape) -> None:
    try:
      self.compiled = compile_fn(shape)
    except BaseException as e:  # Re-raised in the loop's thread by `get`.
      self.error = e
    finally:
      self.state = "done"
      self.done.set()
