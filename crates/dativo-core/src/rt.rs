//! The process-wide async runtime for connectors that speak async protocols (PostgreSQL,
//! Iceberg catalogs, object storage). Reader and writer methods run on their own threads and
//! block on it; it lives as long as the process, as iceberg-rust's tables require.

/// The runtime (two I/O worker threads, timers enabled).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dativo-io")
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}
