"""The stage runner: ordered stages, caching by fingerprint, one summary per stage.

Every stage is a module with `run(config, ctx) -> dict` (the summary) and optionally
`validate(config)` (raise `PipelineError` with one clear message). Beside its code a
stage module declares what it reads:
  INPUTS           the stages whose outputs it reads (`ctx.input_dir` refuses others);
  OPTIONAL_INPUTS  those of them it can do without (it checks `ctx.has_input`);
  CONFIG_KEYS      the config sections, or single fields ("section.field"), that
                   determine its outputs (they enter its fingerprint);
  ALSO_READS       config keys it reads that do not enter its fingerprint (device layout,
                   decoding batch sizes, facts already fixed by an input's fingerprint).
`run` gets the config restricted to those keys plus the top-level scalars (`seed`,
`distributed`, ...): reading anything else raises. `validate` sees the whole config
(cross-section checks).

A stage keeps its outputs under `<workdir>/<stage>/` and is skipped when its
fingerprint (its config sections plus the fingerprints of the stages it reads) matches
the one recorded when it last finished and its outputs still match the manifest written
then (`gensar_jax.manifest`; a changed or missing file reruns the stage, and a damaged
input of a selected stage is rebuilt first, the log saying which files). A run that was
cut off leaves a `started` fingerprint: the same config resumes into the same directory
(the train stage continues from its last checkpoint), a different config starts the
stage afresh. A rerun moves the finished outputs aside to `<stage>.previous/` and deletes
them only once the new ones are complete (a failed rerun leaves them there; a later run
with their config puts them back).

Guarantees around the runner: one run per workdir (`workdir_lock`), and SIGTERM/SIGINT in
any stage ends the run with `errors.Preempted` naming the stage (exit 75); the same
command then resumes or reruns it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import contextlib
import os
import pathlib
import shutil
import signal
import threading
import time
from typing import Any

from absl import logging
import ml_collections

from gensar_jax import file_digests
from gensar_jax import manifest
from gensar_jax import workdir_lock
# Re-exported for callers of the runner (tests, scripts); stages import them from below.
from gensar_jax.atomic import write_json_atomic
from gensar_jax.atomic import write_text_atomic
from gensar_jax.context import DONE as _DONE
from gensar_jax.context import read_summary
from gensar_jax.context import StageContext
from gensar_jax.context import SUMMARY
from gensar_jax.errors import PipelineError
from gensar_jax.errors import Preempted


@dataclasses.dataclass(frozen=True)
class Stage:
  """One pipeline stage: its name, its module, and how the runner schedules it.

  What it reads (`inputs`, `optional`, `config_keys`, `also_reads`) is declared in its
  module (`INPUTS`, `OPTIONAL_INPUTS`, `CONFIG_KEYS`, `ALSO_READS`) and read from there
  when first asked; a value given here instead (tests' fake stages) takes precedence.

  Attributes:
    name: directory name under the workdir and the name used in `config.stages`.
    module: module holding `run(config, ctx)` (and optionally `validate(config)`).
    given_inputs: stages whose outputs this one reads (None: the module's `INPUTS`).
    given_config_keys: config sections (or single fields, "section.field") that
      determine this stage's outputs (None: the module's `CONFIG_KEYS`).
    cached: whether a finished stage is skipped when its fingerprint is unchanged.
    all_hosts: in a multi-host run, whether every process runs it (sharded work:
      training, decoding); otherwise process 0 runs it and the others wait for it.
    given_optional: inputs the stage can do without (None: `OPTIONAL_INPUTS`, or none).
    refresh: rerun it, though not selected, when it has run in this workdir before and
      one of its inputs was rebuilt by this invocation (the report follows eval).
  """

  name: str
  module: str
  given_inputs: tuple[str, ...] | None = None
  given_config_keys: tuple[str, ...] | None = None
  cached: bool = True
  all_hosts: bool = False
  given_optional: tuple[str, ...] | None = None
  refresh: bool = False

  def _declared(self, attr: str, given, required: bool = True) -> tuple[str, ...]:
    if given is not None:
      return tuple(given)
    module = importlib.import_module(self.module)
    if required and not hasattr(module, attr):
      raise PipelineError(f"stage module {self.module} does not declare {attr}")
    return tuple(getattr(module, attr, ()))

  @property
  def inputs(self) -> tuple[str, ...]:
    return self._declared("INPUTS", self.given_inputs)

  @property
  def config_keys(self) -> tuple[str, ...]:
    return self._declared("CONFIG_KEYS", self.given_config_keys)

  @property
  def optional(self) -> tuple[str, ...]:
    return self._declared("OPTIONAL_INPUTS", self.given_optional, required=False)

  @property
  def also_reads(self) -> tuple[str, ...]:
    given = () if self.given_config_keys is not None else None
    return self._declared("ALSO_READS", given, required=False)


STAGES: tuple[Stage, ...] = (
    Stage("data", "gensar_jax.data.stage"),
    Stage("embed", "gensar_jax.embed.stage"),
    Stage("identifiers", "gensar_jax.identifiers.stage"),
    Stage("doc2query", "gensar_jax.doc2query.stage", all_hosts=True),
    Stage("train", "gensar_jax.train.stage", all_hosts=True),
    Stage("eval", "gensar_jax.evaluation.stage", all_hosts=True),
    Stage("report", "gensar_jax.report.stage", cached=False, refresh=True),
    Stage("infer", "gensar_jax.inference.stage", cached=False, all_hosts=True),
)
_BY_NAME = {s.name: s for s in STAGES}
# Stages that run when `config.stages` is "all" (inference needs a request file).
_DEFAULT_EXCLUDED = ("infer",)

_STARTED = ".started"
_PARTS = ".fingerprint.json"  # What the last run's fingerprint hashed (to say why a stage reruns).
DIGEST_CACHE = ".file_digests.json"  # SHA-256 of outside files by (path, size, mtime).


def parse_stages(spec: str) -> list[str]:
  """Turns `config.stages` ("all" or "data,embed,...") into ordered stage names."""
  names = [n.strip() for n in spec.split(",") if n.strip()]
  if names in ([], ["all"]):
    return [s.name for s in STAGES if s.name not in _DEFAULT_EXCLUDED]
  unknown = [n for n in names if n not in _BY_NAME]
  if unknown:
    raise PipelineError(
        f"unknown stage(s) {unknown} in config.stages; known: {[s.name for s in STAGES]}"
    )
  return [s.name for s in STAGES if s.name in names]


def _section(config: ml_collections.ConfigDict, key: str) -> Any:
  """A config section (`"train"`) or one field of one (`"eval.score"`), as plain data."""
  value = config
  for part in key.split("."):
    value = value.get(part)
  if isinstance(value, ml_collections.ConfigDict):
    return value.to_dict()
  return value


def stage_config(config: ml_collections.ConfigDict, stage: Stage) -> ml_collections.ConfigDict:
  """The config a stage's `run` sees: the top-level scalars (`seed`, `distributed`, ...)
  and the sections or fields it declares (`config_keys` and `also_reads`), nothing else;
  a section named by single fields ("eval.beam_size") holds only those fields."""
  out = ml_collections.ConfigDict()
  for key, value in config.items():
    if not isinstance(value, ml_collections.ConfigDict):
      out[key] = value
  whole = set()
  for key in stage.config_keys + stage.also_reads:
    section, _, field = key.partition(".")
    if section not in config:
      raise PipelineError(f"stage '{stage.name}' declares config key {key!r}, which the "
                          "config does not have")
    if not field:
      out[section] = config[section]
      whole.add(section)
    elif section not in whole:
      if section not in out:
        out[section] = ml_collections.ConfigDict()
      out[section][field] = config[section][field]
  return out


def fingerprint_parts(config: ml_collections.ConfigDict, stage: Stage,
                      workdir: pathlib.Path) -> dict[str, Any]:
  """What a stage's fingerprint hashes: code version, config sections, seed, the
  fingerprints of its input stages, and the digests of the outside files it reads.

  A stage module may define `VERSION` (a string it changes whenever its outputs change
  for the same config); outputs written by another version are not reused. It may define
  `external_files(config, workdir) -> [path]`: files or folders outside the workdir it
  reads (raw data, model folders), whose size and content enter the fingerprint; and
  `config_fingerprint(config) -> {key: value}`: config values that matter only in some
  settings (declared in ALSO_READS), added to the fingerprint when they matter; and
  `RUNTIME_FIELDS` ("section.field", ...): fields of its sections that change how it
  runs but never what it writes, left out (a run resumes under another value).
  """
  module = importlib.import_module(stage.module)
  parts: dict[str, Any] = {
      "stage": stage.name,
      "version": str(getattr(module, "VERSION", "")),
      "seed": config.get("seed"),
      "config": {k: _section(config, k) for k in stage.config_keys},
      "inputs": {},
  }
  for key in getattr(module, "RUNTIME_FIELDS", ()):
    section, _, field = key.partition(".")
    if isinstance(parts["config"].get(section), dict):
      parts["config"][section].pop(field, None)
  conditional = getattr(module, "config_fingerprint", None)
  if conditional is not None:
    parts["config"].update(conditional(config))
  for name in stage.inputs:
    done = workdir / name / _DONE
    parts["inputs"][name] = done.read_text().strip() if done.exists() else None
  external = getattr(module, "external_files", None)
  if external is not None:
    cache = file_digests.DigestCache(workdir / DIGEST_CACHE if workdir.exists() else None)
    parts["files"] = {str(p): cache.path(p) for p in external(config, workdir)}
  return parts


def fingerprint(config: ml_collections.ConfigDict, stage: Stage, workdir: pathlib.Path) -> str:
  """Hash of `fingerprint_parts`: equal fingerprints mean reusable outputs."""
  return _hash(fingerprint_parts(config, stage, workdir))


def _hash(parts: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
  """The dotted keys whose values differ between two fingerprint records."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out.extend(changes(a, b, f"{prefix}{key}."))
    elif a != b:
      out.append(f"{prefix}{key}")
  return out


def _why(parts: dict[str, Any], record: pathlib.Path) -> str:
  """Why a stage reruns, from the fingerprint record of its last run."""
  if not record.exists():
    return "no earlier outputs"
  try:
    old = json.loads(record.read_text())
  except ValueError:
    return "its earlier fingerprint record is unreadable"
  said = []
  for key in changes(old, parts):
    if key.startswith("files."):
      said.append(f"file {key[len('files.'):]} changed")
    elif key.startswith("inputs."):
      said.append(f"input stage {key[len('inputs.'):]} changed")
    elif key == "version":
      said.append("its code version changed")
    else:
      said.append(f"{key} changed")
  return "; ".join(said) or "its earlier run did not finish"


def _digests(workdir: pathlib.Path) -> file_digests.DigestCache:
  return file_digests.DigestCache(workdir / DIGEST_CACHE)


def check_inputs(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                 names: list[str]) -> list[str]:
  """Before any work: the outputs of stages this run reads but does not run must exist
  (unless optional) and must have been made with this config and code version.

  Returns:
    Those of them whose outputs no longer match their manifest (to rerun first).

  Raises:
    PipelineError: naming the stage to add to `config.stages`.
  """
  selected = set(names)
  closure: set[str] = set()
  todo = [i for n in names for i in _BY_NAME[n].inputs]
  while todo:
    name = todo.pop()
    if name not in closure and name not in selected:
      closure.add(name)
      todo.extend(_BY_NAME[name].inputs)
  for name in names:
    stage = _BY_NAME[name]
    for dep in stage.inputs:
      if dep not in selected and dep not in stage.optional:
        if not (workdir / dep / _DONE).exists():
          raise PipelineError(
              f"stage '{name}' needs the outputs of stage '{dep}', which are not in "
              f"{workdir / dep}; add '{dep}' to --config.stages")
  damaged = []
  for stage in STAGES:
    done = workdir / stage.name / _DONE
    if stage.name in closure and done.exists():
      if done.read_text().strip() != fingerprint(config, stage, workdir):
        raise PipelineError(
            f"the outputs of stage '{stage.name}' in {workdir / stage.name} were made with "
            "another config or code version than this run's; add "
            f"'{stage.name}' to --config.stages to rebuild them")
      what = manifest.changed(workdir / stage.name, _digests(workdir))
      if what:
        logging.warning("stage %s: its outputs changed since it finished (%s); rerunning it",
                        stage.name, what)
        damaged.append(stage.name)
  return damaged


def validate(config: ml_collections.ConfigDict, names: list[str]) -> None:
  """Runs every selected stage's `validate(config)` before any work starts."""
  for name in names:
    module = importlib.import_module(_BY_NAME[name].module)
    check = getattr(module, "validate", None)
    if check is not None:
      check(config)


def _process_index(config: ml_collections.ConfigDict) -> int:
  if not config.get("distributed", False):
    return 0
  import jax  # pylint: disable=g-import-not-at-top

  return jax.process_index()


def _wait_for(path: pathlib.Path, content: str, what: str, poll_s: float = 5.0) -> None:
  """Blocks until `path` holds `content` (written by process 0 on a shared workdir)."""
  waited = 0.0
  while not (path.exists() and path.read_text().strip() == content):
    if waited and waited % 300 < poll_s:
      logging.info("waiting for process 0 to finish %s (%.0f s)", what, waited)
    time.sleep(poll_s)
    waited += poll_s


def _link_tree(src: pathlib.Path, dst: pathlib.Path) -> None:
  """Copies a finished stage directory as hard links (plain copies across devices).

  Stages never modify a finished directory in place: a rerun deletes it first, so
  the linked files of the run it came from are never changed.
  """
  if dst.exists():
    shutil.rmtree(dst)
  tmp = dst.with_name(dst.name + ".linking")
  if tmp.exists():
    shutil.rmtree(tmp)

  def link(s, d):
    try:
      os.link(s, d)
    except OSError:
      shutil.copy2(s, d)

  shutil.copytree(src, tmp, copy_function=link, symlinks=True)
  os.replace(tmp, dst)


def run_stage(config: ml_collections.ConfigDict, workdir: pathlib.Path, name: str) -> dict:
  """Runs one stage unless its cached outputs are current; returns its summary.

  In a multi-host run process 0 owns the stage directory: it alone clears it and
  writes the summary; other processes wait for it, and join the work only for stages
  marked `all_hosts`.
  """
  stage = _BY_NAME[name]
  # The whole config goes along only as a record (train's config.json), never to read from.
  ctx = StageContext(workdir, name, stage.inputs, functools.partial(config.to_json, indent=2))
  parts = fingerprint_parts(config, stage, workdir)
  fp = _hash(parts)
  done, started = ctx.dir / _DONE, ctx.dir / _STARTED
  previous = ctx.dir.with_name(name + PREVIOUS_SUFFIX)
  lead = _process_index(config) == 0
  damaged = ""
  if stage.cached and lead and _finished_as(previous, fp) and not _finished_as(ctx.dir, fp):
    if ctx.dir.exists():  # A failed rerun with another config: its partial outputs go.
      shutil.rmtree(ctx.dir)
    os.replace(previous, ctx.dir)
    logging.info("stage %s: put back its earlier outputs from %s", name, previous)
  if stage.cached and _finished_as(ctx.dir, fp):
    damaged = manifest.changed(ctx.dir, _digests(workdir)) if lead else ""
    if not damaged:
      logging.info("stage %s: up to date (%s), skipped", name, fp)
      return read_summary(workdir, name)
  source = pathlib.Path(config.get("reuse_from", "") or workdir) / name
  if stage.cached and source != ctx.dir and lead and _finished_as(source, fp):
    if not manifest.changed(source, _digests(workdir)):
      _link_tree(source, ctx.dir)
      logging.info("stage %s: reused from %s (%s)", name, source, fp)
      return read_summary(workdir, name)
  if _process_index(config) != 0:
    if not stage.all_hosts:
      _wait_for(done, fp, f"stage {name}")
      return read_summary(workdir, name)
    _wait_for(started, fp, f"preparing stage {name}")
    module = importlib.import_module(stage.module)
    return dict(module.run(stage_config(config, stage), ctx) or {})
  # Damaged outputs are never resumed into: the stage starts afresh.
  same_attempt = started.exists() and started.read_text().strip() == fp and not damaged
  if not stage.cached:
    why = "it runs every time"
  elif damaged:
    why = f"its outputs changed since it finished ({damaged})"
  elif same_attempt:
    why = "resuming its unfinished run"
  else:
    why = _why(parts, ctx.dir / _PARTS)
  if ctx.dir.exists() and not same_attempt and stage.cached:
    if done.exists() and not damaged:  # Good outputs: aside until the new ones are complete.
      if previous.exists():
        shutil.rmtree(previous)
      os.replace(ctx.dir, previous)
    else:
      shutil.rmtree(ctx.dir)
  ctx.dir.mkdir(parents=True, exist_ok=True)
  done.unlink(missing_ok=True)
  write_json_atomic(ctx.dir / _PARTS, parts)
  write_text_atomic(started, fp + "\n")
  logging.info("stage %s: running (%s): %s", name, fp, why)
  start = time.time()
  module = importlib.import_module(stage.module)
  summary = dict(module.run(stage_config(config, stage), ctx) or {})
  summary["wall_s"] = round(time.time() - start, 2)
  write_json_atomic(ctx.dir / SUMMARY, summary)
  summary = dict(summary, **{_RAN: True})  # Not in summary.json: this invocation ran it.
  if stage.cached:
    manifest.write(ctx.dir, _digests(workdir))
  write_text_atomic(done, fp + "\n")
  if previous.exists():
    shutil.rmtree(previous)
  logging.info("stage %s: done in %.1f s", name, summary["wall_s"])
  return summary


PREVIOUS_SUFFIX = ".previous"  # A stage's finished outputs while a rerun replaces them.
_RAN = "_ran"  # Marks the summary `run_stage` returns when it ran the stage.


def _finished_as(stage_dir: pathlib.Path, fp: str) -> bool:
  """Whether `stage_dir` holds finished outputs with fingerprint `fp`."""
  return _done_text(stage_dir.parent, stage_dir.name) == fp


@contextlib.contextmanager
def _preemptible(name: str):
  """SIGTERM/SIGINT during a stage raise `Preempted` naming it (exit 75: rerun resumes).

  The trainer installs its own handlers inside (save, then stop); its `Preempted` gets
  the stage's name here too. Outside the main thread signals cannot be caught.
  """
  def handler(signum, frame):  # pylint: disable=unused-argument
    raise Preempted(f"stopped by {signal.Signals(signum).name}; run the same command "
                    "again to resume")

  installed = threading.current_thread() is threading.main_thread()
  before = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)} if installed else {}
  try:
    yield
  except Preempted as e:  # Every Preempted message says how to resume.
    raise Preempted(f"stage {name}: {e}") from None
  except KeyboardInterrupt:
    raise Preempted(f"stage {name}: stopped by SIGINT; run the same command again to "
                    "resume") from None
  finally:
    for s, h in before.items():
      signal.signal(s, h)


class Summaries(dict):
  """Each stage's summary by stage name; `ran` lists the stages this invocation ran
  (the others were up to date or reused)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.ran: list[str] = []


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> Summaries:
  """Runs the stages named in `config.stages` in pipeline order.

  Returns:
    Each stage's summary, by stage name (`Summaries.ran`: the stages that ran).
  """
  names = parse_stages(config.get("stages", "all"))
  validate(config, names)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  lock = workdir_lock.hold(workdir) if _process_index(config) == 0 else contextlib.nullcontext()
  with lock:
    return _run_locked(config, workdir, names)


def _run_locked(config: ml_collections.ConfigDict, workdir: pathlib.Path,
                names: list[str]) -> Summaries:
  """`run`, once the workdir's lock is held."""
  damaged = check_inputs(config, workdir, names)
  names = [s.name for s in STAGES if s.name in set(names) | set(damaged)]
  before = {s.name: _done_text(workdir, s.name) for s in STAGES}
  summaries = Summaries()
  for name in names:
    with _preemptible(name):
      summaries[name] = _note_ran(summaries, name, run_stage(config, workdir, name))
  rebuilt = {n for n in names if _done_text(workdir, n) != before[n]}
  for stage in STAGES:
    if (stage.refresh and stage.name not in names and before[stage.name] is not None
        and rebuilt & set(stage.inputs)):
      logging.info("stage %s: refreshing its earlier outputs (%s changed)", stage.name,
                   ", ".join(sorted(rebuilt & set(stage.inputs))))
      with _preemptible(stage.name):
        summaries[stage.name] = _note_ran(summaries, stage.name,
                                          run_stage(config, workdir, stage.name))
  return summaries


def _note_ran(summaries: Summaries, name: str, summary: dict) -> dict:
  """Records in `summaries.ran` whether `run_stage` ran the stage (its `_ran` mark)."""
  if summary.pop(_RAN, False):
    summaries.ran.append(name)
  return summary


def _done_text(workdir: pathlib.Path, name: str) -> str | None:
  done = workdir / name / _DONE
  return done.read_text().strip() if done.exists() else None
