"""The layer order of `gensar_jax/`, checked statically (imports read with `ast`).

From the bottom up; a module imports only modules of its own layer or below:
  0 ground floor   errors, atomic, file_digests, context (what a stage's `run` gets),
                   sharding, padding, metrics, tokens, task_kinds (the one task ↔
                   identifier kind ↔ behaviour-token table), prompts, compute_trend,
                   progress (bars only on a terminal), manifest (stage output digests),
                   workdir_lock (one run per workdir), seeds (every stage's seed),
                   console_logs (which log lines reach the console)
  1 shared models  model/, decoding/, ranking (the generative ranker of validation,
                   eval and inference)
  2 engines        trainer/ (the training loop, step, batches, checkpoints and logs that
                   the train and doc2query stages both use)
  3 stage libraries  every module of a stage package but its stage.py (data/, embed/,
                   identifiers/, doc2query/, train/, evaluation/, report/, inference/),
                   tasks (the training tasks as text) and trained_model (a trained run
                   loaded for decoding)
  4 stages         <package>/stage.py
  5 runner         pipeline, config_files, config_ranges
  6 entry points   main, experiments, benchmarks/, devices (what JAX sees)

Within layers 3 and 4 the pipeline's order holds: a module of a stage package imports,
from another stage package, only an *earlier* stage's contract modules (`CONTRACTS`:
how its outputs are read), never a later stage's module and never another `stage.py`.
"""

import ast
import pathlib

from tests.conftest import REPO

PACKAGE = REPO / "gensar_jax"
GROUND = {"__init__", "errors", "atomic", "file_digests", "context", "sharding", "padding",
          "metrics", "tokens", "task_kinds", "prompts", "compute_trend", "progress",
          "manifest", "workdir_lock", "seeds", "console_logs"}
SHARED = {"model", "decoding", "ranking"}
ENGINES = {"trainer"}
# The stage packages in pipeline order (`gensar_jax.pipeline.STAGES`).
PIPELINE_ORDER = ("data", "embed", "identifiers", "doc2query", "train", "evaluation",
                  "report", "inference")
STAGE_PACKAGES = set(PIPELINE_ORDER)
LIBRARIES = {"tasks", "trained_model"}
RUNNER = {"pipeline", "config_files", "config_ranges"}
ENTRY = {"main", "experiments", "benchmarks", "devices"}
LAYER_NAMES = ("ground floor", "shared models", "engines", "stage libraries", "stages",
               "runner", "entry points")
# What later stages (and the libraries) may import of a stage package: the modules that
# read its outputs. data: the dataset reader and its types, and the BM25 tokenisation its
# negatives were drawn with (the BM25 baseline ranks alike); embed: the embeddings reader,
# the SASRec and text encoder it saved or embedded with (the baselines score with them).
CONTRACTS = {
    "data": {"dataset", "schema", "negatives"},
    "embed": {"outputs", "sasrec", "text_encoder"},
    "identifiers": {"table"},
    "doc2query": {"outputs"},
    "train": {"outputs"},
    "evaluation": {"outputs"},
    "report": set(),
    "inference": set(),
}


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
  """The layer of a module `gensar_jax.<...>`; fails on a module the order leaves out."""
  parts = module.split(".")[1:] or ["__init__"]
  top = parts[0]
  if top in GROUND:
    return 0
  if top in SHARED:
    return 1
  if top in ENGINES:
    return 2
  if top in STAGE_PACKAGES:
    return 4 if parts[1:] == ["stage"] else 3
  if top in LIBRARIES:
    return 3
  if top in RUNNER:
    return 5
  if top in ENTRY:
    return 6
  raise AssertionError(f"{module} is in no layer; add it to tests/test_layering.py and the "
                       "README's 'Where things live'")


def imports(path: pathlib.Path) -> list[str]:
  """Every `gensar_jax` module `path` imports (at the top or inside a function)."""
  known = {module_name(p) for p in PACKAGE.rglob("*.py")}
  out = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out.extend(a.name for a in node.names if a.name.startswith("gensar_jax"))
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("gensar_jax"):
      for a in node.names:  # `from gensar_jax.x import y`: module x.y, or a name of x.
        sub = f"{node.module}.{a.name}"
        out.append(sub if sub in known else node.module)
  return out


def test_every_module_has_a_layer_and_stage_packages_are_the_pipelines():
  for path in PACKAGE.rglob("*.py"):
    layer(module_name(path))
  with_stage = {p.parent.name for p in PACKAGE.glob("*/stage.py")}
  assert with_stage == STAGE_PACKAGES
  pipeline_text = (PACKAGE / "pipeline.py").read_text()
  at = [pipeline_text.find(f'"gensar_jax.{package}.stage"') for package in PIPELINE_ORDER]
  assert -1 not in at and at == sorted(at), "PIPELINE_ORDER is the order of pipeline.STAGES"


def order_problem(me: str, other: str) -> str | None:
  """Why `me` may not import `other` under the pipeline's order (None: it may)."""
  mine, theirs = me.split(".")[1], other.split(".")[1] if "." in other else ""
  if theirs not in STAGE_PACKAGES or theirs == mine or layer(me) not in (3, 4):
    return None
  module = other.split(".")[2] if other.count(".") >= 2 else ""
  if mine in STAGE_PACKAGES and PIPELINE_ORDER.index(theirs) > PIPELINE_ORDER.index(mine):
    return f"{me} imports {other}, of a later stage ({theirs} runs after {mine})"
  if module not in CONTRACTS[theirs]:
    return (f"{me} imports {other}, which is not one of the {theirs} stage's contract "
            f"modules {sorted(CONTRACTS[theirs])}")
  return None


def problems(path: pathlib.Path, me: str | None = None) -> list[str]:
  """Every layering or pipeline-order problem of one module's imports (`me`: its module
  name, by default from its path in the package)."""
  me = me or module_name(path)
  bad = []
  for other in imports(path):
    if other == "gensar_jax":
      continue
    if layer(other) > layer(me):
      bad.append(f"{me} ({LAYER_NAMES[layer(me)]}) imports {other} "
                 f"({LAYER_NAMES[layer(other)]})")
    elif (why := order_problem(me, other)) is not None:
      bad.append(why)
  return bad


def test_no_upward_import_and_stages_import_only_earlier_stages_contracts():
  bad = [b for path in sorted(PACKAGE.rglob("*.py")) for b in problems(path)]
  assert not bad, "\n".join(bad)


def test_a_planted_import_of_a_later_stage_is_caught(tmp_path):
  root = tmp_path / "gensar_jax"
  cases = {
      "doc2query/stage.py": "from gensar_jax.train import stage\n",  # A later stage.
      "doc2query/model.py": "from gensar_jax.train import outputs\n",  # A later contract.
      "evaluation/stage.py": "from gensar_jax.train import curve\n",  # Not a contract.
      "report/tables.py": "from gensar_jax.evaluation import baselines\n",
      "trainer/loop.py": "from gensar_jax.train import outputs\n",  # An engine, upward.
  }
  for rel, text in cases.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    assert problems(path, "gensar_jax." + rel[:-3].replace("/", ".")), rel
  fine = {"train/stage.py": "from gensar_jax.doc2query import outputs\n",
          "evaluation/baselines.py": "from gensar_jax.embed import sasrec\n",
          "trained_model.py": "from gensar_jax.train import outputs\n"}
  for rel, text in fine.items():
    path = root / "fine" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    assert not problems(path, "gensar_jax." + rel[:-3].replace("/", ".")), rel


def test_the_checker_sees_an_upward_import(tmp_path):
  path = tmp_path / "x.py"
  path.write_text("def f():\n  from gensar_jax.train import stage\n"
                  "from gensar_jax import ranking, metrics\n")
  assert sorted(imports(path)) == [
      "gensar_jax.metrics", "gensar_jax.ranking", "gensar_jax.train.stage"]
  assert (layer("gensar_jax.train.stage") > layer("gensar_jax.train.outputs")
          > layer("gensar_jax.trainer.loop") > layer("gensar_jax.ranking")
          > layer("gensar_jax.metrics"))
