"""Training loop, identifier building, the identifiers stage and save/reload."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from gensar_jax import pipeline
from gensar_jax.identifiers import build
from gensar_jax.identifiers import resolve
from gensar_jax.identifiers import stage
from gensar_jax.identifiers import table
from gensar_jax.identifiers import train as train_lib

DIMS = {"semantic": 24, "collaborative": 8}


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  cfg = dict(
      variant="joint", num_shared_levels=2, num_specific_levels=2, codebook_size=16,
      latent_dim=8, hidden_dims=(32, 16), commitment=0.25, sinkhorn_epsilon=0.003,
      sinkhorn_iters=50, learning_rate=1e-2, weight_decay=1e-5, batch_size=64, epochs=40,
      warmup_epochs=4, grad_clip=1.0, eval_every_epochs=10, kmeans_iters=50,
  )
  cfg.update(overrides)
  return ml_collections.ConfigDict(cfg)


def planted_inputs(n: int = 300, seed: int = 0) -> dict[str, np.ndarray]:
  """Embeddings around 40 planted centres, plus item-specific noise."""
  rng = np.random.default_rng(seed)
  group = rng.integers(0, 40, n)
  out = {}
  for kind, d in DIMS.items():
    centres = rng.standard_normal((40, d))
    out[kind] = (centres[group] + 0.3 * rng.standard_normal((n, d))).astype(np.float32)
  return out


@pytest.fixture(scope="module")
def trained():
  cfg = tiny_config()
  model = train_lib.build_model(cfg, DIMS)
  inputs = planted_inputs()
  return cfg, model, inputs, train_lib.train(cfg, model, inputs, seed=7)


def test_epochs_see_every_item_once_the_last_batch_short():
  assert train_lib.num_epoch_steps(10, 4) == 3
  assert train_lib.num_epoch_steps(8, 4) == 2
  perm = jnp.array([3, 0, 7, 9, 1, 5, 2, 8, 6, 4])
  full, rest = train_lib.epoch_batches(perm, 4)
  np.testing.assert_array_equal(full, [[3, 0, 7, 9], [1, 5, 2, 8]])
  np.testing.assert_array_equal(rest, [6, 4])
  full, rest = train_lib.epoch_batches(perm[:8], 4)
  assert full.shape == (2, 4) and rest.shape == (0,)


def test_schedule_warms_up_linearly_then_decays_to_zero():
  sched = train_lib.make_schedule(tiny_config(learning_rate=1e-3, epochs=10, warmup_epochs=2), 5)
  np.testing.assert_allclose([sched(s) for s in (0, 5, 10, 30, 50)],
                             [0.0, 5e-4, 1e-3, 5e-4, 0.0], atol=1e-9)


def test_training_learns_and_returns_the_best_evaluated_parameters(trained):
  cfg, model, inputs, result = trained
  assert [c["epoch"] for c in result.curve] == [0, 10, 20, 30, 40]
  assert result.steps_per_epoch == 5 and result.steps == 200  # 4 x 64 items, then 44
  # Planted structure is learned: the reconstruction error falls far below the inputs'
  # variance and keeps falling.
  variance = sum(float(v.var(0).mean()) for v in inputs.values())
  recon = [c["recon"] for c in result.curve[1:]]
  assert recon[-1] < 0.7 * recon[0]
  assert recon[-1] < 0.4 * variance
  # The kept parameters are those of the training evaluation (epoch 0, the untrained
  # encoders, does not compete) with the lowest mean collision rate among those whose
  # collisions can be resolved.
  assert any(c["resolvable"] for c in result.curve[1:])
  best = min(c["collision_mean"] for c in result.curve[1:] if c["resolvable"])
  assert result.best_epoch > 0
  assert result.best_collision["mean"] == best
  chosen = [c for c in result.curve if c["epoch"] == result.best_epoch][0]
  assert chosen["collision_mean"] == best and chosen["resolvable"]
  data = {k: jnp.asarray(v) for k, v in inputs.items()}
  level_codes, _ = jax.device_get(train_lib.make_assigner(model)(result.params, data))
  rates = train_lib.collision_rates(model.plan, level_codes)
  assert rates["semantic"] == chosen["collision_semantic"]
  assert rates["collaborative"] == chosen["collision_collaborative"]
  for name in model.plan.all_levels:
    assert chosen[f"usage_{name}"] == len(np.unique(level_codes[name]))


def test_built_identifiers_are_unique_and_share_the_leading_codes(trained):
  _, model, inputs, result = trained
  item_ids = np.array([f"item{i:03d}" for i in range(300)])
  ids, stats = build.build_identifiers(model, result.params, inputs, item_ids)
  np.testing.assert_array_equal(ids.item_ids, item_ids)
  for kind in ("semantic", "collaborative"):
    t = getattr(ids, kind)
    assert t.codes.shape == (300, 4) and t.codes.dtype == np.int32
    assert len(np.unique(t.codes, axis=0)) == 300
    assert stats["collision_after"][kind] == 0.0
    assert stats["code_usage_before"][kind]["M1"] == len(np.unique(t.codes[:, 0]))
    assert all(1 <= u <= 16 for u in stats["code_usage_after"][kind].values())
  assert ids.semantic.level_names == ("M1", "M2", "S1", "S2")
  assert ids.collaborative.level_names == ("M1", "M2", "R1", "R2")
  np.testing.assert_array_equal(ids.semantic.codes[:, :2], ids.collaborative.codes[:, :2])
  # Resolution changed only last codes, and exactly the reported number of them.
  data = {k: jnp.asarray(v) for k, v in inputs.items()}
  level_codes, _ = jax.device_get(train_lib.make_assigner(model)(result.params, data))
  raw = train_lib.kind_codes(model.plan, level_codes)
  for kind in ("semantic", "collaborative"):
    codes = getattr(ids, kind).codes
    np.testing.assert_array_equal(codes[:, :3], raw[kind][:, :3])
    assert int((codes[:, 3] != raw[kind][:, 3]).sum()) == stats["moved"][kind]
    assert stats["collision_before"][kind] == resolve.collision_rate(raw[kind])


def test_identifier_table_and_parameters_reload_bit_identically(trained, tmp_path):
  _, model, inputs, result = trained
  item_ids = np.array([f"B{i:09d}" for i in range(300)])
  ids, _ = build.build_identifiers(model, result.params, inputs, item_ids)
  table.save(tmp_path, ids)
  build.save_params(tmp_path, result.params)
  loaded = table.load(tmp_path)
  np.testing.assert_array_equal(loaded.item_ids, item_ids)
  for kind in ("semantic", "collaborative"):
    a, b = getattr(ids, kind), getattr(loaded, kind)
    assert b.codes.dtype == np.int32
    np.testing.assert_array_equal(a.codes, b.codes)
    assert (a.level_names, a.codebook_size) == (b.level_names, b.codebook_size)
  params = build.load_params(tmp_path)
  assert jax.tree.structure(params) == jax.tree.structure(jax.device_get(result.params))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(result.params)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  # Rebuilding from the reloaded parameters gives the same identifiers.
  rebuilt, _ = build.build_identifiers(model, params, inputs, item_ids)
  for kind in ("semantic", "collaborative"):
    np.testing.assert_array_equal(getattr(rebuilt, kind).codes, getattr(ids, kind).codes)
  # Saving what was loaded writes the same arrays again.
  table.save(tmp_path / "again.npz", loaded)
  with np.load(tmp_path / table.FILENAME) as f, np.load(tmp_path / "again.npz") as g:
    assert sorted(f.files) == sorted(g.files)
    for key in f.files:
      assert f[key].dtype == g[key].dtype
      np.testing.assert_array_equal(f[key], g[key])


def test_single_embedding_variant_uses_one_table_for_both_kinds():
  cfg = tiny_config(variant="semantic", num_shared_levels=1, num_specific_levels=2)
  model = train_lib.build_model(cfg, {"semantic": DIMS["semantic"]})
  inputs = {"semantic": planted_inputs()["semantic"]}
  params = train_lib.init_params(model, {"semantic": jnp.asarray(inputs["semantic"][:64])},
                                 jax.random.key(0), kmeans_iters=10)
  ids, stats = build.build_identifiers(model, params, inputs, np.arange(300).astype(str))
  assert ids.semantic.level_names == ids.collaborative.level_names == ("S1", "S2", "S3")
  np.testing.assert_array_equal(ids.semantic.codes, ids.collaborative.codes)
  assert len(np.unique(ids.semantic.codes, axis=0)) == 300
  assert stats["collision_before"]["semantic"] == stats["collision_before"]["collaborative"]


def _embed_dir(workdir: pathlib.Path, inputs, item_ids):
  embed = workdir / "embed"
  embed.mkdir(parents=True)
  np.save(embed / "semantic.npy", inputs["semantic"])
  np.save(embed / "collaborative.npy", inputs["collaborative"])
  np.save(embed / "item_ids.npy", item_ids)
  (embed / ".done").write_text("x\n")
  (workdir / "identifiers").mkdir()


def test_stage_writes_identifiers_parameters_and_summary(tmp_path):
  inputs = planted_inputs(200, seed=1)
  item_ids = np.array([f"A{i:04d}" for i in range(200)])
  _embed_dir(tmp_path, inputs, item_ids)
  config = ml_collections.ConfigDict(dict(seed=3, identifiers=tiny_config(epochs=4, eval_every_epochs=2)))
  summary = stage.run(config, pipeline.StageContext(tmp_path, "identifiers"))
  json.dumps(summary)  # the runner writes it as JSON
  ids = table.load(tmp_path / "identifiers")
  np.testing.assert_array_equal(ids.item_ids, item_ids)
  for kind in ("semantic", "collaborative"):
    assert len(np.unique(getattr(ids, kind).codes, axis=0)) == 200
    assert summary["collision_after"][kind] == 0.0
    assert 0.0 <= summary["collision_before"][kind] < 1.0
    levels = summary["level_names"][kind]
    assert list(summary["code_usage_before"][kind]) == levels
    assert summary["code_usage_after"][kind][levels[-1]] == len(
        np.unique(getattr(ids, kind).codes[:, -1]))
  assert summary["steps"] == 4 * 4 and summary["best_epoch"] in (0, 2, 4)
  params = build.load_params(tmp_path / "identifiers")
  assert params["codebook_M1"].shape == (16, 8)


def test_stage_rejects_bad_settings_and_inputs(tmp_path):
  config = ml_collections.ConfigDict(dict(seed=0, identifiers=tiny_config(latent_dim=7)))
  with pytest.raises(pipeline.PipelineError, match="latent_dim"):
    stage.validate(config)
  config = ml_collections.ConfigDict(dict(seed=0, identifiers=tiny_config(variant="x")))
  with pytest.raises(pipeline.PipelineError, match="variant"):
    stage.validate(config)
  inputs = planted_inputs(20)
  inputs["semantic"][3, 1] = np.nan
  _embed_dir(tmp_path, inputs, np.arange(20).astype(str))
  with pytest.raises(pipeline.PipelineError, match="NaN"):
    stage.load_embeddings(tmp_path / "embed", ("semantic", "collaborative"))


def test_selection_prefers_resolvable_parameters_over_fewer_collisions():
  crowded = {"resolvable": False, "collision_mean": 0.0}
  assert train_lib._rank({"resolvable": True, "collision_mean": 0.4}) > train_lib._rank(crowded)
  assert (train_lib._rank({"resolvable": True, "collision_mean": 0.1})
          > train_lib._rank({"resolvable": True, "collision_mean": 0.2}))
