"""The compute trend: log-linear fit, its crossing of a baseline, records to points."""

import math

import numpy as np
import pytest

from gensar_jax import compute_trend

TASKS = ("recommendation", "search")


def _record(name, steps, rec, search):
  base = {"sasrec": {"recommendation": {"sampled": {"ndcg@10": 0.25}}},
          "dense": {"search": {"sampled": {"ndcg@10": 0.16}}},
          "bm25": {"search": {"sampled": {"ndcg@10": 0.08}}},
          "popularity": {"recommendation": {"sampled": {"ndcg@10": 0.9}},
                         "search": {"sampled": {"ndcg@10": 0.9}}}}
  return {"name": name, "train": {"steps": steps},
          "best_validation": {"recommendation": {"ndcg@10": rec + 0.04},
                              "search": {"ndcg@10": search + 0.05}},
          "test": {"recommendation": {"sampled": {"ndcg@10": rec, "ndcg@10_se": 0.01}},
                   "search": {"sampled": {"ndcg@10": search, "ndcg@10_se": 0.01}}},
          "baselines": base}


def test_fit_recovers_a_planted_gain_per_doubling_and_its_crossing():
  steps = [500, 1000, 2000, 4000]
  values = [0.06 + 0.03 * math.log2(s / 500) for s in steps]
  a, b, b_se = compute_trend.fit(steps, values)
  assert b == pytest.approx(0.03) and b_se == pytest.approx(0.0, abs=1e-9)
  assert a + b * math.log2(500) == pytest.approx(0.06)
  # 0.06 + 0.03 * d = 0.24 at d = 6 doublings of 500 steps.
  assert compute_trend.crossing_steps(a, b, 0.24) == pytest.approx(500 * 2 ** 6)


def test_noisy_points_give_a_standard_error_and_two_points_none():
  rng = np.random.default_rng(0)
  steps = [500, 1000, 2000, 4000, 8000]
  values = [0.1 + 0.02 * math.log2(s) + rng.normal(0, 0.005) for s in steps]
  _, b, b_se = compute_trend.fit(steps, values)
  assert abs(b - 0.02) < 4 * b_se and 0 < b_se < 0.01
  assert math.isnan(compute_trend.fit([500, 2000], [0.1, 0.2])[2])
  with pytest.raises(ValueError, match="two different step counts"):
    compute_trend.fit([500, 500], [0.1, 0.2])


def test_a_flat_or_falling_trend_never_crosses():
  assert compute_trend.crossing_steps(0.1, 0.0, 0.2) is None
  assert compute_trend.crossing_steps(0.1, -0.01, 0.2) is None
  assert compute_trend.crossing_steps(0.1, 1e-17, 0.2) == math.inf  # Flat up to rounding.


def test_summary_targets_the_best_real_baseline_on_each_task():
  records = [_record("r500", 500, 0.06, 0.15), _record("r2000", 2000, 0.10, 0.19)]
  trend = compute_trend.summary(records, TASKS)
  rec, search = trend["recommendation"], trend["search"]
  assert (rec["target_name"], rec["target"]) == ("sasrec", 0.25)  # Popularity is no target.
  assert (search["target_name"], search["target"]) == ("dense", 0.16)
  assert rec["b"] == pytest.approx(0.02)  # 0.04 over two doublings.
  assert rec["steps_to_target"] == pytest.approx(2000 * 2 ** ((0.25 - 0.10) / 0.02))
  assert [p["validation"] for p in rec["points"]] == pytest.approx([0.10, 0.14])
  text = compute_trend.text(trend)
  assert "+7.5 doublings" in text and "0.0200 per doubling" in text
  del records[0]["best_validation"]
  assert "r500: 500 steps, test NDCG@10 0.0600 ± 0.0100 (validation –)" in compute_trend.text(
      compute_trend.summary(records, TASKS))


def test_a_record_without_test_figures_is_refused():
  bad = _record("x", 500, 0.1, 0.1)
  del bad["test"]["search"]
  with pytest.raises(ValueError, match="no test figures for search"):
    compute_trend.summary([bad, _record("y", 1000, 0.1, 0.1)], TASKS)
