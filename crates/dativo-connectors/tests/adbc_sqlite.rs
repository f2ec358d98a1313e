//! The adbc reader and writer through the ADBC SQLite driver (the `.so` inside the
//! `adbc-driver-sqlite` wheel). The driver is found at `DATIVO_TEST_ADBC_SQLITE`, else in the
//! repository's `.venv`; without it the tests say so and pass.

use std::path::PathBuf;

use arrow::array::{Array, Int64Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde_json::json;

use dativo_connectors::adbc::{AdbcReader, AdbcWriter};
use dativo_core::{Commit, OpenReader, OpenWriter, ReaderContext, WriterContext};

fn driver() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DATIVO_TEST_ADBC_SQLITE") {
        return Some(PathBuf::from(p));
    }
    let lib = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/lib");
    std::fs::read_dir(lib)
        .ok()?
        .flatten()
        .map(|e| {
            e.path()
                .join("site-packages/adbc_driver_sqlite/libadbc_driver_sqlite.so")
        })
        .find(|p| p.is_file())
}

fn schema() -> SchemaRef {
    dativo_core::conformance::id_name_schema()
}

fn batch(ids: &[i64]) -> RecordBatch {
    dativo_core::conformance::id_name_batch(ids)
}

fn wctx(run: &str) -> WriterContext {
    WriterContext::new("j", run, schema())
}

fn rctx(state: Option<serde_json::Value>) -> ReaderContext {
    ReaderContext::new("j", "r", state)
}

/// Every id the reader returns, and its final state.
fn read_ids(r: &mut AdbcReader) -> (Vec<i64>, Option<serde_json::Value>) {
    let mut ids = Vec::new();
    while let Some(b) = r.next_batch().unwrap() {
        let col = b.column(b.schema().index_of("id").unwrap()).clone();
        let col = col.as_any().downcast_ref::<Int64Array>().unwrap().clone();
        ids.extend((0..col.len()).map(|i| col.value(i)));
    }
    (ids, r.state().unwrap())
}

#[test]
fn commits_are_transactions_with_the_state_and_a_dropped_writer_rolls_back() {
    let Some(driver) = driver() else {
        assert!(
            std::env::var_os("DATIVO_REQUIRE_PLUGINS").is_none(),
            "no ADBC SQLite driver (set DATIVO_TEST_ADBC_SQLITE) and DATIVO_REQUIRE_PLUGINS is set"
        );
        eprintln!("skipped: no ADBC SQLite driver (set DATIVO_TEST_ADBC_SQLITE)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let uri = dir.path().join("db.sqlite").display().to_string();
    let wcfg = json!({"driver": driver.display().to_string(), "uri": uri, "table": "events"});
    let rcfg = json!({"driver": driver.display().to_string(), "uri": uri, "table": "events", "cursor": "id"});

    let mut w = AdbcWriter::open(&wcfg, &wctx("r1")).unwrap();
    w.write(&batch(&[1, 2, 3])).unwrap();
    let report = w
        .commit(&Commit {
            state: Some(json!({"cursor": 3})),
            run_id: "r1".into(),
            sequence: 1,
        })
        .unwrap();
    assert_eq!(report.rows, 3);
    // Written, never committed: gone with the writer.
    w.write(&batch(&[4, 5])).unwrap();
    drop(w);

    let mut w = AdbcWriter::open(&wcfg, &wctx("r2")).unwrap();
    let st = w.committed_state().unwrap().unwrap();
    assert_eq!(st.state, Some(json!({"cursor": 3})));
    assert_eq!(st.run_id.as_deref(), Some("r1"));
    Box::new(w).close().unwrap();

    let mut r = AdbcReader::open(&rcfg, &rctx(None)).unwrap();
    assert_eq!(r.schema().field(0).name(), "id");
    let (ids, state) = read_ids(&mut r);
    assert_eq!(ids, vec![1, 2, 3]);
    assert_eq!(state, Some(json!({"cursor": 3})));
    Box::new(r).close().unwrap();

    // From the state on: nothing new.
    let mut r = AdbcReader::open(&rcfg, &rctx(state)).unwrap();
    assert_eq!(read_ids(&mut r).0, Vec::<i64>::new());
}

#[test]
fn a_missing_driver_is_a_config_error_naming_the_key() {
    let e = AdbcReader::open(
        &json!({"driver": "/nonexistent/libadbc.so", "uri": "x", "table": "t"}),
        &rctx(None),
    )
    .err()
    .expect("refused");
    assert_eq!(e.kind(), dativo_core::ErrorKind::Config);
    assert_eq!(e.key_path(), Some("driver"));
    let e = AdbcReader::validate(&json!({"driver": "d", "uri": "x"})).unwrap_err();
    assert!(
        e.to_string().contains("exactly one of `query` or `table`"),
        "{e}"
    );
}
