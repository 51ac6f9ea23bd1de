"""`python -m gensar_jax.devices`: what JAX sees, as text and as JSON."""

import json

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
