//! The PostgreSQL state store: the same records as the SQLite one, shared by every dativo
//! process that points at the database; per-job locks are session advisory locks.

use serde_json::Value;
use tokio_postgres::Client;

use dativo_core::{secrets, Error, Result};
use dativo_pg::{connect_url, runtime};

use crate::state_store::{now, JobLock, RunRecord, RunStatus, StoredState};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS dativo_job_state (
    job TEXT PRIMARY KEY,
    state TEXT,
    run_id TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dativo_runs (
    run_id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    rows BIGINT NOT NULL DEFAULT 0,
    bytes BIGINT NOT NULL DEFAULT 0,
    commits BIGINT NOT NULL DEFAULT 0,
    error TEXT
);
DO $$ BEGIN
  -- Only when missing: ALTER TABLE takes an ACCESS EXCLUSIVE lock even when the column exists,
  -- and every open (each `serve` page and run) would wait behind the readers of dativo_runs.
  IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                 AND table_name = 'dativo_runs' AND column_name = 'details') THEN
    ALTER TABLE dativo_runs ADD COLUMN details TEXT;
  END IF;
END $$;
CREATE INDEX IF NOT EXISTS dativo_runs_by_job ON dativo_runs(job, started_at);";

/// Serializes schema creation across processes (CREATE … IF NOT EXISTS can still collide).
const SCHEMA_LOCK: i64 = 0x6461_7469_766f_0001;

pub(crate) struct PgStore {
    url: String,
    client: Client,
}

fn err(e: tokio_postgres::Error) -> Error {
    dativo_pg::map_error(e, "state store")
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    // Callers are run threads, never runtime workers.
    runtime().block_on(f)
}

/// Register the URL's password (not the whole URL, which messages show without it).
fn register_password(url: &str) {
    if let Some((_, rest)) = url.split_once("://") {
        let authority = rest.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, pw)) = userinfo.split_once(':') {
                secrets::register(pw);
            }
        }
    }
}

impl PgStore {
    pub(crate) fn open(url: &str) -> Result<PgStore> {
        register_password(url);
        let client =
            block(connect_url(url)).map_err(|e| e.context("opening the PostgreSQL state store"))?;
        block(async {
            client
                .execute("SELECT pg_advisory_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            let r = client.batch_execute(SCHEMA).await;
            client
                .execute("SELECT pg_advisory_unlock($1)", &[&SCHEMA_LOCK])
                .await?;
            r
        })
        .map_err(err)?;
        Ok(PgStore {
            url: url.to_string(),
            client,
        })
    }

    pub(crate) fn describe(&self) -> String {
        secrets::redact_url_passwords(&self.url)
    }

    pub(crate) fn lock(&self, job: &str) -> Result<JobLock> {
        // A connection of its own: the lock lives exactly as long as this session.
        let session = block(connect_url(&self.url))?;
        // As with file locks: a shard holds the job's lock shared and its own exclusively.
        let (base, sharded) = match job.split_once('#') {
            Some((b, _)) => (b, true),
            None => (job, false),
        };
        let base_key = format!("dativo-job:{base}");
        let sql = if sharded {
            "SELECT pg_try_advisory_lock_shared(hashtextextended($1, 0))"
        } else {
            "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
        };
        let got: bool = block(session.query_one(sql, &[&base_key]))
            .map_err(err)?
            .get(0);
        let busy = |who: &str| {
            Error::busy(format!(
                "job `{job}` is already running ({who}; another dativo process holds its lock in the PostgreSQL state store)"
            ))
        };
        if !got {
            return Err(busy(if sharded {
                "an unsharded run of the job is going on"
            } else {
                "the job, or shards of it"
            }));
        }
        if sharded {
            let key = format!("dativo-job:{job}");
            let got: bool = block(session.query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 0))",
                &[&key],
            ))
            .map_err(err)?
            .get(0);
            if !got {
                return Err(busy("this shard"));
            }
        }
        block(self.client.execute(
            "UPDATE dativo_runs SET status = 'interrupted', ended_at = COALESCE(ended_at, $2),
               error = COALESCE(error, 'the process ended during the run (killed or crashed)')
             WHERE job = $1 AND status = 'running'",
            &[&job, &now()],
        ))
        .map_err(err)?;
        Ok(JobLock::session(
            session,
            format!("a PostgreSQL advisory lock in {}", self.describe()),
        ))
    }

    pub(crate) fn load_state(&self, job: &str) -> Result<Option<StoredState>> {
        let row = block(self.client.query_opt(
            "SELECT state, run_id, updated_at FROM dativo_job_state WHERE job = $1",
            &[&job],
        ))
        .map_err(err)?;
        row.map(|r| {
            let state: Option<String> = r.get(0);
            let state = state
                .map(|s| serde_json::from_str(&s))
                .transpose()
                .map_err(|e| {
                    Error::data(format!("stored state of `{job}` is corrupt: {e}")).with_source(e)
                })?;
            Ok(StoredState {
                state,
                run_id: r.get(1),
                updated_at: r.get(2),
            })
        })
        .transpose()
    }

    pub(crate) fn keys_under(&self, job: &str, sep: char) -> Result<Vec<String>> {
        let rows = block(self.client.query(
            "SELECT job FROM dativo_job_state WHERE left(job, length($1) + 1) = $1 || $2 ORDER BY job",
            &[&job, &sep.to_string()],
        ))
        .map_err(err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    pub(crate) fn stream_states(&self, job: &str) -> Result<Vec<(String, StoredState)>> {
        let rows = block(self.client.query(
            "SELECT job, state, run_id, updated_at FROM dativo_job_state
             WHERE left(job, length($1) + 1) = $1 || '/' ORDER BY job",
            &[&job],
        ))
        .map_err(err)?;
        rows.iter()
            .map(|r| {
                let key: String = r.get(0);
                let state = r
                    .get::<_, Option<String>>(1)
                    .map(|s| serde_json::from_str(&s))
                    .transpose()
                    .map_err(|e| {
                        Error::data(format!("stored state of `{key}` is corrupt: {e}"))
                            .with_source(e)
                    })?;
                let stream = key[job.len() + 1..].to_string();
                Ok((
                    stream,
                    StoredState {
                        state,
                        run_id: r.get(2),
                        updated_at: r.get(3),
                    },
                ))
            })
            .collect()
    }

    pub(crate) fn save_commit(
        &self,
        job: &str,
        run_id: &str,
        state: Option<&Value>,
        rows: u64,
        bytes: u64,
    ) -> Result<()> {
        let state = state.map(|s| s.to_string());
        block(async {
            self.client.batch_execute("BEGIN").await?;
            let r = async {
                self.client
                    .execute(
                        "INSERT INTO dativo_job_state (job, state, run_id, updated_at)
                         VALUES ($1, $2, $3, $4)
                         ON CONFLICT (job) DO UPDATE SET state = $2, run_id = $3, updated_at = $4",
                        &[&job, &state, &run_id, &now()],
                    )
                    .await?;
                self.client
                    .execute(
                        "UPDATE dativo_runs SET rows = rows + $2, bytes = bytes + $3,
                         commits = commits + 1 WHERE run_id = $1",
                        &[&run_id, &(rows as i64), &(bytes as i64)],
                    )
                    .await
            }
            .await;
            match r {
                Ok(_) => self.client.batch_execute("COMMIT").await,
                Err(e) => {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            }
        })
        .map_err(err)
    }

    pub(crate) fn put_state(&self, job: &str, run_id: &str, state: Option<&Value>) -> Result<()> {
        let state = state.map(|s| s.to_string());
        block(self.client.execute(
            "INSERT INTO dativo_job_state (job, state, run_id, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (job) DO UPDATE SET state = $2, run_id = $3, updated_at = $4",
            &[&job, &state, &run_id, &now()],
        ))
        .map_err(err)?;
        Ok(())
    }

    pub(crate) fn start_run(&self, job: &str, run_id: &str) -> Result<()> {
        block(self.client.execute(
            "INSERT INTO dativo_runs (run_id, job, started_at, status) VALUES ($1, $2, $3, 'running')",
            &[&run_id, &job, &now()],
        ))
        .map_err(err)?;
        Ok(())
    }

    pub(crate) fn set_attempts(&self, run_id: &str, attempts: u32) -> Result<()> {
        block(self.client.execute(
            "UPDATE dativo_runs SET attempts = $2 WHERE run_id = $1",
            &[&run_id, &(attempts as i32)],
        ))
        .map_err(err)?;
        Ok(())
    }

    pub(crate) fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
    ) -> Result<()> {
        block(self.client.execute(
            "UPDATE dativo_runs SET status = $2, ended_at = $3, error = $4 WHERE run_id = $1",
            &[&run_id, &status.as_str(), &now(), &error],
        ))
        .map_err(err)?;
        Ok(())
    }

    pub(crate) fn finish_maintenance(
        &self,
        run_id: &str,
        status: RunStatus,
        error: Option<&str>,
        counts: (i64, i64, i64),
        details: &str,
    ) -> Result<()> {
        block(self.client.execute(
            "UPDATE dativo_runs SET status = $2, ended_at = $3, error = $4, rows = $5, bytes = $6,
                 commits = $7, details = $8 WHERE run_id = $1",
            &[
                &run_id,
                &status.as_str(),
                &now(),
                &error,
                &counts.0,
                &counts.1,
                &counts.2,
                &details,
            ],
        ))
        .map_err(err)?;
        Ok(())
    }

    pub(crate) fn runs(&self, job: &str, limit: usize) -> Result<Vec<RunRecord>> {
        let maintain = format!("{job}{}", crate::state_store::MAINTAIN_SUFFIX);
        let rows = block(self.client.query(
            "SELECT run_id, job, started_at, ended_at, status, attempts, rows, bytes, commits, error,
                    details
             FROM dativo_runs WHERE job = $1 OR job = $3 OR left(job, length($1) + 1) = $1 || '/'
             ORDER BY started_at DESC, run_id DESC LIMIT $2",
            &[&job, &(limit as i64), &maintain],
        ))
        .map_err(err)?;
        Ok(rows
            .iter()
            .map(|r| RunRecord {
                run_id: r.get(0),
                job: r.get(1),
                started_at: r.get(2),
                ended_at: r.get(3),
                status: RunStatus::parse(r.get::<_, &str>(4)),
                attempts: r.get::<_, i32>(5) as u32,
                rows: r.get::<_, i64>(6) as u64,
                bytes: r.get::<_, i64>(7) as u64,
                commits: r.get::<_, i64>(8) as u64,
                error: r.get(9),
                details: r
                    .get::<_, Option<String>>(10)
                    .and_then(|d| serde_json::from_str(&d).ok()),
            })
            .collect())
    }
}
