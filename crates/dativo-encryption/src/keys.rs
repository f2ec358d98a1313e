//! Key providers: where the key-encryption key (KEK) lives and how data keys are wrapped.
//!
//! | `type`    | KEK                                   | wrapping                               |
//! |-----------|---------------------------------------|----------------------------------------|
//! | `local`   | a key file (mode 0600 or stricter)    | AES-256-GCM, in this process           |
//! | `env`     | an environment variable               | AES-256-GCM, in this process           |
//! | `aws_kms` | an AWS KMS key (never leaves KMS)     | `GenerateDataKey` / `Decrypt`          |
//! | `command` | wherever the program keeps it (HSM)   | `PROGRAM… wrap` / `PROGRAM… unwrap`    |
//!
//! Locally wrapped keys are `dkw1.` + base64 of `fingerprint(8) ‖ nonce(12) ‖ ciphertext ‖ tag`;
//! the fingerprint (HMAC of the KEK, not the KEK) lets a wrong key be named as such.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;
use zeroize::Zeroizing;

use dativo_core::secrets::{self, Secret};
use dativo_core::{Error, Result};

use super::{hex, WrappedKey};

/// Length of every data key and key-encryption key: 256 bits.
pub const KEY_LEN: usize = 32;

/// `encryption.key_provider`. Its `Debug` shows the type and key id, never credentials.
#[derive(Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum KeyProviderConfig {
    /// A 256-bit key in a file: 32 raw bytes, 64 hex digits or base64. The file must not be
    /// readable by group or others.
    Local {
        /// Path of the key file.
        key_file: String,
        /// The id recorded in the audit trail (default `local:<file name>`).
        #[serde(default)]
        key_id: Option<String>,
    },
    /// A 256-bit key (64 hex digits or base64) in an environment variable.
    Env {
        /// The variable's name.
        var: String,
        /// The id recorded in the audit trail (default `env:<VAR>`).
        #[serde(default)]
        key_id: Option<String>,
    },
    /// AWS KMS: data keys from `GenerateDataKey`, unwrapped with `Decrypt`.
    AwsKms {
        /// Key id, ARN or `alias/…`.
        key_id: String,
        /// Region (default `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`).
        #[serde(default)]
        region: Option<String>,
        /// Endpoint URL (default `https://kms.<region>.amazonaws.com`).
        #[serde(default)]
        endpoint: Option<String>,
        /// Access key id (default `AWS_ACCESS_KEY_ID`).
        #[serde(default)]
        access_key_id: Option<String>,
        /// Secret access key (default `AWS_SECRET_ACCESS_KEY`); use `${env:…}`.
        #[serde(default)]
        secret_access_key: Option<Secret>,
        /// Session token (default `AWS_SESSION_TOKEN`).
        #[serde(default)]
        session_token: Option<Secret>,
    },
    /// An external program that wraps and unwraps keys (an HSM client, Vault transit, …):
    /// `COMMAND… wrap` and `COMMAND… unwrap`, JSON on stdin and stdout.
    Command {
        /// The program and its arguments.
        command: Vec<String>,
        /// The key-encryption key id passed to the program and recorded in the audit trail.
        key_id: String,
        /// Seconds to wait for the program (default 30).
        #[serde(default = "default_timeout")]
        timeout_secs: u64,
    },
}

fn default_timeout() -> u64 {
    30
}

impl std::fmt::Debug for KeyProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyProviderConfig::Local { key_file, key_id } => f
                .debug_struct("Local")
                .field("key_file", key_file)
                .field("key_id", key_id)
                .finish(),
            KeyProviderConfig::Env { var, key_id } => f
                .debug_struct("Env")
                .field("var", var)
                .field("key_id", key_id)
                .finish(),
            KeyProviderConfig::AwsKms {
                key_id,
                region,
                endpoint,
                ..
            } => f
                .debug_struct("AwsKms")
                .field("key_id", key_id)
                .field("region", region)
                .field("endpoint", endpoint)
                .finish_non_exhaustive(),
            KeyProviderConfig::Command {
                command, key_id, ..
            } => f
                .debug_struct("Command")
                .field("program", &command.first())
                .field("key_id", key_id)
                .finish_non_exhaustive(),
        }
    }
}

/// A fresh data key: the plaintext (wiped when dropped) and its wrapped form.
pub struct DataKey {
    /// The 256-bit key. Never logged, never stored.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// What is stored instead.
    pub wrapped: WrappedKey,
}

/// Wraps and unwraps data keys.
pub trait KeyProvider: Send + Sync {
    /// `local`, `env`, `aws_kms` or `command`.
    fn kind(&self) -> &'static str;
    /// The default key-encryption key id.
    fn key_id(&self) -> &str;
    /// A fresh 256-bit data key wrapped by `kek` (a key id this provider holds).
    fn generate(&self, kek: &str) -> Result<DataKey>;
    /// The plaintext of a data key this provider wrapped.
    fn unwrap(&self, key: &WrappedKey) -> Result<Zeroizing<Vec<u8>>>;
}

impl KeyProviderConfig {
    /// Checks that need no I/O.
    pub fn check(&self) -> Result<()> {
        let p = "encryption.key_provider";
        match self {
            KeyProviderConfig::Local { key_file, .. } if key_file.trim().is_empty() => {
                Err(Error::config("must not be empty").with_key_path(format!("{p}.key_file")))
            }
            KeyProviderConfig::Env { var, .. } if var.trim().is_empty() => {
                Err(Error::config("must not be empty").with_key_path(format!("{p}.var")))
            }
            KeyProviderConfig::AwsKms { key_id, .. } | KeyProviderConfig::Command { key_id, .. }
                if key_id.trim().is_empty() =>
            {
                Err(Error::config("must not be empty").with_key_path(format!("{p}.key_id")))
            }
            KeyProviderConfig::Command { command, .. } if command.is_empty() => Err(Error::config(
                "give the program and its arguments, e.g. [\"/usr/local/bin/hsm-wrap\", \"--slot\", \"1\"]",
            )
            .with_key_path(format!("{p}.command"))),
            _ => Ok(()),
        }
    }

    /// A ready provider: key files are read and checked now; nothing remote is contacted.
    pub fn open(&self) -> Result<Box<dyn KeyProvider>> {
        self.check()?;
        Ok(match self {
            KeyProviderConfig::Local { key_file, key_id } => {
                let path = PathBuf::from(key_file);
                let kek = read_key_file(&path)?;
                let id = key_id.clone().unwrap_or_else(|| {
                    format!(
                        "local:{}",
                        path.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    )
                });
                Box::new(LocalKek::new("local", id, kek))
            }
            KeyProviderConfig::Env { var, key_id } => {
                let text = Zeroizing::new(std::env::var(var).map_err(|_| {
                    Error::config(format!(
                        "environment variable `{var}` is not set (it must hold a 256-bit key: 64 hex digits or base64)"
                    ))
                    .with_key_path("encryption.key_provider.var")
                })?);
                // Key material read here, not a config string (so not a `Secret`, which would
                // keep an unzeroized copy): registered for redaction directly.
                secrets::register(&text);
                let kek = parse_key(text.as_bytes())
                    .map_err(|m| Error::config(format!("environment variable `{var}` {m}")))?;
                Box::new(LocalKek::new(
                    "env",
                    key_id.clone().unwrap_or_else(|| format!("env:{var}")),
                    kek,
                ))
            }
            KeyProviderConfig::AwsKms {
                key_id,
                region,
                endpoint,
                access_key_id,
                secret_access_key,
                session_token,
            } => Box::new(super::kms::AwsKms::new(
                key_id.clone(),
                region.clone(),
                endpoint.clone(),
                access_key_id.clone(),
                secret_access_key.clone(),
                session_token.clone(),
            )?),
            KeyProviderConfig::Command {
                command,
                key_id,
                timeout_secs,
            } => Box::new(CommandKek {
                command: command.clone(),
                key_id: key_id.clone(),
                timeout: Duration::from_secs((*timeout_secs).max(1)),
            }),
        })
    }
}

/// Parse a 256-bit key: 64 hex digits, base64 of 32 bytes, or 32 raw bytes.
fn parse_key(raw: &[u8]) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
    let text = std::str::from_utf8(raw).ok().map(str::trim);
    if let Some(t) = text {
        if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut out = Zeroizing::new(vec![0u8; KEY_LEN]);
            for i in 0..KEY_LEN {
                out[i] = u8::from_str_radix(&t[2 * i..2 * i + 2], 16).expect("hex digits");
            }
            return Ok(out);
        }
        if let Ok(b) = B64.decode(t) {
            let b = Zeroizing::new(b);
            if b.len() == KEY_LEN {
                return Ok(Zeroizing::new(b.to_vec()));
            }
        }
    }
    if raw.len() == KEY_LEN {
        return Ok(Zeroizing::new(raw.to_vec()));
    }
    Err(
        "does not hold a 256-bit key: write 32 random bytes as 64 hex digits or base64 \
         (`openssl rand -hex 32`)"
            .into(),
    )
}

/// Read a key file, refusing one that group or others may read.
fn read_key_file(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::config(format!("key file {shown}: {e}"))
            .with_key_path("encryption.key_provider.key_file")
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(Error::config(format!(
                "key file {shown} is readable by group or others (mode {mode:04o}); refusing to use it: run `chmod 600 {shown}`"
            ))
            .with_key_path("encryption.key_provider.key_file"));
        }
    }
    if !meta.is_file() {
        return Err(Error::config(format!("key file {shown} is not a file"))
            .with_key_path("encryption.key_provider.key_file"));
    }
    let raw = Zeroizing::new(
        std::fs::read(path).map_err(|e| Error::config(format!("key file {shown}: {e}")))?,
    );
    parse_key(&raw).map_err(|m| {
        Error::config(format!("key file {shown} {m}"))
            .with_key_path("encryption.key_provider.key_file")
    })
}

/// Fresh random bytes from the operating system.
pub fn random_bytes(n: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut b = Zeroizing::new(vec![0u8; n]);
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::internal("the system random number generator failed"))?;
    Ok(b)
}

/// An AES-256-GCM key for ring.
pub(crate) fn aead_key(key: &[u8]) -> Result<LessSafeKey> {
    let k = UnboundKey::new(&AES_256_GCM, key)
        .map_err(|_| Error::data("a data key is not 256 bits long"))?;
    Ok(LessSafeKey::new(k))
}

const WRAP_PREFIX: &str = "dkw1.";
const FP_LEN: usize = 8;

/// A KEK held in this process (`local`, `env`).
struct LocalKek {
    kind: &'static str,
    key_id: String,
    key: LessSafeKey,
    fingerprint: [u8; FP_LEN],
}

impl LocalKek {
    fn new(kind: &'static str, key_id: String, kek: Zeroizing<Vec<u8>>) -> Self {
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &kek),
            b"dativo key-encryption-key fingerprint",
        );
        let mut fingerprint = [0u8; FP_LEN];
        fingerprint.copy_from_slice(&mac.as_ref()[..FP_LEN]);
        LocalKek {
            kind,
            key_id,
            key: aead_key(&kek).expect("32 bytes"),
            fingerprint,
        }
    }

    fn aad(&self, key_id: &str) -> Vec<u8> {
        let mut aad = b"dativo-dek-v1:".to_vec();
        aad.extend_from_slice(key_id.as_bytes());
        aad
    }
}

impl KeyProvider for LocalKek {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn generate(&self, kek: &str) -> Result<DataKey> {
        if kek != self.key_id {
            return Err(Error::config(format!(
                "the {} key provider holds one key, `{}`; it cannot wrap with `{kek}` (use aws_kms or command for several keys)",
                self.kind, self.key_id
            ))
            .with_key_path("encryption.column_keys"));
        }
        let dek = random_bytes(super::keys::KEY_LEN)?;
        let nonce = random_bytes(12)?;
        let mut buf = dek.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::try_assume_unique_for_key(&nonce).expect("12 bytes"),
                Aad::from(self.aad(kek)),
                &mut buf,
            )
            .map_err(|_| Error::internal("wrapping a data key failed"))?;
        let mut out = self.fingerprint.to_vec();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(DataKey {
            plaintext: dek,
            wrapped: WrappedKey {
                key_id: kek.to_string(),
                wrapped_key: format!("{WRAP_PREFIX}{}", B64.encode(out)),
            },
        })
    }
    fn unwrap(&self, key: &WrappedKey) -> Result<Zeroizing<Vec<u8>>> {
        let raw = key
            .wrapped_key
            .strip_prefix(WRAP_PREFIX)
            .and_then(|b| B64.decode(b).ok())
            .filter(|r| r.len() == FP_LEN + 12 + KEY_LEN + 16)
            .ok_or_else(|| {
                Error::data(format!(
                    "the wrapped data key for `{}` is not in the {} provider's format (was the file written with another key provider?)",
                    key.key_id, self.kind
                ))
            })?;
        if raw[..FP_LEN] != self.fingerprint {
            return Err(Error::auth(format!(
                "wrong key: the data key was wrapped by key `{}` with fingerprint {}, but the configured {} key `{}` has fingerprint {}",
                key.key_id,
                hex(&raw[..FP_LEN]),
                self.kind,
                self.key_id,
                hex(&self.fingerprint)
            )));
        }
        let mut buf = Zeroizing::new(raw[FP_LEN + 12..].to_vec());
        let nonce = Nonce::try_assume_unique_for_key(&raw[FP_LEN..FP_LEN + 12]).expect("12");
        let n = self
            .key
            .open_in_place(nonce, Aad::from(self.aad(&key.key_id)), &mut buf)
            .map_err(|_| {
                Error::data(format!(
                    "the wrapped data key for `{}` failed authentication: it was modified",
                    key.key_id
                ))
            })?
            .len();
        Ok(Zeroizing::new(buf[..n].to_vec()))
    }
}

/// `command`: an external program wraps and unwraps.
struct CommandKek {
    command: Vec<String>,
    key_id: String,
    timeout: Duration,
}

impl CommandKek {
    /// Run the program; `hide` is removed from anything it prints on stderr (a data key it
    /// might echo back).
    fn call(&self, verb: &str, input: serde_json::Value, hide: &str) -> Result<serde_json::Value> {
        let prog = &self.command[0];
        let what = format!("key provider command `{prog} {verb}`");
        let mut child = Command::new(prog)
            .args(&self.command[1..])
            .arg(verb)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                Error::config(format!("{what}: cannot start it: {e}"))
                    .with_key_path("encryption.key_provider.command")
            })?;
        let body = Zeroizing::new(serde_json::to_vec(&input)?);
        {
            let mut stdin = child.stdin.take().expect("piped");
            // A program that exits without reading is reported by its status below.
            let _ = stdin.write_all(&body);
        }
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let out_t = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = stdout.read_to_end(&mut b);
            Zeroizing::new(b)
        });
        let err_t = std::thread::spawn(move || {
            let mut b = Vec::new();
            let _ = stderr.read_to_end(&mut b);
            b
        });
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::transient(format!(
                    "{what} did not answer within {} s",
                    self.timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let out = out_t.join().unwrap_or_default();
        let err = err_t.join().unwrap_or_default();
        if !status.success() {
            let text = String::from_utf8_lossy(&err);
            let tail: String = text
                .trim()
                .chars()
                .rev()
                .take(500)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let tail = if hide.is_empty() {
                tail
            } else {
                tail.replace(hide, "***")
            };
            return Err(Error::auth(format!(
                "{what} failed ({status}): {}",
                secrets::scrub(&tail)
            )));
        }
        serde_json::from_slice(&out).map_err(|e| {
            Error::data(format!(
                "{what} printed something that is not a JSON object: {e}"
            ))
        })
    }
}

impl KeyProvider for CommandKek {
    fn kind(&self) -> &'static str {
        "command"
    }
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn generate(&self, kek: &str) -> Result<DataKey> {
        let dek = random_bytes(KEY_LEN)?;
        let b64 = Zeroizing::new(B64.encode(&*dek));
        let out = self.call(
            "wrap",
            serde_json::json!({"key_id": kek, "plaintext": &*b64}),
            &b64,
        )?;
        let wrapped = out
            .get("wrapped")
            .and_then(|w| w.as_str())
            .filter(|w| !w.is_empty())
            .ok_or_else(|| {
                Error::data("key provider command `wrap` must print {\"wrapped\": \"…\"}")
            })?;
        Ok(DataKey {
            plaintext: dek,
            wrapped: WrappedKey {
                key_id: kek.to_string(),
                wrapped_key: wrapped.to_string(),
            },
        })
    }
    fn unwrap(&self, key: &WrappedKey) -> Result<Zeroizing<Vec<u8>>> {
        let out = self.call(
            "unwrap",
            serde_json::json!({"key_id": key.key_id, "wrapped": key.wrapped_key}),
            "",
        )?;
        let text = out
            .get("plaintext")
            .and_then(|w| w.as_str())
            .map(|s| Zeroizing::new(s.to_string()))
            .ok_or_else(|| {
                Error::data(
                    "key provider command `unwrap` must print {\"plaintext\": \"<base64>\"}",
                )
            })?;
        let key_bytes =
            Zeroizing::new(B64.decode(text.as_bytes()).map_err(|_| {
                Error::data("key provider command `unwrap` printed invalid base64")
            })?);
        if key_bytes.len() != KEY_LEN {
            return Err(Error::data(format!(
                "key provider command `unwrap` returned a {}-byte key; data keys are 32 bytes",
                key_bytes.len()
            )));
        }
        Ok(key_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_keys_round_trip_and_a_wrong_key_is_named() {
        let a = LocalKek::new("local", "k".into(), Zeroizing::new(vec![7u8; 32]));
        let b = LocalKek::new("local", "k".into(), Zeroizing::new(vec![8u8; 32]));
        let dk = a.generate("k").unwrap();
        assert_eq!(&*a.unwrap(&dk.wrapped).unwrap(), &*dk.plaintext);
        let e = b.unwrap(&dk.wrapped).unwrap_err().to_string();
        assert!(e.contains("wrong key"), "{e}");
        assert!(!dk.wrapped.wrapped_key.contains(&hex(&dk.plaintext)));
        let e = a.generate("other").err().unwrap().to_string();
        assert!(e.contains("holds one key"), "{e}");
    }

    #[test]
    fn keys_parse_from_hex_base64_and_raw() {
        let hex64 = "ab".repeat(32);
        assert_eq!(parse_key(hex64.as_bytes()).unwrap()[0], 0xab);
        assert_eq!(parse_key(B64.encode([5u8; 32]).as_bytes()).unwrap()[31], 5);
        assert_eq!(parse_key(&[9u8; 32]).unwrap()[0], 9);
        assert!(parse_key(b"short").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kek");
        std::fs::write(&p, "ab".repeat(32)).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_key_file(&p).err().unwrap().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_key_file(&p).is_ok());
    }
}
