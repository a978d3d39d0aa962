//! Training specs, models and the versioned registry (see ARCHITECTURE.md).
