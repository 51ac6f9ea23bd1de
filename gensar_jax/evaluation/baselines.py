"""Baselines scored exactly like GenSAR: same rows, same candidates, same metrics (docs/design.md §7).

Each baseline is a scorer `rows -> scores [R, N]` over the whole catalog; the
"sampled" metrics take the scores of each row's stored candidates (positive first)
and the "full" metrics rank the target among all N items, both with random
tie-breaking (`metrics.ranks_from_scores` / `metrics.ranks_of_targets`).

  popularity  (both tasks) training interaction counts (the recommendation items of
              `Catalog.rec_train_sequences`), the same for every row.
  sasrec      (recommendation) the embed stage's SASRec over the user's sequence up to
              the target (validation target included for test rows), its last
              `embed.sasrec.max_len` items.
  sasrec_lastW  the same trained SASRec reading only the last W = `data.max_rec_his_len`
              items (GenSAR's recommendation window), for a same-information comparison.
  bm25        (search) BM25 (bm25s, the data stage's tokenizer: stopwords removed,
              Krovetz stems) of the row's query over item title + description.
  dense       (search) cosine similarity of the text encoder's query embedding and the
              embed stage's item embeddings (the same encoder).
  sasrec_bce  (recommendation) `sasrec` trained with the binary cross-entropy loss and one
              sampled negative (GenSAR's paper's SASRec; `embed.sasrec.bce_baseline`).
  cooccurrence  (recommendation) how often each item followed the row's last history item
              in the training sequences (`transition_counts`), ties by popularity.
  cooccurrence_last3  the same summed over the last 3 history items, weights 1, 0.5,
              0.25 (newest first): an item-to-item kNN over transitions.
  id_prefix   (recommendation) the longest collaborative-identifier prefix each item
              shares with each of the last 3 history items, summed with weights 1, 0.5,
              0.25, ties by popularity: what the identifiers alone carry.

Recommendation histories are built as SASRec's (`embed.sasrec.row_histories`): the
user's training sequence, then (for test rows) the validation target. Transition counts
and popularity come from `Catalog.rec_train_sequences` only, so no validation or test
target is counted. Every baseline is one `Baseline` of `REGISTRY`, which `evaluate_all`
scores and the report reads display names from.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import pathlib
from typing import Any

from absl import logging
import numpy as np
from scipy import sparse

from gensar_jax import context
from gensar_jax import metrics as metrics_lib
from gensar_jax import ranking
from gensar_jax.data import dataset
from gensar_jax.data import negatives as negatives_lib
from gensar_jax.data import schema
from gensar_jax.evaluation import outputs as eval_outputs

Scorer = Callable[[Mapping[str, np.ndarray]], np.ndarray]  # rows -> [R, N] scores
_CHUNK = 512  # Rows scored at once (bounds the [R, N] score matrix).
RECENCY = (1.0, 0.5, 0.25)  # Weights of the last 3 history items, newest first.
# Largest popularity tie-break added to a count- or prefix-based score: below their
# smallest step (0.25 with RECENCY), so popularity only orders items of equal score.
TIE = 0.1


def score_rows(scorer: Scorer, rows: Mapping[str, np.ndarray], modes: Sequence[str],
               seed: int, name: str = "a baseline") -> dict[str, np.ndarray]:
  """1-based rank of each row's target under one scorer, per mode ("sampled", "full").

  Raises NonFiniteScores (naming the baseline `name`) on NaN or +inf scores.
  """
  with metrics_lib.scoring(f"baseline {name} on the test rows"):
    return _score_rows(scorer, rows, modes, seed)


def _score_rows(scorer: Scorer, rows: Mapping[str, np.ndarray], modes: Sequence[str],
                seed: int) -> dict[str, np.ndarray]:
  n = len(rows["item"])
  ranks = {m: [] for m in modes}
  for lo in range(0, n, _CHUNK):
    part = {k: v[lo:lo + _CHUNK] for k, v in rows.items()}
    scores_RxN = scorer(part)
    if "sampled" in modes:
      cands = ranking.candidates_of(part)
      ranks["sampled"].append(metrics_lib.ranks_from_scores(
          np.take_along_axis(scores_RxN, cands, axis=1), 0, seed + lo))
    if "full" in modes:
      ranks["full"].append(metrics_lib.ranks_of_targets(scores_RxN, part["item"], seed + lo))
  return {m: np.concatenate(r) if r else np.zeros(0) for m, r in ranks.items()}


def popularity_scorer(catalog: schema.Catalog) -> Scorer:
  """Training interaction counts of every item (the same ranking for every row)."""
  counts_N = catalog.train_counts().astype(np.float32)
  return lambda rows: np.broadcast_to(counts_N, (len(rows["item"]), catalog.num_items))


def sasrec_scorer(embed_dir, catalog: schema.Catalog, earlier_rows,
                  window: int | None = None, which: str = "softmax") -> Scorer:
  """The embed stage's SASRec (see `gensar_jax.embed.sasrec.row_histories`).

  Args:
    window: keep only the last `window` recommendation items of each history (GenSAR's
      `data.max_rec_his_len`, for a same-information comparison); None = SASRec's own
      `max_len`.
    which: "softmax" (the main SASRec) or "bce" (`embed.sasrec.bce_baseline`'s).
  """
  from gensar_jax.embed import outputs as embed_outputs  # pylint: disable=g-import-not-at-top
  from gensar_jax.embed import sasrec  # pylint: disable=g-import-not-at-top

  model = embed_outputs.load_sasrec(embed_dir, which)

  def score(rows):
    histories, _ = sasrec.row_histories(catalog, rows, earlier_rows)
    if window is not None:
      histories = [h[-window:] for h in histories]
    return sasrec.score_all(model, histories)

  return score


def popularity_tiebreak(catalog: schema.Catalog) -> np.ndarray:
  """float64 [N] in [0, TIE): training counts scaled to order items of equal score."""
  counts_N = catalog.train_counts().astype(np.float64)
  return TIE * counts_N / (counts_N.max(initial=0.0) + 1.0)


def recent_items(histories: Sequence[np.ndarray], count: int) -> np.ndarray:
  """int64 [R, count]: each history's last `count` items, newest first; -1 where none."""
  out_RxK = np.full((len(histories), count), -1, np.int64)
  for r, h in enumerate(histories):
    last = np.asarray(h, np.int64)[::-1][:count]
    out_RxK[r, :len(last)] = last
  return out_RxK


def transition_counts(sequences: Sequence[np.ndarray], num_items: int) -> sparse.csr_matrix:
  """[N, N] sparse counts: entry (a, b) = how often item b directly followed item a."""
  pairs = [(np.asarray(s[:-1], np.int64), np.asarray(s[1:], np.int64))
           for s in sequences if len(s) > 1]
  src = np.concatenate([a for a, _ in pairs]) if pairs else np.zeros(0, np.int64)
  dst = np.concatenate([b for _, b in pairs]) if pairs else np.zeros(0, np.int64)
  return sparse.csr_matrix((np.ones(len(src)), (src, dst)), shape=(num_items, num_items))


def _history_scorer(catalog: schema.Catalog, earlier_rows, weights: Sequence[float],
                    item_scores: Callable[[np.ndarray], np.ndarray]) -> Scorer:
  """Scores sum `w_k * item_scores(k-th newest history item)` [H, N], plus popularity
  as a tie-break; rows with fewer history items use what they have."""
  from gensar_jax.embed import sasrec  # pylint: disable=g-import-not-at-top

  tie_N = popularity_tiebreak(catalog)

  def score(rows):
    histories, _ = sasrec.row_histories(catalog, rows, earlier_rows)
    recent_RxK = recent_items(histories, len(weights))
    out_RxN = np.tile(tie_N, (len(histories), 1))
    for k, w in enumerate(weights):
      has_R = recent_RxK[:, k] >= 0
      if has_R.any():
        out_RxN[has_R] += w * item_scores(recent_RxK[has_R, k])
    return out_RxN

  return score


def cooccurrence_scorer(catalog: schema.Catalog, earlier_rows,
                        weights: Sequence[float] = (1.0,)) -> Scorer:
  """Training transition counts from the last `len(weights)` history items, weighted
  newest first (`(1.0,)`: the last item only), ties by popularity."""
  counts_NxN = transition_counts(catalog.rec_train_sequences, catalog.num_items)
  return _history_scorer(catalog, earlier_rows, weights,
                         lambda items_H: counts_NxN[items_H].toarray())


def prefix_lengths(codes_NxL: np.ndarray, items_H: np.ndarray) -> np.ndarray:
  """int [H, N]: how many leading codes item n shares with item items_H[h]."""
  same_HxNxL = codes_NxL[items_H][:, None, :] == codes_NxL[None, :, :]
  return np.cumprod(same_HxNxL, axis=2, dtype=np.int8).sum(axis=2, dtype=np.int32)


def id_prefix_scorer(catalog: schema.Catalog, codes_NxL: np.ndarray, earlier_rows,
                     weights: Sequence[float] = RECENCY) -> Scorer:
  """Shared identifier prefix length with each of the last `len(weights)` history items
  (weighted newest first), ties by popularity.

  Args:
    codes_NxL: one identifier per item (the collaborative table, for recommendation).
  """
  codes_NxL = np.asarray(codes_NxL)
  return _history_scorer(catalog, earlier_rows, weights,
                         lambda items_H: prefix_lengths(codes_NxL, items_H))


def query_scorer(query_scores_QxN: np.ndarray) -> Scorer:
  """Scores looked up by each row's query index from a per-query matrix."""
  return lambda rows: query_scores_QxN[np.asarray(rows["query"], np.int64)]


def bm25_query_scores(catalog: schema.Catalog) -> np.ndarray:
  """[Q, N] BM25 score of every query against every item's text (0 for no text)."""
  import bm25s  # pylint: disable=g-import-not-at-top

  texts = [catalog.item_text(i) for i in range(catalog.num_items)]
  has_text = np.flatnonzero([bool(t.strip()) for t in texts])
  out = np.zeros((len(catalog.queries), catalog.num_items), np.float32)
  if len(has_text) == 0:
    return out
  retriever = bm25s.BM25()
  retriever.index(negatives_lib.tokenize([texts[i] for i in has_text]), show_progress=False)
  for q, words in enumerate(negatives_lib.tokenize(catalog.queries)):
    if words:
      out[q, has_text] = retriever.get_scores(words)
  return out


def dense_query_scores(config, embed_dir, catalog: schema.Catalog) -> np.ndarray:
  """[Q, N] cosine similarity of encoded queries and the embed stage's item vectors."""
  from gensar_jax.embed import outputs as embed_outputs  # pylint: disable=g-import-not-at-top
  from gensar_jax.embed import text_encoder  # pylint: disable=g-import-not-at-top

  items_NxD, _ = embed_outputs.load_embeddings(embed_dir, catalog.item_ids)
  encoder = text_encoder.load(config.embed.text_encoder_dir or None, config.embed.max_text_len)
  queries_QxD = np.asarray(text_encoder.encode(encoder, list(catalog.queries),
                                               batch_size=config.embed.batch_size))

  def unit(x):
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

  return (unit(queries_QxD) @ unit(items_NxD).T).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Inputs:
  """What baselines are built from: the eval stage's config and input stages."""

  config: Any  # The eval stage's config.
  catalog: schema.Catalog
  data_dir: pathlib.Path
  embed_dir: pathlib.Path
  identifiers_dir: pathlib.Path

  @property
  def window(self) -> int:
    """GenSAR's recommendation history window (`data.max_rec_his_len`)."""
    return int(self.config.data.max_rec_his_len)

  @functools.cached_property
  def earlier_rows(self) -> Mapping[str, np.ndarray]:
    """The validation recommendation rows (their targets precede the test targets)."""
    return dataset.load_rows(self.data_dir, "recommendation", "validation")


def _collaborative_codes(b: Inputs) -> np.ndarray:
  from gensar_jax.identifiers import table as id_table  # pylint: disable=g-import-not-at-top

  return id_table.load(b.identifiers_dir).for_task("recommendation").codes


def _sasrec_bce(b: Inputs) -> Scorer | None:
  from gensar_jax.embed import outputs as embed_outputs  # pylint: disable=g-import-not-at-top

  if not embed_outputs.has_sasrec(b.embed_dir, "bce"):
    return None
  return sasrec_scorer(b.embed_dir, b.catalog, b.earlier_rows, which="bce")


@dataclasses.dataclass(frozen=True)
class Baseline:
  """One baseline: its key, tasks, and how to build its scorer."""

  name: str  # Key in metrics.json and ranks.npz (`outputs.BASELINE_TITLES`); "{window}" becomes data.max_rec_his_len.
  tasks: tuple[str, ...]  # The tasks it is scored on (one scorer serves them all).
  make: Callable[[Inputs], Scorer | None]  # None: not available here (skipped).

  @property
  def title(self) -> str:
    """Display name (the report's); may hold "{window}" too."""
    return eval_outputs.BASELINE_TITLES[self.name]

  def key(self, b: Inputs) -> str:
    """The name with this run's window filled in."""
    return self.name.format(window=b.window)


_REC, _SEARCH = ("recommendation",), ("search",)
REGISTRY: tuple[Baseline, ...] = (
    Baseline("popularity", tuple(schema.TASKS), lambda b: popularity_scorer(b.catalog)),
    Baseline("cooccurrence", _REC, lambda b: cooccurrence_scorer(b.catalog, b.earlier_rows)),
    Baseline("cooccurrence_last3", _REC,
             lambda b: cooccurrence_scorer(b.catalog, b.earlier_rows, RECENCY)),
    Baseline("id_prefix", _REC,
             lambda b: id_prefix_scorer(b.catalog, _collaborative_codes(b), b.earlier_rows)),
    Baseline("sasrec", _REC, lambda b: sasrec_scorer(b.embed_dir, b.catalog, b.earlier_rows)),
    Baseline("sasrec_last{window}", _REC,
             lambda b: sasrec_scorer(b.embed_dir, b.catalog, b.earlier_rows, b.window)),
    Baseline("sasrec_bce", _REC, _sasrec_bce),
    Baseline("bm25", _SEARCH, lambda b: query_scorer(bm25_query_scores(b.catalog))),
    Baseline("dense", _SEARCH,
             lambda b: query_scorer(dense_query_scores(b.config, b.embed_dir, b.catalog))),
)


def title(key: str) -> str:
  """Display name of a baseline key ("sasrec_last5" -> "SASRec (last 5 items)")."""
  return eval_outputs.baseline_title(key)


def evaluate_all(config, ctx: context.StageContext, catalog: schema.Catalog,
                 test_rows: Mapping[str, Mapping[str, np.ndarray]],
                 modes: Sequence[str]) -> dict[str, dict]:
  """{baseline: {task: {mode: ranks_R}}} on the given test rows: every `REGISTRY` entry
  available in this workdir (the one place every baseline, SASRec included, is scored)."""
  b = Inputs(config, catalog, ctx.input_dir("data"), ctx.input_dir("embed"),
             ctx.input_dir("identifiers"))
  return evaluate(b, REGISTRY, test_rows, modes, int(config.seed))


def evaluate(b: Inputs, entries: Sequence[Baseline],
             test_rows: Mapping[str, Mapping[str, np.ndarray]], modes: Sequence[str],
             seed: int) -> dict[str, dict]:
  """{baseline: {task: {mode: ranks_R}}} of the given entries (those whose `make` gives
  a scorer) on the given test rows (tasks without rows are left out)."""
  out: dict[str, dict] = {}
  for entry in entries:
    scorer = entry.make(b)
    if scorer is None:
      logging.info("baseline %s: not available in this workdir, skipped", entry.key(b))
      continue
    name = entry.key(b)
    out[name] = {task: score_rows(scorer, test_rows[task], modes, seed, name)
                 for task in entry.tasks if task in test_rows}
  return out
