//! Where writers put files: a local directory or an object store (`s3://bucket/prefix`, through
//! opendal — the same storage layer iceberg-rust uses). Paths handed to a [`Location`] are
//! relative to its root and use `/`.
//!
//! Local writes are fsynced and published by rename; object stores publish by server-side
//! copy and write large files as multipart uploads (parts of 8 MB), so memory stays bounded.

use std::fs::{self, File};
use std::future::IntoFuture;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use dativo_core::secrets::{self, Secret};
use dativo_core::{Error, Result, ResultExt};

use dativo_core::rt::runtime;

/// `s3:` — object storage settings; credentials from here, else the AWS environment chain.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible servers (`http://127.0.0.1:9000`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Region (default `us-east-1`).
    #[serde(default)]
    pub region: Option<String>,
    /// Access key id.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// Secret access key; use `${env:…}`.
    #[serde(default)]
    pub secret_access_key: Option<Secret>,
    /// Session token.
    #[serde(default)]
    pub session_token: Option<Secret>,
    /// Path-style addressing (`http://host/bucket/key`), needed by most local servers.
    #[serde(default)]
    pub path_style: bool,
}

/// `gcs:` — Google Cloud Storage settings for `gs://bucket/prefix`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    /// Path of a service-account JSON key; default: the environment (ADC, VM metadata).
    #[serde(default)]
    pub credential_path: Option<String>,
    /// Endpoint (for emulators).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Send no credentials at all (public buckets, emulators): no key file, no environment, no
    /// VM metadata server.
    #[serde(default)]
    pub anonymous: bool,
    /// An OAuth token handed out by an Iceberg REST catalog (`gcs.oauth2.token`); not set in
    /// job files. Used when no key file is given.
    #[serde(skip)]
    pub token: Option<Secret>,
}

/// `azure:` — Azure Blob Storage settings for `az://container/prefix`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    /// Storage account name.
    #[serde(default)]
    pub account_name: Option<String>,
    /// Storage account key; use `${env:…}`.
    #[serde(default)]
    pub account_key: Option<Secret>,
    /// SAS token instead of a key.
    #[serde(default)]
    pub sas_token: Option<Secret>,
    /// Endpoint (default `https://<account>.blob.core.windows.net`).
    #[serde(default)]
    pub endpoint: Option<String>,
}

/// Credentials and endpoints for every object store a path may name.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions<'a> {
    /// For `s3://`.
    pub s3: Option<&'a S3Config>,
    /// For `gs://`.
    pub gcs: Option<&'a GcsConfig>,
    /// For `az://`.
    pub azure: Option<&'a AzureConfig>,
}

const PART_SIZE: usize = 8 << 20;

/// A root directory, local or in an object store.
#[derive(Clone)]
pub enum Location {
    /// A local directory.
    Local(PathBuf),
    /// An object store prefix.
    Object {
        /// The operator, rooted at the prefix.
        op: opendal::Operator,
        /// `s3://bucket/prefix`, for messages and reports.
        url: String,
    },
}

/// Whether a conditional write (or read) was refused: the object exists, or changed.
pub fn precondition_failed(e: &opendal::Error) -> bool {
    matches!(
        e.kind(),
        opendal::ErrorKind::ConditionNotMatch | opendal::ErrorKind::AlreadyExists
    )
}

/// A dativo error for an opendal failure while `doing` something (kind from the failure).
pub fn od(e: opendal::Error, doing: &str) -> Error {
    let text = e.to_string();
    let msg = format!("{doing}: {}", secrets::scrub(&text));
    let err = match e.kind() {
        opendal::ErrorKind::PermissionDenied => Error::auth(msg),
        // No credentials could be made (a bad key file, no metadata server): an auth error.
        opendal::ErrorKind::Unexpected
            if text.contains("signing http request") || text.contains("load credential") =>
        {
            // reqsign walks the whole chain and ends with "failed to load signing
            // credential": say what the chain is.
            let hint = if text.contains("service: gcs") {
                Some("Google credentials could not be loaded: a `gcs.credential_path` key, when set, \
                 was refused; without one, set GOOGLE_APPLICATION_CREDENTIALS to a \
                 service-account key, or run where the VM metadata server gives a token \
                 (workload identity); `gcs.anonymous: true` for public buckets and emulators")
            } else if text.contains("service: azblob") {
                Some(
                    "Azure credentials could not be loaded: set `azure.account_key` or \
                 `azure.sas_token`, a service principal (AZURE_TENANT_ID, AZURE_CLIENT_ID, \
                 AZURE_CLIENT_SECRET), or run where a managed identity (IMDS) or AKS workload \
                 identity gives a token (the Azure CLI login is not used)",
                )
            } else {
                None
            };
            Error::auth(match hint {
                Some(h) => format!("{msg} ({h})"),
                None => msg,
            })
        }
        opendal::ErrorKind::ConfigInvalid => Error::config(msg),
        opendal::ErrorKind::RateLimited => Error::transient(msg),
        _ if e.is_temporary() => Error::transient(msg),
        _ => Error::io(msg),
    };
    err.with_source(e)
}

/// As [`od`], for a write: an object store answers a write with "not found" only when the
/// bucket or container does not exist — a configuration error (exit 2), said as such.
pub fn od_write(e: opendal::Error, doing: &str) -> Error {
    // Not a multipart upload the store forgot (S3 `NoSuchUpload`): that is no missing bucket.
    if e.kind() == opendal::ErrorKind::NotFound && !e.to_string().contains("NoSuchUpload") {
        return Error::config(format!(
            "{doing}: the bucket or container does not exist (create it, or fix the path)"
        ))
        .with_source(e);
    }
    od(e, doing)
}

/// An operator on the Azure Blob container `container`, rooted at `prefix`.
fn azblob(
    container: &str,
    prefix: &str,
    cfg: &AzureConfig,
    path: &str,
) -> Result<opendal::Operator> {
    let mut b = opendal::services::Azblob::default()
        .container(container)
        .root(&format!("/{prefix}"));
    match (&cfg.endpoint, &cfg.account_name) {
        (Some(e), _) => b = b.endpoint(e),
        (None, Some(n)) => b = b.endpoint(&format!("https://{n}.blob.core.windows.net")),
        (None, None) => {
            return Err(Error::config(format!(
                "`{path}`: set `azure.account_name` (or `azure.endpoint`)"
            ))
            .with_key_path("azure"))
        }
    }
    if let Some(n) = &cfg.account_name {
        b = b.account_name(n);
    }
    if let Some(k) = &cfg.account_key {
        b = b.account_key(k.expose());
    }
    if let Some(t) = &cfg.sas_token {
        // The portal hands SAS tokens out with a leading `?`.
        b = b.sas_token(t.expose().trim_start_matches('?'));
    }
    Ok(opendal::Operator::new(b)
        .map_err(|e| od(e, "configuring Azure Blob Storage"))?
        .finish())
}

/// The storage suffixes of Azure's clouds (public, China, US Government).
const AZURE_CLOUDS: [&str; 3] = [
    "core.windows.net",
    "core.chinacloudapi.cn",
    "core.usgovcloudapi.net",
];

/// An Azure location as Iceberg engines (Spark, Trino, pyiceberg, DuckDB) name it:
/// `abfss://container@account.dfs.core.windows.net/prefix` (ADLS Gen2), `abfs://`, or
/// `wasbs://container@account.blob.core.windows.net/prefix`, `wasb://`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AzureUrl {
    /// `abfss`, `abfs`, `wasbs` or `wasb`.
    pub scheme: String,
    /// The container (ADLS: file system).
    pub container: String,
    /// The host as written (`account.dfs.core.windows.net`).
    pub host: String,
    /// The storage account: the host's first label.
    pub account: String,
    /// The path inside the container, without leading or trailing `/`.
    pub prefix: String,
}

impl AzureUrl {
    /// `Ok(None)` when `path` is not one of these schemes; an error when it is, but lacks the
    /// `container@account.host` part.
    pub fn parse(path: &str) -> Result<Option<AzureUrl>> {
        let Some((scheme, rest)) = path.split_once("://") else {
            return Ok(None);
        };
        if !matches!(scheme, "abfss" | "abfs" | "wasbs" | "wasb") {
            return Ok(None);
        }
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let parsed = authority.split_once('@').and_then(|(c, host)| {
            let account = host.split('.').next().unwrap_or_default();
            (!c.is_empty() && !account.is_empty()).then_some((c, host, account))
        });
        let Some((container, host, account)) = parsed else {
            return Err(Error::config(format!(
                "`{path}`: write it as {scheme}://CONTAINER@ACCOUNT.{}.core.windows.net/PATH (or use az://CONTAINER/PATH with `azure.account_name`)",
                if scheme.starts_with("abfs") { "dfs" } else { "blob" }
            ))
            .with_key_path("path"));
        };
        Ok(Some(AzureUrl {
            scheme: scheme.to_string(),
            container: container.to_string(),
            host: host.to_string(),
            account: account.to_ascii_lowercase(),
            prefix: prefix.trim_matches('/').to_string(),
        }))
    }

    /// `scheme://container@host/rel` (`scheme://container@host` for an empty `rel`).
    pub fn root_with(&self, rel: &str) -> String {
        let base = format!("{}://{}@{}", self.scheme, self.container, self.host);
        if rel.is_empty() {
            base
        } else {
            format!("{base}/{rel}")
        }
    }
}

/// Whether `path` names an object store.
pub fn is_remote(path: &str) -> bool {
    path.contains("://") && !path.starts_with("file://")
}

impl Location {
    /// Parse `path`: a local directory, `file:///dir`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`, or Azure in the form Iceberg engines
    /// write (`abfss://container@account.dfs.core.windows.net/prefix`, also `abfs://`,
    /// `wasbs://`, `wasb://`), reached through the Blob API.
    pub fn parse(path: &str, opts: &StoreOptions<'_>) -> Result<Location> {
        let s3 = opts.s3;
        if let Some(rest) = path
            .strip_prefix("s3://")
            .or_else(|| path.strip_prefix("s3a://"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::config(format!("`{path}` has no bucket")).with_key_path("path"));
            }
            let cfg = s3.cloned().unwrap_or_default();
            let mut b = opendal::services::S3::default()
                .bucket(bucket)
                .root(&format!("/{}", prefix.trim_matches('/')))
                .region(cfg.region.as_deref().unwrap_or("us-east-1"));
            if let Some(e) = &cfg.endpoint {
                b = b.endpoint(e);
            }
            if let Some(k) = &cfg.access_key_id {
                b = b.access_key_id(k);
            }
            if let Some(s) = &cfg.secret_access_key {
                b = b.secret_access_key(s.expose());
            }
            if let Some(t) = &cfg.session_token {
                b = b.session_token(t.expose());
            }
            if !cfg.path_style && cfg.endpoint.is_none() {
                b = b.enable_virtual_host_style();
            }
            let op = opendal::Operator::new(b)
                .map_err(|e| od(e, "configuring S3"))?
                .finish();
            return Ok(Location::Object {
                op,
                url: format!("s3://{}/{}", bucket, prefix.trim_matches('/')),
            });
        }
        let split = |rest: &str| -> Result<(String, String)> {
            let (b, p) = rest.split_once('/').unwrap_or((rest, ""));
            if b.is_empty() {
                return Err(Error::config(format!("`{path}` has no bucket")).with_key_path("path"));
            }
            Ok((b.to_string(), p.trim_matches('/').to_string()))
        };
        if let Some(rest) = path.strip_prefix("gs://") {
            let (bucket, prefix) = split(rest)?;
            let cfg = opts.gcs.cloned().unwrap_or_default();
            let mut b = opendal::services::Gcs::default()
                .bucket(&bucket)
                .root(&format!("/{prefix}"));
            if let Some(p) = &cfg.credential_path {
                if !Path::new(p).is_file() {
                    return Err(Error::config(format!(
                        "gcs.credential_path {p}: no such file (a service-account JSON key)"
                    ))
                    .with_key_path("gcs.credential_path"));
                }
                // The key and nothing else: a refused key must not fall back to gcloud's
                // credentials or the VM's identity.
                b = b
                    .credential_path(p)
                    .disable_vm_metadata()
                    .disable_config_load();
            }
            if let Some(e) = &cfg.endpoint {
                b = b.endpoint(e);
            }
            if let (Some(t), None) = (&cfg.token, &cfg.credential_path) {
                b = b.token(t.expose().to_string());
            }
            if cfg.anonymous {
                if cfg.credential_path.is_some() {
                    return Err(Error::config(
                        "`gcs.anonymous: true` sends no credentials; remove `gcs.credential_path` or `anonymous`",
                    )
                    .with_key_path("gcs"));
                }
                b = b
                    .skip_signature()
                    .disable_vm_metadata()
                    .disable_config_load();
            }
            let op = opendal::Operator::new(b)
                .map_err(|e| od(e, "configuring Google Cloud Storage"))?
                .finish();
            return Ok(Location::Object {
                op,
                url: format!("gs://{bucket}/{prefix}"),
            });
        }
        if let Some(rest) = path.strip_prefix("az://") {
            let (container, prefix) = split(rest)?;
            let cfg = opts.azure.cloned().unwrap_or_default();
            return Ok(Location::Object {
                op: azblob(&container, &prefix, &cfg, path)?,
                url: format!("az://{container}/{prefix}"),
            });
        }
        if let Some(az) = AzureUrl::parse(path)? {
            let mut cfg = opts.azure.cloned().unwrap_or_default();
            if cfg.endpoint.is_none() {
                // The Blob endpoint of the URL's cloud: `acct.dfs.core.windows.net` →
                // `https://acct.blob.core.windows.net`. Only Azure's own clouds: a URL (one
                // from a table's metadata too) must never send credentials to another host.
                let host = az.host.to_ascii_lowercase();
                let suffix = host.split_once('.').and_then(|(_, rest)| {
                    let rest = rest
                        .strip_prefix("dfs.")
                        .or_else(|| rest.strip_prefix("blob."))?;
                    AZURE_CLOUDS.contains(&rest).then_some(rest)
                });
                let account_ok = az
                    .account
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
                match suffix {
                    Some(sfx) if account_ok => {
                        cfg.endpoint = Some(format!("https://{}.blob.{sfx}", az.account))
                    }
                    _ => {
                        return Err(Error::config(format!(
                            "`{path}`: the host `{}` is not an Azure storage endpoint (ACCOUNT.dfs.core.windows.net, or a sovereign cloud's); set `azure.endpoint` for any other",
                            az.host
                        ))
                        .with_key_path("azure.endpoint"))
                    }
                }
            }
            match &cfg.account_name {
                Some(n) if !n.eq_ignore_ascii_case(&az.account) => {
                    return Err(Error::config(format!(
                    "`{path}` names the storage account `{}`, but `azure.account_name` is `{n}`",
                    az.account
                ))
                    .with_key_path("azure.account_name"))
                }
                Some(_) => {}
                None => cfg.account_name = Some(az.account.clone()),
            }
            return Ok(Location::Object {
                op: azblob(&az.container, &az.prefix, &cfg, path)?,
                url: az.root_with(&az.prefix),
            });
        }
        if is_remote(path) {
            return Err(Error::config(format!(
                "`{path}`: use a local path, s3://, gs://, az:// or abfss://"
            ))
            .with_key_path("path"));
        }
        Ok(Location::Local(PathBuf::from(
            path.trim_start_matches("file://"),
        )))
    }

    /// The full path or URL of `rel`.
    pub fn display(&self, rel: &str) -> String {
        match self {
            Location::Local(root) => root.join(rel).display().to_string(),
            Location::Object { url, .. } => format!("{}/{}", url.trim_end_matches('/'), rel),
        }
    }

    /// A stable name for the root: the absolute directory, or the URL (audit records use it).
    pub fn name(&self) -> String {
        match self {
            Location::Local(root) => std::path::absolute(root)
                .unwrap_or_else(|_| root.clone())
                .display()
                .to_string(),
            Location::Object { url, .. } => url.trim_end_matches('/').to_string(),
        }
    }

    fn local(&self, rel: &str) -> Option<PathBuf> {
        match self {
            Location::Local(root) => Some(root.join(rel)),
            Location::Object { .. } => None,
        }
    }

    /// Create directory `rel` (local only; object stores have none).
    pub fn create_dir(&self, rel: &str) -> Result<()> {
        if let Some(p) = self.local(rel) {
            fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        }
        Ok(())
    }

    /// File names directly under directory `rel` (empty if it does not exist).
    pub fn list(&self, rel: &str) -> Result<Vec<String>> {
        match self {
            Location::Local(root) => {
                let dir = root.join(rel);
                if !dir.exists() {
                    return Ok(Vec::new());
                }
                let mut out = Vec::new();
                for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                    out.push(e?.file_name().to_string_lossy().into_owned());
                }
                Ok(out)
            }
            Location::Object { op, .. } => {
                let dir = format!("{}/", rel.trim_end_matches('/'));
                let entries = runtime()
                    .block_on(op.list(&dir))
                    .or_else(|e| {
                        if e.kind() == opendal::ErrorKind::NotFound {
                            Ok(Vec::new())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| od(e, &format!("listing {}", self.display(rel))))?;
                Ok(entries
                    .into_iter()
                    .map(|e| e.name().trim_end_matches('/').to_string())
                    .filter(|n| !n.is_empty())
                    .collect())
            }
        }
    }

    /// The bytes of `rel`.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>> {
        match self {
            Location::Local(root) => {
                let p = root.join(rel);
                fs::read(&p).with_context(|| format!("reading {}", p.display()))
            }
            Location::Object { op, .. } => runtime()
                .block_on(op.read(rel))
                .map(|b| b.to_vec())
                .map_err(|e| od(e, &format!("reading {}", self.display(rel)))),
        }
    }

    /// The size of file `rel` in bytes.
    pub fn size(&self, rel: &str) -> Result<u64> {
        match self {
            Location::Local(root) => {
                let p = root.join(rel);
                Ok(fs::metadata(&p)
                    .with_context(|| format!("reading {}", p.display()))?
                    .len())
            }
            Location::Object { op, .. } => runtime()
                .block_on(op.stat(rel))
                .map(|m| m.content_length())
                .map_err(|e| od(e, &format!("checking {}", self.display(rel)))),
        }
    }

    /// Whether `rel` exists.
    pub fn exists(&self, rel: &str) -> Result<bool> {
        match self {
            Location::Local(root) => Ok(root.join(rel).exists()),
            Location::Object { op, .. } => runtime()
                .block_on(op.exists(rel))
                .map_err(|e| od(e, &format!("checking {}", self.display(rel)))),
        }
    }

    /// Write `bytes` to `rel` whole: a temporary name, fsync and rename locally (readers never
    /// see a partial file); one PUT on object stores (atomic per object).
    pub fn put(&self, rel: &str, bytes: &[u8]) -> Result<()> {
        match self {
            Location::Local(root) => {
                let dst = root.join(rel);
                let dir = dst.parent().expect("a file in a directory").to_path_buf();
                let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
                let mut f =
                    File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
                f.write_all(bytes)
                    .and_then(|_| f.sync_all())
                    .with_context(|| format!("writing {}", tmp.display()))?;
                fs::rename(&tmp, &dst).with_context(|| format!("writing {}", dst.display()))?;
                sync_dir(&dir)
            }
            Location::Object { op, .. } => runtime()
                .block_on(op.write(rel, bytes.to_vec()))
                .map(|_| ())
                .map_err(|e| od_write(e, &format!("writing {}", self.display(rel)))),
        }
    }

    /// Write `bytes` to `rel` only if `rel` does not exist yet: `Ok(false)` when it does.
    ///
    /// On object stores this is one conditional PUT (`If-None-Match: *`), so two writers can
    /// never both create `rel`; stores without conditional writes fall back to check-then-put.
    /// Locally the caller holds the directory's lock, and a check before the rename suffices.
    pub fn put_new(&self, rel: &str, bytes: &[u8]) -> Result<bool> {
        match self {
            Location::Local(_) => {
                if self.exists(rel)? {
                    return Ok(false);
                }
                self.put(rel, bytes).map(|_| true)
            }
            Location::Object { op, .. } => {
                if !op.info().full_capability().write_with_if_not_exists {
                    if self.exists(rel)? {
                        return Ok(false);
                    }
                    return self.put(rel, bytes).map(|_| true);
                }
                // A content type makes opendal's GCS service send a multipart upload, where
                // `ifGenerationMatch=0` is honoured by every server (fake-gcs-server ignores it
                // on media uploads).
                match runtime().block_on(
                    op.write_with(rel, bytes.to_vec())
                        .if_not_exists(true)
                        .content_type("application/octet-stream")
                        .into_future(),
                ) {
                    Ok(_) => Ok(true),
                    Err(e) if precondition_failed(&e) => Ok(false),
                    Err(e) => Err(od_write(e, &format!("writing {}", self.display(rel)))),
                }
            }
        }
    }

    /// The object-store operator, for what needs more than files (leases).
    pub fn operator(&self) -> Option<&opendal::Operator> {
        match self {
            Location::Local(_) => None,
            Location::Object { op, .. } => Some(op),
        }
    }

    /// Move `from` to `to` (local rename; object stores copy then delete).
    pub fn publish(&self, from: &str, to: &str) -> Result<()> {
        match self {
            Location::Local(root) => {
                let dst = root.join(to);
                if let Some(parent) = dst.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::rename(root.join(from), &dst)
                    .with_context(|| format!("publishing {}", dst.display()))
            }
            Location::Object { op, .. } => runtime().block_on(async {
                op.copy(from, to)
                    .await
                    .map_err(|e| od(e, &format!("publishing {}", self.display(to))))?;
                op.delete(from)
                    .await
                    .map_err(|e| od(e, &format!("removing {}", self.display(from))))
            }),
        }
    }

    /// Delete `rel` (missing is fine).
    pub fn delete(&self, rel: &str) -> Result<()> {
        match self {
            Location::Local(root) => {
                let p = root.join(rel);
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        Err(Error::from(e).context(format!("removing {}", p.display())))
                    }
                    _ => Ok(()),
                }
            }
            Location::Object { op, .. } => runtime()
                .block_on(op.delete(rel))
                .map_err(|e| od(e, &format!("removing {}", self.display(rel)))),
        }
    }

    /// Make renames in directory `rel` durable (local only).
    pub fn sync(&self, rel: &str) -> Result<()> {
        match self.local(rel) {
            Some(p) => sync_dir(&p),
            None => Ok(()),
        }
    }

    /// A streaming writer for a new file `rel`.
    pub fn create(&self, rel: &str) -> Result<Box<dyn Sink>> {
        match self {
            Location::Local(root) => {
                let p = root.join(rel);
                let f = File::create(&p).with_context(|| format!("creating {}", p.display()))?;
                Ok(Box::new(LocalSink {
                    inner: BufWriter::with_capacity(1 << 20, f),
                    path: p,
                }))
            }
            Location::Object { op, .. } => {
                let w = runtime()
                    .block_on(async { op.writer_with(rel).chunk(PART_SIZE).await })
                    .map_err(|e| od_write(e, &format!("creating {}", self.display(rel))))?;
                Ok(Box::new(ObjectSink {
                    writer: w,
                    buf: Vec::with_capacity(PART_SIZE),
                    name: self.display(rel),
                }))
            }
        }
    }
}

/// A readable, seekable file.
pub trait ReadSeek: std::io::BufRead + std::io::Seek + Send {}
impl<T: std::io::BufRead + std::io::Seek + Send> ReadSeek for T {}

impl Location {
    /// Every file under directory `rel`, recursively, as paths relative to the root.
    pub fn list_recursive(&self, rel: &str) -> Result<Vec<String>> {
        match self {
            Location::Local(root) => {
                fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
                    for e in fs::read_dir(dir)? {
                        let p = e?.path();
                        if p.is_dir() {
                            walk(&p, base, out)?;
                        } else if let Ok(r) = p.strip_prefix(base) {
                            out.push(r.to_string_lossy().into_owned());
                        }
                    }
                    Ok(())
                }
                let mut out = Vec::new();
                let dir = root.join(rel);
                if dir.exists() {
                    walk(&dir, root, &mut out)
                        .with_context(|| format!("listing {}", dir.display()))?;
                }
                Ok(out)
            }
            Location::Object { op, .. } => {
                let dir = if rel.is_empty() {
                    String::new()
                } else {
                    format!("{}/", rel.trim_end_matches('/'))
                };
                let opts = opendal::options::ListOptions {
                    recursive: true,
                    ..Default::default()
                };
                let entries = runtime()
                    .block_on(op.list_options(&dir, opts))
                    .map_err(|e| od(e, &format!("listing {}", self.display(rel))))?;
                Ok(entries
                    .into_iter()
                    .filter(|e| e.metadata().mode() == opendal::EntryMode::FILE)
                    .map(|e| e.path().trim_start_matches('/').to_string())
                    .collect())
            }
        }
    }

    /// Open `rel` for reading: a buffered file, or a streaming object reader.
    pub fn open(&self, rel: &str) -> Result<Box<dyn ReadSeek>> {
        match self {
            Location::Local(root) => {
                let p = root.join(rel);
                let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
                Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, f)))
            }
            Location::Object { op, .. } => {
                let _enter = runtime().enter();
                let blocking = opendal::blocking::Operator::new(op.clone())
                    .map_err(|e| od(e, "opening a blocking reader"))?;
                let r = blocking
                    .reader(rel)
                    .and_then(|r| r.into_std_read(..))
                    .map_err(|e| od(e, &format!("opening {}", self.display(rel))))?;
                Ok(Box::new(r))
            }
        }
    }
}

/// A file being written; [`Sink::finish`] makes it durable and returns its size.
pub trait Sink: Write + Send {
    /// Flush, make durable, return the size in bytes.
    fn finish(self: Box<Self>) -> Result<u64>;
    /// [`Sink::finish`], plus the SHA-256 (hex) of the stored bytes when this sink computes it
    /// (encrypting and hashing sinks).
    fn finish_digest(self: Box<Self>) -> Result<(u64, Option<String>)> {
        self.finish().map(|n| (n, None))
    }
}

/// A sink that computes the SHA-256 of everything written through it.
pub struct HashingSink {
    inner: Box<dyn Sink>,
    sha: Sha256,
}

impl HashingSink {
    /// Hash what goes into `inner`.
    pub fn new(inner: Box<dyn Sink>) -> Self {
        HashingSink {
            inner,
            sha: Sha256::new(),
        }
    }
}

impl Write for HashingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.sha.update(&b[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Sink for HashingSink {
    fn finish(self: Box<Self>) -> Result<u64> {
        self.finish_digest().map(|(n, _)| n)
    }
    fn finish_digest(self: Box<Self>) -> Result<(u64, Option<String>)> {
        Ok((self.inner.finish()?, Some(self.sha.hex())))
    }
}

struct LocalSink {
    inner: BufWriter<File>,
    path: PathBuf,
}

impl Write for LocalSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.inner.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Sink for LocalSink {
    fn finish(self: Box<Self>) -> Result<u64> {
        let path = self.path.display().to_string();
        let f = self
            .inner
            .into_inner()
            .map_err(|e| Error::from(e.into_error()))
            .with_context(|| format!("writing {path}"))?;
        f.sync_all().with_context(|| format!("syncing {path}"))?;
        Ok(f.metadata()?.len())
    }
}

struct ObjectSink {
    writer: opendal::Writer,
    buf: Vec<u8>,
    name: String,
}

impl ObjectSink {
    fn ship(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let part = std::mem::replace(&mut self.buf, Vec::with_capacity(PART_SIZE));
        // The opendal error stays inside (sinks scrub messages before they leave the process).
        runtime()
            .block_on(self.writer.write(part))
            .map_err(std::io::Error::other)
    }
}

impl Write for ObjectSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PART_SIZE {
            self.ship()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink for ObjectSink {
    fn finish(mut self: Box<Self>) -> Result<u64> {
        let name = self.name.clone();
        self.ship().with_context(|| format!("uploading {name}"))?;
        let meta = runtime()
            .block_on(self.writer.close())
            .map_err(|e| od_write(e, &format!("completing the upload of {name}")))?;
        Ok(meta.content_length())
    }
}

/// fsync a directory so that renames in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// A SHA-256 computed while bytes stream past (the ciphertext hash of the audit records).
pub struct Sha256(ring::digest::Context);

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl Sha256 {
    /// A new, empty digest.
    pub fn new() -> Self {
        Sha256(ring::digest::Context::new(&ring::digest::SHA256))
    }
    /// Add bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b)
    }
    /// The digest as lowercase hex.
    pub fn hex(self) -> String {
        self.0
            .finish()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_supported_location() {
        let azure = AzureConfig {
            account_name: Some("acct".into()),
            ..Default::default()
        };
        let opts = StoreOptions {
            azure: Some(&azure),
            ..Default::default()
        };
        let e = Location::parse("az://c/p", &StoreOptions::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("azure.account_name"), "{e}");
        assert!(matches!(
            Location::parse("lake/x", &opts).unwrap(),
            Location::Local(_)
        ));
        for (path, url) in [
            ("s3://bkt/a/b", "s3://bkt/a/b"),
            ("gs://bkt/p", "gs://bkt/p"),
            ("az://container/p/q", "az://container/p/q"),
            (
                "abfss://container@acct.dfs.core.windows.net/w/",
                "abfss://container@acct.dfs.core.windows.net/w",
            ),
            (
                "wasbs://container@acct.blob.core.windows.net",
                "wasbs://container@acct.blob.core.windows.net",
            ),
        ] {
            match Location::parse(path, &opts).unwrap() {
                Location::Object { url: u, .. } => assert_eq!(u, url),
                Location::Local(_) => panic!("{path} parsed as local"),
            }
        }
        let e = Location::parse("hdfs://x/y", &opts).err().unwrap();
        assert!(
            e.to_string().contains("s3://, gs://, az:// or abfss://"),
            "{e}"
        );
        assert!(Location::parse("s3:///nobucket", &opts).is_err());
        // The account is in the URL: it must agree with the configured one.
        let e = Location::parse("abfss://c@other.dfs.core.windows.net/p", &opts)
            .err()
            .unwrap();
        assert!(e.to_string().contains("`other`"), "{e}");
        let e = Location::parse("abfss://c/p", &opts).err().unwrap();
        assert!(e.to_string().contains("CONTAINER@ACCOUNT.dfs"), "{e}");
        // Without `azure.endpoint`, the host must say which cloud's endpoint to use.
        let e = Location::parse("abfss://c@acct.example.com/p", &opts)
            .err()
            .unwrap();
        assert!(e.to_string().contains("azure.endpoint"), "{e}");
        assert!(Location::parse("abfss://c@ACCT.dfs.core.chinacloudapi.cn/p", &opts).is_ok());
        // Never another host, whatever the URL says.
        for bad in [
            "abfss://c@acct.dfs.core.windows.net.evil.com/p",
            "abfss://c@acct.dfs.evil.com/p",
            "abfss://c@acct.dfs.core.windows.net@evil.com/p",
        ] {
            let e = Location::parse(bad, &StoreOptions::default())
                .err()
                .unwrap();
            assert!(e.to_string().contains("azure.endpoint"), "{bad}: {e}");
        }
        // Without an `azure:` block the URL's account is enough to build the client.
        assert!(Location::parse(
            "abfss://c@acct.dfs.core.windows.net/p",
            &StoreOptions::default()
        )
        .is_ok());
    }

    #[test]
    fn azure_urls_keep_their_form() {
        let u = AzureUrl::parse("abfs://fs@acct.dfs.core.windows.net/a/b/")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                u.scheme.as_str(),
                u.container.as_str(),
                u.account.as_str(),
                u.prefix.as_str()
            ),
            ("abfs", "fs", "acct", "a/b")
        );
        assert_eq!(
            u.root_with("x/y"),
            "abfs://fs@acct.dfs.core.windows.net/x/y"
        );
        assert_eq!(AzureUrl::parse("az://c/p").unwrap(), None);
        assert_eq!(AzureUrl::parse("/local/dir").unwrap(), None);
    }
}
