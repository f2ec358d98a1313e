//! The commit log of a Parquet directory: `_dativo/commits/<sequence>.json` manifests.
//!
//! Protocol (one writer per directory at a time, enforced by `_dativo/writer.lock`):
//! 1. data files are written to `_dativo/staging/<name>.inprogress` and fsynced;
//! 2. a manifest naming them and carrying the reader's state is written to a temporary name,
//!    fsynced and renamed to the next sequence number — **the commit point**;
//! 3. the staged files are renamed to their final names in the directory;
//! 4. for an overwrite (a manifest with `replaces: N`), the files of the commits it replaces
//!    — the live files of commits up to N — are deleted.
//!
//! On start, the latest manifest is rolled forward (files it names that are still staged are
//! renamed into place, and for an overwrite the replaced files still there are deleted) and
//! everything else in staging is deleted: it was never committed.
//! Tools that read the directory (DuckDB, pyarrow, Spark) see only committed, whole files:
//! `_dativo` starts with `_`, and staged names do not end in `.parquet`. They do not see an
//! overwrite atomically: between steps 3 and 4 both the old and the new files are there.
//!
//! The live files are those of the latest overwrite and of every commit after it (of every
//! commit when there was none): [`Layout::live`]. A new commit is written only once the
//! previous one is fully rolled forward, so the files an overwrite replaces are the live files
//! of the commits from the overwrite before it on.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use dativo_core::{Error, Result};

use dativo_storage::Location;

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
    /// The columns of the files (without partition columns), so that a later run can refuse a
    /// schema its readers could not combine with these files. Absent in older manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<Vec<ColumnSpec>>,
    /// An overwrite: this commit's files replace those of every commit up to this sequence
    /// (`sequence - 1`), which are deleted once this commit's files are published. Absent for
    /// an append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<u64>,
}

impl Manifest {
    /// Whether this commit replaces everything committed before it.
    pub fn is_overwrite(&self) -> bool {
        self.replaces.is_some()
    }
}

/// A column of the data files, as recorded in a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Arrow data type, as Arrow displays it (`Int64`, `Decimal128(12, 2)`, …).
    #[serde(rename = "type")]
    pub data_type: String,
}

impl ColumnSpec {
    /// The columns of `schema`.
    pub fn of(schema: &arrow::datatypes::Schema) -> Vec<ColumnSpec> {
        schema
            .fields()
            .iter()
            .map(|f| ColumnSpec {
                name: f.name().clone(),
                data_type: f.data_type().to_string(),
            })
            .collect()
    }
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
    /// For encrypted files: the audit record (wrapped keys, ciphertext SHA-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<dativo_encryption::FileAudit>,
}

/// Where commits, staged files and the lock live under a Parquet directory.
#[derive(Clone)]
pub struct Layout {
    /// The directory that receives data files (local or an object store prefix).
    pub loc: Location,
    /// `_dativo`, or `_dativo/shards/I-of-N` for a shard of a split job: shards commit
    /// independently, each with its own commit log, staging area and lock, while their data
    /// files land side by side in the directory.
    meta: String,
}

/// Commit manifests, relative to the root (of an unsharded job).
pub const COMMITS: &str = "_dativo/commits";
/// Staged data files, relative to the root (of an unsharded job).
pub const STAGING: &str = "_dativo/staging";
/// Where the shards of split jobs keep their commit logs.
pub const SHARDS: &str = "_dativo/shards";

impl Layout {
    /// A layout rooted at `loc`.
    pub fn new(loc: Location) -> Self {
        Layout {
            loc,
            meta: "_dativo".into(),
        }
    }

    /// The layout of one shard of a split job (`shard.count > 1`), or [`Layout::new`].
    pub fn for_shard(loc: Location, shard: dativo_core::Shard) -> Self {
        if shard.count <= 1 {
            return Self::new(loc);
        }
        Layout {
            loc,
            meta: format!("{SHARDS}/{}-of-{}", shard.index, shard.count),
        }
    }

    /// Every layout under `loc`: the unsharded one and each shard's.
    pub fn all_under(loc: &Location) -> Result<Vec<Layout>> {
        let mut out = vec![Self::new(loc.clone())];
        for name in loc.list(SHARDS)? {
            out.push(Layout {
                loc: loc.clone(),
                meta: format!("{SHARDS}/{name}"),
            });
        }
        Ok(out)
    }

    fn commits(&self) -> String {
        format!("{}/commits", self.meta)
    }

    fn staging(&self) -> String {
        format!("{}/staging", self.meta)
    }

    /// Where a data file with final relative path `rel` is staged (relative to the root).
    pub fn staged(&self, rel: &str) -> String {
        format!("{}/{}.inprogress", self.staging(), staging_name(rel))
    }

    /// Where earlier builds staged `rel` (`/` as `__`, nothing else escaped), and, on gs://,
    /// the name opendal 0.57 actually stored for that (its single-request GCS uploads encode
    /// the name twice, so `day=1` became `day%3D1`): a commit made by such a build and not yet
    /// rolled forward is finished from there.
    fn staged_legacy(&self, rel: &str) -> [String; 2] {
        let flat = rel.replace('/', "__");
        let mut stored = String::with_capacity(flat.len() + 8);
        for b in flat.bytes() {
            match b {
                b'A'..=b'Z'
                | b'a'..=b'z'
                | b'0'..=b'9'
                | b'-'
                | b'_'
                | b'.'
                | b'!'
                | b'~'
                | b'*'
                | b'\''
                | b'('
                | b')' => stored.push(b as char),
                _ => stored.push_str(&format!("%{b:02X}")),
            }
        }
        [
            format!("{}/{flat}.inprogress", self.staging()),
            format!("{}/{stored}.inprogress", self.staging()),
        ]
    }

    /// The lock file held by the active writer (local directories; object stores hold a lease,
    /// see [`Layout::lease_key`]).
    pub fn lock_file(&self) -> Option<PathBuf> {
        match &self.loc {
            Location::Local(root) => Some(root.join(&self.meta).join("writer.lock")),
            Location::Object { .. } => None,
        }
    }

    /// Create the directories.
    pub fn create(&self) -> Result<()> {
        self.loc.create_dir(&self.commits())?;
        self.loc.create_dir(&self.staging())
    }

    /// Sequence numbers of all commits, newest first.
    fn sequences(&self) -> Result<Vec<u64>> {
        let mut seqs: Vec<u64> = self
            .loc
            .list(&self.commits())?
            .into_iter()
            .filter_map(|n| n.strip_suffix(".json").and_then(|s| s.parse::<u64>().ok()))
            .collect();
        seqs.sort_unstable_by(|a, b| b.cmp(a));
        Ok(seqs)
    }

    fn read_manifest(&self, seq: u64) -> Result<Manifest> {
        let rel = format!("{}/{seq:020}.json", self.commits());
        let text = self.loc.read(&rel)?;
        serde_json::from_slice(&text).map_err(|e| {
            Error::data(format!(
                "commit manifest {} is corrupt: {e}",
                self.loc.display(&rel)
            ))
            .with_source(e)
        })
    }

    /// Every manifest, oldest first — including commits an overwrite replaced, whose files
    /// are gone; [`Layout::live`] lists the ones whose files make up the directory.
    pub fn all(&self) -> Result<Vec<Manifest>> {
        let mut seqs = self.sequences()?;
        seqs.reverse();
        seqs.into_iter().map(|s| self.read_manifest(s)).collect()
    }

    /// The manifests whose files make up the directory, oldest first: the latest overwrite
    /// and every commit after it, or every commit when there was no overwrite.
    pub fn live(&self) -> Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for seq in self.sequences()? {
            let m = self.read_manifest(seq)?;
            let overwrite = m.is_overwrite();
            out.push(m);
            if overwrite {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The latest manifest, if any.
    pub fn latest(&self) -> Result<Option<Manifest>> {
        match self.sequences()?.first() {
            Some(seq) => Ok(Some(self.read_manifest(*seq)?)),
            None => Ok(None),
        }
    }

    /// The file columns recorded by the most recent live manifest that has them (fences and
    /// older manifests have none; at most `limit` manifests are read). An overwrite that
    /// committed no files leaves none: the directory holds no data then.
    pub fn latest_schema(&self, limit: usize) -> Result<Option<Vec<ColumnSpec>>> {
        for seq in self.sequences()?.into_iter().take(limit) {
            let m = self.read_manifest(seq)?;
            if m.is_overwrite() && m.files.is_empty() {
                return Ok(None);
            }
            if let Some(schema) = m.schema {
                return Ok(Some(schema));
            }
            if m.is_overwrite() {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// The latest live manifest written by `job`, if any: a job's commits before another
    /// job's overwrite no longer have rows in the directory, so they do not count.
    pub fn latest_for(&self, job: &str) -> Result<Option<Manifest>> {
        for seq in self.sequences()? {
            let m = self.read_manifest(seq)?;
            if m.job == job {
                return Ok(Some(m));
            }
            if m.is_overwrite() {
                break;
            }
        }
        Ok(None)
    }

    /// Finish the latest commit (publication, and the deletions of an overwrite) and delete
    /// everything uncommitted.
    pub fn recover(&self) -> Result<Option<Manifest>> {
        let latest = self.latest()?;
        if let Some(m) = &latest {
            self.roll_forward(m)?;
        }
        let leftovers = self.loc.list(&self.staging())?;
        if !leftovers.is_empty() {
            // Files still staged may belong to any live commit (a publication lost to a crash
            // before a later commit): roll them all forward before deleting. The files of
            // commits an overwrite replaced are not published again.
            for m in self.live()?.iter().rev().skip(1) {
                self.roll_forward(m)?;
            }
        }
        for name in self.loc.list(&self.staging())? {
            tracing::debug!(file = %name, "removing an uncommitted file");
            self.loc.delete(&format!("{}/{name}", self.staging()))?;
        }
        for name in self.loc.list(&self.commits())? {
            if name.starts_with(".tmp-") {
                self.loc.delete(&format!("{}/{name}", self.commits()))?;
            }
        }
        Ok(latest)
    }

    /// Finish commit `m` after its commit point (idempotent): move its files into place, then,
    /// for an overwrite, delete the files it replaces that are still there.
    pub fn roll_forward(&self, m: &Manifest) -> Result<()> {
        self.publish(m)?;
        if m.is_overwrite() {
            let removed = self.remove_replaced(m)?;
            if removed > 0 {
                tracing::info!(
                    sequence = m.sequence,
                    files = removed,
                    dir = %self.loc.display(""),
                    "removed the files the overwrite replaced"
                );
            }
        }
        Ok(())
    }

    /// The files overwrite `m` replaces: the live files of the commits up to `m.replaces`,
    /// i.e. of the commits from the overwrite before it on (that overwrite removed the older
    /// ones before any later commit was made).
    pub fn replaced_files(&self, m: &Manifest) -> Result<Vec<String>> {
        let Some(upto) = m.replaces else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for seq in self.sequences()?.into_iter().filter(|s| *s <= upto) {
            let old = self.read_manifest(seq)?;
            let overwrite = old.is_overwrite();
            out.extend(
                old.files
                    .into_iter()
                    .map(|f| f.path)
                    .filter(|p| !m.files.iter().any(|f| &f.path == p)),
            );
            if overwrite {
                break;
            }
        }
        Ok(out)
    }

    /// Delete the files overwrite `m` replaces that are still there; returns how many.
    fn remove_replaced(&self, m: &Manifest) -> Result<usize> {
        let mut removed = 0;
        let mut dirs: Vec<String> = Vec::new();
        for path in self.replaced_files(m)? {
            if !self.loc.exists(&path)? {
                continue;
            }
            self.loc.delete(&path)?;
            removed += 1;
            let dir = path
                .rsplit_once('/')
                .map(|(d, _)| d.to_string())
                .unwrap_or_default();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        // Deepest first, so that a parent emptied by its children's removal goes too.
        dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
        for dir in &dirs {
            if let Location::Local(root) = &self.loc {
                if !root.join(dir).is_dir() {
                    continue; // removed with an emptied child
                }
            }
            self.loc.sync(dir)?;
            if let Location::Local(root) = &self.loc {
                // A hive partition left without files: remove its directory (and emptied
                // parents), as a reader listing partitions would otherwise see an empty one.
                let mut rel = dir.as_str();
                while !rel.is_empty() && std::fs::remove_dir(root.join(rel)).is_ok() {
                    rel = rel.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                }
            }
        }
        if !dirs.is_empty() {
            self.loc.sync("")?;
        }
        Ok(removed)
    }

    /// Move the files of `m` from staging into place (idempotent).
    pub fn publish(&self, m: &Manifest) -> Result<()> {
        let mut moved: Vec<String> = Vec::new();
        for f in &m.files {
            let mut staged = self.staged(&f.path);
            if !self.loc.exists(&f.path)? {
                if !self.loc.exists(&staged)? {
                    for legacy in self.staged_legacy(&f.path) {
                        if legacy != staged && self.loc.exists(&legacy)? {
                            staged = legacy;
                            break;
                        }
                    }
                }
                if self.loc.exists(&staged)? {
                    self.loc.publish(&staged, &f.path)?;
                    let dir = f
                        .path
                        .rsplit_once('/')
                        .map(|(d, _)| d.to_string())
                        .unwrap_or_default();
                    if !moved.contains(&dir) {
                        moved.push(dir);
                    }
                } else {
                    tracing::warn!(file = %self.loc.display(&f.path), sequence = m.sequence, "a committed file is missing");
                }
            }
        }
        for dir in &moved {
            self.loc.sync(dir)?;
        }
        if !moved.is_empty() {
            self.loc.sync(&self.staging())?;
        }
        Ok(())
    }

    /// Write `m` as the next commit. This is the commit point.
    ///
    /// The manifest is created only if its sequence number is free (a conditional PUT on
    /// object stores): two writers can never both commit sequence N, and a writer fenced off by
    /// a run that took over its lease cannot commit at all.
    ///
    /// A taken sequence is [`ErrorKind::Busy`](dativo_core::ErrorKind::Busy), not a race to
    /// retry: writers of one layout are serialized by its lock or lease, so another writer's
    /// commit here means another run holds the directory now (it fenced this one off).
    pub fn write(&self, m: &Manifest) -> Result<()> {
        let rel = format!("{}/{:020}.json", self.commits(), m.sequence);
        if !self.loc.put_new(&rel, &serde_json::to_vec_pretty(m)?)? {
            return Err(Error::busy(format!(
                "commit {} already exists in {}: another run of job `{}` committed to this \
                 directory concurrently; this commit was not made",
                m.sequence,
                self.loc.display(&self.commits()),
                m.job
            )));
        }
        Ok(())
    }

    /// The lease object of this layout (object stores; see [`super::lease`]).
    pub fn lease_key(&self) -> String {
        format!("{}/lease.json", self.meta)
    }

    /// After taking over an expired lease: claim the next commit sequence with an empty commit
    /// that repeats `job`'s last state, so that the previous holder — if it is still alive and
    /// wakes up — can no longer commit files this run is about to delete from staging. Commits
    /// that landed before the fence are rolled forward first. Returns the fence's sequence.
    pub fn fence(&self, job: &str, run_id: &str) -> Result<u64> {
        for _ in 0..100 {
            let latest = self.latest()?;
            if let Some(m) = &latest {
                self.roll_forward(m)?;
            }
            let previous = self.latest_for(job)?;
            let m = Manifest {
                format: FORMAT.into(),
                sequence: latest.as_ref().map(|m| m.sequence).unwrap_or(0) + 1,
                job: job.into(),
                run_id: previous
                    .as_ref()
                    .map(|p| p.run_id.clone())
                    .unwrap_or_else(|| run_id.to_string()),
                committed_at: dativo_encryption::now(),
                state: previous.and_then(|p| p.state),
                files: Vec::new(),
                schema: None,
                replaces: None,
            };
            let rel = format!("{}/{:020}.json", self.commits(), m.sequence);
            if self.loc.put_new(&rel, &serde_json::to_vec_pretty(&m)?)? {
                tracing::info!(sequence = m.sequence, dir = %self.loc.display(""), "fenced off the previous lease holder");
                return Ok(m.sequence);
            }
        }
        Err(Error::busy(format!(
            "could not fence {}: commits keep landing from another run",
            self.loc.display(&self.commits())
        )))
    }
}

/// A staged file's name for `rel`: one path component of `[A-Za-z0-9._-]` only (`/` becomes
/// `__`, any other byte `~XX`). Object stores encode names in URLs, and some clients encode
/// `=` (hive partitions) twice — opendal's GCS uploads store `day=1` as `day%3D1` — so a staged
/// name never needs encoding.
pub fn staging_name(rel: &str) -> String {
    let mut out = String::with_capacity(rel.len() + 8);
    for b in rel.bytes() {
        match b {
            b'/' => out.push_str("__"),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => out.push(b as char),
            _ => out.push_str(&format!("~{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::staging_name;

    #[test]
    fn staged_names_need_no_url_encoding() {
        assert_eq!(
            staging_name("day=2026-01-01/part-1.parquet"),
            "day~3D2026-01-01__part-1.parquet"
        );
        assert_eq!(staging_name("part-1.parquet"), "part-1.parquet");
        assert_eq!(staging_name("c=a b/é"), "c~3Da~20b__~C3~A9");
    }
}
