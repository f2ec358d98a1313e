//! The `adbc` reader.

use adbc_core::{Connection, Statement};
use adbc_driver_manager::{ManagedConnection, ManagedStatement};
use arrow::array::{Array, AsArray, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use dativo_core::config::from_config;
use dativo_core::{Error, OpenReader, ReaderContext, Result};
use serde_json::{json, Value};

use super::{adbc_err, connect, quote_ident, quote_literal, AdbcReaderConfig};

/// Reads a query's result through an ADBC driver; opened ready by [`AdbcReader::open`].
pub struct AdbcReader {
    // Drop order matters: the stream before the statement before the connection (the
    // PostgreSQL driver invalidates a stream whose statement is gone).
    /// The result stream; `None` once it ended or failed.
    stream: Option<Box<dyn RecordBatchReader + Send>>,
    _stmt: ManagedStatement,
    _conn: ManagedConnection,
    schema: SchemaRef,
    /// The cursor column's index, when incremental.
    cursor_idx: Option<usize>,
    state: Option<Value>,
}

impl AdbcReader {
    /// Check a config without I/O.
    pub fn validate(config: &Value) -> Result<()> {
        Self::config(config).map(|_| ())
    }

    fn config(config: &Value) -> Result<AdbcReaderConfig> {
        let c: AdbcReaderConfig = from_config(config)?;
        match (&c.query, &c.table) {
            (Some(_), None) | (None, Some(_)) => Ok(c),
            _ => Err(Error::config("set exactly one of `query` or `table`")),
        }
    }
}

/// A cursor value from a batch as JSON, and back as an SQL literal.
fn cursor_json(col: &dyn Array, row: usize) -> Result<Value> {
    use arrow::datatypes::*;
    if col.is_null(row) {
        return Err(Error::data(
            "the cursor column is NULL in a row; cursor columns must not be NULL",
        ));
    }
    let micros_text = |v: i64, unit: &TimeUnit, tz: bool| -> Result<Value> {
        let (secs, nanos) = match unit {
            TimeUnit::Second => (v, 0),
            TimeUnit::Millisecond => (v.div_euclid(1000), v.rem_euclid(1000) * 1_000_000),
            TimeUnit::Microsecond => (v.div_euclid(1_000_000), v.rem_euclid(1_000_000) * 1000),
            TimeUnit::Nanosecond => (v.div_euclid(1_000_000_000), v.rem_euclid(1_000_000_000)),
        };
        let Some(t) = chrono::DateTime::from_timestamp(secs, nanos as u32) else {
            return Err(Error::data(format!(
                "cursor timestamp {v} ({unit:?}) is out of range"
            )));
        };
        let text = match unit {
            TimeUnit::Nanosecond => t.format("%Y-%m-%d %H:%M:%S%.9f"),
            _ => t.format("%Y-%m-%d %H:%M:%S%.6f"),
        }
        .to_string();
        Ok(Value::String(if tz {
            format!("{text}+00:00")
        } else {
            text
        }))
    };
    Ok(match col.data_type() {
        DataType::Int8 => json!(col.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => json!(col.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => json!(col.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => json!(col.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => json!(col.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => json!(col.as_primitive::<UInt64Type>().value(row)),
        DataType::Utf8 => json!(col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => json!(col.as_string::<i64>().value(row)),
        DataType::Date32 => {
            let d = col.as_primitive::<Date32Type>().value(row);
            let date = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
                + chrono::Duration::days(d as i64);
            json!(date.to_string())
        }
        DataType::Timestamp(unit, tz) => {
            let v = match unit {
                TimeUnit::Second => col.as_primitive::<TimestampSecondType>().value(row),
                TimeUnit::Millisecond => col.as_primitive::<TimestampMillisecondType>().value(row),
                TimeUnit::Microsecond => col.as_primitive::<TimestampMicrosecondType>().value(row),
                TimeUnit::Nanosecond => col.as_primitive::<TimestampNanosecondType>().value(row),
            };
            micros_text(v, unit, tz.is_some())?
        }
        other => {
            return Err(Error::config(format!(
                "cursor column has type {other}; use an integer, date, timestamp or text column"
            ))
            .with_key_path("cursor"))
        }
    })
}

fn literal(v: &Value) -> Result<String> {
    match v {
        Value::Number(n) => Ok(n.to_string()),
        Value::String(s) => Ok(quote_literal(s)),
        other => Err(Error::data(format!(
            "state cursor {other} is neither a number nor a string"
        ))),
    }
}

impl AdbcReader {
    /// Connect, run the query (from the state's cursor on) and know the result's schema.
    pub fn open(config: &Value, ctx: &ReaderContext) -> Result<Self> {
        let c = Self::config(config)?;
        if ctx.shard.count > 1 {
            return Err(Error::config(
                "the adbc reader cannot be sharded yet; run it as one shard",
            ));
        }
        let from = match (&c.query, &c.table) {
            (Some(q), _) => format!("({q}) AS dativo_q"),
            (_, Some(t)) => quote_ident(t),
            (None, None) => return Err(Error::config("set exactly one of `query` or `table`")),
        };
        let sql = match &c.cursor {
            None => format!("SELECT * FROM {from}"),
            Some(cur) => {
                let col = quote_ident(cur);
                let last = ctx
                    .state
                    .as_ref()
                    .and_then(|s| s.get("cursor"))
                    .filter(|v| !v.is_null());
                match last {
                    Some(v) => format!(
                        "SELECT * FROM {from} WHERE {col} > {} ORDER BY {col}",
                        literal(v)?
                    ),
                    None => format!("SELECT * FROM {from} ORDER BY {col}"),
                }
            }
        };
        let mut conn = connect(&c.driver, c.uri.expose(), &c.options)?;
        let mut stmt = conn
            .new_statement()
            .map_err(|e| adbc_err("ADBC statement", e))?;
        stmt.set_sql_query(&sql)
            .map_err(|e| adbc_err("ADBC query", e))?;
        let stream = stmt.execute().map_err(|e| adbc_err("ADBC query", e))?;
        let schema = stream.schema();
        let cursor_idx = match &c.cursor {
            Some(cur) => Some(schema.index_of(cur).map_err(|e| {
                Error::config(format!("cursor column `{cur}` is not in the result"))
                    .with_source(e)
                    .with_key_path("cursor")
            })?),
            None => None,
        };
        Ok(AdbcReader {
            stream: Some(stream),
            _stmt: stmt,
            _conn: conn,
            schema,
            cursor_idx,
            state: ctx.state.clone(),
        })
    }
}

impl OpenReader for AdbcReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        loop {
            match stream.next() {
                None => {
                    self.stream = None;
                    return Ok(None);
                }
                // The driver keeps returning the same error: stop at the first one.
                Some(Err(e)) => {
                    self.stream = None;
                    let err = match &e {
                        arrow::error::ArrowError::IoError(..)
                        | arrow::error::ArrowError::ExternalError(_) => {
                            Error::connect("ADBC stream")
                        }
                        _ => Error::data("ADBC stream"),
                    };
                    return Err(err.with_source(e));
                }
                Some(Ok(b)) if b.num_rows() == 0 => continue,
                Some(Ok(b)) => {
                    if let Some(i) = self.cursor_idx {
                        let v = cursor_json(b.column(i).as_ref(), b.num_rows() - 1)?;
                        self.state = Some(json!({ "cursor": v }));
                    }
                    return Ok(Some(b));
                }
            }
        }
    }

    fn state(&mut self) -> Result<Option<Value>> {
        Ok(self.state.clone())
    }
}
