"""Native plugins (issue 4): the example plugins in C, C++, Go and Rust run in jobs end to end
and pass `dativo plugin test`; deliberately broken plugins fail clearly and leave committed
data untouched; `plugin new` scaffolds build and pass; the built-in `adbc` reader and writer
work with the PostgreSQL and SQLite drivers from their PyPI wheels. Verified with duckdb,
pyarrow, psycopg2 and sqlite3."""
import json
import os
import shutil
import sqlite3
import subprocess

import duckdb
import pytest

from conftest import PG_URL, ROOT, parquet_stats, rust_scaffold_build, write_job

REL = ROOT / "target" / "release"
C_READER = ROOT / "examples/plugins/c/libdativo_c_sequence.so"
CPP_WRITER = ROOT / "examples/plugins/cpp/libdativo_cpp_csv.so"
GO_READER = ROOT / "examples/plugins/go/libdativo_go_fixedwidth.so"
RUST_READER = REL / "libdativo_example_pg_reader.so"
BROKEN = REL / "libdativo_test_broken.so"


@pytest.fixture(autouse=True)
def allow_plugin_dirs(monkeypatch):
    """These jobs name libraries outside their own directory (the example and test plugins, a
    system libm): allow those directories, as a deployment would with --allow-plugin-path."""
    dirs = [ROOT / "examples/plugins", REL, "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"]
    monkeypatch.setenv("DATIVO_ALLOW_PLUGIN_PATH", ":".join(map(str, dirs)))

GO_FIELDS = [  # the layout from examples/plugins/go/README.md
    {"name": "account_id", "start": 0, "length": 8, "type": "int64"},
    {"name": "name", "start": 8, "length": 20, "type": "string"},
    {"name": "branch", "start": 28, "length": 4, "type": "string"},
    {"name": "balance", "start": 32, "length": 11, "type": "decimal", "scale": 2},
    {"name": "opened", "start": 43, "length": 8, "type": "int64"},
]


def adbc_driver(module):
    mod = __import__(module)
    return str(mod._driver_path())


def c_job(tmp_path, rows, target_block, name="c_job"):
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: {{type: custom, implementation: "{C_READER}#sequence"}}
  config: {{rows: {rows}, batch_size: 1000}}
target:
{target_block}
checkpoint: {{rows: 2000}}
""")


PARQUET = "  writer: parquet\n  config: {path: lake}"


# ---------------------------------------------------------------- examples in jobs


def test_c_reader_into_parquet_incremental(dativo, tmp_path):
    dativo.run("run", c_job(tmp_path, 2500, PARQUET), "--no-progress", check=0)
    assert parquet_stats(tmp_path / "lake", ("id",)) == (2500, 2500, sum(range(1, 2501)))
    # The source grows: the next run reads only ids after the committed state.
    p = dativo.run("run", c_job(tmp_path, 7000, PARQUET), "--no-progress", check=0)
    assert "4,500" in p.stdout or "4500" in p.stdout, p.stdout
    assert parquet_stats(tmp_path / "lake", ("id",)) == (7000, 7000, sum(range(1, 7001)))
    got = duckdb.execute(
        f"SELECT count(*) FILTER (WHERE name IS NULL), sum(amount), min(ts), max(day) "
        f"FROM read_parquet('{tmp_path}/lake/*.parquet')").fetchone()
    assert got[0] == 7000 // 7
    assert got[1] == pytest.approx(sum(i * 1.5 for i in range(1, 7001)))


def test_c_reader_into_cpp_writer_exactly_once(dativo, tmp_path):
    out = tmp_path / "csv"
    target = f"  writer: {{type: custom, implementation: \"{CPP_WRITER}#csv\"}}\n  config: {{path: {out}}}"
    dativo.run("run", c_job(tmp_path, 5000, target), "--no-progress", check=0)
    dativo.run("run", c_job(tmp_path, 5000, target), "--no-progress", check=0)  # nothing new
    dativo.run("run", c_job(tmp_path, 6500, target), "--no-progress", check=0)
    commits = sorted(p.name for p in out.iterdir())
    assert all(c.startswith("commit-") for c in commits), commits
    got = duckdb.execute(
        f"SELECT count(*), count(DISTINCT id), sum(id) FROM read_csv('{out}/commit-*/data.csv', header=true)"
    ).fetchone()
    assert got == (6500, 6500, sum(range(1, 6501)))
    # The writer keeps the state with the data (committed_state) — it matches the state store.
    last = json.loads((out / commits[-1] / "state.json").read_text())
    shown = json.loads(dativo.run("state", "show", tmp_path / "c_job.yaml", check=0).stdout)
    assert last["state"] == shown["state"] == {"next_id": 6501}


def test_go_reader_into_parquet(dativo, tmp_path):
    cfg = {"path": str(ROOT / "examples/plugins/go/testdata/accounts.dat"), "fields": GO_FIELDS,
           "batch_size": 7}
    job = write_job(tmp_path / "go.yaml", f"""name: go_job
source:
  reader: {{type: custom, implementation: "{GO_READER}#fixedwidth"}}
  config: {json.dumps(cfg)}
target:
  writer: parquet
  config: {{path: lake}}
""")
    dativo.run("run", job, "--no-progress", check=0)
    files = [str(p) for p in (tmp_path / "lake").glob("*.parquet")]
    got = duckdb.execute(f"SELECT count(*), count(DISTINCT account_id), typeof(any_value(balance)), "
                         f"count(balance), count(name) FROM read_parquet({files!r})").fetchone()
    assert got == (20, 20, "DECIMAL(18,2)", 19, 19), got
    vals = dict(duckdb.execute(f"SELECT account_id, balance::VARCHAR FROM read_parquet({files!r})").fetchall())
    assert "1234.56" in vals.values() and "-123.45" in vals.values() and "-75.00" in vals.values(), vals
    # A re-run reads nothing: the state is the byte offset after the last record.
    dativo.run("run", job, "--no-progress", check=0)
    assert duckdb.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/lake/*.parquet')").fetchone()[0] == 20


def test_rust_tokio_postgres_reader(dativo, tmp_path, pg, table):
    with pg.cursor() as c:
        c.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text, score float8, "
                  f"at timestamptz, day date, ok boolean)")
        c.execute(f"INSERT INTO {table} SELECT g, 'n' || g, g / 4.0, "
                  f"'2026-01-01'::timestamptz + g * interval '1 minute', '2026-01-01'::date + (g % 30), "
                  f"g % 2 = 0 FROM generate_series(1, 3000) g")
    job = write_job(tmp_path / "rs.yaml", f"""name: rs_job
source:
  reader: {{type: custom, implementation: "{RUST_READER}#pg"}}
  config: {{url: "{PG_URL}", table: {table}, cursor: id, batch_size: 700}}
target:
  writer: parquet
  config: {{path: lake}}
""")
    dativo.run("run", job, "--no-progress", check=0)
    assert parquet_stats(tmp_path / "lake", ("id",)) == (3000, 3000, sum(range(1, 3001)))
    with pg.cursor() as c:
        c.execute(f"INSERT INTO {table} SELECT g, 'n' || g, g, now(), current_date, true "
                  f"FROM generate_series(3001, 3500) g")
    dativo.run("run", job, "--no-progress", check=0)
    assert parquet_stats(tmp_path / "lake", ("id",)) == (3500, 3500, sum(range(1, 3501)))
    p = dativo.run("plugin", "test", f"{RUST_READER}#pg", "--config",
                   json.dumps({"url": PG_URL, "table": table, "cursor": "id", "batch_size": 1000}), check=0)
    assert "resume from a mid-stream state — 2500 rows" in p.stdout, p.stdout


# ---------------------------------------------------------------- plugin test


@pytest.mark.parametrize("impl,config", [
    (f"{C_READER}", {"rows": 2500, "batch_size": 1000}),
    (f"{GO_READER}#fixedwidth", {"path": str(ROOT / "examples/plugins/go/testdata/accounts.dat"),
                                 "fields": GO_FIELDS, "batch_size": 6}),
    (f"{BROKEN}#good", {"total": 350}),
])
def test_example_readers_pass_plugin_test(dativo, impl, config):
    p = dativo.run("plugin", "test", impl, "--config", json.dumps(config), check=0)
    assert "passed" in p.stdout and "FAIL" not in p.stdout, p.stdout
    for check in ("state is monotonic", "resume from a mid-stream state",
                  "empty stream: resume from the final state", "errors surface"):
        assert check in p.stdout, p.stdout


def test_cpp_writer_passes_plugin_test(dativo, tmp_path):
    p = dativo.run("plugin", "test", CPP_WRITER, "--config", json.dumps({"path": str(tmp_path / "o")}),
                   check=0)
    assert "write_batch (every type, with nulls)" in p.stdout and "FAIL" not in p.stdout, p.stdout


def test_plugin_test_catches_broken_plugins(dativo):
    for name, why in [("wrong_schema", "does not match the schema from get_schema"),
                      ("error_mid_stream", "deliberate test error"),
                      ("panic", "crashed (a bug in the plugin): panicked in read_batch")]:
        p = dativo.run("plugin", "test", f"{BROKEN}#{name}", check=5)
        assert "FAIL  read every batch" in p.stdout and why in p.stdout, p.stdout


# ---------------------------------------------------------------- broken plugins in jobs


def test_broken_plugins_fail_clearly_and_keep_committed_data(dativo, tmp_path):
    def job(reader, writer=PARQUET, total=500):
        return write_job(tmp_path / f"{reader}.yaml", f"""name: shared_job
source:
  reader: {{type: custom, implementation: "{BROKEN}#{reader}"}}
  config: {{total: {total}, batch_rows: 100, good_batches: 3}}
target:
{writer}
checkpoint: {{rows: 1000}}
retry: {{attempts: 2, backoff: 10ms}}
""")
    dativo.run("run", job("good"), "--no-progress", check=0)
    before = parquet_stats(tmp_path / "lake", ("id",))
    assert before == (500, 500, sum(range(1, 501)))
    state = json.loads(dativo.run("state", "show", job("good"), check=0).stdout)["state"]
    cases = {  # reader: (exit code, message)
        "wrong_schema": (5, "batch column `id` (Utf8) does not match declared column `id` (Int64)"),
        # Error::data in the plugin → DATIVO_ERROR_DATA → a data error, exit 4.
        "error_mid_stream": (4, "the source rejected the request at id 801 (deliberate test error)"),
        "panic": (5, "crashed (a bug in the plugin): panicked in read_batch: deliberate test panic at id 801"),
    }
    for reader, (code, why) in cases.items():
        p = dativo.run("run", job(reader), "--no-progress", check=code)
        assert f"plugin 'broken' reader '{reader}'" in p.stderr + p.stdout, p.stderr + p.stdout
        assert why in p.stderr + p.stdout, p.stderr + p.stdout
        assert parquet_stats(tmp_path / "lake", ("id",)) == before
        assert json.loads(dativo.run("state", "show", job("good"), check=0).stdout)["state"] == state
        assert not list((tmp_path / "lake").glob("_dativo/staging/*")), "uncommitted files left behind"
    writer = f"  writer: {{type: custom, implementation: \"{BROKEN}#panic_on_write\"}}\n  config: {{}}"
    p = dativo.run("run", job("good", writer, total=900), "--no-progress", check=5)
    assert "plugin 'broken' writer 'panic_on_write'" in p.stderr + p.stdout
    assert "panicked in write_batch: deliberate test panic in write_batch" in p.stderr + p.stdout
    writer = f"  writer: {{type: custom, implementation: \"{BROKEN}#error_on_finalize\"}}\n  config: {{}}"
    p = dativo.run("run", job("good", writer, total=900), "--no-progress", check=6)  # Error::io → exit 6
    assert "the target refused the commit" in p.stderr + p.stdout
    assert json.loads(dativo.run("state", "show", job("good"), check=0).stdout)["state"] == state


def test_plugin_resolution_errors(dativo, tmp_path):
    def run(impl, side="reader"):
        j = write_job(tmp_path / "j.yaml", f"""name: e
source:
  reader: {{type: custom, implementation: "{impl}"}}
  config: {{}}
target:
  writer: parquet
  config: {{path: lake}}
""")
        return dativo.run("validate", "--load", j)  # --load: these errors need the library loaded
    p = run("./nowhere/libmissing.so#x")
    assert p.returncode == 2 and "j.yaml:3: source.reader.implementation" in p.stderr, p.stderr
    assert "nowhere/libmissing.so" in p.stderr and "build the plugin first" in p.stderr
    libm = next(p for p in ["/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6"]
                if os.path.exists(p))
    p = run(libm)
    assert p.returncode != 0 and "is not a dativo plugin" in p.stderr, p.stderr
    p = run(f"{BROKEN}#nope")
    assert p.returncode == 2 and "has no reader `nope`" in p.stderr and "wrong_schema" in p.stderr, p.stderr
    p = run(f"{BROKEN}")
    assert p.returncode == 2 and "provides 4 readers" in p.stderr, p.stderr
    # A bare name is found on DATIVO_PLUGIN_PATH.
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    shutil.copy(C_READER, plugdir / "libdativo_c_sequence.so")
    j = write_job(tmp_path / "bare.yaml", """name: bare
source:
  reader: {type: custom, implementation: "dativo_c_sequence#sequence"}
  config: {rows: 10}
target:
  writer: parquet
  config: {path: lake2}
""")
    dativo.run("run", j, "--no-progress", env={"DATIVO_PLUGIN_PATH": str(plugdir)}, check=0)
    assert parquet_stats(tmp_path / "lake2")[0] == 10
    p = dativo.run("plugins", "list", env={"DATIVO_PLUGIN_PATH": str(plugdir)}, check=0)
    assert "c_sequence 0.1.0" in p.stdout and "reader libdativo_c_sequence.so#sequence" in p.stdout, p.stdout


# ---------------------------------------------------------------- plugin new


def toolchain_env():
    env = dict(os.environ)
    env.setdefault("GOCACHE", "/tmp/dativo-go-cache")
    env["GOPROXY"] = "off"
    env["GOFLAGS"] = "-mod=mod"
    return env


@pytest.mark.parametrize("lang", ["c", "cpp", "go", "rust"])
def test_plugin_new_builds_and_passes(dativo, tmp_path, lang):
    name = f"scaffold_{lang}_reader"  # not my_rust_reader: that is the maturin example's library name
    built = rust_scaffold_build() if lang == "rust" else None
    if built:
        # Made by `plugin new` and built in the background since collection (conftest.py).
        d, code, err = built
        assert code == 0, f"cargo build of the scaffold failed:\n{err}"
        shutil.copytree(d, tmp_path / name)
    else:
        dativo.run("plugin", "new", "--lang", lang, name, check=0)
    d = tmp_path / name
    if lang == "rust":
        # Share the workspace's compiled dependencies and profile (a pure speed-up).
        shutil.copy(ROOT / "Cargo.lock", d / "Cargo.lock")
        env = dict(os.environ, CARGO_TARGET_DIR=str(ROOT / "target"),
                   CARGO_PROFILE_RELEASE_DEBUG="line-tables-only")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=d, env=env, check=True, timeout=900)
        lib = REL / f"lib{name}.so"
    else:
        subprocess.run(["make"], cwd=d, env=toolchain_env(), check=True, timeout=600,
                       capture_output=True)
        lib = d / f"lib{name}.so"
    p = dativo.run("plugin", "test", lib, "--config", '{"rows": 2500}', check=0)
    assert "passed" in p.stdout and "FAIL" not in p.stdout, p.stdout
    j = write_job(tmp_path / "new.yaml", f"""name: scaffold_{lang}
source:
  reader: {{type: custom, implementation: "{lib}#{name}"}}
  config: {{rows: 1234}}
target:
  writer: parquet
  config: {{path: lake}}
""")
    dativo.run("run", j, "--no-progress", check=0)
    assert parquet_stats(tmp_path / "lake") [:2] == (1234, 1234)
    p = dativo.run("plugin", "new", "--lang", lang, name)
    assert p.returncode == 2 and "already exists" in p.stderr


# ---------------------------------------------------------------- ADBC


def test_adbc_postgres_to_sqlite_exactly_once(dativo, tmp_path, pg, table):
    with pg.cursor() as c:
        c.execute(f"CREATE TABLE {table} (id bigint PRIMARY KEY, name text, amount float8)")
        c.execute(f"INSERT INTO {table} SELECT g, 'n' || g, g * 0.5 FROM generate_series(1, 20000) g")
    db = tmp_path / "out.db"
    job = write_job(tmp_path / "adbc.yaml", f"""name: adbc_job
source:
  reader: adbc
  config:
    driver: {adbc_driver("adbc_driver_postgresql")}
    uri: {PG_URL}
    table: {table}
    cursor: id
target:
  writer: adbc
  config:
    driver: {adbc_driver("adbc_driver_sqlite")}
    uri: "file:{db}"
    table: orders
""")
    dativo.run("run", job, "--no-progress", check=0)
    with pg.cursor() as c:
        c.execute(f"INSERT INTO {table} SELECT g, 'n' || g, g * 0.5 FROM generate_series(20001, 25000) g")
    dativo.run("run", job, "--no-progress", check=0)
    dativo.run("run", job, "--no-progress", check=0)
    con = sqlite3.connect(db)
    assert con.execute("SELECT count(*), count(DISTINCT id), sum(id), sum(amount) FROM orders").fetchone() == \
        (25000, 25000, sum(range(1, 25001)), sum(range(1, 25001)) * 0.5)
    state, run_id = con.execute("SELECT state, run_id FROM _dativo_state WHERE job = 'adbc_job'").fetchone()
    assert json.loads(state) == {"cursor": 25000}
    shown = json.loads(dativo.run("state", "show", job, check=0).stdout)
    assert shown["state"] == {"cursor": 25000}


def test_adbc_writer_into_postgres_passes_plugin_test(dativo, pg, table):
    cfg = {"driver": adbc_driver("adbc_driver_postgresql"), "uri": PG_URL, "table": table,
           "state_table": f"{table}_state"}
    try:
        p = dativo.run("plugin", "test", "adbc", "--side", "writer", "--config", json.dumps(cfg), check=0)
        assert "FAIL" not in p.stdout, p.stdout
        with pg.cursor() as c:
            c.execute(f"SELECT count(*), sum(i32), max(text) FROM {table}")
            assert c.fetchone() == (3, 3 + -2147483648, "héllo")
    finally:
        with pg.cursor() as c:
            c.execute(f"DROP TABLE IF EXISTS {table}_state")


def test_abi_mismatch_is_refused(dativo, tmp_path):
    """A library built against another ABI version is refused before any other call."""
    src = tmp_path / "old.c"
    src.write_text("""
#include <string.h>
#include "dativo_plugin.h"
int dativo_plugin_init(uint32_t host, DativoPlugin *out) {
  (void)host;
  memset(out, 0, sizeof *out);
  out->abi_version = 0;          /* a pre-release ABI */
  out->struct_size = 16;
  return DATIVO_OK;
}
""")
    lib = tmp_path / "libold.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src),
                    f"-I{ROOT}/crates/dativo-plugin-sdk/include"], check=True)
    p = dativo.run("plugin", "test", lib, check=5)
    assert "speaks dativo plugin ABI 0" in p.stderr and "rebuild the plugin" in p.stderr, p.stderr


def test_sigkill_with_plugin_reader_and_writer_is_exactly_once(dativo, tmp_path):
    """C reader → C++ writer (both plugins), dativo SIGKILLed at random moments: after each
    kill and at the end, the committed CSV holds every id exactly once."""
    import random
    import signal
    import time
    out = tmp_path / "csv"
    rows = 300_000
    target = f"  writer: {{type: custom, implementation: \"{CPP_WRITER}#csv\"}}\n  config: {{path: {out}}}"
    job = write_job(tmp_path / "k.yaml", f"""name: killed_plugins
source:
  reader: {{type: custom, implementation: "{C_READER}#sequence"}}
  config: {{rows: {rows}, batch_size: 500}}
target:
{target}
checkpoint: {{rows: 1000}}
""")
    rng = random.Random(7)

    def committed():
        if not out.exists() or not list(out.glob("commit-*/data.csv")):
            return (0, 0, 0)
        return duckdb.execute(f"SELECT count(*), count(DISTINCT id), coalesce(sum(id), 0) "
                              f"FROM read_csv('{out}/commit-*/data.csv', header=true)").fetchone()

    kills = 0
    for _ in range(80):
        p = dativo.popen("run", job, "--no-progress")
        time.sleep(rng.uniform(0.05, 0.4))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.communicate()
        n, distinct, _ = committed()
        assert n == distinct, f"duplicates after a kill: {n} rows, {distinct} distinct"
        if n == rows:
            # This load finished between kills: exact; start over to kill the next one.
            assert committed() == (rows, rows, rows * (rows + 1) // 2)
            if kills >= 3:
                break
            shutil.rmtree(out)
            shutil.rmtree(tmp_path / ".dativo")
        if kills >= 10:
            break
    dativo.run("run", job, "--no-progress", check=0)
    assert kills >= 3, f"only {kills} kills landed mid-run"
    assert committed() == (rows, rows, rows * (rows + 1) // 2)
