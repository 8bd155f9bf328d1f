//! Magnitude pruning for burn layers.
//!
//! Wrap a `Linear`, `Conv1d` or `Conv2d` (any `groups`, depthwise included) in [`Prunable`]
//! through a [`PruningConfig`], train as usual, then [`strip`](Prunable::strip) it
//! back to the plain burn layer with zeros in its weight.
//!
//! The three layer wrappers of the workspace (this one, `Clustered`, `QatAware`) share one
//! shape, shown in [`prunable`]: a config, `wrap` / `wrap_named` a layer, `forward` (training
//! steps), `report(name)`, `strip`.
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
