//! Open segments: a partition's rows since its last publication, one part per sink group,
//! and when a segment is due.

use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use tracing::debug;
use ymera_ingest::kafka::{Chunk, Record, TopicPartition};
use ymera_lake::TableWriter;

use super::{Progress, RunError, Runner};

/// One partition's open segment: the rows read since the last publication. Each group of
/// sinks that records its own position (each lake table in its Delta log; the warehouse in
/// its offsets table) has its own part, starting where that group's position is: after a
/// crash between two commits, one part starts later than another until they meet.
pub(super) struct Segment {
    pub(super) epoch: u64,
    pub(super) last: i64,
    pub(super) opened: Instant,
    /// Per lake table (sinks, then the DLQ table): its part, once open.
    pub(super) tables: Vec<Option<TablePart>>,
    pub(super) warehouse: Option<WarehousePart>,
}

/// The rows of one lake table since `first`.
pub(super) struct TablePart {
    pub(super) first: i64,
    pub(super) writer: TableWriter,
}

pub(super) struct WarehousePart {
    pub(super) first: i64,
    /// Per warehouse sink: its batches and where each came from.
    pub(super) batches: Vec<Vec<RecordBatch>>,
    pub(super) origins: Vec<Vec<ymera_warehouse::Origin>>,
    pub(super) rows: u64,
    pub(super) bytes: u64,
}

impl Segment {
    /// Whether group `g` (a lake table, or the warehouse after them) has its part open.
    pub(super) fn is_open(&self, g: usize) -> bool {
        match self.tables.get(g) {
            Some(part) => part.is_some(),
            None => self.warehouse.is_some(),
        }
    }
}

impl Runner {
    /// The partition's open segment.
    pub(super) fn segment(&self, tp: &TopicPartition) -> Option<&Segment> {
        self.parts.get(tp).and_then(|p| p.segment.as_ref())
    }

    pub(super) fn segment_mut(&mut self, tp: &TopicPartition) -> Option<&mut Segment> {
        self.parts.get_mut(tp).and_then(|p| p.segment.as_mut())
    }

    /// The part of lake table `g`, starting at `first`.
    pub(super) fn table_part(
        &self,
        g: usize,
        first: i64,
        seg_name: &str,
    ) -> Result<TablePart, RunError> {
        let meta = vec![
            ("ymera.pipeline".to_string(), self.name().to_string()),
            ("ymera.segment".to_string(), seg_name.to_string()),
        ];
        let spec = self
            .table_spec(g)
            .ok_or_else(|| RunError::Source {
                pipeline: self.name().to_string(),
                message: format!("internal: no lake table for sink group {g}"),
            })?
            .clone();
        let writer = TableWriter::new(spec, meta).map_err(|e| RunError::Lake {
            pipeline: self.name().to_string(),
            source: e,
        })?;
        Ok(TablePart { first, writer })
    }

    pub(super) fn warehouse_part(&self, first: i64) -> WarehousePart {
        let n = self.p.warehouse_sinks.len();
        WarehousePart {
            first,
            batches: vec![Vec::new(); n],
            origins: vec![Vec::new(); n],
            rows: 0,
            bytes: 0,
        }
    }

    pub(super) async fn on_chunk(&mut self, chunk: Chunk) -> Result<(), RunError> {
        let tp: TopicPartition = (chunk.topic.clone(), chunk.partition);
        let name = self.name().to_string();
        // a chunk of a newer assignment replaces whatever the old one left open
        let part = self.parts.entry(tp.clone()).or_default();
        if part
            .segment
            .as_ref()
            .is_some_and(|s| s.epoch != chunk.epoch)
        {
            part.segment = None;
            part.next = None;
        }
        let expected = match &part.segment {
            Some(s) => Some(s.last + 1),
            None => part.next,
        };
        let fresh = past(expected, chunk.records);
        self.stats.skipped_duplicates += fresh.skipped;
        // offsets with no record: a transactional producer's commit markers, aborted
        // records (read_committed), compacted records; normal, so counted, not warned about
        for (e, got) in fresh.gaps {
            metrics::counter!("ymera_source_offsets_without_record_total", "pipeline" => name.clone())
                .increment((got - e).max(0) as u64);
            debug!(
                pipeline = name,
                topic = tp.0,
                partition = tp.1,
                expected = e,
                got,
                "offsets with no record (transaction markers, aborted or compacted records)"
            );
        }
        let records = fresh.kept;
        let received = records.len() as u64;
        if records.is_empty() {
            return Ok(());
        }
        metrics::counter!("ymera_component_received_events_total", "pipeline" => name.clone(), "component" => "source").increment(received);
        self.stats.records_in += received;
        Progress::add(&self.opts.progress.records_in, received);
        let (n_tables, n_groups) = (self.lake_tables(), self.groups());
        let part = self.parts.entry(tp.clone()).or_default();
        let seg = part.segment.get_or_insert_with(|| Segment {
            epoch: chunk.epoch,
            last: expected.unwrap_or(records[0].offset) - 1,
            opened: Instant::now(),
            tables: (0..n_tables).map(|_| None).collect(),
            warehouse: None,
        });
        // Which sink groups need which records: a group whose part is open needs all of
        // them; otherwise those at or after its recorded position (all, with none).
        let held = part.held.clone();
        let from: Vec<i64> = (0..n_groups)
            .map(|g| threshold(seg.is_open(g), held.at(g)))
            .collect();
        let runs = split_runs(records, &from);
        for (needs, rs) in runs {
            let last = rs[rs.len() - 1].offset;
            // records every sink holds still feed stateful stages (from their checkpoint)
            if needs.iter().any(|n| *n) || self.p.has_state() {
                self.process(&tp, rs, &needs, &held).await?;
            }
            if let Some(seg) = self.segment_mut(&tp) {
                seg.last = last;
            }
        }
        if self.is_full(&tp) {
            self.publish(&tp).await?;
        }
        self.keep_to_budget().await
    }

    pub(super) fn is_full(&self, tp: &TopicPartition) -> bool {
        let Some(seg) = self.segment(tp) else {
            return false;
        };
        let lake_full = self.p.sinks.iter().zip(&seg.tables).any(|(s, part)| {
            part.as_ref().is_some_and(|p| {
                p.writer.rows() >= s.rolling.max_rows || p.writer.bytes() >= s.rolling.max_bytes.0
            })
        });
        let wh_full = seg.warehouse.as_ref().is_some_and(|part| {
            self.p
                .warehouse_sinks
                .iter()
                .any(|s| part.rows >= s.rolling.max_rows || part.bytes >= s.rolling.max_bytes.0)
        });
        lake_full || wh_full || seg.opened.elapsed() >= self.max_interval()
    }

    pub(super) fn max_interval(&self) -> Duration {
        self.p
            .sinks
            .iter()
            .map(|s| s.rolling.max_interval)
            .chain(
                self.p
                    .warehouse_sinks
                    .iter()
                    .map(|s| s.rolling.max_interval),
            )
            .min()
            .unwrap_or(Duration::from_secs(60))
    }
}

/// The records of a chunk that a partition still needs.
#[derive(Debug, Default)]
pub(super) struct Fresh {
    pub(super) kept: Vec<Record>,
    /// Records below what is held (a broker may hand a record out twice, after a seek or a
    /// reconnect).
    pub(super) skipped: u64,
    /// `(expected, got)` where offsets jump (compaction, transaction markers): allowed.
    pub(super) gaps: Vec<(i64, i64)>,
}

/// Keeps the records at or past `expected`, the next offset the partition needs (`None`:
/// anything).
pub(super) fn past(expected: Option<i64>, records: Vec<Record>) -> Fresh {
    let mut next_ok = expected;
    let mut fresh = Fresh {
        kept: Vec::with_capacity(records.len()),
        ..Fresh::default()
    };
    for r in records {
        if next_ok.is_some_and(|e| r.offset < e) {
            fresh.skipped += 1;
            continue;
        }
        if let Some(e) = next_ok.filter(|e| r.offset > *e) {
            fresh.gaps.push((e, r.offset));
        }
        next_ok = Some(r.offset + 1);
        fresh.kept.push(r);
    }
    fresh
}

/// The lowest offset a sink group needs: all once its part is open, else from its
/// recorded position (all, with none).
fn threshold(open: bool, pos: Option<i64>) -> i64 {
    if open {
        i64::MIN
    } else {
        pos.unwrap_or(i64::MIN)
    }
}

/// Cuts records (in offset order) where a sink group starts needing them: runs of
/// `(which groups need them, records)`, `from[g]` being the lowest offset group `g` needs.
pub(super) fn split_runs(records: Vec<Record>, from: &[i64]) -> Vec<(Vec<bool>, Vec<Record>)> {
    let mut runs: Vec<(Vec<bool>, Vec<Record>)> = Vec::new();
    for r in records {
        let need: Vec<bool> = from.iter().map(|f| r.offset >= *f).collect();
        match runs.last_mut() {
            Some((n, rs)) if *n == need => rs.push(r),
            _ => runs.push((need, vec![r])),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(offsets: &[i64]) -> Vec<Record> {
        offsets
            .iter()
            .map(|&offset| Record {
                key: None,
                value: Some(b"{}".to_vec()),
                offset,
                timestamp_ms: None,
                headers: Vec::new(),
            })
            .collect()
    }

    fn offsets(rs: &[Record]) -> Vec<i64> {
        rs.iter().map(|r| r.offset).collect()
    }

    #[test]
    fn records_handed_out_twice_are_skipped_and_gaps_reported() {
        let fresh = past(Some(5), records(&[3, 4, 5, 6, 9, 10]));
        assert_eq!(offsets(&fresh.kept), vec![5, 6, 9, 10]);
        assert_eq!(fresh.skipped, 2);
        assert_eq!(fresh.gaps, vec![(7, 9)]);
        // a record repeated inside the chunk is skipped too
        let fresh = past(None, records(&[5, 6, 6, 7]));
        assert_eq!(offsets(&fresh.kept), vec![5, 6, 7]);
        assert_eq!(fresh.skipped, 1);
        assert!(fresh.gaps.is_empty());
    }

    #[test]
    fn runs_are_cut_where_a_sink_group_starts_needing_records() {
        // the warehouse holds up to 12, the lake table up to 15: three runs
        let from = [threshold(false, Some(15)), threshold(false, Some(12))];
        let runs = split_runs(records(&[10, 11, 12, 13, 14, 15, 16]), &from);
        let shape: Vec<(Vec<bool>, Vec<i64>)> = runs
            .iter()
            .map(|(n, rs)| (n.clone(), offsets(rs)))
            .collect();
        assert_eq!(
            shape,
            vec![
                (vec![false, false], vec![10, 11]),
                (vec![false, true], vec![12, 13, 14]),
                (vec![true, true], vec![15, 16]),
            ]
        );
    }

    #[test]
    fn an_open_part_takes_everything_and_a_group_with_nothing_too() {
        assert_eq!(threshold(true, Some(100)), i64::MIN);
        assert_eq!(threshold(false, None), i64::MIN);
        // a table behind the others (a crash between two tables' commits) gets its run
        let from = [threshold(true, Some(100)), threshold(false, Some(2))];
        let runs = split_runs(records(&[1, 2]), &from);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[0].0, vec![true, false]);
        assert_eq!(runs[1].0, vec![true, true]);
    }
}
