"""A trained GenSAR run loaded for decoding: one loader for eval, infer and experiments.

What the model *was trained with* comes from the run's train stage
(`gensar_jax.train.outputs`): the parameters, T5 config, tokenizer, identifier tables and
the `tasks` section (prompt style, behaviour tokens, source limit), since prompts must be
written as in training. How to *decode* (beam width, decoding batch, scoring) comes from
the caller: eval and infer pass their live `eval` section, so `--config.eval.beam_size=50`
reaches both; the Python API and `experiments` default to the run's saved settings
(`TrainedModel.saved_decoding`).
"""

from __future__ import annotations

import dataclasses
import pathlib

from gensar_jax import ranking
from gensar_jax import tasks as tasks_lib
from gensar_jax.data import dataset
from gensar_jax.data import schema
from gensar_jax.model import t5 as t5_lib
from gensar_jax.train import outputs as train_outputs


@dataclasses.dataclass(frozen=True)
class Decoding:
  """How to decode: the `eval` section's beam_size, batch_size and score."""

  beam_size: int
  batch_size: int
  score: str

  @classmethod
  def from_config(cls, eval_section) -> "Decoding":
    return cls(int(eval_section.beam_size), int(eval_section.batch_size), str(eval_section.score))


@dataclasses.dataclass(frozen=True)
class TrainedModel:
  """A restored checkpoint with the catalog, prompts and model it decodes with."""

  bundle: train_outputs.DecodingBundle
  catalog: schema.Catalog
  builder: tasks_lib.TaskBuilder
  model: t5_lib.T5

  @classmethod
  def load(cls, train_dir: str | pathlib.Path, data_dir: str | pathlib.Path,
           which: str = "best") -> "TrainedModel":
    """Restores the `which` ("best" or "latest") checkpoint of a train stage directory,
    with the data stage's catalog (`data_dir`)."""
    bundle = train_outputs.load_for_decoding(train_dir, which)
    catalog = dataset.load_catalog(data_dir)
    builder = tasks_lib.TaskBuilder(catalog, bundle.identifiers, bundle.config.tasks)
    return cls(bundle, catalog, builder, t5_lib.T5(bundle.t5_config))

  @property
  def params(self):
    return self.bundle.params

  @property
  def step(self) -> int:
    return self.bundle.step

  @property
  def trained_config(self):
    """The whole pipeline config of the training run (saved beside the checkpoint)."""
    return self.bundle.config

  @property
  def saved_decoding(self) -> Decoding:
    """The decoding settings of the run's own `eval` section."""
    return Decoding.from_config(self.bundle.config.eval)

  def ranker(self, decoding: Decoding | None = None, *, mesh=None) -> ranking.GenerativeRanker:
    """The generative ranker with these decoding settings (default: `saved_decoding`)."""
    d = decoding or self.saved_decoding
    ranking.check_beam(d.beam_size, self.catalog.num_items)
    return ranking.GenerativeRanker(
        self.model, self.bundle.tokenizer, self.builder, beam_size=d.beam_size,
        batch_size=d.batch_size, max_source_len=int(self.bundle.config.tasks.max_source_len),
        score=d.score, mesh=mesh)
