//! `ConvBn<C>`: a convolution followed by BatchNorm, computed with the BatchNorm folded into
//! the convolution's weight and bias (running statistics, so the statistics are frozen).
//!
//! This is the block the compression stages work on: its effective weight is the folded
//! weight, so pruning, clustering and fake-quantisation wrapped around it act on exactly the
//! weight the int8 file will hold (`strip` returns a plain `Conv2d` with the folded weight and
//! bias, and no BatchNorm). `gamma`, `beta`, the convolution weight and bias keep training;
//! `running_mean` / `running_var` do not change. Train from scratch with a plain `Conv2d` and
//! `BatchNorm`; fine-tune and compress with `ConvBn`.
//!
//! Folding: `factor = gamma / sqrt(running_var + eps)`, `w' = w · factor` (per output
//! channel), `b' = beta + (b - running_mean) · factor`.

use burn::module::{Module, Param};
use burn::nn::BatchNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use crate::{
    Activation, Chain, LayerForward, NoTransform, PlainLayer, WeightLayer, WeightLayout,
    WeightTransform,
};

/// How [`ConvBn`] computes its forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BnMode {
    /// BatchNorm folded into the convolution with its running statistics (frozen): what the
    /// int8 graph computes. The default, for fine-tuning and compression.
    #[default]
    Folded,
    /// Convolution, then BatchNorm as burn computes it (batch statistics in training, which
    /// also update the running ones): for training from scratch. Wrappers then see the raw
    /// convolution weight.
    Batch,
}

/// A convolution (`Conv2d` or a wrapper around one) with its BatchNorm folded in.
#[derive(Module, Debug)]
pub struct ConvBn<C> {
    /// The convolution (its own bias, if any, is folded too).
    pub conv: C,
    /// The BatchNorm after it; only `gamma`, `beta` and the running statistics are used.
    pub bn: BatchNorm,
    /// Folded (default) or batch-statistics forward pass.
    #[module(skip)]
    pub mode: BnMode,
}

/// Multiplies each output channel's weights by its BatchNorm factor.
struct Fold {
    /// `[out]`.
    factor: Tensor<1>,
}

impl WeightTransform for Fold {
    fn apply<const D: usize>(&self, weight: Tensor<D>) -> Tensor<D> {
        let shape = weight.shape();
        let out = self.factor.dims()[0];
        let rows: Tensor<2> = weight.reshape([out as i32, -1]);
        (rows * self.factor.clone().unsqueeze_dim::<2>(1)).reshape(shape)
    }
}

impl<C: WeightLayer<Plain = Conv2d>> ConvBn<C> {
    /// Join a convolution and the BatchNorm that follows it.
    pub fn new(conv: C, bn: BatchNorm) -> Self {
        Self {
            conv,
            bn,
            mode: BnMode::Folded,
        }
    }

    /// The same block with another forward mode.
    pub fn with_mode(mut self, mode: BnMode) -> Self {
        self.mode = mode;
        self
    }

    /// `gamma / sqrt(running_var + eps)`, `[out]`.
    pub fn factor(&self) -> Tensor<1> {
        let var = self
            .bn
            .running_var
            .value()
            .to_device(&self.bn.gamma.val().device());
        self.bn.gamma.val() / (var + self.bn.epsilon).sqrt()
    }

    /// The folded bias `beta + (b - running_mean) · factor`, `[out]`, given the conv bias `b`.
    fn folded_bias(&self, bias: Option<Tensor<1>>, factor: Tensor<1>) -> Tensor<1> {
        let beta = self.bn.beta.val();
        let mean = self.bn.running_mean.value().to_device(&beta.device());
        let bias = match bias {
            Some(b) => b - mean,
            None => mean.neg(),
        };
        beta + bias * factor
    }
}

impl<C: WeightLayer<Plain = Conv2d>> WeightLayer for ConvBn<C> {
    type Plain = Conv2d;

    fn layout(&self) -> WeightLayout {
        self.conv.layout()
    }

    fn bias(&self) -> Option<Tensor<1>> {
        Some(self.folded_bias(self.conv.bias(), self.factor()))
    }

    fn effective_weight(&self) -> Tensor<1> {
        Fold {
            factor: self.factor(),
        }
        .apply(self.conv.effective_weight())
    }

    /// A plain `Conv2d` with the folded weight and bias.
    fn strip(self) -> Conv2d {
        let factor = self.factor().detach();
        let bias = self.folded_bias(self.conv.bias(), factor.clone()).detach();
        let fold = Fold { factor };
        let mut conv = self.conv.strip().map_weight(|w| fold.apply(w));
        let require_grad = conv.weight.val().is_require_grad();
        let bias = if require_grad {
            bias.require_grad()
        } else {
            bias
        };
        // `Param::map` keeps the bias's configured trainability; `Param::initialized` would take
        // it from the tensor, which is never "requires grad" off the autodiff device, and the
        // folded bias of a stripped (evaluation-mode) block would then stay frozen when the
        // block is trained again (a reloaded copy of the same block trains it).
        conv.bias = Some(match conv.bias {
            Some(param) => param.map(|_| bias),
            None => Param::from_tensor(bias),
        });
        conv
    }
}

impl<C: LayerForward<4, Plain = Conv2d>> LayerForward<4> for ConvBn<C> {
    fn forward_transformed<T: WeightTransform>(
        &self,
        input: Tensor<4>,
        transform: &T,
    ) -> Tensor<4> {
        crate::ops::bias::join_bias(self.forward_transformed_unbiased(input, transform))
    }

    /// Folded: the convolution with the folded weight, and the shift to the folded bias.
    fn forward_transformed_unbiased<T: WeightTransform>(
        &self,
        input: Tensor<4>,
        transform: &T,
    ) -> (Tensor<4>, Option<Tensor<1>>) {
        if self.mode == BnMode::Batch {
            let y = crate::ops::batchnorm::batch_norm(
                &self.bn,
                self.conv.forward_transformed(input, transform),
            );
            return (y, None);
        }
        let factor = self.factor();
        let fold = Fold {
            factor: factor.clone(),
        };
        // The conv adds its own bias `b`; shift it to the folded bias.
        let conv_bias = self.conv.bias();
        let shift = match conv_bias.clone() {
            Some(b) => self.folded_bias(conv_bias, factor) - b,
            None => self.folded_bias(None, factor),
        };
        let y = self.conv.forward_transformed(
            input,
            &Chain {
                first: &fold,
                then: transform,
            },
        );
        (y, Some(shift))
    }

    /// In batch mode the BatchNorm and the activation are one fused op on flex
    /// ([`batch_norm_activated`]); folded, the convolution and then the folded bias with the
    /// activation, fused on flex ([`crate::ops::bias::bias_activation`]).
    fn forward_activated(&self, input: Tensor<4>, activation: Activation) -> Tensor<4> {
        if self.mode == BnMode::Batch {
            let y = self.conv.forward_transformed(input, &NoTransform);
            return crate::ops::batchnorm::batch_norm_activated(&self.bn, y, Some(activation));
        }
        crate::ops::bias::join_bias_activated(
            self.forward_transformed_unbiased(input, &NoTransform),
            activation,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution};

    use crate::ops::batchnorm::tests::bn_with_stats;

    #[test]
    fn folding_leaves_the_float_output_unchanged() {
        let device = Device::flex();
        for (groups, bias) in [(1, true), (1, false), (6, true)] {
            let conv = Conv2dConfig::new([6, 6], [3, 3])
                .with_groups(groups)
                .with_bias(bias)
                .with_padding(PaddingConfig2d::Same)
                .init(&device);
            let bn = bn_with_stats(6, &device);
            let x = Tensor::<4>::random([2, 6, 7, 5], Distribution::Normal(0.0, 1.0), &device);
            let reference = bn.valid().forward(conv.forward(x.clone()));
            let block = ConvBn::new(conv, bn);
            let folded = block.forward(x.clone());
            let stripped = block.strip().forward(x);
            for out in [folded, stripped] {
                let err = (out - reference.clone()).abs().max().into_scalar::<f32>();
                let scale = reference.clone().abs().max().into_scalar::<f32>();
                assert!(
                    err <= 1e-5 * scale.max(1.0),
                    "groups {groups}, bias {bias}: max error {err} vs scale {scale}"
                );
            }
        }
    }

    #[test]
    fn a_stripped_block_trains_its_folded_bias_again() {
        // Stripped in evaluation mode (off the autodiff device), as every tree node is: taken
        // back to training, weight and folded bias must both be trainable, as they are in a
        // copy of the same block loaded from a record.
        let device = Device::flex();
        for bias in [true, false] {
            let conv = Conv2dConfig::new([4, 4], [3, 3])
                .with_bias(bias)
                .init(&device);
            let stripped = ConvBn::new(conv, bn_with_stats(4, &device)).strip();
            let trained = stripped.fork(&device.clone().autodiff()).train();
            assert!(
                trained.weight.val().is_require_grad(),
                "bias {bias}: weight"
            );
            let folded = trained.bias.as_ref().expect("a folded bias").val();
            assert!(folded.is_require_grad(), "bias {bias}: folded bias frozen");
        }
    }
}
