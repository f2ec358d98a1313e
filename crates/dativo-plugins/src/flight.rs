//! Out-of-process plugins over Arrow Flight (gRPC): `implementation: grpc://host:port`.
//!
//! A plugin is a Flight server, in any language with Arrow Flight:
//!
//! | dativo | Flight call |
//! |---|---|
//! | reader `initialize` … `read_batch` | `DoGet(ticket = {"config", "context"} as JSON)`: the stream's schema, then batches; each batch's `app_metadata` is the JSON state covering it |
//! | writer `initialize` | `DoAction("initialize", {"session", "config", "context"})` |
//! | writer `write_batch` | batches on one `DoPut` stream per commit (descriptor cmd = `{"session"}`) |
//! | writer `finalize` | the `DoPut` stream ends; `DoAction("finalize", {"session", "commit"})` → report JSON |
//! | writer `abort` / `close` | `DoAction("abort" / "close", {"session"})` |
//! | writer `committed_state` | `DoAction("committed_state", {"session", "job"})` → `{"state", "run_id"}` or empty |
//!
//! With `command: [...]` dativo starts the server itself, waits until its port accepts
//! connections, restarts it when it died before a retry, and stops it when the run ends.
//! `grpc+tls://` uses TLS (the web roots, or `tls_ca`); `token` is sent as a bearer token.
//! An unreachable or vanished server is a connection error: the run is retried from the last
//! committed state.

use std::net::ToSocketAddrs;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::{DecodedPayload, FlightDataDecoder};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{Action, FlightDescriptor, Ticket};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tonic::codegen::InterceptedService;
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use dativo_core::job::CustomImplementation;
use dativo_core::{
    Commit, CommitReport, CommittedState, Error, Reader, ReaderContext, Result, Writer,
    WriterContext,
};

fn rt() -> &'static tokio::runtime::Runtime {
    dativo_core::rt::runtime()
}

/// Adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut req: tonic::Request<()>,
    ) -> std::result::Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = FlightServiceClient<InterceptedService<Channel, Bearer>>;

/// A Flight plugin endpoint, and the server process dativo manages for it (if any).
pub struct FlightEndpoint {
    url: String,
    uri: String,
    addr: String,
    tls: bool,
    token: Option<String>,
    tls_ca: Option<Vec<u8>>,
    command: Vec<String>,
    cwd: Option<PathBuf>,
    process: Mutex<Option<Child>>,
}

/// SIGTERM the server's process group, then SIGKILL what is left of it once the server has
/// exited or after a grace period.
fn stop_group(mut c: Child) {
    let pgid = c.id() as i32;
    // SAFETY: kill(2) on the process group we created for the child.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let (exited_tx, exited) = std::sync::mpsc::channel::<()>();
    let reaper = std::thread::Builder::new()
        .name("dativo-flight-reaper".into())
        .spawn(move || {
            let _ = c.wait();
            let _ = exited_tx.send(());
        });
    if reaper.is_ok() {
        let _ = exited.recv_timeout(Duration::from_secs(5));
    }
    // SAFETY: as above; whatever of the group is left.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if reaper.is_ok() {
        let _ = exited.recv();
    }
}

fn status_error(what: &str, s: tonic::Status) -> Error {
    use tonic::Code;
    let msg = dativo_core::secrets::redact(&format!("{what}: {} ({:?})", s.message(), s.code()))
        .into_owned();
    // A transport failure (the server vanished mid-stream) arrives as Unknown with the
    // connection error as its source: retry it like any connection failure.
    if s.code() == Code::Unknown && std::error::Error::source(&s).is_some() {
        return Error::connect(msg);
    }
    match s.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            Error::connect(msg)
        }
        Code::Unauthenticated | Code::PermissionDenied => Error::auth(msg),
        Code::InvalidArgument => Error::config(msg),
        _ => Error::plugin(msg),
    }
}

fn flight_error(what: &str, e: FlightError) -> Error {
    match e {
        FlightError::Tonic(s) => status_error(what, *s),
        other => Error::plugin(format!("{what}: {other}")),
    }
}

impl FlightEndpoint {
    /// Parse `grpc://host:port` / `grpc+tls://host:port` and the block's options (no I/O).
    pub fn new(
        url: &str,
        c: &CustomImplementation,
        base_dir: Option<&Path>,
    ) -> Result<FlightEndpoint> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("grpc+tls://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("grpc://") {
            (false, r)
        } else {
            return Err(Error::config(format!(
                "`{url}`: expected grpc://host:port or grpc+tls://host:port"
            )));
        };
        let addr = rest.trim_end_matches('/').to_string();
        if addr
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .is_none()
        {
            return Err(Error::config(format!(
                "`{url}`: a port is needed (grpc://host:port)"
            )));
        }
        if let Some(t) = &c.token {
            dativo_core::secrets::register(t);
        }
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
        let loopback =
            matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1") || host.starts_with("127.");
        if !tls && !loopback {
            tracing::warn!(
                "{url}: plain grpc:// to a non-loopback host sends the config{} unencrypted; use grpc+tls://",
                if c.token.is_some() { " and the token" } else { "" }
            );
        }
        let tls_ca = match &c.tls_ca {
            None => None,
            Some(p) => {
                let p = base_dir.map(|b| b.join(p)).unwrap_or_else(|| p.clone());
                Some(std::fs::read(&p).map_err(|e| {
                    Error::config(format!("tls_ca {}: {e}", p.display())).with_key_path("tls_ca")
                })?)
            }
        };
        Ok(FlightEndpoint {
            url: url.to_string(),
            uri: format!("{}://{addr}", if tls { "https" } else { "http" }),
            addr,
            tls,
            token: c.token.clone(),
            tls_ca,
            command: c.command.clone(),
            cwd: base_dir.map(Path::to_path_buf),
            process: Mutex::new(None),
        })
    }

    /// Start (or restart) the managed server and wait for its port; no-op without `command`.
    fn ensure_running(&self) -> Result<()> {
        if self.command.is_empty() {
            return Ok(());
        }
        let mut p = self.process.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(child) = p.as_mut() {
            match child.try_wait() {
                Ok(None) => return Ok(()),
                Ok(Some(status)) => {
                    tracing::warn!(%status, "flight plugin server {} exited; restarting it", self.url)
                }
                Err(_) => {}
            }
        }
        if self.port_open() {
            return Err(Error::config(format!(
                "{} already accepts connections: another server (an earlier one still running?) holds the port that `command` would listen on",
                self.addr
            )));
        }
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..]);
        // The server's output must not mix with dativo's (stdout may be a JSON summary).
        cmd.stdin(std::process::Stdio::null());
        if let Ok(err) = std::io::stderr().as_fd().try_clone_to_owned() {
            cmd.stdout(std::process::Stdio::from(err));
        }
        // Its own process group, so stopping it also stops what it started (`sh -c`, `uv run`).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let mut child = cmd.spawn().map_err(|e| {
            Error::config(format!(
                "cannot start the plugin server `{}`: {e}",
                self.command.join(" ")
            ))
            .with_key_path("command")
        })?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::plugin(format!(
                    "the plugin server `{}` exited ({status}) before listening on {}",
                    self.command.join(" "),
                    self.addr
                )));
            }
            let up = self
                .addr
                .to_socket_addrs()
                .ok()
                .and_then(|mut a| a.next())
                .is_some_and(|a| {
                    std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
                });
            if up {
                break;
            }
            if Instant::now() > deadline {
                stop_group(child);
                return Err(Error::connect(format!(
                    "the plugin server `{}` did not listen on {} within 30s",
                    self.command.join(" "),
                    self.addr
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        *p = Some(child);
        Ok(())
    }

    fn port_open(&self) -> bool {
        self.addr.to_socket_addrs().is_ok_and(|mut addrs| {
            addrs.any(|a| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok()
            })
        })
    }

    fn connect(&self) -> Result<Client> {
        self.ensure_running()?;
        let mut ep = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| Error::config(format!("`{}`: {e}", self.url)))?
            .connect_timeout(Duration::from_secs(10));
        if self.tls {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &self.tls_ca {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            ep = ep
                .tls_config(tls)
                .map_err(|e| Error::config(format!("`{}`: TLS: {e}", self.url)))?;
        }
        let channel = rt().block_on(ep.connect()).map_err(|e| {
            Error::connect(format!(
                "cannot connect to the flight plugin at {}: {e}",
                self.url
            ))
        })?;
        let bearer =
            match &self.token {
                None => None,
                Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| {
                    Error::config("`token` holds characters not allowed in a header")
                })?),
            };
        Ok(FlightServiceClient::with_interceptor(
            channel,
            Bearer(bearer),
        ))
    }
}

impl Drop for FlightEndpoint {
    fn drop(&mut self) {
        if let Some(mut c) = self
            .process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// How long a DoAction may take before dativo gives up on the server (a retryable error).
const ACTION_TIMEOUT: Duration = Duration::from_secs(300);

/// Run an action; the last non-empty result body, as bytes.
fn action_raw(client: &mut Client, kind: &str, body: &Value) -> Result<Option<Vec<u8>>> {
    let a = Action {
        r#type: kind.to_string(),
        body: body.to_string().into_bytes().into(),
    };
    let what = format!("DoAction {kind}");
    rt().block_on(async {
        let call = async {
            let mut s = client
                .do_action(a)
                .await
                .map_err(|e| status_error(&what, e))?
                .into_inner();
            let mut out = None;
            while let Some(r) = s.message().await.map_err(|e| status_error(&what, e))? {
                if !r.body.is_empty() {
                    out = Some(r.body.to_vec());
                }
            }
            Ok(out)
        };
        tokio::time::timeout(ACTION_TIMEOUT, call)
            .await
            .map_err(|_| Error::connect(format!("{what}: no answer within {ACTION_TIMEOUT:?}")))?
    })
}

fn action(client: &mut Client, kind: &str, body: &Value) -> Result<Option<Value>> {
    match action_raw(client, kind, body)? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::plugin(format!(
                "DoAction {kind} returned a body that is not JSON: {e}"
            ))
        }),
    }
}

/// A reader served by a Flight plugin (`DoGet`).
pub struct FlightReader {
    ep: Arc<FlightEndpoint>,
    stream: Option<FlightDataDecoder>,
    schema: Option<SchemaRef>,
    state: Option<Value>,
}

impl FlightReader {
    /// A reader of `ep`; it connects at `initialize`.
    pub fn new(ep: Arc<FlightEndpoint>) -> Self {
        FlightReader {
            ep,
            stream: None,
            schema: None,
            state: None,
        }
    }
}

impl Reader for FlightReader {
    fn initialize(&mut self, config: &Value, ctx: &ReaderContext) -> Result<()> {
        let mut client = self.ep.connect()?;
        let ticket = json!({
            "config": config,
            "context": {"job": ctx.job, "stream": ctx.stream, "run_id": ctx.run_id,
                        "state": ctx.state, "shard": ctx.shard},
        });
        self.state = ctx.state.clone();
        let (stream, schema) = rt().block_on(async {
            let resp = client
                .do_get(Ticket {
                    ticket: ticket.to_string().into_bytes().into(),
                })
                .await
                .map_err(|e| status_error("DoGet", e))?
                .into_inner();
            let mut dec = FlightDataDecoder::new(resp.map_err(|s| FlightError::Tonic(Box::new(s))));
            // The stream starts with its schema.
            loop {
                match dec.next().await {
                    Some(Ok(d)) => {
                        if let DecodedPayload::Schema(s) = d.payload {
                            return Ok((dec, s));
                        }
                    }
                    Some(Err(e)) => return Err(flight_error("DoGet", e)),
                    None => return Err(Error::plugin("DoGet: the stream ended before its schema")),
                }
            }
        })?;
        self.schema = Some(schema);
        self.stream = Some(stream);
        Ok(())
    }

    fn get_schema(&mut self) -> Result<SchemaRef> {
        self.schema
            .clone()
            .ok_or_else(|| Error::internal("get_schema before initialize"))
    }

    fn read_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        let state = &mut self.state;
        let out = rt().block_on(async {
            loop {
                let Some(d) = stream.next().await else {
                    return Ok(None);
                };
                let d = d.map_err(|e| flight_error("DoGet", e))?;
                if !d.inner.app_metadata.is_empty() {
                    let v: Value = serde_json::from_slice(&d.inner.app_metadata).map_err(|e| {
                        Error::plugin(format!("DoGet: app_metadata is not JSON state: {e}"))
                    })?;
                    *state = (!v.is_null()).then_some(v);
                }
                match d.payload {
                    DecodedPayload::RecordBatch(b) => {
                        // Arrow IPC decoding does not look at decimal values.
                        dativo_core::conformance::check_decimal_precision(&b).map_err(|e| {
                            Error::plugin(format!("DoGet sent a batch with {}", e.message()))
                        })?;
                        return Ok(Some(b));
                    }
                    DecodedPayload::Schema(_) | DecodedPayload::None => continue,
                }
            }
        });
        if !matches!(out, Ok(Some(_))) {
            self.stream = None;
        }
        out
    }

    fn get_incremental_state(&mut self) -> Result<Option<Value>> {
        Ok(self.state.clone())
    }

    fn close(&mut self) -> Result<()> {
        self.stream = None;
        Ok(())
    }
}

/// A writer served by a Flight plugin (`DoPut` + `DoAction`).
pub struct FlightWriter {
    ep: Arc<FlightEndpoint>,
    client: Option<Client>,
    session: String,
    job: String,
    schema: Option<SchemaRef>,
    put: Option<Put>,
}

/// An open `DoPut`: batches go through `tx`; `task` completes when the server has them all.
struct Put {
    tx: tokio::sync::mpsc::Sender<RecordBatch>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl FlightWriter {
    /// A writer of `ep`; it connects at `initialize`.
    pub fn new(ep: Arc<FlightEndpoint>) -> Self {
        FlightWriter {
            ep,
            client: None,
            session: uuid::Uuid::now_v7().to_string(),
            job: String::new(),
            schema: None,
            put: None,
        }
    }

    fn client(&mut self) -> Result<&mut Client> {
        self.client
            .as_mut()
            .ok_or_else(|| Error::internal("flight writer used before initialize"))
    }

    /// End the open `DoPut` and wait until the server has received everything.
    fn finish_put(&mut self) -> Result<()> {
        if let Some(put) = self.put.take() {
            drop(put.tx);
            rt().block_on(put.task)
                .map_err(|e| Error::internal(format!("DoPut task: {e}")))??;
        }
        Ok(())
    }
}

impl Writer for FlightWriter {
    fn initialize(&mut self, config: &Value, ctx: &WriterContext) -> Result<()> {
        self.client = Some(self.ep.connect()?);
        self.job = ctx.job.clone();
        self.schema = Some(ctx.schema.clone());
        let body = json!({
            "session": self.session, "config": config,
            "context": {"job": ctx.job, "stream": ctx.stream, "run_id": ctx.run_id, "shard": ctx.shard, "source": ctx.source},
        });
        action(self.client()?, "initialize", &body)?;
        Ok(())
    }

    fn write_batch(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.put.is_none() {
            let mut client = self.client()?.clone();
            let (tx, rx) = tokio::sync::mpsc::channel::<RecordBatch>(2);
            let schema = self
                .schema
                .clone()
                .ok_or_else(|| Error::internal("no schema"))?;
            let descriptor =
                FlightDescriptor::new_cmd(json!({"session": self.session}).to_string());
            let input = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|b| (Ok(b), rx))
            });
            let data = FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .with_flight_descriptor(Some(descriptor))
                .build(input)
                .filter_map(|r| async move { r.ok() });
            let task = rt().spawn(async move {
                let mut resp = client
                    .do_put(data)
                    .await
                    .map_err(|e| status_error("DoPut", e))?
                    .into_inner();
                while resp
                    .message()
                    .await
                    .map_err(|e| status_error("DoPut", e))?
                    .is_some()
                {}
                Ok(())
            });
            self.put = Some(Put { tx, task });
        }
        let put = self.put.as_ref().expect("opened above");
        if put.tx.blocking_send(batch.clone()).is_err() {
            // The call ended early: its result says why.
            self.finish_put()?;
            return Err(Error::connect("DoPut: the flight plugin closed the stream"));
        }
        Ok(())
    }

    fn finalize(&mut self, commit: &Commit) -> Result<CommitReport> {
        self.finish_put()?;
        let body = json!({"session": self.session, "commit": commit});
        let raw = action_raw(self.client()?, "finalize", &body)?;
        // The commit has landed: a malformed report is only a warning.
        let text = raw.map(|b| String::from_utf8_lossy(&b).into_owned());
        Ok(crate::native::report_or_default(
            "flight writer",
            text.as_deref(),
        ))
    }

    fn abort(&mut self) -> Result<()> {
        if let Some(put) = self.put.take() {
            put.task.abort();
        }
        if self.client.is_none() {
            return Ok(());
        }
        let body = json!({"session": self.session});
        action(self.client()?, "abort", &body).map(|_| ())
    }

    fn close(&mut self) -> Result<()> {
        if let Some(put) = self.put.take() {
            put.task.abort();
        }
        if self.client.is_none() {
            return Ok(());
        }
        let body = json!({"session": self.session});
        action(self.client()?, "close", &body).map(|_| ())
    }

    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        let body = json!({"session": self.session, "job": self.job});
        let Some(v) = action(self.client()?, "committed_state", &body)? else {
            return Ok(None);
        };
        if v.is_null() {
            return Ok(None);
        }
        Ok(Some(CommittedState::from_json(&v)))
    }
}
