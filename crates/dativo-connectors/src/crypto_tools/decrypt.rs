//! `dativo decrypt`: committed files of an encrypted dataset, decrypted into one Parquet or
//! CSV output.

use std::io::Write;

use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;

use dativo_core::{Error, Result};

use super::{for_each_batch, Committed, Dataset};

/// `dativo decrypt` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutFormat {
    /// A Parquet file.
    Parquet,
    /// CSV with a header.
    Csv,
}

enum Out<W: Write + Send> {
    Parquet(ArrowWriter<W>),
    Csv(arrow::csv::Writer<W>),
}

/// Decrypt `files` (relative paths; empty: every committed file) into one output.
/// Returns (files, rows).
pub fn decrypt<W: Write + Send>(
    ds: &Dataset,
    files: &[String],
    format: OutFormat,
    out: W,
) -> Result<(usize, u64)> {
    let provider = ds.provider.clone();
    let chosen: Vec<&Committed> = if files.is_empty() {
        ds.committed.iter().collect()
    } else {
        let mut v = Vec::new();
        for f in files {
            let rel = f
                .trim_start_matches(&ds.loc.display(""))
                .trim_start_matches('/');
            let c = ds
                .committed
                .iter()
                .find(|c| c.file == rel || c.file.rsplit('/').next() == Some(rel))
                .ok_or_else(|| {
                    Error::config(format!(
                        "`{f}` is not a committed file of {} (`dativo verify` lists them)",
                        ds.target
                    ))
                })?;
            v.push(c);
        }
        v
    };
    let mut out = Some(out);
    let mut writer: Option<Out<W>> = None;
    let mut first: Option<SchemaRef> = None;
    let mut rows = 0u64;
    for c in &chosen {
        let format_of = c.audit.as_ref().map(|a| a.format).ok_or_else(|| {
            Error::data(format!(
                "{} was committed without encryption",
                ds.loc.display(&c.file)
            ))
        })?;
        let before = rows;
        for_each_batch(ds, &provider, &c.file, format_of, |b| {
            if let Some(s) = &first {
                if s.fields() != b.schema().fields() {
                    return Err(Error::schema(format!(
                        "{} has another schema than the files before it; decrypt it on its own",
                        ds.loc.display(&c.file)
                    )));
                }
            } else {
                first = Some(b.schema());
                let w = out.take().expect("once");
                writer = Some(match format {
                    OutFormat::Parquet => Out::Parquet(
                        ArrowWriter::try_new(w, b.schema(), None)
                            .map_err(|e| Error::io(e.to_string()).with_source(e))?,
                    ),
                    OutFormat::Csv => {
                        Out::Csv(arrow::csv::WriterBuilder::new().with_header(true).build(w))
                    }
                });
            }
            rows += b.num_rows() as u64;
            match writer.as_mut().expect("created") {
                Out::Parquet(w) => w
                    .write(&b)
                    .map_err(|e| Error::io(e.to_string()).with_source(e)),
                Out::Csv(w) => w.write(&b).map_err(Error::from),
            }
        })?;
        if rows - before != c.rows {
            return Err(Error::data(format!(
                "{}: {} rows decrypted, {} committed — the file was replaced",
                ds.loc.display(&c.file),
                rows - before,
                c.rows
            )));
        }
    }
    match writer {
        Some(Out::Parquet(w)) => {
            w.into_inner()
                .map_err(|e| Error::io(e.to_string()).with_source(e))?
                .flush()?;
        }
        Some(Out::Csv(w)) => {
            w.into_inner().flush()?;
        }
        None => {}
    }
    Ok((chosen.len(), rows))
}
