//! Pipelines: the YAML spec, its validation (`ymera validate`), offline tests
//! (`ymera test`) and the runtime that drives Kafka -> decode -> SQL -> lake with
//! exactly-once commits (`ymera run`).

pub mod chain;
pub mod checkpoint;
pub mod dlq;
pub mod load;
pub mod notify;
pub mod rate;
pub mod replay;
pub mod run;
pub mod spec;
pub mod testing;
pub mod validate;

pub use load::{Diagnostic, Loaded, load_file};
pub use validate::{Pipeline, check, check_warehouse};
