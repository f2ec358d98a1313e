"""Scale-out: one job as N shard processes committing on their own into one target (no
coordinator), a killed shard re-run exactly once, and Kubernetes manifests validated offline
against the Kubernetes schemas (kubernetes-validate)."""
import json
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import psycopg2
import pytest

from conftest import BIN, PG_SQLALCHEMY, PG_URL, ROOT, write_csvs, write_job



@pytest.fixture
def source_table():
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="test")
    conn.autocommit = True
    name = f"shard_src_{uuid.uuid4().hex[:8]}"
    with conn.cursor() as c:
        c.execute(f"CREATE TABLE {name} (id int8 PRIMARY KEY, name text, amount numeric(12,2), "
                  f"updated_at timestamptz NOT NULL)")
        c.execute(f"INSERT INTO {name} SELECT i, 'n' || i, i * 0.5, timestamptz '2026-01-01' + i * interval '1 second' "
                  f"FROM generate_series(1, 400000) i")
    yield conn, name
    with conn.cursor() as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")
    conn.close()


def iceberg_job(tmp_path, table, ns, extra=""):
    return write_job(tmp_path / "job.yaml", f"""name: sharded_{ns}
source:
  reader: postgres
  config:
    url: {PG_URL}
    table: {table}
    cursor: updated_at
    batch_size: 10000
{extra}
target:
  writer: iceberg
  config:
    table: {ns}.events
    catalog: {{uri: "{PG_URL}"}}
    warehouse: {tmp_path}/warehouse
checkpoint: {{rows: 20000}}
""")


def scan(tmp_path, ns):
    from pyiceberg.catalog.sql import SqlCatalog
    cat = SqlCatalog("dativo", uri=PG_SQLALCHEMY,
                     warehouse=f"file://{tmp_path}/warehouse")
    t = cat.load_table(f"{ns}.events")
    return cat, t


def test_four_shards_into_one_iceberg_table_with_a_killed_shard(dativo, tmp_path, source_table):
    conn, table = source_table
    ns = f"ns_{uuid.uuid4().hex[:8]}"
    j = iceberg_job(tmp_path, table, ns)
    rng = random.Random()
    procs = {i: dativo.popen("run", j, "--no-progress", "--shard", f"{i}/4") for i in range(4)}
    victim = rng.randrange(4)
    time.sleep(rng.uniform(0.3, 0.9))
    killed = procs[victim].poll() is None
    if killed:
        procs[victim].send_signal(signal.SIGKILL)
    for i, p in procs.items():
        out, err = p.communicate(timeout=300)
        if i != victim or not killed:
            assert p.returncode == 0, (i, [l for l in out.splitlines() if 'error' in l])
    # Re-run the killed shard (with another one already done: a no-op for it).
    dativo.run("run", j, "--no-progress", "--shard", f"{victim}/4", check=0)
    dativo.run("run", j, "--no-progress", "--shard", f"{(victim + 1) % 4}/4", check=0)
    cat, t = scan(tmp_path, ns)
    data = t.scan().to_arrow()
    ids = data["id"].to_pylist()
    assert len(ids) == 400_000 and len(set(ids)) == 400_000
    # Each shard committed on its own, with its own state in the snapshot summaries.
    jobs = {s.summary.additional_properties.get("dativo.job") for s in t.snapshots()}
    assert jobs >= {f"sharded_{ns}#{i}/4" for i in range(4)}, jobs
    # Incremental, per shard: new rows land once.
    with conn.cursor() as c:
        c.execute(f"INSERT INTO {table} SELECT i, 'n' || i, i * 0.5, timestamptz '2026-01-01' + i * interval '1 second' "
                  f"FROM generate_series(400001, 401000) i")
    ps = [dativo.popen("run", j, "--no-progress", "--shard", f"{i}/4") for i in range(4)]
    for p in ps:
        assert p.wait(timeout=300) == 0
    _, t = scan(tmp_path, ns)
    ids = t.scan().to_arrow()["id"].to_pylist()
    assert len(ids) == 401_000 and len(set(ids)) == 401_000
    cat.drop_table(f"{ns}.events")


def test_shards_of_files_into_one_parquet_prefix(dativo, tmp_path):
    total = write_csvs(tmp_path / "data", 24, 1000)
    j = write_job(tmp_path / "job.yaml", f"""name: files_sharded
source: {{reader: file, config: {{path: "data/*.csv"}}}}
target: {{writer: parquet, config: {{path: {tmp_path}/lake}}}}
""")
    ps = [dativo.popen("run", j, "--no-progress", "--shard", f"{i}/3") for i in range(3)]
    for p in ps:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    files = [str(p) for p in (tmp_path / "lake").glob("*.parquet")]
    n, distinct = duckdb.execute(f"SELECT count(*), count(DISTINCT id) FROM read_parquet({files!r})").fetchone()
    assert n == distinct == total
    # Each shard has its own commit log; an unsharded run of the same job is independent.
    assert sorted(p.name for p in (tmp_path / "lake/_dativo/shards").iterdir()) == ["0-of-3", "1-of-3", "2-of-3"]
    # JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) picks the shard: nothing new to read.
    p = dativo.run("run", j, "--no-progress", "--shards", "3", env={"JOB_COMPLETION_INDEX": "1"}, check=0)
    assert "no new data" in p.stdout
    p = dativo.run("run", j, "--shard", "3/3")
    assert p.returncode == 2 and "between 0 and COUNT-1" in p.stderr
    p = dativo.run("run", j, "--shards", "3")
    assert p.returncode == 2 and "JOB_COMPLETION_INDEX" in p.stderr


def test_a_reader_that_cannot_shard_says_so(dativo, tmp_path):
    j = write_job(tmp_path / "job.yaml", """name: api_sharded
source: {reader: http, config: {url: "http://127.0.0.1:9/x"}}
target: {writer: parquet, config: {path: lake}}
""")
    p = dativo.run("run", j, "--no-progress", "--shard", "0/2")
    assert p.returncode == 2 and "cannot be sharded" in p.stdout, p.stdout


def validate(manifests: str, tmp_path: Path):
    f = tmp_path / f"m-{uuid.uuid4().hex[:6]}.yaml"
    f.write_text(manifests)
    kv = Path(sys.executable).parent / "kubernetes-validate"
    p = subprocess.run([str(kv), "--strict", "-k", "1.31.0", str(f)], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_kubernetes_manifests_validate(dativo, tmp_path):
    import yaml
    job = ROOT / "examples/jobs/postgres_to_iceberg.yaml"
    p = dativo.run("deploy", "kubernetes", job, "--shards", "8", "--image", "registry/dativo:0.1",
                   "--secret", "orders-env", check=0)
    out = p.stdout
    # The example keeps its catalog and warehouse on local disk: each pod would have its own.
    assert "catalog `sqlite://" in p.stderr and "warehouse is local" in p.stderr, p.stderr
    log = validate(out, tmp_path)
    assert "job/orders-pg-to-iceberg" in log and "configmap/" in log
    docs = [d for d in yaml.safe_load_all(out) if d]
    j = next(d for d in docs if d["kind"] == "Job")
    assert j["spec"]["completionMode"] == "Indexed" and j["spec"]["parallelism"] == 8
    assert j["spec"]["backoffLimitPerIndex"] >= 1
    c = j["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][-2:] == ["--shards", "8"]
    assert {"name": "PG_URL", "valueFrom": {"secretKeyRef": {"name": "orders-env", "key": "PG_URL"}}} in c["env"]
    assert c["resources"]["requests"]["memory"].endswith("Mi")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert "reader: postgres" in cm["data"]["job.yaml"]

    # A scheduled job becomes a CronJob (with its time zone).
    sched = tmp_path / "sched.yaml"
    sched.write_text(job.read_text() + 'schedule: {cron: "15 * * * *", timezone: Europe/Berlin}\n')
    out = dativo.run("deploy", "kubernetes", sched, "--shards", "4", "--image", "registry/dativo:0.1",
                     "--secret", "orders-env", "--namespace", "etl", check=0).stdout
    log = validate(out, tmp_path)
    assert "cronjob/" in log and "deployment/" not in log
    docs = [d for d in yaml.safe_load_all(out) if d]
    cj = next(d for d in docs if d["kind"] == "CronJob")
    assert cj["spec"]["timeZone"] == "Europe/Berlin" and cj["spec"]["concurrencyPolicy"] == "Forbid"
    assert cj["metadata"]["namespace"] == "etl"
    # Or `dativo serve` runs it: a Deployment (and no CronJob, which would run it twice).
    out = dativo.run("deploy", "kubernetes", sched, "--image", "registry/dativo:0.1",
                     "--secret", "orders-env", "--serve", "--state-url-secret", "dativo-state/url",
                     check=0).stdout
    log = validate(out, tmp_path)
    assert "deployment/" in log and "service/" in log and "cronjob/" not in log
    docs = [d for d in yaml.safe_load_all(out) if d]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["replicas"] >= 2
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    assert any(e["name"] == "DATIVO_STATE_URL" for e in env)

    # Mistakes are explained.
    p = dativo.run("deploy", "kubernetes", job, "--image", "x")
    assert p.returncode == 2 and "--secret" in p.stderr
    p = dativo.run("deploy", "kubernetes", job, "--image", "x", "--secret", "s", "--serve")
    assert p.returncode == 2 and "--state-url-secret" in p.stderr
    p = dativo.run("deploy", "kubernetes", job, "--image", "x", "--secret", "s", "--serve", "--shards", "2",
                   "--state-url-secret", "a/b")
    assert p.returncode == 2 and "without --serve" in p.stderr
    secs = tmp_path / "secs.yaml"
    secs.write_text(job.read_text() + 'schedule: "*/5 * * * * *"\n')
    p = dativo.run("deploy", "kubernetes", secs, "--image", "x", "--secret", "s")
    assert p.returncode == 2 and "once a minute" in p.stderr


def test_kubernetes_manifests_for_a_directory_of_jobs(dativo, tmp_path):
    """`deploy kubernetes DIR --serve`: one ConfigMap with every job file and ONE serve
    Deployment (not one per job); without --serve, each job's manifests."""
    import shutil
    import yaml
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    for f in ("postgres_to_iceberg.yaml", "postgres_schema_to_iceberg.yaml", "postgres_to_iceberg_merge.yaml"):
        shutil.copy(ROOT / "examples/jobs" / f, jobs / f)
    out = dativo.run("deploy", "kubernetes", jobs, "--image", "registry/dativo:0.1", "--secret", "etl-env",
                     "--serve", "--state-url-secret", "dativo-state/url", check=0).stdout
    log = validate(out, tmp_path)
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap", "Deployment", "PodDisruptionBudget", "Service"], (kinds, log)
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert sorted(cm["data"]) == sorted(p.name for p in jobs.iterdir())
    dep = next(d for d in docs if d["kind"] == "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:3] == ["serve", "--jobs", "/etc/dativo"]
    assert {"name": "PG_URL", "valueFrom": {"secretKeyRef": {"name": "etl-env", "key": "PG_URL"}}} in c["env"]
    # Without --serve: one Job (and ConfigMap) per job file.
    out = dativo.run("deploy", "kubernetes", jobs, "--image", "registry/dativo:0.1", "--secret", "etl-env",
                     check=0).stdout
    validate(out, tmp_path)
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert sum(d["kind"] == "Job" for d in docs) == 3 and sum(d["kind"] == "ConfigMap" for d in docs) == 3
    # An empty directory, or two files with one job name, are explained.
    empty = tmp_path / "empty"
    empty.mkdir()
    p = dativo.run("deploy", "kubernetes", empty, "--image", "x")
    assert p.returncode == 2 and "no job files" in p.stderr
    shutil.copy(jobs / "postgres_to_iceberg.yaml", jobs / "copy.yaml")
    p = dativo.run("deploy", "kubernetes", jobs, "--image", "x", "--secret", "s", "--serve",
                   "--state-url-secret", "a/b")
    assert p.returncode == 2 and "must be unique" in p.stderr, p.stderr
