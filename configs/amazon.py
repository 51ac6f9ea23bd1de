"""GenSAR on one Amazon review category.

Usage:
  python -m gensar_jax.main --config=configs/amazon.py:category=Office_Products,preset=cpu \
      --config.data.raw_dir=../shared/data/amazon-office --workdir=/tmp/office

The argument string is `key=value` pairs separated by commas:
  category: the NAME in reviews_NAME_5.json[.gz] / meta_NAME.json[.gz].
  preset:   `paper` (the paper's sizes: t5-small, 500-epoch quantizer, 200 epochs of
            training; meant for an accelerator), `cpu` (sizes that finish on a 2-core
            machine in well under an hour for a category the size of Office), or one
            accelerator host (an 80-141 GiB H100/H200-class GPU, or all GPUs of one
            host; not yet run on one, see launch/device_check.sh):
            `gpu1` (`paper` in bf16 compute, its batch in micro-batches sized for one
            device) or `gpu1_small` (`cpu`'s model and stages trained for the paper's
            200 epochs at batch 1,024). The block at the end of `get_config` holds
            their changes and the arithmetic behind them.
Every field below can be overridden with `--config.<section>.<field>=value`.
"""

import ml_collections

from gensar_jax.data import params as data_params

PRESETS = ("paper", "cpu", "gpu1", "gpu1_small")


def parse_arg(arg: str | None) -> dict[str, str]:
  """Parses "category=NAME,preset=cpu" into a dict (defaults filled in)."""
  out = {"category": "Electronics", "preset": "paper"}
  for part in (arg or "").split(","):
    if not part.strip():
      continue
    if "=" not in part:
      raise ValueError(f"config argument {part!r} is not key=value")
    key, value = part.split("=", 1)
    if key.strip() not in out:
      raise ValueError(f"unknown config argument {key!r}; known: {sorted(out)}")
    out[key.strip()] = value.strip()
  if out["preset"] not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {out['preset']!r}")
  return out


def add_t5_sizes(m: ml_collections.ConfigDict, paper: bool,
                 relative_attention: bool = False) -> ml_collections.ConfigDict:
  """Adds a T5's size fields (the main model's and doc2query's) to `m`, in order."""
  m.d_model = 512 if paper else 128  # Hidden width.
  m.d_ff = 2048 if paper else 512  # Feed-forward width.
  m.num_encoder_layers = 6 if paper else 2  # Encoder blocks.
  m.num_decoder_layers = 6 if paper else 2  # Decoder blocks.
  m.num_heads = 8 if paper else 4  # Attention heads.
  m.d_kv = 64 if paper else 32  # Per-head key/value width.
  if relative_attention:  # The main model's (doc2query's T5 uses T5Config's defaults).
    m.relative_attention_num_buckets = 32  # Relative position buckets.
    m.relative_attention_max_distance = 128  # Largest distinguished relative distance.
  m.dropout_rate = 0.1  # Dropout during training.
  m.dtype = "float32"  # Activation dtype ("bfloat16" for bf16 training).
  return m


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the full pipeline config for one category and preset."""
  args = parse_arg(arg)
  paper = args["preset"] in ("paper", "gpu1")  # The paper's sizes (else the cpu preset's).
  c = ml_collections.ConfigDict()
  c.preset = args["preset"]  # Which preset built this config (informational).
  c.seed = 42  # Master seed; every stage derives its own RNG streams from it.
  c.stages = "all"  # Comma-separated stages to run ("all": every implemented stage).
  c.distributed = False  # Call jax.distributed.initialize() (multi-host launches).
  c.ablation = ""  # Name of the ablation this run is (set by configs/ablation.py).
  c.reuse_from = ""  # Another workdir whose finished stages are reused when their fingerprints match.
  c.xla_cache = True  # Keep compiled programs in <workdir>/.xla_cache (later stages, resumes and, off a GPU, copies of the folder in other workdirs reuse them).
  # On a CPU host: split it into this many JAX devices, over which the mesh shards each
  # batch (data parallel); on the 2-core host the cpu preset's step runs ~1.1x faster on
  # 2 than on JAX's one device (README, Benchmarks: issue 23). 0: JAX's default. XLA_FLAGS'
  # --xla_force_host_platform_device_count, when set, wins. Accelerators are untouched.
  c.cpu_devices = 2
  # On a CPU backend: glibc's malloc keeps the memory the process frees for its next
  # allocations (devices.keep_freed_memory), so XLA:CPU's step buffers are reused instead
  # of faulted in as fresh pages every step (the cpu preset's step ~1.1x faster on the
  # 2-core host; README, Benchmarks). Resident memory stays near its peak. No effect on
  # accelerators or without glibc.
  c.cpu_keep_freed_memory = True

  # ---------------------------------------------------------------- data (docs/design.md §1)
  c.data = d = ml_collections.ConfigDict()
  d.category = args["category"]  # NAME in reviews_NAME_5.json[.gz] and meta_NAME.json[.gz].
  d.raw_dir = ""  # Folder with the raw McAuley files (also the TFDS manual_dir).
  d.demo = False  # Generate the embedded synthetic demo world into raw_dir first.
  d.demo_users = 600  # Demo world: number of users.
  d.demo_items = 300  # Demo world: number of items.
  # Processing: max_rec_his_len = 5, max_src_his_len = 5, min_targets = 3, num_negatives = 99,
  # query_min_word_count = 5, bm25_top_k = 200 (the paper's protocol), each field
  # defaulted and commented once, in gensar_jax/data/params.py.
  d.update(data_params.processing_defaults())

  # -------------------------------------------------------------- embed (docs/design.md §2)
  c.embed = e = ml_collections.ConfigDict()
  e.text_encoder_dir = ""  # Local HF-style encoder folder ("" = bundled all-MiniLM-L6-v2).
  e.max_text_len = 256  # Token limit of item text (title + description).
  e.batch_size = 64  # Texts per encoder batch (batches are length-bucketed).
  e.sasrec = s = ml_collections.ConfigDict()
  s.max_len = 50  # Recommendation history length SASRec attends over.
  s.hidden = 64  # Embedding width = the collaborative embedding dim d_c.
  s.num_layers = 2  # Self-attention blocks.
  s.num_heads = 1  # Attention heads.
  s.dropout = 0.2  # Dropout rate on embeddings and blocks.
  s.learning_rate = 1e-3  # Adam learning rate.
  s.batch_size = 128  # Sequences per step.
  s.epochs = 200 if paper else 60  # Passes over the training sequences.
  s.loss = "softmax"  # "softmax": full-catalog cross-entropy; "bce": one sampled negative.
  # Also train a SASRec with loss "bce" (GenSAR's paper's way), the same settings and seed,
  # for the eval stage's `sasrec_bce` baseline only (collaborative.npy is unchanged).
  s.bce_baseline = True

  # --------------------------------------------------------- identifiers (docs/design.md §3)
  c.identifiers = q = ml_collections.ConfigDict()
  q.variant = "joint"  # "joint", "semantic" (only-semantic) or "collaborative" (only-collab).
  q.num_shared_levels = 2  # L_m: shared codebooks on [z_s; z_c].
  q.num_specific_levels = 2  # L_n: specific codebooks on each half.
  q.codebook_size = 256 if paper else 32  # K: codes per codebook (cpu: 32 for catalogs of ~10^3-10^4 items).
  q.latent_dim = 64  # Width of [z_s; z_c] (each half is latent_dim // 2).
  q.hidden_dims = (512, 256, 128, 64)  # Encoder MLP hidden widths (decoders mirror them).
  q.commitment = 0.25  # alpha in mse(e, sg(r)) + alpha * mse(sg(e), r).
  q.sinkhorn_epsilon = 0.003  # Sinkhorn entropy weight on distances rescaled to [-1, 1].
  q.sinkhorn_iters = 50  # Sinkhorn iterations.
  q.learning_rate = 1e-3  # AdamW learning rate.
  q.weight_decay = 1e-5  # AdamW weight decay.
  q.batch_size = 1024  # Items per step.
  q.epochs = 500  # Passes over the catalog (the paper's; ~2 min for Office on 2 cores).
  q.warmup_epochs = 50  # Linear warmup before linear decay.
  q.kmeans_iters = 50  # Lloyd iterations of the k-means codebook initialisation.
  q.grad_clip = 1.0  # Global gradient-norm clip.
  q.eval_every_epochs = 10  # Collision rate is measured (and the best kept) this often.

  # ------------------------------------------------------------ doc2query (docs/design.md §4)
  c.doc2query = g = ml_collections.ConfigDict()
  g.enabled = True  # Train doc2query and add the ad-hoc search task.
  g.num_queries = 1  # Pseudo-queries generated per item.
  g.method = "sample"  # "sample" (top-k / top-p, the authors' way) or "beam".
  g.top_k = 10  # Sampling: keep the k most likely tokens.
  g.top_p = 0.95  # Sampling: keep the smallest set with this much probability.
  g.temperature = 1.0  # Sampling: softmax temperature.
  g.beam_size = 8  # Beam method: beams per item (>= num_queries).
  g.vocab_size = 8000  # Vocabulary of its own tokenizer, trained on item text and queries.
  g.max_text_len = 128 if paper else 64  # Token limit of the item text (encoder input).
  g.max_query_len = 16  # Token limit of a query (generated tokens, eos included).
  g.generate_batch_size = 64  # Items per generation batch.
  g.model = add_t5_sizes(ml_collections.ConfigDict(), paper)  # Its T5: the main model's sizes.
  g.train = gt = ml_collections.ConfigDict()
  gt.learning_rate = 1e-3 if paper else 2e-3  # Peak AdamW learning rate.
  gt.warmup_frac = 0.05  # Fraction of steps of linear warmup before cosine decay.
  gt.weight_decay = 1e-7  # AdamW weight decay.
  gt.batch_size = 256 if paper else 32  # (item text, query) pairs per optimizer step.
  gt.grad_accum_steps = 1  # Micro-batches per optimizer step.
  gt.epochs = 20 if paper else 15  # Passes over the distinct training pairs.
  gt.steps = 0  # Optimizer steps of the run, overriding epochs (0 = from epochs).
  gt.grad_clip = 1.0  # Global gradient-norm clip.
  gt.label_smoothing = 0.0  # Target weight spread uniformly over the vocabulary (0 = none).
  gt.log_every_steps = 50  # Console/TensorBoard logging interval.
  gt.checkpoint_every_steps = 500  # Orbax save interval (resumable like the main model).
  gt.max_to_keep = 1  # Periodic checkpoints kept.
  gt.max_steps = 0  # Stop early after this many steps, schedule unchanged (0 = never; tests, debugging).
  gt.max_minutes = 0.0  # Wall-clock budget of the step loop; save and stop when spent (0 = none).

  # ------------------------------------------------------- tokenizer / model (§5)
  c.tokenizer = t = ml_collections.ConfigDict()
  t.pretrained_dir = ""  # Local HF T5 tokenizer folder ("" = train one on the dataset text).
  t.vocab_size = 8000  # Vocabulary of a tokenizer trained on the dataset (before added tokens).

  c.model = m = ml_collections.ConfigDict()
  m.init_checkpoint_dir = ""  # Local HF T5 folder to start from ("" = from scratch).
  add_t5_sizes(m, paper, relative_attention=True)
  m.code_init = "random"  # Code-token embeddings: "random", or "codebook" (the quantizer's code vectors, projected).

  # ------------------------------------------------------------- tasks (docs/design.md §4)
  c.tasks = tasks = ml_collections.ConfigDict()
  tasks.behaviour_tokens = True  # Write <R_I>, <S_Q>, <S_I> before history entries and targets.
  # "instruction": the paper's instruction phrasings; "compact": no instruction words, only
  # history entries, query, text or identifier and the behaviour token (a departure, issue 24).
  tasks.prompt_style = "instruction"
  # NRIP rows drawn with probability ~ (target item's count among NRIP training targets)^-b,
  # with replacement: 1 = every target item equally often, 0 = uniform rows (the paper's).
  # cpu: 0.5 (study runs O_pop05, O_seed7: +0.018 and +0.009 validation NDCG@10).
  tasks.nrip_popularity_power = 0.0 if paper else 0.5
  # Every task's rows at least this many times in the run's whole epochs: a task's epoch
  # count is raised to ceil(min_passes x its rows / whole epochs), its rows taken in one
  # fixed order across epochs; 0 = the shares alone (the paper's; a departure, issue 24).
  # cpu: 1, so the longer run shows every search, query, ad-hoc and item-text row once.
  tasks.min_passes = 0.0 if paper else 1.0
  tasks.num_phrasings = 10  # Instruction phrasings per task (one sampled per example).
  tasks.max_query_tokens = 64  # Token limit of one query.
  tasks.max_text_tokens = 256  # Token limit of item text.
  tasks.max_source_len = 512 if paper else 256  # Token limit of an encoder input.
  tasks.max_target_len = 64  # Token limit of a decoder target.
  # Examples per epoch per task, as a multiple of the NRIP training rows (capped at the rows
  # a task can draw from; 0 = task off). The authors' Electronics mixture as proportions:
  # every NRIP row (930k), 100k NSIP, 1k NSQP and ad-hoc, 2k Desc2ID and ID2Desc (docs/design.md §4).
  tasks.shares = ml_collections.ConfigDict(dict(
      nrip=1.0, nsip=100 / 930, nsqp=1 / 930, adhoc=1 / 930, desc2id=2 / 930, id2desc=2 / 930))

  # ------------------------------------------------------------- train (docs/design.md §5)
  c.train = r = ml_collections.ConfigDict()
  r.learning_rate = 1e-3  # Peak AdamW learning rate.
  r.warmup_frac = 0.01  # Fraction of steps of linear warmup before cosine decay.
  r.weight_decay = 1e-7  # AdamW weight decay.
  r.batch_size = 8192 if paper else 64  # Global examples per optimizer step.
  # Micro-batches per optimizer step (their gradients summed: the same step up to float
  # rounding, another dropout draw). cpu: 4 micro-batches of 16, 1.31x the examples/s of
  # one batch of 64 on the AMD host (their [B, H, S, S] attention tensors stay in cache;
  # README, *Benchmarks*); 8 were slower than 4.
  r.grad_accum_steps = 32 if paper else 4
  r.epochs = 200.0 if paper else 4.0  # Passes over the task mixture (a fraction ends partway; sets the schedule).
  # Optimizer steps of the run, overriding epochs (0 = from epochs): equal compute on any
  # dataset (cpu: 33 minutes of mixture steps at ~240 examples/s on 2 Intel Xeon cores
  # (1cae491); on 2 AMD EPYC cores in micro-batches 49 minutes at ~163, and 39 at ~223 on
  # f4acf85's step: inside the guard below, so min_passes holds on a slower host).
  r.steps = 0 if paper else 6600
  r.grad_clip = 1.0  # Global gradient-norm clip.
  r.label_smoothing = 0.0  # Target weight spread uniformly over the vocabulary (0 = none, the paper's).
  # Warm start (a departure, issue 24): before the mixture, this many steps of next-item
  # prediction on the NRIP rows written as identifiers only (no instruction or query words;
  # `TaskBuilder.warm_start_examples`), with its own schedule; 0 = off (the paper's).
  # cpu: 1,600 (~2.7 passes over the NRIP rows, ~7 minutes; study runs N_warm, N_seed7).
  r.warm_start_steps = 0 if paper else 1600
  r.warm_start_minutes = 0.0 if paper else 10.0  # Its wall-clock budget (0 = none).
  r.warm_start_learning_rate = 1e-3  # Its peak AdamW learning rate (other settings as above).
  r.seed = 0  # Seed of the training alone (init, sampling, batch order; 0 = the master seed): repeats on the same data and identifiers.
  r.log_every_steps = 50  # Console/TensorBoard logging interval.
  r.checkpoint_every_steps = 1000 if paper else 200  # Orbax save interval.
  r.eval_every_epochs = 1  # Validation (NDCG@5 per task) interval.
  r.eval_rows = 10_000 if paper else 500  # Validation rows per task (the last ones).
  r.max_to_keep = 2  # Periodic checkpoints kept (the best is kept besides).
  # Processes building the next epochs ahead of the steps (0 = one background thread,
  # enough on CPU, where an epoch of steps takes minutes; trainer/prefetch.py). On an
  # accelerator an epoch's build (~3 s of Python a core on Office) outlasts its steps.
  r.epoch_workers = 4 if paper else 0
  # Compile the step for each epoch's batch shapes in a background thread before the loop
  # meets them (trainer/precompile.py; the same programs): a new shape then stops the
  # steps only while its program is not ready yet. Off: on the 2-core host it halved the
  # loop's waiting but the compiles took the steps' cores (1,584 against 1,618 steps in
  # 10 minutes; README, Benchmarks). Not yet measured on an accelerator host, where the
  # host's cores are free while the device steps.
  r.precompile = False
  r.max_steps = 0  # Stop early after this many steps, schedule unchanged (0 = never; tests, debugging).
  # Wall-clock budget of the step loop; validate, save and stop when spent (0 = none; cpu:
  # a guard that keeps the pipeline inside 90 minutes on a slower host, schedule unchanged).
  r.max_minutes = 0.0 if paper else 55.0

  # --------------------------------------------------------------- mesh (docs/design.md §5)
  c.mesh = mesh = ml_collections.ConfigDict()
  mesh.data_axis = "data"  # Mesh axis the batch is sharded over.
  mesh.shard_params = False  # FSDP: shard large parameters over the data axis.

  # ---------------------------------------------------------------- eval (docs/design.md §6)
  c.eval = v = ml_collections.ConfigDict()
  v.beam_size = 30  # Beam width of the constrained search (also validation's, when it uses beams).
  v.batch_size = 32  # Examples per decoding batch.
  # "full": log-softmax over the whole vocabulary (the authors' way). "allowed": over the
  # tokens the trie allows at each step; biased by trie shape (a level where a candidate's
  # branch does not split costs nothing), kept for comparison only.
  v.score = "full"
  # How the 100 candidates are ranked (validation and test): "exact" scores every candidate's
  # identifier by its log-likelihood; "beam" keeps what the constrained beam search returns.
  v.rank = "exact"
  v.compare = True  # Eval also ranks the 100 candidates the other way and reports beam/exact agreement.
  v.full_catalog = True  # Also rank against the whole catalog (beam search).
  v.exact_catalog = False  # Rank the whole catalog exactly instead (cost ~ rows x items).
  v.max_examples = 0  # Limit test rows per task (0 = all).

  # -------------------------------------------------------------------- report (§7)
  c.report = p = ml_collections.ConfigDict()
  p.plots = True  # Write PNG plots next to the tables.

  # --------------------------------------------------------------- infer (issue 10)
  c.infer = i = ml_collections.ConfigDict()
  i.requests = ""  # JSONL file of requests.
  i.output = ""  # JSONL file of answers.
  i.k = 10  # Items per answer (a request may ask for its own k, up to eval.beam_size).
  i.example_requests = 0  # Without a request file: answer this many test-split examples.

  # ------------------------------------------- one accelerator host (issue 25)
  # The mesh (mesh.data_axis) spans every device JAX sees, so on one host: all its GPUs.
  # Batches split over them; parameters are replicated (mesh.shard_params=True: FSDP).
  # Memory figures are estimates from gensar_jax/benchmarks/pod_numbers.py (+-30%);
  # nothing here has been measured on an accelerator yet.
  if args["preset"] == "gpu1":
    # bf16 compute: activations and matmul inputs in bfloat16 (model/t5.py casts at each
    # layer); parameters, gradients and AdamW state stay float32, and attention softmax
    # and the loss are float32 (t5.py computes attention logits and output logits in
    # float32; train/step.py casts logits to float32 before the cross-entropy).
    m.dtype = "bfloat16"  # The main model's compute dtype.
    g.model.dtype = "bfloat16"  # doc2query's t5-small too.
    # The paper's global batch, 8,192, in 32 micro-batches of 256 on one device. Per
    # device: state 20 B/parameter x 48.9M (9,539-token vocabulary) = 0.9 GiB; one
    # micro-batch's activations at the worst source bucket (512 tokens) ~43 GiB in bf16
    # (~65 GiB in float32); total ~44 GiB, under the 60 GiB that XLA preallocates on an
    # 80 GiB H100 (75%). 16 micro-batches of 512 (~87 GiB) fit only an H200's 105 GiB.
    # With N local GPUs each holds 256 / N examples of a micro-batch.
    r.batch_size = 8192  # Global examples per optimizer step (the paper's).
    r.grad_accum_steps = 32  # Micro-batches of 256 per step (arithmetic above).
    # Decoding batch (validation, eval): 8x the cpu preset's; ~0.3 GiB of logits a beam step.
    v.batch_size = 256
  elif args["preset"] == "gpu1_small":
    # The cpu preset's model, identifiers and stages (2.0M parameters, float32: a model
    # this small is bound by per-step overhead, not matmul speed, and float32 keeps the
    # curve comparable with the CPU runs; on GPUs float32 matmuls use TF32 by default)
    # trained for the paper's 200 epochs. Office: 42,935 examples an epoch = 41 steps of
    # 1,024 (the remainder sits out that epoch), 8,200 steps in all (the cpu preset:
    # 2,000 steps of 64, ~3 epochs).
    # Activations of 1,024 examples at the worst source bucket (256 tokens): ~13 GiB.
    r.batch_size = 1024  # Global examples per optimizer step: 16x the cpu preset's 64.
    r.grad_accum_steps = 1  # One micro-batch (it fits, see above).
    # sqrt scaling from the cpu preset's 1e-3 at batch 64: 1e-3 x sqrt(1024 / 64) (AdamW;
    # not tuned: at batch 64, 3e-3 ranked worse than 1e-3, README run D).
    r.learning_rate = 4e-3
    r.epochs = 200.0  # The paper's epochs.
    r.steps = 0  # The schedule follows epochs (8,200 steps on Office).
    r.max_minutes = 0.0  # No wall-clock guard (the cpu preset's is for 2 cores).
    # The paper's recipe: the cpu preset's departures (issue 24) off.
    r.warm_start_steps = 0  # No warm start.
    r.warm_start_minutes = 0.0  # (No warm start to budget.)
    tasks.nrip_popularity_power = 0.0  # Uniform NRIP rows.
    tasks.min_passes = 0.0  # The shares alone.
    r.checkpoint_every_steps = 500  # Orbax save interval (~12 epochs on Office).
    r.eval_every_epochs = 10  # Validation every 10 epochs (410 steps on Office): 20 points.
    # An Office epoch of steps is ~0.7 s of the H200 (17 ms a step), its build ~3 s of one
    # host core: 8 builders keep ahead (the H200 host has 16 cores).
    r.epoch_workers = 8
    v.batch_size = 256  # Decoding batch (validation, eval).
  return c
