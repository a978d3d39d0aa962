//! A time limit that reaches inside a running plan. DataFusion's join operators do not
//! yield to the runtime (apache/datafusion#19358), so a `tokio::time::timeout` around a
//! cross join may never get to fire. Every node of the physical plan is wrapped so that
//! each batch it hands up checks the deadline and turns into an error past it, or once
//! the query was cancelled ([`Cancel`]).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

/// The message of the error a passed deadline raises.
pub(crate) const PASSED: &str = "ymera: query time limit reached";
/// The message of the error a cancelled query raises.
pub(crate) const CANCELLED: &str = "ymera: query cancelled";

/// Stops a query from outside the task that runs it. A task in the middle of an operator
/// that does not yield is never polled again, so neither dropping its future nor aborting
/// it takes effect; its operators check this flag with every batch instead.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

/// Cancels its [`Cancel`] when dropped: held by whoever waits for the answer.
#[derive(Debug)]
pub struct CancelOnDrop(Cancel);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// A guard that cancels when dropped.
    pub fn on_drop(&self) -> CancelOnDrop {
        CancelOnDrop(self.clone())
    }
}

/// When a query's operators stop: at the deadline, or once cancelled.
#[derive(Debug, Clone)]
pub(crate) struct Stop {
    deadline: Instant,
    cancel: Cancel,
}

impl Stop {
    pub(crate) fn new(deadline: Instant, cancel: Cancel) -> Stop {
        Stop { deadline, cancel }
    }

    fn check(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(DataFusionError::Execution(CANCELLED.into()))
        } else if Instant::now() >= self.deadline {
            Err(DataFusionError::Execution(PASSED.into()))
        } else {
            Ok(())
        }
    }
}

#[derive(Debug)]
struct DeadlineExec {
    input: Arc<dyn ExecutionPlan>,
    stop: Stop,
}

impl DisplayAs for DeadlineExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "DeadlineExec")
    }
}

impl ExecutionPlan for DeadlineExec {
    fn name(&self) -> &str {
        "DeadlineExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_plan::PhysicalExpr>,
        ) -> Result<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> Result<datafusion::common::tree_node::TreeNodeRecursion> {
        // no expressions of its own
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children
            .pop()
            .ok_or_else(|| DataFusionError::Internal("DeadlineExec needs one child".into()))?;
        Ok(Arc::new(DeadlineExec {
            input,
            stop: self.stop.clone(),
        }))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let inner = self.input.execute(partition, context)?;
        let schema = inner.schema();
        let stop = self.stop.clone();
        let checked = inner.map(move |b| stop.check().and(b));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, checked)))
    }
}

/// Wraps every node of `plan`.
pub(crate) fn with_deadline(
    plan: Arc<dyn ExecutionPlan>,
    stop: Stop,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        Ok(Transformed::yes(Arc::new(DeadlineExec {
            input: node,
            stop: stop.clone(),
        }) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}
