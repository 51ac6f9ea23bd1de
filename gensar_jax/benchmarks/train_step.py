"""Train-step throughput at a preset's real shapes, as a fraction of the machine's matmul rate.

  python -m gensar_jax.benchmarks.train_step --shape=cpu|demo|paper [--steps=40]
      [--batch_size=N] [--grad_accum_steps=N] [--cpu_devices=N] [--json=PATH] [--breakdown]
      [--profile=DIR]

Times `gensar_jax.trainer.step` (`make_train_step` + `jit_train_step`: the train stage's
step, with the preset's dropout, clipping and AdamW) for a randomly initialised T5 of the
preset's dimensions (`configs/amazon.py` preset cpu or paper, `configs/demo.py`) on a
mesh over every device, as the train stage runs it: on a CPU host, the config's
`cpu_devices` (`--cpu_devices` to compare; 1 is JAX's default) and its
`cpu_keep_freed_memory` (`--nocpu_keep_freed_memory` to compare). Batches are planned
exactly as training plans them (`trainer.batches.plan_batches`: length-grouped, padded
to the backend's bucket lengths) from examples drawn from a real run's length distribution:
`office_cpu_lengths.json`, the (source, target) token lengths of one epoch of the cpu
preset's mixture on Office (the demo and paper shapes use the same distribution; ids
are random). Each batch is split into the preset's micro-batches (`train.grad_accum_steps`,
`--grad_accum_steps` to compare; the paper shape's 32 examples are one micro-batch), as the
stage splits it: the step sums their gradients in a `lax.scan`.

Every bucket shape is compiled before timing. Printed, from one process in one minute:
  examples/s and s/step over the timed steps (each step waited for);
  the step's FLOPs as XLA counts them (`jit(...).lower(...).compile().cost_analysis()`,
  per bucket shape and device, times the devices, summed over the timed steps; XLA counts
  a loop's body once, so with micro-batches the count is taken from the same global batch
  compiled as one micro-batch) and the achieved GFLOP/s;
  a plain fp32 matmul probe (2048^3, jitted, best of 5) before and after: the machine's
  rate right now, so the step's rate is a fraction of it, comparable across hosts/load;
  the share of padding tokens in the batches;
  the minor page faults per timed step and the CPU cores spent in the kernel.
`--breakdown` also times the pieces of the step at the most common bucket shape
(encoder forward, whole forward, forward + backward, optimizer update, dropout off).
`--profile=DIR` also records XLA's own profile (`jax.profiler`, written to DIR) of a few
steps at that shape and prints the op time per model region and the costliest ops
(`benchmarks.step_profile`).
`--shape=t5small_ref` keeps the old benchmark's shape (t5-small, the reference's 33,667
vocabulary, 128-token sources) for comparison with `../shared/bench/refbench`.
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import resource
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gensar_jax import config_files
from gensar_jax import devices
from gensar_jax import padding
from gensar_jax import sharding
from gensar_jax.benchmarks import step_profile
from gensar_jax.model import t5
from gensar_jax.trainer import batches as batches_lib
from gensar_jax.trainer import step as step_lib

SHAPES = ("cpu", "demo", "paper", "t5small_ref")
_SHAPE = flags.DEFINE_enum("shape", "cpu", SHAPES, "Which preset's model and batch.")
_BATCH = flags.DEFINE_integer("batch_size", 0, "Examples per step (0: the preset's; paper: 32).")
_ACCUM = flags.DEFINE_integer(
    "grad_accum_steps", 0, "Micro-batches per step (0: the preset's; paper and t5small_ref: 1).",
    lower_bound=0)
_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps.")
_JSON = flags.DEFINE_string("json", "", "Write the figures here as JSON.")
_BREAKDOWN = flags.DEFINE_bool("breakdown", False, "Also time the step's pieces.")
_PROFILE = flags.DEFINE_string(
    "profile", "", "Also profile steps at the most common bucket shape; the trace goes here.")
_PROFILE_STEPS = 5  # Steps traced by --profile.
_DTYPE = flags.DEFINE_string("dtype", "", "Compute dtype (default: the preset's).")
_CPU_DEVICES = flags.DEFINE_integer(
    "cpu_devices", -1, "CPU devices to split the host into (-1: the config's cpu_devices).")
_KEEP_MEMORY = flags.DEFINE_bool(
    "cpu_keep_freed_memory", None, "On a CPU backend, keep freed memory for reuse "
    "(`devices.keep_freed_memory`; default: the config's cpu_keep_freed_memory).")
_LENGTHS = flags.DEFINE_string(
    "lengths", "", "A length distribution written by `benchmarks.example_lengths` (default: "
    "office_cpu_lengths.json, the cpu preset's mixture on Office).")

LENGTHS = pathlib.Path(__file__).with_name("office_cpu_lengths.json")
CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"
VOCAB = 32128 + 3 + 6 * 256  # The reference's vocabulary: T5's + behaviour + code tokens.
PAPER_CPU_BATCH = 32  # The paper preset's 8,192 examples per step are far too many for a CPU.


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


def preset(shape: str) -> ml_collections.ConfigDict:
  """The pipeline config whose model and train sections the benchmark uses."""
  if shape == "demo":
    return config_files.load(str(CONFIGS / "demo.py"))
  return config_files.load(f"{CONFIGS / 'amazon.py'}:preset={'cpu' if shape == 'cpu' else 'paper'}")


def length_pairs(path: pathlib.Path = LENGTHS) -> tuple[np.ndarray, np.ndarray, int]:
  """(source lengths, target lengths) of the stored distribution's examples, and its vocab."""
  d = json.loads(pathlib.Path(path).read_text())
  pairs = np.asarray(d["pairs"], np.int64)
  src = np.repeat(pairs[:, 0], pairs[:, 2])
  tgt = np.repeat(pairs[:, 1], pairs[:, 2])
  return src, tgt, int(d["vocab_size"])


def planned_batches(batch: int, steps: int, vocab: int, seed: int = 0,
                    max_source_len: int | None = None, lengths: pathlib.Path = LENGTHS,
                    accum: int = 1) -> list[dict[str, np.ndarray]]:
  """`steps` training batches `{"src": [A, B / A, S], "tgt": [A, B / A, T]}` (A = `accum`
  micro-batches) planned as training plans them, from examples drawn from the stored
  length distribution `lengths`."""
  rng = np.random.default_rng(seed)
  src_all, tgt_all, _ = length_pairs(lengths)
  pick = rng.integers(0, len(src_all), batch * steps)
  s_len, t_len = src_all[pick], tgt_all[pick]
  if max_source_len:
    s_len = np.minimum(s_len, max_source_len)
  buckets = padding.train_buckets(jax.default_backend())
  plan = batches_lib.plan_batches(s_len, t_len, batch, seed, 0, buckets)
  out = []
  for idx in plan[:steps]:
    src = [np.concatenate([rng.integers(3, vocab, n - 1), [1]]).astype(np.int32)
           for n in s_len[idx]]
    tgt = [np.concatenate([rng.integers(3, vocab, n - 1), [1]]).astype(np.int32)
           for n in t_len[idx]]
    s_pad, t_pad = batches_lib.padded_lengths(s_len[idx], t_len[idx], buckets)
    out.append({"src": padding.pad_stack(src, s_pad).reshape(accum, -1, s_pad),
                "tgt": padding.pad_stack(tgt, t_pad).reshape(accum, -1, t_pad)})
  return out


def one_micro_batch(b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """`b`'s examples as one micro-batch `[1, B, L]` (for counting the step's FLOPs)."""
  return {k: v.reshape(1, -1, v.shape[-1]) for k, v in b.items()}


def matmul_probe(n: int = 2048, repeats: int = 5) -> float:
  """The machine's fp32 matmul rate right now, GFLOP/s (jitted n^3 product, best of `repeats`)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(repeats))
  return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get("flops", 0.0))


def setup(shape: str, batch_size: int = 0, dtype: str = ""):
  """(model, state, jitted step, state shardings, mesh, batch, config) for a shape."""
  if shape == "t5small_ref":
    model_cfg = t5_small(dtype=dtype or "float32")
    train_cfg = ml_collections.ConfigDict(dict(
        learning_rate=1e-3, warmup_frac=0.01, weight_decay=1e-7, grad_clip=1.0,
        label_smoothing=0.0, batch_size=batch_size or 64))
  else:
    c = preset(shape)
    _, _, vocab = length_pairs()
    model_c = c.model
    if dtype:
      model_c = ml_collections.ConfigDict(c.model.to_dict())
      model_c.dtype = dtype
    model_cfg = t5.T5Config.from_config(model_c, vocab)
    train_cfg = c.train
    batch_size = batch_size or (PAPER_CPU_BATCH if shape == "paper" else c.train.batch_size)
  model = t5.T5(model_cfg)
  params = t5.init_params(model_cfg, jax.random.key(0))
  tx, schedule = step_lib.make_optimizer(train_cfg, total_steps=1000)
  mesh = sharding.make_mesh("data")
  replicated = sharding.replicated(mesh)
  state = step_lib.init_state(params, tx)
  state_sh = jax.tree.map(lambda _: replicated, state)
  state = jax.device_put(state, state_sh)
  batch_sh = {k: sharding.batch_sharding(mesh, 1, 3) for k in ("src", "tgt")}
  step_fn = step_lib.jit_train_step(
      step_lib.make_train_step(model, tx, schedule, dropout=model_cfg.dropout_rate > 0,
                               label_smoothing=float(train_cfg.get("label_smoothing", 0.0)),
                               mesh=mesh),
      state_sh, batch_sh, replicated)
  return model, state, step_fn, mesh, batch_size, train_cfg


def breakdown(model, state, batch, key, tx_cfg) -> dict[str, float]:
  """Seconds of the step's pieces at one batch shape (each jitted alone, best of 3)."""
  src, tgt = jnp.asarray(batch["src"][0]), jnp.asarray(batch["tgt"][0])
  params = state.params

  def loss(p, deterministic):
    s, n = step_lib.nll_sum(model, p, src, tgt, rng=None if deterministic else key)
    return s / n

  tx, _ = step_lib.make_optimizer(tx_cfg, 1000)
  grads = jax.grad(lambda p: loss(p, True))(params)
  pieces = {
      "encoder_forward": jax.jit(lambda p: model.apply(p, src, method=model.encode)),
      "forward": jax.jit(lambda p: loss(p, False)),
      "forward_backward": jax.jit(jax.grad(lambda p: loss(p, False))),
      "forward_backward_no_dropout": jax.jit(jax.grad(lambda p: loss(p, True))),
      "optimizer_update": jax.jit(lambda g, o, p: tx.update(g, o, p)),
  }
  args = {"optimizer_update": (grads, state.opt_state, params)}
  out = {}
  for name, fn in pieces.items():
    a = args.get(name, (params,))
    jax.block_until_ready(fn(*a))
    out[name] = min(_timed(lambda: jax.block_until_ready(fn(*a))) for _ in range(3))
  return out


def profile(step_fn, state, host, mesh, key, hlo_of: dict, trace_dir: str) -> dict:
  """XLA's profile of `_PROFILE_STEPS` steps at the most common bucket shape of `host`,
  summed by model region (printed, and returned for the JSON); `hlo_of` holds each
  shape's compiled HLO text, from the compilation that counted its FLOPs."""
  shapes = collections.Counter((b["src"].shape[2], b["tgt"].shape[2]) for b in host)
  common = shapes.most_common(1)[0][0]
  b = next(x for x in host if (x["src"].shape[2], x["tgt"].shape[2]) == common)
  g = sharding.global_batch(b, mesh, batch_dim=1)
  box = [state]  # The step donates its state: each call gets the previous call's.

  def run_steps():
    for _ in range(_PROFILE_STEPS):
      box[0], metrics = step_fn(box[0], g, key)
      jax.block_until_ready(metrics)

  run_steps()  # warm
  t0 = time.perf_counter()
  run_steps()
  wall_ms = (time.perf_counter() - t0) / _PROFILE_STEPS * 1000
  times = step_profile.trace_op_times(run_steps, trace_dir)
  summary = step_profile.summarise(times, hlo_of[common], _PROFILE_STEPS)
  summary.update(shape=list(common), wall_ms_untraced=wall_ms)
  print(f"at {common[0]}x{common[1]}, " + step_profile.format_summary(summary, wall_ms),
        flush=True)
  return summary


def main(argv):
  del argv
  shape = _SHAPE.value
  cpu_preset = preset("cpu")
  n_cpu = _CPU_DEVICES.value if _CPU_DEVICES.value >= 0 else cpu_preset.cpu_devices
  print(devices.split_cpu(n_cpu), flush=True)
  keep = _KEEP_MEMORY.value
  if cpu_preset.cpu_keep_freed_memory if keep is None else keep:
    print(devices.keep_freed_memory(), flush=True)
  model, state, step_fn, mesh, batch_size, train_cfg = setup(shape, _BATCH.value, _DTYPE.value)
  cfg = model.config
  accum = _ACCUM.value or (train_cfg.grad_accum_steps if shape in ("cpu", "demo") else 1)
  if shape == "t5small_ref" and accum != 1:
    raise app.UsageError("--shape=t5small_ref keeps the reference's one micro-batch")
  if batch_size % (accum * mesh.devices.size):
    raise app.UsageError(f"batch {batch_size} does not split into {accum} micro-batches "
                         f"over {mesh.devices.size} device(s)")
  rng = np.random.default_rng(0)
  if shape == "t5small_ref":
    host = [random_batch(rng, batch_size, 128, 6) for _ in range(_STEPS.value)]
  else:
    host = planned_batches(batch_size, _STEPS.value, cfg.vocab_size,
                           lengths=pathlib.Path(_LENGTHS.value or LENGTHS), accum=accum)
  batches = [sharding.global_batch(b, mesh, batch_dim=1) for b in host]
  replicated = sharding.replicated(mesh)
  key = jax.device_put(jax.random.key(1), replicated)
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(state.params))
  shapes = collections.Counter((b["src"].shape[2], b["tgt"].shape[2]) for b in host)
  print(f"shape {shape}: d_model {cfg.d_model}, {cfg.num_encoder_layers}+"
        f"{cfg.num_decoder_layers} layers, {n_params / 1e6:.2f}M parameters, vocabulary "
        f"{cfg.vocab_size}, batch {batch_size} in {accum} micro-batch(es) over "
        f"{mesh.devices.size} device(s), dropout "
        f"{cfg.dropout_rate}, {cfg.dtype}; "
        f"{len(shapes)} bucket shapes (source x target: "
        + ", ".join(f"{s}x{t}: {n}" for (s, t), n in sorted(shapes.items())) + ")", flush=True)
  real = sum(int((b["src"] != 0).sum() + (b["tgt"] != 0).sum()) for b in host)
  padded = sum(b["src"].size + b["tgt"].size for b in host)
  src_pad = 1 - sum(int((b["src"] != 0).sum()) for b in host) / sum(b["src"].size for b in host)
  tgt_pad = 1 - sum(int((b["tgt"] != 0).sum()) for b in host) / sum(b["tgt"].size for b in host)
  # Compile every bucket shape (untimed), counting its FLOPs.
  flops_of, hlo_of, count_s, t0 = {}, {}, 0.0, time.perf_counter()
  for b in host:
    k = (b["src"].shape[2], b["tgt"].shape[2])
    if k not in flops_of:
      g = sharding.global_batch(b, mesh, batch_dim=1)
      compiled = step_fn.lower(state, g, key).compile()
      t_count = time.perf_counter()
      counted = compiled if accum == 1 else step_fn.lower(
          state, sharding.global_batch(one_micro_batch(b), mesh, batch_dim=1), key).compile()
      count_s += time.perf_counter() - t_count  # Not part of the step's compile time.
      flops_of[k] = _flops(counted) * mesh.devices.size
      hlo_of[k] = compiled.as_text() if _PROFILE.value else ""
      state, m = step_fn(state, g, key)
      jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0 - count_s
  load_before = os.getloadavg()
  probe_before = matmul_probe()
  times = []
  usage0 = resource.getrusage(resource.RUSAGE_SELF)
  t_all = time.perf_counter()
  for b in batches:
    t = time.perf_counter()
    state, metrics = step_fn(state, b, key)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  wall = time.perf_counter() - t_all
  usage1 = resource.getrusage(resource.RUSAGE_SELF)
  faults = (usage1.ru_minflt - usage0.ru_minflt) / len(batches)
  system_cores = (usage1.ru_stime - usage0.ru_stime) / wall
  probe_after = matmul_probe()
  probe = (probe_before + probe_after) / 2
  total_flops = sum(flops_of[(b["src"].shape[2], b["tgt"].shape[2])] for b in host)
  rate = batch_size * len(batches) / wall
  gflops = total_flops / wall / 1e9
  out = {
      "shape": shape, "batch_size": batch_size, "grad_accum_steps": accum,
      "devices": int(mesh.devices.size),
      "steps": len(batches),
      "examples_per_s": rate, "sec_per_step": wall / len(batches),
      "sec_per_step_median": float(np.median(times)),
      "step_gflop_mean_xla": total_flops / len(batches) / 1e9,
      "achieved_gflop_per_s": gflops, "matmul_probe_gflop_per_s": probe,
      "matmul_probe_before_after": [probe_before, probe_after],
      "fraction_of_matmul_rate": gflops / probe,
      "padding_fraction": {"tokens": 1 - real / padded, "source": src_pad, "target": tgt_pad},
      "compile_s": compile_s, "parameters": int(n_params), "peak_rss_gib": peak_rss_gib(),
      "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""), "loss_last": float(metrics["loss"]),
      "minor_page_faults_per_step": faults, "system_cpu_cores": system_cores,
  }
  print(f"train step ({shape}): {rate:.1f} examples/s, {wall / len(batches):.3f} s/step "
        f"(median {np.median(times):.3f}) over {len(batches)} steps; "
        f"{out['step_gflop_mean_xla']:.2f} GFLOP/step (XLA's count) = {gflops:.1f} GFLOP/s; "
        f"matmul probe {probe_before:.1f} / {probe_after:.1f} GFLOP/s -> "
        f"{100 * gflops / probe:.0f}% of the machine's rate; padding: "
        f"{100 * src_pad:.0f}% of source, {100 * tgt_pad:.0f}% of target tokens; "
        f"load {load_before[0]:.2f} -> {out['loadavg_after'][0]:.2f}; {faults:.0f} page faults "
        f"a step, {system_cores:.2f} cores in the kernel", flush=True)
  if _BREAKDOWN.value:
    common = shapes.most_common(1)[0][0]
    b = next(x for x in host if (x["src"].shape[2], x["tgt"].shape[2]) == common)
    parts = breakdown(model, state, b, key, train_cfg)
    out["breakdown_shape"] = list(common)
    out["breakdown_micro_batch"] = int(b["src"].shape[1])
    out["breakdown_s"] = parts
    print(f"breakdown at {common[0]}x{common[1]}, one micro-batch of {b['src'].shape[1]}: "
          + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in parts.items()), flush=True)
  if _PROFILE.value:
    out["profile"] = profile(step_fn, state, host, mesh, key, hlo_of, _PROFILE.value)
  if _JSON.value:
    pathlib.Path(_JSON.value).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
