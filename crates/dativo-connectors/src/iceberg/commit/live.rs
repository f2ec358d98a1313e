//! The live files of a table's current snapshot, as read from its manifests.

use std::collections::HashMap;
use std::sync::Arc;

use iceberg::spec::{DataContentType, DataFile, ManifestFile, ManifestMetadata};
use iceberg::table::Table;

use dativo_core::Result;

use crate::iceberg::writer::ice;

/// One live (ADDED or EXISTING) entry of a manifest of the snapshot, with the numbers a
/// rewrite must preserve (inherited values already applied).
#[derive(Debug, Clone)]
pub struct LiveFile {
    /// Index of its manifest in [`LiveFiles::manifests`].
    pub manifest: usize,
    /// The partition spec the file was written with (its manifest's).
    pub spec_id: i32,
    /// The snapshot that added the file.
    pub snapshot_id: i64,
    /// The file's data sequence number.
    pub sequence_number: i64,
    /// The file's file sequence number (`None` only in manifests that never had one).
    pub file_sequence_number: Option<i64>,
    /// The data or delete file, with its partition tuple and metrics.
    pub file: DataFile,
}

impl LiveFile {
    /// The file's path.
    pub fn path(&self) -> &str {
        self.file.file_path()
    }

    /// Whether it holds rows (not deletes).
    pub fn is_data(&self) -> bool {
        self.file.content_type() == DataContentType::Data
    }
}

/// A manifest of the snapshot: its list entry and the schema/spec it was written with.
#[derive(Debug, Clone)]
pub struct LoadedManifest {
    /// The manifest-list entry, as it is carried into a new list when untouched.
    pub file: ManifestFile,
    /// Schema, partition spec, format version and content of the manifest.
    pub metadata: Arc<ManifestMetadata>,
}

/// The live data and delete files of one snapshot of a table.
#[derive(Debug, Clone, Default)]
pub struct LiveFiles {
    /// The snapshot read (`None`: the table has no snapshot yet).
    pub snapshot_id: Option<i64>,
    /// Every manifest of the snapshot, in manifest-list order.
    pub manifests: Vec<LoadedManifest>,
    /// Every live entry of those manifests.
    pub files: Vec<LiveFile>,
    by_path: HashMap<String, usize>,
}

impl LiveFiles {
    /// Read the manifest list and every manifest of `table`'s current snapshot.
    pub async fn load(table: &Table) -> Result<LiveFiles> {
        LiveFiles::load_reusing(table, None).await
    }

    /// [`LiveFiles::load`], taking the entries of manifests `prev` already read from it
    /// instead of reading them again (a manifest file never changes once written): after a
    /// lost race or between the commits of one run, only the manifests added since are read.
    pub async fn load_reusing(table: &Table, prev: Option<&LiveFiles>) -> Result<LiveFiles> {
        let md = table.metadata();
        let Some(snapshot) = md.current_snapshot() else {
            return Ok(LiveFiles::default());
        };
        let list = table
            .manifest_list_reader(snapshot)
            .load()
            .await
            .map_err(|e| ice(e, "reading the manifest list"))?;
        let mut out = LiveFiles {
            snapshot_id: Some(snapshot.snapshot_id()),
            ..Default::default()
        };
        let known: HashMap<&str, usize> = prev
            .map(|p| {
                p.manifests
                    .iter()
                    .enumerate()
                    .map(|(i, m)| (m.file.manifest_path.as_str(), i))
                    .collect()
            })
            .unwrap_or_default();
        let mut prev_entries: Vec<Vec<usize>> = Vec::new();
        if let Some(p) = prev.filter(|_| !known.is_empty()) {
            prev_entries = vec![Vec::new(); p.manifests.len()];
            for (i, f) in p.files.iter().enumerate() {
                prev_entries[f.manifest].push(i);
            }
        }
        for mf in list.consume_entries() {
            if let (Some(p), Some(&j)) = (prev, known.get(mf.manifest_path.as_str())) {
                let idx = out.manifests.len();
                for &i in &prev_entries[j] {
                    let mut f = p.files[i].clone();
                    f.manifest = idx;
                    out.by_path.insert(f.path().to_string(), out.files.len());
                    out.files.push(f);
                }
                out.manifests.push(LoadedManifest {
                    file: mf,
                    metadata: p.manifests[j].metadata.clone(),
                });
                continue;
            }
            // `load_manifest` applies the inheritance of snapshot id and sequence numbers.
            let manifest = mf
                .load_manifest(table.file_io())
                .await
                .map_err(|e| ice(e, &format!("reading the manifest {}", mf.manifest_path)))?;
            let (entries, metadata) = manifest.into_parts();
            let idx = out.manifests.len();
            for e in entries.iter().filter(|e| e.is_alive()) {
                let (Some(snapshot_id), Some(seq)) = (e.snapshot_id(), e.sequence_number()) else {
                    return Err(dativo_core::Error::data(format!(
                        "manifest {} lists {} without a snapshot id or sequence number",
                        mf.manifest_path,
                        e.file_path()
                    )));
                };
                out.by_path
                    .insert(e.file_path().to_string(), out.files.len());
                out.files.push(LiveFile {
                    manifest: idx,
                    spec_id: mf.partition_spec_id,
                    snapshot_id,
                    sequence_number: seq,
                    file_sequence_number: e.file_sequence_number,
                    file: e.data_file.clone(),
                });
            }
            out.manifests.push(LoadedManifest {
                file: mf,
                metadata: Arc::new(metadata),
            });
        }
        Ok(out)
    }

    /// The live file at `path`.
    pub fn get(&self, path: &str) -> Option<&LiveFile> {
        self.by_path.get(path).map(|&i| &self.files[i])
    }

    /// Whether `path` is live.
    pub fn contains(&self, path: &str) -> bool {
        self.by_path.contains_key(path)
    }

    /// Paths of every live file (data and deletes).
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(LiveFile::path)
    }

    /// Live data files' rows (before deletes).
    pub fn data_records(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.is_data())
            .map(|f| f.file.record_count())
            .sum()
    }
}
