"""Compiling the train step ahead of its batch shapes (trainer/precompile.py)."""

import time

import jax
import numpy as np
import pytest

from gensar_jax import sharding
from gensar_jax.trainer import precompile
from tests.test_train import _config
from tests.test_train import _model
from tests.test_train import _planted
from tests.test_train import _train
from tests.test_train import _train_losses
from tests.test_train import jitted_step


def _step_and_state(micro_batches=2, rows=16):
  step_fn, state, rng, batch_sh = jitted_step()
  make = lambda s, t: sharding.global_batch(
      {"src": np.full((micro_batches, rows, s), 5, np.int32),
       "tgt": np.full((micro_batches, rows, t), 7, np.int32)}, batch_sh.mesh, batch_dim=1)
  return step_fn, state, rng, batch_sh, make


def test_programs_compiled_ahead_give_the_jitted_steps_numbers():
  step_fn, state, rng, batch_sh, make = _step_and_state()
  with precompile.Precompiler(step_fn, state, rng, batch_sh, 2, 16) as programs:
    programs.submit([(24, 3), (16, 3), (24, 3)])  # The repeat is queued once.
    assert programs.get((40, 3)) == (None, 0.0)  # Never submitted: the loop jits it.
    for shape in ((16, 3), (24, 3)):
      compiled, waited_s = programs.get(shape)
      assert compiled is not None and waited_s >= 0
      batch = make(*shape)
      # The step donates its state: each call gets its own copy.
      copy = lambda: jax.tree.map(lambda x: x.copy(), state)
      want_state, want = step_fn(copy(), batch, rng)
      got_state, got = compiled(copy(), batch, rng)
      for k in ("loss", "grad_norm"):
        assert float(got[k]) == float(want[k]), (shape, k)
      np.testing.assert_array_equal(jax.tree.leaves(got_state.params)[0],
                                    jax.tree.leaves(want_state.params)[0])


def test_a_failed_compilation_raises_in_the_caller_and_close_drops_the_queue():
  step_fn, state, rng, batch_sh, _ = _step_and_state()
  programs = precompile.Precompiler(step_fn, state, rng, batch_sh, 2, 16)
  programs.submit([(16, 3)])
  assert programs.get((16, 3))[0] is not None

  class Broken:
    def lower(self, *args):
      raise ValueError("no such program")

  broken = precompile.Precompiler(Broken(), state, rng, batch_sh, 2, 16)
  broken.submit([(16, 3)])
  with pytest.raises(ValueError, match="no such program"):
    broken.get((16, 3))
  broken.close()

  class Slow:
    calls = 0

    def lower(self, *args):
      Slow.calls += 1
      time.sleep(0.3)
      return self

    def compile(self):
      return "program"

  slow = precompile.Precompiler(Slow(), state, rng, batch_sh, 2, 16)
  slow.submit([(8, 3), (16, 3), (24, 3)])
  time.sleep(0.1)  # The thread is inside the first.
  slow.close()
  time.sleep(0.6)
  assert Slow.calls == 1  # The queued two were dropped ...
  assert slow.get((16, 3)) == ("program", 0.0)  # ... and a later need compiles in the caller.
  assert Slow.calls == 2
  programs.close()


def test_training_with_precompiled_programs_is_training_without(tmp_path, monkeypatch):
  # Sources of several lengths: the epochs meet several bucket shapes, compiled ahead in
  # the background thread; losses, parameters and log records are those of the jitted
  # step.
  model, params = _model()
  data = _planted(64, vary=True)
  served = []
  real_get = precompile.Precompiler.get

  def get(self, shape):
    out = real_get(self, shape)
    served.append((shape, out[0] is not None))
    return out

  monkeypatch.setattr(precompile.Precompiler, "get", get)
  results = {}
  for on in (False, True):
    c = _config(max_steps=6, grad_accum_steps=2, checkpoint_every_steps=100)
    results[on] = _train(c, tmp_path / str(on), model=model, init_params=params,
                         make_epoch=lambda e: data, precompile=on)
  # Every step of the second run ran a program compiled ahead, of two shapes or more.
  assert len(served) == 6 and all(ok for _, ok in served)
  assert len({shape for shape, _ in served}) >= 2
  assert _train_losses(tmp_path / "False") == _train_losses(tmp_path / "True")
  assert len(_train_losses(tmp_path / "True")) == 6
  leaves = zip(jax.tree.leaves(results[False].params), jax.tree.leaves(results[True].params))
  assert all(np.array_equal(a, b) for a, b in leaves)
