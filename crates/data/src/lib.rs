//! Data sets for burn-collab: Speech Commands (WAV + the TensorFlow MFCC frontend the published
//! DS-CNN weights were trained with, and MLPerf Tiny's `tf.signal` one), CIFAR-10 binaries,
//! NumPy arrays (`.npy` / `.npz`) for imported models, and deterministic synthetic sets that
//! let every example and test run on a fresh machine with no download.

pub mod arrays;
pub mod cifar;
pub mod folder;
pub mod input;
pub mod kws_features;
pub mod mfcc;
pub mod npy;
pub mod rng;
pub mod shared;
pub mod speech;
pub mod synthetic;
pub mod tf_signal;
pub mod wav;

pub use arrays::ArraySet;
pub use cifar::{Cifar10, CifarAugment};
pub use folder::ImageFolder;
pub use input::{Features, ImageNorm, InputSpec, Layout, MfccKind};
pub use kws_features::{FEATURES_FILE, KwsFeatures, KwsFeaturesError};
pub use mfcc::{Frontend, KwsFrontend, MFCC_COEFFICIENTS, MFCC_FRAMES, MfccFrontend};
pub use rng::SeededRng;
pub use speech::{
    KWS_LABELS, KwsSet, MLPERF_KWS_LABELS, SpeechCommands, Split, kws_label_map, speaker_of,
    val_bucket,
};
pub use synthetic::{ImageSet, SyntheticImages, SyntheticKws};
pub use tf_signal::TfSignalFrontend;

use std::path::{Path, PathBuf};

/// Errors of the data crate; each names the file or setting and says what to do.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DataError {
    /// A generator or loader setting is out of range.
    #[error("invalid data setting `{field}`: {reason}")]
    InvalidSetting {
        /// The setting.
        field: &'static str,
        /// Why it is rejected and what would be accepted.
        reason: String,
    },
    /// A file or folder could not be read.
    #[error("{path}: {reason}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's message.
        reason: String,
    },
    /// A file is not in the expected format.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A data folder has no usable files.
    #[error("{path}: {reason}")]
    Empty {
        /// The folder.
        path: PathBuf,
        /// What was expected there.
        reason: String,
    },
}

/// Batches of indices covering `0..len` once, shuffled deterministically by `seed`
/// ([`SeededRng::shuffle`]). The last batch may be smaller.
pub fn shuffled_batches(len: usize, batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..len).collect();
    SeededRng::new(seed).shuffle(&mut order);
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}

#[cfg(test)]
pub(crate) fn host_labels(t: burn::tensor::Tensor<1, burn::tensor::Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().try_to_vec::<i64>().unwrap()
}

impl DataError {
    pub(crate) fn io(path: &Path, err: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            reason: err.to_string(),
        }
    }

    pub(crate) fn format(path: &Path, reason: impl Into<String>) -> Self {
        Self::Format {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
