//! Iceberg table maintenance: compaction, snapshot expiry and orphan removal, on the tables
//! the `iceberg` writer fills — committed through dativo's own commit path
//! ([`super::commit`]), so that maintenance and ingestion can commit to one table at once:
//! whoever loses a race re-validates against the new state, and ingestion never waits.
//!
//! * [`compact`] bin-packs small data files per partition (applying position deletes) into
//!   files up to the target size, in `replace` snapshots.
//! * [`expire_snapshots`] removes old snapshots, then the files only they referenced; a job's
//!   committed state survives.
//! * [`remove_orphans`] deletes files under the table location that no metadata references
//!   and that are older than a threshold.

mod compact;
#[cfg(test)]
mod compact_tests;
mod expire;
#[cfg(test)]
mod expire_tests;
mod orphans;

use std::sync::Arc;

use iceberg::table::Table;
use iceberg::{Catalog, TableIdent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::rt::runtime;
use dativo_core::{Error, Result};

pub use compact::{compact, rewrite_manifests, CompactOptions, MAINTENANCE_KEY};
pub use expire::{expire_snapshots, ExpireOptions};
pub use orphans::{remove_orphans, DropReport, OrphanOptions};

use super::commit::{swap_for, Swap};
use super::config::IcebergWriterConfig;
use super::counting::CountingCatalog;
use super::writer::{ice, open_catalog, table_ident};

/// What one maintenance operation did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MaintenanceReport {
    /// `compact`, `expire-snapshots`, `remove-orphans`, `rewrite-manifests`.
    pub operation: String,
    /// Nothing was changed: the report says what would be.
    pub dry_run: bool,
    /// Live data files before and after.
    pub data_files_before: u64,
    /// Live data files after.
    pub data_files_after: u64,
    /// Live delete files before.
    pub delete_files_before: u64,
    /// Live delete files after.
    pub delete_files_after: u64,
    /// Rows and bytes read and written again by compaction.
    pub rows_rewritten: u64,
    /// Bytes of the data files compaction replaced.
    pub bytes_rewritten: u64,
    /// Snapshots removed by expiry.
    pub snapshots_expired: u64,
    /// Files deleted from storage (expired snapshots' files, orphans).
    pub files_deleted: u64,
    /// Bytes deleted from storage.
    pub bytes_deleted: u64,
    /// Manifests of the current snapshot before the operation (compaction, manifest rewrite).
    pub manifests_before: u64,
    /// Manifests of the current snapshot after it.
    pub manifests_after: u64,
    /// Commits that lost a race and were planned again (or groups skipped).
    pub conflicts: u64,
    /// The snapshot (or metadata) the operation committed, if any.
    pub commit_id: Option<String>,
}

/// Drop the table of an `iceberg` writer config from its catalog and delete its files
/// (`dativo target drop`) of job `job`; `Ok(None)`: the catalog has no such table. Refused
/// when other jobs commit to the table too. With `dry_run`, only count what would go (every
/// check made, nothing changed). The caller holds the job's lock.
pub fn drop_target(config: &Value, job: &str, dry_run: bool) -> Result<Option<DropReport>> {
    let cfg: IcebergWriterConfig = from_config(config)?;
    cfg.check()?;
    let (_, ident) = table_ident(&cfg.table)?;
    runtime().block_on(async {
        let catalog = open_catalog(&cfg).await?;
        let exists = catalog
            .table_exists(&ident)
            .await
            .map_err(|e| ice(e, "checking the table"))?;
        if !exists {
            return Ok(None);
        }
        let h = TableHandle {
            cfg,
            catalog,
            ident,
        };
        orphans::drop_table(&h, job, dry_run).await.map(Some)
    })
}

/// A table opened for maintenance through the writer's target config.
pub struct TableHandle {
    /// The writer config the table was named by.
    pub cfg: IcebergWriterConfig,
    /// The catalog.
    pub catalog: Arc<CountingCatalog>,
    /// The table.
    pub ident: TableIdent,
}

impl TableHandle {
    /// Open the catalog of an `iceberg` writer config; the table must exist.
    pub fn open(config: &Value) -> Result<TableHandle> {
        let cfg: IcebergWriterConfig = from_config(config)?;
        cfg.check()?;
        let (_, ident) = table_ident(&cfg.table)?;
        let catalog = runtime().block_on(open_catalog(&cfg))?;
        let exists = runtime()
            .block_on(catalog.table_exists(&ident))
            .map_err(|e| ice(e, "checking the table"))?;
        if !exists {
            return Err(Error::config(format!(
                "table {} does not exist in the catalog: nothing to maintain (a run of the \
                 job creates it)",
                cfg.table
            ))
            .with_key_path("table"));
        }
        Ok(TableHandle {
            cfg,
            catalog,
            ident,
        })
    }

    /// The table's current state.
    pub async fn load(&self) -> Result<Table> {
        self.catalog
            .load_table(&self.ident)
            .await
            .map_err(|e| ice(e, "loading the table"))
    }

    /// The catalog's atomic swap for commits of this table.
    pub fn swap(&self) -> Result<Box<dyn Swap>> {
        swap_for(&self.cfg)
    }
}
