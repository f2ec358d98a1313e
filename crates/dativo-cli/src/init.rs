//! `dativo init`: a starter job file for a chosen reader and writer, asked for on a terminal
//! or given as flags.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::ValueEnum;
use dativo_core::Error;

/// The readers `init` has a starter for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitReader {
    /// CSV, JSON Lines or Parquet files (local or object storage).
    File,
    /// A PostgreSQL table.
    Postgres,
    /// A MySQL or MariaDB table.
    Mysql,
    /// A REST API returning JSON.
    Http,
}

/// The writers `init` has a starter for.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitWriter {
    /// Parquet files in a directory or an object-store prefix.
    Parquet,
    /// An Apache Iceberg table (embedded SQLite catalog by default).
    Iceberg,
}

/// What `dativo init` was given.
pub struct InitOptions<'a> {
    /// The reader, or ask.
    pub reader: Option<InitReader>,
    /// The writer, or ask.
    pub writer: Option<InitWriter>,
    /// The job's name, or ask (default from the reader).
    pub name: Option<&'a str>,
    /// Where to write; default `NAME.yaml`; `-` for stdout.
    pub output: Option<&'a Path>,
    /// Replace an existing file.
    pub force: bool,
}

/// Ask on the terminal for what the flags left open, then write the job file.
pub fn init(opts: &InitOptions<'_>) -> Result<ExitCode, Error> {
    let interactive = std::io::stdin().is_terminal();
    let mut ask = Asker::new(interactive);
    let reader = match opts.reader {
        Some(r) => r,
        None => ask.choose("Read from", &["file", "postgres", "mysql", "http"], "file")?,
    };
    let writer = match opts.writer {
        Some(w) => w,
        None => ask.choose("Write to", &["parquet", "iceberg"], "parquet")?,
    };
    let default_name = default_name(reader);
    let name = match opts.name {
        Some(n) => n.to_string(),
        None => ask.text("Job name", default_name)?,
    };
    check_name(&name)?;
    let text = render(reader, writer, &name);
    let output = opts
        .output
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(format!("{name}.yaml")));
    if output.as_os_str() == "-" {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if output.exists() && !opts.force {
        return Err(Error::config(format!(
            "{} exists: choose another file with -o, or --force to replace it",
            output.display()
        )));
    }
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::config(format!("cannot create {}: {e}", dir.display())).with_source(e)
        })?;
    }
    std::fs::write(&output, &text).map_err(|e| {
        Error::config(format!("cannot write {}: {e}", output.display())).with_source(e)
    })?;
    let f = output.display();
    println!(
        "wrote {f}: a `{reader:?}` → `{writer:?}` job named `{name}`",
        reader = Lower(reader),
        writer = Lower(writer)
    );
    println!("next:");
    match reader {
        InitReader::File => println!("  put files where `source.config.path` points (data/*.csv)"),
        InitReader::Postgres => {
            println!(
                "  export PG_URL=postgres://user@host:5432/db    and set `table:` and `cursor:`"
            )
        }
        InitReader::Mysql => {
            println!(
                "  export MYSQL_URL=mysql://user@host:3306/db    and set `table:` and `cursor:`"
            )
        }
        InitReader::Http => println!("  set `url:` and the JSONPath of the records (`records:`)"),
    }
    println!("  dativo validate {f}        checks it without connecting");
    println!("  dativo run {f} --dry-run   connects and shows what it would read");
    println!("  dativo run {f}");
    Ok(ExitCode::SUCCESS)
}

/// A `ValueEnum` as its lowercase name.
struct Lower<T>(T);
impl<T: ValueEnum> std::fmt::Display for Lower<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.to_possible_value() {
            Some(v) => f.write_str(v.get_name()),
            None => f.write_str("?"),
        }
    }
}
impl<T: ValueEnum> std::fmt::Debug for Lower<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn default_name(reader: InitReader) -> &'static str {
    match reader {
        InitReader::File => "files",
        InitReader::Postgres => "orders_pg",
        InitReader::Mysql => "orders_mysql",
        InitReader::Http => "api",
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::config(format!(
            "job name `{name}`: use letters, digits, `_` and `-` (it names the job's state and runs)"
        )))
    }
}

/// Questions on the terminal (stderr), answers from stdin; without a terminal, a question is
/// an error naming the flag that answers it.
struct Asker {
    interactive: bool,
}

impl Asker {
    fn new(interactive: bool) -> Self {
        Asker { interactive }
    }

    fn line(&mut self, prompt: &str) -> Result<String, Error> {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let mut s = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut s)
            .map_err(|e| Error::config(format!("reading the answer: {e}")).with_source(e))?;
        Ok(s.trim().to_string())
    }

    fn choose<T: ValueEnum>(
        &mut self,
        what: &str,
        names: &[&str],
        default: &str,
    ) -> Result<T, Error> {
        if !self.interactive {
            let flag = if what.starts_with("Read") {
                "--reader"
            } else {
                "--writer"
            };
            return Err(Error::config(format!(
                "not a terminal: give {flag} ({})",
                names.join(", ")
            )));
        }
        loop {
            let answer = self.line(&format!("{what} ({}) [{default}]: ", names.join("/")))?;
            let answer = if answer.is_empty() {
                default.to_string()
            } else {
                answer
            };
            match T::from_str(&answer, true) {
                Ok(v) => return Ok(v),
                Err(_) => eprintln!("  `{answer}` is not one of {}", names.join(", ")),
            }
        }
    }

    fn text(&mut self, what: &str, default: &str) -> Result<String, Error> {
        if !self.interactive {
            return Ok(default.to_string());
        }
        loop {
            let answer = self.line(&format!("{what} [{default}]: "))?;
            let answer = if answer.is_empty() {
                default.to_string()
            } else {
                answer
            };
            match check_name(&answer) {
                Ok(()) => return Ok(answer),
                Err(e) => eprintln!("  {e}"),
            }
        }
    }
}

/// The job file's text.
pub fn render(reader: InitReader, writer: InitWriter, name: &str) -> String {
    let (source, about) = match reader {
        InitReader::File => (
            r#"source:
  reader: file
  config:
    # A file or a glob; a relative path is relative to the directory you run dativo in
    # (not to this file). s3://, gs:// and az:// globs work too (with an s3:/gcs:/azure: block).
    path: data/*.csv
    # format: csv                     # csv, jsonl or parquet; by default from the extension
    # schema: [{name: id, type: int64}, {name: amount, type: "decimal(12,2)"}]   # else inferred
    # incremental: true               # each file is loaded once (the default)
"#,
            "files",
        ),
        InitReader::Postgres => (
            r#"source:
  reader: postgres
  config:
    url: "${env:PG_URL}"              # postgres://user@host:5432/db; keep the password in the environment
    table: public.orders
    cursor: updated_at                # incremental: rows with a newer value each run; remove for a full refresh
    # partitions: 4                   # read in parallel ranges (of the primary key or the table's blocks)
"#,
            "a PostgreSQL table",
        ),
        InitReader::Mysql => (
            r#"source:
  reader: mysql
  config:
    url: "${env:MYSQL_URL}"           # mysql://user@host:3306/db; keep the password in the environment
    table: orders
    cursor: updated_at                # incremental: rows with a newer value each run; remove for a full refresh
"#,
            "a MySQL/MariaDB table",
        ),
        InitReader::Http => (
            r#"source:
  reader: http
  config:
    url: https://api.example.com/v1/items
    records: $.data                   # JSONPath of the records in each response
    auth: {type: bearer, token: "${env:API_TOKEN:-}"}
    pagination: {type: link_header}   # or page, offset, cursor, next_url (see docs/connectors.md)
    # incremental: {cursor_field: updated_at, param: since, primary_key: id}
"#,
            "a REST API",
        ),
    };
    let target = match writer {
        InitWriter::Parquet => format!(
            r#"target:
  writer: parquet
  config:
    path: lake/{name}                 # a directory, or s3://bucket/prefix (with an s3: block)
    compression: zstd
"#
        ),
        InitWriter::Iceberg => format!(
            r#"target:
  writer: iceberg
  config:
    table: lake.{table}               # namespace.table; created from the source schema if missing
    # The embedded catalog (SQLite in .dativo/catalog.db, files under ./warehouse) unless:
    # catalog: {{type: rest, uri: "http://catalog:8181", name: dativo}}
    # warehouse: s3://bucket/warehouse  # or gs://…, abfss://container@account.dfs.core.windows.net/…
    # mode: merge                     # upsert by the source's primary key (default: append,
    #                                 # or overwrite when the reader delivers a full refresh)
"#,
            table = name.replace('-', "_")
        ),
    };
    let writer_about = match writer {
        InitWriter::Parquet => "Parquet files",
        InitWriter::Iceberg => "an Iceberg table",
    };
    format!(
        r#"# {name}: {about} into {writer_about}. Written by `dativo init`; edit the values below.
#   dativo validate {name}.yaml && dativo run {name}.yaml --dry-run && dativo run {name}.yaml
name: {name}
{source}{target}checkpoint:
  rows: 100000                        # commit every 100,000 rows (and at the end)
# schedule: "0 * * * *"               # for `dativo serve` (cron, UTC unless timezone: is set)
"#
    )
}
