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
//! * **Release**: deleted on close when still ours.
//!
//! Stores without conditional writes get a warning: concurrent runs are not detected there.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use dativo_core::{secrets, Error, Result};

use crate::rt::runtime;

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

fn od(e: opendal::Error, doing: &str) -> Error {
    let msg = format!("{doing}: {}", secrets::scrub(&e.to_string()));
    if e.is_temporary() {
        Error::transient(msg)
    } else if e.kind() == opendal::ErrorKind::PermissionDenied {
        Error::auth(msg)
    } else {
        Error::io(msg)
    }
}

fn precondition_failed(e: &opendal::Error) -> bool {
    matches!(
        e.kind(),
        opendal::ErrorKind::ConditionNotMatch | opendal::ErrorKind::AlreadyExists
    )
}

/// Whether `op`'s store can write conditionally (S3 and compatible servers can).
pub fn supported(op: &opendal::Operator) -> bool {
    let cap = op.info().full_capability();
    cap.write_with_if_not_exists && cap.write_with_if_match
}

struct Shared {
    op: opendal::Operator,
    key: String,
    display: String,
    ttl: Duration,
    record: Mutex<Record>,
    etag: Mutex<String>,
    lost: AtomicBool,
}

impl Shared {
    /// Renew the lease for another `ttl`, conditional on the etag we last wrote.
    fn renew(&self) -> Result<()> {
        if self.lost.load(Ordering::SeqCst) {
            return Err(self.lost_error());
        }
        let mut rec = self.record.lock().expect("not poisoned").clone();
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
                let new = meta.etag().map(str::to_string);
                let new = match new {
                    Some(t) => t,
                    None => runtime()
                        .block_on(self.op.stat(&self.key))
                        .map_err(|e| od(e, &format!("checking {}", self.display)))?
                        .etag()
                        .unwrap_or_default()
                        .to_string(),
                };
                *self.etag.lock().expect("not poisoned") = new;
                *self.record.lock().expect("not poisoned") = rec;
                Ok(())
            }
            Err(e) if precondition_failed(&e) || e.kind() == opendal::ErrorKind::NotFound => {
                self.lost.store(true, Ordering::SeqCst);
                Err(self.lost_error())
            }
            Err(e) => Err(od(e, &format!("renewing the lease {}", self.display))),
        }
    }

    fn lost_error(&self) -> Error {
        let rec = self.record.lock().expect("not poisoned");
        Error::transient(format!(
            "job `{}` lost its lease on {} (it expired while this run was paused or cut off, and \
             another run took it over): this run's uncommitted files are discarded; nothing it \
             committed before is affected",
            rec.job, self.display
        ))
        .with_retryable(false)
    }
}

/// A held lease; renewed in the background until [`Lease::release`] or drop.
pub struct Lease {
    shared: Arc<Shared>,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<JoinHandle<()>>,
    /// Whether this acquisition took over an expired lease (the caller must fence).
    pub took_over: bool,
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
            let meta = match runtime().block_on(op.stat(key)) {
                Ok(m) => m,
                Err(e) if e.kind() == opendal::ErrorKind::NotFound => continue,
                Err(e) => return Err(od(e, &format!("checking the lease {shown}"))),
            };
            let current_etag = meta.etag().unwrap_or_default().to_string();
            let bytes = match runtime()
                .block_on(op.read_with(key).if_match(&current_etag).into_future())
            {
                Ok(b) => b.to_vec(),
                Err(e) if precondition_failed(&e) || e.kind() == opendal::ErrorKind::NotFound => {
                    continue
                }
                Err(e) => return Err(od(e, &format!("reading the lease {shown}"))),
            };
            let holder: Option<Record> = serde_json::from_slice(&bytes).ok();
            let takeover = match &holder {
                // Unreadable: treat as expired (a torn write cannot happen with one PUT, so
                // this is something else's file; replacing it is the only way forward).
                None => true,
                Some(h) => {
                    h.expires_at_ms < now_ms()
                        || (h.host == rec.host
                            && h.machine == rec.machine
                            && h.pid != pid
                            && h.pid_start.is_some()
                            && pid_start(h.pid) != h.pid_start)
                }
            };
            if !takeover {
                let h = holder.expect("checked above");
                let left = h.expires_at_ms.saturating_sub(now_ms()) / 1000;
                return Err(Error::transient(format!(
                    "job `{job}` is already running: another run (run {}, job `{}`, host {}, \
                     pid {}) holds the lease {shown}; it expires in {left}s unless renewed. \
                     Wait for that run to end; a run killed on another machine blocks the \
                     prefix until its lease expires (`lease_ttl`)",
                    h.run_id, h.job, h.host, h.pid
                ))
                .with_retryable(false));
            }
            let r = runtime().block_on(
                op.write_with(key, body.clone())
                    .if_match(&current_etag)
                    .into_future(),
            );
            match r {
                Ok(meta) => {
                    if let Some(h) = &holder {
                        tracing::warn!(
                            lease = %shown,
                            previous_run = %h.run_id,
                            previous_host = %h.host,
                            "took over an expired lease (its run was killed or cut off)"
                        );
                    }
                    took_over = true;
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
            return Err(Error::transient(format!(
                "job `{job}`: the lease {shown} keeps changing hands: another run is starting \
                 at the same time"
            ))
            .with_retryable(false));
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
            .map_err(|e| Error::internal(format!("starting the lease heartbeat: {e}")))?;
        Ok(Lease {
            shared,
            stop: Some(stop),
            heartbeat: Some(heartbeat),
            took_over,
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

    /// Stop renewing and delete the lease object if it is still ours.
    pub fn release(mut self) {
        self.stop_heartbeat();
        if self.is_lost() {
            return;
        }
        let s = &self.shared;
        let etag = s.etag.lock().expect("not poisoned").clone();
        // Only delete what we wrote last: compare the etag first.
        match runtime().block_on(s.op.stat(&s.key)) {
            Ok(m) if m.etag() == Some(etag.as_str()) => {
                if let Err(e) = runtime().block_on(s.op.delete(&s.key)) {
                    tracing::warn!(lease = %s.display, "releasing the lease failed: {e}");
                }
            }
            _ => {}
        }
    }

    fn stop_heartbeat(&mut self) {
        self.stop.take();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop_heartbeat();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_start_reads_this_process() {
        let me = pid_start(std::process::id());
        assert!(me.is_some());
        assert_eq!(me, pid_start(std::process::id()));
        assert_eq!(pid_start(u32::MAX), None);
    }
}
