//! What a database must provide to be read by [`super::SqlSource`]: quoting, a few catalog
//! queries, its type mapping, and how a plan's SQL is executed into Arrow batches.

use std::sync::Arc;

use arrow::datatypes::Field;
use serde::de::DeserializeOwned;

use dativo_core::{Result, Shard};

use super::batch::ReadSpec;
use super::config::SqlConfig;
use super::keys::KeyType;

/// A column of the source, as the dialect reads it.
#[derive(Debug, Clone)]
pub struct Column<K> {
    /// The name.
    pub name: String,
    /// The database type's name, for messages.
    pub type_name: String,
    /// The select-list expression (the column itself, or a cast to text).
    pub select: String,
    /// How its values decode.
    pub kind: K,
    /// Its Arrow field.
    pub field: Field,
    /// How its values compute as keys.
    pub key: KeyType,
    /// The expression a read is ordered and resumed by; `None` if the column cannot order a
    /// resumable read (batches are cut where the key's bytes change, so SQL equality must mean
    /// byte equality).
    pub order: Option<String>,
}

/// A column whose type has no mapping (an `Err` of [`Dialect::describe`]): its type, and how
/// it is read as text with `cast_unsupported_to_text`.
#[derive(Debug, Clone)]
pub struct Unsupported<K> {
    /// The database type's name.
    pub type_name: String,
    /// The column read as text.
    pub as_text: Box<Column<K>>,
}

/// A column as [`Dialect::describe`] finds it.
pub type Described<K> = std::result::Result<Column<K>, Unsupported<K>>;

/// How a dialect names itself and writes SQL: [`Syntax::new`] (standard quoting: `"name"`,
/// `'it''s'`), then what differs.
#[derive(Debug, Clone, Copy)]
pub struct Syntax {
    name: &'static str,
    url_schemes: &'static [&'static str],
    url_example: &'static str,
    ident_quote: char,
    backslash_escapes: bool,
    utc_suffix: &'static str,
    orderable: &'static str,
    hash_shards_only: bool,
}

impl Syntax {
    /// The reader's `name` (for messages), the schemes its `url` may have and an example.
    pub const fn new(
        name: &'static str,
        url_schemes: &'static [&'static str],
        url_example: &'static str,
    ) -> Syntax {
        Syntax {
            name,
            url_schemes,
            url_example,
            ident_quote: '"',
            backslash_escapes: false,
            utc_suffix: "",
            orderable: "an integer, decimal, date, timestamp or text",
            hash_shards_only: false,
        }
    }

    /// Process shards (`--shard I/N`) always split by a hash of the primary key, even when
    /// `partition_column` has bounds. MySQL sharded that way before the readers shared a core:
    /// each shard keeps its own cursor, so changing how rows map to shards would skip or repeat
    /// rows of existing incremental jobs.
    pub const fn hash_shards_only(mut self) -> Syntax {
        self.hash_shards_only = true;
        self
    }

    /// Whether process shards split only by hash (see [`Syntax::hash_shards_only`]).
    pub fn shards_by_hash_only(&self) -> bool {
        self.hash_shards_only
    }

    /// Identifiers are quoted with `q` (`` ` `` for MySQL).
    pub const fn ident_quote(mut self, q: char) -> Syntax {
        self.ident_quote = q;
        self
    }

    /// Backslashes escape in string literals (MySQL), so literals double them.
    pub const fn backslash_escapes(mut self) -> Syntax {
        self.backslash_escapes = true;
        self
    }

    /// Zoned timestamp keys, written in UTC, end with `suffix` (`+00`; nothing for a session
    /// that runs in UTC).
    pub const fn utc_suffix(mut self, suffix: &'static str) -> Syntax {
        self.utc_suffix = suffix;
        self
    }

    /// The column types that can order a read, for messages (`an integer, … or uuid`).
    pub const fn orderable(mut self, types: &'static str) -> Syntax {
        self.orderable = types;
        self
    }

    /// The reader's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The schemes a `url` may have.
    pub fn url_schemes(&self) -> &'static [&'static str] {
        self.url_schemes
    }

    /// A `url`, for messages.
    pub fn url_example(&self) -> &'static str {
        self.url_example
    }

    /// What zoned timestamp keys end with.
    pub fn zone_suffix(&self) -> &'static str {
        self.utc_suffix
    }

    /// The column types that can order a read.
    pub fn orderable_types(&self) -> &'static str {
        self.orderable
    }

    /// A quoted identifier.
    pub fn ident(&self, name: &str) -> String {
        let q = self.ident_quote;
        let doubled: String = [q, q].iter().collect();
        format!("{q}{}{q}", name.replace(q, &doubled))
    }

    /// A table reference: `schema.table` → each part quoted; already-quoted names are kept.
    pub fn table_ref(&self, table: &str) -> String {
        if table.contains(['"', '`']) {
            table.to_string()
        } else {
            let parts: Vec<String> = table.split('.').map(|p| self.ident(p)).collect();
            parts.join(".")
        }
    }

    /// A quoted string literal.
    pub fn lit(&self, value: &str) -> String {
        let v = if self.backslash_escapes {
            value.replace('\\', "\\\\")
        } else {
            value.to_string()
        };
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// A SQL database dialect. Everything else — discovery, key choice, sharding, lookback,
/// planning, the state and the config checks — is [`super::SqlSource`]'s, once.
pub trait Dialect: Sized + Send + 'static {
    /// The dialect's own config keys (connection, type options), beside [`super::SqlOptions`].
    type Options: DeserializeOwned;
    /// How a column decodes.
    type Kind: Clone + Send + Sync + 'static;

    /// Its name and how it writes SQL.
    const SQL: Syntax;
    /// The kind of a text column (the `lookback` hash).
    const TEXT: Self::Kind;

    /// Checks of the dialect's own keys that need no I/O.
    fn check(options: &Self::Options) -> Result<()>;

    /// Connect and start one snapshot that the planner and the `partitions` readers share;
    /// the source's table may be locked briefly to start it.
    fn open(config: &SqlConfig<Self::Options>) -> Result<Self>;

    /// Run `sql` in the snapshot; each row's values as text (`None`: NULL).
    fn rows(&mut self, sql: &str, doing: &str) -> Result<Vec<Vec<Option<String>>>>;

    /// The columns `sql` returns (`what`: the source, for messages).
    fn describe(&mut self, sql: &str, what: &str) -> Result<Vec<Described<Self::Kind>>>;

    /// `expr` as text.
    fn as_text(expr: &str) -> String;

    /// A query returning a row when `column` of `table` is declared NOT NULL.
    fn not_null_sql(table: &str, column: &str) -> String;

    /// A query returning the names of the columns of `table` declared NOT NULL.
    fn not_null_columns_sql(table: &str) -> String;

    /// A query returning the primary key columns of `table`, in order.
    fn primary_key_sql(table: &str) -> String;

    /// A query listing the tables a `tables:` selection can pick from (the user's base
    /// tables; system schemas left out): schema, name, estimated rows, estimated bytes —
    /// each as text, the estimates NULL when unknown.
    fn tables_sql() -> String;

    /// A query listing the columns of those tables: schema, table, column, type name,
    /// `t` when NOT NULL, the column's position in the primary key (1-based) or NULL — each
    /// as text, ordered by schema, table and column position.
    fn columns_sql() -> String;

    /// The `lookback` identity of a row: a text hash of its primary key and cursor. Stored in
    /// states: it must never change.
    fn row_hash(pk: &[String], cursor: &str) -> String;

    /// A predicate selecting `shard`'s rows by a stable hash of `keys`: the key columns, each
    /// as text (`''` for NULL).
    fn hash_shard(keys: &[String], shard: Shard) -> String;

    /// A query returning (as text) the catalog's estimate of `table`'s rows from its last
    /// statistics, NULL when it has none; `None`: the dialect keeps no such estimate. A
    /// progress total only: it must not read the table.
    fn estimate_rows_sql(_table: &str) -> Option<String> {
        None
    }

    /// A query returning (as text) how many storage blocks `table` has — its largest
    /// partition's when it is partitioned — when the database can read a table in ranges of
    /// its physical storage, without an ordering key ([`Dialect::block_range`]); `None`: it
    /// cannot.
    fn blocks_sql(_table: &str) -> Option<String> {
        None
    }

    /// The predicate on the table itself selecting the rows stored in blocks `lo..hi`
    /// (`None`: unbounded), for a dialect with [`Dialect::blocks_sql`].
    fn block_range(_lo: Option<u64>, _hi: Option<u64>) -> String {
        "TRUE".into()
    }

    /// Start reading: each `(range, sql)` into batches, as `spec` says.
    fn read(&mut self, reads: Vec<(usize, String)>, spec: Arc<ReadSpec<Self::Kind>>) -> Result<()>;

    /// End the snapshot and report a failure to.
    fn close(&mut self) -> Result<()>;

    /// A quoted identifier.
    fn ident(name: &str) -> String {
        Self::SQL.ident(name)
    }

    /// A table reference: `schema.table` → each part quoted; already-quoted names are kept.
    fn table_ref(table: &str) -> String {
        Self::SQL.table_ref(table)
    }

    /// A quoted string literal.
    fn lit(value: &str) -> String {
        Self::SQL.lit(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        let ansi = Syntax::new("x", &[], "");
        assert_eq!(ansi.table_ref("public.orders"), "\"public\".\"orders\"");
        assert_eq!(ansi.ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(ansi.lit("it's"), "'it''s'");
        assert_eq!(ansi.lit(r"a\b"), r"'a\b'");
        let my = ansi.ident_quote('`').backslash_escapes();
        assert_eq!(my.lit(r"a\b'c"), r"'a\\b''c'");
        assert_eq!(my.ident("my`col"), "`my``col`");
        assert_eq!(my.table_ref("db.t"), "`db`.`t`");
        assert_eq!(my.table_ref("`db`.t"), "`db`.t");
    }
}
