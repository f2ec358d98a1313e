//! `reader: file` — CSV, JSON Lines and Parquet files from a local path or glob.
//!
//! * Files are read in lexicographic order of their path; each batch is at most `batch_size`
//!   rows.
//! * Schema: `schema:` if given, else inferred from the first file to read (CSV and JSON Lines:
//!   from its first `infer_rows` rows). Every other file must have the same columns; a file that
//!   does not is an error naming it.
//! * Incremental (default): the state is the set of files fully loaded plus the position inside
//!   the file being read (`{"files": [...], "current": {"file": "...", "rows": N}}`), so a run
//!   that stops at any checkpoint resumes exactly after the last committed row, and the next run
//!   reads only new files. `incremental: false` reads every file every run.
//!
//! Delivery: exactly once into a writer that commits the state with the data (`parquet`).

mod config;
mod reader;

pub use config::{CsvOptions, FileFormat, FileReaderConfig};
pub use reader::{FileReader, FileState, Position};

#[cfg(test)]
mod tests;
