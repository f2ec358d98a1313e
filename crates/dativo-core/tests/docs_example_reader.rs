//! The complete reader from docs/plugins.md, kept compiling and passing the conformance suite.

use std::sync::Arc;

use arrow::array::Int64Array;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use dativo_core::{Reader, ReaderContext, Result};
use serde_json::{json, Value};

/// Counts from the last committed number up to `to`.
#[derive(Default)]
struct Counter {
    next: i64,
    to: i64,
    schema: Option<SchemaRef>,
}

impl Reader for Counter {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        self.to = config["to"].as_i64().unwrap_or(100);
        self.next = ctx
            .state
            .as_ref()
            .and_then(|s| s["next"].as_i64())
            .unwrap_or(0);
        self.schema = Some(Arc::new(Schema::new(vec![Field::new(
            "n",
            DataType::Int64,
            false,
        )])));
        Ok(())
    }
    fn get_schema(&mut self) -> Result<SchemaRef> {
        Ok(self.schema.clone().unwrap())
    }
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.next >= self.to {
            return Ok(None);
        }
        let end = (self.next + 10).min(self.to);
        let col = Int64Array::from_iter_values(self.next..end);
        self.next = end;
        Ok(Some(RecordBatch::try_new(
            self.get_schema()?,
            vec![Arc::new(col)],
        )?))
    }
    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        Ok(Some(json!({"next": self.next})))
    }
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

#[test]
fn counter_passes_conformance() {
    let report = dativo_core::conformance::check_reader(
        &mut || Ok(Box::new(Counter::default())),
        &json!({"to": 95}),
    );
    assert!(report.passed(), "{report:?}");
}

/// A reader whose state does not cover what it returned must fail the suite.
#[derive(Default)]
struct Forgetful(Counter);

impl Reader for Forgetful {
    fn initialize(&mut self, c: &Value, ctx: &ReaderContext) -> Result<()> {
        self.0.initialize(c, ctx)
    }
    fn get_schema(&mut self) -> Result<SchemaRef> {
        self.0.get_schema()
    }
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.0.read_batch()
    }
    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        Ok(Some(json!({"next": 0})))
    }
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

#[test]
fn a_reader_whose_state_lags_fails_conformance() {
    let report = dativo_core::conformance::check_reader(
        &mut || Ok(Box::new(Forgetful::default())),
        &json!({"to": 95}),
    );
    assert!(!report.passed());
    assert!(report
        .into_result()
        .unwrap_err()
        .to_string()
        .contains("resume from a mid-stream state"));
}
