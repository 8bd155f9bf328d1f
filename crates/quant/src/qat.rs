//! `QatAware<L>`: quantization-aware training of a weight layer, with TFLite's int8 arithmetic.
//!
//! The shape shared with `Prunable` (collab-prune) and `Clustered` (collab-cluster): a
//! [`QatConfig`], [`wrap`](QatConfig::wrap) or [`wrap_named`](QatConfig::wrap_named) a layer,
//! train with [`forward`](QatAware::forward), read [`report`](QatAware::report), and
//! [`strip`](QatAware::strip) back to the plain burn layer.
//!
//! ```
//! use burn::nn::conv::Conv2dConfig;
//! use burn::tensor::{Device, Tensor};
//! use collab_quant::{FusedActivation, QatConfig};
//!
//! let device = Device::flex().autodiff();
//! let conv = Conv2dConfig::new([8, 16], [3, 3]).init(&device);
//! let config = QatConfig::new().with_activation(FusedActivation::Relu);
//! let conv = config.wrap_named("conv", conv)?;
//! // A training step: ReLU, then int8 fake quantization with the range it sets.
//! let y = conv.forward(Tensor::<4>::ones([1, 8, 12, 12], &device));
//! let report = conv.report("conv");
//! assert_eq!((report.weight.weight_bits, report.weight.weight_scales.len()), (8, 16)); // per channel
//! assert_eq!(report.output.batches, 1);
//! let plain = conv.strip(); // burn `Conv2d` whose weights are int8 values times scales
//! # Ok::<(), collab_quant::QuantError>(())
//! ```

use burn::module::Module;
use burn::tensor::{Device, Tensor};
use collab_core::host::to_vec_f32;
use collab_core::layer::WeightWrapper;
use collab_core::{
    Chain, ChannelView, LayerForward, LayerKind, WeightLayer, WeightLayout, WeightTransform,
};
use serde::{Deserialize, Serialize};

use crate::fake::{fake_quant, fake_quant_per_tensor};
use crate::{ActQuant, ActQuantConfig, ActReport, QuantError, QuantParams};

/// The activation fused into a layer's output (TFLite's `fused_activation_function`): it is
/// applied before the output quantizer, so the output range is the activation's. The
/// workspace's one fused-activation type, re-exported from [`collab_core::FusedActivation`].
pub use collab_core::FusedActivation;

/// How a layer is quantized.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QatConfig {
    /// Per-output-channel weight scales. `None`: TFLite's default, per channel for
    /// convolutions (depthwise included), per tensor for `Linear`.
    #[serde(default)]
    pub weight_per_channel: Option<bool>,
    /// Activation fused into the output.
    #[serde(default)]
    pub activation: FusedActivation,
    /// Also quantize the layer's input (the model's first layer, or after a float op).
    #[serde(default)]
    pub quantize_input: bool,
    /// Range rules of the activation quantizers.
    #[serde(default)]
    pub act: ActQuantConfig,
    /// Fake-quantize the output (the default). Off for a layer whose output the int8 graph
    /// quantizes elsewhere, once: TFMOT's rule for a layer feeding a `Concatenate`, whose
    /// output quantizer is disabled because the concatenation quantizes the joined values with
    /// one scale, the scale the int8 file gives the layer (CONCATENATION copies bytes). The
    /// output quantizer then only tracks the range (see [`ActQuant::observe_only`]); applying
    /// it too would round the values twice, at two scales, where the file rounds once.
    #[serde(default = "quantize_output_default")]
    pub quantize_output: bool,
}

fn quantize_output_default() -> bool {
    true
}

impl Default for QatConfig {
    fn default() -> Self {
        Self {
            weight_per_channel: None,
            activation: FusedActivation::None,
            quantize_input: false,
            act: ActQuantConfig::default(),
            quantize_output: true,
        }
    }
}

impl QatConfig {
    /// TFLite defaults, no fused activation, output quantized only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fuse an activation (a [`FusedActivation`], or a [`collab_core::Activation`]).
    pub fn with_activation(mut self, activation: impl Into<FusedActivation>) -> Self {
        self.activation = activation.into();
        self
    }

    /// Quantize the input too.
    pub fn with_input(mut self, quantize_input: bool) -> Self {
        self.quantize_input = quantize_input;
        self
    }

    /// Fake-quantize the output (`true`, the default) or only track its range (`false`: the
    /// int8 graph quantizes it elsewhere, e.g. a layer feeding a concatenation; see
    /// [`QatConfig::quantize_output`]).
    pub fn with_output_quantizer(mut self, quantize_output: bool) -> Self {
        self.quantize_output = quantize_output;
        self
    }

    /// Force per-channel (`true`) or per-tensor weight scales.
    pub fn with_weight_per_channel(mut self, per_channel: bool) -> Self {
        self.weight_per_channel = Some(per_channel);
        self
    }

    /// Other activation-range rules.
    pub fn with_act(mut self, act: ActQuantConfig) -> Self {
        self.act = act;
        self
    }

    /// Whether weights of a layer with `layout` get per-channel scales.
    pub fn per_channel_for(&self, layout: &WeightLayout) -> bool {
        self.weight_per_channel
            .unwrap_or(layout.kind != LayerKind::Linear)
    }

    /// Wrap `layer` for quantization-aware training (or PTQ calibration). Fails if the
    /// activation-range rules are invalid ([`ActQuantConfig::validate`]).
    pub fn wrap<L: WeightLayer>(&self, layer: L) -> Result<QatAware<L>, QuantError> {
        QatAware::new(layer, self)
    }

    /// As [`wrap`](Self::wrap), for the layer called `name` (its path in the model), so that
    /// code wrapping a model layer by layer reads the same for the three wrappers. QAT has no
    /// per-layer settings: `name` only labels the trace event.
    pub fn wrap_named<L: WeightLayer>(
        &self,
        name: &str,
        layer: L,
    ) -> Result<QatAware<L>, QuantError> {
        let wrapped = QatAware::new(layer, self)?;
        tracing::debug!(layer = name, per_channel = wrapped.per_channel, activation = ?self.activation, "wrapped for QAT");
        Ok(wrapped)
    }
}

/// Symmetric int8 fake quantization of a weight, scales from its current largest magnitudes
/// (per tensor or per output channel), as TFLite's converter computes them.
#[derive(Clone, Copy, Debug)]
pub struct WeightFakeQuant {
    view: ChannelView,
}

impl WeightFakeQuant {
    /// For a weight with `layout`.
    pub fn new(layout: &WeightLayout, per_channel: bool) -> Self {
        Self {
            view: ChannelView::new(layout, per_channel),
        }
    }
}

impl WeightTransform for WeightFakeQuant {
    fn apply<const D: usize>(&self, weight: Tensor<D>) -> Tensor<D> {
        if self.view.rows == 1 {
            // One scale: computed on the host, exactly as `QuantParams::symmetric` does.
            let n = weight.shape().num_elements();
            let max_abs = to_vec_f32(weight.clone().detach().reshape([n]).abs().max())[0];
            let p = QuantParams::symmetric(&[max_abs], false);
            return fake_quant_per_tensor(weight, &p);
        }
        let shape = weight.shape();
        let rows = self.view.flatten_rows(weight);
        let max_abs = rows.clone().detach().abs().max_dim(1);
        let scale = max_abs.clone().div_scalar(127.0);
        let scale = scale
            .clone()
            .mask_where(max_abs.lower_equal_elem(0.0), scale.ones_like());
        let n = scale.dims()[0];
        // On flex one fused pass each way (`crate::ops::rows`); elsewhere the composed ops.
        let quantized = match crate::ops::rows::fake_quant_rows_fused(
            rows.clone(),
            scale.clone().reshape([n]),
            -127,
            127,
        ) {
            Some(q) => q,
            None => fake_quant(rows, scale.clone(), scale.zeros_like(), -127, 127),
        };
        self.view.unflatten_rows(quantized, shape)
    }
}

/// The symmetric int8 parameters of a weight from its values (flattened in `layout`'s order,
/// `[numel]`): scales from the largest magnitude per output channel or of the tensor. Shared by
/// [`QatAware::weight_params`] and [`WeightQatReport::of`].
fn weight_params(values: &[f32], layout: &WeightLayout, per_channel: bool) -> QuantParams {
    let view = ChannelView::new(layout, per_channel);
    let mut max_abs = vec![0f32; view.rows];
    for (i, v) in values.iter().enumerate() {
        let r = view.row_of(layout, i);
        max_abs[r] = max_abs[r].max(v.abs());
    }
    QuantParams::symmetric(&max_abs, per_channel)
}

/// All quantization parameters of one layer: what the int8 export writes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerQuant {
    /// The input's parameters, when this layer quantizes its input.
    pub input: Option<QuantParams>,
    /// The weight's (symmetric, per tensor or per output channel).
    pub weight: QuantParams,
    /// The output's (after the fused activation).
    pub output: QuantParams,
    /// The fused activation.
    pub activation: FusedActivation,
}

/// The weight's quantization figures, of a [`QatAware`] layer ([`QatReport::weight`]) or of a
/// weight wrapped by [`WholeQat`](crate::WholeQat) (its whole report).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WeightQatReport {
    /// The name given by the caller (its path in the model); for `WholeQat`, the weight's
    /// dotted path.
    pub name: String,
    /// e.g. `conv2d [64, 1, 3, 3] depthwise` (`Conv2d [8, 4, 3, 3]` for `WholeQat`).
    pub layer: String,
    /// Number of weights.
    pub weights: usize,
    /// Bits of the weight's integer values (8: symmetric int8, `[-127, 127]`).
    pub weight_bits: u32,
    /// Whether each output channel has its own weight scale.
    pub per_channel: bool,
    /// The weight's current scales (`max|w| / 127`), one per output channel or one.
    pub weight_scales: Vec<f32>,
}

impl WeightQatReport {
    /// The figures of a weight whose values (flattened in `layout`'s order, `[numel]`) are
    /// quantized with symmetric int8 scales per output channel or per tensor.
    pub(crate) fn of(
        name: &str,
        layer: String,
        values: &[f32],
        layout: &WeightLayout,
        per_channel: bool,
    ) -> Self {
        let weight = weight_params(values, layout, per_channel);
        Self {
            name: name.to_string(),
            layer,
            weights: values.len(),
            weight_bits: weight.bits(),
            per_channel,
            weight_scales: weight.scale,
        }
    }
}

/// Per-layer quantization figures: the wrapper's state, read on the host.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QatReport {
    /// The weight's figures (serialized inline: `name`, `layer`, `weights`, `weight_bits`,
    /// `per_channel`, `weight_scales`).
    #[serde(flatten)]
    pub weight: WeightQatReport,
    /// The activation fused into the output.
    pub activation: FusedActivation,
    /// The input quantizer's state, when the layer quantizes its input.
    pub input: Option<ActReport>,
    /// The output quantizer's state.
    pub output: ActReport,
    /// Whether the output is fake-quantized (else its range is only tracked; see
    /// [`QatConfig::quantize_output`]).
    pub quantizes_output: bool,
}

/// A weight layer trained with int8 fake quantization of its weight, its output (after the
/// fused activation) and optionally its input.
///
/// Wrap it around the layer as the int8 graph will see it: a `Linear`, `Conv1d`, `Conv2d`
/// (depthwise included), a `ConvBn` block (BatchNorm folded), or a `Prunable` / `Clustered`
/// stack, whose effective weight (zeros, centroid values) is what gets quantized.
#[derive(Module, Debug)]
pub struct QatAware<L> {
    /// The wrapped layer.
    pub inner: L,
    /// Quantizer of the input, if the layer quantizes it.
    pub input: Option<ActQuant>,
    /// Quantizer of the output.
    pub output: ActQuant,
    #[module(skip)]
    per_channel: bool,
    #[module(skip)]
    activation: FusedActivation,
    /// [`QatConfig::quantize_output`].
    #[module(skip)]
    quantize_output: bool,
}

impl<L: WeightLayer> QatAware<L> {
    /// Wrap `inner` with `config`: no activation range yet. See [`QatConfig::wrap`].
    pub(crate) fn new(inner: L, config: &QatConfig) -> Result<Self, QuantError> {
        let device: Device = inner.effective_weight().device();
        let per_channel = config.per_channel_for(&inner.layout());
        Ok(Self {
            input: if config.quantize_input {
                Some(ActQuant::new(config.act.clone(), &device)?)
            } else {
                None
            },
            output: ActQuant::new(config.act.clone(), &device)?,
            inner,
            per_channel,
            activation: config.activation,
            quantize_output: config.quantize_output,
        })
    }

    /// Forward pass with fake-quantized input (if configured), weight and output.
    ///
    /// # Shapes
    /// As the wrapped layer.
    pub fn forward<const D: usize>(&self, input: Tensor<D>) -> Tensor<D>
    where
        L: LayerForward<D>,
    {
        self.forward_transformed(input, &collab_core::NoTransform)
    }

    /// The weight's quantization parameters, from the current effective weight of the layer
    /// below (the float weight the int8 weight is computed from).
    pub fn weight_params(&self) -> QuantParams {
        weight_params(
            &to_vec_f32(self.inner.effective_weight()),
            &self.inner.layout(),
            self.per_channel,
        )
    }

    /// Input, weight and output parameters, for export.
    pub fn layer_quant(&self, name: &str) -> Result<LayerQuant, QuantError> {
        Ok(LayerQuant {
            input: match &self.input {
                Some(q) => Some(q.params(&format!("{name}.input"))?),
                None => None,
            },
            weight: self.weight_params(),
            output: self.output.params(&format!("{name}.output"))?,
            activation: self.activation,
        })
    }

    /// The fused activation.
    pub fn activation(&self) -> FusedActivation {
        self.activation
    }

    /// Whether weight scales are per output channel.
    pub fn per_channel(&self) -> bool {
        self.per_channel
    }

    /// Whether the output is fake-quantized ([`QatConfig::quantize_output`]).
    pub fn quantizes_output(&self) -> bool {
        self.quantize_output
    }

    /// Per-layer figures: weight scales from the current effective weight, the activation
    /// quantizers' ranges and batch counts.
    pub fn report(&self, name: &str) -> QatReport {
        let layout = self.inner.layout();
        QatReport {
            weight: WeightQatReport::of(
                name,
                layout.describe(),
                &to_vec_f32(self.inner.effective_weight()),
                &layout,
                self.per_channel,
            ),
            activation: self.activation,
            input: self.input.as_ref().map(ActQuant::report),
            output: self.output.report(),
            quantizes_output: self.quantize_output,
        }
    }

    /// The plain layer whose weight holds the fake-quantized values (as
    /// [`WeightLayer::strip`], without importing the trait).
    pub fn strip(self) -> L::Plain {
        WeightLayer::strip(self)
    }
}

/// [`WeightLayer`] follows (collab-core's blanket implementation): the effective weight is the
/// fake-quantized one (int8 values times their scales), and so is the stripped layer's.
impl<L: WeightLayer> WeightWrapper for QatAware<L> {
    type Inner = L;
    type Transform = WeightFakeQuant;

    fn inner(&self) -> &L {
        &self.inner
    }

    fn into_inner(self) -> L {
        self.inner
    }

    fn weight_transform(&self) -> WeightFakeQuant {
        WeightFakeQuant::new(&self.inner.layout(), self.per_channel)
    }
}

impl<const D: usize, L: LayerForward<D>> LayerForward<D> for QatAware<L> {
    fn forward_transformed<T: WeightTransform>(
        &self,
        input: Tensor<D>,
        transform: &T,
    ) -> Tensor<D> {
        let input = match &self.input {
            Some(q) => q.forward(input),
            None => input,
        };
        let weight = self.weight_transform();
        let chain = Chain {
            first: &weight,
            then: transform,
        };
        if !self.quantize_output {
            let y = collab_core::ops::bias::join_bias(
                self.inner.forward_transformed_unbiased(input, &chain),
            );
            return self.output.observe_only(self.activation.apply(y));
        }
        if self.activation == FusedActivation::Relu {
            // One fused pass (on flex) for the layer's trailing bias (a folded BatchNorm's
            // shift), the ReLU and the quantizer.
            return match self.inner.forward_transformed_unbiased(input, &chain) {
                (y, Some(shift)) => self.output.forward_shift_relu(y, shift),
                (y, None) => self.output.forward_relu(y),
            };
        }
        let split = self.inner.forward_transformed_unbiased(input, &chain);
        match (split, self.activation) {
            // One fused pass (on flex) for the trailing bias, the ReLU6 and the quantizer.
            ((y, Some(shift)), FusedActivation::Relu6) => self.output.forward_shift_relu6(y, shift),
            (split, activation) => self
                .output
                .forward(activation.apply(collab_core::ops::bias::join_bias(split))),
        }
    }

    fn applies_activation(&self, activation: collab_core::Activation) -> bool {
        self.activation.activation() == Some(activation)
    }
}
