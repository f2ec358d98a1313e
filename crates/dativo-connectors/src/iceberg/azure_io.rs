//! Iceberg tables on Azure Blob Storage.
//!
//! iceberg-rust 0.10 reaches Azure only through the ADLS Gen2 (DFS) API, which Blob-only
//! accounts and Azurite do not serve, and with no endpoint setting. This storage speaks the
//! Blob API instead (opendal's azblob service, the client dativo's other `az://` paths use, with
//! the same `azure:` block and credential chain), for the URLs Iceberg engines write:
//! `abfss://container@account.dfs.core.windows.net/path` (also `abfs://`, `wasbs://`,
//! `wasb://`). Spark, Trino, pyiceberg and DuckDB read tables with those locations; on an
//! account with a hierarchical namespace the Blob and DFS APIs see the same objects.

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

/// Builds [`AzureBlobStorage`] with the job's `azure:` settings. (Credentials a REST catalog
/// vends in the storage properties, `adls.sas-token.*`, are not used: the `azure:` block's and
/// the credential chain's are.)
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct AzureBlobStorageFactory {
    /// Never serialized (it holds secrets); a deserialized factory uses the environment's
    /// credential chain only.
    #[serde(skip)]
    cfg: AzureConfig,
}

impl AzureBlobStorageFactory {
    pub(crate) fn new(cfg: AzureConfig) -> Self {
        AzureBlobStorageFactory { cfg }
    }
}

#[typetag::serde(name = "DativoAzureBlobStorageFactory")]
impl StorageFactory for AzureBlobStorageFactory {
    fn build(&self, _config: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(AzureBlobStorage {
            cfg: self.cfg.clone(),
            ops: Arc::default(),
        }))
    }
}

/// Iceberg's file IO over Azure Blob Storage: one operator per container, rooted at the
/// container, built on first use.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AzureBlobStorage {
    #[serde(skip)]
    cfg: AzureConfig,
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

impl AzureBlobStorage {
    /// The operator for `path`'s container and the object's key inside it.
    fn resolve(&self, path: &str) -> iceberg::Result<(Operator, String)> {
        let url = match AzureUrl::parse(path) {
            Ok(Some(u)) => u,
            Ok(None) => {
                return Err(iceberg::Error::new(
                    iceberg::ErrorKind::DataInvalid,
                    format!("`{path}` is not an Azure location (abfss://container@account.dfs.core.windows.net/…)"),
                ))
            }
            Err(e) => {
                return Err(iceberg::Error::new(
                    iceberg::ErrorKind::DataInvalid,
                    e.to_string(),
                ))
            }
        };
        let root = url.root_with("");
        let mut ops = self.ops.lock().expect("not poisoned");
        let op = match ops.entry(root) {
            Entry::Occupied(o) => o.get().clone(),
            Entry::Vacant(v) => {
                let opts = StoreOptions {
                    azure: Some(&self.cfg),
                    ..Default::default()
                };
                let loc = Location::parse(v.key(), &opts).map_err(|e| {
                    iceberg::Error::new(iceberg::ErrorKind::DataInvalid, e.to_string())
                })?;
                let op = loc
                    .operator()
                    .expect("an Azure URL is an object store")
                    .clone()
                    // As iceberg-rust does for its own stores: each attempt bounded, transient
                    // failures retried.
                    .layer(TimeoutLayer::new())
                    .layer(RetryLayer::new());
                v.insert(op).clone()
            }
        };
        Ok((op, url.prefix))
    }
}

#[typetag::serde(name = "DativoAzureBlobStorage")]
#[async_trait]
impl Storage for AzureBlobStorage {
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
        let (op, key) = self.resolve(path)?;
        op.write(&key, bs)
            .await
            .map_err(|e| io_error(e, "writing", path))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        let (op, key) = self.resolve(path)?;
        let w = op
            .writer(&key)
            .await
            .map_err(|e| io_error(e, "creating", path))?;
        Ok(Box::new(BlobWriter(w, path.to_string())))
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
struct BlobWriter(opendal::Writer, String);

#[async_trait]
impl FileWrite for BlobWriter {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        self.0
            .write(bs)
            .await
            .map_err(|e| io_error(e, "writing", &self.1))
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        self.0
            .close()
            .await
            .map(|_| ())
            .map_err(|e| io_error(e, "finishing", &self.1))
    }
}
