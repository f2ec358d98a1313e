//! The JSONPath subset the `http` reader needs: `$`, `$.a.b`, `$.a[0].b`, `$['a b']`.

use serde_json::Value;

/// One step of a path.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// An object field.
    Field(String),
    /// An array index.
    Index(usize),
}

/// Parse `path` into steps.
pub fn parse(path: &str) -> Result<Vec<Step>, String> {
    let p = path.trim();
    let bad = |why: &str| {
        format!("invalid JSONPath `{path}`: {why} (use e.g. $.data.items or $.pages[0].rows)")
    };
    let mut rest = p
        .strip_prefix('$')
        .ok_or_else(|| bad("it must start with `$`"))?;
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            if end == 0 {
                return Err(bad("empty field name"));
            }
            steps.push(Step::Field(r[..end].to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").ok_or_else(|| bad("unclosed ['"))?;
            steps.push(Step::Field(r[..end].to_string()));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or_else(|| bad("unclosed ["))?;
            let i = r[..end]
                .trim()
                .parse()
                .map_err(|_| bad("an index must be a number"))?;
            steps.push(Step::Index(i));
            rest = &r[end + 1..];
        } else {
            return Err(bad("expected `.` or `[`"));
        }
    }
    Ok(steps)
}

/// The value at `steps` in `v`.
pub fn get<'a>(v: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    let mut cur = v;
    for s in steps {
        cur = match s {
            Step::Field(f) => cur.get(f)?,
            Step::Index(i) => cur.get(*i)?,
        };
    }
    Some(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        let v = json!({"data": {"items": [1, 2]}, "a b": [{"c": 3}]});
        assert_eq!(
            get(&v, &parse("$.data.items").unwrap()),
            Some(&json!([1, 2]))
        );
        assert_eq!(get(&v, &parse("$['a b'][0].c").unwrap()), Some(&json!(3)));
        assert_eq!(get(&v, &parse("$").unwrap()), Some(&v));
        assert!(get(&v, &parse("$.nope").unwrap()).is_none());
        assert!(parse("data.items").is_err());
        assert!(parse("$.a[x]").is_err());
    }
}
