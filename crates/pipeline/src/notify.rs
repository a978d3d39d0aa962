//! Alert notifications, off the publish path. The runner hands each committed alert to a
//! [`Notifier`]: a bounded queue read by one task that delivers to the stage's Kafka topic
//! (the source's brokers) and webhook (an HTTP `POST` of the JSON body through reqwest:
//! http or https, redirects not followed, an optional HMAC-SHA256 signature), each attempt
//! under its target's timeout, a few at a time. Outcomes come back to the runner, which
//! marks an alert notified or leaves it pending for the next attempt; a full queue leaves
//! it pending too. So a black-holed webhook costs the publish path nothing.
//! At-least-once: see docs/pipeline-reference.md.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::warn;
use ymera_common::Secret;
use ymera_ingest::kafka::TopicPartition;
use ymera_ingest::produce::Producer;

/// How long one send of an alert to its Kafka topic may take.
pub const TOPIC_TIMEOUT: Duration = Duration::from_secs(30);
/// Alerts waiting for delivery, at most (beyond, they stay pending in the runner).
pub const QUEUE: usize = 1024;
/// Deliveries in flight at once.
pub const CONCURRENT: usize = 8;
/// The signature header: `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Ymera-Signature";
/// The signing time, Unix seconds, part of what is signed.
pub const TIMESTAMP_HEADER: &str = "X-Ymera-Timestamp";

/// A webhook target.
#[derive(Clone, PartialEq)]
pub struct Webhook {
    pub url: reqwest::Url,
    /// How long one attempt may take, connecting included.
    pub timeout: Duration,
    /// Signs each body (`X-Ymera-Signature`) when set.
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &shown(&self.url))
            .field("timeout", &self.timeout)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Checks a webhook URL: `http` or `https` with a host, and no control character at all
/// (a CR or LF would otherwise be a header of its own; the URL parser silently drops tabs
/// and newlines, so the raw text is checked first). Errors never repeat the URL's path or
/// query, which may hold a token.
pub fn check_url(raw: &str) -> Result<reqwest::Url, String> {
    if let Some(c) = raw.chars().find(|c| c.is_control()) {
        return Err(format!(
            "webhook url holds a control character ({:?}); CR, LF and the like are refused",
            c
        ));
    }
    let url = reqwest::Url::parse(raw).map_err(|e| format!("webhook url is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "webhook url must be http:// or https://, not {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("webhook url has no host".into());
    }
    Ok(url)
}

/// A URL as logs show it: scheme, host and port; the path and query, where tokens live
/// (`/services/T000/B000/XXXX`, `?token=`), become `…`, and user info is dropped.
pub fn shown(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("");
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    let rest = if url.path() == "/" && url.query().is_none() {
        "/"
    } else {
        "/…"
    };
    format!("{}://{host}{port}{rest}", url.scheme())
}

/// `sha256=<hex>` of HMAC-SHA256 over `<timestamp>.<body>`.
pub fn signature(secret: &Secret, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// One alert to deliver.
#[derive(Debug)]
pub struct Job {
    pub tp: TopicPartition,
    /// The caller's tag (which assignment of `tp` offered it), given back in the outcome.
    pub tag: u64,
    pub alert_id: String,
    pub key: String,
    pub body: Vec<u8>,
    pub topic: Option<String>,
    pub webhook: Option<Arc<Webhook>>,
}

/// How a delivery ended: `ok` when every target of the alert took it.
#[derive(Debug)]
pub struct Outcome {
    pub tp: TopicPartition,
    pub tag: u64,
    pub alert_id: String,
    pub ok: bool,
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: try again later.
    Full,
    /// The delivery task has stopped.
    Closed,
}

/// The runner's end of the delivery task.
#[derive(Debug)]
pub struct Notifier {
    jobs: Option<mpsc::Sender<Job>>,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
    worker: Option<tokio::task::JoinHandle<()>>,
    /// Jobs queued or being delivered.
    in_flight: usize,
}

impl Notifier {
    /// Starts the delivery task of pipeline `pipeline`; `producer` sends to alert topics.
    pub fn start(pipeline: &str, producer: Option<Producer>) -> Result<Notifier, String> {
        // alerts are rare: a fresh connection each, never a pooled one the far end closed
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        let (jobs, rx) = mpsc::channel(QUEUE);
        let (tx, outcomes) = mpsc::unbounded_channel();
        let worker = tokio::spawn(work(pipeline.to_string(), rx, producer, client, tx));
        Ok(Notifier {
            jobs: Some(jobs),
            outcomes,
            worker: Some(worker),
            in_flight: 0,
        })
    }

    /// Queues `job` without waiting.
    pub fn offer(&mut self, job: Job) -> Result<(), Refused> {
        let jobs = self.jobs.as_ref().ok_or(Refused::Closed)?;
        match jobs.try_send(job) {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => Err(Refused::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refused::Closed),
        }
    }

    /// The outcomes that arrived, without waiting.
    pub fn outcomes(&mut self) -> Vec<Outcome> {
        let mut out = Vec::new();
        while let Ok(o) = self.outcomes.try_recv() {
            out.push(o);
        }
        self.in_flight -= out.len().min(self.in_flight);
        out
    }

    /// Waits until every queued job has an outcome, or `deadline`; returns what arrived.
    pub async fn settle(&mut self, deadline: tokio::time::Instant) -> Vec<Outcome> {
        let mut out = self.outcomes();
        while self.in_flight > 0 {
            match tokio::time::timeout_at(deadline, self.outcomes.recv()).await {
                Ok(Some(o)) => {
                    self.in_flight -= 1;
                    out.push(o);
                }
                Ok(None) | Err(_) => break,
            }
        }
        out
    }

    /// Jobs queued or being delivered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Stops taking jobs and waits (up to `deadline`) for the task to finish what it holds
    /// and let its producer go (flushed on a blocking thread).
    pub async fn close(&mut self, deadline: tokio::time::Instant) {
        self.jobs = None;
        if let Some(worker) = self.worker.take() {
            let abort = worker.abort_handle();
            if tokio::time::timeout_at(deadline, worker).await.is_err() {
                abort.abort();
            }
        }
    }
}

/// The delivery task: up to [`CONCURRENT`] jobs at once until the queue closes.
async fn work(
    pipeline: String,
    mut jobs: mpsc::Receiver<Job>,
    producer: Option<Producer>,
    client: reqwest::Client,
    outcomes: mpsc::UnboundedSender<Outcome>,
) {
    let mut running = JoinSet::new();
    // what each delivery is about, so one that panics still has an outcome (a failure)
    let mut about: std::collections::HashMap<tokio::task::Id, (TopicPartition, u64, String)> =
        std::collections::HashMap::new();
    let mut open = true;
    while open || !running.is_empty() {
        tokio::select! {
            job = jobs.recv(), if open && running.len() < CONCURRENT => match job {
                Some(job) => {
                    let what = (job.tp.clone(), job.tag, job.alert_id.clone());
                    let task = running.spawn(deliver(pipeline.clone(), job, producer.clone(), client.clone()));
                    about.insert(task.id(), what);
                }
                None => open = false,
            },
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let outcome = match done {
                    Ok((id, o)) => {
                        about.remove(&id);
                        o
                    }
                    Err(e) => {
                        let Some((tp, tag, alert_id)) = about.remove(&e.id()) else {
                            continue;
                        };
                        warn!(pipeline, alert_id, error = %e, "an alert delivery failed inside (a bug); retrying after the next commit");
                        Outcome { tp, tag, alert_id, ok: false }
                    }
                };
                let _ = outcomes.send(outcome);
            }
        }
    }
    // dropping a producer flushes it: not on a runtime thread
    if let Some(p) = producer {
        let _ = tokio::task::spawn_blocking(move || drop(p)).await;
    }
}

/// Delivers one alert to its topic, then its webhook; each failure is logged.
async fn deliver(
    pipeline: String,
    job: Job,
    producer: Option<Producer>,
    client: reqwest::Client,
) -> Outcome {
    let mut ok = true;
    if let (Some(topic), Some(producer)) = (&job.topic, &producer) {
        let sent = tokio::time::timeout(
            TOPIC_TIMEOUT,
            producer.send(topic, Some(job.key.as_bytes()), Some(&job.body), &[]),
        )
        .await;
        let error = match sent {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no acknowledgement within {TOPIC_TIMEOUT:?}")),
        };
        if let Some(error) = error {
            warn!(
                pipeline,
                alert_topic = topic,
                alert_id = job.alert_id,
                error,
                "cannot send an alert to its topic; retrying after the next commit"
            );
            ok = false;
        }
    }
    if let (true, Some(hook)) = (ok, &job.webhook)
        && let Err(error) = post(&client, hook, job.body.clone()).await
    {
        warn!(
            pipeline,
            alert_id = job.alert_id,
            error,
            "cannot post an alert to its webhook; retrying after the next commit"
        );
        ok = false;
    }
    Outcome {
        tp: job.tp,
        tag: job.tag,
        alert_id: job.alert_id,
        ok,
    }
}

/// Posts `body` to the webhook; Ok on a 2xx answer. A redirect is an error (not followed).
/// The error names the URL as [`shown`] does.
pub async fn post(client: &reqwest::Client, hook: &Webhook, body: Vec<u8>) -> Result<(), String> {
    let at = shown(&hook.url);
    let mut req = client
        .post(hook.url.clone())
        .timeout(hook.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json");
    if let Some(secret) = &hook.secret {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        req = req
            .header(TIMESTAMP_HEADER, now.to_string())
            .header(SIGNATURE_HEADER, signature(secret, now, &body));
    }
    let answer = req.body(body).send().await.map_err(|e| {
        if e.is_timeout() {
            format!("webhook {at}: no answer within {:?}", hook.timeout)
        } else {
            format!("webhook {at}: {}", e.without_url())
        }
    })?;
    let status = answer.status();
    if status.is_success() {
        Ok(())
    } else if status.is_redirection() {
        Err(format!(
            "webhook {at}: HTTP {status} (redirects are not followed: use the final URL)"
        ))
    } else {
        Err(format!("webhook {at}: HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn urls_are_checked_and_shown_without_their_tokens() {
        let u = check_url("https://hooks.example.com/services/T0/B0/s3cr3t?token=x").unwrap();
        assert_eq!(shown(&u), "https://hooks.example.com/…");
        assert_eq!(
            shown(&check_url("http://u:pw@h:8080/").unwrap()),
            "http://h:8080/"
        );
        for bad in [
            "http://h/a\r\nX-Injected: 1",
            "http://h/a\nb",
            "http://h/a\tb",
            "ftp://h/x",
            "h/x",
            "http://",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(!e.contains("Injected") && !e.contains("/x"), "{e}");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // computed apart, with Python: hmac.new(b"key", b"1700000000.{}", "sha256")
        assert_eq!(
            signature(&Secret::new("key"), 1_700_000_000, b"{}"),
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }

    /// One HTTP server on a free port answering every request with `status` after
    /// `delay`; returns its address and the requests (head and body) it read.
    async fn server(
        status: &'static str,
        delay: Duration,
    ) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = got.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let text = String::from_utf8_lossy(&req).to_string();
                        if let Some((head, body)) = text.split_once("\r\n\r\n") {
                            let len = head
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            if body.len() >= len {
                                break;
                            }
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&req).to_string());
                    tokio::time::sleep(delay).await;
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nLocation: http://elsewhere.invalid/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        (addr, got)
    }

    fn job(alert_id: &str, hook: &Arc<Webhook>) -> Job {
        Job {
            tp: ("events".into(), 0),
            tag: 0,
            alert_id: alert_id.into(),
            key: "k".into(),
            body: br#"{"alert_id":"a"}"#.to_vec(),
            topic: None,
            webhook: Some(hook.clone()),
        }
    }

    fn hook(addr: &str, timeout: Duration, secret: Option<&str>) -> Arc<Webhook> {
        Arc::new(Webhook {
            url: check_url(&format!("http://{addr}/hook/T0/s3cr3t")).unwrap(),
            timeout,
            secret: secret.map(Secret::new),
        })
    }

    #[tokio::test]
    async fn a_webhook_gets_the_signed_body_and_a_redirect_is_a_failure() {
        let (addr, got) = server("204 No Content", Duration::ZERO).await;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let h = hook(&addr, Duration::from_secs(5), Some("key"));
        post(&client, &h, b"{}".to_vec()).await.unwrap();
        let req = got.lock().unwrap()[0].clone();
        assert!(req.starts_with("POST /hook/T0/s3cr3t HTTP/1.1"), "{req}");
        let ts: u64 = req
            .lines()
            .find_map(|l| l.strip_prefix("x-ymera-timestamp: "))
            .unwrap()
            .parse()
            .unwrap();
        let want = format!(
            "x-ymera-signature: {}",
            signature(&Secret::new("key"), ts, b"{}")
        );
        assert!(req.contains(&want), "{req}");
        assert!(req.ends_with("\r\n\r\n{}"), "{req}");

        let (addr, got) = server("302 Found", Duration::ZERO).await;
        let e = post(
            &client,
            &hook(&addr, Duration::from_secs(5), None),
            b"{}".to_vec(),
        )
        .await
        .unwrap_err();
        assert!(e.contains("302") && !e.contains("s3cr3t"), "{e}");
        assert_eq!(got.lock().unwrap().len(), 1, "the redirect is not followed");
    }

    #[tokio::test]
    async fn a_black_holed_webhook_never_holds_the_caller() {
        // accepts, reads, and answers only after a minute
        let (addr, got) = server("200 OK", Duration::from_secs(60)).await;
        let h = hook(&addr, Duration::from_millis(300), None);
        let mut n = Notifier::start("unit", None).unwrap();
        let started = Instant::now();
        for i in 0..QUEUE + 10 {
            match n.offer(job(&format!("a{i}"), &h)) {
                Ok(()) => {}
                Err(r) => {
                    assert_eq!(r, Refused::Full);
                    assert!(i >= QUEUE, "refused at {i}");
                }
            }
        }
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "offering {} alerts took {:?}",
            QUEUE + 10,
            started.elapsed()
        );
        // the first ones fail at their timeout, in parallel, and come back as failures
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut back = Vec::new();
        while back.len() < CONCURRENT && tokio::time::Instant::now() < deadline {
            back.extend(n.outcomes());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(back.len() >= CONCURRENT, "{back:?}");
        assert!(back.iter().all(|o| !o.ok), "{back:?}");
        assert!(!got.lock().unwrap().is_empty());
        n.close(tokio::time::Instant::now() + Duration::from_millis(100))
            .await;
    }
}
