"""Ask a trained GenSAR model for recommendations and search results (issue 10).

    from gensar_jax.inference import api
    model = api.GenSAR.load("/tmp/office")           # a workdir whose train stage ran
    model.recommend([[("rec", "I000123"), ("search", "gel pen", "I000456")]], k=5)
    model.search([[("rec", "I000123")]], ["stapler"], k=5)
    # Another beam, batch or scoring than the run's own eval settings:
    #   api.GenSAR.load(workdir, decoding=trained_model.Decoding(50, 32, "full"))

A history is a list of events in time order: `("rec", item_id)` or
`("search", query, item_id)`, item ids and queries as text. Like the training data,
only the last `data.max_rec_his_len` recommendation events and the last
`data.max_src_his_len` search sessions are used; a query keeps its first
`tasks.max_query_tokens` words, and at most `QUERY_CHARS_PER_TOKEN` characters per
encoder token (a bound on pathological queries only); a prompt longer than the
encoder's `tasks.max_source_len` tokens loses its oldest history entries first.
Whatever is cut is named in the answer's `notes`.

Each batch call returns one `Answer` per request, in order. A request that cannot be
answered (unknown item id, malformed event, empty query or candidate list) gets
`Answer(hits=[], error="history entry 2: unknown item id 'X'")` and the others are
still answered; only a problem of the whole call (bad `k`, lists of different
lengths) raises `RequestError`. Requests are decoded in batches with the jitted
constrained beam search over the whole catalog, or over a caller-given candidate list,
with exactly the prompts and decoder the eval stage uses, so an answer equals the
evaluation ranking for the same history.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np

from gensar_jax import metrics as metrics_lib
from gensar_jax import sharding
from gensar_jax import trained_model

# A query (after its word limit) keeps at most this many characters per encoder token:
# far above any real query, it bounds the tokenizer's work on a pathological one (a
# 10 MB "word" would otherwise be tokenized several times, ~1 s per MB each).
QUERY_CHARS_PER_TOKEN = 16


class RequestError(ValueError):
  """A request that cannot be answered (unknown item, no query, bad event or type).

  Attributes:
    field: the request field at fault ("history", "query", "candidates", "k", ...).
  """

  def __init__(self, message: str, field: str | None = None):
    super().__init__(message)
    self.field = field


class _More:
  def __repr__(self) -> str:
    return "..."


def show(value, limit: int = 80) -> str:
  """A short one-line Python repr of a request value, numpy scalars as plain values
  (`'I0001'`, never `np.str_('I0001')`); long lists and texts are cut with "..."."""

  def plain(v, depth):
    if isinstance(v, np.ndarray):
      v = list(v[:9]) if v.ndim else v.item()
    if isinstance(v, np.generic):
      return v.item()
    if isinstance(v, str):
      return str(v[:limit])
    if isinstance(v, (list, tuple)):
      if depth > 3:
        return _More()
      items = [plain(x, depth + 1) for x in v[:8]] + ([_More()] if len(v) > 8 else [])
      return items if isinstance(v, list) else tuple(items)
    return v

  text = repr(plain(value, 0))
  return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclasses.dataclass(frozen=True)
class Hit:
  """One returned item."""

  item_id: str
  title: str
  score: float  # log-probability of the item's identifier under the model


@dataclasses.dataclass(frozen=True)
class Answer:
  """The answer to one request.

  Attributes:
    hits: the top-k items, best first (empty when `error` is set).
    notes: what was cut from the request before the model read it, e.g.
      "query truncated to its first 64 of 900 words".
    error: why the request could not be answered (None when it was).
  """

  hits: list[Hit]
  notes: list[str] = dataclasses.field(default_factory=list)
  error: str | None = None

  @property
  def ok(self) -> bool:
    return self.error is None


def _keep_last(positions: list[int], n: int) -> list[int]:
  return positions[max(0, len(positions) - n):]


class GenSAR:
  """A trained model with its tokenizer, identifiers and catalog, loaded once.

  Args:
    trained: the restored run (`gensar_jax.trained_model.TrainedModel`).
    decoding: beam width, decoding batch and scoring (default: the run's own `eval`
      settings; the infer stage passes the live `eval` section).
    mesh: optional device mesh; batches are sharded over it.
  """

  def __init__(self, trained: trained_model.TrainedModel,
               decoding: trained_model.Decoding | None = None, *, mesh=None):
    cfg = trained.trained_config
    self.trained = trained
    self.bundle = trained.bundle
    self.catalog = trained.catalog
    self.builder = trained.builder
    self.max_rec = int(cfg.data.max_rec_his_len)
    self.max_src = int(cfg.data.max_src_his_len)
    self.ranker = trained.ranker(decoding, mesh=mesh)
    self.max_query_chars = QUERY_CHARS_PER_TOKEN * self.ranker.max_source_len
    self._index = {str(a): i for i, a in enumerate(self.catalog.item_ids)}

  @classmethod
  def load(cls, workdir: str | pathlib.Path, which: str = "best", *, mesh=None,
           decoding: trained_model.Decoding | None = None) -> "GenSAR":
    """Loads the trained model of a workdir (its `train` and `data` stages).

    Args:
      workdir: the pipeline's workdir.
      which: "best" (best validation) or "latest" checkpoint.
      mesh: a device mesh, or None for one device ("auto": every device).
      decoding: as in `GenSAR`.
    """
    workdir = pathlib.Path(workdir)
    return cls.from_dirs(workdir / "train", workdir / "data", which, mesh=mesh,
                         decoding=decoding)

  @classmethod
  def from_dirs(cls, train_dir: str | pathlib.Path, data_dir: str | pathlib.Path,
                which: str = "best", *, mesh=None,
                decoding: trained_model.Decoding | None = None) -> "GenSAR":
    """Loads a trained model from its train and data stage directories (as `load`)."""
    trained = trained_model.TrainedModel.load(train_dir, data_dir, which)
    if mesh == "auto":
      mesh = sharding.make_mesh(trained.trained_config.mesh.data_axis)
    return cls(trained, decoding, mesh=mesh)

  @property
  def beam_size(self) -> int:
    return self.ranker.beam_size

  # ------------------------------------------------------------------ requests
  def item_index(self, item_id: str, where: str | None = None) -> int:
    """The catalog index of an item id; RequestError when it is unknown or not text
    (its message starts with `where`, e.g. "history entry 2", when given)."""
    field, at = (where.split()[0], f"{where}: ") if where else ("item", "")
    if not isinstance(item_id, str):
      raise RequestError(f"{at}an item id must be text, got {show(item_id)}", field)
    try:
      return self._index[str(item_id)]
    except KeyError:
      raise RequestError(f"{at}unknown item id {show(item_id)}", field) from None

  def query_text(self, query: str, what: str, notes: list[str]) -> str:
    """The query as the model reads it: its first `max_query_tokens` words, at most
    `max_query_chars` characters; a note is added to `notes` for each cut."""
    words = query.split()
    limit = self.builder.max_query_words
    if len(words) > limit:
      notes.append(f"{what} truncated to its first {limit} of {len(words):,} words")
      words = words[:limit]
    text = " ".join(words)
    if len(text) > self.max_query_chars:
      notes.append(f"{what} truncated to its first {self.max_query_chars:,} of "
                   f"{len(text):,} characters")
      text = text[:self.max_query_chars]
    return text

  def history_events(self, history: Sequence[Sequence]) -> tuple[list[tuple], list[str]]:
    """Validates a history and keeps what the model reads; returns (events, notes).

    Raises RequestError naming the (1-based) history entry at fault.
    """
    if not isinstance(history, (list, tuple)):
      raise RequestError(f"history must be a list of events, got {show(history)}", "history")
    events = []
    for n, event in enumerate(history, 1):
      where = f"history entry {n}"
      if not isinstance(event, (list, tuple)) or not event or not isinstance(event[0], str):
        raise RequestError(f"{where} must be ['rec', item_id] or ['search', query, item_id], "
                           f"got {show(event)}", "history")
      kind = event[0]
      if kind == "rec" and len(event) == 2:
        events.append(("rec", self.item_index(event[1], where)))
      elif kind == "search" and len(event) == 3:
        if not isinstance(event[1], str) or not event[1].strip():
          raise RequestError(f"{where}: the query must be non-empty text, got {show(event[1])}",
                             "history")
        events.append(("search", event[1], self.item_index(event[2], where), n))
      else:
        raise RequestError(f"{where} must be ['rec', item_id] or ['search', query, item_id], "
                           f"got {show(event)}", "history")
    rec_at = [i for i, e in enumerate(events) if e[0] == "rec"]
    src_at = [i for i, e in enumerate(events) if e[0] == "search"]
    keep = sorted(_keep_last(rec_at, self.max_rec) + _keep_last(src_at, self.max_src))
    notes = []
    cut = []
    if len(rec_at) > self.max_rec:
      cut.append(f"the last {self.max_rec} of {len(rec_at):,} recommendation events")
    if len(src_at) > self.max_src:
      cut.append(f"the last {self.max_src} of {len(src_at):,} searches")
    if cut:
      notes.append(f"history truncated to the model's window: kept {' and '.join(cut)}")
    kept = []
    for i in keep:
      e = events[i]
      if e[0] == "search":
        e = ("search", self.query_text(e[1], f"history entry {e[3]}: query", notes), e[2])
      kept.append(e)
    return kept, notes

  def _prompt(self, task: str, history, query) -> tuple[object, list[str]]:
    """The decoding prompt of one request and its notes (RequestError when it is bad)."""
    events, notes = self.history_events(history)
    text = None
    if task == "search":
      if not isinstance(query, str) or not query.strip():
        raise RequestError(f"query must be non-empty text, got {show(query)}", "query")
      text = self.query_text(query, "query", notes)
    return self.builder.prompt(task, self.builder.history_entries(events), text), notes

  def _candidates(self, candidates) -> list[int]:
    if isinstance(candidates, np.ndarray) and candidates.ndim == 1:
      candidates = candidates.tolist()
    if not isinstance(candidates, (list, tuple)) or not candidates:
      raise RequestError(f"candidates must be a non-empty list of item ids, got "
                         f"{show(candidates)}", "candidates")
    return [self.item_index(c, f"candidates entry {n}") for n, c in enumerate(candidates, 1)]

  def _check_k(self, k) -> None:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
      raise RequestError(f"k must be an integer, got {show(k)}", "k")
    if not 1 <= k <= self.beam_size:
      raise RequestError(f"k must be between 1 and the beam size {self.beam_size}, got {int(k)}",
                         "k")

  def encoder_notes(self, prompts: Sequence) -> list[list[str]]:
    """Per prompt, a note when it is longer than the encoder's `max_source_len` tokens
    (the same cut the ranker makes: oldest history entries first)."""
    limit = self.ranker.max_source_len
    dropped = self.ranker.tokenizer.encode_prompts(prompts, limit)[1]
    notes = []
    for p, d in zip(prompts, dropped):
      entries = len(getattr(p, "entries", ()))
      if d > 0:
        notes.append([f"prompt truncated to the encoder's {limit} tokens: dropped the oldest "
                      f"{d} of {entries} history entries"])
      elif d < 0:
        dropped_text = (f"dropped all {entries} history entries and cut" if entries
                        else "cut")
        notes.append([f"prompt truncated to the encoder's {limit} tokens: {dropped_text} "
                      f"its start (the model reads its last {limit - 1} tokens)"])
      else:
        notes.append([])
    return notes

  def _answer(self, task: str, prompts: list, k: int,
              candidates: Sequence[list[int] | None]) -> list[list[Hit]]:
    """Top-k hits per prompt; `candidates[i]` is a list of item indices or None."""
    results: list[list[Hit] | None] = [None] * len(prompts)
    groups = {"full": [i for i, c in enumerate(candidates) if c is None],
              "sampled": [i for i, c in enumerate(candidates) if c is not None]}
    for mode, idx in groups.items():
      if not idx:
        continue
      cands = None
      if mode == "sampled":
        lists = [candidates[i] for i in idx]
        width = max(len(c) for c in lists)
        cands = np.full((len(idx), width), -1, np.int64)
        for r, c in enumerate(lists):
          cands[r, :len(c)] = c
      with metrics_lib.scoring(f"the model of checkpoint step {self.bundle.step} on "
                               f"{task} requests"):
        ranked = self.ranker.rank_prompts(self.bundle.params, task,
                                          [prompts[i] for i in idx], cands, (mode,))[mode]
      for r, i in enumerate(idx):
        results[i] = [Hit(str(self.catalog.item_ids[it]), self.catalog.titles[it], float(s))
                      for it, s in zip(ranked[0][r][:k], ranked[1][r][:k]) if it >= 0]
    return results

  def _batch(self, task: str, histories, queries, k,
             candidates) -> list[Answer]:
    """Answers a batch; a bad request gets an `Answer` with `error`, the rest are decoded."""
    self._check_k(k)
    if not isinstance(histories, (list, tuple)):
      raise RequestError(f"histories must be a list (one history per request), got "
                         f"{show(histories)}", "history")
    n = len(histories)
    if queries is not None and len(queries) != n:
      raise RequestError(f"{len(queries)} queries for {n} histories", "query")
    if candidates is not None and len(candidates) != n:
      raise RequestError(f"{len(candidates)} candidate lists for {n} histories", "candidates")
    prompts, notes, cands, errors = [None] * n, [[] for _ in range(n)], [None] * n, [None] * n
    for i in range(n):
      try:
        prompts[i], notes[i] = self._prompt(task, histories[i],
                                            None if queries is None else queries[i])
        if candidates is not None and candidates[i] is not None:
          cands[i] = self._candidates(candidates[i])
      except RequestError as e:
        errors[i] = str(e)
    ok = [i for i in range(n) if errors[i] is None]
    if ok:
      for i, extra in zip(ok, self.encoder_notes([prompts[i] for i in ok])):
        notes[i] = notes[i] + extra
      hits = self._answer(task, [prompts[i] for i in ok], int(k), [cands[i] for i in ok])
    out = [Answer([], [], errors[i]) for i in range(n)]
    for i, h in zip(ok, hits if ok else []):
      out[i] = Answer(h, notes[i])
    return out

  def recommend(self, histories: Sequence[Sequence], k: int = 10,
                candidates: Sequence[Sequence[str] | None] | None = None) -> list[Answer]:
    """The next items for each history, one `Answer` per history.

    Args:
      histories: one history (list of events) per request.
      k: items per answer, 1 to the beam size.
      candidates: optional, per request a list of item ids to rank (None: the catalog).

    Returns:
      An `Answer` per request; a bad request's has `error` set and no hits. Raises
      RequestError only for a bad `k` or lists of different lengths.
    """
    return self._batch("recommendation", histories, None, k, candidates)

  def search(self, histories: Sequence[Sequence], queries: Sequence[str], k: int = 10,
             candidates: Sequence[Sequence[str] | None] | None = None) -> list[Answer]:
    """The items each user will click for their query, one `Answer` per request.

    As `recommend`, with one query (non-empty text) per history.
    """
    if isinstance(queries, np.ndarray) and queries.ndim == 1:
      queries = queries.tolist()
    if not isinstance(queries, (list, tuple)):
      raise RequestError(f"queries must be a list (one query per request), got {show(queries)}",
                         "query")
    return self._batch("search", histories, queries, k, candidates)

