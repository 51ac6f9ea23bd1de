"""Text-encoder throughput on real item text: items/s for 2,000 Office items.

  python -m gensar_jax.benchmarks.embed [--data_dir=...] [--items=2000] [--batch_size=64]

Reads titles + descriptions with the data stage's raw reader and encodes them with the
bundled all-MiniLM-L6-v2 (or --encoder_dir) as the embed stage does (sorted by length,
length buckets). Prints, each timed separately: tokenising, a first pass (which
compiles every bucket shape), a second pass (steady state: the figure that counts),
the arithmetic rate that pass reached, and, with --unsorted, the same texts in file
order padded to each batch's longest text. The machine's load average is printed with
the figures: on a shared machine they are provisional.
"""

from __future__ import annotations

import os
import pathlib
import time

from absl import app
from absl import flags
import numpy as np

from gensar_jax.data import raw
from gensar_jax.embed import bert
from gensar_jax.embed import text_encoder

_DATA = flags.DEFINE_string(
    "data_dir", str(pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-office"),
    "Raw McAuley folder.")
_CATEGORY = flags.DEFINE_string("category", "Office_Products", "Category NAME.")
_ITEMS = flags.DEFINE_integer("items", 2000, "Items to encode.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Texts per batch.")
_ENCODER = flags.DEFINE_string("encoder_dir", "", "Encoder folder ('' = bundled MiniLM).")
_MAX_LEN = flags.DEFINE_integer("max_text_len", 256, "Token cap per text.")
_TOKENS = flags.DEFINE_integer("tokens_per_batch", text_encoder.TOKENS_PER_BATCH,
                               "Cap on rows x padded length of a batch.")
_UNSORTED = flags.DEFINE_bool("unsorted", False,
                              "Also time file-order batches padded to their longest text.")


def item_texts(data_dir: str, category: str, limit: int) -> list[str]:
  """Title + description of the first `limit` reviewed items (in first-review order)."""
  files = raw.find_files(data_dir, category)
  reviews = raw.read_reviews(files.reviews, count_words=False)
  _, first = np.unique(reviews.item_ids, return_index=True)
  asins = reviews.item_ids[np.sort(first)][:limit]
  meta = raw.read_meta(files.meta, asins)
  return [" ".join(t for t in (meta.titles[k], meta.descriptions[k]) if t) for k in range(len(asins))]


def encoder_flops(config: bert.BertConfig, rows: int, length: int) -> float:
  """Multiply-add FLOPs (x2) of one [rows, length] batch through the encoder layers."""
  d, f = config.hidden_size, config.intermediate_size
  per_token = 2 * (4 * d * d + 2 * d * f)  # Q, K, V, output; the two feed-forward matrices.
  attention = 2 * 2 * length * length * d  # Q K^T and probs V, all heads together.
  return float(config.num_hidden_layers * rows * (length * per_token + attention))


def _load() -> str:
  return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _time_unsorted(encoder, ids, batch_size) -> float:
  """Seconds to encode in file order, each batch padded to its longest text."""
  start = time.time()
  for s in range(0, len(ids), batch_size):
    chunk = ids[s:s + batch_size]
    padded = text_encoder.pad_batch(chunk, batch_size, max(len(x) for x in chunk), encoder.pad_id)
    np.asarray(text_encoder.embed_padded(encoder, *padded))
  return time.time() - start


def main(argv):
  del argv
  texts = item_texts(_DATA.value, _CATEGORY.value, _ITEMS.value)
  encoder = text_encoder.load(_ENCODER.value, _MAX_LEN.value)
  start = time.time()
  ids = text_encoder.tokenize(encoder, texts)
  tokenize_s = time.time() - start
  lengths = np.array([len(x) for x in ids])
  bs = _BATCH.value
  batches = text_encoder.plan_batches(lengths, bs, encoder.max_len, _TOKENS.value)
  padded = sum(rows * length for _, length, rows in batches)
  flops = sum(encoder_flops(encoder.config, rows, length) for _, length, rows in batches)
  ideal = sum(encoder_flops(encoder.config, 1, int(n)) for n in lengths)
  print(f"{len(texts)} items; tokens per text: mean {lengths.mean():.1f}, median "
        f"{np.median(lengths):.0f}, max {lengths.max()} ({np.mean(lengths == encoder.max_len):.0%} "
        f"truncated); encoder {encoder.folder} ({encoder.pooling} pooling, max {encoder.max_len})")
  print(f"plan: {len(batches)} batches of <= {bs} rows and ~{_TOKENS.value} tokens, "
        f"{len({l for _, l, _ in batches})} shapes, "
        f"{lengths.sum() / padded:.0%} of padded tokens are real; {flops / 1e12:.2f} TFLOP "
        f"({ideal / flops:.0%} of it needed without padding)")
  print(f"tokenize: {tokenize_s:.2f} s ({len(texts) / tokenize_s:.0f} items/s)")
  start = time.time()
  first = text_encoder.encode(encoder, texts, bs, tokens_per_batch=_TOKENS.value)
  warm = time.time() - start
  start = time.time()
  second = text_encoder.encode(encoder, texts, bs, tokens_per_batch=_TOKENS.value)
  secs = time.time() - start
  assert np.array_equal(first, second)
  print(f"first pass (compiles every shape): {warm:.1f} s, {len(texts) / warm:.1f} items/s")
  print(f"bucketed, steady state: {len(texts) / secs:.1f} items/s ({secs:.1f} s, tokenising "
        f"included; {flops / (secs - tokenize_s) / 1e9:.0f} GFLOP/s in the encoder)  [{_load()}]")
  if _UNSORTED.value:
    _time_unsorted(encoder, ids, bs)  # Compiles every shape it meets.
    secs_u = _time_unsorted(encoder, ids, bs)
    print(f"file order, padded per batch: {len(texts) / secs_u:.1f} items/s ({secs_u:.1f} s, "
          f"tokenising excluded); bucketed is {secs_u / (secs - tokenize_s):.2f}x faster  [{_load()}]")


if __name__ == "__main__":
  app.run(main)
