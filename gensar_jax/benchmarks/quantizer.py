"""Residual-quantizer training speed at Electronics size, against this machine's matmul rate.

  python -m gensar_jax.benchmarks.quantizer [--items=63001] [--epochs=4] [--batch_size=1024]

Random inputs of the paper's Electronics size (63,001 items, 768-d semantic and 64-d
collaborative embeddings), the docs/design.md §3 quantizer (joint, L_m = L_n = 2, K = 256,
Sinkhorn on the two last levels) and the training loop of the identifiers stage
(`train.make_epoch_runner`: whole epochs scanned on device). Prints:
  - the fp32 matmul rate of this machine, measured in the same run (a 2048³ product
    and the quantizer's largest layer shape);
  - the FLOPs of one training step, counted by hand (matmuls of the MLPs' forward and
    backward passes, the distance matrices, Sinkhorn's elementwise work) and, as a
    cross-check, XLA's own count for the compiled step;
  - steps/s and achieved GFLOP/s of the epoch runner, the share of the matmul rate,
    and the projected time of the full run (`--full_epochs`, 500 in the paper);
  - the same step without Sinkhorn, to show what balanced assignment costs.
Timed rounds (one epoch of each variant, each matmul) are interleaved so that a busy
machine slows them alike; rates are of the best round, with the median beside them.
"""

from __future__ import annotations

import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gensar_jax.identifiers import quantizer
from gensar_jax.identifiers import train as train_lib

_ITEMS = flags.DEFINE_integer("items", 63_001, "Catalog size (Electronics: 63,001).")
_SEM_DIM = flags.DEFINE_integer("semantic_dim", 768, "Semantic embedding width.")
_COL_DIM = flags.DEFINE_integer("collaborative_dim", 64, "Collaborative embedding width.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Items per step.")
_EPOCHS = flags.DEFINE_integer("epochs", 4, "Timed rounds of one epoch each (after a warm-up epoch).")
_FULL_EPOCHS = flags.DEFINE_integer("full_epochs", 500, "Epochs of the projected full run.")
_NO_SINKHORN = flags.DEFINE_bool("compare_no_sinkhorn", True, "Also time steps without Sinkhorn.")


def identifiers_config(batch_size: int, sinkhorn_epsilon: float = 0.003) -> ml_collections.ConfigDict:
  """The docs/design.md §3 quantizer settings (the paper preset of configs/amazon.py)."""
  return ml_collections.ConfigDict(dict(
      variant="joint", num_shared_levels=2, num_specific_levels=2, codebook_size=256,
      latent_dim=64, hidden_dims=(512, 256, 128, 64), commitment=0.25,
      sinkhorn_epsilon=sinkhorn_epsilon, sinkhorn_iters=50, learning_rate=1e-3,
      weight_decay=1e-5, batch_size=batch_size, epochs=500, warmup_epochs=50, grad_clip=1.0,
      eval_every_epochs=10,
  ))


def mlp_flops(widths: tuple[int, ...], batch: int, input_grad: bool) -> tuple[int, int]:
  """(forward, backward) matmul FLOPs of a dense stack; 2 FLOPs per multiply-add.

  Backward = weight gradients plus input gradients of every layer, except the first
  layer's input gradient when the stack's input needs none (an encoder reading data).
  """
  fwd = sum(2 * batch * a * b for a, b in zip(widths[:-1], widths[1:]))
  first = 2 * batch * widths[0] * widths[1]
  bwd = 2 * fwd - (0 if input_grad else first)
  return fwd, bwd


def step_flops(model: quantizer.RQVAE, batch: int) -> dict[str, float]:
  """Hand count of one training step's FLOPs, by part.

  Elementwise work (ReLU, biases, losses, AdamW) is left out except Sinkhorn's, as
  `quantizer.sinkhorn_log` does it, per entry of the [B, K] plan: 5 operations for
  each of the two log-domain normalisations (max, subtract, exp, sum, subtract; exp
  counted as one), 1 for exp(log_P), 2 matrix-vector multiply-adds (4 FLOPs) for each
  of the other iterations, 2 to add the scalings back (absorptions, rare, not counted).
  """
  half = model.latent_dim // 2
  parts = {"mlp_forward": 0.0, "mlp_backward": 0.0}
  for kind, d_in in model.dims.items():
    del kind
    enc = (d_in, *model.hidden_dims, half)
    for widths, input_grad in ((enc, False), (tuple(reversed(enc)), True)):
      f, b = mlp_flops(widths, batch, input_grad)
      parts["mlp_forward"] += f
      parts["mlp_backward"] += b
  k = model.codebook_size
  parts["distances"] = float(sum(2 * batch * k * model.level_dim(n) for n in model.plan.all_levels))
  balanced = len(model.plan.balanced_levels()) if model.sinkhorn_epsilon > 0 else 0
  per_entry = 2 * 5 + 1 + 4 * (model.sinkhorn_iters - 1) + 2
  parts["sinkhorn"] = float(balanced * per_entry * batch * k)
  parts["total"] = float(sum(parts.values()))
  return parts


def make_matmul(m: int, k: int, n: int):
  """A jitted chain of fp32 [m, k] @ [k, n] products (~20 GFLOP) and its FLOP count."""
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
  reps = max(1, int(2e10 // (2 * m * k * n)))

  @jax.jit
  def chain(a, b):
    def body(i, acc):
      return acc + (a + i.astype(a.dtype) * 1e-9) @ b
    return jax.lax.fori_loop(0, reps, body, jnp.zeros((m, n), jnp.float32))

  chain(a, b).block_until_ready()
  return (lambda: chain(a, b).block_until_ready()), reps * 2 * m * k * n


def prepare_runner(model, cfg, data):
  """Initialises the quantizer and compiles the epoch runner for one epoch.

  Returns:
    (run_epoch() -> None, steps per epoch, compile seconds, XLA's FLOPs of one step).
  """
  n, batch = next(iter(data.values())).shape[0], int(cfg.batch_size)
  steps_per_epoch = train_lib.num_epoch_steps(n, batch)
  first = {k: v[:batch] for k, v in data.items()}
  params = train_lib.init_params(model, first, jax.random.key(0), kmeans_iters=10)
  tx = train_lib.make_optimizer(cfg, steps_per_epoch)
  state = [(params, tx.init(params))]
  runner = train_lib.make_epoch_runner(model, tx, batch)
  epoch = [0]
  t0 = time.perf_counter()
  compiled = runner.lower(state[0], data, jax.random.key(1), jnp.arange(1)).compile()
  compile_s = time.perf_counter() - t0
  try:  # XLA's count of one step (loop bodies such as Sinkhorn's are counted once).
    step = jax.jit(train_lib.make_train_step(model, tx))
    cost = step.lower(state[0], first).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan")))
  except Exception:  # pylint: disable=broad-except
    xla_flops = float("nan")

  def run_epoch():
    state[0], metrics = compiled(state[0], data, jax.random.key(1), jnp.arange(1) + epoch[0])
    epoch[0] += 1
    if not np.all(np.isfinite(np.asarray(metrics))):
      raise RuntimeError(f"non-finite training metrics: {metrics}")

  run_epoch()  # warm-up
  return run_epoch, steps_per_epoch, compile_s, xla_flops


def timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def main(argv):
  del argv
  print(f"devices {jax.devices()}, os.cpu_count() {os.cpu_count()}, "
        f"load average at start {os.getloadavg()}")
  matmuls = {"2048^3": make_matmul(2048, 2048, 2048),
             f"{_BATCH.value}x{_SEM_DIM.value}x512": make_matmul(_BATCH.value, _SEM_DIM.value, 512)}

  rng = np.random.default_rng(0)
  semantic = rng.standard_normal((_ITEMS.value, _SEM_DIM.value), np.float32)
  semantic /= np.linalg.norm(semantic, axis=1, keepdims=True)
  data = {
      "semantic": jnp.asarray(semantic),
      "collaborative": jnp.asarray(rng.standard_normal((_ITEMS.value, _COL_DIM.value), np.float32)),
  }
  dims = {"semantic": _SEM_DIM.value, "collaborative": _COL_DIM.value}
  variants = [("with Sinkhorn", 0.003)] + ([("no Sinkhorn", 0.0)] if _NO_SINKHORN.value else [])
  runners = {}
  n, batch = _ITEMS.value, _BATCH.value
  for label, eps in variants:
    cfg = identifiers_config(batch, eps)
    model = train_lib.build_model(cfg, dims)
    # Every FLOP term is linear in the batch, so an epoch (N // B full batches and one
    # short one) costs the per-item count times N.
    per_item = step_flops(model, 1)
    runners[label] = (step_flops(model, batch), per_item["total"] * n,
                      *prepare_runner(model, cfg, data))

  # Rounds interleave every measurement, so that a busy machine slows them alike; the
  # best round of each is reported (and the median, for the spread).
  secs = {k: [] for k in [*matmuls, *runners]}
  for _ in range(_EPOCHS.value):
    for name, (fn, _) in matmuls.items():
      secs[name].append(timed(fn))
    for label, (_, _, run_epoch, *_) in runners.items():
      secs[label].append(timed(run_epoch))
  mm_rate = {name: flops / min(secs[name]) / 1e9 for name, (_, flops) in matmuls.items()}
  mm_median = {name: flops / np.median(secs[name]) / 1e9 for name, (_, flops) in matmuls.items()}
  print("fp32 matmul GFLOP/s (best / median of rounds): " + "; ".join(
      f"{name} {mm_rate[name]:.1f} / {mm_median[name]:.1f}" for name in matmuls))
  peak, peak_median = mm_rate["2048^3"], mm_median["2048^3"]
  for label, (flops, epoch_flops, _, spe, compile_s, xla) in runners.items():
    best_s, median_s = min(secs[label]), float(np.median(secs[label]))
    gflops, gflops_median = epoch_flops / best_s / 1e9, epoch_flops / median_s / 1e9
    print(f"[{label}] {_EPOCHS.value} rounds of one epoch ({spe} steps: {n // batch} x {batch} "
          f"items + {n % batch}; compile {compile_s:.1f} s): best {best_s:.2f} s/epoch = "
          f"{spe / best_s:.2f} steps/s ({1e3 * best_s / spe:.1f} ms/step), median "
          f"{median_s:.2f} s/epoch")
    print(f"[{label}] FLOP per full step by hand {flops['total'] / 1e9:.3f} G ("
          + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in flops.items() if k != "total")
          + f"); XLA's count {xla / 1e9:.3f} G; per epoch {epoch_flops / 1e12:.3f} T")
    print(f"[{label}] achieved {gflops:.1f} GFLOP/s = {gflops / peak:.0%} of the 2048^3 matmul "
          f"rate (median rounds: {gflops_median:.1f} = {gflops_median / peak_median:.0%}); "
          f"{_FULL_EPOCHS.value} epochs = {spe * _FULL_EPOCHS.value} steps, "
          f"{epoch_flops * _FULL_EPOCHS.value / 1e12:.0f} TFLOP, projected "
          f"{best_s * _FULL_EPOCHS.value / 60:.1f} min (median rounds: "
          f"{median_s * _FULL_EPOCHS.value / 60:.1f} min)")
  print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
