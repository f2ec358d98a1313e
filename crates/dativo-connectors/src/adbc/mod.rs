//! `adbc`: any ADBC driver as a reader and a writer — PostgreSQL, SQLite, FlightSQL, Snowflake,
//! BigQuery… — loaded by path from its shared library (the `.so` inside the `adbc-driver-*`
//! PyPI wheels works; it has no Python linkage).
//!
//! Reader: a `query` (or a `table`) → the driver's Arrow stream, batch by batch; incremental on
//! a `cursor` column (`WHERE cursor > last ORDER BY cursor`; the cursor must be unique and
//! increasing). Types are the driver's (PostgreSQL `numeric` arrives as text).
//!
//! Writer: bulk ingest into `table` (created from the Arrow schema if missing), all inside one
//! transaction per commit; `finalize` writes the reader's state into a state table
//! (`_dativo_state` by default) in the same transaction and commits — exactly once, as long as
//! the driver supports transactions (PostgreSQL and SQLite do).

mod config;
mod reader;
mod writer;

pub use config::{AdbcReaderConfig, AdbcWriterConfig};
pub use reader::AdbcReader;
pub use writer::AdbcWriter;

use adbc_core::options::{AdbcVersion, OptionDatabase};
use adbc_core::{Database, Driver};
use adbc_driver_manager::{ManagedConnection, ManagedDriver};
use dativo_core::{Error, Result};
use std::collections::BTreeMap;

fn adbc_err(what: &str, e: adbc_core::error::Error) -> Error {
    use adbc_core::error::Status;
    let msg = dativo_core::secrets::redact(&format!("{what}: {}", e.message)).into_owned();
    match e.status {
        Status::IO | Status::Timeout | Status::Cancelled => Error::connect(msg),
        Status::Unauthenticated | Status::Unauthorized => Error::auth(msg),
        Status::InvalidArguments | Status::NotImplemented => Error::config(msg),
        _ => Error::data(msg),
    }
}

/// Load the driver and open a connection.
fn connect(
    driver: &str,
    uri: &str,
    options: &BTreeMap<String, String>,
) -> Result<ManagedConnection> {
    if !std::path::Path::new(driver).is_file() {
        return Err(Error::config(format!(
            "ADBC driver library {driver} does not exist (e.g. the libadbc_driver_postgresql.so inside `pip install adbc-driver-postgresql`)"
        ))
        .with_key_path("driver"));
    }
    let mut drv = ManagedDriver::load_dynamic_from_filename(driver, None, AdbcVersion::V110)
        .map_err(|e| {
            adbc_err(&format!("cannot load ADBC driver {driver}"), e).with_key_path("driver")
        })?;
    let mut opts = vec![(OptionDatabase::Uri, uri.into())];
    for (k, v) in options {
        opts.push((OptionDatabase::from(k.as_str()), v.as_str().into()));
    }
    let db = drv
        .new_database_with_opts(opts)
        .map_err(|e| adbc_err("ADBC database", e))?;
    let conn = db
        .new_connection()
        .map_err(|e| match adbc_err("ADBC connect", e) {
            err if err.kind() == dativo_core::ErrorKind::Data => {
                Error::connect(err.message().to_string())
            }
            err => err,
        })?;
    Ok(conn)
}

/// Quote an SQL identifier, part by part (`schema.table`).
fn quote_ident(name: &str) -> String {
    name.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// A single-quoted SQL string literal.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
