"""The GenSAR training tasks as text (docs/design.md §4): instructions, responses, the mixture.

Items are written `<R_I>` + collaborative identifier in a recommendation context and
`<S_I>` + semantic identifier in a search context; a query is `<S_Q>` + its words.
A user's history is the row's merged entries, oldest first, joined with "; " (a search
session is its query, then its item). Sources are `gensar_jax.prompts.Prompt`s: an
over-long one loses its oldest history events first, never its query or behaviour token. With
`tasks_config.behaviour_tokens = False` every behaviour token disappears (history,
instructions and responses): the ablation.

The instructions of the behaviour tasks end with the behaviour token of what is to be
predicted (`<R_I>`, `<S_I>` or `<S_Q>`), exactly like the decoding prompts (`prompt`):
the paper appends that token at inference to pick the task (its Fig. 3).

Tasks (names used in `config.tasks.shares`):
  nrip:    history -> `<R_I>` + collaborative id       (recommendation training rows)
  nsip:    history + current query -> `<S_I>` + semantic id   (search training rows)
  nsqp:    history -> `<S_Q>` + query words            (search training rows)
  adhoc:   pseudo-query -> `<S_I>` + semantic id        (doc2query output, no history)
  desc2id: item text -> identifier, no behaviour token (half semantic, half collab.)
  id2desc: identifier -> item text, no behaviour token (half semantic, half collab.)

Length limits are applied to words before tokenisation: a query keeps its first
`max_query_tokens` words and an item text its first `max_text_tokens` words. Every
word is at least one token, so a text within the token limit is never cut; a text
of many rare words may still exceed it and is then cut by the encoder-input limit.

Only the rows given to `epoch_examples` are read (the training rows), so no
validation or test target can reach a training input or response.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

from gensar_jax import prompts as prompts_lib
from gensar_jax import task_kinds
from gensar_jax import tokens
from gensar_jax.data import schema
from gensar_jax.identifiers import table as id_table

TASK_NAMES = ("nrip", "nsip", "nsqp", "adhoc", "desc2id", "id2desc")

# Instruction phrasings per task ({history}, {query}, {text}, {identifier} are filled).
PHRASINGS: dict[str, tuple[str, ...]] = {
    "nrip": (
        "Below is the user's interaction history: {history}. Please recommend the next item the user is likely to click.",
        "Here is what the user did so far: {history}. Which item will the user click next?",
        "Given this sequence of searches and clicks: {history}. Predict the item the user wants next.",
        "User history: {history}. Recommend one item for this user.",
        "The user has interacted with the following: {history}. What should we recommend next?",
        "Based on the activity {history}, suggest the next item this user will engage with.",
        "Consider the user's past behaviour: {history}. Name the item to recommend.",
        "A shopper's recent actions are {history}. Which item fits them best next?",
        "History of the user: {history}. Output the next recommended item.",
        "From the interactions {history}, infer the user's next click.",
    ),
    "nsip": (
        "Below is the user's interaction history: {history}. The user now searches for {query}. Please predict the item the user will click.",
        "Here is what the user did so far: {history}. Current search: {query}. Which item will the user choose?",
        "Given the sequence {history} and the new search {query}, find the item the user is looking for.",
        "User history: {history}. Query: {query}. Retrieve the matching item for this user.",
        "The user, whose past actions are {history}, issues the search {query}. Which item answers it?",
        "Search {query} from a user with history {history}. Return the relevant item.",
        "Consider the user's past behaviour: {history}. They type {query}. Name the item they will click.",
        "A shopper with recent actions {history} searches {query}. Which item do they want?",
        "History: {history}. Search request: {query}. Output the item to show first.",
        "For the query {query} and the interactions {history}, predict the clicked item.",
    ),
    "nsqp": (
        "Below is the user's interaction history: {history}. Please predict the next query the user might want to search.",
        "Here is what the user did so far: {history}. What will the user search for next?",
        "Given this sequence of searches and clicks: {history}. Guess the user's next search.",
        "User history: {history}. Suggest the query this user is about to type.",
        "The user has interacted with the following: {history}. Which search comes next?",
        "Based on the activity {history}, predict the user's next search request.",
        "Consider the user's past behaviour: {history}. Write the next query they will enter.",
        "A shopper's recent actions are {history}. What are they going to look for next?",
        "History of the user: {history}. Output the next search query.",
        "From the interactions {history}, infer what the user will search next.",
    ),
    "adhoc": (
        "The user searches for {query}. Please predict the item the user will click.",
        "Search request: {query}. Which item matches it?",
        "Find the item that answers the search {query}.",
        "Query: {query}. Retrieve the most relevant item.",
        "A shopper types {query}. Which item are they looking for?",
        "Return the item that best fits the search {query}.",
        "Given the query {query}, name the matching item.",
        "Someone searched {query}. Output the item to show first.",
        "Which item would satisfy the search {query}?",
        "For the search {query}, predict the clicked item.",
    ),
    "desc2id": (
        'Using the provided description "{text}", predict the corresponding item.',
        'Which item is described as "{text}"?',
        'Give the identifier of the item: "{text}".',
        'Item description: "{text}". Output its identifier.',
        'Find the item whose text is "{text}".',
        'Map this description to its item: "{text}".',
        'The following describes one item: "{text}". Which one is it?',
        'Name the item that matches "{text}".',
        'Return the identifier for the product "{text}".',
        'Description: "{text}". What is the item?',
    ),
    "id2desc": (
        "Please provide a description for the item {identifier}.",
        "Describe the item {identifier}.",
        "What is the item {identifier}?",
        "Write the title and description of {identifier}.",
        "Tell me about the item {identifier}.",
        "Give the text of the product {identifier}.",
        "Which product does {identifier} denote? Describe it.",
        "Explain what item {identifier} is.",
        "Output the description of item {identifier}.",
        "The item {identifier} is described as follows:",
    ),
}
MAX_PHRASINGS = min(len(p) for p in PHRASINGS.values())

# `tasks.prompt_style = "compact"` (a departure from the paper, issue 24): no instruction
# words; what is left (history entries, query, text, identifier and the closing behaviour
# token) tells the tasks apart. One template per task, filled like `PHRASINGS`.
COMPACT: dict[str, str] = {
    "nrip": "{history}",
    "nsip": "{history}; {query}",
    "nsqp": "{history}",
    "adhoc": "{query}",
    "desc2id": "{text}",
    "id2desc": "{identifier}",
}
PROMPT_STYLES = ("instruction", "compact")
# The paper's style; also what configs saved before `tasks.prompt_style` existed mean.
DEFAULT_PROMPT_STYLE = "instruction"
# The warm start's examples (`TaskBuilder.warm_start_examples`), as `Example.task`.
WARM_START_TASK = "warm_start"


@dataclasses.dataclass(frozen=True)
class Example:
  """One training example: the task it comes from, instruction (a `Prompt`, encoded
  with `gensar_jax.prompts.encode`) and response text."""

  task: str
  source: prompts_lib.Prompt
  target: str


def encode_examples(tokenizer, examples: Sequence[Example], max_source_len: int,
                    max_target_len: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """(source ids, target ids) of examples as training reads them: int32, eos included,
  sources fitted to `max_source_len` by `Prompt`'s rule, targets cut at `max_target_len`
  (`tokenizer`: a `gensar_jax.model.tokenizer.Tokenizer`)."""
  src, _ = tokenizer.encode_prompts([e.source for e in examples], max_source_len)
  tgt = tokenizer.encode_batch([e.target for e in examples], max_target_len)
  return ([np.asarray(s, np.int32) for s in src], [np.asarray(t, np.int32) for t in tgt])


@dataclasses.dataclass(frozen=True)
class EpochEncoder:
  """`make_epoch` of the trainer (`loop.train`): epoch -> (source ids, target ids) of
  `builder.epoch_examples` as `encode_examples` writes them. A picklable object rather
  than a closure, so worker processes can build epochs ahead (`train.epoch_workers`)."""

  builder: "TaskBuilder"
  tokenizer: object  # A `gensar_jax.model.tokenizer.Tokenizer`.
  train_rows: Mapping[str, Mapping[str, np.ndarray]]
  seed: int
  max_source_len: int
  max_target_len: int

  def __call__(self, epoch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    examples = self.builder.epoch_examples(self.train_rows, self.seed, epoch)
    return encode_examples(self.tokenizer, examples, self.max_source_len, self.max_target_len)


def _truncate_words(text: str, max_words: int) -> str:
  words = text.split()
  return " ".join(words[:max_words])


def check_shares(shares: Mapping[str, float]) -> dict[str, float]:
  """Every task's share from `config.tasks.shares` (absent = 0); raises on bad entries."""
  unknown = sorted(set(shares) - set(TASK_NAMES))
  if unknown:
    raise ValueError(f"unknown task(s) {unknown} in tasks.shares; known: {list(TASK_NAMES)}")
  out = {t: float(shares.get(t, 0.0)) for t in TASK_NAMES}
  bad = {t: c for t, c in out.items() if not c >= 0.0}
  if bad:
    raise ValueError(f"tasks.shares must be >= 0 (0 = task off): {bad}")
  return out


def run_size(train_section) -> dict[str, int | float]:
  """The training run's size as `TaskBuilder` takes it (`run_examples`, `run_epochs`)
  from a `config.train` section: steps x batch when `train.steps` is set, else its epochs."""
  steps = int(train_section.steps or 0)
  if steps > 0:
    return {"run_examples": steps * int(train_section.batch_size), "run_epochs": 0.0}
  return {"run_examples": 0, "run_epochs": float(train_section.epochs)}


def counts_for_passes(counts: Mapping[str, int], available: Mapping[str, int],
                      min_passes: float, *, run_examples: int = 0,
                      run_epochs: float = 0.0) -> dict[str, int]:
  """Per-epoch example counts raised so that the run's whole epochs show every task that
  is on at least `min_passes` x the rows it draws from (`tasks.min_passes`; issue 24).

  With `run_examples` (steps x batch) the number of epochs depends on the counts, so
  both are solved together: counts only grow, to `ceil(min_passes x rows / whole
  epochs)`, capped at the rows; `run_epochs` fixes the epochs instead. Only whole epochs
  count (the last one may end partway). A task that is off (count 0) stays off; when the
  run is too short for every task's passes, every count ends at its task's rows (the
  train stage warns from `task_passes`).
  """
  if run_examples <= 0 and run_epochs <= 0:
    raise ValueError("tasks.min_passes needs the run's size (run_examples or run_epochs)")
  out = dict(counts)
  while True:
    total = sum(out.values())
    if total == 0:
      return out
    epochs = run_examples / total if run_examples > 0 else run_epochs
    whole = max(1, math.floor(epochs))
    raised = {t: c if c == 0 else min(available[t], max(c, math.ceil(
        min_passes * available[t] / whole))) for t, c in out.items()}
    if raised == out:  # Counts only grow and are capped: this is reached.
      return out
    out = raised


def _pick_cycle(seed: int, task_index: int, epoch: int, n_available: int,
                count: int) -> np.ndarray:
  """`count` of `n_available` rows for one epoch, sorted: epoch e takes the e-th slice of
  one fixed order per run and task (wrapping around), so e epochs of `count` rows see
  min(n_available, e x count) distinct rows (`tasks.min_passes`)."""
  if count <= 0 or n_available == 0:
    return np.zeros((0,), np.int64)
  order = np.random.default_rng([int(seed), int(task_index), 104729]).permutation(n_available)
  start = (int(epoch) * count) % n_available
  return np.sort(order[(start + np.arange(min(count, n_available))) % n_available])


class TaskBuilder:
  """Writes rows and items as task text and builds each epoch's example mixture.

  Args:
    catalog: the data stage's items and queries.
    identifiers: both identifier tables, aligned with the catalog's items.
    tasks_config: the `config.tasks` section (behaviour_tokens, num_phrasings,
      max_query_tokens, max_text_tokens, shares, min_passes).
    pseudo_queries: optional, per item a list of doc2query query strings (enables
      the ad-hoc search task).
    run_examples: the training run's examples (steps x batch), or 0 when the run is
      counted in epochs; with `run_epochs`, what `tasks.min_passes` is met over.
    run_epochs: the run's epochs when `run_examples` is 0.
  """

  def __init__(
      self,
      catalog: schema.Catalog,
      identifiers: id_table.Identifiers,
      tasks_config,
      *,
      pseudo_queries: Sequence[Sequence[str]] | None = None,
      run_examples: int = 0,
      run_epochs: float = 0.0,
  ):
    if len(identifiers.item_ids) != catalog.num_items or np.any(
        np.asarray(identifiers.item_ids, dtype=str) != np.asarray(catalog.item_ids, dtype=str)
    ):
      raise ValueError("identifier tables and catalog list different items (or a different order)")
    if pseudo_queries is not None and len(pseudo_queries) != catalog.num_items:
      raise ValueError(
          f"pseudo_queries has {len(pseudo_queries)} entries for {catalog.num_items} items"
      )
    self.catalog = catalog
    self.identifiers = identifiers
    self.behaviour_tokens = bool(tasks_config.behaviour_tokens)
    self.num_phrasings = int(tasks_config.num_phrasings)
    if not 1 <= self.num_phrasings <= MAX_PHRASINGS:
      raise ValueError(f"tasks.num_phrasings must be in [1, {MAX_PHRASINGS}]")
    self.prompt_style = str(tasks_config.get("prompt_style", DEFAULT_PROMPT_STYLE))
    if self.prompt_style not in PROMPT_STYLES:
      raise ValueError(f"tasks.prompt_style must be one of {PROMPT_STYLES}, "
                       f"got {self.prompt_style!r}")
    if self.prompt_style == "compact" and not self.behaviour_tokens:
      raise ValueError("tasks.prompt_style='compact' needs behaviour tokens: without "
                       "instruction words they are what tells the tasks apart")
    # Configs saved before the option read as 0 (it matters only for training).
    self.nrip_popularity_power = float(tasks_config.get("nrip_popularity_power", 0.0))
    if not self.nrip_popularity_power >= 0:
      raise ValueError("tasks.nrip_popularity_power must be >= 0")
    # Configs saved before the option read as 0 (the shares alone).
    self.min_passes = float(tasks_config.get("min_passes", 0.0))
    if not self.min_passes >= 0:
      raise ValueError("tasks.min_passes must be >= 0")
    self.run_examples, self.run_epochs = int(run_examples), float(run_epochs)
    self.max_query_words = int(tasks_config.max_query_tokens)
    self.max_text_words = int(tasks_config.max_text_tokens)
    self.shares = check_shares(dict(tasks_config.shares))
    self.pseudo_queries = pseudo_queries
    self._id_text = {  # {identifier kind: [N] identifier texts}
        kind: [tokens.identifier_text(t.level_names, c) for c in t.codes]
        for kind, t in ((k, getattr(identifiers, k)) for k in task_kinds.KINDS)}
    self._queries = [_truncate_words(q, self.max_query_words) for q in catalog.queries]
    self._texts = [
        _truncate_words(catalog.item_text(i), self.max_text_words)
        for i in range(catalog.num_items)
    ]
    self._items_with_text = np.array([i for i, t in enumerate(self._texts) if t], dtype=np.int64)

  # ------------------------------------------------------------------ pieces of text
  def _b(self, token: str) -> str:
    return token if self.behaviour_tokens else ""

  def rec_item(self, item: int) -> str:
    """An item in a recommendation context: `<R_I>` + collaborative identifier."""
    return self.target_text("recommendation", item)

  def search_item(self, item: int) -> str:
    """An item in a search context: `<S_I>` + semantic identifier."""
    return self.target_text("search", item)

  def query(self, q: int | str) -> str:
    """A query: `<S_Q>` + its words (at most `max_query_tokens` words)."""
    words = self._queries[q] if isinstance(q, (int, np.integer)) else _truncate_words(
        q, self.max_query_words
    )
    return f"{tokens.SEARCH_QUERY} {words}" if self.behaviour_tokens else words

  def history_entries(self, events: Sequence[tuple]) -> list[str]:
    """History entries, oldest first: one per event (a search session is its query,
    then its item, as one entry, so truncation drops whole sessions).

    Args:
      events: ("rec", item index) or ("search", query index or text, item index).
    """
    parts = []
    for event in events:
      if event[0] == "rec":
        parts.append(self.rec_item(int(event[1])))
      else:
        parts.append(f"{self.query(event[1])}; {self.search_item(int(event[2]))}")
    return parts

  def row_history(self, kind_H, item_H, query_H) -> list[str]:
    """A row's history entries, oldest first (padding skipped)."""
    events = []
    for kind, item, q in zip(np.asarray(kind_H), np.asarray(item_H), np.asarray(query_H)):
      if kind == schema.KIND_REC:
        events.append(("rec", int(item)))
      elif kind == schema.KIND_SEARCH:
        events.append(("search", int(q), int(item)))
    return self.history_entries(events)

  def target_text(self, task: str, item: int) -> str:
    """The response for an item of a task ("recommendation" / "search"): token + id
    (`gensar_jax.task_kinds`)."""
    if task not in task_kinds.TASK_KINDS:
      raise ValueError(f"unknown task {task!r}")
    kind, token = task_kinds.TASK_KINDS[task]
    return self._b(token) + self._id_text[kind][int(item)]

  def eval_source(self, task: str, row: Mapping[str, np.ndarray]) -> prompts_lib.Prompt:
    """The decoding prompt of one validation/test row (docs/design.md §6, paper Fig. 3).

    The first phrasing of NRIP (recommendation) or NSIP (search: history and the
    row's query) followed by the behaviour token that selects the task: `<R_I>` or
    `<S_I>` (nothing when behaviour tokens are off).
    """
    hist = self.row_history(row["history_kind"], row["history_item"], row["history_query"])
    return self.prompt(task, hist, int(row["query"]) if task == "search" else None)

  def prompt(self, task: str, history: Sequence[str],
             query: int | str | None = None) -> prompts_lib.Prompt:
    """A decoding prompt from history entries (and, for search, the current query).

    Args:
      task: "recommendation" or "search".
      history: `history_entries` / `row_history` output, oldest first.
      query: the search query (index into the catalog's queries, or text).
    """
    if task == "recommendation":
      return self._history_prompt("nrip", 0, history, task_kinds.ITEM_TOKEN_OF_TASK[task])
    if task == "search":
      if query is None:
        raise ValueError("a search prompt needs a query")
      return self._history_prompt("nsip", 0, history, task_kinds.ITEM_TOKEN_OF_TASK[task],
                                  query=self.query(query))
    raise ValueError(f"unknown task {task!r}")

  def template(self, task: str, phrasing: int) -> str:
    """The instruction template of a task: phrasing `phrasing`, or the compact one."""
    return COMPACT[task] if self.prompt_style == "compact" else PHRASINGS[task][phrasing]

  def _history_prompt(self, task: str, phrasing: int, history: Sequence[str], behaviour: str,
                      **fields) -> prompts_lib.Prompt:
    """Phrasing `phrasing` of a behaviour task around its history, ending with `behaviour`."""
    return prompts_lib.Prompt.around(self.template(task, phrasing), "history", history,
                                     suffix=self._suffix(behaviour), **fields)

  def _suffix(self, behaviour: str) -> str:
    return f" {behaviour}" if self.behaviour_tokens else ""

  def ask(self, instruction: str, behaviour: str) -> str:
    """An instruction ending with the behaviour token of what is to be predicted.

    The paper appends `<R_I>` / `<S_I>` at inference to select the task (Fig. 3); the
    training instructions of the behaviour tasks (NRIP, NSIP, NSQP, ad-hoc) end the same
    way, so training and decoding prompts have one shape. Nothing is appended when
    behaviour tokens are off.
    """
    return f"{instruction}{self._suffix(behaviour)}"

  def eval_sources(self, task: str, rows: Mapping[str, np.ndarray]) -> list[prompts_lib.Prompt]:
    """`eval_source` for every row of stacked rows (as `load_rows` returns them)."""
    n = len(rows["item"])
    return [self.eval_source(task, {k: v[r] for k, v in rows.items()}) for r in range(n)]

  # --------------------------------------------------------------------- the mixture
  def _phrasing(self, rng: np.random.Generator) -> int:
    return int(rng.integers(self.num_phrasings))

  def _phrase(self, task: str, rng: np.random.Generator, **fields) -> str:
    return self.template(task, self._phrasing(rng)).format(**fields)

  @staticmethod
  def _pick(rng: np.random.Generator, n_available: int, count: int) -> np.ndarray:
    """Indices of `count` rows (all, in order, when count >= n_available), sampled
    without replacement, sorted."""
    if count <= 0 or n_available == 0:
      return np.zeros((0,), np.int64)
    if count >= n_available:
      return np.arange(n_available)
    return np.sort(rng.choice(n_available, size=count, replace=False))

  def _pick_nrip(self, rng: np.random.Generator, rec: Mapping[str, np.ndarray],
                 count: int) -> np.ndarray:
    """The epoch's NRIP rows: `_pick` (uniform, without replacement), or with
    `tasks.nrip_popularity_power` = b > 0, `count` rows drawn with replacement, row r with
    probability proportional to n(item_r)^-b, n = the item's count among the NRIP training
    targets: b = 1 makes every target item equally frequent in expectation, b = 0 is the
    paper's uniform rows (a departure, issue 24: the target distribution flattened)."""
    b = self.nrip_popularity_power
    if b == 0 or count <= 0 or not len(rec["item"]):
      return self._pick(rng, len(rec["item"]), count)
    items = np.asarray(rec["item"], np.int64)
    weight = schema.target_counts(rec, int(items.max()) + 1).astype(np.float64)[items] ** -b
    return np.sort(rng.choice(len(items), size=count, replace=True, p=weight / weight.sum()))

  def available(self, train_rows: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, int]:
    """Rows/items each task can draw from."""
    n_adhoc = 0
    if self.pseudo_queries is not None:
      n_adhoc = sum(1 for qs in self.pseudo_queries if len(qs))
    return {
        "nrip": len(train_rows["recommendation"]["item"]),
        "nsip": len(train_rows["search"]["item"]),
        "nsqp": len(train_rows["search"]["item"]),
        "adhoc": n_adhoc,
        "desc2id": len(self._items_with_text),
        "id2desc": len(self._items_with_text),
    }

  def epoch_counts(self, train_rows) -> dict[str, int]:
    """Examples per task in every epoch: share x NRIP training rows, capped at what
    the task can draw from (the mixture is a proportion, so it carries across
    categories of any size); with `tasks.min_passes` = m > 0, raised by
    `counts_for_passes` so the run's whole epochs cover m x each task's rows."""
    avail = self.available(train_rows)
    counts = {t: min(avail[t], int(round(share * avail["nrip"])))
              for t, share in self.shares.items()}
    if self.min_passes > 0:
      counts = counts_for_passes(counts, avail, self.min_passes,
                                 run_examples=self.run_examples, run_epochs=self.run_epochs)
    return counts

  def epoch_examples(
      self, train_rows: Mapping[str, Mapping[str, np.ndarray]], seed: int, epoch: int
  ) -> list[Example]:
    """The example list of one epoch, in task order (the batcher shuffles).

    Args:
      train_rows: {"recommendation": rows, "search": rows}, the TRAINING rows only.
      seed: the run's seed.
      epoch: epoch number; rows, phrasings and identifier kinds are re-sampled per epoch.

    Returns:
      `Example`s, `epoch_counts` of each task (rows sampled without replacement).
    """
    rng = np.random.default_rng([int(seed), int(epoch), 7919])
    out: list[Example] = []
    rec, srch = train_rows["recommendation"], train_rows["search"]
    avail = self.available(train_rows)
    counts = self.epoch_counts(train_rows)

    def pick(task: str, n_available: int, count: int) -> np.ndarray:
      if self.min_passes > 0:  # Consecutive epochs take consecutive slices of one order.
        return _pick_cycle(seed, TASK_NAMES.index(task), epoch, n_available, count)
      return self._pick(rng, n_available, count)

    def hist(rows, r):
      return self.row_history(rows["history_kind"][r], rows["history_item"][r],
                              rows["history_query"][r])

    for r in self._pick_nrip(rng, rec, counts["nrip"]):
      src = self._history_prompt("nrip", self._phrasing(rng), hist(rec, r), tokens.REC_ITEM)
      out.append(Example("nrip", src, self.rec_item(rec["item"][r])))
    for r in pick("nsip", avail["nsip"], counts["nsip"]):
      src = self._history_prompt("nsip", self._phrasing(rng), hist(srch, r), tokens.SEARCH_ITEM,
                                 query=self.query(int(srch["query"][r])))
      out.append(Example("nsip", src, self.search_item(srch["item"][r])))
    for r in pick("nsqp", avail["nsqp"], counts["nsqp"]):
      src = self._history_prompt("nsqp", self._phrasing(rng), hist(srch, r),
                                 tokens.SEARCH_QUERY)
      out.append(Example("nsqp", src, self.query(int(srch["query"][r]))))
    if self.pseudo_queries is not None:
      with_q = [i for i, qs in enumerate(self.pseudo_queries) if len(qs)]
      for j in pick("adhoc", len(with_q), counts["adhoc"]):
        item = with_q[j]
        qs = self.pseudo_queries[item]
        q = self.query(str(qs[int(rng.integers(len(qs)))]))
        src = self.ask(self._phrase("adhoc", rng, query=q), tokens.SEARCH_ITEM)
        out.append(Example("adhoc", prompts_lib.Prompt(src), self.search_item(item)))
    for task in ("desc2id", "id2desc"):
      picked = self._items_with_text[pick(task, avail[task], counts[task])]
      # Half semantic, half collaborative identifiers (a random half each epoch).
      semantic = np.zeros(len(picked), bool)
      semantic[rng.permutation(len(picked))[: len(picked) // 2]] = True
      for item, sem in zip(picked, semantic):
        ident = self._id_text["semantic" if sem else "collaborative"][item]
        text = self._texts[item]
        if task == "desc2id":
          # An over-long description loses its last words, never the instruction.
          src = prompts_lib.Prompt.around(self.template(task, self._phrasing(rng)), "text",
                                          text.split(" "), sep=" ", drop="last")
          out.append(Example(task, src, ident))
        else:
          src = prompts_lib.Prompt(self._phrase(task, rng, identifier=ident))
          out.append(Example(task, src, text))
    return out

  def warm_start_examples(self, train_rows: Mapping[str, Mapping[str, np.ndarray]]
                          ) -> list[Example]:
    """The warm start's examples (`train.warm_start_steps`; issue 24): every NRIP training
    row as identifiers only, no instruction and no query words.

    Source: the row's history events as their items (`<R_I>` + collaborative identifier
    for a recommendation, `<S_I>` + semantic identifier for a search session's click),
    oldest first, then `<R_I>`; target: the row's item, `<R_I>` + collaborative
    identifier. Short inputs (about 5 tokens an event), so many passes in minutes: our
    stand-in for the authors' pretrained t5-small. The same every epoch (the batcher
    shuffles).
    """
    rec = train_rows["recommendation"]
    out = []
    for r in range(len(rec["item"])):
      entries = [self.rec_item(int(i)) if k == schema.KIND_REC else self.search_item(int(i))
                 for k, i in zip(rec["history_kind"][r], rec["history_item"][r])
                 if k in (schema.KIND_REC, schema.KIND_SEARCH)]
      src = prompts_lib.Prompt("", tuple(entries), self._suffix(tokens.REC_ITEM))
      out.append(Example(WARM_START_TASK, src, self.rec_item(rec["item"][r])))
    return out

  def tokenizer_texts(self) -> list[str]:
    """Natural-language text a dataset tokenizer should be trained on."""
    texts = [t for t in self._texts if t] + list(self._queries)
    for task in TASK_NAMES:
      texts.extend(p.format(history="", query="", text="", identifier="") for p in PHRASINGS[task])
    if self.pseudo_queries is not None:
      texts.extend(str(q) for qs in self.pseudo_queries for q in qs)
    return texts
