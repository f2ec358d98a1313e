//! The conformance suite every reader and writer must pass — built-in or plugin, in any language.
//! `dativo plugin test` runs it; connector tests call [`check_reader`] / [`check_writer`] directly.
//!
//! Plugins' five-method readers and writers go through [`check_reader`] / [`check_writer`];
//! built-ins, which open ready, through [`check_open_reader`] / [`check_open_writer`].
//!
//! Reader checks: initialize and get_schema succeed; every batch matches the declared schema
//! (names, types, nullability); the state is monotonic and, for incremental readers, a new
//! instance started from a mid-stream state returns exactly the rest and one started from the
//! final state returns no rows (state covers what was read); errors surface with a message;
//! close succeeds.
//! Writer checks: every supported Arrow type with nulls is accepted; finalize reports the rows;
//! `committed_state` returns what finalize stored; `abort` discards uncommitted batches; an
//! empty commit succeeds; close succeeds.

use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::interface::*;

/// The outcome of one check.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// `Ok(detail)` or `Err(reason)`.
    pub outcome: std::result::Result<String, String>,
}

/// The outcome of a suite.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Checks in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    fn pass(&mut self, name: &str, detail: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            outcome: Ok(detail.into()),
        });
    }
    fn fail(&mut self, name: &str, reason: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            outcome: Err(reason.into()),
        });
    }
    fn record<T>(&mut self, name: &str, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => {
                self.pass(name, "");
                Some(v)
            }
            Err(e) => {
                self.fail(name, e.to_string());
                None
            }
        }
    }
    /// Whether every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.outcome.is_ok())
    }
    /// Turn a failed report into an error listing the failed checks.
    pub fn into_result(self) -> Result<Report> {
        if self.passed() {
            return Ok(self);
        }
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter_map(|c| c.outcome.as_ref().err().map(|e| format!("{}: {e}", c.name)))
            .collect();
        Err(Error::plugin(format!(
            "conformance failed: {}",
            failed.join("; ")
        )))
    }
}

fn ctx_reader(state: Option<Value>) -> ReaderContext {
    ReaderContext::new("conformance", "conformance-run", state)
}

/// Check that `batch` has exactly `schema` (names, types, nullability of every field).
pub fn check_batch_schema(schema: &Schema, batch: &RecordBatch) -> Result<()> {
    let got = batch.schema();
    if got.fields().len() != schema.fields().len() {
        return Err(Error::schema(format!(
            "batch has {} columns, the declared schema has {}",
            got.fields().len(),
            schema.fields().len()
        )));
    }
    for (want, have) in schema.fields().iter().zip(got.fields()) {
        if want.name() != have.name() || want.data_type() != have.data_type() {
            return Err(Error::schema(format!(
                "batch column `{}` ({}) does not match declared column `{}` ({})",
                have.name(),
                have.data_type(),
                want.name(),
                want.data_type()
            )));
        }
        if !want.is_nullable() && have.is_nullable() {
            let col = batch.column(batch.schema().index_of(have.name()).unwrap_or(0));
            if col.null_count() > 0 {
                return Err(Error::schema(format!(
                    "column `{}` is declared non-nullable but the batch holds nulls",
                    want.name()
                )));
            }
        }
    }
    Ok(())
}

/// Read a fresh instance to the end from `state`: (rows, batches).
fn read_all(
    make: &mut dyn FnMut() -> Result<Box<dyn Reader>>,
    config: &Value,
    state: Option<Value>,
) -> Result<u64> {
    let mut r = make()?;
    let out = (|| -> Result<u64> {
        r.initialize(config, &ctx_reader(state))?;
        let schema = r.get_schema()?;
        let mut n = 0u64;
        while let Some(b) = r.read_batch()? {
            check_batch_schema(&schema, &b)?;
            n += b.num_rows() as u64;
        }
        Ok(n)
    })();
    let closed = r.close();
    let n = out?;
    closed?;
    Ok(n)
}

/// Run the reader suite. `make` builds a fresh, uninitialized reader each time it is called.
///
/// Checks: initialize/get_schema; every batch has the declared schema; the state never goes
/// back to none once set; a new instance started from a mid-stream state returns exactly the
/// rows after it; one started from the final state returns nothing (an empty stream); a
/// config that is not a mapping is refused with a message (errors surface); close succeeds,
/// also after a failed initialize.
pub fn check_reader(make: &mut dyn FnMut() -> Result<Box<dyn Reader>>, config: &Value) -> Report {
    let mut report = Report::default();
    let Some(mut reader) = report.record("create", make()) else {
        return report;
    };
    if report
        .record("initialize", reader.initialize(config, &ctx_reader(None)))
        .is_none()
    {
        report.record("close after failed initialize", reader.close());
        return report;
    }
    let Some(schema) = report.record("get_schema", reader.get_schema()) else {
        report.record("close", reader.close());
        return report;
    };
    let (mut rows, mut batches, mut nulls) = (0u64, 0u64, 0u64);
    let mut last_state: Option<Value> = None;
    let mut mid: Option<(u64, Value)> = None;
    let mut failed = None;
    let mut went_back = None;
    loop {
        match reader.read_batch() {
            Ok(Some(b)) => {
                if let Err(e) = check_batch_schema(&schema, &b) {
                    failed = Some(format!("batch {batches}: {e}"));
                    break;
                }
                rows += b.num_rows() as u64;
                nulls += b
                    .columns()
                    .iter()
                    .map(|c| c.null_count() as u64)
                    .sum::<u64>();
                batches += 1;
                match reader.get_incremental_state() {
                    Ok(s) => {
                        if last_state.is_some() && s.is_none() && went_back.is_none() {
                            went_back =
                                Some(format!("the state went back to none after batch {batches}"));
                        }
                        if batches == 1 {
                            if let Some(s) = &s {
                                mid = Some((rows, s.clone()));
                            }
                        }
                        last_state = s;
                    }
                    Err(e) => {
                        failed = Some(format!("get_incremental_state after batch {batches}: {e}"));
                        break;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                failed = Some(format!("read_batch: {e}"));
                break;
            }
        }
    }
    let types: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    match failed {
        Some(f) => report.fail("read every batch with the declared schema", f),
        None => report.pass(
            "read every batch with the declared schema",
            format!(
                "{batches} batches, {rows} rows, {nulls} nulls; columns: {}",
                types.join(", ")
            ),
        ),
    }
    report.record("close", reader.close());
    match went_back {
        Some(w) => report.fail("state is monotonic", w),
        None if last_state.is_some() => report.pass("state is monotonic", ""),
        None => report.pass("state is monotonic", "not incremental (no state)"),
    }
    if let Some((rows_at_mid, state)) = mid.filter(|_| batches > 1) {
        let want = rows - rows_at_mid;
        match read_all(make, config, Some(state.clone())) {
            Ok(n) if n == want => report.pass(
                "resume from a mid-stream state",
                format!("{n} rows after {state}"),
            ),
            Ok(n) => report.fail(
                "resume from a mid-stream state",
                format!("resuming from {state} (after batch 1) returned {n} rows; {want} followed it in the first read"),
            ),
            Err(e) => report.fail("resume from a mid-stream state", e.to_string()),
        }
    }
    if let Some(state) = last_state {
        // Resume from the final state: an empty stream, nothing may come back.
        match read_all(make, config, Some(state.clone())) {
            Ok(0) => report.pass(
                "empty stream: resume from the final state",
                format!("state {state}"),
            ),
            Ok(n) => report.fail(
                "empty stream: resume from the final state",
                format!("resuming from the final state {state} returned {n} rows again"),
            ),
            Err(e) => report.fail("empty stream: resume from the final state", e.to_string()),
        }
    }
    check_errors_surface(&mut report, || {
        let mut r = make()?;
        let out = r.initialize(&Value::String("not a mapping".into()), &ctx_reader(None));
        let closed = r.close();
        Ok((out, closed))
    });
    report
}

/// The cause a plugin host gives an error the implementation reported without a message (a
/// C plugin's status code with `last_error` empty): the suite fails such errors.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMessage;

impl std::fmt::Display for NoMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no message")
    }
}

impl std::error::Error for NoMessage {}

/// An initialize with a config that is not a mapping must fail with a message, and close must
/// still succeed.
fn check_errors_surface(
    report: &mut Report,
    run: impl FnOnce() -> Result<(Result<()>, Result<()>)>,
) {
    const NAME: &str = "errors surface (a config that is not a mapping)";
    match run() {
        Err(e) => report.fail(NAME, format!("cannot create an instance: {e}")),
        Ok((Ok(()), _)) => report.pass(NAME, "accepted: this implementation ignores its config"),
        Ok((Err(e), closed)) => {
            let msg = e.to_string();
            let no_message = std::error::Error::source(&e).is_some_and(|s| s.is::<NoMessage>());
            if no_message || e.message().trim().is_empty() {
                report.fail(NAME, format!("refused without a message: {msg}"));
            } else if let Err(c) = closed {
                report.fail(NAME, format!("refused ({msg}), but close then failed: {c}"));
            } else {
                report.pass(NAME, format!("refused: {}", e.message()));
            }
        }
    }
}

/// Run the writer suite. `make` builds a fresh, uninitialized writer each time it is called.
pub fn check_writer(make: &mut dyn FnMut() -> Result<Box<dyn Writer>>, config: &Value) -> Report {
    let mut report = Report::default();
    let batch = sample_batch();
    let ctx = WriterContext::new("conformance", "conformance-run", batch.schema());
    let Some(mut w) = report.record("create", make()) else {
        return report;
    };
    if report
        .record("initialize", w.initialize(config, &ctx))
        .is_none()
    {
        report.record("close after failed initialize", w.close());
        return report;
    }
    if report
        .record(
            "write_batch (every type, with nulls)",
            w.write_batch(&batch),
        )
        .is_some()
    {
        let state1 = json!({"conformance": 1});
        let commit = Commit {
            state: Some(state1.clone()),
            run_id: "conformance-run".into(),
            sequence: 1,
        };
        match w.finalize(&commit) {
            Ok(r) if r.rows == batch.num_rows() as u64 => report.pass(
                "finalize",
                format!("{} rows, {} files", r.rows, r.files.len()),
            ),
            Ok(r) => report.fail(
                "finalize",
                format!(
                    "reported {} rows, {} were written",
                    r.rows,
                    batch.num_rows()
                ),
            ),
            Err(e) => report.fail("finalize", e.to_string()),
        }
        match w.committed_state() {
            Ok(Some(c)) if c.state.as_ref() == Some(&state1) => {
                report.pass("committed_state after finalize", "")
            }
            Ok(Some(c)) => report.fail(
                "committed_state after finalize",
                format!("expected {state1}, got {:?}", c.state),
            ),
            Ok(None) => report.pass("committed_state after finalize", "not supported"),
            Err(e) => report.fail("committed_state after finalize", e.to_string()),
        }
        let aborted = w.write_batch(&batch).and_then(|_| w.abort());
        report.record("abort discards uncommitted batches", aborted);
        match w.committed_state() {
            Ok(Some(c)) if c.state.as_ref() != Some(&state1) => report.fail(
                "committed_state after abort",
                format!("expected {state1}, got {:?}", c.state),
            ),
            Ok(_) => report.pass("committed_state after abort", ""),
            Err(e) => report.fail("committed_state after abort", e.to_string()),
        }
        let empty = Commit {
            state: Some(json!({"conformance": 2})),
            run_id: "conformance-run".into(),
            sequence: 2,
        };
        match w.finalize(&empty) {
            Ok(r) if r.rows == 0 => report.pass("empty commit", ""),
            Ok(r) => report.fail("empty commit", format!("reported {} rows", r.rows)),
            Err(e) => report.fail("empty commit", e.to_string()),
        }
    }
    report.record("close", w.close());
    check_errors_surface(&mut report, || {
        let mut w = make()?;
        let out = w.initialize(&Value::String("not a mapping".into()), &ctx);
        let closed = w.close();
        Ok((out, closed))
    });
    report
}

/// Opens a reader for one run: what a built-in's `open` is.
pub type OpenReaderFn = dyn Fn(&Value, &ReaderContext) -> Result<Box<dyn OpenReader>> + Send + Sync;
/// Opens a writer for one run: what a built-in's `open` is.
pub type OpenWriterFn = dyn Fn(&Value, &WriterContext) -> Result<Box<dyn OpenWriter>> + Send + Sync;

/// Run the reader suite against a reader that opens ready ([`OpenReader`], as built-ins do):
/// the suite's `initialize` opens one with `open`, `close` closes it.
///
/// ```text
/// let report = check_open_reader(|c, ctx| Ok(Box::new(FileReader::open(c, ctx)?) as _), &cfg);
/// ```
pub fn check_open_reader(
    open: impl Fn(&Value, &ReaderContext) -> Result<Box<dyn OpenReader>> + Send + Sync + 'static,
    config: &Value,
) -> Report {
    let open: Arc<OpenReaderFn> = Arc::new(open);
    check_reader(
        &mut || Ok(Box::new(OpenedReader::new(open.clone())) as Box<dyn Reader>),
        config,
    )
}

/// Run the writer suite against a writer that opens ready ([`OpenWriter`], as built-ins do):
/// the suite's `initialize` opens one with `open`, `close` closes it.
pub fn check_open_writer(
    open: impl Fn(&Value, &WriterContext) -> Result<Box<dyn OpenWriter>> + Send + Sync + 'static,
    config: &Value,
) -> Report {
    let open: Arc<OpenWriterFn> = Arc::new(open);
    check_writer(
        &mut || Ok(Box::new(OpenedWriter::new(open.clone())) as Box<dyn Writer>),
        config,
    )
}

fn not_open() -> Error {
    Error::plugin("called before initialize succeeded")
}

/// An open-form reader behind the five-method interface the suite drives: `initialize` opens
/// it, the other methods call the open object, or fail if none is open.
pub struct OpenedReader {
    open: Arc<OpenReaderFn>,
    opened: Option<Box<dyn OpenReader>>,
}

impl OpenedReader {
    /// Not yet opened; `initialize` opens it with `open`.
    pub fn new(open: Arc<OpenReaderFn>) -> Self {
        Self { open, opened: None }
    }
}

impl Reader for OpenedReader {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        self.opened = Some((self.open)(config, ctx)?);
        Ok(())
    }
    fn get_schema(&mut self) -> Result<SchemaRef> {
        self.opened
            .as_ref()
            .map(|r| r.schema())
            .ok_or_else(not_open)
    }
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.opened.as_mut().ok_or_else(not_open)?.next_batch()
    }
    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        self.opened.as_mut().ok_or_else(not_open)?.state()
    }
    fn close(&mut self) -> Result<()> {
        self.opened.take().map_or(Ok(()), |r| r.close())
    }
}

/// An open-form writer behind the five-method interface the suite drives: `initialize` opens
/// it, the other methods call the open object, or fail if none is open.
pub struct OpenedWriter {
    open: Arc<OpenWriterFn>,
    opened: Option<Box<dyn OpenWriter>>,
}

impl OpenedWriter {
    /// Not yet opened; `initialize` opens it with `open`.
    pub fn new(open: Arc<OpenWriterFn>) -> Self {
        Self { open, opened: None }
    }
}

impl Writer for OpenedWriter {
    fn initialize(&mut self, config: &Value, ctx: &WriterContext) -> Result<()> {
        self.opened = Some((self.open)(config, ctx)?);
        Ok(())
    }
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        self.opened.as_mut().ok_or_else(not_open)?.write(batch)
    }
    fn finalize(&mut self, commit: &Commit) -> Result<CommitReport> {
        self.opened.as_mut().ok_or_else(not_open)?.commit(commit)
    }
    fn abort(&mut self) -> Result<()> {
        self.opened.as_mut().map_or(Ok(()), |w| w.abort())
    }
    fn close(&mut self) -> Result<()> {
        self.opened.take().map_or(Ok(()), |w| w.close())
    }
    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        self.opened
            .as_mut()
            .map_or(Ok(None), |w| w.committed_state())
    }
}

/// A two-column schema (`id` Int64, `name` Utf8, both nullable) for tests of writers.
pub fn id_name_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
    ]))
}

/// A batch of [`id_name_schema`]: the given ids, each named `n<id>`.
pub fn id_name_batch(ids: &[i64]) -> RecordBatch {
    let names: Vec<String> = ids.iter().map(|i| format!("n{i}")).collect();
    RecordBatch::try_new(
        id_name_schema(),
        vec![
            Arc::new(Int64Array::from(ids.to_vec())),
            Arc::new(StringArray::from(names)),
        ],
    )
    .expect("columns match the schema")
}

/// The Arrow types every built-in connector supports end to end.
pub fn sample_schema() -> SchemaRef {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        f("bool", DataType::Boolean),
        f("i8", DataType::Int8),
        f("i16", DataType::Int16),
        f("i32", DataType::Int32),
        f("u32", DataType::UInt32),
        f("f32", DataType::Float32),
        f("f64", DataType::Float64),
        f("dec", DataType::Decimal128(18, 4)),
        f("text", DataType::Utf8),
        f("bin", DataType::Binary),
        f("uuid", DataType::FixedSizeBinary(16)),
        f("date", DataType::Date32),
        f("time", DataType::Time64(TimeUnit::Microsecond)),
        f("ts", DataType::Timestamp(TimeUnit::Microsecond, None)),
        f(
            "tstz",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ),
        f(
            "ints",
            DataType::List(Arc::new(Field::new("item", DataType::Int32, true))),
        ),
    ]))
}

/// A 3-row batch of [`sample_schema`]: ordinary values, extreme values, and a row of nulls.
pub fn sample_batch() -> RecordBatch {
    let mut ints = ListBuilder::new(Int32Builder::new());
    ints.append_value([Some(1), None, Some(3)]);
    ints.append_value([Some(i32::MIN)]);
    ints.append_null();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2, 3])),
        Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
        Arc::new(Int8Array::from(vec![Some(1), Some(i8::MIN), None])),
        Arc::new(Int16Array::from(vec![Some(2), Some(i16::MAX), None])),
        Arc::new(Int32Array::from(vec![Some(3), Some(i32::MIN), None])),
        Arc::new(UInt32Array::from(vec![Some(4), Some(u32::MAX), None])),
        Arc::new(Float32Array::from(vec![Some(1.5), Some(f32::MIN), None])),
        Arc::new(Float64Array::from(vec![Some(2.25), Some(-0.0), None])),
        Arc::new(
            Decimal128Array::from(vec![Some(12345678), Some(-99_999_999_999_999_999), None])
                .with_precision_and_scale(18, 4)
                .expect("valid decimal"),
        ),
        Arc::new(StringArray::from(vec![Some("héllo"), Some(""), None])),
        Arc::new(BinaryArray::from(vec![
            Some(&b"\x00\x01"[..]),
            Some(&b""[..]),
            None,
        ])),
        Arc::new(
            FixedSizeBinaryArray::try_from_sparse_iter_with_size(
                vec![Some([7u8; 16]), Some([0u8; 16]), None].into_iter(),
                16,
            )
            .expect("valid fixed size binary"),
        ),
        Arc::new(Date32Array::from(vec![Some(20000), Some(-1), None])),
        Arc::new(Time64MicrosecondArray::from(vec![
            Some(3_600_000_000),
            Some(0),
            None,
        ])),
        Arc::new(TimestampMicrosecondArray::from(vec![
            Some(1_700_000_000_000_000),
            Some(0),
            None,
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![Some(1_700_000_000_000_000), Some(-1), None])
                .with_timezone("UTC"),
        ),
        Arc::new(ints.finish()),
    ];
    RecordBatch::try_new(sample_schema(), columns).expect("sample batch matches its schema")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An open-form writer keeping its committed state in memory; `lie` misreports rows.
    struct MemWriter {
        pending: u64,
        committed: Option<CommittedState>,
        lie: bool,
    }

    impl OpenWriter for MemWriter {
        fn write(&mut self, batch: &RecordBatch) -> Result<()> {
            self.pending += batch.num_rows() as u64;
            Ok(())
        }
        fn commit(&mut self, commit: &Commit) -> Result<CommitReport> {
            let rows = std::mem::take(&mut self.pending) + u64::from(self.lie);
            self.committed = Some(CommittedState {
                state: commit.state.clone(),
                run_id: Some(commit.run_id.clone()),
            });
            Ok(CommitReport {
                rows,
                ..CommitReport::default()
            })
        }
        fn abort(&mut self) -> Result<()> {
            self.pending = 0;
            Ok(())
        }
        fn committed_state(&mut self) -> Result<Option<CommittedState>> {
            Ok(self.committed.clone())
        }
    }

    fn open_mem(lie: bool) -> impl Fn(&Value, &WriterContext) -> Result<Box<dyn OpenWriter>> {
        move |config, _| {
            if !config.is_object() {
                return Err(Error::config("config must be a mapping"));
            }
            Ok(Box::new(MemWriter {
                pending: 0,
                committed: None,
                lie,
            }))
        }
    }

    #[test]
    fn open_form_writers_run_the_writer_suite() {
        let report = check_open_writer(open_mem(false), &json!({}));
        assert!(report.passed(), "{report:?}");
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        assert!(
            names.contains(&"write_batch (every type, with nulls)"),
            "{names:?}"
        );
        assert!(
            names.iter().any(|n| n.starts_with("errors surface")),
            "{names:?}"
        );
        let report = check_open_writer(open_mem(true), &json!({}));
        let err = report.into_result().unwrap_err().to_string();
        assert!(
            err.contains("finalize: reported 4 rows, 3 were written"),
            "{err}"
        );
    }
}
