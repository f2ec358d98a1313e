"""`dativo serve`: schedules, the HTTP API (checked against docs/openapi.yaml), /metrics, the
status page in headless Chromium, graceful shutdown, and two instances sharing a PostgreSQL
state store with one of them killed."""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import duckdb
import yaml

from conftest import BIN, PG_URL, ROOT, free_port, http, write_csvs

TOKEN = "serve-test-token-" + uuid.uuid4().hex[:8]


class Serve:
    def __init__(self, cwd, jobs, state_url=None, token=TOKEN, grace="10s"):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.pop("DATIVO_STATE_DIR", None)
        env["DATIVO_API_TOKEN"] = token
        args = [BIN, "serve", "--jobs", str(jobs), "--listen", f"127.0.0.1:{self.port}", "--grace", grace,
                "--max-concurrent", "3"]
        if state_url:
            args += ["--state-url", state_url]
        self.log = open(cwd / f"serve-{self.port}.log", "w")
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if http("GET", self.base + "/readyz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("serve did not become ready: " + (cwd / f"serve-{self.port}.log").read_text())

    def get(self, path):
        return http("GET", self.base + path)

    def post(self, path, token=TOKEN):
        return http("POST", self.base + path, token=token)

    def jobs(self):
        return {j["name"]: j for j in self.get("/api/jobs")[1]["jobs"]}

    def metric(self, name, job):
        text = self.get("/metrics")[1]
        for line in text.splitlines():
            if line.startswith(name + "{") and f'job="{job}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        return self.proc.returncode


def wait_until(cond, timeout=30, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def count(path):
    files = [str(p) for p in pathlib.Path(path).glob("*.parquet")]
    if not files:
        return (0, 0)
    return duckdb.execute(f"SELECT count(*), count(DISTINCT id) FROM read_parquet({files!r})").fetchone()


def slow_job(path, name, lake):
    """A manual job that takes ~30 s (PostgreSQL sleeps 10 ms a row) and commits every 20 rows
    (`mode: append`: a full refresh would otherwise overwrite, in one commit at the end)."""
    path.write_text(f"""name: {name}
source:
  reader: postgres
  config:
    url: {PG_URL}
    query: "SELECT i AS id, length(pg_sleep(0.01)::text) AS s FROM generate_series(1, 3000) i"
    batch_size: 20
target: {{writer: parquet, config: {{path: "{lake}", mode: append}}}}
checkpoint: {{rows: 20}}
""")


def test_serve_schedules_api_metrics_page_and_shutdown(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_csvs(tmp_path / "data_a", 3, 1000)
    write_csvs(tmp_path / "data_b", 2, 500)
    (jobs / "a.yaml").write_text(f"""name: every_second
source: {{reader: file, config: {{path: "{tmp_path}/data_a/*.csv"}}}}
target: {{writer: parquet, config: {{path: "{tmp_path}/lake/a"}}}}
schedule: "* * * * * *"
""")
    (jobs / "b.yaml").write_text(f"""name: every_two_seconds
description: Berlin time, every two seconds
source: {{reader: file, config: {{path: "{tmp_path}/data_b/*.csv"}}}}
target: {{writer: parquet, config: {{path: "{tmp_path}/lake/b"}}}}
schedule: {{cron: "*/2 * * * * *", timezone: Europe/Berlin}}
""")
    slow_job(jobs / "slow.yaml", "slow_manual", tmp_path / "lake/slow")
    s = Serve(tmp_path, jobs)
    try:
        # The scheduled jobs run on their own, more than once.
        wait_until(lambda: (s.metric("dativo_runs_total", "every_second") or 0) >= 3, what="3 runs of every_second")
        wait_until(lambda: (s.metric("dativo_runs_total", "every_two_seconds") or 0) >= 2, what="2 runs of every_two_seconds")
        assert s.metric("dativo_rows_total", "every_second") == 3000
        assert s.metric("dativo_rows_total", "every_two_seconds") == 1000
        assert s.metric("dativo_last_success_timestamp_seconds", "every_second") > time.time() - 60
        assert s.metric("dativo_run_failures_total", "every_second") == 0
        text = s.get("/metrics")[1]
        assert 'dativo_run_duration_seconds_bucket{job="every_second",reader="file",writer="parquet",le="+Inf"}' in text
        assert count(tmp_path / "lake/a") == (3000, 3000)  # scheduled re-runs add nothing twice
        j = s.jobs()
        assert set(j) == {"every_second", "every_two_seconds", "slow_manual"}
        assert j["every_two_seconds"]["timezone"] == "Europe/Berlin" and j["every_second"]["next_run"]
        assert j["slow_manual"]["schedule"] is None

        # Trigger and cancel through the API; the token is required.
        assert s.post("/api/jobs/slow_manual/runs", token=None)[0] == 401
        assert s.post("/api/jobs/slow_manual/runs", token="wrong")[0] == 401
        assert s.post("/api/jobs/nope/runs")[0] == 404
        code, body = s.post("/api/jobs/slow_manual/runs")
        assert code == 202 and body["status"] == "started", body
        run_id = body["run_id"]
        code, body = s.post("/api/jobs/slow_manual/runs")
        assert code == 409 and body["run_id"] == run_id
        wait_until(lambda: (s.metric("dativo_commits_total", "slow_manual") or 0) >= 2, what="slow job commits")
        assert s.get(f"/api/runs/{run_id}")[1]["status"] == "running"
        assert s.post(f"/api/runs/{run_id}/cancel", token=None)[0] == 401
        code, body = s.post(f"/api/runs/{run_id}/cancel")
        assert code == 202, body
        wait_until(lambda: s.jobs()["slow_manual"]["running"] is None, timeout=15, what="the cancelled run to end")
        run = s.get(f"/api/runs/{run_id}")[1]
        assert run["status"] == "cancelled", run
        # What the cancelled run committed is exactly what is in the lake.
        assert count(tmp_path / "lake/slow") == (run["rows"], run["rows"]) and 0 < run["rows"] < 3000
        log = s.get(f"/api/runs/{run_id}/log")[1]
        assert "cancellation requested" in log and "cancelled" in log, log
        detail = s.get("/api/jobs/slow_manual")[1]
        assert detail["runs"][0]["run_id"] == run_id and detail["runs"][0]["status"] == "cancelled"

        # An invalid job file is reported; the others keep running.
        (jobs / "broken.yaml").write_text("name: broken\nsource: {reader: nope, config: {}}\n"
                                          "target: {writer: parquet, config: {path: x}}\n")
        wait_until(lambda: s.get("/api/jobs")[1]["invalid"], what="the invalid file to be reported")
        inv = s.get("/api/jobs")[1]["invalid"][0]
        assert inv["file"].endswith("broken.yaml") and "unknown reader `nope`" in inv["error"]
        before = s.metric("dativo_runs_total", "every_second")
        wait_until(lambda: s.metric("dativo_runs_total", "every_second") > before, what="runs to go on")
        # A changed file is reloaded.
        (jobs / "b.yaml").write_text((jobs / "b.yaml").read_text().replace("*/2 * * * * *", "0 0 1 1 *"))
        wait_until(lambda: s.jobs()["every_two_seconds"]["schedule"] == "0 0 1 1 *", what="reload")

        # The page, rendered by headless Chromium.
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        assert chromium, "scripts/test installs Debian's chromium"
        profile = tmp_path / "chromium-profile"
        dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", "--disable-component-update",
                              "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                              "--dump-dom", s.base + "/"], capture_output=True, text=True, timeout=120).stdout
        for name in ["every_second", "every_two_seconds", "slow_manual"]:
            assert f'data-job="{name}"' in dom, dom[:2000]
        assert "succeeded" in dom and "cancelled" in dom and "broken.yaml" in dom
        shot = tmp_path / "page.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,700",
                        s.base + "/"], capture_output=True, timeout=120)
        assert shot.exists() and shot.stat().st_size > 5000

        # Every path of the OpenAPI description exists.
        spec = yaml.safe_load((ROOT / "docs/openapi.yaml").read_text())
        from openapi_spec_validator import validate
        validate(spec)
        for path, ops in spec["paths"].items():
            p = path.replace("{name}", "every_second").replace("{id}", run_id)
            for method in ops:
                code, body = http(method.upper(), s.base + p, token=TOKEN)
                # A route that does not exist answers 404/405 without our JSON error body.
                assert code != 405 and (code != 404 or isinstance(body, dict)), (method, p, code)
        assert s.get("/healthz")[0] == 200
    finally:
        # Graceful shutdown: exit 0.
        assert s.stop() == 0, (tmp_path / f"serve-{s.port}.log").read_text()[-3000:]
    assert "dativo serve stopped" in (tmp_path / f"serve-{s.port}.log").read_text()


def test_shutdown_cancels_a_run_after_the_grace_period(tmp_path):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    slow_job(jobs / "slow.yaml", "slow_grace", tmp_path / "lake")
    s = Serve(tmp_path, jobs, grace="1s")
    code, body = s.post("/api/jobs/slow_grace/runs")
    assert code == 202
    wait_until(lambda: (s.metric("dativo_commits_total", "slow_grace") or 0) >= 2, what="commits")
    t = time.time()
    assert s.stop() == 0
    assert time.time() - t < 15
    log = (tmp_path / f"serve-{s.port}.log").read_text()
    assert "grace period over: cancelling" in log
    rows = count(tmp_path / "lake")
    assert rows[0] == rows[1] and rows[0] % 20 == 0 and 0 < rows[0] < 3000  # whole commits only


def test_two_instances_share_postgres_state_and_fail_over(tmp_path, pg):
    table = f"serve_src_{uuid.uuid4().hex[:8]}"
    job = f"shared_{uuid.uuid4().hex[:8]}"
    with pg.cursor() as c:
        c.execute(f"CREATE TABLE {table} (id int8 PRIMARY KEY, v text)")
        c.execute(f"INSERT INTO {table} SELECT i, 'v' || i FROM generate_series(1, 2000) i")
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "shared.yaml").write_text(f"""name: {job}
source:
  reader: postgres
  config:
    url: {PG_URL}
    table: {table}
    cursor: id
    batch_size: 200
target: {{writer: parquet, config: {{path: "{tmp_path}/lake"}}}}
checkpoint: {{rows: 200}}
schedule: "* * * * * *"
""")
    a = Serve(tmp_path, jobs, state_url=PG_URL)
    b = None
    try:
        wait_until(lambda: (a.jobs()[job]["last_run"] or {}).get("status") == "succeeded", what="a first run on A")
        b = Serve(tmp_path, jobs, state_url=PG_URL)
        # Both schedule the job every second; the advisory lock lets only one run it at a time.
        next_id = 2001
        for _ in range(10):
            with pg.cursor() as c:
                c.execute(f"INSERT INTO {table} SELECT i, 'v' || i FROM generate_series({next_id}, {next_id + 499}) i")
            next_id += 500
            time.sleep(0.3)
        # Kill A, preferably in the middle of a run.
        deadline = time.time() + 5
        while time.time() < deadline and not a.jobs()[job]["running"]:
            time.sleep(0.02)
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        killed_at_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        for _ in range(5):
            with pg.cursor() as c:
                c.execute(f"INSERT INTO {table} SELECT i, 'v' || i FROM generate_series({next_id}, {next_id + 499}) i")
            next_id += 500
            time.sleep(0.3)
        total = next_id - 1
        # B carries on alone: everything lands, once.
        wait_until(lambda: count(tmp_path / "lake") == (total, total), timeout=60, what="all rows on B")
        last = b.jobs()[job]["last_run"]
        assert last and last["status"] == "succeeded"
        with pg.cursor() as c:
            c.execute("SELECT status, count(*) FROM dativo_runs WHERE job = %s GROUP BY status", (job,))
            statuses = dict(c.fetchall())
            c.execute("SELECT state FROM dativo_job_state WHERE job = %s", (job,))
            state = json.loads(c.fetchone()[0])
        assert statuses.get("succeeded", 0) >= 3, statuses
        assert "running" not in statuses or statuses["running"] <= 1, statuses
        # Never two runs of the job at once, across the instances (the advisory lock; the
        # Parquet directory's own lock would hide a double run from the row counts).
        with pg.cursor() as c:
            c.execute("SELECT started_at, ended_at FROM dativo_runs WHERE job = %s ORDER BY started_at", (job,))
            spans = c.fetchall()
        for (s1, e1), (s2, _) in zip(spans, spans[1:]):
            assert e1 is not None and e1 <= s2, f"overlapping runs: {s1}–{e1} and {s2}"
        assert json.dumps(state).find(str(total)) >= 0, state
        # B's own run history shows runs after the kill.
        runs = b.get(f"/api/jobs/{job}")[1]["runs"]
        assert any(r["ended_at"] and r["status"] == "succeeded" and r["started_at"] > killed_at_iso
                   for r in runs)
    finally:
        if a.proc.poll() is None:
            a.proc.kill()
        if b:
            b.stop()
        with pg.cursor() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}")


def test_serve_runs_scheduled_table_maintenance(tmp_path):
    """`maintenance.schedule`: serve compacts the job's Iceberg table beside its runs, records
    the maintenance run (`dativo runs`) and exports dativo_maintenance_* counters."""
    from pyiceberg.catalog.sql import SqlCatalog
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    data = tmp_path / "data"
    write_csvs(data, 6, 50)
    # A job that appends each file as its own commit, then nothing; maintenance every second.
    (jobs / "m.yaml").write_text(f"""name: maintained
source: {{reader: file, config: {{path: "{data}/*.csv", batch_size: 10}}}}
target:
  writer: iceberg
  config: {{table: lake.maintained, catalog: {{uri: "sqlite://{tmp_path}/catalog.db"}}, warehouse: "{tmp_path}/wh"}}
checkpoint: {{rows: 10}}
maintenance:
  schedule: "* * * * * *"
  compact: {{min_input_files: 2}}
""")
    run = subprocess.run([BIN, "run", str(jobs / "m.yaml"), "--no-progress"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    cat = SqlCatalog("dativo", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh")
    before = cat.load_table("lake.maintained")
    rows_before = sorted(tuple(r.values()) for r in before.scan().to_arrow().to_pylist())
    files_before = len(before.inspect.files())
    assert files_before >= 20, files_before
    s = Serve(tmp_path, jobs)
    try:
        wait_until(lambda: (s.metric("dativo_maintenance_runs_total", "maintained") or 0) >= 1,
                   timeout=60, what="a scheduled maintenance run")
        assert (s.metric("dativo_maintenance_data_files_removed_total", "maintained") or 0) > 0
        assert s.metric("dativo_maintenance_failures_total", "maintained") == 0
    finally:
        assert s.stop() == 0
    after = cat.load_table("lake.maintained")
    assert len(after.inspect.files()) < files_before
    rows_after = sorted(tuple(r.values()) for r in after.scan().to_arrow().to_pylist())
    assert rows_after == rows_before and len(rows_after) == 300
    runs = subprocess.run([BIN, "runs", str(jobs / "m.yaml"), "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert runs.returncode == 0, runs.stderr
    maint = [r for r in json.loads(runs.stdout) if r["job"] == "maintained#maintain"]
    assert maint and maint[0]["status"] == "succeeded", runs.stdout
    assert maint[0]["details"][0]["operation"] == "compact", maint[0]
