//! The Python bridge: a native dativo plugin (`libdativo_python.so`) that embeds CPython, so
//! readers and writers can be Python classes — `implementation: package.module.Class` — while
//! the `dativo` binary itself never links libpython.
//!
//! - The class is imported from the active virtualenv (`DATIVO_PYTHON_VENV`, set from the job's
//!   `python.venv`, else `VIRTUAL_ENV`) or the interpreter's own site-packages.
//! - `entrypoint:NAME` resolves NAME in the `dativo.readers` / `dativo.writers` entry-point
//!   groups of installed packages (what `reader: NAME` falls back to).
//! - Batches cross through the Arrow PyCapsule interface (`__arrow_c_array__`,
//!   `__arrow_c_stream__`, `__arrow_c_schema__`), zero copy: pyarrow, polars, duckdb and
//!   nanoarrow objects all work. Writers receive `pyarrow.RecordBatch`es.
//! - A Python exception becomes an error with its type, message and traceback;
//!   `ConnectionError` and `TimeoutError` are retried like connection failures, and an
//!   exception's `dativo_kind` (the classes of the `dativo` module the bridge provides:
//!   `dativo.AuthError`, …) says its kind — and so the exit code and whether it is retried.
//! - The interpreter lock is held only while Python code runs.

// Embedding CPython and moving Arrow C structs out of capsules needs unsafe.
#![allow(unsafe_code)]

mod convert;
mod reader;
mod writer;

use std::ffi::CString;
use std::sync::OnceLock;

use dativo_core::{Error, Reader, Result, Writer};
use dativo_plugin_sdk::abi::DativoPlugin;
use dativo_plugin_sdk::PluginDef;
use pyo3::prelude::*;
use pyo3::types::PyList;

static STARTED: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Start the interpreter once per process and make the virtualenv importable.
fn ensure_python() -> Result<()> {
    STARTED.get_or_init(start).clone().map_err(Error::config)
}

fn start() -> std::result::Result<(), String> {
    // libloading/dlopen opened us (and so libpython) RTLD_LOCAL: extension modules such as
    // pyarrow's need libpython's symbols global.
    let lib = env!("DATIVO_LIBPYTHON");
    if !lib.is_empty() {
        if let Ok(c) = CString::new(lib) {
            // SAFETY: dlopen with a valid path; the handle is intentionally never closed.
            unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
        }
    }
    Python::initialize();
    let venv = std::env::var_os("DATIVO_PYTHON_VENV").or_else(|| std::env::var_os("VIRTUAL_ENV"));
    Python::attach(|py| -> PyResult<()> {
        if let Some(v) = venv {
            let v = v.to_string_lossy().into_owned();
            let code = format!(
                "import glob, site, sys\n\
                 for sp in sorted(glob.glob({v:?} + '/lib/python*/site-packages')):\n\
                 \x20   sys.path.insert(0, sp)\n\
                 \x20   site.addsitedir(sp)\n"
            );
            let code = CString::new(code).expect("no NUL");
            py.run(&code, None, None)?;
        }
        py.run(ERRORS_MODULE, None, None)?;
        Ok(())
    })
    .map_err(|e| Python::attach(|py| convert::describe(py, &e, "starting Python")))
}

/// The `dativo` module plugins import for their exception classes (added to an installed
/// package of that name that lacks them). An exception's kind is its `dativo_kind`
/// attribute (so a plugin may also define its own classes, importable without dativo); see
/// [`convert::error`].
const ERRORS_MODULE: &std::ffi::CStr = c"
import sys, types
try:
    import dativo as m
except Exception:
    m = None
if m is None or not hasattr(m, 'AuthError'):
    if m is None:
        m = types.ModuleType('dativo', 'Exception classes for dativo plugins: raise them to say what failed.')
        sys.modules['dativo'] = m
    class DativoError(Exception):
        'A plugin failure (exit 5); the base of the others.'
        dativo_kind = 'plugin'
    class ConfigError(DativoError):
        'The config is invalid (exit 2, never retried).'
        dativo_kind = 'config'
    class AuthError(DativoError):
        'Credentials rejected or a permission missing, e.g. HTTP 401/403 (exit 3, never retried).'
        dativo_kind = 'auth'
    class ConnectError(DativoError, ConnectionError):
        'The source cannot be reached (retried; exit 3 when retries are spent).'
        dativo_kind = 'connect'
    class DataError(DativoError):
        'A value cannot be read or converted (exit 4, never retried).'
        dativo_kind = 'data'
    class SchemaError(DativoError):
        'A schema is missing, mismatched or unsupported (exit 4, never retried).'
        dativo_kind = 'schema'
    class TransientError(DativoError):
        'A temporary failure, e.g. HTTP 429 or 503 (retried; exit 7 when retries are spent).'
        dativo_kind = 'transient'
    for c in (DativoError, ConfigError, AuthError, ConnectError, DataError, SchemaError, TransientError):
        c.__module__ = 'dativo'
        setattr(m, c.__name__, c)
";

/// What a Python class must have.
const READER_METHODS: [&str; 5] = [
    "initialize",
    "get_schema",
    "read_batch",
    "get_incremental_state",
    "close",
];
const WRITER_METHODS: [&str; 5] = ["initialize", "write_batch", "finalize", "abort", "close"];

/// Import `pkg.module.Class` (or an `entrypoint:NAME` of `group`) and instantiate it.
fn instantiate(path: &str, group: &str, methods: &[&str]) -> Result<Py<PyAny>> {
    ensure_python()?;
    Python::attach(|py| {
        let class = if let Some(name) = path.strip_prefix("entrypoint:") {
            let ep = (|| -> PyResult<Option<Bound<'_, PyAny>>> {
                let md = py.import("importlib.metadata")?;
                let eps = md.call_method1("entry_points", ())?;
                let sel = eps.call_method(
                    "select",
                    (),
                    Some(&[("group", group), ("name", name)].into_py_dict(py)?),
                )?;
                let list = py.import("builtins")?.getattr("list")?.call1((sel,))?;
                let list = list.cast_into::<PyList>()?;
                if list.len() == 0 {
                    return Ok(None);
                }
                Ok(Some(list.get_item(0)?.call_method0("load")?))
            })()
            .map_err(|e| {
                Error::config(convert::describe(
                    py,
                    &e,
                    &format!("loading entry point `{name}`"),
                ))
            })?;
            ep.ok_or_else(|| {
                Error::config(format!(
                    "no entry point `{name}` in group `{group}`: is the package that provides it installed in the active virtualenv?"
                ))
            })?
        } else {
            let (module, class) = path.rsplit_once('.').ok_or_else(|| {
                Error::config(format!(
                    "`{path}` is not a Python class path (package.module.Class)"
                ))
            })?;
            let m = py.import(module).map_err(|e| {
                Error::config(convert::describe(py, &e, &format!("importing `{module}`")))
            })?;
            m.getattr(class).map_err(|_| {
                Error::config(format!("module `{module}` has no attribute `{class}`"))
            })?
        };
        let missing: Vec<&str> = methods
            .iter()
            .copied()
            .filter(|m| !class.hasattr(*m).unwrap_or(false))
            .collect();
        if !missing.is_empty() {
            return Err(Error::config(format!(
                "`{path}` lacks method(s) {}: a reader needs {}; a writer needs {}",
                missing.join(", "),
                READER_METHODS.join(", "),
                WRITER_METHODS.join(", ")
            )));
        }
        let obj = class
            .call0()
            .map_err(|e| convert::error(py, &e, &format!("creating `{path}`")))?;
        Ok(obj.unbind())
    })
}

use pyo3::types::IntoPyDict;

fn new_reader(path: &str) -> Result<Box<dyn Reader>> {
    let obj = instantiate(path, "dativo.readers", &READER_METHODS)?;
    Ok(Box::new(reader::PyReader::new(obj)))
}

fn new_writer(path: &str) -> Result<Box<dyn Writer>> {
    let obj = instantiate(path, "dativo.writers", &WRITER_METHODS)?;
    Ok(Box::new(writer::PyWriter::new(obj)))
}

static DEF: PluginDef = PluginDef {
    name: "python",
    version: env!("CARGO_PKG_VERSION"),
    description: "Python readers and writers in-process (embedded CPython)",
    readers: &[],
    writers: &[],
    dynamic_reader: Some(new_reader),
    dynamic_writer: Some(new_writer),
};

/// The plugin's entry point (see `dativo_plugin.h`).
///
/// # Safety
/// `out` must point to a writable `DativoPlugin`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dativo_plugin_init(
    host_abi_version: u32,
    out: *mut DativoPlugin,
) -> std::os::raw::c_int {
    // SAFETY: forwarded from the caller's contract.
    unsafe { dativo_plugin_sdk::__init(&DEF, host_abi_version, out) }
}
