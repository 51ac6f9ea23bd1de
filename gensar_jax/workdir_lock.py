"""One run per workdir: an advisory lock held for the whole run.

`hold(workdir)` takes an exclusive `fcntl.flock` on `<workdir>/.lock` before any stage
runs and writes the holder's PID and command line into it. A second run on the same
workdir fails at once with one line naming them. The operating system releases the lock
when the holder exits or is killed, so a stale lock file never blocks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
import sys

from gensar_jax.errors import PipelineError

LOCK_FILE = ".lock"


@contextlib.contextmanager
def hold(workdir: pathlib.Path):
  """Holds the workdir's lock for the duration of the block.

  Raises:
    PipelineError: another live process holds it (naming its PID and command).
  """
  path = pathlib.Path(workdir) / LOCK_FILE
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
      raise PipelineError(
          f"workdir {workdir} is in use by another run ({holder}); wait for it to finish "
          "or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"PID {os.getpid()}: {' '.join(sys.argv)}\n".encode(), 0)
    yield
  finally:
    os.close(fd)  # Closing the file releases the lock.
