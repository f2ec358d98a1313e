//! A PostgreSQL replication connection (`replication=database`): what logical decoding needs
//! and tokio-postgres does not offer — `CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT` (the
//! snapshot lives while this connection stays idle) and `START_REPLICATION … LOGICAL` with its
//! CopyBoth stream of WAL data, keepalives and standby status updates.
//!
//! Frontend messages and authentication (cleartext, MD5, SCRAM-SHA-256) come from
//! `postgres-protocol`; backend messages are framed here (the library's parser does not know
//! CopyBothResponse). TLS is the reader's rustls setup.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

use dativo_core::secrets;
use dativo_core::{Error, ErrorKind, Result};

use crate::{describe, pg_config, tls_config, ConnectionOptions, SslMode};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A log sequence number.
pub type Lsn = u64;

/// `X/Y` as PostgreSQL prints an LSN.
pub fn lsn_text(l: Lsn) -> String {
    format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)
}

/// Parse `X/Y`.
pub fn parse_lsn(s: &str) -> Option<Lsn> {
    let (hi, lo) = s.trim().split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
pub fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as i64;
    unix - 946_684_800_000_000
}

/// A server error: its SQLSTATE and message.
#[derive(Debug, Clone)]
pub struct ServerError {
    /// The SQLSTATE code.
    pub code: String,
    /// The primary message.
    pub message: String,
    /// The detail, if any.
    pub detail: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, ": {d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}

/// What arrives on a replication stream.
#[derive(Debug)]
pub enum ReplicationMessage {
    /// WAL data: where it starts, the server's WAL end, and the output plugin's message.
    XLogData {
        /// The LSN the data starts at.
        start: Lsn,
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// The plugin's message (pgoutput).
        data: bytes::Bytes,
    },
    /// A keepalive: the server's WAL end; whether it asks for a status update now.
    Keepalive {
        /// The server's current end of WAL.
        wal_end: Lsn,
        /// Reply at once (or be disconnected after `wal_sender_timeout`).
        reply: bool,
    },
}

/// One backend message: its tag and body.
struct Msg {
    tag: u8,
    body: BytesMut,
}

/// A replication connection.
pub struct ReplicationConnection {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// `host:port/db`, for messages.
    pub server: String,
    streaming: bool,
}

fn io_error(e: std::io::Error, server: &str, doing: &str) -> Error {
    Error::new(
        ErrorKind::Transient,
        format!("{doing} (replication connection to {server}): {e}"),
    )
    .with_source(e)
}

/// A dativo error for a server error, classified by SQLSTATE.
pub fn server_error(e: ServerError, doing: &str) -> Error {
    let kind = match e.code.as_str() {
        "28000" | "28P01" | "42501" => ErrorKind::Auth,
        // object in use (a slot active for another process), connection failures, admin
        // shutdown, serialization: try again.
        "55006" | "57P01" | "57P02" | "57P03" | "53300" | "40001" => ErrorKind::Transient,
        c if c.starts_with("08") => ErrorKind::Transient,
        "42704" | "42P01" | "42710" | "55000" | "0A000" => ErrorKind::Config,
        _ => ErrorKind::Connect,
    };
    Error::new(kind, format!("{doing}: {}", secrets::scrub(&e.to_string()))).with_source(e)
}

impl ReplicationConnection {
    /// Connect with `replication=database` and authenticate.
    pub async fn connect(cfg: &ConnectionOptions) -> Result<ReplicationConnection> {
        let (pg, mode) = pg_config(cfg)?;
        let server = describe(&pg);
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let timeout = pg
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(30));
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
            .await
            .map_err(|_| {
                Error::new(
                    ErrorKind::Transient,
                    format!("connecting to PostgreSQL at {server}: timed out after {timeout:?}"),
                )
            })?
            .map_err(|e| io_error(e, &server, "connecting"))?;
        let _ = tcp.set_nodelay(true);
        let mut io: Box<dyn Io> = if mode == SslMode::Disable {
            Box::new(tcp)
        } else {
            let mut tcp = tcp;
            let mut b = BytesMut::new();
            frontend::ssl_request(&mut b);
            tcp.write_all(&b)
                .await
                .map_err(|e| io_error(e, &server, "requesting TLS"))?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer)
                .await
                .map_err(|e| io_error(e, &server, "requesting TLS"))?;
            match (answer[0], mode) {
                (b'S', _) => {
                    let mut make = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                        mode,
                        cfg.sslrootcert.as_deref(),
                    )?);
                    let connect = <tokio_postgres_rustls::MakeRustlsConnect as MakeTlsConnect<
                        TcpStream,
                    >>::make_tls_connect(&mut make, &host)
                    .map_err(|e| {
                        Error::config(format!("TLS setup for {server}: {e}")).with_source(e)
                    })?;
                    let tls = connect.connect(tcp).await.map_err(|e| {
                        Error::new(ErrorKind::Auth, format!("TLS handshake with {server}: {e}"))
                    })?;
                    Box::new(tls)
                }
                (_, SslMode::Prefer) => Box::new(tcp),
                _ => {
                    return Err(Error::config(format!(
                        "PostgreSQL at {server} does not accept TLS, and `sslmode` requires it"
                    ))
                    .with_key_path("sslmode"))
                }
            }
        };
        let user = pg.get_user().unwrap_or("postgres").to_string();
        let db = pg.get_dbname().unwrap_or(&user).to_string();
        let mut b = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user.as_str()),
                ("database", db.as_str()),
                ("replication", "database"),
                ("application_name", "dativo"),
            ],
            &mut b,
        )
        .map_err(|e| Error::internal(format!("startup message: {e}")))?;
        io.write_all(&b)
            .await
            .map_err(|e| io_error(e, &server, "starting up"))?;
        let mut conn = ReplicationConnection {
            io,
            buf: BytesMut::with_capacity(64 * 1024),
            server,
            streaming: false,
        };
        let password = pg.get_password().map(|p| p.to_vec());
        conn.authenticate(password.as_deref(), &user).await?;
        Ok(conn)
    }

    async fn authenticate(&mut self, password: Option<&[u8]>, user: &str) -> Result<()> {
        let need_pw = |server: &str| {
            Error::new(
                ErrorKind::Auth,
                format!("PostgreSQL at {server} asks for a password and none is configured"),
            )
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = self.read().await?;
            match m.tag {
                b'R' => {
                    let mut body = m.body;
                    let code = body.get_i32();
                    let mut out = BytesMut::new();
                    match code {
                        0 => {}
                        3 => {
                            let pw = password.ok_or_else(|| need_pw(&self.server))?;
                            frontend::password_message(pw, &mut out)
                                .map_err(|e| Error::internal(e.to_string()))?;
                        }
                        5 => {
                            let pw = password.ok_or_else(|| need_pw(&self.server))?;
                            let salt = [body[0], body[1], body[2], body[3]];
                            let h = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                pw,
                                salt,
                            );
                            frontend::password_message(h.as_bytes(), &mut out)
                                .map_err(|e| Error::internal(e.to_string()))?;
                        }
                        10 => {
                            let pw = password.ok_or_else(|| need_pw(&self.server))?;
                            let mechs = String::from_utf8_lossy(&body).to_string();
                            if !mechs.split('\0').any(|m| m == SCRAM_SHA_256) {
                                return Err(Error::new(
                                    ErrorKind::Auth,
                                    format!(
                                        "PostgreSQL at {} offers no SASL mechanism dativo supports ({})",
                                        self.server,
                                        mechs.replace('\0', " ").trim()
                                    ),
                                ));
                            }
                            let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                                .map_err(|e| Error::internal(e.to_string()))?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                Error::internal("SASL continue before SASL start")
                            })?;
                            s.update(&body).map_err(|e| {
                                Error::new(ErrorKind::Auth, format!("SCRAM: {e}"))
                            })?;
                            frontend::sasl_response(s.message(), &mut out)
                                .map_err(|e| Error::internal(e.to_string()))?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                Error::internal("SASL final before SASL start")
                            })?;
                            s.finish(&body).map_err(|e| {
                                Error::new(ErrorKind::Auth, format!("SCRAM: {e}"))
                            })?;
                        }
                        other => {
                            return Err(Error::new(
                                ErrorKind::Auth,
                                format!(
                                    "PostgreSQL at {} asks for an authentication method dativo does not support (code {other})",
                                    self.server
                                ),
                            ))
                        }
                    }
                    if !out.is_empty() {
                        self.write(&out).await?;
                    }
                }
                b'E' => {
                    return Err(server_error(
                        parse_error(m.body),
                        &format!("connecting for replication to {}", self.server),
                    ))
                }
                b'Z' => return Ok(()),
                _ => {} // ParameterStatus, BackendKeyData, notices
            }
        }
    }

    async fn write(&mut self, b: &[u8]) -> Result<()> {
        self.io
            .write_all(b)
            .await
            .map_err(|e| io_error(e, &self.server, "writing"))?;
        self.io
            .flush()
            .await
            .map_err(|e| io_error(e, &self.server, "writing"))
    }

    async fn read(&mut self) -> Result<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len < 4 {
                    return Err(Error::data(format!(
                        "replication connection to {}: a message of invalid length",
                        self.server
                    )));
                }
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let mut m = self.buf.split_to(len + 1);
                    m.advance(5);
                    return Ok(Msg { tag, body: m });
                }
                self.buf.reserve(len + 1 - self.buf.len());
            } else {
                self.buf.reserve(4096);
            }
            let n = self
                .io
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| io_error(e, &self.server, "reading"))?;
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!(
                        "the replication connection to {} was closed by the server",
                        self.server
                    ),
                ));
            }
        }
    }

    /// Run a command (replication commands or SQL); its rows as text. Errors name `doing`.
    pub async fn simple_query(
        &mut self,
        sql: &str,
        doing: &str,
    ) -> Result<Vec<Vec<Option<String>>>> {
        let mut b = BytesMut::new();
        frontend::query(sql, &mut b).map_err(|e| Error::internal(e.to_string()))?;
        self.write(&b).await?;
        let mut rows = Vec::new();
        let mut failed = None;
        loop {
            let m = self.read().await?;
            match m.tag {
                b'D' => {
                    let mut body = m.body;
                    let n = body.get_i16();
                    let mut row = Vec::with_capacity(n.max(0) as usize);
                    for _ in 0..n {
                        let len = body.get_i32();
                        if len < 0 {
                            row.push(None);
                        } else {
                            let v = body.split_to(len as usize);
                            row.push(Some(String::from_utf8_lossy(&v).to_string()));
                        }
                    }
                    rows.push(row);
                }
                b'E' => failed = Some(parse_error(m.body)),
                b'Z' => break,
                _ => {}
            }
        }
        match failed {
            Some(e) => Err(server_error(e, doing)),
            None => Ok(rows),
        }
    }

    /// `START_REPLICATION SLOT slot LOGICAL start (options)`: from now on only
    /// [`ReplicationConnection::recv`] and [`ReplicationConnection::send_status`].
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<()> {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("\"{k}\" '{}'", v.replace('\'', "''")))
            .collect();
        let sql = format!(
            "START_REPLICATION SLOT \"{}\" LOGICAL {} ({})",
            slot.replace('"', "\"\""),
            lsn_text(start),
            opts.join(", ")
        );
        let mut b = BytesMut::new();
        frontend::query(&sql, &mut b).map_err(|e| Error::internal(e.to_string()))?;
        self.write(&b).await?;
        loop {
            let m = self.read().await?;
            match m.tag {
                b'W' => {
                    self.streaming = true;
                    return Ok(());
                }
                b'E' => {
                    let e = parse_error(m.body);
                    // Drain to ReadyForQuery so the error is the whole story.
                    return Err(server_error(
                        e,
                        &format!("starting replication from slot `{slot}`"),
                    ));
                }
                _ => {}
            }
        }
    }

    /// The next replication message, or `None` after `wait` without one.
    pub async fn recv(&mut self, wait: Duration) -> Result<Option<ReplicationMessage>> {
        let m = match tokio::time::timeout(wait, self.read()).await {
            Err(_) => return Ok(None),
            Ok(m) => m?,
        };
        match m.tag {
            b'd' => {
                let mut body = m.body;
                match body.first() {
                    Some(b'w') if body.len() >= 25 => {
                        body.advance(1);
                        let start = body.get_u64();
                        let wal_end = body.get_u64();
                        let _sent = body.get_i64();
                        Ok(Some(ReplicationMessage::XLogData {
                            start,
                            wal_end,
                            data: body.freeze(),
                        }))
                    }
                    Some(b'k') if body.len() >= 18 => {
                        body.advance(1);
                        let wal_end = body.get_u64();
                        let _sent = body.get_i64();
                        let reply = body.get_u8() == 1;
                        Ok(Some(ReplicationMessage::Keepalive { wal_end, reply }))
                    }
                    _ => Err(Error::data(format!(
                        "replication stream from {}: an unknown CopyData message",
                        self.server
                    ))),
                }
            }
            b'E' => Err(server_error(
                parse_error(m.body),
                &format!("replication stream from {}", self.server),
            )),
            b'c' => Err(Error::new(
                ErrorKind::Transient,
                format!("the server {} ended the replication stream", self.server),
            )),
            _ => Ok(None),
        }
    }

    /// A standby status update: everything up to `flushed` is durable on our side (the slot's
    /// confirmed position may move there).
    pub async fn send_status(&mut self, written: Lsn, flushed: Lsn, reply: bool) -> Result<()> {
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(written);
        payload.put_u64(flushed);
        payload.put_u64(flushed);
        payload.put_i64(pg_now_micros());
        payload.put_u8(u8::from(reply));
        let mut b = BytesMut::with_capacity(40);
        b.put_u8(b'd');
        b.put_i32(4 + payload.len() as i32);
        b.extend_from_slice(&payload);
        self.write(&b).await
    }

    /// Whether [`ReplicationConnection::start_replication`] succeeded on this connection.
    pub fn is_streaming(&self) -> bool {
        self.streaming
    }
}

fn parse_error(mut body: BytesMut) -> ServerError {
    let mut e = ServerError {
        code: String::new(),
        message: String::new(),
        detail: None,
    };
    while let Some(&field) = body.first() {
        if field == 0 {
            break;
        }
        body.advance(1);
        let end = body.iter().position(|&c| c == 0).unwrap_or(body.len());
        let v = String::from_utf8_lossy(&body[..end]).to_string();
        body.advance((end + 1).min(body.len()));
        match field {
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            _ => {}
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trip() {
        for l in [0u64, 0x16B_3748, (5u64 << 32) | 0xDEAD_BEEF] {
            assert_eq!(parse_lsn(&lsn_text(l)), Some(l));
        }
        assert_eq!(lsn_text(0x1_0000_0010), "1/10");
        assert_eq!(parse_lsn("0/1961088"), Some(0x196_1088));
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
