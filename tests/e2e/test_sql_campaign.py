"""Defects an outside test campaign found in the SQL readers, each pinned by a test against the
real services (PostgreSQL 127.0.0.1:5432, MariaDB 127.0.0.1:3306), verified with
psycopg2/PyMySQL on the source side and pyarrow/duckdb on the lake side:

- rows whose incremental cursor is NULL were skipped silently (exit 0);
- batches counted rows only (a column could pass 2 GiB and panic, memory grew with row width);
- with `lookback`, a run interrupted and resumed could lose a row that committed late into a
  part of the window the first attempt had already delivered.
"""
import json
import os
import uuid

import duckdb
import pyarrow.parquet as pq
import pymysql
import pytest

from conftest import MY_URL, PG_URL, my_sql, parquet_stats, write_job



def pg_sql(pg, text, *args):
    with pg.cursor() as c:
        c.execute(text, args or None)
        return c.fetchall() if c.description else None


def job(tmp_path, reader, source, extra="", tail="", target="lake/out", name="campaign"):
    url = PG_URL if reader == "postgres" else MY_URL
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: {reader}
  config:
    url: {url}
{source}
{extra}
target:
  writer: parquet
  config:
    path: {target}
{tail}
""")


def lake_rows(tmp_path, target="lake/out"):
    files = sorted(str(p) for p in (tmp_path / target).glob("*.parquet"))
    return duckdb.execute(f"SELECT count(*), count(DISTINCT id), sum(id) FROM read_parquet({files!r})").fetchone()


def row_groups(tmp_path, column, target="lake/out"):
    """Every row group of every Parquet file: (rows, the values of `column`)."""
    out = []
    for f in sorted((tmp_path / target).glob("*.parquet")):
        pf = pq.ParquetFile(f)
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i, columns=[column])
            out.append((t.num_rows, t.column(column).to_pylist()))
    return out


# ---------------------------------------------------------------------------------------------
# 1. NULL cursors


def test_pg_null_cursor_is_a_data_error_naming_table_column_and_count(dativo, tmp_path, pg, table):
    pg_sql(pg, f"CREATE TABLE {table} (id int primary key, updated_at timestamptz)")
    pg_sql(pg, f"""INSERT INTO {table} SELECT i, CASE WHEN i % 10 = 0 THEN NULL
                   ELSE timestamptz '2026-01-01' + i * interval '1 second' END FROM generate_series(1, 1000) i""")
    j = job(tmp_path, "postgres", f"    table: {table}", "    cursor: updated_at", "retry: {attempts: 1}")
    p = dativo.run("run", j)
    assert p.returncode == 4, p.stdout + p.stderr
    assert table in p.stdout and "`updated_at`" in p.stdout and "100 row(s)" in p.stdout, p.stdout
    assert not list((tmp_path / "lake/out").glob("*.parquet"))
    # Excluding them is possible, but only knowingly.
    j = job(tmp_path, "postgres", f"    table: {table}\n    where: updated_at IS NOT NULL",
            "    cursor: updated_at", "retry: {attempts: 1}")
    dativo.run("run", j, check=0)
    assert lake_rows(tmp_path) == (900, 900, sum(i for i in range(1, 1001) if i % 10))
    # Once the rows have a cursor, an incremental run loads them (and only them).
    pg_sql(pg, f"UPDATE {table} SET updated_at = timestamptz '2026-02-01' + id * interval '1 second' WHERE updated_at IS NULL")
    j = job(tmp_path, "postgres", f"    table: {table}", "    cursor: updated_at", "retry: {attempts: 1}")
    dativo.run("run", j, check=0)
    assert lake_rows(tmp_path) == (1000, 1000, sum(range(1, 1001)))


def test_pg_null_cursor_in_a_query(dativo, tmp_path, pg, table):
    pg_sql(pg, f"CREATE TABLE {table} (id int primary key, k int NOT NULL)")
    pg_sql(pg, f"INSERT INTO {table} SELECT i, i FROM generate_series(1, 50) i")
    # NOT NULL in the catalog: no check needed, the run succeeds.
    dativo.run("run", job(tmp_path, "postgres", f"    table: {table}", "    cursor: k"), check=0)
    # A query cannot be checked in the catalog: the probe finds the NULLs.
    j = job(tmp_path, "postgres", f"    query: SELECT id, NULLIF(k, 7) AS k FROM {table}", "    cursor: k",
            "retry: {attempts: 1}", target="lake/q", name="campaign_q")
    p = dativo.run("run", j)
    assert p.returncode == 4 and "1 row(s) of the query" in p.stdout and "`k`" in p.stdout, p.stdout


def test_mysql_null_cursor_is_a_data_error_naming_table_column_and_count(dativo, tmp_path, my, my_table):
    my_sql(my, f"CREATE TABLE {my_table} (id INT PRIMARY KEY, updated_at DATETIME(6) NULL)")
    my_sql(my, f"""INSERT INTO {my_table} SELECT seq, IF(seq % 10 = 0, NULL,
                   TIMESTAMPADD(SECOND, seq, '2026-01-01')) FROM seq_1_to_1000""")
    j = job(tmp_path, "mysql", f"    table: {my_table}", "    cursor: updated_at", "retry: {attempts: 1}")
    p = dativo.run("run", j)
    assert p.returncode == 4, p.stdout + p.stderr
    assert my_table in p.stdout and "`updated_at`" in p.stdout and "100 row(s)" in p.stdout, p.stdout
    assert not list((tmp_path / "lake/out").glob("*.parquet"))
    my_sql(my, f"UPDATE {my_table} SET updated_at = TIMESTAMPADD(SECOND, id, '2026-02-01') WHERE updated_at IS NULL")
    dativo.run("run", j, check=0)
    assert lake_rows(tmp_path) == (1000, 1000, sum(range(1, 1001)))


# ---------------------------------------------------------------------------------------------
# 2. Batches bounded by bytes


def test_pg_batches_bounded_by_bytes_never_split_a_key(dativo, tmp_path, pg, table):
    # 400 rows of ~20 KB, ten rows per `grp` value: 200 KB per key value.
    pg_sql(pg, f"CREATE TABLE {table} (id int primary key, grp int NOT NULL, payload text)")
    pg_sql(pg, f"""INSERT INTO {table} SELECT i, (i - 1) / 10,
                   (SELECT string_agg(md5((i * 1000 + k)::text), '') FROM generate_series(1, 625) k)
                   FROM generate_series(1, 400) i""")
    # A 100 KB bound ends every batch at the first key change after 100 KB: one key per batch.
    # Each batch is one row group (`row_group_bytes: 1` flushes after every batch).
    j = job(tmp_path, "postgres", f"    table: {table}",
            "    partition_column: grp\n    batch_bytes: 100KB", "checkpoint: {rows: 1000000}")
    j.write_text(j.read_text().replace("    path: lake/out", "    path: lake/out\n    row_group_bytes: 1"))
    dativo.run("run", j, check=0)
    groups = row_groups(tmp_path, "grp")
    assert [n for n, _ in groups] == [10] * 40, [n for n, _ in groups]
    assert [set(v) for _, v in groups] == [{g} for g in range(40)]
    got = duckdb.execute(f"SELECT count(*), sum(id), sum(length(payload)), count(DISTINCT payload) "
                         f"FROM read_parquet('{tmp_path}/lake/out/*.parquet')").fetchone()
    assert got == (400, sum(range(1, 401)), 400 * 20000, 400)

    # Incremental on a cursor shared by many rows, interrupted by a bad row and resumed: the
    # byte bound ends batches only between cursor values, so the resume is exact.
    pg_sql(pg, f"ALTER TABLE {table} ADD COLUMN n numeric(10,2) DEFAULT 1")
    pg_sql(pg, f"UPDATE {table} SET n = 'NaN' WHERE id = 305")
    j = job(tmp_path, "postgres", f"    table: {table}",
            "    cursor: grp\n    batch_bytes: 150KB\n    batch_size: 1000", "checkpoint: {rows: 1}\nretry: {attempts: 1}",
            target="lake/inc", name="campaign_inc")
    p = dativo.run("run", j)
    assert p.returncode == 4 and "column `n`" in p.stdout and table in p.stdout, p.stdout
    assert lake_rows(tmp_path, "lake/inc") == (300, 300, sum(range(1, 301)))
    pg_sql(pg, f"UPDATE {table} SET n = 2 WHERE id = 305")
    dativo.run("run", j, check=0)
    assert lake_rows(tmp_path, "lake/inc") == (400, 400, sum(range(1, 401)))


def test_pg_batch_bytes_is_validated(dativo, tmp_path, pg, table):
    pg_sql(pg, f"CREATE TABLE {table} (id int primary key)")
    dativo.run("validate", job(tmp_path, "postgres", f"    table: {table}", "    batch_bytes: 8MiB"), check=0)
    for bad in ["4GiB", "0"]:
        p = dativo.run("validate", job(tmp_path, "postgres", f"    table: {table}", f"    batch_bytes: {bad}"))
        assert p.returncode == 2 and "batch_bytes" in p.stdout + p.stderr, p.stdout + p.stderr


def test_mysql_batches_bounded_by_bytes_never_split_a_key(dativo, tmp_path, my, my_table):
    my_sql(my, f"CREATE TABLE {my_table} (id INT PRIMARY KEY, grp INT NOT NULL, payload MEDIUMTEXT)")
    my_sql(my, f"""INSERT INTO {my_table} SELECT seq, (seq - 1) DIV 10, REPEAT(MD5(seq), 625)
                   FROM seq_1_to_400""")
    j = job(tmp_path, "mysql", f"    table: {my_table}",
            "    partition_column: grp\n    batch_bytes: 100KB", "checkpoint: {rows: 1000000}")
    j.write_text(j.read_text().replace("    path: lake/out", "    path: lake/out\n    row_group_bytes: 1"))
    dativo.run("run", j, check=0)
    groups = row_groups(tmp_path, "grp")
    assert [n for n, _ in groups] == [10] * 40, [n for n, _ in groups]
    assert [set(v) for _, v in groups] == [{g} for g in range(40)]
    got = duckdb.execute(f"SELECT count(*), sum(id), sum(length(payload)) "
                         f"FROM read_parquet('{tmp_path}/lake/out/*.parquet')").fetchone()
    assert got == (400, sum(range(1, 401)), 400 * 20000)


# ---------------------------------------------------------------------------------------------
# 3. lookback across an interrupted run


def test_pg_lookback_resume_keeps_a_row_committed_late_into_a_finished_part(dativo, tmp_path, pg, table):
    pg_sql(pg, f"CREATE TABLE {table} (id int primary key, ts timestamptz NOT NULL, n numeric(10,2))")
    pg_sql(pg, f"""INSERT INTO {table} SELECT i, timestamptz '2026-01-01' + i * interval '1 second', i
                   FROM generate_series(1, 3000) i""")
    # Row 2500 cannot be decoded (NaN in a decimal): run 1 fails there, after committing
    # rows 1..2400 (batches and checkpoints of 100 rows).
    pg_sql(pg, f"UPDATE {table} SET n = 'NaN' WHERE id = 2500")
    j = job(tmp_path, "postgres", f"    table: {table}",
            "    cursor: ts\n    lookback: 1h\n    batch_size: 100",
            "checkpoint: {rows: 100}\nretry: {attempts: 1}")
    p = dativo.run("run", j)
    assert p.returncode == 4 and "column `n`" in p.stdout, p.stdout
    assert lake_rows(tmp_path) == (2400, 2400, sum(range(1, 2401)))
    state = json.loads(dativo.run("state", "show", j, check=0).stdout)["state"]
    assert state["plan"]["ranges"][0]["after"].startswith("2026-01-01 00:40:00")

    # A transaction commits late: its row's cursor is inside the lookback window, in the part
    # run 1 already delivered. The resumed run does not read that part again...
    pg_sql(pg, f"INSERT INTO {table} VALUES (9001, timestamptz '2026-01-01 00:16:40.5+00', 7)")
    pg_sql(pg, f"UPDATE {table} SET n = 2500 WHERE id = 2500")
    dativo.run("run", j, check=0)
    assert lake_rows(tmp_path) == (3000, 3000, sum(range(1, 3001)))
    # ...so the next run's lookback must: once, and never again.
    dativo.run("run", j, check=0)
    want = tuple(pg_sql(pg, f"SELECT count(*), count(DISTINCT id), sum(id) FROM {table}")[0])
    assert lake_rows(tmp_path) == want == (3001, 3001, sum(range(1, 3001)) + 9001)
    dativo.run("run", j, check=0)
    assert lake_rows(tmp_path) == want
    # Full content: every row exactly as in the source.
    lake = duckdb.execute(f"SELECT id, epoch_us(ts), n FROM read_parquet('{tmp_path}/lake/out/*.parquet') "
                          "ORDER BY id").fetchall()
    src = pg_sql(pg, f"SELECT id, (extract(epoch FROM ts) * 1000000)::int8, n FROM {table} ORDER BY id")
    assert lake == [tuple(r) for r in src]


def test_mysql_lookback_resume_keeps_a_row_committed_late_into_a_finished_part(dativo, tmp_path, my, my_table):
    my_sql(my, f"CREATE TABLE {my_table} (id INT PRIMARY KEY, ts DATETIME(6) NOT NULL, tm TIME)")
    my_sql(my, f"""INSERT INTO {my_table} SELECT seq, TIMESTAMPADD(SECOND, seq, '2026-01-01'), '01:00:00'
                   FROM seq_1_to_3000""")
    # Row 2500 cannot be decoded (a TIME past 24h): run 1 fails there after committing 1..2400.
    my_sql(my, f"UPDATE {my_table} SET tm = '25:00:00' WHERE id = 2500")
    j = job(tmp_path, "mysql", f"    table: {my_table}",
            "    cursor: ts\n    lookback: 1h\n    batch_size: 100",
            "checkpoint: {rows: 100}\nretry: {attempts: 1}")
    p = dativo.run("run", j)
    assert p.returncode == 4 and "column `tm`" in p.stdout, p.stdout
    assert lake_rows(tmp_path) == (2400, 2400, sum(range(1, 2401)))
    my_sql(my, f"INSERT INTO {my_table} VALUES (9001, '2026-01-01 00:16:40.5', '02:00:00')")
    my_sql(my, f"UPDATE {my_table} SET tm = '01:00:00' WHERE id = 2500")
    dativo.run("run", j, check=0)
    assert lake_rows(tmp_path) == (3000, 3000, sum(range(1, 3001)))
    dativo.run("run", j, check=0)
    dativo.run("run", j, check=0)
    want = tuple(int(x) for x in my_sql(my, f"SELECT count(*), count(DISTINCT id), sum(id) FROM {my_table}")[0])
    assert lake_rows(tmp_path) == want == (3001, 3001, sum(range(1, 3001)) + 9001)
