//! `writer: iceberg` — Apache Iceberg tables through iceberg-rust.
//!
//! * Catalog: the SQL catalog on SQLite by default (`.dativo/catalog.db`, warehouse directory
//!   `warehouse`), or on PostgreSQL; warehouse on local disk or S3.
//! * Creates the namespace and table from the reader's Arrow schema (with `partition_by`) when
//!   missing; adds new nullable source columns with a schema-update commit; refuses an
//!   incompatible type change naming the column.
//! * Exactly once: each finalize is ONE fast-append commit whose snapshot summary carries the
//!   reader's state (`dativo.state`, with `dativo.job` and `dativo.run-id`);
//!   `committed_state()` walks the snapshots back to this job's latest. Data files written but
//!   not committed are invisible to readers of the table, and deleted on abort.
//! * `encryption:` (Parquet Modular Encryption only: data files must stay Parquet): every data
//!   file with fresh per-column keys; the audit records ride in the snapshot summary
//!   (`dativo.encryption`) and the audit log.
//! * Concurrent jobs appending to one table: the commit is retried on conflicts
//!   (`commit.retry.num-retries` is set to 20 on tables dativo creates).

pub mod commit;
mod config;
pub mod counting;
mod encrypted;
mod local_io;
pub mod maintain;
mod merge;
mod modes;
mod object_io;
mod writer;

pub use config::{
    CatalogConfig, CatalogKind, CatalogUri, IcebergWriterConfig, OverwriteScope, WriteMode,
};
pub use encrypted::{encrypted_dataset, ENCRYPTION_KEY};
pub use modes::planned_write;
pub use writer::IcebergWriter;

#[cfg(test)]
mod rows_tests;
#[cfg(test)]
mod tests;
