"""The address recipe at Qwen3-0.6B's true size and real vocabulary, end to end on this machine.

    python bench/true_size.py [--out /tmp/swiftpipe-true-size] [--dtype auto|bfloat16|float32]
                              [--steps 6] [--batch-size 2] [--eval-rows 50] [--extract-rows 200]

Not in CI (tens of minutes on 2 cores). It runs `recipes/address-qwen3-0.6b.yaml` with the
true-size random-init model (`swiftpipe tiny-model --size qwen3-0.6b`: the architecture, Qwen's
real tokenizer, chat template and generation config) and the shipped address data, changing only
what a CPU cannot do, as overrides (printed and written to the report):

  model.id             the built model (no download; its directory is named Qwen3-0.6B, so ms-swift
                       picks the qwen3 model type and template by itself, as for the hub id)
  hardware.device=cpu  (the recipe would stop on a machine without a GPU)
  model.torch_dtype    --dtype; `auto` first trains 3 steps in bfloat16 and in float32 and keeps
                       the faster (bf16 needs avx512_bf16/AMX to be native on a CPU)
  train.max_steps, train.batch_size, train.grad_accum=1, train.save_steps, train.logging_steps=1
                       (the recipe's 10 epochs of 20 x 16 rows are GPU work)
  data.test            the first --eval-rows rows of the shipped test set
  eval.compare_base=false  (the base is the same random model: its evaluation would measure the same)
  eval.timeout=900     (seconds per request: a random model writes every field to its length limit,
                       and 32 such requests at once take minutes on 2 cores; the recipe's 120 s is for a GPU)
  output.root          under --out
and, for `swiftpipe serve`, `--upstream-timeout 900` for the same reason (its default is 60 s), and
VLLM_CPU_KVCACHE_SPACE=4 (GiB of KV cache on a CPU; swiftpipe's CPU default is 1).

Stages: build the model → data stats (tokens per row, real tokenizer) → `swiftpipe run` (sft →
export/merge → eval: vLLM serve + the evaluator → report) → `swiftpipe serve RUN` (gateway + vLLM)
→ `swiftpipe extract` of --extract-rows texts through that gateway (its prompt tokens as vLLM counted
them are checked against the real tokenizer's count) → stop it and check that nothing is left. Per
stage: wall time, peak RSS and PSS (sums over the stage's process tree, sampled every second from
/proc: RSS counts shared pages once per process, PSS splits them) and disk used. Every command runs in
its own process group under swiftpipe's child guard: stopped on exit, error, Ctrl-C and SIGTERM, and
even when this script is SIGKILLed. Writes OUT/report.json and OUT/report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from swiftpipe.core import envinfo, jsonl, procs  # noqa: E402
from swiftpipe.core.childguard import descendants  # noqa: E402
from swiftpipe.recipe.rundir import RunDir  # noqa: E402

RECIPE = "recipes/address-qwen3-0.6b.yaml"
KEY = "sk-true-size-rehearsal-" + "k" * 16
SLOW_CPU_TIMEOUT = 900  # seconds a request may take here (see the docstring)


def _kib(pid: int, path: str, field: str) -> int:
    try:
        with open(f"/proc/{pid}/{path}") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Sampler(threading.Thread):
    """Peak RSS and PSS of a process tree, per label (`label()` names the part running now)."""

    def __init__(self, pid: int, label: Callable[[], str]):
        super().__init__(daemon=True)
        self.pid, self.label, self.done = pid, label, threading.Event()
        self.rss: dict[str, int] = {}
        self.pss: dict[str, int] = {}
        self.seen: dict[int, bytes] = {}  # every process of the tree, for the "nothing left" check

    def run(self) -> None:
        while not self.done.is_set():
            tree = descendants(self.pid)
            self.seen.update(tree)
            pids = [self.pid, *tree]
            name = self.label()
            self.rss[name] = max(self.rss.get(name, 0), sum(_kib(p, "status", "VmRSS:") for p in pids))
            self.pss[name] = max(self.pss.get(name, 0), sum(_kib(p, "smaps_rollup", "Pss:") for p in pids))
            self.done.wait(1.0)

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        self.done.set()
        self.join()
        mib = lambda d: {k: round(v / 1024, 1) for k, v in d.items()}  # noqa: E731
        return mib(self.rss), mib(self.pss)


def still_running(seen: dict[int, bytes]) -> list[str]:
    """The processes of `seen` that are still alive (same pid and start time)."""
    left = []
    for pid, started in seen.items():
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if fields[19] == started and fields[0] != b"Z":
                left.append(f"{pid}: " + open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:200])
        except (OSError, IndexError):
            continue
    return left


def env(**extra: str) -> dict[str, str]:
    e = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
         "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
         "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}
    e.update(extra)
    return e


def swiftpipe(*args: str) -> list[str]:
    return [sys.executable, "-m", "swiftpipe.cli", *args]


def du_mib(*paths: Path) -> float:
    total = 0
    for path in paths:
        if path.is_file():
            total += path.stat().st_size
        elif path.is_dir():
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return round(total / 2**20, 1)


class Stage:
    """One command in its own process group (swiftpipe's child guard), its tree sampled."""

    def __init__(self, cmd: list[str], log: Path, *, label: Optional[Callable[[], str]] = None,
                 extra_env: Optional[dict] = None):
        log.unlink(missing_ok=True)
        self.started = time.monotonic()
        self.proc = procs.start(cmd, env(**(extra_env or {})), log, cwd=REPO, grace=30.0)
        self.sampler = Sampler(self.proc.pid, label or (lambda: "all"))
        self.sampler.start()

    def stop(self) -> None:
        procs.stop(self.proc, grace=60.0)

    def finish(self) -> tuple[float, dict[str, float], dict[str, float], int, list[str]]:
        """(wall s, peak RSS MiB per label, peak PSS MiB per label, exit code, processes left)."""
        try:
            code = self.proc.wait()
        except BaseException:
            self.stop()
            raise
        finally:
            wall = round(time.monotonic() - self.started, 1)
            rss, pss = self.sampler.stop()
        return wall, rss, pss, code, still_running(self.sampler.seen)


def measured(cmd: list[str], log: Path, **kwargs) -> tuple[float, dict[str, float], dict[str, float], int, list[str]]:
    return Stage(cmd, log, **kwargs).finish()


def run_status(run_dir: Path) -> Callable[[], str]:
    def label() -> str:
        try:
            status = json.loads((run_dir / "run.json").read_text()).get("status", "")
        except (OSError, ValueError):
            return "start"
        return status.removeprefix("running ") if status.startswith("running ") else status or "start"

    return label


def sft_speed(run_dir: Path) -> Optional[float]:
    """Seconds per optimizer step: swift's train_runtime (logging.jsonl) over its steps."""
    log = run_dir / "train" / "logging.jsonl"
    if not log.is_file():
        return None
    for line in reversed(log.read_text().splitlines()):
        row = json.loads(line) if line.strip() else {}
        if "train_runtime" in row and "global_step/max_steps" in row:
            return round(float(row["train_runtime"]) / int(row["global_step/max_steps"].split("/")[0]), 2)
    return None


def common_overrides(args, model: Path, test: Path, dtype: str, steps: int) -> list[str]:
    return [f"model.id={model}", "hardware.device=cpu", f"model.torch_dtype={dtype}", f"train.max_steps={steps}",
            f"train.batch_size={args.batch_size}", "train.grad_accum=1", f"train.save_steps={steps}",
            "train.logging_steps=1", f"data.test={test}", "eval.compare_base=false",
            f"eval.timeout={SLOW_CPU_TIMEOUT}", f"output.root={args.out / 'runs'}"]


def served_prompt_tokens(rows_file: Path, model: Path) -> list[int]:
    """Prompt tokens per row as vLLM builds them for swiftpipe's request, by the real tokenizer."""
    from transformers import AutoTokenizer

    from swiftpipe.data import stats
    from swiftpipe.recipe.load import load_recipe

    prompt = load_recipe(REPO / RECIPE).recipe.data.system_prompt
    rows, bad = stats.read_rows(rows_file, default_system=prompt)
    assert not bad, bad
    return stats.token_lengths(rows, AutoTokenizer.from_pretrained(model))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("/tmp/swiftpipe-true-size"))
    ap.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--eval-rows", type=int, default=50)
    ap.add_argument("--extract-rows", type=int, default=200)
    ap.add_argument("--port", type=int, default=8655)
    args = ap.parse_args()
    procs.handle_termination_signals()  # SIGTERM / SIGHUP: the same clean-up as Ctrl-C
    out: Path = args.out.resolve()
    args.out = out
    (out / "logs").mkdir(parents=True, exist_ok=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    flags = open("/proc/cpuinfo").read()
    report: dict = {"machine": {"cpu": cpu, "cores": os.cpu_count(),
                                "cpu_bf16": sorted({f for f in ("avx512_bf16", "amx_bf16") if f in flags}),
                                "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                                "disk_free_gib": round(shutil.disk_usage(out).free / 2**30, 1),
                                "versions": envinfo.package_versions()},
                    "stages": {}, "problems": []}
    stages = report["stages"]
    t0 = time.monotonic()

    def stage(name: str, wall: Optional[float], rss: Optional[float], pss: Optional[float], disk: Optional[float] = None,
              **more) -> None:
        stages[name] = {"wall_s": wall, "peak_rss_mib": rss, "peak_pss_mib": pss, "disk_mib": disk, **more}
        print(f"[{name}] {wall} s, peak RSS {rss} MiB (PSS {pss}), disk {disk} MiB {more or ''}", flush=True)

    def left_check(name: str, left: list[str]) -> None:
        if left:
            report["problems"].append(f"{name}: processes left running: {left}")

    # 1. the model
    model = out / "models" / "Qwen3-0.6B"
    if not (model / "model.safetensors").is_file():
        wall, rss, pss, code, left = measured(swiftpipe("tiny-model", str(model), "--size", "qwen3-0.6b"),
                                              out / "logs/model.log")
        if code:
            raise SystemExit(f"building the model failed; see {out / 'logs/model.log'}")
        stage("model", wall, rss["all"], pss["all"], du_mib(model))
    else:
        stage("model", None, None, None, du_mib(model), note="built before (reused)")

    # 2. data: the test subset, the extraction input, tokens per row with the real tokenizer
    data = out / "data"
    data.mkdir(exist_ok=True)
    test_rows = (REPO / "datasets/address/test.jsonl").read_text(encoding="utf-8").splitlines()
    test = data / f"test{args.eval_rows}.jsonl"
    test.write_text("\n".join(test_rows[:args.eval_rows]) + "\n", encoding="utf-8")
    picked = [test_rows[(args.eval_rows + i) % len(test_rows)] for i in range(args.extract_rows)]
    source = data / "extract_source.jsonl"
    source.write_text("\n".join(picked) + "\n", encoding="utf-8")
    texts = data / "texts.jsonl"
    users = [json.loads(line)["messages"][-2]["content"] for line in picked]
    jsonl.write_lines(texts, ({"id": i, "text": text} for i, text in enumerate(users)))
    tokens = {}
    for name, path in (("train", REPO / "datasets/address/train.jsonl"), ("test", test), ("extract", source)):
        done = subprocess.run(swiftpipe("data", "stats", str(path), "--model", str(model), "--recipe", RECIPE, "--json",
                                        "--png", str(data / f"{name}.lengths.png")),
                              cwd=REPO, env={**os.environ, **env()}, capture_output=True, text=True)
        if done.returncode:
            report["problems"].append(f"data stats {name}: {done.stderr[-500:]}")
            continue
        result = json.loads(done.stdout)
        tokens[name] = {k: result[k] for k in ("rows", "prompt_tokens", "answer_tokens", "total_tokens", "coverage")}
    report["tokens"] = tokens
    expected_prompt = sum(served_prompt_tokens(source, model))

    # 3. bf16 or float32 for training on this CPU: 3 steps each, the same rows
    dtype = args.dtype
    if dtype == "auto":
        speeds = {}
        for candidate in ("bfloat16", "float32"):
            run_id = f"probe-{candidate}"
            shutil.rmtree(out / "runs" / "address-qwen3-0.6b" / run_id, ignore_errors=True)
            cmd = swiftpipe("run", RECIPE, *common_overrides(args, model, test, candidate, 3), "eval.enabled=false",
                            "export.merge_lora=false", "--run-id", run_id)
            wall, rss, pss, code, left = measured(cmd, out / "logs" / f"{run_id}.log")
            left_check(run_id, left)
            speeds[candidate] = {"wall_s": wall, "peak_rss_mib": max(rss.values()), "exit": code,
                                 "s_per_step": sft_speed(out / "runs" / "address-qwen3-0.6b" / run_id)}
            print(f"[probe {candidate}] {speeds[candidate]}", flush=True)
        report["dtype_probe"] = speeds
        usable = {k: v["s_per_step"] for k, v in speeds.items() if v["exit"] == 0 and v["s_per_step"]}
        if not usable:
            raise SystemExit(f"neither dtype trained; see {out / 'logs'}")
        dtype = min(usable, key=usable.__getitem__)
    report["dtype"] = dtype

    # 4. the run: sft → export → eval → report
    overrides = common_overrides(args, model, test, dtype, args.steps)
    report["overrides"] = overrides
    print("overrides: " + " ".join(overrides), flush=True)
    run_dir = out / "runs" / "address-qwen3-0.6b" / "rehearsal"
    shutil.rmtree(run_dir, ignore_errors=True)
    wall, rss, pss, code, left = measured(swiftpipe("run", RECIPE, *overrides, "--run-id", "rehearsal"),
                                          out / "logs/run.log", label=run_status(run_dir))
    left_check("swiftpipe run", left)
    report["run"] = {"wall_s": wall, "exit": code}
    seconds = RunDir(run_dir).stage_seconds() if run_dir.is_dir() else {}
    disks = {"sft": du_mib(run_dir / "train"), "export": du_mib(run_dir / "merged"), "eval": du_mib(run_dir / "eval"),
             "report": du_mib(run_dir / "report.md")}
    for name in ("sft", "export", "eval", "report"):
        if name in seconds:
            extra = {"s_per_step": sft_speed(run_dir)} if name == "sft" else {}
            stage(name, seconds[name], rss.get(name), pss.get(name), disks[name], **extra)
    metrics_file = run_dir / "eval" / "finetuned" / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        report["eval_metrics"] = {k: metrics.get(k) for k in ("n", "exact_match", "invalid_json", "api_errors",
                                                              "latency_p50_s", "latency_p95_s", "requests_per_s")}
        stages["eval"].update(report["eval_metrics"])
    if code:
        report["problems"].append(f"swiftpipe run exited {code}; see {out / 'logs/run.log'}")
        write(out, report)
        raise SystemExit(f"the run failed; see {out / 'logs/run.log'}")

    # 5. swiftpipe serve RUN (gateway + vLLM), then swiftpipe extract through it
    import httpx

    db = out / "serve" / "serve.sqlite"  # the gateway's log, keys and versions (a fresh one each time)
    shutil.rmtree(db.parent, ignore_errors=True)
    phase = {"now": "start-up"}
    serve = Stage(swiftpipe("serve", str(run_dir), "--port", str(args.port), "--db", str(db),
                            "--upstream-timeout", str(SLOW_CPU_TIMEOUT)),
                  out / "logs/serve.log", label=lambda: phase["now"], extra_env={"SWIFTPIPE_API_KEY": KEY})
    base = f"http://127.0.0.1:{args.port}"
    auth = {"Authorization": f"Bearer {KEY}"}
    ready: Optional[float] = None
    one: dict = {}
    ewall, erss, epss, ecode = 0.0, {}, {}, -1
    try:
        while time.monotonic() - serve.started < 900 and serve.proc.poll() is None:
            try:
                if httpx.get(f"{base}/v1/models", headers=auth, timeout=2).status_code == 200:
                    ready = round(time.monotonic() - serve.started, 1)
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        if ready is None:
            raise SystemExit(f"swiftpipe serve did not come up; see {out / 'logs/serve.log'}")
        phase["now"] = "one request"
        started = time.monotonic()
        answer = httpx.post(f"{base}/v1/extract", headers=auth, json={"text": users[0]}, timeout=SLOW_CPU_TIMEOUT)
        one = {"status": answer.status_code, "seconds": round(time.monotonic() - started, 1),
               "body": answer.json() if answer.headers.get("content-type", "").startswith("application/json")
               else answer.text[:300]}
        phase["now"] = "extract"
        shutil.rmtree(out / "extracted", ignore_errors=True)
        ewall, erss, epss, ecode, eleft = measured(
            swiftpipe("extract", str(texts), "--out", str(out / "extracted"), "--model", str(run_dir),
                      "--base-url", f"{base}/v1"),
            out / "logs/extract.log", extra_env={"OPENAI_API_KEY": KEY})
        left_check("swiftpipe extract", eleft)
    finally:
        serve.stop()
        serve_wall, serve_rss, serve_pss, _, serve_left = serve.finish()
        left_check("swiftpipe serve", serve_left)
    stage("serve", ready, serve_rss.get("start-up"), serve_pss.get("start-up"), du_mib(db.parent),
          first_extract=one, serving_peak_rss_mib=max(serve_rss.values()), serving_peak_pss_mib=max(serve_pss.values()),
          held_s=serve_wall)
    summary = json.loads((out / "extracted" / "summary.json").read_text()) if ecode == 0 else {}
    stage("extract", ewall, erss.get("all"), epss.get("all"), du_mib(out / "extracted"),
          gateway_and_vllm_peak_rss_mib=serve_rss.get("extract"), gateway_and_vllm_peak_pss_mib=serve_pss.get("extract"),
          **{k: summary.get(k) for k in ("rows", "valid", "errors", "errors_by_kind", "seconds", "rows_per_s",
                                          "tokens_per_s", "prompt_tokens", "completion_tokens") if k in summary})
    if ecode:
        report["problems"].append(f"swiftpipe extract exited {ecode}; see {out / 'logs/extract.log'}")
    if summary.get("rows"):
        # The served prompt, as vLLM counted it (usage.prompt_tokens), against the real tokenizer's count.
        report["extract_prompt_tokens"] = {"served": summary.get("prompt_tokens"), "expected": expected_prompt,
                                           "per_row": round(summary["prompt_tokens"] / summary["rows"], 1),
                                           "completion_per_row": round(summary["completion_tokens"] / summary["rows"], 1)}
        if summary.get("prompt_tokens") != expected_prompt:
            report["problems"].append(f"extract: vLLM counted {summary.get('prompt_tokens')} prompt tokens, the real "
                                      f"tokenizer {expected_prompt}")
    report["total_wall_s"] = round(time.monotonic() - t0, 1)
    write(out, report)


def write(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2) + "\n")
    lines = ["| stage | wall | peak RSS (PSS) | disk |", "|---|---|---|---|"]
    for name, s in report["stages"].items():
        lines.append(f"| {name} | {s['wall_s']} s | {s['peak_rss_mib']} ({s['peak_pss_mib']}) MiB | {s['disk_mib']} MiB |")
    lines += ["", f"problems: {report['problems'] or 'none'}"]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {out / 'report.json'}")


if __name__ == "__main__":
    main()
