//! The plugin side of the ABI: C functions that forward to the author's [`Reader`] / [`Writer`].

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, StructArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};

use crate::abi::{self, DativoPlugin, Handle};
use dativo_core::{
    Commit, Error, ErrorKind, Reader, ReaderContext, Result, Shard, Writer, WriterContext,
};

/// A reader the plugin provides (built by [`export_plugin!`](crate::export_plugin)).
pub struct ReaderDef {
    /// The name jobs use after `#`: `libx.so#orders`.
    pub name: &'static str,
    /// A new, uninitialized instance.
    pub create: fn() -> Box<dyn Reader>,
}

/// A writer the plugin provides (built by [`export_plugin!`](crate::export_plugin)).
pub struct WriterDef {
    /// The name jobs use after `#`: `libx.so#csv`.
    pub name: &'static str,
    /// A new, uninitialized instance.
    pub create: fn() -> Box<dyn Writer>,
}

/// Creates a reader from a name the plugin does not list (see [`PluginDef::dynamic_reader`]).
pub type DynamicReader = fn(&str) -> Result<Box<dyn Reader>>;
/// Creates a writer from a name the plugin does not list (see [`PluginDef::dynamic_writer`]).
pub type DynamicWriter = fn(&str) -> Result<Box<dyn Writer>>;

/// What a plugin library provides (built by [`export_plugin!`](crate::export_plugin)).
pub struct PluginDef {
    /// The plugin's name, shown by `dativo plugins list` and in errors.
    pub name: &'static str,
    /// The plugin's version.
    pub version: &'static str,
    /// One line about the plugin.
    pub description: &'static str,
    /// The readers it provides.
    pub readers: &'static [ReaderDef],
    /// The writers it provides.
    pub writers: &'static [WriterDef],
    /// Readers created from any name not in `readers` (a bridge to another runtime, e.g. a
    /// Python class path); the manifest then says `"dynamic": true`.
    pub dynamic_reader: Option<DynamicReader>,
    /// Writers created from any name not in `writers`.
    pub dynamic_writer: Option<DynamicWriter>,
}

static PLUGIN: OnceLock<(&'static PluginDef, CString)> = OnceLock::new();

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
    static LAST_CODE: std::cell::Cell<c_int> = const { std::cell::Cell::new(0) };
}

fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn code_for(e: &Error) -> c_int {
    match (e.kind(), e.is_retryable()) {
        (ErrorKind::Config, _) => abi::ERROR_CONFIG,
        (ErrorKind::Connect, true) => abi::ERROR_CONNECTION,
        (_, true) => abi::ERROR_RETRYABLE,
        (ErrorKind::Auth, false) => abi::ERROR_AUTH,
        (ErrorKind::Data, false) => abi::ERROR_DATA,
        (ErrorKind::Schema, false) => abi::ERROR_SCHEMA,
        (ErrorKind::Io, false) => abi::ERROR_IO,
        _ => abi::ERROR,
    }
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Run `f`, turning its error or panic into a status code and a thread-local message; the code
/// is also kept for `last_error_code` (calls such as `reader_new` return only NULL).
fn guard(what: &str, f: impl FnOnce() -> Result<()>) -> c_int {
    let code = guard_inner(what, f);
    LAST_CODE.with(|c| c.set(code));
    code
}

fn guard_inner(what: &str, f: impl FnOnce() -> Result<()>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => abi::OK,
        Ok(Err(e)) => {
            set_error(&e.to_string());
            code_for(&e)
        }
        Err(p) => {
            set_error(&format!(
                "panicked in {what}: {}",
                panic_message(p.as_ref())
            ));
            abi::ERROR_PANIC
        }
    }
}

/// # Safety
/// `s` is NULL or a valid NUL-terminated string for the duration of the call (ABI rule).
unsafe fn json_arg(s: *const c_char, what: &str) -> Result<Value> {
    if s.is_null() {
        return Ok(Value::Null);
    }
    // SAFETY: see the function's contract.
    let text = unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| Error::plugin(format!("{what} is not UTF-8")))?;
    serde_json::from_str(text).map_err(|e| Error::plugin(format!("{what} is not valid JSON: {e}")))
}

fn json_out(v: &Value) -> *mut c_char {
    CString::new(v.to_string())
        .map(CString::into_raw)
        .unwrap_or(ptr::null_mut())
}

fn shard_of(ctx: &Value) -> Shard {
    serde_json::from_value(ctx.get("shard").cloned().unwrap_or(Value::Null)).unwrap_or_default()
}

fn str_of(ctx: &Value, key: &str) -> String {
    ctx.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// Import a batch dativo passed in (moving it out of dativo's structs).
///
/// # Safety
/// `array` and `schema` point to valid Arrow C structs (ABI rule).
unsafe fn import_batch(
    array: *mut FFI_ArrowArray,
    schema: *mut FFI_ArrowSchema,
) -> Result<RecordBatch> {
    // SAFETY: moving out leaves released (empty) structs behind, as the Arrow spec describes.
    let (array, schema) = unsafe {
        (
            ptr::replace(array, FFI_ArrowArray::empty()),
            ptr::replace(schema, FFI_ArrowSchema::empty()),
        )
    };
    // SAFETY: dativo exported both from one valid ArrayData.
    let data = unsafe { from_ffi(array, &schema) }
        .map_err(|e| Error::plugin(format!("cannot import batch: {e}")))?;
    let s = StructArray::from(data);
    Ok(RecordBatch::from(s))
}

struct ReaderHandle {
    inner: Box<dyn Reader>,
}

struct WriterHandle {
    inner: Box<dyn Writer>,
    schema: Option<SchemaRef>,
}

/// # Safety
/// `h` is a handle returned by `reader_new` and not yet freed (ABI rule).
unsafe fn reader<'a>(h: Handle) -> &'a mut ReaderHandle {
    // SAFETY: see the function's contract.
    unsafe { &mut *(h as *mut ReaderHandle) }
}

/// # Safety
/// `h` is a handle returned by `writer_new` and not yet freed (ABI rule).
unsafe fn writer<'a>(h: Handle) -> &'a mut WriterHandle {
    // SAFETY: see the function's contract.
    unsafe { &mut *(h as *mut WriterHandle) }
}

fn def() -> &'static PluginDef {
    PLUGIN.get().expect("dativo_plugin_init was called").0
}

unsafe extern "C" fn last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

unsafe extern "C" fn last_error_code() -> c_int {
    LAST_CODE.with(|c| c.get())
}

unsafe extern "C" fn free_string(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: every string handed out came from CString::into_raw.
        drop(unsafe { CString::from_raw(s) });
    }
}

unsafe extern "C" fn reader_new(name: *const c_char) -> Handle {
    let mut out: Handle = ptr::null_mut();
    let code = guard("reader_new", || {
        // SAFETY: NUL-terminated name (ABI rule).
        let name = unsafe { json_name(name) }?;
        let d = def();
        let inner = match (d.readers.iter().find(|r| r.name == name), d.dynamic_reader) {
            (Some(r), _) => (r.create)(),
            (None, Some(make)) => make(&name)?,
            (None, None) => {
                return Err(Error::config(format!(
                    "plugin `{}` has no reader `{name}`; it provides: {}",
                    d.name,
                    names(d.readers.iter().map(|r| r.name))
                )))
            }
        };
        out = Box::into_raw(Box::new(ReaderHandle { inner })) as Handle;
        Ok(())
    });
    if code == abi::OK {
        out
    } else {
        ptr::null_mut()
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = it.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// # Safety
/// `s` is NULL or NUL-terminated (ABI rule).
unsafe fn json_name(s: *const c_char) -> Result<String> {
    if s.is_null() {
        return Ok(String::new());
    }
    // SAFETY: see the function's contract.
    Ok(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned())
}

unsafe extern "C" fn reader_initialize(
    h: Handle,
    config: *const c_char,
    context: *const c_char,
) -> c_int {
    guard("initialize", || {
        // SAFETY: ABI rules for handles and strings.
        let (r, config, ctx) = unsafe {
            (
                reader(h),
                json_arg(config, "config")?,
                json_arg(context, "context")?,
            )
        };
        let state = ctx.get("state").cloned().filter(|s| !s.is_null());
        let rctx = ReaderContext {
            job: str_of(&ctx, "job"),
            stream: str_of(&ctx, "stream"),
            run_id: str_of(&ctx, "run_id"),
            state,
            shard: shard_of(&ctx),
        };
        r.inner.initialize(&config, &rctx)
    })
}

unsafe extern "C" fn reader_get_schema(h: Handle, out: *mut FFI_ArrowSchema) -> c_int {
    guard("get_schema", || {
        // SAFETY: ABI rule for handles.
        let r = unsafe { reader(h) };
        let schema = r.inner.get_schema()?;
        let ffi = FFI_ArrowSchema::try_from(schema.as_ref())
            .map_err(|e| Error::schema(format!("cannot export schema: {e}")))?;
        // SAFETY: `out` is writable (ABI rule); dativo owns what we write.
        unsafe { ptr::write(out, ffi) };
        Ok(())
    })
}

unsafe extern "C" fn reader_read_batch(
    h: Handle,
    out: *mut FFI_ArrowArray,
    out_schema: *mut FFI_ArrowSchema,
) -> c_int {
    guard("read_batch", || {
        // SAFETY: ABI rule for handles.
        let r = unsafe { reader(h) };
        let Some(batch) = r.inner.read_batch()? else {
            return Ok(());
        };
        let data = StructArray::from(batch).into_data();
        let schema = FFI_ArrowSchema::try_from(data.data_type())
            .map_err(|e| Error::schema(format!("cannot export batch schema: {e}")))?;
        let array = FFI_ArrowArray::new(&data);
        // SAFETY: both are writable (ABI rule); dativo owns what we write.
        unsafe {
            ptr::write(out, array);
            ptr::write(out_schema, schema);
        }
        Ok(())
    })
}

unsafe extern "C" fn reader_get_incremental_state(h: Handle, out: *mut *mut c_char) -> c_int {
    guard("get_incremental_state", || {
        // SAFETY: ABI rule for handles.
        let r = unsafe { reader(h) };
        let s = r.inner.get_incremental_state()?;
        let p = match s {
            None | Some(Value::Null) => ptr::null_mut(),
            Some(v) => json_out(&v),
        };
        // SAFETY: `out` is writable (ABI rule).
        unsafe { *out = p };
        Ok(())
    })
}

unsafe extern "C" fn reader_close(h: Handle) -> c_int {
    // SAFETY: ABI rule for handles.
    guard("close", || unsafe { reader(h) }.inner.close())
}

unsafe extern "C" fn reader_free(h: Handle) {
    if !h.is_null() {
        let _ = catch_unwind(|| {
            // SAFETY: the handle came from Box::into_raw in reader_new; freed once (ABI rule).
            drop(unsafe { Box::from_raw(h as *mut ReaderHandle) })
        });
    }
}

unsafe extern "C" fn writer_new(name: *const c_char) -> Handle {
    let mut out: Handle = ptr::null_mut();
    let code = guard("writer_new", || {
        // SAFETY: NUL-terminated name (ABI rule).
        let name = unsafe { json_name(name) }?;
        let d = def();
        let inner = match (d.writers.iter().find(|w| w.name == name), d.dynamic_writer) {
            (Some(w), _) => (w.create)(),
            (None, Some(make)) => make(&name)?,
            (None, None) => {
                return Err(Error::config(format!(
                    "plugin `{}` has no writer `{name}`; it provides: {}",
                    d.name,
                    names(d.writers.iter().map(|w| w.name))
                )))
            }
        };
        out = Box::into_raw(Box::new(WriterHandle {
            inner,
            schema: None,
        })) as Handle;
        Ok(())
    });
    if code == abi::OK {
        out
    } else {
        ptr::null_mut()
    }
}

unsafe extern "C" fn writer_initialize(
    h: Handle,
    config: *const c_char,
    context: *const c_char,
    schema: *mut FFI_ArrowSchema,
) -> c_int {
    guard("initialize", || {
        // SAFETY: ABI rules for handles and strings.
        let (w, config, ctx) = unsafe {
            (
                writer(h),
                json_arg(config, "config")?,
                json_arg(context, "context")?,
            )
        };
        // SAFETY: a valid schema struct; we read it without taking it (dativo releases it).
        let schema = Schema::try_from(unsafe { &*schema })
            .map_err(|e| Error::schema(format!("cannot import schema: {e}")))?;
        let schema = Arc::new(schema);
        w.schema = Some(schema.clone());
        let wctx = WriterContext {
            job: str_of(&ctx, "job"),
            stream: str_of(&ctx, "stream"),
            run_id: str_of(&ctx, "run_id"),
            schema,
            shard: shard_of(&ctx),
            source: ctx
                .get("source")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .unwrap_or_default(),
        };
        w.inner.initialize(&config, &wctx)
    })
}

unsafe extern "C" fn writer_write_batch(
    h: Handle,
    array: *mut FFI_ArrowArray,
    schema: *mut FFI_ArrowSchema,
) -> c_int {
    guard("write_batch", || {
        // SAFETY: ABI rules for handles and Arrow structs.
        let (w, batch) = unsafe { (writer(h), import_batch(array, schema)?) };
        // Field metadata and names come from the declared schema, the columns from the batch.
        let batch = match &w.schema {
            Some(s) if matches!(batch.schema().fields().len(), n if n == s.fields().len()) => {
                RecordBatch::try_new(s.clone(), batch.columns().to_vec()).unwrap_or(batch)
            }
            _ => batch,
        };
        w.inner.write_batch(&batch)
    })
}

unsafe extern "C" fn writer_finalize(
    h: Handle,
    commit: *const c_char,
    out: *mut *mut c_char,
) -> c_int {
    guard("finalize", || {
        // SAFETY: ABI rules for handles and strings.
        let (w, commit) = unsafe { (writer(h), json_arg(commit, "commit")?) };
        let commit: Commit = serde_json::from_value(commit)
            .map_err(|e| Error::plugin(format!("commit JSON: {e}")))?;
        let report = w.inner.finalize(&commit)?;
        let v = serde_json::to_value(&report).unwrap_or_else(|_| json!({}));
        // SAFETY: `out` is writable (ABI rule).
        unsafe { *out = json_out(&v) };
        Ok(())
    })
}

unsafe extern "C" fn writer_abort(h: Handle) -> c_int {
    // SAFETY: ABI rule for handles.
    guard("abort", || unsafe { writer(h) }.inner.abort())
}

unsafe extern "C" fn writer_committed_state(h: Handle, out: *mut *mut c_char) -> c_int {
    guard("committed_state", || {
        // SAFETY: ABI rule for handles.
        let w = unsafe { writer(h) };
        let p = match w.inner.committed_state()? {
            None => ptr::null_mut(),
            Some(c) => json_out(&serde_json::to_value(&c).unwrap_or(Value::Null)),
        };
        // SAFETY: `out` is writable (ABI rule).
        unsafe { *out = p };
        Ok(())
    })
}

unsafe extern "C" fn writer_close(h: Handle) -> c_int {
    // SAFETY: ABI rule for handles.
    guard("close", || unsafe { writer(h) }.inner.close())
}

unsafe extern "C" fn writer_free(h: Handle) {
    if !h.is_null() {
        let _ = catch_unwind(|| {
            // SAFETY: the handle came from Box::into_raw in writer_new; freed once (ABI rule).
            drop(unsafe { Box::from_raw(h as *mut WriterHandle) })
        });
    }
}

fn manifest(d: &PluginDef) -> String {
    json!({
        "name": d.name,
        "version": d.version,
        "description": d.description,
        "sdk": format!("dativo-plugin-sdk {}", env!("CARGO_PKG_VERSION")),
        "dynamic": d.dynamic_reader.is_some() || d.dynamic_writer.is_some(),
        "readers": d.readers.iter().map(|r| json!({"name": r.name})).collect::<Vec<_>>(),
        "writers": d.writers.iter().map(|w| json!({"name": w.name})).collect::<Vec<_>>(),
    })
    .to_string()
}

/// What [`export_plugin!`](crate::export_plugin) calls; not for direct use.
///
/// # Safety
/// `out` points to a writable `DativoPlugin`.
#[doc(hidden)]
pub unsafe fn __init(
    def: &'static PluginDef,
    host_abi_version: u32,
    out: *mut DativoPlugin,
) -> c_int {
    if out.is_null() {
        return abi::ERROR;
    }
    if host_abi_version < 1 {
        set_error(&format!(
            "plugin `{}` needs dativo plugin ABI 1 or newer; the host offers {host_abi_version}",
            def.name
        ));
        return abi::ERROR;
    }
    let (_, manifest) =
        PLUGIN.get_or_init(|| (def, CString::new(manifest(def)).unwrap_or_default()));
    let has_readers = !def.readers.is_empty() || def.dynamic_reader.is_some();
    let has_writers = !def.writers.is_empty() || def.dynamic_writer.is_some();
    let table = DativoPlugin {
        abi_version: abi::ABI_VERSION,
        struct_size: std::mem::size_of::<DativoPlugin>() as u32,
        manifest_json: manifest.as_ptr(),
        last_error: Some(last_error),
        free_string: Some(free_string),
        reader_new: has_readers.then_some(reader_new as _),
        reader_initialize: has_readers.then_some(reader_initialize as _),
        reader_get_schema: has_readers.then_some(reader_get_schema as _),
        reader_read_batch: has_readers.then_some(reader_read_batch as _),
        reader_get_incremental_state: has_readers.then_some(reader_get_incremental_state as _),
        reader_close: has_readers.then_some(reader_close as _),
        reader_free: has_readers.then_some(reader_free as _),
        writer_new: has_writers.then_some(writer_new as _),
        writer_initialize: has_writers.then_some(writer_initialize as _),
        writer_write_batch: has_writers.then_some(writer_write_batch as _),
        writer_finalize: has_writers.then_some(writer_finalize as _),
        writer_abort: has_writers.then_some(writer_abort as _),
        writer_committed_state: has_writers.then_some(writer_committed_state as _),
        writer_close: has_writers.then_some(writer_close as _),
        writer_free: has_writers.then_some(writer_free as _),
        last_error_code: Some(last_error_code),
    };
    // The host announces the size of its table; never write past it. Every host so far knows
    // the whole v1 table, which is all this SDK fills.
    // SAFETY: `out` is writable (checked non-null; ABI rule).
    let host_size = unsafe { (*out).struct_size } as usize;
    if host_size != 0 && host_size < std::mem::size_of::<DativoPlugin>() {
        set_error(&format!(
            "plugin `{}` fills a {}-byte table; the host offers {host_size} bytes",
            def.name,
            std::mem::size_of::<DativoPlugin>()
        ));
        return abi::ERROR;
    }
    // SAFETY: `out` is writable for the whole v1 table (checked above; ABI rule).
    unsafe { ptr::write(out, table) };
    abi::OK
}

#[allow(dead_code)]
fn _assert_types(_: &DataType, _: &dyn Array) {}
