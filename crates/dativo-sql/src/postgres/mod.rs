//! `reader: postgres` — tables or queries from PostgreSQL, fast and exactly once.
//!
//! * Data moves with `COPY (SELECT …) TO STDOUT (FORMAT binary)`, decoded straight into Arrow
//!   builders (see [`types`] for the type mapping).
//! * `partitions: N` reads N key ranges over N connections that share ONE snapshot
//!   (`pg_export_snapshot()` + `SET TRANSACTION SNAPSHOT`); their batches are interleaved.
//! * Incremental (`cursor:`): each run reads rows with a cursor above the committed one, up to
//!   the highest cursor of its snapshot; `lookback` re-reads a window below it for late
//!   commits and skips rows already delivered (by primary key and cursor).
//! * Full refresh: everything, every run, ordered by `partition_column` or the single-column
//!   primary key.
//! * Exactly once: every read is ordered by its key and batches end only between distinct key
//!   values, so the state after any batch says precisely what was delivered; an interrupted
//!   run (crash, `pg_terminate_backend`, a dropped connection) resumes after its last commit.
//!   Rows whose cursor is NULL are not read incrementally.

mod config;
mod copy;
mod reader;
pub mod types;

pub use config::{NumericConfig, PostgresReaderConfig, ReadMode, SpecialValues, SslMode};
pub use dativo_pg::{connect_url, map_error, runtime};
pub use reader::PostgresReader;
