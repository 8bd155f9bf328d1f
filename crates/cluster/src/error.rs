//! Errors of the clustering crate.

use collab_core::CoreError;
use thiserror::Error;

/// What can go wrong when configuring or applying clustering.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ClusterError {
    /// A number of clusters that cannot work for this tensor.
    #[error("{what}: {reason}")]
    NumClusters {
        /// The layer or tensor.
        what: String,
        /// Why, and what would work.
        reason: String,
    },
    /// Nothing to cluster.
    #[error("{what}: the weight tensor is empty; nothing to cluster")]
    Empty {
        /// The layer or tensor.
        what: String,
    },
    /// A whole-model clustering state that cannot be read (a `cluster` reparameterization
    /// without the tensors `WholeClustering` attaches).
    #[error("`{path}`: {reason}")]
    State {
        /// The weight's dotted path.
        path: String,
        /// What is missing.
        reason: String,
    },
    /// Shapes, non-finite weights.
    #[error(transparent)]
    Core(#[from] CoreError),
}
