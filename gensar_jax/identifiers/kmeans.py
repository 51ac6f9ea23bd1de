"""A small jitted k-means (k-means++ seeding, then Lloyd iterations) for codebook init."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gensar_jax.identifiers import quantizer


def kmeans_plus_plus(x_NxD: jax.Array, k: int, key: jax.Array) -> jax.Array:
  """k-means++ seeding: each next centre drawn with probability ∝ squared distance.

  When fewer than `k` distinct points exist, later draws fall back to uniform and
  repeat points (the duplicate centres then stay empty in Lloyd's iterations).
  """
  n = x_NxD.shape[0]
  first_key, draw_key = jax.random.split(key)
  u_K = jax.random.uniform(draw_key, (k,), x_NxD.dtype)  # one draw per centre
  first = x_NxD[jax.random.randint(first_key, (), 0, n)]
  centres_KxD = jnp.zeros((k, x_NxD.shape[1]), x_NxD.dtype).at[0].set(first)
  min_d_N = jnp.sum((x_NxD - first) ** 2, -1)

  def body(i, state):
    centres_KxD, min_d_N = state
    total = jnp.sum(min_d_N)
    # Inverse-CDF sampling; uniform over the points when all distances are zero.
    cdf_N = jnp.where(total > 0, jnp.cumsum(min_d_N) / jnp.where(total > 0, total, 1.0),
                      jnp.arange(1, n + 1, dtype=x_NxD.dtype) / n)
    idx = jnp.minimum(jnp.searchsorted(cdf_N, u_K[i], side="right"), n - 1)
    centre = x_NxD[idx]
    min_d_N = jnp.minimum(min_d_N, jnp.sum((x_NxD - centre) ** 2, -1))
    return centres_KxD.at[i].set(centre), min_d_N

  centres_KxD, _ = jax.lax.fori_loop(1, k, body, (centres_KxD, min_d_N))
  return centres_KxD


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def kmeans(x_NxD: jax.Array, k: int, key: jax.Array, iters: int = 50) -> jax.Array:
  """Cluster centres of `x_NxD`.

  Args:
    x_NxD: points.
    k: number of clusters.
    key: PRNG key of the seeding.
    iters: Lloyd iterations. A centre that loses all its points keeps its position.

  Returns:
    centres_KxD.
  """
  x_NxD = x_NxD.astype(jnp.float32)
  centres_KxD = kmeans_plus_plus(x_NxD, k, key)

  def lloyd(_, centres_KxD):
    assign_N = quantizer.argmin_rows(quantizer.squared_distances(x_NxD, centres_KxD))
    onehot_NxK = jax.nn.one_hot(assign_N, k, dtype=x_NxD.dtype)
    counts_K = jnp.sum(onehot_NxK, 0)
    sums_KxD = onehot_NxK.T @ x_NxD
    means_KxD = sums_KxD / jnp.maximum(counts_K, 1.0)[:, None]
    return jnp.where(counts_K[:, None] > 0, means_KxD, centres_KxD)

  return jax.lax.fori_loop(0, iters, lloyd, centres_KxD)
