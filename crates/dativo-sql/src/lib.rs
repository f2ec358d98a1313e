//! dativo's SQL database readers: `postgres` (binary COPY) and `mysql` (MySQL and MariaDB).
//!
//! Both read a table (or a query) in key order, in batches that end only between distinct key
//! values, so the state after any batch says exactly what was delivered. [`keyset`] is the one
//! SQL source both are: discovery, key choice, split points for parallel snapshot reads, the
//! incremental cursor with its lookback window, the state and the config checks, over a small
//! [`keyset::Dialect`] trait that each database implements.

#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod cdc;
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub mod keyset;
#[cfg(feature = "mysql")]
pub mod mysql;
#[cfg(feature = "postgres")]
pub mod postgres;
