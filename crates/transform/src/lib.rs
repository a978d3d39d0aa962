//! SQL transform stages over Arrow micro-batches, with DataFusion.
//!
//! A pipeline's stages form a chain of named SQL queries: the first reads `input` (the
//! decoded source records), each later one may read `input` and any earlier stage. Every
//! micro-batch runs through the whole chain; every stage's output is kept, because a sink
//! may read any of them. This crate knows nothing of Kafka, files or HTTP.

mod error;
mod udf;

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

pub use error::{Result, TransformError};
pub use udf::{register_udfs, udfs};

/// Name under which the decoded source records are visible to SQL.
pub const INPUT: &str = "input";

/// One named SQL stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub name: String,
    pub sql: String,
}

/// The outputs of one run: `input` first, then every stage in order.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    pub tables: Vec<(String, RecordBatch)>,
}

impl Outputs {
    /// The output of a stage (or of `input`).
    pub fn get(&self, name: &str) -> Option<&RecordBatch> {
        self.tables.iter().find(|(n, _)| n == name).map(|(_, b)| b)
    }
}

/// A record that a stage could not process, found by isolating it from its batch.
#[derive(Debug, Clone)]
pub struct FailedRow {
    /// Index of the row in the input batch.
    pub row: usize,
    pub error: TransformError,
}

/// The stages of one pipeline and the session they run in.
pub struct Transform {
    ctx: SessionContext,
    stages: Vec<Stage>,
    input_schema: SchemaRef,
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transform")
            .field("stages", &self.stages)
            .finish()
    }
}

/// What ymera's SQL stages may do: queries only (no DDL, DML or statements).
pub fn sql_options() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A DataFusion session configured the ymera way: UTC, one partition per batch, UDFs.
pub fn session() -> SessionContext {
    let mut config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false);
    config.options_mut().execution.time_zone = Some("UTC".to_string());
    let ctx = SessionContext::new_with_config(config);
    register_udfs(&ctx);
    ctx
}

impl Transform {
    /// Stages over records of `input_schema`.
    pub fn new(stages: Vec<Stage>, input_schema: SchemaRef) -> Self {
        Transform {
            ctx: session(),
            stages,
            input_schema,
        }
    }

    /// Plans every stage against the declared input schema without running anything.
    /// Returns each stage's output schema, or the error of each stage that does not plan
    /// (a stage after a broken one is planned against the tables that do exist).
    pub async fn plan(&self) -> Vec<(String, Result<SchemaRef>)> {
        let ctx = session();
        let mut out = Vec::with_capacity(self.stages.len());
        let empty = RecordBatch::new_empty(self.input_schema.clone());
        if let Err(e) = register(&ctx, INPUT, empty) {
            return vec![(INPUT.to_string(), Err(e))];
        }
        for stage in &self.stages {
            let planned = match ctx.sql_with_options(&stage.sql, sql_options()).await {
                Ok(df) => {
                    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                    register(&ctx, &stage.name, RecordBatch::new_empty(schema.clone()))
                        .map(|()| schema)
                }
                Err(e) => Err(TransformError::plan(&stage.name, e)),
            };
            out.push((stage.name.clone(), planned));
        }
        out
    }

    /// Runs every stage over one batch.
    pub async fn run(&self, input: RecordBatch) -> Result<Outputs> {
        let mut outputs = Outputs {
            tables: Vec::with_capacity(self.stages.len() + 1),
        };
        register(&self.ctx, INPUT, input.clone())?;
        outputs.tables.push((INPUT.to_string(), input));
        let result = async {
            for stage in &self.stages {
                let df = self
                    .ctx
                    .sql_with_options(&stage.sql, sql_options())
                    .await
                    .map_err(|e| TransformError::plan(&stage.name, e))?;
                let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
                let batches = df
                    .collect()
                    .await
                    .map_err(|e| TransformError::execute(&stage.name, e))?;
                let batch = concat_batches(&schema, &batches)
                    .map_err(|e| TransformError::execute(&stage.name, e.into()))?;
                register(&self.ctx, &stage.name, batch.clone())?;
                outputs.tables.push((stage.name.clone(), batch));
            }
            Ok(())
        }
        .await;
        for name in std::iter::once(INPUT).chain(self.stages.iter().map(|s| s.name.as_str())) {
            let _ = self.ctx.deregister_table(name);
        }
        result.map(|()| outputs)
    }

    /// Runs the stages; when execution fails, isolates the rows that make it fail by
    /// bisection and runs the rest. Row-wise SQL gives the same result as one run over the
    /// good rows; the failing rows are returned for the dead-letter queue. Planning errors
    /// are not row errors and are returned as such.
    pub async fn run_isolating(&self, input: RecordBatch) -> Result<(Outputs, Vec<FailedRow>)> {
        let mut parts: Vec<Outputs> = Vec::new();
        let mut failed = Vec::new();
        let mut todo = vec![(0usize, input)];
        while let Some((offset, batch)) = todo.pop() {
            match self.run(batch.clone()).await {
                Ok(out) => parts.push(out),
                Err(e @ TransformError::Execute { .. }) if batch.num_rows() <= 1 => {
                    failed.push(FailedRow {
                        row: offset,
                        error: e,
                    })
                }
                Err(TransformError::Execute { .. }) => {
                    let half = batch.num_rows() / 2;
                    // pushed in reverse so the left half runs first and output order holds
                    todo.push((offset + half, batch.slice(half, batch.num_rows() - half)));
                    todo.push((offset, batch.slice(0, half)));
                }
                Err(e) => return Err(e),
            }
        }
        failed.sort_by_key(|f| f.row);
        Ok((merge(parts)?, failed))
    }
}

/// Registers `batch` as the table `name`, replacing one of that name.
pub fn register(ctx: &SessionContext, name: &str, batch: RecordBatch) -> Result<()> {
    let _ = ctx.deregister_table(name);
    let table = MemTable::try_new(batch.schema(), vec![vec![batch]])
        .map_err(|e| TransformError::Internal(format!("cannot register `{name}`: {e}")))?;
    ctx.register_table(name, Arc::new(table))
        .map_err(|e| TransformError::Internal(format!("cannot register `{name}`: {e}")))?;
    Ok(())
}

fn merge(parts: Vec<Outputs>) -> Result<Outputs> {
    let Some(first) = parts.first() else {
        return Ok(Outputs::default());
    };
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap_or_default());
    }
    let mut merged = Outputs::default();
    for (i, (name, batch)) in first.tables.iter().enumerate() {
        let all: Vec<RecordBatch> = parts
            .iter()
            .filter_map(|p| p.tables.get(i).map(|t| t.1.clone()))
            .collect();
        let batch = concat_batches(&batch.schema(), &all).map_err(|e| {
            TransformError::Internal(format!("cannot merge outputs of `{name}`: {e}"))
        })?;
        merged.tables.push((name.clone(), batch));
    }
    Ok(merged)
}

#[cfg(test)]
mod tests;
