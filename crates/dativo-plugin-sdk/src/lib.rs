//! Write a dativo reader or writer in Rust, build it as a `cdylib`, and point a job at the
//! library — no fork of dativo, no rebuild of the `dativo` binary.
//!
//! 1. Implement [`Reader`] (five methods) and/or [`Writer`] — the same traits dativo's built-in
//!    connectors implement.
//! 2. Call [`export_plugin!`] once with a name, a version and your readers and writers.
//! 3. `cargo build --release` with `crate-type = ["cdylib"]` and use it in a job:
//!    `reader: {type: custom, implementation: "./target/release/libmy_plugin.so#orders"}`.
//!
//! ```ignore
//! use dativo_plugin_sdk::prelude::*;
//!
//! #[derive(Default)]
//! struct Orders { /* … */ }
//!
//! impl Reader for Orders {
//!     fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> { Ok(()) }
//!     fn get_schema(&mut self) -> Result<SchemaRef> { todo!() }
//!     fn read_batch(&mut self) -> Result<Option<RecordBatch>> { Ok(None) }
//!     fn get_incremental_state(&mut self) -> Result<Option<Value>> { Ok(None) }
//!     fn close(&mut self) -> Result<()> { Ok(()) }
//! }
//!
//! dativo_plugin_sdk::export_plugin! {
//!     name: "my_plugin",
//!     version: env!("CARGO_PKG_VERSION"),
//!     readers: { "orders" => Orders::default },
//!     writers: {},
//! }
//! ```
//!
//! The SDK turns every call into the C ABI of `include/dativo_plugin.h`: batches move through
//! the Arrow C Data Interface without copying, configuration/context/state travel as JSON, an
//! [`Error`] becomes a status code plus message (its kind decides whether dativo retries), and a
//! panic is caught at the boundary and reported as `DATIVO_ERROR_PANIC` with its message —
//! it never unwinds into dativo.

// The FFI boundary needs raw pointers; every unsafe block states the ABI rule it relies on.
#![allow(unsafe_code)]

pub mod abi;
mod export;

pub use export::{__init, DynamicReader, DynamicWriter, PluginDef, ReaderDef, WriterDef};

pub use arrow;
pub use dativo_core::{
    Commit, CommitReport, CommittedState, Error, ErrorKind, Reader, ReaderContext, Result, Shard,
    Writer, WriterContext,
};
pub use serde_json;

/// The conformance suite `dativo plugin test` runs, for a plugin's own unit tests:
/// `assert!(conformance::check_reader(&mut || Ok(Box::new(MyReader::default())), &json!({})).passed())`.
pub use dativo_core::conformance;

/// Everything a plugin usually needs in scope.
pub mod prelude {
    pub use crate::{
        Commit, CommitReport, CommittedState, Error, ErrorKind, Reader, ReaderContext, Result,
        Shard, Writer, WriterContext,
    };
    pub use arrow::array::*;
    pub use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
    pub use arrow::record_batch::RecordBatch;
    pub use serde_json::{json, Map, Value};
    pub use std::sync::Arc;
}

/// Export the plugin's readers and writers as `dativo_plugin_init`. Call it once per library.
///
/// ```ignore
/// dativo_plugin_sdk::export_plugin! {
///     name: "my_plugin",
///     version: env!("CARGO_PKG_VERSION"),
///     description: "Orders from our private API",          // optional
///     readers: { "orders" => OrdersReader::default },       // name => fn() -> impl Reader
///     writers: { "audit" => AuditWriter::new },             // name => fn() -> impl Writer
/// }
/// ```
#[macro_export]
macro_rules! export_plugin {
    (
        name: $name:expr,
        version: $version:expr,
        $(description: $description:expr,)?
        readers: { $($rname:literal => $rmake:expr),* $(,)? },
        writers: { $($wname:literal => $wmake:expr),* $(,)? } $(,)?
    ) => {
        /// The plugin's entry point (see `dativo_plugin.h`).
        ///
        /// # Safety
        /// `out` must point to a writable `DativoPlugin`, as dativo's host guarantees.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn dativo_plugin_init(
            host_abi_version: u32,
            out: *mut $crate::abi::DativoPlugin,
        ) -> ::std::os::raw::c_int {
            static DEF: $crate::PluginDef = $crate::PluginDef {
                name: $name,
                version: $version,
                description: {
                    #[allow(unused_mut, unused_assignments)]
                    let mut d = "";
                    $(d = $description;)?
                    d
                },
                readers: &[$($crate::ReaderDef {
                    name: $rname,
                    create: || ::std::boxed::Box::new(($rmake)()),
                }),*],
                writers: &[$($crate::WriterDef {
                    name: $wname,
                    create: || ::std::boxed::Box::new(($wmake)()),
                }),*],
                dynamic_reader: None,
                dynamic_writer: None,
            };
            // SAFETY: forwarded from the caller's contract.
            unsafe { $crate::__init(&DEF, host_abi_version, out) }
        }
    };
}
