//! `reader: http` configuration.

use std::collections::BTreeMap;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use dativo_core::config::DurationValue;
use dativo_core::schema_spec::ColumnSpec;
use dativo_core::secrets::Secret;
use dativo_core::{Error, Result};

/// `source.config` of `reader: http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpReaderConfig {
    /// The endpoint (`https://api.example.com/v1/orders`); or `base_url` and `path`.
    #[serde(default)]
    pub url: String,
    /// With `path`, instead of `url`: `base_url` + `/` + `path`. Resources of one API
    /// (`resources: {orders: {path: /orders}, …}`) share `base_url`, auth and pagination.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The endpoint under `base_url` (`/v1/orders`).
    #[serde(default)]
    pub path: Option<String>,
    /// `GET` (default) or `POST` (any case).
    #[serde(default)]
    pub method: Method,
    /// Extra request headers; names and values must be valid HTTP (checked by
    /// [`HttpReaderConfig::check`]).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters sent with every request.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// `POST`: the JSON body; pagination and incremental values are added to it as top-level
    /// fields when `send_in: body`.
    #[serde(default)]
    pub body: Option<Value>,
    /// Where pagination and incremental values go: `query` (default) or `body` (POST).
    #[serde(default)]
    pub send_in: SendIn,
    /// Authentication.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// JSONPath of the records array (`$.data.items`); default: the response itself when it is
    /// an array, else its first array-valued field.
    #[serde(default)]
    pub records: Option<String>,
    /// Columns: `[{name, type}]`; default: inferred from the first page (see the docs).
    #[serde(default)]
    pub schema: Option<Vec<ColumnSpec>>,
    /// Pagination.
    #[serde(default)]
    pub pagination: Pagination,
    /// Incremental loading by a field of the records.
    #[serde(default)]
    pub incremental: Option<Incremental>,
    /// Records per batch handed to the writer (pages are combined; default 10000).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Requests per second at most (default: no limit).
    #[serde(default)]
    pub requests_per_second: Option<f64>,
    /// Per-request timeout (default 30s).
    #[serde(default = "default_timeout")]
    pub timeout: DurationValue,
    /// Retries of one request on 429, 5xx, timeouts and dropped connections (default 8).
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First retry delay, doubled each time with jitter (default 500ms; `Retry-After` wins).
    #[serde(default = "default_backoff")]
    pub backoff: DurationValue,
}

/// The request method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// `GET`.
    #[default]
    Get,
    /// `POST`, with the JSON `body`.
    Post,
}

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.eq_ignore_ascii_case("GET") {
            Ok(Method::Get)
        } else if s.eq_ignore_ascii_case("POST") {
            Ok(Method::Post)
        } else {
            Err(serde::de::Error::custom(format!(
                "unknown method `{s}`: use GET or POST"
            )))
        }
    }
}
fn default_batch() -> usize {
    10_000
}
fn default_timeout() -> DurationValue {
    DurationValue(std::time::Duration::from_secs(30))
}
fn default_retries() -> u32 {
    8
}
fn default_backoff() -> DurationValue {
    DurationValue(std::time::Duration::from_millis(500))
}

/// Where request values go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SendIn {
    /// Query string.
    #[default]
    Query,
    /// JSON body fields.
    Body,
}

/// `auth:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer {
        /// The token; use `${env:…}`.
        token: Secret,
    },
    /// HTTP basic.
    Basic {
        /// User.
        username: String,
        /// Password; use `${env:…}`.
        password: Secret,
    },
    /// An API key in a header (default `X-API-Key`) or a query parameter.
    ApiKey {
        /// The key; use `${env:…}`.
        value: Secret,
        /// Header or parameter name.
        #[serde(default = "default_key_name")]
        name: String,
        /// `header` (default) or `query`.
        #[serde(default, rename = "in")]
        location: SendKey,
    },
    /// OAuth2 client credentials: a token from `token_url`, renewed before it expires.
    Oauth2 {
        /// The token endpoint.
        token_url: String,
        /// Client id.
        client_id: String,
        /// Client secret; use `${env:…}`.
        client_secret: Secret,
        /// Scope, if the server wants one.
        #[serde(default)]
        scope: Option<String>,
    },
}

fn default_key_name() -> String {
    "X-API-Key".into()
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SendKey {
    /// A header.
    #[default]
    Header,
    /// A query parameter.
    Query,
}

/// `pagination:`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Pagination {
    /// One request.
    #[default]
    None,
    /// `?page=1&per_page=100`, … until a short or empty page.
    Page {
        /// Page parameter (default `page`).
        #[serde(default = "p_page")]
        param: String,
        /// First page number (default 1).
        #[serde(default = "one")]
        start: u64,
        /// Page-size parameter, if the API takes one.
        #[serde(default)]
        size_param: Option<String>,
        /// Records per page (default 100): a shorter page is the last.
        #[serde(default = "hundred")]
        size: u64,
    },
    /// `?offset=0&limit=100`, … until a short or empty page.
    Offset {
        /// Offset parameter (default `offset`).
        #[serde(default = "p_offset")]
        offset_param: String,
        /// Limit parameter (default `limit`).
        #[serde(default = "p_limit")]
        limit_param: String,
        /// Records per page (default 100).
        #[serde(default = "hundred")]
        limit: u64,
    },
    /// A cursor token from the body (`$.meta.next_cursor`) sent back as a parameter.
    Cursor {
        /// JSONPath of the next cursor; missing, null or empty ends the stream.
        cursor_path: String,
        /// Parameter that sends it (default `cursor`).
        #[serde(default = "p_cursor")]
        param: String,
    },
    /// The next page's URL in the body (`$.links.next`).
    NextUrl {
        /// JSONPath of the next URL; missing or null ends the stream.
        next_path: String,
    },
    /// RFC 8288 `Link: <…>; rel="next"` headers (GitHub style).
    LinkHeader,
}

fn p_page() -> String {
    "page".into()
}
fn p_offset() -> String {
    "offset".into()
}
fn p_limit() -> String {
    "limit".into()
}
fn p_cursor() -> String {
    "cursor".into()
}
fn one() -> u64 {
    1
}
fn hundred() -> u64 {
    100
}

/// `incremental:`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// The records' field that grows (`updated_at`, `id`): the state is its highest value
    /// committed.
    pub cursor_field: String,
    /// The parameter that sends it back (`updated_since`).
    pub param: String,
    /// Sent on the first run (e.g. `2020-01-01T00:00:00Z`); default: nothing (everything).
    #[serde(default)]
    pub initial: Option<String>,
    /// Records whose cursor equals the committed one and whose key is listed here were already
    /// loaded (APIs whose `since` is inclusive): they are skipped.
    #[serde(default)]
    pub primary_key: Option<String>,
}

impl HttpReaderConfig {
    /// Read `config` and resolve the endpoint (`url`, or `base_url` + `path`).
    pub fn parse(config: &Value) -> Result<Self> {
        let mut c: HttpReaderConfig = dativo_core::config::from_config(config)?;
        let k = |p: &str, m: &str| Err(Error::config(m.to_string()).with_key_path(p));
        match (c.url.is_empty(), &c.base_url, &c.path) {
            (false, None, None) => {}
            (false, _, _) => {
                return k(
                    "url",
                    "set either `url`, or `base_url` and `path` (a resource's endpoint under a shared base)",
                )
            }
            (true, Some(b), Some(p)) => {
                c.url = format!("{}/{}", b.trim_end_matches('/'), p.trim_start_matches('/'));
            }
            (true, Some(_), None) => return k("path", "`base_url` needs `path` (`/v1/orders`)"),
            (true, None, Some(_)) => {
                return k("base_url", "`path` needs `base_url` (`https://api.example.com`)")
            }
            (true, None, None) => {
                return k(
                    "url",
                    "missing: the endpoint (`url: https://api.example.com/v1/orders`, or `base_url` and `path`)",
                )
            }
        }
        Ok(c)
    }

    /// Checks that need no I/O.
    pub fn check(&self) -> Result<()> {
        let k = |p: &str, m: &str| Err(Error::config(m.to_string()).with_key_path(p));
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return k("url", "must be an http:// or https:// URL");
        }
        if self.send_in == SendIn::Body && self.method != Method::Post {
            return k("send_in", "`body` needs `method: POST`");
        }
        self.header_map()?;
        if let Some(Auth::ApiKey {
            name,
            location: SendKey::Header,
            ..
        }) = &self.auth
        {
            HeaderName::try_from(name.as_str()).map_err(|e| {
                Error::config(format!("`{name}` is not a valid header name"))
                    .with_source(e)
                    .with_key_path("auth.name")
            })?;
        }
        dativo_core::config::check_batch_size("batch_size", self.batch_size)?;
        if let Some(r) = self.requests_per_second {
            if r <= 0.0 || !r.is_finite() {
                return k("requests_per_second", "must be a positive number");
            }
        }
        if let Some(p) = &self.records {
            super::jsonpath::parse(p).map_err(|m| Error::config(m).with_key_path("records"))?;
        }
        match &self.pagination {
            Pagination::Cursor { cursor_path, .. } => {
                super::jsonpath::parse(cursor_path)
                    .map_err(|m| Error::config(m).with_key_path("pagination.cursor_path"))?;
            }
            Pagination::NextUrl { next_path } => {
                super::jsonpath::parse(next_path)
                    .map_err(|m| Error::config(m).with_key_path("pagination.next_path"))?;
            }
            Pagination::Page { size: 0, .. } | Pagination::Offset { limit: 0, .. } => {
                return k("pagination", "the page size must be at least 1");
            }
            _ => {}
        }
        if let Some(s) = &self.schema {
            dativo_core::schema_spec::to_schema(s).map_err(|e| {
                let m = e.message().to_string();
                let p = e.key_path().unwrap_or("").to_string();
                Error::config(m).with_key_path(format!("schema{p}"))
            })?;
        }
        Ok(())
    }

    /// `headers` as HTTP headers; a name or value HTTP cannot carry is a config error naming
    /// the header (`headers.X-Name`).
    pub fn header_map(&self) -> Result<HeaderMap> {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let key = format!("headers.{k}");
            let name = HeaderName::try_from(k.as_str()).map_err(|e| {
                Error::config(format!("`{k}` is not a valid header name"))
                    .with_source(e)
                    .with_key_path(key.clone())
            })?;
            let value = HeaderValue::try_from(v.as_str()).map_err(|e| {
                Error::config(
                    "the value holds characters a header cannot carry (control characters or \
                     line breaks)",
                )
                .with_source(e)
                .with_key_path(key)
            })?;
            map.insert(name, value);
        }
        Ok(map)
    }
}
