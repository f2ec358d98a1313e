"""The mysql reader against the local MariaDB (127.0.0.1:3306, root without password, db
`test`), verified with PyMySQL on the source side and pyarrow/duckdb on the lake side."""
import json
import os
import time
import uuid

import pyarrow.parquet as pq
import pymysql
import pytest

from conftest import MY_URL, my_sql, parquet_stats, with_user, write_job



@pytest.fixture
def table(my_table):
    """A fresh MariaDB table name (conftest's `table` is PostgreSQL's)."""
    return my_table


sql = my_sql


def job(tmp_path, table, extra="", tail=""):
    return write_job(tmp_path / "job.yaml", f"""name: my_job
source:
  reader: mysql
  config:
    url: {MY_URL}
    table: {table}
{extra}
target:
  writer: parquet
  config:
    path: lake/out
{tail}
""")


def test_types_round_trip(dativo, tmp_path, my, table):
    sql(my, f"""CREATE TABLE {table} (id BIGINT PRIMARY KEY, ti TINYINT, tu TINYINT UNSIGNED,
        i INT, bu BIGINT UNSIGNED, f FLOAT, d DOUBLE, n DECIMAL(12,3), vc VARCHAR(20), t TEXT,
        bl BLOB, dt DATE, dtm DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME(6), y YEAR,
        e ENUM('a','b'), bt BIT(8))""")
    sql(my, f"""INSERT INTO {table} SELECT seq, seq % 100, seq % 200, seq * 10,
        18446744073709551615 - seq, seq / 4, seq / 8, seq * 1.125, CONCAT('vc', seq),
        CONCAT('héllo ', seq), X'00FF', DATE_ADD('2026-01-01', INTERVAL seq DAY),
        TIMESTAMPADD(MICROSECOND, seq * 1000001, '2026-01-01'),
        TIMESTAMPADD(SECOND, seq, '2026-01-01'), SEC_TO_TIME(seq + 0.25), 2026,
        IF(seq % 2 = 0, 'a', 'b'), b'00000101' FROM seq_1_to_3000""")
    sql(my, f"INSERT INTO {table} (id) VALUES (0)")
    # Edge values: dates before 1970, extreme integers and decimals.
    sql(my, f"""INSERT INTO {table} (id, ti, tu, i, bu, d, n, dt, dtm, tm) VALUES
        (9001, -128, 255, -2147483648, 18446744073709551615, -1.7976931348623157e308,
         -999999999.999, '1000-01-01', '1969-07-20 20:17:40.000001', '23:59:59.999999')""")
    dativo.run("run", job(tmp_path, table, "    batch_size: 700\n    partitions: 3"), check=0)
    lake = {r["id"]: r for r in pq.ParquetDataset(tmp_path / "lake/out").read().to_pylist()}
    assert len(lake) == 3002
    e = lake[9001]
    assert (e["ti"], e["tu"], e["i"], e["bu"]) == (-128, 255, -2147483648, 18446744073709551615)
    assert e["d"] == -1.7976931348623157e308 and str(e["n"]) == "-999999999.999"
    assert str(e["dt"]) == "1000-01-01" and str(e["dtm"]) == "1969-07-20 20:17:40.000001"
    assert str(e["tm"]) == "23:59:59.999999"
    assert all(v is None for k, v in lake[0].items() if k != "id")
    with my.cursor(pymysql.cursors.DictCursor) as c:
        c.execute(f"SELECT * FROM {table} WHERE id > 0 AND id < 9000")
        rows = c.fetchall()
    for src in rows:
        got = lake[src["id"]]
        for k in ["ti", "tu", "i", "bu", "d", "n", "vc", "t", "dt", "dtm", "y", "e"]:
            assert got[k] == src[k], (k, got[k], src[k])
        assert got["f"] == pytest.approx(src["f"])
        assert bytes(got["bl"]) == src["bl"]
        assert got["ts"].replace(tzinfo=None) == src["ts"]
        assert got["tm"].hour * 3600 + got["tm"].minute * 60 + got["tm"].second + \
            got["tm"].microsecond / 1e6 == src["tm"].total_seconds()
        assert got["bt"] == 5


def test_incremental_with_lookback(dativo, tmp_path, my, table):
    sql(my, f"CREATE TABLE {table} (id BIGINT AUTO_INCREMENT PRIMARY KEY, v INT, updated_at DATETIME(6) NOT NULL)")
    ins = f"INSERT INTO {table} (v, updated_at) SELECT seq, TIMESTAMPADD(SECOND, seq DIV 3, '2026-01-01') FROM seq_{{}}_to_{{}}"
    sql(my, ins.format(1, 20000))
    j = job(tmp_path, table, "    cursor: updated_at\n    lookback: 1h\n    batch_size: 1000\n    partitions: 2",
            "checkpoint:\n  rows: 4000")
    dativo.run("run", j, check=0)
    assert parquet_stats(tmp_path / "lake/out")[:2] == (20000, 20000)
    sql(my, ins.format(19998, 20010))
    sql(my, f"INSERT INTO {table} (v, updated_at) VALUES (-1, '2026-01-01 01:40:00')")
    dativo.run("run", j, check=0)
    dativo.run("run", j, check=0)
    want = sql(my, f"SELECT count(*), count(distinct id), sum(id) FROM {table}")[0]
    assert parquet_stats(tmp_path / "lake/out") == tuple(int(x) for x in want)


def test_clear_errors(dativo, tmp_path, my, table):
    sql(my, f"CREATE TABLE {table} (id INT PRIMARY KEY, g GEOMETRY)")
    sql(my, f"INSERT INTO {table} VALUES (1, POINT(1, 2))")

    def run(t, url=MY_URL, extra=""):
        j = write_job(tmp_path / "e.yaml", f"""name: my_err
source:
  reader: mysql
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

    p = run(table, url="mysql://root:s3cretpass@127.0.0.1:1/test")
    assert p.returncode == 3 and "connecting to MySQL at 127.0.0.1:1/test" in p.stdout, p.stdout
    assert "s3cretpass" not in p.stdout + p.stderr
    p = run(table, url=with_user(MY_URL, "no_such_user_dativo", "pw"))
    assert p.returncode == 3 and "authentication failed" in p.stdout, p.stdout
    p = run("no_such_table_dativo")
    assert p.returncode == 4 and "doesn't exist" in p.stdout, p.stdout
    p = run(table)
    assert p.returncode == 4 and "`g` (geometry)" in p.stdout, p.stdout
    assert run(table, extra="    cast_unsupported_to_text: true").returncode == 0
    sql(my, "DROP USER IF EXISTS 'dativo_noaccess'@'%'")
    sql(my, "CREATE USER 'dativo_noaccess'@'%' IDENTIFIED BY 'pw'")
    try:
        p = run(table, url=with_user(MY_URL, "dativo_noaccess", "pw"))
        assert p.returncode == 3 and ("permission denied" in p.stdout or "authentication failed" in p.stdout), p.stdout
    finally:
        sql(my, "DROP USER IF EXISTS 'dativo_noaccess'@'%'")


def test_killed_connection_is_retried_without_duplicates(dativo, tmp_path, my, table):
    sql(my, f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, payload VARCHAR(64))")
    sql(my, f"INSERT INTO {table} SELECT seq, REPEAT('x', 50) FROM seq_1_to_300000")
    j = job(tmp_path, table, "    batch_size: 1000", "checkpoint:\n  rows: 2000\nretry:\n  attempts: 5\n  backoff: 100ms")
    p = dativo.popen("run", j, "--no-progress")
    killed = 0
    deadline = time.monotonic() + 60
    while killed == 0 and time.monotonic() < deadline and p.poll() is None:
        for (pid,) in sql(my, "SELECT id FROM information_schema.PROCESSLIST WHERE INFO LIKE "
                              f"'SELECT%%ORDER BY%%' AND INFO LIKE '%%{table}%%' AND id <> CONNECTION_ID()"):
            try:
                sql(my, f"KILL {pid}")
                killed += 1
            except pymysql.err.OperationalError:
                pass
        time.sleep(0.01)
    out, err = p.communicate(timeout=120)
    assert killed > 0, "no reading connection was seen to kill"
    assert p.returncode == 0, out + err
    assert parquet_stats(tmp_path / "lake/out") == (300000, 300000, sum(range(1, 300001)))
    runs = json.loads(dativo.run("runs", j, "--json", check=0).stdout)
    assert runs[0]["attempts"] >= 2
