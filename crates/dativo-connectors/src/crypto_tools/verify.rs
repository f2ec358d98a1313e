//! `dativo verify`: every committed file present, unmodified (its SHA-256 as committed),
//! authenticated and with its committed rows; the audit log intact and in agreement.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use dativo_core::{Error, Result};
use dativo_encryption::audit::AuditLog;
use dativo_encryption::keys::KeyProvider;
use dativo_encryption::{EncFormat, FileAudit, Sha256};
use dativo_storage::Location;

use super::{for_each_batch, open_plain, Committed, Dataset};

/// What `verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// One line per file checked.
    pub ok: Vec<String>,
    /// Informational notes (rolled-back files).
    pub notes: Vec<String>,
    /// Everything that is wrong.
    pub problems: Vec<String>,
}

/// SHA-256 of a stored file, streamed.
fn sha256_of(loc: &Location, rel: &str) -> Result<String> {
    let mut r = loc.open(rel)?;
    let mut sha = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut r, &mut buf)
            .map_err(|e| Error::io(format!("reading {}: {e}", loc.display(rel))).with_source(e))?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
    }
    Ok(sha.hex())
}

/// Check every committed file: present, the SHA-256 recorded at commit time, every byte
/// authenticated, the committed row count; the audit log's chain and its agreement with the
/// commits; no file in the dataset that no commit names.
pub fn verify(ds: &Dataset) -> Result<VerifyReport> {
    let provider = ds.provider.clone();
    let mut rep = VerifyReport {
        notes: ds.notes.clone(),
        ..Default::default()
    };
    let log_path = ds.enc.audit_log_path();
    let (entries, chain) = if log_path.exists() {
        AuditLog::read(&log_path)?
    } else {
        (
            Vec::new(),
            vec![format!(
                "the audit log {} does not exist",
                log_path.display()
            )],
        )
    };
    rep.problems.extend(chain);
    let mut logged: BTreeMap<&str, &FileAudit> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.target == ds.target) {
        logged.insert(e.file.file.as_str(), &e.file);
    }
    let mut names = BTreeSet::new();
    for c in &ds.committed {
        names.insert(c.file.clone());
        let name = ds.loc.display(&c.file);
        let Some(audit) = &c.audit else {
            rep.problems.push(format!(
                "{name}: committed without encryption (no audit record)"
            ));
            continue;
        };
        match logged.get(c.file.as_str()) {
            None => rep
                .problems
                .push(format!("{name}: missing from the audit log {}", log_path.display())),
            Some(l) if *l != audit => rep.problems.push(format!(
                "{name}: the audit log's record differs from the one committed with the file (the log or the commit was edited)"
            )),
            _ => {}
        }
        match verify_file(ds, &provider, c, audit) {
            Ok(()) => rep.ok.push(format!(
                "{name} ({} rows, sha256 {}…, key {})",
                audit.rows,
                audit.ciphertext_sha256.get(..16).unwrap_or("?"),
                audit.key.key_id
            )),
            Err(e) => rep.problems.push(format!("{name}: {}", e.message())),
        }
    }
    for (file, _) in logged {
        if !names.contains(file) {
            rep.notes.push(format!(
                "{}: in the audit log but never committed (a rolled-back run); not part of the data",
                ds.loc.display(file)
            ));
        }
    }
    for f in ds.loc.list_recursive("")? {
        if ds
            .internal_prefixes
            .iter()
            .any(|p| f.starts_with(p.as_str()))
            || names.contains(&f)
        {
            continue;
        }
        if ds.strays_are_problems {
            rep.problems.push(format!(
                "{}: not named by any commit (an unexpected file in the dataset)",
                ds.loc.display(&f)
            ));
        } else {
            rep.notes.push(format!(
                "{}: not part of the table (no commit names it; an orphan of an interrupted run)",
                ds.loc.display(&f)
            ));
        }
    }
    Ok(rep)
}

fn verify_file(
    ds: &Dataset,
    provider: &Arc<dyn KeyProvider>,
    c: &Committed,
    audit: &FileAudit,
) -> Result<()> {
    let name = ds.loc.display(&c.file);
    if !ds.loc.exists(&c.file)? {
        return Err(Error::data(
            "missing: a committed file was deleted or renamed",
        ));
    }
    let sha = match audit.format {
        EncFormat::Stream => {
            let f = open_plain(ds, provider, &c.file, audit.format)?
                .stream
                .expect("the stream format");
            if f.header.key != audit.key {
                return Err(Error::data(
                    "its header names another data key than the audit trail: the file was replaced",
                ));
            }
            f.verify_all()?
        }
        EncFormat::Parquet => sha256_of(&ds.loc, &c.file)?,
    };
    if sha != audit.ciphertext_sha256 {
        return Err(Error::data(format!(
            "SHA-256 {sha} differs from the committed {}: the file was modified or replaced",
            audit.ciphertext_sha256
        )));
    }
    let mut rows = 0u64;
    for_each_batch(ds, provider, &c.file, audit.format, |b| {
        rows += b.num_rows() as u64;
        Ok(())
    })
    .map_err(|e| Error::data(e.message().replace(&format!("{name} "), "")))?;
    if rows != c.rows {
        return Err(Error::data(format!(
            "{rows} rows decrypted, {} committed",
            c.rows
        )));
    }
    Ok(())
}
