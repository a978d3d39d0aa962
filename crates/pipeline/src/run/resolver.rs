//! Where an assigned partition resumes: the position each sink group recorded, and the
//! anomaly-state checkpoint at or before it.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{info, warn};
use ymera_ingest::kafka::{Resolver, TopicPartition};
use ymera_lake::{Lake, ledger};
use ymera_warehouse::Warehouse;

use crate::checkpoint::{self, Checkpoint};

/// The next offset each group of sinks has durably recorded for a partition (`None`: the
/// group has nothing of it; the group is absent when the pipeline has no such sinks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) lake: Option<i64>,
    pub(super) warehouse: Option<i64>,
}

impl Held {
    /// Where the source resumes the partition, given which sink groups the pipeline has:
    /// the lowest position over them. A group with nothing of the partition needs it from
    /// `start`: with `earliest` that is the beginning of the log (`None`), otherwise it
    /// joins at the lowest position another group holds (so that group loses nothing).
    pub(super) fn resume_at(self, lake: bool, warehouse: bool, from_earliest: bool) -> Option<i64> {
        let mut known = Vec::new();
        let mut missing = false;
        for (present, pos) in [(lake, self.lake), (warehouse, self.warehouse)] {
            match (present, pos) {
                (true, Some(p)) => known.push(p),
                (true, None) => missing = true,
                (false, _) => {}
            }
        }
        if missing && from_earliest {
            None
        } else {
            known.into_iter().min()
        }
    }

    /// What Kafka may be told for the partition: the lowest position over the sink groups
    /// the pipeline has, `None` while one of them holds nothing of it.
    pub(super) fn low_water(self, lake: bool, warehouse: bool) -> Option<i64> {
        let mut low = Some(i64::MAX);
        if lake {
            low = low.zip(self.lake).map(|(a, b)| a.min(b));
        }
        if warehouse {
            low = low.zip(self.warehouse).map(|(a, b)| a.min(b));
        }
        low.filter(|l| *l != i64::MAX)
    }
}

pub(super) type HeldMap = Arc<std::sync::Mutex<HashMap<TopicPartition, Held>>>;

/// The anomaly-state checkpoint the resolver chose per assigned partition (`None`: start
/// from fresh detectors).
pub(super) type CheckpointMap = Arc<std::sync::Mutex<HashMap<TopicPartition, Option<Checkpoint>>>>;

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
}

impl Resolver for SinkResolver {
    fn resolve(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<HashMap<TopicPartition, Option<i64>>, String> {
        self.handle.block_on(async {
            let lake_positions = if self.tables.is_empty() {
                HashMap::new()
            } else {
                let positions = ledger::read_positions(&self.lake, &self.pipeline)
                    .await
                    .map_err(|e| e.to_string())?;
                let owned = |tp: &TopicPartition| partitions.contains(tp);
                ledger::remove_uncommitted(
                    &self.lake,
                    &self.pipeline,
                    &self.tables,
                    &positions,
                    &owned,
                )
                .await
                .map_err(|e| e.to_string())?;
                positions
            };
            let wh_positions = match &self.warehouse {
                Some(wh) => wh
                    .read_positions(&self.pipeline)
                    .await
                    .map_err(|e| e.to_string())?,
                None => HashMap::new(),
            };
            let starts: HashMap<TopicPartition, Option<i64>> = {
            let mut held = self
                .held
                .lock()
                .map_err(|_| "internal: poisoned lock".to_string())?;
            partitions
                .iter()
                .map(|tp| {
                    let h = Held {
                        lake: lake_positions.get(tp).copied(),
                        warehouse: wh_positions.get(tp).copied(),
                    };
                    held.insert(tp.clone(), h);
                    let start = h.resume_at(
                        !self.tables.is_empty(),
                        self.warehouse.is_some(),
                        self.from_earliest,
                    );
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
            self.checkpoints
                .lock()
                .map_err(|_| "internal: poisoned lock".to_string())?
                .extend(chosen);
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Held;

    fn held(lake: Option<i64>, warehouse: Option<i64>) -> Held {
        Held { lake, warehouse }
    }

    #[test]
    fn the_source_resumes_at_the_lowest_position_over_the_sink_groups() {
        assert_eq!(
            held(Some(40), Some(25)).resume_at(true, true, false),
            Some(25)
        );
        assert_eq!(
            held(Some(40), Some(25)).resume_at(true, true, true),
            Some(25)
        );
        // a group the pipeline does not have does not count
        assert_eq!(
            held(Some(40), Some(25)).resume_at(true, false, true),
            Some(40)
        );
        assert_eq!(held(None, Some(25)).resume_at(false, true, true), Some(25));
    }

    #[test]
    fn a_group_with_nothing_reads_from_the_beginning_only_with_start_earliest() {
        // the warehouse holds nothing yet: with `earliest` it needs the whole log
        assert_eq!(held(Some(40), None).resume_at(true, true, true), None);
        // otherwise it joins where the lake is, and the lake loses nothing
        assert_eq!(held(Some(40), None).resume_at(true, true, false), Some(40));
        // nothing anywhere: `start` decides
        assert_eq!(held(None, None).resume_at(true, true, false), None);
        assert_eq!(held(None, None).resume_at(true, false, true), None);
    }

    #[test]
    fn kafka_is_told_the_lowest_position_only_once_every_group_holds_one() {
        assert_eq!(held(Some(40), Some(25)).low_water(true, true), Some(25));
        assert_eq!(held(Some(40), None).low_water(true, true), None);
        assert_eq!(held(Some(40), None).low_water(true, false), Some(40));
        assert_eq!(held(None, Some(7)).low_water(false, true), Some(7));
        assert_eq!(held(None, None).low_water(false, false), None);
    }
}
