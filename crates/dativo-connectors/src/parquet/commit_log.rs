//! The commit log of a Parquet directory: `_dativo/commits/<sequence>.json` manifests.
//!
//! Protocol (one writer per directory at a time, enforced by `_dativo/writer.lock`):
//! 1. data files are written to `_dativo/staging/<name>.inprogress` and fsynced;
//! 2. a manifest naming them and carrying the reader's state is written to a temporary name,
//!    fsynced and renamed to the next sequence number — **the commit point**;
//! 3. the staged files are renamed to their final names in the directory.
//!
//! On start, the latest manifest is rolled forward (files it names that are still staged are
//! renamed into place) and everything else in staging is deleted: it was never committed.
//! Tools that read the directory (DuckDB, pyarrow, Spark) see only committed, whole files:
//! `_dativo` starts with `_`, and staged names do not end in `.parquet`.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use dativo_core::{Error, Result, ResultExt};

/// Manifest format identifier, written in every manifest.
pub const FORMAT: &str = "dativo.parquet.commit/1";

/// One commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// 1, 2, 3, … across all runs of the directory.
    pub sequence: u64,
    /// The job that committed.
    pub job: String,
    /// The run that committed.
    pub run_id: String,
    /// When (RFC 3339, UTC).
    pub committed_at: String,
    /// The reader's state covering every row committed so far.
    pub state: Option<Value>,
    /// Files published by this commit.
    pub files: Vec<ManifestFile>,
}

/// A file published by a commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the directory.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// Paths of the bookkeeping directories under a Parquet directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The directory that receives data files.
    pub root: PathBuf,
}

impl Layout {
    /// `_dativo/commits`.
    pub fn commits(&self) -> PathBuf {
        self.root.join("_dativo").join("commits")
    }
    /// `_dativo/staging`.
    pub fn staging(&self) -> PathBuf {
        self.root.join("_dativo").join("staging")
    }
    /// Where a data file with final relative path `rel` is staged.
    pub fn staged(&self, rel: &str) -> PathBuf {
        self.staging()
            .join(format!("{}.inprogress", rel.replace('/', "__")))
    }
    /// The lock file held by the active writer.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("_dativo").join("writer.lock")
    }

    /// Create the directories.
    pub fn create(&self) -> Result<()> {
        for d in [self.commits(), self.staging()] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// The latest manifest, if any.
    pub fn latest(&self) -> Result<Option<Manifest>> {
        let dir = self.commits();
        if !dir.exists() {
            return Ok(None);
        }
        let mut best: Option<(u64, PathBuf)> = None;
        for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(seq) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            if best.as_ref().is_none_or(|(b, _)| seq > *b) {
                best = Some((seq, e.path()));
            }
        }
        let Some((_, path)) = best else {
            return Ok(None);
        };
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| {
            Error::data(format!(
                "commit manifest {} is corrupt: {e}",
                path.display()
            ))
        })?;
        Ok(Some(m))
    }

    /// Finish the publication of the latest commit and delete everything uncommitted.
    pub fn recover(&self) -> Result<Option<Manifest>> {
        let latest = self.latest()?;
        if let Some(m) = &latest {
            self.publish(m)?;
        }
        for dir in [self.staging(), self.commits()] {
            for e in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
                let e = e?;
                let name = e.file_name().to_string_lossy().into_owned();
                let leftover = dir == self.staging() || name.starts_with(".tmp-");
                if leftover {
                    tracing::debug!(file = %e.path().display(), "removing uncommitted file");
                    fs::remove_file(e.path())
                        .with_context(|| format!("removing {}", e.path().display()))?;
                }
            }
        }
        Ok(latest)
    }

    /// Move the files of `m` from staging into place (idempotent).
    pub fn publish(&self, m: &Manifest) -> Result<()> {
        let mut moved = false;
        for f in &m.files {
            let dst = self.root.join(&f.path);
            let src = self.staged(&f.path);
            if !dst.exists() && src.exists() {
                if let Some(parent) = dst.parent() {
                    fs::create_dir_all(parent)?;
                }
                fs::rename(&src, &dst).with_context(|| format!("publishing {}", dst.display()))?;
                moved = true;
            } else if !dst.exists() {
                tracing::warn!(file = %dst.display(), sequence = m.sequence, "a committed file is missing");
            }
        }
        if moved {
            sync_dir(&self.root)?;
        }
        Ok(())
    }

    /// Write `m` as the next commit. This is the commit point.
    pub fn write(&self, m: &Manifest) -> Result<()> {
        let dir = self.commits();
        let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::now_v7()));
        let dst = dir.join(format!("{:020}.json", m.sequence));
        if dst.exists() {
            return Err(Error::transient(format!(
                "commit {} already exists in {}: another writer committed concurrently",
                m.sequence,
                dir.display()
            )));
        }
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec_pretty(m)?)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &dst).with_context(|| format!("committing {}", dst.display()))?;
        sync_dir(&dir)
    }
}

/// fsync a directory so that renames in it survive a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}
