"""The engines that answer extraction requests in bulk: `offline` (vLLM's in-process engine) and
`server` (OpenAI-compatible servers through the shared client). The Ray engine runs `OfflineEngine`
in actors (`swiftpipe.extract.on_ray`).

Every engine asks the task for its requests (`Task.sdk_kwargs`, `Task.sampling_params`, as the
evaluator and the gateway do): the recipe's system prompt, greedy decoding, thinking off, the answer
schema as structured output. `run(texts)` returns one `Answer` per text, in order; a text that fails gets an
error and never stops the others.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

from swiftpipe.core import console
from swiftpipe.core.dtype import DtypeChoice, vllm_dtype
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.core.vllm_server import CPU_BLOCK_SIZE, ModelListError, list_models
from swiftpipe.recipe.task import Task
from swiftpipe.task import client, flags
from swiftpipe.task.client import ROLLOUT_ALIAS
from swiftpipe.task.confidence import pieces_from_vllm


class EngineError(SwiftpipeError):
    pass


# Why an engine has no answer for a text (`Answer.error_kind`), counted by kind in the summary.
ENGINE_ERROR = "engine_error"  # the offline engine refused or lost the request
SERVER_ERROR = "server_error"  # the server answered with an error, or not at all


@dataclass
class Answer:
    raw: Optional[str] = None
    error: Optional[str] = None
    error_kind: Optional[str] = None  # ENGINE_ERROR | SERVER_ERROR when `error` is set
    timed_out: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    pieces: Optional[list[tuple[bytes, float]]] = None  # the sampled tokens and logprobs (task.confidence)
    cached_tokens: int = 0  # prompt tokens the engine found in its prefix cache
    scored: Optional[tuple[dict, Optional[float]]] = None  # a kept answer's ({field: p}, row confidence)
    reused: bool = False  # from the result store, not the engine

    @property
    def flag(self) -> str:
        """The flag of a text without an answer."""
        return flags.TIMEOUT if self.timed_out else flags.UPSTREAM_ERROR


OnRows = Callable[[int], None]  # told how many more rows are done


# ---------------------------------------------------------------- offline: vLLM in this process


@dataclass
class OfflineSettings:
    model_dir: str
    cpu: bool
    max_model_len: Optional[int]  # none: the model's own
    batch_size: int = 256  # sequences the engine runs at once (vLLM max_num_seqs)
    structured_outputs_backend: str = "xgrammar"
    gpu_memory_utilization: float = 0.9
    tensor_parallel_size: int = 1
    seed: int = 0
    dtype: str = "auto"  # auto | bfloat16 | float16 | float32 (`swiftpipe.core.dtype.vllm_dtype`)
    dtype_from: str = "extract.dtype"  # which setting gave `dtype`, for the printed reason


def offline_dtype(settings: OfflineSettings, cpuinfo: Optional[str] = None) -> DtypeChoice:
    """The engine's dtype on this machine (the rule of `vllm_dtype` for `auto`)."""
    return vllm_dtype(settings.dtype, cpu=settings.cpu, source=settings.dtype_from, cpuinfo=cpuinfo)


def llm_kwargs(settings: OfflineSettings, dtype: DtypeChoice) -> dict[str, Any]:
    """The keyword arguments of vLLM's `LLM` for these settings (pure: no vLLM import)."""
    structured: dict[str, Any] = {"backend": settings.structured_outputs_backend}
    kwargs: dict[str, Any] = dict(model=settings.model_dir, max_model_len=settings.max_model_len, seed=settings.seed,
                                  max_num_seqs=settings.batch_size, generation_config="vllm",
                                  structured_outputs_config=structured)
    if dtype.dtype is not None:
        kwargs["dtype"] = dtype.dtype
    kwargs["enable_prefix_caching"] = True  # every row starts with the same system prompt
    if settings.cpu:
        structured["disable_any_whitespace"] = True  # a small model under a schema can loop on whitespace
        kwargs["enforce_eager"] = True
        kwargs["block_size"] = CPU_BLOCK_SIZE  # the default (128) is longer than the shared prefix
    else:
        kwargs.update(gpu_memory_utilization=settings.gpu_memory_utilization,
                      tensor_parallel_size=settings.tensor_parallel_size)
    return kwargs


def offline_environment(cpu: bool) -> None:
    """What vLLM must find in the environment before it is imported (as for `vllm serve`)."""
    os.environ.setdefault("VLLM_PLUGINS", "")  # ms-swift's plugin needs torchvision, absent on CPU
    if cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; the default check fails on small VMs
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local model: a stray hub lookup fails fast
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines would drown the progress


class OfflineEngine:
    """vLLM's `LLM` in this process. Requests are queued (`LLM.enqueue_chat`, the rendering of
    `LLM.chat`) and the engine is stepped until a chunk's requests are done; the next chunk is
    queued before that, so the engine never drains between chunks (`Job.run_pipelined`)."""

    name = "offline"

    def __init__(self, settings: OfflineSettings, task: Task):
        offline_environment(settings.cpu)
        from vllm import LLM

        self.task, self.settings = task, settings
        self.dtype = offline_dtype(settings)
        console.say(self.dtype.line())
        try:
            self.llm = LLM(**llm_kwargs(settings, self.dtype))
        except Exception as exc:  # noqa: BLE001 - vLLM raises many kinds at start-up
            raise EngineError(f"vLLM could not load {settings.model_dir}: {type(exc).__name__}: {exc}") from None
        self.tokenizer = self.llm.get_tokenizer()
        # What vLLM resolved (`torch.float32` -> float32): the dtype the engine really computes in.
        self.loaded_dtype = str(getattr(self.llm.model_config, "dtype", "")).removeprefix("torch.") or None
        self.sampling = task.sampling_params()
        self._finished: dict[str, Answer] = {}  # answers of finished requests not collected yet

    def length(self, text: str) -> tuple[int, str]:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]), "tokens"

    def _answer(self, out) -> Answer:
        done = out.outputs[0] if out.outputs else None
        return Answer(raw=done.text if done else None, error=None if done else "engine error: no output",
                      error_kind=None if done else ENGINE_ERROR, prompt_tokens=len(out.prompt_token_ids or []),
                      completion_tokens=len(done.token_ids) if done else 0,
                      cached_tokens=getattr(out, "num_cached_tokens", None) or 0,
                      pieces=pieces_from_vllm(done, self.tokenizer) if done and self.task.confidence else None)

    def submit(self, texts: list[str]) -> list:
        """Queue `texts` in the engine without waiting; returns a ticket for `collect`. A text the
        engine refuses (longer than its context, ...) gets its error here, alone."""
        ticket: list = []
        for text in texts:
            conversation: Any = self.task.messages(text)  # OpenAI-shaped messages, as vLLM takes them
            try:
                ids = self.llm.enqueue_chat([conversation], self.sampling, use_tqdm=False,
                                            chat_template_kwargs=self.task.chat_template_kwargs)
                # vLLM returns its internal id ("<request id>-<8 random characters>"); outputs carry
                # the request id (LLM's own counter, digits only).
                ticket += [i.rsplit("-", 1)[0] for i in ids]
            except Exception as exc:  # noqa: BLE001 - one bad row must not fail the others
                ticket.append(Answer(error=f"engine error: {type(exc).__name__}: {exc}", error_kind=ENGINE_ERROR))
        return ticket

    def collect(self, ticket: list, progress: Optional[OnRows] = None) -> list[Answer]:
        """Step the engine until every request of `ticket` is finished (requests queued later keep
        the engine busy meanwhile); their answers in order."""
        waiting = {t for t in ticket if isinstance(t, str)}
        engine = self.llm.llm_engine
        while waiting - self._finished.keys():
            if not engine.has_unfinished_requests():
                raise EngineError("vLLM lost requests: it has none unfinished but "
                                  f"{len(waiting - self._finished.keys())} never finished")
            for out in engine.step():
                if out.finished:
                    self._finished[out.request_id] = self._answer(out)
                    if progress:
                        progress(1)
        return [self._finished.pop(t) if isinstance(t, str) else t for t in ticket]

    def run(self, texts: list[str], progress: Optional[OnRows] = None) -> list[Answer]:
        return self.collect(self.submit(texts), progress)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            engine = getattr(llm, "llm_engine", None)
            shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
            if callable(shutdown):
                shutdown()
            self.llm = None  # type: ignore[assignment]


# ---------------------------------------------------------------- server: OpenAI-compatible servers


def served_model(base_url: str, api_key: str, timeout: float = 30) -> str:
    """The model name to ask for: the server's only model, or the gateway's rollout alias."""
    try:
        names = list_models(base_url, api_key, timeout)
    except ModelListError as exc:
        fix = {401: "set OPENAI_API_KEY to the server's key", None: "is the server running? Check --base-url"}
        raise EngineError(f"{exc}; {fix.get(exc.status, 'pass the model name with --served-name')}") from None
    if len(names) == 1:
        return names[0]
    if ROLLOUT_ALIAS in names:
        console.say(f"{base_url} is a swiftpipe gateway: asking for '{ROLLOUT_ALIAS}' (its rollout); pin a version "
                    f"with --served-name ({', '.join(n for n in names if n != ROLLOUT_ALIAS)})")
        return ROLLOUT_ALIAS
    raise EngineError(f"{base_url} serves {len(names)} models ({', '.join(names) or 'none'}); choose one "
                      f"with --served-name")


class ServerEngine:
    """One or more OpenAI-compatible servers of the same model, `concurrency` requests in flight,
    with the shared client's retries and backoff."""

    name = "server"

    def __init__(self, base_urls: list[str], *, model: Optional[str], api_key: str, task: Task, concurrency: int,
                 timeout: float):
        self.task, self.concurrency = task, concurrency
        name = model or served_model(base_urls[0], api_key)
        self.endpoints = [client.Endpoint(url, name, api_key, timeout=timeout) for url in base_urls]
        self.loop = asyncio.new_event_loop()
        self.apis = [client.async_client(e) for e in self.endpoints]
        self.sent = 0

    def length(self, text: str) -> tuple[int, str]:
        return self.task.length(text)

    async def _run(self, texts: list[str], progress: Optional[OnRows]) -> list[Answer]:
        answers: list[Answer] = [Answer() for _ in texts]

        async def ask(i: int) -> None:
            which = (self.sent + i) % len(self.endpoints)
            endpoint = self.endpoints[which]
            done = await client.chat(self.apis[which], self.task.sdk_kwargs(endpoint.model, texts[i]), endpoint)
            answers[i] = Answer(raw=done.text, error=done.error and f"server error: {done.error}",
                                error_kind=SERVER_ERROR if done.error else None, timed_out=done.timed_out,
                                prompt_tokens=done.prompt_tokens, completion_tokens=done.completion_tokens,
                                cached_tokens=done.cached_tokens, pieces=done.pieces)
            if progress:
                progress(1)

        await client.for_each_concurrently(range(len(texts)), ask, self.concurrency)
        self.sent += len(texts)
        return answers

    def run(self, texts: list[str], progress: Optional[OnRows] = None) -> list[Answer]:
        return self.loop.run_until_complete(self._run(texts, progress))

    def close(self) -> None:
        for api in self.apis:
            self.loop.run_until_complete(api.close())
        self.loop.close()

