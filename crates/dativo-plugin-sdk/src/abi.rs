//! The C ABI of `include/dativo_plugin.h`, as Rust types. Shared by the SDK (plugin side) and
//! dativo's native plugin host, so the two cannot drift apart.

use std::os::raw::{c_char, c_int, c_void};

use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema};

/// The ABI version this crate implements (`DATIVO_PLUGIN_ABI_VERSION`).
pub const ABI_VERSION: u32 = 1;
/// The name of the one symbol a plugin exports.
pub const INIT_SYMBOL: &[u8] = b"dativo_plugin_init";

/// `DATIVO_OK`.
pub const OK: c_int = 0;
/// `DATIVO_ERROR`: failed, retrying will not help.
pub const ERROR: c_int = 1;
/// `DATIVO_ERROR_RETRYABLE`: a transient failure.
pub const ERROR_RETRYABLE: c_int = 2;
/// `DATIVO_ERROR_CONFIG`: the configuration is invalid.
pub const ERROR_CONFIG: c_int = 3;
/// `DATIVO_ERROR_CONNECTION`: cannot reach or authenticate with a service (retryable).
pub const ERROR_CONNECTION: c_int = 4;
/// `DATIVO_ERROR_PANIC`: a bug inside the plugin (caught panic or exception).
pub const ERROR_PANIC: c_int = 5;
/// `DATIVO_ERROR_AUTH`: credentials rejected or a permission missing.
pub const ERROR_AUTH: c_int = 6;
/// `DATIVO_ERROR_DATA`: a value could not be read or converted.
pub const ERROR_DATA: c_int = 7;
/// `DATIVO_ERROR_SCHEMA`: a schema is missing, mismatched or unsupported.
pub const ERROR_SCHEMA: c_int = 8;
/// `DATIVO_ERROR_IO`: storage failed.
pub const ERROR_IO: c_int = 9;

/// An opaque reader or writer instance.
pub type Handle = *mut c_void;

/// `dativo_plugin_init(host_abi_version, out)`.
pub type InitFn = unsafe extern "C" fn(u32, *mut DativoPlugin) -> c_int;

/// `struct DativoPlugin`: the versioned, append-only function table. See the header for the
/// contract of every field; `None` is a NULL pointer.
#[repr(C)]
#[allow(missing_docs)]
pub struct DativoPlugin {
    pub abi_version: u32,
    pub struct_size: u32,
    pub manifest_json: *const c_char,
    pub last_error: Option<unsafe extern "C" fn() -> *const c_char>,
    pub free_string: Option<unsafe extern "C" fn(*mut c_char)>,

    pub reader_new: Option<unsafe extern "C" fn(*const c_char) -> Handle>,
    pub reader_initialize:
        Option<unsafe extern "C" fn(Handle, *const c_char, *const c_char) -> c_int>,
    pub reader_get_schema: Option<unsafe extern "C" fn(Handle, *mut FFI_ArrowSchema) -> c_int>,
    pub reader_read_batch:
        Option<unsafe extern "C" fn(Handle, *mut FFI_ArrowArray, *mut FFI_ArrowSchema) -> c_int>,
    pub reader_get_incremental_state:
        Option<unsafe extern "C" fn(Handle, *mut *mut c_char) -> c_int>,
    pub reader_close: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub reader_free: Option<unsafe extern "C" fn(Handle)>,

    pub writer_new: Option<unsafe extern "C" fn(*const c_char) -> Handle>,
    pub writer_initialize: Option<
        unsafe extern "C" fn(Handle, *const c_char, *const c_char, *mut FFI_ArrowSchema) -> c_int,
    >,
    pub writer_write_batch:
        Option<unsafe extern "C" fn(Handle, *mut FFI_ArrowArray, *mut FFI_ArrowSchema) -> c_int>,
    pub writer_finalize:
        Option<unsafe extern "C" fn(Handle, *const c_char, *mut *mut c_char) -> c_int>,
    pub writer_abort: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub writer_committed_state: Option<unsafe extern "C" fn(Handle, *mut *mut c_char) -> c_int>,
    pub writer_close: Option<unsafe extern "C" fn(Handle) -> c_int>,
    pub writer_free: Option<unsafe extern "C" fn(Handle)>,
    pub last_error_code: Option<unsafe extern "C" fn() -> c_int>,
}

impl DativoPlugin {
    /// An all-NULL table, as the host hands it to `dativo_plugin_init`.
    pub fn zeroed() -> Self {
        DativoPlugin {
            abi_version: 0,
            struct_size: 0,
            manifest_json: std::ptr::null(),
            last_error: None,
            free_string: None,
            reader_new: None,
            reader_initialize: None,
            reader_get_schema: None,
            reader_read_batch: None,
            reader_get_incremental_state: None,
            reader_close: None,
            reader_free: None,
            writer_new: None,
            writer_initialize: None,
            writer_write_batch: None,
            writer_finalize: None,
            writer_abort: None,
            writer_committed_state: None,
            writer_close: None,
            writer_free: None,
            last_error_code: None,
        }
    }
}
