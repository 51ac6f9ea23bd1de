"""Tests of the launch scripts' argument assembly (the scripts themselves need a cluster)."""

import subprocess
import sys

import pytest

from launch import command
from tests.conftest import REPO


def test_build_command_runs_main_distributed_with_overrides():
  argv = command.build_command(
      "configs/amazon.py:category=Electronics,preset=paper", "/mnt/shared/run",
      ["--config.train.epochs=3"],
  )
  assert argv[:3] == ["python3", "-m", "gensar_jax.main"]
  assert "--config=configs/amazon.py:category=Electronics,preset=paper" in argv
  assert "--workdir=/mnt/shared/run" in argv
  assert argv.index("--config.distributed=True") < argv.index("--config.train.epochs=3")


@pytest.mark.parametrize(
    "workdir,overrides,message",
    [
        ("", [], "shared --workdir"),
        ("gs://bucket/run", [], "shared filesystem"),
        ("/mnt/run", ["--epochs=3"], "--config."),
        ("/mnt/run", ["--config.distributed=False"], "set by the launcher"),
    ],
)
def test_build_command_rejects_bad_arguments(workdir, overrides, message):
  with pytest.raises(ValueError, match=message):
    command.build_command("configs/amazon.py", workdir, overrides)


def test_cli_prints_a_shell_quoted_command():
  out = subprocess.run(
      [sys.executable, "-m", "launch.command", "--config=configs/amazon.py:preset=paper",
       "--workdir=/mnt/my run", "--", "--config.seed=7"],
      cwd=REPO, check=True, capture_output=True, text=True,
  ).stdout.strip()
  assert out.startswith("python3 -m gensar_jax.main --config=configs/amazon.py:preset=paper")
  assert "'--workdir=/mnt/my run'" in out and out.endswith("--config.seed=7")


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sbatch"])
def test_launch_scripts_parse_and_demand_their_settings(script, tmp_path):
  path = REPO / "launch" / script
  subprocess.run(["bash", "-n", str(path)], check=True)
  out = subprocess.run(["bash", str(path), "configs/amazon.py"], cwd=tmp_path,
                       capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
  assert out.returncode != 0
  assert ("WORKDIR" in out.stderr) or ("TPU_NAME" in out.stderr)
