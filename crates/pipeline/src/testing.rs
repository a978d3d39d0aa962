//! `ymera test`: a pipeline's `tests:` run offline — input records through the strict
//! decoder and the SQL stages — compared with the expected rows of each stage.

use std::fmt::Write as _;

use arrow::array::RecordBatch;
use serde_json::Value;
use ymera_ingest::decode::{JsonDecoder, UnknownFields};

use crate::spec::{TestSpec, UnknownFieldsSpec};
use crate::validate::Pipeline;

/// The result of one test.
#[derive(Debug, Clone)]
pub struct TestOutcome {
    pub name: String,
    /// Empty when the test passed; otherwise one readable report per problem.
    pub failures: Vec<String>,
}

/// Runs every test of a pipeline.
pub async fn run_tests(p: &Pipeline) -> Vec<TestOutcome> {
    let mut out = Vec::with_capacity(p.spec.tests.len());
    for t in &p.spec.tests {
        out.push(TestOutcome {
            name: t.name.clone(),
            failures: run_one(p, t).await,
        });
    }
    out
}

async fn run_one(p: &Pipeline, t: &TestSpec) -> Vec<String> {
    let mut failures = Vec::new();
    let unknown = match p.spec.source.unknown_fields {
        UnknownFieldsSpec::Ignore => UnknownFields::Ignore,
        UnknownFieldsSpec::Dlq => UnknownFields::Dlq,
    };
    let mut decoder = JsonDecoder::new(&p.fields, unknown);
    let mut rejected = Vec::new();
    for (i, record) in t.input.iter().enumerate() {
        let bytes = serde_json::to_vec(record).unwrap_or_default();
        if let Err(e) = decoder.push(&bytes) {
            rejected.push(format!(
                "input[{i}] is a bad record (it would go to the DLQ): {e}"
            ));
        }
    }
    // anomaly stages start from fresh detectors in every test
    let mut state = crate::chain::ChainState::default();
    let outputs = match p.chain().run(&mut state, decoder.finish(), false).await {
        Ok((o, _, _)) => o,
        Err(e) => {
            failures.push(format!("the stages failed: {e}"));
            return failures;
        }
    };
    for (stage, expected) in &t.expect {
        let Some(batch) = outputs.get(stage) else {
            failures.push(format!("no stage `{stage}`"));
            continue;
        };
        let actual = match rows(batch) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("cannot render the rows of `{stage}`: {e}"));
                continue;
            }
        };
        if !same_rows(expected, &actual) {
            let mut report = format!("stage `{stage}`: rows differ\n");
            let _ = writeln!(report, "  expected ({}):", expected.len());
            for r in expected {
                let _ = writeln!(report, "    {}", r);
            }
            let _ = writeln!(report, "  actual ({}):", actual.len());
            for r in &actual {
                let marker = if expected.iter().any(|e| same_row(e, r)) {
                    " "
                } else {
                    "+"
                };
                let _ = writeln!(report, "  {marker} {}", r);
            }
            for r in expected {
                if !actual.iter().any(|a| same_row(r, a)) {
                    let _ = writeln!(report, "  - missing: {r}");
                }
            }
            failures.push(report);
        }
    }
    if !failures.is_empty() {
        failures.extend(rejected);
    }
    failures
}

/// Rows of a batch as JSON objects, nulls explicit.
pub fn rows(batch: &RecordBatch) -> Result<Vec<Value>, arrow::error::ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::JsonArray>(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    if buf.is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_slice::<Value>(&buf) {
        Ok(Value::Array(rows)) => Ok(rows),
        Ok(_) | Err(_) => Ok(Vec::new()),
    }
}

/// Same rows in any order.
fn same_rows(expected: &[Value], actual: &[Value]) -> bool {
    if expected.len() != actual.len() {
        return false;
    }
    let mut used = vec![false; actual.len()];
    for e in expected {
        match actual
            .iter()
            .enumerate()
            .find(|(i, a)| !used[*i] && same_row(e, a))
        {
            Some((i, _)) => used[i] = true,
            None => return false,
        }
    }
    true
}

/// Two rows are the same when they have the same columns with equal values; numbers
/// compare numerically, timestamps as instants (`Z` or `+00:00`, any precision).
fn same_row(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            e.len() == a.len()
                && e.iter()
                    .all(|(k, v)| a.get(k).is_some_and(|av| same_value(v, av)))
        }
        _ => false,
    }
}

fn same_value(e: &Value, a: &Value) -> bool {
    match (e, a) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
            _ => x == y,
        },
        (Value::String(x), Value::String(y)) => x == y || same_instant(x, y),
        _ => e == a,
    }
}

fn same_instant(x: &str, y: &str) -> bool {
    let parse = |s: &str| {
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .or_else(|| chrono::DateTime::parse_from_rfc3339(&format!("{s}Z")).ok())
    };
    matches!((parse(x), parse(y)), (Some(a), Some(b)) if a == b)
}
