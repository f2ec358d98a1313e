//! `file` reader configuration.

use serde::Deserialize;

use dativo_core::schema_spec::ColumnSpec;

/// File formats the `file` reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    /// Delimiter-separated values with a header row: commas, or tabs for `.tsv`/`.tab` files
    /// (the delimiter is configurable).
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
        if lower.ends_with(".csv") || is_tab_separated(&lower) {
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

/// Whether a (lowercase) file name says tab-separated values.
fn is_tab_separated(lower: &str) -> bool {
    lower.ends_with(".tsv") || lower.ends_with(".tab")
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
    pub s3: Option<dativo_storage::S3Config>,
    /// Google Cloud Storage settings when `path` is `gs://bucket/…`.
    #[serde(default)]
    pub gcs: Option<dativo_storage::GcsConfig>,
    /// Azure Blob Storage settings when `path` is `az://container/…`.
    #[serde(default)]
    pub azure: Option<dativo_storage::AzureConfig>,
}

/// CSV dialect.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CsvOptions {
    /// Field delimiter (one character). Unset: a tab for `.tsv` and `.tab` files, else a comma
    /// (see [`CsvOptions::delimiter_for`]).
    pub delimiter: Option<char>,
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
            delimiter: None,
            header: true,
            quote: '"',
            escape: None,
            null_regex: None,
        }
    }
}

impl CsvOptions {
    /// The delimiter of `file`: the configured one, else a tab for a `.tsv` or `.tab` name, else
    /// a comma. Decided per file, so a glob over both kinds reads each correctly.
    pub fn delimiter_for(&self, file: &str) -> char {
        match self.delimiter {
            Some(d) => d,
            None if is_tab_separated(&file.to_ascii_lowercase()) => '\t',
            None => ',',
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
