"""Two runs of one job at the same time (issue 15, items 1–2): two `dativo` processes, each with
its own state store (as two pods with ephemeral state would have), write the same S3 prefix or
the same Iceberg table. Whatever the overlap, the lake ends exactly equal to the source — no row
lost, none twice — and a run that met the other one says so. Each scenario runs 5 times, with
the second run starting at different moments of the first. The Parquet cases run on S3 (moto:
a lease replaced with If-Match) and on Azure Blob (Azurite: a lease of generations, each created
if absent). Verified with pyarrow (the stores' own clients fetch the files) and with pyiceberg
and DuckDB's own Iceberg reader (tables)."""
import json
import os
import signal
import time
import uuid

import boto3
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from azurite import AZ_KEY, AZURE, Azure
from conftest import PG_URL, duckdb_iceberg_query, write_job

ENDPOINT = os.environ.get("DATIVO_TEST_S3_ENDPOINT")
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key"}
BUSY = "is already running"


def pg_source(table):
    return f"""source:
  reader: postgres
  config:
    url: "{PG_URL}"
    table: {table}
    cursor: id
    batch_size: 5000"""


def fill(pg, table, start, n):
    with pg.cursor() as c:
        c.execute(f"CREATE TABLE IF NOT EXISTS {table} (id bigint primary key, name text, amount numeric(12,2))")
        c.execute(f"INSERT INTO {table} SELECT g, 'name-' || g, g % 1000 + 0.25 "
                  f"FROM generate_series({start}, {start + n - 1}) g")


def source_rows(pg, table):
    with pg.cursor() as c:
        c.execute(f"SELECT id, name, amount FROM {table} ORDER BY id")
        return [(i, n, float(a)) for i, n, a in c.fetchall()]


def start(dativo_cls, cwd, job, env=None, args=()):
    cwd.mkdir(parents=True, exist_ok=True)
    return dativo_cls(cwd).popen("run", job, "--no-progress", *args, env=env)


def finish(p, timeout=240):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out + err


def assert_outcomes(results):
    """Each run either succeeded or refused/abandoned because of the other run — never another
    failure, and a refusal names the reason."""
    for code, text in results:
        assert code == 0 or (code == 7 and BUSY in text), f"exit {code}:\n{text}"
    assert any(code == 0 for code, _ in results), results


class S3Lake:
    """The job's prefix on S3 (moto): its lease is one object replaced with If-Match."""
    name = "s3"
    env = KEYS

    def __init__(self):
        self.client = boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1",
                                   aws_access_key_id="testing", aws_secret_access_key="testing")
        self.bucket = f"b-{uuid.uuid4().hex[:12]}"
        self.client.create_bucket(Bucket=self.bucket)

    def target(self):
        return f"""    path: s3://{self.bucket}/lake
    s3:
      endpoint: {ENDPOINT}
      region: us-east-1
      access_key_id: "${{env:AWS_ACCESS_KEY_ID}}"
      secret_access_key: "${{env:AWS_SECRET_ACCESS_KEY}}"
      path_style: true"""

    def keys(self, prefix):
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def get(self, key):
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def table(self):
        """The lake as pyarrow reads it from S3."""
        host = ENDPOINT.split("://")[1]
        fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key="testing",
                               secret_key="testing", region="us-east-1")
        return ds.dataset(f"{self.bucket}/lake", filesystem=fs, format="parquet").to_table()

    def lease(self):
        """The current lease record, and how many lease objects there are."""
        return json.loads(self.get("lake/_dativo/lease.json")), 1


class AzureLake(S3Lake):
    """The job's prefix on Azure Blob (Azurite): opendal has no conditional replace there, so
    the lease is a series of generations, each created if absent (`_dativo/lease/<n>.json`)."""
    name = "azure"
    env = {"AZ_TEST_KEY": AZ_KEY}

    def __init__(self):
        self.store = Azure()
        self.bucket = self.store.bucket

    def target(self):
        return f"    path: az://{self.bucket}/lake\n{self.store.block()}"

    def keys(self, prefix):
        return self.store.list(prefix)

    def get(self, key):
        return self.store.get(key)

    def table(self):
        import io
        import pyarrow as pa
        import pyarrow.parquet as pq
        files = [k for k in self.keys("lake/") if k.endswith(".parquet") and "/_dativo/" not in k]
        return pa.concat_tables(pq.read_table(io.BytesIO(self.get(k))) for k in files)

    def lease(self):
        gens = sorted(k for k in self.keys("lake/_dativo/lease/") if k.endswith(".json"))
        assert gens, "no lease generation on the store"
        return json.loads(self.get(gens[-1])), len(gens)


class GcsLake(AzureLake):
    """The job's prefix on GCS (fake-gcs-server): generations created with ifGenerationMatch=0."""
    name = "gcs"
    env = {}

    def __init__(self):
        from test_gcs_azure import Gcs
        self.store = Gcs()
        self.bucket = self.store.bucket

    def target(self):
        return f"    path: gs://{self.bucket}/lake\n{self.store.block()}"


LAKES = {"s3": (S3Lake, ENDPOINT), "azure": (AzureLake, AZURE),
         "gcs": (GcsLake, os.environ.get("DATIVO_TEST_GCS_ENDPOINT"))}


@pytest.fixture(params=sorted(LAKES))
def lake(request):
    cls, endpoint = LAKES[request.param]
    if not endpoint:
        pytest.skip(f"needs the {request.param} endpoint (scripts/test starts moto and Azurite)")
    return cls()


def lake_job(path, name, table, lake, lease_ttl, checkpoint):
    return write_job(path, f"""name: {name}
{pg_source(table)}
target:
  writer: parquet
  config:
    lease_ttl: {lease_ttl}
{lake.target()}
checkpoint: {{rows: {checkpoint}}}
""")


def test_two_runs_of_one_job_on_one_prefix(tmp_path, pg, table, lake):
    from conftest import Dativo
    job = lake_job(tmp_path / "job.yaml", "twice", table, lake, "5s", 10000)
    refused = 0
    total = 0
    for rnd in range(5):
        fill(pg, table, total, 60_000)
        total += 60_000
        a = start(Dativo, tmp_path / f"pod-a-{rnd}", job, env=lake.env)
        time.sleep(0.15 * rnd)
        b = start(Dativo, tmp_path / f"pod-b-{rnd}", job, env=lake.env)
        results = [finish(a), finish(b)]
        assert_outcomes(results)
        assert not [t for _, t in results if "does not enforce conditional writes" in t], results
        refused += sum(1 for code, _ in results if code == 7)
        data = lake.table()
        got = sorted(zip(data["id"].to_pylist(), data["name"].to_pylist(),
                         [float(x) for x in data["amount"].to_pylist()]))
        assert got == source_rows(pg, table), f"round {rnd}: {len(got)} rows, {len(set(got))} distinct"
        # Every data file is named by a manifest and every manifest's file exists.
        keys = lake.keys("lake/")
        named = set()
        for k in keys:
            if "/_dativo/commits/" in k and k.endswith(".json"):
                m = json.loads(lake.get(k))
                named.update(f"lake/{f['path']}" for f in m["files"])
        files = {k for k in keys if k.endswith(".parquet") and "/_dativo/" not in k}
        assert files == named, (files ^ named)
        lease, objects = lake.lease()
        assert lease["released"], "the last run released its lease"
        assert objects == 1, f"{objects} lease objects left (older generations are deleted)"
    assert refused >= 1, "the runs never overlapped: the test did not test anything"


def test_a_paused_holder_loses_its_lease_and_cannot_commit(tmp_path, pg, table, lake):
    """A run paused (SIGSTOP) past its lease: a second run takes the prefix over, fences it off
    and loads everything; the first, resumed, must fail without committing — the lake stays
    exact."""
    from conftest import Dativo
    fill(pg, table, 0, 200_000)
    job = lake_job(tmp_path / "job.yaml", "paused", table, lake, "3s", 5000)
    took_over = 0
    for rnd in range(2):
        a = start(Dativo, tmp_path / f"a{rnd}", job, env=lake.env)
        # Pause it once it holds the lease and has committed something (or at least started).
        deadline = time.time() + 30
        while time.time() < deadline:
            keys = lake.keys("lake/_dativo/")
            if any("lease" in k for k in keys) and any("/commits/" in k for k in keys):
                break
            time.sleep(0.05)
        a.send_signal(signal.SIGSTOP)
        try:
            time.sleep(4.5)  # past lease_ttl
            b = start(Dativo, tmp_path / f"b{rnd}", job, env=lake.env)
            code_b, text_b = finish(b)
        finally:
            # Never leave it stopped: it holds a snapshot that would block dropping the table.
            a.send_signal(signal.SIGCONT)
        assert code_b == 0, text_b
        took_over += "took over an expired lease" in text_b
        code_a, text_a = finish(a)
        assert code_a == 0 or code_a == 7, text_a
        if code_a == 7:
            assert "lost its lease" in text_a or BUSY in text_a or "already exists" in text_a, text_a
        ids = lake.table()["id"].to_pylist()
        assert len(ids) == len(set(ids)) == 200_000 + rnd * 50_000, (len(ids), len(set(ids)))
        # Both runs are over: the lease is released, and one generation is left.
        lease, objects = lake.lease()
        assert lease["released"] and objects == 1, (lease, objects)
        assert sorted(ids) == list(range(200_000 + rnd * 50_000))
        fill(pg, table, 200_000 + rnd * 50_000, 50_000)
    # (A run may finish its rows before it is paused: then there is nothing to take over.)
    assert took_over >= 1, "no run was paused while it held the lease: the test did not test anything"


def test_two_runs_of_one_job_into_one_iceberg_table(tmp_path, pg, table):
    from conftest import Dativo
    from pyiceberg.catalog.sql import SqlCatalog
    catalog_db = tmp_path / "catalog.db"
    job = write_job(tmp_path / "job.yaml", f"""name: twice_ice
{pg_source(table)}
target:
  writer: iceberg
  config:
    catalog: {{type: sql, uri: "sqlite:///{catalog_db}", name: lake}}
    warehouse: {tmp_path}/wh
    table: shop.orders
checkpoint: {{rows: 10000}}
""")
    abandoned = 0
    total = 0
    for rnd in range(5):
        fill(pg, table, total, 60_000)
        total += 60_000
        a = start(Dativo, tmp_path / f"pod-a-{rnd}", job)
        time.sleep(0.2 * rnd)
        b = start(Dativo, tmp_path / f"pod-b-{rnd}", job)
        results = [finish(a), finish(b)]
        assert_outcomes(results)
        abandoned += sum(1 for code, _ in results if code == 7)
        cat = SqlCatalog("lake", uri=f"sqlite:///{catalog_db}", warehouse=f"file://{tmp_path}/wh")
        t = cat.load_table("shop.orders")
        arrow = t.scan().to_arrow()
        got = sorted(zip(arrow["id"].to_pylist(), arrow["name"].to_pylist(),
                         [float(x) for x in arrow["amount"].to_pylist()]))
        want = source_rows(pg, table)
        assert got == want, f"round {rnd}: pyiceberg sees {len(got)} rows, {len(set(got))} distinct, want {len(want)}"
        duck = duckdb_iceberg_query("SELECT id, name, CAST(amount AS DOUBLE) FROM iceberg_scan('{metadata}') ORDER BY id",
                                    t.metadata_location)
        assert duck == want, f"round {rnd}: DuckDB sees {len(duck)} rows, want {len(want)}"
    assert abandoned >= 1, "the runs never overlapped: the test did not test anything"
