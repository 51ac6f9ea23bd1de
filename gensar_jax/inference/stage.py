"""The infer stage: answer a JSONL file of requests with the trained model (issue 10).

  python -m gensar_jax.main --config=... --workdir=DIR --config.stages=infer \\
      --config.infer.requests=requests.jsonl --config.infer.output=answers.jsonl

One request a line (UTF-8, a byte-order mark is ignored; lines end with "\\n" or "\\r\\n"):
  {"id": "r1", "task": "recommend", "history": [["rec", ITEM], ["search", "gel pen", ITEM]],
   "k": 10, "candidates": [ITEM, ...]}                 (id, history, k, candidates optional)
  {"id": "r2", "task": "search", "query": "stapler", "history": [...]}
Fields and their types are checked strictly: `task` is "recommend" or "search"; `id` a
string, an integer or null; `history` a list of `["rec", ITEM]` / `["search", QUERY,
ITEM]` events; `query` (search requests only) non-empty text; `k` an integer from 1 to
the beam size (`true`, `2.5`, `"3"` are refused; without `k`, `config.infer.k`, lowered
to the beam size with a note when larger); `candidates` a non-empty list of item ids.
A field given as null counts as absent; an unknown or repeated field is an error.

Blank lines (empty or whitespace only) are skipped. Every other line gets one answer
line, in file order, carrying `line`, the request's 1-based line number in the file
(blank lines count, so it is the number an editor shows):
  {"id": "r1", "line": 1, "items": [{"item_id", "title", "score"}, ...], "notes": [...]}
  {"id": "r3", "line": 4, "error": "line 4: history entry 2: unknown item id 'X'",
   "field": "history"}
A bad line gets a one-line `error` naming the line and the field at fault (`field`:
"json", "task", "id", "history", "query", "k", "candidates", or an unknown field's name;
`id` is null unless the line had a valid one); the other lines are still answered.
`notes` says what was cut before the model read the request (a history longer than the
model's window, a query over its word or character limit, a prompt longer than the
encoder), e.g. "query truncated to its first 64 of 900 words".
Valid requests are answered in batches (grouped by task) with a progress bar. Without a
request file, `config.infer.example_requests` example requests built from the test split
are answered and printed (the demo does this).
"""

from __future__ import annotations

import json
import pathlib
import time


from gensar_jax import atomic
from gensar_jax import context
from gensar_jax import errors
from gensar_jax import progress as progress_lib
from gensar_jax import trained_model
from gensar_jax.data import dataset
from gensar_jax.data import schema
from gensar_jax.inference import api

TASKS = {"recommend": "recommendation", "search": "search"}
FIELDS = ("id", "task", "history", "query", "k", "candidates")
_CHUNK = 256  # Requests handed to the model at once (it batches them further).

INPUTS = ("train", "data")  # The model; the catalog and the test split (example requests).
CONFIG_KEYS = ("infer",)
# How to decode: the live eval settings, as the eval stage decodes (infer runs every time,
# so nothing is fingerprinted). The mesh axis comes from the trained run's config.
ALSO_READS = ("eval.beam_size", "eval.batch_size", "eval.score")


def validate(config) -> None:
  """Checks the infer section."""
  i = config.infer
  if i.requests and not pathlib.Path(i.requests).is_file():
    raise errors.PipelineError(f"config.infer.requests: no file {i.requests}")
  if i.requests and not i.output:
    raise errors.PipelineError("config.infer.output must name the answers file")
  if not i.requests and i.example_requests <= 0:
    raise errors.PipelineError(
        "the infer stage needs --config.infer.requests=FILE.jsonl (and infer.output), or "
        "infer.example_requests > 0")
  if i.k < 1:
    raise errors.PipelineError("config.infer.k must be >= 1")


def read_request_lines(path) -> list[str]:
  """The lines of a request file, split at "\\n" only (a "\\r" before it is dropped), so
  list index + 1 is the line number an editor shows; U+2028 and other characters that
  `str.splitlines` would split at stay inside their JSON string. A UTF-8 byte-order
  mark is ignored; undecodable bytes become U+FFFD."""
  text = pathlib.Path(path).read_text(encoding="utf-8-sig", errors="replace")
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()  # The file's final newline ends the last line; it starts none.
  return [l[:-1] if l.endswith("\r") else l for l in lines]


def _show(value, limit: int = 60) -> str:
  """A JSON value as JSON (`true`, `2.5`, `"3"`), long texts and lists cut, one short line."""

  def prune(v, depth):
    if isinstance(v, str):
      return v[:limit]
    if isinstance(v, list):
      return [prune(x, depth + 1) for x in v[:8]] + (["..."] if len(v) > 8 else []) \
          if depth < 4 else "..."
    if isinstance(v, dict):
      return {str(k)[:limit]: prune(x, depth + 1) for k, x in list(v.items())[:8]} \
          if depth < 4 else "..."
    return v

  try:
    text = json.dumps(prune(value, 0), ensure_ascii=False)
  except (TypeError, ValueError):
    text = api.show(value, limit)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _no_repeats(pairs):
  out = {}
  for key, value in pairs:
    if key in out:
      raise api.RequestError(f"field {_show(key)} appears twice", key)
    out[key] = value
  return out


def load_request(line: str) -> dict:
  """The JSON object of one line (RequestError when it is not one)."""
  try:
    req = json.loads(line, object_pairs_hook=_no_repeats)
  except json.JSONDecodeError as e:
    raise api.RequestError(f"malformed JSON at column {e.colno}: {e.msg}", "json") from None
  except RecursionError:
    raise api.RequestError("malformed JSON: nested too deeply", "json") from None
  if not isinstance(req, dict):
    raise api.RequestError(f"a request must be a JSON object, got {_show(req)}", "json")
  return req


def request_id(req: dict):
  """The request's `id` when it is a valid one, else None (to label an error answer)."""
  rid = req.get("id")
  return rid if isinstance(rid, str) or (isinstance(rid, int) and not isinstance(rid, bool)) \
      else None


def check_request(req: dict, model: api.GenSAR, default_k: int) -> dict:
  """Checks one request's fields and types; returns it normalised (with `notes`) or raises
  RequestError naming the field."""
  unknown = [f for f in req if f not in FIELDS]
  if unknown:
    raise api.RequestError(f"unknown field {_show(unknown[0])} (a request has: "
                           f"{', '.join(FIELDS)})", unknown[0])
  req = {f: v for f, v in req.items() if v is not None}  # null = absent
  rid = req.get("id")
  if rid is not None and request_id(req) is None:
    raise api.RequestError(f"id must be a string or an integer, got {_show(rid)}", "id")
  task = req.get("task")
  if not isinstance(task, str) or task not in TASKS:
    raise api.RequestError(f"task must be one of {', '.join(map(json.dumps, TASKS))}, got "
                           f"{_show(task) if 'task' in req else 'none'}", "task")
  history = req.get("history", [])
  if not isinstance(history, list):
    raise api.RequestError(f"history must be a list of events, got {_show(history)}",
                           "history")
  query = req.get("query")
  if task == "search":
    if not isinstance(query, str) or not query.strip():
      raise api.RequestError("a search request needs a non-empty 'query' (text), got "
                             f"{_show(query) if 'query' in req else 'none'}", "query")
  elif query is not None:
    raise api.RequestError("query is only for search requests (task \"search\")", "query")
  notes = []
  if "k" in req:
    k = req["k"]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= model.beam_size:
      raise api.RequestError(f"k must be an integer from 1 to the beam size {model.beam_size}, "
                             f"got {_show(k)}", "k")
  else:
    k = min(int(default_k), model.beam_size)
    if k < default_k:
      notes.append(f"k lowered to the beam size {model.beam_size} (config.infer.k is "
                   f"{default_k})")
  candidates = req.get("candidates")
  if candidates is not None:
    if not isinstance(candidates, list) or not candidates:
      raise api.RequestError(f"candidates must be a non-empty list of item ids, got "
                             f"{_show(candidates)}", "candidates")
    for n, c in enumerate(candidates, 1):
      model.item_index(c, f"candidates entry {n}")
  model.history_events(history)  # Raises naming the bad history entry.
  return {"id": rid, "task": task, "history": history, "query": query, "k": k,
          "candidates": candidates, "notes": notes}


def answer_requests(model: api.GenSAR, lines: list[str], default_k: int,
                    progress: bool = True) -> list[dict]:
  """Answers JSONL request lines: one answer per non-blank line, in order, each with its
  1-based `line` (blank and whitespace-only lines are skipped but counted). A bad line
  gets an `error` answer naming the line and the field; the rest are decoded."""
  out: dict[int, dict] = {}
  valid: dict[str, list[tuple[int, dict]]] = {t: [] for t in TASKS}
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    req = None
    try:
      req = load_request(line)
      checked = check_request(req, model, default_k)
      valid[checked["task"]].append((n, checked))
    except api.RequestError as e:
      out[n] = _error(req, n, e)
  bar = progress_lib.bar(total=sum(len(v) for v in valid.values()), desc="infer", unit="req",
                         show=progress, dynamic_ncols=True)
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
        if a.error is not None:  # Checked above, so not expected; reported all the same.
          out[n] = _error(r, n, api.RequestError(a.error, "request"))
          continue
        out[n] = {"id": r["id"], "line": n, "items": [
            {"item_id": h.item_id, "title": h.title, "score": round(h.score, 5)}
            for h in a.hits[:r["k"]]], "notes": r["notes"] + a.notes}
      bar.update(len(chunk))
  bar.close()
  return [out[n] for n in sorted(out)]


def _error(req, n: int, e: api.RequestError) -> dict:
  """The answer line of a request that cannot be answered."""
  rid = request_id(req) if isinstance(req, dict) else None
  return {"id": rid, "line": n, "error": f"line {n}: {e}", "field": e.field or "request"}


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
  for task in schema.TASKS:
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


def run(config, ctx: context.StageContext) -> dict:
  """Answers the request file (or the example requests) and writes the answers."""
  start = time.time()
  data_dir = ctx.input_dir("data")
  model = api.GenSAR.from_dirs(ctx.input_dir("train"), data_dir, mesh="auto",
                               decoding=trained_model.Decoding.from_config(config.eval))
  i = config.infer
  if i.requests:
    lines = read_request_lines(i.requests)
    output = pathlib.Path(i.output)
  else:
    lines = example_requests(model, data_dir, int(i.example_requests))
    output = ctx.dir / "example_answers.jsonl"
  t0 = time.time()
  answers = answer_requests(model, lines, int(i.k))
  decode_s = time.time() - t0
  output.parent.mkdir(parents=True, exist_ok=True)
  atomic.write_text_atomic(output, "".join(json.dumps(a) + "\n" for a in answers))
  if not i.requests:
    for a in answers:
      req = json.loads(lines[a["line"] - 1])
      what = f"search {req['query']!r}" if req["task"] == "search" else "recommendation"
      last = req["history"][-1] if req["history"] else None
      print(f"\n{what} after {len(req['history'])} events (last: {last}):", flush=True)
      for h in a.get("items", []):
        print(f"  {h['score']:8.3f}  {h['item_id']}  {h['title']}", flush=True)
  errors = sum(1 for a in answers if "error" in a)
  print(f"infer: answered {len(answers) - errors} of {len(answers)} requests"
        + (f"; {errors} refused: see their 'error' lines in {output}" if errors else "")
        + f"; answers in {output}", flush=True)
  return {"requests": len(answers), "answered": len(answers) - errors, "errors": errors,
          "output": str(output), "examples": not i.requests,
          "requests_per_s": round(len(answers) / max(decode_s, 1e-9), 2),
          "infer_s": round(time.time() - start, 2),
          "error_kinds": sorted({a["field"] for a in answers if "error" in a})}
