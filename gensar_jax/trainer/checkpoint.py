"""Orbax checkpoints of a training run (docs/design.md §5), for every trainer user.

Layout of a trainer's directory (the train stage's `<workdir>/train`, doc2query's
`<workdir>/doc2query`, the warm start's `<workdir>/train/warm_start`):
  ckpt/<step>/          periodic saves (params, opt_state, meta JSON); `max_to_keep`
  best/<step>/          the best by validation (params, meta JSON); one kept
`meta` holds the epoch, the data iterator state, the RNG seed and the validation
record, so a resumed run continues at step N+1 with the same next batch, and the
SHA-256 digest of every saved array (`tree_digest`), checked when the checkpoint is
restored: flipped or truncated bytes are one `DamagedCheckpoint` error naming the
checkpoint and what to do, never silently loaded weights.
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from gensar_jax import errors

PERIODIC = "ckpt"
BEST = "best"


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def tree_digest(tree: Any) -> str | None:
  """SHA-256 of every array of a pytree (paths, dtypes, shapes and bytes, in tree order).

  None when some array is not fully addressable by this process (multi-host sharding):
  such checkpoints are saved and restored without the check.
  """
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  if any(isinstance(x, jax.Array) and not x.is_fully_addressable for _, x in leaves):
    return None
  h = hashlib.sha256()
  for path, leaf in leaves:
    arr = np.ascontiguousarray(jax.device_get(leaf))
    h.update(f"{jax.tree_util.keystr(path)}|{arr.dtype}|{arr.shape}|".encode())
    h.update(arr.tobytes())
  return h.hexdigest()


def _check_digest(recorded: str | None, tree: Any, where: pathlib.Path, advice: str) -> None:
  """Raises DamagedCheckpoint when a restored tree's digest differs from the recorded one."""
  if recorded is None:
    return
  got = tree_digest(tree)
  if got is not None and got != recorded:
    raise errors.DamagedCheckpoint(
        f"checkpoint {where} is damaged (its arrays differ from the digest written when it "
        f"was saved); {advice}")


def _restore_or_fail(manager, step: int, args, where: pathlib.Path, advice: str):
  """manager.restore, with any failure to read the files as one DamagedCheckpoint line."""
  try:
    return manager.restore(step, args=args)
  except (KeyboardInterrupt, errors.PipelineError):
    raise
  except Exception as e:  # pylint: disable=broad-except  # TensorStore/Orbax raise many kinds.
    cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise errors.DamagedCheckpoint(
        f"checkpoint {where} cannot be read ({type(e).__name__}: {cause}); {advice}") from None


class Checkpointer:
  """Periodic and best-so-far checkpoints of one training run.

  Args:
    train_dir: the train stage directory.
    max_to_keep: periodic checkpoints kept (the best is kept besides, in `best/`).
  """

  def __init__(self, train_dir: pathlib.Path, max_to_keep: int):
    # Absolute: Orbax (0.12.4 and our pinned 0.12.8 alike) refuses a relative folder, and
    # only at the first save, after minutes of training (`--workdir=W` did that).
    train_dir = pathlib.Path(train_dir).absolute()
    self.periodic = ocp.CheckpointManager(
        train_dir / PERIODIC,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )
    self.best = ocp.CheckpointManager(
        train_dir / BEST, options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
    )
    self.train_dir = train_dir

  def latest_step(self) -> int | None:
    """The step of the newest periodic checkpoint (None before the first save)."""
    return self.periodic.latest_step()

  def save(self, step: int, params: Any, opt_state: Any, meta: dict) -> None:
    """A periodic checkpoint of the whole train state (asynchronous), with its digests.

    Raises:
      PipelineError: an earlier asynchronous save failed, or this one cannot start
        (full disk, permissions): naming the folder and the cause.
    """
    if step in self.periodic.all_steps():
      return
    meta = dict(meta, digest={"params": tree_digest(params),
                              "opt_state": tree_digest(opt_state)})
    with self._save_errors(self.periodic):
      self.periodic.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params),
          opt_state=ocp.args.StandardSave(opt_state),
          meta=ocp.args.JsonSave(meta),
      ))

  def save_best(self, step: int, params: Any, meta: dict) -> None:
    """Replaces the best checkpoint with these parameters (and their digest)."""
    if step in self.best.all_steps():
      return
    meta = dict(meta, digest={"params": tree_digest(params)})
    with self._save_errors(self.best):
      self.best.save(step, args=ocp.args.Composite(
          params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta),
      ))

  def check_for_errors(self) -> None:
    """Raises PipelineError when an asynchronous save has failed (cheap; every step)."""
    for manager in (self.periodic, self.best):
      with self._save_errors(manager):
        manager.check_for_errors()

  def _save_errors(self, manager):
    return _SaveErrors(pathlib.Path(manager.directory))

  def restore(self, step: int, params: Any, opt_state: Any) -> tuple[Any, Any, dict]:
    """Restores a periodic checkpoint into the layout (shardings) of the given trees.

    Raises:
      DamagedCheckpoint: its files cannot be read or differ from their saved digests.
    """
    where = self.train_dir / PERIODIC / str(step)
    older = [s for s in self.periodic.all_steps() if s < step]
    advice = (f"delete {where} to resume from the previous checkpoint (step {max(older)})"
              if older else f"delete {self.train_dir} to train again from the start")
    r = _restore_or_fail(self.periodic, step, ocp.args.Composite(
        params=ocp.args.StandardRestore(_abstract(params)),
        opt_state=ocp.args.StandardRestore(_abstract(opt_state)),
        meta=ocp.args.JsonRestore(),
    ), where, advice)
    meta = dict(r.meta)
    digest = meta.pop("digest", None) or {}
    _check_digest(digest.get("params"), r.params, where, advice)
    _check_digest(digest.get("opt_state"), r.opt_state, where, advice)
    return r.params, r.opt_state, meta

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are written.

    Raises:
      PipelineError: one of them failed (naming the folder and the cause).
    """
    for manager in (self.periodic, self.best):
      with self._save_errors(manager):
        manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the managers (also when a save failed).

    Closing twice does nothing the second time.
    """
    if getattr(self, "_closed", False):
      return
    self._closed = True
    try:
      self.wait()
    finally:
      for manager in (self.periodic, self.best):
        try:
          manager.close()
        except Exception:  # pylint: disable=broad-except  # Already reported by wait().
          logging.warning("closing the checkpoint manager of %s failed", manager.directory)


class _SaveErrors:
  """Turns a failed checkpoint write (OSError and what Orbax wraps it in) into one line."""

  def __init__(self, directory: pathlib.Path):
    self.directory = directory

  def __enter__(self):
    return self

  def __exit__(self, kind, value, tb):
    if value is None or isinstance(value, (KeyboardInterrupt, errors.PipelineError)):
      return False
    cause = value
    while cause.__cause__ is not None or cause.__context__ is not None:
      if isinstance(cause, OSError):
        break
      cause = cause.__cause__ or cause.__context__
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
    raise errors.PipelineError(
        f"saving a checkpoint in {self.directory} failed ({type(cause).__name__}: {text}); "
        "free space or fix the folder's permissions, then run the same command again to "
        "resume from the last complete checkpoint") from None


def restore_params(directory: pathlib.Path, which: str, abstract_params: Any,
                   advice: str) -> tuple[Any, int, pathlib.Path]:
  """The parameters of a run's best (or, with none, latest) or latest checkpoint.

  Args:
    directory: the trainer's directory (holding `best/` and `ckpt/`).
    which: "best" (falls back to the newest periodic save when no validation ran) or
      "latest".
    abstract_params: their shapes, dtypes and shardings (`jax.ShapeDtypeStruct`s).
    advice: what a user should do when the checkpoint is damaged (ends the error).

  Returns:
    (parameters, step, the checkpoint's folder); the digest is checked.
  """
  if which not in ("best", "latest"):
    raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
  directory = pathlib.Path(directory).absolute()  # As in `Checkpointer`.
  manager = None
  for name in ((BEST, PERIODIC) if which == "best" else (PERIODIC,)):
    if (directory / name).exists():
      m = ocp.CheckpointManager(directory / name)
      if m.latest_step() is not None:
        manager = m
        break
  if manager is None:
    raise errors.PipelineError(f"no checkpoint found under {directory}")
  step = manager.latest_step()
  where = pathlib.Path(manager.directory) / str(step)
  restored = _restore_or_fail(manager, step, ocp.args.Composite(
      params=ocp.args.StandardRestore(abstract_params), meta=ocp.args.JsonRestore()),
      where, advice)
  manager.close()
  digest = dict(restored.meta or {}).get("digest") or {}
  if not digest:
    logging.warning("checkpoint %s has no digest (saved by an older version): not verified",
                    where)
  _check_digest(digest.get("params"), restored.params, where, advice)
  return restored.params, int(step), where
