//! What a run reads: the ordering column, the key ranges (one per partition), and the state
//! that lets an interrupted run resume exactly after its last committed batch.
//!
//! Batches end only between distinct values of the ordering column, so "every row with a key
//! up to K" is a precise description of what was delivered, and a range resumes with `key > K`.

use serde::{Deserialize, Serialize};

/// The reader's incremental state (what `get_incremental_state` returns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgState {
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

/// `"name"` with quotes doubled.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table reference: `schema.table` → `"schema"."table"`; already-quoted names are kept.
pub fn table_ref(table: &str) -> String {
    if table.contains('"') {
        table.to_string()
    } else {
        table.split('.').map(ident).collect::<Vec<_>>().join(".")
    }
}

/// `'text'` with quotes doubled.
pub fn lit(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl KeyRange {
    /// The SQL predicate selecting what is left of this range, on `col` (quoted).
    pub fn predicate(&self, col: &str) -> String {
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

    #[test]
    fn predicates() {
        let r = split_ranges(Some("1".into()), true, Some("100".into()), &["50".into()]);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].predicate("\"id\""), "\"id\" >= '1' AND \"id\" <= '50'");
        assert_eq!(
            r[1].predicate("\"id\""),
            "\"id\" > '50' AND \"id\" <= '100'"
        );
        let mut r2 = r[1].clone();
        r2.after = Some("70".into());
        assert_eq!(r2.predicate("\"id\""), "\"id\" > '70' AND \"id\" <= '100'");
        let open = split_ranges(None, false, None, &[]);
        assert_eq!(open[0].predicate("c"), "c IS NOT NULL");
        assert_eq!(table_ref("public.orders"), "\"public\".\"orders\"");
        assert_eq!(lit("it's"), "'it''s'");
    }
}
