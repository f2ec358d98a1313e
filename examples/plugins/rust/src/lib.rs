//! An example dativo plugin: a PostgreSQL reader of its own, built on `tokio-postgres`, as a
//! plugin author outside the dativo repository would write it. dativo already has a much faster
//! built-in `postgres` reader (binary COPY, parallel); this one shows the plugin mechanics:
//! config, schema, batches, incremental state, errors.
//!
//! ```yaml
//! source:
//!   reader: {type: custom, implementation: "./target/release/libdativo_example_pg_reader.so#pg"}
//!   config:
//!     url: postgresql://127.0.0.1:5432/test
//!     table: public.orders          # or query: "SELECT … FROM …"
//!     cursor: id                    # an increasing column: integer, timestamp or date
//!     batch_size: 10000
//! ```
//!
//! Incremental: the state is `{"cursor": <last value read>}`; the next run reads rows with
//! `cursor > last`. Types: smallint/int/bigint, real/double, text/varchar/name, boolean, date,
//! timestamp, timestamptz; cast anything else to text in `query:`.

use std::sync::Arc;

use dativo_plugin_sdk::prelude::*;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, NoTls, Row};

/// The reader's configuration (`source.config`).
struct Config {
    url: String,
    from: String,
    cursor: String,
    batch_size: usize,
}

fn parse_config(v: &Value) -> Result<Config> {
    let obj = v.as_object().ok_or_else(|| {
        Error::config("config must be a mapping with url, table or query, cursor")
    })?;
    for k in obj.keys() {
        if !["url", "table", "query", "cursor", "batch_size"].contains(&k.as_str()) {
            return Err(Error::config(format!(
                "unknown key `{k}`: expected url, table, query, cursor, batch_size"
            ))
            .with_key_path(k.clone()));
        }
    }
    let s = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
    let url = s("url").ok_or_else(|| Error::config("`url` is required").with_key_path("url"))?;
    let from = match (s("table"), s("query")) {
        (Some(t), None) => t
            .split('.')
            .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join("."),
        (None, Some(q)) => format!("({q}) AS q"),
        _ => return Err(Error::config("set exactly one of `table` or `query`")),
    };
    let cursor =
        s("cursor").ok_or_else(|| Error::config("`cursor` is required").with_key_path("cursor"))?;
    let batch_size = match obj.get("batch_size") {
        None => 10_000,
        Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            Error::config("`batch_size` must be a positive integer").with_key_path("batch_size")
        })? as usize,
    };
    Ok(Config {
        url,
        from,
        cursor,
        batch_size,
    })
}

#[derive(Default)]
struct PgReader {
    rt: Option<tokio::runtime::Runtime>,
    client: Option<Client>,
    cfg: Option<Config>,
    schema: Option<SchemaRef>,
    types: Vec<Type>,
    cursor_idx: usize,
    /// The cursor value (as text) of the last row returned, or of the state we started from.
    last: Option<String>,
    done: bool,
}

fn arrow_type(t: &Type, col: &str) -> Result<DataType> {
    Ok(match *t {
        Type::INT2 => DataType::Int16,
        Type::INT4 => DataType::Int32,
        Type::INT8 => DataType::Int64,
        Type::FLOAT4 => DataType::Float32,
        Type::FLOAT8 => DataType::Float64,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => DataType::Utf8,
        Type::BOOL => DataType::Boolean,
        Type::DATE => DataType::Date32,
        Type::TIMESTAMP => DataType::Timestamp(TimeUnit::Microsecond, None),
        Type::TIMESTAMPTZ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => {
            return Err(Error::schema(format!(
                "column `{col}` has type {t}, which this example reader does not map; cast it to text in `query:`"
            )))
        }
    })
}

fn pg_err(e: tokio_postgres::Error) -> Error {
    if e.as_db_error().is_none() {
        Error::connect(format!("postgres: {e}"))
    } else {
        Error::data(format!("postgres: {e}"))
    }
}

fn column(rows: &[Row], i: usize, t: &Type) -> Result<ArrayRef> {
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
    Ok(match *t {
        Type::INT2 => Arc::new(
            rows.iter()
                .map(|r| r.get::<_, Option<i16>>(i))
                .collect::<Int16Array>(),
        ),
        Type::INT4 => Arc::new(
            rows.iter()
                .map(|r| r.get::<_, Option<i32>>(i))
                .collect::<Int32Array>(),
        ),
        Type::INT8 => Arc::new(
            rows.iter()
                .map(|r| r.get::<_, Option<i64>>(i))
                .collect::<Int64Array>(),
        ),
        Type::FLOAT4 => Arc::new(
            rows.iter()
                .map(|r| r.get::<_, Option<f32>>(i))
                .collect::<Float32Array>(),
        ),
        Type::FLOAT8 => Arc::new(
            rows.iter()
                .map(|r| r.get::<_, Option<f64>>(i))
                .collect::<Float64Array>(),
        ),
        Type::BOOL => Arc::new(
            rows.iter()
                .map(|r| r.get::<_, Option<bool>>(i))
                .collect::<BooleanArray>(),
        ),
        Type::DATE => Arc::new(
            rows.iter()
                .map(|r| {
                    r.get::<_, Option<chrono::NaiveDate>>(i)
                        .map(|d| (d - epoch).num_days() as i32)
                })
                .collect::<Date32Array>(),
        ),
        Type::TIMESTAMP => Arc::new(
            rows.iter()
                .map(|r| {
                    r.get::<_, Option<chrono::NaiveDateTime>>(i)
                        .map(|t| t.and_utc().timestamp_micros())
                })
                .collect::<TimestampMicrosecondArray>(),
        ),
        Type::TIMESTAMPTZ => Arc::new(
            rows.iter()
                .map(|r| {
                    r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)
                        .map(|t| t.timestamp_micros())
                })
                .collect::<TimestampMicrosecondArray>()
                .with_timezone("UTC"),
        ),
        _ => Arc::new(
            rows.iter()
                .map(|r| r.get::<_, Option<String>>(i))
                .collect::<StringArray>(),
        ),
    })
}

impl PgReader {
    fn rt(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("initialized")
    }
}

impl Reader for PgReader {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        let cfg = parse_config(config)?;
        if ctx.shard.count > 1 {
            return Err(Error::config(
                "this reader cannot be sharded; run it with one shard",
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::internal(format!("tokio runtime: {e}")))?;
        let (client, conn) = rt
            .block_on(tokio_postgres::connect(&cfg.url, NoTls))
            .map_err(pg_err)?;
        rt.spawn(conn);
        self.last = match &ctx.state {
            None => None,
            Some(s) => Some(
                s.get("cursor")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::data(format!("state {s} has no string `cursor`")))?
                    .to_string(),
            ),
        };
        // The result's columns and types, without reading rows.
        let stmt = rt
            .block_on(client.prepare(&format!("SELECT * FROM {} LIMIT 0", cfg.from)))
            .map_err(pg_err)?;
        let mut fields = Vec::new();
        for c in stmt.columns() {
            fields.push(Field::new(c.name(), arrow_type(c.type_(), c.name())?, true));
            self.types.push(c.type_().clone());
        }
        self.cursor_idx = stmt
            .columns()
            .iter()
            .position(|c| c.name() == cfg.cursor)
            .ok_or_else(|| {
                Error::config(format!(
                    "cursor column `{}` is not in the result",
                    cfg.cursor
                ))
                .with_key_path("cursor")
            })?;
        self.schema = Some(Arc::new(Schema::new(fields)));
        self.rt = Some(rt);
        self.client = Some(client);
        self.cfg = Some(cfg);
        Ok(())
    }

    fn get_schema(&mut self) -> Result<SchemaRef> {
        self.schema
            .clone()
            .ok_or_else(|| Error::internal("get_schema before initialize"))
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.done {
            return Ok(None);
        }
        let cfg = self.cfg.as_ref().expect("initialized");
        let client = self.client.as_ref().expect("initialized");
        let cur = format!("\"{}\"", cfg.cursor.replace('"', "\"\""));
        // Keyset pagination on the cursor column: each batch starts after the last value read.
        // The cursor must be unique for this to be exact (an id, or a timestamp with no ties).
        let (sql, last) = match &self.last {
            None => (
                format!(
                    "SELECT * FROM {} ORDER BY {cur} LIMIT {}",
                    cfg.from, cfg.batch_size
                ),
                None,
            ),
            Some(l) => (
                format!(
                    "SELECT * FROM {} WHERE {cur} > $1::text::{} ORDER BY {cur} LIMIT {}",
                    cfg.from, self.types[self.cursor_idx], cfg.batch_size
                ),
                Some(l.clone()),
            ),
        };
        let rows = match &last {
            None => self.rt().block_on(client.query(&sql, &[])),
            Some(l) => self.rt().block_on(client.query(&sql, &[l])),
        }
        .map_err(pg_err)?;
        if rows.len() < cfg.batch_size {
            self.done = true;
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let columns = self
            .types
            .iter()
            .enumerate()
            .map(|(i, t)| column(&rows, i, t))
            .collect::<Result<Vec<_>>>()?;
        // Remember the last cursor value as text, so any cursor type round-trips through JSON.
        let last_row = rows.last().expect("non-empty");
        self.last = Some(cursor_text(
            last_row,
            self.cursor_idx,
            &self.types[self.cursor_idx],
        )?);
        let batch = RecordBatch::try_new(self.get_schema()?, columns)
            .map_err(|e| Error::internal(format!("batch: {e}")))?;
        Ok(Some(batch))
    }

    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        Ok(self.last.as_ref().map(|c| json!({ "cursor": c })))
    }

    fn close(&mut self) -> Result<()> {
        self.client = None;
        self.rt = None;
        Ok(())
    }
}

fn cursor_text(row: &Row, i: usize, t: &Type) -> Result<String> {
    let missing =
        || Error::data("the cursor column is NULL in a row; cursor columns must not be NULL");
    Ok(match *t {
        Type::INT2 => row
            .get::<_, Option<i16>>(i)
            .ok_or_else(missing)?
            .to_string(),
        Type::INT4 => row
            .get::<_, Option<i32>>(i)
            .ok_or_else(missing)?
            .to_string(),
        Type::INT8 => row
            .get::<_, Option<i64>>(i)
            .ok_or_else(missing)?
            .to_string(),
        Type::DATE => row
            .get::<_, Option<chrono::NaiveDate>>(i)
            .ok_or_else(missing)?
            .to_string(),
        Type::TIMESTAMP => row
            .get::<_, Option<chrono::NaiveDateTime>>(i)
            .ok_or_else(missing)?
            .format("%Y-%m-%d %H:%M:%S%.6f")
            .to_string(),
        Type::TIMESTAMPTZ => row
            .get::<_, Option<chrono::DateTime<chrono::Utc>>>(i)
            .ok_or_else(missing)?
            .format("%Y-%m-%d %H:%M:%S%.6f+00")
            .to_string(),
        Type::TEXT | Type::VARCHAR | Type::NAME => {
            row.get::<_, Option<String>>(i).ok_or_else(missing)?
        }
        _ => {
            return Err(Error::config(format!(
                "cursor column has type {t}; use an integer, date, timestamp or text column"
            ))
            .with_key_path("cursor"))
        }
    })
}

dativo_plugin_sdk::export_plugin! {
    name: "example_pg",
    version: env!("CARGO_PKG_VERSION"),
    description: "A PostgreSQL reader built on tokio-postgres (an example plugin)",
    readers: { "pg" => PgReader::default },
    writers: {},
}
