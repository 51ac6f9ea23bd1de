"""Prompts with a droppable middle, and the one encoder that fits them to a token limit.

Every encoder input of the GenSAR model (training examples, validation, evaluation and
inference prompts) is a `Prompt`: a fixed `head` and `tail` around a list of `entries`
(history events, or the words of an item text). `encode` turns prompts into token ids
of at most `max_len` tokens (eos included) with one rule, the same everywhere:

1. A prompt that fits is encoded whole (exactly the tokens of its full text).
2. An over-long prompt loses whole entries from its `drop` side first: for a history,
   the oldest events (`drop="oldest"`); for an item text, its last words
   (`drop="last"`). The instruction's end, the query and the closing behaviour token
   sit in `head`/`tail` and are never dropped.
3. If head and tail alone are still too long (a pathological instruction), the tokens
   are cut from the front, so the end of the prompt (behaviour token) survives.

`Prompt.text` is the full text; `str(prompt)` gives the same.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

DROP_SIDES = ("oldest", "last")


@dataclasses.dataclass(frozen=True)
class Prompt:
  """An encoder input: `head + sep.join(entries) + tail`.

  Attributes:
    head: text before the entries.
    entries: the droppable pieces, in reading order.
    tail: text after the entries.
    sep: what joins the entries.
    drop: which entries go first when the prompt is too long: "oldest" (the first
      ones, e.g. history events) or "last" (the last ones, e.g. words of a text).
  """

  head: str
  entries: tuple[str, ...] = ()
  tail: str = ""
  sep: str = "; "
  drop: str = "oldest"

  def __post_init__(self):
    if self.drop not in DROP_SIDES:
      raise ValueError(f"drop must be one of {DROP_SIDES}, got {self.drop!r}")

  def keeping(self, n: int) -> str:
    """The text with only `n` entries kept (the rest dropped from the `drop` side)."""
    n = max(0, min(int(n), len(self.entries)))
    kept = self.entries[len(self.entries) - n:] if self.drop == "oldest" else self.entries[:n]
    return f"{self.head}{self.sep.join(kept)}{self.tail}"

  @property
  def text(self) -> str:
    """The full text."""
    return self.keeping(len(self.entries))

  def __str__(self) -> str:
    return self.text

  @classmethod
  def around(cls, template: str, field: str, entries: Sequence[str], *, sep: str = "; ",
             drop: str = "oldest", suffix: str = "", **fields) -> "Prompt":
    """Splits `template` at `{field}`; the other `{...}` fields are filled from `fields`.

    Args:
      template: e.g. "History: {history}. Query: {query}."
      field: the placeholder that holds the entries, e.g. "history".
      entries: its pieces.
      sep, drop: as in `Prompt`.
      suffix: appended to the tail (e.g. " <S_I>").
      fields: values of the other placeholders.
    """
    marker = "{" + field + "}"
    if template.count(marker) != 1:
      raise ValueError(f"template must contain {marker} exactly once: {template!r}")
    head, tail = template.split(marker)
    return cls(head.format(**fields), tuple(entries), tail.format(**fields) + suffix, sep, drop)


EncodeFn = Callable[[list[str]], list[list[int]]]  # texts -> token ids (no eos)


def encode(encode_texts: EncodeFn, prompts: Sequence[Prompt | str], max_len: int,
           eos_id: int) -> tuple[list[list[int]], list[int]]:
  """Token ids of every prompt, at most `max_len` tokens each (eos included).

  Args:
    encode_texts: the tokenizer's batch encoder (no special tokens added).
    prompts: `Prompt`s (a plain string is a prompt without entries).
    max_len: the token limit, eos included.
    eos_id: appended to every sequence.

  Returns:
    (ids per prompt, entries dropped per prompt (0 when it fit; -1 when even head and
    tail had to be cut)).
  """
  if max_len < 2:
    raise ValueError(f"max_len must be >= 2, got {max_len}")
  prompts = [p if isinstance(p, Prompt) else Prompt(str(p)) for p in prompts]
  keep = max_len - 1
  ids = encode_texts([p.text for p in prompts])
  dropped = [0] * len(prompts)
  for i, p in enumerate(prompts):
    if len(ids[i]) <= keep:
      continue
    # Largest number of entries that fits (the token count grows with entries kept).
    lo, hi, best = 0, len(p.entries) - 1, None
    while lo <= hi:
      mid = (lo + hi) // 2
      cand = encode_texts([p.keeping(mid)])[0]
      if len(cand) <= keep:
        best, lo = (mid, cand), mid + 1
      else:
        hi = mid - 1
    if best is None:
      ids[i] = encode_texts([p.keeping(0)])[0][-keep:]
      dropped[i] = -1
    else:
      ids[i] = best[1]
      dropped[i] = len(p.entries) - best[0]
  return [list(x) + [eos_id] for x in ids], dropped
