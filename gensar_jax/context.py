"""What a stage's `run(config, ctx)` gets besides the config: where to read and write.

Below the runner (`gensar_jax.pipeline`) so that stages need not import it: a stage
imports this module, `errors` and `atomic`, never the runner.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable

from gensar_jax.errors import PipelineError

DONE = ".done"  # Holds the fingerprint of a finished stage.
SUMMARY = "summary.json"  # A finished stage's figures.


@dataclasses.dataclass(frozen=True)
class StageContext:
  """Where a stage reads and writes.

  Attributes:
    workdir: the run's workdir.
    name: this stage's name (its directory under the workdir).
    inputs: the stages it declares it reads (`INPUTS` of its module); None allows any
      (a stage run by hand, as tests do).
    config_record: returns the run's whole config as JSON, to record beside outputs (the
      train stage's `config.json`); settings are read from the stage's own config only.
  """

  workdir: pathlib.Path
  name: str
  inputs: tuple[str, ...] | None = None
  config_record: Callable[[], str] | None = None

  @property
  def dir(self) -> pathlib.Path:
    """This stage's output directory (exists when `run` is called)."""
    return self.workdir / self.name

  def _check_declared(self, stage: str) -> None:
    if self.inputs is not None and stage not in self.inputs:
      raise PipelineError(
          f"stage '{self.name}' reads the outputs of stage '{stage}' without declaring it; "
          f"add '{stage}' to INPUTS in its module (declared: {list(self.inputs)})")

  def input_dir(self, stage: str) -> pathlib.Path:
    """The output directory of a finished upstream stage (one it declares)."""
    self._check_declared(stage)
    path = self.workdir / stage
    if not (path / DONE).exists():
      raise PipelineError(
          f"stage '{self.name}' needs the outputs of stage '{stage}' in {path}; "
          f"run it first (add '{stage}' to --config.stages)"
      )
    return path

  def has_input(self, stage: str) -> bool:
    """Whether an optional upstream stage (one it declares) has finished."""
    self._check_declared(stage)
    return (self.workdir / stage / DONE).exists()


def read_summary(workdir: str | os.PathLike, stage: str) -> dict:
  """The `summary.json` a finished stage wrote."""
  return json.loads((pathlib.Path(workdir) / stage / SUMMARY).read_text())
