//! Magnitude pruning for burn layers.
//!
//! Wrap a `Linear`, `Conv1d` or `Conv2d` (any `groups`, depthwise included) in [`Prunable`]
//! through a [`PruningConfig`], train as usual, then [`strip`](collab_core::WeightLayer::strip)
//! it back to the plain burn layer with zeros in its weight.
//!
//! ```no_run
//! use burn::nn::conv::Conv2dConfig;
//! use burn::tensor::{Device, Tensor};
//! use collab_core::WeightLayer;
//! use collab_prune::{PruningConfig, PruningSchedule};
//!
//! let device = Device::flex().autodiff();
//! let conv = Conv2dConfig::new([8, 16], [3, 3]).init(&device);
//! let schedule = PruningSchedule::polynomial(0.0, 0.5, 0, 1000).with_frequency(100);
//! let conv = PruningConfig::new(schedule).wrap(conv)?;
//! let y = conv.forward(Tensor::<4>::zeros([1, 8, 12, 12], &device)); // a training step
//! let plain = conv.strip(); // burn `Conv2d` with zeros in its weight
//! # Ok::<(), collab_prune::PruneError>(())
//! ```
//!
//! Only layers with a weight the wrappers understand can be wrapped; anything else is a
//! compile-time error, never a silently skipped layer:
//!
//! ```compile_fail
//! use burn::nn::BatchNormConfig;
//! use burn::tensor::Device;
//! use collab_prune::{PruningConfig, PruningSchedule};
//!
//! let bn = BatchNormConfig::new(8).init(&Device::flex());
//! // error: `BatchNorm` does not implement `WeightLayer`
//! let _ = PruningConfig::new(PruningSchedule::constant(0.5)).wrap(bn);
//! ```
//!
//! Pieces: [`schedule`] (when, to which sparsity), [`mask`] (which weights), [`Prunable`] (the
//! layer decorator), [`global`] (ranking across a whole model, and model-wide reports),
//! [`whole`] (a model whose types stay unchanged, through burn's reparameterization).

pub mod config;
pub mod error;
pub mod global;
pub mod mask;
pub mod prunable;
pub mod schedule;
pub mod whole;

pub use config::{PruningConfig, Scope};
pub use error::PruneError;
pub use global::{GlobalPruning, model_report};
pub use mask::Granularity;
pub use prunable::{LayerReport, MaskTransform, Prunable};
pub use schedule::PruningSchedule;
pub use whole::{PruneMask, WholePruning};
