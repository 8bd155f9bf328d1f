//! Data sets for burn-collab.
//!
//! For now: [`synthetic`], deterministic built-in image sets that let every example and test run
//! on a fresh machine with no download. Speech Commands, CIFAR-10 and image-folder loaders come
//! with the data issue.

pub mod synthetic;

pub use synthetic::{ImageSet, SyntheticImages};

/// Errors of the data crate.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DataError {
    /// A generator or loader setting is out of range.
    #[error("invalid data setting `{field}`: {reason}")]
    InvalidSetting {
        /// The setting.
        field: &'static str,
        /// Why it is rejected and what would be accepted.
        reason: String,
    },
}
