"""The bodies of `swiftpipe serve` and `swiftpipe eval` (the CLI only parses and calls)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

from swiftpipe.errors import SwiftpipeError


def _run_recipe(run_dir: Path):
    from swiftpipe.recipe.load import validate

    import yaml

    resolved = run_dir / "resolved.yaml"
    return validate(yaml.safe_load(resolved.read_text(encoding="utf-8")), file=str(resolved))


def serve_forever(target: str, *, recipe: Optional[str], host: Optional[str], port: Optional[int],
                  name: Optional[str], base: bool, log_file: Optional[str] = None) -> None:
    from swiftpipe import envinfo, render
    from swiftpipe.recipe.load import load_recipe
    from swiftpipe.rundir import read_json
    from swiftpipe.serve import ServeOptions, VllmServer, new_api_key

    path = Path(target).resolve()
    info = read_json(path / "run.json")
    loaded_recipe = load_recipe(recipe).recipe if recipe else (_run_recipe(path) if info else None)
    gpu_count = len(envinfo.gpus())
    cpu = render.device_is_cpu(loaded_recipe, gpu_count) if loaded_recipe else not gpu_count
    if info:
        if not base and not info.get("final_model"):
            raise SwiftpipeError(f"{path}: the run has no final model yet (status: {info.get('status')}); "
                                 f"finish it with `swiftpipe run <recipe> --run-id {info.get('run_id')}`")
        opts = ServeOptions.for_run(loaded_recipe, which="base" if base else "finetuned",
                                    final_model=info.get("final_model"), base=Path(info.get("cwd", ".")),
                                    run_name=info.get("name"), cpu=cpu)
        log = path / "logs" / "serve.log"
    elif loaded_recipe:
        opts = ServeOptions.from_recipe(loaded_recipe, str(path), served_name=path.name, cpu=cpu)
        log = Path.cwd() / "serve.log"
    else:
        opts = ServeOptions(model_dir=str(path), served_name=path.name, cpu=cpu)
        log = Path.cwd() / "serve.log"
    model = opts.model_dir
    opts.served_name = name or opts.served_name
    log = Path(log_file).resolve() if log_file else log
    opts.host, opts.port = host or opts.host, port or opts.port
    key = os.environ.get("SWIFTPIPE_API_KEY") or os.environ.get("VLLM_API_KEY")
    generated = key is None
    log.parent.mkdir(parents=True, exist_ok=True)
    server = VllmServer(opts, log, api_key=key or new_api_key())
    print(f"starting vLLM for {model} (log: {log}) ...", flush=True)
    with server:
        print(f"serving '{opts.served_name}' at {server.base_url}", flush=True)
        if generated:
            print(f"API key (generated, shown once; set SWIFTPIPE_API_KEY to choose one): {server.api_key}", flush=True)
        print("Ctrl-C stops the server.", flush=True)
        from swiftpipe.procs import sigterm_as_interrupt

        with sigterm_as_interrupt():
            while server.proc and server.proc.poll() is None:
                time.sleep(1)
        if server.proc is not None and server.proc.poll() is not None:
            raise SwiftpipeError(f"vLLM exited with code {server.proc.returncode}; see {log}")


def run_eval(test_file: str, *, base_urls: list[str], model: str, out_dir: str, concurrency: int,
             schema_file: Optional[str], recipe: Optional[str], max_tokens: Optional[int],
             timeout: Optional[float], no_schema: bool, metric: Optional[str] = None) -> None:
    from swiftpipe import evaluate
    from swiftpipe.recipe.load import load_recipe

    loaded = load_recipe(recipe).recipe if recipe else None
    rows = evaluate.read_test_rows(Path(test_file), loaded.data.system_prompt if loaded else None)
    if no_schema:
        schema = None
    elif schema_file:
        try:
            schema = json.loads(Path(schema_file).read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SwiftpipeError(f"{schema_file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    else:
        schema = (loaded.data.json_schema() if loaded else None) or evaluate.schema_from_gold(rows)
    cfg = evaluate.EvalConfig(
        base_url=base_urls[0].rstrip("/"),
        replicas=[url.rstrip("/") for url in base_urls[1:]],
        model=model,
        api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
        schema=schema,
        concurrency=concurrency,
        max_tokens=max_tokens or (loaded.eval.max_tokens if loaded else 512),
        timeout=timeout or (loaded.eval.timeout if loaded else 120),
        metric=metric or (loaded.eval.metric if loaded else "exact_match"),
    )
    metrics = evaluate.evaluate(cfg, rows, Path(out_dir), progress=sys.stderr.isatty())
    print(f"{evaluate.headline(metrics)}, {(metrics['requests_per_s'] or 0):.1f} requests/s")
    print(f"written: {Path(out_dir) / 'predictions.jsonl'}, metrics.json, report.md")


def run_sweep(recipe: str, axes: tuple[str, ...], *, sweep_id: Optional[str], dry_run: bool) -> None:
    from swiftpipe import runs, sweep

    root, run_ids = sweep.run_sweep(recipe, axes, sweep_id=sweep_id, dry_run=dry_run)
    if dry_run:
        return
    frame = runs.leaderboard(root)
    print(runs.render(frame[frame["run"].str.rsplit("/", n=1).str[-1].isin(run_ids)], "table"), end="")


def show_leaderboard(root: str, *, fmt: str, sort: str, where: Optional[str], columns: list[str],
                     out: Optional[str]) -> None:
    from swiftpipe import runs

    text = runs.render(runs.leaderboard(Path(root), sort=sort, where=where, columns=columns), fmt)
    if out:
        Path(out).write_text(text, encoding="utf-8")
        print(f"written: {out}")
    else:
        print(text, end="")


def download_model(loaded) -> None:
    """Fetch model.id into the hub's cache, where ms-swift and vLLM look for it."""
    model = loaded.recipe.model
    if model.is_local:
        print(f"model.id {model.id} is a local path: nothing to download")
        return
    if loaded.recipe.offline:
        raise SwiftpipeError(f"offline is set: cannot download {model.id}; set offline=false or use a local copy")
    try:
        if model.hub == "huggingface":
            from huggingface_hub import snapshot_download

            path = snapshot_download(model.id)
        else:
            from modelscope import snapshot_download

            path = snapshot_download(model.id)
    except Exception as exc:  # noqa: BLE001 - network / auth / not-found errors come in many types
        raise SwiftpipeError(f"cannot download {model.id} from {model.hub}: {exc}. Check the network and the id, "
                             f"or set model.hub to the other hub") from None
    print(f"{model.id} downloaded to {path}")
