"""Throughput of `swiftpipe eval` against one running vLLM server, next to vLLM's own client.

    python bench/eval_throughput.py [--model DIR] [--num 256] [--concurrency 16] [--max-tokens 64]

One server (started by swiftpipe's launcher) and the same prompts for all three clients:
  1. swiftpipe's evaluator (asyncio OpenAI client, the code `swiftpipe eval` runs) at --concurrency;
  2. `vllm bench serve` (openai-chat backend, custom dataset) at the same max concurrency;
  3. a one-at-a-time client (synchronous OpenAI client, one request after another).
All requests: the waybill text as the only user message, greedy, --max-tokens new tokens, no
response_format (vLLM's benchmark client cannot send one).

By default the server and the clients run on separate CPU cores (the first half of the cores for
vLLM, the rest for the clients), as on a GPU server where the client never waits for a core: on a
small CPU machine a client that shares vLLM's cores measures the contention, not the client
(README: Benchmarks). --shared-cpus measures that shared setting instead. Prints a Markdown table and writes
the figures to bench/results/eval_throughput-<host>.json. Without --model it uses the tiny demo
model (built at .cache/swiftpipe/tiny-qwen3 when missing).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from swiftpipe.core import envinfo  # noqa: E402
from swiftpipe.core.procs import resolve_executable  # noqa: E402
from swiftpipe.core.vllm_server import ServeTarget, VllmServer  # noqa: E402
from swiftpipe.evaluation import evaluate  # noqa: E402
from swiftpipe.recipe.schema import EvalSection, ServeSection  # noqa: E402
from swiftpipe.task import client, messages  # noqa: E402
from swiftpipe.task.messages import Example  # noqa: E402


def prompts(source: Path, num: int) -> list[str]:
    texts = [row.user for row in messages.read(source)]
    return [texts[i % len(texts)] for i in range(num)]


def bench_swiftpipe(server: VllmServer, name: str, texts: list[str], concurrency: int, max_tokens: int,
                    work: Path) -> float:
    rows = [Example(i, 0, None, t, "{}", {}) for i, t in enumerate(texts)]
    endpoint = client.Endpoint(server.base_url, name, server.api_key)
    settings = EvalSection(concurrency=concurrency, max_tokens=max_tokens)
    metrics = evaluate.evaluate([endpoint], rows, work / "swiftpipe-eval", schema=None, settings=settings,
                                progress=False)
    assert metrics["api_errors"] == 0, metrics
    return metrics["requests_per_s"]


def bench_vllm(server: VllmServer, name: str, model_dir: str, texts: list[str], concurrency: int,
               max_tokens: int, work: Path) -> float:
    dataset = work / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"prompt": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
    argv = [resolve_executable("vllm"), "bench", "serve", "--backend", "openai-chat", "--endpoint",
            "/v1/chat/completions", "--base-url", server.base_url.removesuffix("/v1"), "--model", name,
            "--tokenizer", model_dir, "--dataset-name", "custom", "--dataset-path", str(dataset),
            "--custom-output-len", str(max_tokens), "--num-prompts", str(len(texts)), "--max-concurrency",
            str(concurrency), "--temperature", "0", "--disable-shuffle", "--save-result", "--result-dir",
            str(work), "--result-filename", "vllm-bench.json"]
    env = {"OPENAI_API_KEY": server.api_key, "VLLM_PLUGINS": ""}
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"vllm bench serve failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result = json.loads((work / "vllm-bench.json").read_text())
    assert result["completed"] == len(texts), result
    return result["request_throughput"]


def bench_sequential(server: VllmServer, name: str, texts: list[str], max_tokens: int) -> float:
    from openai import OpenAI

    client = OpenAI(base_url=server.base_url, api_key=server.api_key)
    started = time.perf_counter()
    for text in texts:
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": text}], temperature=0,
                                       max_tokens=max_tokens,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    return len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory to serve (default: the tiny demo model)")
    parser.add_argument("--data", default=str(REPO / "datasets" / "demo" / "address.jsonl"))
    parser.add_argument("--num", type=int, default=256)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--sequential-num", type=int, default=64, help="requests for the one-at-a-time who")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds after the warm-up round")
    parser.add_argument("--shared-cpus", action="store_true",
                        help="let server and clients share every core (default: separate halves)")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    isolate = not args.shared_cpus and len(cpus) >= 2
    server_cpus, client_cpus = (set(cpus[: len(cpus) // 2]), set(cpus[len(cpus) // 2:])) if isolate else (set(cpus),) * 2

    model_dir = args.model
    if not model_dir:
        model_dir = str(REPO / ".cache" / "swiftpipe" / "tiny-qwen3")
        if not (Path(model_dir) / "config.json").exists():
            from swiftpipe.train.tiny_model import build_tiny_model

            build_tiny_model(model_dir)
    gpus = envinfo.gpus()
    texts = prompts(Path(args.data), args.num)
    name = "bench"
    target = ServeTarget(model_dir=model_dir, served_name=name, max_model_len=1024, cpu=not gpus)
    clients = {
        "swiftpipe eval": lambda work: bench_swiftpipe(server, name, texts, args.concurrency, args.max_tokens, work),
        "vllm bench serve": lambda work: bench_vllm(server, name, model_dir, texts, args.concurrency,
                                                    args.max_tokens, work),
        "one at a time": lambda work: bench_sequential(server, name, texts[: args.sequential_num], args.max_tokens),
    }
    runs: dict[str, list[float]] = {who: [] for who in clients}
    # The server inherits this process's CPU set at start; the clients (this process and the
    # `vllm bench` child) then move to the other half.
    os.sched_setaffinity(0, server_cpus)
    with tempfile.TemporaryDirectory() as tmp, VllmServer(target, Path(tmp) / "server.log", settings=ServeSection()) as server:
        os.sched_setaffinity(0, client_cpus)
        # A fresh vLLM is slow at its first high-concurrency batches: warm every client up first,
        # then alternate the clients over --rounds rounds and report the median.
        for round_no in range(args.rounds + 1):
            order = list(clients) if round_no % 2 else list(reversed(clients))
            for who in order:
                work = Path(tmp) / f"{who.replace(' ', '-')}-{round_no}"
                work.mkdir()
                rps = clients[who](work)
                if round_no > 0:
                    runs[who].append(rps)
                print(f"  round {round_no}{' (warm-up)' if round_no == 0 else ''}: {who} {rps:.1f} req/s", flush=True)
    results = {who: statistics.median(values) for who, values in runs.items()}
    machine = f"{socket.gethostname()}: {envinfo.environment(REPO)['cpus']} CPUs, " + (
        ", ".join(gpus) if gpus else "no GPU") + (
        f"; server on CPUs {sorted(server_cpus)}, clients on {sorted(client_cpus)}" if isolate else "; shared CPUs")
    ratio = results["swiftpipe eval"] / results["vllm bench serve"]
    print(f"\nmachine: {machine}; model: {model_dir}; {args.num} requests, concurrency {args.concurrency}, "
          f"max_tokens {args.max_tokens}\n")
    print(f"| client | concurrency | requests/s (median of {args.rounds}) |\n|---|---|---|")
    for who, rps in results.items():
        conc = 1 if who == "one at a time" else args.concurrency
        print(f"| {who} | {conc} | {rps:.1f} |")
    print(f"\nswiftpipe eval / vllm bench serve = {ratio:.2f}")
    out = REPO / "bench" / "results" / f"eval_throughput-{socket.gethostname()}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "model": model_dir, "args": vars(args), "requests_per_s": results,
                               "rounds": runs,
                               "ratio_swiftpipe_to_vllm": ratio, "packages": envinfo.package_versions()}, indent=2))


if __name__ == "__main__":
    main()
