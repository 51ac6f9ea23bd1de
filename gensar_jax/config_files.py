"""Config files and command-line overrides, with one-line errors.

A config file is a Python file with `get_config(arg)` returning an `ml_collections`
ConfigDict; on the command line it is named `PATH` or `PATH:ARG` (ARG is passed to
`get_config`). Fields are overridden with `--config.section.field=value`; the value is
parsed for the field's current type (bool, int, float, str, tuple), and an unknown field
is refused with the closest known name, and a numeric value outside its range
(`config_ranges`) is refused too. Every failure is a `ConfigError` whose message
is one line that says what to fix.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Any, Iterable

import ml_collections

from gensar_jax import config_ranges


class ConfigError(ValueError):
  """A config file or override the user must fix (the message says how)."""


def load_module(path: str | pathlib.Path, name: str | None = None) -> ModuleType:
  """Imports a config file by path (configs/ is not a package: files may live anywhere)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ConfigError(f"config file {str(path)!r} does not exist (see configs/ for the bundled ones)")
  module_name = name or f"gensar_config_{path.stem}"
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {str(path)!r} defines no get_config(arg) function")
  return module


def sibling(config_file: str | pathlib.Path, name: str) -> ModuleType:
  """Loads the config file `name`.py next to `config_file` (demo and ablation build on amazon)."""
  return load_module(pathlib.Path(config_file).with_name(f"{name}.py"))


def load(spec: str) -> ml_collections.ConfigDict:
  """Loads `PATH` or `PATH:ARG` into a ConfigDict.

  Raises:
    ConfigError: a missing file, or an argument string `get_config` refuses.
  """
  path, _, arg = spec.partition(":")
  if not path:
    raise ConfigError("--config is empty: give a config file, e.g. --config=configs/demo.py")
  module = load_module(path)
  try:
    config = module.get_config(arg or None)
  except (ValueError, KeyError, TypeError) as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    raise ConfigError(f"bad argument {arg!r} for {path}: {msg}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
  return config


def field_names(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf field as a dotted name ("train.learning_rate"), in definition order."""
  names = []
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      names.extend(field_names(value, name + "."))
    else:
      names.append(name)
  return names


def _suggest(name: str, config: ml_collections.ConfigDict) -> str:
  known = field_names(config)
  sections = sorted({n.rsplit(".", 1)[0] for n in known if "." in n})
  close = difflib.get_close_matches(name, known + sections, n=1, cutoff=0.6)
  return f"; did you mean {close[0]}?" if close else "; --show_config lists every field"


def _parse(name: str, text: str, current: Any) -> Any:
  """`text` as a value of `current`'s type."""
  bad = ConfigError(f"--config.{name}={text}: expected {type(current).__name__} "
                    f"(like {current!r})")
  if isinstance(current, bool):
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise bad
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise bad from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise bad from None
  if isinstance(current, str):
    return text
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise bad from None
    value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    return type(current)(value)
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override(config: ml_collections.ConfigDict, name: str, text: str) -> None:
  """Sets field `name` ("section.field") of `config` from its command-line text.

  Raises:
    ConfigError: an unknown field (naming the closest one), a section, or a value that
      does not parse as the field's type.
  """
  node = config
  parts = name.split(".")
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"unknown config field {name!r}{_suggest(name, config)}")
    if depth == len(parts) - 1:
      break
    node = node[part]
  current = node[parts[-1]]
  if isinstance(current, ml_collections.ConfigDict):
    raise ConfigError(f"config.{name} is a section; set one of its fields, e.g. "
                      f"--config.{field_names(current, name + '.')[0]}=...")
  with node.unlocked():
    node[parts[-1]] = _parse(name, text, current)


def _flag_value(argv: list[str], i: int) -> tuple[str, str, int]:
  """The flag at argv[i] (`--name=V` or `--name V`): (name, V, index after it)."""
  key, eq, value = argv[i][2:].partition("=")
  if eq:
    return key, value, i + 1
  if i + 1 >= len(argv):
    raise ConfigError(f"{argv[i]} needs a value ({argv[i]}=VALUE)")
  return key, argv[i + 1], i + 2


def split_argv(argv: Iterable[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
  """Separates `--config=SPEC` and `--config.x.y=V` (or `--config.x.y V`) from other flags.

  Returns:
    (the config spec or None, [(field, text)] in order, the remaining argv).
  """
  argv = list(argv)
  spec, overrides, rest = None, [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg == "--config" or arg.startswith("--config=") or arg.startswith("--config."):
      key, value, i = _flag_value(argv, i)
      if key == "config":
        spec = value
      else:
        overrides.append((key[len("config."):], value))
    else:
      rest.append(arg)
      i += 1
  return spec, overrides, rest


def pop_flag(argv: list[str], name: str) -> tuple[str | None, list[str]]:
  """Takes `--name=V` (or `--name V`) out of argv: (V or None, the remaining argv)."""
  value, rest, i = None, [], 0
  while i < len(argv):
    if argv[i] == f"--{name}" or argv[i].startswith(f"--{name}="):
      _, value, i = _flag_value(argv, i)
    else:
      rest.append(argv[i])
      i += 1
  return value, rest


def from_argv(spec: str | None, overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
  """The config named by `--config`, with the overrides applied in order, then locked."""
  if spec is None:
    raise ConfigError("--config is required, e.g. --config=configs/demo.py (see --help)")
  config = load(spec)
  for name, text in overrides:
    override(config, name, text)
  config_ranges.check(config)
  config.lock()
  return config


def show(config: ml_collections.ConfigDict, out=None) -> None:
  """Prints every field as `section.field = value`, one per line (to stdout by default)."""
  out = out or sys.stdout
  for name in field_names(config):
    node = config
    for part in name.split("."):
      node = node[part]
    print(f"{name} = {node!r}", file=out)
