//! Compaction (being written).

use dativo_core::{Error, Result};

use super::{MaintenanceReport, TableHandle};

/// How to compact.
#[derive(Debug, Clone, Default)]
pub struct CompactOptions {
    /// Report what would be rewritten; change nothing.
    pub dry_run: bool,
}

/// Compact the table's small files.
pub async fn compact(_h: &TableHandle, _opts: &CompactOptions) -> Result<MaintenanceReport> {
    Err(Error::internal("compaction is not built yet"))
}
