//! Sources: Kafka consumer groups, strict JSON decoding to Arrow, dead-letter records, and
//! the deterministic event generator that feeds the demo and the tests.

pub mod decode;
pub mod generator;
