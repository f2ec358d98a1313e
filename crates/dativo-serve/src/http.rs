//! The HTTP API (`docs/openapi.yaml`), `/metrics`, `/healthz`, `/readyz` and the page.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

use dativo_core::secrets;

use crate::metrics::Labels;
use crate::{LastRun, Server, TriggerError, TriggerOutcome};

type S = State<Arc<Server>>;

pub(crate) fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/jobs/{name}", get(job_page))
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{name}", get(job_detail))
        .route("/api/jobs/{name}/runs", post(trigger))
        .route("/api/runs/{id}", get(run_detail))
        .route("/api/runs/{id}/cancel", post(cancel))
        .route("/api/runs/{id}/log", get(run_log))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .layer(axum::middleware::from_fn(scrub_body))
        .with_state(server)
}

/// Every response body, scrubbed of every registered secret (a job's description or an error
/// built from a job file may hold a `${env:…}` value; redacting each field by hand misses
/// some). JSON is scrubbed string by string, so numbers and the document's structure stay
/// intact; HTML and text whole (secrets are registered in their HTML-escaped form too).
/// `/metrics` and the probes carry no job-file text and are left alone.
async fn scrub_body(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path().to_string();
    let resp = next.run(req).await;
    if matches!(path.as_str(), "/metrics" | "/healthz" | "/readyz") {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = match axum::body::to_bytes(body, 64 << 20).await {
        Ok(b) => b,
        Err(_) => return problem(StatusCode::INTERNAL_SERVER_ERROR, "response too large"),
    };
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    let clean: Option<Vec<u8>> = if json {
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|mut v| {
                scrub_strings(&mut v).then(|| serde_json::to_vec(&v).unwrap_or_default())
            })
    } else {
        std::str::from_utf8(&bytes).ok().and_then(|text| {
            let c = secrets::scrub(text);
            (c != text).then(|| c.into_bytes())
        })
    };
    match clean {
        Some(c) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(c))
        }
        None => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// Scrub every string in `v` (keys too); whether anything changed.
fn scrub_strings(v: &mut Value) -> bool {
    match v {
        Value::String(s) => {
            let c = secrets::scrub(s);
            let changed = c != *s;
            *s = c;
            changed
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |acc, i| scrub_strings(i) | acc),
        Value::Object(map) => {
            let old = std::mem::take(map);
            let mut changed = false;
            for (k, mut val) in old {
                changed |= scrub_strings(&mut val);
                let ck = secrets::scrub(&k);
                changed |= ck != k;
                map.insert(ck, val);
            }
            changed
        }
        _ => false,
    }
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// Mutating endpoints: `Authorization: Bearer <token>`.
fn authorize(server: &Server, headers: &HeaderMap) -> Option<Response> {
    // `serve` refuses an empty token at start; an empty one here would still mean "disabled".
    let Some(token) = server.opts.token.as_deref().filter(|t| !t.is_empty()) else {
        return Some(problem(
            StatusCode::FORBIDDEN,
            "triggering and cancelling are disabled: start `dativo serve` with DATIVO_API_TOKEN (or --api-token) set",
        ));
    };
    match bearer_token(headers) {
        Some(given) if same_secret(given, token.as_bytes()) => None,
        _ => Some(problem(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        )),
    }
}

/// The token of the one `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 9110 §11.1). `None` without one, with several, or with an empty token.
fn bearer_token(headers: &HeaderMap) -> Option<&[u8]> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let value = all.next()?.as_bytes();
    if all.next().is_some() {
        return None;
    }
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Compare a given secret with the expected one in a time that depends only on the expected
/// length: neither where they first differ nor whether their lengths match shows.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(!e);
    }
    std::hint::black_box(diff) == 0
}

/// A job, as the API lists it.
#[derive(Serialize)]
pub(crate) struct JobView {
    pub name: String,
    pub file: String,
    pub description: Option<String>,
    pub reader: String,
    pub writer: String,
    pub schedule: Option<String>,
    pub timezone: Option<String>,
    pub next_run: Option<String>,
    pub running: Option<String>,
    /// The running run: when it started, seconds since, rows read and committed so far.
    pub running_since: Option<String>,
    pub running_seconds: Option<f64>,
    pub running_rows: Option<u64>,
    pub running_committed: Option<u64>,
    /// Change data capture: seconds between a change in the source and its commit, at the
    /// job's last commit on this instance.
    pub lag_seconds: Option<f64>,
    pub pending: bool,
    pub last_run: Option<LastRun>,
}

/// An invalid job file.
#[derive(Serialize)]
pub(crate) struct InvalidView {
    pub file: String,
    pub error: String,
}

impl Server {
    pub(crate) fn job_views(&self) -> (Vec<JobView>, Vec<InvalidView>) {
        use std::sync::atomic::Ordering::Relaxed;
        // What this instance's runs have done so far, by run id (taken before `jobs`).
        let active: BTreeMap<String, (String, f64, u64, u64)> = self
            .active
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(id, a)| {
                (
                    id.clone(),
                    (
                        a.started_at.clone(),
                        a.started.elapsed().as_secs_f64(),
                        a.progress.rows.load(Relaxed),
                        a.progress.committed.load(Relaxed),
                    ),
                )
            })
            .collect();
        let jobs = self.jobs.lock().expect("not poisoned");
        let views = jobs
            .iter()
            .map(|(name, j)| JobView {
                name: name.clone(),
                file: j.file.display().to_string(),
                description: j.job.config.description.clone(),
                reader: j.reader.clone(),
                writer: j.writer.clone(),
                schedule: j.job.config.schedule.as_ref().map(|s| s.cron.clone()),
                timezone: j
                    .job
                    .config
                    .schedule
                    .as_ref()
                    .map(|s| s.timezone.clone().unwrap_or_else(|| "UTC".into())),
                next_run: j
                    .next
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                running: j.running.clone().filter(|r| !r.is_empty()),
                running_since: j
                    .running
                    .as_ref()
                    .and_then(|r| active.get(r))
                    .map(|a| a.0.clone()),
                running_seconds: j.running.as_ref().and_then(|r| active.get(r)).map(|a| a.1),
                running_rows: j.running.as_ref().and_then(|r| active.get(r)).map(|a| a.2),
                running_committed: j.running.as_ref().and_then(|r| active.get(r)).map(|a| a.3),
                lag_seconds: self.metrics.lag(name),
                pending: j.pending,
                last_run: j.last.clone(),
            })
            .collect();
        let invalid = self
            .invalid
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(p, e)| InvalidView {
                file: p.display().to_string(),
                error: e.clone(),
            })
            .collect();
        (views, invalid)
    }
}

async fn list_jobs(State(s): S) -> Json<Value> {
    let (jobs, invalid) = s.job_views();
    Json(json!({"jobs": jobs, "invalid": invalid}))
}

async fn job_detail(State(s): S, Path(name): Path<String>) -> Response {
    let (jobs, _) = s.job_views();
    let Some(view) = jobs.into_iter().find(|j| j.name == name) else {
        return problem(StatusCode::NOT_FOUND, format!("no job `{name}`"));
    };
    let server = s.clone();
    let n = name.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let store = server.store()?;
        Ok::<_, dativo_core::Error>((store.load_state(&n)?, store.runs(&n, 20)?))
    })
    .await;
    match stored {
        Ok(Ok((state, runs))) => {
            // A reader's state can echo what it was sent (URLs, keys): scrub it like logs.
            let state = serde_json::to_string(&state)
                .ok()
                .and_then(|t| serde_json::from_str::<Value>(&secrets::scrub(&t)).ok())
                .unwrap_or(Value::Null);
            Json(json!({
                "job": view,
                "state": state,
                "runs": runs,
            }))
            .into_response()
        }
        Ok(Err(e)) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("state store: {}", secrets::scrub(&e.to_string())),
        ),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn trigger(State(s): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Some(r) = authorize(&s, &headers) {
        return r;
    }
    match s.trigger(&name) {
        Ok(TriggerOutcome::Started(run_id)) => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "started", "run_id": run_id})),
        )
            .into_response(),
        Ok(TriggerOutcome::Queued) => (
            StatusCode::ACCEPTED,
            Json(json!({"status": "queued", "reason": "the concurrency limit is reached; it starts when a run ends"})),
        )
            .into_response(),
        Err(TriggerError::UnknownJob) => problem(StatusCode::NOT_FOUND, format!("no job `{name}`")),
        Err(TriggerError::Running(run)) => (
            StatusCode::CONFLICT,
            Json(json!({"error": format!("job `{name}` is already running"), "run_id": run})),
        )
            .into_response(),
        Err(TriggerError::ShuttingDown) => {
            problem(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        }
    }
}

async fn run_detail(State(s): S, Path(id): Path<String>) -> Response {
    if let Some(a) = s.active.lock().expect("not poisoned").get(&id) {
        return Json(json!({
            "run_id": id,
            "job": a.job,
            "status": "running",
            "started_at": a.started_at,
            "seconds": a.started.elapsed().as_secs_f64(),
        }))
        .into_response();
    }
    let job = s
        .logs
        .lock()
        .expect("not poisoned")
        .iter()
        .find(|(r, _, _)| *r == id)
        .map(|(_, j, _)| j.clone());
    let Some(job) = job else {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no run `{id}` on this instance"),
        );
    };
    let server = s.clone();
    let (j, r) = (job.clone(), id.clone());
    let rec = tokio::task::spawn_blocking(move || {
        server
            .store()
            .and_then(|st| st.runs(&j, 200))
            .map(|runs| runs.into_iter().find(|x| x.run_id == r))
    })
    .await;
    match rec {
        Ok(Ok(Some(rec))) => Json(json!(rec)).into_response(),
        Ok(Ok(None)) => {
            Json(json!({"run_id": id, "job": job, "status": "not started"})).into_response()
        }
        Ok(Err(e)) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            secrets::scrub(&e.to_string()),
        ),
        Err(e) => problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

async fn cancel(State(s): S, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Some(r) = authorize(&s, &headers) {
        return r;
    }
    match s.active.lock().expect("not poisoned").get(&id) {
        Some(a) => {
            a.cancel.cancel();
            a.log.lock().expect("not poisoned").push(format!(
                "{} cancellation requested through the API",
                crate::now_rfc3339()
            ));
            (
                StatusCode::ACCEPTED,
                Json(json!({"status": "cancelling", "run_id": id, "job": a.job})),
            )
                .into_response()
        }
        None => problem(
            StatusCode::NOT_FOUND,
            format!("run `{id}` is not running on this instance"),
        ),
    }
}

async fn run_log(State(s): S, Path(id): Path<String>) -> Response {
    let lines = if let Some(a) = s.active.lock().expect("not poisoned").get(&id) {
        Some(a.log.lock().expect("not poisoned").clone())
    } else {
        s.logs
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|(r, _, _)| *r == id)
            .map(|(_, _, l)| l.clone())
    };
    match lines {
        Some(l) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            l.join("\n") + "\n",
        )
            .into_response(),
        None => problem(
            StatusCode::NOT_FOUND,
            format!("no log for run `{id}` on this instance"),
        ),
    }
}

async fn metrics(State(s): S) -> Response {
    let running: BTreeMap<Labels, bool> = s
        .jobs
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(name, j)| {
            (
                Labels {
                    job: name.clone(),
                    reader: j.reader.clone(),
                    writer: j.writer.clone(),
                },
                j.running.is_some(),
            )
        })
        .collect();
    let invalid = s.invalid.lock().expect("not poisoned").len();
    let text = s.metrics.render(&running, running.len(), invalid);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn readyz(State(s): S) -> Response {
    if s.ready.load(Ordering::SeqCst) && !s.shutting_down.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn page(State(s): S) -> Response {
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        ],
        Html(crate::page::render(&s)),
    )
        .into_response()
}

/// `/jobs/NAME[?run=ID]`: the job's console page; the log shown is ID's, else the running
/// run's, else the newest run's.
async fn job_page(
    State(s): S,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Response {
    let (jobs, _) = s.job_views();
    let Some(view) = jobs.into_iter().find(|j| j.name == name) else {
        return (
            StatusCode::NOT_FOUND,
            Html(format!(
                "<!doctype html><title>no such job</title><p>No job <code>{}</code>. <a href=\"/\">All jobs</a></p>",
                name.replace('&', "&amp;").replace('<', "&lt;")
            )),
        )
            .into_response();
    };
    let server = s.clone();
    let n = name.clone();
    let stored = tokio::task::spawn_blocking(move || {
        let store = server.store()?;
        // The job's own runs: a job with `tables:` also records each stream's run (`job/S`,
        // counted in the job's) and maintenance records `job#maintain`.
        let mut runs = store.runs(&n, 200)?;
        runs.retain(|r| r.job == n);
        runs.truncate(50);
        Ok::<_, dativo_core::Error>((store.load_state(&n)?, store.stream_states(&n)?, runs))
    })
    .await;
    let (state, streams, runs, store_error) = match stored {
        Ok(Ok((state, streams, runs))) => (state, streams, runs, None),
        Ok(Err(e)) => (
            None,
            Vec::new(),
            Vec::new(),
            Some(secrets::scrub(&e.to_string())),
        ),
        Err(e) => (None, Vec::new(), Vec::new(), Some(e.to_string())),
    };
    let live = |st: dativo_runtime::StoredState| {
        (st.run_id != dativo_runtime::state_store::RESET_RUN_ID)
            .then_some(st.state)
            .flatten()
    };
    // A job with `tables:` keeps a state per stream.
    let state = if streams.is_empty() {
        state.and_then(live)
    } else {
        Some(Value::Object(
            streams
                .into_iter()
                .filter_map(|(s, st)| live(st).map(|v| (s, v)))
                .collect(),
        ))
    };
    // A reader's state can echo what it was sent (URLs, keys): scrub it like logs.
    let state =
        state.map(|v| secrets::scrub(&serde_json::to_string_pretty(&v).unwrap_or_default()));
    // Running on another instance (several share a PostgreSQL store): only the store knows.
    let elsewhere = match runs.first() {
        Some(r) if view.running.is_none() && r.status == dativo_runtime::RunStatus::Running => {
            Some(r.started_at.clone())
        }
        _ => None,
    };
    let selected = q
        .get("run")
        .cloned()
        .or_else(|| view.running.clone())
        .or_else(|| runs.first().map(|r| r.run_id.clone()));
    let log = selected.as_ref().and_then(|id| {
        if let Some(a) = s.active.lock().expect("not poisoned").get(id) {
            return Some(a.log.lock().expect("not poisoned").clone());
        }
        s.logs
            .lock()
            .expect("not poisoned")
            .iter()
            .find(|(r, _, _)| r == id)
            .map(|(_, _, l)| l.clone())
    });
    let writable = s.opts.token.as_deref().is_some_and(|t| !t.is_empty());
    (
        [
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CONTENT_SECURITY_POLICY, "frame-ancestors 'none'"),
        ],
        Html(crate::page::render_job(&crate::page::JobPage {
            view: &view,
            runs: &runs,
            state,
            store_error,
            selected,
            log,
            writable,
            elsewhere,
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens_are_parsed_strictly() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&headers(&["bearer abc"])), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&headers(&["BEARER   abc"])), Some(&b"abc"[..]));
        assert_eq!(bearer_token(&headers(&[])), None);
        assert_eq!(bearer_token(&headers(&[""])), None);
        assert_eq!(bearer_token(&headers(&["Bearer"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer "])), None);
        assert_eq!(bearer_token(&headers(&["Bearer    "])), None);
        assert_eq!(bearer_token(&headers(&["Basic abc"])), None);
        assert_eq!(bearer_token(&headers(&["Bearerabc"])), None);
        assert_eq!(bearer_token(&headers(&["abc"])), None);
        assert_eq!(bearer_token(&headers(&["Bearer abc", "Bearer abc"])), None);
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"token", b"token"));
        assert!(!same_secret(b"", b"token"));
        assert!(!same_secret(b"toke", b"token"));
        assert!(!same_secret(b"tokenx", b"token"));
        assert!(!same_secret(b"tokem", b"token"));
        assert!(!same_secret(b"xtoken", b"token"));
        assert!(!same_secret(b"a", b"a\x00"));
    }
}
