"""`swiftpipe extract`: plan (recipe, model, input, output), then run the pending chunks with the
chosen engine and write the summary. Everything that can be wrong with the input or the output
directory is found before a model is loaded."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Optional

from swiftpipe.core import console, envinfo, jsonl, procs
from swiftpipe.core.dtype import cpu_bf16
from swiftpipe.core.vllm_server import dtype_setting
from swiftpipe.extract import parts
from swiftpipe.extract.engines import OfflineSettings, ServerEngine, offline_dtype, served_model
from swiftpipe.extract.inputs import Input, fingerprint, resolve
from swiftpipe.extract.job import MANIFEST_VERSION, ExtractError, Job, Progress, Totals, check_fields, open_output
from swiftpipe.extract.results import ResultStore, open_store
from swiftpipe.recipe.derived import context_length, device_is_cpu
from swiftpipe.recipe.rundir import NotARun, resolve_target
from swiftpipe.recipe.schema import ExtractSection, Recipe
from swiftpipe.recipe.task import Task, task_of, token_counter
from swiftpipe.task.client import ROLLOUT_ALIAS


def _model_and_recipe(model: Optional[str], recipe: Optional[str]) -> tuple[Optional[str], Optional[Recipe], Path,
                                                                           Optional[float]]:
    """(model directory, recipe, base for the recipe's relative paths, the accept threshold the run's
    eval calibrated)."""
    from swiftpipe.recipe.load import load_recipe

    given = load_recipe(recipe).recipe if recipe else None
    if model is None:
        return None, given, Path.cwd(), None
    try:
        found = resolve_target(model, recipe=given, recipe_from=recipe, option="--model ")
    except NotARun as exc:
        raise ExtractError(str(exc)) from None
    return found.model_dir, found.recipe, found.base, found.run.accept_threshold() if found.run else None


def extract_command(input_spec: str, *, out: str, **options) -> dict:
    try:
        return _extract(input_spec, out=out, **options)
    except OSError as exc:  # OUT not writable, a full disk, a file gone meanwhile: what, where, no traceback
        where = exc.filename or out
        raise ExtractError(f"{where}: {exc.strerror or exc}; finished parts in {out} are kept: fix this and rerun "
                           f"the same command") from None


def _extract(input_spec: str, *, out: str, model: Optional[str], engine: Optional[str], base_urls: list[str],
                    recipe: Optional[str], text_field: str, id_field: Optional[str], fmt: Optional[str], no_text: bool,
                    retry_errors: bool, served_name: Optional[str], ray_address: Optional[str],
                    replicas: Optional[int], chunk_rows: Optional[int], batch_size: Optional[int],
                    concurrency: Optional[int], dtype: Optional[str] = None,
                    accept_threshold: Optional[float] = None, confidence: bool = True,
                    cache: Optional[str] = None) -> dict:
    model_dir, loaded, base, calibrated = _model_and_recipe(model, recipe)
    section = loaded.extract if loaded else ExtractSection()
    given = {"engine": engine, "format": fmt, "chunk_rows": chunk_rows, "batch_size": batch_size,
             "concurrency": concurrency, "replicas": replicas, "dtype": dtype}
    settings = ExtractSection.model_validate({**section.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    which = "server" if base_urls and engine is None and section.engine == "offline" else settings.engine
    if which == "server" and not base_urls:
        raise ExtractError("the server engine needs --base-url URL (an OpenAI-compatible server or the gateway)")
    if which != "server" and base_urls:
        raise ExtractError(f"--base-url is for --engine server; the {which} engine runs the model itself (--model)")
    if which != "server" and model_dir is None:
        raise ExtractError(f"the {which} engine needs --model RUN_DIR or MODEL_DIR (or use --engine server --base-url URL)")
    if which == "server" and dtype is not None:
        raise ExtractError("--dtype is for the offline and ray engines; a server's dtype is set where it is started "
                           "(serve.dtype)")
    offline = (_offline_settings(model_dir, loaded, settings, "--dtype" if dtype is not None else "extract.dtype")
               if model_dir is not None and which != "server" else None)
    if loaded is None:
        console.warn("no recipe (--recipe, or --model RUN_DIR): requests carry no system prompt and no answer schema, "
                     "and texts have no length limit; output rows keep the raw answer")
    task = task_of(loaded, base) if loaded else Task()
    if not confidence:  # --no-confidence: no logprobs asked, no confidence column values, no threshold
        task = dataclasses.replace(task, confidence=False)
    # --accept-threshold, else serve.accept_threshold, else what the run's eval calibrated
    if task.confidence:
        task = task.with_threshold(accept_threshold if accept_threshold is not None else
                                   task.accept_threshold if task.accept_threshold is not None else calibrated)
    console.say("extract: " + (f"rows with row confidence >= {task.accept_threshold:g} need no review"
                               if task.accept_threshold is not None else
                               "no accept threshold: needs_review marks only invalid answers and values not in the text"))
    fields = task.fields
    check_fields(fields)

    files = resolve(input_spec)
    inp = Input(files, text_field, id_field)
    out_dir = Path(out)
    identity = model_dir if which != "server" else (served_name or model_dir or base_urls[0])
    manifest = {"swiftpipe_extract": MANIFEST_VERSION, "input": fingerprint(files), "text_field": text_field,
                "id_field": id_field, "chunk_rows": settings.chunk_rows, "format": settings.format,
                "keep_text": not no_text, "fields": fields, "model": identity, "recipe": loaded.name if loaded else None}
    chunks = open_output(out_dir, manifest, inp, settings.chunk_rows)
    stale = parts.clean_partial(out_dir)
    if stale:
        console.say(f"removed {stale} part(s) left half-written by an interrupted run")
    job = Job(out=out_dir, input=inp, task=task, fmt=settings.format, keep_text=not no_text, fields=fields,
              retry_errors=retry_errors)
    done = parts.finished(out_dir, settings.format)
    pending = [c for c in chunks if c.index not in done or (retry_errors and job.needs_retry(c))]
    total_rows = sum(c.rows for c in chunks)
    console.resume_hint(f"rerun the same `swiftpipe extract` command: the {len(done)}+ finished chunk(s) in {out_dir} "
                        f"are kept and only the rest is extracted")
    console.say(f"extract: {total_rows:,} rows in {len(chunks)} chunk(s) of {settings.chunk_rows}; "
                f"{len(chunks) - len(pending)} done already, {len(pending)} to do ({which} engine)")
    totals = Totals(chunks_skipped=len(chunks) - len(pending))
    if pending:
        if which == "server" and served_name is None:
            served_name = served_model(base_urls[0], os.environ.get("OPENAI_API_KEY", "EMPTY"))
        job.store = _store(out_dir, cache, which, model_dir, offline, served_name, base_urls, task)
    started = time.monotonic()
    load_s = 0.0
    loaded_dtype: Optional[str] = None  # what vLLM resolved, when the engine ran in this process
    if pending:
        if which != "server":
            procs.watch_descendants()  # vLLM's engine processes (and Ray's) end with this one, even on SIGKILL
        pending_rows = sum(c.rows for c in pending) if not retry_errors else None
        initial = total_rows - pending_rows if pending_rows is not None else 0
        progress = Progress(total_rows if pending_rows is not None else sum(c.rows for c in pending), initial)
        try:
            if which == "ray":
                assert offline is not None
                load_s = _run_ray(job, offline, settings, pending, ray_address, totals, progress)
            else:
                load_s, loaded_dtype = _run_here(job, which, model_dir, offline, loaded, settings, pending,
                                                 base_urls, served_name, totals, progress)
        finally:
            progress.close()
            if job.store is not None:
                job.store.close()
    elapsed = time.monotonic() - started
    summary = job.summary()
    work_s = max(totals.work_s or elapsed - load_s, 1e-9)
    summary.update(
        engine=which, model=identity, recipe=loaded.name if loaded else None, input=[str(f) for f in files],
        chunks=len(chunks), chunks_run=totals.chunks_run, chunks_skipped=totals.chunks_skipped,
        rows_run=totals.rows, seconds=round(elapsed, 2), load_seconds=round(load_s, 2),
        rows_per_s=round(totals.rows / work_s, 2) if totals.rows else None,
        tokens_per_s=round((totals.prompt_tokens + totals.completion_tokens) / work_s, 1) if totals.rows else None,
        prompt_tokens=totals.prompt_tokens, completion_tokens=totals.completion_tokens,
        **totals.record(), cache=str(Path(cache).resolve()) if cache else None,
        versions={**envinfo.package_versions(), **_extra_versions()},
        # The engine's dtype on this machine (Ray actors on other machines choose for their own CPU);
        # a server's is set where the server is started.
        dtype={**offline_dtype(offline).record(), "loaded": loaded_dtype} if offline else None,
        cpu=cpu_bf16().record(),
    )
    jsonl.write_json(out_dir / "summary.json", summary)
    console.resume_hint(None)
    pct = f"{summary['valid_pct']}%" if summary["valid_pct"] is not None else "-"
    speed = f", {summary['rows_per_s']} rows/s" if summary["rows_per_s"] else ""
    console.say(f"extract: {summary['rows']:,} rows, {pct} valid, {summary['errors']:,} with an error{speed}; "
                f"written: {out_dir} (summary.json)")
    if summary["rows"] != total_rows:
        raise ExtractError(f"{out_dir} has {summary['rows']} rows for {total_rows} input rows; rerun to finish it")
    return summary


def _store(out: Path, cache: Optional[str], which: str, model_dir: Optional[str], offline: Optional[OfflineSettings],
           served_name: Optional[str], base_urls: list[str], task: Task) -> ResultStore:
    """This run's result store (`swiftpipe.extract.results`): --cache DIR's, else OUT's own. The
    model is its files' hash (with the engine's dtype) when it runs here or --model names its
    directory; a server's model is its served name at its URLs."""
    if which != "server":
        assert model_dir is not None and offline is not None
        extra = f"dtype={offline_dtype(offline).dtype or 'auto'}"
    else:
        extra = f"server {served_name} at {' '.join(sorted(base_urls))}"
        if cache and served_name == ROLLOUT_ALIAS:
            console.warn(f"--cache with the gateway's '{ROLLOUT_ALIAS}' model: answers are kept under that name "
                         f"whatever version its rollout picks; pin a version with --served-name")
    store = open_store(out, cache, model_dir=model_dir, model_id=extra, engine_extra=extra,
                       task_fp=task.fingerprint())
    if cache:
        console.say(f"extract: result cache {store.path} (answers of this model and task are reused)")
    return store


def _extra_versions() -> dict:
    from importlib import metadata

    found: dict[str, Optional[str]] = {}
    for name in ("ray", "pyarrow"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def _offline_settings(model_dir: str, recipe: Optional[Recipe], settings: ExtractSection,
                      dtype_from: str = "extract.dtype", gpu_count: Optional[int] = None) -> OfflineSettings:
    """The offline engine's settings. Its dtype: `settings.dtype` (--dtype, else extract.dtype; named
    by `dtype_from`), else the recipe's server's (serve.extra_args.dtype, else serve.dtype), else auto."""
    gpus = len(envinfo.gpus()) if gpu_count is None else gpu_count
    cpu = device_is_cpu(recipe, gpus) if recipe else not gpus
    max_len = context_length(recipe) if recipe else None
    dtype: str
    if settings.dtype is not None:
        dtype = settings.dtype
    elif recipe:
        dtype, dtype_from = dtype_setting(recipe.serve)
    else:
        dtype, dtype_from = "auto", "dtype (default)"
    return OfflineSettings(model_dir=model_dir, cpu=cpu, max_model_len=max_len, batch_size=settings.batch_size,
                           structured_outputs_backend=recipe.serve.structured_outputs_backend if recipe else "xgrammar",
                           gpu_memory_utilization=recipe.serve.gpu_memory_utilization if recipe else 0.9,
                           tensor_parallel_size=recipe.serve.tensor_parallel_size if recipe else 1,
                           dtype=dtype, dtype_from=dtype_from)


def _run_here(job: Job, which: str, model_dir: Optional[str], offline: Optional[OfflineSettings],
              recipe: Optional[Recipe], settings: ExtractSection, pending, base_urls: list[str],
              served_name: Optional[str], totals: Totals, progress: Progress) -> tuple[float, Optional[str]]:
    """Run the pending chunks with an engine in this process: (load seconds, the dtype vLLM loaded)."""
    loading = time.monotonic()
    engine: object
    if which == "offline":
        from swiftpipe.extract.engines import OfflineEngine

        assert model_dir is not None and offline is not None
        console.say(f"loading {model_dir} into vLLM (offline engine)")
        engine = OfflineEngine(offline, job.task)
    else:
        key = os.environ.get("OPENAI_API_KEY", "EMPTY")
        counter = token_counter(model_dir) if model_dir else None
        if job.task.max_length and counter is None:
            console.warn("no local tokenizer (pass --model RUN_DIR|MODEL_DIR): the length limit counts characters")
        job.task = job.task.with_counter(counter)
        engine = ServerEngine(base_urls, model=served_name, api_key=key, task=job.task,
                              concurrency=settings.concurrency, timeout=recipe.eval.timeout if recipe else 120)
    load_s = time.monotonic() - loading
    progress.restart()
    try:
        if hasattr(engine, "submit"):
            job.run_pipelined(pending, engine, totals.add, progress)
        else:
            for chunk in pending:
                totals.add(job.run_chunk(chunk, engine, progress))
        totals.work_s = time.monotonic() - progress.started
    finally:
        close = getattr(engine, "close", None)
        if callable(close):
            close()
    return load_s, getattr(engine, "loaded_dtype", None)


def _run_ray(job: Job, offline: OfflineSettings, settings: ExtractSection, pending, address: Optional[str],
             totals: Totals, progress: Progress) -> float:
    from swiftpipe.extract import on_ray

    replicas = settings.replicas or (1 if offline.cpu else max(1, len(envinfo.gpus()) // offline.tensor_parallel_size))

    def on_chunk(result) -> None:
        totals.add(result)
        progress(result.rows)

    on_ray.run(job, offline, pending, address=address, replicas=replicas, on_chunk=on_chunk)
    totals.work_s = time.monotonic() - progress.started  # the actors load their engines within this time
    return 0.0
