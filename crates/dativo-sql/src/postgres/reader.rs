//! The `postgres` reader: planning in one snapshot, parallel binary COPY, resumable state.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{bounded, Receiver, Sender};
use futures_util::StreamExt;
use serde_json::Value;
use tokio_postgres::Client;

use dativo_core::config::from_config;
use dativo_core::{Error, Reader, ReaderContext, Result};

use super::config::{PostgresReaderConfig, ReadMode, SpecialValues};
use super::copy::CopyParser;
use crate::keyset::{
    check_batch_bytes, key_literal, split_ranges, BatchBound, Dialect, KeyRange,
    KeysetState as PgState, PartMsg, Plan,
};
use dativo_pg::{connect, map_error, runtime};

const PG: Dialect = Dialect::Postgres;

fn ident(name: &str) -> String {
    PG.ident(name)
}

fn lit(value: &str) -> String {
    PG.lit(value)
}

fn table_ref(table: &str) -> String {
    PG.table_ref(table)
}
use super::types::{field_for, kind_for, ColKind, Decoder};

/// A column as read: name, type name, kind, select expression.
#[derive(Clone)]
struct Column {
    name: String,
    type_name: String,
    kind: ColKind,
    select: String,
}

/// Reads a table or query from PostgreSQL.
#[derive(Default)]
pub struct PostgresReader {
    cfg: Option<PostgresReaderConfig>,
    ctx: Option<ReaderContext>,
    coordinator: Option<Client>,
    snapshot: Option<String>,
    schema: Option<SchemaRef>,
    columns: Vec<Column>,
    base: String,
    order_col: Option<usize>,
    state: PgState,
    plan: Option<Plan>,
    exclude: Option<String>,
    rx: Option<Receiver<PartMsg>>,
    started: bool,
    finished: bool,
    stop: Arc<AtomicBool>,
}

fn q(client: &Client, sql: &str, doing: &str) -> Result<Vec<tokio_postgres::Row>> {
    runtime()
        .block_on(client.query(sql, &[]))
        .map_err(|e| map_error(e, doing))
}

fn scalar_text(client: &Client, sql: &str, doing: &str) -> Result<Option<String>> {
    let rows = q(client, sql, doing)?;
    Ok(rows.first().and_then(|r| r.get::<_, Option<String>>(0)))
}

impl PostgresReader {
    /// A new, uninitialized reader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate a config without connecting.
    pub fn validate(config: &Value) -> Result<()> {
        let cfg = from_config::<PostgresReaderConfig>(config)?;
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
    fn check_null_cursor(&self, col: &Column, c: &str) -> Result<()> {
        if let (Some(t), true) = (&self.cfg().table, col.select == ident(&col.name)) {
            let sql = format!(
                "SELECT CASE WHEN attnotnull THEN 'yes' END FROM pg_attribute \
                 WHERE attrelid = {}::regclass AND attname = {} AND NOT attisdropped",
                lit(&table_ref(t)),
                lit(&col.name)
            );
            if scalar_text(self.client(), &sql, "checking the cursor column")?.is_some() {
                return Ok(());
            }
        }
        let probe = format!(
            "SELECT 'yes' {} LIMIT 1",
            self.source_where(&format!("{c} IS NULL"))
        );
        if scalar_text(self.client(), &probe, "checking for NULL cursors")?.is_none() {
            return Ok(());
        }
        let count = scalar_text(
            self.client(),
            &format!(
                "SELECT count(*)::text {}",
                self.source_where(&format!("{c} IS NULL"))
            ),
            "counting NULL cursors",
        )?
        .unwrap_or_default();
        Err(Error::data(format!(
            "{count} row(s) of {} have a NULL cursor `{}`; an incremental read (`{} > last`) can never deliver them, \
             so the run stops instead of skipping them: give them a cursor value, or exclude them knowingly \
             (`where: \"{} IS NOT NULL\"`, or coalesce the column in `query`)",
            self.source_name(),
            col.name,
            col.name,
            col.name
        )))
    }

    fn cfg(&self) -> &PostgresReaderConfig {
        self.cfg.as_ref().expect("initialized")
    }

    fn client(&self) -> &Client {
        self.coordinator.as_ref().expect("connected")
    }

    /// Discover the columns of the source and how to select them.
    fn discover(&mut self) -> Result<()> {
        let cfg = self.cfg().clone();
        let base = match (&cfg.table, &cfg.query) {
            (Some(t), _) => {
                let cols = match &cfg.columns {
                    Some(c) => c.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", "),
                    None => "*".into(),
                };
                let filter = cfg
                    .where_clause
                    .as_ref()
                    .map(|w| format!(" WHERE ({w})"))
                    .unwrap_or_default();
                format!("SELECT {cols} FROM {}{filter}", table_ref(t))
            }
            (None, Some(query)) => query.trim().trim_end_matches(';').to_string(),
            (None, None) => unreachable!("checked"),
        };
        let what = cfg
            .table
            .as_deref()
            .map(|t| format!("table {t}"))
            .unwrap_or_else(|| "the query".into());
        let stmt = runtime()
            .block_on(
                self.client()
                    .prepare(&format!("SELECT * FROM ({base}) AS dativo_src LIMIT 0")),
            )
            .map_err(|e| map_error(e, &format!("reading the columns of {what}")))?;
        // Privileges are checked when a statement runs, not when it is prepared.
        runtime()
            .block_on(self.client().query(&stmt, &[]))
            .map_err(|e| map_error(e, &format!("reading {what}")))?;
        let mut columns = Vec::new();
        let mut unsupported = Vec::new();
        for c in stmt.columns() {
            let name = c.name().to_string();
            match kind_for(c.type_(), c.type_modifier(), &cfg.numeric) {
                Ok(kind) => columns.push(Column {
                    select: ident(&name),
                    name,
                    type_name: c.type_().name().to_string(),
                    kind,
                }),
                Err(t) if cfg.cast_unsupported_to_text => {
                    tracing::debug!(column = c.name(), r#type = %t, "reading as text");
                    columns.push(Column {
                        select: format!("{}::text AS {}", ident(&name), ident(&name)),
                        name,
                        type_name: "text".into(),
                        kind: ColKind::Text,
                    })
                }
                Err(t) => unsupported.push(format!("`{name}` ({t})")),
            }
        }
        if !unsupported.is_empty() {
            return Err(Error::schema(format!(
                "unsupported column type{}: {}; set `cast_unsupported_to_text: true` to read {} as text, or cast in `query`",
                if unsupported.len() > 1 { "s" } else { "" },
                unsupported.join(", "),
                if unsupported.len() > 1 { "them" } else { "it" }
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &columns {
            if !seen.insert(c.name.clone()) {
                return Err(Error::schema(format!(
                    "the source has two columns named `{}`; alias them in `query`",
                    c.name
                )));
            }
        }
        let fields: Vec<_> = columns
            .iter()
            .map(|c| field_for(&c.name, &c.kind))
            .collect();
        self.schema = Some(Arc::new(Schema::new(fields)));
        self.columns = columns;
        self.base = base;
        Ok(())
    }

    /// The SQL expression a read is ordered and resumed by. Batches are cut where the key's
    /// bytes change, so SQL equality must mean byte equality: citext is compared as text, and
    /// types where equal values can differ in bytes (floats, unconstrained numerics) or that
    /// have no faithful literal (bytea) cannot order a read.
    fn key_expr(&self, name: &str) -> Result<String> {
        let i = self.column_index(name, "partition_column")?;
        let c = &self.columns[i];
        match c.kind {
            ColKind::F32 | ColKind::F64 | ColKind::Bytea | ColKind::NumericText => Err(Error::config(format!(
                "`{name}` ({}) cannot order a resumable read: use an integer, numeric(p,s), date, timestamp, text or uuid column",
                c.type_name
            ))
            .with_key_path(if self.cfg().cursor.as_deref() == Some(name) { "cursor" } else { "partition_column" })),
            _ if c.type_name == "citext" => Ok(format!("{}::text", ident(name))),
            _ => Ok(ident(name)),
        }
    }

    fn column_index(&self, name: &str, key: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| {
                Error::config(format!(
                    "column `{name}` is not among the columns read ({})",
                    self.columns
                        .iter()
                        .map(|c| c.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
                .with_key_path(key)
            })
    }

    fn primary_key(&self) -> Result<Vec<String>> {
        if let Some(pk) = &self.cfg().primary_key {
            return Ok(pk.clone());
        }
        let Some(t) = &self.cfg().table else {
            return Ok(Vec::new());
        };
        let sql = format!(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = {}::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
            lit(&table_ref(t))
        );
        Ok(q(self.client(), &sql, "finding the primary key")?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect())
    }

    /// Restrict the source to one shard: ranges of `partition_column` when `lower_bound` and
    /// `upper_bound` are given (index-friendly; the first and last shard are open-ended), else
    /// a stable hash of the primary key.
    fn apply_shard(&mut self, shard: dativo_core::Shard) -> Result<()> {
        let cfg = self.cfg().clone();
        let (n, i) = (shard.count, shard.index as usize);
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let pred = match (&cfg.partition_column, &cfg.lower_bound, &cfg.upper_bound) {
            (Some(col), Some(lo), Some(hi)) => {
                let c = self.columns[self.column_index(col, "partition_column")?].clone();
                let points = self.split_points(&c, &text(lo), &text(hi), n)?;
                let (e, ty) = (ident(col), &c.type_name);
                let lower = (i > 0).then(|| format!("{e} >= {}::{ty}", lit(&points[i - 1])));
                let upper =
                    (i + 1 < n as usize).then(|| format!("{e} < {}::{ty}", lit(&points[i])));
                match (lower, upper) {
                    (None, Some(u)) => format!("({u} OR {e} IS NULL)"),
                    (Some(l), Some(u)) => format!("{l} AND {u}"),
                    (Some(l), None) => l,
                    (None, None) => "true".into(),
                }
            }
            _ => {
                let mut keys = self.primary_key()?;
                if keys.is_empty() {
                    keys = cfg.partition_column.iter().cloned().collect();
                }
                if keys.is_empty() {
                    return Err(Error::config(
                        "this source cannot be sharded: it has no primary key — set `primary_key`, or `partition_column` (with `lower_bound`/`upper_bound` for ranges)",
                    )
                    .with_key_path("primary_key"));
                }
                let expr = keys
                    .iter()
                    .map(|k| format!("coalesce({}::text, '')", ident(k)))
                    .collect::<Vec<_>>()
                    .join(" || '|' || ");
                format!("((hashtextextended({expr}, 0) % {n}) + {n}) % {n} = {i}")
            }
        };
        tracing::debug!(shard = %format!("{i}/{n}"), predicate = %pred, "reading one shard");
        self.base = format!("SELECT * FROM ({}) AS dativo_shard WHERE {pred}", self.base);
        Ok(())
    }

    fn source_where(&self, pred: &str) -> String {
        format!("FROM ({}) AS dativo_src WHERE {pred}", self.base)
    }

    /// Split [lo, hi] of the ordering column at n-1 points, computed by the server.
    fn split_points(&self, col: &Column, lo: &str, hi: &str, n: u32) -> Result<Vec<String>> {
        if n <= 1 {
            return Ok(Vec::new());
        }
        let ty = &col.type_name;
        let expr = match col.kind {
            ColKind::I16 | ColKind::I32 | ColKind::I64 | ColKind::Decimal(..) | ColKind::F32 | ColKind::F64 => format!(
                "({lo}::numeric + ({hi}::numeric - {lo}::numeric) * k / {n})::{ty}::text",
                lo = lit(lo),
                hi = lit(hi)
            ),
            ColKind::Date | ColKind::Timestamp | ColKind::TimestampTz => format!(
                "({lo}::{ty} + ({hi}::{ty} - {lo}::{ty}) * k / {n})::{ty}::text",
                lo = lit(lo),
                hi = lit(hi)
            ),
            _ => {
                return Err(Error::config(format!(
                    "cannot split the read on `{}` of type {ty}: use a numeric, date or timestamp column, or `partitions: 1`",
                    col.name
                ))
                .with_key_path("partition_column"))
            }
        };
        let rows = q(
            self.client(),
            &format!(
                "SELECT {expr} FROM generate_series(1, {}) AS k ORDER BY k",
                n - 1
            ),
            "splitting the key range",
        )?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    }

    fn lookback_expr(&self, col: &Column, cursor: &str) -> Result<Option<String>> {
        let Some(lb) = &self.cfg().lookback else {
            return Ok(None);
        };
        let amount = match (lb, &col.kind) {
            (Value::String(s), ColKind::Date | ColKind::Timestamp | ColKind::TimestampTz) => {
                let d = humantime::parse_duration(s).map_err(|e| {
                    Error::config(format!("invalid lookback `{s}`: {e}")).with_key_path("lookback")
                })?;
                format!("interval '{} seconds'", d.as_secs())
            }
            (Value::Number(n), ColKind::I16 | ColKind::I32 | ColKind::I64 | ColKind::Decimal(..) | ColKind::F32 | ColKind::F64) => n.to_string(),
            _ => {
                return Err(Error::config(format!(
                    "lookback {lb} does not fit cursor `{}` of type {}: use a duration (`10m`) for time cursors, a number for numeric ones",
                    col.name, col.type_name
                ))
                .with_key_path("lookback"))
            }
        };
        let sql = format!(
            "SELECT ({}::{} - {amount})::{}::text",
            lit(cursor),
            col.type_name,
            col.type_name
        );
        scalar_text(self.client(), &sql, "computing the lookback window")
    }

    /// `md5((pk…)::text || '|' || cursor::text)` for lookback de-duplication.
    fn row_hash(&self, pk: &[String], cursor: &str) -> String {
        let keys: Vec<String> = pk.iter().map(|k| ident(k)).collect();
        format!(
            "md5(ROW({})::text || '|' || {}::text)",
            keys.join(", "),
            ident(cursor)
        )
    }

    /// The hashes of the previous run's `seen` whose rows lie in the new window (above
    /// `above`): this run skips them, and the next one must too.
    fn seen_carried_over(&self, col: &Column, c: &str, above: &str) -> Result<Vec<String>> {
        let Some(prev) = &self.state.cursor else {
            return Ok(Vec::new());
        };
        if self.state.seen.is_empty() {
            return Ok(Vec::new());
        }
        let pk = self.lookback_key()?;
        let hashes: Vec<String> = self.state.seen.iter().map(|h| lit(h)).collect();
        let hash = self.row_hash(&pk, &col.name);
        let sql = format!(
            "SELECT {hash} {}",
            self.source_where(&format!(
                "{c} > {} AND {c} <= {} AND {hash} = ANY(ARRAY[{}]::text[])",
                lit(above),
                lit(prev),
                hashes.join(",")
            ))
        );
        Ok(q(self.client(), &sql, "carrying the lookback window over")?
            .iter()
            .map(|r| r.get::<_, String>(0))
            .collect())
    }

    /// The primary key `lookback` identifies rows by.
    fn lookback_key(&self) -> Result<Vec<String>> {
        let pk = self.primary_key()?;
        if pk.is_empty() {
            return Err(
                Error::config("`lookback` needs `primary_key` (the table has none)")
                    .with_key_path("primary_key"),
            );
        }
        Ok(pk)
    }

    fn new_plan(&mut self) -> Result<Plan> {
        let cfg = self.cfg().clone();
        let n = cfg.partitions;
        match cfg.mode() {
            ReadMode::Incremental => {
                let cursor_name = cfg.cursor.clone().expect("checked");
                let ci = self.column_index(&cursor_name, "cursor")?;
                let col = self.columns[ci].clone();
                let c = self.key_expr(&col.name)?;
                self.check_null_cursor(&col, &c)?;
                let (lo, lo_inclusive) = match &self.state.cursor {
                    Some(h) => (self.lookback_expr(&col, h)?.or(Some(h.clone())), false),
                    None => (
                        scalar_text(
                            self.client(),
                            &format!(
                                "SELECT min({c})::text {}",
                                self.source_where(&format!("{c} IS NOT NULL"))
                            ),
                            "finding the lowest cursor",
                        )?,
                        true,
                    ),
                };
                // The run reads up to the highest cursor in its snapshot; never below the
                // committed one (with a lookback, rows may only exist below it).
                let (upper_pred, floor) = match (&lo, &self.state.cursor) {
                    (Some(l), Some(h)) => (
                        format!("{c} > {}", lit(l)),
                        format!("{}::{}", lit(h), col.type_name),
                    ),
                    _ => (format!("{c} IS NOT NULL"), "NULL".to_string()),
                };
                let upper = scalar_text(
                    self.client(),
                    &format!(
                        "SELECT GREATEST(max({c}), {floor})::text {}",
                        self.source_where(&upper_pred)
                    ),
                    "finding the highest cursor",
                )?;
                let upper = match (&upper, &self.state.cursor) {
                    // Nothing new above the committed cursor and no lookback: nothing to read.
                    (Some(u), Some(h)) if u == h && self.cfg().lookback.is_none() => None,
                    _ => upper,
                };
                let ranges = match (&lo, &upper) {
                    (Some(l), Some(u)) => {
                        let points = self.split_points(&col, l, u, n)?;
                        split_ranges(Some(l.clone()), lo_inclusive, Some(u.clone()), &points)
                    }
                    _ => Vec::new(),
                };
                let (seen_above, seen) = match &upper {
                    Some(u) if cfg.lookback.is_some() => {
                        let above = self.lookback_expr(&col, u)?.unwrap_or_else(|| u.clone());
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
                        return Err(Error::config(
                            "`partitions` needs `partition_column` (no single-column primary key was found)",
                        )
                        .with_key_path("partition_column"));
                    }
                    return Ok(Plan {
                        mode: "full_refresh".into(),
                        column: None,
                        upper: None,
                        ranges: vec![KeyRange {
                            lo: None,
                            lo_inclusive: false,
                            hi: None,
                            nulls: false,
                            after: None,
                            finished: false,
                        }],
                        delivered: 0,
                        seen_above: None,
                        seen: Vec::new(),
                    });
                };
                let ci = self.column_index(&order, "partition_column")?;
                let col = self.columns[ci].clone();
                let c = self.key_expr(&col.name)?;
                let bound = |v: &Option<Value>| -> Option<String> {
                    v.as_ref().map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                };
                let (mut lo, mut hi) = (bound(&cfg.lower_bound), bound(&cfg.upper_bound));
                if n > 1 && (lo.is_none() || hi.is_none()) {
                    let rows = q(
                        self.client(),
                        &format!(
                            "SELECT min({c})::text, max({c})::text {}",
                            self.source_where("true")
                        ),
                        "finding the partition bounds",
                    )?;
                    let r = rows.first();
                    lo = lo.or_else(|| r.and_then(|r| r.get::<_, Option<String>>(0)));
                    hi = hi.or_else(|| r.and_then(|r| r.get::<_, Option<String>>(1)));
                }
                let points = match (&lo, &hi) {
                    (Some(l), Some(h)) => self.split_points(&col, l, h, n)?,
                    _ => Vec::new(),
                };
                // The outer ranges are open: given bounds only guide the split, rows outside
                // them are read too.
                let mut ranges = split_ranges(None, false, None, &points);
                let nullable = scalar_text(
                    self.client(),
                    &format!(
                        "SELECT 'yes' {} LIMIT 1",
                        self.source_where(&format!("{c} IS NULL"))
                    ),
                    "checking for NULL keys",
                )?
                .is_some();
                if nullable {
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

    fn start(&mut self) -> Result<()> {
        self.started = true;
        let plan = self.plan.clone().expect("planned");
        let cfg = self.cfg().clone();
        let pending: Vec<(usize, KeyRange)> = plan
            .ranges
            .iter()
            .cloned()
            .enumerate()
            .filter(|(_, r)| !r.finished)
            .collect();
        // One batch queued per range: with wide rows every batch in flight is `batch_bytes`.
        let (tx, rx) = bounded::<PartMsg>(pending.len().max(1));
        self.rx = Some(rx);
        let mut select: Vec<String> = self.columns.iter().map(|c| c.select.clone()).collect();
        let mut kinds: Vec<ColKind> = self.columns.iter().map(|c| c.kind.clone()).collect();
        let mut names: Vec<String> = self.columns.iter().map(|c| c.name.clone()).collect();
        // With `lookback`, each row in the window also carries its hash (keyset.rs, `lookback`).
        let seen_col = match (&plan.seen_above, &plan.column) {
            (Some(above), Some(col)) => {
                let c = self.key_expr(col)?;
                let hash = self.row_hash(&self.lookback_key()?, col);
                select.push(format!("CASE WHEN {c} > {} THEN {hash} END", lit(above)));
                kinds.push(ColKind::Text);
                names.push("(lookback hash)".into());
                true
            }
            _ => false,
        };
        for (i, range) in pending {
            let sql = match &plan.column {
                Some(col) => {
                    let c = self.key_expr(col)?;
                    let mut pred = range.predicate(PG, &c);
                    if let Some(ex) = &self.exclude {
                        pred = format!("({pred}) AND {ex}");
                    }
                    format!(
                        "SELECT {} {} ORDER BY {c}",
                        select.join(", "),
                        self.source_where(&pred)
                    )
                }
                None => format!("SELECT {} {}", select.join(", "), self.source_where("true")),
            };
            let task = PartitionTask {
                cfg: cfg.clone(),
                snapshot: self.snapshot.clone(),
                sql,
                kinds: kinds.clone(),
                names: names.clone(),
                schema: self.schema.clone().expect("schema"),
                key: self.order_col,
                bound: BatchBound {
                    rows: cfg.batch_size,
                    bytes: cfg.batch_bytes.0 as usize,
                },
                seen_col,
                source: self.source_name(),
                special_null: cfg.special_values == SpecialValues::Null,
                range: i,
                tx: tx.clone(),
                stop: self.stop.clone(),
            };
            std::thread::Builder::new()
                .name(format!("dativo-pg-{i}"))
                .spawn(move || {
                    let tx = task.tx.clone();
                    if let Err(e) = runtime().block_on(task.run()) {
                        let _ = tx.send(PartMsg::Failed(e));
                    }
                })
                .map_err(|e| Error::internal(format!("cannot start a reader thread: {e}")))?;
        }
        Ok(())
    }

    /// All ranges are done: compute the state that starts the next run.
    fn finish_state(&mut self) -> Result<()> {
        let plan = self.plan.take().expect("planned");
        let cfg = self.cfg().clone();
        let mut next = PgState::default();
        if plan.mode == "incremental" {
            next.cursor = plan.upper.clone().or(self.state.cursor.clone());
            if plan.seen_above.is_some() {
                // The rows this plan delivered (or skipped as delivered) in the window.
                next.seen = plan.seen;
                next.seen.sort();
                next.seen.dedup();
            } else if let (Some(_), Some(cursor)) = (&cfg.lookback, &next.cursor) {
                // A plan stored by an older version: the window as this snapshot sees it.
                let ci = self.column_index(cfg.cursor.as_deref().expect("checked"), "cursor")?;
                let col = self.columns[ci].clone();
                let pk = self.lookback_key()?;
                let lo = self
                    .lookback_expr(&col, cursor)?
                    .unwrap_or_else(|| cursor.clone());
                let c = self.key_expr(&col.name)?;
                let sql = format!(
                    "SELECT {} {}",
                    self.row_hash(&pk, &col.name),
                    self.source_where(&format!("{c} > {} AND {c} <= {}", lit(&lo), lit(cursor)))
                );
                next.seen = q(self.client(), &sql, "recording the lookback window")?
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect();
                next.seen.sort();
            }
        } else {
            next.last_full_refresh = self.ctx.as_ref().map(|c| c.run_id.clone());
        }
        self.state = next;
        self.finished = true;
        Ok(())
    }
}

struct PartitionTask {
    cfg: PostgresReaderConfig,
    snapshot: Option<String>,
    sql: String,
    kinds: Vec<ColKind>,
    names: Vec<String>,
    schema: SchemaRef,
    key: Option<usize>,
    bound: BatchBound,
    /// The last column is the `lookback` hash, not part of the batch.
    seen_col: bool,
    /// `table t` or `the query`, for messages.
    source: String,
    special_null: bool,
    range: usize,
    tx: Sender<PartMsg>,
    stop: Arc<AtomicBool>,
}

impl PartitionTask {
    async fn run(self) -> Result<()> {
        let client = connect(&self.cfg.connection()).await?;
        let mut begin = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;".to_string();
        if let Some(s) = &self.snapshot {
            begin.push_str(&format!(" SET TRANSACTION SNAPSHOT {};", lit(s)));
        }
        client
            .batch_execute(&begin)
            .await
            .map_err(|e| map_error(e, "starting the snapshot transaction"))?;
        let copy = format!("COPY ({}) TO STDOUT (FORMAT binary)", self.sql);
        let stream = client
            .copy_out(copy.as_str())
            .await
            .map_err(|e| map_error(e, "starting COPY"))?;
        futures_util::pin_mut!(stream);
        let ncols = self.kinds.len();
        let mut decoders: Vec<Decoder> = self
            .kinds
            .iter()
            .map(|k| Decoder::new(k, self.bound.rows, self.special_null))
            .collect();
        let mut parser = CopyParser::default();
        let mut fields = Vec::with_capacity(ncols);
        let mut rows = 0usize;
        let mut bytes = 0usize;
        let mut row_no = 0u64;
        let mut last_key: Vec<u8> = Vec::new();
        let mut last_null = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| map_error(e, "reading COPY data"))?;
            parser.push(&chunk);
            while parser
                .next_row(&mut fields)
                .map_err(|m| Error::data(format!("COPY stream: {m}")))?
            {
                if fields.len() != ncols {
                    return Err(Error::data(format!(
                        "COPY row has {} fields, expected {ncols}",
                        fields.len()
                    )));
                }
                let full = self.bound.full(rows, bytes);
                match self.key {
                    Some(k) => {
                        let kf = fields[k];
                        if full {
                            let same = match kf {
                                None => last_null,
                                Some(r) => !last_null && parser.field(r) == last_key.as_slice(),
                            };
                            if !same {
                                self.emit(&mut decoders, false)?;
                                rows = 0;
                                bytes = 0;
                            }
                        }
                        match kf {
                            None => last_null = true,
                            Some(r) => {
                                last_null = false;
                                last_key.clear();
                                last_key.extend_from_slice(parser.field(r));
                            }
                        }
                    }
                    None => {
                        if full {
                            self.emit(&mut decoders, false)?;
                            rows = 0;
                            bytes = 0;
                        }
                    }
                }
                for (i, f) in fields.iter().enumerate() {
                    decoders[i]
                        .append(f.map(|r| parser.field(r)))
                        .map_err(|m| {
                            Error::data(format!(
                                "{}, column `{}`, row {}: {m}",
                                self.source,
                                self.names[i],
                                row_no + 1
                            ))
                        })?;
                    // The value's bytes plus a length word, as on the wire.
                    bytes += 4 + f.map_or(0, |(a, b)| b - a);
                }
                rows += 1;
                row_no += 1;
            }
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
        }
        if !parser.finished {
            return Err(Error::transient("the COPY stream ended early"));
        }
        if rows > 0 {
            self.emit(&mut decoders, true)?;
        } else {
            let _ = self.tx.send(PartMsg::Done(self.range));
        }
        let _ = client.batch_execute("COMMIT").await;
        Ok(())
    }

    fn emit(&self, decoders: &mut [Decoder], last: bool) -> Result<()> {
        let mut arrays: Vec<_> = decoders.iter_mut().map(|d| d.finish()).collect();
        let seen = if self.seen_col {
            let hashes = arrays.pop().expect("the hash column");
            let hashes = arrow::array::AsArray::as_string::<i32>(hashes.as_ref());
            hashes.iter().flatten().map(str::to_string).collect()
        } else {
            Vec::new()
        };
        let key = match self.key {
            Some(k) => {
                let a = &arrays[k];
                let n = a.len();
                if n == 0 || a.is_null(n - 1) {
                    None
                } else {
                    Some(key_literal(a.as_ref(), n - 1, true)?)
                }
            }
            None => None,
        };
        let batch = RecordBatch::try_new(self.schema.clone(), arrays)?;
        // A closed channel means the reader is gone: stop quietly.
        let _ = self.tx.send(PartMsg::Batch {
            range: self.range,
            batch,
            key,
            last,
            seen,
        });
        Ok(())
    }
}

impl Reader for PostgresReader {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        let cfg: PostgresReaderConfig = from_config(config)?;
        cfg.check()?;
        check_batch_bytes(cfg.batch_bytes.0)?;
        let state: PgState = match &ctx.state {
            Some(s) if cfg.mode() == ReadMode::Incremental || s.get("plan").is_some() => {
                serde_json::from_value(s.clone()).map_err(|e| {
                    Error::data(format!(
                        "the stored state is not a postgres reader state ({e}); reset it with `dativo state reset`"
                    ))
                })?
            }
            _ => PgState::default(),
        };
        self.cfg = Some(cfg);
        self.ctx = Some(ctx.clone());
        let client = runtime().block_on(connect(&self.cfg().connection()))?;
        self.coordinator = Some(client);
        runtime()
            .block_on(
                self.client()
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
            )
            .map_err(|e| map_error(e, "starting the snapshot transaction"))?;
        self.snapshot = scalar_text(
            self.client(),
            "SELECT pg_export_snapshot()",
            "exporting the snapshot",
        )?;
        self.discover()?;
        if ctx.shard.count > 1 {
            self.apply_shard(ctx.shard)?;
        }
        self.state = state;
        let plan = match self.state.plan.take() {
            Some(p) => {
                let want = match self.cfg().mode() {
                    ReadMode::Incremental => "incremental",
                    ReadMode::FullRefresh => "full_refresh",
                };
                if p.mode != want {
                    return Err(Error::data(format!(
                        "an interrupted {} run is pending but the job now asks for {want}; finish it with the old config or `dativo state reset`",
                        p.mode
                    )));
                }
                p.check_resumable()?;
                tracing::info!(
                    ranges = p.ranges.iter().filter(|r| !r.finished).count(),
                    "resuming an interrupted read"
                );
                p
            }
            None => self.new_plan()?,
        };
        self.order_col = match &plan.column {
            Some(c) => {
                self.key_expr(c)?;
                Some(self.column_index(c, "partition_column")?)
            }
            None => None,
        };
        if plan.mode == "incremental" && !self.state.seen.is_empty() {
            let pk = self.primary_key()?;
            if !pk.is_empty() {
                let cursor = self.cfg().cursor.clone().expect("checked");
                let hashes: Vec<String> = self.state.seen.iter().map(|h| lit(h)).collect();
                self.exclude = Some(format!(
                    "({} > {} OR {} <> ALL(ARRAY[{}]::text[]))",
                    ident(&cursor),
                    lit(self.state.cursor.as_deref().unwrap_or("")),
                    self.row_hash(&pk, &cursor),
                    hashes.join(",")
                ));
            }
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

    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        let mut s = self.state.clone();
        if !self.finished {
            s.plan = self.plan.clone();
        }
        Ok(Some(serde_json::to_value(s)?))
    }

    fn close(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.rx = None;
        if let Some(c) = self.coordinator.take() {
            let _ = runtime().block_on(c.batch_execute("COMMIT"));
        }
        Ok(())
    }
}

impl Drop for PostgresReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
