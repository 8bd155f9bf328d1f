//! The models of the published tables, built from the layers the wrappers accept.
//!
//! - [`DsCnn`]: DS-CNN S / M / L (Zhang et al. 2017, Arm ML-KWS-for-MCU), input MFCC
//!   `[batch, 1, 49, 10]`, 12 classes; the published weights import with [`import::ds_cnn`].
//! - [`MobileNetV1`] and [`MobileNetV2`]: width multiplier, ImageNet-224 and CIFAR variants.
//!
//! Every model is generic over its convolution type `C` and linear type `L`, so the same
//! definition runs plain (`ConvBn<Conv2d>`, `Linear`) or wrapped (`Prunable<…>`,
//! `Clustered<…>`, `QatAware<…>`); [`info`] gives parameter and MAC counts from the
//! configuration alone. Each family also describes itself as a [`graph`] (`graph_spec` on its
//! configuration, [`IntoGraph`] to hand its layers to a [`GraphNet`]): the description the
//! int8 exporter traces and QAT reads, so those know nothing family-specific.

pub mod dscnn;
pub mod graph;
pub mod import;
pub mod info;
pub mod mobilenet;

pub use dscnn::{DsBlock, DsCnn, DsCnnConfig, DsCnnSize};
pub use graph::{
    GraphBuilder, GraphNet, GraphSpec, GraphWeights, IntoGraph, REFOLD_EPSILON, refold,
};
pub use info::{LayerInfo, ModelInfo};
pub use mobilenet::{
    InvertedResidual, MobileNetV1, MobileNetV1Config, MobileNetV2, MobileNetV2Config, Variant,
};

use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNormConfig, PaddingConfig2d};
use burn::tensor::Device;
use collab_core::ConvBn;

/// The plain convolution block every model is made of: a `Conv2d` with its BatchNorm.
pub type ConvBlock = ConvBn<burn::nn::conv::Conv2d>;

/// Errors of the models crate.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ModelError {
    /// A configuration value that cannot build a model.
    #[error("invalid model setting `{field}`: {reason}")]
    Setting {
        /// The setting.
        field: &'static str,
        /// Why, and what would work.
        reason: String,
    },
    /// A weight file that does not fit the model.
    #[error("{file}: {reason}")]
    Weights {
        /// The weight file.
        file: String,
        /// What is missing or mismatched.
        reason: String,
    },
}

/// A `kernel`×`kernel` convolution block (`groups` = `channels_in` for depthwise) with TF's
/// SAME padding and a BatchNorm (`epsilon`, `momentum` as burn defines it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_block(
    channels: [usize; 2],
    kernel: [usize; 2],
    stride: [usize; 2],
    groups: usize,
    bias: bool,
    epsilon: f64,
    device: &Device,
) -> ConvBlock {
    let conv = Conv2dConfig::new(channels, kernel)
        .with_stride(stride)
        .with_groups(groups)
        .with_padding(PaddingConfig2d::Same)
        .with_bias(bias)
        .init(device);
    let bn = BatchNormConfig::new(channels[1])
        .with_epsilon(epsilon)
        .with_momentum(0.1)
        .init(device);
    ConvBn::new(conv, bn)
}

/// Append the convolution `name` of a built-in family to its graph: TF SAME padding (what
/// [`conv_block`] builds), with or without bias, activation `act` fused; returns its value.
#[allow(clippy::too_many_arguments)]
pub(crate) fn graph_conv(
    g: &mut graph::GraphBuilder,
    name: &str,
    x: usize,
    out: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    groups: usize,
    bias: bool,
    act: graph::FusedActivation,
) -> usize {
    let conv = graph::ConvSpec {
        bias,
        ..g.same_conv(x, out, kernel, stride, groups)
    };
    let v = g.conv_with(x, conv, act);
    g.rename(v, name)
}

/// A built-in family's figures: its graph's, plus the BatchNorm after every convolution
/// (γ, β, mean, variance per channel), which the graph holds folded.
pub(crate) fn family_info(spec: graph::GraphSpec) -> Result<info::ModelInfo, ModelError> {
    let mut info = spec.info()?;
    info.batch_norm_params = 4 * spec.convs.iter().map(|c| c.channels[1]).sum::<usize>();
    Ok(info)
}

/// End a built-in family's graph: global average pooling (`pool`), flattening
/// (`pool/flatten`) and the classifier `fc` of `classes` outputs, read as probabilities.
pub(crate) fn classifier(
    mut g: graph::GraphBuilder,
    x: usize,
    classes: usize,
) -> Result<graph::GraphSpec, ModelError> {
    let x = g.global_avg_pool(x);
    let x = g.rename(x, "pool");
    let x = g.flatten(x);
    let x = g.rename(x, "pool/flatten");
    let x = g.linear(x, classes, graph::FusedActivation::None);
    g.rename(x, "fc");
    g.finish(true)
}
