//! `iceberg` writer configuration.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

use crate::parquet::Codec;
use dativo_core::config::ByteSize;
use dativo_core::secrets::Secret;
use dativo_core::{Error, Result};

/// `target.config` of `writer: iceberg`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcebergWriterConfig {
    /// `namespace.table` (the namespace may have several levels: `a.b.table`).
    pub table: String,
    /// The catalog; by default the embedded SQL catalog on SQLite (`.dativo/catalog.db`).
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// Where new tables' files go: a local directory (default `warehouse`), `s3://bucket/prefix`,
    /// `gs://bucket/prefix` or `abfss://container@account.dfs.core.windows.net/prefix`
    /// (`az://container/prefix` is written as the latter).
    #[serde(default)]
    pub warehouse: Option<String>,
    /// Partition spec: `region` (identity), `day(ts)`, `month(ts)`, `year(ts)`, `hour(ts)`,
    /// `bucket(16, id)`, `truncate(4, sku)`. Used when the table is created.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// `append`, `overwrite` or `merge`. Unset: `overwrite` when the reader delivers the
    /// whole source in each run (a full refresh), else `append`.
    #[serde(default)]
    pub mode: Option<WriteMode>,
    /// With `mode: overwrite`: `table` (default) replaces every row; `partitions` replaces
    /// only the partitions this run wrote rows into.
    #[serde(default)]
    pub overwrite: OverwriteScope,
    /// With `mode: merge`: the key a row is identified by. Default: the source's primary key.
    #[serde(default)]
    pub primary_key: Option<Vec<String>>,
    /// With `mode: merge`: source rows to treat as deletions (soft deletes): a boolean column
    /// (`is_deleted`), `column IS NOT NULL` (`deleted_at IS NOT NULL`), or `column = literal`
    /// / `column != literal` (`status = 'deleted'`). Matching rows delete their key and are
    /// not written.
    #[serde(default)]
    pub delete_when: Option<String>,
    /// Parquet compression: `zstd` (default), `zstd(LEVEL)`, `snappy`, `lz4`, `none`.
    #[serde(default = "default_compression")]
    pub compression: Codec,
    /// Maximum rows per Parquet row group.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,
    /// A row group is also closed once this much encoded data is buffered: each open data
    /// file (one per partition being written) buffers one row group, so this bounds the
    /// writer's memory.
    #[serde(default = "default_row_group_bytes")]
    pub row_group_bytes: ByteSize,
    /// Data files roll over at this size.
    #[serde(default = "default_file_size")]
    pub target_file_size: ByteSize,
    /// S3 settings for an `s3://` warehouse.
    #[serde(default)]
    pub s3: Option<dativo_storage::S3Config>,
    /// Google Cloud Storage settings for a `gs://` warehouse.
    #[serde(default)]
    pub gcs: Option<dativo_storage::GcsConfig>,
    /// Azure Blob Storage settings for an `abfss://container@account.dfs.core.windows.net/…`
    /// (or `az://container/…`) warehouse.
    #[serde(default)]
    pub azure: Option<dativo_storage::AzureConfig>,
    /// Extra table properties set when the table is created.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Client-side encryption of the data files: Parquet Modular Encryption (`format: parquet`,
    /// the only format here — Iceberg data files must stay Parquet).
    #[serde(default)]
    pub encryption: Option<dativo_encryption::EncryptionConfig>,
}

/// How batches land in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Add the new rows.
    Append,
    /// Replace the table's rows (or partitions) with the run's, atomically, in one commit.
    Overwrite,
    /// Upsert by key: a row whose key exists replaces it; deletions remove their key.
    Merge,
}

impl std::fmt::Display for WriteMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteMode::Append => "append",
            WriteMode::Overwrite => "overwrite",
            WriteMode::Merge => "merge",
        })
    }
}

/// What `mode: overwrite` replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OverwriteScope {
    /// Every row of the table.
    #[default]
    Table,
    /// The partitions the run wrote rows into.
    Partitions,
}

/// `catalog:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// `sql` (SQLite or PostgreSQL, the default) or `rest` (an Iceberg REST catalog).
    #[serde(rename = "type", default)]
    pub kind: CatalogKind,
    /// `sql`: `sqlite://path/catalog.db` (default `sqlite://.dativo/catalog.db`) or
    /// `postgres://user:pw@host/db`. `rest`: the catalog's base URL (`https://host/catalog`).
    #[serde(default)]
    pub uri: Option<CatalogUri>,
    /// `rest`: a bearer token (use `${env:…}`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// `rest`: OAuth2 client credentials `client_id:client_secret` (use `${env:…}`).
    #[serde(default)]
    pub credential: Option<Secret>,
    /// The catalog name, stored in every catalog row: readers (pyiceberg, Spark) must use the
    /// same name.
    #[serde(default = "default_catalog_name")]
    pub name: String,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            kind: CatalogKind::Sql,
            uri: None,
            token: None,
            credential: None,
            name: default_catalog_name(),
        }
    }
}

/// The kind of Iceberg catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CatalogKind {
    /// iceberg-rust's SQL catalog, on SQLite or PostgreSQL.
    #[default]
    Sql,
    /// An Iceberg REST catalog.
    Rest,
}

impl<'de> Deserialize<'de> for CatalogKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "sql" => Ok(CatalogKind::Sql),
            "rest" => Ok(CatalogKind::Rest),
            other => Err(serde::de::Error::custom(format!(
                "unknown catalog type `{other}`: use `sql` or `rest`"
            ))),
        }
    }
}

/// A catalog URI, by scheme. A PostgreSQL URI may carry a password, so it is a [`Secret`];
/// a SQLite path and a REST base URL are shown in messages as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogUri {
    /// `sqlite:path` or `sqlite://path`.
    Sqlite(String),
    /// `postgres://…` or `postgresql://…`.
    Postgres(Secret),
    /// `http://…` or `https://…` (a REST catalog).
    Http(String),
    /// Anything else (refused by [`IcebergWriterConfig::check`]).
    Other(String),
}

impl CatalogUri {
    /// Classify `s` by its scheme.
    pub fn parse(s: &str) -> CatalogUri {
        if s.starts_with("sqlite:") {
            CatalogUri::Sqlite(s.to_string())
        } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            CatalogUri::Postgres(Secret::new(s))
        } else if s.starts_with("http://") || s.starts_with("https://") {
            CatalogUri::Http(s.to_string())
        } else {
            CatalogUri::Other(s.to_string())
        }
    }

    /// The URI, to hand to the catalog (never log a `Postgres` one: it may hold a password).
    pub fn expose(&self) -> &str {
        match self {
            CatalogUri::Sqlite(s) | CatalogUri::Http(s) | CatalogUri::Other(s) => s,
            CatalogUri::Postgres(s) => s.expose(),
        }
    }
}

impl<'de> Deserialize<'de> for CatalogUri {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        String::deserialize(d).map(|s| CatalogUri::parse(&s))
    }
}

fn default_catalog_name() -> String {
    "dativo".into()
}
fn default_compression() -> Codec {
    Codec::Zstd(None)
}
fn default_row_group_size() -> usize {
    1 << 20
}
fn default_row_group_bytes() -> ByteSize {
    ByteSize(16 << 20)
}
fn default_file_size() -> ByteSize {
    ByteSize(512 << 20)
}

impl IcebergWriterConfig {
    /// Checks that need no I/O.
    pub fn check(&self) -> Result<()> {
        let key = |k: &str, m: String| Err(Error::config(m).with_key_path(k));
        if self.table.split('.').count() < 2 || self.table.split('.').any(str::is_empty) {
            return key(
                "table",
                format!("`{}`: write it as namespace.table", self.table),
            );
        }
        if self.overwrite == OverwriteScope::Partitions && self.mode != Some(WriteMode::Overwrite) {
            return key(
                "overwrite",
                "`overwrite: partitions` applies to `mode: overwrite` only".into(),
            );
        }
        if self.mode != Some(WriteMode::Merge) {
            if self.primary_key.is_some() {
                return key(
                    "primary_key",
                    "`primary_key` applies to `mode: merge` only".into(),
                );
            }
            if self.delete_when.is_some() {
                return key(
                    "delete_when",
                    "`delete_when` applies to `mode: merge` only".into(),
                );
            }
        }
        if let Some(pk) = &self.primary_key {
            if pk.is_empty() || pk.iter().any(|c| c.trim().is_empty()) {
                return key("primary_key", "list the key columns, e.g. `[id]`".into());
            }
        }
        if let Some(w) = &self.delete_when {
            super::modes::DeleteWhen::parse(w)
                .map_err(|m| Error::config(m).with_key_path("delete_when"))?;
        }
        match (self.catalog.kind, &self.catalog.uri) {
            (CatalogKind::Sql, Some(CatalogUri::Http(_) | CatalogUri::Other(_))) => {
                return key(
                    "catalog.uri",
                    "use sqlite://path/catalog.db or postgres://…".into(),
                );
            }
            (CatalogKind::Sql, _) | (CatalogKind::Rest, Some(CatalogUri::Http(_))) => {}
            (CatalogKind::Rest, _) => {
                return key(
                    "catalog.uri",
                    "a REST catalog needs `uri: https://…`".into(),
                );
            }
        }
        if let Some(enc) = &self.encryption {
            enc.check()?;
            if enc.format == Some(dativo_encryption::EncFormat::Stream) {
                return key(
                    "encryption.format",
                    "Iceberg data files must stay Parquet: use `format: parquet` (Parquet Modular Encryption)".into(),
                );
            }
            if !self.partition_by.is_empty() {
                return key(
                    "partition_by",
                    "partition values become directory names in plaintext; with `encryption` leave `partition_by` out".into(),
                );
            }
        }
        for (i, p) in self.partition_by.iter().enumerate() {
            super::writer::parse_partition(p)
                .map_err(|m| Error::config(m).with_key_path(format!("partition_by[{i}]")))?;
        }
        Ok(())
    }
}
