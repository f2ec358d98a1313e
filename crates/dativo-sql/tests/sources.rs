//! The SQL readers against the real services, each scenario written once and run on both:
//! PostgreSQL (`DATIVO_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`) and
//! MariaDB/MySQL (`DATIVO_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306/test`). Every
//! test creates its own uniquely named table and drops it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use serde_json::{json, Value};

use dativo_core::{ErrorKind, OpenReader, ReaderContext, Result};
use dativo_sql::mysql::MySqlReader;
use dativo_sql::postgres::PostgresReader;

/// One database under test.
trait Db: Sized {
    /// The URL of the test database.
    fn url() -> String;
    /// Connect for setting up tables.
    fn connect() -> Self;
    /// Run statements.
    fn exec(&mut self, sql: &str);
    /// The column type of a timestamp cursor.
    const TS: &'static str;
    /// A timestamp literal `secs` seconds after 2026-01-01 00:00 UTC.
    fn ts(secs: f64) -> String;
    /// Open the reader.
    fn open(config: &Value, ctx: &ReaderContext) -> Result<Box<dyn OpenReader>>;
    /// Validate a config.
    fn validate(config: &Value) -> Result<()>;
}

struct Pg(tokio_postgres::Client);

impl Db for Pg {
    fn url() -> String {
        std::env::var("DATIVO_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }
    fn connect() -> Self {
        Pg(dativo_pg::runtime()
            .block_on(dativo_pg::connect_url(&Self::url()))
            .expect("PostgreSQL for tests"))
    }
    fn exec(&mut self, sql: &str) {
        dativo_pg::runtime()
            .block_on(self.0.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    const TS: &'static str = "timestamptz";
    fn ts(secs: f64) -> String {
        format!("timestamptz '2026-01-01 00:00:00+00' + interval '{secs} seconds'")
    }
    fn open(config: &Value, ctx: &ReaderContext) -> Result<Box<dyn OpenReader>> {
        Ok(Box::new(PostgresReader::open(config, ctx)?))
    }
    fn validate(config: &Value) -> Result<()> {
        PostgresReader::validate(config)
    }
}

struct My(mysql::Conn);

impl Db for My {
    fn url() -> String {
        std::env::var("DATIVO_TEST_MYSQL_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
    }
    fn connect() -> Self {
        let opts = mysql::Opts::from_url(&Self::url()).expect("a MySQL URL");
        My(mysql::Conn::new(opts).expect("MariaDB for tests"))
    }
    fn exec(&mut self, sql: &str) {
        use mysql::prelude::Queryable;
        for s in sql.split(';').filter(|s| !s.trim().is_empty()) {
            self.0.query_drop(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    }
    const TS: &'static str = "DATETIME(6)";
    fn ts(secs: f64) -> String {
        format!(
            "TIMESTAMPADD(MICROSECOND, {}, '2026-01-01 00:00:00')",
            (secs * 1e6) as i64
        )
    }
    fn open(config: &Value, ctx: &ReaderContext) -> Result<Box<dyn OpenReader>> {
        Ok(Box::new(MySqlReader::open(config, ctx)?))
    }
    fn validate(config: &Value) -> Result<()> {
        MySqlReader::validate(config)
    }
}

/// A uniquely named table, dropped at the end of the test.
struct Table<D: Db> {
    db: D,
    name: String,
}

impl<D: Db> Table<D> {
    fn new(columns: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dativo_sql_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let mut db = D::connect();
        db.exec(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})"
        ));
        Table { db, name }
    }

    fn insert(&mut self, rows: impl IntoIterator<Item = String>) {
        let rows: Vec<String> = rows.into_iter().map(|r| format!("({r})")).collect();
        for chunk in rows.chunks(500) {
            let sql = format!("INSERT INTO {} VALUES {}", self.name, chunk.join(", "));
            self.db.exec(&sql);
        }
    }

    /// A reader config for this table, plus `extra` keys.
    fn config(&self, extra: Value) -> Value {
        let mut c = json!({"url": D::url(), "table": self.name});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }
}

impl<D: Db> Drop for Table<D> {
    fn drop(&mut self) {
        let sql = format!("DROP TABLE IF EXISTS {}", self.name);
        self.db.exec(&sql);
    }
}

fn ctx(state: Option<Value>) -> ReaderContext {
    ReaderContext::new("sql_test", "run-1", state)
}

/// The `id` values of up to `max` batches (all with `None`; NULL as `i64::MIN`), and the
/// state after them.
fn read(reader: &mut dyn OpenReader, max: Option<usize>) -> (Vec<i64>, Value) {
    let mut ids = Vec::new();
    let mut batches = 0;
    while max.is_none_or(|m| batches < m) {
        let Some(b) = reader.next_batch().unwrap() else {
            break;
        };
        batches += 1;
        let col = b.column_by_name("id").expect("an id column");
        let col = arrow::compute::cast(col, &arrow::datatypes::DataType::Int64).unwrap();
        ids.extend(
            col.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.unwrap_or(i64::MIN)),
        );
    }
    (ids, reader.state().unwrap().expect("a state"))
}

/// The upper bounds of a plan's ranges (the split points, then the top).
fn range_tops(state: &Value) -> Vec<Option<String>> {
    state["plan"]["ranges"]
        .as_array()
        .expect("a plan")
        .iter()
        .map(|r| r["hi"].as_str().map(String::from))
        .collect()
}

/// Keys near 2^63 and DECIMAL(38,0) keys far above 2^53 are split exactly, and every row is
/// read once.
fn big_keys_split_exactly<D: Db>() {
    let mut t = Table::<D>::new("id BIGINT PRIMARY KEY, d DECIMAL(38,0) NOT NULL, v INT");
    let top = i64::MAX;
    let d0: i128 = 10i128.pow(37);
    t.insert((0..100).map(|k| format!("{}, {}, {k}", top - 10 * k, d0 + 7 * k as i128)));
    let want: BTreeMap<i64, ()> = (0..100).map(|k| (top - 10 * k, ())).collect();

    // Ordered by the primary key: min = top − 990, max = top.
    let mut r = D::open(
        &t.config(json!({"partitions": 4, "batch_size": 7})),
        &ctx(None),
    )
    .unwrap();
    let tops = range_tops(&r.state().unwrap().unwrap());
    // 990·k/4 rounded half up (as PostgreSQL rounds its numeric cast): 248, 495, 743.
    let point = |k: i64| Some((top - 990 + (990 * k + 2) / 4).to_string());
    assert_eq!(
        tops,
        [point(1), point(2), point(3), None],
        "exact BIGINT split points"
    );
    let (ids, state) = read(r.as_mut(), None);
    assert_eq!(ids.len(), 100);
    assert_eq!(
        ids.iter().map(|i| (*i, ())).collect::<BTreeMap<_, _>>(),
        want
    );
    assert!(
        state.get("plan").is_none() && state["last_full_refresh"] == "run-1",
        "{state}"
    );

    // Split on the decimal: min = 10^37, max = 10^37 + 693.
    let cfg = t.config(json!({"partitions": 3, "partition_column": "d"}));
    let mut r = D::open(&cfg, &ctx(None)).unwrap();
    let tops = range_tops(&r.state().unwrap().unwrap());
    let point = |k: i128| Some((d0 + 693 * k / 3).to_string());
    assert_eq!(
        tops,
        [point(1), point(2), None],
        "exact DECIMAL(38,0) split points"
    );
    assert_eq!(read(r.as_mut(), None).0.len(), 100);
    r.close().unwrap();
}

/// An incremental run interrupted after two batches resumes from its state; with `lookback`
/// a row committed late below the cursor, and new rows, are read once by the next run, and
/// nothing by the one after.
fn incremental_resumes_with_lookback<D: Db>() {
    let ts = D::TS;
    let mut t = Table::<D>::new(&format!("id BIGINT PRIMARY KEY, ts {ts} NOT NULL, v INT"));
    t.insert((1..=300).map(|i| format!("{i}, {}, {i}", D::ts(i as f64))));
    let cfg =
        t.config(json!({"cursor": "ts", "lookback": "1h", "batch_size": 50, "partitions": 2}));
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    let mut count = |ids: &[i64]| ids.iter().for_each(|i| *seen.entry(*i).or_default() += 1);

    // Run 1 stops (a crash) after two batches; its state carries the plan.
    let mut r = D::open(&cfg, &ctx(None)).unwrap();
    let (ids, state) = read(r.as_mut(), Some(2));
    drop(r);
    assert_eq!(ids.len(), 100, "two batches of 50");
    assert!(state["plan"]["mode"] == "incremental", "{state}");
    count(&ids);
    // A transaction commits late, below everything read so far.
    t.insert([format!("1001, {}, 0", D::ts(1.5))]);

    // The retry resumes the plan.
    let mut r = D::open(&cfg, &ctx(Some(state))).unwrap();
    let (ids, state) = read(r.as_mut(), None);
    r.close().unwrap();
    count(&ids);
    assert!(state.get("plan").is_none(), "{state}");
    assert!(
        state["cursor"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-01 00:05:00"),
        "{state}"
    );
    assert!(!state["seen"].as_array().unwrap().is_empty(), "{state}");

    // Another late row inside the lookback window, and a new one above the cursor.
    t.insert([
        format!("2000, {}, 0", D::ts(290.0)),
        format!("2001, {}, 0", D::ts(301.0)),
    ]);
    let mut r = D::open(&cfg, &ctx(Some(state))).unwrap();
    let (ids, state) = read(r.as_mut(), None);
    assert!(ids.contains(&2000) && ids.contains(&2001), "{ids:?}");
    count(&ids);
    let mut r = D::open(&cfg, &ctx(Some(state))).unwrap();
    let (ids, _) = read(r.as_mut(), None);
    assert!(ids.is_empty(), "nothing new: {ids:?}");

    let want: Vec<i64> = (1..=300).chain([1001, 2000, 2001]).collect();
    assert_eq!(seen.keys().copied().collect::<Vec<_>>(), want);
    assert!(seen.values().all(|n| *n == 1), "read twice: {seen:?}");
}

/// A query source, split on a column it computes (NULL for two rows).
fn query_source<D: Db>() {
    let mut t = Table::<D>::new("id BIGINT PRIMARY KEY, v INT");
    t.insert((1..=1000).map(|i| format!("{i}, {}", i % 7)));
    let q = format!(
        "SELECT CASE WHEN id IN (5, 9) THEN NULL ELSE id * 2 END AS id, v FROM {} WHERE v > 0",
        t.name
    );
    let cfg = json!({"url": D::url(), "query": q, "partition_column": "id", "partitions": 3});
    let mut r = D::open(&cfg, &ctx(None)).unwrap();
    let names: Vec<String> = r
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(names, ["id", "v"]);
    let (ids, _) = read(r.as_mut(), None);
    let mut want: Vec<i64> = (1..=1000)
        .filter(|i| i % 7 != 0)
        .map(|i| if i == 5 || i == 9 { i64::MIN } else { i * 2 })
        .collect();
    want.sort();
    let mut got = ids.clone();
    got.sort();
    assert_eq!(got, want);
    // An incremental read refuses NULL cursors, naming them.
    let inc = json!({"url": D::url(), "query": q, "cursor": "id"});
    let e = D::open(&inc, &ctx(None)).err().expect("NULL cursors");
    assert_eq!(e.kind(), ErrorKind::Data, "{e}");
    assert!(
        e.to_string()
            .contains("2 row(s) of the query have a NULL cursor `id`"),
        "{e}"
    );
    // `lookback` on a query needs the primary key it cannot look up.
    let bad = json!({"url": D::url(), "query": q, "cursor": "id", "lookback": 5});
    assert_eq!(
        D::validate(&bad).unwrap_err().key_path(),
        Some("primary_key")
    );
    let ok =
        json!({"url": D::url(), "query": q, "cursor": "id", "lookback": 5, "primary_key": ["id"]});
    D::validate(&ok).unwrap();
}

/// `url` with another user, port or database.
fn url_with(url: &str, user: Option<&str>, port: Option<u16>, db: Option<&str>) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let port = port.map_or_else(
        || {
            hostport
                .rsplit_once(':')
                .map_or(String::new(), |(_, p)| format!(":{p}"))
        },
        |p| format!(":{p}"),
    );
    let user = user
        .or(userinfo)
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{host}{port}/{}", db.unwrap_or(path))
}

/// Errors of the kinds the exit codes depend on.
fn error_kinds<D: Db>(bad_user: &str) {
    let mut t = Table::<D>::new("id INT PRIMARY KEY");
    t.insert(["1".to_string()]);
    let kind = |cfg: Value| {
        D::open(&cfg, &ctx(None))
            .err()
            .map(|e| (e.kind(), e.to_string()))
    };
    let at = |user, port, db| json!({"url": url_with(&D::url(), user, port, db), "table": t.name});
    let free_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (k, msg) = kind(at(None, Some(free_port), None)).expect("refused");
    assert_eq!(k, ErrorKind::Connect, "{msg}");
    let (k, msg) = kind(at(None, None, Some("no_such_db_dativo"))).expect("no database");
    assert_eq!(k, ErrorKind::Config, "{msg}");
    assert!(msg.contains("check the database name"), "{msg}");
    let (k, msg) = kind(at(Some(bad_user), None, None)).expect("no such user");
    assert_eq!(k, ErrorKind::Auth, "{msg}");
    assert!(msg.contains("authentication failed"), "{msg}");
    let (k, msg) = kind(t.config(json!({"table": "no_such_table_dativo"}))).expect("no table");
    assert_eq!(k, ErrorKind::Schema, "{msg}");
    let (k, msg) = kind(t.config(json!({"cursor": "nope"}))).expect("no column");
    assert_eq!(k, ErrorKind::Config, "{msg}");
    // Checked without I/O: `dativo validate` names the key.
    let e = D::validate(&t.config(json!({"cursor": "id", "lookback": "banana"}))).unwrap_err();
    assert_eq!(
        (e.kind(), e.key_path()),
        (ErrorKind::Config, Some("lookback")),
        "{e}"
    );
    let e = D::validate(&t.config(json!({"tabel": "x"}))).unwrap_err();
    assert_eq!(e.key_path(), Some("tabel"), "{e}");
    // A lookback that does not fit the cursor's type (found once there is a cursor to shift).
    let (k, msg) = kind(t.config(json!({"cursor": "id", "lookback": "1h"}))).expect("misfit");
    assert_eq!(k, ErrorKind::Config, "{msg}");
    assert!(
        msg.contains("lookback") && msg.contains("does not fit cursor `id`"),
        "{msg}"
    );
}

#[test]
fn urls_are_rewritten() {
    let u = "postgres://postgres@127.0.0.1:5432/test";
    assert_eq!(
        url_with(u, Some("x"), Some(1), None),
        "postgres://x@127.0.0.1:1/test"
    );
    assert_eq!(
        url_with(u, None, None, Some("db")),
        "postgres://postgres@127.0.0.1:5432/db"
    );
    assert_eq!(
        url_with("mysql://h/d", None, Some(2), None),
        "mysql://h:2/d"
    );
}

#[test]
fn pg_big_keys_split_exactly() {
    big_keys_split_exactly::<Pg>();
}

#[test]
fn mysql_big_keys_split_exactly() {
    big_keys_split_exactly::<My>();
}

#[test]
fn pg_incremental_resumes_with_lookback() {
    incremental_resumes_with_lookback::<Pg>();
}

#[test]
fn mysql_incremental_resumes_with_lookback() {
    incremental_resumes_with_lookback::<My>();
}

#[test]
fn pg_query_source() {
    query_source::<Pg>();
}

#[test]
fn mysql_query_source() {
    query_source::<My>();
}

#[test]
fn pg_error_kinds() {
    error_kinds::<Pg>("no_such_role_dativo");
}

#[test]
fn mysql_error_kinds() {
    error_kinds::<My>("no_such_user_dativo");
}

/// Process shards of a MySQL source split by CRC32 of the primary key even when
/// `partition_column` has bounds (as before the readers shared a core: existing jobs keep each
/// row in the shard whose cursor covers it); PostgreSQL uses ranges of the bounds.
fn shards_of<D: Db>(t: &Table<D>, n: u32) -> Vec<Vec<i64>> {
    (0..n)
        .map(|i| {
            let mut c = ctx(None);
            c.shard = dativo_core::Shard { index: i, count: n };
            let cfg =
                t.config(json!({"partition_column": "id", "lower_bound": 1, "upper_bound": 40}));
            let mut r = D::open(&cfg, &c).unwrap();
            let (mut ids, _) = read(r.as_mut(), None);
            ids.sort();
            ids
        })
        .collect()
}

#[test]
fn mysql_process_shards_stay_hashed_with_bounds() {
    let mut t = Table::<My>::new("id BIGINT PRIMARY KEY, v INT");
    t.insert((1..=40).map(|k| format!("{k}, {k}")));
    let shards = shards_of(&t, 2);
    // What MariaDB's own CRC32 says shard 0 holds.
    use mysql::prelude::Queryable;
    let want: Vec<i64> =
        t.db.0
            .query(format!(
                "SELECT id FROM {} WHERE CRC32(id) % 2 = 0 ORDER BY id",
                t.name
            ))
            .unwrap();
    assert!(!want.is_empty() && want.len() < 40, "{want:?}");
    assert_eq!(shards[0], want, "shard 0 = CRC32(id) mod 2 = 0");
    let mut all: Vec<i64> = shards.concat();
    all.sort();
    assert_eq!(
        all,
        (1..=40).collect::<Vec<_>>(),
        "every row in exactly one shard"
    );
}

#[test]
fn pg_process_shards_split_the_bounds_into_ranges() {
    let mut t = Table::<Pg>::new("id BIGINT PRIMARY KEY, v INT");
    t.insert((1..=40).map(|k| format!("{k}, {k}")));
    let shards = shards_of(&t, 2);
    // Bounds 1..40 split at 1 + 39/2 = 20.5 → 21 (rounded as PostgreSQL did): [1, 21) and [21, …).
    assert_eq!(shards[0], (1..=20).collect::<Vec<_>>());
    assert_eq!(shards[1], (21..=40).collect::<Vec<_>>());
}
