//! The plugin registry: an index of signed plugin artifacts served as static files (a
//! directory, an HTTP server, an S3 prefix), and the commands that package, sign, publish,
//! find, install, pin and verify plugins.
//!
//! Trust: every artifact is signed (Ed25519, `ring`) by its publisher over a statement naming
//! the publisher, plugin, version, kind, ABI, platform, readers, writers, size and SHA-256.
//! `install` checks, in this order and before anything is unpacked: the version is not yanked,
//! the ABI and platform fit this dativo, the signing key is one the user trusts for that
//! publisher (`dativo plugin trust`), the signature holds, and the downloaded bytes have the
//! signed size and hash. The archive is then unpacked entry by entry (regular files and
//! directories only; no absolute paths, `..`, links or oversize entries) into a staging
//! directory, its manifest must equal the signed statement, and only then is it moved into
//! `$DATIVO_HOME/plugins/NAME/VERSION/`. Nothing from the artifact runs during install (a
//! Python wheel is installed by pip, which runs no code from a wheel).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use base64::Engine as _;
use dativo_core::{Error, ErrorKind, Result};
use dativo_plugins::registry::{
    self as reg, check_name, check_relative, InstallRecord, Installed, Lock, LockedPlugin,
    Manifest, PluginKind, MANIFEST, RECORD,
};
use serde::{Deserialize, Serialize};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
/// Index files larger than this are refused.
const MAX_INDEX: u64 = 64 << 20;
/// An archive entry larger than this is refused.
const MAX_ENTRY: u64 = 512 << 20;
/// All entries together.
const MAX_TOTAL: u64 = 1 << 30;
/// Entries in one archive.
const MAX_ENTRIES: usize = 10_000;
const KEY_PREFIX: &str = "dativo-ed25519";

fn auth(m: String) -> Error {
    Error::new(ErrorKind::Auth, m)
}

// ---------------------------------------------------------------------------------------------
// Keys and trust

/// A publisher's public key: `dativo-ed25519 PUBLISHER BASE64`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    publisher: String,
    bytes: Vec<u8>,
}

impl PublicKey {
    fn parse(line: &str) -> Result<PublicKey> {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let bad = || {
            Error::config(format!(
                "`{}` is not a dativo public key (`{KEY_PREFIX} PUBLISHER BASE64`, as `dativo plugin keygen` writes to PUBLISHER.pub)",
                line.trim()
            ))
        };
        if parts.len() != 3 || parts[0] != KEY_PREFIX {
            return Err(bad());
        }
        check_name(parts[1])?;
        let bytes = B64.decode(parts[2]).map_err(|_| bad())?;
        if bytes.len() != 32 {
            return Err(bad());
        }
        Ok(PublicKey {
            publisher: parts[1].to_string(),
            bytes,
        })
    }

    fn line(&self) -> String {
        format!(
            "{KEY_PREFIX} {} {}",
            self.publisher,
            B64.encode(&self.bytes)
        )
    }

    /// The key id: the first 16 hex digits of the key's SHA-256.
    fn id(&self) -> String {
        let mut h = reg::Sha256::default();
        h.update(&self.bytes);
        h.hex()[..16].to_string()
    }

    fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.bytes)
            .verify(msg, sig)
            .is_ok()
    }
}

#[derive(Serialize, Deserialize)]
struct SecretKeyFile {
    format: u32,
    publisher: String,
    /// The Ed25519 key pair as PKCS#8 v2, base64.
    pkcs8: String,
}

struct SecretKey {
    publisher: String,
    pair: ring::signature::Ed25519KeyPair,
}

impl SecretKey {
    fn load(path: &Path) -> Result<SecretKey> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read key {}: {e}", path.display())))?;
        let f: SecretKeyFile = serde_json::from_str(&text).map_err(|_| {
            Error::config(format!(
                "{} is not a dativo secret key (made by `dativo plugin keygen`)",
                path.display()
            ))
        })?;
        let der = B64
            .decode(f.pkcs8.trim())
            .map_err(|_| Error::config(format!("{}: the key is not base64", path.display())))?;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(&der)
            .map_err(|_| Error::config(format!("{}: not an Ed25519 key pair", path.display())))?;
        check_name(&f.publisher)?;
        Ok(SecretKey {
            publisher: f.publisher,
            pair,
        })
    }

    fn public(&self) -> PublicKey {
        use ring::signature::KeyPair as _;
        PublicKey {
            publisher: self.publisher.clone(),
            bytes: self.pair.public_key().as_ref().to_vec(),
        }
    }
}

/// `dativo plugin keygen --publisher NAME --out DIR`.
pub fn keygen(publisher: &str, out: &Path) -> Result<ExitCode> {
    check_name(publisher)?;
    let secret = out.join(format!("{publisher}.key"));
    let public = out.join(format!("{publisher}.pub"));
    for p in [&secret, &public] {
        if p.exists() {
            return Err(Error::config(format!(
                "{} exists; keygen never overwrites a key (move it away first)",
                p.display()
            )));
        }
    }
    std::fs::create_dir_all(out)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", out.display())))?;
    let rng = ring::rand::SystemRandom::new();
    let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| Error::internal("cannot generate an Ed25519 key"))?;
    let file = SecretKeyFile {
        format: 1,
        publisher: publisher.to_string(),
        pkcs8: B64.encode(doc.as_ref()),
    };
    let text = serde_json::to_string_pretty(&file).unwrap_or_default() + "\n";
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .map_err(|e| Error::io(format!("cannot create {}: {e}", secret.display())))?;
        f.write_all(text.as_bytes())
            .map_err(|e| Error::io(format!("cannot write {}: {e}", secret.display())))?;
    }
    let key = SecretKey::load(&secret)?.public();
    std::fs::write(&public, key.line() + "\n")
        .map_err(|e| Error::io(format!("cannot write {}: {e}", public.display())))?;
    println!(
        "secret key  {} (keep it secret; mode 0600)",
        secret.display()
    );
    println!("public key  {} (id {})", public.display(), key.id());
    println!();
    println!("  {}", key.line());
    println!();
    println!("Users trust it with `dativo plugin trust {}` (give them the file or the line, not through the index).", public.display());
    Ok(ExitCode::SUCCESS)
}

fn trust_file() -> PathBuf {
    reg::home().join("trusted-keys")
}

/// Keys the user trusts: `$DATIVO_HOME/trusted-keys`, plus `DATIVO_TRUSTED_KEYS` (a file of
/// key lines, for CI and images).
fn trusted_keys() -> Result<Vec<PublicKey>> {
    let mut files = vec![trust_file()];
    if let Some(p) = std::env::var_os("DATIVO_TRUSTED_KEYS").filter(|p| !p.is_empty()) {
        files.push(PathBuf::from(p));
    }
    let mut keys = Vec::new();
    for f in files {
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && f == trust_file() => continue,
            Err(e) => {
                return Err(Error::config(format!(
                    "cannot read trusted keys from {} (DATIVO_TRUSTED_KEYS?): {e}",
                    f.display()
                )))
            }
        };
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(
                PublicKey::parse(line)
                    .map_err(|e| Error::config(format!("{}: {}", f.display(), e.message())))?,
            );
        }
    }
    Ok(keys)
}

/// `dativo plugin trust KEY|FILE`, `--list`, `--remove ID`.
pub fn trust(key: Option<&str>, list: bool, remove: Option<&str>) -> Result<ExitCode> {
    let path = trust_file();
    let mut keys: Vec<PublicKey> = match std::fs::read_to_string(&path) {
        Ok(t) => t
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(PublicKey::parse)
            .collect::<Result<_>>()?,
        Err(_) => Vec::new(),
    };
    let save = |keys: &[PublicKey]| -> Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| Error::io(format!("cannot create {}: {e}", d.display())))?;
        }
        let text: String = keys.iter().map(|k| k.line() + "\n").collect();
        std::fs::write(&path, text)
            .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))
    };
    if let Some(id) = remove {
        let before = keys.len();
        keys.retain(|k| k.id() != id && k.line() != id);
        if keys.len() == before {
            return Err(Error::config(format!(
                "no trusted key with id {id} in {} (`dativo plugin trust --list`)",
                path.display()
            )));
        }
        save(&keys)?;
        println!("no longer trusted: key {id}");
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(k) = key {
        let line = if Path::new(k).is_file() {
            std::fs::read_to_string(k)
                .map_err(|e| Error::config(format!("cannot read {k}: {e}")))?
        } else {
            k.to_string()
        };
        let key = PublicKey::parse(line.trim())?;
        if !keys.contains(&key) {
            keys.push(key.clone());
            save(&keys)?;
        }
        println!(
            "trusted: publisher {} key {} (in {})",
            key.publisher,
            key.id(),
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let _ = list;
    let all = trusted_keys()?;
    if all.is_empty() {
        println!("no trusted publisher keys (add one with `dativo plugin trust PUBLISHER.pub`)");
    }
    for k in all {
        println!("{:<24} {}  {}", k.publisher, k.id(), k.line());
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// What is signed

/// The fields a signature covers: everything `install` decides by.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Statement {
    publisher: String,
    name: String,
    version: String,
    kind: PluginKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    abi: Option<u32>,
    platform: String,
    readers: Vec<String>,
    writers: Vec<String>,
    size: u64,
    sha256: String,
}

impl Statement {
    fn of(m: &Manifest, publisher: &str, size: u64, sha256: &str) -> Statement {
        Statement {
            publisher: publisher.to_string(),
            name: m.name.clone(),
            version: m.version.clone(),
            kind: m.kind,
            abi: m.abi,
            platform: m.platform.clone(),
            readers: m.readers.clone(),
            writers: m.writers.clone(),
            size,
            sha256: sha256.to_string(),
        }
    }

    /// The exact bytes signed: a versioned, line-based text (no JSON canonicalisation
    /// questions).
    fn bytes(&self) -> Vec<u8> {
        format!(
            "dativo plugin signature v1\npublisher {}\nname {}\nversion {}\nkind {}\nabi {}\nplatform {}\nreaders {}\nwriters {}\nsize {}\nsha256 {}\n",
            self.publisher,
            self.name,
            self.version,
            self.kind.as_str(),
            self.abi.map_or("-".to_string(), |a| a.to_string()),
            self.platform,
            self.readers.join(","),
            self.writers.join(","),
            self.size,
            self.sha256
        )
        .into_bytes()
    }

    fn what(&self) -> String {
        format!("plugin {} {} ({})", self.name, self.version, self.platform)
    }
}

/// `ARTIFACT.sig`, written by `plugin sign`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SigFile {
    format: u32,
    /// The publisher's public key line.
    public_key: String,
    key: String,
    signature: String,
    #[serde(flatten)]
    statement: Statement,
}

// ---------------------------------------------------------------------------------------------
// The index

/// `index.json`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Index {
    format: u32,
    /// Publisher → its public key lines, as published (for display; trust comes from the user).
    #[serde(default)]
    publishers: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    plugins: BTreeMap<String, IndexPlugin>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct IndexPlugin {
    publisher: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    license: String,
    #[serde(default)]
    homepage: String,
    #[serde(default)]
    versions: Vec<IndexVersion>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexVersion {
    version: String,
    kind: PluginKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    abi: Option<u32>,
    platform: String,
    #[serde(default)]
    readers: Vec<String>,
    #[serde(default)]
    writers: Vec<String>,
    /// Relative to the index, or an absolute http(s) URL.
    url: String,
    size: u64,
    sha256: String,
    /// The signing key's id; empty when unsigned (refused at install).
    #[serde(default)]
    key: String,
    /// Base64 Ed25519 signature over the statement; empty when unsigned.
    #[serde(default)]
    signature: String,
    /// Withdrawn by the publisher. Not signed: an index can yank or un-yank.
    #[serde(default)]
    yanked: bool,
}

impl IndexVersion {
    fn statement(&self, publisher: &str, name: &str) -> Statement {
        Statement {
            publisher: publisher.to_string(),
            name: name.to_string(),
            version: self.version.clone(),
            kind: self.kind,
            abi: self.abi,
            platform: self.platform.clone(),
            readers: self.readers.clone(),
            writers: self.writers.clone(),
            size: self.size,
            sha256: self.sha256.clone(),
        }
    }

    fn semver(&self) -> Option<semver::Version> {
        semver::Version::parse(&self.version).ok()
    }
}

/// Where an index is served from.
enum Source {
    Dir(PathBuf),
    Http(String),
    Object(dativo_storage::Location),
}

/// An index and where it came from.
pub struct Opened {
    source: Source,
    /// The location as the user gave it (for messages and the lock file).
    pub shown: String,
    index: Index,
}

/// The index location: `--index`, else `DATIVO_INDEX`.
fn index_location(given: Option<&str>) -> Result<String> {
    given
        .map(str::to_string)
        .or_else(|| std::env::var("DATIVO_INDEX").ok().filter(|s| !s.is_empty()))
        .ok_or_else(|| {
            Error::config(
                "no plugin index given: pass --index DIR|URL|s3://bucket/prefix or set DATIVO_INDEX",
            )
        })
}

fn s3_from_env() -> dativo_storage::S3Config {
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok()
        .filter(|s| !s.is_empty());
    dativo_storage::S3Config {
        path_style: endpoint.is_some(),
        endpoint,
        region: std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .ok(),
        ..Default::default()
    }
}

impl Source {
    fn parse(loc: &str) -> Result<(Source, String)> {
        let loc = loc.trim();
        // `…/index.json` or the directory/prefix holding it.
        let (base, file) = match loc.strip_suffix("/index.json") {
            Some(b) => (b.to_string(), "index.json".to_string()),
            None if loc == "index.json" => (".".to_string(), "index.json".to_string()),
            None => (
                loc.trim_end_matches('/').to_string(),
                "index.json".to_string(),
            ),
        };
        if base.starts_with("http://") || base.starts_with("https://") {
            let authority = base
                .split("://")
                .nth(1)
                .unwrap_or("")
                .split('/')
                .next()
                .unwrap_or("");
            if authority.contains('@') {
                return Err(Error::config(format!(
                    "plugin index {}: credentials in an index URL are not supported (they would be written to dativo.lock); serve a private index from S3 (AWS credentials from the environment) or a private network",
                    dativo_core::secrets::scrub(&base)
                )));
            }
            return Ok((Source::Http(format!("{base}/")), file));
        }
        if dativo_storage::is_remote(&base) {
            let s3 = s3_from_env();
            let loc = dativo_storage::Location::parse(
                &base,
                &dativo_storage::StoreOptions {
                    s3: Some(&s3),
                    ..Default::default()
                },
            )?;
            return Ok((Source::Object(loc), file));
        }
        let dir = PathBuf::from(base.strip_prefix("file://").unwrap_or(&base));
        Ok((Source::Dir(dir), file))
    }

    /// Read `rel` (relative to the index) or an absolute http(s) URL, at most `limit` bytes.
    fn fetch(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let too_big = |n: u64| {
            auth(format!(
                "{rel} is larger than expected ({n} bytes or more, at most {limit} allowed)"
            ))
        };
        if rel.starts_with("http://") || rel.starts_with("https://") {
            return http_get(rel, limit);
        }
        check_relative(rel)
            .map_err(|e| auth(format!("the index names an unsafe path: {}", e.message())))?;
        match self {
            Source::Dir(d) => {
                let p = d.join(rel);
                let f = std::fs::File::open(&p).map_err(|e| {
                    let msg = format!("cannot read {}: {e}", p.display());
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::config(msg)
                    } else {
                        Error::io(msg)
                    }
                })?;
                let mut buf = Vec::new();
                f.take(limit + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| Error::io(format!("cannot read {}: {e}", p.display())))?;
                if buf.len() as u64 > limit {
                    return Err(too_big(buf.len() as u64));
                }
                Ok(buf)
            }
            Source::Http(base) => http_get(&format!("{base}{rel}"), limit),
            Source::Object(loc) => {
                let size = loc.size(rel)?;
                if size > limit {
                    return Err(too_big(size));
                }
                loc.read(rel)
            }
        }
    }
}

fn http_get(url: &str, limit: u64) -> Result<Vec<u8>> {
    let shown = dativo_core::secrets::scrub(url);
    dativo_core::rt::runtime().block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()
            .map_err(|e| Error::internal(format!("HTTP client: {e}")))?;
        let mut resp = client.get(url).send().await.map_err(|e| {
            Error::connect(format!(
                "cannot fetch {shown}: {}",
                dativo_core::secrets::scrub(&e.to_string())
            ))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let msg = format!("fetching {shown}: HTTP {status}");
            return Err(match status.as_u16() {
                401 | 403 => Error::new(ErrorKind::Auth, msg),
                404 => Error::config(msg),
                _ => Error::connect(msg),
            });
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| {
            Error::connect(format!(
                "reading {shown}: {}",
                dativo_core::secrets::scrub(&e.to_string())
            ))
        })? {
            buf.extend_from_slice(&chunk);
            if buf.len() as u64 > limit {
                return Err(auth(format!(
                    "{shown} is larger than expected (more than {limit} bytes)"
                )));
            }
        }
        Ok(buf)
    })
}

/// Open the index at `loc`.
pub fn open_index(loc: &str) -> Result<Opened> {
    let (source, file) = Source::parse(loc)?;
    let shown_loc = dativo_core::secrets::scrub(loc);
    let bytes = source.fetch(&file, MAX_INDEX).map_err(|e| {
        let kind = e.kind();
        Error::new(kind, format!("plugin index {shown_loc}: {}", e.message()))
    })?;
    let index: Index = serde_json::from_slice(&bytes).map_err(|e| {
        Error::config(format!(
            "plugin index {shown_loc}: not a dativo index ({e})"
        ))
    })?;
    if index.format != 1 {
        return Err(Error::config(format!(
            "plugin index {shown_loc}: format {} is not understood by this dativo (1)",
            index.format
        )));
    }
    // What the lock file and messages keep: an absolute directory (the lock is read from
    // elsewhere), a URL without credentials.
    let shown = match &source {
        Source::Dir(d) => std::fs::canonicalize(d)
            .map(|d| d.display().to_string())
            .unwrap_or(shown_loc),
        _ => shown_loc,
    };
    Ok(Opened {
        source,
        shown,
        index,
    })
}

// ---------------------------------------------------------------------------------------------
// Archives

/// An archive checked and unpacked into `dest`: its manifest and every file's SHA-256.
#[derive(Debug)]
struct Unpacked {
    manifest: Manifest,
    files: BTreeMap<String, String>,
}

/// Unpack a `.tar.gz` into `dest` (which must be empty), refusing anything but regular files
/// and directories with safe relative paths, and oversize or too many entries. `what` names
/// the artifact in messages.
fn unpack(bytes: &[u8], dest: &Path, what: &str) -> Result<Unpacked> {
    let refuse = |m: String| auth(format!("{what}: refused archive: {m}"));
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut files = BTreeMap::new();
    let mut total = 0u64;
    let mut count = 0usize;
    let entries = ar
        .entries()
        .map_err(|e| refuse(format!("not a .tar.gz ({e})")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| refuse(format!("corrupt ({e})")))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(refuse(format!("more than {MAX_ENTRIES} entries")));
        }
        let raw = entry.path_bytes().into_owned();
        let path = String::from_utf8(raw)
            .map_err(|_| refuse("an entry's path is not UTF-8".to_string()))?;
        let kind = entry.header().entry_type();
        let rel = path
            .trim_end_matches('/')
            .trim_start_matches("./")
            .to_string();
        if kind == tar::EntryType::Directory
            && (rel.is_empty() || rel == ".")
            && !path.starts_with('/')
        {
            continue; // the archive's root
        }
        if path.starts_with('/') || check_relative(&rel).is_err() {
            return Err(refuse(format!(
                "entry `{path}` is absolute or leaves the directory"
            )));
        }
        if rel == RECORD {
            return Err(refuse(format!(
                "entry `{rel}` is the install record's name"
            )));
        }
        let target = dest.join(&rel);
        match kind {
            tar::EntryType::Directory => {
                std::fs::create_dir_all(&target).map_err(|e| {
                    refuse(format!(
                        "directory `{rel}` conflicts with another entry ({e})"
                    ))
                })?;
            }
            tar::EntryType::Regular => {
                let size = entry.header().size().unwrap_or(u64::MAX);
                if size > MAX_ENTRY {
                    return Err(refuse(format!(
                        "entry `{rel}` is {size} bytes (at most {MAX_ENTRY})"
                    )));
                }
                total += size;
                if total > MAX_TOTAL {
                    return Err(refuse(format!("more than {MAX_TOTAL} bytes in all")));
                }
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        refuse(format!("entry `{rel}` conflicts with another entry ({e})"))
                    })?;
                }
                let mode = entry.header().mode().unwrap_or(0o644);
                let exec = mode & 0o111 != 0;
                use std::os::unix::fs::OpenOptionsExt as _;
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(if exec { 0o755 } else { 0o644 })
                    .open(&target)
                    .map_err(|e| {
                        if e.kind() == std::io::ErrorKind::AlreadyExists {
                            refuse(format!("entry `{rel}` appears twice"))
                        } else if matches!(
                            e.kind(),
                            std::io::ErrorKind::IsADirectory | std::io::ErrorKind::NotADirectory
                        ) {
                            refuse(format!("entry `{rel}` conflicts with another entry ({e})"))
                        } else {
                            Error::io(format!("cannot create {}: {e}", target.display()))
                        }
                    })?;
                let mut h = reg::Sha256::default();
                let mut buf = vec![0u8; 64 << 10];
                let mut written = 0u64;
                loop {
                    let n = entry
                        .read(&mut buf)
                        .map_err(|e| refuse(format!("corrupt entry `{rel}` ({e})")))?;
                    if n == 0 {
                        break;
                    }
                    written += n as u64;
                    if written > size {
                        return Err(refuse(format!(
                            "entry `{rel}` is longer than its header says"
                        )));
                    }
                    h.update(&buf[..n]);
                    out.write_all(&buf[..n]).map_err(|e| {
                        Error::io(format!("cannot write {}: {e}", target.display()))
                    })?;
                }
                out.sync_all()
                    .map_err(|e| Error::io(format!("cannot write {}: {e}", target.display())))?;
                files.insert(rel, h.hex());
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                return Err(refuse(format!("entry `{rel}` is a link")));
            }
            other => {
                return Err(refuse(format!(
                    "entry `{rel}` is a {other:?}, not a regular file or directory"
                )));
            }
        }
    }
    let text = std::fs::read_to_string(dest.join(MANIFEST)).map_err(|_| {
        refuse(format!(
            "no {MANIFEST} at its root (not made by `dativo plugin package`?)"
        ))
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| refuse(format!("{MANIFEST}: {e}")))?;
    manifest
        .validate()
        .map_err(|e| refuse(e.message().to_string()))?;
    let needed = manifest
        .library
        .iter()
        .chain(&manifest.wheel)
        .cloned()
        .chain(
            manifest
                .command
                .first()
                .and_then(|c| c.strip_prefix("./"))
                .map(str::to_string),
        );
    for f in needed {
        if !files.contains_key(&f) {
            return Err(refuse(format!(
                "{MANIFEST} names `{f}`, which the archive does not hold"
            )));
        }
    }
    Ok(Unpacked { manifest, files })
}

/// A fresh directory under `$DATIVO_HOME/plugins/.staging`, removed on drop unless kept.
struct Staging(Option<PathBuf>);

impl Staging {
    fn new() -> Result<Staging> {
        let d = reg::plugins_dir()
            .join(".staging")
            .join(uuid::Uuid::now_v7().to_string());
        std::fs::create_dir_all(&d)
            .map_err(|e| Error::io(format!("cannot create {}: {e}", d.display())))?;
        Ok(Staging(Some(d)))
    }
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new("."))
    }
    fn keep(mut self) -> PathBuf {
        self.0.take().unwrap_or_default()
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn sha256_bytes(b: &[u8]) -> String {
    let mut h = reg::Sha256::default();
    h.update(b);
    h.hex()
}

/// Read an artifact file and check it unpacks cleanly: (bytes, manifest).
fn inspect_artifact(path: &Path) -> Result<(Vec<u8>, Manifest)> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    let staging = Staging::new()?;
    let u = unpack(&bytes, staging.path(), &path.display().to_string())?;
    Ok((bytes, u.manifest))
}

fn sig_path(artifact: &Path) -> PathBuf {
    let mut s = artifact.as_os_str().to_os_string();
    s.push(".sig");
    PathBuf::from(s)
}

/// `dativo plugin sign ARTIFACT --key FILE`.
pub fn sign(artifact: &Path, key: &Path) -> Result<ExitCode> {
    let key = SecretKey::load(key)?;
    let (bytes, m) = inspect_artifact(artifact)?;
    let st = Statement::of(
        &m,
        &key.publisher,
        bytes.len() as u64,
        &sha256_bytes(&bytes),
    );
    let sig = key.pair.sign(&st.bytes());
    let pk = key.public();
    let file = SigFile {
        format: 1,
        public_key: pk.line(),
        key: pk.id(),
        signature: B64.encode(sig.as_ref()),
        statement: st.clone(),
    };
    let out = sig_path(artifact);
    std::fs::write(
        &out,
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n",
    )
    .map_err(|e| Error::io(format!("cannot write {}: {e}", out.display())))?;
    println!(
        "signed {} as publisher {} (key {}): {}",
        st.what(),
        st.publisher,
        pk.id(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn load_sig(artifact: &Path) -> Result<SigFile> {
    let p = sig_path(artifact);
    let text = std::fs::read_to_string(&p).map_err(|_| {
        auth(format!(
            "{} is unsigned: no {} (sign it with `dativo plugin sign {} --key PUBLISHER.key`)",
            artifact.display(),
            p.display(),
            artifact.display()
        ))
    })?;
    serde_json::from_str(&text)
        .map_err(|e| auth(format!("{} is not a dativo signature: {e}", p.display())))
}

/// Check a signature file against the artifact's bytes and manifest; `key` is the key to
/// check with.
fn check_sig(
    sig: &SigFile,
    key: &PublicKey,
    bytes: &[u8],
    m: &Manifest,
    shown: &str,
) -> Result<()> {
    let st = Statement::of(
        m,
        &sig.statement.publisher,
        bytes.len() as u64,
        &sha256_bytes(bytes),
    );
    if st != sig.statement {
        return Err(auth(format!(
            "{shown}: the signature is for other bytes or another manifest (signed {} sha256 {}, artifact is {} sha256 {})",
            sig.statement.what(),
            sig.statement.sha256,
            st.what(),
            st.sha256
        )));
    }
    let raw = B64
        .decode(sig.signature.trim())
        .map_err(|_| auth(format!("{shown}: the signature is not base64")))?;
    if key.publisher != st.publisher || !key.verify(&st.bytes(), &raw) {
        return Err(auth(format!(
            "{shown}: the signature does not verify with publisher {}'s key {}",
            st.publisher,
            key.id()
        )));
    }
    Ok(())
}

/// `dativo plugin verify ARTIFACT`: archive safe, manifest sound, signed by a trusted key.
pub fn verify(artifact: &Path) -> Result<ExitCode> {
    let (bytes, m) = inspect_artifact(artifact)?;
    let sig = load_sig(artifact)?;
    let shown = artifact.display().to_string();
    let key = trusted_key(
        &sig.statement.publisher,
        &sig.key,
        &format!("{shown} ({} {})", m.name, m.version),
    )?;
    check_sig(&sig, &key, &bytes, &m, &shown)?;
    println!(
        "ok: {} {} ({} {}, readers: {}, writers: {}) signed by trusted publisher {} key {}, sha256 {}",
        m.name,
        m.version,
        m.kind.as_str(),
        m.platform,
        list(&m.readers),
        list(&m.writers),
        key.publisher,
        key.id(),
        sig.statement.sha256
    );
    Ok(ExitCode::SUCCESS)
}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// The trusted key with `id` for `publisher`, or an error saying how to trust one.
fn trusted_key(publisher: &str, id: &str, what: &str) -> Result<PublicKey> {
    let keys = trusted_keys()?;
    if let Some(k) = keys
        .iter()
        .find(|k| k.id() == id && k.publisher == publisher)
    {
        return Ok(k.clone());
    }
    let other = keys.iter().filter(|k| k.publisher == publisher).count();
    Err(auth(format!(
        "{what} is signed by publisher {publisher} with key {id}, which you do not trust{}; get {publisher}'s public key from {publisher} (not from the index) and run `dativo plugin trust PUBLISHER.pub`",
        if other > 0 {
            format!(" (you trust {other} other key(s) of {publisher}: a key change deserves a question to them)")
        } else {
            String::new()
        }
    )))
}

// ---------------------------------------------------------------------------------------------
// Publishing

/// `dativo plugin publish ARTIFACT --index DIR`.
pub fn publish(artifact: &Path, index_dir: &Path) -> Result<ExitCode> {
    let (bytes, m) = inspect_artifact(artifact)?;
    let sig = load_sig(artifact)?;
    let pk = PublicKey::parse(&sig.public_key)?;
    if pk.id() != sig.key {
        return Err(auth(format!(
            "{}: the signature names key {} but carries key {}",
            sig_path(artifact).display(),
            sig.key,
            pk.id()
        )));
    }
    check_sig(&sig, &pk, &bytes, &m, &artifact.display().to_string())?;
    let index_file = index_dir.join("index.json");
    let mut index: Index = match std::fs::read(&index_file) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::config(format!(
                "{}: not a dativo index ({e})",
                index_file.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index {
            format: 1,
            ..Default::default()
        },
        Err(e) => {
            return Err(Error::io(format!(
                "cannot read {}: {e}",
                index_file.display()
            )))
        }
    };
    let st = &sig.statement;
    let entry = index
        .plugins
        .entry(m.name.clone())
        .or_insert_with(|| IndexPlugin {
            publisher: st.publisher.clone(),
            ..Default::default()
        });
    if entry.publisher != st.publisher {
        return Err(auth(format!(
            "plugin {} in {} belongs to publisher {}; {} cannot publish it",
            m.name,
            index_file.display(),
            entry.publisher,
            st.publisher
        )));
    }
    if let Some(v) = entry
        .versions
        .iter()
        .find(|v| v.version == m.version && v.platform == m.platform)
    {
        if v.sha256 == st.sha256 {
            println!(
                "{} is already published in {} (same bytes)",
                st.what(),
                index_file.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        return Err(Error::config(format!(
            "{} is already published in {} with other bytes (sha256 {}); published versions never change — bump the version",
            st.what(),
            index_file.display(),
            v.sha256
        )));
    }
    let file_name = artifact
        .file_name()
        .and_then(|f| f.to_str())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}-{}-{}.tar.gz", m.name, m.version, m.platform));
    let rel = format!("artifacts/{}/{}/{file_name}", m.name, m.version);
    check_relative(&rel)?;
    let dest = index_dir.join(&rel);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("cannot create {}: {e}", parent.display())))?;
    }
    std::fs::write(&dest, &bytes)
        .map_err(|e| Error::io(format!("cannot write {}: {e}", dest.display())))?;
    if !m.description.is_empty() {
        entry.description = m.description.clone();
    }
    if !m.license.is_empty() {
        entry.license = m.license.clone();
    }
    if !m.homepage.is_empty() {
        entry.homepage = m.homepage.clone();
    }
    entry.versions.push(IndexVersion {
        version: m.version.clone(),
        kind: m.kind,
        abi: m.abi,
        platform: m.platform.clone(),
        readers: m.readers.clone(),
        writers: m.writers.clone(),
        url: rel,
        size: st.size,
        sha256: st.sha256.clone(),
        key: sig.key.clone(),
        signature: sig.signature.clone(),
        yanked: false,
    });
    entry.versions.sort_by(|a, b| {
        a.semver()
            .cmp(&b.semver())
            .then(a.platform.cmp(&b.platform))
    });
    let keys = index.publishers.entry(st.publisher.clone()).or_default();
    if !keys.contains(&pk.line()) {
        keys.push(pk.line());
    }
    write_index(&index_file, &index)?;
    println!("published {} to {}", st.what(), index_file.display());
    Ok(ExitCode::SUCCESS)
}

fn write_index(path: &Path, index: &Index) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)
            .map_err(|e| Error::io(format!("cannot create {}: {e}", d.display())))?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(index).unwrap_or_default() + "\n",
    )
    .and_then(|_| std::fs::rename(&tmp, path))
    .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))
}

/// `dativo plugin yank NAME@VERSION --index DIR [--undo]`.
pub fn yank(spec: &str, index_dir: &Path, undo: bool) -> Result<ExitCode> {
    let (name, version) = spec
        .split_once('@')
        .ok_or_else(|| Error::config(format!("`{spec}`: give NAME@VERSION (an exact version)")))?;
    let index_file = index_dir.join("index.json");
    let mut index: Index = serde_json::from_slice(
        &std::fs::read(&index_file)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", index_file.display())))?,
    )
    .map_err(|e| {
        Error::config(format!(
            "{}: not a dativo index ({e})",
            index_file.display()
        ))
    })?;
    let p = index
        .plugins
        .get_mut(name)
        .ok_or_else(|| Error::config(format!("no plugin {name} in {}", index_file.display())))?;
    let mut n = 0;
    for v in p.versions.iter_mut().filter(|v| v.version == version) {
        v.yanked = !undo;
        n += 1;
    }
    if n == 0 {
        return Err(Error::config(format!(
            "plugin {name} has no version {version} in {}",
            index_file.display()
        )));
    }
    write_index(&index_file, &index)?;
    println!(
        "{} {name} {version} in {}",
        if undo { "un-yanked" } else { "yanked" },
        index_file.display()
    );
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Packaging

/// Options for `dativo plugin package`.
pub struct PackageOptions<'a> {
    /// The project directory.
    pub dir: &'a Path,
    /// Where the artifact goes (default DIR/dist).
    pub out: Option<&'a Path>,
    /// Manifest fields.
    pub description: Option<&'a str>,
    /// SPDX license.
    pub license: Option<&'a str>,
    /// Homepage.
    pub homepage: Option<&'a str>,
    /// The Python that builds wheels.
    pub python: Option<&'a Path>,
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    let out = cmd
        .output()
        .map_err(|e| Error::config(format!("cannot run {what}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: String = err
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        return Err(Error::config(format!(
            "{what} failed ({}):\n{tail}",
            out.status
        )));
    }
    Ok(out)
}

/// The Python interpreter: `--python`, else the virtualenv the bridge uses
/// (`DATIVO_PYTHON_VENV`, `VIRTUAL_ENV`), else `python3`.
fn python(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    for var in ["DATIVO_PYTHON_VENV", "VIRTUAL_ENV"] {
        if let Some(v) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(v).join("bin").join("python");
        }
    }
    PathBuf::from("python3")
}

/// `dativo plugin package DIR`: build the project (Cargo, make, or a Python wheel) and write
/// `NAME-VERSION-PLATFORM.tar.gz` with its manifest. A `dativo-plugin.json` in DIR (for a
/// Flight server, or to set fields) is taken as the manifest's start.
pub fn package(o: &PackageOptions<'_>) -> Result<ExitCode> {
    let dir = o.dir;
    if !dir.is_dir() {
        return Err(Error::config(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let given: Option<Manifest> = match std::fs::read_to_string(dir.join(MANIFEST)) {
        Ok(t) => Some(
            serde_json::from_str(&t)
                .map_err(|e| Error::config(format!("{}: {e}", dir.join(MANIFEST).display())))?,
        ),
        Err(_) => None,
    };
    // (manifest, files to pack: archive path → source path)
    let (mut m, mut files): (Manifest, Vec<(String, PathBuf)>) = if let Some(m) =
        given.clone().filter(|m| m.kind == PluginKind::Flight)
    {
        (m, Vec::new())
    } else if dir.join("Cargo.toml").is_file() {
        let out = run_tool(
            Command::new("cargo")
                .args([
                    "build",
                    "--release",
                    "--message-format=json-render-diagnostics",
                ])
                .current_dir(dir)
                .stderr(std::process::Stdio::piped()),
            "cargo build --release",
        )?;
        let lib = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact")
            .filter(|v| {
                v["target"]["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "cdylib"))
            })
            .filter(|v| {
                // The project's own library, not a dependency's.
                v["manifest_path"].as_str().is_some_and(|p| {
                    std::fs::canonicalize(p).ok()
                        == std::fs::canonicalize(dir.join("Cargo.toml")).ok()
                })
            })
            .flat_map(|v| {
                v["filenames"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|f| f.as_str().map(PathBuf::from))
                    .collect::<Vec<_>>()
            })
            .find(|f| f.to_string_lossy().ends_with(std::env::consts::DLL_SUFFIX))
            .ok_or_else(|| {
                Error::config(format!(
                    "cargo built no cdylib in {} (crate-type = [\"cdylib\"] in [lib])",
                    dir.display()
                ))
            })?;
        native_manifest(&lib)?
    } else if dir.join("Makefile").is_file() || dir.join("makefile").is_file() {
        run_tool(Command::new("make").arg("-C").arg(dir), "make")?;
        let libs: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("cannot list {}: {e}", dir.display())))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name().and_then(|f| f.to_str()).is_some_and(|f| {
                    f.starts_with(std::env::consts::DLL_PREFIX)
                        && f.ends_with(std::env::consts::DLL_SUFFIX)
                })
            })
            .collect();
        match libs.as_slice() {
            [lib] => native_manifest(lib)?,
            [] => {
                return Err(Error::config(format!(
                    "make built no lib*{} in {}",
                    std::env::consts::DLL_SUFFIX,
                    dir.display()
                )))
            }
            _ => {
                return Err(Error::config(format!(
                    "{} holds several libraries ({}); package one project per plugin",
                    dir.display(),
                    libs.iter()
                        .map(|l| l.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        }
    } else if dir.join("pyproject.toml").is_file() {
        python_manifest(dir, o.python)?
    } else {
        return Err(Error::config(format!(
            "{} is not a plugin project: no Cargo.toml, Makefile or pyproject.toml (or a {MANIFEST} of kind flight)",
            dir.display()
        )));
    };
    if let Some(g) = &given {
        if g.kind != PluginKind::Flight {
            for (field, (a, b)) in [
                ("description", (&mut m.description, &g.description)),
                ("license", (&mut m.license, &g.license)),
                ("homepage", (&mut m.homepage, &g.homepage)),
            ] {
                let _ = field;
                if !b.is_empty() {
                    *a = b.clone();
                }
            }
            m.files = g.files.clone();
        }
    }
    for (a, b) in [
        (&mut m.description, o.description),
        (&mut m.license, o.license),
        (&mut m.homepage, o.homepage),
    ] {
        if let Some(b) = b {
            *a = b.to_string();
        }
    }
    // The built library / wheel sits under its own file name at the root.
    for built in [&mut m.library, &mut m.wheel] {
        if let Some(path) = built.take() {
            let p = PathBuf::from(path);
            let name = p
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or_default()
                .to_string();
            files.push((name.clone(), p));
            *built = Some(name);
        }
    }
    m.validate()?;
    // The library / wheel, then the command's program, then extra files.
    let mut wanted: Vec<String> = Vec::new();
    if m.kind == PluginKind::Flight {
        if let Some(rel) = m.command.first().and_then(|c| c.strip_prefix("./")) {
            wanted.push(rel.to_string());
        }
    }
    wanted.extend(m.files.iter().cloned());
    for rel in wanted {
        let src = dir.join(&rel);
        if src.is_dir() {
            for f in walk(&src)? {
                let r = f
                    .strip_prefix(dir)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .to_string();
                files.push((r, f));
            }
        } else if src.is_file() {
            files.push((rel, src));
        } else {
            return Err(Error::config(format!(
                "{MANIFEST} names {rel}, which is not in {}",
                dir.display()
            )));
        }
    }
    files.sort();
    files.dedup_by(|a, b| a.0 == b.0);
    let out_dir = o
        .out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("dist"));
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", out_dir.display())))?;
    let artifact = out_dir.join(format!("{}-{}-{}.tar.gz", m.name, m.version, m.platform));
    let bytes = write_archive(&m, &files)?;
    std::fs::write(&artifact, &bytes)
        .map_err(|e| Error::io(format!("cannot write {}: {e}", artifact.display())))?;
    // The artifact must pass the same checks install makes.
    inspect_artifact(&artifact)?;
    println!(
        "packaged {} {} ({} {}, readers: {}, writers: {}): {} ({} bytes, sha256 {})",
        m.name,
        m.version,
        m.kind.as_str(),
        m.platform,
        list(&m.readers),
        list(&m.writers),
        artifact.display(),
        bytes.len(),
        sha256_bytes(&bytes)
    );
    println!(
        "next: dativo plugin sign {} --key PUBLISHER.key",
        artifact.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .map_err(|e| Error::io(format!("cannot list {}: {e}", d.display())))?
            .flatten()
        {
            let t = e.file_type().map_err(|e| Error::io(e.to_string()))?;
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            } else {
                return Err(Error::config(format!(
                    "{} is neither a file nor a directory (links are not packaged)",
                    e.path().display()
                )));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Load a native library once (the author's own build) to read what it provides.
fn native_manifest(lib: &Path) -> Result<(Manifest, Vec<(String, PathBuf)>)> {
    let l = dativo_plugins::native::NativeLibrary::load(lib)?;
    let name = l.manifest.name.clone();
    check_name(&name).map_err(|e| {
        Error::config(format!(
            "the library {} calls itself `{name}`: {}",
            lib.display(),
            e.message()
        ))
    })?;
    let m = Manifest {
        format: 1,
        name,
        version: l.manifest.version.clone(),
        kind: PluginKind::Native,
        abi: Some(l.abi_version),
        platform: reg::platform(),
        readers: l.manifest.readers.iter().map(|p| p.name.clone()).collect(),
        writers: l.manifest.writers.iter().map(|p| p.name.clone()).collect(),
        description: l.manifest.description.clone(),
        license: String::new(),
        homepage: String::new(),
        library: Some(lib.display().to_string()),
        wheel: None,
        distribution: None,
        classes: BTreeMap::new(),
        command: Vec::new(),
        files: Vec::new(),
    };
    Ok((m, Vec::new()))
}

/// Build the wheel with pip (no build isolation: nothing downloaded) and read names from
/// pyproject.toml (`[project]` and the `dativo.readers` / `dativo.writers` entry points).
fn python_manifest(dir: &Path, py: Option<&Path>) -> Result<(Manifest, Vec<(String, PathBuf)>)> {
    let py = python(py);
    let info = run_tool(
        Command::new(&py).arg("-c").arg(
            "import json,sys,tomllib\n\
             p=tomllib.load(open(sys.argv[1],'rb'))\n\
             pr=p.get('project',{})\n\
             ep=pr.get('entry-points',{})\n\
             lic=pr.get('license','')\n\
             lic=lic.get('text','') if isinstance(lic,dict) else lic\n\
             urls=pr.get('urls',{})\n\
             print(json.dumps({'name':pr.get('name',''),'version':pr.get('version',''),'description':pr.get('description',''),'license':lic,'homepage':urls.get('Homepage',urls.get('homepage','')),'readers':ep.get('dativo.readers',{}),'writers':ep.get('dativo.writers',{})}))",
        ).arg(dir.join("pyproject.toml")),
        "reading pyproject.toml with Python's tomllib",
    )?;
    let v: serde_json::Value = serde_json::from_slice(&info.stdout)
        .map_err(|e| Error::internal(format!("pyproject.toml summary: {e}")))?;
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let dist = s("name");
    let name = dist.to_lowercase().replace('.', "-");
    check_name(&name)?;
    let mut classes = BTreeMap::new();
    let mut side = |k: &str| -> Vec<String> {
        let mut names = Vec::new();
        if let Some(o) = v[k].as_object() {
            for (n, target) in o {
                let t = target.as_str().unwrap_or_default().replace(':', ".");
                classes.insert(n.clone(), t);
                names.push(n.clone());
            }
        }
        names
    };
    let readers = side("readers");
    let writers = side("writers");
    if readers.is_empty() && writers.is_empty() {
        return Err(Error::config(format!(
            "{}: no [project.entry-points.\"dativo.readers\"] or \"dativo.writers\" (what would the plugin provide?)",
            dir.join("pyproject.toml").display()
        )));
    }
    let tmp = std::env::temp_dir().join(format!("dativo-wheel-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&tmp)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", tmp.display())))?;
    run_tool(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "-w",
            ])
            .arg(&tmp)
            .arg(dir),
        "pip wheel",
    )?;
    let wheel = std::fs::read_dir(&tmp)
        .map_err(|e| Error::io(e.to_string()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| Error::config("pip wheel made no .whl"))?;
    let fname = wheel
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let platform = if fname.ends_with("-none-any.whl") {
        "any".to_string()
    } else {
        reg::platform()
    };
    let m = Manifest {
        format: 1,
        name,
        version: s("version"),
        kind: PluginKind::Python,
        abi: None,
        platform,
        readers,
        writers,
        description: s("description"),
        license: s("license"),
        homepage: s("homepage"),
        library: None,
        wheel: Some(wheel.display().to_string()),
        distribution: Some(dist),
        classes,
        command: Vec::new(),
        files: Vec::new(),
    };
    Ok((m, Vec::new()))
}

/// A reproducible .tar.gz: the manifest first, then the files, with zero times and owners.
fn write_archive(m: &Manifest, files: &[(String, PathBuf)]) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut b = tar::Builder::new(gz);
    b.mode(tar::HeaderMode::Deterministic);
    let mut append = |path: &str, data: &[u8], exec: bool| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(if exec { 0o755 } else { 0o644 });
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data)
            .map_err(|e| Error::io(format!("cannot write the archive: {e}")))
    };
    let manifest = serde_json::to_vec_pretty(m).unwrap_or_default();
    append(MANIFEST, &manifest, false)?;
    for (rel, src) in files {
        check_relative(rel)?;
        if rel == MANIFEST {
            continue;
        }
        let data = std::fs::read(src)
            .map_err(|e| Error::io(format!("cannot read {}: {e}", src.display())))?;
        use std::os::unix::fs::PermissionsExt as _;
        let exec = std::fs::metadata(src).is_ok_and(|md| md.permissions().mode() & 0o111 != 0);
        append(rel, &data, exec)?;
    }
    let gz = b
        .into_inner()
        .map_err(|e| Error::io(format!("cannot write the archive: {e}")))?;
    gz.finish()
        .map_err(|e| Error::io(format!("cannot write the archive: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Finding

/// `dativo plugin search TERM`.
pub fn search(term: &str, index: Option<&str>) -> Result<ExitCode> {
    let idx = open_index(&index_location(index)?)?;
    let t = term.to_lowercase();
    let mut rows = Vec::new();
    for (name, p) in &idx.index.plugins {
        let hay = format!(
            "{name} {} {} {}",
            p.description,
            p.publisher,
            p.versions
                .iter()
                .flat_map(|v| v.readers.iter().chain(&v.writers))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        )
        .to_lowercase();
        if t.is_empty() || hay.contains(&t) {
            let latest = p
                .versions
                .iter()
                .filter(|v| !v.yanked)
                .max_by(|a, b| a.semver().cmp(&b.semver()));
            rows.push((
                name.clone(),
                latest
                    .map(|v| v.version.clone())
                    .unwrap_or_else(|| "-".into()),
                latest.map(|v| v.kind.as_str()).unwrap_or("-"),
                p.publisher.clone(),
                p.description.clone(),
            ));
        }
    }
    if rows.is_empty() {
        println!("no plugin in {} matches `{term}`", idx.shown);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<10} {:<7} {:<16} DESCRIPTION",
        "NAME", "LATEST", "KIND", "PUBLISHER"
    );
    for r in rows {
        println!("{:<24} {:<10} {:<7} {:<16} {}", r.0, r.1, r.2, r.3, r.4);
    }
    Ok(ExitCode::SUCCESS)
}

/// `dativo plugin info NAME`.
pub fn info(name: &str, index: Option<&str>) -> Result<ExitCode> {
    let idx = open_index(&index_location(index)?)?;
    let p = idx.index.plugins.get(name).ok_or_else(|| {
        Error::config(format!(
            "no plugin {name} in index {} (`dativo plugin search` lists them)",
            idx.shown
        ))
    })?;
    let trusted = trusted_keys()?;
    println!("{name}");
    println!("  description  {}", p.description);
    println!("  publisher    {}", p.publisher);
    println!("  license      {}", p.license);
    println!("  homepage     {}", p.homepage);
    println!("  versions:");
    for v in p.versions.iter().rev() {
        let is_trusted = trusted
            .iter()
            .any(|k| k.id() == v.key && k.publisher == p.publisher);
        println!(
            "    {:<10} {:<7} {:<14} abi {:<3} readers: {}; writers: {}; key {} ({}){}",
            v.version,
            v.kind.as_str(),
            v.platform,
            v.abi.map_or("-".to_string(), |a| a.to_string()),
            list(&v.readers),
            list(&v.writers),
            v.key,
            if is_trusted { "trusted" } else { "not trusted" },
            if v.yanked { "  YANKED" } else { "" }
        );
    }
    if let Some(keys) = idx.index.publishers.get(&p.publisher) {
        println!(
            "  keys the index lists for {} (trust one only after checking it with them):",
            p.publisher
        );
        for k in keys {
            println!("    {k}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Installing

/// Options for `dativo plugin install` / `update`.
pub struct InstallOptions<'a> {
    /// `--index` (else `DATIVO_INDEX`, else the lock entry's index).
    pub index: Option<&'a str>,
    /// The lock file to update or follow.
    pub lock: Option<&'a Path>,
    /// The Python for wheels.
    pub python: Option<&'a Path>,
}

fn lock_path(given: Option<&Path>) -> PathBuf {
    given
        .map(Path::to_path_buf)
        .or_else(|| {
            std::env::var_os("DATIVO_LOCK")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from(reg::LOCK_FILE))
}

/// Remembered (name, version, platform) → sha256 of everything ever installed on this machine
/// (from any index), to notice a version that later comes with other bytes.
fn seen_path() -> PathBuf {
    reg::home().join("registry-seen.json")
}

fn load_seen() -> Result<BTreeMap<String, String>> {
    match std::fs::read(seen_path()) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| {
            Error::config(format!(
                "{} is damaged ({e}); it remembers the bytes of every version installed here — fix or remove it",
                seen_path().display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(Error::io(format!("cannot read {}: {e}", seen_path().display()))),
    }
}

fn save_seen(seen: &BTreeMap<String, String>) -> Result<()> {
    let path = seen_path();
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_string_pretty(seen).unwrap_or_default() + "\n",
    )
    .and_then(|_| std::fs::rename(&tmp, &path))
    .map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))
}

fn seen_key(name: &str, version: &str, platform: &str) -> String {
    format!("{name}@{version}/{platform}")
}

/// Choose the version of `name` to install: newest matching `req` for this platform, not
/// yanked, with this dativo's ABI; each refusal names the plugin, version and reason.
fn choose<'a>(
    idx: &'a Opened,
    name: &str,
    req: &semver::VersionReq,
    req_text: &str,
) -> Result<(&'a IndexPlugin, &'a IndexVersion)> {
    let p = idx.index.plugins.get(name).ok_or_else(|| {
        Error::config(format!(
            "no plugin {name} in index {} (`dativo plugin search` lists them)",
            idx.shown
        ))
    })?;
    let here = reg::platform();
    let mut matching: Vec<&IndexVersion> = p
        .versions
        .iter()
        .filter(|v| v.semver().is_some_and(|s| req.matches(&s)))
        .collect();
    matching.sort_by_key(|v| std::cmp::Reverse(v.semver()));
    if matching.is_empty() {
        return Err(Error::config(format!(
            "plugin {name} has no version matching `{req_text}` in {} (versions: {})",
            idx.shown,
            list(
                &p.versions
                    .iter()
                    .map(|v| v.version.clone())
                    .collect::<Vec<_>>()
            )
        )));
    }
    let newest = matching[0].version.clone();
    let for_here: Vec<&IndexVersion> = matching
        .iter()
        .copied()
        .filter(|v| v.platform == here || v.platform == "any")
        .collect();
    if for_here.is_empty() {
        let platforms: Vec<String> = matching.iter().map(|v| v.platform.clone()).collect();
        return Err(Error::config(format!(
            "plugin {name} {newest} is built for {} only, not for this machine ({here})",
            list(&platforms)
        )));
    }
    let usable: Vec<&IndexVersion> = for_here.iter().copied().filter(|v| !v.yanked).collect();
    let Some(first) = usable.first() else {
        return Err(Error::config(format!(
            "plugin {name} {} is yanked (withdrawn by its publisher); no other version matches `{req_text}`",
            for_here[0].version
        )));
    };
    let fits = |v: &IndexVersion| v.kind != PluginKind::Native || v.abi == Some(reg::HOST_ABI);
    let Some(v) = usable.iter().copied().find(|v| fits(v)) else {
        return Err(Error::config(format!(
            "plugin {name} {} is built for plugin ABI {}, this dativo loads ABI {}, and no other version matching `{req_text}` is: install a version built for it",
            first.version,
            first.abi.map_or("?".to_string(), |a| a.to_string()),
            reg::HOST_ABI
        )));
    };
    Ok((p, v))
}

/// Install one chosen version (or find it already installed); returns its lock entry.
/// `expect_sha` is the lock's hash (`--locked`).
#[allow(clippy::too_many_arguments)]
fn install_one(
    idx: &Opened,
    name: &str,
    p: &IndexPlugin,
    v: &IndexVersion,
    requirement: &str,
    expect_sha: Option<&str>,
    lock: &Lock,
    o: &InstallOptions<'_>,
) -> Result<LockedPlugin> {
    let st = v.statement(&p.publisher, name);
    let what = st.what();
    // Names and versions become directories: only well-formed ones.
    check_name(name)?;
    reg::check_version(&v.version).map_err(|e| auth(format!("{what}: {}", e.message())))?;
    reg::check_platform(&v.platform).map_err(|e| auth(format!("{what}: {}", e.message())))?;
    reg::check_sha256(&v.sha256).map_err(|e| auth(format!("{what}: {}", e.message())))?;
    // A plugin does not change hands behind the lock's back.
    if let Some(l) = lock.get(name) {
        if l.publisher != p.publisher {
            return Err(auth(format!(
                "{what}: index {} says publisher {}, but dativo.lock has {name} from {}; a plugin changing publishers needs a decision: uninstall it and install again to accept",
                idx.shown, p.publisher, l.publisher
            )));
        }
    }
    // A version never changes bytes: not against the lock, not against what was installed or
    // seen here before.
    let moved = |before: &str, from: &str| {
        auth(format!(
            "{what}: index {} now serves sha256 {} but {from} has {before}; a published version must never change — refusing (ask the publisher; `dativo plugin uninstall {name}@{}` and reinstall only if they confirm)",
            idx.shown, v.sha256, v.version
        ))
    };
    if let Some(want) = expect_sha.or_else(|| {
        lock.get(name)
            .filter(|l| l.version == v.version && l.platform == v.platform)
            .map(|l| l.sha256.as_str())
    }) {
        if want != v.sha256 {
            return Err(moved(want, "dativo.lock"));
        }
    }
    let mut seen = load_seen()?;
    if let Some(before) = seen.get(&seen_key(name, &v.version, &v.platform)) {
        if before != &v.sha256 {
            return Err(moved(before, "an earlier install on this machine"));
        }
    }
    if v.signature.trim().is_empty() || v.key.is_empty() {
        return Err(auth(format!(
            "{what} is unsigned in index {} (no signature or key); refusing",
            idx.shown
        )));
    }
    let key = trusted_key(&p.publisher, &v.key, &what)?;
    let sig = B64
        .decode(v.signature.trim())
        .map_err(|_| auth(format!("{what}: the index's signature is not base64")))?;
    if !key.verify(&st.bytes(), &sig) {
        return Err(auth(format!(
            "{what}: the signature in index {} does not verify with publisher {}'s key {} (the index entry or the artifact was altered)",
            idx.shown,
            p.publisher,
            key.id()
        )));
    }
    let final_dir = reg::plugins_dir().join(name).join(&v.version);
    let entry = LockedPlugin {
        name: name.to_string(),
        version: v.version.clone(),
        requirement: requirement.to_string(),
        kind: v.kind,
        platform: v.platform.clone(),
        sha256: v.sha256.clone(),
        publisher: p.publisher.clone(),
        key: v.key.clone(),
        index: idx.shown.clone(),
    };
    if let Ok(i) = Installed::open(&final_dir) {
        if i.record.sha256 != v.sha256 {
            return Err(moved(
                &i.record.sha256,
                &format!("the installation in {}", final_dir.display()),
            ));
        }
        if i.verify_files().is_ok() {
            if i.manifest.kind == PluginKind::Python {
                // The directory is here; the package must be in this Python too.
                pip_install(&i.dir, &i.manifest, o.python, &what)?;
            }
            println!("{what} is already installed in {}", final_dir.display());
            return Ok(entry);
        }
    }
    let bytes = idx
        .source
        .fetch(&v.url, v.size)
        .map_err(|e| Error::new(e.kind(), format!("{what}: {}", e.message())))?;
    if bytes.len() as u64 != v.size {
        return Err(auth(format!(
            "{what}: downloaded {} bytes, the signature says {}",
            bytes.len(),
            v.size
        )));
    }
    let got = sha256_bytes(&bytes);
    if got != v.sha256 {
        return Err(auth(format!(
            "{what}: downloaded bytes have sha256 {got}, the signature says {} (a corrupted or altered artifact)",
            v.sha256
        )));
    }
    let staging = Staging::new()?;
    let u = unpack(&bytes, staging.path(), &what)?;
    let m = &u.manifest;
    let inside = Statement::of(m, &p.publisher, v.size, &v.sha256);
    if inside != st {
        return Err(auth(format!(
            "{what}: the artifact's manifest says {} (kind {}, platform {}, readers {}, writers {}), not what was signed",
            inside.what(),
            m.kind.as_str(),
            m.platform,
            list(&m.readers),
            list(&m.writers)
        )));
    }
    let record = InstallRecord {
        name: name.to_string(),
        version: v.version.clone(),
        kind: v.kind,
        platform: v.platform.clone(),
        sha256: v.sha256.clone(),
        publisher: p.publisher.clone(),
        key: v.key.clone(),
        index: idx.shown.clone(),
        files: u.files.clone(),
        python: (m.kind == PluginKind::Python).then(|| python(o.python).display().to_string()),
    };
    std::fs::write(
        staging.path().join(RECORD),
        serde_json::to_string_pretty(&record).unwrap_or_default() + "\n",
    )
    .map_err(|e| Error::io(format!("cannot write the install record: {e}")))?;
    // Into place: the old installation (a damaged one) is moved aside first and restored if
    // anything after fails, so there is always either the old or the new one.
    if let Some(parent) = final_dir.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("cannot create {}: {e}", parent.display())))?;
    }
    let aside = final_dir.with_file_name(format!(".{}-old-{}", v.version, uuid::Uuid::now_v7()));
    let had_old = final_dir.exists();
    if had_old {
        std::fs::rename(&final_dir, &aside)
            .map_err(|e| Error::io(format!("cannot move {} aside: {e}", final_dir.display())))?;
    }
    let restore = |err: Error| {
        let _ = std::fs::remove_dir_all(&final_dir);
        if had_old {
            let _ = std::fs::rename(&aside, &final_dir);
        }
        let _ = std::fs::remove_dir(final_dir.parent().unwrap_or(Path::new("/nonexistent")));
        err
    };
    let staged = staging.keep();
    if let Err(e) = std::fs::rename(&staged, &final_dir) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(restore(Error::io(format!(
            "cannot move the plugin into {}: {e}",
            final_dir.display()
        ))));
    }
    if m.kind == PluginKind::Python {
        // Last: a wheel pip refuses leaves no plugin directory behind.
        pip_install(&final_dir, m, o.python, &what).map_err(restore)?;
    }
    if had_old {
        let _ = std::fs::remove_dir_all(&aside);
    }
    seen.insert(seen_key(name, &v.version, &v.platform), v.sha256.clone());
    save_seen(&seen)?;
    println!(
        "installed {what} from {} (publisher {}, key {}) in {}",
        idx.shown,
        p.publisher,
        key.id(),
        final_dir.display()
    );
    Ok(entry)
}

/// pip-install a Python plugin's wheel (from its installation directory) into `python`'s
/// environment: that exact file, no index, no dependencies, never a source build.
fn pip_install(dir: &Path, m: &Manifest, python_: Option<&Path>, what: &str) -> Result<()> {
    let wheel = dir.join(m.wheel.as_deref().unwrap_or_default());
    let py = python(python_);
    run_tool(
        Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "--no-index",
                "--only-binary=:all:",
                "--force-reinstall",
            ])
            .arg(&wheel),
        &format!("{what}: pip install (with {})", py.display()),
    )
    .map(|_| ())
}

/// Hold `$DATIVO_HOME/plugins/.lock` (one install, update or uninstall at a time on this
/// machine), then finish what an interrupted one left: staging directories are removed, and an
/// installation moved aside is put back when its replacement never arrived.
fn lock_plugins_dir() -> Result<std::fs::File> {
    let dir = reg::plugins_dir();
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| Error::io(format!("cannot open {}: {e}", dir.join(".lock").display())))?;
    f.lock()
        .map_err(|e| Error::io(format!("cannot lock {}: {e}", dir.join(".lock").display())))?;
    let _ = std::fs::remove_dir_all(dir.join(".staging"));
    for plugin in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        for e in std::fs::read_dir(plugin.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(version) = name
                .strip_prefix('.')
                .and_then(|n| n.split_once("-old-"))
                .map(|(v, _)| v.to_string())
            else {
                continue;
            };
            let live = plugin.path().join(&version);
            if live.exists() {
                let _ = std::fs::remove_dir_all(e.path());
            } else {
                let _ = std::fs::rename(e.path(), &live);
            }
        }
    }
    Ok(f)
}

/// A lock file holds one platform's artifacts (plus `any`): refuse to add this machine's to a
/// lock made on another platform.
fn check_lock_platform(lock: &Lock, lp: &Path) -> Result<()> {
    let here = reg::platform();
    if let Some(l) = lock
        .plugins
        .iter()
        .find(|l| l.platform != "any" && l.platform != here)
    {
        return Err(Error::config(format!(
            "{} pins plugin {} {} for {}, and this machine is {here}: a lock file is per platform; use another lock file here (--lock dativo.{here}.lock)",
            lp.display(),
            l.name,
            l.version,
            l.platform
        )));
    }
    Ok(())
}

/// `dativo plugin install NAME[@REQ]…` (records each in the lock file) or `--locked`.
pub fn install(specs: &[String], locked: bool, o: &InstallOptions<'_>) -> Result<ExitCode> {
    let _held = lock_plugins_dir()?;
    let lp = lock_path(o.lock);
    let mut lock = if lp.is_file() {
        Lock::load(&lp)?
    } else {
        Lock::default()
    };
    if locked {
        if !specs.is_empty() {
            return Err(Error::config(
                "--locked installs what the lock file pins; give no plugin names",
            ));
        }
        if !lp.is_file() {
            return Err(Error::config(format!(
                "--locked: no lock file {} (run `dativo plugin install NAME` first, or --lock FILE)",
                lp.display()
            )));
        }
        let here = reg::platform();
        for l in &lock.plugins {
            if l.platform != "any" && l.platform != here {
                return Err(Error::config(format!(
                    "{} pins plugin {} {} for {}, and this machine is {here}: a lock file is per platform (its hash is of that platform's artifact); make the lock on {here}, or keep one lock per platform (--lock)",
                    lp.display(),
                    l.name,
                    l.version,
                    l.platform
                )));
            }
        }
        for l in lock.plugins.clone() {
            let loc = o
                .index
                .map(str::to_string)
                .unwrap_or_else(|| l.index.clone());
            let idx = open_index(&loc)?;
            let req = reg::parse_requirement(&format!("={}", l.version))?;
            let (p, chosen) = choose(&idx, &l.name, &req, &format!("={}", l.version))?;
            // The locked artifact itself when the index has it (an `any` build and a platform
            // build of one version are two artifacts).
            let v = p
                .versions
                .iter()
                .find(|v| {
                    v.version == l.version && v.platform == l.platform && v.sha256 == l.sha256
                })
                .unwrap_or(chosen);
            if p.publisher != l.publisher {
                return Err(auth(format!(
                    "plugin {} {}: index {} says publisher {}, the lock file {}",
                    l.name, l.version, idx.shown, p.publisher, l.publisher
                )));
            }
            install_one(
                &idx,
                &l.name,
                p,
                v,
                &l.requirement,
                Some(&l.sha256),
                &lock,
                o,
            )?;
        }
        println!(
            "{} plugin(s) installed as {} pins them",
            lock.plugins.len(),
            lp.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    if specs.is_empty() {
        return Err(Error::config(
            "name a plugin to install (NAME, NAME@1.2.3, NAME@^1), or --locked",
        ));
    }
    check_lock_platform(&lock, &lp)?;
    let idx = open_index(&index_location(o.index)?)?;
    for spec in specs {
        let (name, req_text) = match spec.split_once('@') {
            Some((n, r)) => (n.trim(), Some(r.trim())),
            None => (spec.trim(), None),
        };
        check_name(name)?;
        let req = reg::parse_requirement(req_text.unwrap_or("*"))?;
        let (p, v) = choose(&idx, name, &req, req_text.unwrap_or("*"))?;
        let requirement = req_text
            .map(str::to_string)
            .unwrap_or_else(|| format!("^{}", v.version));
        let entry = install_one(&idx, name, p, v, &requirement, None, &lock, o)?;
        lock.put(entry);
        lock.save(&lp)?;
    }
    println!("pinned in {}", lp.display());
    Ok(ExitCode::SUCCESS)
}

/// `dativo plugin update [NAME…]`: the newest version matching each locked requirement.
pub fn update(names: &[String], o: &InstallOptions<'_>) -> Result<ExitCode> {
    let _held = lock_plugins_dir()?;
    let lp = lock_path(o.lock);
    if !lp.is_file() {
        return Err(Error::config(format!(
            "no lock file {}: update moves locked plugins to their newest matching version (install first)",
            lp.display()
        )));
    }
    let mut lock = Lock::load(&lp)?;
    check_lock_platform(&lock, &lp)?;
    for n in names {
        if lock.get(n).is_none() {
            return Err(Error::config(format!(
                "plugin {n} is not in {}",
                lp.display()
            )));
        }
    }
    let mut changed = 0;
    for l in lock.plugins.clone() {
        if !names.is_empty() && !names.contains(&l.name) {
            continue;
        }
        let loc = o
            .index
            .map(str::to_string)
            .unwrap_or_else(|| l.index.clone());
        let idx = open_index(&loc)?;
        let req = reg::parse_requirement(&l.requirement)?;
        let (p, v) = choose(&idx, &l.name, &req, &l.requirement)?;
        if v.version == l.version {
            println!(
                "{} {} is the newest matching `{}`",
                l.name, l.version, l.requirement
            );
            continue;
        }
        let entry = install_one(&idx, &l.name, p, v, &l.requirement, None, &lock, o)?;
        println!("{}: {} -> {}", l.name, l.version, entry.version);
        lock.put(entry);
        lock.save(&lp)?;
        changed += 1;
    }
    println!("{changed} plugin(s) updated in {}", lp.display());
    Ok(ExitCode::SUCCESS)
}

/// `dativo plugin uninstall NAME[@VERSION]`: remove the files (and the pip package), and the
/// lock entry.
pub fn uninstall(spec: &str, lock: Option<&Path>, py: Option<&Path>) -> Result<ExitCode> {
    let _held = lock_plugins_dir()?;
    let (name, version) = match spec.split_once('@') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    check_name(name)?;
    let all = reg::installed_versions(name);
    let gone: Vec<&Installed> = all
        .iter()
        .filter(|i| version.is_none_or(|v| i.manifest.version == v))
        .collect();
    if gone.is_empty() {
        return Err(Error::config(format!(
            "plugin {spec} is not installed (`dativo plugins list --installed`)"
        )));
    }
    for i in &gone {
        if i.manifest.kind == PluginKind::Python {
            if let Some(d) = &i.manifest.distribution {
                reg::check_distribution(d)?;
                // The interpreter it was installed with, unless told otherwise.
                let pyb = py
                    .map(Path::to_path_buf)
                    .or_else(|| i.record.python.as_ref().map(PathBuf::from))
                    .unwrap_or_else(|| python(None));
                // Only this version: another version of the package in that environment
                // belongs to another installation.
                let probe = run_tool(
                    Command::new(&pyb).args([
                        "-c",
                        "import importlib.metadata as m,sys\ntry: print(m.version(sys.argv[1]))\nexcept m.PackageNotFoundError: pass",
                        d,
                    ]),
                    &format!("asking {} for {d}'s version", pyb.display()),
                );
                match probe {
                    Ok(out) => {
                        let there = String::from_utf8_lossy(&out.stdout).trim().to_string();
                        if there == i.manifest.version {
                            run_tool(
                                Command::new(&pyb)
                                    .args(["-m", "pip", "uninstall", "--quiet", "-y", d]),
                                &format!("pip uninstall {d}"),
                            )?;
                        } else if !there.is_empty() {
                            println!(
                                "left {d} {there} in {}'s environment (not the version being removed)",
                                pyb.display()
                            );
                        }
                    }
                    Err(e) => println!(
                        "warning: could not check {}'s environment, {d} may still be installed there: {}",
                        pyb.display(),
                        e.message()
                    ),
                }
            }
        }
        std::fs::remove_dir_all(&i.dir)
            .map_err(|e| Error::io(format!("cannot remove {}: {e}", i.dir.display())))?;
        println!(
            "removed {} {} ({})",
            i.manifest.name,
            i.manifest.version,
            i.dir.display()
        );
    }
    let _ = std::fs::remove_dir(reg::plugins_dir().join(name));
    let lp = lock_path(lock);
    if lp.is_file() {
        let mut l = Lock::load(&lp)?;
        if l.get(name)
            .is_some_and(|e| version.is_none_or(|v| e.version == v))
        {
            l.plugins.retain(|e| e.name != name);
            l.save(&lp)?;
            println!("removed {name} from {}", lp.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dativo plugins list --installed`.
pub fn list_installed() -> Result<ExitCode> {
    let all = reg::all_installed();
    if all.is_empty() {
        println!(
            "no registry plugins installed in {} (`dativo plugin install NAME`)",
            reg::plugins_dir().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<10} {:<7} {:<16} {:<16} READERS / WRITERS",
        "NAME", "VERSION", "KIND", "PUBLISHER", "KEY"
    );
    for i in all {
        let status = if i.verify_files().is_ok() {
            ""
        } else {
            "  (files changed: reinstall)"
        };
        println!(
            "{:<24} {:<10} {:<7} {:<16} {:<16} {} / {}{status}",
            i.manifest.name,
            i.manifest.version,
            i.manifest.kind.as_str(),
            i.record.publisher,
            i.record.key,
            list(&i.manifest.readers),
            list(&i.manifest.writers)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Every locked plugin's installation directory (for `deploy`): (name, version, dir).
pub fn locked_dirs(lock: &Path) -> Result<Vec<(String, String, PathBuf)>> {
    let l = Lock::load(lock)?;
    let mut out = Vec::new();
    for p in &l.plugins {
        let dir = reg::plugins_dir().join(&p.name).join(&p.version);
        let i = Installed::open(&dir).map_err(|_| {
            Error::config(format!(
                "plugin {} {} (pinned by {}) is not installed: run `dativo plugin install --locked` first",
                p.name,
                p.version,
                lock.display()
            ))
        })?;
        if i.record.sha256 != p.sha256 {
            return Err(auth(format!(
                "plugin {} {} installed in {} is not the artifact {} pins",
                p.name,
                p.version,
                dir.display(),
                lock.display()
            )));
        }
        if i.record.name != p.name || i.record.version != p.version {
            return Err(auth(format!(
                "{} holds {} {}, not {} {}",
                dir.display(),
                i.record.name,
                i.record.version,
                p.name,
                p.version
            )));
        }
        i.verify_files()?;
        out.push((p.name.clone(), p.version.clone(), dir));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
                h.set_size(0);
            }
            // Bypass the builder's own path checks: write the name bytes directly.
            let name = path.as_bytes();
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn unsafe_archives_are_refused_before_anything_escapes() {
        let dir = tempfile::tempdir().unwrap();
        for (path, kind, why) in [
            ("../escape", tar::EntryType::Regular, "leaves the directory"),
            ("/abs", tar::EntryType::Regular, "absolute"),
            ("a/../../b", tar::EntryType::Regular, "leaves the directory"),
            ("link", tar::EntryType::Symlink, "is a link"),
            ("fifo", tar::EntryType::Fifo, "not a regular file"),
        ] {
            let d = dir.path().join(uuid::Uuid::now_v7().to_string());
            std::fs::create_dir_all(&d).unwrap();
            let e = unpack(&tar_gz(&[(path, kind, b"x")]), &d, "t").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Auth, "{path}: {e}");
            assert!(e.message().contains(why), "{path}: {e}");
        }
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn signatures_bind_every_field() {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let k = SecretKey {
            publisher: "acme".into(),
            pair: ring::signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap(),
        };
        let st = Statement {
            publisher: "acme".into(),
            name: "x".into(),
            version: "1.0.0".into(),
            kind: PluginKind::Native,
            abi: Some(1),
            platform: "linux-x86_64".into(),
            readers: vec!["r".into()],
            writers: vec![],
            size: 10,
            sha256: "ab".into(),
        };
        let sig = k.pair.sign(&st.bytes());
        let pk = k.public();
        assert!(pk.verify(&st.bytes(), sig.as_ref()));
        let mut other = st.clone();
        other.readers = vec!["r".into(), "s".into()];
        assert!(!pk.verify(&other.bytes(), sig.as_ref()));
        let mut other = st.clone();
        other.version = "1.0.1".into();
        assert!(!pk.verify(&other.bytes(), sig.as_ref()));
        assert_eq!(PublicKey::parse(&pk.line()).unwrap(), pk);
        assert!(PublicKey::parse("dativo-ed25519 acme AAAA").is_err());
    }
}
