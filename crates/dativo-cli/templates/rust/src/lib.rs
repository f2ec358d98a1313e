//! `{{name}}`: a dativo reader plugin. Build it with `cargo build --release`, check it with
//! `dativo plugin test ./target/release/lib{{name}}.so`, and use it in a job:
//!
//! ```yaml
//! source:
//!   reader: {type: custom, implementation: "./target/release/lib{{name}}.so#{{name}}"}
//!   config: {rows: 1000}
//! ```
//!
//! It generates `rows` rows (`id`, `name`) and resumes after the last id it returned. Replace
//! the TODOs with your source.

use dativo_plugin_sdk::prelude::*;

#[derive(Default)]
struct Source {
    rows: i64,
    batch_size: i64,
    next_id: i64,
    /// Whether a state was given or a batch returned: then there is a state to report.
    has_state: bool,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, true),
    ]))
}

impl Reader for Source {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        // `config` is the job's `source.config` mapping. Reject what you do not understand:
        // dativo shows the message with the job's name.
        let empty = Map::new();
        let config = match config {
            Value::Null => &empty,
            Value::Object(m) => m,
            _ => return Err(Error::config("config must be a mapping, e.g. {rows: 1000}")),
        };
        for (key, value) in config {
            let n = value.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                Error::config(format!("`{key}` must be a non-negative integer")).with_key_path(key.clone())
            })?;
            match key.as_str() {
                "rows" => self.rows = n,
                "batch_size" if n > 0 => self.batch_size = n,
                "batch_size" => return Err(Error::config("`batch_size` must be at least 1")),
                _ => {
                    return Err(Error::config(format!("unknown key `{key}`: expected rows, batch_size"))
                        .with_key_path(key.clone()))
                }
            }
        }
        if !config.contains_key("rows") {
            self.rows = 100;
        }
        if !config.contains_key("batch_size") {
            self.batch_size = 1000;
        }
        // `ctx.state` is what `get_incremental_state` returned for the last committed batch.
        self.next_id = 1;
        if let Some(state) = &ctx.state {
            self.next_id = state
                .get("next_id")
                .and_then(Value::as_i64)
                .ok_or_else(|| Error::data(format!("state {state} has no integer `next_id`")))?;
            self.has_state = true;
        }
        // TODO: connect to your source here. Return Error::connect(..) for network failures
        // (dativo retries them) and Error::auth(..) for rejected credentials (it does not).
        Ok(())
    }

    fn get_schema(&mut self) -> Result<SchemaRef> {
        // TODO: the columns of your source. Every batch must have exactly this schema.
        Ok(schema())
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        if self.next_id > self.rows {
            return Ok(None); // end of stream
        }
        let end = (self.next_id + self.batch_size - 1).min(self.rows);
        // TODO: fetch the next batch from your source; build Arrow arrays column by column.
        let ids: Vec<i64> = (self.next_id..=end).collect();
        let names: Vec<Option<String>> = ids
            .iter()
            .map(|id| (id % 10 != 0).then(|| format!("name-{id}")))
            .collect();
        self.next_id = end + 1;
        self.has_state = true;
        let batch = RecordBatch::try_new(
            schema(),
            vec![Arc::new(Int64Array::from(ids)), Arc::new(StringArray::from(names))],
        )
        .map_err(|e| Error::internal(e.to_string()))?;
        Ok(Some(batch))
    }

    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        // Must cover exactly the batches returned so far: a later run resumes from it.
        Ok(self.has_state.then(|| json!({ "next_id": self.next_id })))
    }

    fn close(&mut self) -> Result<()> {
        // TODO: release connections and files. Called exactly once, also after a failure.
        Ok(())
    }
}

dativo_plugin_sdk::export_plugin! {
    name: "{{name}}",
    version: env!("CARGO_PKG_VERSION"),
    readers: { "{{name}}" => Source::default },
    writers: {},
}

// `cargo test` runs the same conformance suite as `dativo plugin test`, without dativo.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_conformance_suite() {
        let report = dativo_plugin_sdk::conformance::check_reader(
            &mut || Ok(Box::new(Source::default()) as Box<dyn Reader>),
            &json!({ "rows": 2500 }),
        );
        // A report is data: assert on it, or a failing check would go unnoticed.
        assert!(report.passed(), "{report:#?}");
    }
}
