//! The layers the wrappers accept, and how wrappers stack on them.
//!
//! A supported layer computes `op(input, weight, bias)`. The wrappers only change the weight,
//! so a layer exposes one operation: run its forward with the weight first passed through a
//! [`WeightTransform`]. `Prunable<L>` implements the same traits by composing its own transform
//! in front of the caller's, which is what lets `Clustered<Prunable<Conv2d>>` or
//! `QatAware<Clustered<Prunable<Conv2d>>>` see the effective weight of the layer below.
//!
//! Layers other than `Linear`, `Conv1d` and `Conv2d` (any `groups`, so depthwise too) do not
//! implement these traits, so wrapping them is a compile-time error, never a silent skip.

use burn::module::{Module, ModuleDisplay, Param};
use burn::nn::Linear;
use burn::nn::conv::{Conv1d, Conv2d};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::ops::activation::Activation;
use crate::ops::bias::join_bias_activated;

/// The operation a weight tensor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerKind {
    /// burn `Linear`, weight `[d_input, d_output]`.
    Linear,
    /// burn `Conv1d`, weight `[out, in / groups, k]`.
    Conv1d,
    /// burn `Conv2d`, weight `[out, in / groups, kh, kw]`.
    Conv2d,
}

/// Where each element of a weight tensor sits: output channel, input channel, kernel position.
///
/// Flat indices below are row-major indices into the layer's own weight layout (burn's), which
/// is also the order masks, cluster indices and reports use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightLayout {
    /// The layer's operation.
    pub kind: LayerKind,
    /// The weight's shape in burn's layout.
    pub shape: Vec<usize>,
    /// Convolution groups (1 for `Linear`).
    pub groups: usize,
}

impl WeightLayout {
    /// Number of weight elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Number of output channels (output features for `Linear`).
    pub fn out_channels(&self) -> usize {
        match self.kind {
            LayerKind::Linear => self.shape[1],
            LayerKind::Conv1d | LayerKind::Conv2d => self.shape[0],
        }
    }

    /// Input channels seen by one output channel (`in / groups` for convolutions).
    pub fn in_per_group(&self) -> usize {
        match self.kind {
            LayerKind::Linear => self.shape[0],
            LayerKind::Conv1d | LayerKind::Conv2d => self.shape[1],
        }
    }

    /// Kernel positions per (output, input) pair: 1 for `Linear`, `k` or `kh·kw` for convs.
    pub fn kernel_size(&self) -> usize {
        match self.kind {
            LayerKind::Linear => 1,
            LayerKind::Conv1d | LayerKind::Conv2d => self.shape[2..].iter().product(),
        }
    }

    /// Weights feeding one output channel: `in_per_group · kernel_size`.
    pub fn fan_in(&self) -> usize {
        self.in_per_group() * self.kernel_size()
    }

    /// Whether this is a depthwise convolution (one input channel per group, `groups > 1`).
    pub fn is_depthwise(&self) -> bool {
        self.kind != LayerKind::Linear && self.groups > 1 && self.in_per_group() == 1
    }

    /// Flat index of the weight for output channel `out`, input channel `input` (within its
    /// group) and kernel position `k` (row-major over the kernel dims).
    pub fn index(&self, out: usize, input: usize, k: usize) -> usize {
        match self.kind {
            LayerKind::Linear => input * self.shape[1] + out,
            LayerKind::Conv1d | LayerKind::Conv2d => {
                (out * self.in_per_group() + input) * self.kernel_size() + k
            }
        }
    }

    /// Flat index of column `col` (`0..fan_in`) of row `out` in the `[out, fan_in]` view.
    pub fn index_2d(&self, out: usize, col: usize) -> usize {
        let kernel = self.kernel_size();
        self.index(out, col / kernel, col % kernel)
    }

    /// Output channel of flat index `i`.
    pub fn out_channel_of(&self, i: usize) -> usize {
        match self.kind {
            LayerKind::Linear => i % self.shape[1],
            LayerKind::Conv1d | LayerKind::Conv2d => i / self.fan_in(),
        }
    }

    /// A short description such as `conv2d [64, 1, 3, 3] depthwise`.
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            LayerKind::Linear => "linear",
            LayerKind::Conv1d => "conv1d",
            LayerKind::Conv2d => "conv2d",
        };
        let extra = if self.is_depthwise() {
            " depthwise".to_string()
        } else if self.groups > 1 {
            format!(" groups={}", self.groups)
        } else {
            String::new()
        };
        format!("{kind} {:?}{extra}", self.shape)
    }
}

/// A weight seen as `[rows, cols]`: one row per output channel (per-channel mode), or a single
/// row holding the whole tensor. Per-channel statistics (cluster centroids, quantization scales)
/// are computed along rows. For `Linear` (`[in, out]` in burn) the per-channel view is the
/// transpose, so rows are output features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelView {
    /// Output channels, or 1.
    pub rows: usize,
    /// Weights per row.
    pub cols: usize,
    transposed: bool,
    linear: [usize; 2],
}

impl ChannelView {
    /// The view of a weight with `layout`, per output channel or per tensor.
    pub fn new(layout: &WeightLayout, per_channel: bool) -> Self {
        let n = layout.numel();
        let linear = [layout.shape[0], *layout.shape.get(1).unwrap_or(&1)];
        match (per_channel, layout.kind) {
            (false, _) => Self {
                rows: 1,
                cols: n,
                transposed: false,
                linear,
            },
            (true, LayerKind::Linear) => Self {
                rows: linear[1],
                cols: linear[0],
                transposed: true,
                linear,
            },
            (true, _) => Self {
                rows: layout.out_channels(),
                cols: n / layout.out_channels().max(1),
                transposed: false,
                linear,
            },
        }
    }

    /// A weight of any rank (or flattened) → `[rows, cols]`.
    pub fn flatten_rows<const D: usize, K: burn::tensor::kind::Basic>(
        &self,
        weight: Tensor<D, K>,
    ) -> Tensor<2, K> {
        if self.transposed {
            weight.reshape(self.linear).transpose()
        } else {
            weight.reshape([self.rows, self.cols])
        }
    }

    /// `[rows, cols]` → `shape` (the weight's own shape).
    pub fn unflatten_rows<const D: usize>(
        &self,
        view: Tensor<2>,
        shape: burn::tensor::Shape,
    ) -> Tensor<D> {
        let view = if self.transposed {
            view.transpose()
        } else {
            view
        };
        view.reshape(shape)
    }

    /// Row of flat index `i` (burn's layout).
    pub fn row_of(&self, layout: &WeightLayout, i: usize) -> usize {
        if self.rows == 1 {
            0
        } else {
            layout.out_channel_of(i)
        }
    }
}

/// A change of a weight tensor applied inside the forward pass (mask, centroid gather,
/// fake-quant). Generic over the rank so that one transform serves every layer.
pub trait WeightTransform {
    /// Transform a weight of any rank, keeping its shape.
    fn apply<const D: usize>(&self, weight: Tensor<D>) -> Tensor<D>;
}

/// The identity transform.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTransform;

impl WeightTransform for NoTransform {
    fn apply<const D: usize>(&self, weight: Tensor<D>) -> Tensor<D> {
        weight
    }
}

/// `first`, then `then`: how a wrapper puts its own transform in front of an outer one.
#[derive(Clone, Copy, Debug)]
pub struct Chain<'a, A, B> {
    /// Applied first (the inner wrapper's transform).
    pub first: &'a A,
    /// Applied to the result (the outer wrapper's transform).
    pub then: &'a B,
}

impl<A: WeightTransform, B: WeightTransform> WeightTransform for Chain<'_, A, B> {
    fn apply<const D: usize>(&self, weight: Tensor<D>) -> Tensor<D> {
        self.then.apply(self.first.apply(weight))
    }
}

/// A layer with one weight tensor that the wrappers can change: a burn `Linear` / `Conv1d` /
/// `Conv2d`, or a wrapper around one.
pub trait WeightLayer: Module + ModuleDisplay {
    /// The plain burn layer this stack strips down to.
    type Plain: PlainLayer;

    /// Shape and meaning of the weight.
    fn layout(&self) -> WeightLayout;

    /// The weight the forward pass computes with (after every wrapper's transform), flattened
    /// in burn's layout. Shape `[numel]`.
    fn effective_weight(&self) -> Tensor<1>;

    /// The plain burn layer whose weight is [`effective_weight`](Self::effective_weight).
    fn strip(self) -> Self::Plain;

    /// The bias the forward pass adds, `[out]` (wrappers leave it unchanged), if any.
    fn bias(&self) -> Option<Tensor<1>>;
}

/// A [`WeightLayer`] whose forward maps a rank-`D` input to a rank-`D` output.
///
/// `Linear` implements it for every `D`, `Conv1d` for 3, `Conv2d` for 4.
pub trait LayerForward<const D: usize>: WeightLayer {
    /// The layer's forward pass with its weight first passed through `transform`.
    ///
    /// # Shapes
    /// As the wrapped burn layer (`[.., d_input] -> [.., d_output]` for `Linear`,
    /// `[batch, in, len] -> [batch, out, len']` for `Conv1d`,
    /// `[batch, in, h, w] -> [batch, out, h', w']` for `Conv2d`).
    fn forward_transformed<T: WeightTransform>(&self, input: Tensor<D>, transform: &T)
    -> Tensor<D>;

    /// [`Self::forward_transformed`] split before a trailing per-output-channel bias:
    /// `(y, Some(b))` with `forward_transformed(input, transform) == y + b` (`b` `[channels]`
    /// broadcast over dimension 1), so that a QAT layer can add `b` inside its fused output
    /// quantizer instead of in a pass of its own. A folded [`crate::ConvBn`] splits off its
    /// BatchNorm shift; weight-only wrappers split as the layer they wrap; other layers return
    /// `(forward_transformed(..), None)`.
    fn forward_transformed_unbiased<T: WeightTransform>(
        &self,
        input: Tensor<D>,
        transform: &T,
    ) -> (Tensor<D>, Option<Tensor<1>>) {
        (self.forward_transformed(input, transform), None)
    }

    /// The forward pass of the whole stack (wrappers included), with no extra transform.
    ///
    /// Lets a model be generic over plain and wrapped layers: `C: LayerForward<4>` accepts
    /// `Conv2d`, `Prunable<Conv2d>`, … (an inherent `forward` of a concrete type takes
    /// precedence and does the same).
    fn forward(&self, input: Tensor<D>) -> Tensor<D> {
        self.forward_transformed(input, &NoTransform)
    }

    /// Whether the stack's output has already been through `activation`: a QAT layer with the
    /// activation fused into its output quantizer, as TFLite fuses it. Weight-only wrappers
    /// answer for the layer they wrap; layers and [`crate::ConvBn`] answer `false`.
    fn applies_activation(&self, activation: Activation) -> bool {
        let _ = activation;
        false
    }

    /// `activation(forward(input))`, where the model's activation after this layer is
    /// skipped when the stack has applied it (see [`Self::applies_activation`]): the output
    /// quantizer's values are already in the activation's range, and the int8 op has one
    /// fused activation, not two.
    ///
    /// # Shapes
    /// As [`Self::forward`].
    ///
    /// A trailing bias ([`Self::forward_transformed_unbiased`]) and the activation are one
    /// fused pass each way on flex ([`join_bias_activated`]).
    fn forward_activated(&self, input: Tensor<D>, activation: Activation) -> Tensor<D> {
        if self.applies_activation(activation) {
            return self.forward(input);
        }
        join_bias_activated(
            self.forward_transformed_unbiased(input, &NoTransform),
            activation,
        )
    }
}

/// A wrapper around one weight layer that changes its weight by one transform (`Prunable`,
/// `Clustered`, `QatAware`). Its [`WeightLayer`] follows: the inner layer's layout and bias,
/// the effective weight and the stripped weight through [`weight_transform`](Self::weight_transform).
pub trait WeightWrapper: Module + ModuleDisplay {
    /// The wrapped layer (a plain burn layer or another wrapper).
    type Inner: WeightLayer;
    /// This wrapper's change of the weight.
    type Transform: WeightTransform;

    /// The wrapped layer.
    fn inner(&self) -> &Self::Inner;

    /// The wrapped layer, by value (for [`WeightLayer::strip`]).
    fn into_inner(self) -> Self::Inner;

    /// The transform the forward pass applies to the inner layer's effective weight.
    fn weight_transform(&self) -> Self::Transform;

    /// The transform [`WeightLayer::strip`] applies (its result is detached): by default
    /// [`weight_transform`](Self::weight_transform); a wrapper whose transform holds trainable
    /// tensors may give a detached copy.
    fn strip_transform(&self) -> Self::Transform {
        self.weight_transform()
    }
}

impl<W: WeightWrapper> WeightLayer for W {
    type Plain = <W::Inner as WeightLayer>::Plain;

    fn layout(&self) -> WeightLayout {
        self.inner().layout()
    }

    fn bias(&self) -> Option<Tensor<1>> {
        self.inner().bias()
    }

    /// The inner layer's effective weight through this wrapper's transform.
    fn effective_weight(&self) -> Tensor<1> {
        self.weight_transform()
            .apply(self.inner().effective_weight())
    }

    /// The inner layer stripped, its weight through [`WeightWrapper::strip_transform`] and
    /// detached.
    fn strip(self) -> Self::Plain {
        let transform = self.strip_transform();
        self.into_inner()
            .strip()
            .map_weight(|w| transform.apply(w).detach())
    }
}

/// A [`WeightWrapper`] that changes nothing but the weight (`Prunable`, `Clustered`; not
/// `QatAware`, which also quantizes activations). Its [`LayerForward`] follows: the inner
/// layer's forward with this wrapper's transform applied ahead of the caller's, split before a
/// trailing bias as the inner layer splits, and the inner layer's answer to
/// [`LayerForward::applies_activation`].
pub trait WeightOnlyWrapper: WeightWrapper {
    /// Called at the start of every forward pass, before
    /// [`weight_transform`](WeightWrapper::weight_transform), with the input's device (a
    /// wrapper with a training schedule takes its step here). Does nothing by default.
    fn begin_forward(&self, input_device: &burn::tensor::Device) {
        let _ = input_device;
    }
}

impl<const D: usize, W> LayerForward<D> for W
where
    W: WeightOnlyWrapper,
    W::Inner: LayerForward<D>,
{
    fn forward_transformed<T: WeightTransform>(
        &self,
        input: Tensor<D>,
        transform: &T,
    ) -> Tensor<D> {
        crate::ops::bias::join_bias(self.forward_transformed_unbiased(input, transform))
    }

    fn forward_transformed_unbiased<T: WeightTransform>(
        &self,
        input: Tensor<D>,
        transform: &T,
    ) -> (Tensor<D>, Option<Tensor<1>>) {
        self.begin_forward(&input.device());
        let own = self.weight_transform();
        self.inner().forward_transformed_unbiased(
            input,
            &Chain {
                first: &own,
                then: transform,
            },
        )
    }

    fn applies_activation(&self, activation: Activation) -> bool {
        self.inner().applies_activation(activation)
    }
}

/// A plain burn layer (no wrapper): the end of a wrapper stack.
pub trait PlainLayer: WeightLayer<Plain = Self> {
    /// Replace the weight by `f(weight)`, with the weight flattened to `[numel]` in burn's layout.
    /// The parameter keeps its id and trainability.
    fn map_weight<F: FnOnce(Tensor<1>) -> Tensor<1>>(self, f: F) -> Self;
}

fn flatten<const D: usize>(weight: Tensor<D>) -> Tensor<1> {
    let n = weight.shape().num_elements();
    weight.reshape([n])
}

macro_rules! plain_layer {
    ($layer:ty, $kind:expr, $groups:expr) => {
        impl WeightLayer for $layer {
            type Plain = Self;

            fn layout(&self) -> WeightLayout {
                #[allow(clippy::redundant_closure_call)]
                let groups = ($groups)(self);
                WeightLayout {
                    kind: $kind,
                    shape: self.weight.shape().as_slice().to_vec(),
                    groups,
                }
            }

            fn effective_weight(&self) -> Tensor<1> {
                flatten(self.weight.val())
            }

            fn strip(self) -> Self {
                self
            }

            fn bias(&self) -> Option<Tensor<1>> {
                self.bias.as_ref().map(|b| b.val())
            }
        }

        impl PlainLayer for $layer {
            fn map_weight<F: FnOnce(Tensor<1>) -> Tensor<1>>(mut self, f: F) -> Self {
                self.weight = self.weight.map(|w| {
                    let shape = w.shape();
                    let require_grad = w.is_require_grad();
                    let mapped = f(flatten(w)).reshape(shape);
                    if require_grad {
                        mapped.detach().require_grad()
                    } else {
                        mapped
                    }
                });
                self
            }
        }
    };
}

plain_layer!(Linear, LayerKind::Linear, |_: &Linear| 1);
plain_layer!(Conv1d, LayerKind::Conv1d, |c: &Conv1d| c.groups);
plain_layer!(Conv2d, LayerKind::Conv2d, |c: &Conv2d| c.groups);

/// Run the layer's own burn forward with its weight replaced by the transformed one, so that
/// padding, stride and dilation semantics stay exactly burn's. Cloning a layer clones tensor
/// handles only.
macro_rules! forward_with_weight {
    ($self:ident, $input:ident, $transform:ident) => {{
        let mut layer = $self.clone();
        layer.weight = Param::initialized($self.weight.id, $transform.apply($self.weight.val()));
        layer.forward($input)
    }};
}

impl<const D: usize> LayerForward<D> for Linear {
    fn forward_transformed<T: WeightTransform>(
        &self,
        input: Tensor<D>,
        transform: &T,
    ) -> Tensor<D> {
        forward_with_weight!(self, input, transform)
    }
}

impl LayerForward<3> for Conv1d {
    fn forward_transformed<T: WeightTransform>(
        &self,
        input: Tensor<3>,
        transform: &T,
    ) -> Tensor<3> {
        forward_with_weight!(self, input, transform)
    }
}

/// Conv2d runs through [`crate::ops::conv::conv2d`]: burn's function, formulated for a fast backward
/// pass.
impl LayerForward<4> for Conv2d {
    fn forward_transformed<T: WeightTransform>(
        &self,
        input: Tensor<4>,
        transform: &T,
    ) -> Tensor<4> {
        let [_, _, h, w] = input.dims();
        let spec = crate::ops::conv::ConvSpec::of(self, [h, w]);
        let weight = transform.apply(self.weight.val());
        crate::ops::conv::conv2d(input, weight, self.bias.as_ref().map(|b| b.val()), &spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::{Conv1dConfig, Conv2dConfig};
    use burn::nn::{LinearConfig, PaddingConfig1d, PaddingConfig2d};
    use burn::tensor::{Device, Distribution, Tolerance};

    fn device() -> Device {
        Device::flex()
    }

    #[test]
    fn untransformed_forward_equals_burn_forward() {
        let d = device();
        let conv = Conv2dConfig::new([4, 6], [3, 3])
            .with_stride([2, 1])
            .with_groups(2)
            .with_padding(PaddingConfig2d::Same)
            .init(&d);
        let x = Tensor::<4>::random([2, 4, 9, 7], Distribution::Normal(0.0, 1.0), &d);
        conv.forward_transformed(x.clone(), &NoTransform)
            .into_data()
            .assert_approx_eq::<f32>(&conv.forward(x).into_data(), Tolerance::default());

        let conv = Conv1dConfig::new(3, 5, 3)
            .with_padding(PaddingConfig1d::Same)
            .init(&d);
        let x = Tensor::<3>::random([2, 3, 11], Distribution::Normal(0.0, 1.0), &d);
        conv.forward_transformed(x.clone(), &NoTransform)
            .into_data()
            .assert_approx_eq::<f32>(&conv.forward(x).into_data(), Tolerance::default());

        let fc = LinearConfig::new(5, 3).init(&d);
        let x = Tensor::<3>::random([2, 4, 5], Distribution::Normal(0.0, 1.0), &d);
        fc.forward_transformed(x.clone(), &NoTransform)
            .into_data()
            .assert_approx_eq::<f32>(&fc.forward(x).into_data(), Tolerance::default());
    }

    #[test]
    fn layout_indexing_matches_burn_layouts() {
        // Linear [in=3, out=2]: element (out 1, in 2) is row 2, column 1.
        let lin = WeightLayout {
            kind: LayerKind::Linear,
            shape: vec![3, 2],
            groups: 1,
        };
        assert_eq!(lin.index(1, 2, 0), 2 * 2 + 1);
        assert_eq!(lin.out_channel_of(5), 1);
        assert_eq!(lin.fan_in(), 3);
        // Depthwise conv [out=4, 1, 3, 3].
        let dw = WeightLayout {
            kind: LayerKind::Conv2d,
            shape: vec![4, 1, 3, 3],
            groups: 4,
        };
        assert!(dw.is_depthwise());
        assert_eq!(dw.fan_in(), 9);
        assert_eq!(dw.index(2, 0, 4), 2 * 9 + 4);
        assert_eq!(dw.out_channel_of(2 * 9 + 4), 2);
        assert_eq!(dw.index_2d(3, 8), 3 * 9 + 8);
        // Grouped, not depthwise.
        let g = WeightLayout {
            kind: LayerKind::Conv2d,
            shape: vec![6, 2, 1, 1],
            groups: 2,
        };
        assert!(!g.is_depthwise());
        assert_eq!(g.describe(), "conv2d [6, 2, 1, 1] groups=2");
    }

    #[test]
    fn map_weight_keeps_id_and_trainability() {
        let d = device().autodiff();
        let fc = LinearConfig::new(4, 3).init(&d);
        let id = fc.weight.id;
        let fc = fc.map_weight(|w| w.zeros_like());
        assert_eq!(fc.weight.id, id);
        assert!(fc.weight.val().is_require_grad());
        assert_eq!(fc.effective_weight().abs().sum().into_scalar::<f32>(), 0.0);
    }
}
