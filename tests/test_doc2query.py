"""Doc2query: training pairs from search_train only, learning, determinism, the stage's files."""

import copy
import json

import numpy as np
import pytest

from gensar_jax import pipeline
from gensar_jax import seeds
from gensar_jax.data import schema
from gensar_jax.doc2query import model as d2q
from gensar_jax.doc2query import outputs as d2q_outputs
from gensar_jax.doc2query import stage as d2q_stage
from gensar_jax.model import t5 as t5_lib
from gensar_jax.model import tokenizer as tok_lib
from gensar_jax.trainer import loop
from tests.conftest import load_config

# Planted mapping: an item's text holds one category word among filler; its query is
# a fixed phrase of that category that shares no word with the text.
CATEGORIES = {
    "stapler": "desk tools", "pencil": "writing supplies", "folder": "paper storage",
    "marker": "art colours", "envelope": "mail shipping", "binder": "ring organisers",
}
POISON = "secret leaked query"  # Paired with items only by validation / test events.
FILLER = ("blue", "large", "sturdy", "classic", "pack", "metal", "soft", "bright", "slim",
          "premium", "mini", "heavy")
PER_CATEGORY = 16
TRAIN_STEPS = 150  # 6 steps per epoch x 25 epochs.
HALF = 60  # The first (interrupted) run stops here.


def _world(seed=0):
  """A catalog, its search rows per split, and each item's category index (-1: no text).

  Items 0..95: 16 per category, each with one search_train pair (some repeated).
  Item 96: text, but only validation/test events. Items 97, 98: no text (98's title is
  blank space); 97 has a search_train event, which must not become a training pair.
  Validation/test rows pair some items with POISON, which must never be trained on.
  """
  rng = np.random.default_rng(seed)
  names = list(CATEGORIES)
  queries = [CATEGORIES[n] for n in names] + [POISON]
  poison_q = len(queries) - 1
  titles, category = [], []
  for c, name in enumerate(names):
    for _ in range(PER_CATEGORY):
      words = [name] + list(rng.choice(FILLER, size=4, replace=False))
      rng.shuffle(words)
      titles.append(" ".join(words))
      category.append(c)
  titles += ["slim premium stapler pack bright", "", "   "]
  category += [names.index("stapler"), -1, -1]
  n = len(titles)
  item_queries = [[c] if c >= 0 else [] for c in category]
  catalog = schema.Catalog(
      item_ids=np.array([f"A{i:04d}" for i in range(n)]), titles=titles,
      descriptions=[""] * n, queries=queries, item_queries=item_queries,
      interaction_counts=np.ones(n, np.int64), rec_train_sequences=[])
  train_pairs = [(i, category[i]) for i in range(96)] + [(i, category[i]) for i in range(0, 96, 7)]
  train_pairs.append((97, 0))  # An item without text: dropped from training.
  heldout = [(i, poison_q) for i in range(0, 96, 5)] + [(96, category[96]), (96, poison_q)]
  rows = {"train": _rows(train_pairs), "validation": _rows(heldout), "test": _rows(heldout)}
  return catalog, rows, category


def _rows(pairs):
  items, queries = zip(*pairs)
  return {"user": np.arange(len(pairs), dtype=np.int32),
          "item": np.asarray(items, np.int32), "query": np.asarray(queries, np.int32)}


def _config(**train):
  c = load_config("amazon", "preset=cpu")
  c.doc2query.update(vocab_size=300, max_text_len=16, max_query_len=8, generate_batch_size=32)
  c.doc2query.model.update(d_model=32, d_ff=64, num_encoder_layers=1, num_decoder_layers=1,
                           num_heads=2, d_kv=16, dropout_rate=0.0)
  c.doc2query.train.update(batch_size=16, epochs=25, learning_rate=1e-2, warmup_frac=0.05,
                           log_every_steps=10, checkpoint_every_steps=1000, max_steps=0)
  c.doc2query.train.update(train)
  return c


class _FakeData:
  """Serves the planted world in place of the data stage's files; records reads."""

  def __init__(self, catalog, rows):
    self.catalog, self.rows, self.reads = catalog, rows, []

  def load_catalog(self, data_dir):
    del data_dir
    return self.catalog

  def load_rows(self, data_dir, task, split):
    del data_dir
    self.reads.append((task, split))
    return self.rows[split]


def _context(workdir):
  (workdir / "data").mkdir(parents=True, exist_ok=True)
  (workdir / "data" / pipeline._DONE).write_text("planted\n")  # pylint: disable=protected-access
  ctx = pipeline.StageContext(workdir, "doc2query")
  ctx.dir.mkdir(exist_ok=True)
  return ctx


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
  """The stage run twice on the planted world: stopped at HALF steps, then resumed."""
  catalog, rows, category = _world()
  fake = _FakeData(catalog, rows)
  ctx = _context(tmp_path_factory.mktemp("d2q"))
  results = []
  real_train = loop.train

  def spy_train(*args, **kw):
    results.append(real_train(*args, **kw))
    return results[-1]

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(d2q_stage.dataset, "load_catalog", fake.load_catalog)
    mp.setattr(d2q_stage.dataset, "load_rows", fake.load_rows)
    mp.setattr(d2q_stage.loop, "train", spy_train)
    first = d2q_stage.run(_config(max_steps=HALF), ctx)
    second = d2q_stage.run(_config(), ctx)
  return dict(ctx=ctx, catalog=catalog, category=category, fake=fake, first=first,
              summary=second, params=results[-1].params)


def test_training_pairs_come_from_search_train_rows_only():
  catalog, rows, category = _world()
  items, queries = d2q.training_pairs(catalog, rows["train"])
  want = sorted({(i, category[i]) for i in range(96)})
  assert list(zip(items.tolist(), queries.tolist())) == want  # distinct, sorted, with text
  poison = len(catalog.queries) - 1
  assert poison not in queries.tolist() and 96 not in items.tolist() and 97 not in items.tolist()
  # Whatever held-out rows hold, only the rows passed in are read.
  both = {k: np.concatenate([rows["train"][k], rows["validation"][k]]) for k in rows["train"]}
  items, queries = d2q.training_pairs(catalog, both)
  assert poison in queries.tolist()


def test_stage_reads_only_search_train_and_counts_pairs(staged):
  assert set(staged["fake"].reads) == {("search", "train")}
  assert staged["summary"]["training_pairs"] == 96


def test_planted_text_to_query_mapping_is_learned(staged):
  s = staged["summary"]
  assert s["train"]["loss_end"] < 0.2 * s["train"]["loss_start"]
  blob = json.loads((staged["ctx"].dir / d2q_outputs.QUERIES_FILE).read_text())
  names = list(CATEGORIES)
  with_text = [i for i, c in enumerate(staged["category"]) if c >= 0]
  right = sum(blob["queries"][i] == [CATEGORIES[names[staged["category"][i]]]]
              for i in with_text)
  assert right >= 0.9 * len(with_text)
  assert POISON not in {q for qs in blob["queries"] for q in qs}
  assert s["word_overlap_with_real_queries"] == s["match_with_real_queries"]["word_overlap"]
  assert s["match_with_real_queries"]["exact_match"] == right / len(with_text)
  # Real queries of shuffled items match about one item in six.
  assert s["match_if_shuffled"]["exact_match"] < 0.4


def test_items_without_text_are_kept_and_counted(staged):
  s, catalog = staged["summary"], staged["catalog"]
  blob = json.loads((staged["ctx"].dir / d2q_outputs.QUERIES_FILE).read_text())
  assert blob["item_ids"] == catalog.item_ids.tolist()
  assert blob["queries"][97] == [] and blob["queries"][98] == []
  assert all(len(q) == 1 for q in blob["queries"][:97])
  assert s["items"] == 99 and s["items_without_text"] == 2
  assert s["items_with_pseudo_query"] == 97 and s["pseudo_queries"] == 97
  assert all(e["pseudo"] for e in s["examples"])


def test_stage_resumes_from_its_checkpoint(staged):
  first, second = staged["first"]["train"], staged["summary"]["train"]
  assert first["steps"] == HALF and first["resumed_from"] is None
  assert second["resumed_from"] == HALF and second["steps"] == TRAIN_STEPS
  assert second["total_steps"] == TRAIN_STEPS


def _generate(staged, cfg, seed, texts=None):
  tokenizer = tok_lib.Tokenizer.load(staged["ctx"].dir / "tokenizer")
  t5_config = t5_lib.T5Config.from_config(cfg.model, tokenizer.vocab_size)
  catalog = staged["catalog"]
  texts = texts or [catalog.item_text(i) for i in range(catalog.num_items)]
  return d2q.generate_queries(t5_lib.T5(t5_config), staged["params"], tokenizer, texts,
                              cfg=cfg, seed=seed, progress=False)


def test_generation_is_deterministic_for_a_seed(staged):
  config = _config()
  cfg = config.doc2query
  seed = seeds.doc2query(config)
  blob = json.loads((staged["ctx"].dir / d2q_outputs.QUERIES_FILE).read_text())
  assert _generate(staged, cfg, seed) == blob["queries"]
  # A flat distribution: another seed draws other queries, the same seed the same ones.
  hot = copy.deepcopy(cfg)
  hot.update(temperature=5.0, top_k=0, top_p=1.0, num_queries=2)
  a, b, c = (_generate(staged, hot, s) for s in (1, 1, 2))
  assert a == b and a != c
  assert a[97] == a[98] == [] and max(len(q) for q in a) == 2
  # Beam search ignores the seed.
  beam = copy.deepcopy(cfg)
  beam.update(method="beam", beam_size=3, num_queries=2)
  assert _generate(staged, beam, 1) == _generate(staged, beam, 2)


def test_match_stats_count_items_with_real_queries():
  queries = ["office pen blue", "office pen red", "office desk", "office lamp", "tape"]
  common = d2q.common_words(queries, 0.5)
  assert common == {"office"}
  pseudo = [["office pen red"], ["office chair"], ["desk lamp", "tape"], [], ["x"]]
  real = [["office pen red"], ["office desk"], ["office lamp"], ["tape"], []]
  stats = d2q.match_stats(pseudo, real, common)
  assert stats == {"word_overlap": 3 / 4, "rare_word_overlap": 2 / 4, "exact_match": 1 / 4}
  assert d2q.match_stats([[]], [[]], common) == {
      "word_overlap": None, "rare_word_overlap": None, "exact_match": None}


def test_disabled_stage_writes_nothing(tmp_path):
  config = _config()
  config.doc2query.enabled = False
  ctx = _context(tmp_path)
  assert d2q_stage.run(config, ctx) == {"enabled": False}
  assert list(ctx.dir.iterdir()) == []
  assert d2q_outputs.load_pseudo_queries(ctx.dir, np.array(["A0000"])) is None


def test_load_pseudo_queries_checks_the_items(staged):
  d, ids = staged["ctx"].dir, staged["catalog"].item_ids
  got = d2q_outputs.load_pseudo_queries(d, ids)
  assert got == json.loads((d / d2q_outputs.QUERIES_FILE).read_text())["queries"]
  for other in (ids[:-1], ids[::-1], np.concatenate([ids, ["B0000"]])):
    with pytest.raises(pipeline.PipelineError, match="other items"):
      d2q_outputs.load_pseudo_queries(d, other)


def test_too_few_training_pairs_is_a_clear_error(tmp_path, monkeypatch):
  catalog, rows, _ = _world()
  fake = _FakeData(catalog, dict(rows, train=_rows([(0, 0), (1, 0)])))
  monkeypatch.setattr(d2q_stage.dataset, "load_catalog", fake.load_catalog)
  monkeypatch.setattr(d2q_stage.dataset, "load_rows", fake.load_rows)
  with pytest.raises(pipeline.PipelineError, match="2 .*training pairs"):
    d2q_stage.run(_config(), _context(tmp_path))
