//! The configuration keys every SQL reader shares ([`SqlOptions`]), and [`load`], which reads
//! them together with a dialect's own keys while refusing keys neither knows.

pub use dativo_core::config::{ConnectionOptions, SslMode};
use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use dativo_core::config::{from_config, ByteSize};
use dativo_core::{Error, Result};

use super::batch::{check_batch_bytes, DEFAULT_BATCH_BYTES};

/// Full refresh or incremental: the `mode` key, and the mode of a stored plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadMode {
    /// Only rows past the committed cursor.
    Incremental,
    /// Everything, every run.
    FullRefresh,
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReadMode::Incremental => "incremental",
            ReadMode::FullRefresh => "full_refresh",
        })
    }
}

/// `lookback`: how far below the committed cursor a run re-reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookback {
    /// For date and timestamp cursors (`10m`, `1h`).
    Duration(Duration),
    /// For numeric cursors: a non-negative decimal number, as written.
    Amount(String),
}

impl fmt::Display for Lookback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lookback::Duration(d) => write!(f, "{}", humantime::format_duration(*d)),
            Lookback::Amount(a) => f.write_str(a),
        }
    }
}

impl<'de> Deserialize<'de> for Lookback {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Lookback;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration (`10m`) for time cursors, or a number for numeric ones")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Lookback, E> {
                Ok(Lookback::Amount(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Lookback, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "lookback must not be negative (got {v})"
                    )));
                }
                Ok(Lookback::Amount(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Lookback, E> {
                if !v.is_finite() || v < 0.0 {
                    return Err(E::custom(format!(
                        "lookback must be a non-negative number (got {v})"
                    )));
                }
                // Rust prints floats without an exponent: an exact decimal string.
                Ok(Lookback::Amount(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Lookback, E> {
                humantime::parse_duration(v.trim())
                    .map(Lookback::Duration)
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid lookback `{v}`: {e}; use a duration (`10m`) for time cursors, a number for numeric ones"
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}

/// A key value in the config (`lower_bound`, `upper_bound`): a string or a number, kept as the
/// text the database parses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "KeyText")]
pub struct KeyValue(pub String);

#[derive(Deserialize)]
#[serde(untagged)]
enum KeyText {
    Text(String),
    Int(i64),
    UInt(u64),
    Float(f64),
}

impl From<KeyText> for KeyValue {
    fn from(v: KeyText) -> Self {
        KeyValue(match v {
            KeyText::Text(s) => s,
            KeyText::Int(i) => i.to_string(),
            KeyText::UInt(u) => u.to_string(),
            KeyText::Float(f) => f.to_string(),
        })
    }
}

/// The `source.config` keys shared by the SQL readers (beside each dialect's connection keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct SqlOptions {
    /// A table (`schema.table` or `table`) — or use `query`.
    pub table: Option<String>,
    /// Columns of `table` to read (default all).
    pub columns: Option<Vec<String>>,
    /// A filter on `table`, as SQL (`status <> 'draft'`).
    #[serde(rename = "where")]
    pub where_clause: Option<String>,
    /// A query to read instead of a table.
    pub query: Option<String>,

    /// Rows per batch (batches end between distinct values of the ordering column, so a batch
    /// may be longer when many rows share one value).
    pub batch_size: usize,
    /// Bytes per batch (default 4MiB, at most 1GiB), counted as the values' sizes on the
    /// wire: a batch ends at the first key change after `batch_size` rows or `batch_bytes`.
    pub batch_bytes: ByteSize,

    /// Incremental column: each run reads rows with a cursor above the committed state.
    pub cursor: Option<String>,
    /// Re-read this far below the committed cursor, to catch late-committing transactions;
    /// rows already delivered are skipped by `primary_key`. A duration for time cursors
    /// (`10m`), a number for numeric cursors.
    pub lookback: Option<Lookback>,
    /// Primary key columns (for `lookback` de-duplication; the ordering column of a full
    /// refresh when it is a single column). Found from the table when absent.
    pub primary_key: Option<Vec<String>>,
    /// `incremental` (the default when `cursor` is set) or `full_refresh`.
    pub mode: Option<ReadMode>,

    /// Parallel connections, reading one consistent snapshot.
    pub partitions: u32,
    /// Numeric, date or timestamp column to split the read on (default: the cursor, else the
    /// single-column primary key).
    pub partition_column: Option<String>,
    /// Lower bound of `partition_column` (default: its minimum in the snapshot).
    pub lower_bound: Option<KeyValue>,
    /// Upper bound of `partition_column` (default: its maximum in the snapshot).
    pub upper_bound: Option<KeyValue>,

    /// Read columns of types without a native mapping as text instead of failing.
    pub cast_unsupported_to_text: bool,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            table: None,
            columns: None,
            where_clause: None,
            query: None,
            batch_size: 16_384,
            batch_bytes: ByteSize(DEFAULT_BATCH_BYTES),
            cursor: None,
            lookback: None,
            primary_key: None,
            mode: None,
            partitions: 1,
            partition_column: None,
            lower_bound: None,
            upper_bound: None,
            cast_unsupported_to_text: false,
        }
    }
}

/// A SQL reader's whole `source.config`: the shared keys, the connection keys and the
/// dialect's own (`X`).
#[derive(Debug, Clone)]
pub struct SqlConfig<X> {
    /// The keys every SQL reader has.
    pub shared: SqlOptions,
    /// Where and how to connect.
    pub connection: ConnectionOptions,
    /// The dialect's own keys.
    pub own: X,
}

/// A config error on `key`.
pub fn config_error(key: &str, message: impl Into<String>) -> Error {
    Error::config(message).with_key_path(key)
}

impl SqlOptions {
    /// Checks that need no I/O.
    pub fn check(&self) -> Result<()> {
        let key = |k: &str, m: &str| Err(config_error(k, m));
        match (&self.table, &self.query) {
            (None, None) => return key("table", "set `table` or `query`"),
            (Some(_), Some(_)) => return key("query", "set either `table` or `query`, not both"),
            (None, Some(_)) if self.columns.is_some() => {
                return key(
                    "columns",
                    "`columns` applies to `table`; select them in `query`",
                )
            }
            (None, Some(_)) if self.where_clause.is_some() => {
                return key("where", "`where` applies to `table`; filter in `query`")
            }
            _ => {}
        }
        dativo_core::config::check_batch_size("batch_size", self.batch_size)?;
        check_batch_bytes(self.batch_bytes.0)?;
        if self.partitions == 0 || self.partitions > 64 {
            return key("partitions", "must be between 1 and 64");
        }
        if self.mode == Some(ReadMode::Incremental) && self.cursor.is_none() {
            return key("mode", "`mode: incremental` needs `cursor`");
        }
        if self.lookback.is_some() {
            if self.cursor.is_none() {
                return key("lookback", "`lookback` needs `cursor`");
            }
            if self.primary_key.is_none() && self.table.is_none() {
                return key(
                    "primary_key",
                    "`lookback` needs `primary_key` to skip rows already delivered",
                );
            }
        }
        for c in self.columns.iter().flatten() {
            if c.is_empty() {
                return key("columns", "column names must not be empty");
            }
        }
        Ok(())
    }

    /// The effective mode.
    pub fn mode(&self) -> ReadMode {
        self.mode.unwrap_or(if self.cursor.is_some() {
            ReadMode::Incremental
        } else {
            ReadMode::FullRefresh
        })
    }

    /// `table t` or `the query`, for messages.
    pub fn source_name(&self) -> String {
        self.table
            .as_deref()
            .map(|t| format!("table {t}"))
            .unwrap_or_else(|| "the query".into())
    }
}

/// Read a SQL reader's config: the shared keys, the connection keys and the dialect's own
/// (`X`, a struct of named fields). A key none of them knows is an error naming it and every
/// key allowed, as `deny_unknown_fields` would (which serde cannot apply across structs).
pub fn load<X: DeserializeOwned>(config: &Value) -> Result<SqlConfig<X>> {
    if let Value::Object(map) = config {
        let known = [
            field_names::<ConnectionOptions>(),
            field_names::<SqlOptions>(),
            field_names::<X>(),
        ];
        let is_known = |k: &str| known.iter().any(|names| names.contains(&k));
        if let Some(k) = map.keys().find(|k| !is_known(k)) {
            let allowed: Vec<String> = known
                .iter()
                .flat_map(|n| n.iter())
                .map(|f| format!("`{f}`"))
                .collect();
            return Err(config_error(
                k,
                format!(
                    "unknown field `{k}`, expected one of {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(SqlConfig {
        shared: from_config(config)?,
        connection: from_config(config)?,
        own: from_config(config)?,
    })
}

/// The field names (as written in configs) of a struct deriving `Deserialize`: derived code
/// hands them to `Deserializer::deserialize_struct`, where this deserializer records them.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Names(&'static [&'static str]);
    impl<'de> Deserializer<'de> for &mut Names {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(
            self,
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            self.0 = fields;
            Err(de::Error::custom("names recorded"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut names = Names(&[]);
    let _ = T::deserialize(&mut names);
    names.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    struct Own {
        #[serde(default)]
        flavour: Option<String>,
    }

    #[test]
    fn load_refuses_unknown_keys_naming_all_allowed() {
        assert_eq!(field_names::<Own>(), ["flavour"]);
        assert!(field_names::<SqlOptions>().contains(&"where"));
        let c =
            load::<Own>(&json!({"url": "x://", "table": "t", "where": "a > 1", "flavour": "f"}))
                .unwrap();
        assert_eq!(c.shared.where_clause.as_deref(), Some("a > 1"));
        assert_eq!(c.own.flavour.as_deref(), Some("f"));
        assert_eq!(
            c.connection
                .url
                .as_ref()
                .map(dativo_core::secrets::Secret::expose),
            Some("x://")
        );
        let e = load::<Own>(&json!({"url": "x", "tabel": "t"})).unwrap_err();
        assert_eq!(e.key_path(), Some("tabel"));
        assert!(
            e.message()
                .starts_with("unknown field `tabel`, expected one of `url`, `host`"),
            "{e}"
        );
        assert!(
            e.message().contains("`table`") && e.message().ends_with("`flavour`"),
            "{e}"
        );
        // Type errors keep their key path.
        let e = load::<Own>(&json!({"table": "t", "partitions": "x"})).unwrap_err();
        assert_eq!(e.key_path(), Some("partitions"));
        let e = load::<Own>(&json!({"table": "t", "port": "x"})).unwrap_err();
        assert_eq!(e.key_path(), Some("port"));
        // Connection checks.
        let conn = |v: Value| from_config::<ConnectionOptions>(&v).unwrap();
        let pg = ["postgres://", "postgresql://"];
        assert!(conn(json!({"url": "postgres://u@h/db"}))
            .check(&pg, "")
            .is_ok());
        assert!(conn(json!({"host": "h"})).check(&pg, "").is_ok());
        let e = conn(json!({"url": "mysql://u@h/db"}))
            .check(&pg, "")
            .unwrap_err();
        assert_eq!(e.key_path(), Some("url"));
        assert!(e.message().contains("postgres:// or postgresql://"), "{e}");
        assert_eq!(
            conn(json!({})).check(&pg, "").unwrap_err().key_path(),
            Some("url")
        );
    }

    #[test]
    fn lookback_and_mode_are_typed() {
        let o: SqlOptions =
            from_config(&json!({"table": "t", "cursor": "c", "lookback": "10m"})).unwrap();
        assert_eq!(
            o.lookback,
            Some(Lookback::Duration(Duration::from_secs(600)))
        );
        assert_eq!(o.mode(), ReadMode::Incremental);
        let o: SqlOptions =
            from_config(&json!({"table": "t", "cursor": "c", "lookback": 2.5})).unwrap();
        assert_eq!(o.lookback, Some(Lookback::Amount("2.5".into())));
        let e =
            from_config::<SqlOptions>(&json!({"table": "t", "lookback": "banana"})).unwrap_err();
        assert_eq!(e.key_path(), Some("lookback"));
        assert!(e.message().contains("invalid lookback `banana`"), "{e}");
        let e = from_config::<SqlOptions>(&json!({"table": "t", "lookback": -1})).unwrap_err();
        assert_eq!(e.key_path(), Some("lookback"));
        let e = from_config::<SqlOptions>(&json!({"table": "t", "mode": "sometimes"})).unwrap_err();
        assert_eq!(e.key_path(), Some("mode"));
        assert_eq!(ReadMode::FullRefresh.to_string(), "full_refresh");
        let o: SqlOptions = from_config(
            &json!({"table": "t", "lower_bound": 9007199254740993u64, "upper_bound": "2026-01-01"}),
        )
        .unwrap();
        assert_eq!(o.lower_bound, Some(KeyValue("9007199254740993".into())));
        assert_eq!(o.upper_bound, Some(KeyValue("2026-01-01".into())));
        let e = from_config::<SqlOptions>(&json!({"table": "t", "lower_bound": [1]})).unwrap_err();
        assert_eq!(e.key_path(), Some("lower_bound"));
    }

    #[test]
    fn checks_without_io() {
        let check = |v: Value| from_config::<SqlOptions>(&v).unwrap().check();
        assert!(check(json!({"table": "t"})).is_ok());
        let cases = [
            (json!({}), "table"),
            (json!({"table": "t", "query": "q"}), "query"),
            (json!({"query": "q", "columns": ["a"]}), "columns"),
            (json!({"query": "q", "where": "a"}), "where"),
            (json!({"table": "t", "partitions": 0}), "partitions"),
            (json!({"table": "t", "mode": "incremental"}), "mode"),
            (json!({"table": "t", "lookback": "1h"}), "lookback"),
            (
                json!({"query": "q", "cursor": "c", "lookback": "1h"}),
                "primary_key",
            ),
            (json!({"table": "t", "columns": [""]}), "columns"),
            (json!({"table": "t", "batch_bytes": 0}), "batch_bytes"),
            (json!({"table": "t", "batch_size": 0}), "batch_size"),
        ];
        for (v, key) in cases {
            let e = check(v.clone()).unwrap_err();
            assert_eq!(e.key_path(), Some(key), "{v}: {e}");
        }
    }
}
