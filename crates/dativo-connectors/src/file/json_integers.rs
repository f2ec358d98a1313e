//! Finds JSON integers too wide for int64 in the rows used to infer a JSON Lines schema.
//!
//! arrow's inference turns a column holding such an integer into float64, which rounds it
//! (`9223372036854775808` and `9223372036854775809` both load as `9.223372036854776e18`), and
//! serde_json, which it uses, cannot tell `1e20` from a 21-digit integer. So the inference rows
//! are scanned here a second time, as text: a literal without `.`/`e` that does not parse as an
//! `i64` is *wide*. The caller decides what the column becomes.

use std::collections::HashMap;
use std::io::{self, BufRead};

/// What the inference rows hold in one top-level field.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct FieldNumbers {
    /// The first integer literal too wide for int64, as written.
    pub wide: Option<String>,
    /// Whether a wide integer sits inside a nested object or array of the field.
    pub nested: bool,
    /// Whether the field also holds numbers with a fraction or an exponent.
    pub fractional: bool,
    /// The most significant digits of any wide integer in the field.
    pub max_digits: usize,
}

/// Scan the first `records` JSON values of `input`; the fields holding a wide integer, by name.
pub(super) fn wide_integer_fields(
    input: impl BufRead,
    records: usize,
) -> io::Result<HashMap<String, FieldNumbers>> {
    let mut scan = Scan::default();
    for line in input.split(b'\n') {
        scan.line(&line?);
        if scan.records >= records {
            break;
        }
    }
    let mut fields = scan.fields;
    fields.retain(|_, f| f.wide.is_some());
    Ok(fields)
}

/// A JSON tokenizer that keeps only what the decision needs. JSON tokens never span a line, so
/// it is fed a line at a time and keeps its nesting across lines.
#[derive(Default)]
struct Scan {
    /// Open containers, innermost last; `true` for an object.
    stack: Vec<bool>,
    /// Inside an object, whether the next string is a key.
    expect_key: bool,
    /// The current key of the top-level object.
    key: String,
    fields: HashMap<String, FieldNumbers>,
    records: usize,
}

impl Scan {
    fn line(&mut self, s: &[u8]) {
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'"' => {
                    let end = string_end(s, i + 1);
                    if self.expect_key && self.stack.last() == Some(&true) {
                        if self.stack.len() == 1 {
                            let raw = &s[i..end.min(s.len())];
                            self.key = serde_json::from_slice(raw).unwrap_or_else(|_| {
                                String::from_utf8_lossy(raw).trim_matches('"').to_string()
                            });
                        }
                        self.expect_key = false;
                    }
                    i = end;
                }
                b'{' => {
                    self.stack.push(true);
                    self.expect_key = true;
                    i += 1;
                }
                b'[' => {
                    self.stack.push(false);
                    i += 1;
                }
                b'}' | b']' => {
                    self.stack.pop();
                    if self.stack.is_empty() {
                        self.records += 1;
                    }
                    i += 1;
                }
                b',' => {
                    self.expect_key = self.stack.last() == Some(&true);
                    i += 1;
                }
                b'-' | b'0'..=b'9' => {
                    let len = s[i..]
                        .iter()
                        .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                        .unwrap_or(s.len() - i);
                    self.number(&s[i..i + len]);
                    i += len;
                }
                _ => i += 1,
            }
        }
    }

    fn number(&mut self, lit: &[u8]) {
        let depth = self.stack.len();
        // Only records that are objects have fields.
        if depth == 0 || !self.stack[0] {
            return;
        }
        let fractional = lit.iter().any(|b| matches!(b, b'.' | b'e' | b'E'));
        let text = std::str::from_utf8(lit).unwrap_or("");
        let wide = !fractional && text.parse::<i64>().is_err();
        if !(wide || depth == 1 && fractional) {
            return;
        }
        let f = match self.fields.get_mut(self.key.as_str()) {
            Some(f) => f,
            None => self.fields.entry(self.key.clone()).or_default(),
        };
        if depth == 1 && fractional {
            f.fractional = true;
        }
        if wide {
            let digits = text.trim_start_matches('-').trim_start_matches('0').len();
            f.max_digits = f.max_digits.max(digits);
            f.nested |= depth > 1;
            if f.wide.is_none() {
                f.wide = Some(text.to_string());
            }
        }
    }
}

/// The index just past the closing quote of a string whose contents start at `i`.
fn string_end(s: &[u8], mut i: usize) -> usize {
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> HashMap<String, FieldNumbers> {
        wide_integer_fields(text.as_bytes(), usize::MAX).unwrap()
    }

    #[test]
    fn finds_wide_integers_by_field() {
        let got = scan(concat!(
            "{\"id\": 1, \"big\": 9223372036854775807, \"f\": 1.5, \"s\": \"12345678901234567890\"}\n",
            "{\"id\": 2, \"big\": 9223372036854775808, \"nest\": {\"x\": [18446744073709551616]}}\n",
            "{\"id\": 3, \"big\": -9223372036854775809, \"f\": 99999999999999999999, \"n\": -0}\n",
        ));
        let mut keys: Vec<&String> = got.keys().collect();
        keys.sort();
        assert_eq!(keys, ["big", "f", "nest"]);
        assert_eq!(got["big"].wide.as_deref(), Some("9223372036854775808"));
        assert!(!got["big"].fractional && !got["big"].nested);
        assert_eq!(got["big"].max_digits, 19);
        assert!(got["f"].fractional);
        assert!(got["nest"].nested);
    }

    #[test]
    fn keys_with_escapes_and_strings_with_braces() {
        let got = scan("{\"a\\\"b\": \"}{,\", \"c\": 18446744073709551616}\n");
        assert_eq!(got.keys().collect::<Vec<_>>(), ["c"]);
        let got = scan("{\"a\\\"b\": 18446744073709551616}\n");
        assert_eq!(got.keys().collect::<Vec<_>>(), ["a\"b"]);
    }

    #[test]
    fn stops_after_the_inference_rows() {
        let text = "{\"a\": 1}\n{\"a\": 18446744073709551616}\n";
        assert!(wide_integer_fields(text.as_bytes(), 1).unwrap().is_empty());
        assert_eq!(wide_integer_fields(text.as_bytes(), 2).unwrap().len(), 1);
    }
}
