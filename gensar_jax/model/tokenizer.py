"""The GenSAR tokenizer: a subword model plus behaviour and identifier-code tokens.

Two sources for the subword model (docs/design.md §5):
  * a pretrained T5 tokenizer from a local Hugging Face folder (`tokenizer.json`, or
    `spiece.model` converted by `transformers`), or
  * a BPE model trained with `tokenizers` on the dataset's own text. (T5's own kind,
    Unigram, is not used: the `tokenizers` Unigram trainer gives a different vocabulary
    from run to run, which would break bit-identical reruns; its BPE trainer does not.)
Either way the ids follow T5's convention (pad 0, eos 1, unk 2) and GenSAR's tokens are
appended as single added tokens: the behaviour tokens `<R_I>`, `<S_Q>`, `<S_I>`, then
every identifier level's K code tokens in code order, so code `c` of level `n` is id
`level_offsets[n] + c` (what the trie tables need). Encoded sequences end with eos.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from collections.abc import Iterable, Mapping, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

from gensar_jax import prompts as prompts_lib
from gensar_jax import tokens

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "gensar_tokens.json"


class Tokenizer:
  """A `tokenizers.Tokenizer` with GenSAR's added tokens and T5's special ids.

  Attributes:
    backend: the wrapped `tokenizers.Tokenizer`.
    level_offsets: first token id of each identifier level's codes, e.g. {"M1": 8003}.
    codebook_size: K, code tokens per level.
  """

  def __init__(self, backend: tokenizers.Tokenizer, level_offsets: Mapping[str, int],
               codebook_size: int):
    self.backend = backend
    self.level_offsets = dict(level_offsets)
    self.codebook_size = int(codebook_size)
    for name, want in ((PAD, 0), (EOS, 1), (UNK, 2)):
      got = backend.token_to_id(name)
      if got != want:
        raise ValueError(f"tokenizer must map {name} to id {want} (T5 convention), got {got}")
    for name, first in self.level_offsets.items():
      last = tokens.code_token(name, self.codebook_size - 1)
      if backend.token_to_id(last) != first + self.codebook_size - 1:
        raise ValueError(f"code tokens of level {name} are not contiguous from id {first}")

  pad_id, eos_id, unk_id = 0, 1, 2

  @property
  def vocab_size(self) -> int:
    """Ids in use, added tokens included (the model's embedding needs this many rows)."""
    return self.backend.get_vocab_size(with_added_tokens=True)

  def token_id(self, token: str) -> int:
    """The id of a single token (raises KeyError when it is not in the vocabulary)."""
    i = self.backend.token_to_id(token)
    if i is None:
      raise KeyError(f"{token!r} is not a token of this tokenizer")
    return int(i)

  def encode_batch(self, texts: Sequence[str], max_len: int) -> list[list[int]]:
    """Token ids of each text, cut to `max_len - 1` tokens, then eos."""
    if max_len < 1:
      raise ValueError(f"max_len must be >= 1, got {max_len}")
    encoded = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
    return [e.ids[: max_len - 1] + [self.eos_id] for e in encoded]

  def encode_prompts(self, prompts: Sequence, max_len: int) -> tuple[list[list[int]], list[int]]:
    """Token ids of `gensar_jax.prompts.Prompt`s (or strings), eos included, at most
    `max_len` tokens: over-long prompts lose history entries, never their end
    (`gensar_jax.prompts.encode`). Returns (ids, entries dropped per prompt)."""
    def texts(batch):
      return [e.ids for e in self.backend.encode_batch_fast(batch, add_special_tokens=False)]

    return prompts_lib.encode(texts, prompts, max_len, self.eos_id)

  def encode(self, text: str, max_len: int) -> list[int]:
    """`encode_batch` of one text."""
    return self.encode_batch([text], max_len)[0]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of token ids up to the first eos; pad, eos and unk are dropped."""
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id:
        break
      out.append(i)
    return self.backend.decode(out, skip_special_tokens=True).strip()

  def save(self, folder: str | pathlib.Path) -> None:
    """Writes `tokenizer.json` and the GenSAR token layout into `folder`."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    self.backend.save(str(folder / TOKENIZER_FILE))
    meta = {"level_offsets": self.level_offsets, "codebook_size": self.codebook_size}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

  @classmethod
  def load(cls, folder: str | pathlib.Path) -> "Tokenizer":
    """Reads what `save` wrote."""
    folder = pathlib.Path(folder)
    meta = json.loads((folder / META_FILE).read_text())
    backend = tokenizers.Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    return cls(backend, meta["level_offsets"], meta["codebook_size"])

  def fingerprint(self) -> str:
    """A hash of the vocabulary (token -> id, added tokens included) and code layout.

    Two tokenizers with equal fingerprints map the same tokens to the same ids (model
    scores are left out: their float text is not stable across a save and load).
    """
    vocab = sorted(self.backend.get_vocab(with_added_tokens=True).items())
    blob = json.dumps([vocab, sorted(self.level_offsets.items()), self.codebook_size])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_backend(texts: Iterable[str], vocab_size: int) -> tokenizers.Tokenizer:
  """A BPE subword model (NFKC, lower-case, metaspace) trained on `texts`, deterministically.

  Args:
    texts: training text (item text, queries, instruction phrasings).
    vocab_size: target vocabulary before GenSAR's added tokens (pad, eos, unk included).
  """
  backend = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
  backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
  backend.pre_tokenizer = pre_tokenizers.Metaspace()
  backend.decoder = decoders.Metaspace()
  trainer = trainers.BpeTrainer(
      vocab_size=int(vocab_size), special_tokens=[PAD, EOS, UNK], show_progress=False)
  backend.train_from_iterator(texts, trainer)
  return backend


def load_pretrained_backend(folder: str | pathlib.Path) -> tokenizers.Tokenizer:
  """A pretrained T5 tokenizer from a local folder (`tokenizer.json` or `spiece.model`)."""
  folder = pathlib.Path(folder)
  if (folder / TOKENIZER_FILE).exists():
    backend = tokenizers.Tokenizer.from_file(str(folder / TOKENIZER_FILE))
  elif (folder / "spiece.model").exists():
    import transformers  # pylint: disable=g-import-not-at-top

    backend = transformers.AutoTokenizer.from_pretrained(str(folder)).backend_tokenizer
  else:
    raise FileNotFoundError(f"no {TOKENIZER_FILE} or spiece.model in {folder}")
  backend.post_processor = None  # eos is appended by `Tokenizer.encode_batch`.
  backend.no_truncation()
  backend.no_padding()
  return backend


def add_gensar_tokens(backend: tokenizers.Tokenizer, level_names: Sequence[str],
                      codebook_size: int) -> Tokenizer:
  """Appends behaviour tokens and every level's code tokens; returns the Tokenizer.

  Args:
    backend: a subword model with pad/eos/unk at ids 0/1/2.
    level_names: identifier level names, e.g. ("M1", "M2", "S1", "S2", "R1", "R2").
    codebook_size: K.
  """
  added = [tokenizers.AddedToken(t, normalized=False, single_word=False)
           for t in tokens.BEHAVIOUR_TOKENS]
  backend.add_tokens(added)
  offsets = {}
  for name in level_names:
    first = backend.get_vocab_size(with_added_tokens=True)
    level = [tokenizers.AddedToken(t, normalized=False)
             for t in tokens.level_tokens(name, codebook_size)]
    if backend.add_tokens(level) != codebook_size:
      raise ValueError(f"tokens of level {name} already exist in the vocabulary")
    offsets[name] = first
  return Tokenizer(backend, offsets, codebook_size)


def build(tokenizer_config, texts: Iterable[str], level_names: Sequence[str],
          codebook_size: int) -> Tokenizer:
  """The tokenizer a run uses, from `config.tokenizer`.

  Args:
    tokenizer_config: `config.tokenizer` (pretrained_dir, vocab_size).
    texts: dataset text to train on when no pretrained folder is given.
    level_names: every identifier level name (both kinds, each once).
    codebook_size: K.
  """
  if tokenizer_config.pretrained_dir:
    backend = load_pretrained_backend(tokenizer_config.pretrained_dir)
  else:
    backend = train_backend(texts, tokenizer_config.vocab_size)
  return add_gensar_tokens(backend, level_names, codebook_size)
