//! A lease on an object-store prefix, so that two runs of one job (two pods, each with its own
//! state store) never write one Parquet directory at the same time.
//!
//! Local directories use an OS file lock (`_dativo/writer.lock`). Object stores have no locks,
//! so the writer holds a **lease object**, `<meta>/lease.json`, written with S3 conditional
//! writes (`If-None-Match: *` to take a free lease, `If-Match: <etag>` to renew or take over an
//! expired one):
//!
//! * **Acquire**: create the object if absent. If present and unexpired, the run fails at once
//!   with "job … is already running", naming the holder (run, host, pid) and when the lease
//!   expires. A lease whose holder was SIGKILLed on this very machine (same host, boot and PID
//!   namespace, the process gone) is taken over at once; any other lease only after it expired.
//! * **Renew**: a heartbeat thread renews the lease every `ttl / 3` (conditional on the etag it
//!   last wrote). The writer checks the lease before every commit (a synchronous renewal), so a
//!   holder that was paused past its expiry and lost the lease fails instead of committing.
//! * **Fence**: a run that takes over an *expired* lease first claims the next commit sequence
//!   (an empty commit carrying the job's last state, written with `If-None-Match: *`) before it
//!   deletes anything in staging. A previous holder that wakes up later cannot commit: every
//!   manifest is written with `If-None-Match: *`, and its sequence number is taken.
//! * **Release**: on close (or when a writer fails to start) the lease is marked released —
//!   a conditional write, so a lease another run took over meanwhile is never touched.
//!
//! Google Cloud Storage and Azure Blob enforce create-if-absent (`ifGenerationMatch=0`,
//! `If-None-Match: *`), but opendal offers no conditional *replace* for them. There the lease is
//! a series of **generations**, `<meta>/lease/<n>.json`, each created if absent: a renewal,
//! take-over or release of generation `n` creates `n + 1` — of two runs racing for it exactly one
//! wins, as with an etag. The current lease is the highest generation; only a holder that has
//! just created generation `n + 1` deletes the ones below it, so the highest is never deleted,
//! and a run that creates a generation someone deleted long ago (it was paused while others
//! moved on) finds a higher one when it lists again and counts as refused.
//!
//! Stores that do not enforce conditional writes at all (checked at start with a scratch
//! object) get a warning: concurrent runs are not detected there.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use dativo_core::{Error, Result};

use dativo_core::rt::runtime;
use dativo_storage::{od, od_write, precondition_failed};

/// The lease file's format identifier.
const FORMAT: &str = "dativo.lease/1";

/// Lease objects are JSON. (A content type also makes opendal's GCS service send a multipart
/// upload, where `ifGenerationMatch=0` is honoured by every server: fake-gcs-server ignores it
/// on media uploads.)
const CONTENT_TYPE: &str = "application/json";

/// What a lease object holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    format: String,
    /// Unique per acquisition.
    token: String,
    job: String,
    run_id: String,
    /// Host name, boot id and PID namespace: a PID is only meaningful with all three.
    host: String,
    machine: String,
    pid: u32,
    /// Start time of the process (clock ticks since boot), against PID reuse.
    #[serde(default)]
    pid_start: Option<u64>,
    acquired_at_ms: u64,
    expires_at_ms: u64,
    /// Set by the holder as its last act: the lease is free (a release never deletes, so it
    /// can be conditional and never removes a lease another run took meanwhile).
    #[serde(default)]
    released: bool,
}

/// Whether `h` was held by a process on this very machine that is gone: same host name, boot
/// and PID namespace (all known), and its PID no longer alive — or alive but a different
/// process (PID reuse: another start time).
fn holder_died_here(h: &Record, me: &Record) -> bool {
    let known = |m: &str| m.split('/').all(|part| !part.is_empty());
    if h.host != me.host || h.machine != me.machine || !known(&me.machine) || h.pid == me.pid {
        return false;
    }
    let Ok(pid) = i32::try_from(h.pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Err(nix::errno::Errno::ESRCH) => true,
        // Alive (EPERM: alive, another user's): only PID reuse makes it a different process.
        _ => match (h.pid_start, pid_start(h.pid)) {
            (Some(then), Some(now)) => then != now,
            _ => false,
        },
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn host_name() -> String {
    let h = read_trim("/proc/sys/kernel/hostname");
    if h.is_empty() {
        std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into())
    } else {
        h
    }
}

/// Boot id and PID namespace: two processes compare PIDs only when these are equal.
fn machine_id() -> String {
    let pidns = std::fs::read_link("/proc/self/ns/pid")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    format!("{}/{}", read_trim("/proc/sys/kernel/random/boot_id"), pidns)
}

/// Field 22 of `/proc/<pid>/stat`: the process start time.
fn pid_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// How a lease is replaced conditionally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One object, `<meta>/lease.json`, replaced with `If-Match: <etag>` (S3).
    Etag,
    /// Numbered generations under `<meta>/lease/`, each created if absent (GCS, Azure Blob).
    Generations,
}

/// How `op`'s store can hold a lease, if it can: the client must support conditional writes,
/// and the server must enforce them — some S3-compatible servers ignore `If-None-Match`, so a
/// second conditional create of a scratch object next to `key` must be refused.
pub fn supported(op: &opendal::Operator, key: &str, shown: &str) -> Result<Option<Mode>> {
    let cap = op.info().full_capability();
    if !cap.write_with_if_not_exists {
        return Ok(None);
    }
    let probe = format!("{key}.probe-{}", uuid::Uuid::now_v7());
    let create = |body: &'static [u8]| {
        runtime().block_on(
            op.write_with(&probe, body)
                .if_not_exists(true)
                .content_type(CONTENT_TYPE)
                .into_future(),
        )
    };
    let doing = format!("checking conditional writes at {shown}");
    // The first write to the store: a missing bucket or container shows here.
    create(b"1").map_err(|e| od_write(e, &doing))?;
    let enforced = match create(b"2") {
        Ok(_) => false,
        Err(e) if precondition_failed(&e) => true,
        Err(e) => return Err(od(e, &doing)),
    };
    let _ = runtime().block_on(op.delete(&probe));
    Ok(match (enforced, cap.write_with_if_match) {
        (false, _) => None,
        (true, true) => Some(Mode::Etag),
        (true, false) => Some(Mode::Generations),
    })
}

/// Where a lease lives and how it is replaced: every read and conditional write goes through
/// here. A version is an etag ([`Mode::Etag`]) or a generation number ([`Mode::Generations`]).
#[derive(Clone)]
struct Slot {
    op: opendal::Operator,
    mode: Mode,
    /// The lease object (etag mode).
    key: String,
    /// The directory of generations (generation mode), ending in `/`.
    dir: String,
    shown: String,
}

impl Slot {
    fn new(op: &opendal::Operator, key: &str, shown: String, mode: Mode, ttl: Duration) -> Slot {
        let dir = format!("{}/", key.trim_end_matches(".json"));
        // Every call bounded by a third of the lease: a store that stops answering must not
        // hang a renewal or a release (the heartbeat, and the check before each commit, then
        // see an error while the lease is still ours).
        let bound = (ttl / 3).max(Duration::from_secs(1));
        Slot {
            op: op.clone().layer(
                opendal::layers::TimeoutLayer::new()
                    .with_timeout(bound)
                    .with_io_timeout(bound),
            ),
            mode,
            key: key.into(),
            dir,
            shown,
        }
    }

    fn generation_key(&self, n: u64) -> String {
        format!("{}{n:020}.json", self.dir)
    }

    /// The generations present, ascending (names of exactly 20 digits; anything else in the
    /// directory is not ours and is left alone).
    fn generations(&self) -> std::result::Result<Vec<u64>, opendal::Error> {
        let entries = match runtime().block_on(self.op.list(&self.dir)) {
            Ok(e) => e,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out: Vec<u64> = entries
            .iter()
            .filter_map(|e| {
                let n = e.path().rsplit('/').next()?.strip_suffix(".json")?;
                (n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| n.parse().ok())
                    .flatten()
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The current version and record, if a lease exists (`None` inside when unreadable).
    fn read(&self) -> Result<Option<(String, Option<Record>)>> {
        for _ in 0..5 {
            let (key, version) = match self.mode {
                Mode::Etag => {
                    let meta = match runtime().block_on(self.op.stat(&self.key)) {
                        Ok(m) => m,
                        Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
                        Err(e) => return Err(od(e, &format!("checking the lease {}", self.shown))),
                    };
                    (
                        self.key.clone(),
                        meta.etag().unwrap_or_default().to_string(),
                    )
                }
                Mode::Generations => match self
                    .generations()
                    .map_err(|e| od(e, &format!("listing the lease {}", self.shown)))?
                    .last()
                {
                    Some(&n) => (self.generation_key(n), n.to_string()),
                    None => return Ok(None),
                },
            };
            let read = match self.mode {
                Mode::Etag => self.op.read_with(&key).if_match(&version).into_future(),
                // A generation is never rewritten: its name is its version.
                Mode::Generations => self.op.read_with(&key).into_future(),
            };
            match runtime().block_on(read) {
                Ok(b) => return Ok(Some((version, serde_json::from_slice(&b.to_vec()).ok()))),
                // Changed (etag) or superseded and deleted (generation) meanwhile: look again.
                Err(e) if precondition_failed(&e) || e.kind() == opendal::ErrorKind::NotFound => {}
                Err(e) => return Err(od(e, &format!("reading the lease {}", self.shown))),
            }
        }
        Err(Error::busy(format!(
            "the lease {} keeps changing: another run is starting at the same time",
            self.shown
        )))
    }

    /// Write `body` to `key` if it does not exist (`if_match: None`) or still has that etag:
    /// the write's metadata, or `None` when the condition failed (for a replace also when the
    /// object is gone).
    fn put(
        &self,
        key: &str,
        body: Vec<u8>,
        if_match: Option<&str>,
    ) -> std::result::Result<Option<opendal::Metadata>, opendal::Error> {
        let write = self.op.write_with(key, body).content_type(CONTENT_TYPE);
        let write = match if_match {
            Some(etag) => write.if_match(etag),
            None => write.if_not_exists(true),
        };
        match runtime().block_on(write.into_future()) {
            Ok(meta) => Ok(Some(meta)),
            Err(e) if precondition_failed(&e) => Ok(None),
            Err(e) if if_match.is_some() && e.kind() == opendal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create the lease where none exists: the new version, or `None` when one exists.
    fn create(&self, body: Vec<u8>) -> std::result::Result<Option<String>, opendal::Error> {
        match self.mode {
            Mode::Etag => match self.put(&self.key, body, None)? {
                Some(meta) => Ok(Some(self.etag_after(meta)?)),
                None => Ok(None),
            },
            Mode::Generations => {
                // Generation 1, unless any exists (the highest is never deleted).
                if !self.generations()?.is_empty() {
                    return Ok(None);
                }
                self.next_generation(0, body)
            }
        }
    }

    /// Replace version `version` with `body`: the new version, or `None` when `version` is no
    /// longer the current one (another run replaced it first).
    fn replace(
        &self,
        version: &str,
        body: Vec<u8>,
    ) -> std::result::Result<Option<String>, opendal::Error> {
        match self.mode {
            Mode::Etag => match self.put(&self.key, body, Some(version))? {
                Some(meta) => Ok(Some(self.etag_after(meta)?)),
                None => Ok(None),
            },
            Mode::Generations => match version.parse::<u64>() {
                Ok(n) => self.next_generation(n, body),
                Err(_) => Ok(None),
            },
        }
    }

    /// Create generation `n + 1`; then make sure it is the highest (a run paused long enough
    /// may create a generation that was deleted after others moved past it), and delete the
    /// ones below it.
    fn next_generation(
        &self,
        n: u64,
        body: Vec<u8>,
    ) -> std::result::Result<Option<String>, opendal::Error> {
        let key = self.generation_key(n + 1);
        if self.put(&key, body, None)?.is_none() {
            return Ok(None);
        }
        let present = self.generations()?;
        if present.iter().any(|&g| g > n + 1) {
            // Below the current lease it is invisible; removing it is tidiness only.
            let _ = runtime().block_on(self.op.delete(&key));
            return Ok(None);
        }
        for g in present.into_iter().filter(|&g| g <= n) {
            let _ = runtime().block_on(self.op.delete(&self.generation_key(g)));
        }
        Ok(Some((n + 1).to_string()))
    }

    /// The etag a write left (asked for when the store's reply did not carry it).
    fn etag_after(&self, meta: opendal::Metadata) -> std::result::Result<String, opendal::Error> {
        match meta.etag() {
            Some(t) => Ok(t.to_string()),
            None => Ok(runtime()
                .block_on(self.op.stat(&self.key))?
                .etag()
                .unwrap_or_default()
                .to_string()),
        }
    }
}

struct Shared {
    slot: Slot,
    ttl: Duration,
    record: Mutex<Record>,
    /// The version (etag or generation) this run wrote last.
    version: Mutex<String>,
    lost: AtomicBool,
    renewing: Mutex<()>,
}

impl Shared {
    /// Renew the lease for another `ttl`, conditional on the version we last wrote. One
    /// renewal at a time (the heartbeat and the check before a commit would otherwise race on
    /// one version); a refused renewal whose lease still holds our token (a reply lost after
    /// the write landed) adopts that version and tries once more.
    fn renew(&self) -> Result<()> {
        let _one = self.renewing.lock().expect("not poisoned");
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error());
        }
        let mut rec = self.record.lock().expect("not poisoned").clone();
        for second_try in [false, true] {
            rec.expires_at_ms = now_ms() + self.ttl.as_millis() as u64;
            let body = serde_json::to_vec(&rec)?;
            let version = self.version.lock().expect("not poisoned").clone();
            match self.slot.replace(&version, body) {
                Ok(Some(new)) => {
                    *self.version.lock().expect("not poisoned") = new;
                    *self.record.lock().expect("not poisoned") = rec;
                    return Ok(());
                }
                Ok(None) => {
                    if !second_try {
                        if let Some((version, Some(holder))) = self.slot.read()? {
                            if holder.token == rec.token {
                                *self.version.lock().expect("not poisoned") = version;
                                continue;
                            }
                        }
                    }
                    self.lost.store(true, Ordering::SeqCst);
                    return Err(self.lost_error());
                }
                Err(e) => return Err(od(e, &format!("renewing the lease {}", self.slot.shown))),
            }
        }
        unreachable!("the second try returns")
    }

    fn lost_error(&self) -> Error {
        let rec = self.record.lock().expect("not poisoned");
        Error::busy(format!(
            "job `{}` lost its lease on {} (it expired while this run was paused or cut off, and \
             another run took it over): this run's uncommitted files are discarded; nothing it \
             committed before is affected",
            rec.job, self.slot.shown
        ))
    }
}

/// A held lease; renewed in the background until [`Lease::release`] or drop.
pub struct Lease {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
    /// Whether this acquisition took over an expired lease (the caller must fence).
    pub took_over: bool,
    released: bool,
}

impl Lease {
    /// Take the lease `key` under `op` (held the way [`supported`] said `op`'s store can), or
    /// fail with a busy error naming the holder.
    pub fn acquire(
        op: &opendal::Operator,
        mode: Mode,
        key: &str,
        shown: String,
        job: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        let slot = Slot::new(op, key, shown.clone(), mode, ttl);
        let pid = std::process::id();
        let rec = Record {
            format: FORMAT.into(),
            token: uuid::Uuid::now_v7().to_string(),
            job: job.into(),
            run_id: run_id.into(),
            host: host_name(),
            machine: machine_id(),
            pid,
            pid_start: pid_start(pid),
            acquired_at_ms: now_ms(),
            expires_at_ms: now_ms() + ttl.as_millis() as u64,
            released: false,
        };
        let body = serde_json::to_vec(&rec)?;
        let mut took_over = false;
        // A few rounds: the holder may release or renew between our calls.
        let mut version = None;
        for _ in 0..5 {
            match slot.create(body.clone()) {
                Ok(Some(v)) => {
                    version = Some(v);
                    break;
                }
                Ok(None) => {}
                Err(e) => return Err(od(e, &format!("taking the lease {shown}"))),
            }
            // Someone holds it (or held it): read who, with the version we compare against.
            let Some((current, holder)) = slot.read()? else {
                continue;
            };
            let (takeover, fence) = match &holder {
                // Unreadable: not ours to trust; replace it, fencing as for an expired lease.
                None => (true, true),
                Some(h) if h.released => (true, false),
                Some(h) => {
                    let dead = h.expires_at_ms < now_ms() || holder_died_here(h, &rec);
                    (dead, dead)
                }
            };
            if let (false, Some(h)) = (takeover, &holder) {
                let left = h.expires_at_ms.saturating_sub(now_ms()) / 1000;
                return Err(Error::busy(format!(
                    "job `{job}` is already running: another run (run {}, job `{}`, host {}, \
                     pid {}) holds the lease {shown}; it expires in {left}s unless renewed. \
                     Wait for that run to end; a run killed on another machine blocks the \
                     prefix until its lease expires (`lease_ttl`)",
                    h.run_id, h.job, h.host, h.pid
                )));
            }
            match slot.replace(&current, body.clone()) {
                Ok(Some(v)) => {
                    if let Some(h) = holder.as_ref().filter(|_| fence) {
                        tracing::warn!(
                            lease = %shown,
                            previous_run = %h.run_id,
                            previous_host = %h.host,
                            "took over an expired lease (its run was killed or cut off)"
                        );
                    }
                    took_over = fence;
                    version = Some(v);
                    break;
                }
                Ok(None) => continue,
                Err(e) => return Err(od(e, &format!("taking over the lease {shown}"))),
            }
        }
        let Some(version) = version else {
            return Err(Error::busy(format!(
                "job `{job}`: the lease {shown} keeps changing hands: another run is starting \
                 at the same time"
            )));
        };
        let shared = Arc::new(Shared {
            slot,
            ttl,
            record: Mutex::new(rec),
            version: Mutex::new(version),
            lost: AtomicBool::new(false),
            renewing: Mutex::new(()),
        });
        let (stop, rx) = mpsc::channel::<()>();
        let hb = Arc::clone(&shared);
        let heartbeat = std::thread::Builder::new()
            .name("dativo-lease".into())
            .spawn(move || loop {
                match rx.recv_timeout(hb.ttl / 3) {
                    Err(RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                if let Err(e) = hb.renew() {
                    if hb.lost.load(Ordering::SeqCst) {
                        tracing::error!(lease = %hb.slot.shown, "{e}");
                        return;
                    }
                    // A network error: the next beat tries again; the commit checks expiry.
                    tracing::warn!(lease = %hb.slot.shown, "renewing the lease failed: {e}");
                }
            })
            .map_err(|e| Error::internal("starting the lease heartbeat").with_source(e))?;
        Ok(Lease {
            shared,
            stop: Some(stop),
            heartbeat: Some(heartbeat),
            took_over,
            released: false,
        })
    }

    /// Before a commit: renew now, so the lease is ours for at least `ttl` from here on.
    pub fn check(&self) -> Result<()> {
        self.shared.renew()
    }

    /// Whether the lease was lost (renewal found another holder).
    pub fn is_lost(&self) -> bool {
        self.shared.lost.load(Ordering::SeqCst)
    }

    /// Stop renewing and mark the lease released, if it is still ours. Dropping a lease does
    /// the same (a writer whose start failed after taking it must not block the prefix).
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        self.stop_heartbeat();
        if self.is_lost() {
            return;
        }
        let s = &self.shared;
        // Also on a panic path (drop while unwinding): a poisoned lock still holds valid data.
        let _one = s.renewing.lock().unwrap_or_else(|p| p.into_inner());
        let version = s.version.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut rec = s.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rec.released = true;
        rec.expires_at_ms = now_ms();
        // Conditional on what we wrote last: a lease taken over meanwhile stays untouched.
        let body = match serde_json::to_vec(&rec) {
            Ok(b) => b,
            Err(_) => return,
        };
        // Bounded: a store that does not answer must not hang the writer's close or drop; an
        // unreleased lease only makes the next run wait for it to expire. (The slot's calls
        // block on the runtime, so they run on a thread of their own.)
        let slot = s.slot.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("dativo-lease-release".into())
            .spawn(move || {
                let _ = tx.send(slot.replace(&version, body));
            });
        if spawned.is_err() {
            tracing::warn!(lease = %s.slot.shown, "releasing the lease failed: no thread");
            return;
        }
        match rx.recv_timeout(RELEASE_TIMEOUT) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(lease = %s.slot.shown, "releasing the lease failed: {e}")
            }
            Err(RecvTimeoutError::Disconnected) => {
                tracing::warn!(lease = %s.slot.shown, "releasing the lease failed (its thread ended)")
            }
            Err(RecvTimeoutError::Timeout) => tracing::warn!(
                lease = %s.slot.shown,
                "releasing the lease timed out after {} s; it expires on its own",
                RELEASE_TIMEOUT.as_secs()
            ),
        }
    }

    fn stop_heartbeat(&mut self) {
        self.stop.take();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
    }
}

/// How long releasing a lease may take before it is left to expire.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

impl Drop for Lease {
    fn drop(&mut self) {
        self.release_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: u32) -> Record {
        Record {
            format: FORMAT.into(),
            token: "t".into(),
            job: "j".into(),
            run_id: "r".into(),
            host: host_name(),
            machine: machine_id(),
            pid,
            pid_start: pid_start(pid),
            acquired_at_ms: 0,
            expires_at_ms: u64::MAX,
            released: false,
        }
    }

    #[test]
    fn only_a_gone_process_on_this_machine_counts_as_dead() {
        let me = record(std::process::id());
        // A child that has exited and been reaped: its PID is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        let started = pid_start(gone);
        child.wait().unwrap();
        let mut h = record(gone);
        h.pid_start = started;
        assert!(holder_died_here(&h, &me));
        // Alive: the parent of this test process.
        let parent = record(std::os::unix::process::parent_id());
        assert!(!holder_died_here(&parent, &me));
        // Another machine (or an unknown one) is never judged by its PID.
        let mut other = h.clone();
        other.machine = "other-boot/pid:[1]".into();
        assert!(!holder_died_here(&other, &me));
        let mut unknown = me.clone();
        unknown.machine = "/".into();
        let mut h2 = h.clone();
        h2.machine = "/".into();
        assert!(!holder_died_here(&h2, &unknown));
        // Our own PID (another job in this process) is alive.
        assert!(!holder_died_here(&me, &me));
    }

    #[test]
    fn pid_start_reads_this_process() {
        let me = pid_start(std::process::id());
        assert!(me.is_some());
        assert_eq!(me, pid_start(std::process::id()));
        assert_eq!(pid_start(u32::MAX), None);
    }

    /// An operator on a fresh local directory: opendal's fs service creates if absent but has
    /// no conditional replace — the generation mode, as on GCS and Azure Blob.
    fn generations_store() -> (tempfile::TempDir, opendal::Operator) {
        let dir = tempfile::tempdir().unwrap();
        let op = opendal::Operator::new(
            opendal::services::Fs::default().root(dir.path().to_str().unwrap()),
        )
        .unwrap()
        .finish();
        (dir, op)
    }

    /// Take the generations lease `_dativo/lease.json` of job `j` as run `run`.
    fn take(op: &opendal::Operator, run: &str, ttl: Duration) -> Result<Lease> {
        Lease::acquire(
            op,
            Mode::Generations,
            "_dativo/lease.json",
            "L".into(),
            "j",
            run,
            ttl,
        )
    }

    fn generations(dir: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("_dativo/lease"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn a_store_without_conditional_replace_holds_generations() {
        let (dir, op) = generations_store();
        let key = "_dativo/lease.json";
        assert_eq!(supported(&op, key, "L").unwrap(), Some(Mode::Generations));
        let ttl = Duration::from_secs(60);
        let a = take(&op, "run-a", ttl).unwrap();
        assert!(!a.took_over);
        assert_eq!(generations(dir.path()), ["00000000000000000001.json"]);
        // A second run is refused, naming the holder.
        let e = take(&op, "run-b", ttl).err().unwrap();
        assert!(
            e.to_string().contains("already running") && e.to_string().contains("run-a"),
            "{e}"
        );
        // Each renewal is the next generation; the ones below are deleted.
        a.check().unwrap();
        a.check().unwrap();
        assert_eq!(generations(dir.path()), ["00000000000000000003.json"]);
        // Released: one generation left, marked released; the next run takes it without fencing.
        a.release();
        let gens = generations(dir.path());
        assert_eq!(gens, ["00000000000000000004.json"]);
        let rec: Record = serde_json::from_slice(
            &std::fs::read(dir.path().join("_dativo/lease").join(&gens[0])).unwrap(),
        )
        .unwrap();
        assert!(rec.released && rec.run_id == "run-a");
        let b = take(&op, "run-b", ttl).unwrap();
        assert!(!b.took_over);
        drop(b);
    }

    #[test]
    fn an_expired_holder_is_taken_over_and_then_cannot_renew() {
        let (dir, op) = generations_store();
        // A holder whose lease expires at once.
        let a = take(&op, "run-a", Duration::from_millis(1)).unwrap();
        // Paused: no more heartbeats (its PID is this process's, so it is not judged dead).
        let mut a = a;
        a.stop_heartbeat();
        std::thread::sleep(Duration::from_millis(20));
        let b = take(&op, "run-b", Duration::from_secs(60)).unwrap();
        assert!(b.took_over, "an expired lease is taken over, with fencing");
        let e = a.check().err().unwrap();
        assert!(e.to_string().contains("lost its lease"), "{e}");
        assert!(a.is_lost());
        // The loser's release leaves the new holder's lease alone.
        drop(a);
        b.check().unwrap();
        let _ = dir;
    }

    #[test]
    fn a_generation_recreated_after_it_was_deleted_does_not_count() {
        // A run paused long enough may create a generation that a later holder already deleted:
        // the higher generation still there wins, and the stray one is removed.
        let (dir, op) = generations_store();
        let key = "_dativo/lease.json";
        let a = take(&op, "run-a", Duration::from_secs(60)).unwrap();
        for _ in 0..4 {
            a.check().unwrap();
        }
        assert_eq!(generations(dir.path()), ["00000000000000000005.json"]);
        let stale = Slot::new(
            &op,
            key,
            "L".into(),
            Mode::Generations,
            Duration::from_secs(60),
        );
        assert_eq!(stale.replace("2", b"{}".to_vec()).unwrap(), None);
        assert_eq!(generations(dir.path()), ["00000000000000000005.json"]);
        // Replacing the current generation works, and only once.
        assert_eq!(
            stale.replace("5", b"{}".to_vec()).unwrap(),
            Some("6".into())
        );
        assert_eq!(stale.replace("5", b"{}".to_vec()).unwrap(), None);
        // The holder's next renewal finds another lease: lost.
        assert!(a.check().is_err() && a.is_lost());
    }
}
