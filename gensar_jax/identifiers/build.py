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



def code_usage(codes_NxL: np.ndarray) -> list[int]:
  """Distinct codes used at each level of one identifier table."""
  codes_NxL = np.asarray(codes_NxL)
  return [int(len(np.unique(codes_NxL[:, i]))) for i in range(codes_NxL.shape[1])]


def build_identifiers(
    model: quantizer.RQVAE,
    params: Any,
    inputs: Mapping[str, np.ndarray],
    item_ids: np.ndarray,
) -> tuple[table.Identifiers, dict[str, dict[str, Any]]]:
  """Assigns every item its nearest codes, then resolves collisions per kind.

  Args:
    model: the quantizer module.
    params: its parameters.
    inputs: {kind: [N, d]} embeddings of the kinds `model` reads.
    item_ids: [N] item ids, in the same order.

  Returns:
    (identifiers, stats): stats maps `collision_before`, `collision_after`, `moved`
    (items whose last code changed) and `code_usage_before` / `code_usage_after`
    ({level name: distinct codes}) to a dict per kind. The single-embedding variants
    resolve their one table and use it for both kinds.
  """
  data = {k: jnp.asarray(inputs[k], jnp.float32) for k in model.kinds()}
  level_codes, last = jax.device_get(train_lib.make_assigner(model)(params, data))
  plan = model.plan
  codes = train_lib.kind_codes(plan, level_codes)
  tables: dict[str, table.IdentifierTable] = {}
  per_kind: dict[str, dict[str, Any]] = {}
  for kind in quantizer.KINDS:
    if plan.variant != "joint" and kind != plan.variant:
      continue
    levels = plan.kind_levels(kind)
    resolved, moved = resolve.resolve(
        codes[kind], last[kind], np.asarray(params[f"codebook_{levels[-1]}"])
    )
    tables[kind] = table.IdentifierTable(resolved, levels, model.codebook_size)
    per_kind[kind] = {
        "collision_before": resolve.collision_rate(codes[kind]),
        "collision_after": resolve.collision_rate(resolved),
        "moved": int(moved),
        "code_usage_before": dict(zip(levels, code_usage(codes[kind]))),
        "code_usage_after": dict(zip(levels, code_usage(resolved))),
    }
  if plan.variant != "joint":
    other = "collaborative" if plan.variant == "semantic" else "semantic"
    tables[other], per_kind[other] = tables[plan.variant], per_kind[plan.variant]
  ids = table.Identifiers(
      item_ids=np.asarray(item_ids, dtype=str),
      semantic=tables["semantic"],
      collaborative=tables["collaborative"],
  )
  stats = {key: {k: per_kind[k][key] for k in quantizer.KINDS} for key in per_kind["semantic"]}
  return ids, stats


def save_params(path: str | os.PathLike, params: Any) -> pathlib.Path:
  """Writes parameters as a flat npz ("encoder_semantic/dense_0/kernel", ...)."""
  path = pathlib.Path(path)
  if path.suffix != ".npz":
    path = path / table.PARAMS_FILENAME
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  tmp = path.with_name(path.name + ".tmp.npz")
  np.savez(tmp, **{k: np.asarray(v) for k, v in flat.items()})
  os.replace(tmp, path)
  return path


def load_params(path: str | os.PathLike) -> dict[str, Any]:
  """Reads what `save_params` wrote, as the nested dict `model.apply` expects."""
  return traverse_util.unflatten_dict(table.load_quantizer_params(path), sep="/")
