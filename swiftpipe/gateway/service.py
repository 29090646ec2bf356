"""`swiftpipe serve`: one vLLM server per version and the gateway in front of them, until Ctrl-C,
SIGTERM or SIGHUP; then the gateway drains and every vLLM process group is stopped.

A version is a run directory (its final model and resolved recipe; named `<recipe>@<run id>`),
a model directory (with `--recipe`), or an OpenAI-compatible server that is already running
(`--upstream NAME=URL`, with `--recipe`; its key from SWIFTPIPE_UPSTREAM_API_KEY).
Every target may be written `NAME=PATH` to choose its version name.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from swiftpipe.core import console, envinfo, procs
from swiftpipe.core.errors import SwiftpipeError
from swiftpipe.core.vllm_server import ServeTarget, VllmServer, new_api_key, port_in_use
from swiftpipe.gateway import connections, feedback, keys, rollout, store
from swiftpipe.gateway.upstream import UpstreamClient, Version
from swiftpipe.recipe.derived import device_is_cpu, model_ref, run_serve_target, serve_target
from swiftpipe.recipe.rundir import NotARun, resolve_target
from swiftpipe.recipe.schema import Recipe, ServeSection
from swiftpipe.recipe.task import Task, task_of, token_counter
from swiftpipe.task.client import ROLLOUT_ALIAS

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class GatewayError(SwiftpipeError):
    pass


@dataclass
class Planned:
    """A version before anything is started."""

    name: str
    recipe: Optional[Recipe]  # None: a bare model (no system prompt, schema or length limit)
    recipe_base: Path  # relative paths of the recipe are relative to this
    target: Optional[ServeTarget] = None  # a model to start vLLM for
    log: Optional[Path] = None
    url: Optional[str] = None  # an upstream that already runs
    source: str = ""
    task: Task = field(default_factory=Task)  # its recipe's; none: no system prompt, schema or length limit
    calibrated: Optional[float] = None  # the accept threshold its run's eval calibrated


def split_name(spec: str) -> tuple[Optional[str], str]:
    """`NAME=PATH` → (NAME, PATH); a plain path → (None, path)."""
    name, sep, rest = spec.partition("=")
    if sep and name and "/" not in name and not Path(spec).exists():
        return name, rest
    return None, spec


def _load_recipe(path: str) -> Recipe:
    from swiftpipe.recipe.load import load_recipe

    return load_recipe(path).recipe


def plan_versions(targets: list[str], upstreams: list[str], *, recipe: Optional[str], names: list[str],
                  base: bool, log_dir: Path, accept_threshold: Optional[float] = None) -> list[Planned]:
    """Check every target and decide what to start; raises before anything is started. A version's
    accept threshold: `accept_threshold` (--accept-threshold), else its recipe's serve.accept_threshold,
    else the one its run's eval calibrated, else none (flags and the queue use confidence alone)."""
    if not targets and not upstreams:
        raise GatewayError("nothing to serve: pass run directories, model directories (with --recipe) or "
                         "--upstream NAME=URL (with --recipe)")
    if names and len(names) != len(targets):
        raise GatewayError(f"--name was given {len(names)} time(s) for {len(targets)} target(s); give one per target "
                         f"or write targets as NAME=PATH")
    given = _load_recipe(recipe) if recipe else None
    gpu_count = len(envinfo.gpus())
    planned: list[Planned] = []
    for i, spec in enumerate(targets):
        name, target = split_name(spec)
        name = names[i] if names else name
        try:
            found = resolve_target(target, recipe=given, recipe_from=recipe, final_model=not base)
        except NotARun as exc:
            raise GatewayError(str(exc)) from None
        if found.run is not None:
            run, run_recipe = found.run, found.recipe
            assert run_recipe is not None
            what = run_serve_target(run_recipe, which="base" if base else "finetuned", final_model=run.final_model,
                                       base=run.base, run_name=run.name, cpu=device_is_cpu(run_recipe, gpu_count))
            version = name or f"{run.name}@{run.run_id}" + ("-base" if base else "")
            planned.append(Planned(version, run_recipe, run.base, what, run.log("serve"), source=str(run.path),
                                   calibrated=run.accept_threshold("base" if base else "finetuned")))
        else:
            version = name or found.path.name
            assert found.model_dir is not None
            if given is None:
                console.warn(f"{target}: a model directory without --recipe: /v1/extract sends no system prompt and "
                             f"no answer schema, and checks no length limit")
                what = ServeTarget(model_dir=found.model_dir, served_name=version, cpu=not gpu_count)
            else:
                what = serve_target(given, found.model_dir, served_name=version,
                                               cpu=device_is_cpu(given, gpu_count))
            planned.append(Planned(version, given, Path.cwd(), what, log_dir / f"{_safe(version)}.vllm.log",
                                   source=str(found.path)))
        assert planned[-1].target is not None
        planned[-1].target.served_name = planned[-1].name
    for spec in upstreams:
        name, sep, url = spec.partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise GatewayError(f"--upstream '{spec}': write it NAME=URL, e.g. v1=http://127.0.0.1:8000/v1")
        if given is None:
            console.warn(f"--upstream {name}: without --recipe, /v1/extract sends no system prompt and no answer "
                         f"schema, and checks no length limit")
        url = url.rstrip("/")
        planned.append(Planned(name, given, Path.cwd(), url=url if url.endswith("/v1") else url + "/v1", source=url))
    seen: set[str] = set()
    for p in planned:
        p.task = task_of(p.recipe, p.recipe_base) if p.recipe else Task()
        if p.task.accept_threshold is None:
            p.task = p.task.with_threshold(p.calibrated)
        p.task = p.task.with_threshold(accept_threshold)
        if p.name in seen:
            raise GatewayError(f"two targets are both named '{p.name}'; name them apart with NAME=PATH")
        if p.name == ROLLOUT_ALIAS or not p.name.strip():
            raise GatewayError(f"'{p.name}' cannot be a version name ('{ROLLOUT_ALIAS}' means: as the rollout "
                               f"weights say)")
        seen.add(p.name)
    return planned


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.@" else "_" for c in name)


def version_of(p: Planned, *, base_url: str, api_key: str, model: Optional[str]) -> Version:
    """The running version of a planned one: its task counts input tokens with its model's tokenizer."""
    model_dir = p.target.model_dir if p.target else (model_ref(p.recipe, p.recipe_base) if p.recipe else None)
    counter = token_counter(model_dir) if model_dir else None
    if p.recipe is not None and counter is None:
        console.warn(f"version '{p.name}': no local tokenizer (model {p.recipe.model.id}); its length limit "
                     f"(train.max_length={p.recipe.train.max_length}) counts characters instead of tokens")
    return Version(name=p.name, base_url=base_url, model=model, api_key=api_key, task=p.task.with_counter(counter),
                   source=p.source)


def key_file(db: Any) -> Path:
    """Where a generated admin key is kept (0600): beside a SQLite file; for a PostgreSQL database,
    in this machine's serve/ directory, named after the database."""
    place = store.target(db)
    if place.path is not None:
        return place.path.with_name(place.path.name + ".admin-key")
    return Path(store.DEFAULT_DB).parent.resolve() / f"{place.name}.admin-key"


def ensure_key(conn, db: Any) -> Optional[Path]:
    """The gateway's own key is an admin key: SWIFTPIPE_API_KEY (registered as 'env'; at least
    MIN_ENV_KEY characters), else — when the database has no active key at all — one generated and
    written to a 0600 file beside the database (never to a log). Returns that file when it made one."""
    env_key = os.environ.get("SWIFTPIPE_API_KEY")
    if env_key:
        if len(env_key) < keys.MIN_ENV_KEY:
            raise GatewayError(f"SWIFTPIPE_API_KEY has {len(env_key)} characters; use at least {keys.MIN_ENV_KEY}, "
                               f"e.g. SWIFTPIPE_API_KEY=$(python3 -c 'import secrets; print(\"sk-\" + "
                               f"secrets.token_urlsafe(32))')")
        found = keys.find(conn, env_key)
        if found is None:  # a new SWIFTPIPE_API_KEY replaces the earlier one
            for old in [k for k in keys.listing(conn) if k["name"] == "env" and not k["revoked"]]:
                keys.revoke(conn, old["id"])
            try:
                keys.create(conn, "env", key=env_key, role="admin")
            except store.StoreError:  # another replica, starting at the same moment, registered it
                if keys.find(conn, env_key) is None:
                    raise
        elif found.revoked is not None or found.expired():
            console.warn("SWIFTPIPE_API_KEY is a revoked or expired key of this database: requests with it get 401")
        return None
    if not keys.active(conn):
        _, key = keys.create(conn, "default", role="admin")
        path = key_file(db)
        path.unlink(missing_ok=True)
        store.private_file(path)
        path.write_text(key + "\n", encoding="utf-8")
        return path
    return None


def serve(targets: list[str], *, upstreams: list[str], recipe: Optional[str], names: list[str], base: bool,
          host: str, port: int, db: str, weights: list[str], ssl_certfile: Optional[str], ssl_keyfile: Optional[str],
          keep_days: Optional[float], upstream_timeout: float, retries: int, log_content: str = "full",
          max_connections: int = 1000, accept_threshold: Optional[float] = None,
          audit_share: float = feedback.AUDIT_SHARE, workers: int = 1,
          header_timeout: float = connections.Limits.header_timeout_s,
          body_timeout: float = connections.Limits.body_idle_s) -> None:
    place = store.target(db)
    if place.path is not None:
        place = store.target(place.path.resolve())
    db_path = place.path  # None: PostgreSQL
    state_dir = db_path.parent if db_path is not None else Path(store.DEFAULT_DB).parent.resolve()
    if workers < 1:
        raise GatewayError(f"--workers must be at least 1 (got {workers})")
    planned = plan_versions(targets, upstreams, recipe=recipe, names=names, base=base, log_dir=state_dir,
                            accept_threshold=accept_threshold)
    given_weights = rollout.parse_weights(weights, what="--weights") if weights else None
    if given_weights:
        rollout.apply({p.name: 0.0 for p in planned}, given_weights)  # unknown names, sums: fail before starting
    for path, what in ((ssl_certfile, "--ssl-certfile"), (ssl_keyfile, "--ssl-keyfile")):
        if path and not Path(path).is_file():
            raise GatewayError(f"{what} {path}: no such file")
    if bool(ssl_certfile) != bool(ssl_keyfile):
        raise GatewayError("HTTPS needs both --ssl-certfile and --ssl-keyfile")
    if port_in_use(host, port):
        raise GatewayError(f"port {port} on {host} is already in use; pass another --port")
    if db_path is not None and db_path.is_file() and store.readable_by_others(db_path):
        console.warn(f"{db_path} can be read by other users of this machine (mode "
                     f"{oct(db_path.stat().st_mode & 0o777)}); it holds the logged texts: chmod 600 it (and its "
                     f"-wal and -shm files)")
    if host not in LOOPBACK:
        console.warn(f"the gateway binds {host}: it is reachable from other machines. Every /v1 call needs a key, "
                     f"but keys and texts cross the network in clear unless you use --ssl-certfile/--ssl-keyfile "
                     f"or a TLS reverse proxy (README 'Deploying'); /health and /metrics need a key from there")
    conn = store.connect(place)
    new_weights = rollout.register(conn, [(p.name, p.source) for p in planned], given_weights,
                                   {p.name: p.task.stored() for p in planned})
    made_key = ensure_key(conn, place)
    if keep_days is not None:
        store.prune(conn, keep_days)
    conn.close()

    upstream_key = os.environ.get("SWIFTPIPE_UPSTREAM_API_KEY", "EMPTY")
    stopped_by = "shutdown"
    console.resume_hint("the gateway and its vLLM servers were stopped; start them again with the same "
                        "`swiftpipe serve` command")
    with contextlib.ExitStack() as stack:
        servers: dict[str, VllmServer] = {}
        for p in planned:
            if p.target is not None:
                assert p.log is not None
                p.log.parent.mkdir(parents=True, exist_ok=True)
                settings = (p.recipe.serve if p.recipe else ServeSection()).model_copy(
                    update={"host": "127.0.0.1", "port": None})  # vLLM: loopback, behind the gateway
                server = VllmServer(p.target, p.log, settings=settings, api_key=new_api_key())
                console.say(f"starting vLLM for '{p.name}' ({p.target.model_dir}; log: {p.log}) ...")
                stack.callback(server.stop)
                servers[p.name] = server.launch()
        import uvicorn  # after the launch: vLLM loads while these import

        from swiftpipe.gateway.app import create_app
        from swiftpipe.gateway.state import Gateway

        for server in servers.values():
            server.wait_ready()
        versions = []
        for p in planned:
            if p.name in servers:
                s = servers[p.name]
                versions.append(version_of(p, base_url=s.base_url, api_key=s.api_key, model=p.name))
            else:
                assert p.url is not None
                versions.append(version_of(p, base_url=p.url, api_key=upstream_key, model=None))
        open_files = connections.raise_open_file_limit(max_connections + 256)
        limits = connections.Limits(max_connections=max(16, min(max_connections, open_files - 128)),
                                    header_timeout_s=header_timeout, body_idle_s=body_timeout)

        def gateway_config():  # one per process: its own database connections and log writer
            gw = Gateway(versions, place, upstreams=UpstreamClient(timeout=upstream_timeout, retries=retries),
                         keep_days=keep_days, content=log_content, audit_share=audit_share,
                         shared_limits=True if workers > 1 else None)

            def refused(reason: str, limit: object) -> None:
                gw.metrics.refused_connections.labels(reason).inc()
                gw.say_once_a_minute(reason, "refused: " + connections.REASONS[reason].format(limit=limit))

            app = create_app(gw, body_idle_s=limits.body_idle_s)
            return uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                  ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile, timeout_graceful_shutdown=10,
                                  lifespan="on", server_header=False,
                                  http=connections.protocol_class(limits, refused),
                                  timeout_keep_alive=int(limits.keep_alive_s))
        scheme = "https" if ssl_certfile else "http"
        shown_host = f"[{host}]" if ":" in host else host

        def announce() -> None:  # once the port is bound: `serving` means requests are answered now
            console.say(f"serving {len(versions)} version(s) at {scheme}://{shown_host}:{port}/v1 "
                        f"({rollout.describe(new_weights)}); request log: {place}")
            for p in planned:
                t = p.task.accept_threshold
                console.say(f"  version '{p.name}': " + (f"answers with row confidence >= {t:g} need no review"
                            if t is not None else "no accept threshold (every answer is a review candidate)"))
            if made_key:
                console.say(f"admin key generated, in {made_key} (readable by you only); create client keys with "
                            f"`swiftpipe keys create --db {db} --name NAME`")
                if sys.stdout.isatty():
                    console.say(f"  the key: {made_key.read_text(encoding='utf-8').strip()}")
            console.say("Ctrl-C stops the gateway and its vLLM servers.")

        if workers > 1:
            from swiftpipe.gateway import workers as pool

            def serve_one(sock, ready: Callable[[], None]) -> None:
                _Server(gateway_config(), ready).run(sockets=[sock])

            stopped = pool.run(pool.bind(host, port, workers), serve_one, announce)
            if stopped is None:
                raise GatewayError(f"the gateway workers did not start on {host}:{port}; see the messages above")
            stopped_by = stopped
            for sig in (signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the clean-up short
                signal.signal(sig, signal.SIG_IGN)
        else:
            gateway = _Server(gateway_config(), announce)
            hung_up = []

            def on_hangup(signum, frame) -> None:  # a closed terminal: stop like SIGTERM, say SIGHUP
                hung_up.append(True)
                procs.drop_hung_up_terminal()
                gateway.handle_exit(signal.SIGTERM, frame)

            previous = signal.signal(signal.SIGHUP, on_hangup)
            try:
                gateway.run()
            except KeyboardInterrupt as exc:  # uvicorn re-raises the signal it stopped on
                if not gateway.started:
                    raise
                stopped_by = "SIGHUP" if hung_up else (procs.interrupt_signame(exc) or "Ctrl-C")
                for sig in (signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the clean-up short
                    signal.signal(sig, signal.SIG_IGN)
            else:
                signal.signal(signal.SIGHUP, previous)
            if not gateway.started:
                raise GatewayError(f"the gateway did not start on {host}:{port}; see the messages above")
    # Stopping a service is its normal end: exit 0 once everything is down.
    console.say(f"stopped ({stopped_by}): the gateway and its vLLM servers are down")


GC_YOUNG = 20_000  # allocations between two collections of the youngest generation (Python's default: 700)


def settle_heap() -> None:
    """Once the gateway serves: what it imported and built so far leaves the garbage collector's
    sight (`gc.freeze`, as vLLM's engine does after its start-up), and the youngest generation is
    collected every GC_YOUNG allocations. Measured on the gateway under load (2-core VM): Python's
    defaults spent ~0.2 ms of CPU a request in collections, full ones rescanning the ~450k start-up
    objects and young ones the objects of the requests in flight; each request's own cycles are
    still collected within GC_YOUNG allocations, so memory stays flat."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, 10, 10)


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, calling `on_started` once its sockets listen."""

        def __init__(self, config, on_started: Callable[[], None]):
            super().__init__(config)
            self.on_started = on_started

        async def startup(self, sockets=None) -> None:
            await super().startup(sockets=sockets)
            if self.started:
                settle_heap()
                self.on_started()

    return Server


def _Server(config, on_started: Callable[[], None]):
    return _server_class()(config, on_started)
