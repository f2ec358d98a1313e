"""Shared helpers for the end-to-end tests: they run the real `dativo` binary and verify what
it wrote with tools dativo did not write (pyarrow, duckdb)."""
import csv
import os
import pathlib
import subprocess

import duckdb
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("DATIVO_BIN", str(ROOT / "target" / "release" / "dativo"))


class Dativo:
    def __init__(self, cwd: pathlib.Path):
        self.cwd = cwd

    def run(self, *args, env=None, check=None, timeout=300):
        e = dict(os.environ)
        e.pop("DATIVO_STATE_DIR", None)
        if env:
            e.update(env)
        e = {k: v for k, v in e.items() if v is not None}  # env={"X": None} unsets X
        p = subprocess.run([BIN, *map(str, args)], cwd=self.cwd, env=e, capture_output=True,
                           text=True, timeout=timeout)
        if check is not None and p.returncode != check:
            raise AssertionError(f"dativo {' '.join(map(str, args))} exited {p.returncode}, "
                                 f"expected {check}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
        return p

    def popen(self, *args, env=None):
        e = dict(os.environ)
        if env:
            e.update(env)
        e = {k: v for k, v in e.items() if v is not None}
        return subprocess.Popen([BIN, *map(str, args)], cwd=self.cwd, env=e,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def kill_loop(self, job, *, kills, rounds, seed, max_sleep, min_sleep=0.05, env=None,
                  finished=None):
        """Start `dativo run JOB` up to `rounds` times and SIGKILL each at a random moment
        (`min_sleep`..`max_sleep` seconds in, from `random.Random(seed)`) until `kills` were
        killed. A run that finishes before its kill calls `finished()` (check it is exact, then
        reset so the next run loads again), or ends the loop when there is no `finished`.
        Returns how many runs were killed."""
        import random
        import signal
        import time
        rng = random.Random(seed)
        done = 0
        for _ in range(rounds):
            if done >= kills:
                break
            p = self.popen("run", job, "--no-progress", env=env)
            time.sleep(rng.uniform(min_sleep, max_sleep))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                done += 1
            p.wait(timeout=60)
            if p.returncode == 0:
                if finished is None:
                    break
                finished()
        return done


# The test services, from one set of variables (the Rust tests read the same two).
PG_URL = os.environ.get("DATIVO_TEST_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
MY_URL = os.environ.get("DATIVO_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
PG_DSN = PG_URL  # libpq (psycopg2) takes the URL as it is
# The same server for SQLAlchemy (pyiceberg's SqlCatalog).
PG_SQLALCHEMY = "postgresql+psycopg2://" + PG_URL.split("://", 1)[1]


def with_user(url, user, password=None):
    """`url` with another user (and password): for the refused-login tests."""
    from urllib.parse import urlsplit, urlunsplit
    u = urlsplit(url)
    cred = user + (f":{password}" if password is not None else "")
    netloc = f"{cred}@{u.hostname}" + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def my_params():
    """pymysql.connect arguments for MY_URL."""
    from urllib.parse import urlsplit, unquote
    u = urlsplit(MY_URL)
    return dict(host=u.hostname or "127.0.0.1", port=u.port or 3306, user=unquote(u.username or "root"),
                password=unquote(u.password or ""), database=u.path.lstrip("/") or "test")


@pytest.fixture
def pg():
    """A connection to the test PostgreSQL (autocommit)."""
    import psycopg2
    conn = psycopg2.connect(PG_DSN)
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture
def table(pg):
    """A fresh table name, dropped after the test."""
    import uuid
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    with pg.cursor() as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")


@pytest.fixture
def my():
    """A connection to the test MariaDB (autocommit)."""
    import pymysql
    conn = pymysql.connect(**my_params(), autocommit=True)
    yield conn
    conn.close()


@pytest.fixture
def my_table(my):
    """A fresh MariaDB table name, dropped after the test."""
    import uuid
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    with my.cursor() as c:
        c.execute(f"DROP TABLE IF EXISTS {name}")


def my_sql(my, text, args=None):
    """Rows of `text` on MariaDB."""
    with my.cursor() as c:
        c.execute(text, args)
        return c.fetchall()


@pytest.fixture
def dativo(tmp_path):
    return Dativo(tmp_path)


def write_csvs(directory: pathlib.Path, files: int, rows: int, start_id: int = 0):
    """`files` CSV files of `rows` rows each; ids are consecutive from start_id."""
    directory.mkdir(parents=True, exist_ok=True)
    i = start_id
    for f in range(files):
        with open(directory / f"part-{f:04d}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["id", "name", "amount", "day"])
            for _ in range(rows):
                w.writerow([i, f"name-{i}", f"{i % 1000}.25", f"2026-01-{1 + i % 28:02d}"])
                i += 1
    return i


def parquet_stats(directory: pathlib.Path, cols=("id",)):
    """(count, count distinct id, sums...) of every Parquet file where tools look."""
    files = sorted(str(p) for p in directory.glob("*.parquet"))
    if not files:
        return (0, 0) + tuple(None for _ in cols)
    sums = ", ".join(f"sum({c})" for c in cols)
    q = f"SELECT count(*), count(DISTINCT id), {sums} FROM read_parquet({files!r})"
    return duckdb.execute(q).fetchone()


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for_port(port: int, timeout: float = 10.0):
    """Wait until something accepts connections on 127.0.0.1:port."""
    import socket
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def write_job(path: pathlib.Path, text: str) -> pathlib.Path:
    path.write_text(text)
    return path


DUCKDB_ICEBERG = pathlib.Path(os.environ.get("DATIVO_DUCKDB_ICEBERG", ROOT / ".venv" / "duckdb-iceberg"))


def duckdb_iceberg_query(sql, metadata_location):
    """Rows of `sql` (with `{metadata}` standing for the table's metadata file) read by DuckDB's
    Iceberg extension — a reader independent of pyiceberg (tests/e2e/duckdb_iceberg.py)."""
    import json
    import re
    import sys
    if not DUCKDB_ICEBERG.exists():
        pytest.fail(f"{DUCKDB_ICEBERG} is missing: run ./scripts/test, which installs DuckDB's Iceberg reader")
    env = dict(os.environ, PYTHONPATH=str(DUCKDB_ICEBERG))
    path = re.sub("^file://", "", metadata_location)
    p = subprocess.run([sys.executable, str(ROOT / "tests/e2e/duckdb_iceberg.py"), sql, path],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return [tuple(r) for r in json.loads(p.stdout)]


def http(method, url, token=None, timeout=10):
    """(status, body) of an HTTP request to `dativo serve`; JSON bodies decoded; a bearer token
    if given."""
    import json
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read().decode()
            return r.status, (json.loads(body) if r.headers.get_content_type() == "application/json" else body)
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, body


# The Rust scaffold test builds a plugin project outside the workspace: its dependencies
# compile once with the SDK's own feature set (minutes on two cores). When that test is
# selected, the build starts right after collection, in the background, beside the tests
# that come before it; the test waits for it (see `rust_scaffold_build`).
_RUST_SCAFFOLD = {}


def pytest_collection_modifyitems(session, config, items):
    import tempfile
    import threading
    if not any(i.nodeid.endswith("test_plugin_new_builds_and_passes[rust]") for i in items):
        return
    name = "scaffold_rust_reader"
    base = pathlib.Path(tempfile.mkdtemp(prefix="dativo-rust-scaffold-"))

    def build():
        try:
            d = package_sdk_and_scaffold(base, name)
            # The workspace's target directory and profile: dependencies it already has are reused.
            env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target"),
                       CARGO_PROFILE_RELEASE_DEBUG="line-tables-only")
            p = subprocess.run(["nice", "-n", "5", "cargo", "build", "--release", "--quiet"], cwd=d, env=env,
                               capture_output=True, text=True, timeout=1800)
            if p.returncode == 0:
                # The scaffold's own unit test: the conformance suite through the SDK, asserted.
                p = subprocess.run(["nice", "-n", "5", "cargo", "test", "--release", "--quiet"], cwd=d, env=env,
                                   capture_output=True, text=True, timeout=1800)
            _RUST_SCAFFOLD["result"] = (d, p.returncode, p.stderr[-4000:] + p.stdout[-2000:])
        except Exception as e:  # reported by the test
            _RUST_SCAFFOLD["result"] = (base / name, -1, repr(e))

    t = threading.Thread(target=build, name="rust-scaffold-build", daemon=True)
    t.start()
    _RUST_SCAFFOLD["thread"] = t


def package_sdk_and_scaffold(base, name):
    """A Rust scaffold as a newcomer outside the checkout gets it: `plugin new --sdk-version`
    (a crates.io dependency, no path into this tree), built against the crates exactly as
    `cargo package` would upload them (unpacked .crate files patched in for crates.io): proof
    that the published layout of dativo-core and dativo-plugin-sdk builds on its own."""
    import shutil
    import tarfile
    env = dict(os.environ, CARGO_TARGET_DIR=str(base / "package-target"))
    subprocess.run(["cargo", "package", "--quiet", "--no-verify", "--allow-dirty",
                    "-p", "dativo-core", "-p", "dativo-plugin-sdk"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    crates = base / "crates"
    crates.mkdir()
    version = None
    for crate in sorted((base / "package-target" / "package").glob("*.crate")):
        with tarfile.open(crate) as t:
            t.extractall(crates, filter="data")
        if crate.name.startswith("dativo-plugin-sdk-"):
            version = crate.name[len("dativo-plugin-sdk-"):-len(".crate")]
    assert version, "cargo package made no dativo-plugin-sdk crate"
    shutil.rmtree(base / "package-target")
    minor = ".".join(version.split(".")[:2])
    subprocess.run([BIN, "plugin", "new", "--lang", "rust", "--sdk-version", minor, name], cwd=base,
                   check=True, capture_output=True, timeout=120)
    d = base / name
    toml = (d / "Cargo.toml").read_text()
    assert f'dativo-plugin-sdk = "{minor}"' in toml and "path =" not in toml, toml
    with open(d / "Cargo.toml", "a") as f:
        f.write("\n[patch.crates-io]\n")
        for c in ("dativo-core", "dativo-plugin-sdk"):
            f.write(f'{c} = {{ path = "{crates / f"{c}-{version}"}" }}\n')
    shutil.copy(ROOT / "Cargo.lock", d / "Cargo.lock")
    return d


def rust_scaffold_build():
    """(project dir, cargo's exit code, its stderr) of the background scaffold build, or None
    when it was not started (the test then builds itself)."""
    t = _RUST_SCAFFOLD.get("thread")
    if t is None:
        return None
    t.join()
    return _RUST_SCAFFOLD["result"]
