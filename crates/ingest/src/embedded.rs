//! The in-process Kafka-protocol broker (librdkafka's mock cluster) behind `brokers: embedded`.

use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use rdkafka::mocking::MockCluster;

/// A request to the thread that owns the mock cluster.
struct CreateTopic {
    topic: String,
    partitions: i32,
    reply: mpsc::Sender<Result<(), String>>,
}

struct Embedded {
    bootstrap: String,
    requests: Mutex<mpsc::Sender<CreateTopic>>,
}

static EMBEDDED: OnceLock<Result<Embedded, String>> = OnceLock::new();

fn start() -> Result<Embedded, String> {
    let (tx, rx) = mpsc::channel();
    let (req_tx, req_rx) = mpsc::channel::<CreateTopic>();
    std::thread::Builder::new()
        .name("embedded-kafka".into())
        .spawn(move || match MockCluster::new(1) {
            Ok(cluster) => {
                let _ = tx.send(Ok(cluster.bootstrap_servers()));
                // the cluster lives as long as this thread, i.e. the process
                while let Ok(req) = req_rx.recv() {
                    let r = cluster
                        .create_topic(&req.topic, req.partitions, 1)
                        .map_err(|e| {
                            format!(
                                "cannot create topic `{}` on the embedded broker: {e}",
                                req.topic
                            )
                        });
                    let _ = req.reply.send(r);
                }
                loop {
                    std::thread::park();
                }
            }
            Err(e) => {
                let _ = tx.send(Err(format!("cannot start the embedded broker: {e}")));
            }
        })
        .map_err(|e| format!("cannot start the embedded broker thread: {e}"))?;
    let bootstrap = rx
        .recv()
        .unwrap_or_else(|_| Err("embedded broker thread died".into()))?;
    Ok(Embedded {
        bootstrap,
        requests: Mutex::new(req_tx),
    })
}

/// Starts the process's embedded broker on first use and returns its bootstrap servers.
/// It keeps only a few MB per partition: fill it while consuming, or keep data sets small.
pub fn bootstrap_servers() -> Result<String, String> {
    match EMBEDDED.get_or_init(start) {
        Ok(e) => Ok(e.bootstrap.clone()),
        Err(e) => Err(e.clone()),
    }
}

/// Resolves a `brokers` setting: `embedded` starts (or reuses) the in-process broker.
pub fn resolve_brokers(brokers: &str) -> Result<String, String> {
    if brokers.trim() == "embedded" {
        bootstrap_servers()
    } else {
        Ok(brokers.to_string())
    }
}

/// True when `bootstrap` is this process's embedded broker.
pub fn is_embedded(bootstrap: &str) -> bool {
    matches!(EMBEDDED.get(), Some(Ok(e)) if e.bootstrap == bootstrap)
}

/// Creates a topic on the embedded broker (blocking; the mock cluster has no admin API).
pub fn create_topic(topic: &str, partitions: i32) -> Result<(), String> {
    let Some(Ok(e)) = EMBEDDED.get() else {
        return Err("the embedded broker is not running".into());
    };
    let (reply, answer) = mpsc::channel();
    let req = CreateTopic {
        topic: topic.to_string(),
        partitions,
        reply,
    };
    e.requests
        .lock()
        .map_err(|_| "embedded broker lock poisoned".to_string())?
        .send(req)
        .map_err(|_| "embedded broker thread is gone".to_string())?;
    answer
        .recv()
        .map_err(|_| "embedded broker thread is gone".to_string())?
}
