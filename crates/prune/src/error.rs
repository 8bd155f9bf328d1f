//! Errors of the pruning crate: every message says what is wrong, where, and what would work.

use collab_core::CoreError;
use thiserror::Error;

/// What can go wrong when configuring or applying pruning.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum PruneError {
    /// A sparsity outside `[0, 1)`.
    #[error(
        "`{field}` = {value} is not a valid sparsity: use a value in [0, 1) \
         (0.5 prunes half of the weights; 1.0 would remove all of them)"
    )]
    Sparsity {
        /// The setting.
        field: &'static str,
        /// The value given.
        value: f64,
    },
    /// Schedule steps or frequency that cannot work.
    #[error("invalid pruning schedule: {0}")]
    Schedule(String),
    /// A sparsity pattern that does not fit the layer.
    #[error("{layer}: {granularity} pruning cannot be applied: {reason}")]
    Granularity {
        /// The layer (its layout, or its path in the model).
        layer: String,
        /// The pattern, e.g. `2:4`.
        granularity: String,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A layer the operation does not handle.
    #[error("unsupported layer at `{path}`: {reason}")]
    UnsupportedLayer {
        /// Where in the model.
        path: String,
        /// Why, and what is supported.
        reason: String,
    },
    /// Errors from the shared layer helpers (shapes, non-finite weights).
    #[error(transparent)]
    Core(#[from] CoreError),
}
