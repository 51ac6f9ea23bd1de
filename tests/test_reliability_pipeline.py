"""The runner never gives a silent wrong result: locks, manifests, signals, divergence.

The tiny world of `test_end_to_end` is built once; each test works on a copy of it, some
through the `gensar` command in a subprocess (exit codes and the one-line messages).
"""

import json
import os
import re
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from gensar_jax import errors
from gensar_jax import pipeline
from gensar_jax.identifiers import table as id_table
from tests.conftest import REPO
from tests.test_end_to_end import tiny_config

UPTO_EVAL = "data,embed,identifiers,doc2query,train,eval"
CONFIG_FILE = '''
import sys
sys.path.insert(0, {repo!r})
from tests.test_end_to_end import tiny_config


def get_config(arg=None):
  return tiny_config()
'''


@pytest.fixture
def built(tiny_run, tmp_path_factory):
  """The session's finished tiny workdir and a config file that reproduces it."""
  config_file = tmp_path_factory.mktemp("config") / "tiny.py"
  config_file.write_text(CONFIG_FILE.format(repo=str(REPO)))
  return tiny_run[0], config_file


def _copy(workdir: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  shutil.copytree(workdir, dst, symlinks=True)
  return dst


def _gensar(config_file, workdir, *args, wait=True):
  """`gensar` on the tiny config (stages through eval unless `args` say otherwise)."""
  cmd = [sys.executable, "-m", "gensar_jax.main", f"--config={config_file}",
         f"--workdir={workdir}", f"--config.stages={UPTO_EVAL}", *args]
  env = dict(os.environ, PYTHONPATH=str(REPO))
  if not wait:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _metrics(workdir):
  return json.loads((workdir / "eval" / "metrics.json").read_text())


def test_a_diverging_run_exits_1_with_one_line_and_writes_no_metrics(built, tmp_path):
  workdir = _copy(built[0], tmp_path / "w")
  shutil.rmtree(workdir / "eval")
  proc = _gensar(built[1], workdir, "--config.stages=train,eval",
                 "--config.train.learning_rate=1e30")
  assert proc.returncode == 1, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: training diverged at step "), last
  assert "lower train.learning_rate" in last
  assert not (workdir / "eval" / "metrics.json").exists()
  assert not (workdir / "train" / ".done").exists()


def test_a_second_run_on_a_busy_workdir_exits_at_once_and_the_first_is_unharmed(built, tmp_path):
  workdir = _copy(built[0], tmp_path / "w")
  shutil.rmtree(workdir / "eval")  # The first run has real work to do.
  first = _gensar(built[1], workdir, wait=False)
  deadline = time.time() + 120
  while str(first.pid) not in ((workdir / ".lock").read_text() if (workdir / ".lock").exists() else ""):
    assert first.poll() is None and time.time() < deadline
    time.sleep(0.1)
  t0 = time.time()
  second = _gensar(built[1], workdir)
  assert time.time() - t0 < 60
  assert second.returncode == 1
  line = second.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: workdir {workdir} is in use by another run (PID {first.pid}: ")
  assert "main.py" in line  # The holder's command line.
  out, err = first.communicate(timeout=900)
  assert first.returncode == 0, err[-3000:]
  # Quiet logs: no progress-bar frames in a file, no third-party INFO lines.
  assert "\r" not in out + err
  assert not re.search(r"^I\d{4} .*(orbax|checkpoint_manager|checkpointer|xla_bridge)", err,
                       re.M), err[:3000]
  assert "outputs of this run in" in out and "eval/metrics.json" in out
  mine, lone = _metrics(workdir), _metrics(built[0])
  for task in ("recommendation", "search"):
    assert mine[task] == lone[task]
  # The lock went with the first process: the same command now runs (and skips everything).
  again = _gensar(built[1], workdir)
  assert again.returncode == 0, again.stderr[-2000:]


def test_sigterm_during_eval_exits_75_naming_the_stage_and_the_rerun_finishes(built, tmp_path):
  workdir = _copy(built[0], tmp_path / "w")
  shutil.rmtree(workdir / "eval")
  proc = _gensar(built[1], workdir, wait=False)
  deadline = time.time() + 300
  while not (workdir / "eval" / ".started").exists():
    assert proc.poll() is None and time.time() < deadline
    time.sleep(0.05)
  time.sleep(1.0)  # Inside the eval stage's work.
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == errors.PREEMPTED_EXIT_CODE, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("preempted: stage eval: stopped by SIGTERM"), last
  assert "run the same command again" in last
  assert not (workdir / "eval" / ".done").exists()
  again = _gensar(built[1], workdir)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _metrics(workdir)["recommendation"] == _metrics(built[0])["recommendation"]


def test_a_truncated_identifiers_file_reruns_the_identifiers_stage(built, tmp_path):
  workdir = _copy(built[0], tmp_path / "w")
  path = workdir / "identifiers" / id_table.FILENAME
  good = id_table.load(path)
  path.write_bytes(path.read_bytes()[:100])
  summaries = pipeline.run(tiny_config(stages="eval"), workdir)
  assert "identifiers" in summaries  # Rebuilt before eval reads it.
  again = id_table.load(path)
  np.testing.assert_array_equal(again.semantic.codes, good.semantic.codes)
  np.testing.assert_array_equal(again.collaborative.codes, good.collaborative.codes)
  assert _metrics(workdir) == _metrics(built[0])  # Eval itself was still up to date.


def test_a_damaged_best_checkpoint_retrains_before_eval_reads_it(built, tmp_path):
  workdir = _copy(built[0], tmp_path / "w")
  data_file = max((workdir / "train" / "best").glob("*/params/d/*"), key=lambda p: p.stat().st_size)
  data_file.write_bytes(data_file.read_bytes()[:200])
  shutil.rmtree(workdir / "eval")
  summaries = pipeline.run(tiny_config(stages="eval"), workdir)
  assert summaries["train"]["resumed_from"] is None  # Afresh, not resumed into the damage.
  assert _metrics(workdir) == _metrics(built[0])  # Same seed: the same model again.


# ------------------------------------------------------------ runner-level (fake stages)

def _fake(monkeypatch, fail_when=None):
  """A one-stage pipeline whose stage writes out.txt = the config's x (or fails)."""
  runs = []
  module = types.ModuleType("fake_out")

  def run(config, ctx):
    runs.append(config.x)
    if fail_when is not None and config.x == fail_when:
      raise errors.PipelineError("planted failure")
    (ctx.dir / "out.txt").write_text(str(config.x))
    return {}

  module.run = run
  monkeypatch.setitem(sys.modules, "fake_out", module)
  stage = pipeline.Stage("data", "fake_out", (), ("x",))
  monkeypatch.setattr(pipeline, "STAGES", (stage,))
  monkeypatch.setattr(pipeline, "_BY_NAME", {"data": stage})
  return runs


def _cfg(x):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({"seed": 0, "stages": "data", "x": x})


def test_changed_or_missing_outputs_rerun_the_stage_saying_which(tmp_path, monkeypatch, caplog):
  runs = _fake(monkeypatch)
  pipeline.run(_cfg(1), tmp_path)
  pipeline.run(_cfg(1), tmp_path)
  assert runs == [1]  # Up to date.
  (tmp_path / "data" / "out.txt").write_text("9")  # Another size: detected.
  with caplog.at_level("INFO"):
    pipeline.run(_cfg(1), tmp_path)
  assert runs == [1, 1]
  assert "its outputs changed since it finished (out.txt changed)" in caplog.text
  (tmp_path / "data" / "out.txt").unlink()
  caplog.clear()
  with caplog.at_level("INFO"):
    pipeline.run(_cfg(1), tmp_path)
  assert runs == [1, 1, 1] and "out.txt missing" in caplog.text


def test_a_failed_rerun_keeps_the_good_outputs_and_they_come_back(tmp_path, monkeypatch):
  runs = _fake(monkeypatch, fail_when=2)
  pipeline.run(_cfg(1), tmp_path)
  with pytest.raises(errors.PipelineError, match="planted failure"):
    pipeline.run(_cfg(2), tmp_path)
  previous = tmp_path / ("data" + pipeline.PREVIOUS_SUFFIX)
  assert (previous / "out.txt").read_text() == "1"  # Not deleted before new ones existed.
  pipeline.run(_cfg(1), tmp_path)  # The old config: put back, not recomputed.
  assert runs == [1, 2]
  assert (tmp_path / "data" / "out.txt").read_text() == "1" and not previous.exists()
  pipeline.run(_cfg(3), tmp_path)  # A successful rerun removes the set-aside outputs.
  assert (tmp_path / "data" / "out.txt").read_text() == "3" and not previous.exists()


def test_a_stale_lock_file_never_blocks(tmp_path, monkeypatch):
  runs = _fake(monkeypatch)
  tmp_path.mkdir(exist_ok=True)
  (tmp_path / ".lock").write_text("PID 999999: a run that was killed\n")
  pipeline.run(_cfg(1), tmp_path)
  assert runs == [1]
