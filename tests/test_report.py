"""The report stage: tables equal metrics.json, ablations are picked up, plots are written."""

import json
import re

import ml_collections
import numpy as np
import pytest

from gensar_jax import metrics as metrics_lib
from gensar_jax import pipeline
from gensar_jax.report import stage as report_stage
from gensar_jax.report import tables


def _metrics(rng, n=100):
  m = {k: float(np.round(rng.random(), 6)) for k in metrics_lib.METRIC_KEYS}
  m.update({f"{k}_se": float(np.round(rng.random() / 100, 6)) for k in metrics_lib.METRIC_KEYS})
  m["count"] = n
  return m


def _write_run(workdir, rng, with_baselines=True, variant="joint"):
  metrics = {t: {"sampled": _metrics(rng), "full": _metrics(rng)}
             for t in ("recommendation", "search")}
  metrics["checkpoint_step"] = 7
  metrics["recommendation"]["agreement"] = {"top10_equal": 0.25, "top1_equal": 0.5,
                                            "same_rank": 0.75}
  metrics["tests"] = {"search": {"sampled": {"versus": "dense", "metric": "ndcg@10",
                                             "mean_diff": 0.0123, "se_diff": 0.004, "t": 3.1,
                                             "p": 0.0021, "count": 100}}}
  if with_baselines:
    metrics["baselines"] = {
        "sasrec": {"recommendation": {"sampled": _metrics(rng), "full": _metrics(rng)}},
        "bm25": {"search": {"sampled": _metrics(rng), "full": _metrics(rng)}},
        "dense": {"search": {"sampled": _metrics(rng), "full": _metrics(rng)}},
        "popularity": {t: {"sampled": _metrics(rng), "full": _metrics(rng)}
                       for t in ("recommendation", "search")},
    }
  (workdir / "eval").mkdir(parents=True)
  (workdir / "eval" / "metrics.json").write_text(json.dumps(metrics))
  (workdir / "identifiers").mkdir()
  rates = {"semantic": 0.012, "collaborative": 0.007}
  if variant != "joint":
    rates = {k: 0.02 for k in rates}
  (workdir / "identifiers" / "summary.json").write_text(json.dumps(
      {"variant": variant, "collision_before": rates}))
  (workdir / "train").mkdir()
  (workdir / "train" / "metrics.jsonl").write_text("".join(
      json.dumps({"step": s, "kind": "train", "loss": 5.0 / s}) + "\n" for s in range(1, 30))
      + json.dumps({"step": 29, "kind": "validation", "score": 0.2}) + "\n")
  for stage in ("eval", "identifiers", "train"):  # Finished stages (the report reads them).
    (workdir / stage / pipeline._DONE).write_text("planted\n")  # pylint: disable=protected-access
  return metrics


def _config():
  c = ml_collections.ConfigDict()
  c.preset = "cpu"
  c.data = ml_collections.ConfigDict({"category": "Demo"})
  c.report = ml_collections.ConfigDict({"plots": True})
  return c


def test_report_numbers_equal_metrics_json(tmp_path):
  rng = np.random.default_rng(0)
  main = _write_run(tmp_path, rng)
  abl = _write_run(tmp_path / "ablations" / "only_semantic", rng, False, "semantic")
  ctx = pipeline.StageContext(tmp_path, "report")
  ctx.dir.mkdir()
  summary = report_stage.run(_config(), ctx)
  assert summary["methods"] == ["GenSAR", "SASRec", "BM25", "Dense (text encoder)",
                                "Popularity", "GenSAR only_semantic"]
  assert {"tradeoff.png", "collisions.png", "training.png"} <= set(summary["files"])
  for name in ("tradeoff.png", "collisions.png", "training.png"):
    assert (ctx.dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  results = json.loads((ctx.dir / "results.json").read_text())["methods"]
  by_name = {e["method"]: e for e in results}
  assert by_name["GenSAR"]["recommendation"] == main["recommendation"]
  assert by_name["GenSAR"]["search"] == main["search"]
  assert by_name["BM25"]["search"] == main["baselines"]["bm25"]["search"]
  assert "recommendation" not in by_name["BM25"]
  assert by_name["GenSAR only_semantic"]["search"] == abl["search"]
  # Every number in the Markdown table is the 4-decimal rounding of metrics.json.
  md = (ctx.dir / "results.md").read_text()
  section = md.split("## Search: 100 candidates")[1].split("##")[0]
  row = next(l for l in section.splitlines() if l.startswith("| Dense"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  want = main["baselines"]["dense"]["search"]["sampled"]
  assert cells[1:6] == [f"{want[k]:.4f} ± {want[k + '_se']:.4f}" for k in metrics_lib.METRIC_KEYS]
  assert cells[6] == str(want["count"])
  assert len(re.findall(r"^## ", md, flags=re.M)) == 6
  assert "| search | sampled | Dense (text encoder) | +0.0123 ± 0.0040 | 0.0021 |" in md
  assert "| recommendation | 0.250 | 0.500 | 0.750 |" in md


def test_collision_rates_per_run(tmp_path):
  rng = np.random.default_rng(1)
  _write_run(tmp_path, rng)
  _write_run(tmp_path / "ablations" / "only_collaborative", rng, False, "collaborative")
  rates = report_stage.collision_rates(tmp_path)
  assert rates == {"GenSAR": {"semantic": 0.012, "collaborative": 0.007},
                   "only_collaborative": {"collaborative": 0.02}}


def test_nothing_to_report_is_a_clear_error(tmp_path):
  ctx = pipeline.StageContext(tmp_path, "report")
  ctx.dir.mkdir()
  with pytest.raises(pipeline.PipelineError, match="nothing to report"):
    report_stage.run(_config(), ctx)
  assert tables.collect(tmp_path) == []


def _entries():
  def m(v, se):
    return {"sampled": {"ndcg@10": v, "ndcg@10_se": se}}
  return [
      {"method": "GenSAR", "kind": "gensar", "recommendation": m(0.09, 0.003),
       "search": m(0.18, 0.004)},
      {"method": "GenSAR no_nsip", "kind": "ablation", "recommendation": m(0.091, 0.003),
       "search": m(0.17, 0.004)},
      {"method": "SASRec", "kind": "baseline", "recommendation": m(0.248, 0.005)},
      {"method": "SASRec (last 5 items)", "kind": "baseline", "recommendation": m(0.247, 0.005)},
      {"method": "BM25", "kind": "baseline", "search": m(0.083, 0.003)},
      {"method": "dense", "kind": "baseline", "search": m(0.158, 0.004)},
  ]


def _text_boxes(fig):
  """(text, window box) of every visible, non-empty text artist of the figure, once each."""
  fig.canvas.draw()
  renderer = fig.canvas.get_renderer()
  seen, out = set(), []
  import matplotlib.text  # pylint: disable=g-import-not-at-top

  for t in fig.findobj(matplotlib.text.Text):
    if id(t) in seen or not t.get_visible() or not t.get_text():
      continue
    seen.add(id(t))
    out.append((t.get_text(), t.get_window_extent(renderer)))
  return out


def test_tradeoff_plot_has_error_bars_and_no_overprinting_labels():
  from gensar_jax.report import plots  # pylint: disable=g-import-not-at-top
  import matplotlib.container  # pylint: disable=g-import-not-at-top

  fig = plots.tradeoff_figure(_entries())
  ax = fig.axes[0]
  bars = [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]
  assert len(bars) == 2  # GenSAR and the ablation, each with x and y error bars.
  assert all(c.has_xerr and c.has_yerr for c in bars)
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "SASRec (recommendation only)" in labels and "SASRec (last 5 items) (recommendation only)" in labels
  boxes = [(txt, b) for txt, b in _text_boxes(fig) if txt in labels]
  assert len(boxes) == len(labels)
  for i, (ta, a) in enumerate(boxes):
    for tb, b in boxes[i + 1:]:
      assert not a.overlaps(b), (ta, tb)


def test_training_plot_is_linear_with_validation_error_bars_or_says_too_few():
  from gensar_jax.report import plots  # pylint: disable=g-import-not-at-top

  history = [{"kind": "train", "step": s, "loss": 6.0 - s / 100} for s in range(1, 400, 50)]
  val = [{"kind": "validation", "step": s, "recommendation/ndcg@10": 0.05 + s / 1e4,
          "recommendation/ndcg@10_se": 0.01, "search/ndcg@10": 0.1,
          "search/ndcg@10_se": 0.02} for s in (100, 200, 300)]
  fig = plots.training_figure(history + val)
  loss_ax, val_ax = fig.axes
  assert loss_ax.get_yscale() == "linear"
  assert len(val_ax.containers) == 2 and val_ax.get_legend() is not None
  one = plots.training_figure(history + val[:1])
  assert any("too few points" in t.get_text() for t in one.axes[1].texts)


def test_ablation_rows_get_a_paired_test_against_the_full_model(tmp_path):
  from gensar_jax import metrics as m  # pylint: disable=g-import-not-at-top
  from gensar_jax.evaluation import outputs  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(3)
  _write_run(tmp_path, rng)
  abl = tmp_path / "ablations" / "no_behaviour_tokens"
  _write_run(abl, rng, False)
  full = rng.integers(1, 30, 200).astype(float)
  better = np.maximum(full - 3, 1)  # The ablation ranks every target higher or equal.
  outputs.save(tmp_path / "eval", json.loads((tmp_path / "eval" / "metrics.json").read_text()),
               {"gensar/search/sampled": full})
  outputs.save(abl / "eval", json.loads((abl / "eval" / "metrics.json").read_text()),
               {"gensar/search/sampled": better})
  tests = tables.ablation_tests(tmp_path)
  want = m.paired_test(better, full, "ndcg@10")
  assert tests["no_behaviour_tokens"]["search"]["sampled"] == want and want["mean_diff"] > 0
  ctx = pipeline.StageContext(tmp_path, "report")
  ctx.dir.mkdir()
  report_stage.run(_config(), ctx)
  md = (ctx.dir / "results.md").read_text()
  assert (f"| no_behaviour_tokens | search | 100 candidates | {want['mean_diff']:+.4f} ± "
          f"{want['se_diff']:.4f} | {want['p']:.2g} |") in md
  assert "seed spread" in md
