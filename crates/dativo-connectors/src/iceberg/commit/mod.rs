//! dativo's own Iceberg commit path, for the snapshot operations iceberg-rust 0.10's public
//! `Transaction` cannot make (it only fast-appends): overwrite and delete.
//!
//! * [`LiveFiles`] reads the live data and delete files of the current snapshot.
//! * [`SnapshotProducer`] writes one snapshot's manifests (the added files in a new manifest;
//!   manifests holding removed files rewritten with EXISTING/DELETED entries; the others
//!   carried over) and its manifest list, and builds the snapshot with its summary.
//! * [`Swap`] is the catalog's atomic commit point: [`SqlSwap`] writes the next
//!   `metadata.json` and compare-and-swaps the table's metadata location in the SQL catalog's
//!   `iceberg_tables` row (the protocol pyiceberg and Java's JdbcCatalog use); [`RestSwap`]
//!   posts the requirements and updates to the REST catalog's commit endpoint.
//! * [`Committer`] retries a lost race on the table's new state after checking that the
//!   commit still applies there (every file it removes is still live; for an overwrite, no
//!   file was added since it was planned): otherwise it fails with a conflict, and the
//!   caller plans again.

mod live;
mod produce;
mod swap;

use std::sync::atomic::Ordering;
use std::time::Duration;

use iceberg::table::Table;
use iceberg::Catalog;

use dativo_core::{Error, ErrorKind, Result};

pub use live::{LiveFile, LiveFiles, LoadedManifest};
pub use produce::{Change, Produced, SnapshotProducer};
pub use swap::{swap_for, RestAuth, RestSwap, SqlSwap, Swap};

use super::counting::COMMIT_CONFLICTS;
use super::writer::ice;

/// A check of the table state a commit is about to be built on (e.g. that no other run of
/// the job committed): an error stops the commit.
pub type Check<'a> = &'a (dyn Fn(&Table) -> Result<()> + Send + Sync);

/// Commits snapshots through a [`Swap`], reloading the table through its catalog after a
/// lost race.
pub struct Committer<'a> {
    catalog: &'a dyn Catalog,
    swap: &'a dyn Swap,
}

impl<'a> Committer<'a> {
    /// Commit through `swap`; reload from `catalog`.
    pub fn new(catalog: &'a dyn Catalog, swap: &'a dyn Swap) -> Self {
        Committer { catalog, swap }
    }

    /// Commit `producer`'s change, planned on `base` (whose live files are `planned`): build the snapshot on `base`, swap;
    /// on a conflict reload, validate the change against the new state and build again, up
    /// to the table's `commit.retry.num-retries`. Returns the table as committed.
    ///
    /// Errors: a conflict the change cannot be rebuilt over (or retries exhausted) is
    /// [`ErrorKind::Conflict`] (retryable: plan again); files this commit wrote are deleted
    /// whenever it failed for certain. When the outcome is unknown (the swap failed midway)
    /// and a reload does not show the snapshot, the swap's error is returned and the
    /// manifests are left in place (the snapshot may still have landed).
    pub async fn commit(
        &self,
        base: &Table,
        planned: &LiveFiles,
        mut producer: SnapshotProducer,
        check: Option<Check<'_>>,
    ) -> Result<Table> {
        let io = base.file_io().clone();
        let props = base
            .metadata()
            .table_properties()
            .map_err(|e| ice(e, "reading the table properties"))?;
        let retries = props.commit_num_retries as u32;
        let wait = |n: u32| {
            dativo_core::backoff::backoff(
                Duration::from_millis(props.commit_min_retry_wait_ms.max(1)),
                Duration::from_millis(props.commit_max_retry_wait_ms.max(1)),
                n,
                rand::random(),
            )
        };
        let mut table = base.clone();
        let mut live = planned.clone();
        let mut attempt = 0u32;
        loop {
            let built = async {
                if let Some(check) = check {
                    check(&table)?;
                }
                producer.validate(planned, &live)?;
                producer.produce(&table, &live).await
            }
            .await;
            let produced = match built {
                Ok(p) => p,
                Err(e) => {
                    producer.discard(&io).await;
                    return Err(e);
                }
            };
            let sid = produced.snapshot_id;
            match self
                .swap
                .swap(&table, produced.requirements, produced.updates)
                .await
            {
                Ok(t) => return Ok(t),
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    producer.discard_attempt(&io).await;
                    let n = COMMIT_CONFLICTS.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(table = %base.identifier(), conflicts = n, "Iceberg commit conflict: another writer committed first");
                    attempt += 1;
                    if attempt > retries {
                        producer.discard(&io).await;
                        return Err(e.context(format!("after {attempt} attempts")));
                    }
                    tokio::time::sleep(wait(attempt)).await;
                    let reloaded = async {
                        let t = self
                            .catalog
                            .load_table(base.identifier())
                            .await
                            .map_err(|e| ice(e, "reloading the table"))?;
                        let l = LiveFiles::load_reusing(&t, Some(&live)).await?;
                        Ok::<_, Error>((t, l))
                    }
                    .await;
                    match reloaded {
                        Ok((t, l)) => (table, live) = (t, l),
                        Err(e) => {
                            producer.discard(&io).await;
                            return Err(e);
                        }
                    }
                }
                Err(e) => {
                    // The outcome may be unknown: the snapshot is ours if it is in the table.
                    if let Ok(t) = self.catalog.load_table(base.identifier()).await {
                        if t.metadata().snapshot_by_id(sid).is_some() {
                            return Ok(t);
                        }
                    }
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests;
