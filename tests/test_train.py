"""The trainer: sharding equivalence, resume, learning a planted mapping, determinism."""

import json
import pathlib
import re
import threading
import types

import jax
import numpy as np
import pytest

from gensar_jax import padding
from gensar_jax import seeds
from gensar_jax import sharding
from gensar_jax.model import t5 as t5_lib
from gensar_jax.trainer import batches as batches_lib
from gensar_jax.trainer import compile_clock
from gensar_jax.trainer import loop
from gensar_jax.trainer import step as step_lib
from tests.conftest import load_config

_BUCKETS = padding.CPU_TRAIN_BUCKETS

REPO = pathlib.Path(__file__).resolve().parents[1]
VOCAB = 48


def _config(**train):
  c = load_config("amazon", "preset=cpu")
  c.train.batch_size = 16
  c.train.grad_accum_steps = 1
  c.train.epochs = 2
  c.train.steps = 0  # The schedule follows epochs (the cpu preset fixes its steps).
  c.train.learning_rate = 3e-3
  c.train.warmup_frac = 0.1
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 3
  c.train.eval_every_epochs = 1
  c.train.max_to_keep = 5
  c.train.max_steps = 0
  c.train.update(train)
  return c


def _train(c, train_dir, mesh=None, **kw):
  """`loop.train` on config `c`'s train section, as the train stage calls it."""
  return loop.train(c.train, train_dir, seed=c.seed, mesh=mesh or sharding.make_mesh("data"),
                    shard_params=bool(c.mesh.shard_params), **kw)


def _model(dropout=0.1):
  cfg = t5_lib.T5Config(vocab_size=VOCAB, d_model=32, d_ff=64, num_encoder_layers=1,
                        num_decoder_layers=1, num_heads=2, d_kv=16, dropout_rate=dropout)
  return t5_lib.T5(cfg), t5_lib.init_params(cfg, jax.random.key(0))


def _planted(n=64, seed=0, vary=False):
  """Source [a, b, (filler), eos] -> target [10 + (a + b) % 20, 30 + a % 8, eos]."""
  rng = np.random.default_rng(seed)
  src, tgt = [], []
  for _ in range(n):
    a, b = (int(x) for x in rng.integers(2, 10, size=2))
    filler = [2] * (int(rng.integers(0, 20)) if vary else 0)
    src.append(np.array([a, b] + filler + [1], np.int32))
    tgt.append(np.array([10 + (a + b) % 20, 30 + a % 8, 1], np.int32))
  return src, tgt


def _history(d):
  return [json.loads(l) for l in (pathlib.Path(d) / "metrics.jsonl").read_text().splitlines()]


def _train_losses(d):
  return {r["step"]: r["loss"] for r in _history(d) if r["kind"] == "train"}


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.device
def test_one_device_and_eight_devices_agree(tmp_path):
  # 8 simulated CPU devices here; on an accelerator host (`-m device`), all its devices.
  assert jax.device_count() == 8 or jax.default_backend() != "cpu"
  model, params = _model()
  data = _planted(64)
  results = {}
  for name, devices, shard in (("one", jax.devices()[:1], False), ("eight", jax.devices(), False),
                               ("fsdp", jax.devices(), True)):
    # Two micro-batches of 8 with dropout: on eight devices each sums its own rows'
    # gradients inside shard_map (`step.per_device_sums`), FSDP leaves it to the partitioner.
    c = _config(max_steps=3, grad_accum_steps=2)
    c.mesh.shard_params = shard
    mesh = sharding.make_mesh("data", devices)
    results[name] = _train(c, tmp_path / name, model=model, init_params=params,
                               make_epoch=lambda e: data, mesh=mesh)
    assert results[name].steps == 3
  l1, l8, lf = (_train_losses(tmp_path / n) for n in ("one", "eight", "fsdp"))
  assert sorted(l1) == [1, 2, 3]
  for s in l1:
    assert l8[s] == pytest.approx(l1[s], rel=1e-5, abs=1e-6)
    assert lf[s] == pytest.approx(l1[s], rel=1e-5, abs=1e-6)
  # Training moved the parameters, identically on both meshes.
  assert _max_abs_diff(results["one"].params, params) > 1e-3
  assert _max_abs_diff(results["one"].params, results["eight"].params) < 1e-5
  assert _max_abs_diff(results["one"].params, results["fsdp"].params) < 1e-5


def jitted_step(per_device: bool = True):
  """(jitted step, its state placed on the mesh of every device, a key, the batch
  sharding) for `_model()`: the train stage's step, its gradient summed per device
  (`step.per_device_sums`) or by the partitioner."""
  model, params = _model()
  tx, schedule = step_lib.make_optimizer(_config().train, total_steps=10)
  mesh = sharding.make_mesh("data")
  rep = sharding.replicated(mesh)
  state = step_lib.init_state(params, tx)
  state_sh = jax.tree.map(lambda _: rep, state)
  batch_sh = sharding.batch_sharding(mesh, 1, 3)
  step_fn = step_lib.jit_train_step(
      step_lib.make_train_step(model, tx, schedule, mesh=mesh if per_device else None),
      state_sh, {"src": batch_sh, "tgt": batch_sh}, rep)
  rng = jax.device_put(jax.random.key(3), rep)
  return step_fn, jax.device_put(state, state_sh), rng, batch_sh


def _while_bodies_with_all_reduce(hlo_text: str) -> list[str]:
  """Names of the while-loop bodies of compiled HLO text that run an all-reduce."""
  computations = dict(re.findall(r"^%?([\w.\-]+) [^\n]*\{\n(.*?)^\}", hlo_text, re.M | re.S))
  bodies = set(re.findall(r"body=%?([\w.\-]+)", hlo_text))
  assert bodies and bodies <= computations.keys(), sorted(bodies)
  return sorted(b for b in bodies if re.search(r"= [^\n]*all-reduce(-start)?\(", computations[b]))


def test_micro_batch_gradients_are_all_reduced_once_per_step():
  # Each device sums its micro-batches' gradients before one all-reduce; left to the
  # partitioner (FSDP's path, `mesh=None`) the all-reduce runs inside the micro-batch
  # loop, once per micro-batch (~10% of the cpu preset's step, issue 23). Needs several
  # devices: the 8 simulated CPU ones (not `-m device`: an accelerator host may have one).
  n = 2 * jax.device_count()
  batch = {"src": np.ones((4, n, 12), np.int32), "tgt": np.ones((4, n, 3), np.int32)}
  loops = {}
  for name, per_device in (("per device", True), ("partitioner", False)):
    fn, state, rng, _ = jitted_step(per_device)
    hlo = fn.lower(state, batch, rng).compile().as_text()
    assert "all-reduce" in hlo, name
    loops[name] = _while_bodies_with_all_reduce(hlo)
  assert loops["per device"] == []
  assert loops["partitioner"]  # The control: the check sees a reduction inside the loop.


def test_micro_batches_give_the_steps_of_one_batch(tmp_path):
  # The cpu preset splits each batch into micro-batches (train.grad_accum_steps): the step
  # sums their gradients and divides by the whole batch's target tokens, so without
  # dropout the losses and parameters are those of one batch up to float rounding.
  model, params = _model(dropout=0.0)
  src, tgt = _planted(64, vary=True)
  # Targets of 3 to 5 tokens: micro-batches hold different numbers of target tokens, so a
  # mean of per-micro-batch means would not give these losses.
  tgt = [np.concatenate([t[:-1], np.full(int(s[0]) % 3, 40, np.int32), t[-1:]])
         for s, t in zip(src, tgt)]
  data = (src, tgt)
  results = {}
  for accum in (1, 4):
    c = _config(max_steps=4, batch_size=32, grad_accum_steps=accum)  # micro-batches of 8
    results[accum] = _train(c, tmp_path / str(accum), model=model, init_params=params,
                            make_epoch=lambda e: data)
  one, four = (_history(tmp_path / n) for n in ("1", "4"))
  one, four = ({r["step"]: r for r in h if r["kind"] == "train"} for h in (one, four))
  assert sorted(one) == sorted(four) == [1, 2, 3, 4]
  for s in one:
    for key in ("loss", "grad_norm"):
      assert four[s][key] == pytest.approx(one[s][key], rel=1e-5, abs=1e-6), (s, key)
  assert _max_abs_diff(results[1].params, params) > 1e-3  # Training moved them ...
  assert _max_abs_diff(results[1].params, results[4].params) < 1e-5  # ... the same way.


def test_the_next_epoch_is_built_in_the_background_with_the_same_batches(tmp_path):
  # Epoch-dependent data (as the train stage's re-sampled epochs): the full run takes
  # epochs 1 and 2 from the background builder; the run resumed at step 5 (inside epoch
  # 1) builds epoch 1 in line. Same losses either way.
  model, params = _model()
  built = []

  def make_epoch(e):
    built.append((e, threading.current_thread().name))
    return _planted(64, seed=e, vary=True)

  full = _train(_config(epochs=3), tmp_path / "full", model=model, init_params=params,
                make_epoch=make_epoch)
  assert full.steps == 12
  assert [e for e, _ in built] == [0, 1, 2]
  assert built[0][1] == threading.main_thread().name
  assert all(name.startswith("epoch") for _, name in built[1:])
  built.clear()
  _train(_config(epochs=3, max_steps=5), tmp_path / "cut", model=model, init_params=params,
         make_epoch=make_epoch)
  assert [e for e, _ in built] == [0, 1, 2]  # Epoch 2 was built ahead, then not used.
  built.clear()
  resumed = _train(_config(epochs=3), tmp_path / "cut", model=model, init_params=params,
                   make_epoch=make_epoch)
  assert resumed.resumed_from == 5 and resumed.steps == 12
  assert built[:2] == [(0, threading.main_thread().name), (1, threading.main_thread().name)]
  lf, lr = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "cut")
  assert sorted(lf) == list(range(1, 13))
  for s in range(6, 13):
    assert lr[s] == pytest.approx(lf[s], rel=1e-6, abs=1e-7)
  assert _max_abs_diff(full.params, resumed.params) < 1e-6


def test_fsdp_rule_shards_the_largest_divisible_dimension():
  assert sharding.param_spec((48, 32), 8, "data", True) == jax.sharding.PartitionSpec("data", None)
  assert sharding.param_spec((12, 64), 8, "data", True) == jax.sharding.PartitionSpec(None, "data")
  assert sharding.param_spec((7, 3), 8, "data", True) == jax.sharding.PartitionSpec()
  assert sharding.param_spec((48, 32), 8, "data", False) == jax.sharding.PartitionSpec()
  _, params = _model()
  mesh = sharding.make_mesh("data")
  shardings = sharding.param_shardings(params, mesh, True)
  emb = shardings["params"]["shared"]["embedding"]
  assert emb.spec == jax.sharding.PartitionSpec("data", None)  # [48, 32]: 48 % 8 == 0


def test_resume_continues_with_the_same_batches_and_losses(tmp_path):
  model, params = _model()
  data = _planted(64)  # 4 steps per epoch, 8 steps in all
  full = _train(_config(), tmp_path / "full", model=model, init_params=params,
                    make_epoch=lambda e: data)
  cut = _train(_config(max_steps=3), tmp_path / "cut", model=model, init_params=params,
                   make_epoch=lambda e: data)
  assert cut.steps == 3
  resumed = _train(_config(), tmp_path / "cut", model=model, init_params=params,
                       make_epoch=lambda e: data)
  assert resumed.resumed_from == 3 and resumed.steps == full.steps == 8
  lf, lr = _train_losses(tmp_path / "full"), _train_losses(tmp_path / "cut")
  for s in range(4, 9):
    assert lr[s] == pytest.approx(lf[s], rel=1e-6, abs=1e-7)
  assert _max_abs_diff(full.params, resumed.params) < 1e-6


def test_iterator_state_gives_the_same_next_batch():
  src, tgt = _planted(200, vary=True)
  eb = batches_lib.EpochBatches(src, tgt, 16, 2, seed=3, epoch=1, buckets=_BUCKETS)
  it = eb.iterator()
  for _ in range(4):
    next(it)
  state = it.get_state()
  expected = next(it)
  again = batches_lib.EpochBatches(src, tgt, 16, 2, seed=3, epoch=1,
                                   buckets=_BUCKETS).iterator(state)
  got = next(again)
  np.testing.assert_array_equal(got["src"], expected["src"])
  np.testing.assert_array_equal(got["tgt"], expected["tgt"])
  assert got["src"].shape[:2] == (2, 8)  # [accum, micro-batch, S]


def test_batch_plan_covers_each_example_once_with_little_padding():
  src, tgt = _planted(1000, vary=True)
  lens = np.array([len(s) for s in src])
  plan = batches_lib.plan_batches(lens, np.array([len(t) for t in tgt]), 32, seed=0, epoch=0,
                                 buckets=_BUCKETS)
  assert plan.shape == (31, 32)
  assert len(np.unique(plan)) == plan.size
  padded = sum(batches_lib.bucket_length(int(lens[b].max()), _BUCKETS.source) * 32
               for b in plan)
  random_plan = np.random.default_rng(0).permutation(1000)[:992].reshape(31, 32)
  padded_random = sum(
      batches_lib.bucket_length(int(lens[b].max()), _BUCKETS.source) * 32
      for b in random_plan)
  assert padded < 0.8 * padded_random
  other = batches_lib.plan_batches(lens, np.array([len(t) for t in tgt]), 32, seed=0, epoch=1,
                                  buckets=_BUCKETS)
  assert not np.array_equal(plan, other)


def test_training_buckets_are_finer_on_a_cpu_backend():
  """CPU training pads to every 8 tokens where Office's prompts crowd and targets to 6;
  accelerators keep the coarser buckets (fewer shapes to compile); both hold any length."""
  cpu, gpu = padding.train_buckets("cpu"), padding.train_buckets("gpu")
  assert gpu == padding.train_buckets("tpu") == padding.ACCELERATOR_TRAIN_BUCKETS != cpu
  src, tgt = np.array([120, 150, 151]), np.array([5, 6, 6])
  assert batches_lib.padded_lengths(src, tgt, cpu) == (152, 6)
  assert batches_lib.padded_lengths(src, tgt, gpu) == (160, 8)
  assert batches_lib.padded_lengths(np.array([2000]), np.array([7]), cpu) == (2000, 8)
  for b in (cpu, gpu):
    assert list(b.source) == sorted(set(b.source)) and list(b.target) == sorted(set(b.target))
    assert set(padding.SOURCE_BUCKETS) <= set(b.source)


@pytest.mark.device
def test_tiny_model_learns_a_planted_identifier_mapping(tmp_path):
  model, params = _model(dropout=0.0)
  data = _planted(256, seed=1)
  c = _config(batch_size=32, epochs=100, learning_rate=1e-2, log_every_steps=20,
              checkpoint_every_steps=10_000)
  result = _train(c, tmp_path, model=model, init_params=params, make_epoch=lambda e: data)
  assert result.loss_start > 2.0
  assert result.loss_end < 0.05


@pytest.mark.device
def test_same_seed_gives_identical_losses(tmp_path):
  model, params = _model()
  data = _planted(64, vary=True)
  for name in ("a", "b"):
    _train(_config(max_steps=4), tmp_path / name, model=model, init_params=params,
               make_epoch=lambda e: data)
  assert _train_losses(tmp_path / "a") == _train_losses(tmp_path / "b")


def test_validation_keeps_the_best_checkpoint(tmp_path):
  model, params = _model()
  data = _planted(64)
  scores = iter([0.3, 0.1])  # epoch 1 is the best
  result = _train(_config(), tmp_path, model=model, init_params=params,
                      make_epoch=lambda e: data,
                      validate=lambda p, step: {"score": next(scores), "val_loss": 1.0})
  assert result.best_score == 0.3 and result.best_step == 4
  assert sorted(int(p.name) for p in (tmp_path / "best").iterdir() if p.name.isdigit()) == [4]
  val = [r for r in _history(tmp_path) if r["kind"] == "validation"]
  assert [r["step"] for r in val] == [4, 8]


def test_a_validation_inside_a_log_window_is_left_out_of_its_rate(monkeypatch):
  # Steps before a validation stay in the open window; the validation's minutes (and its
  # compiles) do not. (A reset of the window's clock counted the steps before it over the
  # time of the later steps only.)
  now = [0.0]
  monkeypatch.setattr(loop.time, "time", lambda: now[0])
  clock = compile_clock.CompileClock()
  compiled = lambda seconds: clock._listen(compile_clock.BACKEND_EVENT, seconds)  # pylint: disable=protected-access

  class Log:
    def write(self, *args, **kwargs):
      pass

  def validate(params, step):
    now[0] += 100.0  # The validation takes 100 s, 30 of them compiling.
    compiled(30.0)
    return {"score": 0.5}

  run = loop._Run(  # pylint: disable=protected-access
      tc=None, name="train", train_dir=None, seed=0, n_dev=1, ckpt=None, log=Log(), bar=None,
      prog=loop.Progress(), state=types.SimpleNamespace(params=None), step=5,
      window=loop.Window(clock=clock), t_start=0.0, validate=validate, param_counts=None,
      peak=None, clock=clock)
  metrics = {"loss": 1.0, "learning_rate": 1e-3, "grad_norm": 1.0}
  run.window.add(metrics, 64, 100, 10)  # Steps in the first 10 s (2 s compiling) ...
  compiled(2.0)
  now[0] = 10.0
  assert run.validation(1.0)
  now[0] = 120.0  # ... a validation to 110 s, then 10 s more of steps.
  run.window.add(metrics, 64, 100, 10)
  monkeypatch.setattr(loop.jax, "device_get", lambda x: x)
  scalars, dt = run.window.scalars(epoch=0, n_dev=1)
  assert dt == 20.0 and scalars["examples_per_s"] == 128 / 20.0
  assert scalars["compile_s"] == 2.0


def test_compile_clock_counts_the_compiles_of_new_shapes_while_it_is_open():
  double = jax.jit(lambda x: x * 2.0 + 1.0)
  with compile_clock.CompileClock() as clock:
    double(np.ones(3, np.float32)).block_until_ready()
    first, programs = clock.seconds, clock.programs
    double(np.ones(3, np.float32)).block_until_ready()  # The same shape: no compile.
    assert (clock.seconds, clock.programs) == (first, programs)
    double(np.ones(5, np.float32)).block_until_ready()  # A new shape compiles again.
  assert first > 0 and programs >= 1
  assert clock.seconds > first and clock.programs == programs + 1
  closed = clock.seconds
  double(np.ones(7, np.float32)).block_until_ready()
  assert clock.seconds == closed  # Closed: no longer listening.


def test_log_windows_report_the_seconds_spent_compiling_a_new_batch_shape(tmp_path):
  # Epoch 0 has short sources, epoch 1 long ones (another source bucket): the step is
  # traced and compiled again at step 3, the first of epoch 1 (two steps an epoch).
  model, params = _model(dropout=0.0)
  short, tgt = _planted(32)
  long = [np.concatenate([s[:-1], np.full(40, 2, np.int32), s[-1:]]) for s in short]
  c = _config(epochs=2, checkpoint_every_steps=100)
  result = _train(c, tmp_path, model=model, init_params=params,
                  make_epoch=lambda epoch: (short if epoch == 0 else long, tgt))
  compile_s = {r["step"]: r["compile_s"] for r in _history(tmp_path) if r["kind"] == "train"}
  assert sorted(compile_s) == [1, 2, 3, 4]
  assert compile_s[1] > 0 and compile_s[3] > 0  # The first step of each shape.
  assert compile_s[3] > 10 * max(compile_s[2], compile_s[4])
  # The session's figure sums the windows after the first (as its examples/s does).
  assert result.compile_s == pytest.approx(compile_s[2] + compile_s[3] + compile_s[4], abs=0.06)


def test_host_runs_at_most_max_in_flight_steps_ahead(tmp_path, monkeypatch):
  """A preemption waits for the steps already queued: the loop keeps few of them.

  Steps of a wider model on long sources take far longer than dispatching them, so
  without the bound the host would queue many (checked: the same run with the bound
  lifted does).
  """
  cfg = t5_lib.T5Config(vocab_size=VOCAB, d_model=256, d_ff=1024, num_encoder_layers=2,
                        num_decoder_layers=2, num_heads=4, d_kv=64, dropout_rate=0.0)
  model, params = t5_lib.T5(cfg), t5_lib.init_params(cfg, jax.random.key(0))
  src, tgt = _planted(64)
  data = ([np.concatenate([s[:-1], np.full(120, 2, np.int32), s[-1:]]) for s in src], tgt)
  real = loop.step_lib.jit_train_step

  def lead(name, bound):
    queued, issued = [], []

    def spy(*args, **kw):
      step_fn = real(*args, **kw)

      def wrapped(state, batch, rng):
        queued.append(sum(not m["loss"].is_ready() for m in issued))
        state, metrics = step_fn(state, batch, rng)
        issued.append(metrics)
        return state, metrics
      return wrapped

    monkeypatch.setattr(loop.step_lib, "jit_train_step", spy)
    monkeypatch.setattr(loop, "MAX_IN_FLIGHT", bound)
    _train(_config(steps=10, log_every_steps=1000, checkpoint_every_steps=1000), tmp_path / name,
           mesh=sharding.make_mesh("data", jax.devices()[:1]), model=model, init_params=params,
           make_epoch=lambda e: data)
    return max(queued)

  assert lead("bounded", 2) <= 2
  assert lead("unbounded", 10**9) > 2


def test_shift_right():
  np.testing.assert_array_equal(step_lib.shift_right(jax.numpy.array([[5, 6, 1, 0]]), 0),
                                [[0, 5, 6, 1]])


def test_label_smoothing_is_the_smoothed_cross_entropy_and_off_by_default():
  model, params = _model(dropout=0.0)
  src = jax.numpy.array([[3, 4, 2, 1], [5, 6, 1, 0]], jax.numpy.int32)
  tgt = jax.numpy.array([[12, 31, 1], [14, 1, 0]], jax.numpy.int32)
  logits = model.apply(params, src, step_lib.shift_right(tgt, model.config.decoder_start_id),
                       deterministic=True)
  logp_BxTxV = np.asarray(jax.nn.log_softmax(logits.astype(np.float32)))
  picked_BxT = np.take_along_axis(logp_BxTxV, np.asarray(tgt)[..., None], -1)[..., 0]
  mask_BxT = np.asarray(tgt) != 0
  eps = 0.2
  # Smoothed target: (1 - eps) on the token plus eps / V on every token.
  want = np.sum(((1 - eps) * -picked_BxT - eps * logp_BxTxV.mean(-1)) * mask_BxT)
  plain, ntok = step_lib.nll_sum(model, params, src, tgt)
  smoothed, ntok_s = step_lib.nll_sum(model, params, src, tgt, label_smoothing=eps)
  assert float(ntok) == float(ntok_s) == 5.0
  np.testing.assert_allclose(float(plain), -np.sum(picked_BxT * mask_BxT), rtol=1e-5)
  np.testing.assert_allclose(float(smoothed), want, rtol=1e-5)
  assert abs(float(smoothed) - float(plain)) > 1e-3
  assert load_config("amazon", "preset=cpu").train.label_smoothing == 0.0


def test_train_seed_defaults_to_the_master_seed_and_can_vary_alone():
  from gensar_jax.train import stage as train_stage  # pylint: disable=g-import-not-at-top

  c = load_config("amazon", "preset=cpu")
  assert c.train.seed == 0 and seeds.train(c) == c.seed == 42
  c.train.seed = 7
  assert seeds.train(c) == 7 and c.seed == 42  # Data and identifiers keep 42.
  p7 = train_stage.make_model(c, VOCAB)[1]
  c.train.seed = 0
  p42 = train_stage.make_model(c, VOCAB)[1]
  assert _max_abs_diff(p7, p42) > 0  # Another initialisation.
