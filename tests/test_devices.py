"""`python -m gensar_jax.devices`: what JAX sees, as text and as JSON."""

import json
import os
import subprocess
import sys

import pytest

from gensar_jax import devices


def test_describe_the_simulated_cpu_devices(capsys):
  record = devices.describe()
  assert record["platform"] == "cpu" and record["device_kinds"] == ["cpu"]
  assert record["device_count"] == record["local_device_count"] == 8  # tests/conftest.py
  assert record["process_count"] == 1 and record["process_index"] == 0
  assert [d["id"] for d in record["devices"]] == list(range(8))
  assert all(d["memory_bytes"] is None for d in record["devices"])  # CPU: not reported.
  text = devices.format_text(record)
  assert "platform cpu: 8 device(s)" in text and "device 7: cpu, memory unknown" in text
  assert devices.main(["--json"]) == 0
  assert json.loads(capsys.readouterr().out) == record
  assert devices.main(["--yaml"]) == 2


def _devices_after_split(code: str, xla_flags: str | None) -> str:
  """Runs `code` in a fresh interpreter (JAX's device count is fixed once per process)."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120, check=True)
  return out.stdout.strip().splitlines()[-1]


_SPLIT = ("from gensar_jax import devices; import jax; {before}"
          "msg = devices.split_cpu({n}); print(len(jax.devices()), '|', msg)")


def test_split_cpu_sets_the_device_count_before_jax_starts():
  line = _devices_after_split(_SPLIT.format(before="", n=3), xla_flags=None)
  assert line.startswith("3 |") and "CPU devices: 3" in line


def test_split_cpu_leaves_an_explicit_xla_flag_and_a_started_backend_alone():
  line = _devices_after_split(_SPLIT.format(before="", n=3),
                              xla_flags="--xla_force_host_platform_device_count=5")
  assert line.startswith("5 |") and "XLA_FLAGS" in line
  line = _devices_after_split(_SPLIT.format(before="jax.devices(); ", n=3), xla_flags=None)
  assert line.startswith("1 |") and "fixed before cpu_devices = 3" in line
  line = _devices_after_split(_SPLIT.format(before="", n=0), xla_flags=None)
  assert line.startswith("1 |") and "default" in line


_FAULTS = """
import resource, numpy as np
from gensar_jax import devices
{setup}
def faults():
  t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(10):  # A step's buffers: allocated, written, freed.
    a, b = np.ones(2**20, np.float32), np.ones(2**20, np.float32)  # 4 MiB each.
    del a, b
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - t0
faults()  # The first round may grow the heap.
print(faults())
"""


def test_keep_freed_memory_stops_large_blocks_faulting_in_again():
  # Without it glibc hands the freed top of its heap back to the kernel and faults the
  # pages in again on the next round (1,024 pages a block); with it they are reused.
  env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
  run = lambda setup: int(subprocess.run(
      [sys.executable, "-c", _FAULTS.format(setup=setup)], env=env, capture_output=True,
      text=True, timeout=120, check=True).stdout.split()[-1])
  if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or "").lower():
    pytest.skip("mallopt is glibc's")
  before = run("")
  after = run("print(devices.keep_freed_memory())")
  assert before > 5 * 1_024  # At least one fresh block in each of the ten rounds.
  assert after < 200
