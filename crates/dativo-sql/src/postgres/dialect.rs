//! PostgreSQL as a [`Dialect`]: one exported snapshot, catalog queries on `pg_catalog`, and
//! partition readers that import the snapshot and stream `COPY … (FORMAT binary)` into Arrow.

use std::sync::Arc;

use futures_util::StreamExt;
use tokio_postgres::Client;

use dativo_core::{Error, Result, Shard};
use dativo_pg::{connect, map_error, runtime, ConnectionOptions};

use super::config::{NumericConfig, PgOptions, SpecialValues};
use super::copy::CopyParser;
use super::types::{field_for, kind_for, ColKind, Decoder};
use crate::keyset::{
    Column, Described, Dialect, Emitter, KeyType, ReadSpec, SqlConfig, Syntax, Unsupported,
};

/// The PostgreSQL dialect: the planning connection, holding the run's snapshot open.
pub struct Postgres {
    connection: ConnectionOptions,
    numeric: NumericConfig,
    special_null: bool,
    client: Client,
    /// The exported snapshot every partition reader imports.
    snapshot: String,
}

/// Ordinary and partitioned tables (not the partitions) outside the system schemas that the
/// user may read.
const PG_USER_TABLES: &str = "c.relkind IN ('r', 'p') AND NOT c.relispartition \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
     AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
     AND has_table_privilege(c.oid, 'SELECT')";

impl Dialect for Postgres {
    type Options = PgOptions;
    type Kind = ColKind;

    const SQL: Syntax = Syntax::new(
        "postgres",
        &["postgres://", "postgresql://"],
        "postgres://user@host:5432/db",
    )
    .utc_suffix("+00")
    .orderable("an integer, numeric(p,s), date, timestamp, text or uuid");
    const TEXT: ColKind = ColKind::Text;

    fn check(options: &PgOptions) -> Result<()> {
        options.check()
    }

    fn open(config: &SqlConfig<PgOptions>) -> Result<Self> {
        let connection = config.connection.clone();
        let client = runtime().block_on(connect(&connection))?;
        let snapshot: String = match &config.own.snapshot {
            Some(s) => {
                let begin = format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {};",
                    Postgres::lit(s)
                );
                runtime()
                    .block_on(client.batch_execute(&begin))
                    .map_err(|e| map_error(e, "importing the exported snapshot"))?;
                s.clone()
            }
            None => {
                runtime()
                    .block_on(
                        client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
                    )
                    .map_err(|e| map_error(e, "starting the snapshot transaction"))?;
                let row = runtime()
                    .block_on(client.query_one("SELECT pg_export_snapshot()", &[]))
                    .map_err(|e| map_error(e, "exporting the snapshot"))?;
                row.try_get(0)
                    .map_err(|e| map_error(e, "exporting the snapshot"))?
            }
        };
        Ok(Postgres {
            connection,
            numeric: config.own.numeric.clone(),
            special_null: config.own.special_values == SpecialValues::Null,
            client,
            snapshot,
        })
    }

    fn rows(&mut self, sql: &str, doing: &str) -> Result<Vec<Vec<Option<String>>>> {
        let rows = runtime()
            .block_on(self.client.query(sql, &[]))
            .map_err(|e| map_error(e, doing))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get::<_, Option<String>>(i))
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(|e| Error::internal(format!("{doing}: {e}")).with_source(e))
            })
            .collect()
    }

    fn describe(&mut self, sql: &str, what: &str) -> Result<Vec<Described<ColKind>>> {
        let stmt = runtime()
            .block_on(self.client.prepare(sql))
            .map_err(|e| map_error(e, &format!("reading the columns of {what}")))?;
        // Privileges are checked when a statement runs, not when it is prepared.
        runtime()
            .block_on(self.client.query(&stmt, &[]))
            .map_err(|e| map_error(e, &format!("reading {what}")))?;
        let numeric = &self.numeric;
        Ok(stmt
            .columns()
            .iter()
            .map(|c| {
                let (name, ty) = (c.name(), c.type_());
                kind_for(ty, c.type_modifier(), numeric)
                    .map(|kind| column(name, ty.name(), kind))
                    .map_err(|type_name| Unsupported {
                        type_name,
                        as_text: Box::new(Column {
                            select: format!("{0}::text AS {0}", Self::ident(name)),
                            ..column(name, "text", ColKind::Text)
                        }),
                    })
            })
            .collect())
    }

    fn as_text(expr: &str) -> String {
        format!("({expr})::text")
    }

    fn not_null_sql(table: &str, column: &str) -> String {
        format!(
            "SELECT 'yes' FROM pg_attribute WHERE attrelid = {}::regclass AND attname = {} \
             AND NOT attisdropped AND attnotnull",
            Self::lit(&Self::table_ref(table)),
            Self::lit(column)
        )
    }

    fn not_null_columns_sql(table: &str) -> String {
        format!(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = {}::regclass AND attnum > 0 \
             AND NOT attisdropped AND attnotnull ORDER BY attnum",
            Self::lit(&Self::table_ref(table))
        )
    }

    // From the catalog only (statistics of the last ANALYZE/VACUUM): size functions would
    // wait for a table another session has locked.
    fn tables_sql() -> String {
        format!(
            "SELECT n.nspname::text, c.relname::text, \
             CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint::text END, \
             ((c.relpages::bigint + coalesce(t.relpages, 0)) \
               * current_setting('block_size')::bigint)::text \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             LEFT JOIN pg_class t ON t.oid = c.reltoastrelid \
             WHERE {PG_USER_TABLES} ORDER BY 1, 2"
        )
    }

    fn columns_sql() -> String {
        format!(
            "SELECT n.nspname::text, c.relname::text, a.attname::text, \
             format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN 't' ELSE 'f' END, \
             (SELECT array_position(i.indkey::int2[], a.attnum)::text FROM pg_index i \
              WHERE i.indrelid = c.oid AND i.indisprimary) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE a.attnum > 0 AND NOT a.attisdropped AND {PG_USER_TABLES} \
             ORDER BY n.nspname, c.relname, a.attnum"
        )
    }

    // As the planner estimates a scan: the row density of the last ANALYZE/VACUUM
    // (reltuples / relpages) times the table's pages now, summed over the table and its
    // partitions or inheritance children (a SELECT reads those too). NULL when no part was
    // analyzed while it held rows. pg_inherits, not pg_partition_tree: any server version.
    fn estimate_rows_sql(table: &str) -> Option<String> {
        Some(format!(
            "WITH RECURSIVE tree(oid) AS (SELECT {}::regclass::oid \
               UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.oid) \
             SELECT CASE WHEN count(*) FILTER (WHERE c.relpages > 0 AND c.reltuples > 0) = 0 THEN NULL \
               ELSE sum(CASE WHEN c.relpages > 0 AND c.reltuples > 0 \
                 THEN c.reltuples / c.relpages \
                   * (pg_relation_size(c.oid) / current_setting('block_size')::bigint) \
                 ELSE 0 END)::bigint::text END \
             FROM tree t JOIN pg_class c ON c.oid = t.oid WHERE c.relkind <> 'p'",
            Self::lit(&Self::table_ref(table))
        ))
    }

    // PostgreSQL 14+ reads `ctid` ranges with a TID range scan (older servers scan the
    // table once per range). A partitioned table's ranges apply to each partition.
    fn blocks_sql(table: &str) -> Option<String> {
        Some(format!(
            "SELECT (greatest(pg_relation_size(r), (SELECT coalesce(max(pg_relation_size(relid)), 0) \
             FROM pg_partition_tree(r) WHERE isleaf)) / current_setting('block_size')::bigint)::text \
             FROM (SELECT {}::regclass AS r) AS t",
            Self::lit(&Self::table_ref(table))
        ))
    }

    fn block_range(lo: Option<u64>, hi: Option<u64>) -> String {
        match (lo, hi) {
            (None, None) => "TRUE".into(),
            (Some(l), None) => format!("ctid >= '({l},0)'::tid"),
            (None, Some(h)) => format!("ctid < '({h},0)'::tid"),
            (Some(l), Some(h)) => format!("ctid >= '({l},0)'::tid AND ctid < '({h},0)'::tid"),
        }
    }

    fn primary_key_sql(table: &str) -> String {
        format!(
            "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = {}::regclass AND i.indisprimary ORDER BY array_position(i.indkey, a.attnum)",
            Self::lit(&Self::table_ref(table))
        )
    }

    fn row_hash(pk: &[String], cursor: &str) -> String {
        let keys: Vec<String> = pk.iter().map(|k| Self::ident(k)).collect();
        format!(
            "md5(ROW({})::text || '|' || {}::text)",
            keys.join(", "),
            Self::ident(cursor)
        )
    }

    fn hash_shard(keys: &[String], shard: Shard) -> String {
        let (n, i) = (shard.count, shard.index);
        let text = keys.join(" || '|' || ");
        format!("((hashtextextended({text}, 0) % {n}) + {n}) % {n} = {i}")
    }

    fn read(&mut self, reads: Vec<(usize, String)>, spec: Arc<ReadSpec<ColKind>>) -> Result<()> {
        for (range, sql) in reads {
            let task = PartitionTask {
                connection: self.connection.clone(),
                snapshot: self.snapshot.clone(),
                sql,
                special_null: self.special_null,
                range,
            };
            let name = format!("dativo-pg-{range}");
            // The partition's own single-threaded runtime: its connection task (socket reads,
            // TLS, message framing) runs on this thread between the rows it decodes, so no
            // chunk of the COPY stream crosses threads (each crossing is a wakeup).
            spec.spawn(name, move |spec| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| Error::internal(format!("starting a partition's runtime: {e}")))?;
                rt.block_on(task.run(spec))
            })?;
        }
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        runtime()
            .block_on(self.client.batch_execute("COMMIT"))
            .map_err(|e| map_error(e, "ending the snapshot transaction"))
    }
}

/// A column of kind `kind`: how it computes and orders as a key. Batches are cut where the
/// key's bytes change, so SQL equality must mean byte equality: citext is compared as text,
/// and types where equal values can differ in bytes (floats, unconstrained numerics read as
/// text) or that have no faithful literal (bytea) cannot order a read.
fn column(name: &str, type_name: &str, kind: ColKind) -> Column<ColKind> {
    let quoted = Postgres::ident(name);
    let key = match &kind {
        ColKind::I16 | ColKind::I32 | ColKind::I64 | ColKind::Oid => KeyType::Int,
        ColKind::Decimal(_, s) => KeyType::Decimal(*s as u8),
        ColKind::F32 | ColKind::F64 => KeyType::Float,
        ColKind::Date => KeyType::Date,
        ColKind::Timestamp => KeyType::Timestamp { zoned: false },
        ColKind::TimestampTz => KeyType::Timestamp { zoned: true },
        _ => KeyType::Other,
    };
    let order = match &kind {
        ColKind::F32 | ColKind::F64 | ColKind::Bytea | ColKind::NumericText => None,
        _ if type_name == "citext" => Some(format!("{quoted}::text")),
        _ => Some(quoted.clone()),
    };
    Column {
        field: field_for(name, &kind),
        select: quoted,
        name: name.to_string(),
        type_name: type_name.to_string(),
        kind,
        key,
        order,
    }
}

/// One range, read over its own connection in the exported snapshot.
struct PartitionTask {
    connection: ConnectionOptions,
    snapshot: String,
    sql: String,
    special_null: bool,
    range: usize,
}

impl PartitionTask {
    async fn run(&self, spec: &ReadSpec<ColKind>) -> Result<()> {
        let client = connect(&self.connection).await?;
        let begin = format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {};",
            Postgres::lit(&self.snapshot)
        );
        client
            .batch_execute(&begin)
            .await
            .map_err(|e| map_error(e, "starting the snapshot transaction"))?;
        let copy = format!("COPY ({}) TO STDOUT (FORMAT binary)", self.sql);
        let stream = client
            .copy_out(copy.as_str())
            .await
            .map_err(|e| map_error(e, "starting COPY"))?;
        futures_util::pin_mut!(stream);
        let ncols = spec.kinds.len();
        let mut decoders: Vec<Decoder> = spec
            .kinds
            .iter()
            .map(|k| Decoder::new(k, spec.bound.rows, self.special_null))
            .collect();
        let mut em = Emitter::new(spec, self.range);
        let mut parser = CopyParser::default();
        let mut fields = Vec::with_capacity(ncols);
        // The key of the previous row: its bytes, or NULL.
        let mut last_key: Vec<u8> = Vec::new();
        let mut last_null = false;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| map_error(e, "reading COPY data"))?;
            parser.push(&chunk);
            while parser
                .next_row(&mut fields)
                .map_err(|m| Error::data(format!("COPY stream: {m}")))?
            {
                if fields.len() != ncols {
                    return Err(Error::data(format!(
                        "COPY row has {} fields, expected {ncols}",
                        fields.len()
                    )));
                }
                let key = spec.key.map(|k| fields[k]);
                em.cut(&mut decoders, || match key {
                    Some(None) => !last_null,
                    Some(Some(r)) => last_null || parser.field(r) != last_key.as_slice(),
                    None => true,
                })?;
                match key {
                    Some(None) => last_null = true,
                    Some(Some(r)) => {
                        last_null = false;
                        last_key.clear();
                        last_key.extend_from_slice(parser.field(r));
                    }
                    None => {}
                }
                let mut bytes = 0;
                for (i, f) in fields.iter().enumerate() {
                    decoders[i]
                        .append(f.map(|r| parser.field(r)))
                        .map_err(|m| em.value_error(i, &m))?;
                    // The value's bytes plus a length word, as on the wire.
                    bytes += 4 + f.map_or(0, |(a, b)| b - a);
                }
                em.row(bytes);
            }
            if em.stopped() {
                return Ok(());
            }
        }
        if !parser.finished {
            return Err(Error::transient("the COPY stream ended early"));
        }
        em.end(&mut decoders)?;
        let _ = client.batch_execute("COMMIT").await;
        Ok(())
    }
}
