#!/usr/bin/env python3
"""PostgreSQL → Parquet: dativo against the COPY ceiling, the psycopg2 baseline and ConnectorX,
all measured in the same run on the same table. See bench/README.md."""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import duckdb
import psycopg2

ROOT = pathlib.Path(__file__).resolve().parents[1]
DSN = os.environ.get("DATIVO_BENCH_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=test")
URL = os.environ.get("DATIVO_BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
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


def ensure_table(rows):
    name = f"dativo_bench_{rows}"
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    with conn.cursor() as c:
        c.execute("SELECT count(*) FROM pg_class WHERE relname = %s", (name,))
        if c.fetchone()[0] == 0:
            print(f"creating {name} ({rows:,} rows)…", flush=True)
            c.execute(f"CREATE TABLE {name}_tmp ({COLUMNS})")
            step = 500_000
            for lo in range(1, rows + 1, step):
                c.execute(f"INSERT INTO {name}_tmp " + FILL, (lo, min(lo + step - 1, rows)))
            # Sprinkle NULLs over most columns.
            c.execute(f"UPDATE {name}_tmp SET i2 = NULL, f4 = NULL, ts = NULL, j = NULL WHERE id % 11 = 0")
            c.execute(f"VACUUM ANALYZE {name}_tmp")
            c.execute(f"ALTER TABLE {name}_tmp RENAME TO {name}")
        c.execute(f"SELECT {', '.join(f'sum({s})' for s in SUMS)}, count(*), pg_total_relation_size(%s) FROM {name}", (name,))
        *sums, count, size = c.fetchone()
    conn.close()
    return name, [float(s) for s in sums], count, size


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


def check(out_dir, want_sums, want_count):
    check_files([str(f) for f in pathlib.Path(out_dir).glob("*.parquet")], want_sums, want_count, out_dir)


def check_iceberg(work, want_sums, want_count):
    files = [str(f) for f in pathlib.Path(work / "warehouse").rglob("*.parquet")]
    check_files(files, want_sums, want_count, "the Iceberg table")


def check_files(files, want_sums, want_count, what):
    got = duckdb.execute(
        f"SELECT {', '.join(f'sum({s})' for s in SUMS)}, count(*) FROM read_parquet({files!r})"
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
        data[c] = [None if v is None else str(v) for v in data[c]]
    for c in ("j",):                         # jsonb dicts → JSON text
        import json
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


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000, help="table size (default 1M)")
    ap.add_argument("--skip", default="", help="comma-separated: baseline,connectorx")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--compare", metavar="BIN",
                    help="also run every dativo row with this binary (e.g. the previous commit's; "
                         "bench/run --against REV builds it), alternating with the current one")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    table, sums, count, size = ensure_table(args.rows)
    print(f"table {table}: {count:,} rows, 21 columns, {size / 1e6:.0f} MB on disk\n", flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-"))
    results = []

    # 1. The ceiling: the server's own binary COPY into /dev/null.
    with open(os.devnull, "w") as devnull:
        wall, rss, cpu, _ = timed(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                                   f"COPY {table} TO STDOUT (FORMAT binary)"], stdout=devnull)
    results.append(("COPY binary → /dev/null (ceiling)", wall, rss, cpu))

    def run_py(name, code, arg):
        out = work / name
        out.mkdir()
        script = work / f"bench_{name}.py"
        script.write_text(code)
        wall, rss, cpu, _ = timed([PY, str(script), arg, table, str(out)])
        check(out, sums, count)
        return wall, rss, cpu

    if "baseline" not in skip:
        results.append(("psycopg2 → pyarrow → Parquet (baseline)", *run_py("baseline", BASELINE, DSN)))
    if "connectorx" not in skip:
        results.append(("ConnectorX → Parquet", *run_py("connectorx", CONNECTORX, URL)))

    binaries = [("", DATIVO)] + ([(" [compare]", args.compare)] if args.compare else [])

    def dativo_run(label, binary, job_doc, verify):
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

    for partitions in (1, 2):
        doc = {
            "name": f"bench_{partitions}",
            "source": {"reader": "postgres", "config": {"url": URL, "table": table, "partitions": partitions}},
            "target": {"writer": "parquet", "config": {"path": "@OUT@"}},
            "state": {"dir": str(work / "state")},
        }
        for label, binary in binaries:
            results.append((f"dativo postgres → Parquet (partitions: {partitions}){label}",
                            *dativo_run(label, binary, doc, lambda out: check(out, sums, count))))

    # The same read into an Iceberg table (embedded SQLite catalog, local warehouse).
    doc = {
        "name": "bench_iceberg",
        "source": {"reader": "postgres", "config": {"url": URL, "table": table}},
        "target": {"writer": "iceberg", "config": {
            "table": "bench.rows", "warehouse": "@OUT@/warehouse", "compression": "snappy",
            "catalog": {"uri": "sqlite://@OUT@/catalog.db"}}},
        "state": {"dir": str(work / "state")},
    }
    for label, binary in binaries:
        results.append((f"dativo postgres → Iceberg (partitions: 1){label}",
                        *dativo_run(label, binary, doc, lambda out: check_iceberg(out, sums, count))))

    ceiling = results[0][1]
    base = next((w for n, w, _, _ in results if "baseline" in n), None)
    print(f"{'tool':<56} {'wall s':>7} {'CPU s':>6} {'rows/CPU-s':>11} {'rows/s':>11} {'peak RSS MB':>12} "
          f"{'× ceiling':>10} {'vs baseline':>12}")
    for name, wall, rss, cpu in results:
        vs = f"{base / wall:.1f}× faster" if base else "-"
        print(f"{name:<56} {wall:>7.2f} {cpu:>6.1f} {count / max(cpu, 1e-3):>11,.0f} {count / wall:>11,.0f} "
              f"{rss:>12.0f} {wall / ceiling:>10.2f} {vs:>12}")
    if args.compare:
        print("\n[compare] rows: the same job with", args.compare)
        for name, wall, rss, cpu in results:
            if name.endswith("[compare]"):
                cur = next(r for r in results if r[0] == name[: -len(" [compare]")])
                print(f"  {cur[0]:<52} wall {cur[1] / wall:.2f}×, CPU {cur[3] / max(cpu, 1e-3):.2f}×, "
                      f"RSS {cur[2] / max(rss, 1e-3):.2f}× of the compared binary")
    print("\nEvery output was checked: same row count and column sums as the source.")
    print("CPU s is user+sys of the measured process (and its children). Peak RSS is of the measured process.")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            [{"tool": n, "wall_s": w, "rss_mb": r, "cpu_s": c} for n, w, r, c in results], indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
