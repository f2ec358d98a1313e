//! Orphan removal (being written).

use dativo_core::{Error, Result};

use super::{MaintenanceReport, TableHandle};

/// How to remove orphans.
#[derive(Debug, Clone, Default)]
pub struct OrphanOptions {
    /// Report what would be deleted; change nothing.
    pub dry_run: bool,
}

/// Delete unreferenced files under the table location older than the threshold.
pub async fn remove_orphans(_h: &TableHandle, _opts: &OrphanOptions) -> Result<MaintenanceReport> {
    Err(Error::internal("orphan removal is not built yet"))
}
