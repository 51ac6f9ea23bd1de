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


# Test files that share a session fixture, kept on one worker under xdist (`-n`): they
# would each build it otherwise. Every other file is a unit of its own.
_SHARED_FIXTURE_FILES = {"tests/test_end_to_end.py": "tiny_run",
                         "tests/test_reliability_pipeline.py": "tiny_run"}
MAX_AUTO_WORKERS = 4  # `-n auto`: a worker with 8 simulated devices grows to ~4.6 GB (measured).


@pytest.hookimpl(optionalhook=True)  # Defined by pytest-xdist.
def pytest_xdist_make_scheduler(config, log):
  """Under `-n N` (xdist's default `--dist load`, or `loadfile`), sends each test file to
  one worker whole (its module fixtures are built once) and the files of
  `_SHARED_FIXTURE_FILES` to the same one: `loadfile` with those files merged. (xdist's
  `loadgroup` marks do not reach its scheduler under pytest 9.) Another `--dist` mode
  is left to xdist."""
  if config.getvalue("dist") not in ("load", "loadfile"):
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top

  class FileScheduling(LoadScopeScheduling):
    def _split_scope(self, nodeid: str) -> str:
      path = nodeid.split("::", 1)[0]
      return _SHARED_FIXTURE_FILES.get(path, path)

  return FileScheduling(config, log)


@pytest.hookimpl(optionalhook=True)  # Defined by pytest-xdist.
def pytest_xdist_auto_num_workers(config):
  """`-n auto`: one worker per core, at most `MAX_AUTO_WORKERS`."""
  del config
  return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """Every stage on the tiny world of `test_end_to_end.tiny_config`, run once per session
  (tests that change it work on a copy): (workdir, summaries)."""
  from gensar_jax import pipeline  # pylint: disable=g-import-not-at-top
  from tests.test_end_to_end import tiny_config  # pylint: disable=g-import-not-at-top

  workdir = tmp_path_factory.mktemp("e2e")
  summaries = pipeline.run(tiny_config(), workdir)
  return workdir, summaries
