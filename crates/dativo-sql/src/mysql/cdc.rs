//! `mode: cdc` on the `mysql` reader: change data capture from the row-based binary log of
//! MySQL or MariaDB.
//!
//! * **Start** (no state): the table is read-locked for a moment (`LOCK TABLES … READ`), the
//!   binlog position is taken (`SHOW MASTER STATUS`) and the snapshot reader's connections
//!   start their consistent snapshots, then the lock is released. No change to the table
//!   can fall between the position and the snapshot, so the snapshot (every row with
//!   `_dativo_op = 'R'`) is the table exactly at that position. It is read by the ordinary
//!   keyset reader (partitions, resumable).
//! * **Streaming** asks the server for its binlog from that position, as a replica does
//!   (`COM_BINLOG_DUMP` with this job's `server_id`). Inserts (`I`), updates (`U`; an
//!   update that changes the key also deletes the old key, `D`) and deletes (`D`, the whole
//!   old row: `binlog_row_image = FULL`) of the table arrive in commit order.
//! * **State** = the snapshot's progress, then the binlog position after the last
//!   transaction delivered completely, plus how many changes of the transaction that starts
//!   there were delivered when a batch cut it. A replayed transaction is identical, so
//!   skipping that many resumes exactly.
//! * **Positions** are file and offset (`binlog.000042:1337`), kept with the `server_id` of
//!   the server they are of. On MariaDB the state also holds the equal GTID position: when
//!   the job reaches another server (a failover), streaming resumes there by GTID. MySQL's
//!   GTIDs are not used: on another MySQL server the run stops.
//! * **Schema changes**: the binlog gives a row's values by column position (or by name
//!   with `binlog_row_metadata = FULL`). A row with a column the run does not know ends the
//!   run before it; the next run reads the new column. Rows logged before a column was
//!   added at the end have NULL there.
//! * **TRUNCATE** of the table is one change row, `_dativo_op = 'T'`, every other column
//!   NULL (a merge target removes every row before it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use mysql::binlog::events::{Event, EventData, RowsEventData, TableMapEvent};
use mysql::binlog::value::BinlogValue;
use mysql::consts::{ColumnFlags, ColumnType};
use mysql::prelude::Queryable;
use mysql::{BinlogRequest, BinlogStream, Conn, Opts, Value};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use dativo_core::{Delivery, Error, OpenReader, ReaderContext, ReaderControl, Result, StreamInfo};

use super::dialect::{driver_opts, map_error, MySql, MySqlOptions};
use super::types::{field_for, kind_for, MyDecoder, MyKind};
pub use crate::cdc::is_cdc;
use crate::cdc::{default_heartbeat, yes, ChangeColumns, Every, FLUSH, MEASURE_EVERY, TRUNCATE_OP};
use crate::keyset::{load, Dialect, SqlSource};

/// The `cdc` keys beside the reader's usual ones.
const CDC_KEYS: &[&str] = &["follow", "heartbeat", "server_id"];

/// `mode: cdc` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CdcOptions {
    /// Keep following the binlog (default); `false`: stop once caught up with the position
    /// the run started at (`dativo run --once` sets it).
    #[serde(default = "yes")]
    follow: bool,
    /// With no change to the table for this long while the binlog moved on (other
    /// tables), the state moves to the binlog's position and is committed, so a job whose
    /// table is quiet does not fall behind the server's binlog expiry (default 1m).
    #[serde(default = "default_heartbeat")]
    heartbeat: dativo_core::config::DurationValue,
    /// The replica id this job registers with (unique among the server's replicas and
    /// different from its `server_id`; default: derived from the job's name).
    #[serde(default)]
    server_id: Option<u32>,
}

fn split(config: &Json) -> Result<(CdcOptions, Json)> {
    let (cdc, rest) = crate::cdc::split(config, CDC_KEYS)?;
    let opts: CdcOptions = dativo_core::config::from_config(&cdc)?;
    Ok((opts, rest))
}

/// A default replica id for a job: stable, in the upper half of the id space, where
/// servers' own ids rarely are.
fn default_server_id(job: &str) -> u32 {
    // FNV-1a: stable across builds and platforms.
    let h = job.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x0100_0193)
    });
    0x8000_0000 | (h & 0x7fff_ffff)
}

/// A binlog position: the file and the offset in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct BinPos {
    file: String,
    pos: u64,
}

impl BinPos {
    /// The file's sequence number (`binlog.000042` → 42).
    fn file_no(&self) -> u64 {
        self.file
            .rsplit('.')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// An order-preserving number: file number × 2³² + offset.
    fn number(&self) -> i64 {
        ((self.file_no() << 32) | (self.pos & 0xffff_ffff)) as i64
    }

    fn key(&self) -> (u64, u64) {
        (self.file_no(), self.pos)
    }

    fn text(&self) -> String {
        format!("{}:{}", self.file, self.pos)
    }

    fn parse(s: &str) -> Result<BinPos> {
        let (f, p) = s
            .rsplit_once(':')
            .and_then(|(f, p)| p.parse().ok().map(|p| (f, p)))
            .ok_or_else(|| {
                Error::data(format!(
                    "the stored binlog position `{s}` is unreadable; `dativo state reset`"
                ))
            })?;
        Ok(BinPos {
            file: f.to_string(),
            pos: p,
        })
    }

    /// Move forward to `other` if it is later.
    fn advance(&mut self, other: BinPos) {
        if other.key() > self.key() {
            *self = other;
        }
    }
}

/// The state of a MySQL CDC stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CdcState {
    /// The binlog position the snapshot is consistent with: streaming starts here.
    start: String,
    /// The snapshot reader's state while the snapshot is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<Json>,
    /// The initial snapshot was delivered completely.
    #[serde(default)]
    snapshot_done: bool,
    /// Every transaction before this position was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<String>,
    /// Changes delivered of the transaction that starts at `position` (a batch cut it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<u64>,
    /// The source commit time (µs since 1970) of the last change delivered, while the table
    /// has changes in flight. Monitoring reads the lag from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_commit_us: Option<i64>,
    /// Binlog bytes the server wrote after `position`, as last measured (every 10 s while
    /// streaming). Monitoring only: `dativo_cdc_behind_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    behind_bytes: Option<i64>,
    /// The `server_id` of the server whose binlog `start` and `position` are in (file
    /// positions mean nothing on another server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_id: Option<u32>,
    /// MariaDB: the GTID position (`domain-server-sequence`, one per replication domain)
    /// equal to `start`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    start_gtid: Option<String>,
    /// MariaDB: the GTID position equal to `position`: where streaming resumes on another
    /// server of the replication topology (after a failover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gtid: Option<String>,
    /// MariaDB: the GTID of the transaction `partial` counts changes of. A stream resumed by
    /// GTID on another server can deliver other domains' transactions before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial_gtid: Option<String>,
}

impl CdcState {
    fn to_value(&self) -> Json {
        crate::cdc::state_value(self)
    }

    fn from_value(v: &Json) -> Result<CdcState> {
        crate::cdc::state_from(v)
    }

    /// Where streaming resumes.
    fn resume(&self) -> Result<BinPos> {
        BinPos::parse(self.position.as_deref().unwrap_or(&self.start))
    }

    /// The GTID position equal to [`CdcState::resume`], when the server has GTIDs.
    fn resume_gtid(&self) -> Option<&str> {
        match &self.position {
            Some(_) => self.gtid.as_deref(),
            None => self.start_gtid.as_deref(),
        }
    }
}

/// A MariaDB GTID position: per replication domain, the last transaction's server id and
/// sequence number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Gtids(std::collections::BTreeMap<u32, (u32, u64)>);

impl Gtids {
    /// `0-1-42,1-2-7` (as `@@gtid_binlog_pos` shows it); empty for an empty text.
    fn parse(text: &str) -> Result<Gtids> {
        let mut out = Gtids::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let nums: Vec<u64> = part.split('-').filter_map(|n| n.parse().ok()).collect();
            match nums[..] {
                [d, s, n] if d <= u32::MAX as u64 && s <= u32::MAX as u64 => {
                    out.0.insert(d as u32, (s as u32, n));
                }
                _ => {
                    return Err(Error::data(format!(
                        "the GTID position `{text}` is unreadable (`{part}` is not domain-server-sequence)"
                    )))
                }
            }
        }
        Ok(out)
    }

    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(d, (s, n))| format!("{d}-{s}-{n}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// One GTID, `domain-server-sequence`.
fn parse_one_gtid(text: &str) -> Result<(u32, u32, u64)> {
    let g = Gtids::parse(text)?;
    match g.0.iter().next() {
        Some((d, (s, n))) if g.0.len() == 1 => Ok((*d, *s, *n)),
        _ => Err(Error::data(format!("`{text}` is not one GTID"))),
    }
}

/// What a MariaDB GTID event (type 0xa2) says: (domain, sequence number). The server id is
/// the event header's.
fn mariadb_gtid(data: &[u8]) -> Option<(u32, u64)> {
    let seq = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let domain = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    Some((domain, seq))
}

/// The server's GTID position (MariaDB's `@@gtid_binlog_pos`); `None` where there is none
/// (MySQL, or MariaDB before its first transaction).
fn gtid_position(c: &mut Conn) -> Option<String> {
    let v: Option<Option<String>> = c.query_first("SELECT @@gtid_binlog_pos").ok()?;
    v.flatten().filter(|s| !s.is_empty())
}

/// The server's `server_id`.
fn source_server_id(c: &mut Conn) -> Result<u32> {
    let v: Option<u32> = c
        .query_first("SELECT @@server_id")
        .map_err(|e| map_error(e, "reading the server's server_id"))?;
    Ok(v.unwrap_or_default())
}

/// What the runtime tells the reader: stop.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
}

impl ReaderControl for Control {
    fn committed(&self, _state: &Json) {}

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A table column: its name and how its binlog values decode.
#[derive(Debug, Clone)]
struct Col {
    name: String,
    kind: MyKind,
    unsigned: bool,
    /// ENUM or SET members in order (the binlog logs an index or a bitmap).
    members: Option<(bool, Vec<String>)>,
    /// Text stored as latin1 (the binlog holds the stored bytes).
    latin1: bool,
}

/// The `mysql` reader in `mode: cdc`.
pub struct MyCdcReader {
    schema: SchemaRef,
    /// The table's columns in their order in the table.
    all: Vec<String>,
    /// The columns delivered (`columns:` may select some).
    cols: Vec<Col>,
    /// The primary key's columns among `cols`.
    key: Vec<usize>,
    info: StreamInfo,
    state: CdcState,
    control: Arc<Control>,
    phase: Phase,
    batch_rows: usize,
    batch_bytes: usize,
    pending: Option<Pending>,
}

enum Phase {
    Snapshot(Box<SqlSource<MySql>>),
    Stream(Box<Streamer>),
    Done,
}

/// What the snapshot phase needs to start streaming.
struct Pending {
    opts: Opts,
    what: String,
    cdc: CdcOptions,
    server_id: u32,
    db: String,
    table: String,
    /// The server's own `server_id`.
    source_id: u32,
    /// Resume by GTID: the state's file position is another server's.
    by_gtid: bool,
}

fn snap_ctx(ctx: &ReaderContext, state: Option<Json>) -> ReaderContext {
    ReaderContext {
        state,
        ..ctx.clone()
    }
}

/// The server's current binlog position (`SHOW MASTER STATUS`, renamed in MySQL 8.4).
fn master_position(c: &mut Conn) -> Result<BinPos> {
    let rows: Vec<mysql::Row> = match c.query("SHOW MASTER STATUS") {
        Ok(r) => r,
        Err(_) => c.query("SHOW BINARY LOG STATUS").map_err(|e| {
            map_error(
                e,
                "reading the binlog position (SHOW MASTER STATUS needs the REPLICATION CLIENT / BINLOG MONITOR privilege)",
            )
        })?,
    };
    let row = rows.into_iter().next().ok_or_else(|| {
        Error::config(
            "the server writes no binary log (SHOW MASTER STATUS is empty): start it with \
             `log_bin` (and binlog_format=ROW, binlog_row_image=FULL)",
        )
        .with_key_path("mode")
    })?;
    let file: String = row.get(0).unwrap_or_default();
    let pos: u64 = row.get(1).unwrap_or_default();
    Ok(BinPos { file, pos })
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('`').to_string()
}

/// `enum('a','b''c')` → its members.
fn members_of(column_type: &str) -> Option<(bool, Vec<String>)> {
    let lower = column_type.to_ascii_lowercase();
    let is_set = lower.starts_with("set(");
    if !is_set && !lower.starts_with("enum(") {
        return None;
    }
    let inner = &column_type[column_type.find('(')? + 1..column_type.rfind(')')?];
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = inner.chars().peekable();
    while let Some(ch) = chars.next() {
        match (ch, quoted) {
            ('\'', false) => quoted = true,
            ('\'', true) if chars.peek() == Some(&'\'') => {
                chars.next();
                cur.push('\'');
            }
            ('\'', true) => {
                quoted = false;
                out.push(std::mem::take(&mut cur));
            }
            ('\\', true) => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            (c, true) => cur.push(c),
            _ => {}
        }
    }
    Some((is_set, out))
}

impl MyCdcReader {
    /// Check a `mode: cdc` config without I/O.
    pub fn validate(config: &Json) -> Result<()> {
        let (_, rest) = split(config)?;
        SqlSource::<MySql>::validate(&rest).map_err(|e| crate::cdc::with_cdc_keys(e, CDC_KEYS))
    }

    /// Connect: start (position, snapshot) or resume from `ctx.state`.
    pub fn open(config: &Json, ctx: &ReaderContext) -> Result<MyCdcReader> {
        let (opts, rest) = split(config)?;
        Self::validate(config)?;
        if ctx.shard.count > 1 {
            return Err(Error::config(
                "`mode: cdc` cannot be sharded: one binlog stream delivers the table's changes in order",
            ));
        }
        let cfg = load::<MySqlOptions>(&rest)?;
        let table = cfg.shared.table.clone().unwrap_or_default();
        let (dopts, what) = driver_opts(&cfg.connection)?;
        let mut conn = Conn::new(dopts.clone())
            .map_err(|e| map_error(e, &format!("connecting to MySQL at {what}")))?;
        // The binlog must hold whole rows.
        let vars: Option<(Option<String>, Option<String>, Option<String>)> = conn
            .query_first("SELECT CAST(@@log_bin AS CHAR), @@binlog_format, @@binlog_row_image")
            .map_err(|e| map_error(e, "reading the binlog settings"))?;
        let (log_bin, format, image) = vars.unwrap_or_default();
        if !matches!(log_bin.as_deref(), Some("1") | Some("ON")) {
            return Err(Error::config(format!(
                "`mode: cdc` reads the binary log, and the server at {what} writes none: start it \
                 with `log_bin` (e.g. `--log-bin=mysql-bin --binlog-format=ROW --server-id=1`)"
            ))
            .with_key_path("mode"));
        }
        if format.as_deref() != Some("ROW") {
            return Err(Error::config(format!(
                "`mode: cdc` needs row-based binary logging, and the server's binlog_format is `{}`: \
                 set `binlog_format = ROW` in the server's configuration (and `SET GLOBAL \
                 binlog_format = 'ROW'` for sessions started from now)",
                format.unwrap_or_default()
            ))
            .with_key_path("mode"));
        }
        if image.as_deref().is_some_and(|i| i != "FULL") {
            return Err(Error::config(format!(
                "`mode: cdc` needs whole rows in the binary log, and the server's binlog_row_image \
                 is `{}`: set `binlog_row_image = FULL`",
                image.unwrap_or_default()
            ))
            .with_key_path("mode"));
        }
        let (db, name) = match table.rsplit_once('.') {
            Some((s, t)) => (unquote(s), unquote(t)),
            None => {
                let d: Option<Option<String>> = conn
                    .query_first("SELECT DATABASE()")
                    .map_err(|e| map_error(e, "reading the database"))?;
                (
                    d.flatten().ok_or_else(|| {
                        Error::config(format!(
                            "table `{table}` names no database and the connection has none: write `db.{table}`"
                        ))
                        .with_key_path("table")
                    })?,
                    unquote(&table),
                )
            }
        };
        let table_ref = format!("{}.{}", MySql::ident(&db), MySql::ident(&name));
        // Columns: how the snapshot reader reads them, and the catalog's details.
        let stmt = conn
            .prep(format!("SELECT * FROM {table_ref} LIMIT 0"))
            .map_err(|e| map_error(e, &format!("reading the columns of {table}")))?;
        let catalog: Vec<(String, String, Option<String>, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, COLUMN_TYPE, CHARACTER_SET_NAME, COLUMN_KEY FROM information_schema.COLUMNS \
                 WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&db, &name),
            )
            .map_err(|e| map_error(e, &format!("reading the columns of {table}")))?;
        let pk: Vec<String> = conn
            .exec(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE TABLE_SCHEMA = ? \
                 AND TABLE_NAME = ? AND CONSTRAINT_NAME = 'PRIMARY' ORDER BY ORDINAL_POSITION",
                (&db, &name),
            )
            .map_err(|e| map_error(e, &format!("reading the primary key of {table}")))?;
        if pk.is_empty() {
            return Err(Error::config(format!(
                "table {table} has no primary key: a delete or update in the binlog would not say which \
                 row of the lake it changes. Add a primary key to the table"
            ))
            .with_key_path("table"));
        }
        let all: Vec<String> = stmt
            .columns()
            .iter()
            .map(|c| c.name_str().into_owned())
            .collect();
        let mut cols = Vec::new();
        for c in stmt.columns().iter() {
            let cname = c.name_str().into_owned();
            let kind = kind_for(c).map_err(|t| {
                Error::schema(format!(
                    "column `{cname}` of {table} has type {t}, which `mode: cdc` cannot read; \
                     exclude it with `columns:` or change its type"
                ))
            })?;
            let cat = catalog.iter().find(|r| r.0 == cname);
            let charset = cat.and_then(|r| r.2.as_deref());
            if let Some(cs) = charset {
                if !matches!(
                    cs,
                    "utf8" | "utf8mb3" | "utf8mb4" | "ascii" | "binary" | "latin1"
                ) {
                    return Err(Error::schema(format!(
                        "column `{cname}` of {table} is stored as {cs}, and `mode: cdc` reads text \
                         from the binlog as UTF-8 (or latin1): convert the column (`ALTER TABLE … CONVERT TO \
                         CHARACTER SET utf8mb4`) or exclude it with `columns:`"
                    )));
                }
            }
            cols.push(Col {
                name: cname,
                kind,
                unsigned: c.flags().contains(ColumnFlags::UNSIGNED_FLAG),
                members: cat.and_then(|r| members_of(&r.1)),
                latin1: charset == Some("latin1"),
            });
        }
        if let Some(sel) = &cfg.shared.columns {
            for k in &pk {
                if !sel.contains(k) {
                    return Err(Error::config(format!(
                        "`columns:` leaves out primary key column `{k}`, which `mode: cdc` needs to apply changes"
                    ))
                    .with_key_path("columns"));
                }
            }
            cols.retain(|c| sel.contains(&c.name));
        }
        let key = pk
            .iter()
            .filter_map(|k| cols.iter().position(|c| &c.name == k))
            .collect();
        let mut fields: Vec<Field> = cols.iter().map(|c| field_for(&c.name, c.kind)).collect();
        fields.extend(crate::cdc::change_fields());
        let schema = Arc::new(Schema::new(fields));
        let server_id = opts
            .server_id
            .unwrap_or_else(|| default_server_id(&ctx.job));
        let source_id = source_server_id(&mut conn)?;
        let mut reader = MyCdcReader {
            schema,
            all,
            cols,
            key,
            info: StreamInfo {
                primary_key: pk.clone(),
                not_null: Vec::new(),
                delivery: Delivery::Incremental,
                estimated_rows: None,
            },
            state: CdcState::default(),
            control: Arc::new(Control::default()),
            phase: Phase::Done,
            batch_rows: cfg.shared.batch_size,
            batch_bytes: cfg.shared.batch_bytes.0 as usize,
            pending: Some(Pending {
                opts: dopts,
                what,
                cdc: opts,
                server_id,
                db,
                table: name,
                source_id,
                by_gtid: false,
            }),
        };
        match ctx.state.as_ref().map(CdcState::from_value).transpose()? {
            None => {
                // The table stays unchanged while the position is read and the snapshot
                // connections start: the snapshot is the table at that position.
                conn.query_drop(format!("LOCK TABLES {table_ref} READ"))
                    .map_err(|e| {
                        map_error(
                            e,
                            &format!(
                                "locking {table} for a moment to take a snapshot consistent with the binlog \
                                 (needs the LOCK TABLES privilege)"
                            ),
                        )
                    })?;
                let start = master_position(&mut conn);
                let start_gtid = gtid_position(&mut conn);
                let src = start.and_then(|p| {
                    SqlSource::<MySql>::open(&rest, &snap_ctx(ctx, None)).map(|s| (p, s))
                });
                let unlocked = conn.query_drop("UNLOCK TABLES");
                let (start, src) = src?;
                unlocked.map_err(|e| map_error(e, "unlocking"))?;
                tracing::info!(position = %start.text(), gtid = start_gtid.as_deref().unwrap_or("-"), server_id, "binlog position taken; reading the initial snapshot");
                reader.state = CdcState {
                    start: start.text(),
                    server_id: Some(source_id),
                    start_gtid,
                    ..CdcState::default()
                };
                reader.check_schema(&src)?;
                reader.phase = Phase::Snapshot(Box::new(src));
            }
            Some(st) => {
                let from = st.resume()?;
                let moved = st.server_id.is_some_and(|id| id != source_id);
                if moved {
                    let was = st.server_id.unwrap_or_default();
                    let Some(gtid) = st.resume_gtid() else {
                        return Err(Error::config(format!(
                            "job `{}` followed the binlog of the server with server_id {was}, and {} is \
                             server {source_id}: a binlog file position means nothing on another server, \
                             and the job's state has no GTID position to resume from (MySQL GTIDs are not \
                             supported yet). Point the job back at server {was}, or `dativo state reset` the \
                             job and clear the target to start over",
                            ctx.job, reader.pending.as_ref().map_or("", |p| p.what.as_str())
                        ))
                        .with_key_path("url"));
                    };
                    Gtids::parse(gtid)?;
                    tracing::warn!(
                        was,
                        now = source_id,
                        gtid,
                        "the server changed (a failover?): resuming from the job's GTID position"
                    );
                    if let Some(p) = reader.pending.as_mut() {
                        p.by_gtid = true;
                    }
                }
                let logs =
                    binary_logs(&mut conn).map_err(|e| map_error(e, "listing the binary logs"))?;
                if !moved && !logs.iter().any(|(name, _)| *name == from.file) {
                    return Err(Error::config(format!(
                        "binlog file `{}` that job `{}` resumes from is gone from the server (purged by \
                         binlog_expire_logs_seconds / expire_logs_days, or another server): the changes \
                         since the last commit are lost to it. `dativo state reset` the job and clear the \
                         target to start over",
                        from.file, ctx.job
                    ))
                    .with_key_path("mode"));
                }
                reader.state = st.clone();
                if !st.snapshot_done {
                    tracing::warn!(
                        "resuming an interrupted initial snapshot on a new snapshot: changes since its \
                         start are applied again from the binlog (a merge target converges to the source)"
                    );
                    let src = SqlSource::<MySql>::open(&rest, &snap_ctx(ctx, st.snapshot.clone()))?;
                    reader.check_schema(&src)?;
                    reader.phase = Phase::Snapshot(Box::new(src));
                } else {
                    reader.phase = Phase::Stream(Box::new(reader.streamer()?));
                }
            }
        }
        Ok(reader)
    }

    /// The snapshot reader must deliver the table's columns as the stream decodes them.
    fn check_schema(&self, src: &SqlSource<MySql>) -> Result<()> {
        crate::cdc::check_snapshot_schema(&self.schema, self.cols.len(), &src.schema())
    }

    fn streamer(&self) -> Result<Streamer> {
        let p = self.pending.as_ref().expect("set at open");
        let from = self.state.resume()?;
        let mut conn = Conn::new(p.opts.clone())
            .map_err(|e| map_error(e, &format!("connecting to MySQL at {}", p.what)))?;
        let target = if p.cdc.follow {
            None
        } else {
            Some(master_position(&mut conn)?)
        };
        // Heartbeats every second while the binlog is quiet: the stream never blocks long.
        // MariaDB sends its GTID events only to replicas that say they understand them (to
        // others, a `BEGIN` in their place); MySQL ignores the variable.
        for sql in [
            "SET @master_heartbeat_period = 1000000000",
            "SET @mariadb_slave_capability = 4",
        ] {
            conn.query_drop(sql)
                .map_err(|e| map_error(e, "asking for binlog heartbeats and GTID events"))?;
        }
        let gtids = Gtids::parse(self.state.resume_gtid().unwrap_or_default())?;
        let request = if p.by_gtid {
            // As a MariaDB replica with MASTER_USE_GTID does: the server finds where the
            // transactions after these GTIDs start; the file name comes in the first rotate.
            for sql in [
                format!("SET @slave_connect_state = '{}'", gtids.text()),
                "SET @slave_gtid_strict_mode = 0".to_string(),
                "SET @slave_gtid_ignore_duplicates = 0".to_string(),
            ] {
                conn.query_drop(&sql)
                    .map_err(|e| map_error(e, "asking for the binlog by GTID"))?;
            }
            BinlogRequest::new(p.server_id).with_pos(4u64)
        } else {
            BinlogRequest::new(p.server_id)
                .with_filename(from.file.clone().into_bytes())
                .with_pos(from.pos)
        };
        let stream = conn
            .get_binlog_stream(request)
            .map_err(|e| {
                map_error(
                    e,
                    "starting the binlog stream (needs the REPLICATION SLAVE privilege; `server_id` must differ \
                     from the server's and from other replicas')",
                )
            })?;
        let from = if p.by_gtid {
            tracing::info!(gtid = %gtids.text(), server_id = p.server_id, "streaming changes from the binlog, by GTID");
            BinPos::default()
        } else {
            tracing::info!(from = %from.text(), server_id = p.server_id, "streaming changes from the binlog");
            from
        };
        let caught_up = target.as_ref().is_some_and(|t| from.key() >= t.key());
        Ok(Streamer {
            stream,
            db: p.db.clone(),
            table: p.table.clone(),
            decoders: self
                .cols
                .iter()
                .map(|c| MyDecoder::new(c.kind, 1024))
                .collect(),
            changes: ChangeColumns::new(),
            rows: 0,
            bytes: 0,
            file: from.file.clone(),
            last_end: from.clone(),
            handed: from,
            txn: None,
            skip: self.state.partial,
            skip_gtid: match &self.state.partial_gtid {
                Some(g) => Some(parse_one_gtid(g)?),
                None if p.by_gtid && self.state.partial.is_some() => {
                    return Err(Error::data(
                        "the job's state counts changes of a transaction but not its GTID, so it \
                         cannot resume inside it on another server: point the job back at the \
                         server it followed, or `dativo state reset` it",
                    ))
                }
                None => None,
            },
            target,
            caught_up,
            first_row: None,
            schema_changed: false,
            heartbeat: p.cdc.heartbeat.0,
            last_commit_us: None,
            last_batch: Instant::now(),
            sql: Conn::new(p.opts.clone())
                .map_err(|e| tracing::debug!(error = %e, "a monitoring connection"))
                .ok(),
            measure_every: Every::new(MEASURE_EVERY),
            behind: None,
            gtids,
            by_gtid: p.by_gtid,
        })
    }

    fn snapshot_batch(&self, b: RecordBatch) -> Result<RecordBatch> {
        let start = BinPos::parse(&self.state.start)?.number();
        crate::cdc::snapshot_batch(&self.schema, b, start)
    }
}

/// A transaction being read.
struct Txn {
    /// Where it starts (the position after the one before it).
    start: BinPos,
    /// Changes of it to the table seen so far (delivered or skipped).
    changes: u64,
    /// Its MariaDB GTID: (domain, server id, sequence number).
    gtid: Option<(u32, u32, u64)>,
}

/// The streaming phase: the binlog stream and the batch being built.
struct Streamer {
    stream: BinlogStream,
    db: String,
    table: String,
    decoders: Vec<MyDecoder>,
    changes: ChangeColumns,
    rows: usize,
    bytes: usize,
    /// The binlog file being read.
    file: String,
    /// The position after the last transaction (or other event) read completely.
    last_end: BinPos,
    /// The position in the last state handed out.
    handed: BinPos,
    txn: Option<Txn>,
    /// Changes of the first transaction that an earlier run delivered.
    skip: Option<u64>,
    /// The GTID of that transaction, where known: the skip applies to it only.
    skip_gtid: Option<(u32, u32, u64)>,
    /// `follow: false`: the position to catch up with.
    target: Option<BinPos>,
    caught_up: bool,
    first_row: Option<Instant>,
    schema_changed: bool,
    heartbeat: Duration,
    last_commit_us: Option<i64>,
    last_batch: Instant,
    /// An ordinary connection for monitoring queries (`None` if it could not be opened).
    sql: Option<Conn>,
    /// When to measure the binlog behind the job, and what it last was (bytes).
    measure_every: Every,
    behind: Option<i64>,
    /// The GTID position of `last_end` (MariaDB; empty elsewhere).
    gtids: Gtids,
    /// Connected by GTID: the first (made-up) rotate names the file.
    by_gtid: bool,
}

impl Streamer {
    /// Measure the binlog written after the position handed out last (every
    /// [`MEASURE_EVERY`]). A failed query is logged and leaves the last value.
    fn measure(&mut self) {
        if !self.measure_every.due() {
            return;
        }
        let Some(conn) = &mut self.sql else { return };
        let logs = match binary_logs(conn) {
            Ok(logs) => logs,
            Err(e) => {
                tracing::debug!(error = %e, "measuring the binlog behind the job");
                return;
            }
        };
        let at = &self.handed;
        let mut behind = 0u64;
        let mut seen = false;
        for (name, size) in logs {
            if name == at.file {
                seen = true;
                behind += size.saturating_sub(at.pos);
            } else if seen {
                behind += size;
            }
        }
        if seen {
            self.behind = Some(behind as i64);
        }
    }
}

/// The server's binary log files and their sizes (`SHOW BINARY LOGS`), oldest first.
fn binary_logs(conn: &mut Conn) -> mysql::Result<Vec<(String, u64)>> {
    let rows: Vec<mysql::Row> = conn.query("SHOW BINARY LOGS")?;
    Ok(rows
        .into_iter()
        .filter_map(|r| Some((r.get::<String, _>(0)?, r.get::<u64, _>(1)?)))
        .collect())
}

/// Event types that begin a transaction when one is not open: GTIDs (MySQL's two and
/// MariaDB's), table maps, rows events, and what rides along with rows.
fn starts_txn(ty: u8) -> bool {
    matches!(
        ty,
        0x05 | 0x0d | 0x0e // intvar, rand, user var
        | 0x13 // table map
        | 0x17..=0x19 | 0x1d..=0x20 // rows v1, rows query, rows v2
        | 0x21 | 0x22 // MySQL GTID, anonymous GTID
        | 0x27 // partial update rows
        | 0xa0 | 0xa2 // MariaDB annotate rows, GTID
    )
}

/// An event's header flag: the server made it up for this stream (no real position).
const ARTIFICIAL: u16 = 0x20;

/// MariaDB's GTID event: a transaction (or a statement that commits on its own) starts.
const MARIADB_GTID: u8 = 0xa2;

/// The file a stream connected by GTID starts in, from its first (made-up) rotate event,
/// which arrives before the stream knows whether events carry a CRC32: when the last 4
/// bytes of the event are the CRC32 of the rest, they are not part of the name.
fn fake_rotate_name(ev: &Event, raw: &[u8]) -> Result<String> {
    let mut bytes = Vec::new();
    ev.write(mysql::binlog::BinlogVersion::Version4, &mut bytes)
        .map_err(|e| Error::internal(format!("re-encoding a rotate event: {e}")))?;
    let n = bytes.len();
    let has_crc = n > 4
        && raw.len() > 4
        && raw[raw.len() - 4..] == bytes[n - 4..]
        && crc32fast::hash(&bytes[..n - 4]).to_le_bytes() == bytes[n - 4..];
    let name = if has_crc { &raw[..raw.len() - 4] } else { raw };
    let name = String::from_utf8(name.to_vec())
        .map_err(|_| Error::data("the binlog stream started in a file whose name is not UTF-8"))?;
    let well_formed = name
        .rsplit_once('.')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !well_formed {
        return Err(Error::data(format!(
            "the binlog stream started in a file named `{}`, not `name.NNNNNN`",
            name.escape_debug()
        )));
    }
    Ok(name)
}

/// Seconds (with an optional `.ffffff`) since 1970 as the binlog logs a TIMESTAMP → a
/// datetime value in UTC.
fn epoch_to_date(text: &str) -> std::result::Result<Value, String> {
    let (s, us) = text.split_once('.').unwrap_or((text, "0"));
    let secs: i64 = s.parse().map_err(|_| format!("bad timestamp `{text}`"))?;
    let us: u32 = format!("{us:0<6}")[..6]
        .parse()
        .map_err(|_| format!("bad timestamp `{text}`"))?;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    Ok(Value::Date(
        y as u16,
        m,
        d,
        (rem / 3600) as u8,
        (rem / 60 % 60) as u8,
        (rem % 60) as u8,
        us,
    ))
}

fn civil_from_days(z: i64) -> (i64, u8, u8) {
    // Howard Hinnant's algorithm.
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// MySQL's `latin1` (Windows-1252, with its five unassigned bytes kept as C1 controls) as
/// UTF-8, the way the server converts it for a utf8mb4 connection.
fn latin1_to_utf8(b: &[u8]) -> String {
    const HIGH: [u16; 32] = [
        0x20AC, 0x0081, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021, 0x02C6, 0x2030, 0x0160,
        0x2039, 0x0152, 0x008D, 0x017D, 0x008F, 0x0090, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022,
        0x2013, 0x2014, 0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0x009D, 0x017E, 0x0178,
    ];
    b.iter()
        .map(|&c| match c {
            0x80..=0x9f => char::from_u32(HIGH[(c - 0x80) as usize] as u32).unwrap_or('\u{fffd}'),
            _ => c as char,
        })
        .collect()
}

/// One binlog value as the snapshot reader would have read it.
fn to_value(
    col: &Col,
    ty: Option<ColumnType>,
    v: BinlogValue<'_>,
) -> std::result::Result<Value, String> {
    let v =
        match v {
            BinlogValue::Value(v) => v,
            BinlogValue::Jsonb(j) => {
                let j = serde_json::Value::try_from(j).map_err(|e| e.to_string())?;
                return Ok(Value::Bytes(j.to_string().into_bytes()));
            }
            BinlogValue::JsonDiff(_) => return Err(
                "a partial JSON update is in the binlog: set binlog_row_value_options='' so the \
                 whole value is logged"
                    .into(),
            ),
        };
    Ok(match (v, ty) {
        (Value::NULL, _) => Value::NULL,
        // Without signedness in the table map an unsigned column arrives as signed.
        (Value::Int(i), Some(t)) if col.unsigned && i < 0 => {
            let bits = match t {
                ColumnType::MYSQL_TYPE_TINY => 8,
                ColumnType::MYSQL_TYPE_SHORT => 16,
                ColumnType::MYSQL_TYPE_INT24 => 24,
                ColumnType::MYSQL_TYPE_LONG => 32,
                _ => 64,
            };
            Value::UInt((i as u64) & (u64::MAX >> (64 - bits)))
        }
        (Value::Int(i), Some(ColumnType::MYSQL_TYPE_INT24)) if col.unsigned => {
            Value::UInt((i as u64) & 0xff_ffff)
        }
        // The parser does not sign-extend 24-bit values.
        (Value::Int(i), Some(ColumnType::MYSQL_TYPE_INT24)) if i >= 1 << 23 => {
            Value::Int(i - (1 << 24))
        }
        (Value::Int(i), Some(ColumnType::MYSQL_TYPE_TIMESTAMP)) => epoch_to_date(&i.to_string())?,
        (Value::Bytes(b), Some(ColumnType::MYSQL_TYPE_TIMESTAMP2)) => {
            epoch_to_date(std::str::from_utf8(&b).map_err(|e| e.to_string())?)?
        }
        (Value::Int(i), Some(ColumnType::MYSQL_TYPE_ENUM))
        | (Value::Int(i), Some(ColumnType::MYSQL_TYPE_STRING))
            if col.members.as_ref().is_some_and(|m| !m.0) =>
        {
            let m = &col.members.as_ref().expect("checked").1;
            match i {
                0 => Value::Bytes(Vec::new()),
                n => Value::Bytes(
                    m.get(n as usize - 1)
                        .ok_or_else(|| format!("enum index {n} out of range"))?
                        .clone()
                        .into_bytes(),
                ),
            }
        }
        (Value::Bytes(bits), _) if col.members.as_ref().is_some_and(|m| m.0) => {
            let m = &col.members.as_ref().expect("checked").1;
            let mask = bits.iter().rev().fold(0u64, |a, b| (a << 8) | *b as u64);
            let chosen: Vec<&str> = m
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, s)| s.as_str())
                .collect();
            Value::Bytes(chosen.join(",").into_bytes())
        }
        (Value::Bytes(b), Some(ColumnType::MYSQL_TYPE_YEAR)) if b == b"1900" => Value::Int(0),
        (Value::Bytes(b), _) if col.latin1 => Value::Bytes(latin1_to_utf8(&b).into_bytes()),
        (v, _) => v,
    })
}

impl Streamer {
    /// Move the position past an event outside a transaction.
    fn advance(&mut self, log_pos: u64) {
        if log_pos > 0 {
            self.last_end.advance(BinPos {
                file: self.file.clone(),
                pos: log_pos,
            });
        }
        self.check_target();
    }

    fn check_target(&mut self) {
        if self.txn.is_none()
            && self
                .target
                .as_ref()
                .is_some_and(|t| self.last_end.key() >= t.key())
        {
            self.caught_up = true;
        }
    }

    /// The transaction ends at `log_pos` (a commit).
    fn commit(&mut self, log_pos: u64) {
        if let Some(t) = self.txn.take() {
            // The transaction an earlier run cut is behind us.
            if self.skip_gtid.is_none() || t.gtid == self.skip_gtid {
                self.skip = None;
            }
            if let Some((d, s, n)) = t.gtid {
                self.gtids.0.insert(d, (s, n));
            }
        }
        self.advance(log_pos);
    }

    fn begin(&mut self) {
        if self.txn.is_none() {
            self.txn = Some(Txn {
                start: self.last_end.clone(),
                changes: 0,
                gtid: None,
            });
        }
    }

    /// Whether this event is the table's.
    fn ours(&self, tme: &TableMapEvent<'_>) -> bool {
        tme.database_name() == self.db.as_str() && tme.table_name() == self.table.as_str()
    }

    /// The rows of one rows event of the table. `Ok(false)`: it has a column this run does
    /// not know; nothing of it was taken.
    fn rows(
        &mut self,
        r: &RowsEventData<'_>,
        tme: &TableMapEvent<'_>,
        time_s: u32,
        all: &[String],
        cols: &[Col],
        key: &[usize],
    ) -> Result<bool> {
        let n = tme.columns_count() as usize;
        let types: Vec<Option<ColumnType>> = (0..n)
            .map(|i| tme.get_column_type(i).ok().flatten())
            .collect();
        // Which of our columns each binlog column is.
        let mut mapping: Vec<Option<usize>> = Vec::with_capacity(n);
        let mut named = false;
        let mut rows = Vec::new();
        for row in r.rows(tme) {
            let (before, after) = row.map_err(|e| {
                Error::data(format!(
                    "reading a rows event of {}.{}: {e}",
                    self.db, self.table
                ))
                .with_source(e)
            })?;
            if mapping.is_empty() && n > 0 {
                let names: Vec<String> = before
                    .as_ref()
                    .or(after.as_ref())
                    .map(|r| {
                        r.columns_ref()
                            .iter()
                            .map(|c| c.name_str().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                named = names.first().is_some_and(|s| !s.starts_with('@'));
                for (i, nm) in names.iter().enumerate() {
                    let table_col = if named {
                        all.iter().position(|a| a == nm)
                    } else {
                        (i < all.len()).then_some(i)
                    };
                    let Some(tc) = table_col else {
                        tracing::warn!(table = %self.table, column = %nm, "a column was added to the table: ending this run before the changes that carry it; the next run reads it");
                        return Ok(false);
                    };
                    mapping.push(cols.iter().position(|c| c.name == all[tc]));
                }
            }
            rows.push((before, after));
        }
        let _ = named;
        let op = match r {
            RowsEventData::WriteRowsEvent(_) | RowsEventData::WriteRowsEventV1(_) => "I",
            RowsEventData::DeleteRowsEvent(_) | RowsEventData::DeleteRowsEventV1(_) => "D",
            _ => "U",
        };
        let time_us = time_s as i64 * 1_000_000;
        for (before, after) in rows {
            let conv = |row: mysql::binlog::row::BinlogRow| -> Result<Vec<Value>> {
                let mut out = vec![Value::NULL; cols.len()];
                for (i, v) in row.unwrap().into_iter().enumerate() {
                    if let Some(Some(ci)) = mapping.get(i) {
                        out[*ci] = to_value(&cols[*ci], types.get(i).copied().flatten(), v)
                            .map_err(|e| {
                                Error::data(format!(
                                    "column `{}` of {}.{} in the binlog: {e}",
                                    cols[*ci].name, self.db, self.table
                                ))
                            })?;
                    }
                }
                Ok(out)
            };
            let before = before.map(conv).transpose()?;
            let after = after.map(conv).transpose()?;
            match (op, before, after) {
                ("U", Some(b), Some(a)) => {
                    if key.iter().any(|k| b[*k] != a[*k]) {
                        self.append("D", &b, time_us)?;
                    }
                    self.append("U", &a, time_us)?;
                }
                ("D", Some(b), _) => self.append("D", &b, time_us)?,
                (_, _, Some(a)) => self.append(op, &a, time_us)?,
                _ => {
                    return Err(Error::data(format!(
                        "a rows event of {}.{} without the row image it needs",
                        self.db, self.table
                    )))
                }
            }
        }
        Ok(true)
    }

    /// One change: appended unless an earlier run delivered it.
    fn append(&mut self, op: &str, values: &[Value], time_us: i64) -> Result<()> {
        let Some(t) = self.txn.as_mut() else {
            return Err(Error::data("binlog: a change outside a transaction"));
        };
        t.changes += 1;
        if self.skip.is_some_and(|n| t.changes <= n)
            && (self.skip_gtid.is_none() || t.gtid == self.skip_gtid)
        {
            return Ok(());
        }
        let pos = t.start.number();
        for (d, v) in self.decoders.iter_mut().zip(values) {
            d.append(v).map_err(Error::data)?;
            self.bytes += match v {
                Value::Bytes(b) => b.len(),
                _ => 8,
            };
        }
        self.changes.append(op, pos, time_us);
        self.last_commit_us = Some(time_us);
        self.rows += 1;
        self.first_row.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let (db, table) = (&self.db, &self.table);
        let cols: Vec<ArrayRef> = self
            .decoders
            .iter_mut()
            .enumerate()
            .map(|(i, d)| {
                d.finish().map_err(|m| {
                    let name = schema.fields().get(i).map_or("?", |f| f.name().as_str());
                    Error::data(format!(
                        "binlog changes of `{db}`.`{table}`, column `{name}`: {m}"
                    ))
                })
            })
            .collect::<Result<_>>()?;
        self.rows = 0;
        self.bytes = 0;
        self.first_row = None;
        self.last_batch = Instant::now();
        self.changes.finish(schema, cols)
    }

    /// Handle one event.
    fn event(&mut self, ev: &Event, all: &[String], cols: &[Col], key: &[usize]) -> Result<()> {
        let h = ev.header();
        let ty = h.event_type_raw();
        let log_pos = if h.flags_raw() & ARTIFICIAL != 0 {
            0
        } else {
            h.log_pos() as u64
        };
        tracing::trace!(ty, log_pos, flags = h.flags_raw(), file = %self.file, at = %self.last_end.text(), "binlog event");
        let data = ev.read_data().map_err(|e| {
            Error::data(format!("reading a binlog event (type {ty}): {e}")).with_source(e)
        })?;
        if ty == MARIADB_GTID {
            self.begin();
            if let (Some(t), Some((d, n))) = (self.txn.as_mut(), mariadb_gtid(ev.data())) {
                t.gtid = Some((d, h.server_id(), n));
            }
            return Ok(());
        }
        match data {
            Some(EventData::RotateEvent(r)) => {
                // The stream's first (made-up) rotate names the file asked for, but comes
                // before the server said whether events carry checksums, so its name may end
                // in the 4 bytes of one.
                let name = r.name();
                if self.by_gtid && self.file.is_empty() {
                    self.file = fake_rotate_name(ev, r.name_raw())?;
                } else if !(h.flags_raw() & ARTIFICIAL != 0 && name.starts_with(self.file.as_str()))
                {
                    self.file = name.into_owned();
                }
                if self.txn.is_none() {
                    self.last_end.advance(BinPos {
                        file: self.file.clone(),
                        pos: r.position(),
                    });
                    self.check_target();
                }
            }
            Some(EventData::HeartbeatEvent) | Some(EventData::FormatDescriptionEvent(_)) => {}
            Some(EventData::XidEvent(_)) => self.commit(log_pos),
            Some(EventData::QueryEvent(q)) => {
                let sql = q.query();
                let head = sql.trim_start().to_ascii_uppercase();
                if head.starts_with("BEGIN") || head.starts_with("XA START") {
                    self.begin();
                } else if head.starts_with("SAVEPOINT") || head.starts_with("ROLLBACK TO") {
                } else {
                    if head.starts_with("TRUNCATE") && self.names_table(&sql, &q.schema()) {
                        // Its own transaction: one change row, every column NULL.
                        self.begin();
                        let nulls = vec![Value::NULL; cols.len()];
                        self.append(TRUNCATE_OP, &nulls, h.timestamp() as i64 * 1_000_000)?;
                    }
                    // COMMIT, ROLLBACK, or a statement (DDL) that commits on its own.
                    self.commit(log_pos);
                }
            }
            Some(EventData::TableMapEvent(_)) => self.begin(),
            Some(EventData::RowsEvent(r)) => {
                self.begin();
                // Only the table's own map is copied (the stream holds it borrowed).
                let tme = self
                    .stream
                    .get_tme(r.table_id())
                    .filter(|t| self.ours(t))
                    .cloned();
                if let Some(tme) = tme {
                    if !self.rows(&r, &tme, h.timestamp(), all, cols, key)? {
                        self.schema_changed = true;
                    }
                }
            }
            _ if starts_txn(ty) => self.begin(),
            _ => {
                if self.txn.is_none() {
                    self.advance(log_pos);
                }
            }
        }
        Ok(())
    }

    /// Whether a statement names the table (`t`, `db.t`, quoted or not).
    fn names_table(&self, sql: &str, schema: &str) -> bool {
        let s = sql.replace('`', "").to_ascii_lowercase();
        let t = self.table.to_ascii_lowercase();
        let full = format!("{}.{}", self.db.to_ascii_lowercase(), t);
        s.split(|c: char| c.is_whitespace() || c == ';' || c == ',')
            .any(|w| w == full || (w == t && schema.eq_ignore_ascii_case(&self.db)))
    }
}

impl MyCdcReader {
    /// The state covering every change handed out so far.
    fn stream_state(&mut self) {
        if let Phase::Stream(s) = &mut self.phase {
            if s.last_end.file.is_empty() {
                // Connected by GTID and no event yet: the state stays as it was.
                return;
            }
            self.state.server_id = self.pending.as_ref().map(|p| p.source_id);
            if !s.gtids.0.is_empty() {
                self.state.gtid = Some(s.gtids.text());
            }
            // A cut transaction: its start and the changes of it delivered.
            let (pos, partial) = match s.txn.as_ref().filter(|t| t.changes > 0) {
                Some(t) => (t.start.clone(), Some(t.changes)),
                None => (s.last_end.clone(), None),
            };
            self.state.position = Some(pos.text());
            self.state.partial_gtid = match (&partial, s.txn.as_ref().and_then(|t| t.gtid)) {
                (Some(_), Some((d, sv, n))) => Some(format!("{d}-{sv}-{n}")),
                _ => None,
            };
            self.state.partial = partial;
            self.state.source_commit_us = s.last_commit_us;
            self.state.behind_bytes = s.behind;
            s.handed = pos;
        }
    }

    fn next_stream(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let Phase::Stream(s) = &mut self.phase else {
                return Ok(None);
            };
            let full = s.rows >= self.batch_rows || s.bytes >= self.batch_bytes;
            let between = s.txn.is_none();
            let stale = s.first_row.is_some_and(|t| t.elapsed() >= FLUSH) && between;
            let stopping = self.control.stop.load(Ordering::SeqCst) && between;
            if s.rows > 0
                && (full || stale || s.schema_changed || stopping || (s.caught_up && between))
            {
                let b = s.finish(&self.schema)?;
                self.stream_state();
                return Ok(Some(b));
            }
            // Heartbeat: nothing for the table for a while, but the binlog moved on.
            if s.rows == 0
                && between
                && s.last_batch.elapsed() >= s.heartbeat
                && s.last_end.key() > s.handed.key()
            {
                s.last_batch = Instant::now();
                s.last_commit_us = None;
                tracing::debug!(position = %s.last_end.text(), "heartbeat");
                self.stream_state();
                return Ok(Some(RecordBatch::new_empty(self.schema.clone())));
            }
            if between {
                s.measure();
            }
            if (s.caught_up || stopping || s.schema_changed) && s.rows == 0 {
                self.stream_state();
                self.phase = Phase::Done;
                return Ok(None);
            }
            // Blocks at most about a second: the server sends heartbeats when quiet.
            let ev = match s.stream.next() {
                Some(Ok(ev)) => ev,
                Some(Err(e)) => return Err(map_error(e, "reading the binlog")),
                None => {
                    return Err(Error::transient(
                        "the server ended the binlog stream (restarted, or the replica connection was killed)",
                    ))
                }
            };
            s.event(&ev, &self.all, &self.cols, &self.key)?;
        }
    }
}

impl OpenReader for MyCdcReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        match &mut self.phase {
            Phase::Snapshot(src) => match src.next_batch()? {
                Some(b) => {
                    self.state.snapshot = src.state()?;
                    self.snapshot_batch(b).map(Some)
                }
                None => {
                    self.state.snapshot = None;
                    self.state.snapshot_done = true;
                    self.state.position = Some(self.state.start.clone());
                    self.state.gtid = self.state.start_gtid.clone();
                    let st = self.streamer()?;
                    let old = std::mem::replace(&mut self.phase, Phase::Stream(Box::new(st)));
                    if let Phase::Snapshot(src) = old {
                        if let Err(e) = (src as Box<dyn OpenReader>).close() {
                            tracing::warn!(error = %e, "closing the snapshot reader");
                        }
                    }
                    tracing::info!("initial snapshot delivered; streaming changes");
                    Ok(Some(RecordBatch::new_empty(self.schema.clone())))
                }
            },
            Phase::Stream(_) => self.next_stream(),
            Phase::Done => Ok(None),
        }
    }

    fn state(&mut self) -> Result<Option<Json>> {
        Ok(Some(self.state.to_value()))
    }

    fn info(&self) -> StreamInfo {
        self.info.clone()
    }

    fn control(&self) -> Option<Arc<dyn ReaderControl>> {
        Some(self.control.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn positions_order_across_files() {
        let a = BinPos::parse("mysql-bin.000009:4000").unwrap();
        let b = BinPos::parse("mysql-bin.000010:4").unwrap();
        assert!(a.key() < b.key());
        assert!(a.number() < b.number());
        assert_eq!(b.number(), (10i64 << 32) | 4);
        let mut c = b.clone();
        c.advance(a.clone());
        assert_eq!(c, b, "a position never moves back");
        assert_eq!(BinPos::parse(&a.text()).unwrap(), a);
        assert!(BinPos::parse("nofile").is_err());
    }

    #[test]
    fn state_round_trip() {
        let s = CdcState {
            start: "b.000001:100".into(),
            snapshot_done: true,
            position: Some("b.000002:300".into()),
            partial: Some(7),
            ..CdcState::default()
        };
        let back = CdcState::from_value(&s.to_value()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.resume().unwrap().pos, 300);
        // A PostgreSQL cdc state is not this reader's.
        assert!(CdcState::from_value(&json!({"cdc": {"slot": "s", "start_lsn": "0/1"}})).is_err());
    }

    #[test]
    fn gtid_positions() {
        let g = Gtids::parse("1-2-7, 0-1-42").unwrap();
        assert_eq!(g.text(), "0-1-42,1-2-7");
        assert_eq!(Gtids::parse("").unwrap(), Gtids::default());
        assert!(Gtids::parse("0-1").is_err());
        assert!(Gtids::parse("a-b-c").is_err());
        // The GTID that matches where streaming resumes: the snapshot's before streaming.
        let mut s = CdcState {
            start: "b.000001:100".into(),
            start_gtid: Some("0-1-5".into()),
            ..CdcState::default()
        };
        assert_eq!(s.resume_gtid(), Some("0-1-5"));
        s.position = Some("b.000002:300".into());
        s.gtid = Some("0-1-9".into());
        assert_eq!(s.resume_gtid(), Some("0-1-9"));
        s.gtid = None;
        assert_eq!(
            s.resume_gtid(),
            None,
            "a position without its GTID has none"
        );
        // The GTID event's body: sequence number, then domain.
        let mut body = 77u64.to_le_bytes().to_vec();
        body.extend(3u32.to_le_bytes());
        body.push(0);
        assert_eq!(mariadb_gtid(&body), Some((3, 77)));
        assert_eq!(mariadb_gtid(&body[..10]), None);
    }

    #[test]
    fn enum_and_set_members() {
        assert_eq!(
            members_of("enum('a','b''c','d\\\\e')"),
            Some((false, vec!["a".into(), "b'c".into(), "d\\e".into()]))
        );
        assert_eq!(
            members_of("set('x','y')"),
            Some((true, vec!["x".into(), "y".into()]))
        );
        assert_eq!(members_of("varchar(10)"), None);
    }

    #[test]
    fn latin1_text_is_converted() {
        assert_eq!(latin1_to_utf8(b"h\xe9llo \x80"), "héllo €");
    }

    #[test]
    fn binlog_timestamps_are_utc() {
        assert_eq!(
            epoch_to_date("0").unwrap(),
            Value::Date(1970, 1, 1, 0, 0, 0, 0)
        );
        assert_eq!(
            epoch_to_date("1700000000.5").unwrap(),
            Value::Date(2023, 11, 14, 22, 13, 20, 500_000)
        );
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn config_split_and_server_id() {
        let (o, rest) = split(&json!({"url": "mysql://x", "table": "db.t", "mode": "cdc", "server_id": 77, "follow": false})).unwrap();
        assert_eq!(o.server_id, Some(77));
        assert!(!o.follow);
        assert_eq!(rest["mode"], "full_refresh");
        assert!(rest.get("server_id").is_none());
        assert_eq!(default_server_id("a"), default_server_id("a"));
        assert_ne!(default_server_id("a"), default_server_id("b"));
        assert!(default_server_id("a") >= 0x8000_0000);
    }
}
