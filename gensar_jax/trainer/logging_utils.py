"""Training logs: console (absl + tqdm), TensorBoard and a `metrics.jsonl` history.

Every record is one JSON line `{"step": N, "kind": "train" | "validation", ...}` in
`metrics.jsonl` (the report stage plots training loss and validation metrics from it)
and the same scalars under `kind/name` in TensorBoard.

MFU = achieved model FLOP/s per device / the device's peak dense bf16 FLOP/s, with
model FLOPs approximated as 6 x parameters x tokens (forward + backward; encoder
parameters count source tokens, decoder and output parameters target tokens;
attention score FLOPs are left out). Reported only for devices in `PEAK_FLOPS`.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from absl import logging
import jax
import numpy as np

from gensar_jax.errors import PipelineError

# Peak dense bf16 FLOP/s per device (chip), by a substring of `device_kind`.
PEAK_FLOPS = (
    ("v6 lite", 918e12), ("v6e", 918e12),
    ("v5 lite", 197e12), ("v5e", 197e12),
    ("v5p", 459e12), ("v5", 459e12),
    ("v4", 275e12),
    ("a100", 312e12),
    ("h100", 989e12),
    ("h200", 989e12),
)


def peak_flops(device=None) -> float | None:
  """Peak bf16 FLOP/s of a device, or None when it is not in the table (e.g. CPU)."""
  device = device or jax.devices()[0]
  if device.platform == "cpu":
    return None
  kind = device.device_kind.lower()
  for key, flops in PEAK_FLOPS:
    if key in kind:
      return flops
  return None


def split_param_counts(params: Any, vocab_size: int) -> tuple[int, int, int]:
  """(embedding, other encoder, decoder) parameter counts of a T5 pytree.

  The embedding is every [vocab_size, d] matrix (shared input/output embedding).
  """
  emb = enc = dec = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = jax.tree_util.keystr(path).lower()
    n = int(np.prod(leaf.shape))
    if leaf.ndim == 2 and leaf.shape[0] == vocab_size:
      emb += n
    elif "decoder" in name:
      dec += n
    else:
      enc += n
  return emb, enc, dec


def step_flops(counts: tuple[int, int, int], src_tokens: int, tgt_tokens: int) -> float:
  """Approximate training FLOPs of one step: 6 x parameters x tokens they touch.

  The embedding counts only as the output projection (target tokens); its lookup
  on the input side is not a matrix product.
  """
  emb, enc, dec = counts
  return 6.0 * (enc * src_tokens + (dec + emb) * tgt_tokens)


class MetricLogger:
  """Writes scalars to the console, TensorBoard and `metrics.jsonl`.

  Args:
    directory: where `metrics.jsonl` and `tb/` go (the train stage's directory).
    enabled: False on every process but the first (multi-host).
  """

  def __init__(self, directory: pathlib.Path, enabled: bool = True):
    self.enabled = enabled
    self.path = pathlib.Path(directory) / "metrics.jsonl"
    self.writer = None
    if enabled:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top

      self.writer = SummaryWriter(str(pathlib.Path(directory) / "tb"))

  def write(self, step: int, kind: str, scalars: dict[str, float], echo: bool = True) -> None:
    """Records `scalars` for `step` under `kind` ("train" or "validation")."""
    if not self.enabled:
      return
    # Non-finite values are kept (JSON NaN / Infinity): a diverged step must show.
    clean = {k: float(v) for k, v in scalars.items() if v is not None}
    with self.path.open("a") as f:
      f.write(json.dumps({"step": int(step), "kind": kind, **clean}, sort_keys=True) + "\n")
    for k, v in clean.items():
      # TensorBoard tag names allow no "@" (ndcg@5 -> ndcg_5); metrics.jsonl keeps "@".
      self.writer.add_scalar(f"{kind}/{k}".replace("@", "_"), v, int(step))
    self.writer.flush()
    if echo:
      logging.info(
          "%s step %d: %s", kind, step, ", ".join(f"{k}={_fmt(v)}" for k, v in clean.items())
      )

  def drop_after(self, step: int) -> None:
    """Removes the `metrics.jsonl` records of steps after `step` (they will be redone)."""
    if not self.enabled or not self.path.exists():
      return
    kept = [r for r in read_jsonl(self.path) if r["step"] <= step]
    tmp = self.path.with_name(self.path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
    tmp.replace(self.path)

  def close(self) -> None:
    """Closes the TensorBoard writer (a second call does nothing)."""
    if self.writer is not None:
      self.writer.close()
      self.writer = None


def _fmt(v: float) -> str:
  return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"


def read_jsonl(path: pathlib.Path) -> list[dict]:
  """The records of an appended JSONL log, surviving a kill mid-write.

  A torn last line (a process killed while appending) is dropped, with a warning; an
  unreadable line before the last is a PipelineError naming the file and line.
  """
  path = pathlib.Path(path)
  lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
  out = []
  for n, (i, line) in enumerate(lines):
    try:
      out.append(json.loads(line))
    except ValueError:
      if n == len(lines) - 1:
        logging.warning("%s: dropped its torn last line %d (a run killed mid-write)", path, i)
        break
      raise PipelineError(f"{path}, line {i}: not a JSON record; delete the line or the "
                          "file") from None
  return out


def read_history(directory: pathlib.Path) -> list[dict]:
  """Every record of a `metrics.jsonl` (empty when absent; a torn last line dropped)."""
  path = pathlib.Path(directory) / "metrics.jsonl"
  if not path.exists():
    return []
  return read_jsonl(path)
