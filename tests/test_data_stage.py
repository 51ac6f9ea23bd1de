"""The whole data stage: a hand-made category with exact expected rows, Ai et al.'s
released files, the TFDS dataset read back through `as_data_source` and grain,
determinism, and the real Office folder checked against counts taken from its files."""

import collections
import gzip
import json

import grain.python as grain
import ml_collections
import numpy as np

from gensar_jax import pipeline
from gensar_jax.data import dataset
from gensar_jax.data import demo_world
from gensar_jax.data import process
from gensar_jax.data import schema
from gensar_jax.data import tfds_builder

R, S, P = schema.KIND_REC, schema.KIND_SEARCH, schema.KIND_PAD

# Items I1..I6 (indices 0..5). Queries: "office lamp" 0, "office paper" 1, "office pen" 2.
TINY_META = [
    {"asin": "I1", "title": "red pen", "categories": [["Office", "Pens"]]},
    {"asin": "I2", "title": "blue pen", "categories": [["Office", "Pens"]]},
    {"asin": "I3", "title": "paper ream", "categories": [["Office", "Paper"]]},
    {"asin": "I4", "title": "stapler", "categories": [["Office"]]},  # One level: no query.
    {"asin": "I5", "title": "desk", "description": "<p>a lamp</p>",
     "categories": [["Office", "Lamps"]]},
    {"asin": "I6", "title": "", "categories": [["Office", "Pens"]]},  # No text.
]
# (user, item, time), deliberately not in time order. U2 has two reviews at t=10;
# U3 has a single review.
TINY_REVIEWS = [("U2", "I2", 10), ("U1", "I2", 40), ("U2", "I1", 10), ("U1", "I1", 10),
                ("U3", "I6", 100), ("U2", "I3", 20), ("U1", "I3", 20), ("U2", "I4", 30),
                ("U1", "I5", 30), ("U2", "I5", 40)]


def _write(path, lines):
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))


def write_tiny(folder, category="Tiny"):
  folder.mkdir(parents=True, exist_ok=True)
  _write(folder / f"reviews_{category}_5.json.gz",
         [json.dumps({"reviewerID": u, "asin": i, "unixReviewTime": t})
          for u, i, t in TINY_REVIEWS])
  _write(folder / f"meta_{category}.json.gz", [repr(m) for m in TINY_META])
  return folder


def _params(category="Tiny", **kw):
  return process.Params(category=category, **{"num_negatives": 1, **kw})


def test_tiny_category_rows_are_exactly_as_worked_out(tmp_path):
  out = process.process(write_tiny(tmp_path / "raw"), _params())
  cat = out.catalog
  assert out.user_ids.tolist() == ["U1", "U2", "U3"]
  assert cat.item_ids.tolist() == ["I1", "I2", "I3", "I4", "I5", "I6"]
  assert cat.titles == ["red pen", "blue pen", "paper ream", "stapler", "desk", ""]
  assert cat.descriptions == ["", "", "", "", "a lamp", ""]
  assert cat.queries == ["office lamp", "office paper", "office pen"]
  assert cat.item_queries == [[2], [2], [1], [], [0], [2]]
  assert cat.interaction_counts.tolist() == [2, 2, 2, 1, 2, 1]
  assert [s.tolist() for s in cat.rec_train_sequences] == [[0, 2], [1, 0, 2], [5]]
  rows = out.rows
  rec_test, src_test = rows["recommendation_test"], rows["search_test"]
  # U2's two t=10 reviews keep file order (I2, then I1), each review's rec event before its
  # search event: R(I1) sees R(I2) and S(I2), so it is a training target.
  assert rows["recommendation_train"]["item"].tolist() == [2, 0, 2]
  assert rows["recommendation_validation"]["item"].tolist() == [4, 3]
  assert rec_test["item"].tolist() == [1, 4] and rec_test["user"].tolist() == [0, 1]
  assert rec_test["time"].tolist() == [40, 40] and rec_test["query"].tolist() == [-1, -1]
  assert rows["search_train"]["item"].tolist() == [2, 0]
  assert rows["search_train"]["query"].tolist() == [1, 2]
  assert rows["search_validation"]["item"].tolist() == [4, 2]
  assert src_test["item"].tolist() == [1, 4] and src_test["query"].tolist() == [2, 0]
  # U2's search target I1 at t=10: R(I2), S(I2); its own R(I1) is left out.
  u2 = rows["search_train"]
  assert u2["history_kind"][1].tolist() == [R, S] + [P] * 8
  assert u2["history_item"][1].tolist() == [1, 1] + [-1] * 8
  assert u2["history_query"][1].tolist() == [-1, 2] + [-1] * 8
  # U2's rec test (I5 at t=40): reviews in order, each R then S; the I4 review has no
  # search event.
  assert rec_test["history_kind"][1].tolist() == [R, S, R, S, R, S, R, P, P, P]
  assert rec_test["history_item"][1].tolist() == [1, 1, 0, 0, 2, 2, 3, -1, -1, -1]
  # Negatives (1 per row): U2 has reviewed everything but I6; U1 only misses I4 and I6.
  # BM25 for "office pen" finds I1 and I2; I2 is U1's positive.
  assert rec_test["negatives"][:, 0].tolist()[1] == 5
  assert rows["recommendation_validation"]["negatives"][1].tolist() == [5]
  assert rec_test["negatives"][0, 0] in (3, 5)
  assert src_test["negatives"][0].tolist() == [0]
  assert src_test["negatives"][1, 0] != 4
  assert rows["search_train"]["negatives"].shape == (2, 0)
  s = out.summary
  assert {k: s[k] for k in ("users", "items", "items_with_text", "queries", "rec_events",
                            "search_events", "reviews", "query_source")} == {
      "users": 3, "items": 6, "items_with_text": 5, "queries": 3, "rec_events": 10,
      "search_events": 9, "reviews": 10, "query_source": "category_paths"}
  assert s["rows"] == {"recommendation": {"train": 3, "validation": 2, "test": 2},
                       "search": {"train": 2, "validation": 2, "test": 2}}
  assert s["skipped"] == {
      "item_without_query": 1, "item_without_text": 1, "meta_duplicate": 0,
      "meta_unreviewed": 0, "review_duplicate": 0, "review_without_query": 1,
      "recommendation_target_without_history": 3,
      "recommendation_targets_of_dropped_users": 0,
      "recommendation_user_below_min_targets": 1,
      "search_target_without_history": 3, "search_targets_of_dropped_users": 0,
      "search_user_below_min_targets": 1}
  assert s["repaired"] == {}
  assert s["task_users"] == {"recommendation": 2, "search": 2}


def test_released_query_files_replace_category_queries(tmp_path):
  folder = write_tiny(tmp_path / "raw")
  (folder / "query_text.txt").write_text("writing tool\nlight\nsheets\n")
  # Train and test qrels are merged; (U1, I1) has two queries, one is kept.
  (folder / "train.qrels").write_text(
      "U1_0 0 I1 1\nU1_1 0 I1 1\nU1_0 0 I2 1\nU2_2 0 I3 1\nU9_0 0 I1 1\n")
  (folder / "test.qrels").write_text("U1_1 0 I5 1\nU1_2 0 I3 1\nU2_0 0 I1 1\nU2_0 0 I2 1\n")
  kept = set()
  for seed in range(6):
    out = process.process(folder, _params(seed=seed))
    s = out.summary
    assert s["query_source"] == "released" and s["search_events"] == 7
    assert s["skipped"]["qrels_unmatched_pairs"] == 1 and s["skipped"]["qrels_bad_query"] == 0
    cat = out.catalog
    assert set(cat.queries) <= {"writing tool", "light", "sheets"}
    assert cat.item_queries[2] == [cat.queries.index("sheets")]
    assert cat.item_queries[4] == [cat.queries.index("light")]
    kept.add(tuple(sorted(cat.queries[q] for q in cat.item_queries[0])))
    # Search rows carry the released query of their (user, item) pair.
    for split in schema.SPLITS:
      r = out.rows[f"search_{split}"]
      for u, i, q in zip(r["user"].tolist(), r["item"].tolist(), r["query"].tolist()):
        assert (u, i) in {(0, 0), (0, 1), (1, 2), (0, 4), (0, 2), (1, 0), (1, 1)}
        assert q >= 0
  # Item I1's queries: U2's (0, "writing tool") and U1's, drawn from 0 and 1.
  assert kept == {("writing tool",), ("light", "writing tool")}


def _stage_config(raw_dir, category, seed=42, num_negatives=1):
  c = ml_collections.ConfigDict()
  c.seed = seed
  c.stages = "data"
  c.data = d = ml_collections.ConfigDict()
  d.category, d.raw_dir, d.demo = category, str(raw_dir), False
  d.demo_users, d.demo_items = 600, 300
  d.max_rec_his_len, d.max_src_his_len, d.min_targets = 5, 5, 3
  d.num_negatives, d.query_min_word_count, d.bm25_top_k = num_negatives, 5, 200
  return c


def test_stage_writes_tfds_readable_through_data_source_and_grain(tmp_path):
  raw_dir = write_tiny(tmp_path / "raw")
  summary = pipeline.run(_stage_config(raw_dir, "Tiny"), tmp_path / "work")["data"]
  data_dir = tmp_path / "work" / "data"
  on_disk = json.loads((data_dir / "summary.json").read_text())
  for key in ("users", "items", "items_with_text", "queries", "rec_events", "search_events",
              "rows", "skipped", "repaired", "timings"):
    assert on_disk[key] == summary[key]
  assert set(on_disk["rows"]) == {"recommendation", "search"}
  assert all(set(v) == {"train", "validation", "test"} for v in on_disk["rows"].values())
  assert on_disk["tfds_version"] == str(tfds_builder.GensarAmazon.VERSION)
  expected = process.process(raw_dir, _params()).rows
  for task in schema.TASKS:
    for split in schema.SPLITS:
      got = dataset.load_rows(data_dir, task, split)
      want = expected[schema.split_name(task, split)]
      for k in schema.ROW_FIELDS:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{task}/{split}/{k}")
        assert got[k].dtype == want[k].dtype
  source = dataset.data_source(data_dir, "search", "test")
  assert len(source) == 2 and source[1]["negatives"].tolist() == [
      expected["search_test"]["negatives"][1, 0]]
  # The rows as grain batches (how a reader would stream them).
  rec_source = dataset.data_source(data_dir, "recommendation", "test")
  loader = grain.DataLoader(
      data_source=rec_source,
      sampler=grain.IndexSampler(num_records=len(rec_source), shard_options=grain.NoSharding(),
                                 shuffle=False, num_epochs=1, seed=0),
      operations=[grain.Batch(batch_size=2, drop_remainder=True)], worker_count=0)
  batch = next(iter(loader))
  assert batch["history_item"].shape == (2, 10) and batch["negatives"].shape == (2, 1)
  np.testing.assert_array_equal(batch["item"], [1, 4])
  catalog = dataset.load_catalog(data_dir)
  assert catalog.queries == ["office lamp", "office paper", "office pen"]
  assert dataset.load_user_ids(data_dir).tolist() == ["U1", "U2", "U3"]


def test_fast_split_writer_matches_tfds_own_writer(tmp_path, monkeypatch):
  raw_dir = tmp_path / "raw"
  demo_world.generate(raw_dir, num_users=80, num_items=60, seed=3)
  config = _stage_config(raw_dir, "Demo", num_negatives=9)
  pipeline.run(config, tmp_path / "fast")
  monkeypatch.setattr(tfds_builder.GensarAmazon, "FAST_WRITE", False)
  pipeline.run(config, tmp_path / "tfds")
  for task in schema.TASKS:
    for split in schema.SPLITS:
      a = dataset.load_rows(tmp_path / "fast" / "data", task, split)
      b = dataset.load_rows(tmp_path / "tfds" / "data", task, split)
      assert len(a["user"]) > 0
      for k in schema.ROW_FIELDS:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"{task}/{split}/{k}")


def test_processing_is_deterministic_for_a_seed(tmp_path):
  raw_dir = tmp_path / "raw"
  demo_world.generate(raw_dir, num_users=120, num_items=80, seed=5)
  params = process.Params(category="Demo", num_negatives=20)
  a = process.process(raw_dir, params)
  b = process.process(raw_dir, params)
  c = process.process(raw_dir, process.Params(category="Demo", num_negatives=20, seed=7))
  for name in a.rows:
    for k in schema.ROW_FIELDS:
      np.testing.assert_array_equal(a.rows[name][k], b.rows[name][k])
  assert a.catalog.queries == b.catalog.queries
  assert not np.array_equal(a.rows["recommendation_test"]["negatives"],
                            c.rows["recommendation_test"]["negatives"])
  assert a.summary["skipped"] == b.summary["skipped"]


def test_office_summary_matches_counts_taken_from_the_raw_files(office_dir, tmp_path):
  with gzip.open(office_dir / "reviews_Office_Products_5.json.gz", "rt") as f:
    reviews = [json.loads(line) for line in f]
  with gzip.open(office_dir / "meta_Office_Products.json.gz", "rt") as f:
    meta = {m["asin"]: m for m in map(json.loads, f)}
  per_user = collections.Counter(r["reviewerID"] for r in reviews)
  items = {r["asin"] for r in reviews}
  with_text = sum(1 for a in items if (meta[a].get("title") or "").strip()
                  or (meta[a].get("description") or "").strip())
  every_item_has_a_query = all(any(len(p) >= 2 for p in meta[a]["categories"])
                               for a in items)
  config = _stage_config(office_dir, "Office_Products", num_negatives=99)
  s = pipeline.run(config, tmp_path)["data"]
  assert s["users"] == len(per_user) == 4905
  assert s["items"] == len(items) == 2420
  assert s["items_with_text"] == with_text
  assert s["reviews"] == s["rec_events"] == len(reviews) == 53258
  assert every_item_has_a_query and s["search_events"] == len(reviews)
  assert s["queries"] == 283  # docs/design.md §10.
  for task in schema.TASKS:
    rows = s["rows"][task]
    assert rows == {"train": 38543, "validation": 4905, "test": 4905}  # docs/design.md §10.
    # Every user keeps all its targets but the first: one per review, minus one.
    assert sum(rows.values()) == len(reviews) - len(per_user)
  assert s["skipped"]["review_duplicate"] == 0 and s["repaired"] == {}
  test = dataset.load_rows(tmp_path / "data", "recommendation", "test")
  assert test["negatives"].shape == (4905, 99)
  assert len(np.unique(test["user"])) == 4905


def test_serialized_rows_parse_as_tf_examples_across_shards(tmp_path):
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import naming  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  n = 3000
  rng = np.random.default_rng(0)
  rows = {
      "user": np.arange(n, dtype=np.int32),
      "time": rng.integers(-2**62, 2**62, size=n),
      "item": rng.integers(-1, 2**31 - 1, size=n).astype(np.int32),
      "query": np.full(n, -1, np.int32),
      "history_kind": rng.integers(0, 3, (n, 10)).astype(np.int32),
      "history_item": rng.integers(-1, 128, (n, 10)).astype(np.int32),
      "history_query": rng.integers(-1, 20000, (n, 10)).astype(np.int32),
      "negatives": rng.integers(0, 70000, (n, 99)).astype(np.int32),
  }
  template = naming.ShardedFileTemplate(split="x", dataset_name="d",
                                        data_dir=epath.Path(tmp_path),
                                        filetype_suffix="array_record")
  lengths, total = tfds_builder.write_split(rows, template, chunk=700, shard_bytes=200_000)
  assert len(lengths) > 1 and sum(lengths) == n
  records = []
  for k, path in enumerate(sorted(tmp_path.iterdir())):
    reader = array_record_module.ArrayRecordReader(str(path))
    assert reader.num_records() == lengths[k]
    records += reader.read_all()
  assert sum(map(len, records)) == total
  for r in (0, 1, 777, n - 1):
    example = tf_example_pb2.Example.FromString(records[r])
    for k in schema.ROW_FIELDS:
      assert list(example.features.feature[k].int64_list.value) == np.asarray(
          rows[k][r]).reshape(-1).tolist()


def test_a_raw_file_replaced_in_place_reruns_the_data_stage(tmp_path, caplog):
  import logging  # pylint: disable=g-import-not-at-top

  raw_dir = write_tiny(tmp_path / "raw")
  config = _stage_config(raw_dir, "Tiny")
  pipeline.run(config, tmp_path / "work")
  done = (tmp_path / "work" / "data" / ".done").read_text()
  pipeline.run(config, tmp_path / "work")
  assert (tmp_path / "work" / "data" / ".done").read_text() == done  # Unchanged: skipped.
  reviews = next(raw_dir.glob("reviews_Tiny_5.json*"))
  lines = gzip.decompress(reviews.read_bytes()).decode().splitlines() if reviews.suffix == ".gz" \
      else reviews.read_text().splitlines()
  kept = "\n".join(lines[:-1]) + "\n"  # The same file name, one review fewer.
  reviews.write_bytes(gzip.compress(kept.encode()) if reviews.suffix == ".gz" else kept.encode())
  with caplog.at_level(logging.INFO):
    summary = pipeline.run(config, tmp_path / "work")["data"]
  assert (tmp_path / "work" / "data" / ".done").read_text() != done
  assert f"file {reviews} changed" in caplog.text
  assert summary["rec_events"] == len(lines) - 1
