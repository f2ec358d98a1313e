//! Client-side envelope encryption for the lake writers.
//!
//! Every file gets fresh 256-bit data keys (DEKs); the DEKs are wrapped by a key-encryption key
//! (KEK) held by a [key provider](keys): a local key file, an environment variable, AWS KMS, or
//! an external command (the hook for HSMs). Only wrapped keys are ever stored.
//!
//! Two formats:
//! - [`stream`]: the whole Parquet file is encrypted as it streams out, in AES-256-GCM
//!   segments whose nonce and associated data bind the file's path, the segment's index and
//!   whether it is the last one — truncation, reordering and swapping files fail to decrypt.
//! - [`pme`]: Parquet Modular Encryption — every column with its own DEK, an encrypted footer,
//!   key metadata in the format of parquet-cpp's key tools (readable by
//!   `pyarrow.parquet.encryption` with a KMS client that unwraps the provider's keys).
//!
//! Each file's [`FileAudit`] record (key ids, wrapped keys, ciphertext SHA-256, rows, job,
//! run) goes into the commit manifest or snapshot summary and into the append-only, hash-chained
//! [audit log](audit). `dativo decrypt` and `dativo verify` live in the connectors crate
//! (`crypto_tools`), beside the writers whose layouts they read.

pub mod audit;
pub mod keys;
mod kms;
pub mod pme;
pub mod stream;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use dativo_core::config::ByteSize;
use dativo_core::{Error, Result};

pub use keys::{DataKey, KeyProvider, KeyProviderConfig};

/// `encryption:` on the `parquet` and `iceberg` writers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// `stream` (whole file, segmented AES-256-GCM; the `parquet` writer's default) or `parquet`
    /// (Parquet Modular Encryption; the only choice for `iceberg`).
    #[serde(default)]
    pub format: Option<EncFormat>,
    /// Where the key-encryption key lives.
    pub key_provider: KeyProviderConfig,
    /// `parquet` format: key-encryption key id → columns whose data keys it wraps. Columns not
    /// listed use the provider's `key_id`. Every column always gets its own data key.
    #[serde(default)]
    pub column_keys: BTreeMap<String, Vec<String>>,
    /// `stream` format: plaintext bytes per authenticated segment (default 1MB).
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// The append-only audit log (JSON Lines, hash-chained); default `.dativo/audit.jsonl`.
    #[serde(default)]
    pub audit_log: Option<String>,
}

fn default_segment_size() -> ByteSize {
    ByteSize(1 << 20)
}

/// The default audit log, relative to the working directory.
pub const DEFAULT_AUDIT_LOG: &str = ".dativo/audit.jsonl";

/// How files are encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EncFormat {
    /// Whole-file streaming AES-256-GCM in authenticated segments.
    Stream,
    /// Parquet Modular Encryption (AES_GCM_V1), per-column keys, encrypted footer.
    Parquet,
}

impl EncFormat {
    /// The name used in configs and audit records.
    pub fn name(self) -> &'static str {
        match self {
            EncFormat::Stream => "stream",
            EncFormat::Parquet => "parquet",
        }
    }

    /// What the audit trail calls the algorithm.
    pub fn algorithm(self) -> &'static str {
        match self {
            EncFormat::Stream => stream::ALGORITHM,
            EncFormat::Parquet => pme::ALGORITHM,
        }
    }
}

/// The smallest and largest `segment_size`.
pub(crate) const SEGMENT_RANGE: (u64, u64) = (4 << 10, 64 << 20);

impl EncryptionConfig {
    /// The format, with the writer's default.
    pub fn format_or(&self, default: EncFormat) -> EncFormat {
        self.format.unwrap_or(default)
    }

    /// Checks that need no I/O; key paths are relative to the writer's config.
    pub fn check(&self) -> Result<()> {
        self.key_provider.check()?;
        let s = self.segment_size.0;
        if s < SEGMENT_RANGE.0 || s > SEGMENT_RANGE.1 {
            return Err(Error::config("must be between 4KB and 64MB")
                .with_key_path("encryption.segment_size"));
        }
        if !self.column_keys.is_empty() && self.format != Some(EncFormat::Parquet) {
            return Err(Error::config(
                "per-column key-encryption keys need `format: parquet` (the stream format has one data key per file)",
            )
            .with_key_path("encryption.column_keys"));
        }
        let mut seen = BTreeMap::new();
        for (kek, cols) in &self.column_keys {
            for c in cols {
                if let Some(prev) = seen.insert(c.clone(), kek.clone()) {
                    return Err(Error::config(format!(
                        "column `{c}` is listed under both `{prev}` and `{kek}`"
                    ))
                    .with_key_path(format!("encryption.column_keys.{kek}")));
                }
            }
        }
        Ok(())
    }

    /// The audit log path.
    pub fn audit_log_path(&self) -> std::path::PathBuf {
        std::path::PathBuf::from(self.audit_log.as_deref().unwrap_or(DEFAULT_AUDIT_LOG))
    }
}

/// A wrapped data key and the key-encryption key that wraps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    /// The key-encryption key's id (a KMS key id or alias, a key file's label, …).
    pub key_id: String,
    /// The data key wrapped by that key, as the provider encodes it.
    pub wrapped_key: String,
}

/// The audit record of one encrypted file: everything needed to decrypt it with the provider
/// and to check it was not changed — never a plaintext key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAudit {
    /// Path relative to the table or directory root.
    pub file: String,
    /// `stream` or `parquet`.
    pub format: EncFormat,
    /// The cipher and construction.
    pub algorithm: String,
    /// `local`, `env`, `aws_kms` or `command`.
    pub key_provider: String,
    /// The file's data key (`stream`) or footer key (`parquet`).
    pub key: WrappedKey,
    /// `parquet`: each column's data key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub column_keys: BTreeMap<String, WrappedKey>,
    /// SHA-256 of the stored (encrypted) bytes, hex.
    pub ciphertext_sha256: String,
    /// Size of the stored file.
    pub bytes: u64,
    /// Rows in the file.
    pub rows: u64,
    /// The job that wrote it.
    pub job: String,
    /// The run that wrote it.
    pub run_id: String,
    /// When the file was finished (RFC 3339, UTC).
    pub time: String,
}

/// The keys one file was encrypted with, as recorded before the data is written.
#[derive(Debug, Clone)]
pub struct FileKeys {
    /// See [`FileAudit::key`].
    pub key: WrappedKey,
    /// See [`FileAudit::column_keys`].
    pub column_keys: BTreeMap<String, WrappedKey>,
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Now, RFC 3339 UTC with milliseconds.
pub fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub use dativo_storage::Sha256;

/// Everything a writer needs to encrypt: the parsed config and a ready provider.
pub struct Encryptor {
    /// The config.
    pub cfg: EncryptionConfig,
    /// The format in use.
    pub format: EncFormat,
    /// The provider.
    pub provider: std::sync::Arc<dyn KeyProvider>,
    /// The audit log.
    pub audit: audit::AuditLog,
}

impl Encryptor {
    /// Open the provider (checking key files, reaching nothing remote) and the audit log.
    pub fn open(cfg: &EncryptionConfig, default: EncFormat) -> Result<Encryptor> {
        cfg.check()?;
        let provider = std::sync::Arc::from(cfg.key_provider.open()?);
        let audit = audit::AuditLog::open(&cfg.audit_log_path())?;
        Ok(Encryptor {
            cfg: cfg.clone(),
            format: cfg.format_or(default),
            provider,
            audit,
        })
    }

    /// Checks against the data's schema, before anything is written: every column named in
    /// `column_keys` exists (a typo would silently leave a column under the default key), and a
    /// one-key provider is not asked for another key.
    pub fn check_columns(&self, schema: &arrow::datatypes::Schema) -> Result<()> {
        for (kek, cols) in &self.cfg.column_keys {
            for c in cols {
                if schema.field_with_name(c).is_err() {
                    return Err(Error::config(format!(
                        "`{c}` is not a column of the data (columns: {})",
                        schema
                            .fields()
                            .iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .with_key_path(format!("encryption.column_keys.{kek}")));
                }
            }
            if matches!(self.provider.kind(), "local" | "env") && kek != self.provider.key_id() {
                return Err(Error::config(format!(
                    "the {} key provider holds one key, `{}`; it cannot wrap with `{kek}` (use aws_kms or command for several keys)",
                    self.provider.kind(),
                    self.provider.key_id()
                ))
                .with_key_path("encryption.column_keys"));
            }
        }
        Ok(())
    }

    /// The key-encryption key id for `column` (`parquet` format).
    pub fn kek_for(&self, column: &str) -> String {
        for (kek, cols) in &self.cfg.column_keys {
            if cols.iter().any(|c| c == column) {
                return kek.clone();
            }
        }
        self.provider.key_id().to_string()
    }
}
