"""The bf16/float32 comparison on two hand-made runs (the script itself trains for minutes)."""

import json

import numpy as np

from gensar_jax.benchmarks import bf16_check


def _run(root, dtype, losses, val, test_ranks, ndcg, se):
  train = root / dtype / "train"
  train.mkdir(parents=True)
  lines = [{"step": s, "kind": "train", "loss": l} for s, l in losses.items()]
  lines.append({"step": max(losses), "kind": "validation", **{
      f"{t}/ndcg@10": v for t, v in val.items()}, **{
      f"{t}/ndcg@10_se": 0.01 for t in val}})
  (train / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  ev = root / dtype / "eval"
  ev.mkdir()
  (ev / "metrics.json").write_text(json.dumps({
      t: {"sampled": {"ndcg@10": ndcg, "ndcg@10_se": se}} for t in val}))
  np.savez(ev / "ranks.npz", **{f"gensar/{t}/sampled": test_ranks for t in val})


def test_compare_states_tolerances_and_standard_errors(tmp_path):
  val = {"recommendation": 0.10, "search": 0.20}
  ranks = np.array([1.0, 2.0, 5.0, np.inf, 3.0, 1.0])
  _run(tmp_path, "float32", {1: 9.0, 10: 5.0, 20: 4.0}, val, ranks, 0.3, 0.1)
  _run(tmp_path, "bfloat16", {1: 9.0, 10: 5.05, 20: 4.2}, {"recommendation": 0.12,
                                                           "search": 0.205},
       ranks[::-1].copy(), 0.3, 0.1)
  out = bf16_check.compare(tmp_path, loss_rtol=0.02)
  loss = out["loss"]
  assert [r["step"] for r in loss["steps"]] == [1, 10, 20]
  assert abs(loss["max_abs_diff"] - 0.2) < 1e-9 and abs(loss["max_rel_diff"] - 0.05) < 1e-9
  assert loss["within_rtol"] is False  # 4.2 vs 4.0 is 5% off.
  rec, search = out["recommendation"], out["search"]
  # Validation: combined s.e. hypot(0.01, 0.01) = 0.0141; 0.02 apart is outside it,
  # 0.005 apart inside.
  assert abs(rec["validation_ndcg@10"]["combined_se"] - 0.01 * 2**0.5) < 1e-12
  assert rec["validation_ndcg@10"]["within_se"] is False
  assert search["validation_ndcg@10"]["within_se"] is True
  test = rec["test_ndcg@10"]
  assert test["rows"] == 6 and test["agree"] and abs(test["paired_diff"]) < 1e-12
