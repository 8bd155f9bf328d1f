//! Errors of the quantization crate.

use thiserror::Error;

/// What can go wrong when configuring quantization or building parameters.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum QuantError {
    /// A setting out of range.
    #[error("invalid quantization setting `{field}`: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Why, and what would work.
        reason: String,
    },
    /// A range that cannot be quantized.
    #[error("{what}: cannot quantize the range [{min}, {max}]: {reason}")]
    Range {
        /// The tensor.
        what: String,
        /// Lower end.
        min: f32,
        /// Upper end.
        max: f32,
        /// Why.
        reason: String,
    },
    /// A quantizer that has seen no data has no range yet.
    #[error("{what}: no range yet; run training steps or calibration batches through it first")]
    Uncalibrated {
        /// The quantizer (its path, or a description).
        what: String,
    },
    /// Shapes, non-finite weights, whole-model selection.
    #[error(transparent)]
    Core(#[from] collab_core::CoreError),
}
