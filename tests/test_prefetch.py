"""Epochs built ahead in worker processes are the epochs built in line."""

import dataclasses

import numpy as np
import pytest

from gensar_jax.trainer import prefetch
from tests.test_train import _config
from tests.test_train import _model
from tests.test_train import _planted
from tests.test_train import _train
from tests.test_train import _train_losses


@dataclasses.dataclass(frozen=True)
class RandomEpochs:
  """A picklable make_epoch: epoch-seeded ragged token arrays (some empty-ish)."""
  n: int = 50

  def __call__(self, epoch):
    rng = np.random.default_rng([7, epoch])
    src = [rng.integers(3, 100, int(k)).astype(np.int32) for k in rng.integers(1, 30, self.n)]
    tgt = [rng.integers(3, 100, int(k)).astype(np.int32) for k in rng.integers(1, 5, self.n)]
    return src, tgt


@dataclasses.dataclass(frozen=True)
class PlatformEpochs:
  """Reports, as token ids, the JAX platform a worker is configured for."""

  def __call__(self, epoch):
    import jax  # pylint: disable=g-import-not-at-top
    code = np.frombuffer(str(jax.config.jax_platforms).encode(), np.uint8).astype(np.int32)
    return [code], [np.array([epoch], np.int32)]


@dataclasses.dataclass(frozen=True)
class FailingEpochs:
  def __call__(self, epoch):
    if epoch >= 2:
      raise RuntimeError(f"no examples for epoch {epoch}")
    return RandomEpochs()(epoch)


@dataclasses.dataclass(frozen=True)
class PlantedEpochs:
  """The trainer tests' planted task, a different sample each epoch (picklable)."""

  def __call__(self, epoch):
    return _planted(64, seed=epoch, vary=True)


def _wrap(epoch, examples):
  return epoch, examples


def _same(a, b):
  return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_pack_unpack_round_trip():
  arrays = [np.array([3, 4], np.int32), np.array([5], np.int32), np.array([1, 2, 3], np.int32)]
  flat, lengths = prefetch.pack(arrays)
  assert flat.tolist() == [3, 4, 5, 1, 2, 3] and lengths.tolist() == [2, 1, 3]
  assert _same(prefetch.unpack(flat, lengths), arrays)
  assert prefetch.unpack(*prefetch.pack([])) == []


def test_worker_processes_build_the_epochs_built_in_line_in_any_order():
  make = RandomEpochs()
  inline = {e: make(e) for e in range(6)}
  with prefetch.EpochPrefetch(make, _wrap, _wrap(0, inline[0]), 6, workers=2) as ahead:
    for e in (0, 1, 2, 4, 5, 3):  # A resume starts anywhere; order is not assumed.
      got_epoch, (src, tgt) = ahead.get(e)
      assert got_epoch == e
      assert _same(src, inline[e][0]) and _same(tgt, inline[e][1])
    assert not [e for e in ahead.ahead if e >= 6]  # Nothing built past the last epoch.


def test_workers_run_jax_on_the_cpu_and_errors_reach_the_trainer():
  with prefetch.EpochPrefetch(PlatformEpochs(), _wrap, None, 3, workers=1) as ahead:
    ahead.get(0)
    _, (src, tgt) = ahead.get(1)
    assert bytes(src[0].astype(np.uint8)).decode() == "cpu" and tgt[0].tolist() == [1]
  with prefetch.EpochPrefetch(FailingEpochs(), _wrap, None, 4, workers=1) as ahead:
    ahead.get(0)
    ahead.get(1)
    with pytest.raises(RuntimeError, match="no examples for epoch 2"):
      ahead.get(2)


def test_workers_refuse_a_make_epoch_that_cannot_be_pickled():
  with pytest.raises(ValueError, match="picklable make_epoch.*workers=0"):
    prefetch.EpochPrefetch(lambda e: ([], []), _wrap, None, 3, workers=1)
  with pytest.raises(ValueError, match="workers must be >= 0"):
    prefetch.EpochPrefetch(RandomEpochs(), _wrap, None, 3, workers=-1)


def test_training_with_epoch_workers_logs_the_losses_of_training_without(tmp_path):
  model, params = _model()
  losses = {}
  for workers in (0, 2):
    d = tmp_path / f"w{workers}"
    _train(_config(epochs=4), d, model=model, init_params=params, make_epoch=PlantedEpochs(),
           epoch_workers=workers)
    losses[workers] = _train_losses(d)
  assert len(losses[0]) == 16  # 4 epochs of 4 steps, every step logged.
  assert losses[0] == losses[2]
