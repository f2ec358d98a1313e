//! `dativo decrypt` and `dativo verify`: read an encrypted dataset back with the key provider,
//! and check every file against the audit trail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ArrowWriter;
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::{Error, Result};

use dativo_encryption::audit::AuditLog;
use dativo_encryption::keys::KeyProvider;
use dativo_encryption::pme::Retriever;
use dativo_encryption::stream::{ByteSource, Chunks, SeekSource, StreamFile};
use dativo_encryption::{EncFormat, EncryptionConfig, FileAudit, Sha256};
use dativo_storage::Location;

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
            for m in layout.all()? {
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

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// One line per file checked.
    pub ok: Vec<String>,
    /// Informational notes (rolled-back files).
    pub notes: Vec<String>,
    /// Everything that is wrong.
    pub problems: Vec<String>,
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
    if let parquet::errors::ParquetError::External(inner) = &e {
        // Our own authentication error from the stream format: it says everything.
        return Error::data(inner.to_string());
    }
    Error::data(format!(
        "{name} could not be decrypted: {e} — the file was modified, truncated, or is not the file committed under this name"
    ))
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
            arrow::error::ArrowError::ExternalError(inner) => Error::data(inner.to_string()),
            e => Error::data(format!(
                "{name} could not be decrypted: {e} — the file was modified or truncated"
            )),
        })?;
        f(batch)?;
    }
    Ok(schema)
}

/// SHA-256 of a stored file, streamed.
fn sha256_of(loc: &Location, rel: &str) -> Result<String> {
    let mut r = loc.open(rel)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut r, &mut buf)
            .map_err(|e| Error::io(format!("reading {}: {e}", loc.display(rel))))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(sha.hex())
}

/// Check every committed file: present, the SHA-256 recorded at commit time, every byte
/// authenticated, the committed row count; the audit log's chain and its agreement with the
/// commits; no file in the dataset that no commit names.
pub fn verify(ds: &Dataset) -> Result<VerifyReport> {
    let provider = ds.provider.clone();
    let mut rep = VerifyReport {
        notes: ds.notes.clone(),
        ..Default::default()
    };
    let log_path = ds.enc.audit_log_path();
    let (entries, chain) = if log_path.exists() {
        AuditLog::read(&log_path)?
    } else {
        (
            Vec::new(),
            vec![format!(
                "the audit log {} does not exist",
                log_path.display()
            )],
        )
    };
    rep.problems.extend(chain);
    let mut logged: BTreeMap<&str, &FileAudit> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.target == ds.target) {
        logged.insert(e.file.file.as_str(), &e.file);
    }
    let mut names = BTreeSet::new();
    for c in &ds.committed {
        names.insert(c.file.clone());
        let name = ds.loc.display(&c.file);
        let Some(audit) = &c.audit else {
            rep.problems.push(format!(
                "{name}: committed without encryption (no audit record)"
            ));
            continue;
        };
        match logged.get(c.file.as_str()) {
            None => rep
                .problems
                .push(format!("{name}: missing from the audit log {}", log_path.display())),
            Some(l) if *l != audit => rep.problems.push(format!(
                "{name}: the audit log's record differs from the one committed with the file (the log or the commit was edited)"
            )),
            _ => {}
        }
        match verify_file(ds, &provider, c, audit) {
            Ok(()) => rep.ok.push(format!(
                "{name} ({} rows, sha256 {}…, key {})",
                audit.rows,
                audit.ciphertext_sha256.get(..16).unwrap_or("?"),
                audit.key.key_id
            )),
            Err(e) => rep.problems.push(format!("{name}: {}", e.message())),
        }
    }
    for (file, _) in logged {
        if !names.contains(file) {
            rep.notes.push(format!(
                "{}: in the audit log but never committed (a rolled-back run); not part of the data",
                ds.loc.display(file)
            ));
        }
    }
    for f in ds.loc.list_recursive("")? {
        if ds
            .internal_prefixes
            .iter()
            .any(|p| f.starts_with(p.as_str()))
            || names.contains(&f)
        {
            continue;
        }
        if ds.strays_are_problems {
            rep.problems.push(format!(
                "{}: not named by any commit (an unexpected file in the dataset)",
                ds.loc.display(&f)
            ));
        } else {
            rep.notes.push(format!(
                "{}: not part of the table (no commit names it; an orphan of an interrupted run)",
                ds.loc.display(&f)
            ));
        }
    }
    Ok(rep)
}

fn verify_file(
    ds: &Dataset,
    provider: &Arc<dyn KeyProvider>,
    c: &Committed,
    audit: &FileAudit,
) -> Result<()> {
    let name = ds.loc.display(&c.file);
    if !ds.loc.exists(&c.file)? {
        return Err(Error::data(
            "missing: a committed file was deleted or renamed",
        ));
    }
    let sha = match audit.format {
        EncFormat::Stream => {
            let f = open_plain(ds, provider, &c.file, audit.format)?
                .stream
                .expect("the stream format");
            if f.header.key != audit.key {
                return Err(Error::data(
                    "its header names another data key than the audit trail: the file was replaced",
                ));
            }
            f.verify_all()?
        }
        EncFormat::Parquet => sha256_of(&ds.loc, &c.file)?,
    };
    if sha != audit.ciphertext_sha256 {
        return Err(Error::data(format!(
            "SHA-256 {sha} differs from the committed {}: the file was modified or replaced",
            audit.ciphertext_sha256
        )));
    }
    let mut rows = 0u64;
    for_each_batch(ds, provider, &c.file, audit.format, |b| {
        rows += b.num_rows() as u64;
        Ok(())
    })
    .map_err(|e| Error::data(e.message().replace(&format!("{name} "), "")))?;
    if rows != c.rows {
        return Err(Error::data(format!(
            "{rows} rows decrypted, {} committed",
            c.rows
        )));
    }
    Ok(())
}

/// `dativo decrypt` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    /// A Parquet file.
    Parquet,
    /// CSV with a header.
    Csv,
}

enum Out<W: Write + Send> {
    Parquet(ArrowWriter<W>),
    Csv(arrow::csv::Writer<W>),
}

/// Decrypt `files` (relative paths; empty: every committed file) into one output.
/// Returns (files, rows).
pub fn decrypt<W: Write + Send>(
    ds: &Dataset,
    files: &[String],
    format: OutFormat,
    out: W,
) -> Result<(usize, u64)> {
    let provider = ds.provider.clone();
    let chosen: Vec<&Committed> = if files.is_empty() {
        ds.committed.iter().collect()
    } else {
        let mut v = Vec::new();
        for f in files {
            let rel = f
                .trim_start_matches(&ds.loc.display(""))
                .trim_start_matches('/');
            let c = ds
                .committed
                .iter()
                .find(|c| c.file == rel || c.file.rsplit('/').next() == Some(rel))
                .ok_or_else(|| {
                    Error::config(format!(
                        "`{f}` is not a committed file of {} (`dativo verify` lists them)",
                        ds.target
                    ))
                })?;
            v.push(c);
        }
        v
    };
    let mut out = Some(out);
    let mut writer: Option<Out<W>> = None;
    let mut first: Option<SchemaRef> = None;
    let mut rows = 0u64;
    for c in &chosen {
        let format_of = c.audit.as_ref().map(|a| a.format).ok_or_else(|| {
            Error::data(format!(
                "{} was committed without encryption",
                ds.loc.display(&c.file)
            ))
        })?;
        let before = rows;
        for_each_batch(ds, &provider, &c.file, format_of, |b| {
            if let Some(s) = &first {
                if s.fields() != b.schema().fields() {
                    return Err(Error::schema(format!(
                        "{} has another schema than the files before it; decrypt it on its own",
                        ds.loc.display(&c.file)
                    )));
                }
            } else {
                first = Some(b.schema());
                let w = out.take().expect("once");
                writer = Some(match format {
                    OutFormat::Parquet => Out::Parquet(
                        ArrowWriter::try_new(w, b.schema(), None)
                            .map_err(|e| Error::io(e.to_string()))?,
                    ),
                    OutFormat::Csv => {
                        Out::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(w))
                    }
                });
            }
            rows += b.num_rows() as u64;
            match writer.as_mut().expect("created") {
                Out::Parquet(w) => w.write(&b).map_err(|e| Error::io(e.to_string())),
                Out::Csv(w) => w.write(&b).map_err(Error::from),
            }
        })?;
        if rows - before != c.rows {
            return Err(Error::data(format!(
                "{}: {} rows decrypted, {} committed — the file was replaced",
                ds.loc.display(&c.file),
                rows - before,
                c.rows
            )));
        }
    }
    match writer {
        Some(Out::Parquet(w)) => {
            w.into_inner()
                .map_err(|e| Error::io(e.to_string()))?
                .flush()?;
        }
        Some(Out::Csv(w)) => {
            w.into_inner().flush()?;
        }
        None => {}
    }
    Ok((chosen.len(), rows))
}
