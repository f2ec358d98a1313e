//! dativo's built-in readers and writers, one module (folder) each, behind cargo features.
//!
//! The set of built-ins is closed at compile time; [`readers`] and [`writers`] list them with
//! a pure `validate` (no I/O, used by `dativo validate`) and `open`, which returns a reader or
//! writer ready to use.

use dativo_core::{OpenReader, OpenWriter, ReaderContext, Result, WriterContext};
use serde_json::Value;

#[cfg(feature = "adbc")]
pub mod adbc;
#[cfg(feature = "parquet")]
pub mod crypto_tools;
#[cfg(any(feature = "parquet", feature = "iceberg"))]
pub mod dictionary;
#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "iceberg")]
pub mod iceberg;
#[cfg(feature = "parquet")]
pub mod parquet;

#[cfg(feature = "mysql")]
use dativo_sql::mysql;
#[cfg(feature = "postgres")]
use dativo_sql::postgres;

/// A boxed error kept as an error's cause (`Error::with_source` takes a sized error; the
/// parquet crate and arrow hand over `Box<dyn Error>`). Displays and chains as the inner one.
#[derive(Debug)]
pub struct Cause(pub Box<dyn std::error::Error + Send + Sync + 'static>);

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Lists the tables a `tables:` config can select (see [`BuiltinReader::discover`]).
pub type Discover = fn(&Value) -> Result<Vec<dativo_core::streams::SourceTable>>;

/// A built-in reader.
pub struct BuiltinReader {
    /// The name used in job files (`reader: file`).
    pub name: &'static str,
    /// One line for `dativo plugins list`.
    pub summary: &'static str,
    /// Check a config without I/O.
    pub validate: fn(&Value) -> Result<()>,
    /// Open a reader for `config` (the job's `source.config`) in a run.
    pub open: fn(&Value, &ReaderContext) -> Result<Box<dyn OpenReader>>,
    /// The tables a `tables:` config can select (`None`: the reader reads one stream).
    pub discover: Option<Discover>,
}

/// A built-in writer.
pub struct BuiltinWriter {
    /// The name used in job files (`writer: parquet`).
    pub name: &'static str,
    /// One line for `dativo plugins list`.
    pub summary: &'static str,
    /// Check a config without I/O.
    pub validate: fn(&Value) -> Result<()>,
    /// Open a writer for `config` (the job's `target.config`) in a run.
    pub open: fn(&Value, &WriterContext) -> Result<Box<dyn OpenWriter>>,
    /// The encrypted dataset `config` writes, for `dativo decrypt` and `dativo verify`;
    /// `None` for writers that do not encrypt.
    #[cfg(feature = "parquet")]
    pub encrypted_dataset: Option<fn(&Value) -> Result<crypto_tools::Dataset>>,
}

/// Every built-in reader compiled into this binary.
pub fn readers() -> Vec<BuiltinReader> {
    vec![
        #[cfg(feature = "file")]
        BuiltinReader {
            name: "file",
            summary: "CSV, JSON Lines and Parquet files from a path or glob; incremental by file",
            validate: file::FileReader::validate,
            open: |c, ctx| Ok(Box::new(file::FileReader::open(c, ctx)?)),
            discover: None,
        },
        #[cfg(feature = "postgres")]
        BuiltinReader {
            name: "postgres",
            summary: "PostgreSQL tables or queries via binary COPY; parallel snapshot reads; cursor incremental; change data capture (`mode: cdc`)",
            validate: |c| {
                if postgres::cdc::is_cdc(c) {
                    postgres::cdc::PgCdcReader::validate(c)
                } else {
                    postgres::PostgresReader::validate(c)
                }
            },
            open: |c, ctx| {
                if postgres::cdc::is_cdc(c) {
                    Ok(Box::new(postgres::cdc::PgCdcReader::open(c, ctx)?))
                } else {
                    Ok(Box::new(postgres::PostgresReader::open(c, ctx)?))
                }
            },
            discover: Some(postgres::PostgresReader::discover),
        },
        #[cfg(feature = "mysql")]
        BuiltinReader {
            name: "mysql",
            summary: "MySQL / MariaDB tables or queries; parallel snapshot reads; cursor incremental; change data capture from the binlog (`mode: cdc`)",
            validate: |c| {
                if mysql::cdc::is_cdc(c) {
                    mysql::cdc::MyCdcReader::validate(c)
                } else {
                    mysql::MySqlReader::validate(c)
                }
            },
            open: |c, ctx| {
                if mysql::cdc::is_cdc(c) {
                    Ok(Box::new(mysql::cdc::MyCdcReader::open(c, ctx)?))
                } else {
                    Ok(Box::new(mysql::MySqlReader::open(c, ctx)?))
                }
            },
            discover: Some(mysql::MySqlReader::discover),
        },
        #[cfg(feature = "http")]
        BuiltinReader {
            name: "http",
            summary: "JSON REST APIs: auth, JSONPath records, five pagination styles, incremental by a cursor field, retries and rate limits",
            validate: http::HttpReader::validate,
            open: |c, ctx| Ok(Box::new(http::HttpReader::open(c, ctx)?)),
            discover: None,
        },
        #[cfg(feature = "adbc")]
        BuiltinReader {
            name: "adbc",
            summary: "any ADBC driver library (PostgreSQL, SQLite, FlightSQL, Snowflake…): a query's Arrow stream; cursor incremental",
            validate: adbc::AdbcReader::validate,
            open: |c, ctx| Ok(Box::new(adbc::AdbcReader::open(c, ctx)?)),
            discover: None,
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
            open: |c, ctx| Ok(Box::new(parquet::ParquetWriter::open(c, ctx)?)),
            encrypted_dataset: Some(crypto_tools::Dataset::parquet),
        },
        #[cfg(feature = "iceberg")]
        BuiltinWriter {
            name: "iceberg",
            summary: "Apache Iceberg tables (SQL catalog on SQLite or PostgreSQL); the state rides in each snapshot",
            validate: iceberg::IcebergWriter::validate,
            open: |c, ctx| Ok(Box::new(iceberg::IcebergWriter::open(c, ctx)?)),
            encrypted_dataset: Some(iceberg::encrypted_dataset),
        },
        #[cfg(feature = "adbc")]
        BuiltinWriter {
            name: "adbc",
            summary: "any ADBC driver library: bulk ingest into a table, one transaction per commit with the state",
            validate: adbc::AdbcWriter::validate,
            open: |c, ctx| Ok(Box::new(adbc::AdbcWriter::open(c, ctx)?)),
            #[cfg(feature = "parquet")]
            encrypted_dataset: None,
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

/// Whether `key` — the job name a commit carries — is `job`'s own: the job itself or one of
/// its shards (`job#I/N`).
pub fn is_own_key(job: &str, key: &str) -> bool {
    key == job || key.strip_prefix(job).is_some_and(|r| r.starts_with('#'))
}

/// Remove local directory `dir` and the directories below it that are (then) empty; keep
/// anything else (`dativo target drop` cleans up after the files it deleted).
pub(crate) fn remove_empty_dirs(dir: &std::path::Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
