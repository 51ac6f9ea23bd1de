"""The raw reader: 2014 Python-literal and 2018 JSON meta, .json and .json.gz."""

import gzip
import json

import numpy as np
import pytest

from gensar_jax.data import raw
from gensar_jax.pipeline import PipelineError

REVIEWS = [
    {"reviewerID": "U1", "asin": "A1", "unixReviewTime": 100, "reviewText": "Great pen",
     "summary": "pen!"},
    {"reviewerID": "U2", "asin": "A2", "unixReviewTime": 200, "overall": 5.0},
    {"reviewerID": "U1", "asin": "A2", "unixReviewTime": "300"},
]
META_2014 = [
    {"asin": "A1", "title": "Blue Pen", "description": "A <b>fine</b> pen &amp; cap",
     "categories": [["Office Products", "Writing", "Pens"], ["Office Products"]],
     "related": {"also_bought": ["A2"]}, "price": 1.5},
    {"asin": "A2", "title": "Paper", "categories": [["Office Products", "Paper"]]},
    {"asin": "A9", "title": "Not reviewed", "categories": [["Office Products", "X"]]},
]
META_2018 = [
    {"category": ["Office Products", "Writing &amp; Correction", "Pens"],
     "description": ["Line one.", "<p>Line two</p>"], "title": "Blue Pen", "asin": "A1"},
    {"category": [], "title": "", "asin": "A2", "description": []},
]


def _write(path, lines):
  text = "".join(line + "\n" for line in lines)
  if path.suffix == ".gz":
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text, encoding="utf-8")
  return path


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_2014_python_literal_meta(tmp_path, suffix):
  reviews = raw.read_reviews(_write(tmp_path / f"r{suffix}", [json.dumps(r) for r in REVIEWS]))
  assert reviews.user_ids.tolist() == ["U1", "U2", "U1"]
  assert reviews.item_ids.tolist() == ["A1", "A2", "A2"]
  assert reviews.times.tolist() == [100, 200, 300] and reviews.times.dtype == np.int64
  assert reviews.linenos.tolist() == [1, 2, 3]
  assert reviews.has_text and reviews.word_counts == {"great": 1, "pen": 2}
  assert not raw.read_reviews(tmp_path / f"r{suffix}", count_words=False).word_counts
  lines = [repr(m) for m in META_2014]
  assert lines[0].startswith("{'asin': 'A1'")  # Single quotes: not JSON.
  meta = raw.read_meta(_write(tmp_path / f"m{suffix}", lines), np.asarray(["A2", "A1", "A5"]))
  assert meta.titles == ["Paper", "Blue Pen", ""]
  assert meta.descriptions == ["", "A fine pen & cap", ""]
  assert meta.category_paths == [[["Office Products", "Paper"]],
                                 [["Office Products", "Writing", "Pens"], ["Office Products"]],
                                 []]
  assert meta.found.tolist() == [True, True, False]
  assert (meta.lines_read, meta.duplicates) == (3, 0)


@pytest.mark.parametrize("suffix", [".json", ".json.gz"])
def test_2018_json_meta(tmp_path, suffix):
  meta = raw.read_meta(_write(tmp_path / f"m{suffix}", [json.dumps(m) for m in META_2018]),
                       np.asarray(["A1", "A2"]))
  assert meta.titles == ["Blue Pen", ""]
  assert meta.descriptions == ["Line one. Line two", ""]
  assert meta.category_paths == [[["Office Products", "Writing & Correction", "Pens"]], []]
  assert meta.found.all()


def test_find_files_prefers_plain_then_gz_and_requires_both_query_parts(tmp_path):
  _write(tmp_path / "reviews_Cat_5.json.gz", [json.dumps(REVIEWS[0])])
  _write(tmp_path / "meta_Cat.json", [repr(META_2014[0])])
  files = raw.find_files(tmp_path, "Cat")
  assert files.reviews.name == "reviews_Cat_5.json.gz" and files.meta.name == "meta_Cat.json"
  assert not files.has_released_queries and files.query_text is None
  _write(tmp_path / "test.qrels", ["U1_0 0 A1 1"])
  with pytest.raises(PipelineError, match="no query_text"):
    raw.find_files(tmp_path, "Cat")
  _write(tmp_path / "query_text.txt.gz", ["blue pen"])
  files = raw.find_files(tmp_path, "Cat")
  assert files.has_released_queries and files.train_qrels is None
  (tmp_path / "test.qrels").unlink()
  with pytest.raises(PipelineError, match="no train.qrels or test.qrels"):
    raw.find_files(tmp_path, "Cat")
  with pytest.raises(PipelineError, match=r"reviews_Other_5.json\[.gz\].*found \['reviews_Cat"):
    raw.find_files(tmp_path, "Other")
  with pytest.raises(PipelineError, match="does not exist"):
    raw.find_files(tmp_path / "nope", "Cat")


def test_query_text_keeps_line_numbers_and_qrels_parse(tmp_path):
  assert raw.read_query_text(_write(tmp_path / "q.txt", ["first", "", "third"])) == [
      "first", "", "third"]
  users, qs, items = raw.read_qrels(_write(tmp_path / "t.qrels",
                                           ["A_B_7 0 X1 1", "", "C_0 0 X2 1"]))
  assert users.tolist() == ["A_B", "C"] and qs.tolist() == [7, 0]
  assert items.tolist() == ["X1", "X2"]


@pytest.mark.parametrize("text,expected", [
    ("plain  text\n here", "plain text here"),
    ("<ul><li>one</li><li>two</li></ul>", "one two"),
    ("in<b>line</b> bold", "inline bold"),
    ("x <script>alert('hi')</script> y <STYLE type=a>p {}</style> z", "x y z"),
    ("&lt;3 &amp; size < 5 and > 3", "<3 & size < 5 and > 3"),
    ("<!-- note --><p>after</p>", "after"),
    ("", ""),
])
def test_clean_text_strips_html(text, expected):
  assert raw.clean_text(text) == expected
