//! dativo-core: the interfaces every reader and writer implements ([`Reader`], [`Writer`]), the
//! error type ([`Error`] with a kind and a retryable flag), the job file model ([`job::Job`])
//! and the conformance suite ([`conformance`]) that every implementation must pass.
//!
//! Plugin authors in Rust need only this crate (through `dativo-plugin-sdk`); the runner and
//! connectors build on it.

pub mod backoff;
pub mod config;
pub mod conformance;
pub mod error;
pub mod interface;
pub mod job;
#[cfg(feature = "runtime")]
pub mod rt;
pub mod schema_spec;
pub mod secrets;
pub mod streams;
pub mod yaml;

pub use error::{Error, ErrorKind, Result, ResultExt};
pub use interface::{
    open_reader, open_writer, Commit, CommitReport, CommittedState, Delivery, OpenReader,
    OpenWriter, Reader, ReaderContext, ReaderControl, Shard, StreamInfo, Writer, WriterContext,
};
