#!/usr/bin/env python3
"""The cost of the native plugin boundary: PostgreSQL → Parquet with dativo's built-in
`postgres` reader, against the very same reader compiled into a plugin library
(bench/plugins/passthrough) and loaded through dativo_plugin.h — and the same for the
`parquet` writer. Runs alternate (built-in, plugin, …) in the same process tree on the same
table; the table reports the best of --repeat runs of each and the ratio (target: ≤ 1.03)."""
import argparse
import json
import pathlib
import shutil
import subprocess
import tempfile

from pg_to_parquet import DATIVO, ROOT, URL, check, ensure_table, timed

LIB = ROOT / "target/release/libdativo_bench_passthrough.so"


def build_plugin():
    d = ROOT / "bench/plugins/passthrough"
    shutil.copy(ROOT / "Cargo.lock", d / "Cargo.lock")  # same versions → reuse compiled crates
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=d, check=True,
                   env={**__import__("os").environ, "CARGO_TARGET_DIR": str(ROOT / "target")})


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    build_plugin()
    table, sums, count, size = ensure_table(args.rows)
    print(f"table {table}: {count:,} rows, {size / 1e6:.0f} MB on disk; best of {args.repeat} runs each\n",
          flush=True)
    work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-plugin-"))
    plugin = lambda name: {"type": "custom", "implementation": f"{LIB}#{name}"}
    variants = {
        "built-in reader → built-in writer": ("postgres", "parquet"),
        "plugin reader → built-in writer": (plugin("postgres"), "parquet"),
        "built-in reader → plugin writer": ("postgres", plugin("parquet")),
    }
    best = {k: (float("inf"), 0.0) for k in variants}
    for i in range(args.repeat):
        for name, (reader, writer) in variants.items():
            out = work / f"out{i}-{len(name)}-{abs(hash(name)) % 1000}"
            job = work / "job.yaml"
            job.write_text(json.dumps({
                "name": f"bench_plugin_{i}_{abs(hash(name)) % 1000}",
                "source": {"reader": reader, "config": {"url": URL, "table": table}},
                "target": {"writer": writer, "config": {"path": str(out)}},
                "state": {"dir": str(work / "state")},
            }))
            wall, rss, _ = timed([DATIVO, "run", str(job), "--no-progress"], cwd=work)
            check(out, sums, count)
            shutil.rmtree(out)
            if wall < best[name][0]:
                best[name] = (wall, rss)
    base = best["built-in reader → built-in writer"][0]
    print(f"{'variant':<36} {'wall s':>7} {'MB/s':>7} {'peak RSS MB':>12} {'vs built-in':>12}")
    for name, (wall, rss) in best.items():
        print(f"{name:<36} {wall:>7.2f} {size / 1e6 / wall:>7.1f} {rss:>12.0f} {wall / base:>11.3f}×")
    print("\nEvery output was checked: same row count and column sums as the source.")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
