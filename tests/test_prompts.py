"""The one prompt encoder: whole when it fits, oldest history dropped first, end kept."""

import ml_collections
import pytest

from gensar_jax import prompts
from gensar_jax import tokens
from gensar_jax.model import tokenizer as tok_lib

EOS = 1


def _words(texts):
  """A fake tokenizer: one id per whitespace-separated word (ids from 10 up)."""
  return [[10 + len(w) for w in t.split()] for t in texts]


def test_prompt_text_and_keeping_from_either_side():
  p = prompts.Prompt("History: ", ("a", "b", "c"), ". Next? <R_I>")
  assert p.text == str(p) == "History: a; b; c. Next? <R_I>"
  assert p.keeping(2) == "History: b; c. Next? <R_I>"
  assert p.keeping(0) == "History: . Next? <R_I>"
  q = prompts.Prompt('Item "', ("w1", "w2", "w3"), '". Which?', sep=" ", drop="last")
  assert q.keeping(1) == 'Item "w1". Which?'
  with pytest.raises(ValueError):
    prompts.Prompt("x", drop="middle")


def test_around_splits_the_template_and_fills_the_other_fields():
  p = prompts.Prompt.around("Given {history} and the search {query}, find it.", "history",
                            ["x", "y"], suffix=" <S_I>", query="pens")
  assert (p.head, p.entries, p.tail) == ("Given ", ("x", "y"), " and the search pens, find it. <S_I>")
  with pytest.raises(ValueError):
    prompts.Prompt.around("no field here", "history", [])


def test_fitting_prompts_are_encoded_whole():
  p = prompts.Prompt("h ", ("a", "bb"), " t")
  ids, dropped = prompts.encode(_words, [p, "plain text"], max_len=10, eos_id=EOS)
  assert ids == [_words([p.text])[0] + [EOS], _words(["plain text"])[0] + [EOS]]
  assert dropped == [0, 0]


def test_over_long_history_drops_oldest_entries_and_keeps_query_and_behaviour_token():
  entries = [f"e{i} x x" for i in range(10)]  # 3 words each (the first merges with "; ")
  p = prompts.Prompt("User history: ", tuple(entries), " query: blue pens <S_I>")
  full = _words([p.text])[0]
  assert len(full) > 15
  ids, dropped = prompts.encode(_words, [p], max_len=16, eos_id=EOS)
  kept = len(entries) - dropped[0]
  assert ids[0] == _words([p.keeping(kept)])[0] + [EOS]
  assert len(ids[0]) <= 16
  # As many entries as fit: one more would not.
  assert len(_words([p.keeping(kept + 1)])[0]) > 15
  text = p.keeping(kept)
  assert text.endswith("query: blue pens <S_I>") and "e9" in text and "e0" not in text
  assert dropped[0] > 0


def test_head_and_tail_alone_too_long_keep_the_end():
  p = prompts.Prompt("a b c d e f g h", ("x",), " <R_I>")
  ids, dropped = prompts.encode(_words, [p], max_len=4, eos_id=EOS)
  assert ids[0] == _words(["f g h <R_I>"])[0][-3:] + [EOS]
  assert dropped == [-1]


def test_real_tokenizer_keeps_the_behaviour_token_of_an_over_long_history():
  texts = ["gel pen twelve pack", "recycled paper notebook", "Below is the history"] * 30
  cfg = ml_collections.ConfigDict(dict(pretrained_dir="", vocab_size=100))
  tok = tok_lib.build(cfg, texts, ("M1", "R1"), 8)
  history = [f"{tokens.REC_ITEM}{tokens.code_token('M1', i % 8)}{tokens.code_token('R1', i % 8)}"
             for i in range(40)]
  p = prompts.Prompt("Below is the history: ", tuple(history),
                     f". Please recommend. {tokens.REC_ITEM}")
  ids, dropped = tok.encode_prompts([p], 32)
  kept = len(history) - dropped[0]
  assert len(ids[0]) <= 32 and 0 < kept < len(history)
  assert len(tok.encode_batch([p.keeping(kept + 1)], 10_000)[0]) > 32
  assert ids[0][-2] == tok.token_id(tokens.REC_ITEM) and ids[0][-1] == tok.eos_id
  # The kept entries are the newest ones: the last history entry's codes are present.
  last = tok.token_id(tokens.code_token("R1", 39 % 8))
  assert last in ids[0]
  # The instruction's end is intact: the last tokens equal those of the full text
  # (which the old head-keeping cut of training lost).
  full = tok.encode_batch([p.text], 10_000)[0]
  assert ids[0][-6:] == full[-6:]
  assert tok.encode_batch([p.text], 32)[0][-6:] != full[-6:]
