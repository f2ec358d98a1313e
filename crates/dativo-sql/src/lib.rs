//! dativo's SQL database readers: `postgres` (binary COPY) and `mysql` (MySQL and MariaDB).
//!
//! Both read a table (or a query) in key order, in batches that end only between distinct key
//! values, so the state after any batch says exactly what was delivered. [`keyset`] holds what
//! they share: key choice, split points for parallel snapshot reads, the incremental cursor with
//! its lookback window, and the SQL each plan runs.

#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod keyset;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
