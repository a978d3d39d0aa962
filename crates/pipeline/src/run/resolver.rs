//! Where an assigned partition resumes: the position each sink group recorded, and the
//! anomaly-state checkpoint at or before it.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};
use ymera_ingest::kafka::{Resolver, TopicPartition};
use ymera_lake::{Lake, delta};
use ymera_warehouse::Warehouse;

use crate::checkpoint::{self, Checkpoint};

/// The next offset each group of sinks has durably recorded for a partition: one entry
/// per lake table (in [`crate::validate::Pipeline::tables`] order: sinks, then the DLQ
/// table), then the warehouse's when the pipeline has warehouse sinks. `None`: the group
/// holds nothing of the partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Held(pub(super) Vec<Option<i64>>);

impl Held {
    /// Where the source resumes the partition: the lowest position over the groups. A
    /// group with nothing of the partition needs it from `start`: with `earliest` that is
    /// the beginning of the log (`None`), otherwise it joins at the lowest position another
    /// group holds (so that group loses nothing).
    pub(super) fn resume_at(&self, from_earliest: bool) -> Option<i64> {
        let missing = self.0.iter().any(Option::is_none);
        if missing && from_earliest {
            None
        } else {
            self.0.iter().flatten().copied().min()
        }
    }

    /// What Kafka may be told for the partition: the lowest position over the groups,
    /// `None` while one of them holds nothing of it.
    pub(super) fn low_water(&self) -> Option<i64> {
        if self.0.iter().any(Option::is_none) {
            return None;
        }
        self.0.iter().flatten().copied().min()
    }

    /// What group `g` holds.
    pub(super) fn at(&self, g: usize) -> Option<i64> {
        self.0.get(g).copied().flatten()
    }

    /// Records that group `g` now holds everything before `next`.
    pub(super) fn set(&mut self, g: usize, next: i64) {
        if self.0.len() <= g {
            self.0.resize(g + 1, None);
        }
        self.0[g] = Some(next);
    }
}

pub(super) type HeldMap = Arc<std::sync::Mutex<HashMap<TopicPartition, Held>>>;

/// Why the last resolution failed (`None` once one succeeds): readiness says it while the
/// assignment waits.
pub(super) type Trouble = Arc<std::sync::Mutex<Option<String>>>;

/// The anomaly-state checkpoint the resolver chose per assigned partition (`None`: start
/// from fresh detectors).
/// The checkpoints each assignment's resolution chose, per partition, in the order of the
/// assignments: the runner takes the front one when it handles that assignment, so
/// assignments queued behind each other never take (or drop) each other's state.
pub(super) type CheckpointMap =
    Arc<std::sync::Mutex<HashMap<TopicPartition, std::collections::VecDeque<Option<Checkpoint>>>>>;

/// Resolves where each assigned partition resumes: each sink group's recorded position,
/// and the source starts at the lowest (interfaces.md).
pub(super) struct SinkResolver {
    pub(super) lake: Lake,
    pub(super) warehouse: Option<Warehouse>,
    pub(super) pipeline: String,
    /// Lake tables of the pipeline (DLQ included); empty when it writes none.
    pub(super) tables: Vec<String>,
    pub(super) held: HeldMap,
    /// `start: earliest`: a group with no position may start from the log's beginning.
    pub(super) from_earliest: bool,
    pub(super) handle: tokio::runtime::Handle,
    /// The pipeline has anomaly stages: their checkpoints move the start back.
    pub(super) stateful: bool,
    pub(super) checkpoints: CheckpointMap,
    pub(super) trouble: Trouble,
}

impl Resolver for SinkResolver {
    fn resolve(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<i64>>, String> {
        let result = self.resolve_now(partitions);
        if result.is_err() {
            metrics::counter!("ymera_component_errors_total", "pipeline" => self.pipeline.clone(), "stage" => "source", "error_type" => "resolve").increment(1);
        }
        if let Ok(mut t) = self.trouble.lock() {
            *t = result.as_ref().err().cloned();
        }
        result
    }
}

impl SinkResolver {
    fn resolve_now(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<i64>>, String> {
        self.handle.block_on(async {
            // one snapshot read per table: every assigned partition's txn at once
            let ids: Vec<String> = partitions
                .iter()
                .map(|tp| delta::app_id(&self.pipeline, &tp.0, tp.1))
                .collect();
            let mut per_table = Vec::with_capacity(self.tables.len());
            for table in &self.tables {
                per_table.push(
                    delta::positions(&self.lake, table, &ids)
                        .await
                        .map_err(|e| format!("lake unreadable: {e}"))?,
                );
            }
            let wh_positions = match &self.warehouse {
                Some(wh) => Some(
                    wh.read_positions(&self.pipeline)
                        .await
                        .map_err(|e| format!("warehouse unreadable: {e}"))?,
                ),
                None => None,
            };
            let starts: HashMap<TopicPartition, Option<i64>> = {
                let mut held = self
                    .held
                    .lock()
                    .map_err(|_| "internal: poisoned lock".to_string())?;
                partitions
                    .iter()
                    .zip(&ids)
                    .map(|(tp, id)| {
                        let mut h = Held(
                            per_table
                                .iter()
                                .map(|t| t.get(id).map(|last| last + 1))
                                .collect(),
                        );
                        if let Some(wh) = &wh_positions {
                            h.0.push(wh.get(tp).copied());
                        }
                        let start = h.resume_at(self.from_earliest);
                        held.insert(tp.clone(), h);
                        (tp.clone(), start)
                    })
                    .collect()
            };
            if !self.stateful {
                return Ok(starts);
            }
            // Anomaly state: the newest checkpoint at or before where the sinks resume; the
            // source starts there and the records up to the sinks' position only feed the
            // stages (`process`, warm mode).
            let mut out = HashMap::new();
            let mut chosen = HashMap::new();
            for (tp, start) in starts {
                let c = checkpoint::load(&self.lake, &self.pipeline, &tp, start)
                    .await
                    .map_err(|e| format!("anomaly state of {}/{}: {e}", tp.0, tp.1))?;
                let resume = match (&c, start) {
                    (Some(c), _) => {
                        info!(pipeline = self.pipeline, topic = tp.0, partition = tp.1, checkpoint = c.next_offset, sinks_at = ?start, "anomaly state restored");
                        Some(c.next_offset)
                    }
                    (None, Some(n)) => {
                        warn!(pipeline = self.pipeline, topic = tp.0, partition = tp.1, sinks_at = n, "no anomaly-state checkpoint at or before the sinks' position: starting fresh detectors (they warm up again)");
                        Some(n)
                    }
                    (None, None) => None,
                };
                chosen.insert(tp.clone(), c);
                out.insert(tp, resume);
            }
            let mut queued = self
                .checkpoints
                .lock()
                .map_err(|_| "internal: poisoned lock".to_string())?;
            for (tp, c) in chosen {
                queued.entry(tp).or_default().push_back(c);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Held;

    fn held(groups: &[Option<i64>]) -> Held {
        Held(groups.to_vec())
    }

    #[test]
    fn the_source_resumes_at_the_lowest_position_over_the_sink_groups() {
        assert_eq!(held(&[Some(40), Some(25)]).resume_at(false), Some(25));
        assert_eq!(held(&[Some(40), Some(25)]).resume_at(true), Some(25));
        // three lake tables, one behind the others after a crash between their commits
        assert_eq!(
            held(&[Some(40), Some(31), Some(40)]).resume_at(true),
            Some(31)
        );
        assert_eq!(held(&[Some(40)]).resume_at(true), Some(40));
    }

    #[test]
    fn a_group_with_nothing_reads_from_the_beginning_only_with_start_earliest() {
        // one group holds nothing yet: with `earliest` it needs the whole log
        assert_eq!(held(&[Some(40), None]).resume_at(true), None);
        // otherwise it joins where the others are, and they lose nothing
        assert_eq!(held(&[Some(40), None]).resume_at(false), Some(40));
        // nothing anywhere: `start` decides
        assert_eq!(held(&[None, None]).resume_at(false), None);
        assert_eq!(held(&[None]).resume_at(true), None);
    }

    #[test]
    fn kafka_is_told_the_lowest_position_only_once_every_group_holds_one() {
        assert_eq!(held(&[Some(40), Some(25)]).low_water(), Some(25));
        assert_eq!(held(&[Some(40), None]).low_water(), None);
        assert_eq!(held(&[Some(40)]).low_water(), Some(40));
        assert_eq!(held(&[]).low_water(), None);
        let mut h = held(&[None, Some(3)]);
        h.set(0, 7);
        assert_eq!(h.low_water(), Some(3));
        h.set(2, 1);
        assert_eq!(h, held(&[Some(7), Some(3), Some(1)]));
    }
}
