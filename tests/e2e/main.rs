//! End-to-end tests: the `ymera` binary against a real Kafka-protocol broker in its own
//! process (tansu, started by `scripts/test`, address in `YMERA_TEST_BROKERS`; or
//! `ymera broker`), an S3-compatible server (moto, `YMERA_TEST_S3_ENDPOINT`), real files,
//! and the lake read back with the parquet crate, not through ymera's own code.
//!
//! They are the `e2e` test of the `ymera-cli` package, so cargo builds the binary they run
//! (`CARGO_BIN_EXE_ymera`) from the same sources before running them.

// Test helpers are `pub` for sibling modules only.
#![allow(unreachable_pub)]

mod anomaly;
mod autoscale;
mod cli;
mod dlq;
mod exactly_once;
mod gaps;
mod hostile;
mod interop;
mod keys;
mod maintenance;
mod memory;
mod models;
mod operability;
mod poison;
mod queries;
mod s3;
mod sink_groups;
// The build script's source hash, to check the binary under test against the tree.
#[path = "../../crates/cli/build/source_hash.rs"]
#[allow(dead_code)] // `watched_paths` is the build script's
mod source_hash;
mod support;
mod transactional;
mod warehouse;
mod warehouse_outage;
