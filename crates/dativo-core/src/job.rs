//! The job file: what to read, where to write, and how the runner behaves.
//!
//! ```yaml
//! name: orders_to_lake
//! source:
//!   reader: file                    # a built-in name, or {type: custom, implementation: …}
//!   config: { path: "data/*.csv" }
//! target:
//!   writer: parquet
//!   config: { path: ./lake/orders }
//! schedule: "*/15 * * * *"          # optional; used by `dativo serve`
//! retry: { attempts: 3, backoff: 1s, max_backoff: 1m }
//! checkpoint: { rows: 1000000, bytes: 256MB, seconds: 60 }
//! state: { dir: .dativo }
//! ```
//!
//! Loading is pure (no I/O but reading the file and `${file:…}` references): every error names
//! the file, the key path and the line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{from_config, ByteSize, DurationValue};
use crate::error::{Error, Result};
use crate::yaml::{Document, Substitution, MAX_DOCUMENT_BYTES};

/// A parsed, validated job file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Unique job name: letters, digits, `_`, `-`, `.`. Keys the state store and the lock.
    pub name: String,
    /// Free text for people.
    #[serde(default)]
    pub description: Option<String>,
    /// What to read.
    pub source: SourceConfig,
    /// Where to write.
    pub target: TargetConfig,
    /// When `dativo serve` runs the job.
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Retries of failed runs.
    #[serde(default)]
    pub retry: RetryConfig,
    /// How often the writer commits.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Where state and run history live.
    #[serde(default)]
    pub state: StateConfig,
    /// Batches buffered between reader and writer (1 to 1024, see [`CHANNEL_DEPTH_RANGE`]);
    /// memory is bounded by batch size × channel depth.
    #[serde(default = "default_channel_depth")]
    pub channel_depth: usize,
    /// `python:` — settings for Python readers and writers (`implementation: pkg.module.Class`).
    #[serde(default)]
    pub python: PythonConfig,
    /// `maintenance:` — keeping the job's Iceberg table healthy (`dativo maintain`, and
    /// `dativo serve` on `maintenance.schedule`).
    #[serde(default)]
    pub maintenance: Option<MaintenanceConfig>,
    /// A job with `tables:`: streams (tables) read at the same time (1 to 64, default 4).
    /// Each holds `channel_depth` batches and its reader's `partitions` connections.
    #[serde(default = "default_parallel_streams")]
    pub max_parallel_streams: usize,
    /// A job with `tables:`: source connections its streams may hold at once (each stream
    /// takes its reader's `partitions` + 1); unset: no limit beyond `max_parallel_streams`.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

fn default_parallel_streams() -> usize {
    4
}

/// `maintenance:` — what `dativo maintain JOB` does without flags, and when `serve` does it.
/// Each operation runs when its key is present (an empty map takes its defaults).
///
/// ```yaml
/// maintenance:
///   schedule: "0 3 * * *"                               # serve: nightly
///   compact: {min_input_files: 5}                       # bin-pack small files
///   expire_snapshots: {older_than: 7d, retain_last: 10}
///   remove_orphans: {older_than: 3d}
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// When `dativo serve` runs the maintenance (cron, as `schedule:`).
    #[serde(default)]
    pub schedule: Option<Schedule>,
    /// Compaction of small data files (and of the delete files applying to them).
    #[serde(default)]
    pub compact: Option<CompactConfig>,
    /// Expiry of old snapshots and of the files only they reference.
    #[serde(default)]
    pub expire_snapshots: Option<ExpireConfig>,
    /// Removal of files no metadata references.
    #[serde(default)]
    pub remove_orphans: Option<OrphansConfig>,
    /// Rewriting the manifests of the current snapshot into few.
    #[serde(default)]
    pub rewrite_manifests: Option<bool>,
}

/// `maintenance.compact`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactConfig {
    /// Compacted files' size (default: the table's `write.target-file-size-bytes`, else the
    /// writer's `target_file_size`).
    #[serde(default)]
    pub target_file_size: Option<ByteSize>,
    /// A partition is compacted when it has at least this many small files (default 5), or a
    /// file with deletes.
    #[serde(default)]
    pub min_input_files: Option<usize>,
    /// The most input bytes rewritten in one commit (default 16 × the target size): larger
    /// groups leave fewer files below the target, smaller ones lose less work when a merge
    /// deletes rows from their files meanwhile.
    #[serde(default)]
    pub max_group_size: Option<ByteSize>,
}

/// `maintenance.expire_snapshots`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpireConfig {
    /// Snapshots older than this may go (default 7 days).
    #[serde(default)]
    pub older_than: Option<DurationValue>,
    /// The newest snapshots always kept, whatever their age (default 10).
    #[serde(default)]
    pub retain_last: Option<usize>,
}

/// `maintenance.remove_orphans`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrphansConfig {
    /// Unreferenced files older than this are deleted (default 3 days; at least 1 hour, so a
    /// commit in flight never loses its files).
    #[serde(default)]
    pub older_than: Option<DurationValue>,
}

/// Two: each reader range also holds a finished batch while it decodes the next, so the
/// reader side already double-buffers; more depth only adds memory (a wide table's batch is
/// ~10 MB) unless the writer stalls for longer than a batch takes to read.
fn default_channel_depth() -> usize {
    2
}

/// The allowed `channel_depth`: each buffered batch holds up to a reader's `batch_size` rows.
pub const CHANNEL_DEPTH_RANGE: std::ops::RangeInclusive<usize> = 1..=1024;

/// Read a job file: a regular file of at most [`MAX_DOCUMENT_BYTES`] bytes, as UTF-8.
fn read_job_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let shown = path.display();
    let cannot = |e: std::io::Error| Error::config(format!("cannot read job file {shown}: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(Error::config(format!(
            "job file {shown} is not a regular file"
        )));
    }
    let too_big = || {
        Error::config(format!(
            "job file {shown} is larger than {MAX_DOCUMENT_BYTES} bytes, the most a job file may be"
        ))
    };
    if meta.len() > MAX_DOCUMENT_BYTES as u64 {
        return Err(too_big());
    }
    // The file may grow between the check and the read: read one byte more than allowed.
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_DOCUMENT_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() > MAX_DOCUMENT_BYTES {
        return Err(too_big());
    }
    String::from_utf8(bytes).map_err(|e| {
        Error::config(format!(
            "cannot read job file {shown}: not UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        ))
    })
}

/// `source:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// The reader implementation.
    pub reader: Implementation,
    /// The reader's own configuration, passed to it as JSON.
    #[serde(default = "empty_object")]
    pub config: Value,
}

/// `target:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The writer implementation.
    pub writer: Implementation,
    /// The writer's own configuration, passed to it as JSON.
    #[serde(default = "empty_object")]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// `python:` — where Python readers and writers are imported from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonConfig {
    /// A virtualenv whose packages are importable (relative to the job file); default: the
    /// active one (`VIRTUAL_ENV`).
    #[serde(default)]
    pub venv: Option<PathBuf>,
}

/// Which implementation a `reader:` / `writer:` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Implementation {
    /// A built-in connector: `reader: postgres`.
    Builtin(String),
    /// `{type: custom, implementation: "…"}`: a native library path (`./libx.so#name`), a
    /// Python class path (`pkg.module.Class`) or a Flight endpoint (`grpc://host:port`).
    Custom(CustomImplementation),
}

/// `{type: custom, implementation: …, command: […], token: …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CustomImplementation {
    /// What to load or call: `./libx.so#name`, `pkg.module.Class`, `grpc://host:port`.
    pub implementation: String,
    /// For `grpc://`: a command that starts the plugin server; dativo starts it, waits until
    /// the port accepts connections, restarts it if it died before a retry, and stops it.
    pub command: Vec<String>,
    /// For `grpc://`: a bearer token sent with every call (use `${env:…}`).
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// For `grpc+tls://`: a PEM file with the CA that signed the server's certificate
    /// (default: the public web roots).
    pub tls_ca: Option<PathBuf>,
}

impl CustomImplementation {
    /// Just an implementation string, no options.
    pub fn new(implementation: impl Into<String>) -> Self {
        CustomImplementation {
            implementation: implementation.into(),
            command: Vec::new(),
            token: None,
            tls_ca: None,
        }
    }
}

impl Implementation {
    /// How the implementation is shown in logs and errors.
    pub fn display_name(&self) -> &str {
        match self {
            Implementation::Builtin(n) => n,
            Implementation::Custom(c) => &c.implementation,
        }
    }
}

impl<'de> Deserialize<'de> for Implementation {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            implementation: Option<String>,
            #[serde(default)]
            name: Option<String>,
            #[serde(default)]
            command: Vec<String>,
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            tls_ca: Option<PathBuf>,
        }
        let v = Value::deserialize(d)?;
        match v {
            Value::String(s) if !s.is_empty() => Ok(Implementation::Builtin(s)),
            Value::Object(_) => {
                let l: Long = serde_json::from_value(v).map_err(de::Error::custom)?;
                if l.kind != "custom"
                    && (!l.command.is_empty() || l.token.is_some() || l.tls_ca.is_some())
                {
                    return Err(de::Error::custom(
                        "`command`, `token` and `tls_ca` belong to `type: custom` (a grpc:// plugin)",
                    ));
                }
                match (l.kind.as_str(), l.implementation, l.name) {
                    ("custom", Some(i), None) if !i.is_empty() => {
                        Ok(Implementation::Custom(CustomImplementation {
                            implementation: i,
                            command: l.command,
                            token: l.token,
                            tls_ca: l.tls_ca,
                        }))
                    }
                    ("custom", _, _) => Err(de::Error::custom(
                        "`type: custom` needs `implementation:` (a library path, a Python class path or grpc://host:port)",
                    )),
                    ("builtin", None, Some(n)) => Ok(Implementation::Builtin(n)),
                    ("builtin", _, _) => Err(de::Error::custom("`type: builtin` needs `name:`")),
                    (k, _, _) => Err(de::Error::custom(format!(
                        "unknown implementation type `{k}`: expected `builtin` or `custom`"
                    ))),
                }
            }
            _ => Err(de::Error::custom(
                "expected a built-in name (e.g. `file`) or {type: custom, implementation: …}",
            )),
        }
    }
}

/// `schedule:` — a cron expression (5 fields, or 6 with seconds), optionally with a time zone.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// The cron expression.
    pub cron: String,
    /// IANA time zone name; UTC when absent.
    pub timezone: Option<String>,
    /// What `serve` does about runs missed while it was down or the job was still running:
    /// `skip` (default) or `run_once` (one catch-up run as soon as possible).
    pub missed: MissedRuns,
}

/// `schedule.missed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissedRuns {
    /// Wait for the next scheduled time.
    #[default]
    Skip,
    /// Run once as soon as possible, however many times were missed.
    RunOnce,
}

impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Long {
            cron: String,
            #[serde(default)]
            timezone: Option<String>,
            #[serde(default)]
            missed: MissedRuns,
        }
        let v = Value::deserialize(d)?;
        let s = match v {
            Value::String(cron) => Schedule {
                cron,
                timezone: None,
                missed: MissedRuns::Skip,
            },
            Value::Object(_) => {
                let l: Long = serde_json::from_value(v).map_err(de::Error::custom)?;
                Schedule {
                    cron: l.cron,
                    timezone: l.timezone,
                    missed: l.missed,
                }
            }
            _ => {
                return Err(de::Error::custom(
                    "expected a cron expression or {cron: …, timezone: …}",
                ))
            }
        };
        if let Some(tz) = &s.timezone {
            tz.parse::<chrono_tz::Tz>().map_err(|_| {
                de::Error::custom(format!(
                    "unknown time zone `{tz}`: use an IANA name such as `Europe/Berlin` or `UTC`"
                ))
            })?;
        }
        croner::Cron::new(&s.cron)
            .with_seconds_optional()
            .parse()
            .map_err(|e| de::Error::custom(format!("invalid cron expression `{}`: {e}", s.cron)))?;
        Ok(s)
    }
}

/// `retry:` — how failed runs are retried (retryable errors only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Total attempts including the first; 1 disables retries.
    pub attempts: u32,
    /// Delay before the first retry; doubles each time, with equal jitter (half fixed, half
    /// random).
    pub backoff: DurationValue,
    /// Upper bound of the delay.
    pub max_backoff: DurationValue,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 3,
            backoff: DurationValue(Duration::from_secs(1)),
            max_backoff: DurationValue(Duration::from_secs(60)),
        }
    }
}

/// `checkpoint:` — the writer commits when any limit is reached, and at end of stream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointConfig {
    /// Commit every this many rows.
    pub rows: Option<u64>,
    /// Commit every this many bytes (Arrow in-memory size).
    pub bytes: Option<ByteSize>,
    /// Commit at least this often.
    pub seconds: Option<DurationValue>,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            rows: None,
            bytes: Some(ByteSize(512 << 20)),
            seconds: Some(DurationValue(Duration::from_secs(300))),
        }
    }
}

/// `state:` — where the state store lives.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory of the SQLite state store; `.dativo` in the working directory by default, and
    /// `--state-dir` overrides it. Relative paths are relative to the working directory.
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

/// A job file as loaded: the config and what is needed to point at lines in it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The typed configuration.
    pub config: JobConfig,
    /// The file it came from.
    pub path: PathBuf,
    document: Document,
}

impl Job {
    /// Read and validate a job file, substituting `${env:…}` from the process environment.
    pub fn load(path: &Path) -> Result<Job> {
        Self::load_with_env(path, &|k| std::env::var(k).ok())
    }

    /// [`Job::load`] with an explicit environment (tests, `serve`).
    pub fn load_with_env(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Job> {
        let text = read_job_file(path)?;
        let base_dir = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, path, &Substitution { base_dir, env })
    }

    /// Parse job text; `path` is used in messages and for `${file:…}` resolution.
    pub fn parse(text: &str, path: &Path, subst: &Substitution<'_>) -> Result<Job> {
        let origin = path.display().to_string();
        let mut document = Document::parse(text, &origin, subst)?;
        let Some(root) = document.value.as_object_mut() else {
            return Err(Error::config(format!(
                "{origin}:1: a job file is a mapping with `name`, `source` and `target`"
            )));
        };
        // `x-…` keys hold YAML anchors for the rest of the file (as in Compose files).
        root.retain(|k, _| !k.starts_with("x-"));
        let config: JobConfig = from_config(&document.value).map_err(|e| {
            let msg = e.message().to_string();
            Self::locate_in(&document, &origin, e.key_path().unwrap_or(""), &msg)
        })?;
        let job = Job {
            config,
            path: path.to_path_buf(),
            document,
        };
        job.check_name()?;
        if !CHANNEL_DEPTH_RANGE.contains(&job.config.channel_depth) {
            return Err(job.error_at(
                "channel_depth",
                &format!(
                    "must be between {} and {} (batches buffered between reader and writer), got {}",
                    CHANNEL_DEPTH_RANGE.start(),
                    CHANNEL_DEPTH_RANGE.end(),
                    job.config.channel_depth
                ),
            ));
        }
        if !(1..=64).contains(&job.config.max_parallel_streams) {
            return Err(job.error_at(
                "max_parallel_streams",
                &format!(
                    "must be between 1 and 64 (tables read at the same time), got {}",
                    job.config.max_parallel_streams
                ),
            ));
        }
        if job.config.retry.attempts == 0 {
            return Err(job.error_at("retry.attempts", "must be at least 1"));
        }
        if let Some(m) = &job.config.maintenance {
            if job.config.target.writer != Implementation::Builtin("iceberg".into()) {
                return Err(job.error_at(
                    "maintenance",
                    "table maintenance applies to `writer: iceberg` targets only",
                ));
            }
            if let Some(o) = m.remove_orphans.as_ref().and_then(|o| o.older_than) {
                if o.0 < Duration::from_secs(3600) {
                    return Err(job.error_at(
                        "maintenance.remove_orphans.older_than",
                        "must be at least 1h: younger files may belong to a commit in flight",
                    ));
                }
            }
            if m.expire_snapshots.as_ref().and_then(|e| e.retain_last) == Some(0) {
                return Err(job.error_at(
                    "maintenance.expire_snapshots.retain_last",
                    "must be at least 1 (the current snapshot is always kept)",
                ));
            }
        }
        Ok(job)
    }

    fn check_name(&self) -> Result<()> {
        let n = &self.config.name;
        let ok = !n.is_empty()
            && n.len() <= 128
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !n.starts_with('.');
        if ok {
            Ok(())
        } else {
            Err(self.error_at(
                "name",
                &format!(
                    "invalid job name `{n}`: use letters, digits, `_`, `-` and `.` (at most 128)"
                ),
            ))
        }
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// A config error at `key_path` (e.g. `source.config.table`): `file:line: key_path: message`.
    pub fn error_at(&self, key_path: &str, message: &str) -> Error {
        Self::locate_in(
            &self.document,
            &self.path.display().to_string(),
            key_path,
            message,
        )
    }

    /// Turn an error from a connector's config validation into one naming file, key path and
    /// line; `prefix` is where the connector's config sits (`source.config`).
    pub fn locate(&self, prefix: &str, err: Error) -> Error {
        if err.kind() != crate::ErrorKind::Config {
            return err;
        }
        let path = match err.key_path() {
            Some(p) if p.starts_with('[') => format!("{prefix}{p}"),
            Some(p) => format!("{prefix}.{p}"),
            None => prefix.to_string(),
        };
        self.error_at(&path, err.message())
    }

    fn locate_in(doc: &Document, origin: &str, key_path: &str, message: &str) -> Error {
        let line = doc.line_of(key_path).unwrap_or(1);
        let message = crate::secrets::redact(message);
        if key_path.is_empty() {
            Error::config(format!("{origin}:{line}: {message}"))
        } else {
            Error::config(format!("{origin}:{line}: {key_path}: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Job> {
        let env = |k: &str| (k == "HOME_DIR").then(|| "/tmp".to_string());
        Job::parse(
            text,
            Path::new("jobs/j.yaml"),
            &Substitution {
                base_dir: Path::new("."),
                env: &env,
            },
        )
    }

    const GOOD: &str = "name: orders\nsource:\n  reader: file\n  config:\n    path: a.csv\ntarget:\n  writer: {type: custom, implementation: ./libw.so}\n  config: {path: \"${env:HOME_DIR}/lake\"}\nschedule: '*/5 * * * *'\nretry: {attempts: 5, backoff: 2s}\ncheckpoint: {rows: 1000, bytes: 64MB}\n";

    #[test]
    fn good_job() {
        let j = parse(GOOD).unwrap();
        assert_eq!(j.name(), "orders");
        assert_eq!(
            j.config.source.reader,
            Implementation::Builtin("file".into())
        );
        assert_eq!(
            j.config.target.writer,
            Implementation::Custom(CustomImplementation::new("./libw.so"))
        );
        assert_eq!(j.config.target.config["path"], "/tmp/lake");
        assert_eq!(j.config.retry.attempts, 5);
        assert_eq!(j.config.checkpoint.rows, Some(1000));
        assert_eq!(
            j.config.checkpoint.seconds,
            Some(DurationValue(Duration::from_secs(300)))
        );
    }

    #[test]
    fn x_keys_hold_anchors_and_are_ignored() {
        let text = format!(
            "x-retry: &retry {{attempts: 2, backoff: 1s}}\n{}",
            GOOD.replace("retry:", "retry: *retry\nx-unused:")
        );
        let j = parse(&text).unwrap();
        assert_eq!(j.config.retry.attempts, 2);
    }

    #[test]
    fn misspelt_key_names_file_path_and_line() {
        let e = parse(&GOOD.replace("retry:", "retyr:")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("jobs/j.yaml:10: retyr: unknown field `retyr`"),
            "{e}"
        );
        let e = parse(&GOOD.replace("backoff: 2s", "backof: 2s")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("jobs/j.yaml:10: retry.backof: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_and_missing_field() {
        let e = parse(&GOOD.replace("rows: 1000", "rows: many")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("jobs/j.yaml:11: checkpoint.rows: invalid type"),
            "{e}"
        );
        let e = parse(&GOOD.replace("  writer: {type: custom, implementation: ./libw.so}\n", ""))
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("jobs/j.yaml:6: target: missing field `writer`"),
            "{e}"
        );
        let e = parse(&GOOD.replace("'*/5 * * * *'", "'every tuesday'")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("jobs/j.yaml:9: schedule: invalid cron"),
            "{e}"
        );
        let e = parse(&GOOD.replace("HOME_DIR", "NOT_SET_X")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("jobs/j.yaml:8: target.config.path: environment variable `NOT_SET_X`"),
            "{e}"
        );
        let e = parse(&GOOD.replace("name: orders", "name: 'a b'")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("jobs/j.yaml:1: name: invalid job name"),
            "{e}"
        );
    }

    #[test]
    fn channel_depth_is_bounded() {
        let e = parse(&format!("{GOOD}channel_depth: 100000000000\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "jobs/j.yaml:12: channel_depth: must be between 1 and 1024 (batches buffered between reader and writer), got 100000000000"
        );
        assert!(parse(&format!("{GOOD}channel_depth: 0\n")).is_err());
        assert_eq!(
            parse(&format!("{GOOD}channel_depth: 1024\n"))
                .unwrap()
                .config
                .channel_depth,
            1024
        );
    }

    #[test]
    fn oversized_and_irregular_job_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.yaml");
        std::fs::write(&p, format!("{GOOD}#{}\n", "x".repeat(MAX_DOCUMENT_BYTES))).unwrap();
        let e = Job::load(&p).unwrap_err();
        assert!(e.to_string().contains("big.yaml is larger than"), "{e}");
        let e = Job::load(dir.path()).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
    }

    #[test]
    fn connector_errors_are_located() {
        let j = parse(GOOD).unwrap();
        let e = j.locate(
            "source.config",
            Error::config("unknown field `pth`").with_key_path("path"),
        );
        assert_eq!(
            e.to_string(),
            "jobs/j.yaml:5: source.config.path: unknown field `pth`"
        );
    }
}
