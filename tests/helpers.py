"""What many tests need, written once: the CLI as a child process, free ports, the processes left
behind, waits with a deadline that fails the test, reading a child's output with a deadline, and
the gateway as users run it (`swiftpipe serve` in its own process)."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_DATA = REPO / "datasets" / "demo" / "address.jsonl"
DEMO_RECIPE = str(REPO / "recipes" / "demo-cpu.yaml")
KEY = "sk-test-gateway-" + "x7" * 8  # the gateway's key in tests (SWIFTPIPE_API_KEY)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """Skip on a developer machine; under CI (env CI set, as `.ci/run` does) a missing tool or
    package is a failure, never a silent skip."""
    import pytest

    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this fails instead of skipping)", pytrace=False)
    pytest.skip(reason)


def cpuinfo(model: str, flags: str, processors: int = 2) -> str:
    """/proc/cpuinfo as Linux writes it on x86: one block per logical CPU."""
    return "".join(f"processor\t: {i}\nvendor_id\t: x\nmodel name\t: {model}\nflags\t\t: {flags}\n\n"
                   for i in range(processors))


# The two kinds of x86 CPU for vLLM's dtype rule (swiftpipe.core.dtype): AVX2 only (an AMD EPYC VM as
# measured in issue 25: bfloat16 emulated) and AVX-512 with bf16 and AMX (this machine's kind).
CPUINFO_NO_BF16 = cpuinfo("AMD EPYC 7B13", "fpu vme sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni")
CPUINFO_BF16 = cpuinfo("Intel(R) Xeon(R) Processor", "fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni "
                       "amx_bf16 avx512_fp16 amx_tile amx_int8")


def swiftpipe_cmd() -> list[str]:
    """The CLI of the interpreter running the tests (works without an activated venv)."""
    return [sys.executable, "-m", "swiftpipe.cli"]


def child_env(**extra: str) -> dict:
    """Environment for CLI subprocesses: the venv's bin first so `swift` resolves."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run_cli(*args: str, cwd: Path = REPO, env: Optional[dict] = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`swiftpipe ARGS` as a user runs it: exit code, stdout and stderr."""
    return subprocess.run([*swiftpipe_cmd(), *args], capture_output=True, text=True, cwd=cwd, env=env or child_env(),
                          timeout=timeout)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (a closed port, for 'connection refused', too)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(port: int) -> bool:
    """Free for the next server: nothing listens (SO_REUSEADDR, as servers bind, so the TIME_WAIT
    connections a client leaves behind do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention `text` (to find servers left behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().split()[2]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(cmdline)
    return found


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, *, every: float = 0.1) -> Any:
    """Poll until `predicate()` is truthy and return it; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def assert_gone(text: str, seconds: float) -> None:
    """Every process mentioning `text` ends within `seconds` (fails the test otherwise)."""
    wait_for(lambda: processes_mentioning(text) == [], seconds, f"no process mentioning {text}",
             every=0.2)


class Lines:
    """A child's stdout read line by line in a thread, so a wait for a line has a deadline instead
    of hanging in `readline`."""

    def __init__(self, stream):
        self.seen: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def until(self, predicate: Callable[[str], bool], timeout: float, what: str) -> str:
        """The first new line for which `predicate` holds; fails after `timeout` s or at EOF."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; output:\n" + "".join(self.seen))
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the output ended before {what}; output:\n" + "".join(self.seen))
            self.seen.append(line)
            if predicate(line):
                return line


def start_scripted_upstream(log: Path, *, delay_ms: float = 5) -> tuple[subprocess.Popen, str]:
    """bench/scripted_upstream.py in its own process group; (process, its /v1 URL) once it answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "scripted_upstream.py"), "--port", str(port),
                             "--delay-ms", str(delay_ms)], start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))

    def answers() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return True
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 60, "the scripted upstream", every=0.2)
    except BaseException:
        stop_group(proc)
        raise
    return proc, f"http://127.0.0.1:{port}/v1"


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Stop a child started with start_new_session=True, and its whole group."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


class GatewayProcess:
    """`swiftpipe serve ARGS` in its own process group, on a free port, its key SWIFTPIPE_API_KEY=KEY;
    ready once it prints `serving`."""

    def __init__(self, tmp_path: Path, *args: str, scheme: str = "http", startup_s: float = 120,
                 env: Optional[dict] = None, port: Optional[int] = None, db: Optional[Any] = None):
        self.port = port or free_port()
        self.db = db or tmp_path / "serve" / "gw.sqlite"  # a SQLite file, or a PostgreSQL URL
        self.out = tmp_path / f"gateway-{self.port}.out"
        self.env = env or child_env(SWIFTPIPE_API_KEY=KEY)
        self.proc = subprocess.Popen([*swiftpipe_cmd(), "serve", *args, "--port", str(self.port), "--db", str(self.db)],
                                     cwd=tmp_path, env=self.env, stdout=open(self.out, "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.url = f"{scheme}://127.0.0.1:{self.port}"

        def serving() -> bool:
            assert self.proc.poll() is None, self.output()
            return "serving " in self.output()

        try:
            wait_for(serving, startup_s, f"the gateway to serve; output:\n{self.output()}", every=0.2)
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def output(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def post(self, path: str, body, key: str = KEY, **kwargs):
        import httpx

        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if isinstance(body, (dict, list)):
            return httpx.post(self.url + path, json=body, headers=headers, timeout=60, **kwargs)
        return httpx.post(self.url + path, content=body, headers={**headers, "Content-Type": "application/json"},
                          timeout=60, **kwargs)

    def get(self, path: str, key: str = KEY, **kwargs):
        import httpx

        return httpx.get(self.url + path, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60,
                         **kwargs)

    def rows(self) -> dict[str, Any]:
        from swiftpipe.gateway import store

        conn = store.connect(self.db, create=False)
        try:
            return {r["id"]: r for r in conn.execute("SELECT * FROM requests")}
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the gateway (only its own process: it stops its vLLM servers itself) and wait."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        return self.proc.wait(timeout=60)


def write_jsonl(path: Path, rows: list) -> Path:
    """`rows` as a JSONL file (UTF-8, not escaped); returns `path`."""
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def training_row(answer: str = '{"name": "a"}') -> str:
    """One JSONL line in ms-swift's messages format: a user turn and the assistant's `answer` (as given)."""
    import json

    return json.dumps({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": answer}]}) + "\n"


def messages_line(user: str, gold: Any, system: Optional[str] = "sys") -> str:
    """One test row as a JSONL line (no newline): an optional system turn, the user's text and the gold answer as JSON."""
    import json

    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}, {"role": "assistant", "content": json.dumps(gold, ensure_ascii=False)}]
    return json.dumps({"messages": msgs}, ensure_ascii=False)
