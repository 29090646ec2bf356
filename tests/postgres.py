"""A throwaway PostgreSQL server for the test session: Debian's `postgresql` binaries (installed by
scripts/install.sh), `initdb` into a temporary directory, run as the unprivileged `postgres` user
when the tests run as root (PostgreSQL refuses root), on a loopback port, stopped at the end.

Each test gets a fresh database in it: `CREATE DATABASE ... TEMPLATE` of one already migrated to the
gateway's schema (a file copy: a few milliseconds), so no test sees another's rows."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from tests.helpers import free_port

TEMPLATE = "swiftpipe_template"
SERVER_SETTINGS = ("-c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=300 "
                   "-c shared_buffers=64MB")


def find_bin(name: str) -> Optional[str]:
    """A PostgreSQL server binary: Debian keeps them off PATH, in /usr/lib/postgresql/<major>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return found[-1] if found else shutil.which(name)


class Server:
    def __init__(self) -> None:
        initdb, self.pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            raise RuntimeError("PostgreSQL's server binaries (initdb, pg_ctl) are not installed; "
                               "`bash scripts/install.sh` installs Debian's postgresql package")
        self.user: Optional[str] = None
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and there is no `postgres` user to run PostgreSQL as "
                                   "(useradd -r -m postgres)") from None
            self.user = "postgres"
        self.dir = Path(tempfile.mkdtemp(prefix="swiftpipe-pg-"))
        if self.user:
            shutil.chown(self.dir, self.user)
        self.data = self.dir / "data"
        self.port = free_port()
        self._names = itertools.count()
        self._run([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        self.start()
        self.admin_url = self.url("postgres")
        self._make_template()

    def start(self) -> None:
        self._run([self.pg_ctl, "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60",
                   "-o", f"-p {self.port} -k {self.dir} {SERVER_SETTINGS}", "start"])

    def halt(self) -> None:
        """Stop the server at once (as a crash would), keeping its data: `start()` brings it back."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"])

    def _run(self, argv: list[str]) -> None:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=120, user=self.user, cwd=self.dir)
        if out.returncode != 0:
            log = self.dir / "server.log"
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({out.returncode}): {out.stderr[-1500:]}"
                               + (log.read_text()[-1500:] if log.exists() else ""))

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(statement)

    def _make_template(self) -> None:
        from swiftpipe.gateway import store

        self.sql(f"CREATE DATABASE {TEMPLATE}")
        store.connect(self.url(TEMPLATE)).close()  # migrated once; every test's database is a copy

    def new_database(self, prefix: str = "t") -> str:
        """A fresh database with the gateway's schema; its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        for attempt in range(20):  # the template is briefly in use while a copy starts elsewhere
            try:
                self.sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
                break
            except Exception as exc:  # noqa: BLE001 - psycopg.errors.ObjectInUse
                if "being accessed" not in str(exc) or attempt == 19:
                    raise
                time.sleep(0.1)
        return self.url(name)

    def stop(self) -> None:
        subprocess.run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"], capture_output=True,
                       timeout=60, user=self.user, cwd=self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)
