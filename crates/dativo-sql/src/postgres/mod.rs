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
//!
//! Planning, the state and the shared keys are [`crate::keyset`]'s; this module is the
//! PostgreSQL [`Dialect`](crate::keyset::Dialect).

pub mod cdc;
mod config;
mod copy;
mod dialect;
pub mod types;

pub use config::{NumericConfig, PgOptions, SpecialValues};
pub use dialect::Postgres;

/// Reads a table or query from PostgreSQL: [`SqlSource::open`](crate::keyset::SqlSource::open)
/// returns it ready, [`SqlSource::validate`](crate::keyset::SqlSource::validate) checks a
/// config without I/O.
pub type PostgresReader = crate::keyset::SqlSource<Postgres>;
