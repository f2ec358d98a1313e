//! Column types written by people in job files (`schema: [{name: id, type: int64}]`).
//!
//! Accepted type names: `bool`/`boolean`, `int8`…`int64`, `uint8`…`uint64`, `float32`/`float`,
//! `float64`/`double`, `string`/`utf8`/`text`, `large_string`, `binary`/`bytes`, `date`/`date32`,
//! `time`, `timestamp` (µs, no zone), `timestamptz` (µs, UTC), `timestamp(ms|us|ns[, ZONE])`,
//! `decimal(P,S)`, `json` (a string marked as JSON), and any name arrow's parser accepts
//! (`Timestamp(Millisecond, None)`).

use std::str::FromStr;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One column of an explicit schema.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Type name (see the module docs).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether nulls are allowed (default true).
    #[serde(default = "yes")]
    pub nullable: bool,
}

fn yes() -> bool {
    true
}

/// Field metadata key marking a string column as JSON text.
pub const JSON_EXTENSION: &str = "arrow.json";

/// Parse a type name.
pub fn parse_type(name: &str) -> Result<(DataType, bool)> {
    let t = name.trim();
    let lower = t.to_ascii_lowercase();
    let dt = match lower.as_str() {
        "bool" | "boolean" => DataType::Boolean,
        "int8" | "tinyint" => DataType::Int8,
        "int16" | "smallint" => DataType::Int16,
        "int32" | "int" | "integer" => DataType::Int32,
        "int64" | "bigint" | "long" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" | "float" | "real" => DataType::Float32,
        "float64" | "double" => DataType::Float64,
        "string" | "utf8" | "text" | "varchar" => DataType::Utf8,
        "large_string" | "large_utf8" => DataType::LargeUtf8,
        "json" => return Ok((DataType::Utf8, true)),
        "binary" | "bytes" => DataType::Binary,
        "date" | "date32" => DataType::Date32,
        "time" => DataType::Time64(TimeUnit::Microsecond),
        "timestamp" => DataType::Timestamp(TimeUnit::Microsecond, None),
        "timestamptz" => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        _ => {
            if let Some(args) = lower
                .strip_prefix("decimal(")
                .or_else(|| lower.strip_prefix("numeric("))
                .and_then(|r| r.strip_suffix(')'))
            {
                let (p, s) = args.split_once(',').unwrap_or((args, "0"));
                let p: u8 = p.trim().parse().map_err(|_| bad(t))?;
                let s: i8 = s.trim().parse().map_err(|_| bad(t))?;
                if p == 0 || p > 38 || s as i16 > p as i16 {
                    return Err(Error::config(format!(
                        "invalid decimal type `{t}`: precision must be 1..=38 and scale at most the precision"
                    )));
                }
                DataType::Decimal128(p, s)
            } else if let Some(args) = lower
                .strip_prefix("timestamp(")
                .and_then(|r| r.strip_suffix(')'))
            {
                let (unit, zone) = match args.split_once(',') {
                    Some((u, z)) => (u.trim(), Some(z.trim())),
                    None => (args.trim(), None),
                };
                let unit = match unit {
                    "s" => TimeUnit::Second,
                    "ms" => TimeUnit::Millisecond,
                    "us" => TimeUnit::Microsecond,
                    "ns" => TimeUnit::Nanosecond,
                    _ => return Err(bad(t)),
                };
                // Keep the zone's original spelling (`Europe/Berlin`).
                let zone = zone.map(|_| {
                    let orig = &t[t.find(',').map(|i| i + 1).unwrap_or(0)..t.len() - 1];
                    Arc::<str>::from(orig.trim())
                });
                DataType::Timestamp(unit, zone)
            } else {
                DataType::from_str(t).map_err(|_| bad(t))?
            }
        }
    };
    Ok((dt, false))
}

fn bad(t: &str) -> Error {
    Error::config(format!(
        "unknown type `{t}`: use e.g. int64, float64, string, bool, date, timestamp, timestamptz, decimal(10,2), binary, json"
    ))
}

/// Build an Arrow schema from column specs. Errors carry the key path (`[2].type`).
pub fn to_schema(columns: &[ColumnSpec]) -> Result<SchemaRef> {
    let mut fields = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let (dt, json) =
            parse_type(&c.data_type).map_err(|e| e.with_key_path(format!("[{i}].type")))?;
        let mut f = Field::new(&c.name, dt, c.nullable);
        if json {
            f = f.with_metadata(
                [(
                    "ARROW:extension:name".to_string(),
                    JSON_EXTENSION.to_string(),
                )]
                .into(),
            );
        }
        fields.push(f);
    }
    Ok(Arc::new(Schema::new(fields)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_friendly_names() {
        assert_eq!(parse_type("int64").unwrap().0, DataType::Int64);
        assert_eq!(
            parse_type("decimal(10, 2)").unwrap().0,
            DataType::Decimal128(10, 2)
        );
        assert_eq!(
            parse_type("timestamp(ms, Europe/Berlin)").unwrap().0,
            DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Berlin".into()))
        );
        assert!(parse_type("json").unwrap().1);
        assert!(parse_type("decimal(50,2)").is_err());
        assert!(parse_type("strng")
            .unwrap_err()
            .to_string()
            .contains("unknown type `strng`"));
    }
}
