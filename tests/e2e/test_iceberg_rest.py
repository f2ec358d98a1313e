"""The iceberg writer on a REST catalog (issue 9): dativo's iceberg-rust REST client against a
REST catalog server (tests/e2e/rest_catalog.py: the REST protocol over pyiceberg's SqlCatalog),
verified with pyiceberg's own RestCatalog client. Incremental runs, the state in the snapshot
summary, exactly-once after SIGKILL."""
import json
import signal
import subprocess
import sys
import time

import pytest
from pyiceberg.catalog.rest import RestCatalog

from conftest import PG_URL, ROOT, free_port, wait_for_port, write_csvs, write_job

HERE = ROOT / "tests/e2e"


@pytest.fixture
def rest(tmp_path):
    port = free_port()
    (tmp_path / "wh").mkdir()
    p = subprocess.Popen([sys.executable, str(HERE / "rest_catalog.py"), str(port),
                          str(tmp_path / "rest.db"), str(tmp_path / "wh")])
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    p.kill()
    p.wait()


def job(tmp_path, uri, checkpoint=5000):
    return write_job(tmp_path / "rest.yaml", f"""name: rest_job
source:
  reader: file
  config: {{path: "{tmp_path}/src/*.csv"}}
target:
  writer: iceberg
  config:
    catalog: {{type: rest, uri: "{uri}", token: "${{env:REST_TOKEN}}"}}
    warehouse: {tmp_path}/wh
    table: shop.orders
    partition_by: ["bucket(4, id)"]
checkpoint: {{rows: {checkpoint}}}
""")


def scan(uri):
    t = RestCatalog("dativo", uri=uri).load_table("shop.orders")
    rows = t.scan().to_arrow()
    ids = rows.column("id").to_pylist()
    return t, len(ids), len(set(ids)), sum(ids)


def test_rest_catalog_incremental(dativo, tmp_path, rest):
    env = {"REST_TOKEN": "rest-secret-token"}
    n = write_csvs(tmp_path / "src", files=3, rows=4000)
    p = dativo.run("run", job(tmp_path, rest), "--no-progress", env=env, check=0)
    assert "REST catalog" in p.stdout and "rest-secret-token" not in p.stdout + p.stderr
    t, count, distinct, total = scan(rest)
    assert (count, distinct, total) == (n, n, sum(range(n)))
    state = json.loads(t.current_snapshot().summary.additional_properties["dativo.state"])
    assert len(state["files"]) == 3
    m = write_csvs(tmp_path / "src2", files=1, rows=2500, start_id=n)
    (tmp_path / "src2" / "part-0000.csv").rename(tmp_path / "src" / "part-0003.csv")
    dativo.run("run", job(tmp_path, rest), "--no-progress", env=env, check=0)
    dativo.run("run", job(tmp_path, rest), "--no-progress", env=env, check=0)  # nothing new
    _, count, distinct, total = scan(rest)
    assert (count, distinct, total) == (m, m, sum(range(m)))


def test_rest_catalog_sigkill_exactly_once(dativo, tmp_path, rest):
    n = write_csvs(tmp_path / "src", files=20, rows=5000)
    j = job(tmp_path, rest, checkpoint=2000)
    env = {"REST_TOKEN": "t"}
    kills = 0
    # Early moments too: on a quiet machine a whole run can take under 0.4 s.
    for delay in (0.1, 0.4, 0.2, 0.7, 0.3, 1.0, 0.15, 0.5):
        p = dativo.popen("run", j, "--no-progress", env=env)
        time.sleep(delay)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate()
    dativo.run("run", j, "--no-progress", env=env, check=0)
    _, count, distinct, total = scan(rest)
    assert kills >= 1
    assert (count, distinct, total) == (n, n, sum(range(n)))


# ----------------------------------------------------------------------------- overwrite, merge
# dativo's own snapshots (overwrite, merge) committed through the REST catalog's commit endpoint:
# the server (pyiceberg's SqlCatalog) checks the requirements and applies add-snapshot and
# set-snapshot-ref; pyiceberg's RestCatalog client reads the result.

def pg_sql(pg, text, *args):
    with pg.cursor() as c:
        c.execute(text, args or None)
        return c.fetchall() if c.description else None


def rest_job(tmp_path, uri, name, source, target, auth="credential: \"${env:REST_CRED}\""):
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: postgres
  config:
    url: {PG_URL}
{source}
target:
  writer: iceberg
  config:
    catalog: {{type: rest, uri: "{uri}", {auth}}}
    warehouse: {tmp_path}/wh
{target}
retry:
  attempts: 1
""")


REST_ENV = {"REST_CRED": "client:rest-secret-credential", "REST_TOKEN": "rest-secret-token"}


def rest_rows(uri, ident, cols):
    """The table's rows (`cols`, sorted by the first), as pyiceberg's RestCatalog reads them."""
    t = RestCatalog("dativo", uri=uri).load_table(ident)
    data = t.scan().to_arrow().select(cols).to_pylist()
    return t, sorted(tuple(r[c] for c in cols) for r in data)


def test_rest_catalog_overwrite_replaces_the_table_each_run(dativo, tmp_path, rest, pg, table):
    pg_sql(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, region text NOT NULL, amount bigint)")
    pg_sql(pg, f"""INSERT INTO {table} SELECT i, (ARRAY['eu','us','apac'])[1 + i % 3], i * 10
        FROM generate_series(1, 20000) i""")
    job = rest_job(tmp_path, rest, "rest_ow", f"    table: {table}",
                   "    table: lake.ow\n    mode: overwrite\n    partition_by: [region]")
    want = lambda: sorted(pg_sql(pg, f"SELECT id, region, amount FROM {table}"))  # noqa: E731
    p = dativo.run("run", job, "--no-progress", env=REST_ENV, check=0)
    assert "rest-secret-credential" not in p.stdout + p.stderr
    t, rows = rest_rows(rest, "lake.ow", ["id", "region", "amount"])
    assert rows == want()
    first = t.current_snapshot().snapshot_id
    # Rows deleted, changed and added: the second run's rows replace the first's.
    pg_sql(pg, f"DELETE FROM {table} WHERE id % 7 = 0")
    pg_sql(pg, f"UPDATE {table} SET amount = -amount, region = 'eu' WHERE id % 5 = 0")
    pg_sql(pg, f"INSERT INTO {table} SELECT i, 'latam', i FROM generate_series(20001, 21000) i")
    dativo.run("run", job, "--no-progress", env=REST_ENV, check=0)
    t, rows = rest_rows(rest, "lake.ow", ["id", "region", "amount"])
    assert rows == want()
    snap = t.current_snapshot()
    assert snap.summary.operation.value == "overwrite", snap.summary
    assert snap.parent_snapshot_id == first
    assert json.loads(snap.summary.additional_properties["dativo.state"]) is not None
    assert t.metadata.refs["main"].snapshot_id == snap.snapshot_id
    # The table stays readable by its metadata file alone (the one the catalog wrote).
    assert t.metadata_location.startswith("file://" + str(tmp_path / "wh"))


def test_rest_catalog_merge_upserts_and_deletes_by_key(dativo, tmp_path, rest, pg, table):
    pg_sql(pg, f"CREATE TABLE {table} (seq bigint PRIMARY KEY, id bigint, v text, _dativo_op text)")
    pg_sql(pg, f"INSERT INTO {table} SELECT i, i, 'v' || i, 'U' FROM generate_series(1, 5000) i")
    job = rest_job(tmp_path, rest, "rest_merge", f"    table: {table}\n    cursor: seq",
                   "    table: lake.merged\n    mode: merge\n    primary_key: [id]",
                   auth="token: \"${env:REST_TOKEN}\"")
    want = lambda: sorted(pg_sql(pg, f"""SELECT id, seq, v FROM (SELECT DISTINCT ON (id) * FROM {table}
        ORDER BY id, seq DESC) l WHERE _dativo_op <> 'D'"""))  # noqa: E731
    dativo.run("run", job, "--no-progress", env=REST_ENV, check=0)
    _, rows = rest_rows(rest, "lake.merged", ["id", "seq", "v"])
    assert rows == want()
    # Updates of 1..300, deletions of 301..600 (`_dativo_op` 'D'), new keys 5001..5200.
    pg_sql(pg, f"""
        INSERT INTO {table} SELECT 10000 + i, i, 'upd' || i, 'U' FROM generate_series(1, 300) i;
        INSERT INTO {table} SELECT 20000 + i, i, NULL, 'D' FROM generate_series(301, 600) i;
        INSERT INTO {table} SELECT 30000 + i, i, 'new' || i, 'U' FROM generate_series(5001, 5200) i""")
    dativo.run("run", job, "--no-progress", env=REST_ENV, check=0)
    t, rows = rest_rows(rest, "lake.merged", ["id", "seq", "v"])
    assert rows == want() and len(rows) == 5200 - 300
    snap = t.current_snapshot()
    assert snap.summary.operation.value == "overwrite", snap.summary
    assert "dativo.merge.rows-read" in snap.summary.additional_properties
    assert "_dativo_op" not in [f.name for f in t.schema().fields]
    # Deletions only: a delete snapshot; a run with nothing new commits nothing.
    pg_sql(pg, f"INSERT INTO {table} SELECT 40000 + i, i, NULL, 'D' FROM generate_series(1, 50) i")
    dativo.run("run", job, "--no-progress", env=REST_ENV, check=0)
    t, rows = rest_rows(rest, "lake.merged", ["id", "seq", "v"])
    assert rows == want()
    assert t.current_snapshot().summary.operation.value == "delete"
    before = t.current_snapshot().snapshot_id
    dativo.run("run", job, "--no-progress", env=REST_ENV, check=0)
    assert RestCatalog("dativo", uri=rest).load_table("lake.merged").current_snapshot().snapshot_id == before


def test_rest_catalog_concurrent_merges_retry_conflicts(dativo, tmp_path, rest, pg):
    """Two jobs merge into one table at once: the loser of a commit race gets 409 from the
    catalog, reloads, plans again and commits; no key is lost or doubled."""
    import uuid
    names = [f"t_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    try:
        jobs = []
        for k, n in enumerate(names):
            pg_sql(pg, f"CREATE TABLE {n} (seq bigint PRIMARY KEY, id bigint, v text)")
            pg_sql(pg, f"""INSERT INTO {n} SELECT i, {k} * 1000000 + i, 'v' || i
                FROM generate_series(1, 100000) i""")
            jobs.append(rest_job(tmp_path, rest, f"conc{k}", f"    table: {n}\n    cursor: seq",
                                 "    table: lake.conc\n    mode: merge\n    primary_key: [id]"))
        conflicts = 0
        for rnd in range(1, 5):
            ps = [dativo.popen("run", j, "--no-progress", env=REST_ENV) for j in jobs]
            for p in ps:
                out, err = p.communicate(timeout=300)
                assert p.returncode == 0, out + err
                conflicts += err.count("commit conflict")
            for k, n in enumerate(names):  # updates of 5000 keys of each job
                pg_sql(pg, f"""INSERT INTO {n} SELECT 1000000 * {rnd} + i, {k} * 1000000 + i, 'r{rnd}'
                    FROM generate_series(1, 5000) i""")
        for j in jobs:
            dativo.run("run", j, "--no-progress", env=REST_ENV, check=0)
        _, rows = rest_rows(rest, "lake.conc", ["id", "v"])
        want = sorted((k * 1000000 + i, "r4" if i <= 5000 else f"v{i}")
                      for k in range(2) for i in range(1, 100001))
        print(f"commit conflicts resolved: {conflicts}")
        assert rows == want
    finally:
        for n in names:
            pg_sql(pg, f"DROP TABLE IF EXISTS {n}")
