"""Content digests of files and folders outside the workdir (raw data, model folders).

A stage's fingerprint includes the digest of every outside file it reads, so replacing
a file in place reruns the stage. Hashing a multi-GB raw file on every run would be slow,
so each file's SHA-256 is kept in a cache keyed by (path, size, mtime): a file is hashed
again only when its size or modification time changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

_CHUNK = 1 << 20


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with path.open("rb") as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


class DigestCache:
  """SHA-256 of files, remembered by (size, mtime) in a JSON file (None: in memory only)."""

  def __init__(self, cache_file: pathlib.Path | None = None):
    self.cache_file = cache_file
    self.entries: dict[str, dict] = {}
    if cache_file is not None and cache_file.exists():
      try:
        self.entries = json.loads(cache_file.read_text())
      except (OSError, ValueError):
        self.entries = {}  # A damaged cache is only a cache: hash again.

  def file(self, path: pathlib.Path, save: bool = True) -> str:
    """`size:sha256` of one file (`save`: write the cache file when it was hashed)."""
    path = pathlib.Path(path).resolve()
    st = path.stat()
    key = str(path)
    hit = self.entries.get(key)
    if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
      return f"{st.st_size}:{hit['sha256']}"
    sha = _sha256(path)
    self.entries[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
    if save:
      self.save()
    return f"{st.st_size}:{sha}"

  def path(self, path: pathlib.Path) -> str:
    """The digest of a file, or of a folder (every file in it, by relative path)."""
    path = pathlib.Path(path)
    if not path.exists():
      return "missing"
    if path.is_file():
      return self.file(path)
    h = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
      h.update(f"{child.relative_to(path)}={self.file(child, save=False)}\n".encode())
    self.save()  # Once per folder, not once per file.
    return "dir:" + h.hexdigest()

  def save(self) -> None:
    """Writes the cache file (when there is one)."""
    if self.cache_file is None:
      return
    self.cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = self.cache_file.with_name(self.cache_file.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(self.entries, sort_keys=True))
    os.replace(tmp, self.cache_file)
