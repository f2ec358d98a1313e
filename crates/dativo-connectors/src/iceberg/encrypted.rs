//! Parquet Modular Encryption for Iceberg data files: a file-writer builder that gives every
//! data file fresh keys (iceberg-rust rolls files by size), and the audit side — the SHA-256 of
//! each stored file, the `dativo.encryption` snapshot summary, `dativo decrypt`/`verify`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use iceberg::io::{FileIO, OutputFile};
use iceberg::spec::{DataFile, SchemaRef};
use iceberg::writer::file_writer::{FileWriterBuilder, ParquetWriter, ParquetWriterBuilder};
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::{Error, Result};

use crate::crypto_tools::{Committed, Dataset};
use dativo_core::rt::runtime;
use dativo_encryption::{pme, EncFormat, Encryptor, FileAudit, FileKeys, Sha256};
use dativo_storage::{Location, StoreOptions};

use super::IcebergWriterConfig;

/// Snapshot summary key: a JSON array of the commit's [`FileAudit`] records.
pub const ENCRYPTION_KEY: &str = "dativo.encryption";

/// Builds Parquet data files, each with fresh keys when encryption is on.
#[derive(Clone)]
pub struct FileBuilder {
    props: WriterProperties,
    schema: SchemaRef,
    arrow_schema: ArrowSchemaRef,
    enc: Option<Arc<Encryptor>>,
    root: String,
    /// Keys handed out, by file location; taken when the files are committed.
    pub issued: Arc<Mutex<BTreeMap<String, FileKeys>>>,
}

/// The path of `location` relative to the table root.
pub fn relative(location: &str, root: &str) -> String {
    location
        .strip_prefix(root.trim_end_matches('/'))
        .map(|r| r.trim_start_matches('/').to_string())
        .unwrap_or_else(|| location.to_string())
}

impl FileBuilder {
    /// A builder for files under table root `root`.
    pub fn new(
        props: WriterProperties,
        schema: SchemaRef,
        enc: Option<Arc<Encryptor>>,
        root: String,
        issued: Arc<Mutex<BTreeMap<String, FileKeys>>>,
    ) -> Result<Self> {
        let arrow_schema = Arc::new(
            iceberg::arrow::schema_to_arrow_schema(&schema)
                .map_err(|e| Error::schema(e.to_string()))?,
        );
        Ok(FileBuilder {
            props,
            schema,
            arrow_schema,
            enc,
            root,
            issued,
        })
    }
}

impl FileWriterBuilder for FileBuilder {
    type R = ParquetWriter;

    async fn build(&self, output_file: OutputFile) -> iceberg::Result<ParquetWriter> {
        let mut props = self.props.clone();
        if let Some(enc) = &self.enc {
            let rel = relative(output_file.location(), &self.root);
            let (fep, keys) = pme::file_properties(enc, &self.arrow_schema, &rel)
                .map_err(|e| iceberg::Error::new(iceberg::ErrorKind::Unexpected, e.to_string()))?;
            self.issued
                .lock()
                .expect("not poisoned")
                .insert(output_file.location().to_string(), keys);
            // No column statistics: iceberg-rust copies min/max values into the manifests
            // (lower/upper bounds), which are not encrypted.
            props = props
                .into_builder()
                .set_statistics_enabled(parquet::file::properties::EnabledStatistics::None)
                .with_file_encryption_properties(fep)
                .build();
        }
        ParquetWriterBuilder::new(props, self.schema.clone())
            .build(output_file)
            .await
    }
}

/// SHA-256 of a stored file, streamed in 8 MB ranges.
pub async fn sha256(io: &FileIO, location: &str) -> Result<String> {
    let input = io
        .new_input(location)
        .map_err(|e| Error::io(format!("opening {location}: {e}")))?;
    let len = input
        .metadata()
        .await
        .map_err(|e| Error::io(format!("checking {location}: {e}")))?
        .size;
    let reader = input
        .reader()
        .await
        .map_err(|e| Error::io(format!("reading {location}: {e}")))?;
    let mut sha = Sha256::new();
    let mut off = 0u64;
    while off < len {
        let end = (off + (8 << 20)).min(len);
        let b = reader
            .read(off..end)
            .await
            .map_err(|e| Error::io(format!("reading {location}: {e}")))?;
        sha.update(&b);
        off = end;
    }
    Ok(sha.hex())
}

/// The audit records of freshly written `files`.
pub async fn audit_files(
    enc: &Encryptor,
    io: &FileIO,
    root: &str,
    files: &[DataFile],
    issued: &Mutex<BTreeMap<String, FileKeys>>,
    job: &str,
    run_id: &str,
) -> Result<Vec<FileAudit>> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let keys = issued
            .lock()
            .expect("not poisoned")
            .remove(f.file_path())
            .ok_or_else(|| {
                Error::internal(format!(
                    "no encryption keys were issued for {}",
                    f.file_path()
                ))
            })?;
        out.push(FileAudit {
            file: relative(f.file_path(), root),
            format: EncFormat::Parquet,
            algorithm: EncFormat::Parquet.algorithm().into(),
            key_provider: enc.provider.kind().into(),
            key: keys.key,
            column_keys: keys.column_keys,
            ciphertext_sha256: sha256(io, f.file_path()).await?,
            bytes: f.file_size_in_bytes(),
            rows: f.record_count(),
            job: job.into(),
            run_id: run_id.into(),
            time: dativo_encryption::now(),
        });
    }
    Ok(out)
}

/// The encrypted dataset of an `iceberg` writer's table, for `dativo decrypt` / `verify`.
pub fn encrypted_dataset(config: &Value) -> Result<Dataset> {
    let cfg: IcebergWriterConfig = from_config(config)?;
    cfg.check()?;
    let enc = cfg.encryption.clone().ok_or_else(|| {
        Error::config(
            "this job's `iceberg` writer has no `encryption:` block: there is nothing to decrypt or verify",
        )
        .with_key_path("encryption")
    })?;
    let table = runtime().block_on(super::writer::load_existing(&cfg))?;
    let md = table.metadata();
    let root = md.location().to_string();
    // Audit records of every commit in the current snapshot's history, oldest first.
    let mut records: Vec<FileAudit> = Vec::new();
    let mut cur = md.current_snapshot().cloned();
    let mut guard = md.snapshots().count();
    while let Some(s) = cur {
        if let Some(text) = s.summary().additional_properties.get(ENCRYPTION_KEY) {
            let recs: Vec<FileAudit> = serde_json::from_str(text).map_err(|e| {
                Error::data(format!(
                    "snapshot {} has an unreadable {ENCRYPTION_KEY}: {e}",
                    s.snapshot_id()
                ))
            })?;
            records.extend(recs.into_iter().rev());
        }
        guard = guard.saturating_sub(1);
        cur = s
            .parent_snapshot_id()
            .filter(|_| guard > 0)
            .and_then(|id| md.snapshot_by_id(id))
            .cloned();
    }
    records.reverse();
    // The table's data files now: what readers see (compaction or deletes may have changed
    // the set since the commits).
    let current: Vec<String> = if md.current_snapshot().is_some() {
        runtime().block_on(async {
            use futures_util::TryStreamExt;
            let scan = table
                .scan()
                .select_all()
                .build()
                .map_err(|e| Error::io(format!("planning a scan of {}: {e}", cfg.table)))?;
            let tasks: Vec<_> = scan
                .plan_files()
                .await
                .map_err(|e| Error::io(format!("planning a scan of {}: {e}", cfg.table)))?
                .try_collect()
                .await
                .map_err(|e| Error::io(format!("planning a scan of {}: {e}", cfg.table)))?;
            Ok::<_, Error>(tasks.into_iter().map(|t| t.data_file_path).collect())
        })?
    } else {
        Vec::new()
    };
    let current: Vec<String> = current.iter().map(|f| relative(f, &root)).collect();
    let mut committed = Vec::new();
    let mut notes = Vec::new();
    for r in &records {
        if current.contains(&r.file) {
            committed.push(Committed {
                file: r.file.clone(),
                rows: r.rows,
                audit: Some(r.clone()),
            });
        } else {
            notes.push(format!(
                "{}: committed by run {} but no longer part of the table (compacted, deleted or expired)",
                r.file, r.run_id
            ));
        }
    }
    for f in &current {
        if !records.iter().any(|r| &r.file == f) {
            // Not written by an encrypting dativo job: verify reports it.
            committed.push(Committed {
                file: f.clone(),
                rows: 0,
                audit: None,
            });
        }
    }
    let opts = StoreOptions {
        s3: cfg.s3.as_ref(),
        gcs: cfg.gcs.as_ref(),
        azure: cfg.azure.as_ref(),
    };
    let loc = Location::parse(&root, &opts)?;
    Ok(Dataset {
        target: root.clone(),
        loc,
        committed,
        provider: Arc::from(enc.key_provider.open()?),
        enc,
        internal_prefixes: vec!["metadata/".into()],
        strays_are_problems: false,
        notes,
    })
}
