//! `writer: parquet` — Parquet files in a local directory or an object-store prefix
//! (`s3://…`, `gs://…`, `az://…` or `abfss://…`), committed with a manifest.
//!
//! * Compression (`snappy` default, `zstd`, `lz4`, `none`), row-group size (rows, and
//!   `row_group_bytes` of buffered data, which bounds memory), rolling files at
//!   `target_file_size`.
//! * Exactly once: data files are staged under `_dativo/staging/` and published by a commit
//!   manifest (`_dativo/commits/<sequence>.json`) that also carries the reader's state; see
//!   [`commit_log`] for the protocol. A crash at any point leaves only whole, committed files
//!   where DuckDB, pyarrow and Spark look, and the next run finishes or discards the rest.
//! * `mode: append` adds each run's files; `mode: overwrite` (the default for a full refresh of
//!   an unsplit job) replaces the directory's contents in one commit at end of stream: its
//!   manifest says `replaces: N`, and once its files are published the files of the commits it
//!   replaces are deleted (a plain glob reader briefly sees both; the manifests never do).
//!   `merge` is refused: Parquet files in a directory cannot express row-level deletes.
//! * `committed_state()` reads the state back from the latest manifest.
//! * One writer per directory: an OS lock locally, a lease object with conditional writes on
//!   object stores ([`lease`]); a second run of the job fails at once, never corrupts.

pub mod commit_log;
mod config;
mod drop;
pub mod lease;
mod parallel;
mod writer;

pub use config::{planned_write, Codec, ParquetWriteMode, ParquetWriterConfig};
pub use drop::{drop_dataset, DatasetDropReport};
pub use writer::ParquetWriter;
