"""The command line: one-line config errors with the fix, --help, --show_config, exit codes."""

import pytest

from gensar_jax import config_files
from gensar_jax import errors
from gensar_jax import main as main_lib
from tests.conftest import load_config
from tests.conftest import REPO

DEMO = str(REPO / "configs" / "demo.py")
AMAZON = str(REPO / "configs" / "amazon.py")


def _main(capsys, *args):
  with pytest.raises(SystemExit) as exit_info:
    main_lib.main(["gensar", *args])
  out, err = capsys.readouterr()
  return exit_info.value.code, out, err


@pytest.mark.parametrize("args, want", [
    ((f"--config={DEMO}", "--config.trian.epochs=1"),
     "unknown config field 'trian.epochs'; did you mean train.epochs?"),
    ((f"--config={DEMO}", "--config.train.learning_rat=1"),
     "unknown config field 'train.learning_rat'; did you mean train.learning_rate?"),
    ((f"--config={DEMO}", "--config.train.steps=abc"),
     f"--config.train.steps=abc: expected int (like {load_config('demo').train.steps})"),
    ((f"--config={DEMO}", "--config.eval.compare=maybe"),
     "--config.eval.compare=maybe: expected bool (like True)"),
    (("--config=configs/nope.py",), "config file 'configs/nope.py' does not exist"),
    ((f"--config={AMAZON}:colour=red",),
     f"bad argument 'colour=red' for {AMAZON}: unknown config argument 'colour'"),
    ((f"--config={AMAZON}:preset=huge",),
     f"preset must be one of {config_files.load_module(AMAZON).PRESETS}, got 'huge'"),
    (("--workdir=/tmp/x",), "--config is required"),
    ((f"--config={DEMO}",), "--workdir is required"),
])
def test_user_errors_are_one_line_with_the_fix(capsys, args, want):
  code, out, err = _main(capsys, *args, *(() if "--workdir" in " ".join(args) or
                                          args == (f"--config={DEMO}",) else ("--workdir=/tmp/x",)))
  assert code == errors.CONFIG_EXIT_CODE
  assert out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and want in lines[0], err


def test_help_exits_zero_and_lists_stages_configs_and_show_config(capsys):
  code, out, _ = _main(capsys, "--help")
  assert code == 0
  for name in ("data", "embed", "identifiers", "doc2query", "train", "eval", "report", "infer",
               "configs/demo.py", "configs/amazon.py", "configs/ablation.py", "--show_config",
               "75 preempted"):
    assert name in out, name


def test_show_config_prints_every_field_with_overrides(capsys):
  code, out, _ = _main(capsys, f"--config={AMAZON}:preset=cpu", "--config.train.steps=7",
                       "--config.identifiers.hidden_dims=(64,32)", "--config.eval.compare=false",
                       "--show_config")
  assert code == 0
  lines = out.splitlines()
  assert "train.steps = 7" in lines
  assert "identifiers.hidden_dims = (64, 32)" in lines
  assert "eval.compare = False" in lines
  assert "tasks.shares.nrip = 1.0" in lines
  full = config_files.load(f"{AMAZON}:preset=cpu")
  assert len(lines) == len(config_files.field_names(full))


def test_overrides_parse_as_the_field_type_and_refuse_sections():
  c = config_files.from_argv(DEMO, [("train.learning_rate", "3e-3"), ("train.epochs", "2"),
                                    ("data.raw_dir", "/x"), ("eval.full_catalog", "0")])
  assert c.train.learning_rate == 0.003 and isinstance(c.train.epochs, float)
  assert c.data.raw_dir == "/x" and c.eval.full_catalog is False
  with pytest.raises(config_files.ConfigError, match="is a section"):
    config_files.from_argv(DEMO, [("train", "1")])
  spec, overrides, rest = config_files.split_argv(
      ["prog", "--config", DEMO, "--config.seed", "3", "--workdir=/w"])
  assert (spec, overrides, rest) == (DEMO, [("seed", "3")], ["prog", "--workdir=/w"])
  assert config_files.pop_flag(["prog", "--workdir", "/w", "-v"], "workdir") == ("/w", ["prog", "-v"])
  assert config_files.pop_flag(rest, "workdir") == ("/w", ["prog"])
  assert config_files.pop_flag(["prog", "--workdirs=x"], "workdir") == (None, ["prog", "--workdirs=x"])
