"""Inference speed of a trained run (issue 10): requests/s at batch 32, single-request latency.

  python -m gensar_jax.benchmarks.inference --workdir=/tmp/office [--requests=256] [--json=PATH]

Loads the workdir's trained model once (`gensar_jax.inference.api.GenSAR`), builds
recommendation and search requests from the test split's histories (in the
`("rec", item_id)` / `("search", query, item_id)` form a caller would send), and times
`recommend` and `search` over the whole catalog: requests/s at batch 32 (after a
warm-up call that compiles), then the latency of one request at a time (batch 1, its
own compiled search). The machine is shared, so the load average is printed too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import statistics
import time

from absl import app
from absl import flags

from gensar_jax import trained_model
from gensar_jax.data import dataset
from gensar_jax.data import schema
from gensar_jax.inference import api
from gensar_jax.inference import stage as infer_stage

_WORKDIR = flags.DEFINE_string("workdir", "/tmp/office", "A workdir whose train stage ran.")
_REQUESTS = flags.DEFINE_integer("requests", 256, "Requests per task for the throughput.")
_SINGLE = flags.DEFINE_integer("single", 20, "Requests timed one at a time.")
_K = flags.DEFINE_integer("k", 10, "Items per answer.")
_JSON = flags.DEFINE_string("json", "", "Write the figures here.")


def test_requests(model: api.GenSAR, workdir: str, count: int) -> dict[str, list[dict]]:
  """Up to `count` requests per task built from the test split (as JSON objects)."""
  out = {}
  for task in schema.TASKS:
    rows = dataset.load_rows(os.path.join(workdir, "data"), task, "test")
    reqs = []
    for r in range(min(count, len(rows["item"]))):
      history = infer_stage.history_of_row(model.catalog, rows, r)
      req = {"history": history}
      if task == "search":
        req["query"] = model.catalog.queries[int(rows["query"][r])]
      reqs.append(req)
    out[task] = reqs
  return out


def _call(model: api.GenSAR, task: str, reqs: list[dict], k: int):
  if task == "recommendation":
    return model.recommend([r["history"] for r in reqs], k)
  return model.search([r["history"] for r in reqs], [r["query"] for r in reqs], k)


def main(argv):
  del argv
  workdir = _WORKDIR.value
  figures = {}
  trained = trained_model.TrainedModel.load(pathlib.Path(workdir) / "train",
                                            pathlib.Path(workdir) / "data")
  model = api.GenSAR(trained, dataclasses.replace(trained.saved_decoding, batch_size=32))
  reqs = test_requests(model, workdir, _REQUESTS.value)
  for task, batch in reqs.items():
    _call(model, task, batch[:32], _K.value)  # compile
    start = time.perf_counter()
    _call(model, task, batch, _K.value)
    dt = time.perf_counter() - start
    figures[f"{task}_requests_per_s_b32"] = len(batch) / dt
    print(f"{task}: {len(batch)} requests at batch 32 in {dt:.2f} s = "
          f"{len(batch) / dt:.1f} requests/s", flush=True)
  single = api.GenSAR(trained, dataclasses.replace(trained.saved_decoding, batch_size=1))
  for task, batch in reqs.items():
    _call(single, task, batch[:1], _K.value)  # compile
    times = []
    for r in batch[:_SINGLE.value]:
      start = time.perf_counter()
      _call(single, task, [r], _K.value)
      times.append(time.perf_counter() - start)
    figures[f"{task}_latency_s_b1"] = statistics.median(times)
    print(f"{task}: single-request latency {1000 * statistics.median(times):.0f} ms "
          f"(median of {len(times)})", flush=True)
  figures["load_average"] = os.getloadavg()[0]
  figures["beam_size"] = model.beam_size
  figures["catalog_items"] = model.catalog.num_items
  print(f"load average {figures['load_average']:.1f}, beam {model.beam_size}, "
        f"{model.catalog.num_items} items", flush=True)
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(figures, f, indent=2)


if __name__ == "__main__":
  app.run(main)
