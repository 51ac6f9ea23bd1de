"""The infer stage: answer a JSONL file of requests with the trained model (issue 10).

  python -m gensar_jax.main --config=... --workdir=DIR --config.stages=infer \\
      --config.infer.requests=requests.jsonl --config.infer.output=answers.jsonl

One request a line:
  {"id": "r1", "task": "recommend", "history": [["rec", ITEM], ["search", "gel pen", ITEM]],
   "k": 10, "candidates": [ITEM, ...]}                 (k and candidates optional)
  {"id": "r2", "task": "search", "query": "stapler", "history": [...]}
One answer a line, in request order:
  {"id": "r1", "items": [{"item_id", "title", "score"}, ...], "notes": [...]}
  {"id": "r3", "error": "unknown item id 'X'"}        (the other lines are still answered)
Valid requests are answered in batches (grouped by task) with a progress bar. Without a
request file, `config.infer.example_requests` example requests built from the test split
are answered and printed (the demo does this).
"""

from __future__ import annotations

import json
import pathlib
import time

from absl import logging
import tqdm

from gensar_jax import pipeline
from gensar_jax.data import dataset
from gensar_jax.data import schema
from gensar_jax.inference import api

TASKS = {"recommend": "recommendation", "search": "search"}
_CHUNK = 256  # Requests handed to the model at once (it batches them further).


def validate(config) -> None:
  """Checks the infer section."""
  i = config.infer
  if i.requests and not pathlib.Path(i.requests).is_file():
    raise pipeline.PipelineError(f"config.infer.requests: no file {i.requests}")
  if i.requests and not i.output:
    raise pipeline.PipelineError("config.infer.output must name the answers file")
  if not i.requests and i.example_requests <= 0:
    raise pipeline.PipelineError(
        "the infer stage needs --config.infer.requests=FILE.jsonl (and infer.output), or "
        "infer.example_requests > 0")
  if i.k < 1:
    raise pipeline.PipelineError("config.infer.k must be >= 1")


def parse_request(line: str, model: api.GenSAR, default_k: int) -> dict:
  """Checks one JSONL line; returns the request or raises RequestError naming the problem."""
  try:
    req = json.loads(line)
  except ValueError as e:
    raise api.RequestError(f"malformed JSON: {e}") from None
  if not isinstance(req, dict):
    raise api.RequestError("a request must be a JSON object")
  task = req.get("task")
  if task not in TASKS:
    raise api.RequestError(f"task must be one of {sorted(TASKS)}, got {task!r}")
  history = req.get("history", [])
  if not isinstance(history, list):
    raise api.RequestError("history must be a list of events")
  events, notes = model.history_events(history)
  query = req.get("query")
  if task == "search":
    if not isinstance(query, str) or not query.strip():
      raise api.RequestError("a search request needs a non-empty 'query'")
  k = req.get("k", default_k)
  if not isinstance(k, int) or not 1 <= k <= model.beam_size:
    raise api.RequestError(f"k must be an integer between 1 and the beam size {model.beam_size}")
  candidates = req.get("candidates")
  if candidates is not None:
    if not isinstance(candidates, list) or not candidates:
      raise api.RequestError("candidates must be a non-empty list of item ids")
    for c in candidates:
      model.item_index(c)
  return {"id": req.get("id"), "task": task, "history": history, "query": query, "k": k,
          "candidates": candidates, "notes": notes, "events": events}


def answer_requests(model: api.GenSAR, lines: list[str], default_k: int,
                    progress: bool = True) -> list[dict]:
  """Answers JSONL request lines; bad lines get an `error` answer, the rest are decoded."""
  out: list[dict | None] = [None] * len(lines)
  valid: dict[str, list[tuple[int, dict]]] = {t: [] for t in TASKS}
  for n, line in enumerate(lines):
    try:
      req = parse_request(line, model, default_k)
      valid[req["task"]].append((n, req))
    except api.RequestError as e:
      rid = None
      try:
        rid = json.loads(line).get("id")
      except (ValueError, AttributeError):
        pass
      out[n] = {"id": rid, "line": n + 1, "error": str(e)}
  bar = tqdm.tqdm(total=sum(len(v) for v in valid.values()), desc="infer", unit="req",
                  disable=not progress, dynamic_ncols=True)
  for task, items in valid.items():
    for lo in range(0, len(items), _CHUNK):
      chunk = items[lo:lo + _CHUNK]
      reqs = [r for _, r in chunk]
      k = max(r["k"] for r in reqs)
      histories = [r["history"] for r in reqs]
      cands = [r["candidates"] for r in reqs]
      if task == "recommend":
        answers = model.recommend(histories, k, cands)
      else:
        answers = model.search(histories, [r["query"] for r in reqs], k, cands)
      for (n, r), a in zip(chunk, answers):
        out[n] = {"id": r["id"], "items": [
            {"item_id": h.item_id, "title": h.title, "score": round(h.score, 5)}
            for h in a.hits[:r["k"]]], "notes": a.notes}
      bar.update(len(chunk))
  bar.close()
  return out


def history_of_row(catalog, rows, r: int) -> list[list[str]]:
  """Row `r`'s history as request events (item ids and query text), oldest first."""
  history = []
  for kind, item, q in zip(rows["history_kind"][r], rows["history_item"][r],
                           rows["history_query"][r]):
    if kind == schema.KIND_REC:
      history.append(["rec", str(catalog.item_ids[item])])
    elif kind == schema.KIND_SEARCH:
      history.append(["search", catalog.queries[q], str(catalog.item_ids[item])])
  return history


def example_requests(model: api.GenSAR, data_dir, count: int) -> list[str]:
  """Request lines from the test split: one recommendation, then searches (count in all)."""
  lines = []
  catalog = model.catalog
  for task in ("recommendation", "search"):
    rows = dataset.load_rows(data_dir, task, "test")
    n = 1 if task == "recommendation" else max(count - 1, 0)
    for r in range(min(n, len(rows["item"]))):
      history = history_of_row(catalog, rows, r)
      req = {"id": f"example-{task}-{r}", "task": "recommend" if task == "recommendation"
             else "search", "history": history, "k": 3}
      if task == "search":
        req["query"] = catalog.queries[int(rows["query"][r])]
      lines.append(json.dumps(req))
  return lines[:count]


def run(config, ctx: pipeline.StageContext) -> dict:
  """Answers the request file (or the example requests) and writes the answers."""
  start = time.time()
  api.check_workdir(ctx.workdir)
  model = api.GenSAR.load(ctx.workdir, mesh="auto")
  i = config.infer
  if i.requests:
    lines = [l for l in pathlib.Path(i.requests).read_text(errors="replace").splitlines()
             if l.strip()]
    output = pathlib.Path(i.output)
  else:
    lines = example_requests(model, ctx.input_dir("data"), int(i.example_requests))
    output = ctx.dir / "example_answers.jsonl"
  t0 = time.time()
  answers = answer_requests(model, lines, int(i.k))
  decode_s = time.time() - t0
  output.parent.mkdir(parents=True, exist_ok=True)
  pipeline.write_text_atomic(output, "".join(json.dumps(a) + "\n" for a in answers))
  if not i.requests:
    for line, a in zip(lines, answers):
      req = json.loads(line)
      what = f"search {req['query']!r}" if req["task"] == "search" else "recommendation"
      last = req["history"][-1] if req["history"] else None
      print(f"\n{what} after {len(req['history'])} events (last: {last}):", flush=True)
      for h in a.get("items", []):
        print(f"  {h['score']:8.3f}  {h['item_id']}  {h['title']}", flush=True)
  errors = sum(1 for a in answers if "error" in a)
  logging.info("infer: %d requests, %d errors, answers in %s", len(lines), errors, output)
  return {"requests": len(lines), "answered": len(lines) - errors, "errors": errors,
          "output": str(output), "requests_per_s": round(len(lines) / max(decode_s, 1e-9), 2),
          "infer_s": round(time.time() - start, 2),
          "error_kinds": sorted({a["error"].split(":")[0] for a in answers if "error" in a})}
