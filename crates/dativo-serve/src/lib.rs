//! `dativo serve`: runs every job of a directory on its schedule, with an HTTP API
//! (`docs/openapi.yaml`), Prometheus metrics, health checks and a status page.
//!
//! * Scheduling: each job's `schedule` (cron, 5 or 6 fields, with a time zone) is evaluated
//!   every 200 ms. A job never runs twice at once — here, and across instances sharing a
//!   PostgreSQL state store (its advisory lock) — and at most `max_concurrent` runs go on at a
//!   time. A due run that cannot start is dropped (`missed: skip`, the default) or kept as one
//!   pending run (`missed: run_once`), which also catches up on a time missed while no instance
//!   was running.
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
use std::sync::{Arc, Mutex};
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
}

/// Everything the scheduler, the runs and the HTTP handlers share.
pub(crate) struct Server {
    opts: ServeOptions,
    jobs: Mutex<BTreeMap<String, JobEntry>>,
    invalid: Mutex<BTreeMap<PathBuf, String>>,
    active: Mutex<BTreeMap<String, Active>>,
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
        {
            let mut jobs = self.jobs.lock().expect("not poisoned");
            let mut running = jobs.values().filter(|j| j.running.is_some()).count();
            for (name, j) in jobs.iter_mut() {
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
        self.active.lock().expect("not poisoned").insert(
            run_id.clone(),
            Active {
                job: name.to_string(),
                cancel: cancel.clone(),
                started: Instant::now(),
                started_at: now_rfc3339(),
                log: log.clone(),
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
                };
                let started = Instant::now();
                // A panic (a bug, in a plugin or here) must not leave the job marked running.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    me.store().and_then(|store| {
                        dativo_runtime::run(
                            &job,
                            &store,
                            &RunOptions {
                                cancel,
                                observer: &observer,
                                run_id: Some(run_id.clone()),
                                shard: Default::default(),
                            },
                        )
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
            Err(e) if dativo_runtime::state_store::is_busy(&e) => {
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
        self.active.lock().expect("not poisoned").remove(run_id);
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
            if last.is_some() {
                j.last = last;
            }
        }
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

fn load_entry(path: &Path, stamp: (SystemTime, u64)) -> Result<JobEntry> {
    let job = Job::load(path)?;
    dativo_runtime::implementations::validate_without_loading(&job)?;
    let cron = match &job.config.schedule {
        Some(s) => {
            let cron = croner::Cron::new(&s.cron)
                .with_seconds_optional()
                .parse()
                .map_err(|e| job.error_at("schedule", &format!("invalid cron expression: {e}")))?;
            let tz: chrono_tz::Tz = s
                .timezone
                .as_deref()
                .unwrap_or("UTC")
                .parse()
                .map_err(|_| job.error_at("schedule.timezone", "unknown time zone"))?;
            Some((cron, tz))
        }
        None => None,
    };
    let next = cron.as_ref().and_then(|(c, tz)| {
        c.find_next_occurrence(&Utc::now().with_timezone(tz), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    });
    Ok(JobEntry {
        reader: job.config.source.reader.display_name().to_string(),
        writer: job.config.target.writer.display_name().to_string(),
        job: Arc::new(job),
        file: path.to_path_buf(),
        stamp,
        cron,
        next,
        pending: false,
        running: None,
        last: None,
    })
}

struct RunObserver<'a> {
    metrics: &'a Metrics,
    labels: &'a metrics::Labels,
    log: &'a Mutex<Vec<String>>,
}

impl Observer for RunObserver<'_> {
    fn on_event(&self, event: &RunEvent<'_>) {
        match event {
            RunEvent::Batch { .. } => self.metrics.batch(self.labels),
            RunEvent::Committed { report, state } => {
                self.metrics
                    .committed(self.labels, report.rows, report.bytes);
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
    let server = Arc::new(Server {
        opts: opts.clone(),
        jobs: Mutex::new(BTreeMap::new()),
        invalid: Mutex::new(BTreeMap::new()),
        active: Mutex::new(BTreeMap::new()),
        logs: Mutex::new(VecDeque::new()),
        metrics: Metrics::default(),
        shutting_down: AtomicBool::new(false),
        ready: AtomicBool::new(false),
    });
    server.scan();
    server.plan_catch_up();
    server.ready.store(true, Ordering::SeqCst);

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .map_err(|e| Error::internal(format!("installing the signal handler: {e}")))?;
    }
    // The process's one runtime (connectors, plugin hosts and the HTTP API share it).
    let rt = dativo_core::rt::runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(opts.listen))
        .map_err(|e| Error::config(format!("cannot listen on {}: {e}", opts.listen)))?;
    let local = listener.local_addr().map_err(Error::from)?;
    tracing::info!(address = %local, jobs = server.jobs.lock().expect("not poisoned").len(), max_connections = limits.max_connections, header_timeout = ?limits.header_timeout, "dativo serve is listening");
    println!(
        "dativo serve: http://{local}/ ({} jobs from {})",
        server.jobs.lock().expect("not poisoned").len(),
        opts.jobs_dir.display()
    );
    let app = http::router(server.clone());
    // The API stays up while running jobs drain (metrics, /readyz = 503, cancel).
    let http_stop = Arc::new(AtomicBool::new(false));
    let http_stop_flag = http_stop.clone();
    let http = rt.spawn(async move {
        let shutdown = async move {
            while !http_stop_flag.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        connections::serve(listener, app, limits, shutdown).await;
    });

    let mut last_scan = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        if last_scan.elapsed() >= opts.reload_every {
            server.scan();
            last_scan = Instant::now();
        }
        server.tick();
        std::thread::sleep(Duration::from_millis(200));
    }

    // Graceful shutdown.
    server.shutting_down.store(true, Ordering::SeqCst);
    server.ready.store(false, Ordering::SeqCst);
    let n = server.active.lock().expect("not poisoned").len();
    tracing::info!(running = n, grace = ?opts.grace, "shutting down: waiting for running jobs");
    let deadline = Instant::now() + opts.grace;
    while !server.active.lock().expect("not poisoned").is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<(String, String)> = server
        .active
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(id, a)| {
            a.cancel.cancel();
            (id.clone(), a.job.clone())
        })
        .collect();
    for (id, job) in &left {
        tracing::warn!(job = %job, run = %id, "grace period over: cancelling (uncommitted data is discarded)");
    }
    // Cancelled runs stop between batches; a reader stuck in a call gets a last minute.
    let hard = Instant::now() + Duration::from_secs(60);
    while !server.active.lock().expect("not poisoned").is_empty() {
        if Instant::now() > hard {
            tracing::error!("runs did not stop within a minute of cancellation; exiting (their uncommitted data is discarded by the next run)");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    http_stop.store(true, Ordering::SeqCst);
    let _ = rt.block_on(http);
    tracing::info!("dativo serve stopped");
    Ok(())
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
