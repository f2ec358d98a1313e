//! dativo's plugin hosts: how a job's `{type: custom, implementation: "…"}` becomes a running
//! [`Reader`](dativo_core::Reader) or [`Writer`](dativo_core::Writer).
//!
//! | implementation | mechanism |
//! |---|---|
//! | `./libx.so`, `./libx.so#orders`, `libx.so#orders`, `x#orders` | a native library ([`native`]) |
//! | `package.module.Class`, `entrypoint:NAME` | a Python class, through the bridge library `libdativo_python.so` ([`python`]) |
//! | `grpc://host:port`, `grpcs://…` | an Arrow Flight server ([`flight`]) |
//! | `registry:NAME@REQ`, `registry:NAME@REQ#orders` | a plugin installed from a registry index, any kind ([`registry`]) |
//!
//! A relative library path is looked up next to the job file, then in the working directory;
//! a bare file name in `DATIVO_PLUGIN_PATH` (`:`-separated), `~/.dativo/plugins`, next to the
//! job file and in the working directory — see [`native::search_path`]. A job file may load a
//! library only from its own directory, the plugin path or a directory allowed with
//! `--allow-plugin-path` / `DATIVO_ALLOW_PLUGIN_PATH` ([`native::locate_job_library`]);
//! [`check_custom`] checks that without loading anything (`dativo validate`).

// Loading libraries and calling through a C ABI needs unsafe; each block names its ABI rule.
#![allow(unsafe_code)]

pub mod flight;
pub mod native;
pub mod registry;

use std::path::Path;

use dativo_core::{Error, Result};

/// What a custom `implementation:` string names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Implementation {
    /// A native shared library and, after `#`, the reader/writer inside it.
    Native {
        /// The library as written (a path or a file name).
        library: String,
        /// The reader or writer name after `#`, if any.
        name: Option<String>,
    },
    /// A Python class path, `package.module.Class`.
    Python(String),
    /// An Arrow Flight endpoint, `grpc://host:port` or `grpc+tls://host:port`.
    Grpc(String),
    /// An installed registry plugin: what follows `registry:` (`NAME@REQ#item`).
    Registry(String),
}

impl Implementation {
    /// Classify an `implementation:` string.
    pub fn parse(s: &str) -> Implementation {
        let s = s.trim();
        if let Some(spec) = s.strip_prefix("registry:") {
            return Implementation::Registry(spec.trim().to_string());
        }
        if s.starts_with("grpc://") || s.starts_with("grpc+tls://") {
            return Implementation::Grpc(s.to_string());
        }
        let (library, name) = match s.rsplit_once('#') {
            Some((l, n)) if !n.is_empty() => (l.to_string(), Some(n.to_string())),
            Some((l, _)) => (l.to_string(), None),
            None => (s.to_string(), None),
        };
        let looks_native = library.contains('/')
            || library.contains('\\')
            || [".so", ".dylib", ".dll"]
                .iter()
                .any(|ext| library.ends_with(ext) || library.contains(&format!("{ext}.")))
            || name.is_some();
        if looks_native || !library.contains('.') {
            Implementation::Native { library, name }
        } else {
            Implementation::Python(s.to_string())
        }
    }
}

/// Which side of a job an implementation fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `source.reader`.
    Reader,
    /// `target.writer`.
    Writer,
}

impl Side {
    /// `"reader"` or `"writer"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Reader => "reader",
            Side::Writer => "writer",
        }
    }
}

/// A resolved custom implementation: everything needed to create instances.
#[derive(Clone)]
pub struct Resolved {
    /// Shown in logs and errors: `plugin 'c_sequence' reader 'sequence'`.
    pub label: String,
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    Native {
        library: std::sync::Arc<native::NativeLibrary>,
        name: String,
    },
    Flight(std::sync::Arc<flight::FlightEndpoint>),
}

const GRPC_ONLY: &str =
    "`command`, `token` and `tls_ca` only apply to grpc:// (Arrow Flight) plugins";

/// Resolve a job's `{type: custom, …}` block (with a grpc:// plugin's `command`, `token`,
/// `tls_ca`); `base_dir` is the job file's directory. A native library must pass
/// [`native::locate_job_library`] before it is loaded.
pub fn resolve_custom(
    c: &dativo_core::job::CustomImplementation,
    side: Side,
    base_dir: Option<&Path>,
) -> Result<Resolved> {
    match Implementation::parse(&c.implementation) {
        Implementation::Grpc(url) => {
            let ep = flight::FlightEndpoint::new(&url, c, base_dir)?;
            Ok(Resolved {
                label: format!("flight {} '{url}'", side.as_str()),
                kind: Kind::Flight(std::sync::Arc::new(ep)),
            })
        }
        Implementation::Registry(spec) => resolve_registry(&spec, c, side, base_dir),
        _ if !c.command.is_empty() || c.token.is_some() || c.tls_ca.is_some() => {
            Err(Error::config(GRPC_ONLY))
        }
        Implementation::Native { library, name } => {
            let path = native::locate_job_library(&library, base_dir)?;
            resolve_native(&library, name, &path, side)
        }
        Implementation::Python(_) => resolve(&c.implementation, side, base_dir),
    }
}

/// `registry:NAME@REQ#item`: the installed plugin (its files verified against the install
/// record and the lock file; for Python, the version the virtualenv holds), then loaded like
/// any other of its kind. Its libraries are loaded from the install directory without the
/// job-directory policy: they were verified at install (signed by a trusted publisher) and
/// now (hashes).
fn resolve_registry(
    spec: &str,
    c: &dativo_core::job::CustomImplementation,
    side: Side,
    base_dir: Option<&Path>,
) -> Result<Resolved> {
    if !c.command.is_empty() {
        return Err(Error::config(
            "`command` does not apply to registry: plugins (a Flight plugin's command comes from its manifest)",
        ));
    }
    let (label, target) = registry::resolve(spec, side, base_dir)?;
    match target {
        registry::Target::Native { library, item } => {
            let mut r = resolve_native(&library.display().to_string(), Some(item), &library, side)?;
            r.label = label;
            Ok(r)
        }
        registry::Target::Python(class) => {
            if c.token.is_some() || c.tls_ca.is_some() {
                return Err(Error::config(GRPC_ONLY));
            }
            let mut r = python(&class, side)?;
            r.label = label;
            Ok(r)
        }
        registry::Target::Flight { url, command, dir } => {
            let mut cc = c.clone();
            cc.implementation = url;
            cc.command = command;
            // A job's own tls_ca stays relative to the job file.
            cc.tls_ca = c.tls_ca.as_ref().map(|p| match base_dir {
                Some(b) if p.is_relative() => b.join(p),
                _ => p.clone(),
            });
            // The server runs in its installation directory: its files are found from there.
            let ep = flight::FlightEndpoint::new(&cc.implementation, &cc, Some(&dir))?;
            Ok(Resolved {
                label,
                kind: Kind::Flight(std::sync::Arc::new(ep)),
            })
        }
    }
}

/// Check a job's `{type: custom, …}` block without loading or running anything: a native
/// library exists, is a regular file and may be loaded by a job in `base_dir`
/// ([`native::locate_job_library`]); a grpc:// endpoint is well formed. A Python class path is
/// not looked at (importing it runs its module's code).
pub fn check_custom(
    c: &dativo_core::job::CustomImplementation,
    base_dir: Option<&Path>,
) -> Result<()> {
    match Implementation::parse(&c.implementation) {
        Implementation::Grpc(url) => flight::FlightEndpoint::new(&url, c, base_dir).map(|_| ()),
        Implementation::Registry(spec) => {
            if !c.command.is_empty() {
                return Err(Error::config(
                    "`command` does not apply to registry: plugins (a Flight plugin's command comes from its manifest)",
                ));
            }
            registry::find(&spec, base_dir).map(|_| ())
        }
        _ if !c.command.is_empty() || c.token.is_some() || c.tls_ca.is_some() => {
            Err(Error::config(GRPC_ONLY))
        }
        Implementation::Native { library, .. } => {
            native::locate_job_library(&library, base_dir).map(|_| ())
        }
        Implementation::Python(_) => Ok(()),
    }
}

/// Resolve a custom implementation for `side`: load the library, check its ABI and that it
/// provides the named reader/writer. `base_dir` is the job file's directory. No path policy:
/// for implementations the user names directly (`dativo plugin test`); a job file's go through
/// [`resolve_custom`].
pub fn resolve(implementation: &str, side: Side, base_dir: Option<&Path>) -> Result<Resolved> {
    match Implementation::parse(implementation) {
        Implementation::Native { library, name } => {
            let path = native::find_library(&library, base_dir)?;
            resolve_native(&library, name, &path, side)
        }
        Implementation::Python(class) => python(&class, side),
        Implementation::Grpc(url) => resolve_custom(
            &dativo_core::job::CustomImplementation::new(url),
            side,
            base_dir,
        ),
        Implementation::Registry(_) => resolve_custom(
            &dativo_core::job::CustomImplementation::new(implementation),
            side,
            base_dir,
        ),
    }
}

/// Load the library at `path` (named `library` in the job) and pick its reader/writer `name`.
fn resolve_native(
    library: &str,
    name: Option<String>,
    path: &Path,
    side: Side,
) -> Result<Resolved> {
    let lib = native::NativeLibrary::load(path)?;
    let provided = match side {
        Side::Reader => &lib.manifest.readers,
        Side::Writer => &lib.manifest.writers,
    };
    let list = || {
        if provided.is_empty() {
            "none".to_string()
        } else {
            provided
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let name = match name {
        Some(n) if provided.iter().any(|p| p.name == n) => n,
        Some(n) if lib.manifest.dynamic => {
            lib.probe(side, &n)?;
            n
        }
        Some(n) => {
            return Err(Error::config(format!(
                "plugin '{}' ({}) has no {} `{n}`; it provides {}s: {}",
                lib.manifest.name,
                path.display(),
                side.as_str(),
                side.as_str(),
                list()
            )))
        }
        None if provided.len() == 1 => provided[0].name.clone(),
        None => {
            return Err(Error::config(format!(
                "plugin '{}' ({}) provides {} {}s ({}): name one with `{}#<name>`",
                lib.manifest.name,
                path.display(),
                provided.len(),
                side.as_str(),
                list(),
                library
            )))
        }
    };
    Ok(Resolved {
        label: format!("plugin '{}' {} '{name}'", lib.manifest.name, side.as_str()),
        kind: Kind::Native { library: lib, name },
    })
}

/// Where the Python bridge library (`libdativo_python.so`) is: `DATIVO_PYTHON_BRIDGE`, else next
/// to the running `dativo` binary, else the plugin search path.
pub fn python_bridge() -> Result<std::path::PathBuf> {
    let file = format!(
        "{}dativo_python{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    if let Some(p) = std::env::var_os("DATIVO_PYTHON_BRIDGE") {
        return Ok(p.into());
    }
    let mut tried = Vec::new();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    for dir in exe_dir.into_iter().chain(native::search_path()) {
        let c = dir.join(&file);
        if c.is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(Error::config(format!(
        "Python plugins need the bridge library {file}, built with dativo (`cargo build --release -p dativo-python` in the checkout puts it next to the binary); not found at {} — or set DATIVO_PYTHON_BRIDGE",
        tried.join(", ")
    )))
}

/// Resolve a Python class path (`package.module.Class`) or an installed entry point
/// (`entrypoint:NAME` from the `dativo.readers` / `dativo.writers` groups) through the bridge.
/// The class is imported now, so a missing module fails `dativo validate`.
pub fn python(class: &str, side: Side) -> Result<Resolved> {
    let lib = native::NativeLibrary::load(&python_bridge()?)?;
    lib.probe(side, class)?;
    let shown = class.strip_prefix("entrypoint:").unwrap_or(class);
    Ok(Resolved {
        label: format!("python {} '{shown}'", side.as_str()),
        kind: Kind::Native {
            library: lib,
            name: class.to_string(),
        },
    })
}

impl Resolved {
    /// A new reader instance (a native plugin's `reader_new` runs at `initialize`).
    pub fn reader(&self) -> Box<dyn dativo_core::Reader> {
        match &self.kind {
            Kind::Native { library, name } => {
                Box::new(native::NativeReader::new(library.clone(), name))
            }
            Kind::Flight(ep) => Box::new(flight::FlightReader::new(ep.clone())),
        }
    }

    /// A new writer instance (a native plugin's `writer_new` runs at `initialize`).
    pub fn writer(&self) -> Box<dyn dativo_core::Writer> {
        match &self.kind {
            Kind::Native { library, name } => {
                Box::new(native::NativeWriter::new(library.clone(), name))
            }
            Kind::Flight(ep) => Box::new(flight::FlightWriter::new(ep.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_libraries_must_lie_in_allowed_places() {
        let root = std::env::temp_dir().join(format!("dativo-policy-{}", std::process::id()));
        let jobs = root.join("jobs");
        std::fs::create_dir_all(jobs.join("plugins")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere")).unwrap();
        // Never loaded: only located, so any bytes will do.
        std::fs::write(jobs.join("plugins/libin.so"), b"not loaded").unwrap();
        std::fs::write(root.join("elsewhere/libout.so"), b"not loaded").unwrap();
        let c = |i: &str| dativo_core::job::CustomImplementation::new(i);
        assert!(check_custom(&c("./plugins/libin.so#r"), Some(&jobs)).is_ok());
        let e = check_custom(&c("../elsewhere/libout.so#r"), Some(&jobs)).unwrap_err();
        assert_eq!(e.kind(), dativo_core::ErrorKind::Config);
        assert!(
            e.message().contains("outside the job file's directory"),
            "{e}"
        );
        assert!(e.message().contains("--allow-plugin-path"), "{e}");
        let e = check_custom(&c("./plugins"), Some(&jobs)).unwrap_err();
        assert!(e.message().contains("not found"), "{e}");
        native::allow_plugin_dirs([root.join("elsewhere")]);
        assert!(check_custom(&c("../elsewhere/libout.so#r"), Some(&jobs)).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn classifies_implementations() {
        let native = |l: &str, n: Option<&str>| Implementation::Native {
            library: l.into(),
            name: n.map(Into::into),
        };
        assert_eq!(
            Implementation::parse("./libx.so"),
            native("./libx.so", None)
        );
        assert_eq!(
            Implementation::parse("./plugins/libx.so#orders"),
            native("./plugins/libx.so", Some("orders"))
        );
        assert_eq!(
            Implementation::parse("libx.so.1#a"),
            native("libx.so.1", Some("a"))
        );
        assert_eq!(
            Implementation::parse("my_plugin#a"),
            native("my_plugin", Some("a"))
        );
        assert_eq!(
            Implementation::parse("my_plugin"),
            native("my_plugin", None)
        );
        assert_eq!(
            Implementation::parse("my_rust_reader.RustPostgresReader"),
            Implementation::Python("my_rust_reader.RustPostgresReader".into())
        );
        assert_eq!(
            Implementation::parse("grpc://127.0.0.1:50051"),
            Implementation::Grpc("grpc://127.0.0.1:50051".into())
        );
    }
}
