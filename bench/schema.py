#!/usr/bin/env python3
"""A whole schema in one job (`tables:`): dativo against the two big tables alone, and against
Sling replicating the same schema, measured in the same run.

    bench/run schema                          200 tables: 2 × 1M rows, 198 of 1–10,000 rows
    bench/run schema --tables 50 --big-rows 200000
    DATIVO_BIN=path/to/dativo .venv/bin/python bench/schema.py    another binary, no build step

Source: PostgreSQL schema `dativo_bench_schema_<tables>_<big rows>` (created once, kept): tables
`big_0` and `big_1` (id bigint primary key, text, numeric(12,2), date, timestamptz, boolean,
updated_at), then tables of 1–10,000 rows of the same shape, every fifth without a primary key.

Cases (each into a fresh Parquet directory per table, `lake/{schema}/{table}`):
1. dativo, the two big tables alone (`tables: [S.big_*]`, full refresh) — the reference.
2. dativo, the whole schema (`tables: [S.*]`, max_parallel_streams 4).
3. Sling (sling-linux-amd64 from PyPI, offline) replicating `S.*` to local Parquet files,
   when installed (bench/run installs it).

Each case's output is checked: per table, the row count equals the source's. Wall is the
process's; CPU is user+sys of the process and its children; peak RSS its maximum resident set
(/usr/bin/time). Target: case 2's wall ≤ 1.3 × case 1's + 200 × 30 ms, and case 2's peak RSS
about case 1's (memory does not grow with the number of tables).
"""
import argparse
import glob
import json
import os
import pathlib
import shutil
import sys
import tempfile

import psycopg2
import pyarrow.dataset as ds

from pg_to_parquet import DATIVO, URL, sling_binary, timed

DSN = URL


def ensure_schema(tables, big_rows):
    schema = f"dativo_bench_schema_{tables}_{big_rows}"
    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    c = conn.cursor()
    c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,))
    names = ["big_0", "big_1"] + [f"t_{i:03d}" for i in range(tables - 2)]
    if c.fetchone()[0] != len(names):
        print(f"creating schema {schema} ({tables} tables)…", flush=True)
        c.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        c.execute(f"CREATE SCHEMA {schema}")
        for i, n in enumerate(names):
            rows = big_rows if n.startswith("big_") else 1 + (i * 7919) % 10000
            pk = "" if (n.startswith("t_") and i % 5 == 0) else " PRIMARY KEY"
            c.execute(f"""CREATE TABLE {schema}.{n} (id bigint{pk}, name text, amount numeric(12,2),
                day date, ts timestamptz, flag boolean, updated_at timestamptz NOT NULL)""")
            c.execute(f"""INSERT INTO {schema}.{n} SELECT i, 'name-' || i || repeat('x', i % 20),
                ((i::bigint * 7919) % 2000000 - 1000000) / 100.0, date '2020-01-01' + (i % 2000),
                timestamptz '2024-01-01 00:00+00' + i * interval '1 second', i % 3 = 0,
                timestamptz '2024-01-01 00:00+00' + i * interval '1 second'
                FROM generate_series(1, {rows}) i""")
            c.execute(f"ANALYZE {schema}.{n}")
    counts = {}
    for n in names:
        c.execute(f"SELECT count(*) FROM {schema}.{n}")
        counts[n] = c.fetchone()[0]
    conn.close()
    return schema, counts


def check(out, schema, counts, layout, fail=True):
    bad = []
    for n, want in counts.items():
        d = layout(out, schema, n)
        files = []
        # dativo: a directory per table; Sling: `t.parquet`, a file or (split) a directory.
        for c in (pathlib.Path(d), pathlib.Path(str(d) + ".parquet")):
            if c.is_dir():
                files += [f for f in glob.glob(str(c) + "/**/*.parquet", recursive=True) if "/_" not in f]
            elif c.is_file():
                files.append(str(c))
        got = ds.dataset(files, format="parquet").count_rows() if files else 0
        if got != want:
            bad.append(f"{n}: want {want} rows, got {got}")
    if bad and fail:
        raise SystemExit(f"output differs from the source in {len(bad)} tables: {bad[:5]}")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=int, default=200)
    ap.add_argument("--big-rows", type=int, default=1_000_000)
    ap.add_argument("--parallel", type=int, default=4, help="max_parallel_streams (default 4)")
    ap.add_argument("--skip", default="", help="comma-separated: sling")
    args = ap.parse_args()
    schema, counts = ensure_schema(args.tables, args.big_rows)
    total = sum(counts.values())
    print(f"schema {schema}: {len(counts)} tables, {total:,} rows\n", flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-schema-"))
    results = []
    layout = lambda out, s, n: out / s / n  # noqa: E731

    def dativo(name, pattern, counts_for):
        out = work / name
        job = work / f"{name}.yaml"
        job.write_text(json.dumps({
            "name": name,
            "max_parallel_streams": args.parallel,
            "source": {"reader": "postgres", "config": {"url": URL, "tables": [f"{schema}.{pattern}"],
                                                        "cursor": None, "mode": "full_refresh"}},
            "target": {"writer": "parquet", "config": {"path": str(out) + "/{schema}/{table}"}},
            "state": {"dir": str(work / f"state-{name}")},
        }))
        wall, rss, cpu, _ = timed([DATIVO, "run", str(job), "--no-progress"], cwd=work)
        check(out, schema, counts_for, layout)
        shutil.rmtree(out, ignore_errors=True)
        return wall, rss, cpu

    big = {n: c for n, c in counts.items() if n.startswith("big_")}
    t_big = dativo("big_only", "big_*", big)
    results.append(("dativo: the 2 big tables alone", *t_big))
    t_all = dativo("whole_schema", "*", counts)
    results.append((f"dativo: the whole schema ({len(counts)} tables)", *t_all))

    sling, duck = (None, None) if "sling" in set(args.skip.split(",")) else sling_binary()
    if sling:
        out = work / "sling"
        rep = work / "replication.yaml"
        rep.write_text(json.dumps({
            "source": "PG", "target": "LOCAL",
            "defaults": {"mode": "full-refresh", "object": f"file://{out}/{{stream_schema}}/{{stream_table}}.parquet",
                         "target_options": {"format": "parquet"}},
            "streams": {f"{schema}.*": {}},
        }))
        env = dict(os.environ, PG=URL.replace("postgres://", "postgresql://"),
                   SLING_DISABLE_TELEMETRY="true", DUCKDB_VERSION="1.5.5",
                   SLING_THREADS=str(args.parallel))
        if duck:
            env["DUCKDB_PATH"] = duck
        try:
            wall, rss, cpu, _ = timed([sling, "run", "-r", str(rep)], env=env, cwd=work)
            bad = check(out, schema, counts, lambda o, s, n: o / s / n, fail=False)
            note = f" — OUTPUT WRONG in {len(bad)} tables: {'; '.join(bad[:2])}" if bad else ""
            results.append((f"Sling: the whole schema ({len(counts)} tables){note}", wall, rss, cpu))
        except SystemExit as e:
            print(f"Sling failed: {str(e)[-1500:]}", file=sys.stderr)
    else:
        print("Sling not installed (bench/run schema installs it into .venv/sling): skipped")

    ref = t_big[0]
    print("\n| mover | wall | × big tables alone | CPU s | peak RSS |\n|---|---|---|---|---|")
    for name, wall, rss, cpu in results:
        print(f"| {name} | {wall:.2f} s | {wall / ref:.2f} | {cpu:.1f} | {rss:.0f} MB |")
    bound = 1.3 * ref + len(counts) * 0.030
    print(f"\ntarget: whole schema ≤ 1.3 × big tables + {len(counts)} × 30 ms = {bound:.2f} s: "
          f"{t_all[0]:.2f} s ({'met' if t_all[0] <= bound else 'NOT met'}); peak RSS "
          f"{t_all[1]:.0f} MB vs {t_big[1]:.0f} MB for 2 tables")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
