//! Exact arithmetic on ordering keys: the split points of `partitions: N` and the bottom of a
//! `lookback` window.
//!
//! Keys travel as the text the database prints them in (and parses back). Integer, decimal,
//! date and timestamp keys are parsed into an exact integer — the value, the unscaled decimal,
//! days or microseconds since 1970 — and computed with `i128`, so a BIGINT near 2^63 or a
//! DECIMAL(38,0) far above 2^53 splits exactly. Only float keys compute in `f64` (they are
//! inexact to begin with, and never order a resumable read).

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime};

use super::config::Lookback;

/// How the values of a key column compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// Integers of any width (and BIT, YEAR, oid).
    Int,
    /// Exact decimals with this many fractional digits.
    Decimal(u8),
    /// Floating point: splits a sharded read, never orders a resumable one.
    Float,
    /// Dates.
    Date,
    /// Timestamps, microseconds; `zoned`: with time zone (printed in UTC with the dialect's
    /// suffix).
    Timestamp {
        /// Whether the column has a time zone.
        zoned: bool,
    },
    /// Anything else (text, uuid, …): may order a read, cannot be split or shifted.
    Other,
}

/// A parsed key: exact, or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Exact(i128),
    Float(f64),
}

/// Days from 0001-01-01 (day 1 of the common era) to 1970-01-01.
const UNIX_EPOCH_DAYS_CE: i128 = 719_163;
const MICROS_PER_DAY: u128 = 86_400_000_000;

impl KeyType {
    /// Whether keys of this type can be split and shifted.
    pub fn computes(self) -> bool {
        self != KeyType::Other
    }

    fn parse(self, s: &str) -> Option<Num> {
        let s = s.trim();
        match self {
            KeyType::Int => parse_decimal(s, 0).map(Num::Exact),
            KeyType::Decimal(scale) => parse_decimal(s, scale).map(Num::Exact),
            KeyType::Float => s
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(Num::Float),
            KeyType::Date => parse_date(s).map(Num::Exact),
            KeyType::Timestamp { .. } => parse_timestamp(s).map(Num::Exact),
            KeyType::Other => None,
        }
    }

    fn format(self, v: Num, utc_suffix: &str) -> Option<String> {
        Some(match (self, v) {
            (KeyType::Float, Num::Float(f)) => f.to_string(),
            (KeyType::Int, Num::Exact(v)) => v.to_string(),
            (KeyType::Decimal(scale), Num::Exact(v)) => format_decimal(v, scale),
            (KeyType::Date, Num::Exact(days)) => {
                let ce = i32::try_from(days.checked_add(UNIX_EPOCH_DAYS_CE)?).ok()?;
                NaiveDate::from_num_days_from_ce_opt(ce)?
                    .format("%Y-%m-%d")
                    .to_string()
            }
            (KeyType::Timestamp { zoned }, Num::Exact(us)) => {
                let t = DateTime::from_timestamp_micros(i64::try_from(us).ok()?)?;
                let s = t.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
                if zoned {
                    s + utc_suffix
                } else {
                    s
                }
            }
            _ => return None,
        })
    }

    /// The `n - 1` points splitting [`lo`, `hi`] into `n` parts of equal width, in order
    /// (equal points when the range is narrower than `n`); none when `hi < lo`. `Err`: the
    /// keys are not of this type, or the type cannot be split.
    pub fn split_points(
        self,
        lo: &str,
        hi: &str,
        n: u32,
        utc_suffix: &str,
    ) -> Result<Vec<String>, String> {
        let a = self.parse(lo).ok_or_else(|| self.unparsable(lo))?;
        let b = self.parse(hi).ok_or_else(|| self.unparsable(hi))?;
        let points: Vec<Num> = match (a, b) {
            (Num::Exact(a), Num::Exact(b)) if a <= b => {
                let width = b.abs_diff(a);
                let n = n as u128;
                // Integers and decimals round a + width·k/n half away from zero, as PostgreSQL's
                // cast of the numeric expression the readers used before did (shard boundaries
                // of existing jobs stay where they were); dates and timestamps round down.
                let round = matches!(self, KeyType::Int | KeyType::Decimal(_));
                (1..n)
                    .map(|k| {
                        // a + ⌊width·k/n⌋ without overflow: width·k/n = (width/n)·k + (width%n)·k/n.
                        let step = width / n * k + width % n * k / n;
                        let mut p = a.wrapping_add_unsigned(step);
                        let rem = width % n * k % n;
                        if round && (2 * rem > n || (2 * rem == n && p >= 0)) {
                            p += 1;
                        }
                        Num::Exact(p)
                    })
                    .collect()
            }
            (Num::Float(a), Num::Float(b)) if a <= b => (1..n)
                .map(|k| Num::Float(a + (b - a) * k as f64 / n as f64))
                .collect(),
            _ => Vec::new(),
        };
        points
            .into_iter()
            .map(|p| {
                self.format(p, utc_suffix)
                    .ok_or_else(|| self.unparsable(lo))
            })
            .collect()
    }

    /// Of `points` (from [`KeyType::split_points`]), those strictly between `lo` and `hi`,
    /// without repeats: each one a real boundary between two stretches of keys.
    pub fn distinct(self, lo: &str, hi: &str, points: Vec<String>) -> Vec<String> {
        let (mut last, top) = (self.parse(lo), self.parse(hi));
        let mut out: Vec<String> = Vec::new();
        for p in points {
            let v = self.parse(&p);
            if v != last && v != top {
                out.push(p);
                last = v;
            }
        }
        out
    }

    /// `key` minus `lookback`: the bottom of the window re-read below a committed cursor. A
    /// duration applies to dates and timestamps (a date goes back by whole days, at least as
    /// far as the duration), a number to integers, decimals and floats (rounded up to the
    /// key's scale, so the window is never narrower than asked).
    pub fn minus(self, key: &str, lookback: &Lookback, utc_suffix: &str) -> Result<String, String> {
        let v = self.parse(key).ok_or_else(|| self.unparsable(key))?;
        let shifted = match (self, lookback, v) {
            (KeyType::Date, Lookback::Duration(d), Num::Exact(days)) => {
                let back = duration_micros(d).div_ceil(MICROS_PER_DAY);
                checked_sub(days, back)
            }
            (KeyType::Timestamp { .. }, Lookback::Duration(d), Num::Exact(us)) => {
                checked_sub(us, duration_micros(d))
            }
            (KeyType::Int | KeyType::Decimal(_), Lookback::Amount(a), Num::Exact(x)) => {
                let scale = match self {
                    KeyType::Decimal(s) => s,
                    _ => 0,
                };
                // ⌈amount⌉ at the key's scale: the negated floor of the negated amount.
                let neg = parse_decimal(&format!("-{a}"), scale);
                neg.and_then(|n| x.checked_add(n)).map(Num::Exact)
            }
            (KeyType::Float, Lookback::Amount(a), Num::Float(x)) => {
                a.parse::<f64>().ok().map(|a| Num::Float(x - a))
            }
            _ => return Err(format!("does not fit a {} key", self.describe())),
        };
        shifted
            .and_then(|v| self.format(v, utc_suffix))
            .ok_or_else(|| format!("`{key}` minus {lookback} is out of range"))
    }

    fn unparsable(self, v: &str) -> String {
        match self {
            KeyType::Other => "its type cannot be split or shifted".to_string(),
            _ => format!("`{v}` is not a {} value", self.describe()),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            KeyType::Int => "integer",
            KeyType::Decimal(_) => "decimal",
            KeyType::Float => "floating-point",
            KeyType::Date => "date",
            KeyType::Timestamp { .. } => "timestamp",
            KeyType::Other => "non-numeric",
        }
    }
}

fn duration_micros(d: &Duration) -> u128 {
    d.as_micros()
}

fn checked_sub(v: i128, by: u128) -> Option<Num> {
    i128::try_from(by)
        .ok()
        .and_then(|by| v.checked_sub(by))
        .map(Num::Exact)
}

/// A decimal number (`-12.5`, `+3`, `1.000`) as an integer of `scale` fractional digits,
/// rounded down (toward −∞) when it has more; `None` if it is not one or passes `i128`.
pub fn parse_decimal(s: &str, scale: u8) -> Option<i128> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let kept = frac.get(..scale as usize).unwrap_or(frac);
    let dropped = frac.get(scale as usize..).unwrap_or("");
    let mut v: i128 = 0;
    let padding = std::iter::repeat_n(b'0', scale as usize - kept.len());
    for d in int.bytes().chain(kept.bytes()).chain(padding) {
        v = v.checked_mul(10)?.checked_add((d - b'0') as i128)?;
    }
    let inexact = dropped.bytes().any(|b| b != b'0');
    Some(match (neg, inexact) {
        (true, true) => -v - 1,
        (true, false) => -v,
        (false, _) => v,
    })
}

fn format_decimal(v: i128, scale: u8) -> String {
    let digits = v.unsigned_abs().to_string();
    let sign = if v < 0 { "-" } else { "" };
    if scale == 0 {
        return format!("{sign}{digits}");
    }
    let s = scale as usize;
    let digits = format!("{digits:0>width$}", width = s + 1);
    let (int, frac) = digits.split_at(digits.len() - s);
    format!("{sign}{int}.{frac}")
}

/// Days since 1970-01-01 of `YYYY-MM-DD` (a time after it is ignored).
fn parse_date(s: &str) -> Option<i128> {
    let day = match s.get(10..) {
        Some("") => s,
        Some(rest) if rest.starts_with([' ', 'T']) => &s[..10],
        _ => return None,
    };
    let d = NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some(d.num_days_from_ce() as i128 - UNIX_EPOCH_DAYS_CE)
}

/// Microseconds since 1970-01-01 UTC of a timestamp as databases print them:
/// `YYYY-MM-DD[ T]HH:MM:SS[.ffffff][Z|±HH[:MM]]`, or a bare date (midnight). Without an offset
/// the time is taken as is (naive, or UTC).
fn parse_timestamp(s: &str) -> Option<i128> {
    let s = s.replacen('T', " ", 1);
    let s = match s.strip_suffix('Z') {
        Some(t) => format!("{t}+00"),
        None => s,
    };
    if let Ok(t) = DateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f%#z") {
        return Some(t.timestamp_micros() as i128);
    }
    if let Ok(t) = NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S%.f") {
        return Some(t.and_utc().timestamp_micros() as i128);
    }
    let d = NaiveDate::parse_from_str(&s, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_micros() as i128)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(t: KeyType, lo: &str, hi: &str, n: u32) -> Vec<String> {
        t.split_points(lo, hi, n, "+00").unwrap()
    }

    #[test]
    fn decimals_parse_exactly_and_round_down() {
        assert_eq!(parse_decimal("-12.5", 2), Some(-1250));
        assert_eq!(parse_decimal("3", 2), Some(300));
        assert_eq!(parse_decimal("1.239", 2), Some(123));
        assert_eq!(parse_decimal("-1.231", 2), Some(-124));
        assert_eq!(parse_decimal("7.000", 0), Some(7));
        assert_eq!(parse_decimal("abc", 0), None);
        assert_eq!(parse_decimal("", 0), None);
        assert_eq!(parse_decimal("1e5", 0), None);
        assert_eq!(format_decimal(-5, 3), "-0.005");
        assert_eq!(format_decimal(12345, 2), "123.45");
        assert_eq!(format_decimal(-7, 0), "-7");
    }

    /// Integer and decimal points round half away from zero, as PostgreSQL's numeric cast (the
    /// values were checked against PostgreSQL: `(lo::numeric + (hi-lo)*k/n)::bigint`).
    #[test]
    fn integer_and_decimal_points_round_as_postgresql_did() {
        assert_eq!(split(KeyType::Int, "0", "10", 4), ["3", "5", "8"]);
        assert_eq!(split(KeyType::Int, "-10", "0", 4), ["-8", "-5", "-3"]);
        assert_eq!(
            split(KeyType::Decimal(1), "1", "2", 4),
            ["1.3", "1.5", "1.8"]
        );
        // Dates round down (PostgreSQL's integer division of days).
        assert_eq!(
            split(KeyType::Date, "2026-01-01", "2026-01-11", 4),
            ["2026-01-03", "2026-01-06", "2026-01-08"]
        );
    }

    /// BIGINT keys near 2^63: every point exact (f64 would round them to multiples of 1024).
    #[test]
    fn bigint_split_points_near_2_63_are_exact() {
        let hi = i64::MAX;
        let lo = i64::MAX - 8;
        let p = split(KeyType::Int, &lo.to_string(), &hi.to_string(), 4);
        assert_eq!(
            p,
            [
                (i64::MAX - 6).to_string(),
                (i64::MAX - 4).to_string(),
                (i64::MAX - 2).to_string()
            ]
        );
        // The whole BIGINT range, and a lookback from the top.
        let p = split(
            KeyType::Int,
            &i64::MIN.to_string(),
            &i64::MAX.to_string(),
            2,
        );
        assert_eq!(p, ["-1"]);
        let lb = Lookback::Amount("3".into());
        assert_eq!(
            KeyType::Int.minus(&i64::MAX.to_string(), &lb, "").unwrap(),
            (i64::MAX - 3).to_string()
        );
        // BIGINT UNSIGNED's top (read as DECIMAL(20,0)).
        let p = split(
            KeyType::Decimal(0),
            "18446744073709551611",
            "18446744073709551615",
            4,
        );
        assert_eq!(
            p,
            [
                "18446744073709551612",
                "18446744073709551613",
                "18446744073709551614"
            ]
        );
    }

    /// DECIMAL(38,0) keys far above 2^53, and scaled decimals.
    #[test]
    fn decimal38_split_points_and_lookback_are_exact() {
        let hi = "99999999999999999999999999999999999999";
        let lo = "99999999999999999999999999999999999990";
        let p = split(KeyType::Decimal(0), lo, hi, 3);
        assert_eq!(
            p,
            [
                "99999999999999999999999999999999999993",
                "99999999999999999999999999999999999996"
            ]
        );
        // From the bottom of DECIMAL(38,0) to its top: the width passes i128, the points do not.
        let p = split(KeyType::Decimal(0), &format!("-{hi}"), hi, 2);
        assert_eq!(p, ["0"]);
        let lb = Lookback::Amount("1".into());
        assert_eq!(
            KeyType::Decimal(0).minus(hi, &lb, "").unwrap(),
            "99999999999999999999999999999999999998"
        );
        // 2^53 + 1 is not a float: f64 arithmetic would give 9007199254740992.
        let lb = Lookback::Amount("2".into());
        assert_eq!(
            KeyType::Decimal(0)
                .minus("9007199254740995", &lb, "")
                .unwrap(),
            "9007199254740993"
        );
        let lb = Lookback::Amount("0.015".into());
        assert_eq!(KeyType::Decimal(2).minus("10.00", &lb, "").unwrap(), "9.98");
        assert_eq!(
            split(KeyType::Decimal(2), "0.00", "1.00", 4),
            ["0.25", "0.50", "0.75"]
        );
        // A fractional lookback on an integer key widens the window to whole numbers.
        let lb = Lookback::Amount("2.5".into());
        assert_eq!(KeyType::Int.minus("10", &lb, "").unwrap(), "7");
    }

    #[test]
    fn dates_and_timestamps() {
        let p = split(KeyType::Date, "2026-01-01", "2026-01-09", 4);
        assert_eq!(p, ["2026-01-03", "2026-01-05", "2026-01-07"]);
        let ts = KeyType::Timestamp { zoned: true };
        let p = split(ts, "2026-01-01 00:00:00+00", "2026-01-01 01:00:00+01", 2);
        assert_eq!(p, ["2026-01-01 00:00:00.000000+00"]);
        let p = split(
            ts,
            "2026-01-01 00:00:00+00",
            "2026-01-01 00:00:01.000001+00",
            2,
        );
        assert_eq!(p, ["2026-01-01 00:00:00.500000+00"]);
        let naive = KeyType::Timestamp { zoned: false };
        let hour = Lookback::Duration(Duration::from_secs(3600));
        assert_eq!(
            naive.minus("2026-01-01 00:16:40.5", &hour, "").unwrap(),
            "2025-12-31 23:16:40.500000"
        );
        assert_eq!(
            ts.minus("2026-01-01 02:46:40+00", &hour, "+00").unwrap(),
            "2026-01-01 01:46:40.000000+00"
        );
        assert_eq!(
            ts.minus("2026-01-01T02:46:40Z", &hour, "").unwrap(),
            "2026-01-01 01:46:40.000000"
        );
        // A date goes back by whole days, at least the duration.
        assert_eq!(
            KeyType::Date.minus("2026-01-01", &hour, "").unwrap(),
            "2025-12-31"
        );
        let day = Lookback::Duration(Duration::from_secs(86_400));
        assert_eq!(
            KeyType::Date.minus("2026-01-01", &day, "").unwrap(),
            "2025-12-31"
        );
        assert_eq!(
            KeyType::Date.minus("1970-01-01", &day, "").unwrap(),
            "1969-12-31"
        );
        // Types that do not fit.
        assert!(KeyType::Int.minus("5", &hour, "").is_err());
        assert!(naive
            .minus("2026-01-01", &Lookback::Amount("1".into()), "")
            .is_err());
        assert!(KeyType::Other.split_points("a", "b", 2, "").is_err());
        assert!(KeyType::Int.split_points("a", "5", 2, "").is_err());
    }

    #[test]
    fn distinct_points_and_empty_ranges() {
        // A range narrower than the parts: no repeated or outer points.
        let distinct = |lo, hi| KeyType::Int.distinct(lo, hi, split(KeyType::Int, lo, hi, 4));
        assert!(distinct("1", "2").is_empty());
        assert_eq!(distinct("1", "3"), ["2"]);
        assert_eq!(distinct("0", "8"), ["2", "4", "6"]);
        assert!(split(KeyType::Int, "5", "1", 3).is_empty());
        assert_eq!(split(KeyType::Float, "0", "1", 4), ["0.25", "0.5", "0.75"]);
    }
}
