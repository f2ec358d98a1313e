//! `dativo plugin test` runs the five-method conformance suite; built-ins are opened ready
//! ([`OpenReader`] / [`OpenWriter`]), so this presents one as a five-method reader or writer:
//! `initialize` opens it, the other methods call the open object, or fail if none is open.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde_json::Value;

use dativo_core::{
    Commit, CommitReport, CommittedState, Error, OpenReader, OpenWriter, Reader, ReaderContext,
    Result, Writer, WriterContext,
};

type OpenReaderFn = fn(&Value, &ReaderContext) -> Result<Box<dyn OpenReader>>;
type OpenWriterFn = fn(&Value, &WriterContext) -> Result<Box<dyn OpenWriter>>;

fn not_open() -> Error {
    Error::plugin("called before initialize succeeded")
}

/// A built-in reader behind the five-method interface.
pub struct BuiltinReader {
    open: OpenReaderFn,
    opened: Option<Box<dyn OpenReader>>,
}

impl BuiltinReader {
    /// Not yet opened; `initialize` opens it.
    pub fn new(open: OpenReaderFn) -> Self {
        Self { open, opened: None }
    }
}

impl Reader for BuiltinReader {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        self.opened = Some((self.open)(config, ctx)?);
        Ok(())
    }
    fn get_schema(&mut self) -> Result<SchemaRef> {
        self.opened
            .as_ref()
            .map(|r| r.schema())
            .ok_or_else(not_open)
    }
    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        self.opened.as_mut().ok_or_else(not_open)?.next_batch()
    }
    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        self.opened.as_mut().ok_or_else(not_open)?.state()
    }
    fn close(&mut self) -> Result<()> {
        self.opened.take().map_or(Ok(()), |r| r.close())
    }
}

/// A built-in writer behind the five-method interface.
pub struct BuiltinWriter {
    open: OpenWriterFn,
    opened: Option<Box<dyn OpenWriter>>,
}

impl BuiltinWriter {
    /// Not yet opened; `initialize` opens it.
    pub fn new(open: OpenWriterFn) -> Self {
        Self { open, opened: None }
    }
}

impl Writer for BuiltinWriter {
    fn initialize(&mut self, config: &Value, ctx: &WriterContext) -> Result<()> {
        self.opened = Some((self.open)(config, ctx)?);
        Ok(())
    }
    fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        self.opened.as_mut().ok_or_else(not_open)?.write(batch)
    }
    fn finalize(&mut self, commit: &Commit) -> Result<CommitReport> {
        self.opened.as_mut().ok_or_else(not_open)?.commit(commit)
    }
    fn abort(&mut self) -> Result<()> {
        self.opened.as_mut().map_or(Ok(()), |w| w.abort())
    }
    fn close(&mut self) -> Result<()> {
        self.opened.take().map_or(Ok(()), |w| w.close())
    }
    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        self.opened
            .as_mut()
            .map_or(Ok(None), |w| w.committed_state())
    }
}
