//! Shared helpers of the generator: the event-time window, seeded random streams and the
//! draws made from them, rounding and time alignment, and encoding records as events.

use chrono::{DateTime, SecondsFormat, Utc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::Serialize;

use super::{DAY, Event, GenConfig, MAX_DAYS, MICROS};

/// The event-time window in seconds relative to its start.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start_micros: i64,
    pub(super) secs: i64,
    pub(super) step: i64,
}

impl Window {
    pub(super) fn new(cfg: &GenConfig) -> Window {
        let room = (DateTime::<Utc>::MAX_UTC - cfg.start).num_days() - 1;
        let days = i64::from(cfg.days.min(MAX_DAYS)).clamp(0, room.max(0));
        let step = if cfg.metric_step_secs == 0 {
            60
        } else {
            i64::from(cfg.metric_step_secs)
        };
        Window {
            start_micros: cfg.start.timestamp_micros(),
            secs: days * 86_400,
            step,
        }
    }

    pub(super) fn days(&self) -> f64 {
        self.secs as f64 / DAY
    }

    pub(super) fn end_micros(&self) -> i64 {
        self.micros(self.secs)
    }

    /// Absolute microseconds of a window offset in seconds.
    pub(super) fn micros(&self, secs: i64) -> i64 {
        self.start_micros
            .saturating_add(secs.saturating_mul(MICROS))
    }

    pub(super) fn ts(&self, secs: i64) -> String {
        rfc3339(self.micros(secs))
    }

    pub(super) fn date(&self, secs: i64) -> String {
        DateTime::from_timestamp_micros(self.micros(secs))
            .map(|d| d.format("%Y-%m-%d").to_string())
            .unwrap_or_default()
    }
}

/// RFC 3339 UTC with a `Z`, with sub-second digits only when they are not zero.
fn rfc3339(micros: i64) -> String {
    DateTime::from_timestamp_micros(micros)
        .map(|d| d.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

pub(super) fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}

pub(super) fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(StandardNormal)
}

/// Poisson draw (Knuth for small means, a rounded normal for large ones).
pub(super) fn poisson(rng: &mut ChaCha8Rng, mean: f64) -> u32 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 50.0 {
        return (mean + mean.sqrt() * normal(rng)).round().max(0.0) as u32;
    }
    let limit = (-mean).exp();
    let mut product = 1.0;
    let mut k = 0;
    loop {
        product *= rng.random::<f64>();
        if product <= limit {
            return k;
        }
        k += 1;
    }
}

pub(super) fn pick<T: Copy>(rng: &mut ChaCha8Rng, weighted: &[(T, f64)]) -> T {
    let total: f64 = weighted.iter().map(|w| w.1).sum();
    let mut x = rng.random::<f64>() * total;
    for &(item, w) in weighted {
        if x < w {
            return item;
        }
        x -= w;
    }
    weighted[weighted.len() - 1].0
}

pub(super) fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

pub(super) fn align_down(x: i64, step: i64) -> i64 {
    x - x.rem_euclid(step)
}

pub(super) fn align_up(x: i64, step: i64) -> i64 {
    align_down(x + step - 1, step).max(step)
}

pub(super) fn event<T: Serialize>(
    topic: &'static str,
    key: &str,
    ts_micros: i64,
    record: &T,
) -> Event {
    // A flat struct of strings, numbers, bools and options cannot fail to serialize.
    let value = serde_json::to_vec(record).expect("flat event records always serialize");
    Event {
        topic,
        key: key.to_owned(),
        value,
        ts_micros,
    }
}
