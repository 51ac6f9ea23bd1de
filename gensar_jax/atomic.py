"""Atomic file writes: a temporary file beside the target, then a rename.

A reader (another process, a resumed run) sees the old file or the new one, never a
half-written one.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any


def write_json_atomic(path: pathlib.Path, obj: Any) -> None:
  """Writes JSON to `path` through a temporary file and a rename."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")
  os.replace(tmp, path)


def write_text_atomic(path: pathlib.Path, text: str) -> None:
  """Writes text to `path` through a temporary file and a rename."""
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(text)
  os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
  if hasattr(obj, "tolist"):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj)}")
