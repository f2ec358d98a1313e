//! The contract with reader and writer authors (docs/plugins.md). The same five reader methods and
//! the same writer methods exist in every plugin language; this is the Rust form.
//!
//! # Lifecycle
//!
//! ```text
//! reader.initialize(config, ctx)      ctx.state = last committed state, or None
//! reader.get_schema()                 the schema of every batch
//! writer.initialize(config, ctx)      ctx.schema = the reader's schema
//! writer.committed_state()            what the target says was committed last (optional)
//! loop {
//!     reader.read_batch()             → Some(batch) | None at end of stream
//!     reader.get_incremental_state()  state covering every batch returned so far
//!     writer.write_batch(batch)       buffered or streamed; not visible yet
//!     every checkpoint, and at the end:
//!         writer.finalize(commit)     durable and visible atomically, with commit.state
//!         state store ← commit.state  only after finalize succeeded
//! }
//! on error or cancel: writer.abort()
//! always: reader.close(), writer.close()
//! ```
//!
//! Each side runs on its own thread; methods are blocking. An implementation that needs async
//! I/O keeps its own runtime handle and blocks on it.

use std::sync::Arc;

use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;

/// Which slice of the stream this instance reads when a job is split across workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// Zero-based index of this shard.
    pub index: u32,
    /// Number of shards; 1 when the job is not split.
    pub count: u32,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl Shard {
    /// Parse `I/N` (0 ≤ I < N).
    pub fn parse(s: &str) -> std::result::Result<Shard, String> {
        let (i, n) = s
            .trim()
            .split_once('/')
            .ok_or_else(|| format!("`{s}`: write a shard as INDEX/COUNT, e.g. 0/4"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: the index must be a number"))?;
        let count: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("`{s}`: the count must be a number"))?;
        if count == 0 || index >= count {
            return Err(format!("`{s}`: the index must be between 0 and COUNT-1"));
        }
        Ok(Shard { index, count })
    }

    /// The key under which a job's state, lock and commits are kept for this shard: the job
    /// name itself when the job is not split, else `job#I/N`.
    pub fn key(&self, job: &str) -> String {
        if self.count <= 1 {
            job.to_string()
        } else {
            format!("{job}#{}/{}", self.index, self.count)
        }
    }

    /// Whether this shard owns `item` (a file name, a key): a stable FNV-1a hash modulo the
    /// shard count, the same on every machine and every run.
    pub fn owns(&self, item: &str) -> bool {
        if self.count <= 1 {
            return true;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in item.as_bytes() {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h % self.count as u64 == self.index as u64
    }
}

/// What a reader is told about the run it is part of.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReaderContext {
    /// The job's name.
    pub job: String,
    /// The stream (table) this reader reads; the job name when the job has one stream.
    pub stream: String,
    /// The unique id of this run.
    pub run_id: String,
    /// The last committed incremental state, or `None` to read from the beginning.
    pub state: Option<Value>,
    /// The slice of the stream to read.
    pub shard: Shard,
}

impl ReaderContext {
    /// A context for stream `job` of job `job` (one stream), the whole stream (no shard).
    pub fn new(job: impl Into<String>, run_id: impl Into<String>, state: Option<Value>) -> Self {
        let job = job.into();
        ReaderContext {
            stream: job.clone(),
            job,
            run_id: run_id.into(),
            state,
            shard: Shard::default(),
        }
    }
}

/// What a writer is told about the run it is part of.
#[derive(Debug, Clone)]
pub struct WriterContext {
    /// The job's name.
    pub job: String,
    /// The stream (table) being written.
    pub stream: String,
    /// The unique id of this run.
    pub run_id: String,
    /// The schema of every batch the writer will receive.
    pub schema: SchemaRef,
    /// The slice of the stream this writer receives.
    pub shard: Shard,
    /// What the reader knows about the stream (its primary key, whether this run delivers
    /// all of it); empty when it knows nothing.
    pub source: StreamInfo,
}

/// What a reader knows about the stream it delivers: hints for the writer (a merge key, a
/// full refresh to replace the target with, columns a table may declare required). Every
/// field may be empty; writers must not rely on a hint being present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The source's primary key columns, in key order (empty: none or unknown).
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Columns the source declares NOT NULL.
    #[serde(default)]
    pub not_null: Vec<String>,
    /// What this run delivers.
    #[serde(default)]
    pub delivery: Delivery,
    /// About how many rows this run will deliver, when the source can estimate it cheaply
    /// (the database's statistics for a whole-table read; a plugin's schema metadata): a
    /// progress total, never a check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<u64>,
}

/// The Arrow schema metadata key through which a plugin reader may give
/// [`StreamInfo::estimated_rows`]: a decimal integer. Removed from the schema before anything
/// else sees it.
pub const ESTIMATED_ROWS_KEY: &str = "dativo.estimated_rows";

/// What one run of a reader delivers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Not known (plugins, readers that do not say).
    #[default]
    Unknown,
    /// Every row of the source, as of this run (a full refresh): the target should end up
    /// equal to it, not hold it twice.
    Full,
    /// Only rows new or changed since the committed state (a cursor, new files).
    Incremental,
}

impl WriterContext {
    /// A context for stream `job` of job `job` (one stream), the whole stream (no shard).
    pub fn new(job: impl Into<String>, run_id: impl Into<String>, schema: SchemaRef) -> Self {
        let job = job.into();
        WriterContext {
            stream: job.clone(),
            job,
            run_id: run_id.into(),
            schema,
            shard: Shard::default(),
            source: StreamInfo::default(),
        }
    }
}

/// What [`Writer::finalize`] commits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    /// The reader's incremental state covering every batch written so far; store it with the
    /// data where the target can (Iceberg snapshot summary, commit manifest).
    pub state: Option<Value>,
    /// The run this commit belongs to.
    pub run_id: String,
    /// 1 for the run's first commit, then 2, 3, …
    pub sequence: u64,
}

/// What [`Writer::finalize`] reports about the commit it made.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitReport {
    /// Locations of the files made visible by this commit.
    pub files: Vec<String>,
    /// Rows made visible.
    pub rows: u64,
    /// Bytes written to storage.
    pub bytes: u64,
    /// A target-specific commit id (Iceberg snapshot id, manifest name).
    pub commit_id: Option<String>,
}

impl CommitReport {
    /// A report as plugins send it: JSON with any of `files`, `rows`, `bytes`, `commit_id`
    /// (missing fields are empty; `null` is an empty report).
    pub fn from_json(v: &Value) -> CommitReport {
        let files = v
            .get("files")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        CommitReport {
            files,
            rows: v.get("rows").and_then(Value::as_u64).unwrap_or(0),
            bytes: v.get("bytes").and_then(Value::as_u64).unwrap_or(0),
            commit_id: v.get("commit_id").and_then(|c| match c {
                Value::Null => None,
                Value::String(s) => Some(s.clone()),
                other => Some(other.to_string()),
            }),
        }
    }
}

/// What a target says it last committed (see [`Writer::committed_state`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedState {
    /// The state stored with the last successful finalize; `None` if nothing was committed yet.
    pub state: Option<Value>,
    /// The run that made that commit.
    pub run_id: Option<String>,
}

impl CommittedState {
    /// A committed state as plugins send it: `{"state": …, "run_id": …}`.
    pub fn from_json(v: &Value) -> CommittedState {
        CommittedState {
            state: v.get("state").cloned().filter(|s| !s.is_null()),
            run_id: v.get("run_id").and_then(Value::as_str).map(String::from),
        }
    }
}

/// A source of Arrow record batches.
pub trait Reader: Send {
    /// Prepare to read. `config` is the job's `source.config` mapping as JSON. Connect here.
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()>;

    /// The Arrow schema of every batch this reader will return.
    fn get_schema(&mut self) -> Result<SchemaRef>;

    /// The next batch, or `None` at end of stream. Batches must match [`Reader::get_schema`].
    fn read_batch(&mut self) -> Result<Option<RecordBatch>>;

    /// JSON state covering every batch returned so far (e.g. `{"cursor": "2026-11-23"}`), from
    /// which a later run resumes; `None` if the reader is not incremental.
    fn get_incremental_state(&mut self) -> Result<Option<Value>>;

    /// Release resources. Called on success, failure and cancellation, exactly once.
    fn close(&mut self) -> Result<()>;
}

/// A destination for Arrow record batches.
pub trait Writer: Send {
    /// Prepare to write batches of `ctx.schema`. `config` is the job's `target.config` as JSON.
    fn initialize(&mut self, config: &Value, ctx: &WriterContext) -> Result<()>;

    /// Buffer or stream out one batch. Nothing may be visible to readers of the target yet.
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<()>;

    /// Make everything written since the last finalize durable and visible atomically, together
    /// with `commit.state` where the target can store it.
    fn finalize(&mut self, commit: &Commit) -> Result<CommitReport>;

    /// Discard everything written since the last finalize.
    fn abort(&mut self) -> Result<()>;

    /// Release resources. Called on success, failure and cancellation, exactly once.
    fn close(&mut self) -> Result<()>;

    /// The state stored by the last successful [`Writer::finalize`], read back from the target,
    /// so the runner can recover exactly-once after a crash between the target's commit and the
    /// state store's. `Ok(None)`: this writer does not store state (the default).
    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        Ok(None)
    }
}

/// A reader that is open: connected, planned, its schema known — ready to produce batches.
///
/// Built-in readers are opened straight into one of these (no half-initialized state); a
/// plugin's five-method [`Reader`] is adapted once by [`open_reader`]. Dropping an open reader
/// releases its resources; [`OpenReader::close`] does the same and reports what went wrong.
pub trait OpenReader: Send {
    /// The Arrow schema of every batch.
    fn schema(&self) -> SchemaRef;

    /// The next batch, or `None` at end of stream.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>>;

    /// JSON state covering every batch returned so far; `None` if not incremental.
    fn state(&mut self) -> Result<Option<Value>>;

    /// What the reader knows about the stream (see [`StreamInfo`]); nothing by default.
    fn info(&self) -> StreamInfo {
        StreamInfo::default()
    }

    /// Release resources now and report a failure to do so.
    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }

    /// A handle through which the runtime tells a reader what the writer committed and asks
    /// it to stop; taken before the reader moves to its thread. `None` (the default): the
    /// reader needs neither — its source keeps no position and it ends on its own.
    fn control(&self) -> Option<Arc<dyn ReaderControl>> {
        None
    }
}

/// What the runtime tells a reader while it runs (see [`OpenReader::control`]): readers whose
/// source keeps a position for them (a replication slot) and that run until stopped.
pub trait ReaderControl: Send + Sync {
    /// The writer durably committed `state` (one this reader returned): the source may
    /// release what it covers. Called on the writer's thread; must not block.
    fn committed(&self, state: &Value);

    /// End the stream soon, at a point the state can describe: the runtime keeps taking
    /// batches until `next_batch` returns `None`, commits, and the run succeeds.
    fn stop(&self);
}

/// A writer that is open: its target reachable and ready for batches of one schema.
///
/// Built-in writers are opened straight into one of these; a plugin's [`Writer`] is adapted
/// once by [`open_writer`]. Dropping an open writer releases its resources (uncommitted data is
/// discarded); [`OpenWriter::close`] does the same and reports what went wrong.
pub trait OpenWriter: Send {
    /// Buffer or stream out one batch; nothing is visible to readers of the target yet.
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;

    /// Make everything written since the last commit durable and visible atomically, with
    /// `commit.state` where the target can store it.
    fn commit(&mut self, commit: &Commit) -> Result<CommitReport>;

    /// Discard everything written since the last commit.
    fn abort(&mut self) -> Result<()>;

    /// The state stored by the last successful commit, read back from the target (see
    /// [`Writer::committed_state`]).
    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        Ok(None)
    }

    /// This writer replaces the target's contents with one run's rows (an overwrite): the
    /// runner then commits once, at end of stream — also when the run delivered no rows (the
    /// target becomes empty) — and never at a checkpoint, so a run that stops midway leaves
    /// the old contents. `false` by default.
    fn commits_once(&self) -> bool {
        false
    }

    /// Release resources now and report a failure to do so.
    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

/// Open a five-method [`Reader`] (a plugin): `initialize`, then `get_schema`. On failure the
/// reader is closed before the error is returned; later, `close` is called exactly once — by
/// [`OpenReader::close`] or on drop.
pub fn open_reader(
    mut reader: Box<dyn Reader>,
    config: &Value,
    ctx: &ReaderContext,
) -> Result<Box<dyn OpenReader>> {
    let opened = reader
        .initialize(config, ctx)
        .and_then(|()| reader.get_schema());
    match opened {
        Ok(schema) => {
            let (schema, estimated_rows) = take_estimate(schema);
            Ok(Box::new(AdaptedReader {
                inner: Some(reader),
                schema,
                estimated_rows,
            }))
        }
        Err(e) => {
            if let Err(close) = reader.close() {
                tracing_free_warn("closing the reader after it failed to open", &close);
            }
            Err(e)
        }
    }
}

/// Open a five-method [`Writer`] (a plugin) with `initialize`; closed on failure, and exactly
/// once later — by [`OpenWriter::close`] or on drop.
pub fn open_writer(
    mut writer: Box<dyn Writer>,
    config: &Value,
    ctx: &WriterContext,
) -> Result<Box<dyn OpenWriter>> {
    match writer.initialize(config, ctx) {
        Ok(()) => Ok(Box::new(AdaptedWriter {
            inner: Some(writer),
        })),
        Err(e) => {
            if let Err(close) = writer.close() {
                tracing_free_warn("closing the writer after it failed to open", &close);
            }
            Err(e)
        }
    }
}

/// dativo-core has no logging dependency: a close failure nobody else can report (after a
/// failed open, or on drop) goes to stderr through the error's (redacted) display, as the
/// CLI's own messages do.
fn tracing_free_warn(doing: &str, e: &crate::Error) {
    eprintln!(
        "warning: {doing}: {}",
        crate::secrets::scrub(&e.to_string())
    );
}

/// A plugin's row estimate ([`ESTIMATED_ROWS_KEY`]) taken out of its schema's metadata, so
/// that it does not travel on into the files written.
fn take_estimate(schema: SchemaRef) -> (SchemaRef, Option<u64>) {
    let Some(v) = schema.metadata().get(ESTIMATED_ROWS_KEY) else {
        return (schema, None);
    };
    let estimate = v.trim().parse::<u64>().ok();
    let mut metadata = schema.metadata().clone();
    metadata.remove(ESTIMATED_ROWS_KEY);
    let stripped = Schema::new_with_metadata(schema.fields().clone(), metadata);
    (Arc::new(stripped), estimate)
}

/// A five-method reader, opened.
struct AdaptedReader {
    inner: Option<Box<dyn Reader>>,
    schema: SchemaRef,
    estimated_rows: Option<u64>,
}

/// A five-method writer, opened.
struct AdaptedWriter {
    inner: Option<Box<dyn Writer>>,
}

impl OpenReader for AdaptedReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn info(&self) -> StreamInfo {
        StreamInfo {
            estimated_rows: self.estimated_rows,
            ..StreamInfo::default()
        }
    }
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        match &mut self.inner {
            Some(r) => r.read_batch(),
            None => Ok(None),
        }
    }
    fn state(&mut self) -> Result<Option<Value>> {
        match &mut self.inner {
            Some(r) => r.get_incremental_state(),
            None => Ok(None),
        }
    }
    fn close(mut self: Box<Self>) -> Result<()> {
        match self.inner.take() {
            Some(mut r) => r.close(),
            None => Ok(()),
        }
    }
}

impl Drop for AdaptedReader {
    fn drop(&mut self) {
        // Still here: dropped without `close` (an error path or a cancellation).
        if let Some(mut r) = self.inner.take() {
            if let Err(e) = r.close() {
                tracing_free_warn("closing the reader", &e);
            }
        }
    }
}

impl OpenWriter for AdaptedWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match &mut self.inner {
            Some(w) => w.write_batch(batch),
            None => Err(crate::Error::internal("write after close")),
        }
    }
    fn commit(&mut self, commit: &Commit) -> Result<CommitReport> {
        match &mut self.inner {
            Some(w) => w.finalize(commit),
            None => Err(crate::Error::internal("commit after close")),
        }
    }
    fn abort(&mut self) -> Result<()> {
        match &mut self.inner {
            Some(w) => w.abort(),
            None => Ok(()),
        }
    }
    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        match &mut self.inner {
            Some(w) => w.committed_state(),
            None => Ok(None),
        }
    }
    fn close(mut self: Box<Self>) -> Result<()> {
        match self.inner.take() {
            Some(mut w) => w.close(),
            None => Ok(()),
        }
    }
}

impl Drop for AdaptedWriter {
    fn drop(&mut self) {
        if let Some(mut w) = self.inner.take() {
            if let Err(e) = w.close() {
                tracing_free_warn("closing the writer", &e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts `close` calls; fails `initialize` when told to.
    struct Counting {
        closes: Arc<AtomicUsize>,
        fail_init: bool,
        left: usize,
    }

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]))
    }

    impl Reader for Counting {
        fn initialize(&mut self, _: &Value, _: &ReaderContext) -> Result<()> {
            if self.fail_init {
                return Err(Error::config("bad config"));
            }
            Ok(())
        }
        fn get_schema(&mut self) -> Result<SchemaRef> {
            Ok(schema())
        }
        fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            Ok(Some(RecordBatch::try_new(
                schema(),
                vec![Arc::new(Int64Array::from(vec![1, 2]))],
            )?))
        }
        fn get_incremental_state(&mut self) -> Result<Option<Value>> {
            Ok(Some(Value::from(self.left)))
        }
        fn close(&mut self) -> Result<()> {
            self.closes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    impl Writer for Counting {
        fn initialize(&mut self, _: &Value, _: &WriterContext) -> Result<()> {
            if self.fail_init {
                return Err(Error::config("bad config"));
            }
            Ok(())
        }
        fn write_batch(&mut self, _: &RecordBatch) -> Result<()> {
            Ok(())
        }
        fn finalize(&mut self, _: &Commit) -> Result<CommitReport> {
            Ok(CommitReport::default())
        }
        fn abort(&mut self) -> Result<()> {
            Ok(())
        }
        fn close(&mut self) -> Result<()> {
            self.closes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn counting(fail_init: bool) -> (Arc<AtomicUsize>, Box<Counting>) {
        let closes = Arc::new(AtomicUsize::new(0));
        let c = Box::new(Counting {
            closes: closes.clone(),
            fail_init,
            left: 2,
        });
        (closes, c)
    }

    fn rctx() -> ReaderContext {
        ReaderContext::new("j", "r", None)
    }

    fn wctx() -> WriterContext {
        WriterContext::new("j", "r", schema())
    }

    #[test]
    fn an_adapted_reader_is_closed_exactly_once() {
        // Closed explicitly: not again on drop.
        let (closes, r) = counting(false);
        let mut opened = open_reader(r, &Value::Null, &rctx()).unwrap();
        assert_eq!(opened.schema(), schema());
        assert_eq!(opened.next_batch().unwrap().unwrap().num_rows(), 2);
        assert_eq!(opened.state().unwrap(), Some(Value::from(1)));
        assert_eq!(closes.load(Ordering::SeqCst), 0);
        opened.close().unwrap();
        assert_eq!(closes.load(Ordering::SeqCst), 1);
        // Dropped without close (an error path): closed by the drop.
        let (closes, r) = counting(false);
        drop(open_reader(r, &Value::Null, &rctx()).unwrap());
        assert_eq!(closes.load(Ordering::SeqCst), 1);
        // A failed open closes what was half-opened, once.
        let (closes, r) = counting(true);
        let e = open_reader(r, &Value::Null, &rctx()).err().unwrap();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert_eq!(closes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_adapted_writer_is_closed_exactly_once() {
        let (closes, w) = counting(false);
        let opened = open_writer(w, &Value::Null, &wctx()).unwrap();
        opened.close().unwrap();
        assert_eq!(closes.load(Ordering::SeqCst), 1);
        let (closes, w) = counting(false);
        let mut opened = open_writer(w, &Value::Null, &wctx()).unwrap();
        opened.abort().unwrap();
        drop(opened);
        assert_eq!(closes.load(Ordering::SeqCst), 1);
        let (closes, w) = counting(true);
        assert!(open_writer(w, &Value::Null, &wctx()).is_err());
        assert_eq!(closes.load(Ordering::SeqCst), 1);
    }
}
