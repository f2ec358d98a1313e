//! `postgres` reader configuration: PostgreSQL's type options, beside the connection keys and
//! the keys every SQL reader shares ([`crate::keyset::SqlConfig`]).

use serde::Deserialize;

use dativo_core::{Error, Result};

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

/// The `postgres` reader's own `source.config` keys (beside the connection keys and the ones
/// every SQL reader has).
#[derive(Debug, Clone, Deserialize)]
pub struct PgOptions {
    /// How unconstrained `numeric` columns are read.
    #[serde(default)]
    pub numeric: NumericConfig,
    /// Values Arrow cannot hold — numeric `NaN`/`±Infinity`, date and timestamp `±infinity`:
    /// `error` (default: the run fails naming the column) or `as_null`.
    #[serde(default)]
    pub special_values: SpecialValues,
    /// Read in a snapshot another session exported (`pg_export_snapshot()`, a replication
    /// slot's `EXPORT_SNAPSHOT`) instead of taking one; that session must stay open. The
    /// `cdc` mode sets it for its initial snapshot.
    #[serde(default)]
    pub snapshot: Option<String>,
}

impl PgOptions {
    /// Checks that need no I/O.
    pub fn check(&self) -> Result<()> {
        let n = &self.numeric;
        if n.precision == 0 || n.precision > 38 || n.scale < 0 || n.scale as u8 > n.precision {
            return Err(
                Error::config("precision must be 1..=38 and 0 <= scale <= precision")
                    .with_key_path("numeric"),
            );
        }
        Ok(())
    }
}
