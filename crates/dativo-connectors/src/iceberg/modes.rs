//! Which mode a run writes in, and which source rows are deletions (`mode: merge`).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use arrow::compute::kernels::{boolean, cmp};
use arrow::datatypes::{DataType, Schema as ArrowSchema};

use dativo_core::{Delivery, Error, Result, WriterContext};

use super::config::{IcebergWriterConfig, WriteMode};

/// The column by which a reader marks a row as a deletion (`D` or `delete`), a truncation
/// of the whole table ([`TRUNCATE_OP`]) or an upsert (anything else, NULL included). It is never written to the table. The change data
/// capture readers use it.
pub const OP_COLUMN: &str = "_dativo_op";
/// The `_dativo_op` of a row that truncates the table: its other columns are NULL.
pub const TRUNCATE_OP: &str = "T";

/// The mode this run writes in: the configured one or, unset, `overwrite` for a reader that
/// delivers the whole source (a full refresh) and `append` otherwise.
pub fn resolve(cfg: &IcebergWriterConfig, ctx: &WriterContext) -> Result<WriteMode> {
    let sharded = ctx.shard.count > 1;
    let full = ctx.source.delivery == Delivery::Full;
    match cfg.mode {
        Some(WriteMode::Overwrite) if sharded => Err(Error::config(format!(
            "job `{}` is split into {} shards: each shard would replace the rows the others \
             wrote; `mode: overwrite` needs one process (remove `shards`), or use `mode: merge`",
            ctx.job, ctx.shard.count
        ))
        .with_key_path("mode")),
        Some(WriteMode::Append) if full => {
            tracing::warn!(
                table = %cfg.table,
                "the reader delivers the whole source in every run and `mode: append` adds it \
                 again each time: the table will hold one copy per run"
            );
            Ok(WriteMode::Append)
        }
        Some(m) => Ok(m),
        None if full && sharded => Err(Error::config(format!(
            "job `{}` reads the whole source in every run (a full refresh) into {} shards: \
             appending would add a copy per run and an overwrite per shard would replace the \
             others' rows; set `mode: merge` (with a key), or `mode: append` to keep a copy \
             per run on purpose",
            ctx.job, ctx.shard.count
        ))
        .with_key_path("mode")),
        None if full => {
            tracing::info!(
                table = %cfg.table,
                "full refresh: the run replaces the table's rows in one commit (`mode: overwrite`)"
            );
            Ok(WriteMode::Overwrite)
        }
        None => Ok(WriteMode::Append),
    }
}

/// The merge key of a run: `primary_key` from the config, else the source's.
pub fn merge_key(cfg: &IcebergWriterConfig, ctx: &WriterContext) -> Result<Vec<String>> {
    let key = match &cfg.primary_key {
        Some(k) => k.clone(),
        None => ctx.source.primary_key.clone(),
    };
    if key.is_empty() {
        return Err(Error::config(format!(
            "`mode: merge` into {} needs a key to match rows by, and the source reports no \
             primary key: set `primary_key: [column, …]` in the target config",
            cfg.table
        ))
        .with_key_path("primary_key"));
    }
    for k in &key {
        let Ok(field) = ctx.schema.field_with_name(k) else {
            return Err(Error::config(format!(
                "merge key column `{k}` is not among the source's columns ({})",
                ctx.schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .with_key_path("primary_key"));
        };
        if matches!(
            field.data_type(),
            DataType::Float16 | DataType::Float32 | DataType::Float64
        ) || field.data_type().is_nested()
        {
            return Err(Error::config(format!(
                "merge key column `{k}` is {}: a key must be an integer, decimal, string, \
                 binary, uuid, date or timestamp column",
                field.data_type()
            ))
            .with_key_path("primary_key"));
        }
    }
    if let Ok(op) = ctx.schema.field_with_name(OP_COLUMN) {
        if !matches!(
            op.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(Error::schema(format!(
                "column `{OP_COLUMN}` (the row's operation) must be a string, not {}",
                op.data_type()
            )));
        }
    }
    Ok(key)
}

/// `delete_when:` parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteWhen {
    /// A boolean column: true deletes.
    Column(String),
    /// `column IS NOT NULL`.
    NotNull(String),
    /// `column = literal` (`negate`: `!=` / `<>`); the literal as written (quotes removed).
    Compare {
        /// The column.
        column: String,
        /// The literal's text.
        literal: String,
        /// `!=`.
        negate: bool,
    },
}

impl DeleteWhen {
    /// Parse `col`, `col IS NOT NULL`, `col = 'x'`, `col != 3`.
    pub fn parse(s: &str) -> std::result::Result<DeleteWhen, String> {
        let s = s.trim();
        let ident = |c: &str| -> std::result::Result<String, String> {
            let c = c.trim().trim_matches('"');
            if c.is_empty() || c.chars().any(char::is_whitespace) {
                return Err(format!(
                    "`{s}`: write a boolean column, `column IS NOT NULL`, or `column = 'value'`"
                ));
            }
            Ok(c.to_string())
        };
        let upper = s.to_ascii_uppercase();
        if let Some(col) = upper.strip_suffix(" IS NOT NULL") {
            return Ok(DeleteWhen::NotNull(ident(&s[..col.len()])?));
        }
        for (op, negate) in [("!=", true), ("<>", true), ("=", false)] {
            if let Some((c, lit)) = s.split_once(op) {
                let lit = lit.trim();
                let literal = match lit.strip_prefix('\'').and_then(|l| l.strip_suffix('\'')) {
                    Some(q) => q.replace("''", "'"),
                    None if !lit.is_empty() && !lit.contains(char::is_whitespace) => {
                        lit.to_string()
                    }
                    None => return Err(format!("`{s}`: quote the value: column = 'value'")),
                };
                return Ok(DeleteWhen::Compare {
                    column: ident(c)?,
                    literal,
                    negate,
                });
            }
        }
        Ok(DeleteWhen::Column(ident(s)?))
    }

    /// The column the condition reads.
    pub fn column(&self) -> &str {
        match self {
            DeleteWhen::Column(c) | DeleteWhen::NotNull(c) => c,
            DeleteWhen::Compare { column, .. } => column,
        }
    }

    /// Check the condition against the source's schema.
    pub fn check(&self, schema: &ArrowSchema) -> Result<()> {
        let field = schema.field_with_name(self.column()).map_err(|_| {
            Error::config(format!(
                "delete_when: column `{}` is not among the source's columns",
                self.column()
            ))
            .with_key_path("delete_when")
        })?;
        match self {
            DeleteWhen::Column(c) if field.data_type() != &DataType::Boolean => {
                Err(Error::config(format!(
                    "delete_when: `{c}` is {}, not a boolean: write `{c} IS NOT NULL` or \
                     `{c} = 'value'`",
                    field.data_type()
                ))
                .with_key_path("delete_when"))
            }
            DeleteWhen::Compare { literal, .. } => {
                literal_array(literal, field.data_type()).map(drop)
            }
            _ => Ok(()),
        }
    }

    /// Which rows of `batch` are deletions (a NULL condition is not one).
    pub fn mask(&self, batch: &RecordBatch) -> Result<BooleanArray> {
        let col = batch.column_by_name(self.column()).ok_or_else(|| {
            Error::schema(format!(
                "delete_when: column `{}` is missing",
                self.column()
            ))
        })?;
        let m = match self {
            DeleteWhen::Column(_) => col
                .as_any()
                .downcast_ref::<BooleanArray>()
                .cloned()
                .ok_or_else(|| Error::schema("delete_when: not a boolean column"))?,
            DeleteWhen::NotNull(_) => arrow::compute::is_not_null(col.as_ref())?,
            DeleteWhen::Compare {
                literal, negate, ..
            } => {
                let lit = literal_array(literal, col.data_type())?;
                let scalar = arrow::array::Scalar::new(lit);
                if *negate {
                    cmp::neq(col, &scalar)?
                } else {
                    cmp::eq(col, &scalar)?
                }
            }
        };
        Ok(no_nulls(m))
    }
}

/// NULL → false.
fn no_nulls(m: BooleanArray) -> BooleanArray {
    if m.null_count() == 0 {
        m
    } else {
        arrow::compute::prep_null_mask_filter(&m)
    }
}

/// `literal` as a one-element array of `dt`.
fn literal_array(literal: &str, dt: &DataType) -> Result<ArrayRef> {
    let text: ArrayRef = Arc::new(StringArray::from(vec![literal]));
    let cast = arrow::compute::cast(&text, dt).map_err(|e| {
        Error::config(format!(
            "delete_when: `{literal}` is not a {dt} value for the column: {e}"
        ))
        .with_key_path("delete_when")
    })?;
    if cast.is_null(0) {
        return Err(Error::config(format!(
            "delete_when: `{literal}` is not a {dt} value for the column"
        ))
        .with_key_path("delete_when"));
    }
    Ok(cast)
}

/// Which rows of `batch` are deletions by the `_dativo_op` column (`D`, `d`, `delete`,
/// `DELETE`); `None` when the batch has no such column.
pub fn op_mask(batch: &RecordBatch) -> Result<Option<BooleanArray>> {
    let Some(col) = batch.column_by_name(OP_COLUMN) else {
        return Ok(None);
    };
    let col = arrow::compute::cast(col, &DataType::Utf8)?;
    let mut mask: Option<BooleanArray> = None;
    for marker in ["D", "d", "delete", "DELETE"] {
        let lit = arrow::array::Scalar::new(StringArray::from(vec![marker]));
        let m = cmp::eq(&col, &lit)?;
        mask = Some(match mask {
            None => m,
            Some(prev) => boolean::or(&prev, &m)?,
        });
    }
    Ok(mask.map(no_nulls))
}

/// The rows of `batch` that truncate the table (`_dativo_op` = `T`: every row before them
/// is gone), in order; empty when there are none (or no such column).
pub fn truncate_rows(batch: &RecordBatch) -> Result<Vec<usize>> {
    let Some(col) = batch.column_by_name(OP_COLUMN) else {
        return Ok(Vec::new());
    };
    let col = arrow::compute::cast(col, &DataType::Utf8)?;
    let lit = arrow::array::Scalar::new(StringArray::from(vec![TRUNCATE_OP]));
    let m = no_nulls(cmp::eq(&col, &lit)?);
    if m.true_count() == 0 {
        return Ok(Vec::new());
    }
    Ok((0..m.len()).filter(|&i| m.value(i)).collect())
}

/// How a run described by `ctx` would write into the table of `config`, in words, decided as
/// the writer decides it (`dativo run --dry-run`); the error the writer would give otherwise.
pub fn planned_write(config: &serde_json::Value, ctx: &WriterContext) -> Result<String> {
    let cfg: IcebergWriterConfig = dativo_core::config::from_config(config)?;
    Ok(match resolve(&cfg, ctx)? {
        WriteMode::Append if ctx.source.delivery == Delivery::Full => {
            "append — of a full refresh: the table gets one more copy of the source per run"
                .to_string()
        }
        WriteMode::Append => "append the rows read".to_string(),
        WriteMode::Overwrite => {
            "overwrite: the run's rows replace the table's, in one commit at the end".to_string()
        }
        WriteMode::Merge => format!(
            "merge on ({}): a row whose key exists replaces it",
            merge_key(&cfg, ctx)?.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use arrow::datatypes::Field;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            DeleteWhen::parse("is_deleted").unwrap(),
            DeleteWhen::Column("is_deleted".into())
        );
        assert_eq!(
            DeleteWhen::parse("deleted_at is not null").unwrap(),
            DeleteWhen::NotNull("deleted_at".into())
        );
        assert_eq!(
            DeleteWhen::parse("status = 'it''s gone'").unwrap(),
            DeleteWhen::Compare {
                column: "status".into(),
                literal: "it's gone".into(),
                negate: false
            }
        );
        assert_eq!(
            DeleteWhen::parse("flag != 0").unwrap(),
            DeleteWhen::Compare {
                column: "flag".into(),
                literal: "0".into(),
                negate: true
            }
        );
        assert!(DeleteWhen::parse("a b").is_err());
        assert!(DeleteWhen::parse("status = deleted row").is_err());
    }

    #[test]
    fn masks_rows_and_never_deletes_on_null() {
        let schema = Arc::new(ArrowSchema::new(vec![
            Field::new("status", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new(OP_COLUMN, DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec![Some("deleted"), None, Some("live")])),
                Arc::new(Int64Array::from(vec![Some(1), Some(0), None])),
                Arc::new(StringArray::from(vec![Some("U"), Some("D"), None])),
            ],
        )
        .unwrap();
        let w = DeleteWhen::parse("status = 'deleted'").unwrap();
        w.check(&schema).unwrap();
        assert_eq!(
            w.mask(&batch).unwrap(),
            BooleanArray::from(vec![true, false, false])
        );
        let w = DeleteWhen::parse("status != 'deleted'").unwrap();
        assert_eq!(
            w.mask(&batch).unwrap(),
            BooleanArray::from(vec![false, false, true])
        );
        let w = DeleteWhen::parse("n = 1").unwrap();
        assert_eq!(
            w.mask(&batch).unwrap(),
            BooleanArray::from(vec![true, false, false])
        );
        assert!(DeleteWhen::parse("n = 'x'")
            .unwrap()
            .check(&schema)
            .is_err());
        assert!(DeleteWhen::parse("status").unwrap().check(&schema).is_err());
        assert!(DeleteWhen::parse("nope IS NOT NULL")
            .unwrap()
            .check(&schema)
            .is_err());
        let w = DeleteWhen::parse("n IS NOT NULL").unwrap();
        assert_eq!(
            w.mask(&batch).unwrap(),
            BooleanArray::from(vec![true, true, false])
        );
        assert_eq!(
            op_mask(&batch).unwrap().unwrap(),
            BooleanArray::from(vec![false, true, false])
        );
    }
}
