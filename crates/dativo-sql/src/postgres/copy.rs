//! A parser of PostgreSQL's binary COPY format, fed with the chunks the server sends.

/// Incremental parser: [`CopyParser::push`] chunks, then take rows with
/// [`CopyParser::next_row`] until it returns `false`.
#[derive(Default)]
pub struct CopyParser {
    buf: Vec<u8>,
    pos: usize,
    header_done: bool,
    /// The trailer (-1 field count) was seen.
    pub finished: bool,
}

const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

impl CopyParser {
    /// Append data received from the server.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    fn read_i32(&self, at: usize) -> Option<i32> {
        self.buf
            .get(at..at + 4)
            .map(|s| i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// Parse the next complete row into `fields` (byte ranges into the buffer, `None` for
    /// NULL). Returns `Ok(false)` when more data is needed or the trailer was reached.
    pub fn next_row(&mut self, fields: &mut Vec<Option<(usize, usize)>>) -> Result<bool, String> {
        if self.finished {
            return Ok(false);
        }
        if !self.header_done {
            if self.buf.len() - self.pos < 19 {
                return Ok(false);
            }
            if &self.buf[self.pos..self.pos + 11] != SIGNATURE {
                return Err("not a binary COPY stream".into());
            }
            let ext = self.read_i32(self.pos + 15).unwrap_or(0).max(0) as usize;
            if self.buf.len() - self.pos < 19 + ext {
                return Ok(false);
            }
            self.pos += 19 + ext;
            self.header_done = true;
        }
        let start = self.pos;
        let Some(count) = self
            .buf
            .get(start..start + 2)
            .map(|s| i16::from_be_bytes([s[0], s[1]]))
        else {
            return Ok(false);
        };
        if count == -1 {
            self.finished = true;
            self.pos += 2;
            return Ok(false);
        }
        fields.clear();
        let mut at = start + 2;
        for _ in 0..count {
            let Some(len) = self.read_i32(at) else {
                return Ok(false);
            };
            at += 4;
            if len < 0 {
                fields.push(None);
            } else {
                let end = at + len as usize;
                if end > self.buf.len() {
                    return Ok(false);
                }
                fields.push(Some((at, end)));
                at = end;
            }
        }
        self.pos = at;
        Ok(true)
    }

    /// The bytes of a field returned by [`CopyParser::next_row`].
    #[inline]
    pub fn field(&self, range: (usize, usize)) -> &[u8] {
        &self.buf[range.0..range.1]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_across_chunks() {
        let mut data = SIGNATURE.to_vec();
        data.extend(0i32.to_be_bytes());
        data.extend(0i32.to_be_bytes());
        for v in [Some(7i32), None] {
            data.extend(1i16.to_be_bytes());
            match v {
                Some(v) => {
                    data.extend(4i32.to_be_bytes());
                    data.extend(v.to_be_bytes());
                }
                None => data.extend((-1i32).to_be_bytes()),
            }
        }
        data.extend((-1i16).to_be_bytes());
        let mut p = CopyParser::default();
        let mut fields = Vec::new();
        let mut got = Vec::new();
        for chunk in data.chunks(3) {
            p.push(chunk);
            while p.next_row(&mut fields).unwrap() {
                got.push(fields[0].map(|r| i32::from_be_bytes(p.field(r).try_into().unwrap())));
            }
        }
        assert_eq!(got, vec![Some(7), None]);
        assert!(p.finished);
    }
}
