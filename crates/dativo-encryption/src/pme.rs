//! Parquet Modular Encryption: every column with its own data key, the footer encrypted with
//! another, AES_GCM_V1, and the file's path as the AAD prefix (stored in the file, so readers
//! that do not know the path can still read it; `dativo decrypt`/`verify` supply the expected
//! path, so a swapped file fails).
//!
//! Key metadata is parquet-cpp's key-tools material (`PKMT1`, internal storage, single
//! wrapping): `masterKeyID` is the key-encryption key id and `wrappedDEK` the provider's
//! wrapped data key. `pyarrow.parquet.encryption.CryptoFactory` reads such files with a
//! `KmsClient` whose `unwrap_key(wrapped, master_key_id)` does what the provider does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use arrow::datatypes::Schema;
use parquet::arrow::ArrowSchemaConverter;
use parquet::encryption::decrypt::{FileDecryptionProperties, KeyRetriever};
use parquet::encryption::encrypt::FileEncryptionProperties;
use serde_json::{json, Value};

use dativo_core::{Error, Result};

use super::keys::KeyProvider;
use super::{Encryptor, FileKeys, WrappedKey};

/// The algorithm as the audit trail names it.
pub const ALGORITHM: &str =
    "Parquet Modular Encryption AES_GCM_V1, per-column AES-256 keys, encrypted footer";

/// parquet-cpp key material for a wrapped key.
fn key_material(key: &WrappedKey, footer: bool) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    m.insert("keyMaterialType".into(), json!("PKMT1"));
    m.insert("internalStorage".into(), json!(true));
    m.insert("isFooterKey".into(), json!(footer));
    if footer {
        m.insert("kmsInstanceID".into(), json!("DEFAULT"));
        m.insert("kmsInstanceURL".into(), json!("DEFAULT"));
    }
    m.insert("masterKeyID".into(), json!(key.key_id));
    m.insert("wrappedDEK".into(), json!(key.wrapped_key));
    m.insert("doubleWrapping".into(), json!(false));
    serde_json::to_vec(&Value::Object(m)).expect("a JSON object")
}

/// Leaf column paths of `schema` as Parquet names them (`a`, `s.x`, `l.list.element`), each
/// with its top-level column.
pub fn leaf_columns(schema: &Schema) -> Result<Vec<(String, String)>> {
    let desc = ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|e| Error::schema(e.to_string()))?;
    Ok(desc
        .columns()
        .iter()
        .map(|c| {
            let parts = c.path().parts();
            (c.path().string(), parts[0].clone())
        })
        .collect())
}

/// Fresh keys for one file at `path` with `schema`: the properties for the Parquet writer and
/// the wrapped keys for the audit trail.
pub fn file_properties(
    enc: &Encryptor,
    schema: &Schema,
    path: &str,
) -> Result<(Arc<FileEncryptionProperties>, FileKeys)> {
    let footer = enc.provider.generate(enc.provider.key_id())?;
    let mut b = FileEncryptionProperties::builder(footer.plaintext.to_vec())
        .with_footer_key_metadata(key_material(&footer.wrapped, true))
        .with_aad_prefix(path.as_bytes().to_vec())
        .with_aad_prefix_storage(true);
    let mut column_keys = BTreeMap::new();
    for (leaf, top) in leaf_columns(schema)? {
        let dk = enc.provider.generate(&enc.kek_for(&top))?;
        b = b.with_column_key_and_metadata(
            &leaf,
            dk.plaintext.to_vec(),
            key_material(&dk.wrapped, false),
        );
        column_keys.insert(leaf, dk.wrapped);
    }
    let props = b
        .build()
        .map_err(|e| Error::internal(format!("Parquet encryption properties: {e}")))?;
    Ok((
        props,
        FileKeys {
            key: footer.wrapped,
            column_keys,
        },
    ))
}

/// Unwraps the keys named in a file's key metadata with a provider; remembers the provider's
/// own error (Parquet's error type would flatten it).
pub struct Retriever {
    provider: Arc<dyn KeyProvider>,
    /// The last provider error.
    pub error: Mutex<Option<Error>>,
}

impl Retriever {
    /// A retriever backed by `provider`.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Arc<Self> {
        Arc::new(Retriever {
            provider,
            error: Mutex::new(None),
        })
    }

    /// Decryption properties for a file stored at `path`: its AAD prefix must match.
    pub fn properties(self: &Arc<Self>, path: &str) -> Result<Arc<FileDecryptionProperties>> {
        FileDecryptionProperties::with_key_retriever(self.clone())
            .with_aad_prefix(path.as_bytes().to_vec())
            .build()
            .map_err(|e| Error::internal(e.to_string()))
    }

    /// The provider's error, if the last failure was one.
    pub fn take_error(&self) -> Option<Error> {
        self.error.lock().expect("not poisoned").take()
    }
}

/// The wrapped key named by parquet-cpp key material.
pub fn parse_key_material(meta: &[u8]) -> Option<WrappedKey> {
    let v: Value = serde_json::from_slice(meta).ok()?;
    Some(WrappedKey {
        key_id: v.get("masterKeyID")?.as_str()?.to_string(),
        wrapped_key: v.get("wrappedDEK")?.as_str()?.to_string(),
    })
}

impl KeyRetriever for Retriever {
    fn retrieve_key(&self, key_metadata: &[u8]) -> parquet::errors::Result<Vec<u8>> {
        let key = parse_key_material(key_metadata).ok_or_else(|| {
            parquet::errors::ParquetError::General(
                "the file's key metadata is not parquet key-tools material (PKMT1)".into(),
            )
        })?;
        match self.provider.unwrap(&key) {
            Ok(k) => Ok(k.to_vec()),
            Err(e) => {
                let msg = e.to_string();
                *self.error.lock().expect("not poisoned") = Some(e);
                Err(parquet::errors::ParquetError::General(msg))
            }
        }
    }
}
