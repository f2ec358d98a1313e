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

from conftest import ROOT, free_port, wait_for_port, write_csvs, write_job

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
    for delay in (0.4, 0.7, 1.0, 0.5, 0.8):
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
