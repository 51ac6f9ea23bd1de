"""The trainer: a function of (config, directory, model, data), resumable (DESIGN §5).

`train` runs `config.train.epochs` passes over the task mixture (or until
`config.train.max_minutes` of wall-clock time are spent) with one jitted step
per global batch on a 1-D mesh over every device, saves Orbax checkpoints every
`checkpoint_every_steps` and at every validation, resumes from the newest one
(continuing at step N+1 with the same next batch), validates every
`eval_every_epochs` and keeps the best parameters, and logs to the console,
TensorBoard and `metrics.jsonl`.

Preemption: SIGTERM (what schedulers and TPU maintenance send) makes the loop finish
the step in flight, write a checkpoint and raise `Preempted`; the same command then
resumes. After SIGKILL the run resumes from the last complete checkpoint (Orbax
writes each one to a temporary name and renames it when complete); log records of
steps after that checkpoint are dropped from `metrics.jsonl`, since they are redone.
"""

from __future__ import annotations

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
import tqdm

from gensar_jax import pipeline
from gensar_jax.train import batches as batches_lib
from gensar_jax.train import checkpoint as ckpt_lib
from gensar_jax.train import logging_utils
from gensar_jax.train import sharding
from gensar_jax.train import step as step_lib

# make_epoch(epoch) -> (source ids per example, target ids per example), eos included.
EpochFn = Callable[[int], tuple[list[np.ndarray], list[np.ndarray]]]
# validate(params, step) -> {"score": higher is better, **scalars to log}.
ValidateFn = Callable[[Any, int], dict[str, float]]


class Preempted(pipeline.PipelineError):
  """Training stopped on SIGTERM after saving a checkpoint; rerun the same command."""


@contextlib.contextmanager
def sigterm_flag():
  """Yields a dict whose "set" turns True on SIGTERM (the handler is restored after).

  Outside the main thread (where signal handlers cannot be installed) the flag never
  turns True.
  """
  flag = {"set": False}
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return

  def handler(signum, frame):  # pylint: disable=unused-argument
    logging.warning("SIGTERM: saving a checkpoint after the current step, then stopping")
    flag["set"] = True

  previous = signal.signal(signal.SIGTERM, handler)
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


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
  params: Any = dataclasses.field(repr=False, default=None)

  def summary(self) -> dict:
    out = dataclasses.asdict(self)
    out.pop("params")
    return out


def _state_shardings(abstract_state, mesh, shard_params: bool):
  return sharding.param_shardings(abstract_state, mesh, shard_params)


def train(
    config, train_dir: pathlib.Path, *, model, init_params: Any, make_epoch: EpochFn,
    validate: ValidateFn | None = None, mesh: jax.sharding.Mesh | None = None,
) -> TrainResult:
  """Trains `model` from `init_params` (or the newest checkpoint in `train_dir`).

  Args:
    config: the pipeline config (`train`, `mesh`, `seed` are read).
    train_dir: where checkpoints, `metrics.jsonl` and `tb/` go.
    model: a `T5` module.
    init_params: its initial variables `{"params": ...}` (ignored when resuming).
    make_epoch: the tokenised examples of an epoch (deterministic in the epoch).
    validate: optional validation; its "score" selects the best checkpoint.
    mesh: the device mesh (default: every device on `config.mesh.data_axis`).

  Returns:
    A TrainResult, with the final parameters.
  """
  tc = config.train
  train_dir = pathlib.Path(train_dir)
  mesh = mesh or sharding.make_mesh(config.mesh.data_axis)
  n_dev = mesh.devices.size
  pidx, pcount = jax.process_index(), jax.process_count()
  main_process = pidx == 0
  micro = tc.batch_size // tc.grad_accum_steps
  if tc.batch_size % tc.grad_accum_steps or micro % n_dev:
    raise pipeline.PipelineError(
        f"train.batch_size ({tc.batch_size}) / grad_accum_steps ({tc.grad_accum_steps}) "
        f"must be a whole multiple of the {n_dev} devices"
    )
  seed = int(config.seed)

  def epoch_batches(epoch: int) -> batches_lib.EpochBatches:
    src, tgt = make_epoch(epoch)
    return batches_lib.EpochBatches(
        src, tgt, tc.batch_size, tc.grad_accum_steps, seed, epoch, pidx, pcount)

  max_steps = int(tc.get("max_steps", 0) or 0)
  budget_s = float(tc.get("max_minutes", 0) or 0) * 60.0
  ckpt = ckpt_lib.Checkpointer(train_dir, tc.max_to_keep)
  resume_step = ckpt.latest_step()
  meta: dict = {}
  # The schedule's length comes from epoch 0 (every epoch has the same task counts).
  first = epoch_batches(0)
  steps_per_epoch = len(first)
  if steps_per_epoch == 0:
    raise pipeline.PipelineError(
        f"an epoch has fewer examples than train.batch_size ({tc.batch_size})")
  # A fractional number of epochs ends (and its schedule decays) partway through the last;
  # `train.steps` fixes the optimizer steps instead (the same compute on any dataset).
  fixed_steps = int(tc.get("steps", 0) or 0)
  total_steps = fixed_steps or max(1, int(round(steps_per_epoch * float(tc.epochs))))
  num_epochs = math.ceil(total_steps / steps_per_epoch)
  tx, schedule = step_lib.make_optimizer(tc, total_steps)

  abstract = jax.eval_shape(lambda p: step_lib.init_state(p, tx), init_params)
  state_sh = _state_shardings(abstract, mesh, bool(config.mesh.shard_params))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  init_fn = jax.jit(lambda p: step_lib.init_state(p, tx), out_shardings=state_sh)
  state = init_fn(init_params)
  if resume_step is not None:
    params, opt_state, meta = ckpt.restore(resume_step, state.params, state.opt_state)
    state = step_lib.TrainState(
        step=jax.device_put(np.int32(resume_step), replicated), params=params, opt_state=opt_state)
    logging.info("resumed from step %d (epoch %d)", resume_step, meta["epoch"])

  batch_sh = {k: sharding.batch_sharding(mesh, 1, 3) for k in ("src", "tgt")}
  step_fn = step_lib.jit_train_step(
      step_lib.make_train_step(model, tx, schedule, dropout=model.config.dropout_rate > 0),
      state_sh, batch_sh, replicated)
  rng = jax.random.key(seed + 1)
  rng = jax.device_put(rng, replicated)

  log = logging_utils.MetricLogger(train_dir, enabled=main_process)
  log.drop_after(int(resume_step or 0))  # Steps after the restored checkpoint are redone.
  param_counts = logging_utils.split_param_counts(init_params, model.config.vocab_size)
  peak = logging_utils.peak_flops(mesh.devices.flat[0])

  step = int(resume_step or 0)
  epoch = int(meta.get("epoch", 0))
  it_state = meta.get("iterator")
  best_score = meta.get("best_score")
  best_step = meta.get("best_step")
  best_val = meta.get("best_validation")
  loss_start = meta.get("loss_start")
  loss_end = meta.get("loss_end")
  budget_hit = bool(meta.get("budget_hit", False))
  # Wall-clock seconds of this training across resumes (steps, validation, saves).
  t_start = time.time() - float(meta.get("elapsed_s", 0.0))
  last_validated = meta.get("last_validated")
  if it_state is not None and it_state.get("next_index", 0) >= steps_per_epoch:
    epoch, it_state = epoch + 1, None

  def meta_now(epoch_, it_state_):
    return {
        "epoch": epoch_, "iterator": it_state_, "seed": seed,
        "best_score": best_score, "best_step": best_step, "best_validation": best_val,
        "loss_start": loss_start, "loss_end": loss_end,
        "elapsed_s": time.time() - t_start, "budget_hit": budget_hit,
        "last_validated": last_validated,
    }

  window: list = []  # (metrics on device, examples, src tokens, tgt tokens)
  t_window = time.time()
  rates: list[float] = []
  step_s = 0.0  # Wall time between logging points (steps; not validation), this session.
  t_session = time.time()
  bar = tqdm.tqdm(total=total_steps, initial=step, disable=not main_process,
                  desc="train", unit="step", dynamic_ncols=True)
  stop = step >= total_steps or (max_steps and step >= max_steps) or budget_hit
  with sigterm_flag() as term:
    while not stop and epoch < num_epochs:
      eb = first if epoch == 0 else epoch_batches(epoch)
      it = eb.iterator(it_state)
      it_state = None
      for local in it:
        batch = sharding.global_batch(local, mesh, batch_dim=1)
        state, metrics = step_fn(state, batch, rng)
        step += 1
        window.append((metrics, tc.batch_size,
                       int((local["src"] != 0).sum()) * pcount, int((local["tgt"] != 0).sum()) * pcount))
        bar.update(1)
        if budget_s and not budget_hit and time.time() - t_start >= budget_s:
          budget_hit = True
          logging.info("train.max_minutes (%.1f) spent at step %d: validating, saving, stopping",
                       budget_s / 60, step)
        at_end = step == total_steps or (max_steps and step >= max_steps) or budget_hit
        if step % tc.log_every_steps == 0 or at_end or step == 1:
          jax.block_until_ready(state.params)
          dt = max(time.time() - t_window, 1e-9)
          got = jax.device_get([w[0] for w in window])
          loss = float(np.mean([g["loss"] for g in got]))
          ex = sum(w[1] for w in window)
          src_tok = sum(w[2] for w in window)
          tgt_tok = sum(w[3] for w in window)
          scalars = {
              "loss": loss,
              "learning_rate": float(got[-1]["learning_rate"]),
              "grad_norm": float(got[-1]["grad_norm"]),
              "examples_per_s": ex / dt,
              "tokens_per_s_per_device": (src_tok + tgt_tok) / dt / n_dev,
              "epoch": epoch,
          }
          if peak:
            flops = logging_utils.step_flops(param_counts, src_tok, tgt_tok)
            scalars["mfu"] = flops / dt / n_dev / peak
          if step > 1:
            rates.append(ex / dt)
            step_s += dt
          if loss_start is None:
            loss_start = loss
          loss_end = loss
          log.write(step, "train", scalars, echo=step % tc.log_every_steps == 0 or at_end)
          bar.set_postfix(loss=f"{loss:.4f}")
          window, t_window = [], time.time()
        epoch_done = it.get_state()["next_index"] >= len(eb)
        validate_now = validate is not None and (
            (epoch_done and (epoch + 1) % tc.eval_every_epochs == 0)
            or (at_end and last_validated != step))
        if validate_now:
          scores = validate(state.params, step)
          last_validated = step
          scores.update(minutes=(time.time() - t_start) / 60.0, epoch=epoch + (
              it.get_state()["next_index"] / len(eb)))
          log.write(step, "validation", scores)
          if best_score is None or scores["score"] > best_score:
            best_score, best_step, best_val = float(scores["score"]), step, dict(scores)
            ckpt.save_best(step, state.params, meta_now(epoch, it.get_state()))
          t_window = time.time()
        if step % tc.checkpoint_every_steps == 0 or at_end or validate_now:
          ckpt.save(step, state.params, state.opt_state, meta_now(epoch, it.get_state()))
        if term["set"]:
          ckpt.save(step, state.params, state.opt_state, meta_now(epoch, it.get_state()))
          ckpt.close()
          log.close()
          bar.close()
          raise Preempted(f"stopped by SIGTERM at step {step}; checkpoint saved in "
                          f"{train_dir}; run the same command again to resume")
        if at_end:
          stop = True
          break
      epoch += 1
  bar.close()
  if step > 0 and ckpt.latest_step() != step:
    ckpt.save(step, state.params, state.opt_state, meta_now(epoch - 1, None))
  ckpt.close()
  log.close()
  return TrainResult(
      steps=step, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
      loss_start=loss_start, loss_end=loss_end, best_score=best_score, best_step=best_step,
      best_validation=best_val, examples_per_s=float(np.mean(rates)) if rates else None,
      resumed_from=resume_step, minutes=round((time.time() - t_start) / 60.0, 2),
      budget_hit=budget_hit,
      step_fraction=round(step_s / max(time.time() - t_session, 1e-9), 3),
      params=state.params,
  )
