//! The parquet writer against the conformance suite and its crash-recovery protocol.

use std::fs;

use dativo_connectors::parquet::{
    commit_log::{Layout, STAGING},
    ParquetWriter,
};
use dativo_core::conformance::{check_open_writer, sample_batch};
use dativo_core::{Commit, OpenWriter, WriterContext};
use dativo_storage::Location;
use serde_json::json;

fn ctx() -> WriterContext {
    WriterContext::new("t", "r1", sample_batch().schema())
}

fn data_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    v.sort();
    v
}

#[test]
fn passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"path": dir.path().join("out").display().to_string(), "compression": "zstd"});
    let report = check_open_writer(|c, ctx| Ok(Box::new(ParquetWriter::open(c, ctx)?)), &cfg);
    assert!(report.passed(), "{report:?}");
    assert_eq!(data_files(&dir.path().join("out")).len(), 1);
}

#[test]
fn uncommitted_files_are_invisible_and_removed_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"path": dir.path().display().to_string()});
    let mut w = ParquetWriter::open(&cfg, &ctx()).unwrap();
    w.write(&sample_batch()).unwrap();
    let commit = |seq| Commit {
        state: Some(json!({"n": seq})),
        run_id: "r1".into(),
        sequence: seq,
    };
    w.commit(&commit(1)).unwrap();
    w.write(&sample_batch()).unwrap();
    w.write(&sample_batch()).unwrap();
    let _layout = Layout::new(Location::Local(dir.path().to_path_buf()));
    let staging = dir.path().join(STAGING);
    // Written but not finalized: staged, not where tools look.
    assert_eq!(data_files(dir.path()).len(), 1);
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 1);
    w.abort().unwrap();
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    Box::new(w).close().unwrap();
    let mut w = ParquetWriter::open(&cfg, &ctx()).unwrap();
    assert_eq!(
        w.committed_state().unwrap().unwrap().state,
        Some(json!({"n": 1}))
    );
    Box::new(w).close().unwrap();
    assert_eq!(data_files(dir.path()).len(), 1);
}

#[test]
fn roll_forward_after_crash_between_manifest_and_rename() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"path": dir.path().display().to_string()});
    let mut w = ParquetWriter::open(&cfg, &ctx()).unwrap();
    w.write(&sample_batch()).unwrap();
    w.commit(&Commit {
        state: Some(json!({"n": 1})),
        run_id: "r1".into(),
        sequence: 1,
    })
    .unwrap();
    Box::new(w).close().unwrap();
    // Move the published file back to staging, as if the process died right after the commit.
    let layout = Layout::new(Location::Local(dir.path().to_path_buf()));
    let staging = dir.path().join(STAGING);
    let name = data_files(dir.path()).pop().unwrap();
    fs::rename(
        dir.path().join(&name),
        dir.path().join(layout.staged(&name)),
    )
    .unwrap();
    fs::write(staging.join("orphan.parquet.inprogress"), b"junk").unwrap();
    assert!(data_files(dir.path()).is_empty());

    let mut w = ParquetWriter::open(&cfg, &ctx()).unwrap();
    assert_eq!(data_files(dir.path()), vec![name]);
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    let st = w.committed_state().unwrap().unwrap();
    assert_eq!(st.state, Some(json!({"n": 1})));
    Box::new(w).close().unwrap();
}

#[test]
fn second_writer_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"path": dir.path().display().to_string()});
    let a = ParquetWriter::open(&cfg, &ctx()).unwrap();
    let e = ParquetWriter::open(&cfg, &ctx()).err().expect("refused");
    assert!(e.to_string().contains("another dativo writer"), "{e}");
    Box::new(a).close().unwrap();
    let b = ParquetWriter::open(&cfg, &ctx()).unwrap();
    Box::new(b).close().unwrap();
}

#[test]
fn dropping_a_writer_discards_uncommitted_files_and_frees_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"path": dir.path().display().to_string()});
    let mut w = ParquetWriter::open(&cfg, &ctx()).unwrap();
    w.write(&sample_batch()).unwrap();
    let staging = dir.path().join(STAGING);
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 1);
    // An error path: no abort, no close.
    drop(w);
    assert_eq!(fs::read_dir(&staging).unwrap().count(), 0);
    assert!(data_files(dir.path()).is_empty());
    // The lock went with it.
    let w = ParquetWriter::open(&cfg, &ctx()).unwrap();
    Box::new(w).close().unwrap();
}

#[test]
fn compression_is_checked_when_the_config_is_read() {
    for good in ["snappy", "ZSTD", "zstd(3)", "lz4", "none", "uncompressed"] {
        ParquetWriter::validate(&json!({"path": "out", "compression": good})).unwrap();
    }
    for bad in ["brotli9", "zstd(99)", "zstd(x)", ""] {
        let e = ParquetWriter::validate(&json!({"path": "out", "compression": bad})).unwrap_err();
        assert_eq!(e.key_path(), Some("compression"), "{bad}: {e}");
        assert_eq!(e.kind(), dativo_core::ErrorKind::Config);
    }
    let e = ParquetWriter::validate(&json!({"path": "out", "compression": "brotli9"})).unwrap_err();
    assert!(
        e.to_string().contains("unknown compression `brotli9`"),
        "{e}"
    );
}

fn ctx_for(job: &str) -> WriterContext {
    WriterContext {
        job: job.into(),
        ..ctx()
    }
}

fn commit_one(dir: &std::path::Path, job: &str, state: serde_json::Value) {
    let cfg = json!({"path": dir.display().to_string()});
    let mut w = ParquetWriter::open(&cfg, &ctx_for(job)).unwrap();
    w.write(&sample_batch()).unwrap();
    w.commit(&Commit {
        state: Some(state),
        run_id: format!("run-{job}"),
        sequence: 1,
    })
    .unwrap();
    Box::new(w).close().unwrap();
}

#[test]
fn committed_state_is_the_jobs_own_when_jobs_share_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    commit_one(dir.path(), "a", json!({"a": 1}));
    commit_one(dir.path(), "b", json!({"b": 1}));
    let cfg = json!({"path": dir.path().display().to_string()});
    let mut w = ParquetWriter::open(&cfg, &ctx_for("a")).unwrap();
    assert_eq!(
        w.committed_state().unwrap().unwrap().state,
        Some(json!({"a": 1}))
    );
    Box::new(w).close().unwrap();
    let mut w = ParquetWriter::open(&cfg, &ctx_for("c")).unwrap();
    assert_eq!(w.committed_state().unwrap().unwrap().state, None);
    Box::new(w).close().unwrap();
}

#[test]
fn restart_rolls_forward_every_commit_whose_files_are_still_staged() {
    let dir = tempfile::tempdir().unwrap();
    commit_one(dir.path(), "a", json!({"n": 1}));
    let first = data_files(dir.path()).pop().unwrap();
    commit_one(dir.path(), "a", json!({"n": 2}));
    assert_eq!(data_files(dir.path()).len(), 2);
    // As if the first publication had been lost (power cut) after the second commit.
    let layout = Layout::new(Location::Local(dir.path().to_path_buf()));
    fs::rename(
        dir.path().join(&first),
        dir.path().join(layout.staged(&first)),
    )
    .unwrap();
    let cfg = json!({"path": dir.path().display().to_string()});
    let w = ParquetWriter::open(&cfg, &ctx_for("a")).unwrap();
    Box::new(w).close().unwrap();
    assert_eq!(data_files(dir.path()).len(), 2);
    assert!(data_files(dir.path()).contains(&first));
}
