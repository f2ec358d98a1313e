//! `dativo decrypt` and `dativo verify`: read an encrypted dataset back with the key provider,
//! and check every file against the audit trail.
//!
//! [`Dataset`] is what a writer says it wrote (where, which files were committed, with which
//! keys); [`verify`] checks it against the stored files and the audit log, [`decrypt`] reads
//! it back as plaintext. Both open files through the helpers here.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::{Error, Result};

use dativo_encryption::keys::KeyProvider;
use dativo_encryption::pme::Retriever;
use dativo_encryption::stream::{ByteSource, Chunks, SeekSource, StreamFile};
use dativo_encryption::{EncFormat, EncryptionConfig, FileAudit};
use dativo_storage::Location;

mod decrypt;
mod verify;

pub use decrypt::{decrypt, OutFormat};
pub use verify::{verify, VerifyReport};

/// A committed file of a dataset.
#[derive(Debug, Clone)]
pub struct Committed {
    /// Path relative to the dataset root.
    pub file: String,
    /// Rows, as committed.
    pub rows: u64,
    /// The audit record stored with the commit (None: the file is not encrypted).
    pub audit: Option<FileAudit>,
}

/// An encrypted dataset: where it is, what was committed, and how it is keyed.
pub struct Dataset {
    /// The root.
    pub loc: Location,
    /// Committed files, oldest first.
    pub committed: Vec<Committed>,
    /// The writer's `encryption:` block.
    pub enc: EncryptionConfig,
    /// Its key provider, opened.
    pub provider: Arc<dyn KeyProvider>,
    /// Where the writer's own bookkeeping lives (skipped when looking for stray files).
    pub internal_prefixes: Vec<String>,
    /// The name the audit log uses for this dataset.
    pub target: String,
    /// Whether a file no commit names is a problem (a Parquet directory: readers see it) or a
    /// note (an Iceberg table: readers do not).
    pub strays_are_problems: bool,
    /// Things the dataset's owner found worth saying (files no longer in an Iceberg table).
    pub notes: Vec<String>,
}

fn no_encryption(writer: &str) -> Error {
    Error::config(format!(
        "this job's `{writer}` writer has no `encryption:` block: there is nothing to decrypt or verify"
    ))
    .with_key_path("target.config.encryption")
}

impl Dataset {
    /// A `parquet` writer's directory.
    pub fn parquet(config: &Value) -> Result<Dataset> {
        let cfg: crate::parquet::ParquetWriterConfig = from_config(config)?;
        cfg.check()?;
        let enc = cfg
            .encryption
            .clone()
            .ok_or_else(|| no_encryption("parquet"))?;
        let loc = Location::parse(&cfg.path, &cfg.store_options())?;
        let mut committed = Vec::new();
        // The unsharded commit log and every shard's.
        for layout in crate::parquet::commit_log::Layout::all_under(&loc)? {
            for m in layout.live()? {
                for f in m.files {
                    committed.push(Committed {
                        file: f.path,
                        rows: f.rows,
                        audit: f.encryption,
                    });
                }
            }
        }
        Ok(Dataset {
            target: loc.name(),
            loc,
            committed,
            provider: Arc::from(enc.key_provider.open()?),
            enc,
            internal_prefixes: vec!["_dativo/".into()],
            strays_are_problems: true,
            notes: Vec::new(),
        })
    }
}

fn source(loc: &Location, rel: &str) -> Result<Arc<dyn ByteSource>> {
    let size = loc.size(rel)?;
    Ok(Arc::new(SeekSource::new(
        loc.open(rel)?,
        size,
        loc.display(rel),
    )))
}

/// A committed file opened for Parquet reading.
struct Opened {
    /// The plaintext Parquet bytes (decrypted on the fly for the stream format).
    chunks: Chunks,
    /// Parquet Modular Encryption: unwraps the file's keys.
    retriever: Option<Arc<Retriever>>,
    /// The stream format: the decrypting view.
    stream: Option<Arc<StreamFile>>,
}

/// Open a committed file for Parquet reading, decrypting it.
fn open_plain(
    ds: &Dataset,
    provider: &Arc<dyn KeyProvider>,
    file: &str,
    format: EncFormat,
) -> Result<Opened> {
    let src = source(&ds.loc, file)?;
    let name = ds.loc.display(file);
    Ok(match format {
        EncFormat::Stream => {
            let f = Arc::new(StreamFile::open(src, file, provider.as_ref(), &name)?);
            Opened {
                chunks: Chunks(f.clone()),
                retriever: None,
                stream: Some(f),
            }
        }
        EncFormat::Parquet => {
            // Parquet reads a plaintext file without complaint: insist on an encrypted footer
            // (a file swapped for a plain one is then refused, not printed).
            let mut magic = [0u8; 4];
            if src.size() >= 8 {
                src.read_at(src.size() - 4, &mut magic)?;
            }
            if &magic != b"PARE" {
                return Err(Error::data(format!(
                    "{name} is not a Parquet file with an encrypted footer: it was replaced or truncated"
                )));
            }
            Opened {
                chunks: Chunks(src),
                retriever: Some(Retriever::new(provider.clone())),
                stream: None,
            }
        }
    })
}

fn reader_options(retriever: &Option<Arc<Retriever>>, file: &str) -> Result<ArrowReaderOptions> {
    let mut o = ArrowReaderOptions::new();
    if let Some(r) = retriever {
        o = o.with_file_decryption_properties(r.properties(file)?);
    }
    Ok(o)
}

fn read_error(
    e: parquet::errors::ParquetError,
    retriever: &Option<Arc<Retriever>>,
    name: &str,
) -> Error {
    if let Some(inner) = retriever.as_ref().and_then(|r| r.take_error()) {
        return inner.context(format!("decrypting {name}"));
    }
    match e {
        // Our own authentication error from the stream format: it says everything.
        parquet::errors::ParquetError::External(inner) => {
            Error::data(inner.to_string()).with_source(crate::Cause(inner))
        }
        e => Error::data(format!(
            "{name} could not be decrypted: {e} — the file was modified, truncated, or is not the file committed under this name"
        ))
        .with_source(e),
    }
}

/// Every batch of one committed file.
fn for_each_batch(
    ds: &Dataset,
    provider: &Arc<dyn KeyProvider>,
    file: &str,
    format: EncFormat,
    mut f: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<SchemaRef> {
    let name = ds.loc.display(file);
    let Opened {
        chunks, retriever, ..
    } = open_plain(ds, provider, file, format)?;
    let opts = reader_options(&retriever, file)?;
    let b = ParquetRecordBatchReaderBuilder::try_new_with_options(chunks, opts)
        .map_err(|e| read_error(e, &retriever, &name))?;
    let schema = b.schema().clone();
    let reader = b
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| read_error(e, &retriever, &name))?;
    for batch in reader {
        let batch = batch.map_err(|e| match e {
            arrow::error::ArrowError::ExternalError(inner) => {
                Error::data(inner.to_string()).with_source(crate::Cause(inner))
            }
            e => Error::data(format!(
                "{name} could not be decrypted: {e} — the file was modified or truncated"
            ))
            .with_source(e),
        })?;
        f(batch)?;
    }
    Ok(schema)
}
