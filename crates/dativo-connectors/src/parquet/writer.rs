//! The `parquet` writer.

use std::fs::{self, File};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::{
    Commit, CommitReport, CommittedState, Error, Result, ResultExt, Writer, WriterContext,
};

use super::commit_log::{Layout, Manifest, ManifestFile, FORMAT};
use super::config::{parse_compression, ParquetWriterConfig};
use crate::storage::{Location, Sink};

struct OpenFile {
    rel: String,
    staged: String,
    writer: ArrowWriter<Box<dyn Sink>>,
    rows: u64,
}

struct Staged {
    rel: String,
    rows: u64,
    bytes: u64,
}

/// Writes Parquet files into a local directory, committed atomically with a manifest.
#[derive(Default)]
pub struct ParquetWriter {
    cfg: Option<ParquetWriterConfig>,
    layout: Option<Layout>,
    schema: Option<SchemaRef>,
    props: Option<WriterProperties>,
    job: String,
    run_id: String,
    lock: Option<File>,
    last_sequence: u64,
    open: Option<OpenFile>,
    staged: Vec<Staged>,
}

fn pq_err(e: parquet::errors::ParquetError) -> Error {
    match e {
        parquet::errors::ParquetError::External(inner) => Error::io(inner.to_string()),
        other => Error::data(other.to_string()),
    }
}

impl ParquetWriter {
    /// A new, uninitialized writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validate a config without touching the file system.
    pub fn validate(config: &Value) -> Result<()> {
        from_config::<ParquetWriterConfig>(config)?.check()
    }

    fn layout(&self) -> Result<&Layout> {
        self.layout
            .as_ref()
            .ok_or_else(|| Error::internal("parquet writer used before initialize"))
    }

    fn start_file(&mut self) -> Result<()> {
        let cfg = self.cfg.as_ref().expect("initialized");
        let rel = format!("{}-{}.parquet", cfg.file_prefix, uuid::Uuid::now_v7());
        let layout = self.layout()?;
        let staged = layout.staged(&rel);
        let sink = layout.loc.create(&staged)?;
        let writer = ArrowWriter::try_new(
            sink,
            self.schema.clone().expect("initialized"),
            self.props.clone(),
        )
        .map_err(pq_err)?;
        self.open = Some(OpenFile {
            rel,
            staged,
            writer,
            rows: 0,
        });
        Ok(())
    }

    /// Write the footer, fsync, and move the open file to the staged list.
    fn close_file(&mut self) -> Result<()> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        let path = self.layout()?.loc.display(&open.staged);
        let sink = open
            .writer
            .into_inner()
            .map_err(pq_err)
            .with_context(|| format!("writing {path}"))?;
        let bytes = sink.finish()?;
        self.staged.push(Staged {
            rel: open.rel,
            rows: open.rows,
            bytes,
        });
        Ok(())
    }

    fn discard(&mut self) -> Result<()> {
        let layout = self.layout()?.clone();
        if let Some(open) = self.open.take() {
            drop(open.writer);
            let _ = layout.loc.delete(&open.staged);
        }
        for s in self.staged.drain(..) {
            layout.loc.delete(&layout.staged(&s.rel))?;
        }
        Ok(())
    }
}

impl Writer for ParquetWriter {
    fn initialize(&mut self, config: &Value, ctx: &WriterContext) -> Result<()> {
        let cfg: ParquetWriterConfig = from_config(config)?;
        cfg.check()?;
        let layout = Layout::new(Location::parse(&cfg.path, cfg.s3.as_ref())?);
        layout.create()?;
        let lock = match layout.lock_file() {
            Some(lock_path) => {
                let lock = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .with_context(|| format!("opening {}", lock_path.display()))?;
                match lock.try_lock() {
                    Ok(()) => {}
                    Err(fs::TryLockError::WouldBlock) => {
                        return Err(Error::transient(format!(
                            "another dativo writer is writing to {} (lock {} is held)",
                            cfg.path,
                            lock_path.display()
                        )))
                    }
                    Err(fs::TryLockError::Error(e)) => {
                        return Err(
                            Error::from(e).context(format!("locking {}", lock_path.display()))
                        )
                    }
                }
                Some(lock)
            }
            None => None,
        };
        let latest = layout.recover()?;
        self.last_sequence = latest.map(|m| m.sequence).unwrap_or(0);
        let props = WriterProperties::builder()
            .set_compression(parse_compression(&cfg.compression)?)
            .set_max_row_group_row_count(Some(cfg.row_group_size))
            .set_created_by(format!("dativo {}", env!("CARGO_PKG_VERSION")))
            .build();
        self.props = Some(props);
        self.schema = Some(ctx.schema.clone());
        self.job = ctx.job.clone();
        self.run_id = ctx.run_id.clone();
        self.lock = lock;
        self.layout = Some(layout);
        self.cfg = Some(cfg);
        Ok(())
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.open.is_none() {
            self.start_file()?;
        }
        let (target, rg_bytes) = {
            let cfg = self.cfg.as_ref().expect("initialized");
            (
                cfg.target_file_size.0 as usize,
                cfg.row_group_bytes.0 as usize,
            )
        };
        let open = self.open.as_mut().expect("open");
        let path = open.staged.clone();
        open.writer
            .write(batch)
            .map_err(pq_err)
            .with_context(|| format!("writing {path}"))?;
        open.rows += batch.num_rows() as u64;
        if open.writer.in_progress_size() >= rg_bytes {
            open.writer
                .flush()
                .map_err(pq_err)
                .with_context(|| format!("writing {path}"))?;
        }
        if open.writer.bytes_written() + open.writer.in_progress_size() >= target {
            self.close_file()?;
        }
        Ok(())
    }

    fn finalize(&mut self, commit: &Commit) -> Result<CommitReport> {
        self.close_file()?;
        let layout = self.layout()?.clone();
        let manifest = Manifest {
            format: FORMAT.into(),
            sequence: self.last_sequence + 1,
            job: self.job.clone(),
            run_id: commit.run_id.clone(),
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            state: commit.state.clone(),
            files: self
                .staged
                .iter()
                .map(|s| ManifestFile {
                    path: s.rel.clone(),
                    rows: s.rows,
                    bytes: s.bytes,
                })
                .collect(),
        };
        layout.write(&manifest)?;
        self.last_sequence = manifest.sequence;
        self.staged.clear();
        layout.publish(&manifest)?;
        Ok(CommitReport {
            files: manifest
                .files
                .iter()
                .map(|f| layout.loc.display(&f.path))
                .collect(),
            rows: manifest.files.iter().map(|f| f.rows).sum(),
            bytes: manifest.files.iter().map(|f| f.bytes).sum(),
            commit_id: Some(format!("{:020}", manifest.sequence)),
        })
    }

    fn abort(&mut self) -> Result<()> {
        if self.layout.is_none() {
            return Ok(());
        }
        self.discard()
    }

    fn close(&mut self) -> Result<()> {
        let r = if self.layout.is_some() {
            self.discard()
        } else {
            Ok(())
        };
        if let Some(lock) = self.lock.take() {
            let _ = lock.unlock();
        }
        if let Some(l) = &self.layout {
            let _ = l.loc.sync("");
        }
        r
    }

    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        let latest = self.layout()?.latest()?;
        Ok(Some(CommittedState {
            state: latest.as_ref().and_then(|m| m.state.clone()),
            run_id: latest.map(|m| m.run_id),
        }))
    }
}
