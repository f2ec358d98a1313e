//! PostgreSQL types → Arrow types, and decoders from PostgreSQL's binary wire format straight
//! into Arrow builders (no intermediate value per cell).
//!
//! | PostgreSQL | Arrow |
//! |---|---|
//! | bool | Boolean |
//! | int2 / int4 / int8 | Int16 / Int32 / Int64 |
//! | float4 / float8 | Float32 / Float64 |
//! | numeric(p,s) | Decimal128(p,s); unconstrained: Decimal128(38,10) or Utf8 (`numeric:`) |
//! | text, varchar, char, name, citext, enums, xml, "char" | Utf8 |
//! | json, jsonb | Utf8 with extension `arrow.json` |
//! | bytea | Binary |
//! | date | Date32 |
//! | time | Time64(µs) |
//! | timestamp / timestamptz | Timestamp(µs) / Timestamp(µs, "UTC") |
//! | interval | Struct{months: Int32, days: Int32, microseconds: Int64} (lossless; Parquet and Iceberg have no interval with months, days and µs) |
//! | uuid | FixedSizeBinary(16) with extension `arrow.uuid` |
//! | inet, cidr, macaddr, macaddr8 | Utf8 (`192.168.0.0/24`, `08:00:2b:01:02:03`) |
//! | oid | Int64 |
//! | one-dimensional arrays of the above | List |
//! | domains | as their base type |

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arrow::array::*;
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, TimeUnit};
use tokio_postgres::types::{Kind as PgKind, Type};

use dativo_core::schema_spec::JSON_EXTENSION;

use super::config::NumericConfig;
use crate::keyset::{check_array_room, take_bytes, take_primitive, ArrayDecoder};

/// Days from 1970-01-01 to 2000-01-01 (PostgreSQL's epoch).
const PG_EPOCH_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// What a column decodes to.
#[derive(Debug, Clone, PartialEq)]
pub enum ColKind {
    /// bool
    Bool,
    /// int2
    I16,
    /// int4
    I32,
    /// int8
    I64,
    /// float4
    F32,
    /// float8
    F64,
    /// numeric as Decimal128(precision, scale)
    Decimal(u8, i8),
    /// numeric as a decimal string
    NumericText,
    /// text-like (UTF-8 bytes on the wire)
    Text,
    /// json (text on the wire)
    Json,
    /// jsonb (a version byte, then text)
    Jsonb,
    /// bytea
    Bytea,
    /// date
    Date,
    /// time
    Time,
    /// timestamp
    Timestamp,
    /// timestamptz
    TimestampTz,
    /// interval
    Interval,
    /// uuid
    Uuid,
    /// inet / cidr
    Inet,
    /// macaddr / macaddr8
    MacAddr,
    /// oid
    Oid,
    /// "char"
    Char,
    /// one-dimensional array
    List(Box<ColKind>),
}

/// Map a PostgreSQL type (with its type modifier) to a [`ColKind`]; `Err` names the type.
pub fn kind_for(ty: &Type, typmod: i32, numeric: &NumericConfig) -> Result<ColKind, String> {
    let k = match *ty {
        Type::BOOL => ColKind::Bool,
        Type::INT2 => ColKind::I16,
        Type::INT4 => ColKind::I32,
        Type::INT8 => ColKind::I64,
        Type::FLOAT4 => ColKind::F32,
        Type::FLOAT8 => ColKind::F64,
        Type::NUMERIC => {
            if typmod >= 4 {
                let t = typmod - 4;
                let p = ((t >> 16) & 0xffff) as u8;
                let s = (t & 0xffff) as i16;
                if (1..=38).contains(&p) && (0..=p as i16).contains(&s) {
                    ColKind::Decimal(p, s as i8)
                } else {
                    ColKind::NumericText
                }
            } else if numeric.as_string {
                ColKind::NumericText
            } else {
                ColKind::Decimal(numeric.precision, numeric.scale)
            }
        }
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::XML | Type::UNKNOWN => {
            ColKind::Text
        }
        Type::CHAR => ColKind::Char,
        Type::JSON => ColKind::Json,
        Type::JSONB => ColKind::Jsonb,
        Type::BYTEA => ColKind::Bytea,
        Type::DATE => ColKind::Date,
        Type::TIME => ColKind::Time,
        Type::TIMESTAMP => ColKind::Timestamp,
        Type::TIMESTAMPTZ => ColKind::TimestampTz,
        Type::INTERVAL => ColKind::Interval,
        Type::UUID => ColKind::Uuid,
        Type::INET | Type::CIDR => ColKind::Inet,
        Type::MACADDR | Type::MACADDR8 => ColKind::MacAddr,
        Type::OID => ColKind::Oid,
        _ => match ty.kind() {
            PgKind::Enum(_) => ColKind::Text,
            PgKind::Domain(base) => return kind_for(base, typmod, numeric),
            PgKind::Array(elem) => {
                let inner = kind_for(elem, typmod, numeric)?;
                if matches!(inner, ColKind::List(_)) {
                    return Err(ty.name().to_string());
                }
                ColKind::List(Box::new(inner))
            }
            _ if ty.name() == "citext" => ColKind::Text,
            _ => return Err(ty.name().to_string()),
        },
    };
    Ok(k)
}

fn interval_fields() -> Fields {
    Fields::from(vec![
        Field::new("months", DataType::Int32, false),
        Field::new("days", DataType::Int32, false),
        Field::new("microseconds", DataType::Int64, false),
    ])
}

/// The Arrow field for a column.
pub fn field_for(name: &str, kind: &ColKind) -> Field {
    let (dt, ext) = match kind {
        ColKind::Bool => (DataType::Boolean, None),
        ColKind::I16 => (DataType::Int16, None),
        ColKind::I32 => (DataType::Int32, None),
        ColKind::I64 | ColKind::Oid => (DataType::Int64, None),
        ColKind::F32 => (DataType::Float32, None),
        ColKind::F64 => (DataType::Float64, None),
        ColKind::Decimal(p, s) => (DataType::Decimal128(*p, *s), None),
        ColKind::NumericText | ColKind::Text | ColKind::Char | ColKind::Inet | ColKind::MacAddr => {
            (DataType::Utf8, None)
        }
        ColKind::Json | ColKind::Jsonb => (DataType::Utf8, Some(JSON_EXTENSION)),
        ColKind::Bytea => (DataType::Binary, None),
        ColKind::Date => (DataType::Date32, None),
        ColKind::Time => (DataType::Time64(TimeUnit::Microsecond), None),
        ColKind::Timestamp => (DataType::Timestamp(TimeUnit::Microsecond, None), None),
        ColKind::TimestampTz => (
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            None,
        ),
        ColKind::Interval => (DataType::Struct(interval_fields()), None),
        ColKind::Uuid => (DataType::FixedSizeBinary(16), Some("arrow.uuid")),
        ColKind::List(inner) => (DataType::List(Arc::new(field_for("item", inner))), None),
    };
    let f = Field::new(name, dt, true);
    match ext {
        Some(e) => f.with_metadata([("ARROW:extension:name".to_string(), e.to_string())].into()),
        None => f,
    }
}

/// Decodes one column's binary values into an Arrow builder. (Variants differ in size; there
/// is one decoder per column, so boxing them would only add an indirection per value.)
#[allow(clippy::large_enum_variant)]
pub enum Decoder {
    /// bool
    Bool(BooleanBuilder),
    /// int2
    I16(Int16Builder),
    /// int4
    I32(Int32Builder),
    /// int8, oid
    I64(Int64Builder, bool),
    /// float4
    F32(Float32Builder),
    /// float8
    F64(Float64Builder),
    /// numeric → decimal
    Decimal(Decimal128Builder, u8, i8, bool),
    /// Text-like → string; the tag says how to decode.
    Str(StringBuilder, StrKind),
    /// Text the server sends as UTF-8 (text, varchar, char, json): the bytes are collected
    /// as they are and checked once per batch (one pass over the batch's values, not a call
    /// per value).
    Text(BinaryBuilder),
    /// bytea
    Bytea(BinaryBuilder),
    /// date
    Date(Date32Builder, bool),
    /// time
    Time(Time64MicrosecondBuilder),
    /// timestamp(tz): (zoned, special values as NULL)
    Ts(TimestampMicrosecondBuilder, bool, bool),
    /// interval
    Interval(Int32Builder, Int32Builder, Int64Builder, NullBufferBuilder),
    /// uuid
    Uuid(FixedSizeBinaryBuilder),
    /// arrays
    List(Box<Decoder>, Vec<i32>, NullBufferBuilder, FieldRef),
}

/// How a string column's bytes are turned into text.
#[derive(Clone, Copy)]
pub enum StrKind {
    /// UTF-8 text.
    Text,
    /// jsonb: skip the version byte.
    Jsonb,
    /// numeric → decimal string.
    Numeric,
    /// inet / cidr.
    Inet,
    /// macaddr(8).
    Mac,
    /// "char": one byte.
    Char,
}

impl Decoder {
    /// A decoder for `kind` with room for `capacity` rows.
    pub fn new(kind: &ColKind, capacity: usize, special_null: bool) -> Decoder {
        let c = capacity;
        let sn = special_null;
        match kind {
            ColKind::Bool => Decoder::Bool(BooleanBuilder::with_capacity(c)),
            ColKind::I16 => Decoder::I16(Int16Builder::with_capacity(c)),
            ColKind::I32 => Decoder::I32(Int32Builder::with_capacity(c)),
            ColKind::I64 => Decoder::I64(Int64Builder::with_capacity(c), false),
            ColKind::Oid => Decoder::I64(Int64Builder::with_capacity(c), true),
            ColKind::F32 => Decoder::F32(Float32Builder::with_capacity(c)),
            ColKind::F64 => Decoder::F64(Float64Builder::with_capacity(c)),
            ColKind::Decimal(p, s) => Decoder::Decimal(
                Decimal128Builder::with_capacity(c)
                    .with_precision_and_scale(*p, *s)
                    .expect("valid precision"),
                *p,
                *s,
                sn,
            ),
            ColKind::NumericText => {
                Decoder::Str(StringBuilder::with_capacity(c, c * 8), StrKind::Numeric)
            }
            ColKind::Text | ColKind::Json => Decoder::Text(BinaryBuilder::with_capacity(c, c * 16)),
            ColKind::Jsonb => Decoder::Str(StringBuilder::with_capacity(c, c * 32), StrKind::Jsonb),
            ColKind::Inet => Decoder::Str(StringBuilder::with_capacity(c, c * 16), StrKind::Inet),
            ColKind::MacAddr => Decoder::Str(StringBuilder::with_capacity(c, c * 17), StrKind::Mac),
            ColKind::Char => Decoder::Str(StringBuilder::with_capacity(c, c), StrKind::Char),
            ColKind::Bytea => Decoder::Bytea(BinaryBuilder::with_capacity(c, c * 16)),
            ColKind::Date => Decoder::Date(Date32Builder::with_capacity(c), sn),
            ColKind::Time => Decoder::Time(Time64MicrosecondBuilder::with_capacity(c)),
            ColKind::Timestamp => {
                Decoder::Ts(TimestampMicrosecondBuilder::with_capacity(c), false, sn)
            }
            ColKind::TimestampTz => {
                Decoder::Ts(TimestampMicrosecondBuilder::with_capacity(c), true, sn)
            }
            ColKind::Interval => Decoder::Interval(
                Int32Builder::with_capacity(c),
                Int32Builder::with_capacity(c),
                Int64Builder::with_capacity(c),
                NullBufferBuilder::new(c),
            ),
            ColKind::Uuid => Decoder::Uuid(FixedSizeBinaryBuilder::with_capacity(c, 16)),
            ColKind::List(inner) => {
                let mut offsets = Vec::with_capacity(c + 1);
                offsets.push(0);
                Decoder::List(
                    Box::new(Decoder::new(inner, c, sn)),
                    offsets,
                    NullBufferBuilder::new(c),
                    Arc::new(field_for("item", inner)),
                )
            }
        }
    }

    /// Append one value (`None` = NULL) in PostgreSQL's binary format.
    #[inline]
    pub fn append(&mut self, v: Option<&[u8]>) -> Result<(), String> {
        let Some(b) = v else {
            self.append_null();
            return Ok(());
        };
        match self {
            Decoder::Bool(x) => x.append_value(*fixed::<1>(b)?.first().unwrap_or(&0) != 0),
            Decoder::I16(x) => x.append_value(i16::from_be_bytes(*fixed(b)?)),
            Decoder::I32(x) => x.append_value(i32::from_be_bytes(*fixed(b)?)),
            Decoder::I64(x, oid) => {
                if *oid {
                    x.append_value(u32::from_be_bytes(*fixed(b)?) as i64)
                } else {
                    x.append_value(i64::from_be_bytes(*fixed(b)?))
                }
            }
            Decoder::F32(x) => x.append_value(f32::from_be_bytes(*fixed(b)?)),
            Decoder::F64(x) => x.append_value(f64::from_be_bytes(*fixed(b)?)),
            Decoder::Decimal(x, p, s, sn) => {
                let sign = b.get(4..6).map(|v| u16::from_be_bytes([v[0], v[1]]));
                if *sn && matches!(sign, Some(0xC000 | 0xD000 | 0xF000)) {
                    x.append_null()
                } else {
                    x.append_value(numeric_to_i128(b, *p, *s)?)
                }
            }
            Decoder::Str(x, kind) => {
                let owned;
                let v: &str = match kind {
                    StrKind::Text | StrKind::Char => utf8(b)?,
                    StrKind::Jsonb => {
                        if b.first() != Some(&1) {
                            return Err("unsupported jsonb version".into());
                        }
                        utf8(&b[1..])?
                    }
                    StrKind::Numeric => {
                        owned = numeric_to_string(b)?;
                        &owned
                    }
                    StrKind::Inet => {
                        owned = inet_to_string(b)?;
                        &owned
                    }
                    StrKind::Mac => {
                        let parts: Vec<String> = b.iter().map(|o| format!("{o:02x}")).collect();
                        owned = parts.join(":");
                        &owned
                    }
                };
                // Arrow panics when a batch's values pass its 32-bit offsets; fail clearly.
                check_array_room(x.values_slice().len(), v.len())?;
                x.append_value(v)
            }
            Decoder::Bytea(x) | Decoder::Text(x) => {
                check_array_room(x.values_slice().len(), b.len())?;
                x.append_value(b)
            }
            Decoder::Date(x, sn) => {
                let d = i32::from_be_bytes(*fixed(b)?);
                if d == i32::MAX || d == i32::MIN {
                    if *sn {
                        x.append_null();
                        return Ok(());
                    }
                    return Err(
                        "infinite date cannot be represented; set `special_values: as_null` or filter it".into(),
                    );
                }
                x.append_value(d.checked_add(PG_EPOCH_DAYS).ok_or("date out of range")?)
            }
            Decoder::Time(x) => x.append_value(i64::from_be_bytes(*fixed(b)?)),
            Decoder::Ts(x, _, sn) => {
                let t = i64::from_be_bytes(*fixed(b)?);
                if t == i64::MAX || t == i64::MIN {
                    if *sn {
                        x.append_null();
                        return Ok(());
                    }
                    return Err(
                        "infinite timestamp cannot be represented; set `special_values: as_null` or filter it".into(),
                    );
                }
                x.append_value(
                    t.checked_add(PG_EPOCH_MICROS)
                        .ok_or("timestamp out of range")?,
                )
            }
            Decoder::Interval(m, d, us, nulls) => {
                let v: &[u8; 16] = fixed(b)?;
                us.append_value(i64::from_be_bytes(v[0..8].try_into().expect("8 bytes")));
                d.append_value(i32::from_be_bytes(v[8..12].try_into().expect("4 bytes")));
                m.append_value(i32::from_be_bytes(v[12..16].try_into().expect("4 bytes")));
                nulls.append_non_null();
            }
            Decoder::Uuid(x) => x.append_value(fixed::<16>(b)?).map_err(|e| e.to_string())?,
            Decoder::List(inner, offsets, nulls, _) => {
                let n = decode_array(b, inner)?;
                let last = *offsets.last().expect("offsets start with 0");
                let next = i32::try_from(n)
                    .ok()
                    .and_then(|n| last.checked_add(n))
                    .ok_or(
                    "the array elements of this column in one batch pass 2^31; lower `batch_bytes`",
                )?;
                offsets.push(next);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn append_null(&mut self) {
        match self {
            Decoder::Bool(x) => x.append_null(),
            Decoder::I16(x) => x.append_null(),
            Decoder::I32(x) => x.append_null(),
            Decoder::I64(x, _) => x.append_null(),
            Decoder::F32(x) => x.append_null(),
            Decoder::F64(x) => x.append_null(),
            Decoder::Decimal(x, ..) => x.append_null(),
            Decoder::Str(x, _) => x.append_null(),
            Decoder::Bytea(x) | Decoder::Text(x) => x.append_null(),
            Decoder::Date(x, _) => x.append_null(),
            Decoder::Time(x) => x.append_null(),
            Decoder::Ts(x, ..) => x.append_null(),
            Decoder::Interval(m, d, us, nulls) => {
                m.append_value(0);
                d.append_value(0);
                us.append_value(0);
                nulls.append_null();
            }
            Decoder::Uuid(x) => x.append_null(),
            Decoder::List(_, offsets, nulls, _) => {
                let last = *offsets.last().expect("offsets start with 0");
                offsets.push(last);
                nulls.append_null();
            }
        }
    }

    /// Finish the values appended so far into an array; the decoder is reset. Errors: text
    /// that is not UTF-8.
    ///
    /// The next batch's builders start with the capacity this batch needed (rows, and the
    /// text bytes plus an eighth): Arrow's `finish` leaves a builder empty, so without this
    /// every batch regrew its buffers from nothing by doubling (a copy of each buffer, and
    /// arrays up to twice as big as their values in the channel).
    pub fn finish(&mut self) -> Result<ArrayRef, String> {
        Ok(match self {
            Decoder::Bool(x) => {
                let c = if x.is_empty() { x.capacity() } else { x.len() };
                Arc::new(std::mem::replace(x, BooleanBuilder::with_capacity(c)).finish())
            }
            Decoder::I16(x) => Arc::new(take_primitive(x, Int16Builder::with_capacity)),
            Decoder::I32(x) => Arc::new(take_primitive(x, Int32Builder::with_capacity)),
            Decoder::I64(x, _) => Arc::new(take_primitive(x, Int64Builder::with_capacity)),
            Decoder::F32(x) => Arc::new(take_primitive(x, Float32Builder::with_capacity)),
            Decoder::F64(x) => Arc::new(take_primitive(x, Float64Builder::with_capacity)),
            Decoder::Decimal(x, p, s, _) => {
                let (p, s) = (*p, *s);
                Arc::new(take_primitive(x, |c| {
                    Decimal128Builder::with_capacity(c)
                        .with_precision_and_scale(p, s)
                        .expect("valid precision")
                }))
            }
            Decoder::Str(x, _) => Arc::new(take_bytes(x)),
            Decoder::Bytea(x) => Arc::new(take_bytes(x)),
            Decoder::Text(x) => Arc::new(
                StringArray::try_from_binary(take_bytes(x))
                    .map_err(|e| format!("text that is not UTF-8: {e}"))?,
            ),
            Decoder::Date(x, _) => Arc::new(take_primitive(x, Date32Builder::with_capacity)),
            Decoder::Time(x) => {
                Arc::new(take_primitive(x, Time64MicrosecondBuilder::with_capacity))
            }
            Decoder::Ts(x, tz, _) => {
                let a = take_primitive(x, TimestampMicrosecondBuilder::with_capacity);
                if *tz {
                    Arc::new(a.with_timezone("UTC"))
                } else {
                    Arc::new(a)
                }
            }
            Decoder::Interval(m, d, us, nulls) => {
                let c = us.len();
                Arc::new(StructArray::new(
                    interval_fields(),
                    vec![
                        Arc::new(take_primitive(m, Int32Builder::with_capacity)) as ArrayRef,
                        Arc::new(take_primitive(d, Int32Builder::with_capacity)),
                        Arc::new(take_primitive(us, Int64Builder::with_capacity)),
                    ],
                    std::mem::replace(nulls, NullBufferBuilder::new(c)).finish(),
                ))
            }
            Decoder::Uuid(x) => {
                let c = x.len();
                Arc::new(
                    std::mem::replace(x, FixedSizeBinaryBuilder::with_capacity(c, 16)).finish(),
                )
            }
            Decoder::List(inner, offsets, nulls, field) => {
                let values = inner.finish()?;
                let c = offsets.len();
                let mut next = Vec::with_capacity(c);
                next.push(0);
                let offs = std::mem::replace(offsets, next);
                let nb: Option<NullBuffer> = nulls.finish();
                Arc::new(ListArray::new(
                    field.clone(),
                    OffsetBuffer::new(offs.into()),
                    values,
                    nb,
                ))
            }
        })
    }
}

impl ArrayDecoder for Decoder {
    fn finish(&mut self) -> dativo_core::Result<ArrayRef> {
        Decoder::finish(self).map_err(dativo_core::Error::data)
    }
}

#[inline]
fn fixed<const N: usize>(b: &[u8]) -> Result<&[u8; N], String> {
    b.try_into()
        .map_err(|_| format!("expected {N} bytes, got {}", b.len()))
}

#[inline]
fn utf8(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|e| format!("invalid UTF-8: {e}"))
}

fn be_i16(b: &[u8], at: usize) -> Result<i16, String> {
    b.get(at..at + 2)
        .map(|s| i16::from_be_bytes([s[0], s[1]]))
        .ok_or_else(|| "truncated numeric".to_string())
}

struct Numeric<'a> {
    ndigits: usize,
    weight: i16,
    sign: u16,
    dscale: u16,
    digits: &'a [u8],
}

fn parse_numeric(b: &[u8]) -> Result<Numeric<'_>, String> {
    let ndigits = be_i16(b, 0)? as usize;
    let weight = be_i16(b, 2)?;
    let sign = be_i16(b, 4)? as u16;
    let dscale = be_i16(b, 6)? as u16;
    let digits = b.get(8..8 + 2 * ndigits).ok_or("truncated numeric")?;
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 => return Err("numeric NaN cannot be stored as a decimal; set `special_values: as_null`, or read the column as text".into()),
        _ => return Err("numeric infinity cannot be stored as a decimal; set `special_values: as_null`, or read the column as text".into()),
    }
    Ok(Numeric {
        ndigits,
        weight,
        sign,
        dscale,
        digits,
    })
}

/// [`numeric_to_i128`] for a decimal of at most 18 digits, in 64-bit arithmetic (most
/// decimal columns): `None` when the value does not fit exactly.
#[inline]
fn numeric_to_i64(n: &Numeric<'_>, precision: u8, scale: i8) -> Option<i64> {
    let scale = scale.max(0) as u32;
    let mut v: u64 = 0;
    let mut frac = 0u32;
    for i in 0..n.ndigits {
        let d = u16::from_be_bytes([n.digits[2 * i], n.digits[2 * i + 1]]) as u64;
        let pos = n.weight as i32 - i as i32;
        if pos < 0 {
            if i == 0 {
                frac += 4 * (-pos - 1) as u32;
                if frac > scale {
                    return None;
                }
            }
            let room = scale - frac;
            if room < 4 {
                let cut = POW10_U64[(4 - room) as usize];
                if !d.is_multiple_of(cut) {
                    return None;
                }
                v = v
                    .checked_mul(POW10_U64[room as usize])?
                    .checked_add(d / cut)?;
                frac = scale;
                continue;
            }
            frac += 4;
        }
        v = v.checked_mul(10_000)?.checked_add(d)?;
    }
    if n.ndigits > 0 && n.weight as i32 >= n.ndigits as i32 {
        let missing = (n.weight as i32 - n.ndigits as i32 + 1) as usize;
        v = v.checked_mul(*POW10_U64.get(4 * missing)?)?;
    }
    v = v.checked_mul(POW10_U64[(scale - frac) as usize])?;
    if v >= POW10_U64[precision as usize] {
        return None;
    }
    Some(if n.sign == 0x4000 {
        -(v as i64)
    } else {
        v as i64
    })
}

/// Powers of ten that fit a `u64`.
const POW10_U64: [u64; 20] = {
    let mut t = [1u64; 20];
    let mut i = 1;
    while i < 20 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// Powers of ten that fit an `i128`.
const POW10: [i128; 39] = {
    let mut t = [1i128; 39];
    let mut i = 1;
    while i < 39 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// A numeric value as an unscaled i128 at `scale`, checked against `precision`.
///
/// PostgreSQL sends base-10000 digit groups; each group is folded in with one multiply
/// (a cut last fraction group with one division): this runs once per value of every
/// decimal column.
pub fn numeric_to_i128(b: &[u8], precision: u8, scale: i8) -> Result<i128, String> {
    let n = parse_numeric(b)?;
    if precision <= 18 {
        if let Some(v) = numeric_to_i64(&n, precision, scale) {
            return Ok(v as i128);
        }
        // Out of range or too many fractional digits: the general path says which.
    }
    let too_large = || format!("numeric value does not fit decimal({precision},{scale})");
    let too_fine = || {
        format!(
            "numeric value has more than {scale} fractional digits; raise `numeric.scale` or read it as text"
        )
    };
    let scale = scale.max(0) as u32;
    let mut v: i128 = 0;
    // Decimal digits after the point accumulated into `v` so far.
    let mut frac = 0u32;
    for i in 0..n.ndigits {
        let d = i16::from_be_bytes([n.digits[2 * i], n.digits[2 * i + 1]]) as i128;
        let pos = n.weight as i32 - i as i32;
        if pos >= 0 {
            v = v
                .checked_mul(10_000)
                .and_then(|v| v.checked_add(d))
                .ok_or_else(too_large)?;
            continue;
        }
        // Leading zero groups of a fraction (0.0000xxxx) precede the first stored group.
        if i == 0 {
            frac += 4 * (-pos - 1) as u32;
            if frac > scale {
                return Err(too_fine());
            }
        }
        let room = scale - frac;
        if room >= 4 {
            v = v
                .checked_mul(10_000)
                .and_then(|v| v.checked_add(d))
                .ok_or_else(too_large)?;
            frac += 4;
        } else {
            // Only the first `room` digits of this group fit the scale; the rest must be 0.
            let cut = POW10[(4 - room) as usize];
            if d % cut != 0 {
                return Err(too_fine());
            }
            v = v
                .checked_mul(POW10[room as usize])
                .and_then(|v| v.checked_add(d / cut))
                .ok_or_else(too_large)?;
            frac = scale;
        }
    }
    if n.ndigits > 0 && n.weight as i32 >= n.ndigits as i32 {
        // Integer groups after the last stored one are zeros (e.g. 1000000 = [100] weight 1).
        let missing = (n.weight as i32 - n.ndigits as i32 + 1) as u32;
        v = v
            .checked_mul(10_000i128.checked_pow(missing).ok_or_else(too_large)?)
            .ok_or_else(too_large)?;
    }
    let pad = (scale - frac) as usize;
    v = v
        .checked_mul(*POW10.get(pad).ok_or_else(too_large)?)
        .ok_or_else(too_large)?;
    // (Arrow's decimals have at most 38 digits, and 10³⁸ is the table's last entry.)
    if POW10
        .get(precision as usize)
        .is_some_and(|&limit| v.unsigned_abs() >= limit as u128)
    {
        return Err(too_large());
    }
    Ok(if n.sign == 0x4000 { -v } else { v })
}

/// A numeric value as an exact decimal string (`-12.3400`, with the value's display scale).
pub fn numeric_to_string(b: &[u8]) -> Result<String, String> {
    let sign = be_i16(b, 4)? as u16;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    let n = parse_numeric(b)?;
    let digit = |i: i32| -> i16 {
        if i < 0 || i as usize >= n.ndigits {
            0
        } else {
            let i = i as usize;
            i16::from_be_bytes([n.digits[2 * i], n.digits[2 * i + 1]])
        }
    };
    let mut s = String::new();
    if n.sign == 0x4000 {
        s.push('-');
    }
    if n.weight < 0 {
        s.push('0');
    } else {
        for i in 0..=n.weight as i32 {
            let d = digit(i);
            if i == 0 {
                s.push_str(&d.to_string());
            } else {
                s.push_str(&format!("{d:04}"));
            }
        }
    }
    if n.dscale > 0 {
        s.push('.');
        let mut frac = String::new();
        let mut i = n.weight as i32 + 1;
        while frac.len() < n.dscale as usize {
            frac.push_str(&format!("{:04}", digit(i)));
            i += 1;
        }
        frac.truncate(n.dscale as usize);
        s.push_str(&frac);
    }
    Ok(s)
}

fn inet_to_string(b: &[u8]) -> Result<String, String> {
    if b.len() < 4 {
        return Err("truncated inet".into());
    }
    let (family, bits, is_cidr, nb) = (b[0], b[1], b[2] != 0, b[3] as usize);
    let addr = b.get(4..4 + nb).ok_or("truncated inet")?;
    let (text, max) = match family {
        2 => {
            let a: [u8; 4] = addr.try_into().map_err(|_| "bad IPv4 length")?;
            (Ipv4Addr::from(a).to_string(), 32)
        }
        3 => {
            let a: [u8; 16] = addr.try_into().map_err(|_| "bad IPv6 length")?;
            (Ipv6Addr::from(a).to_string(), 128)
        }
        f => return Err(format!("unknown inet family {f}")),
    };
    Ok(if is_cidr || bits != max {
        format!("{text}/{bits}")
    } else {
        text
    })
}

/// Decode a one-dimensional array's elements into `inner`; returns their count.
fn decode_array(b: &[u8], inner: &mut Decoder) -> Result<usize, String> {
    let rd = |at: usize| -> Result<i32, String> {
        b.get(at..at + 4)
            .map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
            .ok_or_else(|| "truncated array".to_string())
    };
    let ndim = rd(0)?;
    if ndim == 0 {
        return Ok(0);
    }
    if ndim != 1 {
        return Err(format!(
            "{ndim}-dimensional array; only one-dimensional arrays map to a list (cast the column to text)"
        ));
    }
    let len = rd(12)?;
    let mut at = 20;
    for _ in 0..len {
        let l = rd(at)?;
        at += 4;
        if l < 0 {
            inner.append(None)?;
        } else {
            let l = l as usize;
            let v = b.get(at..at + l).ok_or("truncated array element")?;
            inner.append(Some(v))?;
            at += l;
        }
    }
    Ok(len as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After the first batch, builders start at the size the last batch needed: the arrays of
    /// later batches hold their values without the slack of growing by doubling (which also
    /// copied every buffer once per batch), and their content is unchanged.
    #[test]
    fn batches_after_the_first_are_built_in_buffers_of_their_size() {
        let rows = 10_000;
        let mut ints = Decoder::new(&ColKind::I64, 16, false);
        let mut text = Decoder::new(&ColKind::Text, 16, false);
        for batch in 0..3i64 {
            for i in 0..rows as i64 {
                ints.append(Some(&(batch * 1_000_000 + i).to_be_bytes()))
                    .unwrap();
                let v = format!("value {i} of batch {batch}");
                text.append((i % 7 != 0).then_some(v.as_bytes())).unwrap();
            }
            let a = ints.finish().unwrap();
            let t = ints_and_text_check(&a, &text.finish().unwrap(), batch, rows);
            if batch > 0 {
                // 10,000 i64 values: 80,000 bytes (allocations round to 64).
                assert!(
                    a.to_data().buffers()[0].capacity() < 80_064 + 64,
                    "{}",
                    a.to_data().buffers()[0].capacity()
                );
                // Text bytes: at most an eighth more than the batch before needed.
                let values = t.to_data().buffers()[1].clone();
                assert!(
                    values.capacity() <= values.len() + values.len() / 8 + 128,
                    "{} of {}",
                    values.capacity(),
                    values.len()
                );
            }
        }
    }

    fn ints_and_text_check(a: &ArrayRef, t: &ArrayRef, batch: i64, rows: usize) -> StringArray {
        let a = a.as_any().downcast_ref::<Int64Array>().unwrap();
        let t = t.as_any().downcast_ref::<StringArray>().unwrap().clone();
        assert_eq!((a.len(), t.len()), (rows, rows));
        for i in [0usize, 1, 6, 7, rows - 1] {
            assert_eq!(a.value(i), batch * 1_000_000 + i as i64);
            assert_eq!(t.is_null(i), i % 7 == 0);
            if i % 7 != 0 {
                assert_eq!(t.value(i), format!("value {i} of batch {batch}"));
            }
        }
        t
    }

    fn numeric(weight: i16, sign: u16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend((digits.len() as i16).to_be_bytes());
        v.extend(weight.to_be_bytes());
        v.extend(sign.to_be_bytes());
        v.extend(dscale.to_be_bytes());
        for d in digits {
            v.extend(d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numerics() {
        // 12345.678 = [1, 2345, 6780] weight 1, dscale 3
        let b = numeric(1, 0, 3, &[1, 2345, 6780]);
        assert_eq!(numeric_to_i128(&b, 10, 3).unwrap(), 12_345_678);
        assert_eq!(numeric_to_i128(&b, 12, 5).unwrap(), 1_234_567_800);
        assert!(numeric_to_i128(&b, 10, 2).is_err());
        assert!(numeric_to_i128(&b, 5, 3).is_err());
        assert_eq!(numeric_to_string(&b).unwrap(), "12345.678");
        // -0.0042 = [42] weight -1, dscale 4
        let b = numeric(-1, 0x4000, 4, &[42]);
        assert_eq!(numeric_to_i128(&b, 5, 4).unwrap(), -42);
        assert_eq!(numeric_to_string(&b).unwrap(), "-0.0042");
        // 1000000 = [100] weight 1 (100 × 10000)
        let b = numeric(1, 0, 0, &[100]);
        assert_eq!(numeric_to_i128(&b, 10, 2).unwrap(), 100_000_000);
        assert_eq!(numeric_to_string(&b).unwrap(), "1000000");
        let b = numeric(0, 0, 0, &[]);
        assert_eq!(numeric_to_i128(&b, 10, 2).unwrap(), 0);
        assert_eq!(numeric_to_string(&b).unwrap(), "0");
        // 38 significant digits: 12345678901234567890.123456789012345678
        let b = numeric(
            4,
            0,
            18,
            &[1234, 5678, 9012, 3456, 7890, 1234, 5678, 9012, 3456, 7800],
        );
        assert_eq!(
            numeric_to_i128(&b, 38, 18).unwrap(),
            12345678901234567890123456789012345678
        );
        // 0.00000001 = [1] weight -2 (0.0000 0001)
        let b = numeric(-2, 0, 8, &[1]);
        assert_eq!(numeric_to_i128(&b, 10, 8).unwrap(), 1);
        assert!(numeric_to_i128(&b, 10, 7).is_err());
        assert!(numeric_to_i128(&numeric(0, 0xC000, 0, &[]), 10, 2).is_err());
    }

    /// The unscaled value at `scale` by way of the decimal text, or `None` where it does not
    /// fit (more fractional digits, or `precision` exceeded).
    fn by_text(b: &[u8], precision: u8, scale: u32) -> Option<i128> {
        let t = numeric_to_string(b).unwrap();
        let (neg, t) = t
            .strip_prefix('-')
            .map_or((false, t.as_str()), |r| (true, r));
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let frac = frac.trim_end_matches('0');
        if frac.len() > scale as usize {
            return None;
        }
        let digits = format!("{int}{frac:0<width$}", width = scale as usize);
        let v: i128 = digits.parse().ok()?;
        if v.unsigned_abs() >= 10u128.pow(precision as u32) {
            return None;
        }
        Some(if neg { -v } else { v })
    }

    #[test]
    fn numerics_agree_with_their_text_at_every_scale() {
        // A small xorshift: many shapes of digit groups, weights and scales, reproducibly.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let nd = (next() % 6) as usize;
            let digits: Vec<i16> = (0..nd)
                .map(|i| {
                    let d = (next() % 10_000) as i16;
                    // PostgreSQL strips zero groups at both ends.
                    if (i == 0 || i == nd - 1) && d == 0 {
                        1
                    } else {
                        d
                    }
                })
                .collect();
            let weight = (next() % 9) as i16 - 4;
            let sign = if next() % 2 == 0 { 0 } else { 0x4000 };
            let dscale = (4 * (nd as i16 - weight - 1)).max(0) as u16;
            let b = numeric(weight, sign, dscale, &digits);
            let precision = 1 + (next() % 38) as u8;
            let scale = (next() % (precision as u64 + 1)) as u32;
            let want = by_text(&b, precision, scale);
            let got = numeric_to_i128(&b, precision, scale as i8).ok();
            assert_eq!(
                got, want,
                "{digits:?} weight {weight} sign {sign:x} as ({precision},{scale})"
            );
        }
    }

    #[test]
    fn text_is_checked_once_per_batch_and_never_passes_invalid_utf8() {
        let mut d = Decoder::new(&ColKind::Text, 4, false);
        for v in [Some("grüße".as_bytes()), None, Some(b"plain".as_slice())] {
            d.append(v).unwrap();
        }
        let a = d.finish().unwrap();
        let a = a.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(
            a.iter().collect::<Vec<_>>(),
            vec![Some("grüße"), None, Some("plain")]
        );
        // Invalid bytes, and a character split across two values (the concatenation is
        // valid UTF-8, the values are not).
        for vals in [
            vec![b"ok".as_slice(), b"\xff"],
            vec!["ü".as_bytes()[..1].as_ref(), &"ü".as_bytes()[1..]],
        ] {
            for v in vals {
                d.append(Some(v)).unwrap();
            }
            let e = d.finish().expect_err("not UTF-8");
            assert!(e.contains("not UTF-8"), "{e}");
        }
    }

    #[test]
    fn inet() {
        assert_eq!(
            inet_to_string(&[2, 32, 0, 4, 10, 0, 0, 1]).unwrap(),
            "10.0.0.1"
        );
        assert_eq!(
            inet_to_string(&[2, 24, 1, 4, 10, 0, 0, 0]).unwrap(),
            "10.0.0.0/24"
        );
    }
}
