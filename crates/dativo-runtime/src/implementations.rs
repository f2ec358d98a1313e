//! Resolving a job's `reader:` / `writer:` to an implementation.
//!
//! [`validate`] resolves: it loads native plugin libraries (running their initializers) and
//! imports Python classes, so only `run`, `check` and `serve` call it.
//! [`validate_without_loading`] is what `dativo validate` runs on job files that may not be
//! trusted: every check that needs neither loading a library nor connecting. Either way a job
//! file may name native libraries only inside its own directory, the plugin path or a
//! directory allowed with `--allow-plugin-path` (see [`dativo_plugins::native::locate_job_library`]).

use serde_json::Value;

use dativo_core::job::{CustomImplementation, Implementation, Job};
use dativo_core::{
    open_reader, open_writer, OpenReader, OpenWriter, ReaderContext, Result, WriterContext,
};
use dativo_plugins::Side;

/// Builds fresh reader instances for one job (one per attempt).
pub struct ReaderFactory {
    /// Shown in logs and errors: `reader 'file'`.
    pub label: String,
    open: Box<OpenReaderFn>,
}

/// Builds fresh writer instances for one job (one per attempt).
pub struct WriterFactory {
    /// Shown in logs and errors: `writer 'parquet'`.
    pub label: String,
    open: Box<OpenWriterFn>,
}

type OpenReaderFn = dyn Fn(&Value, &ReaderContext) -> Result<Box<dyn OpenReader>> + Send + Sync;
type OpenWriterFn = dyn Fn(&Value, &WriterContext) -> Result<Box<dyn OpenWriter>> + Send + Sync;

impl ReaderFactory {
    /// Open a reader for one attempt; errors name the reader.
    pub fn open(&self, config: &Value, ctx: &ReaderContext) -> Result<Box<dyn OpenReader>> {
        (self.open)(config, ctx).map_err(|e| e.context(self.label.clone()))
    }
}

impl WriterFactory {
    /// Open a writer for one attempt; errors name the writer.
    pub fn open(&self, config: &Value, ctx: &WriterContext) -> Result<Box<dyn OpenWriter>> {
        (self.open)(config, ctx).map_err(|e| e.context(self.label.clone()))
    }
}

/// Make the job's `python.venv` the one the Python bridge imports from. Set before the bridge
/// starts the interpreter (resolution runs before any reader or writer thread exists).
/// One interpreter per process: a second job asking for another venv is refused.
fn python_env(job: &Job) -> Result<()> {
    if let Some(venv) = &job.config.python.venv {
        let base = job.path.parent().unwrap_or(std::path::Path::new("."));
        let venv = base.join(venv);
        let venv = std::fs::canonicalize(&venv).unwrap_or(venv);
        match std::env::var_os("DATIVO_PYTHON_VENV") {
            Some(v) if std::path::Path::new(&v) != venv => {
                return Err(job.error_at(
                    "python.venv",
                    &format!(
                        "this process already uses the Python virtualenv {} (one interpreter per process); run jobs with different venvs in separate processes",
                        std::path::Path::new(&v).display()
                    ),
                ))
            }
            _ => std::env::set_var("DATIVO_PYTHON_VENV", venv),
        }
    }
    Ok(())
}

fn custom(
    job: &Job,
    implementation: &CustomImplementation,
    side: Side,
    key: &str,
) -> Result<dativo_plugins::Resolved> {
    python_env(job)?;
    let base = job.path.parent().filter(|p| !p.as_os_str().is_empty());
    dativo_plugins::resolve_custom(implementation, side, base)
        .map_err(|e| locate_plugin_error(job, key, e))
}

/// A config error points at `key` in the job file; any other (a library that is not a dativo
/// plugin, an ABI mismatch) keeps its kind and gets the job file and key as context.
fn locate_plugin_error(job: &Job, key: &str, e: dativo_core::Error) -> dativo_core::Error {
    if e.kind() == dativo_core::ErrorKind::Config {
        job.error_at(key, e.message())
    } else {
        e.context(format!(
            "{}: {key} (job '{}')",
            job.path.display(),
            job.config.name
        ))
    }
}

/// The `batch_size` bound ([`dativo_core::config::BATCH_SIZE_RANGE`]) for every built-in reader,
/// also those whose own validation does not check it.
fn check_batch_size(job: &Job) -> Result<()> {
    let Some(n) = job
        .config
        .source
        .config
        .get("batch_size")
        .and_then(Value::as_u64)
    else {
        return Ok(());
    };
    dativo_core::config::check_batch_size("batch_size", usize::try_from(n).unwrap_or(usize::MAX))
        .map_err(|e| job.locate("source.config", e))
}

/// Whether a name that is not built in is a pip-installed plugin.
enum EntryPoint {
    /// An entry point in the `dativo.readers` / `dativo.writers` group, resolved.
    Found(dativo_plugins::Resolved),
    /// None: there is no Python bridge (`None`), or the bridge could not resolve one — there
    /// is none, or it failed to load. Either way the name is unknown; the bridge's error says
    /// which and becomes the cause of the "unknown reader" error.
    NotFound(Option<dativo_core::Error>),
}

/// Look `name` up as an installed plugin's entry point (see [`EntryPoint`]).
fn entry_point(job: &Job, name: &str, side: Side) -> Result<EntryPoint> {
    if dativo_plugins::python_bridge().is_err() {
        return Ok(EntryPoint::NotFound(None));
    }
    python_env(job)?;
    Ok(
        match dativo_plugins::python(&format!("entrypoint:{name}"), side) {
            Ok(r) => EntryPoint::Found(r),
            Err(e) => EntryPoint::NotFound(Some(e)),
        },
    )
}

/// "unknown reader `x`: built-in readers are …", at `key`, with why no installed plugin
/// provides it either (if there is a Python bridge to ask) as its cause.
fn unknown(
    job: &Job,
    key: &str,
    side: Side,
    name: &str,
    known: &[&str],
    not_installed: Option<dativo_core::Error>,
) -> dativo_core::Error {
    let what = side.as_str();
    let e = job.error_at(
        key,
        &format!(
            "unknown {what} `{name}`: built-in {what}s are {}",
            known.join(", ")
        ),
    );
    match not_installed {
        Some(cause) => e.with_source(cause),
        None => e,
    }
}

/// Resolve and validate (no I/O) the job's reader.
pub fn reader_for(job: &Job) -> Result<ReaderFactory> {
    let src = &job.config.source;
    match &src.reader {
        Implementation::Builtin(name) => {
            let Some(b) = dativo_connectors::reader(name) else {
                return match entry_point(job, name, Side::Reader)? {
                    EntryPoint::Found(r) => Ok(ReaderFactory {
                        label: r.label.clone(),
                        open: Box::new(move |c, ctx| open_reader(r.reader(), c, ctx)),
                    }),
                    EntryPoint::NotFound(why) => {
                        let known: Vec<&str> = dativo_connectors::readers()
                            .iter()
                            .map(|r| r.name)
                            .collect();
                        Err(unknown(
                            job,
                            "source.reader",
                            Side::Reader,
                            name,
                            &known,
                            why,
                        ))
                    }
                };
            };
            if dativo_core::streams::is_named(job) {
                for p in dativo_core::streams::plan_named_streams(job)? {
                    (b.validate)(&p.job.config.source.config).map_err(|e| {
                        job.locate("source.config", e)
                            .context(format!("in stream `{}`", p.stream))
                    })?;
                }
            } else if dativo_core::streams::is_multi(job) {
                if b.discover.is_none() {
                    return Err(job.error_at(
                        "source.config.tables",
                        &format!(
                            "reader '{name}' cannot list tables: `tables` applies to the SQL readers (postgres, mysql); name this reader's streams with `streams: {{NAME: {{…settings}}}}`"
                        ),
                    ));
                }
                dativo_core::streams::Selection::of(job)?;
                (b.validate)(&dativo_core::streams::validation_config(job))
                    .map_err(|e| job.locate("source.config", e))?;
            } else {
                (b.validate)(&src.config).map_err(|e| job.locate("source.config", e))?;
            }
            check_batch_size(job)?;
            Ok(ReaderFactory {
                label: format!("reader '{name}'"),
                open: Box::new(b.open),
            })
        }
        Implementation::Custom(_)
            if dativo_core::streams::is_multi(job) && !dativo_core::streams::is_named(job) =>
        {
            Err(job.error_at(
                "source.config.tables",
                "`tables` applies to the built-in SQL readers (postgres, mysql); name a plugin's streams with `streams: {NAME: {…settings}}`",
            ))
        }
        Implementation::Custom(i) => {
            let r = custom(job, i, Side::Reader, "source.reader.implementation")?;
            Ok(ReaderFactory {
                label: r.label.clone(),
                open: Box::new(move |c, ctx| open_reader(r.reader(), c, ctx)),
            })
        }
    }
}

/// Resolve and validate (no I/O) the job's writer.
pub fn writer_for(job: &Job) -> Result<WriterFactory> {
    let tgt = &job.config.target;
    match &tgt.writer {
        Implementation::Builtin(name) => {
            let Some(b) = dativo_connectors::writer(name) else {
                return match entry_point(job, name, Side::Writer)? {
                    EntryPoint::Found(w) => Ok(WriterFactory {
                        label: w.label.clone(),
                        open: Box::new(move |c, ctx| open_writer(w.writer(), c, ctx)),
                    }),
                    EntryPoint::NotFound(why) => {
                        let known: Vec<&str> = dativo_connectors::writers()
                            .iter()
                            .map(|w| w.name)
                            .collect();
                        Err(unknown(
                            job,
                            "target.writer",
                            Side::Writer,
                            name,
                            &known,
                            why,
                        ))
                    }
                };
            };
            (b.validate)(&tgt.config).map_err(|e| job.locate("target.config", e))?;
            Ok(WriterFactory {
                label: format!("writer '{name}'"),
                open: Box::new(b.open),
            })
        }
        Implementation::Custom(i) => {
            let w = custom(job, i, Side::Writer, "target.writer.implementation")?;
            Ok(WriterFactory {
                label: w.label.clone(),
                open: Box::new(move |c, ctx| open_writer(w.writer(), c, ctx)),
            })
        }
    }
}

/// Validate a whole job without connecting anywhere and resolve its implementations: the file,
/// each built-in's own configuration, and custom implementations — native libraries are loaded
/// (their initializers run) and Python classes imported. For job files that may not be trusted,
/// use [`validate_without_loading`].
pub fn validate(job: &Job) -> Result<(ReaderFactory, WriterFactory)> {
    Ok((reader_for(job)?, writer_for(job)?))
}

/// `dativo validate`: every check of [`validate`] that loads no native library — a custom
/// library must exist, be a regular file and lie where a job file may load from; a grpc://
/// endpoint must be well formed. Python class paths and entry points are still imported
/// through the Python bridge (that is how a typo in one is found), from the environment's
/// packages.
pub fn validate_without_loading(job: &Job) -> Result<()> {
    let check = |implementation: &Implementation, side: Side, key: &str| -> Result<bool> {
        let Implementation::Custom(c) = implementation else {
            return Ok(false);
        };
        if matches!(
            dativo_plugins::Implementation::parse(&c.implementation),
            dativo_plugins::Implementation::Python(_)
        ) {
            custom(job, c, side, key)?;
        } else {
            let base = job.path.parent().filter(|p| !p.as_os_str().is_empty());
            dativo_plugins::check_custom(c, base).map_err(|e| locate_plugin_error(job, key, e))?;
        }
        Ok(true)
    };
    let src = &job.config.source.reader;
    if !check(src, Side::Reader, "source.reader.implementation")? {
        reader_for(job)?;
    }
    let tgt = &job.config.target.writer;
    if !check(tgt, Side::Writer, "target.writer.implementation")? {
        writer_for(job)?;
    }
    Ok(())
}
