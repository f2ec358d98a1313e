//! Keyset reading plans shared by the SQL readers (`postgres`, `mysql`): the ordering column,
//! the key ranges (one per partition), and the state that lets an interrupted run resume
//! exactly after its last committed batch.
//!
//! Batches end only between distinct values of the ordering column, so "every row with a key
//! up to K" is a precise description of what was delivered, and a range resumes with `key > K`.
//! A batch ends at the first key change after `batch_size` rows or `batch_bytes` bytes
//! ([`BatchBound`]); rows sharing one key value always stay together, so a batch can pass
//! either bound only by the rows of its last key.
//!
//! ## Incremental reads and NULL cursors
//!
//! An incremental range selects `cursor > K`, which no NULL cursor matches: rows with a NULL
//! cursor could never be delivered. A run refuses to plan while the source has any (a data
//! error naming the source, the column and the count) instead of skipping them silently; the
//! check is skipped when the catalog says the column is NOT NULL.
//!
//! ## `lookback`
//!
//! A run reads up to `upper`, the highest cursor in its snapshot; the next run starts
//! `lookback` below it, to catch rows that committed late with a cursor the previous run had
//! already passed. Rows it had delivered are skipped by `seen`: md5 of (primary key, cursor) of
//! every row delivered with a cursor in the window (`upper - lookback`, `upper`].
//!
//! `seen` must name exactly the rows that were *delivered*, never rows merely visible when it
//! is computed. An interrupted run resumes its plan in a new snapshot, and a row that committed
//! in between into a part the first attempt had already delivered is visible there but was
//! never delivered; computing `seen` by querying the window at the end of the resumed run would
//! list it, and the next run would skip it for good. So `seen` is collected from the rows
//! themselves: every read selects, beside the columns, the row's hash when its cursor is in the
//! window ([`Plan::seen_above`]); each batch carries those hashes ([`PartMsg::Batch`]) into
//! [`Plan::seen`], which travels with the plan in every mid-run checkpoint, so a resumed run
//! continues from exactly what was committed. Rows of the window an earlier run delivered (and
//! this run skips) are added when the plan is made. The late row above is then not in `seen`,
//! and the next run's lookback loads it, once.

use serde::{Deserialize, Serialize};

/// A SQL reader's incremental state (what `get_incremental_state` returns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysetState {
    /// Incremental: every row with a cursor up to this value was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// With `lookback`: md5 of (primary key, cursor) of the rows delivered within the lookback
    /// window below `cursor`, skipped when they are read again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
    /// The plan of a run that has not finished (present only in mid-run checkpoints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
    /// Full refresh: the run that last completed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_full_refresh: Option<String>,
}

/// A run's reading plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// `incremental` or `full_refresh`.
    pub mode: String,
    /// The ordering column; `None` for an unordered full refresh.
    pub column: Option<String>,
    /// Incremental: the highest cursor in the snapshot the run started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<String>,
    /// The key ranges, one per partition (plus one for NULL keys in a full refresh).
    pub ranges: Vec<KeyRange>,
    /// Rows delivered by an unordered plan (which cannot resume).
    #[serde(default)]
    pub delivered: u64,
    /// Incremental with `lookback`: the bottom of the window (`upper - lookback`, exclusive)
    /// whose delivered rows are listed in [`Plan::seen`]. `None` in plans stored by versions
    /// that computed `seen` at the end of the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_above: Option<String>,
    /// Incremental with `lookback`: hashes of the rows with a cursor above
    /// [`Plan::seen_above`] delivered so far by this plan or, skipped by it, by the run before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seen: Vec<String>,
}

/// One partition's key range and progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRange {
    /// Lower bound (`None`: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lo: Option<String>,
    /// Whether `lo` itself is included.
    #[serde(default)]
    pub lo_inclusive: bool,
    /// Upper bound, inclusive (`None`: unbounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hi: Option<String>,
    /// This range holds the rows whose key IS NULL.
    #[serde(default)]
    pub nulls: bool,
    /// Every row of the range with a key up to this value was delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// The whole range was delivered.
    #[serde(default)]
    pub finished: bool,
}

/// How a SQL dialect quotes names and strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `"name"`, `'it''s'`.
    Postgres,
    /// `` `name` ``, `'it\'s'` (backslashes escape in MySQL strings by default).
    MySql,
}

impl Dialect {
    /// A quoted identifier.
    pub fn ident(self, name: &str) -> String {
        match self {
            Dialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
            Dialect::MySql => format!("`{}`", name.replace('`', "``")),
        }
    }

    /// A table reference: `schema.table` → each part quoted; already-quoted names are kept.
    pub fn table_ref(self, table: &str) -> String {
        if table.contains('"') || table.contains('`') {
            table.to_string()
        } else {
            table
                .split('.')
                .map(|p| self.ident(p))
                .collect::<Vec<_>>()
                .join(".")
        }
    }

    /// A quoted string literal.
    pub fn lit(self, value: &str) -> String {
        match self {
            Dialect::Postgres => format!("'{}'", value.replace('\'', "''")),
            Dialect::MySql => format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''")),
        }
    }
}

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
pub const DEFAULT_BATCH_BYTES: u64 = 32 << 20;

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

impl Plan {
    /// Ranges not yet delivered completely.
    pub fn pending(&self) -> usize {
        self.ranges.iter().filter(|r| !r.finished).count()
    }

    /// Take the next worker message and record the progress it reports. `Ok(None)`: a range
    /// ended without a batch; call again while [`Plan::pending`] is non-zero.
    pub fn receive(
        &mut self,
        rx: &crossbeam_channel::Receiver<PartMsg>,
    ) -> dativo_core::Result<Option<arrow::record_batch::RecordBatch>> {
        let msg = rx.recv().map_err(|_| {
            dativo_core::Error::internal("the reading threads stopped unexpectedly")
        })?;
        match msg {
            PartMsg::Batch {
                range,
                batch,
                key,
                last,
                seen,
            } => {
                self.seen.extend(seen);
                let ordered = self.column.is_some();
                let r = &mut self.ranges[range];
                if key.is_some() {
                    r.after = key;
                } else if ordered && !r.nulls && !last {
                    // The batch ended on a key Arrow holds as NULL though the database does not
                    // (NaN / infinity read with `special_values: as_null`): no exact resume point.
                    return Err(dativo_core::Error::data(
                        "a batch ended on an ordering key that was read as NULL (NaN or infinity with `special_values: as_null`); \
                         the read could not resume exactly: filter those rows or order by another column",
                    ));
                }
                r.finished |= last;
                self.delivered += batch.num_rows() as u64;
                Ok(Some(batch))
            }
            PartMsg::Done(range) => {
                self.ranges[range].finished = true;
                Ok(None)
            }
            PartMsg::Failed(e) => Err(e),
        }
    }

    /// An interrupted plan can resume exactly only if it has an ordering column (or delivered
    /// nothing yet).
    pub fn check_resumable(&self) -> dativo_core::Result<()> {
        if self.column.is_none() && self.delivered > 0 {
            return Err(dativo_core::Error::data(format!(
                "the previous full refresh was interrupted after committing {} rows and cannot resume exactly without an ordering column; \
                 set `partition_column` (or give the table a primary key), then `dativo state reset` and clear the target",
                self.delivered
            )));
        }
        Ok(())
    }
}

impl KeyRange {
    /// The SQL predicate selecting what is left of this range, on `col` (quoted).
    pub fn predicate(&self, d: Dialect, col: &str) -> String {
        let lit = |v: &str| d.lit(v);
        if self.nulls {
            return format!("{col} IS NULL");
        }
        let mut parts = Vec::new();
        match (&self.after, &self.lo) {
            (Some(a), _) => parts.push(format!("{col} > {}", lit(a))),
            (None, Some(l)) if self.lo_inclusive => parts.push(format!("{col} >= {}", lit(l))),
            (None, Some(l)) => parts.push(format!("{col} > {}", lit(l))),
            (None, None) => {}
        }
        if let Some(h) = &self.hi {
            parts.push(format!("{col} <= {}", lit(h)));
        }
        if parts.is_empty() {
            format!("{col} IS NOT NULL")
        } else {
            parts.join(" AND ")
        }
    }
}

/// Ranges covering (`lo`, `hi`] (or [`lo`, `hi`] if `lo_inclusive`) split at `points`.
pub fn split_ranges(
    lo: Option<String>,
    lo_inclusive: bool,
    hi: Option<String>,
    points: &[String],
) -> Vec<KeyRange> {
    let mut bounds: Vec<Option<String>> = vec![lo];
    bounds.extend(points.iter().cloned().map(Some));
    bounds.push(hi);
    bounds
        .windows(2)
        .enumerate()
        .map(|(i, w)| KeyRange {
            lo: w[0].clone(),
            lo_inclusive: i == 0 && lo_inclusive,
            hi: w[1].clone(),
            nulls: false,
            after: None,
            finished: false,
        })
        .collect()
}

/// The key at `row` as a literal the database parses back to the same value. Timestamps are
/// written with microseconds; `utc_suffix` appends `+00` to zoned ones (PostgreSQL), MySQL
/// sessions run in UTC and take them bare.
pub fn key_literal(
    a: &dyn arrow::array::Array,
    row: usize,
    utc_suffix: bool,
) -> dativo_core::Result<String> {
    use arrow::array::AsArray;
    use arrow::datatypes::{DataType, TimestampMicrosecondType};
    if let DataType::Timestamp(_, tz) = a.data_type() {
        let v = a.as_primitive::<TimestampMicrosecondType>().value(row);
        let t = chrono::DateTime::from_timestamp_micros(v)
            .ok_or_else(|| dativo_core::Error::data("timestamp out of range"))?;
        let s = t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
        return Ok(if tz.is_some() && utc_suffix {
            format!("{s}+00")
        } else {
            s
        });
    }
    let f = arrow::util::display::ArrayFormatter::try_new(a, &Default::default())?;
    Ok(f.value(row).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates() {
        let d = Dialect::Postgres;
        let r = split_ranges(Some("1".into()), true, Some("100".into()), &["50".into()]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].predicate(d, "\"id\""),
            "\"id\" >= '1' AND \"id\" <= '50'"
        );
        assert_eq!(
            r[1].predicate(d, "\"id\""),
            "\"id\" > '50' AND \"id\" <= '100'"
        );
        let mut r2 = r[1].clone();
        r2.after = Some("70".into());
        assert_eq!(
            r2.predicate(d, "\"id\""),
            "\"id\" > '70' AND \"id\" <= '100'"
        );
        let open = split_ranges(None, false, None, &[]);
        assert_eq!(open[0].predicate(d, "c"), "c IS NOT NULL");
        assert_eq!(d.table_ref("public.orders"), "\"public\".\"orders\"");
        assert_eq!(d.lit("it's"), "'it''s'");
        assert_eq!(Dialect::MySql.lit(r"a\b'c"), r"'a\\b''c'");
        assert_eq!(Dialect::MySql.ident("my`col"), "`my``col`");
    }

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

    /// The `lookback` hashes a batch carries are recorded in the plan with its progress, so a
    /// checkpoint's state lists exactly the rows delivered up to it.
    #[test]
    fn receive_records_seen_with_progress() {
        use arrow::array::Int32Array;
        use arrow::datatypes::{DataType, Field, Schema};
        let schema =
            std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema,
            vec![std::sync::Arc::new(Int32Array::from(vec![1, 2]))],
        )
        .unwrap();
        let mut plan = Plan {
            mode: "incremental".into(),
            column: Some("id".into()),
            upper: Some("9".into()),
            ranges: split_ranges(Some("0".into()), false, Some("9".into()), &[]),
            delivered: 0,
            seen_above: Some("0".into()),
            seen: vec!["carried".into()],
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(PartMsg::Batch {
            range: 0,
            batch: batch.clone(),
            key: Some("2".into()),
            last: false,
            seen: vec!["h1".into(), "h2".into()],
        })
        .unwrap();
        plan.receive(&rx).unwrap();
        assert_eq!(plan.seen, ["carried", "h1", "h2"]);
        assert_eq!(plan.ranges[0].after.as_deref(), Some("2"));
        // The plan (with `seen`) round-trips through the stored state.
        let back: Plan = serde_json::from_value(serde_json::to_value(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
        // Plans stored before `seen_above` existed still load.
        let old: Plan =
            serde_json::from_str(r#"{"mode":"incremental","column":"id","ranges":[]}"#).unwrap();
        assert!(old.seen_above.is_none() && old.seen.is_empty());
    }
}
