"""Hostile and broken input to the data stage (issue 2 item 5, issue 9 item 4).

The rule (raw.py's docstring): a file that cannot be trusted is a `PipelineError`
naming the file and line; a well-formed but unusable or redundant record is skipped
and counted in summary["skipped"]; damage below the record level is repaired and
counted in summary["repaired"]; every valid record survives; nothing is executed.
"""

import gzip
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from gensar_jax.data import process
from gensar_jax.data import schema
from gensar_jax.pipeline import PipelineError

CAT = "Hostile"
REVIEWS_GZ = f"reviews_{CAT}_5.json.gz"
META_GZ = f"meta_{CAT}.json.gz"
REPO = pathlib.Path(__file__).resolve().parents[1]


def base_reviews():
  """4 users x 5 reviews of 8 items, distinct times: 4 kept targets per user and task."""
  return [{"reviewerID": f"U{u}", "asin": f"A{(u + j) % 8}", "unixReviewTime": 100 + 10 * j + u,
           "reviewText": "a fine cat sub x y z q product"}
          for u in range(4) for j in range(5)]


def base_meta():
  return [{"asin": f"A{i}", "title": f"item {i}", "description": f"thing number {i}",
           "categories": [["Cat", f"Sub {'xyz'[i % 3]}"]]} for i in range(8)]


def _write_bytes(path, data: bytes):
  if path.suffix == ".gz":
    data = gzip.compress(data)
  path.write_bytes(data)


def build(folder, reviews=None, meta=None, *, review_lines=None, meta_lines=None,
          suffix=".gz"):
  """Writes a category folder; `*_lines` (bytes or str lines) override the records."""
  folder.mkdir(parents=True, exist_ok=True)
  if review_lines is None:
    review_lines = [json.dumps(r) for r in (reviews if reviews is not None else base_reviews())]
  if meta_lines is None:
    meta_lines = [repr(m) for m in (meta if meta is not None else base_meta())]
  for name, lines in ((f"reviews_{CAT}_5.json", review_lines), (f"meta_{CAT}.json", meta_lines)):
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    _write_bytes(folder / (name + (".gz" if suffix == ".gz" else "")), data)
  return folder


def run(folder):
  return process.process(folder, process.Params(category=CAT, num_negatives=2))


def expect_error(folder, file_name, line=None, match=""):
  with pytest.raises(PipelineError) as info:
    run(folder)
  msg = str(info.value)
  assert file_name in msg, msg
  if line is not None:
    assert f"{file_name}:{line}:" in msg or f"near line {line}" in msg, msg
  assert match in msg, msg
  assert len(msg) < 400, msg  # One short message, never a dump of the input.
  # Raised `from None`: no chained traceback of the underlying parser error.
  assert info.value.__cause__ is None
  assert info.value.__context__ is None or info.value.__suppress_context__
  return msg


def _survivors(out):
  return {"users": out.summary["users"], "items": out.summary["items"],
          "reviews": out.summary["reviews"]}


BASE = {"users": 4, "items": 8, "reviews": 20}


def test_base_folder_is_valid(tmp_path):
  out = run(build(tmp_path))
  assert _survivors(out) == BASE
  assert out.summary["rows"]["search"] == {"train": 8, "validation": 4, "test": 4}
  assert out.summary["repaired"] == {}
  assert out.summary["skipped"]["review_duplicate"] == 0


# ------------------------------------------------------------------- fatal input


def test_corrupt_gzip(tmp_path):
  folder = build(tmp_path)
  data = bytearray((folder / REVIEWS_GZ).read_bytes())
  data[len(data) // 2:len(data) // 2 + 16] = b"\xff" * 16
  (folder / REVIEWS_GZ).write_bytes(bytes(data))
  expect_error(folder, REVIEWS_GZ, match="corrupt or truncated gzip")


def test_truncated_gzip(tmp_path):
  folder = build(tmp_path, review_lines=[json.dumps(r) for r in base_reviews() * 50])
  data = (folder / REVIEWS_GZ).read_bytes()
  (folder / REVIEWS_GZ).write_bytes(data[:len(data) - 40])
  expect_error(folder, REVIEWS_GZ, match="cannot read the file near line")


def test_not_gzip_at_all(tmp_path):
  folder = build(tmp_path)
  (folder / META_GZ).write_bytes(b"{'asin': 'A1'}\n")
  expect_error(folder, META_GZ, line=1)


def test_malformed_review_line(tmp_path):
  lines = [json.dumps(r) for r in base_reviews()]
  lines[2] = '{"reviewerID": "U0", "asin": '
  expect_error(build(tmp_path, review_lines=lines), REVIEWS_GZ, line=3, match="malformed")


def test_malformed_meta_line_of_a_reviewed_item(tmp_path):
  lines = [repr(m) for m in base_meta()]
  lines[4] = lines[4][:-5]
  expect_error(build(tmp_path, meta_lines=lines), META_GZ, line=5, match="malformed")


def test_deeply_nested_line(tmp_path):
  lines = [json.dumps(r) for r in base_reviews()] + ["[" * 200_000 + "]" * 200_000]
  expect_error(build(tmp_path, review_lines=lines), REVIEWS_GZ, line=21, match="malformed")


@pytest.mark.parametrize("field,value,match", [
    ("asin", None, "review without 'asin'"),
    ("asin", "", "review without 'asin'"),
    ("asin", ["A1"], "not a string"),
    ("reviewerID", None, "review without 'reviewerID'"),
    ("unixReviewTime", None, "without 'unixReviewTime'"),
    ("unixReviewTime", "soon", "not an integer"),
    ("unixReviewTime", 12.5, "not an integer"),
    ("unixReviewTime", True, "not an integer"),
    ("unixReviewTime", 10**30, "not an integer"),
])
def test_review_with_missing_or_bad_field(tmp_path, field, value, match):
  reviews = base_reviews()
  if value is None:
    del reviews[6][field]
  else:
    reviews[6][field] = value
  expect_error(build(tmp_path, reviews), REVIEWS_GZ, line=7, match=match)


def test_meta_line_without_asin(tmp_path):
  meta = base_meta()
  del meta[3]["asin"]
  expect_error(build(tmp_path, meta=meta), META_GZ, line=4, match="meta line without 'asin'")


def test_review_of_an_unknown_item(tmp_path):
  reviews = base_reviews()
  reviews[11]["asin"] = "NOPE"
  msg = expect_error(build(tmp_path, reviews), REVIEWS_GZ, line=12, match="unknown item")
  assert "'NOPE'" in msg and META_GZ in msg


@pytest.mark.parametrize("which", ["reviews", "meta"])
@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_file(tmp_path, which, content):
  folder = build(tmp_path)
  name = REVIEWS_GZ if which == "reviews" else META_GZ
  _write_bytes(folder / name, content)
  expect_error(folder, name, match="is empty")


def test_empty_qrels_file(tmp_path):
  folder = build(tmp_path)
  (folder / "query_text.txt").write_text("some query\n")
  (folder / "train.qrels").write_text("")
  expect_error(folder, "train.qrels", match="is empty")


def test_folder_without_reviews_or_meta_file(tmp_path):
  folder = build(tmp_path)
  (folder / META_GZ).unlink()
  expect_error(folder, f"meta_{CAT}.json", match="no meta file")
  (folder / REVIEWS_GZ).unlink()
  expect_error(folder, f"reviews_{CAT}_5.json", match="no reviews file")


def test_python_code_in_meta_is_never_executed(tmp_path):
  marker = tmp_path / "pwned"
  code = f"__import__('os').system('touch {marker}')"
  # A line of code: malformed, rejected without running it.
  lines = [repr(m) for m in base_meta()] + [code]
  expect_error(build(tmp_path / "a", meta_lines=lines), META_GZ, line=9, match="malformed")
  # Code inside the record of a reviewed item: the same.
  lines = [repr(m) for m in base_meta()]
  lines[2] = "{'asin': 'A2', 'title': " + code + "}"
  expect_error(build(tmp_path / "b", meta_lines=lines), META_GZ, line=3, match="malformed")
  # Code in the record of an item nobody reviewed: skipped unparsed and counted.
  lines = [repr(m) for m in base_meta()] + ["{'asin': 'Z9', 'title': " + code + "}"]
  out = run(build(tmp_path / "c", meta_lines=lines))
  assert out.summary["skipped"]["meta_unreviewed"] == 1
  assert _survivors(out) == BASE
  assert not marker.exists()


def test_main_reports_one_line_without_traceback(tmp_path):
  folder = build(tmp_path / "raw")
  data = (folder / REVIEWS_GZ).read_bytes()
  (folder / REVIEWS_GZ).write_bytes(data[:-30])
  proc = subprocess.run(
      [sys.executable, "-m", "gensar_jax.main",
       f"--config={REPO / 'configs' / 'amazon.py'}:category={CAT},preset=cpu",
       f"--config.data.raw_dir={folder}", f"--workdir={tmp_path / 'work'}",
       "--config.stages=data"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and REVIEWS_GZ in last and "line" in last


# -------------------------------------------------------- skipped or repaired


def test_invalid_utf8_is_repaired_and_counted(tmp_path):
  lines = [json.dumps(r).encode() for r in base_reviews()]
  lines[5] = lines[5].replace(b"a fine", b"a \xff\xfe fine")
  meta = [repr(m).encode() for m in base_meta()]
  meta[1] = meta[1].replace(b"thing number 1", b"thing \xc3\x28 number 1")
  out = run(build(tmp_path, review_lines=lines, meta_lines=meta))
  assert out.summary["repaired"] == {"reviews_invalid_utf8": 1, "meta_invalid_utf8": 1}
  assert _survivors(out) == BASE
  assert out.catalog.descriptions[1] == "thing \ufffd( number 1"


def test_nul_bytes_are_removed_and_counted(tmp_path):
  lines = [json.dumps(r).encode() for r in base_reviews()]
  lines[0] = lines[0].replace(b'"a fine', b'"a\x00 fine')
  lines.insert(3, b"\x00" * 64)  # A zero-filled line (e.g. left by a crash).
  meta = [repr(m).encode() for m in base_meta()]
  meta[0] = meta[0].replace(b"item 0", b"item\x00 0")
  out = run(build(tmp_path, review_lines=lines, meta_lines=meta))
  assert out.summary["repaired"] == {"reviews_nul_bytes": 2, "meta_nul_bytes": 1}
  assert _survivors(out) == BASE
  assert out.catalog.titles[0] == "item 0"


def test_ten_megabyte_lines(tmp_path):
  reviews = base_reviews()
  reviews[0]["reviewText"] = "word " * 2_000_000  # A 10 MB review survives.
  meta = base_meta()
  meta[5]["description"] = "<li>x</li> a<b " * 700_000  # 10 MB of hostile HTML.
  out = run(build(tmp_path, reviews, meta))
  assert _survivors(out) == BASE
  assert out.catalog.descriptions[5].startswith("x a<b x a<b")
  # A 10 MB line of garbage: fatal, and the message stays short.
  lines = [json.dumps(r) for r in base_reviews()] + ["{" + "x" * 10_000_000]
  expect_error(build(tmp_path / "g", review_lines=lines), REVIEWS_GZ, line=21)


def test_duplicated_reviews_keep_the_earliest(tmp_path):
  reviews = base_reviews()
  first = dict(reviews[7])  # U1's review of A3 at t=121.
  again = dict(first, unixReviewTime=999)
  reviews += [dict(first), again]  # An exact copy and a later repeat of the pair.
  out = run(build(tmp_path, reviews))
  assert out.summary["skipped"]["review_duplicate"] == 2
  assert _survivors(out) == BASE
  base = run(build(tmp_path / "base"))
  for name in base.rows:
    for k in schema.ROW_FIELDS:
      np.testing.assert_array_equal(out.rows[name][k], base.rows[name][k])


def test_reviews_out_of_time_order_give_the_same_dataset(tmp_path):
  reviews = base_reviews()
  shuffled = [reviews[k] for k in np.random.default_rng(0).permutation(len(reviews))]
  a, b = run(build(tmp_path / "a", reviews)), run(build(tmp_path / "b", shuffled))
  for name in a.rows:
    for k in schema.ROW_FIELDS:
      np.testing.assert_array_equal(a.rows[name][k], b.rows[name][k])
  assert a.summary["skipped"] == b.summary["skipped"]


def test_empty_titles_html_and_one_level_paths(tmp_path):
  meta = base_meta()
  meta[0]["title"] = ""  # Description only: still has text.
  meta[1].update(title="", description="")  # No text at all: counted.
  meta[2]["title"] = None
  del meta[2]["description"]  # No text either.
  meta[3]["description"] = "<p>Big &amp; <b>bold</b></p><script>steal()</script>"
  meta[4]["categories"] = [["Cat"]]  # One level: no query.
  meta[5]["categories"] = [["Cat"], ["Cat", "Sub q"]]  # One usable path of two.
  out = run(build(tmp_path, meta=meta))
  assert _survivors(out) == BASE
  cat = out.catalog
  assert cat.item_text(0) == "thing number 0"
  assert cat.item_text(1) == "" and cat.item_text(2) == ""
  assert cat.descriptions[3] == "Big & bold"
  assert cat.item_queries[4] == [] and [cat.queries[q] for q in cat.item_queries[5]] == [
      "cat sub q"]
  s = out.summary
  assert s["items_with_text"] == 6 and s["skipped"]["item_without_text"] == 2
  assert s["skipped"]["item_without_query"] == 1
  reviews_of_a4 = sum(r["asin"] == "A4" for r in base_reviews())
  assert s["skipped"]["review_without_query"] == reviews_of_a4
  assert s["search_events"] == 20 - reviews_of_a4 and s["rec_events"] == 20
  # Items without text or query are still targets of recommendation rows.
  rec_items = np.concatenate([out.rows[f"recommendation_{x}"]["item"] for x in schema.SPLITS])
  assert {1, 2, 4} <= set(rec_items.tolist())


def test_users_with_a_single_review_are_counted_not_lost(tmp_path):
  reviews = base_reviews() + [
      {"reviewerID": "LONE1", "asin": "A1", "unixReviewTime": 5},
      {"reviewerID": "LONE2", "asin": "A6", "unixReviewTime": 7}]
  out = run(build(tmp_path, reviews))
  s = out.summary
  assert s["users"] == 6 and s["reviews"] == 22
  for task in schema.TASKS:
    assert s["skipped"][f"{task}_user_below_min_targets"] == 2
    assert s["task_users"][task] == 4
  lone = [k for k, u in enumerate(out.user_ids.tolist()) if u.startswith("LONE")]
  for rows in out.rows.values():
    assert not np.isin(rows["user"], lone).any()
  base = run(build(tmp_path / "base"))
  assert s["rows"] == base.summary["rows"]


def test_stage_with_no_qualifying_user_is_a_clear_error(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gensar_jax import pipeline  # pylint: disable=g-import-not-at-top
  reviews = [r for r in base_reviews() if r["unixReviewTime"] < 120]  # 2 reviews per user.
  folder = build(tmp_path / "raw", reviews)
  c = ml_collections.ConfigDict()
  c.seed, c.stages = 0, "data"
  c.data = ml_collections.ConfigDict(dict(
      category=CAT, raw_dir=str(folder), demo=False, demo_users=600, demo_items=300,
      max_rec_his_len=5, max_src_his_len=5, min_targets=3, num_negatives=2,
      query_min_word_count=5, bm25_top_k=200))
  with pytest.raises(PipelineError, match=r"no rows for split\(s\).*user_below_min_targets"):
    pipeline.run(c, tmp_path / "work")
