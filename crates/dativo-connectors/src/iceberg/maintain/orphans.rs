//! Orphan removal: delete files under the table's `data/` and `metadata/` that no metadata
//! references and that are older than a threshold — data files of a writer killed before its
//! commit, manifests of a commit that lost and could not clean up, metadata files that fell
//! out of the metadata log.
//!
//! Referenced: the current metadata file and every file of its metadata log; every
//! snapshot's manifest list, the manifests it lists and every data and delete file they name
//! (DELETED entries included); statistics files. The files are listed *before* the table is
//! loaded, so a file committed meanwhile is seen as referenced. A file younger than the
//! threshold is never deleted: it may belong to a commit in flight (a writer's data files
//! stay unreferenced until its checkpoint commits; a new metadata file until its swap) —
//! hence the minimum of one hour.
//!
//! Not touched: files outside `data/` and `metadata/`, and anything under a directory that
//! holds another table (its own `metadata/*.metadata.json`: a table nested in this one's
//! location, as namespaces nest).

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use iceberg::Catalog;
use serde::Serialize;

use dativo_core::{Error, Result};
use dativo_storage::{od, Location, StoreOptions};

use super::expire::Reach;
use super::{MaintenanceReport, TableHandle};
use crate::iceberg::commit::LiveFiles;
use crate::iceberg::counting::JOB_STATE_PREFIX;
use crate::iceberg::writer::{ice, JOB_KEY};

/// How to remove orphans.
#[derive(Debug, Clone)]
pub struct OrphanOptions {
    /// Only files older than this go (default 3 days; at least 1 hour unless `force_young`).
    pub older_than: Duration,
    /// Allow `older_than` under 1 hour (tests; a table nothing writes to).
    pub force_young: bool,
    /// Report what would be deleted; change nothing.
    pub dry_run: bool,
}

impl Default for OrphanOptions {
    fn default() -> Self {
        OrphanOptions {
            older_than: Duration::from_secs(3 * 24 * 3600),
            force_young: false,
            dry_run: false,
        }
    }
}

/// The youngest threshold allowed without `force_young`.
pub const MIN_ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// A file found under the table location.
#[derive(Debug, Clone)]
struct Listed {
    /// Path relative to the table location, with `/`.
    rel: String,
    size: u64,
    /// `None`: unknown (such a file is never deleted).
    modified: Option<SystemTime>,
}

/// Delete unreferenced files under the table location older than the threshold.
pub async fn remove_orphans(h: &TableHandle, opts: &OrphanOptions) -> Result<MaintenanceReport> {
    if opts.older_than < MIN_ORPHAN_AGE && !opts.force_young {
        return Err(Error::config(format!(
            "older_than must be at least 1h (got {:?}): younger unreferenced files may belong \
             to a commit in flight",
            opts.older_than
        ))
        .with_key_path("older_than"));
    }
    let table = h.load().await?;
    let location = table_location(&table);
    let listed = list(h, &location).await?;
    // Loaded after listing: whatever committed meanwhile is referenced by this state.
    let table = h.load().await?;
    let md = table.metadata();
    let mut referenced = Reach::default();
    let snapshots: Vec<_> = md.snapshots().cloned().collect();
    referenced
        .add_snapshots(&table, &snapshots, false, None, true)
        .await?;
    let mut named: HashSet<String> = HashSet::new();
    if let Some(m) = table.metadata_location() {
        named.insert(super::expire::normalize(m));
    }
    named.extend(
        md.metadata_log()
            .iter()
            .map(|l| super::expire::normalize(&l.metadata_file)),
    );
    named.extend(
        md.statistics_iter()
            .map(|s| super::expire::normalize(&s.statistics_path)),
    );
    named.extend(
        md.partition_statistics_iter()
            .map(|s| super::expire::normalize(&s.statistics_path)),
    );
    let cutoff = SystemTime::now()
        .checked_sub(opts.older_than)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let nested = nested_tables(&listed);
    let orphans: Vec<(String, u64)> = listed
        .into_iter()
        .filter(|f| f.rel.starts_with("data/") || f.rel.starts_with("metadata/"))
        .filter(|f| !nested.iter().any(|p| f.rel.starts_with(p.as_str())))
        .filter(|f| f.modified.is_some_and(|m| m < cutoff))
        .map(|f| (format!("{location}/{}", f.rel), f.size))
        .filter(|(path, _)| {
            !referenced.contains(path) && !named.contains(&super::expire::normalize(path))
        })
        .collect();
    let io = table.file_io().clone();
    let dry_run = opts.dry_run;
    let results: Vec<Option<u64>> = futures_util::stream::iter(orphans)
        .map(|(path, size)| {
            let io = io.clone();
            async move {
                if dry_run {
                    tracing::debug!(file = %path, bytes = size, "would delete (orphan)");
                    return Some(size);
                }
                match io.delete(&path).await {
                    Ok(()) => {
                        tracing::debug!(file = %path, bytes = size, "deleted (orphan)");
                        Some(size)
                    }
                    Err(e) => {
                        tracing::warn!(file = %path, error = %e, "could not delete an orphan file");
                        None
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let done: Vec<u64> = results.into_iter().flatten().collect();
    let live = LiveFiles::load(&table).await?;
    let data = live.files.iter().filter(|f| f.is_data()).count() as u64;
    let deletes = live.files.len() as u64 - data;
    tracing::info!(table = %h.ident, files = done.len(), dry_run, "removed orphan files");
    Ok(MaintenanceReport {
        operation: "remove-orphans".into(),
        dry_run,
        data_files_before: data,
        data_files_after: data,
        delete_files_before: deletes,
        delete_files_after: deletes,
        files_deleted: done.len() as u64,
        bytes_deleted: done.iter().sum(),
        ..Default::default()
    })
}

/// Directories (relative, ending in `/`) under the table location that hold a table of their
/// own: a `<dir>/metadata/<name>.metadata.json` below the top.
fn nested_tables(listed: &[Listed]) -> Vec<String> {
    let mut out: Vec<String> = listed
        .iter()
        .filter(|f| f.rel.ends_with(".metadata.json"))
        .filter_map(|f| {
            let (dir, _) = f.rel.rsplit_once("/metadata/")?;
            (!dir.is_empty()).then(|| format!("{dir}/"))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Every file under the table `location` (a local directory or an object-store prefix, with
/// the writer config's `s3:` settings), with its size and modification time.
async fn list(h: &TableHandle, location: &str) -> Result<Vec<Listed>> {
    let opts = StoreOptions {
        s3: h.cfg.s3.as_ref(),
        gcs: h.cfg.gcs.as_ref(),
        azure: h.cfg.azure.as_ref(),
    };
    match Location::parse(location, &opts)? {
        Location::Local(root) => {
            fn walk(dir: &Path, root: &Path, out: &mut Vec<Listed>) -> std::io::Result<()> {
                let entries = match std::fs::read_dir(dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e),
                };
                for e in entries {
                    let e = e?;
                    let meta = e.metadata()?;
                    let p = e.path();
                    if meta.is_dir() {
                        walk(&p, root, out)?;
                    } else if meta.is_file() {
                        if let Ok(rel) = p.strip_prefix(root) {
                            out.push(Listed {
                                rel: rel.to_string_lossy().replace('\\', "/"),
                                size: meta.len(),
                                modified: meta.modified().ok(),
                            });
                        }
                    }
                }
                Ok(())
            }
            let mut out = Vec::new();
            walk(&root, &root, &mut out).map_err(|e| {
                Error::io(format!("listing {}: {e}", root.display())).with_source(e)
            })?;
            Ok(out)
        }
        Location::Object { op, url } => {
            let lo = opendal::options::ListOptions {
                recursive: true,
                ..Default::default()
            };
            let entries = op
                .list_options("", lo)
                .await
                .map_err(|e| od(e, &format!("listing {url}")))?;
            let mut out = Vec::new();
            for e in entries {
                if e.metadata().mode() != opendal::EntryMode::FILE {
                    continue;
                }
                let rel = e.path().trim_start_matches('/').to_string();
                let mut size = e.metadata().content_length();
                let mut modified = e.metadata().last_modified().map(SystemTime::from);
                if modified.is_none() {
                    let m = op
                        .stat(e.path())
                        .await
                        .map_err(|err| od(err, &format!("reading {url}/{rel}")))?;
                    size = m.content_length();
                    modified = m.last_modified().map(SystemTime::from);
                }
                out.push(Listed {
                    rel,
                    size,
                    modified,
                });
            }
            drop_directory_markers(&mut out);
            Ok(out)
        }
    }
}

/// On an Azure account with a hierarchical namespace, a flat Blob listing returns directories
/// as empty blobs (`data/day=2024-01-01` beside `data/day=2024-01-01/x.parquet`): they are not
/// files of the table.
fn drop_directory_markers(out: &mut Vec<Listed>) {
    let names: std::collections::BTreeSet<String> = out.iter().map(|f| f.rel.clone()).collect();
    out.retain(|f| {
        let dir = format!("{}/", f.rel);
        f.size != 0
            || names
                .range(dir.clone()..)
                .next()
                .is_none_or(|n| !n.starts_with(&dir))
    });
}

/// The table's location, without a trailing `/`.
fn table_location(table: &iceberg::table::Table) -> String {
    table
        .metadata()
        .location()
        .trim_end_matches('/')
        .to_string()
}

/// What [`drop_table`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DropReport {
    /// The table's location.
    pub location: String,
    /// Files of the table deleted (or, in a dry run, that would be).
    pub files_deleted: u64,
    /// Their bytes.
    pub bytes_deleted: u64,
    /// Files that could not be deleted (each logged): remove them by hand.
    pub files_left: u64,
}

/// Drop the table from its catalog, then delete its files: everything under the location's
/// `data/` and `metadata/` except a nested table's. Listed first, dropped second (no reader
/// loads a table whose files are going), deleted last.
pub async fn drop_table(h: &TableHandle, job: &str, dry_run: bool) -> Result<DropReport> {
    let table = h.load().await?;
    // A table other jobs write to too is not this job's to drop.
    let others: Vec<String> = table
        .metadata()
        .snapshots()
        .filter_map(|s| s.summary().additional_properties.get(JOB_KEY).cloned())
        .chain(
            table
                .metadata()
                .properties()
                .keys()
                .filter_map(|k| k.strip_prefix(JOB_STATE_PREFIX).map(str::to_string)),
        )
        .filter(|j| !crate::is_own_key(job, j))
        .collect();
    let mut others: Vec<String> = others.into_iter().map(|j| format!("job `{j}`")).collect();
    // A snapshot neither a dativo job nor dativo's maintenance made: another engine (Spark,
    // Flink, pyiceberg) writes to the table too.
    let foreign = table
        .metadata()
        .snapshots()
        .filter(|s| {
            let p = &s.summary().additional_properties;
            !p.contains_key(JOB_KEY) && !p.contains_key(super::MAINTENANCE_KEY)
        })
        .count();
    if foreign > 0 {
        others.push(format!(
            "{foreign} snapshot(s) not made by dativo (another engine writes to it)"
        ));
    }
    others.sort();
    others.dedup();
    if !others.is_empty() {
        return Err(Error::config(format!(
            "table {} also holds commits of {}: `dativo target drop` of job `{job}` would \
             delete those rows too; drop the table with your catalog's tools if that is meant",
            h.ident,
            others.join(", ")
        )));
    }
    let location = table_location(&table);
    let listed = list(h, &location).await?;
    let nested = nested_tables(&listed);
    let files: Vec<(String, u64)> = listed
        .into_iter()
        .filter(|f| f.rel.starts_with("data/") || f.rel.starts_with("metadata/"))
        .filter(|f| !nested.iter().any(|p| f.rel.starts_with(p.as_str())))
        .map(|f| (format!("{location}/{}", f.rel), f.size))
        .collect();
    if dry_run {
        return Ok(DropReport {
            location,
            files_deleted: files.len() as u64,
            bytes_deleted: files.iter().map(|(_, s)| s).sum(),
            files_left: 0,
        });
    }
    h.catalog
        .drop_table(&h.ident)
        .await
        .map_err(|e| ice(e, &format!("dropping the table {}", h.ident)))?;
    let io = table.file_io().clone();
    let results: Vec<std::result::Result<u64, ()>> = futures_util::stream::iter(files)
        .map(|(path, size)| {
            let io = io.clone();
            async move {
                match io.delete(&path).await {
                    Ok(()) => Ok(size),
                    Err(e) => {
                        tracing::warn!(file = %path, error = %e, "could not delete a file of the dropped table");
                        Err(())
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let done: Vec<u64> = results.iter().filter_map(|r| r.ok()).collect();
    // A local table leaves its emptied directories behind: remove those (never one that
    // still holds something).
    let opts = StoreOptions {
        s3: h.cfg.s3.as_ref(),
        gcs: h.cfg.gcs.as_ref(),
        azure: h.cfg.azure.as_ref(),
    };
    if let Ok(Location::Local(root)) = Location::parse(&location, &opts) {
        for sub in ["data", "metadata"] {
            crate::remove_empty_dirs(&root.join(sub));
        }
        let _ = std::fs::remove_dir(&root);
    }
    tracing::info!(table = %h.ident, files = done.len(), "dropped the table and deleted its files");
    Ok(DropReport {
        location,
        files_deleted: done.len() as u64,
        bytes_deleted: done.iter().sum(),
        files_left: (results.len() - done.len()) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_blobs_naming_a_directory_are_not_files() {
        let f = |rel: &str, size| Listed {
            rel: rel.into(),
            size,
            modified: None,
        };
        let mut out = vec![
            f("data", 0),
            f("data/day=1", 0),
            f("data/day=1/a.parquet", 10),
            f("data/day=10", 0), // an empty directory: nothing under `data/day=10/`
            f("data/empty.parquet", 0),
            f("metadata", 0),
            f("metadata/v1.metadata.json", 5),
        ];
        drop_directory_markers(&mut out);
        let left: Vec<&str> = out.iter().map(|l| l.rel.as_str()).collect();
        assert_eq!(
            left,
            [
                "data/day=1/a.parquet",
                "data/day=10",
                "data/empty.parquet",
                "metadata/v1.metadata.json"
            ]
        );
    }
}
