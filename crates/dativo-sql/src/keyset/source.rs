//! [`SqlSource`]: a SQL reader over any [`Dialect`] — discovery, key choice, sharding,
//! `lookback`, planning, reading and the state, once for every database.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{bounded, Receiver};
use serde_json::Value;

use dativo_core::streams::{SourceColumn, SourceTable};
use dativo_core::{Delivery, Error, OpenReader, ReaderContext, Result, Shard, StreamInfo};

use super::batch::{BatchBound, PartMsg, ReadSpec};
use super::config::{config_error, load, ReadMode, SqlConfig, SqlOptions};
use super::dialect::{Column, Dialect};
use super::state::{split_ranges, KeyRange, KeysetState, Plan};

/// A table or query of a SQL database, open on one snapshot and being read by its plan.
///
/// [`SqlSource::open`] connects, discovers the columns, plans (or resumes the stored plan)
/// and starts the partition readers; batches then come from [`OpenReader::next_batch`].
/// Dropping it stops the readers and ends the snapshot; [`OpenReader::close`] does the same
/// and reports a failure to.
pub struct SqlSource<D: Dialect> {
    snap: Snapshot<D>,
    schema: SchemaRef,
    run_id: String,
    /// The committed state the run started from, then the state of the finished run.
    state: KeysetState,
    progress: Progress,
    stop: Arc<AtomicBool>,
    info: StreamInfo,
}

enum Progress {
    /// The plan (with its progress so far) and where the partition readers send batches.
    Reading { plan: Plan, rx: Receiver<PartMsg> },
    /// Every range was delivered; the state is final.
    Done,
}

/// The source as the snapshot shows it: the database, the SQL it is read with, its columns.
struct Snapshot<D: Dialect> {
    db: D,
    opts: SqlOptions,
    /// The source's query (the table's select, or `query`; restricted to a shard).
    base: String,
    /// A table's select without its `WHERE`, and its `where:` filter: physical ranges add
    /// their predicate on the table itself.
    table_select: Option<(String, Option<String>)>,
    columns: Vec<Column<D::Kind>>,
}

impl<D: Dialect> SqlSource<D> {
    /// Check a config without I/O: every key, its type and the combinations allowed.
    pub fn validate(config: &Value) -> Result<()> {
        Self::load(config).map(drop)
    }

    fn load(config: &Value) -> Result<SqlConfig<D::Options>> {
        let c = load::<D::Options>(config)?;
        c.shared.check()?;
        c.connection
            .check(D::SQL.url_schemes(), D::SQL.url_example())?;
        D::check(&c.own)?;
        Ok(c)
    }

    /// The tables `config` (a `tables:` config: its connection keys count) can select, with
    /// their catalog's estimates, primary keys and columns.
    pub fn discover(config: &Value) -> Result<Vec<SourceTable>> {
        let mut c = config.clone();
        if let Value::Object(m) = &mut c {
            // Only the connection is used: one planning connection, no locks.
            const PER_TABLE: [&str; 9] = [
                "tables",
                "streams",
                "cursor",
                "mode",
                "lookback",
                "primary_key",
                "partition_column",
                "lower_bound",
                "upper_bound",
            ];
            m.retain(|k, _| !PER_TABLE.contains(&k.as_str()));
            m.insert("table".into(), Value::String("dativo_discover.t".into()));
            m.insert("partitions".into(), Value::from(1));
        }
        let config = Self::load(&c)?;
        let mut db = D::open(&config)?;
        let listed = (|| {
            let tables = db.rows(&D::tables_sql(), "listing the tables")?;
            let columns = db.rows(&D::columns_sql(), "listing the tables' columns")?;
            Ok::<_, Error>((tables, columns))
        })();
        let closed = db.close();
        let (tables, columns) = listed?;
        closed?;
        let num = |v: &Option<String>| {
            v.as_deref()
                .and_then(|s| s.trim().parse::<f64>().ok())
                .filter(|n| *n >= 0.0)
                .map(|n| n as u64)
        };
        let text = |v: Option<&Option<String>>| v.cloned().flatten().unwrap_or_default();
        let mut out: Vec<SourceTable> = Vec::with_capacity(tables.len());
        let mut index = std::collections::HashMap::new();
        for r in &tables {
            let (schema, name) = (text(r.first()), text(r.get(1)));
            let plain = |s: &str| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
            };
            let reference = if plain(&schema) && plain(&name) {
                format!("{schema}.{name}")
            } else {
                format!("{}.{}", D::ident(&schema), D::ident(&name))
            };
            index.insert((schema.clone(), name.clone()), out.len());
            out.push(SourceTable {
                schema,
                name,
                reference,
                rows: r.get(2).and_then(num),
                bytes: r.get(3).and_then(num),
                ..Default::default()
            });
        }
        let mut keys: Vec<Vec<(u64, String)>> = vec![Vec::new(); out.len()];
        for r in &columns {
            let Some(&i) = index.get(&(text(r.first()), text(r.get(1)))) else {
                continue;
            };
            let name = text(r.get(2));
            if let Some(pos) = r.get(5).and_then(num) {
                keys[i].push((pos, name.clone()));
            }
            out[i].columns.push(SourceColumn {
                name,
                type_name: text(r.get(3)),
                not_null: text(r.get(4)) == "t",
            });
        }
        for (t, mut k) in out.iter_mut().zip(keys) {
            k.sort();
            t.primary_key = k.into_iter().map(|(_, n)| n).collect();
        }
        Ok(out)
    }

    /// Open the source for a run: connect, take the snapshot, plan the read (or resume the
    /// stored plan) and start reading.
    pub fn open(config: &Value, ctx: &ReaderContext) -> Result<Self> {
        let config = Self::load(config)?;
        let mut state = match &ctx.state {
            Some(s) if config.shared.mode() == ReadMode::Incremental || s.get("plan").is_some() => {
                serde_json::from_value::<KeysetState>(s.clone()).map_err(|e| {
                    Error::data(format!(
                        "the stored state is not a {} reader state ({e}); reset it with `dativo state reset`",
                        D::SQL.name()
                    ))
                })?
            }
            _ => KeysetState::default(),
        };
        let db = D::open(&config)?;
        let mut snap = Snapshot::discover(db, config.shared)?;
        let mut info = snap.stream_info()?;
        let fresh = state.plan.is_none()
            && (state.cursor.is_none() || snap.opts.mode() == ReadMode::FullRefresh);
        if fresh {
            // A progress total: never a reason to fail the run.
            info.estimated_rows = match snap.estimate_rows() {
                Ok(n) => n.map(|n| n / u64::from(ctx.shard.count.max(1))),
                Err(e) => {
                    tracing::debug!(error = %dativo_core::secrets::scrub(&e.to_string()), "no row estimate");
                    None
                }
            };
        }
        if ctx.shard.count > 1 {
            snap.apply_shard(ctx.shard)?;
        }
        let plan = match state.plan.take() {
            // An unordered read that delivered nothing yet starts over on this snapshot (a
            // physical split's blocks are those of the table now).
            Some(p) if p.column.is_none() && p.delivered == 0 => snap.new_plan(&state)?,
            Some(p) => {
                let want = snap.opts.mode();
                if p.mode != want {
                    return Err(Error::data(format!(
                        "an interrupted {} run is pending but the job now asks for {want}; finish it with the old config or `dativo state reset`",
                        p.mode
                    )));
                }
                p.check_resumable()?;
                tracing::info!(ranges = p.pending(), "resuming an interrupted read");
                p
            }
            None => snap.new_plan(&state)?,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let rx = snap.start(&plan, &state, stop.clone())?;
        let fields: Vec<_> = snap.columns.iter().map(|c| c.field.clone()).collect();
        Ok(SqlSource {
            snap,
            schema: Arc::new(Schema::new(fields)),
            run_id: ctx.run_id.clone(),
            state,
            progress: Progress::Reading { plan, rx },
            stop,
            info,
        })
    }
}

impl<D: Dialect> OpenReader for SqlSource<D> {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let Progress::Reading { plan, rx } = &mut self.progress else {
                return Ok(None);
            };
            if plan.pending() == 0 {
                self.state = self.snap.finish_state(plan, &self.state, &self.run_id)?;
                self.progress = Progress::Done;
                return Ok(None);
            }
            if let Some(batch) = plan.receive(rx)? {
                return Ok(Some(batch));
            }
        }
    }

    fn state(&mut self) -> Result<Option<Value>> {
        let mut s = self.state.clone();
        if let Progress::Reading { plan, .. } = &self.progress {
            s.plan = Some(plan.clone());
        }
        Ok(Some(serde_json::to_value(s)?))
    }

    fn info(&self) -> StreamInfo {
        self.info.clone()
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.progress = Progress::Done;
        self.snap.db.close()
    }
}

impl<D: Dialect> Drop for SqlSource<D> {
    fn drop(&mut self) {
        // The partition readers stop at their next row; the snapshot ends with the database
        // connections, dropped with `snap`.
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl<D: Dialect> Snapshot<D> {
    /// Find the source's columns and how to select them.
    fn discover(mut db: D, opts: SqlOptions) -> Result<Self> {
        let mut table_select = None;
        let base = match (&opts.table, &opts.query) {
            (Some(t), _) => {
                let cols = match &opts.columns {
                    Some(c) => c.iter().map(|c| D::ident(c)).collect::<Vec<_>>().join(", "),
                    None => "*".into(),
                };
                let select = format!("SELECT {cols} FROM {}", D::table_ref(t));
                let filter = opts
                    .where_clause
                    .as_ref()
                    .map(|w| format!(" WHERE ({w})"))
                    .unwrap_or_default();
                table_select = Some((select.clone(), opts.where_clause.clone()));
                format!("{select}{filter}")
            }
            (None, Some(query)) => query.trim().trim_end_matches(';').to_string(),
            (None, None) => return Err(config_error("table", "set `table` or `query`")),
        };
        let probe = format!("SELECT * FROM ({base}) AS dativo_src LIMIT 0");
        let described = db.describe(&probe, &opts.source_name())?;
        let mut columns = Vec::new();
        let mut unsupported = Vec::new();
        for c in described {
            match c {
                Ok(c) => columns.push(c),
                Err(u) if opts.cast_unsupported_to_text => {
                    tracing::debug!(column = %u.as_text.name, r#type = %u.type_name, "reading as text");
                    columns.push(*u.as_text)
                }
                Err(u) => unsupported.push(format!("`{}` ({})", u.as_text.name, u.type_name)),
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
        let mut names = std::collections::HashSet::new();
        for c in &columns {
            if !names.insert(c.name.as_str()) {
                return Err(Error::schema(format!(
                    "the source has two columns named `{}`; alias them in `query`",
                    c.name
                )));
            }
        }
        Ok(Snapshot {
            db,
            opts,
            base,
            table_select,
            columns,
        })
    }

    fn query(&mut self, sql: &str, doing: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.db.rows(sql, doing)
    }

    /// The first value of the first row.
    fn scalar(&mut self, sql: &str, doing: &str) -> Result<Option<String>> {
        let rows = self.query(sql, doing)?;
        Ok(rows
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten()))
    }

    /// The first value of every row.
    fn texts(&mut self, sql: &str, doing: &str) -> Result<Vec<String>> {
        let rows = self.query(sql, doing)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect())
    }

    fn source_where(&self, pred: &str) -> String {
        format!("FROM ({}) AS dativo_src WHERE {pred}", self.base)
    }

    /// The index of column `name`; a config error on `key` if it is not read.
    fn index(&self, name: &str, key: &str) -> Result<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
                config_error(
                    key,
                    format!(
                        "column `{name}` is not among the columns read ({})",
                        names.join(", ")
                    ),
                )
            })
    }

    /// The expression column `i` orders and resumes a read by.
    fn order_expr(&self, i: usize) -> Result<String> {
        let c = &self.columns[i];
        c.order.clone().ok_or_else(|| {
            let key = if self.opts.cursor.as_deref() == Some(c.name.as_str()) {
                "cursor"
            } else {
                "partition_column"
            };
            config_error(
                key,
                format!(
                    "`{}` ({}) cannot order a resumable read: use {} column",
                    c.name,
                    c.type_name,
                    D::SQL.orderable_types()
                ),
            )
        })
    }

    /// What the writer may know: the primary key, the selected columns declared NOT NULL
    /// (a `query` declares none), and whether the run reads the whole source.
    fn stream_info(&mut self) -> Result<StreamInfo> {
        let primary_key = self.primary_key()?;
        let not_null = match self.opts.table.clone() {
            Some(t) => {
                let declared =
                    self.texts(&D::not_null_columns_sql(&t), "finding NOT NULL columns")?;
                self.columns
                    .iter()
                    .filter(|c| c.select == D::ident(&c.name) && declared.contains(&c.name))
                    .map(|c| c.name.clone())
                    .collect()
            }
            None => Vec::new(),
        };
        let delivery = match self.opts.mode() {
            ReadMode::FullRefresh => Delivery::Full,
            ReadMode::Incremental => Delivery::Incremental,
        };
        Ok(StreamInfo {
            primary_key,
            not_null,
            delivery,
            estimated_rows: None,
        })
    }

    /// The catalog's estimate of the rows a whole read of the table delivers (a progress
    /// total): only for a `table` without `where` — a query or a filter has no cheap estimate.
    fn estimate_rows(&mut self) -> Result<Option<u64>> {
        let (Some(t), None) = (self.opts.table.clone(), self.opts.where_clause.as_ref()) else {
            return Ok(None);
        };
        let Some(sql) = D::estimate_rows_sql(&t) else {
            return Ok(None);
        };
        Ok(self
            .scalar(&sql, "reading the table's estimated row count")?
            .and_then(|v| v.trim().parse::<u64>().ok()))
    }

    fn primary_key(&mut self) -> Result<Vec<String>> {
        if let Some(pk) = &self.opts.primary_key {
            return Ok(pk.clone());
        }
        let Some(t) = self.opts.table.clone() else {
            return Ok(Vec::new());
        };
        self.texts(&D::primary_key_sql(&t), "finding the primary key")
    }

    /// The primary key `lookback` identifies rows by.
    fn lookback_key(&mut self) -> Result<Vec<String>> {
        let pk = self.primary_key()?;
        if pk.is_empty() {
            return Err(config_error(
                "primary_key",
                "`lookback` needs `primary_key` (the table has none)",
            ));
        }
        Ok(pk)
    }

    /// An incremental read selects `cursor > K`, which no NULL matches: refuse to plan while
    /// the source has rows with a NULL cursor rather than skip them silently. Skipped when the
    /// catalog declares the column NOT NULL; otherwise one `IS NULL` probe (an index on the
    /// cursor answers it), and a count only when there are some.
    fn check_null_cursor(&mut self, i: usize, c: &str) -> Result<()> {
        let col = &self.columns[i];
        let name = col.name.clone();
        if let (Some(t), true) = (&self.opts.table, col.select == D::ident(&col.name)) {
            let sql = D::not_null_sql(t, &name);
            if !self.query(&sql, "checking the cursor column")?.is_empty() {
                return Ok(());
            }
        }
        let nulls = self.source_where(&format!("{c} IS NULL"));
        if self
            .query(
                &format!("SELECT 'yes' {nulls} LIMIT 1"),
                "checking for NULL cursors",
            )?
            .is_empty()
        {
            return Ok(());
        }
        let count = self
            .scalar(
                &format!("SELECT {} {nulls}", D::as_text("count(*)")),
                "counting NULL cursors",
            )?
            .unwrap_or_default();
        Err(Error::data(format!(
            "{count} row(s) of {} have a NULL cursor `{name}`; an incremental read (`{name} > last`) can never deliver them, \
             so the run stops instead of skipping them: give them a cursor value, or exclude them knowingly \
             (`where: \"{name} IS NOT NULL\"`, or coalesce the column in `query`)",
            self.opts.source_name(),
        )))
    }

    /// `n - 1` points splitting [`lo`, `hi`] of column `i` (only the distinct ones strictly
    /// inside with `distinct`); none for `n <= 1`.
    fn split_points(
        &self,
        i: usize,
        lo: &str,
        hi: &str,
        n: u32,
        distinct: bool,
    ) -> Result<Vec<String>> {
        if n <= 1 {
            return Ok(Vec::new());
        }
        let c = &self.columns[i];
        let points = c.key.split_points(lo, hi, n, D::SQL.zone_suffix());
        let points = points.map(|p| {
            if distinct {
                c.key.distinct(lo, hi, p)
            } else {
                p
            }
        });
        points.map_err(|why| {
            config_error(
                "partition_column",
                format!(
                    "cannot split the read on `{}` of type {}: {why}; use a numeric, date or timestamp column, or `partitions: 1`",
                    c.name, c.type_name
                ),
            )
        })
    }

    /// The bottom of the `lookback` window below `key` of column `i` (`key` itself without a
    /// lookback).
    fn below(&self, i: usize, key: &str) -> Result<String> {
        let Some(lb) = &self.opts.lookback else {
            return Ok(key.to_string());
        };
        let c = &self.columns[i];
        c.key.minus(key, lb, D::SQL.zone_suffix()).map_err(|why| {
            config_error(
                "lookback",
                format!(
                    "lookback {lb} does not fit cursor `{}` of type {} ({why}): use a duration (`10m`) for time cursors, a number for numeric ones",
                    c.name, c.type_name
                ),
            )
        })
    }

    /// Restrict the source to one shard: ranges of `partition_column` when `lower_bound` and
    /// `upper_bound` are given (index-friendly; the first and last shard are open-ended), else
    /// a stable hash of the primary key.
    fn apply_shard(&mut self, shard: Shard) -> Result<()> {
        let (n, i) = (shard.count, shard.index as usize);
        let bounds = (
            self.opts.partition_column.clone(),
            self.opts.lower_bound.clone(),
            self.opts.upper_bound.clone(),
        );
        let pred = match bounds {
            (Some(col), Some(lo), Some(hi)) if !D::SQL.shards_by_hash_only() => {
                let ci = self.index(&col, "partition_column")?;
                let points = self.split_points(ci, &lo.0, &hi.0, n, false)?;
                if points.len() + 1 != n as usize {
                    return Err(config_error(
                        "lower_bound",
                        format!("must not be above `upper_bound` ({} > {})", lo.0, hi.0),
                    ));
                }
                let e = D::ident(&col);
                let lower = (i > 0).then(|| format!("{e} >= {}", D::lit(&points[i - 1])));
                let upper = (i + 1 < n as usize).then(|| format!("{e} < {}", D::lit(&points[i])));
                match (lower, upper) {
                    (None, Some(u)) => format!("({u} OR {e} IS NULL)"),
                    (Some(l), Some(u)) => format!("{l} AND {u}"),
                    (Some(l), None) => l,
                    (None, None) => "TRUE".into(),
                }
            }
            _ => {
                let mut keys = self.primary_key()?;
                if keys.is_empty() {
                    keys = self.opts.partition_column.iter().cloned().collect();
                }
                if keys.is_empty() {
                    return Err(config_error(
                        "primary_key",
                        "this source cannot be sharded: it has no primary key — set `primary_key`, or `partition_column` (with `lower_bound`/`upper_bound` for ranges)",
                    ));
                }
                let texts: Vec<String> = keys
                    .iter()
                    .map(|k| format!("COALESCE({}, '')", D::as_text(&D::ident(k))))
                    .collect();
                D::hash_shard(&texts, shard)
            }
        };
        tracing::debug!(shard = %format!("{i}/{n}"), predicate = %pred, "reading one shard");
        self.base = format!("SELECT * FROM ({}) AS dativo_shard WHERE {pred}", self.base);
        Ok(())
    }

    /// The hashes of the previous run's `seen` whose rows lie in the new window (above
    /// `above`): this run skips them, and the next one must too.
    fn seen_carried_over(
        &mut self,
        prev: &KeysetState,
        i: usize,
        c: &str,
        above: &str,
    ) -> Result<Vec<String>> {
        let Some(cursor) = &prev.cursor else {
            return Ok(Vec::new());
        };
        if prev.seen.is_empty() {
            return Ok(Vec::new());
        }
        let pk = self.lookback_key()?;
        let hash = D::row_hash(&pk, &self.columns[i].name);
        let hashes: Vec<String> = prev.seen.iter().map(|h| D::lit(h)).collect();
        let sql = format!(
            "SELECT {hash} {}",
            self.source_where(&format!(
                "{c} > {} AND {c} <= {} AND {hash} IN ({})",
                D::lit(above),
                D::lit(cursor),
                hashes.join(",")
            ))
        );
        self.texts(&sql, "carrying the lookback window over")
    }

    fn new_plan(&mut self, prev: &KeysetState) -> Result<Plan> {
        let n = self.opts.partitions;
        match self.opts.mode() {
            ReadMode::Incremental => {
                let Some(name) = self.opts.cursor.clone() else {
                    return Err(config_error("mode", "`mode: incremental` needs `cursor`"));
                };
                let i = self.index(&name, "cursor")?;
                let c = self.order_expr(i)?;
                self.check_null_cursor(i, &c)?;
                let extreme = |f: &str, pred: &str| {
                    format!(
                        "SELECT {} {}",
                        D::as_text(&format!("{f}({c})")),
                        self.source_where(pred)
                    )
                };
                let (lo, lo_inclusive, upper) = match &prev.cursor {
                    Some(h) => {
                        // The run reads up to the highest cursor in its snapshot; with a
                        // lookback, its window even when nothing is new.
                        let above = extreme("max", &format!("{c} > {}", D::lit(h)));
                        let upper = self
                            .scalar(&above, "finding the highest cursor")?
                            .or_else(|| self.opts.lookback.is_some().then(|| h.clone()));
                        (Some(self.below(i, h)?), false, upper)
                    }
                    None => {
                        let not_null = format!("{c} IS NOT NULL");
                        let (min, max) = (extreme("min", &not_null), extreme("max", &not_null));
                        let lo = self.scalar(&min, "finding the lowest cursor")?;
                        let hi = self.scalar(&max, "finding the highest cursor")?;
                        (lo, true, hi)
                    }
                };
                let ranges = match (&lo, &upper) {
                    (Some(l), Some(u)) => {
                        let points = self.split_points(i, l, u, n, true)?;
                        split_ranges(Some(l.clone()), lo_inclusive, Some(u.clone()), &points)
                    }
                    _ => Vec::new(),
                };
                let (seen_above, seen) = match (&upper, &self.opts.lookback) {
                    (Some(u), Some(_)) => {
                        let above = self.below(i, u)?;
                        let seen = self.seen_carried_over(prev, i, &c, &above)?;
                        (Some(above), seen)
                    }
                    _ => (None, Vec::new()),
                };
                Ok(Plan {
                    mode: ReadMode::Incremental,
                    column: Some(name),
                    upper,
                    physical: false,
                    ranges,
                    delivered: 0,
                    seen_above,
                    seen,
                })
            }
            ReadMode::FullRefresh => {
                let order = match &self.opts.partition_column {
                    Some(p) => Some(p.clone()),
                    None => {
                        // The single-column key; with `partitions`, a composite key's
                        // leading column (one reading of one value is never split, so a
                        // low-cardinality leading column makes long batches: name another
                        // `partition_column` then).
                        let pk = self.primary_key()?;
                        match pk.len() {
                            1 => Some(pk[0].clone()),
                            2.. if n > 1 => Some(pk[0].clone()),
                            _ => None,
                        }
                    }
                };
                let Some(order) = order else {
                    let physical = if n > 1 {
                        self.physical_ranges(n)?
                    } else {
                        None
                    };
                    if n > 1 && physical.is_none() {
                        return Err(config_error(
                            "partition_column",
                            "`partitions` needs `partition_column`: the table has no primary key to split on",
                        ));
                    }
                    return Ok(Plan {
                        mode: ReadMode::FullRefresh,
                        column: None,
                        upper: None,
                        physical: physical.is_some(),
                        ranges: physical.unwrap_or_else(|| split_ranges(None, false, None, &[])),
                        delivered: 0,
                        seen_above: None,
                        seen: Vec::new(),
                    });
                };
                let i = self.index(&order, "partition_column")?;
                let c = self.order_expr(i)?;
                let mut lo = self.opts.lower_bound.clone().map(|b| b.0);
                let mut hi = self.opts.upper_bound.clone().map(|b| b.0);
                if n > 1 && (lo.is_none() || hi.is_none()) {
                    let sql = format!(
                        "SELECT {}, {} {}",
                        D::as_text(&format!("min({c})")),
                        D::as_text(&format!("max({c})")),
                        self.source_where("TRUE")
                    );
                    let row = self.query(&sql, "finding the partition bounds")?;
                    let mut row = row.into_iter().next().unwrap_or_default().into_iter();
                    lo = lo.or(row.next().flatten());
                    hi = hi.or(row.next().flatten());
                }
                let points = match (&lo, &hi) {
                    (Some(l), Some(h)) => self.split_points(i, l, h, n, true)?,
                    _ => Vec::new(),
                };
                // The outer ranges are open: given bounds only guide the split, rows outside
                // them are read too.
                let mut ranges = split_ranges(None, false, None, &points);
                let nulls = format!(
                    "SELECT 'yes' {} LIMIT 1",
                    self.source_where(&format!("{c} IS NULL"))
                );
                if !self.query(&nulls, "checking for NULL keys")?.is_empty() {
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
                    mode: ReadMode::FullRefresh,
                    column: Some(order),
                    upper: None,
                    physical: false,
                    ranges,
                    delivered: 0,
                    seen_above: None,
                    seen: Vec::new(),
                })
            }
        }
    }

    /// A table without an ordering key split into up to `n` ranges of its storage blocks
    /// (the dialect's [`Dialect::blocks_sql`]), or `None` when the source is a query, the
    /// dialect cannot, or the table is empty.
    fn physical_ranges(&mut self, n: u32) -> Result<Option<Vec<KeyRange>>> {
        let (Some(table), Some(_)) = (self.opts.table.clone(), &self.table_select) else {
            return Ok(None);
        };
        let Some(sql) = D::blocks_sql(&table) else {
            return Ok(None);
        };
        let blocks: u64 = self
            .scalar(&sql, "measuring the table for `partitions`")?
            .and_then(|b| b.parse().ok())
            .unwrap_or(0);
        if blocks == 0 {
            return Ok(None);
        }
        let k = (n as u64).min(blocks);
        tracing::info!(
            ranges = k,
            blocks,
            "no ordering key: reading ranges of the table's storage (ctid) on one snapshot"
        );
        let bound = |i: u64| (blocks * i / k).to_string();
        Ok(Some(
            (0..k)
                .map(|i| KeyRange {
                    lo: (i > 0).then(|| bound(i)),
                    lo_inclusive: true,
                    hi: (i + 1 < k).then(|| bound(i + 1)),
                    nulls: false,
                    after: None,
                    finished: false,
                })
                .collect(),
        ))
    }

    /// Rows delivered by an earlier run whose cursor a `lookback` brings back into this run's
    /// ranges: excluded by their hash.
    fn exclude(&mut self, plan: &Plan, prev: &KeysetState) -> Result<Option<String>> {
        if plan.mode != ReadMode::Incremental || prev.seen.is_empty() {
            return Ok(None);
        }
        let Some(cursor) = self.opts.cursor.clone() else {
            return Ok(None);
        };
        let pk = self.primary_key()?;
        if pk.is_empty() {
            return Ok(None);
        }
        let c = self.order_expr(self.index(&cursor, "cursor")?)?;
        let hashes: Vec<String> = prev.seen.iter().map(|h| D::lit(h)).collect();
        Ok(Some(format!(
            "({c} > {} OR {} NOT IN ({}))",
            D::lit(prev.cursor.as_deref().unwrap_or("")),
            D::row_hash(&pk, &cursor),
            hashes.join(",")
        )))
    }

    /// Start reading what is left of `plan`: one query per pending range.
    fn start(
        &mut self,
        plan: &Plan,
        prev: &KeysetState,
        stop: Arc<AtomicBool>,
    ) -> Result<Receiver<PartMsg>> {
        let key = match &plan.column {
            Some(c) => Some(self.index(c, "partition_column")?),
            None => None,
        };
        let order = key.map(|i| self.order_expr(i)).transpose()?;
        let exclude = self.exclude(plan, prev)?;
        let mut select: Vec<String> = self.columns.iter().map(|c| c.select.clone()).collect();
        let mut kinds: Vec<D::Kind> = self.columns.iter().map(|c| c.kind.clone()).collect();
        let mut names: Vec<String> = self.columns.iter().map(|c| c.name.clone()).collect();
        // With `lookback`, each row in the window also carries its hash (module doc).
        let seen_col = match (&plan.seen_above, &plan.column, &order) {
            (Some(above), Some(col), Some(c)) => {
                let hash = D::row_hash(&self.lookback_key()?, col);
                select.push(format!("CASE WHEN {c} > {} THEN {hash} END", D::lit(above)));
                kinds.push(D::TEXT);
                names.push("(lookback hash)".into());
                true
            }
            _ => false,
        };
        let select = select.join(", ");
        let reads: Vec<(usize, String)> = plan
            .ranges
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.finished)
            .map(|(i, range)| {
                let sql = match (&order, &self.table_select) {
                    (None, Some((from, filter))) if plan.physical => {
                        let block = |b: &Option<String>| b.as_ref().and_then(|v| v.parse().ok());
                        let mut pred = D::block_range(block(&range.lo), block(&range.hi));
                        if let Some(w) = filter {
                            pred = format!("{pred} AND ({w})");
                        }
                        format!("SELECT {select} FROM ({from} WHERE {pred}) AS dativo_src")
                    }
                    (Some(c), _) => {
                        let mut pred = range.predicate(D::lit, c);
                        if let Some(ex) = &exclude {
                            pred = format!("({pred}) AND {ex}");
                        }
                        format!("SELECT {select} {} ORDER BY {c}", self.source_where(&pred))
                    }
                    (None, _) => format!("SELECT {select} {}", self.source_where("TRUE")),
                };
                (i, sql)
            })
            .collect();
        // One batch queued per range: with wide rows every batch in flight is `batch_bytes`.
        // (A rendezvous instead saved a wide table's p2 run ~35 MB but stalled the reader at
        // every hand-off: 8% more wall time and 3% more CPU on the 6M-row lineitem table.)
        let (tx, rx) = bounded::<PartMsg>(reads.len().max(1));
        let fields: Vec<_> = self.columns.iter().map(|c| c.field.clone()).collect();
        let spec = ReadSpec {
            kinds,
            schema: Arc::new(Schema::new(fields)),
            names,
            key,
            bound: BatchBound {
                rows: self.opts.batch_size,
                bytes: self.opts.batch_bytes.0 as usize,
            },
            seen_col,
            source: self.opts.source_name(),
            utc_suffix: D::SQL.zone_suffix(),
            tx,
            stop,
        };
        self.db.read(reads, Arc::new(spec))?;
        Ok(rx)
    }

    /// All ranges are done: the state that starts the next run.
    fn finish_state(
        &mut self,
        plan: &Plan,
        prev: &KeysetState,
        run_id: &str,
    ) -> Result<KeysetState> {
        let mut next = KeysetState::default();
        match plan.mode {
            ReadMode::FullRefresh => next.last_full_refresh = Some(run_id.to_string()),
            ReadMode::Incremental => {
                next.cursor = plan.upper.clone().or_else(|| prev.cursor.clone());
                if plan.seen_above.is_some() {
                    // The rows this plan delivered (or skipped as delivered) in the window.
                    next.seen = plan.seen.clone();
                    next.seen.sort();
                    next.seen.dedup();
                } else if let (Some(_), Some(cursor), Some(name)) =
                    (&self.opts.lookback, &next.cursor, self.opts.cursor.clone())
                {
                    // A plan stored by an older version: the window as this snapshot sees it.
                    let i = self.index(&name, "cursor")?;
                    let pk = self.lookback_key()?;
                    let lo = self.below(i, cursor)?;
                    let c = self.order_expr(i)?;
                    let sql = format!(
                        "SELECT {} {}",
                        D::row_hash(&pk, &name),
                        self.source_where(&format!(
                            "{c} > {} AND {c} <= {}",
                            D::lit(&lo),
                            D::lit(cursor)
                        ))
                    );
                    next.seen = self.texts(&sql, "recording the lookback window")?;
                    next.seen.sort();
                }
            }
        }
        Ok(next)
    }
}
