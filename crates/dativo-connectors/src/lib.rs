//! dativo's built-in readers and writers, one module (folder) each, behind cargo features.
//!
//! The set of built-ins is closed at compile time; [`readers`] and [`writers`] list them with
//! a pure `validate` (no I/O, used by `dativo validate`) and a constructor.

use dativo_core::{Reader, Result, Writer};
use serde_json::Value;

#[cfg(feature = "adbc")]
pub mod adbc;
#[cfg(feature = "parquet")]
pub mod encryption;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "iceberg")]
pub mod iceberg;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod keyset;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "parquet")]
pub mod parquet;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(any(
    feature = "postgres",
    feature = "iceberg",
    feature = "parquet",
    feature = "http"
))]
pub mod rt;
#[cfg(feature = "parquet")]
pub mod storage;

/// A built-in reader.
pub struct BuiltinReader {
    /// The name used in job files (`reader: file`).
    pub name: &'static str,
    /// One line for `dativo plugins list`.
    pub summary: &'static str,
    /// Check a config without I/O.
    pub validate: fn(&Value) -> Result<()>,
    /// A new, uninitialized instance.
    pub create: fn() -> Box<dyn Reader>,
}

/// A built-in writer.
pub struct BuiltinWriter {
    /// The name used in job files (`writer: parquet`).
    pub name: &'static str,
    /// One line for `dativo plugins list`.
    pub summary: &'static str,
    /// Check a config without I/O.
    pub validate: fn(&Value) -> Result<()>,
    /// A new, uninitialized instance.
    pub create: fn() -> Box<dyn Writer>,
}

/// Every built-in reader compiled into this binary.
pub fn readers() -> Vec<BuiltinReader> {
    vec![
        #[cfg(feature = "file")]
        BuiltinReader {
            name: "file",
            summary: "CSV, JSON Lines and Parquet files from a path or glob; incremental by file",
            validate: file::FileReader::validate,
            create: || Box::new(file::FileReader::new()),
        },
        #[cfg(feature = "postgres")]
        BuiltinReader {
            name: "postgres",
            summary: "PostgreSQL tables or queries via binary COPY; parallel snapshot reads; cursor incremental",
            validate: postgres::PostgresReader::validate,
            create: || Box::new(postgres::PostgresReader::new()),
        },
        #[cfg(feature = "mysql")]
        BuiltinReader {
            name: "mysql",
            summary: "MySQL / MariaDB tables or queries; parallel snapshot reads; cursor incremental",
            validate: mysql::MySqlReader::validate,
            create: || Box::new(mysql::MySqlReader::new()),
        },
        #[cfg(feature = "http")]
        BuiltinReader {
            name: "http",
            summary: "JSON REST APIs: auth, JSONPath records, five pagination styles, incremental by a cursor field, retries and rate limits",
            validate: http::HttpReader::validate,
            create: || Box::new(http::HttpReader::new()),
        },
        #[cfg(feature = "adbc")]
        BuiltinReader {
            name: "adbc",
            summary: "any ADBC driver library (PostgreSQL, SQLite, FlightSQL, Snowflake…): a query's Arrow stream; cursor incremental",
            validate: adbc::AdbcReader::validate,
            create: || Box::new(adbc::AdbcReader::new()),
        },
    ]
}

/// Every built-in writer compiled into this binary.
pub fn writers() -> Vec<BuiltinWriter> {
    vec![
        #[cfg(feature = "parquet")]
        BuiltinWriter {
            name: "parquet",
            summary: "Parquet files in a directory, committed atomically with the reader's state",
            validate: parquet::ParquetWriter::validate,
            create: || Box::new(parquet::ParquetWriter::new()),
        },
        #[cfg(feature = "iceberg")]
        BuiltinWriter {
            name: "iceberg",
            summary: "Apache Iceberg tables (SQL catalog on SQLite or PostgreSQL); the state rides in each snapshot",
            validate: iceberg::IcebergWriter::validate,
            create: || Box::new(iceberg::IcebergWriter::new()),
        },
        #[cfg(feature = "adbc")]
        BuiltinWriter {
            name: "adbc",
            summary: "any ADBC driver library: bulk ingest into a table, one transaction per commit with the state",
            validate: adbc::AdbcWriter::validate,
            create: || Box::new(adbc::AdbcWriter::new()),
        },
    ]
}

/// The built-in reader called `name`.
pub fn reader(name: &str) -> Option<BuiltinReader> {
    readers().into_iter().find(|r| r.name == name)
}

/// The built-in writer called `name`.
pub fn writer(name: &str) -> Option<BuiltinWriter> {
    writers().into_iter().find(|w| w.name == name)
}
