"""Tests of the config files: argument parsing, presets, ablations, documented fields."""

import re

import pytest

from gensar_jax import config_files
from tests.conftest import REPO


def _load(name):
  return config_files.load_module(REPO / "configs" / f"{name}.py")


def test_presets_differ_in_size_and_parse_arguments():
  amazon = _load("amazon")
  paper = amazon.get_config("category=Electronics,preset=paper")
  cpu = amazon.get_config("category=Office_Products,preset=cpu")
  assert paper.data.category == "Electronics" and cpu.data.category == "Office_Products"
  assert paper.model.d_model == 512 and paper.model.num_encoder_layers == 6
  assert cpu.model.d_model < paper.model.d_model
  assert paper.identifiers.epochs == 500 and paper.eval.beam_size == 30
  with pytest.raises(ValueError, match="preset"):
    amazon.get_config("preset=huge")
  with pytest.raises(ValueError, match="unknown config argument"):
    amazon.get_config("colour=red")


def test_every_config_field_has_a_comment():
  for name in ("amazon", "demo"):
    text = (REPO / "configs" / f"{name}.py").read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
      if re.match(r"^\s+[a-z]\.[a-z_.]+ = ", line):
        if line.rstrip().endswith("ml_collections.ConfigDict()"):
          continue  # A section header, commented by its banner.
        documented = "#" in line or lines[i - 1].strip().startswith("#")
        assert documented, f"configs/{name}.py: field without a comment: {line.strip()}"


def test_ablations_change_exactly_what_they_name():
  ablation = _load("ablation")
  base = _load("amazon").get_config("preset=cpu")
  no_bt = ablation.get_config("name=no_behaviour_tokens,preset=cpu")
  assert base.tasks.behaviour_tokens and not no_bt.tasks.behaviour_tokens
  assert ablation.get_config("name=no_nsip,preset=cpu").tasks.shares.nsip == 0
  assert not ablation.get_config("name=no_adhoc,preset=cpu").doc2query.enabled
  assert ablation.get_config("name=only_semantic").identifiers.variant == "semantic"
  for lm in (1, 2, 3):
    c = ablation.get_config(f"name=lm{lm},preset=cpu")
    assert c.identifiers.num_shared_levels == lm
    assert c.identifiers.num_shared_levels + c.identifiers.num_specific_levels == 4
  with pytest.raises(ValueError, match="unknown ablation"):
    ablation.get_config("name=no_everything")
  # On the demo world: the demo's config with the one change (and no infer stage).
  demo = _load("demo").get_config()
  on_demo = ablation.get_config("name=no_nsip,base=demo")
  assert on_demo.data.demo and on_demo.tasks.shares.nsip == 0 and on_demo.stages == "all"
  on_demo.tasks.shares.nsip = demo.tasks.shares.nsip
  on_demo.stages, on_demo.ablation = demo.stages, demo.ablation
  assert on_demo.to_dict() == demo.to_dict()
  with pytest.raises(ValueError, match="base"):
    ablation.get_config("name=no_nsip,base=books")
