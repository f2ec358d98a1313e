//! Compaction: bin-packs a table's small data files, and the files position deletes point
//! into, per partition into files up to the target size — the deletes applied — and commits
//! each group of files as one `replace` snapshot; and rewriting the manifests.
//!
//! * **Same rows.** A group is read with iceberg-rust's own reader (its scan tasks carry the
//!   delete files; columns added since a file was written read as NULL) and written with the
//!   writer's data-file stack, streaming: memory is bounded by the row group size.
//! * **Concurrent writers.** Each group commits on its own (a conflict costs one group).
//!   Appends landing meanwhile are kept; a merge that deleted rows from a file of the group
//!   since the group was read makes its commit a conflict (committing would bring the rows
//!   back): the group is planned and written again on the new state, up to 3 times, then
//!   skipped. Either way it counts in [`MaintenanceReport::conflicts`].
//! * **Ingestion.** The snapshots carry `dativo.maintenance` and no `dativo.job`, so a job's
//!   committed state (its latest snapshot) is unchanged.
//! * **Failure.** Files written for a commit that failed for certain are deleted; when the
//!   outcome is unknown they are left (orphan removal finds them if nothing references them).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::SchemaRef as ArrowSchemaRef;
use futures_util::{StreamExt, TryStreamExt};
use iceberg::io::FileIO;
use iceberg::scan::FileScanTask;
use iceberg::spec::{
    DataContentType, DataFile, DataFileFormat, FormatVersion, Operation, PartitionKey, Schema,
    Struct, TableMetadata,
};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter as _, IcebergWriterBuilder as _};
use parquet::file::properties::WriterProperties;

use dativo_core::{Error, ErrorKind, Result};

use super::{MaintenanceReport, TableHandle};
use crate::iceberg::commit::{Change, Committer, LiveFile, LiveFiles, SnapshotProducer};
use crate::iceberg::encrypted::FileBuilder;
use crate::iceberg::writer::ice;
use crate::iceberg::IcebergWriterConfig;

/// Snapshot summary key of maintenance commits: `compact`, `rewrite-manifests`.
pub const MAINTENANCE_KEY: &str = "dativo.maintenance";

/// The table property naming the target data file size (Iceberg's).
const TARGET_SIZE_PROPERTY: &str = "write.target-file-size-bytes";

/// Times a group that lost to a concurrent delete is planned again before it is skipped.
const REDOS: u32 = 3;

/// The default largest group, in target file sizes of input: files of a partition are
/// rewritten (and committed) in groups of at most this many bytes.
const GROUP_TARGETS: u64 = 16;

/// How to compact.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Files are packed up to this size, and files below 75% of it are small. `None`: the
    /// table's `write.target-file-size-bytes`, else the writer config's `target_file_size`.
    pub target_file_size: Option<u64>,
    /// A partition is compacted when it has at least this many small files, or any file
    /// with deletes (default 5).
    pub min_input_files: usize,
    /// The most input bytes rewritten in one commit (`None`: 16 × the target size). Larger
    /// groups leave fewer files below the target; smaller ones lose less work to a race.
    pub max_group_size: Option<u64>,
    /// Report what would be rewritten; change nothing.
    pub dry_run: bool,
}

impl Default for CompactOptions {
    fn default() -> Self {
        CompactOptions {
            target_file_size: None,
            min_input_files: 5,
            max_group_size: None,
            dry_run: false,
        }
    }
}

/// Data files of one partition rewritten together, and the delete files that only they
/// are targeted by (removed with them).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Group {
    /// The partition (of the table's default spec).
    pub partition: Struct,
    /// Paths of the data files.
    pub files: Vec<String>,
    /// Paths of the delete files pointing only into `files`.
    pub deletes: Vec<String>,
    /// Bytes of the data files.
    pub bytes: u64,
    /// Rows of the data files, before deletes.
    pub rows: u64,
    /// Position deletes of `deletes` (rows that will not be written again).
    pub deleted: u64,
}

/// Which data files each live delete file applies to.
struct DeleteIndex<'a> {
    /// Delete file → the live data files it applies to.
    targets: HashMap<&'a str, Vec<&'a str>>,
    /// Data file → the delete files that apply to it.
    by_data: HashMap<&'a str, Vec<&'a LiveFile>>,
}

impl<'a> DeleteIndex<'a> {
    fn new(live: &'a LiveFiles) -> DeleteIndex<'a> {
        let data: Vec<&LiveFile> = live.files.iter().filter(|f| f.is_data()).collect();
        let mut targets: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut by_data: HashMap<&str, Vec<&LiveFile>> = HashMap::new();
        for d in live.files.iter().filter(|f| !f.is_data()) {
            let equality = d.file.content_type() == DataContentType::EqualityDeletes;
            // Position deletes apply to files of a sequence number up to theirs, equality
            // deletes to older files only (the spec's rules).
            let applies = |f: &LiveFile| {
                if equality {
                    f.sequence_number < d.sequence_number
                } else {
                    f.sequence_number <= d.sequence_number
                }
            };
            let t: Vec<&str> = match Change::delete_target(&d.file) {
                Some(p) => live
                    .get(&p)
                    .filter(|f| f.is_data() && applies(f))
                    .map(|f| vec![f.path()])
                    .unwrap_or_default(),
                // Unknown target: every older file of its partition (of every partition,
                // from an unpartitioned spec).
                None => data
                    .iter()
                    .filter(|f| {
                        applies(f)
                            && (d.file.partition().fields().is_empty()
                                || (f.spec_id == d.spec_id
                                    && f.file.partition() == d.file.partition()))
                    })
                    .map(|f| f.path())
                    .collect(),
            };
            for &p in &t {
                by_data.entry(p).or_default().push(d);
            }
            targets.insert(d.path(), t);
        }
        DeleteIndex { targets, by_data }
    }

    fn has_deletes(&self, data: &str) -> bool {
        self.by_data.get(data).is_some_and(|d| !d.is_empty())
    }

    /// The delete files applying to `files` and to no other file, and their positions.
    fn only_into(&self, files: &[&str]) -> (Vec<String>, u64) {
        let set: HashSet<&str> = files.iter().copied().collect();
        let mut out = BTreeSet::new();
        let mut positions = 0;
        for f in files {
            for d in self.by_data.get(f).into_iter().flatten() {
                let t = &self.targets[d.path()];
                let only = t.iter().all(|p| set.contains(p));
                if only
                    && out.insert(d.path().to_string())
                    && d.file.content_type() == DataContentType::PositionDeletes
                {
                    positions += d.file.record_count();
                }
            }
        }
        (out.into_iter().collect(), positions)
    }
}

/// Whether a file of `size` bytes is small for `target`: below 75% of it.
fn is_small(size: u64, target: u64) -> bool {
    (size as u128) * 4 < (target as u128) * 3
}

/// First-fit decreasing: the indices of `sizes` in bins of at most `target` bytes (a file
/// larger than `target` alone in its bin). Bins in the order they were opened; within a bin,
/// largest first.
pub(super) fn bin_pack(sizes: &[u64], target: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let mut bins: Vec<(u64, Vec<usize>)> = Vec::new();
    for i in order {
        match bins
            .iter_mut()
            .find(|(total, _)| total.saturating_add(sizes[i]) <= target)
        {
            Some((total, bin)) => {
                *total += sizes[i];
                bin.push(i);
            }
            None => bins.push((sizes[i], vec![i])),
        }
    }
    bins.into_iter().map(|(_, b)| b).collect()
}

/// The groups to rewrite in `live` (the table `md` describes): per partition of the default
/// spec, the small files (below 75% of `target`) and the files with deletes, bin-packed up
/// to `max_group` input bytes; a partition only when it has `min_input` such files or a
/// file with deletes; a group of one file only when that file has deletes. Groups of one
/// partition are consecutive.
pub(super) fn plan(
    md: &TableMetadata,
    live: &LiveFiles,
    target: u64,
    max_group: u64,
    min_input: usize,
) -> Vec<Group> {
    let spec = md.default_partition_spec_id();
    let index = DeleteIndex::new(live);
    let mut parts: HashMap<&Struct, Vec<&LiveFile>> = HashMap::new();
    for f in live
        .files
        .iter()
        .filter(|f| f.is_data() && f.spec_id == spec)
    {
        if is_small(f.file.file_size_in_bytes(), target) || index.has_deletes(f.path()) {
            parts.entry(f.file.partition()).or_default().push(f);
        }
    }
    let mut groups = Vec::new();
    for (partition, files) in parts {
        let any_deletes = files.iter().any(|f| index.has_deletes(f.path()));
        if files.len() < min_input.max(1) && !any_deletes {
            continue;
        }
        let sizes: Vec<u64> = files.iter().map(|f| f.file.file_size_in_bytes()).collect();
        for bin in bin_pack(&sizes, max_group.max(target)) {
            let members: Vec<&LiveFile> = bin.iter().map(|&i| files[i]).collect();
            if members.len() == 1 && !index.has_deletes(members[0].path()) {
                continue;
            }
            groups.push(group_of(partition.clone(), &members, &index));
        }
    }
    groups.sort_by_cached_key(|g| (format!("{:?}", g.partition), g.files.clone()));
    groups
}

fn group_of(partition: Struct, members: &[&LiveFile], index: &DeleteIndex<'_>) -> Group {
    let mut paths: Vec<&str> = members.iter().map(|f| f.path()).collect();
    paths.sort_unstable();
    let (deletes, deleted) = index.only_into(&paths);
    Group {
        partition,
        files: paths.iter().map(|p| p.to_string()).collect(),
        deletes,
        bytes: members.iter().map(|f| f.file.file_size_in_bytes()).sum(),
        rows: members.iter().map(|f| f.file.record_count()).sum(),
        deleted,
    }
}

/// `group` planned again on `live` after a conflict: the same data files with the delete
/// files applying only to them now; `None` when a file is gone (another commit rewrote or
/// removed it: nothing left to do for this group).
fn replan(live: &LiveFiles, group: &Group) -> Option<Group> {
    let members: Vec<&LiveFile> = group
        .files
        .iter()
        .map(|p| live.get(p).filter(|f| f.is_data()))
        .collect::<Option<_>>()?;
    Some(group_of(
        group.partition.clone(),
        &members,
        &DeleteIndex::new(live),
    ))
}

/// Live data files and delete files of `live`.
fn counts(live: &LiveFiles) -> (u64, u64) {
    let data = live.files.iter().filter(|f| f.is_data()).count() as u64;
    (data, live.files.len() as u64 - data)
}

/// The target size: the option, the table's property, or the writer config's.
fn target_size(opts: &CompactOptions, md: &TableMetadata, cfg: &IcebergWriterConfig) -> u64 {
    opts.target_file_size
        .or_else(|| {
            md.properties()
                .get(TARGET_SIZE_PROPERTY)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(cfg.target_file_size.0)
        .max(1)
}

/// Row groups of compacted files: an eighth of the target, at most 64 MiB (encoded, before
/// compression; Java's writers default to 128 MB). The cap bounds the row group in progress
/// whatever the target; 16 MiB cost 30% more CPU at a 512 MB target and changed peak RSS by
/// nothing measurable (bench/run maintain).
fn row_group_bytes(target: u64) -> usize {
    usize::try_from((target / 8).min(64 << 20))
        .unwrap_or(64 << 20)
        .max(1)
}

/// Parquet properties of rewritten files: the writer's compression and row group size (rows), row
/// groups of [`row_group_bytes`], and
/// bloom filters on the table's identifier fields — the merge key, which merges look up.
fn write_properties(cfg: &IcebergWriterConfig, schema: &Schema, target: u64) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(cfg.compression.compression())
        .set_max_row_group_row_count(Some(cfg.row_group_size.max(1)))
        .set_max_row_group_bytes(Some(row_group_bytes(target)))
        .set_created_by(format!("dativo {}", env!("CARGO_PKG_VERSION")));
    for id in schema.identifier_field_ids() {
        if let Some(name) = schema.name_by_field_id(id) {
            b = b.set_column_bloom_filter_enabled(
                parquet::schema::types::ColumnPath::from(name),
                true,
            );
        }
    }
    b.build()
}

/// The scan tasks of `table`'s current snapshot for the data files in `wanted` (each with
/// the delete files that apply to it), by data file.
async fn scan_tasks(
    table: &Table,
    wanted: &HashSet<&str>,
) -> Result<HashMap<String, Vec<FileScanTask>>> {
    let mut out: HashMap<String, Vec<FileScanTask>> = HashMap::new();
    let mut tasks = table
        .scan()
        .select_all()
        .build()
        .map_err(|e| ice(e, "planning the scan"))?
        .plan_files()
        .await
        .map_err(|e| ice(e, "planning the scan"))?;
    while let Some(t) = tasks
        .try_next()
        .await
        .map_err(|e| ice(e, "planning the scan"))?
    {
        if wanted.contains(t.data_file_path.as_str()) {
            out.entry(t.data_file_path.clone()).or_default().push(t);
        }
    }
    Ok(out)
}

/// `batch` with the table's Arrow schema (field ids, types): same columns by name.
fn conform(batch: RecordBatch, target: &ArrowSchemaRef) -> Result<RecordBatch> {
    if batch.schema() == *target {
        return Ok(batch);
    }
    let cols = target
        .fields()
        .iter()
        .map(|f| -> Result<ArrayRef> {
            let c = batch.column_by_name(f.name()).ok_or_else(|| {
                Error::internal(format!("the scan returned no column `{}`", f.name()))
            })?;
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, f.data_type())
                    .map_err(|e| Error::schema(format!("column `{}`: {e}", f.name())))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new_with_options(
        target.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| Error::schema(format!("rewritten rows do not fit the table: {e}")))
}

/// Rows handed to the writer at a time for rows of `bytes_per_row` (in memory): an eighth
/// of `target`, at most the writer's `row_group_size`. The rolling writer decides between
/// writes whether a file is full, and row groups close at [`row_group_bytes`] (at most an
/// eighth of the target), so a closed file holds about the target — at least 7/8 of it,
/// not small for the next compaction.
fn rows_per_group(target: u64, bytes_per_row: u64, max_rows: usize) -> usize {
    let rows = (target / 8) / bytes_per_row.max(1);
    usize::try_from(rows)
        .unwrap_or(usize::MAX)
        .clamp(1, max_rows.max(1))
}

/// Read `tasks` (deletes applied) and write their rows into new data files of `partition`,
/// rolling at `target` bytes. On failure the files written are deleted.
async fn rewrite(
    table: &Table,
    tasks: Vec<FileScanTask>,
    partition: &Struct,
    cfg: &IcebergWriterConfig,
    target: u64,
) -> Result<Vec<DataFile>> {
    let md = table.metadata();
    let schema = md.current_schema().clone();
    let arrow_schema: ArrowSchemaRef = Arc::new(
        iceberg::arrow::schema_to_arrow_schema(&schema)
            .map_err(|e| ice(e, "reading the table schema"))?,
    );
    let spec = md.default_partition_spec();
    let key = (!spec.is_unpartitioned())
        .then(|| PartitionKey::new(spec.as_ref().clone(), schema.clone(), partition.clone()));
    let prefix = format!("dativo-compact-{}", uuid::Uuid::now_v7());
    // Started at the first batch: its width sizes the row groups.
    let mut writer = None;
    let mut chunk = 1usize;
    let mut seen = (0u64, 0u64);
    let written = async {
        // One file at a time: a row group in memory at most.
        let mut rows = table
            .reader_builder()
            .with_data_file_concurrency_limit(1)
            .build()
            .read(futures_util::stream::iter(tasks.into_iter().map(Ok)).boxed())
            .map_err(|e| ice(e, "reading the files to compact"))?
            .stream();
        while let Some(batch) = rows
            .try_next()
            .await
            .map_err(|e| ice(e, "reading the files to compact"))?
        {
            if batch.num_rows() == 0 {
                continue;
            }
            let batch = conform(batch, &arrow_schema)?;
            // The rows' width in memory, averaged over every batch so far (a small batch's
            // buffers overstate it): how many rows to hand the writer at a time.
            seen.0 += batch.get_array_memory_size() as u64;
            seen.1 += batch.num_rows() as u64;
            chunk = rows_per_group(target, seen.0 / seen.1.max(1), cfg.row_group_size);
            if writer.is_none() {
                let props = write_properties(cfg, &schema, target);
                let files = FileBuilder::new(
                    props,
                    schema.clone(),
                    None,
                    md.location().to_string(),
                    Default::default(),
                )?;
                let rolling = RollingFileWriterBuilder::new(
                    files,
                    usize::try_from(target).unwrap_or(usize::MAX),
                    table.file_io().clone(),
                    DefaultLocationGenerator::new(md).map_err(|e| ice(e, "data location"))?,
                    DefaultFileNameGenerator::new(prefix.clone(), None, DataFileFormat::Parquet),
                );
                writer = Some(
                    DataFileWriterBuilder::new(rolling)
                        .build(key.clone())
                        .await
                        .map_err(|e| ice(e, "starting a data file"))?,
                );
            }
            let w = writer.as_mut().expect("started above");
            // A row group at a time: the rolling writer decides between writes, so a batch
            // larger than a row group would overshoot the target.
            let mut off = 0;
            while off < batch.num_rows() {
                let len = chunk.min(batch.num_rows() - off);
                w.write(batch.slice(off, len))
                    .await
                    .map_err(|e| ice(e, "writing a compacted file"))?;
                off += len;
            }
        }
        Ok::<_, Error>(())
    }
    .await;
    let closed = match writer {
        Some(mut w) => w
            .close()
            .await
            .map_err(|e| ice(e, "closing a compacted file")),
        // Every row of the group was deleted: the group is replaced by nothing.
        None => Ok(Vec::new()),
    };
    match (written, closed) {
        (Ok(()), Ok(files)) => Ok(files),
        (Err(e), Ok(files)) => {
            delete_files(table.file_io(), &files).await;
            Err(e)
        }
        (Ok(()), Err(e)) | (Err(e), Err(_)) => Err(e),
    }
}

async fn delete_files(io: &FileIO, files: &[DataFile]) {
    for f in files {
        if let Err(e) = io.delete(f.file_path()).await {
            tracing::warn!(file = f.file_path(), error = %e, "could not delete an uncommitted compacted file");
        }
    }
}

fn check_table(h: &TableHandle, table: &Table) -> Result<()> {
    if h.cfg.encryption.is_some() {
        return Err(Error::config(format!(
            "table {} is written with client-side encryption: compaction cannot read its files \
             (it would have to decrypt and encrypt them again); it is not supported",
            h.cfg.table
        ))
        .with_key_path("encryption"));
    }
    let v = table.metadata().format_version();
    if v != FormatVersion::V2 {
        return Err(Error::config(format!(
            "table {} is Iceberg format v{}: maintenance commits support format v2 tables only",
            h.cfg.table, v as u8
        )));
    }
    Ok(())
}

/// Compact the table's small files (and the files deletes point into): see the module doc.
pub async fn compact(h: &TableHandle, opts: &CompactOptions) -> Result<MaintenanceReport> {
    compact_with(h, opts, &|| {}).await
}

/// [`compact`], calling `before_commit` before each group's commit (tests commit
/// concurrently there).
pub(super) async fn compact_with(
    h: &TableHandle,
    opts: &CompactOptions,
    before_commit: &(dyn Fn() + Send + Sync),
) -> Result<MaintenanceReport> {
    let table = h.load().await?;
    check_table(h, &table)?;
    let md = table.metadata();
    let target = target_size(opts, md, &h.cfg);
    let live = LiveFiles::load(&table).await?;
    let max_group = opts
        .max_group_size
        .unwrap_or_else(|| target.saturating_mul(GROUP_TARGETS));
    let groups = plan(md, &live, target, max_group, opts.min_input_files);
    let (data_before, deletes_before) = counts(&live);
    let mut report = MaintenanceReport {
        operation: "compact".into(),
        dry_run: opts.dry_run,
        data_files_before: data_before,
        delete_files_before: deletes_before,
        data_files_after: data_before,
        delete_files_after: deletes_before,
        manifests_before: live.manifests.len() as u64,
        manifests_after: live.manifests.len() as u64,
        ..Default::default()
    };
    if opts.dry_run {
        // Per partition: its groups' bytes in target-sized files (an estimate: rewritten
        // files are usually smaller than the small files they replace).
        let mut parts: HashMap<&Struct, u64> = HashMap::new();
        for g in &groups {
            *parts.entry(&g.partition).or_default() += g.bytes;
            report.data_files_after -= g.files.len() as u64;
            report.delete_files_after -= g.deletes.len() as u64;
            report.rows_rewritten += g.rows.saturating_sub(g.deleted);
            report.bytes_rewritten += g.bytes;
        }
        report.data_files_after += parts
            .values()
            .map(|b| b.div_ceil(target).max(1))
            .sum::<u64>();
        log(h, &report, groups.len(), target);
        return Ok(report);
    }
    if groups.is_empty() {
        log(h, &report, 0, target);
        return Ok(report);
    }

    let swap = h.swap()?;
    let committer = Committer::new(h.catalog.as_ref(), swap.as_ref());
    let io = table.file_io().clone();
    let wanted: HashSet<&str> = groups
        .iter()
        .flat_map(|g| g.files.iter().map(String::as_str))
        .collect();
    let tasks = scan_tasks(&table, &wanted).await?;
    drop(wanted);
    let planned = (table.clone(), live.clone(), tasks);
    // Groups left per partition, and the small last file of a partition's committed group:
    // rewritten with its next group, so a partition ends with one file below the target.
    let mut left: HashMap<Struct, usize> = HashMap::new();
    for g in &groups {
        *left.entry(g.partition.clone()).or_default() += 1;
    }
    let mut carry: HashMap<Struct, Vec<DataFile>> = HashMap::new();
    // The state the next commit is built on: the plan's, then each group's commit.
    let mut current = (table.clone(), live);
    let mut committed = 0usize;
    for group in groups {
        let mut group = group;
        let n = left.get_mut(&group.partition).expect("counted above");
        *n -= 1;
        let last_of_partition = *n == 0;
        let carried = carry.remove(&group.partition).unwrap_or_default();
        let (carried_rows, carried_bytes) = carried.iter().fold((0, 0), |(r, b), f| {
            (r + f.record_count(), b + f.file_size_in_bytes())
        });
        let mut state: Cow<'_, (Table, LiveFiles, HashMap<String, Vec<FileScanTask>>)> =
            Cow::Borrowed(&planned);
        if !carried.is_empty() {
            let members: Option<Vec<&LiveFile>> = group
                .files
                .iter()
                .map(String::as_str)
                .chain(carried.iter().map(|f| f.file_path()))
                .map(|p| current.1.get(p).filter(|f| f.is_data()))
                .collect();
            // A file gone meanwhile (another compaction): the group is planned again below.
            if let Some(members) = members {
                group = group_of(
                    group.partition.clone(),
                    &members,
                    &DeleteIndex::new(&current.1),
                );
                // Files written since the plan: read on the current state.
                let wanted: HashSet<&str> = group.files.iter().map(String::as_str).collect();
                let tasks = scan_tasks(&current.0, &wanted).await?;
                state = Cow::Owned((current.0.clone(), current.1.clone(), tasks));
            }
        }
        let mut redo = 0u32;
        loop {
            let (read_table, read_live, read_tasks) = state.as_ref();
            let mut group_tasks = Vec::new();
            for f in &group.files {
                match read_tasks.get(f) {
                    Some(t) => group_tasks.extend(t.iter().cloned()),
                    None => {
                        return Err(Error::internal(format!(
                            "the scan of {} has no task for its live data file {f}",
                            h.cfg.table
                        )))
                    }
                }
            }
            let files = rewrite(read_table, group_tasks, &group.partition, &h.cfg, target).await?;
            let mut remove: BTreeSet<String> = group.files.iter().cloned().collect();
            remove.extend(group.deletes.iter().cloned());
            let change = Change {
                remove,
                add: files.clone(),
                operation: Some(Operation::Replace),
                no_new_deletes_for: group.files.iter().cloned().collect(),
                properties: HashMap::from([(MAINTENANCE_KEY.to_string(), "compact".to_string())]),
                ..Default::default()
            };
            let producer = SnapshotProducer::new(&current.0, change);
            // The rows were read on `read_live`; the Committer checks for deletes added
            // since `current`: those between the two (while this compaction committed other
            // groups) are checked here.
            let result = match producer.validate(read_live, &current.1) {
                Ok(()) => {
                    before_commit();
                    committer
                        .commit(&current.0, &current.1, producer, None)
                        .await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(t) => {
                    let rows: u64 = files.iter().map(|f| f.record_count()).sum();
                    report.rows_rewritten += rows.saturating_sub(carried_rows);
                    report.bytes_rewritten += group.bytes.saturating_sub(carried_bytes);
                    report.commit_id = t.metadata().current_snapshot_id().map(|s| s.to_string());
                    let l = LiveFiles::load_reusing(&t, Some(&current.1)).await?;
                    current = (t, l);
                    committed += 1;
                    if !last_of_partition {
                        let small: Vec<DataFile> = files
                            .into_iter()
                            .filter(|f| is_small(f.file_size_in_bytes(), target))
                            .collect();
                        carry.insert(group.partition.clone(), small);
                    }
                    break;
                }
                Err(e) if e.kind() == ErrorKind::Conflict => {
                    delete_files(&io, &files).await;
                    report.conflicts += 1;
                    redo += 1;
                    let t = h.load().await?;
                    let l = LiveFiles::load_reusing(&t, Some(&current.1)).await?;
                    let again = (redo <= REDOS).then(|| replan(&l, &group)).flatten();
                    let Some(g) = again else {
                        tracing::warn!(
                            table = %h.cfg.table,
                            files = group.files.len(),
                            attempts = redo,
                            error = %e,
                            "compaction skipped a group of files: other commits changed them"
                        );
                        current = (t, l);
                        break;
                    };
                    tracing::info!(table = %h.cfg.table, attempt = redo, error = %e, "compaction lost a race; planning the group again");
                    group = g;
                    let wanted: HashSet<&str> = group.files.iter().map(String::as_str).collect();
                    let tasks = scan_tasks(&t, &wanted).await?;
                    current = (t.clone(), l.clone());
                    state = Cow::Owned((t, l, tasks));
                }
                Err(e) => {
                    if matches!(e.kind(), ErrorKind::Busy | ErrorKind::Config) {
                        delete_files(&io, &files).await;
                    }
                    return Err(e.context(format!(
                        "compacting {} ({committed} groups committed before)",
                        h.cfg.table
                    )));
                }
            }
        }
    }
    let (data_after, deletes_after) = counts(&current.1);
    report.data_files_after = data_after;
    report.delete_files_after = deletes_after;
    report.manifests_after = current.1.manifests.len() as u64;
    log(h, &report, committed, target);
    Ok(report)
}

fn log(h: &TableHandle, r: &MaintenanceReport, groups: usize, target: u64) {
    tracing::info!(
        table = %h.cfg.table,
        dry_run = r.dry_run,
        groups,
        target_file_size = target,
        data_files_before = r.data_files_before,
        data_files_after = r.data_files_after,
        delete_files_before = r.delete_files_before,
        delete_files_after = r.delete_files_after,
        rows_rewritten = r.rows_rewritten,
        bytes_rewritten = r.bytes_rewritten,
        conflicts = r.conflicts,
        commit = r.commit_id.as_deref().unwrap_or("none"),
        "compacted"
    );
}

/// Rewrite the current snapshot's manifests: every live entry into one data manifest and
/// one delete manifest per partition spec, as EXISTING entries keeping their snapshot ids
/// and sequence numbers; a `replace` snapshot changing no file. Nothing to do when there is
/// already one manifest per spec and content.
pub async fn rewrite_manifests(h: &TableHandle, dry_run: bool) -> Result<MaintenanceReport> {
    let table = h.load().await?;
    check_table(h, &table)?;
    let live = LiveFiles::load(&table).await?;
    let (data, deletes) = counts(&live);
    let kinds: HashSet<(i32, bool)> = live
        .files
        .iter()
        .map(|f| (f.spec_id, f.is_data()))
        .collect();
    let before = live.manifests.len() as u64;
    let mut report = MaintenanceReport {
        operation: "rewrite-manifests".into(),
        dry_run,
        data_files_before: data,
        data_files_after: data,
        delete_files_before: deletes,
        delete_files_after: deletes,
        manifests_before: before,
        manifests_after: before,
        ..Default::default()
    };
    let nothing = live.snapshot_id.is_none() || before <= kinds.len() as u64;
    if nothing || dry_run {
        if !nothing {
            report.manifests_after = kinds.len() as u64;
        }
        tracing::info!(table = %h.cfg.table, dry_run, manifests_before = before, manifests_after = report.manifests_after, "rewrote manifests");
        return Ok(report);
    }
    let swap = h.swap()?;
    let change = Change {
        rewrite_manifests: true,
        operation: Some(Operation::Replace),
        properties: HashMap::from([(MAINTENANCE_KEY.to_string(), "rewrite-manifests".to_string())]),
        ..Default::default()
    };
    let t = Committer::new(h.catalog.as_ref(), swap.as_ref())
        .commit(&table, &live, SnapshotProducer::new(&table, change), None)
        .await?;
    report.commit_id = t.metadata().current_snapshot_id().map(|s| s.to_string());
    let after = LiveFiles::load_reusing(&t, Some(&live)).await?;
    (report.data_files_after, report.delete_files_after) = counts(&after);
    report.manifests_after = after.manifests.len() as u64;
    tracing::info!(
        table = %h.cfg.table,
        manifests_before = before,
        manifests_after = report.manifests_after,
        commit = report.commit_id.as_deref().unwrap_or("none"),
        "rewrote manifests"
    );
    Ok(report)
}
