//! Backend kernels: the computations behind the layers and wrappers, apart from the API
//! (traits, wrappers, configurations) that the rest of `collab-core` defines.
//!
//! Why apart: this code is backend-specific. Most of it implements burn backend extensions
//! for `flex` (our CPU kernels, run through rayon and vectorized per [`cpu`]) and for
//! `Autodiff` over them (the custom backward passes), and some of it re-formulates a burn op so
//! that its autodiff graph is fast on CPU. None of it decides anything about pruning,
//! clustering or quantization; the API calls it through the Tensor-level functions below and
//! works unchanged, more slowly, on a device without these kernels.
//!
//! - [`cpu`]: the CPU SIMD dispatch idiom every kernel follows (one cached feature probe,
//!   [`widest!`](crate::widest)).
//! - [`extension`]: what every backend-extension op shares: which devices reach the kernels
//!   ([`extension::on_flex`]), `f32` buffers of flex tensors, backward results recorded without
//!   a gradient.
//! - [`layout`]: channels-last storage on flex, and the conversion op.
//! - [`conv`]: burn's `conv2d` formulated so that its backward pass is fast on CPU.
//! - [`depthwise`]: depthwise convolution (forward and both gradients) on flex.
//! - [`batchnorm`]: training-mode BatchNorm (+ ReLU / ReLU6) as one fused op each way on flex,
//!   and [`batchnorm::batch_norm`] for a burn `BatchNorm` module on any device.
//! - [`bias`]: per-channel bias add (+ ReLU / ReLU6) as one fused op each way on flex.
//!
//! The ReLU / ReLU6 op is still [`crate::activation`] (to move here).
//!
//! # The shape of an op
//! Every backend-extension op has the same four parts, so that each reads like the others:
//! 1. a trait `XOps: Backend` under `#[backend_extension(Flex, Autodiff)]`, its methods on
//!    backend primitives;
//! 2. `impl XOps for Flex`: the kernel, on contiguous `f32` buffers ([`extension`]);
//! 3. `impl XOps for Autodiff<B, C>`: the forward recorded with a `Backward` struct that calls
//!    the backward methods; the backward methods themselves recorded through
//!    [`extension::untracked`] (no second derivatives);
//! 4. a Tensor-level function that returns `Option`: `None` where the device has no kernel,
//!    decided by [`extension::on_flex`] and nothing else, so the caller composes burn ops
//!    there.
//!
//! # What it may import
//! burn, burn-flex, burn-autodiff, rayon, `std::arch`; from this crate only [`crate::layer`]'s
//! `Activation` type, [`crate::activation`] (the per-value ReLU rules the fused kernels share) and
//! other modules of `ops`. The API imports `ops` through the Tensor-level functions;
//! `ops` never imports the wrappers, state or whole-model code, so the two stay one-way.

pub mod activation;
pub mod batchnorm;
pub mod bias;
pub mod conv;
pub mod cpu;
pub mod depthwise;
pub mod extension;
pub mod layout;
