"""Evaluate a served model on a messages JSONL test set with the OpenAI client.

Requests run concurrently (asyncio) with temperature 0, Qwen3 thinking off, the row's system
prompt and the answer schema as `response_format` json_schema (never the `guided_json` field that
vLLM 0.12 removed: it is ignored silently). Every finished row is appended to predictions.jsonl at
once, so an interrupted evaluation resumes where it stopped, losing and repeating nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from swiftpipe import ner
from swiftpipe.errors import SwiftpipeError
from swiftpipe.rundir import write_atomic, write_json

THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)
FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


class EvalError(SwiftpipeError):
    pass


class AuthError(EvalError):
    pass


# ---------------------------------------------------------------- data


@dataclass
class TestRow:
    index: int
    system: Optional[str]
    user: str
    gold: Any  # parsed gold answer
    gold_text: str

    @property
    def key(self) -> str:
        """Identifies the row's content, so a resumed evaluation never mixes up rows."""
        payload = json.dumps([self.system, self.user, self.gold_text], ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def read_test_rows(path: Path, default_system: Optional[str] = None) -> list[TestRow]:
    """Read ms-swift messages rows: system (optional) / user / assistant (the gold JSON)."""
    rows, problems = [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise EvalError(f"test file not found: {path}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            messages = json.loads(line)["messages"]
            by_role = {m["role"]: m["content"] for m in messages}
            gold_text = [m["content"] for m in messages if m["role"] == "assistant"][-1]
            gold = json.loads(gold_text)
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
            problems.append(f"{path}:{number}: {_row_problem(exc)}")
            continue
        if "user" not in by_role:
            problems.append(f"{path}:{number}: no user message")
            continue
        rows.append(TestRow(len(rows), by_role.get("system", default_system), by_role["user"], gold, gold_text))
    if problems:
        shown = "\n".join(f"  - {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise EvalError(
            f"{len(problems)} bad row(s) in the test file (expected one JSON object per line: "
            f'{{"messages": [{{"role": "system"|"user"|"assistant", "content": ...}}]}}, '
            f"the assistant content being the gold JSON):\n{shown}{more}"
        )
    if not rows:
        raise EvalError(f"{path}: no test rows")
    return rows


def _row_problem(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg})"
    if isinstance(exc, KeyError):
        return f"missing key {exc}"
    if isinstance(exc, IndexError):
        return "no assistant message (the gold answer)"
    return f"unexpected structure ({exc})"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if value is None:
        return "null"
    return "string"


def schema_from_gold(rows: list[TestRow]) -> Optional[dict]:
    """Without a recipe schema: the gold answers' keys (all required) and their value types."""
    if not all(isinstance(r.gold, dict) for r in rows):
        return None
    types: dict[str, set[str]] = {}
    for row in rows:
        for key, value in row.gold.items():
            types.setdefault(key, set()).add(_json_type(value))
    properties = {
        key: {"type": sorted(kinds)[0] if len(kinds) == 1 else sorted(kinds)} for key, kinds in types.items()
    }
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


# ---------------------------------------------------------------- scoring


def parse_answer(text: Optional[str]) -> tuple[Optional[Any], bool]:
    """(parsed JSON or None, whether a leading think block was stripped)."""
    if text is None:
        return None, False
    stripped = THINK_BLOCK.sub("", text, count=1)
    had_think = stripped != text
    fenced = FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        return json.loads(stripped), had_think
    except json.JSONDecodeError:
        return None, had_think


def score(gold: Any, prediction: Any) -> tuple[bool, dict[str, bool]]:
    """Exact match (parsed objects equal, as the reference evaluator does) and per-field hits."""
    fields = {}
    if isinstance(gold, dict):
        pred = prediction if isinstance(prediction, dict) else {}
        fields = {k: k in pred and pred[k] == v for k, v in gold.items()}
    return gold == prediction, fields


def percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def compute_metrics(records: list[dict], *, wall_seconds: Optional[float] = None, sent: int = 0,
                    metric: str = "exact_match") -> dict:
    n = len(records)
    correct = sum(r["correct"] for r in records)
    field_hits: dict[str, list[bool]] = {}
    for r in records:
        for name, hit in r.get("fields", {}).items():
            field_hits.setdefault(name, []).append(hit)
    latencies = [r["latency_s"] for r in records if r.get("latency_s") is not None]
    return {
        "n": n,
        "correct": correct,
        "exact_match": correct / n if n else 0.0,
        "invalid_json": sum(1 for r in records if r["error"] is None and r["prediction"] is None),
        "api_errors": sum(1 for r in records if r["error"] is not None),
        "think_blocks_stripped": sum(1 for r in records if r.get("think_stripped")),
        "per_field": {name: sum(h) / len(h) for name, h in field_hits.items()},
        "latency_p50_s": percentile(latencies, 0.5),
        "latency_p95_s": percentile(latencies, 0.95),
        "requests_per_s": (sent / wall_seconds) if wall_seconds and sent else None,
        "requests_sent_this_session": sent,
        "metric": metric,
        **({"ner": ner.scores((r["gold"], r["prediction"]) for r in records)} if metric == "ner_f1" else {}),
    }


# ---------------------------------------------------------------- requests


@dataclass
class EvalConfig:
    base_url: str
    model: str
    api_key: str
    schema: Optional[dict] = None
    concurrency: int = 16
    max_tokens: int = 512
    timeout: float = 120
    retries: int = 4
    enable_thinking: bool = False
    replicas: list = field(default_factory=list)  # more base URLs serving the same model; requests alternate
    metric: str = "exact_match"  # or ner_f1: entity-level P/R/F1 of {type: [entity, ...]} answers
    extra_body: dict = field(default_factory=dict)


def request_kwargs(cfg: EvalConfig, row: TestRow) -> dict:
    messages = ([{"role": "system", "content": row.system}] if row.system else []) + [
        {"role": "user", "content": row.user}
    ]
    kwargs: dict[str, Any] = {
        "model": cfg.model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": cfg.max_tokens,
        "extra_body": {"chat_template_kwargs": {"enable_thinking": cfg.enable_thinking}, **cfg.extra_body},
    }
    if cfg.schema:
        kwargs["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": cfg.schema, "strict": True},
        }
    return kwargs


@dataclass
class Completion:
    text: Optional[str] = None
    error: Optional[str] = None  # after the retries: connection / timeout / 5xx / 4xx message
    latency_s: Optional[float] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: Optional[str] = None


async def chat(client, kwargs: dict, *, retries: int, base_url: str, model: str) -> Completion:
    """One chat completion through the OpenAI client: retries with backoff on connection errors,
    timeouts, 429 and 5xx; a 4xx for this request is returned as its error; a rejected key or an
    unknown model stops the whole run (every other request would fail the same way)."""
    import openai

    result = Completion()
    for attempt in range(retries + 1):
        started = time.perf_counter()
        try:
            response = await client.chat.completions.create(**kwargs)
        except openai.AuthenticationError as exc:
            raise AuthError(
                f"the server at {base_url} rejected the API key (HTTP {exc.status_code}); "
                f"set OPENAI_API_KEY to the key the server was started with"
            ) from None
        except (openai.APIConnectionError, openai.APITimeoutError, openai.InternalServerError,
                openai.RateLimitError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            if attempt < retries:
                await asyncio.sleep(min(0.5 * 2**attempt, 8.0))
            continue
        except openai.NotFoundError as exc:
            raise EvalError(
                f"the server at {base_url} does not serve model '{model}' ({exc.message}); "
                f"pass the served name with --model"
            ) from None
        except openai.APIStatusError as exc:  # 4xx for this row (prompt too long, ...): not retried
            result.error = f"HTTP {exc.status_code}: {exc.message}"
            return result
        choice = response.choices[0]
        usage = response.usage
        return Completion(text=choice.message.content, latency_s=time.perf_counter() - started,
                          prompt_tokens=usage.prompt_tokens if usage else 0,
                          completion_tokens=usage.completion_tokens if usage else 0,
                          finish_reason=choice.finish_reason)
    return result


async def for_each_concurrently(items: list, handle, concurrency: int) -> None:
    """Await `handle(item)` for every item with `concurrency` workers; on error or cancellation the
    other workers are cancelled before this returns (nothing keeps running in the background)."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def worker() -> None:
        while True:
            try:
                item = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await handle(item)

    workers = [asyncio.create_task(worker()) for _ in range(min(concurrency, max(len(items), 1)))]
    try:
        await asyncio.gather(*workers)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def _ask(client, cfg: EvalConfig, row: TestRow) -> dict:
    done = await chat(client, request_kwargs(cfg, row), retries=cfg.retries, base_url=str(client.base_url),
                      model=cfg.model)
    text, error, latency = done.text, done.error, done.latency_s
    prediction, think = parse_answer(text)
    correct, fields = score(row.gold, prediction)
    return {
        "index": row.index,
        "key": row.key,
        "input": row.user,
        "gold": row.gold,
        "prediction": prediction,
        "raw": text,
        "correct": correct,
        "fields": fields,
        "think_stripped": think,
        "error": error,
        "latency_s": latency,
        "server": str(client.base_url).rstrip("/"),
    }


def _http_client():
    """The OpenAI SDK's own httpx client, with TCP_NODELAY on its sockets.

    Without it the request body's small second write waits for the delayed ACK of the headers
    (Nagle): ~25 ms per request, during which the send blocks the whole event loop, so requests
    leave in waves and the server idles between them (measured: 8 vs 30+ requests/s at
    concurrency 16 on CPU vLLM; vLLM's own aiohttp benchmark client sets TCP_NODELAY too).
    """
    import socket

    import httpx2
    import openai

    transport = httpx2.AsyncHTTPTransport(
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=1000),
    )
    return openai.DefaultAsyncHttpxClient(transport=transport)


def load_done(path: Path, rows: list[TestRow]) -> dict[int, dict]:
    """Finished rows from an earlier, interrupted evaluation of the same test set.

    A row counts as finished when it got an answer (API errors are retried). A half-written last
    line (killed mid-write) and rows whose content changed are dropped.
    """
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    keys = {r.index: r.key for r in rows}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        index = record.get("index")
        if keys.get(index) == record.get("key") and record.get("error") is None:
            done[index] = record
    return done


async def _evaluate(cfg: EvalConfig, rows: list[TestRow], out: Path, progress: bool) -> tuple[list[dict], float, int]:
    import openai

    predictions = out / "predictions.jsonl"
    done = load_done(predictions, rows)
    # Rewrite the file with the clean finished records before appending to it.
    write_atomic(predictions, "".join(json.dumps(done[i], ensure_ascii=False) + "\n" for i in sorted(done)))
    todo = [r for r in rows if r.index not in done]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), initial=len(done), desc="eval", unit="req", dynamic_ncols=True)
    clients = [openai.AsyncOpenAI(base_url=url, api_key=cfg.api_key, max_retries=0, timeout=cfg.timeout,
                                  http_client=_http_client()) for url in [cfg.base_url, *cfg.replicas]]
    started = time.perf_counter()

    with open(predictions, "a", encoding="utf-8") as sink:

        async def ask(row: TestRow) -> None:
            record = await _ask(clients[row.index % len(clients)], cfg, row)  # spread over the replicas
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            done[row.index] = record
            if bar:
                bar.update(1)

        try:
            await for_each_concurrently(todo, ask, cfg.concurrency)
        finally:
            for client in clients:
                await client.close()
            if bar:
                bar.close()
    return [done[i] for i in sorted(done)], time.perf_counter() - started, len(todo)


def evaluate(cfg: EvalConfig, rows: list[TestRow], out: Path, *, progress: bool = True, title: str = "") -> dict:
    """Run (or resume) the evaluation into `out`; returns metrics.json's content."""
    out.mkdir(parents=True, exist_ok=True)
    records, wall, sent = asyncio.run(_evaluate(cfg, rows, out, progress))
    # Final form: one line per row, in test-file order.
    write_atomic(out / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    metrics = compute_metrics(records, wall_seconds=wall, sent=sent, metric=cfg.metric)
    metrics.update(model=cfg.model, base_url=cfg.base_url, replicas=cfg.replicas,
                   schema_constrained=cfg.schema is not None)
    write_json(out / "metrics.json", metrics)
    write_atomic(out / "report.md", report_markdown(metrics, records, title=title or cfg.model))
    return metrics


# ---------------------------------------------------------------- reports


def headline(metrics: dict) -> str:
    """One line for the console: exact match (and NER micro F1 when scored), invalid JSON, API errors."""
    line = f"exact match {metrics['exact_match']:.1%} ({metrics['correct']}/{metrics['n']})"
    if metrics.get("ner"):
        line += f", NER micro F1 {metrics['ner']['micro']['f1']:.1%}"
    return line + f", invalid JSON {metrics['invalid_json']}, API errors {metrics['api_errors']}"


def pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def ner_table(scores: dict) -> str:
    rows = ["| entity type | precision | recall | F1 | gold | predicted |", "|---|---|---|---|---|---|"]
    for kind, s in scores["per_type"].items():
        rows.append(f"| {kind} | {pct(s['precision'])} | {pct(s['recall'])} | {pct(s['f1'])} | {s['gold']} | "
                    f"{s['predicted']} |")
    micro, macro = scores["micro"], scores["macro"]
    rows.append(f"| **micro** | {pct(micro['precision'])} | {pct(micro['recall'])} | **{pct(micro['f1'])}** | "
                f"{micro['gold']} | {micro['predicted']} |")
    rows.append(f"| macro | {pct(macro['precision'])} | {pct(macro['recall'])} | {pct(macro['f1'])} | | |")
    return "\n".join(rows)


def report_markdown(metrics: dict, records: list[dict], *, title: str, examples: int = 10) -> str:
    lines = [
        f"# Evaluation: {title}",
        "",
        f"- rows: {metrics['n']}",
        f"- exact match: **{pct(metrics['exact_match'])}** ({metrics['correct']}/{metrics['n']})",
        *([f"- NER micro F1: **{pct(metrics['ner']['micro']['f1'])}**"] if metrics.get("ner") else []),
        f"- invalid JSON: {metrics['invalid_json']}; API errors: {metrics['api_errors']}; "
        f"think blocks stripped: {metrics['think_blocks_stripped']}",
    ]
    if metrics.get("latency_p50_s") is not None:
        lines.append(f"- latency p50 / p95: {metrics['latency_p50_s']:.3f} s / {metrics['latency_p95_s']:.3f} s")
    if metrics.get("requests_per_s"):
        lines.append(f"- throughput: {metrics['requests_per_s']:.1f} requests/s")
    if metrics.get("ner"):
        lines += ["", ner_table(metrics["ner"])]
    if metrics["per_field"]:
        lines += ["", "| field | accuracy |", "|---|---|"]
        lines += [f"| {name} | {pct(acc)} |" for name, acc in metrics["per_field"].items()]
    wrong = [r for r in records if not r["correct"]][:examples]
    if wrong:
        lines += ["", f"## First {len(wrong)} misses", ""]
        for r in wrong:
            if r["error"]:
                got = f"API error: {r['error']}"
            elif r["prediction"] is None:
                got = f"invalid JSON: {str(r['raw'])[:200]!r}"
            else:
                got = json.dumps(r["prediction"], ensure_ascii=False)
            lines += [f"- input: {r['input']}", f"  - gold: {json.dumps(r['gold'], ensure_ascii=False)}",
                      f"  - got:  {got}"]
    return "\n".join(lines) + "\n"


def comparison_markdown(base: dict, tuned: dict, base_records: list[dict], tuned_records: list[dict],
                        *, examples: int = 20) -> str:
    """Base vs fine-tuned side by side, plus the rows whose outcome changed."""
    lines = [
        "# Base vs fine-tuned",
        "",
        "| metric | base | fine-tuned |",
        "|---|---|---|",
        f"| exact match | {pct(base['exact_match'])} ({base['correct']}/{base['n']}) | "
        f"{pct(tuned['exact_match'])} ({tuned['correct']}/{tuned['n']}) |",
        f"| invalid JSON | {base['invalid_json']} | {tuned['invalid_json']} |",
        f"| API errors | {base['api_errors']} | {tuned['api_errors']} |",
    ]
    if tuned.get("ner") and base.get("ner"):
        lines.append(f"| NER micro F1 | {pct(base['ner']['micro']['f1'])} | {pct(tuned['ner']['micro']['f1'])} |")
    for name in tuned["per_field"]:
        lines.append(f"| field: {name} | {pct(base['per_field'].get(name))} | {pct(tuned['per_field'][name])} |")
    by_key = {r["key"]: r for r in base_records}
    fixed = [(by_key[r["key"]], r) for r in tuned_records if r["key"] in by_key and r["correct"] and not by_key[r["key"]]["correct"]]
    broken = [(by_key[r["key"]], r) for r in tuned_records if r["key"] in by_key and not r["correct"] and by_key[r["key"]]["correct"]]
    lines += ["", f"Outcome changed: {len(fixed)} fixed by fine-tuning, {len(broken)} broken by it."]
    for label, pairs in (("Fixed", fixed), ("Broken", broken)):
        if not pairs:
            continue
        lines += ["", f"## {label} (first {min(len(pairs), examples)})", ""]
        for b, t in pairs[:examples]:
            lines += [f"- input: {t['input']}",
                      f"  - gold: {json.dumps(t['gold'], ensure_ascii=False)}",
                      f"  - base: {b['raw']!r}" if b["prediction"] is None else
                      f"  - base: {json.dumps(b['prediction'], ensure_ascii=False)}",
                      f"  - fine-tuned: {json.dumps(t['prediction'], ensure_ascii=False)}"]
    return "\n".join(lines) + "\n"


def read_records(out: Path) -> list[dict]:
    path = out / "predictions.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
