"""Test set-up: 8 simulated CPU devices for the multi-device tests, shared fixtures."""

import os
import pathlib

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
OFFICE_DIR = REPO.parent / "shared" / "data" / "amazon-office"


@pytest.fixture
def office_dir() -> pathlib.Path:
  """The real Amazon Office folder; skips the test when it is absent."""
  if not (OFFICE_DIR / "reviews_Office_Products_5.json.gz").exists():
    pytest.skip(f"real data not found at {OFFICE_DIR}")
  return OFFICE_DIR


def load_config(name: str, arg: str | None = None):
  """configs/<name>.py's get_config(arg), loaded as `gensar_jax.main` loads it."""
  from gensar_jax import config_files  # pylint: disable=g-import-not-at-top

  return config_files.load_module(CONFIGS / f"{name}.py").get_config(arg)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """Every stage on the tiny world of `test_end_to_end.tiny_config`, run once per session
  (tests that change it work on a copy): (workdir, summaries)."""
  from gensar_jax import pipeline  # pylint: disable=g-import-not-at-top
  from tests.test_end_to_end import tiny_config  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.mktemp("e2e")
  summaries = pipeline.run(tiny_config(), workdir)
  return workdir, summaries
