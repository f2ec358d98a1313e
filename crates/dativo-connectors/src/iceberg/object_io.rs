//! Iceberg tables on Azure Blob Storage and Google Cloud Storage, through dativo's own object
//! store clients (opendal, with the job's `azure:` / `gcs:` block and credential chain).
//!
//! * **Azure.** iceberg-rust 0.10 reaches Azure only through the ADLS Gen2 (DFS) API, which
//!   Blob-only accounts and Azurite do not serve, and with no endpoint setting. This storage
//!   speaks the Blob API instead, for the URLs Iceberg engines write:
//!   `abfss://container@account.dfs.core.windows.net/path` (also `abfs://`, `wasbs://`,
//!   `wasb://`). Spark, Trino, pyiceberg and DuckDB read tables with those locations; on an
//!   account with a hierarchical namespace the Blob and DFS APIs see the same objects.
//! * **GCS.** opendal 0.57 stores an object written in one request under a twice-encoded name
//!   (`day=1` → `day%3D1`), so a partitioned table's data files would not be where its
//!   metadata says: such keys are staged under a plain name and copied into place.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use iceberg::io::{
    FileMetadata, FileRead, FileWrite, InputFile, OutputFile, Storage, StorageConfig,
    StorageFactory,
};
use opendal::layers::{RetryLayer, TimeoutLayer};
use opendal::Operator;
use serde::{Deserialize, Serialize};

use dativo_core::secrets;
use dativo_storage::{AzureConfig, AzureUrl, Location, StoreOptions};

/// Builds [`ObjectStorage`] for one store: Azure with the job's `azure:` settings, or GCS with
/// its `gcs:` settings. (Credentials an Iceberg REST catalog vends: `gcs.oauth2.token` is used
/// when no key file is set; Azure's `adls.sas-token.*` are not — the `azure:` block's and the
/// credential chain's are.)
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ObjectStorageFactory {
    /// Never serialized (it holds secrets); a deserialized factory reaches no store.
    #[serde(skip)]
    store: Option<Store>,
}

/// The store a table's files are on, and how to reach it.
#[derive(Debug, Clone)]
enum Store {
    Azure(AzureConfig),
    Gcs(dativo_storage::GcsConfig),
}

impl ObjectStorageFactory {
    /// For a warehouse on Azure (pinned to `cfg`'s account).
    pub(crate) fn azure(cfg: AzureConfig) -> Self {
        ObjectStorageFactory {
            store: Some(Store::Azure(cfg)),
        }
    }

    /// For a warehouse on GCS.
    pub(crate) fn gcs(cfg: dativo_storage::GcsConfig) -> Self {
        ObjectStorageFactory {
            store: Some(Store::Gcs(cfg)),
        }
    }
}

#[typetag::serde(name = "DativoObjectStorageFactory")]
impl StorageFactory for ObjectStorageFactory {
    fn build(&self, config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        let mut store = self.store.clone();
        if let Some(Store::Gcs(g)) = &mut store {
            if let Some(t) = config.get(iceberg::io::GCS_TOKEN) {
                secrets::register(t);
                g.token = Some(dativo_core::secrets::Secret::new(t.clone()));
            }
        }
        Ok(Arc::new(ObjectStorage {
            store,
            ops: Arc::default(),
        }))
    }
}

/// Iceberg's file IO over Azure Blob Storage and GCS: one operator per container or bucket,
/// rooted there, built on first use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ObjectStorage {
    #[serde(skip)]
    store: Option<Store>,
    #[serde(skip)]
    ops: Arc<Mutex<HashMap<String, Operator>>>,
}

fn io_error(e: opendal::Error, doing: &str, path: &str) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("{doing} {}", secrets::scrub(path)),
    )
    .with_source(e)
}

impl ObjectStorage {
    /// The operator for `path`'s container or bucket and the object's key inside it.
    fn resolve(&self, path: &str) -> iceberg::Result<(Operator, String)> {
        let invalid = |msg: String| Err(iceberg::Error::new(iceberg::ErrorKind::DataInvalid, msg));
        let (root, key, opts) = match (&self.store, path.strip_prefix("gs://")) {
            (Some(Store::Gcs(gcs)), Some(rest)) => {
                let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
                let opts = StoreOptions {
                    gcs: Some(gcs),
                    ..Default::default()
                };
                (format!("gs://{bucket}"), key.to_string(), opts)
            }
            (Some(Store::Azure(azure)), None) => {
                let url = match AzureUrl::parse(path) {
                    Ok(Some(u)) => u,
                    Ok(None) => {
                        return invalid(format!(
                            "`{path}` is not an Azure location (abfss://container@account.dfs.core.windows.net/…)"
                        ))
                    }
                    Err(e) => return invalid(e.to_string()),
                };
                let opts = StoreOptions {
                    azure: Some(azure),
                    ..Default::default()
                };
                (url.root_with(""), url.prefix, opts)
            }
            _ => return invalid(format!("`{path}` is not on this table's store: refused")),
        };
        let mut ops = self.ops.lock().expect("not poisoned");
        let op = match ops.entry(root) {
            Entry::Occupied(o) => o.get().clone(),
            Entry::Vacant(v) => {
                let loc = Location::parse(v.key(), &opts).map_err(|e| {
                    iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string())
                })?;
                let op = loc
                    .operator()
                    .expect("a gs:// or Azure URL is an object store")
                    .clone()
                    // As iceberg-rust does for its own stores: each attempt bounded, transient
                    // failures retried.
                    .layer(TimeoutLayer::new())
                    .layer(RetryLayer::new());
                v.insert(op).clone()
            }
        };
        Ok((op, key))
    }
}

#[typetag::serde(name = "DativoObjectStorage")]
#[async_trait]
impl Storage for ObjectStorage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        let (op, key) = self.resolve(path)?;
        op.exists(&key)
            .await
            .map_err(|e| io_error(e, "checking", path))
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let (op, key) = self.resolve(path)?;
        let meta = op
            .stat(&key)
            .await
            .map_err(|e| io_error(e, "reading the size of", path))?;
        Ok(FileMetadata {
            size: meta.content_length(),
        })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let (op, key) = self.resolve(path)?;
        Ok(op
            .read(&key)
            .await
            .map_err(|e| io_error(e, "reading", path))?
            .to_bytes())
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        let (op, key) = self.resolve(path)?;
        let r = op
            .reader(&key)
            .await
            .map_err(|e| io_error(e, "opening", path))?;
        Ok(Box::new(BlobReader(r, path.to_string())))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        // One way to write (and to stage a GCS key): through the writer.
        let mut w = self.writer(path).await?;
        w.write(bs).await?;
        w.close().await
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let (op, key) = self.resolve(path)?;
        let staged = gcs_staging(path, &key);
        let w = op
            .writer(staged.as_deref().unwrap_or(&key))
            .await
            .map_err(|e| io_error(e, "creating", path))?;
        Ok(Box::new(BlobWriter {
            inner: w,
            path: path.to_string(),
            publish: staged.map(|s| (op, s, key)),
        }))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        let (op, key) = self.resolve(path)?;
        op.delete(&key)
            .await
            .map_err(|e| io_error(e, "deleting", path))
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        let (op, key) = self.resolve(path)?;
        if key.trim_matches('/').is_empty() {
            return Err(iceberg::Error::new(
                iceberg::ErrorKind::DataInvalid,
                format!("refusing to delete a whole container ({path})"),
            ));
        }
        let dir = format!("{}/", key.trim_end_matches('/'));
        op.delete_with(&dir)
            .recursive(true)
            .await
            .map_err(|e| io_error(e, "deleting everything under", path))
    }

    async fn delete_stream(&self, mut paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        while let Some(path) = paths.next().await {
            self.delete(&path).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// A ranged reader on one blob.
struct BlobReader(opendal::Reader, String);

#[async_trait]
impl FileRead for BlobReader {
    async fn read(&self, range: std::ops::Range<u64>) -> iceberg::Result<Bytes> {
        Ok(self
            .0
            .read(range)
            .await
            .map_err(|e| io_error(e, "reading", &self.1))?
            .to_bytes())
    }
}

/// A streaming (block-list) upload of one blob.
struct BlobWriter {
    inner: opendal::Writer,
    path: String,
    /// On GCS, for a key opendal would store under another name: the operator, the staging
    /// key written, and the key it is copied to on close.
    publish: Option<(Operator, String, String)>,
}

#[async_trait]
impl FileWrite for BlobWriter {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.inner
            .write(bs)
            .await
            .map_err(|e| io_error(e, "writing", &self.path))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        self.inner
            .close()
            .await
            .map_err(|e| io_error(e, "finishing", &self.path))?;
        if let Some((op, staged, key)) = self.publish.take() {
            publish(&op, &staged, &key, &self.path).await?;
        }
        Ok(())
    }
}

/// opendal 0.57's GCS uploads in one request percent-encode the object name twice: a key
/// holding a character outside `A-Z a-z 0-9 - _ . ! ~ * ' ( ) /` (a partition directory
/// `day=2026-01-01`) would be stored as `day%3D2026-01-01`. Such a key is written under a
/// plain staging name beside its first such directory and copied into place (a server-side
/// rewrite names it right), as the Parquet writer stages its files. `None`: write in place.
fn gcs_staging(path: &str, key: &str) -> Option<String> {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.!~*'()/".contains(&b);
    if !path.starts_with("gs://") || key.bytes().all(plain) {
        return None;
    }
    let first = key.bytes().position(|b| !plain(b)).unwrap_or(0);
    let dir = key[..first].rfind('/').map_or("", |i| &key[..=i]);
    Some(format!("{dir}.dativo-upload-{}", uuid::Uuid::now_v7()))
}

/// Copy the staged object `staged` to `key` and delete the staging object.
async fn publish(op: &Operator, staged: &str, key: &str, path: &str) -> iceberg::Result<()> {
    op.copy(staged, key)
        .await
        .map_err(|e| io_error(e, "publishing", path))?;
    // A staging object left behind is unreferenced: orphan removal deletes it.
    let _ = op.delete(staged).await;
    Ok(())
}
