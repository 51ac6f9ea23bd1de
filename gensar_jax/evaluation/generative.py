"""GenSAR's own ranking: constrained beam search over identifiers (DESIGN §6).

`GenerativeRanker` turns validation/test rows into prompts (the task's first
phrasing ending with the behaviour token that selects the task), decodes them with the
jitted trie-constrained beam search against either each row's 100 stored candidates
("sampled") or the whole catalog ("full"), and maps the decoded identifiers back to
items. Training-time validation and the eval stage both use it, so they agree.

Batches are padded to a fixed size (a multiple of the mesh) and sources to bucket
lengths, so the search compiles once per source bucket. Both constraint sets are
decoded from one encoder pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from gensar_jax import pipeline
from gensar_jax import tokens
from gensar_jax.decoding import beam_search
from gensar_jax.decoding import trie
from gensar_jax.evaluation import metrics as metrics_lib
from gensar_jax.train import batches as batches_lib
from gensar_jax.train import sharding

MODES = ("sampled", "full")


def check_beam(beam_size: int, num_items: int) -> None:
  """Raises PipelineError when the beam is wider than the catalog."""
  if beam_size > num_items:
    raise pipeline.PipelineError(
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
    score: "allowed" or "full" (see `gensar_jax.decoding.beam_search`).
    mesh: optional device mesh; batches are sharded over its first axis.
  """

  def __init__(self, model, tokenizer, builder, *, beam_size: int, batch_size: int,
               max_source_len: int, score: str = "allowed", mesh=None):
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
    self._catalog_tables = {}
    self.score = score

  # ------------------------------------------------------------------- per task
  def _table(self, task: str):
    return self.identifiers.for_task(task)

  def _level_tokens(self, task: str) -> trie.LevelTokens:
    table = self._table(task)
    first = None
    if self.builder.behaviour_tokens:
      first = self.tokenizer.token_id(
          tokens.REC_ITEM if task == "recommendation" else tokens.SEARCH_ITEM)
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

  def catalog_table(self, task: str) -> np.ndarray:
    """The whole catalog's trie of the task's identifier kind, `[1, M, K]`."""
    if task not in self._catalog_tables:
      t = self._table(task)
      self._catalog_tables[task] = trie.build_catalog(t.codes, t.codebook_size)
    return self._catalog_tables[task]

  # ------------------------------------------------------------------- decoding
  def encode_prompts(self, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of prompts; an over-long prompt keeps its end (the behaviour token)."""
    ids = self.tokenizer.backend.encode_batch_fast(list(prompts), add_special_tokens=False)
    keep = self.max_source_len - 1
    return [e.ids[-keep:] + [self.tokenizer.eos_id] for e in ids]

  def _put(self, x: np.ndarray, shared: bool = False):
    """Places a host batch on the mesh (each process passes the whole batch)."""
    if self.mesh is None:
      return x
    if shared:
      return jax.device_put(x, jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec()))
    n_proc, pidx = jax.process_count(), jax.process_index()
    local = len(x) // n_proc
    return sharding.global_batch({"x": x[pidx * local:(pidx + 1) * local]}, self.mesh)["x"]

  @staticmethod
  def _fetch(x) -> np.ndarray:
    if jax.process_count() > 1:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))

  def rank_prompts(self, params: Any, task: str, prompts: Sequence[str],
                   candidates_RxC: np.ndarray | None, modes: Sequence[str],
                   progress: str | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decodes prompts against the requested constraint sets.

    Args:
      params: the model's variables.
      task: "recommendation" or "search" (which identifier kind, behaviour token).
      prompts: source texts (e.g. `TaskBuilder.eval_source`).
      candidates_RxC: per prompt candidate items (-1 = none) for mode "sampled".
      modes: subset of ("sampled", "full").
      progress: a progress-bar label, or None for no bar.

    Returns:
      {mode: (items_RxW, scores_RxW)}: distinct items best first, -1 padded.
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
    src = self.encode_prompts(prompts)
    search = self._search_fn(task, len(modes))
    n, b = len(src), self.batch_size
    out = {m: ([], []) for m in modes}
    bar = tqdm.tqdm(total=n, desc=progress, unit="row", disable=progress is None
                    or jax.process_index() != 0, leave=False, dynamic_ncols=True)
    for lo in range(0, n, b):
      idx = np.arange(lo, lo + b)
      real = idx < n
      idx = np.where(real, idx, n - 1)  # pad the last batch with copies of a row
      length = batches_lib.bucket_length(max(len(src[i]) for i in idx),
                                         batches_lib.SOURCE_BUCKETS)
      src_BxS = batches_lib.pad_stack([np.asarray(src[i], np.int32) for i in idx], length)
      tables = []
      for m in modes:
        if m == "sampled":
          tables.append(self._put(trie.build_batched(
              codes.codes, candidates_RxC[idx], codes.codebook_size, num_nodes)))
        else:
          tables.append(self._put(self.catalog_table(task), shared=True))
      results = search(params, self._put(src_BxS), *tables)
      for m, (items, scores) in zip(modes, results):
        out[m][0].append(self._fetch(items)[real])
        out[m][1].append(self._fetch(scores)[real])
      bar.update(int(real.sum()))
    bar.close()
    w = self.beam_size
    return {m: (np.concatenate(v[0]) if v[0] else np.zeros((0, w), np.int32),
                np.concatenate(v[1]) if v[1] else np.zeros((0, w), np.float32))
            for m, v in out.items()}

  def evaluate(self, params: Any, task: str, rows: Mapping[str, np.ndarray],
               modes: Sequence[str] = MODES, progress: str | None = None) -> dict[str, dict]:
    """HR@{1,5,10} and NDCG@{5,10} of `rows` for each mode.

    Args:
      params: the model's variables.
      task: "recommendation" or "search".
      rows: stacked validation/test rows (`gensar_jax.data.dataset.load_rows`).
      modes: "sampled" (the row's positive + stored negatives) and/or "full".
      progress: a progress-bar label, or None.

    Returns:
      {mode: metrics dict with `count`}.
    """
    prompts = self.builder.eval_sources(task, rows)
    cands = candidates_of(rows) if "sampled" in modes else None
    ranked = self.rank_prompts(params, task, prompts, cands, modes, progress)
    return {m: metrics_lib.metrics_from_ranks(
        metrics_lib.ranks_from_lists(items, rows["item"])) for m, (items, _) in ranked.items()}
