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


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
  return out


def _changed(a, b):
  fa, fb = _flat(a.to_dict()), _flat(b.to_dict())
  assert set(fa) == set(fb)
  return {k for k in fa if fa[k] != fb[k]}


def test_accelerator_presets_change_only_what_they_state():
  from gensar_jax.benchmarks import pod_numbers  # pylint: disable=g-import-not-at-top

  amazon = _load("amazon")
  assert amazon.PRESETS == ("paper", "cpu", "gpu1", "gpu1_small")
  get = lambda preset: amazon.get_config(f"category=Office_Products,preset={preset}")
  paper, cpu, gpu1, small = get("paper"), get("cpu"), get("gpu1"), get("gpu1_small")
  # gpu1: the paper's run in bf16 compute (parameters stay float32: model/t5.py), decoded
  # in larger batches; the paper's global batch in micro-batches of 256.
  assert _changed(paper, gpu1) == {"preset", "model.dtype", "doc2query.model.dtype",
                                   "eval.batch_size"}
  assert gpu1.model.dtype == gpu1.doc2query.model.dtype == "bfloat16"
  assert gpu1.train.batch_size == 8192
  assert gpu1.train.batch_size // gpu1.train.grad_accum_steps == 256
  # The stated arithmetic: micro-batches of 256 fit the 60 GiB XLA takes of an 80 GiB
  # H100 at the worst source bucket; 512 would not.
  worst = gpu1.tasks.max_source_len
  assert pod_numbers.device_bytes(pod_numbers.PAPER, 256, worst) < 60 * 2**30
  assert pod_numbers.device_bytes(pod_numbers.PAPER, 512, worst) > 60 * 2**30
  # gpu1_small: the cpu preset's model and stages, trained for 200 epochs at batch 1,024
  # with the learning rate scaled by sqrt(1024 / 64), the paper's recipe (the cpu preset's
  # departures of issue 24 off), no wall-clock guard, and 8 processes building epochs.
  assert _changed(cpu, small) == {
      "preset", "train.batch_size", "train.learning_rate", "train.epochs", "train.steps",
      "train.checkpoint_every_steps", "train.eval_every_epochs", "eval.batch_size",
      "train.max_minutes", "train.warm_start_steps", "train.warm_start_minutes",
      "tasks.nrip_popularity_power", "tasks.min_passes", "train.epoch_workers",
      "train.grad_accum_steps"}
  assert small.train.epoch_workers == 8 and cpu.train.epoch_workers == 0  # Builders ahead.
  for field in ("train.warm_start_steps", "tasks.nrip_popularity_power", "tasks.min_passes"):
    section, name = field.split(".")
    assert small[section][name] == paper[section][name] == 0
  assert small.train.epochs == 200 and small.train.steps == 0 and small.train.batch_size == 1024
  assert small.train.learning_rate == cpu.train.learning_rate * (1024 / cpu.train.batch_size) ** 0.5
  assert small.model.dtype == "float32"
