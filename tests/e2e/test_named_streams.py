"""Named streams: one job, several streams it names itself (`streams:` without `tables:`, the
`http` reader's `resources:`).

1. The `file` reader with two globs (one rendered from `{stream}`, one set per stream, another
   format) into two Parquet datasets: each equals its files (content, read back with DuckDB);
   a second run loads only a new file and only into its stream; `discover` lists the streams
   without touching anything; `state show --stream`.
2. The `http` reader with three resources of one API (shared `base_url`, auth and incremental
   settings; each its own path, records path and pagination) into three Iceberg tables,
   read with pyiceberg and DuckDB; a fourth resource that 404s fails alone while the others
   commit; after new records, a re-run loads exactly the new ones into each table.
"""
import csv
import json

import duckdb
import pyarrow as pa
import pytest

from conftest import write_job
from lakecheck import Lake, arrow_canon, dativo
from test_http import Api


def parquet_rows(path, cols):
    files = [str(p) for p in path.rglob("*.parquet")]
    if not files:
        return []
    return duckdb.execute(f"SELECT {', '.join(cols)} FROM read_parquet({files!r}) ORDER BY 1").fetchall()


def write_orders(d, name, start, n):
    d.mkdir(parents=True, exist_ok=True)
    with open(d / name, "w", newline="") as f:
        w = csv.writer(f, delimiter=";")
        w.writerow(["id", "item", "qty"])
        for i in range(start, start + n):
            w.writerow([i, f"item-{i}", i % 9])


def test_file_reader_streams_from_several_globs(tmp_path):
    write_orders(tmp_path / "landing/orders", "a.csv", 0, 500)
    write_orders(tmp_path / "landing/orders", "b.csv", 500, 700)
    (tmp_path / "crm").mkdir()
    with open(tmp_path / "crm/customers-1.jsonl", "w") as f:
        for i in range(300):
            f.write(json.dumps({"id": i, "name": f"c{i}", "vip": i % 5 == 0}) + "\n")
    job = write_job(tmp_path / "landing.yaml", """name: landing
source:
  reader: file
  config:
    path: "landing/{stream}/*.csv"
    csv: {delimiter: ";"}
    streams:
      orders: {}
      customers: {format: jsonl, path: "crm/customers-*.jsonl"}
target:
  writer: parquet
  config: {path: "lake/{stream}"}
""")
    d = dativo(tmp_path, "discover", job, "--json").stdout
    streams = {s["stream"]: s for s in json.loads(d)["streams"]}
    assert list(streams) == ["customers", "orders"]
    assert streams["orders"]["target"] == "lake/orders"
    assert streams["customers"]["job"] == "landing/customers"
    assert not (tmp_path / "lake").exists(), "discover wrote nothing"

    dativo(tmp_path, "run", job, "--no-progress")
    want_orders = [(i, f"item-{i}", i % 9) for i in range(1200)]
    assert parquet_rows(tmp_path / "lake/orders", ["id", "item", "qty"]) == want_orders
    want_cust = [(i, f"c{i}", i % 5 == 0) for i in range(300)]
    assert parquet_rows(tmp_path / "lake/customers", ["id", "name", "vip"]) == want_cust

    # A new file in one stream's glob: the next run loads it, into that stream only.
    write_orders(tmp_path / "landing/orders", "c.csv", 1200, 50)
    out = dativo(tmp_path, "run", job, "--no-progress", "--log-format", "json").stdout
    per_stream = {r["stream"]: r for r in map(json.loads, out.splitlines()) if "stream" in r}
    assert per_stream["orders"]["rows"] == 50, per_stream
    assert per_stream["customers"]["rows"] == 0, per_stream
    assert parquet_rows(tmp_path / "lake/orders", ["id", "item", "qty"]) == \
        want_orders + [(i, f"item-{i}", i % 9) for i in range(1200, 1250)]
    assert parquet_rows(tmp_path / "lake/customers", ["id", "name", "vip"]) == want_cust

    shown = dativo(tmp_path, "state", "show", job, "--stream", "orders").stdout
    assert "c.csv" in shown, shown

    # Removing a stream from the job: reported as gone, its data stays.
    job.write_text(job.read_text().replace("      customers: {format: jsonl, path: \"crm/customers-*.jsonl\"}\n", ""))
    p = dativo(tmp_path, "run", job, "--no-progress")
    assert "customers" in p.stderr and "gone" in p.stderr, p.stderr
    assert parquet_rows(tmp_path / "lake/customers", ["id", "name", "vip"]) == want_cust


@pytest.fixture
def api():
    a = Api(1_500, fault_every=11)
    yield a
    a.proc.kill()
    a.proc.wait()


COLS = [("id", "int"), ("name", "text"), ("updated_at", "text")]


def lake_canon(t):
    return arrow_canon(t, COLS)


def want(n):
    from datetime import datetime, timedelta, timezone
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return pa.table({
        "id": pa.array(range(n), pa.int64()),
        "name": pa.array([f"name-{i}" for i in range(n)]),
        "updated_at": pa.array([(base + timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ") for i in range(n)]),
    })


def test_http_resources_of_one_api_into_iceberg(tmp_path, api):
    job = write_job(tmp_path / "api.yaml", f"""name: api
source:
  reader: http
  config:
    base_url: {api.base}/v1
    auth: {{type: bearer, token: test-bearer-token}}
    backoff: 10ms
    schema: [{{name: id, type: int64}}, {{name: name, type: string}}, {{name: updated_at, type: string}}]
    incremental: {{cursor_field: updated_at, param: updated_since, primary_key: id}}
    resources:
      by_offset: {{path: /offset, records: $.results, pagination: {{type: offset, limit: 100}}}}
      by_cursor: {{path: /cursor, records: $.items, pagination: {{type: cursor, cursor_path: $.meta.next_cursor, param: cursor}}}}
      by_page: {{path: /page, records: $.data.items, pagination: {{type: page, param: page, size_param: per_page, size: 70}}}}
      missing: {{path: /nothing/here}}
target:
  writer: iceberg
  config:
    table: "api.{{stream}}"
checkpoint: {{rows: 400}}
""")
    lake = Lake(tmp_path)
    p = dativo(tmp_path, "run", job, "--no-progress", check=2)
    assert "missing" in p.stdout + p.stderr and "404" in p.stdout + p.stderr, p.stdout + p.stderr
    assert "test-bearer-token" not in p.stdout + p.stderr
    for r in ["by_offset", "by_cursor", "by_page"]:
        lake.assert_rows(f"api.{r}", COLS, lake_canon(want(1_500)), r)

    api.add(120)
    p = dativo(tmp_path, "run", job, "--no-progress", "--log-format", "json", check=2)
    rows = {r["stream"]: r["rows"] for r in map(json.loads, p.stdout.splitlines()) if "stream" in r and "rows" in r}
    for r in ["by_offset", "by_cursor", "by_page"]:
        assert rows[r] == 120, rows
        lake.assert_rows(f"api.{r}", COLS, lake_canon(want(1_620)), r)

    # Without the broken resource the job succeeds; nothing new arrives twice.
    job.write_text(job.read_text().replace("      missing: {path: /nothing/here}\n", ""))
    dativo(tmp_path, "run", job, "--no-progress")
    for r in ["by_offset", "by_cursor", "by_page"]:
        lake.assert_rows(f"api.{r}", COLS, lake_canon(want(1_620)), r)
