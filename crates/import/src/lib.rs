//! Models from files: ONNX (parsed with burn's own `onnx-ir`) and float TFLite (our reader),
//! turned into a [`GraphSpec`] and its [`GraphWeights`], from which
//! [`collab_models::GraphNet::from_weights`] builds a trainable burn model that every wrapper
//! and the int8 exporter accept.
//!
//! An importer maps the file's operators onto the graph's (see [`collab_models::graph::Op`]),
//! absorbing what a deployment graph adds around them: the layout transposes tf2onnx and PyTorch
//! exporters insert, BatchNorm (or its `Mul` + `Add` form) after a convolution (folded into it),
//! constant weights behind `DequantizeLinear` / `DEQUANTIZE`, a trailing softmax (recorded, not
//! trained). Any other operator is an error that names it, its node and its inputs, before any
//! work starts.

pub mod onnx;
pub mod tflite;

use std::path::{Path, PathBuf};

use collab_data::InputSpec;
use collab_models::{GraphSpec, GraphWeights};

/// Errors of an import; each names the file and, where there is one, the node.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file is not a readable model of its kind (truncated, corrupt, wrong format).
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An operator, or an operator's setting, the graph cannot express.
    #[error("{path}: node `{node}` ({op}, inputs {inputs:?}): {reason}")]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// The node's name.
        node: String,
        /// Its operator type.
        op: String,
        /// Its input names.
        inputs: Vec<String>,
        /// Why, and what would work.
        reason: String,
    },
    /// The graph built from the file does not check (shapes, unused layers).
    #[error("{path}: {source}")]
    Graph {
        /// The file.
        path: PathBuf,
        /// The graph's own error.
        source: collab_models::ModelError,
    },
}

/// A model read from a file.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The graph (its `input` from the file, with the caller's [`InputSpec`] where given).
    pub spec: GraphSpec,
    /// The layers' weights.
    pub weights: GraphWeights,
}

/// The bytes of a model file, or an error naming it.
fn read(path: &Path) -> Result<Vec<u8>, ImportError> {
    std::fs::read(path).map_err(|source| ImportError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Import `path` by its extension (`.onnx`, `.tflite`). `input`, when given, replaces what the
/// file says about its input beyond the shape (features, labels); its shape must match.
pub fn import(path: &Path, input: Option<&InputSpec>) -> Result<Imported, ImportError> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("onnx") => onnx::import(path, input),
        Some(e) if e.eq_ignore_ascii_case("tflite") => tflite::import(path, input),
        _ => Err(ImportError::Format {
            path: path.to_path_buf(),
            reason: "not a model file by its name: give a .onnx or a float .tflite file".into(),
        }),
    }
}
