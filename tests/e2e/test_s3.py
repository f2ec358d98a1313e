"""Writers on S3 (moto_server on loopback, started by scripts/test), verified with boto3,
pyarrow's S3 filesystem and pyiceberg — none of which dativo wrote."""
import os
import shutil
import uuid

import boto3
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest

from conftest import write_csvs, write_job

ENDPOINT = os.environ.get("DATIVO_TEST_S3_ENDPOINT")
pytestmark = pytest.mark.skipif(not ENDPOINT, reason="needs DATIVO_TEST_S3_ENDPOINT (scripts/test starts moto)")
KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-key"}


@pytest.fixture
def bucket():
    s3 = boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    name = f"b-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return s3, name


def s3_block():
    return f"""    s3:
      endpoint: {ENDPOINT}
      region: us-east-1
      access_key_id: "${{env:AWS_ACCESS_KEY_ID}}"
      secret_access_key: "${{env:AWS_SECRET_ACCESS_KEY}}"
      path_style: true"""


def stats(bucket_name, prefix):
    host = ENDPOINT.split("://")[1]
    fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", access_key="testing",
                           secret_key="testing", region="us-east-1")
    data = ds.dataset(f"{bucket_name}/{prefix}", filesystem=fs, format="parquet").to_table()
    ids = data["id"]
    return data.num_rows, len(ids.unique()), sum(ids.to_pylist())


def test_parquet_on_s3_exactly_once_under_kills(dativo, tmp_path, bucket):
    s3, name = bucket
    total = write_csvs(tmp_path / "data", 20, 5000)
    j = write_job(tmp_path / "job.yaml", f"""name: s3_job
source:
  reader: file
  config: {{path: "data/*.csv", batch_size: 1000}}
target:
  writer: parquet
  config:
    path: s3://{name}/lake/events
    compression: zstd
{s3_block()}
checkpoint: {{rows: 1000}}
retry: {{attempts: 1}}
""")
    def finished():
        # This load finished between kills: it must be exact; start another.
        assert stats(name, "lake/events") == (total, total, sum(range(total)))
        for o in s3.list_objects_v2(Bucket=name).get("Contents", []):
            s3.delete_object(Bucket=name, Key=o["Key"])
        shutil.rmtree(tmp_path / ".dativo")
    kills = dativo.kill_loop(j, kills=4, rounds=40, seed=3, max_sleep=0.4, env=KEYS, finished=finished)
    for _ in range(5):
        p = dativo.run("run", j, env=KEYS)
        if p.returncode == 0:
            break
    assert p.returncode == 0, p.stdout + p.stderr
    assert kills >= 4
    assert stats(name, "lake/events") == (total, total, sum(range(total)))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=name)["Contents"]]
    data_keys = [k for k in keys if "/_dativo/" not in k]
    assert data_keys and all(k.endswith(".parquet") for k in data_keys)
    assert not [k for k in keys if "/_dativo/staging/" in k]
    assert "testing-secret-key" not in p.stdout + p.stderr


def test_iceberg_warehouse_on_s3(dativo, tmp_path, bucket):
    s3, name = bucket
    write_csvs(tmp_path / "data", 3, 2000)
    j = write_job(tmp_path / "job.yaml", f"""name: s3_ice
source:
  reader: file
  config: {{path: "data/*.csv"}}
target:
  writer: iceberg
  config:
    table: raw.events
    warehouse: s3://{name}/warehouse
{s3_block()}
""")
    dativo.run("run", j, env=KEYS, check=0)
    from pyiceberg.catalog.sql import SqlCatalog
    cat = SqlCatalog("dativo", uri=f"sqlite:///{tmp_path}/.dativo/catalog.db",
                     warehouse=f"s3://{name}/warehouse", **{
                         "s3.endpoint": ENDPOINT, "s3.access-key-id": "testing",
                         "s3.secret-access-key": "testing", "s3.region": "us-east-1"})
    t = cat.load_table("raw.events")
    data = t.scan().to_arrow()
    assert data.num_rows == 6000 and len(data["id"].unique()) == 6000
    assert t.location().startswith(f"s3://{name}/warehouse")
    # No credentials in the table's metadata.
    for o in s3.list_objects_v2(Bucket=name)["Contents"]:
        if o["Key"].endswith(".json"):
            body = s3.get_object(Bucket=name, Key=o["Key"])["Body"].read().decode()
            assert "testing-secret-key" not in body


def test_file_reader_from_s3_incremental(dativo, tmp_path, bucket):
    s3, name = bucket
    total = write_csvs(tmp_path / "data", 3, 1000)
    for f in sorted((tmp_path / "data").glob("*.csv")):
        s3.upload_file(str(f), name, f"landing/2026/{f.name}")
    s3.put_object(Bucket=name, Key="landing/2026/notes.txt", Body=b"not a csv")
    j = write_job(tmp_path / "job.yaml", f"""name: s3_in
source:
  reader: file
  config:
    path: s3://{name}/landing/*/*.csv
{s3_block()}
target:
  writer: parquet
  config: {{path: lake/out}}
""")
    dativo.run("run", j, env=KEYS, check=0)
    import duckdb
    files = str(tmp_path / "lake/out/*.parquet")
    assert duckdb.execute(f"SELECT count(*), sum(id) FROM read_parquet('{files}')").fetchone() == (total, sum(range(total)))
    # A new object is picked up by the next run, alone.
    (tmp_path / "extra.csv").write_text("id,name,amount,day\n999999,x,1.25,2026-01-01\n")
    s3.upload_file(str(tmp_path / "extra.csv"), name, "landing/2027/extra.csv")
    p = dativo.run("run", j, env=KEYS, check=0)
    assert "1 committed" in p.stdout, p.stdout
    assert duckdb.execute(f"SELECT count(*) FROM read_parquet('{files}')").fetchone() == (total + 1,)
