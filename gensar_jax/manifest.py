"""Manifests of finished stage outputs: every file's size and SHA-256, checked on reuse.

The runner writes `<stage>/.manifest.json` when a stage finishes and checks it whenever
the stage would be skipped as up to date, reused from another workdir or read by a later
stage: a file that is missing or whose content changed makes the runner rerun the stage,
saying which files. Digests come from a `file_digests.DigestCache`, which hashes a file
again only when its size or modification time changed: so an edit that keeps a file's
size and restores its modification time is not detected (the known limit).
"""

from __future__ import annotations

import json
import pathlib

from gensar_jax import atomic
from gensar_jax import file_digests

MANIFEST = ".manifest.json"
# Bookkeeping files of the runner in a stage directory (not outputs).
BOOKKEEPING = (".done", ".started", ".fingerprint.json", MANIFEST)


def _outputs(stage_dir: pathlib.Path) -> list[pathlib.Path]:
  top = {stage_dir / name for name in BOOKKEEPING}
  return sorted(p for p in stage_dir.rglob("*") if p.is_file() and p not in top)


def write(stage_dir: pathlib.Path, cache: file_digests.DigestCache) -> None:
  """Records the size and digest of every output file of a finished stage."""
  stage_dir = pathlib.Path(stage_dir)
  entries = {str(p.relative_to(stage_dir)): cache.file(p, save=False)
             for p in _outputs(stage_dir)}
  cache.save()
  atomic.write_json_atomic(stage_dir / MANIFEST, entries)


def changed(stage_dir: pathlib.Path, cache: file_digests.DigestCache, limit: int = 3) -> str:
  """What differs from the manifest ("" when intact, or when there is no manifest).

  Returns:
    e.g. "identifiers.npz changed; 2 more", "summary.json missing".
  """
  stage_dir = pathlib.Path(stage_dir)
  path = stage_dir / MANIFEST
  if not path.exists():
    return ""  # Outputs of a version that wrote no manifest: trusted as before.
  try:
    entries = json.loads(path.read_text())
  except ValueError:
    return f"{MANIFEST} unreadable"
  said = []
  for rel, digest in entries.items():
    p = stage_dir / rel
    if not p.is_file():
      said.append(f"{rel} missing")
    elif cache.file(p, save=False) != digest:
      said.append(f"{rel} changed")
  cache.save()
  if len(said) > limit:
    said = said[:limit] + [f"{len(said) - limit} more"]
  return "; ".join(said)
