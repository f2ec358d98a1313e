//! The state store: each job's committed incremental state, its run history, and the per-job
//! lock that keeps two runs of one job from interleaving commits.
//!
//! The default store is a SQLite file, `state.db`, in the state directory (`.dativo/` in the
//! working directory, the job's `state.dir`, or `--state-dir`). The per-job lock is an OS file
//! lock on `locks/<job>.lock` beside it: it dies with the process, so a killed run never leaves
//! a stale lock behind.
//!
//! With `--state-url postgres://…` (or `DATIVO_STATE_URL`) the store is PostgreSQL instead
//! (tables `dativo_job_state` and `dativo_runs`), shared by every dativo process and host that
//! points at it; the per-job lock is a session advisory lock held on a connection of its own, so
//! it too dies with the process (the server ends the session) and the job can run elsewhere.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use dativo_core::{Error, Result, ResultExt};

/// The run id of a reset marker (see [`StateStore::reset_state`]).
pub const RESET_RUN_ID: &str = "reset";

/// A job's committed state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredState {
    /// The state; `None` when the last commit had none (a non-incremental reader).
    pub state: Option<Value>,
    /// The run that committed it.
    pub run_id: String,
    /// When (RFC 3339, UTC).
    pub updated_at: String,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Still running (or the process died: see [`StateStore::lock`]).
    Running,
    /// Finished; everything read was committed.
    Succeeded,
    /// Failed after its retries; earlier commits stand.
    Failed,
    /// Cancelled by a signal or a request; earlier commits stand.
    Cancelled,
    /// The process died during the run (found by the next run).
    Interrupted,
}

impl RunStatus {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
        }
    }
    pub(crate) fn parse(s: &str) -> RunStatus {
        match s {
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "interrupted" => RunStatus::Interrupted,
            _ => RunStatus::Running,
        }
    }
}

/// One row of run history.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    /// Unique run id (UUIDv7, so ids sort by start time).
    pub run_id: String,
    /// The job.
    pub job: String,
    /// Start (RFC 3339, UTC).
    pub started_at: String,
    /// End, once ended.
    pub ended_at: Option<String>,
    /// Status.
    pub status: RunStatus,
    /// Attempts made (1 + retries).
    pub attempts: u32,
    /// Rows committed by the run.
    pub rows: u64,
    /// Bytes committed by the run (as reported by the writer).
    pub bytes: u64,
    /// Commits made by the run.
    pub commits: u64,
    /// The error that ended the run, redacted.
    pub error: Option<String>,
    /// What a maintenance run did (`dativo maintain`: one report per operation); `None` for
    /// job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

/// The suffix of the key maintenance runs of a job are recorded under (`orders#maintain`).
pub const MAINTAIN_SUFFIX: &str = "#maintain";

/// The state store: SQLite in a directory, or PostgreSQL.
pub struct StateStore {
    inner: Inner,
}

enum Inner {
    Sqlite { conn: Connection, dir: PathBuf },
    Postgres(crate::pg_store::PgStore),
}

/// A held per-job lock; released when dropped (or when the process dies).
pub struct JobLock {
    _files: Vec<File>,
    _session: Option<tokio_postgres::Client>,
    /// What holds the lock (a lock file, or a PostgreSQL advisory lock).
    pub what: String,
}

impl JobLock {
    /// A lock held by a PostgreSQL session.
    pub(crate) fn session(client: tokio_postgres::Client, what: String) -> Self {
        JobLock {
            _files: Vec::new(),
            _session: Some(client),
            what,
        }
    }

    /// Check, before a commit, that the lock is still held: a PostgreSQL session can end
    /// under a run (idle timeouts, a dropped connection, a failover), and then another process
    /// may have taken the job. File locks last as long as the process.
    ///
    /// A lost lock is [`ErrorKind::Busy`](dativo_core::ErrorKind::Busy), not retried: the run
    /// holds its lock for all its attempts and cannot take it back within them, and another
    /// run of the job may hold it now. Nothing more is committed; the next run takes the lock
    /// afresh and resumes from the last commit.
    pub fn ensure_held(&self) -> Result<()> {
        let Some(session) = &self._session else {
            return Ok(());
        };
        dativo_core::rt::runtime()
            .block_on(session.simple_query("SELECT 1"))
            .map(|_| ())
            .map_err(|e| {
                Error::busy(format!(
                    "lost the job's lock ({}): {}; not committing — the job may be running elsewhere",
                    self.what,
                    dativo_core::secrets::scrub(&e.to_string())
                ))
                .with_source(e)
            })
    }
}

impl std::fmt::Debug for JobLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobLock").field("what", &self.what).finish()
    }
}

const SCHEMA: &str = "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=FULL;
             CREATE TABLE IF NOT EXISTS job_state (
                 job TEXT PRIMARY KEY,
                 state TEXT,
                 run_id TEXT NOT NULL,
                 updated_at TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS runs (
                 run_id TEXT PRIMARY KEY,
                 job TEXT NOT NULL,
                 started_at TEXT NOT NULL,
                 ended_at TEXT,
                 status TEXT NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 1,
                 rows INTEGER NOT NULL DEFAULT 0,
                 bytes INTEGER NOT NULL DEFAULT 0,
                 commits INTEGER NOT NULL DEFAULT 0,
                 error TEXT,
                 details TEXT
             );
             CREATE INDEX IF NOT EXISTS runs_by_job ON runs(job, started_at);";

/// Now, RFC 3339 UTC with milliseconds: how the store, run logs and `serve` write times.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn db_err(e: rusqlite::Error) -> Error {
    Error::io(format!("state store: {e}")).with_source(e)
}

impl StateStore {
    /// Open (creating if needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<StateStore> {
        fs::create_dir_all(dir.join("locks"))
            .with_context(|| format!("creating state directory {}", dir.display()))?;
        let path = dir.join("state.db");
        let conn = Connection::open(&path)
            .map_err(db_err)
            .with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(db_err)?;
        // Several processes may open a new store at once (jobs started together): switching
        // to WAL and creating the tables can report "locked" without waiting, so retry.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match conn.execute_batch(SCHEMA) {
                Ok(()) => break,
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(db_err(e))
                        .with_context(|| format!("initializing {}", path.display()))
                }
            }
        }
        // Stores made before maintenance runs were recorded lack `details`.
        let has_details = |conn: &Connection| {
            conn.prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'details'")
                .and_then(|mut st| st.exists([]))
                .map_err(db_err)
        };
        if !has_details(&conn)? {
            if let Err(e) = conn.execute_batch("ALTER TABLE runs ADD COLUMN details TEXT") {
                // Another process may have added it meanwhile.
                if !has_details(&conn)? {
                    return Err(db_err(e));
                }
            }
        }
        Ok(StateStore {
            inner: Inner::Sqlite {
                conn,
                dir: dir.to_path_buf(),
            },
        })
    }

    /// Open the store `url` names (`postgres://…`), or else the SQLite store in `dir`.
    pub fn open_with(dir: &Path, url: Option<&str>) -> Result<StateStore> {
        match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(StateStore {
                    inner: Inner::Postgres(crate::pg_store::PgStore::open(u)?),
                })
            }
            Some(u) => Err(Error::config(format!(
                "state store URL `{}`: use postgres://user:password@host/db (or leave it out for SQLite in the state directory)",
                dativo_core::secrets::scrub(u)
            ))),
            None => Self::open(dir),
        }
    }

    /// Where the store is, for messages (`.dativo/state.db`, `postgres://host/db`).
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Sqlite { dir, .. } => dir.join("state.db").display().to_string(),
            Inner::Postgres(pg) => pg.describe(),
        }
    }

    /// Take the job's lock without waiting. A stream of a job with `tables:` (`job/STREAM`)
    /// has a lock of its own; the job's run holds the job's lock besides. Runs of the job that are still marked running were
    /// ended by a dead process: they are marked interrupted.
    pub fn lock(&self, job: &str) -> Result<JobLock> {
        let (conn, dir) = match &self.inner {
            Inner::Postgres(pg) => return pg.lock(job),
            Inner::Sqlite { conn, dir } => (conn, dir),
        };
        // A shard (`job#I/N`) holds the job's lock shared and its own (`job#I%2FN.lock`)
        // exclusively: shards run side by side, but never next to an unsharded run of the job
        // (which would read the same rows again).
        let (base, sharded) = match job.split_once('#') {
            Some((b, _)) => (b, true),
            None => (job, false),
        };
        let open = |name: &str| -> Result<(File, PathBuf)> {
            let path = dir
                .join("locks")
                .join(format!("{}.lock", lock_file_name(name)));
            let f = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            Ok((f, path))
        };
        let busy = |path: &Path, who: &str| {
            Error::busy(format!(
                "job `{job}` is already running ({who}; another process holds {})",
                path.display()
            ))
        };
        let (base_file, base_path) = open(base)?;
        let mut files = Vec::new();
        let r = if sharded {
            base_file.try_lock_shared()
        } else {
            base_file.try_lock()
        };
        match r {
            Ok(()) => files.push(base_file),
            Err(fs::TryLockError::WouldBlock) => {
                return Err(busy(
                    &base_path,
                    if sharded {
                        "an unsharded run of the job is going on"
                    } else {
                        "the job, or shards of it"
                    },
                ))
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::from(e).context(format!("locking {}", base_path.display())))
            }
        }
        let mut path = base_path;
        if sharded {
            let (f, p) = open(job)?;
            match f.try_lock() {
                Ok(()) => files.push(f),
                Err(fs::TryLockError::WouldBlock) => return Err(busy(&p, "this shard")),
                Err(fs::TryLockError::Error(e)) => {
                    return Err(Error::from(e).context(format!("locking {}", p.display())))
                }
            }
            path = p;
        }
        conn.execute(
            "UPDATE runs SET status = 'interrupted', ended_at = COALESCE(ended_at, ?2),
                   error = COALESCE(error, 'the process ended during the run (killed or crashed)')
                 WHERE job = ?1 AND status = 'running'",
            params![job, now()],
        )
        .map_err(db_err)?;
        Ok(JobLock {
            _files: files,
            _session: None,
            what: path.display().to_string(),
        })
    }

    /// The job's committed state.
    pub fn load_state(&self, job: &str) -> Result<Option<StoredState>> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.load_state(job),
            Inner::Sqlite { conn, .. } => conn,
        };
        conn.query_row(
            "SELECT state, run_id, updated_at FROM job_state WHERE job = ?1",
            params![job],
            |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()
        .map_err(db_err)?
        .map(|(state, run_id, updated_at)| {
            let state = state
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|e| {
                    Error::data(format!("stored state of `{job}` is corrupt: {e}")).with_source(e)
                })?;
            Ok(StoredState {
                state,
                run_id,
                updated_at,
            })
        })
        .transpose()
    }

    /// Record the job's committed state and count the commit in the run's history, atomically.
    pub fn save_commit(
        &self,
        job: &str,
        run_id: &str,
        state: Option<&Value>,
        rows: u64,
        bytes: u64,
    ) -> Result<()> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.save_commit(job, run_id, state, rows, bytes),
            Inner::Sqlite { conn, .. } => conn,
        };
        let state = state.map(|s| s.to_string());
        let tx = conn.unchecked_transaction().map_err(db_err)?;
        tx.execute(
            "INSERT INTO job_state (job, state, run_id, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(job) DO UPDATE SET state = ?2, run_id = ?3, updated_at = ?4",
            params![job, state, run_id, now()],
        )
        .map_err(db_err)?;
        tx.execute(
            "UPDATE runs SET rows = rows + ?2, bytes = bytes + ?3, commits = commits + 1
             WHERE run_id = ?1",
            params![run_id, rows as i64, bytes as i64],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Overwrite the job's state (recovery from the writer's copy).
    pub fn put_state(&self, job: &str, run_id: &str, state: Option<&Value>) -> Result<()> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.put_state(job, run_id, state),
            Inner::Sqlite { conn, .. } => conn,
        };
        conn.execute(
            "INSERT INTO job_state (job, state, run_id, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(job) DO UPDATE SET state = ?2, run_id = ?3, updated_at = ?4",
            params![job, state.map(|s| s.to_string()), run_id, now()],
        )
        .map_err(db_err)?;
        Ok(())
    }

    /// Forget the job's state; the next run starts from the beginning. Returns whether there
    /// was one.
    ///
    /// The state is replaced by a reset marker (no state, run [`RESET_RUN_ID`], the time):
    /// the runner then ignores what the writer committed *before* the reset — otherwise the
    /// writer's copy would win over an empty state store and the reset would do nothing.
    pub fn reset_state(&self, job: &str) -> Result<bool> {
        let had = matches!(self.load_state(job)?, Some(s) if s.run_id != RESET_RUN_ID);
        self.put_state(job, RESET_RUN_ID, None)?;
        Ok(had)
    }

    /// Record the start of a run.
    pub fn start_run(&self, job: &str, run_id: &str) -> Result<()> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.start_run(job, run_id),
            Inner::Sqlite { conn, .. } => conn,
        };
        conn.execute(
            "INSERT INTO runs (run_id, job, started_at, status) VALUES (?1, ?2, ?3, 'running')",
            params![run_id, job, now()],
        )
        .map_err(db_err)?;
        Ok(())
    }

    /// Record another attempt of a run.
    pub fn set_attempts(&self, run_id: &str, attempts: u32) -> Result<()> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.set_attempts(run_id, attempts),
            Inner::Sqlite { conn, .. } => conn,
        };
        conn.execute(
            "UPDATE runs SET attempts = ?2 WHERE run_id = ?1",
            params![run_id, attempts],
        )
        .map_err(db_err)?;
        Ok(())
    }

    /// Record the end of a run. `error` must already be redacted.
    pub fn finish_run(&self, run_id: &str, status: RunStatus, error: Option<&str>) -> Result<()> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.finish_run(run_id, status, error),
            Inner::Sqlite { conn, .. } => conn,
        };
        conn.execute(
            "UPDATE runs SET status = ?2, ended_at = ?3, error = ?4 WHERE run_id = ?1",
            params![run_id, status.as_str(), now(), error],
        )
        .map_err(db_err)?;
        Ok(())
    }

    /// Record the end of a maintenance run with its counts and reports. `error` must already
    /// be redacted.
    pub fn finish_maintenance(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
        counts: (u64, u64, u64),
        details: &serde_json::Value,
    ) -> Result<()> {
        let details = details.to_string();
        let (rows, bytes, commits) = (counts.0 as i64, counts.1 as i64, counts.2 as i64);
        let conn = match &self.inner {
            Inner::Postgres(pg) => {
                return pg.finish_maintenance(
                    run_id,
                    status,
                    error,
                    (rows, bytes, commits),
                    &details,
                )
            }
            Inner::Sqlite { conn, .. } => conn,
        };
        conn.execute(
            "UPDATE runs SET status = ?2, ended_at = ?3, error = ?4, rows = ?5, bytes = ?6,
                 commits = ?7, details = ?8 WHERE run_id = ?1",
            params![
                run_id,
                status.as_str(),
                now(),
                error,
                rows,
                bytes,
                commits,
                details
            ],
        )
        .map_err(db_err)?;
        Ok(())
    }

    /// The state keys of `job` followed by `sep`: `#` its shards' (`job#I/N`), `/` its
    /// streams' (`job/STREAM`).
    pub fn keys_under(&self, job: &str, sep: char) -> Result<Vec<String>> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.keys_under(job, sep),
            Inner::Sqlite { conn, .. } => conn,
        };
        let mut stmt = conn
            .prepare(
                "SELECT job FROM job_state WHERE substr(job, 1, length(?1) + 1) = ?1 || ?2
                 ORDER BY job",
            )
            .map_err(db_err)?;
        let keys = stmt
            .query_map(params![job, sep.to_string()], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err)?;
        Ok(keys)
    }

    /// The committed states of the streams of a job with `tables:` (keys `job/STREAM`), by
    /// stream name.
    pub fn stream_states(&self, job: &str) -> Result<Vec<(String, StoredState)>> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.stream_states(job),
            Inner::Sqlite { conn, .. } => conn,
        };
        let mut stmt = conn
            .prepare(
                "SELECT job FROM job_state WHERE substr(job, 1, length(?1) + 1) = ?1 || '/'
                 ORDER BY job",
            )
            .map_err(db_err)?;
        let keys = stmt
            .query_map(params![job], |r| r.get::<_, String>(0))
            .map_err(db_err)?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err)?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(s) = self.load_state(&k)? {
                out.push((k[job.len() + 1..].to_string(), s));
            }
        }
        Ok(out)
    }

    /// The job's runs, its streams' runs (`job/STREAM`) and maintenance runs (`job#maintain`),
    /// newest first.
    pub fn runs(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let conn = match &self.inner {
            Inner::Postgres(pg) => return pg.runs(job, limit),
            Inner::Sqlite { conn, .. } => conn,
        };
        let mut stmt = conn
            .prepare(
                "SELECT run_id, job, started_at, ended_at, status, attempts, rows, bytes, commits, error,
                        details
                 FROM runs WHERE job = ?1 OR job = ?3 OR (job >= ?1 || '/' AND job < ?1 || '0')
                 -- a range, not substr(): the (job, started_at) index serves it (BINARY order)
                 ORDER BY started_at DESC, run_id DESC LIMIT ?2",
            )
            .map_err(db_err)?;
        let maintain = format!("{job}{MAINTAIN_SUFFIX}");
        let rows = stmt
            .query_map(params![job, limit as i64, maintain], |r| {
                Ok(RunRecord {
                    run_id: r.get(0)?,
                    job: r.get(1)?,
                    started_at: r.get(2)?,
                    ended_at: r.get(3)?,
                    status: RunStatus::parse(&r.get::<_, String>(4)?),
                    attempts: r.get(5)?,
                    rows: r.get::<_, i64>(6)? as u64,
                    bytes: r.get::<_, i64>(7)? as u64,
                    commits: r.get::<_, i64>(8)? as u64,
                    error: r.get(9)?,
                    details: r
                        .get::<_, Option<String>>(10)?
                        .and_then(|d| serde_json::from_str(&d).ok()),
                })
            })
            .map_err(db_err)?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(db_err)
    }
}

/// A lock file's name for key `name` (`job`, `job#I/N`, `job/STREAM`): `%` and `/`
/// percent-encoded, so distinct keys never share a file.
fn lock_file_name(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn state_runs_and_lock() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        let lock = s.lock("j").unwrap();
        let e = s.lock("j").unwrap_err();
        assert!(e.to_string().contains("already running"), "{e}");
        assert_eq!(e.kind(), dativo_core::ErrorKind::Busy);
        assert!(e.is_busy() && !e.is_retryable());
        s.start_run("j", "r1").unwrap();
        s.save_commit("j", "r1", Some(&json!({"c": 1})), 10, 100)
            .unwrap();
        s.save_commit("j", "r1", Some(&json!({"c": 2})), 5, 50)
            .unwrap();
        assert_eq!(
            s.load_state("j").unwrap().unwrap().state,
            Some(json!({"c": 2}))
        );
        s.finish_run("j-not-there", RunStatus::Failed, None)
            .unwrap();
        s.start_run("j", "r2").unwrap();
        drop(lock);
        // r2 never finished: the next lock marks it interrupted.
        let _lock = s.lock("j").unwrap();
        let runs = s.runs("j", 10).unwrap();
        assert_eq!(runs.len(), 2);
        let r1 = runs.iter().find(|r| r.run_id == "r1").unwrap();
        assert_eq!((r1.rows, r1.bytes, r1.commits), (15, 150, 2));
        let r2 = runs.iter().find(|r| r.run_id == "r2").unwrap();
        assert_eq!(r2.status, RunStatus::Interrupted);
        assert!(s.reset_state("j").unwrap());
        let marker = s.load_state("j").unwrap().unwrap();
        assert_eq!((marker.state, marker.run_id.as_str()), (None, RESET_RUN_ID));
        assert!(
            !s.reset_state("j").unwrap(),
            "a second reset finds no state"
        );
    }

    #[test]
    fn shards_run_together_but_never_beside_an_unsharded_run() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateStore::open(dir.path()).unwrap();
        let a = s.lock("j#0/2").unwrap();
        let b = s.lock("j#1/2").unwrap();
        assert!(s.lock("j#1/2").unwrap_err().is_busy(), "one shard twice");
        assert!(s.lock("j").unwrap_err().is_busy());
        let e = s.lock("j").unwrap_err().to_string();
        assert!(e.contains("is already running"), "{e}");
        drop((a, b));
        let whole = s.lock("j").unwrap();
        let e = s.lock("j#0/2").unwrap_err().to_string();
        assert!(e.contains("unsharded run"), "{e}");
        drop(whole);
        assert!(s.lock("j#0/2").is_ok());
    }
}
