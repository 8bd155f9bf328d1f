//! burn-collab's workflow layer, used by the `collab` command line and the examples:
//! - [`network`]: the models by name (`ds-cnn-l`, `mobilenet-v1-cifar`, …) as one burn module;
//! - [`data`]: the training / evaluation sets behind one [`data::Batches`] trait (Speech
//!   Commands + MFCC with augmentation, CIFAR-10 with crop/flip, synthetic stand-ins);
//! - [`learn`]: training through burn-train's `Learner` (the one training path): `TrainStep` /
//!   `InferenceStep` for any classifier, a `DataLoader` over [`data::Batches`], the papers'
//!   schedules, per-epoch metrics (`metrics.csv`, learning curve), early stopping, Ctrl-C, data
//!   parallel;
//! - [`train`]: `collab train` runs (Adam with the ML-KWS step schedule for DS-CNN, SGD with
//!   momentum and cosine decay for MobileNet) with best-on-validation and resume;
//! - [`eval`]: accuracy overall and per class, of a float model or an int8 file;
//! - [`export`]: int8 `.tflite` export (PTQ calibration or QAT ranges) and int8 evaluation;
//! - [`bench`](mod@bench): training-step and int8-inference timings (`collab bench`);
//! - [`config`]: strict reading of tree configs (unknown keys, types, ranges, stage names);
//! - [`tree`]: the deployment tree (pruned / clustered / QAT / PQAT / CQAT / PCQAT nodes,
//!   each a checkpoint, exported to int8, evaluated, sized, invariants checked): what a config
//!   says (`tree::spec`), running the stages, and what a run produced (`tree::results`);
//! - [`plot`], [`deploy`], [`device`]: the figures, the deployment measurements, the compute
//!   device;
//! - [`fault`]: fault-injection points for the crash-safety tests (`COLLAB_FAULT_AT`);
//! - [`lock`]: one run per output folder (an OS lock on `OUT/.collab.lock`);
//! - [`checkpoint`]: a checkpoint is a folder with the record and a JSON manifest, written
//!   through a temporary folder and a rename.

/// Run `$body` with `$m` bound to the concrete model inside a [`Network`] (every arm has its
/// own type, so generic code over the families is written once). With `rewrap`, the body's
/// `Result<model, _>` is mapped back into the same `Network` variant.
macro_rules! each_family {
    (rewrap $net:expr, $m:ident => $body:expr) => {
        match $net {
            $crate::network::Network::DsCnn($m) => $body.map($crate::network::Network::DsCnn),
            $crate::network::Network::MobileNetV1($m) => {
                $body.map($crate::network::Network::MobileNetV1)
            }
            $crate::network::Network::MobileNetV2($m) => {
                $body.map($crate::network::Network::MobileNetV2)
            }
            $crate::network::Network::Graph($m) => $body.map($crate::network::Network::Graph),
        }
    };
    ($net:expr, $m:ident => $body:expr) => {
        match $net {
            $crate::network::Network::DsCnn($m) => $body,
            $crate::network::Network::MobileNetV1($m) => $body,
            $crate::network::Network::MobileNetV2($m) => $body,
            $crate::network::Network::Graph($m) => $body,
        }
    };
}

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod deploy;
pub mod device;
mod error;
pub mod eval;
pub mod export;
pub mod fault;
pub mod learn;
pub mod lock;
pub mod network;
pub mod plot;
pub mod train;
pub mod tree;

pub use checkpoint::Manifest;
pub use network::{ModelSpec, Network};

pub use error::CollabError;
