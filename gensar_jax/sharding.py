"""The device mesh and how parameters and batches are laid out on it (docs/design.md §5).

Shared by training, doc2query, decoding, the generative ranker, eval and inference.

One mesh axis (`config.mesh.data_axis`, default "data") spans every device of every
process. Batches are split along it; parameters are replicated, or, with
`config.mesh.shard_params` (FSDP), each parameter is split along its largest
dimension that the mesh size divides (parameters with no such dimension stay
replicated).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(data_axis: str = "data", devices=None) -> Mesh:
  """A 1-D mesh over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (data_axis,))


def param_spec(shape: tuple[int, ...], mesh_size: int, data_axis: str, shard: bool) -> P:
  """Partition spec of one parameter: replicated, or split on its largest divisible dim."""
  if not shard or mesh_size == 1 or not shape:
    return P()
  order = sorted(range(len(shape)), key=lambda d: (-shape[d], d))
  for d in order:
    if shape[d] % mesh_size == 0:
      spec = [None] * len(shape)
      spec[d] = data_axis
      return P(*spec)
  return P()


def param_shardings(params: Any, mesh: Mesh, shard: bool) -> Any:
  """A NamedSharding per leaf of `params` (arrays or ShapeDtypeStructs)."""
  axis = mesh.axis_names[0]
  size = mesh.shape[axis]
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), size, axis, shard)), params)


def batch_sharding(mesh: Mesh, batch_dim: int = 0, ndim: int = 2) -> NamedSharding:
  """Sharding of a batch array whose dimension `batch_dim` is split over the mesh."""
  spec = [None] * ndim
  spec[batch_dim] = mesh.axis_names[0]
  return NamedSharding(mesh, P(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of an array every device holds whole."""
  return NamedSharding(mesh, P())


def split_leading(mesh: Mesh, data_axis: str | None = None) -> NamedSharding:
  """Sharding of an array split along its first dimension over `data_axis` (default:
  the mesh's first axis), its other dimensions whole."""
  return NamedSharding(mesh, P(data_axis or mesh.axis_names[0]))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, batch_dim: int = 0) -> dict[str, jax.Array]:
  """Assembles each process's slice of a batch into global arrays on the mesh.

  Args:
    local: this process's rows (dimension `batch_dim` is the local batch).
    mesh: the training mesh.
    batch_dim: the batch dimension (1 for arrays shaped [accum, batch, ...]).
  """
  return {
      k: jax.make_array_from_process_local_data(batch_sharding(mesh, batch_dim, v.ndim), v)
      for k, v in local.items()
  }
