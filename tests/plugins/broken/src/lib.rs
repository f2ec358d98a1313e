//! Deliberately broken plugins for dativo's tests. Each reader first returns good batches of
//! `{id: int64, name: utf8}` (config `good_batches`, default 2, of `batch_rows`, default 100,
//! ids continuing from the state) and then misbehaves in its own way:
//!
//! - `wrong_schema`: returns a batch whose `id` column is utf8;
//! - `error_mid_stream`: returns an error;
//! - `panic`: panics;
//! - `good`: does not misbehave (a reference for the others); `total` rows (default 500).
//!
//! Writers: `panic_on_write` panics in `write_batch`; `error_on_finalize` fails `finalize`.

use dativo_plugin_sdk::prelude::*;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Good,
    WrongSchema,
    Error,
    Panic,
}

struct Broken {
    mode: Mode,
    next_id: i64,
    end: i64,
    batch_rows: i64,
    good_batches: i64,
    served: i64,
}

impl Broken {
    fn new(mode: Mode) -> Self {
        Broken {
            mode,
            next_id: 1,
            end: 0,
            batch_rows: 100,
            good_batches: 2,
            served: 0,
        }
    }
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

impl Reader for Broken {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        let n = |k: &str, d: i64| config.get(k).and_then(Value::as_i64).unwrap_or(d);
        self.batch_rows = n("batch_rows", 100);
        self.good_batches = n("good_batches", 2);
        if let Some(s) = &ctx.state {
            self.next_id = s.get("next_id").and_then(Value::as_i64).unwrap_or(1);
        }
        self.end = n("total", 500) + 1;
        Ok(())
    }

    fn get_schema(&mut self) -> Result<SchemaRef> {
        Ok(schema())
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.mode != Mode::Good && self.served >= self.good_batches {
            match self.mode {
                Mode::WrongSchema => {
                    let s = Arc::new(Schema::new(vec![
                        Field::new("id", DataType::Utf8, false),
                        Field::new("name", DataType::Utf8, true),
                    ]));
                    let b = RecordBatch::try_new(
                        s,
                        vec![
                            Arc::new(StringArray::from(vec!["x"])),
                            Arc::new(StringArray::from(vec![Some("y")])),
                        ],
                    )
                    .map_err(|e| Error::internal(e.to_string()))?;
                    return Ok(Some(b));
                }
                Mode::Error => {
                    return Err(Error::data(format!(
                        "the source rejected the request at id {} (deliberate test error)",
                        self.next_id
                    )))
                }
                Mode::Panic => panic!("deliberate test panic at id {}", self.next_id),
                Mode::Good => unreachable!(),
            }
        }
        if self.mode == Mode::Good && self.next_id >= self.end {
            return Ok(None);
        }
        let hi = if self.mode == Mode::Good {
            (self.next_id + self.batch_rows).min(self.end)
        } else {
            self.next_id + self.batch_rows
        };
        let ids: Vec<i64> = (self.next_id..hi).collect();
        let names: Vec<String> = ids.iter().map(|i| format!("row-{i}")).collect();
        self.next_id = hi;
        self.served += 1;
        let b = RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .map_err(|e| Error::internal(e.to_string()))?;
        Ok(Some(b))
    }

    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        Ok(Some(json!({ "next_id": self.next_id })))
    }

    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

struct BadWriter {
    panic_on_write: bool,
}

impl Writer for BadWriter {
    fn initialize(&mut self, _config: &Value, _ctx: &WriterContext) -> Result<()> {
        Ok(())
    }
    fn write_batch(&mut self, _batch: &RecordBatch) -> Result<()> {
        if self.panic_on_write {
            panic!("deliberate test panic in write_batch");
        }
        Ok(())
    }
    fn finalize(&mut self, _commit: &Commit) -> Result<CommitReport> {
        Err(Error::io(
            "deliberate test failure: the target refused the commit",
        ))
    }
    fn abort(&mut self) -> Result<()> {
        Ok(())
    }
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

dativo_plugin_sdk::export_plugin! {
    name: "broken",
    version: "0.0.1",
    description: "Deliberately broken plugins for dativo's tests",
    readers: {
        "good" => || Broken::new(Mode::Good),
        "wrong_schema" => || Broken::new(Mode::WrongSchema),
        "error_mid_stream" => || Broken::new(Mode::Error),
        "panic" => || Broken::new(Mode::Panic),
    },
    writers: {
        "panic_on_write" => || BadWriter { panic_on_write: true },
        "error_on_finalize" => || BadWriter { panic_on_write: false },
    },
}
