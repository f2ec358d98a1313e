#!/usr/bin/env python3
"""Python and Flight plugins against a built-in reader, same data, same run: a Parquet file of
--rows rows is read by the built-in `file` reader, by a Python reader class in-process
(bench/plugins/py_table.py, which loads it with pyarrow and yields its batches), and by a
pyarrow.flight server serving the same batches; all write Parquet. Best of --repeat runs each;
targets: Python ≤ 1.05× the built-in's time, Flight ≤ 1.25×."""
import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import duckdb

from pg_to_parquet import DATIVO, ROOT, timed

PY = sys.executable


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-py-"))
    src = work / "source.parquet"
    duckdb.execute(f"""COPY (SELECT range AS id, 'name-' || range AS name, range * 0.5 AS amount,
        TIMESTAMP '2026-01-01' + INTERVAL (range) SECOND AS ts, range % 7 = 0 AS flag
        FROM range({args.rows})) TO '{src}' (FORMAT parquet, COMPRESSION snappy)""")
    arrow_mb = duckdb.execute(f"SELECT sum(total_uncompressed_size) FROM parquet_metadata('{src}')").fetchone()[0] / 1e6
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "bench/plugins"), "VIRTUAL_ENV": sys.prefix}
    server = subprocess.Popen([PY, str(ROOT / "bench/plugins/py_table.py"), str(port)], env=env)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    variants = {
        "built-in file reader": ("file", {"path": str(src)}),
        "Python, in-memory table": ({"type": "custom", "implementation": "py_table.TableReader"},
                                    {"path": str(src), "mode": "memory"}),
        "Python, streaming the file": ({"type": "custom", "implementation": "py_table.TableReader"},
                                       {"path": str(src), "mode": "stream"}),
        "Flight, in-memory table": ({"type": "custom", "implementation": f"grpc://127.0.0.1:{port}"},
                                    {"path": str(src), "mode": "memory"}),
        "Flight, streaming the file": ({"type": "custom", "implementation": f"grpc://127.0.0.1:{port}"},
                                       {"path": str(src), "mode": "stream"}),
    }
    best = {k: (float("inf"), 0.0) for k in variants}
    try:
        for i in range(args.repeat):
            for n, (name, (reader, config)) in enumerate(variants.items()):
                out = work / f"out{i}_{n}"
                job = work / "job.yaml"
                job.write_text(json.dumps({
                    "name": f"bench_py_{i}_{n}",
                    "source": {"reader": reader, "config": config},
                    "target": {"writer": "parquet", "config": {"path": str(out)}},
                    "state": {"dir": str(work / "state")},
                }))
                wall, rss, _ = timed([DATIVO, "run", str(job), "--no-progress"], cwd=work, env=env)
                got = duckdb.execute(f"SELECT count(*), sum(id) FROM read_parquet('{out}/*.parquet')").fetchone()
                assert got == (args.rows, args.rows * (args.rows - 1) // 2), (name, got)
                shutil.rmtree(out)
                if wall < best[name][0]:
                    best[name] = (wall, rss)
    finally:
        server.kill()
    base = best["built-in file reader"][0]
    print(f"{args.rows:,} rows, {arrow_mb:.0f} MB of Arrow data; best of {args.repeat} runs each\n")
    print(f"{'reader → parquet writer':<34} {'wall s':>7} {'MB/s':>7} {'rows/s':>11} {'peak RSS MB':>12} {'vs built-in':>12}")
    for name, (wall, rss) in best.items():
        print(f"{name:<34} {wall:>7.2f} {arrow_mb / wall:>7.0f} {args.rows / wall:>11,.0f} {rss:>12.0f} {wall / base:>11.3f}×")
    print("\nEvery output was checked (row count and sum of ids). MB/s = uncompressed Arrow MB / wall s.")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
