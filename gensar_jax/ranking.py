"""GenSAR's own ranking: beam search or exact likelihood over identifiers (docs/design.md §6, §9).

`GenerativeRanker` turns validation/test rows into prompts (the task's first
phrasing ending with the behaviour token that selects the task) and ranks items for
them against either each row's 100 stored candidates ("sampled") or the whole catalog
("full"), in one of two ways (`rank`):

  "exact": every candidate's identifier scored by its teacher-forced log-likelihood
           (`gensar_jax.decoding.exact`), all candidates ranked; no approximation.
  "beam":  the jitted trie-constrained beam search; items outside the final beam are
           unranked (a miss).

Training-time validation, the eval stage and inference all use it, so they agree; it sits
on the ground floor (no stage owns it) beside `metrics` and `sharding`.

Batches are padded to a fixed size (a multiple of the mesh) and sources to bucket
lengths, so the search compiles once per source bucket. Both constraint sets are
decoded from one encoder pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from gensar_jax import errors
from gensar_jax import metrics as metrics_lib
from gensar_jax import padding
from gensar_jax import progress as progress_lib
from gensar_jax import sharding
from gensar_jax import task_kinds
from gensar_jax.decoding import beam_search
from gensar_jax.decoding import exact as exact_lib
from gensar_jax.decoding import trie

MODES = metrics_lib.PROTOCOLS
RANKS = ("exact", "beam")
TIE_SEED = 0  # Seed of the random tie-breaking of exact scores (fixed: reproducible).


def check_beam(beam_size: int, num_items: int) -> None:
  """Raises PipelineError when the beam is wider than the catalog."""
  if beam_size > num_items:
    raise errors.PipelineError(
        f"config.eval.beam_size ({beam_size}) is larger than the catalog ({num_items} items); "
        "lower it")


def candidates_of(rows: Mapping[str, np.ndarray]) -> np.ndarray:
  """[R, 1 + negatives] candidate items of each row: the positive, then its negatives."""
  return np.concatenate([rows["item"][:, None], rows["negatives"]], axis=1).astype(np.int64)


class GenerativeRanker:
  """Ranks items for validation/test rows with the trained model.

  Args:
    model: a `gensar_jax.model.t5.T5`.
    tokenizer: the run's `gensar_jax.model.tokenizer.Tokenizer`.
    builder: the run's `gensar_jax.tasks.TaskBuilder` (writes the prompts).
    beam_size: W; at most this many distinct items come back per row.
    batch_size: rows per decoding batch (rounded up to a multiple of the mesh size).
    max_source_len: token limit of a prompt.
    score: "full" (log-softmax over the whole vocabulary, the authors' way) or
      "allowed" (over the tokens the trie allows at each step: a level where a
      candidate's branch does not split costs nothing, so it is biased by the trie's
      shape; see `gensar_jax.decoding.beam_search`).
    mesh: optional device mesh; batches are sharded over its first axis.
  """

  def __init__(self, model, tokenizer, builder, *, beam_size: int, batch_size: int,
               max_source_len: int, score: str = "full", mesh=None):
    self.model = model
    self.tokenizer = tokenizer
    self.builder = builder
    self.identifiers = builder.identifiers
    self.beam_size = int(beam_size)
    self.max_source_len = int(max_source_len)
    self.mesh = mesh
    n_dev = 1 if mesh is None else mesh.devices.size
    self.batch_size = -(-int(batch_size) // n_dev) * n_dev
    self._search = {}
    self._exact = {}
    self._catalog_tables = {}
    self.score = score

  # ------------------------------------------------------------------- per task
  def _table(self, task: str):
    return self.identifiers.for_task(task)

  def _level_tokens(self, task: str) -> trie.LevelTokens:
    table = self._table(task)
    first = None
    if self.builder.behaviour_tokens:
      first = self.tokenizer.token_id(task_kinds.ITEM_TOKEN_OF_TASK[task])
    return trie.level_tokens(self.tokenizer.level_offsets, table.level_names,
                             table.codebook_size, first)

  def _search_fn(self, task: str, num_tables: int):
    key = (task, num_tables)
    if key not in self._search:
      spec = beam_search.SearchSpec.create(
          self._level_tokens(task), start_token=self.model.config.decoder_start_id,
          beam_size=self.beam_size, score=self.score)
      self._search[key] = beam_search.make_search_fn(
          lambda p: beam_search.T5Decoder(self.model, p), spec, num_tables=num_tables,
          mesh=self.mesh, data_axis=None if self.mesh is None else self.mesh.axis_names[0])
    return self._search[key]

  def _exact_fn(self, task: str):
    if task not in self._exact:
      spec = beam_search.SearchSpec.create(
          self._level_tokens(task), start_token=self.model.config.decoder_start_id,
          beam_size=1, score=self.score)
      self._exact[task] = exact_lib.make_score_fn(
          lambda p: beam_search.T5Decoder(self.model, p), spec, mesh=self.mesh,
          data_axis=None if self.mesh is None else self.mesh.axis_names[0])
    return self._exact[task]

  def catalog_table(self, task: str) -> np.ndarray:
    """The whole catalog's trie of the task's identifier kind, `[1, M, K]`."""
    if task not in self._catalog_tables:
      t = self._table(task)
      self._catalog_tables[task] = trie.build_catalog(t.codes, t.codebook_size)
    return self._catalog_tables[task]

  # ------------------------------------------------------------------- decoding
  def encode_prompts(self, prompts: Sequence) -> list[list[int]]:
    """Token ids of prompts, with training's truncation rule (oldest history first)."""
    return self.tokenizer.encode_prompts(prompts, self.max_source_len)[0]

  def _put(self, x: np.ndarray, shared: bool = False):
    """Places a host batch on the mesh (each process passes the whole batch)."""
    if self.mesh is None:
      return x
    if shared:
      return jax.device_put(x, sharding.replicated(self.mesh))
    n_proc, pidx = jax.process_count(), jax.process_index()
    local = len(x) // n_proc
    return sharding.global_batch({"x": x[pidx * local:(pidx + 1) * local]}, self.mesh)["x"]

  @staticmethod
  def _fetch(x) -> np.ndarray:
    if jax.process_count() > 1:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  def rank_prompts(self, params: Any, task: str, prompts: Sequence,
                   candidates_RxC: np.ndarray | None, modes: Sequence[str],
                   progress: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decodes prompts against the requested constraint sets.

    Args:
      params: the model's variables.
      task: "recommendation" or "search" (which identifier kind, behaviour token).
      prompts: `gensar_jax.prompts.Prompt`s or texts (e.g. `TaskBuilder.eval_source`).
      candidates_RxC: per prompt candidate items (-1 = none) for mode "sampled".
      modes: subset of ("sampled", "full").
      progress: a progress-bar label, or None for no bar.

    Returns:
      {mode: (items_RxW, scores_RxW)}: distinct items best first, -1 padded.

    Raises:
      NonFiniteScores: a returned item's score is NaN or +inf.
    """
    modes = [m for m in MODES if m in modes]
    if not modes:
      raise ValueError(f"modes must name some of {MODES}")
    if "sampled" in modes and candidates_RxC is None:
      raise ValueError("mode 'sampled' needs candidates")
    codes = self._table(task)
    num_nodes = None
    if candidates_RxC is not None:
      num_nodes = trie.max_nodes(codes.num_levels, candidates_RxC.shape[1])
    search = self._search_fn(task, len(modes))
    out = {m: ([], []) for m in modes}

    def decode(idx, src_BxS):
      tables = []
      for m in modes:
        if m == "sampled":
          tables.append(self._put(trie.build_batched(
              codes.codes, candidates_RxC[idx], codes.codebook_size, num_nodes)))
        else:
          tables.append(self._put(self.catalog_table(task), shared=True))
      return [(self._fetch(i), self._fetch(sc)) for i, sc in search(params, src_BxS, *tables)]

    for real, results in self._batches(prompts, decode, progress):
      for m, (items, scores) in zip(modes, results):
        out[m][0].append(items[real])
        out[m][1].append(scores[real])
    w = self.beam_size
    got = {m: (np.concatenate(v[0]) if v[0] else np.zeros((0, w), np.int32),
               np.concatenate(v[1]) if v[1] else np.zeros((0, w), np.float32))
           for m, v in out.items()}
    for items, scores in got.values():  # A NaN model's beams come back in arbitrary order.
      metrics_lib.check_scores(np.where(items >= 0, scores, -np.inf))
    return got

  def _batches(self, prompts: Sequence, fn, progress: str | None):
    """Runs `fn(row_indices, src_BxS on the mesh)` over fixed-size padded batches.

    Yields (mask of the batch's real rows, fn's result) per batch; the last batch is
    padded with copies of the last row, sources with pad tokens to a bucket length.
    """
    src = self.encode_prompts(prompts)
    n, b = len(src), self.batch_size
    bar = progress_lib.bar(total=n, desc=progress, unit="row", show=progress is not None
                           and jax.process_index() == 0, leave=False, dynamic_ncols=True)
    for lo in range(0, n, b):
      idx = np.arange(lo, lo + b)
      real = idx < n
      idx = np.where(real, idx, n - 1)  # pad the last batch with copies of a row
      length = padding.bucket_length(max(len(src[i]) for i in idx), padding.SOURCE_BUCKETS)
      src_BxS = padding.pad_stack([np.asarray(src[i], np.int32) for i in idx], length)
      yield real, fn(idx, self._put(src_BxS))
      bar.update(int(real.sum()))
    bar.close()

  def score_candidates(self, params: Any, task: str, prompts: Sequence,
                       candidates_RxC: np.ndarray, progress: str | None = None) -> np.ndarray:
    """Exact log-likelihood of each row's candidates, `[R, C]` (-inf where -1)."""
    table = self._table(task)
    fn = self._exact_fn(task)
    cands = np.asarray(candidates_RxC, np.int64)
    num_nodes = trie.max_nodes(table.num_levels, cands.shape[1])
    allowed = self.score == "allowed"

    def score(idx, src_BxS):
      c = cands[idx]
      codes = table.codes[np.maximum(c, 0)]
      tbl = (trie.build_batched(table.codes, c, table.codebook_size, num_nodes) if allowed
             else np.full((1, 1, table.codebook_size), -1, np.int32))
      return self._fetch(fn(params, src_BxS, self._put(codes.astype(np.int32)),
                            self._put(c >= 0), self._put(tbl, shared=not allowed)))

    parts = [scores[real] for real, scores in self._batches(prompts, score, progress)]
    out = np.concatenate(parts) if parts else np.zeros((0, cands.shape[1]), np.float32)
    metrics_lib.check_scores(out)
    return out

  def score_catalog(self, params: Any, task: str, prompts: Sequence, chunk: int = 512,
                    progress: str | None = None) -> np.ndarray:
    """Exact log-likelihood of every catalog item for every prompt, `[R, N]`.

    Items are scored `chunk` at a time; cost grows with R x N (meant for catalogs up
    to ~10k items).
    """
    table = self._table(task)
    fn = self._exact_fn(task)
    n_items = len(table.codes)
    catalog = self.catalog_table(task)

    def score(idx, src_BxS):
      out = []
      for lo in range(0, n_items, chunk):
        items = np.arange(lo, min(lo + chunk, n_items))
        items = np.pad(items, (0, chunk - len(items)), constant_values=-1)
        codes = table.codes[np.maximum(items, 0)][None].astype(np.int32)
        got = fn(params, src_BxS, self._put(codes, shared=True),
                 self._put((items >= 0)[None], shared=True), self._put(catalog, shared=True))
        out.append(self._fetch(got)[:, items >= 0])
      return np.concatenate(out, axis=1)

    parts = [scores[real] for real, scores in self._batches(prompts, score, progress)]
    return np.concatenate(parts) if parts else np.zeros((0, n_items), np.float32)

  def row_ranks(self, params: Any, task: str, rows: Mapping[str, np.ndarray],
                modes: Sequence[str] = MODES, rank: str = "exact", *,
                exact_catalog: bool = False, compare: bool = False,
                progress: str | None = None) -> dict[str, Any]:
    """1-based rank of each row's target, per mode (np.inf: not ranked).

    Args:
      params: the model's variables.
      task: "recommendation" or "search".
      rows: stacked validation/test rows (`gensar_jax.data.dataset.load_rows`).
      modes: "sampled" (the row's positive + stored negatives) and/or "full".
      rank: "exact" or "beam": how "sampled" is ranked.
      exact_catalog: rank "full" exactly too (cost grows with the catalog) instead of
        with beam search.
      compare: also rank "sampled" the other way and measure how often beam search's
        top 10 equals the exact top 10.
      progress: a progress-bar label prefix, or None.

    Returns:
      {mode: ranks_R, ...}; with `compare` also {"sampled_beam": ranks_R,
      "sampled_exact": ranks_R, "agreement": {"top10_equal", "top1_equal",
      "same_rank"}}.
    """
    if rank not in RANKS:
      raise ValueError(f"rank must be one of {RANKS}, got {rank!r}")
    modes = [m for m in MODES if m in modes]
    prompts = self.builder.eval_sources(task, rows)
    target = np.asarray(rows["item"])
    label = (lambda what: None if progress is None else f"{progress} {what}")
    out: dict[str, Any] = {}
    want_exact = "sampled" in modes and (rank == "exact" or compare)
    beam_modes = [m for m in modes if (m == "sampled" and (rank == "beam" or compare))
                  or (m == "full" and not exact_catalog)]
    cands = candidates_of(rows) if "sampled" in modes else None
    beam = (self.rank_prompts(params, task, prompts, cands, beam_modes, label("beam"))
            if beam_modes else {})
    for m, (items, _) in beam.items():
      out[m if m == "full" else "sampled_beam"] = metrics_lib.ranks_from_lists(items, target)
    if want_exact:
      scores_RxC = self.score_candidates(params, task, prompts, cands, label("exact"))
      out["sampled_exact"] = metrics_lib.ranks_from_scores(scores_RxC, 0, TIE_SEED)
      if compare:
        top_RxC = np.take_along_axis(cands, np.argsort(-scores_RxC, axis=1, kind="stable"), 1)
        beam_items = beam["sampled"][0]
        k = min(10, beam_items.shape[1], top_RxC.shape[1])  # top 10, or the beam if narrower
        out["agreement"] = {
            "top10_equal": float(np.mean(np.all(top_RxC[:, :k] == beam_items[:, :k], 1))),
            "top_k": k,
            "top1_equal": float(np.mean(top_RxC[:, 0] == beam_items[:, 0])),
            "same_rank": float(np.mean(out["sampled_exact"] == out["sampled_beam"])),
        }
    if "full" in modes and exact_catalog:
      scores_RxN = self.score_catalog(params, task, prompts, progress=label("exact catalog"))
      out["full"] = metrics_lib.ranks_of_targets(scores_RxN, target, TIE_SEED)
    if "sampled" in modes:
      out["sampled"] = out["sampled_exact" if rank == "exact" else "sampled_beam"]
    if not compare:
      out.pop("sampled_exact", None)
      out.pop("sampled_beam", None)
    return out

  def evaluate(self, params: Any, task: str, rows: Mapping[str, np.ndarray],
               modes: Sequence[str] = MODES, rank: str = "exact",
               progress: str | None = None) -> dict[str, dict]:
    """HR@{1,5,10} and NDCG@{5,10} (with standard errors) of `rows` for each mode.

    Returns:
      {mode: metrics dict with `count`}.
    """
    ranks = self.row_ranks(params, task, rows, modes, rank, progress=progress)
    return {m: metrics_lib.metrics_from_ranks(ranks[m]) for m in modes if m in ranks}
