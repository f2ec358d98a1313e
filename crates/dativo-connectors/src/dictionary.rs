//! Which columns get Parquet dictionary encoding, chosen from a sample of the first batch.
//!
//! The Parquet writer dictionary-encodes every column by default and gives a column's
//! dictionary up when it outgrows the dictionary page limit (1 MiB), falling back to plain
//! encoding for the rest of the row group. For a column with many distinct values (ids,
//! prices, free text) every value is hashed into a dictionary that is then abandoned: CPU
//! for nothing. Here the number of distinct values in a row group is estimated from the
//! first batch — as the rows grow new values in the same proportion when the batch's second
//! half brought almost as many new values as its first (sorted keys, sequences), else by
//! Chao1 (`d + f1² / 2f2`, from the values seen once and twice: a column drawing from a
//! fixed set) — and columns whose dictionary would not fit its page are written without one. Columns
//! with few distinct values (flags, codes, dates) keep it: it is what makes them small.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{ArrowPrimitiveType, DataType};
use parquet::file::properties::WriterPropertiesBuilder;
use parquet::schema::types::ColumnPath;

/// At most this many rows of the first batch are looked at.
const SAMPLE: usize = 65_536;
/// A smaller first batch says too little: the writer's defaults stay.
const MIN_ROWS: usize = 1024;
/// parquet-rs's default dictionary page size limit.
const DICT_LIMIT: usize = 1024 * 1024;

/// The columns of `batch` (top level, by name) whose dictionary would not fit its page in a
/// row group of `row_group_rows` rows.
pub fn without_dictionary(batch: &RecordBatch, row_group_rows: usize) -> Vec<String> {
    if batch.num_rows() < MIN_ROWS {
        return Vec::new();
    }
    let n = batch.num_rows().min(SAMPLE);
    let mut out = Vec::new();
    for (field, col) in batch.schema().fields().iter().zip(batch.columns()) {
        let Some(((half, counts), width)) = estimate(col, n) else {
            continue;
        };
        let whole = counts.len() as f64;
        let distinct = if half > 0.0 && whole / half > 1.8 {
            // Still growing as fast as rows: new values all along.
            whole * row_group_rows as f64 / n as f64
        } else {
            chao1(counts.into_iter()).unwrap_or(0.0)
        };
        let in_group = distinct.min(row_group_rows as f64);
        if in_group * width > DICT_LIMIT as f64 {
            out.push(field.name().clone());
        }
    }
    out
}

/// Apply [`without_dictionary`]'s choice to `b`.
pub fn apply(mut b: WriterPropertiesBuilder, columns: &[String]) -> WriterPropertiesBuilder {
    for c in columns {
        b = b.set_column_dictionary_enabled(ColumnPath::from(c.as_str()), false);
    }
    b
}

/// Distinct values in the first half of the rows looked at, and how often each value occurs
/// in all of them.
type Seen = (f64, Vec<u32>);

/// ([`Seen`], bytes per dictionary entry) of the first `n` rows of `col`, for the types whose
/// dictionary can grow large; `None` for the others.
fn estimate(col: &ArrayRef, n: usize) -> Option<(Seen, f64)> {
    use arrow::datatypes::{
        Date32Type, Decimal128Type, Int32Type, Int64Type, TimeUnit, TimestampMicrosecondType,
        TimestampMillisecondType, TimestampNanosecondType,
    };
    match col.data_type() {
        DataType::Int32 => prim::<Int32Type>(col, n, 4),
        DataType::Int64 => prim::<Int64Type>(col, n, 8),
        DataType::Date32 => prim::<Date32Type>(col, n, 4),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            prim::<TimestampMicrosecondType>(col, n, 8)
        }
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            prim::<TimestampMillisecondType>(col, n, 8)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => prim::<TimestampNanosecondType>(col, n, 8),
        DataType::Decimal128(p, _) => {
            // Stored as the fewest bytes that hold the precision.
            let width = decimal_width(*p);
            prim::<Decimal128Type>(col, n, width)
        }
        DataType::Utf8 => {
            let a = col.as_string::<i32>();
            bytes((0..n).map(|i| a.is_valid(i).then(|| a.value(i).as_bytes())))
        }
        DataType::LargeUtf8 => {
            let a = col.as_string::<i64>();
            bytes((0..n).map(|i| a.is_valid(i).then(|| a.value(i).as_bytes())))
        }
        DataType::Binary => {
            let a = col.as_binary::<i32>();
            bytes((0..n).map(|i| a.is_valid(i).then(|| a.value(i))))
        }
        _ => None,
    }
}

fn decimal_width(precision: u8) -> usize {
    // Bytes needed for 10^p − 1 in two's complement.
    let bits = (precision as f64 * std::f64::consts::LOG2_10).ceil() as usize + 1;
    bits.div_ceil(8)
}

fn prim<T: ArrowPrimitiveType>(col: &ArrayRef, n: usize, width: usize) -> Option<(Seen, f64)>
where
    T::Native: Hash + Eq,
{
    let a = col.as_primitive::<T>();
    let mut counts: HashMap<T::Native, u32> = HashMap::new();
    let mut half = 0.0;
    for i in 0..n {
        if i == n / 2 {
            half = counts.len() as f64;
        }
        if a.is_valid(i) {
            *counts.entry(a.value(i)).or_insert(0) += 1;
        }
    }
    if counts.is_empty() {
        return None;
    }
    Some(((half, counts.into_values().collect()), width as f64))
}

fn bytes<'a>(values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) -> Option<(Seen, f64)> {
    let state = RandomState::new();
    let mut counts: HashMap<u64, (u32, usize)> = HashMap::new();
    let mut half = 0.0;
    let n = values.len();
    for (k, v) in values.enumerate() {
        if k == n / 2 {
            half = counts.len() as f64;
        }
        if let Some(v) = v {
            let e = counts.entry(state.hash_one(v)).or_insert((0, v.len()));
            e.0 += 1;
        }
    }
    if counts.is_empty() {
        return None;
    }
    let d = counts.len() as f64;
    // A dictionary entry is the value and its 4-byte length.
    let width = counts.values().map(|(_, l)| *l as f64).sum::<f64>() / d + 4.0;
    Some((
        (half, counts.into_values().map(|(c, _)| c).collect()),
        width,
    ))
}

/// Chao1's estimate of the distinct values of the whole from per-value sample counts:
/// `d + f1² / (2 f2)` (`f1`, `f2`: values seen once, twice); with no value seen twice the
/// sample says only "very many" (infinite). `None` for an empty sample.
fn chao1(counts: impl Iterator<Item = u32>) -> Option<f64> {
    let (mut d, mut f1, mut f2) = (0f64, 0f64, 0f64);
    for c in counts {
        d += 1.0;
        match c {
            1 => f1 += 1.0,
            2 => f2 += 1.0,
            _ => {}
        }
    }
    if d == 0.0 {
        return None;
    }
    Some(if f2 == 0.0 {
        if f1 == 0.0 {
            d
        } else {
            f64::INFINITY
        }
    } else {
        d + f1 * f1 / (2.0 * f2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    #[test]
    fn only_columns_whose_dictionary_would_overflow_go_without() {
        let n = 60_000;
        // A splitmix-style scramble: uniform values.
        let r = |i: u64, m: u64| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17) % m;
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("part", DataType::Int64, false),
            Field::new("supp", DataType::Int64, false),
            Field::new("day", DataType::Date32, false),
            Field::new("flag", DataType::Utf8, false),
            Field::new("comment", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i / 4))),
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|i| r(i, 200_000) as i64),
                )),
                Arc::new(Int64Array::from_iter_values(
                    (0..n).map(|i| r(i, 10_000) as i64),
                )),
                Arc::new(Date32Array::from_iter_values(
                    (0..n).map(|i| r(i, 2_500) as i32),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| ["A", "N", "R"][(i % 3) as usize]),
                )),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("comment number {i} with some words")),
                )),
            ],
        )
        .unwrap();
        assert_eq!(
            without_dictionary(&batch, 1_000_000),
            vec!["id".to_string(), "part".into(), "comment".into()]
        );
        // Small row groups keep every dictionary small enough.
        assert!(without_dictionary(&batch, 10_000).is_empty());
        // Too small a first batch: defaults.
        assert!(without_dictionary(&batch.slice(0, 100), 1_000_000).is_empty());
    }

    #[test]
    fn chao1_estimates() {
        assert_eq!(chao1([3u32, 3, 3].into_iter()), Some(3.0));
        assert_eq!(chao1([1u32, 1].into_iter()), Some(f64::INFINITY));
        assert_eq!(chao1([1u32, 1, 2].into_iter()), Some(3.0 + 4.0 / 2.0));
        assert_eq!(chao1(std::iter::empty()), None);
    }
}
