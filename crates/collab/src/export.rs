//! int8 `.tflite` export of the models, with PTQ calibration or QAT ranges.
//!
//! A model is first traced into a [`Plan`]: its layers in execution order, each stripped to the
//! plain burn layer whose weight is the effective weight (BatchNorm folded, pruning zeros,
//! cluster centroids, fake-quantized values) plus, for `QatAware` layers, the quantization
//! parameters QAT trained ([`collab_quant::LayerQuant`]). Activation ranges that QAT did not
//! provide (all of them after plain training; residual additions always) come from running the
//! float plan on calibration batches (min / max over all samples, as the TFLite converter's
//! default calibration). Weights are quantized with [`QuantParams::symmetric`] from their own
//! largest magnitude (per output channel for convolutions, per tensor for the classifier), the
//! same rule QAT trains with, so QAT-trained weights land on exactly the trained integers.
//!
//! Shared quantization: TFLite's int8 CONCATENATION copies bytes, so its inputs must be
//! quantized exactly as its output, and pooling and flattening keep their input's
//! quantization. Values tied by these rules form classes ([`quant_classes`]); every producer in
//! a class that holds a concatenation is written with the class's one quantization: QAT's
//! trained range of the concatenation, or the union of the calibrated ranges of its values.
//!
//! Why pruning and clustering survive: the zero point of int8 weights is 0, so a zero stays 0;
//! rounding is a function, so k distinct values per channel become at most k integers. The
//! finest symmetric scale that does not clip is `max|w| / 127`, which is what is used: two
//! centroids can only merge if they are closer than one step of that scale.

use std::path::Path;

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::Tensor;
use collab_cluster::Clustered;
use collab_core::host::to_vec_f32;
use collab_core::{ConvBn, WeightLayer};
use collab_data::{Features, Layout};
use collab_models::graph::{Fused, Op, Pointwise, Value, apply_op, transpose_conv_input};
use collab_models::{GraphNet, IntoGraph};
use collab_prune::Prunable;
use collab_quant::{Calibration, FusedActivation, LayerQuant, QatAware, QuantParams};
use collab_tflite::{
    ActOp, ActQ, Activation, ConvLayer, ConvPadding, Int8Builder, Padding, TensorId,
};
use serde::Serialize;

use crate::CollabError;
use crate::data::Batches;
use crate::network::Network;

/// A layer stack the exporter can read: its plain layer (via `strip`) and, for `QatAware`, the
/// quantization parameters QAT trained.
pub trait ExportLayer: WeightLayer + Clone {
    /// The QAT parameters, if this stack is quantization-aware.
    fn layer_quant(&self, _name: &str) -> Result<Option<LayerQuant>, CollabError> {
        Ok(None)
    }
}

impl ExportLayer for Conv2d {}
impl ExportLayer for Linear {}
impl<C: ExportLayer<Plain = Conv2d>> ExportLayer for ConvBn<C> {}
impl<L: ExportLayer> ExportLayer for Prunable<L> {}
impl<L: ExportLayer> ExportLayer for Clustered<L> {}
impl<L: ExportLayer> ExportLayer for QatAware<L> {
    fn layer_quant(&self, name: &str) -> Result<Option<LayerQuant>, CollabError> {
        QatAware::layer_quant(self, name)
            .map(Some)
            .map_err(|e| CollabError::Usage(format!("layer `{name}`: {e}")))
    }
}

/// An activation fused into a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Act {
    /// None.
    None,
    /// ReLU.
    Relu,
    /// ReLU6.
    Relu6,
}

impl Act {
    fn apply<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::None => x,
            Act::Relu => burn::tensor::activation::relu(x),
            Act::Relu6 => x.clamp(0.0, 6.0),
        }
    }

    fn tflite(self) -> Activation {
        match self {
            Act::None => Activation::None,
            Act::Relu => Activation::Relu,
            Act::Relu6 => Activation::Relu6,
        }
    }
}

/// One step of a traced model. Values are numbered: 0 is the input, step `i` makes value `i + 1`.
#[derive(Debug)]
pub enum Step {
    /// A convolution (depthwise when `groups` = input channels) with its fused activation.
    Conv {
        /// Layer path, e.g. `blocks.0.dw`.
        name: String,
        /// Input value.
        src: usize,
        /// The plain layer (effective weight, folded BatchNorm).
        layer: Conv2d,
        /// Fused activation.
        act: Act,
        /// QAT parameters, if trained with them.
        quant: Option<LayerQuant>,
    },
    /// The classifier.
    Linear {
        /// Layer path.
        name: String,
        /// Input value.
        src: usize,
        /// The plain layer.
        layer: Linear,
        /// Fused activation.
        act: Act,
        /// QAT parameters, if trained with them.
        quant: Option<LayerQuant>,
    },
    /// Element-wise sum of two values (residual connection).
    Add {
        /// Name of the sum.
        name: String,
        /// Inputs.
        a: usize,
        /// Inputs.
        b: usize,
        /// Fused activation.
        act: Act,
        /// The output quantization QAT trained, if it did.
        quant: Option<QuantParams>,
    },
    /// Any other parameter-free operator of a graph ([`collab_models::graph::apply_op`]
    /// computes it): pooling, flattening, reshapes, transposes.
    Op {
        /// The node's name.
        name: String,
        /// The operator.
        op: Op,
        /// Input values.
        inputs: Vec<usize>,
    },
    /// A transposed convolution ([`Op::ConvTranspose`]): `layer` is its equivalent stride-1
    /// VALID convolution on the zero-upsampled input
    /// ([`collab_models::graph::transpose_conv_input`]).
    ConvTranspose {
        /// Layer path.
        name: String,
        /// Input value.
        src: usize,
        /// The plain equivalent convolution (effective weight `[out, in, kh, kw]`, flipped).
        layer: Conv2d,
        /// `[sh, sw]`.
        stride: [usize; 2],
        /// Cropped from the full output, `[top, left, bottom, right]`.
        pads: [usize; 4],
        /// Extra rows / columns at the end.
        output_padding: [usize; 2],
        /// Fused activation.
        act: Act,
        /// QAT parameters, if trained with them.
        quant: Option<LayerQuant>,
    },
    /// Channel concatenation of maps (one spatial size). Its inputs and output share one int8
    /// quantization ([`quant_classes`]).
    Concat {
        /// The node's name.
        name: String,
        /// Input values.
        inputs: Vec<usize>,
        /// The output range `[min, max]` QAT trained, if it did.
        range: Option<(f32, f32)>,
    },
    /// An activation on its own (LOGISTIC, TANH, HARD_SWISH, LEAKY_RELU, RELU, RELU6).
    Act {
        /// The node's name.
        name: String,
        /// Input value.
        src: usize,
        /// The activation.
        act: Pointwise,
        /// The output quantization QAT trained, if it did (HARD_SWISH, LEAKY_RELU, RELU;
        /// LOGISTIC and TANH have fixed ones, RELU6 keeps its input's).
        quant: Option<QuantParams>,
    },
    /// An element-wise product or difference of two values, or a constant scale or shift
    /// ([`Op::Mul`], [`Op::Sub`], [`Op::MulConst`], [`Op::AddConst`]): MUL, SUB or ADD with
    /// an output quantization of its own.
    Binary {
        /// The node's name.
        name: String,
        /// The operator.
        op: Op,
        /// Input values (one for the constant forms).
        inputs: Vec<usize>,
        /// The output quantization QAT trained, if it did.
        quant: Option<QuantParams>,
    },
}

impl Step {
    /// The step's name (a layer path or a node name).
    pub fn name(&self) -> &str {
        match self {
            Step::Conv { name, .. }
            | Step::Linear { name, .. }
            | Step::Add { name, .. }
            | Step::Op { name, .. }
            | Step::ConvTranspose { name, .. }
            | Step::Concat { name, .. }
            | Step::Act { name, .. }
            | Step::Binary { name, .. } => name,
        }
    }
}

/// A model as the int8 graph will compute it.
#[derive(Debug)]
pub struct Plan {
    /// Input `[channels, h, w]`.
    pub input: [usize; 3],
    /// Steps in execution order.
    pub steps: Vec<Step>,
    /// The model's output is a probability distribution: the int8 file ends with SOFTMAX
    /// (when [`ExportOptions::softmax`] asks for it). False for regression models
    /// (an autoencoder's reconstruction).
    pub softmax: bool,
    /// The input's range when the model's input record fixes it (raw pixels 0..255): the int8
    /// input quantization then follows from it instead of from calibration.
    pub input_range: Option<(f32, f32)>,
    /// The input is a vector per sample (`[features, 1, 1]` in burn): the int8 file takes
    /// `[batch, features]`, as the original did.
    pub flat_input: bool,
}

/// Models that can be traced into a [`Plan`]: every model that describes itself as a graph
/// ([`IntoGraph`]: the built-in families and [`GraphNet`]) traces through the graph's own
/// operators, so there is one trace for all of them.
pub trait Traceable {
    /// The plan, with the model's input `[channels, h, w]`.
    fn trace(&self, input: [usize; 3]) -> Result<Plan, CollabError>;
}

impl<M> Traceable for M
where
    M: IntoGraph + Clone,
    M::Conv: ExportLayer<Plain = Conv2d>,
    M::Linear: ExportLayer<Plain = Linear>,
{
    fn trace(&self, input: [usize; 3]) -> Result<Plan, CollabError> {
        trace_graph(&self.clone().into_graph()?, input)
    }
}

struct Tracer {
    steps: Vec<Step>,
}

impl Tracer {
    fn conv<C: ExportLayer<Plain = Conv2d>>(
        &mut self,
        name: &str,
        src: usize,
        c: &C,
        act: Act,
    ) -> Result<usize, CollabError> {
        let quant = checked_quant(c, name, act)?;
        self.steps.push(Step::Conv {
            name: name.into(),
            src,
            layer: c.clone().strip(),
            act,
            quant,
        });
        Ok(self.steps.len())
    }

    fn push(&mut self, step: Step) -> usize {
        self.steps.push(step);
        self.steps.len()
    }
}

/// Layer `name`'s QAT parameters, if it trained them, checked against the activation `act`
/// the model applies after it.
fn checked_quant<E: ExportLayer>(
    layer: &E,
    name: &str,
    act: Act,
) -> Result<Option<LayerQuant>, CollabError> {
    let quant = layer.layer_quant(name)?;
    if let Some(q) = &quant {
        check_act(name, q.activation, act)?;
    }
    Ok(quant)
}

/// A QAT layer must have been trained with the activation the model applies after it (the
/// int8 op fuses exactly one).
fn check_act(name: &str, trained: FusedActivation, model: Act) -> Result<(), CollabError> {
    let ok = matches!(
        (trained, model),
        (FusedActivation::None, Act::None)
            | (FusedActivation::Relu, Act::Relu)
            | (FusedActivation::Relu6, Act::Relu6)
    );
    if ok {
        Ok(())
    } else {
        Err(CollabError::Usage(format!(
            "layer `{name}` was trained with fused activation {trained:?}, but the model applies \
             {model:?} after it; wrap it with QatConfig::with_activation matching the model"
        )))
    }
}

impl Act {
    fn from_fused(f: Fused) -> Self {
        match f {
            Fused::None => Act::None,
            Fused::Relu => Act::Relu,
            Fused::Relu6 => Act::Relu6,
        }
    }
}

/// A graph traces to its own operators: the spec is the plan, with each layer stripped to its
/// effective weight (the input shape is the spec's; `input` must match it).
fn trace_graph<C: ExportLayer<Plain = Conv2d>, L: ExportLayer<Plain = Linear>>(
    net: &GraphNet<C, L>,
    input: [usize; 3],
) -> Result<Plan, CollabError> {
    let spec = net.spec();
    if input != spec.input.shape {
        return Err(CollabError::Usage(format!(
            "model `{}` takes inputs {:?}, not {input:?}",
            spec.name, spec.input.shape
        )));
    }
    let mut t = Tracer { steps: Vec::new() };
    // The output quantization QAT trained for node `k`, if it did.
    let trained = |k: usize, name: &str| {
        net.requant_of(k)
            .map(|q| q.params(name))
            .transpose()
            .map_err(|e| CollabError::Usage(format!("node `{name}`: {e}")))
    };
    for (k, node) in spec.nodes.iter().enumerate() {
        let name = node.name.as_str();
        match &node.op {
            Op::Conv { layer, act } => {
                t.conv(
                    name,
                    node.inputs[0],
                    &net.convs[*layer],
                    Act::from_fused(*act),
                )?;
            }
            Op::Linear { layer, act } => {
                let l = &net.linears[*layer];
                let quant = checked_quant(l, name, Act::from_fused(*act))?;
                t.push(Step::Linear {
                    name: name.into(),
                    src: node.inputs[0],
                    layer: l.clone().strip(),
                    act: Act::from_fused(*act),
                    quant,
                });
            }
            Op::Add { act } => {
                let quant = trained(k, name)?;
                t.push(Step::Add {
                    name: name.into(),
                    a: node.inputs[0],
                    b: node.inputs[1],
                    act: Act::from_fused(*act),
                    quant,
                });
            }
            Op::ConvTranspose {
                layer,
                stride,
                pads,
                output_padding,
                act,
            } => {
                let c = &net.convs[*layer];
                let quant = checked_quant(c, name, Act::from_fused(*act))?;
                t.push(Step::ConvTranspose {
                    name: name.into(),
                    src: node.inputs[0],
                    layer: c.clone().strip(),
                    stride: *stride,
                    pads: *pads,
                    output_padding: *output_padding,
                    act: Act::from_fused(*act),
                    quant,
                });
            }
            Op::Concat => {
                let range = match net.requant_of(k) {
                    Some(q) => Some(q.range().ok_or_else(|| {
                        CollabError::Usage(format!(
                            "node `{name}`: the concatenation's output quantizer has seen no \
                             batch; train or calibrate the QAT model before export"
                        ))
                    })?),
                    None => None,
                };
                t.push(Step::Concat {
                    name: name.into(),
                    inputs: node.inputs.clone(),
                    range,
                });
            }
            Op::Act(act) => {
                // LOGISTIC and TANH have a fixed int8 output: their quantizer learns nothing.
                let quant = match act.fixed_int8_output() {
                    Some(_) => None,
                    None => trained(k, name)?,
                };
                t.push(Step::Act {
                    name: name.into(),
                    src: node.inputs[0],
                    act: *act,
                    quant,
                });
            }
            op @ (Op::Mul { .. } | Op::Sub { .. } | Op::MulConst { .. } | Op::AddConst { .. }) => {
                let quant = trained(k, name)?;
                t.push(Step::Binary {
                    name: name.into(),
                    op: op.clone(),
                    inputs: node.inputs.clone(),
                    quant,
                });
            }
            op => {
                t.push(Step::Op {
                    name: name.into(),
                    op: op.clone(),
                    inputs: node.inputs.clone(),
                });
            }
        }
    }
    let input_range = match &spec.input.features {
        Features::Image(norm) => Some(norm.range()),
        _ => None,
    };
    Ok(Plan {
        input,
        steps: t.steps,
        softmax: spec.softmax,
        input_range,
        flat_input: spec.input.layout == Layout::Flat,
    })
}

impl Network {
    /// The model as an int8 plan, for the input of its task.
    pub fn plan(&self, input: [usize; 3]) -> Result<Plan, CollabError> {
        match self {
            Network::DsCnn(m) => m.trace(input),
            Network::MobileNetV1(m) => m.trace(input),
            Network::MobileNetV2(m) => m.trace(input),
            Network::Graph(m) => m.trace(input),
        }
    }
}

/// Observed `[min, max]` of every value of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ranges(pub Vec<Option<(f32, f32)>>);

impl Plan {
    /// Run the float plan on `x` `[n, c, h, w]`; returns every value (input first), as burn
    /// tensors flattened to `[n, …]`.
    fn run(&self, x: Tensor<4>) -> Result<Vec<Tensor<2>>, CollabError> {
        let mut values: Vec<Value> = vec![Value::Map(x)];
        for step in &self.steps {
            let v = match step {
                Step::Conv {
                    src, layer, act, ..
                } => Value::Map(act.apply(layer.forward(values[*src].clone().map()))),
                Step::Linear {
                    src, layer, act, ..
                } => Value::Vec(act.apply(layer.forward(values[*src].clone().flat()))),
                Step::Add { a, b, act, .. } => {
                    let fused = match act {
                        Act::None => Fused::None,
                        Act::Relu => Fused::Relu,
                        Act::Relu6 => Fused::Relu6,
                    };
                    apply_op(
                        &Op::Add { act: fused },
                        vec![values[*a].clone(), values[*b].clone()],
                    )
                }
                Step::Op { op, inputs, .. } | Step::Binary { op, inputs, .. } => {
                    apply_op(op, inputs.iter().map(|&i| values[i].clone()).collect())
                }
                Step::ConvTranspose {
                    src,
                    layer,
                    stride,
                    pads,
                    output_padding,
                    act,
                    ..
                } => {
                    let [_, _, kh, kw] = layer.weight.dims();
                    let x = transpose_conv_input(
                        values[*src].clone().map(),
                        [kh, kw],
                        *stride,
                        *pads,
                        *output_padding,
                    );
                    Value::Map(act.apply(layer.forward(x)))
                }
                Step::Concat { inputs, .. } => apply_op(
                    &Op::Concat,
                    inputs.iter().map(|&i| values[i].clone()).collect(),
                ),
                Step::Act { src, act, .. } => apply_op(&Op::Act(*act), vec![values[*src].clone()]),
            };
            values.push(v);
        }
        Ok(values.into_iter().map(Value::flat).collect())
    }

    /// The float model's logits for `x` `[n, c, h, w]` (the plan is the model: tests compare).
    pub fn forward(&self, x: Tensor<4>) -> Result<Tensor<2>, CollabError> {
        self.run(x)?
            .pop()
            .ok_or_else(|| CollabError::Usage("empty plan".into()))
    }

    /// The range of every value over `batches` of inputs `[n, c, h, w]` (PTQ calibration):
    /// `MinMax` over all samples (the TFLite converter's rule), or per-batch percentiles
    /// averaged over batches (clips rare outliers), as [`collab_quant::ActQuant`] calibrates.
    pub fn calibrate<I>(&self, batches: I, method: Calibration) -> Result<Ranges, CollabError>
    where
        I: IntoIterator<Item = Result<Tensor<4>, CollabError>>,
    {
        let mut sums: Vec<(f64, f64)> = vec![(0.0, 0.0); self.steps.len() + 1];
        let mut ranges: Vec<Option<(f32, f32)>> = vec![None; self.steps.len() + 1];
        let mut seen = 0usize;
        for x in batches {
            seen += 1;
            for ((r, sum), v) in ranges.iter_mut().zip(&mut sums).zip(self.run(x?)?) {
                let mut values = to_vec_f32(v.flatten::<1>(0, 1));
                let (lo, hi) = match method {
                    Calibration::MinMax => values
                        .iter()
                        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), v| {
                            (a.min(*v), b.max(*v))
                        }),
                    Calibration::Percentile { percentile } => {
                        let n = values.len();
                        let k_hi =
                            (((percentile / 100.0) * (n - 1) as f64).round() as usize).min(n - 1);
                        let k_lo = n - 1 - k_hi;
                        let hi = *values.select_nth_unstable_by(k_hi, f32::total_cmp).1;
                        let lo = *values.select_nth_unstable_by(k_lo, f32::total_cmp).1;
                        (lo, hi)
                    }
                };
                sum.0 += lo as f64;
                sum.1 += hi as f64;
                *r = Some(match (method, *r) {
                    (Calibration::MinMax, Some((a, b))) => (a.min(lo), b.max(hi)),
                    (Calibration::MinMax, None) => (lo, hi),
                    (Calibration::Percentile { .. }, _) => {
                        ((sum.0 / seen as f64) as f32, (sum.1 / seen as f64) as f32)
                    }
                });
            }
        }
        if seen == 0 {
            return Err(CollabError::Usage(
                "calibration needs at least one batch".into(),
            ));
        }
        Ok(Ranges(ranges))
    }

    /// [`calibrate`](Self::calibrate) on the samples `indices` of a data set, `batch_size` at a
    /// time, without augmentation.
    pub fn calibrate_on(
        &self,
        data: &dyn Batches,
        indices: &[usize],
        batch_size: usize,
        method: Calibration,
    ) -> Result<Ranges, CollabError> {
        let device = crate::device::compute();
        self.calibrate(
            indices
                .chunks(batch_size.max(1))
                .map(|chunk| data.batch(chunk, None, &device).map(|(x, _)| x)),
            method,
        )
    }
}

/// What to write.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportOptions {
    /// Batch size of the graph (1 for deployment).
    pub batch: usize,
    /// Float32 input and output with QUANTIZE / DEQUANTIZE at the edges (CPU only on NPUs).
    pub float_io: bool,
    /// End with SOFTMAX (probabilities) instead of the logits.
    pub softmax: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            batch: 1,
            float_io: false,
            softmax: true,
        }
    }
}

/// `s` rounded up to a 12-bit significand (a relative change below 2⁻¹²).
///
/// Why: TFLite Micro computes the fully-connected multiplier from the `f32` product
/// `input_scale × weight_scale`, LiteRT's reference kernel from the `f64` product; the two give
/// different fixed-point multipliers (and outputs 1 LSB apart) unless the product is exact in
/// `f32`. With 12-bit significands on both factors it always is, so every runtime computes the
/// same multiplier. All activation scales and the classifier's weight scale are rounded so.
pub fn round_scale(s: f32) -> f32 {
    if !(s.is_finite() && s > 0.0) {
        return s;
    }
    let e = s.log2().floor() as i32;
    let unit = 2f32.powi(e - 11);
    let r = (s / unit).ceil() * unit;
    if r < s { r + unit } else { r }
}

fn act_q(p: &QuantParams) -> ActQ {
    ActQ {
        scale: round_scale(p.scale[0]),
        zero_point: p.zero_point[0],
    }
}

fn range_q(ranges: Option<&Ranges>, value: usize, what: &str) -> Result<ActQ, CollabError> {
    let (lo, hi) = ranges
        .and_then(|r| r.0.get(value).copied().flatten())
        .ok_or_else(|| {
            CollabError::Usage(format!(
                "{what} has no quantization range: the model was not trained with QAT there; \
                 give calibration data (PTQ)"
            ))
        })?;
    QuantParams::asymmetric(lo, hi)
        .map(|p| act_q(&p))
        .map_err(|e| CollabError::Usage(format!("{what}: {e}")))
}

/// Which values of `plan` must share one int8 quantization: `class[v]` is the smallest value
/// of `v`'s class. A concatenation's inputs and output form one class (TFLite's int8
/// CONCATENATION copies bytes, and every runtime refuses inputs quantized unlike the output);
/// pooling, flattening, reshapes and transposes keep their input's quantization
/// ([`Op::keeps_quantization`]), so their output joins their input's class. The rules compose: a concatenation of concatenations, or of a pooled branch,
/// is one class. A value outside any concatenation's class is its own producer's alone.
pub fn quant_classes(plan: &Plan) -> Vec<usize> {
    fn root(parent: &mut [usize], mut v: usize) -> usize {
        while parent[v] != v {
            parent[v] = parent[parent[v]];
            v = parent[v];
        }
        v
    }
    let mut parent: Vec<usize> = (0..=plan.steps.len()).collect();
    let mut join = |a: usize, b: usize| {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        parent[ra.max(rb)] = ra.min(rb);
    };
    for (k, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Concat { inputs, .. } => inputs.iter().for_each(|&i| join(i, k + 1)),
            Step::Op { op, inputs, .. } if op.keeps_quantization() => join(inputs[0], k + 1),
            Step::Act { act, src, .. } if Op::Act(*act).keeps_quantization() => join(*src, k + 1),
            _ => {}
        }
    }
    (0..parent.len()).map(|v| root(&mut parent, v)).collect()
}

/// The `[min, max]` an activation quantization represents.
fn params_range(p: &QuantParams) -> (f32, f32) {
    (p.dequantize(p.qmin, 0), p.dequantize(p.qmax, 0))
}

fn widen(a: Option<(f32, f32)>, b: (f32, f32)) -> Option<(f32, f32)> {
    Some(a.map_or(b, |a| (a.0.min(b.0), a.1.max(b.1))))
}

/// The int8 quantization of every value whose class ([`quant_classes`]) holds a
/// concatenation; `None` for the others (one producer, whose own range decides).
///
/// - QAT trained a concatenation's output range (`GraphNet::with_requant`): the class takes
///   it (the union of them for concatenations of concatenations). That is TFMOT's rule for
///   `Concatenate`: the layers feeding it are not quantized on their own, the joined output is,
///   once, so the fake-int8 model applied exactly this quantization; every producer in the
///   class (a layer, a sum, the model input, whatever its own QAT range) is written with it.
/// - Otherwise (PTQ): the union of the calibrated ranges of the class's values, so no member is
///   clipped (a value that also feeds other operators gets the wider range too). A producer
///   with no calibrated range contributes its trained one (`input_trained` for the model
///   input: its QAT input quantizer or fixed pixel range); one with neither is an error.
fn shared_quant(
    plan: &Plan,
    ranges: Option<&Ranges>,
    input_trained: Option<(f32, f32)>,
) -> Result<Vec<Option<ActQ>>, CollabError> {
    let class = quant_classes(plan);
    let mut concat_of: Vec<Option<&str>> = vec![None; class.len()];
    let mut trained: Vec<Option<(f32, f32)>> = vec![None; class.len()];
    for (k, step) in plan.steps.iter().enumerate() {
        if let Step::Concat { name, range, .. } = step {
            let r = class[k + 1];
            concat_of[r] = Some(name.as_str());
            if let Some(range) = range {
                trained[r] = widen(trained[r], *range);
            }
        }
    }
    let mut union = trained.clone();
    for (v, &r) in class.iter().enumerate() {
        let Some(concat) = concat_of[r] else {
            continue;
        };
        if trained[r].is_some() {
            continue;
        }
        let (what, own, producer) = match v.checked_sub(1).map(|k| &plan.steps[k]) {
            None => ("the model input", input_trained, true),
            Some(
                Step::Conv { name, quant, .. }
                | Step::Linear { name, quant, .. }
                | Step::ConvTranspose { name, quant, .. },
            ) => (
                name.as_str(),
                quant.as_ref().map(|q| params_range(&q.output)),
                true,
            ),
            Some(Step::Add { name, quant, .. } | Step::Binary { name, quant, .. }) => {
                (name.as_str(), quant.as_ref().map(params_range), true)
            }
            Some(Step::Op { name, op, .. }) => (name.as_str(), None, !op.keeps_quantization()),
            Some(Step::Concat { name, .. }) => (name.as_str(), None, false),
            Some(Step::Act {
                name, act, quant, ..
            }) => (
                name.as_str(),
                quant.as_ref().map(params_range),
                !Op::Act(*act).keeps_quantization(),
            ),
        };
        let calibrated = ranges.and_then(|r| r.0.get(v).copied().flatten());
        match calibrated.or(own) {
            Some(range) => union[r] = widen(union[r], range),
            None if producer => {
                return Err(CollabError::Usage(format!(
                    "`{what}` feeds the concatenation `{concat}` (they share one int8 \
                     quantization) but has no quantization range: train the model with QAT \
                     (GraphNet::with_requant gives the concatenation a trained range) or give \
                     calibration data (PTQ)"
                )));
            }
            None => {}
        }
    }
    let mut q: Vec<Option<ActQ>> = vec![None; class.len()];
    for (v, &r) in class.iter().enumerate() {
        let (Some(concat), Some((lo, hi))) = (concat_of[r], union[r]) else {
            continue;
        };
        q[v] = Some(match q[r] {
            Some(shared) => shared,
            None => act_q(&QuantParams::asymmetric(lo, hi).map_err(|e| {
                CollabError::Usage(format!("the concatenation `{concat}` and its inputs: {e}"))
            })?),
        });
    }
    Ok(q)
}

/// Quantize a float weight `values` in burn's layout: returns int8 values (same order) and the
/// scales, per output channel (`rows` = channels) or per tensor; `round`: scales rounded with
/// [`round_scale`].
fn quantize_weight(
    values: &[f32],
    channel_of: impl Fn(usize) -> usize,
    channels: usize,
    per_channel: bool,
    trained: Option<&QuantParams>,
    round: bool,
) -> (Vec<i8>, Vec<f32>) {
    let mut params = match trained {
        Some(p) => p.clone(),
        None => {
            let mut max_abs = vec![0f32; if per_channel { channels } else { 1 }];
            for (i, v) in values.iter().enumerate() {
                let r = if per_channel { channel_of(i) } else { 0 };
                max_abs[r] = max_abs[r].max(v.abs());
            }
            QuantParams::symmetric(&max_abs, per_channel)
        }
    };
    if round {
        params.scale = params.scale.iter().map(|s| round_scale(*s)).collect();
    }
    let q = values
        .iter()
        .enumerate()
        .map(|(i, v)| params.quantize(*v, if params.per_channel { channel_of(i) } else { 0 }) as i8)
        .collect();
    (q, params.scale.clone())
}

/// Write the plan as int8 `.tflite` bytes. `ranges` (from [`Plan::calibrate`]) supply every
/// activation range QAT did not.
pub fn to_tflite(
    plan: &Plan,
    ranges: Option<&Ranges>,
    options: &ExportOptions,
) -> Result<Vec<u8>, CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let mut b = Int8Builder::new();
    let [c, h, w] = plan.input;
    let shape = [options.batch.max(1), h, w, c];
    // The input's range: the first layer's QAT input quantizer, else calibration.
    let first_input_quant = plan.steps.iter().find_map(|s| match s {
        Step::Conv { src: 0, quant, .. }
        | Step::Linear { src: 0, quant, .. }
        | Step::ConvTranspose { src: 0, quant, .. } => quant.as_ref().and_then(|q| q.input.clone()),
        _ => None,
    });
    let input_trained = first_input_quant
        .as_ref()
        .map(params_range)
        .or(plan.input_range);
    let shared = shared_quant(plan, ranges, input_trained)?;
    // The input feeds a concatenation: it is written with the class's quantization.
    let in_q = match shared[0] {
        Some(q) => q,
        None => match (&first_input_quant, plan.input_range) {
            (Some(p), _) => act_q(p),
            (None, Some((lo, hi))) => act_q(
                &QuantParams::asymmetric(lo, hi)
                    .map_err(|e| CollabError::Usage(format!("the model input: {e}")))?,
            ),
            (None, None) => range_q(ranges, 0, "the model input")?,
        },
    };
    let shape: Vec<usize> = if plan.flat_input {
        vec![options.batch.max(1), c * h * w]
    } else {
        shape.to_vec()
    };
    let input = if options.float_io {
        b.float_input("input", &shape, in_q).map_err(tfl)?
    } else {
        b.input("input", &shape, in_q).map_err(tfl)?
    };
    // Raw-pixel inputs fix the input quantization exactly (q = pixel − 128 for 0..255), as the
    // reference files do; anything else is calibrated or trained.
    let mut ids: Vec<TensorId> = vec![input];
    // A value's output quantization: its class's where it shares one (a concatenation's), else
    // what QAT trained, else the calibrated range.
    let out_quant = |value: usize, trained: Option<&QuantParams>, what: String| match (
        shared[value],
        trained,
    ) {
        (Some(q), _) => Ok(q),
        (None, Some(q)) => Ok(act_q(q)),
        (None, None) => range_q(ranges, value, &what),
    };
    for (k, step) in plan.steps.iter().enumerate() {
        let value = k + 1;
        let id = match step {
            Step::Conv {
                name,
                src,
                layer,
                act,
                quant,
            } => {
                let out_q = out_quant(
                    value,
                    quant.as_ref().map(|q| &q.output),
                    format!("layer `{name}`"),
                )?;
                let conv = conv_layer(name, layer, *act, quant.as_ref())?;
                b.conv2d(name, ids[*src], &conv, out_q).map_err(tfl)?
            }
            Step::Linear {
                name,
                src,
                layer,
                act,
                quant,
            } => {
                let out_q = out_quant(
                    value,
                    quant.as_ref().map(|q| &q.output),
                    format!("layer `{name}`"),
                )?;
                let [din, dout] = layer.weight.dims();
                let values = to_vec_f32(layer.weight.val().flatten::<1>(0, 1));
                // burn [in, out] → TFLite [out, in].
                let mut transposed = vec![0f32; values.len()];
                for i in 0..din {
                    for o in 0..dout {
                        transposed[o * din + i] = values[i * dout + o];
                    }
                }
                let per_channel = quant.as_ref().is_some_and(|q| q.weight.per_channel);
                if per_channel {
                    return Err(CollabError::Usage(format!(
                        "layer `{name}`: per-channel fully-connected weights are not exported; \
                         train the classifier with per-tensor weights (the default)"
                    )));
                }
                let (q, scales) = quantize_weight(
                    &transposed,
                    |i| i / din,
                    dout,
                    false,
                    quant.as_ref().map(|q| &q.weight),
                    true,
                );
                let bias = layer.bias.as_ref().map(|b| to_vec_f32(b.val()));
                b.fully_connected(
                    name,
                    ids[*src],
                    &q,
                    dout,
                    scales[0],
                    bias.as_deref(),
                    act.tflite(),
                    out_q,
                )
                .map_err(tfl)?
            }
            Step::Add {
                name,
                a,
                b: bb,
                act,
                quant,
            } => {
                let out_q = out_quant(value, quant.as_ref(), format!("the sum `{name}`"))?;
                let (x, y) = broadcast_operands(&mut b, name, ids[*a], ids[*bb])?;
                b.add(name, x, y, act.tflite(), out_q).map_err(tfl)?
            }
            Step::Op { name, op, inputs } => op_tflite(&mut b, name, op, inputs, &ids)?,
            Step::ConvTranspose {
                name,
                src,
                layer,
                stride,
                pads,
                output_padding,
                act,
                quant,
            } => {
                let out_q = out_quant(
                    value,
                    quant.as_ref().map(|q| &q.output),
                    format!("layer `{name}`"),
                )?;
                let s = b.shape(ids[*src]).to_vec();
                let (conv, out_hw) = transpose_conv_layer(
                    name,
                    layer,
                    [s[1], s[2]],
                    *stride,
                    *pads,
                    *output_padding,
                    *act,
                    quant.as_ref(),
                )?;
                b.transpose_conv(name, ids[*src], &conv, out_hw, out_q)
                    .map_err(tfl)?
            }
            Step::Concat { name, inputs, .. } => {
                concat_tflite(&mut b, name, inputs, &ids, shared[value])?
            }
            Step::Act {
                name,
                src,
                act,
                quant,
            } => {
                let op = act_op(name, *act)?;
                // LOGISTIC / TANH / RELU6: the output quantization TFLite requires.
                // In a concatenation's class, the class's quantization (the writer refuses
                // it where the operator's own is fixed and differs).
                let out_q = match (
                    b.quant(ids[*src]).and_then(|q| op.required_output(q)),
                    shared[value],
                    quant,
                ) {
                    (Some(_), _, _) => None,
                    (None, Some(q), _) => Some(q),
                    (None, None, Some(q)) => Some(act_q(q)),
                    (None, None, None) => {
                        Some(range_q(ranges, value, &format!("the activation `{name}`"))?)
                    }
                };
                b.activation(name, ids[*src], op, out_q).map_err(tfl)?
            }
            Step::Binary {
                name,
                op,
                inputs,
                quant,
            } => {
                let out_q = out_quant(value, quant.as_ref(), format!("node `{name}`"))?;
                binary_tflite(&mut b, name, op, inputs, &ids, out_q)?
            }
        };
        ids.push(id);
    }
    let mut last = *ids
        .last()
        .ok_or_else(|| CollabError::Usage("empty plan".into()))?;
    if options.softmax && plan.softmax {
        last = b.softmax("probabilities", last).map_err(tfl)?;
    }
    if options.float_io {
        b.float_output("output", last).map_err(tfl)?;
    } else {
        b.output(last);
    }
    b.finish().map_err(tfl)
}

/// The int8 TFLite operator of a lone activation (a negative LeakyReLU slope is refused: LiteRT
/// versions compute it differently).
fn act_op(name: &str, act: Pointwise) -> Result<ActOp, CollabError> {
    Ok(match act {
        Pointwise::Sigmoid => ActOp::Logistic,
        Pointwise::Tanh => ActOp::Tanh,
        Pointwise::HardSwish => ActOp::HardSwish,
        Pointwise::Relu => ActOp::Relu,
        Pointwise::Relu6 => ActOp::Relu6,
        Pointwise::LeakyRelu { alpha } if alpha.is_finite() && alpha >= 0.0 => {
            ActOp::LeakyRelu { alpha }
        }
        Pointwise::LeakyRelu { alpha } => {
            return Err(CollabError::Usage(format!(
                "node `{name}`: LeakyReLU with slope {alpha} has no int8 form that every runtime \
                 computes alike (LiteRT versions differ below zero); only slopes ≥ 0 export"
            )));
        }
    })
}

/// A parameter-free graph operator as int8 TFLite: pooling and flattening keep their input's
/// quantization (as the TFLite spec requires; concatenation is [`concat_tflite`]); operators
/// the int8 interpreter and the runtimes we check against do not share are refused with the
/// node's name.
fn op_tflite(
    b: &mut Int8Builder,
    name: &str,
    op: &Op,
    inputs: &[usize],
    ids: &[TensorId],
) -> Result<TensorId, CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let x = ids[inputs[0]];
    let s = b.shape(x).to_vec();
    let window_padding = |pads: [usize; 4], kernel: [usize; 2], stride: [usize; 2]| {
        if pads == [0; 4] {
            return Some(Padding::Valid);
        }
        // TFLite's SAME: total padding max((out − 1)·stride + k − in, 0), the extra at the end.
        let same = (0..2).all(|d| {
            let size = s[1 + d];
            let out = size.div_ceil(stride[d]);
            let total = ((out - 1) * stride[d] + kernel[d]).saturating_sub(size);
            pads[d] == total / 2 && pads[d + 2] == total - total / 2
        });
        same.then_some(Padding::Same)
    };
    match op {
        Op::GlobalAvgPool => b
            .avg_pool(name, x, [s[1], s[2]], [1, 1], Padding::Valid)
            .map_err(tfl),
        Op::AvgPool(p) | Op::MaxPool(p) => {
            let padding = window_padding(p.pads, p.kernel, p.stride).ok_or_else(|| {
                CollabError::Usage(format!(
                    "node `{name}`: {} with padding {:?} is neither VALID nor SAME and has no \
                     int8 TFLite form",
                    op.kind(),
                    p.pads
                ))
            })?;
            match op {
                Op::MaxPool(_) => b.max_pool(name, x, p.kernel, p.stride, padding),
                _ => b.avg_pool(name, x, p.kernel, p.stride, padding),
            }
            .map_err(tfl)
        }
        Op::Flatten { channels_last } => {
            if s.len() == 2 {
                return Ok(x);
            }
            let total = s[1] * s[2] * s[3];
            reshape_tflite(b, name, x, &[total], *channels_last)
        }
        Op::Reshape {
            shape,
            channels_last,
        } => reshape_tflite(b, name, x, shape, *channels_last),
        Op::Transpose { perm } => {
            // Map axis m of [c, h, w] is NHWC axis NHWC[m].
            const NHWC: [usize; 3] = [3, 1, 2];
            let mut p = [0usize; 4];
            for (i, &m) in perm.iter().enumerate() {
                p[NHWC[i]] = NHWC[m];
            }
            b.transpose(name, x, p).map_err(tfl)
        }
        other => Err(CollabError::Usage(format!(
            "node `{name}`: {} has no int8 TFLite form in this exporter (the int8 export \
             writes convolutions, transposed convolutions, fully-connected layers, ADD, SUB, \
             MUL, CONCATENATION, average and max pooling, reshapes, transposes, LOGISTIC, TANH, \
             HARD_SWISH, LEAKY_RELU, RELU, RELU6 and softmax); the model trains and evaluates \
             in float, but cannot be written as int8",
            other.kind()
        ))),
    }
}

/// The two operands of an element-wise operator, a vector `[n, c]` beside a map
/// `[n, h, w, c]` reshaped to `[n, 1, 1, c]` (TFLite broadcasts right-aligned, so `[n, c]`
/// would meet `[w, c]`).
fn broadcast_operands(
    b: &mut Int8Builder,
    name: &str,
    x: TensorId,
    y: TensorId,
) -> Result<(TensorId, TensorId), CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let (sx, sy) = (b.shape(x).to_vec(), b.shape(y).to_vec());
    let lift = |b: &mut Int8Builder, t: TensorId, s: &[usize], which: &str| match s {
        [n, c] => b
            .reshape(&format!("{name}/{which}_nhwc"), t, &[*n, 1, 1, *c])
            .map_err(tfl),
        _ => Ok(t),
    };
    match (sx.len(), sy.len()) {
        (2, 4) => Ok((lift(b, x, &sx, "a")?, y)),
        (4, 2) => Ok((x, lift(b, y, &sy, "b")?)),
        _ => Ok((x, y)),
    }
}

/// A product, difference, constant scale or constant shift as int8 MUL, SUB or ADD with
/// output quantization `out`. A constant is one int8 tensor `[c]` (or `[1]`), quantized
/// asymmetrically over its values and 0; TFLite broadcasts it over the last (channel) axis.
fn binary_tflite(
    b: &mut Int8Builder,
    name: &str,
    op: &Op,
    inputs: &[usize],
    ids: &[TensorId],
    out: ActQ,
) -> Result<TensorId, CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let x = ids[inputs[0]];
    match op {
        Op::Mul { act } | Op::Sub { act } => {
            let (x, y) = broadcast_operands(b, name, x, ids[inputs[1]])?;
            let act = Act::from_fused(*act).tflite();
            match op {
                Op::Mul { .. } => b.mul(name, x, y, act, out),
                _ => b.sub(name, x, y, act, out),
            }
            .map_err(tfl)
        }
        Op::MulConst { values } | Op::AddConst { values } => {
            let (lo, hi) = values
                .iter()
                .fold((0f32, 0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
            // A constant of zeros still needs a valid scale.
            let q = act_q(
                &QuantParams::asymmetric(lo, if hi > lo { hi } else { lo + 1.0 })
                    .map_err(|e| CollabError::Usage(format!("node `{name}`: {e}")))?,
            );
            let values = quantize_input(values, q.scale, q.zero_point);
            let c = b
                .constant(&format!("{name}/constant"), &[values.len()], &values, q)
                .map_err(tfl)?;
            match op {
                Op::MulConst { .. } => b.mul(name, x, c, Activation::None, out),
                _ => b.add(name, x, c, Activation::None, out),
            }
            .map_err(tfl)
        }
        other => Err(CollabError::Usage(format!(
            "node `{name}`: {} is not an element-wise operator",
            other.kind()
        ))),
    }
}

/// An int8 reshape of `x` (NHWC `[n, h, w, c]` or `[n, f]`) to `shape` (`[f]` or burn's
/// `[c, h, w]`) in the given element order. The file holds maps as NHWC, so a reshape defined
/// in `[c, h, w]` order is TRANSPOSE to NCHW, RESHAPE, TRANSPOSE back, each step skipped where
/// it moves nothing (a vector, or a map with one channel or one pixel). All keep `x`'s
/// quantization, as TFLite requires.
fn reshape_tflite(
    b: &mut Int8Builder,
    name: &str,
    x: TensorId,
    shape: &[usize],
    channels_last: bool,
) -> Result<TensorId, CollabError> {
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("int8 export: {e}"));
    let s = b.shape(x).to_vec();
    let n = s[0];
    // Whether NHWC and NCHW order of a map [n, h, w, c] coincide.
    let same_order = |h: usize, w: usize, c: usize| c == 1 || h * w == 1;
    let mut x = x;
    if !channels_last && s.len() == 4 && !same_order(s[1], s[2], s[3]) {
        x = b
            .transpose(&format!("{name}/to_nchw"), x, [0, 3, 1, 2])
            .map_err(tfl)?;
    }
    match *shape {
        [c, h, w] if !channels_last && !same_order(h, w, c) => {
            let y = b
                .reshape(&format!("{name}/nchw"), x, &[n, c, h, w])
                .map_err(tfl)?;
            b.transpose(name, y, [0, 2, 3, 1]).map_err(tfl)
        }
        [c, h, w] => b.reshape(name, x, &[n, h, w, c]).map_err(tfl),
        _ => {
            let total: usize = shape.iter().product();
            b.reshape(name, x, &[n, total]).map_err(tfl)
        }
    }
}

/// A transposed convolution's int8 TRANSPOSE_CONV layer and output `[h, w]`, from its
/// equivalent convolution `layer` (weight `[out, in, kh, kw]`, flipped) on an `[h, w]` input.
/// TFLite places the output by SAME or VALID padding alone, so other pads are refused.
#[allow(clippy::too_many_arguments)]
fn transpose_conv_layer(
    name: &str,
    layer: &Conv2d,
    [h, w]: [usize; 2],
    stride: [usize; 2],
    pads: [usize; 4],
    output_padding: [usize; 2],
    act: Act,
    quant: Option<&LayerQuant>,
) -> Result<(ConvLayer, [usize; 2]), CollabError> {
    let mut conv = conv_layer(name, layer, act, quant)?;
    let [out, kh, kw, inp] = conv.shape;
    // Flip back: TRANSPOSE_CONV's filter [o, fy, fx, i] is the convolution's [o, i, kh-1-fy, kw-1-fx].
    let mut flipped = vec![0i8; conv.weight.len()];
    for o in 0..out {
        for y in 0..kh {
            for x in 0..kw {
                let src = ((o * kh + kh - 1 - y) * kw + kw - 1 - x) * inp;
                let dst = ((o * kh + y) * kw + x) * inp;
                flipped[dst..dst + inp].copy_from_slice(&conv.weight[src..src + inp]);
            }
        }
    }
    conv.weight = flipped;
    let out_hw = [
        ((h - 1) * stride[0] + kh + output_padding[0]).saturating_sub(pads[0] + pads[2]),
        ((w - 1) * stride[1] + kw + output_padding[1]).saturating_sub(pads[1] + pads[3]),
    ];
    let fits = |p: Padding| {
        collab_tflite::interp::transpose_conv_pad(p, out_hw[0], kh, stride[0]) == pads[0]
            && collab_tflite::interp::transpose_conv_pad(p, out_hw[1], kw, stride[1]) == pads[1]
    };
    conv.padding = if fits(Padding::Same) {
        ConvPadding::Same
    } else if fits(Padding::Valid) {
        ConvPadding::Valid
    } else {
        return Err(CollabError::Usage(format!(
            "layer `{name}`: a transposed convolution cropping {pads:?} from a {h}×{w} input \
             (stride {stride:?}, kernel {kh}×{kw}) is neither TFLite's SAME nor VALID placement; \
             TRANSPOSE_CONV cannot write it. Use pads (k − s)/2 on each side (SAME) or none"
        )));
    };
    conv.stride = stride;
    conv.dilation = [1, 1];
    Ok((conv, out_hw))
}

/// A channel concatenation as int8 CONCATENATION along the last axis (channels, NHWC), with
/// its class's quantization `q` ([`shared_quant`]), which every input already has.
fn concat_tflite(
    b: &mut Int8Builder,
    name: &str,
    inputs: &[usize],
    ids: &[TensorId],
    q: Option<ActQ>,
) -> Result<TensorId, CollabError> {
    let q = q.ok_or_else(|| {
        CollabError::Usage(format!(
            "node `{name}`: the concatenation has no quantization range; give calibration data"
        ))
    })?;
    let parts: Vec<TensorId> = inputs.iter().map(|&i| ids[i]).collect();
    let axis = b.shape(parts[0]).len().saturating_sub(1);
    b.concatenation(name, &parts, axis, q)
        .map_err(|e| CollabError::Usage(format!("int8 export: {e}")))
}

fn conv_layer(
    name: &str,
    layer: &Conv2d,
    act: Act,
    quant: Option<&LayerQuant>,
) -> Result<ConvLayer, CollabError> {
    let [out, in_per_group, kh, kw] = layer.weight.dims();
    let groups = layer.groups;
    let depthwise = groups > 1 && in_per_group == 1;
    if groups > 1 && !depthwise {
        return Err(CollabError::Usage(format!(
            "layer `{name}`: grouped convolutions ({groups} groups of {in_per_group}) have no \
             TFLite int8 operator; only ordinary and depthwise convolutions export"
        )));
    }
    let values = to_vec_f32(layer.weight.val().flatten::<1>(0, 3));
    let fan_in = in_per_group * kh * kw;
    let (q, scales) = quantize_weight(
        &values,
        |i| i / fan_in,
        out,
        quant.is_none_or(|q| q.weight.per_channel),
        quant.map(|q| &q.weight),
        false,
    );
    // burn [out, in/g, kh, kw] → OHWI, or [1, kh, kw, out] for depthwise.
    let mut weight = vec![0i8; q.len()];
    for o in 0..out {
        for i in 0..in_per_group {
            for y in 0..kh {
                for x in 0..kw {
                    let src = ((o * in_per_group + i) * kh + y) * kw + x;
                    let dst = if depthwise {
                        (y * kw + x) * out + o
                    } else {
                        ((o * kh + y) * kw + x) * in_per_group + i
                    };
                    weight[dst] = q[src];
                }
            }
        }
    }
    let padding = match &layer.padding {
        PaddingConfig2d::Same => ConvPadding::Same,
        PaddingConfig2d::Valid => ConvPadding::Valid,
        PaddingConfig2d::Explicit(t, l, b, r) => ConvPadding::Explicit([*t, *l, *b, *r]),
    };
    Ok(ConvLayer {
        weight,
        shape: if depthwise {
            [1, kh, kw, out]
        } else {
            [out, kh, kw, in_per_group]
        },
        scales,
        bias: layer.bias.as_ref().map(|b| to_vec_f32(b.val())),
        stride: layer.stride,
        dilation: layer.dilation,
        padding,
        activation: act.tflite(),
        depthwise,
    })
}

/// `n` samples `[c, h, w]` (burn's layout) laid out as `[h, w, c]` (a `.tflite` input's).
pub fn nchw_to_nhwc(x: &[f32], n: usize, [c, h, w]: [usize; 3]) -> Vec<f32> {
    let mut out = vec![0f32; n * c * h * w];
    for s in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((s * h + y) * w + xx) * c + ch] = x[((s * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    out
}

/// Float inputs as an int8 input with `scale` and `zero_point` (round half away from zero,
/// saturated), as a float model's QUANTIZE does.
pub fn quantize_input(x: &[f32], scale: f32, zero_point: i32) -> Vec<i8> {
    x.iter()
        .map(|v| ((v / scale).round().clamp(-1e9, 1e9) as i32 + zero_point).clamp(-128, 127) as i8)
        .collect()
}

/// What the runtimes say of an int8 file: on the same int8 inputs, the largest difference (in
/// output LSB) between our interpreter and LiteRT's reference kernels, and TensorFlow Lite
/// Micro (both must be 0), and XNNPACK (a few LSB: it rounds differently).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Verification {
    /// Inputs compared (validation samples).
    pub inputs: usize,
    /// Runtime → largest |ours − runtime| in LSB.
    pub max_lsb: std::collections::BTreeMap<String, f64>,
}

impl Verification {
    /// Whether the reference runtimes agree with ours bit for bit.
    pub fn exact(&self) -> bool {
        ["litert_ref", "tflm"]
            .iter()
            .all(|k| self.max_lsb.get(*k) == Some(&0.0))
    }
}

/// Check `plan` as an int8 file in the runtimes (`tools`: the Python validators of
/// `../shared/tools`): a twin of the deployed file with the batch of `x` (`[n, c, h, w]`, the
/// deployed one has batch 1, otherwise identical), run on `x` quantized as the file says, by
/// our interpreter in both arithmetic flavours and by each runtime. Scratch files go to `dir`
/// and are removed.
pub fn verify(
    tools: &collab_tflite::tools::Validators,
    plan: &Plan,
    ranges: Option<&Ranges>,
    x: Tensor<4>,
    dir: &Path,
) -> Result<Verification, CollabError> {
    use collab_tflite::{Data, Flavor, Graph, Interpreter, npy};
    let tfl = |e: collab_tflite::TfliteError| CollabError::Usage(format!("verification: {e}"));
    let [n, c, h, w] = x.dims();
    let options = ExportOptions {
        batch: n,
        ..ExportOptions::default()
    };
    let bytes = to_tflite(plan, ranges, &options)?;
    std::fs::create_dir_all(dir).map_err(|e| CollabError::checkpoint(dir, e))?;
    let path = dir.join("verify.tflite");
    std::fs::write(&path, &bytes).map_err(|e| CollabError::checkpoint(&path, e))?;
    let graph = Graph::from_bytes(&bytes).map_err(tfl)?;
    let micro = Interpreter::new(&graph).map_err(tfl)?;
    let reference = Interpreter::with_flavor(&graph, Flavor::LiteRtReference).map_err(tfl)?;
    let port = micro.inputs()[0].clone();
    let out = micro.outputs()[0].clone();
    let values = to_vec_f32(x.flatten::<1>(0, 3));
    let input = quantize_input(
        &nchw_to_nhwc(&values, n, [c, h, w]),
        port.scale,
        port.zero_point,
    );
    let files = [
        dir.join("in.npy"),
        dir.join("micro.npy"),
        dir.join("reference.npy"),
    ];
    npy::write(&files[0], &port.shape, &Data::I8(input.clone())).map_err(tfl)?;
    let ours = micro.run_i8(&input).map_err(tfl)?;
    npy::write(&files[1], &out.shape, &Data::I8(ours)).map_err(tfl)?;
    let ours_ref = reference.run_i8(&input).map_err(tfl)?;
    npy::write(&files[2], &out.shape, &Data::I8(ours_ref)).map_err(tfl)?;
    let result = tools
        .max_diffs(&path, &files[0], &files[1], &["tflm", "litert_xnnpack"])
        .and_then(|mut m| {
            m.extend(tools.max_diffs(&path, &files[0], &files[2], &["litert_ref"])?);
            Ok(m)
        });
    let _ = std::fs::remove_dir_all(dir);
    Ok(Verification {
        inputs: n,
        max_lsb: result.map_err(tfl)?,
    })
}

/// Write `bytes` to `path` atomically (temp file flushed to disk, then renamed over `path`):
/// refused when `path` is a folder, a device or anything but a regular file; on failure no
/// temporary file is left and the previous file is unchanged ([`collab_tflite::write_atomic`]).
/// A fault-injection point ([`crate::fault::point`]) follows each successful write.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), CollabError> {
    collab_tflite::write_atomic(path, bytes).map_err(|e| file_error(path, e))?;
    crate::fault::point(&format!("file {}", path.display()));
    Ok(())
}

/// Check, before any work, that [`write`](fn@write) may write `path` ([`collab_tflite::check_target`]:
/// a file name, not a folder or device, in an existing folder).
pub fn check_out(path: &Path) -> Result<(), CollabError> {
    collab_tflite::check_target(path)
        .map(|_| ())
        .map_err(|e| file_error(path, e))
}

/// A file error naming `path` once (an I/O error already carries it).
fn file_error(path: &Path, e: collab_tflite::TfliteError) -> CollabError {
    match e {
        collab_tflite::TfliteError::Io { reason, .. } => CollabError::checkpoint(path, reason),
        other => CollabError::checkpoint(path, other),
    }
}

/// Run an int8 interpreter on NCHW float inputs `[n, c, h, w]` (quantized with the model
/// input's scale and zero point, batch by batch of the graph's own batch size): the outputs
/// dequantized, `[n, classes]`.
pub fn run_int8(
    interp: &collab_tflite::Interpreter,
    x: &[f32],
    n: usize,
    [c, h, w]: [usize; 3],
) -> Result<Vec<f32>, CollabError> {
    use collab_tflite::{Data, TensorType};
    let err = |e: collab_tflite::TfliteError| CollabError::Usage(e.to_string());
    let port = interp.inputs()[0].clone();
    let out_port = interp.outputs()[0].clone();
    let batch = port.shape.first().copied().unwrap_or(1).max(1);
    if port.shape.iter().product::<usize>() != batch * c * h * w {
        return Err(CollabError::Usage(format!(
            "the model's input is {:?}; the data gives [{c}, {h}, {w}] per sample",
            port.shape
        )));
    }
    let per = c * h * w;
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let take = batch.min(n - start);
        // NCHW → NHWC, padding a short last batch with zeros.
        let mut nhwc = nchw_to_nhwc(&x[start * per..(start + take) * per], take, [c, h, w]);
        nhwc.resize(batch * per, 0.0);
        let input = match port.dtype {
            TensorType::Float32 => Data::F32(nhwc),
            _ => Data::I8(quantize_input(&nhwc, port.scale, port.zero_point)),
        };
        let result = interp.run(&[input]).map_err(err)?;
        let classes = out_port.shape.last().copied().unwrap_or(1);
        let values: Vec<f32> = match &result[0] {
            Data::F32(v) => v.clone(),
            Data::I8(v) => v
                .iter()
                .map(|q| out_port.scale * (*q as i32 - out_port.zero_point) as f32)
                .collect(),
        };
        out.extend_from_slice(&values[..take * classes]);
        start += take;
    }
    Ok(out)
}

/// Top-1 accuracy of an int8 interpreter on all of `data` (inputs `[n, c, h, w]` quantized
/// with the model input's parameters by [`run_int8`]): the same report as for float models.
pub fn evaluate_int8(
    interp: &collab_tflite::Interpreter,
    input: [usize; 3],
    data: &dyn Batches,
) -> Result<crate::eval::EvalReport, CollabError> {
    let classes = interp.outputs()[0]
        .shape
        .last()
        .copied()
        .unwrap_or(1)
        .max(1);
    // `evaluate` takes an infallible forward pass; the first interpreter error is kept here.
    let failure = std::cell::RefCell::new(None);
    let report = crate::eval::evaluate(
        |x| {
            let [n, ..] = x.dims();
            let device = x.device();
            let values = to_vec_f32(x.flatten::<1>(0, 3));
            let out = run_int8(interp, &values, n, input).unwrap_or_else(|e| {
                *failure.borrow_mut() = Some(e);
                vec![0.0; n * classes]
            });
            Tensor::<2>::from_data(burn::tensor::TensorData::new(out, [n, classes]), &device)
        },
        data,
        256,
    )?;
    match failure.into_inner() {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

#[cfg(test)]
mod tests {
    use super::round_scale;

    #[test]
    fn rounded_scales_multiply_exactly_in_f32() {
        let mut state = 12345u64;
        for _ in 0..10_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = f32::from_bits(0x3000_0000 + ((state >> 33) as u32 % 0x0E00_0000));
            let b = f32::from_bits(0x3000_0000 + ((state >> 3) as u32 % 0x0E00_0000));
            let (ra, rb) = (round_scale(a), round_scale(b));
            assert!(ra >= a && (ra - a) / a < 1.0 / 2048.0, "{a} → {ra}");
            assert_eq!((ra * rb) as f64, ra as f64 * rb as f64, "{ra} × {rb}");
        }
    }
}
