"""Train-step throughput at t5-small size (DESIGN §9, issue 5): examples/s.

  python -m gensar_jax.benchmarks.train_step [--batch_size=64] [--src_len=128]
      [--tgt_len=6] [--steps=5] [--warmup=2] [--json=PATH]

Times `gensar_jax.train.step` (`make_train_step` + `jit_train_step`, dropout on,
global-norm clipping, AdamW) on a one-device mesh for a randomly initialised T5 with
t5-small dimensions and the reference's vocabulary (32,128 + 1,539 added = 33,667).
Each batch is like the reference harness's (`../shared/bench/refbench/bench.py train`):
random source ids ending with eos, targets = behaviour token + 4 code tokens + eos.
The warm-up steps include compilation; the figure is the median of the timed steps.
Prints the load average beside it: the machine is shared, so compare only with the
reference timed in the same sitting. The process's CPU seconds per step (all threads)
are printed too: unlike wall time they barely move when other processes compete for
the cores, and the reference harness records the same (`own_cpu_mean`).
"""

from __future__ import annotations

import json
import os
import resource
import time

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from gensar_jax import sharding
from gensar_jax.model import t5
from gensar_jax.train import step as step_lib

_BATCH = flags.DEFINE_integer("batch_size", 64, "Examples per step.")
_SRC = flags.DEFINE_integer("src_len", 128, "Source tokens per example.")
_TGT = flags.DEFINE_integer("tgt_len", 6, "Target tokens per example.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first (the first compiles).")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype (float32 is the comparison).")
_JSON = flags.DEFINE_string("json", "", "Write {examples_per_s, peak_rss_gib} here.")

VOCAB = 32128 + 3 + 6 * 256  # The reference's vocabulary: T5's + behaviour + code tokens.


def t5_small(vocab_size: int = VOCAB, dtype: str = "float32") -> t5.T5Config:
  """t5-small dimensions (v1.0: ReLU, tied embeddings), dropout 0.1."""
  return t5.T5Config(vocab_size=vocab_size, d_model=512, d_ff=2048, num_encoder_layers=6,
                     num_decoder_layers=6, num_heads=8, d_kv=64, dtype=dtype)


def random_batch(rng: np.random.Generator, batch: int, src_len: int, tgt_len: int,
                 vocab_size: int = VOCAB) -> dict[str, np.ndarray]:
  """One micro-batch `{"src": [1, B, S], "tgt": [1, B, T]}` shaped like the reference's."""
  src = rng.integers(3, 32000, (batch, src_len)).astype(np.int32)
  src[:, -1] = 1  # eos
  base = 32128
  codes = [base + 3 + slot * 256 + rng.integers(0, 256, batch) for slot in (0, 1, 4, 5)]
  tgt = np.stack([np.full(batch, base)] + codes + [np.ones(batch)], 1).astype(np.int32)
  tgt = tgt[:, :tgt_len]
  return {"src": src[None], "tgt": tgt[None]}


def peak_rss_gib() -> float:
  """This process's peak resident memory (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv):
  del argv
  config = t5_small(dtype=_DTYPE.value)
  model = t5.T5(config)
  params = t5.init_params(config, jax.random.PRNGKey(0))
  train_config = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, warmup_frac=0.01, weight_decay=1e-7, grad_clip=1.0))
  steps = _WARMUP.value + _STEPS.value
  tx, schedule = step_lib.make_optimizer(train_config, total_steps=1000)
  mesh = sharding.make_mesh("data", jax.devices()[:1])
  replicated = sharding.replicated(mesh)
  state = step_lib.init_state(params, tx)
  state_sh = jax.tree.map(lambda _: replicated, state)
  state = jax.device_put(state, state_sh)
  batch_sh = {k: sharding.batch_sharding(mesh, 1, 3) for k in ("src", "tgt")}
  step_fn = step_lib.jit_train_step(step_lib.make_train_step(model, tx, schedule),
                                    state_sh, batch_sh, replicated)
  rng = np.random.default_rng(0)
  batches = [sharding.global_batch(random_batch(rng, _BATCH.value, _SRC.value, _TGT.value),
                                   mesh, batch_dim=1) for _ in range(steps)]
  key = jax.device_put(jax.random.key(1), replicated)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(f"t5-small: {n_params / 1e6:.1f}M parameters, vocabulary {config.vocab_size}, "
        f"batch {_BATCH.value} x src {_SRC.value} / tgt {_TGT.value}, {config.dtype}, "
        f"{jax.device_count()} device(s) seen, mesh of 1")
  times, cpu_times, losses = [], [], []
  load_before = os.getloadavg()
  for i, batch in enumerate(batches):
    start, cpu_start = time.perf_counter(), time.process_time()
    state, metrics = step_fn(state, batch, key)
    loss = float(metrics["loss"])  # Waits for the step.
    secs, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    losses.append(loss)
    if i >= _WARMUP.value:
      times.append(secs)
      cpu_times.append(cpu)
    print(f"step {i}{' (warm-up)' if i < _WARMUP.value else ''}: {secs:.2f} s "
          f"(CPU {cpu:.2f} s), loss {loss:.3f}", flush=True)
  median = float(np.median(times))
  rate = _BATCH.value / median
  load = os.getloadavg()
  print(f"train step: {median:.2f} s median (min {min(times):.2f}) over {len(times)} steps = "
        f"{rate:.2f} examples/s; CPU {np.median(cpu_times):.2f} s/step; peak RSS {peak_rss_gib():.2f} GiB; load average "
        f"{load_before[0]:.2f} before, {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} after")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({"examples_per_s": rate, "peak_rss_gib": peak_rss_gib(),
                 "sec_per_step": median, "sec_per_step_min": min(times),
                 "cpu_sec_per_step": float(np.median(cpu_times)),
                 "loadavg_before": load_before, "loadavg_after": load,
                 "losses": losses}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
