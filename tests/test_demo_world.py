"""The demo world generator: layout, determinism, 5-core and the planted signals.

Files are parsed back the way a reader of McAuley data would (json lines, and
`ast.literal_eval` for 2014 meta), and the signals are measured on what was read.
"""

import ast
import collections
import gzip
import json
import re

import numpy as np
import pytest

from gensar_jax import pipeline
from gensar_jax.data import demo_world

REVIEW_KEYS = {"reviewerID", "asin", "unixReviewTime", "reviewText", "overall"}


def _read(out_dir, category="Demo"):
  """(reviews, meta by asin) as parsed from the written files."""
  with gzip.open(out_dir / f"reviews_{category}_5.json.gz", "rt", encoding="utf-8") as f:
    reviews = [json.loads(line) for line in f]
  with gzip.open(out_dir / f"meta_{category}.json.gz", "rt", encoding="utf-8") as f:
    meta = [ast.literal_eval(line) for line in f]
  by_asin = {m["asin"]: m for m in meta}
  assert len(by_asin) == len(meta), "duplicate asins in meta"
  return reviews, by_asin


def _user_sequences(reviews):
  """reviewerID -> asins in time order (stable for equal times, as in the file)."""
  per_user = collections.defaultdict(list)
  for r in reviews:
    per_user[r["reviewerID"]].append((r["unixReviewTime"], r["asin"]))
  return {u: [a for _, a in sorted(v, key=lambda x: x[0])] for u, v in per_user.items()}


@pytest.fixture(scope="module")
def default_world(tmp_path_factory):
  """The default demo world: its counts, files read back, and ground truth."""
  out = tmp_path_factory.mktemp("demo")
  counts = demo_world.generate(out)
  reviews, meta = _read(out)
  return dict(dir=out, counts=counts, reviews=reviews, meta=meta,
              world=demo_world.build_world())


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path, default_world):
  names = ("reviews_Demo_5.json.gz", "meta_Demo.json.gz")
  demo_world.generate(tmp_path / "again")
  demo_world.generate(tmp_path / "other", seed=1)
  for name in names:
    first = (default_world["dir"] / name).read_bytes()
    assert (tmp_path / "again" / name).read_bytes() == first
    assert (tmp_path / "other" / name).read_bytes() != first
  assert gzip.decompress((tmp_path / "other" / names[0]).read_bytes()) != gzip.decompress(
      (default_world["dir"] / names[0]).read_bytes())


def test_files_follow_the_mcauley_layout(default_world):
  reviews, meta, counts = default_world["reviews"], default_world["meta"], default_world["counts"]
  assert counts == {"users": 600, "items": 300, "reviews": len(reviews)}
  assert len({r["reviewerID"] for r in reviews}) == 600 and len(meta) == 300
  for r in reviews:
    assert set(r) == REVIEW_KEYS
    assert isinstance(r["unixReviewTime"], int) and r["unixReviewTime"] % 86400 == 0
    assert r["overall"] in (1.0, 2.0, 3.0, 4.0, 5.0) and r["reviewText"]
    assert r["asin"] in meta
  # 2014 meta: single-quoted Python literals, not JSON.
  first_line = gzip.decompress((default_world["dir"] / "meta_Demo.json.gz").read_bytes())
  assert first_line.startswith(b"{'asin': '")
  descriptions = [m.get("description") for m in meta.values()]
  assert sum(d == "" for d in descriptions) >= 10  # Empty descriptions.
  assert sum(d is None for d in descriptions) >= 3  # Missing description keys.
  assert sum(bool(d) and "<li>" in d for d in descriptions) >= 5  # HTML descriptions.
  full_paths = collections.Counter()
  for m in meta.values():
    assert m["title"] and isinstance(m["title"], str)
    assert all(isinstance(p, list) and p[0] == "Demo" and all(isinstance(x, str) for x in p)
               for p in m["categories"])
    assert len(m["categories"][0]) == 4
    full_paths.update(tuple(p) for p in m["categories"] if len(p) == 4)
  assert sum(sum(len(p) == 4 for p in m["categories"]) >= 2 for m in meta.values()) >= 10
  assert sum(any(len(p) == 1 for p in m["categories"]) for m in meta.values()) >= 3
  assert len(full_paths) == len(default_world["world"].leaves) >= 30
  assert len({p[1] for p in full_paths}) == 5  # Every department is used.
  assert len({m["title"] for m in meta.values()}) == 300


def test_five_core_unique_pairs_and_times(default_world):
  reviews = default_world["reviews"]
  assert len({(r["reviewerID"], r["asin"]) for r in reviews}) == len(reviews)
  assert min(collections.Counter(r["reviewerID"] for r in reviews).values()) >= 5
  assert min(collections.Counter(r["asin"] for r in reviews).values()) >= 5
  per_user = collections.defaultdict(list)
  for r in reviews:  # File order is time order within a user.
    per_user[r["reviewerID"]].append(r["unixReviewTime"])
  gaps = np.concatenate([np.diff(t) for t in per_user.values()])
  assert gaps.min() >= 0
  assert 0.03 < np.mean(gaps == 0) < 0.3  # Some reviews share a day.
  assert np.median(gaps) >= 86400  # Most are days apart.


def test_files_match_the_world_ground_truth(default_world):
  w, meta = default_world["world"], default_world["meta"]
  seqs = _user_sequences(default_world["reviews"])
  assert list(seqs) == w.user_ids
  for u, uid in enumerate(w.user_ids):
    assert seqs[uid] == [w.asins[i] for i in w.sequences[u]]
  for i, asin in enumerate(w.asins):
    assert meta[asin]["title"] == w.titles[i]
    dept, sub, leaf = w.leaves[w.item_leaf[i]]
    assert meta[asin]["categories"][0] == ["Demo", dept, sub, leaf]
    assert w.brand_name(i) in w.titles[i]  # The brand is visible in the text.


def test_partner_follows_item_far_above_its_base_rate(default_world):
  w = default_world["world"]
  seqs = _user_sequences(default_world["reviews"])
  index = {a: i for i, a in enumerate(w.asins)}
  flat = [index[a] for s in seqs.values() for a in s]
  base = np.bincount(flat, minlength=len(w.asins)) / len(flat)
  follows, rates = [], []
  for u, s in enumerate(seqs.values()):
    items = [index[a] for a in s]
    for k, (a, b) in enumerate(zip(items[:-1], items[1:])):
      if w.partner[a] >= 0:
        follows.append(b == w.partner[a])
        rates.append(base[w.partner[a]])
        if b == w.partner[a]:  # A partner is never on the same day: order is unambiguous.
          assert w.times[u][k + 1] > w.times[u][k]
  assert len(follows) > 1000
  conditional, base_rate = np.mean(follows), np.mean(rates)
  assert conditional > 0.45 and conditional > 50 * base_rate, (conditional, base_rate)
  # Partners cross departments, so the text (brand lists are per department) can't tell.
  linked = np.flatnonzero(w.partner >= 0)
  assert len(linked) >= 0.35 * len(w.asins)
  assert np.all(w.item_department[linked] != w.item_department[w.partner[linked]])
  assert not any(w.brand_name(a) in w.titles[w.partner[a]] for a in linked)
  assert len(set(w.partner[linked])) == len(linked)  # Each item has at most one "A".


def test_purchases_concentrate_on_preferred_leaves_and_brands(default_world):
  w = default_world["world"]
  in_leaves, favourite, brand_share = [], [], []
  for u, seq in enumerate(w.sequences):
    leaves = w.item_leaf[seq]
    mask = np.isin(leaves, w.user_leaves[u])
    in_leaves.append(mask.mean())
    for i in seq[mask]:
      d = w.item_department[i]
      favourite.append(w.item_brand[i] == w.user_brand[u, d])
      same_leaf = w.item_leaf == w.item_leaf[i]
      brand_share.append(np.mean(w.item_brand[same_leaf] == w.user_brand[u, d]))
  chance = demo_world.LEAVES_PER_USER / len(w.leaves)
  assert np.mean(in_leaves) > 0.6 > 5 * chance
  assert np.mean(favourite) > 0.33 and np.mean(favourite) > 1.6 * np.mean(brand_share)


def test_category_words_occur_in_reviews(default_world):
  words = collections.Counter(
      t for r in default_world["reviews"] for t in re.findall(r"[a-z]+", r["reviewText"].lower()))
  path_words = {t for m in default_world["meta"].values() for p in m["categories"]
                for level in p[1:] for t in re.findall(r"[a-z]+", level.lower())}
  rare = sorted(t for t in path_words if words[t] < 5 and t not in ("and", "d"))
  assert not rare, rare


def test_sizes_scale_and_other_category(tmp_path):
  small = demo_world.generate(tmp_path / "s", category="Toys_Small", num_users=60, num_items=40)
  big = demo_world.generate(tmp_path / "b", num_users=1200, num_items=600, seed=3)
  assert small["users"] == 60 and small["items"] == 40
  assert big["users"] == 1200 and big["items"] == 600
  assert 10 * small["reviews"] < big["reviews"] < 40 * small["reviews"]
  reviews, meta = _read(tmp_path / "s", "Toys_Small")
  assert len(reviews) == small["reviews"] and len(meta) == 40
  assert min(collections.Counter(r["asin"] for r in reviews).values()) >= 5
  assert min(collections.Counter(r["reviewerID"] for r in reviews).values()) >= 5
  assert all(p[0] == "Toys_Small" for m in meta.values() for p in m["categories"])
  big_bytes = sum(f.stat().st_size for f in (tmp_path / "b").iterdir())
  small_bytes = sum(f.stat().st_size for f in (tmp_path / "s").iterdir())
  assert big_bytes > 5 * small_bytes


@pytest.mark.parametrize("kwargs", [
    dict(num_users=5), dict(num_items=10), dict(num_users=30, num_items=400),
    dict(category="bad/name")])
def test_bad_sizes_raise_a_clear_error(tmp_path, kwargs):
  with pytest.raises(pipeline.PipelineError, match="demo"):
    demo_world.generate(tmp_path, **kwargs)
