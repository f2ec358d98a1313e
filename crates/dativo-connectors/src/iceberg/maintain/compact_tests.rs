//! Compaction and manifest rewriting on tables the `iceberg` writer filled (appends, then
//! merges with position deletes), read back in full by iceberg-rust's scan, pyiceberg and
//! DuckDB's Iceberg extension; and compaction racing a merge.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures_util::TryStreamExt;
use serde_json::{json, Value};

use dativo_core::rt::runtime;
use dativo_core::{Commit, CommittedState, Delivery, OpenWriter, StreamInfo, WriterContext};

use super::compact::{bin_pack, compact_with};
use super::{compact, rewrite_manifests, CompactOptions, TableHandle, MAINTENANCE_KEY};
use crate::iceberg::commit::{Change, LiveFiles};
use crate::iceberg::modes::OP_COLUMN;
use crate::iceberg::writer::load_existing;
use crate::iceberg::{IcebergWriter, IcebergWriterConfig};

/// (id, name, grp).
type Row = (i64, String, String);
type Model = BTreeMap<i64, String>;

fn grp(id: i64) -> &'static str {
    ["a", "b", "c"][id.rem_euclid(3) as usize]
}

fn schema(op: bool) -> SchemaRef {
    let mut f = vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("grp", DataType::Utf8, true),
    ];
    if op {
        f.push(Field::new(OP_COLUMN, DataType::Utf8, true));
    }
    Arc::new(Schema::new(f))
}

/// A batch of (id, name, or `None`: delete the key); with the operation column when `op`.
fn batch(rows: &[(i64, Option<String>)], op: bool) -> RecordBatch {
    let mut cols: Vec<Arc<dyn Array>> = vec![
        Arc::new(Int64Array::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
        )),
        Arc::new(StringArray::from(
            rows.iter().map(|r| grp(r.0)).collect::<Vec<_>>(),
        )),
    ];
    if op {
        cols.push(Arc::new(StringArray::from(
            rows.iter()
                .map(|r| if r.1.is_some() { "U" } else { "D" })
                .collect::<Vec<_>>(),
        )));
    }
    RecordBatch::try_new(schema(op), cols).unwrap()
}

fn ctx(job: &str, run: &str, merge: bool) -> WriterContext {
    let mut c = WriterContext::new(job, run, schema(merge));
    c.source = StreamInfo {
        primary_key: if merge { vec!["id".into()] } else { vec![] },
        not_null: Vec::new(),
        delivery: Delivery::Incremental,
        estimated_rows: None,
    };
    c
}

fn commit(run: &str, seq: u64) -> Commit {
    Commit {
        state: Some(json!({ "seq": seq, "run": run })),
        run_id: run.into(),
        sequence: seq,
    }
}

struct Lake {
    dir: tempfile::TempDir,
    partitioned: bool,
}

impl Lake {
    fn new(partitioned: bool) -> Lake {
        Lake {
            dir: tempfile::tempdir().unwrap(),
            partitioned,
        }
    }

    fn config(&self, mode: &str) -> Value {
        let d = self.dir.path().display();
        let mut c = json!({
            "table": "ns.t",
            "catalog": {"uri": format!("sqlite://{d}/catalog.db")},
            "warehouse": format!("{d}/wh"),
            "mode": mode,
        });
        if self.partitioned {
            c["partition_by"] = json!(["grp"]);
        }
        c
    }

    fn handle(&self) -> TableHandle {
        TableHandle::open(&self.config("append")).unwrap()
    }

    fn table(&self) -> iceberg::table::Table {
        let cfg: IcebergWriterConfig = serde_json::from_value(self.config("append")).unwrap();
        runtime().block_on(load_existing(&cfg)).unwrap()
    }

    fn live(&self) -> LiveFiles {
        runtime().block_on(LiveFiles::load(&self.table())).unwrap()
    }

    /// `commits` appends of 10 new rows each by job `ingest`, one commit each.
    fn appends(&self, model: &mut Model, commits: i64) {
        let mut w =
            IcebergWriter::open(&self.config("append"), &ctx("ingest", "r1", false)).unwrap();
        for r in 0..commits {
            let rows: Vec<(i64, Option<String>)> = (0..10)
                .map(|i| (r * 10 + i, Some(format!("v{}", r * 10 + i))))
                .collect();
            for (id, name) in &rows {
                model.insert(*id, name.clone().unwrap());
            }
            w.write(&batch(&rows, false)).unwrap();
            w.commit(&commit("r1", r as u64 + 1)).unwrap();
        }
        Box::new(w).close().unwrap();
    }

    /// One merge commit by job `upd` (run `run`): upserts and deletions.
    fn merge(&self, model: &mut Model, run: &str, rows: &[(i64, Option<String>)]) {
        let mut w = IcebergWriter::open(&self.config("merge"), &ctx("upd", run, true)).unwrap();
        w.write(&batch(rows, true)).unwrap();
        w.commit(&commit(run, 1)).unwrap();
        Box::new(w).close().unwrap();
        for (id, name) in rows {
            match name {
                Some(n) => model.insert(*id, n.clone()),
                None => model.remove(id),
            };
        }
    }

    fn state(&self, job: &str, merge: bool) -> Option<CommittedState> {
        let mode = if merge { "merge" } else { "append" };
        let mut w = IcebergWriter::open(&self.config(mode), &ctx(job, "check", merge)).unwrap();
        let s = w.committed_state().unwrap();
        Box::new(w).close().unwrap();
        s
    }

    /// The rows iceberg-rust's scan reads, sorted.
    fn rows(&self) -> Vec<Row> {
        let table = self.table();
        runtime().block_on(async {
            let batches: Vec<RecordBatch> = table
                .scan()
                .select_all()
                .build()
                .unwrap()
                .to_arrow()
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let mut out = Vec::new();
            for b in &batches {
                let col = |n: &str| b.column_by_name(n).unwrap().clone();
                let (id, name, g) = (col("id"), col("name"), col("grp"));
                let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
                let name = name.as_any().downcast_ref::<StringArray>().unwrap();
                let g = g.as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..b.num_rows() {
                    out.push((
                        id.value(i),
                        name.value(i).to_string(),
                        g.value(i).to_string(),
                    ));
                }
            }
            out.sort();
            out
        })
    }

    /// The rows pyiceberg and DuckDB read (sorted), or `None` without the test virtualenv
    /// (allowed only without DATIVO_REQUIRE_PLUGINS).
    fn external(&self) -> Option<(Vec<Row>, Vec<Row>)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let venv = std::env::var_os("DATIVO_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(".venv"));
        let python = venv.join("bin/python");
        let duck = std::env::var_os("DATIVO_DUCKDB_ICEBERG")
            .map(PathBuf::from)
            .unwrap_or_else(|| venv.join("duckdb-iceberg"));
        if !python.is_file() || !duck.is_dir() {
            let msg = format!(
                "SKIPPED: pyiceberg/DuckDB check: {} or {} is missing",
                python.display(),
                duck.display()
            );
            assert!(
                std::env::var_os("DATIVO_REQUIRE_PLUGINS").is_none(),
                "{msg} (DATIVO_REQUIRE_PLUGINS is set)"
            );
            let _ = writeln!(std::io::stderr(), "{msg}");
            return None;
        }
        let d = self.dir.path();
        let script = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
cat = SqlCatalog("dativo", uri="sqlite:///" + sys.argv[1], warehouse="file://" + sys.argv[2])
t = cat.load_table("ns.t")
a = t.scan().to_arrow()
rows = sorted(zip(a.column("id").to_pylist(), a.column("name").to_pylist(), a.column("grp").to_pylist()))
print(json.dumps({"rows": rows, "metadata": t.metadata_location}))
"#;
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
        let py: Vec<Row> = serde_json::from_value(got["rows"].clone()).unwrap();
        let metadata = got["metadata"]
            .as_str()
            .unwrap()
            .trim_start_matches("file://");
        let out = std::process::Command::new(&python)
            .arg(root.join("tests/e2e/duckdb_iceberg.py"))
            .arg("SELECT id, name, grp FROM iceberg_scan('{metadata}') ORDER BY id, name, grp")
            .arg(metadata)
            .env("PYTHONPATH", &duck)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "duckdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let duck: Vec<Row> = serde_json::from_slice(&out.stdout).unwrap();
        Some((py, duck))
    }

    /// iceberg-rust (and, with `all`, pyiceberg and DuckDB) read exactly `model`.
    fn assert_rows(&self, model: &Model, all: bool) -> Vec<Row> {
        let expect: Vec<Row> = model
            .iter()
            .map(|(id, n)| (*id, n.clone(), grp(*id).to_string()))
            .collect();
        let got = self.rows();
        assert_eq!(got.len(), expect.len(), "iceberg-rust: row count");
        assert_eq!(got, expect, "iceberg-rust");
        if all {
            if let Some((py, duck)) = self.external() {
                assert_eq!(py, expect, "pyiceberg");
                assert_eq!(duck, expect, "DuckDB");
            }
        }
        got
    }

    /// The current snapshot's operation and summary properties.
    fn head(&self) -> (String, std::collections::HashMap<String, String>) {
        let t = self.table();
        let s = t.metadata().current_snapshot().unwrap();
        (
            s.summary().operation.as_str().to_string(),
            s.summary().additional_properties.clone(),
        )
    }
}

fn updates(ids: impl IntoIterator<Item = i64>, name: &str) -> Vec<(i64, Option<String>)> {
    ids.into_iter()
        .map(|i| (i, Some(format!("{name}{i}"))))
        .collect()
}

/// Every live delete file points into a live data file (none was left dangling).
fn assert_no_dangling_deletes(live: &LiveFiles) {
    for d in live.files.iter().filter(|f| !f.is_data()) {
        let t = Change::delete_target(&d.file).expect("dativo's deletes name their file");
        assert!(
            live.contains(&t),
            "delete file {} points at gone {t}",
            d.path()
        );
    }
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    runtime().block_on(f)
}

fn compacts_appends_and_merges(partitioned: bool) {
    let lake = Lake::new(partitioned);
    let parts = if partitioned { 3 } else { 1 };
    let mut model = Model::new();
    lake.appends(&mut model, 60);
    // Merges updating and deleting keys spread over many of the appended files.
    for k in 0..3_i64 {
        let mut rows = updates((0..15).map(|j| (k * 7 + j * 40) % 600), &format!("m{k}-"));
        rows.extend((0..5).map(|j| ((k * 13 + j * 97 + 5) % 600, None)));
        lake.merge(&mut model, &format!("m{k}"), &rows);
    }
    let before = lake.assert_rows(&model, false);
    let live = lake.live();
    let data_before = live.files.iter().filter(|f| f.is_data()).count() as u64;
    let deletes_before = live.files.len() as u64 - data_before;
    assert!(data_before >= 60 * parts, "{data_before}");
    assert!(deletes_before > 0);
    let states = (lake.state("ingest", false), lake.state("upd", true));
    assert!(states.0.as_ref().unwrap().state.is_some());

    // A target a few files wide: several groups per partition. The dry run predicts, and
    // changes nothing.
    let mut sizes: Vec<u64> = live
        .files
        .iter()
        .filter(|f| f.is_data())
        .map(|f| f.file.file_size_in_bytes())
        .collect();
    sizes.sort_unstable();
    let target = sizes[sizes.len() / 2] * 8;
    let h = lake.handle();
    let head = lake.table().metadata().current_snapshot_id();
    let opts = CompactOptions {
        target_file_size: Some(target),
        dry_run: true,
        ..Default::default()
    };
    let dry = block(compact(&h, &opts)).unwrap();
    assert_eq!(lake.table().metadata().current_snapshot_id(), head);
    assert_eq!(
        (dry.data_files_before, dry.delete_files_before),
        (data_before, deletes_before)
    );
    assert_eq!(dry.rows_rewritten, model.len() as u64);
    assert_eq!(dry.delete_files_after, 0);
    assert!(dry.data_files_after > parts, "{dry:?}");
    assert!(dry.data_files_after < data_before / 4, "{dry:?}");
    let rep = block(compact(
        &h,
        &CompactOptions {
            dry_run: false,
            ..opts
        },
    ))
    .unwrap();
    let _ = writeln!(std::io::stderr(), "compaction A: {rep:?}");
    assert_eq!(rep.delete_files_after, 0, "{rep:?}");
    assert_eq!(rep.rows_rewritten, model.len() as u64);
    assert_eq!(rep.bytes_rewritten, dry.bytes_rewritten);
    assert_eq!(rep.conflicts, 0);
    let live = lake.live();
    let data: Vec<_> = live.files.iter().filter(|f| f.is_data()).collect();
    assert_eq!(data.len() as u64, rep.data_files_after);
    assert_eq!(live.files.len(), data.len(), "no delete file is left");
    // Files of about the target size, at most one smaller than 75% of it per partition (the
    // last of its groups): no more than ⌈bytes / target⌉ + partitions files.
    let bytes: u64 = data.iter().map(|f| f.file.file_size_in_bytes()).sum();
    assert!(
        rep.data_files_after <= bytes.div_ceil(target) + parts,
        "{rep:?}: {bytes} bytes, target {target}"
    );
    let mut small: HashMap<String, usize> = HashMap::new();
    for f in &data {
        let size = f.file.file_size_in_bytes();
        assert!(size <= target * 3 / 2, "{} of {size} bytes", f.path());
        if size * 4 < target * 3 {
            *small
                .entry(format!("{:?}", f.file.partition()))
                .or_default() += 1;
        }
    }
    assert!(small.values().all(|&n| n <= 1), "{small:?}");
    // Compaction settles: nothing small enough and plentiful enough is left.
    let again = block(compact(
        &h,
        &CompactOptions {
            dry_run: false,
            ..opts.clone()
        },
    ))
    .unwrap();
    assert_eq!(
        (again.rows_rewritten, again.commit_id.as_deref()),
        (0, None),
        "{again:?}"
    );
    assert_eq!(lake.assert_rows(&model, false), before);
    let (op, props) = lake.head();
    assert_eq!(op, "replace");
    assert_eq!(
        props.get(MAINTENANCE_KEY).map(String::as_str),
        Some("compact")
    );
    assert!(!props.contains_key("dativo.job"), "{props:?}");
    assert_eq!(
        rep.commit_id,
        lake.table()
            .metadata()
            .current_snapshot_id()
            .map(|s| s.to_string())
    );

    // A merge after compaction replaces keys in the compacted files.
    let mut rows = updates([1, 2, 3, 250, 599], "after-");
    rows.extend([(4, None), (300, None)]);
    assert_eq!(
        (lake.state("ingest", false), lake.state("upd", true)),
        states,
        "compaction moved a job's committed state"
    );
    lake.merge(&mut model, "m3", &rows);
    lake.assert_rows(&model, true);
    assert_no_dangling_deletes(&lake.live());
    let upd_after_m3 = lake.state("upd", true);
    assert_ne!(upd_after_m3, states.1);

    // Everything into one file per partition; the new deletes go with their files.
    let rep = block(compact(
        &h,
        &CompactOptions {
            min_input_files: 2,
            ..Default::default()
        },
    ))
    .unwrap();
    let _ = writeln!(std::io::stderr(), "compaction B: {rep:?}");
    assert_eq!(
        (rep.data_files_after, rep.delete_files_after),
        (parts, 0),
        "{rep:?}"
    );
    assert_eq!(rep.rows_rewritten, model.len() as u64);
    let live = lake.live();
    assert_eq!(live.files.len() as u64, parts);
    lake.assert_rows(&model, true);
    let (op, props) = lake.head();
    assert_eq!(op, "replace");
    assert!(!props.contains_key("dativo.job"));
    // Ingestion's committed states did not move.
    assert_eq!(lake.state("ingest", false), states.0);
    assert_eq!(lake.state("upd", true), upd_after_m3);

    // Nothing left to do: no new snapshot.
    let head = lake.table().metadata().current_snapshot_id();
    let rep = block(compact(&h, &CompactOptions::default())).unwrap();
    assert_eq!(rep.commit_id, None);
    assert_eq!(lake.table().metadata().current_snapshot_id(), head);

    // And merges keep working on the compacted table.
    lake.merge(&mut model, "m4", &updates([5, 6, 7], "last-"));
    lake.assert_rows(&model, true);
}

#[test]
fn compaction_of_a_partitioned_table_keeps_every_row_and_drops_the_deletes() {
    compacts_appends_and_merges(true);
}

#[test]
fn compaction_of_an_unpartitioned_table_keeps_every_row_and_drops_the_deletes() {
    compacts_appends_and_merges(false);
}

#[test]
fn compaction_leaves_the_jobs_committed_state() {
    let lake = Lake::new(false);
    let mut model = Model::new();
    lake.appends(&mut model, 6);
    lake.merge(&mut model, "m0", &updates([1, 11, 21], "x"));
    let states = (lake.state("ingest", false), lake.state("upd", true));
    // A merge run open across the compaction: its commit lands on top of it (the job guard
    // walks past maintenance snapshots) and replaces keys in the compacted file.
    let mut w = IcebergWriter::open(&lake.config("merge"), &ctx("upd", "open", true)).unwrap();
    let rep = block(compact(&lake.handle(), &CompactOptions::default())).unwrap();
    assert!(rep.commit_id.is_some(), "{rep:?}");
    assert_eq!(
        (lake.state("ingest", false), lake.state("upd", true)),
        states
    );
    lake.assert_rows(&model, false);
    let rows = vec![(1, Some("y1".to_string())), (2, None)];
    w.write(&batch(&rows, true)).unwrap();
    w.commit(&commit("open", 1)).unwrap();
    Box::new(w).close().unwrap();
    model.insert(1, "y1".into());
    model.remove(&2);
    lake.assert_rows(&model, false);
    assert_eq!(
        lake.state("upd", true).unwrap().run_id.as_deref(),
        Some("open")
    );
}

/// A merge that deletes rows from files of a group after the group was read: the compaction
/// must not commit over it (the rows would come back).
#[test]
fn compaction_racing_a_merge_redoes_the_group_and_never_resurrects_rows() {
    let lake = Lake::new(false);
    let mut model = Model::new();
    lake.appends(&mut model, 8);
    lake.merge(&mut model, "m0", &updates([3, 13], "x"));
    let h = lake.handle();
    let racing = std::sync::Mutex::new(model.clone());
    let calls = AtomicU32::new(0);
    let hook = || {
        // Before the first commit only: delete a row of an appended file, update another.
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let mut guard = racing.lock().unwrap();
            let m: &mut Model = &mut guard;
            std::thread::scope(|s| {
                s.spawn(|| {
                    let mut rows = updates([25], "raced-");
                    rows.push((42, None));
                    lake.merge(m, "race", &rows);
                })
                .join()
                .unwrap();
            });
        }
    };
    let rep = block(compact_with(&h, &CompactOptions::default(), &hook)).unwrap();
    let model = racing.into_inner().unwrap();
    assert!(!model.contains_key(&42));
    // Row 42 stays deleted, 25 updated.
    lake.assert_rows(&model, true);
    assert_eq!(rep.conflicts, 1, "{rep:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // Redone on the new state: the race's delete file went with its data file; the race's
    // new row stays in its own file.
    let live = lake.live();
    assert_eq!(live.files.iter().filter(|f| !f.is_data()).count(), 0);
    assert_eq!((rep.data_files_after, rep.delete_files_after), (2, 0));
    assert_eq!(lake.head().0, "replace");
}

#[test]
fn compaction_that_keeps_losing_skips_the_group() {
    let lake = Lake::new(false);
    let mut model = Model::new();
    lake.appends(&mut model, 6);
    let h = lake.handle();
    let racing = std::sync::Mutex::new(model.clone());
    let calls = AtomicU32::new(0);
    // Every attempt loses to a merge deleting another row of the group.
    let hook = || {
        let n = calls.fetch_add(1, Ordering::SeqCst) as i64;
        let mut guard = racing.lock().unwrap();
        let m: &mut Model = &mut guard;
        std::thread::scope(|s| {
            s.spawn(|| lake.merge(m, &format!("race{n}"), &[(n * 10 + 1, None)]))
                .join()
                .unwrap();
        });
    };
    let rep = block(compact_with(&h, &CompactOptions::default(), &hook)).unwrap();
    let model = racing.into_inner().unwrap();
    assert_eq!(model.len(), 60 - 4);
    lake.assert_rows(&model, true);
    assert_eq!(rep.conflicts, 4, "{rep:?}");
    assert_eq!(rep.commit_id, None);
    assert_ne!(lake.head().0, "replace");
    // Left alone, it compacts.
    let rep = block(compact(&h, &CompactOptions::default())).unwrap();
    assert_eq!((rep.data_files_after, rep.delete_files_after), (1, 0));
    lake.assert_rows(&model, true);
}

#[test]
fn rewriting_manifests_keeps_files_sequence_numbers_and_rows() {
    let lake = Lake::new(true);
    let mut model = Model::new();
    lake.appends(&mut model, 12);
    lake.merge(&mut model, "m0", &updates([1, 2, 55, 119], "x"));
    lake.merge(&mut model, "m1", &[(7, None), (8, Some("y".into()))]);
    let before = lake.live();
    assert!(before.manifests.len() > 3, "{}", before.manifests.len());
    let h = lake.handle();
    let dry = block(rewrite_manifests(&h, true)).unwrap();
    assert_eq!(dry.commit_id, None);
    assert_eq!(lake.live().manifests.len(), before.manifests.len());
    let rep = block(rewrite_manifests(&h, false)).unwrap();
    assert!(rep.commit_id.is_some());
    let after = lake.live();
    // One data manifest and one delete manifest (one spec).
    assert_eq!(after.manifests.len(), 2);
    let key = |l: &LiveFiles| -> BTreeSet<(String, i64, i64, Option<i64>)> {
        l.files
            .iter()
            .map(|f| {
                (
                    f.path().to_string(),
                    f.snapshot_id,
                    f.sequence_number,
                    f.file_sequence_number,
                )
            })
            .collect()
    };
    assert_eq!(key(&after), key(&before));
    let (op, props) = lake.head();
    assert_eq!(op, "replace");
    assert_eq!(
        props.get(MAINTENANCE_KEY).map(String::as_str),
        Some("rewrite-manifests")
    );
    let data = before
        .files
        .iter()
        .filter(|f| f.is_data())
        .count()
        .to_string();
    assert_eq!(props.get("total-data-files"), Some(&data));
    lake.assert_rows(&model, true);
    // Sequence numbers still order deletes after their data: a merge lands on top.
    lake.merge(&mut model, "m2", &[(2, Some("z".into())), (9, None)]);
    lake.assert_rows(&model, true);
    // The merge added manifests: rewritten again; then there is nothing to do.
    block(rewrite_manifests(&h, false)).unwrap();
    let rep = block(rewrite_manifests(&h, false)).unwrap();
    assert_eq!(rep.commit_id, None);
}

#[test]
fn bin_packing_is_first_fit_decreasing() {
    assert_eq!(
        bin_pack(&[9, 8, 2, 2, 5, 4], 10),
        vec![vec![0], vec![1, 2], vec![4, 5], vec![3]]
    );
    // A file larger than the target is alone.
    assert_eq!(bin_pack(&[30, 1, 1], 10), vec![vec![0], vec![1, 2]]);
    assert_eq!(bin_pack(&[], 10), Vec::<Vec<usize>>::new());
    // 60 files of 10 into 100: 6 bins of 10 files.
    let bins = bin_pack(&[10; 60], 100);
    assert_eq!(bins.len(), 6);
    assert!(bins.iter().all(|b| b.len() == 10));
}

/// Files written before a column was added read it as NULL; compaction writes them with the
/// table's current schema, NULLs included.
#[test]
fn compaction_rewrites_files_of_older_schemas() {
    let lake = Lake::new(true);
    let mut model = Model::new();
    lake.appends(&mut model, 6);
    let wide = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("grp", DataType::Utf8, true),
        Field::new("extra", DataType::Utf8, true),
    ]));
    let ids: Vec<i64> = (100..106).collect();
    let b = RecordBatch::try_new(
        wide.clone(),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("w{i}")).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                ids.iter().map(|&i| grp(i)).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                ids.iter().map(|i| format!("e{i}")).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    let mut c = WriterContext::new("wide", "r", wide);
    c.source.delivery = Delivery::Incremental;
    let mut w = IcebergWriter::open(&lake.config("append"), &c).unwrap();
    w.write(&b).unwrap();
    w.commit(&commit("r", 1)).unwrap();
    Box::new(w).close().unwrap();
    for i in &ids {
        model.insert(*i, format!("w{i}"));
    }
    let extras = || -> BTreeMap<i64, Option<String>> {
        let table = lake.table();
        block(async {
            let batches: Vec<RecordBatch> = table
                .scan()
                .select(["id", "extra"])
                .build()
                .unwrap()
                .to_arrow()
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            let mut out = BTreeMap::new();
            for b in &batches {
                let id = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                let e = b.column(1).as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..b.num_rows() {
                    out.insert(id.value(i), (!e.is_null(i)).then(|| e.value(i).to_string()));
                }
            }
            out
        })
    };
    let before = extras();
    assert_eq!(before[&1], None);
    assert_eq!(before[&101], Some("e101".to_string()));
    let rep = block(compact(&lake.handle(), &CompactOptions::default())).unwrap();
    assert_eq!(rep.data_files_after, 3, "{rep:?}");
    assert_eq!(extras(), before);
    lake.assert_rows(&model, true);
}
