"""Assembles the per-host `gensar_jax.main` command line that the launch scripts run.

Every host of a multi-host job runs the same command: the config, the shared workdir
and `--config.distributed=True`, so that `jax.distributed.initialize()` picks up the
coordinator from the environment (TPU pod metadata, or SLURM's variables).

  python -m launch.command --config=configs/amazon.py:category=Electronics,preset=paper \
      --workdir=/mnt/shared/gensar/electronics -- --config.train.epochs=200
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence


def build_command(
    config: str,
    workdir: str,
    overrides: Sequence[str] = (),
    python: str = "python3",
) -> list[str]:
  """The argv every host runs.

  Args:
    config: config file with its optional argument string, e.g.
      `configs/amazon.py:category=Electronics,preset=paper`.
    workdir: a directory every host sees (a shared filesystem mount).
    overrides: extra `--config.a.b=value` flags, passed through unchanged.
    python: the interpreter to run.

  Returns:
    The argument vector.
  """
  if not workdir:
    raise ValueError("a shared --workdir is required for multi-host runs")
  if workdir.startswith("gs://"):
    raise ValueError("workdir must be a shared filesystem path mounted on every host, not gs://")
  bad = [o for o in overrides if not o.startswith("--config.")]
  if bad:
    raise ValueError(f"overrides must be --config.<field>=<value> flags, got {bad}")
  if any(o.startswith("--config.distributed") for o in overrides):
    raise ValueError("--config.distributed is set by the launcher")
  return [
      python, "-m", "gensar_jax.main",
      f"--config={config}",
      f"--workdir={workdir}",
      "--config.distributed=True",
      *overrides,
  ]


def main(argv: Sequence[str] | None = None) -> None:
  """Prints the shell-quoted command (the launch scripts call this)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  extra: list[str] = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1:]
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--python", default="python3")
  args = parser.parse_args(argv)
  print(shlex.join(build_command(args.config, args.workdir, extra, args.python)))


if __name__ == "__main__":
  main()
