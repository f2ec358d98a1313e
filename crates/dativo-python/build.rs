//! Link the bridge against the libpython it was configured with, and record where that library
//! lives (an rpath, so the bridge loads without LD_LIBRARY_PATH, and its file name, so the
//! bridge can re-open it with RTLD_GLOBAL for extension modules such as pyarrow).

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    let cfg = pyo3_build_config::get();
    if let Some(dir) = cfg.lib_dir() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        let name = cfg.lib_name().unwrap_or("python3");
        println!("cargo:rustc-env=DATIVO_LIBPYTHON={dir}/lib{name}.so");
    } else {
        println!("cargo:rustc-env=DATIVO_LIBPYTHON=");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
