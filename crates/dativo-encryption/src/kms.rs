//! The `aws_kms` key provider: `GenerateDataKey` and `Decrypt` over the AWS KMS JSON API,
//! signed with Signature Version 4. The key-encryption key never leaves KMS.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::hmac;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use dativo_core::secrets::{self, Secret};
use dativo_core::{Error, Result};

use super::keys::{DataKey, KeyProvider, KEY_LEN};
use super::{hex, WrappedKey};
use dativo_core::rt::runtime;

pub(crate) struct AwsKms {
    key_id: String,
    region: String,
    url: reqwest::Url,
    path: String,
    host: String,
    access_key_id: String,
    secret_access_key: Zeroizing<String>,
    session_token: Option<Secret>,
    client: reqwest::Client,
}

/// AWS error codes that mean "slow down" (the AWS SDKs' throttling set): retried.
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "RequestThrottled",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl AwsKms {
    pub(crate) fn new(
        key_id: String,
        region: Option<String>,
        endpoint: Option<String>,
        access_key_id: Option<String>,
        secret_access_key: Option<Secret>,
        session_token: Option<Secret>,
    ) -> Result<Self> {
        let region = region
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let p = "encryption.key_provider";
        let endpoint = endpoint.unwrap_or_else(|| format!("https://kms.{region}.amazonaws.com"));
        let url = reqwest::Url::parse(&endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                Error::config(format!("`{endpoint}` is not an http(s) URL"))
                    .with_key_path(format!("{p}.endpoint"))
            })?;
        // Signed exactly as sent: the host (lowercased by the URL parser) with a non-default
        // port, and the path as the canonical URI.
        let host = match url.port() {
            Some(port) => format!("{}:{port}", url.host_str().expect("checked")),
            None => url.host_str().expect("checked").to_string(),
        };
        let path = if url.path().is_empty() {
            "/".to_string()
        } else {
            url.path().to_string()
        };
        let access_key_id = access_key_id.or_else(|| env("AWS_ACCESS_KEY_ID")).ok_or_else(|| {
            Error::config("no AWS credentials: set `access_key_id`/`secret_access_key` or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
                .with_key_path(format!("{p}.access_key_id"))
        })?;
        // From the environment: Secrets too (registered for redaction like configured ones).
        let secret = secret_access_key
            .or_else(|| env("AWS_SECRET_ACCESS_KEY").map(Secret::new))
            .ok_or_else(|| {
                Error::config("no AWS secret access key: set `secret_access_key` (use ${env:…}) or AWS_SECRET_ACCESS_KEY")
                    .with_key_path(format!("{p}.secret_access_key"))
            })?;
        let session_token = session_token.or_else(|| env("AWS_SESSION_TOKEN").map(Secret::new));
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| Error::internal("building an HTTP client").with_source(e))?;
        Ok(AwsKms {
            key_id,
            region,
            url,
            path,
            host,
            access_key_id,
            secret_access_key: Zeroizing::new(secret.expose().to_string()),
            session_token,
            client,
        })
    }

    /// One signed KMS call. Runs on a short-lived thread: callers may be inside the runtime.
    fn call(&self, target: &str, body: &Value) -> Result<Value> {
        let body = Zeroizing::new(serde_json::to_vec(body)?);
        let now = chrono::Utc::now();
        let amz_date = now.format("%Y%m%dT%H%M%SZ").to_string();
        let date = now.format("%Y%m%d").to_string();
        let full_target = format!("TrentService.{target}");
        let mut headers: Vec<(&str, String)> = vec![
            ("content-type", "application/x-amz-json-1.1".into()),
            ("host", self.host.clone()),
            ("x-amz-date", amz_date.clone()),
        ];
        if let Some(t) = &self.session_token {
            headers.push(("x-amz-security-token", t.expose().to_string()));
        }
        headers.push(("x-amz-target", full_target.clone()));
        let signed: Vec<&str> = headers.iter().map(|(k, _)| *k).collect();
        let signed = signed.join(";");
        let canonical_headers: String = headers
            .iter()
            .map(|(k, v)| format!("{k}:{}\n", v.trim()))
            .collect();
        let payload_hash = hex(ring::digest::digest(&ring::digest::SHA256, &body).as_ref());
        let canonical = format!(
            "POST\n{}\n\n{canonical_headers}\n{signed}\n{payload_hash}",
            self.path
        );
        let scope = format!("{date}/{}/kms/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes()).as_ref())
        );
        let mac = |key: &[u8], data: &[u8]| -> Vec<u8> {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
                .as_ref()
                .to_vec()
        };
        let k_secret = Zeroizing::new(format!("AWS4{}", &*self.secret_access_key));
        let k = mac(k_secret.as_bytes(), date.as_bytes());
        let k = mac(&k, self.region.as_bytes());
        let k = mac(&k, b"kms");
        let k = mac(&k, b"aws4_request");
        let signature = hex(&mac(&k, to_sign.as_bytes()));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={signature}",
            self.access_key_id
        );
        let mut req = self
            .client
            .post(self.url.clone())
            .header("authorization", auth);
        for (k, v) in &headers {
            if *k != "host" {
                req = req.header(*k, v);
            }
        }
        let req = req.body(body.to_vec());
        let what = format!("AWS KMS {target} ({})", self.url);
        let (status, text) = std::thread::scope(|s| {
            s.spawn(|| {
                runtime().block_on(async {
                    let resp = req.send().await?;
                    let status = resp.status();
                    let text = resp.bytes().await?;
                    Ok::<_, reqwest::Error>((status, Zeroizing::new(text.to_vec())))
                })
            })
            .join()
            .expect("the KMS call thread does not panic")
        })
        .map_err(|e| {
            let m = format!("{what}: {}", secrets::scrub(&e.to_string()));
            let err = if e.is_timeout() || e.is_connect() || e.is_request() {
                Error::transient(m)
            } else {
                Error::io(m)
            };
            err.with_source(e)
        })?;
        let v: Value = serde_json::from_slice(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(v);
        }
        // KMS answers JSON errors; proxies and some front ends answer XML.
        let xml = |tag: &str| -> Option<String> {
            let t = String::from_utf8_lossy(&text);
            let open = format!("<{tag}>");
            let start = t.find(&open)? + open.len();
            let end = t[start..].find(&format!("</{tag}>"))? + start;
            Some(t[start..end].to_string())
        };
        let kind = v
            .get("__type")
            .and_then(|t| t.as_str())
            .map(|t| t.rsplit('#').next().unwrap_or("").to_string())
            .or_else(|| xml("Code"))
            .unwrap_or_default();
        let msg = v
            .get("message")
            .or_else(|| v.get("Message"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .or_else(|| xml("Message"))
            .unwrap_or_default();
        let m = secrets::scrub(&format!("{what} failed: {} {kind}: {msg}", status.as_u16()));
        Err(classify(status.as_u16(), &kind, m))
    }
}

/// The error for a KMS answer with HTTP `status` and AWS error code `code` (exact codes, as
/// KMS and the AWS SDKs name them; `m` is the message).
fn classify(status: u16, code: &str, m: String) -> Error {
    match code {
        "InvalidCiphertextException" | "IncorrectKeyException" => Error::auth(format!(
            "{m} — wrong key: the data key was not wrapped by this KMS key, or was modified"
        )),
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "SignatureDoesNotMatch"
        | "InvalidClientTokenId"
        | "AccessDenied" => Error::auth(m),
        _ if matches!(status, 401 | 403) => Error::auth(m),
        "NotFoundException"
        | "DisabledException"
        | "KMSInvalidStateException"
        | "ValidationException" => Error::config(m).with_key_path("encryption.key_provider.key_id"),
        _ if status >= 500 || status == 429 || THROTTLING_CODES.contains(&code) => {
            Error::transient(m)
        }
        _ => Error::io(m),
    }
}

fn b64_field(v: &Value, field: &str, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    let s = v
        .get(field)
        .and_then(|p| p.as_str())
        .ok_or_else(|| Error::data(format!("AWS KMS {what} answered without `{field}`")))?;
    Ok(Zeroizing::new(B64.decode(s).map_err(|_| {
        Error::data(format!(
            "AWS KMS {what} answered invalid base64 in `{field}`"
        ))
    })?))
}

impl KeyProvider for AwsKms {
    fn kind(&self) -> &'static str {
        "aws_kms"
    }
    fn key_id(&self) -> &str {
        &self.key_id
    }
    fn generate(&self, kek: &str) -> Result<DataKey> {
        let v = self.call(
            "GenerateDataKey",
            &json!({"KeyId": kek, "KeySpec": "AES_256"}),
        )?;
        let plaintext = b64_field(&v, "Plaintext", "GenerateDataKey")?;
        if plaintext.len() != KEY_LEN {
            return Err(Error::data(
                "AWS KMS GenerateDataKey returned a key that is not 256 bits",
            ));
        }
        let blob = v
            .get("CiphertextBlob")
            .and_then(|p| p.as_str())
            .ok_or_else(|| {
                Error::data("AWS KMS GenerateDataKey answered without `CiphertextBlob`")
            })?;
        Ok(DataKey {
            plaintext,
            wrapped: WrappedKey {
                key_id: kek.to_string(),
                wrapped_key: blob.to_string(),
            },
        })
    }
    fn unwrap(&self, key: &WrappedKey) -> Result<Zeroizing<Vec<u8>>> {
        let v = self.call(
            "Decrypt",
            &json!({"KeyId": key.key_id, "CiphertextBlob": key.wrapped_key}),
        )?;
        let p = b64_field(&v, "Plaintext", "Decrypt")?;
        if p.len() != KEY_LEN {
            return Err(Error::data(
                "AWS KMS Decrypt returned a key that is not 256 bits",
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dativo_core::ErrorKind;

    #[test]
    fn throttling_is_recognized_by_its_exact_code() {
        let kind = |status, code| classify(status, code, "m".into()).kind();
        assert_eq!(kind(400, "ThrottlingException"), ErrorKind::Transient);
        assert_eq!(kind(400, "RequestLimitExceeded"), ErrorKind::Transient);
        assert_eq!(kind(400, "SlowDown"), ErrorKind::Transient);
        // A code that merely contains the word is not throttling.
        assert_eq!(kind(400, "NotThrottlingReallyException"), ErrorKind::Io);
        assert_eq!(kind(429, ""), ErrorKind::Transient);
        assert_eq!(kind(503, "KMSInternalException"), ErrorKind::Transient);
        assert_eq!(kind(400, "AccessDeniedException"), ErrorKind::Auth);
        assert_eq!(kind(403, "Whatever"), ErrorKind::Auth);
        assert_eq!(kind(400, "NotFoundException"), ErrorKind::Config);
    }
}
