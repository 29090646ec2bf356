"""`swiftpipe serve RUN_DIR|MODEL_DIR`: serve a run's final model (or any model directory) with
vLLM until Ctrl-C, SIGTERM or SIGHUP, then stop it (its whole process group)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Optional

from swiftpipe import console, envinfo, jsonl, procs, render
from swiftpipe.errors import SwiftpipeError
from swiftpipe.recipe.schema import Recipe, ServeSection
from swiftpipe.vllm_server import ServeTarget, VllmServer, new_api_key


def run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe a run directory was made with."""
    from swiftpipe.recipe.load import load_recipe

    return load_recipe(run_dir / "resolved.yaml").recipe


def serve_forever(target: str, *, recipe: Optional[str], host: Optional[str], port: Optional[int],
                  name: Optional[str], base: bool, log_file: Optional[str] = None) -> None:
    from swiftpipe.recipe.load import load_recipe

    path = Path(target).resolve()
    info = jsonl.read_json(path / "run.json")
    loaded_recipe = load_recipe(recipe).recipe if recipe else (run_recipe(path) if info else None)
    gpu_count = len(envinfo.gpus())
    cpu = render.device_is_cpu(loaded_recipe, gpu_count) if loaded_recipe else not gpu_count
    if info:
        if not base and not info.get("final_model"):
            raise SwiftpipeError(f"{path}: the run has no final model yet (status: {info.get('status')}); "
                                 f"finish it with `swiftpipe run <recipe> --run-id {info.get('run_id')}`")
        assert loaded_recipe is not None
        what = ServeTarget.for_run(loaded_recipe, which="base" if base else "finetuned",
                                   final_model=info.get("final_model"), base=Path(info.get("cwd", ".")),
                                   run_name=info.get("name"), cpu=cpu)
        log = path / "logs" / "serve.log"
    elif loaded_recipe:
        what = ServeTarget.from_recipe(loaded_recipe, str(path), served_name=path.name, cpu=cpu)
        log = Path.cwd() / "serve.log"
    else:
        what = ServeTarget(model_dir=str(path), served_name=path.name, cpu=cpu)
        log = Path.cwd() / "serve.log"
    settings = loaded_recipe.serve if loaded_recipe else ServeSection()
    settings = settings.model_copy(update={k: v for k, v in (("host", host), ("port", port)) if v is not None})
    what.served_name = name or what.served_name
    log = Path(log_file).resolve() if log_file else log
    key = os.environ.get("SWIFTPIPE_API_KEY") or os.environ.get("VLLM_API_KEY")
    log.parent.mkdir(parents=True, exist_ok=True)
    server = VllmServer(what, log, settings=settings, api_key=key or new_api_key())
    console.resume_hint(None)
    console.say(f"starting vLLM for {what.model_dir} (log: {log}) ...")
    with server:
        console.say(f"serving '{what.served_name}' at {server.base_url}")
        if key is None:
            console.say(f"API key (generated, shown once; set SWIFTPIPE_API_KEY to choose one): {server.api_key}")
        console.say("Ctrl-C stops the server.")
        console.resume_hint("the server was stopped; start it again with the same `swiftpipe serve` command")
        with procs.sigterm_as_interrupt():
            while server.proc and server.proc.poll() is None:
                time.sleep(1)
        if server.proc is not None and server.proc.poll() is not None:
            raise SwiftpipeError(f"vLLM exited with code {server.proc.returncode}; see {log}")
