"""Throughput and memory of `swiftpipe extract`, next to the engine's own limit, in each dtype.

    python bench/extract_throughput.py --model RUN_DIR [--rows 2000] [--dtypes bfloat16,float32]
                                       [--rss-rows 2000,50000] [--skip-server]

Same rows (synthesized waybills, seed 5), same tuned model, same requests (the recipe's system
prompt, greedy, thinking off, the recipe's schema as structured output):
  1. bare: one `LLM.chat` call over every row with identical SamplingParams, in its own process
     (the offline engine's own limit: no reading, checking or writing), once per --dtypes entry,
     side by side (and how many rows' answers differ between them);
  2. `swiftpipe extract --engine offline` (rows/s from its summary: engine ready → last part written),
     once with --dtype for each --dtypes entry; the dtype the rule picks on this machine (auto) is marked;
  3. `swiftpipe extract --engine server` against one vLLM server (`vllm serve`, started like `swiftpipe
     serve` starts it), and a one-row-at-a-time client (the shared client, no concurrency), for scale;
  4. peak RSS of `swiftpipe extract --engine offline` at each --rss-rows size: the swiftpipe process
     alone and with vLLM's engine processes (sampled every 0.2 s from /proc).
Prints a Markdown table and writes bench/results/extract_throughput-<host>.json, with the CPU's model
and its bfloat16 flags (what decides vLLM's dtype on a CPU: swiftpipe.core.dtype).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from swiftpipe.core import envinfo, jsonl  # noqa: E402
from swiftpipe.core.childguard import descendants  # noqa: E402
from swiftpipe.core.dtype import cpu_bf16  # noqa: E402
from swiftpipe.core.vllm_server import VllmServer  # noqa: E402
from swiftpipe.data.synth import samples  # noqa: E402
from swiftpipe.recipe.derived import run_serve_target  # noqa: E402
from swiftpipe.recipe.load import load_recipe  # noqa: E402
from swiftpipe.recipe.task import task_of  # noqa: E402
from swiftpipe.task import client  # noqa: E402

BARE = textwrap.dedent("""
    import json, sys, time
    from swiftpipe.extract.engines import OfflineEngine, OfflineSettings
    from swiftpipe.recipe.task import Task

    def main():
        cfg = json.load(open(sys.argv[1]))
        texts = [json.loads(line)["text"] for line in open(cfg["input"], encoding="utf-8")]
        task = Task.from_stored(cfg["task"])
        # The engine object only to load vLLM with the settings extract uses; the loop is vLLM's own.
        engine = OfflineEngine(OfflineSettings(**cfg["settings"]), task)
        conversations = [task.messages(t) for t in texts]
        started = time.perf_counter()
        outputs = engine.llm.chat(conversations, engine.sampling, use_tqdm=False,
                                  chat_template_kwargs=task.chat_template_kwargs)
        wall = time.perf_counter() - started
        tokens = sum(len(o.prompt_token_ids) + len(o.outputs[0].token_ids) for o in outputs)
        with open(cfg["answers"], "w", encoding="utf-8") as f:
            json.dump([o.outputs[0].text for o in outputs], f, ensure_ascii=False)
        print("RESULT " + json.dumps({"rows": len(outputs), "seconds": wall, "rows_per_s": len(outputs) / wall,
                          "tokens_per_s": tokens / wall, "dtype": engine.dtype.record(),
                          "loaded_dtype": engine.loaded_dtype}))
        engine.close()

    if __name__ == "__main__":
        main()
""")


def write_texts(path: Path, n: int) -> Path:
    jsonl.write_lines(path, ({"text": text} for text, _ in samples(n, seed=5)))
    return path


def env() -> dict:
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    # This checkout's swiftpipe in every child (bare.py runs from a temporary directory).
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH", "")) if p)
    return e


def swiftpipe_extract(args: list[str], extra_env: dict | None = None, sample_rss: bool = False) -> dict:
    """Run the CLI; returns its summary.json (plus peak RSS in MiB when asked)."""
    cmd = [sys.executable, "-m", "swiftpipe.cli", "extract", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**env(), **(extra_env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    peak_main = peak_tree = 0
    while proc.poll() is None:
        if sample_rss:
            main = _rss_kib(proc.pid)
            tree = main + sum(_rss_kib(p) for p in descendants(proc.pid))
            peak_main, peak_tree = max(peak_main, main), max(peak_tree, tree)
        time.sleep(0.2)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"swiftpipe extract failed ({proc.returncode}):\n{err[-3000:]}")
    out = Path(args[args.index("--out") + 1])
    summary = json.loads((out / "summary.json").read_text())
    if sample_rss:
        summary["peak_rss_mib"] = round(peak_main / 1024, 1)
        summary["peak_rss_tree_mib"] = round(peak_tree / 1024, 1)
    return summary


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def one_at_a_time(server: VllmServer, task, texts: list[str]) -> float:
    async def go() -> float:
        endpoint = client.Endpoint(server.base_url, server.target.served_name, server.api_key)
        api = client.async_client(endpoint)
        started = time.perf_counter()
        for t in texts:
            done = await client.chat(api, task.sdk_kwargs(endpoint.model, t), endpoint)
            assert done.error is None, done.error
        wall = time.perf_counter() - started
        await api.close()
        return len(texts) / wall

    return asyncio.run(go())


def run_bare(work: Path, texts_path: Path, task, settings, dtype: str) -> tuple[dict, list[str]]:
    """One bare `LLM.chat` over every row with the engine in `dtype`, in its own process: its result
    and its answers (in row order)."""
    from dataclasses import replace

    cfg = work / f"bare-{dtype}.json"
    answers = work / f"bare-{dtype}-answers.json"
    settings = replace(settings, dtype=dtype, dtype_from="--dtypes")
    cfg.write_text(json.dumps({"input": str(texts_path), "task": task.stored(), "settings": settings.__dict__,
                               "answers": str(answers)}))
    bare = subprocess.run([sys.executable, str(work / "bare.py"), str(cfg)], cwd=REPO, env=env(),
                          capture_output=True, text=True)
    if bare.returncode != 0:
        raise SystemExit(bare.stderr[-3000:])
    result = json.loads(next(line for line in bare.stdout.splitlines()
                             if line.startswith("RESULT "))[len("RESULT "):])
    return result, json.loads(answers.read_text(encoding="utf-8"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a run directory with a final model (runs/demo-cpu/<id>)")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--dtypes", default="bfloat16,float32",
                    help="engine dtypes measured side by side (bare and offline extract)")
    ap.add_argument("--rss-rows", default="2000,50000", help="input sizes for the peak-RSS runs ('' to skip)")
    ap.add_argument("--one-at-a-time", type=int, default=200, help="rows for the one-at-a-time client")
    ap.add_argument("--skip-server", action="store_true")
    ap.add_argument("--confidence-rounds", type=int, default=3,
                    help="interleaved rounds of offline extract with confidence on and off (--no-confidence); 0 skips")
    args = ap.parse_args()

    from swiftpipe.extract.commands import _offline_settings
    from swiftpipe.extract.engines import offline_dtype
    from swiftpipe.recipe.schema import ExtractSection

    run_dir = Path(args.model).resolve()
    info = json.loads((run_dir / "run.json").read_text())
    recipe = load_recipe(str(run_dir / "resolved.yaml")).recipe
    task = task_of(recipe, Path(info["cwd"]))
    settings = _offline_settings(info["final_model"], recipe, ExtractSection())
    auto = offline_dtype(settings)  # what `swiftpipe extract` picks here without --dtype
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    results: dict = {"machine": {"host": socket.gethostname(), "cpus": os.cpu_count(), "cpu": cpu_bf16().record(),
                                 "gpus": envinfo.gpus(), "versions": envinfo.package_versions()},
                     "rows": args.rows, "model": info["final_model"], "auto_dtype": auto.record()}
    print(auto.line(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        texts_path = write_texts(work / "texts.jsonl", args.rows)
        (work / "bare.py").write_text(BARE)
        results["bare_by_dtype"], answers = {}, {}
        for dtype in dtypes:
            print(f"bare LLM.chat in {dtype} ...", flush=True)
            results["bare_by_dtype"][dtype], answers[dtype] = run_bare(work, texts_path, task, settings, dtype)
            assert results["bare_by_dtype"][dtype]["loaded_dtype"] == dtype, results["bare_by_dtype"][dtype]
        if len(dtypes) == 2:
            a, b = (answers[d] for d in dtypes)
            results["answers_differ"] = sum(x != y for x, y in zip(a, b))
        results["offline_by_dtype"] = {}
        for dtype in dtypes:
            print(f"swiftpipe extract --engine offline --dtype {dtype} ...", flush=True)
            results["offline_by_dtype"][dtype] = swiftpipe_extract(
                [str(texts_path), "--out", str(work / f"offline-{dtype}"), "--model", str(run_dir), "--no-text",
                 "--dtype", dtype])
        if auto.dtype in dtypes:  # as a user runs it: the dtype of the rule
            results["bare"] = results["bare_by_dtype"][auto.dtype]
            results["offline"] = results["offline_by_dtype"][auto.dtype]
            results["offline_vs_bare"] = results["offline"]["rows_per_s"] / results["bare"]["rows_per_s"]
        if args.confidence_rounds:
            runs: dict[str, list[float]] = {"on": [], "off": []}
            for i in range(args.confidence_rounds):
                for way in (("on", "off") if i % 2 == 0 else ("off", "on")):
                    print(f"swiftpipe extract --engine offline, confidence {way} (round {i + 1}) ...", flush=True)
                    extra = ["--no-confidence"] if way == "off" else []
                    s = swiftpipe_extract([str(texts_path), "--out", str(work / f"conf-{way}-{i}"), "--model",
                                           str(run_dir), "--no-text", *extra])
                    runs[way].append(s["rows_per_s"])
            med = {way: sorted(v)[len(v) // 2] for way, v in runs.items()}
            results["confidence_ab"] = {"rows_per_s": runs, "median": med, "on_vs_off": med["on"] / med["off"]}
        if not args.skip_server:
            target = run_serve_target(recipe, which="finetuned", final_model=info["final_model"],
                                         base=Path(info["cwd"]), run_name=info["name"], cpu=settings.cpu)
            with VllmServer(target, work / "vllm.log", settings=recipe.serve) as server:
                results["server_dtype"] = server.dtype.record()
                print("swiftpipe extract --engine server ...", flush=True)
                results["server"] = swiftpipe_extract(
                    [str(texts_path), "--out", str(work / "server"), "--model", str(run_dir), "--engine", "server",
                     "--base-url", server.base_url, "--no-text"], {"OPENAI_API_KEY": server.api_key})
                print("one at a time ...", flush=True)
                texts = [r["text"] for r in jsonl.read_all(texts_path)][: args.one_at_a_time]
                results["one_at_a_time_rows_per_s"] = one_at_a_time(server, task, texts)
        results["rss"] = {}
        for size in [int(s) for s in args.rss_rows.split(",") if s.strip()]:
            print(f"peak RSS at {size:,} rows ...", flush=True)
            path = write_texts(work / f"rss{size}.jsonl", size)
            s = swiftpipe_extract([str(path), "--out", str(work / f"rss{size}"), "--model", str(run_dir)],
                                  sample_rss=True)
            results["rss"][size] = {k: s[k] for k in ("peak_rss_mib", "peak_rss_tree_mib", "rows_per_s")}
    cpu = results["machine"]["cpu"]
    print()
    print(f"CPU: {cpu['model']}, {os.cpu_count()} CPUs; bf16 flags: {', '.join(cpu['bf16_flags']) or 'none'} "
          f"({'native' if cpu['native_bf16'] else 'no native'} bfloat16); auto picks {auto.dtype}")
    print()
    print("| what | dtype | rows/s | tokens/s | note |")
    print("|---|---|---|---|---|")
    for dtype in dtypes:
        mark = " (auto)" if dtype == auto.dtype else ""
        b, o = results["bare_by_dtype"][dtype], results["offline_by_dtype"][dtype]
        print(f"| bare `LLM.chat` (one call) | {dtype}{mark} | {b['rows_per_s']:.1f} | {b['tokens_per_s']:,.0f} | "
              f"the engine's own limit |")
        print(f"| `swiftpipe extract --engine offline --dtype {dtype}` | {dtype}{mark} | {o['rows_per_s']:.1f} | "
              f"{o['tokens_per_s']:,.0f} | {o['rows_per_s'] / b['rows_per_s']:.2f}x bare |")
    if len(dtypes) == 2:
        first, second = (results["bare_by_dtype"][d]["rows_per_s"] for d in dtypes)
        print(f"| {dtypes[1]} vs {dtypes[0]}, bare | | {second / first:.2f}x | | answers differ in "
              f"{results['answers_differ']} of {args.rows} rows |")
    if "server" in results:
        print(f"| `swiftpipe extract --engine server` (1 vLLM server) | {results['server_dtype']['dtype']} | "
              f"{results['server']['rows_per_s']:.1f} | {results['server']['tokens_per_s']:,.0f} | concurrency 32 |")
        print(f"| one row at a time (same server) | {results['server_dtype']['dtype']} | "
              f"{results['one_at_a_time_rows_per_s']:.1f} | | |")
    if "confidence_ab" in results:
        ab = results["confidence_ab"]
        print(f"| offline extract, confidence on vs off ({args.confidence_rounds} interleaved rounds, median) | "
              f"{auto.dtype} | {ab['median']['on']:.1f} vs {ab['median']['off']:.1f} | | {ab['on_vs_off']:.3f}x |")
    for size, r in results["rss"].items():
        print(f"| peak RSS, {size:,} rows | {auto.dtype} | {r['rows_per_s']:.1f} | | swiftpipe {r['peak_rss_mib']} MiB, "
              f"with vLLM's processes {r['peak_rss_tree_mib']} MiB |")
    dest = REPO / "bench" / "results" / f"extract_throughput-{socket.gethostname()}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    print(f"\nwritten: {dest.relative_to(REPO)}")


if __name__ == "__main__":
    main()
