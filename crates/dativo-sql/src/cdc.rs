//! What the `mode: cdc` readers share: the change columns, the config split and names.
//!
//! Both `postgres` (logical replication) and `mysql` (row-based binlog) deliver the table's
//! columns plus three of their own: [`OP_COLUMN`], [`LSN_COLUMN`] and [`COMMIT_TIME_COLUMN`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};
use serde_json::{Map, Value};

use dativo_core::config::DurationValue;
use dativo_core::{Error, Result};

/// The column holding each row's operation: `R` (initial snapshot), `I`, `U`, `D`, or
/// [`TRUNCATE_OP`].
pub const OP_COLUMN: &str = "_dativo_op";
/// The operation of a row that stands for a `TRUNCATE` of the table: every row before it
/// is gone. Its table columns are all NULL.
pub const TRUNCATE_OP: &str = "T";
/// The column holding each row's source position as a number that grows with the log:
/// PostgreSQL: the transaction's commit LSN; MySQL: the binlog file's number × 2³² + the
/// position where the transaction starts. Snapshot rows carry the position the stream
/// starts at.
pub const LSN_COLUMN: &str = "_dativo_lsn";
/// The column holding each row's source commit time (NULL for snapshot rows).
pub const COMMIT_TIME_COLUMN: &str = "_dativo_commit_time";

/// The three change columns, appended after the table's.
pub fn change_fields() -> [Field; 3] {
    [
        Field::new(OP_COLUMN, DataType::Utf8, false),
        Field::new(LSN_COLUMN, DataType::Int64, false),
        Field::new(
            COMMIT_TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            true,
        ),
    ]
}

/// Whether `config` asks for change data capture.
pub fn is_cdc(config: &Value) -> bool {
    config.get("mode").and_then(Value::as_str) == Some("cdc")
}

/// Split a `mode: cdc` config into its cdc settings (`keys`) and the snapshot reader's
/// config (`mode: full_refresh`), refusing the keys that do not apply.
pub(crate) fn split(config: &Value, keys: &[&str]) -> Result<(Value, Value)> {
    let mut rest = config.as_object().cloned().unwrap_or_default();
    let mut cdc = Map::new();
    for k in keys {
        if let Some(v) = rest.remove(*k) {
            cdc.insert(k.to_string(), v);
        }
    }
    rest.insert("mode".into(), Value::String("full_refresh".into()));
    for k in ["cursor", "lookback", "query"] {
        if rest.contains_key(k) {
            return Err(Error::config(format!(
                "`{k}` does not apply to `mode: cdc` (changes come from the log, for `table`)"
            ))
            .with_key_path(k));
        }
    }
    if !rest.contains_key("table") {
        return Err(
            Error::config("`mode: cdc` needs `table` (schema.table)").with_key_path("table")
        );
    }
    Ok((Value::Object(cdc), Value::Object(rest)))
}

/// An unknown-key error lists the reader's keys; with `mode: cdc` `keys` are valid too.
pub(crate) fn with_cdc_keys(e: Error, keys: &[&str]) -> Error {
    if !e.message().contains("unknown field") {
        return e;
    }
    let mut out = Error::new(
        e.kind(),
        format!(
            "{}, and with `mode: cdc` `{}`",
            e.message(),
            keys.join("`, `")
        ),
    );
    if let Some(k) = e.key_path() {
        out = out.with_key_path(k.to_string());
    }
    out
}

/// A job's default object name: `dativo_` and the job name's letters and digits.
pub(crate) fn default_name(job: &str) -> String {
    let s: String = job
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut n = format!("dativo_{s}");
    n.truncate(63);
    n
}

/// The default `heartbeat`: one minute.
pub(crate) fn default_heartbeat() -> DurationValue {
    DurationValue(Duration::from_secs(60))
}

pub(crate) fn yes() -> bool {
    true
}

/// A batch waits at most this long for more changes once it has one.
pub(crate) const FLUSH: Duration = Duration::from_millis(500);

/// How often a stream measures the source's log around its position (for monitoring).
pub(crate) const MEASURE_EVERY: Duration = Duration::from_secs(10);

/// A periodic chore: due at once, then once every `period`.
pub(crate) struct Every {
    period: Duration,
    last: Option<Instant>,
}

impl Every {
    pub(crate) fn new(period: Duration) -> Every {
        Every { period, last: None }
    }

    /// Whether the chore is due; if it is, the period starts again now.
    pub(crate) fn due(&mut self) -> bool {
        if self.last.is_some_and(|t| t.elapsed() < self.period) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }
}

/// A CDC state as stored: `{"cdc": …}`.
pub(crate) fn state_value<T: serde::Serialize>(s: &T) -> Value {
    serde_json::json!({ "cdc": s })
}

/// A stored CDC state read back; a state of another mode or reader is refused with the fix.
pub(crate) fn state_from<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T> {
    let inner = v.get("cdc").ok_or_else(|| {
        Error::data(
            "the stored state is not a `mode: cdc` state (the job ran in another mode): `dativo state reset` and clear the target to start over",
        )
    })?;
    serde_json::from_value(inner.clone()).map_err(|e| {
        Error::data(format!(
            "the stored cdc state is unreadable ({e}); `dativo state reset`"
        ))
    })
}

/// The snapshot reader must deliver the table's columns (the first `n` of `schema`) as the
/// log decodes them.
pub(crate) fn check_snapshot_schema(schema: &SchemaRef, n: usize, got: &SchemaRef) -> Result<()> {
    let want: Vec<&Field> = schema.fields().iter().take(n).map(|f| f.as_ref()).collect();
    let have: Vec<&Field> = got.fields().iter().map(|f| f.as_ref()).collect();
    if want != have {
        let list = |fs: &[&Field]| {
            fs.iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(Error::schema(format!(
            "the snapshot reader's columns ({}) differ from the log's ({})",
            list(&have),
            list(&want)
        )));
    }
    Ok(())
}

/// A snapshot batch with the change columns added: op `R`, the position streaming starts at,
/// no commit time.
pub(crate) fn snapshot_batch(
    schema: &SchemaRef,
    b: RecordBatch,
    start: i64,
) -> Result<RecordBatch> {
    let n = b.num_rows();
    let mut cols: Vec<ArrayRef> = b.columns().to_vec();
    cols.push(Arc::new(StringArray::from(vec!["R"; n])));
    cols.push(Arc::new(Int64Array::from(vec![start; n])));
    cols.push(Arc::new(
        TimestampMicrosecondArray::from(vec![None; n]).with_timezone("+00:00"),
    ));
    RecordBatch::try_new(schema.clone(), cols).map_err(Error::from)
}

/// The builders of the three change columns of a batch being built.
pub(crate) struct ChangeColumns {
    ops: StringBuilder,
    positions: Int64Builder,
    times: TimestampMicrosecondBuilder,
}

impl ChangeColumns {
    pub(crate) fn new() -> Self {
        ChangeColumns {
            ops: StringBuilder::new(),
            positions: Int64Builder::new(),
            times: TimestampMicrosecondBuilder::new().with_timezone("+00:00"),
        }
    }

    /// One change: its operation, position and source commit time (µs since 1970).
    pub(crate) fn append(&mut self, op: &str, position: i64, commit_us: i64) {
        self.ops.append_value(op);
        self.positions.append_value(position);
        self.times.append_value(commit_us);
    }

    /// The three columns, after the table's `cols`, as a batch of `schema`.
    pub(crate) fn finish(
        &mut self,
        schema: &SchemaRef,
        mut cols: Vec<ArrayRef>,
    ) -> Result<RecordBatch> {
        cols.push(Arc::new(self.ops.finish()));
        cols.push(Arc::new(self.positions.finish()));
        cols.push(Arc::new(self.times.finish()));
        RecordBatch::try_new(schema.clone(), cols).map_err(Error::from)
    }
}
