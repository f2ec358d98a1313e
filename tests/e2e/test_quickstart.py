"""The README's first command: the quickstart job on the bundled data, verified independently."""
import shutil

import duckdb
import pytest
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from conftest import ROOT


def test_quickstart_output_equals_input(dativo, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    p = dativo.run("run", "examples/jobs/quickstart.yaml", check=0)
    assert "succeeded" in p.stdout and "12,000" in p.stdout, p.stdout

    src = pa.concat_tables(pacsv.read_csv(f) for f in
                           sorted((tmp_path / "examples/data/orders").glob("*.csv")))
    out = pq.ParquetDataset(tmp_path / "lake/quickstart/orders").read()
    assert out.num_rows == src.num_rows == 12000
    for col in ["order_id", "customer_id", "amount", "quantity"]:
        assert pc.sum(out[col]).as_py() == pytest.approx(pc.sum(src[col]).as_py(), rel=1e-12), col
    assert sorted(out.column_names) == sorted(src.column_names)

    files = [str(f) for f in (tmp_path / "lake/quickstart/orders").glob("*.parquet")]
    count, total = duckdb.execute(
        f"SELECT count(*), sum(amount) FROM read_parquet({files!r})").fetchone()
    assert count == 12000
    assert abs(float(total) - pc.sum(src["amount"]).as_py()) < 1e-6

    # A second run reads nothing new; a new file is picked up by the third.
    p = dativo.run("run", "examples/jobs/quickstart.yaml", check=0)
    assert "no new data" in p.stdout
    extra = tmp_path / "examples/data/orders/orders-2026-04.csv"
    extra.write_text("order_id,customer_id,region,amount,quantity,paid,ordered_at\n"
                     "12001,7,eu-west,10.50,1,true,2026-04-01T00:00:00\n")
    p = dativo.run("run", "examples/jobs/quickstart.yaml", check=0)
    assert "1 committed" in p.stdout, p.stdout
    assert "  query    duckdb" in p.stdout, p.stdout
    # A run of one row in well under a second shows no rate (it would be noise).
    assert "speed" not in p.stdout, p.stdout
    out = pq.ParquetDataset(tmp_path / "lake/quickstart/orders").read()
    assert out.num_rows == 12001

    # A run that fails before committing anything offers no query: there is nothing new.
    bad = tmp_path / "examples/data/orders/orders-2026-05.csv"
    bad.write_text("order_id,customer_id,region,amount,quantity,paid,ordered_at\n"
                   "not-a-number,7,eu-west,10.50,1,true,2026-05-01T00:00:00\n")
    p = dativo.run("run", "examples/jobs/quickstart.yaml", check=None)
    assert p.returncode != 0 and "failed" in p.stdout, (p.returncode, p.stdout, p.stderr)
    assert "query" not in p.stdout, p.stdout


def test_validate_check_and_plugins(dativo):
    job = ROOT / "examples/jobs/quickstart.yaml"
    p = dativo.run("validate", job, check=0)
    assert "ok:" in p.stdout
    shutil.copytree(ROOT / "examples", dativo.cwd / "examples")
    p = dativo.run("check", "examples/jobs/quickstart.yaml", check=0)
    assert "order_id" in p.stdout and "Int64" in p.stdout, p.stdout
    p = dativo.run("plugins", "list", check=0)
    assert "file" in p.stdout and "parquet" in p.stdout
    p = dativo.run("--help", check=0)
    assert "Examples:" in p.stdout and "Exit codes:" in p.stdout
    for sub in ["run", "validate", "check", "runs", "decrypt", "verify", "serve"]:
        p = dativo.run(sub, "--help", check=0)
        assert "Example" in p.stdout, sub


def test_every_example_job_validates(dativo):
    env = {"PG_URL": "postgres://u@127.0.0.1/db", "MYSQL_URL": "mysql://u@127.0.0.1/db",
           "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b", "AZURE_STORAGE_KEY": "c2VjcmV0",
           "ADBC_PG": "/x/libadbc_driver_postgresql.so", "ADBC_SQLITE": "/x/libadbc_driver_sqlite.so",
           # The example jobs name ../plugins/…: outside their directory.
           "DATIVO_ALLOW_PLUGIN_PATH": str(ROOT / "examples/plugins")}
    jobs = sorted((ROOT / "examples/jobs").glob("*.yaml"))
    assert len(jobs) >= 5
    p = dativo.run("validate", *jobs, env=env, check=0)
    assert p.stdout.count("ok:") == len(jobs)
