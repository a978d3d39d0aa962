//! The lake's commit log: one small JSON record per published segment of a pipeline,
//! written only after every file of that segment (in every table) is durable.
//!
//! A segment may produce several files (one per partition directory per table, dead-letter
//! rows included), so no single data file can say that a segment is complete; the commit
//! record can. On start a pipeline resumes each Kafka partition after its last commit
//! record, and removes the files of segments that have none (left by a crash between the
//! first file and the record) before it writes anything, so a replay with different batch
//! boundaries cannot overlap them.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::{LakeError, Result};
use crate::layout::SegmentId;
use crate::store::Lake;

/// A Kafka topic and partition.
pub type TopicPartition = (String, i32);

/// Per partition, the next offset after the last committed segment.
pub type Positions = HashMap<TopicPartition, i64>;

/// One file of a committed segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedFile {
    pub path: String,
    pub rows: u64,
}

/// The record that makes a segment committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    pub pipeline: String,
    pub topic: String,
    pub partition: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    pub files: Vec<CommittedFile>,
    pub committed_at: String,
}

fn log_dir(pipeline: &str) -> String {
    format!("_ymera/commits/{pipeline}")
}

/// Reads the commit log of `pipeline`: the next offset of every partition it has committed.
/// Overlapping records are refused (they can only come from tampering); gaps are logged.
pub async fn read_positions(lake: &Lake, pipeline: &str) -> Result<Positions> {
    let mut segments: BTreeMap<TopicPartition, Vec<SegmentId>> = BTreeMap::new();
    for path in lake.list(&log_dir(pipeline)).await? {
        let name = path.rsplit('/').next().unwrap_or(&path);
        match SegmentId::parse(name) {
            Some(seg) => segments
                .entry((seg.topic.clone(), seg.partition))
                .or_default()
                .push(seg),
            None => warn!(path, "ignoring an unrecognised object in the commit log"),
        }
    }
    let mut positions = Positions::new();
    for (tp, mut segs) in segments {
        segs.sort();
        for pair in segs.windows(2) {
            if pair[1].first <= pair[0].last {
                return Err(LakeError::Invalid(format!(
                    "commit log of pipeline `{pipeline}` has overlapping segments for {}/{}: {} and {}",
                    tp.0, tp.1, pair[0], pair[1]
                )));
            }
            if pair[1].first != pair[0].last + 1 {
                warn!(pipeline, topic = tp.0, partition = tp.1, before = %pair[0], after = %pair[1], "gap in the commit log");
            }
        }
        if let Some(last) = segs.last() {
            positions.insert(tp, last.last + 1);
        }
    }
    Ok(positions)
}

/// Publishes every file of a segment, then its commit record. Files that already exist
/// (an earlier run published the same range before dying) are left as they are.
pub async fn publish_segment(
    lake: &Lake,
    pipeline: &str,
    segment: &SegmentId,
    files: Vec<(String, Bytes, u64)>,
) -> Result<CommitRecord> {
    let mut committed = Vec::with_capacity(files.len());
    for (path, bytes, rows) in files {
        lake.publish(&path, bytes).await?;
        committed.push(CommittedFile { path, rows });
    }
    let record = CommitRecord {
        pipeline: pipeline.to_string(),
        topic: segment.topic.clone(),
        partition: segment.partition,
        first_offset: segment.first,
        last_offset: segment.last,
        files: committed,
        committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    };
    let body = serde_json::to_vec_pretty(&record)
        .map_err(|e| LakeError::Internal(format!("cannot encode commit record: {e}")))?;
    let path = format!("{}/{}.json", log_dir(pipeline), segment.name());
    lake.publish(&path, Bytes::from(body)).await?;
    Ok(record)
}

/// Removes the files of `tables` that belong to partitions selected by `owned` and lie at or
/// after that partition's committed position: leftovers of a segment whose publication
/// was cut short. Returns the removed paths.
///
/// A partition with no commit record but files from more than one segment means the commit
/// log was lost; that is refused rather than deleting the table.
pub async fn remove_uncommitted(
    lake: &Lake,
    pipeline: &str,
    tables: &[String],
    positions: &Positions,
    owned: &dyn Fn(&TopicPartition) -> bool,
) -> Result<Vec<String>> {
    let mut doomed: BTreeMap<TopicPartition, Vec<(SegmentId, String)>> = BTreeMap::new();
    for table in tables {
        for path in lake.list(table).await? {
            let name = path.rsplit('/').next().unwrap_or(&path);
            let Some(seg) = SegmentId::parse(name) else {
                continue;
            };
            let tp = (seg.topic.clone(), seg.partition);
            if !owned(&tp) {
                continue;
            }
            let next = positions.get(&tp).copied();
            if next.is_none_or(|n| seg.first >= n) {
                doomed.entry(tp).or_default().push((seg, path));
            }
        }
    }
    let mut removed = Vec::new();
    for (tp, files) in doomed {
        if !positions.contains_key(&tp) {
            let mut distinct: Vec<_> = files.iter().map(|(s, _)| s.clone()).collect();
            distinct.sort();
            distinct.dedup();
            if distinct.len() > 1 {
                return Err(LakeError::Invalid(format!(
                    "the lake holds {} segments of {}/{} for pipeline `{pipeline}` but its commit log \
                     (_ymera/commits/{pipeline}/) has none: restore the commit log or move the files away",
                    distinct.len(),
                    tp.0,
                    tp.1
                )));
            }
        }
        for (seg, path) in files {
            info!(path, segment = %seg, "removing a file of an uncommitted segment");
            lake.delete(&path).await?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// All committed records of a pipeline (for inspection and tests), sorted.
pub async fn read_records(lake: &Lake, pipeline: &str) -> Result<Vec<CommitRecord>> {
    let mut out = Vec::new();
    let mut paths = lake.list(&log_dir(pipeline)).await?;
    paths.sort();
    for path in paths {
        let bytes = lake.get(&path).await?;
        let rec: CommitRecord = serde_json::from_slice(&bytes)
            .map_err(|e| LakeError::Invalid(format!("commit record `{path}` is not valid: {e}")))?;
        out.push(rec);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: i64, last: i64) -> SegmentId {
        SegmentId {
            topic: "t".into(),
            partition: 0,
            first,
            last,
        }
    }

    #[tokio::test]
    async fn positions_follow_commit_records_and_uncommitted_files_go() {
        let tmp = tempfile::tempdir().unwrap();
        let lake = Lake::open(tmp.path().to_str().unwrap()).unwrap();
        let f = |s: &SegmentId, dt: &str| {
            (
                format!("tbl/dt={dt}/{}", s.file_name()),
                Bytes::from_static(b"x"),
                1,
            )
        };
        publish_segment(&lake, "p", &seg(0, 9), vec![f(&seg(0, 9), "2026-01-01")])
            .await
            .unwrap();
        publish_segment(
            &lake,
            "p",
            &seg(10, 19),
            vec![f(&seg(10, 19), "2026-01-01"), f(&seg(10, 19), "2026-01-02")],
        )
        .await
        .unwrap();
        // a crash after the first file of the next segment, before its record
        lake.publish(&f(&seg(20, 29), "2026-01-02").0, Bytes::from_static(b"x"))
            .await
            .unwrap();
        let pos = read_positions(&lake, "p").await.unwrap();
        assert_eq!(pos.get(&("t".to_string(), 0)), Some(&20));
        let removed = remove_uncommitted(&lake, "p", &["tbl".into()], &pos, &|_| true)
            .await
            .unwrap();
        assert_eq!(
            removed,
            vec![format!("tbl/dt=2026-01-02/{}", seg(20, 29).file_name())]
        );
        assert_eq!(lake.list("tbl").await.unwrap().len(), 3);
        assert_eq!(read_records(&lake, "p").await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn lost_commit_log_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let lake = Lake::open(tmp.path().to_str().unwrap()).unwrap();
        for s in [seg(0, 9), seg(10, 19)] {
            lake.publish(&format!("tbl/{}", s.file_name()), Bytes::from_static(b"x"))
                .await
                .unwrap();
        }
        let err = remove_uncommitted(&lake, "p", &["tbl".into()], &Positions::new(), &|_| true)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("commit log"), "{err}");
    }
}
