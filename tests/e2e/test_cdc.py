"""Change data capture from PostgreSQL (`mode: cdc`) into Iceberg, on a private PostgreSQL with
`wal_level=logical` started by this module (the shared instance has `replica`).

1. A workload of inserts, updates (some leaving a large TOASTed column unchanged, some of the
   primary key) and deletes
   on three tables runs for 60 s (DATIVO_TEST_CDC_SECONDS) while three CDC jobs follow the log; the jobs are SIGKILLed at random
   moments (during the snapshot and while streaming) and their replication connections are
   terminated from the server. After the workload stops and `--once` runs catch up, every
   table in the lake equals its source, column by column, for pyiceberg and DuckDB; no key
   appears twice; each slot's confirmed position is not ahead of the LSN in the lake's state.
2. A changelog (`mode: append`): each change exactly once, in source order per key, with
   kills in between.
3. SIGTERM commits what was read and exits 0.
4. Mistakes: wal_level not logical, a table without a key, a slot that exists without state.
"""
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import psycopg2
import pyarrow.compute as pc
import pytest

from conftest import PG_URL, free_port, write_job
from lakecheck import Lake, kill_followers, start_follower, assert_pg_row, dativo, pg_canon, runs_json

# How long the workload of the mirror test runs (the acceptance: 60 s).
WORKLOAD_SECONDS = float(os.environ.get("DATIVO_TEST_CDC_SECONDS", "60"))

COLS = [("id", "int"), ("name", "text"), ("amount", "dec"), ("day", "date"), ("ts", "ts"),
        ("flag", "bool"), ("big", "text")]


def pg_bin():
    found = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    assert found, "PostgreSQL server binaries (initdb) are missing"
    return found[-1].parent


@pytest.fixture(scope="module")
def logical_pg():
    """A private PostgreSQL with wal_level=logical: (url, dsn). Runs as user postgres."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="dativo-pgcdc-"))
    port = free_port()
    b = pg_bin()
    as_pg = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    if as_pg:
        shutil.chown(d, "postgres")
    subprocess.run(as_pg + [str(b / "initdb"), "-D", str(d / "data"), "-U", "postgres", "--auth=trust"],
                   check=True, capture_output=True)
    opts = (f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c wal_level=logical "
            "-c max_replication_slots=20 -c max_wal_senders=20 -c wal_sender_timeout=10s")
    subprocess.run(as_pg + [str(b / "pg_ctl"), "-D", str(d / "data"), "-l", str(d / "log"), "-o", opts,
                            "-w", "start"], check=True, capture_output=True)
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    c = psycopg2.connect(dsn)
    c.autocommit = True
    c.cursor().execute("CREATE DATABASE cdc")
    c.close()
    yield f"postgres://postgres@127.0.0.1:{port}/cdc", f"host=127.0.0.1 port={port} user=postgres dbname=cdc"
    subprocess.run(as_pg + [str(b / "pg_ctl"), "-D", str(d / "data"), "-m", "immediate", "stop"],
                   capture_output=True)
    shutil.rmtree(d, ignore_errors=True)


def connect(dsn):
    c = psycopg2.connect(dsn)
    c.autocommit = True
    return c


def q(c, sql, *args):
    with c.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchall() if cur.description else None


def create(c, name, rows):
    q(c, f"""CREATE TABLE {name} (id bigint PRIMARY KEY, name text, amount numeric(12,2), day date,
             ts timestamptz, flag boolean, big text)""")
    q(c, f"ALTER TABLE {name} REPLICA IDENTITY FULL")
    q(c, f"""INSERT INTO {name} SELECT i, 'n' || i, (i % 1000) / 4.0, date '2024-01-01' + i % 300,
             timestamptz '2024-01-01 00:00+00' + i * interval '1 minute', i % 2 = 0,
             CASE WHEN i % 50 = 0 THEN repeat(md5(i::text), 300) END
             FROM generate_series(1, {rows}) i""")


def job(path, name, url, table, extra="", target_mode="merge"):
    return write_job(path / f"{name}.yaml", f"""name: {name}
source:
  reader: postgres
  config:
    url: {url}
    table: public.{table}
    mode: cdc
    partitions: 2
    batch_size: 2000
{extra}
target:
  writer: iceberg
  config:
    table: lake.{table}
    mode: {target_mode}
checkpoint: {{rows: 3000, seconds: 1}}
retry: {{attempts: 6, backoff: 500ms}}
""")


def workload(dsn, tables, stop, seed):
    """Random single-row and multi-row changes until `stop` is set; ids grow past the initial
    rows for inserts."""
    rnd = random.Random(seed)
    c = connect(dsn)
    nxt = {t: 100_000 for t in tables}
    while not stop.is_set():
        t = rnd.choice(tables)
        k = rnd.random()
        try:
            if k < 0.35:
                n = rnd.randint(1, 30)
                q(c, f"""INSERT INTO {t} SELECT i, 'ins' || i, 1.25, date '2025-01-01', now(), true,
                         CASE WHEN i % 3 = 0 THEN repeat('y', 5000) END
                         FROM generate_series({nxt[t]}, {nxt[t] + n - 1}) i""")
                nxt[t] += n
            elif k < 0.6:
                # Leaves `big` (TOASTed where set) unchanged.
                lo = rnd.randint(1, 5000)
                q(c, f"UPDATE {t} SET amount = amount + 1, name = name || '+' WHERE id BETWEEN {lo} AND {lo + 20}")
            elif k < 0.7:
                lo = rnd.randint(1, 5000)
                q(c, f"UPDATE {t} SET big = repeat('z', 3000 + {lo}) WHERE id = {lo}")
            elif k < 0.74:
                # The key changes: the old row goes, the new one lands.
                lo = rnd.randint(1, 5000)
                q(c, f"UPDATE {t} SET id = id + 1000000 WHERE id = {lo}")
            elif k < 0.85:
                lo = rnd.randint(1, 5000)
                q(c, f"DELETE FROM {t} WHERE id BETWEEN {lo} AND {lo + 5}")
            else:
                # One transaction of many changes (batches cut inside it).
                lo = rnd.randint(1, 4000)
                q(c, f"BEGIN; UPDATE {t} SET flag = NOT flag WHERE id BETWEEN {lo} AND {lo + 3000}; "
                     f"DELETE FROM {t} WHERE id = {lo + 7}; COMMIT")
        except psycopg2.Error:
            pass
        time.sleep(rnd.uniform(0, 0.01))
    c.close()


def lake_lsn(lake, table):
    snap = lake.load(f"lake.{table}").current_snapshot()
    state = json.loads(snap.summary["dativo.state"])
    return state["cdc"]["lsn"]


def lsn_int(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def check_mirror(c, lake, table):
    """The lake's table equals the source's, for pyiceberg and DuckDB (the mirror's own
    columns, each row's last change position and time, set aside)."""
    want = pg_canon(c, COLS, f"FROM {table}")
    lake.assert_rows(f"lake.{table}", COLS, want, table, ignore=("_dativo_lsn", "_dativo_commit_time"))



def test_mirror_three_tables_through_kills_and_dropped_connections(tmp_path, logical_pg):
    url, dsn = logical_pg
    c = connect(dsn)
    tables = ["orders", "customers", "events"]
    for i, t in enumerate(tables):
        create(c, t, [200_000, 30_000, 40_000][i])
    jobs = [job(tmp_path, f"cdc_{t}", url, t) for t in tables]
    stop = threading.Event()
    w = threading.Thread(target=workload, args=(dsn, tables, stop, 7))
    w.start()
    try:
        procs = kill_followers(tmp_path, jobs, WORKLOAD_SECONDS, lambda: q(c, "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots WHERE active")[0][0])
    finally:
        stop.set()
        w.join()
    # Followers that lost their connection fail (exit non-zero, retried by `serve`); the
    # rest are stopped with SIGTERM, which commits and exits 0.
    for j, p in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, (tmp_path / f"{j.stem}.log").read_text()[-3000:]
    lake = Lake(tmp_path)
    for t, j in zip(tables, jobs):
        dativo(tmp_path, "run", j, "--once", "--no-progress")
        check_mirror(c, lake, t)
        slot = q(c, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                 f"dativo_cdc_{t}")[0][0]
        assert lsn_int(slot) <= lsn_int(lake_lsn(lake, t)), (t, slot, lake_lsn(lake, t))
    # A run with nothing new moves each slot to the lake's position.
    for t, j in zip(tables, jobs):
        dativo(tmp_path, "run", j, "--once", "--no-progress")
        slot = q(c, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                 f"dativo_cdc_{t}")[0][0]
        assert slot == lake_lsn(lake, t), (t, slot, lake_lsn(lake, t))


def test_changelog_holds_each_change_once_in_order(tmp_path, logical_pg):
    url, dsn = logical_pg
    c = connect(dsn)
    create(c, "log_src", 2_000)
    j = job(tmp_path, "cdc_log", url, "log_src", target_mode="append")
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    # A known sequence: each key's versions are numbered in `amount`.
    for rnd_round in range(6):
        q(c, f"UPDATE log_src SET amount = {rnd_round + 1} WHERE id % 7 = {rnd_round}")
        q(c, f"DELETE FROM log_src WHERE id % 97 = {rnd_round}")
        q(c, f"INSERT INTO log_src SELECT i, 'new', 0, NULL, NULL, NULL, NULL FROM generate_series({5000 + rnd_round * 10}, {5009 + rnd_round * 10}) i")
        # Kill a run mid-way; the next one resumes.
        p = start_follower(tmp_path, j)
        time.sleep(random.uniform(0.2, 0.8))
        p.send_signal(signal.SIGKILL)
        p.wait()
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    t = Lake(tmp_path).load("lake.log_src").scan().to_arrow()
    changes = t.filter(pc.not_equal(t["_dativo_op"], "R"))
    # Expected: per round, one U per updated key, one D per deleted key, one I per new key.
    want = 0
    alive = set(range(1, 2001))
    for r in range(6):
        upd = {k for k in alive if k % 7 == r}
        dele = {k for k in alive if k % 97 == r}
        want += len(upd) + len(dele) + 10
        alive -= dele
        alive |= set(range(5000 + r * 10, 5010 + r * 10))
    assert changes.num_rows == want, (changes.num_rows, want)
    keyed = {}
    for op, k, lsn in zip(changes["_dativo_op"].to_pylist(), changes["id"].to_pylist(),
                          changes["_dativo_lsn"].to_pylist()):
        keyed.setdefault(k, []).append((lsn, op))
    dup = [(k, v) for k, v in keyed.items() if len(set(v)) != len(v)]
    assert not dup, dup[:5]
    snapshot_rows = t.num_rows - changes.num_rows
    assert snapshot_rows == 2_000


def test_truncate_empties_the_mirror_and_is_marked_in_the_changelog(tmp_path, logical_pg):
    url, dsn = logical_pg
    c = connect(dsn)
    create(c, "trunc_src", 3_000)
    mirror = job(tmp_path, "cdc_trunc", url, "trunc_src")
    changelog = write_job(tmp_path / "cdc_trunc_log.yaml",
                          mirror.read_text().replace("name: cdc_trunc", "name: cdc_trunc_log")
                          .replace("table: lake.trunc_src", "table: lake.trunc_log")
                          .replace("mode: merge", "mode: append"))
    lake = Lake(tmp_path)
    for j in (mirror, changelog):
        dativo(tmp_path, "run", j, "--once", "--no-progress")
    # Changes before a truncation in its own transaction, rows after it in the same one, and
    # a second truncation in a run of its own.
    q(c, "UPDATE trunc_src SET name = 'before' WHERE id <= 10")
    q(c, "BEGIN; DELETE FROM trunc_src WHERE id = 11; TRUNCATE trunc_src; "
         "INSERT INTO trunc_src SELECT i, 'after', 1, NULL, NULL, true, NULL FROM generate_series(1, 50) i; "
         "UPDATE trunc_src SET name = 'after2' WHERE id <= 5; COMMIT")
    q(c, "INSERT INTO trunc_src SELECT i, 'later', 2, NULL, NULL, false, NULL FROM generate_series(51, 60) i")
    for j in (mirror, changelog):
        dativo(tmp_path, "run", j, "--once", "--no-progress")
    check_mirror(c, lake, "trunc_src")
    assert q(c, "SELECT count(*) FROM trunc_src")[0][0] == 60
    snap = lake.load("lake.trunc_src").current_snapshot()
    assert snap.summary["dativo.merge.truncates"] == "1", snap.summary
    q(c, "TRUNCATE trunc_src")
    dativo(tmp_path, "run", mirror, "--once", "--no-progress")
    check_mirror(c, lake, "trunc_src")
    assert lake.load("lake.trunc_src").scan().to_arrow().num_rows == 0
    q(c, "INSERT INTO trunc_src VALUES (7, 'again', 3, NULL, NULL, NULL, NULL)")
    dativo(tmp_path, "run", mirror, "--once", "--no-progress")
    check_mirror(c, lake, "trunc_src")
    # The changelog keeps one `T` row (table columns NULL) between the changes before and
    # after it, in log order.
    t = lake.load("lake.trunc_log").scan().to_arrow().sort_by([("_dativo_lsn", "ascending")])
    ops = t["_dativo_op"].to_pylist()
    assert ops.count("T") == 1, ops.count("T")
    trunc = t.filter(pc.equal(t["_dativo_op"], "T"))
    assert trunc["id"].to_pylist() == [None] and trunc["name"].to_pylist() == [None]
    lsn = trunc["_dativo_lsn"][0].as_py()
    same = t.filter(pc.equal(t["_dativo_lsn"], lsn))
    # The truncating transaction: 1 delete, the truncation, 50 inserts, 5 updates.
    assert sorted(same["_dativo_op"].to_pylist()) == sorted(["D", "T"] + ["I"] * 50 + ["U"] * 5)
    assert t.filter(pc.and_(pc.less(t["_dativo_lsn"], lsn), pc.equal(t["_dativo_op"], "U"))).num_rows == 10


def test_sigterm_commits_and_exits_zero(tmp_path, logical_pg):
    url, dsn = logical_pg
    c = connect(dsn)
    create(c, "term_src", 1_000)
    j = job(tmp_path, "cdc_term", url, "term_src")
    p = start_follower(tmp_path, j)
    time.sleep(3)
    q(c, "UPDATE term_src SET name = 'after' WHERE id <= 100")
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    assert p.wait(60) == 0, (tmp_path / "cdc_term.log").read_text()[-3000:]
    check_mirror(c, Lake(tmp_path), "term_src")


def test_mistakes_are_named(tmp_path, logical_pg):
    url, dsn = logical_pg
    c = connect(dsn)
    # The shared PostgreSQL has wal_level=replica.
    shared = connect(PG_URL)
    q(shared, "DROP TABLE IF EXISTS cdc_wal; CREATE TABLE cdc_wal (id int primary key)")
    j = job(tmp_path, "cdc_wal", PG_URL, "cdc_wal")
    p = dativo(tmp_path, "run", j, "--once", "--no-progress", check=2)
    assert "wal_level" in p.stdout + p.stderr and "logical" in p.stdout + p.stderr
    q(shared, "DROP TABLE cdc_wal")
    q(c, "CREATE TABLE nokey (v int, w text)")
    j = job(tmp_path, "cdc_nokey", url, "nokey")
    p = dativo(tmp_path, "run", j, "--once", "--no-progress", check=2)
    assert "primary key" in p.stdout + p.stderr and "REPLICA IDENTITY FULL" in p.stdout + p.stderr
    # A slot of that name exists but the job has no state: refused, the slot is untouched.
    create(c, "taken", 10)
    q(c, "SELECT pg_create_logical_replication_slot('dativo_cdc_taken', 'pgoutput')")
    j = job(tmp_path, "cdc_taken", url, "taken")
    p = dativo(tmp_path, "run", j, "--once", "--no-progress", check=2)
    assert "dativo_cdc_taken" in p.stdout + p.stderr and "pg_drop_replication_slot" in p.stdout + p.stderr
    q(c, "SELECT pg_drop_replication_slot('dativo_cdc_taken')")


def test_an_idle_table_does_not_pin_wal(tmp_path, logical_pg):
    """The job's table is idle while another published table takes writes: heartbeats move the
    committed state, and with it the slot, to the server's WAL position. Bound: the slot's
    confirmed position trails by what the server writes in one heartbeat interval plus a
    status period; its restart_lsn (the WAL kept) by about 15 s more of WAL (PostgreSQL's
    running-transactions interval)."""
    url, dsn = logical_pg
    c = connect(dsn)
    create(c, "idle_src", 100)
    q(c, "CREATE TABLE busy (id bigserial primary key, pad text)")
    q(c, "CREATE PUBLICATION other_pub FOR TABLE busy")
    j = job(tmp_path, "cdc_idle", url, "idle_src", extra="    heartbeat: 2s")
    p = start_follower(tmp_path, j)
    try:
        time.sleep(3)
        start_lsn = q(c, "SELECT pg_current_wal_lsn()::text")[0][0]
        for _ in range(10):
            q(c, "INSERT INTO busy (pad) SELECT repeat('w', 200) FROM generate_series(1, 30000)")
            time.sleep(0.5)
        written = q(c, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", start_lsn)[0][0]
        # Then light traffic: the slot's restart_lsn (what the server keeps on disk) follows
        # the confirmed position at the next running-transactions record, which PostgreSQL
        # logs every 15 s while there is activity, and at each checkpoint. Two checkpoints,
        # each followed by more than a heartbeat, make the test independent of that timer.
        started = time.monotonic()
        checkpoints = [started + 4, started + 11]
        while time.monotonic() < started + 18:
            q(c, "INSERT INTO busy (pad) VALUES ('light')")
            if checkpoints and time.monotonic() >= checkpoints[0]:
                q(c, "CHECKPOINT")
                checkpoints.pop(0)
            time.sleep(0.2)
        retained = q(c, """SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn),
                                  pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)
                           FROM pg_replication_slots WHERE slot_name = 'dativo_cdc_idle'""")[0]
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0, (tmp_path / "cdc_idle.log").read_text()[-3000:]
    print(f"WAL written while idle: {written / 2**20:.1f} MiB; retained by the slot: {retained[0] / 2**20:.2f} MiB from restart_lsn, {retained[1] / 2**20:.2f} MiB from confirmed_flush_lsn")
    assert written > 40 * 2**20, written
    assert retained[0] < 8 * 2**20 and retained[1] < 4 * 2**20, (retained, written)
    # The job measures the same (every 10 s, into its state, for `dativo_cdc_retained_bytes`
    # and `dativo_cdc_behind_bytes`): its last measurement was taken in the light phase.
    st = json.loads(dativo(tmp_path, "state", "show", j).stdout)["state"]["cdc"]
    assert 0 <= st["behind_bytes"] <= st["retained_bytes"] < written / 4, (st, written)
    # The heartbeats' commits keep the lake exact.
    check_mirror(c, Lake(tmp_path), "idle_src")


def test_serve_keeps_a_cdc_job_running(tmp_path, logical_pg):
    """`dativo serve` starts a CDC job without a schedule, starts it again after its
    replication connection is terminated, reports the lag, and stops it cleanly."""
    from test_serve import Serve, wait_until
    url, dsn = logical_pg
    c = connect(dsn)
    create(c, "served", 5_000)
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    j = job(jobs, "cdc_served", url, "served")
    j.write_text(j.read_text().replace("retry: {attempts: 6, backoff: 500ms}", "retry: {attempts: 1}"))
    s = Serve(tmp_path, jobs)
    try:
        lake = Lake(tmp_path)

        def lake_rows():
            try:
                return lake.load("lake.served").scan().to_arrow().num_rows
            except Exception:
                return 0
        wait_until(lambda: lake_rows() == 5_000, 60, "the initial snapshot")
        q(c, "UPDATE served SET name = 'one' WHERE id <= 100")
        q(c, "INSERT INTO served SELECT i, 'two', 1, NULL, NULL, NULL, NULL FROM generate_series(5001, 5100) i")
        wait_until(lambda: lake_rows() == 5_100, 60, "the first changes")
        assert s.metric("dativo_cdc_lag_seconds", "cdc_served") is not None
        # What the slot keeps and how far it trails, measured by the job (bytes, ≥ 0).
        assert s.metric("dativo_cdc_retained_bytes", "cdc_served") >= s.metric("dativo_cdc_behind_bytes", "cdc_served") >= 0
        # The server ends the replication connection: the run fails, serve starts it again.
        wait_until(lambda: q(c, "SELECT count(pg_terminate_backend(active_pid)) FROM pg_replication_slots "
                                "WHERE slot_name = 'dativo_cdc_served' AND active")[0][0] > 0, 30, "an active slot")
        q(c, "DELETE FROM served WHERE id > 5050")
        wait_until(lambda: lake_rows() == 5_050, 60, "changes after the restart")
    finally:
        assert s.stop() == 0
    runs = runs_json(tmp_path, "cdc_served")
    assert len(runs) >= 2 and any(r["status"] == "failed" for r in runs), runs
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    check_mirror(c, Lake(tmp_path), "served")


def test_every_type_streams_as_the_snapshot_reads_it(tmp_path, logical_pg):
    """The types of the snapshot reader's round-trip test: 1,000 rows read by the initial
    snapshot, 1,000 more (and an update of a row of NULLs) from the log, into a Parquet
    changelog; every value equals the source's."""
    import pyarrow.parquet as pq
    url, dsn = logical_pg
    c = connect(dsn)
    q(c, "CREATE TYPE mood AS ENUM ('sad', 'happy')")
    q(c, """CREATE TABLE typed (
        id int8 primary key, b bool, i2 int2, i4 int4, f4 float4, f8 float8,
        n numeric(12,3), nu numeric, t text, vc varchar(10), c char(3), by bytea,
        d date, tm time, ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb,
        ip inet, mac macaddr, m mood, ai int4[], at text[])""")
    fill = """INSERT INTO typed SELECT i, i % 2 = 0, i, i * 10, i / 4.0, i / 8.0, i * 1.125,
        i * 0.5, 'héllo ' || i, 'v' || i, 'ab', decode('00ff', 'hex'),
        date '2026-01-01' + i, time '10:00' + i * interval '1 second',
        timestamp '2026-01-01 00:00:00.123456' + i * interval '1 hour',
        timestamptz '2026-01-01 00:00+00' + i * interval '1 minute',
        make_interval(months => i % 3, days => i % 5, secs => i), md5(i::text)::uuid,
        json_build_object('i', i), jsonb_build_object('k', i), ('10.0.0.' || (i % 250))::inet,
        '08:00:2b:01:02:03', 'happy', ARRAY[i, NULL], ARRAY['a', NULL]
        FROM generate_series({}, {}) i"""
    q(c, fill.format(1, 1000))
    q(c, "INSERT INTO typed (id) VALUES (0)")
    j = write_job(tmp_path / "typed.yaml", f"""name: typed
source:
  reader: postgres
  config: {{url: "{url}", table: public.typed, mode: cdc, batch_size: 300}}
target:
  writer: parquet
  config: {{path: lake, mode: append}}
""")
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    q(c, fill.format(1001, 2000))
    q(c, "UPDATE typed SET t = 'was null' WHERE id = 0")
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    t = pq.ParquetDataset(tmp_path / "lake").read()
    ops = {}
    lake = {}
    for r in t.to_pylist():
        ops[(r["id"], r["_dativo_op"])] = True
        if r["id"] != 0 or r["_dativo_op"] == "U":
            lake[r["id"]] = r  # id 0: its update (after the snapshot's row of NULLs)
    assert sum(1 for k in ops if k[1] == "R") == 1001 and sum(1 for k in ops if k[1] == "I") == 1000
    assert lake[0]["t"] == "was null" and lake[0]["b"] is None
    with c.cursor() as cur:
        cur.execute("SELECT * FROM typed WHERE id > 0 ORDER BY id")
        cols = [d.name for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur.fetchall()]
    for src in rows:
        assert_pg_row(lake[src["id"]], src)
