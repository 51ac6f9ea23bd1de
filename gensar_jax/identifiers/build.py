"""From trained quantizer parameters to unique identifier tables (and back to disk)."""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gensar_jax.identifiers import quantizer
from gensar_jax.identifiers import resolve
from gensar_jax.identifiers import table
from gensar_jax.identifiers import train as train_lib

PARAMS_FILENAME = "params.npz"


def build_identifiers(
    model: quantizer.RQVAE,
    params: Any,
    inputs: Mapping[str, np.ndarray],
    item_ids: np.ndarray,
) -> tuple[table.Identifiers, dict[str, dict[str, float]]]:
  """Assigns every item its nearest codes, then resolves collisions per kind.

  Args:
    model: the quantizer module.
    params: its parameters.
    inputs: {kind: [N, d]} embeddings of the kinds `model` reads.
    item_ids: [N] item ids, in the same order.

  Returns:
    (identifiers, stats): stats per kind hold `collision_before`, `collision_after`
    and `moved` (items whose last code changed). The single-embedding variants resolve
    their one table and use it for both kinds.
  """
  data = {k: jnp.asarray(inputs[k], jnp.float32) for k in model.kinds()}
  level_codes, last = jax.device_get(train_lib.make_assigner(model)(params, data))
  plan = model.plan
  codes = train_lib.kind_codes(plan, level_codes)
  tables: dict[str, table.IdentifierTable] = {}
  stats: dict[str, dict[str, float]] = {}
  for kind in quantizer.KINDS:
    if plan.variant != "joint" and kind != plan.variant:
      continue
    levels = plan.kind_levels(kind)
    resolved, moved = resolve.resolve(
        codes[kind], last[kind], np.asarray(params[f"codebook_{levels[-1]}"])
    )
    tables[kind] = table.IdentifierTable(resolved, levels, model.codebook_size)
    stats[kind] = {
        "collision_before": resolve.collision_rate(codes[kind]),
        "collision_after": resolve.collision_rate(resolved),
        "moved": int(moved),
    }
  if plan.variant != "joint":
    other = "collaborative" if plan.variant == "semantic" else "semantic"
    tables[other], stats[other] = tables[plan.variant], dict(stats[plan.variant])
  ids = table.Identifiers(
      item_ids=np.asarray(item_ids, dtype=str),
      semantic=tables["semantic"],
      collaborative=tables["collaborative"],
  )
  return ids, stats


def save_params(path: str | os.PathLike, params: Any) -> pathlib.Path:
  """Writes parameters as a flat npz ("encoder_semantic/dense_0/kernel", ...)."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path / PARAMS_FILENAME
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **{k: np.asarray(v) for k, v in flat.items()})
  os.replace(tmp, path)
  return path


def load_params(path: str | os.PathLike) -> dict[str, Any]:
  """Reads what `save_params` wrote, as the nested dict `model.apply` expects."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path / PARAMS_FILENAME
  with np.load(path, allow_pickle=False) as f:
    return traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep="/")
