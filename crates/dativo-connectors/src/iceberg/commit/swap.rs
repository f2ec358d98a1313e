//! The catalog's atomic swap of a table's metadata: the commit point of a snapshot. The SQL
//! catalog's is a compare-and-swap of its table row ([`SqlSwap`]); the REST catalog's is its
//! commit endpoint ([`RestSwap`]), which checks the requirements itself.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iceberg::spec::TableMetadata;
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableRequirement, TableUpdate};
use sqlx::Connection;

use dativo_core::secrets::{self, Secret};
use dativo_core::{Error, ErrorKind, Result};

use crate::iceberg::writer::{cause_kind, ice, sql_catalog_uri};
use crate::iceberg::{CatalogKind, IcebergWriterConfig};

/// Makes `updates` the table's new state if `requirements` still hold for the state the
/// catalog has, atomically.
///
/// Outcomes: `Ok(table)` — committed, the table as committed; an error of kind
/// [`dativo_core::ErrorKind::Conflict`] — the table moved, nothing changed; any other error —
/// the outcome may be unknown (e.g. the connection dropped after the update was sent): the
/// caller reloads the table and looks for its snapshot.
#[async_trait]
pub trait Swap: Send + Sync {
    /// Commit `updates` on top of `base` (the state they were built on).
    async fn swap(
        &self,
        base: &Table,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<Table>;
}

/// The SQL catalog's swap (iceberg-rust's SqlCatalog, pyiceberg's SqlCatalog and Java's
/// JdbcCatalog share it): write the new `metadata.json`, then compare-and-swap the table's
/// row in `iceberg_tables` from the base's metadata location to the new one.
pub struct SqlSwap {
    /// `sqlite://…` or `postgres://…` (it may carry a password).
    uri: Secret,
    /// The catalog name, as stored in every row.
    catalog: String,
}

impl SqlSwap {
    /// A swap on the SQL catalog database at `uri` (the one the catalog itself uses), for
    /// the catalog `name`.
    pub fn new(uri: &str, name: &str) -> SqlSwap {
        SqlSwap {
            uri: Secret::new(uri),
            catalog: name.to_string(),
        }
    }

    /// The compare-and-swap; returns the rows it changed (0: the row moved on).
    async fn cas(&self, base: &Table, from: &str, to: &str) -> Result<u64> {
        let ident = base.identifier();
        let ns = ident.namespace().join(".");
        let uri = self.uri.expose();
        let failed = |e: sqlx::Error| {
            let what = format!(
                "swapping the metadata location of {ident} in the catalog at {}",
                secrets::scrub(uri)
            );
            Error::new(
                cause_kind(&e).unwrap_or(ErrorKind::Io),
                format!("{what}: {e}"),
            )
            .with_source(e)
        };
        // One statement in autocommit mode: it commits by itself, and a failure to commit
        // is its own error (never ignored).
        let rows = if uri.starts_with("sqlite:") {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(uri)
                .map_err(failed)?
                .busy_timeout(Duration::from_secs(30));
            let mut conn = sqlx::SqliteConnection::connect_with(&opts)
                .await
                .map_err(failed)?;
            let sql = cas_statement(|_| "?".into());
            let r = sqlx::query(&sql)
                .bind(to)
                .bind(from)
                .bind(&self.catalog)
                .bind(&ns)
                .bind(ident.name())
                .bind(from)
                .execute(&mut conn)
                .await
                .map_err(failed)?;
            let _ = conn.close().await;
            r.rows_affected()
        } else {
            let mut conn = sqlx::PgConnection::connect(uri).await.map_err(failed)?;
            let sql = cas_statement(|n| format!("${n}"));
            let r = sqlx::query(&sql)
                .bind(to)
                .bind(from)
                .bind(&self.catalog)
                .bind(&ns)
                .bind(ident.name())
                .bind(from)
                .execute(&mut conn)
                .await
                .map_err(failed)?;
            let _ = conn.close().await;
            r.rows_affected()
        };
        Ok(rows)
    }
}

#[async_trait]
impl Swap for SqlSwap {
    async fn swap(
        &self,
        base: &Table,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<Table> {
        for r in &requirements {
            r.check(Some(base.metadata()))
                .map_err(|e| ice(e, "checking the commit's requirements"))?;
        }
        let from = base
            .metadata_location_result()
            .map_err(|e| ice(e, "the table's metadata location"))?
            .to_string();
        let mut builder = base.metadata().clone().into_builder(Some(from.clone()));
        for u in updates {
            builder = u
                .apply(builder)
                .map_err(|e| ice(e, "applying the commit to the table metadata"))?;
        }
        let md = builder
            .build()
            .map_err(|e| ice(e, "building the new table metadata"))?
            .metadata;
        let loc = MetadataLocation::from_str(&from)
            .map_err(|e| ice(e, "the table's metadata location"))?
            .with_next_version()
            .with_new_metadata(&md);
        md.write_to(base.file_io(), &loc)
            .await
            .map_err(|e| ice(e, "writing the new table metadata"))?;
        let to = loc.to_string();
        match self.cas(base, &from, &to).await? {
            0 => {
                // Lost the race for certain: the new metadata file is nobody's.
                if let Err(e) = base.file_io().delete(&to).await {
                    tracing::warn!(file = %to, error = %e, "could not delete unused table metadata");
                }
                Err(Error::conflict(format!(
                    "another writer committed to {} first (its metadata is no longer {from})",
                    base.identifier()
                )))
            }
            _ => {
                let runtime =
                    iceberg::Runtime::try_current().map_err(|e| ice(e, "the async runtime"))?;
                Table::builder()
                    .identifier(base.identifier().clone())
                    .metadata_location(to)
                    .metadata(Arc::new(md))
                    .file_io(base.file_io().clone())
                    .runtime(runtime)
                    .build()
                    .map_err(|e| ice(e, "the committed table"))
            }
        }
    }
}

/// The swap of `cfg`'s catalog: [`SqlSwap`] on its SQL database, or [`RestSwap`] on its REST
/// catalog (with the warehouse, token or credential the writer's REST client uses).
pub fn swap_for(cfg: &IcebergWriterConfig) -> Result<Box<dyn Swap>> {
    Ok(match cfg.catalog.kind {
        CatalogKind::Sql => Box::new(SqlSwap::new(&sql_catalog_uri(cfg)?, &cfg.catalog.name)),
        CatalogKind::Rest => {
            let uri = cfg.catalog.uri.as_ref().map_or("", |u| u.expose());
            // The warehouse as the writer's REST client sends it (a local one made absolute).
            let warehouse = match cfg.warehouse.as_deref() {
                None => None,
                // An object store as given (Azure in the abfss:// form the writer uses).
                Some(w) if dativo_storage::is_remote(w) => Some(
                    crate::iceberg::writer::azure_warehouse(w, cfg.azure.as_ref())?
                        .unwrap_or_else(|| w.to_string()),
                ),
                Some(w) => {
                    let p = Path::new(w.trim_start_matches("file://"));
                    let abs = if p.is_absolute() {
                        p.to_path_buf()
                    } else {
                        std::env::current_dir()?.join(p)
                    };
                    Some(abs.display().to_string().trim_end_matches('/').to_string())
                }
            };
            let auth = match (&cfg.catalog.token, &cfg.catalog.credential) {
                (Some(t), _) => RestAuth::Token(t.clone()),
                (None, Some(c)) => RestAuth::Credential(c.clone()),
                (None, None) => RestAuth::None,
            };
            Box::new(RestSwap::new(uri, warehouse, auth)?)
        }
    })
}

/// How [`RestSwap`] authenticates (as iceberg-rust's REST client: a token wins over a
/// credential).
#[derive(Clone)]
pub enum RestAuth {
    /// No `Authorization` header.
    None,
    /// A bearer token as configured.
    Token(Secret),
    /// OAuth2 client credentials `client_id:client_secret` (or a bare secret), exchanged at
    /// `{uri}/v1/oauth/tokens` (grant type `client_credentials`, scope `catalog`).
    Credential(Secret),
}

/// Bounds of the REST catalog's requests: reaching it, its config and token, and a commit
/// (the catalog writes the new metadata file before it answers).
const REST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REST_SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const REST_COMMIT_TIMEOUT: Duration = Duration::from_secs(120);

/// The REST catalog's swap: the Iceberg REST spec's commitTable,
/// `POST {uri}/v1/{prefix}/namespaces/{namespace}/tables/{table}` with the commit's
/// requirements and updates. The catalog checks the requirements against its current state,
/// writes the new `metadata.json` and answers with it (200), or refuses because the table
/// moved (409).
pub struct RestSwap {
    /// The catalog's base URL (`https://host/catalog`).
    uri: reqwest::Url,
    /// Sent to `GET /v1/config` (a server may pick the prefix by warehouse).
    warehouse: Option<String>,
    auth: RestAuth,
    client: reqwest::Client,
    /// The tables' base URL and the bearer token, set up by the first swap.
    session: tokio::sync::OnceCell<RestSession>,
}

struct RestSession {
    /// `{uri}/v1/{prefix}` (the server's config may override `uri`).
    base: reqwest::Url,
    token: Option<Secret>,
}

impl RestSwap {
    /// A swap on the REST catalog at `uri`; `warehouse` is passed to its config endpoint.
    pub fn new(uri: &str, warehouse: Option<String>, auth: RestAuth) -> Result<RestSwap> {
        let bad = || {
            Error::config(format!(
                "`{}` is not an http(s) URL of a REST catalog",
                secrets::scrub(uri)
            ))
            .with_key_path("catalog.uri")
        };
        let uri = reqwest::Url::parse(uri).map_err(|_| bad())?;
        if !matches!(uri.scheme(), "http" | "https") {
            return Err(bad());
        }
        let client = reqwest::Client::builder()
            .connect_timeout(REST_CONNECT_TIMEOUT)
            // A redirected POST becomes a GET: a commit must reach the catalog as sent.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("dativo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal("building the HTTP client").with_source(e))?;
        Ok(RestSwap {
            uri,
            warehouse,
            auth,
            client,
            session: tokio::sync::OnceCell::new(),
        })
    }

    async fn session(&self) -> Result<&RestSession> {
        self.session.get_or_try_init(|| self.open_session()).await
    }

    /// The token (a credential exchanged first), then the server's config: its `prefix`
    /// (`overrides` over `defaults`) and perhaps another `uri`, as iceberg-rust's client does.
    async fn open_session(&self) -> Result<RestSession> {
        let token = match &self.auth {
            RestAuth::None => None,
            RestAuth::Token(t) => Some(t.clone()),
            RestAuth::Credential(c) => Some(self.exchange(c).await?),
        };
        let mut url = endpoint(&self.uri, &["v1", "config"])?;
        if let Some(w) = &self.warehouse {
            url.query_pairs_mut().append_pair("warehouse", w);
        }
        let what = format!("reading the config of the REST catalog at {}", shown(&url));
        let req = self.client.get(url).timeout(REST_SETUP_TIMEOUT);
        let (status, text) = send(req, token.as_ref())
            .await
            .map_err(|e| unreached(e, &what))?;
        if status != reqwest::StatusCode::OK {
            return Err(refused(status, &text, &what));
        }
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(default)]
            defaults: HashMap<String, serde_json::Value>,
            #[serde(default)]
            overrides: HashMap<String, serde_json::Value>,
        }
        let config: Config = serde_json::from_str(&text).map_err(|e| {
            Error::config(format!("{what}: it answered no catalog config: {e}"))
                .with_key_path("catalog.uri")
        })?;
        let prop = |k: &str| {
            config
                .overrides
                .get(k)
                .or_else(|| config.defaults.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let root = match config.overrides.get("uri").and_then(|v| v.as_str()) {
            Some(u) => reqwest::Url::parse(u).map_err(|e| {
                Error::config(format!(
                    "{what}: its `uri` override `{u}` is not a URL: {e}"
                ))
            })?,
            None => self.uri.clone(),
        };
        let mut base = endpoint(&root, &["v1"])?;
        // The prefix is path text as the server gave it (Java's and iceberg-rust's clients
        // join it unencoded): it may hold several segments or escapes of its own.
        if let Some(prefix) = prop("prefix").filter(|p| !p.trim_matches('/').is_empty()) {
            let path = format!("{}/{}", base.path(), prefix.trim_matches('/'));
            base.set_path(&path);
        }
        Ok(RestSession { base, token })
    }

    /// An access token for the client credentials `credential`.
    async fn exchange(&self, credential: &Secret) -> Result<Secret> {
        let url = endpoint(&self.uri, &["v1", "oauth", "tokens"])?;
        let what = format!("OAuth2 token request to {}", shown(&url));
        let mut form = vec![("grant_type", "client_credentials")];
        match credential.expose().split_once(':') {
            Some((id, secret)) => form.extend([("client_id", id), ("client_secret", secret)]),
            None => form.push(("client_secret", credential.expose())),
        }
        form.push(("scope", "catalog"));
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let req = self
            .client
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .timeout(REST_SETUP_TIMEOUT);
        let (status, text) = send(req, None).await.map_err(|e| unreached(e, &what))?;
        if status != reqwest::StatusCode::OK {
            // A refused credential is an authentication failure, whatever the status says.
            let e = refused(status, &text, &what);
            return Err(match e.kind() {
                ErrorKind::Config => Error::auth(e.message().to_string()),
                _ => e,
            });
        }
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("access_token")?.as_str().map(Secret::new))
            .ok_or_else(|| Error::auth(format!("{what}: it answered without an access_token")))
    }
}

#[async_trait]
impl Swap for RestSwap {
    async fn swap(
        &self,
        base: &Table,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<Table> {
        let ident = base.identifier();
        let session = self.session().await?;
        let ns = ident.namespace().as_ref().join("\u{1f}");
        let url = endpoint(&session.base, &["namespaces", &ns, "tables", ident.name()])?;
        let what = format!(
            "committing to {ident} through the REST catalog at {}",
            shown(&url)
        );
        let body = serde_json::to_vec(&serde_json::json!({
            "identifier": ident,
            "requirements": requirements,
            "updates": updates,
        }))
        .map_err(|e| Error::internal(format!("{what}: encoding the commit: {e}")))?;
        let req = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .timeout(REST_COMMIT_TIMEOUT);
        let (status, text) = send(req, session.token.as_ref()).await.map_err(|e| {
            unreached(e, &what).context("the commit's outcome is unknown until the table is read")
        })?;
        match status {
            reqwest::StatusCode::OK => {}
            reqwest::StatusCode::CONFLICT => {
                return Err(Error::conflict(format!(
                    "another writer committed to {ident} first: {what}: the catalog answered \
                     409 Conflict: {}",
                    server_message(&text)
                )))
            }
            s if s.is_server_error() => {
                return Err(Error::transient(format!(
                    "{what}: the catalog answered {s}: {}; the commit's outcome is unknown",
                    server_message(&text)
                )))
            }
            s if s.is_client_error() || s.is_redirection() => return Err(refused(s, &text, &what)),
            s => {
                return Err(Error::transient(format!(
                    "{what}: the catalog answered {s}, not 200 with the committed metadata; \
                     the commit's outcome is unknown"
                )))
            }
        }
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        struct Committed {
            metadata_location: String,
            metadata: TableMetadata,
        }
        // Committed, but unreadable: the caller finds the snapshot by reading the table.
        let committed: Committed = serde_json::from_str(&text).map_err(|e| {
            Error::transient(format!(
                "{what}: the catalog answered 200 without readable table metadata: {e}"
            ))
        })?;
        let runtime = iceberg::Runtime::try_current().map_err(|e| ice(e, "the async runtime"))?;
        Table::builder()
            .identifier(ident.clone())
            .metadata_location(committed.metadata_location)
            .metadata(Arc::new(committed.metadata))
            .file_io(base.file_io().clone())
            .runtime(runtime)
            .build()
            .map_err(|e| ice(e, "the committed table"))
    }
}

/// `root` with `segments` appended to its path, each percent-encoded (a namespace's levels are
/// joined with 0x1F, which becomes `%1F`).
fn endpoint(root: &reqwest::Url, segments: &[&str]) -> Result<reqwest::Url> {
    let mut url = root.clone();
    url.path_segments_mut()
        .map_err(|()| {
            Error::config(format!("`{}` cannot be a base URL", shown(root)))
                .with_key_path("catalog.uri")
        })?
        .pop_if_empty()
        .extend(segments);
    Ok(url)
}

/// Send `req` with the bearer `token`; the status and the body.
async fn send(
    req: reqwest::RequestBuilder,
    token: Option<&Secret>,
) -> std::result::Result<(reqwest::StatusCode, String), reqwest::Error> {
    let req = match token {
        Some(t) => req.bearer_auth(t.expose()),
        None => req,
    };
    let resp = req.send().await?;
    let status = resp.status();
    Ok((status, resp.text().await?))
}

/// A request that got no answer: the service was unreachable or the connection failed.
fn unreached(e: reqwest::Error, what: &str) -> Error {
    let kind = cause_kind(&e).unwrap_or(ErrorKind::Transient);
    let msg = secrets::scrub(&format!("{what}: {e}"));
    Error::new(kind, msg).with_source(e)
}

/// A catalog's refusal (a 4xx or a redirect; a 5xx is transient), with its message.
fn refused(status: reqwest::StatusCode, body: &str, what: &str) -> Error {
    let msg = format!(
        "{what}: the catalog answered {status}: {}",
        server_message(body)
    );
    match status.as_u16() {
        401 | 403 | 419 => Error::auth(msg),
        429 | 500..=599 => Error::transient(msg),
        300..=399 => Error::config(format!("{msg}; set `catalog.uri` to the catalog's own URL"))
            .with_key_path("catalog.uri"),
        _ => Error::config(msg),
    }
}

/// The message of a REST error response (`{"error": {"message", "type", "code"}}`), or the
/// start of the body; secrets scrubbed.
fn server_message(body: &str) -> String {
    let parsed = serde_json::from_str::<serde_json::Value>(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let text = match (
        error.and_then(|e| e.get("type")?.as_str()),
        error.and_then(|e| e.get("message")?.as_str()),
    ) {
        (Some(t), Some(m)) => format!("{t}: {m}"),
        (None, Some(m)) => m.to_string(),
        _ if body.trim().is_empty() => "(no message)".to_string(),
        _ => body.trim().chars().take(300).collect(),
    };
    secrets::scrub(&text)
}

/// A URL as shown in messages (any password in it scrubbed).
fn shown(url: &reqwest::Url) -> String {
    secrets::scrub(url.as_str())
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// The compare-and-swap of the catalog row (pyiceberg's and JdbcCatalog's statement), with the
/// database's placeholders: `placeholder(n)` for the n-th (1-based) bound value.
fn cas_statement(placeholder: impl Fn(usize) -> String) -> String {
    let p: Vec<String> = (1..=6).map(placeholder).collect();
    format!(
        "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} \
         WHERE catalog_name = {} AND table_namespace = {} AND table_name = {} \
         AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = {}",
        p[0], p[1], p[2], p[3], p[4], p[5]
    )
}
