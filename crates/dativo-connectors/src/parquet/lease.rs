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
//! Stores that do not enforce conditional writes (checked at start with a scratch object) get
//! a warning: concurrent runs are not detected there.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use dativo_core::{Error, Result};

use dativo_core::rt::runtime;
use dativo_storage::{od, precondition_failed};

/// The lease file's format identifier.
const FORMAT: &str = "dativo.lease/1";

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

/// Whether `op`'s store writes conditionally: the client must support it, and the server must
/// enforce it — some S3-compatible servers ignore `If-None-Match`, so a second conditional
/// create of a scratch object next to `key` must be refused.
pub fn supported(op: &opendal::Operator, key: &str) -> Result<bool> {
    let cap = op.info().full_capability();
    if !(cap.write_with_if_not_exists && cap.write_with_if_match) {
        return Ok(false);
    }
    let probe = format!("{key}.probe-{}", uuid::Uuid::now_v7());
    let create = |body: &'static [u8]| {
        runtime().block_on(
            op.write_with(&probe, body)
                .if_not_exists(true)
                .into_future(),
        )
    };
    create(b"1").map_err(|e| od(e, "checking conditional writes"))?;
    let enforced = match create(b"2") {
        Ok(_) => false,
        Err(e) if precondition_failed(&e) => true,
        Err(e) => return Err(od(e, "checking conditional writes")),
    };
    let _ = runtime().block_on(op.delete(&probe));
    Ok(enforced)
}

struct Shared {
    op: opendal::Operator,
    key: String,
    display: String,
    ttl: Duration,
    record: Mutex<Record>,
    etag: Mutex<String>,
    lost: AtomicBool,
    renewing: Mutex<()>,
}

/// The etag and record of the lease object `key`, if it exists (`None` inside when unreadable).
fn read_lease(
    op: &opendal::Operator,
    key: &str,
    shown: &str,
) -> Result<Option<(String, Option<Record>)>> {
    for _ in 0..5 {
        let meta = match runtime().block_on(op.stat(key)) {
            Ok(m) => m,
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(od(e, &format!("checking the lease {shown}"))),
        };
        let etag = meta.etag().unwrap_or_default().to_string();
        match runtime().block_on(op.read_with(key).if_match(&etag).into_future()) {
            Ok(b) => return Ok(Some((etag, serde_json::from_slice(&b.to_vec()).ok()))),
            // Changed between the two calls: look again.
            Err(e) if precondition_failed(&e) || e.kind() == opendal::ErrorKind::NotFound => {}
            Err(e) => return Err(od(e, &format!("reading the lease {shown}"))),
        }
    }
    Err(Error::busy(format!(
        "the lease {shown} keeps changing: another run is starting at the same time"
    )))
}

impl Shared {
    /// Renew the lease for another `ttl`, conditional on the etag we last wrote. One renewal
    /// at a time (the heartbeat and the check before a commit would otherwise race on one
    /// etag); a refused renewal whose object still holds our token (a reply lost after the PUT
    /// landed) adopts the object's etag and tries once more.
    fn renew(&self) -> Result<()> {
        let _one = self.renewing.lock().expect("not poisoned");
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error());
        }
        let mut rec = self.record.lock().expect("not poisoned").clone();
        for second_try in [false, true] {
            rec.expires_at_ms = now_ms() + self.ttl.as_millis() as u64;
            let body = serde_json::to_vec(&rec)?;
            let etag = self.etag.lock().expect("not poisoned").clone();
            let r = runtime().block_on(
                self.op
                    .write_with(&self.key, body)
                    .if_match(&etag)
                    .into_future(),
            );
            match r {
                Ok(meta) => {
                    let new = match meta.etag() {
                        Some(t) => t.to_string(),
                        None => self.current()?.map(|(t, _)| t).unwrap_or_default(),
                    };
                    *self.etag.lock().expect("not poisoned") = new;
                    *self.record.lock().expect("not poisoned") = rec;
                    return Ok(());
                }
                Err(e) if precondition_failed(&e) || e.kind() == opendal::ErrorKind::NotFound => {
                    if !second_try {
                        if let Some((etag, Some(holder))) = self.current()? {
                            if holder.token == rec.token {
                                *self.etag.lock().expect("not poisoned") = etag;
                                continue;
                            }
                        }
                    }
                    self.lost.store(true, Ordering::SeqCst);
                    return Err(self.lost_error());
                }
                Err(e) => return Err(od(e, &format!("renewing the lease {}", self.display))),
            }
        }
        unreachable!("the second try returns")
    }

    /// The lease object's etag and record, if it exists.
    fn current(&self) -> Result<Option<(String, Option<Record>)>> {
        read_lease(&self.op, &self.key, &self.display)
    }

    fn lost_error(&self) -> Error {
        let rec = self.record.lock().expect("not poisoned");
        Error::busy(format!(
            "job `{}` lost its lease on {} (it expired while this run was paused or cut off, and \
             another run took it over): this run's uncommitted files are discarded; nothing it \
             committed before is affected",
            rec.job, self.display
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
    /// Take the lease `key` under `op`, or fail with a busy error naming the holder.
    pub fn acquire(
        op: &opendal::Operator,
        key: &str,
        shown: String,
        job: &str,
        run_id: &str,
        ttl: Duration,
    ) -> Result<Lease> {
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
        let mut etag = None;
        for _ in 0..5 {
            let r = runtime().block_on(
                op.write_with(key, body.clone())
                    .if_not_exists(true)
                    .into_future(),
            );
            match r {
                Ok(meta) => {
                    etag = Some(meta.etag().map(str::to_string));
                    break;
                }
                Err(e) if precondition_failed(&e) => {}
                Err(e) => return Err(od(e, &format!("taking the lease {shown}"))),
            }
            // Someone holds it (or held it): read who, with the etag we compare against.
            let Some((current_etag, holder)) = read_lease(op, key, &shown)? else {
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
            let r = runtime().block_on(
                op.write_with(key, body.clone())
                    .if_match(&current_etag)
                    .into_future(),
            );
            match r {
                Ok(meta) => {
                    if let Some(h) = holder.as_ref().filter(|_| fence) {
                        tracing::warn!(
                            lease = %shown,
                            previous_run = %h.run_id,
                            previous_host = %h.host,
                            "took over an expired lease (its run was killed or cut off)"
                        );
                    }
                    took_over = fence;
                    etag = Some(meta.etag().map(str::to_string));
                    break;
                }
                Err(e) if precondition_failed(&e) || e.kind() == opendal::ErrorKind::NotFound => {
                    continue
                }
                Err(e) => return Err(od(e, &format!("taking over the lease {shown}"))),
            }
        }
        let Some(etag) = etag else {
            return Err(Error::busy(format!(
                "job `{job}`: the lease {shown} keeps changing hands: another run is starting \
                 at the same time"
            )));
        };
        let etag = match etag {
            Some(t) => t,
            None => runtime()
                .block_on(op.stat(key))
                .map_err(|e| od(e, &format!("checking the lease {shown}")))?
                .etag()
                .unwrap_or_default()
                .to_string(),
        };
        let shared = Arc::new(Shared {
            op: op.clone(),
            key: key.into(),
            display: shown,
            ttl,
            record: Mutex::new(rec),
            etag: Mutex::new(etag),
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
                        tracing::error!(lease = %hb.display, "{e}");
                        return;
                    }
                    // A network error: the next beat tries again; the commit checks expiry.
                    tracing::warn!(lease = %hb.display, "renewing the lease failed: {e}");
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
        let etag = s.etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut rec = s.record.lock().unwrap_or_else(|p| p.into_inner()).clone();
        rec.released = true;
        rec.expires_at_ms = now_ms();
        // Conditional on what we wrote last: a lease taken over meanwhile stays untouched.
        let body = match serde_json::to_vec(&rec) {
            Ok(b) => b,
            Err(_) => return,
        };
        // Bounded: a store that does not answer must not hang the writer's close or drop; an
        // unreleased lease only makes the next run wait for it to expire.
        let write = s.op.write_with(&s.key, body).if_match(&etag).into_future();
        match runtime().block_on(async { tokio::time::timeout(RELEASE_TIMEOUT, write).await }) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if precondition_failed(&e) => {}
            Ok(Err(e)) => tracing::warn!(lease = %s.display, "releasing the lease failed: {e}"),
            Err(_) => tracing::warn!(
                lease = %s.display,
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
}
