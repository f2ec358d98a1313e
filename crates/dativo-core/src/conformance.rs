//! The conformance suite every reader and writer must pass — built-in or plugin, in any language.
//! `dativo plugin test` runs it; connector tests call [`check_reader`] / [`check_writer`] directly.
//!
//! Plugins' five-method readers and writers go through [`check_reader`] / [`check_writer`];
//! built-ins, which open ready, through [`check_open_reader`] / [`check_open_writer`].
//!
//! Reader checks: initialize and get_schema succeed; every batch matches the declared schema
//! (names, types, nullability); the state is monotonic and, for incremental readers, a new
//! instance started from a mid-stream state returns exactly the rest (the same rows, every
//! value compared) and one started from the final state returns no rows (state covers what
//! was read); a check that cannot run (one batch only) is reported as skipped, saying why; errors surface with a message;
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
    /// The check could not run (the detail says why and how to make it run); not a failure.
    pub skipped: bool,
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
            skipped: false,
        });
    }
    fn fail(&mut self, name: &str, reason: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            outcome: Err(reason.into()),
            skipped: false,
        });
    }
    fn skip(&mut self, name: &str, why: impl Into<String>) {
        self.checks.push(Check {
            name: name.into(),
            outcome: Ok(why.into()),
            skipped: true,
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

/// What a set of rows holds, in constant memory and whatever the order and batch boundaries:
/// the count and two sums of a 64-bit hash of each row's values (Arrow's row format, which
/// encodes every type, nulls included). Two reads with the same fingerprint returned the same
/// rows (as a multiset), barring a hash collision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Fingerprint {
    rows: u64,
    sum: u64,
    sum_sq: u64,
}

impl Fingerprint {
    fn add(&mut self, conv: &arrow::row::RowConverter, batch: &RecordBatch) -> Result<()> {
        use std::hash::{Hash, Hasher};
        let rows = conv
            .convert_columns(batch.columns())
            .map_err(|e| Error::internal(format!("conformance: encoding rows: {e}")))?;
        for row in rows.iter() {
            // SipHash with fixed keys: the same value hashes the same in both reads.
            let mut h = std::collections::hash_map::DefaultHasher::new();
            row.as_ref().hash(&mut h);
            let h = h.finish();
            self.rows += 1;
            self.sum = self.sum.wrapping_add(h);
            self.sum_sq = self.sum_sq.wrapping_add(h.wrapping_mul(h | 1));
        }
        Ok(())
    }

    /// The rows of `self` that are not in `earlier` (a prefix of the same read).
    fn minus(&self, earlier: &Fingerprint) -> Fingerprint {
        Fingerprint {
            rows: self.rows - earlier.rows,
            sum: self.sum.wrapping_sub(earlier.sum),
            sum_sq: self.sum_sq.wrapping_sub(earlier.sum_sq),
        }
    }
}

/// A row encoder for `schema` (`None`: a type Arrow's row format cannot encode).
fn row_converter(schema: &Schema) -> Option<arrow::row::RowConverter> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| arrow::row::SortField::new(f.data_type().clone()))
        .collect();
    arrow::row::RowConverter::new(fields).ok()
}

/// Check that every top-level decimal column's values fit its declared precision: Arrow
/// imports a plugin's decimals without looking, and a writer would then store a number its
/// readers see as another (a Parquet INT32 decimal truncated).
pub fn check_decimal_precision(batch: &RecordBatch) -> Result<()> {
    for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
        check_decimals(col.as_ref()).map_err(|e| {
            Error::data(format!(
                "column `{}` ({}): a value does not fit its precision: {e}",
                f.name(),
                f.data_type()
            ))
        })?;
    }
    Ok(())
}

/// Every decimal in `a`, nested ones (lists, structs, maps) included.
fn check_decimals(a: &dyn Array) -> std::result::Result<(), arrow::error::ArrowError> {
    use arrow::datatypes::{Decimal128Type, Decimal256Type, Decimal32Type, Decimal64Type};
    match a.data_type() {
        DataType::Decimal32(p, _) => a
            .as_primitive::<Decimal32Type>()
            .validate_decimal_precision(*p),
        DataType::Decimal64(p, _) => a
            .as_primitive::<Decimal64Type>()
            .validate_decimal_precision(*p),
        DataType::Decimal128(p, _) => a
            .as_primitive::<Decimal128Type>()
            .validate_decimal_precision(*p),
        DataType::Decimal256(p, _) => a
            .as_primitive::<Decimal256Type>()
            .validate_decimal_precision(*p),
        DataType::List(_) => check_decimals(a.as_list::<i32>().values().as_ref()),
        DataType::LargeList(_) => check_decimals(a.as_list::<i64>().values().as_ref()),
        DataType::FixedSizeList(_, _) => check_decimals(a.as_fixed_size_list().values().as_ref()),
        DataType::Struct(_) => a
            .as_struct()
            .columns()
            .iter()
            .try_for_each(|c| check_decimals(c.as_ref())),
        DataType::Map(_, _) => check_decimals(a.as_map().entries()),
        _ => Ok(()),
    }
}

/// Read a fresh instance to the end from `state`: the rows' fingerprint (only their count
/// when `conv` is `None`).
fn read_all(
    make: &mut dyn FnMut() -> Result<Box<dyn Reader>>,
    config: &Value,
    state: Option<Value>,
    conv: Option<&arrow::row::RowConverter>,
) -> Result<Fingerprint> {
    let mut r = make()?;
    let out = (|| -> Result<Fingerprint> {
        r.initialize(config, &ctx_reader(state))?;
        let schema = r.get_schema()?;
        let mut n = Fingerprint::default();
        while let Some(b) = r.read_batch()? {
            check_batch_schema(&schema, &b)?;
            match conv {
                Some(c) => n.add(c, &b)?,
                None => n.rows += b.num_rows() as u64,
            }
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
    let mut mid: Option<(Fingerprint, Value)> = None;
    let conv = row_converter(&schema);
    let mut seen = Fingerprint::default();
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
                match &conv {
                    Some(c) => {
                        if let Err(e) = seen.add(c, &b) {
                            failed = Some(format!("batch {batches}: {e}"));
                            break;
                        }
                    }
                    None => seen.rows += b.num_rows() as u64,
                }
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
                                mid = Some((seen, s.clone()));
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
    const RESUME: &str = "resume from a mid-stream state";
    match mid {
        Some((at_mid, state)) if batches > 1 => {
            let want = seen.minus(&at_mid);
            let what = if conv.is_some() {
                "the same rows (every value compared)"
            } else {
                "as many rows (a type Arrow's row format cannot compare: counted only)"
            };
            match read_all(make, config, Some(state.clone()), conv.as_ref()) {
                Ok(got) if got == want => {
                    report.pass(RESUME, format!("{} rows after {state}: {what}", got.rows))
                }
                Ok(got) if got.rows != want.rows => report.fail(
                    RESUME,
                    format!(
                        "resuming from {state} (after batch 1) returned {} rows; {} followed it in the first read",
                        got.rows, want.rows
                    ),
                ),
                Ok(got) => report.fail(
                    RESUME,
                    format!(
                        "resuming from {state} (after batch 1) returned {} rows, as many as followed it in the first read, but not the same ones (their values differ)",
                        got.rows
                    ),
                ),
                Err(e) => report.fail(RESUME, e.to_string()),
            }
        }
        Some(_) => report.skip(
            RESUME,
            format!(
                "the stream had {batches} batch{}: give a --config that makes it return more than one (more rows than a batch) to check that a run resumed mid-stream returns exactly the rest",
                if batches == 1 { "" } else { "es" }
            ),
        ),
        None if last_state.is_some() => report.skip(
            RESUME,
            "no state after the first batch (only at the end): resuming mid-stream is not possible",
        ),
        None => report.skip(RESUME, "not incremental (no state)"),
    }
    if let Some(state) = last_state {
        // Resume from the final state: an empty stream, nothing may come back.
        match read_all(make, config, Some(state.clone()), None).map(|f| f.rows) {
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

    /// A reader of ids 0..rows in batches of 10 with state `{"next": N}`. `shift` changes the
    /// values a resumed instance returns (as many rows, other values): a reader whose state
    /// does not say where it is.
    struct Ids {
        next: i64,
        rows: i64,
        shift: i64,
        resumed: bool,
    }

    impl Reader for Ids {
        fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
            if !config.is_object() {
                return Err(Error::config("config must be a mapping"));
            }
            if let Some(n) = ctx.state.as_ref().and_then(|s| s["next"].as_i64()) {
                self.next = n;
                self.resumed = true;
            }
            Ok(())
        }
        fn get_schema(&mut self) -> Result<SchemaRef> {
            Ok(id_name_schema())
        }
        fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
            if self.next >= self.rows {
                return Ok(None);
            }
            let end = (self.next + 10).min(self.rows);
            let offset = if self.resumed { self.shift } else { 0 };
            let ids: Vec<i64> = (self.next..end).map(|i| i + offset).collect();
            self.next = end;
            Ok(Some(id_name_batch(&ids)))
        }
        fn get_incremental_state(&mut self) -> Result<Option<Value>> {
            Ok(Some(json!({ "next": self.next })))
        }
        fn close(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn ids(rows: i64, shift: i64) -> impl FnMut() -> Result<Box<dyn Reader>> {
        move || {
            Ok(Box::new(Ids {
                next: 0,
                rows,
                shift,
                resumed: false,
            }) as Box<dyn Reader>)
        }
    }

    fn check<'a>(report: &'a Report, name: &str) -> &'a Check {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name}: {report:?}"))
    }

    #[test]
    fn resuming_compares_the_rows_not_only_their_count() {
        let report = check_reader(&mut ids(35, 0), &json!({}));
        assert!(report.passed(), "{report:?}");
        let c = check(&report, "resume from a mid-stream state");
        assert!(!c.skipped);
        assert_eq!(
            c.outcome.as_deref().unwrap(),
            "25 rows after {\"next\":10}: the same rows (every value compared)"
        );
        // As many rows, other values: a count would pass, the content does not.
        let report = check_reader(&mut ids(35, 1000), &json!({}));
        let err = check(&report, "resume from a mid-stream state")
            .outcome
            .clone()
            .unwrap_err();
        assert!(err.contains("25 rows, as many as followed it"), "{err}");
        assert!(err.contains("not the same ones"), "{err}");
    }

    #[test]
    fn a_single_batch_says_the_resume_check_was_skipped() {
        let report = check_reader(&mut ids(5, 0), &json!({}));
        assert!(report.passed(), "{report:?}");
        let c = check(&report, "resume from a mid-stream state");
        assert!(c.skipped, "{c:?}");
        assert!(
            c.outcome.as_deref().unwrap().contains("give a --config"),
            "{c:?}"
        );
    }
}
