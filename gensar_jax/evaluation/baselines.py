"""Baselines scored exactly like GenSAR: same rows, same candidates, same metrics (DESIGN §7).

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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import bm25s
import numpy as np

from gensar_jax import context
from gensar_jax import metrics as metrics_lib
from gensar_jax import ranking
from gensar_jax.data import dataset
from gensar_jax.data import negatives as negatives_lib
from gensar_jax.data import schema

Scorer = Callable[[Mapping[str, np.ndarray]], np.ndarray]  # rows -> [R, N] scores
_CHUNK = 512  # Rows scored at once (bounds the [R, N] score matrix).


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
  seqs = [s for s in catalog.rec_train_sequences if len(s)]
  flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
  counts_N = np.bincount(flat, minlength=catalog.num_items).astype(np.float32)
  return lambda rows: np.broadcast_to(counts_N, (len(rows["item"]), catalog.num_items))


def sasrec_scorer(embed_dir, catalog: schema.Catalog, earlier_rows,
                  window: int | None = None) -> Scorer:
  """The embed stage's SASRec (see `gensar_jax.embed.sasrec.row_histories`).

  Args:
    window: keep only the last `window` recommendation items of each history (GenSAR's
      `data.max_rec_his_len`, for a same-information comparison); None = SASRec's own
      `max_len`.
  """
  from gensar_jax.embed import outputs as embed_outputs  # pylint: disable=g-import-not-at-top
  from gensar_jax.embed import sasrec  # pylint: disable=g-import-not-at-top

  model = embed_outputs.load_sasrec(embed_dir)

  def score(rows):
    histories, _ = sasrec.row_histories(catalog, rows, earlier_rows)
    if window is not None:
      histories = [h[-window:] for h in histories]
    return sasrec.score_all(model, histories)

  return score


def query_scorer(query_scores_QxN: np.ndarray) -> Scorer:
  """Scores looked up by each row's query index from a per-query matrix."""
  return lambda rows: query_scores_QxN[np.asarray(rows["query"], np.int64)]


def bm25_query_scores(catalog: schema.Catalog) -> np.ndarray:
  """[Q, N] BM25 score of every query against every item's text (0 for no text)."""
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


def evaluate_all(config, ctx: context.StageContext, catalog: schema.Catalog,
                 test_rows: Mapping[str, Mapping[str, np.ndarray]],
                 modes: Sequence[str]) -> dict[str, dict]:
  """{baseline: {task: {mode: ranks_R}}} on the given test rows (the one place every
  baseline, SASRec included, is scored)."""
  seed = int(config.seed)
  data_dir = ctx.input_dir("data")
  embed_dir = ctx.input_dir("embed")
  rec, srch = test_rows["recommendation"], test_rows["search"]
  out: dict[str, dict] = {}
  pop = popularity_scorer(catalog)
  out["popularity"] = {"recommendation": score_rows(pop, rec, modes, seed, "popularity"),
                       "search": score_rows(pop, srch, modes, seed, "popularity")}
  earlier = dataset.load_rows(data_dir, "recommendation", "validation")
  out["sasrec"] = {"recommendation": score_rows(
      sasrec_scorer(embed_dir, catalog, earlier), rec, modes, seed, "sasrec")}
  window = int(config.data.max_rec_his_len)
  out[f"sasrec_last{window}"] = {"recommendation": score_rows(
      sasrec_scorer(embed_dir, catalog, earlier, window), rec, modes, seed,
      f"sasrec_last{window}")}
  out["bm25"] = {"search": score_rows(query_scorer(bm25_query_scores(catalog)), srch, modes,
                                      seed, "bm25")}
  out["dense"] = {"search": score_rows(
      query_scorer(dense_query_scores(config, embed_dir, catalog)), srch, modes, seed,
      "dense")}
  return out
