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
        crate::layer::join_bias(self.forward_transformed_unbiased(input, transform))
    }

    /// Folded: the convolution with the folded weight, and the shift to the folded bias.
    fn forward_transformed_unbiased<T: WeightTransform>(
        &self,
        input: Tensor<4>,
        transform: &T,
    ) -> (Tensor<4>, Option<Tensor<1>>) {
        if self.mode == BnMode::Batch {
            let y = batch_norm(&self.bn, self.conv.forward_transformed(input, transform));
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
    /// activation, fused on flex ([`crate::bias::bias_activation`]).
    fn forward_activated(&self, input: Tensor<4>, activation: Activation) -> Tensor<4> {
        if self.mode == BnMode::Batch {
            let y = self.conv.forward_transformed(input, &NoTransform);
            return batch_norm_activated(&self.bn, y, Some(activation));
        }
        crate::layer::join_bias_activated(
            self.forward_transformed_unbiased(input, &NoTransform),
            activation,
        )
    }
}

/// `bn.forward(x)` for `x` `[N, C, H, W]`, with the training-mode statistics computed by
/// per-channel reductions over `[0, 2, 3]` instead of burn's transpose-and-reshape copies: the
/// same two-pass mean and biased variance, the same running-statistics update, and a backward
/// pass through plain tensor ops. Inference (no autodiff, or the layer frozen) is burn's own.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    batch_norm_activated(bn, x, None)
}

/// [`batch_norm`] followed by `activation`: on flex in training one fused op each way
/// (`crate::batchnorm`), elsewhere the two in turn. The same values and gradients either way.
pub fn batch_norm_activated(
    bn: &BatchNorm,
    x: Tensor<4>,
    activation: Option<Activation>,
) -> Tensor<4> {
    let act = |y: Tensor<4>| match activation {
        Some(a) => a.apply(y),
        None => y,
    };
    if !(x.device().is_autodiff() && bn.training.is_enabled()) {
        return act(bn.forward(x));
    }
    let device = x.device();
    let momentum = bn.momentum;
    let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
        let running = state.value_sync().to_device(&device);
        state.update((running * (1.0 - momentum) + batch.detach() * momentum).detach());
    };
    // One fused op each way on flex (`crate::batchnorm`).
    if let Some((y, stats)) = crate::batchnorm::batch_norm_train(
        x.clone(),
        bn.gamma.val(),
        bn.beta.val(),
        bn.epsilon as f32,
        activation,
    ) {
        let [_, c] = stats.dims();
        update(
            &bn.running_mean,
            stats.clone().slice([0..1, 0..c]).reshape([c]),
        );
        update(&bn.running_var, stats.slice([1..2, 0..c]).reshape([c]));
        return y;
    }
    let mean = x.clone().mean_dims(&[0, 2, 3]);
    let centered = x - mean.clone();
    let variance = centered.clone().square().mean_dims(&[0, 2, 3]);
    let scale =
        (variance.clone() + bn.epsilon).sqrt().recip() * bn.gamma.val().reshape([1, -1, 1, 1]);
    let y = centered * scale + bn.beta.val().reshape([1, -1, 1, 1]);
    update(&bn.running_mean, mean.reshape([-1]));
    update(&bn.running_var, variance.reshape([-1]));
    act(y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::nn::PaddingConfig2d;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::{Device, Distribution};

    fn bn_with_stats(channels: usize, device: &Device) -> BatchNorm {
        let mut bn = BatchNormConfig::new(channels)
            .with_epsilon(1e-3)
            .init(device);
        bn.gamma = Param::from_tensor(Tensor::random(
            [channels],
            Distribution::Uniform(0.5, 1.5),
            device,
        ));
        bn.beta = Param::from_tensor(Tensor::random(
            [channels],
            Distribution::Normal(0.0, 0.5),
            device,
        ));
        bn.running_mean = burn::module::RunningState::new(Tensor::random(
            [channels],
            Distribution::Normal(0.0, 1.0),
            device,
        ));
        bn.running_var = burn::module::RunningState::new(Tensor::random(
            [channels],
            Distribution::Uniform(0.2, 3.0),
            device,
        ));
        bn
    }

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

    /// The fused BatchNorm + activation equals the BatchNorm followed by the activation:
    /// values, the gradients of the input, γ and β, and the running statistics, exactly.
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

    #[test]
    fn fused_activation_equals_batch_norm_then_activation() {
        let device = Device::flex().autodiff();
        device.seed(11);
        for act in [Activation::Relu, Activation::Relu6] {
            let mut fused = bn_with_stats(6, &device);
            // γ up to 5: a good share of outputs above 6, where ReLU and ReLU6 differ.
            fused.gamma = Param::from_tensor(Tensor::random(
                [6],
                Distribution::Uniform(2.0, 5.0),
                &device,
            ));
            let plain = fused.clone();
            let x = (Tensor::<4>::random([3, 6, 7, 5], Distribution::Normal(0.5, 3.0), &device)
                * 2.0)
                .round()
                .require_grad();
            let g = Tensor::<4>::random([3, 6, 7, 5], Distribution::Normal(0.0, 1.0), &device);
            let a = batch_norm_activated(&fused, x.clone(), Some(act));
            let b = act.apply(batch_norm(&plain, x.clone()));
            assert_eq!(
                a.clone().into_data(),
                b.clone().into_data(),
                "{act:?} values"
            );
            let ga = (a * g.clone()).sum().backward();
            let gb = (b * g).sum().backward();
            assert_eq!(
                x.grad(&ga).unwrap().into_data(),
                x.grad(&gb).unwrap().into_data(),
                "{act:?} input gradient"
            );
            for (p, q) in [(&fused.gamma, &plain.gamma), (&fused.beta, &plain.beta)] {
                assert_eq!(
                    p.val().grad(&ga).unwrap().into_data(),
                    q.val().grad(&gb).unwrap().into_data(),
                    "{act:?} parameter gradient"
                );
            }
            assert_eq!(
                fused.running_var.value_sync().into_data(),
                plain.running_var.value_sync().into_data()
            );
        }
    }

    #[test]
    fn batch_norm_training_equals_burn_in_values_gradients_and_running_stats() {
        let device = Device::flex().autodiff();
        device.seed(3);
        let ours = bn_with_stats(5, &device);
        let theirs = ours.clone();
        // A large per-channel offset: the two-pass variance must not cancel.
        let x = (Tensor::<4>::random([4, 5, 6, 3], Distribution::Normal(0.0, 2.0), &device)
            + 300.0)
            .require_grad();
        let g = Tensor::<4>::random([4, 5, 6, 3], Distribution::Normal(0.0, 1.0), &device);
        let a = batch_norm(&ours, x.clone());
        let b = theirs.forward(x.clone());
        let tol = burn::tensor::Tolerance::<f32>::absolute(1e-4).set_relative(1e-3);
        a.clone()
            .into_data()
            .assert_approx_eq(&b.clone().into_data(), tol);
        let ga = (a * g.clone()).sum().backward();
        let gb = (b * g).sum().backward();
        let pairs = [(x.grad(&ga), x.grad(&gb))];
        for (p, q) in pairs {
            p.unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&q.unwrap().into_data(), tol);
        }
        for (p, q) in [(&ours.gamma, &theirs.gamma), (&ours.beta, &theirs.beta)] {
            p.val()
                .grad(&ga)
                .unwrap()
                .into_data()
                .assert_approx_eq::<f32>(&q.val().grad(&gb).unwrap().into_data(), tol);
        }
        for (p, q) in [
            (&ours.running_mean, &theirs.running_mean),
            (&ours.running_var, &theirs.running_var),
        ] {
            p.value_sync()
                .into_data()
                .assert_approx_eq::<f32>(&q.value_sync().into_data(), tol);
        }
        // Without autodiff it is burn's inference path, running statistics untouched.
        let plain = Device::flex();
        let bn = bn_with_stats(5, &plain);
        let before = bn.running_mean.value().into_data();
        let x = Tensor::<4>::random([2, 5, 3, 3], Distribution::Default, &plain);
        batch_norm(&bn, x.clone())
            .into_data()
            .assert_approx_eq::<f32>(&bn.forward(x).into_data(), tol);
        assert_eq!(bn.running_mean.value().into_data(), before);
    }

    /// A MobileNet / DS-CNN block computed by our kernels (its activations stored channels
    /// last from the depthwise on: BatchNorm, pointwise GEMM and depthwise read and return that
    /// layout, gradients included) equals the block composed of burn's ops: values and the
    /// gradients of the input, both weights, γ and β. Input stored channels first and last,
    /// stride 1 and 2, both activations.
    #[test]
    fn channels_last_block_equals_burn_ops() {
        use crate::conv::{ConvSpec, conv2d};
        use burn::tensor::module::conv2d as burn_conv2d;
        use burn::tensor::ops::ConvOptions;
        let device = Device::flex().autodiff();
        device.seed(21);
        for (stride, act, stored_last) in [
            (1, Activation::Relu, false),
            (2, Activation::Relu6, false),
            (1, Activation::Relu6, true),
            (2, Activation::Relu, true),
        ] {
            let (n, c, co, h, w) = (3, 5, 7, 9, 6);
            let x = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.5, 2.0), &device)
                .require_grad();
            let wd = Tensor::<4>::random([c, 1, 3, 3], Distribution::Normal(0.0, 0.6), &device)
                .require_grad();
            let wp = Tensor::<4>::random([co, c, 1, 1], Distribution::Normal(0.0, 0.6), &device)
                .require_grad();
            let (bn1, bn2) = (bn_with_stats(c, &device), bn_with_stats(co, &device));
            let dw = ConvSpec {
                stride: [stride, stride],
                padding: [(1, 1), (1, 1)],
                dilation: [1, 1],
                groups: c,
            };
            let pw = ConvSpec {
                stride: [1, 1],
                padding: [(0, 0), (0, 0)],
                dilation: [1, 1],
                groups: 1,
            };
            let input = if stored_last {
                crate::layout::channels_last(x.clone())
            } else {
                x.clone()
            };
            let y = conv2d(input, wd.clone(), None, &dw);
            let y = batch_norm_activated(&bn1, y, Some(act));
            let y = conv2d(y, wp.clone(), None, &pw);
            let ours = batch_norm_activated(&bn2, y, Some(act));
            let opts = |s: &ConvSpec| {
                ConvOptions::new_with_padding(s.stride, s.padding, s.dilation, s.groups)
            };
            let (r1, r2) = (bn1.clone(), bn2.clone());
            let reference = |y: Tensor<4>| match act {
                Activation::Relu => burn::tensor::activation::relu(y),
                Activation::Relu6 => y.clamp(0.0, 6.0),
            };
            let y = burn_conv2d(x.clone(), wd.clone(), None, opts(&dw));
            let y = reference(r1.forward(y));
            let y = burn_conv2d(y, wp.clone(), None, opts(&pw));
            let theirs = reference(r2.forward(y));
            let tol = burn::tensor::Tolerance::<f32>::absolute(2e-4).set_relative(2e-3);
            let what = format!("stride {stride}, {act:?}, stored channels last {stored_last}");
            ours.clone()
                .into_data()
                .assert_approx_eq::<f32>(&theirs.clone().into_data(), tol);
            let g = Tensor::<4>::random(ours.dims(), Distribution::Normal(0.0, 1.0), &device);
            let ga = (ours * g.clone()).sum().backward();
            let gb = (theirs * g).sum().backward();
            let data4 = |t: Option<Tensor<4>>| t.map(|t| t.into_data());
            let data1 = |t: Option<Tensor<1>>| t.map(|t| t.into_data());
            for (name, a, b) in [
                ("input", data4(x.grad(&ga)), data4(x.grad(&gb))),
                ("depthwise weight", data4(wd.grad(&ga)), data4(wd.grad(&gb))),
                ("pointwise weight", data4(wp.grad(&ga)), data4(wp.grad(&gb))),
                (
                    "gamma 1",
                    data1(bn1.gamma.val().grad(&ga)),
                    data1(r1.gamma.val().grad(&gb)),
                ),
                (
                    "beta 2",
                    data1(bn2.beta.val().grad(&ga)),
                    data1(r2.beta.val().grad(&gb)),
                ),
            ] {
                let (a, b) = (a.expect(name), b.expect(name));
                assert_eq!(a.shape(), b.shape(), "{what}: {name}");
                a.assert_approx_eq::<f32>(&b, tol);
            }
        }
    }
}
