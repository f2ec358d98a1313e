//! Snapshot expiry and orphan removal on real tables (SQLite catalog, local warehouse) filled
//! by the writer: which files go (checked against what pyiceberg — or, without the test
//! virtualenv, iceberg-rust — reads as referenced), that the rows stay, and that a job's
//! committed state and its guard survive the expiry of its snapshots.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use dativo_core::rt::runtime;
use dativo_core::{Commit, CommittedState, ErrorKind, OpenWriter, WriterContext};

use super::{expire_snapshots, remove_orphans, ExpireOptions, OrphanOptions, TableHandle};
use crate::iceberg::counting::JobCommit;
use crate::iceberg::writer::load_existing;
use crate::iceberg::{IcebergWriter, IcebergWriterConfig};

/// A table in a catalog and warehouse of their own.
struct Lake {
    dir: tempfile::TempDir,
    /// Partitioned by `name` (one partition per row here); overwrites replace partitions.
    partitioned: bool,
}

impl Lake {
    fn new() -> Lake {
        Lake {
            dir: tempfile::tempdir().unwrap(),
            partitioned: false,
        }
    }

    fn partitioned() -> Lake {
        Lake {
            partitioned: true,
            ..Lake::new()
        }
    }

    fn config(&self, mode: &str) -> Value {
        let d = self.dir.path().display();
        let mut c = json!({
            "table": "ns.events",
            "catalog": {"uri": format!("sqlite://{d}/catalog.db")},
            "warehouse": format!("{d}/wh"),
            "mode": mode,
        });
        if self.partitioned {
            c["partition_by"] = json!(["name"]);
            if mode == "overwrite" {
                c["overwrite"] = json!("partitions");
            }
        }
        c
    }

    fn writer(&self, job: &str, run: &str, mode: &str) -> IcebergWriter {
        let ctx = WriterContext::new(job, run, dativo_core::conformance::id_name_schema());
        IcebergWriter::open(&self.config(mode), &ctx).unwrap()
    }

    /// One commit of `ids` by `job` with `state`, through a fresh writer.
    fn commit(&self, job: &str, run: &str, mode: &str, ids: &[i64], state: Value) {
        let mut w = self.writer(job, run, mode);
        w.write(&dativo_core::conformance::id_name_batch(ids))
            .unwrap();
        w.commit(&commit(run, state)).unwrap();
    }

    fn table(&self) -> iceberg::table::Table {
        let cfg: IcebergWriterConfig = serde_json::from_value(self.config("append")).unwrap();
        runtime().block_on(load_existing(&cfg)).unwrap()
    }

    fn handle(&self) -> TableHandle {
        TableHandle::open(&self.config("append")).unwrap()
    }

    fn ids(&self) -> Vec<i64> {
        let t = self.table();
        runtime().block_on(crate::iceberg::commit::tests::ids(&t))
    }

    /// The table's directory.
    fn location(&self) -> PathBuf {
        PathBuf::from(
            self.table()
                .metadata()
                .location()
                .trim_start_matches("file://"),
        )
    }

    /// Every file under the table's directory, as absolute paths.
    fn files(&self) -> BTreeSet<String> {
        fn walk(p: &Path, out: &mut BTreeSet<String>) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.insert(p.display().to_string());
                }
            }
        }
        let mut out = BTreeSet::new();
        walk(&self.location(), &mut out);
        out
    }

    /// Manifest lists, manifests, data and delete files: what expiry may delete.
    fn content_files(&self) -> BTreeSet<String> {
        self.files()
            .into_iter()
            .filter(|f| f.ends_with(".avro") || f.ends_with(".parquet"))
            .collect()
    }

    /// What every snapshot references (manifest lists, manifests, live entries' files) and
    /// the rows, as pyiceberg reads them; without the test virtualenv, as iceberg-rust's
    /// manifest readers do.
    fn referenced(&self) -> (BTreeSet<String>, Vec<i64>) {
        if let Some(py) = self.pyiceberg() {
            return py;
        }
        let t = self.table();
        let files = runtime().block_on(async {
            let mut out = BTreeSet::new();
            for s in t.metadata().snapshots() {
                out.insert(s.manifest_list().to_string());
                let list = t.manifest_list_reader(s).load().await.unwrap();
                for mf in list.entries() {
                    out.insert(mf.manifest_path.clone());
                    let m = mf.load_manifest(t.file_io()).await.unwrap();
                    for e in m.entries().iter().filter(|e| e.is_alive()) {
                        out.insert(e.file_path().to_string());
                    }
                }
            }
            out
        });
        let files = files
            .into_iter()
            .map(|f| f.trim_start_matches("file://").to_string())
            .collect();
        (files, self.ids())
    }

    fn pyiceberg(&self) -> Option<(BTreeSet<String>, Vec<i64>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let venv = std::env::var_os("DATIVO_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv"));
        let python = venv.join("bin/python");
        if !python.is_file() {
            let msg = format!("SKIPPED: pyiceberg check: {} is missing", python.display());
            assert!(
                std::env::var_os("DATIVO_REQUIRE_PLUGINS").is_none(),
                "{msg} (DATIVO_REQUIRE_PLUGINS is set)"
            );
            let _ = writeln!(std::io::stderr(), "{msg}");
            return None;
        }
        let script = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
cat = SqlCatalog("dativo", uri="sqlite:///" + sys.argv[1], warehouse="file://" + sys.argv[2])
t = cat.load_table("ns.events")
files = set()
for s in t.metadata.snapshots:
    files.add(s.manifest_list)
    for m in s.manifests(t.io):
        files.add(m.manifest_path)
        for e in m.fetch_manifest_entry(t.io, discard_deleted=True):
            files.add(e.data_file.file_path)
ids = sorted(t.scan().to_arrow().column("id").to_pylist())
print(json.dumps({"files": sorted(files), "ids": ids}))
"#;
        let d = self.dir.path();
        let out = std::process::Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(d.join("catalog.db"))
            .arg(d.join("wh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pyiceberg: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let files: Vec<String> = serde_json::from_value(got["files"].clone()).unwrap();
        let ids: Vec<i64> = serde_json::from_value(got["ids"].clone()).unwrap();
        Some((
            files
                .into_iter()
                .map(|f| f.trim_start_matches("file://").to_string())
                .collect(),
            ids,
        ))
    }
}

fn commit(run: &str, state: Value) -> Commit {
    Commit {
        state: Some(state),
        run_id: run.into(),
        sequence: 1,
    }
}

fn state(w: &mut IcebergWriter) -> CommittedState {
    w.committed_state().unwrap().unwrap()
}

#[test]
fn expiry_deletes_only_what_expired_snapshots_reached_and_job_states_survive() {
    let lake = Lake::new();
    // Job k commits once; then 15 commits of job j, every fourth an overwrite of the whole
    // table (so data files leave the current snapshot and live on only in older ones).
    lake.commit("k", "rk1", "append", &[1000], json!({"k": 1}));
    for i in 0..15i64 {
        let mode = if i % 4 == 1 { "overwrite" } else { "append" };
        let run = format!("rj{i}");
        lake.commit(
            "j",
            &run,
            mode,
            &[i * 10, i * 10 + 1],
            json!({ "cursor": i }),
        );
    }
    assert_eq!(lake.table().metadata().snapshots().len(), 16);
    let ids_before = lake.ids();
    assert_eq!(ids_before, vec![130, 131, 140, 141]);
    // A run of k that started before the expiry and commits after it.
    let mut k_early = lake.writer("k", "rk2", "append");

    let h = lake.handle();
    let opts = ExpireOptions {
        older_than: Duration::ZERO,
        retain_last: 3,
        dry_run: true,
    };
    let files_before = lake.files();
    let dry = runtime().block_on(expire_snapshots(&h, &opts)).unwrap();
    assert_eq!(dry.snapshots_expired, 13);
    assert!(dry.files_deleted > 0, "{dry:?}");
    assert_eq!(lake.files(), files_before, "a dry run deletes nothing");
    assert_eq!(lake.table().metadata().snapshots().len(), 16);

    let content_before = lake.content_files();
    let report = runtime()
        .block_on(expire_snapshots(
            &h,
            &ExpireOptions {
                dry_run: false,
                ..opts.clone()
            },
        ))
        .unwrap();
    assert_eq!(report.snapshots_expired, 13, "{report:?}");
    assert_eq!(report.files_deleted, dry.files_deleted);
    assert_eq!(report.bytes_deleted, dry.bytes_deleted);
    assert!(report.bytes_deleted > 0);
    let table = lake.table();
    assert_eq!(table.metadata().snapshots().len(), 3);

    // What is left on disk is exactly what the remaining snapshots reference (as another
    // implementation reads them), and every deleted file was one of ours.
    let (referenced, py_ids) = lake.referenced();
    let content_after = lake.content_files();
    assert_eq!(content_after, referenced, "left on disk vs referenced");
    let deleted: BTreeSet<_> = content_before.difference(&content_after).cloned().collect();
    assert_eq!(deleted.len() as u64, report.files_deleted, "{deleted:?}");
    let deleted_data = deleted.iter().filter(|f| f.ends_with(".parquet")).count();
    // k's file and j's first nine commits' files (j9..j12 stay: snapshot j12 reads them).
    assert_eq!(deleted_data, 10, "{deleted:?}");
    assert_eq!(lake.ids(), ids_before);
    assert_eq!(py_ids, ids_before);
    // Metadata files are not expiry's business.
    let meta = |s: &BTreeSet<String>| s.iter().filter(|f| f.ends_with(".json")).count();
    assert_eq!(meta(&lake.files()), meta(&files_before) + 1);

    // j's latest snapshot stayed: its state is read from it.
    let mut jw = lake.writer("j", "rj-next", "append");
    let s = state(&mut jw);
    assert_eq!(s.state, Some(json!({"cursor": 14})));
    assert_eq!(s.run_id.as_deref(), Some("rj14"));
    // k's only snapshot went: its state comes from the property written in that commit.
    let prop = table
        .metadata()
        .properties()
        .get(&JobCommit::property("k"))
        .cloned()
        .expect("k's state kept as a property");
    let kept: JobCommit = serde_json::from_str(&prop).unwrap();
    assert_eq!(kept.state.as_deref(), Some(r#"{"k":1}"#));
    assert!(!table
        .metadata()
        .properties()
        .contains_key(&JobCommit::property("j")));
    let mut kw = lake.writer("k", "rk3", "append");
    let s = state(&mut kw);
    assert_eq!(s.state, Some(json!({"k": 1})));
    assert_eq!(s.run_id.as_deref(), Some("rk1"));

    // The run of k that started before the expiry commits on top (its guard compares with
    // the snapshot the property names) ...
    k_early
        .write(&dativo_core::conformance::id_name_batch(&[2000]))
        .unwrap();
    k_early.commit(&commit("rk2", json!({"k": 2}))).unwrap();
    // ... while a run opened after the expiry, before that commit, is refused: another run
    // of k committed since it started.
    kw.write(&dativo_core::conformance::id_name_batch(&[3000]))
        .unwrap();
    let err = kw.commit(&commit("rk3", json!({"k": 3}))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    // The same through the overwrite commit path's guard.
    let mut k_over = lake.writer("k", "rk4", "overwrite");
    lake.commit("k", "rk5", "append", &[5000], json!({"k": 5}));
    k_over
        .write(&dativo_core::conformance::id_name_batch(&[4000]))
        .unwrap();
    let err = k_over.commit(&commit("rk4", json!({"k": 4}))).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    let s = state(&mut lake.writer("k", "rk6", "append"));
    assert_eq!(s.state, Some(json!({"k": 5})));
    assert_eq!(lake.ids(), vec![130, 131, 140, 141, 2000, 5000]);
    // j commits on as usual.
    jw.write(&dativo_core::conformance::id_name_batch(&[150]))
        .unwrap();
    jw.commit(&commit("rj-next", json!({"cursor": 15})))
        .unwrap();
    assert_eq!(
        state(&mut lake.writer("j", "rj-last", "append")).state,
        Some(json!({"cursor": 15}))
    );
}

#[test]
fn expiry_keeps_states_of_jobs_whose_snapshots_all_go_and_a_second_expiry_updates_them() {
    let lake = Lake::new();
    lake.commit("a", "ra1", "append", &[1], json!({"a": 1}));
    lake.commit("a", "ra2", "append", &[2], json!({"a": 2}));
    lake.commit("b", "rb1", "append", &[3], json!({"b": 1}));
    lake.commit("c", "rc1", "append", &[4], json!({"c": 1}));
    let h = lake.handle();
    let opts = ExpireOptions {
        older_than: Duration::ZERO,
        retain_last: 1,
        dry_run: false,
    };
    let r = runtime().block_on(expire_snapshots(&h, &opts)).unwrap();
    assert_eq!(r.snapshots_expired, 3);
    let props = lake.table().metadata().properties().clone();
    assert!(props.contains_key(&JobCommit::property("a")));
    assert!(props.contains_key(&JobCommit::property("b")));
    assert!(!props.contains_key(&JobCommit::property("c")));
    for (job, st) in [
        ("a", json!({"a": 2})),
        ("b", json!({"b": 1})),
        ("c", json!({"c": 1})),
    ] {
        assert_eq!(state(&mut lake.writer(job, "x", "append")).state, Some(st));
    }
    // a commits again, then everything but the last expires again: a's property follows.
    lake.commit("a", "ra3", "append", &[5], json!({"a": 3}));
    lake.commit("c", "rc2", "append", &[6], json!({"c": 2}));
    let r = runtime().block_on(expire_snapshots(&h, &opts)).unwrap();
    assert_eq!(r.snapshots_expired, 2);
    let props = lake.table().metadata().properties().clone();
    let a: JobCommit = serde_json::from_str(&props[&JobCommit::property("a")]).unwrap();
    assert_eq!(a.state.as_deref(), Some(r#"{"a":3}"#));
    assert_eq!(a.run_id.as_deref(), Some("ra3"));
    assert_eq!(
        state(&mut lake.writer("a", "x", "append")).state,
        Some(json!({"a": 3}))
    );
    assert_eq!(
        state(&mut lake.writer("b", "x", "append")).state,
        Some(json!({"b": 1}))
    );
    assert_eq!(
        state(&mut lake.writer("c", "x", "append")).state,
        Some(json!({"c": 2}))
    );
    assert_eq!(lake.ids(), vec![1, 2, 3, 4, 5, 6]);
    // b commits again: once its latest snapshot is reachable again, the next expiry drops
    // its stale property (and leaves a's alone).
    lake.commit("b", "rb2", "append", &[7], json!({"b": 2}));
    lake.commit("c", "rc3", "append", &[8], json!({"c": 3}));
    let two = ExpireOptions {
        retain_last: 2,
        ..opts.clone()
    };
    let r = runtime().block_on(expire_snapshots(&h, &two)).unwrap();
    assert_eq!(r.snapshots_expired, 1);
    let props = lake.table().metadata().properties().clone();
    assert!(!props.contains_key(&JobCommit::property("b")));
    assert!(props.contains_key(&JobCommit::property("a")));
    assert_eq!(
        state(&mut lake.writer("b", "x", "append")).state,
        Some(json!({"b": 2}))
    );
    assert_eq!(
        state(&mut lake.writer("a", "x", "append")).state,
        Some(json!({"a": 3}))
    );
    // Nothing old enough: nothing expires.
    let r = runtime()
        .block_on(expire_snapshots(&h, &ExpireOptions::default()))
        .unwrap();
    assert_eq!((r.snapshots_expired, r.files_deleted), (0, 0));
}

#[test]
fn expiry_keeps_files_a_rewritten_manifest_still_lists() {
    let lake = Lake::partitioned();
    // One manifest listing n1's and n2's files; the overwrite of partition n1 rewrites it
    // (n1's file DELETED, n2's EXISTING) under a new name.
    lake.commit("j", "r1", "append", &[1, 2], json!({"c": 1}));
    lake.commit("j", "r2", "overwrite", &[1], json!({"c": 2}));
    lake.commit("j", "r3", "append", &[3], json!({"c": 3}));
    let before = lake.content_files();
    let h = lake.handle();
    let opts = ExpireOptions {
        older_than: Duration::ZERO,
        retain_last: 2,
        dry_run: false,
    };
    let r = runtime().block_on(expire_snapshots(&h, &opts)).unwrap();
    assert_eq!(r.snapshots_expired, 1);
    let (referenced, py_ids) = lake.referenced();
    let after = lake.content_files();
    assert_eq!(after, referenced);
    // The first snapshot's manifest list, its manifest and n1's first file; n2's file, which
    // that manifest also listed, stays.
    let deleted: Vec<_> = before.difference(&after).collect();
    assert_eq!(deleted.len(), 3, "{deleted:?}");
    assert_eq!(
        deleted.iter().filter(|f| f.ends_with(".parquet")).count(),
        1,
        "{deleted:?}"
    );
    assert_eq!(lake.ids(), vec![1, 2, 3]);
    assert_eq!(py_ids, vec![1, 2, 3]);
}

/// Set `path`'s modification time to `age` ago.
fn age(path: &Path, age: Duration) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

#[test]
fn orphan_removal_deletes_old_unreferenced_files_only() {
    let lake = Lake::new();
    for i in 0..3i64 {
        let mode = if i == 1 { "overwrite" } else { "append" };
        lake.commit("j", "r", mode, &[i], json!({ "cursor": i }));
    }
    let loc = lake.location();
    let two_days = Duration::from_secs(2 * 24 * 3600);
    // Everything the table has is old: age alone must not get a referenced file deleted.
    let referenced = lake.files();
    for f in &referenced {
        age(Path::new(f), two_days);
    }
    let old = loc.join("data/stray-old.parquet");
    let young = loc.join("data/stray-young.parquet");
    let old_meta = loc.join("metadata/99999-stray.metadata.json");
    let outside = loc.join("other/notes.txt");
    std::fs::create_dir_all(outside.parent().unwrap()).unwrap();
    for f in [&old, &young, &old_meta, &outside] {
        std::fs::write(f, b"not referenced").unwrap();
    }
    for f in [&old, &old_meta, &outside] {
        age(f, two_days);
    }
    // A young metadata file (a commit in flight) stays.
    let young_meta = loc.join("metadata/99998-inflight.metadata.json");
    std::fs::write(&young_meta, b"{}").unwrap();

    let h = lake.handle();
    let too_young = OrphanOptions {
        older_than: Duration::from_secs(60),
        ..Default::default()
    };
    let err = runtime()
        .block_on(remove_orphans(&h, &too_young))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");

    let all = lake.files();
    let opts = OrphanOptions {
        older_than: Duration::from_secs(24 * 3600),
        force_young: false,
        dry_run: true,
    };
    let dry = runtime().block_on(remove_orphans(&h, &opts)).unwrap();
    assert_eq!(dry.files_deleted, 2, "{dry:?}");
    assert_eq!(dry.bytes_deleted, 2 * b"not referenced".len() as u64);
    assert_eq!(lake.files(), all, "a dry run deletes nothing");

    let report = runtime()
        .block_on(remove_orphans(
            &h,
            &OrphanOptions {
                dry_run: false,
                ..opts.clone()
            },
        ))
        .unwrap();
    assert_eq!(report.files_deleted, 2, "{report:?}");
    let left = lake.files();
    let gone: BTreeSet<_> = all.difference(&left).cloned().collect();
    let expect: BTreeSet<_> = [&old, &old_meta]
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(gone, expect);
    assert!(referenced.is_subset(&left));
    assert_eq!(lake.ids(), vec![1, 2]);
    let (_, py_ids) = lake.referenced();
    assert_eq!(py_ids, vec![1, 2]);

    // With a young threshold (forced), the young stray goes too — never a referenced file.
    let report = runtime()
        .block_on(remove_orphans(
            &h,
            &OrphanOptions {
                older_than: Duration::ZERO,
                force_young: true,
                dry_run: false,
            },
        ))
        .unwrap();
    assert_eq!(report.files_deleted, 2, "{report:?}");
    assert!(!young.exists() && !young_meta.exists());
    assert!(outside.exists());
    assert!(referenced.is_subset(&lake.files()));
    assert_eq!(lake.ids(), vec![1, 2]);
}
