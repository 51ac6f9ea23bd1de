"""Tests of the stage runner: stage parsing, caching by fingerprint, resume."""

import json
import logging
import os
import pathlib
import sys
import types

import ml_collections
import pytest

from gensar_jax import pipeline


def _config(**data):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.stages = "data"
  c.data = ml_collections.ConfigDict(dict(x=1, **data))
  return c


def test_parse_stages_orders_and_rejects_unknown():
  assert pipeline.parse_stages("train, data") == ["data", "train"]
  assert pipeline.parse_stages("all") == [
      "data", "embed", "identifiers", "doc2query", "train", "eval", "report"]
  with pytest.raises(pipeline.PipelineError, match="unknown stage"):
    pipeline.parse_stages("data,bogus")
  assert pipeline.parse_stages(" data ") == ["data"]


@pytest.fixture
def fake_data_stage(monkeypatch):
  calls = []
  module = types.ModuleType("fake_stage")

  def run(config, ctx):
    calls.append(config.data.x)
    (ctx.dir / "out.txt").write_text(str(config.data.x))
    return {"x": config.data.x}

  module.run = run
  # The outside files it reads: config.data.raw (when set) or none.
  module.external_files = lambda config, workdir: (
      [pathlib.Path(config.data.raw)] if config.data.get("raw") else [])
  monkeypatch.setitem(sys.modules, "fake_stage", module)
  stage = pipeline.Stage("data", "fake_stage", (), ("data",))
  monkeypatch.setattr(pipeline, "_BY_NAME", {"data": stage})
  return calls


def test_stage_is_cached_until_its_config_changes(tmp_path, fake_data_stage):
  first = pipeline.run(_config(), tmp_path)
  assert first["data"]["x"] == 1
  pipeline.run(_config(), tmp_path)
  assert fake_data_stage == [1]  # Second run skipped.
  summary = json.loads((tmp_path / "data" / "summary.json").read_text())
  assert summary["x"] == 1 and summary["wall_s"] >= 0
  pipeline.run(_config(x_extra=2), tmp_path)
  assert fake_data_stage == [1, 1]  # Config changed: ran again.


def test_missing_upstream_is_a_clear_error(tmp_path):
  ctx = pipeline.StageContext(tmp_path, "embed")
  with pytest.raises(pipeline.PipelineError, match="run it first"):
    ctx.input_dir("data")


def test_finished_stage_is_reused_from_another_workdir(tmp_path, fake_data_stage):
  pipeline.run(_config(), tmp_path / "main")
  config = _config()
  config.reuse_from = str(tmp_path / "main")
  pipeline.run(config, tmp_path / "ablation")
  assert fake_data_stage == [1]  # Linked, not recomputed.
  assert (tmp_path / "ablation" / "data" / "out.txt").read_text() == "1"
  config = _config(x_extra=3)
  config.reuse_from = str(tmp_path / "main")
  pipeline.run(config, tmp_path / "ablation")
  assert fake_data_stage == [1, 1]  # Different fingerprint: computed afresh.
  assert (tmp_path / "main" / "data" / "out.txt").read_text() == "1"


def test_a_new_stage_version_invalidates_its_outputs(tmp_path, fake_data_stage):
  pipeline.run(_config(), tmp_path)
  sys.modules["fake_stage"].VERSION = "2"
  pipeline.run(_config(), tmp_path)
  assert fake_data_stage == [1, 1]  # Same config, new code version: ran again.
  pipeline.run(_config(), tmp_path)
  assert fake_data_stage == [1, 1]


def _fake_stages(monkeypatch, *stages):
  """Installs `stages` as the pipeline; each module's run appends its name to the list
  returned."""
  calls = []
  for stage in stages:
    module = types.ModuleType(stage.module)
    module.run = lambda config, ctx, n=stage.module: calls.append(n) or {}
    monkeypatch.setitem(sys.modules, stage.module, module)
  monkeypatch.setattr(pipeline, "STAGES", stages)
  monkeypatch.setattr(pipeline, "_BY_NAME", {s.name: s for s in stages})
  return calls


def test_stale_or_missing_inputs_are_refused_before_any_work(tmp_path, monkeypatch):
  calls = _fake_stages(monkeypatch, pipeline.Stage("data", "fake_a", (), ("data",)),
                       pipeline.Stage("embed", "fake_b", ("data",), ("embed",)))
  config = _config()
  config.embed = ml_collections.ConfigDict(dict(y=1))
  config.stages = "embed"
  with pytest.raises(pipeline.PipelineError, match="add 'data' to --config.stages"):
    pipeline.run(config, tmp_path)
  config.stages = "data,embed"
  pipeline.run(config, tmp_path)
  assert calls == ["fake_a", "fake_b"]
  config.stages = "embed"
  config.data.x = 2  # The data outputs no longer match the config.
  with pytest.raises(pipeline.PipelineError, match="another config"):
    pipeline.run(config, tmp_path)
  assert calls == ["fake_a", "fake_b"]
  config.data.x = 1
  config.embed.y = 2
  pipeline.run(config, tmp_path)  # Only embed's own config changed: fine.
  assert calls == ["fake_a", "fake_b", "fake_b"]


def test_a_stage_cut_off_midway_is_never_taken_as_done(tmp_path, monkeypatch):
  attempts = []
  module = types.ModuleType("fake_crash")

  def run(config, ctx):
    attempts.append(sorted(p.name for p in ctx.dir.iterdir()))
    (ctx.dir / "part.txt").write_text("half")
    if len(attempts) == 1:
      raise KeyboardInterrupt  # Stands in for a kill in the middle of writing.
    (ctx.dir / "part.txt").write_text("whole")
    return {"ok": True}

  module.run = run
  monkeypatch.setitem(sys.modules, "fake_crash", module)
  stage = pipeline.Stage("data", "fake_crash", (), ("data",))
  monkeypatch.setattr(pipeline, "_BY_NAME", {"data": stage})
  with pytest.raises(pipeline.Preempted, match="stage data: stopped by SIGINT"):
    pipeline.run(_config(), tmp_path)
  assert not (tmp_path / "data" / ".done").exists()
  assert not (tmp_path / "data" / "summary.json").exists()
  pipeline.run(_config(), tmp_path)  # The same command: the stage runs again.
  assert len(attempts) == 2 and "part.txt" in attempts[1]  # Same attempt: kept its files.
  assert (tmp_path / "data" / "part.txt").read_text() == "whole"
  assert (tmp_path / "data" / ".done").exists()
  pipeline.run(_config(x_extra=1), tmp_path)  # Another config: starts from an empty dir.
  assert attempts[2] == [".fingerprint.json", ".started"]


def test_outside_file_changed_in_place_reruns_the_stage_and_says_why(tmp_path, fake_data_stage,
                                                                     caplog):
  raw = tmp_path / "reviews.json"
  raw.write_text("abc\n")
  config = _config(raw=str(raw))
  pipeline.run(config, tmp_path / "work")
  pipeline.run(config, tmp_path / "work")
  assert fake_data_stage == [1]  # Unchanged file: skipped.
  # Same name, same size, same modification time, other content: the hash sees it.
  stat = raw.stat()
  raw.write_text("abd\n")
  os.utime(raw, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
  with caplog.at_level(logging.INFO):
    pipeline.run(config, tmp_path / "work")
  assert fake_data_stage == [1, 1]
  assert f"file {raw} changed" in caplog.text
  # A config change is named too.
  with caplog.at_level(logging.INFO):
    pipeline.run(_config(raw=str(raw), x_extra=5), tmp_path / "work")
  assert "config.data.x_extra changed" in caplog.text


def test_file_digests_rehash_only_when_size_or_mtime_change(tmp_path, monkeypatch):
  from gensar_jax import file_digests  # pylint: disable=g-import-not-at-top

  path = tmp_path / "big.bin"
  path.write_bytes(b"x" * 100)
  cache = file_digests.DigestCache(tmp_path / "cache.json")
  first = cache.file(path)
  hashed = []
  real = file_digests._sha256  # pylint: disable=protected-access
  monkeypatch.setattr(file_digests, "_sha256", lambda p: hashed.append(p) or real(p))
  again = file_digests.DigestCache(tmp_path / "cache.json")  # Read back from disk.
  assert again.file(path) == first and hashed == []
  path.write_bytes(b"y" * 101)
  assert again.file(path) != first and len(hashed) == 1
  folder = tmp_path / "enc"
  folder.mkdir()
  (folder / "a.txt").write_text("1")
  before = again.path(folder)
  (folder / "b.txt").write_text("2")
  assert again.path(folder) != before
  assert again.path(tmp_path / "absent") == "missing"


def test_report_follows_an_eval_rerun_when_it_ran_before(tmp_path, monkeypatch):
  ran = _fake_stages(
      monkeypatch, pipeline.Stage("eval", "fake_eval", (), ("data",)),
      pipeline.Stage("report", "fake_report", ("eval",), (), cached=False, refresh=True))
  config = _config()
  config.stages = "eval"
  pipeline.run(config, tmp_path)
  assert ran == ["fake_eval"]  # No report yet: eval alone does not create one.
  config.stages = "eval,report"
  pipeline.run(config, tmp_path)
  assert ran == ["fake_eval", "fake_report"]  # Eval unchanged (cached); the report always runs.
  config = _config(beam=7)
  config.stages = "eval"
  pipeline.run(config, tmp_path)  # Eval rebuilt: the existing report follows.
  assert ran == ["fake_eval", "fake_report", "fake_eval", "fake_report"]
  pipeline.run(config, tmp_path)  # Nothing rebuilt: nothing runs.
  assert ran == ["fake_eval", "fake_report", "fake_eval", "fake_report"]


def test_a_stage_sees_only_the_config_it_declares(tmp_path, monkeypatch):
  seen = {}
  module = types.ModuleType("fake_declared")

  def run(config, ctx):
    seen["beam"] = config.eval.beam_size
    seen["seed"] = config.seed
    with pytest.raises(AttributeError):
      config.eval.batch_size  # pylint: disable=pointless-statement  (not declared)
    config.train  # pylint: disable=pointless-statement  (undeclared section: raises)
    return {}

  module.run = run
  module.INPUTS = ()
  module.CONFIG_KEYS = ("data", "eval.beam_size")
  monkeypatch.setitem(sys.modules, "fake_declared", module)
  stage = pipeline.Stage("data", "fake_declared")
  monkeypatch.setattr(pipeline, "_BY_NAME", {"data": stage})
  config = _config()
  config.eval = ml_collections.ConfigDict(dict(beam_size=3, batch_size=8))
  config.train = ml_collections.ConfigDict(dict(steps=1))
  with pytest.raises(AttributeError, match="train"):
    pipeline.run(config, tmp_path)
  assert seen == {"beam": 3, "seed": 0}
  module.ALSO_READS = ("train",)  # Declared (not fingerprinted): now it may read it.
  module.run = lambda config, ctx: {"steps": config.train.steps}
  assert pipeline.run(config, tmp_path)["data"] == {"steps": 1, "wall_s": pytest.approx(0, abs=60)}


def test_a_stage_reads_only_the_inputs_it_declares(tmp_path):
  (tmp_path / "data").mkdir()
  (tmp_path / "data" / pipeline._DONE).write_text("x\n")  # pylint: disable=protected-access
  ctx = pipeline.StageContext(tmp_path, "embed", inputs=("identifiers",))
  with pytest.raises(pipeline.PipelineError, match="without declaring it"):
    ctx.input_dir("data")
  with pytest.raises(pipeline.PipelineError, match="without declaring it"):
    ctx.has_input("data")


def test_every_stage_declares_its_inputs_and_config():
  for stage in pipeline.STAGES:
    assert set(stage.optional) <= set(stage.inputs), stage.name
    assert all(i in pipeline._BY_NAME for i in stage.inputs), stage.name  # pylint: disable=protected-access
    assert stage.config_keys, stage.name


def test_train_fingerprint_takes_the_beam_width_only_when_validation_uses_beams(tmp_path):
  from tests.conftest import load_config  # pylint: disable=g-import-not-at-top

  train = pipeline.STAGES[[s.name for s in pipeline.STAGES].index("train")]
  fp = lambda c: pipeline.fingerprint(c, train, tmp_path)
  base = load_config("demo")
  wider = load_config("demo")
  wider.eval.beam_size = 50
  assert base.eval.rank == "exact" and fp(base) == fp(wider)  # Exact validation: no beams.
  base.eval.rank = wider.eval.rank = "beam"
  assert fp(base) != fp(wider)


def test_train_fingerprint_leaves_out_who_builds_the_epochs(tmp_path):
  from tests.conftest import load_config  # pylint: disable=g-import-not-at-top

  train = pipeline.STAGES[[s.name for s in pipeline.STAGES].index("train")]
  fp = lambda c: pipeline.fingerprint(c, train, tmp_path)
  base, workers, batch = (load_config("demo") for _ in range(3))
  workers.train.epoch_workers = 8  # A resume on a host with more cores reuses the run.
  workers.train.precompile = not base.train.precompile  # The same programs either way.
  batch.train.batch_size = base.train.batch_size * 2
  assert fp(base) == fp(workers)
  assert fp(base) != fp(batch)
  assert "epoch_workers" in pipeline.stage_config(workers, train).train  # Still read.
