"""GenSAR ablations (paper Tables 5-6, Fig. 5), one command each.

  python -m gensar_jax.main \
      --config=configs/ablation.py:name=no_behaviour_tokens,category=Office_Products,preset=cpu \
      --config.data.raw_dir=../shared/data/amazon-office \
      --config.reuse_from=/tmp/office --workdir=/tmp/office/ablations/no_behaviour_tokens

`reuse_from` points at the full run's workdir: stages whose inputs and config are
unchanged (data, embed, and for task ablations the identifiers) are linked from it,
not recomputed. Keeping ablation workdirs under `<full run>/ablations/<name>` lets the
full run's report stage pick them up. Names:
  no_behaviour_tokens      no <R_I>/<S_Q>/<S_I> tokens anywhere
  no_nrip, no_nsqp, no_nsip, no_desc2id, no_id2desc, no_adhoc
                           one training task switched off
  only_semantic            one RQ-VAE identifier from v_s, used for both tasks
  only_collaborative       one RQ-VAE identifier from v_c, used for both tasks
  lm1, lm2, lm3            L_m shared levels with L_n = 4 - L_m specific levels
Other arguments (category, preset) are passed to configs/amazon.py.
"""

import importlib.util
import pathlib

import ml_collections

TASK_ABLATIONS = ("nrip", "nsqp", "nsip", "desc2id", "id2desc", "adhoc")
NAMES = (
    ("no_behaviour_tokens",)
    + tuple(f"no_{t}" for t in TASK_ABLATIONS)
    + ("only_semantic", "only_collaborative", "lm1", "lm2", "lm3")
)


def _amazon():
  path = pathlib.Path(__file__).with_name("amazon.py")
  spec = importlib.util.spec_from_file_location("gensar_configs_amazon", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def apply(c: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Changes config `c` in place into ablation `name` and returns it."""
  if name not in NAMES:
    raise ValueError(f"unknown ablation {name!r}; known: {NAMES}")
  c.ablation = name  # Which ablation this config is (read by the report stage).
  if name == "no_behaviour_tokens":
    c.tasks.behaviour_tokens = False
  elif name.startswith("no_"):
    c.tasks.shares[name[3:]] = 0.0
    if name == "no_adhoc":
      c.doc2query.enabled = False
  elif name.startswith("only_"):
    c.identifiers.variant = name[len("only_"):]
  else:  # lmN
    levels = c.identifiers.num_shared_levels + c.identifiers.num_specific_levels
    c.identifiers.num_shared_levels = int(name[2:])
    c.identifiers.num_specific_levels = levels - int(name[2:])
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The amazon config with one ablation applied; `arg` adds `name=...`."""
  parts = [p for p in (arg or "").split(",") if p.strip()]
  names = [p.split("=", 1)[1] for p in parts if p.startswith("name=")]
  if len(names) != 1:
    raise ValueError(f"give exactly one name=... among {NAMES}")
  rest = ",".join(p for p in parts if not p.startswith("name="))
  return apply(_amazon().get_config(rest), names[0])
