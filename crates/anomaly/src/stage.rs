//! The anomaly stage of a pipeline over Arrow batches: one [`Detector`] per distinct key,
//! rows scored in order, the input's columns plus `anomaly_score` and `is_anomaly`, and
//! the alert rules applied to the verdicts. The state ([`StageState`]) is plain serde
//! data: the pipeline checkpoints it with the source offsets.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::alerts::{AlertBook, AlertEvent, AlertRules};
use crate::detect::{Detector, DetectorConfig};

/// Column added by the stage: the combined score in [0, 1] (null when the row has no
/// time or value).
pub const SCORE: &str = "anomaly_score";
/// Column added by the stage: `anomaly_score >= threshold` (null like the score).
pub const IS_ANOMALY: &str = "is_anomaly";

/// A stage that cannot be built or cannot read its input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StageError {
    #[error("column `{0}` is not an output column of the stage's input")]
    MissingColumn(String),
    #[error("time column `{column}` must be a µs timestamp (timestamp_us), it is {found}")]
    TimeType { column: String, found: DataType },
    #[error("value column `{column}` must be float64 or int64, it is {found}")]
    ValueType { column: String, found: DataType },
    #[error("the input already has a column `{0}`")]
    Clash(String),
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
}

/// What a stage reads and how it decides.
#[derive(Debug, Clone, PartialEq)]
pub struct StageConfig {
    /// The stage's name: scopes alert ids.
    pub name: String,
    /// Key columns: one detector per distinct key (none: one detector).
    pub key: Vec<String>,
    /// The event-time column (timestamp_us).
    pub time: String,
    /// The value column (float64 or int64).
    pub value: String,
    pub detector: DetectorConfig,
    /// Alert rules, when the stage raises alerts.
    pub alerts: Option<AlertRules>,
}

/// Everything a stage remembers between batches.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageState {
    /// One detector per key, created on the key's first row.
    pub detectors: BTreeMap<String, Detector>,
    /// The alert rules' state.
    pub alerts: AlertBook,
}

/// The stage's output schema for an input schema, or why the input does not fit.
pub fn output_schema(input: &Schema, cfg: &StageConfig) -> Result<SchemaRef, Vec<StageError>> {
    let mut errors = Vec::new();
    for k in &cfg.key {
        if input.field_with_name(k).is_err() {
            errors.push(StageError::MissingColumn(k.clone()));
        }
    }
    match input.field_with_name(&cfg.time) {
        Err(_) => errors.push(StageError::MissingColumn(cfg.time.clone())),
        Ok(f) if matches!(f.data_type(), DataType::Timestamp(TimeUnit::Microsecond, _)) => {}
        Ok(f) => errors.push(StageError::TimeType {
            column: cfg.time.clone(),
            found: f.data_type().clone(),
        }),
    }
    match input.field_with_name(&cfg.value) {
        Err(_) => errors.push(StageError::MissingColumn(cfg.value.clone())),
        Ok(f) if matches!(f.data_type(), DataType::Float64 | DataType::Int64) => {}
        Ok(f) => errors.push(StageError::ValueType {
            column: cfg.value.clone(),
            found: f.data_type().clone(),
        }),
    }
    for c in [SCORE, IS_ANOMALY] {
        if input.field_with_name(c).is_ok() {
            errors.push(StageError::Clash(c.to_string()));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut fields: Vec<Arc<Field>> = input.fields().iter().cloned().collect();
    fields.push(Arc::new(Field::new(SCORE, DataType::Float64, true)));
    fields.push(Arc::new(Field::new(IS_ANOMALY, DataType::Boolean, true)));
    Ok(Arc::new(Schema::new_with_metadata(
        fields,
        input.metadata().clone(),
    )))
}

/// The key of each row: the value of a single key column, or the JSON array of several
/// (null as `null`); `""` with no key columns.
fn keys(batch: &RecordBatch, cfg: &StageConfig) -> Result<Vec<String>, StageError> {
    let n = batch.num_rows();
    if cfg.key.is_empty() {
        return Ok(vec![String::new(); n]);
    }
    let mut cols = Vec::with_capacity(cfg.key.len());
    for k in &cfg.key {
        let col = batch
            .column_by_name(k)
            .ok_or_else(|| StageError::MissingColumn(k.clone()))?;
        let text = arrow::compute::cast(col, &DataType::Utf8)
            .map_err(|e| StageError::Internal(format!("key column `{k}` as text: {e}")))?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| StageError::Internal(format!("key column `{k}` is not utf8")))?
            .clone();
        cols.push(text);
    }
    Ok((0..n)
        .map(|row| {
            let parts: Vec<Option<&str>> = cols
                .iter()
                .map(|c| (!c.is_null(row)).then(|| c.value(row)))
                .collect();
            match parts.as_slice() {
                [one] => one.unwrap_or("null").to_string(),
                many => serde_json::to_string(many).unwrap_or_default(),
            }
        })
        .collect())
}

/// Scores every row of `batch` in order, updating `state`; returns the batch with the two
/// columns added and the alerts that opened or closed.
pub fn score(
    cfg: &StageConfig,
    state: &mut StageState,
    batch: &RecordBatch,
) -> Result<(RecordBatch, Vec<AlertEvent>), StageError> {
    let schema = output_schema(&batch.schema(), cfg).map_err(|mut e| e.remove(0))?;
    let keys = keys(batch, cfg)?;
    let time = batch
        .column_by_name(&cfg.time)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| StageError::MissingColumn(cfg.time.clone()))?;
    let value_col = batch
        .column_by_name(&cfg.value)
        .ok_or_else(|| StageError::MissingColumn(cfg.value.clone()))?;
    let values: Vec<Option<f64>> =
        if let Some(f) = value_col.as_any().downcast_ref::<Float64Array>() {
            f.iter().collect()
        } else if let Some(i) = value_col.as_any().downcast_ref::<Int64Array>() {
            i.iter().map(|v| v.map(|v| v as f64)).collect()
        } else {
            return Err(StageError::ValueType {
                column: cfg.value.clone(),
                found: value_col.data_type().clone(),
            });
        };
    let mut scores = Vec::with_capacity(batch.num_rows());
    let mut flags = Vec::with_capacity(batch.num_rows());
    let mut events = Vec::new();
    for (row, key) in keys.iter().enumerate() {
        let (Some(v), false) = (values[row], time.is_null(row)) else {
            scores.push(None);
            flags.push(None);
            continue;
        };
        let ts_us = time.value(row);
        let det = state
            .detectors
            .entry(key.clone())
            .or_insert_with(|| Detector::new(&cfg.detector));
        let s = det.update(ts_us.div_euclid(1_000_000), v);
        scores.push(Some(s.score));
        flags.push(Some(s.is_anomaly));
        if let Some(rules) = &cfg.alerts
            && let Some(ev) =
                state
                    .alerts
                    .observe(rules, &cfg.name, key, ts_us, s.score, s.is_anomaly)
        {
            events.push(ev);
        }
    }
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns.push(Arc::new(Float64Array::from(scores)));
    columns.push(Arc::new(BooleanArray::from(flags)));
    let out = RecordBatch::try_new(schema, columns)
        .map_err(|e| StageError::Internal(format!("cannot build the scored batch: {e}")))?;
    Ok((out, events))
}

/// The schema of an alerts table: one row per alert opened (`event = 'opened'`) and one
/// per alert closed (`event = 'closed'`), `at` being the event time of that change.
pub fn alerts_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("stage", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("event", DataType::Utf8, false),
        Field::new("at", ts(), false),
        Field::new("opened_at", ts(), false),
        Field::new("closed_at", ts(), true),
        Field::new("peak_score", DataType::Float64, false),
    ]))
}

/// Alert events as rows of [`alerts_schema`].
pub fn alerts_batch(stage: &str, events: &[AlertEvent]) -> Result<RecordBatch, StageError> {
    let col = |f: &dyn Fn(&AlertEvent) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(events.iter().map(f)))
    };
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let columns: Vec<ArrayRef> = vec![
        col(&|e| e.alert().alert_id.clone()),
        col(&|_| stage.to_string()),
        col(&|e| e.alert().key.clone()),
        col(&|e| match e {
            AlertEvent::Opened(_) => "opened".into(),
            AlertEvent::Closed(_) => "closed".into(),
        }),
        ts(events
            .iter()
            .map(|e| match e {
                AlertEvent::Opened(a) => Some(a.opened_at),
                AlertEvent::Closed(a) => a.closed_at.or(Some(a.opened_at)),
            })
            .collect()),
        ts(events.iter().map(|e| Some(e.alert().opened_at)).collect()),
        ts(events.iter().map(|e| e.alert().closed_at).collect()),
        Arc::new(Float64Array::from_iter_values(
            events.iter().map(|e| e.alert().peak_score),
        )),
    ];
    RecordBatch::try_new(alerts_schema(), columns)
        .map_err(|e| StageError::Internal(format!("cannot build the alert rows: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> StageConfig {
        StageConfig {
            name: "scored".into(),
            key: vec!["service".into()],
            time: "ts".into(),
            value: "v".into(),
            detector: DetectorConfig {
                warmup_points: Some(30),
                ..DetectorConfig::default()
            },
            alerts: Some(AlertRules::default()),
        }
    }

    fn batch(rows: &[(&str, i64, f64)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("service", DataType::Utf8, false),
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            Field::new("v", DataType::Float64, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap()
    }

    fn series() -> Vec<(&'static str, i64, f64)> {
        (0..200i64)
            .map(|i| {
                let v = if i == 150 {
                    500.0
                } else {
                    100.0 + ((i * 7919) % 13) as f64 * 0.5
                };
                ("api", i * 60_000_000, v)
            })
            .collect()
    }

    #[test]
    fn scores_flag_the_spike_and_a_checkpoint_resumes_identically() {
        let rows = series();
        let mut straight = StageState::default();
        let (out, events) = score(&cfg(), &mut straight, &batch(&rows)).unwrap();
        let scores = out
            .column_by_name(SCORE)
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .clone();
        let flags = out
            .column_by_name(IS_ANOMALY)
            .unwrap()
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap()
            .clone();
        assert!(
            flags.value(150),
            "the spike is flagged: {}",
            scores.value(150)
        );
        assert!(events.iter().any(|e| matches!(e, AlertEvent::Opened(_))));

        let mut first = StageState::default();
        let (a, mut ev) = score(&cfg(), &mut first, &batch(&rows[..120])).unwrap();
        let json = serde_json::to_string(&first).unwrap();
        let mut restored: StageState = serde_json::from_str(&json).unwrap();
        let (b, ev2) = score(&cfg(), &mut restored, &batch(&rows[120..])).unwrap();
        ev.extend(ev2);
        let resumed: Vec<f64> = [a, b]
            .iter()
            .flat_map(|o| {
                o.column_by_name(SCORE)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(
            resumed,
            scores.values().to_vec(),
            "bit-identical after restore"
        );
        assert_eq!(ev, events);
    }

    #[test]
    fn bad_inputs_are_named() {
        let schema = batch(&[]).schema();
        let mut c = cfg();
        c.value = "service".into();
        c.time = "nope".into();
        let errs = output_schema(&schema, &c).unwrap_err();
        assert!(
            errs.contains(&StageError::MissingColumn("nope".into())),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| matches!(e, StageError::ValueType { .. })),
            "{errs:?}"
        );
    }
}
