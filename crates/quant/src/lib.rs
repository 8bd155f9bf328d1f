//! Int8 quantization for burn layers, with TFLite's int8 arithmetic.
//!
//! - [`QuantParams`]: the one description of scales and zero points, shared by QAT, PTQ and
//!   export.
//! - [`QatAware`] (via [`QatConfig::wrap`]): quantization-aware training: symmetric int8 weight
//!   fake-quant (per output channel for convolutions, per tensor or per channel for `Linear`),
//!   asymmetric int8 activation fake-quant with moving-average ranges, fused ReLU / ReLU6,
//!   straight-through gradients clipped to the range.
//! - [`calibrate`]: post-training quantization: ranges from representative batches (min/max or
//!   percentile), no training.
//! - BatchNorm: wrap a [`collab_core::ConvBn`] block; it is computed with the BatchNorm folded
//!   into the convolution (running statistics), so the weight quantized in training is the
//!   weight the int8 file holds.
//! - [`WholeQat`]: weight fake-quant of every weight of a model whose types stay unchanged
//!   (burn's parameter reparameterization; weights only, see [`whole`]).
//! - [`ops`]: the backend kernels (fused fake-quant ops on flex, with their autodiff backward),
//!   apart from the API.
//!
//! The three layer wrappers of the workspace share one shape, shown in [`qat`]: a config,
//! `wrap` / `wrap_named` a layer, `forward` (training steps), `report(name)`, `strip`.

pub mod act;
pub mod error;
pub mod fake;
pub mod ops;
pub mod params;
pub mod ptq;
pub mod qat;
pub mod whole;

pub use act::{ActQuant, ActQuantConfig, ActReport, Calibration};
pub use error::QuantError;
pub use fake::{fake_quant, fake_quant_per_tensor, round_half_away};
pub use ops::fused::fake_quant_fused;
pub use params::QuantParams;
pub use ptq::{begin_calibration, calibrate, end_calibration};
pub use qat::{
    FusedActivation, LayerQuant, QatAware, QatConfig, QatReport, WeightFakeQuant, WeightQatReport,
};
pub use whole::{WeightQat, WholeQat};
