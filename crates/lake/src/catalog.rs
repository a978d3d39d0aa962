//! Registers every lake table in a DataFusion session, with Hive partition directories as
//! columns (`dt` as a date, the others as strings) so filters on them prune files.

use arrow::datatypes::DataType;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use url::Url;

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
    /// Hive partition columns in path order.
    pub partition_cols: Vec<String>,
}

/// Finds the tables of the lake: every top-level directory that is not internal, plus
/// `_dlq/<pipeline>` dead-letter tables. Empty directories are skipped.
pub async fn discover(lake: &Lake) -> Result<Vec<LakeTable>> {
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
    let mut tables = Vec::new();
    for (name, dir) in dirs {
        let files = lake.list(&dir).await?;
        let Some(sample) = files.iter().find(|p| p.ends_with(".parquet")) else {
            continue;
        };
        let rel = sample.strip_prefix(&format!("{dir}/")).unwrap_or(sample);
        let partition_cols = rel
            .split('/')
            .filter_map(|seg| seg.split_once('=').map(|(k, _)| k.to_string()))
            .collect();
        tables.push(LakeTable {
            name,
            dir,
            partition_cols,
        });
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tables)
}

/// Registers every table of the lake in `ctx` and returns them.
pub async fn register_lake_tables(ctx: &SessionContext, lake: &Lake) -> Result<Vec<LakeTable>> {
    let url = lake.url().clone();
    if url.scheme() != "file" {
        let base = Url::parse(&format!(
            "{}://{}",
            url.scheme(),
            url.host_str().unwrap_or_default()
        ))
        .map_err(|e| LakeError::Url {
            url: url.to_string(),
            message: e.to_string(),
        })?;
        // The lake's store is rooted at the prefix; DataFusion resolves full URLs against the
        // bucket root, so register an unprefixed store for the bucket.
        let bucket_store = Lake::open_with(base.as_str(), lake.s3_settings())?.store();
        ctx.register_object_store(&base, bucket_store);
    }
    let tables = discover(lake).await?;
    for t in &tables {
        let cols: Vec<(String, DataType)> = t
            .partition_cols
            .iter()
            .map(|c| {
                (
                    c.clone(),
                    if c == "dt" {
                        DataType::Date32
                    } else {
                        DataType::Utf8
                    },
                )
            })
            .collect();
        let opts = ParquetReadOptions::default().table_partition_cols(cols);
        ctx.register_parquet(t.name.as_str(), lake.dir_url(&t.dir), opts)
            .await?;
    }
    Ok(tables)
}
