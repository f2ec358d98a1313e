"""Arrow Flight (gRPC) plugins (issue 5): test peers written with pyarrow.flight
(examples/plugins/flight) as reader and writer; dativo starts them itself; a bearer token; the
reader server killed mid-run → retry from the committed state, no duplicates. Verified with
duckdb."""
import json
import os
import signal
import sys
import time

import duckdb
import pytest

from conftest import ROOT, free_port, parquet_stats, wait_for_port, write_job

PY = sys.executable
READER = ROOT / "examples/plugins/flight/reader_server.py"
WRITER = ROOT / "examples/plugins/flight/writer_server.py"


def reader_block(port, config, extra_args=(), token=None, pidfile=None):
    args = [PY, str(READER), "--port", str(port), *extra_args]
    if pidfile:
        args += ["--pidfile", str(pidfile)]
    tok = f"\n    token: \"{token}\"" if token else ""
    return f"""  reader:
    type: custom
    implementation: grpc://127.0.0.1:{port}
    command: {json.dumps(args)}{tok}
  config: {json.dumps(config)}"""


def count_sum(path, col="id"):
    return duckdb.execute(f"SELECT count(*), count(DISTINCT {col}), sum({col}) FROM read_parquet('{path}/*.parquet')").fetchone()


def test_flight_reader_and_writer_servers(dativo, tmp_path):
    wport = free_port()
    job = write_job(tmp_path / "f.yaml", f"""name: flight
source:
{reader_block(free_port(), {"rows": 20000, "batch_size": 1000})}
target:
  writer:
    type: custom
    implementation: grpc://127.0.0.1:{wport}
    command: {json.dumps([PY, str(WRITER), "--port", str(wport)])}
  config: {{path: out}}
checkpoint: {{rows: 5000}}
""")
    dativo.run("run", job, "--no-progress", check=0)
    assert count_sum(tmp_path / "out") == (20000, 20000, sum(range(1, 20001)))
    assert len(list((tmp_path / "out").glob("*.state"))) == 4
    # Nothing new: no rows, and the writer's committed_state matches the state store.
    dativo.run("run", job, "--no-progress", check=0)
    assert count_sum(tmp_path / "out")[0] == 20000
    shown = json.loads(dativo.run("state", "show", job, check=0).stdout)
    assert shown["state"] == {"next_id": 20001}


def test_flight_plugins_pass_plugin_test(dativo, tmp_path):
    import subprocess
    rport, wport = free_port(), free_port()
    procs = [subprocess.Popen([PY, str(READER), "--port", str(rport)]),
             subprocess.Popen([PY, str(WRITER), "--port", str(wport)])]
    try:
        for port in (rport, wport):
            wait_for_port(port)
        p = dativo.run("plugin", "test", f"grpc://127.0.0.1:{rport}", "--side", "reader",
                       "--config", '{"rows": 2500, "batch_size": 1000}', check=0)
        assert "resume from a mid-stream state — 1500 rows" in p.stdout, p.stdout
        p = dativo.run("plugin", "test", f"grpc://127.0.0.1:{wport}", "--side", "writer",
                       "--config", json.dumps({"path": str(tmp_path / "w")}), check=0)
        assert "write_batch (every type, with nulls)" in p.stdout and "FAIL" not in p.stdout, p.stdout
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_flight_token(dativo, tmp_path):
    port = free_port()
    secret = "s3cr3t-flight-token"
    good = write_job(tmp_path / "t.yaml", f"""name: tok
source:
{reader_block(port, {"rows": 100}, ("--token", secret), token="${env:FLIGHT_TOKEN}")}
target:
  writer: parquet
  config: {{path: out}}
""")
    dativo.run("run", good, "--no-progress", env={"FLIGHT_TOKEN": secret}, check=0)
    assert parquet_stats(tmp_path / "out")[0] == 100
    p = dativo.run("run", good, "--no-progress", env={"FLIGHT_TOKEN": "wrong-token-value"})
    assert p.returncode == 3 and "bearer token" in p.stdout + p.stderr, p.stdout + p.stderr
    assert "wrong-token-value" not in p.stdout + p.stderr


def test_unreachable_flight_server(dativo, tmp_path):
    job = write_job(tmp_path / "u.yaml", f"""name: unreachable
source:
  reader: {{type: custom, implementation: "grpc://127.0.0.1:{free_port()}"}}
target:
  writer: parquet
  config: {{path: out}}
retry: {{attempts: 2, backoff: 10ms}}
""")
    p = dativo.run("run", job, "--no-progress")
    assert p.returncode == 3 and "cannot connect to the flight plugin" in p.stdout + p.stderr, p.stdout + p.stderr


@pytest.mark.parametrize("attempt", range(2))
def test_flight_server_killed_mid_run_is_retried_exactly_once(dativo, tmp_path, attempt):
    pidfile = tmp_path / "server.pid"
    rows = 30000
    job = write_job(tmp_path / "k.yaml", f"""name: killed
source:
{reader_block(free_port(), {"rows": rows, "batch_size": 500, "delay": 0.02}, pidfile=pidfile)}
target:
  writer: parquet
  config: {{path: out}}
checkpoint: {{rows: 1000}}
retry: {{attempts: 5, backoff: 50ms}}
""")
    proc = dativo.popen("run", job, "--no-progress")
    killed = 0
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        commits = list((tmp_path / "out").glob("*.parquet")) if (tmp_path / "out").exists() else []
        if len(commits) >= 3 + 6 * killed and killed < 2 and pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
                pidfile.unlink()
                killed += 1
            except (ProcessLookupError, ValueError):
                pass
        time.sleep(0.05)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert killed >= 1, "the server was never killed"
    assert "restarting it" in err, err
    assert count_sum(tmp_path / "out") == (rows, rows, sum(range(1, rows + 1)))


def test_flight_over_tls_with_a_private_ca(dativo, tmp_path):
    import shutil
    import subprocess
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the test CA")
    d = tmp_path
    run = lambda *a: subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=dativo test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    port = free_port()
    args = [PY, str(READER), "--port", str(port), "--tls-cert", "srv.pem", "--tls-key", "srv.key"]
    job = write_job(d / "tls.yaml", f"""name: tls
source:
  reader:
    type: custom
    implementation: grpc+tls://localhost:{port}
    command: {json.dumps(args)}
    tls_ca: ca.pem
  config: {{rows: 2000}}
target:
  writer: parquet
  config: {{path: out}}
""")
    dativo.run("run", job, "--no-progress", check=0)
    assert count_sum(d / "out") == (2000, 2000, sum(range(1, 2001)))
