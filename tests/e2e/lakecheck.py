"""Helpers shared by the end-to-end tests that check Iceberg (and Parquet) tables row by row
against their PostgreSQL source, with readers dativo did not write: pyiceberg (through the job's
SQLite catalog) and DuckDB's own Iceberg extension (from the table's metadata file).

Rows are compared in a canonical Arrow form: integers as int64, numerics as text with two
decimals, dates as days, timestamps as microseconds, booleans as `true`/`false` text.
"""
import glob
import json
import os
import pathlib
import random
import signal
import subprocess
import tempfile
import time
import uuid
import io

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyiceberg.catalog.sql import SqlCatalog

from conftest import BIN, DUCKDB_ICEBERG, duckdb_iceberg_query


def sql(pg, text, *args):
    with pg.cursor() as c:
        c.execute(text, args or None)
        return c.fetchall() if c.description else None


_PG_EXPR = {
    "int": "{c}::bigint",
    "text": "{c}::text",
    "dec": "{c}::numeric(38,2)::text",
    "date": "({c} - date '1970-01-01')",
    "ts": "(extract(epoch FROM {c}) * 1000000)::bigint",
    "bool": "{c}::text",
}
_ARROW_TYPE = {"int": pa.int64(), "text": pa.string(), "dec": pa.string(), "date": pa.int32(),
               "ts": pa.int64(), "bool": pa.string()}


def _schema(cols):
    return pa.schema([(c, _ARROW_TYPE[k]) for c, k in cols])


def pg_canon(pg, cols, from_where):
    """The rows of `SELECT cols FROM_WHERE` in PostgreSQL, canonical, sorted by the first column."""
    exprs = ", ".join(_PG_EXPR[k].format(c=c) + f" AS {c}" for c, k in cols)
    buf = io.BytesIO()
    with pg.cursor() as cur:
        cur.copy_expert(f"COPY (SELECT {exprs} {from_where} ORDER BY 1) TO STDOUT WITH (FORMAT csv, HEADER)",
                        buf)
    buf.seek(0)
    schema = _schema(cols)
    t = pacsv.read_csv(buf, convert_options=pacsv.ConvertOptions(
        column_types=schema, strings_can_be_null=True, quoted_strings_can_be_null=False))
    if t.num_rows == 0:
        return schema.empty_table()
    return t.select([c for c, _ in cols]).cast(schema).combine_chunks()


def arrow_canon(t, cols, ignore=()):
    """An Arrow table as read from the lake, canonical, sorted by the first column; columns
    named in `ignore` are dropped first (any other column not in `cols` is an error)."""
    t = t.drop_columns([c for c in ignore if c in t.column_names])
    missing = [c for c, _ in cols if c not in t.column_names]
    extra = [c for c in t.column_names if c not in dict(cols)]
    assert not missing and not extra, f"table columns {t.column_names}: missing {missing}, extra {extra}"
    out = []
    for c, k in cols:
        a = t[c]
        if k == "int":
            a = a.cast(pa.int64())
        elif k == "text":
            a = a.cast(pa.string())
        elif k == "bool":
            a = pc.if_else(a.cast(pa.bool_()), "true", "false")
        elif k == "dec":
            a = a.cast(pa.decimal128(38, 2)).cast(pa.string())
        elif k == "date":
            a = a.cast(pa.date32()).cast(pa.int32())
        elif k == "ts":
            tz = "UTC" if a.type.tz is not None else None
            a = a.cast(pa.timestamp("us", tz=tz)).cast(pa.int64())
        out.append(a)
    r = pa.table(out, schema=_schema(cols))
    return r.sort_by(cols[0][0]).combine_chunks()


def diff(want, got, key="id", limit=5):
    """A short description of how two canonical tables differ."""
    w = {r[key]: r for r in want.to_pylist()}
    g = {}
    dups = set()
    for r in got.to_pylist():
        if r[key] in g:
            dups.add(r[key])
        g[r[key]] = r
    missing = sorted(set(w) - set(g))
    extra = sorted(set(g) - set(w))
    changed = sorted(i for i in set(w) & set(g) if w[i] != g[i])
    return (f"rows want {want.num_rows} got {got.num_rows}; duplicate keys {len(dups)} {sorted(dups)[:limit]}; "
            f"missing {len(missing)} {missing[:limit]}; extra (resurrected or never deleted) {len(extra)} "
            f"{extra[:limit]}; changed {len(changed)} "
            + "; ".join(f"want {w[i]} got {g[i]}" for i in changed[:limit]))


def httpfs_extension():
    """DuckDB's httpfs extension file (1.5.5), if installed beside the Iceberg one."""
    places = [os.environ.get("DATIVO_DUCKDB_HTTPFS", ""), str(DUCKDB_ICEBERG)]
    for p in filter(None, places):
        if p.endswith(".duckdb_extension") and os.path.exists(p):
            return p
        found = glob.glob(os.path.join(p, "**", "httpfs.duckdb_extension"), recursive=True)
        if found:
            return found[0]
    return None


class Lake:
    """A job's catalog (the SQLite catalog dativo keeps in `cwd/.dativo`) and warehouse, local or
    on S3; reads a table's rows with pyiceberg and with DuckDB."""

    def __init__(self, cwd, warehouse=None, s3=None, azure=None):
        self.cwd = pathlib.Path(cwd)
        self.warehouse = warehouse or f"file://{cwd}/warehouse"
        self.s3 = s3  # endpoint URL, or None
        self.azure = azure  # an azurite.Azure container, or None

    def catalog(self):
        props = {}
        if self.s3:
            props = {"s3.endpoint": self.s3, "s3.access-key-id": "testing",
                     "s3.secret-access-key": "testing", "s3.region": "us-east-1"}
        if self.azure:
            # pyiceberg reads abfss:// through adlfs (the Blob API), pointed at Azurite.
            from azurite import AZ_ACCOUNT, connection_string
            props = {"adls.connection-string": connection_string(), "adls.account-name": AZ_ACCOUNT,
                     "py-io-impl": "pyiceberg.io.fsspec.FsspecFileIO"}
        return SqlCatalog("dativo", uri=f"sqlite:///{self.cwd}/.dativo/catalog.db",
                          warehouse=self.warehouse, **props)

    def load(self, ident):
        return self.catalog().load_table(ident)

    def read_pyiceberg(self, ident, cols, ignore=()):
        return arrow_canon(self.load(ident).scan().to_arrow(), cols, ignore)

    def duckdb_prelude(self):
        """Statements before an iceberg_scan of this lake (S3: httpfs and a secret), or None when
        DuckDB cannot read it here."""
        if not self.s3:
            return ""  # local, or Azure (read from a copy: see read_duckdb)
        ext = httpfs_extension()
        if not ext:
            return None
        host = self.s3.split("://", 1)[1]
        return (f"LOAD '{ext}'; CREATE SECRET s (TYPE s3, KEY_ID 'testing', SECRET 'testing', "
                f"REGION 'us-east-1', ENDPOINT '{host}', URL_STYLE 'path', USE_SSL false); ")

    def read_duckdb(self, ident, cols, ignore=()):
        t = self.load(ident)
        meta, scan = t.metadata_location, "iceberg_scan('{metadata}')"
        if self.azure:
            # DuckDB's azure extension reads abfss:// through the DFS API only, which Azurite
            # lacks: the table's files are fetched with Azure's own client and DuckDB reads that
            # copy, every path in the metadata resolved against the copy (allow_moved_paths).
            from azurite import split_abfss
            container, prefix = split_abfss(t.location())
            assert container == self.azure.bucket, (container, self.azure.bucket)
            copy = self.azure.download(prefix, self.cwd / f"duck-{uuid.uuid4().hex[:8]}")
            version = meta.rsplit("/", 1)[1].removesuffix(".metadata.json")
            meta = str(copy)  # the table's root; the version names the current metadata file
            scan = f"iceberg_scan('{{metadata}}', allow_moved_paths = true, version = '{version}')"
        out = self.cwd / f"duck-{uuid.uuid4().hex[:8]}.parquet"
        duckdb_iceberg_query(self.duckdb_prelude() +
                             f"COPY (SELECT * FROM {scan}) TO '{out}' (FORMAT parquet)", meta)
        t = pq.read_table(out)
        out.unlink()
        return arrow_canon(t, cols, ignore)

    def assert_rows(self, ident, cols, want, what="", ignore=()):
        """Both readers see exactly `want` (a canonical table), without duplicate keys."""
        readers = [("pyiceberg", self.read_pyiceberg)]
        if self.duckdb_prelude() is not None:
            readers.append(("duckdb", self.read_duckdb))
        else:
            print(f"{what}: DuckDB cannot read s3:// here (no httpfs extension): pyiceberg only")
        for name, read in readers:
            got = read(ident, cols, ignore)
            if not got.equals(want):
                raise AssertionError(f"{what}: {name} reads a table that differs from the source: {diff(want, got)}")
            ids = got[cols[0][0]]
            assert len(pc.unique(ids)) == len(ids), f"{what}: {name}: duplicate keys"


def live_files(t):
    """(data files, delete files) of the current snapshot: {path: (size, partition)} each."""
    data, deletes = {}, {}
    for task in t.scan().plan_files():
        data[task.file.file_path] = (task.file.file_size_in_bytes, str(task.file.partition))
        for d in task.delete_files:
            deletes[d.file_path] = (d.file_size_in_bytes, str(d.partition))
    return data, deletes


def dativo(cwd, *args, env=None, check=0, timeout=600):
    e = dict(os.environ)
    e.pop("DATIVO_STATE_DIR", None)
    e.update(env or {})
    p = subprocess.run([BIN, *map(str, args)], cwd=cwd, env=e, capture_output=True, text=True,
                       timeout=timeout)
    if check is not None and p.returncode != check:
        raise AssertionError(f"dativo {' '.join(map(str, args))} exited {p.returncode}, expected {check}\n"
                             f"stdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p


def run_or_kill(cwd, args, kill_after):
    """Start `dativo ARGS`; SIGKILL it after `kill_after` seconds if still running (None: let it
    finish). Returns (killed, exit code, stdout, stderr, seconds). Output goes to files, not
    pipes: a process is never blocked on a full pipe while nobody reads."""
    e = dict(os.environ)
    e.pop("DATIVO_STATE_DIR", None)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.monotonic()
        p = subprocess.Popen([BIN, *map(str, args)], cwd=cwd, env=e, stdout=out, stderr=err, text=True)
        deadline = None if kill_after is None else start + kill_after
        while p.poll() is None and (deadline is None or time.monotonic() < deadline):
            if time.monotonic() - start > 600:
                p.kill()
                raise AssertionError(f"dativo {args} still runs after 600 s")
            time.sleep(0.005)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=120)
        took = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        return killed, p.returncode, out.read(), err.read(), took


def run_json(cwd, job, env=None):
    """`dativo run JOB` → its JSON run summary."""
    p = dativo(cwd, "run", job, "--no-progress", "--log-format", "json", env=env)
    return json.loads(p.stdout.strip().splitlines()[-1])


def maintain_json(cwd, job, *flags, env=None, check=0):
    """`dativo maintain JOB FLAGS --json` → its reports, by operation."""
    p = dativo(cwd, "maintain", job, *flags, "--json", env=env, check=check)
    reports = json.loads(p.stdout)
    assert isinstance(reports, list), p.stdout
    return {r["operation"]: r for r in reports}, p


def runs_json(cwd, job, env=None, limit=50):
    p = dativo(cwd, "runs", job, "--json", "--limit", limit, env=env)
    return json.loads(p.stdout)


# The merge source of the row-level tests: a table, a tombstone table filled by a trigger,
# and a view of both.
MERGE_COLS = [("id", "int"), ("k", "text"), ("v", "dec"), ("d", "date"),
              ("updated_at", "ts"), ("deleted_at", "ts")]


def make_merge_source(pg, name, rows):
    """Table `name` with `rows` rows, a tombstone table filled by an AFTER DELETE trigger and a
    view `name`_v unioning live rows (`_dativo_op` U) with tombstones (D)."""
    sql(pg, f"""CREATE TABLE {name} (id bigint PRIMARY KEY, k text, v numeric(12,2), d date,
        updated_at timestamptz NOT NULL DEFAULT now(), deleted_at timestamptz)""")
    # Distinct cursor values, all in the past: every later change (clock_timestamp()) is newer.
    sql(pg, f"""INSERT INTO {name} SELECT i,
        CASE WHEN i % 97 = 0 THEN NULL ELSE 'k-' || i END,
        CASE WHEN i % 89 = 0 THEN NULL ELSE ((i::bigint * 7919) % 2000000 - 1000000) / 100.0 END,
        date '2020-01-01' + (i % 3000),
        now() - interval '2 days' + i * interval '10 microseconds', NULL
        FROM generate_series(1, {rows}) i""")
    sql(pg, f"CREATE INDEX ON {name} (updated_at)")
    sql(pg, f"CREATE TABLE {name}_tomb (id bigint NOT NULL, deleted timestamptz NOT NULL)")
    sql(pg, f"CREATE INDEX ON {name}_tomb (deleted)")
    sql(pg, f"""CREATE FUNCTION {name}_del() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN INSERT INTO {name}_tomb VALUES (OLD.id, clock_timestamp()); RETURN OLD; END $$""")
    sql(pg, f"""CREATE TRIGGER {name}_trg AFTER DELETE ON {name} FOR EACH ROW
        EXECUTE FUNCTION {name}_del()""")
    sql(pg, f"""CREATE VIEW {name}_v AS
        SELECT id, k, v, d, updated_at, deleted_at, 'U'::text AS _dativo_op FROM {name}
        UNION ALL
        SELECT id, NULL::text, NULL::numeric(12,2), NULL::date, deleted, NULL::timestamptz, 'D'::text
        FROM {name}_tomb""")
    sql(pg, f"ANALYZE {name}")


def assert_pg_row(got, src):
    """A row of the every-type table (tests/e2e/test_postgres.py) read from the lake (`got`,
    pyarrow's Python values) equals the source's (`src`, psycopg2's): each column as the
    reader's type mapping defines it."""
    import pytest
    for k in ["b", "i2", "i4", "f8", "n", "t", "vc", "c", "nm", "d", "tm", "ts", "ai", "at",
              "ip", "cid", "mac", "m", "o"]:
        if k in src:
            assert got[k] == src[k], (src["id"], k, got[k], src[k])
    assert got["f4"] == pytest.approx(src["f4"])
    assert got["nu"] == src["nu"]
    assert bytes(got["by"]) == bytes(src["by"])
    assert got["tstz"] == src["tstz"]
    assert str(got["u"]) == src["u"]
    assert json.loads(got["j"]) == src["j"] and json.loads(got["jb"]) == src["jb"]
    iv = src["iv"]
    assert got["iv"]["days"] * 86400 + got["iv"]["microseconds"] / 1e6 + \
        got["iv"]["months"] * 30 * 86400 == iv.total_seconds(), (src["id"], got["iv"], iv)


def start_follower(cwd, job):
    """`dativo run JOB` in the background (a CDC job following its log), output appended to
    JOB's `.log` file in `cwd`."""
    e = dict(os.environ)
    e.pop("DATIVO_STATE_DIR", None)
    log = open(cwd / f"{job.stem}.log", "a")
    return subprocess.Popen([BIN, "run", str(job), "--no-progress"], cwd=cwd, env=e, stdout=log, stderr=log)


def kill_followers(cwd, jobs, seconds, drop_connections, seed=11):
    """The CDC mirror tests' chaos: follow `jobs`; SIGKILL the first one as soon as it has
    committed once (inside the initial snapshot of its big table), then four more random
    SIGKILLs, then cut the jobs' log connections from the server twice (`drop_connections()`
    returns how many it cut), for `seconds` in all. Returns the running processes, {job: Popen}."""
    rnd = random.Random(seed)
    procs = {j: start_follower(cwd, j) for j in jobs}
    # Not a fixed delay: on a loaded machine the first commit can take longer than any
    # constant, and a kill before it leaves no snapshot to resume.
    log = cwd / f"{jobs[0].stem}.log"
    started = time.monotonic()
    while "committed job=" not in log.read_text() and time.monotonic() - started < 30:
        time.sleep(0.02)
    procs[jobs[0]].send_signal(signal.SIGKILL)
    procs[jobs[0]].wait()
    procs[jobs[0]] = start_follower(cwd, jobs[0])
    deadline = started + seconds
    kills, cuts = 1, 0
    while time.monotonic() < deadline:
        time.sleep(rnd.uniform(1.5, 4.0))
        if kills < 5:
            j = rnd.choice(jobs)
            procs[j].send_signal(signal.SIGKILL)
            procs[j].wait()
            kills += 1
            procs[j] = start_follower(cwd, j)
        elif cuts < 2:
            cuts += drop_connections() > 0
    assert kills == 5 and cuts == 2, (kills, cuts)
    assert "resuming an interrupted initial snapshot" in (cwd / f"{jobs[0].stem}.log").read_text()
    return procs
