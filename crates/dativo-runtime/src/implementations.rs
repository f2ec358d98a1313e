//! Resolving a job's `reader:` / `writer:` to an implementation.

use serde_json::Value;

use dativo_core::job::{Implementation, Job};
use dativo_core::{Error, Reader, Result, Writer};

/// Builds fresh reader instances for one job (one per attempt).
pub struct ReaderFactory {
    /// Shown in logs and errors: `reader 'file'`.
    pub label: String,
    create: Box<dyn Fn() -> Box<dyn Reader> + Send + Sync>,
}

/// Builds fresh writer instances for one job (one per attempt).
pub struct WriterFactory {
    /// Shown in logs and errors: `writer 'parquet'`.
    pub label: String,
    create: Box<dyn Fn() -> Box<dyn Writer> + Send + Sync>,
}

impl ReaderFactory {
    /// A new, uninitialized reader.
    pub fn create(&self) -> Box<dyn Reader> {
        (self.create)()
    }
}

impl WriterFactory {
    /// A new, uninitialized writer.
    pub fn create(&self) -> Box<dyn Writer> {
        (self.create)()
    }
}

fn custom_unavailable(side: &str, implementation: &str) -> Error {
    Error::config(format!(
        "custom {side} `{implementation}`: plugin implementations cannot be loaded by this build yet; use a built-in {side} (`dativo plugins list`)"
    ))
}

/// Resolve and validate (no I/O) the job's reader.
pub fn reader_for(job: &Job) -> Result<ReaderFactory> {
    let src = &job.config.source;
    match &src.reader {
        Implementation::Builtin(name) => {
            let Some(b) = dativo_connectors::reader(name) else {
                let known: Vec<&str> = dativo_connectors::readers()
                    .iter()
                    .map(|r| r.name)
                    .collect();
                return Err(job.error_at(
                    "source.reader",
                    &format!(
                        "unknown reader `{name}`: built-in readers are {}",
                        known.join(", ")
                    ),
                ));
            };
            (b.validate)(&src.config).map_err(|e| job.locate("source.config", e))?;
            Ok(ReaderFactory {
                label: format!("reader '{name}'"),
                create: Box::new(b.create),
            })
        }
        Implementation::Custom(i) => Err(job.error_at(
            "source.reader.implementation",
            &custom_unavailable("reader", i).to_string(),
        )),
    }
}

/// Resolve and validate (no I/O) the job's writer.
pub fn writer_for(job: &Job) -> Result<WriterFactory> {
    let tgt = &job.config.target;
    match &tgt.writer {
        Implementation::Builtin(name) => {
            let Some(b) = dativo_connectors::writer(name) else {
                let known: Vec<&str> = dativo_connectors::writers()
                    .iter()
                    .map(|w| w.name)
                    .collect();
                return Err(job.error_at(
                    "target.writer",
                    &format!(
                        "unknown writer `{name}`: built-in writers are {}",
                        known.join(", ")
                    ),
                ));
            };
            (b.validate)(&tgt.config).map_err(|e| job.locate("target.config", e))?;
            Ok(WriterFactory {
                label: format!("writer '{name}'"),
                create: Box::new(b.create),
            })
        }
        Implementation::Custom(i) => Err(job.error_at(
            "target.writer.implementation",
            &custom_unavailable("writer", i).to_string(),
        )),
    }
}

/// Validate a whole job without connecting anywhere: the file, the implementations, and each
/// built-in's own configuration.
pub fn validate(job: &Job) -> Result<(ReaderFactory, WriterFactory)> {
    Ok((reader_for(job)?, writer_for(job)?))
}

/// The reader config as passed to implementations.
pub fn reader_config(job: &Job) -> &Value {
    &job.config.source.config
}
