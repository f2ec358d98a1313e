//! Whole-file streaming encryption: AES-256-GCM in authenticated segments.
//!
//! ```text
//! "DATIVOE1" ‖ header length (u32 LE) ‖ header (JSON: key id, wrapped data key, segment size,
//! nonce prefix) ‖ segment 0 ‖ segment 1 ‖ … ‖ segment n-1 (the last, possibly short or empty)
//! segment i = AES-256-GCM(data key, nonce = prefix(7) ‖ i (u32 BE) ‖ last (u8),
//!                         aad = SHA-256(magic ‖ length ‖ header) ‖ i ‖ last ‖ file path,
//!                         up to segment_size plaintext bytes) ‖ tag(16)
//! ```
//!
//! The nonce and the associated data carry the segment's index and a last-segment flag (the
//! STREAM construction): a reordered, dropped or appended segment and a truncated file fail
//! authentication. The file's path relative to the dataset root and a digest of the header are
//! in the associated data too: a file moved or swapped with another, or a header changed, fails.
//! Plaintext is only ever held one segment at a time, in memory.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use dativo_core::{Error, Result};

use super::keys::{aead_key, random_bytes, DataKey, KeyProvider};
use super::{Sha256, WrappedKey};
use dativo_storage::{ReadSeek, Sink};

/// The algorithm as the audit trail names it.
pub const ALGORITHM: &str = "AES-256-GCM, segmented stream (dativo.stream/1)";
/// The first bytes of every encrypted file.
pub const MAGIC: &[u8; 8] = b"DATIVOE1";
/// File name suffix of stream-encrypted files (after `.parquet`).
pub const SUFFIX: &str = ".enc";
const TAG: usize = 16;
const PREFIX_LEN: usize = 7;

/// The plaintext header of an encrypted file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// Always `dativo.stream/1`.
    pub format: String,
    /// `AES-256-GCM`.
    pub algorithm: String,
    /// Plaintext bytes per segment.
    pub segment_size: u64,
    /// The provider kind that wrapped the data key.
    pub key_provider: String,
    /// The data key, wrapped.
    pub key: WrappedKey,
    /// Base64 of the 7-byte nonce prefix.
    pub nonce_prefix: String,
}

fn nonce(prefix: &[u8], index: u32, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..PREFIX_LEN].copy_from_slice(prefix);
    n[PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
    n[11] = last as u8;
    Nonce::assume_unique_for_key(n)
}

fn aad(header_digest: &[u8], index: u32, last: bool, path: &str) -> Vec<u8> {
    let mut a = Vec::with_capacity(header_digest.len() + 5 + path.len());
    a.extend_from_slice(header_digest);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(last as u8);
    a.extend_from_slice(path.as_bytes());
    a
}

fn header_bytes(h: &Header) -> Result<(Vec<u8>, Vec<u8>)> {
    let json = serde_json::to_vec(h)?;
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    let digest = ring::digest::digest(&ring::digest::SHA256, &out)
        .as_ref()
        .to_vec();
    Ok((out, digest))
}

/// Encrypts everything written to it into an inner [`Sink`], one segment at a time.
pub struct EncryptingSink {
    inner: Box<dyn Sink>,
    key: LessSafeKey,
    prefix: Vec<u8>,
    digest: Vec<u8>,
    path: String,
    segment: usize,
    buf: Zeroizing<Vec<u8>>,
    index: u32,
    sha: Sha256,
    name: String,
}

impl EncryptingSink {
    /// Start an encrypted file at `path` (relative to the dataset root; bound into every
    /// segment) with a fresh data key; the header goes out at once.
    pub fn new(
        mut inner: Box<dyn Sink>,
        data_key: &DataKey,
        provider_kind: &str,
        segment_size: usize,
        path: &str,
        name: String,
    ) -> Result<Self> {
        let prefix = random_bytes(PREFIX_LEN)?.to_vec();
        let header = Header {
            format: "dativo.stream/1".into(),
            algorithm: "AES-256-GCM".into(),
            segment_size: segment_size as u64,
            key_provider: provider_kind.into(),
            key: data_key.wrapped.clone(),
            nonce_prefix: B64.encode(&prefix),
        };
        let (head, digest) = header_bytes(&header)?;
        inner.write_all(&head)?;
        let mut sha = Sha256::new();
        sha.update(&head);
        Ok(EncryptingSink {
            inner,
            key: aead_key(&data_key.plaintext)?,
            prefix,
            digest,
            path: path.to_string(),
            segment: segment_size,
            buf: Zeroizing::new(Vec::with_capacity(segment_size + TAG)),
            index: 0,
            sha,
            name,
        })
    }

    fn seal(&mut self, last: bool) -> std::io::Result<()> {
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(&self.prefix, self.index, last),
                Aad::from(aad(&self.digest, self.index, last, &self.path)),
                &mut self.buf,
            )
            .map_err(|_| std::io::Error::other("encrypting a segment failed"))?;
        self.buf.extend_from_slice(tag.as_ref());
        self.sha.update(&self.buf);
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.index = self
            .index
            .checked_add(1)
            .ok_or_else(|| std::io::Error::other("file too large for its segment size"))?;
        Ok(())
    }
}

impl Write for EncryptingSink {
    fn write(&mut self, mut b: &[u8]) -> std::io::Result<usize> {
        let n = b.len();
        while !b.is_empty() {
            if self.buf.len() == self.segment {
                // More data follows: this full segment is not the last.
                self.seal(false)?;
            }
            let take = (self.segment - self.buf.len()).min(b.len());
            self.buf.extend_from_slice(&b[..take]);
            b = &b[take..];
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Sink for EncryptingSink {
    fn finish(self: Box<Self>) -> Result<u64> {
        self.finish_digest().map(|(n, _)| n)
    }
    fn finish_digest(mut self: Box<Self>) -> Result<(u64, Option<String>)> {
        self.seal(true)
            .map_err(|e| Error::io(format!("writing {}: {e}", self.name)))?;
        let sha = std::mem::replace(&mut self.sha, Sha256::new()).hex();
        let n = self.inner.finish()?;
        Ok((n, Some(sha)))
    }
}

/// Random access to stored bytes.
pub trait ByteSource: Send + Sync {
    /// Total length.
    fn size(&self) -> u64;
    /// Fill `buf` from `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()>;
}

/// A [`ReadSeek`] (a local file, an object) as a [`ByteSource`].
pub struct SeekSource {
    inner: Mutex<Box<dyn ReadSeek>>,
    len: u64,
    name: String,
}

impl SeekSource {
    /// Wrap `r` of `len` bytes; `name` is used in messages.
    pub fn new(r: Box<dyn ReadSeek>, len: u64, name: String) -> Self {
        SeekSource {
            inner: Mutex::new(r),
            len,
            name,
        }
    }
}

impl ByteSource for SeekSource {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut r = self.inner.lock().expect("not poisoned");
        r.seek(std::io::SeekFrom::Start(offset))
            .and_then(|_| r.read_exact(buf))
            .map_err(|e| Error::io(format!("reading {}: {e}", self.name)))
    }
}

/// A decrypting view of a stream-encrypted file: random access to the plaintext, each segment
/// authenticated as it is read.
pub struct StreamFile {
    src: Arc<dyn ByteSource>,
    key: LessSafeKey,
    prefix: Vec<u8>,
    digest: Vec<u8>,
    path: String,
    body: u64,
    segment: u64,
    segments: u64,
    plain_len: u64,
    cache: Mutex<Option<(u64, Zeroizing<Vec<u8>>)>>,
    /// The header, as stored.
    pub header: Header,
}

/// Read the header of a stream-encrypted file (no key needed).
pub fn read_header(src: &dyn ByteSource, name: &str) -> Result<(Header, u64, Vec<u8>)> {
    let not_ours = || {
        Error::data(format!(
            "{name} is not a dativo-encrypted file (no DATIVOE1 header), or its header is damaged"
        ))
    };
    if src.size() < 12 {
        return Err(not_ours());
    }
    let mut head = [0u8; 12];
    src.read_at(0, &mut head)?;
    if &head[..8] != MAGIC {
        return Err(not_ours());
    }
    let len = u32::from_le_bytes(head[8..12].try_into().expect("4")) as u64;
    if len > 1 << 20 || 12 + len > src.size() {
        return Err(not_ours());
    }
    let mut json = vec![0u8; len as usize];
    src.read_at(12, &mut json)?;
    let header: Header = serde_json::from_slice(&json).map_err(|_| not_ours())?;
    let mut all = head.to_vec();
    all.extend_from_slice(&json);
    let digest = ring::digest::digest(&ring::digest::SHA256, &all)
        .as_ref()
        .to_vec();
    Ok((header, 12 + len, digest))
}

impl StreamFile {
    /// Open `src`, stored at `path` (relative to the dataset root), unwrapping its data key
    /// with `provider`.
    pub fn open(
        src: Arc<dyn ByteSource>,
        path: &str,
        provider: &dyn KeyProvider,
        name: &str,
    ) -> Result<StreamFile> {
        let (header, body, digest) = read_header(src.as_ref(), name)?;
        if header.format != "dativo.stream/1" || header.algorithm != "AES-256-GCM" {
            return Err(Error::data(format!(
                "{name}: unsupported encryption format {} / {}",
                header.format, header.algorithm
            )));
        }
        let prefix = B64
            .decode(&header.nonce_prefix)
            .ok()
            .filter(|p| p.len() == PREFIX_LEN)
            .ok_or_else(|| Error::data(format!("{name}: damaged header (nonce prefix)")))?;
        let segment = header.segment_size;
        if !(super::SEGMENT_RANGE.0..=super::SEGMENT_RANGE.1).contains(&segment) {
            return Err(Error::data(format!(
                "{name}: damaged header (segment size {segment})"
            )));
        }
        let dek = provider
            .unwrap(&header.key)
            .map_err(|e| e.context(format!("unwrapping the data key of {name}")))?;
        let stored = src.size() - body;
        let full = segment + TAG as u64;
        let segments = stored.div_ceil(full).max(1);
        let last_len = stored - (segments - 1) * full;
        if last_len < TAG as u64 {
            return Err(Error::data(format!(
                "{name} is truncated or damaged: its last segment is {last_len} bytes, shorter than an authentication tag"
            )));
        }
        let plain_len = (segments - 1) * segment + last_len - TAG as u64;
        Ok(StreamFile {
            src,
            key: aead_key(&dek)?,
            prefix,
            digest,
            path: path.to_string(),
            body,
            segment,
            segments,
            plain_len,
            cache: Mutex::new(None),
            header,
        })
    }

    /// Plaintext length.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    fn tamper(&self, i: u64) -> Error {
        Error::data(format!(
            "{} failed authentication at segment {} of {}: the file was modified, truncated, reordered, or is not the file stored as `{}`",
            self.path,
            i + 1,
            self.segments,
            self.path
        ))
    }

    /// Decrypt segment `i` (reads it from the source).
    fn decrypt_segment(&self, i: u64, raw_out: Option<&mut Vec<u8>>) -> Result<Zeroizing<Vec<u8>>> {
        let full = self.segment + TAG as u64;
        let start = self.body + i * full;
        let len = full.min(self.src.size() - start) as usize;
        let mut buf = Zeroizing::new(vec![0u8; len]);
        self.src.read_at(start, &mut buf)?;
        if let Some(raw) = raw_out {
            raw.clear();
            raw.extend_from_slice(&buf);
        }
        let last = i + 1 == self.segments;
        let idx: u32 = i.try_into().map_err(|_| self.tamper(i))?;
        let n = self
            .key
            .open_in_place(
                nonce(&self.prefix, idx, last),
                Aad::from(aad(&self.digest, idx, last, &self.path)),
                &mut buf,
            )
            .map_err(|_| self.tamper(i))?
            .len();
        buf.truncate(n);
        Ok(buf)
    }

    /// Authenticate every segment, in order; returns the SHA-256 of the stored bytes.
    pub fn verify_all(&self) -> Result<String> {
        let mut sha = Sha256::new();
        let mut head = vec![0u8; self.body as usize];
        self.src.read_at(0, &mut head)?;
        sha.update(&head);
        let mut raw = Vec::new();
        for i in 0..self.segments {
            self.decrypt_segment(i, Some(&mut raw))?;
            sha.update(&raw);
        }
        Ok(sha.hex())
    }
}

impl ByteSource for StreamFile {
    fn size(&self) -> u64 {
        self.plain_len
    }
    fn read_at(&self, mut offset: u64, mut out: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(out.len() as u64)
            .is_none_or(|end| end > self.plain_len)
        {
            return Err(Error::data(format!(
                "{}: read past the end of the plaintext",
                self.path
            )));
        }
        let mut cache = self.cache.lock().expect("not poisoned");
        while !out.is_empty() {
            let i = offset / self.segment;
            if cache.as_ref().map(|(c, _)| *c) != Some(i) {
                *cache = Some((i, self.decrypt_segment(i, None)?));
            }
            let (_, seg) = cache.as_ref().expect("filled");
            let within = (offset - i * self.segment) as usize;
            let n = (seg.len() - within).min(out.len());
            out[..n].copy_from_slice(&seg[within..within + n]);
            out = &mut out[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// A [`ByteSource`] as Parquet's [`ChunkReader`](parquet::file::reader::ChunkReader).
#[derive(Clone)]
pub struct Chunks(pub Arc<dyn ByteSource>);

/// A reader over [`Chunks`] from an offset.
pub struct ChunkRead {
    src: Arc<dyn ByteSource>,
    pos: u64,
}

impl Read for ChunkRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.src.size().saturating_sub(self.pos);
        let n = (buf.len() as u64).min(left) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.src
            .read_at(self.pos, &mut buf[..n])
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl parquet::file::reader::Length for Chunks {
    fn len(&self) -> u64 {
        self.0.size()
    }
}

impl parquet::file::reader::ChunkReader for Chunks {
    type T = ChunkRead;
    fn get_read(&self, start: u64) -> parquet::errors::Result<ChunkRead> {
        Ok(ChunkRead {
            src: self.0.clone(),
            pos: start,
        })
    }
    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        let mut b = vec![0u8; length];
        self.0
            .read_at(start, &mut b)
            .map_err(|e| parquet::errors::ParquetError::General(e.to_string()))?;
        Ok(b.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeyProviderConfig;

    struct Mem(Vec<u8>);
    impl ByteSource for Mem {
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, o: u64, b: &mut [u8]) -> Result<()> {
            let o = o as usize;
            b.copy_from_slice(&self.0[o..o + b.len()]);
            Ok(())
        }
    }

    struct VecSink(Arc<Mutex<Vec<u8>>>);
    impl Write for VecSink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Sink for VecSink {
        fn finish(self: Box<Self>) -> Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
    }

    fn provider() -> Box<dyn KeyProvider> {
        std::env::set_var("DATIVO_TEST_STREAM_KEK", "cd".repeat(32));
        KeyProviderConfig::Env {
            var: "DATIVO_TEST_STREAM_KEK".into(),
            key_id: None,
        }
        .open()
        .unwrap()
    }

    fn encrypt(p: &dyn KeyProvider, data: &[u8], path: &str) -> Vec<u8> {
        let out = Arc::new(Mutex::new(Vec::new()));
        let dk = p.generate(p.key_id()).unwrap();
        let mut s = Box::new(
            EncryptingSink::new(
                Box::new(VecSink(out.clone())),
                &dk,
                p.kind(),
                4096,
                path,
                "t".into(),
            )
            .unwrap(),
        );
        for chunk in data.chunks(1000) {
            s.write_all(chunk).unwrap();
        }
        s.finish_digest().unwrap();
        let v = out.lock().unwrap().clone();
        v
    }

    fn open(p: &dyn KeyProvider, bytes: Vec<u8>, path: &str) -> Result<StreamFile> {
        StreamFile::open(Arc::new(Mem(bytes)), path, p, "t")
    }

    #[test]
    fn a_hostile_header_is_refused_before_any_key_is_unwrapped() {
        let p = provider();
        let enc = encrypt(p.as_ref(), b"hello", "a");
        let (mut h, body, _) = read_header(&Mem(enc.clone()), "a").unwrap();
        for size in [0, u64::MAX, 1 << 40] {
            h.segment_size = size;
            let json = serde_json::to_vec(&h).unwrap();
            let mut forged = MAGIC.to_vec();
            forged.extend_from_slice(&(json.len() as u32).to_le_bytes());
            forged.extend_from_slice(&json);
            forged.extend_from_slice(&enc[body as usize..]);
            let e = open(p.as_ref(), forged, "a").err().unwrap().to_string();
            assert!(e.contains("segment size"), "{e}");
        }
        assert!(open(p.as_ref(), b"PAR1 not ours".to_vec(), "a").is_err());
    }

    #[test]
    fn round_trips_and_detects_tampering() {
        let p = provider();
        for len in [0usize, 1, 4095, 4096, 4097, 3 * 4096, 20_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let enc = encrypt(p.as_ref(), &data, "a.parquet.enc");
            let f = open(p.as_ref(), enc.clone(), "a.parquet.enc").unwrap();
            f.verify_all().unwrap();
            let mut back = vec![0u8; f.plain_len() as usize];
            f.read_at(0, &mut back).unwrap();
            assert_eq!(back, data, "len {len}");
            // A flipped header byte (the key id, the nonce prefix, …).
            let mut bad = enc.clone();
            bad[20] ^= 1;
            assert!(open(p.as_ref(), bad, "a.parquet.enc")
                .and_then(|f| f.verify_all())
                .is_err());
            // Bytes appended, and truncated in the middle of the last segment.
            let mut longer = enc.clone();
            longer.extend_from_slice(&[0u8; 40]);
            assert!(open(p.as_ref(), longer, "a.parquet.enc")
                .and_then(|f| f.verify_all())
                .is_err());
            if len > 3 {
                let cut = enc[..enc.len() - 3].to_vec();
                assert!(open(p.as_ref(), cut, "a.parquet.enc")
                    .and_then(|f| f.verify_all())
                    .is_err());
            }
            // Swapped: the same bytes stored under another name.
            let f = open(p.as_ref(), enc.clone(), "b.parquet.enc").unwrap();
            assert!(f.verify_all().is_err());
            // One flipped byte in the last segment.
            let mut bad = enc.clone();
            let n = bad.len();
            bad[n - 1] ^= 1;
            assert!(open(p.as_ref(), bad, "a.parquet.enc")
                .and_then(|f| f.verify_all())
                .is_err());
            if len > 4096 {
                let n = len.div_ceil(4096);
                let last_len = len - (n - 1) * 4096 + 16;
                // Truncated at a segment boundary: the new last segment was not sealed as last.
                let cut = enc.len() - last_len;
                let r = open(p.as_ref(), enc[..cut].to_vec(), "a.parquet.enc")
                    .and_then(|f| f.verify_all());
                assert!(r.is_err(), "len {len}: truncation not detected");
                // Two segments swapped.
                if n >= 3 {
                    let body = enc.len() - (n - 1) * 4112 - last_len;
                    let mut swapped = enc.clone();
                    swapped[body..body + 4112].copy_from_slice(&enc[body + 4112..body + 2 * 4112]);
                    swapped[body + 4112..body + 2 * 4112].copy_from_slice(&enc[body..body + 4112]);
                    let r = open(p.as_ref(), swapped, "a.parquet.enc").and_then(|f| f.verify_all());
                    assert!(r.is_err(), "len {len}: reordering not detected");
                }
            }
        }
    }
}
