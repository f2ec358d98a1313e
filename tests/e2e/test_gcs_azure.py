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

from conftest import write_csvs, write_job

GCS = os.environ.get("DATIVO_TEST_GCS_ENDPOINT")
AZURE = os.environ.get("DATIVO_TEST_AZURE_ENDPOINT")  # http://127.0.0.1:PORT/devstoreaccount1
# Azurite's well-known development account (published in its documentation).
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


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


class Azure:
    scheme = "az"

    def __init__(self):
        from azure.storage.blob import BlobServiceClient
        self.svc = BlobServiceClient(account_url=AZURE, credential={"account_name": AZ_ACCOUNT,
                                                                    "account_key": AZ_KEY})
        self.bucket = f"c-{uuid.uuid4().hex[:12]}"
        self.client = self.svc.create_container(self.bucket)

    def block(self, key="${env:AZ_TEST_KEY}"):
        """The `azure:` block, indented to sit in a connector's `config:`."""
        return f"""    azure:
      endpoint: {AZURE}
      account_name: {AZ_ACCOUNT}
      account_key: "{key}\""""

    def put(self, name, data):
        self.client.upload_blob(name, data, overwrite=True)

    def list(self, prefix):
        return sorted(b.name for b in self.client.list_blobs(name_starts_with=prefix))

    def get(self, name):
        return self.client.download_blob(name).readall()


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
    job = write_job(tmp_path / "job.yaml", f"""name: cloud_{store.scheme}
source:
  reader: file
  config:
    path: "{url}/in/*.csv"
    format: csv
{store.block()}
target:
  writer: parquet
  config:
    path: {url}/lake
    mode: append
{store.block()}
""")
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
    assert missing.split("/lake")[0] in p.stderr and AZ_KEY not in p.stdout + p.stderr
    if store.scheme != "az":
        return
    # Azure checks the key: a wrong one is exit 3, named, never printed.
    wrong = "d3Jvbmcta2V5LW9mLTY0LWJ5dGVzLWxvbmctZW5vdWdoLWZvci1henVyaXRlLXRvLWFjY2VwdA=="
    job = write_job(tmp_path / "k.yaml", (tmp_path / "m.yaml").read_text()
                    .replace(missing, f"az://{store.bucket}/lake").replace("cloud_missing", "cloud_key"))
    p = dativo.run("run", job, "--no-progress", env={"AZ_TEST_KEY": wrong})
    assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
    assert f"az://{store.bucket}" in p.stderr
    assert wrong not in p.stdout + p.stderr
