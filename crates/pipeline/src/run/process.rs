//! One run of records through strict decode, the SQL and anomaly stages, and the bad-record
//! policy, into the open parts of a segment.

use std::time::Duration;

use tracing::warn;
use ymera_anomaly::alerts::AlertEvent;
use ymera_ingest::kafka::{Record, TopicPartition};
use ymera_transform::INPUT;

use super::{Held, Progress, RunError, Runner};
use crate::checkpoint::Notice;
use crate::dlq::{DeadLetter, ErrorStage};
use crate::spec::OnBadRecord;

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

impl Runner {
    /// Decodes and transforms a run of records and adds the results to the parts of the
    /// sink groups that need them (`needs[g]`; groups as in [`Held`]).
    pub(super) async fn process(
        &mut self,
        tp: &TopicPartition,
        records: Vec<Record>,
        needs: &[bool],
        held: &Held,
    ) -> Result<(), RunError> {
        let name = self.name().to_string();
        let (run_first, run_last) = (records[0].offset, records[records.len() - 1].offset);
        // open the parts this run starts (contiguous with what the group holds)
        let to_open: Vec<usize> = match self.segment(tp) {
            Some(seg) => (0..needs.len())
                .filter(|&g| needs[g] && !seg.is_open(g))
                .collect(),
            None => {
                return Err(RunError::Source {
                    pipeline: name,
                    message: "internal: segment vanished".into(),
                });
            }
        };
        let n_tables = self.lake_tables();
        for g in to_open {
            let first = held.at(g).unwrap_or(run_first).min(run_first);
            if g < n_tables {
                let part = self.table_part(g, first, &format!("{}+{}+{first}", tp.0, tp.1))?;
                if let Some(slot) = self.segment_mut(tp).and_then(|s| s.tables.get_mut(g)) {
                    *slot = Some(part);
                }
            } else {
                let part = self.warehouse_part(first);
                if let Some(seg) = self.segment_mut(tp) {
                    seg.warehouse = Some(part);
                }
            }
        }
        let to_wh = needs.get(n_tables).copied().unwrap_or(false);
        let dlq_group = self.dlq_group();
        let dlq_needs = dlq_group.is_some_and(|g| needs[g]);

        // decode, strictly, record by record
        let mut letters = Vec::new();
        let mut rows_to_record = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            let outcome = match &r.value {
                None => Err("record has no value (tombstone)".to_string()),
                Some(v) => self.decoder.push(v).map_err(|e| e.to_string()),
            };
            match outcome {
                Ok(()) => rows_to_record.push(i),
                Err(message) => letters.push((i, ErrorStage::Decode, message)),
            }
        }
        // the decoder counts since it was made; the metric counts what is new
        let ignored = self.decoder.unknown_fields_ignored();
        let batch = self.decoder.finish();
        if ignored > self.unknown_counted {
            metrics::counter!("ymera_unknown_fields_ignored_total", "pipeline" => name.clone())
                .increment(ignored - self.unknown_counted);
            self.unknown_counted = ignored;
        }
        let st = &mut self.parts.entry(tp.clone()).or_default().anomaly;
        let (outputs, failed, alerts) = self
            .chain
            .run(&mut st.chain, batch, true)
            .await
            .map_err(|e| RunError::Transform(e, name.clone()))?;
        let warm = !needs.iter().any(|n| *n);
        for a in alerts {
            let AlertEvent::Opened(alert) = a.event else {
                continue;
            };
            // only alerts with somewhere to go are tracked (the lake table has them all)
            if !self
                .chain
                .anomaly_stages()
                .any(|s| s.config.name == a.stage && !s.notify.is_empty())
            {
                continue;
            }
            let notice = Notice {
                pipeline: name.clone(),
                stage: a.stage,
                alert_id: alert.alert_id,
                key: alert.key,
                opened_at: alert.opened_at,
                peak_score: alert.peak_score,
            };
            if warm {
                // committed already (the sinks hold these records); notified unless known
                if !st.notified.contains(&notice.alert_id) {
                    st.pending.push(notice);
                }
            } else {
                st.fresh.push(notice);
            }
        }
        if warm {
            return Ok(());
        }
        // the source offset of each row of `input` that went on (rows that failed in a
        // stage are out of every output)
        let failed_rows: std::collections::HashSet<usize> = failed.iter().map(|f| f.row).collect();
        let input_offsets: Vec<i64> = rows_to_record
            .iter()
            .enumerate()
            .filter(|(row, _)| !failed_rows.contains(row))
            .map(|(_, &i)| records[i].offset)
            .collect();
        for f in failed {
            letters.push((
                rows_to_record[f.row],
                ErrorStage::Transform,
                f.error.to_string(),
            ));
        }
        letters.sort_by_key(|l| l.0);

        // bad records
        let mut dead = Vec::new();
        for (i, stage, message) in letters {
            let r = &records[i];
            metrics::counter!("ymera_component_errors_total", "pipeline" => name.clone(), "stage" => stage.as_str(), "error_type" => "bad_record").increment(1);
            match self.p.spec.source.on_bad_record {
                OnBadRecord::Fail => {
                    return Err(RunError::BadRecord {
                        pipeline: name,
                        topic: tp.0.clone(),
                        partition: tp.1,
                        offset: r.offset,
                        stage: stage.as_str(),
                        message,
                    });
                }
                OnBadRecord::Drop => {
                    warn!(
                        pipeline = name,
                        topic = tp.0,
                        partition = tp.1,
                        offset = r.offset,
                        error = message,
                        "dropping a bad record"
                    );
                    self.stats.dropped += 1;
                }
                OnBadRecord::Dlq => dead.push(DeadLetter {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    stage,
                    message,
                    topic: tp.0.clone(),
                    partition: tp.1,
                    offset: r.offset,
                    pipeline: name.clone(),
                    failed_at: now_micros(),
                }),
            }
        }
        // dead letters of a lake DLQ table belong to its part: a run the DLQ table
        // already holds had its dead letters published with it
        if !dead.is_empty() && (dlq_needs || self.dlq_producer.is_some()) {
            self.dead_letter(&dead, tp).await?;
        }

        // into the open parts
        let lake_err = |e| RunError::Lake {
            pipeline: name.clone(),
            source: e,
        };
        let seg = self
            .parts
            .get_mut(tp)
            .and_then(|p| p.segment.as_mut())
            .ok_or_else(|| RunError::Source {
                pipeline: name.clone(),
                message: "internal: segment vanished".into(),
            })?;
        // encoding may run here when a row group fills: CPU work, let the runtime move
        // other tasks off this thread meanwhile
        tokio::task::block_in_place(|| {
            for (g, sink) in self.p.sinks.iter().enumerate() {
                let part = seg.tables.get_mut(g).and_then(Option::as_mut);
                if let (true, Some(part), Some(batch)) = (needs[g], part, outputs.get(&sink.input))
                {
                    part.writer.write(batch)?;
                }
            }
            Ok(())
        })
        .map_err(lake_err)?;
        if let Some(g) = dlq_group.filter(|_| dlq_needs && !dead.is_empty())
            && let Some(part) = seg.tables.get_mut(g).and_then(Option::as_mut)
        {
            let batch = crate::dlq::to_batch(&dead).map_err(|e| RunError::Source {
                pipeline: name.clone(),
                message: format!("internal: cannot build DLQ rows: {e}"),
            })?;
            part.writer.write(&batch).map_err(lake_err)?;
        }
        if to_wh && let Some(part) = seg.warehouse.as_mut() {
            for (i, sink) in self.p.warehouse_sinks.iter().enumerate() {
                let Some(batch) = outputs.get(&sink.input) else {
                    continue;
                };
                if batch.num_rows() == 0 {
                    continue;
                }
                part.rows += batch.num_rows() as u64;
                part.bytes += batch.get_array_memory_size() as u64;
                part.batches[i].push(batch.clone());
                part.origins[i].push(ymera_warehouse::Origin {
                    first: run_first,
                    last: run_last,
                    rows: (sink.input == INPUT).then(|| input_offsets.clone()),
                });
            }
        }
        Ok(())
    }

    pub(super) async fn dead_letter(
        &mut self,
        dead: &[DeadLetter],
        tp: &TopicPartition,
    ) -> Result<(), RunError> {
        let name = self.name().to_string();
        self.stats.dead_lettered += dead.len() as u64;
        Progress::add(&self.opts.progress.dead_lettered, dead.len() as u64);
        metrics::counter!("ymera_dlq_events_total", "pipeline" => name.clone())
            .increment(dead.len() as u64);
        for d in dead {
            warn!(
                pipeline = name,
                topic = tp.0,
                partition = tp.1,
                offset = d.offset,
                stage = d.stage.as_str(),
                error = d.message,
                "record dead-lettered"
            );
        }
        let Some((topic, producer)) = &self.dlq_producer else {
            return Ok(());
        };
        for d in dead {
            let headers = d.headers();
            let hdrs: Vec<(&str, &[u8])> =
                headers.iter().map(|(k, v)| (*k, v.as_slice())).collect();
            let mut backoff = Duration::from_millis(200);
            while let Err(e) = producer
                .send(topic, d.key.as_deref(), d.value.as_deref(), &hdrs)
                .await
            {
                let what = format!("DLQ topic `{topic}`");
                if !self.backoff(&mut backoff, &what, e.to_string()).await {
                    return Err(RunError::Source {
                        pipeline: name,
                        message: format!("{what} unwritable: {e}"),
                    });
                }
            }
        }
        Ok(())
    }
}
