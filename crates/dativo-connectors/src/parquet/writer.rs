//! The `parquet` writer.

use std::collections::BTreeMap;
use std::fs::{self, File};

use std::sync::Arc;

use arrow::array::ArrayRef;
use arrow::compute::{lexsort_to_indices, partition, take_record_batch, SortColumn};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::{
    Commit, CommitReport, CommittedState, Error, OpenWriter, Result, ResultExt, WriterContext,
};

use super::commit_log::{ColumnSpec, Layout, Manifest, ManifestFile, FORMAT};
use super::config::{ParquetWriteMode, ParquetWriterConfig};
use super::lease::{self, Lease};
use dativo_encryption::stream::{EncryptingSink, SUFFIX};
use dativo_encryption::{pme, EncFormat, Encryptor, FileAudit, FileKeys};
use dativo_storage::{HashingSink, Location, Sink};

struct OpenFile {
    rel: String,
    staged: String,
    writer: ArrowWriter<Box<dyn Sink>>,
    /// The row group being encoded on several threads (`encode_threads` > 1).
    group: Option<super::parallel::Group>,
    rows: u64,
    keys: Option<FileKeys>,
}

impl OpenFile {
    /// Encoded bytes of the row group in progress.
    fn in_progress_size(&self) -> usize {
        self.writer.in_progress_size() + self.group.as_ref().map_or(0, |g| g.estimated_bytes())
    }

    /// Close the row group in progress.
    fn flush(&mut self, threads: usize) -> parquet::errors::Result<()> {
        super::parallel::flush(&mut self.writer, &mut self.group, threads)?;
        self.writer.flush()
    }
}

struct Staged {
    rel: String,
    rows: u64,
    bytes: u64,
    audit: Option<FileAudit>,
}

/// Writes Parquet files into a directory or object-store prefix, committed atomically with a
/// manifest; opened ready by [`ParquetWriter::open`].
///
/// Dropping it does what [`OpenWriter::close`] does: uncommitted files are deleted, a durable
/// commit not yet fully published is published, and the lock or lease is released.
pub struct ParquetWriter {
    cfg: ParquetWriterConfig,
    layout: Layout,
    props: WriterProperties,
    /// Whether the dictionary choice was made (on the first batch, [`crate::dictionary`]).
    dictionaries_chosen: bool,
    job: String,
    run_id: String,
    /// The OS lock on a local directory (`None` on object stores).
    lock: Option<File>,
    /// The lease on an object-store prefix (see [`super::lease`]); `None` locally, and on
    /// stores that do not enforce conditional writes.
    lease: Option<Lease>,
    last_sequence: u64,
    /// `append` or `overwrite`, as resolved for this run.
    mode: ParquetWriteMode,
    /// An overwrite whose commit is still to come: the next commit replaces everything
    /// committed before (cleared by it; the runner commits an overwrite once).
    replace_next: bool,
    /// A durable commit not yet fully rolled forward (storage failed after the commit point:
    /// files not all published, or the files an overwrite replaces not all deleted): finished
    /// before the next commit, and again at close.
    unpublished: Option<Manifest>,
    /// Open files by partition directory (`""` when unpartitioned).
    open: BTreeMap<String, OpenFile>,
    /// Indices of the partition columns, and the schema of the data files (without them).
    partition_cols: Vec<usize>,
    file_schema: SchemaRef,
    /// Threads encoding columns (`encode_threads`), fixed when the writer opens: a file's row
    /// groups must all be written the same way.
    encode_threads: usize,
    staged: Vec<Staged>,
    /// Whether some column is converted to a type Parquet can annotate (see [`parquet_native`]).
    coerced: bool,
    /// Client-side encryption, when configured.
    enc: Option<Encryptor>,
    /// Whether [`ParquetWriter::shutdown`] ran (by `close` or on drop).
    closed: bool,
}

/// The type a column is written as: second-precision timestamps and times have no Parquet
/// logical type (the parquet crate would write bare INT64 epoch seconds, which DuckDB and Spark
/// read as BIGINT), so they are written as microseconds — exact, and Iceberg's unit too.
fn parquet_native(f: &arrow::datatypes::FieldRef) -> arrow::datatypes::FieldRef {
    use arrow::datatypes::{DataType, Field, TimeUnit};
    let t = match f.data_type() {
        DataType::Timestamp(TimeUnit::Second, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.clone())
        }
        DataType::Time32(TimeUnit::Second) => DataType::Time64(TimeUnit::Microsecond),
        _ => return f.clone(),
    };
    Arc::new(Field::new(f.name(), t, f.is_nullable()).with_metadata(f.metadata().clone()))
}

/// Escape a partition value for a path segment (as Hive does).
fn hive_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if c.is_control() || "\"#%'*/:=?\\{[]^".contains(c) {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// [`Layout::roll_forward`], retried with backoff: an object-store hiccup or a failed rename
/// midway must not leave a commit half visible (or an overwrite's old files beside its new
/// ones) for longer than it takes to recover.
fn roll_forward_with_retries(layout: &Layout, m: &Manifest) -> Result<()> {
    let mut delay = std::time::Duration::from_millis(200);
    let mut attempt = 0;
    loop {
        attempt += 1;
        match layout.roll_forward(m) {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= 5 => return Err(e),
            Err(e) => {
                tracing::warn!(
                    sequence = m.sequence,
                    attempt,
                    error = %dativo_core::secrets::scrub(&e.to_string()),
                    "publishing a committed file (or removing a replaced one) failed; retrying"
                );
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
    }
}

/// Refuse a source schema that readers could not combine with the files already committed:
/// a column whose type changed (pyarrow.dataset and Spark then fail on the directory). New
/// columns are fine (older files read as NULL there); a column gone is fine too.
fn check_schema_change(layout: &Layout, path: &str, schema: &Schema) -> Result<()> {
    let Some(before) = layout.latest_schema(50)? else {
        return Ok(());
    };
    let now = ColumnSpec::of(schema);
    for old in &before {
        if let Some(new) = now.iter().find(|c| c.name == old.name) {
            if new.data_type != old.data_type {
                return Err(Error::schema(format!(
                    "column `{}` is {} in the files already committed to {path}, but the source \
                     now gives {}: readers could not read the directory as one dataset. Write \
                     to a new path, or declare the column's old type in the source's `schema:`",
                    old.name, old.data_type, new.data_type
                )));
            }
        }
    }
    let added: Vec<&str> = now
        .iter()
        .filter(|c| !before.iter().any(|o| o.name == c.name))
        .map(|c| c.name.as_str())
        .collect();
    if !added.is_empty() {
        tracing::warn!(
            path,
            columns = %added.join(", "),
            "new columns: files committed before have none (read with union_by_name / a unified schema)"
        );
    }
    Ok(())
}

/// An overwrite replaces the files of the directory's unsharded commit log; files committed by
/// the shards of a split job (each with a commit log of its own) would stay beside the new
/// rows, so an overwrite is refused while there are any.
fn refuse_overwrite_beside_shards(layout: &Layout, path: &str) -> Result<()> {
    for shard in Layout::all_under(&layout.loc)?.iter().skip(1) {
        if shard.live()?.iter().any(|m| !m.files.is_empty()) {
            return Err(Error::config(format!(
                "{path} holds files committed by the shards of a split job (in {}): an \
                 overwrite replaces only the files of unsplit runs and would leave theirs \
                 beside the new rows. Write to a new path, or set `mode: append`",
                shard.loc.display(super::commit_log::SHARDS)
            ))
            .with_key_path("mode"));
        }
    }
    Ok(())
}

fn pq_err(e: parquet::errors::ParquetError) -> Error {
    match e {
        // Our sink's own failure (storage): keep it as the cause.
        parquet::errors::ParquetError::External(inner) => {
            Error::io(inner.to_string()).with_source(crate::Cause(inner))
        }
        other => Error::data(other.to_string()).with_source(other),
    }
}

impl ParquetWriter {
    /// Validate a config without touching the file system.
    pub fn validate(config: &Value) -> Result<()> {
        from_config::<ParquetWriterConfig>(config)?.check()
    }

    /// Check the config, take the directory's lock (or the prefix's lease), recover what an
    /// earlier run left (roll committed files forward, delete uncommitted ones), and get ready
    /// for batches of `ctx.schema`. A second writer on the same directory is refused here.
    pub fn open(config: &Value, ctx: &WriterContext) -> Result<Self> {
        let cfg: ParquetWriterConfig = from_config(config)?;
        cfg.check()?;
        let mode = ParquetWriteMode::resolve(cfg.mode, ctx, &cfg.path)?;
        let layout =
            Layout::for_shard(Location::parse(&cfg.path, &cfg.store_options())?, ctx.shard);
        layout.create()?;
        let lock = match layout.lock_file() {
            Some(lock_path) => {
                let lock = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .with_context(|| format!("opening {}", lock_path.display()))?;
                match lock.try_lock() {
                    Ok(()) => {}
                    Err(fs::TryLockError::WouldBlock) => {
                        return Err(Error::transient(format!(
                            "another dativo writer is writing to {} (lock {} is held)",
                            cfg.path,
                            lock_path.display()
                        )));
                    }
                    Err(fs::TryLockError::Error(e)) => {
                        return Err(
                            Error::from(e).context(format!("locking {}", lock_path.display()))
                        )
                    }
                }
                Some(lock)
            }
            None => None,
        };
        let op = layout.loc.operator();
        let lease_mode = match op {
            Some(op) => lease::supported(op, &layout.lease_key(), &layout.loc.name())?,
            None => None,
        };
        let lease = match (op, lease_mode) {
            (Some(op), Some(lease_mode)) => {
                let lease = Lease::acquire(
                    op,
                    lease_mode,
                    &layout.lease_key(),
                    layout.loc.display(&layout.lease_key()),
                    &ctx.job,
                    &ctx.run_id,
                    cfg.lease_ttl.0,
                )?;
                if lease.took_over {
                    layout.fence(&ctx.job, &ctx.run_id)?;
                }
                Some(lease)
            }
            (Some(_), None) => {
                tracing::warn!(
                    path = %cfg.path,
                    "this object store does not enforce conditional writes: two runs of one job \
                     at once are not detected here; make sure only one runs"
                );
                None
            }
            (None, _) => None,
        };
        let latest = layout.recover()?;
        let last_sequence = latest.map(|m| m.sequence).unwrap_or(0);
        if mode == ParquetWriteMode::Overwrite {
            refuse_overwrite_beside_shards(&layout, &cfg.path)?;
        }
        let props = WriterProperties::builder()
            .set_compression(cfg.compression.compression())
            .set_max_row_group_row_count(Some(cfg.row_group_size))
            .set_created_by(format!("dativo {}", env!("CARGO_PKG_VERSION")))
            .build();
        let enc = match &cfg.encryption {
            Some(e) => Some(Encryptor::open(e, EncFormat::Stream)?),
            None => None,
        };
        let mut partition_cols = Vec::new();
        for (i, name) in cfg.partition_by.iter().enumerate() {
            let idx = ctx.schema.index_of(name).map_err(|_| {
                Error::config(format!("`{name}` is not a column of the source"))
                    .with_key_path(format!("partition_by[{i}]"))
            })?;
            partition_cols.push(idx);
        }
        let keep: Vec<_> = ctx
            .schema
            .fields()
            .iter()
            .enumerate()
            .filter(|(i, _)| !partition_cols.contains(i))
            .map(|(_, f)| parquet_native(f))
            .collect();
        let coerced = keep
            .iter()
            .zip(ctx.schema.fields().iter().filter(|f| {
                !partition_cols
                    .iter()
                    .any(|i| ctx.schema.field(*i).name() == f.name())
            }))
            .any(|(a, b)| a.data_type() != b.data_type());
        if keep.is_empty() {
            return Err(Error::config(
                "every column is a partition column: nothing would be left in the files",
            )
            .with_key_path("partition_by"));
        }
        let file_schema = Arc::new(Schema::new_with_metadata(
            keep,
            ctx.schema.metadata().clone(),
        ));
        if let Some(enc) = &enc {
            enc.check_columns(&file_schema)?;
        }
        if mode == ParquetWriteMode::Append {
            // An overwrite replaces every committed file: no old file to be combined with.
            check_schema_change(&layout, &cfg.path, &file_schema)?;
        }
        Ok(ParquetWriter {
            props,
            dictionaries_chosen: false,
            job: ctx.job.clone(),
            run_id: ctx.run_id.clone(),
            lock,
            lease,
            last_sequence,
            mode,
            replace_next: mode == ParquetWriteMode::Overwrite,
            unpublished: None,
            open: BTreeMap::new(),
            partition_cols,
            file_schema,
            encode_threads: cfg.encode_threads(),
            staged: Vec::new(),
            coerced,
            enc,
            closed: false,
            layout,
            cfg,
        })
    }

    /// Delete uncommitted files, publish a durable commit whose publication failed, release
    /// the lock or lease. Runs once (by `close` or on drop); later calls do nothing.
    fn shutdown(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        let discarded = self.discard();
        let published = self.publish_pending();
        if let Some(lock) = self.lock.take() {
            let _ = lock.unlock();
        }
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
        let _ = self.layout.loc.sync("");
        discarded.and(published)
    }

    fn start_file(&mut self, dir: &str) -> Result<()> {
        let cfg = &self.cfg;
        let stream = self.enc.as_ref().map(|e| e.format) == Some(EncFormat::Stream);
        let name = format!(
            "{}-{}.parquet{}",
            cfg.file_prefix,
            uuid::Uuid::now_v7(),
            if stream { SUFFIX } else { "" }
        );
        let rel = if dir.is_empty() {
            name
        } else {
            format!("{dir}/{name}")
        };
        let layout = &self.layout;
        let staged = layout.staged(&rel);
        let schema = self.file_schema.clone();
        let mut props = self.props.clone();
        let (sink, keys): (Box<dyn Sink>, Option<FileKeys>) = match &self.enc {
            None => (layout.loc.create(&staged)?, None),
            Some(enc) if enc.format == EncFormat::Stream => {
                let dk = enc.provider.generate(enc.provider.key_id())?;
                let sink = EncryptingSink::new(
                    layout.loc.create(&staged)?,
                    &dk,
                    enc.provider.kind(),
                    enc.cfg.segment_size.0 as usize,
                    &rel,
                    layout.loc.display(&staged),
                )?;
                let keys = FileKeys {
                    key: dk.wrapped.clone(),
                    column_keys: Default::default(),
                };
                (Box::new(sink), Some(keys))
            }
            Some(enc) => {
                let (fep, keys) = pme::file_properties(enc, &schema, &rel)?;
                props = props
                    .into_builder()
                    .with_file_encryption_properties(fep)
                    .build();
                (
                    Box::new(HashingSink::new(layout.loc.create(&staged)?)),
                    Some(keys),
                )
            }
        };
        let writer = ArrowWriter::try_new(sink, schema, Some(props)).map_err(pq_err)?;
        self.open.insert(
            dir.to_string(),
            OpenFile {
                rel,
                staged,
                writer,
                group: None,
                rows: 0,
                keys,
            },
        );
        Ok(())
    }

    /// Write the footer, make the file durable, and move it to the staged list.
    fn close_file(&mut self, dir: &str) -> Result<()> {
        let Some(mut open) = self.open.remove(dir) else {
            return Ok(());
        };
        let path = self.layout.loc.display(&open.staged);
        super::parallel::flush(&mut open.writer, &mut open.group, self.encode_threads)
            .map_err(pq_err)
            .with_context(|| format!("writing {path}"))?;
        let sink = open
            .writer
            .into_inner()
            .map_err(pq_err)
            .with_context(|| format!("writing {path}"))?;
        let (bytes, sha) = sink.finish_digest()?;
        let audit = match (&self.enc, open.keys) {
            (Some(enc), Some(keys)) => Some(FileAudit {
                file: open.rel.clone(),
                format: enc.format,
                algorithm: enc.format.algorithm().into(),
                key_provider: enc.provider.kind().into(),
                key: keys.key,
                column_keys: keys.column_keys,
                ciphertext_sha256: sha.unwrap_or_default(),
                bytes,
                rows: open.rows,
                job: self.job.clone(),
                run_id: self.run_id.clone(),
                time: dativo_encryption::now(),
            }),
            _ => None,
        };
        self.staged.push(Staged {
            rel: open.rel,
            rows: open.rows,
            bytes,
            audit,
        });
        Ok(())
    }

    fn close_all(&mut self) -> Result<()> {
        let dirs: Vec<String> = self.open.keys().cloned().collect();
        for d in dirs {
            self.close_file(&d)?;
        }
        Ok(())
    }

    /// Append rows (already without partition columns) to the file of partition `dir`.
    fn write_to(&mut self, dir: &str, batch: &RecordBatch) -> Result<()> {
        if !self.open.contains_key(dir) {
            self.start_file(dir)?;
        }
        let target = self.cfg.target_file_size.0 as usize;
        let rg_bytes = self.cfg.row_group_bytes.0 as usize;
        let threads = self.encode_threads;
        let Some(open) = self.open.get_mut(dir) else {
            return Err(Error::internal(format!(
                "no open file for partition `{dir}`"
            )));
        };
        let path = open.staged.clone();
        if threads > 1 {
            super::parallel::write(
                &mut open.writer,
                &mut open.group,
                &self.file_schema,
                batch,
                threads,
                self.cfg.row_group_size,
                rg_bytes,
            )
        } else {
            open.writer.write(batch)
        }
        .map_err(pq_err)
        .with_context(|| format!("writing {path}"))?;
        open.rows += batch.num_rows() as u64;
        if open.writer.bytes_written() + open.in_progress_size() >= target {
            self.close_file(dir)?;
        }
        // Memory is bounded by the row groups buffered across ALL open files.
        let buffered: usize = self.open.values().map(OpenFile::in_progress_size).sum();
        if buffered >= rg_bytes {
            for o in self.open.values_mut() {
                o.flush(threads)
                    .map_err(pq_err)
                    .with_context(|| format!("writing {}", o.staged))?;
            }
        }
        Ok(())
    }

    /// Split a batch by the partition columns: (hive directory, rows without those columns).
    fn split(&self, batch: &RecordBatch) -> Result<Vec<(String, RecordBatch)>> {
        let keep: Vec<usize> = (0..batch.num_columns())
            .filter(|i| !self.partition_cols.contains(i))
            .collect();
        let target = self.file_schema.clone();
        let project = |b: &RecordBatch| -> Result<RecordBatch> {
            let mut cols = Vec::with_capacity(keep.len());
            for (i, f) in keep.iter().zip(target.fields()) {
                let c = b.column(*i);
                cols.push(if c.data_type() == f.data_type() {
                    c.clone()
                } else {
                    // Not `safe`: an overflow is an error, never a silent NULL.
                    arrow::compute::cast_with_options(
                        c,
                        f.data_type(),
                        &arrow::compute::CastOptions {
                            safe: false,
                            ..Default::default()
                        },
                    )?
                });
            }
            RecordBatch::try_new(target.clone(), cols).map_err(Error::from)
        };
        if self.partition_cols.is_empty() {
            if !self.coerced {
                return Ok(vec![(String::new(), batch.clone())]);
            }
            return Ok(vec![(String::new(), project(batch)?)]);
        }
        let sort: Vec<SortColumn> = self
            .partition_cols
            .iter()
            .map(|i| SortColumn {
                values: batch.column(*i).clone(),
                options: None,
            })
            .collect();
        let indices = lexsort_to_indices(&sort, None)?;
        let sorted = take_record_batch(batch, &indices)?;
        let keys: Vec<ArrayRef> = self
            .partition_cols
            .iter()
            .map(|i| sorted.column(*i).clone())
            .collect();
        let ranges = partition(&keys)?.ranges();
        let schema = batch.schema();
        let mut out = Vec::with_capacity(ranges.len());
        for r in ranges {
            let mut parts = Vec::with_capacity(keys.len());
            for (k, col) in self.partition_cols.iter().zip(&keys) {
                let value = if col.is_null(r.start) {
                    "__HIVE_DEFAULT_PARTITION__".to_string()
                } else {
                    let f = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default())?;
                    hive_escape(&f.value(r.start).to_string())
                };
                parts.push(format!("{}={value}", schema.field(*k).name()));
            }
            out.push((
                parts.join("/"),
                project(&sorted.slice(r.start, r.end - r.start))?,
            ));
        }
        Ok(out)
    }

    /// Finish a durable commit whose roll-forward failed earlier.
    fn publish_pending(&mut self) -> Result<()> {
        let Some(m) = self.unpublished.take() else {
            return Ok(());
        };
        let layout = &self.layout;
        if let Err(e) = roll_forward_with_retries(layout, &m) {
            let rows = m.files.iter().map(|f| f.rows).sum::<u64>();
            let msg = if m.is_overwrite() {
                format!(
                    "commit {:020} in {} is durable (an overwrite: its {rows} rows replace the \
                     directory's previous contents, and the state is committed) but its {} \
                     files could not all be published or the files it replaces not all \
                     removed; a plain reader of the directory sees some of the new files, or \
                     old files beside them, until the next attempt or run finishes it",
                    m.sequence,
                    layout.loc.display(""),
                    m.files.len()
                )
            } else {
                format!(
                    "commit {:020} in {} is durable (its {rows} rows and the state are \
                     committed) but not all of its {} files could be published; a plain reader \
                     of the directory sees only some of them until the next attempt or run \
                     publishes the rest",
                    m.sequence,
                    layout.loc.display(""),
                    m.files.len()
                )
            };
            let err = Error::transient(msg).with_source(e);
            self.unpublished = Some(m);
            return Err(err);
        }
        Ok(())
    }

    fn discard(&mut self) -> Result<()> {
        let layout = &self.layout;
        for (_, open) in std::mem::take(&mut self.open) {
            drop(open.writer);
            let _ = layout.loc.delete(&open.staged);
        }
        for s in self.staged.drain(..) {
            layout.loc.delete(&layout.staged(&s.rel))?;
        }
        Ok(())
    }
}

impl OpenWriter for ParquetWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if let Some(lease) = &self.lease {
            if lease.is_lost() {
                return lease.check();
            }
        }
        if !std::mem::replace(&mut self.dictionaries_chosen, true) {
            let plain = crate::dictionary::without_dictionary(batch, self.cfg.row_group_size);
            if !plain.is_empty() {
                tracing::debug!(columns = ?plain, "many distinct values: written without a dictionary");
                let b = self.props.clone().into_builder();
                self.props = crate::dictionary::apply(b, &plain).build();
            }
        }
        for (dir, rows) in self.split(batch)? {
            self.write_to(&dir, &rows)?;
        }
        Ok(())
    }

    fn commit(&mut self, commit: &Commit) -> Result<CommitReport> {
        self.close_all()?;
        let layout = self.layout.clone();
        self.publish_pending()?;
        let manifest = Manifest {
            format: FORMAT.into(),
            sequence: self.last_sequence + 1,
            job: self.job.clone(),
            run_id: commit.run_id.clone(),
            committed_at: dativo_encryption::now(),
            state: commit.state.clone(),
            schema: Some(ColumnSpec::of(&self.file_schema)),
            replaces: self.replace_next.then_some(self.last_sequence),
            files: self
                .staged
                .iter()
                .map(|s| ManifestFile {
                    path: s.rel.clone(),
                    rows: s.rows,
                    bytes: s.bytes,
                    encryption: s.audit.clone().map(|mut a| {
                        a.run_id = commit.run_id.clone();
                        a
                    }),
                })
                .collect(),
        };
        if let Some(enc) = &self.enc {
            // Before the commit point: a committed file always has its audit line.
            let audits: Vec<FileAudit> = manifest
                .files
                .iter()
                .filter_map(|f| f.encryption.clone())
                .collect();
            enc.audit.append(&layout.loc.name(), &audits)?;
        }
        if let Some(lease) = &self.lease {
            // The lease is ours for a whole `lease_ttl` from here: the commit point follows.
            lease.check()?;
        }
        if let Err(e) = layout.write(&manifest) {
            // The manifest may have become durable even though the write reported an error
            // (a lost response, a failed directory sync): never delete files it may name. The
            // next start rolls them forward if it landed, or removes them if it did not.
            self.staged.clear();
            return Err(e);
        }
        self.last_sequence = manifest.sequence;
        self.replace_next = false;
        self.staged.clear();
        // The commit is durable from here: its rows and state count whatever happens next.
        // Publication failing now (an outage midway) leaves part of the commit visible to a
        // plain directory reader; it is retried, then again before the next commit and at
        // close, which fails the run if it still cannot publish (the next start finishes it).
        // An overwrite's old files are deleted only once its new ones are all published.
        if let Err(e) = roll_forward_with_retries(&layout, &manifest) {
            tracing::error!(
                sequence = manifest.sequence,
                error = %dativo_core::secrets::scrub(&e.to_string()),
                "commit is durable but not fully rolled forward yet (files to publish, or replaced files to remove); retrying later"
            );
            self.unpublished = Some(manifest.clone());
        }
        Ok(CommitReport {
            files: manifest
                .files
                .iter()
                .map(|f| layout.loc.display(&f.path))
                .collect(),
            rows: manifest.files.iter().map(|f| f.rows).sum(),
            bytes: manifest.files.iter().map(|f| f.bytes).sum(),
            commit_id: Some(format!("{:020}", manifest.sequence)),
        })
    }

    fn abort(&mut self) -> Result<()> {
        self.discard()
    }

    fn commits_once(&self) -> bool {
        self.mode == ParquetWriteMode::Overwrite
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.shutdown()
    }

    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        // This job's latest commit: several jobs may take turns writing one directory.
        let latest = self.layout.latest_for(&self.job)?;
        Ok(Some(CommittedState {
            state: latest.as_ref().and_then(|m| m.state.clone()),
            run_id: latest.map(|m| m.run_id),
        }))
    }
}

impl Drop for ParquetWriter {
    fn drop(&mut self) {
        // Dropped without `close` (an error path, a cancellation): the same clean-up.
        if let Err(e) = self.shutdown() {
            tracing::warn!(
                path = %self.layout.loc.display(""),
                error = %dativo_core::secrets::scrub(&e.to_string()),
                "closing the parquet writer failed"
            );
        }
    }
}
