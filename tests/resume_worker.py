"""A training run for the interruption tests: `python -m tests.resume_worker DIR`.

Trains a tiny T5 on a planted mapping with a checkpoint after every step and a log line
every `LOG_EVERY` steps (so an interruption can fall inside a logging window), writes the
final parameters to DIR/final.npz, and exits with `errors.PREEMPTED_EXIT_CODE` when stopped
by SIGTERM/SIGINT. Every run of it computes the same thing, so an interrupted and resumed
run can be compared with an uninterrupted one.
"""

import os
import pathlib
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from gensar_jax import errors  # pylint: disable=g-import-not-at-top
from tests import test_train  # pylint: disable=g-import-not-at-top

STEPS = 24  # 8 steps per epoch, 3 epochs.
LOG_EVERY = 5  # Not a divisor of the epoch: windows straddle epochs and checkpoints.


def main(out: pathlib.Path) -> int:
  model, params = test_train._model(dropout=0.1)  # pylint: disable=protected-access
  data = test_train._planted(128, seed=4, vary=True)  # pylint: disable=protected-access
  config = test_train._config(epochs=3, checkpoint_every_steps=1,  # pylint: disable=protected-access
                              log_every_steps=LOG_EVERY, max_to_keep=2)
  validate = lambda p, step: {  # A pure function of the parameters, like real validation.
      "score": float(np.sin(np.asarray(p["params"]["shared"]["embedding"]).sum()))}
  try:
    result = test_train._train(config, out, model=model, init_params=params,  # pylint: disable=protected-access
                               make_epoch=lambda e: data, validate=validate)
  except errors.Preempted as e:
    print(e, flush=True)
    return errors.PREEMPTED_EXIT_CODE
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(result.params)}
  np.savez(out / "final.npz", **flat)
  print(f"done {result.steps} resumed_from={result.resumed_from}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(pathlib.Path(sys.argv[1])))
