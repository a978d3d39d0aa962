//! The Parquet lake: table files laid out Hive-style on an object store (local or S3),
//! published so that readers never see a partial file, with a per-pipeline commit log that
//! makes a replay after a crash rewrite exactly what was lost and nothing twice.
//!
//! Layout (interfaces.md "Lake layout"):
//! `<lake>/<table>/dt=YYYY-MM-DD/<col>=<value>/<topic>+<partition>+<first>-<last>.parquet`,
//! commit records under `<lake>/_ymera/commits/<pipeline>/`, local staging under
//! `<lake>/_staging/`.

pub mod catalog;
pub mod error;
pub mod layout;
pub mod ledger;
pub mod store;
pub mod writer;

pub use error::{LakeError, Result};
pub use layout::SegmentId;
pub use ledger::{CommitRecord, Positions, TopicPartition};
pub use store::{Lake, Published};
pub use writer::{TableSpec, TableWriter};
