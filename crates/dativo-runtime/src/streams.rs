//! Running a job with `tables:`: discover the source's tables, plan one stream per selected
//! table ([`dativo_core::streams`]), and run the streams — largest first, at most
//! `max_parallel_streams` at a time and within `max_connections` — each through
//! [`crate::run`] as its own job `JOB/STREAM`: its own state, lock, retries, run record and
//! commits. A stream that fails does not stop or undo the others; the job's run (recorded
//! under `JOB`, holding the job's lock so two runs of the job never overlap) fails when any
//! stream did, and the next run finishes what is unfinished: every stream resumes from its
//! own committed state.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use dativo_core::job::Implementation;
use dativo_core::job::Job;
use dativo_core::streams::{plan_streams, StreamPlan};
use dativo_core::{secrets, Error, ErrorKind, Result, Shard};

use crate::runner::{RunOptions, RunSummary};
use crate::state_store::{RunStatus, StateStore};

/// The streams `job` (with `tables:`) would load now: its reader lists the source's tables,
/// the selection and overrides apply. Connects to the source.
pub fn discover(job: &Job) -> Result<Vec<StreamPlan>> {
    crate::implementations::reader_for(job)?;
    if dativo_core::streams::is_named(job) {
        return dativo_core::streams::plan_named_streams(job);
    }
    let Implementation::Builtin(name) = &job.config.source.reader else {
        return Err(job.error_at(
            "source.config.tables",
            "`tables` applies to the built-in SQL readers",
        ));
    };
    let discover = dativo_connectors::reader(name.as_str())
        .and_then(|r| r.discover)
        .ok_or_else(|| {
            job.error_at(
                "source.config.tables",
                &format!("reader '{name}' cannot list tables"),
            )
        })?;
    let tables = discover(&job.config.source.config)
        .map_err(|e| e.context(format!("listing the tables of job `{}`", job.name())))?;
    plan_streams(job, tables)
}

/// Whether `shard` runs stream `stream`: FNV-1a of the name, mixed (splitmix64's finalizer:
/// FNV's low bits alone follow the parity of the name's bytes, so names alike would land
/// on one shard), modulo the shard count.
fn owns_stream(shard: Shard, stream: &str) -> bool {
    if shard.count <= 1 {
        return true;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.as_bytes() {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    h % shard.count as u64 == shard.index as u64
}

/// How one stream ended.
#[derive(Debug)]
pub struct StreamOutcome {
    /// `schema.table`.
    pub stream: String,
    /// The target as rendered.
    pub target: String,
    /// The run's summary; `Err` when it could not start (its config, its lock).
    pub result: Result<RunSummary>,
}

impl StreamOutcome {
    /// Whether the stream's run succeeded.
    pub fn succeeded(&self) -> bool {
        matches!(&self.result, Ok(s) if s.status == RunStatus::Succeeded)
    }

    /// The error that ended it, if any.
    pub fn error(&self) -> Option<&Error> {
        match &self.result {
            Ok(s) => s.error.as_ref(),
            Err(e) => Some(e),
        }
    }
}

/// How a job with `tables:` ended.
#[derive(Debug)]
pub struct JobSummary {
    /// The job run's id (its record in `dativo runs`).
    pub run_id: String,
    /// Succeeded when every stream did.
    pub status: RunStatus,
    /// Each stream run (or not started, when cancelled first), largest first.
    pub streams: Vec<StreamOutcome>,
    /// Streams with a committed state whose table the source no longer has (or the
    /// selection no longer selects): reported, not an error.
    pub gone: Vec<String>,
    /// Streams another shard runs (`--shard I/N`).
    pub other_shards: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// Why the job failed as a whole (discovery), or the first stream's error.
    pub error: Option<Error>,
}

impl JobSummary {
    /// Rows committed by every stream.
    pub fn rows(&self) -> u64 {
        self.ok().map(|s| s.rows).sum()
    }

    /// Bytes committed by every stream.
    pub fn bytes(&self) -> u64 {
        self.ok().map(|s| s.bytes).sum()
    }

    fn ok(&self) -> impl Iterator<Item = &RunSummary> {
        self.streams.iter().filter_map(|s| s.result.as_ref().ok())
    }

    /// The job's run as one [`RunSummary`] (totals over the streams), for callers that
    /// report runs alike (`serve`).
    pub fn into_run_summary(self) -> RunSummary {
        let (rows, bytes) = (self.rows(), self.bytes());
        let arrow_bytes = self.ok().map(|s| s.arrow_bytes).sum();
        let commits = self.ok().map(|s| s.commits).sum();
        let attempts = self.ok().map(|s| s.attempts).max().unwrap_or(1);
        RunSummary {
            run_id: self.run_id,
            status: self.status,
            attempts,
            rows,
            bytes,
            arrow_bytes,
            commits,
            files: Vec::new(),
            elapsed: self.elapsed,
            error: self.error,
            state: None,
        }
    }
}

/// A budget of source connections shared by the streams running at once.
struct Budget {
    total: usize,
    free: Mutex<usize>,
    freed: Condvar,
}

impl Budget {
    fn take(&self, n: usize) {
        let mut free = self.free.lock().expect("not poisoned");
        while *free < n {
            free = self.freed.wait(free).expect("not poisoned");
        }
        *free -= n;
    }

    fn give(&self, n: usize) {
        *self.free.lock().expect("not poisoned") += n;
        self.freed.notify_all();
    }
}

/// Run every stream of `job` (a job with `tables:`). `store` records the job's run and holds
/// its lock; `open_store` opens a store for each stream worker (stores are not shared
/// between threads). With `opts.shard`, this process runs the streams its shard owns.
pub fn run_streams(
    job: &Job,
    store: &StateStore,
    open_store: &(dyn Fn() -> Result<StateStore> + Sync),
    opts: &RunOptions<'_>,
) -> Result<JobSummary> {
    let key = opts.shard.key(job.name());
    let lock = store.lock(&key)?;
    let run_id = opts
        .run_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    store.start_run(&key, &run_id)?;
    let started = Instant::now();
    let plans = match discover(job) {
        Ok(p) => p,
        Err(e) => {
            let msg = secrets::scrub(&e.to_string());
            store.finish_run(&run_id, RunStatus::Failed, Some(&msg))?;
            return Ok(JobSummary {
                run_id,
                status: RunStatus::Failed,
                streams: Vec::new(),
                gone: Vec::new(),
                other_shards: 0,
                elapsed: started.elapsed(),
                error: Some(e),
            });
        }
    };
    let known: std::collections::HashSet<&str> = plans.iter().map(|p| p.stream.as_str()).collect();
    let gone: Vec<String> = store
        .stream_states(job.name())?
        .into_iter()
        .map(|(s, _)| s)
        .filter(|s| !known.contains(s.as_str()))
        .collect();
    for g in &gone {
        tracing::warn!(job = job.name(), stream = %g, "a stream with committed state is gone from the source (or no longer selected): skipped; its state and data stay");
    }
    let total = plans.len();
    let plans: Vec<StreamPlan> = plans
        .into_iter()
        .filter(|p| owns_stream(opts.shard, &p.stream))
        .collect();
    let other_shards = total - plans.len();
    tracing::info!(
        job = job.name(),
        streams = plans.len(),
        other_shards,
        parallel = job.config.max_parallel_streams,
        "running streams"
    );

    let width = job.config.max_parallel_streams.clamp(1, plans.len().max(1));
    let connections = |p: &StreamPlan| p.partitions.max(1) as usize + 1;
    let budget = job.config.max_connections.map(|n| Budget {
        total: n.max(1),
        free: Mutex::new(n.max(1)),
        freed: Condvar::new(),
    });
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<RunSummary>>>> =
        Mutex::new((0..plans.len()).map(|_| None).collect());
    lock.ensure_held()?;
    std::thread::scope(|scope| {
        for w in 0..width {
            let (plans, next, results, budget) = (&plans, &next, &results, &budget);
            std::thread::Builder::new()
                .name(format!("dativo-stream-{w}"))
                .spawn_scoped(scope, move || {
                    let worker_store = open_store();
                    loop {
                        if opts.cancel.is_cancelled() {
                            return;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = plans.get(i) else { return };
                        // A stream needing more than the whole budget waits for all of it.
                        let need = budget.as_ref().map(|b| {
                            let n = connections(p).min(b.total);
                            b.take(n);
                            n
                        });
                        let r = match &worker_store {
                            Ok(s) => crate::run(
                                &p.job,
                                s,
                                &RunOptions {
                                    cancel: opts.cancel.clone(),
                                    observer: opts.observer,
                                    run_id: None,
                                    shard: Shard::default(),
                                },
                            ),
                            Err(e) => Err(Error::new(e.kind(), e.to_string())),
                        };
                        if let (Some(b), Some(n)) = (budget.as_ref(), need) {
                            b.give(n);
                        }
                        match &r {
                            Ok(s) if s.status == RunStatus::Succeeded => tracing::info!(
                                job = job.name(), stream = %p.stream, rows = s.rows,
                                seconds = s.elapsed.as_secs_f64(), "stream done"
                            ),
                            Ok(s) => tracing::warn!(
                                job = job.name(), stream = %p.stream, status = s.status.as_str(),
                                error = %s.error.as_ref().map(|e| secrets::scrub(&e.to_string())).unwrap_or_default(),
                                "stream did not finish"
                            ),
                            Err(e) => tracing::warn!(
                                job = job.name(), stream = %p.stream,
                                error = %secrets::scrub(&e.to_string()), "stream could not start"
                            ),
                        }
                        results.lock().expect("not poisoned")[i] = Some(r);
                    }
                })
                .expect("spawning a stream worker");
        }
    });
    let results = results.into_inner().expect("not poisoned");
    let streams: Vec<StreamOutcome> = plans
        .iter()
        .zip(results)
        .map(|(p, r)| StreamOutcome {
            stream: p.stream.clone(),
            target: p.target.clone(),
            result: r
                .unwrap_or_else(|| Err(Error::cancelled("cancelled before the stream started"))),
        })
        .collect();
    let failed: Vec<&StreamOutcome> = streams.iter().filter(|s| !s.succeeded()).collect();
    let cancelled = opts.cancel.is_cancelled()
        || failed
            .iter()
            .any(|s| s.error().is_some_and(|e| e.kind() == ErrorKind::Cancelled));
    let status = if failed.is_empty() {
        RunStatus::Succeeded
    } else if cancelled {
        RunStatus::Cancelled
    } else {
        RunStatus::Failed
    };
    let error = failed.first().map(|s| {
        let first = s.error().map(|e| e.to_string()).unwrap_or_default();
        Error::new(
            s.error().map_or(ErrorKind::Internal, |e| e.kind()),
            format!(
                "{} of {} streams of job `{}` did not finish ({}); the others committed. First: `{}`: {first}. A re-run resumes the unfinished streams",
                failed.len(),
                streams.len(),
                job.name(),
                failed
                    .iter()
                    .take(5)
                    .map(|s| s.stream.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                s.stream,
            ),
        )
    });
    let details = json!({
        "streams": streams.iter().map(|s| {
            let (status, rows, bytes, seconds, run) = match &s.result {
                Ok(r) => (r.status.as_str(), r.rows, r.bytes, r.elapsed.as_secs_f64(), Value::from(r.run_id.clone())),
                Err(_) => ("not started", 0, 0, 0.0, Value::Null),
            };
            json!({
                "stream": s.stream, "target": s.target, "status": status, "rows": rows,
                "bytes": bytes, "seconds": (seconds * 1000.0).round() / 1000.0, "run_id": run,
                "error": s.error().map(|e| secrets::scrub(&e.to_string())),
            })
        }).collect::<Vec<_>>(),
        "gone": gone,
        "other_shards": other_shards,
    });
    let rows: u64 = streams
        .iter()
        .filter_map(|s| s.result.as_ref().ok())
        .map(|s| s.rows)
        .sum();
    let bytes: u64 = streams
        .iter()
        .filter_map(|s| s.result.as_ref().ok())
        .map(|s| s.bytes)
        .sum();
    let commits: u64 = streams
        .iter()
        .filter_map(|s| s.result.as_ref().ok())
        .map(|s| s.commits)
        .sum();
    let msg = error.as_ref().map(|e| secrets::scrub(&e.to_string()));
    store.finish_maintenance(
        &run_id,
        status,
        msg.as_deref(),
        (rows, bytes, commits),
        &details,
    )?;
    Ok(JobSummary {
        run_id,
        status,
        streams,
        gone,
        other_shards,
        elapsed: started.elapsed(),
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_spread_over_shards_and_each_has_one_owner() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("s_48209797f4.{}_{i:03}", ["inc", "full"][i % 2]))
            .collect();
        for count in [2u32, 3, 4] {
            let mut per = vec![0; count as usize];
            for n in &names {
                let owners: Vec<u32> = (0..count)
                    .filter(|&index| owns_stream(Shard { index, count }, n))
                    .collect();
                assert_eq!(owners.len(), 1, "{n}: owners {owners:?}");
                per[owners[0] as usize] += 1;
            }
            assert!(
                per.iter().all(|&k| k >= 40 / count as usize / 3),
                "{count} shards: {per:?}"
            );
        }
        assert!(owns_stream(Shard::default(), "anything"));
    }
}
