"""The `ray` engine: the same offline vLLM engine in a pool of Ray actors (one per GPU), fed a Ray
dataset of the pending chunks (`map_batches` with a callable class). Each actor reads its chunk
from the input (through the chunk index, so ids and parts are the ones the offline engine makes)
and writes the part itself: INPUT and OUT must be paths every Ray node can read and write (a
shared file system), as for Ray's own readers and writers.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from swiftpipe.core import console
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.extract.engines import OfflineEngine, OfflineSettings, offline_dtype, offline_environment
from swiftpipe.extract.inputs import Chunk
from swiftpipe.extract.job import RESULT_FIELDS, ChunkResult, Job


class RayError(SwiftpipeError):
    pass


class ChunkWorker:
    """A Ray actor: one vLLM engine, loaded once, extracting whole chunks."""

    def __init__(self, job: Job, settings: OfflineSettings, chunks: dict[int, Chunk]):
        offline_environment(settings.cpu)
        self.job, self.chunks = job, chunks
        self.engine = OfflineEngine(settings, job.task)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        results: list[ChunkResult] = []
        self.job.run_pipelined([self.chunks[int(i)] for i in batch["chunk"]], self.engine, results.append)
        return {name: [getattr(r, name) for r in results] for name in RESULT_FIELDS}


def run(job: Job, settings: OfflineSettings, pending: list[Chunk], *, address: Optional[str], replicas: int,
        on_chunk: Callable[[ChunkResult], None]) -> None:
    try:
        import ray
    except ImportError:
        raise RayError("the ray engine needs Ray Data: pip install 'swiftpipe[ray]' (or 'ray[data]>=2.60,<2.61')") from None
    offline_environment(settings.cpu)
    env = {k: os.environ[k] for k in ("VLLM_PLUGINS", "VLLM_CPU_KVCACHE_SPACE", "CUDA_VISIBLE_DEVICES",
                                      "HF_HUB_OFFLINE") if k in os.environ}
    started_here = not ray.is_initialized()
    if started_here:
        if address:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False)
        else:
            # A local cluster in this process: logical CPUs enough for every actor and Ray Data's tasks.
            cpus = max(os.cpu_count() or 1, replicas + 1)
            ray.init(num_cpus=cpus, runtime_env={"env_vars": env}, include_dashboard=False, log_to_driver=False)
        console.say(f"ray: {'cluster at ' + address if address else 'a local cluster'}; {replicas} actor(s); "
                    f"actor logs: {ray.get_runtime_context().gcs_address and _log_dir(ray)}")
    # Each actor chooses for its own CPU and prints it in its log; this is the choice on this machine.
    console.say(f"ray actors: {offline_dtype(settings).line()}" + ("" if not address else " (here; each actor "
                "chooses for its own machine's CPU)"))
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        chunks = {c.index: c for c in pending}
        items = ray.data.from_items([{"chunk": c.index} for c in pending], override_num_blocks=len(pending))
        ds = items.map_batches(ChunkWorker, fn_constructor_kwargs={"job": job, "settings": settings, "chunks": chunks},
                            batch_size=1, compute=ray.data.ActorPoolStrategy(size=replicas), num_cpus=1,
                            num_gpus=0 if settings.cpu else settings.tensor_parallel_size)
        try:
            for row in ds.iter_rows():
                counts: dict[str, Any] = {name: int(row[name]) for name in RESULT_FIELDS}
                on_chunk(ChunkResult(**{**counts, "skipped": bool(row["skipped"])}))
        except ray.exceptions.RayError as exc:  # an actor failed: say its own error, not Ray's traceback
            cause = getattr(exc, "cause", None) or exc
            lines = [line for line in str(cause).strip().splitlines() if line.strip()]
            raise RayError(f"a Ray actor failed: {lines[-1] if lines else type(cause).__name__}; finished parts "
                           f"are kept, rerun to continue; actor logs: {_log_dir(ray)}") from None
    finally:
        if started_here:
            ray.shutdown()


def _log_dir(ray) -> str:
    try:
        return os.path.join(ray._private.worker._global_node.get_session_dir_path(), "logs")
    except Exception:  # noqa: BLE001 - only for a message
        return "the Ray session directory (/tmp/ray/session_latest/logs)"
