//! dativo-core: the interfaces every reader and writer implements ([`Reader`], [`Writer`]), the
//! error type ([`Error`] with a kind and a retryable flag), the job file model ([`job::Job`])
//! and the conformance suite ([`conformance`]) that every implementation must pass.
//!
//! Plugin authors in Rust need only this crate (through `dativo-plugin-sdk`); the runner and
//! connectors build on it.

pub mod config;
pub mod conformance;
pub mod error;
pub mod interface;
pub mod job;
pub mod schema_spec;
pub mod secrets;
pub mod yaml;

pub use error::{Error, ErrorKind, Result, ResultExt};
pub use interface::{
    Commit, CommitReport, CommittedState, Reader, ReaderContext, Shard, Writer, WriterContext,
};
