//! The process-wide async runtime for connectors that speak async protocols (PostgreSQL,
//! Iceberg catalogs, object storage), the Flight plugin host and `serve`'s HTTP API. Reader and
//! writer methods run on their own threads and block on it (never on its workers); it lives as
//! long as the process, as iceberg-rust's tables require.

/// The runtime: one I/O worker thread per core, at least two (so the HTTP API of `serve` and
/// the connectors' I/O never wait on one another), timers enabled.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cores.max(2))
            .thread_name("dativo-io")
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}
