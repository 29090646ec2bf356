"""What the extraction gateway (`swiftpipe serve`) costs over calling its upstream directly.

    python bench/gateway_overhead.py [--requests 2000] [--concurrency 32] [--delay-ms 0] [--out FILE]
    python bench/gateway_overhead.py --upstream-url http://127.0.0.1:8001/v1 --model NAME [...]
    python bench/gateway_overhead.py --workers 2 [--db postgresql://USER@HOST/EMPTY_DB]
    python bench/gateway_overhead.py --litellm /path/to/venv/bin/litellm   # LiteLLM's proxy as a reference

Starts an upstream (by default bench/scripted_upstream.py, which answers at once, so the gateway's
own ceiling is measured; --delay-ms adds a model's time to every answer) or uses a running
OpenAI-compatible server (--upstream-url, key from SWIFTPIPE_UPSTREAM_API_KEY), puts
`swiftpipe serve --upstream bench=URL --recipe recipes/demo-cpu.yaml` in front of it (database and
logs in a temporary directory, or --work), and sends the same --requests extraction requests at
--concurrency three ways, after a warm-up of --warmup requests each:

  direct           POST upstream /v1/chat/completions with the body the gateway itself sends
                   (Task.request_body: system prompt, schema, max_tokens);
  gateway-chat     the same body through the gateway's /v1/chat/completions (model "auto");
  gateway-extract  {"text": ...} through the gateway's /v1/extract;
  litellm          (when LiteLLM's proxy is installed: `--litellm CMD`, else `litellm` on PATH) the
                   direct body through `litellm --config` in front of the same upstream, no database,
                   no logging: its requests/s, latency and CPU per request beside the gateway's.
                   Install it in a venv of its own: `python -m venv ~/litellm && ~/litellm/bin/pip
                   install 'litellm[proxy]'` (not a dependency of swiftpipe).

For each: requests/s and the client's per-request latency p50/p95 (and the gateway's own logged
latency_ms), and for the gateway ways the CPU time its process used per request (user + system
from /proc, all threads: what one gateway core can pass is 1000 / that many requests/s), the ratio
to direct requests/s and the added p50/p95 in ms. Then it checks that nothing was lost: the
gateway's `requests` table has one row per gateway request sent (warm-up included) and holds
every id the gateway returned; non-200 answers are counted. Exits 1 when a check fails. Prints
the JSON result (machine, settings, numbers) and a summary; --out FILE writes the JSON too.

Client, gateway and upstream share this machine's cores: on a small machine the numbers include
that contention (compare runs on the same machine only). With --rounds > 1 the three ways
alternate their order each round and the median round is reported. The load comes from
`--client light` (the gateway's own HTTP/1.1 client, so the client is not what limits a pass) or
`--client sdk` (the OpenAI SDK's httpx2 client, what the figures before December 2026 used: it
spends ~1 ms of CPU a request, so on 2 cores it holds the gateway below saturation, where each
request costs the gateway more CPU than in a full pass).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from swiftpipe.core import procs  # noqa: E402
from swiftpipe.core.stats import percentile  # noqa: E402
from swiftpipe.core.vllm_server import free_port  # noqa: E402
from swiftpipe.recipe.load import load_recipe  # noqa: E402
from swiftpipe.recipe.task import task_of  # noqa: E402
from swiftpipe.task import client, messages  # noqa: E402
from swiftpipe.task.reference import ADDRESS_SYSTEM_PROMPT  # noqa: E402

RECIPE = "recipes/demo-cpu.yaml"
MODES = ("direct", "gateway-chat", "gateway-extract")
PACKAGES = ("swiftpipe", "fastapi", "starlette", "uvicorn", "httptools", "uvloop", "msgspec", "httpx2", "openai",
            "pydantic", "vllm")


@dataclass
class Mode:
    name: str
    url: str
    headers: dict[str, str]
    bodies: list[bytes]  # request i sends bodies[i % len(bodies)]
    gateway: bool
    cpu_group: Optional[int] = None  # process group whose CPU time is counted (the gateway's)


@dataclass
class Outcome:
    """One pass of requests in one mode."""

    wall_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)  # answered requests (any status)
    statuses: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # no HTTP answer at all (connection, timeout)
    ids: list[str] = field(default_factory=list)  # request ids the gateway returned (200s)
    id_mismatches: int = 0  # body id != X-Request-Id header
    cpu_s: Optional[float] = None  # CPU seconds (user + system) the gateway's processes used during the pass
    system_cpu_s: Optional[float] = None  # of which in the kernel (socket calls, the log's writes)

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())


def group_cpu_s(pgid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of every live process in process group `pgid` (the gateway and
    its guard), from /proc (Linux), all threads included."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ... utime(12) stime(13)
            user += int(fields[11])
            system += int(fields[12])
    return user / ticks, system / ticks


def rounded(value: Optional[float], digits: int = 2) -> Optional[float]:
    return None if value is None else round(value, digits)


def difference(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return None if a is None or b is None else round(a - b, 2)


def shown(value: Optional[float], width: int = 8, digits: int = 2) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


async def run_pass(http, mode: Mode, count: int, concurrency: int, timeout: float) -> Outcome:
    import httpx2

    out = Outcome()

    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            response = await http.post(mode.url, content=mode.bodies[i % len(mode.bodies)], headers=mode.headers,
                                       timeout=timeout)
        except (httpx2.HTTPError, OSError) as exc:
            out.errors[type(exc).__name__] += 1
            return
        try:
            data = response.json()
        except ValueError:
            data = None
        out.latencies_ms.append((time.perf_counter() - started) * 1000)
        out.statuses[response.status_code] += 1
        if mode.gateway and response.status_code == 200 and isinstance(data, dict):
            rid = str(data.get("id"))
            out.ids.append(rid)
            if response.headers.get("x-request-id") != rid:
                out.id_mismatches += 1

    cpu_before = group_cpu_s(mode.cpu_group) if mode.cpu_group else None
    started = time.perf_counter()
    await client.for_each_concurrently(list(range(count)), one, concurrency)
    out.wall_s = time.perf_counter() - started
    if cpu_before is not None and mode.cpu_group:
        after = group_cpu_s(mode.cpu_group)
        out.cpu_s = sum(after) - sum(cpu_before)
        out.system_cpu_s = after[1] - cpu_before[1]
    return out


def summarize(out: Outcome) -> dict[str, Any]:
    answered = sum(out.statuses.values())
    return {
        "requests": out.sent,
        "wall_s": round(out.wall_s, 3),
        "requests_per_s": round(out.sent / out.wall_s, 1) if out.wall_s else None,
        "latency_ms": {"p50": rounded(percentile(out.latencies_ms, 0.5)), "p95": rounded(percentile(out.latencies_ms, 0.95)),
                       "p99": rounded(percentile(out.latencies_ms, 0.99)),
                       "mean": rounded(statistics.fmean(out.latencies_ms)) if out.latencies_ms else None},
        "status": {str(k): v for k, v in sorted(out.statuses.items())},
        "non_200": answered - out.statuses.get(200, 0),
        "errors": dict(out.errors),
        # the gateway process's own CPU per request (its cores' real cost; independent of the client)
        "gateway_cpu_ms_per_request": round(1000 * out.cpu_s / out.sent, 3) if out.cpu_s is not None and out.sent
        else None,
        "gateway_system_cpu_ms_per_request": round(1000 * out.system_cpu_s / out.sent, 3)
        if out.system_cpu_s is not None and out.sent else None,
    }


def wait_for_http(url: str, proc, log: Path, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} before it was ready:\n{procs.tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} was not ready at {url} within {timeout:g} s:\n{procs.tail(log)}")


def wait_for_line(prefix: str, proc, log: Path, timeout: float, what: str) -> str:
    """The first line of `log` that starts with `prefix` (the child writes stdout there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            if line.startswith(prefix):
                return line
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode} before it was ready:\n{procs.tail(log)}")
        time.sleep(0.1)
    raise SystemExit(f"{what} printed no '{prefix.strip()}' line within {timeout:g} s:\n{procs.tail(log)}")


def upstream_model(base_url: str, api_key: str) -> str:
    request = urllib.request.Request(base_url + "/models", headers={"Authorization": f"Bearer {api_key}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            names = [m.get("id") for m in json.load(response).get("data", [])]
    except (OSError, ValueError, AttributeError) as exc:
        raise SystemExit(f"could not list the models of {base_url} ({type(exc).__name__}: {exc}); pass --model")
    if len(names) != 1:
        raise SystemExit(f"{base_url}/models names {names}; pass the model with --model")
    return names[0]


def db_check(db: Any, modes: dict[str, Mode], passes: list[tuple[str, bool, Outcome]]) -> dict[str, Any]:
    """Compare the gateway's request log with what was sent and answered."""
    from swiftpipe.gateway import store

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) if isinstance(db, Path) \
        else store.connect(db, create=False)
    try:
        rows = conn.execute("SELECT id, endpoint, status, latency_ms FROM requests").fetchall()
    finally:
        conn.close()
    by_id = {r[0]: r for r in rows}
    sent = {"chat": 0, "extract": 0}
    returned: list[str] = []
    mismatches = 0
    for name, _, out in passes:
        if modes[name].gateway:
            sent["chat" if name == "gateway-chat" else "extract"] += out.sent
            returned += out.ids
            mismatches += out.id_mismatches
    missing = [i for i in returned if i not in by_id]
    logged = Counter(r[1] for r in rows)
    total_sent = sum(sent.values())
    logged_latency = {}
    for name in ("gateway-chat", "gateway-extract"):
        measured = {i for n, warm, out in passes if n == name and not warm for i in out.ids}
        values = [by_id[i][3] for i in measured if i in by_id and by_id[i][3] is not None]
        logged_latency[name] = {"p50": rounded(percentile(values, 0.5)), "p95": rounded(percentile(values, 0.95))}
    return {
        "gateway_requests_sent": total_sent,
        "rows": len(rows),
        "rows_match_sent": len(rows) == total_sent,
        "rows_by_endpoint": dict(logged),
        "sent_by_endpoint": sent,
        "ids_returned": len(returned),
        "ids_unique": len(set(returned)) == len(returned),
        "ids_missing_from_log": len(missing),
        "ids_missing_examples": missing[:5],
        "id_header_mismatches": mismatches,
        "rows_status": {str(k): v for k, v in sorted(Counter(r[2] for r in rows).items())},
        "gateway_logged_latency_ms": logged_latency,
    }


class LightClient:
    """The load generator's HTTP client for --client light (the default): the gateway's own HTTP/1.1
    client (`http1.Http1Client`), answers parsed by msgspec; the same `post` as the SDK's client."""

    def __init__(self) -> None:
        from swiftpipe.gateway.http1 import Http1Client

        self.http = Http1Client(limit=1000)

    async def __aenter__(self) -> "LightClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.http.aclose()

    async def post(self, url: str, *, content: bytes, headers: dict[str, str], timeout: float) -> "_LightResponse":
        request = self.http.build_request("POST", url, content=content, headers=headers, timeout=timeout)
        response = await self.http.send(request)
        try:
            await response.read()
        finally:
            await response.aclose()
        return _LightResponse(response)


class _LightResponse:
    def __init__(self, response: Any):
        self.status_code, self.content = response.status_code, response.content
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in response.headers}

    def json(self) -> Any:
        from swiftpipe.gateway.protocol import loads

        return loads(self.content)


async def measure(modes: dict[str, Mode], args) -> list[tuple[str, bool, Outcome]]:
    """Warm-up, then --rounds rounds of every mode; returns (mode, is_warmup, outcome) in order."""
    passes: list[tuple[str, bool, Outcome]] = []
    async with (LightClient() if args.client == "light" else client.http_client()) as http:
        for name, mode in modes.items():
            if args.warmup:
                out = await run_pass(http, mode, args.warmup, min(args.concurrency, args.warmup), args.timeout)
                passes.append((name, True, out))
                print(f"  warm-up {name}: {out.sent} requests, status {dict(out.statuses)}"
                      f"{', errors ' + str(dict(out.errors)) if out.errors else ''}", flush=True)
        for round_no in range(args.rounds):
            order = list(modes) if round_no % 2 == 0 else list(reversed(modes))
            for name in order:
                out = await run_pass(http, modes[name], args.requests, args.concurrency, args.timeout)
                passes.append((name, False, out))
                s = summarize(out)
                cpu, sys_cpu = s["gateway_cpu_ms_per_request"], s["gateway_system_cpu_ms_per_request"]
                print(f"  round {round_no + 1} {name}: {s['requests_per_s']} req/s, p50 {s['latency_ms']['p50']} ms, "
                      f"p95 {s['latency_ms']['p95']} ms, non-200 {s['non_200']}, errors {sum(out.errors.values())}"
                      + (f", gateway CPU {cpu} ms/request ({sys_cpu} in the kernel)" if cpu is not None else ""),
                      flush=True)
    return passes


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests/s (the lower of the middle two for an even number)."""
    ordered = sorted(rounds, key=lambda r: r["requests_per_s"] or 0)
    return ordered[(len(ordered) - 1) // 2]


def machine_info() -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"processor": platform.processor(), "machine": platform.machine(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else None, "python": platform.python_version(), "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            "packages": versions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upstream", choices=["scripted"], default="scripted",
                        help="the upstream to start (default: bench/scripted_upstream.py); see --upstream-url")
    parser.add_argument("--upstream-url", help="use this running OpenAI-compatible server instead (e.g. a vLLM server)")
    parser.add_argument("--model", help="the upstream's model name (scripted: 'scripted'; default: its only /v1/models)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="scripted upstream: added to every answer")
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per way and round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=16, help="requests per way before measuring")
    parser.add_argument("--rounds", type=int, default=1, help="measured rounds (median round reported)")
    parser.add_argument("--data", default=str(REPO / "datasets" / "demo" / "address.jsonl"))
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--startup-timeout", type=float, default=180.0)
    parser.add_argument("--workers", type=int, default=1, help="gateway processes (serve --workers)")
    parser.add_argument("--db", help="the gateway's database: an empty PostgreSQL database's URL (default: a SQLite "
                                     "file in --work)")
    parser.add_argument("--work", help="keep the gateway's database and the logs here (default: a temporary directory)")
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--profile", help="run the gateway under cProfile and write its stats to this file "
                                          "(read with pstats; CPU figures of that run include the profiler's cost)")
    parser.add_argument("--client", choices=["light", "sdk"], default="light",
                        help="the load generator's HTTP client: light = the gateway's own HTTP/1.1 client (~0.1 ms "
                             "of CPU a request, so the gateway is the bottleneck); sdk = the OpenAI SDK's httpx2 "
                             "client (~1 ms a request: on a 2-core machine it caps the pass below the gateway's "
                             "ceiling, and a gateway that is not saturated spends more CPU a request)")
    parser.add_argument("--litellm", help="LiteLLM's `litellm` command (its proxy, in a venv of its own) to measure as a "
                             "reference; default: `litellm` on PATH if there is one, else that way is left out")
    parser.add_argument("--confidence", choices=["on", "off"], default="on",
                        help="off: the recipe with eval.confidence=false (no logprobs asked, no confidence computed)")
    args = parser.parse_args()
    if args.requests < 2 or args.concurrency < 1 or args.rounds < 1 or args.warmup < 0:
        parser.error("--requests must be at least 2, --concurrency and --rounds at least 1, --warmup at least 0")

    recipe = load_recipe(str(REPO / RECIPE)).recipe
    task = task_of(recipe, REPO)
    recipe_arg = RECIPE
    if args.confidence == "off":
        import dataclasses

        import yaml

        task = dataclasses.replace(task, confidence=False)
        data = yaml.safe_load((REPO / RECIPE).read_text(encoding="utf-8"))
        data["eval"]["confidence"] = False
        off = Path(tempfile.mkdtemp(prefix="gateway-bench-recipe-")) / "demo-cpu-no-confidence.yaml"
        off.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        recipe_arg = str(off)
    system = task.system_prompt
    if system != ADDRESS_SYSTEM_PROMPT:
        print(f"note: {RECIPE}'s system prompt differs from tasks.ADDRESS_SYSTEM_PROMPT; the recipe's is used "
              f"(it is what the gateway sends)", file=sys.stderr)
    max_tokens = task.max_tokens
    texts = [row.user for row in messages.read(Path(args.data))]
    upstream_key = os.environ.get("SWIFTPIPE_UPSTREAM_API_KEY", "EMPTY")
    gateway_key = "sk-bench-" + secrets.token_hex(16)
    machine = machine_info()

    import shutil

    litellm_cmd = args.litellm or shutil.which("litellm")
    if args.litellm and not (Path(args.litellm).exists() or shutil.which(args.litellm)):
        raise SystemExit(f"--litellm {args.litellm}: no such command; install LiteLLM's proxy in a venv of its own "
                         f"(pip install 'litellm[proxy]') and pass its bin/litellm")
    litellm_desc = {"ran": bool(litellm_cmd), **({"command": litellm_cmd} if litellm_cmd else
                                                  {"why_not": "not installed (no `litellm` on PATH, no --litellm)"})}
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp, procs.sigterm_as_interrupt():
        work = Path(args.work).resolve() if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        db: Any = args.db or work / "gateway.sqlite"
        if isinstance(db, Path) and db.exists():
            raise SystemExit(f"{db} exists: pass an empty --work directory")
        started: list = []
        try:
            if args.upstream_url:
                base_url = args.upstream_url.rstrip("/")
                base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
                model = args.model or upstream_model(base_url, upstream_key)
                upstream_desc = {"kind": "url", "url": base_url, "model": model}
            else:
                port = free_port()
                model = args.model or "scripted"
                log = work / "upstream.log"
                argv = [sys.executable, str(REPO / "bench" / "scripted_upstream.py"), "--port", str(port), "--model", model,
                        "--delay-ms", str(args.delay_ms)]
                proc = procs.start(argv, {}, log, cwd=REPO, grace=5)
                started.append(proc)
                base_url = f"http://127.0.0.1:{port}/v1"
                wait_for_http(base_url + "/models", proc, log, args.startup_timeout, "the scripted upstream")
                upstream_desc = {"kind": "scripted", "url": base_url, "model": model, "delay_ms": args.delay_ms}

            gw_port = free_port()
            gw_log = work / "gateway.log"
            # --profile: the gateway under cProfile (its main thread; written when it stops)
            profile = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else []
            argv = [sys.executable, *profile, "-m", "swiftpipe.cli", "serve", "--upstream", f"bench={base_url}",
                    "--recipe", recipe_arg, "--port", str(gw_port), "--db", str(db), "--workers", str(args.workers)]
            t0 = time.perf_counter()
            gw = procs.start(argv, {"SWIFTPIPE_API_KEY": gateway_key, "SWIFTPIPE_UPSTREAM_API_KEY": upstream_key,
                                    "PYTHONUNBUFFERED": "1"}, gw_log, cwd=REPO, grace=15)
            started.append(gw)
            line = wait_for_line("serving ", gw, gw_log, args.startup_timeout, "the gateway")
            startup_s = time.perf_counter() - t0
            print(f"gateway: {line} ({startup_s:.1f} s to start)", flush=True)

            gw_url = f"http://127.0.0.1:{gw_port}/v1"
            json_headers = {"Content-Type": "application/json"}
            chat_bodies, gw_chat_bodies, extract_bodies = [], [], []
            for text in texts:
                body = task.request_body(model, text)
                chat_bodies.append(json.dumps(body, ensure_ascii=False).encode("utf-8"))
                gw_chat_bodies.append(json.dumps({**body, "model": "auto"}, ensure_ascii=False).encode("utf-8"))
                extract_bodies.append(json.dumps({"text": text}, ensure_ascii=False).encode("utf-8"))
            modes = {
                "direct": Mode("direct", base_url + "/chat/completions",
                               {**json_headers, "Authorization": f"Bearer {upstream_key}"}, chat_bodies, False),
                "gateway-chat": Mode("gateway-chat", gw_url + "/chat/completions",
                                     {**json_headers, "Authorization": f"Bearer {gateway_key}"}, gw_chat_bodies, True,
                                     gw.pid),
                "gateway-extract": Mode("gateway-extract", gw_url + "/extract",
                                        {**json_headers, "Authorization": f"Bearer {gateway_key}"}, extract_bodies, True,
                                        gw.pid),
            }
            if litellm_cmd:
                import yaml

                lt_port = free_port()
                lt_log = work / "litellm.log"
                config = work / "litellm.yaml"
                config.write_text(yaml.safe_dump({
                    "model_list": [{"model_name": "bench", "litellm_params": {
                        "model": f"openai/{model}", "api_base": base_url, "api_key": "os.environ/BENCH_UPSTREAM_KEY"}}],
                    "litellm_settings": {"drop_params": True}}), encoding="utf-8")
                lt = procs.start([litellm_cmd, "--config", str(config), "--host", "127.0.0.1", "--port", str(lt_port),
                                  "--num_workers", "1"], {"BENCH_UPSTREAM_KEY": upstream_key}, lt_log, cwd=work, grace=15)
                started.append(lt)
                wait_for_http(f"http://127.0.0.1:{lt_port}/health/liveliness", lt, lt_log, args.startup_timeout,
                              "LiteLLM's proxy")
                lt_bodies = [json.dumps({**json.loads(b), "model": "bench"}, ensure_ascii=False).encode("utf-8")
                             for b in chat_bodies]
                modes["litellm"] = Mode("litellm", f"http://127.0.0.1:{lt_port}/v1/chat/completions", json_headers,
                                        lt_bodies, False, lt.pid)
            print(f"{args.requests} requests x {len(modes)} ways at concurrency {args.concurrency}, "
                  f"{args.rounds} round(s), warm-up {args.warmup}; upstream {base_url} ({model})", flush=True)
            passes = asyncio.run(measure(modes, args))
            checks = db_check(db, modes, passes)  # while the gateway runs: answered means committed
            gw_alive = gw.poll() is None
        finally:
            for proc in reversed(started):
                procs.stop(proc, grace=15)
        gateway_log = gw_log.read_text(encoding="utf-8", errors="replace")
        # The gateway reports the SIGTERM that stopped it as "error: interrupted (SIGTERM)": not a problem.
        problems_in_log = [ln for ln in gateway_log.splitlines() if ("Traceback" in ln or ln.startswith(("error", "warning")))
                           and "interrupted (SIGTERM)" not in ln]

    ran = [name for name in (*MODES, "litellm") if name in modes]
    results: dict[str, Any] = {}
    for name in ran:
        rounds = [summarize(out) for n, warm, out in passes if n == name and not warm]
        results[name] = {**median_round(rounds), **({"rounds": rounds} if len(rounds) > 1 else {})}
        cpu = [r["gateway_cpu_ms_per_request"] for r in rounds if r["gateway_cpu_ms_per_request"] is not None]
        if cpu:
            results[name]["gateway_cpu_ms_per_request"] = round(statistics.median(cpu), 3)  # median over rounds
            results[name]["gateway_system_cpu_ms_per_request"] = round(statistics.median(
                r["gateway_system_cpu_ms_per_request"] for r in rounds), 3)
    direct = results["direct"]
    overhead = {}
    for name in [n for n in ran if n != "direct"]:
        r = results[name]
        overhead[name] = {
            "throughput_ratio": round(r["requests_per_s"] / direct["requests_per_s"], 3)
            if r["requests_per_s"] and direct["requests_per_s"] else None,
            "added_p50_ms": difference(r["latency_ms"]["p50"], direct["latency_ms"]["p50"]),
            "added_p95_ms": difference(r["latency_ms"]["p95"], direct["latency_ms"]["p95"]),
        }
    non_200 = {name: sum(summarize(out)["non_200"] + sum(out.errors.values()) for n, _, out in passes if n == name)
               for name in ran}
    ok = (checks["rows_match_sent"] and checks["ids_missing_from_log"] == 0 and checks["ids_unique"]
          and checks["id_header_mismatches"] == 0 and not any(non_200.values()) and gw_alive)
    result = {
        "benchmark": "gateway_overhead",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "settings": {"requests": args.requests, "concurrency": args.concurrency, "warmup": args.warmup,
                     "rounds": args.rounds, "recipe": RECIPE, "confidence": args.confidence, "max_tokens": max_tokens,
                     "texts": len(texts),
                     "timeout_s": args.timeout, "workers": args.workers, "client": args.client,
                     "db": "sqlite" if not args.db else "postgresql"},
        "upstream": upstream_desc,
        "litellm": litellm_desc,
        "gateway_startup_s": round(startup_s, 2),
        "results": results,
        "overhead_vs_direct": overhead,
        "failed_requests_incl_warmup": non_200,
        "request_log": checks,
        "gateway_log_problems": problems_in_log[:20],
        "ok": ok,
    }
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n", encoding="utf-8")

    print(f"\n{machine['processor'] or machine['machine']}, {machine['cpu_count']} CPUs, Python {machine['python']}; "
          f"upstream {upstream_desc['kind']} ({base_url}); {args.requests} requests at concurrency {args.concurrency}")
    print(f"{'way':<16} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'ratio':>6} {'+p50 ms':>8} {'+p95 ms':>8} "
          f"{'CPU ms/req':>10} {'of it kernel':>12}")
    for name in ran:
        r, o = results[name], overhead.get(name, {"throughput_ratio": 1.0, "added_p50_ms": 0.0, "added_p95_ms": 0.0})
        print(f"{name:<16} {shown(r['requests_per_s'], 8, 1)} {shown(r['latency_ms']['p50'])} {shown(r['latency_ms']['p95'])} "
              f"{shown(o['throughput_ratio'], 6)} {shown(o['added_p50_ms'])} {shown(o['added_p95_ms'])} "
              f"{shown(r.get('gateway_cpu_ms_per_request'), 10, 3)} "
              f"{shown(r.get('gateway_system_cpu_ms_per_request'), 12, 3)}")
    print(f"request log: {checks['rows']} rows for {checks['gateway_requests_sent']} gateway requests sent "
          f"({'match' if checks['rows_match_sent'] else 'MISMATCH'}); {checks['ids_missing_from_log']} returned id(s) "
          f"missing; failed requests (non-200 or no answer): {non_200}")
    print("OK" if ok else "CHECKS FAILED", flush=True)
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (procs.Terminated): the children are stopped by now
        import logging

        logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # not "Task exception was never retrieved" at exit
        print(f"\ninterrupted ({procs.interrupt_signame(exc) or 'Ctrl-C'}); the upstream and the gateway were stopped",
              file=sys.stderr)
        raise SystemExit(130) from None
