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
Other arguments (category, preset) are passed to configs/amazon.py. On the demo world,
after the demo has run:

  gensar --config=configs/ablation.py:name=no_behaviour_tokens,base=demo \
      --config.reuse_from=/tmp/gensar_demo --workdir=/tmp/gensar_demo/ablations/no_behaviour_tokens
"""

import ml_collections

from gensar_jax import config_files
from gensar_jax import tasks

TASK_ABLATIONS = tasks.TASK_NAMES  # One ablation per training task: no_<task>.
NAMES = (
    ("no_behaviour_tokens",)
    + tuple(f"no_{t}" for t in TASK_ABLATIONS)
    + ("only_semantic", "only_collaborative", "lm1", "lm2", "lm3")
)


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
  """The amazon (or demo) config with one ablation applied.

  `arg`: `name=ABLATION`, optionally `base=demo` (the demo world's config), and the
  amazon config's own arguments (category, preset) otherwise.
  """
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  names = [p.split("=", 1)[1] for p in parts if p.startswith("name=")]
  if len(names) != 1:
    raise ValueError(f"give exactly one name=... among {NAMES}")
  bases = [p.split("=", 1)[1] for p in parts if p.startswith("base=")] or ["amazon"]
  if len(bases) != 1 or bases[0] not in ("amazon", "demo"):
    raise ValueError(f"base must be amazon or demo, got {bases}")
  rest = ",".join(p for p in parts if not p.startswith(("name=", "base=")))
  if bases[0] == "demo":
    if rest:
      raise ValueError(f"base=demo takes no other arguments, got {rest!r}")
    c = config_files.sibling(__file__, "demo").get_config()
    c.stages = "all"  # Every stage but infer (the demo's example answers are its own).
  else:
    c = config_files.sibling(__file__, "amazon").get_config(rest)
  return apply(c, names[0])
