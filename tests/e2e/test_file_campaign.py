"""The `file` reader's test-campaign defects, each checked end to end with the real binary and
verified with tools dativo did not write (duckdb, pyarrow, Python's csv module):

* CSV timestamps with second precision must land in Parquet as TIMESTAMP, not BIGINT;
* JSON Lines integers beyond int64 must load exactly (decimal(38,0)) or fail naming the field;
* a CSV quoted field that never closes must fail the run (exit 4) naming file and line, with
  nothing of that file committed, while RFC 4180 literal quotes still load;
* `.tsv`/`.tab` files are tab-separated unless a delimiter is configured.
"""
import csv
import datetime as dt
import decimal
import shutil

import duckdb
import pyarrow.parquet as pq

from conftest import ROOT, write_job


def job(source_config: str, extra: str = "") -> str:
    """A job reading `source_config` (indented YAML lines) into Parquet under `out/`."""
    return f"""name: campaign
source:
  reader: file
  config:
{source_config}
target:
  writer: parquet
  config:
    path: out
checkpoint:
  rows: 100000
{extra}"""


def out_files(tmp_path):
    return sorted(str(p) for p in (tmp_path / "out").glob("**/*.parquet"))


def query(tmp_path, select: str):
    """Run `select` against the Parquet output as the table `t`; the rows, or [] if no files."""
    files = out_files(tmp_path)
    if not files:
        return []
    con = duckdb.connect()
    con.execute(f"CREATE VIEW t AS SELECT * FROM read_parquet({files!r})")
    return con.execute(select).fetchall()


# 1. Second-precision timestamps --------------------------------------------------------------

def test_quickstart_ordered_at_is_a_parquet_timestamp(dativo, tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    dativo.run("run", "examples/jobs/quickstart.yaml", check=0)
    files = sorted(str(p) for p in (tmp_path / "lake/quickstart/orders").glob("*.parquet"))
    assert files
    # The Parquet column carries the TIMESTAMP logical type (not a bare INT64).
    for f in files:
        col = pq.ParquetFile(f).schema.column(
            pq.ParquetFile(f).schema.names.index("ordered_at"))
        assert col.physical_type == "INT64"
        assert "Timestamp" in str(col.logical_type), (f, col.logical_type)
    con = duckdb.connect()
    types = {r[0] for r in con.execute(
        f"SELECT typeof(ordered_at) FROM read_parquet({files!r})").fetchall()}
    assert types == {"TIMESTAMP"}, types
    got = dict(con.execute(
        f"SELECT order_id, ordered_at FROM read_parquet({files!r})").fetchall())
    want = {}
    for f in sorted((tmp_path / "examples/data/orders").glob("*.csv")):
        with open(f, newline="") as fh:
            for r in csv.DictReader(fh):
                want[int(r["order_id"])] = dt.datetime.fromisoformat(r["ordered_at"])
    assert len(want) == 12000
    assert got == want


def test_declared_second_timestamps_are_parquet_timestamps(dativo, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.csv").write_text(
        "id,ts\n1,2026-01-06T09:42:36\n2,1969-12-31T23:59:59\n3,\n")
    (tmp_path / "data/b.jsonl").write_text(
        '{"id": 1, "ts": 1767692556}\n{"id": 2, "ts": -1}\n{"id": 3, "ts": null}\n')
    want = {1: dt.datetime(2026, 1, 6, 9, 42, 36), 2: dt.datetime(1969, 12, 31, 23, 59, 59),
            3: None}
    for path in ["data/a.csv", "data/b.jsonl"]:
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        shutil.rmtree(tmp_path / ".dativo", ignore_errors=True)
        write_job(tmp_path / "job.yaml", job(f"""    path: {path}
    schema:
      - {{name: id, type: int64}}
      - {{name: ts, type: "timestamp(s)"}}"""))
        dativo.run("run", "job.yaml", "--state-dir", tmp_path / f"state-{path[-3:]}", check=0)
        assert query(tmp_path, "SELECT DISTINCT typeof(ts) FROM t WHERE ts IS NOT NULL") == [
            ("TIMESTAMP",)], path
        assert dict(query(tmp_path, "SELECT id, ts FROM t")) == want, path


# 2. JSON Lines integers beyond int64 -----------------------------------------------------------

WIDE = [1, 9223372036854775807, 9223372036854775808, 9223372036854775809,
        18446744073709551615, 18446744073709551616, -9223372036854775809,
        12345678901234567890123456789012345678]


def test_jsonl_integers_beyond_int64_load_exactly(dativo, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data/a.jsonl").write_text(
        "".join(f'{{"id": {i}, "big": {v}}}\n' for i, v in enumerate(WIDE)))
    write_job(tmp_path / "job.yaml", job("    path: data/*.jsonl"))
    dativo.run("run", "job.yaml", check=0)
    assert query(tmp_path, "SELECT DISTINCT typeof(big) FROM t") == [("DECIMAL(38,0)",)]
    got = dict(query(tmp_path, "SELECT id, big::VARCHAR FROM t"))
    assert got == {i: str(v) for i, v in enumerate(WIDE)}
    table = pq.ParquetDataset(out_files(tmp_path)).read()
    assert str(table.schema.field("big").type) == "decimal128(38, 0)"
    assert table.column("big").to_pylist() == [decimal.Decimal(v) for v in WIDE]


def test_jsonl_integers_that_no_inferred_type_holds_fail_naming_field_and_file(dativo,
                                                                               tmp_path):
    (tmp_path / "data").mkdir()
    # A wide integer next to fractional numbers: float64 would round it.
    (tmp_path / "data/mixed.jsonl").write_text(
        '{"id": 1, "v": 0.5}\n{"id": 2, "v": 9223372036854775809}\n')
    write_job(tmp_path / "job.yaml", job("    path: data/mixed.jsonl"))
    p = dativo.run("run", "job.yaml", check=4)
    msg = p.stdout + p.stderr
    assert "mixed.jsonl" in msg and "`v`" in msg, msg
    assert "9223372036854775809" in msg, msg
    assert out_files(tmp_path) == [] or query(tmp_path, "SELECT count(*) FROM t") == [(0,)]

    # A wide integer after the inference rows, in a column inferred as int64: an error naming
    # the field and the file, not a rounded or wrapped value.
    (tmp_path / "data/late.jsonl").write_text(
        '{"id": 1, "v": 5}\n{"id": 2, "v": 9223372036854775808}\n')
    write_job(tmp_path / "job.yaml", job("    path: data/late.jsonl\n    infer_rows: 1"))
    p = dativo.run("run", "job.yaml", check=4)
    msg = p.stdout + p.stderr
    assert "late.jsonl" in msg and "'v'" in msg, msg


# 3. Unterminated CSV quotes ----------------------------------------------------------------------

def test_unterminated_quote_fails_and_commits_nothing_of_the_file(dativo, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.csv").write_text("id,name\n1,x\n2,y\n")
    (d / "b.csv").write_text('id,name\n3,ok\n4,"abc\n5,def\n6,ghi\n')
    write_job(tmp_path / "job.yaml", job("    path: data/*.csv", "").replace(
        "rows: 100000", "rows: 1"))
    p = dativo.run("run", "job.yaml", check=4)
    msg = p.stdout + p.stderr
    assert "b.csv" in msg and "line 3" in msg and "quote" in msg, msg
    ids = sorted(r[0] for r in query(tmp_path, "SELECT id FROM t"))
    # Whatever was committed before the error is whole rows of good data; the merged row never.
    assert set(ids) <= {1, 2, 3}, ids
    assert query(tmp_path, "SELECT count(*) FROM t WHERE name LIKE '%def%'") in ([], [(0,)])

    # Fixed, the next run loads the rest exactly once.
    (d / "b.csv").write_text('id,name\n3,ok\n4,"abc"\n5,def\n6,ghi\n')
    dativo.run("run", "job.yaml", check=0)
    assert sorted(query(tmp_path, "SELECT id, name FROM t")) == [
        (1, "x"), (2, "y"), (3, "ok"), (4, "abc"), (5, "def"), (6, "ghi")]


def test_single_bad_file_exit_4_and_nothing_committed(dativo, tmp_path):
    (tmp_path / "bad.csv").write_text('id,name\n1,"abc\n2,def\n3,ghi')
    write_job(tmp_path / "job.yaml", job("    path: bad.csv"))
    p = dativo.run("run", "job.yaml", check=4)
    msg = p.stdout + p.stderr
    assert "bad.csv" in msg and "line 2" in msg, msg
    assert query(tmp_path, "SELECT count(*) FROM t") in ([], [(0,)])


def test_literal_and_escaped_quotes_still_load(dativo, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    # Quotes inside unquoted fields are literal (RFC 4180 parsers, Python's csv module).
    (d / "rfc.csv").write_text(
        'id,height,note\n'
        '1,5\'10",he said "hi"\n'
        '2,a "b,"multi\nline, ""quoted"""\n'
        '3,,""""\n')
    write_job(tmp_path / "job.yaml", job(
        "    path: data/rfc.csv\n"
        "    schema: [{name: id, type: int64}, {name: height, type: string},"
        " {name: note, type: string}]"))
    dativo.run("run", "job.yaml", check=0)
    with open(d / "rfc.csv", newline="") as fh:
        want = {int(r["id"]): (r["height"] or None, r["note"]) for r in csv.DictReader(fh)}
    assert want[2] == ('a "b', 'multi\nline, "quoted"')
    got = {i: (h, n) for i, h, n in query(tmp_path, "SELECT id, height, note FROM t")}
    assert got == want

    # A backslash escape, configured: \" stays inside the field.
    shutil.rmtree(tmp_path / "out")
    (d / "esc.csv").write_text('id,note\n1,"a \\"quoted\\" word"\n2,"x, \\\\"\n')
    write_job(tmp_path / "job.yaml", job(
        "    path: data/esc.csv\n    csv: {escape: \"\\\\\"}"))
    dativo.run("run", "job.yaml", "--state-dir", tmp_path / "state2", check=0)
    with open(d / "esc.csv", newline="") as fh:
        want = {int(r["id"]): r["note"] for r in csv.DictReader(fh, escapechar="\\",
                                                                doublequote=False)}
    assert dict(query(tmp_path, "SELECT id, note FROM t")) == want == {
        1: 'a "quoted" word', 2: "x, \\"}


# 4. TSV ------------------------------------------------------------------------------------------

def test_tsv_and_tab_files_are_tab_separated(dativo, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.tsv").write_text("id\tname\tamount\n1\tSmith, John\t3.5\n2\tDoe, Jane\t4.25\n")
    (d / "b.tab").write_text("id\tname\tamount\n3\tRoe, Rick\t1\n")
    for path, want in [("data/a.tsv", {1: ("Smith, John", 3.5), 2: ("Doe, Jane", 4.25)}),
                       ("data/b.tab", {3: ("Roe, Rick", 1.0)})]:
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        write_job(tmp_path / "job.yaml", job(f"    path: {path}"))
        dativo.run("run", "job.yaml", "--state-dir", tmp_path / f"state-{path[-3:]}", check=0)
        got = {i: (n, float(a)) for i, n, a in query(tmp_path, "SELECT id, name, amount FROM t")}
        assert got == want, path

    # A configured delimiter wins over the extension.
    (d / "c.tsv").write_text("id;name\n7;x\ty\n")
    shutil.rmtree(tmp_path / "out", ignore_errors=True)
    write_job(tmp_path / "job.yaml", job("    path: data/c.tsv\n    csv: {delimiter: \";\"}"))
    dativo.run("run", "job.yaml", "--state-dir", tmp_path / "state-c", check=0)
    assert query(tmp_path, "SELECT id, name FROM t") == [(7, "x\ty")]
