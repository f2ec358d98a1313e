//! `dativo maintain`: maintenance of a job's Iceberg table (compaction, manifest rewrite,
//! snapshot expiry, orphan removal), recorded as a run of `JOB#maintain` in the state store.
//!
//! Maintenance never takes the job's lock: ingestion does not wait for it. Both commit through
//! the catalog's compare-and-swap, and whoever loses a race re-validates on the new state (see
//! `dativo_connectors::iceberg::maintain`).

use std::time::Duration;

pub use dativo_connectors::iceberg::maintain::MaintenanceReport;
use dativo_connectors::iceberg::maintain::{
    self, CompactOptions, ExpireOptions, OrphanOptions, TableHandle,
};
use dativo_core::job::{CompactConfig, ExpireConfig, Implementation, Job, OrphansConfig};
use dativo_core::rt::runtime;
use dativo_core::{secrets, Error, Result};

use crate::state_store::{RunStatus, StateStore, MAINTAIN_SUFFIX};

/// Which operations to run, with their settings.
#[derive(Debug, Clone, Default)]
pub struct MaintainRequest {
    /// Compaction, when set.
    pub compact: Option<CompactConfig>,
    /// Manifest rewrite.
    pub rewrite_manifests: bool,
    /// Snapshot expiry, when set.
    pub expire: Option<ExpireConfig>,
    /// Orphan removal, when set.
    pub orphans: Option<OrphansConfig>,
    /// Report only; change nothing.
    pub dry_run: bool,
}

impl MaintainRequest {
    /// The operations named by flags; with none: the job's `maintenance:` block, or, without
    /// one, compaction, expiry and orphan removal with their defaults.
    pub fn resolve(
        job: &Job,
        compact: bool,
        rewrite_manifests: bool,
        expire: bool,
        orphans: bool,
    ) -> MaintainRequest {
        let m = job.config.maintenance.clone().unwrap_or_default();
        if compact || rewrite_manifests || expire || orphans {
            return MaintainRequest {
                compact: compact.then(|| m.compact.clone().unwrap_or_default()),
                rewrite_manifests,
                expire: expire.then(|| m.expire_snapshots.clone().unwrap_or_default()),
                orphans: orphans.then(|| m.remove_orphans.clone().unwrap_or_default()),
                dry_run: false,
            };
        }
        if job.config.maintenance.is_some() {
            return MaintainRequest {
                compact: m.compact,
                rewrite_manifests: m.rewrite_manifests.unwrap_or(false),
                expire: m.expire_snapshots,
                orphans: m.remove_orphans,
                dry_run: false,
            };
        }
        MaintainRequest {
            compact: Some(CompactConfig::default()),
            rewrite_manifests: false,
            expire: Some(ExpireConfig::default()),
            orphans: Some(OrphansConfig::default()),
            dry_run: false,
        }
    }

    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.compact.is_none()
            && !self.rewrite_manifests
            && self.expire.is_none()
            && self.orphans.is_none()
    }
}

/// What a maintenance run did.
#[derive(Debug, Clone)]
pub struct MaintainSummary {
    /// The run's id in the state store (`dativo runs JOB` lists it).
    pub run_id: String,
    /// One report per operation that ran, in order.
    pub reports: Vec<MaintenanceReport>,
}

/// Run `req` on `job`'s Iceberg table and record it in `store` as a run of `JOB#maintain`.
/// Stops at the first failing operation (the ones before it stand; each commits on its own).
pub fn maintain(job: &Job, req: &MaintainRequest, store: &StateStore) -> Result<MaintainSummary> {
    if job.config.target.writer != Implementation::Builtin("iceberg".into()) {
        return Err(job.error_at(
            "target.writer",
            "`dativo maintain` maintains Iceberg tables: this job's writer is not `iceberg`",
        ));
    }
    let handle = TableHandle::open(&job.config.target.config)
        .map_err(|e| e.context(format!("job `{}`", job.name())))?;
    let run_id = uuid::Uuid::now_v7().to_string();
    let key = format!("{}{MAINTAIN_SUFFIX}", job.name());
    store.start_run(&key, &run_id)?;
    let mut reports = Vec::new();
    let result = run_operations(&handle, req, &mut reports);
    let rows: u64 = reports.iter().map(|r| r.rows_rewritten).sum();
    let bytes: u64 = reports
        .iter()
        .map(|r| r.bytes_rewritten + r.bytes_deleted)
        .sum();
    let commits = reports.iter().filter(|r| r.commit_id.is_some()).count() as u64;
    let details = serde_json::to_value(&reports)?;
    let (status, error) = match &result {
        Ok(()) => (RunStatus::Succeeded, None),
        Err(e) => (RunStatus::Failed, Some(secrets::scrub(&e.to_string()))),
    };
    store.finish_maintenance(
        &run_id,
        status,
        error.as_deref(),
        (rows, bytes, commits),
        &details,
    )?;
    result.map_err(|e| e.context(format!("maintaining the table of job `{}`", job.name())))?;
    Ok(MaintainSummary { run_id, reports })
}

fn run_operations(
    h: &TableHandle,
    req: &MaintainRequest,
    reports: &mut Vec<MaintenanceReport>,
) -> Result<()> {
    let rt = runtime();
    if let Some(c) = &req.compact {
        let mut o = CompactOptions {
            dry_run: req.dry_run,
            ..Default::default()
        };
        if let Some(t) = c.target_file_size {
            o.target_file_size = Some(t.0);
        }
        if let Some(n) = c.min_input_files {
            o.min_input_files = n;
        }
        o.max_group_size = c.max_group_size.map(|b| b.0);
        reports.push(rt.block_on(maintain::compact(h, &o))?);
    }
    if req.rewrite_manifests {
        reports.push(rt.block_on(maintain::rewrite_manifests(h, req.dry_run))?);
    }
    if let Some(e) = &req.expire {
        let mut o = ExpireOptions {
            dry_run: req.dry_run,
            ..Default::default()
        };
        if let Some(d) = e.older_than {
            o.older_than = d.0;
        }
        if let Some(n) = e.retain_last {
            o.retain_last = n;
        }
        reports.push(rt.block_on(maintain::expire_snapshots(h, &o))?);
    }
    if let Some(r) = &req.orphans {
        let mut o = OrphanOptions {
            dry_run: req.dry_run,
            ..Default::default()
        };
        if let Some(d) = r.older_than {
            if d.0 < Duration::from_secs(3600) {
                return Err(Error::config(
                    "remove_orphans.older_than must be at least 1h: younger files may belong to a commit in flight",
                ));
            }
            o.older_than = d.0;
        }
        reports.push(rt.block_on(maintain::remove_orphans(h, &o))?);
    }
    Ok(())
}

/// [`maintain`] for any job: a job with `tables:` maintains each of its streams' tables (the
/// streams it would load now), each recorded as `JOB/STREAM#maintain`; one stream failing
/// does not stop the others, and the first failure is returned after all ran.
pub fn maintain_all(
    job: &Job,
    req: &MaintainRequest,
    store: &StateStore,
) -> Result<Vec<(Option<String>, MaintainSummary)>> {
    if !dativo_core::streams::is_multi(job) {
        return Ok(vec![(None, maintain(job, req, store)?)]);
    }
    let mut out = Vec::new();
    let mut first: Option<dativo_core::Error> = None;
    for p in crate::streams::discover(job)? {
        match maintain(&p.job, req, store) {
            Ok(s) => out.push((Some(p.stream), s)),
            Err(e) => {
                tracing::warn!(job = job.name(), stream = %p.stream, error = %dativo_core::secrets::scrub(&e.to_string()), "maintenance of a stream failed");
                first.get_or_insert(e.context(format!("stream `{}`", p.stream)));
            }
        }
    }
    match first {
        Some(e) => Err(e),
        None => Ok(out),
    }
}
