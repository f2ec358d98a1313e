//! The native plugin host: loads a shared library that implements `dativo_plugin.h` and adapts
//! it to dativo's [`Reader`] / [`Writer`] traits.
//!
//! Guarantees the host adds on top of the plugin's own code:
//! - the ABI version and table size are checked before any other call;
//! - every batch is imported zero-copy, fully validated (buffer sizes, every offset, UTF-8,
//!   dictionary keys — about 1% of a Postgres → Parquet run) and compared with the schema the
//!   plugin declared; a mismatch fails the run naming the plugin and the column;
//! - an error code becomes a dativo [`Error`] of the matching kind (config, connection,
//!   retryable, plugin), with the plugin's own message;
//! - `close` is called exactly once and the instance freed, also when the run fails;
//! - libraries are never unloaded (release callbacks live in their code; Go cannot unload).

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{Array, StructArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow::record_batch::RecordBatch;
use serde::Deserialize;
use serde_json::{json, Value};

use dativo_core::conformance::{check_batch_schema, check_decimal_precision, NoMessage};
use dativo_core::{
    Commit, CommitReport, CommittedState, Error, ErrorKind, Reader, ReaderContext, Result, Writer,
    WriterContext,
};
use dativo_plugin_sdk::abi::{self, DativoPlugin, Handle, InitFn};

/// A reader or writer listed in a plugin's manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Provided {
    /// The name used after `#`.
    pub name: String,
    /// One line about it.
    #[serde(default)]
    pub description: String,
}

/// A plugin's manifest (`manifest_json`).
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    /// The plugin's name.
    pub name: String,
    /// The plugin's version.
    #[serde(default)]
    pub version: String,
    /// One line about the plugin.
    #[serde(default)]
    pub description: String,
    /// Its readers.
    #[serde(default)]
    pub readers: Vec<Provided>,
    /// Its writers.
    #[serde(default)]
    pub writers: Vec<Provided>,
    /// Whether it creates readers/writers from names it does not list (the Python bridge:
    /// class paths).
    #[serde(default)]
    pub dynamic: bool,
}

/// A loaded plugin library. Loaded once per process and path, never unloaded.
pub struct NativeLibrary {
    /// Where it was loaded from.
    pub path: PathBuf,
    /// What it says it provides.
    pub manifest: Manifest,
    /// The ABI version the plugin was built against.
    pub abi_version: u32,
    table: DativoPlugin,
}

// SAFETY: the table holds function pointers and a pointer to static manifest text; the ABI
// allows different instances to be used from different threads at once.
unsafe impl Send for NativeLibrary {}
// SAFETY: as above; the table is never mutated after loading.
unsafe impl Sync for NativeLibrary {}

static LOADED: OnceLock<Mutex<HashMap<PathBuf, Arc<NativeLibrary>>>> = OnceLock::new();

/// The directories searched for a plugin given by bare file name, in order:
/// `DATIVO_PLUGIN_PATH` (`:`-separated), `~/.dativo/plugins`.
pub fn search_path() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("DATIVO_PLUGIN_PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    // Only an absolute one: without a home directory it would be relative to the working one.
    let home = crate::registry::plugins_dir();
    if home.is_absolute() {
        dirs.push(home);
    }
    dirs
}

fn candidates(name: &str) -> Vec<String> {
    let (prefix, suffix) = (std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX);
    let mut c = vec![name.to_string()];
    if !name.ends_with(suffix) {
        c.push(format!("{prefix}{name}{suffix}"));
        c.push(format!("{name}{suffix}"));
    }
    c
}

/// Find the library an implementation names. A path with a `/` is taken relative to the job
/// file's directory (`base_dir`), then to the working directory; a bare name (`x`, `libx.so`)
/// is searched in [`search_path`], then `base_dir`, then the working directory.
pub fn find_library(library: &str, base_dir: Option<&Path>) -> Result<PathBuf> {
    let p = Path::new(library);
    let mut tried = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let names: Vec<String>;
    if p.is_absolute() {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        return Err(Error::config(format!(
            "plugin library {library} does not exist (build the plugin first?)"
        )));
    } else if library.contains('/') || library.contains('\\') {
        dirs.extend(base_dir.map(Path::to_path_buf));
        dirs.push(PathBuf::from("."));
        names = vec![library.to_string()];
    } else {
        dirs.extend(search_path());
        dirs.extend(base_dir.map(Path::to_path_buf));
        dirs.push(PathBuf::from("."));
        names = candidates(library);
    }
    for d in &dirs {
        for n in &names {
            let c = d.join(n);
            if c.is_file() {
                return Ok(c);
            }
            tried.push(c.display().to_string());
        }
    }
    tried.dedup();
    Err(Error::config(format!(
        "plugin library `{library}` not found; looked for {} (build the plugin first, or set DATIVO_PLUGIN_PATH)",
        tried.join(", ")
    )))
}

/// Directories given with `--allow-plugin-path` (see [`allow_plugin_dirs`]).
static ALLOWED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Let job files load plugin libraries from `dirs` too (the CLI's `--allow-plugin-path`), for
/// the rest of the process.
pub fn allow_plugin_dirs(dirs: impl IntoIterator<Item = PathBuf>) {
    ALLOWED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .extend(dirs);
}

/// The directories, besides its own and [`search_path`], from which a job file may load a
/// library: `DATIVO_ALLOW_PLUGIN_PATH` (`:`-separated) and [`allow_plugin_dirs`].
pub fn allowed_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("DATIVO_ALLOW_PLUGIN_PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .filter(|d| !d.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    dirs.extend(
        ALLOWED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned(),
    );
    dirs
}

/// Find the library a job file names ([`find_library`]) and check that the job may load it,
/// without loading it: it must be a regular file and lie, symlinks resolved, inside the job
/// file's directory (`base_dir`; the working directory when `None`), a [`search_path`]
/// directory or an [`allowed_dirs`] directory. Returns the resolved path, which is what should
/// be loaded. A job file is data; this keeps it from running code from anywhere on disk.
pub fn locate_job_library(library: &str, base_dir: Option<&Path>) -> Result<PathBuf> {
    let found = find_library(library, base_dir)?;
    let real = std::fs::canonicalize(&found).map_err(|e| {
        Error::config(format!(
            "plugin library {}: cannot resolve its path: {e}",
            found.display()
        ))
    })?;
    if !std::fs::metadata(&real).is_ok_and(|m| m.is_file()) {
        return Err(Error::config(format!(
            "plugin library {} is not a regular file",
            real.display()
        )));
    }
    let job_dir = base_dir.unwrap_or(Path::new("."));
    let inside = std::iter::once(job_dir.to_path_buf())
        .chain(search_path())
        .chain(allowed_dirs())
        .filter_map(|d| std::fs::canonicalize(d).ok())
        .any(|d| real.starts_with(d));
    if inside {
        return Ok(real);
    }
    let shown_dir = std::fs::canonicalize(job_dir).unwrap_or_else(|_| job_dir.to_path_buf());
    let dir = real.parent().unwrap_or(Path::new("/"));
    Err(Error::config(format!(
        "plugin library `{library}` resolves to {}, outside the job file's directory ({}) and the plugin path (DATIVO_PLUGIN_PATH, ~/.dativo/plugins); a job file may load libraries only from there. To trust this location, run with --allow-plugin-path {} (or DATIVO_ALLOW_PLUGIN_PATH={})",
        real.display(),
        shown_dir.display(),
        dir.display(),
        dir.display()
    )))
}

fn kind_for(code: c_int) -> (ErrorKind, &'static str) {
    match code {
        abi::ERROR_CONFIG => (ErrorKind::Config, ""),
        abi::ERROR_CONNECTION => (ErrorKind::Connect, ""),
        abi::ERROR_RETRYABLE => (ErrorKind::Transient, ""),
        abi::ERROR_PANIC => (ErrorKind::Plugin, "crashed (a bug in the plugin): "),
        abi::ERROR => (ErrorKind::Plugin, ""),
        abi::ERROR_AUTH => (ErrorKind::Auth, ""),
        abi::ERROR_DATA => (ErrorKind::Data, ""),
        abi::ERROR_SCHEMA => (ErrorKind::Schema, ""),
        abi::ERROR_IO => (ErrorKind::Io, ""),
        _ => (ErrorKind::Plugin, "returned an unknown status code: "),
    }
}

impl NativeLibrary {
    /// Load (once per process) the library at `path` and check its ABI.
    pub fn load(path: &Path) -> Result<Arc<NativeLibrary>> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let cache = LOADED.get_or_init(Default::default);
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = cache.get(&key) {
            return Ok(l.clone());
        }
        let lib = Arc::new(Self::load_uncached(path)?);
        cache.insert(key, lib.clone());
        Ok(lib)
    }

    fn load_uncached(path: &Path) -> Result<NativeLibrary> {
        let shown = path.display();
        // SAFETY: loading runs the library's initializers; that is what loading a plugin means.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| Error::plugin(format!("cannot load plugin library {shown}: {e}")))?;
        // SAFETY: the symbol's type is fixed by dativo_plugin.h.
        let init: InitFn = unsafe { lib.get::<InitFn>(abi::INIT_SYMBOL) }
            .map(|s| *s)
            .map_err(|_| {
                Error::plugin(format!(
                    "{shown} is not a dativo plugin: it does not export `dativo_plugin_init` (see dativo_plugin.h)"
                ))
            })?;
        // Never unload: release callbacks and thread-locals live in the library's code.
        std::mem::forget(lib);
        let mut table = DativoPlugin::zeroed();
        table.struct_size = std::mem::size_of::<DativoPlugin>() as u32;
        // SAFETY: `table` is a writable, zeroed DativoPlugin of the host's size, announced in
        // struct_size (the plugin writes no further).
        let rc = unsafe { init(abi::ABI_VERSION, &mut table) };
        if rc != abi::OK {
            let msg = table
                .last_error
                // SAFETY: last_error returns NULL or a valid string (ABI rule).
                .and_then(|f| unsafe { cstr(f()) })
                .unwrap_or_else(|| format!("status {rc}"));
            return Err(Error::plugin(format!(
                "plugin {shown}: dativo_plugin_init failed: {msg}"
            )));
        }
        // The table as first released ends at writer_free; later fields are optional.
        let v1_size = std::mem::offset_of!(DativoPlugin, last_error_code);
        if (table.struct_size as usize) < std::mem::size_of::<DativoPlugin>() {
            table.last_error_code = None;
        }
        if table.abi_version < 1 || (table.struct_size as usize) < v1_size {
            return Err(Error::plugin(format!(
                "plugin {shown} speaks dativo plugin ABI {} (table of {} bytes); this dativo needs ABI {} ({} bytes): rebuild the plugin against this dativo_plugin.h",
                table.abi_version,
                table.struct_size,
                abi::ABI_VERSION,
                v1_size
            )));
        }
        if table.last_error.is_none() || table.free_string.is_none() {
            return Err(Error::plugin(format!(
                "plugin {shown} leaves last_error or free_string NULL; both are required"
            )));
        }
        // SAFETY: manifest_json is NULL or static text (ABI rule).
        let text = unsafe { cstr(table.manifest_json) }
            .ok_or_else(|| Error::plugin(format!("plugin {shown} has no manifest_json")))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::plugin(format!(
                "plugin {shown}: manifest_json is not a valid manifest: {e}"
            ))
        })?;
        let library = NativeLibrary {
            path: path.to_path_buf(),
            manifest,
            abi_version: table.abi_version,
            table,
        };
        library.check_table()?;
        Ok(library)
    }

    fn check_table(&self) -> Result<()> {
        let t = &self.table;
        let readers_ok = t.reader_new.is_some()
            && t.reader_initialize.is_some()
            && t.reader_get_schema.is_some()
            && t.reader_read_batch.is_some()
            && t.reader_get_incremental_state.is_some()
            && t.reader_close.is_some()
            && t.reader_free.is_some();
        let writers_ok = t.writer_new.is_some()
            && t.writer_initialize.is_some()
            && t.writer_write_batch.is_some()
            && t.writer_finalize.is_some()
            && t.writer_abort.is_some()
            && t.writer_close.is_some()
            && t.writer_free.is_some();
        let shown = self.path.display();
        if (!self.manifest.readers.is_empty() || self.manifest.dynamic)
            && !readers_ok
            && !writers_ok
        {
            return Err(Error::plugin(format!(
                "plugin '{}' ({shown}) is dynamic but provides neither reader nor writer functions",
                self.manifest.name
            )));
        }
        if !self.manifest.readers.is_empty() && !readers_ok {
            return Err(Error::plugin(format!(
                "plugin '{}' ({shown}) lists readers but leaves reader functions NULL",
                self.manifest.name
            )));
        }
        if !self.manifest.writers.is_empty() && !writers_ok {
            return Err(Error::plugin(format!(
                "plugin '{}' ({shown}) lists writers but leaves writer functions NULL",
                self.manifest.name
            )));
        }
        Ok(())
    }

    /// Create and free one instance called `name`: checks that the plugin can make it (the
    /// Python bridge imports the class) without initializing anything.
    pub fn probe(&self, side: crate::Side, name: &str) -> Result<()> {
        let (new, free) = match side {
            crate::Side::Reader => (self.table.reader_new, self.table.reader_free),
            crate::Side::Writer => (self.table.writer_new, self.table.writer_free),
        };
        let (Some(new), Some(free)) = (new, free) else {
            return Err(Error::config(format!(
                "plugin '{}' provides no {}s",
                self.manifest.name,
                side.as_str()
            )));
        };
        let c = CString::new(name).map_err(|_| Error::config("name with a NUL byte"))?;
        // SAFETY: a NUL-terminated name valid for the call (ABI rule).
        let h = unsafe { new(c.as_ptr()) };
        if h.is_null() {
            return Err(match self.last_error() {
                Some(msg) => Error::new(self.last_error_kind(), msg),
                None => Error::new(self.last_error_kind(), "no message").with_source(NoMessage),
            });
        }
        // SAFETY: a live, never initialized handle, freed once (ABI rules).
        unsafe { free(h) };
        Ok(())
    }

    /// The kind of the last failure on this thread, for calls that return no status (`*_new`).
    fn last_error_kind(&self) -> ErrorKind {
        // SAFETY: a function pointer from the plugin's table (ABI rule).
        let code = self
            .table
            .last_error_code
            .map(|f| unsafe { f() })
            .unwrap_or(abi::ERROR);
        kind_for(code).0
    }

    fn last_error(&self) -> Option<String> {
        // SAFETY: checked non-NULL at load; returns NULL or a valid string (ABI rule).
        self.table.last_error.and_then(|f| unsafe { cstr(f()) })
    }

    /// Take a plugin-allocated string and give it back to the plugin.
    ///
    /// # Safety
    /// `p` is NULL or a string the plugin returned through a `char **` out parameter.
    unsafe fn take_string(&self, p: *mut c_char) -> Option<String> {
        if p.is_null() {
            return None;
        }
        // SAFETY: see the function's contract.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        if let Some(free) = self.table.free_string {
            // SAFETY: returning the plugin's own allocation (ABI rule).
            unsafe { free(p) };
        }
        Some(s)
    }
}

/// `struct ArrowSchema` as the C Data Interface lays it out, to read its `release` field
/// (arrow-rs keeps the fields of `FFI_ArrowSchema` private).
#[repr(C)]
struct RawArrowSchema {
    format: *const c_char,
    name: *const c_char,
    metadata: *const c_char,
    flags: i64,
    n_children: i64,
    children: *mut *mut RawArrowSchema,
    dictionary: *mut RawArrowSchema,
    release: Option<unsafe extern "C" fn(*mut RawArrowSchema)>,
    private_data: *mut std::ffi::c_void,
}

/// Whether a schema struct is released (empty): the plugin left it unfilled.
fn schema_released(s: &FFI_ArrowSchema) -> bool {
    // SAFETY: FFI_ArrowSchema is #[repr(C)] with exactly the C Data Interface layout.
    unsafe {
        (*(s as *const FFI_ArrowSchema as *const RawArrowSchema))
            .release
            .is_none()
    }
}

/// # Safety
/// `p` is NULL or a valid NUL-terminated string.
unsafe fn cstr(p: *const c_char) -> Option<String> {
    if p.is_null() {
        None
    } else {
        // SAFETY: see the function's contract.
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }
}

fn c_json(v: &Value) -> Result<CString> {
    CString::new(v.to_string()).map_err(|_| Error::internal("JSON with a NUL byte"))
}

/// The common part of a reader and a writer instance.
struct Instance {
    lib: Arc<NativeLibrary>,
    name: String,
    label: String,
    handle: Handle,
    closed: bool,
}

// SAFETY: one instance is used by one thread at a time (ABI rule); the runner moves readers and
// writers to their own threads, never sharing them.
unsafe impl Send for Instance {}

impl Instance {
    fn new(lib: Arc<NativeLibrary>, side: &str, name: &str) -> Instance {
        let label = format!("plugin '{}' {side} '{name}'", lib.manifest.name);
        Instance {
            lib,
            name: name.to_string(),
            label,
            handle: std::ptr::null_mut(),
            closed: false,
        }
    }

    fn status(&self, method: &str, rc: c_int) -> Result<()> {
        if rc == abi::OK {
            return Ok(());
        }
        let (kind, prefix) = kind_for(rc);
        // The runner prefixes the label (`plugin 'x' reader 'y'`); the method says where.
        match self.lib.last_error().filter(|m| !m.trim().is_empty()) {
            Some(msg) => Err(Error::new(kind, format!("{method}: {prefix}{msg}"))),
            None => Err(Error::new(
                kind,
                format!("{method}: {prefix}failed with status {rc} and no message"),
            )
            .with_source(NoMessage)),
        }
    }

    fn handle(&self, method: &str) -> Result<Handle> {
        if self.handle.is_null() {
            return Err(Error::internal(format!(
                "{}: {method} called before initialize",
                self.label
            )));
        }
        Ok(self.handle)
    }

    fn create(&mut self, new: Option<unsafe extern "C" fn(*const c_char) -> Handle>) -> Result<()> {
        let new = new.ok_or_else(|| Error::plugin(format!("{}: not provided", self.label)))?;
        let name = CString::new(self.name.clone()).map_err(|_| Error::config("name with NUL"))?;
        // SAFETY: a NUL-terminated name valid for the call (ABI rule).
        let h = unsafe { new(name.as_ptr()) };
        if h.is_null() {
            let kind = self.lib.last_error_kind();
            return Err(match self.lib.last_error() {
                Some(msg) => Error::new(kind, format!("cannot create: {msg}")),
                None => Error::new(kind, "cannot create: no message").with_source(NoMessage),
            });
        }
        self.handle = h;
        Ok(())
    }
}

/// A reader implemented by a native plugin.
pub struct NativeReader {
    inst: Instance,
    schema: Option<SchemaRef>,
    /// The declared schema as a C struct schema, for batches whose schema the plugin leaves out.
    declared: Option<FFI_ArrowSchema>,
}

impl NativeReader {
    /// A reader `name` from `lib`; the plugin instance is created at `initialize`.
    pub fn new(lib: Arc<NativeLibrary>, name: &str) -> NativeReader {
        NativeReader {
            inst: Instance::new(lib, "reader", name),
            schema: None,
            declared: None,
        }
    }

    fn t(&self) -> &DativoPlugin {
        &self.inst.lib.table
    }
}

fn fnp<T>(f: Option<T>, label: &str, what: &str) -> Result<T> {
    f.ok_or_else(|| Error::plugin(format!("{label}: the plugin leaves `{what}` NULL")))
}

impl Reader for NativeReader {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        self.inst.create(self.t().reader_new)?;
        let f = fnp(
            self.t().reader_initialize,
            &self.inst.label,
            "reader_initialize",
        )?;
        let config = c_json(config)?;
        let context = c_json(&json!({
            "job": ctx.job, "stream": ctx.stream, "run_id": ctx.run_id,
            "state": ctx.state, "shard": ctx.shard,
        }))?;
        // SAFETY: a live handle and NUL-terminated JSON valid for the call (ABI rules).
        let rc = unsafe { f(self.inst.handle, config.as_ptr(), context.as_ptr()) };
        self.inst.status("initialize", rc)
    }

    fn get_schema(&mut self) -> Result<SchemaRef> {
        if let Some(s) = &self.schema {
            return Ok(s.clone());
        }
        let h = self.inst.handle("get_schema")?;
        let f = fnp(
            self.t().reader_get_schema,
            &self.inst.label,
            "reader_get_schema",
        )?;
        let mut out = FFI_ArrowSchema::empty();
        // SAFETY: a live handle and a writable, empty schema struct (ABI rules).
        let rc = unsafe { f(h, &mut out) };
        self.inst.status("get_schema", rc)?;
        let schema = Schema::try_from(&out).map_err(|e| {
            Error::plugin(format!(
                "{}: get_schema returned an invalid Arrow schema: {e}",
                self.inst.label
            ))
        })?;
        let schema = Arc::new(schema);
        let declared = FFI_ArrowSchema::try_from(DataType::Struct(schema.fields().clone()))
            .map_err(|e| Error::internal(format!("cannot export schema: {e}")))?;
        self.declared = Some(declared);
        self.schema = Some(schema.clone());
        Ok(schema)
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        let schema = self.get_schema()?;
        let h = self.inst.handle("read_batch")?;
        let f = fnp(
            self.t().reader_read_batch,
            &self.inst.label,
            "reader_read_batch",
        )?;
        let mut array = FFI_ArrowArray::empty();
        let mut batch_schema = FFI_ArrowSchema::empty();
        // SAFETY: a live handle and writable, empty structs (ABI rules).
        let rc = unsafe { f(h, &mut array, &mut batch_schema) };
        self.inst.status("read_batch", rc)?;
        if array.is_released() {
            return Ok(None);
        }
        let bad = |what: String| {
            Error::plugin(format!(
                "read_batch returned a batch that breaks the contract: {what}"
            ))
        };
        let ffi_schema = if schema_released(&batch_schema) {
            // Set by get_schema above, with `schema`.
            self.declared
                .as_ref()
                .ok_or_else(|| Error::internal("read_batch without a declared schema"))?
        } else {
            &batch_schema
        };
        // SAFETY: the plugin filled `array` (owned by us now) and its schema (ABI rules);
        // from_ffi checks the buffer counts against the schema's types, validate_full the rest,
        // so a buggy plugin cannot make safe code read out of bounds later.
        let data = unsafe { from_ffi(array, ffi_schema) }.map_err(|e| bad(e.to_string()))?;
        data.validate_full().map_err(|e| bad(e.to_string()))?;
        if !matches!(data.data_type(), DataType::Struct(_)) {
            return Err(bad(format!(
                "expected a struct array (format \"+s\"), got {}",
                data.data_type()
            )));
        }
        let s = StructArray::from(data);
        if s.null_count() > 0 {
            return Err(bad("the struct array has top-level nulls".into()));
        }
        let (fields, columns, _) = s.into_parts();
        let got = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| bad(e.to_string()))?;
        check_batch_schema(&schema, &got).map_err(|e| {
            Error::plugin(format!(
                "read_batch returned a batch that does not match the schema from get_schema: {}",
                e.message()
            ))
        })?;
        // Arrow imports decimals without looking at them (the Python bridge comes this way too).
        check_decimal_precision(&got).map_err(|e| {
            Error::plugin(format!("read_batch returned a batch with {}", e.message()))
        })?;
        let batch =
            RecordBatch::try_new(schema, got.columns().to_vec()).map_err(|e| bad(e.to_string()))?;
        Ok(Some(batch))
    }

    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        let h = self.inst.handle("get_incremental_state")?;
        let f = fnp(
            self.t().reader_get_incremental_state,
            &self.inst.label,
            "reader_get_incremental_state",
        )?;
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: a live handle and a writable out pointer (ABI rules).
        let rc = unsafe { f(h, &mut out) };
        // SAFETY: whatever came back is the plugin's string (ABI rule).
        let text = unsafe { self.inst.lib.take_string(out) };
        self.inst.status("get_incremental_state", rc)?;
        match text {
            None => Ok(None),
            Some(t) => match serde_json::from_str::<Value>(&t) {
                Ok(Value::Null) => Ok(None),
                Ok(v) => Ok(Some(v)),
                Err(e) => Err(Error::plugin(format!(
                    "{}: get_incremental_state returned invalid JSON ({e}): {t:.200}",
                    self.inst.label
                ))),
            },
        }
    }

    fn close(&mut self) -> Result<()> {
        if self.inst.handle.is_null() || self.inst.closed {
            return Ok(());
        }
        self.inst.closed = true;
        let f = fnp(self.t().reader_close, &self.inst.label, "reader_close")?;
        // SAFETY: a live handle, closed once (ABI rules).
        let rc = unsafe { f(self.inst.handle) };
        self.inst.status("close", rc)
    }
}

impl Drop for NativeReader {
    fn drop(&mut self) {
        if self.inst.handle.is_null() {
            return;
        }
        let _ = self.close();
        if let Some(free) = self.t().reader_free {
            // SAFETY: a live handle, freed once, last call on it (ABI rules).
            unsafe { free(self.inst.handle) };
        }
        self.inst.handle = std::ptr::null_mut();
    }
}

/// A writer implemented by a native plugin.
pub struct NativeWriter {
    inst: Instance,
}

impl NativeWriter {
    /// A writer `name` from `lib`; the plugin instance is created at `initialize`.
    pub fn new(lib: Arc<NativeLibrary>, name: &str) -> NativeWriter {
        NativeWriter {
            inst: Instance::new(lib, "writer", name),
        }
    }

    fn t(&self) -> &DativoPlugin {
        &self.inst.lib.table
    }

    fn json_out(
        &self,
        method: &str,
        call: impl FnOnce(*mut *mut c_char) -> c_int,
    ) -> Result<Option<Value>> {
        let mut out: *mut c_char = std::ptr::null_mut();
        let rc = call(&mut out);
        // SAFETY: whatever came back is the plugin's string (ABI rule).
        let text = unsafe { self.inst.lib.take_string(out) };
        self.inst.status(method, rc)?;
        match text {
            None => Ok(None),
            Some(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
                Error::plugin(format!(
                    "{}: {method} returned invalid JSON ({e}): {t:.200}",
                    self.inst.label
                ))
            }),
        }
    }
}

impl Writer for NativeWriter {
    fn initialize(&mut self, config: &Value, ctx: &WriterContext) -> Result<()> {
        self.inst.create(self.t().writer_new)?;
        let f = fnp(
            self.t().writer_initialize,
            &self.inst.label,
            "writer_initialize",
        )?;
        let config = c_json(config)?;
        let context = c_json(&json!({
            "job": ctx.job, "stream": ctx.stream, "run_id": ctx.run_id, "shard": ctx.shard, "source": ctx.source,
        }))?;
        let mut schema = FFI_ArrowSchema::try_from(ctx.schema.as_ref()).map_err(|e| {
            Error::schema(format!(
                "cannot export the schema to {}: {e}",
                self.inst.label
            ))
        })?;
        // SAFETY: a live handle, JSON and a valid schema; whatever the plugin does not move we
        // release when `schema` drops (ABI rules).
        let rc = unsafe {
            f(
                self.inst.handle,
                config.as_ptr(),
                context.as_ptr(),
                &mut schema,
            )
        };
        self.inst.status("initialize", rc)
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        let h = self.inst.handle("write_batch")?;
        let f = fnp(
            self.t().writer_write_batch,
            &self.inst.label,
            "writer_write_batch",
        )?;
        let data = StructArray::from(batch.clone()).into_data();
        let mut schema = FFI_ArrowSchema::try_from(data.data_type()).map_err(|e| {
            Error::schema(format!("cannot export a batch to {}: {e}", self.inst.label))
        })?;
        let mut array = FFI_ArrowArray::new(&data);
        // SAFETY: a live handle and valid structs; whatever the plugin does not move is
        // released when they drop (ABI rules).
        let rc = unsafe { f(h, &mut array, &mut schema) };
        self.inst.status("write_batch", rc)
    }

    fn finalize(&mut self, commit: &Commit) -> Result<CommitReport> {
        let h = self.inst.handle("finalize")?;
        let f = fnp(
            self.t().writer_finalize,
            &self.inst.label,
            "writer_finalize",
        )?;
        let commit = c_json(&serde_json::to_value(commit).unwrap_or(Value::Null))?;
        let mut out: *mut c_char = std::ptr::null_mut();
        // SAFETY: a live handle, JSON and a writable out pointer (ABI rules).
        let rc = unsafe { f(h, commit.as_ptr(), &mut out) };
        // SAFETY: whatever came back is the plugin's string (ABI rule).
        let text = unsafe { self.inst.lib.take_string(out) };
        self.inst.status("finalize", rc)?;
        // The commit has landed: a malformed report must not turn it into a failure (the
        // state would then not be recorded for data that is visible).
        Ok(report_or_default(&self.inst.label, text.as_deref()))
    }

    fn abort(&mut self) -> Result<()> {
        if self.inst.handle.is_null() {
            return Ok(());
        }
        let f = fnp(self.t().writer_abort, &self.inst.label, "writer_abort")?;
        // SAFETY: a live handle (ABI rule).
        let rc = unsafe { f(self.inst.handle) };
        self.inst.status("abort", rc)
    }

    fn close(&mut self) -> Result<()> {
        if self.inst.handle.is_null() || self.inst.closed {
            return Ok(());
        }
        self.inst.closed = true;
        let f = fnp(self.t().writer_close, &self.inst.label, "writer_close")?;
        // SAFETY: a live handle, closed once (ABI rules).
        let rc = unsafe { f(self.inst.handle) };
        self.inst.status("close", rc)
    }

    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        let h = self.inst.handle("committed_state")?;
        let Some(f) = self.t().writer_committed_state else {
            return Ok(None);
        };
        // SAFETY: a live handle and a writable out pointer (ABI rules).
        let Some(v) = self.json_out("committed_state", |out| unsafe { f(h, out) })? else {
            return Ok(None);
        };
        if v.is_null() {
            return Ok(None);
        }
        Ok(Some(CommittedState::from_json(&v)))
    }
}

impl Drop for NativeWriter {
    fn drop(&mut self) {
        if self.inst.handle.is_null() {
            return;
        }
        let _ = self.close();
        if let Some(free) = self.t().writer_free {
            // SAFETY: a live handle, freed once, last call on it (ABI rules).
            unsafe { free(self.inst.handle) };
        }
        self.inst.handle = std::ptr::null_mut();
    }
}

/// Parse a finalize report; after a successful commit a bad report is only a warning.
pub(crate) fn report_or_default(label: &str, text: Option<&str>) -> CommitReport {
    match text.map(serde_json::from_str::<Value>) {
        None => CommitReport::default(),
        Some(Ok(v)) => CommitReport::from_json(&v),
        Some(Err(e)) => {
            tracing::warn!("{label}: finalize succeeded but its report is not JSON ({e}); counting it as empty");
            CommitReport::default()
        }
    }
}

/// A plugin library found on the search path, for `dativo plugins list`.
pub struct Discovered {
    /// The file.
    pub path: PathBuf,
    /// The loaded library, or why it could not be loaded.
    pub library: Result<Arc<NativeLibrary>>,
}

/// Every shared library in the [`search_path`] directories, loaded.
pub fn discover() -> Vec<Discovered> {
    let mut out = Vec::new();
    for dir in search_path() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX))
            })
            .collect();
        files.sort();
        for path in files {
            let library = NativeLibrary::load(&path);
            out.push(Discovered { path, library });
        }
    }
    out
}
