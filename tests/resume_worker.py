"""A training run for the interruption tests: `python -m tests.resume_worker DIR`.

Trains a tiny T5 on a planted mapping with a checkpoint after every step, writes the
final parameters to DIR/final.npz, and exits 3 when stopped by SIGTERM (`Preempted`).
Every run of it computes the same thing, so an interrupted and resumed run can be
compared with an uninterrupted one.
"""

import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from gensar_jax.train import loop  # pylint: disable=g-import-not-at-top
from tests import test_train  # pylint: disable=g-import-not-at-top

STEPS = 24  # 8 steps per epoch, 3 epochs.


def main(out: pathlib.Path) -> int:
  model, params = test_train._model(dropout=0.1)  # pylint: disable=protected-access
  data = test_train._planted(128, seed=4, vary=True)  # pylint: disable=protected-access
  config = test_train._config(epochs=3, checkpoint_every_steps=1, log_every_steps=1,  # pylint: disable=protected-access
                              max_to_keep=2)

  def validate(p, step):  # A pure function of the parameters, like real validation.
    del step
    return {"score": float(np.sin(np.asarray(p["params"]["shared"]["embedding"]).sum()))}

  try:
    result = loop.train(config, out, model=model, init_params=params,
                        make_epoch=lambda e: data,
                        validate=validate)
  except loop.Preempted as e:
    print(e, flush=True)
    return 3
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(result.params)}
  np.savez(out / "final.npz", **flat)
  print(f"done {result.steps} resumed_from={result.resumed_from}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(pathlib.Path(sys.argv[1])))
