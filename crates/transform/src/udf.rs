//! The registry of user-defined SQL functions: every UDF a pipeline's SQL may call is
//! listed in [`udfs`]. Model functions such as `predict(...)` are added here when the
//! model registry exists.

use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::SessionContext;

/// Every ymera UDF.
pub fn udfs() -> Vec<ScalarUDF> {
    Vec::new()
}

/// Registers every ymera UDF in a session.
pub fn register_udfs(ctx: &SessionContext) {
    for udf in udfs() {
        ctx.register_udf(udf);
    }
}
