"""The postgres reader against the local PostgreSQL (127.0.0.1:5432, trust auth, db `test`),
verified with psycopg2 on the source side and pyarrow/duckdb on the lake side."""
import json
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from conftest import PG_URL, parquet_stats, with_user, write_job
from lakecheck import assert_pg_row



def sql(pg, text, *args):
    with pg.cursor() as c:
        c.execute(text, args or None)
        return c.fetchall() if c.description else None


def job(tmp_path, table, extra="", checkpoint="", target="lake/out", name="pg_job"):
    return write_job(tmp_path / "job.yaml", f"""name: {name}
source:
  reader: postgres
  config:
    url: {PG_URL}
    table: {table}
{extra}
target:
  writer: parquet
  config:
    path: {target}
{checkpoint}
""")


def read_lake(tmp_path):
    return pq.ParquetDataset(tmp_path / "lake/out").read()


def test_every_type_round_trips(dativo, tmp_path, pg, table):
    sql(pg, "DROP TYPE IF EXISTS dativo_mood; CREATE TYPE dativo_mood AS ENUM ('sad', 'happy')")
    sql(pg, f"""CREATE TABLE {table} (
        id int8 primary key, b bool, i2 int2, i4 int4, f4 float4, f8 float8,
        n numeric(12,3), nu numeric, t text, vc varchar(10), c char(3), nm name, by bytea,
        d date, tm time, ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb,
        ip inet, cid cidr, mac macaddr, m dativo_mood, ai int4[], at text[], o oid)""")
    sql(pg, f"""INSERT INTO {table} SELECT i, i % 2 = 0, i, i * 10, i / 4.0, i / 8.0, i * 1.125,
        i * 0.5, 'héllo ' || i, 'v' || i, 'ab', 'nm', decode('00ff', 'hex'),
        date '2026-01-01' + i, time '10:00' + i * interval '1 second',
        timestamp '2026-01-01 00:00:00.123456' + i * interval '1 hour',
        timestamptz '2026-01-01 00:00+00' + i * interval '1 minute',
        make_interval(months => i % 3, days => i % 5, secs => i), md5(i::text)::uuid,
        json_build_object('i', i), jsonb_build_object('k', i), ('10.0.0.' || (i % 250))::inet, '10.0.0.0/8',
        '08:00:2b:01:02:03', 'happy', ARRAY[i, NULL], ARRAY['a', NULL], i
        FROM generate_series(1, 2000) i""")
    sql(pg, f"INSERT INTO {table} (id) VALUES (0)")  # a row of NULLs
    dativo.run("run", job(tmp_path, table, "    batch_size: 700\n    partitions: 3"), check=0)

    t = read_lake(tmp_path).sort_by("id")
    assert t.num_rows == 2001
    lake = {r["id"]: r for r in t.to_pylist()}
    with pg.cursor() as c:
        c.execute(f"SELECT * FROM {table} ORDER BY id")
        cols = [d.name for d in c.description]
        rows = [dict(zip(cols, r)) for r in c.fetchall()]
    assert all(v is None for k, v in lake[0].items() if k != "id")
    for src in rows[1:]:
        assert_pg_row(lake[src["id"]], src)
    count, total = duckdb.execute(
        f"SELECT count(*), sum(n) FROM read_parquet('{tmp_path}/lake/out/*.parquet')").fetchone()
    assert (count, total) == tuple(sql(pg, f"SELECT count(*), sum(n) FROM {table}")[0])


def test_incremental_cursor_with_lookback(dativo, tmp_path, pg, table):
    sql(pg, f"CREATE TABLE {table} (id bigserial primary key, v int, updated_at timestamptz not null)")
    ins = f"INSERT INTO {table} (v, updated_at) SELECT i, timestamptz '2026-01-01' + (i / 3) * interval '1 second' FROM generate_series(%s, %s) i"
    sql(pg, ins, 1, 30000)
    j = job(tmp_path, table, "    cursor: updated_at\n    lookback: 1h\n    batch_size: 1000\n    partitions: 2",
            "checkpoint:\n  rows: 5000")
    dativo.run("run", j, check=0)
    assert parquet_stats(tmp_path / "lake/out")[:2] == (30000, 30000)
    # New rows at and above the committed cursor, and a late commit below it (within lookback).
    sql(pg, ins, 29998, 30010)
    sql(pg, f"INSERT INTO {table} (v, updated_at) VALUES (-1, timestamptz '2026-01-01 02:40:00+00')")
    dativo.run("run", j, check=0)
    dativo.run("run", j, check=0)
    want = sql(pg, f"SELECT count(*), count(distinct id), sum(id) FROM {table}")[0]
    assert parquet_stats(tmp_path / "lake/out") == tuple(want)
    state = json.loads(dativo.run("state", "show", j, check=0).stdout)["state"]
    assert state["cursor"].startswith("2026-01-01 02:46:4")


def test_full_refresh_partitions_and_query(dativo, tmp_path, pg, table):
    sql(pg, f"CREATE TABLE {table} (k int, amount numeric(10,2))")
    sql(pg, f"INSERT INTO {table} SELECT i, i * 0.01 FROM generate_series(1, 50000) i")
    sql(pg, f"INSERT INTO {table} VALUES (NULL, 1.00), (NULL, 2.00)")
    j = write_job(tmp_path / "job.yaml", f"""name: pg_query
source:
  reader: postgres
  config:
    url: {PG_URL}
    query: "SELECT k AS id, amount FROM {table} WHERE amount > 0"
    partition_column: id
    partitions: 4
    batch_size: 3000
target:
  writer: parquet
  config: {{path: lake/out}}
checkpoint: {{rows: 7000}}
""")
    dativo.run("run", j, check=0)
    files = str(tmp_path / "lake/out/*.parquet")
    got = duckdb.execute(f"SELECT count(*), sum(amount) FROM read_parquet('{files}')").fetchone()
    assert got == tuple(sql(pg, f"SELECT count(*), sum(amount) FROM {table}")[0])


def test_clear_errors(dativo, tmp_path, pg, table):
    sql(pg, f"CREATE TABLE {table} (id int primary key, p point)")
    sql(pg, f"INSERT INTO {table} VALUES (1, point(1, 2))")

    def run(t, url=PG_URL, extra=""):
        j = write_job(tmp_path / "e.yaml", f"""name: pg_err
source:
  reader: postgres
  config:
    url: "{url}"
    table: {t}
{extra}
target:
  writer: parquet
  config: {{path: lake/err}}
retry: {{attempts: 1}}
""")
        return dativo.run("run", j)

    p = run(table, url="postgres://postgres:hunter2secret@127.0.0.1:1/test")
    assert p.returncode == 3 and "connecting to PostgreSQL at 127.0.0.1:1/test" in p.stdout, p.stdout
    assert "hunter2secret" not in p.stdout + p.stderr
    p = run(table, url=with_user(PG_URL, "no_such_role_dativo"))
    assert p.returncode == 3 and "authentication failed" in p.stdout, p.stdout
    p = run("no_such_table_dativo")
    assert p.returncode == 4 and "does not exist" in p.stdout, p.stdout
    p = run(table)
    assert p.returncode == 4 and "`p` (point)" in p.stdout and "cast_unsupported_to_text" in p.stdout
    p = run(table, extra="    cast_unsupported_to_text: true")
    assert p.returncode == 0, p.stdout
    sql(pg, "DROP ROLE IF EXISTS dativo_noaccess; CREATE ROLE dativo_noaccess LOGIN")
    try:
        p = run(table, url=with_user(PG_URL, "dativo_noaccess"))
        assert p.returncode == 3 and "permission denied" in p.stdout, p.stdout
    finally:
        sql(pg, "DROP ROLE IF EXISTS dativo_noaccess")


def test_terminated_backend_is_retried_without_duplicates(dativo, tmp_path, pg, table):
    sql(pg, f"CREATE TABLE {table} (id int8 primary key, payload text)")
    sql(pg, f"INSERT INTO {table} SELECT i, repeat('x', 50) FROM generate_series(1, 400000) i")
    j = job(tmp_path, table, "    batch_size: 1000\n    partitions: 2",
            "checkpoint:\n  rows: 2000\nretry:\n  attempts: 5\n  backoff: 100ms")
    p = dativo.popen("run", j, "--no-progress")
    killed = 0
    deadline = time.monotonic() + 60
    while killed == 0 and time.monotonic() < deadline and p.poll() is None:
        # Only this test's COPY: another test's run on the shared server is none of its business.
        rows = sql(pg, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE application_name = 'dativo' AND query LIKE 'COPY%%' "
                       f"AND query LIKE '%%{table}%%' AND pid <> pg_backend_pid()")
        killed = sum(1 for (ok,) in rows if ok)
        time.sleep(0.01)
    out, err = p.communicate(timeout=120)
    assert killed > 0, "no COPY backend was seen to terminate"
    assert p.returncode == 0, out + err
    assert parquet_stats(tmp_path / "lake/out") == (400000, 400000, sum(range(1, 400001)))
    runs = json.loads(dativo.run("runs", j, "--json", check=0).stdout)
    assert runs[0]["attempts"] >= 2 and runs[0]["status"] == "succeeded"


def test_edge_values(dativo, tmp_path, pg, table):
    sql(pg, f"""CREATE TABLE {table} (id int primary key, f8 float8, f4 float4, big numeric(38,18),
        huge numeric, n numeric(10,2), ts timestamp, tstz timestamptz, d date, t text)""")
    sql(pg, f"""INSERT INTO {table} VALUES
        (1, 'NaN', 'Infinity', 12345678901234567890.123456789012345678,
         '123456789012345678901234567890.123456789012345', 1.5, '1969-07-20 20:17:40.000001',
         '1900-01-01 00:00:00+00', '0001-01-01', ''),
        (2, '-Infinity', '-0', -0.000000000000000001, '-1e-30', -99999999.99, '1970-01-01 00:00:00',
         '2262-04-11 23:47:16.854775+00', '9999-12-31', 'nul byte-free ☃'),
        (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)""")
    base = "    numeric: {as_string: true}\n"
    dativo.run("run", job(tmp_path, table, base), check=0)
    rows = {r["id"]: r for r in read_lake(tmp_path).to_pylist()}
    import math
    assert math.isnan(rows[1]["f8"]) and rows[1]["f4"] == float("inf")
    assert rows[2]["f8"] == float("-inf") and str(rows[2]["f4"]) == "-0.0"
    assert str(rows[1]["big"]) == "12345678901234567890.123456789012345678"
    assert str(rows[2]["big"]) == "-1E-18" or str(rows[2]["big"]) == "-0.000000000000000001"
    assert rows[1]["huge"] == "123456789012345678901234567890.123456789012345"
    assert rows[2]["huge"] == "-0.000000000000000000000000000001"
    assert str(rows[1]["ts"]) == "1969-07-20 20:17:40.000001"
    assert rows[1]["tstz"].year == 1900 and str(rows[1]["d"]) == "0001-01-01"
    assert str(rows[2]["d"]) == "9999-12-31" and rows[2]["t"] == "nul byte-free ☃"
    assert all(v is None for k, v in rows[3].items() if k != "id")

    # NaN and infinity have no Arrow decimal/timestamp form: a clear error, or NULL on request.
    sql(pg, f"INSERT INTO {table} (id, n, ts, d) VALUES (4, 'NaN', 'infinity', '-infinity')")
    j = job(tmp_path, table, base, target="lake/special", name="pg_special")
    p = dativo.run("run", j)
    assert p.returncode == 4 and "column `n`" in p.stdout and "special_values" in p.stdout, p.stdout
    j = job(tmp_path, table, base + "    special_values: as_null", target="lake/special", name="pg_special")
    dativo.run("run", j, check=0)
    r4 = [r for r in pq.ParquetDataset(tmp_path / "lake/special").read().to_pylist() if r["id"] == 4][0]
    assert r4["n"] is None and r4["ts"] is None and r4["d"] is None


@pytest.mark.parametrize("mode,ok", [("require", True), ("prefer", True), ("disable", True),
                                     ("verify-full", False)])
def test_sslmode_with_rustls(dativo, tmp_path, pg, table, mode, ok):
    if sql(pg, "SHOW ssl")[0][0] != "on":
        pytest.skip("the local server has no TLS")
    sql(pg, f"CREATE TABLE {table} (id int primary key)")
    sql(pg, f"INSERT INTO {table} SELECT generate_series(1, 10)")
    j = job(tmp_path, table, f"    sslmode: {mode}", "retry: {attempts: 1}")
    p = dativo.run("run", j)
    if ok:
        assert p.returncode == 0, p.stdout + p.stderr
        assert parquet_stats(tmp_path / "lake/out")[0] == 10
    else:
        # The server's certificate is self-signed: TLS is negotiated and verification fails,
        # clearly (this is what shows the TLS path is taken at all).
        assert p.returncode == 3 and "connecting to PostgreSQL" in p.stdout, p.stdout


def test_keyless_table_split_by_physical_location(tmp_path, pg, table):
    """`partitions: 4` on a table without a primary key: four ctid ranges on one snapshot, with
    `where:`; into Iceberg (an overwrite per run) the table equals the source as a multiset
    (duplicate rows included) for pyiceberg and DuckDB — after updates that move rows between
    blocks, and after a SIGKILLed run."""
    from lakecheck import Lake, dativo, pg_canon, run_or_kill
    sql(pg, f"CREATE TABLE {table} (v bigint, note text, amount numeric(12,2))")
    sql(pg, f"""INSERT INTO {table} SELECT i % 5000, 'n' || (i % 7) || repeat('x', i % 40), (i % 900) / 4.0
                FROM generate_series(1, 200000) i""")
    j = write_job(tmp_path / "heap.yaml", f"""name: heap
source:
  reader: postgres
  config:
    url: {PG_URL}
    table: {table}
    where: "v <> 13"
    partitions: 4
    batch_size: 5000
target:
  writer: iceberg
  config: {{table: lake.heap}}
""")
    cols = [("v", "int"), ("note", "text"), ("amount", "dec")]
    lake = Lake(tmp_path)

    def check(what):
        want = pg_canon(pg, cols, f"FROM {table} WHERE v <> 13")
        want = want.sort_by([(c, "ascending") for c, _ in cols])
        for name, read in [("pyiceberg", lake.read_pyiceberg), ("duckdb", lake.read_duckdb)]:
            got = read("lake.heap", cols).sort_by([(c, "ascending") for c, _ in cols])
            assert got.num_rows == want.num_rows and got.equals(want), \
                f"{what}: {name} reads {got.num_rows} rows, the source has {want.num_rows}"

    p = dativo(tmp_path, "run", j, "--no-progress")
    assert "ctid" in p.stderr and "ranges=4" in p.stderr, p.stderr[-2000:]
    check("first run")
    # Updates move rows to other blocks; a delete and inserts change the multiset.
    sql(pg, f"UPDATE {table} SET amount = amount + 1 WHERE v % 3 = 0")
    sql(pg, f"DELETE FROM {table} WHERE v BETWEEN 100 AND 120")
    sql(pg, f"INSERT INTO {table} SELECT 7, 'dup', 1.5 FROM generate_series(1, 300)")
    killed, *_ = run_or_kill(tmp_path, ["run", j, "--no-progress"], 0.8)
    dativo(tmp_path, "run", j, "--no-progress")
    check(f"after updates (first of the two runs {'killed' if killed else 'finished'})")
