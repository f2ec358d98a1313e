"""Whole databases in one job: `tables:` selection, per-table streams, checked table by table.

1. PostgreSQL → Iceberg: one job over a schema of DATIVO_TEST_STREAMS_TABLES tables (default
   200: two of DATIVO_TEST_STREAMS_BIG_ROWS rows (default 1,000,000), the rest 1–10,000 rows;
   keyed tables with an `updated_at` (incremental, merged), keyed tables without one, tables
   without a primary key and tables with a composite key (full refresh, overwritten); one
   table excluded by `!pattern`). After the first run every table equals its source (pyiceberg
   for all, DuckDB's Iceberg extension for a sample); the second run reads only what changed
   in the incremental tables, picks up a new table and reports a dropped one; then runs
   SIGKILLed at random moments and a final run: every table exact again.
2. A stream whose table is locked fails alone (lock_timeout): the other streams commit, the
   job exits non-zero with a per-stream summary; the next run finishes only that stream.
3. MariaDB → Parquet: the same over a MariaDB database, one directory per table.
4. discover, state show|reset --stream, runs per stream, `x-` anchors and --env-file.
"""
import json
import os
import random
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import MY_URL, PG_URL, my_params, write_job
from lakecheck import Lake, dativo, pg_canon, run_or_kill, sql

TABLES = int(os.environ.get("DATIVO_TEST_STREAMS_TABLES", "200"))
BIG_ROWS = int(os.environ.get("DATIVO_TEST_STREAMS_BIG_ROWS", "1000000"))

# Columns of each kind of table, in the canonical form of lakecheck.py.
BASE = [("id", "int"), ("name", "text"), ("amount", "dec"), ("day", "date"), ("ts", "ts"),
        ("flag", "bool")]
KINDS = {
    "inc": BASE + [("updated_at", "ts")],
    "full": BASE,
    "nokey": [("v", "int"), ("note", "text")],
    "comp": [("a", "int"), ("b", "int"), ("note", "text")],
}


def kind_of(table):
    k = table.split("_", 1)[0]
    return "inc" if k == "big" else k


def canon_sorted(t):
    """A canonical table sorted by every column (keyless tables have no unique first column)."""
    return t.sort_by([(c, "ascending") for c in t.column_names]).combine_chunks()


def create_table(pg, schema, name, rows):
    kind = kind_of(name)
    q = f"{schema}.{name}"
    if kind in ("inc", "full"):
        upd = ", updated_at timestamptz NOT NULL DEFAULT now()" if kind == "inc" else ""
        sql(pg, f"""CREATE TABLE {q} (id bigint PRIMARY KEY, name text, amount numeric(12,2),
            day date, ts timestamptz, flag boolean{upd})""")
        sql(pg, f"""INSERT INTO {q} (id, name, amount, day, ts, flag)
            SELECT i, CASE WHEN i % 17 = 0 THEN NULL ELSE 'n' || i || repeat('x', i % 13) END,
                   ((i::bigint * 7919) % 2000000 - 1000000) / 100.0, date '2020-01-01' + (i % 2000),
                   timestamptz '2024-01-01 00:00+00' + i * interval '1 second', i % 3 = 0
            FROM generate_series(1, {rows}) i""")
    elif kind == "nokey":
        sql(pg, f"CREATE TABLE {q} (v bigint, note text)")
        sql(pg, f"INSERT INTO {q} SELECT i % 50, 'v' || (i % 7) FROM generate_series(1, {rows}) i")
    else:
        sql(pg, f"CREATE TABLE {q} (a bigint, b bigint, note text, PRIMARY KEY (a, b))")
        sql(pg, f"INSERT INTO {q} SELECT i / 10, i % 10, 'c' || i FROM generate_series(1, {rows}) i")


def table_names(n):
    """`n` tables: two big ones, then kinds in turn (inc, full, nokey, inc, comp, full, …)."""
    names = ["big_0", "big_1"]
    cycle = ["inc", "full", "nokey", "inc", "comp", "full", "inc", "nokey", "inc", "full"]
    for i in range(max(0, n - 2)):
        names.append(f"{cycle[i % len(cycle)]}_{i:03d}")
    return names[:n]


def small_rows(name):
    i = int(name.split("_")[1])
    return 1 + (i * 7919) % 10000


@pytest.fixture
def pg_schema(pg):
    schema = f"s_{uuid.uuid4().hex[:10]}"
    sql(pg, f"CREATE SCHEMA {schema}")
    yield schema
    sql(pg, f"DROP SCHEMA {schema} CASCADE")


def pg_job(path, name, schema, extra="", url=PG_URL, parallel=4):
    return write_job(path, f"""name: {name}
x-retry: &retry {{attempts: 1}}
max_parallel_streams: {parallel}
source:
  reader: postgres
  config:
    url: "{url}"
    tables: ["{schema}.*", "!{schema}.skip_*"]
    partitions: 2
    batch_size: 20000
{extra}
target:
  writer: iceberg
  config:
    table: "lake.{{table}}"
retry: *retry
""")


def lines(p):
    """The JSON lines of a `--log-format json` run: (per-stream records, the job's record)."""
    recs = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert recs and "streams" in recs[-1], p.stdout[-3000:]
    return {r["stream"]: r for r in recs[:-1]}, recs[-1]


def run_streams(cwd, job, check=0, env=None):
    p = dativo(cwd, "run", job, "--no-progress", "--log-format", "json", check=check, env=env)
    return lines(p)


def assert_tables(pg, lake, schema, names, duckdb_sample=()):
    """Every table of `names` in the lake equals its source: pyiceberg for all, DuckDB too
    for `duckdb_sample`."""
    bad = []
    for n in names:
        cols = KINDS[kind_of(n)]
        want = canon_sorted(pg_canon(pg, cols, f"FROM {schema}.{n}"))
        readers = [("pyiceberg", lake.read_pyiceberg)]
        if n in duckdb_sample:
            readers.append(("duckdb", lake.read_duckdb))
        for rname, read in readers:
            got = canon_sorted(read(f"lake.{n}", cols))
            if not got.equals(want):
                bad.append(f"{n} ({rname}): want {want.num_rows} rows, got {got.num_rows}")
    assert not bad, f"{len(bad)} tables differ from their source: {bad[:10]}"


def change_round(pg, schema, names, rng, tag):
    """Updates and inserts in incremental tables (cursor advances), updates, deletes and
    inserts in full-refresh tables. Returns {table: rows the incremental read should see}."""
    expect = {}
    for n in names:
        kind = kind_of(n)
        q = f"{schema}.{n}"
        if kind == "inc" and rng.random() < 0.3:
            upd = sql(pg, f"""UPDATE {q} SET name = 'u{tag}-' || id, amount = amount + 1,
                updated_at = clock_timestamp() WHERE id IN (SELECT id FROM {q} ORDER BY random() LIMIT 5)
                RETURNING id""")
            top = sql(pg, f"SELECT coalesce(max(id), 0) FROM {q}")[0][0]
            sql(pg, f"""INSERT INTO {q} (id, name, amount, day, ts, flag, updated_at)
                SELECT i, 'new{tag}', 1.5, date '2026-01-01', now(), true, clock_timestamp()
                FROM generate_series({top + 1}, {top + 3}) i""")
            expect[n] = len(upd) + 3
        elif kind == "full" and rng.random() < 0.3:
            sql(pg, f"DELETE FROM {q} WHERE id IN (SELECT id FROM {q} ORDER BY random() LIMIT 2)")
            sql(pg, f"UPDATE {q} SET flag = NOT coalesce(flag, false) WHERE id % 97 = 1")
        elif kind == "nokey" and rng.random() < 0.3:
            sql(pg, f"DELETE FROM {q} WHERE v = 3")
            sql(pg, f"INSERT INTO {q} VALUES (3, 'again{tag}')")
    return expect


def test_a_schema_of_many_tables_into_iceberg(tmp_path, pg, pg_schema):
    schema = pg_schema
    names = table_names(TABLES)
    for n in names:
        create_table(pg, schema, n, BIG_ROWS if n.startswith("big_") else small_rows(n))
    create_table(pg, schema, "skip_full_0", 10)
    for n in names:
        sql(pg, f"ANALYZE {schema}.{n}")
    job = pg_job(tmp_path / "db.yaml", "db", schema)
    lake = Lake(tmp_path)

    # discover: every selected table with its choices, largest first; the excluded one absent.
    d = json.loads(dativo(tmp_path, "discover", job, "--json").stdout)
    streams = {s["stream"]: s for s in d["streams"]}
    assert set(streams) == {f"{schema}.{n}" for n in names}, sorted(set(streams) ^ {f"{schema}.{n}" for n in names})[:5]
    # Largest first.
    assert {s["stream"] for s in d["streams"][:2]} == {f"{schema}.big_0", f"{schema}.big_1"}, d["streams"][:3]
    assert d["streams"][0]["estimated_rows"] >= BIG_ROWS * 0.9, d["streams"][0]
    inc = streams[f"{schema}.{next(n for n in names if n.startswith('inc_'))}"]
    assert (inc["cursor"], inc["mode"], inc["target_mode"], inc["primary_key"]) == \
        ("updated_at", "incremental", "merge", ["id"]), inc
    full = streams[f"{schema}.{next(n for n in names if n.startswith('full_'))}"]
    assert (full["cursor"], full["mode"], full["target"]) == (None, "full_refresh", f"lake.{full['table']}"), full
    if any(n.startswith("comp_") for n in names):
        comp = streams[f"{schema}.{next(n for n in names if n.startswith('comp_'))}"]
        assert comp["primary_key"] == ["a", "b"] and "leading column" in " ".join(comp["notes"]), comp
    if any(n.startswith("nokey_") for n in names):
        nk = streams[f"{schema}.{next(n for n in names if n.startswith('nokey_'))}"]
        # No key: split by physical location (ctid ranges on one snapshot).
        assert nk["primary_key"] == [] and nk["partitions"] == 2 and "ctid" in " ".join(nk["notes"]), nk

    # Run 1: everything.
    per, total = run_streams(tmp_path, job)
    assert total["status"] == "succeeded" and total["streams"] == len(names) and total["streams_failed"] == 0, total
    assert per[f"{schema}.big_0"]["rows"] == BIG_ROWS
    sample = [n for n in names if n.startswith("big_")] + [
        next(n for n in names if n.startswith(k + "_")) for k in ("inc", "full", "nokey", "comp")
        if any(x.startswith(k + "_") for x in names)]
    assert_tables(pg, lake, schema, names, duckdb_sample=sample)

    # Run 2: only the changes of incremental tables are read; a new table is picked up, a
    # dropped one reported.
    rng = random.Random(19)
    expect = change_round(pg, schema, names, rng, "r2")
    dropped = next(n for n in names if n.startswith("full_"))
    sql(pg, f"DROP TABLE {schema}.{dropped}")
    names.remove(dropped)
    create_table(pg, schema, "inc_new", 321)
    names.append("inc_new")
    per, total = run_streams(tmp_path, job)
    assert total["status"] == "succeeded", total
    assert total["gone"] == [f"{schema}.{dropped}"], total
    assert per[f"{schema}.inc_new"]["rows"] == 321
    for n in names:
        if kind_of(n) == "inc" and n != "inc_new":
            assert per[f"{schema}.{n}"]["rows"] == expect.get(n, 0), (n, per[f"{schema}.{n}"], expect.get(n))
    assert_tables(pg, lake, schema, names, duckdb_sample=["inc_new"] + [n for n in expect][:3])

    # SIGKILLs at random moments, then a clean run: every table exact.
    for r in range(3):
        change_round(pg, schema, names, rng, f"k{r}")
        killed, rc, out, err, took = run_or_kill(tmp_path, ["run", job, "--no-progress"], rng.uniform(0.5, 4.0))
        print(f"kill round {r}: killed={killed} rc={rc} after {took:.1f}s")
    per, total = run_streams(tmp_path, job)
    assert total["status"] == "succeeded", total
    assert_tables(pg, lake, schema, names, duckdb_sample=sample[:2])

    # Per-stream history and state.
    runs = json.loads(dativo(tmp_path, "runs", job, "--json", "--limit", "1000").stdout)
    jobs = {r["job"] for r in runs}
    assert "db" in jobs and f"db/{schema}.big_0" in jobs, sorted(jobs)[:5]
    st = json.loads(dativo(tmp_path, "state", "show", job).stdout)
    assert {s["stream"] for s in st["streams"]} >= {f"{schema}.{n}" for n in names}


def test_a_locked_table_fails_alone_and_the_rerun_finishes_it(tmp_path, pg, pg_schema):
    import psycopg2
    schema = pg_schema
    names = ["inc_000", "full_001", "inc_002", "full_003", "comp_004"]
    for n in names:
        create_table(pg, schema, n, 500)
    locked = f"{schema}.full_001"
    url = PG_URL + ("&" if "?" in PG_URL else "?") + "options=-c%20lock_timeout%3D1500"
    job = pg_job(tmp_path / "db.yaml", "lockdb", schema, url=url, parallel=2)
    holder = psycopg2.connect(PG_URL)
    try:
        with holder.cursor() as c:
            c.execute(f"LOCK TABLE {locked} IN ACCESS EXCLUSIVE MODE")
        p = dativo(tmp_path, "run", job, "--no-progress", "--log-format", "json", check=None)
        per, total = lines(p)
        assert p.returncode not in (0, 2), (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
        assert total["status"] == "failed" and total["streams_failed"] == 1, total
        assert per[locked]["status"] == "failed" and "lock" in (per[locked]["error"] or ""), per[locked]
        assert all(per[f"{schema}.{n}"]["status"] == "succeeded" for n in names if f"{schema}.{n}" != locked)
        assert "1 of 5 streams" in total["error"], total
        lake = Lake(tmp_path)
        assert_tables(pg, lake, schema, [n for n in names if n != "full_001"])
        assert "lake.full_001" not in [".".join(i) for i in lake.catalog().list_tables("lake")]
    finally:
        holder.rollback()
        holder.close()
    # The re-run finishes the locked table; the incremental ones have nothing new.
    per, total = run_streams(tmp_path, job)
    assert total["status"] == "succeeded", total
    assert per[locked]["rows"] == 500
    assert per[f"{schema}.inc_000"]["rows"] == 0 and per[f"{schema}.inc_002"]["rows"] == 0
    assert_tables(pg, Lake(tmp_path), schema, names)

    # One stream reset: only it is read again.
    dativo(tmp_path, "state", "reset", job, "--stream", f"{schema}.inc_000")
    per, total = run_streams(tmp_path, job)
    assert per[f"{schema}.inc_000"]["rows"] == 500 and per[f"{schema}.inc_002"]["rows"] == 0, per
    assert_tables(pg, Lake(tmp_path), schema, names)


def test_second_run_of_the_job_at_once_is_refused(tmp_path, pg, pg_schema):
    """While a run of a multi-table job is going on (one of its tables is locked by another
    session, so it surely is), a second run of the job exits 7 naming the job; the first one
    then finishes."""
    import psycopg2
    import time
    schema = pg_schema
    create_table(pg, schema, "full_000", 1000)
    create_table(pg, schema, "inc_001", 10)
    job = pg_job(tmp_path / "db.yaml", "twice", schema)
    holder = psycopg2.connect(PG_URL)
    first = None
    try:
        with holder.cursor() as c:
            c.execute(f"LOCK TABLE {schema}.full_000 IN ACCESS EXCLUSIVE MODE")
        first = dativo_popen(tmp_path, job)
        # The first run is blocked reading full_000 once its other stream has committed.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            st = dativo(tmp_path, "state", "show", job, check=None)
            if f"{schema}.inc_001" in st.stdout:
                break
            time.sleep(0.2)
        assert first.poll() is None, "the first run ended while its table was locked"
        p = dativo(tmp_path, "run", job, "--no-progress", check=None)
        assert p.returncode == 7 and "job `twice` is already running" in p.stderr, (p.returncode, p.stderr)
        p = dativo(tmp_path, "state", "reset", job, "--stream", f"{schema}.inc_001", check=None)
        assert p.returncode == 7, (p.returncode, p.stdout, p.stderr)
    finally:
        holder.rollback()
        holder.close()
        if first is not None:
            first.wait(timeout=300)
    assert first.returncode == 0
    assert Lake(tmp_path).load("lake.full_000").scan().to_arrow().num_rows == 1000


def dativo_popen(cwd, job):
    import subprocess
    from conftest import BIN
    e = dict(os.environ)
    e.pop("DATIVO_STATE_DIR", None)
    return subprocess.Popen([BIN, "run", str(job), "--no-progress"], cwd=cwd, env=e,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ----------------------------------------------------------------------------- MariaDB

def my_exec(conn, text):
    with conn.cursor() as c:
        c.execute(text)
        return c.fetchall()


def test_a_mariadb_database_into_parquet(tmp_path):
    import pymysql
    db = f"s_{uuid.uuid4().hex[:10]}"
    conn = pymysql.connect(**{**my_params(), "database": None}, autocommit=True)
    n_tables = max(4, TABLES // 4)
    try:
        my_exec(conn, f"CREATE DATABASE {db}")
        names = []
        for i in range(n_tables):
            kind = ["inc", "full", "nokey"][i % 3]
            name = f"{kind}_{i:03d}"
            names.append(name)
            rows = 1 + (i * 7919) % 3000
            if kind == "nokey":
                my_exec(conn, f"CREATE TABLE {db}.{name} (v bigint, note varchar(20))")
            else:
                upd = ", updated_at datetime(6) NOT NULL" if kind == "inc" else ""
                my_exec(conn, f"""CREATE TABLE {db}.{name} (id bigint PRIMARY KEY, name varchar(40),
                    amount decimal(12,2), day date, flag tinyint(1){upd})""")
            values = []
            for r in range(1, rows + 1):
                if kind == "nokey":
                    values.append(f"({r % 40}, 'v{r % 5}')")
                else:
                    ts = ", '2024-01-01 00:00:00'" if kind == "inc" else ""
                    values.append(f"({r}, 'n{r}', {(r * 37) % 100000 / 100.0}, '2021-01-01' + INTERVAL {r % 900} DAY, {r % 2}{ts})")
            for c0 in range(0, len(values), 1000):
                my_exec(conn, f"INSERT INTO {db}.{name} VALUES " + ",".join(values[c0:c0 + 1000]))
        my_exec(conn, "ANALYZE TABLE " + ", ".join(f"{db}.{n}" for n in names))
        url = MY_URL.rsplit("/", 1)[0] + f"/{db}"
        job = write_job(tmp_path / "my.yaml", f"""name: mydb
max_parallel_streams: 3
source:
  reader: mysql
  config:
    url: "{url}"
    tables: ["{db}.*"]
target:
  writer: parquet
  config:
    path: "lake/{{schema}}/{{table}}"
retry: {{attempts: 1}}
""")

        def check():
            bad = []
            for n in names:
                cols = "v, note" if n.startswith("nokey") else "id, name, CAST(amount AS CHAR), day, flag"
                src = my_exec(conn, f"SELECT {cols} FROM {db}.{n}")
                want = sorted(tuple(str(x) for x in r) for r in src)
                t = pq.ParquetDataset(tmp_path / "lake" / db / n).read()
                if n.startswith("nokey"):
                    got = sorted((str(a), str(b)) for a, b in zip(t["v"].to_pylist(), t["note"].to_pylist()))
                else:
                    amount = pc.cast(t["amount"], pa.decimal128(12, 2)).to_pylist()
                    flag = [int(x) if isinstance(x, bool) else x for x in t["flag"].to_pylist()]
                    got = sorted(tuple(str(x) for x in r) for r in zip(
                        t["id"].to_pylist(), t["name"].to_pylist(), amount, t["day"].to_pylist(), flag))
                if got != want:
                    bad.append(f"{n}: want {len(want)} rows, got {len(got)}; first difference "
                               f"{next(((a, b) for a, b in zip(want, got) if a != b), None)}")
            assert not bad, bad[:5]

        per, total = run_streams(tmp_path, job)
        assert total["status"] == "succeeded" and total["streams"] == n_tables, total
        check()
        # Changes: inserts into incremental tables (appended), updates and deletes in full ones
        # (overwritten); then a SIGKILLed run and a clean one.
        for n in names:
            if n.startswith("inc"):
                my_exec(conn, f"INSERT INTO {db}.{n} VALUES (100001, 'late', 1.25, '2026-01-01', 1, '2025-06-01 00:00:00')")
            elif n.startswith("full"):
                my_exec(conn, f"DELETE FROM {db}.{n} WHERE id % 10 = 3")
                my_exec(conn, f"UPDATE {db}.{n} SET name = 'changed' WHERE id % 10 = 4")
        killed, rc, out, err, took = run_or_kill(tmp_path, ["run", job, "--no-progress"], 1.0)
        per, total = run_streams(tmp_path, job)
        assert total["status"] == "succeeded", total
        if not killed:
            for n in names:
                if n.startswith("inc"):
                    assert per[f"{db}.{n}"]["rows"] == 0, per[f"{db}.{n}"]
        check()
    finally:
        my_exec(conn, f"DROP DATABASE IF EXISTS {db}")
        conn.close()


# ----------------------------------------------------------------------------- config

def test_env_file_and_x_anchors(tmp_path, pg, pg_schema):
    schema = pg_schema
    create_table(pg, schema, "full_000", 42)
    (tmp_path / "dev.env").write_text(f"# the database\nexport SRC_URL='{PG_URL}'\n")
    job = write_job(tmp_path / "env.yaml", f"""name: envdb
x-src: &src
  url: ${{env:SRC_URL}}
  batch_size: 1000
source:
  reader: postgres
  config:
    <<: *src
    tables: ["{schema}.*"]
target:
  writer: parquet
  config: {{path: "lake/{{table}}"}}
""")
    p = dativo(tmp_path, "run", job, "--no-progress", check=None)
    assert p.returncode == 2 and "SRC_URL" in p.stderr, p.stderr
    per, total = lines(dativo(tmp_path, "--env-file", "dev.env", "run", job, "--no-progress",
                              "--log-format", "json"))
    assert total["status"] == "succeeded" and per[f"{schema}.full_000"]["rows"] == 42, total
    assert pq.ParquetDataset(tmp_path / "lake/full_000").read().num_rows == 42


def test_shards_split_the_streams(tmp_path, pg, pg_schema):
    """`--shard I/N` on a multi-table job runs the streams shard I owns: together the shards
    load every table once, and each stream is loaded whole by one shard."""
    schema = pg_schema
    names = [f"{k}_{i:03d}" for i, k in enumerate(["inc", "full", "nokey", "comp", "inc", "full", "inc", "full"])]
    for n in names:
        create_table(pg, schema, n, 300)
    job = pg_job(tmp_path / "db.yaml", "sharded", schema)
    seen = {}
    for i in range(2):
        p = dativo(tmp_path, "run", job, "--shard", f"{i}/2", "--no-progress", "--log-format", "json")
        per, total = lines(p)
        assert total["status"] == "succeeded", total
        assert total["streams"] + total["other_shards"] == len(names), total
        for s in per:
            assert s not in seen, f"{s} loaded by shards {seen[s]} and {i}"
            seen[s] = i
    assert set(seen) == {f"{schema}.{n}" for n in names}
    assert len(set(seen.values())) == 2, "one shard got every stream"
    assert_tables(pg, Lake(tmp_path), schema, names)
