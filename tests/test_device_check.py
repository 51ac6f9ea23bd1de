"""The accelerator device check: its CPU dry run end to end, and its failure isolation."""

import json
import os
import subprocess
import sys
import tarfile

from gensar_jax.benchmarks import device_check
from tests.conftest import REPO


def test_dry_run_writes_every_phase_to_the_json(tmp_path):
  out = tmp_path / "out"
  proc = subprocess.run(
      [sys.executable, "-m", "gensar_jax.benchmarks.device_check", "--dry-run", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
      env=dict(os.environ, OUT=str(tmp_path / "ignored")))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  record = json.loads((out / "device_check.json").read_text())
  phases = record["phases"]
  assert record["done"] and record["dry_run"] and record["jax_platforms"] == "cpu"
  assert set(phases) == {"devices", "tests", "train_step", "beam_search", "office_upstream",
                         "office"}
  assert all(p["status"] == "ok" for p in phases.values()), {
      n: p.get("log_tail", p["status"]) for n, p in phases.items()}
  devices = phases["devices"]["result"]
  assert devices["platform"] == "cpu" and devices["device_count"] >= 1
  assert devices["devices"][0]["memory_bytes"] is None  # CPU: unknown.
  tests = phases["tests"]["result"]
  assert tests["tests"] == 1 and tests["failures"] == tests["errors"] == 0
  for dtype in ("bfloat16", "float32"):
    step = phases["train_step"]["result"][dtype]
    assert step["examples_per_s"] > 0 and step["mfu"] is None  # No peak for a CPU.
    assert step["flops_per_step"] > 0 and step["estimated_memory_bytes"] > 0
    assert phases["beam_search"]["result"][dtype]["sec_per_example"] > 0
  office = phases["office"]["result"]
  assert office["steps"] == 6 and 0 < office["epochs"] < 1
  assert office["validation"] and "recommendation/ndcg@10" in office["validation"][-1]
  assert phases["office"]["train_budget_minutes"] > 0
  assert (out / "logs" / "office.log").exists()


def test_a_failing_or_hanging_phase_keeps_the_others(tmp_path):
  check = device_check.Check(tmp_path, dry=True, budget_s=60)
  slow = check.run("slow", [sys.executable, "-c", "import time; time.sleep(30)"], cap_s=1)
  check.finish("slow", slow)
  boom = check.run("boom", [sys.executable, "-c", "print('bad'); raise SystemExit(3)"], cap_s=20)
  check.finish("boom", boom)
  record = json.loads((tmp_path / "device_check.json").read_text())
  assert record["phases"]["slow"]["status"] == "timeout" and slow["seconds"] < 10
  assert record["phases"]["boom"]["status"] == "failed"
  assert record["phases"]["boom"]["returncode"] == 3 and "bad" in boom["log_tail"]


def test_office_is_skipped_when_its_upstream_stages_fail(tmp_path):
  record = device_check.run_check(tmp_path, dry=False, budget_s=120, phases=["office"],
                                  office_dir=str(tmp_path / "missing"), eval_every_epochs=2)
  assert record["phases"]["office_upstream"]["status"] == "failed"
  assert record["phases"]["office"]["status"] == "skipped"
  assert json.loads((tmp_path / "device_check.json").read_text())["done"]


def test_junit_counts_and_the_office_curve(tmp_path):
  (tmp_path / "t.xml").write_text(
      '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
      '<testcase classname="tests.test_x" name="test_a"/>'
      '<testcase classname="tests.test_x" name="test_b"><failure message="x"/></testcase>'
      '<testcase classname="tests.test_x" name="test_c"><skipped/></testcase>'
      '</testsuite></testsuites>')
  assert device_check.junit_counts(tmp_path / "t.xml") == {
      "tests": 3, "failures": 1, "errors": 0, "skipped": 1, "failed": ["tests.test_x::test_b"]}
  assert device_check.junit_counts(tmp_path / "none.xml") == {}
  train = tmp_path / "train"
  train.mkdir()
  (train / "summary.json").write_text(json.dumps({"steps": 82, "steps_per_epoch": 41}))
  (train / "metrics.jsonl").write_text(
      '{"step": 41, "kind": "train", "loss": 3.0}\n'
      '{"step": 82, "kind": "validation", "epoch": 2.0, "minutes": 1.5, '
      '"recommendation/ndcg@10": 0.1, "recommendation/ndcg@5": 0.08}\n{"step": 9')
  curve = device_check.office_curve(tmp_path)
  assert curve["epochs"] == 2.0
  assert curve["validation"] == [{"step": 82, "epoch": 2.0, "minutes": 1.5,
                                  "recommendation/ndcg@10": 0.1}]


def test_upstream_stages_are_seeded_from_a_folder_or_a_tgz(tmp_path):
  source = tmp_path / "made_on_cpu"
  for stage in ("data", "embed", "identifiers", "doc2query", "train"):
    (source / stage / "sub").mkdir(parents=True)
    (source / stage / "sub" / "x.txt").write_text(stage)
    (source / stage / ".done").write_text("fp")
  (source / "embed" / ".done").unlink()  # Unfinished: copied, not reported as seeded.
  with tarfile.open(tmp_path / "up.tgz", "w:gz") as tar:
    for child in sorted(source.iterdir()):
      tar.add(child, arcname=child.name)
  for name, given in (("from_folder", source), ("from_tgz", tmp_path / "up.tgz")):
    workdir = tmp_path / name
    assert device_check.seed_upstream(given, workdir) == ["data", "identifiers", "doc2query"]
    assert (workdir / "doc2query" / "sub" / "x.txt").read_text() == "doc2query"
    assert (workdir / "embed" / "sub" / "x.txt").exists()
    assert not (workdir / "train").exists()  # Training is the check's own.


def test_a_damaged_upstream_tgz_fails_its_phase_and_skips_training(tmp_path):
  (tmp_path / "up.tgz").write_bytes(b"not a tar archive")
  record = device_check.run_check(tmp_path / "out", dry=False, budget_s=120, phases=["office"],
                                  office_dir=str(tmp_path), eval_every_epochs=2,
                                  office_upstream=str(tmp_path / "up.tgz"))
  upstream = record["phases"]["office_upstream"]
  assert upstream["status"] == "failed" and upstream["stages"] == []
  assert "ReadError" in upstream["log_tail"]
  assert record["phases"]["office"]["status"] == "skipped"
  assert json.loads((tmp_path / "out" / "device_check.json").read_text())["done"]
