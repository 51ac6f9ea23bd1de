"""Seconds JAX spends tracing, lowering and compiling while training runs.

Each new batch shape (a bucket pair not seen before) makes `jax.jit` trace the step
again and XLA compile it: seconds each on a CPU, inside the training's wall time, so a
log window that meets a new shape reads slow for a reason its examples/s does not show.
`CompileClock` sums those seconds from JAX's own monitoring events while it is open
(loading a program from the persistent cache counts as its compile), so the trainer can
report them per log window and per session.
"""

from __future__ import annotations

import threading

import jax

# JAX's duration events of one compilation: the trace to a jaxpr, its lowering to MLIR,
# and XLA's compile (or the persistent cache's load) of the module.
TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
LOWER_EVENT = "/jax/core/compile/jaxpr_to_mlir_module_duration"
BACKEND_EVENT = "/jax/core/compile/backend_compile_duration"
COMPILE_EVENTS = (TRACE_EVENT, LOWER_EVENT, BACKEND_EVENT)


class CompileClock:
  """A context manager summing JAX's compile-time events while it is open.

  Args:
    thread: count only the events of this thread (`threading.get_ident()`; None: any
      thread). The trainer counts its loop's: compiles in `precompile`'s background
      thread do not stop the steps, and the loop's waits for them are `add`ed.

  Attributes:
    seconds: tracing, lowering and compiling seconds so far (and seconds `add`ed).
    programs: XLA programs compiled (or loaded from the persistent cache) so far.
  """

  def __init__(self, thread: int | None = None):
    self.seconds = 0.0
    self.programs = 0
    self._thread = thread
    self._lock = threading.Lock()

  def add(self, seconds: float) -> None:
    """Counts `seconds` spent waiting for a compilation in another thread."""
    with self._lock:
      self.seconds += float(seconds)

  def _listen(self, event: str, duration_secs: float, **kwargs) -> None:
    del kwargs
    if event not in COMPILE_EVENTS:
      return
    if self._thread is not None and threading.get_ident() != self._thread:
      return
    with self._lock:
      self.seconds += float(duration_secs)
      self.programs += event == BACKEND_EVENT

  def __enter__(self) -> "CompileClock":
    jax.monitoring.register_event_duration_secs_listener(self._listen)
    return self

  def __exit__(self, *exc) -> None:
    jax.monitoring.unregister_event_duration_listener(self._listen)
