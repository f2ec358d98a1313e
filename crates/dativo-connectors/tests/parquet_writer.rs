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

/// Columns encoded on three threads, row groups cut inside batches: the same contract.
#[test]
fn passes_conformance_with_columns_encoded_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"path": dir.path().join("out").display().to_string(),
                     "encode_threads": 3, "row_group_size": 2});
    let report = check_open_writer(|c, ctx| Ok(Box::new(ParquetWriter::open(c, ctx)?)), &cfg);
    assert!(report.passed(), "{report:?}");
    for bad in [0, 65] {
        let e =
            ParquetWriter::validate(&json!({"path": "out", "encode_threads": bad})).unwrap_err();
        assert!(
            e.to_string().contains("encode_threads") && e.to_string().contains("between 1 and 64"),
            "{e}"
        );
    }
}

#[test]
fn passes_conformance_in_overwrite_mode() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({"path": dir.path().join("out").display().to_string(), "mode": "overwrite"});
    let report = check_open_writer(|c, ctx| Ok(Box::new(ParquetWriter::open(c, ctx)?)), &cfg);
    assert!(report.passed(), "{report:?}");
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

// ---- mode: overwrite / append / merge -------------------------------------------------------

mod modes {
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use arrow::array::{Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
    use arrow::record_batch::RecordBatch;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use serde_json::{json, Value};

    use dativo_connectors::parquet::commit_log::{Layout, Manifest};
    use dativo_connectors::parquet::ParquetWriter;
    use dativo_core::{Commit, Delivery, ErrorKind, OpenWriter, Shard, WriterContext};
    use dativo_storage::Location;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("part", DataType::Utf8, true),
        ]))
    }

    /// Rows `id`, `name = <tag><id>`, `part` = `p<id % parts>`.
    fn batch(ids: &[i64], tag: &str) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("{tag}{i}")),
                )),
                Arc::new(StringArray::from_iter_values(
                    ids.iter().map(|i| format!("p{}", i % 2)),
                )),
            ],
        )
        .unwrap()
    }

    fn ctx(job: &str, delivery: Delivery) -> WriterContext {
        let mut c = WriterContext::new(job, "r", schema());
        c.source.delivery = delivery;
        c
    }

    fn commit(w: &mut ParquetWriter, n: i64) {
        w.commit(&Commit {
            state: Some(json!({"n": n})),
            run_id: format!("run-{n}"),
            sequence: 1,
        })
        .unwrap();
    }

    /// One run: open, write `ids` (if any), commit once, close.
    fn run(cfg: &Value, c: &WriterContext, ids: &[i64], tag: &str, n: i64) -> bool {
        let mut w = ParquetWriter::open(cfg, c).unwrap();
        if !ids.is_empty() {
            w.write(&batch(ids, tag)).unwrap();
        }
        commit(&mut w, n);
        let once = w.commits_once();
        Box::new(w).close().unwrap();
        once
    }

    /// Data files where a glob reader looks (not under `_dativo/`), relative to the root.
    fn data_files(loc: &Location) -> Vec<String> {
        let mut v: Vec<String> = loc
            .list_recursive("")
            .unwrap()
            .into_iter()
            .filter(|p| !p.starts_with("_dativo/") && p.ends_with(".parquet"))
            .collect();
        v.sort();
        v
    }

    /// Every row of the data files, as `(id, name)` (plus the hive directory when partitioned),
    /// sorted: what a reader of `dir/**/*.parquet` gets.
    fn rows(loc: &Location) -> Vec<(i64, String, String)> {
        let mut out = Vec::new();
        for f in data_files(loc) {
            let dir = f
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_default();
            let bytes = bytes::Bytes::from(loc.read(&f).unwrap());
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .unwrap()
                .build()
                .unwrap();
            for b in reader {
                let b = b.unwrap();
                let ids = b
                    .column_by_name("id")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone();
                let names = b
                    .column_by_name("name")
                    .unwrap()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .unwrap()
                    .clone();
                for i in 0..b.num_rows() {
                    assert!(!names.is_null(i));
                    out.push((ids.value(i), names.value(i).to_string(), dir.clone()));
                }
            }
        }
        out.sort();
        out
    }

    fn expect(ids: &[i64], tag: &str) -> Vec<(i64, String, String)> {
        let mut v: Vec<_> = ids
            .iter()
            .map(|i| (*i, format!("{tag}{i}"), String::new()))
            .collect();
        v.sort();
        v
    }

    fn local(dir: &Path) -> Location {
        Location::Local(dir.to_path_buf())
    }

    fn cfg(dir: &Path, mode: Option<&str>) -> Value {
        let mut c = json!({"path": dir.display().to_string()});
        if let Some(m) = mode {
            c["mode"] = json!(m);
        }
        c
    }

    fn manifests(loc: &Location) -> Vec<Manifest> {
        Layout::new(loc.clone()).all().unwrap()
    }

    #[test]
    fn overwrite_twice_keeps_only_the_second_runs_rows() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path(), Some("overwrite"));
        let c = ctx("j", Delivery::Unknown);
        assert!(run(&cfg, &c, &[1, 2, 3], "first-", 1));
        assert_eq!(rows(&local(dir.path())), expect(&[1, 2, 3], "first-"));
        assert!(run(&cfg, &c, &[10, 11], "second-", 2));
        assert_eq!(rows(&local(dir.path())), expect(&[10, 11], "second-"));

        let all = manifests(&local(dir.path()));
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].replaces, Some(0));
        assert_eq!(all[1].replaces, Some(1));
        let live = Layout::new(local(dir.path())).live().unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].sequence, 2);
        let mut live_files: Vec<String> = live[0].files.iter().map(|f| f.path.clone()).collect();
        live_files.sort();
        assert_eq!(live_files, data_files(&local(dir.path())));

        let mut w = ParquetWriter::open(&cfg, &c).unwrap();
        assert_eq!(
            w.committed_state().unwrap().unwrap().state,
            Some(json!({"n": 2}))
        );
        Box::new(w).close().unwrap();
    }

    #[test]
    fn overwrite_replaces_every_partition_and_removes_emptied_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = cfg(dir.path(), Some("overwrite"));
        cfg["partition_by"] = json!(["part"]);
        let c = ctx("j", Delivery::Unknown);
        run(&cfg, &c, &[1, 2, 3, 4], "a", 1);
        assert!(dir.path().join("part=p0").is_dir());
        assert!(dir.path().join("part=p1").is_dir());
        // Only odd ids: partition p0 has no rows in the new contents.
        run(&cfg, &c, &[5, 7], "b", 2);
        let got = rows(&local(dir.path()));
        assert_eq!(
            got,
            vec![
                (5, "b5".into(), "part=p1".into()),
                (7, "b7".into(), "part=p1".into())
            ]
        );
        assert!(!dir.path().join("part=p0").exists());
    }

    #[test]
    fn overwrite_without_rows_leaves_no_data_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path(), Some("overwrite"));
        let c = ctx("j", Delivery::Unknown);
        run(&cfg, &c, &[1, 2], "x", 1);
        run(&cfg, &c, &[3], "x", 2);
        assert_eq!(rows(&local(dir.path())), expect(&[3], "x"));
        run(&cfg, &c, &[], "x", 3);
        assert!(data_files(&local(dir.path())).is_empty());
        let last = manifests(&local(dir.path())).pop().unwrap();
        assert_eq!(last.sequence, 3);
        assert_eq!(last.replaces, Some(2));
        assert!(last.files.is_empty());
        assert_eq!(last.state, Some(json!({"n": 3})));
        assert!(Layout::new(local(dir.path()))
            .live()
            .unwrap()
            .iter()
            .all(|m| m.files.is_empty()));
    }

    /// Put the directory back to how a crash right after the commit point of overwrite
    /// `after` would have left it: its files still staged (unless `published`), and the files
    /// of the contents it replaced (saved in `saved`) still in place.
    fn undo_roll_forward(
        dir: &Path,
        after: &Manifest,
        saved: &BTreeMap<String, Vec<u8>>,
        published: bool,
    ) {
        let layout = Layout::new(local(dir));
        if !published {
            for f in &after.files {
                fs::rename(dir.join(&f.path), dir.join(layout.staged(&f.path))).unwrap();
            }
        }
        for (rel, bytes) in saved {
            let p: PathBuf = dir.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, bytes).unwrap();
        }
    }

    fn save(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        data_files(&local(dir))
            .into_iter()
            .map(|f| {
                let b = fs::read(dir.join(&f)).unwrap();
                (f, b)
            })
            .collect()
    }

    #[test]
    fn a_crash_after_the_overwrites_commit_point_is_finished_on_the_next_start() {
        for published in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let over = cfg(dir.path(), Some("overwrite"));
            let c = ctx("j", Delivery::Unknown);
            run(&over, &c, &[1, 2], "old", 1);
            let old = save(dir.path());
            run(&over, &c, &[7, 8, 9], "new", 2);
            let m = manifests(&local(dir.path())).pop().unwrap();
            undo_roll_forward(dir.path(), &m, &old, published);
            // The crash left a plain reader a mix (or the old rows alone)…
            let before = rows(&local(dir.path()));
            if published {
                assert_eq!(before.len(), 5, "{before:?}");
            } else {
                assert_eq!(before, expect(&[1, 2], "old"));
            }
            // …but the manifests already say what is live: the new files only.
            let live = Layout::new(local(dir.path())).live().unwrap();
            assert_eq!(live.len(), 1);
            assert_eq!(live[0].files.iter().map(|f| f.rows).sum::<u64>(), 3);

            // The next start (any mode) finishes the overwrite before anything else.
            let mut w = ParquetWriter::open(&cfg(dir.path(), Some("append")), &c).unwrap();
            assert_eq!(rows(&local(dir.path())), expect(&[7, 8, 9], "new"));
            assert_eq!(
                fs::read_dir(
                    dir.path()
                        .join(dativo_connectors::parquet::commit_log::STAGING)
                )
                .unwrap()
                .count(),
                0
            );
            assert_eq!(
                w.committed_state().unwrap().unwrap().state,
                Some(json!({"n": 2}))
            );
            // An append after it adds to the new contents only.
            w.write(&batch(&[20], "app")).unwrap();
            commit(&mut w, 3);
            Box::new(w).close().unwrap();
            let mut want = expect(&[7, 8, 9], "new");
            want.extend(expect(&[20], "app"));
            want.sort();
            assert_eq!(rows(&local(dir.path())), want, "published: {published}");
        }
    }

    #[test]
    fn an_overwrite_that_stops_before_its_commit_leaves_the_old_contents() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path(), Some("overwrite"));
        let c = ctx("j", Delivery::Unknown);
        run(&cfg, &c, &[1, 2], "old", 1);
        let mut w = ParquetWriter::open(&cfg, &c).unwrap();
        w.write(&batch(&[5, 6], "new")).unwrap();
        drop(w); // an error path: no commit
        assert_eq!(rows(&local(dir.path())), expect(&[1, 2], "old"));
        let w = ParquetWriter::open(&cfg, &c).unwrap();
        Box::new(w).close().unwrap();
        assert_eq!(rows(&local(dir.path())), expect(&[1, 2], "old"));
        assert_eq!(manifests(&local(dir.path())).len(), 1);
    }

    #[test]
    fn merge_and_unknown_modes_are_refused() {
        let merge = json!({"path": "out", "mode": "merge"});
        for e in [
            ParquetWriter::validate(&merge).unwrap_err(),
            ParquetWriter::open(&merge, &ctx("j", Delivery::Full))
                .err()
                .expect("refused"),
        ] {
            assert_eq!(e.kind(), ErrorKind::Config, "{e}");
            assert_eq!(e.key_path(), Some("mode"), "{e}");
            let msg = e.to_string();
            assert!(msg.contains("row-level deletes"), "{msg}");
            assert!(
                msg.contains("use `writer: iceberg` with `mode: merge`"),
                "{msg}"
            );
        }
        let e = ParquetWriter::validate(&json!({"path": "out", "mode": "replace"})).unwrap_err();
        assert_eq!(e.key_path(), Some("mode"), "{e}");
        assert!(e.to_string().contains("use `append` or `overwrite`"), "{e}");
        for good in ["append", "overwrite", "Overwrite"] {
            ParquetWriter::validate(&json!({"path": "out", "mode": good})).unwrap();
        }
    }

    #[test]
    fn the_default_mode_follows_the_sources_delivery() {
        // A full refresh replaces the previous contents…
        let dir = tempfile::tempdir().unwrap();
        let c = ctx("j", Delivery::Full);
        assert!(run(&cfg(dir.path(), None), &c, &[1, 2], "a", 1));
        assert!(run(&cfg(dir.path(), None), &c, &[1, 2], "b", 2));
        assert_eq!(rows(&local(dir.path())), expect(&[1, 2], "b"));

        // …incremental and unknown deliveries append.
        for delivery in [Delivery::Incremental, Delivery::Unknown] {
            let dir = tempfile::tempdir().unwrap();
            let c = ctx("j", delivery);
            assert!(!run(&cfg(dir.path(), None), &c, &[1, 2], "a", 1));
            assert!(!run(&cfg(dir.path(), None), &c, &[3], "b", 2));
            let mut want = expect(&[1, 2], "a");
            want.extend(expect(&[3], "b"));
            want.sort();
            assert_eq!(rows(&local(dir.path())), want, "{delivery:?}");
            assert!(manifests(&local(dir.path()))
                .iter()
                .all(|m| m.replaces.is_none()));
        }

        // An explicit `append` keeps appending a full refresh (with a warning).
        let dir = tempfile::tempdir().unwrap();
        let c = ctx("j", Delivery::Full);
        assert!(!run(&cfg(dir.path(), Some("append")), &c, &[1], "a", 1));
        assert!(!run(&cfg(dir.path(), Some("append")), &c, &[1], "b", 2));
        assert_eq!(rows(&local(dir.path())).len(), 2);
    }

    #[test]
    fn a_split_job_does_not_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = ctx("j#0/2", Delivery::Full);
        c.shard = Shard { index: 0, count: 2 };
        // The default for a split full refresh is append: shards would replace each other.
        assert!(!run(&cfg(dir.path(), None), &c, &[1], "s", 1));
        let e = ParquetWriter::open(&cfg(dir.path(), Some("overwrite")), &c)
            .err()
            .expect("refused");
        assert_eq!(e.kind(), ErrorKind::Config, "{e}");
        assert_eq!(e.key_path(), Some("mode"), "{e}");
        assert!(e.to_string().contains("split into 2 shards"), "{e}");

        // An unsplit overwrite of a directory the shards wrote would leave their files.
        let e = ParquetWriter::open(
            &cfg(dir.path(), Some("overwrite")),
            &ctx("j", Delivery::Full),
        )
        .err()
        .expect("refused");
        assert_eq!(e.key_path(), Some("mode"), "{e}");
        assert!(e.to_string().contains("shards of a split job"), "{e}");
        assert_eq!(rows(&local(dir.path())), expect(&[1], "s"));
    }

    #[test]
    fn an_overwrite_resets_what_other_jobs_and_the_schema_check_see() {
        let dir = tempfile::tempdir().unwrap();
        let append = cfg(dir.path(), Some("append"));
        run(&append, &ctx("other", Delivery::Incremental), &[1], "o", 1);
        run(
            &cfg(dir.path(), Some("overwrite")),
            &ctx("full", Delivery::Full),
            &[2],
            "f",
            2,
        );
        assert_eq!(rows(&local(dir.path())), expect(&[2], "f"));
        // The other job's rows are gone, so is its committed state: it starts over.
        let mut w = ParquetWriter::open(&append, &ctx("other", Delivery::Incremental)).unwrap();
        let st = w.committed_state().unwrap().unwrap();
        assert_eq!((st.state, st.run_id), (None, None));
        Box::new(w).close().unwrap();

        // A type change is refused against live files, not against replaced ones.
        let strings = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let mut c = WriterContext::new("full", "r", strings.clone());
        let e = ParquetWriter::open(&append, &c).err().expect("refused");
        assert_eq!(e.kind(), ErrorKind::Schema, "{e}");
        let mut w = ParquetWriter::open(&cfg(dir.path(), Some("overwrite")), &c).unwrap();
        commit(&mut w, 3);
        Box::new(w).close().unwrap();
        // The empty overwrite left no file to combine with: any type may come next.
        c.schema = schema();
        let w = ParquetWriter::open(&append, &c).unwrap();
        Box::new(w).close().unwrap();
    }

    // ---- on S3 (moto on loopback) -------------------------------------------------------

    /// A moto server: `DATIVO_TEST_S3_ENDPOINT`, else one started here from the test venv
    /// (`DATIVO_VENV`, else the repository's `.venv`), stopped on drop.
    struct Moto {
        endpoint: String,
        child: Option<std::process::Child>,
    }

    impl Drop for Moto {
        fn drop(&mut self) {
            if let Some(c) = &mut self.child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    fn moto() -> Option<Moto> {
        if let Ok(endpoint) = std::env::var("DATIVO_TEST_S3_ENDPOINT") {
            return Some(Moto {
                endpoint,
                child: None,
            });
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let venv = std::env::var_os("DATIVO_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv"));
        let bin = venv.join("bin/moto_server");
        if !bin.is_file() {
            let msg = format!(
                "SKIPPED: S3 test: no DATIVO_TEST_S3_ENDPOINT and no {}",
                bin.display()
            );
            assert!(
                std::env::var_os("DATIVO_REQUIRE_PLUGINS").is_none(),
                "{msg} (DATIVO_REQUIRE_PLUGINS is set)"
            );
            eprintln!("{msg}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child: Some(child),
        };
        for _ in 0..300 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(moto);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("moto_server did not start on port {port}");
    }

    /// Create a bucket with a plain HTTP PUT (moto does not check signatures).
    fn create_bucket(endpoint: &str, bucket: &str) {
        use std::io::{Read, Write};
        let host = endpoint.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).unwrap();
        write!(
            s,
            "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }

    #[test]
    fn overwrite_on_s3() {
        let Some(moto) = moto() else { return };
        let bucket = format!("b-{}", uuid::Uuid::now_v7().simple());
        create_bucket(&moto.endpoint, &bucket);
        let s3 = json!({
            "endpoint": moto.endpoint, "region": "us-east-1", "access_key_id": "testing",
            "secret_access_key": "testing", "path_style": true
        });
        let path = format!("s3://{bucket}/lake/events");
        let over = json!({"path": path, "s3": s3, "mode": "overwrite", "lease_ttl": "5s"});
        let loc = Location::parse(
            &path,
            &dativo_storage::StoreOptions {
                s3: Some(&serde_json::from_value(s3.clone()).unwrap()),
                gcs: None,
                azure: None,
            },
        )
        .unwrap();
        let c = ctx("j", Delivery::Unknown);

        run(&over, &c, &[1, 2, 3], "first", 1);
        assert_eq!(rows(&loc), expect(&[1, 2, 3], "first"));
        let old: BTreeMap<String, Vec<u8>> = data_files(&loc)
            .into_iter()
            .map(|f| {
                let b = loc.read(&f).unwrap();
                (f, b)
            })
            .collect();
        run(&over, &c, &[4, 5], "second", 2);
        assert_eq!(rows(&loc), expect(&[4, 5], "second"));

        // A crash right after the commit point: new files staged, the old ones still there.
        let m = Layout::new(loc.clone()).latest().unwrap().unwrap();
        assert_eq!(m.replaces, Some(1));
        let layout = Layout::new(loc.clone());
        for f in &m.files {
            loc.put(&layout.staged(&f.path), &loc.read(&f.path).unwrap())
                .unwrap();
            loc.delete(&f.path).unwrap();
        }
        for (rel, bytes) in &old {
            loc.put(rel, bytes).unwrap();
        }
        assert_eq!(rows(&loc), expect(&[1, 2, 3], "first"));
        let w = ParquetWriter::open(&over, &c).unwrap();
        assert_eq!(rows(&loc), expect(&[4, 5], "second"));
        Box::new(w).close().unwrap();

        // No rows: the prefix is left without data files.
        run(&over, &c, &[], "third", 3);
        assert!(data_files(&loc).is_empty());
        let last = Layout::new(loc.clone()).latest().unwrap().unwrap();
        assert_eq!((last.sequence, last.replaces), (3, Some(2)));
        assert!(last.files.is_empty());
        assert!(loc.list_recursive("_dativo/staging").unwrap().is_empty());
    }
}
