"""What JAX sees on this host: `python -m gensar_jax.devices [--json]`.

Prints the platform, the devices (kind, count, memory), the processes and the jax
version; run it first on a new accelerator host (`launch/device_check.sh` does). JAX is
imported only inside `describe`, so importing this module starts no backend.
Memory per device is `device.memory_stats()["bytes_limit"]` where the backend reports
it (GPU, TPU); elsewhere (CPU) it is `None`, printed as "unknown".

`split_cpu(n)` asks JAX, before its backend starts, for `n` CPU devices: the pipeline's
mesh then splits each batch over them, and XLA:CPU runs the shards side by side, which
keeps both cores of a small host busier than one device's intra-op threads do.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def describe() -> dict[str, Any]:
  """A JSON-ready record of the backend, its devices and this process."""
  import jax  # pylint: disable=g-import-not-at-top

  devices = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats() or {}
    except Exception:  # pylint: disable=broad-except  (backends without the call)
      stats = {}
    limit = stats.get("bytes_limit")
    devices.append({"id": int(d.id), "kind": d.device_kind, "platform": d.platform,
                    "memory_bytes": None if limit is None else int(limit)})
  return {
      "jax_version": jax.__version__,
      "platform": jax.default_backend(),
      "device_count": jax.device_count(),
      "local_device_count": jax.local_device_count(),
      "device_kinds": sorted({d["kind"] for d in devices}),
      "process_count": jax.process_count(),
      "process_index": jax.process_index(),
      "devices": devices,
  }


def split_cpu(n: int) -> str:
  """Asks JAX for `n` CPU devices (`jax_num_cpu_devices`) and says what it did.

  Does nothing when `n` is 0, when `XLA_FLAGS` already sets the count
  (`--xla_force_host_platform_device_count`, as the tests do: the explicit setting wins)
  or when JAX's backend has already started (the count is fixed then). Accelerator
  backends are untouched: the setting concerns the CPU platform only.
  """
  if n <= 0:
    return "CPU devices: JAX's default (cpu_devices = 0)"
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return "CPU devices: as XLA_FLAGS sets them (cpu_devices not applied)"
  import jax  # pylint: disable=g-import-not-at-top

  try:
    jax.config.update("jax_num_cpu_devices", n)
  except RuntimeError:  # The backend has started: its device count is fixed.
    return f"CPU devices: {len(jax.devices('cpu'))}, fixed before cpu_devices = {n} was read"
  return f"CPU devices: {n} (cpu_devices; on a CPU backend the mesh splits batches over them)"


def format_text(record: dict[str, Any]) -> str:
  """The record as a few lines a person reads."""
  lines = [
      f"jax {record['jax_version']}, platform {record['platform']}: "
      f"{record['device_count']} device(s) in all, {record['local_device_count']} on this "
      f"process ({', '.join(record['device_kinds'])})",
      f"process {record['process_index']} of {record['process_count']}",
  ]
  for d in record["devices"]:
    mem = d["memory_bytes"]
    lines.append(f"  device {d['id']}: {d['kind']}, memory "
                 f"{'unknown' if mem is None else f'{mem / 2**30:.1f} GiB'}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Prints `describe()` as text, or as JSON with `--json`."""
  argv = sys.argv[1:] if argv is None else argv
  unknown = [a for a in argv if a != "--json"]
  if unknown:
    print(f"usage: python -m gensar_jax.devices [--json]; unknown {unknown}", file=sys.stderr)
    return 2
  record = describe()
  print(json.dumps(record, indent=2) if "--json" in argv else format_text(record))
  return 0


if __name__ == "__main__":
  sys.exit(main())
