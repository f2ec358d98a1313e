//! A Python class as a dativo writer.

use arrow::record_batch::RecordBatch;
use dativo_core::{Commit, CommitReport, CommittedState, Result, Writer, WriterContext};
use pyo3::prelude::*;
use serde_json::{json, Value};

use crate::convert;

/// Calls `initialize`, `write_batch`, `finalize`, `abort`, `close` and (if present)
/// `committed_state` on a Python object. Batches arrive as `pyarrow.RecordBatch`.
pub struct PyWriter {
    obj: Py<PyAny>,
}

impl PyWriter {
    pub fn new(obj: Py<PyAny>) -> Self {
        PyWriter { obj }
    }

    fn call0(&self, method: &str) -> Result<Value> {
        Python::attach(|py| {
            let o = self
                .obj
                .bind(py)
                .call_method0(method)
                .map_err(|e| convert::error(py, &e, ""))?;
            convert::from_py(py, &o, method)
        })
    }
}

impl Writer for PyWriter {
    fn initialize(&mut self, config: &Value, ctx: &WriterContext) -> Result<()> {
        let context = json!({
            "job": ctx.job, "stream": ctx.stream, "run_id": ctx.run_id, "shard": ctx.shard, "source": ctx.source,
        });
        Python::attach(|py| {
            let c = convert::to_py(py, config).map_err(|e| convert::error(py, &e, "config"))?;
            let x = convert::to_py(py, &context).map_err(|e| convert::error(py, &e, "context"))?;
            let schema = convert::schema_to_pyarrow(py, &ctx.schema)?;
            x.set_item("schema", schema)
                .map_err(|e| convert::error(py, &e, "context"))?;
            self.obj
                .bind(py)
                .call_method1("initialize", (c, x))
                .map_err(|e| convert::error(py, &e, ""))?;
            Ok(())
        })
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        Python::attach(|py| {
            let b = convert::to_pyarrow(py, batch)?;
            self.obj
                .bind(py)
                .call_method1("write_batch", (b,))
                .map_err(|e| convert::error(py, &e, ""))?;
            Ok(())
        })
    }

    fn finalize(&mut self, commit: &Commit) -> Result<CommitReport> {
        let v = serde_json::to_value(commit).unwrap_or(Value::Null);
        let report = Python::attach(|py| {
            let c = convert::to_py(py, &v).map_err(|e| convert::error(py, &e, "commit"))?;
            let o = self
                .obj
                .bind(py)
                .call_method1("finalize", (c,))
                .map_err(|e| convert::error(py, &e, ""))?;
            // The commit has landed: a report that is not JSON is only a warning.
            Ok::<_, dativo_core::Error>(convert::from_py(py, &o, "finalize").unwrap_or_else(|e| {
                eprintln!("warning: finalize succeeded but its report cannot be read: {e}");
                Value::Null
            }))
        })?;
        Ok(CommitReport::from_json(&report))
    }

    fn abort(&mut self) -> Result<()> {
        self.call0("abort").map(|_| ())
    }

    fn close(&mut self) -> Result<()> {
        self.call0("close").map(|_| ())
    }

    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        let has = Python::attach(|py| {
            self.obj
                .bind(py)
                .hasattr("committed_state")
                .unwrap_or(false)
        });
        if !has {
            return Ok(None);
        }
        let v = self.call0("committed_state")?;
        if v.is_null() || v.get("state").is_none() && v.get("run_id").is_none() {
            return Ok(None);
        }
        Ok(Some(CommittedState::from_json(&v)))
    }
}
