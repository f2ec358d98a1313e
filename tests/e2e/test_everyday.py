"""What people touch every day (issue 22): the progress bar on a real pseudo-terminal (read back
as a screen by pyte, a terminal emulator dativo did not write), the run summary, `dativo runs`,
shell completions (run by bash itself), `dativo init`, `run --dry-run`, relative paths, `state
reset` and `target drop` on Iceberg (read back by pyiceberg and DuckDB) and Parquet (DuckDB),
and error kinds for Python plugins."""
import fcntl
import json
import os
import pathlib
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import duckdb
import pyarrow as pa
import pyte
import pytest

from conftest import BIN, PG_URL, ROOT, write_csvs, write_job
from lakecheck import Lake, pg_canon, sql

VENV = sys.prefix


def run_pty(args, cwd, env=None, answers=None, cols=140, rows=60, timeout=120):
    """Run dativo on a pseudo-terminal (stdin, stdout and stderr): (exit code, raw output).
    `answers`: text typed in once the output contains the key (prompt → answer)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    e = dict(os.environ, TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
    e.pop("DATIVO_STATE_DIR", None)
    e.update(env or {})
    p = subprocess.Popen([BIN, *map(str, args)], cwd=cwd, env=e, stdin=slave, stdout=slave,
                         stderr=slave, start_new_session=True)
    os.close(slave)
    out = b""
    pending = list((answers or {}).items())
    deadline = time.time() + timeout
    while True:
        if time.time() > deadline:
            p.kill()
            raise AssertionError(f"dativo {args} did not finish: {out.decode(errors='replace')[-2000:]}")
        r, _, _ = select.select([master], [], [], 0.2)
        if r:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            out += data
            while pending and pending[0][0].encode() in out:
                os.write(master, (pending.pop(0)[1] + "\n").encode())
        elif p.poll() is not None:
            # Drain what is left.
            try:
                while select.select([master], [], [], 0.2)[0]:
                    data = os.read(master, 65536)
                    if not data:
                        break
                    out += data
            except OSError:
                pass
            break
    os.close(master)
    return p.wait(), out.decode(errors="replace")


def screen(raw, cols=140, rows=60):
    """What a terminal shows after `raw`: its lines, trailing blanks dropped."""
    s = pyte.Screen(cols, rows)
    pyte.Stream(s).feed(raw.replace("\n", "\r\n"))
    return [line.rstrip() for line in s.display]


SLOW_READER = '''
import time
import pyarrow as pa

class Slow:
    """2,000 rows in 20 batches, 0.15 s apart, with a row estimate in the schema's metadata."""
    def initialize(self, config, context):
        self.n = (context.get("state") or {}).get("next", 0)
        self.to = config.get("to", 2000)
        self.estimate = config.get("estimate", 2000)
    def get_schema(self):
        return pa.schema([pa.field("n", pa.int64(), nullable=False)],
                         metadata={"dativo.estimated_rows": str(self.estimate)})
    def read_batch(self):
        if self.n >= self.to:
            return None
        time.sleep(0.15)
        end = min(self.n + 100, self.to)
        b = pa.record_batch([pa.array(range(self.n, end), pa.int64())], names=["n"])
        self.n = end
        return b
    def get_incremental_state(self):
        return {"next": self.n}
    def close(self):
        pass

class Unauthorized(Slow):
    def initialize(self, config, context):
        import dativo
        raise dativo.AuthError("HTTP 401 Unauthorized from https://api.example.com/items")

class OwnKind(Slow):
    def read_batch(self):
        class Throttled(Exception):
            dativo_kind = "transient"   # a plugin's own class, importable without dativo
        raise Throttled("HTTP 429 Too Many Requests")

class Broken(Slow):
    def read_batch(self):
        def deeper():
            raise ValueError("the API returned an unexpected shape")
        deeper()
'''


@pytest.fixture
def py_env(tmp_path):
    d = tmp_path / "py"
    d.mkdir()
    (d / "slow_plugin.py").write_text(SLOW_READER)
    return {"VIRTUAL_ENV": VENV, "PYTHONPATH": str(d)}


def slow_job(tmp_path, cls="Slow", name="slow", config="{to: 2000}"):
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: {{type: custom, implementation: slow_plugin.{cls}}}
  config: {config}
target:
  writer: parquet
  config: {{path: lake/{name}}}
checkpoint: {{rows: 500}}
retry: {{attempts: 2, backoff: 100ms}}
""")


# ------------------------------------------------------------------------------ progress

def test_progress_bar_has_a_total_and_eta_and_logs_stay_above_it(tmp_path, py_env):
    job = slow_job(tmp_path)
    code, raw = run_pty(["run", job], tmp_path, env=py_env)
    assert code == 0, raw
    # The estimate the plugin gave became a total: "of ~2,000 rows", a percentage, an ETA.
    assert "~2,000 estimated (" in raw, raw[-3000:]
    assert "%" in raw and "ETA " in raw, raw[-3000:]
    # Read as a terminal shows it: every log line ("committed", one per checkpoint) is a line
    # of its own, never the bar's text glued to it, and the bar is gone at the end.
    lines = screen(raw)
    commits = [l for l in lines if "committed" in l and "rows=" in l]
    assert len(commits) >= 4, "\n".join(lines)
    for l in lines:
        assert not ("rows read" in l and "rows=" in l), f"a log line on the bar's line: {l!r}"
    assert not any("rows read" in l for l in lines), "the bar was left on the screen:\n" + "\n".join(lines)
    summary = "\n".join(lines)
    assert "✔ job `slow` succeeded" in summary and "2,000 committed in" in summary, summary


def test_no_total_without_an_estimate_and_no_bar_off_a_terminal(tmp_path, py_env):
    job = slow_job(tmp_path, config="{to: 600, estimate: not-a-number}")
    code, raw = run_pty(["run", job], tmp_path, env=py_env)
    assert code == 0, raw
    assert "rows read" in raw and "estimated" not in raw and "ETA" not in raw, raw[-2000:]
    # Not a terminal: log lines only, no bar drawing.
    p = subprocess.run([BIN, "run", str(slow_job(tmp_path, name="slow2"))], cwd=tmp_path,
                       env={**os.environ, **py_env}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "\r" not in p.stderr and "\x1b[" not in p.stderr, repr(p.stderr[:500])


def test_a_failed_run_says_nothing_was_committed_and_runs_stays_one_line_per_run(tmp_path, py_env):
    job = slow_job(tmp_path, cls="Broken", name="broken")
    p = subprocess.run([BIN, "run", str(job), "--no-progress"], cwd=tmp_path, env={**os.environ, **py_env},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 5, p.stdout + p.stderr
    assert "no commit recorded by this run" in p.stdout, p.stdout
    assert "0 commits" not in p.stdout and "query" not in p.stdout, p.stdout
    assert "ValueError: the API returned an unexpected shape" in p.stdout, p.stdout
    # The traceback (several lines in the stored error) does not break the table.
    ok = slow_job(tmp_path, name="broken").read_text().replace("slow_plugin.Broken", "slow_plugin.Slow")
    (tmp_path / "broken.yaml").write_text(ok.replace("{to: 2000}", "{to: 300}"))
    subprocess.run([BIN, "run", str(job), "--no-progress"], cwd=tmp_path, env={**os.environ, **py_env},
                   capture_output=True, text=True, timeout=120, check=True)
    runs = subprocess.run([BIN, "runs", str(job)], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    lines = runs.strip().splitlines()
    assert len(lines) == 3, runs  # header + two runs
    assert lines[0].startswith("run") and "started (" in lines[0], runs
    failed = [l for l in lines if " failed " in l]
    assert len(failed) == 1 and "ValueError: the API returned an unexpected shape" in failed[0], runs
    assert "(more: --json)" in failed[0], runs
    # Local times to the second, not raw ISO strings.
    assert "T" not in lines[1].split()[1] and len(lines[1].split()[2]) == 8, runs
    full = json.loads(subprocess.run([BIN, "runs", str(job), "--json"], cwd=tmp_path, capture_output=True,
                                     text=True, check=True).stdout)
    assert any("Traceback" in (r.get("error") or "") for r in full), full


def test_python_plugins_say_what_kind_of_error(tmp_path, py_env):
    p = subprocess.run([BIN, "run", str(slow_job(tmp_path, cls="Unauthorized", name="auth")), "--no-progress"],
                       cwd=tmp_path, env={**os.environ, **py_env}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "AuthError: HTTP 401 Unauthorized" in p.stdout, p.stdout
    assert "retrying" not in p.stderr and "attempt=2" not in p.stderr, "an auth error must not be retried"
    # A plugin's own class with `dativo_kind = "transient"`: retried, then exit 7.
    p = subprocess.run([BIN, "run", str(slow_job(tmp_path, cls="OwnKind", name="own")), "--no-progress"],
                       cwd=tmp_path, env={**os.environ, **py_env}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 7, p.stdout + p.stderr
    assert "retrying" in p.stderr and "HTTP 429" in p.stdout, p.stdout + p.stderr


# ------------------------------------------------------------------------------ completions

def test_bash_completion_completes_subcommands_and_flags(tmp_path):
    script = subprocess.run([BIN, "completions", "bash"], capture_output=True, text=True, check=True).stdout
    (tmp_path / "dativo.bash").write_text(script)

    def complete(*words):
        line = " ".join(["dativo", *words])
        cmd = (f"source {tmp_path}/dativo.bash; COMP_WORDS=(dativo {' '.join(words)}); "
               f"COMP_CWORD={len(words)}; COMP_LINE='{line}'; COMP_POINT={len(line)}; "
               "_dativo dativo \"${COMP_WORDS[COMP_CWORD]}\" \"${COMP_WORDS[COMP_CWORD-1]}\"; "
               "printf '%s\\n' \"${COMPREPLY[@]}\"")
        return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.split()

    assert {"run", "runs"} <= set(complete("ru")), complete("ru")
    assert "--dry-run" in complete("run", "--dr"), complete("run", "--dr")
    assert "drop" in complete("target", "d"), complete("target", "d")
    assert {"bash", "zsh", "fish"} <= set(complete("completions", "")), complete("completions", "")
    for shell in ["zsh", "fish"]:
        out = subprocess.run([BIN, "completions", shell], capture_output=True, text=True, check=True).stdout
        assert "dry-run" in out and "completions" in out
    p = subprocess.run([BIN, "completions", "tcsh"], capture_output=True, text=True)
    assert p.returncode == 2 and "bash" in p.stderr


# ------------------------------------------------------------------------------ init

@pytest.mark.parametrize("reader", ["file", "postgres", "mysql", "http"])
@pytest.mark.parametrize("writer", ["parquet", "iceberg"])
def test_init_writes_a_job_that_validates(tmp_path, reader, writer):
    p = subprocess.run([BIN, "init", "--reader", reader, "--writer", writer, "--name", "starter"],
                       cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "starter.yaml").exists() and "dativo validate starter.yaml" in p.stdout
    v = subprocess.run([BIN, "validate", "starter.yaml"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PG_URL": PG_URL, "MYSQL_URL": "mysql://root@127.0.0.1/test"})
    assert v.returncode == 0, v.stdout + v.stderr + (tmp_path / "starter.yaml").read_text()
    # Never overwritten by accident.
    again = subprocess.run([BIN, "init", "--reader", reader, "--writer", writer, "--name", "starter"],
                           cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert again.returncode == 2 and "--force" in again.stderr


def test_init_file_job_runs_as_written(tmp_path):
    subprocess.run([BIN, "init", "--reader", "file", "--writer", "parquet", "--name", "landing"],
                   cwd=tmp_path, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    total = write_csvs(tmp_path / "data", 2, 250)
    p = subprocess.run([BIN, "run", "landing.yaml", "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    got = duckdb.execute(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{tmp_path}/lake/landing/*.parquet')").fetchone()
    assert got == (total, total)


def test_init_asks_on_a_terminal_and_names_flags_off_one(tmp_path):
    code, raw = run_pty(["init"], tmp_path, answers={"Read from": "postgres", "Write to": "kafka",
                                                    "is not one of": "iceberg", "Job name": "orders"})
    assert code == 0, raw
    text = (tmp_path / "orders.yaml").read_text()
    assert "reader: postgres" in text and "writer: iceberg" in text and "name: orders" in text
    v = subprocess.run([BIN, "validate", "orders.yaml"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PG_URL": PG_URL})
    assert v.returncode == 0, v.stderr
    p = subprocess.run([BIN, "init"], cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "--reader" in p.stderr, p.stderr
    p = subprocess.run([BIN, "init", "--reader", "file", "--writer", "parquet", "-o", "-"],
                       cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert p.returncode == 0 and p.stdout.startswith("# files:"), p.stdout


# ------------------------------------------------------------------------------ dry run

PG_JOB = """name: {name}
source:
  reader: postgres
  config:
    url: {url}
    table: {table}
    cursor: updated_at
target:
  writer: {writer}
  config: {target}
"""


@pytest.fixture
def pg_source(pg, table):
    sql(pg, f"""CREATE TABLE {table} (id bigint PRIMARY KEY, amount numeric(12,2), note text,
               updated_at timestamptz NOT NULL)""")
    sql(pg, f"""INSERT INTO {table} SELECT i, i * 1.25, 'n' || i, timestamptz '2026-01-01' + i * interval '1 second'
               FROM generate_series(1, 5000) i""")
    sql(pg, f"ANALYZE {table}")
    return table


def test_dry_run_plans_and_writes_nothing(tmp_path, pg, pg_source):
    job = write_job(tmp_path / "dry.yaml", PG_JOB.format(name="dry", url=PG_URL, table=pg_source,
                                                         writer="iceberg", target="{table: lake.dry}"))
    p = subprocess.run([BIN, "run", job, "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    out = p.stdout
    assert "about 5,000 rows" in out, out
    assert "the beginning (no committed state)" in out and "key      id" in out, out
    assert "amount" in out and "Decimal128(12, 2)" in out and "updated_at" in out, out
    assert "Iceberg table lake.dry" in out and "append" in out, out
    assert not (tmp_path / ".dativo").exists() and not (tmp_path / "warehouse").exists(), \
        list(tmp_path.iterdir())
    # After a run: from the committed state, and still nothing written by the dry run.
    subprocess.run([BIN, "run", job, "--no-progress"], cwd=tmp_path, check=True, capture_output=True)
    files = sorted(str(f) for f in (tmp_path / "warehouse").rglob("*"))
    p = subprocess.run([BIN, "run", job, "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "the committed state" in p.stdout and "about" not in p.stdout, p.stdout
    assert sorted(str(f) for f in (tmp_path / "warehouse").rglob("*")) == files
    runs = json.loads(subprocess.run([BIN, "runs", job, "--json"], cwd=tmp_path, capture_output=True,
                                     text=True, check=True).stdout)
    assert len(runs) == 1, "a dry run is not a run"
    # A broken source fails the dry run as it would fail the run.
    bad = write_job(tmp_path / "bad.yaml", PG_JOB.format(name="bad", url=PG_URL, table="no_such_table",
                                                         writer="parquet", target="{path: lake/bad}"))
    p = subprocess.run([BIN, "run", bad, "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode in (2, 4) and "no_such_table" in p.stdout + p.stderr, p.stdout + p.stderr


# ------------------------------------------------------------------------------ relative paths

def test_quickstart_from_another_directory_is_a_config_error_that_says_why(tmp_path):
    job = ROOT / "examples/jobs/quickstart.yaml"
    p = subprocess.run([BIN, "run", str(job), "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 2, p.stdout + p.stderr
    out = p.stdout + p.stderr
    assert "examples/data/orders" in out and "working directory" in out and str(tmp_path) in out, out
    assert "source.config.path" in out, out


# ------------------------------------------------------------------------------ reset and drop

def iceberg_rows(tmp_path, ident, cols, want):
    Lake(tmp_path).assert_rows(ident, cols, want)


COLS = [("id", "int"), ("amount", "dec"), ("note", "text"), ("updated_at", "ts")]


def test_state_reset_reloads_an_iceberg_table_from_the_beginning(tmp_path, pg, pg_source):
    job = write_job(tmp_path / "r.yaml", PG_JOB.format(name="r", url=PG_URL, table=pg_source,
                                                       writer="iceberg", target="{table: lake.r, mode: merge}"))
    subprocess.run([BIN, "run", job, "--no-progress"], cwd=tmp_path, check=True, capture_output=True)
    p = subprocess.run([BIN, "state", "reset", job], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "from the beginning" in p.stdout
    sql(pg, f"UPDATE {pg_source} SET note = 'changed' WHERE id <= 10")
    p = subprocess.run([BIN, "run", job, "--no-progress", "--log-format", "json"], cwd=tmp_path,
                       capture_output=True, text=True, check=True)
    summary = json.loads(p.stdout.strip().splitlines()[-1])
    assert summary["rows"] == 5000, summary
    want = pg_canon(pg, COLS, f"FROM {pg_source}")
    iceberg_rows(tmp_path, "lake.r", COLS, want)


def test_target_drop_recreates_an_iceberg_table_with_the_new_schema(tmp_path, pg, pg_source):
    job = write_job(tmp_path / "d.yaml", PG_JOB.format(name="d", url=PG_URL, table=pg_source,
                                                       writer="iceberg", target="{table: lake.d}"))
    subprocess.run([BIN, "run", job, "--no-progress"], cwd=tmp_path, check=True, capture_output=True)
    # The source's column changes type: the table's schema cannot take it.
    sql(pg, f"ALTER TABLE {pg_source} ALTER COLUMN note TYPE bigint USING id * 7")
    sql(pg, f"UPDATE {pg_source} SET updated_at = updated_at + interval '1 day' WHERE id <= 5")
    p = subprocess.run([BIN, "run", job, "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 4, p.stdout + p.stderr
    # Not confirmed off a terminal; a dry run deletes nothing.
    p = subprocess.run([BIN, "target", "drop", job], cwd=tmp_path, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and "--yes" in p.stderr, p.stderr
    p = subprocess.run([BIN, "target", "drop", job, "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "would delete" in p.stdout, p.stdout + p.stderr
    assert Lake(tmp_path).load("lake.d").scan().to_arrow().num_rows == 5000
    location = Lake(tmp_path).load("lake.d").metadata.location.removeprefix("file://")
    p = subprocess.run([BIN, "target", "drop", job, "--yes"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "dropped" in p.stdout and "reset the state" in p.stdout, p.stdout
    assert not pathlib.Path(location).exists() or not any(pathlib.Path(location).rglob("*.*")), \
        list(pathlib.Path(location).rglob("*"))
    assert not Lake(tmp_path).catalog().table_exists("lake.d")
    p = subprocess.run([BIN, "run", job, "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    cols = [("id", "int"), ("amount", "dec"), ("note", "int"), ("updated_at", "ts")]
    iceberg_rows(tmp_path, "lake.d", cols, pg_canon(pg, cols, f"FROM {pg_source}"))
    p = subprocess.run([BIN, "target", "drop", job, "--yes"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0
    p = subprocess.run([BIN, "target", "drop", job, "--yes"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0 and "does not exist" in p.stdout, p.stdout


def test_target_drop_refused_while_the_job_runs(tmp_path, py_env):
    job = slow_job(tmp_path, name="busy", config="{to: 4000}")
    run = subprocess.Popen([BIN, "run", str(job), "--no-progress"], cwd=tmp_path, env={**os.environ, **py_env},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not list((tmp_path / "lake/busy").glob("*.parquet")):
            time.sleep(0.05)
        p = subprocess.run([BIN, "target", "drop", str(job), "--yes"], cwd=tmp_path, capture_output=True,
                           text=True, env={**os.environ, **py_env})
        assert p.returncode == 7, p.stdout + p.stderr
        assert "already running" in p.stdout + p.stderr, p.stdout + p.stderr
    finally:
        run.wait(timeout=120)
    assert run.returncode == 0
    n = duckdb.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/lake/busy/*.parquet')").fetchone()[0]
    assert n == 4000, "the refused drop must not have touched the running job's files"


def test_target_drop_parquet_removes_only_what_dativo_wrote(tmp_path):
    write_csvs(tmp_path / "data", 3, 200)
    job = write_job(tmp_path / "p.yaml", """name: p
source: {reader: file, config: {path: "data/*.csv"}}
target: {writer: parquet, config: {path: lake/p}}
checkpoint: {rows: 100}
""")
    subprocess.run([BIN, "run", job, "--no-progress"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "lake/p/README.txt").write_text("not dativo's")
    p = subprocess.run([BIN, "target", "drop", job, "--yes"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "1 other files left" in p.stdout, p.stdout
    left = sorted(str(f.relative_to(tmp_path)) for f in (tmp_path / "lake/p").rglob("*"))
    assert left == ["lake/p/README.txt"], left
    # The next run loads everything again, once.
    subprocess.run([BIN, "run", job, "--no-progress"], cwd=tmp_path, check=True, capture_output=True)
    got = duckdb.execute(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{tmp_path}/lake/p/*.parquet')").fetchone()
    assert got == (600, 600), got


def test_dry_run_on_mysql_shows_innodbs_estimate(tmp_path, my, my_table):
    import re
    from conftest import MY_URL, my_sql
    my_sql(my, f"CREATE TABLE {my_table} (id bigint PRIMARY KEY, note varchar(20)) ENGINE=InnoDB")
    my_sql(my, f"INSERT INTO {my_table} SELECT seq, concat('n', seq) FROM seq_1_to_3000")
    my_sql(my, f"ANALYZE TABLE {my_table}")
    job = write_job(tmp_path / "m.yaml", f"""name: m
source: {{reader: mysql, config: {{url: "{MY_URL}", table: {my_table}}}}}
target: {{writer: parquet, config: {{path: lake/m}}}}
""")
    p = subprocess.run([BIN, "run", job, "--dry-run"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"about ([\d,]+) rows", p.stdout)
    assert m and 1500 <= int(m.group(1).replace(",", "")) <= 6000, p.stdout  # InnoDB samples
    assert "the whole source (a full refresh)" in p.stdout, p.stdout
    assert not (tmp_path / "lake").exists()


# ------------------------------------------------------------------------------ plugin SDKs

def test_c_sdk_helpers_under_sanitizers(tmp_path):
    """dativo_sdk.h on its own: JSON edge cases, config messages, decimal boundaries, exports
    released without a leak (AddressSanitizer, UndefinedBehaviorSanitizer)."""
    exe = tmp_path / "sdk_check"
    subprocess.run(["gcc", "-std=c11", "-g", "-Wall", "-Wextra", "-Werror", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
                    f"-I{ROOT}/crates/dativo-cli/templates/c", f"-I{ROOT}/crates/dativo-plugin-sdk/include",
                    "-o", str(exe), str(ROOT / "tests/c/sdk_check.c")], check=True, capture_output=True)
    p = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "all checks passed" in p.stdout, p.stdout + p.stderr


@pytest.mark.parametrize("lang", ["c", "go"])
def test_a_newcomer_reader_with_a_string_config_and_every_column_type(tmp_path, lang):
    """README → docs/plugins/{c,go}.md: a reader with a string config value, a timestamp column
    and the other common types, written by editing the scaffold's own file only; pyarrow reads
    the job's Parquet output and every value is compared."""
    import pyarrow.dataset as ds
    import sdk_edits
    from test_plugins import toolchain_env
    name = f"typed_{lang}"
    subprocess.run([BIN, "plugin", "new", "--lang", lang, name], cwd=tmp_path, check=True, capture_output=True)
    d = tmp_path / name
    if lang == "go":
        sdk_edits.edit_go(d / "main.go")
        untouched = ["arrow.go"]
    else:
        sdk_edits.edit_c(d / f"{name}.c")
        untouched = ["dativo_sdk.h"]
    sdk = ROOT / "crates/dativo-cli/templates" / lang
    for f in untouched:
        assert (d / f).read_text() == (sdk / f).read_text().replace("{{name}}", name), f"{f} was edited"
    b = subprocess.run(["make"], cwd=d, env=toolchain_env(), capture_output=True, text=True, timeout=600)
    assert b.returncode == 0, b.stdout + b.stderr
    lib = d / f"lib{name}.so"
    p = subprocess.run([BIN, "plugin", "test", str(lib), "--config", '{"rows": 2500, "prefix": "p"}'],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "passed" in p.stdout, p.stdout
    p = subprocess.run([BIN, "plugin", "test", str(lib), "--config", '{"prefix": 7}'], capture_output=True, text=True)
    assert p.returncode == 5 and "prefix" in p.stdout, p.stdout
    prefix = 'pé "q'
    job = write_job(tmp_path / "typed.yaml", f"""name: {name}
source:
  reader: {{type: custom, implementation: "{lib}#{name}"}}
  config: {{rows: 2500, prefix: {json.dumps(prefix)}, batch_size: 700}}
target:
  writer: parquet
  config: {{path: lake}}
""")
    p = subprocess.run([BIN, "run", str(job), "--no-progress"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    t = ds.dataset(tmp_path / "lake", format="parquet").to_table().sort_by("id")
    assert str(t.schema.field("at").type) == "timestamp[us, tz=UTC]"
    assert str(t.schema.field("amount").type) == "decimal128(12, 2)"
    assert str(t.schema.field("ints").type) == "list<item: int64>"
    got, want = t.to_pylist(), sdk_edits.expected(2500, prefix)
    assert len(got) == 2500
    bad = [(g, w) for g, w in zip(got, want) if g != w]
    assert not bad, bad[:2]


def test_target_drop_refuses_a_directory_other_jobs_write_to(tmp_path):
    write_csvs(tmp_path / "a", 2, 100)
    write_csvs(tmp_path / "b", 2, 100, start_id=1000)
    jobs = {}
    for n in "ab":
        jobs[n] = write_job(tmp_path / f"{n}.yaml", f"""name: job_{n}
source: {{reader: file, config: {{path: "{n}/*.csv"}}}}
target: {{writer: parquet, config: {{path: lake/shared}}}}
""")
        subprocess.run([BIN, "run", jobs[n], "--no-progress"], cwd=tmp_path, check=True, capture_output=True)
    before = sorted(p.name for p in (tmp_path / "lake/shared").rglob("*"))
    p = subprocess.run([BIN, "target", "drop", jobs["a"], "--yes"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 2 and "job_b" in p.stderr and "also holds commits" in p.stderr, p.stdout + p.stderr
    assert sorted(p.name for p in (tmp_path / "lake/shared").rglob("*")) == before
    shown = subprocess.run([BIN, "state", "show", jobs["a"]], cwd=tmp_path, capture_output=True, text=True).stdout
    assert '"state"' in shown and "no committed state" not in shown, "a refused drop must not reset the state"


def test_target_drop_that_cannot_reach_the_catalog_changes_nothing(tmp_path):
    write_csvs(tmp_path / "data", 2, 100)
    job = write_job(tmp_path / "i.yaml", """name: ice
source: {reader: file, config: {path: "data/*.csv"}}
target: {writer: iceberg, config: {table: lake.ice}}
""")
    subprocess.run([BIN, "run", job, "--no-progress"], cwd=tmp_path, check=True, capture_output=True)
    port = __import__("conftest").free_port()  # nothing listens there
    job.write_text(job.read_text().replace("{table: lake.ice}",
                                           f'{{table: lake.ice, catalog: {{type: rest, uri: "http://127.0.0.1:{port}"}}}}'))
    p = subprocess.run([BIN, "target", "drop", job, "--yes"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 3, p.stdout + p.stderr
    shown = subprocess.run([BIN, "state", "show", job], cwd=tmp_path, capture_output=True, text=True).stdout
    assert '"state"' in shown and "no committed state" not in shown, "the state was reset though nothing was dropped"
