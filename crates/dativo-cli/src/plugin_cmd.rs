//! `dativo plugins list`, `dativo plugin test` and `dativo plugin new`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use dativo_core::conformance::{self, Report};
use dativo_core::{Error, Result};
use dativo_plugins::native::{self, NativeLibrary};
use dativo_plugins::{Implementation, Side};
use serde_json::Value;

/// `dativo plugins list`: built-ins, then plugin libraries on the search path.
pub fn list() -> Result<ExitCode> {
    println!("built-in readers:");
    for r in dativo_connectors::readers() {
        println!("  {:<18} {}", r.name, r.summary);
    }
    println!("built-in writers:");
    for w in dativo_connectors::writers() {
        println!("  {:<18} {}", w.name, w.summary);
    }
    let dirs = native::search_path();
    let found = native::discover();
    println!(
        "plugins (in {}):",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    if found.is_empty() {
        println!("  none — put plugin libraries there, or name one by path in a job:");
        println!("  reader: {{type: custom, implementation: \"./libmy_plugin.so#my_reader\"}}");
    }
    for d in found {
        match d.library {
            Ok(lib) => {
                let m = &lib.manifest;
                println!(
                    "  {} {}  {}  (ABI {})",
                    m.name,
                    m.version,
                    d.path.display(),
                    lib.abi_version
                );
                if !m.description.is_empty() {
                    println!("      {}", m.description);
                }
                for r in &m.readers {
                    println!(
                        "      reader {}#{}",
                        d.path.file_name().unwrap_or_default().to_string_lossy(),
                        r.name
                    );
                }
                for w in &m.writers {
                    println!(
                        "      writer {}#{}",
                        d.path.file_name().unwrap_or_default().to_string_lossy(),
                        w.name
                    );
                }
            }
            Err(e) => println!("  {}  (not loadable: {})", d.path.display(), e.message()),
        }
    }
    list_python();
    Ok(ExitCode::SUCCESS)
}

/// The Python bridge and the readers/writers installed Python packages register as entry
/// points (in `$VIRTUAL_ENV`, else the `python3` on PATH).
fn list_python() {
    match dativo_plugins::python_bridge() {
        Ok(p) => println!("python (in-process, bridge {}):", p.display()),
        Err(_) => {
            println!("python: the bridge library libdativo_python.so is not next to this binary, so Python readers and writers cannot load;");
            println!("  build it in the dativo checkout: cargo build --release -p dativo-python   (or `cargo build --release --workspace`;");
            println!(
                "  it lands in target/release/ beside dativo), or point DATIVO_PYTHON_BRIDGE at it"
            );
            return;
        }
    }
    let python = std::env::var_os("VIRTUAL_ENV")
        .map(|v| std::path::PathBuf::from(v).join("bin").join("python"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "python3".into());
    let code = concat!(
        "import importlib.metadata as m\n",
        "for g in ('dativo.readers', 'dativo.writers'):\n",
        "    for e in m.entry_points(group=g):\n",
        "        print(g.split('.')[1][:-1], e.name, e.value, ",
        "(e.dist.name + ' ' + e.dist.version) if e.dist else '')\n",
    );
    let out = std::process::Command::new(&python)
        .args(["-c", code])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            if text.trim().is_empty() {
                println!("  no installed packages declare dativo.readers / dativo.writers entry points ({})", python.display());
            }
            for line in text.lines() {
                let mut f = line.splitn(4, ' ');
                let (side, name, value, dist) = (
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                );
                println!("  {side} {name:<18} {value}  ({dist})");
            }
        }
        _ => println!("  (cannot run {} to list entry points)", python.display()),
    }
}

fn parse_config(arg: Option<&str>) -> Result<Value> {
    let Some(arg) = arg else {
        return Ok(Value::Object(Default::default()));
    };
    let (text, origin) = match arg.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .map_err(|e| Error::config(format!("--config @{path}: {e}")))?,
            path.to_string(),
        ),
        None => (arg.to_string(), "--config".to_string()),
    };
    serde_json::from_str(&text).map_err(|e| {
        Error::config(format!(
            "{origin}: not valid JSON: {e} (example: --config '{{\"rows\": 100}}')"
        ))
    })
}

fn print_report(title: &str, report: &Report) {
    println!("{title}");
    for c in &report.checks {
        match &c.outcome {
            Ok(d) if c.skipped => println!("  skip  {} — {d}", c.name),
            Ok(d) if d.is_empty() => println!("  ok    {}", c.name),
            Ok(d) => println!("  ok    {} — {d}", c.name),
            Err(e) => println!("  FAIL  {} — {e}", c.name),
        }
    }
}

/// `dativo plugin test IMPLEMENTATION`.
pub fn test(implementation: &str, config: Option<&str>, side: Option<Side>) -> Result<ExitCode> {
    let config = parse_config(config)?;
    let sides: &[Side] = match side {
        Some(Side::Reader) => &[Side::Reader],
        Some(Side::Writer) => &[Side::Writer],
        None => &[Side::Reader, Side::Writer],
    };
    let mut targets: Vec<(Side, String, MakeTarget)> = Vec::new();
    let builtin_reader = dativo_connectors::reader(implementation);
    let builtin_writer = dativo_connectors::writer(implementation);
    if builtin_reader.is_some() || builtin_writer.is_some() {
        if let Some(r) = builtin_reader.filter(|_| side != Some(Side::Writer)) {
            let open = r.open;
            targets.push((
                Side::Reader,
                format!("built-in reader '{}'", r.name),
                Box::new(move || {
                    Ok(Target::Reader(Box::new(conformance::OpenedReader::new(
                        std::sync::Arc::new(open),
                    ))))
                }),
            ));
        }
        if let Some(w) = builtin_writer.filter(|_| side != Some(Side::Reader)) {
            let open = w.open;
            targets.push((
                Side::Writer,
                format!("built-in writer '{}'", w.name),
                Box::new(move || {
                    Ok(Target::Writer(Box::new(conformance::OpenedWriter::new(
                        std::sync::Arc::new(open),
                    ))))
                }),
            ));
        }
    } else {
        let cwd = std::env::current_dir().ok();
        match Implementation::parse(implementation) {
            Implementation::Native { library, name } => {
                let path = native::find_library(&library, cwd.as_deref())?;
                let lib = NativeLibrary::load(&path)?;
                println!(
                    "plugin '{}' {} ({}, ABI {})",
                    lib.manifest.name,
                    lib.manifest.version,
                    path.display(),
                    lib.abi_version
                );
                for &s in sides {
                    let provided = match s {
                        Side::Reader => &lib.manifest.readers,
                        Side::Writer => &lib.manifest.writers,
                    };
                    for p in provided {
                        if name.as_ref().is_some_and(|n| n != &p.name) {
                            continue;
                        }
                        let r = dativo_plugins::resolve(
                            &format!("{}#{}", path.display(), p.name),
                            s,
                            None,
                        )?;
                        targets.push(resolved_target(s, r));
                    }
                }
                if targets.is_empty() {
                    return Err(Error::config(format!(
                        "plugin '{}' provides no {} named `{}`",
                        lib.manifest.name,
                        side.map(Side::as_str).unwrap_or("reader or writer"),
                        name.unwrap_or_default()
                    )));
                }
            }
            _ => {
                // A Python class (or a Flight endpoint): whichever sides it implements.
                let mut first_err = None;
                for &s in sides {
                    match dativo_plugins::resolve(implementation, s, cwd.as_deref()) {
                        Ok(r) => targets.push(resolved_target(s, r)),
                        Err(e) => {
                            first_err.get_or_insert(e);
                        }
                    }
                }
                if targets.is_empty() {
                    return Err(first_err.unwrap_or_else(|| Error::config("nothing to test")));
                }
            }
        }
    }
    if targets.is_empty() {
        return Err(Error::config(format!(
            "`{implementation}` provides nothing to test"
        )));
    }
    let mut failed = 0;
    for (s, label, mut make) in targets {
        let report = match s {
            Side::Reader => conformance::check_reader(
                &mut || match make()? {
                    Target::Reader(r) => Ok(r),
                    Target::Writer(_) => Err(Error::internal("expected a reader")),
                },
                &config,
            ),
            Side::Writer => conformance::check_writer(
                &mut || match make()? {
                    Target::Writer(w) => Ok(w),
                    Target::Reader(_) => Err(Error::internal("expected a writer")),
                },
                &config,
            ),
        };
        print_report(&label, &report);
        if !report.passed() {
            failed += 1;
        }
    }
    if failed == 0 {
        println!("passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILED: {failed} implementation(s) did not pass");
        Ok(ExitCode::from(5))
    }
}

/// A resolved plugin as a conformance target on `side`.
fn resolved_target(side: Side, r: dativo_plugins::Resolved) -> (Side, String, MakeTarget) {
    let label = r.label.clone();
    let make: MakeTarget = Box::new(move || {
        Ok(match side {
            Side::Reader => Target::Reader(r.reader()),
            Side::Writer => Target::Writer(r.writer()),
        })
    });
    (side, label, make)
}

/// Builds a fresh instance of the implementation under test.
type MakeTarget = Box<dyn FnMut() -> Result<Target>>;

enum Target {
    Reader(Box<dyn dativo_core::Reader>),
    Writer(Box<dyn dativo_core::Writer>),
}

/// The languages `plugin new` scaffolds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust cdylib using the dativo-plugin-sdk crate.
    Rust,
    /// C, with dativo_plugin.h only.
    C,
    /// C++17, with dativo_plugin.h only.
    Cpp,
    /// Go, with cgo and `go build -buildmode=c-shared`.
    Go,
    /// Python: a class with the five methods, in a pip-installable package.
    Python,
}

const HEADER: &str = include_str!("../../dativo-plugin-sdk/include/dativo_plugin.h");

fn template(lang: Lang) -> Vec<(&'static str, &'static str)> {
    match lang {
        Lang::Rust => vec![
            ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
            ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
            ("README.md", include_str!("../templates/rust/README.md")),
        ],
        Lang::C => vec![
            ("{{name}}.c", include_str!("../templates/c/{{name}}.c")),
            ("Makefile", include_str!("../templates/c/Makefile")),
            ("README.md", include_str!("../templates/c/README.md")),
            ("dativo_plugin.h", HEADER),
            ("dativo_sdk.h", include_str!("../templates/c/dativo_sdk.h")),
        ],
        Lang::Cpp => vec![
            (
                "{{name}}.cpp",
                include_str!("../templates/cpp/{{name}}.cpp"),
            ),
            ("Makefile", include_str!("../templates/cpp/Makefile")),
            ("README.md", include_str!("../templates/cpp/README.md")),
            ("dativo_plugin.h", HEADER),
        ],
        Lang::Python => vec![
            (
                "pyproject.toml",
                include_str!("../templates/python/pyproject.toml"),
            ),
            (
                "{{name}}/__init__.py",
                include_str!("../templates/python/{{name}}/__init__.py"),
            ),
            ("README.md", include_str!("../templates/python/README.md")),
        ],
        Lang::Go => vec![
            ("main.go", include_str!("../templates/go/main.go")),
            ("arrow.go", include_str!("../templates/go/arrow.go")),
            ("go.mod", include_str!("../templates/go/go.mod")),
            ("Makefile", include_str!("../templates/go/Makefile")),
            ("README.md", include_str!("../templates/go/README.md")),
            ("dativo_plugin.h", HEADER),
        ],
    }
}

/// Where a Rust scaffold takes dativo-plugin-sdk from: the `[dependencies]` value, the comment
/// above it and what `plugin new` prints.
#[derive(Debug)]
struct SdkDependency {
    toml: String,
    comment: String,
    said: String,
}

/// The SDK source tree this binary was built from (absent when the binary was copied elsewhere).
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../dativo-plugin-sdk");

/// `--sdk-path DIR` (a local crate), `--sdk-version REQ` (crates.io or the registry Cargo is
/// configured with), or by default the source tree this binary was built from when it is still
/// there, else crates.io at this dativo's minor version (plugins and dativo share `abi.rs`'s
/// ABI version, which a newer minor version may raise).
fn sdk_dependency(
    lang: Lang,
    sdk_path: Option<&Path>,
    sdk_version: Option<&str>,
) -> Result<SdkDependency> {
    let from_path = |dir: PathBuf, why: &str| -> Result<SdkDependency> {
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        if !dir.join("Cargo.toml").is_file() {
            return Err(Error::config(format!(
                "the dativo-plugin-sdk crate is not at {} (no Cargo.toml there): --sdk-path takes the crate's directory (crates/dativo-plugin-sdk of a dativo checkout, or an unpacked dativo-plugin-sdk-*.crate)",
                dir.display()
            )));
        }
        let shown = dir.display().to_string().replace('\\', "/");
        Ok(SdkDependency {
            toml: format!("{{ path = {} }}", toml_string(&shown)),
            comment: format!(
                "# The SDK {why} (change the path if you move it; `dativo plugin new --sdk-version`\n# writes a crates.io dependency instead)."
            ),
            said: format!("path {shown}"),
        })
    };
    if lang != Lang::Rust {
        return Ok(SdkDependency {
            toml: String::new(),
            comment: String::new(),
            said: String::new(),
        });
    }
    if let Some(dir) = sdk_path {
        return from_path(dir.to_path_buf(), "from --sdk-path");
    }
    let req = match sdk_version {
        Some(v) => v.trim().to_string(),
        None => {
            let built = PathBuf::from(BUILT_SDK);
            if built.join("Cargo.toml").is_file() {
                return from_path(
                    built,
                    "from the dativo source tree this `dativo` binary was built from",
                );
            }
            let v = env!("CARGO_PKG_VERSION");
            let mut parts = v.split('.');
            format!(
                "{}.{}",
                parts.next().unwrap_or("0"),
                parts.next().unwrap_or("1")
            )
        }
    };
    if semver::VersionReq::parse(&req).is_err() {
        return Err(Error::config(format!(
            "--sdk-version `{req}` is not a Cargo version requirement (e.g. 0.1, ^0.1.2, =0.1.0)"
        )));
    }
    Ok(SdkDependency {
        toml: toml_string(&req),
        comment: format!(
            "# The SDK from crates.io (or the registry Cargo is configured with), version {req}: dativo {}\n# loads plugins built with the SDK of the same minor version.",
            env!("CARGO_PKG_VERSION")
        ),
        said: format!("version {req} from crates.io"),
    })
}

/// `s` as a TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `dativo plugin new --lang LANG NAME`.
pub fn new(
    lang: Lang,
    name: &str,
    dir: Option<&Path>,
    sdk_path: Option<&Path>,
    sdk_version: Option<&str>,
) -> Result<ExitCode> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(Error::config(format!(
            "plugin name `{name}` must be an identifier: letters, digits and _, not starting with a digit (e.g. my_reader)"
        )));
    }
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::config(format!(
            "{} already exists and is not empty; choose another NAME or --dir",
            dir.display()
        )));
    }
    let sdk = sdk_dependency(lang, sdk_path, sdk_version)?;
    for (rel, text) in template(lang) {
        let rel = rel.replace("{{name}}", name);
        let path = dir.join(&rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("cannot create {}: {e}", parent.display())))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{sdk_dep}}", &sdk.toml)
            .replace("{{sdk_comment}}", &sdk.comment);
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))?;
    }
    if lang == Lang::Python {
        // Nothing to build: the class is imported from the project (or the installed package).
        println!("created {} (Python reader plugin `{name}`)", dir.display());
        println!();
        println!("  cd {}", dir.display());
        println!("  PYTHONPATH=. dativo plugin test {name}.Reader --config '{{\"rows\": 2500}}'");
        println!("  pip install .        # then `reader: {name}` works in any job (entry point)");
        println!();
        println!(
            "then use it in a job (run with PYTHONPATH={} until installed):",
            dir.display()
        );
        println!("  reader: {{type: custom, implementation: {name}.Reader}}");
        println!();
        println!("needs the Python bridge (libdativo_python.so beside dativo): `dativo plugins list` says where it looks");
        return Ok(ExitCode::SUCCESS);
    }
    let (build, lib) = match lang {
        Lang::Rust => (
            "cargo build --release",
            format!("./target/release/lib{name}.so"),
        ),
        _ => ("make", format!("./lib{name}.so")),
    };
    println!(
        "created {} ({lang:?} reader plugin `{name}`)",
        dir.display()
    );
    println!();
    println!("  cd {}", dir.display());
    if lang == Lang::Rust {
        println!("  # dativo-plugin-sdk: {}", sdk.said);
    }
    println!("  {build}");
    println!("  dativo plugin test {lib}");
    println!();
    println!("then use it in a job:");
    println!(
        "  reader: {{type: custom, implementation: \"{}/{}#{name}\"}}",
        dir.display(),
        lib.trim_start_matches("./")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rust_sdk_dependency_is_a_path_or_a_crates_io_version() {
        let d = sdk_dependency(Lang::Rust, None, Some("0.1")).unwrap();
        assert_eq!(d.toml, "\"0.1\"");
        assert!(d.said.contains("crates.io"));
        let e = sdk_dependency(Lang::Rust, None, Some("zero.one")).unwrap_err();
        assert!(
            e.message().contains("not a Cargo version requirement"),
            "{e}"
        );
        let e = sdk_dependency(Lang::Rust, Some(Path::new("/nonexistent/sdk")), None).unwrap_err();
        assert!(e.message().contains("no Cargo.toml there"), "{e}");
        let d = sdk_dependency(Lang::Rust, Some(Path::new(BUILT_SDK)), None).unwrap();
        assert!(d.toml.starts_with("{ path = \"/"), "{}", d.toml);
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
    }
}
