//! The built-in `postgres` reader and `parquet` writer, unchanged, behind the native plugin ABI:
//! the difference between a job using these and the same job using the built-ins is the cost
//! of the plugin boundary (C ABI calls, Arrow C Data Interface export/import, batch checks).

dativo_plugin_sdk::export_plugin! {
    name: "passthrough",
    version: "0.1.0",
    description: "built-in connectors behind the plugin ABI (benchmark)",
    readers: { "postgres" => dativo_connectors::postgres::PostgresReader::new },
    writers: { "parquet" => dativo_connectors::parquet::ParquetWriter::new },
}
