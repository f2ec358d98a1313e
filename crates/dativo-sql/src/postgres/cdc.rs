//! `mode: cdc` on the `postgres` reader: change data capture through logical replication.
//!
//! * **Start** (no state): the publication is created if missing (`FOR TABLE` the job's
//!   table), then a `pgoutput` slot with `EXPORT_SNAPSHOT` on a replication connection.
//!   The table is read in that exported snapshot by the ordinary keyset reader (partitions,
//!   resumable), while the replication connection stays open and idle to keep the snapshot.
//!   Every row is delivered with `_dativo_op = 'R'`.
//! * **Streaming** starts at the slot's consistent point: exactly the changes after the
//!   snapshot, none before. Inserts (`I`), updates (`U`) and deletes (`D`, the old key from
//!   the replica identity) arrive in commit order; each row carries `_dativo_lsn` (its
//!   transaction's commit LSN) and `_dativo_commit_time`.
//! * **State** = the snapshot's progress, then the end LSN of the last transaction delivered
//!   completely, plus how many changes of a transaction cut by a batch were delivered. A
//!   replayed transaction is identical (pgoutput sends transactions whole, at commit), so
//!   skipping that many changes resumes exactly.
//! * **The slot** is told (`confirmed_flush_lsn`) only what the writer has committed, through
//!   the reader's control ([`OpenReader::control`]): it never moves ahead of the lake's state,
//!   and WAL after it stays until the lake has it.
//! * **TRUNCATE** of the table is one change row, `_dativo_op = 'T'`, every other column
//!   NULL: a merge target removes every row before it; a changelog keeps it as a marker.
//! * **Unchanged TOAST values**: an update that leaves a large value untouched logs it as
//!   "unchanged". With `REPLICA IDENTITY FULL` the old row in the same message holds it and
//!   is used; without, the run fails naming the column (never a NULL in the lake).
//! * **Schema changes**: a column added to the table ends the run after the changes before
//!   it; the next run reads the new column (the Iceberg writer adds it). A dropped column is
//!   NULL from then on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use dativo_core::{
    Delivery, Error, ErrorKind, OpenReader, ReaderContext, ReaderControl, Result, StreamInfo,
};
use dativo_pg::pgoutput::{self, Message as PgMsg, Relation, Value as PgVal};
use dativo_pg::replication::{lsn_text, parse_lsn, Lsn, ReplicationConnection, ReplicationMessage};
use dativo_pg::{connect, map_error, runtime, ConnectionOptions};

use super::config::PgOptions;
use super::dialect::Postgres;
use super::types::{field_for, kind_for, ColKind, Decoder};
use crate::keyset::{load, Dialect, SqlSource};

use crate::cdc::{
    default_heartbeat, default_name, yes, ChangeColumns, Every, FLUSH, MEASURE_EVERY,
};
pub use crate::cdc::{is_cdc, COMMIT_TIME_COLUMN, LSN_COLUMN, OP_COLUMN, TRUNCATE_OP};

/// The `cdc` keys beside the reader's usual ones.
const CDC_KEYS: &[&str] = &["publication", "slot", "follow", "create", "heartbeat"];

/// `mode: cdc` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct CdcOptions {
    /// The publication (default `dativo_<job>`).
    #[serde(default)]
    publication: Option<String>,
    /// The replication slot (default `dativo_<job>`).
    #[serde(default)]
    slot: Option<String>,
    /// Keep following the log (default); `false`: stop once caught up with the WAL position
    /// the run started at (`dativo run --once` sets it).
    #[serde(default = "yes")]
    follow: bool,
    /// Create the publication and slot when missing (default); `false`: they must exist.
    #[serde(default = "yes")]
    create: bool,
    /// With no change to the table for this long, the state moves to the server's WAL
    /// position and is committed, so the slot stops retaining WAL the table does not need
    /// (default 1m).
    #[serde(default = "default_heartbeat")]
    heartbeat: dativo_core::config::DurationValue,
}

/// Split a `mode: cdc` config into its cdc settings and the snapshot reader's config
/// (`mode: full_refresh`).
fn split(config: &Value) -> Result<(CdcOptions, Value)> {
    let (cdc, rest) = crate::cdc::split(config, CDC_KEYS)?;
    let opts: CdcOptions = dativo_core::config::from_config(&cdc)?;
    Ok((opts, rest))
}

/// An unknown-key error lists the reader's keys; with `mode: cdc` these are valid too.
fn with_cdc_keys(e: Error) -> Error {
    crate::cdc::with_cdc_keys(e, CDC_KEYS)
}

/// The state of a CDC stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CdcState {
    /// The slot the state belongs to.
    slot: String,
    /// The slot's consistent point: streaming starts here after the snapshot.
    start_lsn: String,
    /// The snapshot reader's state while the snapshot is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot: Option<Value>,
    /// The initial snapshot was delivered completely.
    #[serde(default)]
    snapshot_done: bool,
    /// Every transaction ending at or before this LSN was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lsn: Option<String>,
    /// A transaction cut by a batch: its commit LSN and the changes of it delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partial: Option<(String, u64)>,
    /// The source commit time (µs since 1970) of the last change delivered, while the table
    /// has changes in flight; unset once the stream is idle. Monitoring reads the lag from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source_commit_us: Option<i64>,
    /// WAL the slot keeps on the server (`pg_current_wal_lsn() − restart_lsn`, bytes), as last
    /// measured (every 10 s while streaming). Monitoring only: `dativo_cdc_retained_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retained_bytes: Option<i64>,
    /// WAL written after the slot's confirmed position, as last measured. Monitoring only:
    /// `dativo_cdc_behind_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    behind_bytes: Option<i64>,
}

impl CdcState {
    fn to_value(&self) -> Value {
        crate::cdc::state_value(self)
    }

    fn from_value(v: &Value) -> Result<CdcState> {
        crate::cdc::state_from(v)
    }

    /// The LSN delivered completely (streaming resumes after it).
    fn resume_lsn(&self) -> Lsn {
        self.lsn
            .as_deref()
            .or(Some(self.start_lsn.as_str()))
            .and_then(parse_lsn)
            .unwrap_or(0)
    }
}

/// What the runtime tells the reader: committed states (the slot may move to them) and stop.
#[derive(Default)]
struct Control {
    /// The highest LSN the writer has committed.
    confirmed: AtomicU64,
    stop: AtomicBool,
}

impl ReaderControl for Control {
    fn committed(&self, state: &Value) {
        if let Ok(s) = CdcState::from_value(state) {
            if s.snapshot_done {
                self.confirmed.fetch_max(s.resume_lsn(), Ordering::SeqCst);
            }
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A table column: its name and how its values decode.
#[derive(Debug, Clone)]
struct Col {
    name: String,
    kind: ColKind,
}

/// The `postgres` reader in `mode: cdc`.
pub struct PgCdcReader {
    schema: SchemaRef,
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
    Snapshot {
        src: Box<SqlSource<Postgres>>,
        /// Holds the exported snapshot open (first run only).
        _slot_conn: Option<ReplicationConnection>,
    },
    Stream(Box<Streamer>),
    Done,
}

impl PgCdcReader {
    /// Check a `mode: cdc` config without I/O.
    pub fn validate(config: &Value) -> Result<()> {
        let (_, rest) = split(config)?;
        SqlSource::<Postgres>::validate(&rest).map_err(with_cdc_keys)
    }

    /// Connect: start (publication, slot, snapshot) or resume from `ctx.state`.
    pub fn open(config: &Value, ctx: &ReaderContext) -> Result<PgCdcReader> {
        let (opts, rest) = split(config)?;
        SqlSource::<Postgres>::validate(&rest).map_err(with_cdc_keys)?;
        if ctx.shard.count > 1 {
            return Err(Error::config(
                "`mode: cdc` cannot be sharded: one slot delivers the table's changes in order",
            ));
        }
        let cfg = load::<PgOptions>(&rest)?;
        let table = cfg.shared.table.clone().unwrap_or_default();
        let slot = opts.slot.clone().unwrap_or_else(|| default_name(&ctx.job));
        let publication = opts
            .publication
            .clone()
            .unwrap_or_else(|| default_name(&ctx.job));
        let conn = cfg.connection.clone();
        let client = runtime().block_on(connect(&conn))?;
        let q = |sql: &str, doing: &str| -> Result<Vec<tokio_postgres::Row>> {
            runtime()
                .block_on(client.query(sql, &[]))
                .map_err(|e| map_error(e, doing))
        };
        let wal = q("SHOW wal_level", "reading wal_level")?;
        let level: String = wal.first().map(|r| r.get(0)).unwrap_or_default();
        if level != "logical" {
            return Err(Error::config(format!(
                "`mode: cdc` needs logical decoding, and the server's wal_level is `{level}`: set \
                 `wal_level = logical` in postgresql.conf (or `ALTER SYSTEM SET wal_level = logical`) \
                 and restart PostgreSQL; also check max_replication_slots and max_wal_senders"
            ))
            .with_key_path("mode"));
        }
        let table_ref = Postgres::table_ref(&table);
        // The table: its columns as the snapshot reader reads them, its key, its identity.
        let meta = q(
            &format!(
                "SELECT c.relreplident::text, \
                 (SELECT string_agg(a.attname::text, ',' ORDER BY array_position(i.indkey::int2[], a.attnum)) \
                  FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                  WHERE i.indrelid = c.oid AND i.indisprimary) \
                 FROM pg_class c WHERE c.oid = {}::regclass",
                Postgres::lit(&table_ref)
            ),
            &format!("reading table {table}"),
        )?;
        let row = meta.first().ok_or_else(|| {
            Error::config(format!("table {table} does not exist")).with_key_path("table")
        })?;
        let identity: String = row.get(0);
        let pk: Option<String> = row.get(1);
        let primary_key: Vec<String> = pk
            .map(|p| p.split(',').map(str::to_string).collect())
            .unwrap_or_default();
        if primary_key.is_empty() && identity != "f" {
            return Err(Error::config(format!(
                "table {table} has no primary key: a delete or update in the log would not say which \
                 row it changes. Add a primary key, or `ALTER TABLE {table} REPLICA IDENTITY FULL` \
                 and set the target's `primary_key`"
            ))
            .with_key_path("table"));
        }
        let stmt = runtime()
            .block_on(client.prepare(&format!("SELECT * FROM {table_ref} LIMIT 0")))
            .map_err(|e| map_error(e, &format!("reading the columns of {table}")))?;
        let mut cols = Vec::new();
        for c in stmt.columns() {
            let kind = kind_for(c.type_(), c.type_modifier(), &cfg.own.numeric).map_err(|t| {
                Error::schema(format!(
                    "column `{}` of {table} has type {t}, which `mode: cdc` cannot read; \
                     exclude it with `columns:` or change its type",
                    c.name()
                ))
            })?;
            cols.push(Col {
                name: c.name().to_string(),
                kind,
            });
        }
        if let Some(sel) = &cfg.shared.columns {
            cols.retain(|c| sel.contains(&c.name));
        }
        let mut fields: Vec<Field> = cols.iter().map(|c| field_for(&c.name, &c.kind)).collect();
        fields.extend(crate::cdc::change_fields());
        let schema = Arc::new(Schema::new(fields));
        let info = StreamInfo {
            primary_key: primary_key.clone(),
            not_null: Vec::new(),
            delivery: Delivery::Incremental,
            estimated_rows: None,
        };
        let control = Arc::new(Control::default());
        let key = primary_key
            .iter()
            .filter_map(|k| cols.iter().position(|c| &c.name == k))
            .collect();
        let mut reader = PgCdcReader {
            schema,
            cols,
            key,
            info,
            state: CdcState::default(),
            control: control.clone(),
            phase: Phase::Done,
            batch_rows: cfg.shared.batch_size,
            batch_bytes: cfg.shared.batch_bytes.0 as usize,
            pending: None,
        };
        let stored = ctx.state.as_ref().map(CdcState::from_value).transpose()?;
        match stored {
            None => {
                // Publication first: a slot decodes what it is asked for from its start on.
                let exists = q(
                    &format!(
                        "SELECT 1 FROM pg_publication WHERE pubname = {}",
                        Postgres::lit(&publication)
                    ),
                    "looking up the publication",
                )?;
                if exists.is_empty() {
                    if !opts.create {
                        return Err(Error::config(format!(
                            "publication `{publication}` does not exist (and `create: false`): \
                             CREATE PUBLICATION {} FOR TABLE {table_ref}",
                            Postgres::ident(&publication)
                        ))
                        .with_key_path("publication"));
                    }
                    runtime()
                        .block_on(client.batch_execute(&format!(
                            "CREATE PUBLICATION {} FOR TABLE {table_ref}",
                            Postgres::ident(&publication)
                        )))
                        .map_err(|e| {
                            map_error(e, &format!("creating publication `{publication}`"))
                        })?;
                }
                let taken = q(
                    &format!(
                        "SELECT 1 FROM pg_replication_slots WHERE slot_name = {}",
                        Postgres::lit(&slot)
                    ),
                    "looking up the replication slot",
                )?;
                if !taken.is_empty() {
                    return Err(Error::config(format!(
                        "replication slot `{slot}` exists but job `{}` has no state for it (another \
                         job's slot, or the state was reset): its position cannot be trusted. Drop it \
                         (`SELECT pg_drop_replication_slot('{slot}')`) or set another `slot`",
                        ctx.job
                    ))
                    .with_key_path("slot"));
                }
                if !opts.create {
                    return Err(Error::config(format!(
                        "replication slot `{slot}` does not exist (and `create: false`)"
                    ))
                    .with_key_path("slot"));
                }
                let mut rc = runtime().block_on(ReplicationConnection::connect(&conn))?;
                let rows = runtime().block_on(rc.simple_query(
                    &format!(
                        "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT",
                        Postgres::ident(&slot)
                    ),
                    &format!("creating replication slot `{slot}`"),
                ))?;
                let row = rows.first().cloned().unwrap_or_default();
                let (Some(Some(point)), Some(Some(snapshot))) = (row.get(1), row.get(2)) else {
                    return Err(Error::internal(
                        "CREATE_REPLICATION_SLOT returned no snapshot",
                    ));
                };
                tracing::info!(slot = %slot, consistent_point = %point, "created replication slot; reading the initial snapshot");
                reader.state = CdcState {
                    slot: slot.clone(),
                    start_lsn: point.clone(),
                    ..CdcState::default()
                };
                let mut src_cfg = rest.clone();
                src_cfg["snapshot"] = Value::String(snapshot.clone());
                let src = SqlSource::<Postgres>::open(&src_cfg, &snap_ctx(ctx, None))?;
                reader.check_schema(&src)?;
                reader.phase = Phase::Snapshot {
                    src: Box::new(src),
                    _slot_conn: Some(rc),
                };
            }
            Some(st) => {
                if st.slot != slot {
                    return Err(Error::config(format!(
                        "the job's state belongs to replication slot `{}`, and the config names `{slot}`",
                        st.slot
                    ))
                    .with_key_path("slot"));
                }
                let exists = q(
                    &format!(
                        "SELECT active_pid FROM pg_replication_slots WHERE slot_name = {}",
                        Postgres::lit(&slot)
                    ),
                    "looking up the replication slot",
                )?;
                if exists.is_empty() {
                    return Err(Error::config(format!(
                        "replication slot `{slot}` is gone (dropped, or invalidated by \
                         max_slot_wal_keep_size): changes since the last commit are lost to it. \
                         `dativo state reset` the job and clear the target to start over"
                    ))
                    .with_key_path("slot"));
                }
                reader.state = st.clone();
                if !st.snapshot_done {
                    tracing::warn!(
                        slot = %slot,
                        "resuming an interrupted initial snapshot on a new snapshot: changes since the \
                         slot's start are applied again from the log (a merge target converges to the source)"
                    );
                    let src =
                        SqlSource::<Postgres>::open(&rest, &snap_ctx(ctx, st.snapshot.clone()))?;
                    reader.check_schema(&src)?;
                    reader.phase = Phase::Snapshot {
                        src: Box::new(src),
                        _slot_conn: None,
                    };
                } else {
                    reader.phase = Phase::Stream(Box::new(reader.streamer(
                        &conn,
                        &slot,
                        &publication,
                        &opts,
                        &table,
                    )?));
                }
            }
        }
        // Kept for the stream phase after the snapshot.
        reader.pending = Some(Pending {
            conn,
            slot,
            publication,
            opts,
            table,
        });
        Ok(reader)
    }
}

/// What the snapshot phase needs to start streaming.
struct Pending {
    conn: ConnectionOptions,
    slot: String,
    publication: String,
    opts: CdcOptions,
    table: String,
}

fn snap_ctx(ctx: &ReaderContext, state: Option<Value>) -> ReaderContext {
    ReaderContext {
        state,
        ..ctx.clone()
    }
}

impl PgCdcReader {
    /// The snapshot reader must deliver the table's columns as the stream decodes them.
    fn check_schema(&self, src: &SqlSource<Postgres>) -> Result<()> {
        crate::cdc::check_snapshot_schema(&self.schema, self.cols.len(), &src.schema())
    }

    fn streamer(
        &self,
        conn: &ConnectionOptions,
        slot: &str,
        publication: &str,
        opts: &CdcOptions,
        table: &str,
    ) -> Result<Streamer> {
        let mut rc = runtime().block_on(ReplicationConnection::connect(conn))?;
        // Where "caught up" is, for `follow: false`.
        let target = if opts.follow {
            None
        } else {
            let rows =
                runtime().block_on(rc.simple_query("IDENTIFY_SYSTEM", "identifying the server"))?;
            rows.first()
                .and_then(|r| r.get(2).cloned().flatten())
                .and_then(|l| parse_lsn(&l))
        };
        let start = self.state.resume_lsn();
        runtime()
            .block_on(rc.start_replication(
                slot,
                start,
                &[
                    ("proto_version", "1"),
                    ("publication_names", &Postgres::ident(publication)),
                    ("binary", "true"),
                ],
            ))
            .map_err(|e| {
                if e.kind() == ErrorKind::Transient {
                    e.context(format!("slot `{slot}` may be in use by another consumer"))
                } else {
                    e
                }
            })?;
        // The state this run started from is the lake's committed one: the slot may move
        // there now (a run that ended before it could say so leaves it behind otherwise).
        if self.state.snapshot_done {
            self.control.confirmed.fetch_max(start, Ordering::SeqCst);
        }
        tracing::info!(slot, from = %lsn_text(start), "streaming changes");
        let (namespace, name) = match table.rsplit_once('.') {
            Some((s, t)) => (
                s.trim_matches('"').to_string(),
                t.trim_matches('"').to_string(),
            ),
            None => ("public".to_string(), table.trim_matches('"').to_string()),
        };
        Ok(Streamer {
            conn: rc,
            namespace,
            name,
            oid: None,
            mapping: Vec::new(),
            decoders: self
                .cols
                .iter()
                .map(|c| Decoder::new(&c.kind, 1024, false))
                .collect(),
            changes: ChangeColumns::new(),
            rows: 0,
            bytes: 0,
            txn: None,
            last_end: start,
            skip: self
                .state
                .partial
                .as_ref()
                .and_then(|(l, n)| parse_lsn(l).map(|l| (l, *n))),
            target,
            caught_up: false,
            first_row: None,
            last_status: Instant::now()
                .checked_sub(STATUS_EVERY)
                .unwrap_or_else(Instant::now),
            sent_confirmed: 0,
            schema_changed: false,
            heartbeat: opts.heartbeat.0,
            last_commit_us: None,
            idle_end: 0,
            last_heartbeat: Instant::now(),
            ping_every: Every::new(PING_EVERY),
            sql: runtime()
                .block_on(connect(conn))
                .map_err(|e| tracing::debug!(error = %e, "a monitoring connection"))
                .ok(),
            slot: slot.to_string(),
            measure_every: Every::new(MEASURE_EVERY),
            measured: None,
        })
    }

    fn snapshot_batch(&self, b: RecordBatch) -> Result<RecordBatch> {
        let start = parse_lsn(&self.state.start_lsn).unwrap_or(0) as i64;
        crate::cdc::snapshot_batch(&self.schema, b, start)
    }
}

/// A transaction being read.
struct Txn {
    final_lsn: Lsn,
    commit_time: i64,
    /// Changes of it to the table seen so far (delivered or skipped).
    changes: u64,
}

/// The streaming phase: the replication connection and the batch being built.
struct Streamer {
    conn: ReplicationConnection,
    namespace: String,
    name: String,
    /// The table's relation OID once the stream described it.
    oid: Option<u32>,
    /// For each column of the relation as the stream describes it: its index among ours.
    mapping: Vec<Option<usize>>,
    decoders: Vec<Decoder>,
    changes: ChangeColumns,
    rows: usize,
    bytes: usize,
    txn: Option<Txn>,
    /// The end LSN of the last transaction read completely.
    last_end: Lsn,
    /// A transaction whose first changes an earlier run delivered: (commit LSN, how many).
    skip: Option<(Lsn, u64)>,
    /// `follow: false`: the WAL position to catch up with.
    target: Option<Lsn>,
    caught_up: bool,
    first_row: Option<Instant>,
    last_status: Instant,
    sent_confirmed: Lsn,
    schema_changed: bool,
    heartbeat: Duration,
    /// The source commit time of the last change in the batch being built (µs since 1970);
    /// `None` after a heartbeat.
    last_commit_us: Option<i64>,
    /// The server's WAL end as last reported between transactions.
    idle_end: Lsn,
    last_heartbeat: Instant,
    /// `follow: false`: when to ask for a keepalive (its WAL position says whether
    /// the stream reached the target; unasked, the server sends one only every
    /// `wal_sender_timeout` / 2).
    ping_every: Every,
    /// An ordinary connection for monitoring queries (the replication connection is busy
    /// streaming); `None` if it could not be opened.
    sql: Option<tokio_postgres::Client>,
    slot: String,
    /// When to measure the slot's WAL, and what it last was: (retained, behind).
    measure_every: Every,
    measured: Option<(i64, i64)>,
}

impl Streamer {
    /// Measure the WAL the slot keeps and how far it trails (every [`MEASURE_EVERY`]). A
    /// failed query is logged and leaves the last value: monitoring never fails a run.
    fn measure(&mut self) {
        if !self.measure_every.due() {
            return;
        }
        let Some(client) = &self.sql else { return };
        let sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, \
                   pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint \
                   FROM pg_replication_slots WHERE slot_name = $1";
        let measured = runtime().block_on(async {
            tokio::time::timeout(Duration::from_secs(5), client.query_opt(sql, &[&self.slot])).await
        });
        match measured {
            Ok(Ok(Some(row))) => {
                let (r, b): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
                if let (Some(r), Some(b)) = (r, b) {
                    self.measured = Some((r, b));
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "measuring the slot's WAL"),
            Err(_) => tracing::debug!("measuring the slot's WAL: no answer in 5 s"),
        }
    }
}

/// How often a `follow: false` stream asks the server for its position while catching up.
const PING_EVERY: Duration = Duration::from_millis(200);

/// Microseconds between 1970-01-01 and 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Standby status updates at least this often.
const STATUS_EVERY: Duration = Duration::from_secs(5);

impl Streamer {
    fn relation(&mut self, r: Relation, cols: &[Col]) {
        if r.namespace != self.namespace || r.name != self.name {
            return;
        }
        let mut mapping = Vec::with_capacity(r.columns.len());
        for c in &r.columns {
            let i = cols.iter().position(|x| x.name == c.name);
            if i.is_none() {
                tracing::warn!(table = %r.name, column = %c.name, "a column was added to the table: ending this run after the changes before it; the next run reads it");
                self.schema_changed = true;
            }
            mapping.push(i);
        }
        self.oid = Some(r.oid);
        self.mapping = mapping;
    }

    /// Whether an update moved the row to another key: the old tuple (the replica
    /// identity's key, or the whole old row) holds a key value the new one does not.
    fn key_changed(&self, old: &[PgVal], new: &[PgVal], key: &[usize]) -> bool {
        old.iter().zip(new).enumerate().any(|(ri, (o, n))| {
            matches!(self.mapping.get(ri), Some(Some(ci)) if key.contains(ci))
                && matches!(o, PgVal::Binary(_) | PgVal::Null)
                && o != n
        })
    }

    /// One change to the table: appended unless an earlier run delivered it.
    fn change(
        &mut self,
        op: &str,
        new: Option<Vec<PgVal>>,
        old: Option<Vec<PgVal>>,
        cols: &[Col],
    ) -> Result<()> {
        let Some(t) = self.txn.as_mut() else {
            return Err(Error::data("pgoutput: a change outside a transaction"));
        };
        t.changes += 1;
        if let Some((lsn, n)) = self.skip {
            if lsn == t.final_lsn && t.changes <= n {
                return Ok(());
            }
        }
        let (final_lsn, commit_time) = (t.final_lsn, t.commit_time);
        let mut values: Vec<Option<&[u8]>> = vec![None; cols.len()];
        // A truncation has no row: every column NULL.
        let row = new.as_ref().or(old.as_ref()).map_or(&[][..], Vec::as_slice);
        for (ri, v) in row.iter().enumerate() {
            let Some(Some(ci)) = self.mapping.get(ri) else {
                continue;
            };
            values[*ci] = match v {
                PgVal::Null => None,
                PgVal::Binary(b) => Some(b.as_ref()),
                PgVal::Text(_) => {
                    return Err(Error::data(format!(
                        "column `{}` arrived as text in binary replication: its type has no binary form",
                        cols[*ci].name
                    )))
                }
                PgVal::Unchanged => match old.as_ref().and_then(|o| o.get(ri)) {
                    Some(PgVal::Binary(b)) => Some(b.as_ref()),
                    Some(PgVal::Null) => None,
                    _ => {
                        return Err(Error::data(format!(
                            "an update left the large (TOASTed) value of column `{}` of {}.{} unchanged and \
                             the log does not carry it: run `ALTER TABLE {}.{} REPLICA IDENTITY FULL` so \
                             the log holds the old row, then re-run (nothing was lost: the slot keeps the changes)",
                            cols[*ci].name, self.namespace, self.name, self.namespace, self.name
                        )))
                    }
                },
            };
        }
        for (d, v) in self.decoders.iter_mut().zip(&values) {
            d.append(*v).map_err(Error::data)?;
            self.bytes += v.map_or(0, <[u8]>::len);
        }
        self.changes
            .append(op, final_lsn as i64, commit_time + PG_EPOCH_MICROS);
        self.last_commit_us = Some(commit_time + PG_EPOCH_MICROS);
        self.rows += 1;
        self.first_row.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = self
            .decoders
            .iter_mut()
            .map(|d| d.finish().map_err(Error::data))
            .collect::<Result<_>>()?;
        self.rows = 0;
        self.bytes = 0;
        self.first_row = None;
        self.changes.finish(schema, cols)
    }

    fn status(&mut self, confirmed: Lsn, force: bool) -> Result<()> {
        if force || confirmed > self.sent_confirmed || self.last_status.elapsed() >= STATUS_EVERY {
            runtime().block_on(self.conn.send_status(confirmed, confirmed, false))?;
            self.sent_confirmed = confirmed;
            self.last_status = Instant::now();
        }
        Ok(())
    }
}

impl PgCdcReader {
    /// The state covering every change handed out so far.
    fn stream_state(&mut self) {
        if let Phase::Stream(s) = &self.phase {
            self.state.lsn = Some(lsn_text(s.last_end));
            self.state.source_commit_us = s.last_commit_us;
            self.state.partial = s
                .txn
                .as_ref()
                .filter(|t| t.changes > 0)
                .map(|t| (lsn_text(t.final_lsn), t.changes));
            self.state.retained_bytes = s.measured.map(|m| m.0);
            self.state.behind_bytes = s.measured.map(|m| m.1);
        }
    }

    fn next_stream(&mut self) -> Result<Option<RecordBatch>> {
        let Phase::Stream(s) = &mut self.phase else {
            return Ok(None);
        };
        loop {
            let confirmed = self.control.confirmed.load(Ordering::SeqCst);
            s.status(confirmed, false)?;
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
            // Heartbeat: nothing for the table for a while, but the server's WAL moved on
            // (other tables, other databases). Moving the state there, committed by the
            // runtime as an empty batch, lets the slot release that WAL.
            if s.rows == 0 && between && s.last_heartbeat.elapsed() >= s.heartbeat {
                if s.idle_end > s.last_end {
                    s.last_end = s.idle_end;
                    s.last_heartbeat = Instant::now();
                    s.last_commit_us = None;
                    tracing::debug!(lsn = %lsn_text(s.last_end), "heartbeat");
                    self.stream_state();
                    return Ok(Some(RecordBatch::new_empty(self.schema.clone())));
                }
                // Ask for a keepalive: it reports the server's WAL end.
                runtime().block_on(s.conn.send_status(confirmed, confirmed, true))?;
                s.last_status = Instant::now();
                s.last_heartbeat = Instant::now()
                    .checked_sub(s.heartbeat.saturating_sub(Duration::from_secs(1)))
                    .unwrap_or_else(Instant::now);
            }
            if (s.caught_up || stopping || s.schema_changed) && s.rows == 0 {
                // The last batch's state, or the position reached with nothing to deliver.
                self.stream_state();
                self.phase = Phase::Done;
                return Ok(None);
            }
            if s.txn.is_none() {
                s.measure();
            }
            // `--once`, between transactions and not there yet: ask where the stream is.
            if s.target.is_some() && !s.caught_up && s.txn.is_none() && s.ping_every.due() {
                runtime().block_on(s.conn.send_status(confirmed, confirmed, true))?;
                s.last_status = Instant::now();
            }
            let wait = match s.first_row {
                Some(t) => FLUSH
                    .saturating_sub(t.elapsed())
                    .max(Duration::from_millis(10)),
                None => Duration::from_millis(500),
            };
            match runtime().block_on(s.conn.recv(wait))? {
                None => {}
                Some(ReplicationMessage::Keepalive { wal_end, reply }) => {
                    if reply {
                        s.status(confirmed, true)?;
                    }
                    if s.txn.is_none() {
                        s.idle_end = s.idle_end.max(wal_end);
                        if s.target.is_some_and(|t| wal_end >= t) {
                            s.caught_up = true;
                        }
                    }
                }
                Some(ReplicationMessage::XLogData { wal_end, data, .. }) => {
                    match pgoutput::parse(data)? {
                        PgMsg::Begin {
                            final_lsn,
                            commit_time,
                            ..
                        } => {
                            s.txn = Some(Txn {
                                final_lsn,
                                commit_time,
                                changes: 0,
                            });
                        }
                        PgMsg::Commit { end_lsn, .. } => {
                            s.txn = None;
                            s.last_end = end_lsn;
                            s.last_heartbeat = Instant::now();
                            if s.skip.is_some_and(|(l, _)| l < end_lsn) {
                                s.skip = None;
                            }
                            if s.target.is_some_and(|t| wal_end >= t || end_lsn >= t) {
                                s.caught_up = true;
                            }
                        }
                        PgMsg::Relation(r) => s.relation(r, &self.cols),
                        PgMsg::Insert { oid, new } if Some(oid) == s.oid => {
                            s.change("I", Some(new), None, &self.cols)?
                        }
                        PgMsg::Update { oid, old, new } if Some(oid) == s.oid => {
                            // A changed key: the old key is deleted, then the new row lands.
                            if let Some(o) =
                                old.as_ref().filter(|o| s.key_changed(o, &new, &self.key))
                            {
                                s.change("D", None, Some(o.clone()), &self.cols)?;
                            }
                            s.change("U", Some(new), old, &self.cols)?
                        }
                        PgMsg::Delete { oid, old } if Some(oid) == s.oid => {
                            s.change("D", None, Some(old), &self.cols)?
                        }
                        PgMsg::Truncate { oids } if s.oid.is_some_and(|o| oids.contains(&o)) => {
                            s.change(TRUNCATE_OP, None, None, &self.cols)?
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

impl OpenReader for PgCdcReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        match &mut self.phase {
            Phase::Snapshot { src, .. } => match src.next_batch()? {
                Some(b) => {
                    self.state.snapshot = src.state()?;
                    self.snapshot_batch(b).map(Some)
                }
                None => {
                    // The snapshot is complete: it ends here and streaming starts at the
                    // slot's consistent point.
                    self.state.snapshot = None;
                    self.state.snapshot_done = true;
                    self.state.lsn = Some(self.state.start_lsn.clone());
                    let p = self.pending.as_ref().expect("set at open");
                    let st = self.streamer(&p.conn, &p.slot, &p.publication, &p.opts, &p.table)?;
                    let old = std::mem::replace(&mut self.phase, Phase::Stream(Box::new(st)));
                    if let Phase::Snapshot { src, .. } = old {
                        if let Err(e) = (src as Box<dyn OpenReader>).close() {
                            tracing::warn!(error = %e, "closing the snapshot reader");
                        }
                    }
                    tracing::info!("initial snapshot delivered; streaming changes");
                    // An empty batch hands the runtime the state "snapshot done".
                    Ok(Some(RecordBatch::new_empty(self.schema.clone())))
                }
            },
            Phase::Stream(_) => self.next_stream(),
            Phase::Done => Ok(None),
        }
    }

    fn state(&mut self) -> Result<Option<Value>> {
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
    fn state_round_trip_and_resume_point() {
        let s = CdcState {
            slot: "s".into(),
            start_lsn: "0/100".into(),
            snapshot_done: true,
            lsn: Some("0/2A0".into()),
            partial: Some(("0/300".into(), 7)),
            ..CdcState::default()
        };
        let v = s.to_value();
        let back = CdcState::from_value(&v).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.resume_lsn(), 0x2A0);
        let fresh = CdcState {
            slot: "s".into(),
            start_lsn: "0/100".into(),
            ..CdcState::default()
        };
        assert_eq!(fresh.resume_lsn(), 0x100);
        assert!(CdcState::from_value(&json!({"cursor": "5"})).is_err());
    }

    #[test]
    fn config_split() {
        let (o, rest) = split(&json!({"url": "postgres://x", "table": "public.t", "mode": "cdc", "slot": "s1", "follow": false})).unwrap();
        assert_eq!(o.slot.as_deref(), Some("s1"));
        assert!(!o.follow && o.create);
        assert_eq!(rest["mode"], "full_refresh");
        assert!(rest.get("slot").is_none());
        assert!(
            split(&json!({"url": "postgres://x", "mode": "cdc", "query": "select 1"})).is_err()
        );
        assert!(
            split(&json!({"url": "postgres://x", "table": "t", "mode": "cdc", "cursor": "u"}))
                .is_err()
        );
        assert_eq!(default_name("orders/public.t"), "dativo_orders_public_t");
    }
}
