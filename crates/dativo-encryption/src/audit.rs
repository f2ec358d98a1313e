//! The append-only audit log: one JSON line per encrypted file, each carrying the SHA-256 of the
//! line before it, so that a removed, changed or reordered line breaks the chain
//! (`dativo verify` checks it). Lines are written before the commit that publishes the files:
//! a committed file always has its line; a line whose file never got committed is reported as
//! rolled back.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use dativo_core::{Error, Result, ResultExt};

use super::{FileAudit, Sha256};

/// One line of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditEntry {
    /// 1, 2, 3, … over the whole log.
    pub seq: u64,
    /// SHA-256 of the previous line (hex), or 64 zeros for the first.
    pub prev: String,
    /// The dataset: directory, URL or Iceberg table.
    pub target: String,
    /// The file.
    #[serde(flatten)]
    pub file: FileAudit,
}

/// An audit log file.
pub struct AuditLog {
    path: PathBuf,
}

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn line_hash(line: &[u8]) -> String {
    let mut s = Sha256::new();
    s.update(line);
    s.hex()
}

impl AuditLog {
    /// Open (creating it, mode 0600, and its directory) the log at `path`.
    pub fn open(path: &Path) -> Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {}", dir.display()))
                .map_err(|e| e.with_key_path("encryption.audit_log"))?;
        }
        let mut o = OpenOptions::new();
        o.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        o.open(path)
            .with_context(|| format!("opening the audit log {}", path.display()))
            .map_err(|e| e.with_key_path("encryption.audit_log"))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
        })
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last line of `f` (empty when the file is empty).
    fn last_line(f: &mut File) -> Result<(u64, Vec<u8>)> {
        let len = f.metadata()?.len();
        let mut take = 4096u64;
        loop {
            let start = len.saturating_sub(take);
            f.seek(SeekFrom::Start(start))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            let body = buf.strip_suffix(b"\n").unwrap_or(&buf);
            if let Some(i) = body.iter().rposition(|b| *b == b'\n') {
                return Ok((len, body[i + 1..].to_vec()));
            }
            if start == 0 {
                return Ok((len, body.to_vec()));
            }
            take *= 4;
        }
    }

    /// Append one line per file, durably, under an exclusive lock (several jobs may share a log).
    pub fn append(&self, target: &str, files: &[FileAudit]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let shown = self.path.display().to_string();
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)
            .with_context(|| format!("opening the audit log {shown}"))?;
        f.lock()
            .with_context(|| format!("locking the audit log {shown}"))?;
        let (len, mut last) = Self::last_line(&mut f)?;
        if len > 0 {
            let mut b = [0u8; 1];
            f.seek(SeekFrom::End(-1))?;
            f.read_exact(&mut b)?;
            if b[0] != b'\n' {
                // A line torn by a crash or a full disk (lines are written whole and end with
                // a newline): drop it, keep the chain of the complete lines before it.
                let keep = len - last.len() as u64;
                tracing::warn!(log = %shown, bytes = last.len(), "dropping a torn last line of the audit log");
                f.set_len(keep)
                    .with_context(|| format!("repairing the audit log {shown}"))?;
                last = Self::last_line(&mut f)?.1;
            }
        }
        let (mut seq, mut prev) = if last.is_empty() {
            (0, GENESIS.to_string())
        } else {
            let e: AuditEntry = serde_json::from_slice(&last).map_err(|e| {
                Error::data(format!(
                    "the audit log {shown} ends with an unreadable line ({e}); it was changed by hand — move it aside to start a new chain"
                ))
            })?;
            (e.seq, line_hash(&last))
        };
        let mut out = Vec::new();
        for file in files {
            seq += 1;
            let line = serde_json::to_vec(&AuditEntry {
                seq,
                prev: prev.clone(),
                target: target.to_string(),
                file: file.clone(),
            })?;
            prev = line_hash(&line);
            out.extend_from_slice(&line);
            out.push(b'\n');
        }
        f.write_all(&out)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing the audit log {shown}"))?;
        let _ = f.unlock();
        Ok(())
    }

    /// Every entry, checking the chain; problems are returned as messages, not errors.
    pub fn read(path: &Path) -> Result<(Vec<AuditEntry>, Vec<String>)> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).with_context(|| format!("reading the audit log {shown}"))?;
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        let mut prev = GENESIS.to_string();
        let mut seq = 0;
        for (n, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<AuditEntry>(line) {
                Ok(e) => {
                    if e.prev != prev || e.seq != seq + 1 {
                        problems.push(format!(
                            "audit log {shown} line {}: the hash chain is broken (a line before it was removed, changed or reordered)",
                            n + 1
                        ));
                    }
                    seq = e.seq;
                    entries.push(e);
                }
                Err(e) => problems.push(format!(
                    "audit log {shown} line {}: not an audit entry ({e})",
                    n + 1
                )),
            }
            prev = line_hash(line);
        }
        Ok((entries, problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EncFormat, WrappedKey};

    fn rec(file: &str) -> FileAudit {
        FileAudit {
            file: file.into(),
            format: EncFormat::Stream,
            algorithm: "a".into(),
            key_provider: "local".into(),
            key: WrappedKey {
                key_id: "k".into(),
                wrapped_key: "w".into(),
            },
            column_keys: Default::default(),
            ciphertext_sha256: "00".into(),
            bytes: 1,
            rows: 1,
            job: "j".into(),
            run_id: "r".into(),
            time: "t".into(),
        }
    }

    #[test]
    fn the_chain_survives_a_torn_line_and_breaks_on_edits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        log.append("t", &[rec("f1"), rec("f2")]).unwrap();
        // A crash mid-write leaves half a line: the next append drops it and chains on.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":3,\"prev\":\"ab").unwrap();
        log.append("t", &[rec("f3")]).unwrap();
        let (entries, problems) = AuditLog::read(&path).unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        // Removing a line breaks the chain.
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        let (_, problems) = AuditLog::read(&path).unwrap();
        assert!(problems[0].contains("hash chain is broken"), "{problems:?}");
    }
}
