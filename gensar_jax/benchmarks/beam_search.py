"""Constrained beam-search speed at t5-small size (docs/design.md §9, issue 6): s/example.

  python -m gensar_jax.benchmarks.beam_search [--beam=30] [--src_len=128]
      [--candidates=100] [--catalog_items=50000] [--json=PATH]

Three measurements, as the reference harness's (`../shared/bench/refbench/bench.py beam`
and `beam_full`), on a randomly initialised T5 with t5-small dimensions and the
reference's vocabulary (33,667): identifiers are a behaviour token then 4 levels of
256 codes; each example gets 100 random candidates (a `[B, M, K]` per-example trie),
at batch 1 and 32; then one shared 50,000-item catalog trie at batch 32. Tries are
built on the host before timing, like the reference's prefix dicts; the clock covers
moving sources and tables to the device, encoding, the search and fetching results.
Each figure is the median over the timed batches after warm-up (which compiles).
Peak RSS is read right after the batch-32 candidate measurement (the catalog's table
comes later). The machine is shared: the load average is printed beside the figures,
and so are the process's CPU seconds (all threads), which competing processes barely
move (the reference harness records them as `own_cpu_mean`).
"""

from __future__ import annotations

import json
import os
import resource
import time

from absl import app
from absl import flags
import jax
import numpy as np

from gensar_jax.decoding import beam_search
from gensar_jax.decoding import trie
from gensar_jax.model import t5

_BEAM = flags.DEFINE_integer("beam", 30, "Beam width W.")
_SRC = flags.DEFINE_integer("src_len", 128, "Source tokens per example.")
_CANDS = flags.DEFINE_integer("candidates", 100, "Candidates per example.")
_CATALOG = flags.DEFINE_integer("catalog_items", 50_000, "Items of the shared catalog trie.")
_B1 = flags.DEFINE_integer("batches_b1", 10, "Timed batches at batch 1.")
_B32 = flags.DEFINE_integer("batches_b32", 3, "Timed batches at batch 32 (each trie kind).")
_BIG = flags.DEFINE_integer("big_batch", 32, "The large batch size.")
_SCORE = flags.DEFINE_enum("score", "full", beam_search.SCORES, "Scores (see beam_search; full is the default everywhere).")
_ONLY = flags.DEFINE_list("only", ["b1", "b32", "catalog"], "Measurements to run.")
_JSON = flags.DEFINE_string("json", "", "Write the figures here.")

LEVELS, K = 4, 256
BASE_VOCAB = 32128
BEHAVIOUR = BASE_VOCAB  # <R_I>
CODE_SLOTS = (0, 1, 4, 5)  # The reference's codebooks of a collaborative identifier.


def t5_small() -> t5.T5Config:
  """t5-small dimensions (v1.0: ReLU, tied embeddings) with the reference's vocabulary."""
  return t5.T5Config(vocab_size=BASE_VOCAB + 3 + 6 * K, d_model=512, d_ff=2048,
                     num_encoder_layers=6, num_decoder_layers=6, num_heads=8, d_kv=64)


def peak_rss_gib() -> float:
  """This process's peak resident memory (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def level_tokens() -> trie.LevelTokens:
  """Token ids of the 4 levels' codes (the reference's vocabulary layout)."""
  offsets = {f"L{l}": BASE_VOCAB + 3 + slot * K for l, slot in enumerate(CODE_SLOTS)}
  return trie.level_tokens(offsets, list(offsets), K, first_token=BEHAVIOUR)


def random_codes(rng: np.random.Generator, n: int) -> np.ndarray:
  """`n` distinct random identifiers `[n, 4]`."""
  codes = np.zeros((0, LEVELS), np.int64)
  while len(codes) < n:
    more = rng.integers(0, K, (2 * (n - len(codes)), LEVELS))
    codes = np.unique(np.concatenate([codes, more]), axis=0)
  return codes[rng.permutation(len(codes))[:n]]


def random_sources(rng: np.random.Generator, batch: int, src_len: int) -> np.ndarray:
  """Source ids like the reference's: ordinary ids, eos last, no padding."""
  src = rng.integers(3, 32000, (batch, src_len)).astype(np.int32)
  src[:, -1] = 1
  return src


def _time(fn, inputs, warmup: int) -> tuple[list[float], list[float], np.ndarray]:
  """Wall and CPU seconds of each call after `warmup`, and the last call's items."""
  times, cpu_times = [], []
  items = None
  for i, args in enumerate(inputs):
    start, cpu_start = time.perf_counter(), time.process_time()
    ((items, scores),) = fn(*args)
    items, scores = np.asarray(items), np.asarray(scores)  # Waits and fetches.
    if i >= warmup:
      times.append(time.perf_counter() - start)
      cpu_times.append(time.process_time() - cpu_start)
  return times, cpu_times, items


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  config = t5_small()
  model = t5.T5(config)
  params = t5.init_params(config, jax.random.PRNGKey(0))
  spec = beam_search.SearchSpec.create(level_tokens(), start_token=config.decoder_start_id,
                                       beam_size=_BEAM.value, score=_SCORE.value)
  search = beam_search.make_search_fn(lambda p: beam_search.T5Decoder(model, p), spec)
  catalog_codes = random_codes(rng, max(_CATALOG.value, 20 * _CANDS.value))
  results: dict[str, float] = {}
  load_before = os.getloadavg()
  print(f"t5-small, vocabulary {config.vocab_size}, source {_SRC.value}, beam {_BEAM.value}, "
        f"{LEVELS} levels x {K} codes, score {_SCORE.value!r}; load average {load_before[0]:.2f}")

  def candidate_run(batch: int, timed: int, warmup: int) -> float:
    inputs = []
    for _ in range(warmup + timed):
      cands = np.stack([rng.choice(len(catalog_codes), _CANDS.value, replace=False)
                        for _ in range(batch)])
      table = trie.build_batched(catalog_codes, cands, K)
      inputs.append((params, random_sources(rng, batch, _SRC.value), table))
    times, cpu_times, items = _time(search, inputs, warmup)
    last = inputs[-1][2]
    # Every result is one of its own example's candidates, each at most once.
    for b in range(batch):
      valid = {i for _, i in trie.enumerate_items(last[b], LEVELS)}
      got = items[b][items[b] >= 0]
      assert set(got.tolist()) <= valid and len(set(got.tolist())) == len(got) == _BEAM.value
    per_example = float(np.median(times)) / batch
    print(f"{_CANDS.value} candidates, batch {batch}: {per_example:.4f} s/example "
          f"({np.median(times):.3f} s/batch median, min {min(times):.3f}, {len(times)} batches; "
          f"CPU {np.median(cpu_times):.3f} s/batch); "
          f"peak RSS {peak_rss_gib():.2f} GiB; load {os.getloadavg()[0]:.2f}",
          flush=True)
    results[f"cpu_sec_per_batch_b{batch}"] = float(np.median(cpu_times))
    return per_example

  if "b1" in _ONLY.value:
    results["sec_per_example_b1"] = candidate_run(1, _B1.value, 2)
  if "b32" in _ONLY.value:
    results["sec_per_example_b32"] = candidate_run(_BIG.value, _B32.value, 1)
    results["peak_rss_gib_b32"] = peak_rss_gib()
  if "catalog" in _ONLY.value:
    codes = catalog_codes[:_CATALOG.value]
    start = time.perf_counter()
    table = trie.build_catalog(codes, K)
    build = time.perf_counter() - start
    inputs = [(params, random_sources(rng, _BIG.value, _SRC.value), table)
              for _ in range(1 + _B32.value)]
    times, cpu_times, items = _time(search, inputs, 1)
    assert np.all(items >= 0) and np.all(items < len(codes))
    per_example = float(np.median(times)) / _BIG.value
    results["sec_per_example_catalog_b32"] = per_example
    results["cpu_sec_per_batch_catalog_b32"] = float(np.median(cpu_times))
    print(f"catalog of {len(codes)} items ({table.shape[1]} trie nodes, built in {build:.1f} s), "
          f"batch {_BIG.value}: {per_example:.4f} s/example ({np.median(times):.3f} s/batch "
          f"median, min {min(times):.3f}; CPU {np.median(cpu_times):.3f} s/batch); peak RSS {peak_rss_gib():.2f} GiB; "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
  load = os.getloadavg()
  print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump({**results, "loadavg_before": load_before, "loadavg_after": load,
                 "score": _SCORE.value, "beam": _BEAM.value}, f, indent=2)


if __name__ == "__main__":
  app.run(main)
