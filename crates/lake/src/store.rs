//! Where the lake lives (a local directory or an S3 prefix) and the one way files enter it:
//! publication that never exposes a partial file and never replaces an existing one.
//!
//! What "durable" means per store, which is what the commit log relies on:
//! - local: the bytes were written to `_staging/`, `fsync`ed, hard-linked to their final
//!   name (the link fails if the name exists) and the directory was `fsync`ed;
//! - S3: a single `PUT` with `If-None-Match: *` returned success.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;
use ymera_common::Secret;

use crate::error::{LakeError, Result};

/// What publication did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The file is new.
    Created,
    /// A file of that name was already there (published by an earlier run of the same
    /// range); it was left as it is.
    AlreadyExisted,
}

/// A lake: an object store and the prefix under which tables live.
#[derive(Clone)]
pub struct Lake {
    url: Url,
    store: Arc<dyn ObjectStore>,
    /// The same store unprefixed (the file system root, or the bucket): what delta-rs wants.
    root: Arc<dyn ObjectStore>,
    /// Set for a local lake: the directory on disk.
    local_root: Option<PathBuf>,
    /// S3 settings the lake was opened with (reused for the SQL catalog).
    s3: Vec<(String, Secret)>,
    /// Writers checkpoint a table every this many commits, unless the table sets
    /// `delta.checkpointInterval` (`lake.checkpoint_interval`).
    checkpoint_interval: u64,
}

/// Commits between checkpoints unless `lake.checkpoint_interval` or the table says otherwise
/// (Delta's own default).
pub const DEFAULT_CHECKPOINT_INTERVAL: u64 = 100;

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("url", &self.url.as_str())
            .finish()
    }
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

impl Lake {
    /// Opens the lake at `location`: a path or `file://` URL (the directory is created when
    /// missing). For `s3://` use [`Lake::open_with`] to pass credentials.
    pub fn open(location: &str) -> Result<Lake> {
        Lake::open_with(location, &[])
    }

    /// Opens the lake at `location` (a path, `file://` or `s3://bucket/prefix`); `s3` holds
    /// object_store S3 settings as `(key, value)`, e.g. `("aws_access_key_id", ...)`,
    /// `("aws_region", ...)`, `("aws_endpoint", ...)`. The caller gathers them (the binary
    /// reads them from the standard `AWS_*` environment variables); this crate reads no
    /// environment.
    pub fn open_with(location: &str, s3: &[(String, Secret)]) -> Result<Lake> {
        let url_err = |message: String| LakeError::Url {
            url: location.to_string(),
            message,
        };
        if location.starts_with("s3://") || location.starts_with("s3a://") {
            let url = Url::parse(location).map_err(|e| url_err(e.to_string()))?;
            let bucket = url
                .host_str()
                .ok_or_else(|| url_err("missing bucket".into()))?;
            let mut builder = AmazonS3Builder::new();
            for (k, v) in s3 {
                let key: AmazonS3ConfigKey = k
                    .parse()
                    .map_err(|e| url_err(format!("S3 setting `{k}`: {e}")))?;
                builder = builder.with_config(key, v.expose());
            }
            let store = builder
                .with_bucket_name(bucket)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .build()
                .map_err(|e| url_err(e.to_string()))?;
            let prefix = url.path().trim_matches('/').to_string();
            let root: Arc<dyn ObjectStore> = Arc::new(store);
            let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
                root.clone()
            } else {
                Arc::new(object_store::prefix::PrefixStore::new(root.clone(), prefix))
            };
            return Ok(Lake {
                url,
                store,
                root,
                local_root: None,
                s3: s3.to_vec(),
                checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
            });
        }
        let path = match location.strip_prefix("file://") {
            Some(p) => PathBuf::from(p),
            None if location.contains("://") => {
                return Err(url_err(
                    "unsupported scheme (use a path, file:// or s3://)".into(),
                ));
            }
            None => PathBuf::from(location),
        };
        std::fs::create_dir_all(&path).map_err(|e| LakeError::io(&path, e))?;
        let root = path.canonicalize().map_err(|e| LakeError::io(&path, e))?;
        let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| url_err(e.to_string()))?;
        let url = Url::from_directory_path(&root)
            .map_err(|_| url_err("not an absolute directory".into()))?;
        Ok(Lake {
            url,
            store: Arc::new(store),
            root: Arc::new(LocalFileSystem::new()),
            local_root: Some(root),
            s3: Vec::new(),
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        })
    }

    /// The lake whose writers checkpoint every `commits` commits (at least 1) of a table that
    /// does not set `delta.checkpointInterval`.
    pub fn with_checkpoint_interval(mut self, commits: u64) -> Lake {
        self.checkpoint_interval = commits.max(1);
        self
    }

    /// Commits between checkpoints of a table that does not set its own.
    pub fn checkpoint_interval(&self) -> u64 {
        self.checkpoint_interval
    }

    /// The lake's URL (`file:///abs/path/` or `s3://bucket/prefix`).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The S3 settings the lake was opened with.
    pub fn s3_settings(&self) -> &[(String, Secret)] {
        &self.s3
    }

    /// The object store, rooted at the lake.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// The store the lake lives in, unprefixed: the file system root or the bucket.
    pub fn root_store(&self) -> Arc<dyn ObjectStore> {
        self.root.clone()
    }

    /// The directory of a local lake.
    pub fn local_root(&self) -> Option<&FsPath> {
        self.local_root.as_deref()
    }

    /// The URL of a directory inside the lake, for SQL table registration.
    pub fn dir_url(&self, rel: &str) -> String {
        let base = self.url.as_str().trim_end_matches('/');
        format!("{base}/{}/", rel.trim_matches('/'))
    }

    /// Publishes `bytes` under `rel` (a path relative to the lake) so that readers see either
    /// nothing or the whole file, and an existing file is never replaced.
    pub async fn publish(&self, rel: &str, bytes: Bytes) -> Result<Published> {
        match &self.local_root {
            Some(root) => {
                let root = root.clone();
                let rel = rel.to_string();
                tokio::task::spawn_blocking(move || publish_local(&root, &rel, &bytes))
                    .await
                    .map_err(|e| LakeError::Internal(format!("publish task failed: {e}")))?
            }
            None => {
                let path = object_path(rel);
                let opts = PutOptions {
                    mode: PutMode::Create,
                    ..Default::default()
                };
                match self
                    .store
                    .put_opts(&path, PutPayload::from(bytes), opts)
                    .await
                {
                    Ok(_) => Ok(Published::Created),
                    Err(object_store::Error::AlreadyExists { .. }) => Ok(Published::AlreadyExisted),
                    Err(e) => Err(LakeError::store(rel, e)),
                }
            }
        }
    }

    /// Every object under `prefix` (relative paths), in no particular order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let p = Path::from(prefix);
        let metas: Vec<_> = self
            .store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(|e| LakeError::store(prefix, e))?;
        Ok(metas.into_iter().map(|m| m.location.to_string()).collect())
    }

    /// The top-level directories of the lake.
    pub async fn top_level_dirs(&self) -> Result<Vec<String>> {
        let listing = self
            .store
            .list_with_delimiter(None)
            .await
            .map_err(|e| LakeError::store(self.url.as_str(), e))?;
        Ok(listing
            .common_prefixes
            .into_iter()
            .map(|p| p.to_string())
            .collect())
    }

    /// The direct subdirectories of `rel`.
    pub async fn subdirs(&self, rel: &str) -> Result<Vec<String>> {
        let p = Path::from(rel);
        let listing = self
            .store
            .list_with_delimiter(Some(&p))
            .await
            .map_err(|e| LakeError::store(rel, e))?;
        Ok(listing
            .common_prefixes
            .into_iter()
            .map(|p| p.to_string())
            .collect())
    }

    /// Reads a whole object.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let path = object_path(rel);
        let got = self
            .store
            .get(&path)
            .await
            .map_err(|e| LakeError::store(rel, e))?;
        got.bytes().await.map_err(|e| LakeError::store(rel, e))
    }

    /// The size, modification time (ms) and footer of the Parquet file at `rel`, reading
    /// only its tail; `None` when there is no such object.
    pub async fn parquet_metadata(
        &self,
        rel: &str,
    ) -> Result<Option<(u64, i64, Arc<parquet::file::metadata::ParquetMetaData>)>> {
        let path = object_path(rel);
        let meta = match self.store.head(&path).await {
            Ok(m) => m,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(LakeError::store(rel, e)),
        };
        let not_parquet =
            |why: String| LakeError::Invalid(format!("`{rel}` is not a Parquet file: {why}"));
        // the last 8 bytes: the footer's length and `PAR1`; then the footer itself
        if meta.size < 12 {
            return Err(not_parquet(format!("{} bytes", meta.size)));
        }
        let tail = self
            .store
            .get_range(&path, meta.size - 8..meta.size)
            .await
            .map_err(|e| LakeError::store(rel, e))?;
        if &tail[4..] != b"PAR1" {
            return Err(not_parquet("no PAR1 at its end".into()));
        }
        let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
        if len + 8 > meta.size {
            return Err(not_parquet(format!(
                "a footer of {len} bytes in {} bytes",
                meta.size
            )));
        }
        let footer = self
            .store
            .get_range(&path, meta.size - 8 - len..meta.size - 8)
            .await
            .map_err(|e| LakeError::store(rel, e))?;
        let footer = parquet::file::metadata::ParquetMetaDataReader::decode_metadata(&footer)
            .map_err(|e| not_parquet(e.to_string()))?;
        Ok(Some((
            meta.size,
            meta.last_modified.timestamp_millis(),
            Arc::new(footer),
        )))
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&object_path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(LakeError::store(rel, e)),
        }
    }

    /// Removes staging files left by processes that died mid-publication (local lakes only;
    /// S3 publication has no staging). Files younger than `min_age` may belong to a live
    /// replica and are kept. Returns how many were removed.
    pub async fn clean_staging(&self, min_age: Duration) -> Result<usize> {
        let Some(root) = self.local_root.clone() else {
            return Ok(0);
        };
        tokio::task::spawn_blocking(move || {
            let dir = root.join("_staging");
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(LakeError::io(&dir, e)),
            };
            let now = SystemTime::now();
            let mut removed = 0;
            for entry in entries {
                let entry = entry.map_err(|e| LakeError::io(&dir, e))?;
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .map(|t| now.duration_since(t).unwrap_or_default() >= min_age)
                    .unwrap_or(true);
                if old {
                    let path = entry.path();
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(LakeError::io(&path, e)),
                    }
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| LakeError::Internal(format!("staging cleanup task failed: {e}")))?
    }
}

/// The object of a path relative to the lake, taken as it is: a Hive-escaped directory
/// (`service=a%2Fb`) names the same object a Delta reader asks for after decoding the log's
/// path (`Path::from` would escape the `%` once more).
fn object_path(rel: &str) -> Path {
    Path::parse(rel).unwrap_or_else(|_| Path::from(rel))
}

/// Local publication: staging file, fsync, hard link (fails if the name exists), fsync the
/// directory. A crash at any point leaves either no final file or a complete one.
fn publish_local(root: &FsPath, rel: &str, bytes: &[u8]) -> Result<Published> {
    use std::io::Write;
    let target = root.join(rel);
    let dir = target
        .parent()
        .ok_or_else(|| LakeError::Internal(format!("no parent directory for `{rel}`")))?;
    std::fs::create_dir_all(dir).map_err(|e| LakeError::io(dir, e))?;
    if target.exists() {
        return Ok(Published::AlreadyExisted);
    }
    let staging_dir = root.join("_staging");
    std::fs::create_dir_all(&staging_dir).map_err(|e| LakeError::io(&staging_dir, e))?;
    let seq = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
    let flat = rel.replace('/', "__");
    let staging = staging_dir.join(format!("{}-{seq}-{flat}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&staging).map_err(|e| LakeError::io(&staging, e))?;
        f.write_all(bytes).map_err(|e| LakeError::io(&staging, e))?;
        f.sync_all().map_err(|e| LakeError::io(&staging, e))?;
        drop(f);
        let published = match std::fs::hard_link(&staging, &target) {
            Ok(()) => Published::Created,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Published::AlreadyExisted,
            Err(e) => return Err(LakeError::io(&target, e)),
        };
        // the new name, and any directory created for it (a new `dt=`), must survive a
        // power loss too: fsync every directory from the file's up to the lake root
        let mut d = Some(dir);
        while let Some(cur) = d {
            sync_dir(cur)?;
            if cur == root {
                break;
            }
            d = cur.parent();
        }
        Ok(published)
    })();
    let _ = std::fs::remove_file(&staging);
    result
}

fn sync_dir(dir: &FsPath) -> Result<()> {
    let d = std::fs::File::open(dir).map_err(|e| LakeError::io(dir, e))?;
    d.sync_all().map_err(|e| LakeError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_publish_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let lake = Lake::open(tmp.path().to_str().unwrap()).unwrap();
        let first = lake
            .publish("t/dt=2026-01-01/a.parquet", Bytes::from_static(b"one"))
            .await;
        assert_eq!(first.unwrap(), Published::Created);
        let again = lake
            .publish("t/dt=2026-01-01/a.parquet", Bytes::from_static(b"two"))
            .await;
        assert_eq!(again.unwrap(), Published::AlreadyExisted);
        assert_eq!(
            lake.get("t/dt=2026-01-01/a.parquet")
                .await
                .unwrap()
                .as_ref(),
            b"one"
        );
        // no staging leftovers, no `#N` temporaries beside the target
        let all = lake.list("").await.unwrap();
        assert_eq!(
            all,
            vec!["t/dt=2026-01-01/a.parquet".to_string()],
            "{all:?}"
        );
    }

    #[tokio::test]
    async fn staging_orphans_are_cleaned() {
        let tmp = tempfile::tempdir().unwrap();
        let lake = Lake::open(tmp.path().to_str().unwrap()).unwrap();
        std::fs::create_dir_all(tmp.path().join("_staging")).unwrap();
        std::fs::write(tmp.path().join("_staging/123-0-t__x.parquet"), b"partial").unwrap();
        assert_eq!(
            lake.clean_staging(Duration::from_secs(3600)).await.unwrap(),
            0
        );
        assert_eq!(lake.clean_staging(Duration::ZERO).await.unwrap(), 1);
    }
}
