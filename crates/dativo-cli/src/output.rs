//! What the CLI prints: logs, the progress bar, the run summary, tables.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::datatypes::Schema;
use indicatif::{ProgressBar, ProgressStyle};

use dativo_core::job::{Implementation, Job};
use dativo_core::secrets;
use dativo_runtime::{Observer, RunEvent, RunRecord, RunStatus, RunSummary};

/// Where log lines go: stderr, each line scrubbed of every registered secret first.
///
/// Redaction sits at the sink, not at the call sites: a library's debug line (an S3 client
/// printing its credential provider at `-v`) passes through here like dativo's own lines.
/// tracing-subscriber formats an event whole and then writes it; this writer collects the
/// event and writes it scrubbed when dropped.
struct RedactingStderr;

/// One event's bytes on their way to stderr.
pub struct RedactedLine(Vec<u8>);

impl std::io::Write for RedactedLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactedLine {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.0);
        write_log_line(&secrets::scrub(&text));
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for RedactingStderr {
    type Writer = RedactedLine;
    fn make_writer(&'a self) -> Self::Writer {
        RedactedLine(Vec::with_capacity(256))
    }
}

/// Logs go to stderr: text, or JSON lines — every line redacted (see [`RedactingStderr`]).
pub fn init_logging(json: bool, verbose: u8) {
    secrets::register_environment();
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(RedactingStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.compact().init();
    }
}

/// The bar on the terminal while a run shows one: log lines are written above it.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Write a finished log line to stderr — above the progress bar when one is drawn, so that
/// a line never lands on the bar's line and the bar is redrawn below it.
fn write_log_line(text: &str) {
    let bar = ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let write = || {
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), text.as_bytes());
    };
    match bar {
        Some(b) if !b.is_finished() => b.suspend(write),
        _ => write(),
    }
}

struct Counters {
    rows: u64,
    bytes: u64,
    committed_rows: u64,
    last_log: Instant,
    /// Each stream's (or shard's) estimated rows, as its reader gave them.
    estimates: std::collections::BTreeMap<String, u64>,
    /// Rows read so far by each stream that gave an estimate.
    estimated_read: std::collections::BTreeMap<String, u64>,
}

impl Counters {
    /// (rows read by the streams that gave an estimate — each counted up to its estimate —,
    /// the sum of their estimates): what the percentage and the ETA are made of. Streams
    /// without an estimate count in the rows read, not here.
    fn progress(&self) -> (u64, u64) {
        let total: u64 = self.estimates.values().sum();
        let read: u64 = self
            .estimates
            .iter()
            .map(|(s, e)| self.estimated_read.get(s).copied().unwrap_or(0).min(*e))
            .sum();
        (read, total)
    }
}

/// Progress: a bar on a terminal, periodic log lines otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    counters: Mutex<Counters>,
}

impl Drop for Progress {
    /// An early error return skips [`Progress::finish`]: the bar must not keep drawing below
    /// the error message.
    fn drop(&mut self) {
        self.finish();
    }
}

const SPINNER: &str = "{spinner} {elapsed_precise} {msg}";
const WITH_TOTAL: &str = "{spinner} {elapsed_precise} [{bar:24}] {msg}";

impl Progress {
    /// A bar if `bar`, else log lines.
    pub fn new(bar: bool) -> Self {
        let bar = bar.then(|| {
            let b = ProgressBar::new_spinner();
            b.set_style(ProgressStyle::with_template(SPINNER).expect("valid template"));
            b.enable_steady_tick(Duration::from_millis(120));
            *ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.clone());
            b
        });
        Progress {
            bar,
            started: Instant::now(),
            counters: Mutex::new(Counters {
                rows: 0,
                bytes: 0,
                committed_rows: 0,
                last_log: Instant::now(),
                estimates: Default::default(),
                estimated_read: Default::default(),
            }),
        }
    }

    /// Remove the bar.
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            *ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()) = None;
            b.finish_and_clear();
        }
    }

    fn line(&self, c: &Counters) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = c.rows as f64 / secs;
        let (done, total) = c.progress();
        let read = if total > 0 {
            // An estimate (catalog statistics): `~`, and no ETA until the rate means something.
            let pct = (done as f64 / total as f64 * 100.0).min(100.0) as u64;
            let est_rate = done as f64 / secs;
            let eta = if secs >= 2.0 && est_rate > 0.0 && done < total {
                format!(", ETA {}", eta((total - done) as f64 / est_rate))
            } else {
                String::new()
            };
            format!(
                "{} rows read, ~{} estimated ({pct}%{eta})",
                group(c.rows),
                group(total)
            )
        } else {
            format!("{} rows read", group(c.rows))
        };
        format!(
            "{read}, {}/s, {:.1} MB/s, {} committed",
            group(rate as u64),
            c.bytes as f64 / 1e6 / secs,
            group(c.committed_rows)
        )
    }

    fn draw(&self, c: &Counters) {
        let Some(b) = &self.bar else { return };
        let (done, total) = c.progress();
        if total > 0 {
            b.set_position(done);
        }
        b.set_message(self.line(c));
    }
}

/// Seconds left in words: `45s`, `3m 05s`, `1h 02m`.
fn eta(secs: f64) -> String {
    let s = secs.round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    }
}

impl Observer for Progress {
    fn on_event(&self, event: &RunEvent<'_>) {
        let mut c = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            RunEvent::Batch {
                stream,
                rows,
                bytes,
            } => {
                c.rows += rows;
                c.bytes += bytes;
                // Present for the streams that gave an estimate (inserted with it).
                if let Some(read) = c.estimated_read.get_mut(*stream) {
                    *read += rows;
                }
                if self.bar.is_some() {
                    self.draw(&c);
                } else if c.last_log.elapsed() >= Duration::from_secs(10) {
                    c.last_log = Instant::now();
                    tracing::info!("{}", self.line(&c));
                }
            }
            RunEvent::Estimate { stream, rows } => {
                // A new attempt of the stream estimates what it reads from its new start.
                c.estimates.insert(stream.to_string(), *rows);
                c.estimated_read.insert(stream.to_string(), 0);
                if let Some(b) = &self.bar {
                    let (_, total) = c.progress();
                    if total > 0 {
                        b.set_style(
                            ProgressStyle::with_template(WITH_TOTAL)
                                .expect("valid template")
                                .progress_chars("=> "),
                        );
                        b.set_length(total);
                    }
                    self.draw(&c);
                }
            }
            RunEvent::Committed { report, .. } => {
                c.committed_rows += report.rows;
                self.draw(&c);
            }
            RunEvent::AttemptStarted { attempt, state } => {
                let from = match state {
                    Some(_) => "from the committed state",
                    None => "from the beginning",
                };
                tracing::info!(attempt, "reading {from}");
            }
            RunEvent::Recovered { .. } => {}
            RunEvent::Schema(s) => {
                tracing::debug!(columns = s.fields().len(), "source schema known");
            }
            // The runner logs the failure (above the bar).
            RunEvent::Retrying { .. } => {}
        }
    }
}

/// `1234567` → `1,234,567`.
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn mb(bytes: u64) -> String {
    dativo_core::config::ByteSize(bytes).to_string()
}

fn abbreviate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let head: String = s.chars().take(max).collect();
        format!("{head}…")
    }
}

/// An error as the CLI shows it, redacted: its display, or with `-v` its whole cause chain
/// ([`dativo_core::Error::chain`]), one cause per line.
pub fn error_text(e: &dativo_core::Error, verbose: bool) -> String {
    if verbose {
        secrets::scrub(&e.chain())
    } else {
        secrets::scrub(&e.to_string())
    }
}

/// The end-of-run summary on stdout; with `verbose`, an error's whole cause chain.
pub fn print_summary(job: &Job, s: &RunSummary, json: bool, verbose: bool) {
    let output = output_location(job);
    if json {
        let v = serde_json::json!({
            "job": job.name(),
            "run_id": s.run_id,
            "status": s.status.as_str(),
            "attempts": s.attempts,
            "rows": s.rows,
            "bytes": s.bytes,
            "commits": s.commits,
            "files": s.files,
            "elapsed_seconds": s.elapsed.as_secs_f64(),
            "output": output,
            "state": s.state,
            "error": s.error.as_ref().map(|e| secrets::scrub(&e.to_string())),
            "error_kind": s.error.as_ref().map(|e| e.kind().as_str()),
        });
        println!("{v}");
        return;
    }
    let secs = s.elapsed.as_secs_f64();
    let mark = match s.status {
        RunStatus::Succeeded => "✔",
        _ => "✘",
    };
    println!(
        "{mark} job `{}` {} in {:.2}s (run {}{})",
        job.name(),
        s.status.as_str(),
        secs,
        s.run_id,
        if s.attempts > 1 {
            format!(", {} attempts", s.attempts)
        } else {
            String::new()
        }
    );
    if let Some(e) = &s.error {
        println!(
            "  error    {}",
            error_text(e, verbose).replace('\n', "\n           ")
        );
        if s.commits > 0 {
            println!("  note     the {} commits made before the error stand; the next run resumes after them", s.commits);
        }
    }
    if s.commits == 0 && s.error.is_some() {
        println!("  rows     no commit recorded by this run");
    } else if s.commits == 0 && s.status == RunStatus::Cancelled {
        println!("  rows     no commit recorded by this run (cancelled)");
    } else if s.rows == 0 && s.commits == 0 {
        println!("  rows     no new data since the last committed state");
    } else {
        println!(
            "  rows     {} committed in {} commit{} ({} file{}, {})",
            group(s.rows),
            s.commits,
            if s.commits == 1 { "" } else { "s" },
            s.files.len(),
            if s.files.len() == 1 { "" } else { "s" },
            mb(s.bytes)
        );
        // A rate over less than a second (a handful of rows) says nothing.
        if secs >= 1.0 && s.rows > 0 {
            println!(
                "  speed    {} rows/s, {:.1} MB/s (Arrow in memory)",
                group((s.rows as f64 / secs) as u64),
                s.arrow_bytes as f64 / 1e6 / secs
            );
        }
    }
    if let Some(out) = output {
        println!("  output   {out}");
    }
    // How to look at the data: only when this run committed some (a run that failed before
    // its first commit has nothing new to show, and the hint read as if it had).
    if s.commits > 0 {
        if let Some(q) = query_hint(job) {
            println!("  query    {q}");
        }
    }
    if let Some(st) = &s.state {
        println!(
            "  state    {}",
            abbreviate(&secrets::scrub(&st.to_string()), 160)
        );
    }
}

fn writer_name(job: &Job) -> &str {
    match &job.config.target.writer {
        Implementation::Builtin(n) => n,
        Implementation::Custom(_) => "",
    }
}

fn target_str<'a>(job: &'a Job, key: &str) -> Option<&'a str> {
    job.config.target.config.get(key).and_then(|p| p.as_str())
}

/// Where the data landed, for people.
fn output_location(job: &Job) -> Option<String> {
    match writer_name(job) {
        "iceberg" => {
            let table = target_str(job, "table")?;
            let catalog = job.config.target.config.get("catalog");
            let uri = catalog
                .and_then(|c| c.get("uri"))
                .and_then(|u| u.as_str())
                .unwrap_or("sqlite://.dativo/catalog.db");
            let name = catalog
                .and_then(|c| c.get("name"))
                .and_then(|u| u.as_str())
                .unwrap_or("dativo");
            let kind = catalog
                .and_then(|c| c.get("type"))
                .and_then(|u| u.as_str())
                .unwrap_or("sql");
            let kind = if kind == "rest" { "REST" } else { "SQL" };
            Some(format!(
                "Iceberg table {table} in {kind} catalog `{name}` at {}",
                secrets::scrub(uri)
            ))
        }
        _ => target_str(job, "path").map(secrets::scrub),
    }
}

/// How to look at the data with a tool dativo did not write.
fn query_hint(job: &Job) -> Option<String> {
    if job.config.target.config.get("encryption").is_some() {
        return Some(format!(
            "dativo decrypt {} -o out.parquet   (dativo verify checks the audit trail)",
            job.path.display()
        ));
    }
    match writer_name(job) {
        "parquet" => {
            let path = target_str(job, "path")?.trim_end_matches('/');
            if path.contains("://") {
                Some(format!(
                    "pyarrow.dataset.dataset(\"{path}\") (files under _dativo/ are bookkeeping)"
                ))
            } else {
                Some(format!(
                    "duckdb -c \"SELECT count(*) FROM read_parquet('{path}/*.parquet')\""
                ))
            }
        }
        "iceberg" => {
            let table = target_str(job, "table")?;
            let uri = job
                .config
                .target
                .config
                .get("catalog")
                .and_then(|c| c.get("uri"))
                .and_then(|u| u.as_str());
            let db = match uri {
                Some(u) if u.starts_with("sqlite:") => {
                    u.trim_start_matches("sqlite://").to_string()
                }
                Some(u) if u.starts_with("http") => {
                    return Some(format!(
                        "pyiceberg: RestCatalog(\"dativo\", uri=\"{}\").load_table(\"{table}\")",
                        secrets::scrub(u)
                    ))
                }
                Some(_) => {
                    return Some(format!(
                        "pyiceberg: SqlCatalog(\"dativo\", uri=…).load_table(\"{table}\")"
                    ))
                }
                None => ".dativo/catalog.db".to_string(),
            };
            Some(format!(
                "python -c \"from pyiceberg.catalog.sql import SqlCatalog; print(SqlCatalog('dativo', uri='sqlite:///'+__import__('os').path.abspath('{db}')).load_table('{table}').scan().to_arrow().num_rows)\""
            ))
        }
        _ => None,
    }
}

/// `dativo run --dry-run`: what the run would read, from where, and what the writer would do.
pub fn print_dry_run(job: &Job, d: &dativo_runtime::runner::DryRun) {
    println!(
        "dry run of job `{}`: the source was opened and planned; nothing written, committed or locked",
        job.name()
    );
    let reader = match &job.config.source.reader {
        Implementation::Builtin(n) => n.clone(),
        Implementation::Custom(c) => secrets::scrub(&c.implementation),
    };
    let rows = match d.info.estimated_rows {
        Some(n) => format!("about {} rows (the source's estimate)", group(n)),
        None => "rows not estimated by this source".into(),
    };
    println!("  source   {reader}: {rows}");
    let from = match (&d.state, d.reset) {
        (_, true) => "the beginning (the state was reset with `dativo state reset`)".to_string(),
        (None, _) => "the beginning (no committed state)".to_string(),
        (Some(s), _) => format!(
            "the committed state {}",
            abbreviate(&secrets::scrub(&s.to_string()), 120)
        ),
    };
    println!("  from     {from}");
    let delivers = match d.info.delivery {
        dativo_core::Delivery::Full => "the whole source (a full refresh)",
        dativo_core::Delivery::Incremental => "rows new or changed since the state",
        dativo_core::Delivery::Unknown => "what the reader returns (it does not say)",
    };
    println!("  reads    {delivers}");
    if !d.info.primary_key.is_empty() {
        println!("  key      {}", d.info.primary_key.join(", "));
    }
    println!("  schema   {} columns:", d.schema.fields().len());
    print_schema(&d.schema);
    print_target(
        job,
        d.writes
            .as_deref()
            .unwrap_or("as the plugin writer does (it does not say)"),
    );
    println!("  note     the writer was not opened: if its own record of what it committed differs from the state store (a run stopped between the two), the run resumes from the writer's");
}

/// Where a run would write, and how.
pub fn print_target(job: &Job, writes: &str) {
    let writer = match &job.config.target.writer {
        Implementation::Builtin(n) => n.clone(),
        Implementation::Custom(c) => secrets::scrub(&c.implementation),
    };
    match output_location(job) {
        Some(out) => println!("  target   {writer}: {out}"),
        None => println!("  target   {writer}"),
    }
    println!("  writes   {writes}");
}

/// What `dativo target drop` did.
pub fn print_drops(job: &Job, drops: &[dativo_runtime::maintain::TargetDrop], dry_run: bool) {
    for d in drops {
        let what = match &d.stream {
            Some(s) => format!("stream {s}: "),
            None => String::new(),
        };
        if !d.existed {
            println!("  {what}{}: does not exist, nothing to drop", d.target);
            continue;
        }
        let verb = if dry_run { "would delete" } else { "dropped:" };
        let mut line = format!(
            "  {what}{} — {verb} {} files ({})",
            d.target,
            group(d.files),
            mb(d.bytes)
        );
        if d.left > 0 {
            line.push_str(&format!(
                "; {} other files left there (not written by this job, or not deletable: see the log)",
                group(d.left)
            ));
        }
        println!("{line}");
    }
    let whose = match drops {
        [d] if d.stream.is_some() => format!(
            "stream `{}` of job `{}`",
            d.stream.as_deref().unwrap_or_default(),
            job.name()
        ),
        _ => format!("job `{}`", job.name()),
    };
    if dry_run {
        println!("dry run: nothing deleted; the state of {whose} is unchanged");
    } else {
        println!(
            "reset the state of {whose}: the next run starts from the beginning and creates the target from the source's schema"
        );
    }
}

/// A schema, one column per line.
pub fn print_schema(schema: &Schema) {
    let w = schema
        .fields()
        .iter()
        .map(|f| f.name().len())
        .max()
        .unwrap_or(4);
    for f in schema.fields() {
        println!(
            "  {:<w$}  {}{}",
            f.name(),
            f.data_type(),
            if f.is_nullable() { "" } else { " NOT NULL" }
        );
    }
}

/// What `dativo maintain` did, one line per operation.
pub fn print_maintenance(
    job: &dativo_core::job::Job,
    s: &dativo_runtime::maintain::MaintainSummary,
) {
    let dry = s.reports.first().is_some_and(|r| r.dry_run);
    println!(
        "maintained the table of job `{}`{} (run {})",
        job.name(),
        if dry {
            " — dry run, nothing changed"
        } else {
            ""
        },
        s.run_id
    );
    for r in &s.reports {
        println!("  {:<18} {}", r.operation, maintenance_line(r));
    }
}

/// A maintenance run's reports (as stored) in words.
fn details_line(d: &serde_json::Value) -> String {
    let reports: Vec<dativo_runtime::maintain::MaintenanceReport> =
        serde_json::from_value(d.clone()).unwrap_or_default();
    reports
        .iter()
        .map(|r| format!("{}: {}", r.operation, maintenance_line(r)))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One maintenance report in words.
fn maintenance_line(r: &dativo_runtime::maintain::MaintenanceReport) -> String {
    let mut parts = Vec::new();
    if r.data_files_before != r.data_files_after || r.delete_files_before != r.delete_files_after {
        parts.push(format!(
            "data files {} → {}, delete files {} → {}",
            group(r.data_files_before),
            group(r.data_files_after),
            group(r.delete_files_before),
            group(r.delete_files_after)
        ));
    }
    if r.rows_rewritten > 0 {
        parts.push(format!(
            "{} rows ({}) rewritten",
            group(r.rows_rewritten),
            mb(r.bytes_rewritten)
        ));
    }
    if r.manifests_before != r.manifests_after {
        parts.push(format!(
            "manifests {} → {}",
            group(r.manifests_before),
            group(r.manifests_after)
        ));
    }
    if r.snapshots_expired > 0 {
        parts.push(format!("{} snapshots expired", group(r.snapshots_expired)));
    }
    if r.files_deleted > 0 {
        parts.push(format!(
            "{} files ({}) deleted",
            group(r.files_deleted),
            mb(r.bytes_deleted)
        ));
    }
    if r.conflicts > 0 {
        parts.push(format!("{} conflicts re-planned or skipped", r.conflicts));
    }
    if parts.is_empty() {
        "nothing to do".into()
    } else {
        parts.join("; ")
    }
}

/// The run history table.
pub fn print_runs(job: &str, runs: &[RunRecord]) {
    if runs.is_empty() {
        println!("job `{job}` has no runs yet");
        return;
    }
    // A job with `tables:` has the job's runs and each stream's (`job/STREAM`).
    let what = |r: &RunRecord| match r.job.strip_prefix(job) {
        Some(rest) if rest.starts_with('/') => rest[1..].to_string(),
        Some("#maintain") => "(maintenance)".to_string(),
        _ => "(job)".to_string(),
    };
    let streams = runs.iter().any(|r| r.job.starts_with(&format!("{job}/")));
    let w = if streams {
        runs.iter().map(|r| what(r).len()).max().unwrap_or(5).max(6) + 2
    } else {
        0
    };
    println!(
        "{:<36}  {:<w$}{:<19}  {:<19}  {:<11}  {:>12}  {:>10}  error",
        "run",
        if streams { "stream" } else { "" },
        format!("started ({})", chrono::Local::now().format("%:z")),
        "ended",
        "status",
        "rows",
        "bytes"
    );
    for r in runs {
        let details = match (&r.error, &r.details) {
            (Some(e), _) => one_line(e, 120),
            (None, Some(d)) if d.get("streams").is_some() => streams_line(d),
            (None, Some(d)) => abbreviate(&format!("maintain: {}", details_line(d)), 120),
            (None, None) => String::new(),
        };
        println!(
            "{:<36}  {:<w$}{:<19}  {:<19}  {:<11}  {:>12}  {:>10}  {}",
            r.run_id,
            if streams { what(r) } else { String::new() },
            local_time(&r.started_at),
            r.ended_at
                .as_deref()
                .map(local_time)
                .unwrap_or_else(|| "-".into()),
            r.status.as_str(),
            group(r.rows),
            mb(r.bytes),
            details
        );
    }
}

/// A stored error on one table line: its first line (a Python plugin's error leads with the
/// exception and follows with the traceback), shortened; `dativo runs --json` has it whole.
fn one_line(e: &str, max: usize) -> String {
    let mut lines = e.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    if lines.next().is_some() {
        format!("{} (more: --json)", abbreviate(first, max))
    } else {
        abbreviate(first, max)
    }
}

/// A stored RFC 3339 time as local wall-clock time to the second (`2026-12-06 20:14:03`),
/// as the machine's time zone has it (`TZ`); the stored text when it does not parse.
fn local_time(t: &str) -> String {
    match chrono::DateTime::parse_from_rfc3339(t) {
        Ok(t) => t
            .with_timezone(&chrono::Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => t.to_string(),
    }
}

/// A multi-table job run's details in words: streams by status.
fn streams_line(d: &serde_json::Value) -> String {
    let list = d["streams"].as_array().cloned().unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &list {
        *by.entry(s["status"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let parts: Vec<String> = by.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!("{} streams: {}", list.len(), parts.join(", "))
}

/// `n` in a short human form (`1.2M`, `34k`), `?` when unknown.
fn approx(n: Option<u64>) -> String {
    match n {
        None => "?".into(),
        Some(n) if n >= 10_000_000_000 => format!("{}G", n / 1_000_000_000),
        Some(n) if n >= 1_000_000_000 => format!("{:.1}G", n as f64 / 1e9),
        Some(n) if n >= 10_000_000 => format!("{}M", n / 1_000_000),
        Some(n) if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        Some(n) if n >= 10_000 => format!("{}k", n / 1_000),
        Some(n) => n.to_string(),
    }
}

/// `dativo discover`: the streams of a job with `tables:`.
pub fn print_streams(
    job: &Job,
    plans: &[dativo_core::streams::StreamPlan],
    states: &[(String, dativo_runtime::StoredState)],
    json: bool,
) {
    let committed = |s: &str| {
        states
            .iter()
            .any(|(n, st)| n == s && st.run_id != dativo_runtime::state_store::RESET_RUN_ID)
    };
    if json {
        let v: Vec<serde_json::Value> = plans
            .iter()
            .map(|p| {
                serde_json::json!({
                    "stream": p.stream,
                    "schema": p.table.schema,
                    "table": p.table.name,
                    "estimated_rows": p.table.rows,
                    "estimated_bytes": p.table.bytes,
                    "primary_key": p.primary_key,
                    "cursor": p.cursor,
                    "mode": if p.cursor.is_some() { "incremental" } else { "full_refresh" },
                    "partitions": p.partitions,
                    "target": p.target,
                    "target_mode": p.target_mode,
                    "committed_state": committed(&p.stream),
                    "job": p.job.name(),
                    "notes": p.notes,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"job": job.name(), "streams": v}))
                .expect("serializable")
        );
        return;
    }
    if plans.is_empty() {
        println!(
            "job `{}` selects no table: check `tables:` (patterns are `schema.table` globs)",
            job.name()
        );
        return;
    }
    let w = plans
        .iter()
        .map(|p| p.stream.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let tw = plans
        .iter()
        .map(|p| p.target.len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<w$}  {:>8}  {:>8}  {:<16}  {:<16}  {:<12}  {:<tw$}  notes",
        "stream", "rows~", "bytes~", "key", "cursor", "mode", "target"
    );
    for p in plans {
        let mode = match (&p.cursor, p.target_mode.as_deref()) {
            (Some(_), Some(m)) => format!("incr. {m}"),
            (Some(_), None) => "incremental".to_string(),
            (None, Some(m)) => format!("full {m}"),
            (None, None) => "full refresh".to_string(),
        };
        let mut notes = p.notes.clone();
        if !committed(&p.stream) {
            notes.insert(0, "new".into());
        }
        println!(
            "{:<w$}  {:>8}  {:>8}  {:<16}  {:<16}  {:<12}  {:<tw$}  {}",
            p.stream,
            approx(p.table.rows),
            approx(p.table.bytes) + if p.table.bytes.is_some() { "B" } else { "" },
            abbreviate(
                &if p.primary_key.is_empty() {
                    "-".into()
                } else {
                    p.primary_key.join(",")
                },
                16
            ),
            abbreviate(p.cursor.as_deref().unwrap_or("-"), 16),
            mode,
            p.target,
            notes.join("; ")
        );
    }
    let rows: u64 = plans.iter().filter_map(|p| p.table.rows).sum();
    let bytes: u64 = plans.iter().filter_map(|p| p.table.bytes).sum();
    println!(
        "{} streams, about {} rows and {}B (catalog estimates); at most {} at a time",
        plans.len(),
        approx(Some(rows)),
        approx(Some(bytes)),
        job.config.max_parallel_streams
    );
}

/// The end of a run of a job with `tables:`: one line per stream, then the totals.
pub fn print_job_summary(
    job: &Job,
    s: &dativo_runtime::streams::JobSummary,
    json: bool,
    verbose: bool,
) {
    if json {
        for o in &s.streams {
            let (status, rows, bytes, secs, run) = match &o.result {
                Ok(r) => (
                    r.status.as_str(),
                    r.rows,
                    r.bytes,
                    r.elapsed.as_secs_f64(),
                    Some(r.run_id.clone()),
                ),
                Err(_) => ("not started", 0, 0, 0.0, None),
            };
            println!(
                "{}",
                serde_json::json!({
                    "job": job.name(), "stream": o.stream, "target": o.target, "status": status,
                    "rows": rows, "bytes": bytes, "elapsed_seconds": secs, "run_id": run,
                    "error": o.error().map(|e| secrets::scrub(&e.to_string())),
                    "error_kind": o.error().map(|e| e.kind().as_str()),
                })
            );
        }
        println!(
            "{}",
            serde_json::json!({
                "job": job.name(), "run_id": s.run_id, "status": s.status.as_str(),
                "streams": s.streams.len(),
                "streams_failed": s.streams.iter().filter(|o| !o.succeeded()).count(),
                "rows": s.rows(), "bytes": s.bytes(),
                "elapsed_seconds": s.elapsed.as_secs_f64(),
                "gone": s.gone, "other_shards": s.other_shards,
                "error": s.error.as_ref().map(|e| secrets::scrub(&e.to_string())),
                "error_kind": s.error.as_ref().map(|e| e.kind().as_str()),
            })
        );
        return;
    }
    let w = s
        .streams
        .iter()
        .map(|o| o.stream.len())
        .max()
        .unwrap_or(6)
        .max(6);
    if !s.streams.is_empty() {
        println!(
            "{:<w$}  {:<11}  {:>12}  {:>10}  {:>8}  error",
            "stream", "status", "rows", "bytes", "seconds"
        );
    }
    for o in &s.streams {
        let (status, rows, bytes, secs) = match &o.result {
            Ok(r) => (r.status.as_str(), r.rows, r.bytes, r.elapsed.as_secs_f64()),
            Err(_) => ("not started", 0, 0, 0.0),
        };
        println!(
            "{:<w$}  {:<11}  {:>12}  {:>10}  {:>8.1}  {}",
            o.stream,
            status,
            group(rows),
            mb(bytes),
            secs,
            o.error()
                .map(|e| abbreviate(&secrets::scrub(&e.to_string()), 100))
                .unwrap_or_default()
        );
    }
    let failed = s.streams.iter().filter(|o| !o.succeeded()).count();
    let mark = if s.status == RunStatus::Succeeded {
        "✔"
    } else {
        "✘"
    };
    println!(
        "{mark} job `{}` {} in {:.2}s (run {}): {} streams, {} failed; {} rows, {} committed",
        job.name(),
        s.status.as_str(),
        s.elapsed.as_secs_f64(),
        s.run_id,
        s.streams.len(),
        failed,
        group(s.rows()),
        mb(s.bytes())
    );
    if s.other_shards > 0 {
        println!(
            "  shards   {} streams belong to other shards",
            s.other_shards
        );
    }
    if !s.gone.is_empty() {
        println!(
            "  warning  {} streams with committed state are no longer in the source (or the selection): {} — skipped; their state and data stay",
            s.gone.len(),
            abbreviate(&s.gone.join(", "), 200)
        );
    }
    if let Some(e) = &s.error {
        println!(
            "  error    {}",
            error_text(e, verbose).replace('\n', "\n           ")
        );
    }
}
