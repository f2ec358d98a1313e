#!/usr/bin/env python3
"""Row-level writes into Iceberg: `mode: merge` and `mode: overwrite` against `mode: append`,
measured in the same run on the same rows.

    bench/run rows                      10M-row table, 10,000 changed rows, 1M-row overwrite, 3 runs each
    bench/run rows --rows 1000000       a 1M-row table for the merge cases (quicker)
    bench/run rows --changes 100000 --repeat 5 --overwrite-rows 2000000
    DATIVO_BIN=path/to/dativo .venv/bin/python bench/rows.py   another binary, no build step

Needs pyiceberg in the venv (as bench/shards.py does) and the local PostgreSQL of bench/run.

Source tables in PostgreSQL (created once, kept): the 21 columns of bench/pg_to_parquet.py plus
`updated_at timestamptz NOT NULL` (indexed; the incremental cursor), in `dativo_bench_rows_N`
(each run first undoes the previous runs' changes, so every run starts from the same rows);
the overwrite case reads pg_to_parquet's own `dativo_bench_N` (no cursor: a full refresh).

1. Merge. Two jobs with `cursor: updated_at` first load the whole table (untimed) into two
   Iceberg tables: `bench.merged` (`mode: merge` from the first run, as a merge job's table is
   made: its data files carry the key's bloom filters) and `bench.appended`. Then, each round, --changes rows of
   the source get a new `updated_at` (and i4 + 1), and both jobs read exactly those rows: one
   with `mode: merge` (primary key id, the source's), one with `mode: append` (the baseline).
   Twice per round: random ids across the table (every row group holds some: the worst case for
   pruning), then the --changes most recent ids (clustered). The order of the two jobs alternates
   between rounds. The merge's bytes read and the table's bytes come from its `merged` log line
   (bytes_read, table_bytes: the live data files'), checked against its snapshot summary
   (dativo.merge.bytes-read, dativo.merge.upserts). At the end the merged table must equal the
   source (pyiceberg: count, sum(i4), sum(id)) and the appended one must hold every row delivered.
2. Overwrite. A full refresh of the --overwrite-rows table into `bench.overwritten`, which already
   holds those rows (one untimed run first), with `mode: overwrite`; the baseline is `mode:
   append` of the same rows into an empty table (created by an untimed run that reads no rows).
   Alternating; every table is checked (row count).

Every case runs --repeat times (default 3); the table shows medians. Wall is the dativo process's
wall time, CPU its user+sys, peak RSS its maximum resident set (/usr/bin/time, as in
pg_to_parquet.py). Targets (from the issue): merge ≤ 3× the append (wall and CPU), merge bytes
read ≤ 5% of the table's bytes, overwrite ≤ 1.1× the append (wall).
"""
import argparse
import json
import os
import pathlib
import re
import shutil
import statistics
import tempfile

import psycopg2
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog

from pg_to_parquet import COLUMNS, DATIVO, DSN, FILL, URL, ensure_table, timed


def ensure_cursor_table(rows):
    """`dativo_bench_rows_N`: pg_to_parquet's 21 columns + updated_at (= tstz at creation)."""
    name = f"dativo_bench_rows_{rows}"
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    with conn.cursor() as c:
        c.execute("SELECT count(*) FROM pg_class WHERE relname = %s", (name,))
        if c.fetchone()[0] == 0:
            print(f"creating {name} ({rows:,} rows)…", flush=True)
            c.execute(f"DROP TABLE IF EXISTS {name}_tmp")
            c.execute(f"CREATE TABLE {name}_tmp ({COLUMNS}, updated_at timestamptz NOT NULL)")
            cols = ", ".join(re.findall(r"(?:^|,)\s*(\w+)\s", COLUMNS))
            step = 500_000
            for lo in range(1, rows + 1, step):
                c.execute(f"INSERT INTO {name}_tmp SELECT *, tstz FROM ({FILL}) f({cols})",
                          (lo, min(lo + step - 1, rows)))
            c.execute(f"UPDATE {name}_tmp SET i2 = NULL, f4 = NULL, ts = NULL, j = NULL WHERE id % 11 = 0")
            c.execute(f"CREATE INDEX ON {name}_tmp (updated_at)")
            c.execute(f"VACUUM ANALYZE {name}_tmp")
            c.execute(f"ALTER TABLE {name}_tmp RENAME TO {name}")
        # Undo the changes of earlier benchmark runs: every run starts from the same rows, in id
        # order by cursor (changed rows have an updated_at above the last row's creation time).
        c.execute(f"UPDATE {name} SET updated_at = tstz, i4 = id * 7 WHERE updated_at > "
                  f"timestamptz '2020-01-01 00:00+00' + {rows} * interval '1 second'")
        c.execute(f"SELECT pg_total_relation_size(%s)", (name,))
        size = c.fetchone()[0]
    conn.close()
    return name, size


def change(table, rows, k, clustered, seed):
    """Give k rows a new, unique updated_at above every other (and i4 + 1): random ids across
    the table, or the k highest ids. Returns the number of rows changed."""
    ids = (f"SELECT id FROM generate_series({rows - k + 1}, {rows}) id" if clustered else
           f"SELECT DISTINCT (1 + floor(random() * {rows}))::int8 AS id "
           f"FROM generate_series(1, {3 * k}) LIMIT {k}")
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    with conn.cursor() as c:
        c.execute("SELECT setseed(%s)", (seed,))
        c.execute(f"""WITH c AS (SELECT id, row_number() OVER () AS rn FROM ({ids}) s),
                           top AS (SELECT max(updated_at) AS m FROM {table})
                      UPDATE {table} t SET updated_at = top.m + c.rn * interval '1 millisecond',
                                           i4 = t.i4 + 1
                      FROM c, top WHERE t.id = c.id""")
        n = c.rowcount
        c.execute(f"ANALYZE {table}")
    conn.close()
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000, help="rows of the merged table (default 10M)")
    ap.add_argument("--changes", type=int, default=10_000, help="changed rows per merge (default 10,000)")
    ap.add_argument("--overwrite-rows", type=int, default=1_000_000, help="rows of the overwritten table (default 1M)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of every case (default 3); medians are shown")
    args = ap.parse_args()
    n, k = args.rows, args.changes
    src, src_size = ensure_cursor_table(n)
    ow_src, _, ow_count, ow_size = ensure_table(args.overwrite_rows)
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-rows-"))
    # Every run uses one binary, even if a build replaces target/release/dativo meanwhile.
    dativo = shutil.copy2(DATIVO, work / "dativo")
    cat = SqlCatalog("dativo", uri=f"sqlite:///{work}/catalog.db", warehouse=f"file://{work}/warehouse")

    def job(name, source, table, mode):
        path = work / f"{name}-{mode}.yaml"
        path.write_text(json.dumps({
            "name": name,
            "source": {"reader": "postgres", "config": {"url": URL, **source}},
            "target": {"writer": "iceberg", "config": {
                "table": table, "mode": mode, "warehouse": str(work / "warehouse"),
                "compression": "snappy", "catalog": {"uri": f"sqlite://{work}/catalog.db"}}},
            "state": {"dir": str(work / "state")},
        }))
        return path

    def run(path):
        wall, rss, cpu, p = timed([dativo, "run", str(path), "--no-progress"], cwd=work)
        return wall, rss, cpu, p.stderr

    # ---- 1. merge vs append of the same changed rows, into two equal n-row tables
    inc = {"table": src, "cursor": "updated_at"}
    merge_job, append_job = job("rows_merge", inc, "bench.merged", "merge"), job("rows_append", inc, "bench.appended", "append")
    print(f"{src}: {n:,} rows, 22 columns, {src_size / 1e6:.0f} MB in PostgreSQL; loading it into two "
          f"Iceberg tables (untimed)…", flush=True)
    for table, path in (("bench.merged", merge_job), ("bench.appended", append_job)):
        wall, rss, cpu, _ = run(path)
        print(f"  {table}: {wall:.1f} s wall, {cpu:.1f} s CPU, {rss:.0f} MB peak RSS", flush=True)
    delivered = n
    print(f"load average before the measured runs: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
    res = {}  # case → list of (wall, rss, cpu)
    ratio = {"random": [], "clustered": []}  # merge bytes_read / table_bytes
    merged_stats = {"random": [], "clustered": []}
    for r in range(args.repeat):
        for kind in ("random", "clustered"):
            got = change(src, n, k, kind == "clustered", (r % 19) / 10 - 0.9)
            assert got == k, f"{got} rows changed, not {k}"
            delivered += k
            order = [("merge", merge_job), ("append", append_job)]
            for mode, path in (order if r % 2 == 0 else order[::-1]):
                wall, rss, cpu, log = run(path)
                res.setdefault((kind, mode), []).append((wall, rss, cpu))
                if mode == "merge":
                    m = re.search(r" merged (.*)", log)
                    if not m:
                        raise SystemExit(f"no `merged` line in the merge run's log:\n{log[-3000:]}")
                    f = dict(kv.split("=", 1) for kv in m.group(1).split())
                    ups, fr, fl, rr, br, tb = (int(f[x]) for x in ("upserts", "files_read", "files_live",
                                                                  "rows_read", "bytes_read", "table_bytes"))
                    if ups != k:
                        raise SystemExit(f"the merge upserted {ups} rows, not {k}:\n{log[-3000:]}")
                    summary = cat.load_table("bench.merged").current_snapshot().summary
                    if summary.get("dativo.merge.bytes-read") != str(br) or summary.get("dativo.merge.upserts") != str(k):
                        raise SystemExit(f"the merge's snapshot summary {summary} differs from its log line {f}")
                    ratio[kind].append(br / tb)
                    merged_stats[kind].append((fr, fl, rr, br, tb))

    # The merged table equals the source; the appended one holds every delivered row.
    conn = psycopg2.connect(DSN)
    with conn.cursor() as c:
        c.execute(f"SELECT count(*), sum(i4), sum(id) FROM {src}")
        want = tuple(int(v) for v in c.fetchone())
    conn.close()
    data = cat.load_table("bench.merged").scan(selected_fields=("id", "i4")).to_arrow()
    got = (data.num_rows, pc.sum(data["i4"]).as_py(), pc.sum(data["id"]).as_py())
    if got != want:
        raise SystemExit(f"bench.merged (pyiceberg) holds count, sum(i4), sum(id) = {got}, the source {want}")
    appended = cat.load_table("bench.appended").scan(selected_fields=("id",)).count()
    if appended != delivered:
        raise SystemExit(f"bench.appended holds {appended:,} rows, {delivered:,} were delivered")
    del data

    # ---- 2. overwrite of a table holding the rows vs append of them into an empty table
    full = {"table": ow_src}
    ow_job = job("rows_overwrite", full, "bench.overwritten", "overwrite")
    run(ow_job)  # the table now holds the rows
    for r in range(args.repeat):
        # The baseline's table exists and is empty: created by an untimed run that reads no rows.
        run(job(f"rows_fresh_{r}", {**full, "where": "false"}, f"bench.fresh_{r}", "append"))
        assert cat.load_table(f"bench.fresh_{r}").scan(selected_fields=("id",)).count() == 0
        order = [("overwrite", ow_job), ("append", job(f"rows_fresh_{r}", full, f"bench.fresh_{r}", "append"))]
        for mode, path in (order if r % 2 == 0 else order[::-1]):
            res.setdefault(("full", mode), []).append(run(path)[:3])
    for ident in ["bench.overwritten"] + [f"bench.fresh_{r}" for r in range(args.repeat)]:
        got = cat.load_table(ident).scan(selected_fields=("id",)).count()
        if got != ow_count:
            raise SystemExit(f"{ident} holds {got:,} rows, the source {ow_count:,}")

    # ---- the table
    med = {key: tuple(statistics.median(x[i] for x in v) for i in range(3)) for key, v in res.items()}
    pct = f"{100 * k / n:.3g}%"
    rows = [
        (f"append {k:,} changed rows, random ids (baseline)", ("random", "append"), None),
        (f"merge {k:,} changed rows, random ids", ("random", "merge"), ("random", "append")),
        (f"append {k:,} changed rows, clustered ids (baseline)", ("clustered", "append"), None),
        (f"merge {k:,} changed rows, clustered ids", ("clustered", "merge"), ("clustered", "append")),
        (f"append {ow_count:,} rows into an empty table (baseline)", ("full", "append"), None),
        (f"overwrite a {ow_count:,}-row table with {ow_count:,} rows", ("full", "overwrite"), ("full", "append")),
    ]
    print(f"\nMerge: {k:,} changed rows ({pct} of {n:,}) into a {n:,}-row Iceberg table; overwrite: "
          f"{ow_count:,} rows ({ow_size / 1e6:.0f} MB in PostgreSQL). Medians of {args.repeat} runs, alternating.\n")
    print("| case | wall s | CPU s | peak RSS MB | wall × baseline | CPU × baseline | RSS × baseline | bytes read / table bytes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, key, base in rows:
        wall, rss, cpu = med[key]
        if base:
            bw, brss, bcpu = med[base]
            rel = f"{wall / bw:.2f}× | {cpu / bcpu:.2f}× | {rss / brss:.2f}×"
        else:
            rel = "1 | 1 | 1"
        share = "-"
        if key[1] == "merge":
            st = sorted(merged_stats[key[0]], key=lambda s: s[3])[len(merged_stats[key[0]]) // 2]
            share = (f"{statistics.median(ratio[key[0]]):.1%} ({st[3] / 1e6:.0f} of {st[4] / 1e6:.0f} MB; "
                     f"{st[0]} of {st[1]} files, {st[2]:,} keys read)")
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {rss:.0f} | {rel} | {share} |")

    def verdict(ok):
        return "met" if ok else "NOT met"

    mw, mr, mc = med[("random", "merge")]
    aw, ar, ac = med[("random", "append")]
    rr = statistics.median(ratio["random"])
    ow, _, oc = med[("full", "overwrite")]
    fw, _, fc = med[("full", "append")]
    print("\nTargets (random ids, the worst case):")
    print(f"- merge ≤ 3× the append, wall: {mw / aw:.2f}× — {verdict(mw <= 3 * aw)}")
    print(f"- merge ≤ 3× the append, CPU: {mc / ac:.2f}× — {verdict(mc <= 3 * ac)}")
    print(f"- merge bytes read ≤ 5% of the table's bytes: {rr:.1%} — {verdict(rr <= 0.05)}")
    print(f"- merge peak RSS vs the append's (bounded as for appends): {mr:.0f} MB vs {ar:.0f} MB ({mr / ar:.2f}×)")
    print(f"- overwrite ≤ 1.1× the append, wall: {ow / fw:.2f}× — {verdict(ow <= 1.1 * fw)} "
          f"(CPU {oc / fc:.2f}×)")
    print("\nChecked: the merged table equals the source (count, sum(i4), sum(id), via pyiceberg), every "
          "merge upserted exactly the changed rows (log line and snapshot summary agree), the appended and overwritten tables hold every row.")
    print("Bytes read: the merge's `merged` log line (bytes fetched to find previous versions / bytes of "
          "the live data files); the files column is the median run's.")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
