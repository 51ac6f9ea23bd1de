"""T5 encoder-decoder in Flax linen, with a decoder step API for beam search.

One model, three ways to run it (all through `model.apply(params, ..., method=...)`):
  * `__call__`: teacher forcing, logits over the whole vocabulary (training);
  * `encode` + `cross_kv` + `decode_step` + `project`: incremental decoding where the
    cross-attention keys/values are computed once per example and shared by its W beams,
    the self-attention keys/values live in a `[L, B, W, T, H, Dk]` cache, and logits
    can be computed for a subset of token ids only;
  * `init_cache`: zeros for that cache.

The math is T5's: RMS layer norm (no bias, no mean), dense layers without biases,
unscaled dot-product attention, relative position buckets (bidirectional in the
encoder, causal in the decoder) whose bias is computed once per stack and shared by its
layers, shared input/output embeddings (v1.0: decoder output scaled by d_model**-0.5)
or an untied `lm_head` (v1.1), ReLU or gated-GELU feed-forward, dropout.
Dropout draws its masks from a counter-based integer hash of each element's index
(`keep_mask`), seeded once per call from the "dropout" rng: about a fifth of the work
of `jax.random.bernoulli`'s threefry masks, which on CPU took over a quarter of a
t5-small train step; masks stay deterministic in the rng and independent of how the
batch is sharded.
Training takes three gradients by hand (`relu_dropout_mlp`, `softmax_dropout`,
`add_shared_bias`; equal to autodiff's up to float rounding, tests/test_t5.py): the
dropout masks are read back from the kept activations instead of recomputed, and the
weight and position-bias gradients are laid out so XLA:CPU needs no slow transposing or
single-threaded passes (issue 23: the cpu preset's step ~1.35x faster). Every dense
layer multiplies its input as one `[rows, D]` matrix (`matmul_rows`), so the weight
gradients are 2-D products without transposing copies (a further ~1.15x).
Parameters are float32; `T5Config.dtype` is the activation/compute dtype.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

FEED_FORWARDS = ("relu", "gated-gelu")
_MASKED = -1e9  # Additive attention bias of a masked key (finite: no NaN rows).


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Architecture of a T5 model (t5-small: 512/2048/6+6/8 heads/d_kv 64)."""

  vocab_size: int
  d_model: int
  d_ff: int
  num_encoder_layers: int
  num_decoder_layers: int
  num_heads: int
  d_kv: int
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  dropout_rate: float = 0.1
  layer_norm_epsilon: float = 1e-6
  dtype: str = "float32"  # Activation/compute dtype; parameters stay float32.
  pad_id: int = 0
  eos_id: int = 1
  decoder_start_id: int = 0
  tie_word_embeddings: bool = True  # v1.0: logits = hidden * d_model**-0.5 @ E.T.
  feed_forward: str = "relu"  # "relu" (v1.0) or "gated-gelu" (v1.1).
  # Not architecture, and not saved: the mesh axis the batch is split over while the
  # model runs on one device's rows inside `shard_map` (the train step sets it). Dropout
  # then hashes each element's index in the whole batch, so the masks do not depend on
  # how many devices share it.
  batch_axis: str | None = None

  def __post_init__(self):
    if self.feed_forward not in FEED_FORWARDS:
      raise ValueError(f"feed_forward must be one of {FEED_FORWARDS}, got {self.feed_forward!r}")
    jnp.dtype(self.dtype)  # Raises on an unknown dtype name.

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @classmethod
  def from_config(cls, model_config: Any, vocab_size: int) -> "T5Config":
    """Builds a T5Config from the `model` section of the pipeline config.

    Args:
      model_config: `config.model` (an ml_collections.ConfigDict or a dict).
      vocab_size: the tokenizer's vocabulary size (added tokens included).
    Returns:
      The T5Config; fields the section lacks keep their defaults.
    """
    get = model_config.get
    kwargs = dict(vocab_size=int(vocab_size))
    for field in dataclasses.fields(cls):
      if field.name != "vocab_size" and get(field.name, None) is not None:
        kwargs[field.name] = get(field.name)
    return cls(**kwargs)

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict of every field but the runtime `batch_axis`."""
    d = dataclasses.asdict(self)
    del d["batch_axis"]
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "T5Config":
    """Inverse of `to_dict` (unknown keys are an error)."""
    return cls(**d)


class CrossKV(NamedTuple):
  """Cross-attention keys and values of every decoder layer, once per example."""

  k: jax.Array  # [L, B, H, S, Dk]
  v: jax.Array  # [L, B, H, S, Dk]


class SelfCache(NamedTuple):
  """Decoder self-attention keys and values of every layer, per beam and position."""

  k: jax.Array  # [L, B, W, T, H, Dk]
  v: jax.Array  # [L, B, W, T, H, Dk]


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
  """T5's bucket of each relative position `key_position - query_position`.

  Half the buckets (all of them when causal) hold exact distances below
  `num_buckets // 2` (of the half); the rest grow logarithmically up to
  `max_distance`, beyond which everything shares the last bucket. Bidirectional:
  keys after the query use the upper half. Causal: keys after the query map to 0.

  Args:
    relative_position: int array of key minus query positions.
    bidirectional: encoder (True) or decoder (False) buckets.
    num_buckets: total number of buckets.
    max_distance: distance from which the last bucket is used.
  Returns:
    int32 array of bucket ids, same shape.
  """
  rel = jnp.asarray(relative_position, jnp.int32)
  bucket = jnp.zeros_like(rel)
  if bidirectional:
    num_buckets //= 2
    bucket = bucket + (rel > 0).astype(jnp.int32) * num_buckets
    distance = jnp.abs(rel)
  else:
    distance = jnp.maximum(-rel, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  # log of 0 is never used (is_small covers it); clamp to keep the math finite.
  ratio = jnp.maximum(distance, 1).astype(jnp.float32) / max_exact
  large = max_exact + (
      jnp.log(ratio) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
  ).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return bucket + jnp.where(is_small, distance, large)


def _normal(stddev: float):
  return nn.initializers.normal(stddev=stddev)


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective avalanche hash of uint32 values (xor-shift / multiply rounds)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def keep_mask(seed_2: jax.Array, shape: tuple[int, ...], rate: float,
              offset: jax.Array | int = 0) -> jax.Array:
  """Bernoulli(1 - rate) keep mask: a hash of each element's row-major index and a seed.

  Each element's flat index (mod 2**32) is spread by an odd multiplier, offset by
  `seed_2[0]`, hashed, xor-ed with `seed_2[1]` and hashed again; the element is kept
  when the result is at least `rate * 2**32`. Built from per-dimension iotas, so a
  sharded array gets the same mask as an unsharded one.

  Args:
    seed_2: uint32 `[2]` (e.g. `jax.random.bits(key, (2,), jnp.uint32)`).
    shape: the mask's shape (up to 2**32 elements; larger masks repeat).
    rate: drop probability in [0, 1).
    offset: added to every flat index (uint32 scalar, may be traced): the mask of rows
      `[r, r + shape[0])` of a larger array is the larger mask's slice at offset
      `r * prod(shape[1:])`.
  """
  index = jnp.zeros(shape, jnp.uint32) + jnp.asarray(offset, jnp.uint32)
  stride = 1
  for d in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
    stride *= shape[d]
  x = _mix32(index * jnp.uint32(0x9E3779B9) + seed_2[0])
  x = _mix32(x ^ seed_2[1])
  return x >= jnp.uint32(min(int(round(rate * 2**32)), 2**32 - 1))


class Dropout(nn.Module):
  """Inverted dropout (drop with probability `rate`, scale kept values by 1/(1-rate)).

  With `batch_axis` (`T5Config.batch_axis`, inside `shard_map`) the input's leading axis
  is this device's slice of a batch split evenly over that mesh axis, and the mask is
  that slice of the whole batch's mask.
  """

  rate: float
  batch_axis: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if not self.draws(deterministic):
      return jnp.zeros_like(x) if not deterministic and self.rate >= 1.0 else x
    return jnp.where(self.keep(x.shape), x / (1.0 - self.rate), 0).astype(x.dtype)

  def draws(self, deterministic: bool) -> bool:
    """Whether a call draws a keep mask (training with 0 < rate < 1)."""
    return not deterministic and 0.0 < self.rate < 1.0

  def keep(self, shape: tuple[int, ...]) -> jax.Array:
    """The keep mask `__call__` would draw for an input of `shape` (when it `draws`)."""
    seed_2 = jax.random.bits(self.make_rng("dropout"), (2,), jnp.uint32)
    offset = 0
    if self.batch_axis is not None:  # This device's rows start at index * rows.
      offset = jax.lax.axis_index(self.batch_axis).astype(jnp.uint32) * jnp.uint32(
          math.prod(shape) % 2**32)
    return keep_mask(seed_2, shape, self.rate, offset)


def _mask_bias(mask: jax.Array) -> jax.Array:
  """Additive float32 bias: 0 where `mask` is True, a large negative number elsewhere."""
  return jnp.where(mask, 0.0, _MASKED).astype(jnp.float32)


class RMSNorm(nn.Module):
  """T5 layer norm: x / rms(x) * scale (no mean subtraction, no bias)."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.config.layer_norm_epsilon)
    return (y * scale).astype(self.config.compute_dtype)


def matmul_rows(x_xD: jax.Array, w_DxN: jax.Array, **kwargs) -> jax.Array:
  """`x @ w` over the last axis, taken as one 2-D product of all rows `[-1, D] @ [D, N]`.

  The same numbers as `x @ w`; the point is the weight gradient, which autodiff then
  takes as a 2-D contraction over rows. From `[B, S, D]` operands XLA:CPU contracts over
  two axes and adds transposing copies of the activations (a train step's weight
  gradients ~2x slower, issue 23). `kwargs` go to `jnp.matmul` (preferred_element_type).
  """
  y_xN = jnp.matmul(x_xD.reshape(-1, x_xD.shape[-1]), w_DxN, **kwargs)
  return y_xN.reshape(x_xD.shape[:-1] + (w_DxN.shape[-1],))


class _Kernel(nn.Module):
  """A dense layer's `kernel` alone: the parameter tree of `nn.Dense(use_bias=False)`."""

  shape: tuple[int, int]
  stddev: float

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param("kernel", _normal(self.stddev), self.shape, jnp.float32)


class _Dense(nn.Module):
  """`nn.Dense(use_bias=False, dtype=compute dtype)` (the same parameter tree and
  initialisation) applied with `matmul_rows`."""

  features: int
  stddev: float
  dtype: Any

  @nn.compact
  def __call__(self, x_xD: jax.Array) -> jax.Array:
    kernel = self.param("kernel", _normal(self.stddev), (x_xD.shape[-1], self.features),
                        jnp.float32)
    return matmul_rows(x_xD.astype(self.dtype), kernel.astype(self.dtype))


def _relu_dropout_mlp_fwd(x_xD, wi_DxF, wo_FxD, keep_xF, rate):
  a_xF = jnp.where(keep_xF, jax.nn.relu(x_xD @ wi_DxF) / (1.0 - rate), 0).astype(x_xD.dtype)
  return a_xF @ wo_FxD, (x_xD, wi_DxF, wo_FxD, a_xF)


def _relu_dropout_mlp_bwd(rate, residuals, g_xD):
  x_xD, wi_DxF, wo_FxD, a_xF = residuals
  da_xF = g_xD @ wo_FxD.T
  # relu's and dropout's joint mask is exactly where the kept activation is positive.
  dh_xF = jnp.where(a_xF > 0, da_xF / (1.0 - rate), 0).astype(da_xF.dtype)
  rows = tuple(range(x_xD.ndim - 1))  # every axis but the features
  dwi_DxF = jnp.tensordot(x_xD, dh_xF, axes=(rows, rows))
  # g^T @ a, then a transpose of the small result: the matmul's transposed operand is
  # then the D-wide gradient, not the 4x wider activation.
  dwo_FxD = jnp.tensordot(g_xD, a_xF, axes=(rows, rows)).T
  return dh_xF @ wi_DxF.T, dwi_DxF, dwo_FxD, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def relu_dropout_mlp(x_xD, wi_DxF, wo_FxD, keep_xF, rate: float):
  """`where(keep, relu(x @ wi) / (1 - rate), 0) @ wo`, T5's relu feed-forward in training.

  Its gradient is autodiff's, but the backward pass needs only the kept activation `a`
  (the matmul input the `wo` gradient reads anyway): relu's and dropout's joint mask is
  `a > 0`, so neither the pre-activation nor the dropout mask is stored or recomputed
  (on XLA:CPU the recomputed hash fused into the weight gradient's transposing copy
  was the step's costliest op).
  """
  return _relu_dropout_mlp_fwd(x_xD, wi_DxF, wo_FxD, keep_xF, rate)[0]


relu_dropout_mlp.defvjp(_relu_dropout_mlp_fwd, _relu_dropout_mlp_bwd)


class FeedForward(nn.Module):
  """wo(dropout(act(wi x))) (relu), or wo(dropout(gelu(wi_0 x) * wi_1 x)) (gated-gelu)."""

  config: T5Config

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    c = self.config
    cd = c.compute_dtype
    drop = Dropout(c.dropout_rate, c.batch_axis, name="Dropout_0")
    if c.feed_forward == "relu":
      wi = _Kernel((c.d_model, c.d_ff), c.d_model**-0.5, name="wi")().astype(cd)
      wo = _Kernel((c.d_ff, c.d_model), c.d_ff**-0.5, name="wo")().astype(cd)
      x = x.astype(cd)
      if not drop.draws(deterministic):
        return matmul_rows(drop(jax.nn.relu(matmul_rows(x, wi)), deterministic=deterministic), wo)
      keep_xF = drop.keep(x.shape[:-1] + (c.d_ff,)).reshape(-1, c.d_ff)
      y_xD = relu_dropout_mlp(x.reshape(-1, c.d_model), wi, wo, keep_xF, c.dropout_rate)
      return y_xD.reshape(x.shape)
    dense = lambda n, fan_in, name: _Dense(n, fan_in**-0.5, cd, name=name)
    h = jax.nn.gelu(dense(c.d_ff, c.d_model, "wi_0")(x), approximate=True)
    h = drop(h * dense(c.d_ff, c.d_model, "wi_1")(x), deterministic=deterministic)
    return dense(c.d_model, c.d_ff, "wo")(h)


def _softmax_dropout_fwd(logits, keep, rate):
  p = jax.nn.softmax(logits, axis=-1)
  w = jnp.where(keep, p / (1.0 - rate), 0).astype(p.dtype)
  return w, (p, w)


def _softmax_dropout_bwd(rate, residuals, g_w):
  p, w = residuals
  # Dropout's mask is `w != 0` wherever it matters: where the softmax is exactly 0 the
  # gradient below is multiplied by p = 0 whatever the mask says.
  g_p = jnp.where(w != 0, g_w / (1.0 - rate), 0).astype(g_w.dtype)
  return p * (g_p - jnp.sum(g_p * p, axis=-1, keepdims=True)), None


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def softmax_dropout(logits: jax.Array, keep: jax.Array, rate: float) -> jax.Array:
  """`where(keep, softmax(logits) / (1 - rate), 0)`: attention weights in training.

  The backward pass reads the mask back from the output it keeps anyway (the weights the
  value product's gradient needs), so the dropout hash is not recomputed over the
  `[B, H, Q, K]` weights; the gradient is softmax's usual `p * (g - sum(g * p))`.
  """
  return _softmax_dropout_fwd(logits, keep, rate)[0]


softmax_dropout.defvjp(_softmax_dropout_fwd, _softmax_dropout_bwd)


@jax.custom_vjp
def add_shared_bias(x_BxHxQxK: jax.Array, bias_1xHxQxK: jax.Array) -> jax.Array:
  """`x + bias` for a bias shared by the whole batch (the relative position bias).

  The bias's gradient, a sum over the batch, is taken as a `[1, B] @ [B, H*Q*K]`
  product with ones: XLA:CPU ran the equivalent reduction single-threaded and strided
  (~10% of a cpu-preset step); the matmul is one multi-threaded pass.
  """
  return x_BxHxQxK + bias_1xHxQxK


def _add_shared_bias_fwd(x, bias):
  return x + bias, None


def _add_shared_bias_bwd(_, g_BxHxQxK):
  b = g_BxHxQxK.shape[0]
  ones_1xB = jnp.ones((1, b), g_BxHxQxK.dtype)
  g_bias = (ones_1xB @ g_BxHxQxK.reshape(b, -1)).reshape((1,) + g_BxHxQxK.shape[1:])
  return g_BxHxQxK, g_bias


add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


def _heads_first(x_BxSxHxK: jax.Array) -> jax.Array:
  """`[B, S, H, Dk]` -> `[B, H, S, Dk]`."""
  return jnp.swapaxes(x_BxSxHxK, 1, 2)


class Attention(nn.Module):
  """Multi-head attention projections (no biases, no 1/sqrt(d) scaling, as in T5)."""

  config: T5Config

  def setup(self):
    c = self.config
    inner = c.num_heads * c.d_kv
    dense = lambda n, std: _Dense(n, std, c.compute_dtype)
    # T5's initialisation folds the 1/sqrt(d_kv) attention scale into the query.
    self.query = dense(inner, (c.d_model * c.d_kv) ** -0.5)
    self.key = dense(inner, c.d_model**-0.5)
    self.value = dense(inner, c.d_model**-0.5)
    self.out = dense(c.d_model, inner**-0.5)
    self.dropout = Dropout(c.dropout_rate, c.batch_axis)

  def _heads(self, x: jax.Array) -> jax.Array:
    return x.reshape(x.shape[:-1] + (self.config.num_heads, self.config.d_kv))

  def q(self, x_xD: jax.Array) -> jax.Array:
    """Queries `[..., H, Dk]`."""
    return self._heads(self.query(x_xD))

  def kv(self, x_xD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Keys and values `[..., H, Dk]`."""
    return self._heads(self.key(x_xD)), self._heads(self.value(x_xD))

  def merge(self, o_xHxK: jax.Array) -> jax.Array:
    """Output projection of per-head values `[..., H, Dk]` back to `[..., D]`."""
    return self.out(o_xHxK.reshape(o_xHxK.shape[:-2] + (-1,)))

  def weights(self, logits: jax.Array, deterministic: bool) -> jax.Array:
    """Softmax (float32) over the last axis, dropout, cast to the compute dtype."""
    if self.dropout.draws(deterministic):
      w = softmax_dropout(logits, self.dropout.keep(logits.shape), self.dropout.rate)
    else:
      w = self.dropout(jax.nn.softmax(logits, axis=-1), deterministic=deterministic)
    return w.astype(self.config.compute_dtype)

  def __call__(
      self, xq_BxQxD: jax.Array, xkv_BxKxD: jax.Array, bias, deterministic: bool
  ) -> jax.Array:
    """Full-sequence attention; `bias` broadcasts to `[B, H, Q, K]` (float32), or is a
    tuple of such terms added in order (the encoder passes its position bias `[1, H, S,
    S]` and padding mask `[B, 1, 1, S]` apart, so no `[B, H, S, S]` sum is stored).

    Heads are moved next to the batch axis before the two batched matmuls (XLA:CPU
    runs `[B, H, ...]` operands much faster than heads in the middle).
    """
    q_BxHxQxK = _heads_first(self.q(xq_BxQxD))
    k, v = self.kv(xkv_BxKxD)
    k_BxHxKxK, v_BxHxKxK = _heads_first(k), _heads_first(v)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q_BxHxQxK, k_BxHxKxK,
                        preferred_element_type=jnp.float32)
    for term in (bias if isinstance(bias, tuple) else (bias,)):
      if term.ndim == 4 and term.shape[0] == 1 < logits.shape[0]:
        logits = add_shared_bias(logits, term)
      else:
        logits = logits + term
    w_BxHxQxK = self.weights(logits, deterministic)
    o_BxHxQxK = jnp.einsum("bhqk,bhkd->bhqd", w_BxHxQxK, v_BxHxKxK)
    return self.merge(jnp.swapaxes(o_BxHxQxK, 1, 2))


class EncoderLayer(nn.Module):
  """Pre-norm self-attention and feed-forward blocks with residuals."""

  config: T5Config

  @nn.compact
  def __call__(self, x_BxSxD, bias, deterministic):
    """`bias`: terms that add up to `[B, H, S, S]` (see `Attention`)."""
    c = self.config
    drop = Dropout(c.dropout_rate, c.batch_axis)
    y = RMSNorm(c, name="pre_attention_norm")(x_BxSxD)
    y = Attention(c, name="attention")(y, y, bias, deterministic)
    x_BxSxD = x_BxSxD + drop(y, deterministic=deterministic)
    y = FeedForward(c, name="mlp")(RMSNorm(c, name="pre_mlp_norm")(x_BxSxD), deterministic)
    return x_BxSxD + drop(y, deterministic=deterministic)


class DecoderLayer(nn.Module):
  """Self-attention, cross-attention and feed-forward blocks, full-sequence or one step."""

  config: T5Config

  def setup(self):
    c = self.config
    self.pre_self_attention_norm = RMSNorm(c)
    self.self_attention = Attention(c)
    self.pre_cross_attention_norm = RMSNorm(c)
    self.cross_attention = Attention(c)
    self.pre_mlp_norm = RMSNorm(c)
    self.mlp = FeedForward(c)
    self.drop = Dropout(c.dropout_rate, c.batch_axis)

  def __call__(self, x_BxTxD, enc_BxSxD, self_bias, cross_bias, deterministic):
    """Teacher forcing over the whole target sequence."""
    y = self.pre_self_attention_norm(x_BxTxD)
    y = self.self_attention(y, y, self_bias, deterministic)
    x_BxTxD = x_BxTxD + self.drop(y, deterministic=deterministic)
    y = self.pre_cross_attention_norm(x_BxTxD)
    y = self.cross_attention(y, enc_BxSxD, cross_bias, deterministic)
    x_BxTxD = x_BxTxD + self.drop(y, deterministic=deterministic)
    y = self.mlp(self.pre_mlp_norm(x_BxTxD), deterministic)
    return x_BxTxD + self.drop(y, deterministic=deterministic)

  def cross_kv(self, enc_BxSxD):
    """This layer's cross-attention keys and values `[B, H, S, Dk]` (heads first, as the
    per-step matmuls want them)."""
    k, v = self.cross_attention.kv(enc_BxSxD)
    return _heads_first(k), _heads_first(v)

  def step(self, x_BxWxD, k_BxWxTxHxK, v_BxWxTxHxK, position, self_bias_HxT,
           cross_k_BxHxSxK, cross_v_BxHxSxK, cross_bias_BxS):
    """One token per beam; returns the new hidden state and the updated layer cache."""
    y = self.pre_self_attention_norm(x_BxWxD)
    q_BxWxHxK = self.self_attention.q(y)
    k_new, v_new = self.self_attention.kv(y)
    start = (0, 0, position, 0, 0)
    k_BxWxTxHxK = jax.lax.dynamic_update_slice(
        k_BxWxTxHxK, k_new[:, :, None].astype(k_BxWxTxHxK.dtype), start)
    v_BxWxTxHxK = jax.lax.dynamic_update_slice(
        v_BxWxTxHxK, v_new[:, :, None].astype(v_BxWxTxHxK.dtype), start)
    logits = jnp.einsum("bwhd,bwthd->bwht", q_BxWxHxK, k_BxWxTxHxK,
                        preferred_element_type=jnp.float32) + self_bias_HxT
    w = self.self_attention.weights(logits, True)
    o_BxWxHxK = jnp.einsum("bwht,bwthd->bwhd", w, v_BxWxTxHxK)
    x_BxWxD = x_BxWxD + self.self_attention.merge(o_BxWxHxK)

    y = self.pre_cross_attention_norm(x_BxWxD)
    q_BxWxHxK = self.cross_attention.q(y)
    # Each example's keys/values serve all of its W beams: no tiling.
    logits = jnp.einsum("bwhd,bhsd->bwhs", q_BxWxHxK, cross_k_BxHxSxK,
                        preferred_element_type=jnp.float32)
    logits = logits + cross_bias_BxS[:, None, None, :]
    w = self.cross_attention.weights(logits, True)
    o_BxWxHxK = jnp.einsum("bwhs,bhsd->bwhd", w, cross_v_BxHxSxK)
    x_BxWxD = x_BxWxD + self.cross_attention.merge(o_BxWxHxK)

    x_BxWxD = x_BxWxD + self.mlp(self.pre_mlp_norm(x_BxWxD), True)
    return x_BxWxD, k_BxWxTxHxK, v_BxWxTxHxK


class Encoder(nn.Module):
  """Embedded source -> encoder output (after the final norm and dropout)."""

  config: T5Config

  @nn.compact
  def __call__(self, x_BxSxD, src_mask_BxS, deterministic):
    c = self.config
    s = x_BxSxD.shape[1]
    pos = jnp.arange(s)
    buckets_SxS = relative_position_bucket(
        pos[None, :] - pos[:, None], True, c.relative_attention_num_buckets,
        c.relative_attention_max_distance)
    relpos = nn.Embed(c.relative_attention_num_buckets, c.num_heads,
                      embedding_init=_normal(c.d_model**-0.5), param_dtype=jnp.float32,
                      name="relpos_bias")
    bias_HxSxS = jnp.transpose(relpos(buckets_SxS), (2, 0, 1)).astype(jnp.float32)
    # Position bias and padding mask stay apart: each layer adds both to its logits in
    # one fused pass instead of reading a stored [B, H, S, S] sum (the same logits:
    # a mask term of 0 adds exactly nothing, a masked key gets zero weight either way).
    bias = (bias_HxSxS[None], _mask_bias(src_mask_BxS)[:, None, None, :])
    drop = Dropout(c.dropout_rate, c.batch_axis)
    x = drop(x_BxSxD, deterministic=deterministic)
    for i in range(c.num_encoder_layers):
      x = EncoderLayer(c, name=f"layer_{i}")(x, bias, deterministic)
    x = RMSNorm(c, name="final_norm")(x)
    return drop(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Decoder stack: teacher forcing (`__call__`) or one step against a cache (`step`)."""

  config: T5Config

  def setup(self):
    c = self.config
    self.relpos_bias = nn.Embed(c.relative_attention_num_buckets, c.num_heads,
                                embedding_init=_normal(c.d_model**-0.5),
                                param_dtype=jnp.float32)
    self.layers = [DecoderLayer(c, name=f"layer_{i}") for i in range(c.num_decoder_layers)]
    self.final_norm = RMSNorm(c)
    self.drop = Dropout(c.dropout_rate, c.batch_axis)

  def _bias(self, rel):
    c = self.config
    buckets = relative_position_bucket(rel, False, c.relative_attention_num_buckets,
                                       c.relative_attention_max_distance)
    return jnp.moveaxis(self.relpos_bias(buckets), -1, 0).astype(jnp.float32)

  def _output(self, x, deterministic):
    x = self.drop(self.final_norm(x), deterministic=deterministic)
    if self.config.tie_word_embeddings:
      x = x * (self.config.d_model**-0.5)
    return x

  def __call__(self, x_BxTxD, enc_BxSxD, src_mask_BxS, deterministic):
    t = x_BxTxD.shape[1]
    pos = jnp.arange(t)
    rel_TxT = pos[None, :] - pos[:, None]
    self_bias = self._bias(rel_TxT)[None] + _mask_bias(rel_TxT <= 0)[None, None]
    cross_bias = _mask_bias(src_mask_BxS)[:, None, None, :]
    x = self.drop(x_BxTxD, deterministic=deterministic)
    for layer in self.layers:
      x = layer(x, enc_BxSxD, self_bias, cross_bias, deterministic)
    return self._output(x, deterministic)

  def cross_kv(self, enc_BxSxD) -> CrossKV:
    kvs = [layer.cross_kv(enc_BxSxD) for layer in self.layers]
    return CrossKV(jnp.stack([k for k, _ in kvs]), jnp.stack([v for _, v in kvs]))

  def step(self, x_BxWxD, position, cache: SelfCache, cross: CrossKV, src_mask_BxS):
    t = cache.k.shape[3]
    rel_T = jnp.arange(t) - position
    self_bias_HxT = self._bias(rel_T) + _mask_bias(rel_T <= 0)[None]
    cross_bias_BxS = _mask_bias(src_mask_BxS)
    ks, vs = [], []
    x = x_BxWxD
    for l, layer in enumerate(self.layers):
      x, k, v = layer.step(x, cache.k[l], cache.v[l], position, self_bias_HxT,
                           cross.k[l], cross.v[l], cross_bias_BxS)
      ks.append(k)
      vs.append(v)
    return self._output(x, True), SelfCache(jnp.stack(ks), jnp.stack(vs))


class T5(nn.Module):
  """T5 encoder-decoder; see the module docstring for the methods."""

  config: T5Config

  def setup(self):
    c = self.config
    self.shared = nn.Embed(c.vocab_size, c.d_model, embedding_init=_normal(1.0),
                           param_dtype=jnp.float32)
    self.encoder = Encoder(c)
    self.decoder = Decoder(c)
    if not c.tie_word_embeddings:
      self.lm_head = self.param("lm_head", _normal(c.d_model**-0.5),
                                (c.vocab_size, c.d_model), jnp.float32)

  def _embed(self, ids):
    return self.shared(ids).astype(self.config.compute_dtype)

  def _output_embedding(self) -> jax.Array:
    """`[V, D]` rows whose dot product with the decoder output gives the logits."""
    return self.shared.embedding if self.config.tie_word_embeddings else self.lm_head

  def __call__(self, src_ids_BxS, tgt_in_ids_BxT, *, deterministic: bool = True):
    """Teacher-forced logits `[B, T, V]` (float32).

    Args:
      src_ids_BxS: source token ids, padded with `pad_id` (masked out).
      tgt_in_ids_BxT: decoder inputs (targets shifted right after `decoder_start_id`);
        causal masking makes padding at the end harmless.
      deterministic: False enables dropout (needs a "dropout" rng).
    """
    enc_BxSxD = self.encode(src_ids_BxS, deterministic=deterministic)
    src_mask_BxS = src_ids_BxS != self.config.pad_id
    h_BxTxD = self.decoder(self._embed(tgt_in_ids_BxT), enc_BxSxD, src_mask_BxS,
                           deterministic)
    return self.project(h_BxTxD)

  def encode(self, src_ids_BxS, *, deterministic: bool = True):
    """Encoder output `[B, S, D]` for source ids padded with `pad_id`."""
    src_mask_BxS = src_ids_BxS != self.config.pad_id
    return self.encoder(self._embed(src_ids_BxS), src_mask_BxS, deterministic)

  def cross_kv(self, enc_BxSxD) -> CrossKV:
    """Cross-attention keys/values of every decoder layer, `[L, B, H, S, Dk]` each."""
    return self.decoder.cross_kv(enc_BxSxD.astype(self.config.compute_dtype))

  def init_cache(self, batch: int, beams: int, max_len: int) -> SelfCache:
    """A zero self-attention cache `[L, B, W, T, H, Dk]` (compute dtype)."""
    c = self.config
    shape = (c.num_decoder_layers, batch, beams, max_len, c.num_heads, c.d_kv)
    zeros = jnp.zeros(shape, c.compute_dtype)
    return SelfCache(zeros, zeros)

  def decode_step(self, token_BxW, position, cache: SelfCache, cross: CrossKV,
                  src_mask_BxS):
    """Runs one decoder token for every beam.

    Args:
      token_BxW: int ids of the tokens at `position` (the decoder start token at 0).
      position: int scalar (may be traced), the position of these tokens; the cache
        holds positions `< position`, and must have room for `position`.
      cache: SelfCache `[L, B, W, T, H, Dk]`.
      cross: CrossKV `[L, B, H, S, Dk]` from `cross_kv`, shared by an example's beams.
      src_mask_BxS: bool, True at real (non-pad) source tokens.
    Returns:
      (hidden_BxWxD, new_cache): the decoder output after the final norm (and the tied
      embedding scale), ready for `project`; the cache with `position` written.
    """
    return self.decoder.step(self._embed(token_BxW), position, cache, cross, src_mask_BxS)

  def project(self, hidden_xD, token_ids=None):
    """Logits (float32) from decoder outputs.

    Args:
      hidden_xD: decoder outputs `[..., D]` (from `decode_step` or the decoder).
      token_ids: None for the whole vocabulary `[..., V]`; or int ids `[A]`, or
        `[..., A]` whose leading axes broadcast against `hidden_xD`'s: logits of only
        those tokens `[..., A]` (their embedding rows are gathered first).
    """
    emb_VxD = self._output_embedding().astype(self.config.compute_dtype)
    if token_ids is None:
      return matmul_rows(hidden_xD, emb_VxD.T, preferred_element_type=jnp.float32)
    token_ids = jnp.asarray(token_ids)
    rows = jnp.take(emb_VxD, token_ids, axis=0)  # [..., A, D]
    if token_ids.ndim == 1:
      return jnp.einsum("...d,ad->...a", hidden_xD, rows, preferred_element_type=jnp.float32)
    logits = jnp.matmul(hidden_xD[..., None, :], jnp.swapaxes(rows, -1, -2),
                        preferred_element_type=jnp.float32)
    return logits[..., 0, :]


def init_params(config: T5Config, rng: jax.Array, src_len: int = 8, tgt_len: int = 4):
  """Random parameters `{"params": ...}` (float32) for `config`."""
  src = jnp.ones((1, src_len), jnp.int32)
  tgt = jnp.ones((1, tgt_len), jnp.int32)
  return T5(config).init(rng, src, tgt)
