#!/usr/bin/env python3
"""MySQL/MariaDB → Parquet: dativo against the server's own rows into /dev/null, ConnectorX and
Sling, all measured in the same run on the same table, every output checked against the source.

The table is the PostgreSQL bench table of the same shape (`--shape lineitem` or `wide50`, built
by pg_to_parquet.py's generator), copied once into the shared MariaDB (127.0.0.1:3306, db `test`)
with LOAD DATA: the same values, so every output is compared with the same fingerprint (every
column: counts, sums, text hashes and lengths, days and epoch seconds).

Column types in MariaDB: bigint/int → BIGINT/INT, numeric(p,s) → DECIMAL(p,s), varchar(n) →
VARCHAR(n), text → TEXT, date → DATE, timestamp → DATETIME(6), timestamptz → TIMESTAMP(6)
(loaded in UTC).

CPU s is the process's own user+sys time (rusage, children included)."""
import argparse
import os
import pathlib
import shutil
import sys
import tempfile

import psycopg2
import pymysql

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from pg_to_parquet import (DSN, DATIVO, PY, check_content, dativo_medians,  # noqa: E402
                           ensure_shape, fingerprint, finish, parquet_files, print_ratios,
                           sling_run, timed)

MY = dict(host=os.environ.get("DATIVO_BENCH_MYSQL_HOST", "127.0.0.1"),
          port=int(os.environ.get("DATIVO_BENCH_MYSQL_PORT", "3306")), user="root", database="test")
URL = f"mysql://root@{MY['host']}:{MY['port']}/test"


def mysql_type(typ, prec, scale, length):
    """The MariaDB column type for a PostgreSQL column (the shapes' types only)."""
    return {
        "bigint": "BIGINT", "integer": "INT", "smallint": "SMALLINT", "text": "TEXT",
        "date": "DATE", "timestamp without time zone": "DATETIME(6)",
        "timestamp with time zone": "TIMESTAMP(6) NULL",
        "numeric": f"DECIMAL({prec},{scale})", "character varying": f"VARCHAR({length})",
    }[typ]


def ensure_mysql(table):
    """Copy the PostgreSQL table `table` into MariaDB unless a table of that name with the same
    row count is there: returns the row count."""
    pg = psycopg2.connect(DSN)
    with pg.cursor() as c:
        c.execute("""SELECT column_name, data_type, numeric_precision, numeric_scale,
                            character_maximum_length
                     FROM information_schema.columns WHERE table_name = %s
                     AND table_schema = current_schema() ORDER BY ordinal_position""", (table,))
        cols = c.fetchall()
        c.execute("""SELECT a.attname FROM pg_index i JOIN pg_attribute a
                     ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                     WHERE i.indrelid = %s::regclass AND i.indisprimary
                     ORDER BY array_position(i.indkey::int2[], a.attnum)""", (table,))
        key = [r[0] for r in c.fetchall()]
        c.execute(f"SELECT count(*) FROM {table}")
        count = c.fetchone()[0]
    my = pymysql.connect(**MY, local_infile=True, autocommit=True)
    with my.cursor() as c:
        c.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'test' "
                  "AND table_name = %s", (table,))
        if c.fetchone()[0]:
            c.execute(f"SELECT count(*) FROM `{table}`")
            if c.fetchone()[0] == count:
                my.close()
                pg.close()
                return count
            c.execute(f"DROP TABLE `{table}`")
        print(f"copying {table} into MariaDB…", flush=True)
        ddl = ", ".join(f"`{n}` {mysql_type(t, p, s, l)}" for n, t, p, s, l in cols)
        pk = f", PRIMARY KEY ({', '.join(f'`{k}`' for k in key)})" if key else ""
        c.execute(f"DROP TABLE IF EXISTS `{table}_tmp`")  # an interrupted copy's
        c.execute(f"CREATE TABLE `{table}_tmp` ({ddl}{pk}) ENGINE=InnoDB")
        # PostgreSQL's text COPY format (tab, \N, backslash escapes) is LOAD DATA's default;
        # timestamptz leaves as UTC wall time and is loaded in a UTC session.
        sel = ", ".join(f"\"{n}\" AT TIME ZONE 'UTC'" if t == "timestamp with time zone" else f'"{n}"'
                        for n, t, *_ in cols)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix="dativo-mysql-")) / "rows.tsv"
        try:
            with pg.cursor() as pc, open(tmp, "w") as f:
                pc.copy_expert(f"COPY (SELECT {sel} FROM {table}) TO STDOUT", f)
            c.execute("SET time_zone = '+00:00'")
            loaded = c.execute(f"LOAD DATA LOCAL INFILE '{tmp}' INTO TABLE `{table}_tmp`")
            c.execute("SHOW WARNINGS LIMIT 5")
            warnings = c.fetchall()
        finally:
            shutil.rmtree(tmp.parent, ignore_errors=True)
        # LOAD DATA turns truncation and duplicate keys into warnings: a copy that is not the
        # source row for row is refused here, not blamed on the movers later.
        if loaded != count or warnings:
            raise SystemExit(f"copying {table} into MariaDB: {loaded:,} of {count:,} rows loaded; "
                             f"warnings: {warnings}")
        c.execute(f"ANALYZE TABLE `{table}_tmp`")
        c.execute(f"RENAME TABLE `{table}_tmp` TO `{table}`")
    my.close()
    pg.close()
    return count


CONNECTORX = r'''
import sys, connectorx as cx, pyarrow.parquet as pq
url, table, out = sys.argv[1:4]
t = cx.read_sql(url, f"SELECT * FROM {table}", return_type="arrow")
pq.write_table(t, out + "/part-0.parquet")
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="table size (default 1M)")
    ap.add_argument("--shape", default="lineitem", choices=["lineitem", "wide50"],
                    help="the table's columns (default lineitem)")
    ap.add_argument("--skip", default="", help="comma-separated: connectorx,sling")
    ap.add_argument("--compare", metavar="BIN",
                    help="also run every dativo row with this binary, alternating with the current one")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every dativo row N times (alternating binaries) and report the medians")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    table, _, _, _, _, ncols = ensure_shape(args.rows, args.shape)
    count = ensure_mysql(table)
    fp = fingerprint(table)
    print(f"table {table} in MariaDB: {count:,} rows, {ncols} columns\n", flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-mysql-"))
    results = []

    # 1. The ceiling: the server's rows into /dev/null through its own client (text protocol,
    # unbuffered), the client's CPU included.
    with open(os.devnull, "w") as devnull:
        wall, rss, cpu, _ = timed(["mariadb", "-h", MY["host"], "-P", str(MY["port"]), "-u", "root",
                                   "--quick", "--batch", "--skip-column-names", "test", "-e",
                                   f"SELECT * FROM `{table}`"], stdout=devnull)
    results.append(("mariadb --quick → /dev/null (ceiling)", wall, rss, cpu))

    if "connectorx" not in skip:
        out = work / "connectorx"
        out.mkdir()
        script = work / "bench_connectorx.py"
        script.write_text(CONNECTORX)
        try:
            wall, rss, cpu, _ = timed([PY, str(script), URL, table, str(out)])
            name = "ConnectorX → Parquet"
            try:
                check_content(parquet_files(out), fp, "ConnectorX")
            except SystemExit as e:
                print(f"ConnectorX's output is wrong: {e}", file=sys.stderr)
                name += " — OUTPUT WRONG"
            results.append((name, wall, rss, cpu))
        except SystemExit as e:
            print(f"ConnectorX failed: {str(e)[-1500:]}", file=sys.stderr)
        shutil.rmtree(out, ignore_errors=True)
    if "sling" not in skip:
        sling = sling_run(work, table, fp, count, conn="MY", conn_url=URL, stream=f"test.{table}")
        if sling:
            results.append(sling)

    binaries = [("", DATIVO)] + ([(" [compare]", args.compare)] if args.compare else [])

    source = {"reader": "mysql", "config": {"url": URL, "table": table}}
    jobs = [
        ("dativo mysql → Parquet", {
            "name": "bench_mysql_parquet", "source": source,
            "target": {"writer": "parquet", "config": {"path": "@OUT@"}},
            "state": {"dir": str(work / "state")}}, parquet_files),
        ("dativo mysql → Iceberg", {
            "name": "bench_mysql_iceberg", "source": source,
            "target": {"writer": "iceberg", "config": {
                "table": "bench.rows", "warehouse": "@OUT@/warehouse", "compression": "snappy",
                "catalog": {"uri": "sqlite://@OUT@/catalog.db"}}},
            "state": {"dir": str(work / "state")}}, lambda d: parquet_files(d / "warehouse")),
    ]
    for name, doc, files_of in jobs:
        results.extend(dativo_medians(work, binaries, args.repeat, name, doc,
                                      lambda out, f=files_of, n=name: check_content(f(out), fp, n)))

    ceiling = results[0][1]
    print(f"{'tool':<48} {'wall s':>7} {'CPU s':>6} {'rows/CPU-s':>11} {'rows/s':>11} {'peak RSS MB':>12} {'× ceiling':>10}")
    for name, wall, rss, cpu in results:
        print(f"{name:<48} {wall:>7.2f} {cpu:>6.2f} {count / max(cpu, 1e-3):>11,.0f} {count / wall:>11,.0f} "
              f"{rss:>12.0f} {wall / ceiling:>10.2f}")
    print_ratios(results, args.compare, "dativo mysql → Parquet", "dativo mysql → Iceberg")
    print(f"\nEvery output was checked against the source: {len(fp[0])} aggregates over all {ncols} columns. "
          "A row marked OUTPUT WRONG failed that check.")
    print("The ceiling is MariaDB's own client printing every row (text protocol) into /dev/null; "
          "its CPU s is the client's, not the server's. The server runs on the same 2 cores.")
    finish(results, args, work)


if __name__ == "__main__":
    main()
