//! The runner: one run of one job, with the commit protocol of docs/commit-protocol.md.
//!
//! ```text
//! lock job ─► attempt 1..=retry.attempts:
//!   state ← state store; writer.committed_state() wins if it differs
//!   reader thread ──(batch, state)──► bounded channel ──► writer (this thread)
//!   every checkpoint and at end: writer.finalize(state) ─► state store
//!   on error: writer.abort(); retry if retryable, with exponential backoff and jitter
//! ```
//!
//! Memory is bounded by `channel_depth` batches in flight plus what the writer buffers, never by
//! the size of the source. State advances only after the writer's finalize succeeded.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::{after, bounded, never, select, Receiver, RecvTimeoutError, Sender};
use serde_json::Value;

use dativo_core::conformance::check_batch_schema;
use dativo_core::job::Job;
use dativo_core::{
    secrets, Commit, CommitReport, Error, ErrorKind, OpenReader, OpenWriter, ReaderContext,
    ReaderControl, Result, Shard, StreamInfo, WriterContext,
};

use crate::implementations::{self, ReaderFactory, WriterFactory};
use crate::state_store::{RunStatus, StateStore};

/// Cancels a run from another thread (signal handler, API).
///
/// Cancelling is a one-way switch that wakes every waiter at once: the runner's writer loop
/// selects on it with its batch channel, retry back-off waits on it with a timeout
/// ([`CancelToken::wait_timeout`]), and the reader thread checks it between batches.
#[derive(Clone)]
pub struct CancelToken(Arc<CancelInner>);

struct CancelInner {
    cancelled: AtomicBool,
    /// Dropped on cancel: every receiver then sees the channel disconnected. Nothing is ever
    /// sent on it.
    trigger: Mutex<Option<Sender<Never>>>,
    signal: Receiver<Never>,
}

/// The message type of the cancel channel: none is ever sent.
enum Never {}

impl Default for CancelToken {
    fn default() -> Self {
        let (tx, rx) = bounded::<Never>(0);
        CancelToken(Arc::new(CancelInner {
            cancelled: AtomicBool::new(false),
            trigger: Mutex::new(Some(tx)),
            signal: rx,
        }))
    }
}

impl std::fmt::Debug for CancelToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelToken")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> Self {
        Self::default()
    }

    /// Request cancellation; wakes everything waiting on the token.
    pub fn cancel(&self) {
        self.0.cancelled.store(true, Ordering::SeqCst);
        self.0
            .trigger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Whether cancellation was requested.
    pub fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    /// Wait until cancelled or `timeout` has passed; whether it was cancelled.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        match self.0.signal.recv_timeout(timeout) {
            Ok(never) => match never {},
            Err(RecvTimeoutError::Disconnected) => true,
            Err(RecvTimeoutError::Timeout) => self.is_cancelled(),
        }
    }

    /// Wait until cancelled.
    pub fn wait(&self) {
        let _ = self.0.signal.recv();
    }

    /// A channel that becomes ready (disconnected) when the token is cancelled, for
    /// `crossbeam_channel::select!`.
    fn receiver(&self) -> &Receiver<Never> {
        &self.0.signal
    }
}

/// What happens during a run, for progress bars, logs and metrics.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// An attempt starts from `state`.
    AttemptStarted {
        /// 1-based attempt number.
        attempt: u32,
        /// The state the reader starts from.
        state: Option<&'a Value>,
    },
    /// The writer's committed state differed from the state store's; the writer's was used.
    Recovered {
        /// What the state store had.
        store: Option<&'a Value>,
        /// What the writer had.
        writer: Option<&'a Value>,
    },
    /// The reader's schema is known.
    Schema(&'a SchemaRef),
    /// The reader estimates this attempt of stream `stream` (the job, or one of its streams
    /// or shards) delivers about `rows` rows: a progress total, not a promise.
    Estimate {
        /// The job's name, or its stream's or shard's key.
        stream: &'a str,
        /// Estimated rows.
        rows: u64,
    },
    /// A batch was handed to the writer.
    Batch {
        /// The job's name, or its stream's or shard's key (as in [`RunEvent::Estimate`]).
        stream: &'a str,
        /// Rows in the batch.
        rows: u64,
        /// Arrow in-memory bytes of the batch.
        bytes: u64,
    },
    /// A checkpoint was committed.
    Committed {
        /// The writer's report.
        report: &'a CommitReport,
        /// The state committed with it.
        state: Option<&'a Value>,
    },
    /// An attempt failed with a retryable error; the next starts after `delay`.
    Retrying {
        /// The attempt that failed.
        attempt: u32,
        /// Why.
        error: &'a Error,
        /// Delay before the next attempt.
        delay: Duration,
    },
}

/// Receives [`RunEvent`]s.
pub trait Observer: Send + Sync {
    /// Called on the runner's thread; keep it cheap.
    fn on_event(&self, event: &RunEvent<'_>);
}

/// An observer that ignores everything.
pub struct NoObserver;
impl Observer for NoObserver {
    fn on_event(&self, _: &RunEvent<'_>) {}
}

/// How a run ended, with totals.
#[derive(Debug)]
pub struct RunSummary {
    /// The run's id.
    pub run_id: String,
    /// Final status.
    pub status: RunStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Rows committed.
    pub rows: u64,
    /// Bytes committed (as reported by the writer).
    pub bytes: u64,
    /// Arrow bytes read.
    pub arrow_bytes: u64,
    /// Commits made.
    pub commits: u64,
    /// Files made visible.
    pub files: Vec<String>,
    /// Wall time.
    pub elapsed: Duration,
    /// The error that ended the run.
    pub error: Option<Error>,
    /// The state committed last (or the starting state if nothing was committed).
    pub state: Option<Value>,
}

/// Options of a run.
pub struct RunOptions<'a> {
    /// Cancellation.
    pub cancel: CancelToken,
    /// Progress.
    pub observer: &'a dyn Observer,
    /// The run's id; a fresh UUIDv7 when `None` (`serve` picks it to cancel the run by id).
    pub run_id: Option<String>,
    /// The slice of the job this process runs (`--shard I/N`); each shard has its own state,
    /// lock and commits, keyed `job#I/N`.
    pub shard: Shard,
}

enum Msg {
    Batch(RecordBatch, Option<Value>),
    End(Option<Value>),
    Failed(Error),
}

#[derive(Default)]
struct Totals {
    rows: u64,
    bytes: u64,
    arrow_bytes: u64,
    commits: u64,
    files: Vec<String>,
    state: Option<Value>,
}

/// Run `job` once (with its retries) against `store`. Returns the summary; a failed run has
/// `error` set and its earlier commits stand.
pub fn run(job: &Job, store: &StateStore, opts: &RunOptions<'_>) -> Result<RunSummary> {
    let (rf, wf) = implementations::validate(job)?;
    let key = opts.shard.key(job.name());
    let name = key.as_str();
    let lock = store.lock(name)?;
    let run_id = opts
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    store.start_run(name, &run_id)?;
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut sequence = 0u64;
    let retry = &job.config.retry;
    let mut attempt = 0u32;
    let error = loop {
        attempt += 1;
        store.set_attempts(&run_id, attempt)?;
        let mut a = Attempt {
            job,
            store,
            lock: &lock,
            rf: &rf,
            wf: &wf,
            run_id: &run_id,
            opts,
            totals: &mut totals,
            sequence: &mut sequence,
        };
        match a.run(attempt) {
            Ok(()) => break None,
            Err(e) if e.kind() == ErrorKind::Cancelled => break Some(e),
            Err(e) if e.is_retryable() && attempt < retry.attempts => {
                let delay = backoff(retry.backoff.0, retry.max_backoff.0, attempt);
                tracing::warn!(job = name, attempt, error = %secrets::scrub(&e.to_string()), delay = ?delay, "attempt failed; retrying");
                opts.observer.on_event(&RunEvent::Retrying {
                    attempt,
                    error: &e,
                    delay,
                });
                if opts.cancel.wait_timeout(delay) {
                    break Some(Error::cancelled("cancelled while waiting to retry"));
                }
            }
            Err(e) => break Some(e),
        }
    };
    let status = match &error {
        None => RunStatus::Succeeded,
        Some(e) if e.kind() == ErrorKind::Cancelled => RunStatus::Cancelled,
        Some(_) => RunStatus::Failed,
    };
    let msg = error.as_ref().map(|e| secrets::scrub(&e.to_string()));
    store.finish_run(&run_id, status, msg.as_deref())?;
    Ok(RunSummary {
        run_id,
        status,
        attempts: attempt,
        rows: totals.rows,
        bytes: totals.bytes,
        arrow_bytes: totals.arrow_bytes,
        commits: totals.commits,
        files: totals.files,
        elapsed: started.elapsed(),
        error,
        state: totals.state,
    })
}

/// Exponential backoff with "equal jitter" ([`dativo_core::backoff`], the engine's one formula).
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    dativo_core::backoff::backoff(base, max, attempt, rand::random::<f64>())
}

struct Attempt<'a> {
    job: &'a Job,
    store: &'a StateStore,
    lock: &'a crate::state_store::JobLock,
    rf: &'a ReaderFactory,
    wf: &'a WriterFactory,
    run_id: &'a str,
    opts: &'a RunOptions<'a>,
    totals: &'a mut Totals,
    sequence: &'a mut u64,
}

fn reader_ctx(job: &Job, run_id: &str, state: Option<Value>, shard: Shard) -> ReaderContext {
    ReaderContext {
        job: job.name().to_string(),
        stream: job.name().to_string(),
        run_id: run_id.to_string(),
        state,
        shard,
    }
}

/// Open a reader and get its schema.
fn open_reader(
    rf: &ReaderFactory,
    config: &Value,
    ctx: &ReaderContext,
) -> Result<(Box<dyn OpenReader>, SchemaRef)> {
    let r = rf.open(config, ctx)?;
    let schema = r.schema();
    Ok((r, schema))
}

/// Open a writer.
fn open_writer(
    wf: &WriterFactory,
    config: &Value,
    ctx: &WriterContext,
) -> Result<Box<dyn OpenWriter>> {
    wf.open(config, ctx)
}

impl Attempt<'_> {
    fn run(&mut self, attempt: u32) -> Result<()> {
        let job = self.job;
        let shard = self.opts.shard;
        let key = shard.key(job.name());
        let name = key.as_str();
        let stored_row = self.store.load_state(name)?;
        // After `dativo state reset`: what the writer committed before the reset must not win.
        let reset_at = stored_row
            .as_ref()
            .filter(|s| s.run_id == crate::state_store::RESET_RUN_ID)
            .map(|s| s.updated_at.clone());
        let stored = stored_row.and_then(|s| s.state);
        self.opts.observer.on_event(&RunEvent::AttemptStarted {
            attempt,
            state: stored.as_ref(),
        });
        let rcfg = &job.config.source.config;
        let wcfg = &job.config.target.config;
        // Opened objects release what they hold when dropped: every early return below closes
        // whatever is open at that point.
        let (mut reader, mut schema) = open_reader(
            self.rf,
            rcfg,
            &reader_ctx(job, self.run_id, stored.clone(), shard),
        )?;
        // Writers keep their commits per shard: `job` is the shard's key (`job#I/N`).
        let wctx = |schema: &SchemaRef, source: StreamInfo| WriterContext {
            job: name.to_string(),
            stream: job.name().to_string(),
            run_id: self.run_id.to_string(),
            schema: schema.clone(),
            shard,
            source,
        };
        let mut writer = open_writer(self.wf, wcfg, &wctx(&schema, reader.info()))?;
        // Recovery: the target's own record of what it committed wins over the state store.
        let mut start_state = stored.clone();
        let recovered = match writer
            .committed_state()
            .map_err(|e| e.context(format!("{}: committed_state", self.wf.label)))?
        {
            Some(c) if c.state != stored && committed_after(&c, reset_at.as_deref()) => Some(c),
            _ => None,
        };
        if let Some(c) = recovered {
            tracing::warn!(job = name, "the writer's committed state differs from the state store (a previous run stopped between the two); resuming from the writer's");
            self.opts.observer.on_event(&RunEvent::Recovered {
                store: stored.as_ref(),
                writer: c.state.as_ref(),
            });
            // The reader was opened from the store's state: it goes before the new one opens.
            drop(reader);
            self.store.put_state(
                name,
                c.run_id.as_deref().unwrap_or(self.run_id),
                c.state.as_ref(),
            )?;
            let (r, s) = open_reader(
                self.rf,
                rcfg,
                &reader_ctx(job, self.run_id, c.state.clone(), shard),
            )?;
            reader = r;
            if s != schema {
                // One writer at a time (a Parquet prefix lease, an Iceberg guard): the old one
                // is released before the new one opens.
                drop(writer);
                schema = s;
                writer = open_writer(self.wf, wcfg, &wctx(&schema, reader.info()))?;
                // The target may have moved while the writer was closed (another run of the
                // job committed): resuming from the old state would load its rows again. The
                // next attempt starts over from the new state.
                let again = writer.committed_state().map(|c2| c2.map(|c2| c2.state));
                if !matches!(&again, Ok(Some(st)) if *st == c.state) {
                    return Err(Error::transient(format!(
                        "{}: the committed state changed while the writer was re-opened \
                         for the new schema (another run of job `{name}` committed?); \
                         starting over from it",
                        self.wf.label
                    )));
                }
            }
            start_state = c.state;
        }
        self.totals.state = start_state.clone();
        self.opts.observer.on_event(&RunEvent::Schema(&schema));
        if let Some(rows) = reader.info().estimated_rows {
            self.opts
                .observer
                .on_event(&RunEvent::Estimate { stream: name, rows });
        }
        self.pump(reader, writer, schema, start_state)
    }

    /// Move batches from the reader (on its own thread) to the writer (on this one).
    fn pump(
        &mut self,
        mut reader: Box<dyn OpenReader>,
        mut writer: Box<dyn OpenWriter>,
        schema: SchemaRef,
        start_state: Option<Value>,
    ) -> Result<()> {
        let (tx, rx) = bounded::<Msg>(self.job.config.channel_depth);
        // A reader that runs until stopped ends its stream itself when cancelled: what it
        // delivered is committed and the run succeeds.
        let control = reader.control();
        let graceful = control.is_some();
        // The reader thread's last word: how closing the reader went. Disconnected without a
        // word: it panicked while closing.
        let (closed_tx, closed_rx) = bounded::<Result<()>>(1);
        let cancel = self.opts.cancel.clone();
        thread::Builder::new()
            .name("dativo-reader".into())
            .spawn(move || {
                let produced = std::panic::catch_unwind(AssertUnwindSafe(|| -> Result<()> {
                    loop {
                        if cancel.is_cancelled() && !graceful {
                            return Ok(());
                        }
                        match reader.next_batch()? {
                            Some(b) => {
                                let st = reader.state()?;
                                if tx.send(Msg::Batch(b, st)).is_err() {
                                    return Ok(());
                                }
                            }
                            None => {
                                let st = reader.state()?;
                                let _ = tx.send(Msg::End(st));
                                return Ok(());
                            }
                        }
                    }
                }));
                let err = match produced {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e),
                    Err(p) => Some(Error::plugin(format!("panicked: {}", panic_message(&p)))),
                };
                if let Some(e) = err {
                    let _ = tx.send(Msg::Failed(e));
                }
                drop(tx);
                let _ = closed_tx.send(reader.close());
            })
            .map_err(|e| Error::internal(format!("cannot start the reader thread: {e}")))?;

        let mut result = self.consume(&rx, &mut *writer, &schema, start_state, control);
        drop(rx);
        match &result {
            // After a successful attempt a failed close is the run's failure (e.g. committed
            // files that could not be published).
            Ok(()) => {
                if let Err(e) = writer.close() {
                    result = Err(e.context(format!("{}: close", self.wf.label)));
                }
            }
            // After a failed one the first error wins; dropping the writer releases it.
            Err(_) => {
                if let Err(e) = writer.abort() {
                    tracing::warn!(error = %secrets::scrub(&e.to_string()), "{} abort failed", self.wf.label);
                }
                drop(writer);
            }
        }
        // The reader thread ends once it notices the closed channel; do not hang on a reader
        // blocked in I/O after a failure.
        let wait = Duration::from_secs(if result.is_ok() { 3600 } else { 10 });
        match closed_rx.recv_timeout(wait) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %secrets::scrub(&e.to_string()), "{} close failed", self.rf.label)
            }
            Err(RecvTimeoutError::Disconnected) => {
                tracing::warn!("{} panicked in close", self.rf.label)
            }
            Err(RecvTimeoutError::Timeout) => tracing::warn!(
                "{} did not stop within {} s; leaving it behind",
                self.rf.label,
                wait.as_secs()
            ),
        }
        result
    }

    fn consume(
        &mut self,
        rx: &Receiver<Msg>,
        writer: &mut dyn OpenWriter,
        schema: &SchemaRef,
        start_state: Option<Value>,
        control: Option<Arc<dyn ReaderControl>>,
    ) -> Result<()> {
        let stream_key = self.opts.shard.key(self.job.name());
        let cp = &self.job.config.checkpoint;
        // A writer that replaces the target commits once, at end of stream: a checkpoint
        // would show readers part of the new contents.
        let once = writer.commits_once();
        if once && (cp.rows.is_some() || cp.bytes.is_some() || cp.seconds.is_some()) {
            tracing::debug!(
                "{} replaces the target in one commit at end of stream: `checkpoint` does not apply",
                self.wf.label
            );
        }
        let max_rows = cp.rows.filter(|_| !once).unwrap_or(u64::MAX);
        let max_bytes = cp.bytes.filter(|_| !once).map(|b| b.0).unwrap_or(u64::MAX);
        let max_age = cp
            .seconds
            .filter(|_| !once)
            .map(|d| d.0)
            .unwrap_or(Duration::MAX);
        let opts = self.opts;
        let cancel = &opts.cancel;
        let cancelled = || Error::cancelled("cancelled; uncommitted batches were discarded");
        let mut latest = start_state.clone();
        let mut committed = start_state;
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut since = Instant::now();
        // Cancelled with a reader that stops on request: it was asked to, and its last
        // batches and end are taken as usual.
        let mut stopping = false;
        let stop = |stopping: &mut bool| {
            if let Some(c) = &control {
                if !*stopping {
                    tracing::info!("stopping: committing what was read, then exiting");
                    c.stop();
                }
                *stopping = true;
                true
            } else {
                false
            }
        };
        loop {
            if cancel.is_cancelled() && !stop(&mut stopping) {
                return Err(cancelled());
            }
            // With rows pending and `checkpoint.seconds` set, a quiet source still commits
            // when they are old enough.
            let age_due = match (rows > 0, since.checked_add(max_age)) {
                (true, Some(due)) => after(due.saturating_duration_since(Instant::now())),
                _ => never(),
            };
            let cancel_rx = if stopping {
                never()
            } else {
                cancel.receiver().clone()
            };
            let msg = select! {
                recv(rx) -> m => match m {
                    Ok(m) => m,
                    // The reader thread also stops when it sees the cancel.
                    Err(_) if cancel.is_cancelled() => return Err(cancelled()),
                    Err(_) => {
                        return Err(Error::internal(format!(
                            "{} stopped without reporting end of stream",
                            self.rf.label
                        )))
                    }
                },
                recv(cancel_rx) -> _ => {
                    if stop(&mut stopping) {
                        continue;
                    }
                    return Err(cancelled());
                }
                recv(age_due) -> _ => {
                    self.commit(writer, &latest)?;
                    acknowledge(&control, &latest);
                    committed = latest.clone();
                    (rows, bytes, since) = (0, 0, Instant::now());
                    continue;
                }
            };
            match msg {
                Msg::Batch(batch, state) => {
                    check_batch_schema(schema, &batch).map_err(|e| {
                        Error::new(ErrorKind::Plugin, e.message().to_string())
                            .context(self.rf.label.clone())
                    })?;
                    writer
                        .write(&batch)
                        .map_err(|e| e.context(self.wf.label.clone()))?;
                    let n = batch.num_rows() as u64;
                    let b = batch.get_array_memory_size() as u64;
                    rows += n;
                    bytes += b;
                    self.totals.arrow_bytes += b;
                    latest = state;
                    self.opts.observer.on_event(&RunEvent::Batch {
                        stream: &stream_key,
                        rows: n,
                        bytes: b,
                    });
                    // An empty batch from a reader the source keeps a position for (a
                    // heartbeat) moves only the state: committed at once, so the source
                    // can release what it covers.
                    let heartbeat = n == 0 && control.is_some() && latest != committed;
                    if heartbeat
                        || rows >= max_rows
                        || bytes >= max_bytes
                        || since.elapsed() >= max_age
                    {
                        self.commit(writer, &latest)?;
                        acknowledge(&control, &latest);
                        committed = latest.clone();
                        (rows, bytes, since) = (0, 0, Instant::now());
                    }
                }
                Msg::End(state) => {
                    if state.is_some() {
                        latest = state;
                    }
                    if rows > 0 || latest != committed || once {
                        self.commit(writer, &latest)?;
                        acknowledge(&control, &latest);
                    }
                    return Ok(());
                }
                Msg::Failed(e) => return Err(e.context(self.rf.label.clone())),
            }
        }
    }

    fn commit(&mut self, writer: &mut dyn OpenWriter, state: &Option<Value>) -> Result<()> {
        *self.sequence += 1;
        let commit = Commit {
            state: state.clone(),
            run_id: self.run_id.to_string(),
            sequence: *self.sequence,
        };
        self.lock.ensure_held()?;
        let report = writer
            .commit(&commit)
            .map_err(|e| e.context(format!("{}: finalize", self.wf.label)))?;
        self.store.save_commit(
            &self.opts.shard.key(self.job.name()),
            self.run_id,
            state.as_ref(),
            report.rows,
            report.bytes,
        )?;
        self.totals.rows += report.rows;
        self.totals.bytes += report.bytes;
        self.totals.commits += 1;
        self.totals.files.extend(report.files.iter().cloned());
        self.totals.state = state.clone();
        tracing::info!(
            job = %self.opts.shard.key(self.job.name()),
            rows = report.rows,
            files = report.files.len(),
            commit = report.commit_id.as_deref().unwrap_or(""),
            "committed"
        );
        self.opts.observer.on_event(&RunEvent::Committed {
            report: &report,
            state: state.as_ref(),
        });
        Ok(())
    }
}

/// Tell a reader with a control what the writer committed.
fn acknowledge(control: &Option<Arc<dyn ReaderControl>>, state: &Option<Value>) {
    if let (Some(c), Some(s)) = (control, state) {
        c.committed(s);
    }
}

/// Whether the writer's committed state `c` was made after a reset at `reset_at` (always, when
/// there was no reset). Run ids are UUIDv7s, which carry their start time; a commit by a run
/// id without one is treated as older than the reset.
fn committed_after(c: &dativo_core::CommittedState, reset_at: Option<&str>) -> bool {
    let Some(reset_at) = reset_at else {
        return true;
    };
    let reset_ms = chrono::DateTime::parse_from_rfc3339(reset_at)
        .map(|t| t.timestamp_millis())
        .unwrap_or(i64::MAX);
    let run_ms = c
        .run_id
        .as_deref()
        .and_then(|r| uuid::Uuid::parse_str(r).ok())
        .and_then(|u| u.get_timestamp())
        .map(|t| {
            let (secs, nanos) = t.to_unix();
            secs as i64 * 1000 + (nanos / 1_000_000) as i64
        });
    let after = matches!(run_ms, Some(ms) if ms >= reset_ms);
    if !after {
        tracing::info!(
            "the writer's committed state predates `dativo state reset`: reading from the beginning"
        );
    }
    after
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// `dativo check`: validate, open the reader from the committed state, return its schema.
pub fn check(job: &Job, store: &StateStore) -> Result<SchemaRef> {
    let (rf, _wf) = implementations::validate(job)?;
    let state = store.load_state(job.name())?.and_then(|s| s.state);
    let (r, schema) = open_reader(
        &rf,
        &job.config.source.config,
        &reader_ctx(job, "check", state, Shard::default()),
    )?;
    r.close().map_err(|e| e.context(rf.label.clone()))?;
    Ok(schema)
}

/// What a run of a job would do, found without writing anything (`dativo run --dry-run`).
#[derive(Debug)]
pub struct DryRun {
    /// The source schema the run would read.
    pub schema: SchemaRef,
    /// What the reader says about the stream: key, delivery, estimated rows.
    pub info: StreamInfo,
    /// The committed state the reader would start from (`None`: the beginning).
    pub state: Option<Value>,
    /// The state was reset by `dativo state reset` and not yet replaced by a run.
    pub reset: bool,
    /// How the writer would write, in words, when it is a built-in that says (decided as the
    /// writer decides: mode, key, the source's delivery and the shard).
    pub writes: Option<String>,
}

/// `dativo run --dry-run`: validate the job, open its reader from the committed state of
/// `shard` (connecting, planning — a SQL reader starts its queries, and they end when it is
/// closed), report what it would read and how the writer would write, and close it. The
/// writer is not opened (so its own record of what it committed is not consulted): nothing
/// is created, written or committed, and no lock is taken. `store`: `None`
/// when the job has no state store yet (it starts from the beginning).
pub fn dry_run(job: &Job, store: Option<&StateStore>, shard: Shard) -> Result<DryRun> {
    let (rf, _wf) = implementations::validate(job)?;
    let key = shard.key(job.name());
    let row = match store {
        Some(s) => s.load_state(&key)?,
        None => None,
    };
    let reset = row
        .as_ref()
        .is_some_and(|s| s.run_id == crate::state_store::RESET_RUN_ID);
    let state = row.and_then(|s| s.state);
    let (r, schema) = open_reader(
        &rf,
        &job.config.source.config,
        &reader_ctx(job, "dry-run", state.clone(), shard),
    )?;
    let info = r.info();
    r.close().map_err(|e| e.context(rf.label.clone()))?;
    let ctx = WriterContext {
        job: key.clone(),
        stream: job.name().to_string(),
        run_id: "dry-run".into(),
        schema: schema.clone(),
        shard,
        source: info.clone(),
    };
    let wcfg = &job.config.target.config;
    let writes = match &job.config.target.writer {
        dativo_core::job::Implementation::Builtin(w) if w == "parquet" => {
            Some(dativo_connectors::parquet::planned_write(wcfg, &ctx)?)
        }
        dativo_core::job::Implementation::Builtin(w) if w == "iceberg" => {
            Some(dativo_connectors::iceberg::planned_write(wcfg, &ctx)?)
        }
        _ => None,
    };
    Ok(DryRun {
        schema,
        info,
        state,
        reset,
        writes,
    })
}
