//! Alerts of anomaly stages: sent to their topic and webhook once the segment that opened
//! them is committed, and remembered so that none is sent twice.

use std::time::Duration;

use tracing::{info, warn};
use ymera_ingest::kafka::TopicPartition;

use super::Runner;
use crate::chain::ChainState;
use crate::checkpoint::{self, Notice};

/// One partition's anomaly state in memory, with its alerts to notify.
#[derive(Debug, Default)]
pub(super) struct TpState {
    pub(super) chain: ChainState,
    /// Alerts opened in the open segment (notified once it commits).
    pub(super) fresh: Vec<Notice>,
    /// Alerts whose commit succeeded, not yet notified.
    pub(super) pending: Vec<Notice>,
    /// Ids already notified (the newest `checkpoint::NOTIFIED`).
    pub(super) notified: std::collections::VecDeque<String>,
}

impl Runner {
    /// Sends the partition's committed, not yet notified alerts to their stage's topic and
    /// webhook. A failed notice stays pending and is tried again after the next commit.
    pub(super) async fn notify_pending(&mut self, tp: &TopicPartition) {
        let name = self.name().to_string();
        let Some(st) = self.parts.get_mut(tp).map(|p| &mut p.anomaly) else {
            return;
        };
        if st.pending.is_empty() {
            return;
        }
        let mut keep = Vec::new();
        for n in std::mem::take(&mut st.pending) {
            if st.notified.contains(&n.alert_id) {
                continue;
            }
            let Some(stage) = self
                .chain
                .anomaly_stages()
                .find(|a| a.config.name == n.stage)
            else {
                continue;
            };
            let body = n.body();
            let mut ok = true;
            if let (Some(topic), Some(producer)) = (&stage.notify.topic, &self.alert_producer) {
                let sent = tokio::time::timeout(
                    Duration::from_secs(30),
                    producer.send(topic, Some(n.key.as_bytes()), Some(&body), &[]),
                )
                .await;
                if !matches!(sent, Ok(Ok(_))) {
                    let error = match sent {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    warn!(
                        pipeline = name,
                        alert_topic = topic,
                        alert_id = n.alert_id,
                        error,
                        "cannot send an alert to its topic; retrying after the next commit"
                    );
                    ok = false;
                }
            }
            if let (true, Some((url, timeout))) = (ok, &stage.notify.webhook)
                && let Err(error) = crate::notify::post(url, &body, *timeout).await
            {
                warn!(
                    pipeline = name,
                    alert_id = n.alert_id,
                    error,
                    "cannot post an alert to its webhook; retrying after the next commit"
                );
                ok = false;
            }
            if ok {
                if !stage.notify.is_empty() {
                    info!(
                        pipeline = name,
                        stage = n.stage,
                        alert_id = n.alert_id,
                        key = n.key,
                        "alert notified"
                    );
                }
                st.notified.push_back(n.alert_id.clone());
                while st.notified.len() > checkpoint::NOTIFIED {
                    st.notified.pop_front();
                }
            } else {
                keep.push(n);
            }
        }
        st.pending = keep;
    }
}
