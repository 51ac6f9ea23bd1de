"""Exact-value tests of the residual quantizer's math and modules (docs/design.md §3)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gensar_jax.identifiers import kmeans
from gensar_jax.identifiers import quantizer
from gensar_jax.identifiers import train as train_lib

# A hand-made codebook of K = 3 codes in 2-d and three residuals with known nearest codes.
CODEBOOK = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
RESIDUALS = np.array([[0.9, 0.1], [0.1, 1.5], [-0.2, -0.1]], np.float32)


def small_config(**overrides) -> ml_collections.ConfigDict:
  """A tiny quantizer config with the docs/design.md §3 structure."""
  cfg = dict(
      variant="joint", num_shared_levels=2, num_specific_levels=2, codebook_size=8,
      latent_dim=8, hidden_dims=(16, 12), commitment=0.25, sinkhorn_epsilon=0.003,
      sinkhorn_iters=50, learning_rate=1e-3, weight_decay=1e-5, batch_size=32, epochs=4,
      warmup_epochs=1, grad_clip=1.0, eval_every_epochs=2,
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def random_inputs(n: int, dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal((n, d)).astype(np.float32) for k, d in dims.items()}


def test_level_assigns_nearest_code_and_leaves_the_exact_residual():
  out = quantizer.quantize_level(jnp.asarray(RESIDUALS), jnp.asarray(CODEBOOK), commitment=0.25)
  np.testing.assert_array_equal(out.codes, [1, 2, 0])
  np.testing.assert_allclose(out.quantized, CODEBOOK[[1, 2, 0]], atol=1e-6)
  np.testing.assert_allclose(
      RESIDUALS - np.asarray(out.quantized), [[-0.1, 0.1], [0.1, -0.5], [-0.2, -0.1]], atol=1e-6
  )
  # Both loss terms have the value mse(e, r): (1 + alpha) * mean squared error.
  sq = np.array([0.01, 0.01, 0.01, 0.25, 0.04, 0.01])
  np.testing.assert_allclose(out.loss, 1.25 * sq.mean(), rtol=1e-5)
  np.testing.assert_allclose(
      quantizer.squared_distances(jnp.asarray(RESIDUALS), jnp.asarray(CODEBOOK))[0],
      [0.82, 0.02, 4.42], atol=1e-6,
  )


def test_straight_through_gradient_is_the_identity_on_the_input():
  r = jnp.asarray(RESIDUALS)
  e = jnp.asarray(CODEBOOK)
  jac = jax.jacobian(lambda x: quantizer.quantize_level(x, e, 0.25).quantized)(r)
  np.testing.assert_array_equal(jac.reshape(6, 6), np.eye(6))
  # No gradient reaches the codebook through the quantized output ...
  jac_e = jax.jacobian(lambda c: quantizer.quantize_level(r, c, 0.25).quantized)(e)
  np.testing.assert_array_equal(jac_e, np.zeros_like(jac_e))
  # ... and the level loss moves codes towards residuals, residuals (alpha-weighted) towards codes.
  g_r, g_e = jax.grad(lambda x, c: quantizer.quantize_level(x, c, 0.25).loss, (0, 1))(r, e)
  diff = RESIDUALS - CODEBOOK[[1, 2, 0]]
  np.testing.assert_allclose(g_r, 0.25 * 2 * diff / 6, rtol=1e-5, atol=1e-7)
  want_e = np.zeros_like(CODEBOOK)
  np.add.at(want_e, [1, 2, 0], -2 * diff / 6)
  np.testing.assert_allclose(g_e, want_e, rtol=1e-5, atol=1e-7)


def test_argmin_rows_matches_argmin_and_takes_the_first_of_ties():
  d = np.random.default_rng(0).standard_normal((50, 17)).astype(np.float32)
  np.testing.assert_array_equal(quantizer.argmin_rows(jnp.asarray(d)), np.argmin(d, axis=1))
  ties = np.array([[2.0, 1.0, 1.0, 3.0], [0.0, 0.0, 0.0, 0.0], [5.0, 4.0, 3.0, 3.0]], np.float32)
  np.testing.assert_array_equal(quantizer.argmin_rows(jnp.asarray(ties)), [1, 0, 2])
  nan_row = np.array([[1.0, np.nan, 0.0]], np.float32)
  assert int(quantizer.argmin_rows(jnp.asarray(nan_row))[0]) == 2  # stays a valid index


def reference_sinkhorn(d: np.ndarray, epsilon: float, iters: int) -> np.ndarray:
  """The plain (non-log) algorithm in float64, as the authors' PyTorch code runs it."""
  q = np.exp(-d.astype(np.float64) / epsilon)
  q /= q.sum()
  b, k = q.shape
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True) * b
    q /= q.sum(axis=0, keepdims=True) * k
  return q


def test_sinkhorn_is_doubly_stochastic_and_matches_the_float64_plain_algorithm():
  rng = np.random.default_rng(1)
  d = quantizer.rescale_to_unit(jnp.asarray(rng.standard_normal((64, 16)), jnp.float32))
  assert float(jnp.min(d)) == pytest.approx(-1.0, abs=1e-4)
  assert float(jnp.max(d)) == pytest.approx(1.0, abs=1e-4)
  # exp(1 / 0.003) overflows float32: only the log domain can run this in float32.
  with np.errstate(over="ignore"):
    assert np.isinf(np.exp(np.float32(1.0 / 0.003)))
  log_p = np.asarray(quantizer.sinkhorn_log(d, 0.003, 50), np.float64)
  assert np.isfinite(log_p).all()
  p = np.exp(log_p)
  # Each iteration ends on the column step: columns are exact, rows converge slowly at
  # this small epsilon (the authors' 50 iterations leave them within a factor 1.6).
  np.testing.assert_allclose(p.sum(axis=0), np.full(16, 1 / 16), rtol=1e-4)
  np.testing.assert_allclose(p.sum(axis=1), np.full(64, 1 / 64), rtol=0.6)
  ref = reference_sinkhorn(np.asarray(d), 0.003, 50)
  np.testing.assert_allclose(p, ref, atol=1e-6)
  # Absorbing the scalings at every iteration (the plain log-domain algorithm) or only
  # when they grow large gives the same plan.
  p_every = np.exp(np.asarray(quantizer.sinkhorn_log(d, 0.003, 50, absorb_at=0.0), np.float64))
  np.testing.assert_allclose(p_every, ref, atol=1e-6)
  p_long = np.exp(np.asarray(quantizer.sinkhorn_log(d, 0.003, 1000), np.float64))
  np.testing.assert_allclose(p_long.sum(axis=0), np.full(16, 1 / 16), rtol=1e-4)
  np.testing.assert_allclose(p_long.sum(axis=1), np.full(64, 1 / 64), rtol=3e-3)
  np.testing.assert_array_equal(
      quantizer.sinkhorn_codes(d, 0.003, 50), np.argmax(ref, axis=1)
  )


def test_sinkhorn_handles_outlier_rows_whose_kernel_underflows():
  rng = np.random.default_rng(2)
  r = rng.standard_normal((64, 4)).astype(np.float32)
  r[:3] *= 40.0  # far from every code: their exp(-d / eps) rows vanish next to the others
  codebook = rng.standard_normal((16, 4)).astype(np.float32)
  d = quantizer.rescale_to_unit(quantizer.squared_distances(jnp.asarray(r), jnp.asarray(codebook)))
  log_k = -np.asarray(d, np.float64) / 0.003
  log_k -= np.log(np.exp(log_k - log_k.max()).sum()) + log_k.max()
  assert np.all(log_k[:3].max(axis=1) < np.log(np.finfo(np.float32).tiny))
  log_p = np.asarray(quantizer.sinkhorn_log(d, 0.003, 50), np.float64)
  assert np.isfinite(log_p).all()
  np.testing.assert_allclose(np.exp(log_p), reference_sinkhorn(np.asarray(d), 0.003, 50), atol=1e-6)


def test_sinkhorn_spreads_a_collapsed_batch_over_the_codes():
  rng = np.random.default_rng(0)
  codebook = rng.standard_normal((16, 4)).astype(np.float32)
  r = (codebook[3] + 1e-2 * rng.standard_normal((64, 4))).astype(np.float32)
  nearest = quantizer.quantize_level(jnp.asarray(r), jnp.asarray(codebook), 0.25)
  np.testing.assert_array_equal(nearest.codes, np.full(64, 3))
  balanced = quantizer.quantize_level(jnp.asarray(r), jnp.asarray(codebook), 0.25, balanced=True)
  counts = np.bincount(np.asarray(balanced.codes), minlength=16)
  assert (counts > 0).sum() >= 12, counts
  assert counts.max() <= 12, counts
  # The straight-through output is the chosen codes, whatever chose them.
  np.testing.assert_allclose(balanced.quantized, codebook[np.asarray(balanced.codes)], atol=1e-6)


def test_kmeans_finds_separated_clusters_and_keeps_a_point_per_centre_when_k_equals_n():
  rng = np.random.default_rng(0)
  blobs = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (30, 2))]).astype(np.float32)
  centres = np.asarray(kmeans.kmeans(jnp.asarray(blobs), 2, jax.random.key(0)))
  centres = centres[np.argsort(centres[:, 0])]
  np.testing.assert_allclose(centres, [blobs[:50].mean(0), blobs[50:].mean(0)], atol=1e-5)
  points = rng.standard_normal((8, 3)).astype(np.float32)
  centres = np.asarray(kmeans.kmeans(jnp.asarray(points), 8, jax.random.key(1)))
  np.testing.assert_array_equal(np.unique(centres, axis=0), np.unique(points, axis=0))


def test_mlps_have_the_design_widths_xavier_normal_weights_and_zero_biases():
  model = train_lib.build_model(
      small_config(hidden_dims=(512, 256, 128, 64), latent_dim=64, codebook_size=256),
      {"semantic": 384, "collaborative": 64},
  )
  x = random_inputs(4, {"semantic": 384, "collaborative": 64})
  params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
  widths = lambda mlp: [tuple(mlp[f"dense_{i}"]["kernel"].shape) for i in range(len(mlp))]
  assert widths(params["encoder_semantic"]) == [(384, 512), (512, 256), (256, 128), (128, 64), (64, 32)]
  assert widths(params["decoder_semantic"]) == [(32, 64), (64, 128), (128, 256), (256, 512), (512, 384)]
  assert widths(params["encoder_collaborative"])[0] == (64, 512)
  assert widths(params["decoder_collaborative"])[-1] == (512, 64)
  for name in ("M1", "M2"):
    assert params[f"codebook_{name}"].shape == (256, 64)
  for name in ("S1", "S2", "R1", "R2"):
    assert params[f"codebook_{name}"].shape == (256, 32)
  # The one-draw initialiser of `train.init_params` fills the same tree the same way.
  drawn = quantizer.init_from_one_draw(params, jax.random.key(1))
  assert jax.tree.structure(drawn) == jax.tree.structure(params)
  big = np.asarray(drawn["encoder_semantic"]["dense_0"]["kernel"])
  assert big.std() == pytest.approx(np.sqrt(2 / (384 + 512)), rel=0.03)
  assert abs(big.mean()) < 3e-3
  small = np.asarray(drawn["decoder_collaborative"]["dense_4"]["kernel"])
  assert small.std() == pytest.approx(np.sqrt(2 / (512 + 64)), rel=0.03)
  assert not np.allclose(big[:64, :64], np.asarray(drawn["encoder_semantic"]["dense_1"]["kernel"])[:64, :64])
  np.testing.assert_array_equal(drawn["encoder_semantic"]["dense_0"]["bias"], 0)
  # ReLU between layers, none after the last; Xavier-normal kernels, zero biases.
  mlp = quantizer.MLP((512, 3))
  layer = mlp.init(jax.random.key(0), jnp.zeros((1, 384)))["params"]
  kernel = np.asarray(layer["dense_0"]["kernel"])
  assert kernel.std() == pytest.approx(np.sqrt(2 / (384 + 512)), rel=0.03)
  np.testing.assert_array_equal(layer["dense_0"]["bias"], 0)
  x = np.random.default_rng(0).standard_normal((5, 384)).astype(np.float32)
  h = np.maximum(x @ kernel, 0)
  np.testing.assert_allclose(mlp.apply({"params": layer}, x), h @ np.asarray(layer["dense_1"]["kernel"]),
                             rtol=1e-4, atol=1e-5)


def test_residual_walk_wires_shared_then_specific_levels_on_the_halves():
  plan = quantizer.make_plan("joint", 2, 2)
  assert plan.kind_levels("semantic") == ("M1", "M2", "S1", "S2")
  assert plan.kind_levels("collaborative") == ("M1", "M2", "R1", "R2")
  assert plan.balanced_levels() == {"S2", "R2"}
  rng = np.random.default_rng(0)
  books = {n: rng.standard_normal((5, 4 if n[0] == "M" else 2)).astype(np.float32)
           for n in plan.all_levels}
  seen = {}

  def level_fn(name, r, balanced):
    seen[name] = (np.asarray(r), balanced)
    return quantizer.quantize_level(r, jnp.asarray(books[name]), 0.25)

  r0 = rng.standard_normal((6, 4)).astype(np.float32)
  walk = quantizer.residual_walk(plan, jnp.asarray(r0), level_fn, balanced=True)
  assert {n: b for n, (_, b) in seen.items()} == {
      "M1": False, "M2": False, "S1": False, "S2": True, "R1": False, "R2": True}

  # The same walk in numpy.
  def nearest(r, e):
    return e[np.argmin(((r[:, None] - e[None]) ** 2).sum(-1), axis=1)]

  e1 = nearest(r0, books["M1"])
  e2 = nearest(r0 - e1, books["M2"])
  r_shared = r0 - e1 - e2
  np.testing.assert_allclose(seen["M2"][0], r0 - e1, atol=1e-6)
  np.testing.assert_allclose(seen["S1"][0], r_shared[:, :2], atol=1e-6)
  np.testing.assert_allclose(seen["R1"][0], r_shared[:, 2:], atol=1e-6)
  s1 = nearest(r_shared[:, :2], books["S1"])
  c1 = nearest(r_shared[:, 2:], books["R1"])
  np.testing.assert_allclose(seen["S2"][0], r_shared[:, :2] - s1, atol=1e-6)
  s2 = np.asarray(walk["levels"]["S2"].quantized)
  c2 = np.asarray(walk["levels"]["R2"].quantized)
  np.testing.assert_allclose(walk["z_hat"]["semantic"], (e1 + e2)[:, :2] + s1 + s2, atol=1e-6)
  np.testing.assert_allclose(walk["z_hat"]["collaborative"], (e1 + e2)[:, 2:] + c1 + c2, atol=1e-6)


@pytest.fixture(scope="module")
def joint():
  """A small joint model, 40 items, codebooks k-means initialised on all of them."""
  dims = {"semantic": 10, "collaborative": 6}
  model = train_lib.build_model(small_config(), dims)
  data = {k: jnp.asarray(v) for k, v in random_inputs(40, dims).items()}
  params = train_lib.init_params(model, data, jax.random.key(3), kmeans_iters=50)
  walk = jax.jit(lambda p, x: model.apply(
      {"params": p}, x, method=lambda m, x: m.quantize(m.encode(x), balanced=False)))(params, data)
  return model, data, params, walk


def test_loss_is_reconstruction_plus_the_mean_of_the_level_losses(joint):
  model, x, params, _ = joint

  @jax.jit
  def forward(params, x):
    loss, aux = model.apply({"params": params}, x, train=True)
    walk = model.apply({"params": params}, x, True,
                       method=lambda m, x, b: m.quantize(m.encode(x), balanced=b))
    recon = model.apply({"params": params}, walk["z_hat"], method=quantizer.RQVAE.decode)
    return loss, aux, walk, recon

  loss, aux, walk, recon = forward(params, x)
  want_recon = sum(np.mean((np.asarray(recon[k]) - np.asarray(x[k])) ** 2) for k in x)
  level_losses = []
  for name in model.plan.all_levels:
    lvl = walk["levels"][name]
    e = np.asarray(params[f"codebook_{name}"])[np.asarray(lvl.codes)]
    level_losses.append(1.25 * np.mean((e - np.asarray(lvl.residual_in)) ** 2))
  assert len(level_losses) == 6
  np.testing.assert_allclose(aux["recon"], want_recon, rtol=1e-5)
  np.testing.assert_allclose(aux["rq"], np.mean(level_losses), rtol=1e-5)
  np.testing.assert_allclose(loss, want_recon + np.mean(level_losses), rtol=1e-5)
  for name in model.plan.all_levels:
    np.testing.assert_array_equal(aux["codes"][name], walk["levels"][name].codes)


def test_kmeans_init_fits_each_level_to_the_first_batch_residuals(joint):
  model, _, params, walk = joint
  for name in model.plan.all_levels:
    # Each codebook is a Lloyd fixed point of the residuals its level sees: every used
    # code is the mean of the residuals assigned to it.
    r = np.asarray(walk["levels"][name].residual_in)
    codes = np.asarray(walk["levels"][name].codes)
    book = np.asarray(params[f"codebook_{name}"])
    used = np.unique(codes)
    assert len(used) >= 6, (name, codes)
    for c in used:
      np.testing.assert_allclose(book[c], r[codes == c].mean(0), atol=1e-5)
  # The M2 residuals are what M1's k-means codes leave.
  np.testing.assert_allclose(
      walk["levels"]["M2"].residual_in,
      np.asarray(walk["levels"]["M1"].residual_in)
      - np.asarray(params["codebook_M1"])[np.asarray(walk["levels"]["M1"].codes)], atol=1e-6)


def test_shared_codes_are_identical_in_both_identifiers(joint):
  model, data, params, walk = joint
  level_codes, last = jax.device_get(train_lib.make_assigner(model, chunk=16)(params, data))
  codes = train_lib.kind_codes(model.plan, level_codes)
  assert codes["semantic"].shape == codes["collaborative"].shape == (40, 4)
  np.testing.assert_array_equal(codes["semantic"][:, :2], codes["collaborative"][:, :2])
  np.testing.assert_array_equal(codes["semantic"][:, 2], level_codes["S1"])
  np.testing.assert_array_equal(codes["collaborative"][:, 3], level_codes["R2"])
  assert not np.array_equal(codes["semantic"][:, 2:], codes["collaborative"][:, 2:])
  assert last["semantic"].shape == last["collaborative"].shape == (40, 4)
  np.testing.assert_array_equal(last["collaborative"], walk["levels"]["R2"].residual_in)
  # The chunked assigner (3 chunks, the last padded) agrees with one unchunked pass.
  for name in model.plan.all_levels:
    np.testing.assert_array_equal(level_codes[name], walk["levels"][name].codes)


@pytest.mark.parametrize(
    "variant,lm,ln,k,latent",
    [("semantic", 2, 2, 8, 8), ("collaborative", 1, 2, 5, 6), ("joint", 1, 3, 6, 10),
     ("joint", 0, 2, 8, 8), ("joint", 2, 0, 8, 8)],
)
def test_variants_have_the_configured_levels_and_widths(variant, lm, ln, k, latent):
  dims = {"semantic": 10, "collaborative": 6}
  cfg = small_config(variant=variant, num_shared_levels=lm, num_specific_levels=ln,
                     codebook_size=k, latent_dim=latent)
  plan = quantizer.make_plan(variant, lm, ln)
  used = {kind: d for kind, d in dims.items() if variant in ("joint", kind)}
  model = train_lib.build_model(cfg, used)
  data = {kk: jnp.asarray(v) for kk, v in random_inputs(24, used).items()}
  params = train_lib.init_params(model, data, jax.random.key(0), kmeans_iters=5)
  assert set(p for p in params if p.startswith("encoder")) == {f"encoder_{kk}" for kk in used}
  for name in plan.all_levels:
    width = latent if name.startswith("M") else latent // 2
    assert params[f"codebook_{name}"].shape == (k, width)
  loss, _ = jax.jit(lambda p, x: model.apply({"params": p}, x, train=True))(params, data)
  assert np.isfinite(loss)
  level_codes, _ = jax.device_get(train_lib.make_assigner(model)(params, data))
  codes = train_lib.kind_codes(plan, level_codes)
  for kind in ("semantic", "collaborative"):
    assert codes[kind].shape == (24, lm + ln)
    assert codes[kind].min() >= 0 and codes[kind].max() < k
  if variant == "joint":
    assert plan.kind_levels("semantic")[:lm] == tuple(f"M{i + 1}" for i in range(lm))
    assert plan.kind_levels("collaborative")[lm:] == tuple(f"R{i + 1}" for i in range(ln))
    np.testing.assert_array_equal(codes["semantic"][:, :lm], codes["collaborative"][:, :lm])
  else:
    prefix = "S" if variant == "semantic" else "R"
    assert plan.all_levels == tuple(f"{prefix}{i + 1}" for i in range(lm + ln))
    np.testing.assert_array_equal(codes["semantic"], codes["collaborative"])
    assert len(plan.balanced_levels()) == 1


def test_bad_level_counts_are_rejected():
  with pytest.raises(ValueError, match="variant"):
    quantizer.make_plan("both", 2, 2)
  with pytest.raises(ValueError, match="L_m"):
    quantizer.make_plan("joint", 0, 0)
