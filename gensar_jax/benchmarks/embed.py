"""Text-encoder throughput on real item text: items/s for 2,000 Office items.

  python -m gensar_jax.benchmarks.embed [--data_dir=...] [--items=2000] [--batch_size=64]

Reads titles + descriptions with the data stage's raw reader, encodes them with the
bundled all-MiniLM-L6-v2 (or --encoder_dir) using length buckets, and prints items/s
for the bucketed encoder and, on the same texts in the same run, for batches padded to
the longest text of a fixed-order batch (what bucketing saves). The first pass is a
warm-up that compiles every shape; timings are of the second pass.
"""

from __future__ import annotations

import pathlib
import time

from absl import app
from absl import flags
import numpy as np

from gensar_jax.data import raw
from gensar_jax.embed import text_encoder

_DATA = flags.DEFINE_string(
    "data_dir", str(pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "amazon-office"),
    "Raw McAuley folder.")
_CATEGORY = flags.DEFINE_string("category", "Office_Products", "Category NAME.")
_ITEMS = flags.DEFINE_integer("items", 2000, "Items to encode.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Texts per batch.")
_ENCODER = flags.DEFINE_string("encoder_dir", "", "Encoder folder ('' = bundled MiniLM).")
_MAX_LEN = flags.DEFINE_integer("max_text_len", 256, "Token cap per text.")
_UNSORTED = flags.DEFINE_bool("unsorted", True, "Also time batches in file order padded to their longest text.")


def item_texts(data_dir: str, category: str, limit: int) -> list[str]:
  """Title + description of the first `limit` reviewed items (in first-review order)."""
  files = raw.find_files(data_dir, category)
  reviews = raw.read_reviews(files.reviews, count_words=False)
  _, first = np.unique(reviews.item_ids, return_index=True)
  asins = reviews.item_ids[np.sort(first)][:limit]
  meta = raw.read_meta(files.meta, asins)
  return [" ".join(t for t in (meta.titles[k], meta.descriptions[k]) if t) for k in range(len(asins))]


def _time_unsorted(encoder, texts, batch_size) -> float:
  """Seconds to encode in file order, each batch padded to its longest text."""
  ids = text_encoder.tokenize(encoder, texts)
  start = time.time()
  for s in range(0, len(texts), batch_size):
    chunk = ids[s:s + batch_size]
    length = max(len(x) for x in chunk)
    ids_BxL = np.full((batch_size, length), encoder.pad_id, np.int32)
    mask_BxL = np.zeros((batch_size, length), np.int32)
    for r, x in enumerate(chunk):
      ids_BxL[r, :len(x)] = x
      mask_BxL[r, :len(x)] = 1
    np.asarray(text_encoder._embed(encoder.params, ids_BxL, mask_BxL, config=encoder.config,  # pylint: disable=protected-access
                                   pooling=encoder.pooling, normalize=encoder.normalize))
  return time.time() - start


def main(argv):
  del argv
  texts = item_texts(_DATA.value, _CATEGORY.value, _ITEMS.value)
  encoder = text_encoder.load(_ENCODER.value, _MAX_LEN.value)
  lengths = np.array([len(x) for x in text_encoder.tokenize(encoder, texts)])
  batches = text_encoder.plan_batches(lengths, _BATCH.value, encoder.max_len)
  padded = sum(_BATCH.value * length for _, length in batches)
  print(f"{len(texts)} items, tokens per text: mean {lengths.mean():.1f}, median "
        f"{np.median(lengths):.0f}, max {lengths.max()}; encoder {encoder.folder} "
        f"({encoder.pooling} pooling, max {encoder.max_len})")
  print(f"bucketed: {len(batches)} batches, {len({l for _, l in batches})} shapes, "
        f"{lengths.sum() / padded:.0%} of padded tokens are real")
  start = time.time()
  text_encoder.encode(encoder, texts, _BATCH.value)
  warm = time.time() - start
  start = time.time()
  text_encoder.encode(encoder, texts, _BATCH.value)
  secs = time.time() - start
  print(f"bucketed: {len(texts) / secs:.1f} items/s ({secs:.1f} s; first pass with "
        f"compiles {warm:.1f} s)")
  if _UNSORTED.value:
    _time_unsorted(encoder, texts[:_BATCH.value * 4], _BATCH.value)  # compile some shapes
    secs_u = _time_unsorted(encoder, texts, _BATCH.value)
    print(f"file order, padded per batch (compiles included): {len(texts) / secs_u:.1f} items/s "
          f"({secs_u:.1f} s); bucketed is {secs_u / secs:.2f}x faster")


if __name__ == "__main__":
  app.run(main)
