//! Detects a CSV quoted field that is never closed.
//!
//! arrow's CSV reader (csv-core underneath) ends an open quoted field at the end of the input
//! without complaint, so `1,"abc⏎2,def⏎3,ghi` loads as one row whose field swallowed the rest of
//! the file. [`QuoteCheck`] wraps the input and follows csv-core's quoting rules: a quote opens a
//! field only at the start of a field (so `5'10"` in an unquoted field is literal, as in
//! RFC 4180); inside, a doubled quote or the escape byte followed by anything stays inside. When
//! the input ends inside a quoted field, the read fails with [`UnterminatedQuote`] *before* the
//! parser sees the end of the input, so the merged row is never emitted.
//!
//! Cost: one pass over the bytes the parser reads anyway, looking only for the quote byte (and
//! the escape byte inside quoted fields) 32 bytes at a time, in a loop the compiler vectorizes.

use std::fmt;
use std::io::{self, Read};

/// The input ended inside a quoted field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct UnterminatedQuote {
    /// Byte offset (from 0) of the quote that opened the field.
    pub offset: u64,
}

impl fmt::Display for UnterminatedQuote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unterminated quoted field: the quote at byte {} is never closed",
            self.offset
        )
    }
}

impl std::error::Error for UnterminatedQuote {}

impl UnterminatedQuote {
    /// The `UnterminatedQuote` carried by an I/O error, if that is what it is.
    pub(super) fn from_io(e: &io::Error) -> Option<UnterminatedQuote> {
        e.get_ref()?.downcast_ref::<UnterminatedQuote>().copied()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Outside a quoted field; `at_field_start`: the byte before is a delimiter, a line end, or
    /// there is none.
    Outside { at_field_start: bool },
    /// Inside a quoted field opened at this offset.
    Quoted(u64),
    /// Inside, right after a quote: it closed the field unless the next byte is a quote too.
    AfterQuote(u64),
    /// Inside, right after the escape byte: the next byte is literal.
    AfterEscape(u64),
}

/// A reader that fails at the end of its input if a CSV quoted field is still open.
pub(super) struct QuoteCheck<R> {
    inner: R,
    delimiter: u8,
    quote: u8,
    /// The escape byte, or the quote when there is none (so one search covers both).
    escape: u8,
    state: State,
    /// Bytes scanned so far.
    pos: u64,
}

impl<R: Read> QuoteCheck<R> {
    /// Wrap `inner`, a CSV file read from its first byte.
    pub(super) fn new(inner: R, delimiter: u8, quote: u8, escape: Option<u8>) -> Self {
        QuoteCheck {
            inner,
            delimiter,
            quote,
            escape: escape.unwrap_or(quote),
            state: State::Outside {
                at_field_start: true,
            },
            pos: 0,
        }
    }

    fn is_boundary(&self, b: u8) -> bool {
        b == self.delimiter || b == b'\n' || b == b'\r'
    }

    /// Where the open quoted field started, if the input so far ends inside one.
    fn open_quote(&self) -> Option<u64> {
        match self.state {
            State::Quoted(at) | State::AfterEscape(at) => Some(at),
            State::Outside { .. } | State::AfterQuote(_) => None,
        }
    }

    fn scan(&mut self, chunk: &[u8]) {
        let q = self.quote;
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                State::Outside { at_field_start } => match find2(&chunk[i..], q, q) {
                    None => {
                        self.state = State::Outside {
                            at_field_start: self.is_boundary(chunk[chunk.len() - 1]),
                        };
                        i = chunk.len();
                    }
                    Some(p) => {
                        let j = i + p;
                        let starts = if j == i {
                            at_field_start
                        } else {
                            self.is_boundary(chunk[j - 1])
                        };
                        self.state = if starts {
                            State::Quoted(self.pos + j as u64)
                        } else {
                            State::Outside {
                                at_field_start: false,
                            }
                        };
                        i = j + 1;
                    }
                },
                State::Quoted(at) => match find2(&chunk[i..], q, self.escape) {
                    None => i = chunk.len(),
                    Some(p) => {
                        let j = i + p;
                        // csv-core checks the quote before the escape byte.
                        self.state = if chunk[j] == q {
                            State::AfterQuote(at)
                        } else {
                            State::AfterEscape(at)
                        };
                        i = j + 1;
                    }
                },
                State::AfterQuote(at) => {
                    if chunk[i] == q {
                        self.state = State::Quoted(at);
                        i += 1;
                    } else {
                        // Closed; this byte is looked at again from outside.
                        self.state = State::Outside {
                            at_field_start: false,
                        };
                    }
                }
                State::AfterEscape(at) => {
                    self.state = State::Quoted(at);
                    i += 1;
                }
            }
        }
        self.pos += chunk.len() as u64;
    }
}

impl<R: Read> Read for QuoteCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            if let Some(offset) = self.open_quote() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    UnterminatedQuote { offset },
                ));
            }
        }
        self.scan(&buf[..n]);
        Ok(n)
    }
}

/// The position of the first byte equal to `a` or `b`.
fn find2(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    const BLOCK: usize = 32;
    let mut start = 0;
    // Whole blocks without a match are skipped with a branch-free test that vectorizes.
    for block in hay.chunks_exact(BLOCK) {
        if block
            .iter()
            .fold(false, |hit, &x| hit | (x == a) | (x == b))
        {
            break;
        }
        start += BLOCK;
    }
    hay[start..]
        .iter()
        .position(|&x| x == a || x == b)
        .map(|p| start + p)
}

/// The 1-based line of byte `offset` of `input`.
pub(super) fn line_of(mut input: impl Read, offset: u64) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 16];
    let (mut seen, mut lines) = (0u64, 1u64);
    while seen < offset {
        let want = (offset - seen).min(buf.len() as u64) as usize;
        let n = input.read(&mut buf[..want])?;
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        seen += n as u64;
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in chunks of `chunk` bytes; the offset of an unterminated quote, if any.
    fn check(input: &str, escape: Option<u8>, chunk: usize) -> Option<u64> {
        let mut q = QuoteCheck::new(input.as_bytes(), b',', b'"', escape);
        let mut buf = vec![0u8; chunk];
        loop {
            match q.read(&mut buf) {
                Ok(0) => return None,
                Ok(_) => continue,
                Err(e) => return Some(UnterminatedQuote::from_io(&e).unwrap().offset),
            }
        }
    }

    fn check_all_chunkings(input: &str, escape: Option<u8>) -> Option<u64> {
        let whole = check(input, escape, 1 << 16);
        for chunk in 1..8 {
            assert_eq!(
                check(input, escape, chunk),
                whole,
                "{input:?} in {chunk}-byte reads"
            );
        }
        whole
    }

    #[test]
    fn finds_the_quote_that_never_closes() {
        assert_eq!(check_all_chunkings("1,\"abc\n2,def\n3,ghi", None), Some(2));
        assert_eq!(check_all_chunkings("a,b\n1,\"x\"\n2,\"y", None), Some(12));
        assert_eq!(check_all_chunkings("\"abc", None), Some(0));
        assert_eq!(check_all_chunkings("a\r\"b", None), Some(2));
        // An escaped quote does not close the field.
        assert_eq!(check_all_chunkings("1,\"a\\\"\n2", Some(b'\\')), Some(2));
        // Escape byte as the last byte.
        assert_eq!(check_all_chunkings("1,\"a\\", Some(b'\\')), Some(2));
    }

    #[test]
    fn accepts_what_csv_parsers_accept() {
        for ok in [
            "",
            "a,b\n1,2\n",
            "a,b\n1,\"x, y\"\n2,\"multi\nline\"\n",
            "h\n5'10\"\n",            // a quote inside an unquoted field is literal
            "h,i\n\"a\"\"b\",\"\"\n", // doubled quotes, an empty quoted field
            "h\n\"ends with quote\"", // no final newline
            "h\n\"a\"x\"\n",          // text after the closing quote, then a literal quote
            "h,i\r\n\"a\",\"b\"\r\n", // CRLF
            "h\n\"a\\\"\n",           // without an escape byte, \ is literal: " closes
            "h , \"x\"\n",            // a quote after a space is literal
        ] {
            assert_eq!(check_all_chunkings(ok, None), None, "{ok:?}");
        }
        assert_eq!(check_all_chunkings("h\n\"a\\\"b\"\n", Some(b'\\')), None);
    }

    #[test]
    fn agrees_with_csv_cores_state_machine_on_every_short_input() {
        // Every string over a small alphabet, in 1-, 2- and 3-byte reads: the checker reports an
        // open quote exactly when csv-core's byte-by-byte NFA ends inside a quoted field.
        let alphabet = [b'"', b',', b'\n', b'\r', b'a', b'\\'];
        for len in 0..=7u32 {
            for n in 0..alphabet.len().pow(len) {
                let mut s = Vec::new();
                let mut k = n;
                for _ in 0..len {
                    s.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                for escape in [None, Some(b'\\')] {
                    let want = csv_core_ends_quoted(&s, escape);
                    for chunk in 1..=3 {
                        let mut q = QuoteCheck::new(&s[..], b',', b'"', escape);
                        let mut buf = vec![0u8; chunk];
                        let got = loop {
                            match q.read(&mut buf) {
                                Ok(0) => break false,
                                Ok(_) => continue,
                                Err(_) => break true,
                            }
                        };
                        assert_eq!(
                            got,
                            want,
                            "{:?} escape {escape:?}",
                            String::from_utf8_lossy(&s)
                        );
                    }
                }
            }
        }
    }

    /// The scan's cost next to a plain read of the same file (page-cached), in `io::copy`'s reads:
    /// `DATIVO_BENCH_CSV=big.csv cargo test --release -p dativo-connectors --lib
    /// quote_check::tests::scan_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a benchmark; needs DATIVO_BENCH_CSV"]
    fn scan_throughput() {
        let path = std::env::var("DATIVO_BENCH_CSV").expect("DATIVO_BENCH_CSV");
        let time = |check: bool| {
            let f = std::fs::File::open(&path).unwrap();
            let t = std::time::Instant::now();
            let n = if check {
                io::copy(&mut QuoteCheck::new(f, b',', b'"', None), &mut io::sink())
            } else {
                io::copy(&mut { f }, &mut io::sink())
            };
            (n.unwrap(), t.elapsed())
        };
        for _ in 0..3 {
            let (n, plain) = time(false);
            let (_, checked) = time(true);
            let gbps = |d: std::time::Duration| n as f64 / d.as_secs_f64() / 1e9;
            println!(
                "{n} bytes: plain read {plain:?} ({:.2} GB/s), with quote check {checked:?} \
                 ({:.2} GB/s)",
                gbps(plain),
                gbps(checked)
            );
        }
    }

    /// csv-core's reader NFA (`csv_core::Reader::transition_nfa`, CRLF terminator, no comment
    /// byte, double quotes on), one byte at a time: whether `s` ends inside a quoted field.
    fn csv_core_ends_quoted(s: &[u8], escape: Option<u8>) -> bool {
        #[derive(Clone, Copy)]
        enum N {
            StartField,
            InField,
            InQuoted,
            InEscaped,
            InDoubleEscaped,
        }
        let term = |c: u8| c == b'\n' || c == b'\r';
        let mut st = N::StartField;
        for &c in s {
            st = match st {
                N::StartField if c == b'"' => N::InQuoted,
                N::StartField | N::InField | N::InDoubleEscaped if c == b',' || term(c) => {
                    N::StartField
                }
                N::StartField | N::InField => N::InField,
                N::InQuoted if c == b'"' => N::InDoubleEscaped,
                N::InQuoted if escape == Some(c) => N::InEscaped,
                N::InQuoted | N::InEscaped => N::InQuoted,
                N::InDoubleEscaped if c == b'"' => N::InQuoted,
                N::InDoubleEscaped => N::InField,
            };
        }
        matches!(st, N::InQuoted | N::InEscaped)
    }
}
