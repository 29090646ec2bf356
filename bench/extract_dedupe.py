"""Each distinct text once, and the shared prompt in vLLM's prefix cache: `swiftpipe extract
--engine offline`, A/B, interleaved rounds, medians.

    python bench/extract_dedupe.py --model RUN_DIR|MODEL_DIR [--recipe R] [--distinct 500] [--rows 2000]
                                   [--rounds 3] [--out FILE]

Cases (each a fresh `swiftpipe extract` into a new OUT; the time is the engine's work, from ready to
the last part written: summary.json `seconds - load_seconds`):
  distinct   --distinct synthesized waybills (seed 5), each once;
  repeated   --rows rows drawn from the same texts (every one at least once, shuffled, seed 7):
             with each distinct text asked once, within ~1x of `distinct`;
  block128   `distinct` with the CPU backend's default KV block (128 tokens), for the prefix cache's
             A/B: `distinct` runs with swiftpipe's block (32), so its cached share is above 0.
The order of the cases alternates each round. Prints a Markdown table and the JSON (machine, CPU
flags, per-round figures, medians); --out FILE writes the JSON too.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.extract_throughput import env  # noqa: E402
from swiftpipe.core import jsonl  # noqa: E402
from swiftpipe.core.dtype import cpu_bf16  # noqa: E402
from swiftpipe.data.synth import samples  # noqa: E402

# `swiftpipe extract` with the CPU block size set back to vLLM's CPU default (the A/B of the prefix cache).
WITH_BLOCK = ("import sys\nimport swiftpipe.core.vllm_server as s, swiftpipe.extract.engines as e\n"
              "s.CPU_BLOCK_SIZE = e.CPU_BLOCK_SIZE = int(sys.argv.pop(1))\n"
              "from swiftpipe.cli import main\nsys.argv[0] = 'swiftpipe'\nmain()\n")


def run_extract(src: Path, out: Path, args, block: int | None) -> dict:
    common = [str(src), "--out", str(out), "--model", args.model, "--format", "jsonl"]
    if args.recipe:
        common += ["--recipe", args.recipe]
    cmd = ([sys.executable, "-c", WITH_BLOCK, str(block), "extract", *common] if block
           else [sys.executable, "-m", "swiftpipe.cli", "extract", *common])
    done = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"swiftpipe extract failed ({done.returncode}):\n{done.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    work = s["seconds"] - s["load_seconds"]
    return {"rows": s["rows"], "work_s": round(work, 2), "rows_per_s": round(s["rows"] / work, 1),
            "model_calls": s["model_calls"], "distinct_texts": s["distinct_texts"],
            "repeated_rows": s["repeated_rows"], "prompt_tokens": s["prompt_tokens"],
            "cached_prompt_tokens": s["cached_prompt_tokens"], "cached_prompt_share": s["cached_prompt_share"],
            "valid": s["valid"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="a run directory (brings its recipe) or a model directory")
    ap.add_argument("--recipe", help="the recipe, with a model directory")
    ap.add_argument("--distinct", type=int, default=500)
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="also write the JSON result here")
    args = ap.parse_args()
    if args.rows < args.distinct:
        ap.error("--rows must be at least --distinct")

    with tempfile.TemporaryDirectory(prefix="extract-dedupe-") as tmp:
        work = Path(tmp)
        texts = [t for t, _ in samples(args.distinct, seed=5)]
        rng = random.Random(7)
        repeated = texts + [rng.choice(texts) for _ in range(args.rows - len(texts))]
        rng.shuffle(repeated)
        inputs = {"distinct": work / "distinct.jsonl", "repeated": work / "repeated.jsonl"}
        jsonl.write_lines(inputs["distinct"], ({"text": t} for t in texts))
        jsonl.write_lines(inputs["repeated"], ({"text": t} for t in repeated))
        cases = {"distinct": ("distinct", None), "repeated": ("repeated", None), "block128": ("distinct", 128)}
        rounds: dict[str, list[dict]] = {c: [] for c in cases}
        for r in range(args.rounds):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            for case in order:
                src, block = cases[case]
                got = run_extract(inputs[src], work / f"{case}-{r}", args, block)
                rounds[case].append(got)
                print(f"round {r + 1} {case}: {got}", flush=True)

    medians = {c: {k: statistics.median(x[k] for x in rs) for k in ("work_s", "rows_per_s", "cached_prompt_share")}
               for c, rs in rounds.items()}
    for c, rs in rounds.items():
        medians[c].update(model_calls=rs[0]["model_calls"], rows=rs[0]["rows"])
    ratio = round(medians["repeated"]["work_s"] / medians["distinct"]["work_s"], 3)
    result = {"benchmark": "extract_dedupe", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpu": platform.processor() or platform.machine(), "cpu_model": _cpu_model(),
                          "bf16": cpu_bf16().record()},
              "settings": vars(args), "rounds": rounds, "medians": medians,
              "repeated_over_distinct_time": ratio}
    text = json.dumps(result, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    print("\n| case | rows | model calls | work s (median) | rows/s | cached prompt share |\n|---|---|---|---|---|---|")
    for c, m in medians.items():
        print(f"| {c} | {m['rows']} | {m['model_calls']} | {m['work_s']:.2f} | {m['rows_per_s']:.1f} | "
              f"{m['cached_prompt_share']} |")
    print(f"repeated / distinct time: {ratio}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
