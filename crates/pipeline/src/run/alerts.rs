//! Alerts of anomaly stages: handed to the notifier ([`crate::notify`]) once the segment
//! that opened them is committed, and remembered once delivered so that none is sent twice.
//! The publish path never waits for a delivery.

use std::collections::HashSet;
use std::time::Duration;

use tracing::{info, warn};
use ymera_ingest::kafka::TopicPartition;

use super::{RunError, Runner};
use crate::chain::ChainState;
use crate::checkpoint::{self, Notice};
use crate::notify::{Job, Outcome, Refused, TOPIC_TIMEOUT};

/// The longest a clean stop waits for alert deliveries (within Kubernetes' default 30 s
/// grace period, which the final offset commit needs too); those still queued stay
/// pending in the checkpoint and are delivered after the restart.
const MAX_SETTLE: Duration = Duration::from_secs(20);

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
    /// Ids of pending alerts with the notifier, their outcome not back yet.
    pub(super) in_flight: HashSet<String>,
    /// The offset of the last checkpoint this runner saved, and whether an alert was
    /// notified since.
    pub(super) saved_at: Option<i64>,
    pub(super) notified_since_save: bool,
    /// Which assignment of the partition this state belongs to: outcomes of jobs an
    /// earlier one offered are not this state's.
    pub(super) generation: u64,
}

impl Runner {
    /// Hands the partition's committed, not yet notified alerts to the notifier, without
    /// waiting. One the queue cannot take stays pending and is offered again after the
    /// next commit.
    pub(super) fn notify_pending(&mut self, tp: &TopicPartition) {
        let name = self.name().to_string();
        let (Some(notifier), Some(st)) = (
            self.notifier.as_mut(),
            self.parts.get_mut(tp).map(|p| &mut p.anomaly),
        ) else {
            return;
        };
        let chain = &self.chain;
        // alerts of a stage that is no longer in the pipeline, or already notified, go
        st.pending.retain(|n| {
            !st.notified.contains(&n.alert_id)
                && chain.anomaly_stages().any(|a| a.config.name == n.stage)
        });
        for n in &st.pending {
            if st.in_flight.contains(&n.alert_id) {
                continue;
            }
            let Some(stage) = chain.anomaly_stages().find(|a| a.config.name == n.stage) else {
                continue;
            };
            let job = Job {
                tp: tp.clone(),
                tag: st.generation,
                alert_id: n.alert_id.clone(),
                key: n.key.clone(),
                body: n.body(),
                topic: stage.notify.topic.clone(),
                webhook: stage.notify.webhook.clone(),
            };
            match notifier.offer(job) {
                Ok(()) => {
                    st.in_flight.insert(n.alert_id.clone());
                }
                Err(why) => {
                    if why == Refused::Full {
                        metrics::counter!("ymera_alert_queue_full_total", "pipeline" => name.clone())
                            .increment(1);
                    }
                    warn!(
                        pipeline = name,
                        alert_id = n.alert_id,
                        "the alert delivery queue is {}; the alert stays pending until the next commit",
                        if why == Refused::Full {
                            "full"
                        } else {
                            "closed"
                        }
                    );
                    break;
                }
            }
        }
    }

    /// Takes the delivery outcomes that came back, without waiting.
    pub(super) fn take_outcomes(&mut self) {
        let outcomes = match self.notifier.as_mut() {
            Some(n) => n.outcomes(),
            None => return,
        };
        self.apply_outcomes(outcomes);
    }

    /// Marks delivered alerts notified; a failed one stays pending (offered again after the
    /// next commit). Outcomes of a partition no longer assigned are dropped: its next
    /// owner notifies from its checkpoint.
    fn apply_outcomes(&mut self, outcomes: Vec<Outcome>) {
        let name = self.name().to_string();
        for o in outcomes {
            let Some(st) = self
                .parts
                .get_mut(&o.tp)
                .map(|p| &mut p.anomaly)
                .filter(|st| st.generation == o.tag)
            else {
                continue;
            };
            st.in_flight.remove(&o.alert_id);
            if !o.ok {
                continue;
            }
            if let Some(i) = st.pending.iter().position(|n| n.alert_id == o.alert_id) {
                let n = st.pending.remove(i);
                info!(
                    pipeline = name,
                    stage = n.stage,
                    alert_id = n.alert_id,
                    key = n.key,
                    "alert notified"
                );
            }
            st.notified.push_back(o.alert_id);
            while st.notified.len() > checkpoint::NOTIFIED {
                st.notified.pop_front();
            }
            st.notified_since_save = true;
        }
    }

    /// How long one round of deliveries may take: the slowest target's timeout.
    fn settle_time(&self) -> Duration {
        let mut t = Duration::ZERO;
        for a in self.chain.anomaly_stages() {
            if a.notify.topic.is_some() {
                t = t.max(TOPIC_TIMEOUT);
            }
            if let Some(h) = &a.notify.webhook {
                t = t.max(h.timeout);
            }
        }
        t
    }

    /// At a clean stop (everything published): offers every pending alert, waits for the
    /// deliveries (up to the slowest target's timeout), stops the notifier, and records
    /// what was notified in each partition's last checkpoint, so that a restart does not
    /// notify it again.
    pub(super) async fn settle_alerts(&mut self) -> Result<(), RunError> {
        if self.notifier.is_none() {
            return Ok(());
        }
        let tps: Vec<TopicPartition> = self.parts.keys().cloned().collect();
        for tp in &tps {
            self.notify_pending(tp);
        }
        // every queued delivery, each round of them taking up to the slowest target's
        // timeout, but never more than MAX_SETTLE
        let rounds = self
            .notifier
            .as_ref()
            .map_or(0, |n| n.in_flight().div_ceil(crate::notify::CONCURRENT))
            as u32;
        let wait = (self.settle_time() * rounds + Duration::from_secs(1)).min(MAX_SETTLE);
        let deadline = tokio::time::Instant::now() + wait;
        if let Some(n) = self.notifier.as_mut() {
            let outcomes = n.settle(deadline).await;
            n.close(deadline).await;
            self.apply_outcomes(outcomes);
        }
        self.notifier = None;
        for tp in &tps {
            self.record_notified(tp).await?;
        }
        Ok(())
    }

    /// Rewrites the partition's last checkpoint with the alerts notified since it was
    /// saved (its state unchanged: the checkpoint is read back as written), while this
    /// consumer still owns the partition (a new owner may be reading its checkpoints).
    async fn record_notified(&mut self, tp: &TopicPartition) -> Result<(), RunError> {
        let name = self.name().to_string();
        let fence = self.source.fence();
        let Some(_owned) = fence.hold_owned(tp).await else {
            return Ok(());
        };
        let Some(st) = self.parts.get_mut(tp).map(|p| &mut p.anomaly) else {
            return Ok(());
        };
        let (Some(at), true) = (st.saved_at, st.notified_since_save) else {
            return Ok(());
        };
        let lake_error = |source| RunError::Lake {
            pipeline: name.clone(),
            source,
        };
        let Some(mut c) = checkpoint::read_at(&self.opts.lake, &name, tp, at)
            .await
            .map_err(lake_error)?
        else {
            return Ok(());
        };
        c.pending.retain(|n| !st.notified.contains(&n.alert_id));
        c.notified = st.notified.clone();
        checkpoint::replace(&self.opts.lake, &name, &c)
            .await
            .map_err(lake_error)?;
        st.notified_since_save = false;
        Ok(())
    }
}
