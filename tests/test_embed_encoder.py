"""The Flax BERT text encoder: reference vectors, pooling choice, bucketing, errors.

The MiniLM reference vectors in tests/fixtures/minilm_reference.json were computed by
sentence-transformers itself (tests/fixtures/make_minilm_reference.py). Tiny random BERT
folders written here are checked against a numpy forward pass that reads the torch
layout tensors directly, so the weight conversion is checked too.
"""

import json
import math
import pathlib

import numpy as np
import pytest
import safetensors.numpy
import tokenizers
from tokenizers import models
from tokenizers import normalizers
from tokenizers import pre_tokenizers
from tokenizers import processors

from gensar_jax import pipeline
from gensar_jax.embed import bert
from gensar_jax.embed import text_encoder

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.json"
WORDS = ("stapler paper ink pen pencil desk chair black blue red green box pack sheet "
         "office school printer cartridge tape glue folder label marker clip").split()
SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
TINY = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 24, "max_position_embeddings": 40,
        "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0,
        "model_type": "bert", "position_embedding_type": "absolute"}


@pytest.fixture(scope="module")
def reference():
  return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def minilm():
  return text_encoder.load(None, 256)


def test_minilm_matches_sentence_transformers(reference, minilm):
  sentences = reference["sentences"]
  want = np.asarray(reference["embeddings"], np.float32)
  assert want.shape == (len(sentences), 384)
  assert [len(x) for x in text_encoder.tokenize(minilm, sentences)] == reference["num_tokens"]
  got = text_encoder.encode(minilm, sentences, batch_size=8)  # Three buckets: 16, 32, 256.
  assert got.shape == want.shape and got.dtype == np.float32
  assert np.abs(got - want).max() < 1e-4
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
  # Padding is ignored: every text padded to 256 tokens in one batch gives the same.
  ids = text_encoder.tokenize(minilm, sentences)
  padded = np.asarray(text_encoder.embed_padded(minilm, *text_encoder.pad_batch(ids, 6, 256, minilm.pad_id)))
  assert np.abs(padded - want).max() < 1e-4


def test_minilm_settings_come_from_its_sentence_transformers_files(minilm):
  assert text_encoder.sentence_settings(minilm.folder) == text_encoder.SentenceSettings(
      pooling="mean", normalize=True, max_len=256, lowercase=False)
  assert (minilm.pooling, minilm.normalize, minilm.max_len, minilm.dim) == ("mean", True, 256, 384)
  assert text_encoder.load(None, 64).max_len == 64  # The config's cap applies when lower.


# ----------------------------------------------------------------- tiny random BERTs


def _vocab() -> list[str]:
  """Special tokens, whole words and a few continuation pieces (fewer than 64)."""
  pieces = sorted({"##" + w[-2:] for w in WORDS} | {"##s"})
  return list(SPECIALS) + WORDS + pieces


def _write_tokenizer(path: pathlib.Path, lowercase: bool = True) -> None:
  vocab = {t: i for i, t in enumerate(_vocab())}
  tok = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
  tok.save(str(path))


def _random_tensors(seed: int = 0, prefix: str = "") -> dict[str, np.ndarray]:
  """Torch-layout BERT tensors (Linear weights (out, in)) for the TINY config."""
  rng = np.random.default_rng(seed)
  h, f = TINY["hidden_size"], TINY["intermediate_size"]
  t = {}

  def add(name, *shape, scale=0.3):
    t[prefix + name] = (scale * rng.standard_normal(shape)).astype(np.float32)

  add("embeddings.word_embeddings.weight", TINY["vocab_size"], h, scale=1.0)
  add("embeddings.position_embeddings.weight", TINY["max_position_embeddings"], h)
  add("embeddings.token_type_embeddings.weight", 2, h)
  for i in range(TINY["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name, (o, n) in {"attention.self.query": (h, h), "attention.self.key": (h, h),
                         "attention.self.value": (h, h), "attention.output.dense": (h, h),
                         "intermediate.dense": (f, h), "output.dense": (h, f)}.items():
      add(p + name + ".weight", o, n)
      add(p + name + ".bias", o, scale=0.1)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[prefix + p + name + ".weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
      add(p + name + ".bias", h, scale=0.1)
  t[prefix + "embeddings.LayerNorm.weight"] = (1 + 0.1 * rng.standard_normal(h)).astype(np.float32)
  add("embeddings.LayerNorm.bias", h, scale=0.1)
  return t


def _write_folder(path: pathlib.Path, modules=None, pooling_config=None, st_config=None,
                  tensors=None, config=None, lowercase=True) -> pathlib.Path:
  path.mkdir(parents=True)
  (path / "config.json").write_text(json.dumps(config or TINY))
  safetensors.numpy.save_file(tensors if tensors is not None else _random_tensors(),
                              str(path / "model.safetensors"))
  _write_tokenizer(path / "tokenizer.json", lowercase)
  if modules is not None:
    (path / "modules.json").write_text(json.dumps(
        [{"idx": i, "name": str(i), "path": p, "type": "sentence_transformers.models." + t}
         for i, (t, p) in enumerate(modules)]))
  if pooling_config is not None:
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps(pooling_config))
  if st_config is not None:
    (path / "sentence_bert_config.json").write_text(json.dumps(st_config))
  return path


def _layer_norm(x, w, b, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def _numpy_hidden(t: dict[str, np.ndarray], ids: list[int]) -> np.ndarray:
  """Last hidden states [L, H] of one unpadded text, torch BertModel semantics, float64."""
  t = {k.removeprefix("bert."): v.astype(np.float64) for k, v in t.items()}
  eps, heads = TINY["layer_norm_eps"], TINY["num_attention_heads"]
  n = len(ids)
  x = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:n]
       + t["embeddings.token_type_embeddings.weight"][0])
  x = _layer_norm(x, t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"], eps)
  d = x.shape[1] // heads

  def linear(name, v):
    return v @ t[name + ".weight"].T + t[name + ".bias"]

  for i in range(TINY["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    q, k, v = (linear(p + "attention.self." + s, x).reshape(n, heads, d).transpose(1, 0, 2)
               for s in ("query", "key", "value"))
    scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    ctx = (probs @ v).transpose(1, 0, 2).reshape(n, heads * d)
    x = _layer_norm(x + linear(p + "attention.output.dense", ctx),
                    t[p + "attention.output.LayerNorm.weight"], t[p + "attention.output.LayerNorm.bias"], eps)
    inter = linear(p + "intermediate.dense", x)
    inter = 0.5 * inter * (1 + _erf(inter / math.sqrt(2)))
    x = _layer_norm(x + linear(p + "output.dense", inter),
                    t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"], eps)
  return x


def _texts(seed: int, count: int) -> list[str]:
  """Texts of 0 to 30 words, some with unknown words, capitals and punctuation."""
  rng = np.random.default_rng(seed)
  pool = WORDS + ["staplers", "Pens", "zebra", ",", "!", "INK"]
  return [" ".join(rng.choice(pool, size=rng.integers(0, 31))) for _ in range(count)]


def test_cls_folder_matches_numpy_reference(tmp_path):
  tensors = _random_tensors(seed=1, prefix="bert.")  # As a BertFor* checkpoint stores them.
  tensors["cls.predictions.bias"] = np.zeros(TINY["vocab_size"], np.float32)  # Ignored.
  folder = _write_folder(tmp_path / "cls", tensors=tensors,
                         modules=[("Transformer", ""), ("Pooling", "1_Pooling")],
                         pooling_config={"word_embedding_dimension": 16, "pooling_mode_cls_token": True,
                                         "pooling_mode_mean_tokens": False},
                         st_config={"max_seq_length": 24})
  enc = text_encoder.load(folder, 256)
  assert (enc.pooling, enc.normalize, enc.max_len, enc.dim) == ("cls", False, 24, 16)
  texts = _texts(seed=2, count=11)
  ids = text_encoder.tokenize(enc, texts)
  assert max(len(x) for x in ids) == 24 and min(len(x) for x in ids) <= 5  # Truncated and short.
  got = text_encoder.encode(enc, texts, batch_size=3)
  want = np.stack([_numpy_hidden(tensors, x)[0] for x in ids])
  assert np.abs(got - want).max() < 1e-4
  assert not np.allclose(np.linalg.norm(got, axis=1), 1.0)  # Not normalised.


def test_mean_normalized_folder_in_the_new_pooling_format(tmp_path):
  tensors = _random_tensors(seed=3)
  folder = _write_folder(tmp_path / "mean", tensors=tensors,
                         modules=[("Transformer", ""), ("Pooling", "1_Pooling"),
                                  ("Normalize", "2_Normalize")],
                         pooling_config={"embedding_dimension": 16, "pooling_mode": "mean"})
  enc = text_encoder.load(folder, 256)
  assert (enc.pooling, enc.normalize, enc.max_len) == ("mean", True, TINY["max_position_embeddings"])
  texts = _texts(seed=4, count=7)
  got = text_encoder.encode(enc, texts, batch_size=4)
  want = np.stack([_numpy_hidden(tensors, x).mean(0) for x in text_encoder.tokenize(enc, texts)])
  want /= np.linalg.norm(want, axis=1, keepdims=True)
  assert np.abs(got - want).max() < 1e-4


def test_plain_folder_means_mean_pooling_without_normalisation(tmp_path):
  tensors = _random_tensors(seed=5)
  folder = _write_folder(tmp_path / "plain", tensors=tensors)
  assert text_encoder.sentence_settings(folder) == text_encoder.SentenceSettings(
      pooling="mean", normalize=False, max_len=None, lowercase=False)
  enc = text_encoder.load(folder, 16)
  assert enc.max_len == 16  # min(max_text_len 16, max_position_embeddings 40).
  texts = ["black stapler", "desk"]
  got = text_encoder.encode(enc, texts)
  want = np.stack([_numpy_hidden(tensors, x).mean(0) for x in text_encoder.tokenize(enc, texts)])
  assert np.abs(got - want).max() < 1e-4


def test_do_lower_case_lowercases_before_a_cased_tokenizer(tmp_path):
  folder = _write_folder(tmp_path / "cased", lowercase=False, st_config={"do_lower_case": True})
  enc = text_encoder.load(folder, 256)
  assert enc.lowercase
  assert text_encoder.tokenize(enc, ["BLACK Stapler"]) == text_encoder.tokenize(enc, ["black stapler"])
  cased = text_encoder.load(_write_folder(tmp_path / "cased2", lowercase=False), 256)
  assert text_encoder.tokenize(cased, ["BLACK"])[0][1] == _vocab().index("[UNK]")


def test_bucketed_encoding_equals_one_text_at_a_time_unpadded(tmp_path):
  tensors = _random_tensors(seed=6)
  enc = text_encoder.load(_write_folder(tmp_path / "m", tensors=tensors,
                                        modules=[("Transformer", ""), ("Pooling", "p")],
                                        pooling_config={"pooling_mode": ["mean"]}), 256)
  texts = _texts(seed=6, count=40)
  ids = text_encoder.tokenize(enc, texts)
  assert len({text_encoder.bucket_length(len(x), enc.max_len) for x in ids}) >= 3
  bucketed = text_encoder.encode(enc, texts, batch_size=8)
  one_batch = np.asarray(text_encoder.embed_padded(  # All padded to the longest.
      enc, *text_encoder.pad_batch(ids, len(ids), enc.max_len, enc.pad_id)))
  unpadded = np.stack([_numpy_hidden(tensors, x).mean(0) for x in ids])
  assert np.abs(bucketed - unpadded).max() < 1e-5
  assert np.abs(one_batch - unpadded).max() < 1e-5
  # Input order is kept whatever the length order.
  perm = np.random.default_rng(0).permutation(len(texts))
  np.testing.assert_allclose(text_encoder.encode(enc, [texts[i] for i in perm], batch_size=8),
                             bucketed[perm], atol=1e-6)
  assert text_encoder.encode(enc, [], batch_size=8).shape == (0, 16)


def test_plan_batches_sorts_by_length_and_pads_to_buckets():
  rng = np.random.default_rng(0)
  lengths = rng.integers(2, 300, size=203)
  batches = text_encoder.plan_batches(lengths, batch_size=16, max_len=256, tokens_per_batch=1024)
  order = np.concatenate([idx for idx, _, _ in batches])
  assert sorted(order.tolist()) == list(range(203))
  capped = np.minimum(lengths, 256)
  np.testing.assert_array_equal(capped[order], np.sort(capped, kind="stable"))
  rows_of = {}
  for idx, padded, rows in batches:
    assert len(idx) <= rows and rows_of.setdefault(padded, rows) == rows  # One shape a bucket.
    assert rows == min(16, 1024 // padded)  # Fewer rows for long texts.
    assert padded in text_encoder.BUCKETS or padded == 256
    # The smallest bucket that fits every text of the batch.
    smaller = [b for b in text_encoder.BUCKETS if b < padded]
    assert capped[idx].max() <= padded and (not smaller or capped[idx].min() > smaller[-1])
  # Only a bucket's last batch may be partly empty.
  assert sum(len(idx) < rows for idx, _, rows in batches) <= len(rows_of)
  assert text_encoder.bucket_length(20, max_len=24) == 24
  assert text_encoder.bucket_length(300, max_len=256) == 256
  assert text_encoder.plan_batches([], 8, 256) == []


def test_weight_conversion_round_trips():
  tensors = _random_tensors(seed=7)
  config = bert.BertConfig.from_dict(TINY)
  back = bert.params_to_torch(bert.params_from_torch(tensors, config), config)
  assert back.keys() == tensors.keys()
  for k, v in tensors.items():
    np.testing.assert_array_equal(back[k], v)


def test_unusable_folders_are_rejected_with_a_clear_error(tmp_path):
  def expect(fragment, folder):
    with pytest.raises(pipeline.PipelineError, match=fragment):
      text_encoder.load(folder, 256)

  expect("max", _write_folder(tmp_path / "maxpool", modules=[("Transformer", ""), ("Pooling", "1_Pooling")],
                              pooling_config={"pooling_mode_max_tokens": True}))
  expect("Dense", _write_folder(tmp_path / "dense", modules=[("Transformer", ""), ("Pooling", "1_Pooling"),
                                                             ("Dense", "2_Dense")],
                                pooling_config={"pooling_mode": "mean"}))
  expect("not a BERT", _write_folder(tmp_path / "roberta", config={**TINY, "model_type": "roberta"}))
  tensors = _random_tensors()
  del tensors["encoder.layer.1.output.dense.weight"]
  expect("encoder.layer.1.output.dense.weight", _write_folder(tmp_path / "partial", tensors=tensors))
  missing = _write_folder(tmp_path / "missing")
  (missing / "model.safetensors").unlink()
  expect("model.safetensors", missing)
