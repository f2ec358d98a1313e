"""The iceberg writer's `mode: overwrite` and `mode: merge`, checked row by row.

Every check compares the table's FULL rows with the PostgreSQL source, read twice: by pyiceberg
(through the job's SQLite catalog) and by DuckDB's own Iceberg extension (from the table's
metadata file). Both readers apply position deletes, and a malformed commit (a delete file
listed as data, a duplicate key, a missing row) shows up in at least one of them.

Rows are compared in a canonical Arrow form (ids, text, decimals as text with two places,
dates as days, timestamps as microseconds since the epoch) built on both sides, sorted by id.
"""
import io
import json
import random
import signal
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from conftest import PG_URL, duckdb_iceberg_query, write_job
from lakecheck import MERGE_COLS, Lake, arrow_canon, diff, make_merge_source, pg_canon, sql

# The merge tests' source table and its columns, by kind (how both sides are made comparable).


# ----------------------------------------------------------------------------- helpers

def catalog(tmp_path):
    return Lake(tmp_path).catalog()


def load(tmp_path, ident):
    return Lake(tmp_path).load(ident)


def read_pyiceberg(tmp_path, ident, cols):
    return Lake(tmp_path).read_pyiceberg(ident, cols)


def read_duckdb(tmp_path, ident, cols):
    return Lake(tmp_path).read_duckdb(ident, cols)


def assert_lake(tmp_path, ident, cols, want, what=""):
    """Both readers see exactly `want` (a canonical table), without duplicate keys."""
    Lake(tmp_path).assert_rows(ident, cols, want, what)


def drop_merge_source(pg, name):
    sql(pg, f"DROP VIEW IF EXISTS {name}_v")
    sql(pg, f"DROP TABLE IF EXISTS {name}, {name}_tomb, {name}_snap")
    sql(pg, f"DROP FUNCTION IF EXISTS {name}_del()")


def live(pg, name, cols=MERGE_COLS, extra=""):
    return pg_canon(pg, cols, f"FROM {name} WHERE deleted_at IS NULL {extra}")


def merge_job(tmp_path, name, source, ident, extra_source="", extra_target="", checkpoint=""):
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: postgres
  config:
    url: {PG_URL}
    table: {source}
    cursor: updated_at
    batch_size: 10000
{extra_source}
target:
  writer: iceberg
  config:
    table: {ident}
    mode: merge
    primary_key: [id]
    delete_when: "deleted_at IS NOT NULL"
{extra_target}
{checkpoint}
retry:
  attempts: 1
""")


def random_round(pg, name, rng, max_id, n_ins, n_upd, n_hard, n_soft, n_undel, n_reborn=50):
    """Random inserts (new ids above max_id), updates, hard deletes, soft deletes, un-deletes
    and hard-deleted ids inserted again (some deleted in this very round); every change gets a
    newer updated_at (clock_timestamp()). Returns the new max id."""
    new = list(range(max_id + 1, max_id + 1 + n_ins))
    sql(pg, f"""INSERT INTO {name} (id, k, v, d, updated_at)
        SELECT i, 'new-' || i || '-' || %s, (i %% 100000) / 100.0, date '2024-01-01' + (i %% 500)::int,
               clock_timestamp()
        FROM unnest(%s::bigint[]) i""", rng.random(), new)
    max_id += n_ins
    pick = lambda n: rng.sample(range(1, max_id + 1), n)  # noqa: E731 (absent ids are no-ops)
    sql(pg, f"""UPDATE {name} SET k = CASE WHEN id %% 5 = 0 THEN NULL ELSE 'upd-' || id || '-' || %s END,
        v = round((random() * 20000 - 10000)::numeric, 2), d = d + 1, updated_at = clock_timestamp()
        WHERE id = ANY(%s)""", rng.randrange(10**6), pick(n_upd))
    sql(pg, f"DELETE FROM {name} WHERE id = ANY(%s)", pick(n_hard))
    sql(pg, f"""UPDATE {name} SET deleted_at = clock_timestamp(), updated_at = clock_timestamp()
        WHERE id = ANY(%s) AND deleted_at IS NULL""", pick(n_soft))
    if n_undel:
        sql(pg, f"""UPDATE {name} SET deleted_at = NULL, k = 'back-' || id, updated_at = clock_timestamp()
            WHERE id IN (SELECT id FROM {name} WHERE deleted_at IS NOT NULL ORDER BY random() LIMIT %s)""",
            n_undel)
    if n_reborn:
        sql(pg, f"""INSERT INTO {name} (id, k, v, d, updated_at)
            SELECT id, 'reborn-' || id, 1.5, date '2026-02-02', clock_timestamp()
            FROM (SELECT DISTINCT id FROM {name}_tomb t
                  WHERE NOT EXISTS (SELECT FROM {name} l WHERE l.id = t.id) ORDER BY id DESC LIMIT %s) r""",
            n_reborn)
    return max_id


def summary(snap):
    s = snap.summary
    return s.operation.value, dict(s.additional_properties)


def table_bytes(t):
    """Bytes of the live data and delete files of the table's current snapshot."""
    total = 0
    for task in t.scan().plan_files():
        total += task.file.file_size_in_bytes
        total += sum(d.file_size_in_bytes for d in task.delete_files)
    return total


@pytest.fixture
def src_name(pg):
    name = f"t_{uuid.uuid4().hex[:10]}"
    yield name
    drop_merge_source(pg, name)


# ----------------------------------------------------------------------------- 1. merge rounds

def test_merge_rounds_of_upserts_hard_and_soft_deletes(dativo, tmp_path, pg, src_name):
    make_merge_source(pg, src_name, 1_000_000)
    job = merge_job(tmp_path, "merge_rounds", f"{src_name}_v", "lake.rounds")
    p = dativo.run("run", job, "--no-progress", check=0)
    assert_lake(tmp_path, "lake.rounds", MERGE_COLS, live(pg, src_name), "initial load")

    rng = random.Random(20261205)
    max_id = 1_000_000
    for rnd in range(1, 11):
        max_id = random_round(pg, src_name, rng, max_id, n_ins=1500, n_upd=2500, n_hard=800,
                              n_soft=800, n_undel=100 if rnd > 1 else 0)
        p = dativo.run("run", job, "--no-progress", check=0)
        assert_lake(tmp_path, "lake.rounds", MERGE_COLS, live(pg, src_name), f"round {rnd}")
        t = load(tmp_path, "lake.rounds")
        op, props = summary(t.current_snapshot())
        assert op in ("overwrite", "delete"), (rnd, op, props)
        for k in ("dativo.merge.rows-read", "dativo.merge.bytes-read", "dativo.merge.files-read"):
            assert k in props, (k, props)
        read, total = int(props["dativo.merge.bytes-read"]), table_bytes(t)
        assert 0 < read < total / 2, f"round {rnd}: merge read {read} bytes of a {total}-byte table"
        print(f"round {rnd}: {op}, merge read {read} of {total} bytes, "
              f"{props['dativo.merge.files-read']} files, {props['dativo.merge.rows-read']} rows")
        assert int(props["dativo.merge.files-read"]) >= 1
    # A run with nothing new changes nothing.
    snap = load(tmp_path, "lake.rounds").current_snapshot().snapshot_id
    dativo.run("run", job, "--no-progress", check=0)
    assert load(tmp_path, "lake.rounds").current_snapshot().snapshot_id == snap, p.stdout


def test_merge_op_column_and_delete_when_variants(dativo, tmp_path, pg, table):
    """`_dativo_op` 'D'/'delete', a boolean `delete_when` column and `col = 'value'`; a key
    written several times in one run keeps its last row; `_dativo_op` is not written."""
    sql(pg, f"""CREATE TABLE {table} (seq bigint PRIMARY KEY, id bigint, status text, n bigint,
        gone boolean, _dativo_op text)""")
    sql(pg, f"""INSERT INTO {table} SELECT i, i, 'ok', i * 10, false, 'U'
        FROM generate_series(1, 5000) i""")
    jobs = {  # name: (columns read besides seq, id, status, n; delete_when)
        "op": (["_dativo_op"], ""),
        "flag": (["gone"], "    delete_when: gone"),
        "status": (["_dativo_op"], "    delete_when: \"status = 'deleted'\""),
    }
    paths = {}
    for name, (extra, dw) in jobs.items():
        paths[name] = write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: postgres
  config:
    url: {PG_URL}
    table: {table}
    cursor: seq
    columns: [seq, id, status, n, {", ".join(extra)}]
target:
  writer: iceberg
  config:
    table: lake.{name}
    mode: merge
    primary_key: [id]
{dw}
""")
        dativo.run("run", paths[name], "--no-progress", check=0)
    # One run: ids 1..100 written twice (the last wins), 101..200 deleted by `_dativo_op`,
    # 201..300 flagged `gone`, 301..400 given status 'deleted', 400..450 deleted and written
    # again later in the same run, 5001..5100 new.
    sql(pg, f"""
        INSERT INTO {table} SELECT 10000 + i, i, 'first', -1, false, 'U' FROM generate_series(1, 100) i;
        INSERT INTO {table} SELECT 20000 + i, i, 'second', i * 3, false, 'U' FROM generate_series(1, 100) i;
        INSERT INTO {table} SELECT 30000 + i, i, NULL, NULL, false, 'delete' FROM generate_series(101, 200) i;
        INSERT INTO {table} SELECT 40000 + i, i, 'x', 0, true, 'U' FROM generate_series(201, 300) i;
        INSERT INTO {table} SELECT 50000 + i, i, 'deleted', 0, false, 'U' FROM generate_series(301, 400) i;
        INSERT INTO {table} SELECT 60000 + i, i, NULL, NULL, false, 'D' FROM generate_series(400, 450) i;
        INSERT INTO {table} SELECT 70000 + i, i, 'again', 7, false, 'U' FROM generate_series(400, 450) i;
        INSERT INTO {table} SELECT 80000 + i, i, 'new', 1, false, 'U' FROM generate_series(5001, 5100) i""")
    for name in jobs:
        dativo.run("run", paths[name], "--no-progress", check=0)
    # The latest source row of every key; what each job counts as a deletion.
    latest = f"FROM (SELECT DISTINCT ON (id) * FROM {table} ORDER BY id, seq DESC) l"
    is_op_delete = "_dativo_op IN ('D', 'delete')"
    want = {
        "op": f"{latest} WHERE NOT {is_op_delete}",
        "flag": f"{latest} WHERE NOT gone",  # this job does not read `_dativo_op`
        "status": f"{latest} WHERE NOT {is_op_delete} AND status IS DISTINCT FROM 'deleted'",
    }
    for name in jobs:
        cols = [("id", "int"), ("seq", "int"), ("status", "text"), ("n", "int")]
        if name == "flag":
            cols.append(("gone", "bool"))  # the delete_when column is written like any other
        assert_lake(tmp_path, f"lake.{name}", cols, pg_canon(pg, cols, want[name]), name)
        assert "_dativo_op" not in [f.name for f in load(tmp_path, f"lake.{name}").schema().fields]


# ----------------------------------------------------------------------------- 2. overwrite

OW_COLS = [("id", "int"), ("region", "text"), ("amount", "dec"), ("note", "text"), ("ts", "ts")]


def make_ow_source(pg, name, rows):
    sql(pg, f"""CREATE TABLE {name} (id bigint PRIMARY KEY, region text NOT NULL,
        amount numeric(10,2), note text, ts timestamptz)""")
    sql(pg, f"""INSERT INTO {name} SELECT i, (ARRAY['eu','us','apac','latam'])[1 + i % 4],
        (i % 100000) / 100.0, CASE WHEN i % 7 = 0 THEN NULL ELSE 'n' || i END,
        timestamptz '2026-01-01 00:00+00' + i * interval '1 second'
        FROM generate_series(1, {rows}) i""")


def change_ow_source(pg, name, rng, max_id, n):
    """Delete, update and insert about `n` rows each; returns the new max id."""
    sql(pg, f"DELETE FROM {name} WHERE id = ANY(%s)", rng.sample(range(1, max_id + 1), n))
    sql(pg, f"UPDATE {name} SET amount = amount + 1, note = 'u' || %s WHERE id = ANY(%s)",
        rng.randrange(10**6), rng.sample(range(1, max_id + 1), n))
    sql(pg, f"""INSERT INTO {name} SELECT i, (ARRAY['eu','us','apac','latam'])[1 + i %% 4], i / 100.0,
        'new', now() FROM generate_series(%s, %s) i""", max_id + 1, max_id + n)
    return max_id + n


def ow_job(tmp_path, name, ident, source, extra_target=""):
    src = f"    query: \"{source}\"" if source.lstrip().upper().startswith("SELECT") else f"    table: {source}"
    return write_job(tmp_path / f"{name}.yaml", f"""name: {name}
source:
  reader: postgres
  config:
    url: {PG_URL}
{src}
    batch_size: 20000
target:
  writer: iceberg
  config:
    table: {ident}
{extra_target}
retry:
  attempts: 1
""")


def test_full_refresh_overwrites_table(dativo, tmp_path, pg, table):
    make_ow_source(pg, table, 100_000)
    # No `mode` and no cursor: the reader runs a full refresh, the writer overwrites.
    job = ow_job(tmp_path, "ow_full", "lake.ow", table)
    rng = random.Random(11)
    max_id = 100_000
    for run in range(3):
        if run:
            max_id = change_ow_source(pg, table, rng, max_id, 3000)
        dativo.run("run", job, "--no-progress", check=0)
        assert_lake(tmp_path, "lake.ow", OW_COLS, pg_canon(pg, OW_COLS, f"FROM {table}"), f"run {run}")
        op, props = summary(load(tmp_path, "lake.ow").current_snapshot())
        # The first run creates the table: an append is as good as an overwrite then.
        assert op == "overwrite" or (run == 0 and op == "append"), (run, op, props)
    # Everything deleted from the source: the table becomes empty (not left as it was).
    sql(pg, f"DELETE FROM {table}")
    dativo.run("run", job, "--no-progress", check=0)
    assert_lake(tmp_path, "lake.ow", OW_COLS, pg_canon(pg, OW_COLS, f"FROM {table}"), "empty source")


def test_overwrite_partitions_replaces_only_written_partitions(dativo, tmp_path, pg, table):
    make_ow_source(pg, table, 40_000)
    extra = "    mode: overwrite\n    overwrite: partitions\n    partition_by: [region]"
    all_regions = f"SELECT * FROM {table}"
    dativo.run("run", ow_job(tmp_path, "ow_parts", "lake.parts", all_regions, extra), check=0)
    assert_lake(tmp_path, "lake.parts", OW_COLS, pg_canon(pg, OW_COLS, f"FROM {table}"), "initial")
    assert [f.name for f in load(tmp_path, "lake.parts").spec().fields] == ["region"]
    before = read_pyiceberg(tmp_path, "lake.parts", OW_COLS)

    # Change rows in every region; delete every `us` row; a run selecting eu and us only.
    change_ow_source(pg, table, random.Random(5), 40_000, 2000)
    sql(pg, f"DELETE FROM {table} WHERE region = 'us'")
    sql(pg, f"INSERT INTO {table} VALUES (900001, 'eu', 1.23, 'eu-new', now())")
    some = f"SELECT * FROM {table} WHERE region IN ('eu', 'us')"
    dativo.run("run", ow_job(tmp_path, "ow_parts", "lake.parts", some, extra), check=0)
    op, props = summary(load(tmp_path, "lake.parts").current_snapshot())
    assert op == "overwrite", (op, props)
    # eu: replaced by the source's eu rows; apac/latam: the old rows; us: the run wrote no row
    # into it, so it keeps its old rows (only partitions the run wrote into are replaced).
    new_eu = pg_canon(pg, OW_COLS, f"FROM {table} WHERE region = 'eu'")
    kept = before.filter(pc.field("region") != "eu")
    want = pa.concat_tables([new_eu, kept]).sort_by("id").combine_chunks()
    assert_lake(tmp_path, "lake.parts", OW_COLS, want, "overwrite: partitions")


# ----------------------------------------------------------------------------- 3. kill loops

class Killer:
    """Starts `dativo run job` and SIGKILLs it after a random 0.05..2 s — within the time the
    longest uninterrupted run took (so that most runs are killed, at moments spread over the run;
    half of them in its last fifth, where the final commit happens)."""

    def __init__(self, dativo, job, rng):
        self.dativo, self.job, self.rng = dativo, job, rng
        self.longest = None  # the longest run that finished (a resumed run is shorter)

    def run(self):
        """(killed, exit code, output)."""
        t0 = time.monotonic()
        p = self.dativo.popen("run", self.job, "--no-progress")
        hi = min(2.0, max(0.2, self.longest or 2.0))
        # Half of the kills land late in the run, around its (final) commit.
        lo = 0.05 if self.rng.random() < 0.5 else max(0.05, 0.8 * hi)
        deadline = t0 + self.rng.uniform(lo, hi)
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        out, err = p.communicate(timeout=120)
        if not killed:
            self.longest = max(self.longest or 0, time.monotonic() - t0)
        return killed, p.returncode, out + err


def committed_cursor(tmp_path, ident):
    """How far the committed state says the source was read: the cursor value up to which
    every change is in the table (None: no table, no snapshot or no progress yet), and whether a run was under way. Mid-run
    the postgres reader's state is `{"cursor": <run start>, "plan": {"ranges": [{"after":
    <last value delivered>, …}]}}`; at the end of a run `{"cursor": <new cursor>}`."""
    cat = catalog(tmp_path)
    if not cat.table_exists(ident):
        return None, False
    snap = cat.load_table(ident).current_snapshot()
    if snap is None:
        return None, False
    text = snap.summary.additional_properties.get("dativo.state")
    state = json.loads(text) if text else {}
    plan = state.get("plan")
    if plan:
        assert len(plan["ranges"]) == 1, plan  # the job reads with one connection
        after = plan["ranges"][0].get("after")
        if after is not None:
            return after, True
    return state.get("cursor"), False


def disjoint_round(pg, name, rng, max_id, n_ins, n_upd, n_hard, n_soft):
    """Like random_round, but every id is touched at most once (so that the state after a
    partial run is: changes up to the committed cursor applied, later ones not)."""
    ids = rng.sample(range(1, max_id + 1), n_upd + n_hard + n_soft)
    upd, hard, soft = ids[:n_upd], ids[n_upd:n_upd + n_hard], ids[n_upd + n_hard:]
    sql(pg, f"DROP TABLE IF EXISTS {name}_snap")
    sql(pg, f"CREATE TABLE {name}_snap AS SELECT * FROM {name}")
    sql(pg, f"""UPDATE {name} SET k = 'kill-' || id || '-' || %s, v = v + 1, updated_at = clock_timestamp()
        WHERE id = ANY(%s)""", rng.randrange(10**6), upd)
    sql(pg, f"DELETE FROM {name} WHERE id = ANY(%s)", hard)
    sql(pg, f"""UPDATE {name} SET deleted_at = clock_timestamp(), updated_at = clock_timestamp()
        WHERE id = ANY(%s) AND deleted_at IS NULL""", soft)
    sql(pg, f"""INSERT INTO {name} (id, k, v, d, updated_at)
        SELECT i, 'ins-' || i, i / 100.0, date '2025-01-01' + (i %% 300)::int, clock_timestamp()
        FROM generate_series(%s, %s) i""", max_id + 1, max_id + n_ins)
    return max_id + n_ins


def expected_at(pg, name, cursor):
    """The table as a merge job that committed up to `cursor` must leave it: every change at or
    below the cursor applied, the later ones not (their rows as in `name`_snap)."""
    if cursor is None:
        return pg_canon(pg, MERGE_COLS, f"FROM {name}_snap WHERE deleted_at IS NULL")
    return pg_canon(pg, MERGE_COLS, f"""FROM (
        SELECT * FROM {name} WHERE deleted_at IS NULL AND updated_at <= %(c)s::timestamptz
        UNION ALL
        SELECT * FROM {name}_snap s WHERE deleted_at IS NULL AND id IN (
            SELECT id FROM {name}_v WHERE updated_at > %(c)s::timestamptz)) e""".replace(
        "%(c)s", "'" + cursor.replace("'", "''") + "'"))


def test_sigkill_during_merge_runs(dativo, tmp_path, pg, src_name):
    """Kills during merge runs that commit every 50,000 rows: after each kill the table holds
    exactly the changes up to the committed position (in cursor order) and none after it."""
    make_merge_source(pg, src_name, 300_000)
    sql(pg, f"CREATE TABLE {src_name}_snap AS SELECT * FROM {src_name} WHERE false")
    job = merge_job(tmp_path, "merge_kill", f"{src_name}_v", "lake.mk",
                    checkpoint="checkpoint:\n  rows: 50000")
    rng = random.Random(99)
    killer = Killer(dativo, job, rng)
    max_id = 300_000
    kills = partial = rounds = 0
    # Up to 14 rounds: a run that finishes before its kill moment (a quiet machine) takes none.
    while kills < 12 and rounds < 14:
        if rounds:
            # 150,000 changes, every id at most once (see expected_at): three commits a run.
            max_id = disjoint_round(pg, src_name, rng, max_id, n_ins=20000, n_upd=110000,
                                    n_hard=10000, n_soft=10000)
        rounds += 1
        # Up to three kills into the round's run, then a run that is left to finish.
        for attempt in range(3):
            killed, rc, out = killer.run()
            if rc == 0:
                break
            assert killed and rc == -signal.SIGKILL, (rc, out)
            kills += 1
            cursor, mid_run = committed_cursor(tmp_path, "lake.mk")
            if cursor is None and not catalog(tmp_path).table_exists("lake.mk"):
                continue  # killed before the table was created
            partial += mid_run
            assert_lake(tmp_path, "lake.mk", MERGE_COLS, expected_at(pg, src_name, cursor),
                        f"round {rounds}, kill {attempt}: committed up to {cursor} (mid-run: {mid_run})")
        dativo.run("run", job, "--no-progress", check=0)
        assert_lake(tmp_path, "lake.mk", MERGE_COLS, live(pg, src_name), f"round {rounds}: finished")
    assert kills >= 12, (kills, rounds)
    print(f"merge kill loop: {kills} kills ({partial} after a mid-run commit), {rounds} rounds")


def test_sigkill_during_overwrite_runs(dativo, tmp_path, pg, table):
    make_ow_source(pg, table, 300_000)
    job = ow_job(tmp_path, "ow_kill", "lake.owk", table, "    mode: overwrite")
    dativo.run("run", job, "--no-progress", check=0)
    old = pg_canon(pg, OW_COLS, f"FROM {table}")
    assert_lake(tmp_path, "lake.owk", OW_COLS, old, "first load")
    rng = random.Random(3)
    killer = Killer(dativo, job, rng)
    max_id = 300_000
    kills = kept_old = 0
    for attempt in range(40):
        if kills >= 8:
            break
        max_id = change_ow_source(pg, table, rng, max_id, 5000)
        new = pg_canon(pg, OW_COLS, f"FROM {table}")
        killed, rc, out = killer.run()
        got = [read_pyiceberg(tmp_path, "lake.owk", OW_COLS), read_duckdb(tmp_path, "lake.owk", OW_COLS)]
        if rc == 0:
            for g in got:
                assert g.equals(new), f"attempt {attempt}: completed: {diff(new, g)}"
        else:
            assert killed and rc == -signal.SIGKILL, (rc, out)
            kills += 1
            for g in got:
                assert g.equals(old) or g.equals(new), \
                    f"attempt {attempt}: killed: neither old ({diff(old, g)}) nor new ({diff(new, g)})"
            assert got[0].equals(got[1]), "the two readers disagree"
            kept_old += got[0].equals(old)
        old = got[0]
    assert kills >= 8
    dativo.run("run", job, "--no-progress", check=0)
    assert_lake(tmp_path, "lake.owk", OW_COLS, pg_canon(pg, OW_COLS, f"FROM {table}"), "final run")
    print(f"overwrite kill loop: {kills} kills, {kept_old} left the old rows")


# ----------------------------------------------------------------------------- 4. concurrency

def test_two_merge_jobs_into_one_table_concurrently(dativo, tmp_path, pg, src_name):
    make_merge_source(pg, src_name, 200_000)
    # Disjoint key sets: even ids and odd ids, so both jobs' keys span the whole id range and
    # the files each commits overlap the other's keys by bounds.
    # Checkpoints every 20,000 rows: the two jobs' commits interleave.
    jobs = [merge_job(tmp_path, f"conc_{n}", f"{src_name}_v", "lake.conc",
                      extra_source=f"    where: \"id % 2 = {r}\"", checkpoint="checkpoint:\n  rows: 20000")
            for n, r in (("even", 0), ("odd", 1))]
    conflicts = 0
    rng = random.Random(42)
    max_id = 200_000
    for rnd in range(5):
        if rnd:
            max_id = random_round(pg, src_name, rng, max_id, n_ins=5000, n_upd=40000, n_hard=2000,
                                  n_soft=2000, n_undel=200)
        procs = [dativo.popen("run", j, "--no-progress") for j in jobs]
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, f"round {rnd}: {out}{err}"
            conflicts += err.count("commit conflict")
        assert_lake(tmp_path, "lake.conc", MERGE_COLS, live(pg, src_name), f"round {rnd}")
    jobs_seen = {s.summary.additional_properties.get("dativo.job")
                 for s in load(tmp_path, "lake.conc").snapshots()}
    assert {"conc_even", "conc_odd"} <= jobs_seen, jobs_seen
    print(f"two merge jobs: {conflicts} commit conflicts retried")


# ----------------------------------------------------------------------------- 5. bad input

def test_merge_without_a_key_is_a_config_error(dativo, tmp_path, pg, table):
    sql(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, v text)")
    sql(pg, f"INSERT INTO {table} SELECT i, 'v' || i FROM generate_series(1, 100) i")
    sql(pg, f"CREATE VIEW {table}_nopk AS SELECT * FROM {table}")
    try:
        job = write_job(tmp_path / "nokey.yaml", f"""name: nokey
source:
  reader: postgres
  config: {{url: "{PG_URL}", table: {table}_nopk}}
target:
  writer: iceberg
  config: {{table: lake.nokey, mode: merge}}
""")
        p = dativo.run("run", job)
        assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
        # A run reports its failure on stdout (the run summary), as the other run errors do.
        assert "primary_key" in p.stdout + p.stderr, (p.stdout, p.stderr)
        cat = catalog(tmp_path)
        assert not cat.table_exists("lake.nokey") or cat.load_table("lake.nokey").current_snapshot() is None
    finally:
        sql(pg, f"DROP VIEW IF EXISTS {table}_nopk")


def test_merge_null_key_fails_and_commits_nothing(dativo, tmp_path, pg, table):
    cols = [("id", "int"), ("seq", "int"), ("v", "text")]
    sql(pg, f"CREATE TABLE {table} (seq bigint PRIMARY KEY, id bigint, v text)")
    sql(pg, f"INSERT INTO {table} SELECT i, i, 'v' || i FROM generate_series(1, 20000) i")
    job = write_job(tmp_path / "nullkey.yaml", f"""name: nullkey
source:
  reader: postgres
  config: {{url: "{PG_URL}", table: {table}, cursor: seq, batch_size: 1000}}
target:
  writer: iceberg
  config: {{table: lake.nullkey, mode: merge, primary_key: [id]}}
checkpoint:
  rows: 100000
""")
    dativo.run("run", job, "--no-progress", check=0)
    before = pg_canon(pg, cols, f"FROM {table}")
    assert_lake(tmp_path, "lake.nullkey", cols, before, "first run")
    snap = load(tmp_path, "lake.nullkey").current_snapshot().snapshot_id
    # Updates and inserts, with one NULL key in the middle of the run.
    sql(pg, f"INSERT INTO {table} SELECT 20000 + i, i, 'upd' || i FROM generate_series(1, 5000) i")
    sql(pg, f"INSERT INTO {table} VALUES (25001, NULL, 'null key')")
    sql(pg, f"INSERT INTO {table} SELECT 25001 + i, 30000 + i, 'new' FROM generate_series(1, 5000) i")
    p = dativo.run("run", job, "--no-progress")
    assert p.returncode == 4, (p.returncode, p.stdout, p.stderr)  # a data error
    msg = p.stdout + p.stderr
    assert "`id`" in msg and "null" in msg.lower(), msg
    assert load(tmp_path, "lake.nullkey").current_snapshot().snapshot_id == snap
    assert_lake(tmp_path, "lake.nullkey", cols, before, "after the failed run")


def test_merge_on_parquet_writer_points_to_iceberg(dativo, tmp_path, pg, table):
    sql(pg, f"CREATE TABLE {table} (id bigint PRIMARY KEY, v text)")
    job = write_job(tmp_path / "pq.yaml", f"""name: pqmerge
source:
  reader: postgres
  config: {{url: "{PG_URL}", table: {table}}}
target:
  writer: parquet
  config: {{path: lake/out, mode: merge}}
""")
    for cmd in ("validate", "run"):
        p = dativo.run(cmd, job)
        assert p.returncode == 2, (cmd, p.returncode, p.stdout, p.stderr)
        assert "iceberg" in p.stderr.lower() and "merge" in p.stderr, (cmd, p.stderr)


def test_merge_by_a_uuid_key_keeps_uuid_and_not_null_types(dativo, tmp_path, pg, table):
    """A PostgreSQL `uuid` primary key becomes an Iceberg `uuid` identifier field, NOT NULL
    columns required fields; merging by the uuid key replaces rows (both readers)."""
    sql(pg, f"CREATE TABLE {table} (id uuid PRIMARY KEY, v text NOT NULL, n int)")
    sql(pg, f"INSERT INTO {table} SELECT gen_random_uuid(), 'v' || i, i FROM generate_series(1, 500) i")
    job = write_job(tmp_path / "uuid.yaml", f"""name: uuidmerge
source:
  reader: postgres
  config: {{url: "{PG_URL}", table: {table}}}
target:
  writer: iceberg
  config: {{table: lake.uuids, mode: merge}}
""")
    dativo.run("run", job, "--no-progress", check=0)
    sql(pg, f"UPDATE {table} SET v = 'upd' WHERE n % 7 = 0")
    sql(pg, f"INSERT INTO {table} SELECT gen_random_uuid(), 'new', 1000 + i FROM generate_series(1, 20) i")
    dativo.run("run", job, "--no-progress", check=0)
    t = load(tmp_path, "lake.uuids")
    types = {f.name: (str(f.field_type), f.required) for f in t.schema().fields}
    assert types == {"id": ("uuid", True), "v": ("string", True), "n": ("int", False)}, types
    assert [t.schema().find_field(i).name for i in t.schema().identifier_field_ids] == ["id"]
    want = sorted((str(i), v, n) for i, v, n in sql(pg, f"SELECT id, v, n FROM {table}"))
    a = t.scan().to_arrow()
    got_py = sorted(zip((str(u) for u in a.column("id").to_pylist()),
                        a.column("v").to_pylist(), a.column("n").to_pylist()))
    assert got_py == want
    got_duck = sorted(tuple(r) for r in duckdb_iceberg_query(
        "SELECT id::varchar, v, n FROM iceberg_scan('{metadata}')", t.metadata_location))
    assert got_duck == want
