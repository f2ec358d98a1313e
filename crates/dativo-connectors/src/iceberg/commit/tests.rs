//! dativo's own commit path on iceberg-rust's SQL catalog (SQLite in a temporary directory,
//! and PostgreSQL at `DATIVO_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/test`):
//! appends with the `iceberg` writer, overwrites and deletes through [`Committer`], read back
//! by iceberg-rust's scan, pyiceberg and DuckDB's Iceberg extension.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, Int64Array, RecordBatch};
use futures_util::TryStreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat, Operation};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::{IcebergWriter as _, IcebergWriterBuilder};
use iceberg::Catalog;
use parquet::file::properties::WriterProperties;
use serde_json::{json, Value};

use dativo_core::rt::runtime;
use dativo_core::{Commit, ErrorKind, OpenWriter, WriterContext};

use super::{Change, Committer, LiveFiles, SnapshotProducer, SqlSwap, Swap};
use crate::iceberg::counting::CountingCatalog;
use crate::iceberg::writer::{open_catalog, sql_catalog_uri, JOB_KEY, RUN_KEY, STATE_KEY};
use crate::iceberg::{IcebergWriter, IcebergWriterConfig};

/// A table `ns.name` of the catalog `catalog`, its warehouse in a temporary directory.
struct Lake {
    dir: tempfile::TempDir,
    /// The PostgreSQL catalog database; `None`: SQLite, in `dir`.
    pg: Option<String>,
    catalog: String,
    ns: String,
    name: String,
}

impl Lake {
    /// `ns.events` of the catalog `dativo` in a SQLite database of its own.
    fn new() -> Lake {
        Lake {
            dir: tempfile::tempdir().unwrap(),
            pg: None,
            catalog: "dativo".into(),
            ns: "ns".into(),
            name: "events".into(),
        }
    }

    /// A table in the shared PostgreSQL catalog database, under catalog and namespace names
    /// no other run uses; its catalog rows are deleted when it is dropped.
    fn postgres() -> Lake {
        let url = std::env::var("DATIVO_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
        let unique = uuid::Uuid::now_v7().simple().to_string();
        Lake {
            dir: tempfile::tempdir().unwrap(),
            pg: Some(url),
            catalog: format!("dativo_test_{unique}"),
            ns: format!("ns_{unique}"),
            name: "events".into(),
        }
    }

    fn db(&self) -> PathBuf {
        self.dir.path().join("catalog.db")
    }

    fn warehouse(&self) -> PathBuf {
        self.dir.path().join("wh")
    }

    fn config(&self) -> Value {
        let uri = match &self.pg {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.db().display()),
        };
        json!({
            "table": format!("{}.{}", self.ns, self.name),
            "catalog": {"uri": uri, "name": self.catalog},
            "warehouse": self.warehouse().display().to_string(),
        })
    }

    fn cfg(&self) -> IcebergWriterConfig {
        serde_json::from_value(self.config()).unwrap()
    }

    /// Append `ids` with the `iceberg` writer (a fast append), as job `j`.
    fn append(&self, ids: &[i64], state: Value) {
        let ctx = WriterContext::new("j", "r-append", dativo_core::conformance::id_name_schema());
        let mut w = IcebergWriter::open(&self.config(), &ctx).unwrap();
        w.write(&dativo_core::conformance::id_name_batch(ids))
            .unwrap();
        w.commit(&Commit {
            state: Some(state),
            run_id: "r-append".into(),
            sequence: 1,
        })
        .unwrap();
        Box::new(w).close().unwrap();
    }

    async fn catalog(&self) -> Arc<CountingCatalog> {
        open_catalog(&self.cfg()).await.unwrap()
    }

    async fn table(&self, catalog: &CountingCatalog) -> Table {
        let ident = iceberg::TableIdent::from_strs([&self.ns, &self.name]).unwrap();
        catalog.load_table(&ident).await.unwrap()
    }

    fn swap(&self) -> SqlSwap {
        SqlSwap::new(&sql_catalog_uri(&self.cfg()).unwrap(), &self.catalog)
    }

    /// The table's row in the catalog: (metadata_location, previous_metadata_location).
    async fn row(&self) -> (String, Option<String>) {
        use sqlx::Connection;
        let uri = sql_catalog_uri(&self.cfg()).unwrap();
        let select = |p: [&str; 3]| {
            format!(
                "SELECT metadata_location, previous_metadata_location FROM iceberg_tables \
                 WHERE catalog_name = {} AND table_namespace = {} AND table_name = {}",
                p[0], p[1], p[2]
            )
        };
        if self.pg.is_some() {
            let mut c = sqlx::PgConnection::connect(&uri).await.unwrap();
            sqlx::query_as(&select(["$1", "$2", "$3"]))
                .bind(&self.catalog)
                .bind(&self.ns)
                .bind(&self.name)
                .fetch_one(&mut c)
                .await
                .unwrap()
        } else {
            let mut c = sqlx::SqliteConnection::connect(&uri).await.unwrap();
            sqlx::query_as(&select(["?", "?", "?"]))
                .bind(&self.catalog)
                .bind(&self.ns)
                .bind(&self.name)
                .fetch_one(&mut c)
                .await
                .unwrap()
        }
    }

    /// Avro files (manifests, manifest lists) in the table's metadata directory.
    fn avro_files(&self) -> usize {
        std::fs::read_dir(
            self.warehouse()
                .join(format!("{}/{}/metadata", self.ns, self.name)),
        )
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".avro"))
        .count()
    }

    fn metadata_files(&self) -> usize {
        let dir = self
            .warehouse()
            .join(format!("{}/{}/metadata", self.ns, self.name));
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".metadata.json"))
            .count()
    }
}

/// A PostgreSQL lake's catalog rows are shared with other runs: they are deleted.
impl Drop for Lake {
    fn drop(&mut self) {
        use sqlx::Connection;
        let Some(url) = &self.pg else { return };
        let cleanup = async {
            let mut c = sqlx::PgConnection::connect(url).await?;
            for table in ["iceberg_tables", "iceberg_namespace_properties"] {
                sqlx::query(&format!("DELETE FROM {table} WHERE catalog_name = $1"))
                    .bind(&self.catalog)
                    .execute(&mut c)
                    .await?;
            }
            c.close().await
        };
        if let Err(e) = runtime().block_on(cleanup) {
            let _ = writeln!(
                std::io::stderr(),
                "could not delete the catalog rows of {}: {e}",
                self.catalog
            );
        }
    }
}

/// Every `id` of the table's current snapshot, sorted, as iceberg-rust's scan reads it.
pub(in crate::iceberg) async fn ids(table: &Table) -> Vec<i64> {
    let batches: Vec<RecordBatch> = table
        .scan()
        .select_all()
        .build()
        .unwrap()
        .to_arrow()
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let mut out: Vec<i64> = batches
        .iter()
        .flat_map(|b| {
            let c = b.column(b.schema().index_of("id").unwrap()).clone();
            let c = c.as_any().downcast_ref::<Int64Array>().unwrap().clone();
            (0..c.len()).map(move |i| c.value(i)).collect::<Vec<_>>()
        })
        .collect();
    out.sort_unstable();
    out
}

/// New data files holding `ids`, written under the table's `data/` as the writer does.
async fn write_files(table: &Table, ids: &[i64]) -> Vec<DataFile> {
    let md = table.metadata();
    let schema = Arc::new(schema_to_arrow_schema(md.current_schema()).unwrap());
    let b = dativo_core::conformance::id_name_batch(ids);
    let batch = RecordBatch::try_new(schema, b.columns().to_vec()).unwrap();
    let pq = ParquetWriterBuilder::new(WriterProperties::default(), md.current_schema().clone());
    let rolling = RollingFileWriterBuilder::new_with_default_file_size(
        pq,
        table.file_io().clone(),
        DefaultLocationGenerator::new(md).unwrap(),
        DefaultFileNameGenerator::new(
            format!("test-{}", uuid::Uuid::now_v7()),
            None,
            DataFileFormat::Parquet,
        ),
    );
    let mut w = DataFileWriterBuilder::new(rolling)
        .build(None)
        .await
        .unwrap();
    w.write(batch).await.unwrap();
    w.close().await.unwrap()
}

fn props(state: Value) -> HashMap<String, String> {
    HashMap::from([
        (STATE_KEY.to_string(), state.to_string()),
        (JOB_KEY.to_string(), "j".to_string()),
        (RUN_KEY.to_string(), "r-over".to_string()),
    ])
}

fn summary(table: &Table) -> (Operation, HashMap<String, String>) {
    let s = table.metadata().current_snapshot().unwrap().summary();
    (s.operation.clone(), s.additional_properties.clone())
}

#[test]
fn overwrite_replaces_every_row_with_the_state_then_appends_and_deletes_build_on_it() {
    let lake = Lake::new();
    overwrite_then_append_and_delete(&lake);
    readers_agree(&lake, &[10, 11]);
}

#[test]
fn on_postgres_overwrite_replaces_every_row_then_appends_and_deletes_build_on_it() {
    overwrite_then_append_and_delete(&Lake::postgres());
}

/// Two appends, an overwrite through [`Committer`] (its rows, summary and catalog row
/// checked), an append and a delete; the table then holds 10 and 11.
fn overwrite_then_append_and_delete(lake: &Lake) {
    lake.append(&[1, 2, 3], json!({"cursor": 3}));
    lake.append(&[4], json!({"cursor": 4}));
    runtime().block_on(async {
        let catalog = lake.catalog().await;
        let swap = lake.swap();
        let base = lake.table(&catalog).await;
        let live = LiveFiles::load(&base).await.unwrap();
        assert_eq!(live.files.len(), 2);
        assert_eq!(live.manifests.len(), 2);
        assert_eq!(live.data_records(), 4);
        let (before, _) = lake.row().await;
        assert_eq!(Some(before.as_str()), base.metadata_location());

        let files = write_files(&base, &[10, 11]).await;
        let mut change = Change::overwrite_all(&live, files);
        change.properties = props(json!({"cursor": 11}));
        let t = Committer::new(catalog.as_ref(), &swap)
            .commit(
                &base,
                &LiveFiles::load(&base).await.unwrap(),
                SnapshotProducer::new(&base, change),
                None,
            )
            .await
            .unwrap();
        assert_eq!(ids(&t).await, vec![10, 11]);
        assert_eq!(ids(&lake.table(&catalog).await).await, vec![10, 11]);

        let (op, p) = summary(&t);
        assert_eq!(op, Operation::Overwrite);
        assert_eq!(p[STATE_KEY], r#"{"cursor":11}"#);
        assert_eq!(p[RUN_KEY], "r-over");
        assert_eq!(p["added-records"], "2");
        assert_eq!(p["deleted-records"], "4");
        assert_eq!(p["added-data-files"], "1");
        assert_eq!(p["deleted-data-files"], "2");
        assert_eq!(p["total-records"], "2");
        assert_eq!(p["total-data-files"], "1");
        assert_eq!(p["total-delete-files"], "0");
        let size: u64 = p["added-files-size"].parse().unwrap();
        assert_eq!(p["total-files-size"], size.to_string());
        let snap = t.metadata().current_snapshot().unwrap();
        assert_eq!(
            snap.parent_snapshot_id(),
            base.metadata().current_snapshot_id()
        );
        assert_eq!(
            snap.sequence_number(),
            base.metadata().next_sequence_number()
        );

        // The catalog row moved by compare-and-swap, remembering where it came from.
        let (now, prev) = lake.row().await;
        assert_eq!(Some(now.as_str()), t.metadata_location());
        assert_eq!(prev.as_deref(), Some(before.as_str()));
        assert!(now.contains("/metadata/00003-"), "{now}");
        // The new metadata records the old one in its log.
        assert_eq!(
            t.metadata().metadata_log().last().unwrap().metadata_file,
            before
        );
    });

    // The job's state is the overwrite's (exactly once carries on through it).
    let ctx = WriterContext::new("j", "r3", dativo_core::conformance::id_name_schema());
    let mut w = IcebergWriter::open(&lake.config(), &ctx).unwrap();
    let st = w.committed_state().unwrap().unwrap();
    assert_eq!(st.state, Some(json!({"cursor": 11})));
    assert_eq!(st.run_id.as_deref(), Some("r-over"));
    drop(w);

    // iceberg-rust's fast append builds on the snapshot; then one file is removed: only
    // its manifest is rewritten.
    lake.append(&[12], json!({"cursor": 12}));
    runtime().block_on(async {
        let catalog = lake.catalog().await;
        let base = lake.table(&catalog).await;
        assert_eq!(ids(&base).await, vec![10, 11, 12]);
        let live = LiveFiles::load(&base).await.unwrap();
        // The overwrite's two manifests of deleted entries, carried along by iceberg-rust's
        // append, its added files, and the append's.
        assert_eq!(live.manifests.len(), 4);
        let newest = base.metadata().current_snapshot_id().unwrap();
        let gone = live.files.iter().find(|f| f.snapshot_id == newest).unwrap();
        let kept = live.files.iter().find(|f| f.snapshot_id != newest).unwrap();
        let kept_manifest = live.manifests[kept.manifest].file.manifest_path.clone();
        let change = Change {
            remove: BTreeSet::from([gone.path().to_string()]),
            properties: props(json!({"cursor": 13})),
            ..Default::default()
        };
        let t = Committer::new(catalog.as_ref(), &lake.swap())
            .commit(
                &base,
                &LiveFiles::load(&base).await.unwrap(),
                SnapshotProducer::new(&base, change),
                None,
            )
            .await
            .unwrap();
        assert_eq!(ids(&t).await, vec![10, 11]);
        let (op, p) = summary(&t);
        assert_eq!(op, Operation::Delete);
        assert_eq!(p["deleted-records"], "1");
        assert_eq!(p["total-records"], "2");
        assert!(!p.contains_key("added-records"), "{p:?}");
        let after = LiveFiles::load(&t).await.unwrap();
        assert_eq!(after.files.len(), 1);
        // The untouched manifest is carried over as it is, the one holding the removed
        // file rewritten, manifests with no live file dropped.
        assert_eq!(after.manifests.len(), 2);
        assert!(
            after
                .manifests
                .iter()
                .any(|m| m.file.manifest_path == kept_manifest),
            "the untouched manifest is carried over as it is"
        );
        // The file kept its original sequence numbers.
        let f = &after.files[0];
        let before = live.get(f.path()).unwrap();
        assert_eq!(f.sequence_number, before.sequence_number);
        assert_eq!(f.snapshot_id, before.snapshot_id);
    });
}

#[test]
fn two_commits_on_one_base_the_second_is_a_conflict_and_the_table_stays_intact() {
    two_commits_on_one_base(&Lake::new());
}

#[test]
fn on_postgres_two_commits_on_one_base_the_second_is_a_conflict_and_the_table_stays_intact() {
    two_commits_on_one_base(&Lake::postgres());
}

/// Two swaps on one base: the second is a conflict, nothing changed; the committer cannot
/// rebuild an overwrite on a moved table, but rebuilds and lands an append.
fn two_commits_on_one_base(lake: &Lake) {
    lake.append(&[1, 2], json!(1));
    runtime().block_on(async {
        let catalog = lake.catalog().await;
        let swap = lake.swap();
        let base = lake.table(&catalog).await;
        let live = LiveFiles::load(&base).await.unwrap();

        let mut a = SnapshotProducer::new(
            &base,
            Change::overwrite_all(&live, write_files(&base, &[5]).await),
        );
        let mut b = SnapshotProducer::new(
            &base,
            Change::overwrite_all(&live, write_files(&base, &[6]).await),
        );
        let pa = a.produce(&base, &live).await.unwrap();
        let pb = b.produce(&base, &live).await.unwrap();
        let files = lake.metadata_files();
        let t = swap.swap(&base, pa.requirements, pa.updates).await.unwrap();
        let (after_a, _) = lake.row().await;
        let e = swap
            .swap(&base, pb.requirements, pb.updates)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(e.is_retryable());
        // Intact: A's rows, A's metadata, B's metadata file deleted.
        assert_eq!(lake.row().await.0, after_a);
        assert_eq!(lake.metadata_files(), files + 1);
        assert_eq!(ids(&lake.table(&catalog).await).await, vec![5]);
        assert_eq!(
            t.metadata().current_snapshot_id(),
            Some(pa.snapshot_id),
            "{:?}",
            t.metadata_location()
        );

        // Through the committer, B (planned on the old base) cannot be rebuilt: the files
        // it replaces are gone. A conflict to plan again, nothing changed.
        let c = SnapshotProducer::new(
            &base,
            Change::overwrite_all(&live, write_files(&base, &[7]).await),
        );
        let e = Committer::new(catalog.as_ref(), &swap)
            .commit(&base, &LiveFiles::load(&base).await.unwrap(), c, None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(e.to_string().contains("planned again"), "{e}");
        assert_eq!(lake.row().await.0, after_a);
        assert_eq!(ids(&lake.table(&catalog).await).await, vec![5]);
    });
    // An overwrite planned on A's snapshot refuses files appended since.
    let head = runtime().block_on(async { lake.table(&*lake.catalog().await).await });
    lake.append(&[8], json!(2));
    runtime().block_on(async {
        let catalog = lake.catalog().await;
        let swap = lake.swap();
        let head_live = LiveFiles::load(&head).await.unwrap();
        let over = SnapshotProducer::new(
            &head,
            Change::overwrite_all(&head_live, write_files(&head, &[9]).await),
        );
        let e = Committer::new(catalog.as_ref(), &swap)
            .commit(&head, &LiveFiles::load(&head).await.unwrap(), over, None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        assert!(e.to_string().contains("added 1 files"), "{e}");
        let (now, prev) = lake.row().await;
        assert_eq!(
            prev.as_deref(),
            head.metadata_location(),
            "only the append moved it"
        );
        assert_ne!(Some(now.as_str()), head.metadata_location());
        assert_eq!(ids(&lake.table(&catalog).await).await, vec![5, 8]);

        // A change that removes nothing is rebuilt on the new state and lands.
        let add = SnapshotProducer::new(
            &head,
            Change {
                add: write_files(&head, &[20]).await,
                ..Default::default()
            },
        );
        let t = Committer::new(catalog.as_ref(), &swap)
            .commit(&head, &LiveFiles::load(&head).await.unwrap(), add, None)
            .await
            .unwrap();
        assert_eq!(ids(&t).await, vec![5, 8, 20]);
        let (op, p) = summary(&t);
        assert_eq!(op, Operation::Append);
        assert_eq!(p["total-records"], "3");
    });
}

#[test]
fn a_check_that_fails_stops_the_commit_and_its_manifests_are_deleted() {
    let lake = Lake::new();
    lake.append(&[1], json!(1));
    runtime().block_on(async {
        let catalog = lake.catalog().await;
        let base = lake.table(&catalog).await;
        let live = LiveFiles::load(&base).await.unwrap();
        let avro = || lake.avro_files();
        let n = avro();
        let p = SnapshotProducer::new(
            &base,
            Change::overwrite_all(&live, write_files(&base, &[2]).await),
        );
        let refuse = |_: &Table| Err(dativo_core::Error::busy("another run of the job"));
        let e = Committer::new(catalog.as_ref(), &lake.swap())
            .commit(
                &base,
                &LiveFiles::load(&base).await.unwrap(),
                p,
                Some(&refuse),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Busy);
        assert_eq!(avro(), n);
        assert_eq!(ids(&lake.table(&catalog).await).await, vec![1]);
    });
}

/// pyiceberg and DuckDB's Iceberg extension, from the project's venv, read `expect`.
fn readers_agree(lake: &Lake, expect: &[i64]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // The test virtualenv: `DATIVO_VENV` (as ./scripts/test uses it), else the repository's.
    let venv = std::env::var_os("DATIVO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv"));
    let python = venv.join("bin/python");
    let duck = std::env::var_os("DATIVO_DUCKDB_ICEBERG")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/duckdb-iceberg"));
    if !python.is_file() || !duck.is_dir() {
        let msg = format!(
            "SKIPPED: pyiceberg/DuckDB check: {} or {} is missing (./scripts/test installs them)",
            python.display(),
            duck.display()
        );
        assert!(
            std::env::var_os("DATIVO_REQUIRE_PLUGINS").is_none(),
            "{msg} (DATIVO_REQUIRE_PLUGINS is set)"
        );
        let _ = writeln!(std::io::stderr(), "{msg}");
        return;
    }
    let script = r#"
import json, sys
from pyiceberg.catalog.sql import SqlCatalog
cat = SqlCatalog("dativo", uri="sqlite:///" + sys.argv[1], warehouse="file://" + sys.argv[2])
t = cat.load_table("ns.events")
ids = sorted(t.scan().to_arrow().column("id").to_pylist())
snaps = [t.snapshot_by_id(h.snapshot_id) for h in t.history()]
ops = [s.summary.operation.value for s in snaps]
over = next(s for s in snaps if s.summary.operation.value == "overwrite")
at = sorted(t.scan(snapshot_id=over.snapshot_id).to_arrow().column("id").to_pylist())
state = over.summary["dativo.state"]
print(json.dumps({"ids": ids, "ops": ops, "at_overwrite": at, "state": state, "metadata": t.metadata_location}))
"#;
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(lake.db())
        .arg(lake.warehouse())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyiceberg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["ids"], json!(expect), "pyiceberg");
    assert_eq!(
        got["ops"],
        json!(["append", "append", "overwrite", "append", "delete"]),
        "pyiceberg sees each snapshot's operation"
    );
    assert_eq!(
        got["at_overwrite"],
        json!([10, 11]),
        "pyiceberg, the overwrite's snapshot"
    );
    assert_eq!(
        got["state"],
        json!(r#"{"cursor":11}"#),
        "pyiceberg, the overwrite's state"
    );
    let metadata = got["metadata"]
        .as_str()
        .unwrap()
        .trim_start_matches("file://")
        .to_string();
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/e2e/duckdb_iceberg.py"))
        .arg("SELECT id FROM iceberg_scan('{metadata}') ORDER BY id")
        .arg(&metadata)
        .env("PYTHONPATH", &duck)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
    let duck_ids: Vec<i64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_i64().unwrap())
        .collect();
    assert_eq!(duck_ids, expect, "DuckDB");
    eprintln!("pyiceberg read {got}; DuckDB read {rows}");
}

#[test]
fn totals_add_and_subtract_and_a_missing_previous_total_is_left_out() {
    use iceberg::spec::Summary;
    let prev = Summary {
        operation: Operation::Append,
        additional_properties: HashMap::from([
            ("total-records".to_string(), "10".to_string()),
            ("total-data-files".to_string(), "3".to_string()),
            ("total-files-size".to_string(), "not a number".to_string()),
        ]),
    };
    let mut p = HashMap::from([
        ("added-records".to_string(), "4".to_string()),
        ("deleted-records".to_string(), "6".to_string()),
        ("deleted-data-files".to_string(), "3".to_string()),
        ("added-files-size".to_string(), "100".to_string()),
    ]);
    super::produce::update_totals(&mut p, Some(&prev));
    assert_eq!(p["total-records"], "8");
    assert_eq!(p["total-data-files"], "0");
    assert!(!p.contains_key("total-files-size"), "unparsable: left out");
    assert!(!p.contains_key("total-delete-files"), "missing: left out");
    // No previous snapshot: totals start at 0.
    let mut p = HashMap::from([("added-records".to_string(), "2".to_string())]);
    super::produce::update_totals(&mut p, None);
    assert_eq!(p["total-records"], "2");
    assert_eq!(p["total-equality-deletes"], "0");
}

// ----------------------------------------------------------------------------- REST swap

/// A request the stub REST catalog received.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    /// The path and query, as sent (percent-encoded).
    target: String,
    /// `Authorization`, if sent.
    authorization: Option<String>,
    body: String,
}

type Answer = dyn Fn(&Received) -> (u16, String) + Send + Sync;

/// A stub HTTP server on a loopback port answering each request with `answer`; its base URL
/// and what it received.
fn stub_catalog(answer: Box<Answer>) -> (String, Arc<std::sync::Mutex<Vec<Received>>>) {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/catalog", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut words = line.split_whitespace();
            let (method, target) = (
                words.next().unwrap_or("").to_string(),
                words.next().unwrap_or("").to_string(),
            );
            let (mut len, mut authorization) = (0usize, None);
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap(),
                    "authorization" => authorization = Some(v.trim().to_string()),
                    _ => {}
                }
            }
            let mut body = vec![0; len];
            r.read_exact(&mut body).unwrap();
            let req = Received {
                method,
                target,
                authorization,
                body: String::from_utf8(body).unwrap(),
            };
            let (code, text) = answer(&req);
            log.lock().unwrap().push(req);
            let head = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n",
                text.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(text.as_bytes());
        }
    });
    (url, seen)
}

/// The lake's table (one append), under the two-level namespace `a.b`.
async fn rest_base(lake: &Lake) -> Table {
    let catalog = lake.catalog().await;
    let t = lake.table(&catalog).await;
    Table::builder()
        .identifier(iceberg::TableIdent::from_strs(["a", "b", "events"]).unwrap())
        .metadata_location(t.metadata_location().unwrap())
        .metadata(t.metadata_ref())
        .file_io(t.file_io().clone())
        .runtime(iceberg::Runtime::try_current().unwrap())
        .build()
        .unwrap()
}

const COMMIT_PATH: &str = "/catalog/v1/wh%2F1/namespaces/a%1Fb/tables/events";

/// The stub's config answer: the prefix `wh/1` (one segment, encoded) from `overrides`.
fn config_answer() -> (u16, String) {
    let prefix = json!({"defaults": {"prefix": "not-this"}, "overrides": {"prefix": "wh%2F1"}});
    (200, prefix.to_string())
}

#[test]
fn a_rest_commit_answered_409_is_a_conflict_and_goes_to_the_prefixed_table_path() {
    use super::{RestAuth, RestSwap};
    let lake = Lake::new();
    lake.append(&[1], json!(1));
    let (url, seen) = stub_catalog(Box::new(|r| match (r.method.as_str(), r.target.as_str()) {
        ("GET", t) if t.starts_with("/catalog/v1/config") => config_answer(),
        ("POST", COMMIT_PATH) => (
            409,
            json!({"error": {"message": "Requirement failed: branch main has changed",
                   "type": "CommitFailedException", "code": 409}})
            .to_string(),
        ),
        _ => (404, String::new()),
    }));
    let e = runtime().block_on(async {
        let base = rest_base(&lake).await;
        let swap = RestSwap::new(
            &url,
            Some("/w h".into()),
            RestAuth::Token(dativo_core::secrets::Secret::new("tok-123456")),
        )
        .unwrap();
        let uuid = base.metadata().uuid();
        swap.swap(
            &base,
            vec![iceberg::TableRequirement::UuidMatch { uuid }],
            vec![],
        )
        .await
        .unwrap_err()
    });
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.message().contains("branch main has changed"), "{e}");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].target, "/catalog/v1/config?warehouse=%2Fw+h");
    assert_eq!(
        (seen[1].method.as_str(), seen[1].target.as_str()),
        ("POST", COMMIT_PATH)
    );
    for r in &seen {
        assert_eq!(r.authorization.as_deref(), Some("Bearer tok-123456"));
    }
    let body: Value = serde_json::from_str(&seen[1].body).unwrap();
    assert_eq!(
        body["identifier"],
        json!({"namespace": ["a", "b"], "name": "events"})
    );
    assert_eq!(body["requirements"][0]["type"], "assert-table-uuid");
    assert_eq!(body["updates"], json!([]));
}

#[test]
fn rest_commit_outcomes_committed_unknown_refused_and_unreachable() {
    use super::{RestAuth, RestSwap};
    use dativo_core::secrets::Secret;
    let lake = Lake::new();
    lake.append(&[1], json!(1));
    let metadata = runtime()
        .block_on(async { serde_json::to_value(rest_base(&lake).await.metadata()).unwrap() });
    // The commit's answer, by test case: its status; 200 returns the table's metadata.
    let status = Arc::new(std::sync::atomic::AtomicU16::new(0));
    let s = status.clone();
    let answered = metadata.clone();
    let (url, seen) = stub_catalog(Box::new(move |r| {
        match (r.method.as_str(), r.target.as_str()) {
        ("POST", "/catalog/v1/oauth/tokens") => {
            (200, json!({"access_token": "issued-tok-789", "token_type": "bearer"}).to_string())
        }
        ("GET", "/catalog/v1/config") => config_answer(),
        ("POST", COMMIT_PATH) => match s.load(std::sync::atomic::Ordering::SeqCst) {
            200 => (
                200,
                json!({"metadata-location": "file:///wh/a/b/events/metadata/00009-x.metadata.json",
                       "metadata": answered})
                .to_string(),
            ),
            401 => (
                401,
                json!({"error": {"message": "token issued-tok-789 expired", "type": "NotAuthorizedException", "code": 401}})
                    .to_string(),
            ),
            code => (code, "<html>upstream failed</html>".into()),
        },
        _ => (404, String::new()),
    }
    }));
    let credential = Secret::new("me:cl13nt-s3cret");
    let swap = RestSwap::new(&url, None, RestAuth::Credential(credential)).unwrap();
    let outcome = |code: u16| {
        status.store(code, std::sync::atomic::Ordering::SeqCst);
        runtime().block_on(async { swap.swap(&rest_base(&lake).await, vec![], vec![]).await })
    };
    let t = outcome(200).unwrap();
    assert_eq!(
        t.metadata_location(),
        Some("file:///wh/a/b/events/metadata/00009-x.metadata.json")
    );
    assert_eq!(t.identifier().to_string(), "a.b.events");
    assert_eq!(serde_json::to_value(t.metadata()).unwrap(), metadata);
    // The outcome is unknown: a non-conflict error (the committer reads the table).
    for code in [500, 502, 503, 504] {
        let e = outcome(code).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient, "{code}: {e}");
        assert!(e.message().contains("outcome is unknown"), "{e}");
    }
    let e = outcome(401).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Auth, "{e}");
    assert!(
        e.message().contains("expired") && !e.message().contains("issued-tok-789"),
        "{e}"
    );
    let e = outcome(400).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Config, "{e}");
    assert!(e.message().contains("upstream failed"), "{e}");
    // The credential was exchanged once; the token it gave authorizes everything else.
    let seen = seen.lock().unwrap().clone();
    let token: Vec<_> = seen
        .iter()
        .filter(|r| r.target.ends_with("/oauth/tokens"))
        .collect();
    assert_eq!(token.len(), 1, "{seen:?}");
    assert_eq!(
        token[0].body,
        "grant_type=client_credentials&client_id=me&client_secret=cl13nt-s3cret&scope=catalog"
    );
    assert_eq!(token[0].authorization, None);
    for r in seen.iter().filter(|r| !r.target.ends_with("/oauth/tokens")) {
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer issued-tok-789"),
            "{r:?}"
        );
    }
    // Nobody listening: unreachable, not a conflict.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = RestSwap::new(&format!("http://127.0.0.1:{port}"), None, RestAuth::None).unwrap();
    let e = runtime()
        .block_on(async { gone.swap(&rest_base(&lake).await, vec![], vec![]).await })
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
}

/// A manifest rewrite that loses the race to an append keeps what it wrote: the next
/// attempt carries the append's manifest over, reuses the merged manifest and writes only a
/// manifest list; `load_reusing` reads the same live files as a fresh load.
#[test]
fn a_manifest_rewrite_that_loses_to_an_append_reuses_its_merged_manifest() {
    let lake = Lake::new();
    for id in 1..=4 {
        lake.append(&[id], json!(id));
    }
    let staged = runtime().block_on(async {
        let catalog = lake.catalog().await;
        let base = lake.table(&catalog).await;
        let live = LiveFiles::load(&base).await.unwrap();
        assert_eq!(live.manifests.len(), 4);
        let mut p = SnapshotProducer::new(
            &base,
            Change {
                rewrite_manifests: true,
                operation: Some(Operation::Replace),
                ..Default::default()
            },
        );
        let first = p.produce(&base, &live).await.unwrap();
        (catalog, base, live, p, first)
    });
    // Another writer commits first: the first attempt's swap fails.
    let (catalog, base, live, mut p, first) = staged;
    lake.append(&[5], json!(5));
    runtime().block_on(async {
        let avro = || lake.avro_files();
        let head = lake.table(&catalog).await;
        let e = lake
            .swap()
            .swap(&base, first.requirements, first.updates)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        p.discard_attempt(head.file_io()).await;

        let reused = LiveFiles::load_reusing(&head, Some(&live)).await.unwrap();
        let fresh = LiveFiles::load(&head).await.unwrap();
        let entries = |l: &LiveFiles| {
            let mut v: Vec<(String, i64, i64, String)> = l
                .files
                .iter()
                .map(|f| {
                    (
                        f.path().to_string(),
                        f.snapshot_id,
                        f.sequence_number,
                        l.manifests[f.manifest].file.manifest_path.clone(),
                    )
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(entries(&reused), entries(&fresh));
        assert_eq!(reused.manifests.len(), 5);

        p.validate(&live, &reused).unwrap();
        let before = avro();
        let second = p.produce(&head, &reused).await.unwrap();
        assert_eq!(avro(), before + 1, "only a manifest list is written again");
        let t = lake
            .swap()
            .swap(&head, second.requirements, second.updates)
            .await
            .unwrap();
        let after = LiveFiles::load(&t).await.unwrap();
        assert_eq!(
            after.manifests.len(),
            2,
            "the merged manifest and the append's"
        );
        let (op, s) = summary(&t);
        assert_eq!(op, Operation::Replace);
        assert_eq!(s["manifests-replaced"], "4");
        assert_eq!(s["manifests-created"], "1");
        assert_eq!(s["manifests-kept"], "1");
        assert_eq!(ids(&t).await, vec![1, 2, 3, 4, 5]);
    });
}
