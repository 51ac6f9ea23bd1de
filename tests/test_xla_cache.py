"""The persistent XLA cache (`gensar_jax.main.enable_xla_cache`): a copied cache is read."""

import pathlib
import shutil
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# Compiles one program with the cache in argv[1] and prints how many came from the cache.
_RUN = """
import pathlib, sys
import jax, jax.numpy as jnp
from gensar_jax import main
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(1) if event == "/jax/compilation_cache/cache_hits" else None)
main.enable_xla_cache(pathlib.Path(sys.argv[1]))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
x = jnp.arange(64.0).reshape(8, 8)
print(float(jax.jit(lambda a: jnp.tanh(a @ a.T).sum())(x)), len(hits))
"""


def _run(folder: pathlib.Path) -> tuple[float, int]:
  proc = subprocess.run([sys.executable, "-c", _RUN, str(folder)], cwd=REPO, check=True,
                        capture_output=True, text=True, env={"JAX_PLATFORMS": "cpu", "PATH": ""})
  value, hits = proc.stdout.split()[-2:]
  return float(value), int(hits)


def test_a_cache_copied_to_another_workdir_is_read(tmp_path):
  first = tmp_path / "run_a" / ".xla_cache"
  value, hits = _run(first)
  assert hits == 0 and any(first.iterdir())  # Compiled and written.
  copy = tmp_path / "run_b" / ".xla_cache"
  shutil.copytree(first, copy)
  again, hits = _run(copy)
  assert hits >= 1 and again == value  # Read from the copy, same result.
