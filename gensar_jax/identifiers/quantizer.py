"""The joint residual quantizer (docs/design.md §3): encoders, codebook levels, decoders.

Math lives in pure functions (`quantize_level`, `sinkhorn_log`, `residual_walk`); the
Flax linen module `RQVAE` holds the parameters (MLPs and one codebook per level) and
wires them together. Level layout (`LevelPlan`):

  joint:          shared levels M1..M{Lm} on r_0 = [z_s; z_c] (dim 2d), then the final
                  residual's halves go through S1..S{Ln} (semantic) and R1..R{Ln}
                  (collaborative), each of dim d.
  semantic:       plain RQ-VAE on v_s only: S1..S{Lm+Ln} on z_s (dim d).
  collaborative:  plain RQ-VAE on v_c only: R1..R{Lm+Ln} on z_c (dim d).

Here d = latent_dim // 2. The residual after a level is `r - q_st` with the
straight-through output `q_st = r + sg(e - r)`, so the decoder input ẑ = Σ q_st carries
the gradient to the encoder unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gensar_jax import task_kinds

VARIANTS = ("joint", "semantic", "collaborative")
KINDS = task_kinds.KINDS  # ("semantic", "collaborative")


@dataclasses.dataclass(frozen=True)
class LevelPlan:
  """Which codebook levels exist and which identifier kind reads which.

  Attributes:
    variant: "joint", "semantic" or "collaborative".
    shared: names of the levels on [z_s; z_c] (joint only), e.g. ("M1", "M2").
    semantic: names of the levels on the semantic half / z_s, e.g. ("S1", "S2").
    collaborative: names of the levels on the collaborative half / z_c.
  """

  variant: str
  shared: tuple[str, ...]
  semantic: tuple[str, ...]
  collaborative: tuple[str, ...]

  @property
  def uses_semantic(self) -> bool:
    return self.variant in ("joint", "semantic")

  @property
  def uses_collaborative(self) -> bool:
    return self.variant in ("joint", "collaborative")

  @property
  def all_levels(self) -> tuple[str, ...]:
    """Every level name, in the order the residual walk visits them."""
    return self.shared + self.semantic + self.collaborative

  def kind_levels(self, kind: str) -> tuple[str, ...]:
    """Level names of one identifier kind; single-embedding variants share one table."""
    if self.variant == "semantic":
      return self.semantic
    if self.variant == "collaborative":
      return self.collaborative
    return self.shared + (self.semantic if kind == "semantic" else self.collaborative)

  def balanced_levels(self) -> frozenset[str]:
    """Levels that assign codes by Sinkhorn during training: each kind's last level."""
    return frozenset(self.kind_levels(k)[-1] for k in KINDS if self.kind_levels(k))


def make_plan(variant: str, num_shared: int, num_specific: int) -> LevelPlan:
  """The level layout of one variant.

  Args:
    variant: "joint", "semantic" or "collaborative".
    num_shared: L_m.
    num_specific: L_n. The single-embedding variants get L_m + L_n levels.
  """
  if variant not in VARIANTS:
    raise ValueError(f"identifiers.variant must be one of {VARIANTS}, got {variant!r}")
  if num_shared < 0 or num_specific < 0 or num_shared + num_specific < 1:
    raise ValueError(f"need L_m, L_n >= 0 and L_m + L_n >= 1, got {num_shared}, {num_specific}")
  names = lambda p, n: tuple(f"{p}{i + 1}" for i in range(n))
  total = num_shared + num_specific
  if variant == "semantic":
    return LevelPlan(variant, (), names("S", total), ())
  if variant == "collaborative":
    return LevelPlan(variant, (), (), names("R", total))
  return LevelPlan(variant, names("M", num_shared), names("S", num_specific),
                   names("R", num_specific))


# ----------------------------------------------------------------------------- math


def squared_distances(r_BxD: jax.Array, e_KxD: jax.Array) -> jax.Array:
  """Squared L2 distance of every row of `r_BxD` to every code of `e_KxD`."""
  return (
      jnp.sum(r_BxD**2, axis=-1, keepdims=True)
      - 2.0 * r_BxD @ e_KxD.T
      + jnp.sum(e_KxD**2, axis=-1)[None, :]
  )


def argmin_rows(d_BxK: jax.Array) -> jax.Array:
  """Index of each row's smallest entry (the first on ties), as int32 [B].

  Equal to `jnp.argmin(d_BxK, axis=-1)`, written as a min and a masked min of the
  column index: XLA's CPU backend runs the variadic (value, index) reduction of
  `argmin` about 6x slower than these two plain reductions. A row holding NaN gets
  index K - 1.
  """
  k = d_BxK.shape[-1]
  min_Bx1 = jnp.min(d_BxK, axis=-1, keepdims=True)
  idx_B = jnp.min(jnp.where(d_BxK == min_Bx1, jnp.arange(k, dtype=jnp.int32), k), axis=-1)
  return jnp.minimum(idx_B, k - 1)


def rescale_to_unit(d_BxK: jax.Array) -> jax.Array:
  """Maps a distance matrix affinely onto [-1, 1] (min -> -1, max -> 1)."""
  lo, hi = jnp.min(d_BxK), jnp.max(d_BxK)
  mid = 0.5 * (hi + lo)
  return (d_BxK - mid) / (hi - mid + 1e-5)


def sinkhorn_log(
    d_BxK: jax.Array, epsilon: float, iters: int, absorb_at: float = 30.0
) -> jax.Array:
  """Log of the entropic optimal-transport plan between a batch and the codes.

  The plan starts as `exp(-d / epsilon)` normalised to sum 1; each iteration scales
  its rows to mass 1/B, then its columns to mass 1/K (the authors' algorithm, which
  they run in float64). At epsilon = 0.003 on costs in [-1, 1] that kernel spans
  e^±333, far outside float32, so the first iteration runs in the log domain; it leaves
  every row and column with mass at least 1/(BK), so `P = exp(log_P)` is representable
  where it matters. The other iterations only rescale: row and column scalings u, v
  (two matrix-vector products per iteration, no exp), folded back into log_P
  ("absorbed") whenever one of them leaves [e^-absorb_at, e^absorb_at]. The iterates
  equal the log-domain ones up to float32 rounding; entries under float32's smallest
  value count as 0.

  Args:
    d_BxK: costs, typically distances rescaled to [-1, 1].
    epsilon: entropy weight.
    iters: Sinkhorn iterations (each normalises rows, then columns).
    absorb_at: largest |log| of a scaling before it is absorbed.

  Returns:
    log_P_BxK with P summing to 1; columns sum to 1/K, rows approximately to 1/B.
  """
  b, k = d_BxK.shape
  lse = jax.nn.logsumexp
  log_p = -d_BxK.astype(jnp.float32) / epsilon  # Normalising it to sum 1 first would
  log_p = log_p - lse(log_p, axis=1, keepdims=True) - jnp.log(b)  # change nothing here.
  log_p = log_p - lse(log_p, axis=0, keepdims=True) - jnp.log(k)
  ones_b, ones_k = jnp.ones((b,), jnp.float32), jnp.ones((k,), jnp.float32)

  def scale_until_far(state):
    # Scaling iterations on a fixed P until done or a scaling leaves the safe range;
    # then the scalings are absorbed into log_P. (Loops rather than a `cond` per
    # iteration, which would copy P and log_P each time.)
    log_p, done = state
    p_BxK = jnp.exp(log_p)

    def body(inner):
      _, v_K, i, _ = inner
      u_B = (1.0 / b) / (p_BxK @ v_K)
      v_K = (1.0 / k) / (u_B @ p_BxK)
      far = jnp.maximum(jnp.max(jnp.abs(jnp.log(u_B))), jnp.max(jnp.abs(jnp.log(v_K))))
      return u_B, v_K, i + 1, far > absorb_at

    u_B, v_K, done, _ = jax.lax.while_loop(
        lambda inner: (inner[2] < iters - 1) & ~inner[3], body, (ones_b, ones_k, done, False)
    )
    return log_p + jnp.log(u_B)[:, None] + jnp.log(v_K)[None, :], done

  log_p, _ = jax.lax.while_loop(lambda st: st[1] < iters - 1, scale_until_far, (log_p, 0))
  return log_p


def sinkhorn_codes(d_BxK: jax.Array, epsilon: float, iters: int) -> jax.Array:
  """Balanced code assignment: argmax of the Sinkhorn plan over rescaled distances."""
  d_BxK = jax.lax.stop_gradient(rescale_to_unit(d_BxK))
  return argmin_rows(-sinkhorn_log(d_BxK, epsilon, iters))


def straight_through(r_BxD: jax.Array, e_BxD: jax.Array) -> jax.Array:
  """Value `e`, gradient the identity on `r`: r + sg(e - r)."""
  return r_BxD + jax.lax.stop_gradient(e_BxD - r_BxD)


class LevelOutput(NamedTuple):
  """What one quantizer level produces for a batch (a pytree)."""

  quantized: jax.Array  # [B, D] straight-through code embeddings
  codes: jax.Array  # [B] int32
  loss: jax.Array  # scalar
  residual_in: jax.Array  # [B, D] the residual this level quantized


def quantize_level(
    r_BxD: jax.Array,
    codebook_KxD: jax.Array,
    commitment: float,
    balanced: bool = False,
    sinkhorn_epsilon: float = 0.003,
    sinkhorn_iters: int = 50,
) -> LevelOutput:
  """One residual-quantizer level.

  Args:
    r_BxD: residuals to quantize.
    codebook_KxD: the level's codes.
    commitment: alpha in `mse(e, sg(r)) + alpha * mse(sg(e), r)`.
    balanced: assign codes by Sinkhorn instead of the nearest code.
    sinkhorn_epsilon, sinkhorn_iters: Sinkhorn settings (used when `balanced`).

  Returns:
    The level's `LevelOutput`.
  """
  d_BxK = squared_distances(jax.lax.stop_gradient(r_BxD), codebook_KxD)
  if balanced and sinkhorn_epsilon > 0:
    codes_B = sinkhorn_codes(d_BxK, sinkhorn_epsilon, sinkhorn_iters)
  else:
    codes_B = argmin_rows(d_BxK)
  e_BxD = jnp.take(codebook_KxD, codes_B, axis=0)
  sg = jax.lax.stop_gradient
  loss = jnp.mean((e_BxD - sg(r_BxD)) ** 2) + commitment * jnp.mean((sg(e_BxD) - r_BxD) ** 2)
  return LevelOutput(straight_through(r_BxD, e_BxD), codes_B, loss, r_BxD)


# A level function maps (level name, residual, balanced?) to that level's output.
LevelFn = Callable[[str, jax.Array, bool], LevelOutput]


def residual_walk(
    plan: LevelPlan, r0_BxD: jax.Array, level_fn: LevelFn, balanced: bool
) -> dict[str, Any]:
  """Runs the residual quantization of docs/design.md §3 through every level of `plan`.

  Args:
    plan: the level layout.
    r0_BxD: [z_s; z_c] (joint) or the single latent (single-embedding variants).
    level_fn: quantizes one level; `residual_walk` only wires levels together.
    balanced: whether the plan's balanced levels use Sinkhorn (training).

  Returns:
    A dict: `levels` {name: LevelOutput}, `z_hat` {kind: [B, d] quantized latent of
    each used embedding}.
  """
  balanced_levels = plan.balanced_levels() if balanced else frozenset()
  levels: dict[str, LevelOutput] = {}

  def walk(names: Sequence[str], r: jax.Array) -> tuple[jax.Array, jax.Array]:
    total = jnp.zeros_like(r)
    for name in names:
      out = level_fn(name, r, name in balanced_levels)
      levels[name] = out
      r = r - out.quantized
      total = total + out.quantized
    return r, total

  z_hat: dict[str, jax.Array] = {}
  if plan.variant == "joint":
    r, shared_sum = walk(plan.shared, r0_BxD)
    d = r0_BxD.shape[-1] // 2
    _, spec_s = walk(plan.semantic, r[:, :d])
    _, spec_c = walk(plan.collaborative, r[:, d:])
    z_hat["semantic"] = shared_sum[:, :d] + spec_s
    z_hat["collaborative"] = shared_sum[:, d:] + spec_c
  else:
    kind = plan.variant
    _, z_hat[kind] = walk(plan.kind_levels(kind), r0_BxD)
  return {"levels": levels, "z_hat": z_hat}


# -------------------------------------------------------------------------- modules


# Xavier (Glorot) normal as PyTorch's `xavier_normal_`: untruncated, std sqrt(2 / (fan_in
# + fan_out)). (flax's `xavier_normal` draws from a truncated normal.)
xavier_normal = nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def init_from_one_draw(abstract_params: Any, key: jax.Array) -> Any:
  """Parameters of `RQVAE` shapes: Xavier-normal kernels, zero biases and codebooks.

  The same distribution as `RQVAE.init` (whose codebooks k-means replaces anyway), but
  every kernel is cut from one normal draw: one random-bits program to compile instead
  of one per kernel shape, which dominates the start-up time on CPU.

  Args:
    abstract_params: the parameter tree (arrays or shape/dtype structs), e.g. from
      `jax.eval_shape(model.init, ...)["params"]`.
    key: PRNG key.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
  is_kernel = [getattr(path[-1], "key", None) == "kernel" for path, _ in leaves]
  sizes = [int(np.prod(x.shape)) if k else 0 for (_, x), k in zip(leaves, is_kernel)]
  z = jax.random.normal(key, (max(sum(sizes), 1),), jnp.float32)
  out, offset = [], 0
  for (_, x), kernel, size in zip(leaves, is_kernel, sizes):
    if kernel:
      fan_in, fan_out = x.shape[-2], x.shape[-1]
      std = np.sqrt(2.0 / (fan_in + fan_out))
      out.append((z[offset:offset + size].reshape(x.shape) * std).astype(x.dtype))
      offset += size
    else:
      out.append(jnp.zeros(x.shape, x.dtype))
  return jax.tree_util.tree_unflatten(treedef, out)


class MLP(nn.Module):
  """Dense layers with ReLU between them (none after the last), Xavier-normal, zero bias."""

  features: tuple[int, ...]

  @nn.compact
  def __call__(self, x_BxD: jax.Array) -> jax.Array:
    for i, width in enumerate(self.features):
      x_BxD = nn.Dense(
          width,
          kernel_init=xavier_normal,
          bias_init=nn.initializers.zeros,
          name=f"dense_{i}",
      )(x_BxD)
      if i < len(self.features) - 1:
        x_BxD = nn.relu(x_BxD)
    return x_BxD


class RQVAE(nn.Module):
  """Encoders, one codebook per level, decoders.

  Attributes:
    plan: the level layout (`make_plan`).
    dims: input width of each used embedding kind, e.g. {"semantic": 768, ...}.
    hidden_dims: encoder hidden widths (decoders mirror them).
    latent_dim: width of [z_s; z_c]; each z is latent_dim // 2 wide.
    codebook_size: K.
    commitment: alpha.
    sinkhorn_epsilon, sinkhorn_iters: Sinkhorn settings of the balanced levels.
  """

  plan: LevelPlan
  dims: dict[str, int]
  hidden_dims: tuple[int, ...] = (512, 256, 128, 64)
  latent_dim: int = 64
  codebook_size: int = 256
  commitment: float = 0.25
  sinkhorn_epsilon: float = 0.003
  sinkhorn_iters: int = 50

  def kinds(self) -> tuple[str, ...]:
    """The embedding kinds this variant reads, in [z_s; z_c] order."""
    return tuple(k for k in KINDS if k in self.dims)

  def level_dim(self, name: str) -> int:
    """Code width of one level: latent_dim for shared levels, latent_dim // 2 otherwise."""
    return self.latent_dim if name in self.plan.shared else self.latent_dim // 2

  def setup(self):
    half = self.latent_dim // 2
    self.encoders = {
        k: MLP((*self.hidden_dims, half), name=f"encoder_{k}") for k in self.kinds()
    }
    self.decoders = {
        k: MLP((*reversed(self.hidden_dims), self.dims[k]), name=f"decoder_{k}")
        for k in self.kinds()
    }
    init = nn.initializers.uniform(scale=2.0 / self.codebook_size)
    self.codebooks = {
        name: self.param(f"codebook_{name}", init, (self.codebook_size, self.level_dim(name)))
        for name in self.plan.all_levels
    }

  def encode(self, inputs: dict[str, jax.Array]) -> jax.Array:
    """r_0: the concatenated latents of the used embeddings, [B, latent_dim or d]."""
    return jnp.concatenate([self.encoders[k](inputs[k]) for k in self.kinds()], axis=-1)

  def quantize(self, r0_BxD: jax.Array, balanced: bool) -> dict[str, Any]:
    """The residual walk with this module's codebooks (see `residual_walk`)."""

    def level_fn(name, r, use_sinkhorn):
      return quantize_level(
          r, self.codebooks[name], self.commitment, use_sinkhorn,
          self.sinkhorn_epsilon, self.sinkhorn_iters,
      )

    return residual_walk(self.plan, r0_BxD, level_fn, balanced)

  def decode(self, z_hat: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Reconstructions of the used embeddings from their quantized latents."""
    return {k: self.decoders[k](z_hat[k]) for k in self.kinds()}

  def __call__(self, inputs: dict[str, jax.Array], train: bool = False):
    """Full forward pass.

    Args:
      inputs: {"semantic": v_s [B, d_s], "collaborative": v_c [B, d_c]} (used kinds).
      train: training mode (Sinkhorn on the balanced levels).

    Returns:
      (loss, aux): loss = Σ recon mse + mean of the level losses; aux holds
      `recon`, `rq`, `codes` {level: [B]}, `levels` {level: LevelOutput}.
    """
    walk = self.quantize(self.encode(inputs), balanced=train)
    recon = self.decode(walk["z_hat"])
    recon_loss = sum(jnp.mean((recon[k] - inputs[k]) ** 2) for k in self.kinds())
    level_losses = [walk["levels"][n].loss for n in self.plan.all_levels]
    rq_loss = sum(level_losses) / len(level_losses)
    aux = {
        "recon": recon_loss,
        "rq": rq_loss,
        "codes": {n: walk["levels"][n].codes for n in self.plan.all_levels},
        "levels": walk["levels"],
    }
    return recon_loss + rq_loss, aux
