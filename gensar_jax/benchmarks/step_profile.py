"""Where a compiled train step's time goes: XLA's own profile, summed by model region.

Used by `python -m gensar_jax.benchmarks.train_step --profile=DIR`: `trace_op_times`
records a `jax.profiler` trace of a few steps and sums the duration of every executed
XLA op (fusion, dot, all-reduce, ...) over the steps and threads; `summarise` groups the
ops by the model region their HLO metadata names (e.g. `jvp(T5)/T5.encode/encoder/
layer_0/attention/...`; `transpose(jvp(...))` marks the backward pass) and lists the
costliest ops. On a host split into several CPU devices the devices' ops are summed, so
the op time is about devices x wall time, less any idle gaps.
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re

import jax

# (region, pattern over the op's metadata op_name), first match wins.
REGIONS = (
    ("gradient all-reduce", r"^all-reduce"),
    ("encoder self-attention", r"encoder/layer_\d+/attention"),
    ("encoder feed-forward", r"encoder/layer_\d+/mlp"),
    ("encoder rest (embedding, norms, residual dropout)", r"T5\.encode|encoder"),
    ("decoder", r"decoder"),
    ("output projection and loss", r"T5\.project|jvp\(\)"),
)
OTHER = "optimizer update and the rest"


_CONTROL_FLOW = re.compile(r"(?<![\w-])(?:while|conditional|call)\(")


def op_metadata(hlo_text: str) -> dict[str, str]:
  """Instruction name -> its metadata op_name (empty when it has none), from HLO text.

  Control-flow instructions (while, conditional, call) are left out: their trace events
  span the ops of their bodies, which are counted themselves (micro-batches run the
  step's forward and backward inside a while loop).
  """
  out = {}
  for m in re.finditer(r"^\s*(?:ROOT )?%([\w.\-]+) = ([^\n]*)$", hlo_text, re.M):
    if _CONTROL_FLOW.search(m.group(2).split("metadata=")[0]):
      continue
    op = re.search(r'op_name="([^"]*)"', m.group(2))
    out.setdefault(m.group(1), op.group(1) if op else "")
  return out


def trace_op_times(run_steps, trace_dir: str) -> collections.Counter:
  """Microseconds per trace event name over `run_steps()` (which must block until done)."""
  jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
  try:
    run_steps()
  finally:
    jax.profiler.stop_trace()
  files = sorted(pathlib.Path(trace_dir).rglob("perfetto_trace.json.gz"),
                 key=lambda p: p.stat().st_mtime)
  if not files:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {trace_dir}")
  with gzip.open(files[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  times = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      times[e["name"]] += float(e["dur"])
  return times


def region_of(op_name: str, metadata: str) -> str:
  """The model region an op belongs to (`REGIONS`), with " (backward)" where it is."""
  text = op_name if op_name.startswith("all-reduce") else metadata
  for region, pattern in REGIONS:
    if re.search(pattern, text):
      backward = "transpose(" in metadata and region != "gradient all-reduce"
      return region + (" (backward)" if backward else "")
  return OTHER


def summarise(times: collections.Counter, hlo_text: str, steps: int, top: int = 12) -> dict:
  """Op time per step (ms) by region and for the `top` costliest ops.

  Only trace events named after an instruction of `hlo_text` count (the runtime's own
  events, e.g. waits, do not).
  """
  meta = op_metadata(hlo_text)
  ops = {k: v / steps / 1000 for k, v in times.items() if k in meta}
  regions = collections.Counter()
  for name, ms in ops.items():
    regions[region_of(name, meta[name])] += ms
  costliest = [{"op": name, "ms": ms, "region": region_of(name, meta[name]),
                "op_name": meta[name][-90:]}
               for name, ms in sorted(ops.items(), key=lambda kv: -kv[1])[:top]]
  return {"op_ms_per_step": sum(ops.values()), "regions_ms": dict(regions.most_common()),
          "costliest": costliest}


def format_summary(summary: dict, wall_ms: float) -> str:
  """The summary as lines for the console."""
  total = summary["op_ms_per_step"]
  lines = [f"profile: {total:.0f} ms of XLA op time per step ({wall_ms:.0f} ms wall)"]
  for region, ms in summary["regions_ms"].items():
    lines.append(f"  {ms:7.1f} ms  {100 * ms / total:4.1f}%  {region}")
  lines.append("  costliest ops:")
  for op in summary["costliest"]:
    lines.append(f"  {op['ms']:7.1f} ms  {op['op']:<28s} {op['region']}")
  return "\n".join(lines)
