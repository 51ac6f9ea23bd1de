"""The trainer: a function of (trainer section, directory, model, data), resumable (docs/design.md §5).

`train` runs `section.steps` optimizer steps (or `section.epochs` passes over the data,
or until `section.max_minutes` of wall-clock time are spent) with one jitted step per
global batch on a 1-D mesh over every device, saves Orbax checkpoints every
`checkpoint_every_steps` and at every validation, resumes from the newest one
(continuing at step N+1 with the same next batch), validates every `eval_every_epochs`
and keeps the best parameters, and logs to the console, TensorBoard and `metrics.jsonl`.
The section is `config.train` for GenSAR and `config.doc2query.train` for doc2query.

Preemption: SIGTERM (what schedulers and TPU maintenance send) or SIGINT makes the loop
stop dispatching, finish the step in flight (at most `MAX_IN_FLIGHT` steps are ever
queued ahead), write a checkpoint and raise `errors.Preempted` (`gensar_jax.main` exits
with `errors.PREEMPTED_EXIT_CODE`); the same command then resumes. After SIGKILL the run
resumes from the last complete checkpoint (Orbax writes each one to a temporary name and
renames it when complete); log records of steps after that checkpoint are dropped from
`metrics.jsonl`, since they are redone. Every checkpoint carries the open logging window,
so a resumed run logs the same losses as an uninterrupted one.

Failures stop the run at once, each with one line: a non-finite loss or gradient norm
(`errors.Diverged`, found at most `MAX_IN_FLIGHT` steps late and always before a
checkpoint is written or validation runs, so every checkpoint on disk holds finite
parameters), and a checkpoint save that fails (full disk, permissions), found within a
step of the failure.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import pathlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from absl import logging
import jax
import numpy as np

from gensar_jax import padding
from gensar_jax import progress as progress_lib
from gensar_jax import sharding
from gensar_jax.errors import Diverged
from gensar_jax.errors import PipelineError
from gensar_jax.errors import Preempted
from gensar_jax.trainer import batches as batches_lib
from gensar_jax.trainer import checkpoint as ckpt_lib
from gensar_jax.trainer import compile_clock
from gensar_jax.trainer import logging_utils
from gensar_jax.trainer import precompile as precompile_lib
from gensar_jax.trainer import prefetch as prefetch_lib
from gensar_jax.trainer.prefetch import EpochFn
from gensar_jax.trainer import step as step_lib

# validate(params, step) -> {"score": higher is better, **scalars to log}.
ValidateFn = Callable[[Any, int], dict[str, float]]

MAX_IN_FLIGHT = 2  # Steps dispatched ahead of the host (bounds the drain on preemption).


@contextlib.contextmanager
def stop_signals():
  """Yields a dict whose "signal" becomes "SIGTERM"/"SIGINT" when one arrives.

  Handlers are restored afterwards. A second SIGINT raises KeyboardInterrupt (a user who
  presses Ctrl-C twice does not want to wait for the save). Outside the main thread
  (where handlers cannot be installed) the flag never turns.
  """
  flag = {"signal": None}
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def handler(signum, frame):  # pylint: disable=unused-argument
    name = signal.Signals(signum).name
    if flag["signal"] and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning("%s: saving a checkpoint after the step in flight, then stopping", name)
    flag["signal"] = name

  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield flag
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


@dataclasses.dataclass
class TrainResult:
  """What a training run did (also the train stage's summary)."""

  steps: int
  total_steps: int
  steps_per_epoch: int
  loss_start: float | None
  loss_end: float | None
  best_score: float | None
  best_step: int | None
  best_validation: dict | None
  examples_per_s: float | None
  resumed_from: int | None
  minutes: float | None = None
  budget_hit: bool = False
  step_fraction: float | None = None  # Of this session's wall time, the part in steps.
  compile_s: float = 0.0  # Of the steps' wall time (this session), seconds JAX compiled.
  params: Any = dataclasses.field(repr=False, default=None)

  def summary(self) -> dict:
    out = dataclasses.asdict(self)
    out.pop("params")
    return out


@dataclasses.dataclass
class Progress:
  """The host-side state of a run, saved in every checkpoint's meta record."""

  epoch: int = 0
  iterator: dict | None = None  # The batch iterator's position within `epoch`.
  best_score: float | None = None
  best_step: int | None = None
  best_validation: dict | None = None
  loss_start: float | None = None
  loss_end: float | None = None
  elapsed_s: float = 0.0  # Wall-clock seconds of this training across resumes.
  budget_hit: bool = False
  last_validated: int | None = None
  window_losses: list = dataclasses.field(default_factory=list)  # The open log window's.

  @classmethod
  def from_meta(cls, meta: dict) -> "Progress":
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in meta.items() if k in known})


class Window:
  """The steps since the last log line: their metrics (on device) and sizes, and the
  seconds the loop spent compiling (or waiting for a compile) in them (read from
  `clock`, when given)."""

  def __init__(self, restored_losses=(), clock: compile_clock.CompileClock | None = None):
    self.restored = [np.float32(x) for x in restored_losses]  # From a checkpoint.
    self.metrics, self.examples, self.src_tokens, self.tgt_tokens = [], 0, 0, 0
    self.t0 = time.time()
    self.clock = clock
    self.compile0 = clock.seconds if clock else 0.0

  def exclude(self, seconds: float, compile_seconds: float = 0.0) -> None:
    """Leaves `seconds` (a validation inside the window, of which `compile_seconds`
    compiling) out of the window's wall time and compile time."""
    self.t0 += seconds
    self.compile0 += compile_seconds

  def compile_s(self) -> float:
    """Seconds JAX compiled since the window opened (validations left out)."""
    return self.clock.seconds - self.compile0 if self.clock else 0.0

  def add(self, metrics, examples: int, src_tokens: int, tgt_tokens: int) -> None:
    self.metrics.append(metrics)
    self.examples += examples
    self.src_tokens += src_tokens
    self.tgt_tokens += tgt_tokens

  def losses(self) -> list[float]:
    """Every step's loss in the window, as saved in a checkpoint."""
    return [float(x) for x in self.restored] + [float(g["loss"]) for g in
                                                jax.device_get(self.metrics)]

  def scalars(self, epoch: int, n_dev: int) -> tuple[dict, float]:
    """The log record of the window and its wall time."""
    dt = max(time.time() - self.t0, 1e-9)
    got = jax.device_get(self.metrics)
    losses = self.restored + [g["loss"] for g in got]
    return {
        "loss": float(np.mean(losses)),
        "learning_rate": float(got[-1]["learning_rate"]),
        "grad_norm": float(got[-1]["grad_norm"]),
        "examples_per_s": self.examples / dt,
        "compile_s": self.compile_s(),
        "tokens_per_s_per_device": (self.src_tokens + self.tgt_tokens) / dt / n_dev,
        "epoch": epoch,
    }, dt


def train(
    section, train_dir: pathlib.Path, *, model, init_params: Any, make_epoch: EpochFn,
    seed: int, mesh: jax.sharding.Mesh, shard_params: bool = False,
    validate: ValidateFn | None = None, name: str = "train", epoch_workers: int = 0,
    precompile: bool = False,
) -> TrainResult:
  """Trains `model` from `init_params` (or the newest checkpoint in `train_dir`).

  Args:
    section: the trainer's config section (`config.train` or `config.doc2query.train`:
      learning_rate, warmup_frac, weight_decay, grad_clip, label_smoothing, batch_size,
      grad_accum_steps, epochs, steps, max_steps, max_minutes, log_every_steps,
      checkpoint_every_steps, max_to_keep, and eval_every_epochs when `validate` is given).
    train_dir: where checkpoints, `metrics.jsonl` and `tb/` go.
    model: a `T5` module.
    init_params: its initial variables `{"params": ...}` (ignored when resuming).
    make_epoch: the tokenised examples of an epoch (deterministic in the epoch).
    seed: batch order and dropout seed.
    mesh: the device mesh; batches are sharded over its first axis.
    shard_params: FSDP: shard large parameters over the data axis.
    validate: optional validation; its "score" selects the best checkpoint.
    name: the section's dotted name in the config ("train", "doc2query.train"), for
      error messages.
    epoch_workers: processes building epochs ahead (`prefetch.EpochPrefetch`; 0: one
      background thread); `make_epoch` must then be picklable.
    precompile: compile the step for each epoch's batch shapes in a background thread
      before the loop meets them (`precompile.Precompiler`; the same programs).

  Returns:
    A TrainResult, with the final parameters.

  Raises:
    Preempted: after SIGTERM/SIGINT, once a checkpoint is saved.
    Diverged: a step's loss or gradient norm is not finite.
    PipelineError: a checkpoint could not be saved.
  """
  tc = section
  train_dir = pathlib.Path(train_dir)
  n_dev = mesh.devices.size
  pidx, pcount = jax.process_index(), jax.process_count()
  micro = tc.batch_size // tc.grad_accum_steps
  if tc.batch_size % tc.grad_accum_steps or micro % n_dev:
    raise PipelineError(
        f"{name}.batch_size ({tc.batch_size}) / grad_accum_steps ({tc.grad_accum_steps}) "
        f"must be a whole multiple of the {n_dev} devices"
    )
  seed = int(seed)
  buckets = padding.train_buckets(jax.default_backend())

  def epoch_batches(epoch: int, examples) -> batches_lib.EpochBatches:
    src, tgt = examples
    return batches_lib.EpochBatches(
        src, tgt, tc.batch_size, tc.grad_accum_steps, seed, epoch, buckets, pidx, pcount)

  # The schedule's length comes from epoch 0 (every epoch has the same task counts).
  first = epoch_batches(0, make_epoch(0))
  steps_per_epoch = len(first)
  if steps_per_epoch == 0:
    raise PipelineError(f"an epoch has fewer examples than {name}.batch_size ({tc.batch_size})")
  # A fractional number of epochs ends (and its schedule decays) partway through the last;
  # `steps` fixes the optimizer steps instead (the same compute on any dataset).
  total_steps = int(tc.steps or 0) or max(1, int(round(steps_per_epoch * float(tc.epochs))))
  stop_at = min(total_steps, int(tc.max_steps or 0) or total_steps)
  num_epochs = math.ceil(total_steps / steps_per_epoch)
  budget_s = float(tc.max_minutes or 0) * 60.0
  tx, schedule = step_lib.make_optimizer(tc, total_steps)

  ckpt = ckpt_lib.Checkpointer(train_dir, tc.max_to_keep)
  state, resume_step, prog, state_sh = _initial_state(
      ckpt, init_params, tx, mesh, shard_params)
  replicated = sharding.replicated(mesh)
  batch_sh = {k: sharding.batch_sharding(mesh, 1, 3) for k in ("src", "tgt")}
  step_fn = step_lib.jit_train_step(
      step_lib.make_train_step(model, tx, schedule, dropout=model.config.dropout_rate > 0,
                               label_smoothing=float(tc.label_smoothing),
                               mesh=None if shard_params else mesh),
      state_sh, batch_sh, replicated)
  rng = jax.device_put(jax.random.key(seed + 1), replicated)

  log = logging_utils.MetricLogger(train_dir, enabled=pidx == 0)
  log.drop_after(int(resume_step or 0))  # Steps after the restored checkpoint are redone.
  if prog.iterator is not None and prog.iterator.get("next_index", 0) >= steps_per_epoch:
    prog.epoch, prog.iterator = prog.epoch + 1, None
  clock = compile_clock.CompileClock(thread=threading.get_ident())
  run = _Run(
      tc=tc, name=name, train_dir=train_dir, seed=seed, n_dev=n_dev, ckpt=ckpt, log=log,
      bar=progress_lib.bar(total=total_steps, initial=int(resume_step or 0), show=pidx == 0,
                           desc="train", unit="step", dynamic_ncols=True),
      prog=prog, state=state, step=int(resume_step or 0), window=Window(prog.window_losses, clock),
      t_start=time.time() - prog.elapsed_s, validate=validate,
      param_counts=logging_utils.split_param_counts(init_params, model.config.vocab_size),
      peak=logging_utils.peak_flops(mesh.devices.flat[0]), clock=clock)
  t_session = time.time()

  done = run.step >= stop_at or prog.budget_hit
  with stop_signals() as stop, _closing_on_error(ckpt, log, run.bar), run.clock, \
      prefetch_lib.EpochPrefetch(make_epoch, epoch_batches, first, num_epochs,
                                 epoch_workers) as epochs, contextlib.ExitStack() as closing:
    programs = closing.enter_context(precompile_lib.Precompiler(
        step_fn, run.state, rng, batch_sh["src"], tc.grad_accum_steps, micro)) if precompile else None
    while not done and prog.epoch < num_epochs:
      eb = epochs.get(prog.epoch)
      it = eb.iterator(prog.iterator)
      if programs is not None:
        programs.submit(eb.shapes((prog.iterator or {}).get("next_index", 0)))
      prog.iterator = None
      for local in it:
        run.state, metrics = run.step_for(local, step_fn, programs)(
            run.state, sharding.global_batch(local, mesh, batch_dim=1), rng)
        run.step += 1
        step = run.step
        _bound_in_flight(run.in_flight, step, metrics, run.diverged)
        ckpt.check_for_errors()
        run.window.add(metrics, tc.batch_size, int((local["src"] != 0).sum()) * pcount,
                       int((local["tgt"] != 0).sum()) * pcount)
        run.bar.update(1)
        if budget_s and not prog.budget_hit and time.time() - run.t_start >= budget_s:
          prog.budget_hit = True
          logging.info("max_minutes (%.1f) spent at step %d: validating, saving, stopping",
                       budget_s / 60, step)
        at_end = step >= stop_at or prog.budget_hit
        if step % tc.log_every_steps == 0 or at_end or step == 1:
          run.log_window(at_end)
        position = it.get_state()["next_index"] / len(eb)
        validate_now = validate is not None and (
            (position >= 1 and (prog.epoch + 1) % tc.eval_every_epochs == 0)
            or (at_end and prog.last_validated != step))
        if validate_now and run.validation(prog.epoch + position):
          run.save(it.get_state(), best=True)
        if step % tc.checkpoint_every_steps == 0 or at_end or validate_now or stop["signal"]:
          run.save(it.get_state())
        if stop["signal"]:  # `_closing_on_error` finishes the save before it propagates.
          raise Preempted(f"stopped by {stop['signal']} at step {step}; checkpoint saved in "
                          f"{train_dir}; run the same command again to resume")
        if at_end:
          done = True
          break
      else:
        prog.epoch += 1
    run.bar.close()
    if run.step > 0 and ckpt.latest_step() != run.step:
      run.save(None)
    run.drain()
  ckpt.close()
  log.close()
  return TrainResult(
      steps=run.step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      loss_start=prog.loss_start, loss_end=prog.loss_end, best_score=prog.best_score,
      best_step=prog.best_step, best_validation=prog.best_validation,
      examples_per_s=float(np.mean(run.rates)) if run.rates else None,
      resumed_from=resume_step, minutes=round((time.time() - run.t_start) / 60.0, 2),
      budget_hit=prog.budget_hit,
      step_fraction=round(run.step_s / max(time.time() - t_session, 1e-9), 3),
      compile_s=round(run.compile_s, 1),
      params=run.state.params,
  )


@dataclasses.dataclass
class _Run:
  """The state of one training session that the step loop and its helpers share: the
  train state and step, the open log window, the steps in flight, and the speed figures."""

  tc: Any  # The trainer section.
  name: str  # Its dotted name, for messages.
  train_dir: pathlib.Path
  seed: int
  n_dev: int
  ckpt: ckpt_lib.Checkpointer
  log: logging_utils.MetricLogger
  bar: Any
  prog: Progress
  state: Any  # step_lib.TrainState
  step: int
  window: Window
  t_start: float  # Wall-clock start of the training across resumes.
  validate: ValidateFn | None
  param_counts: Any
  peak: float | None
  in_flight: collections.deque = dataclasses.field(default_factory=collections.deque)
  rates: list = dataclasses.field(default_factory=list)  # examples/s of each log window.
  step_s: float = 0.0  # Wall time between logging points (steps; not validation).
  clock: compile_clock.CompileClock = dataclasses.field(
      default_factory=compile_clock.CompileClock)  # Open while the steps run.
  compile_s: float = 0.0  # Of `step_s`, seconds JAX compiled (new batch shapes).

  def diverged(self, bad_step: int, got: dict) -> Diverged:
    """Logs the non-finite step and builds the error (after closing what is open)."""
    self.log.write(bad_step, "train", {k: float(got[k]) for k in ("loss", "grad_norm")})
    _close_quietly(self.ckpt, self.log, self.bar)
    kept = self.ckpt.latest_step()
    return Diverged(
        f"training diverged at step {bad_step} (loss {float(got['loss']):.4g}, gradient "
        f"norm {float(got['grad_norm']):.4g}); lower {self.name}.learning_rate (now "
        f"{self.tc.learning_rate:g}) or {self.name}.grad_clip; "
        + (f"the last good checkpoint (step {kept}) is kept in {self.train_dir}"
           if kept is not None else "no checkpoint was written"))

  def step_for(self, local: dict, step_fn, programs: precompile_lib.Precompiler | None):
    """The step to run on batch `local`: its shape's program from `programs` when there
    is one (a wait for it counts as compile time), else the jitted `step_fn`."""
    if programs is None:
      return step_fn
    compiled, waited_s = programs.get((local["src"].shape[-1], local["tgt"].shape[-1]))
    self.clock.add(waited_s)
    return step_fn if compiled is None else compiled

  def drain(self) -> None:
    """Waits for every step in flight and checks it (before a save or validation)."""
    while self.in_flight:
      _check_finite(*self.in_flight.popleft(), self.diverged)

  def save(self, it_state, best: bool = False) -> None:
    """A checkpoint of this step (periodic, or the best so far) with the host state."""
    self.drain()
    self.prog.elapsed_s = time.time() - self.t_start
    meta = dataclasses.asdict(self.prog) | {
        "iterator": it_state, "window_losses": self.window.losses(), "seed": self.seed}
    if best:
      self.ckpt.save_best(self.step, self.state.params, meta)
    else:
      self.ckpt.save(self.step, self.state.params, self.state.opt_state, meta)

  def log_window(self, at_end: bool) -> None:
    """Writes the open window's log record (echoed at the logging interval and the end)
    and opens a new window."""
    self.drain()  # The host waits for the parameters below anyway.
    jax.block_until_ready(self.state.params)
    scalars, dt = self.window.scalars(self.prog.epoch, self.n_dev)
    if self.peak:
      flops = logging_utils.step_flops(self.param_counts, self.window.src_tokens,
                                       self.window.tgt_tokens)
      scalars["mfu"] = flops / dt / self.n_dev / self.peak
    if self.step > 1:
      self.rates.append(self.window.examples / dt)
      self.step_s += dt
      self.compile_s += scalars["compile_s"]
    prog = self.prog
    prog.loss_start = scalars["loss"] if prog.loss_start is None else prog.loss_start
    prog.loss_end = scalars["loss"]
    self.log.write(self.step, "train", scalars,
                   echo=self.step % self.tc.log_every_steps == 0 or at_end)
    self.bar.set_postfix(loss=f"{scalars['loss']:.4f}")
    self.window = Window(clock=self.clock)

  def validation(self, position: float) -> bool:
    """Validates; returns whether these parameters are the best so far."""
    self.drain()
    t_validation, compiled = time.time(), self.clock.seconds
    scores = self.validate(self.state.params, self.step)
    prog = self.prog
    prog.last_validated = self.step
    scores.update(minutes=(time.time() - self.t_start) / 60.0, epoch=position)
    self.log.write(self.step, "validation", scores)
    # The open window keeps its steps before the validation and its time without it (a
    # reset here counted those steps over the time of the steps after: up to 3-4x rates).
    self.window.exclude(time.time() - t_validation, self.clock.seconds - compiled)
    if prog.best_score is not None and scores["score"] <= prog.best_score:
      return False
    prog.best_score, prog.best_step, prog.best_validation = (
        float(scores["score"]), self.step, dict(scores))
    return True


def _initial_state(ckpt, init_params, tx, mesh, shard_params: bool):
  """The sharded train state: fresh, or restored from the newest checkpoint."""
  abstract = jax.eval_shape(lambda p: step_lib.init_state(p, tx), init_params)
  state_sh = sharding.param_shardings(abstract, mesh, shard_params)
  state = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=state_sh)(init_params)
  resume_step = ckpt.latest_step()
  if resume_step is None:
    return state, None, Progress(), state_sh
  params, opt_state, meta = ckpt.restore(resume_step, state.params, state.opt_state)
  replicated = sharding.replicated(mesh)
  state = step_lib.TrainState(step=jax.device_put(np.int32(resume_step), replicated),
                              params=params, opt_state=opt_state)
  logging.info("resumed from step %d (epoch %d)", resume_step, meta["epoch"])
  return state, resume_step, Progress.from_meta(meta), state_sh


def _bound_in_flight(in_flight: collections.deque, step: int, metrics, diverged) -> None:
  """Keeps at most MAX_IN_FLIGHT steps queued: the host waits for the oldest one and
  checks that its loss and gradient norm are finite (`_check_finite`)."""
  in_flight.append((step, metrics))
  while len(in_flight) > MAX_IN_FLIGHT:
    _check_finite(*in_flight.popleft(), diverged)


def _check_finite(step: int, metrics, diverged) -> None:
  """Raises `diverged(step, values)` when the step's loss or gradient norm is not finite."""
  got = jax.device_get({k: metrics[k] for k in ("loss", "grad_norm")})
  if not all(np.isfinite(float(v)) for v in got.values()):
    raise diverged(step, got)


def _close_quietly(ckpt, log, bar) -> None:
  """Closes the checkpointer, logger and progress bar, reporting (not raising) failures."""
  for thing in (ckpt, log, bar):
    try:
      thing.close()
    except Exception as e:  # pylint: disable=broad-except  # An error is already on its way.
      logging.warning("while stopping: %s", e)


@contextlib.contextmanager
def _closing_on_error(ckpt, log, bar):
  """On any exception, closes the checkpointer (pending saves are finished or abandoned,
  their threads joined), the logger and the bar before the exception propagates."""
  try:
    yield
  except BaseException:
    _close_quietly(ckpt, log, bar)
    raise
