"""Errors every layer may raise, and the process exit codes they map to.

Library modules raise their own narrow errors or these; `gensar_jax.main` turns them into
one line on stderr and an exit code:
  0   done;
  1   a `PipelineError` (bad config, bad input, missing upstream outputs, a diverged or
      damaged model, a workdir in use) or a crash;
  2   a config file or override the user must fix (`config_files.ConfigError`);
  75  `Preempted`: stopped on SIGTERM/SIGINT (training after saving a checkpoint); run the
      same command again to resume (75 is EX_TEMPFAIL, "try again later": schedulers and
      launch scripts can requeue on it).
"""

PREEMPTED_EXIT_CODE = 75
CONFIG_EXIT_CODE = 2


class PipelineError(Exception):
  """A user-facing error: bad config, bad input, missing upstream outputs."""


class Preempted(PipelineError):
  """Stopped on SIGTERM or SIGINT (training after saving a checkpoint); rerun to resume."""


class Diverged(PipelineError):
  """Training produced a non-finite loss or gradient norm; the last good checkpoint stays."""


class NonFiniteScores(PipelineError):
  """A ranking was asked to rank NaN or +inf scores (a diverged or damaged model)."""


class DamagedCheckpoint(PipelineError):
  """A checkpoint's arrays do not match the digest written when it was saved, or cannot be
  read at all."""
