//! Snapshot expiry (being written).

use dativo_core::{Error, Result};

use super::{MaintenanceReport, TableHandle};

/// How to expire snapshots.
#[derive(Debug, Clone, Default)]
pub struct ExpireOptions {
    /// Report what would be removed; change nothing.
    pub dry_run: bool,
}

/// Expire old snapshots and delete the files only they referenced.
pub async fn expire_snapshots(
    _h: &TableHandle,
    _opts: &ExpireOptions,
) -> Result<MaintenanceReport> {
    Err(Error::internal("snapshot expiry is not built yet"))
}
