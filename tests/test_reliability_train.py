"""The trainer fails loudly: divergence, damaged checkpoints, failed saves, torn logs."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from gensar_jax import errors
from gensar_jax import metrics as metrics_lib
from gensar_jax.trainer import checkpoint as ckpt_lib
from gensar_jax.trainer import logging_utils
from tests.test_train import _config
from tests.test_train import _model
from tests.test_train import _planted
from tests.test_train import _train

REPO = pathlib.Path(__file__).resolve().parents[1]


def _finite(tree) -> bool:
  return all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(tree))


def test_a_huge_learning_rate_stops_training_with_one_line_and_keeps_good_checkpoints(tmp_path):
  model, params = _model()
  data = _planted(64)
  c = _config(learning_rate=1e30, warmup_frac=0.0, checkpoint_every_steps=1, epochs=4)
  with pytest.raises(errors.Diverged) as e:
    _train(c, tmp_path, model=model, init_params=params, make_epoch=lambda _: data)
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith("training diverged at step ")
  assert "lower train.learning_rate (now 1e+30)" in msg
  bad = int(msg.split("step ")[1].split(" ")[0])
  assert bad < 16  # Stopped at once, not at the end of 16 steps.
  # The log records the non-finite step instead of dropping it.
  history = logging_utils.read_history(tmp_path)
  assert any(r["step"] == bad and not np.isfinite([r["loss"], r["grad_norm"]]).all()
             for r in history)
  # Every checkpoint on disk holds finite parameters and verifies.
  ckpt = ckpt_lib.Checkpointer(tmp_path, 5)
  steps = ckpt.periodic.all_steps()
  assert steps and max(steps) < bad
  from gensar_jax.trainer import step as step_lib  # pylint: disable=g-import-not-at-top
  tx, _ = step_lib.make_optimizer(c.train, 16)
  state = step_lib.init_state(params, tx)
  restored, _, _ = ckpt.restore(max(steps), state.params, state.opt_state)
  ckpt.close()
  assert _finite(restored)


def test_ranking_refuses_nan_scores_and_names_the_model():
  scores = np.array([[np.nan, 0.1, 0.2], [0.3, 0.1, 0.2]])
  with pytest.raises(errors.NonFiniteScores, match="1 of 6 scores are NaN or \\+inf"):
    metrics_lib.ranks_from_scores(scores)
  with pytest.raises(errors.NonFiniteScores):
    metrics_lib.ranks_of_targets(np.array([[np.inf, 0.0]]), np.array([1]))
  with pytest.raises(errors.NonFiniteScores, match="^GenSAR on the test search rows: "):
    with metrics_lib.scoring("GenSAR on the test search rows"):
      metrics_lib.ranks_from_scores(scores)
  # -inf marks an impossible candidate and is still ranked (last).
  ranks = metrics_lib.ranks_from_scores(np.array([[-np.inf, 0.0, 1.0], [2.0, -np.inf, 1.0]]))
  np.testing.assert_array_equal(ranks, [3.0, 1.0])


def _one_run(tmp_path, **train):
  model, params = _model()
  data = _planted(64)
  _train(_config(**train), tmp_path, model=model, init_params=params, make_epoch=lambda _: data)
  return model, params, data


def _largest_array_file(folder: pathlib.Path) -> pathlib.Path:
  """The largest data file Orbax reads back (`<item>/d/`; the per-process copies under
  `ocdbt.process_0/` are merged into it when the save completes)."""
  files = [p for p in folder.glob("*/d/*") if p.is_file()]
  return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_checkpoint_fails_restore_with_one_line(tmp_path, damage):
  model, params, data = _one_run(tmp_path, max_steps=3)
  target = _largest_array_file(tmp_path / "ckpt" / "3")
  raw = bytearray(target.read_bytes())
  if damage == "flip":
    mid = len(raw) // 2
    raw[mid:mid + 4096] = bytes(b ^ 0xFF for b in raw[mid:mid + 4096])
    assert len(raw) == target.stat().st_size
  else:
    raw = raw[:len(raw) // 2]
  target.write_bytes(bytes(raw))
  with pytest.raises(errors.DamagedCheckpoint) as e:
    _train(_config(), tmp_path, model=model, init_params=params, make_epoch=lambda _: data)
  msg = str(e.value)
  assert "\n" not in msg
  assert str(tmp_path / "ckpt" / "3") in msg
  assert "delete" in msg  # What to do.


def test_a_torn_last_log_line_is_dropped_on_resume(tmp_path):
  model, params, data = _one_run(tmp_path, max_steps=3)
  log = tmp_path / "metrics.jsonl"
  before = logging_utils.read_history(tmp_path)
  with log.open("a") as f:
    f.write('{"step": 4, "kind": "train", "lo')  # A kill mid-write.
  assert logging_utils.read_history(tmp_path) == before
  result = _train(_config(), tmp_path, model=model, init_params=params,
                  make_epoch=lambda _: data)
  assert result.resumed_from == 3 and result.steps == 8
  steps = [r["step"] for r in logging_utils.read_history(tmp_path) if r["kind"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 8
  # A damaged line before the last is an error naming the line, not a silent drop.
  lines = log.read_text().splitlines()
  log.write_text("\n".join(lines[:1] + ["{oops"] + lines[1:]) + "\n")
  with pytest.raises(errors.PipelineError, match="line 2: not a JSON record"):
    logging_utils.read_history(tmp_path)


_FULL_DISK_SCRIPT = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes past the limit fail with EFBIG.
    sys.path.insert(0, {repo!r})
    from gensar_jax import errors
    from tests.test_train import _config, _model, _planted, _train
    model, params = _model()
    data = _planted(64)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, 16_000))
    try:
      _train(_config(epochs=50, checkpoint_every_steps=2, log_every_steps=1),
             {out!r}, model=model, init_params=params, make_epoch=lambda _: data)
    except errors.PipelineError as e:
      print("ERROR:" + str(e))
      sys.exit(1)
    print("FINISHED")
""")


def test_a_failed_checkpoint_save_stops_training_within_a_step(tmp_path):
  """Files over 16 kB cannot be written (as on a full disk): the first save fails."""
  out = tmp_path / "train"
  script = _FULL_DISK_SCRIPT.format(repo=str(REPO), out=str(out))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                        env=env, timeout=600, cwd=REPO)
  assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("ERROR:")][0]
  assert "saving a checkpoint in" in line and str(out / "ckpt") in line
  assert "run the same command again to resume" in line
  # Stopped within a step or two of the first save (step 2), not after 200 steps.
  steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
  assert max(steps) <= 4, steps
  assert "ImportError" not in proc.stderr


def test_a_relative_train_folder_checkpoints_and_restores_by_its_absolute_path(tmp_path,
                                                                               monkeypatch):
  # Orbax refuses a relative folder at the first save, minutes into training (`--workdir=W`
  # on the H200 did): it is only ever given absolute folders.
  monkeypatch.chdir(tmp_path)
  model, params = _model()
  data = _planted(64)
  _train(_config(max_steps=2), pathlib.Path("run"), model=model, init_params=params,
         make_epoch=lambda _: data)
  ckpt = ckpt_lib.Checkpointer(pathlib.Path("run"), 5)
  assert pathlib.Path(ckpt.periodic.directory).is_absolute()
  assert pathlib.Path(ckpt.periodic.directory) == tmp_path / "run" / "ckpt"
  assert ckpt.latest_step() == 2
  ckpt.close()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  restored, step, where = ckpt_lib.restore_params(pathlib.Path("run"), "latest", abstract,
                                                  "retrain")
  assert step == 2 and where.is_absolute()
  assert _finite(restored)
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(restored), jax.tree.leaves(params)))  # Trained, not init.
