#!/usr/bin/env python3
"""Change data capture into Iceberg (`mode: cdc`, `mode: merge`) from PostgreSQL (a private
instance with wal_level=logical) and MariaDB (a private instance writing a row-based binlog),
both started by this script (the shared ones have neither).

    bench/run cdc                          both databases: 1M-row snapshot; streaming at 1,000
                                           and 10,000 changes/s
    bench/run cdc --db mariadb --rows 200000 --seconds 10

1. Snapshot. The same table read whole into Iceberg twice, alternating, --repeat times: by an
   ordinary full-refresh job (the baseline) and by a CDC job's first run (`--once`: create the
   slot, read the exported snapshot, stream nothing). Target: the CDC snapshot's throughput
   ≥ 0.9× the full load's.
2. Streaming. A CDC job follows the log (`dativo run`, checkpoint every second) while a load
   generator commits changes at a fixed rate for --seconds: transactions of 50 updates or
   inserts, each stamped with its commit. Then SIGTERM (dativo commits and exits). Lag per
   change = the lake commit that made it visible (the Iceberg snapshot that added the data
   file holding it) − its source commit time (`_dativo_commit_time`). Reported: changes/s
   applied, p50/p95 lag, dativo's CPU seconds per million changes (its rusage via
   /usr/bin/time). Target: p95 lag under 10 s at 1,000 changes/s.

Every lake table is checked against the source at the end (row count and sum of a column).
MariaDB's binlog stamps events in whole seconds: its lags are measured from a commit time
rounded down, so they read up to 1 s high.
"""
import argparse
import os
import pathlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psycopg2
import pyarrow.parquet as pq
import pymysql
from pyiceberg.catalog.sql import SqlCatalog

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATIVO = os.environ.get("DATIVO_BIN", str(ROOT / "target/release/dativo"))


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class LogicalPg:
    def __init__(self):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-cdc-"))
        self.port = free_port()
        self.bin = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1].parent
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_pg:
            shutil.chown(self.dir, "postgres")
        subprocess.run(self.as_pg + [str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-U", "postgres",
                                     "--auth=trust"], check=True, capture_output=True)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c wal_level=logical "
                "-c max_replication_slots=10 -c max_wal_senders=10 -c shared_buffers=256MB "
                "-c synchronous_commit=off")
        subprocess.run(self.as_pg + [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l",
                                     str(self.dir / "log"), "-o", opts, "-w", "start"], check=True,
                       capture_output=True)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    label = "PostgreSQL"
    reader = "postgres"

    def conn(self):
        c = psycopg2.connect(self.dsn)
        c.autocommit = True
        return c

    def table(self, name):
        return f"public.{name}"

    def create_table(self, c, name, rows):
        q(c, f"DROP TABLE IF EXISTS {name}")
        q(c, f"""CREATE TABLE {name} (id bigint PRIMARY KEY, i4 int, i8 bigint, amount numeric(15,2),
                 price numeric(15,2), d date, ts timestamptz, flag boolean, code text, comment text)""")
        q(c, f"""INSERT INTO {name} SELECT i, i % 1000, i * 7, (i % 100000) / 100.0, (i % 7777) / 10.0,
                 date '2020-01-01' + i % 2000, timestamptz '2024-01-01 00:00+00' + i * interval '1 second',
                 i % 3 = 0, 'C' || (i % 50), repeat('x', 20 + i % 60) FROM generate_series(1, {rows}) i""")
        q(c, f"ALTER TABLE {name} REPLICA IDENTITY FULL")
        q(c, f"VACUUM ANALYZE {name}")
        return q(c, f"SELECT pg_table_size('{name}')")[0][0]

    def insert_sql(self, table, lo, hi):
        return f"""INSERT INTO {table} SELECT i, 1, i, 1.5, 2.5, current_date, now(), true, 'N', 'new'
                   FROM generate_series({lo}, {hi}) i"""

    def update_sql(self, table, lo, hi):
        return f"UPDATE {table} SET i4 = i4 + 1, ts = now() WHERE id BETWEEN {lo} AND {hi}"

    def after_cdc(self, c, name):
        q(c, f"SELECT pg_drop_replication_slot('dativo_{name}')")
        q(c, f"DROP PUBLICATION dativo_{name}")

    def stop(self):
        subprocess.run(self.as_pg + [str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast",
                                     "stop"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class BinlogMariaDb:
    """A private MariaDB writing a row-based binlog (as tests/e2e/test_cdc_mysql.py starts it)."""
    label = "MariaDB"
    reader = "mysql"

    def __init__(self):
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-mycdc-"))
        self.port = free_port()
        as_mysql = ["runuser", "-u", "mysql", "--"] if os.geteuid() == 0 else []
        if as_mysql:
            shutil.chown(self.dir, "mysql")
        subprocess.run(as_mysql + ["mariadb-install-db", f"--datadir={self.dir}/data",
                                   "--auth-root-authentication-method=normal", "--skip-test-db"],
                       check=True, capture_output=True)
        self.server = subprocess.Popen(as_mysql + [
            "mariadbd", "--no-defaults", f"--datadir={self.dir}/data", f"--port={self.port}",
            "--bind-address=127.0.0.1", f"--socket={self.dir}/sock", f"--pid-file={self.dir}/pid",
            f"--log-bin={self.dir}/binlog", "--binlog-format=ROW", "--server-id=1",
            "--innodb-buffer-pool-size=512M", "--innodb-flush-log-at-trx-commit=2", "--sync-binlog=0",
            "--skip-name-resolve", "--character-set-server=utf8mb4"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "log", "w"))
        deadline = time.monotonic() + 60
        while True:
            try:
                c = pymysql.connect(unix_socket=str(self.dir / "sock"), user="root", password="",
                                    autocommit=True)
                break
            except pymysql.err.OperationalError:
                if self.server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("MariaDB did not start:\n" + (self.dir / "log").read_text()[-3000:])
                time.sleep(0.3)
        q(c, "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'")
        q(c, "GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION")
        q(c, "CREATE DATABASE bench")
        c.close()
        self.url = f"mysql://root@127.0.0.1:{self.port}/bench"

    def conn(self):
        c = pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="", database="bench",
                            autocommit=True)
        q(c, "SET time_zone = '+00:00'")
        return c

    def table(self, name):
        return name

    def create_table(self, c, name, rows):
        q(c, f"DROP TABLE IF EXISTS {name}")
        q(c, f"""CREATE TABLE {name} (id bigint PRIMARY KEY, i4 int, i8 bigint, amount decimal(15,2),
                 price decimal(15,2), d date, ts timestamp(6) NULL, flag bool, code varchar(10),
                 comment varchar(100))""")
        q(c, f"""INSERT INTO {name} SELECT s, s % 1000, s * 7, (s % 100000) / 100, (s % 7777) / 10,
                 date '2020-01-01' + interval s % 2000 day, timestamp '2024-01-01 00:00:00' + interval s second,
                 s % 3 = 0, concat('C', s % 50), repeat('x', 20 + s % 60)
                 FROM (SELECT CAST(seq AS SIGNED) s FROM seq_1_to_{rows}) g""")
        q(c, f"ANALYZE TABLE {name}")
        return q(c, f"""SELECT data_length + index_length FROM information_schema.tables
                        WHERE table_schema = 'bench' AND table_name = '{name}'""")[0][0]

    def insert_sql(self, table, lo, hi):
        return f"""INSERT INTO {table} SELECT CAST(seq AS SIGNED), 1, seq, 1.5, 2.5, current_date, now(6),
                   true, 'N', 'new' FROM seq_{lo}_to_{hi}"""

    def update_sql(self, table, lo, hi):
        return f"UPDATE {table} SET i4 = i4 + 1, ts = now(6) WHERE id BETWEEN {lo} AND {hi}"

    def after_cdc(self, c, name):
        pass

    def stop(self):
        self.server.terminate()
        try:
            self.server.wait(30)
        except subprocess.TimeoutExpired:
            self.server.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def q(c, sql, *args):
    with c.cursor() as cur:
        cur.execute(sql, args or None)
        return cur.fetchall() if cur.description else None


def write_job(work, name, db, table, cdc, target_mode=None):
    mode = "    mode: cdc\n" if cdc else ""
    target_mode = target_mode or ("merge" if cdc else "overwrite")
    p = work / f"{name}.yaml"
    p.write_text(f"""name: {name}
source:
  reader: {db.reader}
  config:
    url: {db.url}
    table: {db.table(table)}
{mode}target:
  writer: iceberg
  config:
    table: bench.{name}
    mode: {target_mode}
checkpoint: {{seconds: 1}}
""")
    return p


def timed(cmd, cwd, **kw):
    t0 = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", *map(str, cmd)], cwd=cwd, capture_output=True,
                       text=True, **kw)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    rss, user, sys_ = p.stderr.strip().splitlines()[-1].split()
    return wall, float(user) + float(sys_), int(rss) / 1024


def catalog(work):
    return SqlCatalog("dativo", uri=f"sqlite:///{work}/.dativo/catalog.db", warehouse=f"file://{work}/warehouse")


def check(c, work, ident, table):
    t = catalog(work).load_table(ident).scan(selected_fields=("id", "i4")).to_arrow()
    want = q(c, f"SELECT count(*), coalesce(sum(i4), 0) FROM {table}")[0]
    got = (t.num_rows, sum(x for x in t["i4"].to_pylist() if x is not None))
    if tuple(map(int, want)) != got:
        raise SystemExit(f"{ident}: lake has {got} (rows, sum i4), source {want}")


def snapshot_phase(db, work, rows, repeat):
    c = db.conn()
    size = db.create_table(c, "snap_src", rows)
    res = {"full": [], "merge": [], "cdc": []}
    for r in range(repeat):
        order = ["full", "merge", "cdc"] if r % 2 == 0 else ["cdc", "merge", "full"]
        for kind in order:
            name = f"{db.reader}_{kind}_{r}"
            j = write_job(work, name, db, "snap_src", cdc=(kind == "cdc"),
                          target_mode="merge" if kind == "merge" else None)
            args = [DATIVO, "run", j, "--no-progress"] + (["--once"] if kind == "cdc" else [])
            res[kind].append(timed(args, work))
            check(c, work, f"bench.{name}", "snap_src")
            if kind == "cdc":
                db.after_cdc(c, name)
    c.close()
    return res, size


def load(db, table, rate, seconds, stop_at, stats):
    """`rate` changes/s as transactions of 50: updates of random existing rows, 1 in 5 an
    insert batch."""
    import random
    rnd = random.Random(rate)
    c = db.conn()
    n = q(c, f"SELECT max(id) FROM {table}")[0][0]
    per_tx = 50
    interval = per_tx / rate
    nxt = time.monotonic()
    done = 0
    while time.monotonic() < stop_at:
        if rnd.random() < 0.2:
            q(c, db.insert_sql(table, n + 1, n + per_tx))
            n += per_tx
        else:
            lo = rnd.randint(1, max(1, n - per_tx))
            q(c, db.update_sql(table, lo, lo + per_tx - 1))
        done += per_tx
        nxt += interval
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    stats["changes"] = done
    c.close()


def lags(work, ident):
    """Per change: the lake commit (snapshot timestamp) that added its row − its source commit."""
    t = catalog(work).load_table(ident)
    snap_ts = {s.snapshot_id: s.timestamp_ms / 1000 for s in t.metadata.snapshots}
    entries = t.inspect.entries()
    out = []
    for status, sid, df in zip(entries["status"].to_pylist(), entries["snapshot_id"].to_pylist(),
                               entries["data_file"].to_pylist()):
        if status != 1 or df["content"] != 0:  # ADDED data files only
            continue
        path = df["file_path"].replace("file://", "")
        col = pq.read_table(path, columns=["_dativo_commit_time"])["_dativo_commit_time"]
        for v in col.to_pylist():
            if v is not None:
                out.append(snap_ts[sid] - v.timestamp())
    return out


def streaming_phase(db, work, rows, rate, seconds):
    c = db.conn()
    table = f"stream_{rate}"
    db.create_table(c, table, rows)
    name = f"{db.reader}_cdc_{rate}"
    j = write_job(work, name, db, table, cdc=True)
    subprocess.run([DATIVO, "run", j, "--once", "--no-progress"], cwd=work, check=True, capture_output=True)
    # dativo itself (not under /usr/bin/time, which would not pass SIGTERM on): its rusage
    # comes from wait4.
    log = open(work / f"{name}.log", "w")
    proc = subprocess.Popen([DATIVO, "run", str(j), "--no-progress"], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT)
    time.sleep(2)
    stats = {}
    t0 = time.monotonic()
    gen = threading.Thread(target=load, args=(db, table, rate, seconds, t0 + seconds, stats))
    gen.start()
    gen.join()
    sent = time.monotonic() - t0
    # Let it catch up, then stop it: SIGTERM commits and exits 0.
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if proc.returncode != 0:
        raise SystemExit(f"streaming run failed:\n{(work / f'{name}.log').read_text()[-3000:]}")
    cpu = ru.ru_utime + ru.ru_stime
    rss = ru.ru_maxrss
    subprocess.run([DATIVO, "run", j, "--once", "--no-progress"], cwd=work, check=True, capture_output=True)
    check(c, work, f"bench.{name}", table)
    lag = sorted(lags(work, f"bench.{name}"))
    c.close()
    return {"rate": rate, "changes": stats["changes"], "sent_s": sent, "cpu": cpu, "rss": rss / 1024,
            "lag": lag}


def pct(xs, p):
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def bench_db(db, work, a):
    res, size = snapshot_phase(db, work, a.rows, a.repeat)
    print(f"\n## {db.label}: snapshot of {a.rows:,} rows ({size / 2**20:.0f} MiB) into Iceberg, "
          f"median of {a.repeat}\n")
    print("| job | wall s | rows/s | CPU s | peak RSS MB | vs full load (throughput) |")
    print("|---|---|---|---|---|---|")
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in res.items()}
    start = ("slot + exported snapshot" if db.reader == "postgres"
             else "LOCK TABLES + binlog position + consistent snapshot")
    for k, label in [("full", "full refresh, mode: overwrite (baseline)"),
                     ("merge", "full refresh, mode: merge (the writer CDC uses)"),
                     ("cdc", f"cdc --once ({start}, mode: merge)")]:
        w, cpu, rss = med[k]
        print(f"| {label} | {w:.2f} | {a.rows / w:,.0f} | {cpu:.2f} | {rss:.0f} | "
              f"{med['full'][0] / w:.2f}× |")
    ratio = med["full"][0] / med["cdc"][0]
    print(f"\nTarget: CDC snapshot ≥ 0.9× the full load: {ratio:.2f}× — {'met' if ratio >= 0.9 else 'NOT met'} "
          f"(against the same rows merged by a full refresh: {med['merge'][0] / med['cdc'][0]:.2f}×)")
    print(f"\n## {db.label}: streaming into Iceberg (mode: merge), {a.seconds} s of load, "
          "transactions of 50 changes\n")
    print("| offered changes/s | changes | applied/s | lag p50 s | lag p95 s | lag max s | dativo CPU s | "
          "CPU s per 1M changes | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    worst = {}
    for rate in map(int, a.rates.split(",")):
        r = streaming_phase(db, work, min(a.rows, 200_000), rate, a.seconds)
        lag = r["lag"]
        applied = r["changes"] / r["sent_s"]
        print(f"| {rate:,} | {r['changes']:,} | {applied:,.0f} | {pct(lag, 50):.2f} | {pct(lag, 95):.2f} | "
              f"{lag[-1] if lag else float('nan'):.2f} | {r['cpu']:.2f} | {r['cpu'] / r['changes'] * 1e6:.1f} | "
              f"{r['rss']:.0f} |")
        worst[rate] = pct(lag, 95)
    if 1000 in worst:
        print(f"\nTarget: p95 lag under 10 s at 1,000 changes/s: {worst[1000]:.2f} s — "
              f"{'met' if worst[1000] < 10 else 'NOT met'}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["postgres", "mariadb", "both"], default="both")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rates", default="1000,10000")
    a = ap.parse_args()
    kinds = {"postgres": [LogicalPg], "mariadb": [BinlogMariaDb], "both": [LogicalPg, BinlogMariaDb]}[a.db]
    for kind in kinds:
        db = kind()
        work = pathlib.Path(tempfile.mkdtemp(prefix="dativo-bench-cdc-work-"))
        try:
            bench_db(db, work, a)
        finally:
            db.stop()
            shutil.rmtree(work, ignore_errors=True)
    print("\nLag = the Iceberg snapshot that added a change's row − the change's source commit time "
          "(MariaDB's binlog stamps whole seconds: up to 1 s high); CPU is the whole `dativo run` process "
          "(rusage) over the streaming window plus its start and stop.")


if __name__ == "__main__":
    sys.exit(main())
