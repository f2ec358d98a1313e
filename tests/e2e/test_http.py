"""The `http` reader against a REST API on loopback (tests/e2e/http_api.py): every pagination
style and auth kind, 429/5xx bursts, malformed JSON, schema drift, incremental runs and a
SIGKILLed run resumed — verified with duckdb/pyarrow/pyiceberg."""
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request

import duckdb
import pytest

from conftest import free_port, wait_for_port, write_job

HERE = os.path.dirname(__file__)


class Api:
    def __init__(self, records, fault_every=0):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "http_api.py"), str(self.port),
                                      "--records", str(records), "--fault-every", str(fault_every)])
        wait_for_port(self.port, 20)

    def stats(self):
        return json.loads(urllib.request.urlopen(self.base + "/admin/stats").read())

    def add(self, n):
        urllib.request.urlopen(urllib.request.Request(f"{self.base}/admin/add?n={n}", method="POST")).read()


@pytest.fixture
def api_factory():
    apis = []

    def make(records, fault_every=0):
        a = Api(records, fault_every)
        apis.append(a)
        return a
    yield make
    for a in apis:
        a.proc.kill()
        a.proc.wait()


def lake_ids(path):
    files = [str(p) for p in path.glob("*.parquet")]
    if not files:
        return []
    return [r[0] for r in duckdb.execute(f"SELECT id FROM read_parquet({files!r}) ORDER BY id").fetchall()]


def job(tmp_path, source, name="api", target=None, checkpoint=5000):
    target = target or f"{{writer: parquet, config: {{path: {tmp_path}/lake}}}}"
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: http
  config:
{source}
target: {target}
checkpoint: {{rows: {checkpoint}}}
""")


INCREMENTAL = """    incremental: {cursor_field: updated_at, param: updated_since, primary_key: id}"""


def test_100k_records_over_1000_pages_with_faults_then_only_new_ones(dativo, tmp_path, api_factory):
    api = api_factory(100_000, fault_every=7)
    j = job(tmp_path, f"""    url: {api.base}/v1/page
    auth: {{type: bearer, token: "${{env:API_TOKEN}}"}}
    records: $.data.items
    pagination: {{type: page, param: page, size_param: per_page, size: 100}}
    backoff: 10ms
{INCREMENTAL}""")
    env = {"API_TOKEN": "test-bearer-token"}
    r = dativo.run("run", j, "--no-progress", env=env, check=0)
    assert "test-bearer-token" not in r.stdout + r.stderr
    ids = lake_ids(tmp_path / "lake")
    assert ids == list(range(100_000))
    s = api.stats()
    assert s["faults"] >= 100, s  # 429s and 5xx were injected and retried
    t = duckdb.execute(f"SELECT typeof(id), typeof(amount), typeof(tags), max(updated_at) "
                       f"FROM read_parquet('{tmp_path}/lake/*.parquet') GROUP BY ALL").fetchone()
    assert t[:2] == ("BIGINT", "DOUBLE") and t[2] == "VARCHAR" and t[3] == "2026-01-02T03:46:39Z", t
    assert json.loads(duckdb.execute(f"SELECT meta FROM read_parquet('{tmp_path}/lake/*.parquet') WHERE id = 8").fetchone()[0]) == {"source": "api", "n": 1}

    # A second run fetches only the new records.
    served = api.stats()["served"]
    api.add(250)
    dativo.run("run", j, "--no-progress", env=env, check=0)
    assert lake_ids(tmp_path / "lake") == list(range(100_250))
    assert api.stats()["served"] - served <= 251 + 100  # the new pages, not the 100k again
    r = dativo.run("run", j, "--no-progress", env=env, check=0)
    assert lake_ids(tmp_path / "lake") == list(range(100_250))


@pytest.mark.parametrize("style,source", [
    ("offset+basic", """    url: {base}/basic/offset
    auth: {{type: basic, username: user, password: "${{env:API_PW}}"}}
    records: $.results
    pagination: {{type: offset, limit: 100}}"""),
    ("cursor+api key header", """    url: {base}/apikey/cursor
    auth: {{type: api_key, value: "${{env:API_KEY}}"}}
    records: $.items
    params: {{limit: "100"}}
    pagination: {{type: cursor, cursor_path: $.meta.next_cursor, param: cursor}}"""),
    ("next url+api key query", """    url: {base}/apikey/next
    auth: {{type: api_key, value: "${{env:API_KEY}}", name: api_key, in: query}}
    records: $.records
    pagination: {{type: next_url, next_path: $.links.next}}"""),
    ("link header+oauth2", """    url: {base}/oauth/link
    auth: {{type: oauth2, token_url: "{base}/oauth/token", client_id: client, client_secret: "${{env:CLIENT_SECRET}}"}}
    pagination: {{type: link_header}}"""),
    ("POST body+bearer", """    url: {base}/search
    method: POST
    send_in: body
    body: {{filter: all}}
    auth: {{type: bearer, token: "${{env:API_TOKEN}}"}}
    records: $.results
    pagination: {{type: offset, limit: 100}}"""),
])
def test_pagination_styles_and_auth(dativo, tmp_path, api_factory, style, source):
    api = api_factory(1050, fault_every=5)
    env = {"API_PW": "pass", "API_KEY": "test-api-key", "CLIENT_SECRET": "client-secret",
           "API_TOKEN": "test-bearer-token"}
    # Commit every 200 rows: mid-run states (the next page, a next URL) get stored too.
    j = job(tmp_path, source.format(base=api.base) + "\n    backoff: 10ms\n    batch_size: 200\n" + INCREMENTAL,
            checkpoint=200)
    r = dativo.run("run", j, "--no-progress", env=env, check=0)
    stored = "".join(p.read_text() for p in (tmp_path / "lake/_dativo/commits").glob("*.json"))
    assert '"resume"' in stored, style
    for secret in env.values():
        assert secret not in r.stdout + r.stderr + stored, style
    assert lake_ids(tmp_path / "lake") == list(range(1050)), style
    api.add(30)
    dativo.run("run", j, "--no-progress", env=env, check=0)
    assert lake_ids(tmp_path / "lake") == list(range(1080)), style


def test_errors_name_the_url_without_secrets(dativo, tmp_path, api_factory):
    api = api_factory(10)
    j = job(tmp_path, f"""    url: {api.base}/v1/page
    auth: {{type: bearer, token: "${{env:API_TOKEN}}"}}
    records: $.data.items""", name="wrong_token")
    r = dativo.run("run", j, "--no-progress", env={"API_TOKEN": "not-the-token"})
    assert r.returncode == 3, r.stdout
    assert f"{api.base}/v1/page" in r.stdout and "401" in r.stdout and "not-the-token" not in r.stdout + r.stderr
    j = job(tmp_path, f"""    url: {api.base}/malformed
    records: $.data""", name="malformed")
    r = dativo.run("run", j, "--no-progress")
    assert r.returncode == 4 and "not JSON" in r.stdout and "/malformed" in r.stdout, r.stdout
    j = job(tmp_path, f"""    url: {api.base}/nothing/here
    auth: {{type: bearer, token: test-bearer-token}}""", name="missing")
    r = dativo.run("run", j, "--no-progress")
    assert r.returncode == 2 and "404" in r.stdout and "/nothing/here" in r.stdout, r.stdout
    j = job(tmp_path, """    url: http://127.0.0.1:9/unreachable
    max_retries: 1
    backoff: 10ms""", name="down")
    r = dativo.run("run", j, "--no-progress")
    # Never reached: a connection error (exit 3), as the database readers say.
    assert r.returncode == 3 and "127.0.0.1:9/unreachable" in r.stdout, r.stdout


def test_schema_drift(dativo, tmp_path, api_factory):
    api = api_factory(500)
    # A field that appears later is left out (with a warning) and picked up by the next run.
    j = job(tmp_path, f"""    url: {api.base}/v1/drift
    auth: {{type: bearer, token: test-bearer-token}}
    records: $.data.items
    pagination: {{type: page, size_param: per_page, size: 100}}""", name="drift")
    r = dativo.run("run", j, "--no-progress", check=0)
    assert "extra" in r.stderr and "not in the schema" in r.stderr
    assert lake_ids(tmp_path / "lake") == list(range(500))
    # A type change against a declared schema is a clear error naming the field.
    j = job(tmp_path, f"""    url: {api.base}/v1/drift?typechange=1
    auth: {{type: bearer, token: test-bearer-token}}
    records: $.data.items
    schema: [{{name: id, type: int64}}, {{name: amount, type: float64}}, {{name: updated_at, type: timestamptz}}]
    pagination: {{type: page, size_param: per_page, size: 100}}""", name="typechange",
              target=f"{{writer: parquet, config: {{path: {tmp_path}/lake2}}}}")
    r = dativo.run("run", j, "--no-progress")
    assert r.returncode == 4 and "amount" in r.stdout and "changed a field's type" in r.stdout, r.stdout
    # What committed before the bad page stands: whole pages only.
    assert len(lake_ids(tmp_path / "lake2")) % 100 == 0


def test_a_killed_run_resumes_exactly(dativo, tmp_path, api_factory):
    api = api_factory(20_000, fault_every=11)
    j = write_job(tmp_path / "job.yaml", f"""name: resume
source:
  reader: http
  config:
    url: {api.base}/v1/cursor
    auth: {{type: bearer, token: test-bearer-token}}
    records: $.items
    params: {{limit: "100"}}
    pagination: {{type: cursor, cursor_path: $.meta.next_cursor}}
    requests_per_second: 150
    batch_size: 300
    backoff: 10ms
{INCREMENTAL}
target: {{writer: parquet, config: {{path: {tmp_path}/lake}}}}
checkpoint: {{rows: 300}}
""")
    rng = random.Random(5)
    kills = 0
    for _ in range(3):
        p = dativo.popen("run", j, "--no-progress")
        time.sleep(rng.uniform(0.3, 0.8))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
    assert kills >= 2
    dativo.run("run", j, "--no-progress", check=0)
    assert lake_ids(tmp_path / "lake") == list(range(20_000))


def test_into_iceberg(dativo, tmp_path, api_factory):
    from pyiceberg.catalog.sql import SqlCatalog
    api = api_factory(2_000, fault_every=9)
    j = job(tmp_path, f"""    url: {api.base}/v1/offset
    auth: {{type: bearer, token: test-bearer-token}}
    records: $.results
    pagination: {{type: offset, limit: 100}}
    backoff: 10ms
{INCREMENTAL}""", target=f"""
  writer: iceberg
  config:
    table: api.records
    catalog: {{uri: "sqlite://{tmp_path}/catalog.db"}}
    warehouse: {tmp_path}/warehouse""")
    dativo.run("run", j, "--no-progress", check=0)
    api.add(100)
    dativo.run("run", j, "--no-progress", check=0)
    cat = SqlCatalog("dativo", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/warehouse")
    t = cat.load_table("api.records").scan().to_arrow()
    assert sorted(t["id"].to_pylist()) == list(range(2_100))


def test_pagination_mistakes_stop_with_a_clear_error(dativo, tmp_path, api_factory):
    api = api_factory(300)
    # The API ignores `pg`: page 1 again and again — stopped, not looped.
    j = job(tmp_path, f"""    url: {api.base}/v1/page
    auth: {{type: bearer, token: test-bearer-token}}
    records: $.data.items
    pagination: {{type: page, param: pg}}""", name="loop")
    r = dativo.run("run", j, "--no-progress")
    assert r.returncode == 4 and "same page twice" in r.stdout and "`pg`" in r.stdout, r.stdout
    # A typo in `records` is an error, not an empty (successful) load.
    j = job(tmp_path, f"""    url: {api.base}/v1/page
    auth: {{type: bearer, token: test-bearer-token}}
    records: $.data.itmes""", name="typo")
    r = dativo.run("run", j, "--no-progress")
    assert r.returncode == 4 and "has no `$.data.itmes`" in r.stdout, r.stdout
