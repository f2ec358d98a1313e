//! The `adbc` writer.

use std::sync::Arc;

use adbc_core::options::{IngestMode, OptionConnection, OptionStatement};
use adbc_core::{Connection, Optionable, Statement};
use adbc_driver_manager::ManagedConnection;
use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Schema};
use arrow::record_batch::RecordBatch;
use dativo_core::config::from_config;
use dativo_core::{Commit, CommitReport, CommittedState, Error, OpenWriter, Result, WriterContext};
use serde_json::Value;

use super::{adbc_err, connect, quote_ident, quote_literal, AdbcWriterConfig};

/// `schema.table` → (Some(schema), table); `table` → (None, table).
fn split_table(table: &str) -> (Option<String>, String) {
    match table.rsplit_once('.') {
        Some((s, t)) => (Some(s.to_string()), t.to_string()),
        None => (None, table.to_string()),
    }
}

/// Appends batches to a table through an ADBC driver, one transaction per commit; opened
/// ready by [`AdbcWriter::open`]. Dropping it rolls back what was not committed.
pub struct AdbcWriter {
    conn: ManagedConnection,
    config: AdbcWriterConfig,
    /// The job key in the state table.
    key: String,
    /// The existing table's schema, to cast batches to its column types.
    table_schema: Option<Arc<Schema>>,
    rows: u64,
}

impl AdbcWriter {
    /// Check a config without I/O.
    pub fn validate(config: &Value) -> Result<()> {
        from_config::<AdbcWriterConfig>(config).map(|_| ())
    }

    /// Connect with autocommit off, create the state table if missing, and look up the
    /// target table's schema (it is created from the first batch when missing).
    pub fn open(config: &Value, ctx: &WriterContext) -> Result<Self> {
        let c: AdbcWriterConfig = from_config(config)?;
        let mut conn = connect(&c.driver, c.uri.expose(), &c.options)?;
        conn.set_option(OptionConnection::AutoCommit, "false".into())
            .map_err(|e| adbc_err("this ADBC driver cannot turn autocommit off (transactions are needed for exactly-once)", e))?;
        let key = if ctx.shard.count > 1 {
            format!("{}#{}/{}", ctx.job, ctx.shard.index, ctx.shard.count)
        } else {
            ctx.job.clone()
        };
        let st = quote_ident(&c.state_table);
        let mut w = AdbcWriter {
            conn,
            config: c,
            key,
            table_schema: None,
            rows: 0,
        };
        w.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {st} (job TEXT PRIMARY KEY, state TEXT, run_id TEXT, committed_at TEXT)"
        ))?;
        w.conn.commit().map_err(|e| adbc_err("ADBC commit", e))?;
        w.table_schema = w.lookup_table();
        Ok(w)
    }

    fn exec(&mut self, sql: &str) -> Result<()> {
        let conn = &mut self.conn;
        let mut stmt = conn
            .new_statement()
            .map_err(|e| adbc_err("ADBC statement", e))?;
        stmt.set_sql_query(sql)
            .map_err(|e| adbc_err("ADBC statement", e))?;
        stmt.execute_update()
            .map_err(|e| adbc_err(&format!("ADBC `{sql:.80}`"), e))?;
        Ok(())
    }

    fn query(&mut self, sql: &str) -> Result<Vec<RecordBatch>> {
        let conn = &mut self.conn;
        let mut stmt = conn
            .new_statement()
            .map_err(|e| adbc_err("ADBC statement", e))?;
        stmt.set_sql_query(sql)
            .map_err(|e| adbc_err("ADBC query", e))?;
        let stream = stmt.execute().map_err(|e| adbc_err("ADBC query", e))?;
        let mut out = Vec::new();
        // Drain while `stmt` is alive; stop at the first error (drivers repeat it forever).
        for b in stream {
            out.push(b.map_err(|e| Error::data("ADBC query").with_source(e))?);
        }
        drop(stmt);
        Ok(out)
    }

    /// The quoted state table and the quoted key of this job's row in it.
    fn state_row(&self) -> (String, String) {
        (
            quote_ident(&self.config.state_table),
            quote_literal(&self.key),
        )
    }

    /// The target table's schema, or `None` if it does not exist yet. Only called with no
    /// uncommitted data: a failed lookup is rolled back (PostgreSQL refuses every later
    /// statement of a transaction that had an error).
    fn lookup_table(&mut self) -> Option<Arc<Schema>> {
        let (db_schema, name) = split_table(&self.config.table);
        let conn = &mut self.conn;
        match conn.get_table_schema(None, db_schema.as_deref(), &name) {
            Ok(s) => Some(Arc::new(s)),
            Err(_) => {
                let _ = conn.rollback();
                None
            }
        }
    }

    /// Cast numeric and timestamp columns to the existing table's types (drivers refuse e.g.
    /// int64 into an int4 column); other types go as they are.
    fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let Some(table) = &self.table_schema else {
            return Ok(batch.clone());
        };
        let mut fields = Vec::new();
        let mut cols = Vec::new();
        for (f, col) in batch.schema().fields().iter().zip(batch.columns()) {
            let Ok(target) = table.field_with_name(f.name()) else {
                return Err(Error::schema(format!(
                    "column `{}` is not in table `{}`: add it to the table or leave it out of the source",
                    f.name(),
                    self.config.table
                )));
            };
            let both = |p: fn(&DataType) -> bool| p(f.data_type()) && p(target.data_type());
            let castable = both(|t| t.is_integer() || t.is_floating())
                || both(|t| matches!(t, DataType::Timestamp(_, _)));
            if castable && f.data_type() != target.data_type() {
                let strict = arrow::compute::CastOptions {
                    safe: false,
                    ..Default::default()
                };
                let c = arrow::compute::cast_with_options(col, target.data_type(), &strict)
                    .map_err(|e| {
                        Error::schema(format!(
                            "column `{}` ({}) cannot be stored as the table's {}",
                            f.name(),
                            f.data_type(),
                            target.data_type()
                        ))
                        .with_source(e)
                    })?;
                fields.push(
                    f.as_ref()
                        .clone()
                        .with_data_type(target.data_type().clone()),
                );
                cols.push(c);
            } else {
                fields.push(f.as_ref().clone());
                cols.push(col.clone());
            }
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(|e| Error::internal("conformed batch").with_source(e))
    }
}

impl OpenWriter for AdbcWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = self.conform(batch)?;
        let table = self.config.table.clone();
        let created = self.table_schema.is_some();
        let conn = &mut self.conn;
        let mut stmt = conn
            .new_statement()
            .map_err(|e| adbc_err("ADBC statement", e))?;
        let (db_schema, name) = split_table(&table);
        stmt.set_option(OptionStatement::TargetTable, name.as_str().into())
            .map_err(|e| adbc_err("ADBC ingest", e))?;
        if let Some(s) = db_schema {
            stmt.set_option(OptionStatement::TargetDbSchema, s.as_str().into())
                .map_err(|e| adbc_err("ADBC ingest", e))?;
        }
        let mode = if created {
            IngestMode::Append
        } else {
            IngestMode::CreateAppend
        };
        stmt.set_option(OptionStatement::IngestMode, mode.into())
            .map_err(|e| adbc_err("ADBC ingest", e))?;
        let n = batch.num_rows() as u64;
        let batch_schema = batch.schema();
        stmt.bind(batch).map_err(|e| adbc_err("ADBC ingest", e))?;
        stmt.execute_update()
            .map_err(|e| adbc_err(&format!("ADBC ingest into `{table}`"), e))?;
        drop(stmt);
        self.rows += n;
        if !created {
            // Created from this batch's schema: later batches have the same one.
            self.table_schema = Some(batch_schema);
        }
        Ok(())
    }

    fn commit(&mut self, commit: &Commit) -> Result<CommitReport> {
        let (st, key) = self.state_row();
        let state = match &commit.state {
            Some(s) => quote_literal(&s.to_string()),
            None => "NULL".into(),
        };
        let now = quote_literal(&chrono::Utc::now().to_rfc3339());
        self.exec(&format!("DELETE FROM {st} WHERE job = {key}"))?;
        self.exec(&format!(
            "INSERT INTO {st} (job, state, run_id, committed_at) VALUES ({key}, {state}, {}, {now})",
            quote_literal(&commit.run_id)
        ))?;
        self.conn.commit().map_err(|e| adbc_err("ADBC commit", e))?;
        let rows = std::mem::take(&mut self.rows);
        Ok(CommitReport {
            files: vec![],
            rows,
            bytes: 0,
            commit_id: None,
        })
    }

    fn abort(&mut self) -> Result<()> {
        self.rows = 0;
        // Nothing open is fine: some drivers refuse a rollback without a transaction.
        let _ = self.conn.rollback();
        Ok(())
    }

    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        let (st, key) = self.state_row();
        let batches = self.query(&format!("SELECT state, run_id FROM {st} WHERE job = {key}"))?;
        let text = |col: &dyn Array, i: usize| -> Option<String> {
            if col.is_null(i) {
                return None;
            }
            match col.data_type() {
                DataType::Utf8 => Some(col.as_string::<i32>().value(i).to_string()),
                DataType::LargeUtf8 => Some(col.as_string::<i64>().value(i).to_string()),
                _ => None,
            }
        };
        for b in batches {
            if b.num_rows() > 0 {
                let state = text(b.column(0).as_ref(), 0)
                    .map(|s| serde_json::from_str::<Value>(&s))
                    .transpose()
                    .map_err(|e| Error::data("state table holds invalid JSON").with_source(e))?;
                let run_id = text(b.column(1).as_ref(), 0);
                return Ok(Some(CommittedState { state, run_id }));
            }
        }
        Ok(Some(CommittedState {
            state: None,
            run_id: None,
        }))
    }
}

impl Drop for AdbcWriter {
    fn drop(&mut self) {
        // Uncommitted rows are discarded; a driver that refuses a rollback without an open
        // transaction has nothing to discard.
        let _ = self.conn.rollback();
    }
}
