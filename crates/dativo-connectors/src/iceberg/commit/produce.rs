//! Builds one snapshot that removes live files and adds new data files: its manifests, its
//! manifest list, its summary, and the catalog requirements and updates that commit it.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use iceberg::io::FileIO;
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, Datum, FormatVersion, ManifestContentType,
    ManifestFile, ManifestListWriter, ManifestWriterBuilder, Operation, PrimitiveLiteral, Snapshot,
    SnapshotReference, SnapshotRetention, SnapshotSummaryCollector, Summary, TableProperties,
    MAIN_BRANCH,
};
use iceberg::table::Table;
use iceberg::{TableRequirement, TableUpdate};
use uuid::Uuid;

use dativo_core::{Error, Result};

use super::live::{LiveFile, LiveFiles};
use crate::iceberg::writer::ice;

/// What one snapshot changes in a table.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Paths of live files (data or delete files) the snapshot removes. Each must still be
    /// live in the snapshot it is built on, or the commit is a conflict to re-plan.
    pub remove: BTreeSet<String>,
    /// New data files (written under the table's default partition spec).
    pub add: Vec<DataFile>,
    /// New position delete files (under the table's default partition spec, each in the
    /// partition of the data files it deletes from).
    pub add_deletes: Vec<DataFile>,
    /// Live data files the new delete files point into: each must still be live in the
    /// snapshot the commit is built on (another commit may have rewritten or removed it).
    pub referenced: BTreeSet<String>,
    /// Summary properties besides the computed metrics (`dativo.state`, `dativo.job`, …).
    pub properties: HashMap<String, String>,
    /// Refuse to commit on top of files added since the plan's base snapshot: an overwrite
    /// must not silently keep (or drop) rows another writer added meanwhile.
    pub no_new_files: bool,
    /// The snapshot operation, when not the one the files imply ([`Change::operation`]):
    /// compaction commits `replace` (the same rows, in other files).
    pub operation: Option<Operation>,
    /// Data files whose rows the commit rewrites as they were when planned: a delete file
    /// added since then that points into one of them (or may: a delete without a known
    /// target in their partition) is a conflict — another commit deleted rows from them
    /// meanwhile, and committing would resurrect those rows.
    pub no_new_deletes_for: BTreeSet<String>,
    /// Write every live entry again into one data manifest and one delete manifest per
    /// partition spec (EXISTING entries keeping their snapshot ids and sequence numbers),
    /// instead of carrying the snapshot's manifests over.
    pub rewrite_manifests: bool,
}

impl Change {
    /// Replace every live file of `base` by `add`.
    pub fn overwrite_all(base: &LiveFiles, add: Vec<DataFile>) -> Change {
        Change {
            remove: base.paths().map(str::to_string).collect(),
            add,
            no_new_files: true,
            ..Default::default()
        }
    }

    /// The data file a delete file deletes from, when it names exactly one: its
    /// `referenced_data_file`, or equal lower and upper bounds of its `file_path` column (as
    /// Java's writers leave them). `None` for equality deletes and position deletes into several
    /// (or unknown) files.
    pub fn delete_target(delete: &DataFile) -> Option<String> {
        if delete.content_type() != DataContentType::PositionDeletes {
            return None;
        }
        if let Some(p) = delete.referenced_data_file() {
            return Some(p);
        }
        let bound = |m: &HashMap<i32, Datum>| match m.get(&FILE_PATH_FIELD_ID).map(Datum::literal) {
            Some(PrimitiveLiteral::String(s)) => Some(s.clone()),
            _ => None,
        };
        match (bound(delete.lower_bounds()), bound(delete.upper_bounds())) {
            (Some(lo), Some(hi)) if lo == hi => Some(lo),
            _ => None,
        }
    }

    /// The snapshot operation: [`Change::operation`]'s override, else as Java's writers
    /// choose it: `append` when it only adds data files, `delete` when it adds no data
    /// file, `overwrite` otherwise.
    pub fn operation(&self) -> Operation {
        if let Some(op) = &self.operation {
            return op.clone();
        }
        let removes = !self.remove.is_empty() || !self.add_deletes.is_empty();
        match (removes, self.add.is_empty()) {
            (false, _) => Operation::Append,
            (true, true) => Operation::Delete,
            (true, false) => Operation::Overwrite,
        }
    }
}

/// Iceberg's reserved field id of a position delete file's `file_path` column.
const FILE_PATH_FIELD_ID: i32 = 2_147_483_546;

/// A snapshot ready to commit: what the catalog must check and apply.
#[derive(Debug, Clone)]
pub struct Produced {
    /// The new snapshot's id.
    pub snapshot_id: i64,
    /// `[UuidMatch, RefSnapshotIdMatch(main, base)]`.
    pub requirements: Vec<TableRequirement>,
    /// `[AddSnapshot, SetSnapshotRef(main)]`.
    pub updates: Vec<TableUpdate>,
}

/// Manifests a rewrite merged (their paths) and the manifests it wrote (with their paths).
type Merged = (BTreeSet<String>, Vec<(ManifestFile, String)>);

/// Builds the snapshot of one [`Change`], attempt after attempt: the snapshot id and the
/// added-data manifest stay the same across attempts (the manifest's sequence numbers are
/// inherited, so it is valid on any base); rewritten manifests and the list are per attempt.
pub struct SnapshotProducer {
    change: Change,
    snapshot_id: i64,
    commit_uuid: Uuid,
    attempt: u32,
    manifests: u64,
    /// The added-data manifest (shared by all attempts) and its path.
    added_manifest: Option<(ManifestFile, String)>,
    /// The added-deletes manifest (shared by all attempts) and its path.
    added_deletes_manifest: Option<(ManifestFile, String)>,
    /// Rewritten manifests and the manifest list of the latest attempt.
    attempt_files: Vec<String>,
    /// With [`Change::rewrite_manifests`]: the manifests an attempt merged (paths) and the
    /// manifests it wrote (with their paths). A later attempt whose base still has every one
    /// of them reuses the merged manifests and carries the manifests added since unchanged,
    /// as Java's `RewriteManifests` does: a busy appender cannot starve the rewrite.
    merged: Option<Merged>,
}

/// Summary totals: (total, added, removed).
const TOTALS: [(&str, &str, &str); 6] = [
    ("total-data-files", "added-data-files", "deleted-data-files"),
    (
        "total-delete-files",
        "added-delete-files",
        "removed-delete-files",
    ),
    ("total-records", "added-records", "deleted-records"),
    ("total-files-size", "added-files-size", "removed-files-size"),
    (
        "total-position-deletes",
        "added-position-deletes",
        "removed-position-deletes",
    ),
    (
        "total-equality-deletes",
        "added-equality-deletes",
        "removed-equality-deletes",
    ),
];

/// Previous total + added − removed for each total, as Iceberg's Java and Rust writers do;
/// a total the previous snapshot lacks (or cannot parse) is left out rather than restarted.
pub(crate) fn update_totals(props: &mut HashMap<String, String>, previous: Option<&Summary>) {
    for (total, added, removed) in TOTALS {
        let prev = match previous {
            None => Some(0),
            Some(s) => s
                .additional_properties
                .get(total)
                .and_then(|v| v.parse::<u64>().ok()),
        };
        let delta = |k: &str| match props.get(k) {
            None => Some(0),
            Some(v) => v.parse::<u64>().ok(),
        };
        let new = match (prev, delta(added), delta(removed)) {
            (Some(p), Some(a), Some(r)) => (p + a).checked_sub(r),
            _ => None,
        };
        match new {
            Some(n) => {
                props.insert(total.to_string(), n.to_string());
            }
            None => {
                props.remove(total);
            }
        }
    }
}

fn random_snapshot_id(table: &Table) -> i64 {
    loop {
        let (a, b) = Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) & (i64::MAX as u64)) as i64;
        if id != 0 && table.metadata().snapshot_by_id(id).is_none() {
            return id;
        }
    }
}

impl SnapshotProducer {
    /// A producer for `change`, planned on `base`.
    pub fn new(base: &Table, change: Change) -> SnapshotProducer {
        SnapshotProducer {
            change,
            snapshot_id: random_snapshot_id(base),
            commit_uuid: Uuid::now_v7(),
            attempt: 0,
            manifests: 0,
            added_manifest: None,
            added_deletes_manifest: None,
            attempt_files: Vec::new(),
            merged: None,
        }
    }

    /// The snapshot id every attempt uses.
    pub fn snapshot_id(&self) -> i64 {
        self.snapshot_id
    }

    /// The change this producer commits.
    pub fn change(&self) -> &Change {
        &self.change
    }

    /// A new v2 manifest of `content` written by this snapshot, and its path.
    fn new_manifest(
        &mut self,
        table: &Table,
        schema: iceberg::spec::SchemaRef,
        spec: iceberg::spec::PartitionSpec,
        content: ManifestContentType,
    ) -> Result<(iceberg::spec::ManifestWriter, String)> {
        let path = self.manifest_path(table);
        let out = table
            .file_io()
            .new_output(&path)
            .map_err(|e| ice(e, "creating a manifest"))?;
        let builder = ManifestWriterBuilder::new(out, Some(self.snapshot_id), schema, spec);
        let w = match content {
            ManifestContentType::Data => builder.build_v2_data(),
            ManifestContentType::Deletes => builder.build_v2_deletes(),
        };
        Ok((w, path))
    }

    fn manifest_path(&mut self, table: &Table) -> String {
        let n = self.manifests;
        self.manifests += 1;
        format!(
            "{}/metadata/{}-m{n}.{}",
            table.metadata().location(),
            self.commit_uuid,
            DataFileFormat::Avro
        )
    }

    /// Check `table` (the state to build on, described by `live`) against the change:
    /// every file to remove is still live; with `no_new_files`, no data or delete file was
    /// added since `base`. A failure is a [`dativo_core::ErrorKind::Conflict`]: the caller
    /// must plan again on the new table state.
    pub fn validate(&self, base: &LiveFiles, live: &LiveFiles) -> Result<()> {
        let gone: Vec<&str> = self
            .change
            .remove
            .iter()
            .filter(|p| !live.contains(p))
            .map(String::as_str)
            .collect();
        let unreferenced: Vec<&str> = self
            .change
            .referenced
            .iter()
            .filter(|p| !live.contains(p))
            .map(String::as_str)
            .collect();
        if let Some(first) = unreferenced.first() {
            return Err(Error::conflict(format!(
                "another commit removed {} of the data files this commit deletes rows from \
                 (e.g. {first}) since it was planned on snapshot {}: the deletes must be \
                 planned again on the table's new state",
                unreferenced.len(),
                base.snapshot_id
                    .map_or_else(|| "none".into(), |s| s.to_string()),
            )));
        }
        if let Some(first) = gone.first() {
            return Err(Error::conflict(format!(
                "another commit removed {} of the files this commit replaces (e.g. {first}) \
                 since it was planned on snapshot {}: the commit must be planned again on \
                 the table's new state",
                gone.len(),
                base.snapshot_id
                    .map_or_else(|| "none".into(), |s| s.to_string()),
            )));
        }
        if let Some(d) = self.new_delete_into_rewritten(base, live) {
            return Err(Error::conflict(format!(
                "another commit added the delete file {d} since this rewrite was planned on \
                 snapshot {}: it deletes rows from files this commit rewrites, which would \
                 bring them back; the rewrite must be planned again on the table's new state",
                base.snapshot_id
                    .map_or_else(|| "none".into(), |s| s.to_string()),
            )));
        }
        if self.change.no_new_files {
            let new: Vec<&str> = live.paths().filter(|p| !base.contains(p)).collect();
            if let Some(first) = new.first() {
                return Err(Error::conflict(format!(
                    "another commit added {} files (e.g. {first}) since this overwrite was \
                     planned on snapshot {}: the overwrite must be planned again on the \
                     table's new state",
                    new.len(),
                    base.snapshot_id
                        .map_or_else(|| "none".into(), |s| s.to_string()),
                )));
            }
        }
        Ok(())
    }

    /// The first delete file live in `live` but not in `base` that points into (or, with no
    /// known target, may apply to) a file of [`Change::no_new_deletes_for`].
    fn new_delete_into_rewritten<'l>(
        &self,
        base: &LiveFiles,
        live: &'l LiveFiles,
    ) -> Option<&'l str> {
        let rewritten = &self.change.no_new_deletes_for;
        if rewritten.is_empty() {
            return None;
        }
        live.files
            .iter()
            .filter(|d| !d.is_data() && !base.contains(d.path()))
            .find(|d| match Change::delete_target(&d.file) {
                Some(target) => rewritten.contains(&target),
                // Equality deletes, and position deletes into unknown files, apply to the
                // files of their partition (all files, from an unpartitioned spec).
                None => rewritten.iter().filter_map(|p| base.get(p)).any(|f| {
                    d.file.partition().fields().is_empty()
                        || (d.spec_id == f.spec_id && d.file.partition() == f.file.partition())
                }),
            })
            .map(|d| d.path())
    }

    /// Write this attempt's manifests and manifest list on top of `table` (whose live files
    /// are `live`), and return the snapshot's requirements and updates.
    pub async fn produce(&mut self, table: &Table, live: &LiveFiles) -> Result<Produced> {
        let md = table.metadata();
        if md.format_version() != FormatVersion::V2 {
            return Err(Error::config(format!(
                "table {} is Iceberg format v{}: dativo's overwrite/delete commits support \
                 format v2 tables only",
                table.identifier(),
                md.format_version() as u8
            )));
        }
        if live.snapshot_id != md.current_snapshot_id() {
            return Err(Error::internal(
                "the live files were not read from the snapshot the commit is built on",
            ));
        }
        let io = table.file_io().clone();
        let schema = md.current_schema().clone();
        let spec = md.default_partition_spec().clone();
        let limit = md
            .properties()
            .get(TableProperties::PROPERTY_WRITE_PARTITION_SUMMARY_LIMIT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(TableProperties::PROPERTY_WRITE_PARTITION_SUMMARY_LIMIT_DEFAULT);
        let mut collector = SnapshotSummaryCollector::default();
        collector.set_partition_summary_limit(limit);

        let mut manifests: Vec<ManifestFile> = Vec::new();
        for content in [ManifestContentType::Data, ManifestContentType::Deletes] {
            let files = match content {
                ManifestContentType::Data => self.change.add.clone(),
                ManifestContentType::Deletes => self.change.add_deletes.clone(),
            };
            if files.is_empty() {
                continue;
            }
            for f in &files {
                collector.add_file(f, schema.clone(), spec.clone());
            }
            let cached = match content {
                ManifestContentType::Data => self.added_manifest.is_some(),
                ManifestContentType::Deletes => self.added_deletes_manifest.is_some(),
            };
            if !cached {
                let (mut w, path) =
                    self.new_manifest(table, schema.clone(), spec.as_ref().clone(), content)?;
                for f in files {
                    // -1: the data sequence number is inherited from the list at commit.
                    w.add_file(f, -1)
                        .map_err(|e| ice(e, "adding a file to the manifest of added files"))?;
                }
                let mf = w
                    .write_manifest_file()
                    .await
                    .map_err(|e| ice(e, "writing the manifest of added files"))?;
                match content {
                    ManifestContentType::Data => self.added_manifest = Some((mf, path)),
                    ManifestContentType::Deletes => self.added_deletes_manifest = Some((mf, path)),
                }
            }
            let added = match content {
                ManifestContentType::Data => &self.added_manifest,
                ManifestContentType::Deletes => &self.added_deletes_manifest,
            };
            manifests.extend(added.as_ref().map(|(m, _)| m.clone()));
        }

        // Manifests holding a removed file are rewritten (EXISTING / DELETED entries with
        // their original sequence numbers); the others are carried over unchanged. With
        // `rewrite_manifests`, every manifest is rewritten, merged into one per spec and
        // content.
        let reuse = match &self.merged {
            Some((sources, _)) if self.change.remove.is_empty() => {
                let present: BTreeSet<&str> = live
                    .manifests
                    .iter()
                    .map(|m| m.file.manifest_path.as_str())
                    .collect();
                sources.iter().all(|p| present.contains(p.as_str()))
            }
            _ => false,
        };
        if !reuse {
            if let Some((_, written)) = self.merged.take() {
                for (_, p) in written {
                    delete(&io, &p).await;
                }
            }
        }
        let (replaced, created) = if reuse {
            let (sources, written) = self.merged.as_ref().expect("checked above");
            let mut has_live = vec![false; live.manifests.len()];
            for f in &live.files {
                has_live[f.manifest] = true;
            }
            for (idx, m) in live.manifests.iter().enumerate() {
                if has_live[idx] && !sources.contains(&m.file.manifest_path) {
                    manifests.push(m.file.clone());
                }
            }
            manifests.extend(written.iter().map(|(m, _)| m.clone()));
            (sources.len(), written.len())
        } else {
            self.write_units(table, live, &mut manifests, &mut collector)
                .await?
        };
        let manifests_kept = manifests.len().saturating_sub(created);
        let seq = md.next_sequence_number();
        let parent = md.current_snapshot_id();
        let list_path = format!(
            "{}/metadata/snap-{}-{}-{}.{}",
            md.location(),
            self.snapshot_id,
            self.attempt,
            self.commit_uuid,
            DataFileFormat::Avro
        );
        self.attempt += 1;
        let out = io
            .new_output(&list_path)
            .map_err(|e| ice(e, "creating the manifest list"))?
            .writer()
            .await
            .map_err(|e| ice(e, "creating the manifest list"))?;
        let mut list = ManifestListWriter::v2(out, self.snapshot_id, parent, seq);
        list.add_manifests(manifests.into_iter())
            .map_err(|e| ice(e, "listing the manifests"))?;
        self.attempt_files.push(list_path.clone());
        list.close()
            .await
            .map_err(|e| ice(e, "writing the manifest list"))?;

        // User properties first, computed metrics last (they must not be shadowed).
        let mut props = self.change.properties.clone();
        props.extend(collector.build());
        if self.change.rewrite_manifests {
            let kept = manifests_kept;
            for (k, n) in [
                ("manifests-created", created),
                ("manifests-replaced", replaced),
                ("manifests-kept", kept),
            ] {
                props.insert(k.to_string(), n.to_string());
            }
        }
        update_totals(&mut props, md.current_snapshot().map(|s| s.summary()));
        let snapshot = Snapshot::builder()
            .with_snapshot_id(self.snapshot_id)
            .with_parent_snapshot_id(parent)
            .with_sequence_number(seq)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .with_manifest_list(list_path)
            .with_summary(Summary {
                operation: self.change.operation(),
                additional_properties: props,
            })
            .with_schema_id(md.current_schema_id())
            .build();
        Ok(Produced {
            snapshot_id: self.snapshot_id,
            requirements: vec![
                TableRequirement::UuidMatch { uuid: md.uuid() },
                TableRequirement::RefSnapshotIdMatch {
                    r#ref: MAIN_BRANCH.to_string(),
                    snapshot_id: parent,
                },
            ],
            updates: vec![
                TableUpdate::AddSnapshot { snapshot },
                TableUpdate::SetSnapshotRef {
                    ref_name: MAIN_BRANCH.to_string(),
                    reference: SnapshotReference::new(
                        self.snapshot_id,
                        SnapshotRetention::branch(None, None, None),
                    ),
                },
            ],
        })
    }

    /// Rewrite the manifests of `live` that hold a removed file (or, with
    /// [`Change::rewrite_manifests`], merge all of them per spec and content) into
    /// `manifests`, carrying the others over; returns (manifests replaced, written).
    async fn write_units(
        &mut self,
        table: &Table,
        live: &LiveFiles,
        manifests: &mut Vec<ManifestFile>,
        collector: &mut SnapshotSummaryCollector,
    ) -> Result<(usize, usize)> {
        let mut units: Vec<Vec<usize>> = Vec::new();
        let mut by_kind: HashMap<(i32, bool), usize> = HashMap::new();
        let mut entries: Vec<Vec<&LiveFile>> = vec![Vec::new(); live.manifests.len()];
        for f in &live.files {
            entries[f.manifest].push(f);
        }
        for (idx, m) in live.manifests.iter().enumerate() {
            let any = !entries[idx].is_empty();
            let removes = entries[idx]
                .iter()
                .any(|f| self.change.remove.contains(f.path()));
            if self.change.rewrite_manifests && any {
                let kind = (
                    m.file.partition_spec_id,
                    m.metadata.content == ManifestContentType::Data,
                );
                let unit = *by_kind.entry(kind).or_insert_with(|| {
                    units.push(Vec::new());
                    units.len() - 1
                });
                units[unit].push(idx);
            } else if removes {
                units.push(vec![idx]);
            } else if any {
                manifests.push(m.file.clone());
            }
            // A manifest with no live file left (only the DELETED entries of the commit
            // that wrote it) is dropped, as Java's writers do.
        }
        let (replaced, created) = (units.iter().map(Vec::len).sum::<usize>(), units.len());
        let mut merged = (BTreeSet::new(), Vec::new());
        for unit in units {
            // The newest schema among the merged manifests (they share the partition spec).
            let m = unit
                .iter()
                .map(|&i| &live.manifests[i])
                .max_by_key(|m| m.metadata.schema.schema_id())
                .expect("a unit holds a manifest");
            let (mut w, path) = self.new_manifest(
                table,
                m.metadata.schema.clone(),
                m.metadata.partition_spec.clone(),
                m.metadata.content,
            )?;
            let file_spec = Arc::new(m.metadata.partition_spec.clone());
            for f in unit.iter().flat_map(|&i| &entries[i]) {
                let file_seq = Some(f.file_sequence_number.unwrap_or(f.sequence_number));
                let r = if self.change.remove.contains(f.path()) {
                    collector.remove_file(&f.file, m.metadata.schema.clone(), file_spec.clone());
                    w.add_delete_file(f.file.clone(), f.sequence_number, file_seq)
                } else {
                    w.add_existing_file(f.file.clone(), f.snapshot_id, f.sequence_number, file_seq)
                };
                r.map_err(|e| ice(e, "rewriting a manifest"))?;
            }
            let mf = w
                .write_manifest_file()
                .await
                .map_err(|e| ice(e, "writing a rewritten manifest"))?;
            if self.change.rewrite_manifests && self.change.remove.is_empty() {
                merged.0.extend(
                    unit.iter()
                        .map(|&i| live.manifests[i].file.manifest_path.clone()),
                );
                merged.1.push((mf.clone(), path));
            } else {
                self.attempt_files.push(path);
            }
            manifests.push(mf);
        }
        if !merged.1.is_empty() {
            self.merged = Some(merged);
        }
        Ok((replaced, created))
    }

    /// Delete the rewritten manifests and the list of the latest attempt: after it lost
    /// the race for certain (nothing references them).
    pub async fn discard_attempt(&mut self, io: &FileIO) {
        for p in std::mem::take(&mut self.attempt_files) {
            delete(io, &p).await;
        }
    }

    /// Delete every manifest and list this producer wrote: only after the commit failed for
    /// certain (a landed snapshot references them). The data files stay the caller's.
    pub async fn discard(&mut self, io: &FileIO) {
        self.discard_attempt(io).await;
        for (_, p) in self.merged.take().map(|(_, w)| w).unwrap_or_default() {
            delete(io, &p).await;
        }
        for (_, p) in [
            self.added_manifest.take(),
            self.added_deletes_manifest.take(),
        ]
        .into_iter()
        .flatten()
        {
            delete(io, &p).await;
        }
    }
}

async fn delete(io: &FileIO, path: &str) {
    if let Err(e) = io.delete(path).await {
        tracing::warn!(file = %path, error = %e, "could not delete an uncommitted manifest");
    }
}
