"""The iceberg writer, verified with pyiceberg reading through the same SQL catalog."""
import json
import shutil
import uuid

import psycopg2
import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from conftest import PG_DSN, PG_SQLALCHEMY, PG_URL, ROOT, write_csvs, write_job



def catalog(tmp_path, name="dativo"):
    return SqlCatalog(name, uri=f"sqlite:///{tmp_path}/.dativo/catalog.db",
                      warehouse=f"file://{tmp_path}/warehouse")


def file_job(tmp_path, table="raw.events", extra="", checkpoint="rows: 10000", name="ice_job"):
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: file
  config:
    path: data/*.csv
    batch_size: 2000
target:
  writer: iceberg
  config:
    table: {table}
{extra}
checkpoint:
  {checkpoint}
retry:
  attempts: 1
""")


def test_file_to_iceberg_read_back_with_pyiceberg(dativo, tmp_path):
    total = write_csvs(tmp_path / "data", 5, 4000)
    j = file_job(tmp_path, extra="    partition_by: [day]")
    p = dativo.run("run", j, check=0)
    assert "20,000" in p.stdout
    t = catalog(tmp_path).load_table("raw.events")
    data = t.scan().to_arrow()
    assert data.num_rows == total
    assert pc.sum(data["id"]).as_py() == sum(range(total))
    assert data["id"].unique().__len__() == total
    snap = t.current_snapshot()
    assert snap.summary["dativo.job"] == "ice_job"
    state = json.loads(snap.summary["dativo.state"])
    assert state["files"][-1].endswith("part-0004.csv") or state["current"]["file"].endswith("part-0004.csv")
    assert int(snap.summary["total-records"]) == total
    assert [f.name for f in t.spec().fields] == ["day"]
    # A second run with nothing new adds no rows.
    dativo.run("run", j, check=0)
    assert catalog(tmp_path).load_table("raw.events").scan().to_arrow().num_rows == total


def test_postgres_types_to_iceberg(dativo, tmp_path):
    name = f"t_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    cur = conn.cursor()
    try:
        cur.execute(f"""CREATE TABLE {name} (id int8 primary key, b bool, i2 int2, i4 int4,
            f4 float4, f8 float8, n numeric(12,3), t text, by bytea, d date, tm time,
            ts timestamp, tstz timestamptz, u uuid, j jsonb, ai int4[], iv interval, ip inet)""")
        cur.execute(f"""INSERT INTO {name} SELECT i, i % 2 = 0, i, i * 10, i / 4.0, i / 8.0,
            i * 1.125, 'text ' || i, decode('00ff', 'hex'), date '1960-01-01' + i,
            time '10:00' + i * interval '1 second', timestamp '1969-12-31' + i * interval '1 hour',
            timestamptz '2026-01-01 00:00+00' + i * interval '1 minute', md5(i::text)::uuid,
            jsonb_build_object('k', i), ARRAY[i, NULL], make_interval(days => i), '10.0.0.1'
            FROM generate_series(1, 3000) i""")
        cur.execute(f"INSERT INTO {name} (id) VALUES (0)")
        j = write_job(tmp_path / "pg.yaml", f"""name: pg_ice
source:
  reader: postgres
  config: {{url: "{PG_URL}", table: {name}, batch_size: 1000, partitions: 2}}
target:
  writer: iceberg
  config: {{table: lake.pg_types, partition_by: ["month(tstz)", "bucket(4, id)"]}}
""")
        dativo.run("run", j, check=0)
        data = catalog(tmp_path).load_table("lake.pg_types").scan().to_arrow()
        assert data.num_rows == 3001
        rows = {r["id"]: r for r in data.to_pylist()}
        cur.execute(f"SELECT id, n, t, d, ts, tstz, f8, ai FROM {name} WHERE id > 0")
        for i, n, t, d, ts, tstz, f8, ai in cur.fetchall():
            r = rows[i]
            assert (r["n"], r["t"], r["d"], r["ts"], r["f8"], r["ai"]) == (n, t, d, ts, f8, ai)
            assert r["tstz"] == tstz
        assert all(v is None for k, v in rows[0].items() if k != "id")
    finally:
        cur.execute(f"DROP TABLE IF EXISTS {name}")
        conn.close()


def test_schema_evolution_and_incompatible_change(dativo, tmp_path):
    write_csvs(tmp_path / "data", 1, 100)
    j = file_job(tmp_path)
    dativo.run("run", j, check=0)
    # A new file with an extra nullable column: the table gains it.
    (tmp_path / "data/part-9000.csv").write_text("id,name,amount,day,extra\n100,n,1.5,2026-01-02,hello\n")
    j2 = write_job(tmp_path / "ice_job.yaml", (tmp_path / "ice_job.yaml").read_text()
                   .replace("    path: data/*.csv", "    path: data/part-9*.csv"))
    dativo.run("run", j2, check=0)
    t = catalog(tmp_path).load_table("raw.events")
    assert "extra" in [f.name for f in t.schema().fields]
    data = t.scan().to_arrow()
    assert data.num_rows == 101 and data["extra"].null_count == 100
    # A column changing type is refused, naming it.
    (tmp_path / "data/part-9001.csv").write_text("id,name,amount,day,extra\nabc,n,1.5,2026-01-02,x\n")
    p = dativo.run("run", write_job(tmp_path / "ice_job.yaml", (tmp_path / "ice_job.yaml").read_text()
                                    .replace("part-9*.csv", "part-9001.csv")))
    assert p.returncode == 4 and "column `id`" in p.stdout and "incompatible" in p.stdout, p.stdout


def test_sigkill_iceberg_exactly_once(dativo, tmp_path):
    total = write_csvs(tmp_path / "data", 20, 5000)
    j = file_job(tmp_path, checkpoint="rows: 500")
    def finished():
        # This load finished between kills: it must be exact; start another.
        data = catalog(tmp_path).load_table("raw.events").scan().to_arrow()
        assert data.num_rows == total and len(data["id"].unique()) == total
        shutil.rmtree(tmp_path / ".dativo")
        shutil.rmtree(tmp_path / "warehouse")
    kills = dativo.kill_loop(j, kills=5, rounds=40, seed=7, max_sleep=0.5, finished=finished)
    for _ in range(5):
        if dativo.run("run", j).returncode == 0:
            break
    data = catalog(tmp_path).load_table("raw.events").scan().to_arrow()
    assert kills >= 5
    assert data.num_rows == total
    assert data["id"].unique().__len__() == total


def test_two_jobs_commit_to_one_table_concurrently(dativo, tmp_path):
    write_csvs(tmp_path / "data", 4, 3000)
    write_csvs(tmp_path / "data2", 4, 3000, start_id=100000)
    j1 = file_job(tmp_path, name="job_a", checkpoint="rows: 1000")
    j2 = write_job(tmp_path / "job_b.yaml", j1.read_text().replace("name: job_a", "name: job_b")
                   .replace("data/*.csv", "data2/*.csv"))
    procs = [dativo.popen("run", j, "--no-progress") for j in (j1, j2)]
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, out + err
    data = catalog(tmp_path).load_table("raw.events").scan().to_arrow()
    assert data.num_rows == 24000 and data["id"].unique().__len__() == 24000


def test_credentials_never_land_in_metadata_or_logs(dativo, tmp_path):
    write_csvs(tmp_path / "data", 1, 10)
    secret = "pg-secret-pw-4242"
    j = file_job(tmp_path, extra='    catalog: {uri: "postgres://postgres:${env:CAT_PW}@127.0.0.1:1/test"}')
    p = dativo.run("run", j, env={"CAT_PW": secret})
    # At once (the catalog's pool would retry a refused connection for 30 s), naming where.
    assert p.returncode == 3, p.stdout + p.stderr
    assert "cannot reach the Iceberg catalog's database at 127.0.0.1:1" in p.stdout, p.stdout
    assert secret not in p.stdout + p.stderr


def test_iceberg_sql_catalog_on_postgres(dativo, tmp_path):
    write_csvs(tmp_path / "data", 2, 500)
    ns = f"ns_{uuid.uuid4().hex[:8]}"
    j = file_job(tmp_path, table=f"{ns}.events",
                 extra=f'    catalog: {{uri: "{PG_URL}"}}\n    warehouse: {tmp_path}/pgwh')
    dativo.run("run", j, check=0)
    cat = SqlCatalog("dativo", uri=PG_SQLALCHEMY,
                     warehouse=f"file://{tmp_path}/pgwh")
    t = cat.load_table(f"{ns}.events")
    assert t.scan().to_arrow().num_rows == 1000
    cat.drop_table(f"{ns}.events")


def test_rest_catalog_unreachable_is_a_clear_connection_error(dativo, tmp_path):
    # No Iceberg REST server runs here; this covers configuration, the error and redaction.
    write_csvs(tmp_path / "data", 1, 10)
    j = file_job(tmp_path, extra='    catalog: {type: rest, uri: "http://127.0.0.1:1/catalog", token: "${env:TOK}"}')
    p = dativo.run("run", j, env={"TOK": "rest-token-do-not-print"})
    assert p.returncode == 3, p.stdout
    assert "http://127.0.0.1:1/catalog" in p.stdout and "REST catalog" in p.stdout
    assert "rest-token-do-not-print" not in p.stdout + p.stderr
    p = dativo.run("validate", file_job(tmp_path, extra="    catalog: {type: rest}"))
    assert p.returncode == 2 and "catalog.uri" in p.stderr
