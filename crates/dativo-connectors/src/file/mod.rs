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
//! * CSV: the delimiter is a comma, or a tab for `.tsv`/`.tab` files, unless configured. A quoted
//!   field still open at the end of a file is a data error naming the file and the line where it
//!   opened, raised before the merged row is handed over (see `quote_check`).
//! * Types: second-precision timestamps (arrow's CSV inference, or `timestamp(s)` declared) are
//!   handed over as microseconds, which Parquet stores as a timestamp (it has no second unit).
//!   JSON Lines integers beyond int64 are inferred as `decimal(38,0)` (exact) rather than
//!   float64; where no inferred type is exact (such an integer beside fractional numbers, nested,
//!   or of more than 38 digits), inference fails with a data error naming the field.
//!
//! Delivery: exactly once into a writer that commits the state with the data (`parquet`).

mod config;
mod json_integers;
mod quote_check;
mod reader;

pub use config::{CsvOptions, FileFormat, FileReaderConfig};
pub use reader::{FileReader, FileState, Position};

#[cfg(test)]
mod tests;
