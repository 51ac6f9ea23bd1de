"""The embedded demo: a generated world in the McAuley layout, every stage, small sizes.

  python -m gensar_jax.main --config=configs/demo.py --workdir=/tmp/gensar_demo

Generates a synthetic category (no real data ships with the project) into
`<workdir>/raw` unless `--config.data.raw_dir` is given, then runs every stage with
`preset=cpu` sizes shrunk further so the whole pipeline takes a few minutes on 2 cores.
"""

import ml_collections

from gensar_jax import config_files


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The amazon config at `preset=cpu`, pointed at the generated demo world."""
  del arg
  c = config_files.sibling(__file__, "amazon").get_config("category=Demo,preset=cpu")
  c.stages = "data,embed,identifiers,doc2query,train,eval,report,infer"  # All, then answers.
  c.data.demo = True  # Generate the demo world (into <workdir>/raw when raw_dir is "").
  c.infer.example_requests = 3  # End by answering 1 recommendation and 2 search requests.
  c.embed.sasrec.epochs = 30  # Short SASRec training.
  c.identifiers.epochs = 100  # Short quantizer training.
  c.identifiers.warmup_epochs = 10  # Short warmup to match.
  c.train.steps = 400  # Optimizer steps (batch 64) of the demo's training.
  c.train.eval_every_epochs = 10  # Validate once, at the end (per epoch took 45% of the training time).
  return c
