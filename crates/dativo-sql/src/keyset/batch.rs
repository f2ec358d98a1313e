//! Batches: how big they get, and how a partition worker cuts its rows into them and sends
//! them to the reader ([`Emitter`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use crossbeam_channel::Sender;

use dativo_core::{Error, Result};

/// Where a partition worker ends its batches: at the first change of the ordering key once
/// `rows` rows or `bytes` bytes are buffered (at once without an ordering key).
#[derive(Debug, Clone, Copy)]
pub struct BatchBound {
    /// Rows per batch (`batch_size`).
    pub rows: usize,
    /// Bytes per batch (`batch_bytes`), counted as the values' sizes on the wire.
    pub bytes: usize,
}

impl BatchBound {
    /// Whether a batch holding `rows` rows and `bytes` bytes is full.
    #[inline]
    pub fn full(&self, rows: usize, bytes: usize) -> bool {
        rows >= self.rows || bytes >= self.bytes
    }
}

/// The most a batch may be asked to hold (`batch_bytes`): one Arrow Utf8/Binary array holds
/// at most 2 GiB, and a batch may pass the bound by the rows of its last key.
pub const MAX_BATCH_BYTES: u64 = 1 << 30;

/// The default `batch_bytes`.
pub const DEFAULT_BATCH_BYTES: u64 = 4 << 20;

/// Check a `batch_bytes` value (a config error on `batch_bytes` otherwise).
pub fn check_batch_bytes(b: u64) -> dativo_core::Result<()> {
    if b == 0 || b > MAX_BATCH_BYTES {
        return Err(dativo_core::Error::config(format!(
            "must be between 1 byte and 1GiB (got {b})"
        ))
        .with_key_path("batch_bytes"));
    }
    Ok(())
}

/// The most bytes one Arrow Utf8/Binary array (32-bit offsets) holds.
pub const MAX_ARRAY_BYTES: usize = i32::MAX as usize;

/// `Ok` when `add` more bytes fit an Arrow Utf8/Binary array already holding `used`; else the
/// message a decoder reports (instead of Arrow's panic on offset overflow).
#[inline]
pub fn check_array_room(used: usize, add: usize) -> Result<(), String> {
    if used.saturating_add(add) > MAX_ARRAY_BYTES {
        return Err(format!(
            "the values of this column in one batch pass 2 GiB, the most an Arrow string/binary array holds \
             ({used} bytes buffered, a value of {add} more); rows sharing one ordering-key value are never split \
             across batches — lower `batch_bytes`, or order the read by a column with fewer equal values"
        ));
    }
    Ok(())
}

/// What a partition worker sends to the reader.
pub enum PartMsg {
    /// A batch of range `range`; `key` is its last key; `last` marks the range's final batch.
    Batch {
        /// Index of the range in the plan.
        range: usize,
        /// The rows.
        batch: arrow::record_batch::RecordBatch,
        /// The batch's last key (every row up to it was delivered).
        key: Option<String>,
        /// This was the range's last batch.
        last: bool,
        /// `lookback` hashes of the batch's rows inside the window (see the module doc).
        seen: Vec<String>,
    },
    /// The range ended without a final batch.
    Done(usize),
    /// The worker failed.
    Failed(dativo_core::Error),
}

/// The key at `row` as a literal the database parses back to the same value. Timestamps are
/// written with microseconds; zoned ones (in UTC) get `utc_suffix` (`+00` for PostgreSQL;
/// MySQL sessions run in UTC and take them bare).
pub fn key_literal(
    a: &dyn arrow::array::Array,
    row: usize,
    utc_suffix: &str,
) -> dativo_core::Result<String> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, TimestampMicrosecondType};
    if let DataType::Timestamp(_, tz) = a.data_type() {
        let v = a.as_primitive::<TimestampMicrosecondType>().value(row);
        let t = chrono::DateTime::from_timestamp_micros(v)
            .ok_or_else(|| dativo_core::Error::data("timestamp out of range"))?;
        let s = t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        return Ok(if tz.is_some() { s + utc_suffix } else { s });
    }
    let f = arrow::util::display::ArrayFormatter::try_new(a, &Default::default())?;
    Ok(f.value(row).to_string())
}

/// The array of a primitive builder, which is replaced by `fresh(rows)` with room for as many
/// rows as this batch held.
#[inline]
pub fn take_primitive<T: arrow::datatypes::ArrowPrimitiveType>(
    x: &mut arrow::array::PrimitiveBuilder<T>,
    fresh: impl FnOnce(usize) -> arrow::array::PrimitiveBuilder<T>,
) -> arrow::array::PrimitiveArray<T> {
    use arrow::array::ArrayBuilder;
    let c = if x.is_empty() { x.capacity() } else { x.len() };
    std::mem::replace(x, fresh(c)).finish()
}

/// The array of a string or binary builder, which is replaced by one with room for as many
/// values and an eighth more bytes than this batch held.
#[inline]
pub fn take_bytes<T: arrow::datatypes::ByteArrayType>(
    x: &mut arrow::array::GenericByteBuilder<T>,
) -> arrow::array::GenericByteArray<T> {
    use arrow::array::ArrayBuilder;
    let rows = x.len();
    let bytes = x.values_slice().len();
    std::mem::replace(
        x,
        arrow::array::GenericByteBuilder::with_capacity(rows, bytes + bytes / 8),
    )
    .finish()
}

/// A column decoder of a dialect: values appended, then finished into an Arrow array.
pub trait ArrayDecoder {
    /// The values appended since the last call, as an array; the decoder starts over.
    /// Errors: values that are not what the column's type says (text that is not UTF-8).
    fn finish(&mut self) -> Result<ArrayRef>;
}

/// What every partition worker of a run shares: what the rows hold (`K`: how a dialect
/// decodes a column), where its batches go and how they are cut.
pub struct ReadSpec<K> {
    /// How each selected column decodes (the `lookback` hash column last, when there is one).
    pub kinds: Vec<K>,
    /// The schema of every batch.
    pub schema: SchemaRef,
    /// Column names, for messages (the `lookback` hash column last, when there is one).
    pub names: Vec<String>,
    /// Index of the ordering column; `None` for an unordered read.
    pub key: Option<usize>,
    /// When a batch is full.
    pub bound: BatchBound,
    /// Each row ends with its `lookback` hash (text; NULL outside the window), which is
    /// carried beside the batch rather than in it.
    pub seen_col: bool,
    /// `table t` or `the query`, for messages.
    pub source: String,
    /// Appended to zoned timestamp keys (see [`key_literal`]).
    pub utc_suffix: &'static str,
    /// Where batches go.
    pub tx: Sender<PartMsg>,
    /// Set when the reader is closed: workers stop at the next row.
    pub stop: Arc<AtomicBool>,
}

impl<K: Send + Sync + 'static> ReadSpec<K> {
    /// Run `work` (reading ranges) on a new thread called `name`; its error goes to the reader.
    pub fn spawn(
        self: &Arc<Self>,
        name: String,
        work: impl FnOnce(&ReadSpec<K>) -> Result<()> + Send + 'static,
    ) -> Result<()> {
        let spec = self.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Err(e) = work(&spec) {
                    let _ = spec.tx.send(PartMsg::Failed(e));
                }
            })
            .map(drop)
            .map_err(|e| Error::internal(format!("cannot start a reader thread: {e}")))
    }
}

/// Cuts one range's rows into batches and sends them: the batching every dialect's worker
/// shares. Per row: [`Emitter::cut`] before decoding it, [`Emitter::row`] after.
pub struct Emitter<'a, K> {
    spec: &'a ReadSpec<K>,
    range: usize,
    rows: usize,
    bytes: usize,
    row_no: u64,
}

impl<'a, K> Emitter<'a, K> {
    /// The emitter of range `range`.
    pub fn new(spec: &'a ReadSpec<K>, range: usize) -> Self {
        Emitter {
            spec,
            range,
            rows: 0,
            bytes: 0,
            row_no: 0,
        }
    }

    /// Before decoding a row: when the batch is full and the row starts a new key
    /// (`new_key` is asked only then; any row does without an ordering key), send the batch.
    #[inline]
    pub fn cut<D: ArrayDecoder>(
        &mut self,
        decoders: &mut [D],
        new_key: impl FnOnce() -> bool,
    ) -> Result<()> {
        if self.spec.bound.full(self.rows, self.bytes) && (self.spec.key.is_none() || new_key()) {
            self.emit(decoders, false)?;
        }
        Ok(())
    }

    /// After decoding a row of `bytes` bytes.
    #[inline]
    pub fn row(&mut self, bytes: usize) {
        self.rows += 1;
        self.bytes += bytes;
        self.row_no += 1;
    }

    /// A value of column `col` in the current row could not be decoded.
    pub fn value_error(&self, col: usize, message: &str) -> Error {
        Error::data(format!(
            "{}, column `{}`, row {}: {message}",
            self.spec.source,
            self.spec.names.get(col).map(String::as_str).unwrap_or("?"),
            self.row_no + 1
        ))
    }

    /// Whether the reader was closed (the worker should return).
    #[inline]
    pub fn stopped(&self) -> bool {
        self.spec.stop.load(Ordering::Relaxed)
    }

    /// The range's rows are all read: send the last batch (or say the range is done).
    pub fn end<D: ArrayDecoder>(&mut self, decoders: &mut [D]) -> Result<()> {
        if self.rows > 0 {
            self.emit(decoders, true)
        } else {
            let _ = self.spec.tx.send(PartMsg::Done(self.range));
            Ok(())
        }
    }

    fn emit<D: ArrayDecoder>(&mut self, decoders: &mut [D], last: bool) -> Result<()> {
        let mut arrays: Vec<ArrayRef> = decoders
            .iter_mut()
            .enumerate()
            .map(|(i, d)| {
                d.finish().map_err(|e| {
                    let name = self.spec.names.get(i).map_or("?", String::as_str);
                    e.context(format!("column `{name}` of {}", self.spec.source))
                })
            })
            .collect::<Result<_>>()?;
        let seen = match (self.spec.seen_col, arrays.pop()) {
            (true, Some(hashes)) => hashes
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string)
                .collect(),
            (_, popped) => {
                arrays.extend(popped);
                Vec::new()
            }
        };
        let key = match self.spec.key.and_then(|k| arrays.get(k)) {
            Some(a) if !a.is_empty() && !a.is_null(a.len() - 1) => {
                Some(key_literal(a.as_ref(), a.len() - 1, self.spec.utc_suffix)?)
            }
            _ => None,
        };
        let batch = RecordBatch::try_new(self.spec.schema.clone(), arrays)?;
        self.rows = 0;
        self.bytes = 0;
        // A closed channel means the reader is gone: stop quietly.
        let _ = self.spec.tx.send(PartMsg::Batch {
            range: self.range,
            batch,
            key,
            last,
            seen,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_bounds() {
        let b = BatchBound {
            rows: 100,
            bytes: 1000,
        };
        assert!(!b.full(99, 999));
        assert!(b.full(100, 0));
        assert!(b.full(1, 1000));
        assert!(check_batch_bytes(DEFAULT_BATCH_BYTES).is_ok());
        assert!(check_batch_bytes(0).is_err());
        assert!(check_batch_bytes(MAX_BATCH_BYTES + 1).is_err());
        // An Arrow string/binary array takes up to i32::MAX bytes; past that, an error (not
        // Arrow's "byte array offset overflow" panic).
        assert!(check_array_room(MAX_ARRAY_BYTES - 10, 10).is_ok());
        let e = check_array_room(MAX_ARRAY_BYTES - 10, 11).unwrap_err();
        assert!(e.contains("2 GiB") && e.contains("batch_bytes"), "{e}");
        assert!(check_array_room(usize::MAX, 1).is_err());
    }

    /// A decoder of one column: integers or text.
    enum Dec {
        Int(arrow::array::Int64Builder),
        Text(arrow::array::StringBuilder),
    }
    impl ArrayDecoder for Dec {
        fn finish(&mut self) -> Result<ArrayRef> {
            Ok(match self {
                Dec::Int(b) => Arc::new(b.finish()),
                Dec::Text(b) => Arc::new(b.finish()),
            })
        }
    }

    fn spec(seen_col: bool) -> (ReadSpec<()>, crossbeam_channel::Receiver<PartMsg>) {
        use arrow::datatypes::{DataType, Field, Schema};
        let (tx, rx) = crossbeam_channel::unbounded();
        let spec = ReadSpec {
            kinds: vec![()],
            schema: Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, true)])),
            names: vec!["k".into(), "(lookback hash)".into()],
            key: Some(0),
            bound: BatchBound {
                rows: 2,
                bytes: 1 << 20,
            },
            seen_col,
            source: "table t".into(),
            utc_suffix: "",
            tx,
            stop: Arc::default(),
        };
        (spec, rx)
    }

    /// Feed keys (with a hash for odd ones when `seen_col`); what was sent: (rows, last key,
    /// last batch, hashes).
    fn feed(seen_col: bool, keys: &[i64]) -> Vec<(usize, Option<String>, bool, Vec<String>)> {
        let (spec, rx) = spec(seen_col);
        let mut em = Emitter::new(&spec, 3);
        let mut dec = vec![Dec::Int(arrow::array::Int64Builder::new())];
        if seen_col {
            dec.push(Dec::Text(arrow::array::StringBuilder::new()));
        }
        let mut last = None;
        for &k in keys {
            em.cut(&mut dec, || last != Some(k)).unwrap();
            last = Some(k);
            for d in dec.iter_mut() {
                match d {
                    Dec::Int(b) => b.append_value(k),
                    Dec::Text(b) => b.append_option((k % 2 == 1).then(|| format!("h{k}"))),
                }
            }
            em.row(8);
        }
        em.end(&mut dec).unwrap();
        assert_eq!(
            em.value_error(0, "bad").to_string(),
            format!("table t, column `k`, row {}: bad", keys.len() + 1)
        );
        drop(spec);
        rx.iter()
            .map(|m| match m {
                PartMsg::Batch {
                    batch,
                    key,
                    last,
                    range,
                    seen,
                } => {
                    assert_eq!((range, batch.num_columns()), (3, 1));
                    (batch.num_rows(), key, last, seen)
                }
                _ => panic!("a batch"),
            })
            .collect()
    }

    /// Batches end only where the key changes and carry their last key.
    #[test]
    fn emitter_cuts_between_keys() {
        let got = feed(false, &[1, 1, 1, 2, 3]);
        assert_eq!(
            got,
            [
                (3, Some("1".into()), false, vec![]),
                (2, Some("3".into()), true, vec![])
            ]
        );
    }

    /// The `lookback` hash column travels beside the batch, not in it.
    #[test]
    fn emitter_carries_hashes_beside_the_batch() {
        let got = feed(true, &[1, 2, 3]);
        assert_eq!(
            got,
            [
                (2, Some("2".into()), false, vec!["h1".to_string()]),
                (1, Some("3".into()), true, vec!["h3".to_string()])
            ]
        );
    }
}
