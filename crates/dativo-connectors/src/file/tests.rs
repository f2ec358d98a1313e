use std::io::Write;

use serde_json::json;

use dativo_core::conformance::check_reader;
use dativo_core::{Reader, ReaderContext, Shard};

use super::*;

fn ctx(state: Option<serde_json::Value>) -> ReaderContext {
    ReaderContext {
        job: "t".into(),
        stream: "t".into(),
        run_id: "r".into(),
        state,
        shard: Shard::default(),
    }
}

fn write_csvs(dir: &std::path::Path, files: usize, rows: usize) {
    for f in 0..files {
        let mut out = std::fs::File::create(dir.join(format!("part{f:02}.csv"))).unwrap();
        writeln!(out, "id,name,amount").unwrap();
        for r in 0..rows {
            let id = f * rows + r;
            writeln!(out, "{id},name {id},{}.5", id % 100).unwrap();
        }
    }
}

fn read_all(r: &mut FileReader) -> (u64, i64, Option<serde_json::Value>) {
    let (mut rows, mut sum, mut state) = (0, 0, None);
    while let Some(b) = r.read_batch().unwrap() {
        rows += b.num_rows() as u64;
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        sum += ids.values().iter().sum::<i64>();
        state = r.get_incremental_state().unwrap();
    }
    (rows, sum, state)
}

#[test]
fn csv_glob_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    write_csvs(dir.path(), 3, 100);
    let cfg = json!({"path": format!("{}/*.csv", dir.path().display()), "batch_size": 40});
    let report = check_reader(&mut || Ok(Box::new(FileReader::new())), &cfg);
    assert!(report.passed(), "{report:?}");
}

#[test]
fn resumes_inside_a_file_and_picks_up_new_files() {
    let dir = tempfile::tempdir().unwrap();
    write_csvs(dir.path(), 2, 100);
    let cfg = json!({"path": format!("{}/*.csv", dir.path().display()), "batch_size": 30});
    let mut r = FileReader::new();
    r.initialize(&cfg, &ctx(None)).unwrap();
    // Read three batches (90 rows of file 0), keep the state.
    for _ in 0..3 {
        r.read_batch().unwrap().unwrap();
    }
    let state = r.get_incremental_state().unwrap().unwrap();
    assert_eq!(state["current"]["rows"], 90);
    r.close().unwrap();

    let mut r = FileReader::new();
    r.initialize(&cfg, &ctx(Some(state))).unwrap();
    let (rows, sum, state) = read_all(&mut r);
    assert_eq!(rows, 110);
    assert_eq!(sum, (90..200).sum::<i64>());
    r.close().unwrap();

    write_csvs(dir.path(), 3, 100);
    let mut r = FileReader::new();
    r.initialize(&cfg, &ctx(state)).unwrap();
    let (rows, sum, _) = read_all(&mut r);
    assert_eq!((rows, sum), (100, (200..300).sum::<i64>()));
}

#[test]
fn mismatched_header_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_csvs(dir.path(), 1, 5);
    std::fs::write(dir.path().join("part99.csv"), "id,title,amount\n1,x,2\n").unwrap();
    let cfg = json!({"path": format!("{}/*.csv", dir.path().display())});
    let mut r = FileReader::new();
    r.initialize(&cfg, &ctx(None)).unwrap();
    let err = loop {
        match r.read_batch() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("expected an error"),
            Err(e) => break e,
        }
    };
    let msg = err.to_string();
    assert!(
        msg.contains("part99.csv") && msg.contains("header"),
        "{msg}"
    );
}

#[test]
fn validate_names_the_key() {
    let e = FileReader::validate(&json!({"path": "x.txt"})).unwrap_err();
    assert_eq!(e.key_path(), Some("path"));
    let e =
        FileReader::validate(&json!({"path": "x.csv", "schema": [{"name": "a", "type": "nope"}]}))
            .unwrap_err();
    assert_eq!(e.key_path(), Some("schema[0].type"));
    let e = FileReader::validate(&json!({"path": "x.csv", "batchsize": 1})).unwrap_err();
    assert_eq!(e.key_path(), Some("batchsize"));
}

#[test]
fn explicit_schema_and_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.jsonl");
    std::fs::write(&p, "{\"id\": 1, \"v\": \"x\"}\n{\"id\": 2, \"v\": null}\n").unwrap();
    let cfg = json!({"path": p.display().to_string(), "schema": [{"name": "id", "type": "int64"}, {"name": "v", "type": "string"}]});
    let report = check_reader(&mut || Ok(Box::new(FileReader::new())), &cfg);
    assert!(report.passed(), "{report:?}");
}
