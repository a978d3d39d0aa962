//! The model registry, on the same object store as the lake (`registry.url`, default
//! `<lake>/_models/`):
//!
//! ```text
//! <name>/<version>/artifact.json     the fitted model (create-only)
//! <name>/<version>/manifest.json     written last: a version exists once it is there
//! <name>/_aliases/<alias>/<seq>.json one record per alias move, numbered from 1
//! ```
//!
//! Versions are immutable: both files are published create-only, the artifact first. A
//! version number is claimed by creating its artifact, so two trainers never share one; a
//! trainer killed between the two files leaves a numbered directory without a manifest,
//! which is not a version and is skipped. An alias is the newest record of its directory;
//! moving it creates record `seq + 1`, which fails if another move got there first — a
//! compare-and-swap that works on stores without conditional overwrite (object_store's
//! local store has no `PutMode::Update`) and that keeps the history for free.
//!
//! With an Ed25519 key ([`Signing`], `registry.signing_key_file`), each manifest and
//! alias record is signed before it is published: `<file>.<first 16 hex of its
//! sha256>.sig` holds the hex signature of its exact bytes (named by content, so two
//! movers racing for one alias record never collide). A registry opened with the public
//! key (`registry.public_key_file`) refuses a manifest or current alias record whose
//! signature is missing or does not verify; the manifest carries the artifact's sha256,
//! so its signature covers the artifact too.

use std::collections::BTreeMap;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ymera_lake::{Lake, Published};

use crate::ModelError;
use crate::features::FeatureSchema;
use crate::model::Estimator;
use crate::spec::{Params, Task, Threshold};

/// The fitted model as stored.
#[derive(Debug, Serialize, Deserialize)]
pub struct Artifact {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub task: Task,
    pub features: FeatureSchema,
    pub estimator: Estimator,
}

/// One gate check, as evaluated at training time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GateCheck {
    #[serde(flatten)]
    pub threshold: Threshold,
    pub actual: Option<f64>,
    pub passed: bool,
}

/// A lake or warehouse table the training query read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableLineage {
    pub name: String,
    /// `lake` or `warehouse`.
    pub source: String,
    /// Lake tables: the Delta version the training query read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Lake tables: the data files of that version, with their sizes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRef {
    pub path: String,
    pub bytes: u64,
}

/// Where the training rows came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Lineage {
    pub query: String,
    pub tables: Vec<TableLineage>,
    /// Rows used (train + calibration + holdout).
    pub rows: usize,
    pub train_rows: usize,
    pub calibration_rows: usize,
    pub holdout_rows: usize,
    /// Rows of the query skipped for a null or non-finite value.
    pub skipped_rows: usize,
    /// sha256 over the rows' feature values, labels and times (each row hashed, the sorted
    /// row hashes hashed: independent of the order the query returned them in).
    pub content_sha256: String,
    /// `content_sha256` is independent of row order (false in manifests written before
    /// 2026-12-07, which hashed the rows in query order).
    #[serde(default)]
    pub content_sha256_sorted: bool,
    /// Event-time range of the rows (RFC 3339 when the time column is a timestamp).
    pub time_range: (String, String),
    /// Holdout rows are those with time ≥ this.
    pub holdout_from: String,
}

/// A version's manifest (interfaces.md, "Model registry").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub task: Task,
    pub algorithm: String,
    pub params: Params,
    /// Classification: the calibration applied; regression: the interval level.
    pub calibration: Option<String>,
    pub label: Option<String>,
    /// Metrics on the held-out rows.
    pub metrics: BTreeMap<String, f64>,
    pub gate: Vec<GateCheck>,
    pub gate_passed: bool,
    pub lineage: Lineage,
    pub features: FeatureSchema,
    pub artifact: ArtifactRef,
    pub spec_sha256: String,
    pub fit_seconds: f64,
    pub crate_version: String,
    /// `registered` (versions never change after that; aliases say what is live).
    pub status: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
}

/// One alias move.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AliasRecord {
    pub alias: String,
    pub seq: u64,
    pub version: String,
    /// The version the alias pointed at before this move.
    pub previous: Option<String>,
    /// sha256 of the target's manifest when it was promoted: a manifest changed later is
    /// refused when loaded through the alias.
    pub manifest_sha256: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    /// `promote` or `rollback`.
    pub action: String,
}

/// A version read back and verified.
#[derive(Debug)]
pub struct LoadedModel {
    pub manifest: Manifest,
    pub manifest_sha256: String,
    pub artifact: Artifact,
}

/// A version number directory as listed.
#[derive(Debug)]
pub struct VersionEntry {
    pub version: u64,
    /// None: no manifest yet (a trainer died before finishing, or is still writing).
    pub manifest: Option<Result<Manifest, String>>,
}

/// What [`Registry::register_recipe_model`] records beyond the defaults.
#[derive(Debug, Clone)]
pub struct RecipeModel {
    pub name: String,
    pub task: Task,
    /// The artifact's `recipe_kind` (`forecast`, `isolation_forest`).
    pub kind: String,
    pub recipe: serde_json::Value,
    pub algorithm: String,
    pub calibration: Option<String>,
    /// The series it was fitted on (`service/metric` or a file); the manifest's label.
    pub series: String,
    /// The query that read the series (default: the series name).
    pub query: Option<String>,
    pub points: usize,
    /// Points scored by the backtest, if any.
    pub holdout_points: usize,
    pub content_sha256: String,
    pub time_range: (String, String),
    pub metrics: BTreeMap<String, f64>,
    pub gate: Vec<GateCheck>,
    pub fit_seconds: f64,
}

/// The registry.
#[derive(Debug, Clone)]
pub struct Registry {
    store: Lake,
    signing: Signing,
}

/// The registry's Ed25519 keys: what this process signs with, what it verifies with.
#[derive(Clone, Default)]
pub struct Signing {
    signer: Option<std::sync::Arc<ed25519_dalek::SigningKey>>,
    verifier: Option<ed25519_dalek::VerifyingKey>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signing")
            .field("signs", &self.signer.is_some())
            .field("verifies", &self.verifier.is_some())
            .finish()
    }
}

impl Signing {
    /// Keys from PEM files: a PKCS#8 Ed25519 private key (`openssl genpkey -algorithm
    /// ed25519`) to sign with, and/or its public key (`openssl pkey -pubout`) to verify
    /// with. A private key alone also verifies; given both, they must be a pair.
    pub fn from_files(
        signing_key_file: Option<&std::path::Path>,
        public_key_file: Option<&std::path::Path>,
    ) -> Result<Signing, ModelError> {
        use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
        let read = |setting: &str, p: &std::path::Path| {
            std::fs::read_to_string(p)
                .map_err(|e| ModelError::Input(format!("{setting} {}: {e}", p.display())))
        };
        let signer = signing_key_file
            .map(|p| {
                let pem = read("registry.signing_key_file", p)?;
                ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
                    ModelError::Input(format!(
                        "registry.signing_key_file {}: not a PEM PKCS#8 Ed25519 private key ({e})",
                        p.display()
                    ))
                })
            })
            .transpose()?;
        let verifier = public_key_file
            .map(|p| {
                let pem = read("registry.public_key_file", p)?;
                ed25519_dalek::VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
                    ModelError::Input(format!(
                        "registry.public_key_file {}: not a PEM Ed25519 public key ({e})",
                        p.display()
                    ))
                })
            })
            .transpose()?;
        if let (Some(s), Some(v)) = (&signer, &verifier)
            && s.verifying_key() != *v
        {
            return Err(ModelError::Input(
                "registry.signing_key_file and registry.public_key_file are not a key pair".into(),
            ));
        }
        Ok(Signing {
            verifier: verifier.or_else(|| signer.as_ref().map(|s| s.verifying_key())),
            signer: signer.map(std::sync::Arc::new),
        })
    }

    /// Whether loads check signatures.
    pub fn verifies(&self) -> bool {
        self.verifier.is_some()
    }
}

/// Where the signature of `path` with content `bytes` lives.
fn sig_path(path: &str, bytes: &[u8]) -> String {
    format!("{path}.{}.sig", &sha256_hex(bytes)[..16])
}

pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn check_name(kind: &str, s: &str) -> Result<(), ModelError> {
    if s.is_empty()
        || s.starts_with('_')
        || !s
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(ModelError::Input(format!(
            "{kind} `{s}` must be lowercase letters, digits, `_` or `-` (not starting with `_`)"
        )));
    }
    Ok(())
}

impl Registry {
    /// Opens the registry at `url` (a path, `file://` or `s3://`; `s3` as for the lake).
    pub fn open(url: &str, s3: &[(String, ymera_common::Secret)]) -> Result<Registry, ModelError> {
        Ok(Registry {
            store: Lake::open_with(url, s3)?,
            signing: Signing::default(),
        })
    }

    /// Signs what this registry writes and/or verifies what it loads with `signing`.
    pub fn with_signing(mut self, signing: Signing) -> Registry {
        self.signing = signing;
        self
    }

    /// Publishes the signature of `path`'s `bytes` (before `path` itself), when signing.
    async fn sign(&self, path: &str, bytes: &[u8]) -> Result<(), ModelError> {
        use ed25519_dalek::Signer;
        let Some(key) = &self.signing.signer else {
            return Ok(());
        };
        let sig = hex::encode(key.sign(bytes).to_bytes());
        // named by content: an existing file already holds this very signature
        self.store
            .publish(&sig_path(path, bytes), Bytes::from(sig))
            .await?;
        Ok(())
    }

    /// Checks the signature of `path`'s `bytes`, when verifying.
    async fn check_signature(&self, path: &str, bytes: &[u8]) -> Result<(), ModelError> {
        let Some(key) = &self.signing.verifier else {
            return Ok(());
        };
        let spath = sig_path(path, bytes);
        let text = match self.store.get(&spath).await {
            Ok(b) => b,
            Err(ymera_lake::LakeError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => {
                return Err(ModelError::Integrity(format!(
                    "{path} is not signed (no {spath}): refusing it (registry.public_key_file is set)"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let bad = || {
            ModelError::Integrity(format!(
                "{path}: its signature {spath} does not verify with registry.public_key_file: refusing it"
            ))
        };
        let raw: [u8; 64] = hex::decode(String::from_utf8_lossy(&text).trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        key.verify_strict(bytes, &ed25519_dalek::Signature::from_bytes(&raw))
            .map_err(|_| bad())
    }

    /// The registry's URL.
    pub fn url(&self) -> String {
        self.store.url().to_string()
    }

    /// Names of every model with at least one version directory.
    pub async fn models(&self) -> Result<Vec<String>, ModelError> {
        let mut out: Vec<String> = self
            .store
            .top_level_dirs()
            .await?
            .into_iter()
            .map(|d| d.trim_end_matches('/').to_string())
            .filter(|d| !d.starts_with('_'))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The numbers of `name`'s version directories (manifest or not), ascending.
    async fn version_numbers(&self, name: &str) -> Result<Vec<u64>, ModelError> {
        check_name("model name", name)?;
        let mut nums: Vec<u64> = self
            .store
            .subdirs(name)
            .await?
            .into_iter()
            .filter_map(|d| d.trim_end_matches('/').rsplit('/').next()?.parse().ok())
            .collect();
        nums.sort_unstable();
        Ok(nums)
    }

    /// Every version directory of `name`, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<VersionEntry>, ModelError> {
        let mut out = Vec::new();
        for v in self.version_numbers(name).await? {
            let manifest = match self.store.get(&format!("{name}/{v}/manifest.json")).await {
                Ok(b) => Some(
                    serde_json::from_slice::<Manifest>(&b)
                        .map_err(|e| format!("unreadable manifest: {e}")),
                ),
                Err(ymera_lake::LakeError::Store {
                    source: object_store::Error::NotFound { .. },
                    ..
                }) => None,
                Err(e) => return Err(e.into()),
            };
            out.push(VersionEntry {
                version: v,
                manifest,
            });
        }
        Ok(out)
    }

    /// Registers a new version: claims the next number by creating its artifact, then
    /// writes the manifest. Returns the manifest as stored.
    pub async fn register(
        &self,
        mut artifact: Artifact,
        mut manifest: Manifest,
    ) -> Result<Manifest, ModelError> {
        check_name("model name", &artifact.name)?;
        let name = artifact.name.clone();
        // the next number after every directory, with a manifest or not: an interrupted
        // trainer's number is never reused
        let mut v = self
            .version_numbers(&name)
            .await?
            .last()
            .map_or(1, |n| n + 1);
        loop {
            artifact.version = v.to_string();
            let bytes = serde_json::to_vec(&artifact)
                .map_err(|e| ModelError::Model(format!("serialising the artifact: {e}")))?;
            let path = format!("{name}/{v}/artifact.json");
            manifest.version = v.to_string();
            manifest.artifact = ArtifactRef {
                path: "artifact.json".into(),
                sha256: sha256_hex(&bytes),
                bytes: bytes.len() as u64,
            };
            match self.store.publish(&path, Bytes::from(bytes)).await? {
                Published::Created => break,
                // another trainer claimed this number first
                Published::AlreadyExisted => v += 1,
            }
        }
        let bytes = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| ModelError::Model(format!("serialising the manifest: {e}")))?;
        let mpath = format!("{name}/{v}/manifest.json");
        self.sign(&mpath, &bytes).await?;
        match self.store.publish(&mpath, Bytes::from(bytes)).await? {
            Published::Created => Ok(manifest),
            Published::AlreadyExisted => Err(ModelError::Integrity(format!(
                "{name}/{v}/manifest.json already existed although this process created the artifact"
            ))),
        }
    }

    /// The versions that have a manifest, as strings (for "available" lists).
    async fn version_names(&self, name: &str) -> Result<Vec<String>, ModelError> {
        Ok(self
            .versions(name)
            .await?
            .into_iter()
            .filter(|e| matches!(e.manifest, Some(Ok(_))))
            .map(|e| e.version.to_string())
            .collect())
    }

    async fn not_found_model(&self, name: &str) -> ModelError {
        ModelError::NotFound {
            what: format!("model `{name}`"),
            available: self.models().await.unwrap_or_default(),
        }
    }

    /// Reads and verifies one version: the manifest names this place, the artifact's
    /// sha256 is the manifest's, the artifact names the same model, version and features.
    pub async fn load(&self, name: &str, version: &str) -> Result<LoadedModel, ModelError> {
        check_name("model name", name)?;
        let v: u64 = version.parse().map_err(|_| ModelError::NotFound {
            what: format!("version `{version}` of `{name}`"),
            available: Vec::new(),
        })?;
        let mpath = format!("{name}/{v}/manifest.json");
        let mbytes = match self.store.get(&mpath).await {
            Ok(b) => b,
            Err(ymera_lake::LakeError::Store {
                source: object_store::Error::NotFound { .. },
                ..
            }) => {
                // only now find out which of the two is unknown (no listing per load)
                if !self.models().await?.iter().any(|m| m == name) {
                    return Err(self.not_found_model(name).await);
                }
                let mut available = self.version_names(name).await?;
                available.extend(self.aliases(name).await?.into_iter().map(|a| a.alias));
                return Err(ModelError::NotFound {
                    what: format!("version `{version}` of `{name}`"),
                    available,
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.check_signature(&mpath, &mbytes).await?;
        let manifest_sha256 = sha256_hex(&mbytes);
        let manifest: Manifest = serde_json::from_slice(&mbytes)
            .map_err(|e| ModelError::Integrity(format!("{mpath}: unreadable manifest: {e}")))?;
        if manifest.name != name || manifest.version != v.to_string() {
            return Err(ModelError::Integrity(format!(
                "{mpath} describes {}/{}, not {name}/{v}: refusing a manifest that was moved or swapped",
                manifest.name, manifest.version
            )));
        }
        let apath = format!("{name}/{v}/{}", manifest.artifact.path);
        let abytes = self.store.get(&apath).await?;
        let actual = tokio::task::spawn_blocking(move || (sha256_hex(&abytes), abytes))
            .await
            .map_err(|e| ModelError::Model(format!("hashing task failed: {e}")))?;
        let (sha, abytes) = actual;
        if sha != manifest.artifact.sha256 {
            return Err(ModelError::Integrity(format!(
                "{apath}: sha256 {sha} does not match the manifest's {}: the artifact was changed or corrupted; refusing it",
                manifest.artifact.sha256
            )));
        }
        let width = manifest.features.width();
        let artifact: Artifact = tokio::task::spawn_blocking(move || {
            let value: serde_json::Value =
                serde_json::from_slice(&abytes).map_err(|e| format!("unreadable artifact: {e}"))?;
            crate::model::check_trees(&value, width)?;
            serde_json::from_value(value).map_err(|e| format!("unreadable artifact: {e}"))
        })
        .await
        .map_err(|e| ModelError::Model(format!("artifact check task failed: {e}")))?
        .map_err(|e| ModelError::Integrity(format!("{apath}: {e}; refusing it")))?;
        if artifact.name != manifest.name
            || artifact.version != manifest.version
            || artifact.features != manifest.features
        {
            return Err(ModelError::Integrity(format!(
                "{apath} (model {}/{}) does not belong to manifest {}/{} or its features differ",
                artifact.name, artifact.version, manifest.name, manifest.version
            )));
        }
        Ok(LoadedModel {
            manifest,
            manifest_sha256,
            artifact,
        })
    }

    /// The paths of `alias`'s records, oldest first (record names are zero-padded seqs).
    async fn record_paths(&self, name: &str, alias: &str) -> Result<Vec<String>, ModelError> {
        check_name("model name", name)?;
        check_name("alias", alias)?;
        let mut files: Vec<String> = self
            .store
            .list(&format!("{name}/_aliases/{alias}/"))
            .await?
            .into_iter()
            .filter(|p| p.ends_with(".json"))
            .collect();
        files.sort();
        Ok(files)
    }

    async fn record(&self, path: &str) -> Result<AliasRecord, ModelError> {
        let b = self.store.get(path).await?;
        serde_json::from_slice(&b)
            .map_err(|e| ModelError::Integrity(format!("{path}: unreadable alias record: {e}")))
    }

    /// Every record of `alias`, oldest first.
    pub async fn history(&self, name: &str, alias: &str) -> Result<Vec<AliasRecord>, ModelError> {
        let mut out = Vec::new();
        for f in self.record_paths(name, alias).await? {
            out.push(self.record(&f).await?);
        }
        Ok(out)
    }

    /// The current record of `alias`, if it was ever set (one listing, one read: the
    /// server calls this for every alias on every reload tick).
    /// With a public key, the record's signature is checked.
    pub async fn alias(&self, name: &str, alias: &str) -> Result<Option<AliasRecord>, ModelError> {
        let Some(f) = self.record_paths(name, alias).await?.pop() else {
            return Ok(None);
        };
        let b = self.store.get(&f).await?;
        self.check_signature(&f, &b).await?;
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| ModelError::Integrity(format!("{f}: unreadable alias record: {e}")))
    }

    /// The current record of every alias of `name`.
    pub async fn aliases(&self, name: &str) -> Result<Vec<AliasRecord>, ModelError> {
        let mut out = Vec::new();
        for d in self.store.subdirs(&format!("{name}/_aliases")).await? {
            let alias = d
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            if let Some(r) = self.alias(name, &alias).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The version `alias` pointed at, at time `t`.
    pub async fn live_at(
        &self,
        name: &str,
        alias: &str,
        t: DateTime<Utc>,
    ) -> Result<Option<AliasRecord>, ModelError> {
        Ok(self
            .history(name, alias)
            .await?
            .into_iter()
            .rfind(|r| r.at <= t))
    }

    /// The reference a caller means when it names no version: the `champion` alias when
    /// it is set (loading through it checks the manifest hash recorded at promotion),
    /// else the newest version that has a manifest.
    pub async fn default_ref(&self, name: &str) -> Result<String, ModelError> {
        if self.alias(name, "champion").await?.is_some() {
            return Ok("champion".into());
        }
        self.versions(name)
            .await?
            .iter()
            .rev()
            .find(|e| matches!(e.manifest, Some(Ok(_))))
            .map(|e| e.version.to_string())
            .ok_or_else(|| ModelError::NotFound {
                what: format!("a registered version of `{name}`"),
                available: Vec::new(),
            })
    }

    /// Registers a model that is not trained from a spec (a forecaster's refit recipe, an
    /// anomaly detector): its JSON as the artifact, the rest of the manifest from `m`.
    pub async fn register_recipe_model(&self, m: RecipeModel) -> Result<Manifest, ModelError> {
        let artifact = Artifact {
            format: 1,
            name: m.name.clone(),
            version: String::new(),
            task: m.task,
            features: FeatureSchema(Vec::new()),
            estimator: Estimator::Recipe {
                kind: m.kind,
                recipe: m.recipe,
            },
        };
        let gate_passed = m.gate.iter().all(|g| g.passed);
        let manifest = Manifest {
            name: m.name,
            version: String::new(),
            created_at: Utc::now(),
            task: m.task,
            algorithm: m.algorithm,
            params: Params::default(),
            calibration: m.calibration,
            label: Some(m.series.clone()),
            metrics: m.metrics,
            gate: m.gate,
            gate_passed,
            lineage: Lineage {
                query: m.query.unwrap_or_else(|| m.series.clone()),
                tables: Vec::new(),
                rows: m.points,
                train_rows: m.points,
                calibration_rows: 0,
                holdout_rows: m.holdout_points,
                skipped_rows: 0,
                content_sha256: m.content_sha256,
                // a series' hash is over its values in time order
                content_sha256_sorted: false,
                time_range: m.time_range,
                holdout_from: String::new(),
            },
            features: FeatureSchema(Vec::new()),
            artifact: ArtifactRef {
                path: String::new(),
                sha256: String::new(),
                bytes: 0,
            },
            spec_sha256: String::new(),
            fit_seconds: m.fit_seconds,
            crate_version: env!("CARGO_PKG_VERSION").into(),
            status: "registered".into(),
        };
        self.register(artifact, manifest).await
    }

    /// `version` may be a number or an alias; returns the concrete version and, for an
    /// alias, its current record.
    pub async fn resolve(
        &self,
        name: &str,
        version: &str,
    ) -> Result<(String, Option<AliasRecord>), ModelError> {
        if version.parse::<u64>().is_ok() {
            return Ok((version.to_string(), None));
        }
        check_name("alias", version)?;
        match self.alias(name, version).await? {
            Some(r) => Ok((r.version.clone(), Some(r))),
            None => {
                if !self.models().await?.iter().any(|m| m == name) {
                    return Err(self.not_found_model(name).await);
                }
                let mut available = self.version_names(name).await?;
                available.extend(self.aliases(name).await?.into_iter().map(|a| a.alias));
                Err(ModelError::NotFound {
                    what: format!("alias `{version}` of `{name}`"),
                    available,
                })
            }
        }
    }

    /// Loads the version `version` (number or alias) names; through an alias, the
    /// manifest must still hash to what was promoted.
    pub async fn load_resolved(
        &self,
        name: &str,
        version: &str,
    ) -> Result<LoadedModel, ModelError> {
        let (v, record) = self.resolve(name, version).await?;
        let loaded = self.load(name, &v).await?;
        if let Some(r) = record
            && r.manifest_sha256 != loaded.manifest_sha256
        {
            return Err(ModelError::Integrity(format!(
                "the manifest of {name}/{v} changed since it was made `{}` (sha256 {} then, {} now); refusing it",
                r.alias, r.manifest_sha256, loaded.manifest_sha256
            )));
        }
        Ok(loaded)
    }

    /// Moves `alias` to `version` if it still points at `expected` (when given; `None`
    /// inside means "unset"). The target must load cleanly and, for a promotion, have
    /// passed its gate. Returns the new record.
    pub async fn move_alias(
        &self,
        name: &str,
        alias: &str,
        version: &str,
        expected: Option<Option<&str>>,
        actor: &str,
        action: &str,
    ) -> Result<AliasRecord, ModelError> {
        check_name("alias", alias)?;
        if alias.parse::<u64>().is_ok() {
            return Err(ModelError::Input(format!(
                "alias `{alias}` is a number; aliases must not look like versions"
            )));
        }
        let target = self.load(name, version).await?;
        if action == "promote" && !target.manifest.gate_passed {
            let failed: Vec<String> = target
                .manifest
                .gate
                .iter()
                .filter(|c| !c.passed)
                .map(|c| match c.actual {
                    Some(a) => format!("{} (actual {a:.4})", c.threshold),
                    None => format!("{} (not measured)", c.threshold),
                })
                .collect();
            return Err(ModelError::Gate(format!(
                "{name}/{version} did not pass its promotion gate: {}",
                failed.join("; ")
            )));
        }
        let current = self.alias(name, alias).await?;
        let current_version = current.as_ref().map(|r| r.version.as_str());
        if let Some(exp) = expected
            && exp != current_version
        {
            return Err(ModelError::Conflict(format!(
                "{name}@{alias} points at {}, not the expected {}",
                current_version.unwrap_or("nothing"),
                exp.unwrap_or("nothing")
            )));
        }
        let seq = current.as_ref().map(|r| r.seq + 1).unwrap_or(1);
        let record = AliasRecord {
            alias: alias.to_string(),
            seq,
            version: target.manifest.version.clone(),
            previous: current.as_ref().map(|r| r.version.clone()),
            manifest_sha256: target.manifest_sha256.clone(),
            at: Utc::now(),
            actor: actor.to_string(),
            action: action.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&record)
            .map_err(|e| ModelError::Model(format!("serialising the alias record: {e}")))?;
        let rpath = format!("{name}/_aliases/{alias}/{seq:010}.json");
        self.sign(&rpath, &bytes).await?;
        match self.store.publish(&rpath, Bytes::from(bytes)).await? {
            Published::Created => Ok(record),
            Published::AlreadyExisted => Err(ModelError::Conflict(format!(
                "{name}@{alias} was moved by someone else at the same time (record {seq} exists); look again and retry"
            ))),
        }
    }

    /// Points `alias` back at the version it pointed at before its current one.
    pub async fn rollback(
        &self,
        name: &str,
        alias: &str,
        actor: &str,
    ) -> Result<AliasRecord, ModelError> {
        let current = self
            .alias(name, alias)
            .await?
            .ok_or_else(|| ModelError::NotFound {
                what: format!("alias `{alias}` of `{name}`"),
                available: Vec::new(),
            })?;
        let previous = current.previous.clone().ok_or_else(|| {
            ModelError::Conflict(format!(
                "{name}@{alias} has no earlier version to roll back to (it was first set to {})",
                current.version
            ))
        })?;
        self.move_alias(
            name,
            alias,
            &previous,
            Some(Some(&current.version)),
            actor,
            "rollback",
        )
        .await
    }
}

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
