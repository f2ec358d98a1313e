//! What a run has delivered, and what it is about to: the incremental state, the plan with
//! its key ranges, and the SQL predicate of each range.

use serde::{Deserialize, Serialize};

use super::batch::PartMsg;
use super::config::ReadMode;

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
    pub mode: ReadMode,
    /// The ordering column; `None` for an unordered full refresh.
    pub column: Option<String>,
    /// Incremental: the highest cursor in the snapshot the run started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upper: Option<String>,
    /// The key ranges, one per partition (plus one for NULL keys in a full refresh). In a
    /// [`Plan::physical`] plan, `lo` and `hi` are block numbers (from `lo`, below `hi`).
    pub ranges: Vec<KeyRange>,
    /// An unordered full refresh split by physical location (PostgreSQL: `ctid` ranges of
    /// blocks), all ranges read on one snapshot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub physical: bool,
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
        if self.column.is_none() && self.delivered > 0 && self.physical {
            return Err(dativo_core::Error::data(format!(
                "the previous full refresh, split by physical location (the table has no primary key), was interrupted after committing {} rows; \
                 rows move between blocks when they are updated, so it cannot resume exactly: \
                 `dativo state reset` and clear the target (a target written in one commit — Iceberg's overwrite — never leaves this), \
                 or set `partition_column` to a column that orders the table",
                self.delivered
            )));
        }
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
    pub fn predicate(&self, lit: impl Fn(&str) -> String, col: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(v: &str) -> String {
        format!("'{v}'")
    }

    #[test]
    fn predicates() {
        let r = split_ranges(Some("1".into()), true, Some("100".into()), &["50".into()]);
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].predicate(lit, "\"id\""),
            "\"id\" >= '1' AND \"id\" <= '50'"
        );
        assert_eq!(
            r[1].predicate(lit, "\"id\""),
            "\"id\" > '50' AND \"id\" <= '100'"
        );
        let mut r2 = r[1].clone();
        r2.after = Some("70".into());
        assert_eq!(
            r2.predicate(lit, "\"id\""),
            "\"id\" > '70' AND \"id\" <= '100'"
        );
        let open = split_ranges(None, false, None, &[]);
        assert_eq!(open[0].predicate(lit, "c"), "c IS NOT NULL");
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
            mode: ReadMode::Incremental,
            column: Some("id".into()),
            upper: Some("9".into()),
            ranges: split_ranges(Some("0".into()), false, Some("9".into()), &[]),
            physical: false,
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

    /// The stored state's JSON is exactly what earlier versions wrote and read.
    #[test]
    fn state_json_is_unchanged() {
        let stored = serde_json::json!({
            "cursor": "2026-01-01 02:46:40+00",
            "seen": ["a", "b"],
            "plan": {
                "mode": "full_refresh",
                "column": "id",
                "ranges": [
                    {"lo": "1", "lo_inclusive": true, "hi": "50", "nulls": false, "after": "7", "finished": false},
                    {"lo_inclusive": false, "nulls": true, "finished": true}
                ],
                "delivered": 7
            },
            "last_full_refresh": "run-1"
        });
        let s: KeysetState = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(s.plan.as_ref().unwrap().mode, ReadMode::FullRefresh);
        assert_eq!(serde_json::to_value(&s).unwrap(), stored);
        assert!(
            serde_json::from_str::<Plan>(r#"{"mode":"sometimes","column":null,"ranges":[]}"#)
                .is_err()
        );
    }
}
