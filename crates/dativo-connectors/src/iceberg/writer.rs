//! The `iceberg` writer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::datatypes::{DataType, Schema as ArrowSchema, SchemaRef as ArrowSchemaRef};
use iceberg::arrow::{
    arrow_schema_to_schema_auto_assign_ids, arrow_type_to_type, schema_to_arrow_schema,
    RecordBatchPartitionSplitter,
};
use iceberg::io::{
    StorageFactory, S3_ACCESS_KEY_ID, S3_ENDPOINT, S3_PATH_STYLE_ACCESS, S3_REGION,
    S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN,
};
use iceberg::spec::{DataFile, DataFileFormat, PartitionSpec, PrimitiveType, Transform, Type};
use iceberg::table::Table;
use iceberg::transaction::{AddColumn, ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::{DataFileWriter, DataFileWriterBuilder};
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::partitioning::fanout_writer::FanoutWriter;
use iceberg::writer::partitioning::PartitioningWriter;
use iceberg::writer::{IcebergWriter as _, IcebergWriterBuilder};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use iceberg_storage_opendal::OpenDalStorageFactory;

use super::local_io::LocalStorageFactory;
use super::object_io::ObjectStorageFactory;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::{
    secrets, Commit, CommitReport, CommittedState, Error, ErrorKind, OpenWriter, Result,
    WriterContext,
};

use super::commit::{swap_for, Change, Committer, LiveFiles, SnapshotProducer};
use super::config::{CatalogKind, CatalogUri, IcebergWriterConfig, OverwriteScope, WriteMode};
use super::counting::{job_latest, CountingCatalog, JobGuard};
use super::encrypted::{audit_files, FileBuilder, ENCRYPTION_KEY};
use super::merge::{delete_paths, Merge, MergeStats};
use super::modes::{self, DeleteWhen, OP_COLUMN};
use dativo_core::rt::runtime;
use dativo_encryption::{EncFormat, Encryptor, FileKeys};

/// Fail fast when a SQL catalog's server cannot be reached: its connection pool retries a
/// refused connection for 30 s before it reports anything.
async fn probe_catalog_server(uri: &str) -> Result<()> {
    let Ok(parsed) = url::Url::parse(uri) else {
        return Ok(()); // the catalog reports a malformed URI itself
    };
    let Some(host) = parsed.host_str().filter(|h| !h.is_empty()) else {
        return Ok(());
    };
    let host = host.trim_matches(['[', ']']);
    let port = parsed
        .port()
        .unwrap_or(if parsed.scheme().starts_with("mysql") {
            3306
        } else {
            5432
        });
    let connect = tokio::net::TcpStream::connect((host, port));
    match tokio::time::timeout(std::time::Duration::from_secs(10), connect).await {
        Ok(Ok(_)) => Ok(()),
        // Scrubbed whole: secrets registered from the job, and any URL password.
        Ok(Err(e)) => Err(Error::connect(secrets::scrub(&format!(
            "cannot reach the Iceberg catalog's database at {host}:{port} ({uri}): {e}"
        )))
        .with_source(e)),
        Err(_) => Err(Error::connect(secrets::scrub(&format!(
            "cannot reach the Iceberg catalog's database at {host}:{port} ({uri}): no answer \
             in 10 s"
        )))),
    }
}

/// Snapshot summary keys written with every commit.
pub const STATE_KEY: &str = "dativo.state";
/// The job that made a commit.
pub const JOB_KEY: &str = "dativo.job";
/// The run that made a commit.
pub const RUN_KEY: &str = "dativo.run-id";

type Builder =
    DataFileWriterBuilder<FileBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>;

// One per writer: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Active {
    Plain(Box<DataFileWriter<FileBuilder, DefaultLocationGenerator, DefaultFileNameGenerator>>),
    Fanout(FanoutWriter<Builder>),
}

/// Writes into an Iceberg table; each commit is one atomic snapshot carrying the state.
/// Opened ready by [`IcebergWriter::open`]; dropping it deletes data files written since the
/// last commit (as `abort` does).
pub struct IcebergWriter {
    cfg: IcebergWriterConfig,
    catalog: Arc<CountingCatalog>,
    table: Table,
    /// This job's latest snapshot in the table as of the run's start or its last commit: a
    /// commit is only made on top of it (see [`super::counting`]).
    job_snapshot: Option<i64>,
    ident: TableIdent,
    /// The table's schema in Arrow form: batches are conformed to it.
    target: ArrowSchemaRef,
    job: String,
    /// The data file writer since the last commit, once a batch arrived.
    active: Option<Active>,
    rows: u64,
    /// Client-side encryption (Parquet Modular Encryption), when configured.
    enc: Option<Arc<Encryptor>>,
    /// Keys issued to data files not committed yet.
    issued: Arc<std::sync::Mutex<std::collections::BTreeMap<String, FileKeys>>>,
    /// The mode of this run (`mode`, or what the reader's delivery implies).
    mode: WriteMode,
    /// Splits batches by the table's partition spec (`None`: unpartitioned).
    splitter: Option<RecordBatchPartitionSplitter>,
    /// `mode: merge`: the keys of the commit in progress.
    merge: Option<Merge>,
    /// Columns written without a Parquet dictionary, chosen on the first batch
    /// ([`crate::dictionary`]); `None` until then.
    plain_columns: Option<Vec<String>>,
    /// The live files the last overwrite or merge commit was planned on: the next plan reads
    /// only the manifests added since.
    live: Option<LiveFiles>,
}

/// Open the catalog of `cfg` and load its (existing) table.
pub(crate) async fn load_existing(cfg: &IcebergWriterConfig) -> Result<Table> {
    let catalog = open_catalog(cfg).await?;
    let (_, ident) = table_ident(&cfg.table)?;
    catalog
        .load_table(&ident)
        .await
        .map_err(|e| ice(e, &format!("loading the table {}", cfg.table)))
}

/// `namespace.table` → (namespace, table identifier).
pub(crate) fn table_ident(table: &str) -> Result<(NamespaceIdent, TableIdent)> {
    let parts: Vec<&str> = table.split('.').collect();
    let (ns_parts, name) = parts.split_at(parts.len().saturating_sub(1));
    let ns =
        NamespaceIdent::from_strs(ns_parts.iter().copied()).map_err(|e| ice(e, "namespace"))?;
    let name = name.first().copied().unwrap_or_default().to_string();
    Ok((ns.clone(), TableIdent::new(ns, name)))
}

/// A dativo error for an iceberg-rust failure while `doing` something. The kind comes from
/// iceberg's [`iceberg::ErrorKind`] and, for its catch-all kinds, from the causes it carries
/// (a connection that failed, a timeout), never from message text; the failure stays the
/// cause.
pub(crate) fn ice(e: iceberg::Error, doing: &str) -> Error {
    let msg = format!("{doing}: {}", secrets::scrub(&e.to_string()));
    let kind = match e.kind() {
        iceberg::ErrorKind::CatalogCommitConflicts => ErrorKind::Conflict,
        iceberg::ErrorKind::DataInvalid | iceberg::ErrorKind::FeatureUnsupported => {
            ErrorKind::Schema
        }
        iceberg::ErrorKind::NamespaceNotFound | iceberg::ErrorKind::TableNotFound => {
            ErrorKind::Config
        }
        _ if e.retryable() => ErrorKind::Transient,
        _ => match cause_kind(&e) {
            Some(k) => k,
            None => ErrorKind::Io,
        },
    };
    Error::new(kind, msg).with_source(e)
}

/// What the causes of `e` say about it: a service that could not be reached
/// ([`ErrorKind::Connect`]), storage that refused or throttled, or nothing known.
pub(crate) fn cause_kind(e: &(dyn std::error::Error + 'static)) -> Option<ErrorKind> {
    use std::io::ErrorKind as Io;
    let mut cur = Some(e);
    while let Some(c) = cur {
        // iceberg-rust's REST client and object storage (opendal) speak HTTP with reqwest.
        if let Some(r) = c.downcast_ref::<reqwest_iceberg::Error>() {
            if r.is_connect() || r.is_timeout() {
                return Some(ErrorKind::Connect);
            }
        }
        if let Some(r) = c.downcast_ref::<reqwest::Error>() {
            if r.is_connect() || r.is_timeout() {
                return Some(ErrorKind::Connect);
            }
        }
        if let Some(s) = c.downcast_ref::<sqlx::Error>() {
            if matches!(
                s,
                sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut
            ) {
                return Some(ErrorKind::Connect);
            }
        }
        if let Some(o) = c.downcast_ref::<opendal::Error>() {
            match o.kind() {
                opendal::ErrorKind::PermissionDenied => return Some(ErrorKind::Auth),
                opendal::ErrorKind::RateLimited => return Some(ErrorKind::Transient),
                _ if o.is_temporary() => return Some(ErrorKind::Transient),
                _ => {}
            }
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                Io::ConnectionRefused
                    | Io::ConnectionReset
                    | Io::ConnectionAborted
                    | Io::NotConnected
                    | Io::TimedOut
                    | Io::HostUnreachable
                    | Io::NetworkUnreachable
                    | Io::AddrNotAvailable
            ) {
                return Some(ErrorKind::Connect);
            }
        }
        cur = c.source();
    }
    None
}

/// Whether `e` is a catalog database's refusal of a row or table that another process just
/// created (a unique-key violation, or PostgreSQL's `duplicate_table`): the SQL catalog
/// creates its own tables on first use, and shards starting together on a fresh database race.
pub(crate) fn is_duplicate(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(sqlx::Error::Database(db)) = c.downcast_ref::<sqlx::Error>() {
            // 42P07: duplicate_table; 23505 (unique_violation) is `is_unique_violation`.
            return db.is_unique_violation() || db.code().as_deref() == Some("42P07");
        }
        cur = c.source();
    }
    false
}

/// Parse `col`, `day(col)`, `bucket(16, col)`, `truncate(4, col)` into (column, transform).
pub fn parse_partition(spec: &str) -> std::result::Result<(String, Transform), String> {
    let s = spec.trim();
    let Some(open) = s.find('(') else {
        return if s.is_empty() {
            Err("empty partition field".into())
        } else {
            Ok((s.to_string(), Transform::Identity))
        };
    };
    let name = s[..open].trim().to_ascii_lowercase();
    let args = s[open + 1..]
        .strip_suffix(')')
        .ok_or_else(|| format!("`{spec}`: missing `)`"))?;
    let parts: Vec<&str> = args.split(',').map(str::trim).collect();
    let n = |p: &str| {
        p.parse::<u32>()
            .map_err(|_| format!("`{spec}`: `{p}` is not a positive number"))
    };
    let (col, t) = match (name.as_str(), parts.as_slice()) {
        ("identity", [c]) => (c, Transform::Identity),
        ("year", [c]) | ("years", [c]) => (c, Transform::Year),
        ("month", [c]) | ("months", [c]) => (c, Transform::Month),
        ("day", [c]) | ("days", [c]) => (c, Transform::Day),
        ("hour", [c]) | ("hours", [c]) => (c, Transform::Hour),
        ("bucket", [k, c]) => (c, Transform::Bucket(n(k)?)),
        ("truncate", [w, c]) => (c, Transform::Truncate(n(w)?)),
        _ => {
            return Err(format!(
                "`{spec}`: use col, year(col), month(col), day(col), hour(col), bucket(N, col) or truncate(W, col)"
            ))
        }
    };
    Ok((col.to_string(), t))
}

/// The Arrow schema iceberg-rust can take: types it has no mapping for are widened.
fn iceberg_compatible(schema: &ArrowSchema) -> Result<ArrowSchema> {
    let fields = schema
        .fields()
        .iter()
        .map(|f| {
            let dt = match f.data_type() {
                DataType::UInt64 => DataType::Decimal128(20, 0),
                DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
                DataType::Float16 => DataType::Float32,
                DataType::Date64 => DataType::Date32,
                DataType::Timestamp(_, tz) => DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Microsecond,
                    tz.as_ref().map(|_| "UTC".into()),
                ),
                DataType::Time32(_) => DataType::Time64(arrow::datatypes::TimeUnit::Microsecond),
                other => other.clone(),
            };
            // Only the UUID extension survives: it makes the column an Iceberg `uuid`.
            let metadata = if is_uuid(f) {
                f.metadata().clone()
            } else {
                HashMap::new()
            };
            Arc::new(
                f.as_ref()
                    .clone()
                    .with_data_type(dt)
                    .with_metadata(metadata),
            )
        })
        .collect::<Vec<_>>();
    Ok(ArrowSchema::new(fields))
}

/// Rebuild `batch` against the table's Arrow schema: same order, field ids, casts, and NULL
/// columns for optional table columns the source does not have.
fn conform(batch: &RecordBatch, target: &ArrowSchemaRef) -> Result<RecordBatch> {
    let cols = target
        .fields()
        .iter()
        .map(|f| -> Result<ArrayRef> {
            Ok(match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => c.clone(),
                Some(c) => arrow::compute::cast(c, f.data_type())
                    .map_err(|e| Error::schema(format!("column `{}`: {e}", f.name())))?,
                None => new_null_array(f.data_type(), batch.num_rows()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new_with_options(
        target.clone(),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(batch.num_rows())),
    )
    .map_err(|e| Error::schema(format!("batch does not fit the table: {e}")))
}

fn absolute(p: &str) -> Result<String> {
    let path = Path::new(p);
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    Ok(abs.display().to_string().trim_end_matches('/').to_string())
}

/// The database URI of `cfg`'s SQL catalog, as the catalog (and [`super::commit::SqlSwap`])
/// opens it: a SQLite path made absolute (its directory created) with `mode=rwc`, or the
/// PostgreSQL URI as given.
pub(crate) fn sql_catalog_uri(cfg: &IcebergWriterConfig) -> Result<String> {
    Ok(match &cfg.catalog.uri {
        Some(CatalogUri::Sqlite(u)) => {
            let path = u
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let (path, _) = path.split_once('?').unwrap_or((path, ""));
            let abs = absolute(path)?;
            if let Some(parent) = Path::new(&abs).parent() {
                std::fs::create_dir_all(parent)?;
            }
            format!("sqlite://{abs}?mode=rwc")
        }
        Some(u) => u.expose().to_string(),
        None => {
            let abs = absolute(".dativo/catalog.db")?;
            std::fs::create_dir_all(absolute(".dativo")?)?;
            format!("sqlite://{abs}?mode=rwc")
        }
    })
}

/// An Azure warehouse in the form Iceberg engines read, `abfss://container@account.dfs.core.windows.net/prefix`
/// (`az://container/prefix` is rewritten to it, with `azure.account_name`); `None` when
/// `warehouse` is not on Azure. The URL is checked against the `azure:` block here, so a
/// mistake is a configuration error before anything is written.
pub(crate) fn azure_warehouse(
    warehouse: &str,
    azure: Option<&dativo_storage::AzureConfig>,
) -> Result<Option<String>> {
    let url = if let Some(rest) = warehouse.strip_prefix("az://") {
        let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let Some(account) = azure.and_then(|a| a.account_name.as_deref()) else {
            return Err(Error::config(format!(
                "warehouse `{warehouse}`: set `azure.account_name` (Iceberg tables on Azure are located at abfss://container@ACCOUNT.dfs.core.windows.net/…, the form other engines read)"
            ))
            .with_key_path("azure.account_name"));
        };
        format!(
            "abfss://{container}@{account}.dfs.core.windows.net/{}",
            prefix.trim_matches('/')
        )
    } else if dativo_storage::AzureUrl::parse(warehouse)?.is_some() {
        warehouse.trim_end_matches('/').to_string()
    } else {
        return Ok(None);
    };
    // Builds the client (and checks the account against `azure.account_name`).
    let opts = dativo_storage::StoreOptions {
        azure,
        ..Default::default()
    };
    dativo_storage::Location::parse(&url, &opts).map_err(|e| e.with_key_path("warehouse"))?;
    Ok(Some(url.trim_end_matches('/').to_string()))
}

/// Open the catalog `cfg` names (creating a local warehouse directory and SQLite file).
pub(crate) async fn open_catalog(cfg: &IcebergWriterConfig) -> Result<Arc<CountingCatalog>> {
    let warehouse = cfg.warehouse.clone().unwrap_or_else(|| "warehouse".into());
    let (warehouse, storage): (String, Arc<dyn StorageFactory>) = if warehouse.starts_with("s3://")
        || warehouse.starts_with("s3a://")
    {
        (
            warehouse,
            Arc::new(OpenDalStorageFactory::S3 {
                customized_credential_load: None,
            }),
        )
    } else if warehouse.starts_with("gs://") {
        (
            warehouse,
            Arc::new(ObjectStorageFactory::gcs(
                cfg.gcs.clone().unwrap_or_default(),
            )),
        )
    } else if let Some(w) = azure_warehouse(&warehouse, cfg.azure.as_ref())? {
        // Pinned to the warehouse's account: a file path in a table's metadata naming another
        // account is refused, never sent this job's credentials.
        let mut azure = cfg.azure.clone().unwrap_or_default();
        if azure.account_name.is_none() {
            azure.account_name = dativo_storage::AzureUrl::parse(&w)?.map(|u| u.account);
        }
        let factory = ObjectStorageFactory::azure(azure);
        (w, Arc::new(factory))
    } else if dativo_storage::is_remote(&warehouse) {
        return Err(Error::config(format!(
            "warehouse `{warehouse}`: the iceberg writer takes a local directory, s3://, gs://, or abfss://container@account.dfs.core.windows.net/prefix (az://container/prefix)"
        ))
        .with_key_path("warehouse"));
    } else {
        let w = absolute(warehouse.trim_start_matches("file://"))?;
        std::fs::create_dir_all(&w)
            .map_err(|e| Error::io(format!("creating the warehouse {w}: {e}")).with_source(e))?;
        (w, Arc::new(LocalStorageFactory))
    };
    let mut s3_props: HashMap<String, String> = HashMap::new();
    if let Some(s3) = &cfg.s3 {
        let mut set = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                s3_props.insert(k.to_string(), v.to_string());
            }
        };
        set(S3_ENDPOINT, s3.endpoint.as_deref());
        set(S3_REGION, s3.region.as_deref());
        set(S3_ACCESS_KEY_ID, s3.access_key_id.as_deref());
        set(
            S3_SECRET_ACCESS_KEY,
            s3.secret_access_key.as_ref().map(|s| s.expose()),
        );
        set(
            S3_SESSION_TOKEN,
            s3.session_token.as_ref().map(|s| s.expose()),
        );
        if s3.path_style {
            s3_props.insert(S3_PATH_STYLE_ACCESS.to_string(), "true".to_string());
        }
    }
    if cfg.catalog.kind == CatalogKind::Rest {
        let uri = cfg
            .catalog
            .uri
            .as_ref()
            .map(|u| u.expose().to_string())
            .unwrap_or_default();
        let mut props = s3_props;
        props.insert("uri".into(), uri.clone());
        if cfg.warehouse.is_some() {
            props.insert("warehouse".into(), warehouse.clone());
        }
        for (k, v) in [
            ("token", &cfg.catalog.token),
            ("credential", &cfg.catalog.credential),
        ] {
            if let Some(v) = v {
                props.insert(k.into(), v.expose().to_string());
            }
        }
        let catalog = RestCatalogBuilder::default()
            .with_storage_factory(storage)
            .load(cfg.catalog.name.clone(), props)
            .await
            .map_err(|e| {
                ice(
                    e,
                    &format!(
                        "opening the Iceberg REST catalog at {}",
                        secrets::scrub(&uri)
                    ),
                )
            })?;
        return Ok(Arc::new(CountingCatalog::new(Arc::new(catalog))));
    }
    let uri = sql_catalog_uri(cfg)?;
    let sqlite = uri.starts_with("sqlite:");
    if !sqlite {
        probe_catalog_server(&uri).await?;
    }
    let make = || {
        let style = if sqlite {
            SqlBindStyle::QMark
        } else {
            SqlBindStyle::DollarNumeric
        };
        let mut b = SqlCatalogBuilder::default()
            .uri(uri.clone())
            .warehouse_location(warehouse.clone())
            .sql_bind_style(style);
        for (k, v) in &s3_props {
            b = b.prop(k.clone(), v.clone());
        }
        b.with_storage_factory(storage.clone())
    };
    // The catalog creates its tables on first use; several shards starting together on a
    // fresh database race to create them (a duplicate-key error): the losers try again.
    let mut attempt = 0;
    let catalog = loop {
        attempt += 1;
        match make().load(cfg.catalog.name.clone(), HashMap::new()).await {
            Ok(c) => break c,
            Err(e) if attempt < 5 && is_duplicate(&e) => {
                let ms = 50 + rand::random::<u64>() % 250;
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            }
            Err(e) => {
                let what = secrets::scrub(&uri);
                return Err(ice(e, &format!("opening the Iceberg catalog at {what}")));
            }
        }
    };
    Ok(Arc::new(CountingCatalog::new(Arc::new(catalog))))
}

/// The table a writer writes, loaded (or created) and evolved.
struct Opened {
    table: Table,
    ident: TableIdent,
    /// The table's schema in Arrow form.
    target: ArrowSchemaRef,
}

/// Load or create the table; evolve its schema to take the source's new columns.
async fn open_table(
    cfg: &IcebergWriterConfig,
    catalog: &CountingCatalog,
    source: &ArrowSchema,
    encrypted: bool,
    shape: &TableShape,
) -> Result<Opened> {
    let (ns, ident) = table_ident(&cfg.table)?;
    if !catalog
        .namespace_exists(&ns)
        .await
        .map_err(|e| ice(e, "checking the namespace"))?
    {
        if let Err(e) = catalog.create_namespace(&ns, HashMap::new()).await {
            // Another job may have created it meanwhile (the SQL catalog then reports a
            // unique-constraint violation rather than "already exists").
            if !catalog.namespace_exists(&ns).await.unwrap_or(false) {
                return Err(ice(e, "creating the namespace"));
            }
        }
    }
    let compatible = iceberg_compatible(source)?;
    let table = if catalog
        .table_exists(&ident)
        .await
        .map_err(|e| ice(e, "checking the table"))?
    {
        catalog
            .load_table(&ident)
            .await
            .map_err(|e| ice(e, "loading the table"))?
    } else {
        // Key and NOT NULL columns become required fields; the key, identifier fields.
        let required: Vec<_> = compatible
            .fields()
            .iter()
            .map(|f| {
                let req = shape.key.contains(f.name()) || shape.not_null.contains(f.name());
                Arc::new(f.as_ref().clone().with_nullable(f.is_nullable() && !req))
            })
            .collect();
        let schema = arrow_schema_to_schema_auto_assign_ids(&ArrowSchema::new(required))
            .map_err(|e| ice(e, "mapping the source schema to Iceberg"))?;
        let schema = with_uuids(schema, &compatible)?;
        let ids: Vec<i32> = shape
            .key
            .iter()
            .filter_map(|k| schema.field_by_name(k).map(|f| f.id))
            .collect();
        let schema = if ids.is_empty() {
            schema
        } else {
            schema
                .into_builder()
                .with_identifier_field_ids(ids)
                .build()
                .map_err(|e| ice(e, "setting the table's identifier fields"))?
        };
        let mut spec = PartitionSpec::builder(schema.clone());
        for (i, p) in cfg.partition_by.iter().enumerate() {
            let (col, t) = parse_partition(p)
                .map_err(|m| Error::config(m).with_key_path(format!("partition_by[{i}]")))?;
            let pname = match t {
                Transform::Identity => col.clone(),
                Transform::Bucket(n) => format!("{col}_bucket_{n}"),
                Transform::Truncate(w) => format!("{col}_trunc_{w}"),
                other => format!("{col}_{}", other.to_string().to_lowercase()),
            };
            spec = spec
                .add_partition_field(col.as_str(), pname, t)
                .map_err(|e| ice(e, &format!("partition field `{p}`")))?;
        }
        let spec = spec.build().map_err(|e| ice(e, "partition spec"))?;
        let mut props: HashMap<String, String> = HashMap::from([
            ("commit.retry.num-retries".into(), "20".into()),
            ("commit.retry.min-wait-ms".into(), "50".into()),
            ("commit.retry.max-wait-ms".into(), "5000".into()),
            (
                "write.parquet.compression-codec".into(),
                cfg.compression.iceberg_codec().into(),
            ),
        ]);
        if let Some(level) = cfg.compression.level() {
            props.insert("write.parquet.compression-level".into(), level.to_string());
        }
        props.extend(cfg.properties.clone());
        let creation = TableCreation::builder()
            .name(ident.name().to_string())
            .schema(schema)
            .partition_spec(spec)
            .properties(props)
            .build();
        match catalog.create_table(&ns, creation).await {
            Ok(t) => {
                tracing::info!(table = %cfg.table, "created the Iceberg table");
                t
            }
            // Another job may have created it meanwhile: use theirs.
            Err(e) => match catalog.load_table(&ident).await {
                Ok(t) => t,
                Err(_) => return Err(ice(e, "creating the table")),
            },
        }
    };
    if encrypted && !table.metadata().default_partition_spec().is_unpartitioned() {
        return Err(Error::config(format!(
            "table {} is partitioned: partition values become plaintext directory names, so dativo does not encrypt into it; use an unpartitioned table",
            cfg.table
        ))
        .with_key_path("encryption"));
    }
    let table = evolve(catalog, table, &compatible).await?;
    let target = schema_to_arrow_schema(table.metadata().current_schema())
        .map_err(|e| ice(e, "reading the table schema"))?;
    Ok(Opened {
        table,
        ident,
        target: Arc::new(target),
    })
}

/// Whether an Arrow field is a UUID (`FixedSizeBinary(16)` with the `arrow.uuid` extension, as
/// the PostgreSQL reader gives `uuid` columns).
fn is_uuid(f: &arrow::datatypes::Field) -> bool {
    f.data_type() == &DataType::FixedSizeBinary(16)
        && f.metadata().get("ARROW:extension:name").map(String::as_str) == Some("arrow.uuid")
}

/// `schema` (mapped from `source`) with the source's UUID columns typed `uuid`, not
/// `fixed[16]`.
fn with_uuids(
    schema: iceberg::spec::Schema,
    source: &ArrowSchema,
) -> Result<iceberg::spec::Schema> {
    if !source.fields().iter().any(|f| is_uuid(f)) {
        return Ok(schema);
    }
    let fields: Vec<_> = schema
        .as_struct()
        .fields()
        .iter()
        .map(|f| {
            let uuid = source
                .field_with_name(&f.name)
                .map(is_uuid)
                .unwrap_or(false);
            if uuid {
                let mut f = f.as_ref().clone();
                f.field_type = Box::new(Type::Primitive(PrimitiveType::Uuid));
                Arc::new(f)
            } else {
                f.clone()
            }
        })
        .collect();
    iceberg::spec::Schema::builder()
        .with_schema_id(schema.schema_id())
        .with_identifier_field_ids(schema.identifier_field_ids())
        .with_fields(fields)
        .build()
        .map_err(|e| ice(e, "typing UUID columns"))
}

/// Add the source's new nullable columns; refuse incompatible changes, naming the column.
async fn evolve(catalog: &CountingCatalog, table: Table, source: &ArrowSchema) -> Result<Table> {
    let current = table.metadata().current_schema().clone();
    let mut added = Vec::new();
    for f in source.fields() {
        match current.field_by_name(f.name()) {
            Some(existing) => {
                let want = arrow_type_to_type(f.data_type()).ok();
                let have = existing.field_type.as_ref();
                let ok = match (&want, have) {
                    (None, _) => true, // nested: checked by the cast when writing
                    (Some(w), h) if w == h => true,
                    (
                        Some(Type::Primitive(PrimitiveType::Fixed(16))),
                        Type::Primitive(PrimitiveType::Uuid),
                    ) => true,
                    (
                        Some(Type::Primitive(PrimitiveType::Int)),
                        Type::Primitive(PrimitiveType::Long),
                    ) => true,
                    (
                        Some(Type::Primitive(PrimitiveType::Float)),
                        Type::Primitive(PrimitiveType::Double),
                    ) => true,
                    _ => false,
                };
                if !ok {
                    return Err(Error::schema(format!(
                        "column `{}` is {} in the Iceberg table but {} in the source: an incompatible type change",
                        f.name(),
                        have,
                        want.map(|t| t.to_string()).unwrap_or_else(|| f.data_type().to_string())
                    )));
                }
            }
            None => {
                if !f.is_nullable() {
                    return Err(Error::schema(format!(
                        "the source has a new required column `{}`; only nullable columns can be added to an Iceberg table",
                        f.name()
                    )));
                }
                let t = if is_uuid(f) {
                    Ok(Type::Primitive(PrimitiveType::Uuid))
                } else {
                    arrow_type_to_type(f.data_type())
                }
                .map_err(|e| {
                    ice(
                        e,
                        &format!(
                            "new column `{}` (only primitive columns can be added)",
                            f.name()
                        ),
                    )
                })?;
                added.push((f.name().clone(), t));
            }
        }
    }
    for field in current.as_struct().fields() {
        if field.required && source.field_with_name(&field.name).is_err() {
            return Err(Error::schema(format!(
                "the table's required column `{}` is missing from the source",
                field.name
            )));
        }
    }
    if added.is_empty() {
        return Ok(table);
    }
    let names: Vec<String> = added.iter().map(|(n, _)| n.clone()).collect();
    let tx = Transaction::new(&table);
    let mut update = tx.update_schema();
    for (name, t) in added {
        update = update.add_column(AddColumn::optional(name, t));
    }
    let tx = update.apply(tx).map_err(|e| ice(e, "adding columns"))?;
    let table = tx
        .commit(catalog)
        .await
        .map_err(|e| ice(e, "committing the schema update"))?;
    tracing::info!(columns = ?names, "added columns to the Iceberg table");
    Ok(table)
}

impl IcebergWriter {
    /// Validate a config without connecting.
    pub fn validate(config: &Value) -> Result<()> {
        from_config::<IcebergWriterConfig>(config)?.check()
    }

    /// Open the catalog, load the table (creating its namespace and the table from
    /// `ctx.schema` when missing, adding the source's new nullable columns), and note this
    /// job's latest snapshot: commits are made only on top of it.
    pub fn open(config: &Value, ctx: &WriterContext) -> Result<Self> {
        let cfg: IcebergWriterConfig = from_config(config)?;
        cfg.check()?;
        let enc = match &cfg.encryption {
            Some(e) => {
                let enc = Encryptor::open(e, EncFormat::Parquet)?;
                enc.check_columns(&ctx.schema)?;
                Some(Arc::new(enc))
            }
            None => None,
        };
        let mode = modes::resolve(&cfg, ctx)?;
        let (key, delete_when) = match mode {
            WriteMode::Merge => {
                let key = modes::merge_key(&cfg, ctx)?;
                let dw = match &cfg.delete_when {
                    Some(w) => {
                        let dw = DeleteWhen::parse(w)
                            .map_err(|m| Error::config(m).with_key_path("delete_when"))?;
                        dw.check(&ctx.schema)?;
                        Some(dw)
                    }
                    None => None,
                };
                (key, dw)
            }
            _ => (Vec::new(), None),
        };
        // The row operation column steers the merge; it is not a column of the table.
        let source = strip_op_column(&ctx.schema, mode)?;
        let shape = TableShape {
            key: key.clone(),
            not_null: ctx.source.not_null.clone(),
        };
        let (catalog, opened) = runtime().block_on(async {
            let catalog = open_catalog(&cfg).await?;
            let opened = open_table(&cfg, &catalog, &source, enc.is_some(), &shape).await?;
            Ok::<_, Error>((catalog, opened))
        })?;
        let job_snapshot = job_latest(opened.table.metadata(), &ctx.job)?.map(|c| c.snapshot_id);
        let md = opened.table.metadata();
        let spec = md.default_partition_spec().clone();
        let splitter = if spec.is_unpartitioned() {
            None
        } else {
            Some(
                RecordBatchPartitionSplitter::try_new_with_computed_values(
                    md.current_schema().clone(),
                    spec,
                )
                .map_err(|e| ice(e, "partitioning"))?,
            )
        };
        let merge = if mode == WriteMode::Merge {
            let first = md
                .current_schema()
                .field_by_name(&key[0])
                .ok_or_else(|| {
                    Error::config(format!(
                        "merge key column `{}` is not a column of table {}",
                        key[0], cfg.table
                    ))
                    .with_key_path("primary_key")
                })?
                .id;
            Some(Merge::new(key, &opened.target, first, delete_when)?)
        } else {
            None
        };
        Ok(IcebergWriter {
            cfg,
            catalog,
            table: opened.table,
            job_snapshot,
            ident: opened.ident,
            target: opened.target,
            job: ctx.job.clone(),
            active: None,
            rows: 0,
            enc,
            issued: Default::default(),
            mode,
            splitter,
            merge,
            plain_columns: None,
            live: None,
        })
    }

    /// Close the open data files and delete them, forget their keys: nothing since the last
    /// commit remains. Reports the first failure to close.
    fn discard(&mut self) -> Result<()> {
        let closed = runtime().block_on(self.close_writer());
        if let Ok(files) = &closed {
            runtime().block_on(self.delete_files(files));
        }
        self.issued.lock().expect("not poisoned").clear();
        self.rows = 0;
        if let Some(m) = &mut self.merge {
            m.reset();
        }
        closed.map(|_| ())
    }

    /// Parquet properties of data files: bloom filters on the merge key's first column, so
    /// a merge skips the row groups that cannot hold a key it changes.
    fn data_properties(&self) -> WriterProperties {
        let mut b = WriterProperties::builder()
            .set_compression(self.cfg.compression.compression())
            .set_max_row_group_row_count(Some(self.cfg.row_group_size.max(1)))
            .set_max_row_group_bytes(Some((self.cfg.row_group_bytes.0 as usize).max(1)))
            .set_created_by(format!("dativo {}", env!("CARGO_PKG_VERSION")));
        b = crate::dictionary::apply(b, self.plain_columns.as_deref().unwrap_or_default());
        if let Some(m) = &self.merge {
            let first = parquet::schema::types::ColumnPath::from(m.key()[0].as_str());
            b = b.set_column_bloom_filter_enabled(first.clone(), true);
            // Integer keys delta-encoded: a merge reads the key column of every candidate
            // file, and ascending ids shrink to a few bits a row.
            if let Ok(f) = self.target.field_with_name(&m.key()[0]) {
                if matches!(f.data_type(), DataType::Int64 | DataType::Int32) {
                    b = b
                        .set_column_dictionary_enabled(first.clone(), false)
                        .set_column_encoding(first, parquet::basic::Encoding::DELTA_BINARY_PACKED);
                }
            }
        }
        b.build()
    }

    async fn start_writer(&self) -> Result<Active> {
        let table = &self.table;
        let md = table.metadata();
        let props = self.data_properties();
        let pq = FileBuilder::new(
            props,
            md.current_schema().clone(),
            self.enc.clone(),
            md.location().to_string(),
            self.issued.clone(),
        )?;
        let rolling = RollingFileWriterBuilder::new(
            pq,
            self.cfg.target_file_size.0 as usize,
            table.file_io().clone(),
            DefaultLocationGenerator::new(md).map_err(|e| ice(e, "data location"))?,
            // Unique per writer: the generator's counter restarts with every instance.
            DefaultFileNameGenerator::new(
                format!("dativo-{}", uuid::Uuid::now_v7()),
                None,
                DataFileFormat::Parquet,
            ),
        );
        let builder = DataFileWriterBuilder::new(rolling);
        if self.splitter.is_none() {
            Ok(Active::Plain(Box::new(
                builder
                    .build(None)
                    .await
                    .map_err(|e| ice(e, "starting a data file"))?,
            )))
        } else {
            Ok(Active::Fanout(FanoutWriter::new(builder)))
        }
    }

    async fn close_writer(&mut self) -> Result<Vec<DataFile>> {
        match self.active.take() {
            None => Ok(Vec::new()),
            Some(Active::Plain(mut w)) => w.close().await.map_err(|e| ice(e, "closing data files")),
            Some(Active::Fanout(w)) => w.close().await.map_err(|e| ice(e, "closing data files")),
        }
    }

    async fn delete_files(&self, files: &[DataFile]) {
        let io = self.table.file_io().clone();
        for f in files {
            if let Err(e) = io.delete(f.file_path()).await {
                tracing::warn!(file = f.file_path(), error = %e, "could not delete an uncommitted data file");
            }
        }
    }
}

/// What a table dativo creates declares beyond the columns: the merge key (identifier
/// fields, required) and the source's NOT NULL columns (required).
#[derive(Debug, Default)]
struct TableShape {
    key: Vec<String>,
    not_null: Vec<String>,
}

/// The source schema as the table takes it: without the row operation column in a merge.
fn strip_op_column(schema: &ArrowSchemaRef, mode: WriteMode) -> Result<ArrowSchemaRef> {
    if mode != WriteMode::Merge || schema.field_with_name(OP_COLUMN).is_err() {
        return Ok(schema.clone());
    }
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .filter(|f| f.name() != OP_COLUMN)
        .cloned()
        .collect();
    Ok(Arc::new(ArrowSchema::new(fields)))
}

impl IcebergWriter {
    /// The change an overwrite makes: every live file, or those of the partitions `add`
    /// writes into, replaced by `add`.
    fn overwrite_change(&self, live: &LiveFiles, add: Vec<DataFile>) -> Result<Change> {
        if self.cfg.overwrite == OverwriteScope::Table {
            return Ok(Change::overwrite_all(live, add));
        }
        let spec = self.table.metadata().default_partition_spec_id();
        if let Some(old) = live.files.iter().find(|f| f.spec_id != spec) {
            return Err(Error::config(format!(
                "table {}: file {} belongs to partition spec {} but the table's spec is now \
                 {spec}; `overwrite: partitions` replaces partitions of the current spec only",
                self.ident,
                old.path(),
                old.spec_id
            ))
            .with_key_path("overwrite"));
        }
        let parts: std::collections::HashSet<&iceberg::spec::Struct> =
            add.iter().map(|f| f.partition()).collect();
        let remove = live
            .files
            .iter()
            .filter(|f| parts.contains(f.file.partition()))
            .map(|f| f.path().to_string())
            .collect();
        Ok(Change {
            remove,
            add,
            no_new_files: true,
            ..Default::default()
        })
    }

    /// The snapshot summary properties of a commit of `files`: the state, job and run, and
    /// (encrypted tables) the files' audit records — appended to the audit log first, so a
    /// committed file always has its audit line.
    async fn commit_summary(
        &self,
        commit: &Commit,
        files: &[DataFile],
    ) -> Result<HashMap<String, String>> {
        let state = commit
            .state
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_else(|| "null".into());
        let mut summary = HashMap::from([
            (STATE_KEY.to_string(), state),
            (JOB_KEY.to_string(), self.job.clone()),
            (RUN_KEY.to_string(), commit.run_id.clone()),
        ]);
        if let Some(enc) = &self.enc {
            let io = self.table.file_io().clone();
            let root = self.table.metadata().location().to_string();
            let audits = audit_files(
                enc,
                &io,
                &root,
                files,
                &self.issued,
                &self.job,
                &commit.run_id,
            )
            .await?;
            enc.audit.append(&root, &audits)?;
            summary.insert(ENCRYPTION_KEY.to_string(), serde_json::to_string(&audits)?);
        }
        Ok(summary)
    }

    /// An overwrite or merge commit, through dativo's own commit path: plan the change on
    /// the table's current state, commit it with the state; when another commit lands first
    /// and the change no longer applies, plan again (a merge looks its keys up again).
    fn commit_rows(&mut self, commit: &Commit) -> Result<CommitReport> {
        let job = self.job.clone();
        let ident = self.ident.clone();
        let expected = self.job_snapshot;
        let swap = swap_for(&self.cfg)?;
        let delete_props = WriterProperties::builder()
            .set_compression(self.cfg.compression.compression())
            .set_created_by(format!("dativo {}", env!("CARGO_PKG_VERSION")))
            .build();
        let files = runtime().block_on(self.close_writer())?;
        let mut merge = self.merge.take();
        let mut cache = self.live.take();
        let outcome = runtime().block_on(async {
            let io = self.table.file_io().clone();
            let summary = self
                .commit_summary(commit, &files)
                .await
                .map_err(|e| (e, true))?;
            let guard_job = job.clone();
            let guard_ident = ident.clone();
            let guard = move |t: &Table| -> Result<()> {
                let latest = job_latest(t.metadata(), &guard_job)?;
                if latest.as_ref().map(|c| c.snapshot_id) == expected {
                    return Ok(());
                }
                let by = match latest {
                    Some(c) => format!(
                        "run {} committed snapshot {}",
                        c.run_id.as_deref().unwrap_or("?"),
                        c.snapshot_id
                    ),
                    None => "its latest snapshot is no longer in the table's history".into(),
                };
                Err(Error::busy(format!(
                    "job `{guard_job}` is already running elsewhere: since this run started, \
                     {by} to {guard_ident}. Two runs of one job must not write one table at \
                     once: this run's commit was abandoned and its files deleted; the next \
                     run resumes from the table's state"
                )))
            };
            let mut attempt = 0u32;
            loop {
                let planned = async {
                    let table = self
                        .catalog
                        .load_table(&ident)
                        .await
                        .map_err(|e| ice(e, "loading the table"))?;
                    guard(&table)?;
                    let live = LiveFiles::load_reusing(&table, cache.as_ref()).await?;
                    cache = None;
                    let mut change = match &mut merge {
                        None => self.overwrite_change(&live, files.clone())?,
                        Some(m) => {
                            let p = m.plan(&table, &live, &files, &delete_props).await?;
                            // A truncation removes every file live before this commit.
                            let remove = if m.truncates() {
                                live.paths().map(str::to_string).collect()
                            } else {
                                Default::default()
                            };
                            Change {
                                remove,
                                add: files.clone(),
                                add_deletes: p.deletes,
                                referenced: p.referenced,
                                no_new_files: true,
                                ..Default::default()
                            }
                        }
                    };
                    change.properties = summary.clone();
                    if let Some(st) = merge.as_ref().map(|m| m.stats()) {
                        change.properties.extend(merge_summary(st));
                    }
                    Ok::<_, Error>((table, live, change))
                }
                .await;
                let (table, live, change) = match planned {
                    Ok(p) => p,
                    Err(e) => break Err((e, true)),
                };
                let deletes: Vec<String> = change
                    .add_deletes
                    .iter()
                    .map(|f| f.file_path().to_string())
                    .collect();
                let removed = change.remove.len();
                let r = Committer::new(self.catalog.as_ref(), swap.as_ref())
                    .commit(
                        &table,
                        &live,
                        SnapshotProducer::new(&table, change.clone()),
                        Some(&guard),
                    )
                    .await;
                match r {
                    Ok(t) => {
                        cache = Some(live);
                        break Ok((t, change, removed));
                    }
                    Err(e) => {
                        let certain = matches!(e.kind(), ErrorKind::Conflict | ErrorKind::Busy)
                            || e.kind() == ErrorKind::Config;
                        if certain {
                            delete_paths(&io, &deletes).await;
                        }
                        if e.kind() == ErrorKind::Conflict && attempt < 10 {
                            attempt += 1;
                            cache = Some(live);
                            tracing::info!(table = %ident, attempt, "the table changed under the commit; planning it again");
                            continue;
                        }
                        break Err((e, certain));
                    }
                }
            }
        });
        let result = match outcome {
            Ok(ok) => Ok(ok),
            Err((e, certain)) => {
                // Not committed for certain: this run's data files are its own to delete.
                if certain {
                    runtime().block_on(self.delete_files(&files));
                }
                Err(e)
            }
        };
        let stats = merge.as_mut().map(|m| m.reset());
        self.merge = merge;
        self.live = cache;
        let (table, change, removed) = match result {
            Ok(r) => r,
            Err(e) => {
                self.rows = 0;
                self.issued.lock().expect("not poisoned").clear();
                return Err(e);
            }
        };
        let snapshot = table.metadata().current_snapshot().map(|s| s.snapshot_id());
        if let Some(st) = &stats {
            tracing::info!(
                table = %self.ident,
                upserts = st.upserts,
                deletes = st.deletes,
                position_deletes = st.position_deletes,
                files_read = st.files_read,
                files_live = st.files_live,
                rows_read = st.rows_read,
                bytes_read = st.bytes_read,
                table_bytes = st.table_bytes,
                truncates = st.truncates,
                "merged"
            );
        } else {
            tracing::info!(table = %self.ident, removed_files = removed, "overwrote");
        }
        self.job_snapshot = snapshot;
        self.table = table;
        self.rows = 0;
        let mut paths: Vec<String> = files.iter().map(|f| f.file_path().to_string()).collect();
        paths.extend(change.add_deletes.iter().map(|f| f.file_path().to_string()));
        Ok(CommitReport {
            files: paths,
            rows: files.iter().map(|f| f.record_count()).sum(),
            bytes: files
                .iter()
                .chain(&change.add_deletes)
                .map(|f| f.file_size_in_bytes())
                .sum(),
            commit_id: snapshot.map(|s| s.to_string()),
        })
    }
}

/// Snapshot summary properties of a merge: what it read to find previous versions.
fn merge_summary(st: &MergeStats) -> HashMap<String, String> {
    HashMap::from([
        ("dativo.merge.upserts".into(), st.upserts.to_string()),
        ("dativo.merge.deletes".into(), st.deletes.to_string()),
        ("dativo.merge.files-read".into(), st.files_read.to_string()),
        ("dativo.merge.rows-read".into(), st.rows_read.to_string()),
        ("dativo.merge.bytes-read".into(), st.bytes_read.to_string()),
        ("dativo.merge.truncates".into(), st.truncates.to_string()),
    ])
}

impl IcebergWriter {
    /// A merge batch with truncations in it: the rows between them written in order, the
    /// merge told of each truncation where it falls.
    fn write_truncating(&mut self, batch: &RecordBatch, at: &[usize]) -> Result<()> {
        let mut start = 0;
        for &t in at {
            if t > start {
                self.write_rows(&batch.slice(start, t - start))?;
            }
            if let Some(m) = &mut self.merge {
                m.truncate();
            }
            start = t + 1;
        }
        if start < batch.num_rows() {
            self.write_rows(&batch.slice(start, batch.num_rows() - start))?;
        }
        Ok(())
    }

    fn write_rows(&mut self, batch: &RecordBatch) -> Result<()> {
        if let Some(m) = &self.merge {
            m.check_keys(batch)?;
        }
        let conformed = conform(batch, &self.target)?;
        if self.plain_columns.is_none() {
            let plain =
                crate::dictionary::without_dictionary(&conformed, self.cfg.row_group_size.max(1));
            if !plain.is_empty() {
                tracing::debug!(columns = ?plain, "many distinct values: written without a dictionary");
            }
            self.plain_columns = Some(plain);
        }
        let parts = match (&mut self.merge, &self.splitter) {
            (Some(m), splitter) => m.prepare(batch, conformed, splitter.as_ref())?,
            (None, None) => vec![(None, conformed)],
            (None, Some(splitter)) => splitter
                .split(&conformed)
                .map_err(|e| ice(e, "partitioning"))?
                .into_iter()
                .map(|(k, b)| (Some(k), b))
                .collect(),
        };
        runtime().block_on(async {
            if parts.is_empty() {
                return Ok(());
            }
            let active = match self.active.take() {
                Some(a) => a,
                None => self.start_writer().await?,
            };
            let active = self.active.insert(active);
            for (key, part) in parts {
                match (&mut *active, key) {
                    (Active::Plain(w), _) => w.write(part).await,
                    (Active::Fanout(w), Some(key)) => w.write(key, part).await,
                    (Active::Fanout(_), None) => {
                        return Err(Error::internal("a partitioned write without its partition"))
                    }
                }
                .map_err(|e| ice(e, "writing"))?;
            }
            Ok(())
        })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }
}

impl OpenWriter for IcebergWriter {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.merge.is_some() {
            let at = modes::truncate_rows(batch)?;
            if !at.is_empty() {
                return self.write_truncating(batch, &at);
            }
        }
        self.write_rows(batch)
    }

    fn commit(&mut self, commit: &Commit) -> Result<CommitReport> {
        if self.mode != WriteMode::Append {
            return self.commit_rows(commit);
        }
        let job = self.job.clone();
        let run = commit.run_id.clone();
        let ident = self.ident.clone();
        let catalog = self.catalog.clone();
        let expected = self.job_snapshot;
        let (table, files) = runtime().block_on(async {
            let files = self.close_writer().await?;
            let summary = self.commit_summary(commit, &files).await?;
            // Reload: another job may have committed to the table since.
            let table = catalog
                .load_table(&ident)
                .await
                .map_err(|e| ice(e, "loading the table"))?;
            let tx = Transaction::new(&table);
            let tx = tx
                .fast_append()
                // The files' names are fresh UUIDs: checking them against every manifest of
                // the table (iceberg-rust's default) makes each commit cost grow with the
                // table's history.
                .with_check_duplicate(false)
                .set_snapshot_properties(summary)
                .add_data_files(files.clone())
                .apply(tx)
                .map_err(|e| ice(e, "preparing the commit"))?;
            // Every attempt (iceberg-rust retries conflicts) checks that no other run of this
            // job committed since this run's start or last commit.
            catalog.set_guard(Some(JobGuard {
                job: job.clone(),
                expected,
            }));
            let r = tx.commit(catalog.as_ref()).await;
            let moved = catalog.moved();
            catalog.set_guard(None);
            match (r, moved) {
                (Ok(t), _) => Ok((t, files)),
                (Err(guarded), Some((sid, other))) => {
                    // Not committed by this attempt: the files are ours alone — unless the
                    // snapshot that moved is this very run's (an earlier attempt of this commit
                    // that landed after all), whose files must stay.
                    if other.as_deref() != Some(run.as_str()) {
                        self.delete_files(&files).await;
                    }
                    let by = match (sid, other) {
                        (-1, _) => {
                            "its latest snapshot is no longer in the table's history".to_string()
                        }
                        (sid, Some(run)) => format!("run {run} committed snapshot {sid}"),
                        (sid, None) => format!("snapshot {sid} was committed"),
                    };
                    Err(Error::busy(format!(
                        "job `{job}` is already running elsewhere: since this run started, {by} \
                         to {ident}. Two runs of one job must not write one table at once (each \
                         would load the same rows): this run's commit was abandoned and its \
                         files deleted; the next run resumes from the table's state"
                    ))
                    .with_source(guarded))
                }
                (Err(e), None) => {
                    // The commit may still have landed (e.g. a lost response): the runner
                    // recovers from committed_state(); the files are left for that case.
                    Err(ice(e, "committing to the Iceberg table"))
                }
            }
        })?;
        self.job_snapshot = table.metadata().current_snapshot().map(|s| s.snapshot_id());
        let snapshot = table.metadata().current_snapshot().map(|s| s.snapshot_id());
        self.table = table;
        self.rows = 0;
        Ok(CommitReport {
            files: files.iter().map(|f| f.file_path().to_string()).collect(),
            rows: files.iter().map(|f| f.record_count()).sum(),
            bytes: files.iter().map(|f| f.file_size_in_bytes()).sum(),
            commit_id: snapshot.map(|s| s.to_string()),
        })
    }

    fn commits_once(&self) -> bool {
        self.mode == WriteMode::Overwrite
    }

    fn abort(&mut self) -> Result<()> {
        // Files that cannot even be closed are incomplete: nothing to keep, nothing to report.
        let _ = self.discard();
        Ok(())
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.discard()
    }

    fn committed_state(&mut self) -> Result<Option<CommittedState>> {
        let table = runtime()
            .block_on(self.catalog.load_table(&self.ident))
            .map_err(|e| ice(e, "loading the table"))?;
        if let Some(c) = job_latest(table.metadata(), &self.job)? {
            self.job_snapshot = Some(c.snapshot_id);
            let state = match &c.state {
                Some(text) => serde_json::from_str::<Value>(text).map_err(|e| {
                    Error::data(format!(
                        "snapshot {} has an unreadable dativo.state: {e}",
                        c.snapshot_id
                    ))
                    .with_source(e)
                })?,
                None => Value::Null,
            };
            return Ok(Some(CommittedState {
                state: (!state.is_null()).then_some(state),
                run_id: c.run_id,
            }));
        }
        self.job_snapshot = None;
        Ok(Some(CommittedState {
            state: None,
            run_id: None,
        }))
    }
}

impl Drop for IcebergWriter {
    fn drop(&mut self) {
        // Data files written since the last commit are not in the table: delete them.
        if self.active.is_some() {
            if let Err(e) = self.discard() {
                tracing::warn!(
                    table = %self.ident,
                    error = %secrets::scrub(&e.to_string()),
                    "discarding uncommitted data files failed"
                );
            }
        }
    }
}
