//! The `file` reader: CSV, JSON Lines and Parquet files matched by a path or glob.

use std::collections::{BTreeSet, VecDeque};
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::sync::Arc;

use arrow::compute::{cast_with_options, CastOptions};
use arrow::csv::reader::Format;
use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use dativo_core::config::from_config;
use dativo_core::schema_spec::to_schema;
use dativo_core::{Error, OpenReader, ReaderContext, Result, ResultExt};

use super::config::{CsvOptions, FileFormat, FileReaderConfig};
use super::json_integers::wide_integer_fields;
use super::quote_check::{line_of, QuoteCheck, UnterminatedQuote};
use dativo_storage::{is_remote, Location, ReadSeek};

/// Where the files are: the working directory, or an object store bucket.
#[derive(Clone)]
enum Source {
    Local,
    /// The bucket's root, and the `s3://bucket/` prefix of every name.
    Remote(Location, String),
}

impl Source {
    fn new(cfg: &FileReaderConfig) -> Result<Source> {
        if !is_remote(&cfg.path) {
            return Ok(Source::Local);
        }
        let rest = cfg.path.split_once("://").map(|(_, r)| r).unwrap_or("");
        let bucket = rest.split('/').next().unwrap_or("");
        let scheme = &cfg.path[..cfg.path.find("://").unwrap_or(0)];
        let prefix = format!("{scheme}://{bucket}/");
        let loc = Location::parse(
            &prefix,
            &dativo_storage::StoreOptions {
                s3: cfg.s3.as_ref(),
                gcs: cfg.gcs.as_ref(),
                azure: cfg.azure.as_ref(),
            },
        )?;
        Ok(Source::Remote(loc, prefix))
    }

    fn open(&self, name: &str) -> Result<Box<dyn ReadSeek>> {
        match self {
            Source::Local => Ok(Box::new(BufReader::with_capacity(
                1 << 20,
                File::open(name)?,
            ))),
            Source::Remote(loc, prefix) => {
                loc.open(name.strip_prefix(prefix.as_str()).unwrap_or(name))
            }
        }
    }

    /// A Parquet file's bytes source (local files are read in place; objects are fetched).
    fn parquet(&self, name: &str) -> Result<ParquetSource> {
        match self {
            Source::Local => Ok(ParquetSource::File(File::open(name)?)),
            Source::Remote(loc, prefix) => Ok(ParquetSource::Bytes(bytes::Bytes::from(
                loc.read(name.strip_prefix(prefix.as_str()).unwrap_or(name))?,
            ))),
        }
    }

    fn list(&self, pattern: &str) -> Result<Vec<String>> {
        match self {
            Source::Local => list_files(pattern),
            Source::Remote(loc, prefix) => {
                let key_pattern = pattern.strip_prefix(prefix.as_str()).unwrap_or("");
                let glob = glob::Pattern::new(key_pattern).map_err(|e| {
                    Error::config(format!("invalid glob `{pattern}`: {e}")).with_key_path("path")
                })?;
                // List only below the part of the pattern without wildcards.
                let fixed: Vec<&str> = key_pattern
                    .split('/')
                    .take_while(|c| !c.contains(['*', '?', '[', '{']))
                    .collect();
                let dir = if fixed.len() == key_pattern.split('/').count() {
                    fixed[..fixed.len().saturating_sub(1)].join("/")
                } else {
                    fixed.join("/")
                };
                let opts = glob::MatchOptions {
                    require_literal_separator: true,
                    ..Default::default()
                };
                let mut out: Vec<String> = loc
                    .list_recursive(&dir)?
                    .into_iter()
                    .filter(|k| glob.matches_with(k, opts))
                    .map(|k| format!("{prefix}{k}"))
                    .collect();
                out.sort();
                Ok(out)
            }
        }
    }
}

enum ParquetSource {
    File(File),
    Bytes(bytes::Bytes),
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// Incremental state: files fully loaded, and how far into the current one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileState {
    /// Files whose every row has been handed over.
    pub files: BTreeSet<String>,
    /// The file being read and the rows of it handed over so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<Position>,
}

/// A position inside one file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// The file, as matched by the glob.
    pub file: String,
    /// Rows of it already handed over.
    pub rows: u64,
}

struct Open {
    name: String,
    batches: Batches,
    rows: u64,
}

/// Reads files matched by `path`, oldest name first, resuming where the state says.
///
/// Opened ready by [`FileReader::open`]: files listed, the schema known or inferred.
pub struct FileReader {
    cfg: FileReaderConfig,
    format: FileFormat,
    /// The schema files are decoded with: `schema:` or inferred.
    read_schema: SchemaRef,
    /// The schema handed over: `read_schema` with second precision widened (see [`widen`]).
    schema: SchemaRef,
    pending: VecDeque<(String, u64)>,
    state: FileState,
    /// The file being read, if any.
    open: Option<Open>,
    source: Source,
}

/// Nothing matches `path`. A local directory that does not exist is a configuration error
/// (exit 2) — typically a relative path run from another directory; an existing directory
/// without matching files is a data error (exit 4). Both say what the path is relative to.
fn no_match(path: &str) -> Error {
    let local = !path.contains("://");
    let wild = path.find(['*', '?', '[']).unwrap_or(path.len());
    let dir = match path[..wild].rfind('/') {
        Some(i) => &path[..=i],
        None => "./",
    };
    let relative = local && !path.starts_with('/');
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "?".into());
    let hint = if relative {
        format!(
            " (a relative path is resolved against the working directory, {cwd}, not the job \
             file's directory: run dativo from the directory the job expects, or make the path \
             absolute)"
        )
    } else {
        String::new()
    };
    if local && !std::path::Path::new(dir).is_dir() {
        Error::config(format!(
            "`{path}`: the directory {dir} does not exist{hint}"
        ))
        .with_key_path("source.config.path")
    } else {
        Error::data(format!("no files match `{path}`{hint}"))
    }
}

impl FileReader {
    /// Validate a config without touching the file system.
    pub fn validate(config: &Value) -> Result<()> {
        let cfg: FileReaderConfig = from_config(config)?;
        check_config(&cfg).map(|_| ())
    }

    /// List the files `config` matches, decide where to resume from `ctx.state`, and know the
    /// schema (`schema:`, or inferred from the first file to read).
    pub fn open(config: &Value, ctx: &ReaderContext) -> Result<Self> {
        let cfg: FileReaderConfig = from_config(config)?;
        let format = check_config(&cfg)?;
        let source = Source::new(&cfg)?;
        let all_files = source.list(&cfg.path)?;
        let Some(last) = all_files.last().cloned() else {
            return Err(no_match(&cfg.path));
        };
        // Sharded: each shard owns the files whose path below the glob's fixed directory
        // hashes to it (the same split on every machine, whatever the mount point; Hive-style
        // `dt=…/part-0.parquet` files spread too; a new file goes to one shard).
        let wild = cfg.path.find(['*', '?', '[']).unwrap_or(cfg.path.len());
        let root = cfg.path[..wild]
            .rfind('/')
            .map(|i| &cfg.path[..=i])
            .unwrap_or("");
        let files: Vec<String> = all_files
            .iter()
            .filter(|f| ctx.shard.owns(f.strip_prefix(root).unwrap_or(f)))
            .cloned()
            .collect();
        let state: FileState = match (&ctx.state, cfg.incremental) {
            (Some(s), true) => serde_json::from_value(s.clone()).map_err(|e| {
                Error::data(format!("the stored state is not a file reader state ({e}); reset it with `dativo state reset`"))
            })?,
            _ => FileState::default(),
        };
        let resume = state.current.clone();
        let pending: VecDeque<(String, u64)> = files
            .iter()
            .filter(|f| !state.files.contains(*f))
            .map(|f| {
                let skip = match &resume {
                    Some(p) if &p.file == f => p.rows,
                    _ => 0,
                };
                (f.clone(), skip)
            })
            .collect();
        let read_schema = match &cfg.schema {
            Some(cols) => to_schema(cols)?,
            None => {
                let first = pending
                    .front()
                    .map(|(f, _)| f.clone())
                    .or_else(|| files.last().cloned())
                    .unwrap_or(last);
                infer_schema(&source, &first, format, &cfg)
                    .with_context(|| format!("file {first}"))?
            }
        };
        Ok(FileReader {
            format,
            schema: widen_schema(&read_schema),
            read_schema,
            pending,
            state: FileState {
                files: state.files,
                current: None,
            },
            open: None,
            source,
            cfg,
        })
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some((name, skip)) = self.pending.pop_front() else {
            return Ok(false);
        };
        let batches = self
            .open_file(&name, skip)
            .with_context(|| format!("file {name}"))?;
        self.open = Some(Open {
            name,
            batches,
            rows: skip,
        });
        Ok(true)
    }

    fn open_file(&self, name: &str, skip: u64) -> Result<Batches> {
        let cfg = &self.cfg;
        let schema = self.read_schema.clone();
        let out = self.schema.clone();
        let source = self.source.clone();
        let bs = cfg.batch_size;
        let batches: Batches = match self.format {
            FileFormat::Csv => {
                let csv = csv_format(&cfg.csv, name)?;
                if cfg.csv.header {
                    check_csv_header(&mut source.open(name)?, &csv, &schema)?;
                }
                let input = QuoteCheck::new(
                    source.open(name)?,
                    ascii(cfg.csv.delimiter_for(name), "delimiter")?,
                    ascii(cfg.csv.quote, "quote")?,
                    cfg.csv.escape.map(|e| ascii(e, "escape")).transpose()?,
                );
                let r = arrow::csv::ReaderBuilder::new(schema.clone())
                    .with_format(csv)
                    .with_batch_size(bs)
                    .build(input)?;
                let name = name.to_string();
                let batches = r.map(move |b| b.map_err(|e| csv_error(e, &source, &name)));
                skip_rows(conform(Box::new(batches), &schema, out), skip)
            }
            FileFormat::Jsonl => {
                let r = arrow::json::ReaderBuilder::new(schema.clone())
                    .with_batch_size(bs)
                    .build(source.open(name)?)?;
                let batches = r.map(|b| b.map_err(Error::from));
                skip_rows(conform(Box::new(batches), &schema, out), skip)
            }
            FileFormat::Parquet => {
                let (got, r) = match source.parquet(name)? {
                    ParquetSource::File(f) => parquet_batches(f, bs, skip)?,
                    ParquetSource::Bytes(b) => parquet_batches(b, bs, skip)?,
                };
                check_same_columns(&schema, &got)?;
                // Always rebuilt with the reader's schema: field metadata may differ.
                conform(Box::new(r.map(|b| b.map_err(Error::from))), &got, out)
            }
        };
        Ok(batches)
    }
}

/// Checks that need no I/O; returns the format (configured, or from the extension).
fn check_config(cfg: &FileReaderConfig) -> Result<FileFormat> {
    if cfg.batch_size == 0 {
        return Err(Error::config("must be at least 1").with_key_path("batch_size"));
    }
    let Some(format) = cfg.format.or_else(|| FileFormat::from_path(&cfg.path)) else {
        return Err(Error::config(format!(
            "cannot tell the format of `{}` from its extension: set `format: csv | jsonl | parquet`",
            cfg.path
        ))
        .with_key_path("path"));
    };
    if let Some(cols) = &cfg.schema {
        to_schema(cols).map_err(|e| {
            let p = format!("schema{}", e.key_path().unwrap_or(""));
            Error::config(e.message().to_string()).with_key_path(p)
        })?;
    }
    csv_format(&cfg.csv, &cfg.path).map_err(|e| {
        let msg = e.message().to_string();
        Error::config(msg).with_key_path("csv")
    })?;
    glob::Pattern::new(&cfg.path).map_err(|e| {
        Error::config(format!("invalid glob `{}`: {e}", cfg.path)).with_key_path("path")
    })?;
    Ok(format)
}

fn ascii(c: char, what: &str) -> Result<u8> {
    u8::try_from(c)
        .ok()
        .filter(|b| b.is_ascii())
        .ok_or_else(|| Error::config(format!("the CSV {what} must be one ASCII character")))
}

/// The CSV dialect of `file` (its delimiter may depend on its extension).
fn csv_format(o: &CsvOptions, file: &str) -> Result<Format> {
    let mut f = Format::default()
        .with_header(o.header)
        .with_delimiter(ascii(o.delimiter_for(file), "delimiter")?)
        .with_quote(ascii(o.quote, "quote")?);
    if let Some(e) = o.escape {
        f = f.with_escape(ascii(e, "escape")?);
    }
    if let Some(r) = &o.null_regex {
        let re = regex_lite_compile(r)?;
        f = f.with_null_regex(re);
    }
    Ok(f)
}

fn regex_lite_compile(r: &str) -> Result<regex::Regex> {
    regex::Regex::new(r).map_err(|e| Error::config(format!("invalid null_regex `{r}`: {e}")))
}

type ParquetBatches = Box<dyn Iterator<Item = std::result::Result<RecordBatch, ArrowError>> + Send>;

fn parquet_batches<T: parquet::file::reader::ChunkReader + 'static>(
    input: T,
    batch_size: usize,
    skip: u64,
) -> Result<(SchemaRef, ParquetBatches)> {
    let b =
        ParquetRecordBatchReaderBuilder::try_new(input).map_err(|e| Error::data(e.to_string()))?;
    let schema = b.schema().clone();
    let r = b
        .with_batch_size(batch_size)
        .with_offset(skip as usize)
        .build()
        .map_err(|e| Error::data(e.to_string()))?;
    Ok((schema, Box::new(r)))
}

/// A CSV read error; an unterminated quoted field becomes a data error with its line.
fn csv_error(e: ArrowError, source: &Source, name: &str) -> Error {
    match e {
        ArrowError::IoError(_, io) => match UnterminatedQuote::from_io(&io) {
            Some(u) => {
                // Counted only now: the line is for the message, the scan tracks bytes.
                let line = source
                    .open(name)
                    .ok()
                    .and_then(|r| line_of(r, u.offset).ok())
                    .map(|l| format!(" (line {l})"))
                    .unwrap_or_default();
                Error::data(format!(
                    "{u}{line}; the rest of the file would load as one field, so the file is \
                     rejected: nothing after the last checkpoint is committed"
                ))
                .with_source(io)
            }
            None => Error::from(ArrowError::IoError(io.to_string(), io)),
        },
        other => Error::from(other),
    }
}

fn check_csv_header(f: &mut dyn Read, csv: &Format, schema: &Schema) -> Result<()> {
    let (header, _) = csv.clone().infer_schema(f, Some(0))?;
    let got: Vec<&str> = header.fields().iter().map(|f| f.name().as_str()).collect();
    let want: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if got != want {
        return Err(Error::schema(format!(
            "header has columns {got:?}, expected {want:?} (as in the first file, or `schema:`)"
        )));
    }
    Ok(())
}

fn check_same_columns(want: &Schema, got: &Schema) -> Result<()> {
    let same = want.fields().len() == got.fields().len()
        && want
            .fields()
            .iter()
            .zip(got.fields())
            .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
    if same {
        Ok(())
    } else {
        Err(Error::schema(format!(
            "columns differ from the first file: expected {}, found {}",
            describe(want),
            describe(got)
        )))
    }
}

fn describe(s: &Schema) -> String {
    let cols: Vec<String> = s
        .fields()
        .iter()
        .map(|f| format!("{} {}", f.name(), f.data_type()))
        .collect();
    format!("({})", cols.join(", "))
}

/// The type a column is handed over as: second precision becomes microseconds.
///
/// arrow infers `Timestamp(Second)` for CSV values like `2026-01-06T09:42:36`, and Parquet has
/// no second unit: the parquet crate writes such a column as a bare INT64 that engines read as
/// BIGINT. Microseconds are exact for every second value, are the unit of `timestamp` in a
/// `schema:`, of Iceberg, Spark, Trino and DuckDB, and still span ±290,000 years (nanoseconds
/// would stop at 1677–2262).
fn widen(t: &DataType) -> DataType {
    let field = |f: &FieldRef| -> FieldRef {
        Arc::new(f.as_ref().clone().with_data_type(widen(f.data_type())))
    };
    match t {
        DataType::Timestamp(TimeUnit::Second, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.clone())
        }
        DataType::Time32(TimeUnit::Second) => DataType::Time64(TimeUnit::Microsecond),
        DataType::List(f) => DataType::List(field(f)),
        DataType::LargeList(f) => DataType::LargeList(field(f)),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(field(f), *n),
        DataType::Struct(fs) => DataType::Struct(fs.iter().map(field).collect()),
        DataType::Map(f, sorted) => DataType::Map(field(f), *sorted),
        other => other.clone(),
    }
}

/// `schema` with every column [`widen`]ed.
fn widen_schema(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(widen(f.data_type())))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Hand batches decoded as `read` over as `out`, casting the columns whose type differs.
fn conform(inner: Batches, read: &Schema, out: SchemaRef) -> Batches {
    if read == out.as_ref() {
        return inner;
    }
    // Not `safe`: a value that does not fit fails the read instead of becoming NULL.
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    Box::new(inner.map(move |b| {
        let b = b?;
        let cols = b
            .columns()
            .iter()
            .zip(out.fields())
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    cast_with_options(c, f.data_type(), &opts)
                        .map_err(|e| Error::from(e).context(format!("column `{}`", f.name())))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(out.clone(), cols)?)
    }))
}

/// Drop the first `skip` rows of a batch stream (resuming inside a file).
fn skip_rows(inner: Batches, mut skip: u64) -> Batches {
    if skip == 0 {
        return inner;
    }
    Box::new(inner.filter_map(move |b| match b {
        Ok(b) if skip >= b.num_rows() as u64 => {
            skip -= b.num_rows() as u64;
            None
        }
        Ok(b) if skip > 0 => {
            let s = skip as usize;
            skip = 0;
            Some(Ok(b.slice(s, b.num_rows() - s)))
        }
        other => Some(other),
    }))
}

fn list_files(pattern: &str) -> Result<Vec<String>> {
    let mut files = Vec::new();
    let paths = glob::glob(pattern).map_err(|e| {
        Error::config(format!("invalid glob `{pattern}`: {e}")).with_key_path("path")
    })?;
    for p in paths {
        let p = p.map_err(|e| Error::io(format!("listing `{pattern}`: {e}")))?;
        if p.is_file() {
            files.push(p.to_string_lossy().into_owned());
        }
    }
    files.sort();
    Ok(files)
}

fn infer_schema(
    source: &Source,
    name: &str,
    format: FileFormat,
    cfg: &FileReaderConfig,
) -> Result<SchemaRef> {
    let schema = match format {
        FileFormat::Csv => {
            let mut r = source.open(name)?;
            let (s, _) = csv_format(&cfg.csv, name)?.infer_schema(&mut r, Some(cfg.infer_rows))?;
            s
        }
        FileFormat::Jsonl => {
            let mut r = source.open(name)?;
            let (s, _) = arrow::json::reader::infer_json_schema(&mut r, Some(cfg.infer_rows))?;
            r.rewind()?;
            let wide = wide_integer_fields(BufReader::new(&mut r), cfg.infer_rows)?;
            r.rewind()?;
            decimal_for_wide_integers(s, &wide)?
        }
        FileFormat::Parquet => {
            let got = match source.parquet(name)? {
                ParquetSource::File(f) => parquet_batches(f, 1, 0)?.0,
                ParquetSource::Bytes(b) => parquet_batches(b, 1, 0)?.0,
            };
            // Drop the embedded Arrow metadata; keep fields as they are.
            Schema::new(got.fields().clone())
        }
    };
    if schema.fields().is_empty() {
        return Err(Error::schema("no columns found"));
    }
    Ok(Arc::new(schema))
}

/// Columns holding integers beyond int64 (inferred as float64, which would round them) become
/// `decimal(38,0)`, exact for every integer of up to 38 digits; a column where no inferred type
/// is exact is a data error naming the field.
fn decimal_for_wide_integers(
    schema: Schema,
    wide: &std::collections::HashMap<String, super::json_integers::FieldNumbers>,
) -> Result<Schema> {
    if wide.is_empty() {
        return Ok(schema);
    }
    let declare = "declare the column types with `schema:`";
    let mut fields = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let Some(n) = wide.get(f.name()) else {
            fields.push(f.as_ref().clone());
            continue;
        };
        let v = n.wide.as_deref().unwrap_or("");
        let name = f.name();
        let problem = if n.nested {
            Some(format!(
                "holds the integer {v}, beyond int64, inside a nested value; an inferred type \
                 would round it: {declare}"
            ))
        } else if n.fractional {
            Some(format!(
                "holds both the integer {v}, beyond int64, and numbers with a fraction; float64 \
                 would round it: {declare} (e.g. `decimal(38,6)`)"
            ))
        } else if n.max_digits > 38 {
            Some(format!(
                "holds an integer of {} digits ({v}), beyond what decimal(38,0) holds",
                n.max_digits
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(Error::data(format!("field `{name}` {p}")));
        }
        let t = match f.data_type() {
            DataType::Float64 => DataType::Decimal128(38, 0),
            other => other.clone(),
        };
        fields.push(f.as_ref().clone().with_data_type(t));
    }
    Ok(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

impl OpenReader for FileReader {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.open.is_none() && !self.open_next()? {
                return Ok(None);
            }
            let Some(open) = self.open.as_mut() else {
                continue;
            };
            match open.batches.next() {
                Some(Ok(b)) => {
                    if b.num_rows() == 0 {
                        continue;
                    }
                    open.rows += b.num_rows() as u64;
                    return Ok(Some(b));
                }
                Some(Err(e)) => return Err(e.context(format!("file {}", open.name))),
                None => {
                    if let Some(done) = self.open.take() {
                        self.state.files.insert(done.name);
                    }
                }
            }
        }
    }

    fn state(&mut self) -> Result<Option<Value>> {
        if !self.cfg.incremental {
            return Ok(None);
        }
        let mut s = self.state.clone();
        s.current = self.open.as_ref().map(|o| Position {
            file: o.name.clone(),
            rows: o.rows,
        });
        Ok(Some(serde_json::to_value(s)?))
    }
}
