//! Keyset reading plans shared by the SQL readers (`postgres`, `mysql`): the ordering column,
//! the key ranges (one per partition), and the state that lets an interrupted run resume
//! exactly after its last committed batch.
//!
//! Batches end only between distinct values of the ordering column, so "every row with a key
//! up to K" is a precise description of what was delivered, and a range resumes with `key > K`.

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
            } => {
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
}
