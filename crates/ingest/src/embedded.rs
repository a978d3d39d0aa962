//! The in-process Kafka-protocol broker (librdkafka's mock cluster) behind `brokers: embedded`.

use std::sync::OnceLock;
use std::sync::mpsc;

use rdkafka::mocking::MockCluster;

static EMBEDDED: OnceLock<Result<String, String>> = OnceLock::new();

/// Starts the process's embedded broker on first use and returns its bootstrap servers.
/// The cluster lives on its own thread for the rest of the process. It keeps only a few MB
/// per partition: fill it while consuming, or keep data sets small.
pub fn bootstrap_servers() -> Result<String, String> {
    EMBEDDED
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("embedded-kafka".into())
                .spawn(move || match MockCluster::new(1) {
                    Ok(cluster) => {
                        let _ = tx.send(Ok(cluster.bootstrap_servers()));
                        loop {
                            std::thread::park();
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot start the embedded broker: {e}")));
                    }
                });
            match spawned {
                Ok(_) => rx
                    .recv()
                    .unwrap_or_else(|_| Err("embedded broker thread died".into())),
                Err(e) => Err(format!("cannot start the embedded broker thread: {e}")),
            }
        })
        .clone()
}

/// Resolves a `brokers` setting: `embedded` starts (or reuses) the in-process broker.
pub fn resolve_brokers(brokers: &str) -> Result<String, String> {
    if brokers.trim() == "embedded" {
        bootstrap_servers()
    } else {
        Ok(brokers.to_string())
    }
}
