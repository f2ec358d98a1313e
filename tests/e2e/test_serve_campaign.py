"""`dativo serve` against the outside test campaign: an empty API token is refused at start-up,
and a flood of idle connections under a 1024 file-descriptor limit neither blocks /healthz nor
the scheduler, and is closed by the server."""
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import BIN, free_port, http, write_csvs

TOKEN = "campaign-token-" + uuid.uuid4().hex[:8]


def wait_until(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def file_job(path, name, data, lake, schedule=None):
    path.write_text(f"""name: {name}
source: {{reader: file, config: {{path: "{data}/*.csv"}}}}
target: {{writer: parquet, config: {{path: "{lake}"}}}}
""" + (f'schedule: "{schedule}"\n' if schedule else ""))


# --- 1. An empty API token --------------------------------------------------------------------

@pytest.mark.parametrize("how", ["env-empty", "env-blank", "flag-empty"])
def test_an_empty_api_token_is_a_configuration_error(tmp_path, how):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    file_job(jobs / "a.yaml", "a", tmp_path / "data", tmp_path / "lake")
    env = {k: v for k, v in os.environ.items() if k not in ("DATIVO_STATE_DIR", "DATIVO_API_TOKEN")}
    args = [BIN, "serve", "--jobs", str(jobs), "--listen", f"127.0.0.1:{free_port()}"]
    if how == "env-empty":
        env["DATIVO_API_TOKEN"] = ""
    elif how == "env-blank":
        env["DATIVO_API_TOKEN"] = "  \t "
    else:
        args += ["--api-token", ""]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("serve started with an empty API token (mutations would be unauthenticated)")
    assert proc.returncode == 2, (proc.returncode, out, err)
    assert "--api-token" in err and "DATIVO_API_TOKEN" in err, err
    assert "unset" in err, err


def test_bearer_token_is_checked(tmp_path):
    """The token works with the scheme in any case; no header, another token, a prefix of the
    token or the token with a suffix are refused."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_csvs(tmp_path / "data", 1, 10)
    file_job(jobs / "a.yaml", "a", tmp_path / "data", tmp_path / "lake")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATIVO_STATE_DIR"}
    env["DATIVO_API_TOKEN"] = TOKEN
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([BIN, "serve", "--jobs", str(jobs), "--listen", f"127.0.0.1:{port}"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _ready(base), 30, "serve to be ready")

        def post(auth):
            req = urllib.request.Request(base + "/api/jobs/a/runs", method="POST", data=b"")
            if auth is not None:
                req.add_header("Authorization", auth)
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status
            except urllib.error.HTTPError as e:
                return e.code

        for bad in [None, "", "Bearer", "Bearer ", f"Basic {TOKEN}", f"Bearer {TOKEN[:-1]}",
                    f"Bearer {TOKEN}x", f"Bearer x{TOKEN}", f"{TOKEN}"]:
            assert post(bad) == 401, bad
        assert post(f"bearer {TOKEN}") == 202
        wait_until(lambda: http("GET", base + "/api/jobs")[1]["jobs"][0]["last_run"], 30, "the run to end")
        assert post(f"Bearer {TOKEN}") in (202, 409)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _ready(base):
    try:
        return http("GET", base + "/readyz", timeout=1)[0] == 200
    except OSError:
        return False


# --- 2. Idle connections under a small file-descriptor limit ----------------------------------

FLOOD = 1100


def _limit_fds():
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def test_idle_connections_do_not_starve_health_checks_or_the_scheduler(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = FLOOD + 200
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"this test opens {FLOOD} sockets; the hard file limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    write_csvs(tmp_path / "data_s", 1, 10)
    write_csvs(tmp_path / "data_m", 1, 10)
    write_csvs(tmp_path / "data_n", 1, 10)
    file_job(jobs / "scheduled.yaml", "scheduled", tmp_path / "data_s", tmp_path / "lake/s", "* * * * * *")
    file_job(jobs / "manual.yaml", "manual", tmp_path / "data_m", tmp_path / "lake/m")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "DATIVO_STATE_DIR"}
    env["DATIVO_API_TOKEN"] = TOKEN
    log_path = tmp_path / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([BIN, "serve", "--jobs", str(jobs), "--listen", f"127.0.0.1:{port}"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=_limit_fds)
    socks = []
    sel = selectors.DefaultSelector()
    try:
        wait_until(lambda: _ready(base), 30, "serve to be ready")

        def succeeded(job):
            text = http("GET", base + "/metrics", timeout=5)[1]
            for line in text.splitlines():
                if line.startswith("dativo_runs_total{") and f'job="{job}"' in line and 'status="succeeded"' in line:
                    return float(line.rsplit(" ", 1)[1])
            return 0.0

        # Idle connections: a third send nothing, a third half a request header, a third one
        # whole keep-alive request and then nothing.
        for i in range(FLOOD):
            s = socket.socket()
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            try:
                if i % 3 == 1:
                    s.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                elif i % 3 == 2:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            except OSError:
                pass
            s.setblocking(False)
            socks.append(s)
            sel.register(s, selectors.EVENT_READ)
        assert len(socks) >= FLOOD * 9 // 10, f"only {len(socks)} connections opened"

        # Health checks answer at once, repeatedly.
        for _ in range(5):
            t = time.time()
            try:
                status, body = http("GET", base + "/healthz", timeout=3)
            except OSError as e:
                raise AssertionError(f"/healthz did not answer within 3 s with {len(socks)} idle connections: {e}")
            assert (status, body) == (200, "ok\n")
            assert time.time() - t < 3
            time.sleep(0.2)

        # The scheduler keeps running jobs, a trigger works, a new job file is picked up.
        before = succeeded("scheduled")
        wait_until(lambda: succeeded("scheduled") >= before + 2, 20, "two more scheduled runs")
        status, body = http("POST", base + "/api/jobs/manual/runs", token=TOKEN, timeout=5)
        assert status == 202, body
        wait_until(lambda: succeeded("manual") >= 1, 20, "the triggered run to succeed")
        file_job(jobs / "new.yaml", "new", tmp_path / "data_n", tmp_path / "lake/n")
        wait_until(lambda: "new" in {j["name"] for j in http("GET", base + "/api/jobs", timeout=5)[1]["jobs"]},
                   20, "the new job file to be loaded")
        status, body = http("POST", base + "/api/jobs/new/runs", token=TOKEN, timeout=5)
        assert status == 202, body
        wait_until(lambda: succeeded("new") >= 1, 20, "the new job's run to succeed")

        # The server closes every idle connection (header-read timeout, or to make room).
        open_ = len(socks)
        deadline = time.time() + 30
        while open_ and time.time() < deadline:
            for key, _ in sel.select(timeout=0.5):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, BrokenPipeError):
                    data = b""
                except BlockingIOError:
                    continue
                if not data:
                    sel.unregister(s)
                    open_ -= 1
        assert open_ == 0, f"{open_} of {len(socks)} idle connections still open after 30 s"

        assert http("GET", base + "/healthz", timeout=3) == (200, "ok\n")
        assert proc.poll() is None
        text = log_path.read_text()
        assert "Too many open files" not in text, text[-3000:]
    finally:
        for s in socks:
            s.close()
        sel.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
