"""Reads a raw McAuley Amazon category folder (reviews, meta, optional query files).

Layout (DESIGN §1.1), `.json` or `.json.gz`:
  reviews_NAME_5.json  one JSON review a line: reviewerID, asin, unixReviewTime
                       (reviewText / summary optional: used to filter query words).
  meta_NAME.json       one item a line: asin, title, description, categories (2014,
                       Python literals, read with `ast.literal_eval`) or category
                       (2018, JSON; description may be a list of strings).
  query_text.txt, train.qrels, test.qrels  (optional, Ai et al.'s released queries).

Every problem with the input is a `PipelineError` naming the file and, where one
applies, the line number.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import html
import html.parser
import json
import pathlib
import re
import zlib
from collections import Counter
from typing import Iterator

import numpy as np

from gensar_jax.pipeline import PipelineError

_WORD = re.compile(r"[a-z]+")
_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']*)["']""")
_SPACE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class RawFiles:
  """Paths of one category's raw files (None where an optional file is absent)."""

  reviews: pathlib.Path
  meta: pathlib.Path | None
  query_text: pathlib.Path | None = None
  train_qrels: pathlib.Path | None = None
  test_qrels: pathlib.Path | None = None

  @property
  def has_released_queries(self) -> bool:
    return self.query_text is not None and (
        self.train_qrels is not None or self.test_qrels is not None)


@dataclasses.dataclass
class Reviews:
  """Reviews in file order.

  Attributes:
    user_ids: [n] str reviewerIDs.
    item_ids: [n] str asins.
    times: [n] int64 unixReviewTime.
    linenos: [n] int64 line number of each review in the file.
    word_counts: lowercase word -> occurrences in reviewText + summary (empty when
      no review carries text or counting was not asked for).
    has_text: whether any review carried reviewText or summary.
  """

  user_ids: np.ndarray
  item_ids: np.ndarray
  times: np.ndarray
  linenos: np.ndarray
  word_counts: Counter
  has_text: bool


@dataclasses.dataclass
class Meta:
  """Item metadata for the wanted asins, in the order of `asins`.

  Attributes:
    titles / descriptions: cleaned text ("" when absent).
    category_paths: per item, a list of category paths (each a list of str).
    found: [n] bool, whether the asin has a meta line.
    lines_read: meta lines in the file.
    duplicates: meta lines repeating an asin already read (first one kept).
  """

  titles: list[str]
  descriptions: list[str]
  category_paths: list[list[list[str]]]
  found: np.ndarray
  lines_read: int
  duplicates: int


def _first_existing(folder: pathlib.Path, name: str) -> pathlib.Path | None:
  for candidate in (folder / name, folder / (name + ".gz")):
    if candidate.is_file():
      return candidate
  return None


def find_files(raw_dir: str | pathlib.Path, category: str) -> RawFiles:
  """Locates one category's files in `raw_dir`.

  Raises:
    PipelineError: the folder or its reviews file is missing.
  """
  folder = pathlib.Path(raw_dir)
  if not folder.is_dir():
    raise PipelineError(f"raw data folder {folder} does not exist")
  reviews = _first_existing(folder, f"reviews_{category}_5.json")
  if reviews is None:
    found = sorted(p.name for p in folder.glob("reviews_*"))
    raise PipelineError(
        f"no reviews file reviews_{category}_5.json[.gz] in {folder}"
        + (f" (found {found}; is config.data.category right?)" if found else ""))
  return RawFiles(
      reviews=reviews,
      meta=_first_existing(folder, f"meta_{category}.json"),
      query_text=_first_existing(folder, "query_text.txt"),
      train_qrels=_first_existing(folder, "train.qrels"),
      test_qrels=_first_existing(folder, "test.qrels"),
  )


def iter_lines(path: pathlib.Path) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, line without newline), skipping blank lines.

  Raises:
    PipelineError: the file cannot be read or decompressed (names the line reached).
  """
  opener = gzip.open if path.suffix == ".gz" else open
  lineno = 0
  try:
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
      for lineno, line in enumerate(f, start=1):
        line = line.strip()
        if line:
          yield lineno, line
  except (OSError, EOFError, zlib.error) as e:
    raise PipelineError(
        f"{path}: cannot read the file near line {lineno + 1} (corrupt or truncated "
        f"gzip?): {e}") from None


def parse_record(path: pathlib.Path, lineno: int, line: str) -> dict:
  """Parses one JSON (2018, reviews) or Python-literal (2014 meta) line into a dict."""
  try:
    record = json.loads(line)
  except ValueError:
    try:
      record = ast.literal_eval(line)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
      raise PipelineError(f"{path}:{lineno}: malformed line ({type(e).__name__}): "
                          f"{line[:80]!r}") from None
  if not isinstance(record, dict):
    raise PipelineError(f"{path}:{lineno}: expected an object, got {type(record).__name__}")
  return record


def _text_of(value) -> str:
  if value is None:
    return ""
  if isinstance(value, (list, tuple)):
    return " ".join(_text_of(v) for v in value)
  return str(value)


def read_reviews(path: pathlib.Path, count_words: bool = True) -> Reviews:
  """Reads a reviews file.

  Args:
    path: reviews_NAME_5.json[.gz].
    count_words: count lowercase words of reviewText + summary (for query filtering).

  Raises:
    PipelineError: malformed line, missing field, or no reviews at all.
  """
  users, items, times, linenos = [], [], [], []
  counts: Counter = Counter()
  texts: list[str] = []
  has_text = False
  for lineno, line in iter_lines(path):
    r = parse_record(path, lineno, line)
    try:
      users.append(str(r["reviewerID"]))
      items.append(str(r["asin"]))
      times.append(int(r["unixReviewTime"]))
      linenos.append(lineno)
    except KeyError as e:
      raise PipelineError(f"{path}:{lineno}: review without {e.args[0]!r}") from None
    except (TypeError, ValueError):
      raise PipelineError(
          f"{path}:{lineno}: unixReviewTime is not an integer: "
          f"{r.get('unixReviewTime')!r}") from None
    if count_words and ("reviewText" in r or "summary" in r):
      has_text = True
      texts.append(_text_of(r.get("reviewText")))
      texts.append(_text_of(r.get("summary")))
      if len(texts) >= 20_000:
        counts.update(_WORD.findall(" ".join(texts).lower()))
        texts = []
  if texts:
    counts.update(_WORD.findall(" ".join(texts).lower()))
  if not users:
    raise PipelineError(f"{path}: the reviews file is empty")
  return Reviews(np.asarray(users), np.asarray(items), np.asarray(times, np.int64),
                 np.asarray(linenos, np.int64), counts, has_text)


class _TextExtractor(html.parser.HTMLParser):
  """Collects the text content of an HTML fragment."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.parts: list[str] = []

  def handle_data(self, data):
    self.parts.append(data)

  def handle_starttag(self, tag, attrs):
    if tag in ("br", "p", "li", "div", "tr"):
      self.parts.append(" ")


def clean_text(text: str) -> str:
  """Strips HTML tags and entities and collapses whitespace."""
  if "<" in text or "&" in text:
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    text = "".join(parser.parts)
  return _SPACE.sub(" ", text).strip()


def _category_paths(path: pathlib.Path, lineno: int, record: dict) -> list[list[str]]:
  """2014 `categories` (list of paths) or 2018 `category` (one flat path)."""
  if "categories" in record:
    value = record["categories"] or []
    if not isinstance(value, (list, tuple)):
      raise PipelineError(f"{path}:{lineno}: 'categories' is not a list")
    paths = []
    for p in value:
      if isinstance(p, str):  # a flat list given under the 2014 name
        return [[str(c) for c in value]]
      paths.append([str(c) for c in p])
    return paths
  if "category" in record:
    value = record["category"] or []
    if isinstance(value, str):
      value = [value]
    return [[clean_text(str(c)) for c in value]] if value else []
  return []


def read_meta(path: pathlib.Path, asins: np.ndarray) -> Meta:
  """Reads the metadata of `asins` (lines of other items are only checked for an asin).

  Raises:
    PipelineError: malformed line, a line without asin, or an empty file.
  """
  index = {a: k for k, a in enumerate(asins.tolist())}
  n = len(index)
  titles, descriptions = [""] * n, [""] * n
  paths: list[list[list[str]]] = [[] for _ in range(n)]
  seen = np.zeros(n, bool)
  lines = duplicates = 0
  for lineno, line in iter_lines(path):
    lines += 1
    m = _ASIN.search(line)
    if m is not None and m.group(1) not in index:
      continue  # an item nobody reviewed: not part of the catalog
    record = parse_record(path, lineno, line)
    if "asin" not in record:
      raise PipelineError(f"{path}:{lineno}: meta line without 'asin'")
    k = index.get(str(record["asin"]))
    if k is None:
      continue
    if seen[k]:
      duplicates += 1
      continue
    seen[k] = True
    titles[k] = clean_text(_text_of(record.get("title")))
    descriptions[k] = clean_text(_text_of(record.get("description")))
    paths[k] = _category_paths(path, lineno, record)
  if lines == 0:
    raise PipelineError(f"{path}: the meta file is empty")
  return Meta(titles, descriptions, paths, seen, lines, duplicates)


def read_query_text(path: pathlib.Path) -> list[str]:
  """Ai et al.'s query_text.txt: one query a line, the query index = 0-based line."""
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
      return [line.strip() for line in f]
  except (OSError, EOFError, zlib.error) as e:
    raise PipelineError(f"{path}: cannot read the file: {e}") from None


def read_qrels(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads `<reviewerID>_<query_index> 0 <asin> 1` lines.

  Returns:
    (user_ids [n] str, query indices [n] int64, asins [n] str).
  """
  users, queries, items = [], [], []
  for lineno, line in iter_lines(path):
    parts = line.split()
    if len(parts) != 4 or "_" not in parts[0]:
      raise PipelineError(f"{path}:{lineno}: expected '<reviewerID>_<query> 0 <asin> 1', "
                          f"got {line[:80]!r}")
    user, q = parts[0].rsplit("_", 1)
    try:
      queries.append(int(q))
    except ValueError:
      raise PipelineError(f"{path}:{lineno}: query index {q!r} is not an integer") from None
    users.append(user)
    items.append(parts[2])
  return np.asarray(users, dtype=str), np.asarray(queries, np.int64), np.asarray(items, dtype=str)
