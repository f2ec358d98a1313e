//! `mode: merge` and `mode: overwrite` through the writer, read back by iceberg-rust's scan
//! (which applies position deletes) and, from the test virtualenv, by pyiceberg and DuckDB's
//! Iceberg extension: full rows, not counts.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use futures_util::TryStreamExt;
use serde_json::{json, Value};

use dativo_core::rt::runtime;
use dativo_core::{Commit, Delivery, ErrorKind, OpenWriter, StreamInfo, WriterContext};

use super::modes::OP_COLUMN;
use super::writer::load_existing;
use super::{IcebergWriter, IcebergWriterConfig};

type Row = (i64, String);

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new(OP_COLUMN, DataType::Utf8, true),
    ]))
}

/// A batch of (id, name or `None` for a deletion).
fn batch(rows: &[(i64, Option<&str>)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter()
                    .map(|r| if r.1.is_some() { "U" } else { "D" })
                    .collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn ctx(job: &str, run: &str, pk: &[&str]) -> WriterContext {
    let mut c = WriterContext::new(job, run, schema());
    c.source = StreamInfo {
        primary_key: pk.iter().map(|s| s.to_string()).collect(),
        not_null: Vec::new(),
        delivery: Delivery::Incremental,
        estimated_rows: None,
    };
    c
}

fn commit(run: &str, seq: u64, cursor: i64) -> Commit {
    Commit {
        state: Some(json!({ "cursor": cursor })),
        run_id: run.into(),
        sequence: seq,
    }
}

struct Lake {
    dir: tempfile::TempDir,
}

impl Lake {
    fn new() -> Lake {
        Lake {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self, extra: Value) -> Value {
        let d = self.dir.path().display();
        let mut c = json!({
            "table": "ns.events",
            "catalog": {"uri": format!("sqlite://{d}/catalog.db")},
            "warehouse": format!("{d}/wh"),
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    }

    /// The table's rows as iceberg-rust's scan reads them, sorted; and the current
    /// snapshot's operation.
    fn rows(&self) -> (Vec<Row>, String) {
        let cfg: IcebergWriterConfig = serde_json::from_value(self.config(json!({}))).unwrap();
        runtime().block_on(async {
            let table = load_existing(&cfg).await.unwrap();
            let op = table
                .metadata()
                .current_snapshot()
                .map(|s| s.summary().operation.as_str().to_string())
                .unwrap_or_default();
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
                let id = b.column_by_name("id").unwrap();
                let id = id.as_any().downcast_ref::<Int64Array>().unwrap();
                let name = b.column_by_name("name").unwrap();
                let name = name.as_any().downcast_ref::<StringArray>().unwrap();
                for i in 0..b.num_rows() {
                    out.push((id.value(i), name.value(i).to_string()));
                }
            }
            out.sort();
            (out, op)
        })
    }

    /// The rows pyiceberg and DuckDB read (each sorted), or `None` when the test
    /// virtualenv is missing (allowed only without DATIVO_REQUIRE_PLUGINS).
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
t = cat.load_table("ns.events")
a = t.scan().to_arrow()
rows = sorted(zip(a.column("id").to_pylist(), a.column("name").to_pylist()))
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
            .arg("SELECT id, name FROM iceberg_scan('{metadata}') ORDER BY id, name")
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

    /// Every reader sees `expect`.
    fn assert_rows(&self, expect: &[(i64, &str)]) {
        let expect: Vec<Row> = expect.iter().map(|(i, n)| (*i, n.to_string())).collect();
        assert_eq!(self.rows().0, expect, "iceberg-rust");
        if let Some((py, duck)) = self.external() {
            assert_eq!(py, expect, "pyiceberg");
            assert_eq!(duck, expect, "DuckDB");
        }
    }
}

fn merge_writes_upserts_and_deletes(extra: Value) {
    let lake = Lake::new();
    let cfg = lake.config(
        json!({"mode": "merge"})
            .as_object()
            .map(|m| {
                let mut m = m.clone();
                m.extend(extra.as_object().unwrap().clone());
                Value::Object(m)
            })
            .unwrap(),
    );
    let mut w = IcebergWriter::open(&cfg, &ctx("j", "r1", &["id"])).unwrap();
    w.write(&batch(&[
        (1, Some("a")),
        (2, Some("a")),
        (3, Some("a")),
        (4, Some("a")),
        (5, Some("a")),
    ]))
    .unwrap();
    w.commit(&commit("r1", 1, 1)).unwrap();
    lake.assert_rows(&[(1, "a"), (2, "a"), (3, "a"), (4, "a"), (5, "a")]);

    // One commit of three batches: a key twice in one batch (the last wins), a key written
    // in one batch and replaced in the next, a key deleted then written again, a key written
    // then deleted, and an old row whose key moves to another name (another partition when
    // the table is partitioned by name).
    w.write(&batch(&[(2, Some("b")), (6, Some("b")), (6, Some("c"))]))
        .unwrap();
    w.write(&batch(&[(2, Some("c")), (3, None), (7, Some("b"))]))
        .unwrap();
    w.write(&batch(&[
        (7, None),
        (3, Some("d")),
        (8, Some("b")),
        (4, Some("z")),
    ]))
    .unwrap();
    let report = w.commit(&commit("r1", 2, 2)).unwrap();
    assert!(report.files.iter().any(|f| f.contains("dativo-del-")));
    let expect = [
        (1, "a"),
        (2, "c"),
        (3, "d"),
        (4, "z"),
        (5, "a"),
        (6, "c"),
        (8, "b"),
    ];
    lake.assert_rows(&expect);
    assert_eq!(lake.rows().1, "overwrite");

    // Deletions only: a `delete` snapshot; the state is committed with it.
    w.write(&batch(&[(1, None), (99, None)])).unwrap();
    w.commit(&commit("r1", 3, 3)).unwrap();
    lake.assert_rows(&[(2, "c"), (3, "d"), (4, "z"), (5, "a"), (6, "c"), (8, "b")]);
    assert_eq!(lake.rows().1, "delete");
    assert_eq!(
        w.committed_state().unwrap().unwrap().state,
        Some(json!({"cursor": 3}))
    );
    Box::new(w).close().unwrap();

    // A new run merges on top of the deletes of the earlier ones.
    let mut w = IcebergWriter::open(&cfg, &ctx("j", "r2", &["id"])).unwrap();
    w.write(&batch(&[(2, Some("e")), (4, Some("e"))])).unwrap();
    w.commit(&commit("r2", 1, 4)).unwrap();
    lake.assert_rows(&[(2, "e"), (3, "d"), (4, "e"), (5, "a"), (6, "c"), (8, "b")]);
}

#[test]
fn merge_upserts_deletes_and_resolves_duplicates_by_source_order() {
    merge_writes_upserts_and_deletes(json!({}));
}

#[test]
fn merge_into_a_partitioned_table_deletes_a_key_that_moved_partition() {
    merge_writes_upserts_and_deletes(json!({"partition_by": ["name"]}));
}

#[test]
fn merge_refuses_a_null_key_and_a_missing_key_naming_them() {
    let lake = Lake::new();
    let cfg = lake.config(json!({"mode": "merge"}));
    let e = IcebergWriter::open(&cfg, &ctx("j", "r1", &[]))
        .err()
        .expect("no key");
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.to_string().contains("primary_key"), "{e}");
    let e = IcebergWriter::open(
        &lake.config(json!({"mode": "merge", "primary_key": ["nope"]})),
        &ctx("j", "r1", &[]),
    )
    .err()
    .expect("unknown key column");
    assert!(e.to_string().contains("`nope`"), "{e}");

    let mut w = IcebergWriter::open(&cfg, &ctx("j", "r1", &["id"])).unwrap();
    w.write(&batch(&[(1, Some("a"))])).unwrap();
    w.commit(&commit("r1", 1, 1)).unwrap();
    w.write(&batch(&[(2, Some("b"))])).unwrap();
    let mut nulls = batch(&[(3, Some("c"))]);
    let cols = vec![
        Arc::new(Int64Array::from(vec![None::<i64>])) as _,
        nulls.column(1).clone(),
        nulls.column(2).clone(),
    ];
    nulls = RecordBatch::try_new(schema(), cols).unwrap();
    let e = w.write(&nulls).expect_err("a NULL key");
    assert_eq!(e.kind(), ErrorKind::Data);
    assert!(e.to_string().contains("`id`"), "{e}");
    w.abort().unwrap();
    lake.assert_rows(&[(1, "a")]);
}

#[test]
fn overwrite_replaces_the_table_or_only_the_partitions_written() {
    let lake = Lake::new();
    let full = |run: &str| {
        let mut c = ctx("j", run, &[]);
        c.source.delivery = Delivery::Full;
        c
    };
    // A full refresh overwrites without being told; the writer commits once.
    let cfg = lake.config(json!({"partition_by": ["name"]}));
    let mut w = IcebergWriter::open(&cfg, &full("r1")).unwrap();
    assert!(w.commits_once());
    w.write(&batch(&[(1, Some("a")), (2, Some("b")), (3, Some("c"))]))
        .unwrap();
    w.commit(&commit("r1", 1, 1)).unwrap();
    Box::new(w).close().unwrap();
    let mut w = IcebergWriter::open(&cfg, &full("r2")).unwrap();
    w.write(&batch(&[(4, Some("a")), (5, Some("b")), (6, Some("c"))]))
        .unwrap();
    w.commit(&commit("r2", 1, 2)).unwrap();
    Box::new(w).close().unwrap();
    lake.assert_rows(&[(4, "a"), (5, "b"), (6, "c")]);
    assert_eq!(lake.rows().1, "overwrite");

    // Partitions: only `a` is replaced.
    let cfg = lake
        .config(json!({"partition_by": ["name"], "mode": "overwrite", "overwrite": "partitions"}));
    let mut w = IcebergWriter::open(&cfg, &ctx("j", "r3", &[])).unwrap();
    w.write(&batch(&[(7, Some("a")), (8, Some("a"))])).unwrap();
    w.commit(&commit("r3", 1, 3)).unwrap();
    Box::new(w).close().unwrap();
    lake.assert_rows(&[(5, "b"), (6, "c"), (7, "a"), (8, "a")]);

    // An overwrite with no rows empties the table (a `delete` snapshot).
    let mut w = IcebergWriter::open(&cfg.clone(), &full("r4")).unwrap();
    drop(w.commit(&commit("r4", 1, 4)));
    let cfg = lake.config(json!({"mode": "overwrite"}));
    let mut w = IcebergWriter::open(&cfg, &ctx("j", "r5", &[])).unwrap();
    w.commit(&commit("r5", 1, 5)).unwrap();
    lake.assert_rows(&[]);
    assert_eq!(lake.rows().1, "delete");
    assert_eq!(
        w.committed_state().unwrap().unwrap().state,
        Some(json!({"cursor": 5}))
    );

    // Shards cannot each replace the table.
    let mut c = full("r6");
    c.shard = dativo_core::Shard { index: 0, count: 2 };
    let e = IcebergWriter::open(&lake.config(json!({})), &c)
        .err()
        .expect("sharded full refresh");
    assert_eq!(e.kind(), ErrorKind::Config);
}

#[test]
fn two_merge_jobs_into_one_table_at_once_both_land() {
    let lake = Lake::new();
    let cfg = lake.config(json!({"mode": "merge", "primary_key": ["id"]}));
    // Create the table first so both start from it.
    let mut w = IcebergWriter::open(&cfg, &ctx("setup", "r0", &[])).unwrap();
    w.write(&batch(&[(0, Some("x"))])).unwrap();
    w.commit(&commit("r0", 1, 0)).unwrap();
    Box::new(w).close().unwrap();
    let handles: Vec<_> = [(1_i64, "j1"), (1000, "j2")]
        .into_iter()
        .map(|(base, job)| {
            let cfg = cfg.clone();
            std::thread::spawn(move || {
                let mut w = IcebergWriter::open(&cfg, &ctx(job, "r", &[])).unwrap();
                for round in 0..6_i64 {
                    let name = format!("{job}-{round}");
                    let rows: Vec<(i64, Option<&str>)> =
                        (0..20).map(|i| (base + i, Some(name.as_str()))).collect();
                    w.write(&batch(&rows)).unwrap();
                    w.commit(&commit("r", round as u64 + 1, round)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let mut expect: Vec<(i64, String)> = vec![(0, "x".into())];
    expect.extend((0..20).map(|i| (1 + i, "j1-5".to_string())));
    expect.extend((0..20).map(|i| (1000 + i, "j2-5".to_string())));
    let want: Vec<(i64, &str)> = expect.iter().map(|(i, n)| (*i, n.as_str())).collect();
    lake.assert_rows(&want);
}

/// A batch of change rows: (op, id, name); a `T` row has NULL id and name.
fn changes(rows: &[(&str, Option<i64>, Option<&str>)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap()
}

fn merge_applies_truncations(extra: Value) {
    let lake = Lake::new();
    let mut c = json!({"mode": "merge"});
    c.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let cfg = lake.config(c);
    let mut w = IcebergWriter::open(&cfg, &ctx("j", "r1", &["id"])).unwrap();
    w.write(&batch(&[(1, Some("a")), (2, Some("b")), (3, Some("a"))]))
        .unwrap();
    w.commit(&commit("r1", 1, 1)).unwrap();
    // An update and a delete, then a truncation mid-batch, rows after it, a second batch
    // with another truncation and a row re-using a key written before it.
    w.write(&changes(&[
        ("U", Some(2), Some("c")),
        ("D", Some(3), None),
        ("I", Some(4), Some("a")),
        ("T", None, None),
        ("I", Some(5), Some("b")),
        ("I", Some(1), Some("z")),
    ]))
    .unwrap();
    w.write(&changes(&[
        ("U", Some(5), Some("c")),
        ("T", None, None),
        ("I", Some(6), Some("a")),
        ("I", Some(1), Some("y")),
    ]))
    .unwrap();
    w.commit(&commit("r1", 2, 2)).unwrap();
    lake.assert_rows(&[(1, "y"), (6, "a")]);
    assert_eq!(lake.rows().1, "overwrite");
    // A truncation alone empties the table, and merging continues after it.
    w.write(&changes(&[("T", None, None)])).unwrap();
    w.commit(&commit("r1", 3, 3)).unwrap();
    lake.assert_rows(&[]);
    w.write(&changes(&[
        ("I", Some(7), Some("a")),
        ("U", Some(7), Some("b")),
    ]))
    .unwrap();
    w.commit(&commit("r1", 4, 4)).unwrap();
    lake.assert_rows(&[(7, "b")]);
}

#[test]
fn merge_applies_a_truncation_to_the_table_and_to_the_commits_own_rows() {
    merge_applies_truncations(json!({}));
}

#[test]
fn merge_applies_a_truncation_to_a_partitioned_table() {
    merge_applies_truncations(json!({"partition_by": ["name"]}));
}
