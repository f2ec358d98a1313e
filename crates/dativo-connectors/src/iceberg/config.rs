//! `iceberg` writer configuration.

use std::collections::BTreeMap;

use serde::Deserialize;

use dativo_core::config::ByteSize;
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
    /// Where new tables' files go: a local directory (default `warehouse`) or `s3://bucket/prefix`.
    #[serde(default)]
    pub warehouse: Option<String>,
    /// Partition spec: `region` (identity), `day(ts)`, `month(ts)`, `year(ts)`, `hour(ts)`,
    /// `bucket(16, id)`, `truncate(4, sku)`. Used when the table is created.
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// `append` (default). `overwrite` is refused: iceberg-rust 0.10 cannot commit it atomically.
    #[serde(default)]
    pub mode: WriteMode,
    /// Parquet compression: `zstd` (default), `snappy`, `lz4`, `none`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// Rows per Parquet row group; each open data file buffers one row group, so this bounds
    /// the writer's memory (iceberg-rust flushes by rows only).
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,
    /// Data files roll over at this size.
    #[serde(default = "default_file_size")]
    pub target_file_size: ByteSize,
    /// S3 settings for an `s3://` warehouse.
    #[serde(default)]
    pub s3: Option<dativo_storage::S3Config>,
    /// Extra table properties set when the table is created.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Client-side encryption of the data files: Parquet Modular Encryption (`format: parquet`,
    /// the only format here — Iceberg data files must stay Parquet).
    #[serde(default)]
    pub encryption: Option<dativo_encryption::EncryptionConfig>,
}

/// How batches land in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WriteMode {
    /// Add the new rows.
    #[default]
    Append,
    /// Replace the table's rows (not supported yet).
    Overwrite,
}

/// `catalog:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// `sql` (SQLite or PostgreSQL, the default) or `rest` (an Iceberg REST catalog).
    #[serde(rename = "type", default = "default_catalog_type")]
    pub kind: String,
    /// `sql`: `sqlite://path/catalog.db` (default `sqlite://.dativo/catalog.db`) or
    /// `postgres://user:pw@host/db`. `rest`: the catalog's base URL (`https://host/catalog`).
    #[serde(default)]
    pub uri: Option<String>,
    /// `rest`: a bearer token (use `${env:…}`).
    #[serde(default)]
    pub token: Option<String>,
    /// `rest`: OAuth2 client credentials `client_id:client_secret` (use `${env:…}`).
    #[serde(default)]
    pub credential: Option<String>,
    /// The catalog name, stored in every catalog row: readers (pyiceberg, Spark) must use the
    /// same name.
    #[serde(default = "default_catalog_name")]
    pub name: String,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            kind: default_catalog_type(),
            uri: None,
            token: None,
            credential: None,
            name: default_catalog_name(),
        }
    }
}

fn default_catalog_type() -> String {
    "sql".into()
}
fn default_catalog_name() -> String {
    "dativo".into()
}
fn default_compression() -> String {
    "zstd".into()
}
fn default_row_group_size() -> usize {
    131_072
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
        if self.mode == WriteMode::Overwrite {
            return key(
                "mode",
                "`overwrite` is not supported yet: iceberg-rust 0.10 has no atomic overwrite; use `append`".into(),
            );
        }
        match (self.catalog.kind.as_str(), &self.catalog.uri) {
            ("sql", Some(u))
                if !(u.starts_with("sqlite:")
                    || u.starts_with("postgres://")
                    || u.starts_with("postgresql://")) =>
            {
                return key(
                    "catalog.uri",
                    "use sqlite://path/catalog.db or postgres://…".into(),
                );
            }
            ("sql", _) => {}
            ("rest", Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {}
            ("rest", _) => {
                return key(
                    "catalog.uri",
                    "a REST catalog needs `uri: https://…`".into(),
                );
            }
            (other, _) => {
                return key(
                    "catalog.type",
                    format!("unknown catalog type `{other}`: use `sql` or `rest`"),
                )
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
        crate::parquet::parse_compression(&self.compression)
            .map_err(|e| Error::config(e.message().to_string()).with_key_path("compression"))?;
        for (i, p) in self.partition_by.iter().enumerate() {
            super::writer::parse_partition(p)
                .map_err(|m| Error::config(m).with_key_path(format!("partition_by[{i}]")))?;
        }
        Ok(())
    }
}
