//! Producing to Kafka: dead-letter records with their context headers, topic creation, and
//! bulk loading of generated events.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// How to reach the brokers: `bootstrap.servers` plus the connection settings
/// (`security.*`, `sasl.*`, `ssl.*`) of a pipeline's librdkafka passthrough — the part of
/// it that applies to every client, not only to the pipeline's consumer.
pub fn connection_config(
    brokers: &str,
    extra: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers);
    for (k, v) in extra {
        if k.starts_with("security.") || k.starts_with("sasl.") || k.starts_with("ssl.") {
            cfg.set(k, v);
        }
    }
    cfg
}

/// An idempotent, acks=all producer.
#[derive(Clone)]
pub struct Producer(FutureProducer);

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Producer")
    }
}

impl Producer {
    /// Sends one record with headers and waits until the broker has it.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&str, &[u8])],
    ) -> Result<(i32, i64), KafkaError> {
        send(&self.0, topic, key, value, headers).await
    }

    /// Waits until everything sent is acknowledged (blocking: call from a blocking context).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        use rdkafka::producer::Producer as _;
        self.0.flush(timeout)
    }
}

/// Creates a [`Producer`]; the security settings of `extra` (a consumer's passthrough) apply.
pub fn producer(
    brokers: &str,
    extra: &std::collections::BTreeMap<String, String>,
) -> Result<Producer, KafkaError> {
    let mut cfg = connection_config(brokers, extra);
    cfg.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "zstd")
        .set("message.timeout.ms", "60000");
    Ok(Producer(cfg.create()?))
}

/// Sends one record with headers and waits until the broker has it.
async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    headers: &[(&str, &[u8])],
) -> Result<(i32, i64), KafkaError> {
    let mut h = OwnedHeaders::new_with_capacity(headers.len());
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(h);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(v) = value {
        rec = rec.payload(v);
    }
    let delivery = producer
        .send(rec, Duration::from_secs(60))
        .await
        .map_err(|(e, _)| e)?;
    Ok((delivery.partition, delivery.offset))
}

/// Creates topics (an existing topic is fine).
pub async fn create_topics(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<(), KafkaError> {
    if crate::embedded::is_embedded(brokers) {
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        return tokio::task::spawn_blocking(move || {
            topics
                .iter()
                .try_for_each(|t| crate::embedded::create_topic(t, partitions))
        })
        .await
        .map_err(|e| KafkaError::ClientCreation(e.to_string()))?
        .map_err(KafkaError::ClientCreation);
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                tracing::error!(topic, "cannot create topic");
                return Err(KafkaError::AdminOp(code));
            }
        }
    }
    Ok(())
}

/// Checks that the brokers answer a metadata request (for `validate`'s environment stage).
pub fn check_brokers(
    brokers: &str,
    extra: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> Result<usize, KafkaError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = connection_config(brokers, extra).create()?;
    let md = c.fetch_metadata(None, timeout)?;
    Ok(md.brokers().len())
}

/// One record to produce in bulk.
#[derive(Debug, Clone)]
pub struct OutRecord<'a> {
    pub topic: &'a str,
    pub key: Option<&'a [u8]>,
    pub value: &'a [u8],
    pub timestamp_ms: Option<i64>,
}

impl Producer {
    /// Enqueues every record in order (per partition order is kept) and waits until the
    /// broker acknowledged all of them. Returns how many were written.
    pub async fn send_all<'a>(
        &self,
        records: impl IntoIterator<Item = OutRecord<'a>>,
    ) -> Result<u64, KafkaError> {
        let mut pending = std::collections::VecDeque::new();
        let mut sent = 0u64;
        for r in records {
            let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(r.topic).payload(r.value);
            if let Some(k) = r.key {
                rec = rec.key(k);
            }
            if let Some(ts) = r.timestamp_ms {
                rec = rec.timestamp(ts);
            }
            loop {
                match self.0.send_result(rec) {
                    Ok(fut) => {
                        pending.push_back(fut);
                        break;
                    }
                    Err((
                        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                        back,
                    )) => {
                        rec = back;
                        // let deliveries drain before enqueueing more
                        if let Some(f) = pending.pop_front() {
                            f.await
                                .map_err(|_| KafkaError::Canceled)?
                                .map_err(|(e, _)| e)?;
                            sent += 1;
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Err((e, _)) => return Err(e),
                }
            }
            while pending.len() > 50_000 {
                if let Some(f) = pending.pop_front() {
                    f.await
                        .map_err(|_| KafkaError::Canceled)?
                        .map_err(|(e, _)| e)?;
                    sent += 1;
                }
            }
        }
        for f in pending {
            f.await
                .map_err(|_| KafkaError::Canceled)?
                .map_err(|(e, _)| e)?;
            sent += 1;
        }
        Ok(sent)
    }
}
