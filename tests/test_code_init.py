"""Code-token embeddings from codebook vectors: placement, scale and geometry."""

import numpy as np
import pytest

from gensar_jax.model import code_init


def test_rows_replace_exactly_the_code_tokens_and_keep_the_geometry():
  rng = np.random.default_rng(0)
  k, d_model = 16, 64
  cb = {"M1": rng.normal(size=(k, 8)) * 5 + 3, "R1": rng.normal(size=(k, 4))}
  cb["M1"][1] = cb["M1"][0] + 1e-3  # two nearly identical codes
  emb = rng.normal(size=(10 + 2 * k, d_model)).astype(np.float32)
  offsets = {"M1": 10, "R1": 10 + k}
  out = code_init.apply(emb, cb, offsets, seed=1)
  np.testing.assert_array_equal(out[:10], emb[:10])  # other tokens untouched
  m1 = out[10:10 + k]
  assert abs(m1.std() - 1.0) < 0.25  # the scale of T5's random rows
  dist = np.linalg.norm(m1[:, None] - m1[None], axis=-1)
  assert dist[0, 1] < 0.01 * np.median(dist[np.triu_indices(k, 1)])
  # Distances between codes are preserved up to the projection's distortion.
  src = np.linalg.norm(cb["M1"][:, None] - cb["M1"][None], axis=-1)
  iu = np.triu_indices(k, 1)
  assert np.corrcoef(src[iu], dist[iu])[0, 1] > 0.9
  np.testing.assert_array_equal(out, code_init.apply(emb, cb, offsets, seed=1))  # seeded


def test_missing_codebook_and_flat_param_names():
  with pytest.raises(ValueError, match="no codebook"):
    code_init.apply(np.zeros((5, 4)), {}, {"M1": 0}, seed=0)
  flat = {"params/codebook_M1": np.ones((2, 3)), "params/encoder/kernel": np.zeros(1)}
  assert list(code_init.quantizer_codebooks(flat)) == ["M1"]
