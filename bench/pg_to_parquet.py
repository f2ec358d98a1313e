#!/usr/bin/env python3
"""PostgreSQL → Parquet: dativo against the COPY ceiling, the psycopg2 baseline, ConnectorX and
Sling, all measured in the same run on the same table, every output checked against the source.

Table shapes (`--shape`):
  wide21    21 columns of every common type (the default)
  lineitem  TPC-H lineitem (16 columns: bigints, four numeric(15,2), three dates, short and
            long strings), generated offline by DuckDB's tpch extension
  wide50    50 columns: 15 integers, 10 numerics, 15 texts, 10 dates and timestamps

Every mover connects without TLS (`sslmode=disable`): the bench measures movers, not
encryption. CPU s is the process's own user+sys time (rusage, children included)."""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import duckdb
import psycopg2

ROOT = pathlib.Path(__file__).resolve().parents[1]
DSN = os.environ.get("DATIVO_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test sslmode=disable")
URL = os.environ.get("DATIVO_BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
PY = sys.executable
DATIVO = os.environ.get("DATIVO_BIN", str(ROOT / "target/release/dativo"))

COLUMNS = """id int8 primary key, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8,
  n numeric(12,2), b bool, t text, vc varchar(32), c char(8), d date, ts timestamp,
  tstz timestamptz, u uuid, j jsonb, by bytea, tm time, ai int4[], n2 numeric(18,6), t2 text"""
FILL = """SELECT i, (i %% 30000)::int2, i * 7, i::int8 * 1000003, i / 3.0, i / 7.0, (i %% 100000) / 100.0,
  i %% 3 = 0, 'row ' || i || ' of some text', 'vc-' || (i %% 1000), 'c' || (i %% 10),
  date '2020-01-01' + (i %% 3000), timestamp '2020-01-01' + i * interval '1 second',
  timestamptz '2020-01-01 00:00+00' + i * interval '1 second', md5(i::text)::uuid,
  jsonb_build_object('k', i %% 100, 'v', 'x'), decode(md5(i::text), 'hex'),
  time '00:00' + (i %% 86400) * interval '1 second', ARRAY[i %% 10, i %% 7],
  (i %% 1000000) / 1000000.0 + i, CASE WHEN i %% 5 = 0 THEN NULL ELSE 'nullable ' || i END
  FROM generate_series(%s, %s) i"""
SUMS = ["id", "i4", "i8", "n", "f8"]


LINEITEM = """l_orderkey bigint, l_partkey bigint, l_suppkey bigint, l_linenumber int,
  l_quantity numeric(15,2), l_extendedprice numeric(15,2), l_discount numeric(15,2), l_tax numeric(15,2),
  l_returnflag varchar(1), l_linestatus varchar(1), l_shipdate date, l_commitdate date, l_receiptdate date,
  l_shipinstruct varchar(25), l_shipmode varchar(10), l_comment varchar(44),
  PRIMARY KEY (l_orderkey, l_linenumber)"""
LINEITEM_SUMS = ["l_orderkey", "l_partkey", "l_suppkey", "l_quantity", "l_extendedprice", "l_discount"]

GEN_LINEITEM = r'''
import duckdb, glob, os, sys
ext = glob.glob(os.path.join(sys.argv[1], "duckdb_extension_tpch", "**", "tpch.duckdb_extension"), recursive=True)[0]
con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
con.execute("SET enable_progress_bar = false")
con.execute(f"LOAD '{ext}'")
con.execute(f"CALL dbgen(sf={sys.argv[2]})")
con.execute(f"COPY lineitem TO '{sys.argv[3]}' (HEADER false, DELIMITER '|')")
'''


def wide50():
    """Columns and a generator of 50 mixed columns."""
    cols, fill = ["id int8 primary key"], ["i"]
    for k in range(14):
        cols.append(f"n{k} {'int8' if k % 2 else 'int4'}")
        fill.append(f"(i * {k + 7}) %% {10 ** (3 + k % 6)}")
    for k in range(10):
        cols.append(f"d{k} numeric({12 + k % 4 * 2},{2 + k % 3})")
        fill.append(f"((i * {k + 3}) %% 10000000) / {10 ** (2 + k % 3)}.0")
    for k in range(15):
        cols.append(f"t{k} text")
        fill.append(f"'v' || ((i * {k + 11}) %% {10 ** (1 + k % 6)})" if k % 3 else
                    f"md5((i + {k})::text) || ' ' || (i %% 997)")
    for k in range(10):
        typ = ["date", "timestamp", "timestamptz"][k % 3]
        cols.append(f"ts{k} {typ}")
        fill.append(f"{typ} '2020-01-01' + (i * {k + 1}) %% 100000000 * interval '1 second'")
    return ",\n  ".join(cols), "SELECT " + ", ".join(fill) + " FROM generate_series(%s, %s) i"


WIDE50_SUMS = ["id", "n1", "n3", "d0", "d5"]


def ensure_table(rows):
    """The 21-column table with `rows` rows: (name, column sums, row count, size on disk)."""
    name, _, sums, count, size, _ = ensure_shape(rows, "wide21")
    return name, sums, count, size


def ensure_shape(rows, shape):
    """The benchmark table of `shape` with about `rows` rows (lineitem: TPC-H's scale
    factor rows / 6,000,000): (name, column sums, row count, size on disk)."""
    sums_of = {"wide21": SUMS, "lineitem": LINEITEM_SUMS, "wide50": WIDE50_SUMS}[shape]
    name = f"dativo_bench_{rows}" if shape == "wide21" else f"dativo_bench_{shape}_{rows}"
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    with conn.cursor() as c:
        c.execute("SELECT count(*) FROM pg_class WHERE relname = %s", (name,))
        exists = c.fetchone()[0] > 0
        if not exists and shape == "lineitem":
            print(f"creating {name} (TPC-H lineitem, scale factor {rows / 6e6:.3f})…", flush=True)
            tpch = os.environ.get("DATIVO_BENCH_TPCH")
            if not tpch:
                raise SystemExit("--shape lineitem needs DuckDB's tpch extension: run it through bench/run")
            csv = pathlib.Path(tempfile.mkdtemp(prefix="dativo-tpch-")) / "lineitem.csv"
            subprocess.run([PY, "-c", GEN_LINEITEM, tpch, str(rows / 6e6), str(csv)], check=True,
                           env=dict(os.environ, PYTHONPATH=tpch))
            c.execute(f"CREATE TABLE {name}_tmp ({LINEITEM})")
            with open(csv) as f:
                c.copy_expert(f"COPY {name}_tmp FROM STDIN WITH (FORMAT csv, DELIMITER '|')", f)
            shutil.rmtree(csv.parent, ignore_errors=True)
            c.execute(f"VACUUM ANALYZE {name}_tmp")
            c.execute(f"ALTER TABLE {name}_tmp RENAME TO {name}")
        elif not exists and shape == "wide50":
            print(f"creating {name} ({rows:,} rows, 50 columns)…", flush=True)
            cols, fill = wide50()
            c.execute(f"CREATE TABLE {name}_tmp ({cols})")
            for lo in range(1, rows + 1, 250_000):
                c.execute(f"INSERT INTO {name}_tmp " + fill, (lo, min(lo + 250_000 - 1, rows)))
            c.execute(f"VACUUM ANALYZE {name}_tmp")
            c.execute(f"ALTER TABLE {name}_tmp RENAME TO {name}")
        elif not exists:
            print(f"creating {name} ({rows:,} rows)…", flush=True)
            c.execute(f"CREATE TABLE {name}_tmp ({COLUMNS})")
            step = 500_000
            for lo in range(1, rows + 1, step):
                c.execute(f"INSERT INTO {name}_tmp " + FILL, (lo, min(lo + step - 1, rows)))
            # Sprinkle NULLs over most columns.
            c.execute(f"UPDATE {name}_tmp SET i2 = NULL, f4 = NULL, ts = NULL, j = NULL WHERE id % 11 = 0")
            c.execute(f"VACUUM ANALYZE {name}_tmp")
            c.execute(f"ALTER TABLE {name}_tmp RENAME TO {name}")
        c.execute(f"SELECT {', '.join(f'sum({s})' for s in sums_of)}, count(*), pg_total_relation_size(%s) FROM {name}", (name,))
        *sums, count, size = c.fetchone()
        c.execute("SELECT count(*) FROM information_schema.columns WHERE table_name = %s", (name,))
        ncols = c.fetchone()[0]
    conn.close()
    return name, sums_of, [float(s) for s in sums], count, size, ncols


# Every column of the source compared with every output, by an aggregate both PostgreSQL and
# DuckDB compute the same way from the value (not from its type): a mover that changes one value
# in one row of any column fails the check. (name in SQL, PostgreSQL expression, DuckDB expression)
HASH_PG = "sum(('x' || substr(md5({c}::text), 1, 8))::bit(32)::int8)"
HASH_DUCK = "sum(('0x' || substr(md5({c}::varchar), 1, 8))::bigint)"


def fingerprint(table):
    """(labels, PostgreSQL values, DuckDB expressions, relative tolerances) fingerprinting every
    column of `table`:
    its non-NULL count, plus for numbers their sum, for text the sum of a hash of each value and
    of its length, for dates days since 1970 and for timestamps epoch seconds. Columns whose text
    form differs between movers by design (jsonb spacing, uuid and bytea encodings, arrays,
    time, char padding) are compared by count. Floats are summed as float8 on both sides, to
    1e-6: movers that read real through its text form get 0.33333334 for 0.3333333432…"""
    conn = psycopg2.connect(DSN)
    with conn.cursor() as c:
        c.execute("""SELECT column_name, data_type FROM information_schema.columns
                     WHERE table_name = %s AND table_schema = current_schema()
                     ORDER BY ordinal_position""", (table,))
        cols = c.fetchall()
        labels, pg, duck, tol = [], [], [], []

        def add(label, p, d, t=1e-9):
            labels.append(label), pg.append(p), duck.append(d), tol.append(t)
        add("count(*)", "count(*)", "count(*)")
        for name, typ in cols:
            q = f'"{name}"'
            add(f"count({name})", f"count({q})", f"count({q})")
            if typ in ("smallint", "integer", "bigint", "numeric"):
                add(f"sum({name})", f"sum({q})::float8", f"sum({q})::double")
            elif typ in ("real", "double precision"):
                add(f"sum({name})", f"sum({q}::float8)", f"sum({q}::double)", 1e-6)
            elif typ in ("text", "character varying"):
                add(f"hash({name})", HASH_PG.format(c=q), HASH_DUCK.format(c=q))
                add(f"sum(length({name}))", f"sum(length({q}))", f"sum(length({q}))")
            elif typ == "date":
                add(f"days({name})", f"sum({q} - date '1970-01-01')", f"sum(date_diff('day', DATE '1970-01-01', {q}))")
            elif typ.startswith("timestamp"):
                add(f"epoch({name})", f"sum(extract(epoch from {q}))::float8", f"sum(epoch({q}))")
            elif typ == "boolean":
                add(f"true({name})", f"count(*) filter (where {q})", f"count(*) filter (where {q})")
        c.execute(f"SELECT {', '.join(pg)} FROM {table}")
        want = [float(v or 0) for v in c.fetchone()]
    conn.close()
    return labels, want, duck, tol


def check_content(files, fp, what):
    """Raise SystemExit naming every column where the Parquet `files` differ from the source."""
    labels, want, duck, tol = fp
    if not files:
        raise SystemExit(f"{what}: no Parquet files")
    got = duckdb.execute(f"SELECT {', '.join(duck)} FROM read_parquet({files!r}, union_by_name = true)").fetchone()
    bad = [f"{l}: {g} (source {w})" for l, g, w, t in zip(labels, got, want, tol)
           if abs(float(g or 0) - w) > t * max(1.0, abs(w))]
    if bad:
        raise SystemExit(f"output of {what} differs from the source in {len(bad)} of {len(labels)} "
                         f"aggregates: " + "; ".join(bad[:6]))


def timed(cmd, **kw):
    """Run cmd under /usr/bin/time; return (wall seconds, peak RSS MB, CPU seconds (user+sys) of
    the measured process and its children, the completed process)."""
    t0 = time.monotonic()
    kw.setdefault("stdout", subprocess.PIPE)
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *cmd], stderr=subprocess.PIPE, text=True, **kw)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{(p.stdout or '')[-2000:]}\n{p.stderr[-2000:]}")
    rss_kb, user, sys_ = p.stderr.strip().splitlines()[-1].split()
    return wall, int(rss_kb) / 1024, float(user) + float(sys_), p


def medians(runs):
    """(wall, RSS, CPU) medians of several (wall, RSS, CPU) runs, each taken on its own."""
    return tuple(statistics.median(col) for col in zip(*runs))


def parquet_files(d):
    return [str(f) for f in pathlib.Path(d).rglob("*.parquet") if f.is_file()]


def check(out_dir, want_sums, want_count, cols=SUMS):
    files = [str(f) for f in pathlib.Path(out_dir).rglob("*.parquet") if f.is_file()]
    check_files(files, want_sums, want_count, out_dir, cols)


def check_files(files, want_sums, want_count, what, cols=SUMS):
    if not files:
        raise SystemExit(f"{what}: no Parquet files")
    got = duckdb.execute(
        f"SELECT {', '.join(f'sum({s})' for s in cols)}, count(*) FROM read_parquet({files!r})"
    ).fetchone()
    *sums, count = got
    ok = count == want_count and all(abs(float(a) - b) <= 1e-6 * max(1, abs(b)) for a, b in zip(sums, want_sums))
    if not ok:
        raise SystemExit(f"output of {what} differs: {got} vs {want_sums + [want_count]}")


BASELINE = r'''
import sys, psycopg2, pyarrow as pa, pyarrow.parquet as pq
dsn, table, out = sys.argv[1:4]
conn = psycopg2.connect(dsn)
cur = conn.cursor(name="bench")           # server-side cursor: bounded memory
cur.itersize = 50_000
cur.execute(f"SELECT * FROM {table}")
writer = None
while True:
    rows = cur.fetchmany(50_000)
    if not rows:
        break
    cols = [d.name for d in cur.description]
    data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
    for c in ("u",):                         # uuid objects → strings
        if c in data:
            data[c] = [None if v is None else str(v) for v in data[c]]
    for c in ("j",):                         # jsonb dicts → JSON text
        import json
        if c in data:
            data[c] = [None if v is None else json.dumps(v) for v in data[c]]
    t = pa.table(data)
    if writer is None:
        # Decimal precision inferred from the first chunk may be too small for later ones.
        schema = pa.schema([pa.field(f.name, pa.decimal128(38, f.type.scale))
                            if pa.types.is_decimal(f.type) else f for f in t.schema])
        writer = pq.ParquetWriter(out + "/part-0.parquet", schema)
    writer.write_table(t.cast(writer.schema))
writer.close()
'''

CONNECTORX = r'''
import sys, connectorx as cx, pyarrow.parquet as pq
url, table, out = sys.argv[1:4]
t = cx.read_sql(url, f"SELECT * FROM {table}", return_type="arrow")
pq.write_table(t, out + "/part-0.parquet")
'''


def sling_binary():
    """Sling's binary and its DuckDB CLI (bench/run installs both offline into .venv/sling,
    DATIVO_BENCH_SLING) with the DuckDB extensions copied where DuckDB looks; (None, None)
    when not installed."""
    site = pathlib.Path(os.environ.get("DATIVO_BENCH_SLING") or sysconfig.get_paths()["purelib"])
    b = site / "sling_linux_amd64/bin/sling-linux-amd64"
    duck = site / "duckdb_cli/duckdb"
    if not b.exists():
        return None, None
    b.chmod(0o755)
    ext_dir = pathlib.Path.home() / ".duckdb/extensions/v1.5.5/linux_amd64"
    ext_dir.mkdir(parents=True, exist_ok=True)
    for e in site.rglob("*.duckdb_extension"):
        if "duckdb_extension_" in str(e) and not (ext_dir / e.name).exists():
            shutil.copy(e, ext_dir / e.name)
    return str(b), str(duck) if duck.exists() else None


def sling_run(work, table, fp, count, conn="PG", conn_url=None, stream=None):
    """Sling copying the table to Parquet (`conn`: Sling's name for the source connection,
    `conn_url` its URL, `stream` the table as Sling names it): a result row, or None when
    Sling is not installed or failed."""
    binary, duck = sling_binary()
    if not binary:
        print("Sling not installed (bench/run installs it into .venv/sling): skipped")
        return None
    out = work / "sling"
    rep = work / "sling.yaml"
    rep.write_text(json.dumps({
        "source": conn, "target": "LOCAL",
        "defaults": {"mode": "full-refresh", "object": f"file://{out}/data.parquet",
                     "target_options": {"format": "parquet"}},
        "streams": {stream or f"public.{table}": {}},
    }))
    env = dict(os.environ, SLING_DISABLE_TELEMETRY="true", DUCKDB_VERSION="1.5.5")
    env[conn] = conn_url or URL.replace("postgres://", "postgresql://")
    if duck:
        env["DUCKDB_PATH"] = duck
    try:
        wall, rss, cpu, _ = timed([binary, "run", "-r", str(rep)], env=env, cwd=work)
    except SystemExit as e:
        print(f"Sling failed: {str(e)[-1500:]}", file=sys.stderr)
        return None
    name = "Sling → Parquet"
    try:
        check_content(parquet_files(out), fp, "Sling")
    except SystemExit as e:
        # Reported, not fatal: the row says what is wrong with the peer's output.
        files = [str(f) for f in out.rglob("*.parquet") if f.is_file()]
        got = duckdb.execute(f"SELECT count(*) FROM read_parquet({files!r})").fetchone()[0] if files else 0
        print(f"Sling's output is wrong: {e}", file=sys.stderr)
        name += f" — OUTPUT WRONG: {got:,} of {count:,} rows"
    shutil.rmtree(out, ignore_errors=True)
    return (name, wall, rss, cpu)


def dativo_run(work, label, binary, job_doc, verify):
    """Run the job `job_doc` (its "@OUT@" replaced by its own directory under `work`) with
    `binary`, check its output with `verify(directory)`: (wall, RSS, CPU)."""
    tag = job_doc["name"] + ("_cmp" if label else "")
    job_doc = json.loads(json.dumps(job_doc).replace("@OUT@", str(work / tag)))
    job_doc["name"] = tag
    (work / tag).mkdir(exist_ok=True)
    job = work / f"{tag}.yaml"
    job.write_text(json.dumps(job_doc))
    wall, rss, cpu, _ = timed([binary, "run", str(job), "--no-progress"], cwd=work)
    verify(work / tag)
    shutil.rmtree(work / tag, ignore_errors=True)
    return wall, rss, cpu


def dativo_medians(work, binaries, repeat, name, doc, verify):
    """Result rows for `name`: each (label, binary)'s medians of `repeat` runs, the binaries
    alternating."""
    runs = {label: [] for label, _ in binaries}
    for _ in range(max(repeat, 1)):
        for label, binary in binaries:
            runs[label].append(dativo_run(work, label, binary, doc, verify))
    return [(name + label, *medians(runs[label])) for label, _ in binaries]


def finish(results, args, work):
    """The closing lines every bench table shares: how dativo's rows were taken, the results
    as JSON when asked (`--json`), and `work` removed."""
    if args.repeat > 1:
        print(f"dativo rows: medians of {args.repeat} runs (wall, CPU and peak RSS each), alternating binaries.")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            [{"tool": n, "wall_s": w, "rss_mb": r, "cpu_s": c} for n, w, r, c in results], indent=2))
    shutil.rmtree(work, ignore_errors=True)


def print_ratios(results, compare, parquet, iceberg):
    """Each [compare] row against the current binary's, then the Iceberg row against the
    Parquet row (`parquet`, `iceberg`: their names)."""
    if compare:
        print("\n[compare] rows: the same job with", compare)
        for name, wall, rss, cpu in results:
            if name.endswith("[compare]"):
                cur = next(r for r in results if r[0] == name[: -len(" [compare]")])
                print(f"  {cur[0]:<52} wall {cur[1] / wall:.2f}×, CPU {cur[3] / max(cpu, 1e-3):.2f}×, "
                      f"RSS {cur[2] / max(rss, 1e-3):.2f}× of the compared binary")
    pq1 = next((r for r in results if r[0] == parquet), None)
    ice = next((r for r in results if r[0] == iceberg), None)
    if pq1 and ice:
        print(f"\nIceberg vs Parquet: wall {ice[1] / pq1[1]:.2f}×, CPU {ice[3] / max(pq1[3], 1e-3):.2f}×")


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000, help="table size (default 1M)")
    ap.add_argument("--skip", default="", help="comma-separated: baseline,connectorx,sling")
    ap.add_argument("--shape", default="wide21", choices=["wide21", "lineitem", "wide50"],
                    help="the table's columns (default wide21; see above)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every dativo row N times (alternating with --compare's binary) and "
                         "report the medians: runs vary by about ±10%% on a 2-core machine")
    ap.add_argument("--compare", metavar="BIN",
                    help="also run every dativo row with this binary (e.g. the previous commit's; "
                         "bench/run --against REV builds it), alternating with the current one")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    table, cols, sums, count, size, ncols = ensure_shape(args.rows, args.shape)
    fp = fingerprint(table)
    print(f"table {table}: {count:,} rows, {ncols} columns, {size / 1e6:.0f} MB on disk\n", flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-"))
    results = []

    # 1. The ceiling: the server's own binary COPY into /dev/null.
    with open(os.devnull, "w") as devnull:
        wall, rss, cpu, _ = timed(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                                   f"COPY {table} TO STDOUT (FORMAT binary)"], stdout=devnull,
                                  env=dict(os.environ, PGSSLMODE="disable"))
    results.append(("COPY binary → /dev/null (ceiling)", wall, rss, cpu))

    def run_py(name, code, arg):
        out = work / name
        out.mkdir()
        script = work / f"bench_{name}.py"
        script.write_text(code)
        wall, rss, cpu, _ = timed([PY, str(script), arg, table, str(out)])
        check_content(parquet_files(out), fp, name)
        return wall, rss, cpu

    if "baseline" not in skip:
        results.append(("psycopg2 → pyarrow → Parquet (baseline)", *run_py("baseline", BASELINE, DSN)))
    if "connectorx" not in skip:
        results.append(("ConnectorX → Parquet", *run_py("connectorx", CONNECTORX, URL)))
    if "sling" not in skip:
        sling = sling_run(work, table, fp, count)
        if sling:
            results.append(sling)

    binaries = [("", DATIVO)] + ([(" [compare]", args.compare)] if args.compare else [])

    def dativo_rows(name, doc, verify, current_only=False):
        results.extend(dativo_medians(work, binaries[:1] if current_only else binaries,
                                      args.repeat, name, doc, verify))

    for partitions in (1, 2):
        doc = {
            "name": f"bench_{partitions}",
            "source": {"reader": "postgres", "config": {"url": URL, "table": table, "partitions": partitions}},
            "target": {"writer": "parquet", "config": {"path": "@OUT@"}},
            "state": {"dir": str(work / "state")},
        }
        dativo_rows(f"dativo postgres → Parquet (partitions: {partitions})", doc,
                    lambda out: check_content(parquet_files(out), fp, out.name))

    # One stream whose columns are encoded on two threads (`encode_threads`; the default on 2
    # cores is 1): on a machine with free cores this cuts wall time, on this one it shows
    # what the threads cost in CPU. Current binary only (older ones lack the option).
    doc = {
        "name": "bench_threads",
        "source": {"reader": "postgres", "config": {"url": URL, "table": table}},
        "target": {"writer": "parquet", "config": {"path": "@OUT@", "encode_threads": 2}},
        "state": {"dir": str(work / "state")},
    }
    dativo_rows("dativo postgres → Parquet (encode_threads: 2)", doc,
                lambda out: check_content(parquet_files(out), fp, out.name), current_only=True)

    # The same read into an Iceberg table (embedded SQLite catalog, local warehouse).
    doc = {
        "name": "bench_iceberg",
        "source": {"reader": "postgres", "config": {"url": URL, "table": table}},
        "target": {"writer": "iceberg", "config": {
            "table": "bench.rows", "warehouse": "@OUT@/warehouse", "compression": "snappy",
            "catalog": {"uri": "sqlite://@OUT@/catalog.db"}}},
        "state": {"dir": str(work / "state")},
    }
    dativo_rows("dativo postgres → Iceberg (partitions: 1)", doc,
                lambda out: check_content(parquet_files(out / "warehouse"), fp, "the Iceberg table"))

    ceiling = results[0][1]
    base = next((w for n, w, _, _ in results if "baseline" in n), None)
    print(f"{'tool':<56} {'wall s':>7} {'CPU s':>6} {'rows/CPU-s':>11} {'rows/s':>11} {'peak RSS MB':>12} "
          f"{'× ceiling':>10} {'vs baseline':>12}")
    for name, wall, rss, cpu in results:
        vs = f"{base / wall:.1f}× faster" if base else "-"
        print(f"{name:<56} {wall:>7.2f} {cpu:>6.2f} {count / max(cpu, 1e-3):>11,.0f} {count / wall:>11,.0f} "
              f"{rss:>12.0f} {wall / ceiling:>10.2f} {vs:>12}")
    print_ratios(results, args.compare, "dativo postgres → Parquet (partitions: 1)",
                 "dativo postgres → Iceberg (partitions: 1)")
    print(f"\nEvery output was checked against the source: {len(fp[0])} aggregates over all {ncols} columns "
          "(non-NULL counts; sums of numbers, dates and timestamps; a hash and the length of every text "
          "value). A row marked OUTPUT WRONG failed that check.")
    print(f"This machine has {os.cpu_count()} cores, shared with PostgreSQL: rows per CPU-second is the "
          "throughput a CPU-limited pod gets; on more cores the same CPU buys less wall time.")
    print("CPU s is user+sys of the measured process (and its children). Peak RSS is of the measured process.")
    finish(results, args, work)


if __name__ == "__main__":
    main()
