//! The `pgoutput` logical decoding protocol (version 1; values in binary with `binary 'true'`):
//! the messages a publication's changes arrive as.

use bytes::{Buf, Bytes};

use dativo_core::{Error, Result};

use crate::replication::Lsn;

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq)]
pub struct RelColumn {
    /// Part of the replica identity (the key).
    pub key: bool,
    /// Its name.
    pub name: String,
    /// Its type's OID.
    pub type_oid: u32,
    /// Its type modifier.
    pub typmod: i32,
}

/// A table, as the stream describes it before its first change (and after each change to it).
#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    /// The table's OID.
    pub oid: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Replica identity: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Its columns (published ones), in order.
    pub columns: Vec<RelColumn>,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// NULL.
    Null,
    /// A TOASTed value that did not change (its value is not in the log).
    Unchanged,
    /// The value in text form.
    Text(Bytes),
    /// The value in binary (send/recv) form.
    Binary(Bytes),
}

/// A message of the stream.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A transaction starts: the LSN of its commit record, its commit time (µs since
    /// 2000-01-01) and xid.
    Begin {
        /// LSN of the commit record.
        final_lsn: Lsn,
        /// Commit time, µs since 2000-01-01.
        commit_time: i64,
        /// Transaction id.
        xid: u32,
    },
    /// A transaction ends.
    Commit {
        /// LSN of the commit record.
        commit_lsn: Lsn,
        /// The end of the transaction (the next position to stream from).
        end_lsn: Lsn,
        /// Commit time, µs since 2000-01-01.
        commit_time: i64,
    },
    /// A table's description.
    Relation(Relation),
    /// A new row.
    Insert {
        /// Table OID.
        oid: u32,
        /// The row.
        new: Vec<Value>,
    },
    /// A changed row: the old key (`K`) or whole old row (`O`, replica identity full) when
    /// the log has it, and the new row.
    Update {
        /// Table OID.
        oid: u32,
        /// The old key or row, if logged.
        old: Option<Vec<Value>>,
        /// The new row.
        new: Vec<Value>,
    },
    /// A deleted row: its old key or whole old row.
    Delete {
        /// Table OID.
        oid: u32,
        /// The old key or row.
        old: Vec<Value>,
    },
    /// Tables truncated.
    Truncate {
        /// Their OIDs.
        oids: Vec<u32>,
    },
    /// Anything else (types, origins, logical messages): nothing to do.
    Other(u8),
}

fn short(what: &str) -> Error {
    Error::data(format!("pgoutput: a truncated {what} message"))
}

fn cstr(b: &mut Bytes, what: &str) -> Result<String> {
    let end = b.iter().position(|&c| c == 0).ok_or_else(|| short(what))?;
    let s = String::from_utf8_lossy(&b[..end]).to_string();
    b.advance(end + 1);
    Ok(s)
}

fn need(b: &Bytes, n: usize, what: &str) -> Result<()> {
    if b.remaining() < n {
        Err(short(what))
    } else {
        Ok(())
    }
}

fn tuple(b: &mut Bytes, what: &str) -> Result<Vec<Value>> {
    need(b, 2, what)?;
    let n = b.get_i16().max(0) as usize;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        need(b, 1, what)?;
        out.push(match b.get_u8() {
            b'n' => Value::Null,
            b'u' => Value::Unchanged,
            k @ (b't' | b'b') => {
                need(b, 4, what)?;
                let len = b.get_i32().max(0) as usize;
                need(b, len, what)?;
                let v = b.split_to(len);
                if k == b't' {
                    Value::Text(v)
                } else {
                    Value::Binary(v)
                }
            }
            other => {
                return Err(Error::data(format!(
                    "pgoutput: unknown tuple value kind `{}`",
                    other as char
                )))
            }
        });
    }
    Ok(out)
}

/// Parse one message.
pub fn parse(mut b: Bytes) -> Result<Message> {
    need(&b, 1, "empty")?;
    let tag = b.get_u8();
    Ok(match tag {
        b'B' => {
            need(&b, 20, "Begin")?;
            Message::Begin {
                final_lsn: b.get_u64(),
                commit_time: b.get_i64(),
                xid: b.get_u32(),
            }
        }
        b'C' => {
            need(&b, 25, "Commit")?;
            let _flags = b.get_u8();
            Message::Commit {
                commit_lsn: b.get_u64(),
                end_lsn: b.get_u64(),
                commit_time: b.get_i64(),
            }
        }
        b'R' => {
            need(&b, 4, "Relation")?;
            let oid = b.get_u32();
            let namespace = cstr(&mut b, "Relation")?;
            let name = cstr(&mut b, "Relation")?;
            need(&b, 3, "Relation")?;
            let replica_identity = b.get_u8();
            let n = b.get_i16().max(0) as usize;
            let mut columns = Vec::with_capacity(n);
            for _ in 0..n {
                need(&b, 1, "Relation")?;
                let flags = b.get_u8();
                let name = cstr(&mut b, "Relation")?;
                need(&b, 8, "Relation")?;
                columns.push(RelColumn {
                    key: flags & 1 == 1,
                    name,
                    type_oid: b.get_u32(),
                    typmod: b.get_i32(),
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            need(&b, 5, "Insert")?;
            let oid = b.get_u32();
            let _n = b.get_u8();
            Message::Insert {
                oid,
                new: tuple(&mut b, "Insert")?,
            }
        }
        b'U' => {
            need(&b, 5, "Update")?;
            let oid = b.get_u32();
            let mut kind = b.get_u8();
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(tuple(&mut b, "Update")?);
                need(&b, 1, "Update")?;
                kind = b.get_u8();
            }
            if kind != b'N' {
                return Err(short("Update"));
            }
            Message::Update {
                oid,
                old,
                new: tuple(&mut b, "Update")?,
            }
        }
        b'D' => {
            need(&b, 5, "Delete")?;
            let oid = b.get_u32();
            let _kind = b.get_u8();
            Message::Delete {
                oid,
                old: tuple(&mut b, "Delete")?,
            }
        }
        b'T' => {
            need(&b, 5, "Truncate")?;
            let n = b.get_i32().max(0) as usize;
            let _options = b.get_u8();
            need(&b, 4 * n, "Truncate")?;
            Message::Truncate {
                oids: (0..n).map(|_| b.get_u32()).collect(),
            }
        }
        other => Message::Other(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    #[test]
    fn messages() {
        let mut m = BytesMut::new();
        m.put_u8(b'R');
        m.put_u32(42);
        m.put_slice(b"public\0t\0");
        m.put_u8(b'f');
        m.put_i16(2);
        m.put_u8(1);
        m.put_slice(b"id\0");
        m.put_u32(23);
        m.put_i32(-1);
        m.put_u8(0);
        m.put_slice(b"big\0");
        m.put_u32(25);
        m.put_i32(-1);
        let Message::Relation(r) = parse(m.freeze()).unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.oid, r.name.as_str(), r.replica_identity),
            (42, "t", b'f')
        );
        assert!(r.columns[0].key && !r.columns[1].key);

        let mut m = BytesMut::new();
        m.put_u8(b'U');
        m.put_u32(42);
        m.put_u8(b'O');
        m.put_i16(2);
        m.put_u8(b'b');
        m.put_i32(4);
        m.put_i32(7);
        m.put_u8(b't');
        m.put_i32(3);
        m.put_slice(b"abc");
        m.put_u8(b'N');
        m.put_i16(2);
        m.put_u8(b'b');
        m.put_i32(4);
        m.put_i32(7);
        m.put_u8(b'u');
        let Message::Update { old, new, .. } = parse(m.freeze()).unwrap() else {
            panic!()
        };
        assert_eq!(old.unwrap()[1], Value::Text(Bytes::from_static(b"abc")));
        assert_eq!(new[1], Value::Unchanged);

        let mut m = BytesMut::new();
        m.put_u8(b'I');
        m.put_u32(42);
        m.put_u8(b'N');
        m.put_i16(1);
        m.put_u8(b'b');
        m.put_i32(100);
        assert!(
            parse(m.freeze()).is_err(),
            "a value longer than the message"
        );
    }
}
