//! How runtime errors are classified: who must act, and whether retrying can help.
//!
//! Each crate has its own `thiserror` enum; each of them maps its variants onto an
//! [`ErrorClass`] once, and the pipeline supervisor acts on the class alone.

/// Who has to act on an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The input or configuration is wrong: the user must change something.
    User,
    /// Something outside ymera failed (broker, object store, disk): it may recover by itself.
    External,
    /// A bug in ymera: report it.
    Internal,
}

/// Whether repeating the failed operation can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Retry with backoff.
    Yes,
    /// Do not retry: dead-letter the record or stop.
    No,
}

impl ErrorClass {
    /// The retry policy that follows from the class.
    pub fn retry(self) -> Retry {
        match self {
            ErrorClass::External => Retry::Yes,
            ErrorClass::User | ErrorClass::Internal => Retry::No,
        }
    }
}
