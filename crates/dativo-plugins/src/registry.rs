//! Plugins installed from a registry index (`dativo plugin install`), and how a job's
//! `implementation: "registry:NAME@REQ"` finds them — without any network access at run time.
//!
//! An installed plugin lives in `$DATIVO_HOME/plugins/NAME/VERSION/` (default `~/.dativo`): the
//! artifact's files, its manifest ([`MANIFEST`]) and an install record ([`RECORD`]) with the
//! artifact's SHA-256, the publisher's key and each file's SHA-256. A `dativo.lock` in the job
//! file's directory or one of its parents pins the version (and the artifact hash) a job loads.
//! Before loading anything, the installed files are hashed and compared with the record, and the
//! record with the lock: a file changed after installation, or an installation that is not the
//! locked artifact, is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dativo_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The manifest inside every artifact (and kept beside the installed files).
pub const MANIFEST: &str = "dativo-plugin.json";
/// The install record written by `dativo plugin install`.
pub const RECORD: &str = ".dativo-install.json";
/// The lock file's name.
pub const LOCK_FILE: &str = "dativo.lock";

/// The native plugin ABI this dativo loads (`DATIVO_PLUGIN_ABI_VERSION` in `dativo_plugin.h`).
pub const HOST_ABI: u32 = dativo_plugin_sdk::abi::ABI_VERSION;

/// `$DATIVO_HOME`, else `~/.dativo` (else `./.dativo` without a home directory).
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("DATIVO_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => PathBuf::from(h).join(".dativo"),
        None => PathBuf::from(".dativo"),
    }
}

/// Where installed plugins live: `$DATIVO_HOME/plugins`.
pub fn plugins_dir() -> PathBuf {
    home().join("plugins")
}

/// This machine's platform as artifacts name it: `linux-x86_64`, `macos-aarch64`, …
pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// How a plugin runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A shared library loaded in process (Rust, C, C++, Go).
    Native,
    /// A Python wheel, installed with pip into the Python environment the bridge uses.
    Python,
    /// An Arrow Flight server started as a command.
    Flight,
}

impl PluginKind {
    /// `native`, `python` or `flight`.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Native => "native",
            PluginKind::Python => "python",
            PluginKind::Flight => "flight",
        }
    }
}

/// `dativo-plugin.json`: what an artifact holds, written by `dativo plugin package`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format, 1.
    pub format: u32,
    /// The plugin's name (registry-unique).
    pub name: String,
    /// Its version (semver).
    pub version: String,
    /// How it runs.
    pub kind: PluginKind,
    /// The native plugin ABI version (`dativo_plugin.h`); none for Python and Flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abi: Option<u32>,
    /// `linux-x86_64`, … or `any` (Python wheels that are pure Python, scripts).
    pub platform: String,
    /// Readers it provides (their names).
    #[serde(default)]
    pub readers: Vec<String>,
    /// Writers it provides.
    #[serde(default)]
    pub writers: Vec<String>,
    /// One line about it.
    #[serde(default)]
    pub description: String,
    /// SPDX license expression.
    #[serde(default)]
    pub license: String,
    /// Project homepage.
    #[serde(default)]
    pub homepage: String,
    /// Native: the library file, relative to the artifact's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub library: Option<String>,
    /// Python: the wheel file, relative to the artifact's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wheel: Option<String>,
    /// Python: the distribution name pip installs (for uninstall).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    /// Python: reader/writer name → `package.module.Class`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub classes: BTreeMap<String, String>,
    /// Flight: the server command, relative to the installed directory for its first word when
    /// that starts with `./`; `{port}` is replaced by a free loopback port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Other files the artifact carries (relative paths; a directory brings its contents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl Manifest {
    /// Check what the manifest promises is coherent (names, semver, per-kind fields).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::config(format!("plugin manifest {MANIFEST}: {m}")));
        if self.format != 1 {
            return bad(format!(
                "format {} is not understood by this dativo (1)",
                self.format
            ));
        }
        check_name(&self.name)?;
        check_version(&self.version).map_err(|e| {
            Error::config(format!(
                "plugin manifest {MANIFEST}: `{}`: {}",
                self.name,
                e.message()
            ))
        })?;
        if self.readers.is_empty() && self.writers.is_empty() {
            return bad(format!("`{}` provides no reader and no writer", self.name));
        }
        for f in [&self.library, &self.wheel]
            .into_iter()
            .flatten()
            .chain(&self.files)
        {
            check_relative(f)?;
        }
        if let Some(rel) = self.command.first().and_then(|c| c.strip_prefix("./")) {
            check_relative(rel)?;
        }
        check_platform(&self.platform)?;
        if let Some(w) = &self.wheel {
            // A wheel installs without running code from it; anything pip would build does not.
            if !w.ends_with(".whl") {
                return bad(format!("`{w}` is not a wheel (.whl)"));
            }
        }
        if self.kind == PluginKind::Python && self.version.contains('-') {
            return bad(format!(
                "python plugin `{}`: version {} is a pre-release, which pip spells differently (PEP 440); publish Python plugins as MAJOR.MINOR.PATCH",
                self.name, self.version
            ));
        }
        if let Some(d) = &self.distribution {
            check_distribution(d)?;
            let file = self.wheel.as_deref().unwrap_or_default();
            let file = file.rsplit('/').next().unwrap_or(file);
            if !file.to_ascii_lowercase().starts_with(&format!(
                "{}-{}-",
                wheel_name(d),
                self.version.to_ascii_lowercase()
            )) {
                return bad(format!(
                    "the wheel {file} is not {d} {} (its file name must start with {}-{}-)",
                    self.version,
                    wheel_name(d),
                    self.version
                ));
            }
        }
        if self.kind == PluginKind::Flight && !self.command.iter().any(|w| w.contains("{port}")) {
            return bad(format!(
                "flight plugin `{}`: `command` must take the port to listen on as {{port}}",
                self.name
            ));
        }
        match self.kind {
            PluginKind::Native if self.library.is_none() || self.abi.is_none() => bad(format!(
                "native plugin `{}` needs `library` and `abi`",
                self.name
            )),
            PluginKind::Python if self.wheel.is_none() || self.distribution.is_none() => {
                bad(format!(
                    "python plugin `{}` needs `wheel` and `distribution`",
                    self.name
                ))
            }
            PluginKind::Python
                if self
                    .readers
                    .iter()
                    .chain(&self.writers)
                    .any(|r| !self.classes.contains_key(r)) =>
            {
                bad(format!(
                    "python plugin `{}`: every reader and writer needs its class in `classes`",
                    self.name
                ))
            }
            PluginKind::Flight if self.command.is_empty() => {
                bad(format!("flight plugin `{}` needs `command`", self.name))
            }
            _ => Ok(()),
        }
    }
}

/// A plugin or publisher name: lowercase ASCII letters, digits, `_` and `-`, 1–64 long,
/// starting with a letter.
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "`{name}` is not a valid plugin or publisher name: lowercase letters, digits, _ and -, starting with a letter, at most 64"
        )))
    }
}

/// A path inside an artifact: relative, no `..`, no empty or `.` components, no backslash.
pub fn check_relative(p: &str) -> Result<()> {
    let ok = !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\\')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "`{p}` is not a safe relative path (absolute, `..`, empty or backslash components)"
        )))
    }
}

/// `.dativo-install.json`: what `dativo plugin install` put where, and from whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallRecord {
    /// The plugin's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// How it runs.
    pub kind: PluginKind,
    /// The artifact's platform.
    pub platform: String,
    /// SHA-256 of the artifact (hex).
    pub sha256: String,
    /// The publisher whose key signed it.
    pub publisher: String,
    /// That key's id.
    pub key: String,
    /// The index it came from.
    pub index: String,
    /// Every installed file (relative path) → its SHA-256 (hex).
    pub files: BTreeMap<String, String>,
    /// Python plugins: the interpreter whose environment pip installed the wheel into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python: Option<String>,
}

/// The lock file: exact versions and artifact hashes the jobs beside it load.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Lock {
    /// Lock format, 1.
    pub version: u32,
    /// One entry per plugin, sorted by name.
    #[serde(default)]
    pub plugins: Vec<LockedPlugin>,
}

/// One plugin pinned by `dativo.lock`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LockedPlugin {
    /// The plugin's name.
    pub name: String,
    /// The exact version.
    pub version: String,
    /// The requirement it was chosen for (`plugin update` picks the newest matching it).
    pub requirement: String,
    /// How it runs.
    pub kind: PluginKind,
    /// The artifact's platform.
    pub platform: String,
    /// SHA-256 of the artifact (hex).
    pub sha256: String,
    /// The publisher.
    pub publisher: String,
    /// The key id that signed it.
    pub key: String,
    /// The index it was installed from.
    pub index: String,
}

impl Lock {
    /// Read a lock file.
    pub fn load(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        let lock: Lock = serde_json::from_str(&text).map_err(|e| {
            Error::config(format!("{} is not a dativo lock file: {e}", path.display()))
        })?;
        if lock.version != 1 {
            return Err(Error::config(format!(
                "{}: lock format {} is not understood by this dativo (1)",
                path.display(),
                lock.version
            )));
        }
        // Names and versions become paths: a lock file is data, never a way out of the
        // plugins directory.
        for p in &lock.plugins {
            check_name(&p.name)
                .and_then(|_| check_version(&p.version).map(|_| ()))
                .and_then(|_| check_sha256(&p.sha256))
                .and_then(|_| check_platform(&p.platform))
                .and_then(|_| check_name(&p.publisher))
                .map_err(|e| {
                    Error::config(format!(
                        "{}: entry `{}`: {}",
                        path.display(),
                        p.name,
                        e.message()
                    ))
                })?;
        }
        Ok(lock)
    }

    /// Write it (sorted, pretty, atomically).
    pub fn save(&mut self, path: &Path) -> Result<()> {
        self.version = 1;
        self.plugins.sort_by(|a, b| a.name.cmp(&b.name));
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::internal(format!("lock file: {e}")))?;
        text.push('\n');
        let tmp = path.with_extension("lock.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, path))
            .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))
    }

    /// The entry for `name`.
    pub fn get(&self, name: &str) -> Option<&LockedPlugin> {
        self.plugins.iter().find(|p| p.name == name)
    }

    /// Add or replace the entry for `p.name`.
    pub fn put(&mut self, p: LockedPlugin) {
        self.plugins.retain(|q| q.name != p.name);
        self.plugins.push(p);
    }
}

/// The `dativo.lock` that applies to a job file in `dir`: `DATIVO_LOCK` if set, else the first
/// `dativo.lock` in `dir` or one of its parents.
pub fn find_lock(dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DATIVO_LOCK").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let start = dir.unwrap_or(Path::new("."));
    let start = std::fs::canonicalize(start).unwrap_or_else(|_| start.to_path_buf());
    start
        .ancestors()
        .map(|d| d.join(LOCK_FILE))
        .find(|p| p.is_file())
}

/// `registry:NAME@REQ#item`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySpec {
    /// The plugin's name.
    pub name: String,
    /// The version requirement (`*` when not given).
    pub requirement: String,
    /// The reader or writer inside it, when named.
    pub item: Option<String>,
}

impl RegistrySpec {
    /// Parse what follows `registry:` (`NAME`, `NAME@^1`, `NAME@1.2.3#orders`).
    pub fn parse(s: &str) -> Result<RegistrySpec> {
        let (rest, item) = match s.split_once('#') {
            Some((r, i)) if !i.is_empty() => (r, Some(i.to_string())),
            Some((r, _)) => (r, None),
            None => (s, None),
        };
        let (name, req) = match rest.split_once('@') {
            Some((n, r)) => (n, r.trim()),
            None => (rest, "*"),
        };
        check_name(name.trim())?;
        parse_requirement(req)?;
        Ok(RegistrySpec {
            name: name.trim().to_string(),
            requirement: req.to_string(),
            item,
        })
    }
}

/// A version requirement, with an error that says what one looks like. A bare full version
/// (`1.2.3`) means exactly that version (`=1.2.3`), not Cargo's `^1.2.3`.
pub fn parse_requirement(req: &str) -> Result<semver::VersionReq> {
    let req = req.trim();
    let exact;
    let text = if semver::Version::parse(req).is_ok() {
        exact = format!("={req}");
        exact.as_str()
    } else {
        req
    };
    semver::VersionReq::parse(text).map_err(|e| {
        Error::config(format!(
            "`{req}` is not a version requirement ({e}); e.g. 1.2.3 (exactly), ^1, ~1.2, >=1.0, <2, *"
        ))
    })
}

/// A plugin version: semver without build metadata (`1.2.3`, `1.0.0-beta.1`). Versions are
/// also directory names, so this is what keeps them to safe characters.
pub fn check_version(v: &str) -> Result<semver::Version> {
    match semver::Version::parse(v) {
        Ok(s) if s.build.is_empty() => Ok(s),
        Ok(_) => Err(Error::config(format!(
            "version `{v}` carries build metadata (`+…`), which plugin versions may not"
        ))),
        Err(_) => Err(Error::config(format!(
            "version `{v}` is not semver (MAJOR.MINOR.PATCH, optionally -PRERELEASE)"
        ))),
    }
}

/// A SHA-256 in lowercase hex.
pub fn check_sha256(h: &str) -> Result<()> {
    if h.len() == 64
        && h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Error::config(format!(
            "`{h}` is not a SHA-256 (64 lowercase hex digits)"
        )))
    }
}

/// A platform: `any` or OS-ARCH in lowercase letters, digits and `_`.
pub fn check_platform(p: &str) -> Result<()> {
    let ok = p == "any"
        || p.split_once('-').is_some_and(|(os, arch)| {
            [os, arch].iter().all(|s| {
                !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
        });
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "platform `{p}` is neither `any` nor OS-ARCH (e.g. {})",
            platform()
        )))
    }
}

/// A Python distribution name (PEP 508: letters, digits, `.`, `_`, `-`, starting and ending
/// with a letter or digit).
pub fn check_distribution(d: &str) -> Result<()> {
    let ok = !d.is_empty()
        && d.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c))
        && d.starts_with(|c: char| c.is_ascii_alphanumeric())
        && d.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "`{d}` is not a Python distribution name"
        )))
    }
}

/// A distribution name as wheel file names and `.dist-info` directories spell it.
pub fn wheel_name(d: &str) -> String {
    let mut out = String::with_capacity(d.len());
    let mut sep = false;
    for c in d.chars() {
        if ".-_".contains(c) {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('_');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// Whether `version` satisfies `req` (an exact `=1.2.3-beta` included).
pub fn matches(req: &semver::VersionReq, version: &semver::Version) -> bool {
    req.matches(version)
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))?;
    let mut ctx = Sha256::default();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| Error::io(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(ctx.hex())
}

/// A streaming SHA-256 with a hex result.
#[derive(Default)]
pub struct Sha256(Option<ring::digest::Context>);

impl Sha256 {
    /// Feed bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.0
            .get_or_insert_with(|| ring::digest::Context::new(&ring::digest::SHA256))
            .update(b);
    }

    /// The digest as lowercase hex.
    pub fn hex(self) -> String {
        let d = self
            .0
            .unwrap_or_else(|| ring::digest::Context::new(&ring::digest::SHA256))
            .finish();
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An installed plugin: its directory, manifest and record.
#[derive(Debug, Clone)]
pub struct Installed {
    /// `$DATIVO_HOME/plugins/NAME/VERSION`.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its install record.
    pub record: InstallRecord,
}

impl Installed {
    /// Read the installation in `dir`.
    pub fn open(dir: &Path) -> Result<Installed> {
        let read = |f: &str| -> Result<String> {
            std::fs::read_to_string(dir.join(f)).map_err(|e| {
                Error::config(format!(
                    "{} is not a complete plugin installation ({f}: {e}); reinstall it with `dativo plugin install`",
                    dir.display()
                ))
            })
        };
        let manifest: Manifest = serde_json::from_str(&read(MANIFEST)?)
            .map_err(|e| Error::config(format!("{}: {MANIFEST}: {e}", dir.display())))?;
        let record: InstallRecord = serde_json::from_str(&read(RECORD)?)
            .map_err(|e| Error::config(format!("{}: {RECORD}: {e}", dir.display())))?;
        Ok(Installed {
            dir: dir.to_path_buf(),
            manifest,
            record,
        })
    }

    /// Every file is still what was installed (hash for hash, no file missing).
    pub fn verify_files(&self) -> Result<()> {
        for (rel, want) in &self.record.files {
            let got = sha256_file(&self.dir.join(rel)).map_err(|_| {
                Error::config(format!(
                    "plugin {} {}: installed file {rel} is missing; reinstall it: `dativo plugin uninstall {}@{}`, then `dativo plugin install --locked` (or install it again by name)",
                    self.record.name, self.record.version, self.record.name, self.record.version
                ))
            })?;
            if &got != want {
                return Err(Error::config(format!(
                    "plugin {} {}: installed file {rel} changed after installation (SHA-256 {got}, installed {want}); reinstall it: `dativo plugin uninstall {}@{}`, then `dativo plugin install --locked` (or install it again by name)",
                    self.record.name, self.record.version, self.record.name, self.record.version
                )));
            }
        }
        Ok(())
    }
}

/// Installed versions of `name`, newest first (directories that are not installations are
/// skipped).
pub fn installed_versions(name: &str) -> Vec<Installed> {
    let mut out: Vec<(semver::Version, Installed)> = std::fs::read_dir(plugins_dir().join(name))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = check_version(e.file_name().to_str()?).ok()?;
            let i = Installed::open(&e.path()).ok()?;
            // A directory holds what its name says.
            (i.manifest.name == name && i.manifest.version == v.to_string()).then_some((v, i))
        })
        .collect();
    out.sort_by(|a, b| b.0.cmp(&a.0));
    out.into_iter().map(|(_, i)| i).collect()
}

/// Every installed plugin, by name then newest version first.
pub fn all_installed() -> Vec<Installed> {
    let mut names: Vec<String> = std::fs::read_dir(plugins_dir())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| check_name(n).is_ok())
        .collect();
    names.sort();
    names.iter().flat_map(|n| installed_versions(n)).collect()
}

/// What a `registry:` implementation turned into.
pub enum Target {
    /// Load this library and pick `item`.
    Native {
        /// The installed library.
        library: PathBuf,
        /// The reader/writer.
        item: String,
    },
    /// Import this Python class through the bridge.
    Python(String),
    /// Start this command and talk Flight to `url`.
    Flight {
        /// `grpc://127.0.0.1:PORT`.
        url: String,
        /// The server command (with the port filled in).
        command: Vec<String>,
        /// The installation directory: the server's working directory.
        dir: PathBuf,
    },
}

/// The virtualenv the Python bridge imports from (`DATIVO_PYTHON_VENV`, `VIRTUAL_ENV`), if any.
pub fn python_venv() -> Option<PathBuf> {
    ["DATIVO_PYTHON_VENV", "VIRTUAL_ENV"]
        .iter()
        .find_map(|v| std::env::var_os(v).filter(|v| !v.is_empty()))
        .map(PathBuf::from)
}

/// The `.dist-info` directories of `dist` in the virtualenv `venv`: (version, directory).
pub fn python_dists(venv: &Path, dist: &str) -> Vec<(String, PathBuf)> {
    let want = wheel_name(dist);
    let mut out = Vec::new();
    for lib in std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let sp = lib.path().join("site-packages");
        for e in std::fs::read_dir(&sp).into_iter().flatten().flatten() {
            let f = e.file_name().to_string_lossy().to_string();
            let Some(stem) = f.strip_suffix(".dist-info") else {
                continue;
            };
            if let Some((n, v)) = stem.rsplit_once('-') {
                if wheel_name(n) == want {
                    out.push((v.to_string(), e.path()));
                }
            }
        }
    }
    out
}

/// A Python plugin's package in the bridge's virtualenv is the installed version: pip keeps one
/// version of a distribution per environment, so installing another version elsewhere (or by
/// hand) replaces the code a locked job would import. Without a virtualenv set, the bridge
/// imports from the interpreter's own site-packages, which is not checked.
fn check_python_install(m: &Manifest) -> Result<()> {
    let (Some(venv), Some(dist)) = (python_venv(), m.distribution.as_deref()) else {
        return Ok(());
    };
    let found = python_dists(&venv, dist);
    if found.iter().any(|(v, _)| v == &m.version) {
        return Ok(());
    }
    let what = if found.is_empty() {
        "does not hold it".to_string()
    } else {
        format!(
            "holds version {}",
            found
                .iter()
                .map(|(v, _)| v.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    Err(Error::config(format!(
        "plugin {} {}: the Python environment {} {what}; reinstall it there with `dativo plugin install {}@={} --python {}/bin/python`",
        m.name,
        m.version,
        venv.display(),
        m.name,
        m.version,
        venv.display()
    )))
}

/// Find the installed plugin a job's `registry:NAME@REQ#item` means, for `side`: the version
/// `dativo.lock` pins (beside the job or above it), else the newest installed one matching
/// REQ; its files are verified against the install record first.
pub fn resolve(spec: &str, side: crate::Side, base_dir: Option<&Path>) -> Result<(String, Target)> {
    let (spec, chosen) = find(spec, base_dir)?;
    target(&spec, &chosen, side)
}

/// The installation `registry:NAME@REQ` means for a job in `base_dir` (lock first), its files
/// verified; nothing is loaded.
pub fn find(spec: &str, base_dir: Option<&Path>) -> Result<(RegistrySpec, Installed)> {
    let spec = RegistrySpec::parse(spec)?;
    let req = parse_requirement(&spec.requirement)?;
    let lock_path = find_lock(base_dir);
    let lock = lock_path.as_deref().map(Lock::load).transpose()?;
    let locked = lock.as_ref().and_then(|l| l.get(&spec.name)).cloned();
    let versions = installed_versions(&spec.name);
    let chosen = if let Some(l) = &locked {
        let lp = lock_path.as_deref().unwrap_or(Path::new(LOCK_FILE));
        let v = semver::Version::parse(&l.version).map_err(|e| {
            Error::config(format!(
                "{}: {} version {}: {e}",
                lp.display(),
                l.name,
                l.version
            ))
        })?;
        if !matches(&req, &v) {
            return Err(Error::config(format!(
                "{} pins plugin {} at {}, which does not satisfy `{}` in the job; run `dativo plugin update {}` or change the job",
                lp.display(),
                l.name,
                l.version,
                spec.requirement,
                l.name
            )));
        }
        let Some(i) = versions
            .into_iter()
            .find(|i| i.manifest.version == l.version)
        else {
            return Err(Error::config(format!(
                "plugin {} {} (pinned by {}) is not installed in {}; run `dativo plugin install --locked` beside the lock file",
                l.name,
                l.version,
                lp.display(),
                plugins_dir().display()
            )));
        };
        if i.record.sha256 != l.sha256 {
            return Err(Error::new(
                dativo_core::ErrorKind::Auth,
                format!(
                "plugin {} {} installed in {} is not the artifact {} pins (SHA-256 {} installed, {} locked); run `dativo plugin install --locked`",
                l.name,
                l.version,
                i.dir.display(),
                lp.display(),
                i.record.sha256,
                l.sha256
            )));
        }
        i
    } else if let Some(lp) = &lock_path {
        return Err(Error::config(format!(
            "plugin {} is not pinned by {} (jobs under a lock file load only locked plugins); run `dativo plugin install {}@{}` beside it",
            spec.name,
            lp.display(),
            spec.name,
            spec.requirement
        )));
    } else {
        let installed: Vec<String> = versions
            .iter()
            .map(|i| i.manifest.version.clone())
            .collect();
        let found = versions
            .into_iter()
            .find(|i| semver::Version::parse(&i.manifest.version).is_ok_and(|v| matches(&req, &v)));
        match found {
            Some(i) => i,
            None if installed.is_empty() => {
                return Err(Error::config(format!(
                    "plugin {} is not installed (looked in {}); run `dativo plugin install {}@{}`",
                    spec.name,
                    plugins_dir().display(),
                    spec.name,
                    spec.requirement
                )))
            }
            None => {
                return Err(Error::config(format!(
                    "no installed version of plugin {} satisfies `{}` (installed: {}); run `dativo plugin install {}@{}`",
                    spec.name,
                    spec.requirement,
                    installed.join(", "),
                    spec.name,
                    spec.requirement
                )))
            }
        }
    };
    chosen.verify_files()?;
    if chosen.manifest.kind == PluginKind::Python {
        check_python_install(&chosen.manifest)?;
    }
    Ok((spec, chosen))
}

fn target(spec: &RegistrySpec, chosen: &Installed, side: crate::Side) -> Result<(String, Target)> {
    let m = &chosen.manifest;
    let provided = match side {
        crate::Side::Reader => &m.readers,
        crate::Side::Writer => &m.writers,
    };
    let item = match &spec.item {
        Some(n) if provided.contains(n) => n.clone(),
        Some(n) => {
            return Err(Error::config(format!(
                "plugin {} {} has no {} `{n}`; it provides: {}",
                m.name,
                m.version,
                side.as_str(),
                if provided.is_empty() {
                    "none".to_string()
                } else {
                    provided.join(", ")
                }
            )))
        }
        None if provided.len() == 1 => provided[0].clone(),
        None => {
            return Err(Error::config(format!(
                "plugin {} {} provides {} {}s ({}): name one with `registry:{}@{}#<name>`",
                m.name,
                m.version,
                provided.len(),
                side.as_str(),
                provided.join(", "),
                m.name,
                spec.requirement
            )))
        }
    };
    let label = format!(
        "plugin {} {} ({}) {} '{item}'",
        m.name,
        m.version,
        m.kind.as_str(),
        side.as_str()
    );
    let target = match m.kind {
        PluginKind::Native => Target::Native {
            library: chosen.dir.join(m.library.as_deref().unwrap_or_default()),
            item,
        },
        PluginKind::Python => Target::Python(m.classes.get(&item).cloned().unwrap_or_default()),
        PluginKind::Flight => {
            let port = free_port()?;
            let command = m
                .command
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    let w = w.replace("{port}", &port.to_string());
                    match w.strip_prefix("./") {
                        Some(rel) if i == 0 => chosen.dir.join(rel).display().to_string(),
                        _ => w.replace("{dir}", &chosen.dir.display().to_string()),
                    }
                })
                .collect();
            Target::Flight {
                url: format!("grpc://127.0.0.1:{port}"),
                command,
                dir: chosen.dir.clone(),
            }
        }
    };
    Ok((label, target))
}

/// A loopback port nobody listens on now (the Flight server binds it right after).
fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| {
            Error::io(format!(
                "cannot find a free loopback port for a Flight plugin: {e}"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_specs() {
        let s = RegistrySpec::parse("acme-orders@^1.2#orders").unwrap();
        assert_eq!(s.name, "acme-orders");
        assert_eq!(s.requirement, "^1.2");
        assert_eq!(s.item.as_deref(), Some("orders"));
        let s = RegistrySpec::parse("x").unwrap();
        assert_eq!((s.requirement.as_str(), s.item), ("*", None));
        assert!(RegistrySpec::parse("Bad Name@1").is_err());
        let e = RegistrySpec::parse("x@one").unwrap_err();
        assert!(e.message().contains("not a version requirement"), "{e}");
    }

    #[test]
    fn a_bare_version_is_exact_and_versions_are_safe_names() {
        let v = |s: &str| semver::Version::parse(s).unwrap();
        let exact = parse_requirement("1.2.3").unwrap();
        assert!(exact.matches(&v("1.2.3")) && !exact.matches(&v("1.9.0")));
        assert!(parse_requirement("^1.2").unwrap().matches(&v("1.9.0")));
        for bad in ["../1.0.0", "1.0", "1.0.0+build", "1.0.0/x"] {
            assert!(check_version(bad).is_err(), "{bad}");
        }
        assert!(check_version("1.0.0-beta.1").is_ok());
        assert_eq!(wheel_name("My.Plugin-x"), "my_plugin_x");
        assert!(check_distribution("-r/etc/passwd").is_err());
        assert!(check_platform("linux-x86_64").is_ok() && check_platform("../x").is_err());
    }

    #[test]
    fn refuses_unsafe_paths() {
        for p in ["/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b", ""] {
            assert!(check_relative(p).is_err(), "{p}");
        }
        assert!(check_relative("lib/libx.so").is_ok());
    }

    #[test]
    fn hashes_like_sha256sum() {
        let mut h = Sha256::default();
        h.update(b"abc");
        assert_eq!(
            h.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
