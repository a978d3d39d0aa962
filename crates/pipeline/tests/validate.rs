//! Pipeline validation as data: each `tests/validate/NAME.yaml` states, in its leading
//! comments, the diagnostics that `load_file` + `check` must report for it
//! (`# expect: LINE:COL: substring of the message`, one per diagnostic) or that it is
//! valid (`# expect: valid`). Adding a case is adding a file. The example pipelines of the
//! repository (`pipelines/*.yaml`) must all be valid.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ymera_pipeline::{Diagnostic, load_file, validate};

/// What a case file must produce.
#[derive(Debug)]
enum Expected {
    Valid,
    Diagnostics(Vec<Expect>),
}

/// One expected diagnostic: its position and a substring of its message.
#[derive(Debug)]
struct Expect {
    line: usize,
    col: usize,
    substring: String,
}

impl Expected {
    /// Reads the `# expect:` lines of the comment block that opens `text`.
    fn from_comments(text: &str) -> Result<Expected, String> {
        let mut valid = false;
        let mut expects = Vec::new();
        for line in text.lines().take_while(|l| l.trim_start().starts_with('#')) {
            let Some(rest) = line
                .trim_start()
                .trim_start_matches('#')
                .trim()
                .strip_prefix("expect:")
            else {
                continue;
            };
            let rest = rest.trim();
            if rest == "valid" {
                valid = true;
                continue;
            }
            match parse_expect(rest) {
                Some(e) if !e.substring.is_empty() => expects.push(e),
                _ => {
                    return Err(format!(
                        "malformed expectation `{line}` (want `# expect: LINE:COL: substring`)"
                    ));
                }
            }
        }
        match (valid, expects.is_empty()) {
            (true, true) => Ok(Expected::Valid),
            (false, false) => Ok(Expected::Diagnostics(expects)),
            (true, false) => Err("`# expect: valid` together with expected diagnostics".into()),
            (false, true) => Err("no `# expect:` line in the leading comments".into()),
        }
    }
}

/// Parses `LINE:COL: substring`.
fn parse_expect(text: &str) -> Option<Expect> {
    let (line, rest) = text.split_once(':')?;
    let (col, substring) = rest.split_once(':')?;
    Some(Expect {
        line: line.trim().parse().ok()?,
        col: col.trim().parse().ok()?,
        substring: substring.trim().to_string(),
    })
}

/// Loads and checks `file` with the variables of `env`; returns what differs from
/// `expected`, with the full actual diagnostics, or `None` when everything matches.
async fn check(file: &Path, env: &HashMap<&str, &str>, expected: &Expected) -> Option<String> {
    let lookup = |var: &str| env.get(var).map(|v| v.to_string());
    let mut loaded = load_file(file, Some(&lookup));
    let pipeline = validate::check(&mut loaded).await;
    let actual = &loaded.diagnostics;

    let mut problems = Vec::new();
    for d in actual {
        let shown = d.to_string();
        let head = format!(
            "{}:{}:{}: error: {}",
            file.display(),
            d.line,
            d.col,
            d.message
        );
        if d.file != file || !shown.starts_with(&head) {
            problems.push(format!(
                "displayed as `{shown}`, expected it to start with `{head}`"
            ));
        }
    }
    if pipeline.is_some() != actual.is_empty() {
        problems.push(format!(
            "check returned {} with {} diagnostic(s)",
            if pipeline.is_some() {
                "a pipeline"
            } else {
                "no pipeline"
            },
            actual.len()
        ));
    }
    match expected {
        Expected::Valid => {
            if !actual.is_empty() {
                problems.push("expected a valid pipeline".into());
            }
        }
        Expected::Diagnostics(expects) => {
            // each expectation takes one diagnostic of its position whose message contains
            // its substring; whatever is left over on either side is a mismatch
            let mut unmatched: Vec<&Diagnostic> = actual.iter().collect();
            for e in expects {
                let found = unmatched.iter().position(|d| {
                    (d.line, d.col) == (e.line, e.col) && d.message.contains(&e.substring)
                });
                match found {
                    Some(i) => {
                        unmatched.remove(i);
                    }
                    None => problems.push(format!("missing {}:{}: {}", e.line, e.col, e.substring)),
                }
            }
            for d in unmatched {
                problems.push(format!("unexpected {}:{}: {}", d.line, d.col, d.message));
            }
        }
    }
    if problems.is_empty() {
        return None;
    }
    let mut report = format!("{}:\n", file.display());
    for p in &problems {
        let _ = writeln!(report, "  {p}");
    }
    let _ = writeln!(report, "  actual diagnostics ({}):", actual.len());
    for d in actual {
        let _ = writeln!(report, "    {d}");
    }
    Some(report)
}

/// The `*.yaml` files of `dir`, sorted.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.yaml file in {}", dir.display());
    files
}

fn fail_if_any(failures: Vec<String>, total: usize) {
    assert!(
        failures.is_empty(),
        "{} of {total} case(s) failed:\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/validate");
    let env = HashMap::from([("BROKERS", "localhost:9092")]);
    let files = yaml_files(&dir);
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let failure = match Expected::from_comments(&text) {
            Ok(expected) => check(file, &env, &expected).await,
            Err(e) => Some(format!("{}:\n  {e}\n", file.display())),
        };
        failures.extend(failure);
    }
    fail_if_any(failures, files.len());
}

#[tokio::test]
async fn repository_pipelines_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../pipelines");
    let env = HashMap::from([("YMERA_BROKERS", "localhost:9092")]);
    let files = yaml_files(&dir);
    let mut failures = Vec::new();
    for file in &files {
        failures.extend(check(file, &env, &Expected::Valid).await);
    }
    fail_if_any(failures, files.len());
}
