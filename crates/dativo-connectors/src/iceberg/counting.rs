//! A catalog wrapper that counts and logs commit conflicts, and guards a job's commits.
//!
//! iceberg-rust retries a conflicting commit on the table's new state by itself, invisibly;
//! with many shards committing into one table, how often that happens is what an operator
//! needs to see (and `bench/run shards` reports).
//!
//! That retry must not apply a commit on top of *another run of the same job*: two runs with
//! their own state stores would each commit the same rows. Every commit attempt starts by
//! loading the table, and the commit it then builds requires the table's current snapshot to
//! be the one it loaded (`RefSnapshotIdMatch`). So while a [`JobGuard`] is set, each load
//! checks that the job's latest snapshot in the table is still the one this run started from
//! (or last committed); if it moved, the load fails, the commit is abandoned and the guard
//! says who moved it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{
    Catalog, ErrorKind, Namespace, NamespaceIdent, Result, TableCommit, TableCreation, TableIdent,
};

/// Commit conflicts seen by this process.
pub static COMMIT_CONFLICTS: AtomicU64 = AtomicU64::new(0);

/// What a commit expects of the table: the job's latest snapshot is still `expected`.
#[derive(Debug, Clone)]
pub struct JobGuard {
    /// The job (with its shard suffix) whose snapshots are compared.
    pub job: String,
    /// The job's latest snapshot when this run started or last committed (`None`: none yet).
    pub expected: Option<i64>,
}

/// Another run's snapshot found by a [`JobGuard`]: (snapshot id, its run id).
pub type Moved = (i64, Option<String>);

/// Delegates everything to the inner catalog; counts conflicting `update_table` calls and
/// applies the [`JobGuard`] set for the commit in progress.
#[derive(Debug)]
pub struct CountingCatalog {
    inner: Arc<dyn Catalog>,
    guard: Mutex<Option<JobGuard>>,
    moved: Mutex<Option<Moved>>,
}

impl CountingCatalog {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Catalog>) -> Self {
        CountingCatalog {
            inner,
            guard: Mutex::new(None),
            moved: Mutex::new(None),
        }
    }

    /// Set (or clear) the guard for the commits that follow; clears what a previous guard found.
    pub fn set_guard(&self, guard: Option<JobGuard>) {
        *self.guard.lock().expect("not poisoned") = guard;
        *self.moved.lock().expect("not poisoned") = None;
    }

    /// What the guard found, if it stopped a commit.
    pub fn moved(&self) -> Option<Moved> {
        self.moved.lock().expect("not poisoned").clone()
    }
}

/// Table property prefix: `dativo.job-state.<job>` holds a job's last commit (JSON of
/// [`JobCommit`]) once snapshot expiry removed the snapshot that carried it.
pub const JOB_STATE_PREFIX: &str = "dativo.job-state.";

/// A job's latest commit to a table: what its snapshot summary says, or — after snapshot
/// expiry removed that snapshot — what expiry kept in the `dativo.job-state.<job>` property.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct JobCommit {
    /// The snapshot the job committed (it may no longer be in the table).
    pub snapshot_id: i64,
    /// The raw `dativo.state` text (`None`: the snapshot had none).
    #[serde(default)]
    pub state: Option<String>,
    /// The run that committed it.
    #[serde(default)]
    pub run_id: Option<String>,
    /// The snapshot's sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence_number: Option<i64>,
}

impl JobCommit {
    /// What `snapshot`'s summary records.
    pub fn of_snapshot(snapshot: &iceberg::spec::Snapshot) -> JobCommit {
        let props = &snapshot.summary().additional_properties;
        JobCommit {
            snapshot_id: snapshot.snapshot_id(),
            state: props.get(super::writer::STATE_KEY).cloned(),
            run_id: props.get(super::writer::RUN_KEY).cloned(),
            sequence_number: Some(snapshot.sequence_number()),
        }
    }

    /// The table property that keeps `job`'s commit across snapshot expiry.
    pub fn property(job: &str) -> String {
        format!("{JOB_STATE_PREFIX}{job}")
    }
}

/// The latest commit of `job`: walking back from the current snapshot through its parents to
/// the first snapshot whose summary names the job; when the walk ends first (the table's
/// first snapshot, or a parent that expiry removed), the `dativo.job-state.<job>` property.
/// A snapshot of the job reached by the walk always wins over the property.
///
/// Errors: the property is not readable.
pub fn job_latest(
    md: &iceberg::spec::TableMetadata,
    job: &str,
) -> dativo_core::Result<Option<JobCommit>> {
    let mut cur = md.current_snapshot().cloned();
    while let Some(s) = cur {
        if s.summary()
            .additional_properties
            .get(super::writer::JOB_KEY)
            .map(String::as_str)
            == Some(job)
        {
            return Ok(Some(JobCommit::of_snapshot(&s)));
        }
        // A parent that is not in the table was expired: the walk ends there.
        cur = s
            .parent_snapshot_id()
            .and_then(|id| md.snapshot_by_id(id))
            .cloned();
    }
    let key = JobCommit::property(job);
    match md.properties().get(&key) {
        None => Ok(None),
        Some(text) => serde_json::from_str(text).map(Some).map_err(|e| {
            dativo_core::Error::data(format!(
                "the table property {key} (job `{job}`'s state, kept by snapshot expiry) is \
                 not readable: {e}"
            ))
            .with_source(e)
        }),
    }
}

#[async_trait]
impl Catalog for CountingCatalog {
    async fn list_namespaces(
        &self,
        parent: Option<&NamespaceIdent>,
    ) -> Result<Vec<NamespaceIdent>> {
        self.inner.list_namespaces(parent).await
    }
    async fn create_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<Namespace> {
        self.inner.create_namespace(namespace, properties).await
    }
    async fn get_namespace(&self, namespace: &NamespaceIdent) -> Result<Namespace> {
        self.inner.get_namespace(namespace).await
    }
    async fn namespace_exists(&self, namespace: &NamespaceIdent) -> Result<bool> {
        self.inner.namespace_exists(namespace).await
    }
    async fn update_namespace(
        &self,
        namespace: &NamespaceIdent,
        properties: HashMap<String, String>,
    ) -> Result<()> {
        self.inner.update_namespace(namespace, properties).await
    }
    async fn drop_namespace(&self, namespace: &NamespaceIdent) -> Result<()> {
        self.inner.drop_namespace(namespace).await
    }
    async fn list_tables(&self, namespace: &NamespaceIdent) -> Result<Vec<TableIdent>> {
        self.inner.list_tables(namespace).await
    }
    async fn create_table(
        &self,
        namespace: &NamespaceIdent,
        creation: TableCreation,
    ) -> Result<Table> {
        self.inner.create_table(namespace, creation).await
    }
    async fn load_table(&self, table: &TableIdent) -> Result<Table> {
        let t = self.inner.load_table(table).await?;
        let guard = self.guard.lock().expect("not poisoned").clone();
        if let Some(g) = guard {
            let latest = job_latest(t.metadata(), &g.job)
                .map_err(|e| iceberg::Error::new(ErrorKind::DataInvalid, e.to_string()))?;
            let id = latest.as_ref().map(|c| c.snapshot_id);
            if id != g.expected {
                // `None`: the job's snapshot left the table's history (rolled back or
                // replaced) — just as unsafe to commit on top of.
                let (sid, run) = match latest {
                    Some(c) => (c.snapshot_id, c.run_id),
                    None => (-1, None),
                };
                *self.moved.lock().expect("not poisoned") = Some((sid, run));
                return Err(iceberg::Error::new(
                    ErrorKind::DataInvalid,
                    format!(
                        "the latest snapshot of job `{}` in {table} is no longer the one this \
                         run started from",
                        g.job
                    ),
                ));
            }
        }
        Ok(t)
    }
    async fn drop_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.drop_table(table).await
    }
    async fn purge_table(&self, table: &TableIdent) -> Result<()> {
        self.inner.purge_table(table).await
    }
    async fn table_exists(&self, table: &TableIdent) -> Result<bool> {
        self.inner.table_exists(table).await
    }
    async fn rename_table(&self, src: &TableIdent, dest: &TableIdent) -> Result<()> {
        self.inner.rename_table(src, dest).await
    }
    async fn register_table(&self, table: &TableIdent, metadata_location: String) -> Result<Table> {
        self.inner.register_table(table, metadata_location).await
    }
    async fn update_table(&self, commit: TableCommit) -> Result<Table> {
        let ident = commit.identifier().clone();
        let r = self.inner.update_table(commit).await;
        if let Err(e) = &r {
            if e.kind() == ErrorKind::CatalogCommitConflicts {
                let n = COMMIT_CONFLICTS.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::info!(table = %ident, conflicts = n, "Iceberg commit conflict: another writer committed first; retrying on the new table state");
            }
        }
        r
    }
}
