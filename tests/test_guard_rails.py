"""Bad configs are refused before any work, each with one clear message."""

import pytest

from gensar_jax import pipeline
from tests.test_end_to_end import tiny_config


@pytest.mark.parametrize("overrides,message", [
    ({"stages": "data,bogus"}, "unknown stage"),
    ({"identifiers.latent_dim": 15}, "latent_dim must be even"),
    ({"identifiers.variant": "both"}, "variant must be one of"),
    ({"identifiers.num_shared_levels": 0, "identifiers.num_specific_levels": 0}, "L_m"),
    ({"eval.beam_size": 500}, r"beam_size \(500\) is larger than the catalog \(60 items\)"),
    ({"eval.score": "softmax"}, "eval.score"),
    ({"train.batch_size": 20, "train.grad_accum_steps": 3}, "multiple of grad_accum_steps"),
    ({"tasks.shares.nrip": -5.0}, "tasks.shares"),
    ({"data.demo": False, "data.raw_dir": "/nonexistent/raw"}, "does not exist"),
    ({"data.min_targets": 2}, "min_targets must be >= 3"),
    ({"doc2query.method": "greedy"}, "method must be"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, message):
  config = tiny_config(**overrides)
  workdir = tmp_path / "work"
  with pytest.raises(pipeline.PipelineError, match=message):
    pipeline.run(config, workdir)
  assert not workdir.exists() or not any(workdir.iterdir())
