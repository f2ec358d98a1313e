//! The iceberg writer against iceberg-rust's SQL catalog on SQLite in a temporary directory;
//! what it commits is read back with iceberg-rust's own scan.

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use serde_json::{json, Value};

use dativo_core::rt::runtime;
use dativo_core::{Commit, ErrorKind, OpenWriter, WriterContext};

use super::writer::{ice, is_duplicate, load_existing};
use super::{IcebergWriter, IcebergWriterConfig};

fn schema() -> SchemaRef {
    dativo_core::conformance::id_name_schema()
}

fn batch(ids: &[i64]) -> RecordBatch {
    dativo_core::conformance::id_name_batch(ids)
}

fn ctx(job: &str, run: &str) -> WriterContext {
    WriterContext::new(job, run, schema())
}

fn commit(run: &str, seq: u64, state: Value) -> Commit {
    Commit {
        state: Some(state),
        run_id: run.into(),
        sequence: seq,
    }
}

/// A table in a catalog and warehouse of their own.
struct Lake {
    dir: tempfile::TempDir,
}

impl Lake {
    fn new() -> Lake {
        Lake {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn config(&self) -> Value {
        let d = self.dir.path().display();
        json!({
            "table": "ns.events",
            "catalog": {"uri": format!("sqlite://{d}/catalog.db")},
            "warehouse": format!("{d}/wh"),
        })
    }

    /// Every `id` in the table, sorted, as iceberg-rust's scan reads it.
    fn ids(&self) -> Vec<i64> {
        let cfg: IcebergWriterConfig = serde_json::from_value(self.config()).unwrap();
        runtime().block_on(async {
            let table = load_existing(&cfg).await.unwrap();
            super::commit::tests::ids(&table).await
        })
    }

    /// Data files in the warehouse (committed or not).
    fn data_files(&self) -> usize {
        fn walk(p: &std::path::Path, n: &mut usize) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, n);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(&self.dir.path().join("wh"), &mut n);
        n
    }
}

#[test]
fn commits_read_back_with_their_state_and_abort_discards() {
    let lake = Lake::new();
    let mut w = IcebergWriter::open(&lake.config(), &ctx("j", "r1")).unwrap();
    assert_eq!(
        w.committed_state().unwrap().unwrap().state,
        None,
        "a new table has nothing committed"
    );
    w.write(&batch(&[1, 2])).unwrap();
    w.write(&batch(&[3])).unwrap();
    let report = w.commit(&commit("r1", 1, json!({"cursor": 3}))).unwrap();
    assert_eq!(report.rows, 3);
    assert!(report.commit_id.is_some());
    assert_eq!(lake.ids(), vec![1, 2, 3]);
    let files = lake.data_files();

    // Written, then aborted: not in the table, and the files are gone.
    w.write(&batch(&[4, 5])).unwrap();
    assert!(lake.data_files() > files);
    w.abort().unwrap();
    assert_eq!(lake.data_files(), files);
    let report = w.commit(&commit("r1", 2, json!({"cursor": 3}))).unwrap();
    assert_eq!(report.rows, 0);
    assert_eq!(lake.ids(), vec![1, 2, 3]);

    let st = w.committed_state().unwrap().unwrap();
    assert_eq!(st.state, Some(json!({"cursor": 3})));
    assert_eq!(st.run_id.as_deref(), Some("r1"));
    Box::new(w).close().unwrap();

    // A new run of the job sees its state; another job sees none.
    let mut w = IcebergWriter::open(&lake.config(), &ctx("j", "r2")).unwrap();
    assert_eq!(
        w.committed_state().unwrap().unwrap().state,
        Some(json!({"cursor": 3}))
    );
    let mut other = IcebergWriter::open(&lake.config(), &ctx("k", "r3")).unwrap();
    assert_eq!(other.committed_state().unwrap().unwrap().state, None);
}

#[test]
fn dropping_a_writer_deletes_its_uncommitted_files() {
    let lake = Lake::new();
    let mut w = IcebergWriter::open(&lake.config(), &ctx("j", "r1")).unwrap();
    w.write(&batch(&[1])).unwrap();
    w.commit(&commit("r1", 1, json!(1))).unwrap();
    let files = lake.data_files();
    let mut w = IcebergWriter::open(&lake.config(), &ctx("j", "r2")).unwrap();
    w.write(&batch(&[2, 3])).unwrap();
    assert!(lake.data_files() > files);
    drop(w);
    assert_eq!(lake.data_files(), files);
    assert_eq!(lake.ids(), vec![1]);
}

#[test]
fn a_second_run_of_the_job_that_committed_meanwhile_makes_this_one_busy() {
    let lake = Lake::new();
    let mut a = IcebergWriter::open(&lake.config(), &ctx("j", "run-a")).unwrap();
    let mut b = IcebergWriter::open(&lake.config(), &ctx("j", "run-b")).unwrap();
    a.write(&batch(&[1, 2])).unwrap();
    a.commit(&commit("run-a", 1, json!({"cursor": 2}))).unwrap();
    b.write(&batch(&[1, 2])).unwrap();
    let files = lake.data_files();
    let e = b
        .commit(&commit("run-b", 1, json!({"cursor": 2})))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(!e.is_retryable());
    assert_eq!(e.kind().exit_code(), 7);
    assert!(e.to_string().contains("is already running"), "{e}");
    assert!(e.to_string().contains("run-a"), "names the other run: {e}");
    // Nothing twice, and b's files are gone.
    assert_eq!(lake.ids(), vec![1, 2]);
    assert!(lake.data_files() < files);
    // Another job appends to the same table at the same time: no conflict for it.
    let mut k = IcebergWriter::open(&lake.config(), &ctx("k", "run-k")).unwrap();
    a.write(&batch(&[3])).unwrap();
    a.commit(&commit("run-a", 2, json!({"cursor": 3}))).unwrap();
    k.write(&batch(&[10])).unwrap();
    k.commit(&commit("run-k", 1, json!({"cursor": 10})))
        .unwrap();
    assert_eq!(lake.ids(), vec![1, 2, 3, 10]);
}

#[test]
fn iceberg_errors_are_classified_by_kind_and_cause() {
    let conflict = iceberg::Error::new(iceberg::ErrorKind::CatalogCommitConflicts, "lost a race");
    let e = ice(conflict, "committing");
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.is_retryable());
    assert_eq!(e.kind().exit_code(), 7);

    let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "no one there");
    let e = ice(
        iceberg::Error::new(iceberg::ErrorKind::Unexpected, "catalog call failed")
            .with_source(refused),
        "opening the catalog",
    );
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    // The cause is kept: the chain reaches the io error.
    let mut cause = std::error::Error::source(&e);
    let mut found = false;
    while let Some(c) = cause {
        found |= c.downcast_ref::<std::io::Error>().is_some();
        cause = c.source();
    }
    assert!(found, "{}", e.chain());

    // Text that merely mentions a connection is not a connection error.
    let e = ice(
        iceberg::Error::new(
            iceberg::ErrorKind::Unexpected,
            "could not connect the dots: timed out",
        ),
        "writing",
    );
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
}

#[test]
fn an_unreachable_rest_catalog_is_a_connection_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = json!({
        "table": "ns.t",
        "catalog": {"type": "rest", "uri": format!("http://127.0.0.1:{port}/catalog")},
        "warehouse": dir.path().display().to_string(),
    });
    let e = IcebergWriter::open(&cfg, &ctx("j", "r"))
        .err()
        .expect("refused");
    assert_eq!(e.kind(), ErrorKind::Connect, "{}", e.chain());
    assert!(
        e.to_string().contains(&format!("127.0.0.1:{port}/catalog")),
        "{e}"
    );
}

#[test]
fn validate_checks_catalog_compression_and_partitions_naming_the_key() {
    let base = json!({"table": "ns.t"});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        IcebergWriter::validate(&c)
    };
    IcebergWriter::validate(&base).unwrap();
    with("compression", json!("zstd(3)")).unwrap();
    let e = with("catalog", json!({"type": "hive"})).unwrap_err();
    assert_eq!(e.key_path(), Some("catalog.type"), "{e}");
    assert!(e.to_string().contains("use `sql` or `rest`"), "{e}");
    let e = with("catalog", json!({"type": "rest"})).unwrap_err();
    assert_eq!(e.key_path(), Some("catalog.uri"), "{e}");
    let e = with("catalog", json!({"uri": "mysql://h/db"})).unwrap_err();
    assert_eq!(e.key_path(), Some("catalog.uri"), "{e}");
    let e = with("compression", json!("brotli")).unwrap_err();
    assert_eq!(e.key_path(), Some("compression"), "{e}");
    let e = with("partition_by", json!(["day(ts"])).unwrap_err();
    assert_eq!(e.key_path(), Some("partition_by[0]"), "{e}");
    let e = with("table", json!("flat")).unwrap_err();
    assert_eq!(e.key_path(), Some("table"), "{e}");
}

#[test]
fn catalog_credentials_are_secrets_but_paths_are_not() {
    IcebergWriter::validate(&json!({
        "table": "ns.t",
        "catalog": {"uri": "postgres://u:pw-iceberg-test@db.example/cat"}
    }))
    .unwrap();
    assert!(
        !dativo_core::secrets::scrub("postgres://u:pw-iceberg-test@db.example/cat")
            .contains("pw-iceberg-test")
    );
    IcebergWriter::validate(&json!({
        "table": "ns.t",
        "catalog": {"type": "rest", "uri": "http://cat.example/api", "token": "tok-iceberg-test"}
    }))
    .unwrap();
    assert_eq!(dativo_core::secrets::scrub("tok-iceberg-test"), "***");
    // The REST URL and a SQLite path stay readable in messages.
    assert_eq!(
        dativo_core::secrets::scrub("http://cat.example/api"),
        "http://cat.example/api"
    );
}

/// A database error as sqlx reports one, with a SQLSTATE.
#[derive(Debug)]
struct DbError {
    code: &'static str,
    unique: bool,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database error {}", self.code)
    }
}

impl std::error::Error for DbError {}

impl sqlx::error::DatabaseError for DbError {
    fn message(&self) -> &str {
        "a message that says nothing useful"
    }
    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.into())
    }
    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }
    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }
    fn kind(&self) -> sqlx::error::ErrorKind {
        if self.unique {
            sqlx::error::ErrorKind::UniqueViolation
        } else {
            sqlx::error::ErrorKind::Other
        }
    }
}

#[test]
fn the_catalog_creation_race_is_recognized_by_database_codes() {
    let wrapped = |code, unique| {
        let db = sqlx::Error::Database(Box::new(DbError { code, unique }));
        iceberg::Error::new(iceberg::ErrorKind::Unexpected, "operation failed").with_source(db)
    };
    assert!(is_duplicate(&wrapped("23505", true)));
    assert!(is_duplicate(&wrapped("42P07", false)));
    assert!(!is_duplicate(&wrapped("42501", false)));
    // The words alone are not the race.
    let text = iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        "duplicate key value violates unique constraint; relation already exists",
    );
    assert!(!is_duplicate(&text));
}
