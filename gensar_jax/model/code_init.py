"""Code-token embeddings initialised from the quantizer's codebook vectors.

A code token `<M1_17>` names one vector of one codebook of the residual quantizer; items
whose identifiers share similar codes have similar embeddings. Starting the T5's
token-embedding rows of every level's codes from those vectors (instead of random
rows) carries that geometry into the model: under tied embeddings the output
projection then also scores codes close to a predicted code alike.

Each level's codebook `[K, d_l]` is centred and scaled to unit variance, then mapped to
the model width by a fixed Gaussian projection `[d_l, D] / sqrt(d_l)`, so the rows have
the same scale as the random ones they replace (T5's embeddings start at std 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CODE_INITS = ("random", "codebook")


def codebook_rows(codebook_KxC: np.ndarray, d_model: int, seed: int) -> np.ndarray:
  """`[K, d_model]` embedding rows for one level's codebook."""
  cb = np.asarray(codebook_KxC, np.float64)
  cb = cb - cb.mean(axis=0, keepdims=True)
  cb = cb / max(float(cb.std()), 1e-12)
  proj = np.random.default_rng(seed).standard_normal((cb.shape[1], d_model))
  return (cb @ proj / np.sqrt(cb.shape[1])).astype(np.float32)


def apply(embedding_VxD: np.ndarray, codebooks: Mapping[str, np.ndarray],
          level_offsets: Mapping[str, int], seed: int) -> np.ndarray:
  """A copy of the token embedding with every level's code rows from its codebook.

  Args:
    embedding_VxD: the model's initial token embedding.
    codebooks: level name -> `[K, d_l]` codebook (the quantizer's parameters).
    level_offsets: the tokenizer's first token id of each level's codes.
    seed: seed of the projections (one stream per level).
  """
  out = np.array(embedding_VxD, np.float32, copy=True)
  d_model = out.shape[1]
  for i, (name, first) in enumerate(sorted(level_offsets.items())):
    if name not in codebooks:
      raise ValueError(f"no codebook for identifier level {name}; have {sorted(codebooks)}")
    rows = codebook_rows(codebooks[name], d_model, seed + 7919 * (i + 1))
    out[first:first + len(rows)] = rows
  return out


def quantizer_codebooks(flat_params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Level name -> codebook from the identifiers stage's flat `params.npz` keys."""
  out = {}
  for key, value in flat_params.items():
    leaf = key.split("/")[-1]
    if leaf.startswith("codebook_"):
      out[leaf[len("codebook_"):]] = np.asarray(value)
  return out
