//! The `adbc` reader's and writer's configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

use dativo_core::secrets::Secret;

/// `source.config` of the `adbc` reader.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdbcReaderConfig {
    /// Path of the ADBC driver shared library.
    pub driver: String,
    /// The database URI (`postgresql://user@host/db`, `file:/path/db.sqlite`); may hold a
    /// password, so it is treated as a secret.
    pub uri: Secret,
    /// Extra database options (`adbc.postgresql.batch_size_hint_bytes: "16777216"` …).
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// A SQL query. One of `query` or `table`.
    #[serde(default)]
    pub query: Option<String>,
    /// A table (`schema.table`). One of `query` or `table`.
    #[serde(default)]
    pub table: Option<String>,
    /// An increasing, unique column to read incrementally by.
    #[serde(default)]
    pub cursor: Option<String>,
}

/// `target.config` of the `adbc` writer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdbcWriterConfig {
    /// Path of the ADBC driver shared library.
    pub driver: String,
    /// The database URI; may hold a password, so it is treated as a secret.
    pub uri: Secret,
    /// Extra database options.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// The table to append to; created from the Arrow schema when missing.
    pub table: String,
    /// Where the committed state lives, in the same database and transaction as the data.
    #[serde(default = "default_state_table")]
    pub state_table: String,
}

fn default_state_table() -> String {
    "_dativo_state".into()
}
