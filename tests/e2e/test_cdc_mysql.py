"""Change data capture from MariaDB's binlog (`reader: mysql`, `mode: cdc`) into Iceberg, on a
private MariaDB with `log_bin` and `binlog_format=ROW` started by this module (the shared
instance writes no binlog).

1. A workload of inserts, updates (some of large LONGTEXT values, some of the primary key)
   and deletes on three tables runs for 60 s (DATIVO_TEST_CDC_SECONDS) while three CDC jobs
   follow the binlog; the jobs are SIGKILLed five times at random moments (the first during
   the initial snapshot) and their binlog connections are killed from the server twice. When
   the workload stops and `--once` runs catch up, every table in the lake equals its source,
   column by column, for pyiceberg and DuckDB, with no duplicate key.
2. A changelog (`mode: append`): each change exactly once, in source order per key.
3. Every column type the snapshot reader reads arrives from the binlog as the snapshot read it.
4. A column added while streaming ends the run; the next run brings it.
5. Mistakes: no binlog, statement-based binlog, a table without a key.
"""
import datetime
import decimal
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pymysql
import pytest

from conftest import MY_URL, free_port, write_job
from lakecheck import Lake, kill_followers, start_follower, dativo

WORKLOAD_SECONDS = float(os.environ.get("DATIVO_TEST_CDC_SECONDS", "60"))

COLS = [("id", "int"), ("name", "text"), ("amount", "dec"), ("day", "date"), ("ts", "ts"),
        ("dt", "ts"), ("flag", "bool"), ("qty", "int"), ("status", "text"), ("big", "text")]


class MariaDB:
    """A private MariaDB writing a row-based binlog into files named `binlog.NNNNNN`."""

    def __init__(self, server_id, extra=()):
        self.dir = d = pathlib.Path(tempfile.mkdtemp(prefix="dativo-mycdc-"))
        self.port = port = free_port()
        as_mysql = [] if os.geteuid() != 0 else ["runuser", "-u", "mysql", "--"]
        if as_mysql:
            shutil.chown(d, "mysql")
        subprocess.run(as_mysql + ["mariadb-install-db", f"--datadir={d}/data",
                                   "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        self.server = subprocess.Popen(as_mysql + [
            "mariadbd", "--no-defaults", f"--datadir={d}/data", f"--port={port}", "--bind-address=127.0.0.1",
            f"--socket={d}/sock", f"--pid-file={d}/pid", f"--log-bin={d}/binlog", "--binlog-format=ROW",
            f"--server-id={server_id}", "--innodb-buffer-pool-size=64M", "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0", "--skip-name-resolve", "--max-binlog-size=4M", *extra],
            stdout=subprocess.DEVNULL, stderr=open(d / "log", "w"))
        deadline = time.monotonic() + 60
        while True:
            try:
                c = pymysql.connect(unix_socket=str(d / "sock"), user="root", password="", autocommit=True)
                break
            except pymysql.err.OperationalError:
                assert self.server.poll() is None, (d / "log").read_text()[-3000:]
                assert time.monotonic() < deadline, "MariaDB did not start"
                time.sleep(0.3)
        with c.cursor() as cur:
            # Not in the binlog: a replica's own transactions in the primary's GTID domain
            # would break strict GTID replication.
            cur.execute("SET SESSION sql_log_bin = 0")
            cur.execute("CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
            cur.execute("GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        c.close()
        self.url = f"mysql://root@127.0.0.1:{port}/cdc"
        self.params = dict(host="127.0.0.1", port=port, user="root", password="", database="cdc",
                           autocommit=True)

    def admin(self):
        return pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", autocommit=True)

    def stop(self):
        self.server.terminate()
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def binlog_mariadb():
    """A private MariaDB writing a row-based binlog: (url, pymysql params)."""
    m = MariaDB(1)
    with m.admin().cursor() as cur:
        cur.execute("CREATE DATABASE cdc")
    yield m.url, m.params
    m.stop()


def connect(params):
    c = pymysql.connect(**params)
    with c.cursor() as cur:
        cur.execute("SET time_zone = '+00:00'")
    return c


def q(c, sql, args=None):
    with c.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def create(c, name, rows):
    q(c, f"""CREATE TABLE {name} (id bigint PRIMARY KEY, name varchar(100), amount decimal(12,2), day date,
             ts timestamp(6) NULL, dt datetime(3), flag bool, qty int unsigned,
             status enum('new','paid','shipped'), big longtext)""")
    q(c, f"""INSERT INTO {name} SELECT seq, concat('n', seq), (seq % 1000) / 4, date '2024-01-01' + interval seq % 300 day,
             timestamp '2024-01-01 00:00:00' + interval seq minute, timestamp '2024-06-01 12:00:00.125' + interval seq second,
             seq % 2 = 0, 4000000000 - seq, elt(1 + seq % 3, 'new', 'paid', 'shipped'),
             CASE WHEN seq % 50 = 0 THEN repeat(md5(seq), 300) END
             FROM seq_1_to_{rows}""")


def canon(c, table):
    """The source table, canonical like lakecheck.arrow_canon makes the lake's."""
    rows = q(c, f"SELECT {', '.join(n for n, _ in COLS)} FROM {table} ORDER BY id")
    epoch = datetime.datetime(1970, 1, 1)
    out = {n: [] for n, _ in COLS}
    for r in rows:
        for (n, k), v in zip(COLS, r):
            if v is None:
                out[n].append(None)
            elif k == "dec":
                out[n].append(str(v))
            elif k == "date":
                out[n].append((v - datetime.date(1970, 1, 1)).days)
            elif k == "ts":
                out[n].append((v - epoch) // datetime.timedelta(microseconds=1))
            elif k == "bool":
                out[n].append("true" if v else "false")
            else:
                out[n].append(v)
    types = {"int": pa.int64(), "text": pa.string(), "dec": pa.string(), "date": pa.int32(),
             "ts": pa.int64(), "bool": pa.string()}
    return pa.table({n: pa.array(out[n], types[k]) for n, k in COLS}).combine_chunks()


def check_mirror(c, lake, table):
    lake.assert_rows(f"lake.{table}", COLS, canon(c, table), table,
                     ignore=("_dativo_lsn", "_dativo_commit_time"))


def job(path, name, url, table, extra="", target_mode="merge", partitions=2):
    return write_job(path / f"{name}.yaml", f"""name: {name}
source:
  reader: mysql
  config:
    url: {url}
    table: {table}
    mode: cdc
    partitions: {partitions}
    batch_size: 2000
{extra}
target:
  writer: iceberg
  config:
    table: lake.{table}
    mode: {target_mode}
checkpoint: {{rows: 3000, seconds: 1}}
retry: {{attempts: 6, backoff: 500ms}}
""")


def workload(params, tables, stop, seed):
    rnd = random.Random(seed)
    c = connect(params)
    nxt = {t: 100_000 for t in tables}
    while not stop.is_set():
        t = rnd.choice(tables)
        k = rnd.random()
        try:
            if k < 0.35:
                n = rnd.randint(1, 30)
                q(c, f"""INSERT INTO {t} SELECT seq, concat('ins', seq), 1.25, '2025-01-01', now(6), now(3), true,
                         seq * 1000, 'new', CASE WHEN seq % 3 = 0 THEN repeat('y', 5000) END
                         FROM seq_{nxt[t]}_to_{nxt[t] + n - 1}""")
                nxt[t] += n
            elif k < 0.6:
                lo = rnd.randint(1, 5000)
                q(c, f"UPDATE {t} SET amount = amount + 1, name = concat(name, '+'), status = 'paid' "
                     f"WHERE id BETWEEN {lo} AND {lo + 20}")
            elif k < 0.68:
                lo = rnd.randint(1, 5000)
                q(c, f"UPDATE {t} SET big = repeat('z', 3000 + {lo}) WHERE id = {lo}")
            elif k < 0.72:
                # The key changes: the old row goes, the new one lands.
                lo = rnd.randint(1, 5000)
                q(c, f"UPDATE IGNORE {t} SET id = id + 1000000 WHERE id = {lo}")
            elif k < 0.85:
                lo = rnd.randint(1, 5000)
                q(c, f"DELETE FROM {t} WHERE id BETWEEN {lo} AND {lo + 5}")
            else:
                lo = rnd.randint(1, 4000)
                q(c, "BEGIN")
                q(c, f"UPDATE {t} SET flag = NOT flag WHERE id BETWEEN {lo} AND {lo + 3000}")
                q(c, f"DELETE FROM {t} WHERE id = {lo + 7}")
                q(c, "COMMIT")
        except pymysql.err.MySQLError:
            try:
                q(c, "ROLLBACK")
            except pymysql.err.MySQLError:
                c = connect(params)
        time.sleep(rnd.uniform(0, 0.01))
    c.close()



def kill_binlog_connections(c):
    ids = [r[0] for r in q(c, "SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND LIKE 'Binlog Dump%'")]
    for i in ids:
        try:
            q(c, f"KILL {i}")
        except pymysql.err.MySQLError:
            pass
    return len(ids)


def test_mirror_three_tables_through_kills_and_dropped_connections(tmp_path, binlog_mariadb):
    url, params = binlog_mariadb
    c = connect(params)
    tables = ["orders", "customers", "events"]
    for i, t in enumerate(tables):
        create(c, t, [200_000, 30_000, 40_000][i])
    jobs = [job(tmp_path, f"cdc_{t}", url, t) for t in tables]
    stop = threading.Event()
    w = threading.Thread(target=workload, args=(params, tables, stop, 7))
    w.start()
    try:
        procs = kill_followers(tmp_path, jobs, WORKLOAD_SECONDS, lambda: kill_binlog_connections(c))
    finally:
        stop.set()
        w.join()
    for j, p in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0, (tmp_path / f"{j.stem}.log").read_text()[-3000:]
    lake = Lake(tmp_path)
    for t, j in zip(tables, jobs):
        dativo(tmp_path, "run", j, "--once", "--no-progress")
        check_mirror(c, lake, t)
    # The binlog rotated (4 MB files) while the jobs followed it.
    assert len(q(c, "SHOW BINARY LOGS")) > 2


def test_changelog_holds_each_change_once_in_order(tmp_path, binlog_mariadb):
    url, params = binlog_mariadb
    c = connect(params)
    create(c, "log_src", 2_000)
    j = job(tmp_path, "cdc_log", url, "log_src", target_mode="append", partitions=1)
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    for r in range(6):
        # MySQL logs no change for a row an UPDATE leaves as it was: every value is new.
        q(c, f"UPDATE log_src SET amount = {1000 + r} WHERE id % 7 = {r}")
        q(c, f"DELETE FROM log_src WHERE id % 97 = {r}")
        q(c, f"INSERT INTO log_src (id, name) SELECT seq, 'new' FROM seq_{5000 + r * 10}_to_{5009 + r * 10}")
        p = start_follower(tmp_path, j)
        time.sleep(random.uniform(0.2, 0.8))
        p.send_signal(signal.SIGKILL)
        p.wait()
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    # The stream measures the binlog written after its position (`dativo_cdc_behind_bytes`).
    st = json.loads(dativo(tmp_path, "state", "show", j).stdout)["state"]["cdc"]
    total = sum(int(r[1]) for r in q(c, "SHOW BINARY LOGS"))
    assert 0 <= st["behind_bytes"] <= total, (st, total)
    t = Lake(tmp_path).load("lake.log_src").scan().to_arrow()
    changes = t.filter(pc.not_equal(t["_dativo_op"], "R"))
    want = []
    alive = set(range(1, 2001))
    for r in range(6):
        upd = sorted(k for k in alive if k % 7 == r)
        dele = sorted(k for k in alive if k % 97 == r)
        want += [("U", k, 1000 + r) for k in upd] + [("D", k, None) for k in dele]
        want += [("I", k, None) for k in range(5000 + r * 10, 5010 + r * 10)]
        alive -= set(dele)
        alive |= set(range(5000 + r * 10, 5010 + r * 10))
    assert changes.num_rows == len(want), (changes.num_rows, len(want))
    # Per key, the changes in source order: sorted by position they are exactly the expected sequence.
    got = sorted(zip(changes["_dativo_lsn"].to_pylist(), range(changes.num_rows), changes["_dativo_op"].to_pylist(),
                     changes["id"].to_pylist(), changes["amount"].to_pylist()))
    per_key = {}
    for _, _, op, k, amount in got:
        per_key.setdefault(k, []).append((op, None if op != "U" else int(amount)))
    want_key = {}
    for op, k, amount in want:
        want_key.setdefault(k, []).append((op, amount if op == "U" else None))
    assert per_key == want_key
    assert t.num_rows - changes.num_rows == 2_000


def test_every_type_streams_as_the_snapshot_reads_it(tmp_path, binlog_mariadb):
    """Rows 1..500 come from the initial snapshot, rows 1001..1500 with the same values from the
    binlog: each pair is equal in every column, and equal to the source."""
    import pyarrow.parquet as pq
    url, params = binlog_mariadb
    c = connect(params)
    q(c, """CREATE TABLE typed (id int PRIMARY KEY, ti tinyint, tu tinyint unsigned, si smallint,
        su smallint unsigned, mi mediumint, mu mediumint unsigned, i int, iu int unsigned, bi bigint,
        bu bigint unsigned, f float, d double, dc decimal(20,6), dn decimal(5,0), vc varchar(20), ch char(4),
        tx text, bl blob, vb varbinary(8), dt date, dtt datetime(6), tsp timestamp(3) NULL, tm time(2),
        yr year, bt bit(10), en enum('a','b','c'), st set('x','y','z'), js json,
        l1 varchar(20) CHARACTER SET latin1) DEFAULT CHARSET = utf8mb4""")
    fill = """INSERT INTO typed SELECT seq + {off}, -128 + seq % 256, seq % 256, -32768 + seq * 60, seq * 120,
        -8388608 + seq * 30000, seq * 30000, -2147483648 + seq * 8000000, 4294967295 - seq, -9223372036854775807 + seq,
        18446744073709551615 - seq, seq / 3, seq / 7, seq * 1000.123456, seq, concat('héllo ', seq), 'abcd',
        repeat('t', seq), unhex('00ff10'), unhex(hex(seq)), date '2026-01-01' + interval seq day,
        timestamp '2026-01-01 00:00:00.123456' + interval seq hour, timestamp '2026-01-01 00:00:00.5' + interval seq minute,
        sec_to_time(seq * 61.25), 1901 + seq % 200, seq % 1024, elt(1 + seq % 3, 'a', 'b', 'c'),
        elt(1 + seq % 4, '', 'x', 'x,z', 'x,y,z'), json_object('k', seq, 's', 'v'),
        concat('€ é ', seq)
        FROM (SELECT CAST(seq AS SIGNED) AS seq FROM seq_1_to_500) s"""
    q(c, fill.format(off=0))
    q(c, "INSERT INTO typed (id) VALUES (0)")
    j = write_job(tmp_path / "typed.yaml", f"""name: typed
source:
  reader: mysql
  config: {{url: "{url}", table: typed, mode: cdc, batch_size: 300}}
target:
  writer: parquet
  config: {{path: lake, mode: append}}
""")
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    q(c, fill.format(off=1000))
    q(c, "UPDATE typed SET vc = 'was null' WHERE id = 0")
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    t = pq.ParquetDataset(tmp_path / "lake").read()
    rows = {(r["id"], r["_dativo_op"]): r for r in t.to_pylist()}
    assert sum(1 for k in rows if k[1] == "R") == 501 and sum(1 for k in rows if k[1] == "I") == 500
    assert rows[(0, "U")]["vc"] == "was null" and rows[(0, "U")]["ti"] is None
    data_cols = [n for n in t.column_names if not n.startswith("_dativo") and n != "id"]
    for i in range(1, 501):
        a, b = rows[(i, "R")], rows[(1000 + i, "I")]
        diff = {n: (a[n], b[n]) for n in data_cols if a[n] != b[n]}
        assert not diff, (i, diff)
    # And the snapshot equals the source (spot checks of the types that need conversions).
    src = q(c, "SELECT id, tu, iu, bu, dc, tsp, en, st, bt, yr, vc, l1 FROM typed WHERE id BETWEEN 1 AND 500 ORDER BY id")
    for sid, tu, iu, bu, dc, tsp, en, st, bt, yr, vc, l1 in src:
        r = rows[(1000 + sid, "I")]
        assert (r["tu"], r["iu"], r["en"], r["st"], r["yr"], r["vc"], r["l1"]) == (tu, iu, en, st, yr, vc, l1), (sid, r)
        assert decimal.Decimal(r["bu"]) == bu and decimal.Decimal(r["dc"]) == dc, (sid, r)
        assert r["tsp"].replace(tzinfo=None) == tsp, (sid, r["tsp"], tsp)
        assert r["bt"] == int.from_bytes(bt, "big"), (sid, r["bt"], bt)


def test_a_new_column_arrives(tmp_path, binlog_mariadb):
    url, params = binlog_mariadb
    c = connect(params)
    q(c, "CREATE TABLE grow (id int PRIMARY KEY, a varchar(10))")
    q(c, "INSERT INTO grow VALUES (1, 'x'), (2, 'y')")
    j = job(tmp_path, "cdc_grow", url, "grow", partitions=1)
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    q(c, "INSERT INTO grow VALUES (3, 'z')")
    q(c, "ALTER TABLE grow ADD COLUMN b int")
    q(c, "INSERT INTO grow VALUES (4, 'w', 40)")
    q(c, "UPDATE grow SET b = 10 WHERE id = 1")
    q(c, "DELETE FROM grow WHERE id = 2")
    # The first run ends at the new column; the second reads it.
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    got = Lake(tmp_path).load("lake.grow").scan().to_arrow().sort_by("id")
    assert got.select(["id", "a", "b"]).to_pylist() == [
        {"id": 1, "a": "x", "b": 10}, {"id": 3, "a": "z", "b": None}, {"id": 4, "a": "w", "b": 40}]


def test_truncate_empties_the_mirror(tmp_path, binlog_mariadb):
    url, params = binlog_mariadb
    c = connect(params)
    create(c, "trunc_src", 2_000)
    q(c, "CREATE TABLE trunc_other (id int PRIMARY KEY)")
    q(c, "INSERT INTO trunc_other VALUES (1)")
    j = job(tmp_path, "cdc_trunc", url, "trunc_src")
    lake = Lake(tmp_path)
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    # Changes before, the truncation, rows after it; another table's truncation is not ours.
    q(c, "UPDATE trunc_src SET name = 'before' WHERE id <= 10")
    q(c, "TRUNCATE TABLE cdc.`trunc_src`")
    q(c, "INSERT INTO trunc_src (id, name, qty) SELECT seq, 'after', seq FROM seq_1_to_40")
    q(c, "TRUNCATE trunc_other")
    q(c, "UPDATE trunc_src SET name = 'after2' WHERE id <= 5")
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    check_mirror(c, lake, "trunc_src")
    assert lake.load("lake.trunc_src").scan().to_arrow().num_rows == 40
    q(c, "TRUNCATE trunc_src")
    dativo(tmp_path, "run", j, "--once", "--no-progress")
    assert lake.load("lake.trunc_src").scan().to_arrow().num_rows == 0
    check_mirror(c, lake, "trunc_src")


def test_a_failover_to_a_replica_resumes_by_gtid(tmp_path):
    """The job follows a primary, then its replica (log_slave_updates: the same GTIDs, its
    own binlog files with the same names at other offsets): it resumes from the GTID in the
    lake's state, nothing lost or applied twice, from inside a transaction batches cut."""
    primary = MariaDB(11)
    replica = MariaDB(12, ["--log-slave-updates", "--gtid-strict-mode=1"])
    try:
        p = primary.admin()
        q(p, "CREATE DATABASE cdc")
        r = replica.admin()
        q(r, f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port}, MASTER_USER='root', "
             "MASTER_USE_GTID=slave_pos")
        q(r, "START SLAVE")
        c = connect(primary.params)
        create(c, "fo", 20_000)
        # Binlog traffic of the replica's own (its own GTID domain) before the table's, so
        # offsets differ between the two servers' files.
        q(r, "SET SESSION gtid_domain_id = 2")
        q(r, "CREATE DATABASE replica_only")
        q(r, "CREATE TABLE replica_only.pad (id int PRIMARY KEY, v longtext)")
        q(r, "INSERT INTO replica_only.pad VALUES (1, repeat('x', 200000))")
        lake = Lake(tmp_path)

        def jobs(name, mode):
            j = job(tmp_path, name, primary.url, "fo", target_mode=mode)
            text = (j.read_text().replace("rows: 3000", "rows: 1000").replace("batch_size: 2000", "batch_size: 500")
                    .replace("table: lake.fo", f"table: lake.{name}"))
            return (write_job(j, text),
                    write_job(tmp_path / f"{name}_replica.yaml", text.replace(primary.url, replica.url)))
        # A mirror, and a changelog that is killed inside a large transaction.
        mirror, mirror_r = jobs("fo_mirror", "merge")
        log, log_r = jobs("fo_log", "append")
        for j in (mirror, log):
            dativo(tmp_path, "run", j, "--once", "--no-progress")
        q(c, "UPDATE fo SET name = concat(name, '+') WHERE id <= 19000")
        follower = start_follower(tmp_path, log)
        deadline = time.monotonic() + 30

        def log_state():
            return json.loads(lake.load("lake.fo_log").current_snapshot().summary["dativo.state"])["cdc"]
        while time.monotonic() < deadline and "partial" not in log_state():
            time.sleep(0.05)
        follower.send_signal(signal.SIGKILL)
        follower.wait()
        state = log_state()
        assert state["server_id"] == 11 and state["gtid"].startswith("0-11-"), state
        assert "partial" in state, state
        dativo(tmp_path, "run", mirror, "--once", "--no-progress")
        q(c, "DELETE FROM fo WHERE id BETWEEN 4001 AND 4100")
        q(c, "INSERT INTO fo (id, name, qty) SELECT seq, 'new', seq FROM seq_30001_to_30300")
        # The replica has everything; the primary is gone.
        gtid = q(p, "SELECT @@gtid_binlog_pos")[0][0]
        waited = q(r, f"SELECT MASTER_GTID_WAIT('{gtid}', 60)")[0][0]
        with r.cursor(pymysql.cursors.DictCursor) as cur:
            cur.execute("SHOW SLAVE STATUS")
            status = cur.fetchone()
        assert waited == 0, {k: status[k] for k in ("Slave_IO_Running", "Slave_SQL_Running", "Last_Error", "Last_IO_Error")}
        q(r, "STOP SLAVE")
        primary.stop()
        primary = None
        for j in (mirror_r, log_r):
            out = dativo(tmp_path, "run", j, "--once", "--no-progress", "-v")
            assert "resuming from the job's GTID position" in out.stderr, out.stderr[-3000:]
        rc = connect(replica.params)
        lake.assert_rows("lake.fo_mirror", COLS, canon(rc, "fo"), "fo", ignore=("_dativo_lsn", "_dativo_commit_time"))
        for name in ("fo_mirror", "fo_log"):
            state = json.loads(lake.load(f"lake.{name}").current_snapshot().summary["dativo.state"])["cdc"]
            assert state["server_id"] == 12, state
        # Then the replica's own binlog by position.
        q(rc, "UPDATE fo SET name = 'on replica' WHERE id <= 10")
        for j in (mirror_r, log_r):
            out = dativo(tmp_path, "run", j, "--once", "--no-progress", "-v")
            assert "by GTID" not in out.stderr
        lake.assert_rows("lake.fo_mirror", COLS, canon(rc, "fo"), "fo", ignore=("_dativo_lsn", "_dativo_commit_time"))
        # The changelog holds every change once: across the kill inside the transaction and
        # the move to the replica.
        t = lake.load("lake.fo_log").scan().to_arrow()
        counts = {}
        for op, k in zip(t["_dativo_op"].to_pylist(), t["id"].to_pylist()):
            counts[(op, k)] = counts.get((op, k), 0) + 1
        dup = [k for k, n in counts.items() if n > 1 and k[0] != "U"]
        assert not dup, dup[:5]
        ops = {}
        for (op, k), n in counts.items():
            ops[op] = ops.get(op, 0) + n
        assert ops == {"R": 20_000, "U": 19_000 + 10, "D": 100, "I": 300}, ops
        twice = [k for (op, k), n in counts.items() if op == "U" and n != (2 if k <= 10 else 1)]
        assert not twice, twice[:5]
    finally:
        if primary is not None:
            primary.stop()
        replica.stop()


def test_mistakes_are_named(tmp_path, binlog_mariadb):
    url, params = binlog_mariadb
    c = connect(params)
    # The shared MariaDB writes no binlog.
    shared = pymysql.connect(**{**dict(zip(("host", "port"), ("127.0.0.1", 3306))), "user": "root",
                                "database": MY_URL.rsplit("/", 1)[1], "autocommit": True})
    q(shared, "DROP TABLE IF EXISTS cdc_nolog")
    q(shared, "CREATE TABLE cdc_nolog (id int primary key)")
    j = job(tmp_path, "cdc_nolog", MY_URL, "cdc_nolog")
    p = dativo(tmp_path, "run", j, "--once", "--no-progress", check=2)
    assert "log_bin" in p.stdout + p.stderr
    q(shared, "DROP TABLE cdc_nolog")
    q(c, "CREATE TABLE nokey (v int, w text)")
    j = job(tmp_path, "cdc_nokey", url, "nokey")
    p = dativo(tmp_path, "run", j, "--once", "--no-progress", check=2)
    assert "primary key" in p.stdout + p.stderr
    q(c, "CREATE TABLE stmt (id int primary key)")
    q(c, "SET GLOBAL binlog_format = 'STATEMENT'")
    try:
        j = job(tmp_path, "cdc_stmt", url, "stmt")
        p = dativo(tmp_path, "run", j, "--once", "--no-progress", check=2)
        assert "binlog_format" in p.stdout + p.stderr and "ROW" in p.stdout + p.stderr
    finally:
        q(c, "SET GLOBAL binlog_format = 'ROW'")
