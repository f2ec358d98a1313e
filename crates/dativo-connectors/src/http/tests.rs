//! The http reader against a tiny local HTTP server (one thread, one connection at a time).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use dativo_core::{ErrorKind, OpenReader, ReaderContext};

use super::HttpReader;

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    /// `GET /path?query`.
    line: String,
    /// Lowercased header names with their values.
    headers: Vec<(String, String)>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Seen, usize) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

/// Serve `handler` (request, its index) on a local port; returns the base URL and the log of
/// requests.
fn serve(handler: Box<Handler>) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut r = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            let req = Seen {
                line: line.trim_end().to_string(),
                headers,
            };
            if let Some(n) = req.header("content-length") {
                let mut body = vec![0; n.parse().unwrap()];
                r.read_exact(&mut body).unwrap();
            }
            let n = {
                let mut log = seen.lock().unwrap();
                log.push(req.clone());
                log.len() - 1
            };
            let (status, extra, body) = handler(&req, n);
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in extra {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            out.push_str(&body);
            let _ = stream.write_all(out.as_bytes());
        }
    });
    (base, log)
}

fn ctx(state: Option<Value>) -> ReaderContext {
    ReaderContext::new("t", "r", state)
}

/// Every row's `id`, and the final state.
fn read_ids(r: &mut HttpReader) -> (Vec<i64>, Option<Value>) {
    let mut ids = Vec::new();
    while let Some(b) = r.next_batch().unwrap() {
        let col = b
            .column(b.schema().index_of("id").unwrap())
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .clone();
        ids.extend(col.values().iter().copied());
    }
    (ids, r.state().unwrap())
}

#[test]
fn pages_until_empty_honours_retry_after_and_sends_the_token() {
    let (base, log) = serve(Box::new(|req: &Seen, n| {
        if n == 0 {
            // The first request is throttled: come back at once.
            return (429, vec![("Retry-After", "0".into())], "{}".into());
        }
        let page: u64 = req
            .line
            .split("page=")
            .nth(1)
            .and_then(|p| p.split([' ', '&']).next())
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let records: Vec<Value> = match page {
            1 => vec![
                json!({"id": 1, "at": "2026-01-01"}),
                json!({"id": 2, "at": "2026-01-02"}),
            ],
            2 => vec![json!({"id": 3, "at": "2026-01-03"})],
            _ => vec![],
        };
        (200, vec![], json!({ "data": records }).to_string())
    }));
    let cfg = json!({
        "url": format!("{base}/items"),
        "headers": {"X-Trace": "t-1"},
        "auth": {"type": "bearer", "token": "tok-http-reader-test"},
        "records": "$.data",
        "pagination": {"type": "page"},
        "incremental": {"cursor_field": "at", "param": "since"},
        "backoff": "10ms",
    });
    let mut r = HttpReader::open(&cfg, &ctx(None)).unwrap();
    let (ids, state) = read_ids(&mut r);
    assert_eq!(ids, vec![1, 2, 3]);
    let state = state.unwrap();
    assert_eq!(state["cursor"], json!("2026-01-03"));
    assert!(state.get("resume").is_none(), "{state}");
    let log = log.lock().unwrap().clone();
    // 429, then pages 1, 2, 3 (empty).
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(log[1].line.contains("page=1"), "{log:?}");
    for req in &log {
        assert_eq!(
            req.header("authorization"),
            Some("Bearer tok-http-reader-test")
        );
        assert_eq!(req.header("x-trace"), Some("t-1"));
    }
    Box::new(r).close().unwrap();
}

#[test]
fn the_next_run_sends_the_committed_cursor_and_skips_nothing_new() {
    let (base, log) = serve(Box::new(|_req: &Seen, _n| {
        (
            200,
            vec![],
            json!([{"id": 7, "at": "2026-02-01"}]).to_string(),
        )
    }));
    let cfg = json!({
        "url": format!("{base}/items"),
        "incremental": {"cursor_field": "at", "param": "since", "primary_key": "id"},
    });
    let mut r = HttpReader::open(&cfg, &ctx(Some(json!({"cursor": "2026-01-03"})))).unwrap();
    let (ids, state) = read_ids(&mut r);
    assert_eq!(ids, vec![7]);
    assert_eq!(state.unwrap()["cursor"], json!("2026-02-01"));
    let log = log.lock().unwrap().clone();
    assert!(log[0].line.contains("since=2026-01-03"), "{log:?}");
}

#[test]
fn a_server_error_is_retried_then_gives_up_as_transient() {
    let (base, log) = serve(Box::new(|_req: &Seen, _n| (503, vec![], "{}".into())));
    let cfg = json!({
        "url": format!("{base}/down"),
        "schema": [{"name": "id", "type": "int64"}],
        "max_retries": 2,
        "backoff": "1ms",
    });
    let mut r = HttpReader::open(&cfg, &ctx(None)).unwrap();
    let e = r.next_batch().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Transient, "{e}");
    assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[test]
fn an_unreachable_server_is_a_connect_error_keeping_the_transport_error_as_the_cause() {
    // A port nothing listens on: bind one, learn it, close it.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = json!({
        "url": format!("http://127.0.0.1:{port}/x"),
        "schema": [{"name": "id", "type": "int64"}],
        "max_retries": 0,
    });
    let mut r = HttpReader::open(&cfg, &ctx(None)).unwrap();
    let e = r.next_batch().unwrap_err();
    let cause = std::error::Error::source(&e).expect("a cause");
    let req = cause
        .downcast_ref::<reqwest::Error>()
        .expect("reqwest's error");
    assert!(req.is_connect(), "{e}");
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
}

#[test]
fn not_found_and_unauthorized_fail_at_once_with_their_kind() {
    let (base, log) = serve(Box::new(|req: &Seen, _n| {
        if req.line.contains("/secret") {
            (401, vec![], "{\"error\": \"no\"}".into())
        } else {
            (404, vec![], "{}".into())
        }
    }));
    let schema = json!([{"name": "id", "type": "int64"}]);
    let mut r = HttpReader::open(
        &json!({"url": format!("{base}/nothing"), "schema": schema}),
        &ctx(None),
    )
    .unwrap();
    let e = r.next_batch().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    let mut r = HttpReader::open(
        &json!({"url": format!("{base}/secret"), "schema": schema}),
        &ctx(None),
    )
    .unwrap();
    let e = r.next_batch().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert_eq!(log.lock().unwrap().len(), 2, "no retries");
}

#[test]
fn validate_rejects_bad_methods_and_headers_naming_the_key() {
    let ok = json!({"url": "http://h/x", "method": "post"});
    HttpReader::validate(&ok).unwrap();
    let e = HttpReader::validate(&json!({"url": "http://h/x", "method": "PUT"})).unwrap_err();
    assert_eq!(
        (e.kind(), e.key_path()),
        (ErrorKind::Config, Some("method")),
        "{e}"
    );
    assert!(e.to_string().contains("use GET or POST"), "{e}");
    let e = HttpReader::validate(&json!({"url": "http://h/x", "headers": {"Bad Name": "v"}}))
        .unwrap_err();
    assert_eq!(e.key_path(), Some("headers.Bad Name"), "{e}");
    let e = HttpReader::validate(&json!({"url": "http://h/x", "headers": {"X-Ok": "a\nb"}}))
        .unwrap_err();
    assert_eq!(e.key_path(), Some("headers.X-Ok"), "{e}");
    let e = HttpReader::validate(&json!({
        "url": "http://h/x",
        "auth": {"type": "api_key", "value": "k", "name": "Bad Name"}
    }))
    .unwrap_err();
    assert_eq!(e.key_path(), Some("auth.name"), "{e}");
    let e = HttpReader::validate(&json!({"url": "http://h/x", "send_in": "body"})).unwrap_err();
    assert_eq!(e.key_path(), Some("send_in"), "{e}");
}

#[test]
fn credentials_are_registered_as_secrets_when_the_config_is_read() {
    HttpReader::validate(&json!({
        "url": "http://h/x",
        "auth": {"type": "basic", "username": "u", "password": "pw-http-test-secret"}
    }))
    .unwrap();
    assert_eq!(
        dativo_core::secrets::scrub("failed with pw-http-test-secret"),
        "failed with ***"
    );
}
