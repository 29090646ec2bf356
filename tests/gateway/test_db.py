"""`--db` as a path or a URL, the dialect shim, the shared rate windows, `db upgrade` and `db copy`."""

import json
import threading
import time
from pathlib import Path

import pytest

from swiftpipe.gateway import db, feedback, keys, rollout, store
from swiftpipe.recipe.load import load_recipe
from swiftpipe.recipe.task import task_of
from tests.helpers import DEMO_RECIPE, REPO, run_cli


def test_a_database_is_a_path_or_a_url_and_nothing_else():
    assert db.parse("serve/serve.sqlite") == db.Target("sqlite", path=Path("serve/serve.sqlite"))
    assert db.parse("sqlite:///rel/g.sqlite").path == Path("rel/g.sqlite")
    assert db.parse("sqlite:////abs/g.sqlite").path == Path("/abs/g.sqlite")
    pg = db.parse("postgres://ann:s3cret@db.example:5433/gateway")
    assert pg.kind == "postgresql" and pg.url == "postgresql://ann:s3cret@db.example:5433/gateway"
    assert "s3cret" not in pg.shown() and pg.shown() == "postgresql://ann:***@db.example:5433/gateway"
    assert pg.name == "gateway"
    for bad, says in (("mysql://u@h/db", "unsupported database scheme 'mysql://'"),
                      ("postgresql:/u@h/db", "needs '//' after the scheme"),
                      ("postgresql://u@h", "name the database"), ("sqlite://", "sqlite:///relative/path")):
        with pytest.raises(db.DatabaseURLError, match=says):
            db.parse(bad)


def test_the_shim_speaks_postgresql():
    assert db.pg_sql("SELECT a FROM t WHERE b = ? AND c LIKE :flag || ':%' AND d = '50%?'", True) == \
        "SELECT a FROM t WHERE b = %s AND c LIKE %(flag)s || ':%%' AND d = '50%%?'"
    assert db.pg_sql("SELECT x::jsonb FROM t", False) == "SELECT x::jsonb FROM t"
    assert db.pg_sql("BEGIN IMMEDIATE", False) == "BEGIN"
    assert db.pg_sql("CREATE TABLE t (ts REAL, n INTEGER, PRIMARY KEY (n)) WITHOUT ROWID", False) == \
        "CREATE TABLE t (ts DOUBLE PRECISION, n BIGINT, PRIMARY KEY (n))"
    assert db.pg_sql("SELECT 1 FROM f CROSS JOIN r ON r.id = f.id", False) == "SELECT 1 FROM f JOIN r ON r.id = f.id"


def test_a_url_never_becomes_a_folder(tmp_path):
    for url in ("mysql://ann@db/gateway", "postgresql:/ann@db/gateway"):
        out = run_cli("keys", "list", "--db", url, cwd=tmp_path)
        assert out.returncode != 0 and "Traceback" not in out.stderr
        assert "sqlite:///PATH" in out.stderr + out.stdout and "postgresql://USER@HOST" in out.stderr + out.stdout
    assert list(tmp_path.iterdir()) == []  # no folder named "mysql:" or "postgresql:"
    down = run_cli("keys", "list", "--db", "postgresql://nobody@127.0.0.1:1/none", cwd=tmp_path)
    assert down.returncode != 0 and "cannot open the PostgreSQL database" in down.stderr + down.stdout
    assert "Traceback" not in down.stderr


def test_rate_windows_are_shared_by_every_connection(gateway_db):
    """Two gateways (connections) hammering one key of --rpm 30: 30 get through in the minute."""
    setup = store.connect(gateway_db)
    key = keys.create(setup, "limited", rpm=30)[0]
    setup.close()
    admitted: list[int] = []
    waits: list[int] = []

    def hammer() -> None:
        conn = store.connect(gateway_db)
        limiter = keys.SharedRateLimiter(conn)
        for _ in range(40):
            wait = limiter.retry_after(key)
            (admitted.append(1) if wait is None else waits.append(wait))
        conn.close()

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) == 30 and len(waits) == 50 and all(1 <= w <= 60 for w in waits)
    conn = store.connect(gateway_db)  # a minute later the window has room again
    assert keys.SharedRateLimiter(conn).retry_after(key, now=time.time() + 61) is None
    conn.close()


def _log_with_reviews(path: Path) -> None:
    """A SQLite log as a gateway leaves it: versions and tasks, keys, answered and refused requests, reviews."""
    task = task_of(load_recipe(DEMO_RECIPE).recipe, REPO)
    conn = store.connect(path)
    rollout.register(conn, [("v1", "scripted:v1"), ("v2", "scripted:v2")], {"v1": 50, "v2": 50},
                     {"v1": task.stored(), "v2": task.stored()})
    reviewer = keys.create(conn, "ann", role="reviewer")[0]
    client = keys.create(conn, "client", rpm=60)[0]
    now = time.time()
    rows = []
    for i in range(40):
        fields = {"name": f"张{i % 5}", "phone": "13800000000", "province": "浙江省", "city": "杭州市",
                  "district": "西湖区", "specific_location": f"文三路{i}号"}
        rows.append(store.request_row(
            id=f"req_{i:03d}", ts=now - 86400 * (i % 3) - i, version=f"v{1 + i % 2}", key_id=client.id,
            endpoint="extract", input=f"张{i % 5} 13800000000 浙江省杭州市西湖区文三路{i}号", output=json.dumps(fields),
            fields=fields, valid=i % 7 != 0, flags=["invalid_json"] if i % 7 == 0 else (["empty:x"] if i % 5 == 0 else []),
            latency_ms=10.0 + i, status=200 if i % 9 else 502, content="full", confidence={"name": 0.5 + i / 100},
            row_confidence=0.5 + i / 100, audit=i % 4 == 0, prompt_tokens=30 + i, completion_tokens=20))
    with conn:
        conn.execute("BEGIN IMMEDIATE")
        store.insert_requests(conn, rows)
    for i in range(0, 40, 3):
        if i % 9:
            fields = None if i % 2 else {"name": "李四", "phone": "13800000000", "province": "浙江省", "city": "杭州市",
                                         "district": "西湖区", "specific_location": f"文三路{i}号"}
            feedback.save(conn, request_id=f"req_{i:03d}", fields=fields, verdict=None if fields else "correct",
                          task=task, key_id=reviewer.id)
    conn.close()


def test_db_copy_moves_a_log_with_reviews_and_every_view_agrees(tmp_path, pg_url, capsys):
    source = tmp_path / "serve.sqlite"
    _log_with_reviews(source)
    url = f"sqlite:///{source.name}"  # relative to cwd, as a user would write it
    copied = run_cli("db", "copy", "--from", url, "--to", pg_url, cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    assert "requests 40" in copied.stdout and "feedback 9" in copied.stdout and "keys 2" in copied.stdout
    again = run_cli("db", "copy", "--from", url, "--to", pg_url, cwd=tmp_path)
    assert again.returncode != 0 and "already holds 40 requests" in again.stderr + again.stdout

    from swiftpipe.data.corrections import corrections_command
    from swiftpipe.gateway.request_log import show

    # What `requests` and `data corrections` print (and write), called as the CLI calls them.
    views = {"csv": lambda db, tag: show(db, flagged=False, version=None, since=None, fmt="csv", limit=None),
             "flagged": lambda db, tag: show(db, flagged=True, version=None, since=None, fmt="jsonl", limit=None),
             "compare": lambda db, tag: show(db, flagged=False, version=None, since=None, fmt="jsonl", limit=None,
                                             compare=True),
             "compare-1d": lambda db, tag: show(db, flagged=False, version=None, since="1d", fmt="table", limit=None,
                                                compare=True, compare_versions=["v1"]),
             "corrections": lambda db, tag: corrections_command(
                 db, str(tmp_path / f"{tag}.jsonl"), version=None, since=None, holdout=0.25,
                 holdout_out=str(tmp_path / f"{tag}-held.jsonl"), seed=0)}
    for name, view in views.items():
        outputs = []
        for db_, tag in ((str(source), "sqlite"), (pg_url, "pg")):
            view(db_, tag)
            printed = capsys.readouterr().out.replace(str(tmp_path / f"{tag}-held.jsonl"), "H")
            files = [(tmp_path / f).read_text() for f in (f"{tag}.jsonl", f"{tag}-held.jsonl") if (tmp_path / f).exists()]
            outputs.append((printed.replace(str(tmp_path / f"{tag}.jsonl"), "O"), files))
        assert outputs[0] == outputs[1], name
        assert outputs[0][0].strip(), name
    corrections = (tmp_path / "pg.jsonl").read_text().splitlines()
    assert len(corrections) == 7 and "李四" in "".join(corrections)


def test_db_upgrade_says_what_it_applied(tmp_path, pg_url):
    import sqlite3

    old = tmp_path / "old.sqlite"
    conn = sqlite3.connect(old)
    for statement in store.MIGRATIONS[0][2]:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL, applied REAL NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1, 0)")
    conn.commit()
    conn.close()
    out = run_cli("db", "upgrade", "--db", str(old), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"schema version 1 -> {store.SCHEMA_VERSION}" in out.stdout and "applied 5: per-key rate windows" in out.stdout
    fresh = run_cli("db", "upgrade", "--db", pg_url, cwd=tmp_path)
    assert fresh.returncode == 0 and f"schema version {store.SCHEMA_VERSION}, up to date" in fresh.stdout


@pytest.mark.anyio
@pytest.mark.sqlite_only  # not the matrix: a PostgreSQL server of its own, stopped and started again
async def test_a_postgresql_outage_fails_fast_loses_nothing_answered_and_recovers(tmp_path):
    import asyncio

    from tests.gateway.conftest import in_process
    from tests.helpers import skip_or_fail
    from tests.postgres import Server

    try:
        own = Server()
    except Exception as exc:  # noqa: BLE001
        skip_or_fail(f"no PostgreSQL server for the tests: {exc}")
    text = {"text": "张三 13800000000 浙江省杭州市西湖区文三路100号"}
    try:
        async with in_process(tmp_path, db=own.new_database(), log_wait_s=1.0) as gw:
            first = await gw.post("/v1/extract", text)
            assert first.status_code == 200
            own.halt()
            started = time.monotonic()
            down = await gw.post("/v1/extract", text)
            assert down.status_code == 503 and down.headers["Retry-After"] == "2"
            assert time.monotonic() - started < 2.5
            refused = [await gw.post("/v1/extract", text) for _ in range(3)]
            assert {r.status_code for r in refused} == {503}
            own.start()
            for _ in range(100):  # back within a few seconds, no restart
                back = await gw.post("/v1/extract", text)
                if back.status_code == 200:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the gateway did not recover once PostgreSQL was back")
            rows = gw.rows()
            assert first.json()["id"] in rows and back.json()["id"] in rows
            assert down.json()["error"]["id"] not in rows  # a 503 was never answered, and is not logged as if
    finally:
        own.stop()


def test_many_writers_at_once_neither_deadlock_nor_miscount(gateway_db):
    """Replicas' log writers committing at once: every batch goes in, the rollups count every row."""
    import random

    store.connect(gateway_db).close()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        conn = store.connect(gateway_db, busy_ms=10_000)
        try:
            for b in range(25):
                rows = [store.request_row(id=f"req_{seed}_{b}_{i}", ts=time.time() - rng.choice([0, 86400, 2 * 86400]),
                                          version=rng.choice(["v1", "v2", "v3"]), endpoint="extract",
                                          flags=rng.sample(["empty:a", "empty:b", "invalid_json", "not_in_text:c"],
                                                           rng.randint(0, 3)),
                                          latency_ms=rng.uniform(1, 500), status=200) for i in range(rng.randint(1, 20))]
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    store.insert_requests(conn, rows)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    conn = store.connect(gateway_db)
    logged = conn.execute("SELECT count(*) FROM requests").fetchone()[0]
    counted = conn.execute("SELECT sum(requests) FROM request_days").fetchone()[0]
    flags = conn.execute("SELECT sum(n) FROM request_day_flags").fetchone()[0]
    rows = conn.execute("SELECT flags FROM requests").fetchall()
    conn.close()
    assert logged == counted > 0 and flags == sum(len(set(json.loads(r[0]))) for r in rows)
