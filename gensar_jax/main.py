"""Entry point: `python -m gensar_jax.main --config=configs/amazon.py --workdir=DIR`.

Parses flags, initialises multi-host JAX when asked, and runs the pipeline stages
named in `config.stages` (see `gensar_jax.pipeline`).
"""

import pathlib

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from gensar_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to an ml_collections config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for every stage's outputs.")
flags.mark_flags_as_required(["config", "workdir"])


XLA_CACHE = ".xla_cache"


def enable_xla_cache(folder: pathlib.Path) -> None:
  """Keeps compiled XLA programs in `folder`: later stages (eval compiles validation's
  shapes again) and resumed runs load them instead of compiling (each takes seconds)."""
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config.get("distributed", False):
    import jax  # pylint: disable=g-import-not-at-top

    jax.distributed.initialize()
  logging.set_verbosity(logging.INFO)
  if config.get("xla_cache", False):
    enable_xla_cache(pathlib.Path(_WORKDIR.value) / XLA_CACHE)
  try:
    pipeline.run(config, _WORKDIR.value)
  except pipeline.PipelineError as e:
    # A user-facing error: one clear message, no traceback.
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
