//! Python ⇄ Rust: JSON values, exceptions, and Arrow data through the PyCapsule interface.

use std::ffi::CStr;
use std::ptr;
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow::ffi_stream::{ArrowArrayStreamReader, FFI_ArrowArrayStream};
use dativo_core::{Error, Result};
use pyo3::exceptions::{PyConnectionError, PyTimeoutError};
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyCapsule, PyTuple};
use serde_json::Value;

/// `Type: message`, then the traceback (most recent call last), for an error message.
pub fn describe(py: Python<'_>, e: &PyErr, what: &str) -> String {
    let text = (|| -> PyResult<String> {
        let lines = py.import("traceback")?.call_method1(
            "format_exception",
            (e.get_type(py), e.value(py), e.traceback(py)),
        )?;
        let lines: Vec<String> = lines.extract()?;
        let all = lines.concat();
        let all = all.trim_end();
        // The exception line(s) come last in Python's format; lead with them.
        let last = lines
            .last()
            .map(|l| l.trim_end().to_string())
            .unwrap_or_default();
        let rest = all.strip_suffix(last.as_str()).unwrap_or(all).trim_end();
        Ok(if rest.is_empty() {
            last
        } else {
            format!("{last}\n{rest}")
        })
    })()
    .unwrap_or_else(|_| e.to_string());
    if what.is_empty() {
        text
    } else {
        format!("{what}: {text}")
    }
}

/// A Python exception as a dativo error. Its kind: the exception's `dativo_kind` attribute
/// (`config`, `auth`, `connect`, `data`, `schema`, `transient`, `plugin` — set by the `dativo`
/// module's classes), else `connect` for `ConnectionError` and `TimeoutError` (retried), else
/// `plugin`.
pub fn error(py: Python<'_>, e: &PyErr, what: &str) -> Error {
    let msg = describe(py, e, what);
    let declared = e
        .value(py)
        .getattr("dativo_kind")
        .ok()
        .and_then(|k| k.extract::<String>().ok());
    match declared.as_deref() {
        Some("config") => Error::config(msg),
        Some("auth") => Error::auth(msg),
        Some("connect") => Error::connect(msg),
        Some("data") => Error::data(msg),
        Some("schema") => Error::schema(msg),
        Some("transient") => Error::transient(msg),
        _ if e.is_instance_of::<PyConnectionError>(py)
            || e.is_instance_of::<PyTimeoutError>(py) =>
        {
            Error::connect(msg)
        }
        _ => Error::plugin(msg),
    }
}

/// A JSON value as a Python object (via `json.loads`).
pub fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?.call_method1("loads", (v.to_string(),))
}

/// A Python object as JSON (via `json.dumps`, `str()` for anything JSON cannot hold).
pub fn from_py(py: Python<'_>, o: &Bound<'_, PyAny>, what: &str) -> Result<Value> {
    if o.is_none() {
        return Ok(Value::Null);
    }
    let json = py
        .import("json")
        .map_err(|e| error(py, &e, "import json"))?;
    let builtins = py
        .import("builtins")
        .map_err(|e| error(py, &e, "import builtins"))?;
    let kwargs = [(
        "default",
        builtins.getattr("str").map_err(|e| error(py, &e, what))?,
    )]
    .into_py_dict(py)
    .map_err(|e| error(py, &e, what))?;
    let text: String = json
        .call_method("dumps", (o,), Some(&kwargs))
        .and_then(|s| s.extract())
        .map_err(|e| error(py, &e, &format!("{what}: converting the result to JSON")))?;
    serde_json::from_str(&text).map_err(|e| Error::plugin(format!("{what}: {e}")))
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .qualname()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn capsule_ptr<T>(c: &Bound<'_, PyAny>, name: &CStr) -> Result<*mut T> {
    let cap = c
        .cast::<PyCapsule>()
        .map_err(|_| Error::plugin(format!("expected a PyCapsule named {name:?}")))?;
    let p = cap
        .pointer_checked(Some(name))
        .map_err(|_| Error::plugin(format!("expected a PyCapsule named {name:?}")))?;
    Ok(p.as_ptr() as *mut T)
}

/// A schema from anything with `__arrow_c_schema__` (pyarrow.Schema, polars, nanoarrow…).
pub fn schema(py: Python<'_>, o: &Bound<'_, PyAny>) -> Result<SchemaRef> {
    if !o.hasattr("__arrow_c_schema__").unwrap_or(false) {
        return Err(Error::plugin(format!(
            "get_schema returned {}; expected a pyarrow.Schema (or any object with __arrow_c_schema__)",
            type_name(o)
        )));
    }
    let cap = o
        .call_method0("__arrow_c_schema__")
        .map_err(|e| error(py, &e, "__arrow_c_schema__"))?;
    let p: *mut FFI_ArrowSchema = capsule_ptr(&cap, c"arrow_schema")?;
    // SAFETY: a valid schema owned by the capsule; we only read it.
    let s =
        Schema::try_from(unsafe { &*p }).map_err(|e| Error::plugin(format!("get_schema: {e}")))?;
    Ok(Arc::new(s))
}

/// What `read_batch` returned, as Arrow.
pub enum Batches {
    /// One batch (`__arrow_c_array__`).
    One(RecordBatch),
    /// A stream (`__arrow_c_stream__`: a Table, a polars DataFrame, a duckdb relation…).
    Stream(ArrowArrayStreamReader),
}

// SAFETY: the stream's callbacks are the producer's; Arrow streams may be moved between threads,
// and every call on it is made with the interpreter attached.
unsafe impl Send for Batches {}

/// Import a batch or a stream of batches from a Python object, zero copy.
pub fn batches(py: Python<'_>, o: &Bound<'_, PyAny>) -> Result<Batches> {
    let accepted =
        "expected a pyarrow.RecordBatch or Table, a polars DataFrame, a duckdb relation \
                    (any object with __arrow_c_array__ or __arrow_c_stream__), or None at the end";
    if o.hasattr("__arrow_c_array__").unwrap_or(false) {
        let t = o
            .call_method0("__arrow_c_array__")
            .map_err(|e| error(py, &e, "__arrow_c_array__"))?;
        let t = t
            .cast::<PyTuple>()
            .map_err(|_| Error::plugin("__arrow_c_array__ did not return a tuple"))?;
        let (sc, ac) = (t.get_item(0), t.get_item(1));
        let (sc, ac) = match (sc, ac) {
            (Ok(s), Ok(a)) => (s, a),
            _ => {
                return Err(Error::plugin(
                    "__arrow_c_array__ did not return (schema, array)",
                ))
            }
        };
        let sp: *mut FFI_ArrowSchema = capsule_ptr(&sc, c"arrow_schema")?;
        let ap: *mut FFI_ArrowArray = capsule_ptr(&ac, c"arrow_array")?;
        // SAFETY: move the array out of its capsule (leaving it released, so the capsule's
        // destructor does nothing); the schema stays the capsule's and is only read.
        let array = unsafe { ptr::replace(ap, FFI_ArrowArray::empty()) };
        // SAFETY: producer-provided, matching structs.
        let data = unsafe { from_ffi(array, &*sp) }
            .map_err(|e| Error::plugin(format!("read_batch: {e}")))?;
        if !matches!(data.data_type(), DataType::Struct(_)) {
            return Err(Error::plugin(format!(
                "read_batch returned a {} array; a batch is a struct array (e.g. a pyarrow.RecordBatch)",
                data.data_type()
            )));
        }
        let s = StructArray::from(data);
        if s.null_count() > 0 {
            return Err(Error::plugin(
                "read_batch returned a struct array with top-level nulls",
            ));
        }
        return Ok(Batches::One(RecordBatch::from(s)));
    }
    if o.hasattr("__arrow_c_stream__").unwrap_or(false) {
        let cap = o
            .call_method0("__arrow_c_stream__")
            .map_err(|e| error(py, &e, "__arrow_c_stream__"))?;
        let p: *mut FFI_ArrowArrayStream = capsule_ptr(&cap, c"arrow_array_stream")?;
        // SAFETY: move the stream out of its capsule, leaving it released.
        let stream = unsafe { ptr::replace(p, FFI_ArrowArrayStream::empty()) };
        let reader = ArrowArrayStreamReader::try_new(stream)
            .map_err(|e| Error::plugin(format!("read_batch: {e}")))?;
        return Ok(Batches::Stream(reader));
    }
    Err(Error::plugin(format!(
        "read_batch returned {}; {accepted}",
        type_name(o)
    )))
}

/// Next batch of a stream.
pub fn next_of(r: &mut ArrowArrayStreamReader) -> Result<Option<RecordBatch>> {
    r.next()
        .transpose()
        .map_err(|e| Error::plugin(format!("read_batch stream: {e}")))
}

/// The `pyarrow` module, which Python writers need.
fn pyarrow(py: Python<'_>) -> Result<Bound<'_, PyModule>> {
    py.import("pyarrow").map_err(|e| {
        Error::config(describe(
            py,
            &e,
            "Python writers need pyarrow: importing it",
        ))
    })
}

/// A batch as a `pyarrow.RecordBatch`, zero copy (pyarrow takes the C structs).
pub fn to_pyarrow<'py>(py: Python<'py>, batch: &RecordBatch) -> Result<Bound<'py, PyAny>> {
    let pa = pyarrow(py)?;
    let data = StructArray::from(batch.clone()).into_data();
    let mut array = Box::new(FFI_ArrowArray::new(&data));
    let mut schema = Box::new(
        FFI_ArrowSchema::try_from(data.data_type()).map_err(|e| Error::schema(e.to_string()))?,
    );
    let rb = pa
        .getattr("RecordBatch")
        .and_then(|c| {
            c.call_method1(
                "_import_from_c",
                (
                    &mut *array as *mut FFI_ArrowArray as usize,
                    &mut *schema as *mut FFI_ArrowSchema as usize,
                ),
            )
        })
        .map_err(|e| error(py, &e, "pyarrow.RecordBatch._import_from_c"))?;
    // pyarrow moved both out (their release is now NULL): dropping the boxes frees nothing else.
    drop((array, schema));
    Ok(rb)
}

/// A schema as a `pyarrow.Schema`.
pub fn schema_to_pyarrow<'py>(py: Python<'py>, schema: &Schema) -> Result<Bound<'py, PyAny>> {
    let pa = pyarrow(py)?;
    let mut s =
        Box::new(FFI_ArrowSchema::try_from(schema).map_err(|e| Error::schema(e.to_string()))?);
    let out = pa
        .getattr("Schema")
        .and_then(|c| {
            c.call_method1(
                "_import_from_c",
                (&mut *s as *mut FFI_ArrowSchema as usize,),
            )
        })
        .map_err(|e| error(py, &e, "pyarrow.Schema._import_from_c"))?;
    drop(s);
    Ok(out)
}
