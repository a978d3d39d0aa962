//! Reading a whole topic outside any consumer group (assign + read to the high
//! watermark): for `ymera dlq inspect` and for tests; a partition's watermarks (for
//! `ymera lake accept-gap`).

use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use crate::produce::connection_config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::kafka::Record;

/// The (low, high) watermarks of one partition: the first offset still in the log and the
/// next one to be written. Blocking: call from a blocking context.
pub fn watermarks(
    brokers: &str,
    client: &BTreeMap<String, String>,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), KafkaError> {
    let consumer: BaseConsumer = connection_config(brokers, client)
        .set("group.id", "ymera-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.fetch_watermarks(topic, partition, timeout)
}

/// Every record of `topic` as (partition, record), read from the beginning up to the high
/// watermark seen at the start. Blocking: call from a blocking context.
pub fn read_topic(
    brokers: &str,
    client: &BTreeMap<String, String>,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, Record)>, KafkaError> {
    let consumer: BaseConsumer = connection_config(brokers, client)
        .set("group.id", "ymera-reader")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = 0i64;
    let mut highs = std::collections::HashMap::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, timeout)?;
        if high > low {
            tpl.add_partition_offset(topic, *p, Offset::Offset(low))?;
            remaining += high - low;
            highs.insert(*p, high);
        }
    }
    let mut out = Vec::with_capacity(remaining.max(0) as usize);
    if remaining == 0 {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while remaining > 0 && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(m)) if highs.get(&m.partition()).is_some_and(|h| m.offset() < *h) => {
                remaining -= 1;
                out.push((m.partition(), Record::from_message(&m)));
            }
            Some(Ok(_)) => {}
        }
    }
    Ok(out)
}

/// The offsets a consumer group has committed for each partition of `topic` (None: no
/// commit). Blocking: call from a blocking context.
pub fn committed_offsets(
    brokers: &str,
    client: &BTreeMap<String, String>,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<(i32, Option<i64>)>, KafkaError> {
    let consumer: BaseConsumer = connection_config(brokers, client)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), timeout)?;
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(tpl, timeout)?;
    Ok(committed
        .elements()
        .iter()
        .map(|e| {
            (
                e.partition(),
                match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                },
            )
        })
        .collect())
}
