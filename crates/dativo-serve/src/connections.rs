//! The HTTP server's connections: how many may be open, how long a client may take to send a
//! request, and how file descriptors are kept for the scheduler.
//!
//! `axum::serve` accepts every connection and waits for its request for ever: idle sockets pile
//! up until the process runs out of file descriptors, and then `/healthz`, job-file reads and the
//! state store all fail with EMFILE. Here instead:
//!
//! * a client has `header_timeout` to send a whole request header, counted from the moment the
//!   connection opens or the previous response was sent (hyper's `header_read_timeout`), so this
//!   is also how long an idle keep-alive connection stays open;
//! * a connection on which no request has been handled for `header_timeout` + [`IDLE_BACKSTOP`]
//!   — a client that does not read its response — is closed too;
//! * at most `max_connections` are open. At the cap the connection idle the longest (no request
//!   being handled) is closed to make room, so a health check gets through a flood of idle
//!   sockets at once; when every connection has a request in progress, new ones wait in the
//!   listen backlog;
//! * the cap is lowered so that [`fd_reserve`] descriptors stay free for the scheduler (job files,
//!   the state store, the runs' readers and writers), after raising the soft open-file limit to
//!   the hard one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// How long past the header timeout a connection may go without a request being handled.
pub const IDLE_BACKSTOP: Duration = Duration::from_secs(30);

/// How long shutdown waits for requests in progress.
const DRAIN: Duration = Duration::from_secs(5);

/// Limits of the HTTP server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Open connections at most (lowered to keep file descriptors, see [`connection_cap`]).
    pub max_connections: usize,
    /// Time to send a whole request header, after connecting or after the previous response.
    pub header_timeout: Duration,
}

/// File descriptors kept for the scheduler: 64 per concurrent run, at least 256.
pub fn fd_reserve(max_concurrent: usize) -> u64 {
    (max_concurrent as u64).saturating_mul(64).max(256)
}

/// The connection cap: `wanted`, lowered so that `reserve` descriptors stay free under an
/// open-file limit of `fd_limit` — but never below a quarter of the limit, nor below 1.
pub fn connection_cap(wanted: usize, fd_limit: Option<u64>, reserve: u64) -> usize {
    let Some(limit) = fd_limit else {
        return wanted.max(1);
    };
    let by_fds = limit.saturating_sub(reserve).max(limit / 4).max(1);
    wanted
        .min(usize::try_from(by_fds).unwrap_or(usize::MAX))
        .max(1)
}

/// Raise the soft open-file limit to the hard one (a Linux default of 1024 is low for a server)
/// and return the soft limit in force; `None` where there is none to read.
#[cfg(unix)]
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
    // macOS refuses a soft limit above its per-process maximum even when the hard one is
    // unlimited; a million is more than any of its defaults allow anyway.
    const CEILING: u64 = 1 << 20;
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit");
            return None;
        }
    };
    let target = if hard == RLIM_INFINITY {
        CEILING
    } else {
        hard.min(CEILING)
    };
    if soft != RLIM_INFINITY && target > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            Ok(()) => {
                tracing::debug!(from = soft, to = target, "raised the open-file limit");
                return Some(target);
            }
            Err(e) => {
                tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            }
        }
    }
    (soft != RLIM_INFINITY).then_some(soft)
}

/// Where there is no open-file limit to raise.
#[cfg(not(unix))]
pub fn raise_fd_limit() -> Option<u64> {
    None
}

/// The open connections.
struct Connections {
    table: Mutex<Table>,
    /// Signalled when a connection goes or its request ends, for an accept loop waiting at the
    /// cap.
    freed: Notify,
    cap: usize,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    /// Requests being handled.
    busy: usize,
    /// Since when no request has been handled (meaningful when `busy == 0`).
    idle_since: Instant,
    /// Signalled to close the connection at once (to make room for a new one).
    evict: Arc<Notify>,
}

impl Connections {
    fn new(cap: usize) -> Self {
        Connections {
            table: Mutex::new(Table::default()),
            freed: Notify::new(),
            cap,
        }
    }

    /// Whether a new connection can be taken: there is room, or a connection without a request
    /// in progress that can be closed to make some.
    fn can_take_one(&self) -> bool {
        let t = self.table.lock().expect("not poisoned");
        t.open.len() < self.cap || t.open.values().any(|s| s.busy == 0)
    }

    /// Before adding a connection at the cap: close the ones idle the longest (no request in
    /// progress) until there is room, as far as there are such.
    fn make_room(&self) {
        let mut t = self.table.lock().expect("not poisoned");
        while t.open.len() >= self.cap {
            let oldest_idle = t
                .open
                .iter()
                .filter(|(_, s)| s.busy == 0)
                .min_by_key(|(_, s)| s.idle_since)
                .map(|(id, _)| *id);
            match oldest_idle.and_then(|id| t.open.remove(&id)) {
                Some(slot) => slot.evict.notify_one(),
                None => break,
            }
        }
    }

    /// Register a new connection: its id and the signal that evicts it.
    fn add(&self) -> (u64, Arc<Notify>) {
        let mut t = self.table.lock().expect("not poisoned");
        let id = t.next_id;
        t.next_id += 1;
        let evict = Arc::new(Notify::new());
        t.open.insert(
            id,
            Slot {
                busy: 0,
                idle_since: Instant::now(),
                evict: evict.clone(),
            },
        );
        (id, evict)
    }

    fn remove(&self, id: u64) {
        self.table.lock().expect("not poisoned").open.remove(&id);
        self.freed.notify_one();
    }

    fn is_empty(&self) -> bool {
        self.table.lock().expect("not poisoned").open.is_empty()
    }

    /// A request starts on connection `id`; it ends when the guard is dropped.
    fn begin(self: &Arc<Self>, id: u64) -> Busy {
        if let Some(s) = self.table.lock().expect("not poisoned").open.get_mut(&id) {
            s.busy += 1;
        }
        Busy {
            conns: self.clone(),
            id,
        }
    }

    /// When connection `id` has been idle for `limit` if nothing happens meanwhile; `None` when
    /// it is gone.
    fn idle_deadline(&self, id: u64, limit: Duration) -> Option<Instant> {
        let t = self.table.lock().expect("not poisoned");
        let s = t.open.get(&id)?;
        Some(if s.busy > 0 {
            Instant::now() + limit
        } else {
            s.idle_since + limit
        })
    }
}

/// A request in progress (see [`Connections::begin`]).
struct Busy {
    conns: Arc<Connections>,
    id: u64,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(s) = self
            .conns
            .table
            .lock()
            .expect("not poisoned")
            .open
            .get_mut(&self.id)
        {
            s.busy -= 1;
            if s.busy == 0 {
                s.idle_since = Instant::now();
                // An accept loop waiting at the cap can now close this one to make room.
                self.conns.freed.notify_one();
            }
        }
    }
}

/// Serve `app` on `listener` within `limits` (the cap already lowered for file descriptors)
/// until `stop` completes; then stop accepting, let requests in progress finish (for a few
/// seconds at most) and return.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: impl Future<Output = ()>,
) {
    let conns = Arc::new(Connections::new(limits.max_connections.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let idle_limit = limits.header_timeout + IDLE_BACKSTOP;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut last_accept_warning: Option<Instant> = None;
    tokio::pin!(stop);
    'accept: loop {
        // At the cap with every connection handling a request, accept nothing: new ones wait in
        // the listen backlog.
        while !conns.can_take_one() {
            tokio::select! {
                _ = conns.freed.notified() => {}
                _ = &mut stop => break 'accept,
            }
        }
        let stream = tokio::select! {
            r = listener.accept() => r,
            _ = &mut stop => break 'accept,
        };
        let stream = match stream {
            Ok((s, _)) => s,
            Err(e) => {
                // A connection reset before it was accepted is the client's business; anything
                // else (EMFILE, ENFILE, ENOBUFS) passes — wait a little rather than spin.
                if !is_connection_error(&e) {
                    if last_accept_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "cannot accept HTTP connections; retrying");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        conns.make_room();
        let (id, evict) = conns.add();
        tokio::spawn(serve_connection(
            conns.clone(),
            id,
            evict,
            stream,
            builder.clone(),
            app.clone(),
            shutdown_rx.clone(),
            idle_limit,
        ));
    }
    drop(listener);
    let _ = shutdown_tx.send(true);
    // Each connection that goes signals `freed`.
    let drained = async {
        loop {
            let freed = conns.freed.notified();
            if conns.is_empty() {
                return;
            }
            freed.await;
        }
    };
    let _ = tokio::time::timeout(DRAIN, drained).await;
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    conns: Arc<Connections>,
    id: u64,
    evict: Arc<Notify>,
    stream: tokio::net::TcpStream,
    builder: http1::Builder,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    idle_limit: Duration,
) {
    let router = TowerToHyperService::new(app);
    let tracker = conns.clone();
    let service = hyper::service::service_fn(move |req| {
        let busy = tracker.begin(id);
        let response = hyper::service::Service::call(&router, req);
        async move {
            let r = response.await;
            drop(busy);
            r
        }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut draining = *shutdown.borrow();
    if draining {
        conn.as_mut().graceful_shutdown();
    }
    // `None`: evicted.
    while let Some(deadline) = conns.idle_deadline(id, idle_limit) {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                break;
            }
            _ = evict.notified() => {
                tracing::debug!("HTTP connection closed to make room for a new one");
                break;
            }
            _ = shutdown.changed(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                if conns.idle_deadline(id, idle_limit).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!("HTTP connection closed: no request for too long");
                    break;
                }
            }
        }
    }
    conns.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    #[test]
    fn the_cap_keeps_a_reserve_of_file_descriptors() {
        assert_eq!(connection_cap(512, None, 256), 512);
        assert_eq!(connection_cap(512, Some(1024), 256), 512);
        assert_eq!(connection_cap(2000, Some(1024), 256), 768);
        assert_eq!(connection_cap(2000, Some(300), 256), 75);
        assert_eq!(connection_cap(2000, Some(2), 256), 1);
        assert_eq!(connection_cap(0, Some(1024), 256), 1);
        assert_eq!(fd_reserve(4), 256);
        assert_eq!(fd_reserve(8), 512);
    }

    async fn start(limits: HttpLimits) -> (std::net::SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
        let (tx, mut rx) = watch::channel(false);
        tokio::spawn(serve(listener, app, limits, async move {
            let _ = rx.changed().await;
        }));
        (addr, tx)
    }

    async fn get_healthz(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Reads until the server closes the connection; the bytes read.
    async fn until_closed(s: &mut TcpStream) -> usize {
        let mut buf = [0u8; 1024];
        let mut n = 0;
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return n,
                Ok(k) => n += k,
            }
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let (addr, _stop) = start(HttpLimits {
            max_connections: 2,
            header_timeout: Duration::from_secs(60),
        })
        .await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        second
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = tokio::time::timeout(Duration::from_secs(5), get_healthz(addr))
            .await
            .expect("a new connection is served at the cap");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let closed = tokio::time::timeout(Duration::from_secs(5), until_closed(&mut first)).await;
        assert_eq!(closed, Ok(0), "the oldest idle connection is closed");
        // The second one is still open: it gets its answer when it finishes its request.
        second.write_all(b"Host: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 12];
        second.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }

    #[tokio::test]
    async fn silent_partial_and_keep_alive_connections_time_out() {
        let (addr, _stop) = start(HttpLimits {
            max_connections: 16,
            header_timeout: Duration::from_millis(300),
        })
        .await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut partial = TcpStream::connect(addr).await.unwrap();
        partial
            .write_all(b"GET /healthz HTTP/1.1\r\nHo")
            .await
            .unwrap();
        let mut kept = TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let t = Instant::now();
        for s in [&mut silent, &mut partial, &mut kept] {
            tokio::time::timeout(Duration::from_secs(5), until_closed(s))
                .await
                .expect("closed by the server");
        }
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }
}
