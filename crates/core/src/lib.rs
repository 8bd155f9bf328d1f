//! Foundations shared by the burn-collab wrappers (`Prunable`, `Clustered`, `QatAware`).
//!
//! - [`layer`]: the [`WeightLayer`] / [`LayerForward`] traits that every supported burn layer
//!   (`Linear`, `Conv1d`, `Conv2d` including depthwise and grouped) implements, and that each
//!   wrapper implements again so wrappers stack (`Clustered<Prunable<Conv2d>>`).
//! - [`conv`]: burn's `conv2d` formulated so that its backward pass is fast on CPU.
//! - [`extension`]: plumbing shared by the backend-extension ops (devices with our flex
//!   kernels, `f32` slices, results without a gradient).
//! - [`depthwise`]: depthwise convolution with a fast backward pass on flex (a backend extension).
//! - [`activation`]: ReLU / ReLU6 as one fused op each way on flex (a backend extension).
//! - [`batchnorm`]: training-mode BatchNorm as one fused op each way on flex (a backend
//!   extension).
//! - [`layout`]: `[A, B, K]` → `[B, A, K]` as row copies on flex (a backend extension).
//! - [`state`]: module state that a forward pass may update (masks, step counters, ranges),
//!   saved with the record, moved across devices and never touched by an optimizer.
//! - [`host`]: moving weights between device tensors and host vectors.
//! - [`whole`]: what the whole-model wrappers share (finding a model's weights by path,
//!   attaching burn reparameterizations to them, reading their state, reports, baking).
//!
//! See `docs/DESIGN.md` for why the wrappers are built this way.

pub mod activation;
pub mod batchnorm;
pub mod bias;
pub mod conv;
pub mod convbn;
pub mod depthwise;
pub mod error;
pub mod extension;
pub mod host;
pub mod layer;
pub mod layout;
pub mod replica;
pub mod state;
pub mod whole;

pub use convbn::{BnMode, ConvBn};
pub use error::CoreError;
pub use layer::{
    Activation, Chain, ChannelView, LayerForward, LayerKind, NoTransform, PlainLayer, WeightLayer,
    WeightLayout, WeightTransform,
};
pub use replica::Reduce;
pub use state::{Counter, StateTensor};
