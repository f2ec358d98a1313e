//! `reader: mysql` — tables or queries from MySQL and MariaDB, exactly once.
//!
//! The same options as `postgres` where they apply: `table`/`columns`/`where` or `query`,
//! `batch_size`, `cursor` incremental with `lookback` de-duplicated on the primary key, full
//! refresh, and `partitions: N` over N connections that start one consistent snapshot together
//! (`START TRANSACTION WITH CONSISTENT SNAPSHOT` while the source is briefly read-locked).
//! Rows come over the binary protocol of prepared statements; the session runs in UTC.
//! Reads are ordered by their key and batches end between distinct key values, so a run
//! interrupted at any point resumes after its last committed batch (see [`crate::keyset`],
//! which plans; this module is the MySQL [`Dialect`](crate::keyset::Dialect)).

pub mod cdc;
mod dialect;
pub mod types;

pub use dialect::{map_error, MySql, MySqlOptions};

/// Reads a table or query from MySQL or MariaDB: [`SqlSource::open`](crate::keyset::SqlSource::open)
/// returns it ready, [`SqlSource::validate`](crate::keyset::SqlSource::validate) checks a
/// config without I/O.
pub type MySqlReader = crate::keyset::SqlSource<MySql>;
