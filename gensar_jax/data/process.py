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


@dataclasses.dataclass
class _Reviews:
  """The kept reviews as indices: users, items and review times, one entry a review."""

  reviews: raw.Reviews
  meta: raw.Meta
  user_ids: np.ndarray  # [U] sorted
  user: np.ndarray  # [E] index into user_ids
  item_ids: np.ndarray  # [N] sorted
  item: np.ndarray  # [E] index into item_ids


class _Laps:
  """Per-phase wall times, logged as each phase ends."""

  def __init__(self):
    self.timings: dict[str, float] = {}
    self._clock = time.time()

  def __call__(self, name: str) -> None:
    now = time.time()
    self.timings[name] = round(now - self._clock, 2)
    self._clock = now
    logging.info("data: %s done in %.1f s", name, self.timings[name])


def _read(files: raw.RawFiles, lap: _Laps, skipped: Counter, repaired: Counter) -> _Reviews:
  """Reviews and metadata; each (user, item) pair's first review kept."""
  reviews = raw.read_reviews(files.reviews, count_words=not files.has_released_queries)
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
  skipped["review_duplicate"] = int((~keep).sum())
  if not keep.all():
    user, item = user[keep], item[keep]
    reviews = dataclasses.replace(
        reviews, user_ids=reviews.user_ids[keep], item_ids=reviews.item_ids[keep],
        times=reviews.times[keep], linenos=reviews.linenos[keep])
  for name, counts in (("reviews", reviews.repaired), ("meta", meta.repaired)):
    repaired.update({f"{name}_{k}": v for k, v in counts.items()})
  lap("read_meta")
  return _Reviews(reviews, meta, user_ids, user, item_ids, item)


def _queries(files: raw.RawFiles, r: _Reviews, params: Params, skipped: Counter,
             repaired: Counter) -> tuple[list[str], list[list[int]], np.ndarray]:
  """(queries, per item its query indices, per review its query or -1): the released
  queries when the folder has them, else built from the category paths."""
  if files.has_released_queries:
    qrepaired: Counter = Counter()
    text = raw.read_query_text(files.query_text, qrepaired)
    repaired.update({f"query_text_{k}": v for k, v in qrepaired.items()})
    qrepaired = Counter()
    parts = [raw.read_qrels(p, qrepaired) for p in (files.train_qrels, files.test_qrels) if p]
    repaired.update({f"qrels_{k}": v for k, v in qrepaired.items()})
    qu, qq, qi = (np.concatenate([p[k] for p in parts]) for k in range(3))
    query_list, review_query, qcounts = queries_lib.released_queries(
        text, qu, qq, qi, r.reviews.user_ids, r.reviews.item_ids, _rng(params.seed, "queries"))
    skipped["qrels_unmatched_pairs"] = qcounts["qrels_unmatched_pairs"]
    skipped["qrels_bad_query"] = qcounts["qrels_bad_query"]
    has = review_query >= 0
    pairs = np.unique(r.item[has].astype(np.int64) * max(len(query_list), 1) + review_query[has])
    pair_item, pair_query = np.divmod(pairs, max(len(query_list), 1))
    bounds = np.searchsorted(pair_item, np.arange(len(r.item_ids) + 1))
    item_queries = [pair_query[bounds[i]:bounds[i + 1]].tolist() for i in range(len(r.item_ids))]
  else:
    stem_count = (queries_lib.stem_counts(r.reviews.word_counts) if r.reviews.has_text
                  else None)
    query_list, item_queries = queries_lib.build_item_queries(
        r.meta.category_paths, stem_count, params.query_min_word_count)
    review_query = queries_lib.assign_queries(r.item, item_queries, _rng(params.seed, "queries"))
  return query_list, item_queries, review_query


def _rows(r: _Reviews, review_query: np.ndarray, params: Params):
  """(rows by TFDS split name, targets per task, training recommendation sequences):
  the interleaved events, filtered and split leave-one-out."""
  ev = histories.interleave(r.user.astype(np.int64), r.item.astype(np.int64), r.reviews.times,
                            review_query)
  targets = {
      task: histories.task_targets(ev, kind, params.max_rec_his_len, params.max_src_his_len,
                                   params.min_targets)
      for task, kind in (("recommendation", schema.KIND_REC), ("search", schema.KIND_SEARCH))}
  rows: dict[str, dict[str, np.ndarray]] = {}
  for task, tt in targets.items():
    for k, split in enumerate(schema.SPLITS):
      rows[schema.split_name(task, split)] = histories.rows_of(ev, tt, k, task == "search")
  sequences = histories.rec_train_sequences(ev, targets["recommendation"], len(r.user_ids))
  return rows, targets, sequences


def _add_negatives(rows, r: _Reviews, catalog: schema.Catalog, params: Params,
                   lap: _Laps) -> None:
  """Adds each validation/test row's negatives (popularity-sampled for recommendation,
  BM25-hard for search; none for training rows)."""
  num = params.num_negatives
  n_items = len(r.item_ids)
  if num > 0 and n_items <= num:
    raise PipelineError(f"the category has {n_items} items; {num} negatives per "
                        f"target need at least {num + 1}")
  pairs = np.unique(r.user.astype(np.int64) * n_items + r.item)
  pair_user, pair_item = np.divmod(pairs, n_items)
  user_items = np.split(pair_item.astype(np.int32),
                        np.searchsorted(pair_user, np.arange(1, len(r.user_ids))))
  texts = [catalog.item_text(i) for i in range(n_items)]
  hits = negatives_lib.bm25_hits(texts, catalog.queries, max(params.bm25_top_k, num + 1))
  lap("bm25")
  rng = _rng(params.seed, "negatives")
  for task in schema.TASKS:
    for split in schema.SPLITS:
      rr = rows[schema.split_name(task, split)]
      if split == "train" or num == 0:
        rr["negatives"] = np.zeros((len(rr["user"]), 0), np.int32)
      elif task == "recommendation":
        rr["negatives"] = negatives_lib.popularity(rr["user"], rr["item"], user_items,
                                                   catalog.interaction_counts, num, rng)
      else:
        rr["negatives"] = negatives_lib.search(rr["query"], rr["item"], hits, n_items, num, rng)
  lap("negatives")


def process(raw_dir, params: Params) -> Processed:
  """Reads and processes one category folder: reading, queries, histories, negatives.

  Raises:
    PipelineError: any problem with the input (file and line named).
  """
  lap = _Laps()
  files = raw.find_files(raw_dir, params.category)
  if files.meta is None:
    raise PipelineError(f"no meta file {raw.meta_name(params.category)}[.gz] in {raw_dir}")
  skipped: Counter = Counter()
  repaired: Counter = Counter()
  r = _read(files, lap, skipped, repaired)
  query_list, item_queries, review_query = _queries(files, r, params, skipped, repaired)
  lap("queries")
  rows, targets, sequences = _rows(r, review_query, params)
  lap("histories")
  catalog = schema.Catalog(
      item_ids=r.item_ids, titles=r.meta.titles, descriptions=r.meta.descriptions,
      queries=query_list, item_queries=item_queries,
      interaction_counts=np.bincount(r.item, minlength=len(r.item_ids)).astype(np.int64),
      rec_train_sequences=sequences)
  _add_negatives(rows, r, catalog, params, lap)

  no_text = sum(1 for i in range(len(r.item_ids)) if not catalog.item_text(i))
  skipped["item_without_text"] = no_text
  skipped["item_without_query"] = sum(1 for q in item_queries if not q)
  skipped["review_without_query"] = int((review_query < 0).sum())
  skipped["meta_duplicate"] = r.meta.duplicates
  skipped["meta_unreviewed"] = r.meta.lines_read - len(r.item_ids) - r.meta.duplicates
  for task, tt in targets.items():
    for key in ("target_without_history", "user_below_min_targets",
                "targets_of_dropped_users"):
      skipped[f"{task}_{key}"] = tt.counts[key]
  summary = {
      "category": params.category,
      "query_source": "released" if files.has_released_queries else "category_paths",
      "reviews": int(len(r.user)),
      "users": int(len(r.user_ids)),
      "items": int(len(r.item_ids)),
      "items_with_text": int(len(r.item_ids) - no_text),
      "queries": int(len(query_list)),
      "rec_events": int(len(r.user)),
      "search_events": int((review_query >= 0).sum()),
      "review_text": bool(r.reviews.has_text),
      "task_users": {t: tt.counts["users"] for t, tt in targets.items()},
      "rows": {t: {s: int(len(rows[schema.split_name(t, s)]["user"])) for s in schema.SPLITS}
               for t in schema.TASKS},
      "skipped": dict(sorted(skipped.items())),
      "repaired": dict(sorted(repaired.items())),
      "timings": lap.timings,
  }
  return Processed(catalog=catalog, user_ids=r.user_ids, rows=rows, summary=summary)
