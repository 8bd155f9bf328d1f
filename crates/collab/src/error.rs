//! The workflow layer's one error type.
//!
//! Each variant keeps the typed error it came from (`source()`) and adds where it happened: the
//! file, the layer or graph node, the stage. The messages say what is wrong and, where there is
//! one, how to fix it. [`CollabError::Usage`] is kept for settings that do not fit together
//! (a user's mistake); what goes wrong while working has a variant of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Errors of the workflow layer.
#[derive(Debug, thiserror::Error)]
pub enum CollabError {
    /// A model setting or name.
    #[error(transparent)]
    Model(#[from] collab_models::ModelError),
    /// A model file that cannot be imported.
    #[error(transparent)]
    Import(#[from] collab_import::ImportError),
    /// A data set problem.
    #[error(transparent)]
    Data(#[from] collab_data::DataError),
    /// A checkpoint folder that cannot be read or written.
    #[error("{path}: {reason}")]
    Checkpoint {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong and what to do.
        reason: String,
    },
    /// A setting that does not fit the rest.
    #[error("{0}")]
    Usage(String),
    /// Training stopped: the loss or the weights stopped being finite, or a split it needs is
    /// empty. Nothing of the failed epoch or stage was saved.
    #[error("{0}")]
    Training(String),
    /// A layer that cannot be wrapped for pruning (its settings or its weights).
    #[error("layer `{layer}`: {source}")]
    Prune {
        /// The layer's path (`blocks.0.pw`).
        layer: String,
        /// What the pruning crate refused.
        #[source]
        source: collab_prune::PruneError,
    },
    /// A layer that cannot be wrapped for clustering (its settings or its weights).
    #[error("layer `{layer}`: {source}")]
    Cluster {
        /// The layer's path.
        layer: String,
        /// What the clustering crate refused.
        #[source]
        source: collab_cluster::ClusterError,
    },
    /// Quantization parameters that cannot be made for `what` (a layer, a graph node, the model
    /// input): a quantizer that has seen no data, a range that cannot be quantized, a QAT
    /// wrapper that cannot be built.
    #[error("{what}: {source}")]
    Quant {
        /// Where: "layer `blocks.0.pw`", "node `add_1`", "the model input", …
        what: String,
        /// What the quantization crate refused.
        #[source]
        source: collab_quant::QuantError,
    },
    /// A model that the int8 export cannot write as it is: an operator or setting with no int8
    /// TFLite form, or a value with no quantization range. The message says what would export.
    #[error("{what}: {reason}")]
    Export {
        /// Where: "layer `blocks.0.pw`", "node `concat`", "the model input", …
        what: String,
        /// Why, and what to change.
        reason: String,
    },
    /// An int8 file that could not be built, read or run.
    #[error("{context}: {source}")]
    Tflite {
        /// What was being done ("int8 export of layer `fc`", "verification", …).
        context: String,
        /// What the TFLite crate reported.
        #[source]
        source: collab_tflite::TfliteError,
    },
    /// A node of the deployment tree whose int8 file breaks what its lineage guarantees (the
    /// parent's zeros kept, at most k distinct values per channel, the pruning target): a bug.
    #[error("stage `{stage}`, layer `{layer}`: {reason}")]
    Invariant {
        /// The tree's stage.
        stage: String,
        /// The weight tensor (`blocks.0.pw/weight`).
        layer: String,
        /// What was expected and what the file has.
        reason: String,
    },
    /// A node's int8 file runs differently in the reference runtimes (LiteRT's reference
    /// kernels, TensorFlow Lite Micro) than in our interpreter: a bug.
    #[error(
        "stage `{stage}`: the int8 file runs differently in the reference runtimes than in ours \
         ({max_lsb:?} LSB): a bug, please report it"
    )]
    Mismatch {
        /// The tree's stage.
        stage: String,
        /// Runtime → largest difference in output LSB.
        max_lsb: BTreeMap<String, f64>,
    },
    /// A figure that could not be drawn.
    #[error("{path}: cannot draw the figure: {reason}")]
    Plot {
        /// The PNG file.
        path: PathBuf,
        /// What the drawing library reported.
        reason: String,
    },
}

impl CollabError {
    /// A checkpoint or file error naming `path`.
    pub fn checkpoint(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self::Checkpoint {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    /// A [`CollabError::Quant`] for `what`.
    pub fn quant(what: impl Into<String>, source: collab_quant::QuantError) -> Self {
        Self::Quant {
            what: what.into(),
            source,
        }
    }

    /// A [`CollabError::Export`] for `what`.
    pub fn export(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Export {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A [`CollabError::Tflite`] while doing `context`.
    pub fn tflite(context: impl Into<String>, source: collab_tflite::TfliteError) -> Self {
        Self::Tflite {
            context: context.into(),
            source,
        }
    }

    /// A [`CollabError::Prune`] for layer `layer`.
    pub fn prune(layer: &str, source: collab_prune::PruneError) -> Self {
        Self::Prune {
            layer: layer.to_string(),
            source,
        }
    }

    /// A [`CollabError::Cluster`] for layer `layer`.
    pub fn cluster(layer: &str, source: collab_cluster::ClusterError) -> Self {
        Self::Cluster {
            layer: layer.to_string(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error;

    #[test]
    fn wrapped_errors_keep_their_source_and_say_where() {
        let e = CollabError::quant(
            "layer `fc`",
            collab_quant::QuantError::Uncalibrated {
                what: "fc.output".into(),
            },
        );
        assert!(
            e.to_string()
                .starts_with("layer `fc`: fc.output: no range yet")
        );
        assert!(
            e.source()
                .and_then(|s| s.downcast_ref::<collab_quant::QuantError>())
                .is_some()
        );
        let e = CollabError::tflite(
            "int8 export of layer `fc`",
            collab_tflite::TfliteError::Unsupported("x".into()),
        );
        assert_eq!(
            e.to_string(),
            "int8 export of layer `fc`: cannot run this .tflite file: x"
        );
        assert!(e.source().is_some());
    }
}
