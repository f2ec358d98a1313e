//! The `http` reader.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::json::reader::Decoder;
use arrow::record_batch::RecordBatch;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use dativo_core::backoff::backoff;
use dativo_core::schema_spec::{to_schema, ColumnSpec};
use dativo_core::secrets::{self, Secret};
use dativo_core::{Error, OpenReader, ReaderContext, Result};

use super::config::{Auth, HttpReaderConfig, Method, Pagination, SendIn, SendKey};
use super::jsonpath::{self, Step};
use dativo_core::rt::runtime;

/// Where the next page is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Next {
    Page(u64),
    Offset(u64),
    Cursor(Option<String>),
    Url(String),
}

/// The reader's state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct HttpState {
    /// The highest cursor value committed by a finished run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<Value>,
    /// Keys of the records with exactly that cursor value (for inclusive `since` APIs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys_at_cursor: Vec<String>,
    /// An unfinished run: where it stopped, and what it had seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resume: Option<Resume>,
    /// The inferred columns, so that a run with no new records keeps the schema.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    columns: Vec<ColumnSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Resume {
    next: Next,
    #[serde(default)]
    max: Option<Value>,
    #[serde(default)]
    max_keys: Vec<String>,
}

/// Reads records from a JSON REST API; opened ready by [`HttpReader::open`].
pub struct HttpReader {
    pager: Pager,
    schema: SchemaRef,
    /// The schema arrow-json decodes into: UTC timestamp columns as "+00:00" (see `decode`).
    decode_schema: SchemaRef,
    warned_fields: BTreeSet<String>,
}

/// The requests: where the next page is, what was seen, credentials.
struct Pager {
    cfg: HttpReaderConfig,
    /// `cfg.headers`, checked.
    headers: HeaderMap,
    client: reqwest::Client,
    /// The JSONPath of the records; `None`: the response, or its first array.
    records_path: Option<Vec<Step>>,
    /// The JSONPath of the next cursor or next URL (cursor / next-URL pagination only).
    next_path: Option<Vec<Step>>,
    state: HttpState,
    /// Where the next page is; `None` when the stream has ended.
    next: Option<Next>,
    max: Option<Value>,
    max_keys: BTreeSet<String>,
    /// Pages fetched but not yet returned (records, and the position after them).
    buffered: VecDeque<(Vec<Value>, Option<Next>)>,
    /// The position covered by the batches returned so far.
    delivered: Option<Next>,
    finished: bool,
    last_request: Option<Instant>,
    /// The OAuth2 access token and until when it is used.
    token: Option<(Secret, Instant)>,
    pages: u64,
    last_page: Option<u64>,
}

/// Retry delays grow to at most this (a `Retry-After` may ask for longer, up to 300 s).
const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn is_retryable_status(s: u16) -> bool {
    s == 429 || s == 408 || s >= 500
}

/// `Retry-After`: seconds or an HTTP date.
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get("retry-after")?.to_str().ok()?.trim().to_string();
    if let Ok(s) = v.parse::<f64>() {
        return Some(Duration::from_secs_f64(s.clamp(0.0, 300.0)));
    }
    let t = chrono::DateTime::parse_from_rfc2822(&v).ok()?;
    let d = t.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(
        d.to_std()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(300)),
    )
}

/// A URL for messages: no secrets (they are registered), no long query strings.
fn shown(url: &str) -> String {
    let s = secrets::scrub(url);
    if s.len() > 200 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(200).map(|(i, _)| i).unwrap_or(s.len())]
        )
    } else {
        s
    }
}

/// Compare two cursor values: numbers numerically, strings lexicographically (ISO 8601 times
/// in one format sort correctly).
fn cursor_cmp(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(std::cmp::Ordering::Equal),
        _ => value_text(a).cmp(&value_text(b)),
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Infer columns from records: int64, float64, bool, string; objects and arrays are JSON
/// text; a field that mixes kinds is a string.
fn infer(records: &[Value]) -> Vec<ColumnSpec> {
    let mut order: Vec<String> = Vec::new();
    let mut kinds: BTreeMap<String, &'static str> = BTreeMap::new();
    for r in records {
        let Some(obj) = r.as_object() else { continue };
        for (k, v) in obj {
            if !order.contains(k) {
                order.push(k.clone());
            }
            let kind = match v {
                Value::Null => continue,
                Value::Bool(_) => "bool",
                Value::Number(n) if n.is_i64() || n.is_u64() => "int64",
                Value::Number(_) => "float64",
                Value::String(_) => "string",
                Value::Array(_) | Value::Object(_) => "json",
            };
            match kinds.get(k).copied() {
                None => {
                    kinds.insert(k.clone(), kind);
                }
                Some(prev) if prev == kind => {}
                Some("int64") if kind == "float64" => {
                    kinds.insert(k.clone(), "float64");
                }
                Some("float64") if kind == "int64" => {}
                Some(_) => {
                    kinds.insert(k.clone(), "string");
                }
            }
        }
    }
    order
        .into_iter()
        .map(|name| ColumnSpec {
            data_type: kinds.get(&name).copied().unwrap_or("string").to_string(),
            name,
            nullable: true,
        })
        .collect()
}

/// Where a stream starts.
fn first(cfg: &HttpReaderConfig) -> Next {
    match &cfg.pagination {
        Pagination::Page { start, .. } => Next::Page(*start),
        Pagination::Offset { .. } => Next::Offset(0),
        Pagination::Cursor { .. } => Next::Cursor(None),
        Pagination::None | Pagination::NextUrl { .. } | Pagination::LinkHeader => {
            Next::Url(cfg.url.clone())
        }
    }
}

impl HttpReader {
    /// Validate a config without network access.
    pub fn validate(config: &Value) -> Result<()> {
        HttpReaderConfig::parse(config)?.check()
    }

    /// Check the config, resume from `ctx.state`, and know the schema: declared, or inferred
    /// from the first page that has records (those pages are kept for reading).
    pub fn open(config: &Value, ctx: &ReaderContext) -> Result<Self> {
        let cfg = HttpReaderConfig::parse(config)?;
        cfg.check()?;
        if ctx.shard.count > 1 {
            return Err(Error::config(
                "the http reader cannot be sharded: an API's pages are one sequence; run it as one shard",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout.0)
            .user_agent(concat!("dativo/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal("building the HTTP client").with_source(e))?;
        let records_path = cfg
            .records
            .as_deref()
            .map(jsonpath::parse)
            .transpose()
            .map_err(|m| Error::config(m).with_key_path("records"))?;
        let next_path = match &cfg.pagination {
            Pagination::Cursor { cursor_path: p, .. } => Some(
                jsonpath::parse(p)
                    .map_err(|m| Error::config(m).with_key_path("pagination.cursor_path"))?,
            ),
            Pagination::NextUrl { next_path: p } => Some(
                jsonpath::parse(p)
                    .map_err(|m| Error::config(m).with_key_path("pagination.next_path"))?,
            ),
            _ => None,
        };
        let mut state: HttpState = match &ctx.state {
            Some(s) if cfg.incremental.is_some() || s.get("resume").is_some() => {
                serde_json::from_value(s.clone()).map_err(|e| {
                    Error::data(format!(
                        "the stored state is not an http reader state ({e}); reset it with `dativo state reset`"
                    ))
                })?
            }
            _ => HttpState::default(),
        };
        if cfg.incremental.is_none() {
            // Full refresh: resume an interrupted run only.
            state.cursor = None;
            state.keys_at_cursor.clear();
        }
        let (next, max, max_keys) = match state.resume.take() {
            Some(r) => (r.next, r.max, r.max_keys.into_iter().collect()),
            None => (first(&cfg), None, BTreeSet::new()),
        };
        let mut pager = Pager {
            headers: cfg.header_map()?,
            cfg,
            client,
            records_path,
            next_path,
            state,
            next: Some(next.clone()),
            max,
            max_keys,
            buffered: VecDeque::new(),
            delivered: Some(next),
            finished: false,
            last_request: None,
            token: None,
            pages: 0,
            last_page: None,
        };
        let cols = match &pager.cfg.schema {
            Some(cols) => cols.clone(),
            None => {
                // Inference: look at pages until one has records (they are kept for reading).
                let mut cols = Vec::new();
                while let Some((records, after)) = pager.fetch_page()? {
                    let records = pager.filter_and_track(records);
                    if records.is_empty() && after.is_some() {
                        pager.buffered.push_back((records, after));
                        continue;
                    }
                    cols = infer(&records);
                    pager.buffered.push_back((records, after));
                    break;
                }
                if cols.is_empty() {
                    cols = pager.state.columns.clone();
                }
                cols
            }
        };
        pager.state.columns = if pager.cfg.schema.is_some() {
            Vec::new()
        } else {
            cols.clone()
        };
        let schema = if cols.is_empty() {
            Arc::new(Schema::new(Vec::<Field>::new()))
        } else {
            to_schema(&cols)?
        };
        // arrow-json parses named time zones only with chrono-tz: decode UTC columns as
        // "+00:00" (the same instants) and relabel them afterwards.
        let utc = |tz: &str| matches!(tz, "UTC" | "Z" | "Etc/UTC" | "utc");
        let decode_schema = Arc::new(Schema::new(
            schema
                .fields()
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Timestamp(u, Some(tz)) if utc(tz) => f
                        .as_ref()
                        .clone()
                        .with_data_type(DataType::Timestamp(*u, Some("+00:00".into()))),
                    _ => f.as_ref().clone(),
                })
                .collect::<Vec<Field>>(),
        ));
        Ok(HttpReader {
            pager,
            schema,
            decode_schema,
            warned_fields: BTreeSet::new(),
        })
    }

    /// Records → a batch of the schema: nested values become JSON text for JSON/string
    /// columns; fields the schema lacks are dropped (once warned).
    fn decode(&mut self, records: &[Value]) -> Result<RecordBatch> {
        let schema = self.schema.clone();
        let mut rows: Vec<Map<String, Value>> = Vec::with_capacity(records.len());
        for r in records {
            let Some(obj) = r.as_object() else {
                return Err(Error::data(format!(
                    "a record is {}, not a JSON object: {}",
                    kind(r),
                    secrets::scrub(&r.to_string().chars().take(100).collect::<String>())
                )));
            };
            let mut row = Map::with_capacity(schema.fields().len());
            for f in schema.fields() {
                if let Some(v) = obj.get(f.name()) {
                    let v = match (f.data_type(), v) {
                        (
                            DataType::Utf8 | DataType::LargeUtf8,
                            Value::Object(_) | Value::Array(_),
                        ) => Value::String(v.to_string()),
                        _ => v.clone(),
                    };
                    row.insert(f.name().clone(), v);
                }
            }
            for k in obj.keys() {
                if schema.field_with_name(k).is_err() && self.warned_fields.insert(k.clone()) {
                    tracing::warn!(field = %k, "the API sent a field that is not in the schema; it is left out (declare it in `schema`, or it is picked up by the next run's inference)");
                }
            }
            rows.push(row);
        }
        let decode_schema = self.decode_schema.clone();
        let mut decoder: Decoder = arrow::json::ReaderBuilder::new(decode_schema)
            .with_batch_size(rows.len().max(1))
            .with_coerce_primitive(true)
            .build_decoder()?;
        let misfit = |e: arrow::error::ArrowError| {
            Error::data(format!(
                "records do not fit the schema ({e}); the API changed a field's type — declare the column's type in `schema` or reset the state to re-infer"
            ))
        };
        decoder.serialize(&rows).map_err(misfit)?;
        let Some(batch) = decoder.flush().map_err(misfit)? else {
            return Ok(RecordBatch::new_empty(schema));
        };
        let columns = batch
            .columns()
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    let data = c
                        .to_data()
                        .into_builder()
                        .data_type(f.data_type().clone())
                        .build()?;
                    Ok(arrow::array::make_array(data))
                }
            })
            .collect::<std::result::Result<Vec<_>, arrow::error::ArrowError>>()?;
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

impl Pager {
    fn since(&self) -> Option<String> {
        let inc = self.cfg.incremental.as_ref()?;
        self.state
            .cursor
            .as_ref()
            .map(value_text)
            .or_else(|| inc.initial.clone())
    }

    fn throttle(&mut self) {
        if let (Some(rps), Some(last)) = (self.cfg.requests_per_second, self.last_request) {
            let gap = Duration::from_secs_f64(1.0 / rps);
            let since = last.elapsed();
            if since < gap {
                std::thread::sleep(gap - since);
            }
        }
        self.last_request = Some(Instant::now());
    }

    /// An OAuth2 access token, fetched or renewed when needed; `None` without OAuth2.
    fn oauth_token(&mut self, force: bool) -> Result<Option<Secret>> {
        let Some(Auth::Oauth2 {
            token_url,
            client_id,
            client_secret,
            scope,
        }) = self.cfg.auth.clone()
        else {
            return Ok(None);
        };
        if !force {
            if let Some((t, until)) = &self.token {
                if Instant::now() < *until {
                    return Ok(Some(t.clone()));
                }
            }
        }
        let mut form = vec![
            ("grant_type", "client_credentials".to_string()),
            ("client_id", client_id.clone()),
            ("client_secret", client_secret.expose().to_string()),
        ];
        if let Some(s) = scope {
            form.push(("scope", s));
        }
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let client = self.client.clone();
        let resp = runtime().block_on(async {
            let r = client
                .post(&token_url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await?;
            let status = r.status();
            let text = r.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        });
        let (status, text) = resp.map_err(|e| {
            Error::connect(format!("OAuth2 token request to {}", shown(&token_url))).with_source(e)
        })?;
        if !status.is_success() {
            return Err(Error::auth(format!(
                "OAuth2 token request to {} answered {status}: {}",
                shown(&token_url),
                secrets::scrub(&text.chars().take(300).collect::<String>())
            )));
        }
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            Error::auth(format!(
                "OAuth2 token endpoint {} did not answer JSON",
                shown(&token_url)
            ))
            .with_source(e)
        })?;
        let token = v
            .get("access_token")
            .and_then(|t| t.as_str())
            .map(Secret::new)
            .ok_or_else(|| {
                Error::auth(format!(
                    "OAuth2 token endpoint {} answered without access_token",
                    shown(&token_url)
                ))
            })?;
        let ttl = v.get("expires_in").and_then(|e| e.as_u64()).unwrap_or(3600);
        let until = Instant::now() + Duration::from_secs(ttl.saturating_sub(30).max(1));
        self.token = Some((token.clone(), until));
        Ok(Some(token))
    }

    /// Build and send the request for `next`, with retries. Returns (body, headers, url).
    fn fetch(&mut self, next: &Next) -> Result<(Value, HeaderMap, String)> {
        let cfg = self.cfg.clone();
        let mut url = match next {
            Next::Url(u) => u.clone(),
            _ => cfg.url.clone(),
        };
        let mut extra: Vec<(String, String)> = Vec::new();
        let first_url = matches!(next, Next::Url(u) if *u == cfg.url);
        if !matches!(next, Next::Url(_)) || first_url {
            for (k, v) in &cfg.params {
                extra.push((k.clone(), v.clone()));
            }
            if let (Some(inc), Some(since)) = (&cfg.incremental, self.since()) {
                extra.push((inc.param.clone(), since));
            }
            match (&cfg.pagination, next) {
                (
                    Pagination::Page {
                        param,
                        size_param,
                        size,
                        ..
                    },
                    Next::Page(n),
                ) => {
                    extra.push((param.clone(), n.to_string()));
                    if let Some(sp) = size_param {
                        extra.push((sp.clone(), size.to_string()));
                    }
                }
                (
                    Pagination::Offset {
                        offset_param,
                        limit_param,
                        limit,
                    },
                    Next::Offset(o),
                ) => {
                    extra.push((offset_param.clone(), o.to_string()));
                    extra.push((limit_param.clone(), limit.to_string()));
                }
                (Pagination::Cursor { param, .. }, Next::Cursor(Some(c))) => {
                    extra.push((param.clone(), c.clone()));
                }
                _ => {}
            }
        }
        // Credentials go to the configured origin only, never to where a next link points.
        let trusted = self.same_origin(&url);
        if !trusted {
            tracing::warn!(url = %shown(&url), "the next page is on another host: requesting it without credentials");
        }
        if let (
            true,
            Some(Auth::ApiKey {
                value,
                name,
                location: SendKey::Query,
            }),
        ) = (trusted, &cfg.auth)
        {
            extra.push((name.clone(), value.expose().to_string()));
        }
        let mut body = cfg.body.clone();
        if cfg.send_in == SendIn::Body {
            let mut obj = body
                .take()
                .and_then(|b| b.as_object().cloned())
                .unwrap_or_default();
            for (k, v) in extra.drain(..) {
                obj.insert(k, Value::String(v));
            }
            body = Some(Value::Object(obj));
        }
        if !extra.is_empty() {
            let q: Vec<String> = extra
                .iter()
                .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
                .collect();
            url = format!(
                "{url}{}{}",
                if url.contains('?') { '&' } else { '?' },
                q.join("&")
            );
        }
        let post = cfg.method == Method::Post;
        let mut attempt = 0u32;
        let mut renewed = false;
        loop {
            attempt += 1;
            self.throttle();
            let mut headers = self.headers.clone();
            match cfg.auth.as_ref().filter(|_| trusted) {
                Some(Auth::Bearer { token }) => {
                    headers.insert(AUTHORIZATION, bearer(token.expose())?);
                }
                Some(Auth::Basic { username, password }) => {
                    let v = format!(
                        "Basic {}",
                        B64.encode(format!("{username}:{}", password.expose()))
                    );
                    headers.insert(AUTHORIZATION, header_value(&v)?);
                }
                Some(Auth::ApiKey {
                    value,
                    name,
                    location: SendKey::Header,
                }) => {
                    let n = HeaderName::try_from(name.as_str()).map_err(|e| {
                        Error::config(format!("`{name}` is not a valid header name"))
                            .with_source(e)
                            .with_key_path("auth.name")
                    })?;
                    headers.insert(n, header_value(value.expose())?);
                }
                Some(Auth::Oauth2 { .. }) => {
                    if let Some(t) = self.oauth_token(false)? {
                        headers.insert(AUTHORIZATION, bearer(t.expose())?);
                    }
                }
                _ => {}
            }
            let client = self.client.clone();
            let req = if post {
                let mut r = client.post(&url).headers(headers);
                if let Some(b) = &body {
                    r = r
                        .header(CONTENT_TYPE, "application/json")
                        .body(serde_json::to_vec(b)?);
                }
                r
            } else {
                client.get(&url).headers(headers)
            };
            let result = runtime().block_on(async {
                let r = req.send().await?;
                let status = r.status();
                let headers = r.headers().clone();
                let bytes = r.bytes().await?;
                Ok::<_, reqwest::Error>((status, headers, bytes))
            });
            let (delay, why, cause) = match result {
                Ok((status, headers, bytes)) if status.is_success() => {
                    let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                        let snippet: String =
                            String::from_utf8_lossy(&bytes).chars().take(120).collect();
                        Error::data(format!(
                            "{} answered {status} with a body that is not JSON ({e}): {}",
                            shown(&url),
                            secrets::scrub(&snippet)
                        ))
                        .with_source(e)
                    })?;
                    return Ok((v, headers, url));
                }
                Ok((status, _, _))
                    if status.as_u16() == 401
                        && matches!(cfg.auth, Some(Auth::Oauth2 { .. }))
                        && !renewed =>
                {
                    renewed = true;
                    self.oauth_token(true)?;
                    continue;
                }
                Ok((status, headers, bytes)) if is_retryable_status(status.as_u16()) => {
                    let wait = retry_after(&headers);
                    drop(bytes);
                    (wait, format!("{} answered {status}", shown(&url)), None)
                }
                Ok((status, _, bytes)) => {
                    let text: String = String::from_utf8_lossy(&bytes).chars().take(300).collect();
                    let msg = format!(
                        "{} answered {status}: {}",
                        shown(&url),
                        secrets::scrub(text.trim())
                    );
                    return Err(match status.as_u16() {
                        401 | 403 => Error::auth(format!("{msg} (check `auth`)")),
                        404 => Error::config(format!("{msg} (check `url`)")),
                        _ => Error::data(msg),
                    });
                }
                Err(e) => (None, format!("request to {} failed", shown(&url)), Some(e)),
            };
            if attempt > cfg.max_retries {
                // Never reached the server (refused, DNS, TLS, connect timeout): a connection
                // error, as the database readers report it; anything later is transient.
                let unreachable = cause.as_ref().is_some_and(|c| c.is_connect());
                let why = format!("{why}; gave up after {attempt} attempts");
                let e = if unreachable {
                    Error::connect(why)
                } else {
                    Error::transient(why)
                };
                return Err(match cause {
                    Some(c) => e.with_source(c),
                    None => e,
                });
            }
            // The server's `Retry-After` wins; else the engine's one backoff formula.
            let delay = delay.unwrap_or_else(|| {
                backoff(cfg.backoff.0, MAX_BACKOFF, attempt, rand::random::<f64>())
            });
            let detail = cause
                .as_ref()
                .map(|c| format!(": {}", secrets::scrub(&c.to_string())))
                .unwrap_or_default();
            tracing::warn!(
                attempt,
                delay_ms = delay.as_millis() as u64,
                "{why}{detail}; retrying"
            );
            std::thread::sleep(delay);
        }
    }

    /// A next URL as it may be stored in the state: without an API key the server echoed into
    /// it (the key is added again at every request).
    fn without_key(&self, url: &str) -> String {
        let Some(Auth::ApiKey {
            name,
            location: SendKey::Query,
            ..
        }) = &self.cfg.auth
        else {
            return url.to_string();
        };
        match reqwest::Url::parse(url) {
            Ok(mut u) => {
                let kept: Vec<(String, String)> = u
                    .query_pairs()
                    .filter(|(k, _)| k != name)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                if kept.is_empty() {
                    u.set_query(None);
                } else {
                    u.query_pairs_mut().clear().extend_pairs(kept);
                }
                u.to_string()
            }
            Err(_) => url.to_string(),
        }
    }

    /// Whether `url` is on the configured endpoint's origin (credentials go only there).
    fn same_origin(&self, url: &str) -> bool {
        let origin = |u: &str| {
            reqwest::Url::parse(u).ok().map(|u| {
                (
                    u.scheme().to_string(),
                    u.host_str().map(str::to_string),
                    u.port_or_known_default(),
                )
            })
        };
        origin(url) == origin(&self.cfg.url)
    }

    /// Fetch the page at `self.next`; returns its records and the position after it.
    fn fetch_page(&mut self) -> Result<Option<(Vec<Value>, Option<Next>)>> {
        let Some(next) = self.next.clone() else {
            return Ok(None);
        };
        let (body, headers, url) = self.fetch(&next)?;
        self.pages += 1;
        let records: Vec<Value> = match &self.records_path {
            Some(steps) => match jsonpath::get(&body, steps) {
                Some(Value::Array(a)) => a.clone(),
                Some(Value::Null) => Vec::new(),
                // An error body with status 200, or a typo in `records`: not an empty page.
                None => {
                    let keys = body
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "))
                        .unwrap_or_else(|| kind(&body).to_string());
                    return Err(Error::data(format!(
                        "{}: the response has no `{}` (it has: {keys}); check `records`",
                        shown(&url),
                        self.cfg.records.clone().unwrap_or_default()
                    )));
                }
                Some(other) => {
                    return Err(Error::data(format!(
                        "{}: `{}` is {} in the response, not an array of records",
                        shown(&url),
                        self.cfg.records.clone().unwrap_or_default(),
                        kind(other)
                    )))
                }
            },
            None => match &body {
                Value::Array(a) => a.clone(),
                Value::Object(o) => o
                    .values()
                    .find_map(|v| v.as_array().cloned())
                    .unwrap_or_default(),
                _ => Vec::new(),
            },
        };
        let n = records.len() as u64;
        let after = match (&self.cfg.pagination, &next) {
            (Pagination::None, _) => None,
            // Page and offset end at an empty page (APIs may cap the page size below ours,
            // so a short page proves nothing).
            (Pagination::Page { .. }, Next::Page(p)) => (n > 0).then(|| Next::Page(p + 1)),
            (Pagination::Offset { .. }, Next::Offset(o)) => (n > 0).then(|| Next::Offset(o + n)),
            (Pagination::Cursor { .. }, _) => {
                let steps = self.next_path.as_deref().unwrap_or_default();
                match jsonpath::get(&body, steps) {
                    Some(Value::String(s)) if !s.is_empty() && n > 0 => {
                        Some(Next::Cursor(Some(s.clone())))
                    }
                    Some(Value::Number(x)) if n > 0 => Some(Next::Cursor(Some(x.to_string()))),
                    _ => None,
                }
            }
            (Pagination::NextUrl { .. }, _) => {
                let steps = self.next_path.as_deref().unwrap_or_default();
                match jsonpath::get(&body, steps) {
                    Some(Value::String(s)) if !s.is_empty() => {
                        Some(Next::Url(self.without_key(&resolve(&url, s))))
                    }
                    _ => None,
                }
            }
            (Pagination::LinkHeader, _) => {
                link_next(&headers).map(|u| Next::Url(self.without_key(&resolve(&url, &u))))
            }
            _ => None,
        };
        // The same records again (a page parameter the API ignores): stop, do not loop.
        if n > 0 && after.is_some() {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            serde_json::to_string(&records)?.hash(&mut h);
            let sig = h.finish();
            if self.last_page == Some(sig) {
                return Err(Error::data(format!(
                    "{}: the API returned the same page twice; check the pagination parameters (is `{}` the API's name for it?)",
                    shown(&url),
                    match &self.cfg.pagination {
                        Pagination::Page { param, .. } => param.clone(),
                        Pagination::Offset { offset_param, .. } => offset_param.clone(),
                        Pagination::Cursor { param, .. } => param.clone(),
                        _ => "the next link".into(),
                    }
                )));
            }
            self.last_page = Some(sig);
        }
        if after.as_ref() == Some(&next) {
            return Err(Error::data(format!(
                "{}: the API points to the same page again; stopping instead of looping",
                shown(&url)
            )));
        }
        self.next = after.clone();
        Ok(Some((records, after)))
    }

    /// Drop records already loaded (inclusive `since`) and track the highest cursor.
    fn filter_and_track(&mut self, records: Vec<Value>) -> Vec<Value> {
        let Some(inc) = self.cfg.incremental.clone() else {
            return records;
        };
        let committed = self.state.cursor.clone();
        let skip: BTreeSet<&String> = self.state.keys_at_cursor.iter().collect();
        let key_of = |r: &Value, pk: &Option<String>| -> Option<String> {
            pk.as_ref().and_then(|k| r.get(k)).map(value_text)
        };
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let c = r.get(&inc.cursor_field).filter(|v| !v.is_null()).cloned();
            if let (Some(c), Some(committed)) = (&c, &committed) {
                if cursor_cmp(c, committed) == std::cmp::Ordering::Equal {
                    if let Some(k) = key_of(&r, &inc.primary_key) {
                        if skip.contains(&k) {
                            continue;
                        }
                    }
                }
            }
            if let Some(c) = c {
                match self.max.as_ref().map(|m| cursor_cmp(&c, m)) {
                    None | Some(std::cmp::Ordering::Greater) => {
                        self.max = Some(c);
                        self.max_keys.clear();
                        if let Some(k) = key_of(&r, &inc.primary_key) {
                            self.max_keys.insert(k);
                        }
                    }
                    Some(std::cmp::Ordering::Equal) => {
                        if let Some(k) = key_of(&r, &inc.primary_key) {
                            self.max_keys.insert(k);
                        }
                    }
                    _ => {}
                }
            }
            out.push(r);
        }
        out
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn bearer(token: &str) -> Result<HeaderValue> {
    header_value(&format!("Bearer {token}"))
}

fn header_value(v: &str) -> Result<HeaderValue> {
    let mut h = HeaderValue::try_from(v).map_err(|e| {
        Error::config("a credential contains characters a header cannot carry").with_source(e)
    })?;
    h.set_sensitive(true);
    Ok(h)
}

fn urlencode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                o.push(b as char)
            }
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

/// `Link: <url>; rel="next", <url>; rel="last"` → the next URL.
fn link_next(h: &HeaderMap) -> Option<String> {
    for v in h.get_all("link") {
        let v = v.to_str().ok()?;
        for part in v.split(',') {
            let mut pieces = part.split(';');
            let url = pieces.next()?.trim();
            let is_next = pieces.any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            });
            if is_next {
                return Some(
                    url.trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_string(),
                );
            }
        }
    }
    None
}

/// A possibly relative next URL, against the page it came from.
fn resolve(base: &str, next: &str) -> String {
    reqwest::Url::parse(base)
        .and_then(|b| b.join(next))
        .map(|u| u.to_string())
        .unwrap_or_else(|_| next.to_string())
}

impl OpenReader for HttpReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let target = self.pager.cfg.batch_size;
        loop {
            let p = &mut self.pager;
            if p.finished {
                return Ok(None);
            }
            let mut records: Vec<Value> = Vec::new();
            let mut position: Option<Option<Next>> = None;
            loop {
                let page = match p.buffered.pop_front() {
                    Some(page) => Some(page),
                    None => p
                        .fetch_page()?
                        .map(|(r, after)| (p.filter_and_track(r), after)),
                };
                let Some((r, after)) = page else { break };
                let end = after.is_none();
                records.extend(r);
                position = Some(after);
                if end || records.len() >= target {
                    break;
                }
            }
            let Some(position) = position else {
                p.finished = true;
                return Ok(None);
            };
            p.finished = position.is_none();
            p.delivered = position;
            if records.is_empty() {
                // Only already-loaded records on these pages: nothing to hand over.
                continue;
            }
            if self.schema.fields().is_empty() {
                let cols = infer(&records);
                return Err(Error::schema(format!(
                    "records appeared after the schema was fixed as empty; declare `schema` (inferred here: {})",
                    cols.iter()
                        .map(|c| format!("{}: {}", c.name, c.data_type))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            return self.decode(&records).map(Some);
        }
    }

    fn state(&mut self) -> Result<Option<Value>> {
        let p = &self.pager;
        let mut s = p.state.clone();
        match &p.delivered {
            Some(next) if !p.finished => {
                s.resume = Some(Resume {
                    next: next.clone(),
                    max: p.max.clone(),
                    max_keys: p.max_keys.iter().cloned().collect(),
                });
            }
            _ => {
                s.resume = None;
                if p.cfg.incremental.is_some() {
                    if let Some(m) = &p.max {
                        let order = s.cursor.as_ref().map(|c| cursor_cmp(m, c));
                        if order != Some(std::cmp::Ordering::Less) {
                            if order == Some(std::cmp::Ordering::Equal) {
                                let mut keys: BTreeSet<String> =
                                    s.keys_at_cursor.iter().cloned().collect();
                                keys.extend(p.max_keys.iter().cloned());
                                s.keys_at_cursor = keys.into_iter().collect();
                            } else {
                                s.keys_at_cursor = p.max_keys.iter().cloned().collect();
                            }
                            s.cursor = Some(m.clone());
                        }
                    }
                }
            }
        }
        Ok(Some(serde_json::to_value(s)?))
    }
}

impl Drop for HttpReader {
    fn drop(&mut self) {
        tracing::debug!(pages = self.pager.pages, "http reader closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inference_and_links() {
        let cols = infer(&[
            json!({"id": 1, "x": 1, "tags": ["a"], "name": "n", "v": null}),
            json!({"id": 2, "x": 1.5, "flag": true, "name": 3}),
        ]);
        let t: Vec<(String, String)> = cols.into_iter().map(|c| (c.name, c.data_type)).collect();
        assert_eq!(
            t,
            // Keys in name order (serde_json's maps are sorted), then new ones as they appear.
            [
                ("id", "int64"),
                ("name", "string"),
                ("tags", "json"),
                ("v", "string"),
                ("x", "float64"),
                ("flag", "bool")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        let mut h = HeaderMap::new();
        h.insert(
            "link",
            HeaderValue::from_static(
                "<https://a/x?page=3>; rel=\"next\", <https://a/x?page=9>; rel=\"last\"",
            ),
        );
        assert_eq!(link_next(&h).as_deref(), Some("https://a/x?page=3"));
        assert_eq!(resolve("http://h:1/a/b?x=1", "/c?p=2"), "http://h:1/c?p=2");
        assert_eq!(urlencode("a b&c"), "a%20b%26c");
        assert_eq!(
            cursor_cmp(
                &json!("2026-01-02T00:00:00Z"),
                &json!("2026-01-01T23:00:00Z")
            ),
            std::cmp::Ordering::Greater
        );
        assert_eq!(
            cursor_cmp(&json!(10), &json!(9)),
            std::cmp::Ordering::Greater
        );
    }
}
