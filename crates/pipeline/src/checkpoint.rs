//! Checkpoints of the anomaly stages' state, one object per Kafka partition and position:
//! `_state/<pipeline>/<topic>+<partition>+<next_offset:020>.json`, written create-only
//! once the sinks committed the segment that ends at `next_offset - 1`, and only by the
//! writer whose commits did it: one that found the offsets already held (an earlier attempt,
//! or a zombie that lost the race to the partition's new owner) writes none, so the state at
//! a position is always that of the writer whose rows the lake holds there. On assignment
//! the newest checkpoint at or before the position the sinks resume from is loaded and the
//! source starts at its offset; records between it and the sinks' position go through the
//! stages again without being written (see `run::resolver`), which also finds again the
//! alerts not yet notified. Later checkpoints (of an older release, which wrote them before
//! committing) are deleted. The newest [`KEEP`] per partition are kept.

use std::collections::VecDeque;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use ymera_ingest::kafka::TopicPartition;
use ymera_lake::{Lake, LakeError};

use crate::chain::ChainState;

/// Checkpoints kept per partition.
pub const KEEP: usize = 3;
/// Notified alert ids remembered per partition.
pub const NOTIFIED: usize = 1000;

/// An opened alert to notify (topic, webhook) once the commit holding it succeeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notice {
    pub pipeline: String,
    pub stage: String,
    pub alert_id: String,
    pub key: String,
    /// Event time (µs) it opened at.
    pub opened_at: i64,
    pub peak_score: f64,
}

impl Notice {
    /// The JSON body sent to the topic and the webhook.
    pub fn body(&self) -> Vec<u8> {
        let opened = chrono::DateTime::from_timestamp_micros(self.opened_at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .unwrap_or_default();
        serde_json::json!({
            "alert_id": self.alert_id,
            "pipeline": self.pipeline,
            "stage": self.stage,
            "key": self.key,
            "opened_at": opened,
            "peak_score": self.peak_score,
        })
        .to_string()
        .into_bytes()
    }
}

/// One partition's stage state at a position.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub topic: String,
    pub partition: i32,
    /// The state is that after every record before this offset.
    pub next_offset: i64,
    pub chain: ChainState,
    /// Opened alerts whose commit succeeded, not yet known to be notified.
    pub pending: Vec<Notice>,
    /// Ids of the alerts notified (the newest [`NOTIFIED`]).
    pub notified: VecDeque<String>,
}

/// The lake prefix of a pipeline's checkpoints.
pub fn state_dir(pipeline: &str) -> String {
    format!("_state/{pipeline}")
}

fn object(pipeline: &str, tp: &TopicPartition, next: i64) -> String {
    format!("{}/{}+{}+{next:020}.json", state_dir(pipeline), tp.0, tp.1)
}

/// (topic, partition, next_offset) of a checkpoint object's path.
fn parse(path: &str) -> Option<(TopicPartition, i64)> {
    let name = path.rsplit('/').next()?.strip_suffix(".json")?;
    let mut parts = name.rsplitn(3, '+');
    let next = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let topic = parts.next()?.to_string();
    Some(((topic, partition), next))
}

/// The partition's checkpoints, oldest first.
async fn list(lake: &Lake, pipeline: &str, tp: &TopicPartition) -> Result<Vec<i64>, LakeError> {
    let mut found: Vec<i64> = lake
        .list(&state_dir(pipeline))
        .await?
        .iter()
        .filter_map(|p| parse(p))
        .filter(|(t, _)| t == tp)
        .map(|(_, n)| n)
        .collect();
    found.sort_unstable();
    Ok(found)
}

/// The newest readable checkpoint of `tp` at or before `at_most`, after deleting those
/// past it (written for commits that did not happen).
pub async fn load(
    lake: &Lake,
    pipeline: &str,
    tp: &TopicPartition,
    at_most: Option<i64>,
) -> Result<Option<Checkpoint>, LakeError> {
    let all = list(lake, pipeline, tp).await?;
    for &n in all.iter().filter(|n| at_most.is_none_or(|m| **n > m)) {
        lake.delete(&object(pipeline, tp, n)).await?;
    }
    let Some(at_most) = at_most else {
        return Ok(None);
    };
    for &n in all.iter().rev().filter(|n| **n <= at_most) {
        let path = object(pipeline, tp, n);
        let bytes = lake.get(&path).await?;
        match serde_json::from_slice::<Checkpoint>(&bytes) {
            Ok(c) => return Ok(Some(c)),
            Err(e) => tracing::warn!(
                pipeline,
                object = path,
                error = %e,
                "unreadable anomaly-state checkpoint; trying an older one"
            ),
        }
    }
    Ok(None)
}

/// The checkpoint of `tp` at exactly `next`, if there is one (nothing is deleted).
pub async fn read_at(
    lake: &Lake,
    pipeline: &str,
    tp: &TopicPartition,
    next: i64,
) -> Result<Option<Checkpoint>, LakeError> {
    let path = object(pipeline, tp, next);
    if !list(lake, pipeline, tp).await?.contains(&next) {
        return Ok(None);
    }
    let bytes = lake.get(&path).await?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| LakeError::Internal(format!("{path}: {e}")))
}

/// Replaces the checkpoint at `c.next_offset` with `c` (published files are never
/// overwritten: it is deleted, then written). A crash between the two leaves the older
/// checkpoints, from which a restart runs the records since through the stages again.
pub async fn replace(lake: &Lake, pipeline: &str, c: &Checkpoint) -> Result<(), LakeError> {
    let tp = (c.topic.clone(), c.partition);
    lake.delete(&object(pipeline, &tp, c.next_offset)).await?;
    save(lake, pipeline, c).await
}

/// The offset of the partition's newest checkpoint (`None`: it has none).
pub async fn newest(
    lake: &Lake,
    pipeline: &str,
    tp: &TopicPartition,
) -> Result<Option<i64>, LakeError> {
    Ok(list(lake, pipeline, tp).await?.last().copied())
}

/// Moves the partition's newest checkpoint to `to` (`ymera lake accept-gap`): the same
/// state, resumed at `to`; every other checkpoint of the partition is deleted. Returns the
/// offset it was at (`None`: the partition has no checkpoint).
pub async fn move_to(
    lake: &Lake,
    pipeline: &str,
    tp: &TopicPartition,
    to: i64,
) -> Result<Option<i64>, LakeError> {
    let all = list(lake, pipeline, tp).await?;
    let Some(&newest) = all.last() else {
        return Ok(None);
    };
    let Some(mut c) = read_at(lake, pipeline, tp, newest).await? else {
        return Ok(None);
    };
    // the others first: what is written last must be the only one left (a save trims
    // to the newest few, which a move backwards would not be)
    for n in all.into_iter().filter(|n| *n != newest) {
        lake.delete(&object(pipeline, tp, n)).await?;
    }
    if newest != to {
        c.next_offset = to;
        save(lake, pipeline, &c).await?;
        lake.delete(&object(pipeline, tp, newest)).await?;
    }
    Ok(Some(newest))
}

/// Writes a checkpoint (create-only) and removes all but the newest [`KEEP`] of its
/// partition.
pub async fn save(lake: &Lake, pipeline: &str, c: &Checkpoint) -> Result<(), LakeError> {
    let tp = (c.topic.clone(), c.partition);
    let bytes = serde_json::to_vec(c)
        .map_err(|e| LakeError::Internal(format!("cannot encode a checkpoint: {e}")))?;
    lake.publish(&object(pipeline, &tp, c.next_offset), Bytes::from(bytes))
        .await?;
    let all = list(lake, pipeline, &tp).await?;
    if all.len() > KEEP {
        for &n in &all[..all.len() - KEEP] {
            lake.delete(&object(pipeline, &tp, n)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_parse_back() {
        let tp = ("metric-events".to_string(), 3);
        let path = object("p", &tp, 42);
        assert_eq!(path, "_state/p/metric-events+3+00000000000000000042.json");
        assert_eq!(parse(&path), Some((tp, 42)));
    }

    #[tokio::test]
    async fn load_takes_the_newest_at_or_before_and_drops_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let tp = ("t".to_string(), 0);
        for n in [10, 20, 30, 40, 50] {
            let c = Checkpoint {
                topic: "t".into(),
                partition: 0,
                next_offset: n,
                ..Checkpoint::default()
            };
            save(&lake, "p", &c).await.unwrap();
        }
        assert_eq!(list(&lake, "p", &tp).await.unwrap(), vec![30, 40, 50]);
        let c = load(&lake, "p", &tp, Some(45)).await.unwrap().unwrap();
        assert_eq!(c.next_offset, 40);
        assert_eq!(list(&lake, "p", &tp).await.unwrap(), vec![30, 40]);
        assert!(load(&lake, "p", &tp, Some(5)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_checkpoint_moved_across_a_gap_keeps_its_state_and_is_the_only_one() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path().to_str().unwrap()).unwrap();
        let tp: TopicPartition = ("t".into(), 0);
        for next in [5, 9] {
            let c = Checkpoint {
                topic: "t".into(),
                partition: 0,
                next_offset: next,
                chain: ChainState::default(),
                pending: Vec::new(),
                notified: VecDeque::from([format!("alert-{next}")]),
            };
            save(&lake, "p", &c).await.unwrap();
        }
        assert_eq!(move_to(&lake, "p", &tp, 40).await.unwrap(), Some(9));
        assert_eq!(list(&lake, "p", &tp).await.unwrap(), vec![40]);
        let c = read_at(&lake, "p", &tp, 40).await.unwrap().unwrap();
        assert_eq!(
            (c.next_offset, c.notified),
            (40, VecDeque::from(["alert-9".to_string()]))
        );
        // backwards too (a re-created topic), and a partition without any
        assert_eq!(move_to(&lake, "p", &tp, 0).await.unwrap(), Some(40));
        assert_eq!(list(&lake, "p", &tp).await.unwrap(), vec![0]);
        // below every one of a full set of checkpoints (a re-created topic): it survives
        for next in [50, 60, 70] {
            let c = Checkpoint {
                next_offset: next,
                ..read_at(&lake, "p", &tp, 0).await.unwrap().unwrap()
            };
            save(&lake, "p", &c).await.unwrap();
        }
        assert_eq!(move_to(&lake, "p", &tp, 0).await.unwrap(), Some(70));
        assert_eq!(list(&lake, "p", &tp).await.unwrap(), vec![0]);
        assert_eq!(
            move_to(&lake, "p", &("t".into(), 1), 3).await.unwrap(),
            None
        );
    }
}
