//! Snapshot expiry: remove old snapshots from the table's metadata in one commit, then delete
//! the files only they reached.
//!
//! * Kept: the current snapshot, every snapshot a branch or tag points at, the last
//!   `retain_last` ancestors of every branch (main: `retain_last`; another branch: its own
//!   `min-snapshots-to-keep`, else `retain_last`), and every snapshot younger than
//!   `older_than`. Everything else goes.
//! * A job's committed state survives: a job whose latest snapshot goes (or becomes
//!   unreachable from the current snapshot through its parents) gets the table property
//!   `dativo.job-state.<job>` in the same commit (see [`crate::iceberg::counting::job_latest`]).
//! * Deleted after the commit landed: the manifest lists, manifests, data and delete files the
//!   expired snapshots reached and no remaining snapshot reaches. A failure to read the
//!   remaining snapshots' files deletes nothing (`remove_orphans` collects them later).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use iceberg::spec::{
    SnapshotRef, SnapshotReference, SnapshotRetention, TableMetadata, MAIN_BRANCH,
};
use iceberg::table::Table;
use iceberg::{TableRequirement, TableUpdate};

use dativo_core::{ErrorKind, Result};

use super::{MaintenanceReport, TableHandle};
use crate::iceberg::commit::LiveFiles;
use crate::iceberg::counting::JobCommit;
use crate::iceberg::writer::{ice, JOB_KEY};

/// How to expire snapshots.
#[derive(Debug, Clone)]
pub struct ExpireOptions {
    /// Snapshots younger than this are kept (default 7 days).
    pub older_than: Duration,
    /// The last this many snapshots of each branch are kept, however old (default 10; at
    /// least 1: the current snapshot is never expired).
    pub retain_last: usize,
    /// Report what would be removed; change nothing.
    pub dry_run: bool,
}

impl Default for ExpireOptions {
    fn default() -> Self {
        ExpireOptions {
            older_than: Duration::from_secs(7 * 24 * 3600),
            retain_last: 10,
            dry_run: false,
        }
    }
}

/// Commits lost to other writers before expiry gives up (each planned again on the new state).
const RETRIES: u32 = 5;

/// Expire old snapshots and delete the files only they referenced.
pub async fn expire_snapshots(h: &TableHandle, opts: &ExpireOptions) -> Result<MaintenanceReport> {
    let swap = h.swap()?;
    let mut conflicts = 0u64;
    loop {
        let base = h.load().await?;
        let md = base.metadata();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let cutoff = now_ms.saturating_sub(opts.older_than.as_millis() as i64);
        let plan = plan(md, opts.retain_last.max(1), cutoff)?;
        let live = LiveFiles::load(&base).await?;
        let data = live.files.iter().filter(|f| f.is_data()).count() as u64;
        let deletes = live.files.len() as u64 - data;
        let mut report = MaintenanceReport {
            operation: "expire-snapshots".into(),
            dry_run: opts.dry_run,
            data_files_before: data,
            data_files_after: data,
            delete_files_before: deletes,
            delete_files_after: deletes,
            snapshots_expired: plan.expire.len() as u64,
            conflicts,
            ..Default::default()
        };
        if plan.expire.is_empty() {
            return Ok(report);
        }
        let gone: HashSet<i64> = plan.expire.iter().copied().collect();
        let expired: Vec<SnapshotRef> = md
            .snapshots()
            .filter(|s| gone.contains(&s.snapshot_id()))
            .cloned()
            .collect();
        if opts.dry_run {
            let retained: Vec<SnapshotRef> = md
                .snapshots()
                .filter(|s| !gone.contains(&s.snapshot_id()))
                .cloned()
                .collect();
            let (files, bytes) = delete_unreached(&base, &expired, &retained, true).await?;
            report.files_deleted = files;
            report.bytes_deleted = bytes;
            return Ok(report);
        }
        let Some(current) = md.current_snapshot_id() else {
            return Ok(report);
        };
        let requirements = vec![
            TableRequirement::UuidMatch { uuid: md.uuid() },
            TableRequirement::RefSnapshotIdMatch {
                r#ref: MAIN_BRANCH.to_string(),
                snapshot_id: Some(current),
            },
        ];
        let mut updates = vec![TableUpdate::RemoveSnapshots {
            snapshot_ids: plan.expire.clone(),
        }];
        if !plan.set.is_empty() {
            updates.push(TableUpdate::SetProperties {
                updates: plan.set.clone(),
            });
        }
        if !plan.remove.is_empty() {
            updates.push(TableUpdate::RemoveProperties {
                removals: plan.remove.clone(),
            });
        }
        match swap.swap(&base, requirements, updates).await {
            Ok(committed) => {
                report.commit_id = committed.metadata_location().map(str::to_string);
                tracing::info!(
                    table = %h.ident,
                    expired = plan.expire.len(),
                    job_states = plan.set.len(),
                    "expired snapshots"
                );
                // Snapshots committed since are kept too: list what the table has now.
                let now = match h.load().await {
                    Ok(t) => t,
                    Err(_) => committed,
                };
                let retained: Vec<SnapshotRef> = now.metadata().snapshots().cloned().collect();
                match delete_unreached(&now, &expired, &retained, false).await {
                    Ok((files, bytes)) => {
                        report.files_deleted = files;
                        report.bytes_deleted = bytes;
                    }
                    Err(e) => tracing::warn!(
                        table = %h.ident,
                        error = %e,
                        "snapshots expired, but the files the remaining snapshots reach could \
                         not be listed: no file was deleted (remove_orphans deletes them later)"
                    ),
                }
                return Ok(report);
            }
            Err(e) if e.kind() == ErrorKind::Conflict && (conflicts as u32) < RETRIES => {
                conflicts += 1;
                tracing::info!(table = %h.ident, attempt = conflicts, "the table changed under snapshot expiry; planning it again");
                let wait = dativo_core::backoff::backoff(
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                    conflicts as u32,
                    rand::random(),
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.context("expiring snapshots")),
        }
    }
}

/// What one expiry commit does.
#[derive(Debug, Default, PartialEq)]
struct Plan {
    /// Snapshots to remove, ascending.
    expire: Vec<i64>,
    /// `dativo.job-state.<job>` properties to set.
    set: HashMap<String, String>,
    /// Stale `dativo.job-state.<job>` properties (the job's latest snapshot stays reachable).
    remove: Vec<String>,
}

/// `from` and its ancestors, newest first, up to the first parent not in the table.
fn ancestors(md: &TableMetadata, from: i64) -> impl Iterator<Item = &SnapshotRef> + '_ {
    std::iter::successors(md.snapshot_by_id(from), move |s| {
        s.parent_snapshot_id().and_then(|p| md.snapshot_by_id(p))
    })
}

/// The table's branches and tags (iceberg-rust keeps them crate-private: read from the
/// metadata's serialized form).
fn refs(md: &TableMetadata) -> Result<HashMap<String, SnapshotReference>> {
    let v = serde_json::to_value(md)?;
    match v.get("refs") {
        Some(r) => Ok(serde_json::from_value(r.clone())?),
        None => Ok(HashMap::new()),
    }
}

/// Which snapshots go (older than `cutoff_ms`, not kept by a ref or `retain_last`) and which
/// job states must be kept as properties.
fn plan(md: &TableMetadata, retain_last: usize, cutoff_ms: i64) -> Result<Plan> {
    let Some(current) = md.current_snapshot_id() else {
        return Ok(Plan::default());
    };
    let mut keep: HashSet<i64> = ancestors(md, current)
        .take(retain_last)
        .map(|s| s.snapshot_id())
        .collect();
    keep.insert(current);
    for (name, r) in refs(md)? {
        keep.insert(r.snapshot_id);
        if let SnapshotRetention::Branch {
            min_snapshots_to_keep,
            ..
        } = r.retention
        {
            let n = match min_snapshots_to_keep {
                Some(n) if name != MAIN_BRANCH => (n.max(1)) as usize,
                _ => retain_last,
            };
            keep.extend(
                ancestors(md, r.snapshot_id)
                    .take(n)
                    .map(|s| s.snapshot_id()),
            );
        }
    }
    keep.extend(
        md.snapshots()
            .filter(|s| s.timestamp_ms() >= cutoff_ms)
            .map(|s| s.snapshot_id()),
    );
    let mut expire: Vec<i64> = md
        .snapshots()
        .map(|s| s.snapshot_id())
        .filter(|id| !keep.contains(id))
        .collect();
    expire.sort_unstable();
    let mut out = Plan {
        expire,
        ..Default::default()
    };
    if out.expire.is_empty() {
        return Ok(out);
    }
    // After the commit, a job's state is found by walking from the current snapshot through
    // parents up to the first expired one; a job whose latest snapshot lies beyond keeps its
    // state in a property.
    let gone: HashSet<i64> = out.expire.iter().copied().collect();
    let walkable: HashSet<i64> = ancestors(md, current)
        .map(|s| s.snapshot_id())
        .take_while(|id| !gone.contains(id))
        .collect();
    let mut seen = HashSet::new();
    for s in ancestors(md, current) {
        let Some(job) = s.summary().additional_properties.get(JOB_KEY) else {
            continue;
        };
        if !seen.insert(job.clone()) {
            continue;
        }
        let key = JobCommit::property(job);
        if walkable.contains(&s.snapshot_id()) {
            if md.properties().contains_key(&key) {
                out.remove.push(key);
            }
        } else {
            out.set
                .insert(key, serde_json::to_string(&JobCommit::of_snapshot(s))?);
        }
    }
    out.remove.sort();
    Ok(out)
}

/// A path as a key for comparison: `file:` prefixes and `s3a://` spelled one way.
pub(super) fn normalize(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("file://") {
        return rest.to_string();
    }
    if let Some(rest) = path.strip_prefix("file:") {
        return rest.to_string();
    }
    if let Some(rest) = path.strip_prefix("s3a://") {
        return format!("s3://{rest}");
    }
    path.to_string()
}

/// Files reachable from snapshots: manifest lists, manifests and the data and delete files
/// of their entries, by normalized path → (path as written, size in bytes if known).
#[derive(Debug, Default)]
pub(super) struct Reach {
    /// Every file reached.
    pub files: HashMap<String, (String, Option<u64>)>,
    /// Manifests read (or skipped), by normalized path.
    manifests: HashSet<String>,
}

impl Reach {
    /// Whether `path` is reached.
    pub fn contains(&self, path: &str) -> bool {
        self.files.contains_key(&normalize(path))
    }

    fn add(&mut self, path: &str, size: Option<u64>) {
        self.files
            .entry(normalize(path))
            .or_insert_with(|| (path.to_string(), size));
    }

    /// Add what `snapshots` reach. `alive_only`: only ADDED and EXISTING entries (the files a
    /// reader of the snapshot reads), else DELETED ones too. `skip`: manifests not to read
    /// (already known to be kept). `strict`: an unreadable list or manifest is an error, else
    /// it is skipped with a warning.
    pub async fn add_snapshots(
        &mut self,
        table: &Table,
        snapshots: &[SnapshotRef],
        alive_only: bool,
        skip: Option<&Reach>,
        strict: bool,
    ) -> Result<()> {
        let io = table.file_io();
        for s in snapshots {
            self.add(s.manifest_list(), None);
            let list = match table.manifest_list_reader(s).load().await {
                Ok(l) => l,
                Err(e) => {
                    let what = format!("reading the manifest list {}", s.manifest_list());
                    if strict {
                        return Err(ice(e, &what));
                    }
                    tracing::warn!(error = %e, "{what}: skipped");
                    continue;
                }
            };
            for mf in list.entries() {
                let key = normalize(&mf.manifest_path);
                if !self.manifests.insert(key.clone()) {
                    continue;
                }
                self.add(&mf.manifest_path, u64::try_from(mf.manifest_length).ok());
                if skip.is_some_and(|k| k.manifests.contains(&key)) {
                    continue;
                }
                let manifest = match mf.load_manifest(io).await {
                    Ok(m) => m,
                    Err(e) => {
                        let what = format!("reading the manifest {}", mf.manifest_path);
                        if strict {
                            return Err(ice(e, &what));
                        }
                        tracing::warn!(error = %e, "{what}: skipped");
                        continue;
                    }
                };
                for e in manifest.entries() {
                    if alive_only && !e.is_alive() {
                        continue;
                    }
                    self.add(e.file_path(), Some(e.file_size_in_bytes()));
                }
            }
        }
        Ok(())
    }
}

/// Delete (with `dry_run`: count) the files `expired` reached that `retained` do not:
/// returns (files, bytes). Reading the retained snapshots' files must succeed; an
/// unreadable manifest of an expired snapshot is skipped.
async fn delete_unreached(
    table: &Table,
    expired: &[SnapshotRef],
    retained: &[SnapshotRef],
    dry_run: bool,
) -> Result<(u64, u64)> {
    let mut kept = Reach::default();
    kept.add_snapshots(table, retained, true, None, true)
        .await?;
    let mut reached = Reach::default();
    reached
        .add_snapshots(table, expired, false, Some(&kept), false)
        .await?;
    let doomed: Vec<(String, Option<u64>)> = reached
        .files
        .into_iter()
        .filter(|(key, _)| !kept.files.contains_key(key))
        .map(|(_, v)| v)
        .collect();
    let io = table.file_io().clone();
    let results: Vec<Option<u64>> = futures_util::stream::iter(doomed)
        .map(|(path, size)| {
            let io = io.clone();
            async move {
                match io.exists(&path).await {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => {
                        tracing::warn!(file = %path, error = %e, "could not check an expired file");
                        return None;
                    }
                }
                let size = match size {
                    Some(s) => s,
                    None => match io.new_input(&path) {
                        Ok(input) => input.metadata().await.map(|m| m.size).unwrap_or(0),
                        Err(_) => 0,
                    },
                };
                if dry_run {
                    tracing::debug!(file = %path, bytes = size, "would delete (expired)");
                    return Some(size);
                }
                match io.delete(&path).await {
                    Ok(()) => {
                        tracing::debug!(file = %path, bytes = size, "deleted (expired)");
                        Some(size)
                    }
                    Err(e) => {
                        tracing::warn!(file = %path, error = %e, "could not delete an expired file");
                        None
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let done: Vec<u64> = results.into_iter().flatten().collect();
    Ok((done.len() as u64, done.iter().sum()))
}
