//! Shared readiness state: components report whether they are usable; the health routes
//! read it. Plain data, no HTTP here.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Startup and readiness of a process.
#[derive(Debug, Default)]
pub struct Health {
    started: AtomicBool,
    /// Component name -> problem (None when usable).
    components: Mutex<BTreeMap<String, Option<String>>>,
}

impl Health {
    /// Marks start-up complete (config loaded, models pinned).
    pub fn set_started(&self) {
        self.started.store(true, Ordering::SeqCst);
    }

    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Sets a component usable (`None`) or not (`Some(reason)`).
    pub fn set(&self, component: &str, problem: Option<String>) {
        if let Ok(mut c) = self.components.lock() {
            c.insert(component.to_string(), problem);
        }
    }

    /// Every component's state.
    pub fn components(&self) -> BTreeMap<String, Option<String>> {
        self.components
            .lock()
            .map(|c| c.clone())
            .unwrap_or_default()
    }

    /// Ready when started and every component is usable.
    pub fn ready(&self) -> bool {
        self.started() && self.components().values().all(Option::is_none)
    }
}
