"""Interrupted training: SIGKILL, SIGTERM or SIGINT at a seeded step, then the same command."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from gensar_jax import errors
from tests.conftest import REPO
from tests.resume_worker import STEPS


def _start(out: pathlib.Path, *args: str) -> subprocess.Popen:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.Popen([sys.executable, "-m", "tests.resume_worker", str(out), *args], cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _steps_done(out: pathlib.Path) -> int:
  path = out / "metrics.jsonl"
  if not path.exists():
    return 0
  steps = [json.loads(l)["step"] for l in path.read_text().splitlines() if l.strip()]
  return max(steps, default=0)


def _run_to_end(out: pathlib.Path) -> str:
  proc = _start(out)
  text, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, text[-3000:]
  return text


def _interrupt(out: pathlib.Path, sig: int, at_step: int) -> subprocess.Popen:
  proc = _start(out)
  deadline = time.time() + 600
  while _steps_done(out) < at_step:
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  sent = time.time()
  proc.send_signal(sig)
  proc.wait(timeout=300)
  # Bounded: one step in flight and one save (test_train checks the host's lead is bounded).
  assert time.time() - sent < 60
  return proc


def _final(out: pathlib.Path) -> dict:
  with np.load(out / "final.npz") as f:
    return {k: f[k] for k in f.files}


def _history(out: pathlib.Path) -> list:
  return [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  out = tmp_path_factory.mktemp("clean")
  _run_to_end(out)
  return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT],
                         ids=["sigkill", "sigterm", "sigint"])
def test_interrupted_run_ends_like_an_uninterrupted_one(tmp_path, uninterrupted, sig):
  # A different step per signal, the same on every run (a failure can be reproduced).
  at = int(np.random.default_rng(int(sig)).integers(3, STEPS - 3))
  proc = _interrupt(tmp_path, sig, at)
  if sig != signal.SIGKILL:
    # Preempted: a checkpoint was saved before exiting, with the preemption exit code.
    assert proc.returncode == errors.PREEMPTED_EXIT_CODE
    assert f"stopped by {signal.Signals(sig).name}" in proc.stdout.read()
  else:
    assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / "final.npz").exists()
  text = _run_to_end(tmp_path)
  assert f"done {STEPS}" in text and "resumed_from=None" not in text
  want, got = _final(uninterrupted), _final(tmp_path)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  # The log holds each step once, with the uninterrupted run's losses and validations (a
  # window cut by the interruption is carried in the checkpoint, so the averages match).
  clean, resumed = _history(uninterrupted), _history(tmp_path)
  key = lambda r: (r["step"], r["kind"])
  assert sorted(map(key, resumed)) == sorted(map(key, clean))
  losses = {key(r): r.get("loss", r.get("score")) for r in clean}
  for r in resumed:
    assert r.get("loss", r.get("score")) == losses[key(r)], r

