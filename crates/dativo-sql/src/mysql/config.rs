//! `mysql` reader configuration (MySQL and MariaDB).

use serde::Deserialize;

use dativo_core::config::{ByteSize, DurationValue};
use dativo_core::{Error, Result};

pub use crate::postgres::{ReadMode, SslMode};

/// `source.config` of `reader: mysql`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MySqlReaderConfig {
    /// `mysql://user:password@host:3306/database`; or use the fields below.
    #[serde(default)]
    pub url: Option<String>,
    /// Host (default 127.0.0.1).
    #[serde(default)]
    pub host: Option<String>,
    /// Port (default 3306).
    #[serde(default)]
    pub port: Option<u16>,
    /// User.
    #[serde(default)]
    pub user: Option<String>,
    /// Password; use `${env:…}` or `${file:…}`.
    #[serde(default)]
    pub password: Option<String>,
    /// Database.
    #[serde(default)]
    pub database: Option<String>,
    /// `disable`/`prefer` (no TLS), `require` (TLS, no verification), `verify-ca`,
    /// `verify-full`.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// PEM file of trusted roots for `verify-ca` / `verify-full`.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Connection timeout.
    #[serde(default)]
    pub connect_timeout: Option<DurationValue>,
    /// A table (`db.table` or `table`) — or use `query`.
    #[serde(default)]
    pub table: Option<String>,
    /// Columns of `table` (default all).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// A filter on `table`, as SQL.
    #[serde(rename = "where", default)]
    pub where_clause: Option<String>,
    /// A query to read instead of a table.
    #[serde(default)]
    pub query: Option<String>,
    /// Rows per batch (batches end between distinct key values).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Bytes per batch (default 32MiB, at most 1GiB): a batch ends at the first key change
    /// after `batch_size` rows or `batch_bytes`.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: ByteSize,
    /// Incremental column.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Re-read this far below the committed cursor (`10m`, or a number); needs a primary key.
    #[serde(default)]
    pub lookback: Option<serde_json::Value>,
    /// Primary key columns (found from the table when absent).
    #[serde(default)]
    pub primary_key: Option<Vec<String>>,
    /// `incremental` (default with `cursor`) or `full_refresh`.
    #[serde(default)]
    pub mode: Option<ReadMode>,
    /// Parallel connections reading one consistent snapshot.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Numeric, date or datetime column to split on (default: the cursor, else the
    /// single-column primary key).
    #[serde(default)]
    pub partition_column: Option<String>,
    /// Lower bound of `partition_column` (default: its minimum).
    #[serde(default)]
    pub lower_bound: Option<serde_json::Value>,
    /// Upper bound of `partition_column` (default: its maximum).
    #[serde(default)]
    pub upper_bound: Option<serde_json::Value>,
    /// Read columns of types without a native mapping as text instead of failing.
    #[serde(default)]
    pub cast_unsupported_to_text: bool,
}

fn default_batch_size() -> usize {
    16_384
}
fn default_batch_bytes() -> ByteSize {
    ByteSize(crate::keyset::DEFAULT_BATCH_BYTES)
}
fn default_partitions() -> u32 {
    1
}

impl MySqlReaderConfig {
    /// Checks that need no I/O.
    pub fn check(&self) -> Result<()> {
        let key = |k: &str, m: &str| Err(Error::config(m.to_string()).with_key_path(k));
        match (&self.table, &self.query) {
            (None, None) => return key("table", "set `table` or `query`"),
            (Some(_), Some(_)) => return key("query", "set either `table` or `query`, not both"),
            (None, Some(_)) if self.columns.is_some() || self.where_clause.is_some() => {
                return key(
                    "query",
                    "`columns` and `where` apply to `table`; write them in `query`",
                )
            }
            _ => {}
        }
        if self.url.is_none() && self.host.is_none() && self.database.is_none() {
            return key(
                "url",
                "set `url` (mysql://user@host:3306/db) or `host` and `database`",
            );
        }
        if let Some(u) = &self.url {
            if !(u.starts_with("mysql://") || u.starts_with("mariadb://")) {
                return key("url", "must start with mysql:// (or mariadb://)");
            }
        }
        dativo_core::config::check_batch_size("batch_size", self.batch_size)?;
        if self.partitions == 0 || self.partitions > 64 {
            return key("partitions", "must be between 1 and 64");
        }
        if self.mode == Some(ReadMode::Incremental) && self.cursor.is_none() {
            return key("mode", "`mode: incremental` needs `cursor`");
        }
        if self.lookback.is_some() && self.cursor.is_none() {
            return key("lookback", "`lookback` needs `cursor`");
        }
        Ok(())
    }

    /// The effective mode.
    pub fn mode(&self) -> ReadMode {
        self.mode.unwrap_or(if self.cursor.is_some() {
            ReadMode::Incremental
        } else {
            ReadMode::FullRefresh
        })
    }
}
