//! `postgres` reader configuration.

use serde::Deserialize;

use dativo_core::config::{ByteSize, DurationValue};
use dativo_core::{Error, Result};

pub use dativo_pg::SslMode;

/// How an unconstrained `numeric` column (no precision/scale) is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NumericConfig {
    /// Precision of the decimal used for unconstrained numerics (1..=38).
    #[serde(default = "default_precision")]
    pub precision: u8,
    /// Scale of the decimal used for unconstrained numerics.
    #[serde(default = "default_scale")]
    pub scale: i8,
    /// Read unconstrained numerics as exact decimal strings instead.
    #[serde(default)]
    pub as_string: bool,
}

impl Default for NumericConfig {
    fn default() -> Self {
        NumericConfig {
            precision: default_precision(),
            scale: default_scale(),
            as_string: false,
        }
    }
}

fn default_precision() -> u8 {
    38
}
fn default_scale() -> i8 {
    10
}

/// `source.config` of `reader: postgres`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresReaderConfig {
    /// `postgres://user:password@host:port/database?sslmode=…`; or use the fields below.
    #[serde(default)]
    pub url: Option<String>,
    /// Host (default 127.0.0.1).
    #[serde(default)]
    pub host: Option<String>,
    /// Port (default 5432).
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
    /// TLS mode (overrides the URL's `sslmode`).
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// PEM file of trusted roots for `verify-ca` / `verify-full`.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// Connection timeout.
    #[serde(default)]
    pub connect_timeout: Option<DurationValue>,

    /// A table (`schema.table` or `table`) — or use `query`.
    #[serde(default)]
    pub table: Option<String>,
    /// Columns of `table` to read (default all).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// A filter on `table`, as SQL (`status <> 'draft'`).
    #[serde(rename = "where", default)]
    pub where_clause: Option<String>,
    /// A query to read instead of a table.
    #[serde(default)]
    pub query: Option<String>,

    /// Rows per batch (batches end between distinct values of the ordering column, so a batch
    /// may be longer when many rows share one value).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Bytes per batch (default 32MiB, at most 1GiB), counted as the values' sizes on the
    /// wire: a batch ends at the first key change after `batch_size` rows or `batch_bytes`.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: ByteSize,

    /// Incremental column: each run reads rows with a cursor above the committed state.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Re-read this far below the committed cursor, to catch late-committing transactions;
    /// rows already delivered are skipped by `primary_key` (required with `lookback`).
    /// A duration for time cursors (`10m`), a number for numeric cursors.
    #[serde(default)]
    pub lookback: Option<serde_json::Value>,
    /// Primary key columns (for `lookback` de-duplication; the ordering column of a full
    /// refresh when it is a single column). Found from the table when absent.
    #[serde(default)]
    pub primary_key: Option<Vec<String>>,
    /// `incremental` (the default when `cursor` is set) or `full_refresh`.
    #[serde(default)]
    pub mode: Option<ReadMode>,

    /// Parallel connections, reading one consistent snapshot.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Numeric, date or timestamp column to split the read on (default: the cursor, else the
    /// single-column primary key).
    #[serde(default)]
    pub partition_column: Option<String>,
    /// Lower bound of `partition_column` (default: its minimum in the snapshot).
    #[serde(default)]
    pub lower_bound: Option<serde_json::Value>,
    /// Upper bound of `partition_column` (default: its maximum in the snapshot).
    #[serde(default)]
    pub upper_bound: Option<serde_json::Value>,

    /// How unconstrained `numeric` columns are read.
    #[serde(default)]
    pub numeric: NumericConfig,
    /// Read columns of types without a native mapping as text (`::text`) instead of failing.
    #[serde(default)]
    pub cast_unsupported_to_text: bool,
    /// Values Arrow cannot hold — numeric `NaN`/`±Infinity`, date and timestamp `±infinity`:
    /// `error` (default: the run fails naming the column) or `as_null`.
    #[serde(default)]
    pub special_values: SpecialValues,
}

/// What to do with values Arrow cannot represent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpecialValues {
    /// Fail, naming the column and row.
    #[default]
    Error,
    /// Read them as NULL (`as_null`).
    #[serde(rename = "as_null", alias = "null")]
    Null,
}

/// Full refresh or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Only rows past the committed cursor.
    Incremental,
    /// Everything, every run.
    FullRefresh,
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

impl PostgresReaderConfig {
    /// Checks that need no I/O.
    pub fn check(&self) -> Result<()> {
        let key = |k: &str, m: &str| Err(Error::config(m.to_string()).with_key_path(k));
        match (&self.table, &self.query) {
            (None, None) => return key("table", "set `table` or `query`"),
            (Some(_), Some(_)) => return key("query", "set either `table` or `query`, not both"),
            (None, Some(_)) if self.columns.is_some() => {
                return key(
                    "columns",
                    "`columns` applies to `table`; select them in `query`",
                )
            }
            (None, Some(_)) if self.where_clause.is_some() => {
                return key("where", "`where` applies to `table`; filter in `query`")
            }
            _ => {}
        }
        if self.url.is_none() && self.host.is_none() && self.database.is_none() {
            return key(
                "url",
                "set `url` (postgres://user@host:5432/db) or `host` and `database`",
            );
        }
        if let Some(u) = &self.url {
            if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
                return key("url", "must start with postgres:// or postgresql://");
            }
        }
        dativo_core::config::check_batch_size("batch_size", self.batch_size)?;
        if self.partitions == 0 || self.partitions > 64 {
            return key("partitions", "must be between 1 and 64");
        }
        if self.mode == Some(ReadMode::Incremental) && self.cursor.is_none() {
            return key("mode", "`mode: incremental` needs `cursor`");
        }
        if self.lookback.is_some() {
            if self.cursor.is_none() {
                return key("lookback", "`lookback` needs `cursor`");
            }
            if self.primary_key.is_none() && self.table.is_none() {
                return key(
                    "primary_key",
                    "`lookback` needs `primary_key` to skip rows already delivered",
                );
            }
        }
        if self.numeric.precision == 0
            || self.numeric.precision > 38
            || self.numeric.scale < 0
            || self.numeric.scale as u8 > self.numeric.precision
        {
            return key(
                "numeric",
                "precision must be 1..=38 and 0 <= scale <= precision",
            );
        }
        for c in self.columns.iter().flatten() {
            if c.is_empty() {
                return key("columns", "column names must not be empty");
            }
        }
        Ok(())
    }

    /// The connection keys, for [`dativo_pg::connect`].
    pub fn connection(&self) -> dativo_pg::PgConnection {
        dativo_pg::PgConnection {
            url: self.url.clone(),
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            database: self.database.clone(),
            sslmode: self.sslmode,
            sslrootcert: self.sslrootcert.clone(),
            connect_timeout: self.connect_timeout.as_ref().map(|d| d.0),
        }
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
