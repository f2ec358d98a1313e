//! One stream's columns encoded on several threads (`encode_threads`): a batch's columns are
//! dealt round-robin to the threads, each encodes its share into that column's writer
//! (dictionary, statistics, pages, compression) while the others do theirs, and a full row group
//! is closed column by column the same way and appended to the file in column order. The
//! reader meanwhile decodes the next batch on its own thread.
//!
//! Bounded like the sequential path: a row group closes at `row_group_size` rows or
//! `row_group_bytes` of encoded data, and the threads live only while a batch is encoded
//! (scoped threads, no pool that outlives the writer).

use std::io::Write;

use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_writer::{compute_leaves, ArrowColumnChunk, ArrowColumnWriter};
use parquet::arrow::ArrowWriter;
use parquet::errors::{ParquetError, Result};

/// The row group being encoded in parallel.
pub(crate) struct Group {
    writers: Vec<ArrowColumnWriter>,
    rows: usize,
}

impl Group {
    /// Encoded bytes buffered so far (what `ArrowWriter::in_progress_size` says of its own).
    pub(crate) fn estimated_bytes(&self) -> usize {
        self.writers
            .iter()
            .map(ArrowColumnWriter::get_estimated_total_bytes)
            .sum()
    }
}

/// Write `batch` into `group` (started on `w` when there is none), closing row groups at
/// `max_rows` rows or `max_bytes` encoded bytes. `schema` is the file's: its fields, not the
/// batch's, say which columns are nullable (as in `ArrowWriter::write`; a batch may declare a
/// column non-null that the file allows to be null).
pub(crate) fn write<W: Write + Send>(
    w: &mut ArrowWriter<W>,
    group: &mut Option<Group>,
    schema: &Schema,
    batch: &RecordBatch,
    threads: usize,
    max_rows: usize,
    max_bytes: usize,
) -> Result<()> {
    let mut offset = 0;
    while offset < batch.num_rows() {
        let g = match group {
            Some(g) => g,
            None => group.insert(Group {
                writers: start(w)?,
                rows: 0,
            }),
        };
        let n = (batch.num_rows() - offset).min(max_rows.saturating_sub(g.rows).max(1));
        let part = batch.slice(offset, n);
        let mut leaves = Vec::with_capacity(g.writers.len());
        for (field, col) in schema.fields().iter().zip(part.columns()) {
            leaves.extend(compute_leaves(field, col)?);
        }
        if leaves.len() != g.writers.len() {
            return Err(ParquetError::General(format!(
                "a batch of {} leaf columns for a file of {}",
                leaves.len(),
                g.writers.len()
            )));
        }
        let jobs: Vec<(&mut ArrowColumnWriter, _)> = g.writers.iter_mut().zip(leaves).collect();
        on_threads(jobs, threads, |(cw, leaf)| cw.write(&leaf))?;
        g.rows += n;
        offset += n;
        if g.rows >= max_rows || g.estimated_bytes() >= max_bytes {
            flush(w, group, threads)?;
        }
    }
    Ok(())
}

/// Close the row group in progress (its columns in parallel) and append it to the file.
pub(crate) fn flush<W: Write + Send>(
    w: &mut ArrowWriter<W>,
    group: &mut Option<Group>,
    threads: usize,
) -> Result<()> {
    let Some(g) = group.take() else {
        return Ok(());
    };
    if g.rows == 0 {
        return Ok(());
    }
    let mut slots: Vec<Option<ArrowColumnChunk>> = (0..g.writers.len()).map(|_| None).collect();
    let jobs: Vec<_> = g.writers.into_iter().zip(slots.iter_mut()).collect();
    on_threads(jobs, threads, |(cw, slot)| {
        *slot = Some(cw.close()?);
        Ok(())
    })?;
    let chunks = slots
        .into_iter()
        .map(|c| c.ok_or_else(|| ParquetError::General("a column chunk was not closed".into())))
        .collect::<Result<Vec<_>>>()?;
    append(w, chunks)
}

/// The column writers of a new row group, from the file's own factory (so Parquet Modular
/// Encryption and the writer properties apply as on the sequential path).
#[allow(deprecated)] // the replacement, `into_serialized_writer`, gives up the `ArrowWriter`
fn start<W: Write + Send>(w: &mut ArrowWriter<W>) -> Result<Vec<ArrowColumnWriter>> {
    w.get_column_writers()
}

#[allow(deprecated)] // see `start`
fn append<W: Write + Send>(w: &mut ArrowWriter<W>, chunks: Vec<ArrowColumnChunk>) -> Result<()> {
    w.append_row_group(chunks)
}

/// Run `f` on every job, the jobs dealt round-robin to `threads` threads (this one included);
/// the first error wins, a panic is passed on.
fn on_threads<J: Send>(
    jobs: Vec<J>,
    threads: usize,
    f: impl Fn(J) -> Result<()> + Sync,
) -> Result<()> {
    let threads = threads.clamp(1, jobs.len().max(1));
    let mut shares: Vec<Vec<J>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, j) in jobs.into_iter().enumerate() {
        shares[i % threads].push(j);
    }
    let f = &f;
    std::thread::scope(|s| {
        let mut shares = shares.into_iter();
        let mine = shares.next().unwrap_or_default();
        let handles: Vec<_> = shares
            .map(|share| {
                std::thread::Builder::new()
                    .name("dativo-encode".into())
                    .spawn_scoped(s, move || share.into_iter().try_for_each(f))
            })
            .collect::<std::io::Result<_>>()
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        let mut result = mine.into_iter().try_for_each(f);
        for h in handles {
            match h.join() {
                Ok(r) => result = result.and(r),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        result
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::properties::WriterProperties;
    use std::sync::Arc;

    /// The same batches written sequentially and on 1, 2 and 3 threads read back equal, with
    /// the same row groups (cut at `max_rows` inside a batch), and parquet-rs's reader accepts
    /// every file.
    #[test]
    fn parallel_files_equal_the_sequential_ones() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batches: Vec<RecordBatch> = (0..5)
            .map(|b| {
                let ids: Vec<i64> = (0..1000).map(|i| b * 1000 + i).collect();
                let s: Vec<Option<String>> = ids
                    .iter()
                    .map(|i| (i % 5 != 0).then(|| format!("v{}", i % 37)))
                    .collect();
                let n: Vec<Option<i64>> =
                    ids.iter().map(|i| (i % 3 != 0).then_some(i * 7)).collect();
                RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(Int64Array::from(ids)) as ArrayRef,
                        Arc::new(StringArray::from(s)),
                        Arc::new(Int64Array::from(n)),
                    ],
                )
                .unwrap()
            })
            .collect();
        let props = || {
            WriterProperties::builder()
                .set_max_row_group_row_count(Some(1500))
                .build()
        };
        let read = |bytes: Vec<u8>| {
            let r = ParquetRecordBatchReaderBuilder::try_new(bytes::Bytes::from(bytes)).unwrap();
            let groups: Vec<i64> = r
                .metadata()
                .row_groups()
                .iter()
                .map(|g| g.num_rows())
                .collect();
            let rows: Vec<RecordBatch> = r.build().unwrap().map(Result::unwrap).collect();
            (
                groups,
                arrow::compute::concat_batches(&schema, &rows).unwrap(),
            )
        };
        let mut seq = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props())).unwrap();
        for b in &batches {
            seq.write(b).unwrap();
        }
        let want = read(seq.into_inner().unwrap());
        assert_eq!(want.0, vec![1500, 1500, 1500, 500]);
        for threads in [1, 2, 3] {
            let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props())).unwrap();
            let mut g = None;
            for b in &batches {
                write(&mut w, &mut g, &schema, b, threads, 1500, usize::MAX).unwrap();
            }
            flush(&mut w, &mut g, threads).unwrap();
            let got = read(w.into_inner().unwrap());
            assert_eq!(got, want, "{threads} threads");
        }
    }

    /// A file column that allows NULLs takes a batch whose schema says the column has none
    /// (the runner accepts such batches): the file's nullability decides, as sequentially.
    #[test]
    fn a_non_null_batch_column_goes_into_a_nullable_file_column() {
        let file = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)]));
        let batch_schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            batch_schema,
            vec![Arc::new(Int64Array::from_iter_values(0..100)) as ArrayRef],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(Vec::new(), file.clone(), None).unwrap();
        let mut g = None;
        write(&mut w, &mut g, &file, &batch, 2, 1 << 20, usize::MAX).unwrap();
        flush(&mut w, &mut g, 2).unwrap();
        let bytes = bytes::Bytes::from(w.into_inner().unwrap());
        let rows: usize = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(rows, 100);
    }

    /// A row group also closes at `max_bytes` of encoded data.
    #[test]
    fn row_groups_close_at_the_byte_bound() {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(0..10_000)) as ArrayRef],
        )
        .unwrap();
        let mut w = ArrowWriter::try_new(Vec::new(), schema.clone(), None).unwrap();
        let mut g = None;
        for _ in 0..4 {
            write(&mut w, &mut g, &schema, &batch, 2, 1 << 20, 1).unwrap();
        }
        flush(&mut w, &mut g, 2).unwrap();
        assert_eq!(w.flushed_row_groups().len(), 4);
    }
}
