"""What JAX sees on this host: `python -m gensar_jax.devices [--json]`.

Prints the platform, the devices (kind, count, memory), the processes and the jax
version; run it first on a new accelerator host (`launch/device_check.sh` does). JAX is
imported only inside `describe`, so importing this module starts no backend.
Memory per device is `device.memory_stats()["bytes_limit"]` where the backend reports
it (GPU, TPU); elsewhere (CPU) it is `None`, printed as "unknown".
"""

from __future__ import annotations

import json
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
