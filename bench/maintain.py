#!/usr/bin/env python3
"""Compaction throughput (`dativo maintain --compact`) against the plain write throughput of the
same rows, measured in the same run, for two target file sizes.

    bench/run maintain                              2M rows in 200 commits; targets 64MB and 512MB; 3 runs each
    bench/run maintain --rows 1000000 --commits 100 --targets 32MB,256MB
    DATIVO_BIN=path/to/dativo .venv/bin/python bench/maintain.py   another binary, no build step

Needs pyiceberg in the venv (as bench/rows.py does) and the local PostgreSQL of bench/run.

Source: bench/pg_to_parquet.py's table `dativo_bench_N` (21 columns; created once, kept).
For every target size T:

1. Load (untimed): a job with `cursor: id` and `checkpoint: {rows: N / commits}` reads the whole
   table into `bench.small_T`: --commits fast appends, one small data file each.
2. Compaction (timed): `dativo maintain JOB --compact --json` with `maintenance.compact:
   {target_file_size: T}`; the bytes and rows rewritten come from its --json report.
3. Plain write (timed, the baseline): `dativo run` of an append job (target_file_size T, no
   checkpoint) writing the same N rows from PostgreSQL into a fresh table `bench.plain_T`.
   The order of 2 and 3 alternates; every case runs --repeat times (default 3), each on a fresh
   load, and the table shows medians.

Every table is checked afterwards (pyiceberg: row count and the sums of pg_to_parquet's SUMS
columns equal the source's). Wall is the dativo process's, CPU its user+sys, peak RSS its maximum
resident set (/usr/bin/time, as in pg_to_parquet.py). Throughput is rows/s over the same rows
(and MB/s of the data files written). Targets: compaction throughput ≥ 0.7× the plain write's;
compaction's peak RSS does not grow with the target file size.
"""
import argparse
import json
import os
import pathlib
import shutil
import statistics
import tempfile

import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog

from pg_to_parquet import DATIVO, SUMS, URL, ensure_table, timed


def size_bytes(s):
    """`64MB` → 64,000,000 (decimal units, as dativo parses them; MiB/GiB binary)."""
    s = s.strip().lower()
    for suffix, mult in (("gib", 1 << 30), ("mib", 1 << 20), ("kib", 1 << 10), ("gb", 10**9),
                         ("mb", 10**6), ("kb", 10**3), ("b", 1)):
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * mult)
    return int(s)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000, help="rows of the table (default 2M)")
    ap.add_argument("--commits", type=int, default=200, help="commits of the small-file load (default 200)")
    ap.add_argument("--targets", default="64MB,512MB", help="target file sizes, comma-separated (default 64MB,512MB)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of every case, each on a fresh load (default 3); "
                    "medians are shown")
    args = ap.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    table, sums, count, size = ensure_table(args.rows)
    per_commit = -(-count // args.commits)
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-maintain-"))
    # Every run uses one binary, even if a build replaces target/release/dativo meanwhile.
    dativo = shutil.copy2(DATIVO, work / "dativo")
    cat = SqlCatalog("dativo", uri=f"sqlite:///{work}/catalog.db", warehouse=f"file://{work}/warehouse")
    print(f"{table}: {count:,} rows, 21 columns, {size / 1e6:.0f} MB in PostgreSQL; "
          f"{args.commits} commits of {per_commit:,} rows; targets {', '.join(targets)}", flush=True)

    def job(name, ident, target, source_extra=None, extra=None):
        doc = {
            "name": name,
            "source": {"reader": "postgres", "config": {"url": URL, "table": table, **(source_extra or {})}},
            "target": {"writer": "iceberg", "config": {
                "table": ident, "mode": "append", "warehouse": str(work / "warehouse"),
                "compression": "snappy", "target_file_size": target,
                "catalog": {"uri": f"sqlite://{work}/catalog.db"}}},
            "state": {"dir": str(work / "state")},
            **(extra or {}),
        }
        path = work / f"{name}.yaml"
        path.write_text(json.dumps(doc))
        return path

    def live(ident):
        """(data files, their bytes) of the table's current snapshot."""
        files = list(cat.load_table(ident).scan().plan_files())
        return len(files), sum(f.file.file_size_in_bytes for f in files)

    def check(ident):
        data = cat.load_table(ident).scan(selected_fields=tuple(SUMS)).to_arrow()
        got = [float(pc.sum(data[c]).as_py()) for c in SUMS]
        ok = data.num_rows == count and all(abs(a - b) <= 1e-6 * max(1, abs(b)) for a, b in zip(got, sums))
        if not ok:
            raise SystemExit(f"{ident} holds {data.num_rows:,} rows, sums {got}; the source {count:,}, {sums}")

    res = {}  # (target, case) → list of (wall, rss, cpu, rows, bytes in, bytes out, files before, files after)
    for i, target in enumerate(targets):
        for r in range(args.repeat):
            tag = f"t{i}_{r}"
            small, plain = f"bench.small_{tag}", f"bench.plain_{tag}"
            load = job(f"load_{tag}", small, target, {"cursor": "id", "batch_size": min(per_commit, 50_000)},
                       {"checkpoint": {"rows": per_commit},
                        "maintenance": {"compact": {"target_file_size": target}}})
            wall, rss, cpu, p = timed([dativo, "run", str(load), "--no-progress", "--log-format", "json"], cwd=work)
            summary = json.loads(p.stdout.strip().splitlines()[-1])
            files_small, bytes_small = live(small)
            print(f"[{target} #{r + 1}] load: {summary['commits']} commits, {files_small} data files, "
                  f"{bytes_small / 1e6:.0f} MB, {wall:.1f} s (untimed for the comparison)", flush=True)
            if summary["rows"] != count or files_small < args.commits * 0.9:
                raise SystemExit(f"the load wrote {summary['rows']:,} rows in {files_small} files: {summary}")

            def compact():
                wall, rss, cpu, p = timed([dativo, "maintain", str(load), "--compact", "--json"], cwd=work)
                rep = {x["operation"]: x for x in json.loads(p.stdout)}["compact"]
                if rep["rows_rewritten"] != count or rep["data_files_before"] != files_small:
                    raise SystemExit(f"compaction rewrote {rep['rows_rewritten']:,} rows of {count:,}: {rep}")
                files_after, bytes_after = live(small)
                res.setdefault((target, "compaction"), []).append(
                    (wall, rss, cpu, rep["rows_rewritten"], rep["bytes_rewritten"], bytes_after,
                     rep["data_files_before"], files_after))
                print(f"[{target} #{r + 1}] compaction: {wall:.1f} s, {cpu:.1f} s CPU, {rss:.0f} MB peak RSS, "
                      f"{rep['data_files_before']} → {files_after} files", flush=True)

            def write():
                path = job(f"plain_{tag}", plain, target)
                wall, rss, cpu, p = timed([dativo, "run", str(path), "--no-progress", "--log-format", "json"],
                                          cwd=work)
                s = json.loads(p.stdout.strip().splitlines()[-1])
                files, out = live(plain)
                res.setdefault((target, "plain write"), []).append((wall, rss, cpu, s["rows"], None, out, None, files))
                print(f"[{target} #{r + 1}] plain write: {wall:.1f} s, {cpu:.1f} s CPU, {rss:.0f} MB peak RSS, "
                      f"{files} files", flush=True)

            for step in ((write, compact) if (i + r) % 2 == 0 else (compact, write)):
                step()
            check(small)
            check(plain)
            cat.drop_table(small)
            cat.drop_table(plain)
            shutil.rmtree(work / "warehouse", ignore_errors=True)

    def med(key):
        """Medians of wall, rss and cpu; the rest from the median-wall run."""
        runs = sorted(res[key])
        mid = runs[len(runs) // 2]
        return (statistics.median(x[0] for x in runs), statistics.median(x[1] for x in runs),
                statistics.median(x[2] for x in runs), *mid[3:])

    by = {key: med(key) for key in res}
    print(f"\nCompaction of {args.commits} small files ({count:,} rows of `{table}`) vs a plain append "
          f"of the same rows from PostgreSQL into a fresh table, per target file size. Medians of "
          f"{args.repeat} runs, alternating; load average {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores).\n")
    print("| target | case | rows | MB in | MB out | files | wall s | CPU s | peak RSS MB | rows/s | MB/s out "
          "| throughput × plain write |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    for target in targets:
        base = by[(target, "plain write")]
        for case in ("plain write", "compaction"):
            wall, rss, cpu, rows, b_in, b_out, f_before, f_after = by[(target, case)]
            files = f"{f_before} → {f_after}" if f_before is not None else str(f_after)
            rel = "1" if case == "plain write" else f"{(rows / wall) / (base[3] / base[0]):.2f}×"
            mb_in = f"{b_in / 1e6:.0f}" if b_in is not None else "(PostgreSQL)"
            print(f"| {target} | {case} | {rows:,} | {mb_in} | {b_out / 1e6:.0f} | {files} | {wall:.2f} | "
                  f"{cpu:.2f} | {rss:.0f} | {rows / wall:,.0f} | {b_out / 1e6 / wall:.1f} | {rel} |")

    def verdict(ok):
        return "met" if ok else "NOT met"

    print("\nTargets:")
    for target in targets:
        c, w = by[(target, "compaction")], by[(target, "plain write")]
        ratio = (c[3] / c[0]) / (w[3] / w[0])
        print(f"- [{target}] compaction throughput ≥ 0.7× the plain write's: {ratio:.2f}× — {verdict(ratio >= 0.7)} "
              f"(CPU {c[2]:.1f} s vs {w[2]:.1f} s)")
    rss = [by[(t, "compaction")][1] for t in targets]
    if len(targets) > 1:
        lo, hi = min(targets, key=size_bytes), max(targets, key=size_bytes)
        r_lo, r_hi = by[(lo, "compaction")][1], by[(hi, "compaction")][1]
        print(f"- compaction peak RSS does not grow with the target size: {r_lo:.0f} MB at {lo}, {r_hi:.0f} MB at "
              f"{hi} ({r_hi / r_lo:.2f}×) — {verdict(r_hi <= 1.25 * r_lo)}")
    plain_rss = ", ".join(f"{by[(t, 'plain write')][1]:.0f} MB at {t}" for t in targets)
    print(f"  (compaction: {', '.join(f'{r:.0f} MB at {t}' for r, t in zip(rss, targets))}; plain write: {plain_rss})")
    print("\nChecked: every table holds the source's rows (pyiceberg: count and sums of "
          f"{', '.join(SUMS)}); compaction rewrote every row (its --json report).")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
