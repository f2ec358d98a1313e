//! Helpers for typed connector configuration: [`from_config`] turns a JSON config mapping into a
//! `#[serde(deny_unknown_fields)]` struct with errors that carry the key path, and the
//! [`ByteSize`] / [`Duration`](DurationValue) value types accept human forms (`256MB`, `30s`).

use std::fmt;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::secrets::Secret;

/// Deserialize a connector's typed config. Errors are [`crate::ErrorKind::Config`] with the key
/// path relative to `value` (see [`Error::key_path`]); the job loader adds file and line.
pub fn from_config<T: DeserializeOwned>(value: &Value) -> Result<T> {
    let null_as_empty;
    let value = if value.is_null() {
        null_as_empty = Value::Object(Default::default());
        &null_as_empty
    } else {
        value
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let msg = crate::secrets::redact(&e.inner().to_string()).into_owned();
        let err = Error::config(msg);
        if path == "." {
            err
        } else {
            err.with_key_path(path)
        }
    })
}

/// The allowed `batch_size` (rows per batch) of every built-in reader: big enough for any
/// throughput gain, small enough that batch size × `channel_depth` stays a sane amount of memory.
pub const BATCH_SIZE_RANGE: std::ops::RangeInclusive<usize> = 1..=1_000_000;

/// Check a rows-per-batch option against [`BATCH_SIZE_RANGE`]; the error names `key` (relative to
/// the connector's config) and the range.
pub fn check_batch_size(key: &str, value: usize) -> Result<()> {
    if BATCH_SIZE_RANGE.contains(&value) {
        return Ok(());
    }
    Err(Error::config(format!(
        "must be between {} and {} (rows per batch), got {value}",
        BATCH_SIZE_RANGE.start(),
        BATCH_SIZE_RANGE.end()
    ))
    .with_key_path(key))
}

/// A number of bytes, written as an integer or with a unit: `512KB`, `256MB`, `1GiB`, `10 MiB`.
/// Decimal units (KB, MB, GB, TB) are powers of 1000, binary units (KiB, MiB, GiB, TiB) of 1024.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parse a size string.
    pub fn parse(s: &str) -> std::result::Result<ByteSize, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid size `{s}`: expected e.g. `256MB` or `1GiB`"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            u => {
                return Err(format!(
                    "invalid size unit `{u}` in `{s}`: use B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
                ))
            }
        };
        Ok(ByteSize((n * mult as f64) as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        if b >= 1e9 {
            write!(f, "{:.1} GB", b / 1e9)
        } else if b >= 1e6 {
            write!(f, "{:.1} MB", b / 1e6)
        } else if b >= 1e3 {
            write!(f, "{:.1} KB", b / 1e3)
        } else {
            write!(f, "{} B", self.0)
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 1048576, `256MB` or `1GiB`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// A duration, written as seconds (`30`) or with units (`30s`, `5m`, `1h 30m`, `250ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as 30, `30s`, `5m` or `1h`")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<DurationValue, E> {
                Ok(DurationValue(Duration::from_secs(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<DurationValue, E> {
                u64::try_from(v)
                    .map(|v| DurationValue(Duration::from_secs(v)))
                    .map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<DurationValue, E> {
                Duration::try_from_secs_f64(v)
                    .map(DurationValue)
                    .map_err(|_| E::custom("invalid duration"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<DurationValue, E> {
                humantime::parse_duration(v)
                    .map(DurationValue)
                    .map_err(|e| E::custom(format!("invalid duration `{v}`: {e}")))
            }
        }
        d.deserialize_any(V)
    }
}

impl Serialize for DurationValue {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// TLS mode, with libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// PostgreSQL: TLS if the server offers it, unverified (the default). MySQL: no TLS.
    Prefer,
    /// TLS required; the certificate is not verified.
    Require,
    /// TLS required; the certificate must chain to a trusted root (`sslrootcert`, else the
    /// bundled Mozilla roots).
    VerifyCa,
    /// As `verify-ca`, and the host name must match the certificate.
    VerifyFull,
}

/// The connection keys of a SQL reader's `source.config`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ConnectionOptions {
    /// `scheme://user:password@host:port/database`; the keys below override its parts.
    pub url: Option<Secret>,
    /// Host (default 127.0.0.1).
    pub host: Option<String>,
    /// Port (default: the database's).
    pub port: Option<u16>,
    /// User.
    pub user: Option<String>,
    /// Password; use `${env:…}` or `${file:…}`.
    pub password: Option<Secret>,
    /// Database.
    pub database: Option<String>,
    /// TLS mode (PostgreSQL: overrides the URL's `sslmode`).
    pub sslmode: Option<SslMode>,
    /// PEM file of trusted roots for `verify-ca` / `verify-full`.
    pub sslrootcert: Option<String>,
    /// Connection timeout (default 30s).
    pub connect_timeout: Option<DurationValue>,
}

impl ConnectionOptions {
    /// Checks that need no I/O: something says where to connect, and a URL has one of
    /// `schemes` (`postgres://`); `example` shows a URL in messages.
    pub fn check(&self, schemes: &[&str], example: &str) -> Result<()> {
        if self.url.is_none() && self.host.is_none() && self.database.is_none() {
            return Err(
                Error::config(format!("set `url` ({example}) or `host` and `database`"))
                    .with_key_path("url"),
            );
        }
        if let Some(u) = &self.url {
            if !schemes.iter().any(|s| u.expose().starts_with(s)) {
                return Err(
                    Error::config(format!("must start with {}", schemes.join(" or ")))
                        .with_key_path("url"),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        size: ByteSize,
        every: DurationValue,
        #[serde(default)]
        items: Vec<Item>,
    }
    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: String,
    }

    #[test]
    fn sizes_and_durations() {
        let c: Cfg = from_config(&serde_json::json!({"size": "256MB", "every": "1m 30s"})).unwrap();
        assert_eq!(c.size, ByteSize(256_000_000));
        assert_eq!(c.every.0, Duration::from_secs(90));
        assert_eq!(ByteSize::parse("1GiB").unwrap(), ByteSize(1 << 30));
        assert!(ByteSize::parse("12 parsecs").is_err());
    }

    #[test]
    fn errors_carry_key_paths() {
        let e = from_config::<Cfg>(
            &serde_json::json!({"size": 1, "every": 1, "items": [{"name": "a"}, {"nme": "b"}]}),
        )
        .unwrap_err();
        assert_eq!(e.key_path(), Some("items[1].nme"));
        assert!(e.to_string().contains("unknown field `nme`"), "{e}");
        let e = from_config::<Cfg>(&serde_json::json!({"size": true, "every": 1})).unwrap_err();
        assert_eq!(e.key_path(), Some("size"));
        let e = from_config::<Cfg>(&serde_json::json!({"every": 1})).unwrap_err();
        assert_eq!(e.key_path(), None);
        assert!(e.to_string().contains("missing field `size`"), "{e}");
    }
}
