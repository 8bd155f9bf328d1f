//! Import of tflite files (being written).

use std::path::Path;

use collab_data::InputSpec;

use crate::{ImportError, Imported};

/// Import a tflite file (see the crate docs).
pub fn import(path: &Path, _input: Option<&InputSpec>) -> Result<Imported, ImportError> {
    Err(ImportError::Format {
        path: path.to_path_buf(),
        reason: "tflite import is not written yet".into(),
    })
}
