//! Features: from the feature query's Arrow batches to numeric rows, and from a request's
//! named values to the same rows. Numeric features are standardised with the training
//! mean and standard deviation; text features are one-hot encoded over the levels seen in
//! training. The schema travels in the manifest and the artifact, so a served model checks
//! requests against exactly what it was trained on.

use std::collections::BTreeMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ModelError;

/// The type a request must send for a feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureType {
    /// Any JSON number (integers included).
    Float,
    /// A JSON integer.
    Integer,
    /// A JSON bool.
    Bool,
    /// A JSON string, one of `levels`.
    Text,
}

impl FeatureType {
    /// The Open Inference Protocol V2 datatype of the feature.
    pub fn v2_datatype(self) -> &'static str {
        match self {
            FeatureType::Float => "FP64",
            FeatureType::Integer => "INT64",
            FeatureType::Bool => "BOOL",
            FeatureType::Text => "BYTES",
        }
    }
}

/// One input feature of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FeatureType,
    /// Text features: the levels seen in training (each one one-hot column).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub levels: Vec<String>,
    /// Numeric features: the model sees ln(value) (values must be > 0).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub log: bool,
    /// Numeric features: training mean and standard deviation (for standardisation),
    /// after the log when `log`.
    #[serde(default)]
    pub mean: f64,
    #[serde(default = "one")]
    pub std: f64,
}

fn one() -> f64 {
    1.0
}

/// The ordered input features of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FeatureSchema(pub Vec<Feature>);

/// Rows as the estimators see them.
#[derive(Debug, Clone, Default)]
pub struct Matrix {
    /// Row-major, `cols` values per row.
    pub values: Vec<f64>,
    pub cols: usize,
}

impl Matrix {
    pub fn rows(&self) -> usize {
        self.values.len().checked_div(self.cols).unwrap_or(0)
    }

    pub fn row(&self, i: usize) -> &[f64] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Matrix {
        let mut values = Vec::with_capacity(idx.len() * self.cols);
        for &i in idx {
            values.extend_from_slice(self.row(i));
        }
        Matrix {
            values,
            cols: self.cols,
        }
    }

    pub fn to_vecs(&self) -> Vec<Vec<f64>> {
        (0..self.rows()).map(|i| self.row(i).to_vec()).collect()
    }
}

impl FeatureSchema {
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|f| f.name.as_str())
    }

    /// Width of an encoded row.
    pub fn width(&self) -> usize {
        self.0
            .iter()
            .map(|f| match f.kind {
                FeatureType::Text => f.levels.len(),
                _ => 1,
            })
            .sum()
    }

    /// For each encoded column, the index of the feature it comes from.
    pub fn column_owner(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.width());
        for (i, f) in self.0.iter().enumerate() {
            let n = match f.kind {
                FeatureType::Text => f.levels.len(),
                _ => 1,
            };
            out.extend(std::iter::repeat_n(i, n));
        }
        out
    }

    /// Encodes one request instance; a missing, extra, mistyped or non-finite feature is an
    /// error naming it.
    pub fn encode_instance(
        &self,
        instance: &serde_json::Map<String, Value>,
    ) -> Result<Vec<f64>, ModelError> {
        for key in instance.keys() {
            if !self.0.iter().any(|f| &f.name == key) {
                return Err(ModelError::Input(format!(
                    "unknown feature `{key}` (the model takes: {})",
                    self.names().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        let mut row = Vec::with_capacity(self.width());
        for f in &self.0 {
            let v = instance.get(&f.name).ok_or_else(|| {
                ModelError::Input(format!(
                    "missing feature `{}` ({})",
                    f.name,
                    type_word(f.kind)
                ))
            })?;
            self.encode_value(f, v, &mut row)?;
        }
        Ok(row)
    }

    /// Encodes one JSON value of feature `f` onto `row`.
    pub fn encode_value(
        &self,
        f: &Feature,
        v: &Value,
        row: &mut Vec<f64>,
    ) -> Result<(), ModelError> {
        let wrong = || {
            ModelError::Input(format!(
                "feature `{}` must be {}, got {}",
                f.name,
                type_word(f.kind),
                short(v)
            ))
        };
        match f.kind {
            FeatureType::Float | FeatureType::Integer => {
                let x = match v {
                    Value::Number(n) => {
                        if f.kind == FeatureType::Integer && !(n.is_i64() || n.is_u64()) {
                            return Err(wrong());
                        }
                        n.as_f64().ok_or_else(wrong)?
                    }
                    // JSON has no NaN/inf; clients that send them as strings are told why
                    Value::String(s)
                        if matches!(
                            s.to_ascii_lowercase().as_str(),
                            "nan" | "inf" | "-inf" | "infinity" | "-infinity"
                        ) =>
                    {
                        return Err(ModelError::Input(format!(
                            "feature `{}` is {s}: only finite numbers are accepted",
                            f.name
                        )));
                    }
                    _ => return Err(wrong()),
                };
                push_numeric(f, x, row)
            }
            FeatureType::Bool => match v {
                Value::Bool(b) => push_numeric(f, f64::from(u8::from(*b)), row),
                _ => Err(wrong()),
            },
            FeatureType::Text => match v {
                Value::String(s) => {
                    let at = f.levels.iter().position(|l| l == s).ok_or_else(|| {
                        ModelError::Input(format!(
                            "feature `{}` = {s:?} was not seen in training (known: {})",
                            f.name,
                            f.levels.join(", ")
                        ))
                    })?;
                    row.extend((0..f.levels.len()).map(|i| if i == at { 1.0 } else { 0.0 }));
                    Ok(())
                }
                _ => Err(wrong()),
            },
        }
    }
}

fn push_numeric(f: &Feature, x: f64, row: &mut Vec<f64>) -> Result<(), ModelError> {
    if !x.is_finite() {
        return Err(ModelError::Input(format!(
            "feature `{}` is not a finite number",
            f.name
        )));
    }
    let x = if f.log {
        if x <= 0.0 {
            return Err(ModelError::Input(format!(
                "feature `{}` = {x} must be > 0 (the model uses its logarithm)",
                f.name
            )));
        }
        x.ln()
    } else {
        x
    };
    row.push((x - f.mean) / f.std);
    Ok(())
}

fn type_word(k: FeatureType) -> &'static str {
    match k {
        FeatureType::Float => "a number",
        FeatureType::Integer => "an integer",
        FeatureType::Bool => "true or false",
        FeatureType::Text => "a string",
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 40 {
        format!("{}…", &s[..40])
    } else {
        s
    }
}

/// The training rows read from the feature query.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub schema: FeatureSchema,
    /// Encoded (standardised, one-hot) rows.
    pub x: Matrix,
    /// Labels (classification: 0/1; regression: the value); empty for clustering.
    pub y: Vec<f64>,
    /// Event time of each row (microseconds, or the column's numeric value).
    pub time: Vec<i64>,
    /// The time column is a timestamp or date (`time` holds microseconds since the epoch).
    pub time_is_timestamp: bool,
    /// Rows of the query skipped because a feature, the label or the time was null or not
    /// finite.
    pub skipped: usize,
    /// sha256 over the rows' raw feature values, labels and times: each row hashed, the
    /// row hashes sorted and hashed, so the same rows in another order give the same hash.
    pub content_sha256: String,
}

/// Reads the query result into a dataset. `features: None` takes every column but `time`,
/// `id` and `label`.
pub fn dataset(
    batches: &[RecordBatch],
    features: Option<&[String]>,
    time: &str,
    id: Option<&str>,
    label: Option<(&str, LabelKind)>,
    log_features: &[String],
) -> Result<Dataset, ModelError> {
    use sha2::{Digest, Sha256};
    let Some(first) = batches.first() else {
        return Err(ModelError::Data(
            "the feature query returned no rows".into(),
        ));
    };
    let schema = first.schema();
    let col_index = |name: &str, what: &str| {
        schema.index_of(name).map_err(|_| {
            ModelError::Data(format!(
                "the feature query has no column `{name}` ({what}); it returns: {}",
                schema
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    };
    let time_idx = col_index(time, "data.time")?;
    let time_is_timestamp = matches!(
        schema.field(time_idx).data_type(),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    );
    let label_idx = match label {
        Some((l, _)) => Some(col_index(l, "label")?),
        None => None,
    };
    let names: Vec<String> = match features {
        Some(f) => f.to_vec(),
        None => schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| {
                n != time && Some(n.as_str()) != id && Some(n.as_str()) != label.map(|l| l.0)
            })
            .collect(),
    };
    if names.is_empty() {
        return Err(ModelError::Data(
            "the feature query returns no feature columns".into(),
        ));
    }
    let mut kinds = Vec::new();
    let mut idx = Vec::new();
    for n in &names {
        let i = col_index(n, "feature")?;
        let kind = match schema.field(i).data_type() {
            t if t.is_floating() || matches!(t, DataType::Decimal128(..)) => FeatureType::Float,
            t if t.is_integer() => FeatureType::Integer,
            DataType::Boolean => FeatureType::Bool,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => FeatureType::Text,
            other => {
                return Err(ModelError::Data(format!(
                    "feature `{n}` has type {other}, which is not a number, bool or text; cast it in the query"
                )));
            }
        };
        if log_features.contains(n) && kind == FeatureType::Text {
            return Err(ModelError::Data(format!(
                "log_features: `{n}` is text; only numeric features can be logged"
            )));
        }
        kinds.push(kind);
        idx.push(i);
    }
    let logged: Vec<bool> = names.iter().map(|n| log_features.contains(n)).collect();
    if let Some(missing) = log_features.iter().find(|l| !names.contains(l)) {
        return Err(ModelError::Data(format!(
            "log_features: `{missing}` is not a feature column"
        )));
    }

    // raw values per feature column (numbers as f64, text as strings), rows with nulls dropped
    let mut raw_num: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut raw_text: Vec<Vec<String>> = vec![Vec::new(); names.len()];
    let mut y = Vec::new();
    let mut times = Vec::new();
    let mut skipped = 0usize;
    // one digest per row, combined in sorted order: the hash names the rows, not the order
    // the query returned them in
    let mut row_digests: Vec<[u8; 32]> = Vec::new();
    for batch in batches {
        let n = batch.num_rows();
        let num_cols: Vec<Option<arrow::array::ArrayRef>> = idx
            .iter()
            .zip(&kinds)
            .map(|(&i, k)| match k {
                FeatureType::Text => Ok(None),
                _ => cast(batch.column(i), &DataType::Float64).map(Some),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| ModelError::Data(format!("reading a feature column: {e}")))?;
        let text_cols: Vec<Option<arrow::array::ArrayRef>> = idx
            .iter()
            .zip(&kinds)
            .map(|(&i, k)| match k {
                FeatureType::Text => cast(batch.column(i), &DataType::Utf8).map(Some),
                _ => Ok(None),
            })
            .collect::<Result<_, _>>()
            .map_err(|e| ModelError::Data(format!("reading a text feature column: {e}")))?;
        let time_col = time_values(batch.column(time_idx), time)?;
        let label_col = match (label_idx, label) {
            (Some(i), Some((name, kind))) => Some(label_values(batch.column(i), name, kind)?),
            _ => None,
        };
        'rows: for r in 0..n {
            let Some(t) = time_col[r] else {
                skipped += 1;
                continue;
            };
            let lv = match &label_col {
                Some(l) => match l[r] {
                    Some(v) if v.is_finite() => Some(v),
                    _ => {
                        skipped += 1;
                        continue;
                    }
                },
                None => None,
            };
            for c in 0..names.len() {
                match (&num_cols[c], &text_cols[c]) {
                    (Some(a), _) => {
                        let a = a.as_primitive::<Float64Type>();
                        if a.is_null(r)
                            || !a.value(r).is_finite()
                            || (logged[c] && a.value(r) <= 0.0)
                        {
                            skipped += 1;
                            continue 'rows;
                        }
                    }
                    (_, Some(a)) if a.is_null(r) => {
                        skipped += 1;
                        continue 'rows;
                    }
                    _ => {}
                }
            }
            let mut hasher = Sha256::new();
            for c in 0..names.len() {
                match (&num_cols[c], &text_cols[c]) {
                    (Some(a), _) => {
                        let v = a.as_primitive::<Float64Type>().value(r);
                        hasher.update(v.to_le_bytes());
                        raw_num[c].push(if logged[c] { v.ln() } else { v });
                    }
                    (_, Some(a)) => {
                        let v = a.as_string::<i32>().value(r);
                        hasher.update(v.as_bytes());
                        hasher.update([0u8]);
                        raw_text[c].push(v.to_string());
                    }
                    _ => {}
                }
            }
            hasher.update(t.to_le_bytes());
            times.push(t);
            if let Some(v) = lv {
                hasher.update(v.to_le_bytes());
                y.push(v);
            }
            row_digests.push(hasher.finalize().into());
        }
    }
    row_digests.sort_unstable();
    let mut hasher = Sha256::new();
    for d in &row_digests {
        hasher.update(d);
    }
    let rows = times.len();
    if rows == 0 {
        return Err(ModelError::Data(format!(
            "the feature query returned no usable rows ({skipped} skipped for nulls or non-finite values)"
        )));
    }
    let mut feats = Vec::new();
    for (c, name) in names.iter().enumerate() {
        match kinds[c] {
            FeatureType::Text => {
                let levels: std::collections::BTreeSet<&String> = raw_text[c].iter().collect();
                feats.push(Feature {
                    name: name.clone(),
                    kind: FeatureType::Text,
                    levels: levels.into_iter().cloned().collect(),
                    log: false,
                    mean: 0.0,
                    std: 1.0,
                });
            }
            kind => {
                let v = &raw_num[c];
                let mean = v.iter().sum::<f64>() / rows as f64;
                let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / rows as f64;
                let std = if var.sqrt() > 1e-12 { var.sqrt() } else { 1.0 };
                feats.push(Feature {
                    name: name.clone(),
                    kind,
                    levels: Vec::new(),
                    log: logged[c],
                    mean,
                    std,
                });
            }
        }
    }
    let schema = FeatureSchema(feats);
    let width = schema.width();
    let mut values = Vec::with_capacity(rows * width);
    for r in 0..rows {
        for (c, f) in schema.0.iter().enumerate() {
            match f.kind {
                FeatureType::Text => {
                    let s = &raw_text[c][r];
                    values.extend(f.levels.iter().map(|l| if l == s { 1.0 } else { 0.0 }));
                }
                _ => values.push((raw_num[c][r] - f.mean) / f.std),
            }
        }
    }
    Ok(Dataset {
        schema,
        x: Matrix {
            values,
            cols: width,
        },
        y,
        time: times,
        time_is_timestamp,
        skipped,
        content_sha256: hex::encode(hasher.finalize()),
    })
}

/// How a label column is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    /// bool, or integers 0/1.
    Binary,
    /// Any number.
    Number,
}

fn label_values(
    col: &arrow::array::ArrayRef,
    name: &str,
    kind: LabelKind,
) -> Result<Vec<Option<f64>>, ModelError> {
    let f = cast(col, &DataType::Float64).map_err(|_| {
        ModelError::Data(format!(
            "label `{name}` has type {}, which is not a number or bool",
            col.data_type()
        ))
    })?;
    let f = f.as_primitive::<Float64Type>();
    let out: Vec<Option<f64>> = (0..f.len())
        .map(|i| (!f.is_null(i)).then(|| f.value(i)))
        .collect();
    if kind == LabelKind::Binary
        && let Some(bad) = out.iter().flatten().find(|v| **v != 0.0 && **v != 1.0)
    {
        return Err(ModelError::Data(format!(
            "classification label `{name}` must be bool or 0/1, found {bad}"
        )));
    }
    Ok(out)
}

fn time_values(col: &arrow::array::ArrayRef, name: &str) -> Result<Vec<Option<i64>>, ModelError> {
    let target = match col.data_type() {
        DataType::Timestamp(..) => DataType::Timestamp(TimeUnit::Microsecond, None),
        DataType::Date32 | DataType::Date64 => {
            let d = cast(col, &DataType::Timestamp(TimeUnit::Microsecond, None))
                .map_err(|e| ModelError::Data(format!("time column `{name}`: {e}")))?;
            return time_values(&d, name);
        }
        t if t.is_numeric() => DataType::Int64,
        other => {
            return Err(ModelError::Data(format!(
                "time column `{name}` has type {other}; it must be a timestamp, date or number"
            )));
        }
    };
    let c =
        cast(col, &target).map_err(|e| ModelError::Data(format!("time column `{name}`: {e}")))?;
    let c = cast(&c, &DataType::Int64)
        .map_err(|e| ModelError::Data(format!("time column `{name}`: {e}")))?;
    let c = c.as_primitive::<Int64Type>();
    Ok((0..c.len())
        .map(|i| (!c.is_null(i)).then(|| c.value(i)))
        .collect())
}

/// Aggregates per-column contributions to their features, biggest magnitude first.
pub fn by_feature(schema: &FeatureSchema, per_column: &[f64]) -> Vec<(String, f64)> {
    let owner = schema.column_owner();
    let mut acc: BTreeMap<usize, f64> = BTreeMap::new();
    for (c, v) in per_column.iter().enumerate() {
        *acc.entry(owner[c]).or_default() += v;
    }
    let mut out: Vec<(String, f64)> = acc
        .into_iter()
        .map(|(i, v)| (schema.0[i].name.clone(), v))
        .collect();
    out.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    fn batch(order: &[usize]) -> RecordBatch {
        let t = [10i64, 20, 30, 40];
        let x = [1.5, 2.5, 3.5, 4.5];
        let s = ["a", "b", "a", "c"];
        let y = [0.0, 1.0, 1.0, 0.0];
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("t", DataType::Int64, false),
                Field::new("x", DataType::Float64, false),
                Field::new("s", DataType::Utf8, false),
                Field::new("y", DataType::Float64, false),
            ])),
            vec![
                Arc::new(Int64Array::from_iter_values(order.iter().map(|&i| t[i]))),
                Arc::new(Float64Array::from_iter_values(order.iter().map(|&i| x[i]))),
                Arc::new(StringArray::from_iter_values(order.iter().map(|&i| s[i]))),
                Arc::new(Float64Array::from_iter_values(order.iter().map(|&i| y[i]))),
            ],
        )
        .unwrap()
    }

    fn hash(b: &[RecordBatch]) -> String {
        dataset(b, None, "t", None, Some(("y", LabelKind::Number)), &[])
            .unwrap()
            .content_sha256
    }

    /// A query without ORDER BY returns its rows in any order (parallel scans): the content
    /// hash in a manifest must name the rows, not the order they came in.
    #[test]
    fn the_content_hash_names_the_rows_whatever_their_order() {
        let a = hash(&[batch(&[0, 1, 2, 3])]);
        assert_eq!(a, hash(&[batch(&[3, 1, 0, 2])]));
        assert_eq!(a, hash(&[batch(&[2, 3]), batch(&[1, 0])]));
        assert_ne!(a, hash(&[batch(&[0, 1, 2])]));
        assert_ne!(a, hash(&[batch(&[0, 1, 2, 2])]));
    }
}
