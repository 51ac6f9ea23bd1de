"""Numbers to know before booking an accelerator: `python -m gensar_jax.benchmarks.pod_numbers`.

Computed, not measured (no accelerator has run this code yet): for `preset=paper` (and
the cpu preset's model for comparison) on Electronics and Office, the parameters, the
training FLOPs per example and per epoch, the memory one device needs for the paper's
global batch in the chosen micro-batches, and the projected time per epoch on one
H100-class GPU, one A100 and a v5e-8 TPU slice at a stated MFU.

Conventions, the trainer's own (`gensar_jax.trainer.logging_utils`): model FLOPs are
6 x parameters x the tokens they touch (encoder parameters count source tokens; decoder
and output-embedding parameters count target tokens; attention scores are left out,
about 4% at 130 source tokens), on real (unpadded) tokens, so the MFU absorbs padding;
peaks are the dense bf16 ones of `logging_utils.PEAK_FLOPS`.

Sizes (docs/design.md §1, §4; README): Electronics has 930k NRIP training rows, Office 38,543;
the epoch mixture is the authors' proportions of them (`tasks.shares`); prompts average
about 130 source tokens on Office (assumed the same on Electronics) and an identifier
target is 6 tokens (behaviour token, 4 codes, eos). Memory is an estimate to +-30%: a
per-token inventory of what backpropagation keeps (XLA fuses and recomputes some of it).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

from gensar_jax import config_files
from gensar_jax.model import t5
from gensar_jax.trainer import logging_utils

_PEAK = dict(logging_utils.PEAK_FLOPS)
GIB = 2**30


Shape = t5.T5Config  # A T5's sizes and vocabulary (only those fields are read here).


def vocab_size(tokenizer_vocab: int, codebook_size: int, levels: int = 6,
               behaviour_tokens: int = 3) -> int:
  """The model's vocabulary: the trained tokenizer's, plus one token per code of each of
  the identifier levels (M1 M2 S1 S2 R1 R2) and the behaviour tokens."""
  return tokenizer_vocab + levels * codebook_size + behaviour_tokens


PAPER = Shape(vocab_size(8000, 256), 512, 2048, 6, 6, 8, 64)  # preset=paper: t5-small.
# The same with t5-small's own tokenizer (`tokenizer.pretrained_dir`): 32,128 rows.
PAPER_T5_VOCAB = dataclasses.replace(PAPER, vocab_size=vocab_size(32128, 256))
CPU = Shape(vocab_size(8000, 32), 128, 512, 2, 2, 4, 32)  # preset=cpu (and gpu1_small).

# Examples per epoch per task as a share of the NRIP rows: the paper preset's tasks.shares.
SHARES = dict(config_files.load(
    str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "amazon.py")).tasks.shares)
# Training rows per category: (NRIP rows, rows each other task can draw from at most).
CATEGORIES = {
    "Electronics": (930_000, {}),  # docs/design.md §4 (the authors' 930k); caps never bind.
    "Office": (38_543, {"nsip": 38_543, "nsqp": 38_543, "adhoc": 2_393, "desc2id": 2_419,
                        "id2desc": 2_419}),  # README, data and train stages on Office.
}
SRC_TOKENS = 130  # Mean real source tokens per example (Office prompts).
TGT_TOKENS = 6  # Identifier target: behaviour token + 4 codes + eos.

# Targets: (name, chips, peak bf16 FLOP/s per chip, memory per chip in GiB).
TARGETS = (
    ("1x H100 80GB", 1, _PEAK["h100"], 80),
    ("1x A100 80GB", 1, _PEAK["a100"], 80),
    ("v5e-8 (8 chips)", 8, _PEAK["v5e"], 16),
)


def param_counts(s: Shape) -> tuple[int, int, int]:
  """(embedding, other encoder, decoder) parameters, split as
  `logging_utils.split_param_counts` splits a real parameter tree (tied embeddings)."""
  d, f, inner = s.d_model, s.d_ff, s.num_heads * s.d_kv
  attention = 4 * d * inner  # query, key, value, out
  feed_forward = 2 * d * f  # wi, wo
  relpos = s.relative_attention_num_buckets * s.num_heads
  enc = s.num_encoder_layers * (attention + feed_forward + 2 * d) + relpos + d
  dec = s.num_decoder_layers * (2 * attention + feed_forward + 3 * d) + relpos + d
  return s.vocab_size * d, enc, dec


def flops_per_example(s: Shape, src_tokens: float = SRC_TOKENS,
                      tgt_tokens: float = TGT_TOKENS) -> float:
  """Training FLOPs (forward + backward) of one example, the trainer's MFU convention."""
  return logging_utils.step_flops(param_counts(s), src_tokens, tgt_tokens)


def epoch_examples(nrip_rows: int, caps: dict[str, int] | None = None,
                   shares: dict[str, float] | None = None) -> dict[str, int]:
  """Examples per task in one epoch: share x NRIP rows, capped at the rows a task has
  (the rule of `tasks.TaskBuilder.epoch_counts`)."""
  caps = caps or {}
  return {t: min(caps.get(t, nrip_rows), int(round(share * nrip_rows)))
          for t, share in (shares or SHARES).items()}


def state_bytes(n_params: int) -> int:
  """Float32 parameters, the step's accumulated and micro-batch gradients, and AdamW's
  two moments: 5 x 4 bytes per parameter."""
  return 20 * n_params


def activation_bytes(s: Shape, batch: int, src_len: int, tgt_len: int,
                     compute_bytes: int) -> int:
  """What backpropagation keeps for one micro-batch on one device (an estimate).

  Per token and layer, in the compute dtype (`compute_bytes`, 2 for bf16): the
  layer-norm inputs and outputs, the projections (queries, keys, values, attention
  output), the feed-forward's hidden and activated values, each block's output, and
  one byte per dropout mask; per attention score: the float32 softmax, its dropout mask
  and its compute-dtype copy. Besides: the cross-attention keys and values of every
  decoder layer, the encoder's float32 position-and-mask bias `[B, H, S, S]` with its
  gradient, and the float32 logits `[B, T, V]` with the softmax gradient.

  Args:
    s: the model's sizes.
    batch: examples in the micro-batch on this device.
    src_len, tgt_len: padded source and target lengths (the batch's buckets).
    compute_bytes: bytes per element of the compute dtype.
  """
  c, d, f, h = compute_bytes, s.d_model, s.d_ff, s.num_heads
  inner = h * s.d_kv
  score = 4 + 1 + c  # float32 softmax, dropout mask, compute-dtype weights.
  self_attn = c * (2 * d + 4 * inner + d) + d  # Norm in/out, q k v o, output; mask.
  ffn = c * (2 * d + 2 * f + d) + f + d  # Norm in/out, hidden, activated, output; masks.
  cross_attn = c * (2 * d + 2 * inner + d) + d  # Norm in/out, q and o, output; mask.
  enc_token = self_attn + ffn + h * src_len * score
  dec_token = self_attn + cross_attn + ffn + h * (tgt_len + src_len) * score
  enc = s.num_encoder_layers * batch * src_len * enc_token
  dec = s.num_decoder_layers * batch * (tgt_len * dec_token + src_len * c * 2 * inner)
  bias = 2 * 4 * batch * h * src_len * src_len
  logits = 2 * 4 * batch * tgt_len * s.vocab_size
  return enc + dec + bias + logits


def device_bytes(s: Shape, micro_batch_per_device: int, src_len: int, tgt_len: int = 8,
                 compute_bytes: int = 2) -> int:
  """Training state (replicated) plus one micro-batch's activations on one device."""
  return (state_bytes(sum(param_counts(s)))
          + activation_bytes(s, micro_batch_per_device, src_len, tgt_len, compute_bytes))


def epoch_seconds(flops_per_epoch: float, chips: int, peak_per_chip: float,
                  mfu: float) -> float:
  """Projected wall time of an epoch at `mfu` of the chips' peak."""
  return flops_per_epoch / (chips * peak_per_chip * mfu)


def table(mfu: float = 0.35, global_batch: int = 8192, grad_accum_steps: int = 32,
          src_len: int = 512) -> str:
  """The Markdown tables `main` prints (see the module docstring for the assumptions)."""
  lines = [f"Assumptions: {SRC_TOKENS} source / {TGT_TOKENS} target real tokens per "
           f"example; MFU {mfu:.0%} of dense bf16 peak; global batch {global_batch} in "
           f"{grad_accum_steps} micro-batches; memory at the worst source bucket "
           f"({src_len} tokens), target bucket 8, bf16 compute.", "",
           "| model | category | parameters | GFLOP/example | examples/epoch | "
           "PFLOP/epoch | " + " | ".join(f"s/epoch {n}" for n, *_ in TARGETS) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(TARGETS)]
  for model, shape in (("paper (t5-small)", PAPER), ("paper, t5-small's vocabulary",
                                                     PAPER_T5_VOCAB), ("cpu preset", CPU)):
    per_example = flops_per_example(shape)
    for category, (nrip, caps) in CATEGORIES.items():
      n = sum(epoch_examples(nrip, caps).values())
      per_epoch = per_example * n
      times = [epoch_seconds(per_epoch, chips, peak, mfu) for _, chips, peak, _ in TARGETS]
      lines.append(f"| {model} | {category} | {sum(param_counts(shape)) / 1e6:.1f}M | "
                   f"{per_example / 1e9:.3g} | {n:,} | {per_epoch / 1e15:.3g} | "
                   + " | ".join(f"{t:.3g}" for t in times) + " |")
  lines.append("(The cpu preset's 2M-parameter model will not reach that MFU: its steps "
               "are bound by per-step overhead and the host's batching, not FLOPs.)")
  micro = global_batch // grad_accum_steps
  lines += ["", "| paper preset on | micro-batch per chip | estimated GiB per chip | "
            "chip memory GiB | 200 epochs on Electronics (h) |", "|---|---|---|---|---|"]
  electronics = flops_per_example(PAPER) * sum(epoch_examples(*CATEGORIES["Electronics"]).values())
  for name, chips, peak, memory in TARGETS:
    per_chip = max(micro // chips, 1)
    gib = device_bytes(PAPER, per_chip, src_len) / GIB
    hours = 200 * epoch_seconds(electronics, chips, peak, mfu) / 3600
    lines.append(f"| {name} | {per_chip} | {gib:.1f} | {memory} | {hours:.1f} |")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Prints `table()`; `--mfu=0.35` changes the assumed MFU."""
  argv = sys.argv[1:] if argv is None else argv
  mfu = 0.35
  for arg in argv:
    if not arg.startswith("--mfu="):
      print("usage: python -m gensar_jax.benchmarks.pod_numbers [--mfu=0.35]", file=sys.stderr)
      return 2
    mfu = float(arg.split("=", 1)[1])
  print(table(mfu=mfu))
  return 0


if __name__ == "__main__":
  sys.exit(main())
