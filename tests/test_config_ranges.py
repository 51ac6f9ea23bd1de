"""Every numeric field of every bundled config has a checked range; out of range is refused."""

import pathlib
import subprocess
import sys

import pytest

from gensar_jax import config_files
from gensar_jax import config_ranges
from tests.conftest import CONFIGS

REPO = pathlib.Path(__file__).resolve().parents[1]


def _specs():
  amazon = config_files.load_module(CONFIGS / "amazon.py")
  ablation = config_files.load_module(CONFIGS / "ablation.py")
  specs = [f"{CONFIGS / 'amazon.py'}:preset={p}" for p in amazon.PRESETS]
  specs.append(str(CONFIGS / "demo.py"))
  specs += [f"{CONFIGS / 'ablation.py'}:name={n}" for n in ablation.NAMES]
  return specs


def _bad_value(rule: config_ranges.Rule, value):
  """A value just outside the rule, of the field's type."""
  if rule.lo is not None:
    bad = rule.lo if rule.open_lo else rule.lo - (1 if isinstance(value, int) else 0.5)
  else:
    bad = rule.hi if rule.open_hi else rule.hi + 1
  return int(bad) if isinstance(value, int) else float(bad)


@pytest.mark.parametrize("spec", _specs())
def test_every_numeric_field_has_a_range_and_an_out_of_range_value_is_refused(spec):
  config = config_files.load(spec)
  config_ranges.check(config)  # The bundled values are in range.
  fields = list(config_ranges.numeric_fields(config))
  assert len(fields) > 80
  for name, value in fields:
    rule = config_ranges.rule_for(name)
    assert rule is not None, f"{name} has no range"
    bad = _bad_value(rule, value)
    with pytest.raises(config_files.ConfigError, match=f"config.{name} = .* out of range"):
      config_files.from_argv(spec, [(name, str(bad))])


def test_a_field_without_a_rule_is_refused():
  config = config_files.load(str(CONFIGS / "demo.py"))
  with config.unlocked():
    config.train.new_knob = 3
  with pytest.raises(config_files.ConfigError, match="train.new_knob has no checked range"):
    config_ranges.check(config)


def test_nan_and_inf_are_out_of_range():
  for text in ("nan", "inf"):
    with pytest.raises(config_files.ConfigError, match="learning_rate"):
      config_files.from_argv(str(CONFIGS / "demo.py"), [("train.learning_rate", text)])


@pytest.mark.parametrize("override", ["train.steps=-5", "train.max_steps=-3",
                                      "train.max_to_keep=0", "train.eval_rows=-1",
                                      "train.grad_clip=-1", "train.max_minutes=-1",
                                      "train.seed=-1"])
def test_the_command_line_refuses_them_with_one_line_and_exit_2(tmp_path, override):
  proc = subprocess.run(
      [sys.executable, "-m", "gensar_jax.main", f"--config={CONFIGS / 'demo.py'}",
       f"--workdir={tmp_path / 'w'}", f"--config.{override}"],
      capture_output=True, text=True, cwd=REPO, timeout=120)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: config.") and "out of range" in lines[0]
  assert not (tmp_path / "w").exists()
