"""The study record and table, and the mean ± std over seeds."""

import json

import numpy as np

from gensar_jax import experiments


def _metrics(v):
  m = {"ndcg@10": v, "ndcg@10_se": 0.01, "hr@10": 2 * v, "count": 10}
  return {"recommendation": {"sampled": m, "full": m}, "search": {"sampled": m},
          "baselines": {"sasrec": {"recommendation": {"sampled": m}}}}


def test_seed_summary_is_mean_and_sample_std():
  s = experiments.seed_summary([_metrics(0.1), _metrics(0.2), _metrics(0.3)])
  mean, std = s["gensar"]["recommendation"]["sampled"]["ndcg@10"]
  np.testing.assert_allclose([mean, std], [0.2, 0.1])
  assert "ndcg@10_se" not in s["gensar"]["search"]["sampled"]
  np.testing.assert_allclose(s["sasrec"]["recommendation"]["sampled"]["hr@10"], [0.4, 0.2])
  md = experiments.seeds_markdown(s, 3)
  assert "| gensar | recommendation | sampled | 0.2000 ± 0.1000 | 0.4000 ± 0.2000 |" in md


def test_record_reads_curve_summary_and_metrics(tmp_path):
  (tmp_path / "train").mkdir()
  (tmp_path / "eval").mkdir()
  best = {"recommendation/ndcg@10": 0.3, "recommendation/ndcg@10_se": 0.02,
          "search/ndcg@10": 0.4, "search/ndcg@10_se": 0.03}
  (tmp_path / "train" / "summary.json").write_text(json.dumps(
      {"steps": 50, "minutes": 2.5, "examples_per_s": 99.0, "best_validation": best}))
  (tmp_path / "train" / "curve.json").write_text(json.dumps(
      {"validation": [{"step": 50, "minutes": 2.4, "recommendation/ndcg@10": 0.3, "score": 1}]}))
  metrics = _metrics(0.25)
  metrics["tests"] = {"recommendation": {"sampled": {"p": 0.5}}}
  (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
  rec = experiments.record(tmp_path, "base", "python -m gensar_jax.main ...", "a note")
  assert rec["validation"] == [{"step": 50, "minutes": 2.4, "recommendation/ndcg@10": 0.3}]
  assert rec["best_validation"]["search"] == {"ndcg@10": 0.4, "ndcg@10_se": 0.03}
  assert rec["test"]["recommendation"]["sampled"]["ndcg@10"] == 0.25
  row = experiments.table([rec]).splitlines()[-1]
  assert row.startswith("| `base` | 2.5 | 50 | 99 | 0.3000 ± 0.0200 | 0.4000 ± 0.0300 |")
  assert "0.2500 ± 0.0100" in row and row.endswith("a note |")


def test_compare_is_a_paired_test_on_the_same_validation_rows(monkeypatch):
  # Run A ranks every row's target first; run B ranks it 2nd on even rows, 1st on odd ones.
  n = 40
  ranks = {"a": np.ones(n), "b": np.where(np.arange(n) % 2 == 0, 2.0, 1.0)}
  monkeypatch.setattr(experiments, "validation_ranks",
                      lambda w: {t: ranks[w] for t in experiments.TASKS})
  got = experiments.compare("a", "b")
  b_gain = (1.0 + 1 / np.log2(3)) / 2  # NDCG@10 of rank 1 and rank 2, averaged.
  for task in experiments.TASKS:
    t = got[task]
    np.testing.assert_allclose([t["a"], t["b"], t["mean_diff"]], [1.0, b_gain, 1.0 - b_gain])
    assert t["count"] == n and t["p"] < 1e-6


def test_popularity_alignment_measures_how_far_scores_follow_popularity():
  rng = np.random.default_rng(0)
  pop = rng.integers(0, 1000, size=(30, 100))
  pop[:, 0] = 0  # The positive is the least popular candidate of every row.
  follows = experiments.popularity_alignment(np.log1p(pop), pop, betas=(0.0, 1.0, 2.0))
  np.testing.assert_allclose(follows["spearman"], 1.0, atol=1e-3)
  assert follows["positive_popularity_percentile"] == 0.0
  # Scores that are exactly the prior rank the positive last; beta = 1 takes all of it
  # out (every score ties, so ranks are random); beta = 2 inverts it (positive first).
  ndcg = follows["ndcg@10"]
  assert ndcg[0.0] < 0.01 < ndcg[1.0] < 0.3 < 0.95 < ndcg[2.0]  # (ties with other pop-0 items)
  against = experiments.popularity_alignment(-np.log1p(pop), pop)
  np.testing.assert_allclose(against["spearman"], -1.0, atol=1e-3)  # (ties break by position)


def test_prior_weight_is_chosen_by_ndcg_on_the_given_rows():
  from gensar_jax import experiments  # pylint: disable=g-import-not-at-top

  # The positive (column 0) is the least popular candidate; the scores follow popularity
  # plus a small edge for the positive: removing the prior with weight >= 1 ranks it first.
  log_prior = np.tile(np.array([0.0, 1.0, 2.0, 3.0]), (5, 1))
  scores = log_prior.copy()
  scores[:, 0] += 0.5
  beta, by_beta = experiments.choose_prior_weight(scores, log_prior, (0.0, 0.5, 1.0, 2.0))
  assert by_beta[0.0] < by_beta[1.0] == 1.0
  assert beta == 1.0  # The smallest weight with the best NDCG@10.
