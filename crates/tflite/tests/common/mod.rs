//! The Python validators, where installed.

use collab_data::shared::require_shared;
use collab_tflite::tools::Validators;

/// See [`Validators::for_tests`].
pub fn tools() -> Option<Validators> {
    Validators::for_tests(&require_shared().join("tools"))
}
