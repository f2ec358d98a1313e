"""Exactly once under crashes: SIGKILL at random moments, SIGTERM, a reader failing mid-stream."""
import json
import random
import shutil
import signal
import time

import pytest

from conftest import parquet_stats, write_csvs, write_job

JOB = """name: long_job
source:
  reader: file
  config:
    path: data/*.csv
    batch_size: 2000
target:
  writer: parquet
  config:
    path: lake/out
checkpoint:
  rows: 10000
retry:
  attempts: 1
"""


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(dativo, tmp_path):
    total = write_csvs(tmp_path / "data", 40, 15000)
    # Small batches and checkpoints: hundreds of commit boundaries for the kills to land near.
    job = write_job(tmp_path / "job.yaml", JOB.replace("batch_size: 2000", "batch_size: 500")
                    .replace("rows: 10000", "rows: 1000"))
    expected = (total, total, sum(range(total)))

    # How long does an uninterrupted run take here? Kills land within a tenth of that, so
    # that each killed run makes only a little progress and many kills fit into one load.
    t0 = time.monotonic()
    dativo.run("run", job, "--no-progress", check=0)
    duration = time.monotonic() - t0
    assert parquet_stats(tmp_path / "lake/out") == expected

    def start_over():
        shutil.rmtree(tmp_path / "lake")
        shutil.rmtree(tmp_path / ".dativo")

    start_over()
    rng = random.Random(1234)
    kills = loads = 0
    while kills < 25:
        p = dativo.popen("run", job, "--no-progress")
        time.sleep(rng.uniform(0.002, max(duration / 10, 0.02)))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
        # After every kill: only whole, committed files are visible, without duplicates.
        count, distinct, _ = parquet_stats(tmp_path / "lake/out")
        assert count == distinct
        if p.returncode == 0:
            # This load finished between kills: it must be exact. Start another to kill more.
            assert parquet_stats(tmp_path / "lake/out") == expected, kills
            loads += 1
            start_over()
    for _ in range(5):
        p = dativo.run("run", job, "--no-progress")
        if p.returncode == 0:
            break
    assert p.returncode == 0, p.stderr
    assert parquet_stats(tmp_path / "lake/out") == expected, (kills, loads)
    # No uncommitted leftovers remain after the successful run.
    assert list((tmp_path / "lake/out/_dativo/staging").iterdir()) == []
    runs_out = json.loads(dativo.run("runs", job, "--json", "--limit", "100", check=0).stdout)
    assert any(r["status"] == "interrupted" for r in runs_out)
    assert runs_out[0]["status"] == "succeeded"


def test_sigterm_aborts_cleanly_with_nonzero_exit(dativo, tmp_path):
    total = write_csvs(tmp_path / "data", 40, 15000)
    job = write_job(tmp_path / "job.yaml", JOB.replace("batch_size: 2000", "batch_size: 500")
                    .replace("rows: 10000", "rows: 1000"))
    p = dativo.popen("run", job, "--no-progress")
    commits = tmp_path / "lake/out/_dativo/commits"
    deadline = time.monotonic() + 30
    while not (commits.exists() and any(commits.glob("*.json"))):
        assert p.poll() is None and time.monotonic() < deadline, "the run never committed"
        time.sleep(0.002)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (p.returncode, out, err)
    assert "cancelled" in out
    # What is visible is exactly what the committed state covers.
    count, distinct, _ = parquet_stats(tmp_path / "lake/out")
    state = json.loads(dativo.run("state", "show", job, check=0).stdout)["state"]
    covered = 15000 * len(state["files"]) + state.get("current", {"rows": 0})["rows"]
    assert 0 < count == distinct == covered < total
    assert list((tmp_path / "lake/out/_dativo/staging").iterdir()) == []
    runs = json.loads(dativo.run("runs", job, "--json", check=0).stdout)
    assert runs[0]["status"] == "cancelled"
    dativo.run("run", job, check=0)
    assert parquet_stats(tmp_path / "lake/out") == (total, total, sum(range(total)))


def test_reader_failing_midstream_keeps_earlier_commits(dativo, tmp_path):
    write_csvs(tmp_path / "data", 3, 5000)
    bad = tmp_path / "data/part-0002.csv"
    lines = bad.read_text().splitlines()
    lines[2500] = "not-a-number,x,1.0,2026-01-01"
    bad.write_text("\n".join(lines) + "\n")
    job = write_job(tmp_path / "job.yaml", JOB.replace("rows: 10000", "rows: 5000"))

    p = dativo.run("run", job, "--no-progress", check=4)
    assert "part-0002.csv" in p.stderr + p.stdout
    assert "failed" in p.stdout
    count, distinct, _ = parquet_stats(tmp_path / "lake/out")
    assert count == distinct == 10000  # the two good files, committed before the failure
    state = json.loads(dativo.run("state", "show", job, check=0).stdout)["state"]
    # The state covers exactly the 10,000 committed rows (file 1 may be "current" at its end).
    done = state["files"] + ([state["current"]["file"]] if "current" in state else [])
    assert done == ["data/part-0000.csv", "data/part-0001.csv"], state
    assert state.get("current", {"rows": 5000})["rows"] == 5000, state
    runs = json.loads(dativo.run("runs", job, "--json", check=0).stdout)
    assert runs[0]["status"] == "failed" and "part-0002.csv" in runs[0]["error"]
    assert runs[0]["rows"] == 10000

    # Fix the file: the next run loads exactly the rest.
    lines[2500] = "12499,name-12499,499.25,2026-01-12"  # line 2500 holds id 12499
    bad.write_text("\n".join(lines) + "\n")
    dativo.run("run", job, check=0)
    assert parquet_stats(tmp_path / "lake/out")[:3] == (15000, 15000, sum(range(15000)))


def test_state_reset_and_runs_table(dativo, tmp_path):
    write_csvs(tmp_path / "data", 1, 10)
    job = write_job(tmp_path / "job.yaml", JOB)
    dativo.run("run", job, check=0)
    p = dativo.run("runs", "long_job", check=0)
    assert "succeeded" in p.stdout and "10" in p.stdout
    p = dativo.run("state", "reset", job, check=0)
    assert "reset" in p.stdout
    p = dativo.run("state", "show", job, check=0)
    assert "no committed state" in p.stdout


def test_hive_partitioned_parquet(dativo, tmp_path):
    import pyarrow.dataset as ds
    total = write_csvs(tmp_path / "data", 4, 3000)
    job = write_job(tmp_path / "job.yaml", JOB.replace("    path: lake/out", "    path: lake/out\n    partition_by: [day]")
                    .replace("rows: 10000", "rows: 2500"))
    dativo.run("run", job, check=0)
    dirs = sorted(p.name for p in (tmp_path / "lake/out").iterdir() if p.is_dir() and p.name != "_dativo")
    assert len(dirs) == 28 and dirs[0] == "day=2026-01-01", dirs
    t = ds.dataset(tmp_path / "lake/out", format="parquet", partitioning="hive").to_table()
    assert t.num_rows == total and len(t["id"].unique()) == total
    files = str(tmp_path / "lake/out/*/*.parquet")
    import duckdb
    got = duckdb.execute(f"SELECT count(*), count(DISTINCT day), sum(id) FROM read_parquet('{files}', hive_partitioning = true)").fetchone()
    assert got == (total, 28, sum(range(total)))


@pytest.mark.parametrize("legacy", ["flat", "gcs_double_encoded"])
def test_a_commit_staged_under_an_older_name_is_still_published(dativo, tmp_path, legacy):
    """A commit made by an earlier build and killed before its files were published: that build
    staged `day=X/part.parquet` as `day=X__part.parquet.inprogress`, and on gs:// opendal 0.57
    stored it as `day%3DX__…` (its uploads encoded `=` twice). The next run rolls the commit
    forward from either name: every row once, nothing left in staging."""
    import pathlib
    import duckdb
    total = write_csvs(tmp_path / "data", 2, 500)
    j = write_job(tmp_path / "job.yaml", """name: legacy_staging
source:
  reader: file
  config: {path: "data/*.csv"}
target:
  writer: parquet
  config: {path: lake, partition_by: [day]}
""")
    dativo.run("run", j, "--no-progress", check=0)
    lake = tmp_path / "lake"
    files = sorted(p.relative_to(lake).as_posix() for p in lake.glob("day=*/*.parquet"))
    assert len(files) >= 2, files
    # Undo the publication of every file of the last commit, as a kill before it would have left.
    manifest = json.loads(sorted((lake / "_dativo/commits").glob("*.json"))[-1].read_text())
    staging = lake / "_dativo/staging"
    undone = []
    for f in manifest["files"]:
        rel = f["path"]
        name = rel.replace("/", "__")
        if legacy == "gcs_double_encoded":
            name = name.replace("=", "%3D")
        (lake / rel).rename(staging / f"{name}.inprogress")
        undone.append(rel)
    assert undone and not any((lake / r).exists() for r in undone)
    p = dativo.run("run", j, "--no-progress", check=0)
    assert "a committed file is missing" not in p.stdout + p.stderr
    assert all((lake / r).exists() for r in undone), [r for r in undone if not (lake / r).exists()]
    assert [x for x in staging.iterdir()] == []
    got = duckdb.execute(f"SELECT count(*), count(DISTINCT id), sum(id) FROM read_parquet('{lake}/day=*/*.parquet')").fetchone()
    assert got == (total, total, sum(range(total))), got
    assert sorted(pathlib.Path(x).relative_to(lake).as_posix() for x in lake.glob("day=*/*.parquet")) == files
