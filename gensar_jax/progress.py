"""Progress bars drawn only on a terminal: never carriage-return frames in a log file."""

from __future__ import annotations

import tqdm


def bar(iterable=None, *, show: bool = True, **kwargs) -> tqdm.tqdm:
  """A tqdm bar when `show` and stderr is a terminal (tqdm's `disable=None`), else silent."""
  return tqdm.tqdm(iterable, disable=None if show else True, **kwargs)
