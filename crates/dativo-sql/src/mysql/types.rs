//! MySQL / MariaDB column types → Arrow, and decoders from the binary protocol's values.
//!
//! | MySQL | Arrow |
//! |---|---|
//! | TINYINT / SMALLINT / MEDIUMINT, INT / BIGINT | Int8 / Int16 / Int32 / Int64 (UNSIGNED: the next wider; BIGINT UNSIGNED: Decimal128(20,0)) |
//! | FLOAT / DOUBLE | Float32 / Float64 |
//! | DECIMAL(p,s) | Decimal128(p,s) (p > 38: Utf8) |
//! | CHAR, VARCHAR, TEXT, ENUM, SET | Utf8 |
//! | JSON | Utf8 with extension `arrow.json` |
//! | BINARY, VARBINARY, BLOB | Binary |
//! | DATE / DATETIME / TIMESTAMP | Date32 / Timestamp(µs) / Timestamp(µs, "UTC") |
//! | TIME | Time64(µs) (values outside 00:00–24:00 are an error; cast them) |
//! | YEAR | Int16 |
//! | BIT(n) | Int64 |

use std::sync::Arc;

use arrow::array::*;
use arrow::datatypes::{DataType, Field, TimeUnit};
use mysql::consts::{ColumnFlags, ColumnType};
use mysql::{Column, Value};

use crate::keyset::{check_array_room, take_bytes, take_primitive, ArrayDecoder};
use dativo_core::schema_spec::JSON_EXTENSION;

const BINARY_CHARSET: u16 = 63;

/// What a column decodes to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MyKind {
    /// Int8
    I8,
    /// Int16
    I16,
    /// Int32
    I32,
    /// Int64
    I64,
    /// BIT(n) → Int64
    Bit,
    /// Decimal128(p, s)
    Decimal(u8, i8),
    /// Float32
    F32,
    /// Float64
    F64,
    /// Utf8
    Text,
    /// Utf8 marked as JSON
    Json,
    /// Binary
    Binary,
    /// Date32
    Date,
    /// Timestamp(µs)
    DateTime,
    /// Timestamp(µs, UTC)
    Timestamp,
    /// Time64(µs)
    Time,
}

/// Map a column; `Err` names the type.
pub fn kind_for(c: &Column) -> Result<MyKind, String> {
    let unsigned = c.flags().contains(ColumnFlags::UNSIGNED_FLAG);
    let k = match c.column_type() {
        ColumnType::MYSQL_TYPE_TINY => {
            if unsigned {
                MyKind::I16
            } else {
                MyKind::I8
            }
        }
        ColumnType::MYSQL_TYPE_SHORT => {
            if unsigned {
                MyKind::I32
            } else {
                MyKind::I16
            }
        }
        ColumnType::MYSQL_TYPE_INT24 => MyKind::I32,
        ColumnType::MYSQL_TYPE_LONG => {
            if unsigned {
                MyKind::I64
            } else {
                MyKind::I32
            }
        }
        ColumnType::MYSQL_TYPE_LONGLONG => {
            if unsigned {
                MyKind::Decimal(20, 0)
            } else {
                MyKind::I64
            }
        }
        ColumnType::MYSQL_TYPE_YEAR => MyKind::I16,
        ColumnType::MYSQL_TYPE_FLOAT => MyKind::F32,
        ColumnType::MYSQL_TYPE_DOUBLE => MyKind::F64,
        ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => {
            let s = c.decimals() as i64;
            let p =
                c.column_length() as i64 - if s > 0 { 1 } else { 0 } - if unsigned { 0 } else { 1 };
            if (1..=38).contains(&p) && s <= p {
                MyKind::Decimal(p as u8, s as i8)
            } else {
                MyKind::Text
            }
        }
        ColumnType::MYSQL_TYPE_JSON => MyKind::Json,
        ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB
        | ColumnType::MYSQL_TYPE_ENUM
        | ColumnType::MYSQL_TYPE_SET => {
            if c.character_set() == BINARY_CHARSET
                && !c
                    .flags()
                    .intersects(ColumnFlags::ENUM_FLAG | ColumnFlags::SET_FLAG)
            {
                MyKind::Binary
            } else {
                MyKind::Text
            }
        }
        ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => MyKind::Date,
        ColumnType::MYSQL_TYPE_DATETIME | ColumnType::MYSQL_TYPE_DATETIME2 => MyKind::DateTime,
        ColumnType::MYSQL_TYPE_TIMESTAMP | ColumnType::MYSQL_TYPE_TIMESTAMP2 => MyKind::Timestamp,
        ColumnType::MYSQL_TYPE_TIME | ColumnType::MYSQL_TYPE_TIME2 => MyKind::Time,
        ColumnType::MYSQL_TYPE_BIT => MyKind::Bit,
        _ => return Err(type_name(c)),
    };
    Ok(k)
}

/// The name of a column's wire type, for messages (`geometry`, `longlong`).
pub fn type_name(c: &Column) -> String {
    format!("{:?}", c.column_type())
        .trim_start_matches("MYSQL_TYPE_")
        .to_lowercase()
}

/// The Arrow field of a column.
pub fn field_for(name: &str, k: MyKind) -> Field {
    let dt = match k {
        MyKind::I8 => DataType::Int8,
        MyKind::I16 => DataType::Int16,
        MyKind::I32 => DataType::Int32,
        MyKind::I64 | MyKind::Bit => DataType::Int64,
        MyKind::F32 => DataType::Float32,
        MyKind::F64 => DataType::Float64,
        MyKind::Decimal(p, s) => DataType::Decimal128(p, s),
        MyKind::Text | MyKind::Json => DataType::Utf8,
        MyKind::Binary => DataType::Binary,
        MyKind::Date => DataType::Date32,
        MyKind::DateTime => DataType::Timestamp(TimeUnit::Microsecond, None),
        MyKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        MyKind::Time => DataType::Time64(TimeUnit::Microsecond),
    };
    let f = Field::new(name, dt, true);
    if k == MyKind::Json {
        f.with_metadata(
            [(
                "ARROW:extension:name".to_string(),
                JSON_EXTENSION.to_string(),
            )]
            .into(),
        )
    } else {
        f
    }
}

/// Decodes one column into its Arrow builder (each batch's builder starts with room for as
/// many values, and bytes, as the last batch held).
pub struct MyDecoder {
    kind: MyKind,
    b: Builder,
}

/// The builder of a column, by Arrow type.
enum Builder {
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    /// Text and JSON (checked as UTF-8 once per batch, in `finish`) and binary.
    Bytes(BinaryBuilder),
    Date(Date32Builder),
    Ts(TimestampMicrosecondBuilder),
    Time(Time64MicrosecondBuilder),
}

fn days_from_civil(y: i64, m: u8, d: u8) -> i64 {
    // Howard Hinnant's algorithm: days since 1970-01-01.
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn text_of(v: &Value) -> Result<std::borrow::Cow<'_, str>, String> {
    match v {
        Value::Bytes(b) => std::str::from_utf8(b)
            .map(std::borrow::Cow::Borrowed)
            .map_err(|e| format!("invalid UTF-8: {e}")),
        Value::Int(i) => Ok(i.to_string().into()),
        Value::UInt(u) => Ok(u.to_string().into()),
        Value::Float(f) => Ok(f.to_string().into()),
        Value::Double(f) => Ok(f.to_string().into()),
        other => Err(format!("unexpected value {other:?}")),
    }
}

/// Parse a decimal string into an unscaled i128 at `scale`.
pub fn parse_decimal(s: &str, precision: u8, scale: i8) -> Result<i128, String> {
    parse_decimal_bytes(s.as_bytes(), precision, scale)
}

/// [`parse_decimal`] of the bytes the server sent (MySQL sends DECIMAL as text even in the
/// binary protocol). Up to 18 digits, in 64-bit arithmetic without a check per digit (most
/// decimal columns); longer values in checked 128-bit arithmetic.
pub fn parse_decimal_bytes(b: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    let err = |what: String| format!("`{}` {what}", String::from_utf8_lossy(b));
    let (neg, digits) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let (int, frac) = match digits.iter().position(|&c| c == b'.') {
        Some(dot) => (&digits[..dot], &digits[dot + 1..]),
        None => (digits, &digits[digits.len()..]),
    };
    let sc = scale.max(0) as usize;
    if frac.len() > sc && frac[sc..].iter().any(|&c| c != b'0') {
        return Err(err(format!("has more than {scale} fractional digits")));
    }
    let frac = &frac[..frac.len().min(sc)];
    let pad = (sc - frac.len()) as u32;
    let not_a_number = || err("is not a decimal number".to_string());
    let too_big = || err(format!("does not fit decimal({precision},{scale})"));
    let v: i128 = if int.len() + frac.len() + pad as usize <= 18 {
        let mut v: u64 = 0;
        for &c in int.iter().chain(frac) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return Err(not_a_number());
            }
            v = v * 10 + d as u64;
        }
        (v * 10u64.pow(pad)) as i128
    } else {
        let mut v: i128 = 0;
        for &c in int
            .iter()
            .chain(frac)
            .chain(std::iter::repeat_n(&b'0', pad as usize))
        {
            if !c.is_ascii_digit() {
                return Err(not_a_number());
            }
            v = v
                .checked_mul(10)
                .and_then(|v| v.checked_add((c - b'0') as i128))
                .ok_or_else(too_big)?;
        }
        v
    };
    if v.unsigned_abs() >= 10u128.pow(precision as u32) {
        return Err(too_big());
    }
    Ok(if neg { -v } else { v })
}

impl MyDecoder {
    /// A decoder for `kind`.
    pub fn new(kind: MyKind, cap: usize) -> Self {
        let b = match kind {
            MyKind::I8 => Builder::I8(Int8Builder::with_capacity(cap)),
            MyKind::I16 => Builder::I16(Int16Builder::with_capacity(cap)),
            MyKind::I32 => Builder::I32(Int32Builder::with_capacity(cap)),
            MyKind::I64 | MyKind::Bit => Builder::I64(Int64Builder::with_capacity(cap)),
            MyKind::F32 => Builder::F32(Float32Builder::with_capacity(cap)),
            MyKind::F64 => Builder::F64(Float64Builder::with_capacity(cap)),
            MyKind::Decimal(p, s) => Builder::Decimal(decimal_builder(cap, p, s), p, s),
            MyKind::Text | MyKind::Json | MyKind::Binary => {
                Builder::Bytes(BinaryBuilder::with_capacity(cap, cap * 16))
            }
            MyKind::Date => Builder::Date(Date32Builder::with_capacity(cap)),
            MyKind::DateTime | MyKind::Timestamp => {
                Builder::Ts(TimestampMicrosecondBuilder::with_capacity(cap))
            }
            MyKind::Time => Builder::Time(Time64MicrosecondBuilder::with_capacity(cap)),
        };
        MyDecoder { kind, b }
    }

    /// Append one value.
    #[inline]
    pub fn append(&mut self, v: &Value) -> Result<(), String> {
        if matches!(v, Value::NULL) {
            self.append_null();
            return Ok(());
        }
        match &mut self.b {
            Builder::I8(x) => x.append_value(int(v)?.try_into().map_err(|_| "out of range")?),
            Builder::I16(x) => x.append_value(int(v)?.try_into().map_err(|_| "out of range")?),
            Builder::I32(x) => x.append_value(int(v)?.try_into().map_err(|_| "out of range")?),
            Builder::I64(x) => {
                let n = match (self.kind, v) {
                    (MyKind::Bit, Value::Bytes(b)) => {
                        b.iter().fold(0i128, |a, x| (a << 8) | *x as i128) as i64
                    }
                    (MyKind::Bit, other) => int(other)? as i64,
                    (_, Value::Int(i)) => *i,
                    (_, other) => int(other)?.try_into().map_err(|_| "out of range")?,
                };
                x.append_value(n)
            }
            Builder::F32(x) => x.append_value(match v {
                Value::Float(f) => *f,
                Value::Double(f) => *f as f32,
                other => text_of(other)?.parse().map_err(|_| "not a number")?,
            }),
            Builder::F64(x) => x.append_value(match v {
                Value::Double(f) => *f,
                Value::Float(f) => *f as f64,
                other => text_of(other)?.parse().map_err(|_| "not a number")?,
            }),
            Builder::Decimal(x, p, s) => {
                let (p, s) = (*p, *s);
                x.append_value(match v {
                    Value::Bytes(b) => parse_decimal_bytes(b, p, s)?,
                    Value::UInt(u) => parse_decimal(&u.to_string(), p, s)?,
                    Value::Int(i) => parse_decimal(&i.to_string(), p, s)?,
                    other => parse_decimal(&text_of(other)?, p, s)?,
                })
            }
            Builder::Bytes(x) => {
                let t;
                let b: &[u8] = match v {
                    Value::Bytes(b) => b,
                    other => {
                        t = text_of(other)?;
                        t.as_bytes()
                    }
                };
                // Arrow panics when a batch's values pass its 32-bit offsets; fail clearly.
                check_array_room(x.values_slice().len(), b.len())?;
                x.append_value(b)
            }
            Builder::Date(x) => match v {
                Value::Date(y, m, d, ..) => {
                    x.append_value(days_from_civil(*y as i64, *m, *d) as i32)
                }
                other => return Err(format!("unexpected date value {other:?}")),
            },
            Builder::Ts(x) => match v {
                Value::Date(y, m, d, h, i, s, us) => {
                    let days = days_from_civil(*y as i64, *m, *d);
                    let t = ((days * 24 + *h as i64) * 60 + *i as i64) * 60 + *s as i64;
                    x.append_value(t * 1_000_000 + *us as i64)
                }
                other => return Err(format!("unexpected datetime value {other:?}")),
            },
            Builder::Time(x) => match v {
                Value::Time(neg, d, h, i, s, us) => {
                    if *neg || *d > 0 {
                        return Err("TIME outside 00:00:00–23:59:59 cannot be a time of day; cast it (e.g. TIME_TO_SEC)".into());
                    }
                    let t =
                        ((*h as i64 * 60 + *i as i64) * 60 + *s as i64) * 1_000_000 + *us as i64;
                    x.append_value(t)
                }
                other => return Err(format!("unexpected time value {other:?}")),
            },
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match &mut self.b {
            Builder::I8(x) => x.append_null(),
            Builder::I16(x) => x.append_null(),
            Builder::I32(x) => x.append_null(),
            Builder::I64(x) => x.append_null(),
            Builder::F32(x) => x.append_null(),
            Builder::F64(x) => x.append_null(),
            Builder::Decimal(x, ..) => x.append_null(),
            Builder::Bytes(x) => x.append_null(),
            Builder::Date(x) => x.append_null(),
            Builder::Ts(x) => x.append_null(),
            Builder::Time(x) => x.append_null(),
        }
    }

    /// Finish into an array. Errors: text that is not UTF-8.
    pub fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match &mut self.b {
            Builder::I8(x) => Arc::new(take_primitive(x, Int8Builder::with_capacity)),
            Builder::I16(x) => Arc::new(take_primitive(x, Int16Builder::with_capacity)),
            Builder::I32(x) => Arc::new(take_primitive(x, Int32Builder::with_capacity)),
            Builder::I64(x) => Arc::new(take_primitive(x, Int64Builder::with_capacity)),
            Builder::F32(x) => Arc::new(take_primitive(x, Float32Builder::with_capacity)),
            Builder::F64(x) => Arc::new(take_primitive(x, Float64Builder::with_capacity)),
            Builder::Decimal(x, p, s) => {
                let (p, s) = (*p, *s);
                Arc::new(take_primitive(x, |c| decimal_builder(c, p, s)))
            }
            Builder::Bytes(x) => {
                let bin = take_bytes(x);
                if matches!(self.kind, MyKind::Text | MyKind::Json) {
                    Arc::new(
                        StringArray::try_from_binary(bin)
                            .map_err(|e| format!("text that is not UTF-8: {e}"))?,
                    )
                } else {
                    Arc::new(bin)
                }
            }
            Builder::Date(x) => Arc::new(take_primitive(x, Date32Builder::with_capacity)),
            Builder::Ts(x) => {
                let t = take_primitive(x, TimestampMicrosecondBuilder::with_capacity);
                if self.kind == MyKind::Timestamp {
                    Arc::new(t.with_timezone("UTC"))
                } else {
                    Arc::new(t)
                }
            }
            Builder::Time(x) => {
                Arc::new(take_primitive(x, Time64MicrosecondBuilder::with_capacity))
            }
        })
    }
}

fn decimal_builder(cap: usize, p: u8, s: i8) -> Decimal128Builder {
    Decimal128Builder::with_capacity(cap)
        .with_precision_and_scale(p, s)
        .expect("valid decimal")
}

impl ArrayDecoder for MyDecoder {
    fn finish(&mut self) -> dativo_core::Result<ArrayRef> {
        MyDecoder::finish(self).map_err(dativo_core::Error::data)
    }
}

fn int(v: &Value) -> Result<i128, String> {
    match v {
        Value::Int(i) => Ok(*i as i128),
        Value::UInt(u) => Ok(*u as i128),
        other => text_of(other)?.parse().map_err(|_| "not an integer".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_dates() {
        assert_eq!(parse_decimal("-12.5", 10, 2).unwrap(), -1250);
        // The 64-bit path (18 digits) and the 128-bit one agree at the boundary.
        assert_eq!(
            parse_decimal("9999999999999999.99", 18, 2).unwrap(),
            999_999_999_999_999_999
        );
        assert_eq!(
            parse_decimal("-99999999999999999.99", 19, 2).unwrap(),
            -9_999_999_999_999_999_999
        );
        assert_eq!(
            parse_decimal("12345678901234567890123456.5", 38, 10).unwrap(),
            123_456_789_012_345_678_901_234_565_000_000_000
        );
        assert_eq!(parse_decimal("0.10", 5, 1).unwrap(), 1);
        assert!(parse_decimal("99999999999999999.99", 18, 2).is_err());
        assert!(parse_decimal("1a.5", 10, 2)
            .unwrap_err()
            .contains("`1a.5` is not a decimal number"));
        assert!(parse_decimal("1.234", 10, 2)
            .unwrap_err()
            .contains("fractional"));
        assert!(parse_decimal("1.x", 10, 2)
            .unwrap_err()
            .contains("not a decimal"));
        assert_eq!(parse_decimal("3", 10, 2).unwrap(), 300);
        assert!(parse_decimal("1.234", 10, 2).is_err());
        assert!(parse_decimal("123", 2, 0).is_err());
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2026, 1, 1), 20454);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
    }
}
