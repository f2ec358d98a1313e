//! The catalog's atomic swap of a table's metadata: the commit point of a snapshot.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use iceberg::table::Table;
use iceberg::{MetadataLocation, TableRequirement, TableUpdate};
use sqlx::Connection;

use dativo_core::secrets::{self, Secret};
use dativo_core::{Error, ErrorKind, Result};

use crate::iceberg::writer::{cause_kind, ice};

/// Makes `updates` the table's new state if `requirements` still hold for the state the
/// catalog has, atomically.
///
/// Outcomes: `Ok(table)` — committed, the table as committed; an error of kind
/// [`dativo_core::ErrorKind::Conflict`] — the table moved, nothing changed; any other error —
/// the outcome may be unknown (e.g. the connection dropped after the update was sent): the
/// caller reloads the table and looks for its snapshot.
#[async_trait]
pub trait Swap: Send + Sync {
    /// Commit `updates` on top of `base` (the state they were built on).
    async fn swap(
        &self,
        base: &Table,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<Table>;
}

/// The SQL catalog's swap (iceberg-rust's SqlCatalog, pyiceberg's SqlCatalog and Java's
/// JdbcCatalog share it): write the new `metadata.json`, then compare-and-swap the table's
/// row in `iceberg_tables` from the base's metadata location to the new one.
pub struct SqlSwap {
    /// `sqlite://…` or `postgres://…` (it may carry a password).
    uri: Secret,
    /// The catalog name, as stored in every row.
    catalog: String,
}

impl SqlSwap {
    /// A swap on the SQL catalog database at `uri` (the one the catalog itself uses), for
    /// the catalog `name`.
    pub fn new(uri: &str, name: &str) -> SqlSwap {
        SqlSwap {
            uri: Secret::new(uri),
            catalog: name.to_string(),
        }
    }

    /// The compare-and-swap; returns the rows it changed (0: the row moved on).
    async fn cas(&self, base: &Table, from: &str, to: &str) -> Result<u64> {
        let ident = base.identifier();
        let ns = ident.namespace().join(".");
        let uri = self.uri.expose();
        let failed = |e: sqlx::Error| {
            let what = format!(
                "swapping the metadata location of {ident} in the catalog at {}",
                secrets::scrub(uri)
            );
            Error::new(
                cause_kind(&e).unwrap_or(ErrorKind::Io),
                format!("{what}: {e}"),
            )
            .with_source(e)
        };
        // One statement in autocommit mode: it commits by itself, and a failure to commit
        // is its own error (never ignored).
        let rows = if uri.starts_with("sqlite:") {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(uri)
                .map_err(failed)?
                .busy_timeout(Duration::from_secs(30));
            let mut conn = sqlx::SqliteConnection::connect_with(&opts)
                .await
                .map_err(failed)?;
            let sql = cas_statement(|_| "?".into());
            let r = sqlx::query(&sql)
                .bind(to)
                .bind(from)
                .bind(&self.catalog)
                .bind(&ns)
                .bind(ident.name())
                .bind(from)
                .execute(&mut conn)
                .await
                .map_err(failed)?;
            let _ = conn.close().await;
            r.rows_affected()
        } else {
            let mut conn = sqlx::PgConnection::connect(uri).await.map_err(failed)?;
            let sql = cas_statement(|n| format!("${n}"));
            let r = sqlx::query(&sql)
                .bind(to)
                .bind(from)
                .bind(&self.catalog)
                .bind(&ns)
                .bind(ident.name())
                .bind(from)
                .execute(&mut conn)
                .await
                .map_err(failed)?;
            let _ = conn.close().await;
            r.rows_affected()
        };
        Ok(rows)
    }
}

#[async_trait]
impl Swap for SqlSwap {
    async fn swap(
        &self,
        base: &Table,
        requirements: Vec<TableRequirement>,
        updates: Vec<TableUpdate>,
    ) -> Result<Table> {
        for r in &requirements {
            r.check(Some(base.metadata()))
                .map_err(|e| ice(e, "checking the commit's requirements"))?;
        }
        let from = base
            .metadata_location_result()
            .map_err(|e| ice(e, "the table's metadata location"))?
            .to_string();
        let mut builder = base.metadata().clone().into_builder(Some(from.clone()));
        for u in updates {
            builder = u
                .apply(builder)
                .map_err(|e| ice(e, "applying the commit to the table metadata"))?;
        }
        let md = builder
            .build()
            .map_err(|e| ice(e, "building the new table metadata"))?
            .metadata;
        let loc = MetadataLocation::from_str(&from)
            .map_err(|e| ice(e, "the table's metadata location"))?
            .with_next_version()
            .with_new_metadata(&md);
        md.write_to(base.file_io(), &loc)
            .await
            .map_err(|e| ice(e, "writing the new table metadata"))?;
        let to = loc.to_string();
        match self.cas(base, &from, &to).await? {
            0 => {
                // Lost the race for certain: the new metadata file is nobody's.
                if let Err(e) = base.file_io().delete(&to).await {
                    tracing::warn!(file = %to, error = %e, "could not delete unused table metadata");
                }
                Err(Error::conflict(format!(
                    "another writer committed to {} first (its metadata is no longer {from})",
                    base.identifier()
                )))
            }
            _ => {
                let runtime =
                    iceberg::Runtime::try_current().map_err(|e| ice(e, "the async runtime"))?;
                Table::builder()
                    .identifier(base.identifier().clone())
                    .metadata_location(to)
                    .metadata(Arc::new(md))
                    .file_io(base.file_io().clone())
                    .runtime(runtime)
                    .build()
                    .map_err(|e| ice(e, "the committed table"))
            }
        }
    }
}

/// The REST catalog has no swap in dativo yet: row-level operations are refused there.
pub struct RestSwap;

#[async_trait]
impl Swap for RestSwap {
    async fn swap(
        &self,
        base: &Table,
        _requirements: Vec<TableRequirement>,
        _updates: Vec<TableUpdate>,
    ) -> Result<Table> {
        Err(Error::config(format!(
            "{}: overwrite and delete commits are not supported with the REST catalog yet \
             (only appends); use the SQL catalog",
            base.identifier()
        ))
        .with_key_path("catalog.type"))
    }
}

/// The compare-and-swap of the catalog row (pyiceberg's and JdbcCatalog's statement), with the
/// database's placeholders: `placeholder(n)` for the n-th (1-based) bound value.
fn cas_statement(placeholder: impl Fn(usize) -> String) -> String {
    let p: Vec<String> = (1..=6).map(placeholder).collect();
    format!(
        "UPDATE iceberg_tables SET metadata_location = {}, previous_metadata_location = {} \
         WHERE catalog_name = {} AND table_namespace = {} AND table_name = {} \
         AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = {}",
        p[0], p[1], p[2], p[3], p[4], p[5]
    )
}
