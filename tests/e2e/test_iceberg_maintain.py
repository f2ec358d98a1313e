"""`dativo maintain` on a job's Iceberg table, checked row by row with two independent readers.

Every row check compares the table's FULL rows with the PostgreSQL source, read twice: by
pyiceberg (through the job's SQLite catalog) and by DuckDB's own Iceberg extension (from the
table's metadata file), in the canonical Arrow form of tests/e2e/lakecheck.py.

1. `dativo runs JOB --json` lists maintenance runs with their reports (`details`); --dry-run
   changes nothing.
2. Snapshot expiry and orphan removal, on local disk, on S3 (moto, in this process) and on
   Azure (Azurite): the files left are exactly the referenced ones plus a fresh stray file
   (old strays are removed; Azurite cannot age a blob, so there only the fresh one is
   checked); the job's next incremental run reads only the new changes.
3. A merge job committing every second while `maintain --compact` loops beside it, both
   SIGKILLed at random moments: after a final clean run the table equals the source.
4. 2,000 small commits (appends, then merges) into a partitioned table, then `maintain
   --compact`: the same rows, a DuckDB full scan no slower, few files (bounded by the bytes and
   the target size). Last: the longest.

Knobs (defaults keep the file at a few minutes): DATIVO_TEST_MAINTAIN_APPENDS (1800),
DATIVO_TEST_MAINTAIN_MERGES (200), DATIVO_TEST_MAINTAIN_RACE_SECONDS (60).
DuckDB reads the S3 table too when DuckDB's httpfs extension (duckdb-extension-httpfs 1.5.5) is
found in DATIVO_DUCKDB_ICEBERG or at DATIVO_DUCKDB_HTTPFS (a directory holding it, or the
`.duckdb_extension` file); otherwise the S3 rows are read by pyiceberg alone (printed).
"""
import datetime
import glob
import io
import json
import math
import os
import pathlib
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from conftest import BIN, DUCKDB_ICEBERG, PG_URL, duckdb_iceberg_query, free_port, write_job
from lakecheck import (MERGE_COLS, make_merge_source, sql, _schema, pg_canon, arrow_canon, diff, httpfs_extension, Lake, live_files, dativo, run_or_kill, run_json, maintain_json, runs_json)

TESTS = pathlib.Path(__file__).resolve().parent
APPENDS = int(os.environ.get("DATIVO_TEST_MAINTAIN_APPENDS", "1800"))
MERGES = int(os.environ.get("DATIVO_TEST_MAINTAIN_MERGES", "200"))
RACE_SECONDS = float(os.environ.get("DATIVO_TEST_MAINTAIN_RACE_SECONDS", "60"))


# ----------------------------------------------------------------------------- helpers
# (random_round: as in test_iceberg_rows.py; the rest in lakecheck.py)


def live(pg, name, cols=MERGE_COLS):
    return pg_canon(pg, cols, f"FROM {name} WHERE deleted_at IS NULL")


def random_round(pg, name, rng, max_id, n_ins, n_upd, n_hard, n_soft, n_reborn=0):
    """Random inserts (new ids above max_id), updates, hard deletes (a tombstone each), soft
    deletes and hard-deleted ids inserted again; every change gets a newer updated_at. Returns
    the new max id."""
    sql(pg, f"""INSERT INTO {name} (id, k, v, d, updated_at)
        SELECT i, 'new-' || i || '-' || %s, (i %% 100000) / 100.0, date '2024-01-01' + (i %% 500)::int,
               clock_timestamp()
        FROM generate_series(%s, %s) i""", rng.random(), max_id + 1, max_id + n_ins)
    max_id += n_ins
    pick = lambda n: rng.sample(range(1, max_id + 1), n)  # noqa: E731 (absent ids are no-ops)
    sql(pg, f"""UPDATE {name} SET k = CASE WHEN id %% 5 = 0 THEN NULL ELSE 'upd-' || id || '-' || %s END,
        v = round((random() * 20000 - 10000)::numeric, 2), d = d + 1, updated_at = clock_timestamp()
        WHERE id = ANY(%s)""", rng.randrange(10**6), pick(n_upd))
    sql(pg, f"DELETE FROM {name} WHERE id = ANY(%s)", pick(n_hard))
    sql(pg, f"""UPDATE {name} SET deleted_at = clock_timestamp(), updated_at = clock_timestamp()
        WHERE id = ANY(%s) AND deleted_at IS NULL""", pick(n_soft))
    if n_reborn:
        sql(pg, f"""INSERT INTO {name} (id, k, v, d, updated_at)
            SELECT id, 'reborn-' || id, 1.5, date '2026-02-02', clock_timestamp()
            FROM (SELECT id FROM (SELECT DISTINCT id FROM {name}_tomb t
                  WHERE NOT EXISTS (SELECT FROM {name} l WHERE l.id = t.id)) g ORDER BY random() LIMIT %s) r""",
            n_reborn)
    return max_id


def merge_job(path, name, view, ident, extra="", target_extra=""):
    return write_job(path, f"""name: {name}
source:
  reader: postgres
  config:
    url: {PG_URL}
    table: {view}
    cursor: updated_at
    batch_size: 5000
target:
  writer: iceberg
  config:
    table: {ident}
    mode: merge
    primary_key: [id]
    delete_when: "deleted_at IS NOT NULL"
{target_extra}
retry:
  attempts: 1
{extra}
""")


@pytest.fixture
def src(pg):
    """A fresh source name; its table, tombstones, view and function are dropped after the test."""
    name = f"mt_{uuid.uuid4().hex[:10]}"
    yield name
    sql(pg, f"DROP VIEW IF EXISTS {name}_v")
    sql(pg, f"DROP TABLE IF EXISTS {name}, {name}_tomb")
    sql(pg, f"DROP FUNCTION IF EXISTS {name}_del()")


def duckdb_scan_seconds(lake, ident, repeat=3):
    """Median wall time of a full scan (every column aggregated) by DuckDB's Iceberg reader, in
    one process (the extension loaded once, untimed)."""
    meta = re.sub("^file://", "", lake.load(ident).metadata_location)
    code = r"""
import json, sys, time, statistics
sys.path.insert(0, sys.argv[1])
import duckdb
from duckdb_iceberg import extension
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
for name in ("avro", "iceberg"):
    con.execute(f"LOAD '{extension(name)}'")
q = ("SELECT count(*), sum(id), sum(v), sum(length(note)), sum(length(pad)), count(DISTINCT region), "
     "max(updated_at), count(deleted_at) FROM iceberg_scan('" + sys.argv[2] + "')")
con.execute(q).fetchall()  # warm: file system cache, extension state
times, rows = [], None
for _ in range(int(sys.argv[3])):
    t0 = time.perf_counter()
    rows = con.execute(q).fetchall()
    times.append(time.perf_counter() - t0)
print(json.dumps({"median": statistics.median(times), "times": times, "rows": rows[0][0]}))
"""
    env = dict(os.environ, PYTHONPATH=str(DUCKDB_ICEBERG))
    p = subprocess.run([sys.executable, "-c", code, str(TESTS), meta, str(repeat)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


# ----------------------------------------------------------------------------- 1. run history

def test_runs_json_lists_maintenance_with_details(tmp_path, pg, src):
    lake = Lake(tmp_path)
    make_merge_source(pg, src, 5_000)
    job = merge_job(tmp_path / "hist.yaml", "hist", f"{src}_v", "lake.hist",
                    extra="checkpoint: {rows: 1000}\nmaintenance:\n  compact: {min_input_files: 2}")
    dativo(tmp_path, "run", job, "--no-progress")
    random_round(pg, src, random.Random(1), 5_000, 50, 200, 20, 20)
    dativo(tmp_path, "run", job, "--no-progress")
    snap = lake.load("lake.hist").current_snapshot().snapshot_id

    # --dry-run reports and changes nothing; it is recorded as well.
    dry, _ = maintain_json(tmp_path, job, "--compact", "--dry-run")
    assert dry["compact"]["dry_run"] is True and dry["compact"]["commit_id"] is None, dry
    assert dry["compact"]["data_files_after"] < dry["compact"]["data_files_before"], dry
    assert lake.load("lake.hist").current_snapshot().snapshot_id == snap

    reports, _ = maintain_json(tmp_path, job, "--compact", "--rewrite-manifests")
    assert set(reports) == {"compact", "rewrite-manifests"}, reports
    runs = runs_json(tmp_path, job)
    mine = [r for r in runs if r["job"] == "hist#maintain"]
    assert len(mine) == 2, runs
    last = mine[0]
    assert last["status"] == "succeeded" and last["error"] is None, last
    details = {d["operation"]: d for d in last["details"]}
    assert details == reports, (details, reports)
    assert last["rows"] == reports["compact"]["rows_rewritten"], last
    assert last["commits"] == 2, last
    assert {d["operation"]: d for d in mine[1]["details"]} == dry
    # The job's own runs have no details, and are listed beside the maintenance runs.
    job_runs = [r for r in runs if r["job"] == "hist"]
    assert len(job_runs) == 2 and all(r.get("details") is None for r in job_runs), job_runs
    text = dativo(tmp_path, "runs", job).stdout
    assert last["run_id"] in text and "maintain" in text, text
    lake.assert_rows("lake.hist", MERGE_COLS, live(pg, src), "after maintenance")

    # A failed maintenance run is recorded with its error; orphan removal under 1h is refused.
    write_job(tmp_path / "bad.yaml", (tmp_path / "hist.yaml").read_text().replace(
        "compact: {min_input_files: 2}", "remove_orphans: {older_than: 10m}"))
    p = dativo(tmp_path, "maintain", tmp_path / "bad.yaml", "--remove-orphans", check=None)
    assert p.returncode != 0 and "1h" in p.stdout + p.stderr, (p.returncode, p.stdout, p.stderr)


# ----------------------------------------------------------------------------- 2. expiry, orphans

@pytest.fixture(scope="module")
def moto_s3():
    """An S3 endpoint served by moto in this process (so that a test can age an object)."""
    import logging
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class Files:
    """The files under a table location, local or on S3: list, create, age."""

    def __init__(self, location, s3=None, azure=None):
        self.location = location.rstrip("/")
        self.s3 = s3
        self.azure = azure  # an azurite.Azure container
        if azure:
            from azurite import split_abfss
            _, self.prefix = split_abfss(self.location)
        if s3:
            import boto3
            self.client = boto3.client("s3", endpoint_url=s3, region_name="us-east-1",
                                       aws_access_key_id="testing", aws_secret_access_key="testing")
            self.bucket, self.prefix = re.match(r"s3a?://([^/]+)/(.*)", self.location).groups()

    def norm(self, path):
        return re.sub("^file://", "", path)

    def list(self, sub):
        """Every file under LOCATION/sub/, as full paths (s3://…, abfss://… or /…)."""
        if self.azure:
            return {self.azure.abfss(n) for n in self.azure.list(f"{self.prefix}/{sub}/")}
        if self.s3:
            out = []
            for page in self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=f"{self.prefix}/{sub}/"):
                out += [f"s3://{self.bucket}/{o['Key']}" for o in page.get("Contents", [])]
            return set(out)
        root = pathlib.Path(self.norm(self.location)) / sub
        return {str(p) for p in root.rglob("*") if p.is_file()}

    def put(self, sub, body, age=None):
        """A file LOCATION/sub with `body`, last modified `age` ago (None: now; Azurite
        cannot age a blob)."""
        if self.azure:
            assert age is None, "Azurite keeps every blob's real modification time"
            self.azure.put(f"{self.prefix}/{sub}", body)
            return self.azure.abfss(f"{self.prefix}/{sub}")
        if self.s3:
            key = f"{self.prefix}/{sub}"
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body)
            if age:
                from moto.core import DEFAULT_ACCOUNT_ID
                from moto.s3.models import s3_backends
                obj = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[self.bucket].keys[key]
                obj.last_modified = obj.last_modified - age
                head = self.client.head_object(Bucket=self.bucket, Key=key)["LastModified"]
                assert head < datetime.datetime.now(datetime.timezone.utc) - age + datetime.timedelta(minutes=1)
            return f"s3://{self.bucket}/{key}"
        p = pathlib.Path(self.norm(self.location)) / sub
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
        if age:
            old = time.time() - age.total_seconds()
            os.utime(p, (old, old))
        return str(p)


def referenced_files(t, norm):
    """What the table's metadata references, as pyiceberg reads it: the current metadata file
    and those of its metadata log, the manifest list of every (retained) snapshot, their
    manifests, and the data and delete files live in them (a file only in a DELETED entry was
    live only in an expired snapshot: expiry deletes it)."""
    md = t.metadata
    refs = {norm(t.metadata_location)} | {norm(e.metadata_file) for e in md.metadata_log}
    for s in md.snapshots:
        refs.add(norm(s.manifest_list))
        for m in s.manifests(t.io):
            refs.add(norm(m.manifest_path))
            for e in m.fetch_manifest_entry(t.io, discard_deleted=True):
                refs.add(norm(e.data_file.file_path))
    return refs


def fake_parquet():
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [1, 2, 3]}), buf)
    return buf.getvalue()


@pytest.mark.parametrize("where", ["local", "s3", "azure"])
def test_expiry_and_orphans_leave_exactly_the_referenced_files(tmp_path, pg, src, where, request):
    env = None
    if where == "s3":
        endpoint = request.getfixturevalue("moto_s3")
        import boto3
        bucket = f"b-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=bucket)
        warehouse = f"s3://{bucket}/warehouse"
        target_extra = f"""    warehouse: {warehouse}
    s3:
      endpoint: {endpoint}
      region: us-east-1
      access_key_id: "${{env:AWS_ACCESS_KEY_ID}}"
      secret_access_key: "${{env:AWS_SECRET_ACCESS_KEY}}"
      path_style: true"""
        lake = Lake(tmp_path, warehouse, s3=endpoint)
        env = S3_KEYS
    elif where == "azure":
        from azurite import AZ_KEY, AZURE, Azure
        if not AZURE:
            pytest.skip("needs Azurite (scripts/test starts it)")
        store = Azure()
        target_extra = f"    warehouse: az://{store.bucket}/warehouse\n{store.block()}"
        lake = Lake(tmp_path, store.abfss("warehouse"), azure=store)
        env = {"AZ_TEST_KEY": AZ_KEY}
    else:
        target_extra = ""
        lake = Lake(tmp_path)
    make_merge_source(pg, src, 20_000)
    job = merge_job(tmp_path / "exp.yaml", "exp", f"{src}_v", "lake.exp", target_extra=target_extra, extra="""
checkpoint: {rows: 3000}
maintenance:
  compact: {min_input_files: 2}
  expire_snapshots: {older_than: 1s, retain_last: 1}
  remove_orphans: {older_than: 1d}""")
    rng = random.Random(5)
    max_id = 20_000
    dativo(tmp_path, "run", job, "--no-progress", env=env)
    for _ in range(4):
        max_id = random_round(pg, src, rng, max_id, n_ins=500, n_upd=1500, n_hard=200, n_soft=200, n_reborn=20)
        dativo(tmp_path, "run", job, "--no-progress", env=env)
    want = live(pg, src)
    lake.assert_rows("lake.exp", MERGE_COLS, want, f"{where}: after the runs")
    # A compaction is now the current snapshot: after expiry (retain_last 1) no snapshot of the
    # job is left, and its state lives on in the table properties only.
    reports, _ = maintain_json(tmp_path, job, "--compact", env=env)
    assert reports["compact"]["commit_id"], reports
    t = lake.load("lake.exp")
    n_snapshots = len(t.metadata.snapshots)
    files = Files(t.location(), s3=lake.s3, azure=lake.azure)
    norm = files.norm
    old = set()
    if not lake.azure:  # Azurite cannot age a blob: there, only the fresh stray (kept) is checked
        old = {files.put("data/stray-old.parquet", fake_parquet(), age=datetime.timedelta(days=2)),
               files.put("data/id_bucket=9/stray-old-2.parquet", fake_parquet(), age=datetime.timedelta(days=2)),
               files.put("metadata/stray-old.avro", b"not avro", age=datetime.timedelta(days=2))}
    fresh_stray = files.put("data/stray-fresh.parquet", fake_parquet())
    before = files.list("data") | files.list("metadata")
    assert old | {fresh_stray} <= before
    time.sleep(1.5)  # every snapshot is now older than `older_than: 1s`

    reports, _ = maintain_json(tmp_path, job, "--expire-snapshots", "--remove-orphans", env=env)
    e, o = reports["expire-snapshots"], reports["remove-orphans"]
    print(f"{where}: expire {json.dumps(e)}\n{where}: orphans {json.dumps(o)}")
    t = lake.load("lake.exp")
    assert len(t.metadata.snapshots) == 1, [s.snapshot_id for s in t.metadata.snapshots]
    assert e["snapshots_expired"] == n_snapshots - 1, (e, n_snapshots)
    assert t.current_snapshot().summary.operation.value == "replace"
    state = t.properties.get("dativo.job-state.exp")
    assert state and "cursor" in state, t.properties

    refs = referenced_files(t, norm)
    after = files.list("data") | files.list("metadata")
    assert not old & after, old & after
    assert fresh_stray in after
    unreferenced = sorted(after - refs - {fresh_stray})
    missing = sorted(refs - after)
    assert not missing, f"{where}: referenced files missing from storage: {missing[:5]}"
    assert not unreferenced, f"{where}: {len(unreferenced)} files left that nothing references: {unreferenced[:5]}"
    deleted = before - after
    assert o["files_deleted"] == len(old), o
    assert e["files_deleted"] + o["files_deleted"] == len(deleted), (e, o, len(deleted))
    print(f"{where}: {len(before)} files → {len(after)} ({len(refs)} referenced + the fresh stray); "
          f"{n_snapshots} snapshots → 1")
    lake.assert_rows("lake.exp", MERGE_COLS, want, f"{where}: after expiry and orphan removal")

    # The next incremental run reads only the rows changed since (its state survived expiry).
    sql(pg, f"UPDATE {src} SET k = 'late-' || id, updated_at = clock_timestamp() WHERE id IN "
            f"(SELECT id FROM {src} WHERE deleted_at IS NULL ORDER BY id LIMIT 37)")
    sql(pg, f"INSERT INTO {src} (id, k, updated_at) SELECT i, 'late', clock_timestamp() "
            f"FROM generate_series({max_id + 1}, {max_id + 13}) i")
    s = run_json(tmp_path, job, env=env)
    assert s["rows"] == 50, s
    latest = [r for r in runs_json(tmp_path, job, env=env) if r["job"] == "exp"][0]
    assert latest["run_id"] == s["run_id"] and latest["rows"] == 50, latest
    lake.assert_rows("lake.exp", MERGE_COLS, live(pg, src), f"{where}: the run after expiry")


# ----------------------------------------------------------------------------- 3. race + kills

def test_compaction_loop_racing_a_merge_job_under_sigkill(tmp_path, pg, src):
    """A merge job (cursor updated_at, soft and hard deletes) run every ~1 s for RACE_SECONDS on
    changing rows while `maintain --compact` runs in a loop beside it; both SIGKILLed at random
    moments (at least 5 kills each). After a final clean run: the table equals the source,
    no duplicate or resurrected key (both readers); again after a final clean compaction."""
    lake = Lake(tmp_path)
    make_merge_source(pg, src, 30_000)
    job = merge_job(tmp_path / "race.yaml", "race", f"{src}_v", "lake.race",
                    extra="checkpoint:\n  rows: 300\nmaintenance:\n  compact: {min_input_files: 2}",
                    target_extra="    partition_by: [\"bucket(4, id)\"]")
    dativo(tmp_path, "run", job, "--no-progress")
    lake.assert_rows("lake.race", MERGE_COLS, live(pg, src), "first load")

    stop = threading.Event()
    maint = {"runs": 0, "kills": 0, "ok": 0, "commits": 0, "conflicts": 0, "failures": []}

    def kill_window(durations):
        """Up to 1.2× the median duration of the completed runs so far: most kills land inside."""
        return 1.2 * statistics.median(durations[-20:]) if durations else 0.5

    def maintain_loop():
        mrng = random.Random(7)
        durations = []
        while not stop.is_set():
            kill_after = mrng.uniform(0.01, kill_window(durations)) if mrng.random() < 0.5 else None
            killed, rc, out, err, took = run_or_kill(tmp_path, ["maintain", job, "--compact", "--json"], kill_after)
            maint["runs"] += 1
            if killed:
                maint["kills"] += 1
            elif rc == 0:
                maint["ok"] += 1
                durations.append(took)
                for r in json.loads(out):
                    maint["commits"] += r["commit_id"] is not None
                    maint["conflicts"] += r["conflicts"]
            else:
                maint["failures"].append((rc, out[-2000:], err[-2000:]))
            time.sleep(mrng.uniform(0, 0.2))

    th = threading.Thread(target=maintain_loop, daemon=True)
    th.start()
    rng = random.Random(11)
    max_id, runs, kills, done, durations = 30_000, 0, 0, 0, []
    failures = []
    t0 = time.monotonic()
    try:
        while (time.monotonic() - t0 < RACE_SECONDS or kills < 5 or maint["kills"] < 5) \
                and time.monotonic() - t0 < RACE_SECONDS * 3:
            # ~1,000 changes: a run commits 3 to 4 times (checkpoint every 300 rows).
            max_id = random_round(pg, src, rng, max_id, n_ins=200, n_upd=600, n_hard=80, n_soft=80,
                                  n_reborn=20)
            kill_after = rng.uniform(0.01, kill_window(durations)) if rng.random() < 0.5 else None
            killed, rc, out, err, took = run_or_kill(tmp_path, ["run", job, "--no-progress"], kill_after)
            runs += 1
            if killed:
                kills += 1
            elif rc == 0:
                done += 1
                durations.append(took)
            else:
                failures.append((rc, out[-2000:], err[-2000:]))
            time.sleep(max(0.0, 1.0 - took))
    finally:
        stop.set()
        th.join(timeout=300)
    elapsed = time.monotonic() - t0
    print(f"race: {elapsed:.0f} s; job: {runs} runs, {done} completed, {kills} SIGKILLed, failures "
          f"{[f[0] for f in failures]}; maintain: {maint['runs']} runs, {maint['ok']} completed "
          f"({maint['commits']} committed, {maint['conflicts']} conflicts), {maint['kills']} SIGKILLed, "
          f"failures {[f[0] for f in maint['failures']]}")
    assert not failures, f"job runs failed (not killed): {failures[:3]}"
    assert not maint["failures"], f"maintain runs failed (not killed): {maint['failures'][:3]}"
    assert kills >= 5 and maint["kills"] >= 5, (kills, maint)
    assert maint["commits"] >= 3, f"compaction committed only {maint['commits']} times during the race"

    dativo(tmp_path, "run", job, "--no-progress")
    want = live(pg, src)
    lake.assert_rows("lake.race", MERGE_COLS, want, "after the race and a final clean run")
    reports, _ = maintain_json(tmp_path, job, "--compact")
    assert reports["compact"]["delete_files_after"] == 0, reports
    lake.assert_rows("lake.race", MERGE_COLS, want, "after a final clean compaction")
    # Compactions did land between the job's commits.
    ops = [s.summary.operation.value for s in lake.load("lake.race").snapshots()]
    assert ops.count("replace") >= 3, {o: ops.count(o) for o in set(ops)}


# ----------------------------------------------------------------------------- 4. compaction

BIG_COLS = [("id", "int"), ("region", "text"), ("v", "dec"), ("note", "text"), ("pad", "text"),
            ("updated_at", "ts"), ("deleted_at", "ts")]
REGIONS = ["eu", "us", "apac", "latam"]


def test_compaction_after_2000_small_commits(tmp_path, pg, src):
    """2,000 small commits — APPENDS fast appends of 20 rows (one data file each: 20 consecutive
    ids of one region), then MERGES merge commits (20 updated rows each, some soft-deleted:
    a data file and position deletes) — into a table partitioned by region; then `maintain
    --compact` with target_file_size 1MB. Between runs of 100 commits the manifests are
    rewritten (data files untouched), as a scheduled `rewrite_manifests` would; a second
    compaction finds nothing to do."""
    per, chunk, target = 20, 100, 1_000_000
    lake = Lake(tmp_path)
    sql(pg, f"""CREATE TABLE {src} (id bigint PRIMARY KEY, region text NOT NULL, v numeric(12,2),
        note text, pad text, updated_at timestamptz NOT NULL, deleted_at timestamptz)""")
    sql(pg, f"CREATE INDEX ON {src} (updated_at)")

    def job(mode):
        key = "\n    primary_key: [id]\n    delete_when: \"deleted_at IS NOT NULL\"" if mode == "merge" else ""
        return write_job(tmp_path / "small.yaml", f"""name: small
source:
  reader: postgres
  config: {{url: "{PG_URL}", table: {src}, cursor: updated_at, batch_size: {per}}}
target:
  writer: iceberg
  config:
    table: lake.small
    mode: {mode}
    partition_by: [region]{key}
checkpoint: {{rows: {per}}}
retry: {{attempts: 1}}
maintenance:
  compact: {{target_file_size: 1MB}}
""")

    t0 = time.monotonic()
    commits = rows = next_id = 0
    path = job("append")
    # 256 hex characters of md5 per row: about 130 bytes compressed, so the table is a few MB.
    pad = " || ".join(f"md5(i::text || '{c}')" for c in "abcdefgh")
    while commits < APPENDS:
        k = min(chunk, APPENDS - commits)
        # Blocks of `per` consecutive ids, one region each, in cursor order: one batch, one commit,
        # one data file.
        sql(pg, f"""INSERT INTO {src} (id, region, v, note, pad, updated_at)
            SELECT i, (ARRAY{REGIONS!r})[1 + ((i - 1) / {per}) % 4], (i % 100000) / 100.0,
                   'n' || i, {pad}, clock_timestamp()
            FROM generate_series({next_id + 1}, {next_id + k * per}) i""")
        next_id += k * per
        s = run_json(tmp_path, path)
        assert s["status"] == "succeeded" and s["rows"] == k * per, s
        assert s["commits"] >= k, s
        commits += s["commits"]
        rows += s["rows"]
        dativo(tmp_path, "maintain", path, "--rewrite-manifests")
    t_app = time.monotonic() - t0

    path = job("merge")
    rng = random.Random(2026)
    blocks = next_id // per
    merges = 0
    soft = 0
    while merges < MERGES:
        k = min(chunk, MERGES - merges)
        # Each group: 10 live rows of each of two neighbouring blocks of one region (b and b + 4;
        # distinct blocks within a run, so every group stays one batch of `per` rows in cursor
        # order); every 7th row soft-deleted. Neighbours keep the key bounds of the merge's new
        # file narrow, as updates of recent rows do (random pairs made every file's bounds span
        # the table, and each merge then opened hundreds of files: 0.35 s a commit).
        pop = range(0, blocks - 4, 8)
        k = min(k, len(pop))
        picked = rng.sample(pop, k)
        changed = deleted = 0
        for g in range(k):
            b1, b2 = picked[g], picked[g] + 4
            n = sql(pg, f"""WITH ids AS (
                    (SELECT id FROM {src} WHERE id BETWEEN %s AND %s AND deleted_at IS NULL ORDER BY random() LIMIT 10)
                    UNION ALL
                    (SELECT id FROM {src} WHERE id BETWEEN %s AND %s AND deleted_at IS NULL ORDER BY random() LIMIT 10))
                UPDATE {src} SET v = round((random() * 20000 - 10000)::numeric, 2), note = 'm-' || %s || '-' || id,
                    pad = md5(random()::text) || pad,
                    deleted_at = CASE WHEN (id + %s) %% 7 = 0 THEN clock_timestamp() END,
                    updated_at = clock_timestamp()
                WHERE id IN (SELECT id FROM ids) RETURNING deleted_at IS NOT NULL""",
                      b1 * per + 1, b1 * per + per, b2 * per + 1, b2 * per + per, merges + g, g)
            changed += len(n)
            deleted += sum(1 for (d,) in n if d)
        s = run_json(tmp_path, path)
        # The summary counts the rows written; a soft-deleted row deletes its key instead.
        assert s["status"] == "succeeded" and s["rows"] == changed - deleted, (s, changed, deleted)
        soft += deleted
        merges += k
        commits += s["commits"]
        dativo(tmp_path, "maintain", path, "--rewrite-manifests")
    t_load = time.monotonic() - t0
    print(f"{commits} commits ({APPENDS} append batches in {t_app:.0f} s, {MERGES} merge batches, "
          f"{soft} soft deletes) in {t_load:.0f} s")
    assert commits >= APPENDS + MERGES

    t = lake.load("lake.small")
    assert [f.name for f in t.spec().fields] == ["region"]
    ops = [s.summary.operation.value for s in t.snapshots()]
    assert ops.count("append") >= APPENDS and ops.count("overwrite") + ops.count("delete") >= MERGES * 0.9, \
        {o: ops.count(o) for o in set(ops)}
    data_before, del_before = live_files(t)
    want = pg_canon(pg, BIG_COLS, f"FROM {src} WHERE deleted_at IS NULL")
    lake.assert_rows("lake.small", BIG_COLS, want, "before compaction")
    scan_before = duckdb_scan_seconds(lake, "lake.small")
    assert scan_before["rows"] == want.num_rows
    t_check = time.monotonic() - t0 - t_load

    t1 = time.monotonic()
    reports, p = maintain_json(tmp_path, path, "--compact")
    t_compact = time.monotonic() - t1
    r = reports["compact"]
    print(f"compact report ({t_compact:.1f} s; load {t_load:.0f} s, checks before {t_check:.0f} s):",
          json.dumps(r))
    t = lake.load("lake.small")
    data_after, del_after = live_files(t)
    assert (r["data_files_before"], r["delete_files_before"]) == (len(data_before), len(del_before)), r
    assert (r["data_files_after"], r["delete_files_after"]) == (len(data_after), len(del_after)), r
    assert len(del_after) == 0, f"{len(del_after)} delete files left after compaction"
    assert r["rows_rewritten"] == want.num_rows, (r, want.num_rows)
    assert r["bytes_rewritten"] == sum(s for s, _ in data_before.values()), r
    assert r["commit_id"] == str(t.current_snapshot().snapshot_id), r
    assert t.current_snapshot().summary.operation.value == "replace"
    partitions = {part for _, part in data_after.values()}
    assert len(partitions) == 4, partitions
    table_bytes = sum(s for s, _ in data_after.values())
    bound = math.ceil(table_bytes / target) + len(partitions)
    sizes = sorted(s for s, _ in data_after.values())
    print(f"data files {len(data_before)} (+{len(del_before)} delete files) → {len(data_after)} "
          f"({table_bytes / 1e6:.2f} MB; bound ceil(bytes / 1MB) + {len(partitions)} partitions = {bound}); "
          f"file sizes {sizes}")
    lake.assert_rows("lake.small", BIG_COLS, want, "after compaction")
    scan_after = duckdb_scan_seconds(lake, "lake.small")
    assert scan_after["rows"] == want.num_rows
    print(f"DuckDB full scan ({want.num_rows:,} rows): before compaction {scan_before['median']:.3f} s "
          f"({len(data_before)} data + {len(del_before)} delete files), after {scan_after['median']:.3f} s "
          f"({len(data_after)} files); runs {scan_before['times']} / {scan_after['times']}")
    assert scan_after["median"] <= scan_before["median"] * 1.5, (scan_before, scan_after)

    # Compaction settles: run again, nothing is small enough and plentiful enough to rewrite.
    again, _ = maintain_json(tmp_path, path, "--compact")
    again = again["compact"]
    print("second compaction:", json.dumps(again))
    assert again["rows_rewritten"] == 0 and again["commit_id"] is None, again

    # The job keeps working on the compacted table: a merge of changed rows lands exactly.
    sql(pg, f"UPDATE {src} SET note = 'after', updated_at = clock_timestamp() WHERE id % 500 = 1")
    run_json(tmp_path, path)
    lake.assert_rows("lake.small", BIG_COLS, pg_canon(pg, BIG_COLS, f"FROM {src} WHERE deleted_at IS NULL"),
                     "a merge after compaction")

    # Last, so that the checks above ran whatever the file sizes: few files, near the target.
    assert max(sizes) <= 1.5 * target, f"a compacted file of {max(sizes)} bytes for a 1MB target"
    assert len(data_after) <= bound, \
        f"{len(data_after)} data files after compaction, more than ceil(bytes / target) + partitions = {bound}: {sizes}"
