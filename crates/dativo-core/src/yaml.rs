//! YAML → JSON with a line for every key path, and `${env:…}` / `${file:…}` substitution.
//!
//! Job files are YAML, but everything downstream (connector configs, plugins over a C ABI or
//! gRPC) speaks JSON. This module parses YAML once, into a [`serde_json::Value`], remembering the
//! line of every key so that an error found later — by serde, by a connector's own validation —
//! can name the file, the key path and the line. References are resolved inside string values
//! only, after parsing, so a secret can never break the YAML syntax; every substituted value is
//! registered with [`crate::secrets`] so that it never appears in an error or a log line.
//!
//! Scalar typing follows YAML 1.2's core schema: quoted scalars are strings; plain scalars may be
//! null, booleans, integers or floats. A plain scalar that is exactly one reference
//! (`port: ${env:PORT}`) is typed after substitution; quote it to keep it a string
//! (`password: "${env:PW}"`).
//!
//! Job files may come from people who should not be able to stop dativo, so parsing is bounded:
//! at most [`MAX_DOCUMENT_BYTES`] of text, [`MAX_VALUES`] values after aliases are expanded (an
//! alias bomb — anchors of anchors — is refused before it is built) and [`MAX_DEPTH`] levels of
//! nesting. The events are consumed in a loop, never recursively.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

use crate::error::{Error, Result};
use crate::secrets;

/// The largest job file (and YAML text) accepted, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// The most values (scalars, mappings, sequences, keys included) a document may hold once every
/// alias is expanded; the copies kept for anchors count against the same budget.
pub const MAX_VALUES: usize = 100_000;

/// The deepest nesting of mappings and sequences.
pub const MAX_DEPTH: usize = 64;

/// A parsed YAML document: its JSON value and the line of every key path.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document as JSON, with references substituted.
    pub value: Value,
    lines: HashMap<String, usize>,
}

/// Where `${file:…}` references are resolved from, and where environment values come from.
pub struct Substitution<'a> {
    /// Directory that relative `${file:…}` paths are relative to (the job file's directory).
    pub base_dir: &'a Path,
    /// Environment lookup; `std::env::var` in production.
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Document {
    /// Parse `text`. Errors name the line; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &str, subst: &Substitution<'_>) -> Result<Document> {
        if text.len() > MAX_DOCUMENT_BYTES {
            return Err(Error::config(format!(
                "{origin}: is {} bytes; a job file may be at most {MAX_DOCUMENT_BYTES} bytes",
                text.len()
            )));
        }
        let mut builder = Builder {
            stack: Vec::new(),
            anchors: HashMap::new(),
            lines: HashMap::new(),
            root: None,
            error: None,
            subst,
            docs: 0,
            values: 0,
            anchored: 0,
            stop: false,
        };
        // Not `Parser::load`: it recurses once per nesting level, and it cannot stop early.
        let mut parser = Parser::new_from_str(text);
        loop {
            let (ev, mark) = parser.next_token().map_err(|e| {
                Error::config(format!(
                    "{origin}:{}: invalid YAML: {}",
                    e.marker().line(),
                    e.info()
                ))
            })?;
            if ev == Event::StreamEnd {
                break;
            }
            builder.on_event(ev, mark);
            if builder.stop {
                break;
            }
        }
        if let Some((line, path, msg)) = builder.error {
            let at = if path.is_empty() {
                String::new()
            } else {
                format!(" {path}:")
            };
            return Err(Error::config(format!("{origin}:{line}:{at} {msg}")));
        }
        if builder.docs > 1 {
            return Err(Error::config(format!(
                "{origin}: holds {} YAML documents; a job file holds exactly one",
                builder.docs
            )));
        }
        Ok(Document {
            value: builder.root.unwrap_or(Value::Null),
            lines: builder.lines,
        })
    }

    /// The line of `path` (`source.config.table`, `columns[1]`), or of its nearest ancestor that
    /// has one. `None` only for an empty document.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path.to_string();
        loop {
            if let Some(l) = self.lines.get(&p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p.truncate(cut);
        }
    }
}

enum Frame {
    Map {
        map: Map<String, Value>,
        /// Entries of `<<` merge keys: the mapping's own keys win over them.
        merged: Map<String, Value>,
        key: Option<String>,
        path: String,
        anchor: usize,
        /// [`Builder::values`] when the mapping started.
        start: usize,
    },
    Seq {
        items: Vec<Value>,
        path: String,
        anchor: usize,
        /// [`Builder::values`] when the sequence started.
        start: usize,
    },
}

struct Builder<'a, 'b> {
    stack: Vec<Frame>,
    /// Anchored values and how many values each holds.
    anchors: HashMap<usize, (Value, usize)>,
    lines: HashMap<String, usize>,
    root: Option<Value>,
    /// First error: line, key path, message.
    error: Option<(usize, String, String)>,
    subst: &'a Substitution<'b>,
    docs: usize,
    /// Values built so far, aliases expanded.
    values: usize,
    /// Values copied for anchors; `values + anchored` is bounded by [`MAX_VALUES`].
    anchored: usize,
    /// A limit was hit: stop reading events (the error is set).
    stop: bool,
}

impl Builder<'_, '_> {
    /// The path that the next value will have, and whether it is a mapping key.
    fn next_path(&self) -> (String, bool) {
        match self.stack.last() {
            None => (String::new(), false),
            Some(Frame::Map { key: None, .. }) => (String::new(), true),
            Some(Frame::Map {
                key: Some(k), path, ..
            }) => (join(path, k), false),
            Some(Frame::Seq { items, path, .. }) => (format!("{path}[{}]", items.len()), false),
        }
    }

    fn fail(&mut self, line: usize, path: String, msg: String) {
        if self.error.is_none() {
            self.error = Some((line, path, msg));
        }
    }

    /// Count `n` more values against [`MAX_VALUES`]; false (and stop) when over.
    fn charge(&mut self, n: usize, line: usize, what: &str) -> bool {
        self.values = self.values.saturating_add(n);
        self.within_budget(line, what)
    }

    fn within_budget(&mut self, line: usize, what: &str) -> bool {
        if self.values.saturating_add(self.anchored) <= MAX_VALUES {
            return true;
        }
        let (path, _) = self.next_path();
        self.fail(
            line,
            path,
            format!(
                "{what}: the document would hold more than {MAX_VALUES} values (aliases expanded); a job file may hold at most {MAX_VALUES}"
            ),
        );
        self.stop = true;
        false
    }

    /// Attach a finished value of `size` values to its parent.
    fn push_value(&mut self, value: Value, anchor: usize, size: usize, line: usize) {
        if anchor > 0 {
            // The copy kept for aliases counts too: nested anchors would otherwise copy each
            // level again.
            self.anchored = self.anchored.saturating_add(size);
            if !self.within_budget(line, "too many anchored values") {
                return;
            }
            self.anchors.insert(anchor, (value.clone(), size));
        }
        match self.stack.last_mut() {
            None => self.root = Some(value),
            Some(Frame::Seq { items, path, .. }) => {
                let p = format!("{path}[{}]", items.len());
                self.lines.entry(p).or_insert(line);
                items.push(value);
            }
            Some(Frame::Map {
                map,
                merged,
                key,
                path,
                ..
            }) => match key.take() {
                None => {
                    // This value is a key.
                    let k = match value {
                        Value::String(s) => s,
                        Value::Null => "null".to_string(),
                        other => other.to_string(),
                    };
                    let full = join(path, &k);
                    let duplicate = map.contains_key(&k);
                    let msg = format!("duplicate key `{k}`");
                    *key = Some(k);
                    if duplicate {
                        self.fail(line, full.clone(), msg);
                    }
                    self.lines.insert(full, line);
                }
                Some(k) if k == "<<" => {
                    // A merge key: `<<: *defaults` or `<<: [*a, *b]` (earlier ones win).
                    let maps = match value {
                        Value::Object(m) => vec![m],
                        Value::Array(items) if items.iter().all(Value::is_object) => items
                            .into_iter()
                            .filter_map(|v| match v {
                                Value::Object(m) => Some(m),
                                _ => None,
                            })
                            .collect(),
                        _ => {
                            let at = join(path, "<<");
                            self.fail(
                                line,
                                at,
                                "`<<` merges a mapping into this one: `<<: *defaults` (or a list of them)".into(),
                            );
                            return;
                        }
                    };
                    for m in maps {
                        for (k, v) in m {
                            merged.entry(k).or_insert(v);
                        }
                    }
                }
                Some(k) => {
                    map.insert(k, value);
                }
            },
        }
    }

    fn scalar(&mut self, text: String, style: TScalarStyle, line: usize) -> Value {
        let (path, is_key) = self.next_path();
        let plain = style == TScalarStyle::Plain;
        if is_key {
            return Value::String(text);
        }
        if !text.contains("${") {
            return if plain {
                plain_scalar(&text)
            } else {
                Value::String(text)
            };
        }
        match substitute(&text, self.subst) {
            Ok((out, whole)) => {
                if plain && whole {
                    plain_scalar(&out)
                } else {
                    Value::String(out)
                }
            }
            Err(msg) => {
                self.fail(line, path, msg);
                Value::Null
            }
        }
    }
}

impl MarkedEventReceiver for Builder<'_, '_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            Event::DocumentStart => self.docs += 1,
            Event::Scalar(text, style, anchor, _tag) => {
                if !self.charge(1, line, "too many values") {
                    return;
                }
                let v = self.scalar(text, style, line);
                self.push_value(v, anchor, 1, line);
            }
            Event::Alias(id) => {
                let (v, size) = match self.anchors.get(&id) {
                    Some((_, size)) => {
                        let size = *size;
                        if !self.charge(size, line, "too many values from aliases") {
                            return;
                        }
                        (self.anchors[&id].0.clone(), size)
                    }
                    None => (Value::Null, 1),
                };
                self.push_value(v, 0, size, line);
            }
            Event::MappingStart(anchor, _) | Event::SequenceStart(anchor, _) => {
                let start = self.values;
                if self.stack.len() >= MAX_DEPTH {
                    let (path, _) = self.next_path();
                    self.fail(
                        line,
                        path,
                        format!("nested more than {MAX_DEPTH} levels deep"),
                    );
                    self.stop = true;
                    return;
                }
                if !self.charge(1, line, "too many values") {
                    return;
                }
                let (path, _) = self.next_path();
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        map: Map::new(),
                        merged: Map::new(),
                        key: None,
                        path,
                        anchor,
                        start,
                    }
                } else {
                    Frame::Seq {
                        items: Vec::new(),
                        path,
                        anchor,
                        start,
                    }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                let (value, anchor, start) = match self.stack.pop() {
                    Some(Frame::Map {
                        mut map,
                        merged,
                        anchor,
                        start,
                        ..
                    }) => {
                        for (k, v) in merged {
                            map.entry(k).or_insert(v);
                        }
                        (Value::Object(map), anchor, start)
                    }
                    Some(Frame::Seq {
                        items,
                        anchor,
                        start,
                        ..
                    }) => (Value::Array(items), anchor, start),
                    None => return,
                };
                let size = self.values - start;
                self.push_value(value, anchor, size, line);
            }
            _ => {}
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn plain_scalar(text: &str) -> Value {
    match Yaml::from_str(text) {
        Yaml::Null => Value::Null,
        Yaml::Boolean(b) => Value::Bool(b),
        Yaml::Integer(i) => Value::Number(i.into()),
        Yaml::Real(r) => r
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(text.to_string())),
        _ => Value::String(text.to_string()),
    }
}

/// Substitute every `${env:NAME}`, `${env:NAME:-default}` and `${file:PATH}` in `text`;
/// `$${` is a literal `${`. Returns the text and whether it consisted of exactly one reference.
/// Error messages name the reference, never a value.
pub fn substitute(
    text: &str,
    subst: &Substitution<'_>,
) -> std::result::Result<(String, bool), String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut refs = 0;
    let mut literal = false;
    while let Some(i) = rest.find("${") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            literal = true;
            continue;
        }
        out.push_str(&rest[..i]);
        literal |= i > 0;
        let body_start = i + 2;
        let Some(len) = rest[body_start..].find('}') else {
            return Err(format!("unterminated reference `{}`", &rest[i..]));
        };
        let body = &rest[body_start..body_start + len];
        out.push_str(&resolve(body, subst)?);
        refs += 1;
        rest = &rest[body_start + len + 1..];
    }
    literal |= !rest.is_empty();
    out.push_str(rest);
    Ok((out, refs == 1 && !literal))
}

fn resolve(body: &str, subst: &Substitution<'_>) -> std::result::Result<String, String> {
    let (scheme, arg) = body.split_once(':').ok_or_else(|| {
        format!("invalid reference `${{{body}}}`: expected `${{env:NAME}}` or `${{file:PATH}}`")
    })?;
    let value = match scheme {
        "env" => {
            let (name, default) = match arg.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (arg, None),
            };
            match ((subst.env)(name), default) {
                (Some(v), _) => v,
                (None, Some(d)) => return Ok(d.to_string()),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (referenced as `${{env:{name}}}`)"
                    ))
                }
            }
        }
        "file" => {
            let p = PathBuf::from(arg);
            let p = if p.is_relative() {
                subst.base_dir.join(p)
            } else {
                p
            };
            let mut v = std::fs::read_to_string(&p)
                .map_err(|e| format!("cannot read `${{file:{arg}}}` ({}): {e}", p.display()))?;
            // Secret files conventionally end with a newline that is not part of the secret.
            while v.ends_with('\n') || v.ends_with('\r') {
                v.pop();
            }
            v
        }
        other => {
            return Err(format!(
                "unknown reference scheme `{other}` in `${{{body}}}`: expected `env` or `file`"
            ))
        }
    };
    secrets::register(&value);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Document> {
        let subst = Substitution {
            base_dir: Path::new("."),
            env,
        };
        Document::parse(text, "job.yaml", &subst)
    }

    fn parse(text: &str) -> Result<Document> {
        parse_with(text, &|_| None)
    }

    #[test]
    fn merge_keys_merge_anchored_mappings_and_own_keys_win() {
        let doc = parse(
            "x-pg: &pg {url: 'postgres://h', batch_size: 10}\nx-big: &big {batch_size: 99, partitions: 4}\na:\n  <<: *pg\n  batch_size: 20\nb:\n  batch_size: 5\n  <<: [*big, *pg]\n",
        )
        .unwrap();
        assert_eq!(doc.value["a"]["url"], "postgres://h");
        assert_eq!(doc.value["a"]["batch_size"], 20);
        assert_eq!(doc.value["b"]["batch_size"], 5);
        assert_eq!(doc.value["b"]["partitions"], 4);
        assert_eq!(doc.value["b"]["url"], "postgres://h");
        assert!(doc.value["a"].get("<<").is_none());
        let e = parse("a:\n  <<: 3\n").unwrap_err().to_string();
        assert!(e.contains("`<<` merges a mapping"), "{e}");
    }

    #[test]
    fn converts_and_locates() {
        let doc = parse(
            "name: x\nsource:\n  reader: file\n  config: { path: 'a.csv', n: 3, f: 1.5, b: true }\nlist:\n  - a\n  - 0x10\n",
        )
        .unwrap();
        assert_eq!(doc.value["source"]["config"]["path"], "a.csv");
        assert_eq!(doc.value["source"]["config"]["n"], 3);
        assert_eq!(doc.value["source"]["config"]["f"], 1.5);
        assert_eq!(doc.value["source"]["config"]["b"], true);
        assert_eq!(doc.value["list"][1], 16);
        assert_eq!(doc.line_of("name"), Some(1));
        assert_eq!(doc.line_of("source.reader"), Some(3));
        assert_eq!(doc.line_of("source.config.n"), Some(4));
        assert_eq!(doc.line_of("source.config.missing"), Some(4));
        assert_eq!(doc.line_of("list[1]"), Some(7));
    }

    #[test]
    fn substitutes_and_types_whole_plain_references() {
        let env = |k: &str| match k {
            "PORT" => Some("5432".to_string()),
            "PW" => Some("0123".to_string()),
            _ => None,
        };
        let doc = parse_with(
            "a: ${env:PORT}\nb: \"${env:PORT}\"\nc: x-${env:PW}\nd: $${env:PORT}\ne: ${env:NOPE:-dflt}\n",
            &env,
        )
        .unwrap();
        assert_eq!(doc.value["a"], 5432);
        assert_eq!(doc.value["b"], "5432");
        assert_eq!(doc.value["c"], "x-0123");
        assert_eq!(doc.value["d"], "${env:PORT}");
        assert_eq!(doc.value["e"], "dflt");
    }

    #[test]
    fn errors_name_line_and_path() {
        let e = parse("a: 1\nsrc:\n  url: ${env:DATIVO_SURELY_UNSET}\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "job.yaml:3: src.url: environment variable `DATIVO_SURELY_UNSET` is not set (referenced as `${env:DATIVO_SURELY_UNSET}`)"
        );
        let e = parse("a: 1\na: 2\n").unwrap_err();
        assert!(
            e.to_string().starts_with("job.yaml:2: a: duplicate key"),
            "{e}"
        );
        let e = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(e.to_string().starts_with("job.yaml:"), "{e}");
        assert!(e.to_string().contains("invalid YAML"), "{e}");
    }

    #[test]
    fn aliases_are_expanded_within_limits() {
        let doc = parse("base: &b {x: 1, y: [1, 2]}\nother: *b\n").unwrap();
        assert_eq!(doc.value["other"]["y"][1], 2);
        assert_eq!(doc.value["base"], doc.value["other"]);
    }

    #[test]
    fn alias_bombs_are_refused_before_they_are_built() {
        // 10 levels of 10 aliases each: 10^10 values if expanded.
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![p; 10].join(", ")));
        }
        let e = parse(&text).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Config);
        assert!(e.to_string().starts_with("job.yaml:"), "{e}");
        assert!(e.to_string().contains("more than 100000 values"), "{e}");
        // Nested anchors, each level copied for its alias, count too.
        let nested = format!("a: {}x{}\n", "&n [".repeat(60), "]".repeat(60));
        assert!(parse(&nested).is_ok());
    }

    #[test]
    fn deep_nesting_and_huge_text_are_refused() {
        let deep = format!("a: {}1{}\n", "[".repeat(200), "]".repeat(200));
        let e = parse(&deep).unwrap_err();
        assert!(e.to_string().contains("nested more than 64 levels"), "{e}");
        let block: String = (0..2000)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        let e = parse(&block[..block.len().min(MAX_DOCUMENT_BYTES)]).unwrap_err();
        assert!(e.to_string().contains("nested more than 64 levels"), "{e}");
        let big = format!("a: '{}'\n", "x".repeat(MAX_DOCUMENT_BYTES));
        let e = parse(&big).unwrap_err();
        assert!(e.to_string().contains("at most 1048576 bytes"), "{e}");
    }

    #[test]
    fn file_references_strip_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "s3cret-from-file\n").unwrap();
        let subst = Substitution {
            base_dir: dir.path(),
            env: &|_| None,
        };
        let doc = Document::parse("pw: ${file:pw}\n", "j.yaml", &subst).unwrap();
        assert_eq!(doc.value["pw"], "s3cret-from-file");
        assert_eq!(secrets::redact("x s3cret-from-file y"), "x *** y");
    }
}
