//! Shared vocabulary of every ymera crate: error classes, durations, byte sizes, secrets
//! (values whose `Debug` never shows them) and the declared field types of pipeline schemas.

pub mod error;
pub mod float_exact;
pub mod health;
pub mod schema;
pub mod secret;
pub mod series;
pub mod units;
pub mod yaml;

pub use error::{ErrorClass, Retry};
pub use schema::FieldType;
pub use secret::{Secret, SecretUrl, redact};
pub use units::{ByteSize, parse_byte_size, parse_duration};
