//! `my_rust_reader`: a dativo reader written in Rust and shipped as a Python wheel (pyo3 +
//! maturin). dativo loads it like any Python plugin —
//!
//! ```yaml
//! source:
//!   reader: {type: custom, implementation: my_rust_reader.RustPostgresReader}
//!   config:
//!     url: postgresql://postgres@127.0.0.1:5432/test
//!     table: public.orders       # taken literally (quoted): case-sensitive
//!     cursor: id                 # an integer column (smallint, integer, bigint)
//!     batch_size: 10000          # optional
//! ```
//!
//! — but every row is read and every Arrow array is built in Rust (tokio-postgres, arrow-rs),
//! with the GIL released. Batches leave through the Arrow PyCapsule interface: `read_batch`
//! returns an [`ArrowBatch`] whose `__arrow_c_array__` hands out C Data Interface structs in
//! capsules, so neither side needs pyarrow (dativo moves them out zero-copy; pyarrow, polars,
//! duckdb… can consume them too).
//!
//! Reading is keyset pagination on the cursor column:
//! `SELECT … FROM table WHERE cursor > $last ORDER BY cursor LIMIT batch_size`; the incremental
//! state is `{"cursor": <last value read>}`, so the next run reads only newer rows. The cursor
//! should be unique (a primary key); rows whose cursor is NULL are never read.

use std::ffi::{c_void, CStr};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Float32Array, Float64Array,
    Int16Array, Int32Array, Int64Array, StringArray, StructArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow::record_batch::RecordBatch;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict, PyString, PyTuple};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, Row, Statement};

// ------------------------------------------------------------------ Arrow PyCapsule interface

const SCHEMA_CAPSULE: &CStr = c"arrow_schema";
const ARRAY_CAPSULE: &CStr = c"arrow_array";

/// Capsule destructor for an `arrow_schema` capsule: frees the box and, unless a consumer has
/// moved the struct out (its `release` is then NULL), releases the schema — as the Arrow
/// PyCapsule interface requires.
unsafe extern "C" fn drop_schema_capsule(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: called by CPython with the capsule being destroyed.
    let p = unsafe { pyo3::ffi::PyCapsule_GetPointer(capsule, SCHEMA_CAPSULE.as_ptr()) };
    if p.is_null() {
        // SAFETY: GetPointer set an exception; report it rather than losing it.
        unsafe { pyo3::ffi::PyErr_WriteUnraisable(capsule) };
        return;
    }
    // SAFETY: the pointer is the Box made in `schema_capsule`; FFI_ArrowSchema's Drop calls
    // `release` only if it is still set.
    drop(unsafe { Box::from_raw(p.cast::<FFI_ArrowSchema>()) });
}

/// Capsule destructor for an `arrow_array` capsule (see [`drop_schema_capsule`]).
unsafe extern "C" fn drop_array_capsule(capsule: *mut pyo3::ffi::PyObject) {
    // SAFETY: called by CPython with the capsule being destroyed.
    let p = unsafe { pyo3::ffi::PyCapsule_GetPointer(capsule, ARRAY_CAPSULE.as_ptr()) };
    if p.is_null() {
        // SAFETY: GetPointer set an exception; report it rather than losing it.
        unsafe { pyo3::ffi::PyErr_WriteUnraisable(capsule) };
        return;
    }
    // SAFETY: the pointer is the Box made in `array_capsule`; FFI_ArrowArray's Drop calls
    // `release` only if a consumer has not moved the array out.
    drop(unsafe { Box::from_raw(p.cast::<FFI_ArrowArray>()) });
}

/// A boxed C struct in a named capsule whose destructor is `dtor`.
fn capsule<'py, T>(
    py: Python<'py>,
    value: T,
    name: &'static CStr,
    dtor: unsafe extern "C" fn(*mut pyo3::ffi::PyObject),
) -> PyResult<Bound<'py, PyCapsule>> {
    let raw = Box::into_raw(Box::new(value));
    let ptr = NonNull::new(raw.cast::<c_void>()).expect("Box pointers are not null");
    // SAFETY: `ptr` stays valid until the destructor frees it.
    match unsafe { PyCapsule::new_with_pointer_and_destructor(py, ptr, name, Some(dtor)) } {
        Ok(c) => Ok(c),
        Err(e) => {
            // SAFETY: no capsule owns it: free (and release) it here.
            drop(unsafe { Box::from_raw(raw) });
            Err(e)
        }
    }
}

fn schema_capsule<'py>(py: Python<'py>, schema: &Schema) -> PyResult<Bound<'py, PyCapsule>> {
    let ffi = FFI_ArrowSchema::try_from(schema)
        .map_err(|e| PyRuntimeError::new_err(format!("exporting the Arrow schema: {e}")))?;
    capsule(py, ffi, SCHEMA_CAPSULE, drop_schema_capsule)
}

/// A schema for Python: anything that accepts `__arrow_c_schema__` (dativo, `pyarrow.schema()`,
/// nanoarrow…) can read it.
#[pyclass(frozen, module = "my_rust_reader")]
pub struct ArrowSchema {
    schema: SchemaRef,
}

#[pymethods]
impl ArrowSchema {
    /// The schema as a PyCapsule named `arrow_schema` (an `ArrowSchema` C struct, format `+s`).
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        schema_capsule(py, &self.schema)
    }

    /// Column names, in order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect()
    }

    fn __repr__(&self) -> String {
        let cols: Vec<String> = self
            .schema
            .fields()
            .iter()
            .map(|f| {
                let null = if f.is_nullable() { "" } else { " not null" };
                format!("{}: {}{null}", f.name(), f.data_type())
            })
            .collect();
        format!("ArrowSchema({})", cols.join(", "))
    }
}

/// A record batch for Python: `__arrow_c_array__` exports it as a struct array (the Arrow
/// PyCapsule interface's way to pass a record batch).
#[pyclass(frozen, module = "my_rust_reader")]
pub struct ArrowBatch {
    batch: RecordBatch,
}

#[pymethods]
impl ArrowBatch {
    /// `(arrow_schema capsule, arrow_array capsule)`. The buffers are shared, not copied: each
    /// call exports a new `ArrowArray` holding references to them. `requested_schema` is
    /// accepted and ignored (the spec lets a producer return its own schema; consumers check).
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let _ = requested_schema;
        let data = StructArray::from(self.batch.clone()).into_data();
        let schema = schema_capsule(py, &self.batch.schema())?;
        let array = capsule(
            py,
            FFI_ArrowArray::new(&data),
            ARRAY_CAPSULE,
            drop_array_capsule,
        )?;
        PyTuple::new(py, [schema.into_any(), array.into_any()])
    }

    /// Rows in the batch.
    #[getter]
    fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    fn __len__(&self) -> usize {
        self.batch.num_rows()
    }

    fn __repr__(&self) -> String {
        format!(
            "ArrowBatch({} rows, {} columns)",
            self.batch.num_rows(),
            self.batch.num_columns()
        )
    }
}

// ------------------------------------------------------------------ PostgreSQL

/// `source.config`.
struct Config {
    url: String,
    /// What the user wrote, for messages.
    table: String,
    /// Quoted, possibly schema-qualified.
    table_sql: String,
    cursor: String,
    batch_size: usize,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

impl Config {
    fn from_py(config: &Bound<'_, PyAny>) -> PyResult<Config> {
        let d = config.cast::<PyDict>().map_err(|_| {
            PyValueError::new_err(format!(
                "RustPostgresReader: config must be a mapping with url, table and cursor, not {}",
                type_name(config)
            ))
        })?;
        const KEYS: [&str; 4] = ["url", "table", "cursor", "batch_size"];
        for k in d.keys() {
            let k = k.str()?.to_string();
            if !KEYS.contains(&k.as_str()) {
                return Err(PyValueError::new_err(format!(
                    "RustPostgresReader: unknown config key `{k}`: expected url, table, cursor, batch_size"
                )));
            }
        }
        let text = |k: &str| -> PyResult<String> {
            match d.get_item(k)? {
                None => Err(PyValueError::new_err(format!(
                    "RustPostgresReader: config key `{k}` is required"
                ))),
                Some(v) => match v.extract::<String>() {
                    Ok(s) if !s.trim().is_empty() => Ok(s),
                    _ => Err(PyValueError::new_err(format!(
                        "RustPostgresReader: config key `{k}` must be a non-empty string, not {}",
                        type_name(&v)
                    ))),
                },
            }
        };
        let url = text("url")?;
        let table = text("table")?;
        let cursor = text("cursor")?;
        let batch_size = match d.get_item("batch_size")? {
            None => 10_000,
            Some(v) if v.is_none() => 10_000,
            Some(v) => {
                let n = if v.is_instance_of::<pyo3::types::PyBool>() {
                    None
                } else {
                    v.extract::<i64>().ok()
                };
                match n {
                    Some(n) if n > 0 => n as usize,
                    _ => {
                        return Err(PyValueError::new_err(format!(
                            "RustPostgresReader: config key `batch_size` must be a positive integer, not {}",
                            v.repr()?
                        )))
                    }
                }
            }
        };
        let table_sql = table
            .split('.')
            .map(quote_ident)
            .collect::<Vec<_>>()
            .join(".");
        Ok(Config {
            url,
            table,
            table_sql,
            cursor,
            batch_size,
        })
    }
}

/// How a column is decoded into Arrow.
#[derive(Clone, Copy)]
enum Kind {
    I16,
    I32,
    I64,
    F32,
    F64,
    Text,
    Bool,
    Date,
    Timestamp,
    TimestampTz,
    Bytes,
}

impl Kind {
    fn of(t: &Type) -> Option<(Kind, DataType)> {
        Some(match *t {
            Type::INT2 => (Kind::I16, DataType::Int16),
            Type::INT4 => (Kind::I32, DataType::Int32),
            Type::INT8 => (Kind::I64, DataType::Int64),
            Type::FLOAT4 => (Kind::F32, DataType::Float32),
            Type::FLOAT8 => (Kind::F64, DataType::Float64),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => (Kind::Text, DataType::Utf8),
            Type::BOOL => (Kind::Bool, DataType::Boolean),
            Type::DATE => (Kind::Date, DataType::Date32),
            Type::TIMESTAMP => (
                Kind::Timestamp,
                DataType::Timestamp(TimeUnit::Microsecond, None),
            ),
            Type::TIMESTAMPTZ => (
                Kind::TimestampTz,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            ),
            Type::BYTEA => (Kind::Bytes, DataType::Binary),
            _ => return None,
        })
    }
}

const SUPPORTED: &str = "smallint, integer, bigint, real, double precision, text, varchar, \
                         char, name, boolean, date, timestamp, timestamptz, bytea";

/// Microseconds between 1970-01-01 (Arrow's epoch) and 2000-01-01 (PostgreSQL's).
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days between the two epochs.
const PG_EPOCH_DAYS: i32 = 10_957;

/// `timestamp` / `timestamptz` in the binary protocol: microseconds since 2000-01-01 (UTC for
/// timestamptz), as microseconds since 1970-01-01. ±infinity saturate.
struct Micros(i64);

impl<'a> FromSql<'a> for Micros {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let v = i64::from_be_bytes(raw.try_into()?);
        Ok(Micros(v.saturating_add(PG_EPOCH_MICROS)))
    }
    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMP | Type::TIMESTAMPTZ)
    }
}

/// `date` in the binary protocol: days since 2000-01-01, as days since 1970-01-01.
struct Days(i32);

impl<'a> FromSql<'a> for Days {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let v = i32::from_be_bytes(raw.try_into()?);
        Ok(Days(v.saturating_add(PG_EPOCH_DAYS)))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::DATE
    }
}

/// An error and its causes, `a: b: c` (tokio-postgres keeps the details in the causes).
fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_msg = c.to_string();
        if !msg.contains(&c_msg) {
            msg = format!("{msg}: {c_msg}");
        }
        cause = c.source();
    }
    msg
}

/// A PostgreSQL error as a Python exception: lost connections (and server shutdowns) are
/// `ConnectionError`, which dativo retries; anything else is a `RuntimeError`.
fn pg_err(what: &str, e: tokio_postgres::Error) -> PyErr {
    let msg = format!("RustPostgresReader: {what}: {}", chain(&e));
    match e.code() {
        None => PyConnectionError::new_err(msg),
        Some(c) if c.code().starts_with("08") || c.code().starts_with("57P") => {
            PyConnectionError::new_err(msg)
        }
        Some(_) => PyRuntimeError::new_err(msg),
    }
}

/// An open connection and what was learnt about the table.
struct Session {
    rt: tokio::runtime::Runtime,
    client: Client,
    cfg: Config,
    schema: SchemaRef,
    kinds: Vec<Kind>,
    names: Vec<String>,
    cursor_idx: usize,
    /// The first page (no state yet).
    first: Statement,
    /// The pages after `$1`.
    next: Statement,
}

impl Session {
    /// Connect, read the table's columns from the catalog, check them, prepare the two queries.
    fn open(cfg: Config) -> PyResult<Session> {
        let mut pg: tokio_postgres::Config = cfg.url.parse().map_err(|e| {
            PyValueError::new_err(format!(
                "RustPostgresReader: config key `url` is not a PostgreSQL connection string: {}",
                chain(&e)
            ))
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(30));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PyRuntimeError::new_err(format!("tokio runtime: {e}")))?;
        let (client, conn) = rt.block_on(pg.connect(NoTls)).map_err(|e| {
            PyConnectionError::new_err(format!(
                "RustPostgresReader: cannot connect to PostgreSQL: {}",
                chain(&e)
            ))
        })?;
        // The connection task makes progress whenever the runtime runs a `block_on`.
        rt.spawn(async move {
            let _ = conn.await;
        });

        let columns = rt
            .block_on(client.query(
                "SELECT a.attname::text, a.atttypid, format_type(a.atttypid, a.atttypmod), a.attnotnull \
                 FROM pg_attribute a \
                 WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&cfg.table_sql],
            ))
            .map_err(|e| match e.code() {
                Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_NAME
                    || *c == SqlState::INVALID_SCHEMA_NAME || *c == SqlState::UNDEFINED_SCHEMA =>
                {
                    PyValueError::new_err(format!(
                        "RustPostgresReader: config key `table`: table `{}` does not exist ({})",
                        cfg.table,
                        e.as_db_error().map(|d| d.message()).unwrap_or_default()
                    ))
                }
                _ => pg_err(&format!("reading the columns of `{}`", cfg.table), e),
            })?;

        let (mut fields, mut kinds, mut names) = (Vec::new(), Vec::new(), Vec::new());
        let mut cursor_idx = None;
        for row in &columns {
            let name: String = row.get(0);
            let oid: u32 = row.get(1);
            let shown: String = row.get(2);
            let not_null: bool = row.get(3);
            let (kind, dt) = Type::from_oid(oid)
                .as_ref()
                .and_then(Kind::of)
                .ok_or_else(|| {
                    PyTypeError::new_err(format!(
                        "RustPostgresReader: column `{name}` of `{}` has type {shown}, which this \
                     reader does not read (supported: {SUPPORTED})",
                        cfg.table
                    ))
                })?;
            if name == cfg.cursor {
                if !matches!(kind, Kind::I16 | Kind::I32 | Kind::I64) {
                    return Err(PyValueError::new_err(format!(
                        "RustPostgresReader: config key `cursor`: column `{name}` has type {shown}; \
                         the cursor must be an integer column (smallint, integer or bigint)"
                    )));
                }
                cursor_idx = Some(fields.len());
            }
            fields.push(Field::new(&name, dt, !not_null));
            kinds.push(kind);
            names.push(name);
        }
        let cursor_idx = cursor_idx.ok_or_else(|| {
            PyValueError::new_err(format!(
                "RustPostgresReader: config key `cursor`: `{}` is not a column of `{}` (columns: {})",
                cfg.cursor,
                cfg.table,
                names.join(", ")
            ))
        })?;

        let list = names
            .iter()
            .map(|n| quote_ident(n))
            .collect::<Vec<_>>()
            .join(", ");
        let cur = quote_ident(&cfg.cursor);
        let (t, n) = (&cfg.table_sql, cfg.batch_size);
        let first =
            format!("SELECT {list} FROM {t} WHERE {cur} IS NOT NULL ORDER BY {cur} LIMIT {n}");
        let next =
            format!("SELECT {list} FROM {t} WHERE {cur} > $1::int8 ORDER BY {cur} LIMIT {n}");
        let first = rt
            .block_on(client.prepare(&first))
            .map_err(|e| pg_err("preparing the query", e))?;
        let next = rt
            .block_on(client.prepare(&next))
            .map_err(|e| pg_err("preparing the query", e))?;
        Ok(Session {
            rt,
            client,
            cfg,
            schema: Arc::new(Schema::new(fields)),
            kinds,
            names,
            cursor_idx,
            first,
            next,
        })
    }

    /// The next page after `last`: the batch and its last cursor value; `None` when empty.
    fn page(&self, last: Option<i64>) -> PyResult<Option<(RecordBatch, i64, usize)>> {
        let rows = match last {
            None => self.rt.block_on(self.client.query(&self.first, &[])),
            Some(l) => self.rt.block_on(self.client.query(&self.next, &[&l])),
        }
        .map_err(|e| pg_err(&format!("reading `{}`", self.cfg.table), e))?;
        let Some(last_row) = rows.last() else {
            return Ok(None);
        };
        let last = self.cursor_of(last_row)?;
        let columns = (0..self.kinds.len())
            .map(|i| self.column(&rows, i))
            .collect::<PyResult<Vec<_>>>()?;
        let batch = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(|e| PyRuntimeError::new_err(format!("RustPostgresReader: batch: {e}")))?;
        Ok(Some((batch, last, rows.len())))
    }

    fn cursor_of(&self, row: &Row) -> PyResult<i64> {
        let i = self.cursor_idx;
        let v = match self.kinds[i] {
            Kind::I16 => row.try_get::<_, i16>(i).map(i64::from),
            Kind::I32 => row.try_get::<_, i32>(i).map(i64::from),
            _ => row.try_get::<_, i64>(i),
        };
        v.map_err(|e| {
            PyRuntimeError::new_err(format!(
                "RustPostgresReader: cursor column `{}`: {e}",
                self.cfg.cursor
            ))
        })
    }

    fn values<'a, T: FromSql<'a>>(&self, rows: &'a [Row], i: usize) -> PyResult<Vec<Option<T>>> {
        rows.iter()
            .map(|r| r.try_get::<_, Option<T>>(i))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                PyRuntimeError::new_err(format!(
                    "RustPostgresReader: column `{}`: {e}",
                    self.names[i]
                ))
            })
    }

    fn column(&self, rows: &[Row], i: usize) -> PyResult<ArrayRef> {
        Ok(match self.kinds[i] {
            Kind::I16 => Arc::new(Int16Array::from(self.values::<i16>(rows, i)?)),
            Kind::I32 => Arc::new(Int32Array::from(self.values::<i32>(rows, i)?)),
            Kind::I64 => Arc::new(Int64Array::from(self.values::<i64>(rows, i)?)),
            Kind::F32 => Arc::new(Float32Array::from(self.values::<f32>(rows, i)?)),
            Kind::F64 => Arc::new(Float64Array::from(self.values::<f64>(rows, i)?)),
            Kind::Text => Arc::new(StringArray::from(self.values::<&str>(rows, i)?)),
            Kind::Bool => Arc::new(BooleanArray::from(self.values::<bool>(rows, i)?)),
            Kind::Bytes => Arc::new(BinaryArray::from(self.values::<&[u8]>(rows, i)?)),
            Kind::Date => Arc::new(Date32Array::from(
                self.values::<Days>(rows, i)?
                    .into_iter()
                    .map(|d| d.map(|d| d.0))
                    .collect::<Vec<_>>(),
            )),
            Kind::Timestamp | Kind::TimestampTz => {
                let a = TimestampMicrosecondArray::from(
                    self.values::<Micros>(rows, i)?
                        .into_iter()
                        .map(|t| t.map(|t| t.0))
                        .collect::<Vec<_>>(),
                );
                if matches!(self.kinds[i], Kind::TimestampTz) {
                    Arc::new(a.with_timezone("UTC"))
                } else {
                    Arc::new(a)
                }
            }
        })
    }
}

// ------------------------------------------------------------------ the reader

/// A dativo reader: `implementation: my_rust_reader.RustPostgresReader`.
#[pyclass(module = "my_rust_reader")]
#[derive(Default)]
pub struct RustPostgresReader {
    session: Option<Session>,
    /// The cursor of the last row returned, or of the state the run started from.
    last: Option<i64>,
    done: bool,
}

impl RustPostgresReader {
    fn session(&self, method: &str) -> PyResult<&Session> {
        self.session.as_ref().ok_or_else(|| {
            PyRuntimeError::new_err(format!(
                "RustPostgresReader.{method} called before initialize (or after close)"
            ))
        })
    }
}

/// `context["state"]["cursor"]`, if there is a state.
fn state_cursor(context: &Bound<'_, PyAny>) -> PyResult<Option<i64>> {
    let Ok(ctx) = context.cast::<PyDict>() else {
        return Ok(None);
    };
    if let Some(shard) = ctx.get_item("shard")? {
        if let Ok(shard) = shard.cast::<PyDict>() {
            let count: i64 = match shard.get_item("count")? {
                Some(c) => c.extract().unwrap_or(1),
                None => 1,
            };
            if count > 1 {
                return Err(PyValueError::new_err(format!(
                    "RustPostgresReader cannot be split into shards (the job asks for {count}); run it with one"
                )));
            }
        }
    }
    let state = match ctx.get_item("state")? {
        None => return Ok(None),
        Some(s) if s.is_none() => return Ok(None),
        Some(s) => s,
    };
    let cursor = state
        .cast::<PyDict>()
        .ok()
        .and_then(|d| d.get_item("cursor").ok().flatten());
    let value = cursor.as_ref().and_then(|c| {
        if c.is_instance_of::<PyString>() {
            c.extract::<String>().ok()?.trim().parse::<i64>().ok()
        } else if c.is_instance_of::<pyo3::types::PyBool>() {
            None
        } else {
            c.extract::<i64>().ok()
        }
    });
    match value {
        Some(v) => Ok(Some(v)),
        None => Err(PyValueError::new_err(format!(
            "RustPostgresReader: the state {} has no integer `cursor`",
            state.repr()?
        ))),
    }
}

#[pymethods]
impl RustPostgresReader {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Check the config, connect, read the table's columns. `context["state"]` is
    /// `{"cursor": n}` from the last committed run, or None.
    fn initialize(
        &mut self,
        py: Python<'_>,
        config: &Bound<'_, PyAny>,
        context: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.session = None;
        self.done = false;
        let cfg = Config::from_py(config)?;
        self.last = state_cursor(context)?;
        let session = py.detach(move || Session::open(cfg))?;
        self.session = Some(session);
        Ok(())
    }

    /// The table's columns as Arrow (nullable unless NOT NULL).
    fn get_schema(&self) -> PyResult<ArrowSchema> {
        Ok(ArrowSchema {
            schema: self.session("get_schema")?.schema.clone(),
        })
    }

    /// The next `batch_size` rows after the last cursor value, or None at the end.
    fn read_batch(&mut self, py: Python<'_>) -> PyResult<Option<ArrowBatch>> {
        if self.done {
            return Ok(None);
        }
        let session = self.session("read_batch")?;
        let last = self.last;
        // Query and build the arrays without holding the GIL.
        let page = py.detach(|| session.page(last))?;
        let batch_size = session.cfg.batch_size;
        match page {
            None => {
                self.done = true;
                Ok(None)
            }
            Some((batch, last, rows)) => {
                self.last = Some(last);
                if rows < batch_size {
                    self.done = true;
                }
                Ok(Some(ArrowBatch { batch }))
            }
        }
    }

    /// `{"cursor": <last value read>}`, or None if nothing was read and there was no state.
    fn get_incremental_state<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        match self.last {
            None => Ok(None),
            Some(l) => {
                let d = PyDict::new(py);
                d.set_item("cursor", l)?;
                Ok(Some(d))
            }
        }
    }

    /// Close the connection. Safe to call twice, or after a failed initialize.
    fn close(&mut self, py: Python<'_>) {
        if let Some(s) = self.session.take() {
            py.detach(move || drop(s));
        }
    }

    fn __repr__(&self) -> String {
        match &self.session {
            Some(s) => format!(
                "RustPostgresReader(table={:?}, cursor={:?}, last={:?})",
                s.cfg.table, s.cfg.cursor, self.last
            ),
            None => "RustPostgresReader(not initialized)".into(),
        }
    }
}

/// The Python module `my_rust_reader`.
#[pymodule]
fn my_rust_reader(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<RustPostgresReader>()?;
    m.add_class::<ArrowBatch>()?;
    m.add_class::<ArrowSchema>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
