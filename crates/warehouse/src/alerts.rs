//! `_ymera_alert_states`: what operators and the Manager Agent did with each alert. The
//! lake's alert tables say when the detector opened and closed an alert and are
//! append-only; an alert with no row here is `open`. A row moves forward only:
//! `acknowledged` → `resolved`, never back, and asking for the state an alert is already
//! in changes nothing (a retried request is harmless).

use std::collections::HashMap;

use crate::error::{Result, WarehouseError};
use crate::security::now;
use crate::{Pool, Warehouse};

/// One row per alert that left `open`.
pub const ALERT_STATES_TABLE: &str = "_ymera_alert_states";

/// The stored state of one alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertState {
    pub alert_id: String,
    /// `acknowledged` or `resolved`.
    pub state: String,
    pub acknowledged_at: Option<String>,
    pub acknowledged_by: Option<String>,
    pub resolved_at: Option<String>,
    pub resolved_by: Option<String>,
    /// The last note given with a change.
    pub note: Option<String>,
}

/// What [`Warehouse::acknowledge_alert`] or [`Warehouse::resolve_alert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertChange {
    /// The state moved; the row as it is now.
    Changed(AlertState),
    /// The alert already was in that state; the row as it was.
    Unchanged(AlertState),
    /// The move is not allowed (acknowledging a resolved alert); the row as it is.
    Refused(AlertState),
}

type StateTuple = (
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn state_of(t: StateTuple) -> AlertState {
    AlertState {
        alert_id: t.0,
        state: t.1,
        acknowledged_at: t.2,
        acknowledged_by: t.3,
        resolved_at: t.4,
        resolved_by: t.5,
        note: t.6,
    }
}

const COLUMNS: &str =
    "alert_id, state, acknowledged_at, acknowledged_by, resolved_at, resolved_by, note";

impl Warehouse {
    /// Creates the alert-state table when missing (called by `connect`).
    pub(crate) async fn ensure_alert_states(&self) -> Result<()> {
        self.execute(&format!(
            "CREATE TABLE IF NOT EXISTS {ALERT_STATES_TABLE} (
                alert_id TEXT PRIMARY KEY,
                state TEXT NOT NULL,
                acknowledged_at TEXT,
                acknowledged_by TEXT,
                resolved_at TEXT,
                resolved_by TEXT,
                note TEXT)"
        ))
        .await
    }

    /// The stored state of each of `ids` that has one.
    pub async fn alert_states(&self, ids: &[String]) -> Result<HashMap<String, AlertState>> {
        let mut out = HashMap::new();
        // bound parameters per statement stay far below SQLite's and PostgreSQL's limits
        for chunk in ids.chunks(500) {
            let d = self.dialect();
            let list: Vec<String> = (1..=chunk.len()).map(|i| d.ph(i)).collect();
            let sql = format!(
                "SELECT {COLUMNS} FROM {ALERT_STATES_TABLE} WHERE alert_id IN ({})",
                list.join(", ")
            );
            let rows: Vec<StateTuple> = on_pool!(self, p => {
                let mut q = sqlx::query_as(&sql);
                for id in chunk {
                    q = q.bind(id);
                }
                q.fetch_all(p).await
            })
            .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
            out.extend(rows.into_iter().map(|t| (t.0.clone(), state_of(t))));
        }
        Ok(out)
    }

    /// Marks alert `id` acknowledged by `actor`; refused once it is resolved.
    pub async fn acknowledge_alert(
        &self,
        id: &str,
        actor: &str,
        note: Option<&str>,
    ) -> Result<AlertChange> {
        let d = self.dialect();
        let sql = format!(
            "INSERT INTO {ALERT_STATES_TABLE} ({COLUMNS})
             VALUES ({p1}, 'acknowledged', {p2}, {p3}, NULL, NULL, {p4})
             ON CONFLICT (alert_id) DO NOTHING",
            p1 = d.ph(1),
            p2 = d.ph(2),
            p3 = d.ph(3),
            p4 = d.ph(4)
        );
        let (n, row) = self.write_state(&sql, id, actor, note).await?;
        Ok(match (n, row.state.as_str()) {
            (1, _) => AlertChange::Changed(row),
            (_, "acknowledged") => AlertChange::Unchanged(row),
            _ => AlertChange::Refused(row),
        })
    }

    /// Marks alert `id` resolved by `actor` (from open or acknowledged; the
    /// acknowledgement is kept).
    pub async fn resolve_alert(
        &self,
        id: &str,
        actor: &str,
        note: Option<&str>,
    ) -> Result<AlertChange> {
        let d = self.dialect();
        let sql = format!(
            "INSERT INTO {ALERT_STATES_TABLE} ({COLUMNS})
             VALUES ({p1}, 'resolved', NULL, NULL, {p2}, {p3}, {p4})
             ON CONFLICT (alert_id) DO UPDATE SET
                state = 'resolved',
                resolved_at = excluded.resolved_at,
                resolved_by = excluded.resolved_by,
                note = COALESCE(excluded.note, {ALERT_STATES_TABLE}.note)
             WHERE {ALERT_STATES_TABLE}.state <> 'resolved'",
            p1 = d.ph(1),
            p2 = d.ph(2),
            p3 = d.ph(3),
            p4 = d.ph(4)
        );
        let (n, row) = self.write_state(&sql, id, actor, note).await?;
        Ok(if n == 1 {
            AlertChange::Changed(row)
        } else {
            AlertChange::Unchanged(row)
        })
    }

    /// Runs one state change (`sql` binds id, time, actor, note) and reads the row back:
    /// (rows changed, the row). A concurrent delete is the only way to miss the row.
    async fn write_state(
        &self,
        sql: &str,
        id: &str,
        actor: &str,
        note: Option<&str>,
    ) -> Result<(u64, AlertState)> {
        let n = on_pool!(self, p => sqlx::query(sql)
            .bind(id)
            .bind(now())
            .bind(actor)
            .bind(note)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))
        .map_err(|e| WarehouseError::from_sqlx(e, &self.shown))?;
        let row = self
            .alert_states(&[id.to_string()])
            .await?
            .remove(id)
            .ok_or_else(|| {
                WarehouseError::Database(format!(
                    "warehouse {}: the state of alert {id} vanished after it was written",
                    self.shown
                ))
            })?;
        Ok((n, row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_states_move_forward_only() {
        states_move_forward_only(&Warehouse::connect("sqlite::memory:").await.unwrap()).await;
    }

    #[tokio::test]
    async fn postgres_states_move_forward_only() {
        states_move_forward_only(&crate::tests::postgres("alerts").await.wh).await;
    }

    /// Repeats change nothing; acknowledging a resolved alert is refused.
    async fn states_move_forward_only(wh: &Warehouse) {
        assert!(wh.alert_states(&["a1".into()]).await.unwrap().is_empty());
        let AlertChange::Changed(s) = wh
            .acknowledge_alert("a1", "key:k1", Some("looking"))
            .await
            .unwrap()
        else {
            panic!("first acknowledgement changes the state")
        };
        assert_eq!(
            (
                s.state.as_str(),
                s.acknowledged_by.as_deref(),
                s.note.as_deref()
            ),
            ("acknowledged", Some("key:k1"), Some("looking"))
        );
        assert!(matches!(
            wh.acknowledge_alert("a1", "key:k2", None).await.unwrap(),
            AlertChange::Unchanged(s) if s.acknowledged_by.as_deref() == Some("key:k1")
        ));
        let AlertChange::Changed(s) = wh.resolve_alert("a1", "key:k2", None).await.unwrap() else {
            panic!("resolving an acknowledged alert changes it")
        };
        assert_eq!(s.state, "resolved");
        assert_eq!(s.acknowledged_by.as_deref(), Some("key:k1"), "kept");
        assert_eq!(s.resolved_by.as_deref(), Some("key:k2"));
        assert_eq!(
            s.note.as_deref(),
            Some("looking"),
            "a change without a note keeps it"
        );
        assert!(matches!(
            wh.resolve_alert("a1", "key:k3", Some("again")).await.unwrap(),
            AlertChange::Unchanged(s) if s.resolved_by.as_deref() == Some("key:k2")
        ));
        assert!(matches!(
            wh.acknowledge_alert("a1", "key:k3", None).await.unwrap(),
            AlertChange::Refused(s) if s.state == "resolved"
        ));
        // straight from open to resolved
        assert!(matches!(
            wh.resolve_alert("a2", "key:k1", None).await.unwrap(),
            AlertChange::Changed(s) if s.acknowledged_at.is_none()
        ));
        let all = wh
            .alert_states(&["a1".into(), "a2".into(), "a3".into()])
            .await
            .unwrap();
        assert_eq!(all.len(), 2);
    }
}
