//! Deterministic generator of the domain events (projects, tasks, metrics, users).
