"""What JAX sees on this host: `python -m gensar_jax.devices [--json]`.

Prints the platform, the devices (kind, count, memory), the processes and the jax
version; run it first on a new accelerator host (`launch/device_check.sh` does). JAX is
imported only inside its functions, so importing this module starts no backend.
Memory per device is `device.memory_stats()["bytes_limit"]` where the backend reports
it (GPU, TPU); elsewhere (CPU) it is `None`, printed as "unknown".

`split_cpu(n)` asks JAX, before its backend starts, for `n` CPU devices: the pipeline's
mesh then splits each batch over them, and XLA:CPU runs the shards side by side, which
keeps both cores of a small host busier than one device's intra-op threads do.

`keep_freed_memory()` has glibc's malloc keep the memory a process frees for its next
allocations: XLA:CPU's buffers of a training step are then reused by the next step
instead of being handed back to the kernel and faulted in again as fresh pages.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_TOP_PAD_BYTES = 256 * 2**20


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


def keep_freed_memory() -> str:
  """On a CPU backend, has glibc's malloc keep freed memory for reuse; says what it did.

  By default glibc serves each large block (above a threshold of at most 32 MiB) with its
  own `mmap` and unmaps it when freed, and hands the free top of its heap back to the
  kernel: a CPU training step allocates its large buffers anew every step, and each page
  of them comes back as a zeroed page fault (~23k a step at the cpu preset, 0.17 of 2
  cores in the kernel). Here large blocks come from the heap (`M_MMAP_MAX` 0), the heap
  is not trimmed below 2 GiB of free top (`M_TRIM_THRESHOLD`) and grows 256 MiB at a
  time (`M_TOP_PAD`). The process's resident memory then stays near its peak. Does
  nothing off a CPU backend, or where the C library has no `mallopt` (not glibc).
  """
  import jax  # pylint: disable=g-import-not-at-top

  if jax.default_backend() != "cpu":
    return f"malloc: left as it is on the {jax.default_backend()} backend"
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return "malloc: not glibc, left as it is"
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, _TOP_PAD_BYTES))
  if not all(mallopt(param, value) == 1 for param, value in settings):
    return "malloc: mallopt refused a setting (the C library's defaults may be in part)"
  return "malloc: freed memory kept for reuse (no mmap of large blocks, no trimming)"


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
