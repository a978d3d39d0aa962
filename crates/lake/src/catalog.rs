//! Registers every lake table in a DataFusion session: each is a Delta table, read at its
//! latest snapshot through delta-rs's table provider, which prunes files by partition values
//! and by the statistics in the log. Registration reads metadata only; a scan reads the files.

use std::sync::Arc;

use datafusion::catalog::TableProvider;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Snapshot;
use tracing::warn;

use crate::delta;
use crate::error::{LakeError, Result};
use crate::layout::is_internal;
use crate::store::Lake;

/// A registered table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeTable {
    /// SQL name (`tasks`; dead-letter tables as `dlq_<pipeline>`).
    pub name: String,
    /// Directory relative to the lake.
    pub dir: String,
    /// Partition columns in path order.
    pub partition_cols: Vec<String>,
    /// The table version registered: every query of the session reads this snapshot.
    pub version: u64,
}

/// The directories of the lake that may hold tables, with their SQL names: every top-level
/// directory that is not internal, plus `_dlq/<pipeline>` dead-letter tables.
pub async fn candidates(lake: &Lake) -> Result<Vec<(String, String)>> {
    let mut dirs = Vec::new();
    for top in lake.top_level_dirs().await? {
        if top == "_dlq" {
            for sub in lake.subdirs("_dlq").await? {
                let pipeline = sub.rsplit('/').next().unwrap_or(&sub).to_string();
                dirs.push((format!("dlq_{pipeline}"), sub));
            }
        } else if !is_internal(&top) {
            dirs.push((top.clone(), top));
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Registers every Delta table of the lake in `ctx` and returns them. Each is registered
/// from its metadata alone (protocol, schema, version): its file list is read by the query
/// that scans it, so a one-shot query pays nothing for the tables it does not touch. A
/// directory without a Delta log is skipped with a warning (a lake of the pre-Delta layout,
/// or stray files).
pub async fn register_lake_tables(ctx: &SessionContext, lake: &Lake) -> Result<Vec<LakeTable>> {
    register_some_lake_tables(ctx, lake, None).await
}

/// [`register_lake_tables`] for the tables named in `only` (all when `None`): a one-shot
/// query loads the snapshots of the tables it reads, not of the whole lake. Snapshots are
/// loaded a few at a time (each is a handful of small reads of its log).
pub async fn register_some_lake_tables(
    ctx: &SessionContext,
    lake: &Lake,
    only: Option<&[String]>,
) -> Result<Vec<LakeTable>> {
    use futures::StreamExt;
    let wanted = candidates(lake)
        .await?
        .into_iter()
        .filter(|(name, _)| only.is_none_or(|only| only.contains(name)));
    let loaded: Vec<_> = futures::stream::iter(wanted)
        .map(|(name, dir)| async move {
            let found = provider(ctx, lake, &name, &dir, None).await;
            (name, dir, found)
        })
        .buffered(8)
        .collect()
        .await;
    let mut tables = Vec::new();
    for (name, dir, found) in loaded {
        let Some((provider, table)) = found? else {
            if lake
                .list(&dir)
                .await?
                .iter()
                .any(|p| p.ends_with(".parquet"))
            {
                warn!(
                    dir,
                    "lake directory holds Parquet files but no Delta log (`_delta_log/`): not a table; skipped"
                );
            }
            continue;
        };
        ctx.register_table(name.as_str(), provider)?;
        tables.push(table);
    }
    Ok(tables)
}

/// The table provider of the Delta table at `dir` (relative to the lake) at `version` (the
/// latest when `None`), read from its metadata alone; `None` when `dir` holds no Delta table.
/// The lake's object store is registered in `ctx` for the scan.
pub async fn provider(
    ctx: &SessionContext,
    lake: &Lake,
    name: &str,
    dir: &str,
    version: Option<u64>,
) -> Result<Option<(Arc<dyn TableProvider>, LakeTable)>> {
    let delta_err = |e: &dyn std::fmt::Display| LakeError::Delta {
        table: dir.to_string(),
        message: e.to_string(),
        external: false,
    };
    let store = delta::log_store(lake, dir)?;
    if !store
        .is_delta_table_location()
        .await
        .map_err(|e| delta::classify(dir, e))?
    {
        return Ok(None);
    }
    let snapshot = Snapshot::try_new(store.as_ref(), version)
        .await
        .map_err(|e| match version {
            Some(v) => LakeError::Invalid(format!(
                "table `{name}` has no version {v} that can still be read ({e}); `ymera lake history {dir}` lists its versions"
            )),
            None => delta_err(&e),
        })?;
    // an unloaded table: its log store, for the session's object store and the provider
    let table = DeltaTable::new(store);
    table
        .update_datafusion_session(&ctx.state())
        .map_err(|e| delta_err(&e))?;
    let partition_cols = snapshot.metadata().partition_columns().to_vec();
    let version = snapshot.version();
    let provider = table
        .table_provider()
        .with_snapshot(snapshot)
        // the scan follows the session's Parquet settings (filter pushdown among them)
        .with_session(Arc::new(ctx.state()))
        .await
        .map_err(|e| delta_err(&e))?;
    Ok(Some((
        provider,
        LakeTable {
            name: name.to_string(),
            dir: dir.to_string(),
            partition_cols,
            version,
        },
    )))
}
