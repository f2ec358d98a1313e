use std::io::Write;

use serde_json::json;

use dativo_core::conformance::check_open_reader;
use dativo_core::{OpenReader, ReaderContext};

use super::*;

fn ctx(state: Option<serde_json::Value>) -> ReaderContext {
    ReaderContext::new("t", "r", state)
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
    while let Some(b) = r.next_batch().unwrap() {
        rows += b.num_rows() as u64;
        let ids = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        sum += ids.values().iter().sum::<i64>();
        state = r.state().unwrap();
    }
    (rows, sum, state)
}

#[test]
fn csv_glob_passes_conformance() {
    let dir = tempfile::tempdir().unwrap();
    write_csvs(dir.path(), 3, 100);
    let cfg = json!({"path": format!("{}/*.csv", dir.path().display()), "batch_size": 40});
    let report = check_open_reader(|c, ctx| Ok(Box::new(FileReader::open(c, ctx)?)), &cfg);
    assert!(report.passed(), "{report:?}");
}

#[test]
fn resumes_inside_a_file_and_picks_up_new_files() {
    let dir = tempfile::tempdir().unwrap();
    write_csvs(dir.path(), 2, 100);
    let cfg = json!({"path": format!("{}/*.csv", dir.path().display()), "batch_size": 30});
    let mut r = FileReader::open(&cfg, &ctx(None)).unwrap();
    // Read three batches (90 rows of file 0), keep the state.
    for _ in 0..3 {
        r.next_batch().unwrap().unwrap();
    }
    let state = r.state().unwrap().unwrap();
    assert_eq!(state["current"]["rows"], 90);
    Box::new(r).close().unwrap();

    let mut r = FileReader::open(&cfg, &ctx(Some(state))).unwrap();
    let (rows, sum, state) = read_all(&mut r);
    assert_eq!(rows, 110);
    assert_eq!(sum, (90..200).sum::<i64>());
    Box::new(r).close().unwrap();

    write_csvs(dir.path(), 3, 100);
    let mut r = FileReader::open(&cfg, &ctx(state)).unwrap();
    let (rows, sum, _) = read_all(&mut r);
    assert_eq!((rows, sum), (100, (200..300).sum::<i64>()));
}

#[test]
fn mismatched_header_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_csvs(dir.path(), 1, 5);
    std::fs::write(dir.path().join("part99.csv"), "id,title,amount\n1,x,2\n").unwrap();
    let cfg = json!({"path": format!("{}/*.csv", dir.path().display())});
    let mut r = FileReader::open(&cfg, &ctx(None)).unwrap();
    let err = loop {
        match r.next_batch() {
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
    let report = check_open_reader(|c, ctx| Ok(Box::new(FileReader::open(c, ctx)?)), &cfg);
    assert!(report.passed(), "{report:?}");
}

/// Initialize a reader on `cfg` and read every batch; the schema and the batches, or the error.
fn read_everything(
    cfg: serde_json::Value,
) -> dativo_core::Result<(
    arrow::datatypes::SchemaRef,
    Vec<arrow::record_batch::RecordBatch>,
)> {
    let mut r = FileReader::open(&cfg, &ctx(None))?;
    let schema = r.schema();
    let mut batches = Vec::new();
    while let Some(b) = r.next_batch()? {
        assert_eq!(b.schema(), schema, "batches carry the announced schema");
        batches.push(b);
    }
    Ok((schema, batches))
}

#[test]
fn second_precision_timestamps_are_handed_over_as_microseconds() {
    use arrow::array::{Array, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, TimeUnit};

    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("a.csv");
    std::fs::write(&csv, "id,at\n1,2026-01-06T09:42:36\n2,\n").unwrap();
    let jsonl = dir.path().join("a.jsonl");
    std::fs::write(&jsonl, "{\"id\": 1, \"at\": 1767692556}\n{\"id\": 2}\n").unwrap();
    let declared = json!([{"name": "id", "type": "int64"}, {"name": "at", "type": "timestamp(s)"}]);
    for cfg in [
        json!({"path": csv.display().to_string()}),
        json!({"path": csv.display().to_string(), "schema": declared}),
        json!({"path": jsonl.display().to_string(), "schema": declared}),
    ] {
        let (schema, batches) = read_everything(cfg.clone()).unwrap();
        let want = DataType::Timestamp(TimeUnit::Microsecond, None);
        assert_eq!(schema.field(1).data_type(), &want, "{cfg}");
        let at = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        // 2026-01-06T09:42:36 UTC = 1767692556 s.
        assert_eq!(at.value(0), 1_767_692_556_000_000, "{cfg}");
        assert!(at.is_null(1), "{cfg}");
    }
}

#[test]
fn jsonl_integers_beyond_int64_load_as_decimal() {
    use arrow::array::Decimal128Array;
    use arrow::datatypes::DataType;

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.jsonl");
    let values: [i128; 4] = [
        1,
        i64::MAX as i128,
        i64::MAX as i128 + 1,
        -(i64::MAX as i128) - 2,
    ];
    let text: String = values
        .iter()
        .map(|v| format!("{{\"big\": {v}, \"small\": 3}}\n"))
        .collect();
    std::fs::write(&p, text).unwrap();
    let (schema, batches) = read_everything(json!({"path": p.display().to_string()})).unwrap();
    assert_eq!(
        schema.field_with_name("big").unwrap().data_type(),
        &DataType::Decimal128(38, 0)
    );
    assert_eq!(
        schema.field_with_name("small").unwrap().data_type(),
        &DataType::Int64
    );
    let big = batches[0]
        .column(schema.index_of("big").unwrap())
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .unwrap();
    assert_eq!(big.values().to_vec(), values.to_vec());
}

#[test]
fn jsonl_wide_integer_next_to_fractions_is_a_data_error_naming_field_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("mixed.jsonl");
    std::fs::write(&p, "{\"v\": 0.5}\n{\"v\": 9223372036854775809}\n").unwrap();
    let e = read_everything(json!({"path": p.display().to_string()})).unwrap_err();
    assert_eq!(e.kind(), dativo_core::ErrorKind::Data, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("mixed.jsonl") && msg.contains("`v`") && msg.contains("9223372036854775809"),
        "{msg}"
    );
}

#[test]
fn unterminated_quote_is_a_data_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.csv");
    std::fs::write(&p, "id,name\n1,\"abc\n2,def\n3,ghi").unwrap();
    let mut r = FileReader::open(&json!({"path": p.display().to_string()}), &ctx(None)).unwrap();
    // The merged row is never handed over: the first read is the error.
    let e = r.next_batch().unwrap_err();
    assert_eq!(e.kind(), dativo_core::ErrorKind::Data, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("bad.csv") && msg.contains("line 2") && msg.contains("byte 10"),
        "{msg}"
    );
}

#[test]
fn literal_quotes_in_unquoted_fields_still_load() {
    use arrow::array::StringArray;

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.csv");
    std::fs::write(&p, "id,h\n1,5'10\"\n2,\"a\"\"b\"\n3,x\"\n").unwrap();
    let (_, batches) = read_everything(json!({"path": p.display().to_string()})).unwrap();
    let h = batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    assert_eq!(
        h.iter().collect::<Vec<_>>(),
        [Some("5'10\""), Some("a\"b"), Some("x\"")]
    );
}

#[test]
fn tsv_and_tab_files_default_to_tabs_and_a_configured_delimiter_wins() {
    use arrow::array::StringArray;

    let dir = tempfile::tempdir().unwrap();
    for ext in ["tsv", "TAB"] {
        let p = dir.path().join(format!("a.{ext}"));
        std::fs::write(&p, "id\tname\n1\tSmith, John\n").unwrap();
        let (schema, batches) = read_everything(json!({"path": p.display().to_string()})).unwrap();
        assert_eq!(schema.fields().len(), 2, "{ext}");
        let name = batches[0]
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(name.value(0), "Smith, John");
    }
    let p = dir.path().join("b.tsv");
    std::fs::write(&p, "id;name\n1;a\tb\n").unwrap();
    let (schema, _) =
        read_everything(json!({"path": p.display().to_string(), "csv": {"delimiter": ";"}}))
            .unwrap();
    assert_eq!(schema.fields().len(), 2);
}
