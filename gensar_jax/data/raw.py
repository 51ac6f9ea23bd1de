"""Reads a raw McAuley Amazon category folder (reviews, meta, optional query files).

Layout (docs/design.md §1.1), `.json` or `.json.gz`:
  reviews_NAME_5.json  one JSON review a line: reviewerID, asin, unixReviewTime
                       (reviewText / summary optional: used to filter query words).
  meta_NAME.json       one item a line: asin, title, description, categories (2014,
                       Python literals, read with `ast.literal_eval`, never `eval`) or
                       category (2018, JSON; description may be a list of strings).
  query_text.txt, train.qrels, test.qrels  (optional, Ai et al.'s released queries).

The rule for bad input. A file that cannot be trusted stops the run with a
`PipelineError` naming the file and, where one applies, the line (no traceback is
shown by `gensar_jax.main`); a record that is well-formed but unusable or redundant is
skipped and counted by reason in the summary's `skipped`; damage below the record
level is repaired and counted in the summary's `repaired`. Nothing is dropped
silently and nothing in a file is ever executed.

Fatal (file and line named):
  * the folder, its reviews file or its meta file is missing; query_text without any
    qrels file or qrels without query_text;
  * a file that cannot be read or decompressed (corrupt or truncated gzip);
  * an input file without a single non-blank line;
  * a malformed line: neither a JSON object nor a Python literal dict. A line holding
    Python code (`__import__('os')...`) is malformed: `ast.literal_eval` only builds
    literals, so the code is rejected, not run;
  * a review without reviewerID, asin or unixReviewTime (missing, null or ""), or a
    time that is not an integer; a meta line without asin; a qrels line not of the
    form `<reviewerID>_<query index> 0 <asin> 1`;
  * a review of an item that has no meta line (reported by `process`).
Skipped and counted (in `process`): repeated reviews of one (user, item) pair (the
  earliest is kept), repeated meta lines of one asin (the first is kept), meta lines
  of items nobody reviewed (they are only scanned for a leading asin, not parsed),
  items without text or without a usable category path, qrels of unknown pairs.
Repaired and counted, per file: bytes that are not valid UTF-8 (replaced by U+FFFD)
  and NUL bytes (removed); the record itself is kept.
Accepted as they are: reviews in any order (events are sorted by time later), lines
  of any length, HTML in titles or descriptions (tags, scripts and styles stripped,
  entities decoded, in linear time), category paths of one level (no query: counted
  as `item_without_query`).
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import html
import json
import pathlib
import re
import zlib
from collections import Counter
from typing import Iterator

import numpy as np

from gensar_jax.errors import PipelineError

# Review words for the query filter are the runs of [a-z] in the lowercased text; on
# UTF-8 bytes that is: every byte outside a-z becomes a space, then split.
_LETTERS_ONLY = bytes(c if ord("a") <= c <= ord("z") else ord(" ") for c in range(256))
# A meta line that starts with its asin (2014 files and most others): the asin can be
# read without parsing the line.
_LEADING_ASIN = re.compile(r"""\{\s*["']asin["']\s*:\s*["']([^"'\\]*)["']""")
# HTML: script/style open or close tags, block-level tags (-> a space), any other tag or
# declaration (-> nothing). `[^<>]*` keeps every pattern linear in the text length.
_SCRIPT_TAG = re.compile(r"(<\s*/?\s*(?:script|style)\b[^<>]*>)", re.IGNORECASE)
_BLOCK_TAG = re.compile(
    r"</?\s*(?:br|p|li|ul|ol|div|tr|td|th|table|h[1-6])\b[^<>]*>", re.IGNORECASE)
_ANY_TAG = re.compile(r"</?[a-zA-Z][^<>]*>|<![^<>]*>")


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
    repaired: lines repaired, by reason ("invalid_utf8", "nul_bytes").
  """

  user_ids: np.ndarray
  item_ids: np.ndarray
  times: np.ndarray
  linenos: np.ndarray
  word_counts: Counter
  has_text: bool
  repaired: Counter = dataclasses.field(default_factory=Counter)


@dataclasses.dataclass
class Meta:
  """Item metadata for the wanted asins, in the order of `asins`.

  Attributes:
    titles / descriptions: cleaned text ("" when absent).
    category_paths: per item, a list of category paths (each a list of str).
    found: [n] bool, whether the asin has a meta line.
    lines_read: meta lines in the file.
    duplicates: meta lines repeating an asin already read (first one kept).
    repaired: lines repaired, by reason ("invalid_utf8", "nul_bytes").
  """

  titles: list[str]
  descriptions: list[str]
  category_paths: list[list[list[str]]]
  found: np.ndarray
  lines_read: int
  duplicates: int
  repaired: Counter = dataclasses.field(default_factory=Counter)


def reviews_name(category: str) -> str:
  """The reviews file of a category (without ".gz"): `reviews_NAME_5.json`."""
  return f"reviews_{category}_5.json"


def meta_name(category: str) -> str:
  """The metadata file of a category (without ".gz"): `meta_NAME.json`."""
  return f"meta_{category}.json"


def review_line(user_id: str, asin: str, text: str, rating: float, unix_time: int,
                **extra) -> str:
  """One line of a reviews file (JSON; `extra` fields, e.g. "summary", follow)."""
  return json.dumps({"reviewerID": user_id, "asin": asin, "reviewText": text,
                     "overall": float(rating), "unixReviewTime": int(unix_time), **extra})


def meta_line(record: dict) -> str:
  """One line of a metadata file: a Python literal, as the 2014 release writes it."""
  return repr(record)


def _first_existing(folder: pathlib.Path, name: str) -> pathlib.Path | None:
  for candidate in (folder / name, folder / (name + ".gz")):
    if candidate.is_file():
      return candidate
  return None


def find_files(raw_dir: str | pathlib.Path, category: str) -> RawFiles:
  """Locates one category's files in `raw_dir`.

  Raises:
    PipelineError: the folder or its reviews file is missing, or Ai et al.'s query
      files are there only in part.
  """
  folder = pathlib.Path(raw_dir)
  if not folder.is_dir():
    raise PipelineError(f"raw data folder {folder} does not exist")
  reviews = _first_existing(folder, reviews_name(category))
  if reviews is None:
    found = sorted(p.name for p in folder.glob("reviews_*"))
    raise PipelineError(
        f"no reviews file {reviews_name(category)}[.gz] in {folder}"
        + (f" (found {found}; is config.data.category right?)" if found else ""))
  files = RawFiles(
      reviews=reviews,
      meta=_first_existing(folder, meta_name(category)),
      query_text=_first_existing(folder, "query_text.txt"),
      train_qrels=_first_existing(folder, "train.qrels"),
      test_qrels=_first_existing(folder, "test.qrels"),
  )
  has_qrels = files.train_qrels is not None or files.test_qrels is not None
  if has_qrels and files.query_text is None:
    raise PipelineError(f"{folder} has train.qrels/test.qrels but no query_text.txt[.gz]: "
                        "add it, or remove the qrels to build queries from categories")
  if files.query_text is not None and not has_qrels:
    raise PipelineError(f"{folder} has query_text.txt but no train.qrels or test.qrels: "
                        "add them, or remove query_text to build queries from categories")
  return files


def iter_lines(path: pathlib.Path, repaired: Counter | None = None,
               keep_blank: bool = False) -> Iterator[tuple[int, str]]:
  """Yields (1-based line number, stripped line), skipping blank lines by default.

  Bytes that are not UTF-8 become U+FFFD and NUL bytes are removed; each such line is
  counted in `repaired` ("invalid_utf8", "nul_bytes").

  Raises:
    PipelineError: the file cannot be read or decompressed (names the line reached).
  """
  opener = gzip.open if path.suffix == ".gz" else open
  lineno = 0
  try:
    with opener(path, "rb") as f:
      for lineno, raw_line in enumerate(f, start=1):
        try:
          line = raw_line.decode("utf-8")
        except UnicodeDecodeError:
          line = raw_line.decode("utf-8", errors="replace")
          if repaired is not None:
            repaired["invalid_utf8"] += 1
        if "\x00" in line:
          line = line.replace("\x00", "")
          if repaired is not None:
            repaired["nul_bytes"] += 1
        line = line.strip()
        if line or keep_blank:
          yield lineno, line
  except (OSError, EOFError, zlib.error) as e:
    raise PipelineError(
        f"{path}: cannot read the file near line {lineno + 1} (corrupt or truncated "
        f"gzip?): {e}") from None


def parse_record(path: pathlib.Path, lineno: int, line: str) -> dict:
  """Parses one JSON (2018, reviews) or Python-literal (2014 meta) line into a dict.

  Python literals are read with `ast.literal_eval`, which builds only literals: code in
  a line is rejected as malformed, never executed.

  Raises:
    PipelineError: the line is neither, or is not a dict (names file and line).
  """
  try:
    record = json.loads(line)
  except (ValueError, RecursionError):
    try:
      record = ast.literal_eval(line)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as e:
      raise PipelineError(f"{path}:{lineno}: malformed line ({type(e).__name__}), "
                          f"neither JSON nor a Python literal: {line[:80]!r}") from None
  if not isinstance(record, dict):
    raise PipelineError(f"{path}:{lineno}: expected an object, got {type(record).__name__}")
  return record


def _text_of(value) -> str:
  if value is None:
    return ""
  if isinstance(value, (list, tuple)):
    return " ".join(_text_of(v) for v in value)
  return str(value)


def _required_id(path: pathlib.Path, lineno: int, record: dict, key: str, what: str) -> str:
  """record[key] as str; a missing, null, empty or non-scalar id is fatal."""
  value = record.get(key)
  if value is None or value == "":
    raise PipelineError(f"{path}:{lineno}: {what} without {key!r}")
  if isinstance(value, (dict, list, tuple, set)):
    raise PipelineError(f"{path}:{lineno}: {what} whose {key!r} is not a string: "
                        f"{str(value)[:80]!r}")
  return str(value)


def _review_time(path: pathlib.Path, lineno: int, value) -> int:
  """unixReviewTime as int (an int, or a string or float holding one; |t| < 2**62)."""
  if value is None:
    raise PipelineError(f"{path}:{lineno}: review without 'unixReviewTime'")
  try:
    t = int(value)
    ok = not isinstance(value, bool) and t == float(value) and abs(t) < 2**62
  except (TypeError, ValueError, OverflowError):
    ok = False
  if not ok:
    raise PipelineError(
        f"{path}:{lineno}: unixReviewTime is not an integer: {str(value)[:40]!r}")
  return t


def _count_words(texts: list[str], counts: Counter) -> None:
  """Adds the [a-z]+ runs of the lowercased texts to `counts` (keys are bytes)."""
  data = " ".join(texts).lower().encode("utf-8", errors="ignore")
  counts.update(data.translate(_LETTERS_ONLY).split())


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
  repaired: Counter = Counter()
  texts: list[str] = []
  text_chars = 0
  has_text = False
  for lineno, line in iter_lines(path, repaired):
    r = parse_record(path, lineno, line)
    users.append(_required_id(path, lineno, r, "reviewerID", "review"))
    items.append(_required_id(path, lineno, r, "asin", "review"))
    times.append(_review_time(path, lineno, r.get("unixReviewTime")))
    linenos.append(lineno)
    if count_words and ("reviewText" in r or "summary" in r):
      has_text = True
      for key in ("reviewText", "summary"):
        text = _text_of(r.get(key))
        texts.append(text)
        text_chars += len(text)
      if text_chars >= 8_000_000:
        _count_words(texts, counts)
        texts, text_chars = [], 0
  if texts:
    _count_words(texts, counts)
  counts = Counter({w.decode(): n for w, n in counts.items()})
  if not users:
    raise PipelineError(f"{path}: the reviews file is empty")
  return Reviews(np.asarray(users), np.asarray(items), np.asarray(times, np.int64),
                 np.asarray(linenos, np.int64), counts, has_text, repaired)


def clean_text(text: str) -> str:
  """Strips HTML (tags, script and style content), decodes entities, collapses spaces.

  Linear in the length of `text` (no backtracking parser), so a hostile 10 MB
  description costs no more than a plain one.
  """
  if "<" in text:
    if _SCRIPT_TAG.search(text):
      kept, inside = [], False
      for k, piece in enumerate(_SCRIPT_TAG.split(text)):
        if k % 2:  # A script/style tag: an opening one starts dropped content.
          inside = not piece.lstrip("< \t").startswith("/")
        elif not inside:
          kept.append(piece)
        kept.append(" ")
      text = "".join(kept)
    text = _ANY_TAG.sub("", _BLOCK_TAG.sub(" ", text))
  if "&" in text:
    text = html.unescape(text)
  return " ".join(text.split())


def _category_paths(path: pathlib.Path, lineno: int, record: dict) -> list[list[str]]:
  """2014 `categories` (list of paths) or 2018 `category` (one flat path)."""
  if "categories" in record:
    value = record["categories"] or []
    if not isinstance(value, (list, tuple)):
      raise PipelineError(f"{path}:{lineno}: 'categories' is not a list")
    if any(isinstance(p, str) for p in value):  # A flat list under the 2014 name.
      return [[_text_of(c) for c in value]]
    return [[_text_of(c) for c in p] if isinstance(p, (list, tuple)) else [_text_of(p)]
            for p in value]
  if "category" in record:
    value = record["category"] or []
    if isinstance(value, str):
      value = [value]
    return [[clean_text(_text_of(c)) for c in value]] if value else []
  return []


def read_meta(path: pathlib.Path, asins: np.ndarray) -> Meta:
  """Reads the metadata of `asins`.

  A line that starts with the asin of an item outside `asins` is skipped unparsed;
  every other line is parsed (so every line of a wanted item, and every line whose
  asin is not up front, is checked).

  Raises:
    PipelineError: malformed line, a line without asin, or an empty file.
  """
  index = {a: k for k, a in enumerate(asins.tolist())}
  n = len(index)
  titles, descriptions = [""] * n, [""] * n
  paths: list[list[list[str]]] = [[] for _ in range(n)]
  seen = np.zeros(n, bool)
  lines = duplicates = 0
  repaired: Counter = Counter()
  for lineno, line in iter_lines(path, repaired):
    lines += 1
    m = _LEADING_ASIN.match(line)
    if m is not None and m.group(1) not in index:
      continue  # An item nobody reviewed: not part of the catalog.
    record = parse_record(path, lineno, line)
    k = index.get(_required_id(path, lineno, record, "asin", "meta line"))
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
  return Meta(titles, descriptions, paths, seen, lines, duplicates, repaired)


def read_query_text(path: pathlib.Path, repaired: Counter | None = None) -> list[str]:
  """Ai et al.'s query_text.txt: one query a line, the query index = 0-based line.

  Raises:
    PipelineError: unreadable or empty file.
  """
  lines = [line for _, line in iter_lines(path, repaired, keep_blank=True)]
  if not any(lines):
    raise PipelineError(f"{path}: the query file is empty")
  return lines


def read_qrels(path: pathlib.Path, repaired: Counter | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads `<reviewerID>_<query_index> 0 <asin> 1` lines.

  Returns:
    (user_ids [n] str, query indices [n] int64, asins [n] str).

  Raises:
    PipelineError: unreadable or empty file, or a line of another form.
  """
  users, queries, items = [], [], []
  for lineno, line in iter_lines(path, repaired):
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
  if not users:
    raise PipelineError(f"{path}: the qrels file is empty")
  return np.asarray(users, dtype=str), np.asarray(queries, np.int64), np.asarray(items, dtype=str)
