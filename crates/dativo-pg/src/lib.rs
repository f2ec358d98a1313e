//! PostgreSQL connections for dativo: connecting (with rustls for TLS) and turning PostgreSQL
//! errors into dativo errors. Shared by the `postgres` reader and the PostgreSQL state store.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use dativo_core::{secrets, Error, Result};

pub use dativo_core::rt::runtime;

/// TLS mode, as in libpq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the server offers it, without verifying the certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS required; the certificate is not verified.
    Require,
    /// TLS required; the certificate must chain to a trusted root (`sslrootcert` or the
    /// bundled Mozilla roots).
    VerifyCa,
    /// As `verify-ca`, and the host name must match the certificate.
    VerifyFull,
}

/// Where and how to connect: the connection keys of the `postgres` reader's config.
#[derive(Debug, Clone, Default)]
pub struct PgConnection {
    /// `postgres://user:password@host:port/db?sslmode=…`; the other keys override its parts.
    pub url: Option<String>,
    /// Host name or address (default 127.0.0.1).
    pub host: Option<String>,
    /// Port (default 5432).
    pub port: Option<u16>,
    /// User name (default `$USER`).
    pub user: Option<String>,
    /// Password (registered for redaction).
    pub password: Option<String>,
    /// Database name.
    pub database: Option<String>,
    /// TLS mode (default: the URL's, else `prefer`).
    pub sslmode: Option<SslMode>,
    /// PEM file of trusted roots for `verify-ca` / `verify-full`.
    pub sslrootcert: Option<String>,
    /// Connect timeout (default 30 s).
    pub connect_timeout: Option<Duration>,
}

/// Build the driver config from ours. Secrets are registered for redaction.
pub fn pg_config(cfg: &PgConnection) -> Result<(tokio_postgres::Config, SslMode)> {
    let mut c = match &cfg.url {
        Some(u) => {
            secrets::register(u);
            u.parse::<tokio_postgres::Config>().map_err(|e| {
                Error::config(format!(
                    "invalid PostgreSQL URL: {}",
                    secrets::scrub(&e.to_string())
                ))
                .with_key_path("url")
            })?
        }
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
        secrets::register(pw);
        c.password(pw);
    }
    if let Some(d) = &cfg.database {
        c.dbname(d);
    }
    c.application_name("dativo");
    c.connect_timeout(cfg.connect_timeout.unwrap_or(Duration::from_secs(30)));
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

fn tls_config(mode: SslMode, rootcert: Option<&str>) -> Result<rustls::ClientConfig> {
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
pub async fn connect(cfg: &PgConnection) -> Result<Client> {
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
    result.map_err(|e| map_error(e, &format!("connecting to PostgreSQL at {what}")))
}

/// Connect to `url` (`postgres://user:password@host:port/db?sslmode=…`) with the reader's
/// TLS handling; used by the PostgreSQL state store.
pub async fn connect_url(url: &str) -> Result<Client> {
    connect(&PgConnection {
        url: Some(url.to_string()),
        ..PgConnection::default()
    })
    .await
}

/// Map a driver error to a dativo error with a clear message.
pub fn map_error(e: tokio_postgres::Error, doing: &str) -> Error {
    let text = secrets::scrub(&e.to_string());
    if let Some(db) = e.as_db_error() {
        let msg = format!("{doing}: {}", secrets::scrub(db.message()));
        let code = db.code();
        return if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
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
        } else if code.code().starts_with("08")
            || code.code().starts_with("57P")
            || code.code().starts_with("53")
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
        {
            Error::transient(msg)
        } else {
            Error::data(msg)
        };
    }
    let src = std::error::Error::source(&e)
        .map(|s| secrets::scrub(&s.to_string()))
        .unwrap_or_default();
    if e.is_closed() || text.contains("connection closed") || src.contains("reset by peer") {
        return Error::transient(format!("{doing}: the connection was closed ({text})"));
    }
    if src.contains("refused")
        || src.contains("timed out")
        || text.contains("timeout")
        || src.contains("resolve")
        || src.contains("lookup")
    {
        return Error::connect(format!("{doing}: {text}: {src}"));
    }
    if text.contains("password") || text.contains("authentication") {
        return Error::auth(format!("{doing}: {text}"));
    }
    if text.contains("error connecting") || text.contains("tls") || text.contains("TLS") {
        return Error::connect(format!(
            "{doing}: {text}{}",
            if src.is_empty() {
                String::new()
            } else {
                format!(": {src}")
            }
        ));
    }
    Error::transient(format!(
        "{doing}: {text}{}",
        if src.is_empty() {
            String::new()
        } else {
            format!(": {src}")
        }
    ))
}
