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
/// part when the value is a URL with a password (`postgres://u:pw@host` → `pw`), and every
/// escaped form a message may show it in: JSON (log lines, API responses), Rust/serde debug
/// quoting (`invalid type: string "…"`), HTML (the status page) and percent-encoding (URLs) —
/// a secret holding `"` or `\` would otherwise pass redaction once escaped.
pub fn register(value: &str) {
    let mut candidates = vec![value.to_string()];
    if let Some(pw) = url_password(value) {
        candidates.push(pw);
    }
    for base in candidates.clone() {
        candidates.extend(escaped_forms(&base));
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

/// The forms `value` takes inside quoted or encoded text.
fn escaped_forms(value: &str) -> Vec<String> {
    let unquote = |s: String| -> String {
        s.strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .map(str::to_string)
            .unwrap_or(s)
    };
    let mut out = vec![
        unquote(serde_json::to_string(value).unwrap_or_default()),
        unquote(format!("{value:?}")),
        // JSON of JSON: a message that was itself put into a JSON string (a log line's field).
        unquote(
            serde_json::to_string(&unquote(serde_json::to_string(value).unwrap_or_default()))
                .unwrap_or_default(),
        ),
        html_escape(value),
        percent_encode(value),
    ];
    out.retain(|s| s != value);
    out
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Environment variables that hold credentials libraries read by themselves (the AWS chain,
/// libpq, the API token of `serve`, a state-store URL): registered at start, so that a library's
/// debug line that prints its credential provider is redacted too.
pub const CREDENTIAL_VARIABLES: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_WEB_IDENTITY_TOKEN",
    "PGPASSWORD",
    "MYSQL_PWD",
    "DATIVO_API_TOKEN",
    "DATIVO_STATE_URL",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
];

/// Register the value of every [`CREDENTIAL_VARIABLES`] entry that is set.
pub fn register_environment() {
    for name in CREDENTIAL_VARIABLES {
        if let Ok(v) = std::env::var(name) {
            register(&v);
        }
    }
}

/// A configuration value that is a secret (a password, a token, a key, a URL with credentials).
///
/// Deserializing one registers it for redaction, so no connector has to remember to; `Debug`
/// prints `***`; the value is read with [`Secret::expose`], at the one place that hands it to a
/// driver. Use it for every config field that may hold a credential.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap (and register) a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        let value = value.into();
        register(&value);
        Secret(value)
    }

    /// The value, to hand to a driver or put in a request. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
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
    fn a_deserialized_secret_is_registered_and_hidden_from_debug() {
        let s: Secret = serde_json::from_value(serde_json::json!("hunter2-secret-value")).unwrap();
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(s.expose(), "hunter2-secret-value");
        assert_eq!(scrub("token hunter2-secret-value here"), "token *** here");
    }

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

    #[test]
    fn escaped_forms_are_scrubbed() {
        let secret = r#"pa"ss\w<o>rd'x"#;
        register(secret);
        let json = serde_json::to_string(&format!("wrong type: {secret}")).unwrap();
        assert!(!scrub(&json).contains("ss"), "{}", scrub(&json));
        let debug = format!("invalid type: string {secret:?}");
        assert_eq!(scrub(&debug), "invalid type: string \"***\"");
        let nested = serde_json::to_string(&json).unwrap();
        assert!(!scrub(&nested).contains("ss"), "{}", scrub(&nested));
        assert!(!scrub(&html_escape(secret)).contains("ss"));
        assert!(!scrub(&percent_encode(secret)).contains("ss"));
    }
}
