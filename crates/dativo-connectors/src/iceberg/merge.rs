//! `mode: merge`: upserts and deletions by key, committed as new data files plus Iceberg v2
//! position delete files.
//!
//! While a commit's batches stream in, [`Merge::prepare`] logs, for every row it keeps, where
//! it went: a (partition, ordinal) slot in the files being written, or "deleted". At commit
//! the log is sorted by key: a key written twice in one commit leaves its earlier row
//! *superseded*: that row gets a position delete in the same snapshot (the spec applies a
//! position delete to data files whose sequence number is lower *or equal*). Keys are kept
//! as 128-bit hashes (two seeded xxHash64) of their Arrow row encoding: a collision between two keys of
//! one commit has a probability around 10⁻²¹ for a billion keys.
//!
//! At commit, [`Merge::plan`] finds the previous versions of the touched keys in the table's
//! live data files without reading the table: files whose key bounds (manifest lower/upper
//! bounds of the first key column) hold no touched key are skipped, and so are row groups
//! whose Parquet bloom filter (written on key columns by this writer) holds none; of the
//! rest only the key columns are read. Every match becomes a position delete. Delete files
//! are written one per data file they point into (with `referenced_data_file` and exact
//! `file_path` bounds, so readers open only the ones that apply).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, FixedSizeBinaryArray,
    Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Field, Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};
use arrow::row::{RowConverter, SortField};
use bytes::Bytes;
use iceberg::arrow::{ArrowFileReader, RecordBatchPartitionSplitter};
use iceberg::io::{FileIO, FileRead};
use iceberg::spec::{
    DataContentType, DataFile, DataFileBuilder, DataFileFormat, Datum, PartitionKey,
    PrimitiveLiteral, Struct,
};
use iceberg::table::Table;
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::{ArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::properties::WriterProperties;
use twox_hash::XxHash64;

use dativo_core::{Error, Result};

use super::commit::LiveFiles;
use super::modes::{op_mask, DeleteWhen};
use super::writer::ice;

/// Iceberg's reserved field ids of a position delete file's columns.
const FILE_PATH_ID: i32 = 2_147_483_546;
const POS_ID: i32 = 2_147_483_545;

/// Where a key's latest version in the current commit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Row `ordinal` of the rows written into partition `part` this commit.
    Written(u32, u64),
    /// The commit deletes the key.
    Deleted,
}

/// What merges read and changed (logged per commit and summed into the snapshot summary).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeStats {
    /// Rows upserted.
    pub upserts: u64,
    /// Keys deleted by the source.
    pub deletes: u64,
    /// Rows of this commit replaced by a later row with the same key in it.
    pub superseded: u64,
    /// Live data files of the table.
    pub files_live: u64,
    /// Data files whose key columns were read.
    pub files_read: u64,
    /// Row groups skipped by their bloom filter.
    pub row_groups_skipped: u64,
    /// Rows read to find previous versions.
    pub rows_read: u64,
    /// Bytes fetched from storage to find previous versions.
    pub bytes_read: u64,
    /// Bytes of the live data files (what reading the whole table would cost).
    pub table_bytes: u64,
    /// Position deletes written (previous versions and superseded rows).
    pub position_deletes: u64,
    /// Truncations of the table applied (every row before one is gone).
    pub truncates: u64,
}

/// The merge side of one writer: keys of the commit in progress.
pub struct Merge {
    /// Key columns (names) and their index and type in the table's Arrow schema.
    key: Vec<String>,
    key_idx: Vec<usize>,
    key_types: Vec<DataType>,
    /// Iceberg field id of the first key column (for manifest bounds).
    first_id: i32,
    converter: RowConverter,
    first_converter: RowConverter,
    delete_when: Option<DeleteWhen>,
    /// Every row of the commit kept at its batch, in order: its key hash and where it went.
    /// Settled at commit ([`Merge::settle`]); a log, not a map, because most keys appear once.
    log: Vec<(u128, Slot)>,
    /// After [`Merge::settle`]: the touched key hashes, sorted and unique.
    keys: Vec<u128>,
    /// Whether the log is settled (a commit retried after a conflict plans again).
    settled: bool,
    /// The log's length at the commit's last truncation: the rows before it are superseded
    /// whatever their key, and the table's live files are removed ([`Merge::truncates`]).
    cut: Option<usize>,
    superseded: Vec<(u32, u64)>,
    /// Partitions written this commit (their values) and the rows written into each.
    parts: Vec<(Struct, u64)>,
    part_ids: HashMap<Struct, u32>,
    /// First key column of every touched row (for pruning), one array per batch.
    touched: Vec<ArrayRef>,
    stats: MergeStats,
}

impl Merge {
    /// Merge by `key` (columns of `target`, the table's Arrow schema) into a table whose
    /// first key column has Iceberg field id `first_id`.
    pub fn new(
        key: Vec<String>,
        target: &ArrowSchema,
        first_id: i32,
        delete_when: Option<DeleteWhen>,
    ) -> Result<Merge> {
        let mut key_idx = Vec::new();
        let mut key_types = Vec::new();
        let mut fields = Vec::new();
        for k in &key {
            let (i, f) = target.column_with_name(k).ok_or_else(|| {
                Error::config(format!(
                    "merge key column `{k}` is not a column of the table"
                ))
                .with_key_path("primary_key")
            })?;
            key_idx.push(i);
            key_types.push(f.data_type().clone());
            fields.push(SortField::new(f.data_type().clone()));
        }
        let first_converter = RowConverter::new(vec![fields[0].clone()])?;
        Ok(Merge {
            converter: RowConverter::new(fields)?,
            first_converter,
            key,
            key_idx,
            key_types,
            first_id,
            delete_when,
            log: Vec::new(),
            keys: Vec::new(),
            settled: false,
            cut: None,
            superseded: Vec::new(),
            parts: Vec::new(),
            part_ids: HashMap::new(),
            touched: Vec::new(),
            stats: MergeStats::default(),
        })
    }

    /// The key columns.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// What the commit in progress read and changed so far.
    pub fn stats(&self) -> &MergeStats {
        &self.stats
    }

    fn hashes(&self, batch: &RecordBatch) -> Result<Vec<u128>> {
        let cols: Vec<ArrayRef> = self
            .key_idx
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let rows = self.converter.convert_columns(&cols)?;
        Ok(rows.iter().map(|r| key_hash(r.as_ref())).collect())
    }

    fn part_id(&mut self, p: &Struct) -> u32 {
        if let Some(&id) = self.part_ids.get(p) {
            return id;
        }
        let id = self.parts.len() as u32;
        self.parts.push((p.clone(), 0));
        self.part_ids.insert(p.clone(), id);
        id
    }

    /// Refuse a batch with a NULL in a key column (before it is conformed to the table,
    /// whose key columns are required).
    pub fn check_keys(&self, source: &RecordBatch) -> Result<()> {
        for k in &self.key {
            let nulls = source.column_by_name(k).map_or(0, |c| c.null_count());
            if nulls > 0 {
                return Err(Error::data(format!(
                    "merge key column `{k}` is NULL in {nulls} row(s): every row needs a key to \
                     be merged by; nothing of this commit is written"
                )));
            }
        }
        Ok(())
    }

    /// Take one source batch (`source`, with `_dativo_op` / the `delete_when` column) and
    /// its rows conformed to the table (`conformed`): record its keys and return the rows
    /// to write, split by partition (`splitter`; `None`: unpartitioned).
    pub fn prepare(
        &mut self,
        source: &RecordBatch,
        conformed: RecordBatch,
        splitter: Option<&RecordBatchPartitionSplitter>,
    ) -> Result<Vec<(Option<PartitionKey>, RecordBatch)>> {
        let mut deleted = op_mask(source)?;
        if let Some(w) = &self.delete_when {
            let m = w.mask(source)?;
            deleted = Some(match deleted {
                Some(d) => arrow::compute::kernels::boolean::or(&d, &m)?,
                None => m,
            });
        }
        let hashes = self.hashes(&conformed)?;
        // The last row of each key in the batch wins; earlier ones are simply not written.
        let mut seen: KeySet = KeySet::with_capacity_and_hasher(hashes.len(), Default::default());
        let mut keep = vec![false; hashes.len()];
        for (i, h) in hashes.iter().enumerate().rev() {
            keep[i] = seen.insert(*h);
        }
        let mut write = Vec::with_capacity(hashes.len());
        for (i, h) in hashes.iter().enumerate() {
            if !keep[i] {
                self.stats.superseded += 1;
                write.push(false);
                continue;
            }
            let del = deleted.as_ref().is_some_and(|d| d.value(i));
            if del {
                self.log.push((*h, Slot::Deleted));
                self.stats.deletes += 1;
            }
            write.push(!del);
        }
        let keep = BooleanArray::from(keep);
        self.touched.push(arrow::compute::filter(
            conformed.column(self.key_idx[0]),
            &keep,
        )?);
        let write = BooleanArray::from(write);
        let upserts = filter_record_batch(&conformed, &write)?;
        if upserts.num_rows() == 0 {
            return Ok(Vec::new());
        }
        self.stats.upserts += upserts.num_rows() as u64;
        let parts: Vec<(Option<PartitionKey>, RecordBatch)> = match splitter {
            // Unpartitioned: the rows written are this batch's kept rows, in order, so their
            // hashes are already known.
            None => {
                let pid = self.part_id(&Struct::empty());
                let base = self.parts[pid as usize].1;
                let written = hashes.iter().zip(write.values()).filter(|(_, w)| *w);
                for (j, (h, _)) in written.enumerate() {
                    self.log.push((*h, Slot::Written(pid, base + j as u64)));
                }
                self.parts[pid as usize].1 += upserts.num_rows() as u64;
                return Ok(vec![(None, upserts)]);
            }
            Some(s) => s
                .split(&upserts)
                .map_err(|e| ice(e, "partitioning"))?
                .into_iter()
                .map(|(k, b)| (Some(k), b))
                .collect(),
        };
        for (k, b) in &parts {
            let pid = self.part_id(
                &k.as_ref()
                    .map(|k| k.data().clone())
                    .unwrap_or_else(Struct::empty),
            );
            let base = self.parts[pid as usize].1;
            for (j, h) in self.hashes(b)?.into_iter().enumerate() {
                self.log.push((h, Slot::Written(pid, base + j as u64)));
            }
            self.parts[pid as usize].1 += b.num_rows() as u64;
        }
        Ok(parts)
    }

    /// The source truncated the table here: every row before (in the table and in this
    /// commit) is gone. The commit removes the table's live files, and the rows it wrote so
    /// far get position deletes.
    pub fn truncate(&mut self) {
        self.cut = Some(self.log.len());
        self.touched.clear();
        self.stats.truncates += 1;
    }

    /// Whether the commit in progress truncates the table: it must remove every live file.
    pub fn truncates(&self) -> bool {
        self.cut.is_some()
    }

    /// Settle the commit's log: a key's rows other than its last are superseded (they get a
    /// position delete), and the touched keys become a sorted list.
    fn settle(&mut self) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        self.keys.clear();
        self.superseded.clear();
        // Rows before a truncation are gone whatever their key.
        let cut = self.cut.unwrap_or(0);
        for (_, slot) in &self.log[..cut] {
            if let Slot::Written(p, o) = *slot {
                self.superseded.push((p, o));
                self.stats.superseded += 1;
            }
        }
        // Sorted by hash, then by position in the log: each key's rows in commit order.
        let mut order: Vec<(u128, u32)> = self.log[cut..]
            .iter()
            .enumerate()
            .map(|(i, (h, _))| (*h, (cut + i) as u32))
            .collect();
        order.sort_unstable();
        for group in order.chunk_by(|a, b| a.0 == b.0) {
            self.keys.push(group[0].0);
            for &(_, i) in &group[..group.len() - 1] {
                if let Slot::Written(p, o) = self.log[i as usize].1 {
                    self.superseded.push((p, o));
                    self.stats.superseded += 1;
                }
            }
        }
    }

    /// Forget the commit in progress (after a commit or an abort); returns its statistics.
    pub fn reset(&mut self) -> MergeStats {
        self.log.clear();
        self.keys.clear();
        self.settled = false;
        self.cut = None;
        self.superseded.clear();
        self.parts.clear();
        self.part_ids.clear();
        self.touched.clear();
        std::mem::take(&mut self.stats)
    }

    /// Position deletes for rows of the commit's own `written` files that a later row of
    /// the same key superseded: data file path → positions.
    fn own_deletes(&self, written: &[DataFile]) -> Result<BTreeMap<String, Vec<i64>>> {
        // Each partition's files in the order they were written (the file name's counter).
        let mut by_part: HashMap<&Struct, Vec<&DataFile>> = HashMap::new();
        for f in written {
            by_part.entry(f.partition()).or_default().push(f);
        }
        let name = |f: &DataFile| {
            let p = f.file_path();
            let n = p.rsplit('/').next().unwrap_or(p).to_string();
            (n.len(), n)
        };
        let mut offsets: HashMap<u32, Vec<(u64, &str)>> = HashMap::new();
        for (pid, (part, rows)) in self.parts.iter().enumerate() {
            let mut files = by_part.remove(part).unwrap_or_default();
            files.sort_by_key(|f| name(f));
            let total: u64 = files.iter().map(|f| f.record_count()).sum();
            if total != *rows {
                return Err(Error::internal(format!(
                    "merge: {rows} rows were written into partition {part:?} but its files \
                     hold {total}"
                )));
            }
            let mut start = 0;
            let mut v = Vec::new();
            for f in files {
                v.push((start, f.file_path()));
                start += f.record_count();
            }
            offsets.insert(pid as u32, v);
        }
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for &(p, o) in &self.superseded {
            let files = &offsets[&p];
            let i = files.partition_point(|(start, _)| *start <= o) - 1;
            let (start, path) = files[i];
            out.entry(path.to_string())
                .or_default()
                .push((o - start) as i64);
        }
        Ok(out)
    }

    /// Plan the commit's deletes on `table` (whose live files are `live`): previous versions
    /// of every touched key, and the commit's own superseded rows in `written`. Writes the
    /// position delete files and returns them with the data files they point into.
    pub async fn plan(
        &mut self,
        table: &Table,
        live: &LiveFiles,
        written: &[DataFile],
        props: &WriterProperties,
    ) -> Result<Planned> {
        self.settle();
        let mut deletes = self.own_deletes(written)?;
        // The commit's own files are written under the table's current spec.
        let default_spec = table.metadata().default_partition_spec_id();
        let mut partitions: HashMap<String, (Struct, i32)> = written
            .iter()
            .map(|f| {
                (
                    f.file_path().to_string(),
                    (f.partition().clone(), default_spec),
                )
            })
            .collect();
        // Nothing to look up in a table without data files (a first load, a snapshot's
        // first commit): sorting the touched keys would be work for nothing.
        // Nor in a table the commit truncates (its live files are all removed).
        let touched = if !self.truncates() && live.files.iter().any(|f| f.is_data()) {
            Touched::new(self)?
        } else {
            Touched::empty()
        };
        let bytes = Arc::new(AtomicU64::new(0));
        let (mut files_live, mut files_read, mut rows_read, mut table_bytes, mut skipped) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for lf in live.files.iter().filter(|f| f.is_data()) {
            let f = &lf.file;
            files_live += 1;
            table_bytes += f.file_size_in_bytes();
            if touched.is_empty() || !touched.may_hold(f, self.first_id, &self.first_converter)? {
                continue;
            }
            files_read += 1;
            let found = self
                .find_in_file(table.file_io(), f, &touched, bytes.clone(), &mut skipped)
                .await?;
            rows_read += found.1;
            if !found.0.is_empty() {
                if lf.spec_id != default_spec {
                    return Err(Error::config(format!(
                        "table {}: data file {} was written under partition spec {} but the \
                         table's spec is now {default_spec}; dativo writes deletes under the \
                         current spec only — rewrite the table's older files first",
                        table.identifier(),
                        f.file_path(),
                        lf.spec_id
                    )));
                }
                partitions.insert(
                    f.file_path().to_string(),
                    (f.partition().clone(), lf.spec_id),
                );
                deletes
                    .entry(f.file_path().to_string())
                    .or_default()
                    .extend(found.0);
            }
        }
        self.stats.files_live = files_live;
        self.stats.files_read = files_read;
        self.stats.rows_read = rows_read;
        self.stats.bytes_read = bytes.load(Ordering::Relaxed);
        self.stats.table_bytes = table_bytes;
        self.stats.row_groups_skipped = skipped;
        let mut files = Vec::new();
        let mut referenced = std::collections::BTreeSet::new();
        let mut written_deletes = Vec::new();
        let own: HashSet<&str> = written.iter().map(|f| f.file_path()).collect();
        let mut n = 0u64;
        for (path, mut pos) in deletes {
            pos.sort_unstable();
            pos.dedup();
            n += pos.len() as u64;
            let (part, spec) = partitions[&path].clone();
            let df = write_delete_file(table, &path, &pos, part, spec, props).await;
            match df {
                Ok(df) => {
                    written_deletes.push(df.file_path().to_string());
                    files.push(df);
                }
                Err(e) => {
                    delete_paths(table.file_io(), &written_deletes).await;
                    return Err(e);
                }
            }
            if !own.contains(path.as_str()) {
                referenced.insert(path);
            }
        }
        self.stats.position_deletes = n;
        Ok(Planned {
            deletes: files,
            referenced,
        })
    }

    /// Positions of `f`'s rows whose key the commit touched, and the rows read.
    async fn find_in_file(
        &self,
        io: &FileIO,
        f: &DataFile,
        touched: &Touched,
        bytes: Arc<AtomicU64>,
        skipped: &mut u64,
    ) -> Result<(Vec<i64>, u64)> {
        let path = f.file_path();
        let failed = |e: parquet::errors::ParquetError| {
            Error::io(format!("merge: reading the keys of {path}: {e}")).with_source(e)
        };
        let input = io
            .new_input(path)
            .map_err(|e| ice(e, "opening a data file"))?;
        let meta = input
            .metadata()
            .await
            .map_err(|e| ice(e, "opening a data file"))?;
        let reader = input
            .reader()
            .await
            .map_err(|e| ice(e, "opening a data file"))?;
        let counted = Counted {
            inner: reader,
            bytes,
        };
        let file = ArrowFileReader::new(meta, Box::new(counted));
        let mut builder = ParquetRecordBatchStreamBuilder::new_with_options(
            file,
            ArrowReaderOptions::new().with_skip_arrow_metadata(false),
        )
        .await
        .map_err(failed)?;
        let md = builder.metadata().clone();
        let descr = md.file_metadata().schema_descr();
        // Leaf column index of each key column (top-level primitive columns).
        let mut leaves = Vec::new();
        for k in &self.key {
            let Some(i) = (0..descr.num_columns()).find(|&i| {
                let c = descr.column(i);
                c.path().parts().len() == 1 && c.name() == k
            }) else {
                return Err(Error::schema(format!(
                    "merge: data file {path} has no column `{k}` (the key): dativo cannot tell \
                     which of its rows to replace"
                )));
            };
            leaves.push(i);
        }
        let mut groups = Vec::new();
        let mut offsets = Vec::new();
        let mut start = 0i64;
        for (g, rg) in md.row_groups().iter().enumerate() {
            offsets.push(start);
            start += rg.num_rows();
            // Integer keys: the row group's min/max narrow the candidates (often to none).
            let candidates = touched.ints_within(rg.column(leaves[0]).statistics());
            if candidates.as_ref().is_some_and(|c| c.is_empty()) {
                *skipped += 1;
                continue;
            }
            // A bloom filter is worth its bytes only when few keys could be in the group: with
            // many, it answers "maybe" anyway.
            let few = match &candidates {
                Some(c) => c.len() <= BLOOM_CANDIDATES,
                None => touched.len() <= BLOOM_CANDIDATES,
            };
            let hit = if !few {
                true
            } else {
                match builder
                    .get_row_group_column_bloom_filter(g, leaves[0])
                    .await
                    .map_err(failed)?
                {
                    Some(sbbf) => match &candidates {
                        Some(c) => touched.ints_in_bloom(&sbbf, c),
                        None => touched.any_in_bloom(&sbbf),
                    },
                    None => true,
                }
            };
            if hit {
                groups.push(g);
            } else {
                *skipped += 1;
            }
        }
        if groups.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let mask = ProjectionMask::leaves(descr, leaves.iter().copied());
        builder = builder
            .with_projection(mask)
            .with_row_groups(groups.clone())
            .with_batch_size(64 * 1024);
        let mut stream = builder.build().map_err(failed)?;
        let mut found = Vec::new();
        let mut rows = 0u64;
        for g in groups {
            let Some(reader) = stream.next_row_group().await.map_err(failed)? else {
                break;
            };
            let mut pos = offsets[g];
            for batch in reader {
                let batch = batch.map_err(|e| failed(e.into()))?;
                let cols: Vec<ArrayRef> = self
                    .key
                    .iter()
                    .map(|k| {
                        let c = batch.column_by_name(k).ok_or_else(|| {
                            Error::internal(format!("merge: key column `{k}` was not read"))
                        })?;
                        Ok(c.clone())
                    })
                    .collect::<Result<_>>()?;
                let cols = self.cast_to_key_types(cols)?;
                match (touched.int_set(), cols.as_slice()) {
                    // One integer key column: look the values up directly.
                    (Some(set), [col]) => {
                        let col = arrow::compute::cast(col, &DataType::Int64)?;
                        let col = col
                            .as_any()
                            .downcast_ref::<Int64Array>()
                            .ok_or_else(|| Error::internal("merge: an integer key column"))?;
                        for (j, v) in col.values().iter().enumerate() {
                            if set.contains(v) {
                                found.push(pos + j as i64);
                            }
                        }
                    }
                    _ => {
                        let keys = self.converter.convert_columns(&cols)?;
                        for (j, r) in keys.iter().enumerate() {
                            if self.keys.binary_search(&key_hash(r.as_ref())).is_ok() {
                                found.push(pos + j as i64);
                            }
                        }
                    }
                }
                rows += batch.num_rows() as u64;
                pos += batch.num_rows() as i64;
            }
        }
        Ok((found, rows))
    }

    /// The key columns as read from a file, cast to the types the commit's keys have.
    fn cast_to_key_types(&self, cols: Vec<ArrayRef>) -> Result<Vec<ArrayRef>> {
        cols.into_iter()
            .zip(&self.key_types)
            .map(|(c, dt)| {
                if c.data_type() == dt {
                    Ok(c)
                } else {
                    arrow::compute::cast(&c, dt).map_err(|e| {
                        Error::schema(format!("merge: a key column cannot be read as {dt}: {e}"))
                    })
                }
            })
            .collect()
    }
}

/// The deletes of one planned merge commit.
pub struct Planned {
    /// The position delete files written.
    pub deletes: Vec<DataFile>,
    /// Live data files (not written by this commit) the deletes point into.
    pub referenced: std::collections::BTreeSet<String>,
}

/// Row groups with more candidate keys than this are read without asking their bloom filter.
const BLOOM_CANDIDATES: usize = 16;

/// The touched keys' first column, sorted, for pruning.
struct Touched {
    /// Row-encoded (order-preserving) values, sorted (`None`: nothing was touched).
    rows: Option<arrow::row::Rows>,
    /// The same values in the same order.
    values: ArrayRef,
    /// An integer first key column: its values, sorted and unique.
    ints: Option<Vec<i64>>,
    /// Whether the key is that one integer column (then [`Touched::int_set`] applies).
    single_int: bool,
    /// The integer keys as a set, built when a file's keys are first looked up.
    int_set: std::sync::OnceLock<IntSet>,
}

impl Touched {
    fn empty() -> Touched {
        Touched {
            rows: None,
            values: Arc::new(Int64Array::from(Vec::<i64>::new())),
            ints: None,
            single_int: false,
            int_set: std::sync::OnceLock::new(),
        }
    }

    fn new(m: &Merge) -> Result<Touched> {
        if m.touched.is_empty() {
            return Ok(Touched::empty());
        }
        let arrays: Vec<&dyn Array> = m.touched.iter().map(|a| a.as_ref()).collect();
        let all = arrow::compute::concat(&arrays)?;
        if matches!(all.data_type(), DataType::Int64 | DataType::Int32) {
            // Integer keys: a sorted vector is all the lookups need (no row encoding).
            let v = arrow::compute::cast(&all, &DataType::Int64)?;
            let v = v
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| Error::internal("merge: integer keys"))?;
            let mut ints: Vec<i64> = v.values().to_vec();
            ints.sort_unstable();
            ints.dedup();
            return Ok(Touched {
                rows: None,
                values: all,
                ints: Some(ints),
                single_int: m.key.len() == 1,
                int_set: std::sync::OnceLock::new(),
            });
        }
        let idx = arrow::compute::sort_to_indices(&all, None, None)?;
        let values = arrow::compute::take(&all, &idx, None)?;
        let rows = m
            .first_converter
            .convert_columns(std::slice::from_ref(&values))?;
        Ok(Touched {
            rows: (rows.num_rows() > 0).then_some(rows),
            values,
            ints: None,
            single_int: false,
            int_set: std::sync::OnceLock::new(),
        })
    }

    /// A single integer key column's touched values as a set (built on first use).
    fn int_set(&self) -> Option<&IntSet> {
        let ints = self.ints.as_ref().filter(|_| self.single_int)?;
        Some(self.int_set.get_or_init(|| {
            let mut set = IntSet::with_capacity_and_hasher(ints.len(), Default::default());
            set.extend(ints.iter().copied());
            set
        }))
    }

    /// How many distinct values were touched (integer keys) or touched values (others).
    fn len(&self) -> usize {
        match (&self.ints, &self.rows) {
            (Some(ints), _) => ints.len(),
            (None, Some(rows)) => rows.num_rows(),
            (None, None) => 0,
        }
    }

    /// Integer keys within a row group's min/max statistics; `None` when either is unknown.
    fn ints_within(
        &self,
        stats: Option<&parquet::file::statistics::Statistics>,
    ) -> Option<Vec<i64>> {
        use parquet::file::statistics::Statistics as S;
        let ints = self.ints.as_ref()?;
        let (lo, hi) = match stats? {
            S::Int64(s) => (*s.min_opt()?, *s.max_opt()?),
            S::Int32(s) => (*s.min_opt()? as i64, *s.max_opt()? as i64),
            _ => return None,
        };
        let a = ints.partition_point(|v| *v < lo);
        let b = ints.partition_point(|v| *v <= hi);
        Some(ints[a..b.max(a)].to_vec())
    }

    /// Whether the bloom filter may hold any of `candidates` (integer keys, encoded as the
    /// column's physical type).
    fn ints_in_bloom(&self, sbbf: &parquet::bloom_filter::Sbbf, candidates: &[i64]) -> bool {
        match self.values.data_type() {
            DataType::Int32 => candidates.iter().any(|v| sbbf.check(&(*v as i32))),
            _ => candidates.iter().any(|v| sbbf.check(v)),
        }
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Indices of the touched values within [lo, hi] (row-encoded).
    fn within(&self, lo: Option<&[u8]>, hi: Option<&[u8]>) -> Range<usize> {
        let Some(rows) = &self.rows else {
            return 0..0;
        };
        // The first index in 0..n where `pred` stops holding (`pred` holds on a prefix).
        let point = |pred: &dyn Fn(&[u8]) -> bool| {
            let (mut a, mut b) = (0, rows.num_rows());
            while a < b {
                let mid = a + (b - a) / 2;
                if pred(rows.row(mid).as_ref()) {
                    a = mid + 1;
                } else {
                    b = mid;
                }
            }
            a
        };
        let a = lo.map_or(0, |lo| point(&|r| r < lo));
        let b = hi.map_or(rows.num_rows(), |hi| point(&|r| r <= hi));
        a..b.max(a)
    }

    /// Whether data file `f` may hold a touched key, by its first key column's bounds.
    fn may_hold(&self, f: &DataFile, id: i32, conv: &RowConverter) -> Result<bool> {
        if let Some(ints) = &self.ints {
            // A bound of another type (none is expected) does not narrow anything.
            let bound = |d: Option<&Datum>| match d.map(|d| d.literal()) {
                Some(PrimitiveLiteral::Int(v)) => Some(i64::from(*v)),
                Some(PrimitiveLiteral::Long(v)) => Some(*v),
                _ => None,
            };
            let lo = bound(f.lower_bounds().get(&id));
            let hi = bound(f.upper_bounds().get(&id));
            let a = lo.map_or(0, |lo| ints.partition_point(|v| *v < lo));
            let b = hi.map_or(ints.len(), |hi| ints.partition_point(|v| *v <= hi));
            return Ok(b > a);
        }
        let dt = self.values.data_type();
        let enc = |d: Option<&Datum>| -> Result<Option<Vec<u8>>> {
            let Some(a) = d.and_then(|d| datum_array(d, dt)) else {
                return Ok(None);
            };
            let rows = conv.convert_columns(&[a])?;
            Ok(Some(rows.row(0).as_ref().to_vec()))
        };
        let lo = enc(f.lower_bounds().get(&id))?;
        let hi = enc(f.upper_bounds().get(&id))?;
        Ok(!self.within(lo.as_deref(), hi.as_deref()).is_empty())
    }

    /// Whether the bloom filter may hold any touched value.
    fn any_in_bloom(&self, sbbf: &parquet::bloom_filter::Sbbf) -> bool {
        let v = self.values.as_any();
        if let Some(a) = v.downcast_ref::<Int64Array>() {
            return a.values().iter().any(|x| sbbf.check(x));
        }
        if let Some(a) = v.downcast_ref::<Int32Array>() {
            return a.values().iter().any(|x| sbbf.check(x));
        }
        if let Some(a) = v.downcast_ref::<Date32Array>() {
            return a.values().iter().any(|x| sbbf.check(x));
        }
        if let Some(a) = v.downcast_ref::<StringArray>() {
            return a.iter().flatten().any(|x| sbbf.check(x));
        }
        if let Some(a) = v.downcast_ref::<BinaryArray>() {
            return a.iter().flatten().any(|x| sbbf.check(x));
        }
        if let Some(a) = v.downcast_ref::<FixedSizeBinaryArray>() {
            return a.iter().flatten().any(|x| sbbf.check(x));
        }
        // Another type (timestamps, decimals): its Parquet encoding is not checked here.
        true
    }
}

/// A set of [`key_hash`]es.
type KeySet = HashSet<u128, BuildHasherDefault<FastHasher>>;
/// A set of integer key values.
type IntSet = HashSet<i64, BuildHasherDefault<FastHasher>>;

/// The hasher of [`KeySet`] and [`IntSet`]: a multiply-and-fold of the integer (a key hash is
/// already uniform, a key value is the commit's own). SipHash, the default, cost more than the
/// rest of a merge's bookkeeping.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        let h = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 32)
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only integers are hashed here; anything else still spreads (FNV-1a).
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, i: u64) {
        self.0 ^= i;
    }

    fn write_u128(&mut self, i: u128) {
        self.0 ^= (i as u64) ^ ((i >> 64) as u64);
    }
}

/// A 128-bit hash of a row-encoded key: two seeded xxHash64s.
fn key_hash(bytes: &[u8]) -> u128 {
    ((XxHash64::oneshot(0x6461_7469_766f, bytes) as u128) << 64)
        | XxHash64::oneshot(0x6d65_7267_6521, bytes) as u128
}

/// A manifest bound as a one-value array of `dt` (`None`: a type not compared here).
fn datum_array(d: &Datum, dt: &DataType) -> Option<ArrayRef> {
    Some(match (d.literal(), dt) {
        (PrimitiveLiteral::Int(v), DataType::Int32) => Arc::new(Int32Array::from(vec![*v])),
        (PrimitiveLiteral::Int(v), DataType::Date32) => Arc::new(Date32Array::from(vec![*v])),
        (PrimitiveLiteral::Long(v), DataType::Int64) => Arc::new(Int64Array::from(vec![*v])),
        (PrimitiveLiteral::Int(v), DataType::Int64) => Arc::new(Int64Array::from(vec![*v as i64])),
        (PrimitiveLiteral::String(v), DataType::Utf8) => {
            Arc::new(StringArray::from(vec![v.as_str()]))
        }
        (PrimitiveLiteral::Binary(v), DataType::Binary) => {
            Arc::new(BinaryArray::from(vec![v.as_slice()]))
        }
        (PrimitiveLiteral::Binary(v), DataType::FixedSizeBinary(n)) if v.len() == *n as usize => {
            Arc::new(FixedSizeBinaryArray::try_from_iter(std::iter::once(v.as_slice())).ok()?)
        }
        (PrimitiveLiteral::UInt128(v), DataType::FixedSizeBinary(16)) => {
            Arc::new(FixedSizeBinaryArray::try_from_iter(std::iter::once(v.to_be_bytes())).ok()?)
        }
        (PrimitiveLiteral::Int128(v), DataType::Decimal128(p, s)) => Arc::new(
            Decimal128Array::from(vec![*v])
                .with_precision_and_scale(*p, *s)
                .ok()?,
        ),
        _ => return None,
    })
}

/// A [`FileRead`] that counts the bytes it fetches.
struct Counted {
    inner: Box<dyn FileRead>,
    bytes: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl FileRead for Counted {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.bytes
            .fetch_add(range.end - range.start, Ordering::Relaxed);
        self.inner.read(range).await
    }
}

/// The Arrow schema of a position delete file (`file_path`, `pos`, with their field ids).
fn delete_schema() -> ArrowSchemaRef {
    let id = |n: i32| {
        HashMap::from([(
            parquet::arrow::PARQUET_FIELD_ID_META_KEY.to_string(),
            n.to_string(),
        )])
    };
    Arc::new(ArrowSchema::new(vec![
        Field::new("file_path", DataType::Utf8, false).with_metadata(id(FILE_PATH_ID)),
        Field::new("pos", DataType::Int64, false).with_metadata(id(POS_ID)),
    ]))
}

/// Write one position delete file for `data` (positions sorted) beside the table's data.
async fn write_delete_file(
    table: &Table,
    data: &str,
    pos: &[i64],
    partition: Struct,
    spec_id: i32,
    props: &WriterProperties,
) -> Result<DataFile> {
    let schema = delete_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec![data; pos.len()])),
            Arc::new(Int64Array::from(pos.to_vec())),
        ],
    )?;
    let failed = |e: parquet::errors::ParquetError| {
        Error::io(format!("writing a delete file: {e}")).with_source(e)
    };
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, schema, Some(props.clone())).map_err(failed)?;
    w.write(&batch).map_err(failed)?;
    w.close().map_err(failed)?;
    // Beside the data file, so partitioned tables keep deletes in their partition's directory.
    let dir = data.rsplit_once('/').map_or(data, |(d, _)| d);
    let path = format!("{dir}/dativo-del-{}.parquet", uuid::Uuid::now_v7());
    let size = buf.len() as u64;
    table
        .file_io()
        .new_output(&path)
        .map_err(|e| ice(e, "creating a delete file"))?
        .write(Bytes::from(buf))
        .await
        .map_err(|e| ice(e, "writing a delete file"))?;
    let bound = |a: Datum, b: Datum| HashMap::from([(FILE_PATH_ID, a), (POS_ID, b)]);
    DataFileBuilder::default()
        .content(DataContentType::PositionDeletes)
        .file_path(path)
        .file_format(DataFileFormat::Parquet)
        .partition(partition)
        .partition_spec_id(spec_id)
        .record_count(pos.len() as u64)
        .file_size_in_bytes(size)
        .lower_bounds(bound(
            Datum::string(data),
            Datum::long(*pos.first().unwrap_or(&0)),
        ))
        .upper_bounds(bound(
            Datum::string(data),
            Datum::long(*pos.last().unwrap_or(&0)),
        ))
        .referenced_data_file(Some(data.to_string()))
        .build()
        .map_err(|e| Error::internal(format!("building a delete file entry: {e}")))
}

/// Delete files this writer wrote and no snapshot references.
pub async fn delete_paths(io: &FileIO, paths: &[String]) {
    for p in paths {
        if let Err(e) = io.delete(p).await {
            tracing::warn!(file = %p, error = %e, "could not delete an uncommitted delete file");
        }
    }
}
