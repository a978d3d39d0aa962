//! A pipeline's stage chain when it holds anomaly stages: the SQL stages before the first
//! anomaly stage run as one [`Transform`] (with row isolation, so failing rows become
//! dead letters); from the first anomaly stage on, each stage runs once, in order, over
//! the outputs so far. Anomaly stages keep state between batches ([`ChainState`], one per
//! Kafka partition), so nothing after them may run a row twice: SQL stages after an
//! anomaly stage run without bisection, and an execution error there stops the pipeline.
//! A pipeline without anomaly stages is just its [`Transform`].

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use ymera_anomaly::alerts::AlertEvent;
use ymera_anomaly::stage::{StageConfig, StageState};
use ymera_transform::{FailedRow, Outputs, Stage, Transform, TransformError};

/// The suffix of the output that carries an anomaly stage's alert rows (`<stage>#alerts`:
/// not a SQL name, so only the stage's alerts sink reads it).
pub const ALERTS_SUFFIX: &str = "#alerts";

/// The output name of a stage's alert rows.
pub fn alerts_output(stage: &str) -> String {
    format!("{stage}{ALERTS_SUFFIX}")
}

/// A resolved anomaly stage.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyStage {
    /// The stage (or `input`) it reads.
    pub input: String,
    pub config: StageConfig,
    /// Where opened alerts are notified after their commit (topic, webhook).
    pub notify: Notify,
}

/// Notification targets of a stage's alerts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Notify {
    pub topic: Option<String>,
    pub webhook: Option<std::sync::Arc<crate::notify::Webhook>>,
}

impl Notify {
    pub fn is_empty(&self) -> bool {
        self.topic.is_none() && self.webhook.is_none()
    }
}

/// One stage of the chain.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Sql(Stage),
    Anomaly(AnomalyStage),
}

impl Step {
    pub fn name(&self) -> &str {
        match self {
            Step::Sql(s) => &s.name,
            Step::Anomaly(a) => &a.config.name,
        }
    }
}

/// The state of every anomaly stage for one Kafka partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ChainState {
    /// By stage name.
    pub stages: BTreeMap<String, StageState>,
}

/// An alert that opened or closed in a run.
#[derive(Debug, Clone, PartialEq)]
pub struct StageAlert {
    pub stage: String,
    pub event: AlertEvent,
}

/// The chain of one pipeline.
pub struct Chain {
    /// SQL stages up to the first anomaly stage.
    pre: Transform,
    /// From the first anomaly stage on.
    rest: Vec<Step>,
    ctx: SessionContext,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("pre", &self.pre)
            .field("rest", &self.rest)
            .finish()
    }
}

/// Splits steps into the SQL prefix and the rest.
pub fn split(steps: &[Step]) -> (Vec<Stage>, Vec<Step>) {
    let first = steps
        .iter()
        .position(|s| matches!(s, Step::Anomaly(_)))
        .unwrap_or(steps.len());
    let pre = steps[..first]
        .iter()
        .filter_map(|s| match s {
            Step::Sql(s) => Some(s.clone()),
            Step::Anomaly(_) => None,
        })
        .collect();
    (pre, steps[first..].to_vec())
}

/// Plans a SQL stage that comes after an anomaly stage, against the schemas so far.
pub async fn plan_sql(
    stage: &Stage,
    schemas: &[(String, SchemaRef)],
) -> Result<SchemaRef, TransformError> {
    let ctx = ymera_transform::session();
    for (name, schema) in schemas {
        if !name.ends_with(ALERTS_SUFFIX) {
            ymera_transform::register(&ctx, name, RecordBatch::new_empty(schema.clone()))?;
        }
    }
    let df = ctx
        .sql_with_options(&stage.sql, ymera_transform::sql_options())
        .await
        .map_err(|e| TransformError::plan(&stage.name, e))?;
    Ok(Arc::new(df.schema().as_arrow().clone()))
}

impl Chain {
    pub fn new(steps: &[Step], input_schema: SchemaRef) -> Chain {
        let (pre, rest) = split(steps);
        Chain {
            pre: Transform::new(pre, input_schema),
            rest,
            ctx: ymera_transform::session(),
        }
    }

    /// The anomaly stages, in order.
    pub fn anomaly_stages(&self) -> impl Iterator<Item = &AnomalyStage> {
        self.rest.iter().filter_map(|s| match s {
            Step::Anomaly(a) => Some(a),
            Step::Sql(_) => None,
        })
    }

    pub fn has_state(&self) -> bool {
        !self.rest.is_empty()
    }

    /// Runs the chain over one batch of one partition whose anomaly state is `state`.
    /// With `isolate`, rows failing in the SQL prefix are isolated and returned; an error
    /// after it stops the pipeline (see the module doc).
    pub async fn run(
        &self,
        state: &mut ChainState,
        input: RecordBatch,
        isolate: bool,
    ) -> Result<(Outputs, Vec<FailedRow>, Vec<StageAlert>), TransformError> {
        let (mut outputs, failed) = if isolate {
            self.pre.run_isolating(input).await?
        } else {
            (self.pre.run(input).await?, Vec::new())
        };
        let mut alerts = Vec::new();
        if self.rest.is_empty() {
            return Ok((outputs, failed, alerts));
        }
        if outputs.tables.is_empty() {
            // every row failed in the prefix: nothing reaches the stateful stages
            return Ok((outputs, failed, alerts));
        }
        let result = self.run_rest(state, &mut outputs, &mut alerts).await;
        for (name, _) in &outputs.tables {
            if !name.ends_with(ALERTS_SUFFIX) {
                let _ = self.ctx.deregister_table(name.as_str());
            }
        }
        result.map(|()| (outputs, failed, alerts))
    }

    async fn run_rest(
        &self,
        state: &mut ChainState,
        outputs: &mut Outputs,
        alerts: &mut Vec<StageAlert>,
    ) -> Result<(), TransformError> {
        let mut registered = false;
        for step in &self.rest {
            match step {
                Step::Anomaly(a) => {
                    let name = &a.config.name;
                    let input = outputs.get(&a.input).cloned().ok_or_else(|| {
                        TransformError::Internal(format!(
                            "stage `{name}` reads `{}`, which has no output",
                            a.input
                        ))
                    })?;
                    let st = state.stages.entry(name.clone()).or_default();
                    let (scored, events) = ymera_anomaly::stage::score(&a.config, st, &input)
                        .map_err(|e| TransformError::Execute {
                            stage: name.clone(),
                            message: e.to_string(),
                        })?;
                    if a.config.alerts.is_some() {
                        let rows =
                            ymera_anomaly::stage::alerts_batch(name, &events).map_err(|e| {
                                TransformError::Internal(format!("stage `{name}`: {e}"))
                            })?;
                        outputs.tables.push((alerts_output(name), rows));
                    }
                    observe(name, &scored, events.len());
                    alerts.extend(events.into_iter().map(|event| StageAlert {
                        stage: name.clone(),
                        event,
                    }));
                    if registered {
                        ymera_transform::register(&self.ctx, name, scored.clone())?;
                    }
                    outputs.tables.push((name.clone(), scored));
                }
                Step::Sql(stage) => {
                    if !registered {
                        for (n, b) in &outputs.tables {
                            if !n.ends_with(ALERTS_SUFFIX) {
                                ymera_transform::register(&self.ctx, n, b.clone())?;
                            }
                        }
                        registered = true;
                    }
                    let df = self
                        .ctx
                        .sql_with_options(&stage.sql, ymera_transform::sql_options())
                        .await
                        .map_err(|e| TransformError::plan(&stage.name, e))?;
                    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                    let batches = df
                        .collect()
                        .await
                        .map_err(|e| TransformError::execute(&stage.name, e))?;
                    let batch =
                        concat_batches(&schema, &batches).map_err(|e| TransformError::Execute {
                            stage: stage.name.clone(),
                            message: e.to_string(),
                        })?;
                    ymera_transform::register(&self.ctx, &stage.name, batch.clone())?;
                    outputs.tables.push((stage.name.clone(), batch));
                }
            }
        }
        Ok(())
    }
}

/// `ymera_anomaly_points_total`, `ymera_anomaly_flagged_total` and
/// `ymera_anomaly_alert_events_total` (opened and closed) per stage.
fn observe(stage: &str, scored: &RecordBatch, alert_events: usize) {
    use arrow::array::{Array, BooleanArray};
    let flagged = scored
        .column_by_name("is_anomaly")
        .and_then(|c| {
            c.as_any()
                .downcast_ref::<BooleanArray>()
                .map(|b| b.true_count())
        })
        .unwrap_or(0);
    let stage = stage.to_string();
    metrics::counter!("ymera_anomaly_points_total", "stage" => stage.clone())
        .increment(scored.num_rows() as u64);
    metrics::counter!("ymera_anomaly_flagged_total", "stage" => stage.clone())
        .increment(flagged as u64);
    metrics::counter!("ymera_anomaly_alert_events_total", "stage" => stage)
        .increment(alert_events as u64);
}

/// The stage names of a chain's steps that carry state.
pub fn stateful(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Anomaly(a) => Some(a.config.name.clone()),
            Step::Sql(_) => None,
        })
        .collect()
}
