//! The lake: Delta Lake tables laid out Hive-style on an object store (local or S3).
//! Data files are published so that readers never see a partial file; each publication is
//! one atomic Delta commit per table that carries the Kafka positions it brings the table to,
//! so a replay after a crash rewrites exactly what was lost and nothing twice.
//!
//! Layout (interfaces.md "Lake layout"):
//! `<lake>/<table>/_delta_log/` and
//! `<lake>/<table>/dt=YYYY-MM-DD/<col>=<value>/<topic>+<partition>+<first>-<last>.parquet`,
//! local staging under `<lake>/_staging/`.

pub mod catalog;
pub mod delta;
pub mod error;
pub mod layout;
pub mod maintain;
pub mod migrate;
pub mod store;
pub mod writer;

pub use error::{LakeError, Result};
pub use layout::SegmentId;
pub use store::{Lake, Published};
pub use writer::{TableSpec, TableWriter};

/// A Kafka topic and partition.
pub type TopicPartition = (String, i32);
