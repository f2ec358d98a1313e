//! Dropping a Parquet writer's output (`dativo target drop`): the files its commits published
//! and its `_dativo/` bookkeeping, nothing else under the directory.

use serde::Serialize;
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::{Error, Result};
use dativo_storage::Location;

use super::commit_log::Layout;
use super::ParquetWriterConfig;

/// What [`drop_dataset`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DatasetDropReport {
    /// The directory or prefix.
    pub location: String,
    /// Commits found (every shard's).
    pub commits: u64,
    /// Files deleted (or, in a dry run, that would be): data files and bookkeeping.
    pub files_deleted: u64,
    /// Bytes of the data files among them.
    pub bytes_deleted: u64,
    /// Files under the directory that dativo did not write: left where they are.
    pub other_files: u64,
}

/// Delete what the writer of `config` committed under its path: every data file a commit of
/// any shard published (those an overwrite already replaced are gone), then `_dativo/`
/// (manifests, staging, locks, the audit trail). Files dativo did not write stay. The caller
/// holds the job's lock: no run writes meanwhile.
pub fn drop_dataset(config: &Value, job: &str, dry_run: bool) -> Result<DatasetDropReport> {
    let cfg: ParquetWriterConfig = from_config(config)?;
    cfg.check()?;
    let loc = Location::parse(&cfg.path, &cfg.store_options())?;
    let mut report = DatasetDropReport {
        location: loc.name(),
        ..Default::default()
    };
    let mut data: Vec<(String, u64)> = Vec::new();
    let mut others: Vec<String> = Vec::new();
    for layout in Layout::all_under(&loc)? {
        for m in layout.all()? {
            report.commits += 1;
            if !crate::is_own_key(job, &m.job) {
                others.push(m.job.clone());
            }
            data.extend(m.files.iter().map(|f| (f.path.clone(), f.bytes)));
        }
    }
    others.sort();
    others.dedup();
    if !others.is_empty() {
        // Several jobs may write one directory; their commits and `_dativo/` are shared.
        return Err(Error::config(format!(
            "{} also holds commits of job(s) {}: `dativo target drop` of job `{job}` would \
             delete their files and commit log too; remove what is meant by hand",
            loc.name(),
            others.join(", ")
        )));
    }
    data.sort();
    data.dedup();
    let all = match &loc {
        Location::Local(root) if !root.exists() => Vec::new(),
        _ => loc.list_recursive("")?,
    };
    let all: std::collections::HashSet<String> =
        all.into_iter().map(|p| p.replace('\\', "/")).collect();
    let named: std::collections::HashSet<&str> = data.iter().map(|(p, _)| p.as_str()).collect();
    let mut bookkeeping: Vec<&String> = all.iter().filter(|p| p.starts_with("_dativo/")).collect();
    bookkeeping.sort();
    let present: Vec<&(String, u64)> = data.iter().filter(|(p, _)| all.contains(p)).collect();
    report.other_files = all
        .iter()
        .filter(|p| !p.starts_with("_dativo/") && !named.contains(p.as_str()))
        .count() as u64;
    report.files_deleted = (present.len() + bookkeeping.len()) as u64;
    report.bytes_deleted = present.iter().map(|(_, b)| b).sum();
    if dry_run {
        return Ok(report);
    }
    // Data first, the commit log last: an interrupted drop leaves manifests naming missing
    // files, which a second `target drop` finishes.
    for (p, _) in &present {
        loc.delete(p)?;
    }
    let (manifests, rest): (Vec<&String>, Vec<&String>) = bookkeeping
        .into_iter()
        .partition(|p| p.contains("/commits/"));
    for p in rest.into_iter().chain(manifests) {
        loc.delete(p)?;
    }
    if let Location::Local(root) = &loc {
        crate::remove_empty_dirs(&root.join("_dativo"));
        // Partition directories (`dt=…/`) emptied by the drop.
        for p in &present {
            let mut dir = root.join(p.0.as_str());
            while dir.pop() && dir.starts_with(root) && dir != *root {
                if std::fs::remove_dir(&dir).is_err() {
                    break;
                }
            }
        }
    }
    Ok(report)
}
