"""Data-stage speed and memory at Amazon Electronics size (docs/design.md §1, issue 2).

  python -m gensar_jax.benchmarks.data [--reviews=1700000] [--items=62883]
      [--users=192403] [--leaves=1000] [--unreviewed_meta=435000] [--released]
      [--keep=DIR]

Generates a synthetic category in the McAuley layout, gzip'd, in a temporary folder:
  reviews_Electronics_5.json.gz  JSON lines with the 2014 fields (reviewerID, asin,
                                 reviewerName, helpful, reviewText, overall, summary,
                                 unixReviewTime, reviewTime), in asin order like the
                                 released files; every user has >= 5 reviews, no
                                 (user, item) pair repeats, many reviews share a day.
  meta_Electronics.json.gz       2014 Python-literal lines for the reviewed items (one
                                 4-level category path each, some with a 1-level path
                                 too, some HTML or empty descriptions) plus
                                 `--unreviewed_meta` lines of items nobody reviewed (the
                                 real Electronics meta lists ~498k items).
  --released adds Ai et al.-style query_text.txt.gz / train.qrels.gz / test.qrels.gz.
~1k distinct queries come from `--leaves` category leaves. Then it runs the data stage
(`python -m gensar_jax.main ... --config.stages=data`) in a child process and prints the
stage's time per phase, its wall time and the child's peak resident memory
(getrusage RUSAGE_CHILDREN ru_maxrss), next to the load average and CPU count.
Goal (issue 2): under 10 minutes and 8 GiB on 2 cores.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from gensar_jax.data import raw

_REVIEWS = flags.DEFINE_integer("reviews", 1_700_000, "Reviews to generate.")
_ITEMS = flags.DEFINE_integer("items", 62_883, "Reviewed items.")
_USERS = flags.DEFINE_integer("users", 192_403, "Users (each with >= 5 reviews).")
_LEAVES = flags.DEFINE_integer("leaves", 1000, "Category leaves (~ distinct queries).")
_UNREVIEWED = flags.DEFINE_integer("unreviewed_meta", 435_000,
                                   "Extra meta lines of items nobody reviewed.")
_WORDS = flags.DEFINE_integer("review_words", 100, "Mean words of reviewText.")
_RELEASED = flags.DEFINE_bool("released", False, "Also write Ai et al.-style query files.")
_KEEP = flags.DEFINE_string("keep", "", "Generate into this folder and keep it ('' = temp).")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")

CATEGORY = "Electronics"
_REPO = pathlib.Path(__file__).resolve().parents[2]
_CONSONANTS = list("bcdfgklmnprtvz")
_VOWELS = list("aeiou")


def _vocabulary(rng: np.random.Generator, n: int) -> np.ndarray:
  """`n` distinct lowercase pseudo-words of 2-4 consonant-vowel syllables."""
  words: set[str] = set()
  while len(words) < n:
    k = rng.integers(2, 5, size=n)
    c = rng.choice(_CONSONANTS, size=(n, 4))
    v = rng.choice(_VOWELS, size=(n, 4))
    for row in range(n):
      words.add("".join(c[row, j] + v[row, j] for j in range(k[row])))
  return np.asarray(sorted(words)[:n])


def _zipf_weights(n: int, exponent: float, offset: float) -> np.ndarray:
  w = 1.0 / (np.arange(n) + offset) ** exponent
  return w / w.sum()


def _reviews_per_user(rng, num_users: int, num_reviews: int) -> np.ndarray:
  """[U] review counts, each >= 5, summing to exactly `num_reviews`."""
  if num_reviews < 5 * num_users:
    raise SystemExit(f"--reviews must be at least 5 x --users = {5 * num_users}")
  extra_mean = num_reviews / num_users - 5
  counts = 5 + rng.geometric(1.0 / (1.0 + extra_mean), size=num_users) - 1
  diff = num_reviews - int(counts.sum())
  while diff != 0:
    if diff > 0:
      np.add.at(counts, rng.integers(0, num_users, size=diff), 1)
    else:
      above = np.flatnonzero(counts > 5)
      pick = np.unique(rng.choice(above, size=min(-diff, len(above)), replace=False))
      counts[pick] -= 1
    diff = num_reviews - int(counts.sum())
  return counts


def _user_items(rng, counts: np.ndarray, num_items: int) -> np.ndarray:
  """[R] item of each review (grouped by user): popularity-skewed, no repeated pair,
  every item reviewed at least once."""
  n = int(counts.sum())
  user = np.repeat(np.arange(len(counts)), counts)
  p = _zipf_weights(num_items, 0.8, 10.0)
  perm = rng.permutation(num_items)  # Popularity rank -> item.
  item = perm[rng.choice(num_items, size=n, p=p)]
  fixed = np.zeros(n, bool)
  slots = rng.choice(n, size=num_items, replace=False)  # Coverage: each item once.
  item[slots] = np.arange(num_items)
  fixed[slots] = True
  for _ in range(100):
    key = user.astype(np.int64) * num_items + item
    order = np.lexsort((~fixed, key))  # Within a key, fixed slots first.
    dup = np.zeros(n, bool)
    dup[order[1:]] = key[order[1:]] == key[order[:-1]]
    if not dup.any():
      return item
    item[dup] = perm[rng.choice(num_items, size=int(dup.sum()), p=p)]
  raise RuntimeError("could not draw distinct items per user")


def _texts(rng, vocab: np.ndarray, topic_words: np.ndarray, num: int, mean_words: int
           ) -> list[str]:
  """`num` review texts: random vocabulary words with a few topic words mixed in."""
  lengths = np.maximum(3, rng.poisson(mean_words, size=num))
  words = vocab[rng.integers(0, len(vocab), size=int(lengths.sum()))]
  topics = rng.random(len(words)) < 0.15
  words[topics] = topic_words[rng.integers(0, len(topic_words), size=int(topics.sum()))]
  bounds = np.concatenate([[0], np.cumsum(lengths)])
  return [" ".join(words[bounds[k]:bounds[k + 1]]) for k in range(num)]


def generate(out_dir: pathlib.Path, *, num_reviews: int, num_items: int, num_users: int,
             num_leaves: int, unreviewed_meta: int, review_words: int, released: bool,
             seed: int) -> dict:
  """Writes the synthetic category into `out_dir`; returns its counts."""
  rng = np.random.default_rng(seed)
  out_dir.mkdir(parents=True, exist_ok=True)
  vocab = _vocabulary(rng, 6000)
  name_words, text_words = vocab[:3000], vocab[3000:]
  # Category tree: departments x subcategories x leaves, each level 1-2 words.
  p = int(np.ceil(num_leaves ** (1 / 3)))
  names = [" & ".join(name_words[rng.choice(len(name_words), size=rng.integers(1, 3),
                                            replace=False)]).title()
           for _ in range(p + p * p + p ** 3)]
  leaves = [(names[d], names[p + d * p + s], names[p + p * p + (d * p + s) * p + f])
            for d in range(p) for s in range(p) for f in range(p)][:num_leaves]
  topic = np.asarray(sorted({w.lower() for path in leaves for level in path
                             for w in level.replace("&", " ").split()}))

  # Items: asins in popularity-independent order, one leaf each.
  total_items = num_items + unreviewed_meta
  asins = np.asarray([f"B{k:09d}" for k in rng.permutation(10 * total_items)[:total_items]])
  item_leaf = rng.integers(0, len(leaves), size=total_items)
  titles = _texts(rng, name_words, topic, total_items, 6)
  descriptions = _texts(rng, text_words, topic, total_items, 30)
  kind = rng.random(total_items)
  with gzip.open(out_dir / (raw.meta_name(CATEGORY) + ".gz"), "wt", compresslevel=1,
                 encoding="utf-8") as f:
    for k in rng.permutation(total_items):
      dept, sub, leaf = leaves[item_leaf[k]]
      cats = [[CATEGORY, dept, sub, leaf]] + ([[CATEGORY]] if kind[k] < 0.2 else [])
      record = {"asin": str(asins[k]), "title": titles[k].title(), "price": 19.99,
                "categories": cats}
      if kind[k] < 0.9:
        record["description"] = (f"<ul><li>{descriptions[k]}</li></ul>" if kind[k] < 0.1
                                 else descriptions[k] if kind[k] < 0.85 else "")
      f.write(raw.meta_line(record) + "\n")

  counts = _reviews_per_user(rng, num_users, num_reviews)
  user = np.repeat(np.arange(num_users), counts)
  item = _user_items(rng, counts, num_items)
  gaps = np.where(rng.random(num_reviews) < 0.25, 0, rng.geometric(1 / 40, size=num_reviews))
  first = np.concatenate([[0], np.cumsum(counts)[:-1]])
  gaps[first] = 0
  day = np.cumsum(gaps)
  day = day - np.repeat(day[first], counts) + np.repeat(rng.integers(0, 2500, num_users), counts)
  times = 1_104_537_600 + 86_400 * day  # From 2005-01-01.
  user_ids = np.asarray([f"A{k:013X}" for k in rng.permutation(16 ** 6)[:num_users]])
  pool = _texts(rng, text_words, topic, 40_000, review_words)
  summaries = _texts(rng, text_words, topic, 5_000, 4)
  text_of = rng.integers(0, len(pool), size=num_reviews)
  summary_of = rng.integers(0, len(summaries), size=num_reviews)
  stars = rng.integers(1, 6, size=num_reviews)
  order = np.lexsort((user, asins[item]))  # The released files are in asin order.
  with gzip.open(out_dir / (raw.reviews_name(CATEGORY) + ".gz"), "wt", compresslevel=1,
                 encoding="utf-8") as f:
    for lo in range(0, num_reviews, 100_000):
      idx = order[lo:lo + 100_000]
      f.write("".join(
          raw.review_line(str(user_ids[user[r]]), str(asins[item[r]]), str(pool[text_of[r]]),
                          stars[r], times[r], reviewerName=f"name {user[r]}",
                          helpful=[0, 0], summary=str(summaries[summary_of[r]]),
                          reviewTime="01 1, 2010") + "\n" for r in idx.tolist()))
  if released:
    queries = sorted({" ".join(dict.fromkeys(" ".join(p).replace("&", " ").lower().split()))
                      for p in leaves})
    qindex = {q: k for k, q in enumerate(queries)}
    leaf_query = np.asarray([qindex[" ".join(dict.fromkeys(
        " ".join(p).replace("&", " ").lower().split()))] for p in leaves])
    with gzip.open(out_dir / "query_text.txt.gz", "wt", encoding="utf-8") as f:
      f.write("".join(q + "\n" for q in queries))
    is_test = rng.random(num_reviews) < 0.3
    for name, sel in (("train.qrels.gz", ~is_test), ("test.qrels.gz", is_test)):
      idx = np.flatnonzero(sel)
      q = leaf_query[item_leaf[item[idx]]]
      with gzip.open(out_dir / name, "wt", compresslevel=1, encoding="utf-8") as f:
        f.write("".join(f"{user_ids[u]}_{qq} 0 {asins[i]} 1\n"
                        for u, qq, i in zip(user[idx].tolist(), q.tolist(),
                                            item[idx].tolist())))
  return {"reviews": num_reviews, "users": num_users, "items": num_items,
          "meta_lines": total_items, "leaves": len(leaves)}


def run_stage(raw_dir: pathlib.Path, workdir: pathlib.Path) -> tuple[dict, float, int]:
  """Runs the data stage in a child process: (summary, wall seconds, peak RSS bytes)."""
  cmd = [sys.executable, "-m", "gensar_jax.main",
         f"--config={_REPO / 'configs' / 'amazon.py'}:category={CATEGORY},preset=cpu",
         f"--config.data.raw_dir={raw_dir}", f"--workdir={workdir}",
         "--config.stages=data"]
  start = time.time()
  proc = subprocess.run(cmd, cwd=_REPO, capture_output=True, text=True, check=False)
  wall = time.time() - start
  if proc.returncode != 0:
    raise SystemExit(f"data stage failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
  summary = json.loads((workdir / "data" / "summary.json").read_text())
  return summary, wall, peak


def main(argv):
  del argv
  with tempfile.TemporaryDirectory(prefix="gensar_bench_data_") as tmp:
    raw_dir = pathlib.Path(_KEEP.value) if _KEEP.value else pathlib.Path(tmp) / "raw"
    start = time.time()
    if not (raw_dir / f"reviews_{CATEGORY}_5.json.gz").exists():
      counts = generate(raw_dir, num_reviews=_REVIEWS.value, num_items=_ITEMS.value,
                        num_users=_USERS.value, num_leaves=_LEAVES.value,
                        unreviewed_meta=_UNREVIEWED.value, review_words=_WORDS.value,
                        released=_RELEASED.value, seed=_SEED.value)
      print(f"generated {counts} in {time.time() - start:.0f} s")
    sizes = {p.name: f"{p.stat().st_size / 2**20:.0f} MiB" for p in sorted(raw_dir.iterdir())}
    print(f"input: {sizes}")
    summary, wall, peak = run_stage(raw_dir, pathlib.Path(tmp) / "work")
  print(f"data stage: {summary['users']} users, {summary['items']} items, "
        f"{summary['queries']} queries ({summary['query_source']}), "
        f"{summary['rec_events']} rec / {summary['search_events']} search events")
  print(f"rows: {summary['rows']}")
  print("time per phase (s): " + ", ".join(f"{k} {v}" for k, v in summary["timings"].items()))
  print(f"wall {wall:.1f} s (goal < 600 s), peak RSS {peak / 2**30:.2f} GiB (goal < 8 GiB), "
        f"cpus {os.cpu_count()}, load average {os.getloadavg()}")


if __name__ == "__main__":
  app.run(main)
