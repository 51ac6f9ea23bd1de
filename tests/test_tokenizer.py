"""The GenSAR tokenizer: single-token identifiers, contiguous level ids, save/load."""

import json

import ml_collections
import numpy as np
import pytest
import tokenizers

from gensar_jax import tokens
from gensar_jax.model import tokenizer as tok_lib

LEVELS = ("M1", "M2", "S1", "S2", "R1", "R2")
K = 16
TEXTS = [
    "gel pen twelve pack with a soft grip", "recycled paper ruled notebook",
    "black ink cartridge for office printers", "mesh desk chair with lumbar support",
    "Below is the user's interaction history", "Please recommend the next item",
] * 50


def _tokenizer(vocab_size=120):
  cfg = ml_collections.ConfigDict(dict(pretrained_dir="", vocab_size=vocab_size))
  return tok_lib.build(cfg, TEXTS, LEVELS, K)


def test_special_ids_follow_t5_and_levels_are_contiguous():
  tok = _tokenizer()
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert tok.backend.token_to_id("<pad>") == 0 and tok.backend.token_to_id("</s>") == 1
  offsets = [tok.level_offsets[n] for n in LEVELS]
  assert offsets == sorted(offsets)
  assert np.all(np.diff(offsets) == K)
  for name in LEVELS:
    for code in (0, 7, K - 1):
      assert tok.token_id(tokens.code_token(name, code)) == tok.level_offsets[name] + code
  assert tok.vocab_size == tok.level_offsets["R2"] + K
  for b in tokens.BEHAVIOUR_TOKENS:
    assert tok.token_id(b) < tok.level_offsets["M1"]


def test_every_identifier_encodes_to_exactly_its_tokens_and_back():
  tok = _tokenizer()
  rng = np.random.default_rng(0)
  for _ in range(200):
    names = ("M1", "M2", "S1", "S2") if rng.random() < 0.5 else ("M1", "M2", "R1", "R2")
    codes = rng.integers(0, K, size=4)
    text = tokens.REC_ITEM + tokens.identifier_text(names, codes)
    ids = tok.encode(text, 64)
    want = [tok.token_id(tokens.REC_ITEM)] + [tok.level_offsets[n] + int(c)
                                               for n, c in zip(names, codes)]
    assert ids == want + [tok.eos_id]
    assert tok.decode(ids) == text


def test_identifiers_inside_text_stay_single_tokens():
  tok = _tokenizer()
  ident = tokens.identifier_text(("M1", "M2", "S1", "S2"), (3, 4, 5, 6))
  ids = tok.encode(f"history: {tokens.SEARCH_QUERY} gel pen; {tokens.SEARCH_ITEM}{ident}.", 64)
  code_ids = [tok.level_offsets[n] + c for n, c in zip(("M1", "M2", "S1", "S2"), (3, 4, 5, 6))]
  start = ids.index(tok.token_id(tokens.SEARCH_ITEM))
  assert ids[start + 1:start + 5] == code_ids
  assert tok.token_id(tokens.SEARCH_QUERY) in ids


def test_truncation_keeps_eos_and_decode_stops_at_eos():
  tok = _tokenizer()
  ids = tok.encode("gel pen twelve pack with a soft grip " * 20, 10)
  assert len(ids) == 10 and ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
  assert tok.decode([tok.token_id("<M1_3>"), tok.eos_id, tok.token_id("<M1_4>")]) == "<M1_3>"


def test_save_and_load_give_the_same_tokenizer(tmp_path):
  tok = _tokenizer()
  tok.save(tmp_path / "t")
  again = tok_lib.Tokenizer.load(tmp_path / "t")
  assert again.fingerprint() == tok.fingerprint()
  assert again.level_offsets == tok.level_offsets and again.codebook_size == K
  batch = ["gel pen <S_I><M1_1><M2_2><S1_3><S2_4>", "mesh chair"]
  assert again.encode_batch(batch, 32) == tok.encode_batch(batch, 32)


def test_pretrained_folder_is_used_and_extended(tmp_path):
  # A stand-in for a T5 tokenizer.json: a word-level model with T5's special ids.
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "gel": 3, "pen": 4, "paper": 5}
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
  backend.save(str(tmp_path / "tokenizer.json"))
  cfg = ml_collections.ConfigDict(dict(pretrained_dir=str(tmp_path), vocab_size=999))
  tok = tok_lib.build(cfg, [], ("M1", "S1"), 4)
  assert tok.encode("gel pen ink", 8) == [3, 4, 2, 1]
  assert tok.level_offsets == {"M1": 6 + 3, "S1": 6 + 3 + 4}
  assert tok.vocab_size == 6 + 3 + 8


def test_a_tokenizer_with_other_special_ids_is_rejected(tmp_path):
  vocab = {"<unk>": 0, "<pad>": 1, "</s>": 2}
  backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  with pytest.raises(ValueError, match="T5 convention"):
    tok_lib.add_gensar_tokens(backend, ("M1",), 4)
  (tmp_path / "x.json").write_text(json.dumps({}))
  with pytest.raises(FileNotFoundError):
    tok_lib.load_pretrained_backend(tmp_path)


def test_training_is_deterministic():
  texts = [f"item {i} with words {i % 7} and more {i % 13} text" for i in range(400)] + TEXTS
  first = tok_lib.train_backend(texts, 150).to_str()
  for _ in range(3):
    assert tok_lib.train_backend(texts, 150).to_str() == first
