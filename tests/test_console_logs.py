"""Which log lines reach the console: this package's INFO and everyone's warnings."""

import logging
import pathlib

from gensar_jax import console_logs


def _record(path: str, level: int) -> logging.LogRecord:
  return logging.LogRecord("x", level, path, 1, "msg", None, None)


def test_third_party_info_is_dropped_and_warnings_kept():
  keep = console_logs.OwnInfoOnly().filter
  ours = str(pathlib.Path(console_logs.PACKAGE_DIR) / "trainer" / "loop.py")
  theirs = "/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert keep(_record(ours, logging.INFO))
  assert not keep(_record(theirs, logging.INFO))
  assert keep(_record(theirs, logging.WARNING))
  assert keep(_record(theirs, logging.ERROR))
