"""The layer order of `gensar_jax/`, checked statically (imports read with `ast`).

From the bottom up; a module imports only modules of its own layer or below, and no
module imports another stage package's `stage.py`:
  0 ground floor   errors, atomic, file_digests, context (what a stage's `run` gets),
                   sharding, padding, metrics, tokens, task_kinds (the one task ↔
                   identifier kind ↔ behaviour-token table), prompts, compute_trend,
                   progress (bars only on a terminal), manifest (stage output digests),
                   workdir_lock (one run per workdir)
  1 shared models  model/, decoding/, ranking (the generative ranker of validation,
                   eval and inference)
  2 stage libraries  every module of a stage package but its stage.py (data/, embed/,
                   identifiers/, doc2query/, train/, evaluation/, report/, inference/;
                   each package's contract module of its outputs among them: data/dataset,
                   embed/outputs, identifiers/table, doc2query/outputs, train/checkpoint,
                   evaluation/outputs), and tasks (the training tasks as text)
  3 stages         <package>/stage.py: reads other stages through their contract modules
  4 runner         pipeline, config_files, config_ranges
  5 entry points   main, experiments, benchmarks/, devices (what JAX sees)
"""

import ast
import pathlib

from tests.conftest import REPO

PACKAGE = REPO / "gensar_jax"
GROUND = {"__init__", "errors", "atomic", "file_digests", "context", "sharding", "padding",
          "metrics", "tokens", "task_kinds", "prompts", "compute_trend", "progress",
          "manifest", "workdir_lock"}
SHARED = {"model", "decoding", "ranking"}
STAGE_PACKAGES = {"data", "embed", "identifiers", "doc2query", "train", "evaluation",
                  "report", "inference"}
LIBRARIES = {"tasks"}
RUNNER = {"pipeline", "config_files", "config_ranges"}
ENTRY = {"main", "experiments", "benchmarks", "devices"}
LAYER_NAMES = ("ground floor", "shared models", "stage libraries", "stages", "runner",
               "entry points")


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
  if top in STAGE_PACKAGES:
    return 3 if parts[1:] == ["stage"] else 2
  if top in LIBRARIES:
    return 2
  if top in RUNNER:
    return 4
  if top in ENTRY:
    return 5
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
  for package in STAGE_PACKAGES:
    assert f'"gensar_jax.{package}.stage"' in pipeline_text, package


def test_no_upward_import_and_no_stage_imports_another_stage():
  bad = []
  for path in sorted(PACKAGE.rglob("*.py")):
    me = module_name(path)
    for other in imports(path):
      if other == "gensar_jax":
        continue
      if layer(other) > layer(me):
        bad.append(f"{me} ({LAYER_NAMES[layer(me)]}) imports {other} "
                   f"({LAYER_NAMES[layer(other)]})")
      elif other.endswith(".stage") and other.rsplit(".", 1)[0] != me.rsplit(".", 1)[0]:
        if layer(me) <= 3:
          bad.append(f"{me} imports another stage's {other}")
  assert not bad, "\n".join(bad)


def test_the_checker_sees_an_upward_import(tmp_path):
  path = tmp_path / "x.py"
  path.write_text("def f():\n  from gensar_jax.train import stage\n"
                  "from gensar_jax import ranking, metrics\n")
  assert sorted(imports(path)) == [
      "gensar_jax.metrics", "gensar_jax.ranking", "gensar_jax.train.stage"]
  assert (layer("gensar_jax.train.stage") > layer("gensar_jax.train.loop")
          > layer("gensar_jax.ranking") > layer("gensar_jax.metrics"))
