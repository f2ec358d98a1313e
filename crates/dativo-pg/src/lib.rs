//! PostgreSQL connections for dativo: connecting (with rustls for TLS) and turning PostgreSQL
//! errors into dativo errors. Shared by the `postgres` reader and the PostgreSQL state store.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use dativo_core::secrets::{self, Secret};
use dativo_core::{Error, Result};

pub use dativo_core::rt::runtime;

pub mod pgoutput;
pub mod replication;

pub use dativo_core::config::{ConnectionOptions, SslMode};

/// Build the driver config from ours.
pub fn pg_config(cfg: &ConnectionOptions) -> Result<(tokio_postgres::Config, SslMode)> {
    let mut c = match &cfg.url {
        Some(u) => u.expose().parse::<tokio_postgres::Config>().map_err(|e| {
            Error::config(format!(
                "invalid PostgreSQL URL: {}",
                secrets::scrub(&e.to_string())
            ))
            .with_key_path("url")
            .with_source(e)
        })?,
        None => tokio_postgres::Config::new(),
    };
    if let Some(h) = &cfg.host {
        c.host(h);
    }
    if c.get_hosts().is_empty() {
        c.host("127.0.0.1");
    }
    if let Some(p) = cfg.port {
        c.port(p);
    }
    if let Some(u) = &cfg.user {
        c.user(u);
    }
    if c.get_user().is_none() {
        c.user(std::env::var("USER").unwrap_or_else(|_| "postgres".into()));
    }
    if let Some(pw) = &cfg.password {
        c.password(pw.expose());
    }
    if let Some(d) = &cfg.database {
        c.dbname(d);
    }
    c.application_name("dativo");
    c.connect_timeout(
        cfg.connect_timeout
            .as_ref()
            .map_or(Duration::from_secs(30), |d| d.0),
    );
    let mode = cfg.sslmode.unwrap_or(match c.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => SslMode::Disable,
        tokio_postgres::config::SslMode::Require => SslMode::Require,
        _ => SslMode::Prefer,
    });
    c.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok((c, mode))
}

/// A readable name of the server for messages: `host:port/db`.
pub fn describe(c: &tokio_postgres::Config) -> String {
    let host = match c.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", c.get_dbname().unwrap_or(""))
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub(crate) fn tls_config(mode: SslMode, rootcert: Option<&str>) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS setup: {e}")))?;
    let cfg = match mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match rootcert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        Error::config(format!("cannot read sslrootcert {path}: {e}"))
                            .with_key_path("sslrootcert")
                    })?;
                    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                        let cert: CertificateDer<'_> = cert.map_err(|e| {
                            Error::config(format!("invalid certificate in {path}: {e}"))
                                .with_key_path("sslrootcert")
                        })?;
                        roots.add(cert).map_err(|e| {
                            Error::config(format!("invalid certificate in {path}: {e}"))
                        })?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            // rustls always checks the name; verify-ca differs from verify-full only in libpq.
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    Ok(cfg)
}

/// Connect; the connection task runs on [`runtime`].
pub async fn connect(cfg: &ConnectionOptions) -> Result<Client> {
    let (pg, mode) = pg_config(cfg)?;
    let what = describe(&pg);
    let result = if mode == SslMode::Disable {
        pg.connect(tokio_postgres::NoTls).await.map(|(client, conn)| {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %secrets::scrub(&e.to_string()), "postgres connection ended");
                }
            });
            client
        })
    } else {
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
            mode,
            cfg.sslrootcert.as_deref(),
        )?);
        pg.connect(tls).await.map(|(client, conn)| {
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %secrets::scrub(&e.to_string()), "postgres connection ended");
                }
            });
            client
        })
    };
    result.map_err(|e| classify(e, &format!("connecting to PostgreSQL at {what}"), true))
}

/// Connect to `url` (`postgres://user:password@host:port/db?sslmode=…`) with the reader's
/// TLS handling; used by the PostgreSQL state store.
pub async fn connect_url(url: &str) -> Result<Client> {
    connect(&ConnectionOptions {
        url: Some(Secret::new(url)),
        ..ConnectionOptions::default()
    })
    .await
}

/// Map a driver error to a dativo error with a clear message, keeping it as the cause.
///
/// Classified by what the driver reports, never by message text: the SQLSTATE of a server
/// error; whether the connection was closed; the `std::io::Error` (its kind) or the rustls
/// error found among the causes.
pub fn map_error(e: tokio_postgres::Error, doing: &str) -> Error {
    classify(e, doing, false)
}

/// What went wrong below a driver error, from its causes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The server could not be reached: refused, unreachable, timed out.
    Unreachable,
    /// An established connection broke: reset, aborted, closed mid-message.
    Dropped,
    /// Another I/O failure (a host name that does not resolve…).
    OtherIo,
    /// TLS failed (handshake, certificate).
    Tls,
    /// Anything else (protocol, configuration).
    Other,
}

fn cause(e: &(dyn std::error::Error + 'static)) -> Cause {
    use std::io::ErrorKind as K;
    let mut next = Some(e);
    while let Some(c) = next {
        if c.is::<rustls::Error>() {
            return Cause::Tls;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            // TLS errors reach tokio-postgres wrapped in an io::Error.
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return Cause::Tls;
            }
            return match io.kind() {
                K::ConnectionRefused
                | K::TimedOut
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::AddrNotAvailable
                | K::NotFound => Cause::Unreachable,
                K::ConnectionReset
                | K::ConnectionAborted
                | K::BrokenPipe
                | K::UnexpectedEof
                | K::NotConnected => Cause::Dropped,
                _ => Cause::OtherIo,
            };
        }
        next = c.source();
    }
    Cause::Other
}

/// `e` and its causes, one after the other, scrubbed of secrets.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![secrets::scrub(&e.to_string())];
    let mut next = e.source();
    while let Some(c) = next {
        let t = secrets::scrub(&c.to_string());
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        next = c.source();
    }
    parts.join(": ")
}

/// `connecting`: the error ended an attempt to connect, where whatever is not the server's
/// answer or a dropped connection means the server was not reached.
fn classify(e: tokio_postgres::Error, doing: &str, connecting: bool) -> Error {
    if let Some(db) = e.as_db_error() {
        return db_error(db, doing).with_source(e);
    }
    let text = chain_text(&e);
    let err = if e.is_closed() {
        Error::transient(format!("{doing}: the connection was closed ({text})"))
    } else {
        match (cause(&e), connecting) {
            (Cause::Unreachable | Cause::Tls, _) | (Cause::OtherIo | Cause::Other, true) => {
                Error::connect(format!("{doing}: {text}"))
            }
            (Cause::Dropped, _) => {
                Error::transient(format!("{doing}: the connection was closed ({text})"))
            }
            (Cause::OtherIo | Cause::Other, false) => Error::transient(format!("{doing}: {text}")),
        }
    };
    err.with_source(e)
}

/// A server's error, by its SQLSTATE.
fn db_error(db: &tokio_postgres::error::DbError, doing: &str) -> Error {
    let msg = format!("{doing}: {}", secrets::scrub(db.message()));
    let code = db.code();
    // SQLSTATE classes: 08 connection exception, 53 insufficient resources, 57P operator
    // intervention (a terminated backend, a server shutting down).
    let class = code.code().get(..2).unwrap_or("");
    if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    {
        Error::auth(format!(
            "{msg} (authentication failed: check user and password)"
        ))
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        Error::auth(format!(
            "{msg} (permission denied: GRANT SELECT to the user)"
        ))
    } else if *code == SqlState::UNDEFINED_TABLE {
        Error::schema(format!(
            "{msg} (check `table` / `query` and the search_path)"
        ))
    } else if *code == SqlState::UNDEFINED_COLUMN || *code == SqlState::SYNTAX_ERROR {
        Error::config(msg)
    } else if *code == SqlState::INVALID_CATALOG_NAME {
        Error::config(format!("{msg} (check the database name)"))
    } else if class == "08"
        || class == "53"
        || code.code().starts_with("57P")
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
    {
        Error::transient(msg)
    } else {
        Error::data(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A free local port: bound, then released.
    fn closed_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn pg_url() -> String {
        std::env::var("DATIVO_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    #[test]
    fn causes_are_found_by_type() {
        use std::io::{Error as IoError, ErrorKind};
        let refused = IoError::from(ErrorKind::ConnectionRefused);
        assert_eq!(cause(&refused), Cause::Unreachable);
        assert_eq!(
            cause(&IoError::from(ErrorKind::ConnectionReset)),
            Cause::Dropped
        );
        let tls = IoError::new(ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert_eq!(cause(&tls), Cause::Tls);
        assert_eq!(cause(&rustls::Error::DecryptError), Cause::Tls);
        let fmt = std::fmt::Error;
        assert_eq!(cause(&fmt), Cause::Other);
    }

    #[test]
    fn refused_connection_is_a_connect_error_keeping_its_cause() {
        let url = format!(
            "postgres://postgres:hunter2secret@127.0.0.1:{}/test",
            closed_port()
        );
        let e = runtime().block_on(connect_url(&url)).unwrap_err();
        assert_eq!(e.kind(), dativo_core::ErrorKind::Connect, "{e}");
        assert!(e.is_retryable());
        assert!(
            e.to_string()
                .contains("connecting to PostgreSQL at 127.0.0.1:"),
            "{e}"
        );
        assert!(!e.chain().contains("hunter2secret"), "{}", e.chain());
        let source = std::error::Error::source(&e).expect("the driver's error");
        assert!(source.is::<tokio_postgres::Error>());
    }

    #[test]
    fn server_errors_are_classified_by_sqlstate() {
        // A role that does not exist (trust auth still checks the role): 28000.
        let e = runtime()
            .block_on(connect(&ConnectionOptions {
                url: Some(Secret::new(pg_url())),
                user: Some("no_such_role_dativo_test".into()),
                ..ConnectionOptions::default()
            }))
            .unwrap_err();
        assert_eq!(e.kind(), dativo_core::ErrorKind::Auth, "{e}");
        assert!(e.to_string().contains("authentication failed"), "{e}");
        // A database that does not exist: 3D000, a config error.
        let url = format!("{}_no_such_db_dativo", pg_url());
        let e = runtime().block_on(connect_url(&url)).unwrap_err();
        assert_eq!(e.kind(), dativo_core::ErrorKind::Config, "{e}");
        assert!(e.to_string().contains("check the database name"), "{e}");
        // A query's errors.
        let client = runtime().block_on(connect_url(&pg_url())).unwrap();
        let e = runtime()
            .block_on(client.query("SELECT * FROM no_such_table_dativo", &[]))
            .map_err(|e| map_error(e, "reading"))
            .unwrap_err();
        assert_eq!(e.kind(), dativo_core::ErrorKind::Schema, "{e}");
        let e = runtime()
            .block_on(client.query("SELECT 1/0", &[]))
            .map_err(|e| map_error(e, "reading"))
            .unwrap_err();
        assert_eq!(e.kind(), dativo_core::ErrorKind::Data, "{e}");
        // A terminated backend: 57P01, transient.
        let victim = runtime().block_on(connect_url(&pg_url())).unwrap();
        let pid: i32 = runtime()
            .block_on(victim.query_one("SELECT pg_backend_pid()", &[]))
            .unwrap()
            .get(0);
        runtime()
            .block_on(client.query("SELECT pg_terminate_backend($1)", &[&pid]))
            .unwrap();
        let e = runtime()
            .block_on(victim.query("SELECT 1", &[]))
            .map_err(|e| map_error(e, "reading"))
            .unwrap_err();
        assert_eq!(e.kind(), dativo_core::ErrorKind::Transient, "{e}");
    }
}
