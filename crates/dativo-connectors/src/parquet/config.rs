//! `parquet` writer configuration.

use std::fmt;

use parquet::basic::{Compression, ZstdLevel};
use serde::{Deserialize, Deserializer};

use dativo_core::config::{ByteSize, DurationValue};
use dativo_core::{Error, Result};

/// `target.config` of `writer: parquet`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetWriterConfig {
    /// The directory that receives the Parquet files (created if missing).
    pub path: String,
    /// `snappy` (default), `zstd`, `zstd(LEVEL)`, `lz4` or `none`.
    #[serde(default = "default_compression")]
    pub compression: Codec,
    /// Maximum rows per row group.
    #[serde(default = "default_row_group_size")]
    pub row_group_size: usize,
    /// A row group is also closed once this much encoded data is buffered; bounds memory.
    #[serde(default = "default_row_group_bytes")]
    pub row_group_bytes: ByteSize,
    /// Threads that encode a row group's columns (dictionaries, statistics, compression) at
    /// the same time; unset: one per core beyond the first two, at most 4 (so 1 on a 2-core
    /// machine, where the source database needs the other core). 1 encodes on the writer's
    /// thread alone.
    #[serde(default)]
    pub encode_threads: Option<usize>,
    /// A new file is started once the current one reaches this size.
    #[serde(default = "default_target_file_size")]
    pub target_file_size: ByteSize,
    /// Data file names start with this (`part-<uuid>.parquet`).
    #[serde(default = "default_prefix")]
    pub file_prefix: String,
    /// Hive-style partition columns: files go to `col=value/…` directories and the columns are
    /// left out of the files (DuckDB `hive_partitioning`, pyarrow `partitioning="hive"`).
    #[serde(default)]
    pub partition_by: Vec<String>,
    /// S3 settings for an `s3://bucket/prefix` path.
    #[serde(default)]
    pub s3: Option<dativo_storage::S3Config>,
    /// Google Cloud Storage settings for `gs://bucket/prefix`.
    #[serde(default)]
    pub gcs: Option<dativo_storage::GcsConfig>,
    /// Azure Blob Storage settings for `az://container/prefix` (or `abfss://container@account.dfs.core.windows.net/prefix`).
    #[serde(default)]
    pub azure: Option<dativo_storage::AzureConfig>,
    /// Client-side encryption: files are encrypted as they stream out (format `stream`, the
    /// default, or `parquet` for Parquet Modular Encryption).
    #[serde(default)]
    pub encryption: Option<dativo_encryption::EncryptionConfig>,
    /// On object stores, how long the writer's lease on the prefix lasts unless renewed (it is
    /// renewed every third of this): a run killed on another machine blocks the next run of
    /// the job for at most this long. Default 60s.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: DurationValue,
    /// `append` (each run adds its rows) or `overwrite` (a run's rows replace everything
    /// committed to the directory before, in one commit at end of stream). Unset: `overwrite`
    /// when the source delivers all of its rows in every run (a full refresh) and the job is
    /// not split into shards, else `append` (see [`ParquetWriteMode::resolve`]).
    #[serde(default)]
    pub mode: Option<ParquetWriteMode>,
}

/// How a run's rows land in the directory (`mode:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetWriteMode {
    /// Each run adds its files beside the ones committed before.
    Append,
    /// A run's files replace every file committed before, in one commit at end of stream.
    Overwrite,
}

impl ParquetWriteMode {
    /// Parse a mode name; the message says what is accepted, and where a merge can be had.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "append" => Ok(Self::Append),
            "overwrite" => Ok(Self::Overwrite),
            "merge" | "upsert" => Err(format!(
                "`mode: {s}` needs row-level deletes, which Parquet files in a directory cannot \
                 express: use `writer: iceberg` with `mode: merge` (see docs/iceberg.md)"
            )),
            _ => Err(format!("unknown mode `{s}`: use `append` or `overwrite`")),
        }
    }

    /// The mode a run uses: the configured one, checked against the job, or the default.
    ///
    /// The default is `overwrite` for a full refresh of an unsplit job (the directory should
    /// end up equal to the source, not hold it once per run), else `append`. An explicit
    /// `overwrite` is refused for a split job: each shard's writer would replace the rows the
    /// other shards committed.
    pub fn resolve(
        configured: Option<Self>,
        ctx: &dativo_core::WriterContext,
        path: &str,
    ) -> Result<Self> {
        use dativo_core::Delivery;
        let full = ctx.source.delivery == Delivery::Full;
        let split = ctx.shard.count > 1;
        let mode = match configured {
            Some(Self::Overwrite) if split => {
                return Err(Error::config(format!(
                    "`overwrite` cannot be used by a job split into {} shards: each shard's \
                     writer would replace the rows the others committed; use `append`, or run \
                     the job unsplit",
                    ctx.shard.count
                ))
                .with_key_path("mode"))
            }
            Some(mode) => mode,
            None if full && !split => {
                tracing::info!(
                    path,
                    "the source delivers all of its rows in every run (a full refresh): they \
                     replace the previous contents of the directory (mode: overwrite; set \
                     `mode: append` to keep them)"
                );
                Self::Overwrite
            }
            None => Self::Append,
        };
        if mode == Self::Overwrite && ctx.source.delivery == Delivery::Incremental {
            tracing::warn!(
                path,
                "the source delivers only rows new since the last run and the writer \
                 overwrites: the directory keeps only each run's new rows"
            );
        }
        if mode == Self::Append && full {
            tracing::warn!(
                path,
                "the source delivers all of its rows in every run (a full refresh) and the \
                 writer appends: every run adds another full copy of them{}",
                if split {
                    " (a split job cannot overwrite)"
                } else {
                    "; leave `mode` out or set `mode: overwrite` to replace them instead"
                }
            );
        }
        Ok(mode)
    }
}

impl fmt::Display for ParquetWriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Append => "append",
            Self::Overwrite => "overwrite",
        })
    }
}

impl<'de> Deserialize<'de> for ParquetWriteMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn default_lease_ttl() -> DurationValue {
    DurationValue(std::time::Duration::from_secs(60))
}

fn default_compression() -> Codec {
    Codec::Snappy
}
fn default_row_group_size() -> usize {
    1 << 20
}
fn default_row_group_bytes() -> ByteSize {
    ByteSize(32 << 20)
}
fn default_target_file_size() -> ByteSize {
    ByteSize(512 << 20)
}
fn default_prefix() -> String {
    "part".into()
}

/// A Parquet compression codec, as written in a config: `snappy`, `zstd`, `zstd(LEVEL)`
/// (1–22), `lz4` or `none` (`uncompressed`), in any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// No compression.
    None,
    /// Snappy.
    Snappy,
    /// LZ4 (the raw LZ4 codec).
    Lz4,
    /// Zstandard at the given level, or the default level.
    Zstd(Option<ZstdLevel>),
}

impl Codec {
    /// Parse a codec name; the message says what is accepted.
    pub fn parse(s: &str) -> std::result::Result<Codec, String> {
        let l = s.trim().to_ascii_lowercase();
        Ok(match l.as_str() {
            "none" | "uncompressed" => Codec::None,
            "snappy" => Codec::Snappy,
            "lz4" => Codec::Lz4,
            "zstd" => Codec::Zstd(None),
            _ => match l.strip_prefix("zstd(").and_then(|r| r.strip_suffix(')')) {
                Some(level) => {
                    let n: i32 = level
                        .trim()
                        .parse()
                        .map_err(|_| format!("invalid zstd level in `{s}`"))?;
                    Codec::Zstd(Some(
                        ZstdLevel::try_new(n)
                            .map_err(|e| format!("invalid zstd level in `{s}`: {e}"))?,
                    ))
                }
                None => {
                    return Err(format!(
                        "unknown compression `{s}`: use snappy, zstd, zstd(1..22), lz4 or none"
                    ))
                }
            },
        })
    }

    /// The parquet crate's compression setting.
    pub fn compression(self) -> Compression {
        match self {
            Codec::None => Compression::UNCOMPRESSED,
            Codec::Snappy => Compression::SNAPPY,
            Codec::Lz4 => Compression::LZ4_RAW,
            Codec::Zstd(level) => Compression::ZSTD(level.unwrap_or_default()),
        }
    }

    /// The codec's name as Iceberg's `write.parquet.compression-codec` property spells it.
    pub fn iceberg_codec(self) -> &'static str {
        match self {
            Codec::None => "uncompressed",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd(_) => "zstd",
        }
    }

    /// The zstd level, when one was given.
    pub fn level(self) -> Option<i32> {
        match self {
            Codec::Zstd(Some(l)) => Some(l.compression_level()),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level() {
            Some(l) => write!(f, "zstd({l})"),
            None => f.write_str(match self {
                Codec::None => "none",
                _ => self.iceberg_codec(),
            }),
        }
    }
}

impl<'de> Deserialize<'de> for Codec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Codec::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl ParquetWriterConfig {
    /// Object-store settings for `path`.
    pub fn store_options(&self) -> dativo_storage::StoreOptions<'_> {
        dativo_storage::StoreOptions {
            s3: self.s3.as_ref(),
            gcs: self.gcs.as_ref(),
            azure: self.azure.as_ref(),
        }
    }

    /// The threads that encode columns: `encode_threads`, or one per core beyond two (1 to 4).
    pub fn encode_threads(&self) -> usize {
        self.encode_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(2))
                .clamp(1, 4)
        })
    }

    /// Checks that need no I/O.
    pub fn check(&self) -> Result<()> {
        if matches!(self.encode_threads, Some(n) if !(1..=64).contains(&n)) {
            return Err(Error::config(format!(
                "must be between 1 and 64 (threads encoding columns), got {}",
                self.encode_threads.unwrap_or_default()
            ))
            .with_key_path("encode_threads"));
        }
        if self.row_group_size == 0 {
            return Err(Error::config("must be at least 1").with_key_path("row_group_size"));
        }
        if self.path.trim().is_empty() {
            return Err(Error::config("must not be empty").with_key_path("path"));
        }
        if let Some(enc) = &self.encryption {
            enc.check()?;
            if !self.partition_by.is_empty() {
                return Err(Error::config(
                    "partition values become directory names in plaintext; with `encryption` leave `partition_by` out",
                )
                .with_key_path("partition_by"));
            }
        }
        let ttl = self.lease_ttl.0;
        if ttl < std::time::Duration::from_secs(3) || ttl > std::time::Duration::from_secs(3600) {
            return Err(Error::config("must be between 3s and 1h").with_key_path("lease_ttl"));
        }
        if self.file_prefix.is_empty()
            || self.file_prefix.starts_with(['_', '.'])
            || self.file_prefix.contains('/')
        {
            return Err(Error::config(
                "must be a plain name that does not start with `_` or `.` (tools skip such files)",
            )
            .with_key_path("file_prefix"));
        }
        Ok(())
    }
}

/// How a run described by `ctx` would write into the directory of `config`, in words, decided
/// as the writer decides it (`dativo run --dry-run`); the error the writer would give otherwise.
pub fn planned_write(
    config: &serde_json::Value,
    ctx: &dativo_core::WriterContext,
) -> Result<String> {
    let cfg: ParquetWriterConfig = dativo_core::config::from_config(config)?;
    Ok(match ParquetWriteMode::resolve(cfg.mode, ctx, &cfg.path)? {
        ParquetWriteMode::Append => "append: new Parquet files, committed at each checkpoint".into(),
        ParquetWriteMode::Overwrite => "overwrite: the run's files replace every file committed before, in one commit at the end".into(),
    })
}
