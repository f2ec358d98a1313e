//! The runner end to end with real built-ins: the `file` reader (CSV files in a temporary
//! directory) into the `parquet` writer, with the SQLite state store — and the PostgreSQL one
//! at `DATIVO_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use dativo_core::job::Job;
use dativo_core::ErrorKind;
use dativo_runtime::{
    run, CancelToken, NoObserver, Observer, RunEvent, RunOptions, RunStatus, StateStore,
};

/// A CSV file of `id,name` rows.
fn write_csv(dir: &Path, name: &str, ids: std::ops::RangeInclusive<i64>) {
    std::fs::create_dir_all(dir.join("in")).unwrap();
    let mut text = String::from("id,name\n");
    for i in ids {
        text.push_str(&format!("{i},name-{i}\n"));
    }
    std::fs::write(dir.join("in").join(name), text).unwrap();
}

/// A job from `dir/in/*.csv` into `dir/lake`, committing every `rows` rows.
fn job(dir: &Path, name: &str, rows: u64) -> Job {
    let text = format!(
        "name: {name}
source:
  reader: file
  config:
    path: {in_dir}/*.csv
    batch_size: 10
target:
  writer: parquet
  config:
    path: {lake}
checkpoint:
  rows: {rows}
retry:
  attempts: 1
",
        in_dir = dir.join("in").display(),
        lake = dir.join("lake").display(),
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    Job::load(&path).unwrap()
}

fn opts<'a>(observer: &'a dyn Observer, cancel: CancelToken) -> RunOptions<'a> {
    RunOptions {
        cancel,
        observer,
        run_id: None,
        shard: Default::default(),
    }
}

/// The committed Parquet files of the lake.
fn lake_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir.join("lake")) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    files
}

/// (rows, sum of ids) over every committed Parquet file.
fn lake_rows(dir: &Path) -> (usize, i64) {
    use arrow::array::{Array, Int64Array};
    let (mut rows, mut sum) = (0, 0);
    for f in lake_files(dir) {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            File::open(&f).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        for b in reader {
            let b = b.unwrap();
            rows += b.num_rows();
            let ids = b
                .column_by_name("id")
                .unwrap()
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap();
            sum += ids.iter().flatten().sum::<i64>();
            assert_eq!(ids.null_count(), 0);
        }
    }
    (rows, sum)
}

/// Checks on every event that the state store holds exactly what was committed last: the state
/// advances only after a commit, never with a batch.
struct StateWatch {
    store: Mutex<StateStore>,
    job: String,
    committed: Mutex<Option<Value>>,
    batches: Mutex<u64>,
    problems: Mutex<Vec<String>>,
}

impl StateWatch {
    fn new(dir: &Path, job: &str) -> Self {
        StateWatch {
            store: Mutex::new(StateStore::open(dir).unwrap()),
            job: job.to_string(),
            committed: Mutex::new(None),
            batches: Mutex::new(0),
            problems: Mutex::new(Vec::new()),
        }
    }
    fn stored(&self) -> Option<Value> {
        self.store
            .lock()
            .unwrap()
            .load_state(&self.job)
            .unwrap()
            .and_then(|s| s.state)
    }
}

impl Observer for StateWatch {
    fn on_event(&self, event: &RunEvent<'_>) {
        match event {
            RunEvent::Batch { .. } => {
                *self.batches.lock().unwrap() += 1;
                let want = self.committed.lock().unwrap().clone();
                let got = self.stored();
                if got != want {
                    self.problems.lock().unwrap().push(format!(
                        "after a batch the store has {got:?}, committed {want:?}"
                    ));
                }
            }
            RunEvent::Committed { state, .. } => {
                let got = self.stored();
                if got.as_ref() != *state {
                    self.problems
                        .lock()
                        .unwrap()
                        .push(format!("after a commit of {state:?} the store has {got:?}"));
                }
                *self.committed.lock().unwrap() = state.cloned();
            }
            _ => {}
        }
    }
}

#[test]
fn a_run_commits_every_row_and_the_next_run_is_incremental() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_csv(d, "a.csv", 1..=25);
    write_csv(d, "b.csv", 26..=40);
    let job = job(d, "orders", 10);
    let state_dir = d.join("state");
    let store = StateStore::open(&state_dir).unwrap();
    let watch = StateWatch::new(&state_dir, "orders");

    let s = run(&job, &store, &opts(&watch, CancelToken::new())).unwrap();
    assert_eq!(s.status, RunStatus::Succeeded, "{:?}", s.error);
    assert_eq!(s.rows, 40);
    assert!(s.commits >= 4, "a commit every 10 rows: {}", s.commits);
    assert!(*watch.batches.lock().unwrap() >= 4);
    assert_eq!(*watch.problems.lock().unwrap(), Vec::<String>::new());
    assert_eq!(lake_rows(d), (40, (1..=40).sum()));
    let state = store.load_state("orders").unwrap().unwrap();
    assert_eq!(state.run_id, s.run_id);
    assert_eq!(Some(&state.state.clone().unwrap()), s.state.as_ref());

    // Nothing new: nothing read, nothing written.
    let s = run(&job, &store, &opts(&NoObserver, CancelToken::new())).unwrap();
    assert_eq!((s.status, s.rows), (RunStatus::Succeeded, 0));
    assert_eq!(lake_rows(d).0, 40);

    // A new file: only it is read.
    write_csv(d, "c.csv", 41..=50);
    let s = run(&job, &store, &opts(&NoObserver, CancelToken::new())).unwrap();
    assert_eq!((s.status, s.rows), (RunStatus::Succeeded, 10));
    assert_eq!(lake_rows(d), (50, (1..=50).sum()));
    let runs = store.runs("orders", 10).unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.iter().all(|r| r.status == RunStatus::Succeeded));
    assert_eq!(runs.iter().map(|r| r.rows).sum::<u64>(), 50);
}

/// Cancels the run at its first batch.
struct CancelAtFirstBatch(CancelToken);

impl Observer for CancelAtFirstBatch {
    fn on_event(&self, event: &RunEvent<'_>) {
        if let RunEvent::Batch { .. } = event {
            self.0.cancel();
        }
    }
}

#[test]
fn a_cancelled_run_stops_and_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..5 {
        write_csv(d, &format!("{i}.csv"), i * 100 + 1..=i * 100 + 100);
    }
    let job = job(d, "cancelled", 1_000_000);
    let store = StateStore::open(&d.join("state")).unwrap();
    let cancel = CancelToken::new();
    let observer = CancelAtFirstBatch(cancel.clone());
    let s = run(&job, &store, &opts(&observer, cancel)).unwrap();
    assert_eq!(s.status, RunStatus::Cancelled);
    assert_eq!(
        s.error.as_ref().map(|e| e.kind()),
        Some(ErrorKind::Cancelled)
    );
    assert_eq!((s.rows, s.commits), (0, 0));
    assert!(lake_files(d).is_empty(), "{:?}", lake_files(d));
    assert_eq!(store.load_state("cancelled").unwrap(), None);
    assert_eq!(
        store.runs("cancelled", 1).unwrap()[0].status,
        RunStatus::Cancelled
    );
    // The next run reads everything.
    let s = run(&job, &store, &opts(&NoObserver, CancelToken::new())).unwrap();
    assert_eq!((s.status, s.rows), (RunStatus::Succeeded, 500));
}

#[test]
fn a_job_locked_by_another_run_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_csv(d, "a.csv", 1..=5);
    let job = job(d, "locked", 10);
    let store = StateStore::open(&d.join("state")).unwrap();
    let other = StateStore::open(&d.join("state")).unwrap();
    let held = other.lock("locked").unwrap();
    let e = run(&job, &store, &opts(&NoObserver, CancelToken::new())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.is_busy() && !e.is_retryable());
    assert_eq!(e.kind().exit_code(), 7);
    assert!(e.to_string().contains("is already running"), "{e}");
    assert!(lake_files(d).is_empty());
    drop(held);
    let s = run(&job, &store, &opts(&NoObserver, CancelToken::new())).unwrap();
    assert_eq!((s.status, s.rows), (RunStatus::Succeeded, 5));
}

#[test]
fn a_cancel_token_wakes_its_waiters() {
    let t = CancelToken::new();
    assert!(!t.wait_timeout(Duration::from_millis(20)));
    let waiter = {
        let t = t.clone();
        std::thread::spawn(move || {
            let started = Instant::now();
            let cancelled = t.wait_timeout(Duration::from_secs(30));
            (cancelled, started.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    t.cancel();
    let (cancelled, waited) = waiter.join().unwrap();
    assert!(cancelled);
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(t.is_cancelled() && t.wait_timeout(Duration::from_secs(30)));
    t.wait();
}

// ------------------------------------------------------------------ PostgreSQL state store

fn pg_url() -> String {
    std::env::var("DATIVO_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A job name no other test run uses.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}_{}_{nanos}", std::process::id())
}

/// Removes the job's rows from the shared state-store tables.
struct PgCleanup(String);

impl Drop for PgCleanup {
    fn drop(&mut self) {
        let job = self.0.clone();
        let _ = dativo_core::rt::runtime().block_on(async move {
            let c = dativo_pg::connect_url(&pg_url()).await?;
            c.execute("DELETE FROM dativo_job_state WHERE job = $1", &[&job])
                .await
                .map_err(|e| dativo_core::Error::internal(e.to_string()))?;
            c.execute("DELETE FROM dativo_runs WHERE job = $1", &[&job])
                .await
                .map_err(|e| dativo_core::Error::internal(e.to_string()))?;
            Ok::<_, dativo_core::Error>(())
        });
    }
}

#[test]
fn postgres_state_store_runs_locks_and_loses_locks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = unique("dativo_rt_test");
    let _cleanup = PgCleanup(name.clone());
    write_csv(d, "a.csv", 1..=30);
    let job = job(d, &name, 10);
    let url = pg_url();
    let store = StateStore::open_with(&d.join("unused"), Some(&url)).unwrap();

    let s = run(&job, &store, &opts(&NoObserver, CancelToken::new())).unwrap();
    assert_eq!(
        (s.status, s.rows),
        (RunStatus::Succeeded, 30),
        "{:?}",
        s.error
    );
    let stored = store.load_state(&name).unwrap().unwrap();
    assert_eq!(stored.run_id, s.run_id);
    assert_eq!(stored.state, s.state);
    let runs = store.runs(&name, 5).unwrap();
    assert_eq!((runs.len(), runs[0].rows), (1, 30));

    // Another process (here: another store) holds the job.
    let other = StateStore::open_with(&d.join("unused"), Some(&url)).unwrap();
    let lock = other.lock(&name).unwrap();
    let e = run(&job, &store, &opts(&NoObserver, CancelToken::new())).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    lock.ensure_held().unwrap();

    // The lock's session ends under the run (a failover, an idle timeout): not committing.
    let key = format!("dativo-job:{name}");
    let killed: i64 = dativo_core::rt::runtime()
        .block_on(async {
            let c = dativo_pg::connect_url(&url).await.unwrap();
            c.query_one(
                "WITH k AS (SELECT hashtextextended($1, 0) AS key)
                 SELECT count(pg_terminate_backend(l.pid))
                 FROM pg_locks l, k
                 WHERE l.locktype = 'advisory' AND l.objsubid = 1
                   AND l.objid::bigint = (k.key & 4294967295)
                   AND l.classid::bigint = ((k.key >> 32) & 4294967295)",
                &[&key],
            )
            .await
        })
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    let e = lock.ensure_held().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(!e.is_retryable());
    assert!(e.to_string().contains("lost the job's lock"), "{e}");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the driver's error is kept"
    );
    drop(lock);
    // Free again: the lock went with the session.
    drop(store.lock(&name).unwrap());
}
