//! The native plugin host against a real plugin library: `tests/plugins/broken`
//! (`libdativo_test_broken.so`), built with
//! `cargo build --release -p dativo-test-broken-plugin`. Without the library the tests say so
//! on the terminal and check nothing (a plain `cargo test` does not build cdylibs of other
//! packages); `DATIVO_REQUIRE_PLUGINS=1` turns that into a failure.

use std::io::Write;
use std::path::PathBuf;

use dativo_core::{
    conformance, open_reader, open_writer, Commit, ErrorKind, ReaderContext, WriterContext,
};
use dativo_plugins::native::NativeLibrary;
use dativo_plugins::{resolve, Side};
use serde_json::{json, Value};

/// The broken-plugin library, or `None` (after saying so) when it has not been built.
fn library() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let file = format!(
        "{}dativo_test_broken{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = target.join("release").join(file);
    if path.is_file() {
        return Some(path);
    }
    let msg = format!(
        "SKIPPED: {} is missing; build it with `cargo build --release -p dativo-test-broken-plugin`",
        path.display()
    );
    assert!(
        std::env::var_os("DATIVO_REQUIRE_PLUGINS").is_none(),
        "{msg} (DATIVO_REQUIRE_PLUGINS is set)"
    );
    // Straight to the terminal: libtest captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "{msg}");
    None
}

fn rctx(state: Option<Value>) -> ReaderContext {
    ReaderContext::new("j", "r", state)
}

fn implementation(lib: &std::path::Path, name: &str) -> String {
    format!("{}#{name}", lib.display())
}

#[test]
fn the_library_loads_with_its_manifest() {
    let Some(lib) = library() else { return };
    let l = NativeLibrary::load(&lib).unwrap();
    assert_eq!(l.manifest.name, "broken");
    assert_eq!(l.abi_version, dativo_plugin_sdk::abi::ABI_VERSION);
    let readers: Vec<&str> = l.manifest.readers.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        readers,
        ["good", "wrong_schema", "error_mid_stream", "panic"]
    );
    // Loaded once per process.
    assert!(std::sync::Arc::ptr_eq(
        &l,
        &NativeLibrary::load(&lib).unwrap()
    ));
    let e = resolve(&implementation(&lib, "nope"), Side::Reader, None)
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("has no reader `nope`"), "{e}");
}

#[test]
fn a_good_reader_reads_and_resumes_from_its_state() {
    let Some(lib) = library() else { return };
    let r = resolve(&implementation(&lib, "good"), Side::Reader, None).unwrap();
    assert_eq!(r.label, "plugin 'broken' reader 'good'");
    let config = json!({"total": 350, "batch_rows": 100});
    let mut opened = open_reader(r.reader(), &config, &rctx(None)).unwrap();
    assert_eq!(opened.schema().fields().len(), 2);
    let mut rows = 0;
    while let Some(b) = opened.next_batch().unwrap() {
        rows += b.num_rows();
    }
    assert_eq!(rows, 350);
    let state = opened.state().unwrap();
    assert_eq!(state, Some(json!({"next_id": 351})));
    opened.close().unwrap();
    // From the final state: nothing more.
    let mut again = open_reader(r.reader(), &config, &rctx(state)).unwrap();
    assert!(again.next_batch().unwrap().is_none());
    // Dropped without close: the host closes and frees the instance.
    drop(again);
    let report = conformance::check_reader(&mut || Ok(r.reader()), &config);
    assert!(report.passed(), "{report:?}");
}

#[test]
fn misbehaving_readers_fail_with_the_right_kind() {
    let Some(lib) = library() else { return };
    for (name, kind, text) in [
        (
            "wrong_schema",
            ErrorKind::Plugin,
            "does not match the schema from get_schema",
        ),
        ("error_mid_stream", ErrorKind::Data, "deliberate test error"),
        (
            "panic",
            ErrorKind::Plugin,
            "crashed (a bug in the plugin): panicked in read_batch",
        ),
    ] {
        let r = resolve(&implementation(&lib, name), Side::Reader, None).unwrap();
        let mut opened = open_reader(r.reader(), &json!({}), &rctx(None)).unwrap();
        // Two good batches first.
        for _ in 0..2 {
            assert_eq!(opened.next_batch().unwrap().unwrap().num_rows(), 100);
        }
        let e = opened.next_batch().err().unwrap();
        assert_eq!(e.kind(), kind, "{name}: {e}");
        assert!(e.to_string().contains(text), "{name}: {e}");
        // The instance stays usable for close after a failure.
        opened.close().unwrap();
    }
}

#[test]
fn writer_failures_keep_their_kind() {
    let Some(lib) = library() else { return };
    let w = resolve(
        &implementation(&lib, "error_on_finalize"),
        Side::Writer,
        None,
    )
    .unwrap();
    let batch = conformance::sample_batch();
    let ctx = WriterContext::new("j", "r", batch.schema());
    let mut opened = open_writer(w.writer(), &json!({}), &ctx).unwrap();
    opened.write(&batch).unwrap();
    let e = opened
        .commit(&Commit {
            state: None,
            run_id: "r".into(),
            sequence: 1,
        })
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    assert!(
        e.to_string().contains("finalize: deliberate test failure"),
        "{e}"
    );
    opened.abort().unwrap();
    opened.close().unwrap();
}

#[test]
fn a_job_file_may_not_load_a_library_from_elsewhere() {
    let Some(lib) = library() else { return };
    let jobs = tempfile::tempdir().unwrap();
    let c = dativo_core::job::CustomImplementation::new(implementation(&lib, "good"));
    let e = dativo_plugins::resolve_custom(&c, Side::Reader, Some(jobs.path()))
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Config);
    assert!(e.message().contains("--allow-plugin-path"), "{e}");
    // A copy beside the job file is fine.
    std::fs::copy(&lib, jobs.path().join("libbroken_copy.so")).unwrap();
    let c = dativo_core::job::CustomImplementation::new("./libbroken_copy.so#good");
    let r = dativo_plugins::resolve_custom(&c, Side::Reader, Some(jobs.path())).unwrap();
    assert_eq!(r.label, "plugin 'broken' reader 'good'");
}
