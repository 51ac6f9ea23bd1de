"""Raw category folder -> catalog + rows per task and split (the whole of docs/design.md §1).

`process(raw_dir, params)` runs raw reading, query construction, interleaving,
filters, leave-one-out and negatives, and returns everything the TFDS builder writes
plus a summary with counts and per-phase timings.

What "skipped" counts (nothing is dropped silently; see raw.py for the whole rule on
bad input, which is fatal where a file cannot be trusted):
  review_duplicate: reviews repeating a (user, item) pair; the earliest (then the
    first in the file) is kept, so a target never has its own item in its history.
  item_without_text: items with neither title nor description. They stay items (with
    identifiers and interactions); they are not BM25-indexed and their text is "".
  item_without_query: items without a category path of two or more levels (or whose
    words were all filtered): their reviews are recommendation events only.
  review_without_query: reviews that gave no search event (counted, kept as rec events).
  meta_duplicate: repeated meta lines of one asin (the first is used).
  meta_unreviewed: meta lines of items nobody reviewed (not part of the catalog).
  qrels_unmatched_pairs / qrels_bad_query: released qrels (user, item) pairs without
    a review, and qrels lines whose query index is outside query_text.
  <task>_target_without_history: targets lacking an earlier event of either kind.
  <task>_user_below_min_targets / <task>_targets_of_dropped_users: users (and their
    targets) with fewer than `min_targets` kept targets in that task (users with a
    single review are counted here).
"repaired" counts lines kept after repair, by file and reason:
  {reviews,meta,query_text,qrels}_{invalid_utf8,nul_bytes}.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter

from absl import logging
import numpy as np

from gensar_jax.data import histories
from gensar_jax.data import negatives as negatives_lib
from gensar_jax.data.params import Params  # The processing parameters (re-exported).
from gensar_jax.data import queries as queries_lib
from gensar_jax.data import raw
from gensar_jax.data import schema
from gensar_jax.errors import PipelineError


@dataclasses.dataclass
class Processed:
  """The data stage's result: catalog, rows by TFDS split name, summary."""

  catalog: schema.Catalog
  user_ids: np.ndarray
  rows: dict[str, dict[str, np.ndarray]]
  summary: dict


def _rng(seed: int, stream: str) -> np.random.Generator:
  return np.random.default_rng([seed, int.from_bytes(stream.encode()[:8], "little")])


def _first_of_each_pair(user: np.ndarray, item: np.ndarray, times: np.ndarray,
                        num_items: int) -> np.ndarray:
  """[n] bool: the earliest review (then the first in the file) of each (user, item)."""
  key = user.astype(np.int64) * num_items + item
  order = np.lexsort((np.arange(len(key)), times, key))
  keep = np.ones(len(key), bool)
  keep[order[1:][key[order[1:]] == key[order[:-1]]]] = False
  return keep


def process(raw_dir, params: Params) -> Processed:
  """Reads and processes one category folder.

  Raises:
    PipelineError: any problem with the input (file and line named).
  """
  timings: dict[str, float] = {}
  clock = [time.time()]

  def lap(name):
    now = time.time()
    timings[name] = round(now - clock[0], 2)
    clock[0] = now
    logging.info("data: %s done in %.1f s", name, timings[name])

  files = raw.find_files(raw_dir, params.category)
  if files.meta is None:
    raise PipelineError(f"no meta file meta_{params.category}.json[.gz] in {raw_dir}")
  released = files.has_released_queries
  reviews = raw.read_reviews(files.reviews, count_words=not released)
  lap("read_reviews")

  user_ids, user = np.unique(reviews.user_ids, return_inverse=True)
  item_ids, item = np.unique(reviews.item_ids, return_inverse=True)
  keep = _first_of_each_pair(user, item, reviews.times, len(item_ids))
  meta = raw.read_meta(files.meta, item_ids)
  if not meta.found.all():
    first = int(np.flatnonzero(~meta.found[item])[0])
    raise PipelineError(
        f"{files.reviews}:{reviews.linenos[first]}: review of unknown item "
        f"{item_ids[item[first]]!r} (no line in {files.meta.name}; "
        f"{int((~meta.found).sum())} such item(s))")
  skipped: Counter = Counter()
  skipped["review_duplicate"] = int((~keep).sum())
  if not keep.all():
    user, item = user[keep], item[keep]
    reviews = dataclasses.replace(
        reviews, user_ids=reviews.user_ids[keep], item_ids=reviews.item_ids[keep],
        times=reviews.times[keep], linenos=reviews.linenos[keep])
  repaired: Counter = Counter()
  for name, counts in (("reviews", reviews.repaired), ("meta", meta.repaired)):
    repaired.update({f"{name}_{k}": v for k, v in counts.items()})
  lap("read_meta")

  if released:
    qrepaired: Counter = Counter()
    text = raw.read_query_text(files.query_text, qrepaired)
    repaired.update({f"query_text_{k}": v for k, v in qrepaired.items()})
    qrepaired = Counter()
    parts = [raw.read_qrels(p, qrepaired) for p in (files.train_qrels, files.test_qrels) if p]
    repaired.update({f"qrels_{k}": v for k, v in qrepaired.items()})
    qu, qq, qi = (np.concatenate([p[k] for p in parts]) for k in range(3))
    query_list, review_query, qcounts = queries_lib.released_queries(
        text, qu, qq, qi, reviews.user_ids, reviews.item_ids, _rng(params.seed, "queries"))
    skipped["qrels_unmatched_pairs"] = qcounts["qrels_unmatched_pairs"]
    skipped["qrels_bad_query"] = qcounts["qrels_bad_query"]
    has = review_query >= 0
    pairs = np.unique(item[has].astype(np.int64) * max(len(query_list), 1) + review_query[has])
    pair_item, pair_query = np.divmod(pairs, max(len(query_list), 1))
    bounds = np.searchsorted(pair_item, np.arange(len(item_ids) + 1))
    item_queries = [pair_query[bounds[i]:bounds[i + 1]].tolist() for i in range(len(item_ids))]
  else:
    stem_count = (queries_lib.stem_counts(reviews.word_counts) if reviews.has_text else None)
    query_list, item_queries = queries_lib.build_item_queries(
        meta.category_paths, stem_count, params.query_min_word_count)
    review_query = queries_lib.assign_queries(item, item_queries, _rng(params.seed, "queries"))
  lap("queries")

  counts = np.bincount(item, minlength=len(item_ids)).astype(np.int64)
  ev = histories.interleave(user.astype(np.int64), item.astype(np.int64), reviews.times,
                            review_query)
  targets = {
      "recommendation": histories.task_targets(
          ev, schema.KIND_REC, params.max_rec_his_len, params.max_src_his_len,
          params.min_targets),
      "search": histories.task_targets(
          ev, schema.KIND_SEARCH, params.max_rec_his_len, params.max_src_his_len,
          params.min_targets),
  }
  rows: dict[str, dict[str, np.ndarray]] = {}
  for task, tt in targets.items():
    for k, split in enumerate(schema.SPLITS):
      rows[schema.split_name(task, split)] = histories.rows_of(ev, tt, k, task == "search")
  sequences = histories.rec_train_sequences(ev, targets["recommendation"], len(user_ids))
  lap("histories")

  catalog = schema.Catalog(
      item_ids=item_ids, titles=meta.titles, descriptions=meta.descriptions,
      queries=query_list, item_queries=item_queries, interaction_counts=counts,
      rec_train_sequences=sequences)
  num = params.num_negatives
  if num > 0 and len(item_ids) <= num:
    raise PipelineError(f"the category has {len(item_ids)} items; {num} negatives per "
                        f"target need at least {num + 1}")
  pairs = np.unique(user.astype(np.int64) * len(item_ids) + item)
  pair_user, pair_item = np.divmod(pairs, len(item_ids))
  user_items = np.split(pair_item.astype(np.int32),
                        np.searchsorted(pair_user, np.arange(1, len(user_ids))))
  texts = [catalog.item_text(i) for i in range(len(item_ids))]
  hits = negatives_lib.bm25_hits(texts, query_list, max(params.bm25_top_k, num + 1))
  lap("bm25")
  rng = _rng(params.seed, "negatives")
  for task in schema.TASKS:
    for split in schema.SPLITS:
      r = rows[schema.split_name(task, split)]
      if split == "train" or num == 0:
        r["negatives"] = np.zeros((len(r["user"]), 0), np.int32)
      elif task == "recommendation":
        r["negatives"] = negatives_lib.popularity(r["user"], r["item"], user_items, counts,
                                                  num, rng)
      else:
        r["negatives"] = negatives_lib.search(r["query"], r["item"], hits, len(item_ids),
                                              num, rng)
  lap("negatives")

  no_text = sum(1 for t in texts if not t)
  skipped["item_without_text"] = no_text
  skipped["item_without_query"] = sum(1 for q in item_queries if not q)
  skipped["review_without_query"] = int((review_query < 0).sum())
  skipped["meta_duplicate"] = meta.duplicates
  skipped["meta_unreviewed"] = meta.lines_read - len(item_ids) - meta.duplicates
  for task, tt in targets.items():
    for key in ("target_without_history", "user_below_min_targets",
                "targets_of_dropped_users"):
      skipped[f"{task}_{key}"] = tt.counts[key]
  summary = {
      "category": params.category,
      "query_source": "released" if released else "category_paths",
      "reviews": int(len(user)),
      "users": int(len(user_ids)),
      "items": int(len(item_ids)),
      "items_with_text": int(len(item_ids) - no_text),
      "queries": int(len(query_list)),
      "rec_events": int(len(user)),
      "search_events": int((review_query >= 0).sum()),
      "review_text": bool(reviews.has_text),
      "task_users": {t: tt.counts["users"] for t, tt in targets.items()},
      "rows": {t: {s: int(len(rows[schema.split_name(t, s)]["user"])) for s in schema.SPLITS}
               for t in schema.TASKS},
      "skipped": dict(sorted(skipped.items())),
      "repaired": dict(sorted(repaired.items())),
      "timings": timings,
  }
  return Processed(catalog=catalog, user_ids=user_ids, rows=rows, summary=summary)
