//! int8 `.tflite` export of the models, with PTQ calibration or QAT ranges.
//!
//! A model is first traced into a [`Plan`]: its layers in execution order, each stripped to the
//! plain burn layer whose weight is the effective weight (BatchNorm folded, pruning zeros,
//! cluster centroids, fake-quantized values) plus, for `QatAware` layers, the quantization
//! parameters QAT trained ([`collab_quant::LayerQuant`]). Activation ranges that QAT did not
//! provide (all of them after plain training; residual additions always) come from running the
//! float plan on calibration batches (min / max over all samples, as the TFLite converter's
//! default calibration). Weights are quantized with [`QuantParams::symmetric`] from their own
//! largest magnitude (per output channel for convolutions, per tensor for the classifier), the
//! same rule QAT trains with, so QAT-trained weights land on exactly the trained integers.
//!
//! Shared quantization: TFLite's int8 CONCATENATION copies bytes, so its inputs must be
//! quantized exactly as its output, and pooling and flattening keep their input's
//! quantization. Values tied by these rules form classes ([`quant_classes`]); every producer in
//! a class that holds a concatenation is written with the class's one quantization: QAT's
//! trained range of the concatenation, or the union of the calibrated ranges of its values.
//!
//! Why pruning and clustering survive: the zero point of int8 weights is 0, so a zero stays 0;
//! rounding is a function, so k distinct values per channel become at most k integers. The
//! finest symmetric scale that does not clip is `max|w| / 127`, which is what is used: two
//! centroids can only merge if they are closer than one step of that scale.
//!
//! The parts: `plan` holds what a traced model is ([`Plan`], [`Step`]); `trace` makes
//! one from a model; `calibrate` runs it in float for activation ranges; `quant` decides every
//! value's int8 quantization and quantizes weights; `lower` writes the plan as an int8 file,
//! through `layers` (convolution weights) and `ops` (the parameter-free operators); `runtime`
//! runs an int8 file on float inputs; `verify` checks a file in the reference runtimes.

use std::path::Path;

use crate::CollabError;

mod calibrate;
mod layers;
mod lower;
mod ops;
mod plan;
mod quant;
mod runtime;
mod trace;
mod verify;

/// The error of the int8 writer at node or tensor `at` (for `map_err`).
fn int8_error(at: &str) -> impl Fn(collab_tflite::TfliteError) -> CollabError + Copy + '_ {
    move |e| CollabError::tflite(format!("int8 export of `{at}`"), e)
}

pub use calibrate::Ranges;
pub use lower::to_tflite;
pub use plan::{ExportLayer, Plan, Step};
pub use quant::{quant_classes, round_scale};
pub use runtime::{evaluate_int8, nchw_to_nhwc, quantize_input, run_int8};
pub use trace::Traceable;
pub use verify::{Verification, verify};

/// What to write.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// Batch size of the graph (1 for deployment).
    pub batch: usize,
    /// Float32 input and output with QUANTIZE / DEQUANTIZE at the edges (CPU only on NPUs).
    pub float_io: bool,
    /// End with SOFTMAX (probabilities) instead of the logits.
    pub softmax: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            float_io: false,
            softmax: true,
        }
    }
}

/// Write `bytes` to `path` atomically (temp file flushed to disk, then renamed over `path`):
/// refused when `path` is a folder, a device or anything but a regular file; on failure no
/// temporary file is left and the previous file is unchanged ([`collab_tflite::write_atomic`]).
/// A fault-injection point ([`crate::fault::point`]) follows each successful write.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CollabError> {
    collab_tflite::write_atomic(path, bytes).map_err(|e| file_error(path, e))?;
    crate::fault::point(&format!("file {}", path.display()));
    Ok(())
}

/// Check, before any work, that [`write`](fn@write) may write `path` ([`collab_tflite::check_target`]:
/// a file name, not a folder or device, in an existing folder).
pub fn check_out(path: &Path) -> Result<(), CollabError> {
    collab_tflite::check_target(path)
        .map(|_| ())
        .map_err(|e| file_error(path, e))
}

/// A file error naming `path` once (an I/O error already carries it).
fn file_error(path: &Path, e: collab_tflite::TfliteError) -> CollabError {
    match e {
        collab_tflite::TfliteError::Io { reason, .. } => CollabError::checkpoint(path, reason),
        other => CollabError::checkpoint(path, other),
    }
}
