//! Streaming anomaly detection, alert rules and NAB scoring.
//!
//! * [`detect`]: causal, checkpointable detectors (robust z-score over EWMA/MAD, seasonal
//!   residual, changepoints) and their combination into one `anomaly_score` in [0, 1].
//! * [`iforest`]: an isolation forest over window features, trained and versioned through
//!   the model registry.
//! * [`alerts`]: alert rules (threshold, minimum duration, cooldown, dedup by key).
//! * [`nab`]: the Numenta Anomaly Benchmark's standard-profile scoring.

pub mod alerts;
pub mod detect;
pub mod eval;
pub mod iforest;
pub mod nab;
pub mod stage;
