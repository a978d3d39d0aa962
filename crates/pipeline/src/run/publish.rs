//! Publication of a partition's segment: the anomaly checkpoint, the warehouse part (rows
//! and offsets in one transaction), each lake table's part (one Delta commit of its files
//! and the partition's txn), then the Kafka commit of the lowest position over the sink
//! groups. External errors are retried.

use std::time::{Duration, Instant};

use tracing::{Instrument, info, warn};
use ymera_common::Retry;
use ymera_ingest::kafka::TopicPartition;
use ymera_lake::SegmentId;
use ymera_lake::delta::{self, Committed, TableCommit};

use super::segment::{TablePart, WarehousePart};
use super::{Progress, RunError, Runner};
use crate::checkpoint::{self, Checkpoint};
use crate::spec::OnBadRecord;

impl Runner {
    pub(super) async fn publish_due(&mut self) -> Result<(), RunError> {
        let due: Vec<TopicPartition> = self
            .parts
            .keys()
            .filter(|tp| self.is_full(tp))
            .cloned()
            .collect();
        for tp in due {
            self.publish(&tp).await?;
        }
        Ok(())
    }

    /// An open segment's memory: its sinks' encoded files and row groups being built, and
    /// its warehouse rows.
    fn segment_bytes(&self, tp: &TopicPartition) -> u64 {
        self.segment(tp).map_or(0, |s| {
            s.tables
                .iter()
                .flatten()
                .map(|p| p.writer.memory())
                .sum::<u64>()
                + s.warehouse.as_ref().map_or(0, |w| w.bytes)
        })
    }

    /// Keeps the process under its memory budget ([`super::MemoryBudget`]): reports this
    /// runner's open segments and, while the total is over the limit and this runner holds
    /// at least its fair share, publishes the largest of them.
    pub(super) async fn keep_to_budget(&mut self) -> Result<(), RunError> {
        let Some(budget) = self.opts.memory.clone() else {
            return Ok(());
        };
        loop {
            let sizes: Vec<(TopicPartition, u64)> = self
                .parts
                .iter()
                .filter(|(_, p)| p.segment.is_some())
                .map(|(tp, _)| (tp.clone(), self.segment_bytes(tp)))
                .collect();
            let now: u64 = sizes.iter().map(|s| s.1).sum();
            budget.update(self.held_bytes, now);
            self.held_bytes = now;
            if budget.held() <= budget.limit() || now < budget.fair_share() {
                return Ok(());
            }
            let Some((tp, bytes)) = sizes.into_iter().max_by_key(|s| s.1) else {
                return Ok(());
            };
            if bytes == 0 {
                return Ok(());
            }
            metrics::counter!("ymera_memory_budget_publishes_total", "pipeline" => self.name().to_string())
                .increment(1);
            self.publish(&tp).await?;
        }
    }

    pub(super) async fn publish_all(&mut self) -> Result<(), RunError> {
        let all: Vec<TopicPartition> = self
            .parts
            .iter()
            .filter(|(_, p)| p.segment.is_some())
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in all {
            self.publish(&tp).await?;
        }
        Ok(())
    }

    /// The lowest position over the pipeline's sink groups: where the source resumes and
    /// what Kafka may be told (`None` while a group holds nothing of the partition).
    fn low_water(&self, tp: &TopicPartition) -> Option<i64> {
        self.parts.get(tp).and_then(|p| p.held.low_water())
    }

    /// Publishes a partition's open segment — the warehouse part (rows + offsets in one
    /// transaction), then the lake part (files, then commit record) — and commits the
    /// lowest position over the sinks to Kafka. Transient errors are retried with backoff.
    /// One trace per publication: a root span `publish` over the checkpoint, the warehouse
    /// and lake commits, notifications and the offset commit.
    pub(super) async fn publish(&mut self, tp: &TopicPartition) -> Result<(), RunError> {
        let Some(seg) = self.segment(tp) else {
            return Ok(());
        };
        let span = tracing::info_span!(
            parent: None,
            "publish",
            pipeline = %self.p.spec.name,
            topic = %tp.0,
            partition = tp.1,
            last_offset = seg.last,
        );
        self.publish_segment(tp).instrument(span).await
    }

    pub(super) async fn publish_segment(&mut self, tp: &TopicPartition) -> Result<(), RunError> {
        let Some(mut seg) = self.parts.get_mut(tp).and_then(|p| p.segment.take()) else {
            return Ok(());
        };
        let started = Instant::now();
        let mut published = false;
        // whether every commit of this segment is ours: only then is the anomaly state at
        // its end written (below), so a writer that found the offsets already held (a zombie
        // that lost the race, say) never leaves a state the owner would restore
        let mut ours = true;
        if let Some(part) = seg.warehouse.take().filter(|p| seg.last >= p.first) {
            match self
                .publish_warehouse(tp, seg.epoch, seg.last, part)
                .await?
            {
                None => return Ok(()),
                Some(made) => ours &= made,
            }
            published = true;
        }
        let parts: Vec<(usize, TablePart)> = std::mem::take(&mut seg.tables)
            .into_iter()
            .enumerate()
            .filter_map(|(g, p)| Some((g, p?)))
            .filter(|(_, p)| seg.last >= p.first)
            .collect();
        if !parts.is_empty() {
            match self.publish_lake(tp, seg.epoch, seg.last, parts).await? {
                None => return Ok(()),
                Some(made) => ours &= made,
            }
            published = true;
        }
        if !published {
            return Ok(());
        }
        if let Some(st) = self.parts.get_mut(tp).map(|p| &mut p.anomaly) {
            let fresh = std::mem::take(&mut st.fresh);
            st.pending.extend(fresh);
        }
        // the state after the segment, with its alerts pending until notified; a crash
        // before this line restores an older state and runs the records since through the
        // stages again, which finds the same alerts pending
        if ours && self.p.has_state() {
            self.take_outcomes();
            self.save_checkpoint(tp, seg.last + 1).await?;
        }
        self.notify_pending(tp);
        let name = self.name().to_string();
        self.stats.last_commit_at = Some(Instant::now());
        if let Some(next) = self.low_water(tp) {
            self.parts.entry(tp.clone()).or_default().next = Some(next);
            if let Err(e) = self.source.commit(&[(tp.clone(), next)], false) {
                warn!(pipeline = name, topic = tp.0, partition = tp.1, error = %e, "offset commit failed (the sinks hold the position)");
            }
        }
        metrics::histogram!("ymera_batch_commit_seconds", "pipeline" => name)
            .record(started.elapsed().as_secs_f64());
        self.opts.health.set(&self.component, None);
        Ok(())
    }

    /// Writes the partition's anomaly state at `next` (after this writer's commits brought
    /// every sink there), retrying external errors like a publication.
    pub(super) async fn save_checkpoint(
        &mut self,
        tp: &TopicPartition,
        next: i64,
    ) -> Result<(), RunError> {
        let name = self.name().to_string();
        let st = &self.parts.entry(tp.clone()).or_default().anomaly;
        let c = Checkpoint {
            topic: tp.0.clone(),
            partition: tp.1,
            next_offset: next,
            chain: st.chain.clone(),
            pending: st.pending.iter().chain(&st.fresh).cloned().collect(),
            notified: st.notified.clone(),
        };
        let mut backoff = Duration::from_millis(200);
        while let Err(e) = checkpoint::save(&self.opts.lake, &name, &c).await {
            let retry = e.class().retry() == Retry::Yes;
            self.retry_after(&mut backoff, "lake", None, retry, e)
                .await
                .map_err(|source| RunError::Lake {
                    pipeline: name.clone(),
                    source,
                })?;
        }
        if let Some(st) = self.parts.get_mut(tp).map(|p| &mut p.anomaly) {
            st.saved_at = Some(next);
            st.notified_since_save = false;
        }
        Ok(())
    }

    /// After an external write failed with `error`: a retryable one is counted (as
    /// `error_type`, when given) and waited out with [`Runner::backoff`], and `Ok` means
    /// try again; any other error, or a long wait that shutdown cuts short, is given back.
    pub(super) fn retry_after<E: std::fmt::Display + Send + 'static>(
        &self,
        backoff: &mut Duration,
        what: &str,
        error_type: Option<&'static str>,
        retryable: bool,
        error: E,
    ) -> impl std::future::Future<Output = Result<(), E>> + Send + 'static {
        let wait = retryable.then(|| {
            if let Some(error_type) = error_type {
                metrics::counter!("ymera_component_errors_total", "pipeline" => self.name().to_string(), "stage" => "sink", "error_type" => error_type).increment(1);
            }
            self.backoff(backoff, what, error.to_string())
        });
        async move {
            let again = match wait {
                Some(wait) => wait.await,
                None => false,
            };
            if again { Ok(()) } else { Err(error) }
        }
    }

    /// Waits before retrying an external error; false on shutdown once backoff is long.
    pub(super) fn backoff(
        &self,
        backoff: &mut Duration,
        what: &str,
        message: String,
    ) -> impl std::future::Future<Output = bool> + Send + 'static {
        warn!(pipeline = self.name(), error = message, retry_in = ?*backoff, "cannot write to the {what}; consumption paused, offsets not committed");
        self.opts.health.set(
            &self.component,
            Some(format!("{what} unwritable: {message}")),
        );
        let (wait, shutdown) = (*backoff, self.opts.shutdown.clone());
        *backoff = (*backoff * 2).min(Duration::from_secs(30));
        async move {
            tokio::select! {
                _ = tokio::time::sleep(wait) => true,
                _ = shutdown.cancelled(), if wait >= Duration::from_secs(5) => false,
            }
        }
    }

    /// Records that sink group `g` now holds the partition up to (not including) `next`.
    fn hold(&mut self, tp: &TopicPartition, g: usize, next: i64) {
        self.parts.entry(tp.clone()).or_default().held.set(g, next);
    }

    /// Returns `None` when the partition is no longer owned (the segment is dropped), else
    /// whether this call's commit made the position (not an earlier attempt's).
    pub(super) async fn publish_warehouse(
        &mut self,
        tp: &TopicPartition,
        epoch: u64,
        last: i64,
        part: WarehousePart,
    ) -> Result<Option<bool>, RunError> {
        let name = self.name().to_string();
        let Some(wh) = self.warehouse.clone() else {
            return Err(RunError::Source {
                pipeline: name,
                message: "internal: warehouse rows without a warehouse".into(),
            });
        };
        let writes = self
            .p
            .warehouse_sinks
            .iter()
            .zip(part.batches.into_iter().zip(part.origins))
            .map(|(s, (batches, origins))| ymera_warehouse::TableWrite {
                table: s.table.clone(),
                mode: s.mode.clone(),
                batches,
                origins,
            })
            .collect();
        let commit = ymera_warehouse::Commit {
            pipeline: name.clone(),
            topic: tp.0.clone(),
            partition: tp.1,
            first: part.first,
            next: last + 1,
            writes,
            on_reject: match self.p.spec.source.on_bad_record {
                OnBadRecord::Dlq => ymera_warehouse::OnReject::DeadLetter,
                OnBadRecord::Drop => ymera_warehouse::OnReject::Skip,
                OnBadRecord::Fail => ymera_warehouse::OnReject::Abort,
            },
        };
        let fence = self.source.fence();
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(guard) = fence.hold(tp, epoch).await else {
                info!(
                    pipeline = name,
                    topic = tp.0,
                    partition = tp.1,
                    "partition no longer owned; segment dropped"
                );
                return Ok(None);
            };
            let outcome = wh.commit(&commit).await;
            drop(guard);
            match outcome {
                Ok(done) => {
                    for r in &done.rejected {
                        metrics::counter!("ymera_component_errors_total", "pipeline" => name.clone(), "stage" => "sink", "error_type" => "constraint").increment(1);
                        warn!(
                            pipeline = name,
                            topic = tp.0,
                            partition = tp.1,
                            error = r.message,
                            "row refused by the warehouse: {}",
                            if commit.on_reject == ymera_warehouse::OnReject::Skip {
                                "dropped (on_bad_record: drop)"
                            } else {
                                "dead-lettered in _ymera_dead_letters"
                            }
                        );
                    }
                    if commit.on_reject == ymera_warehouse::OnReject::DeadLetter {
                        let n = done.rejected.len() as u64;
                        self.stats.dead_lettered += n;
                        Progress::add(&self.opts.progress.dead_lettered, n);
                        metrics::counter!("ymera_dlq_events_total", "pipeline" => name.clone())
                            .increment(n);
                    } else {
                        self.stats.dropped += done.rejected.len() as u64;
                    }
                    metrics::counter!("ymera_component_sent_events_total", "pipeline" => name.clone(), "component" => "warehouse").increment(done.rows);
                    *self
                        .stats
                        .rows_written
                        .entry("warehouse".into())
                        .or_insert(0) += done.rows;
                    self.hold(tp, self.lake_tables(), last + 1);
                    return Ok(Some(true));
                }
                Err(ymera_warehouse::WarehouseError::Fenced(m)) => {
                    // Our own earlier attempt may have committed with its reply lost: then
                    // the stored position is exactly this segment's end.
                    let stored = wh
                        .read_positions(&name)
                        .await
                        .ok()
                        .and_then(|p| p.get(tp).copied());
                    if stored == Some(last + 1) {
                        info!(
                            pipeline = name,
                            topic = tp.0,
                            partition = tp.1,
                            "the warehouse already holds this segment (an earlier attempt committed)"
                        );
                        self.hold(tp, self.lake_tables(), last + 1);
                        return Ok(Some(false));
                    }
                    // another writer moved it: stop, so that a restart resolves afresh
                    return Err(RunError::Warehouse {
                        pipeline: name,
                        source: ymera_warehouse::WarehouseError::Fenced(m),
                    });
                }
                Err(e) => {
                    let retry = e.class().retry() == Retry::Yes;
                    self.retry_after(&mut backoff, "warehouse", Some("warehouse_write"), retry, e)
                        .await
                        .map_err(|source| RunError::Warehouse {
                            pipeline: name.clone(),
                            source,
                        })?;
                }
            }
        }
    }

    /// Commits each lake table's part, one Delta commit per table (its files and the
    /// partition's txn; a part with no rows still records the position). Returns `None` when
    /// the partition is no longer owned (the rest of the segment is dropped), else whether
    /// every table took this call's commit (none already held the offsets).
    pub(super) async fn publish_lake(
        &mut self,
        tp: &TopicPartition,
        epoch: u64,
        last: i64,
        parts: Vec<(usize, TablePart)>,
    ) -> Result<Option<bool>, RunError> {
        let name = self.name().to_string();
        let app_id = delta::app_id(&name, &tp.0, tp.1);
        // Parquet encoding and compression are CPU work: off the runtime threads
        let specs: Vec<_> = parts
            .iter()
            .map(|(g, _)| self.table_spec(*g).cloned())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| RunError::Source {
                pipeline: name.clone(),
                message: "internal: a segment part has no lake table".into(),
            })?;
        let topic = tp.0.clone();
        let partition = tp.1;
        let encoded = tokio::task::spawn_blocking(move || {
            parts
                .into_iter()
                .zip(specs)
                .map(|((g, part), spec)| {
                    let id = SegmentId {
                        topic: topic.clone(),
                        partition,
                        first: part.first,
                        last,
                    };
                    let files = part.writer.finish(&id.file_name())?;
                    let txn = (app_id.clone(), part.first, last);
                    Ok((g, TableCommit::new(&spec, files, vec![txn])))
                })
                .collect::<Result<Vec<_>, ymera_lake::LakeError>>()
        })
        .await
        .map_err(|e| RunError::Source {
            pipeline: name.clone(),
            message: format!("internal: encoding task failed: {e}"),
        })?
        .map_err(|e| RunError::Lake {
            pipeline: name.clone(),
            source: e,
        })?;
        let mut made = true;
        for (g, commit) in encoded {
            match self.commit_table(tp, epoch, last, g, &commit).await? {
                None => return Ok(None),
                Some(done) => made &= matches!(done, Committed::Version(_)),
            }
        }
        Ok(Some(made))
    }

    /// One table's Delta commit under the fence, retried while the lake is unwritable;
    /// `None` when the partition is no longer owned.
    async fn commit_table(
        &mut self,
        tp: &TopicPartition,
        epoch: u64,
        last: i64,
        g: usize,
        commit: &TableCommit,
    ) -> Result<Option<Committed>, RunError> {
        let name = self.name().to_string();
        let fence = self.source.fence();
        let mut backoff = Duration::from_millis(200);
        loop {
            let Some(guard) = fence.hold(tp, epoch).await else {
                info!(
                    pipeline = name,
                    table = commit.table,
                    topic = tp.0,
                    partition = tp.1,
                    "partition no longer owned; segment dropped"
                );
                return Ok(None);
            };
            let outcome = self.tables.commit(commit).await;
            drop(guard);
            match outcome {
                Ok(done) => {
                    match done {
                        Committed::Version(version) => {
                            let (rows, n) = (commit.rows(), commit.files.len() as u64);
                            self.stats.files_written += n;
                            Progress::add(&self.opts.progress.files_written, n);
                            let table = commit.table.clone();
                            metrics::counter!("ymera_component_sent_events_total", "pipeline" => name.clone(), "component" => table.clone()).increment(rows);
                            metrics::counter!("ymera_lake_files_written_total", "pipeline" => name.clone(), "table" => table.clone()).increment(n);
                            *self.stats.rows_written.entry(table).or_insert(0) += rows;
                            tracing::debug!(
                                pipeline = name,
                                table = commit.table,
                                version,
                                rows,
                                "committed"
                            );
                        }
                        Committed::AlreadyHeld => info!(
                            pipeline = name,
                            table = commit.table,
                            topic = tp.0,
                            partition = tp.1,
                            "the table already holds this segment (an earlier attempt or another writer committed it)"
                        ),
                    }
                    self.hold(tp, g, last + 1);
                    return Ok(Some(done));
                }
                Err(e) => {
                    let retry = e.class().retry() == Retry::Yes;
                    self.retry_after(&mut backoff, "lake", Some("lake_write"), retry, e)
                        .await
                        .map_err(|source| RunError::Lake {
                            pipeline: name.clone(),
                            source,
                        })?;
                }
            }
        }
    }
}
