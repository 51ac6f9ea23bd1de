"""Ask a trained GenSAR model for recommendations and search results (issue 10).

    from gensar_jax.inference import api
    model = api.GenSAR.load("/tmp/office")           # a workdir whose train stage ran
    model.recommend([[("rec", "I000123"), ("search", "gel pen", "I000456")]], k=5)
    model.search([[("rec", "I000123")]], ["stapler"], k=5)

A history is a list of events in time order: `("rec", item_id)` or
`("search", query, item_id)`. Like the training data, only the last
`data.max_rec_his_len` recommendation events and the last `data.max_src_his_len`
search sessions are used; longer histories are truncated (and the answer says so).
Requests are decoded in batches with the jitted constrained beam search over the whole
catalog, or over a caller-given candidate list, with exactly the prompts and decoder
the eval stage uses, so an answer equals the evaluation ranking for the same history.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from gensar_jax import pipeline
from gensar_jax import tasks as tasks_lib
from gensar_jax.data import dataset
from gensar_jax.evaluation import generative
from gensar_jax.model import t5 as t5_lib
from gensar_jax.train import checkpoint as ckpt_lib
from gensar_jax.train import sharding


class RequestError(ValueError):
  """A request that cannot be answered (unknown item, no query, bad event)."""


@dataclasses.dataclass(frozen=True)
class Hit:
  """One returned item."""

  item_id: str
  title: str
  score: float  # log-probability of the item's identifier under the model


@dataclasses.dataclass(frozen=True)
class Answer:
  """The top-k items of one request, best first, and any notes (e.g. truncation)."""

  hits: list[Hit]
  notes: list[str]


class GenSAR:
  """A trained model with its tokenizer, identifiers and catalog, loaded once.

  Args:
    bundle: the restored checkpoint (`checkpoint.load_for_decoding`).
    catalog: the data stage's catalog the model was trained on.
    beam_size / batch_size: decoding settings (default: the run's `eval` section).
    mesh: optional device mesh; batches are sharded over it.
  """

  def __init__(self, bundle: ckpt_lib.DecodingBundle, catalog, *, beam_size: int | None = None,
               batch_size: int | None = None, mesh=None):
    cfg = bundle.config
    self.bundle = bundle
    self.catalog = catalog
    self.builder = tasks_lib.TaskBuilder(catalog, bundle.identifiers, cfg.tasks)
    self.max_rec = int(cfg.data.max_rec_his_len)
    self.max_src = int(cfg.data.max_src_his_len)
    self.ranker = generative.GenerativeRanker(
        t5_lib.T5(bundle.t5_config), bundle.tokenizer, self.builder,
        beam_size=beam_size or cfg.eval.beam_size, batch_size=batch_size or cfg.eval.batch_size,
        max_source_len=cfg.tasks.max_source_len, score=cfg.eval.score, mesh=mesh)
    self._index = {str(a): i for i, a in enumerate(catalog.item_ids)}

  @classmethod
  def load(cls, workdir: str | pathlib.Path, which: str = "best", *, mesh=None,
           **kwargs) -> "GenSAR":
    """Loads the trained model of a workdir (its `train` and `data` stages).

    Args:
      workdir: the pipeline's workdir.
      which: "best" (best validation) or "latest" checkpoint.
      mesh: a device mesh, or None for one device ("auto": every device).
      **kwargs: beam_size, batch_size.
    """
    workdir = pathlib.Path(workdir)
    bundle = ckpt_lib.load_for_decoding(workdir / "train", which)
    catalog = dataset.load_catalog(workdir / "data")
    if mesh == "auto":
      mesh = sharding.make_mesh(bundle.config.mesh.data_axis)
    return cls(bundle, catalog, mesh=mesh, **kwargs)

  @property
  def beam_size(self) -> int:
    return self.ranker.beam_size

  # ------------------------------------------------------------------ requests
  def item_index(self, item_id: str) -> int:
    """The catalog index of an item id (RequestError when unknown)."""
    try:
      return self._index[str(item_id)]
    except KeyError:
      raise RequestError(f"unknown item id {item_id!r}") from None

  def history_events(self, history: Sequence[Sequence]) -> tuple[list[tuple], list[str]]:
    """Validates a history and keeps what the model reads; returns (events, notes)."""
    events = []
    for n, event in enumerate(history):
      if not isinstance(event, (list, tuple)) or not event:
        raise RequestError(f"history event {n} is not a list: {event!r}")
      kind = event[0]
      if kind == "rec" and len(event) == 2:
        events.append(("rec", self.item_index(event[1])))
      elif kind == "search" and len(event) == 3:
        if not isinstance(event[1], str) or not event[1].strip():
          raise RequestError(f"history event {n}: the query must be non-empty text")
        events.append(("search", event[1], self.item_index(event[2])))
      else:
        raise RequestError(f"history event {n} must be ['rec', item_id] or "
                           f"['search', query, item_id], got {event!r}")
    rec_at = [i for i, e in enumerate(events) if e[0] == "rec"]
    src_at = [i for i, e in enumerate(events) if e[0] == "search"]
    keep = sorted(rec_at[-self.max_rec:] + src_at[-self.max_src:]) if events else []
    notes = []
    if len(keep) < len(events):
      notes.append(f"history truncated to its last {self.max_rec} recommendation events and "
                   f"last {self.max_src} searches ({len(events) - len(keep)} older events dropped)")
    return [events[i] for i in keep], notes

  def _answer(self, task: str, prompts: list[str], k: int,
              candidates: Sequence[Sequence[str] | None] | None) -> list[list[Hit]]:
    if not 1 <= k <= self.beam_size:
      raise RequestError(f"k must be between 1 and the beam size {self.beam_size}, got {k}")
    results: list[list[Hit] | None] = [None] * len(prompts)
    given = [bool(candidates) and candidates[i] is not None for i in range(len(prompts))]
    groups = {"full": [i for i, g in enumerate(given) if not g],
              "sampled": [i for i, g in enumerate(given) if g]}
    for mode, idx in groups.items():
      if not idx:
        continue
      cands = None
      if mode == "sampled":
        lists = [[self.item_index(c) for c in candidates[i]] for i in idx]
        width = max(len(c) for c in lists)
        cands = np.full((len(idx), width), -1, np.int64)
        for r, c in enumerate(lists):
          cands[r, :len(c)] = c
      ranked = self.ranker.rank_prompts(self.bundle.params, task, [prompts[i] for i in idx],
                                        cands, (mode,))[mode]
      for r, i in enumerate(idx):
        results[i] = [Hit(str(self.catalog.item_ids[it]), self.catalog.titles[it], float(s))
                      for it, s in zip(ranked[0][r][:k], ranked[1][r][:k]) if it >= 0]
    return results

  def recommend(self, histories: Sequence[Sequence], k: int = 10,
                candidates: Sequence[Sequence[str] | None] | None = None) -> list[Answer]:
    """The next items for each history (RequestError on a bad request)."""
    prepared = [self.history_events(h) for h in histories]
    prompts = [self.builder.prompt("recommendation", self.builder.history_entries(ev))
               for ev, _ in prepared]
    hits = self._answer("recommendation", prompts, k, candidates)
    return [Answer(h, notes) for h, (_, notes) in zip(hits, prepared)]

  def search(self, histories: Sequence[Sequence], queries: Sequence[str], k: int = 10,
             candidates: Sequence[Sequence[str] | None] | None = None) -> list[Answer]:
    """The items each user will click for their query (RequestError on a bad request)."""
    if len(queries) != len(histories):
      raise RequestError(f"{len(queries)} queries for {len(histories)} histories")
    for q in queries:
      if not isinstance(q, str) or not q.strip():
        raise RequestError("a search request needs a non-empty query")
    prepared = [self.history_events(h) for h in histories]
    prompts = [self.builder.prompt("search", self.builder.history_entries(ev), q.strip())
               for (ev, _), q in zip(prepared, queries)]
    hits = self._answer("search", prompts, k, candidates)
    return [Answer(h, notes) for h, (_, notes) in zip(hits, prepared)]


def check_workdir(workdir: pathlib.Path) -> None:
  """Raises PipelineError unless the workdir holds a trained model and its data."""
  for stage in ("data", "train"):
    if not (pathlib.Path(workdir) / stage).is_dir():
      raise pipeline.PipelineError(f"{workdir} has no {stage} stage output; train a model first")
