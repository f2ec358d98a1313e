"""gs:// and az:// (issue 24), on fake-gcs-server and Azurite started by scripts/test: the Parquet
writer and the file reader on each store, incremental by object, exactly-once commits, wrong keys
and missing buckets. Objects are listed and fetched with the stores' own APIs (the GCS JSON API
over urllib, Microsoft's azure-storage-blob), never through dativo, and read back with duckdb."""
import json
import os
import urllib.parse
import urllib.request
import uuid

import duckdb
import pytest

from azurite import AZ_ACCOUNT, AZ_KEY, AZURE, Azure, split_abfss
from conftest import ROOT, write_csvs, write_job

GCS = os.environ.get("DATIVO_TEST_GCS_ENDPOINT")
class Gcs:
    scheme = "gs"

    def __init__(self):
        self.bucket = f"b-{uuid.uuid4().hex[:12]}"
        body = json.dumps({"name": self.bucket}).encode()
        req = urllib.request.Request(f"{GCS}/storage/v1/b?project=test", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req).read()

    def block(self, key=None):
        """The `gcs:` block, indented to sit in a connector's `config:`."""
        return f"""    gcs:
      endpoint: {GCS}
      anonymous: true"""

    def put(self, name, data):
        url = (f"{GCS}/upload/storage/v1/b/{self.bucket}/o?uploadType=media&name="
               + urllib.parse.quote(name, safe=""))
        urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST")).read()

    def list(self, prefix):
        names, token = [], None
        while True:
            q = {"prefix": prefix}
            if token:
                q["pageToken"] = token
            r = json.load(urllib.request.urlopen(
                f"{GCS}/storage/v1/b/{self.bucket}/o?" + urllib.parse.urlencode(q)))
            names += [o["name"] for o in r.get("items", [])]
            token = r.get("nextPageToken")
            if not token:
                return sorted(names)

    def get(self, name):
        return urllib.request.urlopen(
            f"{GCS}/storage/v1/b/{self.bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media").read()


STORES = {"gcs": (Gcs, GCS), "azure": (Azure, AZURE)}
ENV = {"AZ_TEST_KEY": AZ_KEY}


@pytest.fixture(params=["gcs", "azure"])
def store(request):
    cls, endpoint = STORES[request.param]
    if not endpoint:
        pytest.skip(f"needs the {request.param} emulator (scripts/test starts fake-gcs-server and Azurite)")
    return cls()


def lake_rows(store, tmp_path, prefix):
    """Download every committed Parquet file under `prefix` and count/sum them with duckdb."""
    names = [n for n in store.list(prefix) if n.endswith(".parquet")]
    d = tmp_path / f"dl-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    for i, n in enumerate(names):
        (d / f"{i}.parquet").write_bytes(store.get(n))
    if not names:
        return 0, 0, 0
    return duckdb.execute(
        f"SELECT count(*), count(DISTINCT id), sum(id) FROM read_parquet('{d}/*.parquet')").fetchone()


def test_file_reader_to_parquet_on_the_store_incremental_and_exactly_once(dativo, tmp_path, store):
    src = tmp_path / "src"
    write_csvs(src, files=3, rows=400)
    for f in sorted(src.iterdir()):
        store.put(f"in/{f.name}", f.read_bytes())
    url = f"{store.scheme}://{store.bucket}"
    job = store_job(tmp_path, "job.yaml", f"cloud_{store.scheme}", url, store.block())
    p = dativo.run("run", job, "--no-progress", env=ENV, check=0)
    assert "1,200" in p.stdout or "1200" in p.stdout, p.stdout
    assert lake_rows(store, tmp_path, "lake/") == (1200, 1200, sum(range(1200)))
    # The commit log is on the store too, and nothing is left in staging.
    names = store.list("lake/")
    assert any("_dativo/" in n for n in names), names
    assert not [n for n in names if "staging" in n and not n.endswith("/")], names
    # Incremental by object: a new file is read, the old ones are not read again.
    write_csvs(tmp_path / "more", files=1, rows=250, start_id=1200)
    (f,) = (tmp_path / "more").iterdir()
    store.put(f"in/zz-{f.name}", f.read_bytes())
    dativo.run("run", job, "--no-progress", env=ENV, check=0)
    assert lake_rows(store, tmp_path, "lake/") == (1450, 1450, sum(range(1450)))
    p = dativo.run("run", job, "--no-progress", env=ENV, check=0)
    assert lake_rows(store, tmp_path, "lake/") == (1450, 1450, sum(range(1450)))
    # No secret in what was printed.
    assert AZ_KEY not in p.stdout + p.stderr


def test_partitioned_output_on_the_store(dativo, tmp_path, store):
    src = tmp_path / "src"
    write_csvs(src, files=2, rows=300)
    url = f"{store.scheme}://{store.bucket}"
    job = write_job(tmp_path / "p.yaml", f"""name: cloud_part_{store.scheme}
source:
  reader: file
  config: {{path: "{src}/*.csv", format: csv}}
target:
  writer: parquet
  config:
    path: {url}/parts
    partition_by: [day]
{store.block()}
""")
    dativo.run("run", job, "--no-progress", env=ENV, check=0)
    names = [n for n in store.list("parts/") if n.endswith(".parquet")]
    assert names and all("/day=" in n for n in names), names
    assert lake_rows(store, tmp_path, "parts/")[0] == 600


def test_a_wrong_key_or_a_missing_bucket_names_the_location_without_the_secret(dativo, tmp_path, store):
    src = tmp_path / "src"
    write_csvs(src, files=1, rows=10)
    missing = f"{store.scheme}://no-such-{uuid.uuid4().hex[:8]}/lake"
    job = write_job(tmp_path / "m.yaml", f"""name: cloud_missing_{store.scheme}
source:
  reader: file
  config: {{path: "{src}/*.csv", format: csv}}
target:
  writer: parquet
  config:
    path: {missing}
{store.block()}
retry: {{attempts: 1}}
""")
    p = dativo.run("run", job, "--no-progress", env=ENV)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    # The error names the location (the run summary's error line) and never the key.
    assert f"{missing.split('/lake')[0]}/lake: the bucket or container does not exist" in p.stdout + p.stderr, p.stdout
    assert AZ_KEY not in p.stdout + p.stderr
    if store.scheme != "az":
        # A service-account key file that is not there: exit 2 naming the option.
        job = write_job(tmp_path / "c.yaml", (tmp_path / "m.yaml").read_text()
                        .replace("anonymous: true", "credential_path: /nonexistent/sa.json")
                        .replace("cloud_missing", "cloud_cred"))
        p = dativo.run("run", job, "--no-progress")
        assert p.returncode == 2 and "gcs.credential_path" in p.stdout + p.stderr, (p.stdout, p.stderr)
        return
    # Azure checks the key: a wrong one is exit 3, named, never printed.
    wrong = "d3Jvbmcta2V5LW9mLTY0LWJ5dGVzLWxvbmctZW5vdWdoLWZvci1henVyaXRlLXRvLWFjY2VwdA=="
    job = write_job(tmp_path / "k.yaml", (tmp_path / "m.yaml").read_text()
                    .replace(missing, f"az://{store.bucket}/lake").replace("cloud_missing", "cloud_key"))
    p = dativo.run("run", job, "--no-progress", env={"AZ_TEST_KEY": wrong})
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    assert f"az://{store.bucket}/lake: " in p.stdout + p.stderr, p.stdout
    assert wrong not in p.stdout + p.stderr


def test_exactly_once_under_kills_on_the_store(dativo, tmp_path, store):
    """SIGKILL at random points; every later run resumes from the last commit: in the end the
    store holds every row once and nothing in staging."""
    total = write_csvs(tmp_path / "data", 12, 4000)
    url = f"{store.scheme}://{store.bucket}"
    j = write_job(tmp_path / "job.yaml", f"""name: kill_{store.scheme}
source:
  reader: file
  config: {{path: "data/*.csv", batch_size: 1000}}
target:
  writer: parquet
  config:
    path: {url}/lake/events
{store.block()}
checkpoint: {{rows: 1000}}
retry: {{attempts: 1}}
""")
    # A run that finishes between kills ends the loop; the final check below covers it.
    kills = dativo.kill_loop(j, kills=3, rounds=30, seed=7, max_sleep=0.35, env=ENV)
    for _ in range(5):
        p = dativo.run("run", j, "--no-progress", env=ENV)
        if p.returncode == 0:
            break
    assert p.returncode == 0, p.stdout + p.stderr
    assert kills >= 1
    assert lake_rows(store, tmp_path, "lake/events/") == (total, total, sum(range(total)))
    names = store.list("lake/events/")
    assert not [n for n in names if "/_dativo/staging/" in n], names
    assert AZ_KEY not in p.stdout + p.stderr


def test_iceberg_exactly_once_under_kills_on_the_store(dativo, tmp_path, store):
    """SIGKILL at random points of a partitioned Iceberg load on gs:// or Azure (commits every
    1,000 rows, files written through dativo's object storage, GCS's staged and copied): after
    a final run pyiceberg reads every id exactly once (a staging object a kill leaves behind is
    unreferenced; orphan removal deletes it)."""
    import time
    from lakecheck import Lake
    total = write_csvs(tmp_path / "data", 12, 3000)
    warehouse = store.abfss("wh") if store.scheme == "az" else f"gs://{store.bucket}/wh"
    j = iceberg_job(tmp_path / "job.yaml", f"ice_kill_{store.scheme}", "data/*.csv", warehouse, store.block(),
                    config="    partition_by: [day]\n", extra="checkpoint: {rows: 1000}\nretry: {attempts: 1}\n")
    kills = dativo.kill_loop(j, kills=3, rounds=30, seed=11, max_sleep=0.5, env=ENV)
    p = dativo.run("run", j, "--no-progress", env=ENV)
    assert p.returncode == 0, p.stdout + p.stderr
    assert kills >= 1
    if store.scheme == "az":
        t = Lake(tmp_path, store.abfss("wh"), azure=store).load("lake.events")
    else:
        from pyiceberg.catalog.sql import SqlCatalog
        t = SqlCatalog("dativo", uri=f"sqlite:///{tmp_path}/.dativo/catalog.db", **{
            "gcs.service.host": GCS, "gcs.oauth2.token": "fake",
            "gcs.oauth2.token-expires-at": str(int((time.time() + 3600) * 1000))}).load_table("lake.events")
    ids = sorted(t.scan().to_arrow().column("id").to_pylist())
    assert ids == list(range(total)), (len(ids), len(set(ids)), total)
    print(f"{store.scheme}: {kills} kills, {total} rows exactly once")


def test_azure_sas_token_and_a_file_over_one_upload_part(dativo, tmp_path):
    """A SAS token instead of the account key, and a Parquet file larger than one 8 MB part
    (a block upload)."""
    if not AZURE:
        pytest.skip("needs Azurite (scripts/test starts it)")
    import random
    store = Azure()
    sas = store.sas()
    rng = random.Random(1)
    src = tmp_path / "big"
    src.mkdir()
    rows = 60_000
    with open(src / "big.csv", "w") as f:
        f.write("id,blob\n")
        for i in range(rows):
            f.write(f"{i},{rng.getrandbits(1024):0256x}\n")  # incompressible: ~15 MB of Parquet
    job = write_job(tmp_path / "sas.yaml", f"""name: az_sas
source:
  reader: file
  config: {{path: "{src}/*.csv", format: csv}}
target:
  writer: parquet
  config:
    path: az://{store.bucket}/big
    compression: none
    azure:
      endpoint: {AZURE}
      account_name: {AZ_ACCOUNT}
      sas_token: "${{env:AZ_SAS}}"
""")
    p = dativo.run("run", job, "--no-progress", env={"AZ_SAS": sas}, check=0)
    assert sas not in p.stdout + p.stderr and sas.split("sig=")[-1] not in p.stdout + p.stderr
    big = [b for b in store.client.list_blobs(name_starts_with="big/") if b.name.endswith(".parquet")]
    assert big and max(b.size for b in big) > 8 << 20, [(b.name, b.size) for b in big]
    assert lake_rows(store, tmp_path, "big/") == (rows, rows, sum(range(rows)))
    # A read-only SAS (given with the portal's leading `?`): the write is refused, exit 3,
    # and neither the token nor its signature is printed on the error path either.
    ro = store.sas(write=False)
    job2 = write_job(tmp_path / "ro.yaml", (tmp_path / "sas.yaml").read_text()
                     .replace("name: az_sas", "name: az_sas_ro")
                     .replace(f"az://{store.bucket}/big", f"az://{store.bucket}/ro"))
    p = dativo.run("run", job2, "--no-progress", env={"AZ_SAS": "?" + ro})
    out = p.stdout + p.stderr
    assert p.returncode == 3, out
    assert f"az://{store.bucket}" in out
    sig = urllib.parse.unquote(dict(kv.split("=", 1) for kv in ro.split("&"))["sig"])
    assert ro not in out and sig not in out and urllib.parse.quote(sig, safe="") not in out, out


def test_iceberg_warehouse_on_gcs_read_by_pyiceberg_and_duckdb(dativo, tmp_path):
    """An Iceberg table whose warehouse is gs:// (SQL catalog in SQLite), appended twice, and a
    partitioned one; read back by pyiceberg through pyarrow's GCS filesystem and by DuckDB's
    Iceberg extension."""
    if not GCS:
        pytest.skip("needs fake-gcs-server (scripts/test starts it)")
    import time
    from pyiceberg.catalog.sql import SqlCatalog
    store = Gcs()
    write_csvs(tmp_path / "a", files=2, rows=500)
    job = iceberg_job(tmp_path / "ice.yaml", "gcs_ice", f"{tmp_path}/a/*.csv", f"gs://{store.bucket}/wh",
                      store.block())
    db = tmp_path / ".dativo" / "catalog.db"
    dativo.run("run", job, "--no-progress", check=0)
    write_csvs(tmp_path / "a2", files=1, rows=300, start_id=1000)
    (tmp_path / "a2" / "part-0000.csv").rename(tmp_path / "a" / "part-9999.csv")
    dativo.run("run", job, "--no-progress", check=0)
    assert any(n.endswith(".metadata.json") for n in store.list("wh/"))
    cat = SqlCatalog("dativo", uri=f"sqlite:///{db}", **{
        "gcs.service.host": GCS, "gcs.oauth2.token": "fake",
        "gcs.oauth2.token-expires-at": str(int((time.time() + 3600) * 1000))})
    t = cat.load_table("lake.events").scan().to_arrow()
    ids = sorted(t.column("id").to_pylist())
    assert ids == list(range(1000)) + list(range(1000, 1300))
    assert len(cat.load_table("lake.events").history()) == 2
    # DuckDB's own Iceberg reader, the second reader: httpfs with a GCS secret pointed at the
    # emulator reads the same snapshot (count, distinct ids, sums of ids and amounts).
    from conftest import duckdb_iceberg_query
    from lakecheck import httpfs_extension
    ext = httpfs_extension()
    assert ext, "DuckDB's httpfs extension is missing: ./scripts/test installs it"
    meta = cat.load_table("lake.events").metadata_location
    assert meta.startswith(f"gs://{store.bucket}/wh/"), meta
    host = GCS.split("://", 1)[1]
    got = duckdb_iceberg_query(
        f"LOAD '{ext}'; CREATE SECRET g (TYPE gcs, KEY_ID 'k', SECRET 's', ENDPOINT '{host}', "
        "URL_STYLE 'path', USE_SSL false); "
        "SELECT count(*), count(DISTINCT id), sum(id), sum(amount)::DOUBLE FROM iceberg_scan('{metadata}')", meta)
    want = (len(ids), len(ids), sum(ids), float(sum(t.column("amount").to_pylist())))
    assert got[0][:3] == want[:3] and abs(got[0][3] - want[3]) < 1e-6, (got, want)
    # A partitioned table: its `day=…` directories are stored under the names the metadata gives
    # (opendal's one-request GCS uploads would encode them twice; dativo stages and copies), no
    # staging object is left, and both readers see exactly the source rows.
    part = write_job(tmp_path / "icep.yaml", (tmp_path / "ice.yaml").read_text()
                     .replace("table: lake.events", "table: lake.parts\n    partition_by: [day]")
                     .replace("name: gcs_ice", "name: gcs_ice_parts"))
    dativo.run("run", part, "--no-progress", check=0)
    names = store.list("wh/lake/parts/")
    data = [n for n in names if n.endswith(".parquet")]
    assert data and all("/data/day=2026-01-" in n for n in data), data
    assert not [n for n in names if "%3D" in n or ".dativo-upload-" in n], names
    pt = cat.load_table("lake.parts")
    assert {task.file.file_path for task in pt.scan().plan_files()} == {f"gs://{store.bucket}/{n}" for n in data}
    pids = sorted(pt.scan().to_arrow().column("id").to_pylist())
    assert pids == ids, (len(pids), len(ids))
    got = duckdb_iceberg_query(
        f"LOAD '{ext}'; CREATE SECRET g (TYPE gcs, KEY_ID 'k', SECRET 's', ENDPOINT '{host}', "
        "URL_STYLE 'path', USE_SSL false); "
        "SELECT count(*), count(DISTINCT id), sum(id), count(DISTINCT day) FROM iceberg_scan('{metadata}')",
        pt.metadata_location)
    assert got[0] == (len(ids), len(ids), sum(ids), 28), got


@pytest.mark.parametrize("form", ["az", "abfss"])
def test_iceberg_warehouse_on_azure_read_by_pyiceberg_and_duckdb(dativo, tmp_path, form):
    """An Iceberg table on Azure Blob Storage (SQL catalog in SQLite), partitioned, appended
    twice: its locations are abfss://container@account.dfs.core.windows.net/…, the form Spark,
    Trino, pyiceberg and DuckDB read, whether the warehouse was written `az://container/wh` or in
    that form. pyiceberg reads it through adlfs, DuckDB's Iceberg extension from a copy of the
    table's files (lakecheck.Lake)."""
    if not AZURE:
        pytest.skip("needs Azurite (scripts/test starts it)")
    from lakecheck import Lake
    store = Azure()
    warehouse = f"az://{store.bucket}/wh" if form == "az" else store.abfss("wh")
    write_csvs(tmp_path / "a", files=2, rows=500)
    job = iceberg_job(tmp_path / "ice.yaml", "az_ice", f"{tmp_path}/a/*.csv", warehouse, store.block(),
                      config="    partition_by: [day]\n")
    p = dativo.run("run", job, "--no-progress", "-vv", env=ENV, check=0)
    assert AZ_KEY not in p.stdout + p.stderr
    write_csvs(tmp_path / "a2", files=1, rows=300, start_id=1000)
    (tmp_path / "a2" / "part-0000.csv").rename(tmp_path / "a" / "part-9999.csv")
    dativo.run("run", job, "--no-progress", env=ENV, check=0)

    lake = Lake(tmp_path, store.abfss("wh"), azure=store)
    t = lake.load("lake.events")
    assert t.metadata_location.startswith(store.abfss("wh/lake/events/metadata/")), t.metadata_location
    assert len(t.history()) == 2
    # Partition directories are stored under the names the metadata gives (not encoded twice).
    data = [n for n in store.list("wh/lake/events/data/") if n.endswith(".parquet")]
    assert data and all("/day=" in n for n in data), data
    files = {split_abfss(task.file.file_path)[1] for task in t.scan().plan_files()}
    assert files and files <= set(data), sorted(files - set(data))[:3]
    ids = sorted(t.scan().to_arrow().column("id").to_pylist())
    assert ids == list(range(1000)) + list(range(1000, 1300))
    # Both readers see exactly the source rows, value for value.
    import pyarrow as pa
    import pyarrow.csv as pacsv
    from lakecheck import arrow_canon
    cols = [("id", "int"), ("name", "text"), ("amount", "dec"), ("day", "date")]
    want = arrow_canon(pa.concat_tables(pacsv.read_csv(f) for f in sorted((tmp_path / "a").glob("*.csv"))), cols)
    lake.assert_rows("lake.events", cols, want, "iceberg on azure")
    # `dativo target drop` lists the table's files on the store and deletes them through the
    # table's file IO: every blob goes, a stray one in a partition directory too.
    store.put("wh/lake/events/data/day=2026-01-01/stray.parquet", b"not referenced")
    p = dativo.run("target", "drop", job, "--yes", env=ENV, check=0)
    assert "dropped" in p.stdout, p.stdout
    assert store.list("wh/lake/events/") == [], store.list("wh/lake/events/")[:5]
    assert not lake.catalog().table_exists("lake.events")


def test_the_azure_iceberg_example_job_runs_on_azurite(dativo, tmp_path, pg):
    """examples/jobs/postgres_to_iceberg_on_azure.yaml with only its names and the endpoint
    changed: the table equals the source, read by pyiceberg and by DuckDB."""
    if not AZURE:
        pytest.skip("needs Azurite (scripts/test starts it)")
    from conftest import PG_URL
    from lakecheck import Lake, pg_canon, sql
    store = Azure()
    src = f"orders_{uuid.uuid4().hex[:8]}"
    sql(pg, f"CREATE TABLE {src} (id bigint primary key, amount numeric(12,2), updated_at timestamptz)")
    try:
        sql(pg, f"INSERT INTO {src} SELECT g, g % 1000 + 0.5, timestamptz '2026-01-01' + g * interval '1 hour' "
                "FROM generate_series(1, 3000) g")
        text = (ROOT / "examples/jobs/postgres_to_iceberg_on_azure.yaml").read_text()
        for old, new in [("public.orders", f"public.{src}"),
                         ("abfss://lake@acmedata.dfs.core.windows.net", f"abfss://{store.bucket}@{AZ_ACCOUNT}.dfs.core.windows.net"),
                         ("# endpoint: http://127.0.0.1:10000/devstoreaccount1", f"endpoint: {AZURE}")]:
            assert old in text, old
            text = text.replace(old, new)
        job = write_job(tmp_path / "example.yaml", text)
        dativo.run("run", job, "--no-progress", env={"PG_URL": PG_URL, "AZURE_STORAGE_KEY": AZ_KEY}, check=0)
        cols = [("id", "int"), ("amount", "dec"), ("updated_at", "ts")]
        Lake(tmp_path, store.abfss("warehouse"), azure=store).assert_rows(
            "analytics.orders", cols, pg_canon(pg, cols, f"FROM {src}"), "the Azure example job")
        assert [n for n in store.list("warehouse/analytics/orders/data/") if "/updated_at_day=2026-" in n]
    finally:
        sql(pg, f"DROP TABLE IF EXISTS {src}")


def test_the_gcs_example_job_runs_on_fake_gcs_server(dativo, tmp_path):
    """examples/jobs/csv_to_parquet_on_gcs.yaml with only its buckets, the endpoint and
    `anonymous` changed: every row lands once, and a second run with one new object reads only
    that one."""
    if not GCS:
        pytest.skip("needs fake-gcs-server (scripts/test starts it)")
    landing, lake = Gcs(), Gcs()
    write_csvs(tmp_path / "src", files=2, rows=300)
    for f in sorted((tmp_path / "src").iterdir()):
        landing.put(f"events/{f.name}", f.read_bytes())
    text = (ROOT / "examples/jobs/csv_to_parquet_on_gcs.yaml").read_text()
    for old, new in [("gs://acme-landing/", f"gs://{landing.bucket}/"), ("gs://acme-lake/", f"gs://{lake.bucket}/"),
                     ("      {}\n", ""), ("# endpoint: http://127.0.0.1:4443", f"endpoint: {GCS}"),
                     ("# anonymous: true", "anonymous: true")]:
        assert old in text, old
        text = text.replace(old, new)
    job = write_job(tmp_path / "example.yaml", text)
    dativo.run("run", job, "--no-progress", check=0)
    assert lake_rows(lake, tmp_path, "events/") == (600, 600, sum(range(600)))
    write_csvs(tmp_path / "more", files=1, rows=50, start_id=600)
    landing.put("events/zz.csv", (tmp_path / "more" / "part-0000.csv").read_bytes())
    p = dativo.run("run", job, "--no-progress", check=0)
    assert " 50 " in p.stdout or "rows     50" in p.stdout, p.stdout
    assert lake_rows(lake, tmp_path, "events/") == (650, 650, sum(range(650)))


def test_iceberg_on_azure_config_errors_name_the_field(dativo, tmp_path):
    """`az://` needs the account for the table's abfss:// location; an abfss:// URL naming
    another account than `azure.account_name` is refused before anything is written."""
    if not AZURE:
        pytest.skip("needs Azurite (scripts/test starts it)")
    store = Azure()
    write_csvs(tmp_path / "a", files=1, rows=10)
    base = f"""name: az_ice_bad
source:
  reader: file
  config: {{path: "{tmp_path}/a/*.csv", format: csv}}
target:
  writer: iceberg
  config:
    table: lake.events
"""
    job = write_job(tmp_path / "noacct.yaml", base + f"""    warehouse: az://{store.bucket}/wh
    azure:
      endpoint: {AZURE}
""")
    p = dativo.run("run", job, "--no-progress")
    assert p.returncode == 2 and "azure.account_name" in p.stdout + p.stderr, (p.stdout, p.stderr)
    job = write_job(tmp_path / "other.yaml", base + f"""    warehouse: abfss://{store.bucket}@someoneelse.dfs.core.windows.net/wh
{store.block()}
""")
    p = dativo.run("run", job, "--no-progress", env=ENV)
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "someoneelse" in out and "azure.account_name" in out, out
    assert not store.list("wh/")


class _TokenFront:
    """A cloud identity endpoint and a store that checks its tokens, on loopback.

    `identity` is (header, value, path, body): the stand-in identity endpoint (the GCE metadata
    server, Azure's IMDS) hands `token` out, as `body(token)`, only to a GET carrying that header
    on that path. The front forwards to `upstream` (fake-gcs-server, Azurite) only requests
    carrying exactly `Bearer <token>`, and refuses every other with 401 (the emulators accept
    anything, or only their own keys). The Authorization header is dropped on the way and
    `query` (a SAS token for Azurite) appended. Plain http.server threads; calls are recorded."""

    def __init__(self, token, upstream, identity, query="", identity_status=200, form=None):
        import http.server
        import threading
        front = self
        header, value, ident_path, body_of = identity
        self.identity_calls = []
        self.forms = []
        self.forwarded = 0
        self.refused = 0

        class Identity(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                front.identity_calls.append((self.path, self.headers.get(header)))
                ok = (identity_status == 200 and self.headers.get(header) == value
                      and self.path.split("?")[0] == ident_path)
                body = json.dumps(body_of(token)).encode() if ok else b"no"
                self.send_response(200 if ok else identity_status if identity_status != 200 else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                # An OAuth token exchange (Microsoft Entra for AKS workload identity): a token
                # only for a form holding every field of `form` with its value.
                n = int(self.headers.get("Content-Length") or 0)
                got = dict(urllib.parse.parse_qsl(self.rfile.read(n).decode()))
                front.forms.append((self.path, got))
                ok = (identity_status == 200 and form is not None and self.path == ident_path
                      and all(got.get(k) == v for k, v in form.items()))
                body = json.dumps(body_of(token)).encode() if ok else b'{"error": "invalid_client"}'
                self.send_response(200 if ok else identity_status if identity_status != 200 else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Front(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                if self.headers.get("Transfer-Encoding"):
                    # Not decoded here: say so rather than read a body as empty.
                    self.send_error(501, "chunked bodies are not forwarded by this test front")
                    return
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else None
                if self.headers.get("Authorization") != f"Bearer {token}":
                    front.refused += 1
                    msg = json.dumps({"error": {"code": 401, "message": "no valid token"}}).encode()
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                front.forwarded += 1
                skip = {"host", "authorization", "content-length", "connection", "accept-encoding"}
                url = upstream + self.path
                if query:
                    url += ("&" if "?" in self.path else "?") + query
                req = urllib.request.Request(url, data=body, method=self.command,
                                             headers={k: v for k, v in self.headers.items()
                                                      if k.lower() not in skip})
                try:
                    r = urllib.request.urlopen(req, timeout=30)
                    status, headers, data = r.status, r.headers, r.read()
                except urllib.error.HTTPError as e:
                    status, headers, data = e.code, e.headers, e.read()
                except urllib.error.URLError as e:
                    self.send_error(502, f"upstream: {e}")
                    return
                self.send_response(status)
                for k, v in headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                length = headers.get("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _any

        self.servers = []
        for handler in (Identity, Front):
            srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self.servers.append(srv)
        self.identity_host = f"127.0.0.1:{self.servers[0].server_address[1]}"
        self.identity_url = f"http://{self.identity_host}{ident_path}"
        self.endpoint = f"http://127.0.0.1:{self.servers[1].server_address[1]}"

    def close(self):
        for srv in self.servers:
            srv.shutdown()
            srv.server_close()


# The GCE metadata server's token call, and Azure's IMDS (instance metadata) token call.
GCE_METADATA = ("Metadata-Flavor", "Google", "/computeMetadata/v1/instance/service-accounts/default/token",
                lambda t: {"access_token": t, "expires_in": 3600, "token_type": "Bearer"})
AZURE_IMDS = ("Metadata", "true", "/metadata/identity/oauth2/token",
              lambda t: {"access_token": t, "expires_on": str(int(__import__("time").time()) + 3600),
                         "token_type": "Bearer", "resource": "https://storage.azure.com/"})
# Microsoft Entra's token endpoint for tenant "tenant-1" (AKS workload identity exchanges the
# pod's federated token there).
ENTRA = (None, None, "/tenant-1/oauth2/v2.0/token",
         lambda t: {"access_token": t, "expires_in": 3600, "token_type": "Bearer"})
# No credentials of the machine running the tests may be picked up: these are unset (reqsign
# takes an empty variable for a value).
NO_AMBIENT_CREDENTIALS = dict.fromkeys([
    "GOOGLE_APPLICATION_CREDENTIALS", "APPDATA", "AZURE_CLIENT_ID", "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY", "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_BEARER_TOKEN", "AZBLOB_ENDPOINT", "AZURE_OBJECT_ID", "AZURE_MSI_RESOURCE_ID",
    "SYSTEM_OIDCREQUESTURI", "SYSTEM_ACCESSTOKEN"])


def iceberg_job(path, name, src_glob, warehouse, block, config="", extra=""):
    """A job reading the CSV files `src_glob` into the Iceberg table lake.events (its warehouse
    `warehouse` reached through `block`); `config` adds writer options, `extra` job keys."""
    return write_job(path, f"""name: {name}
source:
  reader: file
  config: {{path: "{src_glob}", format: csv, batch_size: 500}}
target:
  writer: iceberg
  config:
    warehouse: {warehouse}
    table: lake.events
{config}{block}
{extra}""")


def store_job(tmp_path, file, name, url, block, extra=""):
    """A job reading `url/in/*.csv` into Parquet at `url/lake`, both through `block`."""
    return write_job(tmp_path / file, f"""name: {name}
source:
  reader: file
  config:
    path: "{url}/in/*.csv"
{block}
target:
  writer: parquet
  config:
    path: {url}/lake
{block}
{extra}""")


def _ran_with_the_token(p, front, store, tmp_path, rows, secrets):
    """A -vv run `p` that used the token `front` checks: it succeeded, every request carried the
    token, the rows arrived, and none of `secrets` was printed."""
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    assert front.forwarded > 0 and front.refused == 0, (front.forwarded, front.refused)
    assert lake_rows(store, tmp_path, "lake/") == (rows, rows, sum(range(rows)))
    for secret in secrets:
        assert secret not in p.stdout + p.stderr
    assert len(p.stderr) > 2000, "the -vv log is too short to have said anything"


def _refused_without_a_token(dativo, tmp_path, store, front, bad, job, env, hint):
    """`job` again, against `bad` (an identity endpoint that gives no token): exit 3 naming the
    location and saying `hint`; nothing reached the store."""
    try:
        job2 = write_job(tmp_path / f"bad-{job.name}", job.read_text()
                         .replace(front.endpoint, bad.endpoint).replace("/lake", "/lake2"))
        p = dativo.run("run", job2, "--no-progress", env=env)
        assert p.returncode == 3, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
        assert f"{store.scheme}://{store.bucket}" in p.stdout + p.stderr, (p.stdout[-2000:], p.stderr[-2000:])
        assert hint in p.stdout + p.stderr, p.stdout[-2000:]
        assert bad.forwarded == 0
    finally:
        bad.close()


def test_gcs_workload_identity_token_from_the_metadata_server(dativo, tmp_path):
    """No key file and no `anonymous`: the token comes from the VM metadata server (GKE workload
    identity, GCE), found through GCE_METADATA_HOST as Google's own libraries do; the store only
    answers requests carrying that token. The token never appears at -vv. A metadata server
    that gives no token is exit 3 naming the location."""
    if not GCS:
        pytest.skip("needs fake-gcs-server (scripts/test starts it)")
    store = Gcs()
    token = f"ya29.test-token-{uuid.uuid4().hex}"
    front = _TokenFront(token, GCS, GCE_METADATA)
    try:
        src = tmp_path / "src"
        write_csvs(src, files=2, rows=150)
        store.put("in/a.csv", (src / sorted(os.listdir(src))[0]).read_bytes())
        block = f"""    gcs:
      endpoint: {front.endpoint}"""
        job = store_job(tmp_path, "wi.yaml", "gcs_workload_identity", f"gs://{store.bucket}", block,
                        "retry: {attempts: 1}\n")
        # A home of its own: no gcloud application-default credentials file can be picked up.
        env = dict(NO_AMBIENT_CREDENTIALS, GCE_METADATA_HOST=front.identity_host, HOME=str(tmp_path),
                   XDG_CONFIG_HOME=str(tmp_path / ".config"))
        p = dativo.run("-vv", "run", job, "--no-progress", env=env)
        assert front.identity_calls and all(f == "Google" for _, f in front.identity_calls), front.identity_calls
        _ran_with_the_token(p, front, store, tmp_path, 150, [token])
        # The metadata server has no token for this VM: exit 3, the location named.
        bad = _TokenFront(token, GCS, GCE_METADATA, identity_status=404)
        _refused_without_a_token(dativo, tmp_path, store, front, bad, job,
                                 dict(env, GCE_METADATA_HOST=bad.identity_host),
                                 "Google credentials could not be loaded")
    finally:
        front.close()


@pytest.mark.parametrize("how", ["imds", "aks_workload_identity", "service_principal"])
def test_azure_token_from_managed_identity(dativo, tmp_path, how):
    """No account key and no SAS token: the token comes from Azure's instance metadata service
    (managed identity on a VM or node, found through AZURE_IMDS_ENDPOINT), from Microsoft Entra
    in exchange for the pod's federated token (AKS workload identity: the token file,
    AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_AUTHORITY_HOST as the webhook sets them) or for a
    service principal's client secret (AZURE_CLIENT_SECRET). The store only answers requests
    carrying that token (the front then reaches Azurite with a SAS token of its own). No token
    or secret appears at -vv. No token is exit 3 naming the container. (The Azure CLI is in
    reqsign's chain, but opendal 0.57 gives it no command executor: it never runs.)"""
    if not AZURE:
        pytest.skip("needs Azurite (scripts/test starts it)")
    store = Azure()
    sas = store.sas()
    upstream = AZURE.rsplit("/", 1)[0]  # the front's paths carry /devstoreaccount1 themselves
    token = f"eyJ0eXAi.test-{uuid.uuid4().hex}"
    federated = f"eyJhbGciOiJSUzI1NiJ9.pod-{uuid.uuid4().hex}.sig"
    client_secret = f"sp~{uuid.uuid4().hex}"
    (tmp_path / "azure-identity-token").write_text(federated + "\n")
    secrets = [token, federated, client_secret]
    entra = {"client_id": "client-1", "grant_type": "client_credentials",
             "scope": "https://storage.azure.com/.default"}
    identity, form = ENTRA, None
    if how == "imds":
        identity = AZURE_IMDS
    elif how == "aks_workload_identity":
        form = dict(entra, client_assertion=federated,
                    client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    elif how == "service_principal":
        form = dict(entra, client_secret=client_secret)
    def ident_env(f):
        never_imds = {"AZURE_IMDS_ENDPOINT": "http://127.0.0.1:9/none"}  # never the real IMDS
        entra_env = {"AZURE_TENANT_ID": "tenant-1", "AZURE_CLIENT_ID": "client-1",
                     "AZURE_AUTHORITY_HOST": f"http://{f.identity_host}", **never_imds}
        if how == "imds":
            return {"AZURE_IMDS_ENDPOINT": f.identity_url}
        if how == "aks_workload_identity":
            return dict(entra_env, AZURE_FEDERATED_TOKEN_FILE=str(tmp_path / "azure-identity-token"))
        return dict(entra_env, AZURE_CLIENT_SECRET=client_secret)

    front = _TokenFront(token, upstream, identity, query=sas, form=form)
    try:
        src = tmp_path / "src"
        write_csvs(src, files=1, rows=120)
        store.put("in/a.csv", (src / os.listdir(src)[0]).read_bytes())
        block = f"""    azure:
      endpoint: {front.endpoint}/{AZ_ACCOUNT}
      account_name: {AZ_ACCOUNT}"""
        job = store_job(tmp_path, "mi.yaml", "az_managed_identity", f"az://{store.bucket}", block,
                        "retry: {attempts: 1}\n")
        env = dict(NO_AMBIENT_CREDENTIALS, HOME=str(tmp_path), PATH="/usr/bin:/bin",  # no Azure CLI either
                   **ident_env(front))
        p = dativo.run("-vv", "run", job, "--no-progress", env=env)
        if how == "imds":
            assert front.identity_calls and all(v == "true" for _, v in front.identity_calls), front.identity_calls
            assert all("resource=https%3A%2F%2Fstorage.azure.com" in q for q, _ in front.identity_calls), \
                front.identity_calls
        else:
            assert front.forms and not front.identity_calls, (front.forms, front.identity_calls)
        _ran_with_the_token(p, front, store, tmp_path, 120, secrets)
        bad = _TokenFront(token, upstream, identity, query=sas, identity_status=400, form=form)
        _refused_without_a_token(dativo, tmp_path, store, front, bad, job, dict(env, **ident_env(bad)),
                                 "Azure credentials could not be loaded")
    finally:
        front.close()


def _phi_source(tmp_path, n):
    """`n` rows of `id,note` in src/visits.csv, each note holding a unique marker, and a local
    key-encryption key in `kek`: (marker, key file)."""
    marker = f"PHI-{uuid.uuid4().hex}"
    src = tmp_path / "src"
    src.mkdir()
    (src / "visits.csv").write_text("id,note\n" + "".join(f"{i},{marker}-{i}\n" for i in range(n)))
    key = tmp_path / "kek"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    return marker, key


def _no_plaintext_and_exact(dativo, store, job, names, data, marker, n):
    """No object in `names` holds the marker; `dativo verify` reports each of `data` ok and
    `dativo decrypt` gives back exactly the `n` rows."""
    import io
    import pyarrow.csv as pacsv
    for name in names:
        assert marker.encode() not in store.get(name), name
    v = dativo.run("verify", job, env=ENV, check=0)
    assert sum(1 for line in v.stdout.splitlines() if line.startswith("ok ")) == len(data), v.stdout
    d = dativo.run("decrypt", job, env=ENV, check=0)
    t = pacsv.read_csv(io.BytesIO(d.stdout.encode()))
    assert sorted(t["id"].to_pylist()) == list(range(n))
    assert sorted(t["note"].to_pylist()) == sorted(f"{marker}-{i}" for i in range(n))


def test_iceberg_encryption_on_the_store(dativo, tmp_path, store):
    """An Iceberg table with Parquet Modular Encryption, its warehouse on gs:// or Azure: no
    object of the table holds a plaintext value, a data file cannot be read without its keys,
    `dativo verify` checks every data file and `dativo decrypt` gives back exactly the rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = 2000
    marker, key = _phi_source(tmp_path, n)
    job = iceberg_job(tmp_path / "ice-enc.yaml", f"ice_enc_{store.scheme}", "src/*.csv",
                      f"{store.scheme}://{store.bucket}/wh", store.block(), config="""    encryption:
      format: parquet
      key_provider: {type: local, key_file: kek}
""", extra="checkpoint: {rows: 500}\n")
    p = dativo.run("run", job, "--no-progress", env=ENV, check=0)
    assert AZ_KEY not in p.stdout + p.stderr and key.read_text() not in p.stdout + p.stderr
    names = store.list("wh/")
    data = [n_ for n_ in names if n_.endswith(".parquet")]
    assert len(data) >= 2 and any(n_.endswith(".metadata.json") for n_ in names), names
    with pytest.raises(Exception):
        pq.read_table(pa.BufferReader(store.get(data[0])))  # encrypted footer
    _no_plaintext_and_exact(dativo, store, job, names, data, marker, n)


@pytest.mark.parametrize("fmt", ["stream", "parquet"])
def test_encryption_on_the_store(dativo, tmp_path, store, fmt):
    """Client-side encryption in both formats on gs:// and az://: no object on the store holds a
    plaintext value (data files, commit log, staging), `dativo verify` checks every file and
    `dativo decrypt` gives back exactly the rows; a Parquet-modular file cannot be read without
    its keys (pyarrow)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = 3000
    marker, key = _phi_source(tmp_path, n)
    url = f"{store.scheme}://{store.bucket}"
    job = write_job(tmp_path / "enc.yaml", f"""name: enc_{store.scheme}_{fmt}
source:
  reader: file
  config: {{path: "src/*.csv", batch_size: 1000}}
target:
  writer: parquet
  config:
    path: {url}/phi
    target_file_size: 20KB
{store.block()}
    encryption:
      format: {fmt}
      segment_size: 8KB
      key_provider: {{type: local, key_file: kek}}
checkpoint: {{rows: 1000}}
""")
    p = dativo.run("run", job, "--no-progress", env=ENV, check=0)
    assert AZ_KEY not in p.stdout + p.stderr and key.read_text() not in p.stdout + p.stderr
    names = store.list("phi/")
    data = [n_ for n_ in names if "/_dativo/" not in n_ and not n_.endswith("/")]
    assert len(data) >= 2, names
    assert not [n_ for n_ in names if "/staging/" in n_ and not n_.endswith("/")], names
    if fmt == "parquet":
        with pytest.raises(Exception):
            pq.read_table(pa.BufferReader(store.get(data[0])))  # encrypted footer
    else:
        assert not store.get(data[0]).startswith(b"PAR1")  # no plaintext Parquet at all
    _no_plaintext_and_exact(dativo, store, job, names, data, marker, n)
