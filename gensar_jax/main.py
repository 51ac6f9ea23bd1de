"""Entry point: `gensar --config=configs/demo.py --workdir=DIR` (or `python -m gensar_jax.main`).

Reads the config file and its `--config.section.field=value` overrides, initialises
multi-host JAX when asked, and runs the pipeline stages named in `config.stages` (see
`gensar_jax.pipeline`). User errors are one line on stderr; exit codes are listed in
`gensar_jax.errors` (75: preempted, rerun to resume).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import sys

from absl import app
from absl import logging

from gensar_jax import config_files
from gensar_jax import console_logs
from gensar_jax import devices
from gensar_jax import errors
from gensar_jax import pipeline


XLA_CACHE = ".xla_cache"
CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _first_line(doc: str | None) -> str:
  return (doc or "").strip().splitlines()[0] if (doc or "").strip() else ""


def _module_facts(module: str) -> tuple[str, tuple[str, ...]]:
  """A stage module's docstring and `INPUTS`, read from its source without importing it
  (importing a stage imports JAX: `--help` stays fast)."""
  tree = ast.parse(pathlib.Path(importlib.util.find_spec(module).origin).read_text())
  inputs: tuple[str, ...] = ()
  for node in tree.body:
    if (isinstance(node, ast.Assign) and len(node.targets) == 1
        and getattr(node.targets[0], "id", None) == "INPUTS"):
      inputs = tuple(ast.literal_eval(node.value))
  return ast.get_docstring(tree) or "", inputs


def help_text() -> str:
  """What `--help` prints: usage, the stages, the bundled configs, where the fields are."""
  lines = [
      "usage: gensar --config=CONFIG[:ARG] --workdir=DIR [--config.SECTION.FIELD=VALUE ...]",
      "       gensar --config=CONFIG[:ARG] [--config.SECTION.FIELD=VALUE ...] --show_config",
      "",
      "Runs the GenSAR pipeline's stages in order; each writes DIR/<stage>/ and is skipped",
      "when its config, code and inputs are unchanged.",
      "",
      "stages (--config.stages=all or a comma-separated list; 'all' leaves out infer):",
  ]
  for stage in pipeline.STAGES:
    doc, inputs = _module_facts(stage.module)
    reads = ", ".join(inputs) or "raw files"
    lines.append(f"  {stage.name:<12} {_first_line(doc)}  [reads: {reads}]")
  lines += ["", f"configs (in {CONFIGS_DIR}):"]
  for path in sorted(CONFIGS_DIR.glob("*.py")):
    doc = _first_line(config_files.load_module(path).__doc__)
    lines.append(f"  configs/{path.name:<12} {doc}")
  lines += [
      "",
      "  configs/amazon.py takes category=NAME,preset=paper|cpu|gpu1|gpu1_small; configs/ablation.py takes",
      "  name=ABLATION plus those.",
      "",
      "--show_config prints every field of the resolved config (section.field = value);",
      "--verbose keeps third-party INFO lines (Orbax, TensorStore, JAX) in the log;",
      "each field is commented in its config file. --workdir is required to run stages.",
      "exit codes: 0 done, 1 error, 2 bad config or flags, 75 preempted (rerun to resume).",
  ]
  return "\n".join(lines)


def enable_xla_cache(folder: pathlib.Path) -> None:
  """Keeps compiled XLA programs in `folder`: later stages (eval compiles validation's
  shapes again) and resumed runs load them instead of compiling (each takes seconds).

  Off a GPU the programs' keys do not depend on the folder, so a cache copied or moved
  to another workdir is still read. (JAX 0.10 names a GPU autotuning folder inside the
  cache in every program's compile options, and so in its key: left on for GPUs, where
  it saves autotuning; on other backends it only made every other folder miss.)
  """
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  if jax.default_backend() != "gpu":
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")


_OUTPUTS = (  # (stage, its main output, what it is)
    ("train", "train/best", "best checkpoint (Orbax; train/ckpt: periodic)"),
    ("eval", "eval/metrics.json", "every metric with its standard error"),
    ("report", "report/results.md", "results tables and plots"),
)


def outputs_text(workdir: pathlib.Path, summaries) -> str:
  """The closing lines of a run: the main outputs of the stages this run ran."""
  ran = getattr(summaries, "ran", list(summaries))
  lines = []
  for stage, rel, what in _OUTPUTS:
    if stage in ran and (workdir / rel).exists():
      lines.append(f"  {workdir / rel}  ({what})")
  if "infer" in ran and summaries["infer"].get("output"):
    infer = summaries["infer"]
    what = ("the example answers printed above" if infer.get("examples")
            else f"answers: {infer['answered']} of {infer['requests']} requests")
    lines.append(f"  {infer['output']}  ({what})")
  if not lines:
    return f"nothing to do in {workdir}: every selected stage was up to date"
  return "\n".join([f"outputs of this run in {workdir}:"] + lines)


def _run(config, workdir: str, verbose: bool = False) -> None:
  """The absl main: runs the pipeline with `config` in `workdir`."""
  if not verbose:
    console_logs.quiet()
  logging.set_verbosity(logging.INFO)
  # Before anything starts JAX's backend: the CPU device count is fixed from then on.
  logging.info(devices.split_cpu(int(config.get("cpu_devices", 0))))
  if config.get("distributed", False):
    import jax  # pylint: disable=g-import-not-at-top

    jax.distributed.initialize()
  if config.get("xla_cache", False):
    enable_xla_cache(pathlib.Path(workdir) / XLA_CACHE)
  if config.get("cpu_keep_freed_memory", False):
    logging.info(devices.keep_freed_memory())
  try:
    summaries = pipeline.run(config, workdir)
    print(outputs_text(pathlib.Path(workdir), summaries), flush=True)
  except errors.Preempted as e:
    _finish_dispatched_work()
    print(f"preempted: {e}", file=sys.stderr, flush=True)
    # Straight out: the signal may have cut a library (Orbax, TensorStore, XLA) midway with
    # its threads still running, and the interpreter's shutdown can then crash. Nothing is
    # lost: training closed its checkpoints before raising; other stages rerun.
    sys.stdout.flush()
    os._exit(errors.PREEMPTED_EXIT_CODE)  # pylint: disable=protected-access
  except errors.PipelineError as e:
    # A user-facing error: one clear message, no traceback.
    _finish_dispatched_work()
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)


def _finish_dispatched_work() -> None:
  """Waits for computations JAX dispatched before the error (a signal can stop Python
  while XLA still runs them): exiting under them can crash the interpreter's shutdown."""
  jax = sys.modules.get("jax")
  if jax is None:
    return
  for x in jax.live_arrays():
    try:
      x.block_until_ready()
    except Exception:  # pylint: disable=broad-except  # Deleted or failed: nothing to wait for.
      pass


def main(argv: list[str] | None = None) -> None:
  """Console entry point (`gensar`): parses the config, then runs absl with the rest."""
  argv = list(sys.argv if argv is None else argv)
  if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
    print(help_text())
    sys.exit(0)
  show = "--show_config" in argv[1:]
  verbose = "--verbose" in argv[1:]
  argv = [a for a in argv if a not in ("--show_config", "--verbose")]
  try:
    spec, overrides, rest = config_files.split_argv(argv)
    config = config_files.from_argv(spec, overrides)
    # Not an absl flag: other modules (experiments) define their own --workdir.
    workdir, rest = config_files.pop_flag(rest, "workdir")
  except config_files.ConfigError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(errors.CONFIG_EXIT_CODE)
  if show:
    config_files.show(config)
    sys.exit(0)
  if not workdir:
    print("error: --workdir is required (the folder every stage writes into)", file=sys.stderr)
    sys.exit(errors.CONFIG_EXIT_CODE)
  app.run(lambda args: _run(config, workdir, verbose) if len(args) == 1 else _unexpected(args),
          argv=rest)


def _unexpected(args: list[str]) -> None:
  raise app.UsageError(f"unexpected arguments: {args[1:]} (flags look like --name=value)")


if __name__ == "__main__":
  main()
