//! API keys and the tamper-evident audit log, stored beside `_ymera_offsets`.
//!
//! - `_ymera_api_keys`: one row per key. Only the SHA-256 of the full key is stored; the key
//!   itself (`ymk_<id>_<64 hex>`) is shown once by whoever created it. A key is found by
//!   the hash of what a client presents, and a revoked key is never found again.
//! - `_ymera_audit`: append-only and hash-chained. Row `seq` stores
//!   `hash = sha256_hex(prev_hash + "\n" + canonical(row))` where `prev_hash` is the hash
//!   of row `seq - 1` (64 zeros for row 1) and `canonical` lists seq, at, actor, role,
//!   action, target, outcome and detail, each as `<byte length>:<bytes>\n`. Editing,
//!   deleting or reordering a row breaks the chain at that row; [`Warehouse::audit_verify`]
//!   names the first broken row. Truncating the tail is not detectable from the table
//!   alone: keep the last `(seq, hash)` somewhere else to check it.
//! - With an audit key ([`Warehouse::with_audit_key`], `audit.hmac_key_file`, kept away
//!   from the lake and the warehouse), a row's hash is
//!   `hmac-sha256:<hex of HMAC-SHA256(key, the same text)>` instead: whoever can write to
//!   the database but does not hold the key cannot rewrite a row and its successors with
//!   matching hashes. Rows written before a key was configured stay plain; a plain row
//!   after a signed one is a rewrite.
//!
//! Roles are plain text here: the vocabulary (`agent`, `analyst`, ...) belongs to `serve`.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Result, WarehouseError};
use crate::{Pool, Warehouse};

/// API keys: id, SHA-256 of the full key, role, name, created and revoked times.
pub const API_KEYS_TABLE: &str = "_ymera_api_keys";

/// The hash-chained audit log.
pub const AUDIT_TABLE: &str = "_ymera_audit";

/// Every API key starts with this.
pub const KEY_PREFIX: &str = "ymk_";

/// `prev_hash` of the first audit row.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Attempts of [`Warehouse::audit_append`] when another writer took the same `seq`.
const APPEND_ATTEMPTS: u32 = 8;

/// One API key as stored (never the key itself, never its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The public part of the key (`ymk_<id>_...`).
    pub id: String,
    pub role: String,
    pub name: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, when revoked.
    pub revoked_at: Option<String>,
}

/// What happened, for [`Warehouse::audit_append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who: a key id, a JWT subject, `cli`, or `anonymous`.
    pub actor: String,
    /// The actor's role (empty when unknown).
    pub role: String,
    /// What, dotted: `auth.failure`, `keys.create`, `models.promote`, `sql.query`.
    pub action: String,
    /// On what: a route (`POST /v1/sql`), a key id, a model alias.
    pub target: String,
    /// How it ended: an HTTP status or `ok`.
    pub outcome: String,
    /// Details as JSON text, stored and hashed exactly as given.
    pub detail: String,
}

/// One stored audit row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    pub seq: i64,
    /// RFC 3339 (UTC, microseconds).
    pub at: String,
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// The secret audit rows are signed with. Never shown by `Debug`.
#[derive(Clone)]
pub struct AuditKey(std::sync::Arc<Vec<u8>>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(<redacted>)")
    }
}

/// The prefix of a signed row's hash.
pub const HMAC_PREFIX: &str = "hmac-sha256:";

impl AuditKey {
    /// A key from the contents of a key file: 64 or more hex digits, or 32 or more raw
    /// bytes (surrounding whitespace ignored).
    pub fn from_file_contents(bytes: &[u8]) -> std::result::Result<AuditKey, String> {
        let text = String::from_utf8_lossy(bytes);
        let trimmed = text.trim();
        let key = if trimmed.len() >= 64
            && trimmed.len().is_multiple_of(2)
            && trimmed.bytes().all(|b| b.is_ascii_hexdigit())
        {
            (0..trimmed.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&trimmed[i..i + 2], 16).expect("hex digits"))
                .collect()
        } else {
            bytes.to_vec()
        };
        if key.len() < 32 {
            return Err(format!(
                "an audit key needs at least 32 bytes (or 64 hex digits); this one has {}: \
                 create one with `openssl rand -hex 32`",
                key.len()
            ));
        }
        Ok(AuditKey(std::sync::Arc::new(key)))
    }

    fn sign(&self, text: &str) -> String {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(text.as_bytes());
        format!("{HMAC_PREFIX}{}", hex::encode(mac.finalize().into_bytes()))
    }
}

/// The result of [`Warehouse::audit_verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// Rows checked.
    pub rows: u64,
    /// Rows whose hash is an HMAC (the rest were written before a key was configured).
    pub signed: u64,
    /// Signed rows whose HMAC could not be checked (no key given).
    pub unchecked: u64,
    /// The first row that breaks the chain, and why.
    pub first_bad: Option<(i64, String)>,
    /// The last row's seq and hash (record it elsewhere to detect a truncated tail).
    pub last: Option<(i64, String)>,
}

/// SHA-256 of `text` as lowercase hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// `n` bytes from the operating system's CSPRNG (getrandom(2) and its kin).
fn random_bytes(n: usize) -> Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf)
        .map_err(|e| WarehouseError::External(format!("the OS random source failed: {e}")))?;
    Ok(buf)
}

/// The hash of an audit row (see the module docs for the canonical form).
pub fn audit_hash(prev_hash: &str, seq: i64, at: &str, e: &AuditEntry) -> String {
    sha256_hex(&audit_text(prev_hash, seq, at, e))
}

/// The text an audit row's hash is taken of.
fn audit_text(prev_hash: &str, seq: i64, at: &str, e: &AuditEntry) -> String {
    let mut text = String::from(prev_hash);
    text.push('\n');
    let seq = seq.to_string();
    for field in [
        seq.as_str(),
        at,
        &e.actor,
        &e.role,
        &e.action,
        &e.target,
        &e.outcome,
        &e.detail,
    ] {
        text.push_str(&field.len().to_string());
        text.push(':');
        text.push_str(field);
        text.push('\n');
    }
    text
}

/// The hash a row gets: signed with `key` when there is one.
fn row_hash(key: Option<&AuditKey>, prev_hash: &str, seq: i64, at: &str, e: &AuditEntry) -> String {
    let text = audit_text(prev_hash, seq, at, e);
    match key {
        Some(k) => k.sign(&text),
        None => sha256_hex(&text),
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

type KeyTuple = (String, String, String, String, Option<String>);
type AuditTuple = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

fn key_record((id, role, name, created_at, revoked_at): KeyTuple) -> KeyRecord {
    KeyRecord {
        id,
        role,
        name,
        created_at,
        revoked_at,
    }
}

fn audit_row(t: AuditTuple) -> AuditRow {
    let (seq, at, actor, role, action, target, outcome, detail, prev_hash, hash) = t;
    AuditRow {
        seq,
        at,
        entry: AuditEntry {
            actor,
            role,
            action,
            target,
            outcome,
            detail,
        },
        prev_hash,
        hash,
    }
}

impl Warehouse {
    /// Creates the key and audit tables when missing (called by `connect`).
    pub(crate) async fn ensure_security_tables(&self) -> Result<()> {
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {API_KEYS_TABLE} (
                id TEXT PRIMARY KEY,
                hash TEXT NOT NULL,
                role TEXT NOT NULL,
                name TEXT NOT NULL,
                created_at TEXT NOT NULL,
                revoked_at TEXT);
             CREATE UNIQUE INDEX IF NOT EXISTS {API_KEYS_TABLE}_hash ON {API_KEYS_TABLE} (hash);
             CREATE TABLE IF NOT EXISTS {AUDIT_TABLE} (
                seq BIGINT PRIMARY KEY,
                at TEXT NOT NULL,
                actor TEXT NOT NULL,
                role TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                outcome TEXT NOT NULL,
                detail TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL)"
        ))
        .await
    }

    /// Creates a key for `role` named `name`; returns its id and the full key
    /// `ymk_<id>_<64 hex>`. Only the key's SHA-256 is stored: the key cannot be shown again.
    pub async fn create_key(&self, role: &str, name: &str) -> Result<(String, String)> {
        let d = self.dialect();
        let sql = format!(
            "INSERT INTO {API_KEYS_TABLE} (id, hash, role, name, created_at, revoked_at)
             VALUES ({}, {}, {}, {}, {}, NULL)",
            d.ph(1),
            d.ph(2),
            d.ph(3),
            d.ph(4),
            d.ph(5)
        );
        // a 48-bit id can collide with an existing one: draw again
        for _ in 0..4 {
            let id = hex::encode(random_bytes(6)?);
            let key = format!("{KEY_PREFIX}{id}_{}", hex::encode(random_bytes(32)?));
            let res = on_pool!(self, p => sqlx::query(&sql)
                .bind(&id)
                .bind(sha256_hex(&key))
                .bind(role)
                .bind(name)
                .bind(now())
                .execute(p)
                .await
                .map(|_| ()));
            match res {
                Ok(()) => return Ok((id, key)),
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(WarehouseError::from_sqlx(e, &self.shown)),
            }
        }
        Err(WarehouseError::Database(format!(
            "warehouse {}: no free key id after 4 attempts",
            self.shown
        )))
    }

    /// Every key, oldest first (revoked ones included).
    pub async fn list_keys(&self) -> Result<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT id, role, name, created_at, revoked_at FROM {API_KEYS_TABLE}
             ORDER BY created_at, id"
        );
        let rows: Vec<KeyTuple> = on_pool!(self, p => sqlx::query_as(&sql).fetch_all(p).await)
            .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
        Ok(rows.into_iter().map(key_record).collect())
    }

    /// Revokes key `id`. Returns false when there is no such key or it was already revoked.
    pub async fn revoke_key(&self, id: &str) -> Result<bool> {
        let d = self.dialect();
        let sql = format!(
            "UPDATE {API_KEYS_TABLE} SET revoked_at = {} WHERE id = {} AND revoked_at IS NULL",
            d.ph(1),
            d.ph(2)
        );
        let n = on_pool!(self, p => sqlx::query(&sql)
            .bind(now())
            .bind(id)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
        Ok(n > 0)
    }

    /// The unrevoked key whose SHA-256 is that of `full_key`.
    pub async fn find_key(&self, full_key: &str) -> Result<Option<KeyRecord>> {
        if !full_key.starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let sql = format!(
            "SELECT id, role, name, created_at, revoked_at FROM {API_KEYS_TABLE}
             WHERE hash = {} AND revoked_at IS NULL",
            self.dialect().ph(1)
        );
        let hash = sha256_hex(full_key);
        let row: Option<KeyTuple> =
            on_pool!(self, p => sqlx::query_as(&sql).bind(&hash).fetch_optional(p).await)
                .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
        Ok(row.map(key_record))
    }

    /// Whether any key was ever created (revoked ones count: revoking every key does not
    /// make `ymera serve` create a new admin key).
    pub async fn has_keys(&self) -> Result<bool> {
        let sql = format!("SELECT COUNT(*) FROM {API_KEYS_TABLE}");
        let n: i64 = on_pool!(self, p => sqlx::query_scalar(&sql).fetch_one(p).await)
            .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
        Ok(n > 0)
    }

    /// Appends `entry` to the audit log and returns its row. The last row is read and the
    /// next one inserted in one transaction; when a concurrent writer took the same `seq`
    /// (a primary-key conflict, or SQLite's busy snapshot) it starts again, a few times.
    pub async fn audit_append(&self, entry: &AuditEntry) -> Result<AuditRow> {
        let mut last_err = None;
        for attempt in 0..APPEND_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(5 << attempt.min(6))).await;
            }
            match self.try_append(entry).await {
                Ok(row) => return Ok(row),
                Err(e) => {
                    let conflict = is_unique_violation(&e);
                    let err = WarehouseError::from_sqlx(e, &self.shown);
                    if !conflict && !matches!(err, WarehouseError::External(_)) {
                        return Err(err);
                    }
                    last_err = Some(err);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            WarehouseError::Database(format!("warehouse {}: audit append failed", self.shown))
        }))
    }

    async fn try_append(&self, entry: &AuditEntry) -> std::result::Result<AuditRow, sqlx::Error> {
        let d = self.dialect();
        let last_sql = format!("SELECT seq, hash FROM {AUDIT_TABLE} ORDER BY seq DESC LIMIT 1");
        let insert = format!(
            "INSERT INTO {AUDIT_TABLE}
             (seq, at, actor, role, action, target, outcome, detail, prev_hash, hash)
             VALUES ({})",
            (1..=10).map(|i| d.ph(i)).collect::<Vec<_>>().join(", ")
        );
        let at = now();
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let last: Option<(i64, String)> =
                sqlx::query_as(&last_sql).fetch_optional(&mut *tx).await?;
            let (seq, prev_hash) = match last {
                Some((s, h)) => (s + 1, h),
                None => (1, GENESIS_HASH.to_string()),
            };
            let hash = row_hash(self.audit_key.as_ref(), &prev_hash, seq, &at, entry);
            sqlx::query(&insert)
                .bind(seq)
                .bind(&at)
                .bind(&entry.actor)
                .bind(&entry.role)
                .bind(&entry.action)
                .bind(&entry.target)
                .bind(&entry.outcome)
                .bind(&entry.detail)
                .bind(&prev_hash)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(AuditRow {
                seq,
                at: at.clone(),
                entry: entry.clone(),
                prev_hash,
                hash,
            })
        })
    }

    /// Up to `limit` audit rows with `seq > after`, in seq order.
    pub async fn audit_rows(&self, after: i64, limit: i64) -> Result<Vec<AuditRow>> {
        let d = self.dialect();
        let sql = format!(
            "SELECT seq, at, actor, role, action, target, outcome, detail, prev_hash, hash
             FROM {AUDIT_TABLE} WHERE seq > {} ORDER BY seq LIMIT {}",
            d.ph(1),
            d.ph(2)
        );
        let rows: Vec<AuditTuple> = on_pool!(self, p => sqlx::query_as(&sql)
            .bind(after)
            .bind(limit)
            .fetch_all(p)
            .await)
        .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
        Ok(rows.into_iter().map(audit_row).collect())
    }

    /// Signs the audit rows this handle appends with `key`, and checks signed rows with it.
    pub fn with_audit_key(mut self, key: AuditKey) -> Warehouse {
        self.audit_key = Some(key);
        self
    }

    /// Walks the audit log in seq order and finds the first row whose seq does not follow
    /// the previous one, whose `prev_hash` is not the previous row's hash, whose hash does
    /// not match its fields (its HMAC, for a signed row, when this handle has the key), or
    /// that is plain after a signed one.
    pub async fn audit_verify(&self) -> Result<AuditReport> {
        const PAGE: i64 = 1000;
        let mut report = AuditReport {
            rows: 0,
            signed: 0,
            unchecked: 0,
            first_bad: None,
            last: None,
        };
        let mut prev: Option<(i64, String)> = None;
        loop {
            let after = prev.as_ref().map_or(i64::MIN, |(s, _)| *s);
            let page = self.audit_rows(after, PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for row in page {
                report.rows += 1;
                let signed = row.hash.starts_with(HMAC_PREFIX);
                if report.first_bad.is_none() {
                    let why = if !signed && report.signed > 0 {
                        Some(
                            "a plain (unsigned) hash after signed rows: the row was rewritten by \
                             someone without the audit key"
                                .to_string(),
                        )
                    } else {
                        check_row(prev.as_ref(), &row, self.audit_key.as_ref())
                    };
                    if let Some(why) = why {
                        report.first_bad = Some((row.seq, why));
                    }
                }
                if signed {
                    report.signed += 1;
                    if self.audit_key.is_none() {
                        report.unchecked += 1;
                    }
                }
                prev = Some((row.seq, row.hash));
            }
            if !full {
                break;
            }
        }
        report.last = prev;
        Ok(report)
    }
}

/// Why `row` does not follow `prev` (None for the first row), if it does not. A signed
/// row's HMAC is checked when `key` is given.
fn check_row(
    prev: Option<&(i64, String)>,
    row: &AuditRow,
    key: Option<&AuditKey>,
) -> Option<String> {
    let (want_seq, want_prev) = match prev {
        Some((s, h)) => (s + 1, h.as_str()),
        None => (1, GENESIS_HASH),
    };
    if row.seq != want_seq {
        return Some(match prev {
            Some((s, _)) => format!(
                "seq {} follows seq {s}: row(s) {want_seq}..{} are missing",
                row.seq,
                row.seq - 1
            ),
            None => format!(
                "the log starts at seq {} instead of 1: earlier rows are missing",
                row.seq
            ),
        });
    }
    if row.prev_hash != want_prev {
        return Some(format!(
            "prev_hash {} is not the hash of the previous row ({want_prev})",
            row.prev_hash
        ));
    }
    let hash = if row.hash.starts_with(HMAC_PREFIX) {
        match key {
            Some(k) => k.sign(&audit_text(&row.prev_hash, row.seq, &row.at, &row.entry)),
            // cannot be checked without the key: the report counts it
            None => return None,
        }
    } else {
        audit_hash(&row.prev_hash, row.seq, &row.at, &row.entry)
    };
    if row.hash != hash {
        return Some(format!(
            "the row's fields do not match its hash (stored {}, computed {hash}): it was edited",
            row.hash
        ));
    }
    None
}

#[cfg(test)]
#[path = "security_tests.rs"]
mod tests;
