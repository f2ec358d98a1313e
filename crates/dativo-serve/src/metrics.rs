//! Prometheus metrics, in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use dativo_runtime::RunStatus;

/// A job's labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Labels {
    /// The job.
    pub job: String,
    /// Its reader.
    pub reader: String,
    /// Its writer.
    pub writer: String,
}

impl Labels {
    fn render(&self) -> String {
        format!(
            "job=\"{}\",reader=\"{}\",writer=\"{}\"",
            esc(&self.job),
            esc(&self.reader),
            esc(&self.writer)
        )
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Run-duration histogram buckets, seconds.
const BUCKETS: [f64; 11] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

#[derive(Default, Clone)]
struct JobMetrics {
    rows: u64,
    bytes: u64,
    batches: u64,
    commits: u64,
    runs: BTreeMap<&'static str, u64>,
    failures: u64,
    duration_buckets: [u64; BUCKETS.len()],
    duration_sum: f64,
    duration_count: u64,
    last_success: Option<f64>,
    /// Change data capture: seconds from the source commit of the last change in the last
    /// commit to that commit (0 when the stream was idle).
    cdc_lag: Option<f64>,
    /// Change data capture: WAL the job's replication slot keeps on the server (PostgreSQL).
    cdc_retained: Option<i64>,
    /// Change data capture: WAL / binlog bytes written after the job's position.
    cdc_behind: Option<i64>,
}

/// Maintenance counters of one job.
#[derive(Default, Clone)]
struct MaintMetrics {
    runs_ok: u64,
    runs_failed: u64,
    files_rewritten: u64,
    bytes_rewritten: u64,
    snapshots_expired: u64,
    files_deleted: u64,
    seconds: f64,
}

/// Counters per job.
#[derive(Default)]
pub struct Metrics {
    jobs: Mutex<BTreeMap<Labels, JobMetrics>>,
    maintenance: Mutex<BTreeMap<String, MaintMetrics>>,
}

impl Metrics {
    fn with(&self, l: &Labels, f: impl FnOnce(&mut JobMetrics)) {
        let mut jobs = self.jobs.lock().expect("not poisoned");
        f(jobs.entry(l.clone()).or_default())
    }

    /// Rows committed by `job`'s runs since this instance started.
    pub fn rows(&self, job: &str) -> u64 {
        self.jobs
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(l, _)| l.job == job)
            .map(|(_, m)| m.rows)
            .sum()
    }

    /// The change data capture lag of `job` measured at its last commit (seconds between the
    /// source committing a change and dativo committing it), if it is a CDC job.
    pub fn lag(&self, job: &str) -> Option<f64> {
        self.jobs
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(l, _)| l.job == job)
            .find_map(|(_, m)| m.cdc_lag)
    }

    /// A batch reached the writer.
    pub fn batch(&self, l: &Labels) {
        self.with(l, |m| m.batches += 1)
    }

    /// A checkpoint was committed.
    pub fn committed(&self, l: &Labels, rows: u64, bytes: u64) {
        self.with(l, |m| {
            m.rows += rows;
            m.bytes += bytes;
            m.commits += 1;
        })
    }

    /// A change data capture commit: the lag from its last change's source commit.
    pub fn cdc_lag(&self, l: &Labels, seconds: f64) {
        self.with(l, |m| m.cdc_lag = Some(seconds))
    }

    /// A change data capture commit: what its reader last measured of the source's log
    /// (bytes the slot retains, bytes written after the job's position), when it did.
    pub fn cdc_log(&self, l: &Labels, retained: Option<i64>, behind: Option<i64>) {
        self.with(l, |m| {
            if retained.is_some() {
                m.cdc_retained = retained;
            }
            if behind.is_some() {
                m.cdc_behind = behind;
            }
        })
    }

    /// A run ended.
    pub fn run_finished(&self, l: &Labels, status: RunStatus, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.with(l, |m| {
            *m.runs.entry(status.as_str()).or_default() += 1;
            if status == RunStatus::Failed {
                m.failures += 1;
            }
            if status == RunStatus::Succeeded {
                m.last_success = Some(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                );
            }
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    m.duration_buckets[i] += 1;
                }
            }
            m.duration_sum += secs;
            m.duration_count += 1;
        })
    }

    /// A maintenance run of `job` ended with `reports` (empty when it failed).
    pub fn maintained(
        &self,
        job: &str,
        reports: &[dativo_runtime::maintain::MaintenanceReport],
        ok: bool,
        elapsed: Duration,
    ) {
        let mut all = self.maintenance.lock().expect("not poisoned");
        let m = all.entry(job.to_string()).or_default();
        if ok {
            m.runs_ok += 1;
        } else {
            m.runs_failed += 1;
        }
        for r in reports {
            m.files_rewritten += r.data_files_before.saturating_sub(r.data_files_after);
            m.bytes_rewritten += r.bytes_rewritten;
            m.snapshots_expired += r.snapshots_expired;
            m.files_deleted += r.files_deleted;
        }
        m.seconds += elapsed.as_secs_f64();
    }

    /// The exposition text; `running` and `jobs` are gauges the caller knows.
    pub fn render(&self, running: &BTreeMap<Labels, bool>, valid: usize, invalid: usize) -> String {
        let jobs = self.jobs.lock().expect("not poisoned").clone();
        let mut all: BTreeMap<Labels, JobMetrics> = jobs;
        for l in running.keys() {
            all.entry(l.clone()).or_default();
        }
        let mut o = String::new();
        let counter = |o: &mut String, name: &str, help: &str, get: &dyn Fn(&JobMetrics) -> u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (l, m) in &all {
                let _ = writeln!(o, "{name}{{{}}} {}", l.render(), get(m));
            }
        };
        counter(&mut o, "dativo_rows_total", "Rows committed.", &|m| m.rows);
        counter(
            &mut o,
            "dativo_bytes_total",
            "Bytes committed, as the writer reports them.",
            &|m| m.bytes,
        );
        counter(
            &mut o,
            "dativo_batches_total",
            "Batches handed to the writer.",
            &|m| m.batches,
        );
        counter(
            &mut o,
            "dativo_commits_total",
            "Checkpoints committed.",
            &|m| m.commits,
        );
        counter(
            &mut o,
            "dativo_run_failures_total",
            "Runs that failed (after their retries).",
            &|m| m.failures,
        );
        let _ = writeln!(
            o,
            "# HELP dativo_runs_total Runs ended, by status.\n# TYPE dativo_runs_total counter"
        );
        for (l, m) in &all {
            for (status, n) in &m.runs {
                let _ = writeln!(
                    o,
                    "dativo_runs_total{{{},status=\"{status}\"}} {n}",
                    l.render()
                );
            }
        }
        let maint = self.maintenance.lock().expect("not poisoned").clone();
        type Get = fn(&MaintMetrics) -> String;
        let series: [(&str, &str, Get); 6] = [
            (
                "dativo_maintenance_data_files_removed_total",
                "Data files compaction replaced, net of the files it wrote.",
                |m| m.files_rewritten.to_string(),
            ),
            (
                "dativo_maintenance_bytes_rewritten_total",
                "Bytes of data files compaction rewrote.",
                |m| m.bytes_rewritten.to_string(),
            ),
            (
                "dativo_maintenance_snapshots_expired_total",
                "Snapshots removed by expiry.",
                |m| m.snapshots_expired.to_string(),
            ),
            (
                "dativo_maintenance_files_deleted_total",
                "Files deleted from storage by expiry and orphan removal.",
                |m| m.files_deleted.to_string(),
            ),
            (
                "dativo_maintenance_seconds_total",
                "Wall time spent in maintenance.",
                |m| m.seconds.to_string(),
            ),
            (
                "dativo_maintenance_failures_total",
                "Maintenance runs that failed.",
                |m| m.runs_failed.to_string(),
            ),
        ];
        for (name, help, get) in series {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter");
            for (job, m) in &maint {
                let _ = writeln!(o, "{name}{{job=\"{}\"}} {}", esc(job), get(m));
            }
        }
        let _ = writeln!(o, "# HELP dativo_maintenance_runs_total Maintenance runs ended, by status.\n# TYPE dativo_maintenance_runs_total counter");
        for (job, m) in &maint {
            for (status, n) in [("succeeded", m.runs_ok), ("failed", m.runs_failed)] {
                let _ = writeln!(
                    o,
                    "dativo_maintenance_runs_total{{job=\"{}\",status=\"{status}\"}} {n}",
                    esc(job)
                );
            }
        }
        let _ = writeln!(o, "# HELP dativo_run_duration_seconds Wall time of runs.\n# TYPE dativo_run_duration_seconds histogram");
        for (l, m) in &all {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "dativo_run_duration_seconds_bucket{{{},le=\"{b}\"}} {}",
                    l.render(),
                    m.duration_buckets[i]
                );
            }
            let _ = writeln!(
                o,
                "dativo_run_duration_seconds_bucket{{{},le=\"+Inf\"}} {}",
                l.render(),
                m.duration_count
            );
            let _ = writeln!(
                o,
                "dativo_run_duration_seconds_sum{{{}}} {}",
                l.render(),
                m.duration_sum
            );
            let _ = writeln!(
                o,
                "dativo_run_duration_seconds_count{{{}}} {}",
                l.render(),
                m.duration_count
            );
        }
        let _ = writeln!(o, "# HELP dativo_last_success_timestamp_seconds When the job last succeeded (Unix time).\n# TYPE dativo_last_success_timestamp_seconds gauge");
        for (l, m) in &all {
            if let Some(t) = m.last_success {
                let _ = writeln!(
                    o,
                    "dativo_last_success_timestamp_seconds{{{}}} {t:.3}",
                    l.render()
                );
            }
        }
        let _ = writeln!(o, "# HELP dativo_cdc_lag_seconds Change data capture: from the source commit of the last change in the job's last commit to that commit (0: the source was idle).\n# TYPE dativo_cdc_lag_seconds gauge");
        for (l, m) in &all {
            if let Some(t) = m.cdc_lag {
                let _ = writeln!(o, "dativo_cdc_lag_seconds{{{}}} {t:.3}", l.render());
            }
        }
        let _ = writeln!(o, "# HELP dativo_cdc_retained_bytes Change data capture from PostgreSQL: WAL the job's replication slot keeps on the server (pg_current_wal_lsn() - restart_lsn), measured every 10 s while streaming, as of the job's last commit.\n# TYPE dativo_cdc_retained_bytes gauge");
        for (l, m) in &all {
            if let Some(b) = m.cdc_retained {
                let _ = writeln!(o, "dativo_cdc_retained_bytes{{{}}} {b}", l.render());
            }
        }
        let _ = writeln!(o, "# HELP dativo_cdc_behind_bytes Change data capture: WAL (PostgreSQL) or binlog (MySQL) bytes the server wrote after the job's position, measured every 10 s while streaming, as of the job's last commit.\n# TYPE dativo_cdc_behind_bytes gauge");
        for (l, m) in &all {
            if let Some(b) = m.cdc_behind {
                let _ = writeln!(o, "dativo_cdc_behind_bytes{{{}}} {b}", l.render());
            }
        }
        let _ = writeln!(o, "# HELP dativo_job_running Whether the job is running on this instance.\n# TYPE dativo_job_running gauge");
        for (l, r) in running {
            let _ = writeln!(o, "dativo_job_running{{{}}} {}", l.render(), *r as u8);
        }
        let _ = writeln!(
            o,
            "# HELP dativo_jobs Job files, valid and invalid.\n# TYPE dativo_jobs gauge"
        );
        let _ = writeln!(
            o,
            "dativo_jobs{{state=\"valid\"}} {valid}\ndativo_jobs{{state=\"invalid\"}} {invalid}"
        );
        o
    }
}
