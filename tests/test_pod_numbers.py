"""The pre-booking arithmetic (parameters, FLOPs, memory, time) on hand-computed cases."""

import jax

from gensar_jax.benchmarks import pod_numbers as pn
from gensar_jax.model import t5
from gensar_jax.trainer import logging_utils

# d 4, ff 8, 1+1 layers, 2 heads of 2, vocabulary 10, 4 position buckets.
TOY = pn.Shape(10, 4, 8, 1, 1, 2, 2, relative_attention_num_buckets=4)


def test_parameter_counts_by_hand_and_as_the_trainer_splits_them():
  # Encoder: attention 4*4*4 + feed-forward 2*4*8 + 2 norms of 4, + 4*2 buckets + final norm.
  # Decoder: 2 attentions 128 + 64 + 3 norms of 4, + 8 + 4. Embedding: 10*4.
  assert pn.param_counts(TOY) == (40, 148, 216)
  config = t5.T5Config(vocab_size=10, d_model=4, d_ff=8, num_encoder_layers=1,
                       num_decoder_layers=1, num_heads=2, d_kv=2,
                       relative_attention_num_buckets=4)
  params = t5.init_params(config, jax.random.key(0))
  assert logging_utils.split_param_counts(params, 10) == pn.param_counts(TOY)
  # The cpu preset's model as its Office train stage counted it (preset_cpu_2000).
  assert sum(pn.param_counts(pn.CPU)) == 1_968_256
  assert pn.vocab_size(8000, 256) == 9539


def test_flops_memory_and_time_by_hand():
  # 6 x (encoder 148 x 5 source tokens + (decoder 216 + embedding 40) x 2 target tokens).
  assert pn.flops_per_example(TOY, 5, 2) == 6 * (148 * 5 + 256 * 2) == 7512
  # Batch 1, source 3, target 2, bf16 (see activation_bytes): per token and layer,
  # self-attention 2*(8+16+4)+4 = 60, feed-forward 2*(8+16+4)+8+4 = 68, cross-attention
  # 2*(8+8+4)+4 = 44, 7 bytes per attention score; encoder 3*(60+68+2*3*7) = 510,
  # decoder 2*(60+44+68+2*5*7) + 3*2*2*4 = 532, bias 2*4*2*3*3 = 144, logits 2*4*2*10 = 160.
  assert pn.activation_bytes(TOY, 1, 3, 2, 2) == 510 + 532 + 144 + 160
  assert pn.device_bytes(TOY, 1, 3, 2, 2) == 20 * 404 + 1346
  assert pn.epoch_seconds(1e15, chips=2, peak_per_chip=1e14, mfu=0.5) == 10.0


def test_epoch_mixtures_of_office_and_electronics():
  office = pn.epoch_examples(*pn.CATEGORIES["Office"])
  assert office == {"nrip": 38_543, "nsip": 4_144, "nsqp": 41, "adhoc": 41, "desc2id": 83,
                    "id2desc": 83}  # The Office train stage's epoch_examples.
  assert sum(pn.epoch_examples(*pn.CATEGORIES["Electronics"]).values()) == 1_036_000
  assert pn.epoch_examples(10, {"nsip": 0}, {"nrip": 1.0, "nsip": 0.5}) == {"nrip": 10, "nsip": 0}
  text = pn.table(mfu=0.35)
  assert "| paper (t5-small) | Electronics | 48.9M |" in text and "1x H100 80GB" in text
