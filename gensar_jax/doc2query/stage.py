"""The doc2query stage: train item text -> query, write pseudo-queries for every item.

Reads the data stage; trains a T5 (`config.doc2query.model`) with its own tokenizer on
the training split's (item text, query) pairs (`model.training_pairs`) with the same
resumable trainer as the main model (checkpoints in `train/`), then generates
`config.doc2query.num_queries` pseudo-queries for every item with text.

Writes `pseudo_queries.json` (`outputs.py`: one list of queries per item; items
without text get an empty list and are counted in the summary) and a summary with
counts, a few examples, and how well pseudo-queries match the item's real queries
(`model.match_stats`: a shared word, a shared word other than the common ones, an
exact match), beside the same figures for real queries of shuffled items. With
`config.doc2query.enabled = False` it writes nothing but a summary saying so, and the
train stage leaves the ad-hoc search task out.
"""

from __future__ import annotations

import time

from absl import logging
import jax
import numpy as np

from gensar_jax import context
from gensar_jax import errors
from gensar_jax import seeds
from gensar_jax import sharding
from gensar_jax.data import dataset
from gensar_jax.decoding import generate as generate_lib
from gensar_jax.doc2query import model as d2q
from gensar_jax.doc2query import outputs
from gensar_jax.model import t5 as t5_lib
from gensar_jax.model import tokenizer as tok_lib
from gensar_jax.trainer import loop

TOKENIZER_DIR = "tokenizer"
TRAIN_DIR = "train"
_EXAMPLES = 8  # Items shown in the summary.
_COMMON_FRAC = 0.1  # Words in more than this fraction of the queries are "common".

INPUTS = ("data",)
CONFIG_KEYS = ("doc2query",)
ALSO_READS = ("mesh",)  # Device layout, not fingerprinted.


def validate(config) -> None:
  """Checks the doc2query section."""
  g = config.doc2query
  if not g.enabled:
    return
  checks = [
      (g.num_queries >= 1, "num_queries must be >= 1"),
      (g.method in generate_lib.METHODS,
       f"method must be one of {generate_lib.METHODS}, got {g.method!r}"),
      (g.top_k >= 0 and 0 < g.top_p <= 1 and g.temperature > 0,
       "top_k must be >= 0, top_p in (0, 1] and temperature > 0"),
      (g.max_query_len >= 2 and g.max_text_len >= 2, "max_query_len and max_text_len must be >= 2"),
      (g.generate_batch_size >= 1 and g.beam_size >= 1,
       "generate_batch_size and beam_size must be >= 1"),
      (g.train.batch_size % g.train.grad_accum_steps == 0,
       "train.batch_size must be a multiple of train.grad_accum_steps"),
  ]
  for ok, message in checks:
    if not ok:
      raise errors.PipelineError(f"config.doc2query: {message}")


def run(config, ctx: context.StageContext) -> dict:
  """Trains doc2query and writes the pseudo-queries (or records that it is off)."""
  g = config.doc2query
  if not g.enabled:
    return {"enabled": False}
  start = time.time()
  data_dir = ctx.input_dir("data")
  catalog = dataset.load_catalog(data_dir)
  items, queries = d2q.training_pairs(catalog, dataset.load_rows(data_dir, "search", "train"))
  if len(items) < g.train.batch_size:
    raise errors.PipelineError(
        f"doc2query: {len(items)} (item text, query) training pairs, fewer than "
        f"doc2query.train.batch_size ({g.train.batch_size}); lower it or disable doc2query")
  texts = [catalog.item_text(i) for i in range(catalog.num_items)]
  tok_dir = ctx.dir / TOKENIZER_DIR
  if (tok_dir / tok_lib.TOKENIZER_FILE).exists():
    tokenizer = tok_lib.Tokenizer.load(tok_dir)
  else:
    tokenizer = tok_lib.add_gensar_tokens(
        tok_lib.train_backend([t for t in texts if t.strip()] + list(catalog.queries),
                              g.vocab_size), (), 0)
    if jax.process_index() == 0:
      tokenizer.save(tok_dir)
  t5_config = t5_lib.T5Config.from_config(g.model, tokenizer.vocab_size)
  model = t5_lib.T5(t5_config)
  seed = seeds.doc2query(config)
  params = t5_lib.init_params(t5_config, jax.random.key(seed))
  src = [np.asarray(s, np.int32) for s in
         tokenizer.encode_batch([texts[i] for i in items], g.max_text_len)]
  tgt = [np.asarray(t, np.int32) for t in
         tokenizer.encode_batch([catalog.queries[q] for q in queries], g.max_query_len)]
  logging.info("doc2query: %d training pairs over %d items", len(items), len(set(items.tolist())))
  result = loop.train(g.train, ctx.dir / TRAIN_DIR, model=model, init_params=params,
                      make_epoch=lambda epoch: (src, tgt), seed=seed,
                      mesh=sharding.make_mesh(config.mesh.data_axis),
                      shard_params=bool(config.mesh.shard_params), name="doc2query.train")
  train_s = time.time() - start
  t0 = time.time()
  pseudo = d2q.generate_queries(model, result.params, tokenizer, texts, cfg=g, seed=seed)
  generate_s = time.time() - t0
  if jax.process_index() == 0:
    outputs.save_pseudo_queries(ctx.dir, catalog.item_ids, pseudo)
  real = [[catalog.queries[q] for q in qs] for qs in catalog.item_queries]
  common = d2q.common_words(catalog.queries, _COMMON_FRAC)
  # Reference: every item given the real queries of another item (a fixed shuffle).
  shuffled = [real[j] for j in np.random.default_rng(seed).permutation(len(real))]
  with_text = [i for i, t in enumerate(texts) if t.strip()]
  shown = with_text[:: max(len(with_text) // _EXAMPLES, 1)][:_EXAMPLES]
  return {
      "enabled": True,
      "items": catalog.num_items,
      "items_with_pseudo_query": int(sum(1 for p in pseudo if p)),
      "items_without_text": int(catalog.num_items - len(with_text)),
      "pseudo_queries": int(sum(len(p) for p in pseudo)),
      "distinct_pseudo_queries": len({q for p in pseudo for q in p}),
      "training_pairs": int(len(items)),
      "word_overlap_with_real_queries": d2q.word_overlap_fraction(pseudo, real),
      "match_with_real_queries": d2q.match_stats(pseudo, real, common),
      "match_if_shuffled": d2q.match_stats(shuffled, real, common),
      "common_query_words": sorted(common),
      "train": result.summary(),
      "examples": [{"item": str(catalog.item_ids[i]), "title": catalog.titles[i],
                    "real": real[i], "pseudo": pseudo[i]} for i in shown],
      "train_s": round(train_s, 2),
      "generate_s": round(generate_s, 2),
  }
