//! Reading pipeline files: YAML with positions, `${VAR}` interpolation, typed decoding that
//! reports every section's problem at once, each with file:line:col.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_norway::Value;
use ymera_common::FieldType;
use ymera_common::yaml::join;
pub use ymera_common::yaml::{Diagnostic, Positions};

use crate::spec::{
    BatchSpec, DlqSpec, PipelineSpec, SinkSpec, SourceSpec, TestSpec, TransformSpec,
};

/// Resolves `${VAR}`; `None` leaves variables as written (`validate --no-environment`).
pub type Env<'a> = Option<&'a dyn Fn(&str) -> Option<String>>;

/// A parsed pipeline file: the spec when it decoded, the positions, the problems.
#[derive(Debug)]
pub struct Loaded {
    pub file: PathBuf,
    pub spec: Option<PipelineSpec>,
    pub positions: Positions,
    pub diagnostics: Vec<Diagnostic>,
    /// Things that work but are probably not meant (`validate --deny-warnings` refuses them).
    pub warnings: Vec<Diagnostic>,
}

impl Loaded {
    /// A diagnostic of this file at `(line, col)`.
    fn at(&self, (line, col): (usize, usize), path: String, message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            path,
            message,
        }
    }

    /// Adds a warning at a YAML path.
    pub fn warn_at(&mut self, path: &str, message: impl Into<String>) {
        let d = self.at(
            self.positions.locate(path),
            path.to_string(),
            message.into(),
        );
        self.warnings.push(d);
    }

    /// Adds a problem at a YAML path.
    pub fn error_at(&mut self, path: &str, message: impl Into<String>) {
        let d = self.at(
            self.positions.locate(path),
            path.to_string(),
            message.into(),
        );
        self.diagnostics.push(d);
    }

    /// Adds a problem located at the key `key` of the map at `parent`.
    pub fn error_at_key(&mut self, parent: &str, key: &str, message: impl Into<String>) {
        let d = self.at(
            self.positions.locate_key(parent, key),
            join(parent, key),
            message.into(),
        );
        self.diagnostics.push(d);
    }
}

const TOP_KEYS: &[&str] = &[
    "name",
    "source",
    "transforms",
    "sinks",
    "dlq",
    "batch",
    "tests",
];

/// Reads one pipeline file. `env` resolves `${VAR}`; when `None`, variables are left as
/// written and not checked (`validate --no-environment`).
pub fn load_file(file: &Path, env: Env<'_>) -> Loaded {
    let mut loaded = Loaded {
        file: file.to_path_buf(),
        spec: None,
        positions: Positions::default(),
        diagnostics: Vec::new(),
        warnings: Vec::new(),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            loaded.error_at("", format!("cannot read file: {e}"));
            return loaded;
        }
    };
    load_str(&mut loaded, &text, env);
    loaded
}

/// Like [`load_file`] over text already read (used by tests).
pub fn load_str(loaded: &mut Loaded, text: &str, env: Env<'_>) {
    loaded.positions = Positions::of(text);
    let mut root: Value = match serde_norway::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let message = e.to_string();
            // libyaml's context ("while scanning a quoted scalar at line 7 column 14") names
            // where the construct began; the error's own location is often the end of input
            let (line, col) = first_position(&message)
                .or_else(|| e.location().map(|l| (l.line(), l.column())))
                .unwrap_or((1, 1));
            let d = loaded.at(
                (line, col),
                String::new(),
                format!("invalid YAML: {message}"),
            );
            loaded.diagnostics.push(d);
            return;
        }
    };
    if let Some(env) = env {
        let mut unset = Vec::new();
        interpolate(&mut root, String::new(), env, &mut unset);
        for (path, var) in unset {
            loaded.error_at(&path, format!("environment variable `{var}` is not set"));
        }
    }
    let Value::Mapping(map) = root else {
        loaded.error_at(
            "",
            "a pipeline file must be a YAML mapping with `name`, `source` and `sinks`",
        );
        return;
    };
    for key in map.keys() {
        let k = key.as_str().unwrap_or("?");
        if !TOP_KEYS.contains(&k) {
            loaded.error_at_key(
                "",
                k,
                format!("unknown field `{k}`, expected one of {}", quoted(TOP_KEYS)),
            );
        }
    }
    let name: Option<String> = field(loaded, &map, "name", true);
    let source: Option<SourceSpec> = field(loaded, &map, "source", true);
    let transforms: Option<Vec<TransformSpec>> = list(loaded, &map, "transforms");
    let sinks: Option<Vec<SinkSpec>> = list(loaded, &map, "sinks");
    let dlq: Option<DlqSpec> = field(loaded, &map, "dlq", false);
    let batch: Option<BatchSpec> = field(loaded, &map, "batch", false);
    let tests: Option<Vec<TestSpec>> = list(loaded, &map, "tests");
    if !map.contains_key("sinks") {
        loaded.error_at("", "missing field `sinks`");
    }
    if let (Some(name), Some(source), Some(transforms), Some(sinks), Some(tests)) =
        (name, source, transforms, sinks, tests)
        && loaded.diagnostics.is_empty()
    {
        loaded.spec = Some(PipelineSpec {
            name,
            source,
            transforms,
            sinks,
            dlq,
            batch: batch.unwrap_or_default(),
            tests,
        });
    } else {
        declared_types(loaded, &map);
    }
}

/// The declared field types of `source.schema`, checked on the raw file: the semantic
/// checks (which check them for a decoded file) do not run when decoding found problems,
/// and a wrong type name belongs beside those.
fn declared_types(loaded: &mut Loaded, map: &serde_norway::Mapping) {
    let Some(Value::Mapping(schema)) = map.get("source").and_then(|s| s.get("schema")) else {
        return;
    };
    for (name, ty) in schema {
        if let (Some(name), Some(ty)) = (name.as_str(), ty.as_str())
            && let Err(e) = FieldType::parse_declared(ty)
        {
            loaded.error_at(
                &format!("source.schema.{name}"),
                format!("field `{name}`: {e}"),
            );
        }
    }
}

/// The first `line L column C` in a message.
fn first_position(message: &str) -> Option<(usize, usize)> {
    // at the end of input the error's own position says nothing: use the context's
    let from = if message.contains("end of stream") {
        message.find("while ").unwrap_or(0)
    } else {
        0
    };
    let rest = &message[from..];
    let rest = &rest[rest.find("line ")? + 5..];
    let (line, rest) = rest.split_once(" column ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.trim().parse().ok()?, col.parse().ok()?))
}

fn quoted(keys: &[&str]) -> String {
    keys.iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Decodes one top-level field; records the error with its exact position.
fn field<T: DeserializeOwned>(
    loaded: &mut Loaded,
    map: &serde_norway::Mapping,
    key: &str,
    required: bool,
) -> Option<T> {
    match map.get(key) {
        None if required => {
            loaded.error_at("", format!("missing field `{key}`"));
            None
        }
        None => None,
        Some(v) => decode(loaded, v.clone(), key.to_string()),
    }
}

/// Decodes a top-level list element by element, so each bad element is reported.
fn list<T: DeserializeOwned>(
    loaded: &mut Loaded,
    map: &serde_norway::Mapping,
    key: &str,
) -> Option<Vec<T>> {
    match map.get(key) {
        None | Some(Value::Null) => Some(Vec::new()),
        Some(Value::Sequence(items)) => {
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for (i, item) in items.iter().enumerate() {
                match decode(loaded, item.clone(), format!("{key}[{i}]")) {
                    Some(v) => out.push(v),
                    None => ok = false,
                }
            }
            ok.then_some(out)
        }
        Some(_) => {
            loaded.error_at(key, format!("`{key}` must be a list"));
            None
        }
    }
}

/// Decodes one section, reporting every bad value in it. Each problem is reported at its
/// own position, the offending entry removed and the decoding retried: an unknown key goes,
/// a bad value goes (its field then decodes from its default, or is missing, which is not
/// reported again: the struct holding it goes instead), and so on until the section
/// decodes or there is nothing left to remove.
fn decode<T: DeserializeOwned>(loaded: &mut Loaded, mut value: Value, base: String) -> Option<T> {
    let mut reported = false;
    // relative paths of what was removed, so their "missing field" echoes stay silent
    let mut removed: Vec<String> = Vec::new();
    for _ in 0..256 {
        let e = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) => return (!reported).then_some(v),
            Err(e) => e,
        };
        let inner = e.path().to_string();
        let mut path = if inner == "." {
            base.clone()
        } else {
            format!("{base}.{inner}")
        };
        path = path.replace(".[", "[");
        let message = e.inner().to_string();
        let unknown = message
            .strip_prefix("unknown field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string);
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|r| r.split('`').next())
            .map(str::to_string);
        if let Some(k) = &unknown {
            // serde_path_to_error's path may already end with the unknown key
            let ends_with_key = path == *k || path.ends_with(&format!(".{k}"));
            if !ends_with_key {
                path = join(&path, k);
            }
        }
        let relative = relative_to(&path, &base);
        let echo = missing
            .as_ref()
            .is_some_and(|k| removed.contains(&join(&relative, k)));
        if !echo {
            reported = true;
            // point at the offending key itself for unknown fields
            let (line, col) = match &unknown {
                Some(k) => loaded.positions.locate_key(
                    path.strip_suffix(k.as_str())
                        .map_or("", |p| p.trim_end_matches('.')),
                    k,
                ),
                None => loaded.positions.locate(&path),
            };
            let d = loaded.at((line, col), path.clone(), message);
            loaded.diagnostics.push(d);
        }
        // an element of a list goes with its whole list, so later indices keep their
        // positions; the section itself cannot go
        let target = match relative.rfind('[') {
            Some(i) if relative.ends_with(']') => relative[..i].to_string(),
            _ => relative,
        };
        if target.is_empty() || !remove_at(&mut value, &target) {
            return None;
        }
        removed.push(target);
    }
    None
}

/// `path` relative to the section at `base` (`""` for the section itself).
fn relative_to(path: &str, base: &str) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .trim_start_matches('.')
        .to_string()
}

/// Removes the map entry at `path` (`a.b[2].c`, relative to `value`); false when absent.
fn remove_at(value: &mut Value, path: &str) -> bool {
    let mut segments: Vec<String> = Vec::new();
    for part in path.split('.') {
        let mut rest = part;
        if let Some(i) = rest.find('[') {
            segments.push(rest[..i].to_string());
            rest = &rest[i..];
            while let Some(end) = rest.find(']') {
                segments.push(rest[..=end].to_string());
                rest = &rest[end + 1..];
            }
        } else {
            segments.push(rest.to_string());
        }
    }
    segments.retain(|s| !s.is_empty());
    let Some(last) = segments.pop() else {
        return false;
    };
    let mut cur = value;
    for seg in &segments {
        cur = match (seg.strip_prefix('[').and_then(|s| s.strip_suffix(']')), cur) {
            (Some(idx), Value::Sequence(items)) => {
                match idx.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(v) => v,
                    None => return false,
                }
            }
            (None, Value::Mapping(m)) => match m.get_mut(seg.as_str()) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match cur {
        Value::Mapping(m) => m.remove(last.as_str()).is_some(),
        _ => false,
    }
}

/// Replaces `${VAR}` in every string; `$${` stays a literal `${`.
fn interpolate(
    v: &mut Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
    unset: &mut Vec<(String, String)>,
) {
    match v {
        Value::String(s) if s.contains("${") => {
            let mut out = String::with_capacity(s.len());
            let mut rest = s.as_str();
            while let Some(i) = rest.find("${") {
                if i > 0 && rest.as_bytes()[i - 1] == b'$' {
                    out.push_str(&rest[..i - 1]);
                    out.push_str("${");
                    rest = &rest[i + 2..];
                    continue;
                }
                out.push_str(&rest[..i]);
                match rest[i + 2..].find('}') {
                    Some(end) => {
                        let var = &rest[i + 2..i + 2 + end];
                        match env(var) {
                            Some(val) => out.push_str(&val),
                            None => unset.push((path.clone(), var.to_string())),
                        }
                        rest = &rest[i + 3 + end..];
                    }
                    None => {
                        out.push_str(&rest[i..]);
                        rest = "";
                    }
                }
            }
            out.push_str(rest);
            *s = out;
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, format!("{path}[{i}]"), env, unset);
            }
        }
        Value::Mapping(m) => {
            for (k, item) in m.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_string();
                interpolate(item, join(&path, &key), env, unset);
            }
        }
        _ => {}
    }
}
