//! Backend kernels of int8 fake quantization, apart from the API (parameters, QAT wrappers,
//! calibration).
//!
//! Why apart: this code is backend-specific: burn backend extensions with a `flex` kernel and
//! an `Autodiff` backward, each the fused form of a composition of burn ops that the API runs
//! on other devices (see [`crate::fake`]). Each op has the shape and the CPU SIMD idiom
//! described in `collab_core::ops` and `collab_core::ops::cpu`.
//!
//! - [`fused`]: per-tensor fake quantization (optionally of `relu(x)`) with its clipped
//!   straight-through gradient, one pass each way.
//! - [`rows`]: per-row (per-output-channel) symmetric fake quantization of a weight.
//! - [`epilogue`]: a QAT layer's output over a folded `ConvBn`: `fake_quant(relu(y + shift))`
//!   and the range scans it needs.
//!
//! # What it may import
//! burn, burn-flex, burn-autodiff, rayon, `collab_core::ops`, and from this crate only
//! [`crate::params`] (the per-value arithmetic the kernels share with the host path) and, in
//! tests, [`crate::fake`]. The API reaches the kernels through their Tensor-level functions;
//! `ops` never imports the wrappers.

pub mod epilogue;
pub mod fused;
pub mod rows;
