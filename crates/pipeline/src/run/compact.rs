//! Background compaction of a pipeline's lake tables while `ymera run` ingests
//! (`lake.optimize.*`).
//!
//! - **One replica compacts**, chosen by Kafka's group membership: the one that owns
//!   partition 0 of the pipeline's first topic (sorted). No coordinator of our own: after a
//!   rebalance the new owner takes over, and the old one abandons its pass in flight within
//!   a second. Should two compactions of the same files still both commit (delta-rs 1.1
//!   does not refuse the second), the later one sees it in the log and undoes its own
//!   ([`ymera_lake::maintain`]): those rows are in the table twice only between the two
//!   commits.
//! - **Bounded.** It runs on a thread of its own with a single-threaded runtime, one bin at
//!   a time with 128k-row row groups: at most one core and one output file's worth of
//!   memory, however busy ingest is; ingest never waits for it.
//! - **Never blocking ingest's commits.** Compaction commits with `dataChange=false` and
//!   no txn; delta-rs commits it after any appends that land first, and a writer that reads
//!   past it goes on without a reload ([`ymera_lake::delta`]).
//! - A pass that takes longer than [`Compaction::deadline`] is abandoned: files it wrote
//!   and never committed are orphans that `ymera lake vacuum` deletes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use ymera_lake::Lake;
use ymera_lake::maintain::{CompactPolicy, compact_closed, latest_version};

/// How `ymera run` compacts in the background.
#[derive(Debug, Clone)]
pub struct Compaction {
    pub policy: CompactPolicy,
    /// Time between passes (the first pass comes one interval after start).
    pub interval: Duration,
    /// A pass over one table that runs longer is abandoned.
    pub deadline: Duration,
}

/// The background compactor of one pipeline: a thread that compacts while `leader` says
/// this replica is the one, until `stop`.
pub(crate) struct Compactor {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Compactor {
    pub(crate) fn start(
        pipeline: String,
        lake: Lake,
        tables: Vec<String>,
        how: Compaction,
        leader: Arc<AtomicBool>,
    ) -> std::io::Result<Compactor> {
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("compact-{pipeline}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(pipeline, error = %e, "cannot start background compaction");
                        return;
                    }
                };
                rt.block_on(passes(&pipeline, &lake, &tables, &how, &leader, &stopped));
            })?;
        Ok(Compactor {
            thread: Some(thread),
            stop,
        })
    }
}

impl Drop for Compactor {
    /// Stops the compactor; a pass in flight is abandoned at its next await, and the thread
    /// is not waited for (its uncommitted files are vacuum's).
    fn drop(&mut self) {
        self.stop.cancel();
        drop(self.thread.take());
    }
}

async fn passes(
    pipeline: &str,
    lake: &Lake,
    tables: &[String],
    how: &Compaction,
    leader: &AtomicBool,
    stop: &CancellationToken,
) {
    // the version at which a table last had nothing to compact: a pass loads a table's whole
    // file list, so a table that has not moved since is not loaded again
    // (forgotten when another day closes: that can make a table compactable with no commit)
    let mut idle: HashMap<&str, u64> = HashMap::new();
    let mut closed_before = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(how.interval) => {}
        }
        if !leader.load(Ordering::Relaxed) {
            continue;
        }
        let first_open = (chrono::Utc::now()
            - chrono::Duration::from_std(how.policy.closed_after).unwrap_or_default())
        .date_naive();
        if closed_before.replace(first_open) != Some(first_open) {
            idle.clear();
        }
        for table in tables {
            let seen = idle.get(table.as_str()).copied();
            let latest = match latest_version(lake, table, seen.unwrap_or(0)).await {
                Ok(Some(v)) if Some(v) != seen => v,
                // no table yet, or nothing new since the last pass found nothing to do
                Ok(_) => continue,
                Err(e) => {
                    warn!(pipeline, table, error = %e, "background compaction cannot read the table; it tries again next pass");
                    continue;
                }
            };
            let started = std::time::Instant::now();
            let pass = tokio::select! {
                _ = stop.cancelled() => return,
                _ = lost(leader) => {
                    info!(pipeline, table, "no longer the compacting replica: the pass in flight is abandoned");
                    break;
                }
                r = tokio::time::timeout(how.deadline, compact_closed(lake, table, &how.policy)) => r,
            };
            match pass {
                Ok(Ok(Some(done))) => {
                    metrics::counter!("ymera_lake_compactions_total", "pipeline" => pipeline.to_string(), "table" => table.clone()).increment(1);
                    metrics::counter!("ymera_lake_compacted_files_total", "pipeline" => pipeline.to_string(), "table" => table.clone()).increment(done.files_removed);
                    info!(
                        pipeline,
                        table,
                        files_before = done.files_before,
                        files_after = done.files_after,
                        rows = done.rows_added,
                        versions = ?done.versions,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "compacted closed partitions"
                    );
                }
                Ok(Ok(None)) => {
                    idle.insert(table, latest);
                }
                Ok(Err(e)) => {
                    warn!(pipeline, table, error = %e, "background compaction failed; it tries again next pass")
                }
                Err(_) => warn!(
                    pipeline,
                    table,
                    deadline_s = how.deadline.as_secs(),
                    "background compaction passed its deadline and was abandoned"
                ),
            }
        }
    }
}

/// Returns once this replica is no longer the compacting one (checked every second).
async fn lost(leader: &AtomicBool) {
    while leader.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The partition whose owner compacts: partition 0 of the first of `topics` (sorted).
pub(crate) fn lead_partition(topics: &[String]) -> Option<(String, i32)> {
    topics.iter().min().map(|t| (t.clone(), 0))
}
