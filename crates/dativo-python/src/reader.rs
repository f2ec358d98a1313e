//! A Python class as a dativo reader.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use dativo_core::{Reader, ReaderContext, Result};
use pyo3::prelude::*;
use serde_json::{json, Value};

use crate::convert::{self, Batches};

/// Calls `initialize`, `get_schema`, `read_batch`, `get_incremental_state` and `close` on a
/// Python object.
pub struct PyReader {
    obj: Py<PyAny>,
    schema: Option<SchemaRef>,
}

impl PyReader {
    pub fn new(obj: Py<PyAny>) -> Self {
        PyReader { obj, schema: None }
    }
}

impl Reader for PyReader {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        let context = json!({
            "job": ctx.job, "stream": ctx.stream, "run_id": ctx.run_id,
            "state": ctx.state, "shard": ctx.shard,
        });
        Python::attach(|py| {
            let c = convert::to_py(py, config).map_err(|e| convert::error(py, &e, "config"))?;
            let x = convert::to_py(py, &context).map_err(|e| convert::error(py, &e, "context"))?;
            self.obj
                .bind(py)
                .call_method1("initialize", (c, x))
                .map_err(|e| convert::error(py, &e, ""))?;
            Ok(())
        })
    }

    fn get_schema(&mut self) -> Result<SchemaRef> {
        if let Some(s) = &self.schema {
            return Ok(s.clone());
        }
        let s = Python::attach(|py| {
            let o = self
                .obj
                .bind(py)
                .call_method0("get_schema")
                .map_err(|e| convert::error(py, &e, ""))?;
            convert::schema(py, &o)
        })?;
        self.schema = Some(s.clone());
        Ok(s)
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        Python::attach(|py| loop {
            let o = self
                .obj
                .bind(py)
                .call_method0("read_batch")
                .map_err(|e| convert::error(py, &e, ""))?;
            if o.is_none() {
                return Ok(None);
            }
            match convert::batches(py, &o)? {
                Batches::One(b) => return Ok(Some(b)),
                // A stream (a Table, a DataFrame, a duckdb relation) is one read_batch: it is
                // delivered as one batch, so the state the class reports next covers exactly
                // what was delivered. Drained without the GIL (producers take it if they need it).
                Batches::Stream(mut r) => {
                    let schema = arrow::array::RecordBatchReader::schema(&r);
                    let batches = py.detach(move || {
                        let mut v = Vec::new();
                        while let Some(b) = convert::next_of(&mut r)? {
                            v.push(b);
                        }
                        Ok::<_, dativo_core::Error>(v)
                    })?;
                    match batches.len() {
                        0 => continue,
                        1 => return Ok(batches.into_iter().next()),
                        _ => {
                            let b =
                                arrow::compute::concat_batches(&schema, &batches).map_err(|e| {
                                    dativo_core::Error::plugin(format!(
                                        "read_batch: joining the stream's batches: {e}"
                                    ))
                                })?;
                            return Ok(Some(b));
                        }
                    }
                }
            }
        })
    }

    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        Python::attach(|py| {
            let o = self
                .obj
                .bind(py)
                .call_method0("get_incremental_state")
                .map_err(|e| convert::error(py, &e, ""))?;
            match convert::from_py(py, &o, "get_incremental_state")? {
                Value::Null => Ok(None),
                v => Ok(Some(v)),
            }
        })
    }

    fn close(&mut self) -> Result<()> {
        Python::attach(|py| {
            self.obj
                .bind(py)
                .call_method0("close")
                .map_err(|e| convert::error(py, &e, ""))?;
            Ok(())
        })
    }
}
