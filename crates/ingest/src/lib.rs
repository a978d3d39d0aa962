//! Sources: Kafka consumer groups, strict JSON decoding to Arrow, producers for dead-letter
//! records and generated events, the in-process broker, and the deterministic event
//! generator that feeds the demo and the tests. The only crate that uses rdkafka.

pub mod consume;
pub mod decode;
pub mod embedded;
pub mod generator;
pub mod kafka;
pub mod produce;
