//! Foundations shared by the burn-collab wrappers (`Prunable`, `Clustered`, `QatAware`).
//!
//! - [`layer`]: the [`WeightLayer`] / [`LayerForward`] traits that every supported burn layer
//!   (`Linear`, `Conv1d`, `Conv2d` including depthwise and grouped) implements, and that each
//!   wrapper implements again so wrappers stack (`Clustered<Prunable<Conv2d>>`).
//! - [`ops`]: the backend kernels, apart from the API: burn's `conv2d` formulated for a fast
//!   backward pass on CPU, and the flex / autodiff backend extensions (depthwise convolution,
//!   training BatchNorm, bias + activation, channels-last storage), with the one CPU SIMD
//!   dispatch idiom ([`ops::cpu`]) every kernel of the workspace follows.
//! - [`activation`]: ReLU / ReLU6 as one fused op each way on flex (a backend extension).
//! - [`state`]: module state that a forward pass may update (masks, step counters, ranges),
//!   saved with the record, moved across devices and never touched by an optimizer.
//! - [`host`]: moving weights between device tensors and host vectors.
//! - [`whole`]: what the whole-model wrappers share (finding a model's weights by path,
//!   attaching burn reparameterizations to them, reading their state, reports, baking).
//!
//! See `docs/DESIGN.md` for why the wrappers are built this way.

pub mod convbn;
pub mod error;
pub mod host;
pub mod layer;
pub mod ops;
pub mod replica;
pub mod state;
pub mod whole;

pub use convbn::{BnMode, ConvBn};
pub use error::CoreError;
pub use layer::{
    Chain, ChannelView, LayerForward, LayerKind, NoTransform, PlainLayer, WeightLayer,
    WeightLayout, WeightTransform,
};
pub use ops::activation::{Activation, FusedActivation};
pub use replica::Reduce;
pub use state::{Counter, StateTensor};
