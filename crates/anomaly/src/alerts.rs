//! Alert rules over a detector's per-point verdicts: an alert opens for a key once
//! `is_anomaly` has held for `min_duration` of event time, closes when the key is quiet
//! again, is never open twice for one key (dedup), and a key that just had an alert stays
//! silent for `cooldown`. Pure and serde-serialisable, so the book is checkpointed with
//! the detectors and a replay gives the same alerts with the same ids.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// When alerts open and how often. Times are event time in µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AlertRules {
    /// `is_anomaly` must hold this long (from the first anomalous point) before an alert
    /// opens; 0 opens at the first anomalous point.
    pub min_duration_us: i64,
    /// After an alert of a key closes, no new alert opens for that key within this.
    pub cooldown_us: i64,
}

/// One alert of one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic from the scope (the stage), the key and `opened_at`: see [`alert_id`].
    pub alert_id: String,
    pub key: String,
    /// Event time (µs) of the point at which the alert opened.
    pub opened_at: i64,
    /// The highest score of the anomalous run so far.
    pub peak_score: f64,
    /// Event time (µs) of the first quiet point, once closed.
    pub closed_at: Option<i64>,
}

/// What one observation changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertEvent {
    Opened(Alert),
    Closed(Alert),
}

impl AlertEvent {
    pub fn alert(&self) -> &Alert {
        match self {
            AlertEvent::Opened(a) | AlertEvent::Closed(a) => a,
        }
    }
}

/// The rule state of one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct KeyState {
    /// Event time of the first point of the current anomalous run.
    anomalous_since: Option<i64>,
    /// The highest score of the current anomalous run.
    run_peak: f64,
    /// The key's open alert (at most one: dedup).
    open: Option<Alert>,
    /// No alert opens before this event time (cooldown after the last one closed).
    quiet_until: Option<i64>,
}

/// The alert state of every key of one stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AlertBook {
    keys: BTreeMap<String, KeyState>,
}

/// FNV-1a over the scope, the key and the opening time: stable across runs and platforms.
pub fn alert_id(scope: &str, key: &str, opened_at: i64) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    eat(scope.as_bytes());
    eat(&[0xff]);
    eat(key.as_bytes());
    eat(&[0xff]);
    eat(&opened_at.to_le_bytes());
    format!("{h:016x}")
}

impl AlertBook {
    /// Feeds one scored point of `key` at event time `ts` (µs); returns the alert that
    /// opened or closed with it, if any.
    pub fn observe(
        &mut self,
        rules: &AlertRules,
        scope: &str,
        key: &str,
        ts: i64,
        score: f64,
        is_anomaly: bool,
    ) -> Option<AlertEvent> {
        let st = self.keys.entry(key.to_string()).or_default();
        if !is_anomaly {
            st.anomalous_since = None;
            st.run_peak = 0.0;
            let mut closed = st.open.take()?;
            closed.closed_at = Some(ts);
            st.quiet_until = Some(ts.saturating_add(rules.cooldown_us));
            return Some(AlertEvent::Closed(closed));
        }
        let since = *st.anomalous_since.get_or_insert(ts);
        if score.is_finite() && score > st.run_peak {
            st.run_peak = score;
        }
        if let Some(open) = st.open.as_mut() {
            open.peak_score = open.peak_score.max(st.run_peak);
            return None;
        }
        let held = ts.saturating_sub(since) >= rules.min_duration_us;
        let cooling = st.quiet_until.is_some_and(|q| ts < q);
        if !held || cooling {
            return None;
        }
        let alert = Alert {
            alert_id: alert_id(scope, key, ts),
            key: key.to_string(),
            opened_at: ts,
            peak_score: st.run_peak,
            closed_at: None,
        };
        st.open = Some(alert.clone());
        Some(AlertEvent::Opened(alert))
    }

    /// The alerts open now, by key.
    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.keys.values().filter_map(|k| k.open.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    /// Feeds (minute, is_anomaly) points of one key; returns the events.
    fn feed(book: &mut AlertBook, rules: &AlertRules, points: &[(i64, bool)]) -> Vec<AlertEvent> {
        points
            .iter()
            .filter_map(|&(m, a)| {
                book.observe(rules, "s", "api", m * MIN, if a { 0.95 } else { 0.1 }, a)
            })
            .collect()
    }

    #[test]
    fn an_alert_opens_after_min_duration_and_closes_when_quiet() {
        let rules = AlertRules {
            min_duration_us: 2 * MIN,
            cooldown_us: 0,
        };
        let mut book = AlertBook::default();
        let ev = feed(
            &mut book,
            &rules,
            &[
                (0, false),
                (1, true),
                (2, true),
                (3, true),
                (4, true),
                (5, false),
            ],
        );
        assert_eq!(ev.len(), 2, "{ev:?}");
        let AlertEvent::Opened(a) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(a.opened_at, 3 * MIN, "held 2 minutes from minute 1");
        assert_eq!(a.alert_id, alert_id("s", "api", 3 * MIN));
        let AlertEvent::Closed(c) = &ev[1] else {
            panic!("{ev:?}")
        };
        assert_eq!(c.alert_id, a.alert_id);
        assert_eq!(c.closed_at, Some(5 * MIN));
    }

    #[test]
    fn a_short_blip_opens_nothing() {
        let rules = AlertRules {
            min_duration_us: 5 * MIN,
            cooldown_us: 0,
        };
        let mut book = AlertBook::default();
        let ev = feed(
            &mut book,
            &rules,
            &[(0, true), (1, true), (2, false), (3, true)],
        );
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn dedup_one_open_alert_per_key() {
        let rules = AlertRules::default();
        let mut book = AlertBook::default();
        let points: Vec<(i64, bool)> = (0..30).map(|m| (m, true)).collect();
        let ev = feed(&mut book, &rules, &points);
        assert_eq!(ev.len(), 1, "one alert for one long run: {ev:?}");
        assert_eq!(book.open_alerts().count(), 1);
        // another key is independent
        let other = book.observe(&rules, "s", "db", 5 * MIN, 0.9, true);
        assert!(matches!(other, Some(AlertEvent::Opened(_))));
        assert_eq!(book.open_alerts().count(), 2);
    }

    #[test]
    fn cooldown_suppresses_a_new_alert_of_the_same_key() {
        let rules = AlertRules {
            min_duration_us: 0,
            cooldown_us: 30 * MIN,
        };
        let mut book = AlertBook::default();
        // opens at 0, closes at 2; anomalous again at 10..=40: suppressed until 32
        let mut points = vec![(0, true), (1, true), (2, false)];
        points.extend((10..=40).map(|m| (m, true)));
        let ev = feed(&mut book, &rules, &points);
        let opened: Vec<i64> = ev
            .iter()
            .filter_map(|e| match e {
                AlertEvent::Opened(a) => Some(a.opened_at / MIN),
                AlertEvent::Closed(_) => None,
            })
            .collect();
        assert_eq!(opened, vec![0, 32], "{ev:?}");
        // a run that ends inside the cooldown opens nothing at all
        let mut book = AlertBook::default();
        let ev = feed(
            &mut book,
            &rules,
            &[(0, true), (1, false), (5, true), (6, true), (7, false)],
        );
        assert_eq!(ev.len(), 2, "open + close of the first alert only: {ev:?}");
    }

    #[test]
    fn the_book_round_trips_through_json_and_continues_identically() {
        let rules = AlertRules {
            min_duration_us: MIN,
            cooldown_us: 10 * MIN,
        };
        let points: Vec<(i64, bool)> = (0..60).map(|m| (m, (m / 7) % 2 == 1)).collect();
        let mut straight = AlertBook::default();
        let all = feed(&mut straight, &rules, &points);
        let mut first = AlertBook::default();
        let mut resumed = feed(&mut first, &rules, &points[..25]);
        let json = serde_json::to_string(&first).unwrap();
        let mut restored: AlertBook = serde_json::from_str(&json).unwrap();
        resumed.extend(feed(&mut restored, &rules, &points[25..]));
        assert_eq!(all, resumed);
        assert_eq!(straight, restored);
    }
}
