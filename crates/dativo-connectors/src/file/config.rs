//! `file` reader configuration.

use serde::Deserialize;

use dativo_core::schema_spec::ColumnSpec;

/// File formats the `file` reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Comma-separated values with a header row (delimiter configurable).
    Csv,
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

impl FileFormat {
    /// The format implied by a file name's extension.
    pub fn from_path(path: &str) -> Option<FileFormat> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".csv") || lower.ends_with(".tsv") {
            Some(FileFormat::Csv)
        } else if lower.ends_with(".jsonl")
            || lower.ends_with(".ndjson")
            || lower.ends_with(".json")
        {
            Some(FileFormat::Jsonl)
        } else if lower.ends_with(".parquet") || lower.ends_with(".parq") {
            Some(FileFormat::Parquet)
        } else {
            None
        }
    }
}

/// `source.config` of `reader: file`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReaderConfig {
    /// A file, or a glob (`data/*.csv`, `logs/**/*.jsonl`, `s3://bucket/landing/*.csv`).
    /// Local paths are relative to the working directory.
    pub path: String,
    /// `csv`, `jsonl` or `parquet`; by default from the extension of `path`.
    #[serde(default)]
    pub format: Option<FileFormat>,
    /// Rows per batch.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The columns and their types; inferred from the first file when absent.
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
    /// Rows read to infer the schema of CSV and JSON Lines files.
    #[serde(default = "default_infer_rows")]
    pub infer_rows: usize,
    /// `true` (default): remember which files were loaded and read only new ones next run.
    /// `false`: read every matching file every run.
    #[serde(default = "default_true")]
    pub incremental: bool,
    /// CSV options.
    #[serde(default)]
    pub csv: CsvOptions,
    /// S3 settings when `path` is `s3://bucket/…`.
    #[serde(default)]
    pub s3: Option<crate::storage::S3Config>,
    /// Google Cloud Storage settings when `path` is `gs://bucket/…`.
    #[serde(default)]
    pub gcs: Option<crate::storage::GcsConfig>,
    /// Azure Blob Storage settings when `path` is `az://container/…`.
    #[serde(default)]
    pub azure: Option<crate::storage::AzureConfig>,
}

/// CSV dialect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsvOptions {
    /// Field delimiter (one character); `\t` for TSV.
    pub delimiter: char,
    /// Whether the first line holds column names.
    pub header: bool,
    /// Quote character.
    pub quote: char,
    /// Escape character inside quoted fields, if any.
    pub escape: Option<char>,
    /// A regular expression matching values read as NULL; by default only empty fields.
    pub null_regex: Option<String>,
}

impl Default for CsvOptions {
    fn default() -> Self {
        CsvOptions {
            delimiter: ',',
            header: true,
            quote: '"',
            escape: None,
            null_regex: None,
        }
    }
}

fn default_batch_size() -> usize {
    65_536
}
fn default_infer_rows() -> usize {
    10_000
}
fn default_true() -> bool {
    true
}
