"""benchmarks.step_profile: XLA op times from a real trace, grouped by model region."""

import collections

import jax
import jax.numpy as jnp

from gensar_jax.benchmarks import step_profile

_HLO = """
HloModule m
ENTRY %main {
  %fusion.1 = f32[8,8]{1,0} fusion(%p), kind=kLoop, metadata={op_name="jit(step_fn)/jvp(T5)/T5.encode/encoder/layer_0/attention/add"}
  %fusion.2 = f32[8,8]{1,0} fusion(%p), metadata={op_name="jit(step_fn)/transpose(jvp(T5))/T5.encode/encoder/layer_1/mlp/dot_general"}
  %dot.3 = f32[8,8]{1,0} dot(%a, %b), metadata={op_name="jit(step_fn)/jvp(T5)/decoder/layer_0/self_attention/dot_general"}
  %all-reduce.4 = (f32[8]{0}) all-reduce(%x), metadata={op_name="jit(step_fn)/transpose(jvp(T5))/decoder/layer_0/mlp/reduce_sum"}
  %while.6 = (s32[], f32[8]{0}) while(%t), condition=%cond, body=%body, metadata={op_name="jit(step_fn)/while"}
  %custom-call.7 = f32[8]{0} custom-call(%c), custom_call_target="x", metadata={op_name="jit(step_fn)/jvp(T5)/decoder/x"}
  ROOT %add.5 = f32[8]{0} add(%c, %d)
}
"""


def test_regions_from_metadata():
  meta = step_profile.op_metadata(_HLO)
  assert meta["add.5"] == "" and "layer_0/attention" in meta["fusion.1"]
  assert step_profile.region_of("fusion.1", meta["fusion.1"]) == "encoder self-attention"
  assert step_profile.region_of("fusion.2", meta["fusion.2"]) == (
      "encoder feed-forward (backward)")
  assert step_profile.region_of("dot.3", meta["dot.3"]) == "decoder"
  # A gradient all-reduce is named for its op, not for the gradient it carries.
  assert step_profile.region_of("all-reduce.4", meta["all-reduce.4"]) == "gradient all-reduce"
  assert step_profile.region_of("add.5", "") == step_profile.OTHER
  # A loop's own event spans its body's ops: it is left out, a custom call is kept.
  assert "while.6" not in meta and "custom-call.7" in meta


def test_summary_counts_only_the_modules_ops_per_step():
  times = collections.Counter({"fusion.1": 6000.0, "fusion.2": 3000.0, "dot.3": 1000.0,
                               "ThunkExecutor::Execute": 99999.0})
  s = step_profile.summarise(times, _HLO, steps=2, top=2)
  assert abs(s["op_ms_per_step"] - 5.0) < 1e-9  # 10,000 us over 2 steps; the wait left out
  assert s["regions_ms"]["encoder self-attention"] == 3.0
  assert [op["op"] for op in s["costliest"]] == ["fusion.1", "fusion.2"]
  text = step_profile.format_summary(s, wall_ms=6.0)
  assert "5 ms of XLA op time" in text and "60.0%" in text


def test_real_trace_times_the_compiled_ops(tmp_path):
  f = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2)))
  w, x = jnp.ones((64, 64)) * 0.01, jnp.ones((256, 64))
  hlo = f.lower(w, x).compile().as_text()
  jax.block_until_ready(f(w, x))

  def run():
    for _ in range(3):
      jax.block_until_ready(f(w, x))

  times = step_profile.trace_op_times(run, str(tmp_path))
  s = step_profile.summarise(times, hlo, steps=3)
  assert s["op_ms_per_step"] > 0
  assert s["costliest"] and all(op["op"] in step_profile.op_metadata(hlo)
                                for op in s["costliest"])
