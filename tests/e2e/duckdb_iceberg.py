"""Run a query through DuckDB's own Iceberg extension (1.5.5, from PyPI, offline) and print
the rows as JSON. DuckDB's Iceberg reader is a second, independent reader beside pyiceberg;
its wheels pin duckdb 1.5.5, so it lives in its own directory (.venv/duckdb-iceberg, installed
by scripts/test) and runs in a subprocess, leaving the tests' own duckdb alone.

    python duckdb_iceberg.py "SELECT count(*) FROM iceberg_scan('{metadata}')" METADATA_JSON
"""
import glob
import json
import os
import sys

import duckdb


def extension(name):
    import importlib
    pkg = importlib.import_module(f"duckdb_extension_{name}")
    base = os.path.dirname(pkg.__file__)
    found = glob.glob(os.path.join(base, "**", f"{name}.duckdb_extension"), recursive=True)
    if not found:
        raise SystemExit(f"no {name}.duckdb_extension under {base}")
    return found[0]


def main():
    sql, metadata = sys.argv[1], sys.argv[2]
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    for name in ("avro", "iceberg"):
        con.execute(f"LOAD '{extension(name)}'")
    rows = con.execute(sql.replace("{metadata}", metadata)).fetchall()
    print(json.dumps([list(r) for r in rows], default=str))


if __name__ == "__main__":
    main()
