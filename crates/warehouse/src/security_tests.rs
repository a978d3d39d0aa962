//! API keys and the audit chain, on SQLite and on the real PostgreSQL (as `tests.rs`).

use crate::tests::{Db, postgres, sqlite};

use super::*;

fn entry(i: usize) -> AuditEntry {
    AuditEntry {
        actor: format!("key{i}"),
        role: "admin".into(),
        action: "models.promote".into(),
        target: "churn@champion".into(),
        outcome: "ok".into(),
        detail: format!(r#"{{"version":"{i}"}}"#),
    }
}

async fn keys_create_find_revoke(db: Db) {
    let wh = &db.wh;
    assert!(!wh.has_keys().await.unwrap());
    let (id, key) = wh.create_key("analyst", "notebook").await.unwrap();
    let (id2, key2) = wh.create_key("admin", "ops").await.unwrap();
    assert_ne!(id, id2);
    assert!(key.starts_with(&format!("ymk_{id}_")), "{key}");
    assert_eq!(key.len(), "ymk_".len() + id.len() + 1 + 64);
    assert!(wh.has_keys().await.unwrap());

    let found = wh.find_key(&key).await.unwrap().expect("key found");
    assert_eq!(
        (found.id.as_str(), found.role.as_str()),
        (id.as_str(), "analyst")
    );
    assert_eq!(found.name, "notebook");
    assert!(found.revoked_at.is_none());
    assert_eq!(wh.find_key(&key2).await.unwrap().unwrap().role, "admin");
    // a wrong secret with the right id, or no prefix, finds nothing
    let wrong = format!("ymk_{id}_{}", "0".repeat(64));
    assert!(wh.find_key(&wrong).await.unwrap().is_none());
    assert!(wh.find_key("not-a-key").await.unwrap().is_none());

    let listed = wh.list_keys().await.unwrap();
    assert_eq!(listed.len(), 2);

    assert!(wh.revoke_key(&id).await.unwrap());
    assert!(!wh.revoke_key(&id).await.unwrap(), "revoked twice");
    assert!(!wh.revoke_key("nosuchid").await.unwrap());
    assert!(
        wh.find_key(&key).await.unwrap().is_none(),
        "revoked key found"
    );
    assert!(wh.find_key(&key2).await.unwrap().is_some());
    let listed = wh.list_keys().await.unwrap();
    let revoked = listed.iter().find(|k| k.id == id).unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(wh.has_keys().await.unwrap(), "revoked keys still count");

    // neither table is visible to analyst SQL
    let tables = wh.tables().await.unwrap();
    assert!(
        !tables
            .iter()
            .any(|t| t == API_KEYS_TABLE || t == AUDIT_TABLE),
        "{tables:?}"
    );
}

async fn raw_hash_column(db: &Db, id: &str) -> String {
    let sql = format!("SELECT hash FROM {API_KEYS_TABLE} WHERE id = '{id}'");
    on_pool!(db.wh, p => sqlx::query_scalar(&sql).fetch_one(p).await).unwrap()
}

async fn stores_only_the_hash(db: Db) {
    let (id, key) = db.wh.create_key("agent", "").await.unwrap();
    let stored = raw_hash_column(&db, &id).await;
    assert_eq!(stored, sha256_hex(&key));
    assert!(!stored.contains(&key[4 + id.len() + 1..]));
}

async fn append(wh: &Warehouse, n: usize) {
    for i in 1..=n {
        let row = wh.audit_append(&entry(i)).await.unwrap();
        assert_eq!(row.seq, i as i64);
    }
}

async fn audit_chain_verifies(db: Db) {
    let wh = &db.wh;
    let empty = wh.audit_verify().await.unwrap();
    assert_eq!((empty.rows, empty.first_bad, empty.last), (0, None, None));
    append(wh, 5).await;
    let report = wh.audit_verify().await.unwrap();
    assert_eq!(report.rows, 5);
    assert_eq!(report.first_bad, None);
    let rows = wh.audit_rows(0, 100).await.unwrap();
    assert_eq!(rows[0].prev_hash, GENESIS_HASH);
    for w in rows.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].hash);
    }
    assert_eq!(report.last, Some((5, rows[4].hash.clone())));
}

async fn concurrent_appends_keep_one_chain(db: Db) {
    let mut tasks = Vec::new();
    for t in 0..4 {
        let wh = db.wh.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                wh.audit_append(&entry(t * 10 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let report = db.wh.audit_verify().await.unwrap();
    assert_eq!((report.rows, report.first_bad), (20, None));
}

async fn tampered_detail_is_found_at_its_seq(db: Db) {
    append(&db.wh, 6).await;
    db.wh
        .run_trusted_script(&format!(
            "UPDATE {AUDIT_TABLE} SET detail = '{{\"version\":\"99\"}}' WHERE seq = 4"
        ))
        .await
        .unwrap();
    let report = db.wh.audit_verify().await.unwrap();
    assert_eq!(report.rows, 6);
    let (seq, why) = report.first_bad.expect("tampering found");
    assert_eq!(seq, 4, "{why}");
    assert!(why.contains("edited"), "{why}");
}

async fn deleted_row_is_found(db: Db) {
    append(&db.wh, 6).await;
    db.wh
        .run_trusted_script(&format!("DELETE FROM {AUDIT_TABLE} WHERE seq = 3"))
        .await
        .unwrap();
    let report = db.wh.audit_verify().await.unwrap();
    assert_eq!(report.rows, 5);
    let (seq, why) = report.first_bad.expect("deletion found");
    assert_eq!(seq, 4, "{why}");
    assert!(why.contains("missing"), "{why}");
}

async fn reordered_rows_are_found(db: Db) {
    append(&db.wh, 4).await;
    // swap the seq of rows 2 and 3
    db.wh
        .run_trusted_script(&format!(
            "UPDATE {AUDIT_TABLE} SET seq = 100 WHERE seq = 2;
             UPDATE {AUDIT_TABLE} SET seq = 2 WHERE seq = 3;
             UPDATE {AUDIT_TABLE} SET seq = 3 WHERE seq = 100;"
        ))
        .await
        .unwrap();
    let report = db.wh.audit_verify().await.unwrap();
    assert_eq!(report.first_bad.map(|b| b.0), Some(2));
}

#[tokio::test]
async fn sqlite_keys() {
    keys_create_find_revoke(sqlite().await).await;
}
#[tokio::test]
async fn postgres_keys() {
    keys_create_find_revoke(postgres("keys").await).await;
}
#[tokio::test]
async fn sqlite_keys_hash_only() {
    stores_only_the_hash(sqlite().await).await;
}
#[tokio::test]
async fn postgres_keys_hash_only() {
    stores_only_the_hash(postgres("keyhash").await).await;
}
#[tokio::test]
async fn sqlite_audit_chain() {
    audit_chain_verifies(sqlite().await).await;
}
#[tokio::test]
async fn postgres_audit_chain() {
    audit_chain_verifies(postgres("audit").await).await;
}
#[tokio::test]
async fn sqlite_audit_concurrent() {
    concurrent_appends_keep_one_chain(sqlite().await).await;
}
#[tokio::test]
async fn postgres_audit_concurrent() {
    concurrent_appends_keep_one_chain(postgres("auditconc").await).await;
}
#[tokio::test]
async fn sqlite_audit_tampered() {
    tampered_detail_is_found_at_its_seq(sqlite().await).await;
}
#[tokio::test]
async fn postgres_audit_tampered() {
    tampered_detail_is_found_at_its_seq(postgres("audittamper").await).await;
}
#[tokio::test]
async fn sqlite_audit_deleted() {
    deleted_row_is_found(sqlite().await).await;
}
#[tokio::test]
async fn postgres_audit_deleted() {
    deleted_row_is_found(postgres("auditdel").await).await;
}
#[tokio::test]
async fn sqlite_audit_reordered() {
    reordered_rows_are_found(sqlite().await).await;
}
#[tokio::test]
async fn postgres_audit_reordered() {
    reordered_rows_are_found(postgres("auditreorder").await).await;
}
