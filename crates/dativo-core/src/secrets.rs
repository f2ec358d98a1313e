//! Secrets never appear in logs, errors, metrics or written metadata.
//!
//! Every value substituted from `${env:…}` or `${file:…}` into a job file is registered here;
//! [`redact`] replaces each registered value with `***` in any text about to leave the process
//! (error messages, log lines, run history). Registration is process-wide because one process may
//! run many jobs (`dativo serve`) whose errors all pass through the same sinks.

use std::borrow::Cow;
use std::sync::RwLock;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Values shorter than this are not redacted: replacing every `1` or `on` in a message would
/// make errors unreadable, and such values are not secrets.
const MIN_SECRET_LEN: usize = 3;

/// Register a value that must never be printed. Also registers its URL-encoded form's user-info
/// part when the value is a URL with a password (`postgres://u:pw@host` → `pw`).
pub fn register(value: &str) {
    let mut candidates = vec![value.to_string()];
    if let Some(pw) = url_password(value) {
        candidates.push(pw);
    }
    let mut secrets = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for c in candidates {
        let c = c.trim().to_string();
        if c.len() >= MIN_SECRET_LEN && !secrets.contains(&c) {
            secrets.push(c);
        }
    }
    // Longest first so that a secret containing another is replaced whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// Replace every registered secret in `text` with `***`.
pub fn redact(text: &str) -> Cow<'_, str> {
    let secrets = SECRETS.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(text);
    for s in secrets.iter() {
        if out.contains(s.as_str()) {
            out = Cow::Owned(out.replace(s.as_str(), "***"));
        }
    }
    out
}

/// Redact the password of any `scheme://user:password@host` URL in `text`, registered or not.
pub fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            if let Some(colon) = userinfo.find(':') {
                out.push_str(&userinfo[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            } else {
                out.push_str(authority);
            }
        } else {
            out.push_str(authority);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// [`redact`] followed by [`redact_url_passwords`]: what every sink should apply.
pub fn scrub(text: &str) -> String {
    redact_url_passwords(&redact(text))
}

fn url_password(value: &str) -> Option<String> {
    let tail = &value[value.find("://")? + 3..];
    let authority = &tail[..tail.find('/').unwrap_or(tail.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let pw = &userinfo[userinfo.find(':')? + 1..];
    (!pw.is_empty()).then(|| pw.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_values_and_url_passwords_are_scrubbed() {
        register("s3cr3t-token-value");
        register("postgres://app:hunter22@db:5432/x");
        assert_eq!(
            scrub("auth failed with s3cr3t-token-value"),
            "auth failed with ***"
        );
        assert!(!scrub("cannot reach hunter22").contains("hunter22"));
        assert_eq!(
            scrub("connect to mysql://me:pw@h/db failed"),
            "connect to mysql://me:***@h/db failed"
        );
        assert_eq!(scrub("no secrets here: a@b"), "no secrets here: a@b");
    }
}
