//! Jobs over many tables: `tables:` selects the tables of a SQL source (globs, `!`
//! exclusions), `streams:` overrides settings per table, and `{schema}` / `{table}` /
//! `{stream}` in the target's settings name each table's target. A job with `tables:` runs
//! one *stream* per selected table; each stream is an ordinary job named `JOB/SCHEMA.TABLE`
//! (its state, lock, run history and commits are keyed by that name), so one stream failing
//! neither undoes nor blocks the others.
//!
//! ```yaml
//! source:
//!   reader: postgres
//!   config:
//!     url: ${env:PG_URL}
//!     tables: ["public.*", "!public.tmp_*"]
//!     cursor: [updated_at, modified_at]      # per table: the first of these it has
//!     streams:
//!       public.events: {cursor: created_at, target: {partition_by: ["day(created_at)"]}}
//! target:
//!   writer: iceberg
//!   config: {table: "raw.{schema}_{table}", catalog: {uri: "sqlite://lake.db"}, warehouse: lake}
//! ```

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::Result;
use crate::job::{Implementation, Job};

/// The `source.config` key selecting tables.
pub const TABLES_KEY: &str = "tables";
/// The `source.config` key of per-table overrides.
pub const STREAMS_KEY: &str = "streams";
/// The `source.config` key naming the `http` reader's resources: named streams, like
/// `streams:` without `tables:`.
pub const RESOURCES_KEY: &str = "resources";
/// The key of a stream override holding target settings.
pub const TARGET_OVERRIDE_KEY: &str = "target";
/// Column names taken as a cursor when a table has one (NOT NULL, a time or integer type)
/// and no `cursor` is configured.
pub const CURSOR_CANDIDATES: &[&str] = &[
    "updated_at",
    "modified_at",
    "last_modified",
    "last_updated",
    "updated",
    "modified",
];

/// A table a source offers, as its catalog describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceTable {
    /// Its schema (MySQL: its database).
    pub schema: String,
    /// Its name.
    pub name: String,
    /// How the reader's `table:` names it (quoted when the names need it).
    pub reference: String,
    /// The catalog's estimate of its rows, when it has one.
    pub rows: Option<u64>,
    /// The catalog's estimate of its size in bytes, when it has one.
    pub bytes: Option<u64>,
    /// Its primary key columns, in order (empty: none).
    pub primary_key: Vec<String>,
    /// Its columns, in order.
    pub columns: Vec<SourceColumn>,
}

/// A column of a [`SourceTable`].
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SourceColumn {
    /// Its name.
    pub name: String,
    /// Its type as the catalog names it (`timestamp with time zone`, `bigint`, `datetime`).
    pub type_name: String,
    /// Declared NOT NULL.
    pub not_null: bool,
}

impl SourceTable {
    /// `schema.table`: the stream's name.
    pub fn stream(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }

    fn column(&self, name: &str) -> Option<&SourceColumn> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// One stream of a job with `tables:`: the table, what was chosen for it, and the job that
/// runs it.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    /// `schema.table`.
    pub stream: String,
    /// The table as discovered.
    pub table: SourceTable,
    /// The cursor column (incremental), or `None` (full refresh).
    pub cursor: Option<String>,
    /// The key: `primary_key` of the override, else the table's.
    pub primary_key: Vec<String>,
    /// The target as rendered (`table` of the iceberg writer, `path` of the parquet writer,
    /// else the target config as JSON).
    pub target: String,
    /// The target's `mode` when set or chosen (`merge` for keyed incremental streams into
    /// Iceberg), else `None` (the writer decides from the delivery).
    pub target_mode: Option<String>,
    /// Parallel connections of the stream's read.
    pub partitions: u64,
    /// Settings chosen for the stream that deserve a word (a fallback, a default).
    pub notes: Vec<String>,
    /// The stream's own job: named `JOB/STREAM`, `table:` and the overrides in its source,
    /// its target rendered.
    pub job: Job,
}

/// Whether `job` runs several streams: `tables:` (tables the source's catalog offers), or
/// named streams (`streams:` without `tables:`, or the `http` reader's `resources:`).
pub fn is_multi(job: &Job) -> bool {
    let src = &job.config.source.config;
    [TABLES_KEY, STREAMS_KEY, RESOURCES_KEY]
        .iter()
        .any(|k| src.get(*k).is_some())
}

/// Whether `job` names its streams itself (`streams:` without `tables:`, or `resources:`):
/// each stream is the source config with the stream's settings merged in, no discovery.
pub fn is_named(job: &Job) -> bool {
    is_multi(job) && job.config.source.config.get(TABLES_KEY).is_none()
}

/// The key of stream `stream` of job `job`: `job/stream`.
pub fn stream_key(job: &str, stream: &str) -> String {
    format!("{job}/{stream}")
}

/// A `tables:` entry: `schema.table` globs (`*`, `?`); without a dot, a table name in any
/// schema; a leading `!` excludes.
#[derive(Debug, Clone)]
struct Pattern {
    schema: Option<String>,
    table: String,
}

impl Pattern {
    fn parse(s: &str) -> Pattern {
        match s.split_once('.') {
            Some((schema, table)) => Pattern {
                schema: Some(schema.to_string()),
                table: table.to_string(),
            },
            None => Pattern {
                schema: None,
                table: s.to_string(),
            },
        }
    }

    fn matches(&self, t: &SourceTable) -> bool {
        self.schema.as_deref().is_none_or(|s| glob(s, &t.schema)) && glob(&self.table, &t.name)
    }
}

/// `*` (any run of characters) and `?` (one character) against `text`.
pub fn glob(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// The selection of a job with `tables:`, read from its source config.
#[derive(Debug, Clone)]
pub struct Selection {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
    /// `streams:` overrides: (pattern text, pattern, settings), in file order.
    overrides: Vec<(String, Pattern, Map<String, Value>)>,
}

impl Selection {
    /// Read `tables:` and `streams:` of `job`'s source config.
    pub fn of(job: &Job) -> Result<Selection> {
        let src = &job.config.source.config;
        let err = |k: &str, m: &str| job.error_at(&format!("source.config.{k}"), m);
        let tables = match src.get(TABLES_KEY) {
            Some(Value::Array(a)) if !a.is_empty() => a,
            Some(Value::String(s)) => {
                return Err(err(
                    TABLES_KEY,
                    &format!("must be a list of patterns, e.g. tables: [\"{s}\"]"),
                ))
            }
            _ => return Err(err(
                TABLES_KEY,
                "must be a non-empty list of `schema.table` patterns (`public.*`, `!public.tmp_*`)",
            )),
        };
        let mut sel = Selection {
            include: Vec::new(),
            exclude: Vec::new(),
            overrides: Vec::new(),
        };
        for v in tables {
            let Some(s) = v.as_str().map(str::trim).filter(|s| !s.is_empty()) else {
                return Err(err(TABLES_KEY, &format!("`{v}` is not a table pattern")));
            };
            match s.strip_prefix('!') {
                Some(x) => sel.exclude.push(Pattern::parse(x.trim())),
                None => sel.include.push(Pattern::parse(s)),
            }
        }
        if sel.include.is_empty() {
            return Err(err(
                TABLES_KEY,
                "selects nothing: only exclusions (`!…`) are listed",
            ));
        }
        for k in ["table", "query"] {
            if src.get(k).is_some() {
                return Err(err(
                    k,
                    &format!("`{k}` and `tables` exclude each other: `tables` selects the tables, `streams` sets each one's options"),
                ));
            }
        }
        match src.get(STREAMS_KEY) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (name, v) in m {
                    let Value::Object(o) = v else {
                        return Err(err(
                            &format!("{STREAMS_KEY}.{name}"),
                            "must be a mapping of settings for the table (`cursor`, `primary_key`, `columns`, `where`, `partitions`, `target: {…}`)",
                        ));
                    };
                    for k in ["table", "query", TABLES_KEY, STREAMS_KEY] {
                        if o.contains_key(k) {
                            return Err(err(
                                &format!("{STREAMS_KEY}.{name}.{k}"),
                                "cannot be set per stream (the stream is its table); name the target with `target: {table: …}` or `target: {path: …}`",
                            ));
                        }
                    }
                    if let Some(t) = o.get(TARGET_OVERRIDE_KEY) {
                        if !t.is_object() {
                            return Err(err(
                                &format!("{STREAMS_KEY}.{name}.{TARGET_OVERRIDE_KEY}"),
                                "must be a mapping of target settings",
                            ));
                        }
                    }
                    sel.overrides
                        .push((name.clone(), Pattern::parse(name), o.clone()));
                }
            }
            Some(_) => {
                return Err(err(
                    STREAMS_KEY,
                    "must be a mapping from `schema.table` (or a pattern) to settings",
                ))
            }
        }
        Ok(sel)
    }

    /// Whether `t` is selected.
    pub fn selects(&self, t: &SourceTable) -> bool {
        self.include.iter().any(|p| p.matches(t)) && !self.exclude.iter().any(|p| p.matches(t))
    }

    /// `t`'s overrides merged in file order (later patterns win).
    fn overrides_for(&self, t: &SourceTable) -> Map<String, Value> {
        let mut out = Map::new();
        for (_, p, o) in &self.overrides {
            if p.matches(t) {
                merge_into(&mut out, o);
            }
        }
        out
    }

    /// `streams:` entries that match no selected table (a typo, or a table gone).
    pub fn unmatched_overrides(&self, selected: &[SourceTable]) -> Vec<String> {
        self.overrides
            .iter()
            .filter(|(_, p, _)| !selected.iter().any(|t| p.matches(t)))
            .map(|(n, _, _)| n.clone())
            .collect()
    }
}

/// Deep-merge `from` into `into` (objects merge key by key; anything else replaces).
fn merge_into(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_into(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

/// `s` usable in a table or path name: characters other than letters, digits, `_` and `-`
/// become `_`.
fn name_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Replace `{schema}`, `{table}` and `{stream}` in every string of `v`.
fn render(v: &mut Value, t: &SourceTable) {
    let stream = if t.schema.is_empty() {
        name_part(&t.name)
    } else {
        format!("{}_{}", name_part(&t.schema), name_part(&t.name))
    };
    render_with(v, &name_part(&t.schema), &name_part(&t.name), &stream)
}

fn render_with(v: &mut Value, schema: &str, table: &str, stream: &str) {
    match v {
        Value::String(s) if s.contains('{') => {
            *s = s
                .replace("{schema}", schema)
                .replace("{table}", table)
                .replace("{stream}", stream);
        }
        Value::Array(a) => a
            .iter_mut()
            .for_each(|x| render_with(x, schema, table, stream)),
        Value::Object(o) => o
            .values_mut()
            .for_each(|x| render_with(x, schema, table, stream)),
        _ => {}
    }
}

fn is_cursor_type(type_name: &str) -> bool {
    let t = type_name.to_ascii_lowercase();
    ["timestamp", "date", "int", "serial"]
        .iter()
        .any(|k| t.contains(k))
}

/// The source config a multi-table job's reader is validated with (no I/O): `tables` and
/// `streams` removed, a placeholder `table`, a single `cursor`.
pub fn validation_config(job: &Job) -> Value {
    let mut src = job.config.source.config.clone();
    if let Value::Object(m) = &mut src {
        m.remove(TABLES_KEY);
        m.remove(STREAMS_KEY);
        if let Some(Value::Array(c)) = m.get("cursor").cloned() {
            match c.first() {
                Some(first) => m.insert("cursor".into(), first.clone()),
                None => m.remove("cursor"),
            };
        }
        m.insert("table".into(), Value::String("dativo_validate.t".into()));
    }
    src
}

/// The streams of `job` over the tables its source offers: selected, overridden, defaults
/// chosen, targets rendered; largest first. Errors when two streams would write one target,
/// or when a job of several streams names its target without `{table}`.
pub fn plan_streams(job: &Job, offered: Vec<SourceTable>) -> Result<Vec<StreamPlan>> {
    if is_named(job) {
        return plan_named_streams(job);
    }
    let sel = Selection::of(job)?;
    let src = source_map(job);
    let writer = match &job.config.target.writer {
        Implementation::Builtin(n) => n.as_str(),
        _ => "",
    };
    let reader = match &job.config.source.reader {
        Implementation::Builtin(n) => n.as_str(),
        _ => "",
    };
    // `cursor:` at the source level: a name or a list of names, each table using the first
    // it has (any type, nullable or not); unset: the usual names, NOT NULL time/int columns.
    let (candidates, explicit) = match src.get("cursor") {
        Some(Value::String(c)) => (vec![c.clone()], true),
        Some(Value::Array(a)) => (
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            true,
        ),
        Some(Value::Null) | None => (
            CURSOR_CANDIDATES.iter().map(|s| s.to_string()).collect(),
            false,
        ),
        Some(other) => {
            return Err(job.error_at(
                "source.config.cursor",
                &format!("must be a column name or a list of them, got {other}"),
            ))
        }
    };
    if src.get("mode").and_then(Value::as_str) == Some("cdc") {
        return Err(job.error_at(
            "source.config.mode",
            "`mode: cdc` reads one table per job for now (each job has its own replication slot):              write one job per table, with `table:`",
        ));
    }
    let full_refresh = src.get("mode").and_then(Value::as_str) == Some("full_refresh");
    let mut tables: Vec<SourceTable> = offered.into_iter().filter(|t| sel.selects(t)).collect();
    tables.sort_by(|a, b| {
        (b.bytes.unwrap_or(0), b.rows.unwrap_or(0))
            .cmp(&(a.bytes.unwrap_or(0), a.rows.unwrap_or(0)))
            .then_with(|| a.stream().cmp(&b.stream()))
    });
    let mut plans = Vec::with_capacity(tables.len());
    for t in tables {
        let stream = t.stream();
        let mut o = sel.overrides_for(&t);
        let target_over = match o.remove(TARGET_OVERRIDE_KEY) {
            Some(Value::Object(m)) => m,
            _ => Map::new(),
        };
        let mut s = src.clone();
        s.remove(TABLES_KEY);
        s.remove(STREAMS_KEY);
        s.remove("cursor");
        merge_into(&mut s, &o);
        s.insert("table".into(), Value::String(t.reference.clone()));
        let mut notes = Vec::new();
        let cursor = match o.get("cursor") {
            Some(Value::String(c)) => Some(c.clone()),
            Some(Value::Null) => None,
            _ if full_refresh => None,
            _ => candidates
                .iter()
                .find(|c| match t.column(c) {
                    Some(col) => explicit || (col.not_null && is_cursor_type(&col.type_name)),
                    None => false,
                })
                .cloned(),
        };
        match &cursor {
            Some(c) => {
                s.insert("cursor".into(), Value::String(c.clone()));
            }
            None => {
                s.remove("cursor");
                if s.get("mode").and_then(Value::as_str) == Some("incremental") {
                    s.remove("mode");
                }
                if s.contains_key("lookback") {
                    s.remove("lookback");
                    notes.push("no cursor: `lookback` does not apply".into());
                }
            }
        }
        let primary_key: Vec<String> = match s.get("primary_key") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => t.primary_key.clone(),
        };
        let mut partitions = s.get("partitions").and_then(Value::as_u64).unwrap_or(1);
        if partitions > 1 && cursor.is_none() && !s.contains_key("partition_column") {
            match primary_key.as_slice() {
                [_] => {}
                [] if reader == "postgres" => notes.push(
                    "no primary key: split by physical location (ctid ranges on one snapshot; an interrupted read starts over)"
                        .into(),
                ),
                [] => {
                    partitions = 1;
                    s.insert("partitions".into(), Value::from(1));
                    notes.push(
                        "no primary key: read over one connection (`partition_column` splits it)"
                            .into(),
                    );
                }
                [lead, ..] => {
                    s.insert("partition_column".into(), Value::String(lead.clone()));
                    notes.push(format!(
                        "partitions split on `{lead}`, the key's leading column"
                    ));
                }
            }
        }

        let mut target = job.config.target.config.clone();
        if let Value::Object(m) = &mut target {
            merge_into(m, &target_over);
        }
        render(&mut target, &t);
        let mut target_mode = target
            .get("mode")
            .and_then(Value::as_str)
            .map(str::to_string);
        if writer == "iceberg" && target_mode.is_none() && cursor.is_some() {
            if primary_key.is_empty() {
                notes.push(
                    "incremental without a primary key: appended (updates arrive as new rows)"
                        .into(),
                );
            } else if let Value::Object(m) = &mut target {
                m.insert("mode".into(), Value::String("merge".into()));
                if !m.contains_key("primary_key") && s.contains_key("primary_key") {
                    m.insert("primary_key".into(), Value::from(primary_key.clone()));
                }
                target_mode = Some("merge".into());
                notes
                    .push("keyed and incremental: merged on the key (updates replace rows)".into());
            }
        }
        let shown = shown_target(writer, &target);

        let mut sj = job.clone();
        sj.config.name = stream_key(job.name(), &stream);
        sj.config.source.config = Value::Object(s);
        sj.config.target.config = target;
        plans.push(StreamPlan {
            stream,
            table: t,
            cursor,
            primary_key,
            target: shown,
            target_mode,
            partitions,
            notes,
            job: sj,
        });
    }
    check_targets(job, &plans)?;
    Ok(plans)
}

/// The job's source config as a mapping (empty when it is not one).
fn source_map(job: &Job) -> Map<String, Value> {
    job.config
        .source
        .config
        .as_object()
        .cloned()
        .unwrap_or_default()
}

/// How a stream's target is shown: the iceberg writer's `table`, the parquet writer's
/// `path`, else the whole target config.
fn shown_target(writer: &str, target: &Value) -> String {
    match writer {
        "iceberg" => target.get("table"),
        "parquet" => target.get("path"),
        _ => None,
    }
    .and_then(Value::as_str)
    .map(str::to_string)
    .unwrap_or_else(|| target.to_string())
}

/// Refuse two streams writing one target: they would overwrite (or mix) each other's rows.
fn check_targets(job: &Job, plans: &[StreamPlan]) -> Result<()> {
    let mut seen: std::collections::HashMap<String, &str> = Default::default();
    for p in plans {
        let key = p.job.config.target.config.to_string();
        if let Some(other) = seen.insert(key, &p.stream) {
            let hint = if is_named(job) && plans.len() > 1 && p.target == plans[0].target {
                " — name it per stream with `{stream}` (e.g. `table: \"raw.{stream}\"`, `path: \"lake/{stream}\"`)"
            } else if plans.len() > 1 && p.target == plans[0].target {
                " — name it per table with `{schema}` and `{table}` (e.g. `table: \"raw.{schema}_{table}\"`, `path: \"lake/{schema}/{table}\"`)"
            } else {
                " — give one of them its own `streams.<table>.target`"
            };
            return Err(job.error_at(
                "target.config",
                &format!(
                    "streams `{other}` and `{}` would write the same target `{}`{hint}",
                    p.stream, p.target
                ),
            ));
        }
    }
    Ok(())
}

/// The streams of a job that names them (`streams:` without `tables:`, or `resources:`),
/// in name order: each stream's source config is the job's with the stream's settings
/// merged in (deep; `target: {…}` goes to the target), and `{stream}` / `{table}` /
/// `{schema}` rendered in both (`orders` → `{stream}` = `{table}` = `orders`;
/// `sales.orders` → `{schema}` = `sales`, `{table}` = `orders`, `{stream}` = `sales_orders`).
/// No I/O.
pub fn plan_named_streams(job: &Job) -> Result<Vec<StreamPlan>> {
    let src = source_map(job);
    let key = match (src.get(STREAMS_KEY), src.get(RESOURCES_KEY)) {
        (Some(_), Some(_)) => {
            return Err(job.error_at(
                "source.config.resources",
                "`resources` and `streams` name the same thing: keep one",
            ))
        }
        (_, Some(_)) => RESOURCES_KEY,
        _ => STREAMS_KEY,
    };
    let err = |k: &str, m: &str| job.error_at(&format!("source.config.{k}"), m);
    let entries = match src.get(key) {
        Some(Value::Object(m)) if !m.is_empty() => m,
        _ => {
            return Err(err(
                key,
                &format!(
                    "must be a non-empty mapping from a stream name to its settings, e.g. `{key}: {{orders: {{…}}, customers: {{…}}}}`"
                ),
            ))
        }
    };
    let writer = match &job.config.target.writer {
        Implementation::Builtin(n) => n.as_str(),
        _ => "",
    };
    let mut base = src.clone();
    base.remove(key);
    let mut plans = Vec::with_capacity(entries.len());
    for (name, v) in entries {
        let at = format!("{key}.{name}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.'))
            || name.starts_with('.')
            || name.ends_with('.')
        {
            return Err(err(
                &at,
                "a stream name is letters, digits, `_`, `-` and `.` (`orders`, `sales.orders`)",
            ));
        }
        let mut o = match v {
            Value::Object(o) => o.clone(),
            Value::Null => Map::new(),
            _ => return Err(err(
                &at,
                "must be a mapping of the reader's settings for this stream (and `target: {…}`)",
            )),
        };
        for k in [TABLES_KEY, STREAMS_KEY, RESOURCES_KEY] {
            if o.contains_key(k) {
                return Err(err(&format!("{at}.{k}"), "cannot be set per stream"));
            }
        }
        let target_over = match o.remove(TARGET_OVERRIDE_KEY) {
            None => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                return Err(err(
                    &format!("{at}.{TARGET_OVERRIDE_KEY}"),
                    "must be a mapping of target settings",
                ))
            }
        };
        let (schema, table) = match name.rsplit_once('.') {
            Some((s, t)) => (s.to_string(), t.to_string()),
            None => (String::new(), name.clone()),
        };
        let t = SourceTable {
            schema,
            name: table,
            reference: name.clone(),
            ..SourceTable::default()
        };
        let mut s = base.clone();
        merge_into(&mut s, &o);
        let mut s = Value::Object(s);
        let stream_part = name_part(&name.replace('.', "_"));
        render_with(
            &mut s,
            &name_part(&t.schema),
            &name_part(&t.name),
            &stream_part,
        );
        let mut target = job.config.target.config.clone();
        if let Value::Object(m) = &mut target {
            merge_into(m, &target_over);
        }
        render_with(
            &mut target,
            &name_part(&t.schema),
            &name_part(&t.name),
            &stream_part,
        );
        let cursor = match (s.get("cursor"), s.get("incremental")) {
            (Some(Value::String(c)), _) => Some(c.clone()),
            (_, Some(Value::Object(i))) => i
                .get("cursor_field")
                .and_then(Value::as_str)
                .map(str::to_string),
            (_, Some(Value::Bool(true))) => Some("(new objects)".to_string()),
            _ => None,
        };
        let primary_key: Vec<String> = match s.get("primary_key") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            Some(Value::String(k)) => vec![k.clone()],
            _ => Vec::new(),
        };
        let partitions = s.get("partitions").and_then(Value::as_u64).unwrap_or(1);
        let target_mode = target
            .get("mode")
            .and_then(Value::as_str)
            .map(str::to_string);
        let shown = shown_target(writer, &target);
        let mut sj = job.clone();
        sj.config.name = stream_key(job.name(), name);
        sj.config.source.config = s;
        sj.config.target.config = target;
        plans.push(StreamPlan {
            stream: name.clone(),
            table: t,
            cursor,
            primary_key,
            target: shown,
            target_mode,
            partitions,
            notes: Vec::new(),
            job: sj,
        });
    }
    check_targets(job, &plans)?;
    Ok(plans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::Substitution;
    use std::path::Path;

    /// Job `db`: postgres into iceberg with these config lines.
    fn job(src: &str, target: &str) -> Job {
        any_job("postgres", src, "iceberg", target)
    }

    fn table(
        schema: &str,
        name: &str,
        pk: &[&str],
        cols: &[(&str, &str, bool)],
        bytes: u64,
    ) -> SourceTable {
        SourceTable {
            schema: schema.into(),
            name: name.into(),
            reference: format!("{schema}.{name}"),
            rows: Some(bytes / 100),
            bytes: Some(bytes),
            primary_key: pk.iter().map(|s| s.to_string()).collect(),
            columns: cols
                .iter()
                .map(|(n, t, nn)| SourceColumn {
                    name: n.to_string(),
                    type_name: t.to_string(),
                    not_null: *nn,
                })
                .collect(),
        }
    }

    #[test]
    fn globs() {
        assert!(glob("*", "anything"));
        assert!(glob("tmp_*", "tmp_x"));
        assert!(!glob("tmp_*", "xtmp_x"));
        assert!(glob("a?c", "abc"));
        assert!(glob("*_log*", "app_log_2024"));
        assert!(!glob("orders", "orders2"));
        assert!(glob("", ""));
    }

    #[test]
    fn selection_defaults_overrides_and_targets() {
        let j = job(
            "    url: postgres://x\n    tables: [\"public.*\", \"sales.orders\", \"!public.tmp_*\"]\n    partitions: 4\n    streams:\n      public.events: {cursor: created_at, target: {partition_by: [\"day(created_at)\"]}}\n      public.nothing: {cursor: x}",
            "    table: \"raw.{schema}_{table}\"\n    catalog: {uri: \"sqlite://x.db\"}",
        );
        let ts = vec![
            table(
                "public",
                "users",
                &["id"],
                &[
                    ("id", "bigint", true),
                    ("updated_at", "timestamp with time zone", true),
                ],
                10,
            ),
            table("public", "tmp_x", &["id"], &[("id", "bigint", true)], 10),
            table(
                "public",
                "events",
                &[],
                &[("created_at", "timestamp", false)],
                1000,
            ),
            table(
                "public",
                "pairs",
                &["a", "b"],
                &[
                    ("a", "int", true),
                    ("b", "int", true),
                    ("updated_at", "timestamp", false),
                ],
                50,
            ),
            table("sales", "orders", &["id"], &[("id", "bigint", true)], 5),
            table("sales", "other", &["id"], &[("id", "bigint", true)], 5),
            table("public", "heap", &[], &[("v", "integer", false)], 20),
        ];
        let sel = Selection::of(&j).unwrap();
        assert_eq!(
            sel.unmatched_overrides(&ts),
            vec!["public.nothing".to_string()]
        );
        let plans = plan_streams(&j, ts).unwrap();
        let names: Vec<&str> = plans.iter().map(|p| p.stream.as_str()).collect();
        // Largest first; tmp_* excluded; sales.other not selected.
        assert_eq!(
            names,
            [
                "public.events",
                "public.pairs",
                "public.heap",
                "public.users",
                "sales.orders"
            ]
        );
        let p = &plans[0];
        assert_eq!(p.job.name(), "db/public.events");
        assert_eq!(p.cursor.as_deref(), Some("created_at"));
        assert_eq!(p.target, "raw.public_events");
        assert_eq!(
            p.job.config.target.config["partition_by"][0],
            "day(created_at)"
        );
        assert_eq!(p.job.config.source.config["table"], "public.events");
        // Keyless, incremental: appended; partitions kept (the cursor splits the read).
        assert_eq!(p.target_mode, None);
        // Nullable updated_at is not taken by default; composite key splits on its lead.
        let p = &plans[1];
        assert_eq!(p.cursor, None);
        assert_eq!(p.job.config.source.config["partition_column"], "a");
        assert_eq!(p.partitions, 4);
        // Keyless full refresh from PostgreSQL: split by physical location.
        let p = &plans[2];
        assert_eq!(p.partitions, 4);
        assert!(p.job.config.source.config.get("partition_column").is_none());
        assert!(p.notes.iter().any(|n| n.contains("ctid")), "{:?}", p.notes);
        let p = &plans[3];
        assert_eq!(p.cursor.as_deref(), Some("updated_at"));
        assert_eq!(p.target_mode.as_deref(), Some("merge"));
        assert_eq!(p.job.config.target.config["mode"], "merge");
        let p = &plans[4];
        assert_eq!(p.cursor, None);
        assert!(p.job.config.source.config.get("tables").is_none());
        assert!(p.job.config.source.config.get("streams").is_none());
    }

    #[test]
    fn one_target_for_several_streams_is_refused() {
        let j = job(
            "    url: postgres://x\n    tables: [\"*.orders\"]",
            "    table: \"raw.{table}\"\n    catalog: {uri: \"sqlite://x.db\"}",
        );
        let ts = vec![
            table("a", "orders", &["id"], &[], 1),
            table("b", "orders", &["id"], &[], 1),
        ];
        let e = plan_streams(&j, ts).unwrap_err().to_string();
        assert!(
            e.contains("would write the same target `raw.orders`"),
            "{e}"
        );
        let j = job(
            "    url: postgres://x\n    tables: [\"public.*\"]\n    table: x",
            "    table: \"raw.t\"",
        );
        assert!(Selection::of(&j)
            .unwrap_err()
            .to_string()
            .contains("exclude each other"));
    }

    #[test]
    fn explicit_cursor_list_and_full_refresh() {
        let j = job(
            "    url: postgres://x\n    tables: [\"s.*\"]\n    cursor: [changed, updated_at]",
            "    table: \"raw.{table}\"",
        );
        let ts = vec![
            table("s", "a", &["id"], &[("updated_at", "text", false)], 1),
            table(
                "s",
                "b",
                &["id"],
                &[
                    ("changed", "bigint", false),
                    ("updated_at", "timestamp", true),
                ],
                2,
            ),
            table("s", "c", &["id"], &[], 3),
        ];
        let plans = plan_streams(&j, ts.clone()).unwrap();
        let cursors: Vec<Option<&str>> = plans.iter().map(|p| p.cursor.as_deref()).collect();
        assert_eq!(cursors, [None, Some("changed"), Some("updated_at")]);
        let j = job(
            "    url: postgres://x\n    tables: [\"s.*\"]\n    mode: full_refresh",
            "    table: \"raw.{table}\"",
        );
        assert!(plan_streams(&j, ts)
            .unwrap()
            .iter()
            .all(|p| p.cursor.is_none()));
    }

    /// Job `db` with these reader, writer and config lines.
    fn any_job(reader: &str, src: &str, writer: &str, target: &str) -> Job {
        let text = format!(
            "name: db\nsource:\n  reader: {reader}\n  config:\n{src}\ntarget:\n  writer: {writer}\n  config:\n{target}\n"
        );
        Job::parse(
            &text,
            Path::new("db.yaml"),
            &Substitution {
                base_dir: Path::new("."),
                env: &|_| None,
            },
        )
        .unwrap()
    }

    #[test]
    fn named_streams_merge_and_render_source_and_target() {
        let j = any_job(
            "file",
            "    path: \"landing/{stream}/*.csv\"\n    csv: {delimiter: \";\"}\n    streams:\n      orders: {}\n      customers: {format: jsonl, path: \"crm/*.jsonl\", csv: {header: false}}\n      sales.refunds: {target: {path: \"other/{schema}/{table}\"}}",
            "parquet",
            "    path: \"lake/{stream}\"",
        );
        assert!(is_multi(&j) && is_named(&j));
        let p = plan_streams(&j, Vec::new()).unwrap();
        let names: Vec<&str> = p.iter().map(|p| p.stream.as_str()).collect();
        assert_eq!(
            names,
            ["customers", "orders", "sales.refunds"],
            "name order"
        );
        let src = |i: usize| &p[i].job.config.source.config;
        assert_eq!(src(1)["path"], "landing/orders/*.csv");
        assert_eq!(src(1)["csv"]["delimiter"], ";");
        assert!(src(1).get("streams").is_none());
        assert_eq!(src(0)["path"], "crm/*.jsonl");
        assert_eq!(src(0)["format"], "jsonl");
        assert_eq!(src(0)["csv"]["delimiter"], ";", "nested settings merge");
        assert_eq!(src(0)["csv"]["header"], false);
        assert_eq!(src(2)["path"], "landing/sales_refunds/*.csv");
        assert_eq!(p[1].target, "lake/orders");
        assert_eq!(p[0].target, "lake/customers");
        assert_eq!(p[2].target, "other/sales/refunds");
        assert_eq!(p[0].job.name(), "db/customers");
        assert_eq!(p[2].job.name(), "db/sales.refunds");
    }

    #[test]
    fn http_resources_and_their_mistakes() {
        let j = any_job(
            "http",
            "    base_url: http://api\n    resources:\n      users: {path: /users}\n      orders: {path: /orders, incremental: {cursor_field: updated_at, param: since}}",
            "iceberg",
            "    table: \"api.{stream}\"",
        );
        let p = plan_named_streams(&j).unwrap();
        assert_eq!(p[1].job.config.source.config["path"], "/users");
        assert_eq!(p[1].job.config.source.config["base_url"], "http://api");
        assert!(p[1].job.config.source.config.get("resources").is_none());
        assert_eq!(p[0].cursor.as_deref(), Some("updated_at"));
        assert_eq!(p[0].target, "api.orders");

        // The planning error of an http job with these source lines into `table`.
        let error = |src: &str, table: &str| {
            let j = any_job(
                "http",
                &format!("    base_url: http://api\n{src}"),
                "iceberg",
                table,
            );
            plan_named_streams(&j).unwrap_err().to_string()
        };
        let e = error(
            "    resources:\n      users: {path: /users}\n      orders: {path: /orders}",
            "    table: api.all",
        );
        assert!(e.contains("`{stream}`") && e.contains("api.all"), "{e}");
        let per_stream = "    table: \"api.{stream}\"";
        let e = error(
            "    resources: {a: {path: /a}}\n    streams: {b: {path: /b}}",
            per_stream,
        );
        assert!(e.contains("keep one"), "{e}");
        let e = error("    resources: {\"a/b\": {path: /a}}", per_stream);
        assert!(e.contains("resources.a/b"), "{e}");
        let e = error("    resources: {}", per_stream);
        assert!(e.contains("non-empty mapping"), "{e}");
    }

    #[test]
    fn change_data_capture_is_one_table_per_job() {
        let j = job(
            "    url: postgres://x\n    tables: [\"public.*\"]\n    mode: cdc",
            "    table: \"raw.{table}\"",
        );
        let e = plan_streams(&j, vec![table("public", "t", &["id"], &[], 1)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("one table per job"), "{e}");
    }
}
