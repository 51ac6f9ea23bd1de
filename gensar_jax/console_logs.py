"""Which log lines reach the console: this package's INFO lines and everyone's warnings.

Orbax, TensorStore and JAX's backend probing write many INFO lines per checkpoint read
or backend start; entry points (`gensar_jax.main`, `gensar_jax.experiments`) call
`quiet()` unless asked to be verbose, so their output stays a page a person reads.
"""

from __future__ import annotations

import logging as pylogging
import os
import pathlib

from absl import logging

PACKAGE_DIR = str(pathlib.Path(__file__).resolve().parent)


class OwnInfoOnly(pylogging.Filter):
  """Keeps INFO lines of this package and warnings of anyone; drops third-party INFO."""

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or record.pathname.startswith(PACKAGE_DIR)


def quiet() -> None:
  """Third-party INFO lines off (see `OwnInfoOnly`), C++ INFO/WARNING lines of XLA off."""
  logging.get_absl_handler().addFilter(OwnInfoOnly())
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
