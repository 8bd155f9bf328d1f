//! Errors of the core crate.

use thiserror::Error;

/// What can go wrong in the shared layer and state helpers.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum CoreError {
    /// A tensor handed in does not have the shape the layer needs.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        /// Which tensor.
        what: String,
        /// The shape the layer needs.
        expected: Vec<usize>,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A weight tensor holds NaN or infinity, so magnitudes cannot be ranked.
    #[error(
        "{what}: weight holds {count} non-finite value(s) (first at flat index {first}); \
         the model has diverged or was loaded from a corrupt file"
    )]
    NonFinite {
        /// Which tensor.
        what: String,
        /// How many values are NaN or infinite.
        count: usize,
        /// The first such flat index.
        first: usize,
    },
}
