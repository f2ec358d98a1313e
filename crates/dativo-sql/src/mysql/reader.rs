//! The `mysql` reader (MySQL and MariaDB).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{bounded, Receiver, Sender};
use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder, SslOpts, Value};
use serde_json::Value as Json;

use dativo_core::config::from_config;
use dativo_core::{secrets, Error, Reader, ReaderContext, Result};

use super::config::{MySqlReaderConfig, ReadMode, SslMode};
use super::types::{field_for, kind_for, MyDecoder, MyKind};
use crate::keyset::{
    check_batch_bytes, key_literal, split_ranges, BatchBound, Dialect, KeyRange, KeysetState,
    PartMsg, Plan,
};

const MY: Dialect = Dialect::MySql;

#[derive(Clone)]
struct Column {
    name: String,
    kind: MyKind,
    select: String,
}

/// Reads a table or query from MySQL or MariaDB.
#[derive(Default)]
pub struct MySqlReader {
    cfg: Option<MySqlReaderConfig>,
    run_id: String,
    planner: Option<Conn>,
    workers: Vec<Conn>,
    schema: Option<SchemaRef>,
    columns: Vec<Column>,
    base: String,
    order_col: Option<usize>,
    state: KeysetState,
    plan: Option<Plan>,
    exclude: Option<String>,
    rx: Option<Receiver<PartMsg>>,
    started: bool,
    finished: bool,
    stop: Arc<AtomicBool>,
}

fn map_error(e: mysql::Error, doing: &str) -> Error {
    let text = secrets::scrub(&e.to_string());
    match &e {
        mysql::Error::MySqlError(se) => {
            let msg = format!("{doing}: {}", secrets::scrub(&se.message));
            match se.code {
                1045 | 1044 | 1698 => Error::auth(format!(
                    "{msg} (authentication failed: check user and password)"
                )),
                1142 | 1143 | 1227 => Error::auth(format!(
                    "{msg} (permission denied: GRANT SELECT to the user)"
                )),
                1146 => Error::schema(format!("{msg} (check `table` / `query`)")),
                1049 => Error::config(format!("{msg} (check the database name)")),
                1054 | 1064 => Error::config(msg),
                1205 | 1213 | 1317 | 1927 | 2006 | 2013 | 1053 | 1040 => Error::transient(msg),
                _ => Error::data(msg),
            }
        }
        mysql::Error::DriverError(mysql::DriverError::CouldNotConnect(_))
        | mysql::Error::DriverError(mysql::DriverError::ConnectTimeout) => {
            Error::connect(format!("{doing}: {text}"))
        }
        mysql::Error::IoError(io) if doing.starts_with("connecting") => {
            let _ = io;
            Error::connect(format!("{doing}: {text}"))
        }
        mysql::Error::IoError(_) | mysql::Error::CodecError(_) => {
            Error::transient(format!("{doing}: the connection was lost ({text})"))
        }
        mysql::Error::UrlError(_) => Error::config(format!("{doing}: {text}")).with_key_path("url"),
        _ => Error::transient(format!("{doing}: {text}")),
    }
}

fn connect(cfg: &MySqlReaderConfig) -> Result<Conn> {
    let mut b = match &cfg.url {
        Some(u) => {
            secrets::register(u);
            let u = u.replacen("mariadb://", "mysql://", 1);
            OptsBuilder::from_opts(Opts::from_url(&u).map_err(|e| {
                Error::config(format!(
                    "invalid MySQL URL: {}",
                    secrets::scrub(&e.to_string())
                ))
                .with_key_path("url")
            })?)
        }
        None => OptsBuilder::new().ip_or_hostname(Some("127.0.0.1")),
    };
    if let Some(h) = &cfg.host {
        b = b.ip_or_hostname(Some(h.clone()));
    }
    if let Some(p) = cfg.port {
        b = b.tcp_port(p);
    }
    if let Some(u) = &cfg.user {
        b = b.user(Some(u.clone()));
    }
    if let Some(p) = &cfg.password {
        secrets::register(p);
        b = b.pass(Some(p.clone()));
    }
    if let Some(d) = &cfg.database {
        b = b.db_name(Some(d.clone()));
    }
    let ssl = match cfg.sslmode.unwrap_or(SslMode::Disable) {
        SslMode::Disable | SslMode::Prefer => None,
        SslMode::Require => Some(SslOpts::default().with_danger_accept_invalid_certs(true)),
        SslMode::VerifyCa => Some(SslOpts::default().with_danger_skip_domain_validation(true)),
        SslMode::VerifyFull => Some(SslOpts::default()),
    };
    let ssl = ssl.map(|s| match &cfg.sslrootcert {
        Some(p) => s.with_root_cert_path(Some(std::path::PathBuf::from(p))),
        None => s,
    });
    b = b
        .ssl_opts(ssl)
        .prefer_socket(false)
        .tcp_connect_timeout(Some(
            cfg.connect_timeout
                .map(|d| d.0)
                .unwrap_or(Duration::from_secs(30)),
        ))
        .init(vec!["SET time_zone = '+00:00'", "SET NAMES utf8mb4"]);
    let opts: Opts = b.into();
    let what = format!(
        "{}:{}/{}",
        opts.get_ip_or_hostname(),
        opts.get_tcp_port(),
        opts.get_db_name().unwrap_or("")
    );
    Conn::new(opts).map_err(|e| map_error(e, &format!("connecting to MySQL at {what}")))
}

fn first_text(conn: &mut Conn, sql: &str, doing: &str) -> Result<Vec<Option<String>>> {
    let row: Option<mysql::Row> = conn.query_first(sql).map_err(|e| map_error(e, doing))?;
    let Some(row) = row else {
        return Ok(Vec::new());
    };
    Ok(row
        .unwrap()
        .into_iter()
        .map(|v| match v {
            Value::NULL => None,
            Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
            other => Some(other.as_sql(true).trim_matches('\'').to_string()),
        })
        .collect())
}

/// A key as a number of a common scale, for splitting and comparing.
fn key_number(kind: MyKind, s: &str) -> Option<f64> {
    match kind {
        MyKind::Date => chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .ok()
            .map(|d| {
                d.and_hms_opt(0, 0, 0)
                    .expect("midnight")
                    .and_utc()
                    .timestamp() as f64
                    / 86_400.0
            }),
        MyKind::DateTime | MyKind::Timestamp => {
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc().timestamp_micros() as f64)
        }
        MyKind::I8
        | MyKind::I16
        | MyKind::I32
        | MyKind::I64
        | MyKind::F32
        | MyKind::F64
        | MyKind::Decimal(..)
        | MyKind::Bit => s.parse().ok(),
        _ => None,
    }
}

fn key_text(kind: MyKind, x: f64) -> String {
    match kind {
        MyKind::Date => {
            let d = chrono::DateTime::from_timestamp((x.floor() as i64) * 86_400, 0).expect("date");
            d.format("%Y-%m-%d").to_string()
        }
        MyKind::DateTime | MyKind::Timestamp => chrono::DateTime::from_timestamp_micros(x as i64)
            .expect("datetime")
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string(),
        MyKind::F32 | MyKind::F64 | MyKind::Decimal(..) => x.to_string(),
        _ => (x.floor() as i64).to_string(),
    }
}

impl MySqlReader {
    /// A new, uninitialized reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate a config without connecting.
    pub fn validate(config: &Json) -> Result<()> {
        let cfg = from_config::<MySqlReaderConfig>(config)?;
        cfg.check()?;
        check_batch_bytes(cfg.batch_bytes.0)
    }

    /// `table t` or `the query`, for messages.
    fn source_name(&self) -> String {
        self.cfg()
            .table
            .as_deref()
            .map(|t| format!("table {t}"))
            .unwrap_or_else(|| "the query".into())
    }

    /// An incremental read selects `cursor > K`, which no NULL matches: refuse to plan while
    /// the source has rows with a NULL cursor rather than skip them silently. Skipped when the
    /// catalog declares the column NOT NULL; otherwise one `IS NULL` probe (an index on the
    /// cursor answers it), and a count only when there are some.
    fn check_null_cursor(&mut self, col: &Column, c: &str) -> Result<()> {
        if let (Some(t), true) = (self.cfg().table.clone(), col.select == MY.ident(&col.name)) {
            let (schema, table) = match t.split_once('.') {
                Some((s, t)) => (MY.lit(s), MY.lit(t)),
                None => ("DATABASE()".to_string(), MY.lit(&t)),
            };
            let sql = format!(
                "SELECT IS_NULLABLE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {schema} \
                 AND TABLE_NAME = {table} AND COLUMN_NAME = {}",
                MY.lit(&col.name)
            );
            let nullable = first_text(self.planner(), &sql, "checking the cursor column")?;
            if nullable.first().cloned().flatten().as_deref() == Some("NO") {
                return Ok(());
            }
        }
        let probe = format!(
            "SELECT 1 {} LIMIT 1",
            self.source_where(&format!("{c} IS NULL"))
        );
        if first_text(self.planner(), &probe, "checking for NULL cursors")?.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "SELECT COUNT(*) {}",
            self.source_where(&format!("{c} IS NULL"))
        );
        let count = first_text(self.planner(), &sql, "counting NULL cursors")?
            .into_iter()
            .next()
            .flatten()
            .unwrap_or_default();
        Err(Error::data(format!(
            "{count} row(s) of {} have a NULL cursor `{}`; an incremental read (`{} > last`) can never deliver them, \
             so the run stops instead of skipping them: give them a cursor value, or exclude them knowingly \
             (`where: \"{} IS NOT NULL\"`, or COALESCE the column in `query`)",
            self.source_name(),
            col.name,
            col.name,
            col.name
        )))
    }

    /// The primary key `lookback` identifies rows by.
    fn lookback_key(&mut self) -> Result<Vec<String>> {
        let pk = self.primary_key()?;
        if pk.is_empty() {
            return Err(
                Error::config("`lookback` needs `primary_key` (the table has none)")
                    .with_key_path("primary_key"),
            );
        }
        Ok(pk)
    }

    /// The hashes of the previous run's `seen` whose rows lie in the new window (above
    /// `above`): this run skips them, and the next one must too.
    fn seen_carried_over(&mut self, col: &Column, c: &str, above: &str) -> Result<Vec<String>> {
        let Some(prev) = self.state.cursor.clone() else {
            return Ok(Vec::new());
        };
        if self.state.seen.is_empty() {
            return Ok(Vec::new());
        }
        let pk = self.lookback_key()?;
        let hashes: Vec<String> = self.state.seen.iter().map(|h| MY.lit(h)).collect();
        let hash = self.row_hash(&pk, &col.name);
        let sql = format!(
            "SELECT {hash} {}",
            self.source_where(&format!(
                "{c} > {} AND {c} <= {} AND {hash} IN ({})",
                MY.lit(above),
                MY.lit(&prev),
                hashes.join(",")
            ))
        );
        self.planner()
            .query(sql)
            .map_err(|e| map_error(e, "carrying the lookback window over"))
    }

    fn cfg(&self) -> &MySqlReaderConfig {
        self.cfg.as_ref().expect("initialized")
    }

    fn planner(&mut self) -> &mut Conn {
        self.planner.as_mut().expect("connected")
    }

    fn source_where(&self, pred: &str) -> String {
        format!("FROM ({}) AS dativo_src WHERE {pred}", self.base)
    }

    fn discover(&mut self) -> Result<()> {
        let cfg = self.cfg().clone();
        let base = match (&cfg.table, &cfg.query) {
            (Some(t), _) => {
                let cols = match &cfg.columns {
                    Some(c) => c.iter().map(|c| MY.ident(c)).collect::<Vec<_>>().join(", "),
                    None => "*".into(),
                };
                let filter = cfg
                    .where_clause
                    .as_ref()
                    .map(|w| format!(" WHERE ({w})"))
                    .unwrap_or_default();
                format!("SELECT {cols} FROM {}{filter}", MY.table_ref(t))
            }
            (None, Some(q)) => q.trim().trim_end_matches(';').to_string(),
            _ => unreachable!("checked"),
        };
        let what = cfg
            .table
            .as_deref()
            .map(|t| format!("table {t}"))
            .unwrap_or_else(|| "the query".into());
        let sql = format!("SELECT * FROM ({base}) AS dativo_src LIMIT 0");
        let conn = self.planner();
        let stmt = conn
            .prep(&sql)
            .map_err(|e| map_error(e, &format!("reading the columns of {what}")))?;
        conn.exec_drop(&stmt, ())
            .map_err(|e| map_error(e, &format!("reading {what}")))?;
        let mut columns = Vec::new();
        let mut unsupported = Vec::new();
        for c in stmt.columns().iter() {
            let name = c.name_str().into_owned();
            match kind_for(c) {
                Ok(kind) => columns.push(Column {
                    select: MY.ident(&name),
                    name,
                    kind,
                }),
                Err(_) if cfg.cast_unsupported_to_text => {
                    let expr = if c.column_type() == mysql::consts::ColumnType::MYSQL_TYPE_GEOMETRY
                    {
                        format!("ST_AsText({})", MY.ident(&name))
                    } else {
                        format!("CAST({} AS CHAR)", MY.ident(&name))
                    };
                    columns.push(Column {
                        select: format!("{expr} AS {}", MY.ident(&name)),
                        name,
                        kind: MyKind::Text,
                    })
                }
                Err(t) => unsupported.push(format!("`{name}` ({t})")),
            }
        }
        if !unsupported.is_empty() {
            return Err(Error::schema(format!(
                "unsupported column type{}: {}; set `cast_unsupported_to_text: true` or cast in `query`",
                if unsupported.len() > 1 { "s" } else { "" },
                unsupported.join(", ")
            )));
        }
        let fields: Vec<_> = columns.iter().map(|c| field_for(&c.name, c.kind)).collect();
        self.schema = Some(Arc::new(Schema::new(fields)));
        self.columns = columns;
        self.base = base;
        Ok(())
    }

    fn column(&self, name: &str, key: &str) -> Result<(usize, Column)> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .map(|i| (i, self.columns[i].clone()))
            .ok_or_else(|| {
                Error::config(format!("column `{name}` is not among the columns read"))
                    .with_key_path(key)
            })
    }

    /// The SQL expression a read is ordered and resumed by. Batches are cut where the key's
    /// value changes, so SQL equality must mean value equality: strings are compared as
    /// BINARY (MySQL's default collations ignore case), and floats and binary columns cannot
    /// order a read.
    fn key_expr(&self, name: &str) -> Result<String> {
        let (_, c) = self.column(name, "partition_column")?;
        match c.kind {
            MyKind::F32 | MyKind::F64 | MyKind::Binary => Err(Error::config(format!(
                "`{name}` cannot order a resumable read: use an integer, decimal, date, datetime or string column"
            ))
            .with_key_path(if self.cfg().cursor.as_deref() == Some(name) { "cursor" } else { "partition_column" })),
            MyKind::Text | MyKind::Json => Ok(format!("BINARY {}", MY.ident(name))),
            _ => Ok(MY.ident(name)),
        }
    }

    /// Restrict the source to one shard by a stable hash (CRC32) of the primary key.
    fn apply_shard(&mut self, shard: dativo_core::Shard) -> Result<()> {
        let mut keys = self.primary_key()?;
        if keys.is_empty() {
            keys = self.cfg().partition_column.iter().cloned().collect();
        }
        if keys.is_empty() {
            return Err(Error::config(
                "this source cannot be sharded: it has no primary key — set `primary_key` or `partition_column`",
            )
            .with_key_path("primary_key"));
        }
        let cols = keys
            .iter()
            .map(|k| format!("COALESCE(CAST({} AS CHAR), '')", MY.ident(k)))
            .collect::<Vec<_>>()
            .join(", ");
        let pred = format!(
            "MOD(CRC32(CONCAT_WS('|', {cols})), {}) = {}",
            shard.count, shard.index
        );
        self.base = format!("SELECT * FROM ({}) AS dativo_shard WHERE {pred}", self.base);
        Ok(())
    }

    fn primary_key(&mut self) -> Result<Vec<String>> {
        if let Some(pk) = &self.cfg().primary_key {
            return Ok(pk.clone());
        }
        let Some(t) = self.cfg().table.clone() else {
            return Ok(Vec::new());
        };
        let (schema, table) = match t.split_once('.') {
            Some((s, t)) => (MY.lit(s), MY.lit(t)),
            None => ("DATABASE()".to_string(), MY.lit(&t)),
        };
        let sql = format!(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = {schema} \
             AND TABLE_NAME = {table} AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION"
        );
        self.planner()
            .query::<String, _>(sql)
            .map_err(|e| map_error(e, "finding the primary key"))
    }

    fn lookback_lo(&self, col: &Column, cursor: &str) -> Result<String> {
        let lb = self.cfg().lookback.clone().expect("lookback set");
        let x = key_number(col.kind, cursor).ok_or_else(|| {
            Error::config(format!("cannot apply a lookback to cursor `{}`", col.name))
                .with_key_path("lookback")
        })?;
        let amount = match (&lb, col.kind) {
            (Json::String(s), MyKind::Date | MyKind::DateTime | MyKind::Timestamp) => {
                let d = humantime::parse_duration(s).map_err(|e| {
                    Error::config(format!("invalid lookback `{s}`: {e}")).with_key_path("lookback")
                })?;
                if col.kind == MyKind::Date {
                    d.as_secs_f64() / 86_400.0
                } else {
                    d.as_micros() as f64
                }
            }
            (Json::Number(n), _)
                if !matches!(
                    col.kind,
                    MyKind::Date | MyKind::DateTime | MyKind::Timestamp
                ) =>
            {
                n.as_f64().unwrap_or(0.0)
            }
            _ => {
                return Err(Error::config(format!(
                    "lookback {lb} does not fit cursor `{}`",
                    col.name
                ))
                .with_key_path("lookback"))
            }
        };
        Ok(key_text(col.kind, x - amount))
    }

    fn row_hash(&self, pk: &[String], cursor: &str) -> String {
        let mut parts: Vec<String> = pk.iter().map(|k| MY.ident(k)).collect();
        parts.push(MY.ident(cursor));
        format!("MD5(CONCAT_WS('|', {}))", parts.join(", "))
    }

    fn points(&self, col: &Column, lo: &str, hi: &str, n: u32) -> Result<Vec<String>> {
        if n <= 1 {
            return Ok(Vec::new());
        }
        let (Some(a), Some(b)) = (key_number(col.kind, lo), key_number(col.kind, hi)) else {
            return Err(Error::config(format!(
                "cannot split the read on `{}`: use a numeric, date or datetime column, or `partitions: 1`",
                col.name
            ))
            .with_key_path("partition_column"));
        };
        Ok((1..n)
            .map(|k| key_text(col.kind, a + (b - a) * k as f64 / n as f64))
            .collect())
    }

    fn new_plan(&mut self) -> Result<Plan> {
        let cfg = self.cfg().clone();
        let n = cfg.partitions;
        match cfg.mode() {
            ReadMode::Incremental => {
                let (_, col) = self.column(cfg.cursor.as_deref().expect("checked"), "cursor")?;
                let c = self.key_expr(&col.name)?;
                self.check_null_cursor(&col, &c)?;
                let (lo, lo_inclusive) = match self.state.cursor.clone() {
                    Some(h) if cfg.lookback.is_some() => (Some(self.lookback_lo(&col, &h)?), false),
                    Some(h) => (Some(h), false),
                    None => {
                        let sql = format!(
                            "SELECT CAST(MIN({c}) AS CHAR) {}",
                            self.source_where(&format!("{c} IS NOT NULL"))
                        );
                        (
                            first_text(self.planner(), &sql, "finding the lowest cursor")?
                                .into_iter()
                                .next()
                                .flatten(),
                            true,
                        )
                    }
                };
                let pred = match &lo {
                    Some(l) if !lo_inclusive => format!("{c} > {}", MY.lit(l)),
                    _ => format!("{c} IS NOT NULL"),
                };
                let sql = format!("SELECT CAST(MAX({c}) AS CHAR) {}", self.source_where(&pred));
                let mut upper = first_text(self.planner(), &sql, "finding the highest cursor")?
                    .into_iter()
                    .next()
                    .flatten();
                if let Some(h) = &self.state.cursor {
                    let below = match &upper {
                        None => true,
                        Some(u) => {
                            key_number(col.kind, u)
                                .zip(key_number(col.kind, h))
                                .is_some_and(|(u, h)| u < h)
                                || (key_number(col.kind, u).is_none() && u.as_str() < h.as_str())
                        }
                    };
                    if below {
                        upper = if cfg.lookback.is_some() {
                            Some(h.clone())
                        } else {
                            None
                        };
                    }
                }
                let ranges = match (&lo, &upper) {
                    (Some(l), Some(u)) => {
                        let points = self.points(&col, l, u, n)?;
                        split_ranges(Some(l.clone()), lo_inclusive, Some(u.clone()), &points)
                    }
                    _ => Vec::new(),
                };
                let (seen_above, seen) = match &upper {
                    Some(u) if cfg.lookback.is_some() => {
                        let above = self.lookback_lo(&col, u)?;
                        let seen = self.seen_carried_over(&col, &c, &above)?;
                        (Some(above), seen)
                    }
                    _ => (None, Vec::new()),
                };
                Ok(Plan {
                    mode: "incremental".into(),
                    column: Some(col.name),
                    upper,
                    ranges,
                    delivered: 0,
                    seen_above,
                    seen,
                })
            }
            ReadMode::FullRefresh => {
                let order = match &cfg.partition_column {
                    Some(p) => Some(p.clone()),
                    None => {
                        let pk = self.primary_key()?;
                        (pk.len() == 1).then(|| pk[0].clone())
                    }
                };
                let Some(order) = order else {
                    if n > 1 {
                        return Err(Error::config("`partitions` needs `partition_column` (no single-column primary key was found)")
                            .with_key_path("partition_column"));
                    }
                    let all = KeyRange {
                        lo: None,
                        lo_inclusive: false,
                        hi: None,
                        nulls: false,
                        after: None,
                        finished: false,
                    };
                    return Ok(Plan {
                        mode: "full_refresh".into(),
                        column: None,
                        upper: None,
                        ranges: vec![all],
                        delivered: 0,
                        seen_above: None,
                        seen: Vec::new(),
                    });
                };
                let (_, col) = self.column(&order, "partition_column")?;
                let c = self.key_expr(&col.name)?;
                let bound = |v: &Option<Json>| {
                    v.as_ref().map(|v| match v {
                        Json::String(s) => s.clone(),
                        o => o.to_string(),
                    })
                };
                let (mut lo, mut hi) = (bound(&cfg.lower_bound), bound(&cfg.upper_bound));
                if n > 1 && (lo.is_none() || hi.is_none()) {
                    let sql = format!(
                        "SELECT CAST(MIN({c}) AS CHAR), CAST(MAX({c}) AS CHAR) {}",
                        self.source_where("1=1")
                    );
                    let r = first_text(self.planner(), &sql, "finding the partition bounds")?;
                    lo = lo.or(r.first().cloned().flatten());
                    hi = hi.or(r.get(1).cloned().flatten());
                }
                let points = match (&lo, &hi) {
                    (Some(l), Some(h)) => self.points(&col, l, h, n)?,
                    _ => Vec::new(),
                };
                let mut ranges = split_ranges(None, false, None, &points);
                let sql = format!(
                    "SELECT 1 {} LIMIT 1",
                    self.source_where(&format!("{c} IS NULL"))
                );
                if !first_text(self.planner(), &sql, "checking for NULL keys")?.is_empty() {
                    ranges.push(KeyRange {
                        lo: None,
                        lo_inclusive: false,
                        hi: None,
                        nulls: true,
                        after: None,
                        finished: false,
                    });
                }
                Ok(Plan {
                    mode: "full_refresh".into(),
                    column: Some(col.name),
                    upper: None,
                    ranges,
                    delivered: 0,
                    seen_above: None,
                    seen: Vec::new(),
                })
            }
        }
    }

    /// Open the planner and `n` worker connections on one consistent snapshot.
    fn open_snapshot(&mut self, n: usize) -> Result<()> {
        let cfg = self.cfg().clone();
        let start = "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY";
        let mut locker = None;
        if n > 1 {
            let mut l = connect(&cfg)?;
            let lock = match &cfg.table {
                Some(t) => format!("LOCK TABLES {} READ", MY.table_ref(t)),
                None => "FLUSH TABLES WITH READ LOCK".into(),
            };
            l.query_drop(&lock).map_err(|e| {
                map_error(e, "locking the source briefly to start one snapshot on every connection (needs LOCK TABLES, or RELOAD for a query)")
            })?;
            locker = Some(l);
        }
        let mut planner = connect(&cfg)?;
        planner
            .query_drop(start)
            .map_err(|e| map_error(e, "starting the snapshot"))?;
        let mut workers = Vec::new();
        for _ in 0..n {
            let mut w = connect(&cfg)?;
            w.query_drop(start)
                .map_err(|e| map_error(e, "starting the snapshot"))?;
            workers.push(w);
        }
        if let Some(mut l) = locker {
            l.query_drop("UNLOCK TABLES")
                .map_err(|e| map_error(e, "unlocking"))?;
        }
        self.planner = Some(planner);
        self.workers = workers;
        Ok(())
    }

    fn start(&mut self) -> Result<()> {
        self.started = true;
        let plan = self.plan.clone().expect("planned");
        let pending: Vec<(usize, KeyRange)> = plan
            .ranges
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, r)| !r.finished)
            .collect();
        // One batch queued per worker: with wide rows every batch in flight is `batch_bytes`.
        let (tx, rx) = bounded::<PartMsg>(self.workers.len().max(1));
        self.rx = Some(rx);
        let mut select: Vec<String> = self.columns.iter().map(|c| c.select.clone()).collect();
        // With `lookback`, each row in the window also carries its hash (keyset.rs, `lookback`).
        let seen_col = match (&plan.seen_above, &plan.column) {
            (Some(above), Some(col)) => {
                let c = self.key_expr(col)?;
                let pk = self.lookback_key()?;
                let hash = self.row_hash(&pk, col);
                select.push(format!("CASE WHEN {c} > {} THEN {hash} END", MY.lit(above)));
                true
            }
            _ => false,
        };
        let nw = self.workers.len().max(1);
        let mut assigned: Vec<Vec<(usize, String)>> = vec![Vec::new(); nw];
        for (k, (i, range)) in pending.into_iter().enumerate() {
            let sql = match &plan.column {
                Some(col) => {
                    let c = self.key_expr(col)?;
                    let mut pred = range.predicate(MY, &c);
                    if let Some(ex) = &self.exclude {
                        pred = format!("({pred}) AND {ex}");
                    }
                    format!(
                        "SELECT {} {} ORDER BY {c}",
                        select.join(", "),
                        self.source_where(&pred)
                    )
                }
                None => format!("SELECT {} {}", select.join(", "), self.source_where("1=1")),
            };
            assigned[k % nw].push((i, sql));
        }
        let kinds: Vec<MyKind> = self.columns.iter().map(|c| c.kind).collect();
        let names: Vec<String> = self.columns.iter().map(|c| c.name.clone()).collect();
        for (w, mut conn) in std::mem::take(&mut self.workers).into_iter().enumerate() {
            let work = std::mem::take(&mut assigned[w]);
            let ctx = Worker {
                kinds: kinds.clone(),
                names: names.clone(),
                schema: self.schema.clone().expect("schema"),
                key: self.order_col,
                bound: BatchBound {
                    rows: self.cfg().batch_size,
                    bytes: self.cfg().batch_bytes.0 as usize,
                },
                seen_col,
                source: self.source_name(),
                tx: tx.clone(),
                stop: self.stop.clone(),
            };
            std::thread::Builder::new()
                .name(format!("dativo-mysql-{w}"))
                .spawn(move || {
                    for (range, sql) in work {
                        if let Err(e) = ctx.read(&mut conn, range, &sql) {
                            let _ = ctx.tx.send(PartMsg::Failed(e));
                            return;
                        }
                    }
                })
                .map_err(|e| Error::internal(format!("cannot start a reader thread: {e}")))?;
        }
        Ok(())
    }

    fn finish_state(&mut self) -> Result<()> {
        let plan = self.plan.take().expect("planned");
        let cfg = self.cfg().clone();
        let mut next = KeysetState::default();
        if plan.mode == "incremental" {
            next.cursor = plan.upper.clone().or(self.state.cursor.clone());
            if plan.seen_above.is_some() {
                // The rows this plan delivered (or skipped as delivered) in the window.
                next.seen = plan.seen;
                next.seen.sort();
                next.seen.dedup();
            } else if let (Some(_), Some(cursor)) = (&cfg.lookback, next.cursor.clone()) {
                // A plan stored by an older version: the window as this snapshot sees it.
                let (_, col) = self.column(cfg.cursor.as_deref().expect("checked"), "cursor")?;
                let pk = self.lookback_key()?;
                let lo = self.lookback_lo(&col, &cursor)?;
                let c = self.key_expr(&col.name)?;
                let sql = format!(
                    "SELECT {} {}",
                    self.row_hash(&pk, &col.name),
                    self.source_where(&format!(
                        "{c} > {} AND {c} <= {}",
                        MY.lit(&lo),
                        MY.lit(&cursor)
                    ))
                );
                let mut seen: Vec<String> = self
                    .planner()
                    .query(sql)
                    .map_err(|e| map_error(e, "recording the lookback window"))?;
                seen.sort();
                next.seen = seen;
            }
        } else {
            next.last_full_refresh = Some(self.run_id.clone());
        }
        self.state = next;
        self.finished = true;
        Ok(())
    }
}

struct Worker {
    kinds: Vec<MyKind>,
    names: Vec<String>,
    schema: SchemaRef,
    key: Option<usize>,
    bound: BatchBound,
    /// The row's last column is the `lookback` hash, not part of the batch.
    seen_col: bool,
    /// `table t` or `the query`, for messages.
    source: String,
    tx: Sender<PartMsg>,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn read(&self, conn: &mut Conn, range: usize, sql: &str) -> Result<()> {
        let mut decoders: Vec<MyDecoder> = self
            .kinds
            .iter()
            .map(|k| MyDecoder::new(*k, self.bound.rows))
            .collect();
        let mut seen: Vec<String> = Vec::new();
        let stmt = conn
            .prep(sql)
            .map_err(|e| map_error(e, "preparing the read"))?;
        let result = conn
            .exec_iter(&stmt, ())
            .map_err(|e| map_error(e, "reading"))?;
        let mut rows = 0usize;
        let mut bytes = 0usize;
        let mut last_key: Option<Value> = None;
        for (row_no, row) in result.enumerate() {
            let row = row.map_err(|e| map_error(e, "reading rows"))?;
            let full = self.bound.full(rows, bytes);
            if let Some(k) = self.key {
                let v = row.as_ref(k).unwrap_or(&Value::NULL);
                if full && last_key.as_ref() != Some(v) {
                    self.emit(&mut decoders, &mut seen, range, false)?;
                    rows = 0;
                    bytes = 0;
                }
                last_key = Some(v.clone());
            } else if full {
                self.emit(&mut decoders, &mut seen, range, false)?;
                rows = 0;
                bytes = 0;
            }
            for (i, d) in decoders.iter_mut().enumerate() {
                let v = row.as_ref(i).unwrap_or(&Value::NULL);
                d.append(v).map_err(|m| {
                    Error::data(format!(
                        "{}, column `{}`, row {}: {m}",
                        self.source,
                        self.names[i],
                        row_no + 1
                    ))
                })?;
                bytes += match v {
                    Value::Bytes(b) => 4 + b.len(),
                    _ => 8,
                };
            }
            if self.seen_col {
                if let Some(Value::Bytes(h)) = row.as_ref(decoders.len()) {
                    seen.push(String::from_utf8_lossy(h).into_owned());
                }
            }
            rows += 1;
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        if rows > 0 {
            self.emit(&mut decoders, &mut seen, range, true)?;
        } else {
            let _ = self.tx.send(PartMsg::Done(range));
        }
        Ok(())
    }

    fn emit(
        &self,
        decoders: &mut [MyDecoder],
        seen: &mut Vec<String>,
        range: usize,
        last: bool,
    ) -> Result<()> {
        let arrays: Vec<_> = decoders.iter_mut().map(|d| d.finish()).collect();
        let key = match self.key {
            Some(k) if !arrays[k].is_empty() && !arrays[k].is_null(arrays[k].len() - 1) => {
                Some(key_literal(arrays[k].as_ref(), arrays[k].len() - 1, false)?)
            }
            _ => None,
        };
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        let _ = self.tx.send(PartMsg::Batch {
            range,
            batch,
            key,
            last,
            seen: std::mem::take(seen),
        });
        Ok(())
    }
}

impl Reader for MySqlReader {
    fn initialize(&mut self, config: &Json, ctx: &ReaderContext) -> Result<()> {
        let cfg: MySqlReaderConfig = from_config(config)?;
        cfg.check()?;
        check_batch_bytes(cfg.batch_bytes.0)?;
        let state: KeysetState = match &ctx.state {
            Some(s) if cfg.mode() == ReadMode::Incremental || s.get("plan").is_some() => serde_json::from_value(s.clone())
                .map_err(|e| Error::data(format!("the stored state is not a mysql reader state ({e}); reset it with `dativo state reset`")))?,
            _ => KeysetState::default(),
        };
        let n = cfg.partitions as usize;
        self.cfg = Some(cfg);
        self.run_id = ctx.run_id.clone();
        self.open_snapshot(n)?;
        self.discover()?;
        if ctx.shard.count > 1 {
            self.apply_shard(ctx.shard)?;
        }
        self.state = state;
        let plan = match self.state.plan.take() {
            Some(p) => {
                p.check_resumable()?;
                p
            }
            None => self.new_plan()?,
        };
        self.order_col = match &plan.column {
            Some(c) => {
                self.key_expr(c)?;
                Some(self.column(c, "partition_column")?.0)
            }
            None => None,
        };
        if plan.mode == "incremental" && !self.state.seen.is_empty() {
            let pk = self.primary_key()?;
            let cursor = self.cfg().cursor.clone().expect("checked");
            let hashes: Vec<String> = self.state.seen.iter().map(|h| MY.lit(h)).collect();
            self.exclude = Some(format!(
                "({} > {} OR {} NOT IN ({}))",
                MY.ident(&cursor),
                MY.lit(self.state.cursor.as_deref().unwrap_or("")),
                self.row_hash(&pk, &cursor),
                hashes.join(",")
            ));
        }
        self.plan = Some(plan);
        Ok(())
    }

    fn get_schema(&mut self) -> Result<SchemaRef> {
        self.schema
            .clone()
            .ok_or_else(|| Error::internal("get_schema before initialize"))
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.finished {
            return Ok(None);
        }
        if !self.started {
            self.start()?;
        }
        loop {
            let plan = self.plan.as_mut().expect("planned");
            if plan.pending() == 0 {
                self.finish_state()?;
                return Ok(None);
            }
            if let Some(batch) = plan.receive(self.rx.as_ref().expect("started"))? {
                return Ok(Some(batch));
            }
        }
    }

    fn get_incremental_state(&mut self) -> Result<Option<Json>> {
        let mut s = self.state.clone();
        if !self.finished {
            s.plan = self.plan.clone();
        }
        Ok(Some(serde_json::to_value(s)?))
    }

    fn close(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.rx = None;
        self.planner = None;
        self.workers.clear();
        Ok(())
    }
}
