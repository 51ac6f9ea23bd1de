"""Every stage's seed, derived from the config's seeds in one place.

The data and embed stages use the master `config.seed` itself; the others fold in a
stage salt so their random streams differ from each other's for the same master seed.
The formulas are fixed: changing one changes that stage's outputs (and fingerprints
nothing, so cached outputs would no longer match what the code would make).
"""

IDENTIFIERS_SALT = 3
TRAIN_INIT_SALT = 5
DOC2QUERY_SALT = 11


def identifiers(config) -> int:
  """The quantizer's initialisation, k-means and batch order."""
  return int(config.seed) * 1000 + IDENTIFIERS_SALT


def doc2query(config) -> int:
  """doc2query's initialisation, batches, sampling and pseudo-query shuffle."""
  return int(config.seed) + DOC2QUERY_SALT


def train(config) -> int:
  """The GenSAR training (example sampling, batch order, dropout): `config.train.seed`,
  or the master `config.seed` when that is 0."""
  return int(config.train.seed) or int(config.seed)


def model_init(config) -> int:
  """The GenSAR model's initialisation (and the code-token embeddings' projection)."""
  return train(config) + TRAIN_INIT_SALT
