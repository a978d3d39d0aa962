//! Parquet footers in one read. DataFusion's own listing tables read the last
//! `execution.parquet.metadata_size_hint` bytes of a file at once (the footer and its
//! length together); the Delta scan builds its `ParquetSource` without that hint, so each
//! file costs a read of the 8-byte trailer, then one of the footer, before any data. Over
//! a table of a thousand small `dt` files that is a thousand extra round trips to the
//! store. This physical optimizer rule, run last, gives every Parquet scan the session's
//! hint.

use std::sync::Arc;

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;

#[derive(Debug)]
pub(crate) struct FooterHint;

impl PhysicalOptimizerRule for FooterHint {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(hint) = config.execution.parquet.metadata_size_hint else {
            return Ok(plan);
        };
        plan.transform_up(|node| {
            let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
                return Ok(Transformed::no(node));
            };
            let Some((scan, parquet)) = exec.downcast_to_file_source::<ParquetSource>() else {
                return Ok(Transformed::no(node));
            };
            let scan = FileScanConfigBuilder::from(scan.clone())
                .with_source(Arc::new(parquet.clone().with_metadata_size_hint(hint)))
                .build();
            Ok(Transformed::yes(Arc::new(
                exec.clone().with_data_source(Arc::new(scan)),
            )))
        })
        .data()
    }

    fn name(&self) -> &str {
        "ymera_parquet_footer_hint"
    }

    fn schema_check(&self) -> bool {
        true
    }
}
