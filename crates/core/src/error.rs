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
    /// A parameter already carries a reparameterization (burn does not nest them).
    #[error(
        "`{path}` already carries a `{wrapper}` reparameterization and burn does not nest them; \
         bake the model first (collab_core::whole::strip) and wrap the result"
    )]
    AlreadyWrapped {
        /// The parameter's dotted path.
        path: String,
        /// The attached reparameterization's name.
        wrapper: String,
    },
    /// An operation needs a weight's output-channel axis and it is unknown or invalid.
    #[error("`{path}` ({layer}): {reason}")]
    ChannelAxis {
        /// The parameter's dotted path.
        path: String,
        /// The struct holding it.
        layer: String,
        /// Why, and what would work.
        reason: String,
    },
    /// A whole-model selection matched no weight.
    #[error(
        "the selection matched no float parameter of rank 2 or more (the model has {params} \
         float parameter(s)); check the paths given to Selection::only (dotted field names as \
         in the record, e.g. `encoder.proj.weight`)"
    )]
    NothingSelected {
        /// Float parameters in the model.
        params: usize,
    },
}
