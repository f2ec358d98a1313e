//! `dativo serve`: runs every job of a directory on its schedule, with an HTTP API
//! (`docs/openapi.yaml`), Prometheus metrics, health checks and a status page.
//!
//! * Scheduling: each job's `schedule` (cron, 5 or 6 fields, with a time zone); the scheduler
//!   sleeps until the next job is due, a run ends (a pending run may start), the job files are
//!   due for a re-read, or shutdown is requested. A job never runs twice at once — here, and
//!   across instances sharing a PostgreSQL state store (its advisory lock) — and at most
//!   `max_concurrent` runs go on at a time. A due run that cannot start is dropped
//!   (`missed: skip`, the default) or kept as one pending run (`missed: run_once`), which also
//!   catches up on a time missed while no instance was running.
//! * Job files are re-read when they change; an invalid file is reported (log, API, page) and
//!   the other jobs keep running.
//! * The HTTP server bounds its connections (`connections.rs`): a header-read timeout, a cap on
//!   open connections, and file descriptors kept for the scheduler.
//! * Shutdown (SIGTERM, Ctrl-C): nothing new starts; running jobs get `grace` to finish, then are
//!   cancelled — the runner stops between batches and aborts the uncommitted part, so nothing is
//!   half-committed.

mod connections;
mod http;
mod metrics;
mod page;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use serde::Serialize;

use dativo_core::job::{Job, MissedRuns};
use dativo_core::{secrets, Error, Result};
use dativo_runtime::{
    CancelToken, Observer, RunEvent, RunOptions, RunStatus, RunSummary, StateStore,
};

pub use connections::HttpLimits;
pub use metrics::Metrics;

/// How `serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The directory of job files (`*.yaml`, `*.yml`).
    pub jobs_dir: PathBuf,
    /// Where the HTTP server listens.
    pub listen: SocketAddr,
    /// The SQLite state directory (when `state_url` is not set).
    pub state_dir: PathBuf,
    /// A PostgreSQL state store shared by several instances.
    pub state_url: Option<String>,
    /// Runs at once, over all jobs.
    pub max_concurrent: usize,
    /// How long running jobs may take to finish on shutdown before they are cancelled.
    pub grace: Duration,
    /// Bearer token for triggering and cancelling; without one those endpoints are refused.
    /// It must not be empty (see [`check_api_token`]).
    pub token: Option<String>,
    /// How often job files are checked for changes.
    pub reload_every: Duration,
    /// Connections and timeouts of the HTTP server.
    pub http: HttpLimits,
}

/// Refuse an API token that cannot work: empty or blank (every request without a token would
/// match it), with whitespace around it, or with characters an HTTP header cannot carry.
pub fn check_api_token(token: &str) -> Result<()> {
    const WHAT: &str = "--api-token (DATIVO_API_TOKEN)";
    if token.trim().is_empty() {
        return Err(Error::config(format!(
            "{WHAT} is empty: give a token, or leave both unset to refuse triggering and \
             cancelling through the API"
        )));
    }
    if token.trim() != token {
        return Err(Error::config(format!(
            "{WHAT} starts or ends with whitespace (a newline from a file?), which an \
             Authorization header cannot carry: remove it"
        )));
    }
    if !token.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        return Err(Error::config(format!(
            "{WHAT} holds control or non-ASCII characters, which an Authorization header cannot \
             carry: use printable ASCII (e.g. `openssl rand -hex 32`)"
        )));
    }
    Ok(())
}

/// A job as `serve` knows it.
struct JobEntry {
    job: Arc<Job>,
    file: PathBuf,
    stamp: (SystemTime, u64),
    cron: Option<(croner::Cron, chrono_tz::Tz)>,
    next: Option<DateTime<Utc>>,
    pending: bool,
    running: Option<String>,
    /// The last run this instance made or saw.
    last: Option<LastRun>,
    reader: String,
    writer: String,
    /// `maintenance.schedule`, its next time, and whether a maintenance run is in progress.
    maint_cron: Option<(croner::Cron, chrono_tz::Tz)>,
    maint_next: Option<DateTime<Utc>>,
    maintaining: bool,
    /// A job that runs until stopped (change data capture following the log): started when
    /// `serve` starts and again after each run ends, after a backoff when it failed.
    continuous: bool,
    /// When a continuous job starts again (`None`: now).
    restart_at: Option<DateTime<Utc>>,
    /// Failed runs of a continuous job in a row.
    failures: u32,
}

/// Whether `job` follows its source until stopped (`mode: cdc` without `follow: false`).
fn is_continuous(job: &Job) -> bool {
    let c = &job.config.source.config;
    c.get("mode").and_then(serde_json::Value::as_str) == Some("cdc")
        && c.get("follow").and_then(serde_json::Value::as_bool) != Some(false)
}

/// The end of a run, for the API and the page.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    /// The run.
    pub run_id: String,
    /// How it ended.
    pub status: RunStatus,
    /// When it ended.
    pub ended_at: String,
    /// Rows committed.
    pub rows: u64,
    /// Bytes committed.
    pub bytes: u64,
    /// Wall time.
    pub seconds: f64,
    /// The error, redacted.
    pub error: Option<String>,
}

/// A run this instance is making.
struct Active {
    job: String,
    cancel: CancelToken,
    started: Instant,
    started_at: String,
    log: Arc<Mutex<Vec<String>>>,
    /// Rows handed to the writer so far, and rows committed so far (the console shows both).
    progress: Arc<RunProgress>,
}

/// A running run's counts, updated by its observer.
#[derive(Default)]
struct RunProgress {
    rows: std::sync::atomic::AtomicU64,
    committed: std::sync::atomic::AtomicU64,
}

/// Everything the scheduler, the runs and the HTTP handlers share.
pub(crate) struct Server {
    opts: ServeOptions,
    jobs: Mutex<BTreeMap<String, JobEntry>>,
    invalid: Mutex<BTreeMap<PathBuf, String>>,
    active: Mutex<BTreeMap<String, Active>>,
    /// Notified (with `active`) when a run ends.
    run_ended: Condvar,
    /// Wakes the scheduler: a run ended, or shutdown was requested. Holds at most one wake-up;
    /// more are redundant.
    wake: SyncSender<()>,
    /// Logs of finished runs (the newest 500).
    logs: Mutex<VecDeque<(String, String, Vec<String>)>>,
    metrics: Metrics,
    shutting_down: AtomicBool,
    ready: AtomicBool,
}

use dativo_runtime::state_store::now as now_rfc3339;

impl Server {
    fn store(&self) -> Result<StateStore> {
        StateStore::open_with(&self.opts.state_dir, self.opts.state_url.as_deref())
    }

    /// Read the job directory: new and changed files are loaded and validated, removed ones
    /// dropped. Returns whether anything changed.
    fn scan(&self) {
        let mut seen: BTreeMap<PathBuf, (SystemTime, u64)> = BTreeMap::new();
        match std::fs::read_dir(&self.opts.jobs_dir) {
            Ok(rd) => {
                for e in rd.flatten() {
                    let p = e.path();
                    let yaml = p.extension().is_some_and(|x| x == "yaml" || x == "yml");
                    if !yaml {
                        continue;
                    }
                    // Follow symlinks: Kubernetes ConfigMap volumes are made of them.
                    if let Ok(m) = std::fs::metadata(&p) {
                        if m.is_file() {
                            seen.insert(
                                p,
                                (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()),
                            );
                        }
                    }
                }
            }
            Err(e) => {
                tracing::error!(dir = %self.opts.jobs_dir.display(), error = %e, "cannot read the jobs directory");
                return;
            }
        }
        let mut jobs = self.jobs.lock().expect("not poisoned");
        let mut invalid = self.invalid.lock().expect("not poisoned");
        // Files gone: their jobs go (a running one finishes).
        jobs.retain(|name, j| {
            let keep = seen.contains_key(&j.file);
            if !keep {
                tracing::info!(job = %name, file = %j.file.display(), "job file removed");
            }
            keep
        });
        invalid.retain(|p, _| seen.contains_key(p));
        for (path, stamp) in seen {
            let known = jobs.values().find(|j| j.file == path).map(|j| j.stamp);
            if known == Some(stamp) {
                continue;
            }
            if invalid.contains_key(&path) && self.invalid_stamp(&path) == Some(stamp) {
                continue;
            }
            match load_entry(&path, stamp) {
                Ok(entry) => {
                    let name = entry.job.name().to_string();
                    if let Some(other) = jobs.get(&name).filter(|j| j.file != path) {
                        let msg = format!(
                            "{}: job name `{name}` is already used by {}",
                            path.display(),
                            other.file.display()
                        );
                        tracing::error!("{msg}");
                        jobs.retain(|_, j| j.file != path);
                        invalid.insert(path.clone(), msg);
                        self.remember_invalid_stamp(&path, stamp);
                        continue;
                    }
                    invalid.remove(&path);
                    // The same file reloaded (possibly renamed job): keep what is known of it.
                    let old_name = jobs
                        .iter()
                        .find(|(_, j)| j.file == path)
                        .map(|(n, _)| n.clone())
                        .unwrap_or_else(|| name.clone());
                    let mut entry = entry;
                    if let Some(old) = jobs.remove(&old_name) {
                        entry.running = old.running;
                        entry.last = old.last;
                        entry.pending = old.pending;
                        entry.restart_at = old.restart_at;
                        entry.failures = old.failures;
                        entry.maintaining = old.maintaining;
                    }
                    tracing::info!(job = %name, file = %path.display(), next = ?entry.next, "job loaded");
                    jobs.insert(name, entry);
                }
                Err(e) => {
                    let msg = secrets::scrub(&e.to_string());
                    tracing::error!(file = %path.display(), error = %msg, "invalid job file (the other jobs keep running)");
                    jobs.retain(|_, j| j.file != path);
                    invalid.insert(path.clone(), msg);
                    self.remember_invalid_stamp(&path, stamp);
                }
            }
        }
    }

    fn invalid_stamp(&self, path: &Path) -> Option<(SystemTime, u64)> {
        INVALID_STAMPS
            .lock()
            .expect("not poisoned")
            .get(path)
            .copied()
    }

    fn remember_invalid_stamp(&self, path: &Path, stamp: (SystemTime, u64)) {
        INVALID_STAMPS
            .lock()
            .expect("not poisoned")
            .insert(path.to_path_buf(), stamp);
    }

    /// Catch-up runs for `missed: run_once` jobs whose last run is older than their previous
    /// scheduled time.
    fn plan_catch_up(&self) {
        let store = match self.store() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read run history for missed runs");
                return;
            }
        };
        let mut jobs = self.jobs.lock().expect("not poisoned");
        for (name, j) in jobs.iter_mut() {
            let Some((cron, tz)) = &j.cron else { continue };
            if j.job.config.schedule.as_ref().map(|s| s.missed) != Some(MissedRuns::RunOnce) {
                continue;
            }
            let last = store
                .runs(name, 1)
                .ok()
                .and_then(|r| r.into_iter().next())
                .and_then(|r| DateTime::parse_from_rfc3339(&r.started_at).ok())
                .map(|d| d.with_timezone(&Utc));
            let Some(last) = last else { continue };
            let after = last.with_timezone(tz);
            if let Ok(t) = cron.find_next_occurrence(&after, false) {
                if t.with_timezone(&Utc) <= Utc::now() {
                    tracing::info!(job = %name, "a scheduled run was missed: running once now");
                    j.pending = true;
                }
            }
        }
    }

    /// One scheduler step: due jobs start (or become pending, or are skipped).
    fn tick(self: &Arc<Self>) {
        if self.shutting_down.load(Ordering::SeqCst) {
            return;
        }
        let now = Utc::now();
        let mut to_start = Vec::new();
        let mut to_maintain = Vec::new();
        {
            let mut jobs = self.jobs.lock().expect("not poisoned");
            let mut running = jobs.values().filter(|j| j.running.is_some()).count();
            for (name, j) in jobs.iter_mut() {
                // Maintenance runs beside the job's runs (ingestion never waits for it), one
                // at a time per job; a time missed while one is still going is skipped.
                if let Some(next) = j.maint_next.filter(|n| now >= *n) {
                    let _ = next;
                    j.maint_next = next_time(&j.maint_cron);
                    if j.maintaining {
                        tracing::info!(job = %name, "scheduled maintenance skipped: the previous one is still running");
                    } else {
                        j.maintaining = true;
                        to_maintain.push((name.clone(), j.job.clone()));
                    }
                }
                if let (Some(next), Some((cron, tz))) = (j.next, &j.cron) {
                    if now >= next {
                        j.next = cron
                            .find_next_occurrence(&now.with_timezone(tz), false)
                            .ok()
                            .map(|t| t.with_timezone(&Utc));
                        if j.running.is_some() || running >= self.opts.max_concurrent {
                            let missed = j.job.config.schedule.as_ref().map(|s| s.missed);
                            if missed == Some(MissedRuns::RunOnce) {
                                j.pending = true;
                            } else {
                                tracing::info!(job = %name, "scheduled run skipped: the job is still running or the concurrency limit is reached");
                            }
                        } else {
                            j.pending = true;
                        }
                    }
                }
                if j.continuous && j.running.is_none() && j.restart_at.is_none_or(|t| now >= t) {
                    j.pending = true;
                }
                if j.pending && j.running.is_none() && running < self.opts.max_concurrent {
                    j.pending = false;
                    let run_id = uuid::Uuid::now_v7().to_string();
                    j.running = Some(String::new());
                    running += 1;
                    to_start.push((name.clone(), run_id));
                }
            }
        }
        for (name, run_id) in to_start {
            self.start(&name, run_id);
        }
        for (name, job) in to_maintain {
            self.maintain(name, job);
        }
    }

    /// Run the job's scheduled maintenance on its own thread.
    fn maintain(self: &Arc<Self>, name: String, job: Arc<Job>) {
        let server = self.clone();
        let thread_name = name.clone();
        let spawned = std::thread::Builder::new()
            .name("dativo-maintain".into())
            .spawn(move || {
                let req = dativo_runtime::maintain::MaintainRequest::resolve(
                    &job, false, false, false, false,
                );
                let started = Instant::now();
                let result = server
                    .store()
                    .and_then(|store| dativo_runtime::maintain::maintain_all(&job, &req, &store));
                match &result {
                    Ok(all) => {
                        let reports: Vec<_> =
                            all.iter().flat_map(|(_, s)| s.reports.iter().cloned()).collect();
                        let runs: Vec<&str> = all.iter().map(|(_, s)| s.run_id.as_str()).collect();
                        tracing::info!(job = %thread_name, runs = ?runs, "maintenance finished");
                        server.metrics.maintained(&thread_name, &reports, true, started.elapsed());
                    }
                    Err(e) => {
                        tracing::error!(job = %thread_name, error = %secrets::scrub(&e.to_string()), "maintenance failed");
                        server.metrics.maintained(&thread_name, &[], false, started.elapsed());
                    }
                }
                if let Some(j) = server.jobs.lock().expect("not poisoned").get_mut(&thread_name) {
                    j.maintaining = false;
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a maintenance thread");
            if let Some(j) = self.jobs.lock().expect("not poisoned").get_mut(&name) {
                j.maintaining = false;
            }
        }
    }

    /// Start a run of `name` on its own thread.
    fn start(self: &Arc<Self>, name: &str, run_id: String) {
        let (job, reader, writer) = {
            let mut jobs = self.jobs.lock().expect("not poisoned");
            let Some(j) = jobs.get_mut(name) else { return };
            j.running = Some(run_id.clone());
            (j.job.clone(), j.reader.clone(), j.writer.clone())
        };
        let cancel = CancelToken::new();
        let log = Arc::new(Mutex::new(vec![format!(
            "{} run {run_id} of job `{name}` started",
            now_rfc3339()
        )]));
        let progress = Arc::new(RunProgress::default());
        self.active.lock().expect("not poisoned").insert(
            run_id.clone(),
            Active {
                job: name.to_string(),
                cancel: cancel.clone(),
                started: Instant::now(),
                started_at: now_rfc3339(),
                log: log.clone(),
                progress: progress.clone(),
            },
        );
        let me = self.clone();
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("run-{name}"))
            .spawn(move || {
                let labels = metrics::Labels {
                    job: name.clone(),
                    reader,
                    writer,
                };
                let observer = RunObserver {
                    metrics: &me.metrics,
                    labels: &labels,
                    log: &log,
                    progress: &progress,
                };
                let started = Instant::now();
                // A panic (a bug, in a plugin or here) must not leave the job marked running.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    me.store().and_then(|store| {
                        let opts = RunOptions {
                            cancel,
                            observer: &observer,
                            run_id: Some(run_id.clone()),
                            shard: Default::default(),
                        };
                        if dativo_core::streams::is_multi(&job) {
                            dativo_runtime::streams::run_streams(
                                &job,
                                &store,
                                &|| me.store(),
                                &opts,
                            )
                            .map(dativo_runtime::streams::JobSummary::into_run_summary)
                        } else {
                            dativo_runtime::run(&job, &store, &opts)
                        }
                    })
                }))
                .unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "a panic".into());
                    Err(Error::internal(format!("the run crashed: {what}")))
                });
                me.finished(&name, &run_id, &labels, started.elapsed(), result, &log);
            })
            .expect("spawning a run thread");
    }

    fn finished(
        &self,
        name: &str,
        run_id: &str,
        labels: &metrics::Labels,
        elapsed: Duration,
        result: Result<RunSummary>,
        log: &Mutex<Vec<String>>,
    ) {
        let last = match result {
            Ok(s) => {
                let error = s.error.as_ref().map(|e| secrets::scrub(&e.to_string()));
                self.metrics.run_finished(labels, s.status, elapsed);
                log.lock().expect("not poisoned").push(format!(
                    "{} run {} {}: {} rows, {} commits in {:.2} s{}",
                    now_rfc3339(),
                    s.run_id,
                    s.status.as_str(),
                    s.rows,
                    s.commits,
                    elapsed.as_secs_f64(),
                    error
                        .as_ref()
                        .map(|e| format!(" — {e}"))
                        .unwrap_or_default()
                ));
                match s.status {
                    RunStatus::Failed => {
                        tracing::error!(job = %name, run = %s.run_id, error = ?error, "run failed")
                    }
                    st => {
                        tracing::info!(job = %name, run = %s.run_id, status = st.as_str(), rows = s.rows, "run ended")
                    }
                }
                Some(LastRun {
                    run_id: s.run_id,
                    status: s.status,
                    ended_at: now_rfc3339(),
                    rows: s.rows,
                    bytes: s.bytes,
                    seconds: elapsed.as_secs_f64(),
                    error,
                })
            }
            Err(e) if e.is_busy() => {
                // Another instance (or a `dativo run`) holds the job: not a failure of ours.
                tracing::info!(job = %name, "not started here: {}", secrets::scrub(&e.to_string()));
                log.lock().expect("not poisoned").push(format!(
                    "{} not started: {}",
                    now_rfc3339(),
                    secrets::scrub(&e.to_string())
                ));
                None
            }
            Err(e) => {
                let msg = secrets::scrub(&e.to_string());
                tracing::error!(job = %name, error = %msg, "run could not start");
                self.metrics
                    .run_finished(labels, RunStatus::Failed, elapsed);
                log.lock()
                    .expect("not poisoned")
                    .push(format!("{} could not start: {msg}", now_rfc3339()));
                Some(LastRun {
                    run_id: run_id.to_string(),
                    status: RunStatus::Failed,
                    ended_at: now_rfc3339(),
                    rows: 0,
                    bytes: 0,
                    seconds: elapsed.as_secs_f64(),
                    error: Some(msg),
                })
            }
        };
        {
            let mut logs = self.logs.lock().expect("not poisoned");
            logs.push_back((
                run_id.to_string(),
                name.to_string(),
                log.lock().expect("not poisoned").clone(),
            ));
            while logs.len() > 500 {
                logs.pop_front();
            }
        }
        let mut jobs = self.jobs.lock().expect("not poisoned");
        // By run id: the job may have been renamed (its file edited) while it ran.
        let entry = jobs
            .values_mut()
            .find(|j| j.running.as_deref() == Some(run_id));
        if let Some(j) = entry {
            j.running = None;
            if j.continuous {
                // Followed again at once after a clean end (a schema change ends a run);
                // after a failure, after 1 s, 2 s, 4 s … at most a minute.
                let failed = last.as_ref().is_some_and(|l| l.status == RunStatus::Failed);
                j.failures = if failed { j.failures + 1 } else { 0 };
                let wait = if failed {
                    1u64 << j.failures.min(6).saturating_sub(1)
                } else {
                    0
                };
                j.restart_at = Some(Utc::now() + chrono::Duration::seconds(wait.min(60) as i64));
                if failed {
                    tracing::warn!(job = %j.job.name(), restart_in_s = wait.min(60), "a continuous job's run failed: starting it again");
                }
            }
            if last.is_some() {
                j.last = last;
            }
        }
        drop(jobs);
        // Last: whoever waits for the run to end sees its record complete.
        self.active.lock().expect("not poisoned").remove(run_id);
        self.run_ended.notify_all();
        self.wake();
    }

    /// Wake the scheduler: a run ended, or shutdown was requested.
    fn wake(&self) {
        // Full: a wake-up is already pending, which is as good.
        let _ = self.wake.try_send(());
    }

    /// Wait until no run is going on, at most `timeout`; whether none is.
    pub(crate) fn wait_idle(&self, timeout: Duration) -> bool {
        let active = self.active.lock().expect("not poisoned");
        let (active, _) = self
            .run_ended
            .wait_timeout_while(active, timeout, |a| !a.is_empty())
            .expect("not poisoned");
        active.is_empty()
    }

    /// How long the scheduler may sleep: until the next scheduled run (`None`: no job has a
    /// schedule).
    fn until_next_due(&self) -> Option<Duration> {
        let now = Utc::now();
        self.jobs
            .lock()
            .expect("not poisoned")
            .values()
            .flat_map(|j| {
                let restart = match (j.continuous, &j.running) {
                    (true, None) => Some(j.restart_at.unwrap_or(now)),
                    _ => None,
                };
                [j.next, j.maint_next, restart]
            })
            .flatten()
            .min()
            // Rounded up to the millisecond: waking a hair early would only find nothing due.
            .map(|t| (t - now).to_std().unwrap_or(Duration::ZERO) + Duration::from_millis(1))
    }

    /// Trigger a run now (API). Returns (started?, run id or why not).
    pub(crate) fn trigger(
        self: &Arc<Self>,
        name: &str,
    ) -> std::result::Result<TriggerOutcome, TriggerError> {
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(TriggerError::ShuttingDown);
        }
        let run_id = {
            let mut jobs = self.jobs.lock().expect("not poisoned");
            let running = jobs.values().filter(|j| j.running.is_some()).count();
            let j = jobs.get_mut(name).ok_or(TriggerError::UnknownJob)?;
            if let Some(r) = &j.running {
                return Err(TriggerError::Running(r.clone()));
            }
            if running >= self.opts.max_concurrent {
                j.pending = true;
                return Ok(TriggerOutcome::Queued);
            }
            j.running = Some(String::new());
            uuid::Uuid::now_v7().to_string()
        };
        self.start(name, run_id.clone());
        Ok(TriggerOutcome::Started(run_id))
    }
}

static INVALID_STAMPS: Mutex<BTreeMap<PathBuf, (SystemTime, u64)>> = Mutex::new(BTreeMap::new());

/// What a trigger did.
pub(crate) enum TriggerOutcome {
    Started(String),
    Queued,
}

/// Why a trigger did nothing.
pub(crate) enum TriggerError {
    UnknownJob,
    Running(String),
    ShuttingDown,
}

/// A `schedule:` parsed (errors at `key`).
fn parse_schedule(
    job: &Job,
    s: Option<&dativo_core::job::Schedule>,
    key: &str,
) -> Result<Option<(croner::Cron, chrono_tz::Tz)>> {
    let Some(s) = s else { return Ok(None) };
    let cron = croner::Cron::new(&s.cron)
        .with_seconds_optional()
        .parse()
        .map_err(|e| job.error_at(key, &format!("invalid cron expression: {e}")))?;
    let tz: chrono_tz::Tz = s
        .timezone
        .as_deref()
        .unwrap_or("UTC")
        .parse()
        .map_err(|_| job.error_at(&format!("{key}.timezone"), "unknown time zone"))?;
    Ok(Some((cron, tz)))
}

/// The next time of a parsed schedule after now.
fn next_time(cron: &Option<(croner::Cron, chrono_tz::Tz)>) -> Option<DateTime<Utc>> {
    cron.as_ref().and_then(|(c, tz)| {
        c.find_next_occurrence(&Utc::now().with_timezone(tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    })
}

fn load_entry(path: &Path, stamp: (SystemTime, u64)) -> Result<JobEntry> {
    let job = Job::load(path)?;
    dativo_runtime::implementations::validate_without_loading(&job)?;
    let cron = parse_schedule(&job, job.config.schedule.as_ref(), "schedule")?;
    let next = next_time(&cron);
    let maint_cron = parse_schedule(
        &job,
        job.config
            .maintenance
            .as_ref()
            .and_then(|m| m.schedule.as_ref()),
        "maintenance.schedule",
    )?;
    let maint_next = next_time(&maint_cron);
    Ok(JobEntry {
        reader: job.config.source.reader.display_name().to_string(),
        writer: job.config.target.writer.display_name().to_string(),
        file: path.to_path_buf(),
        stamp,
        cron,
        next,
        pending: false,
        running: None,
        last: None,
        maint_cron,
        maint_next,
        maintaining: false,
        continuous: is_continuous(&job),
        restart_at: None,
        failures: 0,
        job: Arc::new(job),
    })
}

struct RunObserver<'a> {
    metrics: &'a Metrics,
    labels: &'a metrics::Labels,
    log: &'a Mutex<Vec<String>>,
    progress: &'a RunProgress,
}

impl Observer for RunObserver<'_> {
    fn on_event(&self, event: &RunEvent<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        match event {
            RunEvent::Batch { rows, .. } => {
                self.progress.rows.fetch_add(*rows, Relaxed);
                self.metrics.batch(self.labels)
            }
            RunEvent::Committed { report, state } => {
                self.progress.committed.fetch_add(report.rows, Relaxed);
                self.metrics
                    .committed(self.labels, report.rows, report.bytes);
                if let Some(cdc) = state.and_then(|s| s.get("cdc")) {
                    let lag = cdc
                        .get("source_commit_us")
                        .and_then(serde_json::Value::as_i64)
                        .map(|us| {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_micros() as i64)
                                .unwrap_or(0);
                            ((now - us) as f64 / 1e6).max(0.0)
                        })
                        .unwrap_or(0.0);
                    self.metrics.cdc_lag(self.labels, lag);
                    let bytes = |k: &str| cdc.get(k).and_then(serde_json::Value::as_i64);
                    self.metrics.cdc_log(
                        self.labels,
                        bytes("retained_bytes"),
                        bytes("behind_bytes"),
                    );
                }
                self.log.lock().expect("not poisoned").push(format!(
                    "{} committed {} rows ({} files, {} bytes); state {}",
                    now_rfc3339(),
                    report.rows,
                    report.files.len(),
                    report.bytes,
                    state
                        .map(|s| secrets::scrub(&s.to_string()))
                        .unwrap_or_else(|| "none".into())
                ));
            }
            RunEvent::AttemptStarted { attempt, state } => {
                // A new attempt reads again from what was committed.
                self.progress
                    .rows
                    .store(self.progress.committed.load(Relaxed), Relaxed);
                self.log.lock().expect("not poisoned").push(format!(
                    "{} attempt {attempt} from {}",
                    now_rfc3339(),
                    state
                        .map(|s| secrets::scrub(&s.to_string()))
                        .unwrap_or_else(|| "the beginning".into())
                ))
            }
            RunEvent::Retrying {
                attempt,
                error,
                delay,
            } => self.log.lock().expect("not poisoned").push(format!(
                "{} attempt {attempt} failed, retrying in {:.1} s: {}",
                now_rfc3339(),
                delay.as_secs_f64(),
                secrets::scrub(&error.to_string())
            )),
            _ => {}
        }
    }
}

/// Run the server until SIGTERM/SIGINT; then shut down gracefully.
pub fn serve(opts: ServeOptions) -> Result<()> {
    if !opts.jobs_dir.is_dir() {
        return Err(Error::config(format!(
            "--jobs {}: not a directory of job files",
            opts.jobs_dir.display()
        )));
    }
    if opts.max_concurrent == 0 {
        return Err(Error::config("--max-concurrent must be at least 1"));
    }
    if let Some(t) = &opts.token {
        check_api_token(t)?;
        secrets::register(t);
    }
    if opts.http.max_connections == 0 {
        return Err(Error::config("--max-connections must be at least 1"));
    }
    if opts.http.header_timeout.is_zero() {
        return Err(Error::config("--http-header-timeout must be more than 0"));
    }
    // Before anything opens files: a low soft limit (1024 is common) is raised to the hard one,
    // and the connection cap keeps a reserve for the scheduler whatever the limit.
    let fd_limit = connections::raise_fd_limit();
    let reserve = connections::fd_reserve(opts.max_concurrent);
    let max_connections = connections::connection_cap(opts.http.max_connections, fd_limit, reserve);
    if max_connections < opts.http.max_connections {
        tracing::warn!(
            max_connections,
            open_file_limit = fd_limit,
            kept_for_runs = reserve,
            "fewer HTTP connections than --max-connections: the open-file limit is low"
        );
    }
    let limits = HttpLimits {
        max_connections,
        ..opts.http
    };
    // Fail fast on an unreachable or unusable state store.
    StateStore::open_with(&opts.state_dir, opts.state_url.as_deref())
        .map_err(|e| e.context("opening the state store"))?;
    let (server, wake) = Server::new(opts.clone());
    server.scan();
    server.plan_catch_up();
    server.ready.store(true, Ordering::SeqCst);

    let stop = CancelToken::new();
    {
        let stop = stop.clone();
        let server = server.clone();
        ctrlc::set_handler(move || {
            stop.cancel();
            server.wake();
        })
        .map_err(|e| Error::internal(format!("installing the signal handler: {e}")))?;
    }
    // The process's one runtime (connectors, plugin hosts and the HTTP API share it).
    let rt = dativo_core::rt::runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(opts.listen))
        .map_err(|e| {
            Error::config(format!("cannot listen on {}: {e}", opts.listen)).with_source(e)
        })?;
    let local = listener.local_addr().map_err(Error::from)?;
    tracing::info!(address = %local, jobs = server.jobs.lock().expect("not poisoned").len(), max_connections = limits.max_connections, header_timeout = ?limits.header_timeout, "dativo serve is listening");
    println!(
        "dativo serve: http://{local}/ ({} jobs from {})",
        server.jobs.lock().expect("not poisoned").len(),
        opts.jobs_dir.display()
    );
    // The API stays up while running jobs drain (metrics, /readyz = 503, cancel).
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = rt.spawn(connections::serve(
        listener,
        http::router(server.clone()),
        limits,
        async move {
            let _ = http_stopped.await;
        },
    ));

    server.schedule(&wake, &stop);
    server.shut_down();
    let _ = http_stop.send(());
    let _ = rt.block_on(http);
    tracing::info!("dativo serve stopped");
    Ok(())
}

impl Server {
    /// A server for `opts` with no jobs loaded yet, and the receiving end of its scheduler's
    /// wake-ups.
    fn new(opts: ServeOptions) -> (Arc<Server>, Receiver<()>) {
        let (wake, woken) = sync_channel(1);
        let server = Arc::new(Server {
            opts,
            jobs: Mutex::new(BTreeMap::new()),
            invalid: Mutex::new(BTreeMap::new()),
            active: Mutex::new(BTreeMap::new()),
            run_ended: Condvar::new(),
            wake,
            logs: Mutex::new(VecDeque::new()),
            metrics: Metrics::default(),
            shutting_down: AtomicBool::new(false),
            ready: AtomicBool::new(false),
        });
        (server, woken)
    }

    /// The scheduler, until `stop`: starts due runs, re-reads the job files every
    /// `reload_every`, and otherwise sleeps until the next of those or a wake-up (a run ended,
    /// shutdown).
    fn schedule(self: &Arc<Self>, woken: &Receiver<()>, stop: &CancelToken) {
        let mut next_scan = Instant::now() + self.opts.reload_every;
        while !stop.is_cancelled() {
            if Instant::now() >= next_scan {
                self.scan();
                next_scan = Instant::now() + self.opts.reload_every;
            }
            self.tick();
            let until_scan = next_scan.saturating_duration_since(Instant::now());
            let sleep = self
                .until_next_due()
                .map_or(until_scan, |d| d.min(until_scan));
            // A wake-up or the time: either way, look again.
            let _ = woken.recv_timeout(sleep);
        }
    }

    /// Graceful shutdown: nothing new starts; running jobs get `grace` to finish, then are
    /// cancelled and get a last minute to stop.
    fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
        let n = self.active.lock().expect("not poisoned").len();
        tracing::info!(running = n, grace = ?self.opts.grace, "shutting down: waiting for running jobs");
        if self.wait_idle(self.opts.grace) {
            return;
        }
        for (id, a) in self.active.lock().expect("not poisoned").iter() {
            a.cancel.cancel();
            tracing::warn!(job = %a.job, run = %id, "grace period over: cancelling (uncommitted data is discarded)");
        }
        // Cancelled runs stop between batches; a reader stuck in a call gets a last minute.
        if !self.wait_idle(Duration::from_secs(60)) {
            tracing::error!("runs did not stop within a minute of cancellation; exiting (their uncommitted data is discarded by the next run)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_api_token_that_cannot_work_is_a_configuration_error() {
        for bad in [
            "",
            " ",
            "\t \n",
            "token\n",
            " token",
            "tok\u{7f}en",
            "tökén",
        ] {
            let e = check_api_token(bad).expect_err(bad);
            assert_eq!(e.kind(), dativo_core::ErrorKind::Config, "{bad:?}");
            let msg = e.to_string();
            assert!(
                msg.contains("--api-token") && msg.contains("DATIVO_API_TOKEN"),
                "{msg}"
            );
        }
        assert!(check_api_token("")
            .unwrap_err()
            .to_string()
            .contains("unset"));
        check_api_token("0123abcd-._~+/=").unwrap();
    }
}

/// The server end to end: the real router and connection loop on 127.0.0.1:0, real runs (the
/// `file` reader into the `parquet` writer) in a temporary directory.
#[cfg(test)]
mod server_tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    use serde_json::Value;

    const TOKEN: &str = "test-token-0123456789";

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        server: Arc<Server>,
        woken: Option<Receiver<()>>,
        addr: SocketAddr,
        http_stop: Option<tokio::sync::oneshot::Sender<()>>,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            if let Some(stop) = self.http_stop.take() {
                let _ = stop.send(());
            }
        }
    }

    /// A jobs directory with job `orders` (20 rows from two CSV files) and `schedule` if
    /// given; the server scanned it and listens.
    fn start(schedule: Option<&str>) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("jobs")).unwrap();
        std::fs::create_dir_all(root.join("in")).unwrap();
        for (f, ids) in [("a.csv", 1..=12), ("b.csv", 13..=20)] {
            let mut text = String::from("id,name\n");
            for i in ids {
                text.push_str(&format!("{i},n{i}\n"));
            }
            std::fs::write(root.join("in").join(f), text).unwrap();
        }
        let schedule = schedule
            .map(|s| format!("schedule:\n  cron: \"{s}\"\n"))
            .unwrap_or_default();
        std::fs::write(
            root.join("jobs/orders.yaml"),
            format!(
                "name: orders\nsource:\n  reader: file\n  config:\n    path: {}/*.csv\n\
                 target:\n  writer: parquet\n  config:\n    path: {}\n{schedule}",
                root.join("in").display(),
                root.join("lake").display()
            ),
        )
        .unwrap();
        let limits = HttpLimits {
            max_connections: 16,
            header_timeout: Duration::from_secs(5),
        };
        let (server, woken) = Server::new(ServeOptions {
            jobs_dir: root.join("jobs"),
            listen: "127.0.0.1:0".parse().unwrap(),
            state_dir: root.join("state"),
            state_url: None,
            max_concurrent: 2,
            grace: Duration::from_secs(10),
            token: Some(TOKEN.into()),
            reload_every: Duration::from_secs(2),
            http: limits,
        });
        server.scan();
        server.ready.store(true, Ordering::SeqCst);
        let rt = dativo_core::rt::runtime();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (http_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(connections::serve(
            listener,
            http::router(server.clone()),
            limits,
            async move {
                let _ = stopped.await;
            },
        ));
        Fixture {
            _dir: dir,
            root,
            server,
            woken: Some(woken),
            addr,
            http_stop: Some(http_stop),
        }
    }

    /// One HTTP/1.1 request: (status, body).
    fn request(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {out:?}"));
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    fn json_of(body: &str) -> Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    #[test]
    fn the_api_lists_triggers_and_refuses_bad_tokens() {
        let f = start(None);
        assert_eq!(
            request(f.addr, "GET", "/healthz", None),
            (200, "ok\n".into())
        );
        assert_eq!(request(f.addr, "GET", "/readyz", None).0, 200);
        let (status, body) = request(f.addr, "GET", "/api/jobs", None);
        assert_eq!(status, 200, "{body}");
        let v = json_of(&body);
        assert_eq!(v["jobs"][0]["name"], "orders", "{v}");
        assert_eq!(v["jobs"][0]["reader"], "file");
        assert_eq!(v["invalid"], serde_json::json!([]));
        assert!(v["jobs"][0]["last_run"].is_null());

        // Triggering needs the token.
        let trigger = "/api/jobs/orders/runs";
        assert_eq!(request(f.addr, "POST", trigger, None).0, 401);
        assert_eq!(request(f.addr, "POST", trigger, Some("wrong")).0, 401);
        assert_eq!(
            request(f.addr, "POST", "/api/jobs/nope/runs", Some(TOKEN)).0,
            404
        );
        assert!(
            f.server.active.lock().unwrap().is_empty(),
            "nothing started"
        );

        let (status, body) = request(f.addr, "POST", trigger, Some(TOKEN));
        assert_eq!(status, 202, "{body}");
        let v = json_of(&body);
        assert_eq!(v["status"], "started");
        let run_id = v["run_id"].as_str().unwrap().to_string();
        assert!(
            f.server.wait_idle(Duration::from_secs(120)),
            "the run ended"
        );

        let v = json_of(&request(f.addr, "GET", "/api/jobs", None).1);
        let last = &v["jobs"][0]["last_run"];
        assert_eq!(last["run_id"], run_id.as_str(), "{v}");
        assert_eq!(last["status"], "succeeded", "{v}");
        assert_eq!(last["rows"], 20);
        let (status, body) = request(f.addr, "GET", &format!("/api/runs/{run_id}"), None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(json_of(&body)["status"], "succeeded");
        let (status, log) = request(f.addr, "GET", &format!("/api/runs/{run_id}/log"), None);
        assert_eq!(status, 200);
        assert!(log.contains("committed 20 rows"), "{log}");
        let (status, body) = request(f.addr, "GET", "/api/jobs/orders", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(json_of(&body)["runs"][0]["rows"], 20);
        assert!(request(f.addr, "GET", "/metrics", None)
            .1
            .contains("dativo_"));
        assert!(f.root.join("lake").is_dir());
    }

    #[test]
    fn a_run_held_elsewhere_is_not_a_failure() {
        let f = start(None);
        let elsewhere = StateStore::open(&f.root.join("state")).unwrap();
        let held = elsewhere.lock("orders").unwrap();
        let (status, body) = request(f.addr, "POST", "/api/jobs/orders/runs", Some(TOKEN));
        assert_eq!(status, 202, "{body}");
        let run_id = json_of(&body)["run_id"].as_str().unwrap().to_string();
        assert!(f.server.wait_idle(Duration::from_secs(60)));
        let v = json_of(&request(f.addr, "GET", "/api/jobs", None).1);
        assert!(v["jobs"][0]["last_run"].is_null(), "{v}");
        assert!(v["jobs"][0]["running"].is_null(), "{v}");
        let log = request(f.addr, "GET", &format!("/api/runs/{run_id}/log"), None).1;
        assert!(
            log.contains("not started: job `orders` is already running"),
            "{log}"
        );
        drop(held);
    }

    #[test]
    fn the_scheduler_runs_due_jobs_and_stops_when_asked() {
        let mut f = start(Some("* * * * * *"));
        let woken = f.woken.take().unwrap();
        let stop = CancelToken::new();
        let scheduler = {
            let (server, stop) = (f.server.clone(), stop.clone());
            std::thread::spawn(move || server.schedule(&woken, &stop))
        };
        // Due every second: the first run starts within about one.
        let deadline = Instant::now() + Duration::from_secs(60);
        let ran = loop {
            let last = f.server.jobs.lock().unwrap()["orders"].last.clone();
            if let Some(last) = last {
                break last;
            }
            assert!(
                Instant::now() < deadline,
                "no scheduled run within a minute"
            );
            f.server.wait_idle(Duration::from_millis(100));
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(ran.status, RunStatus::Succeeded, "{:?}", ran.error);
        // Stop: the scheduler wakes at once, not at its next due time.
        let asked = Instant::now();
        stop.cancel();
        f.server.wake();
        scheduler.join().unwrap();
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        f.server.shut_down();
        assert!(f.server.active.lock().unwrap().is_empty());
        assert_eq!(request(f.addr, "GET", "/readyz", None).0, 503);
    }
}
