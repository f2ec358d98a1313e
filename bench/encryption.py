#!/usr/bin/env python3
"""The cost of client-side encryption, same data, same run: a Parquet file of --rows rows is
read by the built-in `file` reader and written by the `parquet` writer plain, encrypted with the
stream format, and with Parquet Modular Encryption (a key per column), all with a local key file.
Best of --repeat runs each; every output is checked (plain with DuckDB, encrypted through
`dativo verify`, which decrypts every byte and counts the rows)."""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import tempfile

import duckdb

from pg_to_parquet import DATIVO, timed


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-enc-"))
    src = work / "source.parquet"
    duckdb.execute(f"""COPY (SELECT range AS id, 'name-' || range AS name, range * 0.5 AS amount,
        TIMESTAMP '2026-01-01' + INTERVAL (range) SECOND AS ts, range % 7 = 0 AS flag
        FROM range({args.rows})) TO '{src}' (FORMAT parquet, COMPRESSION snappy)""")
    arrow_mb = duckdb.execute(f"SELECT sum(total_uncompressed_size) FROM parquet_metadata('{src}')").fetchone()[0] / 1e6
    key = work / "kek"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)
    provider = {"type": "local", "key_file": str(key)}
    variants = {
        "plain Parquet": None,
        "stream (AES-256-GCM segments)": {"format": "stream", "key_provider": provider},
        "Parquet Modular Encryption": {"format": "parquet", "key_provider": provider},
    }
    best = {k: (float("inf"), 0.0) for k in variants}
    for i in range(args.repeat):
        for n, (name, enc) in enumerate(variants.items()):
            out = work / f"out{i}_{n}"
            cfg = {"path": str(out)}
            if enc:
                cfg["encryption"] = dict(enc, audit_log=str(work / "audit.jsonl"))
            job = work / "job.yaml"
            job.write_text(json.dumps({
                "name": f"bench_enc_{i}_{n}",
                "source": {"reader": "file", "config": {"path": str(src)}},
                "target": {"writer": "parquet", "config": cfg},
                "state": {"dir": str(work / "state")},
            }))
            wall, rss, _ = timed([DATIVO, "run", str(job), "--no-progress"], cwd=work)
            if enc:
                v = subprocess.run([DATIVO, "verify", str(job)], cwd=work, capture_output=True, text=True)
                assert v.returncode == 0, v.stdout + v.stderr
                assert f"({args.rows} rows" in v.stdout or "verified:" in v.stdout, v.stdout
            else:
                got = duckdb.execute(f"SELECT count(*) FROM read_parquet('{out}/*.parquet')").fetchone()[0]
                assert got == args.rows, got
            shutil.rmtree(out)
            if wall < best[name][0]:
                best[name] = (wall, rss)
    base = best["plain Parquet"][0]
    print(f"{args.rows:,} rows, {arrow_mb:.0f} MB of Arrow data; best of {args.repeat} runs each\n")
    print(f"{'file reader → parquet writer':<32} {'wall s':>7} {'MB/s':>7} {'peak RSS MB':>12} {'vs plain':>9}")
    for name, (wall, rss) in best.items():
        print(f"{name:<32} {wall:>7.2f} {arrow_mb / wall:>7.0f} {rss:>12.0f} {wall / base:>8.3f}×")
    print("\nEncrypted outputs were checked with `dativo verify` (every byte authenticated, rows counted).")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
