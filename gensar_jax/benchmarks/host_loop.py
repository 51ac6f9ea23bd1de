"""The trainer's host side at a preset, with the device's step replaced by a stand-in.

  python -m gensar_jax.benchmarks.host_loop --upstream=WORKDIR
      [--config=configs/amazon.py:category=Office_Products,preset=gpu1_small]
      [--device_ms=17] [--workers=0,2] [--steps=300] [--json=PATH]

On an accelerator the step of a small model is short: `preset=gpu1_small`'s (batch
1,024, 2.0M parameters) took 17 ms of one H200 (`train_step --shape=cpu
--batch_size=1024`), and the train stage ran at a quarter of that rate, the GPU idle
most of the time. What the host does between steps (building epochs, collating and
placing batches, logging) then sets the rate, and it can be measured on any machine:
this runs the real train stage, on the data, identifiers and doc2query stages already
made in WORKDIR (reused from there, not changed; see `--config.reuse_from`), with
`trainer.step.jit_train_step` replaced by a stand-in device that takes `--device_ms` per
step and runs asynchronously like a real one (a step returns at once; its metrics are
ready `--device_ms` after the previous step's, and the loop waits for them as it waits
for a device). No validation, no warm start, one checkpoint at the end (after the last
timed window). Once per `--workers` value
(`train.epoch_workers`), it prints the trainer's examples/s over its log windows after
the first (which holds the workers' start) beside the stand-in's ceiling, batch /
device_ms. Worker processes add cores, not speed per core: on a 2-core host they cannot
beat the thread (the build already has both cores); the H200's host has 16.
"""

from __future__ import annotations

import json
import pathlib
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from gensar_jax import config_files
from gensar_jax import pipeline
from gensar_jax.trainer import logging_utils
from gensar_jax.trainer import step as step_lib

_UPSTREAM = flags.DEFINE_string("upstream", None, "Workdir holding the upstream stages.")
_CONFIG = flags.DEFINE_string(
    "config", "configs/amazon.py:category=Office_Products,preset=gpu1_small",
    "Config spec, as for gensar_jax.main (its upstream stages must match WORKDIR's).")
_RAW_DIR = flags.DEFINE_string("raw_dir", "../shared/data/amazon-office",
                               "data.raw_dir, as WORKDIR was made with.")
_DEVICE_MS = flags.DEFINE_float("device_ms", 17.0, "The stand-in device's time a step.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "train.epoch_workers values to run.")
_STEPS = flags.DEFINE_integer("steps", 300, "Steps a run.")
_JSON = flags.DEFINE_string("json", "", "Write the figures here as JSON.")
LOG_EVERY = 25  # Steps a log window (the rates are the windows').


class _Pending:
  """A metric of a step still 'on the device': reading it waits until it is done."""

  def __init__(self, value: float, ready_at: float):
    self.value, self.ready_at = value, ready_at

  def __array__(self, dtype=None, copy=None):
    time.sleep(max(0.0, self.ready_at - time.monotonic()))
    return np.asarray(self.value, dtype or np.float32)

  def __float__(self) -> float:
    return float(self.__array__())


class StandInDevice:
  """`jit_train_step`'s replacement: each step is done `seconds` after the later of its
  dispatch and the previous step's end; the state is returned unchanged."""

  def __init__(self, seconds: float):
    self.seconds, self.ready_at, self.steps = seconds, 0.0, 0

  def jit_train_step(self, step_fn, state_shardings, batch_shardings, replicated):
    del step_fn, state_shardings, batch_shardings, replicated

    def step(state, batch, rng):
      del batch, rng
      self.ready_at = max(time.monotonic(), self.ready_at) + self.seconds
      self.steps += 1
      metrics = {"loss": 1.0, "grad_norm": 1.0, "learning_rate": 1e-3, "target_tokens": 1.0}
      return state, {k: _Pending(v, self.ready_at) for k, v in metrics.items()}

    return step


def run_once(workers: int, device_s: float) -> dict:
  """One train stage with the stand-in device; its log windows' examples/s."""
  overrides = {
      "data.raw_dir": _RAW_DIR.value, "reuse_from": str(pathlib.Path(_UPSTREAM.value).resolve()),
      "stages": "data,embed,identifiers,doc2query,train", "xla_cache": False,
      "train.epoch_workers": workers, "train.max_steps": _STEPS.value, "train.eval_rows": 0,
      "train.checkpoint_every_steps": 10**9, "train.warm_start_steps": 0,
      "train.max_minutes": 0.0, "train.log_every_steps": LOG_EVERY,
  }
  config = config_files.from_argv(_CONFIG.value, [(k, str(v)) for k, v in overrides.items()])
  device = StandInDevice(device_s)
  real = step_lib.jit_train_step
  step_lib.jit_train_step = device.jit_train_step
  try:
    with tempfile.TemporaryDirectory(prefix="host_loop_") as workdir:
      t0 = time.perf_counter()
      pipeline.run(config, workdir)
      wall = time.perf_counter() - t0
      rows = [r for r in logging_utils.read_history(pathlib.Path(workdir) / "train")
              if r["kind"] == "train"]
  finally:
    step_lib.jit_train_step = real
  rates = [r["examples_per_s"] for r in rows[2:]]  # Past step 1's record and the first window.
  batch = int(config.train.batch_size)
  # Equal windows (log_every_steps steps each): the whole stretch's rate is their harmonic
  # mean (windows waiting for an epoch alternate with windows at the device's rate).
  return {"epoch_workers": workers, "examples_per_s": len(rates) / sum(1 / r for r in rates),
          "examples_per_s_windows": [round(x, 1) for x in rates],
          "ceiling_examples_per_s": batch / device_s, "steps": device.steps,
          "stage_wall_s": wall}


def main(argv):
  del argv
  if not _UPSTREAM.value:
    raise app.UsageError("--upstream=WORKDIR is required (a workdir with the data, embed, "
                         "identifiers and doc2query stages of the same config)")
  device_s = _DEVICE_MS.value / 1000
  out = {"config": _CONFIG.value, "device_ms": _DEVICE_MS.value, "runs": []}
  for w in _WORKERS.value:
    r = run_once(int(w), device_s)
    out["runs"].append(r)
    print(f"epoch_workers={r['epoch_workers']}: {r['examples_per_s']:.0f} examples/s "
          f"(over {len(r['examples_per_s_windows'])} log windows of {LOG_EVERY} steps), "
          f"{100 * r['examples_per_s'] / r['ceiling_examples_per_s']:.0f}% of the stand-in "
          f"device's {r['ceiling_examples_per_s']:.0f} ({_DEVICE_MS.value:g} ms a step); "
          f"stage {r['stage_wall_s']:.0f} s", flush=True)
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
  app.run(main)
