"""The accelerator device check: 8 minutes of one GPU (or TPU host), JSON under $OUT.

  python -m gensar_jax.benchmarks.device_check [--out=DIR] [--dry-run] [--budget_s=480]
      [--phases=devices,tests,train_step,beam_search,office] [--train_minutes=M]
      [--eval_every_epochs=2] [--office_dir=RAW_DIR] [--office_upstream=WORKDIR_OR_TGZ]

(`launch/device_check.sh` installs the accelerator extra first, then runs this.) Phases,
in order, each in its own process with its own time cap, so a phase that crashes or
hangs loses nothing of the others; `DIR/device_check.json` is rewritten after every
phase, and each phase's log is in `DIR/logs/`:

  devices      `python -m gensar_jax.devices --json`: what JAX sees (cap 30 s).
  tests        the `device`-marked tests (sharding, jit, beam search, training) on the
               real backend, with float32 matmuls at full precision so the CPU
               tolerances hold (JAX_DEFAULT_MATMUL_PRECISION=highest); 24 tests,
               about 2 minutes on 2 busy CPU cores, mostly compilation (cap 120 s).
  train_step   the jitted train step at t5-small shape (batch 256 = preset gpu1's
               micro-batch, source 128 / target 6 tokens, vocabulary 33,667), bf16
               then float32 compute: examples/s, MFU against the device's dense peak
               for that dtype (float32 matmuls run as TF32 on GPUs by default, bf16
               passes on TPUs), peak device memory beside pod_numbers' estimate (cap 150 s:
               on an H200 each dtype's first step, its compilation, took 36 s).
  beam_search  constrained beam search at t5-small shape: batch 32, beam 30, 100
               candidates per example, full-vocabulary scoring; bf16 then float32
               compute: s/example (cap 60 s).
  office       the cpu preset's model on Amazon Office (`preset=gpu1_small`: batch
               1,024, lr 4e-3): the data, embed, identifiers and doc2query stages
               (lighter than the preset: SASRec 20 epochs at batch 512, doc2query 8
               epochs; cap 150 s), then training for what is left of the budget less
               60 s for start-up and the last validation (`train.max_minutes`; skipped
               under 90 s left; `--train_minutes` states a budget instead and moves the
               deadline), validating every `--eval_every_epochs` epochs. Reports
               the validation curve against epochs beside the cpu preset's own
               (launch/study/office/preset_cpu_2000.json). `--office_upstream` brings
               those four stages finished elsewhere (a CPU host: a workdir, or a .tgz of
               one, made with the same config and raw folder path): they are copied in
               instead (the train stage's runner confirms their fingerprints), they are
               the preset's own stages (not the lighter ones), and training gets the 150 s.

The caps add up to 510 s, more than the 480: training gets whatever the earlier phases
leave unused, and nothing when they use their whole caps (on an H200, devices took 4 s
and the bf16 half of train_step 50 s). `--dry-run` runs
the same phases on CPU at tiny shapes (a tiny T5, a few steps, the generated demo world
of 80 users instead of Office, doc2query off, one device test): about 1 minute on 2
quiet cores, 2.5 under load; tests/test_device_check.py runs it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ElementTree

from absl import app
from absl import flags

from gensar_jax.atomic import write_json_atomic

REPO = pathlib.Path(__file__).resolve().parents[2]
PHASES = ("devices", "tests", "train_step", "beam_search", "office")
CAPS_S = {"devices": 30, "tests": 120, "train_step": 150, "beam_search": 60,
          "office_upstream": 150}  # Per-phase wall-clock caps (full run).
TRAIN_MARGIN_S = 60  # Of the budget left, kept for the train stage's start-up and last validation.
TRAIN_MIN_S = 90  # Training is skipped when less than this is left.
# The device-marked tests live in these files (tests/conftest.py sets up 8 CPU devices
# with setdefault, so the environment given here wins).
DEVICE_TEST_FILES = ("tests/test_t5.py", "tests/test_beam_search.py", "tests/test_train.py")
DRY_TEST = "tests/test_t5.py::test_padding_invariance"
# Dense peak FLOP/s for float32 inputs at JAX's default matmul precision, by a substring
# of device_kind: TF32 tensor cores on A100/H100/H200 (the bf16 table is
# trainer/logging_utils.PEAK_FLOPS); TPUs run float32 matmuls as one bf16 pass, so their
# bf16 peak applies.
FP32_PEAK_FLOPS = (("a100", 156e12), ("h100", 494.7e12), ("h200", 494.7e12))
# Lighter upstream stages for the Office phase (stated in the JSON).
OFFICE_UPSTREAM = ("--config.embed.sasrec.epochs=20", "--config.embed.sasrec.batch_size=512",
                   "--config.doc2query.train.epochs=8")
OFFICE_CONFIG = "configs/amazon.py:category=Office_Products,preset=gpu1_small"
UPSTREAM_STAGES = ("data", "embed", "identifiers", "doc2query")  # Before training.
CPU_REFERENCE = REPO / "launch" / "study" / "office" / "preset_cpu_2000.json"
# The dry run's pipeline: the demo world shrunk to 80 users, 60 items and tiny models.
_TINY_T5 = dict(d_model=32, d_ff=64, num_encoder_layers=1, num_decoder_layers=1,
                num_heads=2, d_kv=16)
DRY_PIPELINE = (
    "--config.data.demo_users=80", "--config.data.demo_items=60",
    "--config.data.num_negatives=19", "--config.embed.sasrec.epochs=2",
    "--config.embed.sasrec.hidden=16", "--config.embed.sasrec.batch_size=32",
    "--config.identifiers.codebook_size=8", "--config.identifiers.hidden_dims=(32,)",
    "--config.identifiers.latent_dim=16", "--config.identifiers.epochs=20",
    "--config.identifiers.warmup_epochs=2", "--config.identifiers.batch_size=32",
    "--config.identifiers.eval_every_epochs=5",
    "--config.doc2query.enabled=False",  # Its stage then only records that (time).
    "--config.tokenizer.vocab_size=300", "--config.tasks.max_source_len=128",
    "--config.train.batch_size=16", "--config.train.steps=0", "--config.train.epochs=3",
    "--config.train.eval_rows=16", "--config.train.log_every_steps=5",
    "--config.eval.beam_size=5", "--config.eval.batch_size=8",
) + tuple(f"--config.model.{k}={v}" for k, v in _TINY_T5.items())


def default_office_dir() -> str:
  """$GENSAR_OFFICE_DIR, else shared/data/amazon-office beside the repository or in it."""
  if os.environ.get("GENSAR_OFFICE_DIR"):
    return os.environ["GENSAR_OFFICE_DIR"]
  beside = REPO.parent / "shared" / "data" / "amazon-office"
  return str(beside if beside.exists() else REPO / "shared" / "data" / "amazon-office")


def define_flags() -> None:
  """The command's flags (defined only when run as a command: modules the test suite
  imports in the same process define --out and others too)."""
  flags.DEFINE_string("out", os.environ.get("OUT", "device_check_out"),
                      "Folder of the JSON and logs (default: $OUT or ./device_check_out).")
  flags.DEFINE_boolean("dry_run", False, "CPU, tiny shapes, the demo world (also --dry-run).")
  flags.DEFINE_float("budget_s", 480.0, "Wall-clock budget of the whole check (s).")
  flags.DEFINE_list("phases", list(PHASES), "Phases to run, in the fixed order.")
  flags.DEFINE_string("office_dir", default_office_dir(), "Raw Office folder "
                      "(default: $GENSAR_OFFICE_DIR, else ../shared/data/amazon-office "
                      "or ./shared/data/amazon-office).")
  flags.DEFINE_string("office_upstream", "", "Office: a workdir (folder or .tgz of one) "
                      "holding the finished data, embed, identifiers and doc2query stages "
                      "of the preset's own config, made elsewhere (CPU); the upstream phase "
                      "then only confirms them, and the preset's stages are not lightened.")
  flags.DEFINE_integer("eval_every_epochs", 2, "Office: validate every this many epochs.")
  flags.DEFINE_float("train_minutes", 0.0, "Office: training budget in minutes "
                     "(0: what is left of --budget_s less 60 s).")
  flags.DEFINE_float("install_s", -1.0,
                     "Seconds the install took (launch/device_check.sh; -1: none).")
  flags.DEFINE_enum("worker", "", ["", "train_step", "beam_search"],
                    "Internal: run one measuring phase in this process.")
  flags.DEFINE_string("result_json", "", "Internal: where a worker writes its figures.")


# ------------------------------------------------------------------------ workers
def _peak(device, dtype: str) -> float | None:
  """Dense peak FLOP/s of `device` for `dtype` compute, or None (CPU, unknown kind)."""
  from gensar_jax.trainer import logging_utils  # pylint: disable=g-import-not-at-top

  bf16 = logging_utils.peak_flops(device)
  if dtype == "bfloat16" or bf16 is None or device.platform == "tpu":
    return bf16
  kind = device.device_kind.lower()
  return next((flops for key, flops in FP32_PEAK_FLOPS if key in kind), None)


def _peak_memory(device) -> int | None:
  try:
    return int((device.memory_stats() or {})["peak_bytes_in_use"])
  except Exception:  # pylint: disable=broad-except  (CPU: no stats)
    return None


def train_step_worker(dry: bool, path: pathlib.Path) -> None:
  """Times the jitted train step at t5-small shape, bf16 then float32; writes `path`."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from gensar_jax import sharding  # pylint: disable=g-import-not-at-top
  from gensar_jax.benchmarks import pod_numbers  # pylint: disable=g-import-not-at-top
  from gensar_jax.benchmarks import train_step as bench  # pylint: disable=g-import-not-at-top
  from gensar_jax.model import t5  # pylint: disable=g-import-not-at-top
  from gensar_jax.trainer import logging_utils  # pylint: disable=g-import-not-at-top
  from gensar_jax.trainer import step as step_lib  # pylint: disable=g-import-not-at-top

  batch, src_len, tgt_len, warmup, timed = (4, 16, 6, 1, 2) if dry else (256, 128, 6, 2, 10)
  device = jax.devices()[0]
  mesh = sharding.make_mesh("data", [device])
  replicated = sharding.replicated(mesh)
  batch_sh = {k: sharding.batch_sharding(mesh, 1, 3) for k in ("src", "tgt")}
  train_config = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_frac=0.01, weight_decay=1e-7, grad_clip=1.0))
  out = {"device_kind": device.device_kind, "batch": batch, "src_len": src_len,
         "tgt_len": tgt_len, "timed_steps": timed}
  for dtype in ("bfloat16", "float32"):
    config = (t5.T5Config(vocab_size=bench.VOCAB, dtype=dtype, **_TINY_T5) if dry
              else bench.t5_small(dtype=dtype))
    model = t5.T5(config)
    params = t5.init_params(config, jax.random.PRNGKey(0))
    tx, schedule = step_lib.make_optimizer(train_config, total_steps=1000)
    state = step_lib.init_state(params, tx)
    state_sh = jax.tree.map(lambda _: replicated, state)
    state = jax.device_put(state, state_sh)
    step_fn = step_lib.jit_train_step(step_lib.make_train_step(model, tx, schedule, mesh=mesh),
                                      state_sh, batch_sh, replicated)
    rng = np.random.default_rng(0)
    batches = [sharding.global_batch(bench.random_batch(rng, batch, src_len, tgt_len), mesh, 1)
               for _ in range(warmup + timed)]
    key = jax.device_put(jax.random.key(1), replicated)
    times, compile_s = [], None
    for i, b in enumerate(batches):
      start = time.perf_counter()
      state, metrics = step_fn(state, b, key)
      float(metrics["loss"])  # Waits for the step.
      if i == 0:
        compile_s = time.perf_counter() - start
      if i >= warmup:
        times.append(time.perf_counter() - start)
    sec = float(np.median(times))
    counts = logging_utils.split_param_counts(params, config.vocab_size)
    flops = logging_utils.step_flops(counts, batch * src_len, batch * tgt_len)
    peak = _peak(device, dtype)
    out[dtype] = {
        "sec_per_step": sec, "examples_per_s": batch / sec, "first_step_s": compile_s,
        "parameters": int(sum(counts)), "flops_per_step": flops,
        "peak_flops": peak, "mfu": None if peak is None else flops / sec / peak,
        "peak_memory_bytes": _peak_memory(device),
        "estimated_memory_bytes": pod_numbers.device_bytes(
            config, batch, src_len, tgt_len, 2 if dtype == "bfloat16" else 4),
        "loss_last": float(metrics["loss"]),
    }
    print(f"train step {dtype}: {sec:.4f} s, {batch / sec:.1f} examples/s, MFU "
          f"{out[dtype]['mfu']}", flush=True)
    write_json_atomic(path, out)  # After each dtype: a later failure keeps this one.


def beam_search_worker(dry: bool, path: pathlib.Path) -> None:
  """Times constrained beam search at t5-small shape, bf16 then float32; writes `path`."""
  import dataclasses  # pylint: disable=g-import-not-at-top

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from gensar_jax.benchmarks import beam_search as bench  # pylint: disable=g-import-not-at-top
  from gensar_jax.decoding import beam_search  # pylint: disable=g-import-not-at-top
  from gensar_jax.decoding import trie  # pylint: disable=g-import-not-at-top
  from gensar_jax.model import t5  # pylint: disable=g-import-not-at-top

  batch, beam, n_cand, src_len, timed = (4, 5, 20, 16, 2) if dry else (32, 30, 100, 128, 3)
  base = (t5.T5Config(vocab_size=bench.t5_small().vocab_size, **_TINY_T5) if dry
          else bench.t5_small())
  params = t5.init_params(base, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  codes = bench.random_codes(rng, 20 * n_cand)
  inputs = []
  for _ in range(1 + timed):
    cands = np.stack([rng.choice(len(codes), n_cand, replace=False) for _ in range(batch)])
    inputs.append((bench.random_sources(rng, batch, src_len),
                   trie.build_batched(codes, cands, bench.K)))
  out = {"device_kind": jax.devices()[0].device_kind, "batch": batch, "beam": beam,
         "candidates": n_cand, "src_len": src_len, "score": "full", "timed_batches": timed}
  for dtype in ("bfloat16", "float32"):
    model = t5.T5(dataclasses.replace(base, dtype=dtype))
    spec = beam_search.SearchSpec.create(bench.level_tokens(), start_token=base.decoder_start_id,
                                         beam_size=beam, score="full")
    search = beam_search.make_search_fn(lambda p, m=model: beam_search.T5Decoder(m, p), spec)
    times, first = [], None
    for i, (src, table) in enumerate(inputs):
      start = time.perf_counter()
      ((items, scores),) = search(params, src, table)
      items, scores = np.asarray(items), np.asarray(scores)  # Waits and fetches.
      if i == 0:
        first = time.perf_counter() - start
      else:
        times.append(time.perf_counter() - start)
    assert np.all(items >= 0), "every beam holds a candidate (100 > beam)"
    sec = float(np.median(times))
    out[dtype] = {"sec_per_batch": sec, "sec_per_example": sec / batch, "first_batch_s": first,
                  "peak_memory_bytes": _peak_memory(jax.devices()[0])}
    print(f"beam search {dtype}: {sec / batch:.4f} s/example", flush=True)
    write_json_atomic(path, out)


# --------------------------------------------------------------------- the driver
class Check:
  """Runs phases as subprocesses under caps and keeps `device_check.json` current."""

  def __init__(self, out: pathlib.Path, dry: bool, budget_s: float):
    self.out, self.dry = out, dry
    self.start = time.time()
    self.deadline = self.start + budget_s
    (out / "logs").mkdir(parents=True, exist_ok=True)
    self.record = {"dry_run": dry, "budget_s": budget_s, "started_unix": self.start,
                   "host": os.uname().nodename, "phases": {}}
    env = dict(os.environ)
    # tests/conftest.py only sets JAX_PLATFORMS=cpu when it is unset: "" (auto-detect,
    # the accelerator when there is one) must be set here for the real run.
    env["JAX_PLATFORMS"] = "cpu" if dry else env.get("JAX_PLATFORMS", "")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))
    self.env = env
    self.record["jax_platforms"] = env["JAX_PLATFORMS"]

  def left(self) -> float:
    return self.deadline - time.time()

  def save(self) -> None:
    self.record["elapsed_s"] = round(time.time() - self.start, 1)
    write_json_atomic(self.out / "device_check.json", self.record)

  def run(self, name: str, cmd: list[str], cap_s: float, env=None) -> dict:
    """Runs `cmd` in its own process group for at most `cap_s` (and the budget left)."""
    timeout = max(1.0, min(cap_s, self.left()))
    log = self.out / "logs" / f"{name}.log"
    start = time.time()
    with log.open("w") as f:
      proc = subprocess.Popen(cmd, cwd=REPO, env=env or self.env, stdout=f,
                              stderr=subprocess.STDOUT, start_new_session=True)
      try:
        rc = proc.wait(timeout=timeout)
        status = "ok" if rc == 0 else "failed"
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc, status = None, "timeout"
    phase = {"status": status, "returncode": rc, "seconds": round(time.time() - start, 1),
             "started_at_s": round(start - self.start, 1), "cap_s": round(timeout, 1),
             "command": " ".join(cmd), "log": str(log)}
    if status != "ok":
      phase["log_tail"] = log.read_text(errors="replace")[-3000:]
    return phase

  def finish(self, name: str, phase: dict) -> None:
    self.record["phases"][name] = phase
    self.save()
    print(f"device check: {name}: {phase['status']} in {phase.get('seconds', 0)} s", flush=True)


def _read_json(path: pathlib.Path):
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def first_json_object(text: str) -> dict | None:
  """The first JSON object in `text` (a log may hold warnings around it)."""
  decoder = json.JSONDecoder()
  for i, ch in enumerate(text):
    if ch == "{":
      try:
        obj, _ = decoder.raw_decode(text, i)
      except ValueError:
        continue
      if isinstance(obj, dict):
        return obj
  return None


def junit_counts(path: pathlib.Path) -> dict:
  """Counts and failed test ids from a pytest `--junitxml` file ({} when unreadable)."""
  try:
    root = ElementTree.parse(path).getroot()
  except (OSError, ElementTree.ParseError):
    return {}
  suite = root if root.tag == "testsuite" else root.find("testsuite")
  counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
  counts["failed"] = [f"{case.get('classname')}::{case.get('name')}"
                      for case in suite.iter("testcase")
                      if case.find("failure") is not None or case.find("error") is not None]
  return counts


def office_curve(workdir: pathlib.Path) -> dict:
  """The train stage's summary and its validation curve against epochs."""
  summary = _read_json(workdir / "train" / "summary.json") or {}
  curve = []
  metrics = workdir / "train" / "metrics.jsonl"
  for line in (metrics.read_text().splitlines() if metrics.exists() else []):
    try:
      r = json.loads(line)
    except ValueError:
      continue  # A torn last line.
    if r.get("kind") == "validation":
      curve.append({k: r[k] for k in r if k in ("step", "epoch", "minutes") or "ndcg@10" in k})
  keep = ("steps", "steps_per_epoch", "total_steps", "examples_per_s", "minutes", "budget_hit",
          "loss_start", "loss_end", "best_step", "parameters", "devices", "epoch_examples")
  out = {k: summary.get(k) for k in keep if k in summary}
  if summary.get("steps") and summary.get("steps_per_epoch"):
    out["epochs"] = summary["steps"] / summary["steps_per_epoch"]
  out["validation"] = curve
  return out


def cpu_reference() -> list[dict]:
  """The cpu preset's validation curve on Office (2 CPU cores, batch 64, 2,000 steps)."""
  record = _read_json(CPU_REFERENCE) or {}
  return [{k: v for k, v in r.items() if k in ("step", "epoch", "minutes") or "ndcg@10" in k}
          for r in record.get("validation", [])]


def seed_upstream(source: pathlib.Path, workdir: pathlib.Path) -> list[str]:
  """Copies the finished upstream stages of `source` (a workdir, or a .tgz of one, whose
  members are `<stage>/...`) into `workdir`; returns the stages copied."""
  workdir.mkdir(parents=True, exist_ok=True)
  if source.is_file():
    with tarfile.open(source) as tar:
      members = [m for m in tar.getmembers() if m.name.split("/")[0] in UPSTREAM_STAGES]
      tar.extractall(workdir, members=members, filter="data")
  else:
    for stage in UPSTREAM_STAGES:
      if (source / stage).is_dir():
        shutil.copytree(source / stage, workdir / stage, dirs_exist_ok=True)
  return [s for s in UPSTREAM_STAGES if (workdir / s / ".done").exists()]


def run_check(out: pathlib.Path, dry: bool, budget_s: float, phases: list[str],
              office_dir: str, eval_every_epochs: int, install_s: float = -1.0,
              train_minutes: float = 0.0, office_upstream: str = "") -> dict:
  """Runs the phases; returns (and has written) the whole record."""
  check = Check(out, dry, budget_s)
  check.record["install_s"] = install_s if install_s >= 0 else None  # Not in the budget.
  py = sys.executable
  tiny = ["--dry_run"] if dry else []
  caps = {k: (v * 2 if dry else v) for k, v in CAPS_S.items()}  # Two busy CPU cores.
  unknown = set(phases) - set(PHASES)
  if unknown:
    raise ValueError(f"unknown phases {sorted(unknown)}; known: {PHASES}")

  if "devices" in phases:
    phase = check.run("devices", [py, "-m", "gensar_jax.devices", "--json"], caps["devices"])
    phase["result"] = first_json_object(pathlib.Path(phase["log"]).read_text()) or {}
    if phase["status"] == "ok" and "platform" not in phase["result"]:
      phase["status"] = "failed"
    if not dry and phase.get("result", {}).get("platform") == "cpu":
      phase["warning"] = "JAX sees only the CPU: no accelerator figure below means anything"
    check.finish("devices", phase)

  if "tests" in phases:
    junit = out / "tests.xml"
    selection = ["-m", "device", DRY_TEST] if dry else ["-m", "device", *DEVICE_TEST_FILES]
    env = dict(check.env, JAX_DEFAULT_MATMUL_PRECISION="highest")
    phase = check.run("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                f"--junitxml={junit}", *selection], caps["tests"], env=env)
    phase["result"] = junit_counts(junit)
    phase["matmul_precision"] = "highest"
    check.finish("tests", phase)

  for name in ("train_step", "beam_search"):
    if name in phases:
      path = out / f"{name}.json"
      phase = check.run(name, [py, "-m", "gensar_jax.benchmarks.device_check",
                               f"--worker={name}", f"--result_json={path}", *tiny], caps[name])
      phase["result"] = _read_json(path)  # What it wrote before any failure.
      check.finish(name, phase)

  if "office" in phases:
    workdir = out / "office"
    if dry:
      config, upstream = "configs/demo.py", list(DRY_PIPELINE)
    else:
      config = OFFICE_CONFIG
      upstream = [f"--config.data.raw_dir={office_dir}"]
      if not office_upstream:
        upstream += OFFICE_UPSTREAM  # Made here: lighter than the preset's.
    base = [py, "-m", "gensar_jax.main", f"--config={config}", f"--workdir={workdir}", *upstream]
    if office_upstream:
      # Not run again here (embed's checks want the text encoder, which an offline
      # accelerator host may lack): the train stage's runner confirms their fingerprints.
      start = time.time()
      try:
        seeded, why = seed_upstream(pathlib.Path(office_upstream), workdir), ""
      except (OSError, tarfile.TarError) as e:  # Missing or damaged: a failed phase.
        seeded, why = [], f"{type(e).__name__}: {e}; "
      missing = sorted(set(UPSTREAM_STAGES) - set(seeded))
      phase = {"status": "failed" if missing else "ok", "seconds": round(time.time() - start, 1),
               "seeded_from": office_upstream, "stages": seeded}
      if missing:
        phase["log_tail"] = f"{why}unfinished in {office_upstream}: {missing}"
    else:
      phase = check.run("office_upstream",
                        base + ["--config.stages=" + ",".join(UPSTREAM_STAGES)],
                        caps["office_upstream"])
    phase["overrides"] = upstream
    check.finish("office_upstream", phase)
    left = check.left() - TRAIN_MARGIN_S
    if train_minutes > 0:  # A stated budget instead of what is left (the deadline moves).
      left = train_minutes * 60.0
      check.deadline = max(check.deadline, time.time() + left + TRAIN_MARGIN_S)
    if phase["status"] != "ok":
      check.finish("office", {"status": "skipped", "reason": "the upstream stages did not finish"})
    elif left < TRAIN_MIN_S - TRAIN_MARGIN_S and not dry:
      check.finish("office", {"status": "skipped", "reason": f"{check.left():.0f} s left"})
    else:
      minutes = round(max(left, 6.0) / 60.0, 2)
      extra = [f"--config.train.max_minutes={minutes}",
               f"--config.train.eval_every_epochs={eval_every_epochs}"]
      if dry:
        extra.append("--config.train.max_steps=6")
      phase = check.run("office", base + ["--config.stages=train", *extra],
                        max(left, 6.0) + TRAIN_MARGIN_S)
      phase.update(train_budget_minutes=minutes, eval_every_epochs=eval_every_epochs,
                   config=config, result=office_curve(workdir), cpu_reference=cpu_reference())
      check.finish("office", phase)
  check.record["done"] = True
  check.save()
  return check.record


def main(argv):
  del argv
  if flags.FLAGS.worker:
    worker = {"train_step": train_step_worker, "beam_search": beam_search_worker}[flags.FLAGS.worker]
    worker(flags.FLAGS.dry_run, pathlib.Path(flags.FLAGS.result_json))
    return
  out = pathlib.Path(flags.FLAGS.out).resolve()
  record = run_check(out, flags.FLAGS.dry_run, flags.FLAGS.budget_s, flags.FLAGS.phases,
                     flags.FLAGS.office_dir, flags.FLAGS.eval_every_epochs, flags.FLAGS.install_s,
                     flags.FLAGS.train_minutes, flags.FLAGS.office_upstream)
  bad = [n for n, p in record["phases"].items() if p["status"] not in ("ok", "skipped")]
  print(f"device check: wrote {out / 'device_check.json'}"
        + (f"; not ok: {', '.join(bad)}" if bad else ""))


def run_main() -> None:
  """`--dry-run` is accepted beside absl's `--dry_run`."""
  sys.argv = [a.replace("--dry-run", "--dry_run") for a in sys.argv]
  app.run(main)


if __name__ == "__main__":
  define_flags()
  run_main()
