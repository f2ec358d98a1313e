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

/// What `dativo target drop` did to one target.
#[derive(Debug)]
pub struct TargetDrop {
    /// The stream of a job with `tables:`; `None`: the job's own target.
    pub stream: Option<String>,
    /// The target in words: `Iceberg table lake.orders`, `Parquet directory /lake/orders`.
    pub target: String,
    /// It existed (a table in the catalog, commits in the directory).
    pub existed: bool,
    /// Files deleted (or that would be), and their bytes.
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Files left: ones that could not be deleted (Iceberg), or that dativo did not write
    /// (Parquet).
    pub left: u64,
}

/// `dativo target drop`: drop what `job` wrote — its Iceberg table (from the catalog, with its
/// files) or its Parquet files and commit log — and reset its state, so that the next run
/// creates the target anew from the source's schema and loads everything. A job with
/// `tables:` drops every stream's target (or `stream`'s alone). Holds the job's lock: refused
/// while a run of the job is going on. `dry_run`: only report.
pub fn drop_target(
    job: &Job,
    store: &StateStore,
    stream: Option<&str>,
    dry_run: bool,
) -> Result<Vec<TargetDrop>> {
    let _lock = if dry_run {
        None
    } else {
        Some(store.lock(job.name())?)
    };
    let targets: Vec<(Option<String>, Job)> = if dativo_core::streams::is_multi(job) {
        let plans = crate::streams::discover(job)?;
        let picked: Vec<_> = plans
            .into_iter()
            .filter(|p| stream.is_none_or(|s| s == p.stream))
            .map(|p| (Some(p.stream), p.job))
            .collect();
        if picked.is_empty() {
            if let Some(s) = stream {
                return Err(Error::config(format!(
                    "job `{}` has no stream `{s}` (`dativo discover` lists them)",
                    job.name()
                )));
            }
        }
        picked
    } else {
        if let Some(s) = stream {
            return Err(Error::config(format!(
                "job `{}` reads one stream: drop its target without --stream {s}",
                job.name()
            )));
        }
        vec![(None, job.clone())]
    };
    // Everything that can fail before anything changes: the catalog or store reachable, the
    // table loaded, the files listed, no other job's commits there (a dry run of each drop).
    let mut planned = Vec::new();
    for (stream, j) in &targets {
        planned.push(drop_one(stream.as_deref(), j, true)?);
    }
    if dry_run {
        return Ok(planned);
    }
    // Then the state (the job's, its streams' and its shards'), before the data: a drop that
    // fails half-way now leaves a target the next run loads from the beginning into (rows
    // twice, until `target drop` is run again — the error says so), never a state ahead of an
    // emptied target (rows lost).
    let mut keys: Vec<String> = Vec::new();
    if stream.is_none() {
        keys.push(job.name().to_string());
        keys.extend(store.keys_under(job.name(), '#')?);
    }
    for (_, j) in &targets {
        keys.push(j.name().to_string());
        keys.extend(store.keys_under(j.name(), '#')?);
    }
    for k in &keys {
        store.reset_state(k)?;
    }
    let mut out = Vec::new();
    for (stream, j) in &targets {
        let d = drop_one(stream.as_deref(), j, false).map_err(|e| {
            e.context(format!(
                "dropping the target of `{}` (its state is already reset: run `dativo target \
                 drop` again before the next run, or that run loads everything again next to \
                 what is left)",
                j.name()
            ))
        })?;
        out.push(d);
    }
    Ok(out)
}

/// Drop (or with `dry_run` plan to drop) the target of one job or stream.
fn drop_one(stream: Option<&str>, j: &Job, dry_run: bool) -> Result<TargetDrop> {
    let cfg = &j.config.target.config;
    let stream = stream.map(str::to_string);
    Ok(match &j.config.target.writer {
        Implementation::Builtin(w) if w == "iceberg" => {
            let table = cfg.get("table").and_then(|t| t.as_str()).unwrap_or("?");
            match maintain::drop_target(cfg, j.name(), dry_run)? {
                Some(r) => TargetDrop {
                    stream,
                    target: format!("Iceberg table {table} at {}", secrets::scrub(&r.location)),
                    existed: true,
                    files: r.files_deleted,
                    bytes: r.bytes_deleted,
                    left: r.files_left,
                },
                None => TargetDrop {
                    stream,
                    target: format!("Iceberg table {table}"),
                    existed: false,
                    files: 0,
                    bytes: 0,
                    left: 0,
                },
            }
        }
        Implementation::Builtin(w) if w == "parquet" => {
            let r = dativo_connectors::parquet::drop_dataset(cfg, j.name(), dry_run)?;
            TargetDrop {
                stream,
                target: format!("Parquet directory {}", secrets::scrub(&r.location)),
                existed: r.commits > 0 || r.files_deleted > 0,
                files: r.files_deleted,
                bytes: r.bytes_deleted,
                left: r.other_files,
            }
        }
        _ => {
            return Err(j.error_at(
                "target.writer",
                "`dativo target drop` drops what the built-in `iceberg` and `parquet` writers \
                 wrote; remove this writer's output with its own tools, then `dativo state \
                 reset` the job",
            ))
        }
    })
}
